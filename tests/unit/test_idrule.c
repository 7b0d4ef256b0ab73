/*
 * Unit tests for idrule.h, the id rule of the broker and libcoord: every boundary of an id
 * and of a msg_id. config, auth, wire and libcoord's client each test their own use of it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

#include "idrule.h"

/* `n` copies of `c` and a NUL, in `buf` (room for n + 1). */
static const char *
repeat(char *buf, char c, size_t n)
{
	memset(buf, c, n);
	buf[n] = '\0';
	return buf;
}

static void
test_id_characters_and_first_character(void **state)
{
	(void) state;
	assert_true(idrule_id_valid("c01"));
	assert_true(idrule_id_valid("0"));
	assert_true(idrule_id_valid("fr_paris-2"));
	assert_true(idrule_id_valid("a-"));
	assert_false(idrule_id_valid("-fr"));
	assert_false(idrule_id_valid("_fr"));
	assert_false(idrule_id_valid("Fr"));
	assert_false(idrule_id_valid("fr paris"));
	assert_false(idrule_id_valid("fr.paris"));
	assert_false(idrule_id_valid("fr/.."));
	assert_false(idrule_id_valid("fr\xc3\xa9"));
	assert_false(idrule_id_valid(""));
	assert_false(idrule_id_valid(NULL));
	for (int c = 1; c < 256; c++) {
		bool want = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
		assert_int_equal(idrule_id_char((char) c, true), want);
		assert_int_equal(idrule_id_char((char) c, false), want || c == '_' || c == '-');
	}
}

static void
test_id_length_limit(void **state)
{
	char buf[IDRULE_ID_MAX + 2];

	(void) state;
	assert_true(idrule_id_valid(repeat(buf, 'a', IDRULE_ID_MAX)));
	assert_false(idrule_id_valid(repeat(buf, 'a', IDRULE_ID_MAX + 1)));
	/* The _n form reads only its n bytes. */
	assert_true(idrule_id_valid_n("fr:paris", 2));
	assert_false(idrule_id_valid_n("fr:paris", 3));
	assert_false(idrule_id_valid_n("fr", 0));
	assert_false(idrule_id_valid_n(repeat(buf, 'a', IDRULE_ID_MAX + 1), IDRULE_ID_MAX + 1));
}

static void
test_msg_id_is_printable_ascii_without_space(void **state)
{
	char buf[IDRULE_MSG_ID_MAX + 2];

	(void) state;
	assert_true(idrule_msg_id_valid("event-1"));
	assert_true(idrule_msg_id_valid("!~{}/:Ab9"));
	assert_false(idrule_msg_id_valid("event 1"));
	assert_false(idrule_msg_id_valid("event\t1"));
	assert_false(idrule_msg_id_valid("\x7f"));
	assert_false(idrule_msg_id_valid("caf\xc3\xa9"));
	assert_false(idrule_msg_id_valid(""));
	assert_false(idrule_msg_id_valid(NULL));
	for (int c = 0; c < 256; c++) {
		assert_int_equal(idrule_msg_id_char((unsigned char) c), c > 0x20 && c < 0x7f);
	}
	assert_true(idrule_msg_id_valid(repeat(buf, 'x', IDRULE_MSG_ID_MAX)));
	assert_false(idrule_msg_id_valid(repeat(buf, 'x', IDRULE_MSG_ID_MAX + 1)));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_id_characters_and_first_character),
	        cmocka_unit_test(test_id_length_limit),
	        cmocka_unit_test(test_msg_id_is_printable_ascii_without_space),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

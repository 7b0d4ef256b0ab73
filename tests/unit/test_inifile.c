/*
 * Unit tests for daemon/inifile.c: the line reader in front of inih.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "inifile.h"

struct seen {
	int r;
	unsigned error_line;
	char message[128];
	unsigned sections;
	unsigned keys;
	unsigned last_key_line;
	char last_value[64];
	struct inifile *ini;
};

static int
on_section(void *data, char *line)
{
	struct seen *s = data;

	s->sections++;
	assert_int_equal(line[0], '[');
	return 0;
}

static int
on_error(void *data, unsigned line, int r, const char *message)
{
	struct seen *s = data;

	if (s->r == 0) {
		s->r = r;
		s->error_line = line;
		(void) snprintf(s->message, sizeof(s->message), "%s", message);
	}
	return r;
}

static int
on_key(void *user, const char *section, const char *name, const char *value)
{
	struct seen *s = user;

	(void) section;
	(void) name;
	s->keys++;
	s->last_key_line = s->ini->line;
	(void) snprintf(s->last_value, sizeof(s->last_value), "%s", value);
	return 1;
}

static const struct inifile_ops ops = {
        .line_max = 40,
        .nul_message = "NUL byte",
        .syntax_message = "syntax",
        .on_section = on_section,
        .on_key = on_key,
        .on_error = on_error,
};

static int
parse(const char *text, struct seen *s)
{
	struct inifile ini = {.text = text};

	s->ini = &ini;
	int r = inifile_parse(&ini, &ops, s, &s->r, &s->error_line);
	s->ini = NULL;
	return r;
}

static void
test_counts_lines_and_cuts_comments(void **state)
{
	struct seen s = {.r = 0};

	(void) state;
	assert_int_equal(parse("# c\n[a]\n  k = v # note\n\nj = w\n", &s), 0);
	assert_int_equal(s.r, 0);
	assert_int_equal(s.sections, 1);
	assert_int_equal(s.keys, 2);
	assert_int_equal(s.last_key_line, 5);
	assert_string_equal(s.last_value, "w");
}

static void
test_indented_key_is_not_a_continuation(void **state)
{
	struct seen s = {.r = 0};

	(void) state;
	assert_int_equal(parse("[a]\nk = v # x\n\tj = w\n", &s), 0);
	assert_int_equal(s.keys, 2);
	assert_string_equal(s.last_value, "w");
}

static void
test_rejects_long_line(void **state)
{
	struct seen s = {.r = 0};

	(void) state;
	assert_int_equal(parse("[a]\nk = 0123456789012345678901234567890123456789\n", &s), -EINVAL);
	assert_int_equal(s.r, -EINVAL);
	assert_int_equal(s.error_line, 2);
	assert_string_equal(s.message, "line longer than 39 bytes (newline included): shorten it");
}

static void
test_earlier_syntax_error_wins(void **state)
{
	struct seen s = {.r = 0};

	(void) state;
	assert_int_equal(
	        parse("[a]\nnot a pair\nk = 0123456789012345678901234567890123456789\n", &s),
	        -EINVAL);
	assert_int_equal(s.error_line, 2);
	assert_string_equal(s.message, "syntax");
}

static void
test_rejects_nul_byte(void **state)
{
	struct seen s = {.r = 0};
	struct inifile ini = {.file = NULL};
	static const char bytes[] = "[a]\nk = v\n\0x\n";

	(void) state;
	ini.file = fmemopen((void *) bytes, sizeof(bytes) - 1, "r");
	assert_non_null(ini.file);
	s.ini = &ini;
	assert_int_equal(inifile_parse(&ini, &ops, &s, &s.r, &s.error_line), -EINVAL);
	(void) fclose(ini.file);
	assert_int_equal(s.r, -EINVAL);
	assert_int_equal(s.error_line, 3);
	assert_string_equal(s.message, "NUL byte");
	assert_int_equal(s.keys, 1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_counts_lines_and_cuts_comments),
	        cmocka_unit_test(test_indented_key_is_not_a_continuation),
	        cmocka_unit_test(test_rejects_long_line),
	        cmocka_unit_test(test_earlier_syntax_error_wins),
	        cmocka_unit_test(test_rejects_nul_byte),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * Unit tests for daemon/iso.c: the ISO 3166-1 alpha-2 and ISO 639-1 tables and the BCP 47
 * tag syntax.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "iso.h"

static void
test_country_table_has_249_codes(void **state)
{
	int count = 0;

	(void) state;
	for (char a = 'A'; a <= 'Z'; a++) {
		for (char b = 'A'; b <= 'Z'; b++) {
			char cc[3] = {a, b, '\0'};

			count += iso_country_valid(cc);
		}
	}
	assert_int_equal(count, 249);
}

static void
test_country_accepts_assigned_codes(void **state)
{
	static const char *const codes[] = {
	        "AD", "AM", "AR", "AU", "AX", "AZ", "BQ", "BR", "CA", "CW", "DE", "FR", "GB",
	        "GE", "IR", "LB", "PS", "RU", "SS", "SX", "SY", "TW", "US", "VA", "ZW",
	};

	(void) state;
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		assert_true(iso_country_valid(codes[i]));
	}
}

static void
test_country_rejects_user_assigned_and_reserved_codes(void **state)
{
	/* XK (Kosovo) is user-assigned; EU, UK, UN are exceptionally reserved; AN, CS, YU
	 * were deleted; AA, QM, XA, ZZ are user-assigned. */
	static const char *const codes[] = {
	        "XK", "EU", "UK", "UN", "AN", "CS", "YU", "AA", "QM", "QZ", "XA", "XX", "ZZ",
	};

	(void) state;
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		assert_false(iso_country_valid(codes[i]));
	}
}

static void
test_country_rejects_lower_case(void **state)
{
	(void) state;
	assert_false(iso_country_valid("de"));
	assert_false(iso_country_valid("De"));
	assert_false(iso_country_valid("dE"));
}

static void
test_country_rejects_wrong_shape(void **state)
{
	(void) state;
	assert_false(iso_country_valid(NULL));
	assert_false(iso_country_valid(""));
	assert_false(iso_country_valid("D"));
	assert_false(iso_country_valid("DEU"));
	assert_false(iso_country_valid("DE "));
	assert_false(iso_country_valid(" DE"));
	assert_false(iso_country_valid("D1"));
	assert_false(iso_country_valid("1E"));
	assert_false(iso_country_valid("D\xc3\x84"));
	assert_false(iso_country_valid("[A"));
	assert_false(iso_country_valid("@A"));
}

static void
test_language_table_has_184_codes(void **state)
{
	int count = 0;

	(void) state;
	for (char a = 'a'; a <= 'z'; a++) {
		for (char b = 'a'; b <= 'z'; b++) {
			char tag[3] = {a, b, '\0'};

			count += iso_language_primary(tag, NULL) == 0;
		}
	}
	assert_int_equal(count, 184);
}

static void
test_language_accepts_iso_639_1_codes(void **state)
{
	static const char *const tags[] = {"en", "hy", "de", "fr", "ru", "ar", "fa", "ka",
	                                   "zh", "he", "yi", "za", "aa", "zu", "bh"};

	(void) state;
	for (size_t i = 0; i < sizeof(tags) / sizeof(tags[0]); i++) {
		char primary[4] = "";

		assert_int_equal(iso_language_primary(tags[i], primary), 0);
		assert_string_equal(primary, tags[i]);
	}
}

static void
test_language_rejects_unknown_two_letter_codes(void **state)
{
	/* Not in ISO 639-1, or withdrawn long ago (iw, in, ji, jw, mo, sh). */
	static const char *const tags[] = {"xx", "qq", "zz", "iw", "in", "ji", "jw", "mo", "sh"};

	(void) state;
	for (size_t i = 0; i < sizeof(tags) / sizeof(tags[0]); i++) {
		assert_int_equal(iso_language_primary(tags[i], NULL), -EINVAL);
	}
}

static void
test_language_primary_is_lower_cased(void **state)
{
	char primary[4] = "";

	(void) state;
	assert_int_equal(iso_language_primary("EN-gb", primary), 0);
	assert_string_equal(primary, "en");
	assert_int_equal(iso_language_primary("Hy-Latn-AM", primary), 0);
	assert_string_equal(primary, "hy");
	assert_int_equal(iso_language_primary("HYW", primary), 0);
	assert_string_equal(primary, "hyw");
}

static void
test_language_accepts_three_letter_primary_by_shape(void **state)
{
	char primary[4] = "";

	(void) state;
	assert_int_equal(iso_language_primary("hyw", primary), 0);
	assert_string_equal(primary, "hyw");
	assert_int_equal(iso_language_primary("gsw-CH", primary), 0);
	assert_string_equal(primary, "gsw");
	assert_int_equal(iso_language_primary("yue-Hant-HK", primary), 0);
	assert_string_equal(primary, "yue");
	assert_int_equal(iso_language_primary("qaa", primary), 0);
}

static void
test_language_accepts_subtags(void **state)
{
	static const char *const tags[] = {
	        "en-GB",      "en-US",       "sr-Latn-RS",       "de-CH-1901",
	        "es-419",     "hy-x-ab",     "en-a-bbb-x-a-ccc", "hy-Armn",
	        "zh-Hant-TW", "en-12345678",
	};

	(void) state;
	for (size_t i = 0; i < sizeof(tags) / sizeof(tags[0]); i++) {
		assert_int_equal(iso_language_primary(tags[i], NULL), 0);
	}
}

static void
test_language_rejects_bad_primary(void **state)
{
	static const char *const tags[] = {
	        "",    "e",     "engl",      "english", "e1",        "1en",
	        "-en", "x-abc", "i-klingon", "en_GB",   "\xc3\xa9n",
	};

	(void) state;
	for (size_t i = 0; i < sizeof(tags) / sizeof(tags[0]); i++) {
		assert_int_equal(iso_language_primary(tags[i], NULL), -EINVAL);
	}
}

static void
test_language_rejects_empty_subtag(void **state)
{
	(void) state;
	assert_int_equal(iso_language_primary("en-", NULL), -EINVAL);
	assert_int_equal(iso_language_primary("en--GB", NULL), -EINVAL);
	assert_int_equal(iso_language_primary("en-GB-", NULL), -EINVAL);
}

static void
test_language_rejects_subtag_longer_than_8(void **state)
{
	(void) state;
	assert_int_equal(iso_language_primary("en-12345678", NULL), 0);
	assert_int_equal(iso_language_primary("en-123456789", NULL), -EINVAL);
}

static void
test_language_rejects_non_alphanumeric_subtag(void **state)
{
	static const char *const tags[] = {
	        "en-G_B", "en GB", "en-GB ", "en-GB\n", "en-\xc3\x84T", "en-G.B", "en-GB\t",
	};

	(void) state;
	for (size_t i = 0; i < sizeof(tags) / sizeof(tags[0]); i++) {
		assert_int_equal(iso_language_primary(tags[i], NULL), -EINVAL);
	}
}

static void
test_language_accepts_35_bytes_rejects_36(void **state)
{
	/* "en" + 3 x "-abcdefgh" = 29, + "-abcde" = 35. */
	const char *tag35 = "en-abcdefgh-abcdefgh-abcdefgh-abcde";
	const char *tag36 = "en-abcdefgh-abcdefgh-abcdefgh-abcdef";
	const char *tag44 = "en-abcdefgh-abcdefgh-abcdefgh-abcdefgh-abcd";

	(void) state;
	assert_int_equal(strlen(tag35), 35);
	assert_int_equal(iso_language_primary(tag35, NULL), 0);
	assert_int_equal(iso_language_primary(tag36, NULL), -EINVAL);
	assert_int_equal(iso_language_primary(tag44, NULL), -EINVAL);
}

static void
test_language_leaves_output_untouched_on_error(void **state)
{
	char primary[4] = "zzz";

	(void) state;
	assert_int_equal(iso_language_primary("en-", primary), -EINVAL);
	assert_string_equal(primary, "zzz");
	assert_int_equal(iso_language_primary("xx", primary), -EINVAL);
	assert_string_equal(primary, "zzz");
}

static void
test_language_rejects_null_tag(void **state)
{
	char primary[4] = "zzz";

	(void) state;
	assert_int_equal(iso_language_primary(NULL, primary), -EINVAL);
	assert_string_equal(primary, "zzz");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_country_table_has_249_codes),
	        cmocka_unit_test(test_country_accepts_assigned_codes),
	        cmocka_unit_test(test_country_rejects_user_assigned_and_reserved_codes),
	        cmocka_unit_test(test_country_rejects_lower_case),
	        cmocka_unit_test(test_country_rejects_wrong_shape),
	        cmocka_unit_test(test_language_table_has_184_codes),
	        cmocka_unit_test(test_language_accepts_iso_639_1_codes),
	        cmocka_unit_test(test_language_rejects_unknown_two_letter_codes),
	        cmocka_unit_test(test_language_primary_is_lower_cased),
	        cmocka_unit_test(test_language_accepts_three_letter_primary_by_shape),
	        cmocka_unit_test(test_language_accepts_subtags),
	        cmocka_unit_test(test_language_rejects_bad_primary),
	        cmocka_unit_test(test_language_rejects_empty_subtag),
	        cmocka_unit_test(test_language_rejects_subtag_longer_than_8),
	        cmocka_unit_test(test_language_rejects_non_alphanumeric_subtag),
	        cmocka_unit_test(test_language_accepts_35_bytes_rejects_36),
	        cmocka_unit_test(test_language_leaves_output_untouched_on_error),
	        cmocka_unit_test(test_language_rejects_null_tag),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

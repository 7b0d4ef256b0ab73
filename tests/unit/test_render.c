/*
 * Unit tests for clients/render.c: numbers with thousands separators, ISO 8601 times both
 * ways, the digest sentences (the campaign report's own examples, singular and plural,
 * categories left out, unions across lines; published digests' distinct counts, total and
 * category lines without lists), the header and headlines, and items as JSON with their
 * envelope decoded.
 *
 * Digests are built by hand (struct fake), so each test states exactly the figures it
 * renders.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "coord.pb-c.h"
#include "render.h"

#define MAX_LINES 16
#define MAX_CODES 128

/* One hand-built line with its code lists. */
struct fake_line {
	Coord__V1__DigestLine line;
	Coord__V1__CodeCount codes[3][MAX_CODES];
	Coord__V1__CodeCount *ptrs[3][MAX_CODES];
	char names[3][MAX_CODES][8];
};

struct fake {
	Coord__V1__Digest digest;
	Coord__V1__Scope scope;
	struct fake_line lines[MAX_LINES];
	Coord__V1__DigestLine *ptrs[MAX_LINES];
};

static void
fake_init(struct fake *f)
{
	memset(f, 0, sizeof(*f));
	f->digest = (Coord__V1__Digest) COORD__V1__DIGEST__INIT;
	f->scope = (Coord__V1__Scope) COORD__V1__SCOPE__INIT;
	f->scope.kind = COORD__V1__SCOPE_KIND__SCOPE_KIND_ALL;
	f->digest.scope = &f->scope;
	f->digest.window = COORD__V1__WINDOW__WINDOW_ALL;
	f->digest.lines = f->ptrs;
}

/*
 * Add a line with `countries` codes "C0".."Cn", `languages` codes "l0".., and `councils`
 * codes "c0"..; `offset` shifts the numbering so lines can share or not share codes.
 */
static Coord__V1__DigestLine *
fake_line(struct fake *f, int category, int kind, uint64_t count, uint64_t sum, size_t countries,
          size_t languages, size_t councils, size_t offset)
{
	struct fake_line *fl = &f->lines[f->digest.n_lines];
	const size_t n[3] = {countries, languages, councils};
	const char prefix[3] = {'C', 'l', 'c'};

	assert_true(f->digest.n_lines < MAX_LINES);
	fl->line = (Coord__V1__DigestLine) COORD__V1__DIGEST_LINE__INIT;
	fl->line.category = category;
	fl->line.kind = kind;
	fl->line.count = count;
	fl->line.sum = sum;
	for (int k = 0; k < 3; k++) {
		assert_true(n[k] <= MAX_CODES);
		for (size_t i = 0; i < n[k]; i++) {
			(void) snprintf(fl->names[k][i], sizeof(fl->names[k][i]), "%c%03zu",
			                prefix[k], i + offset);
			fl->codes[k][i] = (Coord__V1__CodeCount) COORD__V1__CODE_COUNT__INIT;
			fl->codes[k][i].code = fl->names[k][i];
			fl->codes[k][i].count = 1;
			fl->ptrs[k][i] = &fl->codes[k][i];
		}
	}
	fl->line.n_countries = countries;
	fl->line.countries = fl->ptrs[0];
	fl->line.n_languages = languages;
	fl->line.languages = fl->ptrs[1];
	fl->line.n_councils = councils;
	fl->line.councils = fl->ptrs[2];
	f->ptrs[f->digest.n_lines++] = &fl->line;
	return &fl->line;
}

static char *
render(const struct fake *f, unsigned flags)
{
	char *text = NULL;

	assert_int_equal(render_digest(&f->digest, flags, &text), 0);
	assert_non_null(text);
	return text;
}

/* Whether `text` holds `line` as a whole line. */
static void
assert_has_line(const char *text, const char *line)
{
	size_t n = strlen(line);

	for (const char *p = text; (p = strstr(p, line)); p++) {
		if ((p == text || p[-1] == '\n') && p[n] == '\n') {
			return;
		}
	}
	fail_msg("no line '%s' in:\n%s", line, text);
}

static void
test_number_has_thousands_separators(void **state)
{
	(void) state;
	static const struct {
		uint64_t n;
		const char *s;
	} cases[] = {
	        {0, "0"},
	        {7, "7"},
	        {999, "999"},
	        {1000, "1,000"},
	        {4700, "4,700"},
	        {7418, "7,418"},
	        {100000, "100,000"},
	        {1234567, "1,234,567"},
	        {UINT64_MAX, "18,446,744,073,709,551,615"},
	};
	char buf[RENDER_NUMBER_MAX];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		assert_string_equal(render_number(cases[i].n, buf, sizeof(buf)), cases[i].s);
	}
}

static void
test_time_is_iso8601_utc(void **state)
{
	(void) state;
	char buf[RENDER_TIME_MAX];

	assert_string_equal(render_time(0, buf, sizeof(buf)), "1970-01-01T00:00:00Z");
	assert_string_equal(render_time(INT64_C(1714566615250), buf, sizeof(buf)),
	                    "2024-05-01T12:30:15.250Z");
	assert_string_equal(render_time(INT64_C(1714521600000), buf, sizeof(buf)),
	                    "2024-05-01T00:00:00Z");
	assert_string_equal(render_time(-1, buf, sizeof(buf)), "1969-12-31T23:59:59.999Z");
}

static void
test_parse_time_accepts_iso8601(void **state)
{
	(void) state;
	static const struct {
		const char *s;
		int64_t ms;
	} good[] = {
	        {"2024-05-01", INT64_C(1714521600000)},
	        {"2024-05-01T00:00", INT64_C(1714521600000)},
	        {"2024-05-01T12:30Z", INT64_C(1714566600000)},
	        {"2024-05-01 12:30", INT64_C(1714566600000)},
	        {"2024-05-01T12:30:15.25Z", INT64_C(1714566615250)},
	        {"2024-05-01T12:30:15,250", INT64_C(1714566615250)},
	        {"2024-05-01T14:30+02:00", INT64_C(1714566600000)},
	        {"2024-05-01T10:30-0200", INT64_C(1714566600000)},
	        {"2024-02-29", INT64_C(1709164800000)},
	        {"2000-01-01", INT64_C(946684800000)},
	        {"1970-01-01T00:00:00Z", 0},
	};
	static const char *const bad[] = {
	        "",
	        "2024",
	        "2024-5-01",
	        "2024-05-1",
	        "2024-13-01",
	        "2024-00-10",
	        "2024-02-30",
	        "2023-02-29",
	        "2024-05-01T",
	        "2024-05-01T24:00",
	        "2024-05-01T12:60",
	        "2024-05-01T12:30:61",
	        "2024-05-01T12:30.5",
	        "2024-05-01T12:30:15.",
	        "2024-05-01Z",
	        "2024-05-01T12:30+2",
	        "2024-05-01T12:30Zjunk",
	        "2024-05-01 ",
	        "x2024-05-01",
	};

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		int64_t ms = -42;
		if (render_parse_time(good[i].s, &ms) != 0 || ms != good[i].ms) {
			fail_msg("'%s' parsed as %lld", good[i].s, (long long) ms);
		}
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int64_t ms = -42;
		if (render_parse_time(bad[i], &ms) != -EINVAL || ms != -42) {
			fail_msg("'%s' should be refused", bad[i]);
		}
	}
	assert_int_equal(render_parse_time(NULL, NULL), -EINVAL);
}

static void
test_campaign_report_sentences(void **state)
{
	(void) state;
	struct fake *f = malloc(sizeof(*f));

	assert_non_null(f);
	fake_init(f);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_EVENT, COORD__V1__EVENT_KIND__EVENT_KIND_RALLY,
	          228, 0, 38, 5, 11, 0);
	/* 4,700 letters over three recipient kinds whose councils overlap: 11 distinct. */
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_LETTER,
	          COORD__V1__RECIPIENT_KIND__RECIPIENT_KIND_HEAD_OF_STATE, 1200, 0, 3, 3, 6, 0);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_LETTER,
	          COORD__V1__RECIPIENT_KIND__RECIPIENT_KIND_MEDIA, 3000, 0, 3, 3, 8, 3);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_LETTER,
	          COORD__V1__RECIPIENT_KIND__RECIPIENT_KIND_MEMBER_OF_PARLIAMENT, 500, 0, 3, 3, 2,
	          0);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_STATEMENT, 0, 330, 0, 51, 23, 9, 0);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_MEDIA, COORD__V1__MEDIA_KIND__MEDIA_KIND_ARTICLE,
	          1941, 0, 70, 47, 11, 0);
	/* Codes 65..76: seven of its countries (70..76) are new, and all six of its councils. */
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_MEDIA,
	          COORD__V1__MEDIA_KIND__MEDIA_KIND_BROADCAST, 336, 7418, 12, 4, 6, 65);
	char *text = render(f, 0);

	assert_has_line(text, "228 rallies in 38 countries");
	assert_has_line(text, "4,700 letters by 11 coordinating councils");
	assert_has_line(text, "  1,200 letters to heads of state");
	assert_has_line(text, "  3,000 letters to international media outlets");
	assert_has_line(text, "  500 letters to members of parliament");
	assert_has_line(text, "330 statements in 23 languages, from 51 countries");
	assert_has_line(text, "1,941 news articles in 47 languages in 70 countries");
	assert_has_line(text, "336 broadcast reports carried by 7,418 local sources");
	/* Lead sentence: all records, and the unions of councils (17) and countries (77). */
	assert_has_line(text, "7,535 records from 17 coordinating councils in 77 countries");
	assert_true(strncmp(text, "7,535 records", 13) == 0);
	free(text);
	free(f);
}

/* A published digest carries no CodeCount lists: every line's distinct counts, the total
 * line and the category lines give the same sentences (the unions are the broker's). */
static void
test_sentences_from_distinct_counts(void **state)
{
	(void) state;
	struct fake *f = malloc(sizeof(*f));
	Coord__V1__DigestLine total = COORD__V1__DIGEST_LINE__INIT;
	Coord__V1__DigestLine letters = COORD__V1__DIGEST_LINE__INIT;
	Coord__V1__DigestLine *categories[] = {&letters};

	assert_non_null(f);
	fake_init(f);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_EVENT, COORD__V1__EVENT_KIND__EVENT_KIND_RALLY,
	          228, 51300, 38, 5, 11, 0);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_LETTER,
	          COORD__V1__RECIPIENT_KIND__RECIPIENT_KIND_HEAD_OF_STATE, 1200, 0, 3, 3, 6, 0);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_LETTER,
	          COORD__V1__RECIPIENT_KIND__RECIPIENT_KIND_MEDIA, 3500, 0, 3, 3, 8, 3);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_STATEMENT, 0, 330, 0, 51, 23, 9, 0);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_PETITION,
	          COORD__V1__PETITION_TARGET__PETITION_TARGET_NATIONAL_PARLIAMENT, 12, 120000, 9, 0,
	          2, 0);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_MEDIA, COORD__V1__MEDIA_KIND__MEDIA_KIND_ARTICLE,
	          1941, 0, 70, 47, 11, 0);
	for (size_t i = 0; i < f->digest.n_lines; i++) {
		Coord__V1__DigestLine *l = f->ptrs[i];
		l->distinct_countries = (uint32_t) l->n_countries;
		l->distinct_languages = (uint32_t) l->n_languages;
		l->distinct_councils = (uint32_t) l->n_councils;
		l->n_countries = l->n_languages = l->n_councils = 0;
		l->countries = l->languages = l->councils = NULL;
	}
	total.count = 228 + 4700 + 330 + 12 + 1941;
	total.distinct_countries = 70;
	total.distinct_councils = 11;
	letters.category = COORD__V1__CATEGORY__CATEGORY_LETTER;
	letters.count = 4700;
	letters.distinct_councils = 11;
	f->digest.total = &total;
	f->digest.n_categories = 1;
	f->digest.categories = categories;
	char *text = render(f, 0);

	assert_has_line(text, "7,211 records from 11 coordinating councils in 70 countries");
	assert_has_line(text, "228 rallies in 38 countries with 51,300 participants");
	assert_has_line(text, "4,700 letters by 11 coordinating councils");
	assert_has_line(text, "  1,200 letters to heads of state");
	assert_has_line(text, "  3,500 letters to international media outlets");
	assert_has_line(text, "330 statements in 23 languages, from 51 countries");
	assert_has_line(text, "12 petitions to national parliaments in 9 countries with 120,000 "
	                      "signatures");
	assert_has_line(text, "1,941 news articles in 47 languages in 70 countries");
	free(text);
	free(f);
}

static void
test_singular_nouns(void **state)
{
	(void) state;
	struct fake *f = malloc(sizeof(*f));

	assert_non_null(f);
	fake_init(f);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_EVENT, COORD__V1__EVENT_KIND__EVENT_KIND_RALLY,
	          1, 1, 1, 1, 1, 0);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_EVENT,
	          COORD__V1__EVENT_KIND__EVENT_KIND_MASTER_CLASS, 2, 0, 2, 0, 1, 0);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_LETTER,
	          COORD__V1__RECIPIENT_KIND__RECIPIENT_KIND_INTERNATIONAL_ORGANISATION, 1, 0, 1, 1,
	          1, 0);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_STATEMENT, 0, 1, 0, 1, 1, 1, 0);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_PETITION,
	          COORD__V1__PETITION_TARGET__PETITION_TARGET_NATIONAL_PARLIAMENT, 1, 1, 1, 0, 1,
	          0);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_PETITION,
	          COORD__V1__PETITION_TARGET__PETITION_TARGET_SUPRANATIONAL_ASSEMBLY, 3, 12000, 2,
	          0, 1, 0);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_MEDIA, COORD__V1__MEDIA_KIND__MEDIA_KIND_ARTICLE,
	          1, 0, 1, 1, 1, 0);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_MEDIA,
	          COORD__V1__MEDIA_KIND__MEDIA_KIND_BROADCAST, 1, 1, 1, 1, 1, 0);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_MEDIA,
	          COORD__V1__MEDIA_KIND__MEDIA_KIND_INTERVIEW, 1, 0, 1, 1, 1, 0);
	char *text = render(f, 0);

	assert_has_line(text, "1 rally in 1 country with 1 participant");
	assert_has_line(text, "2 master classes in 2 countries");
	assert_has_line(text, "1 letter by 1 coordinating council");
	assert_has_line(text, "  1 letter to an international organisation");
	assert_has_line(text, "1 statement in 1 language, from 1 country");
	assert_has_line(text, "1 petition to a national parliament in 1 country with 1 signature");
	assert_has_line(text, "3 petitions to supranational assemblies in 2 countries with 12,000 "
	                      "signatures");
	assert_has_line(text, "1 news article in 1 language in 1 country");
	assert_has_line(text, "1 broadcast report carried by 1 local source");
	assert_has_line(text, "1 media interview in 1 language in 1 country");
	assert_has_line(text, "12 records from 1 coordinating council in 2 countries");
	free(text);
	free(f);
}

static void
test_categories_without_records_are_left_out(void **state)
{
	(void) state;
	struct fake *f = malloc(sizeof(*f));

	assert_non_null(f);
	fake_init(f);
	char *text = render(f, 0);
	assert_string_equal(text, "No records.\n");
	free(text);

	fake_line(f, COORD__V1__CATEGORY__CATEGORY_EVENT, COORD__V1__EVENT_KIND__EVENT_KIND_RALLY,
	          0, 0, 0, 0, 0, 0);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_MEDIA,
	          COORD__V1__MEDIA_KIND__MEDIA_KIND_BROADCAST, 5, 0, 2, 1, 1, 0);
	text = render(f, 0);
	assert_string_equal(text, "5 records from 1 coordinating council in 2 countries\n"
	                          "5 broadcast reports in 1 language in 2 countries\n");
	free(text);
	free(f);
}

static void
test_unknown_kinds_still_render(void **state)
{
	(void) state;
	struct fake *f = malloc(sizeof(*f));

	assert_non_null(f);
	fake_init(f);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_EVENT, 99, 2, 0, 1, 0, 1, 0);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_LETTER, 42, 3, 0, 1, 0, 1, 0);
	fake_line(f, 17, 1, 4, 0, 1, 0, 1, 0);
	char *text = render(f, 0);
	assert_has_line(text, "2 events of kind 99 in 1 country");
	assert_has_line(text, "  3 letters to recipients of kind 42");
	assert_has_line(text, "4 records of category 17");
	free(text);
	free(f);
}

static void
test_header_indent_and_headlines(void **state)
{
	(void) state;
	struct fake *f = malloc(sizeof(*f));
	Coord__V1__Headline h[2] = {COORD__V1__HEADLINE__INIT, COORD__V1__HEADLINE__INIT};
	Coord__V1__Headline *hp[2] = {&h[0], &h[1]};

	assert_non_null(f);
	fake_init(f);
	f->scope.kind = COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNTRY;
	f->scope.id = "FR";
	f->digest.window = COORD__V1__WINDOW__WINDOW_RANGE;
	f->digest.start = INT64_C(1714521600000);
	f->digest.end = INT64_C(1714608000000);
	f->digest.last_seq = 12345;
	f->digest.generated_at = INT64_C(1714608000000);
	fake_line(f, COORD__V1__CATEGORY__CATEGORY_EVENT, COORD__V1__EVENT_KIND__EVENT_KIND_RALLY,
	          2, 500, 1, 1, 1, 0);
	h[0].seq = 12345;
	h[0].council = "fr";
	h[0].category = COORD__V1__CATEGORY__CATEGORY_EVENT;
	h[0].country = "FR";
	h[0].date = INT64_C(1714521600000);
	h[0].title = "Rally for recognition";
	h[1].seq = 12;
	h[1].council = "fr";
	h[1].category = COORD__V1__CATEGORY__CATEGORY_MEDIA;
	h[1].country = "FR";
	h[1].date = INT64_C(1714566600000);
	f->digest.n_headlines = 2;
	f->digest.headlines = hp;

	char *text = render(f, RENDER_HEADER | RENDER_HEADLINES | RENDER_INDENT);
	assert_string_equal(text,
	                    "Country FR, from 2024-05-01T00:00:00Z to 2024-05-02T00:00:00Z; up to "
	                    "seq 12,345; generated 2024-05-02T00:00:00Z\n"
	                    "  2 records from 1 coordinating council in 1 country\n"
	                    "  2 rallies in 1 country with 500 participants\n"
	                    "  Newest:\n"
	                    "    2024-05-01 FR event: Rally for recognition (fr, seq 12,345)\n"
	                    "    2024-05-01T12:30:00Z FR media report: (no title) (fr, seq 12)\n");
	free(text);

	f->scope.kind = COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNCIL;
	f->scope.id = "c01";
	f->digest.window = COORD__V1__WINDOW__WINDOW_LAST_1H;
	assert_int_equal(render_digest_header(&f->digest, &text), 0);
	assert_string_equal(text, "Council c01, last hour (2024-05-01T00:00:00Z to "
	                          "2024-05-02T00:00:00Z); up to seq 12,345; generated "
	                          "2024-05-02T00:00:00Z");
	free(text);
	f->scope.kind = COORD__V1__SCOPE_KIND__SCOPE_KIND_ALL;
	f->digest.window = COORD__V1__WINDOW__WINDOW_ALL;
	assert_int_equal(render_digest_header(&f->digest, &text), 0);
	assert_string_equal(text, "All councils and countries, whole campaign; up to seq 12,345; "
	                          "generated 2024-05-02T00:00:00Z");
	free(text);
	free(f);
}

static void
test_item_json_decodes_the_envelope(void **state)
{
	(void) state;
	Coord__V1__Envelope env = COORD__V1__ENVELOPE__INIT;
	Coord__V1__Retraction ret = COORD__V1__RETRACTION__INIT;
	uint8_t buf[256];
	char *text = NULL;

	env.council = "c01";
	env.msg_id = "m-1";
	env.revision = 2;
	env.body_case = COORD__V1__ENVELOPE__BODY_RETRACTION;
	env.retraction = &ret;
	ret.reason = "twice";
	size_t len = coord__v1__envelope__pack(&env, buf);

	Coord__V1__Item item = COORD__V1__ITEM__INIT;
	item.seq = 7;
	item.received_at = 1000;
	item.council = "c01";
	item.envelope.data = buf;
	item.envelope.len = len;
	assert_int_equal(render_item_json(&item, &text), 0);
	assert_string_equal(text, "{\"seq\":\"7\",\"receivedAt\":\"1000\",\"council\":\"c01\","
	                          "\"envelope\":{\"council\":\"c01\",\"msgId\":\"m-1\","
	                          "\"revision\":2,\"retraction\":{\"reason\":\"twice\"}}}");
	free(text);

	/* Bytes that are no Envelope stay base64. */
	uint8_t junk[] = {0xff, 0xff, 0xff};
	item.envelope.data = junk;
	item.envelope.len = sizeof(junk);
	assert_int_equal(render_item_json(&item, &text), 0);
	assert_non_null(strstr(text, "\"envelope\":\"////\""));
	free(text);

	Coord__V1__RecordStatus st = COORD__V1__RECORD_STATUS__INIT;
	st.found = true;
	st.seq = 7;
	st.revision = 2;
	st.retracted = true;
	item.envelope.data = buf;
	item.envelope.len = len;
	st.item = &item;
	assert_int_equal(render_status_json(&st, &text), 0);
	assert_non_null(strstr(text, "\"found\":true,\"seq\":\"7\",\"revision\":2,"
	                             "\"retracted\":true,\"item\":{\"seq\":\"7\""));
	assert_non_null(strstr(text, "\"msgId\":\"m-1\""));
	free(text);
	st = (Coord__V1__RecordStatus) COORD__V1__RECORD_STATUS__INIT;
	assert_int_equal(render_status_json(&st, &text), 0);
	assert_string_equal(text, "{}");
	free(text);
}

static const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_number_has_thousands_separators),
        cmocka_unit_test(test_time_is_iso8601_utc),
        cmocka_unit_test(test_parse_time_accepts_iso8601),
        cmocka_unit_test(test_campaign_report_sentences),
        cmocka_unit_test(test_sentences_from_distinct_counts),
        cmocka_unit_test(test_singular_nouns),
        cmocka_unit_test(test_categories_without_records_are_left_out),
        cmocka_unit_test(test_unknown_kinds_still_render),
        cmocka_unit_test(test_header_indent_and_headlines),
        cmocka_unit_test(test_item_json_decodes_the_envelope),
};

int
main(void)
{
	return cmocka_run_group_tests(tests, NULL, NULL);
}

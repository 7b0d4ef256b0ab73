/*
 * Unit tests for libcoord's records from text fields, the envelope check and the names.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "coord.h"
#include "record.h"

#define NOW INT64_C(1700000000000) /* 2023-11-14 */
#define N(a) (sizeof(a) / sizeof((a)[0]))

static const struct coord_field rally[] = {
        {"kind", "rally"},
        {"country", "DE"},
        {"city", "Berlin"},
        {"date", "2020-10-04"},
        {"title", "Rally at the Gate"},
        {"participants", "2500"},
        {"languages", "de; hy"},
};

static Coord__V1__Envelope *
unpack(const struct coord_envelope *e)
{
	Coord__V1__Envelope *env = coord__v1__envelope__unpack(NULL, e->len, e->bytes);
	assert_non_null(env);
	return env;
}

static void
test_time_parsing(void **state)
{
	(void) state;
	int64_t ms = 0;

	assert_int_equal(coord__parse_time("2020-10-04", &ms), 0);
	assert_int_equal(ms, INT64_C(1601769600000));
	assert_int_equal(coord__parse_time("2020-10-04T00:00:00Z", &ms), 0);
	assert_int_equal(ms, INT64_C(1601769600000));
	assert_int_equal(coord__parse_time("2020-10-04T02:30+02:00", &ms), 0);
	assert_int_equal(ms, INT64_C(1601769600000) + 30 * 60 * 1000);
	assert_int_equal(coord__parse_time("2020-10-04 18:30:15.250", &ms), 0);
	assert_int_equal(ms, INT64_C(1601769600000) + (18 * 3600 + 30 * 60 + 15) * 1000 + 250);
	assert_int_equal(coord__parse_time("2020-02-29", &ms), 0);
	assert_int_equal(coord__parse_time("1601769600000", &ms), 0);
	assert_int_equal(ms, INT64_C(1601769600000));
	const char *bad[] = {
	        "2021-02-29",       "2020-13-01",        "2020-00-10", "2020-10-32", "2020-10-4",
	        "2020-10-04T25:00", "2020-10-04T10:00+", "yesterday",  "",           "-5",
	        "2020-10-04Z"};
	for (size_t i = 0; i < N(bad); i++) {
		ms = 42;
		assert_int_equal(coord__parse_time(bad[i], &ms), -EINVAL);
		assert_int_equal(ms, 42);
	}
}

static void
test_build_event_from_fields(void **state)
{
	(void) state;
	struct coord_envelope e;
	struct coord_error err;

	assert_int_equal(coord_envelope_build("fr", "event", rally, N(rally), NOW, &e, &err), 0);
	Coord__V1__Envelope *env = unpack(&e);
	assert_string_equal(env->council, "fr");
	assert_string_equal(env->msg_id, e.msg_id);
	assert_int_equal(env->revision, 1);
	assert_int_equal(env->created_at, NOW);
	assert_int_equal(env->body_case, COORD__V1__ENVELOPE__BODY_EVENT);
	assert_int_equal(env->event->kind, COORD__V1__EVENT_KIND__EVENT_KIND_RALLY);
	assert_string_equal(env->event->country, "DE");
	assert_int_equal(env->event->date, INT64_C(1601769600000));
	assert_int_equal(env->event->participants, 2500);
	assert_int_equal(env->event->n_languages, 2);
	assert_string_equal(env->event->languages[1], "hy");
	assert_int_equal(strlen(e.msg_id), COORD__DERIVED_ID_LEN);
	assert_memory_equal(e.msg_id, "h-", 2);
	assert_int_equal(coord_envelope_check(e.bytes, e.len, NOW, &err), 0);
	coord__v1__envelope__free_unpacked(env, NULL);
	coord_envelope_done(&e);
	assert_null(e.bytes);
	coord_envelope_done(NULL);
}

static void
test_derived_id_depends_on_content_only(void **state)
{
	(void) state;
	const struct coord_field respelled[] = {
	        {"Kind", "RALLY"},
	        {"country", " DE "},
	        {"City", "Berlin"},
	        {"date", "2020-10-04T00:00:00Z"},
	        {"title", "Rally at the Gate"},
	        {"participants", "2500"},
	        {"language", "de"},
	        {"languages", "hy"},
	        {"created_at", "2021-01-01"},
	};
	struct coord_field other[N(rally)];
	memcpy(other, rally, sizeof(rally));
	other[4].value = "Another rally";
	struct coord_envelope a, b, c, d;

	assert_int_equal(coord_envelope_build("fr", "event", rally, N(rally), NOW, &a, NULL), 0);
	assert_int_equal(
	        coord_envelope_build("fr", "event", respelled, N(respelled), NOW, &b, NULL), 0);
	assert_int_equal(coord_envelope_build("fr", "event", other, N(other), NOW, &c, NULL), 0);
	assert_int_equal(coord_envelope_build("de", "event", rally, N(rally), NOW, &d, NULL), 0);
	assert_string_equal(a.msg_id, b.msg_id);
	assert_string_not_equal(a.msg_id, c.msg_id);
	assert_string_not_equal(a.msg_id, d.msg_id);
	assert_int_not_equal(a.created_at, b.created_at);
	coord_envelope_done(&a);
	coord_envelope_done(&b);
	coord_envelope_done(&c);
	coord_envelope_done(&d);
}

static void
test_explicit_envelope_fields(void **state)
{
	(void) state;
	struct coord_field f[N(rally) + 3];
	memcpy(f, rally, sizeof(rally));
	f[N(rally)] = (struct coord_field){"msg_id", "fr-2020-0001"};
	f[N(rally) + 1] = (struct coord_field){"revision", "3"};
	f[N(rally) + 2] = (struct coord_field){"council", "fr"};
	struct coord_envelope e;

	assert_int_equal(coord_envelope_build("fr", "Event", f, N(f), NOW, &e, NULL), 0);
	assert_string_equal(e.msg_id, "fr-2020-0001");
	assert_int_equal(e.revision, 3);
	coord_envelope_done(&e);
}

static void
expect_error(const char *category, const struct coord_field *f, size_t n, const char *field,
             const char *message_part)
{
	struct coord_envelope e = {0};
	struct coord_error err;

	assert_int_equal(coord_envelope_build("fr", category, f, n, NOW, &e, &err), -EINVAL);
	assert_null(e.bytes);
	assert_string_equal(err.field, field);
	if (strstr(err.message, message_part) == NULL) {
		fail_msg("message '%s' lacks '%s'", err.message, message_part);
	}
}

static void
test_errors_name_the_field_as_given(void **state)
{
	(void) state;
	struct coord_field f[N(rally)];

	memcpy(f, rally, sizeof(rally));
	f[1] = (struct coord_field){"Country", "XX"};
	expect_error("event", f, N(f), "Country", "'XX' is not an officially assigned");
	memcpy(f, rally, sizeof(rally));
	f[1].value = "de";
	expect_error("event", f, N(f), "country", "(use upper case)");
	memcpy(f, rally, sizeof(rally));
	f[0].value = "rallye";
	expect_error("event", f, N(f), "kind", "not one of: rally, car_rally");
	memcpy(f, rally, sizeof(rally));
	f[3].value = "2020-02-30";
	expect_error("event", f, N(f), "date", "not an ISO 8601 date");
	memcpy(f, rally, sizeof(rally));
	f[4].value = "  ";
	expect_error("event", f, N(f), "title", "is required");
	memcpy(f, rally, sizeof(rally));
	f[5].value = "many";
	expect_error("event", f, N(f), "participants", "not a whole number");
	memcpy(f, rally, sizeof(rally));
	f[6].value = "de;xx-!";
	expect_error("event", f, N(f), "languages", "not a BCP 47 tag");
	memcpy(f, rally, sizeof(rally));
	f[2] = (struct coord_field){"recipient", "Bundestag"};
	expect_error("event", f, N(f), "recipient", "not a field of event");
	memcpy(f, rally, sizeof(rally));
	f[2] = (struct coord_field){"kind", "rally"};
	expect_error("event", f, N(f), "kind", "given more than once");
	memcpy(f, rally, sizeof(rally));
	f[2] = (struct coord_field){"council", "de"};
	expect_error("event", f, N(f), "council", "not this council");
	memcpy(f, rally, sizeof(rally));
	f[3].value = "2099-01-01";
	expect_error("event", f, N(f), "date", "ahead");
	expect_error("parade", rally, N(rally), "category", "is not a category");
}

static void
test_retraction_needs_its_record(void **state)
{
	(void) state;
	const struct coord_field reason[] = {{"reason", "entered twice"}};
	const struct coord_field with_id[] = {{"reason", "entered twice"}, {"msg_id", "m1"}};
	struct coord_envelope e;

	expect_error("retraction", reason, N(reason), "msg_id", "needs the msg_id");
	assert_int_equal(coord_envelope_build("fr", "retract", with_id, N(with_id), NOW, &e, NULL),
	                 0);
	assert_int_equal(e.revision, 2);
	assert_string_equal(e.msg_id, "m1");
	coord_envelope_done(&e);
}

static void
test_every_category_builds(void **state)
{
	(void) state;
	const struct coord_field letter[] = {
	        {"recipient_kind", "head of state"}, {"recipient", "Élysée"},
	        {"recipientCountry", "FR"},          {"language", "fr"},
	        {"sent-at", "2020-10-05"},           {"channel", "hand-delivered"},
	};
	const struct coord_field statement[] = {{"organisation", "Union"},
	                                        {"country", "AM"},
	                                        {"languages", "hy,en"},
	                                        {"date", "2020-10-05"}};
	const struct coord_field petition[] = {{"target_kind", "national parliament"},
	                                       {"target", "Bundestag"},
	                                       {"country", "DE"},
	                                       {"date", "2020-10-05"},
	                                       {"signatures", "18446744073709551615"}};
	const struct coord_field media[] = {{"kind", "broadcast"},  {"outlet", "TV"},
	                                    {"country", "FR"},      {"language", "fr"},
	                                    {"date", "2020-10-05"}, {"local_sources", "336"}};
	struct coord_envelope e;

	assert_int_equal(coord_envelope_build("fr", "letter", letter, N(letter), NOW, &e, NULL), 0);
	coord_envelope_done(&e);
	assert_int_equal(
	        coord_envelope_build("fr", "statement", statement, N(statement), NOW, &e, NULL), 0);
	coord_envelope_done(&e);
	assert_int_equal(
	        coord_envelope_build("fr", "petition", petition, N(petition), NOW, &e, NULL), 0);
	Coord__V1__Envelope *env = unpack(&e);
	assert_true(env->petition->signatures == UINT64_MAX);
	coord__v1__envelope__free_unpacked(env, NULL);
	coord_envelope_done(&e);
	assert_int_equal(coord_envelope_build("fr", "media", media, N(media), NOW, &e, NULL), 0);
	coord_envelope_done(&e);
}

static void
test_check_refuses_what_the_broker_refuses(void **state)
{
	(void) state;
	struct coord_error err;
	static const uint8_t garbage[] = {0xff, 0xff, 0xff};

	assert_int_equal(coord_envelope_check(garbage, sizeof(garbage), NOW, &err), -EINVAL);
	assert_int_equal(coord_envelope_check(garbage, 0, NOW, &err), -EINVAL);
	assert_int_equal(coord_envelope_check(garbage, COORD_ENVELOPE_MAX + 1, NOW, &err),
	                 -EMSGSIZE);
	/* A valid record checked at a time before its date's allowance fails the same way. */
	struct coord_envelope e;
	assert_int_equal(coord_envelope_build("fr", "event", rally, N(rally), NOW, &e, NULL), 0);
	assert_int_equal(coord_envelope_check(e.bytes, e.len, INT64_C(1500000000000), &err),
	                 -EINVAL);
	assert_string_equal(err.field, "created_at");
	coord_envelope_done(&e);
}

static void
test_names(void **state)
{
	(void) state;
	assert_string_equal(coord_status_name(COORD_STATUS_ACCEPTED), "ACCEPTED");
	assert_string_equal(coord_status_name(COORD_STATUS_RETRY_LATER), "RETRY_LATER");
	assert_string_equal(coord_status_name(99), "UNKNOWN");
	assert_string_equal(coord_reason_name(7), "INVALID_COUNTRY");
	assert_string_equal(coord_reason_name(0), "NONE");
	assert_string_equal(coord_reason_name(999), "UNKNOWN");
	assert_string_equal(coord_strerror(-EXDEV), "the outbox belongs to another council");
	assert_string_equal(coord_strerror(EBUSY), coord_strerror(-EBUSY));
	assert_non_null(coord_strerror(-123456));
	assert_string_equal(coord_version(), COORD_VERSION_STRING);
	assert_int_equal(coord__category_parse("Outreach-Letter"),
	                 COORD__V1__ENVELOPE__BODY_LETTER);
	assert_int_equal(coord__category_parse("nope"), COORD__V1__ENVELOPE__BODY__NOT_SET);
	assert_true(coord__field_known(COORD__V1__ENVELOPE__BODY_EVENT, "Msg-Id"));
	assert_false(coord__field_known(COORD__V1__ENVELOPE__BODY_EVENT, "outlet"));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_time_parsing),
	        cmocka_unit_test(test_build_event_from_fields),
	        cmocka_unit_test(test_derived_id_depends_on_content_only),
	        cmocka_unit_test(test_explicit_envelope_fields),
	        cmocka_unit_test(test_errors_name_the_field_as_given),
	        cmocka_unit_test(test_retraction_needs_its_record),
	        cmocka_unit_test(test_every_category_builds),
	        cmocka_unit_test(test_check_refuses_what_the_broker_refuses),
	        cmocka_unit_test(test_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

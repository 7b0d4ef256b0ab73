/*
 * Unit tests for daemon/wire.c. Envelopes are built with the generated *_INIT macros, packed
 * with protobuf-c and then go through wire_unpack_envelope() and wire_validate_envelope(),
 * as they do in ingest. Frames protobuf-c cannot produce (NUL bytes in strings, invalid
 * UTF-8, duplicate fields) are made by patching packed bytes.
 *
 * Field rules are tested from tables of members (body, offset, proto path), so each rule is
 * checked on every field it applies to.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "wire.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

#define NOW_MS INT64_C(1717200000000)  /* 2024-06-01T00:00:00Z */
#define DATE_MS INT64_C(1717113600000) /* 2024-05-31T00:00:00Z */
#define DAY_MS INT64_C(86400000)
#define FRAME_MAX 65536

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* A valid Envelope with every body filled in; env carries one of them at a time. */
struct fixture {
	Coord__V1__Envelope env;
	Coord__V1__Event event;
	Coord__V1__OutreachLetter letter;
	Coord__V1__Statement statement;
	Coord__V1__Petition petition;
	Coord__V1__MediaReport media;
	Coord__V1__Retraction retraction;
	char *event_languages[WIRE_LANGUAGES_MAX + 1];
	char *statement_languages[WIRE_LANGUAGES_MAX + 1];
	char text[4096]; /* scratch for long strings */
};

static void
use_body(struct fixture *f, Coord__V1__Envelope__BodyCase body)
{
	f->env.body_case = body;
	switch (body) {
	case COORD__V1__ENVELOPE__BODY_EVENT:
		f->env.event = &f->event;
		break;
	case COORD__V1__ENVELOPE__BODY_LETTER:
		f->env.letter = &f->letter;
		break;
	case COORD__V1__ENVELOPE__BODY_STATEMENT:
		f->env.statement = &f->statement;
		break;
	case COORD__V1__ENVELOPE__BODY_PETITION:
		f->env.petition = &f->petition;
		break;
	case COORD__V1__ENVELOPE__BODY_MEDIA:
		f->env.media = &f->media;
		break;
	case COORD__V1__ENVELOPE__BODY_RETRACTION:
		f->env.retraction = &f->retraction;
		break;
	default:
		f->env.event = NULL;
		break;
	}
}

static void *
body_message(struct fixture *f, Coord__V1__Envelope__BodyCase body)
{
	switch (body) {
	case COORD__V1__ENVELOPE__BODY_EVENT:
		return &f->event;
	case COORD__V1__ENVELOPE__BODY_LETTER:
		return &f->letter;
	case COORD__V1__ENVELOPE__BODY_STATEMENT:
		return &f->statement;
	case COORD__V1__ENVELOPE__BODY_PETITION:
		return &f->petition;
	case COORD__V1__ENVELOPE__BODY_MEDIA:
		return &f->media;
	case COORD__V1__ENVELOPE__BODY_RETRACTION:
		return &f->retraction;
	default:
		fail_msg("no such body %d", (int) body);
		return NULL;
	}
}

static void
fixture_fill(struct fixture *f)
{
	static char *event_languages[] = {"hy", "en-GB", "fr"};
	static char *statement_languages[] = {"hy", "de"};

	f->env = (Coord__V1__Envelope) COORD__V1__ENVELOPE__INIT;
	f->env.council = "council-de_1";
	f->env.msg_id = "2024-05-31/rally#1";
	f->env.revision = 1;
	f->env.created_at = NOW_MS - 1000;

	f->event = (Coord__V1__Event) COORD__V1__EVENT__INIT;
	f->event.kind = COORD__V1__EVENT_KIND__EVENT_KIND_RALLY;
	f->event.country = "DE";
	f->event.city = "Berlin";
	f->event.date = DATE_MS;
	f->event.title = "Rally at the Brandenburg Gate";
	f->event.organiser = "Community council";
	f->event.participants = 300;
	memcpy(f->event_languages, event_languages, sizeof(event_languages));
	f->event.languages = f->event_languages;
	f->event.n_languages = ARRAY_SIZE(event_languages);

	f->letter = (Coord__V1__OutreachLetter) COORD__V1__OUTREACH_LETTER__INIT;
	f->letter.recipient_kind = COORD__V1__RECIPIENT_KIND__RECIPIENT_KIND_PARLIAMENT;
	f->letter.recipient = "Bundestag";
	f->letter.recipient_country = "DE";
	f->letter.language = "de";
	f->letter.subject = "An appeal\n\tfrom the community";
	f->letter.sent_at = DATE_MS;
	f->letter.channel = COORD__V1__LETTER_CHANNEL__LETTER_CHANNEL_EMAIL;

	f->statement = (Coord__V1__Statement) COORD__V1__STATEMENT__INIT;
	f->statement.organisation = "Youth union";
	f->statement.country = "AM";
	memcpy(f->statement_languages, statement_languages, sizeof(statement_languages));
	f->statement.languages = f->statement_languages;
	f->statement.n_languages = ARRAY_SIZE(statement_languages);
	f->statement.date = DATE_MS;
	f->statement.title = "Appeal";

	f->petition = (Coord__V1__Petition) COORD__V1__PETITION__INIT;
	f->petition.target_kind = COORD__V1__PETITION_TARGET__PETITION_TARGET_NATIONAL_PARLIAMENT;
	f->petition.target = "Assemblée nationale";
	f->petition.country = "FR";
	f->petition.date = DATE_MS;
	f->petition.signatures = UINT64_MAX;
	f->petition.title = "Petition";
	f->petition.language = "fr";

	f->media = (Coord__V1__MediaReport) COORD__V1__MEDIA_REPORT__INIT;
	f->media.kind = COORD__V1__MEDIA_KIND__MEDIA_KIND_BROADCAST;
	f->media.outlet = "Regional TV";
	f->media.country = "US";
	f->media.language = "en-US";
	f->media.date = DATE_MS;
	f->media.local_sources = 336;
	f->media.title = "Report";
	f->media.url = "https://example.org/report?id=1";

	f->retraction = (Coord__V1__Retraction) COORD__V1__RETRACTION__INIT;
	f->retraction.reason = "Entered twice";

	use_body(f, COORD__V1__ENVELOPE__BODY_EVENT);
}

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (f == NULL) {
		return -1;
	}
	fixture_fill(f);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	free(*state);
	return 0;
}

/* Pack env into a new buffer of *ret_size bytes (at least 1 byte allocated). */
static uint8_t *
pack(const Coord__V1__Envelope *env, size_t *ret_size)
{
	size_t size = coord__v1__envelope__get_packed_size(env);
	uint8_t *buf = malloc(size + 1);

	assert_non_null(buf);
	assert_int_equal(coord__v1__envelope__pack(env, buf), size);
	*ret_size = size;
	return buf;
}

/* Replace the first occurrence of marker in buf with as many bytes from with. */
static void
patch(uint8_t *buf, size_t size, const char *marker, const char *with)
{
	size_t n = strlen(marker);
	uint8_t *at = memmem(buf, size, marker, n);

	assert_non_null(at);
	memcpy(at, with, n);
}

/* Unpack then validate, as ingest does. Returns the first failure or 0. */
static int
decode(const uint8_t *buf, size_t size, int64_t now_ms, struct wire_verdict *verdict)
{
	Coord__V1__Envelope *env = NULL;
	int r = wire_unpack_envelope(buf, size, FRAME_MAX, &env, verdict);

	if (r < 0) {
		/* A bad string outside msg_id still hands the envelope out, for the echo. */
		if (env) {
			assert_int_equal(verdict->reason, COORD__V1__REASON__REASON_INVALID_UTF8);
			coord__v1__envelope__free_unpacked(env, NULL);
		}
		return r;
	}
	assert_non_null(env);
	r = wire_validate_envelope(env, now_ms, verdict);
	coord__v1__envelope__free_unpacked(env, NULL);
	return r;
}

static int
roundtrip(const Coord__V1__Envelope *env, struct wire_verdict *verdict)
{
	size_t size;
	uint8_t *buf = pack(env, &size);
	int r = decode(buf, size, NOW_MS, verdict);

	free(buf);
	return r;
}

static bool
message_ok(const struct wire_verdict *verdict)
{
	size_t len = strnlen(verdict->message, sizeof(verdict->message));

	return len < sizeof(verdict->message) && wire_utf8_valid(verdict->message, len);
}

/*
 * True when the verdict has reason, the message contains text (unless NULL) and is valid
 * UTF-8, and r is the matching return value (0 for REASON_NONE, else want_r). Prints what
 * it got otherwise.
 */
static bool
verdict_matches(int r, const struct wire_verdict *verdict, int want_r, Coord__V1__Reason reason,
                const char *text)
{
	int expected_r = reason == COORD__V1__REASON__REASON_NONE ? 0 : want_r;
	bool ok = r == expected_r && verdict->reason == reason && message_ok(verdict) &&
	          (text == NULL || strstr(verdict->message, text) != NULL);

	if (!ok) {
		print_error("expected r=%d reason=%d '%s'; got r=%d reason=%d '%s'\n", expected_r,
		            (int) reason, text != NULL ? text : "", r, (int) verdict->reason,
		            verdict->message);
	}
	return ok;
}

static bool
roundtrip_gives(struct fixture *f, Coord__V1__Reason reason, const char *text)
{
	struct wire_verdict verdict = {.reason = COORD__V1__REASON__REASON_OVERLOADED};
	int r = roundtrip(&f->env, &verdict);

	return verdict_matches(r, &verdict, -EINVAL, reason, text);
}

#define assert_roundtrip(f, reason, text) assert_true(roundtrip_gives((f), (reason), (text)))
#define assert_accepted(f) assert_roundtrip((f), COORD__V1__REASON__REASON_NONE, NULL)

/* ------------------------------------------------------------------------------------------ */
/* Members of the record bodies, for the rule tables. */

enum member_kind {
	MEMBER_STRING,
	MEMBER_ENUM,
	MEMBER_INT64,
	MEMBER_LANGUAGES,
};

struct member {
	Coord__V1__Envelope__BodyCase body;
	size_t offset;
	enum member_kind kind;
	const char *path;
};

#define M(body, type, field, kind, path)                                                           \
	{                                                                                          \
		COORD__V1__ENVELOPE__BODY_##body, offsetof(type, field), kind, path                \
	}

static void
set_string(struct fixture *f, const struct member *m, const char *value)
{
	char *s = (char *) value;

	assert_int_equal(m->kind, MEMBER_STRING);
	memcpy((char *) body_message(f, m->body) + m->offset, &s, sizeof(s));
}

static void
set_enum(struct fixture *f, const struct member *m, int value)
{
	assert_int_equal(m->kind, MEMBER_ENUM);
	memcpy((char *) body_message(f, m->body) + m->offset, &value, sizeof(value));
}

static void
set_int64(struct fixture *f, const struct member *m, int64_t value)
{
	assert_int_equal(m->kind, MEMBER_INT64);
	memcpy((char *) body_message(f, m->body) + m->offset, &value, sizeof(value));
}

/* Languages members point at the n_languages member; the array pointer follows it. */
_Static_assert(offsetof(Coord__V1__Event, languages) ==
                       offsetof(Coord__V1__Event, n_languages) + sizeof(size_t),
               "languages follows n_languages");
_Static_assert(offsetof(Coord__V1__Statement, languages) ==
                       offsetof(Coord__V1__Statement, n_languages) + sizeof(size_t),
               "languages follows n_languages");
static void
set_languages(struct fixture *f, const struct member *m, char **tags, size_t n)
{
	char *base = (char *) body_message(f, m->body) + m->offset;

	assert_int_equal(m->kind, MEMBER_LANGUAGES);
	memcpy(base, &n, sizeof(n));
	memcpy(base + sizeof(size_t), &tags, sizeof(tags));
}

/* Start each table entry from a fresh valid fixture carrying the member's body. */
static void
reset_for(struct fixture *f, const struct member *m)
{
	fixture_fill(f);
	use_body(f, m->body);
}

/* A string of n bytes of c in the fixture's scratch buffer. */
static const char *
repeat(struct fixture *f, char c, size_t n)
{
	assert_true(n < sizeof(f->text));
	memset(f->text, c, n);
	f->text[n] = '\0';
	return f->text;
}

static const struct member required_members[] = {
        M(EVENT, Coord__V1__Event, kind, MEMBER_ENUM, "event.kind"),
        M(EVENT, Coord__V1__Event, country, MEMBER_STRING, "event.country"),
        M(EVENT, Coord__V1__Event, date, MEMBER_INT64, "event.date"),
        M(EVENT, Coord__V1__Event, title, MEMBER_STRING, "event.title"),
        M(LETTER, Coord__V1__OutreachLetter, recipient_kind, MEMBER_ENUM, "letter.recipient_kind"),
        M(LETTER, Coord__V1__OutreachLetter, recipient, MEMBER_STRING, "letter.recipient"),
        M(LETTER, Coord__V1__OutreachLetter, recipient_country, MEMBER_STRING,
          "letter.recipient_country"),
        M(LETTER, Coord__V1__OutreachLetter, language, MEMBER_STRING, "letter.language"),
        M(LETTER, Coord__V1__OutreachLetter, sent_at, MEMBER_INT64, "letter.sent_at"),
        M(STATEMENT, Coord__V1__Statement, organisation, MEMBER_STRING, "statement.organisation"),
        M(STATEMENT, Coord__V1__Statement, country, MEMBER_STRING, "statement.country"),
        M(STATEMENT, Coord__V1__Statement, n_languages, MEMBER_LANGUAGES, "statement.languages"),
        M(STATEMENT, Coord__V1__Statement, date, MEMBER_INT64, "statement.date"),
        M(PETITION, Coord__V1__Petition, target_kind, MEMBER_ENUM, "petition.target_kind"),
        M(PETITION, Coord__V1__Petition, target, MEMBER_STRING, "petition.target"),
        M(PETITION, Coord__V1__Petition, country, MEMBER_STRING, "petition.country"),
        M(PETITION, Coord__V1__Petition, date, MEMBER_INT64, "petition.date"),
        M(MEDIA, Coord__V1__MediaReport, kind, MEMBER_ENUM, "media.kind"),
        M(MEDIA, Coord__V1__MediaReport, outlet, MEMBER_STRING, "media.outlet"),
        M(MEDIA, Coord__V1__MediaReport, country, MEMBER_STRING, "media.country"),
        M(MEDIA, Coord__V1__MediaReport, language, MEMBER_STRING, "media.language"),
        M(MEDIA, Coord__V1__MediaReport, date, MEMBER_INT64, "media.date"),
};

static const struct member optional_members[] = {
        M(EVENT, Coord__V1__Event, city, MEMBER_STRING, "event.city"),
        M(EVENT, Coord__V1__Event, organiser, MEMBER_STRING, "event.organiser"),
        M(EVENT, Coord__V1__Event, n_languages, MEMBER_LANGUAGES, "event.languages"),
        M(LETTER, Coord__V1__OutreachLetter, subject, MEMBER_STRING, "letter.subject"),
        M(LETTER, Coord__V1__OutreachLetter, channel, MEMBER_ENUM, "letter.channel"),
        M(STATEMENT, Coord__V1__Statement, title, MEMBER_STRING, "statement.title"),
        M(PETITION, Coord__V1__Petition, title, MEMBER_STRING, "petition.title"),
        M(PETITION, Coord__V1__Petition, language, MEMBER_STRING, "petition.language"),
        M(MEDIA, Coord__V1__MediaReport, title, MEMBER_STRING, "media.title"),
        M(MEDIA, Coord__V1__MediaReport, url, MEMBER_STRING, "media.url"),
        M(RETRACTION, Coord__V1__Retraction, reason, MEMBER_STRING, "retraction.reason"),
};

/* One line, at most WIRE_NAME_MAX bytes. */
static const struct member name_members[] = {
        M(EVENT, Coord__V1__Event, city, MEMBER_STRING, "event.city"),
        M(EVENT, Coord__V1__Event, organiser, MEMBER_STRING, "event.organiser"),
        M(LETTER, Coord__V1__OutreachLetter, recipient, MEMBER_STRING, "letter.recipient"),
        M(STATEMENT, Coord__V1__Statement, organisation, MEMBER_STRING, "statement.organisation"),
        M(PETITION, Coord__V1__Petition, target, MEMBER_STRING, "petition.target"),
        M(MEDIA, Coord__V1__MediaReport, outlet, MEMBER_STRING, "media.outlet"),
};

/* Text with '\n' and '\t' allowed, at most WIRE_TEXT_MAX bytes. */
static const struct member text_members[] = {
        M(EVENT, Coord__V1__Event, title, MEMBER_STRING, "event.title"),
        M(LETTER, Coord__V1__OutreachLetter, subject, MEMBER_STRING, "letter.subject"),
        M(STATEMENT, Coord__V1__Statement, title, MEMBER_STRING, "statement.title"),
        M(PETITION, Coord__V1__Petition, title, MEMBER_STRING, "petition.title"),
        M(MEDIA, Coord__V1__MediaReport, title, MEMBER_STRING, "media.title"),
        M(RETRACTION, Coord__V1__Retraction, reason, MEMBER_STRING, "retraction.reason"),
};

static const struct member country_members[] = {
        M(EVENT, Coord__V1__Event, country, MEMBER_STRING, "event.country"),
        M(LETTER, Coord__V1__OutreachLetter, recipient_country, MEMBER_STRING,
          "letter.recipient_country"),
        M(STATEMENT, Coord__V1__Statement, country, MEMBER_STRING, "statement.country"),
        M(PETITION, Coord__V1__Petition, country, MEMBER_STRING, "petition.country"),
        M(MEDIA, Coord__V1__MediaReport, country, MEMBER_STRING, "media.country"),
};

static const struct member language_members[] = {
        M(LETTER, Coord__V1__OutreachLetter, language, MEMBER_STRING, "letter.language"),
        M(PETITION, Coord__V1__Petition, language, MEMBER_STRING, "petition.language"),
        M(MEDIA, Coord__V1__MediaReport, language, MEMBER_STRING, "media.language"),
};

static const struct member languages_members[] = {
        M(EVENT, Coord__V1__Event, n_languages, MEMBER_LANGUAGES, "event.languages"),
        M(STATEMENT, Coord__V1__Statement, n_languages, MEMBER_LANGUAGES, "statement.languages"),
};

static const struct member date_members[] = {
        M(EVENT, Coord__V1__Event, date, MEMBER_INT64, "event.date"),
        M(LETTER, Coord__V1__OutreachLetter, sent_at, MEMBER_INT64, "letter.sent_at"),
        M(STATEMENT, Coord__V1__Statement, date, MEMBER_INT64, "statement.date"),
        M(PETITION, Coord__V1__Petition, date, MEMBER_INT64, "petition.date"),
        M(MEDIA, Coord__V1__MediaReport, date, MEMBER_INT64, "media.date"),
};

/* Enums with the first value past the last known one. */
static const struct {
	struct member member;
	int unknown;
} enum_members[] = {
        {M(EVENT, Coord__V1__Event, kind, MEMBER_ENUM, "event.kind"), 14},
        {M(LETTER, Coord__V1__OutreachLetter, recipient_kind, MEMBER_ENUM, "letter.recipient_kind"),
         8},
        {M(LETTER, Coord__V1__OutreachLetter, channel, MEMBER_ENUM, "letter.channel"), 6},
        {M(PETITION, Coord__V1__Petition, target_kind, MEMBER_ENUM, "petition.target_kind"), 4},
        {M(MEDIA, Coord__V1__MediaReport, kind, MEMBER_ENUM, "media.kind"), 4},
};

/* Set m to its zero value: empty string, 0, no entries. */
static void
clear_member(struct fixture *f, const struct member *m)
{
	switch (m->kind) {
	case MEMBER_STRING:
		set_string(f, m, "");
		break;
	case MEMBER_ENUM:
		set_enum(f, m, 0);
		break;
	case MEMBER_INT64:
		set_int64(f, m, 0);
		break;
	case MEMBER_LANGUAGES:
		set_languages(f, m, NULL, 0);
		break;
	}
}

/* ------------------------------------------------------------------------------------------ */
/* Unpacking */

static void
test_unpack_accepts_valid_envelope(void **state)
{
	struct fixture *f = *state;
	Coord__V1__Envelope *env = NULL;
	struct wire_verdict verdict;
	size_t size;
	uint8_t *buf = pack(&f->env, &size);

	assert_int_equal(wire_unpack_envelope(buf, size, size, &env, &verdict), 0);
	free(buf);
	assert_non_null(env);
	assert_int_equal(verdict.reason, COORD__V1__REASON__REASON_NONE);
	assert_string_equal(verdict.message, "");
	assert_string_equal(env->council, "council-de_1");
	assert_int_equal(env->body_case, COORD__V1__ENVELOPE__BODY_EVENT);
	assert_string_equal(env->event->title, "Rally at the Brandenburg Gate");
	assert_int_equal(env->event->n_languages, 3);
	coord__v1__envelope__free_unpacked(env, NULL);
}

static void
test_unpack_rejects_empty_frame(void **state)
{
	Coord__V1__Envelope *env = NULL;
	struct wire_verdict verdict;
	const uint8_t byte = 0;

	(void) state;
	assert_true(verdict_matches(wire_unpack_envelope(&byte, 0, FRAME_MAX, &env, &verdict),
	                            &verdict, -EBADMSG, COORD__V1__REASON__REASON_MALFORMED,
	                            "empty frame"));
	assert_true(verdict_matches(wire_unpack_envelope(NULL, 0, FRAME_MAX, &env, &verdict),
	                            &verdict, -EBADMSG, COORD__V1__REASON__REASON_MALFORMED,
	                            "empty frame"));
	assert_null(env);
}

static void
test_unpack_rejects_frame_over_limit(void **state)
{
	struct fixture *f = *state;
	Coord__V1__Envelope *env = NULL;
	struct wire_verdict verdict;
	size_t size;
	uint8_t *buf = pack(&f->env, &size);

	assert_true(verdict_matches(wire_unpack_envelope(buf, size, size - 1, &env, &verdict),
	                            &verdict, -EBADMSG, COORD__V1__REASON__REASON_TOO_LARGE,
	                            "exceeds the limit"));
	assert_null(env);
	assert_int_equal(wire_unpack_envelope(buf, size, size, &env, &verdict), 0);
	coord__v1__envelope__free_unpacked(env, NULL);
	free(buf);
}

static void
test_unpack_rejects_undecodable_frames(void **state)
{
	static const struct {
		const char *bytes;
		size_t len;
	} frames[] = {
	        {"\xff\xff\xff", 3}, /* no valid tag */
	        {"\x0a\x05"
	         "ab",
	         4},                     /* council longer than the frame */
	        {"\x08\x05", 2},         /* council (a string) sent as a varint */
	        {"\x18", 1},             /* revision without its value */
	        {"\x1a\x01x", 3},        /* revision (a varint) sent as bytes */
	        {"\xab\x01\xac\x01", 4}, /* a group */
	        {"\x52\x03\x12\x05"
	         "D",
	         5}, /* event whose country runs past it */
	};
	Coord__V1__Envelope *env = NULL;
	struct wire_verdict verdict;

	(void) state;
	for (size_t i = 0; i < ARRAY_SIZE(frames); i++) {
		int r = wire_unpack_envelope(frames[i].bytes, frames[i].len, FRAME_MAX, &env,
		                             &verdict);

		if (!verdict_matches(r, &verdict, -EBADMSG, COORD__V1__REASON__REASON_MALFORMED,
		                     "not a protobuf")) {
			fail_msg("frame %zu", i);
		}
		assert_null(env);
	}
}

static void
test_unpack_rejects_truncated_frame(void **state)
{
	struct fixture *f = *state;
	struct wire_verdict verdict;
	size_t size;
	uint8_t *buf = pack(&f->env, &size);

	assert_true(verdict_matches(decode(buf, size - 1, NOW_MS, &verdict), &verdict, -EBADMSG,
	                            COORD__V1__REASON__REASON_MALFORMED, NULL));
	free(buf);
}

static void
test_unpack_leaves_ret_env_untouched_on_failure(void **state)
{
	Coord__V1__Envelope sentinel;
	Coord__V1__Envelope *env = &sentinel;
	struct wire_verdict verdict;

	(void) state;
	assert_int_equal(wire_unpack_envelope("\xff", 1, FRAME_MAX, &env, &verdict), -EBADMSG);
	assert_ptr_equal(env, &sentinel);
	/* A NUL in msg_id: the cut msg_id could name another message, so no envelope. */
	assert_int_equal(wire_unpack_envelope("\x12\x01\x00", 3, FRAME_MAX, &env, &verdict),
	                 -EBADMSG);
	assert_ptr_equal(env, &sentinel);
}

static void
test_unpack_hands_out_envelope_for_echo_on_bad_string(void **state)
{
	struct fixture *f = *state;
	struct wire_verdict verdict;
	Coord__V1__Envelope *env = NULL;
	size_t size;
	uint8_t *buf;

	f->event.title = "Rally|hidden";
	buf = pack(&f->env, &size);
	patch(buf, size, "|", "\0");
	assert_int_equal(wire_unpack_envelope(buf, size, FRAME_MAX, &env, &verdict), -EBADMSG);
	assert_int_equal(verdict.reason, COORD__V1__REASON__REASON_INVALID_UTF8);
	assert_non_null(env);
	assert_string_equal(env->msg_id, f->env.msg_id);
	assert_int_equal(env->revision, f->env.revision);
	coord__v1__envelope__free_unpacked(env, NULL);
	free(buf);
}

static void
test_unpack_rejects_nul_byte_in_string(void **state)
{
	struct fixture *f = *state;
	struct wire_verdict verdict;
	size_t size;
	uint8_t *buf;

	/* protobuf-c would hand "council-de" to C code and store the rest unseen. */
	f->env.council = "council-deXevil";
	buf = pack(&f->env, &size);
	patch(buf, size, "X", "\0");
	assert_true(verdict_matches(decode(buf, size, NOW_MS, &verdict), &verdict, -EBADMSG,
	                            COORD__V1__REASON__REASON_INVALID_UTF8,
	                            "council holds a NUL byte"));
	free(buf);
}

static void
test_unpack_rejects_nul_byte_in_nested_string(void **state)
{
	struct fixture *f = *state;
	struct wire_verdict verdict;
	size_t size;
	uint8_t *buf;

	f->event.title = "Rally|hidden";
	buf = pack(&f->env, &size);
	patch(buf, size, "|", "\0");
	assert_true(verdict_matches(decode(buf, size, NOW_MS, &verdict), &verdict, -EBADMSG,
	                            COORD__V1__REASON__REASON_INVALID_UTF8,
	                            "event.title holds a NUL byte"));
	free(buf);

	f->event_languages[1] = "en|GB";
	f->event.title = "Rally";
	buf = pack(&f->env, &size);
	patch(buf, size, "|", "\0");
	assert_true(verdict_matches(decode(buf, size, NOW_MS, &verdict), &verdict, -EBADMSG,
	                            COORD__V1__REASON__REASON_INVALID_UTF8,
	                            "event.languages holds a NUL byte"));
	free(buf);
}

static void
test_unpack_rejects_invalid_utf8_in_overridden_string(void **state)
{
	struct fixture *f = *state;
	struct wire_verdict verdict;
	size_t size;
	uint8_t *packed = pack(&f->env, &size);
	/* A council field with invalid UTF-8 first: the valid one that follows wins in every
	 * decoder, but a strict decoder refuses the stored frame. */
	uint8_t *buf = malloc(size + 3);

	assert_non_null(buf);
	memcpy(buf, "\x0a\x01\xff", 3);
	memcpy(buf + 3, packed, size);
	assert_true(verdict_matches(decode(buf, size + 3, NOW_MS, &verdict), &verdict, -EBADMSG,
	                            COORD__V1__REASON__REASON_INVALID_UTF8,
	                            "council is not valid UTF-8"));
	free(buf);
	free(packed);
}

static void
test_unpack_ignores_unknown_fields(void **state)
{
	struct fixture *f = *state;
	struct wire_verdict verdict;
	size_t size;
	uint8_t *packed = pack(&f->env, &size);
	/* Field 100 (bytes) holding a NUL and invalid UTF-8, fields 101 (varint), 102 (fixed64)
	 * and 103 (fixed32): unknown to this broker, kept as bytes, never seen as strings. */
	static const char unknown[] = "\xa2\x06\x03\x00\xff\xfe"
	                              "\xa8\x06\x01"
	                              "\xb1\x06\x01\x02\x03\x04\x05\x06\x07\x08"
	                              "\xbd\x06\x01\x02\x03\x04";
	uint8_t *buf = malloc(size + sizeof(unknown) - 1);

	assert_non_null(buf);
	memcpy(buf, packed, size);
	memcpy(buf + size, unknown, sizeof(unknown) - 1);
	assert_true(verdict_matches(decode(buf, size + sizeof(unknown) - 1, NOW_MS, &verdict),
	                            &verdict, 0, COORD__V1__REASON__REASON_NONE, NULL));
	free(buf);
	free(packed);
}

/* In a child process: cap the address space so that a large allocation fails, then unpack.
 * Exit 0 when wire reported -ENOMEM, 77 when the cap could not be made to bite. */
static int
unpack_with_capped_memory(const uint8_t *buf, size_t size)
{
	Coord__V1__Envelope *env = NULL;
	struct wire_verdict verdict;
	unsigned long pages = 0;
	FILE *statm = fopen("/proc/self/statm", "r");
	struct rlimit limit;

	if (statm == NULL || fscanf(statm, "%lu", &pages) != 1) {
		return 77;
	}
	(void) fclose(statm);
	limit.rlim_cur = limit.rlim_max = pages * (unsigned long) sysconf(_SC_PAGESIZE) + (1 << 20);
	if (setrlimit(RLIMIT_AS, &limit) < 0) {
		return 77;
	}
	/* volatile: clang drops a malloc() whose result is only compared with NULL. */
	void *volatile probe = malloc(size);
	if (probe != NULL) {
		free(probe);
		return 77;
	}
	return wire_unpack_envelope(buf, size, SIZE_MAX, &env, &verdict) == -ENOMEM && env == NULL
	               ? 0
	               : 1;
}

static void
test_unpack_reports_out_of_memory(void **state)
{
	struct fixture *f = *state;
	const size_t title_len = 8 << 20;
	char *title;
	uint8_t *buf;
	size_t size;
	int status = 0;
	pid_t pid;

	if (UNDER_ASAN || getenv("COORD_UNDER_VALGRIND")) {
		/* ASan aborts on a failed allocation instead of returning NULL; valgrind replaces
		 * the allocator, so an address-space cap does not make malloc fail. */
		skip();
	}
	title = malloc(title_len + 1);
	assert_non_null(title);
	memset(title, 'a', title_len);
	title[title_len] = '\0';
	f->event.title = title;
	buf = pack(&f->env, &size);
	free(title);

	(void) fflush(NULL);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		_exit(unpack_with_capped_memory(buf, size));
	}
	free(buf);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	if (WEXITSTATUS(status) == 77) {
		skip();
	}
	assert_int_equal(WEXITSTATUS(status), 0);
}

/* A bump allocator over a fixed buffer that counts frees: what wire_unpack_envelope_with()
 * is given, as ingest gives it a batch's arena. `room` 0 fails every allocation. */
struct fixed_arena {
	uint8_t buf[8192];
	size_t used, room;
	unsigned frees;
};

static void *
fixed_alloc(void *data, size_t n)
{
	struct fixed_arena *a = data;

	n = (n + 15) & ~(size_t) 15;
	if (a->room - a->used < n) {
		return NULL;
	}
	void *p = a->buf + a->used;
	a->used += n;
	return p;
}

static void
fixed_free(void *data, void *p)
{
	struct fixed_arena *a = data;

	assert_true((uint8_t *) p >= a->buf && (uint8_t *) p < a->buf + sizeof(a->buf));
	a->frees++;
}

static void
test_unpack_with_allocator_uses_it(void **state)
{
	struct fixture *f = *state;
	static struct fixed_arena a;
	ProtobufCAllocator alloc = {.alloc = fixed_alloc, .free = fixed_free, .allocator_data = &a};
	Coord__V1__Envelope *env = NULL;
	struct wire_verdict verdict;
	size_t size;
	uint8_t *buf = pack(&f->env, &size);

	a = (struct fixed_arena){.room = sizeof(a.buf)};
	assert_int_equal(wire_unpack_envelope_with(&alloc, buf, size, size, &env, &verdict), 0);
	assert_non_null(env);
	assert_true((uint8_t *) env >= a.buf && (uint8_t *) env < a.buf + a.used);
	assert_true((uint8_t *) env->event->title >= a.buf &&
	            (uint8_t *) env->event->title < a.buf + a.used);
	assert_string_equal(env->event->title, "Rally at the Brandenburg Gate");
	assert_int_equal(env->event->n_languages, 3);
	assert_int_equal(a.frees, 0);
	coord__v1__envelope__free_unpacked(env, &alloc);
	assert_true(a.frees > 0);

	/* A failed allocation is -ENOMEM, not a malformed frame, and hands out nothing. */
	a = (struct fixed_arena){.room = 0};
	env = NULL;
	assert_int_equal(wire_unpack_envelope_with(&alloc, buf, size, size, &env, &verdict),
	                 -ENOMEM);
	assert_null(env);

	/* Refused for a bad string after the unpack: what protobuf-c allocated is freed with
	 * the same allocator. */
	f->event.city = "Ber\xc3lin";
	free(buf);
	buf = pack(&f->env, &size);
	a = (struct fixed_arena){.room = sizeof(a.buf)};
	assert_true(verdict_matches(
	        wire_unpack_envelope_with(&alloc, buf, size, size, &env, &verdict), &verdict,
	        -EBADMSG, COORD__V1__REASON__REASON_INVALID_UTF8, "event.city"));
	assert_non_null(env);
	assert_true((uint8_t *) env >= a.buf && (uint8_t *) env < a.buf + a.used);
	free(buf);
}

/* ------------------------------------------------------------------------------------------ */
/* Envelope fields */

static void
test_validate_accepts_every_body(void **state)
{
	static const Coord__V1__Envelope__BodyCase bodies[] = {
	        COORD__V1__ENVELOPE__BODY_EVENT,     COORD__V1__ENVELOPE__BODY_LETTER,
	        COORD__V1__ENVELOPE__BODY_STATEMENT, COORD__V1__ENVELOPE__BODY_PETITION,
	        COORD__V1__ENVELOPE__BODY_MEDIA,     COORD__V1__ENVELOPE__BODY_RETRACTION,
	};
	struct fixture *f = *state;

	for (size_t i = 0; i < ARRAY_SIZE(bodies); i++) {
		use_body(f, bodies[i]);
		assert_accepted(f);
	}
}

static void
test_validate_clears_verdict_when_valid(void **state)
{
	struct fixture *f = *state;
	struct wire_verdict verdict = {.reason = COORD__V1__REASON__REASON_MALFORMED,
	                               .message = "stale"};

	assert_int_equal(wire_validate_envelope(&f->env, NOW_MS, &verdict), 0);
	assert_int_equal(verdict.reason, COORD__V1__REASON__REASON_NONE);
	assert_string_equal(verdict.message, "");
}

static void
test_validate_rejects_missing_council(void **state)
{
	struct fixture *f = *state;

	f->env.council = "";
	assert_roundtrip(f, COORD__V1__REASON__REASON_MISSING_FIELD, "council is required");
}

static void
test_validate_rejects_council_over_limit(void **state)
{
	struct fixture *f = *state;

	f->env.council = (char *) repeat(f, 'c', WIRE_COUNCIL_MAX);
	assert_accepted(f);
	f->env.council = (char *) repeat(f, 'c', WIRE_COUNCIL_MAX + 1);
	assert_roundtrip(f, COORD__V1__REASON__REASON_FIELD_TOO_LONG, "council is longer than 32");
}

static void
test_validate_rejects_council_with_bad_characters(void **state)
{
	static const char *const councils[] = {
	        "Council", "-council", "_council", "council de", "council.de", "sövet", "c\x7f",
	};
	struct fixture *f = *state;

	for (size_t i = 0; i < ARRAY_SIZE(councils); i++) {
		f->env.council = (char *) councils[i];
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_INVALID_ID, "council")) {
			fail_msg("council '%s'", councils[i]);
		}
	}
	f->env.council = "0council_-";
	assert_accepted(f);
}

static void
test_validate_rejects_missing_msg_id(void **state)
{
	struct fixture *f = *state;

	f->env.msg_id = "";
	assert_roundtrip(f, COORD__V1__REASON__REASON_MISSING_FIELD, "msg_id is required");
}

static void
test_validate_rejects_msg_id_over_limit(void **state)
{
	struct fixture *f = *state;

	f->env.msg_id = (char *) repeat(f, '~', WIRE_MSG_ID_MAX);
	assert_accepted(f);
	f->env.msg_id = (char *) repeat(f, '!', WIRE_MSG_ID_MAX + 1);
	assert_roundtrip(f, COORD__V1__REASON__REASON_FIELD_TOO_LONG, "msg_id is longer than 128");
}

static void
test_validate_rejects_msg_id_outside_printable_ascii(void **state)
{
	static const char *const ids[] = {"a b", "a\tb", "\xc3\xa9t\xc3\xa9", "a\x7f"};
	struct fixture *f = *state;

	for (size_t i = 0; i < ARRAY_SIZE(ids); i++) {
		f->env.msg_id = (char *) ids[i];
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_INVALID_ID,
		                     "msg_id holds byte")) {
			fail_msg("msg_id %zu", i);
		}
	}
}

static void
test_validate_rejects_revision_zero(void **state)
{
	struct fixture *f = *state;

	f->env.revision = 0;
	assert_roundtrip(f, COORD__V1__REASON__REASON_INVALID_REVISION, "revision");
	f->env.revision = UINT32_MAX;
	assert_accepted(f);
}

static void
test_validate_rejects_missing_created_at(void **state)
{
	struct fixture *f = *state;

	f->env.created_at = 0;
	assert_roundtrip(f, COORD__V1__REASON__REASON_MISSING_FIELD, "created_at is required");
}

static void
test_validate_checks_created_at_range(void **state)
{
	struct fixture *f = *state;

	f->env.created_at = WIRE_TIME_MIN_MS;
	assert_accepted(f);
	f->env.created_at = NOW_MS + WIRE_CREATED_AHEAD_MAX_MS;
	assert_accepted(f);
	f->env.created_at = WIRE_TIME_MIN_MS - 1;
	assert_roundtrip(f, COORD__V1__REASON__REASON_INVALID_TIMESTAMP, "before 2000-01-01");
	f->env.created_at = NOW_MS / 1000; /* seconds, a common mistake */
	assert_roundtrip(f, COORD__V1__REASON__REASON_INVALID_TIMESTAMP, "Unix milliseconds");
	f->env.created_at = -1;
	assert_roundtrip(f, COORD__V1__REASON__REASON_INVALID_TIMESTAMP, "created_at -1");
	f->env.created_at = NOW_MS + WIRE_CREATED_AHEAD_MAX_MS + 1;
	assert_roundtrip(f, COORD__V1__REASON__REASON_INVALID_TIMESTAMP, "more than 1 day ahead");
}

static void
test_validate_saturates_time_limit_near_int64_max(void **state)
{
	struct fixture *f = *state;
	struct wire_verdict verdict;

	f->env.created_at = INT64_MAX;
	f->event.date = INT64_MAX;
	assert_int_equal(wire_validate_envelope(&f->env, INT64_MAX - 10, &verdict), 0);
	assert_int_equal(wire_validate_envelope(&f->env, INT64_MAX, &verdict), 0);
}

static void
test_validate_rejects_missing_body(void **state)
{
	struct fixture *f = *state;
	struct wire_verdict verdict;

	use_body(f, COORD__V1__ENVELOPE__BODY__NOT_SET);
	assert_roundtrip(f, COORD__V1__REASON__REASON_MISSING_FIELD, "no record body");

	/* A hand-built Envelope naming a body without its message. */
	use_body(f, COORD__V1__ENVELOPE__BODY_EVENT);
	f->env.event = NULL;
	assert_true(verdict_matches(wire_validate_envelope(&f->env, NOW_MS, &verdict), &verdict,
	                            -EINVAL, COORD__V1__REASON__REASON_MISSING_FIELD,
	                            "no record body"));
}

static void
test_validate_treats_null_strings_as_empty(void **state)
{
	struct fixture *f = *state;
	struct wire_verdict verdict;

	f->env.council = NULL;
	assert_true(verdict_matches(wire_validate_envelope(&f->env, NOW_MS, &verdict), &verdict,
	                            -EINVAL, COORD__V1__REASON__REASON_MISSING_FIELD, "council"));
	fixture_fill(f);
	f->env.msg_id = NULL;
	assert_true(verdict_matches(wire_validate_envelope(&f->env, NOW_MS, &verdict), &verdict,
	                            -EINVAL, COORD__V1__REASON__REASON_MISSING_FIELD, "msg_id"));
	fixture_fill(f);
	f->event.title = NULL;
	assert_true(verdict_matches(wire_validate_envelope(&f->env, NOW_MS, &verdict), &verdict,
	                            -EINVAL, COORD__V1__REASON__REASON_MISSING_FIELD,
	                            "event.title"));
	fixture_fill(f);
	f->event_languages[0] = NULL;
	assert_true(verdict_matches(wire_validate_envelope(&f->env, NOW_MS, &verdict), &verdict,
	                            -EINVAL, COORD__V1__REASON__REASON_INVALID_LANGUAGE,
	                            "event.languages[0] is empty"));
}

/* ------------------------------------------------------------------------------------------ */
/* Record fields, rule by rule */

static void
test_required_fields_are_rejected_when_absent(void **state)
{
	struct fixture *f = *state;

	for (size_t i = 0; i < ARRAY_SIZE(required_members); i++) {
		const struct member *m = &required_members[i];

		reset_for(f, m);
		clear_member(f, m);
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_MISSING_FIELD, m->path)) {
			fail_msg("%s", m->path);
		}
	}
}

static void
test_optional_fields_may_be_absent(void **state)
{
	struct fixture *f = *state;

	for (size_t i = 0; i < ARRAY_SIZE(optional_members); i++) {
		const struct member *m = &optional_members[i];

		reset_for(f, m);
		clear_member(f, m);
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_NONE, NULL)) {
			fail_msg("%s", m->path);
		}
	}
}

static void
test_name_fields_are_limited_to_one_line_of_256_bytes(void **state)
{
	static const char *const control[] = {"a\tb", "a\nb", "a\rb", "a\x1b", "a\x7f"};
	struct fixture *f = *state;

	for (size_t i = 0; i < ARRAY_SIZE(name_members); i++) {
		const struct member *m = &name_members[i];

		reset_for(f, m);
		set_string(f, m, repeat(f, 'n', WIRE_NAME_MAX));
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_NONE, NULL)) {
			fail_msg("%s at the limit", m->path);
		}
		set_string(f, m, repeat(f, 'n', WIRE_NAME_MAX + 1));
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_FIELD_TOO_LONG, m->path)) {
			fail_msg("%s over the limit", m->path);
		}
		for (size_t j = 0; j < ARRAY_SIZE(control); j++) {
			set_string(f, m, control[j]);
			if (!roundtrip_gives(f, COORD__V1__REASON__REASON_INVALID_UTF8,
			                     "control character")) {
				fail_msg("%s with control %zu", m->path, j);
			}
		}
	}
}

static void
test_text_fields_allow_newline_and_tab_up_to_1024_bytes(void **state)
{
	static const char *const control[] = {"a\rb", "a\x01", "a\x1b[31m", "a\x7f"};
	struct fixture *f = *state;

	for (size_t i = 0; i < ARRAY_SIZE(text_members); i++) {
		const struct member *m = &text_members[i];

		reset_for(f, m);
		set_string(f, m, "Line one\n\tLine two\n");
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_NONE, NULL)) {
			fail_msg("%s with newline and tab", m->path);
		}
		set_string(f, m, repeat(f, 't', WIRE_TEXT_MAX));
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_NONE, NULL)) {
			fail_msg("%s at the limit", m->path);
		}
		set_string(f, m, repeat(f, 't', WIRE_TEXT_MAX + 1));
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_FIELD_TOO_LONG, m->path)) {
			fail_msg("%s over the limit", m->path);
		}
		for (size_t j = 0; j < ARRAY_SIZE(control); j++) {
			set_string(f, m, control[j]);
			if (!roundtrip_gives(f, COORD__V1__REASON__REASON_INVALID_UTF8,
			                     "control character")) {
				fail_msg("%s with control %zu", m->path, j);
			}
		}
	}
}

static void
test_url_is_one_line_of_1024_bytes(void **state)
{
	struct fixture *f = *state;

	use_body(f, COORD__V1__ENVELOPE__BODY_MEDIA);
	f->media.url = (char *) repeat(f, 'u', WIRE_TEXT_MAX);
	assert_accepted(f);
	f->media.url = (char *) repeat(f, 'u', WIRE_TEXT_MAX + 1);
	assert_roundtrip(f, COORD__V1__REASON__REASON_FIELD_TOO_LONG, "media.url");
	f->media.url = "https://example.org/\nSet-Cookie: x";
	assert_roundtrip(f, COORD__V1__REASON__REASON_INVALID_UTF8, "media.url holds control");
}

static void
test_strings_must_be_valid_utf8(void **state)
{
	/* Overlong '/', overlong 3- and 4-byte forms, a surrogate, above U+10FFFF, a stray
	 * continuation byte, a cut sequence, bytes that never occur. */
	static const char *const invalid[] = {
	        "a\xc0\xaf",     "a\xe0\x80\xaf",     "a\xf0\x80\x80\xaf",
	        "a\xed\xa0\x80", "a\xf4\x90\x80\x80", "a\x80",
	        "a\xe2\x82",     "a\xfe\xff",         "\xc1\xbf",
	};
	struct fixture *f = *state;
	struct wire_verdict verdict;

	f->event.city = "Straße, Ереван, 東京, 😀";
	assert_accepted(f);
	for (size_t i = 0; i < ARRAY_SIZE(invalid); i++) {
		/* protobuf-c passes invalid UTF-8 through, so wire's frame walk refuses it... */
		f->event.city = (char *) invalid[i];
		if (!verdict_matches(roundtrip(&f->env, &verdict), &verdict, -EBADMSG,
		                     COORD__V1__REASON__REASON_INVALID_UTF8,
		                     "event.city is not valid UTF-8")) {
			fail_msg("string %zu at unpack", i);
		}
		/* ...and validation refuses it in an Envelope that did not come from bytes. */
		if (!verdict_matches(wire_validate_envelope(&f->env, NOW_MS, &verdict), &verdict,
		                     -EINVAL, COORD__V1__REASON__REASON_INVALID_UTF8,
		                     "event.city is not valid UTF-8")) {
			fail_msg("string %zu at validation", i);
		}
	}
}

static void
test_country_fields_need_official_upper_case_codes(void **state)
{
	struct fixture *f = *state;

	for (size_t i = 0; i < ARRAY_SIZE(country_members); i++) {
		const struct member *m = &country_members[i];
		char expected[96];

		reset_for(f, m);
		set_string(f, m, "AM");
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_NONE, NULL)) {
			fail_msg("%s AM", m->path);
		}
		set_string(f, m, "de");
		(void) snprintf(expected, sizeof(expected),
		                "%s 'de' is not an ISO 3166-1 alpha-2 code (use upper case)",
		                m->path);
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_INVALID_COUNTRY, expected)) {
			fail_msg("%s de", m->path);
		}
		set_string(f, m, "XK");
		(void) snprintf(expected, sizeof(expected), "%s 'XK' is not an officially assigned",
		                m->path);
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_INVALID_COUNTRY, expected)) {
			fail_msg("%s XK", m->path);
		}
		set_string(f, m, "DEU");
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_INVALID_COUNTRY, "'DEU'")) {
			fail_msg("%s DEU", m->path);
		}
	}
}

static void
test_language_fields_need_bcp47_tags(void **state)
{
	struct fixture *f = *state;

	for (size_t i = 0; i < ARRAY_SIZE(language_members); i++) {
		const struct member *m = &language_members[i];

		reset_for(f, m);
		set_string(f, m, "HY-latn-am");
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_NONE, NULL)) {
			fail_msg("%s HY-latn-am", m->path);
		}
		set_string(f, m, "english");
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_INVALID_LANGUAGE,
		                     "'english' is not a BCP 47 tag")) {
			fail_msg("%s english", m->path);
		}
		set_string(f, m, "xx");
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_INVALID_LANGUAGE, m->path)) {
			fail_msg("%s xx", m->path);
		}
		set_string(f, m, "en-abcdefgh-abcdefgh-abcdefgh-abcdef");
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_FIELD_TOO_LONG, m->path)) {
			fail_msg("%s of 36 bytes", m->path);
		}
	}
}

static void
test_languages_fields_check_count_and_every_entry(void **state)
{
	static char *too_many[WIRE_LANGUAGES_MAX + 1];
	static char *with_empty[] = {"hy", ""};
	static char *with_invalid[] = {"hy", "en", "klingon"};
	struct fixture *f = *state;

	for (size_t i = 0; i < ARRAY_SIZE(too_many); i++) {
		too_many[i] = "en";
	}
	for (size_t i = 0; i < ARRAY_SIZE(languages_members); i++) {
		const struct member *m = &languages_members[i];
		char expected[64];

		reset_for(f, m);
		set_languages(f, m, too_many, WIRE_LANGUAGES_MAX);
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_NONE, NULL)) {
			fail_msg("%s at the limit", m->path);
		}
		set_languages(f, m, too_many, WIRE_LANGUAGES_MAX + 1);
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_FIELD_TOO_LONG,
		                     "has 17 entries")) {
			fail_msg("%s over the limit", m->path);
		}
		set_languages(f, m, with_empty, ARRAY_SIZE(with_empty));
		(void) snprintf(expected, sizeof(expected), "%s[1] is empty", m->path);
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_INVALID_LANGUAGE, expected)) {
			fail_msg("%s with an empty entry", m->path);
		}
		set_languages(f, m, with_invalid, ARRAY_SIZE(with_invalid));
		(void) snprintf(expected, sizeof(expected), "%s[2] 'klingon'", m->path);
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_INVALID_LANGUAGE, expected)) {
			fail_msg("%s with an invalid entry", m->path);
		}
		with_invalid[2] = "en-abcdefgh-abcdefgh-abcdefgh-abcdef";
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_FIELD_TOO_LONG, "[2]")) {
			fail_msg("%s with an over-long entry", m->path);
		}
		with_invalid[2] = "klingon";
	}
}

static void
test_date_fields_must_lie_between_2000_and_366_days_ahead(void **state)
{
	struct fixture *f = *state;

	for (size_t i = 0; i < ARRAY_SIZE(date_members); i++) {
		const struct member *m = &date_members[i];

		reset_for(f, m);
		set_int64(f, m, WIRE_TIME_MIN_MS);
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_NONE, NULL)) {
			fail_msg("%s at the minimum", m->path);
		}
		set_int64(f, m, NOW_MS + WIRE_DATE_AHEAD_MAX_MS);
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_NONE, NULL)) {
			fail_msg("%s at the maximum", m->path);
		}
		set_int64(f, m, WIRE_TIME_MIN_MS - 1);
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_INVALID_TIMESTAMP, m->path)) {
			fail_msg("%s before 2000", m->path);
		}
		set_int64(f, m, NOW_MS + WIRE_DATE_AHEAD_MAX_MS + 1);
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_INVALID_TIMESTAMP,
		                     "366 days ahead")) {
			fail_msg("%s too far ahead", m->path);
		}
		set_int64(f, m, INT64_MIN);
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_INVALID_TIMESTAMP, m->path)) {
			fail_msg("%s INT64_MIN", m->path);
		}
	}
}

static void
test_enum_fields_reject_unknown_values(void **state)
{
	struct fixture *f = *state;

	for (size_t i = 0; i < ARRAY_SIZE(enum_members); i++) {
		const struct member *m = &enum_members[i].member;
		char expected[64];

		reset_for(f, m);
		set_enum(f, m, enum_members[i].unknown - 1);
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_NONE, NULL)) {
			fail_msg("%s last known value", m->path);
		}
		set_enum(f, m, enum_members[i].unknown);
		(void) snprintf(expected, sizeof(expected), "%s %d is not a known", m->path,
		                enum_members[i].unknown);
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_INVALID_ENUM, expected)) {
			fail_msg("%s unknown value", m->path);
		}
		set_enum(f, m, -1);
		if (!roundtrip_gives(f, COORD__V1__REASON__REASON_INVALID_ENUM, m->path)) {
			fail_msg("%s -1", m->path);
		}
	}
}

static void
test_counts_accept_any_value(void **state)
{
	struct fixture *f = *state;

	f->event.participants = UINT32_MAX;
	assert_accepted(f);
	use_body(f, COORD__V1__ENVELOPE__BODY_PETITION);
	f->petition.signatures = UINT64_MAX;
	assert_accepted(f);
	use_body(f, COORD__V1__ENVELOPE__BODY_MEDIA);
	f->media.local_sources = 0;
	assert_accepted(f);
}

static void
test_first_problem_in_field_order_is_reported(void **state)
{
	struct fixture *f = *state;

	f->event.country = "xx";
	f->event.title = "";
	assert_roundtrip(f, COORD__V1__REASON__REASON_INVALID_COUNTRY, "event.country");
	f->env.revision = 0;
	assert_roundtrip(f, COORD__V1__REASON__REASON_INVALID_REVISION, NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* Verdict messages */

static void
test_verdict_quotes_long_peer_strings_cut_at_character_boundary(void **state)
{
	struct fixture *f = *state;
	struct wire_verdict verdict;
	/* 30 two-byte characters: the 40-byte cut falls inside none of them, 41 would. */
	static const char *const values[] = {
	        "ÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄ",
	        "aÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄ",
	        "a😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀😀",
	};

	for (size_t i = 0; i < ARRAY_SIZE(values); i++) {
		f->event.country = (char *) values[i];
		assert_int_equal(roundtrip(&f->env, &verdict), -EINVAL);
		assert_int_equal(verdict.reason, COORD__V1__REASON__REASON_INVALID_COUNTRY);
		assert_true(message_ok(&verdict));

		const char *open = strchr(verdict.message, '\'');
		const char *close = strstr(verdict.message, "...'");
		assert_non_null(open);
		assert_non_null(close);
		assert_true(close - open - 1 <= 40);
		assert_true(close - open - 1 >= 37);
		assert_memory_equal(open + 1, values[i], (size_t) (close - open - 1));
	}
}

static void
test_verdict_omits_unsafe_peer_strings(void **state)
{
	struct fixture *f = *state;
	struct wire_verdict verdict;

	/* Control characters would reach logs and terminals: no quote. */
	f->event.country = "D\n";
	assert_roundtrip(f, COORD__V1__REASON__REASON_INVALID_COUNTRY,
	                 "event.country is not an officially assigned");
	assert_int_equal(roundtrip(&f->env, &verdict), -EINVAL);
	assert_null(strchr(verdict.message, '\n'));

	/* Invalid UTF-8 never gets past unpacking, but validation alone must not quote it. */
	f->event.country = "\xff\xfe";
	assert_int_equal(wire_validate_envelope(&f->env, NOW_MS, &verdict), -EINVAL);
	assert_int_equal(verdict.reason, COORD__V1__REASON__REASON_INVALID_COUNTRY);
	assert_string_equal(verdict.message,
	                    "event.country is not an officially assigned ISO 3166-1 alpha-2 code");

	/* Nor a cut that keeps only an invalid prefix. */
	f->event.country = (char *) repeat(f, '\x80', 50);
	assert_int_equal(wire_validate_envelope(&f->env, NOW_MS, &verdict), -EINVAL);
	assert_null(strchr(verdict.message, '\''));
	assert_true(message_ok(&verdict));
}

static void
test_verdict_messages_fit_and_are_utf8(void **state)
{
	struct fixture *f = *state;
	struct wire_verdict verdict;

	/* The longest messages: a long council quote and a long language quote with index. */
	f->env.council = "ÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄ";
	assert_int_equal(roundtrip(&f->env, &verdict), -EINVAL);
	assert_true(message_ok(&verdict));
	assert_true(strlen(verdict.message) < sizeof(verdict.message) - 1);

	fixture_fill(f);
	use_body(f, COORD__V1__ENVELOPE__BODY_STATEMENT);
	f->statement_languages[1] = "ÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄÄ";
	assert_int_equal(roundtrip(&f->env, &verdict), -EINVAL);
	assert_int_equal(verdict.reason, COORD__V1__REASON__REASON_INVALID_LANGUAGE);
	assert_true(message_ok(&verdict));
	assert_true(strlen(verdict.message) < sizeof(verdict.message) - 1);
}

/* ------------------------------------------------------------------------------------------ */
/* UTF-8, echoing and Acks */

static void
test_utf8_valid_accepts_shortest_forms(void **state)
{
	static const char *const valid[] = {
	        "",
	        "ascii",
	        "\xc2\x80",
	        "\xdf\xbf",
	        "\xe0\xa0\x80",
	        "\xed\x9f\xbf",
	        "\xee\x80\x80",
	        "\xef\xbf\xbf",
	        "\xf0\x90\x80\x80",
	        "\xf4\x8f\xbf\xbf",
	};

	(void) state;
	for (size_t i = 0; i < ARRAY_SIZE(valid); i++) {
		assert_true(wire_utf8_valid(valid[i], strlen(valid[i])));
	}
	/* U+0000 is valid UTF-8; whether a field may hold it is another question. */
	assert_true(wire_utf8_valid("a\0b", 3));
}

static void
test_utf8_valid_rejects_malformed_sequences(void **state)
{
	static const char *const invalid[] = {
	        "\x80",
	        "\xbf",
	        "\xc0\x80",
	        "\xc1\xbf",
	        "\xc2",
	        "\xc2\x41",
	        "\xe0\x80\x80",
	        "\xe0\x9f\xbf",
	        "\xed\xa0\x80",
	        "\xed\xbf\xbf",
	        "\xe1\x80",
	        "\xf0\x80\x80\x80",
	        "\xf0\x8f\xbf\xbf",
	        "\xf4\x90\x80\x80",
	        "\xf5\x80\x80\x80",
	        "\xf8\x88\x80\x80\x80",
	        "\xfe",
	        "\xff",
	        "\xf0\x90\x80",
	        "\xf0\x90\x80\x41",
	};

	(void) state;
	for (size_t i = 0; i < ARRAY_SIZE(invalid); i++) {
		if (wire_utf8_valid(invalid[i], strlen(invalid[i]))) {
			fail_msg("sequence %zu", i);
		}
	}
	/* The length bounds the scan: a cut sequence is invalid even if bytes follow. */
	assert_false(wire_utf8_valid("\xc3\xa9", 1));
}

static void
test_echoable_needs_utf8_within_msg_id_limit(void **state)
{
	struct fixture *f = *state;

	assert_true(wire_echoable(""));
	assert_true(wire_echoable("2024-05-31/rally#1"));
	assert_true(wire_echoable("événement"));
	assert_true(wire_echoable(repeat(f, 'x', WIRE_MSG_ID_MAX)));
	assert_false(wire_echoable(repeat(f, 'x', WIRE_MSG_ID_MAX + 1)));
	assert_false(wire_echoable("bad\xff"));
	assert_false(wire_echoable(NULL));
}

static void
test_pack_ack_round_trips(void **state)
{
	Coord__V1__Ack ack = COORD__V1__ACK__INIT;
	uint8_t buf[WIRE_ACK_MAX];
	Coord__V1__Ack *out;
	int n;

	(void) state;
	ack.msg_id = "2024-05-31/rally#1";
	ack.revision = 3;
	ack.status = COORD__V1__ACK_STATUS__ACK_STATUS_REJECTED;
	ack.reason = COORD__V1__REASON__REASON_INVALID_COUNTRY;
	ack.message = "event.country 'de' is not an ISO 3166-1 alpha-2 code (use upper case)";
	n = wire_pack_ack(&ack, buf, sizeof(buf));
	assert_true(n > 0);
	assert_int_equal(n, coord__v1__ack__get_packed_size(&ack));
	out = coord__v1__ack__unpack(NULL, (size_t) n, buf);
	assert_non_null(out);
	assert_string_equal(out->msg_id, ack.msg_id);
	assert_int_equal(out->revision, 3);
	assert_int_equal(out->status, ack.status);
	assert_int_equal(out->reason, ack.reason);
	assert_string_equal(out->message, ack.message);
	coord__v1__ack__free_unpacked(out, NULL);
}

static void
test_pack_ack_refuses_small_buffer(void **state)
{
	Coord__V1__Ack ack = COORD__V1__ACK__INIT;
	uint8_t buf[64];
	size_t size;

	(void) state;
	ack.msg_id = "id-1";
	ack.status = COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED;
	ack.seq = 42;
	size = coord__v1__ack__get_packed_size(&ack);
	memset(buf, 0xaa, sizeof(buf));
	assert_int_equal(wire_pack_ack(&ack, buf, size - 1), -ENOBUFS);
	assert_int_equal(buf[0], 0xaa);
	assert_int_equal(wire_pack_ack(&ack, buf, 0), -ENOBUFS);
	assert_int_equal(wire_pack_ack(&ack, buf, size), (int) size);
	assert_int_equal(buf[size], 0xaa);
}

static void
test_pack_ack_of_defaults_is_empty(void **state)
{
	Coord__V1__Ack ack = COORD__V1__ACK__INIT;

	(void) state;
	assert_int_equal(wire_pack_ack(&ack, NULL, 0), 0);
}

static void
test_pack_ack_max_fits_wire_ack_max(void **state)
{
	Coord__V1__Ack ack = COORD__V1__ACK__INIT;
	struct wire_verdict verdict;
	char msg_id[WIRE_MSG_ID_MAX + 1];
	uint8_t buf[WIRE_ACK_MAX];

	(void) state;
	memset(msg_id, '~', WIRE_MSG_ID_MAX);
	msg_id[WIRE_MSG_ID_MAX] = '\0';
	memset(verdict.message, 'm', sizeof(verdict.message) - 1);
	verdict.message[sizeof(verdict.message) - 1] = '\0';
	ack.msg_id = msg_id;
	ack.revision = UINT32_MAX;
	ack.status = COORD__V1__ACK_STATUS__ACK_STATUS_RETRY_LATER;
	ack.seq = UINT64_MAX;
	ack.reason = COORD__V1__REASON__REASON_OVERLOADED;
	ack.message = verdict.message;
	assert_true(wire_pack_ack(&ack, buf, sizeof(buf)) > 0);
}

int
main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
	const struct CMUnitTest tests[] = {
	        T(test_unpack_accepts_valid_envelope),
	        T(test_unpack_rejects_empty_frame),
	        T(test_unpack_rejects_frame_over_limit),
	        T(test_unpack_rejects_undecodable_frames),
	        T(test_unpack_rejects_truncated_frame),
	        T(test_unpack_leaves_ret_env_untouched_on_failure),
	        T(test_unpack_rejects_nul_byte_in_string),
	        T(test_unpack_hands_out_envelope_for_echo_on_bad_string),
	        T(test_unpack_rejects_nul_byte_in_nested_string),
	        T(test_unpack_rejects_invalid_utf8_in_overridden_string),
	        T(test_unpack_ignores_unknown_fields),
	        T(test_unpack_reports_out_of_memory),
	        T(test_unpack_with_allocator_uses_it),
	        T(test_validate_accepts_every_body),
	        T(test_validate_clears_verdict_when_valid),
	        T(test_validate_rejects_missing_council),
	        T(test_validate_rejects_council_over_limit),
	        T(test_validate_rejects_council_with_bad_characters),
	        T(test_validate_rejects_missing_msg_id),
	        T(test_validate_rejects_msg_id_over_limit),
	        T(test_validate_rejects_msg_id_outside_printable_ascii),
	        T(test_validate_rejects_revision_zero),
	        T(test_validate_rejects_missing_created_at),
	        T(test_validate_checks_created_at_range),
	        T(test_validate_saturates_time_limit_near_int64_max),
	        T(test_validate_rejects_missing_body),
	        T(test_validate_treats_null_strings_as_empty),
	        T(test_required_fields_are_rejected_when_absent),
	        T(test_optional_fields_may_be_absent),
	        T(test_name_fields_are_limited_to_one_line_of_256_bytes),
	        T(test_text_fields_allow_newline_and_tab_up_to_1024_bytes),
	        T(test_url_is_one_line_of_1024_bytes),
	        T(test_strings_must_be_valid_utf8),
	        T(test_country_fields_need_official_upper_case_codes),
	        T(test_language_fields_need_bcp47_tags),
	        T(test_languages_fields_check_count_and_every_entry),
	        T(test_date_fields_must_lie_between_2000_and_366_days_ahead),
	        T(test_enum_fields_reject_unknown_values),
	        T(test_counts_accept_any_value),
	        T(test_first_problem_in_field_order_is_reported),
	        T(test_verdict_quotes_long_peer_strings_cut_at_character_boundary),
	        T(test_verdict_omits_unsafe_peer_strings),
	        T(test_verdict_messages_fit_and_are_utf8),
	        T(test_utf8_valid_accepts_shortest_forms),
	        T(test_utf8_valid_rejects_malformed_sequences),
	        T(test_echoable_needs_utf8_within_msg_id_limit),
	        T(test_pack_ack_round_trips),
	        T(test_pack_ack_refuses_small_buffer),
	        T(test_pack_ack_of_defaults_is_empty),
	        T(test_pack_ack_max_fits_wire_ack_max),
	};
#undef T

	return cmocka_run_group_tests(tests, NULL, NULL);
}

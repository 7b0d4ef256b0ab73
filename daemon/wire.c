/*
 * wire: bytes from the network to checked Envelopes, and Acks back to bytes.
 *
 * protobuf-c checks only the encoding. It does not check UTF-8, and it copies a string into
 * a NUL-terminated char array, so a string holding a NUL byte reaches C code cut short while
 * the stored Envelope (kept byte for byte) still holds the rest. wire_unpack_envelope()
 * therefore walks the frame once more after protobuf-c accepted it and refuses any string
 * occurrence, even one a later duplicate overrides, that holds a NUL byte or is not valid
 * UTF-8: every stored Envelope then decodes, with the same values, in any strict proto3
 * decoder (python3-protobuf refuses invalid UTF-8 in a string field).
 *
 * Validation is table-driven: each record body is a list of field rules (what kind of
 * field, required or not, where it sits in the generated struct), read by one loop. The
 * tables below are the record rules of docs/PROTOCOL.md in code form, in proto field order,
 * so the first problem reported is the first in field order. Nothing here allocates except
 * the unpacking itself.
 *
 * Verdict messages quote peer strings only when the quoted part is valid UTF-8 without
 * control characters, and cut them at a character boundary, so a message is always valid
 * UTF-8 and can go into an Ack as it is.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idrule.h"
#include "iso.h"
#include "varint.h"
#include "wire.h"

/* Bytes of a peer string quoted in a verdict message, and the buffer that holds the quote:
 * " '" + QUOTE_MAX bytes + "...'" + NUL. */
#define QUOTE_MAX 40
#define QUOTE_BUF (QUOTE_MAX + 7)

/* Deepest message nesting the frame walk follows (the schema nests one level). */
#define NESTING_MAX 8

#define MS_PER_DAY INT64_C(86400000)

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* protobuf-c forces every generated enum to int size; the rule tables read them as int. */
_Static_assert(sizeof(Coord__V1__EventKind) == sizeof(int), "enum size");
_Static_assert(sizeof(Coord__V1__RecipientKind) == sizeof(int), "enum size");
_Static_assert(sizeof(Coord__V1__LetterChannel) == sizeof(int), "enum size");
_Static_assert(sizeof(Coord__V1__PetitionTarget) == sizeof(int), "enum size");
_Static_assert(sizeof(Coord__V1__MediaKind) == sizeof(int), "enum size");

enum rule_kind {
	RULE_ENUM,      /* an enum; 0 (UNSPECIFIED) counts as absent */
	RULE_NAME,      /* one line of text, at most WIRE_NAME_MAX bytes */
	RULE_TEXT,      /* text that may hold '\n' and '\t', at most WIRE_TEXT_MAX bytes */
	RULE_URL,       /* one line of text, at most WIRE_TEXT_MAX bytes */
	RULE_COUNTRY,   /* an ISO 3166-1 alpha-2 code */
	RULE_LANGUAGE,  /* a BCP 47 tag */
	RULE_LANGUAGES, /* a repeated BCP 47 tag, at most WIRE_LANGUAGES_MAX entries */
	RULE_DATE,      /* Unix ms in [WIRE_TIME_MIN_MS, now + WIRE_DATE_AHEAD_MAX_MS] */
};

/* One field of a record body. */
struct field_rule {
	const char *name; /* the proto field name */
	enum rule_kind kind;
	bool required;                            /* absent (empty, 0, no entries) is refused */
	size_t offset;                            /* of the member in the generated struct */
	size_t count_offset;                      /* RULE_LANGUAGES: of the n_ member */
	const ProtobufCEnumDescriptor *enum_type; /* RULE_ENUM */
};

#define REQUIRED true
#define OPTIONAL false

#define FIELD(type, member, rule_kind, req)                                                        \
	{                                                                                          \
		.name = #member, .kind = (rule_kind), .required = (req),                           \
		.offset = offsetof(type, member)                                                   \
	}
#define ENUM_FIELD(type, member, req, descriptor)                                                  \
	{                                                                                          \
		.name = #member, .kind = RULE_ENUM, .required = (req),                             \
		.offset = offsetof(type, member), .enum_type = (descriptor)                        \
	}
#define LANGUAGES_FIELD(type, req)                                                                 \
	{                                                                                          \
		.name = "languages", .kind = RULE_LANGUAGES, .required = (req),                    \
		.offset = offsetof(type, languages), .count_offset = offsetof(type, n_languages)   \
	}

static const struct field_rule event_rules[] = {
        ENUM_FIELD(Coord__V1__Event, kind, REQUIRED, &coord__v1__event_kind__descriptor),
        FIELD(Coord__V1__Event, country, RULE_COUNTRY, REQUIRED),
        FIELD(Coord__V1__Event, city, RULE_NAME, OPTIONAL),
        FIELD(Coord__V1__Event, date, RULE_DATE, REQUIRED),
        FIELD(Coord__V1__Event, title, RULE_TEXT, REQUIRED),
        FIELD(Coord__V1__Event, organiser, RULE_NAME, OPTIONAL),
        LANGUAGES_FIELD(Coord__V1__Event, OPTIONAL),
};

static const struct field_rule letter_rules[] = {
        ENUM_FIELD(Coord__V1__OutreachLetter, recipient_kind, REQUIRED,
                   &coord__v1__recipient_kind__descriptor),
        FIELD(Coord__V1__OutreachLetter, recipient, RULE_NAME, REQUIRED),
        FIELD(Coord__V1__OutreachLetter, recipient_country, RULE_COUNTRY, REQUIRED),
        FIELD(Coord__V1__OutreachLetter, language, RULE_LANGUAGE, REQUIRED),
        FIELD(Coord__V1__OutreachLetter, subject, RULE_TEXT, OPTIONAL),
        FIELD(Coord__V1__OutreachLetter, sent_at, RULE_DATE, REQUIRED),
        ENUM_FIELD(Coord__V1__OutreachLetter, channel, OPTIONAL,
                   &coord__v1__letter_channel__descriptor),
};

static const struct field_rule statement_rules[] = {
        FIELD(Coord__V1__Statement, organisation, RULE_NAME, REQUIRED),
        FIELD(Coord__V1__Statement, country, RULE_COUNTRY, REQUIRED),
        LANGUAGES_FIELD(Coord__V1__Statement, REQUIRED),
        FIELD(Coord__V1__Statement, date, RULE_DATE, REQUIRED),
        FIELD(Coord__V1__Statement, title, RULE_TEXT, OPTIONAL),
};

static const struct field_rule petition_rules[] = {
        ENUM_FIELD(Coord__V1__Petition, target_kind, REQUIRED,
                   &coord__v1__petition_target__descriptor),
        FIELD(Coord__V1__Petition, target, RULE_NAME, REQUIRED),
        FIELD(Coord__V1__Petition, country, RULE_COUNTRY, REQUIRED),
        FIELD(Coord__V1__Petition, date, RULE_DATE, REQUIRED),
        FIELD(Coord__V1__Petition, title, RULE_TEXT, OPTIONAL),
        FIELD(Coord__V1__Petition, language, RULE_LANGUAGE, OPTIONAL),
};

static const struct field_rule media_rules[] = {
        ENUM_FIELD(Coord__V1__MediaReport, kind, REQUIRED, &coord__v1__media_kind__descriptor),
        FIELD(Coord__V1__MediaReport, outlet, RULE_NAME, REQUIRED),
        FIELD(Coord__V1__MediaReport, country, RULE_COUNTRY, REQUIRED),
        FIELD(Coord__V1__MediaReport, language, RULE_LANGUAGE, REQUIRED),
        FIELD(Coord__V1__MediaReport, date, RULE_DATE, REQUIRED),
        FIELD(Coord__V1__MediaReport, title, RULE_TEXT, OPTIONAL),
        FIELD(Coord__V1__MediaReport, url, RULE_URL, OPTIONAL),
};

static const struct field_rule retraction_rules[] = {
        FIELD(Coord__V1__Retraction, reason, RULE_TEXT, OPTIONAL),
};

/* A record body: the proto path prefix of its fields and its rules. */
struct body_rules {
	const char *prefix;
	const struct field_rule *rules;
	size_t n_rules;
};

#define BODY(name, rules)                                                                          \
	{                                                                                          \
		name ".", rules, ARRAY_SIZE(rules)                                                 \
	}

static const struct body_rules event_body = BODY("event", event_rules);
static const struct body_rules letter_body = BODY("letter", letter_rules);
static const struct body_rules statement_body = BODY("statement", statement_rules);
static const struct body_rules petition_body = BODY("petition", petition_rules);
static const struct body_rules media_body = BODY("media", media_rules);
static const struct body_rules retraction_body = BODY("retraction", retraction_rules);

/* Where a field sits, for messages: prefix + name, plus "[index]" for an entry of a repeated
 * field (index >= 0). Only formatted when a check fails. */
struct field_path {
	const char *prefix;
	const char *name;
	long index;
};

/* ------------------------------------------------------------------------------------------ */
/* UTF-8 */

static bool
is_continuation(unsigned char c)
{
	return (c & 0xc0) == 0x80;
}

/*
 * Length of the valid multi-byte UTF-8 sequence starting at s (2 to 4), or 0 when there is
 * none: a stray continuation byte, a lead byte that cannot start a shortest form (C0, C1,
 * F5-FF), a sequence cut short, an overlong form, a surrogate or a code point above
 * U+10FFFF. Callers handle ASCII themselves: s[0] >= 0x80.
 */
static size_t
utf8_sequence(const unsigned char *s, size_t len)
{
	unsigned char c = s[0];

	if (c < 0xc2) {
		return 0;
	}
	if (c < 0xe0) {
		return len >= 2 && is_continuation(s[1]) ? 2 : 0;
	}
	if (c < 0xf0) {
		if (len < 3 || !is_continuation(s[1]) || !is_continuation(s[2])) {
			return 0;
		}
		/* E0 80-9F is overlong; ED A0-BF encodes U+D800-DFFF, the surrogates. */
		if ((c == 0xe0 && s[1] < 0xa0) || (c == 0xed && s[1] >= 0xa0)) {
			return 0;
		}
		return 3;
	}
	if (c < 0xf5) {
		if (len < 4 || !is_continuation(s[1]) || !is_continuation(s[2]) ||
		    !is_continuation(s[3])) {
			return 0;
		}
		/* F0 80-8F is overlong; F4 90-BF is above U+10FFFF. */
		if ((c == 0xf0 && s[1] < 0x90) || (c == 0xf4 && s[1] >= 0x90)) {
			return 0;
		}
		return 4;
	}
	return 0;
}

bool
wire_utf8_valid(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *) s;
	size_t i = 0;

	while (i < len) {
		/* Most text is ASCII: take it a byte at a time without the general decoder. */
		if (p[i] < 0x80) {
			i++;
			continue;
		}
		size_t n = utf8_sequence(p + i, len - i);
		if (n == 0) {
			return false;
		}
		i += n;
	}
	return true;
}

enum text_problem {
	TEXT_OK,
	TEXT_BAD_UTF8,
	TEXT_CONTROL,
};

/*
 * Check that the len bytes at s are UTF-8 without C0 control characters or DEL. With
 * multiline, '\t' and '\n' are allowed ('\r' is not: lines end in '\n' on the wire). On a
 * problem, *ret_offset is the offset of the offending byte.
 */
static enum text_problem
scan_text(const char *s, size_t len, bool multiline, size_t *ret_offset)
{
	const unsigned char *p = (const unsigned char *) s;
	size_t i = 0;

	while (i < len) {
		unsigned char c = p[i];

		if (c < 0x80) {
			if ((c < 0x20 && !(multiline && (c == '\t' || c == '\n'))) || c == 0x7f) {
				*ret_offset = i;
				return TEXT_CONTROL;
			}
			i++;
			continue;
		}
		size_t n = utf8_sequence(p + i, len - i);
		if (n == 0) {
			*ret_offset = i;
			return TEXT_BAD_UTF8;
		}
		i += n;
	}
	return TEXT_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Verdicts */

/*
 * Format " 'value'" for a message, or "" when value is empty or its first QUOTE_MAX bytes
 * (cut back to a character boundary) are not valid UTF-8 free of control characters. A cut
 * quote ends in "...". buf holds QUOTE_BUF bytes. Returns buf or a static "".
 */
static const char *
quote(char *buf, const char *value)
{
	size_t len = value != NULL ? strnlen(value, QUOTE_MAX + 1) : 0;
	bool cut = len > QUOTE_MAX;
	size_t offset;

	if (cut) {
		/* Back up to the start of the character the cut would split. */
		len = QUOTE_MAX;
		while (len > 0 && is_continuation((unsigned char) value[len])) {
			len--;
		}
	}
	if (len == 0 || scan_text(value, len, false, &offset) != TEXT_OK) {
		return "";
	}
	(void) snprintf(buf, QUOTE_BUF, " '%.*s%s'", (int) len, value, cut ? "..." : "");
	return buf;
}

static int reject(struct wire_verdict *verdict, Coord__V1__Reason reason,
                  const struct field_path *path, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

/*
 * Fill verdict with reason and a message made of the field's path (when path is not NULL)
 * and the formatted rest. Returns -EINVAL, so checks can `return reject(...)`.
 */
static int
reject(struct wire_verdict *verdict, Coord__V1__Reason reason, const struct field_path *path,
       const char *fmt, ...)
{
	char *msg = verdict->message;
	size_t cap = sizeof(verdict->message);
	size_t used = 0;
	va_list ap;

	verdict->reason = reason;
	msg[0] = '\0';
	if (path != NULL) {
		int n = path->index < 0 ? snprintf(msg, cap, "%s%s", path->prefix, path->name)
		                        : snprintf(msg, cap, "%s%s[%ld]", path->prefix, path->name,
		                                   path->index);
		used = n < 0 ? 0 : (size_t) n < cap ? (size_t) n : cap - 1;
		msg[used] = '\0';
	}
	va_start(ap, fmt);
	(void) vsnprintf(msg + used, cap - used, fmt, ap);
	va_end(ap);

	/* Every piece is ASCII or a checked quote, but a message cut at the buffer's end may
	 * end inside a character: drop the partial one (at most three bytes). */
	size_t len = strlen(msg);
	while (len > 0 && !wire_utf8_valid(msg, len)) {
		msg[--len] = '\0';
	}
	return -EINVAL;
}

static void
clear_verdict(struct wire_verdict *verdict)
{
	verdict->reason = COORD__V1__REASON__REASON_NONE;
	verdict->message[0] = '\0';
}

/* ------------------------------------------------------------------------------------------ */
/* Field checks: each returns 0 or, through reject(), -EINVAL. */

static int
check_string(const struct field_path *path, const char *value, size_t max, bool multiline,
             bool required, struct wire_verdict *verdict)
{
	size_t len = strnlen(value, max + 1);
	size_t offset = 0;

	if (len == 0) {
		return required ? reject(verdict, COORD__V1__REASON__REASON_MISSING_FIELD, path,
		                         " is required")
		                : 0;
	}
	/* Length first: it bounds the UTF-8 scan below. */
	if (len > max) {
		return reject(verdict, COORD__V1__REASON__REASON_FIELD_TOO_LONG, path,
		              " is longer than %zu bytes", max);
	}
	switch (scan_text(value, len, multiline, &offset)) {
	case TEXT_OK:
		return 0;
	case TEXT_BAD_UTF8:
		return reject(verdict, COORD__V1__REASON__REASON_INVALID_UTF8, path,
		              " is not valid UTF-8 (byte %zu)", offset);
	case TEXT_CONTROL:
		return reject(verdict, COORD__V1__REASON__REASON_INVALID_UTF8, path,
		              " holds control character 0x%02x at byte %zu",
		              (unsigned char) value[offset], offset);
	}
	return 0;
}

static int
check_time(const struct field_path *path, int64_t value, int64_t now_ms, int64_t ahead_ms,
           struct wire_verdict *verdict)
{
	/* now_ms comes from the caller: saturate rather than overflow near INT64_MAX. */
	int64_t limit = now_ms > INT64_MAX - ahead_ms ? INT64_MAX : now_ms + ahead_ms;
	int64_t days = ahead_ms / MS_PER_DAY;

	if (value == 0) {
		return reject(verdict, COORD__V1__REASON__REASON_MISSING_FIELD, path,
		              " is required");
	}
	if (value < WIRE_TIME_MIN_MS) {
		return reject(verdict, COORD__V1__REASON__REASON_INVALID_TIMESTAMP, path,
		              " %" PRId64 " is before 2000-01-01 (Unix milliseconds expected)",
		              value);
	}
	if (value > limit) {
		return reject(verdict, COORD__V1__REASON__REASON_INVALID_TIMESTAMP, path,
		              " %" PRId64 " is more than %" PRId64
		              " day%s ahead of the broker's clock",
		              value, days, days == 1 ? "" : "s");
	}
	return 0;
}

static int
check_enum(const struct field_path *path, int value, const ProtobufCEnumDescriptor *type,
           bool required, struct wire_verdict *verdict)
{
	if (value == 0) {
		return required ? reject(verdict, COORD__V1__REASON__REASON_MISSING_FIELD, path,
		                         " is required")
		                : 0;
	}
	/* protobuf-c keeps unknown proto3 enum values as plain ints: look them up. */
	if (protobuf_c_enum_descriptor_get_value(type, value) == NULL) {
		return reject(verdict, COORD__V1__REASON__REASON_INVALID_ENUM, path,
		              " %d is not a known %s", value, type->short_name);
	}
	return 0;
}

/* True when cc is two ASCII letters, not both upper case, whose upper-case form is a code. */
static bool
is_lower_case_country(const char *cc)
{
	char upper[3] = "";

	for (size_t i = 0; i < 2; i++) {
		char c = cc[i];

		if (c >= 'a' && c <= 'z') {
			c = (char) (c - 'a' + 'A');
		} else if (c < 'A' || c > 'Z') {
			return false;
		}
		upper[i] = c;
	}
	return cc[2] == '\0' && strcmp(upper, cc) != 0 && iso_country_valid(upper);
}

static int
check_country(const struct field_path *path, const char *value, bool required,
              struct wire_verdict *verdict)
{
	char q[QUOTE_BUF];

	if (value[0] == '\0') {
		return required ? reject(verdict, COORD__V1__REASON__REASON_MISSING_FIELD, path,
		                         " is required")
		                : 0;
	}
	if (iso_country_valid(value)) {
		return 0;
	}
	if (is_lower_case_country(value)) {
		return reject(verdict, COORD__V1__REASON__REASON_INVALID_COUNTRY, path,
		              "%s is not an ISO 3166-1 alpha-2 code (use upper case)",
		              quote(q, value));
	}
	return reject(verdict, COORD__V1__REASON__REASON_INVALID_COUNTRY, path,
	              "%s is not an officially assigned ISO 3166-1 alpha-2 code", quote(q, value));
}

/* One language tag; an entry of a repeated field (index >= 0) may not be empty. */
static int
check_language(const struct field_path *path, const char *value, bool required,
               struct wire_verdict *verdict)
{
	size_t len = strnlen(value, WIRE_LANGUAGE_TAG_MAX + 1);
	char q[QUOTE_BUF];

	if (len == 0) {
		if (path->index >= 0) {
			return reject(verdict, COORD__V1__REASON__REASON_INVALID_LANGUAGE, path,
			              " is empty");
		}
		return required ? reject(verdict, COORD__V1__REASON__REASON_MISSING_FIELD, path,
		                         " is required")
		                : 0;
	}
	if (len > WIRE_LANGUAGE_TAG_MAX) {
		return reject(verdict, COORD__V1__REASON__REASON_FIELD_TOO_LONG, path,
		              " is longer than %d bytes", WIRE_LANGUAGE_TAG_MAX);
	}
	if (iso_language_primary(value, NULL) < 0) {
		return reject(verdict, COORD__V1__REASON__REASON_INVALID_LANGUAGE, path,
		              "%s is not a BCP 47 tag with an ISO 639 primary subtag",
		              quote(q, value));
	}
	return 0;
}

static int
check_languages(const struct field_path *path, char *const *tags, size_t n, bool required,
                struct wire_verdict *verdict)
{
	if (n == 0) {
		return required ? reject(verdict, COORD__V1__REASON__REASON_MISSING_FIELD, path,
		                         " needs at least one language")
		                : 0;
	}
	if (n > WIRE_LANGUAGES_MAX) {
		return reject(verdict, COORD__V1__REASON__REASON_FIELD_TOO_LONG, path,
		              " has %zu entries, more than %d", n, WIRE_LANGUAGES_MAX);
	}
	for (size_t i = 0; i < n; i++) {
		struct field_path entry = {path->prefix, path->name, (long) i};
		int r = check_language(&entry, tags[i] != NULL ? tags[i] : "", REQUIRED, verdict);

		if (r < 0) {
			return r;
		}
	}
	return 0;
}

/* Typed reads of a member through a rule's offset. memcpy keeps them free of aliasing
 * questions and compiles to a plain load. */
static const char *
member_string(const void *msg, size_t offset)
{
	const char *s;

	memcpy(&s, (const char *) msg + offset, sizeof(s));
	return s != NULL ? s : "";
}

static int64_t
member_int64(const void *msg, size_t offset)
{
	int64_t v;

	memcpy(&v, (const char *) msg + offset, sizeof(v));
	return v;
}

static int
member_enum(const void *msg, size_t offset)
{
	int v;

	memcpy(&v, (const char *) msg + offset, sizeof(v));
	return v;
}

static int
check_field(const char *prefix, const struct field_rule *rule, const void *msg, int64_t now_ms,
            struct wire_verdict *verdict)
{
	struct field_path path = {prefix, rule->name, -1};

	switch (rule->kind) {
	case RULE_ENUM:
		return check_enum(&path, member_enum(msg, rule->offset), rule->enum_type,
		                  rule->required, verdict);
	case RULE_NAME:
		return check_string(&path, member_string(msg, rule->offset), WIRE_NAME_MAX, false,
		                    rule->required, verdict);
	case RULE_TEXT:
		return check_string(&path, member_string(msg, rule->offset), WIRE_TEXT_MAX, true,
		                    rule->required, verdict);
	case RULE_URL:
		return check_string(&path, member_string(msg, rule->offset), WIRE_TEXT_MAX, false,
		                    rule->required, verdict);
	case RULE_COUNTRY:
		return check_country(&path, member_string(msg, rule->offset), rule->required,
		                     verdict);
	case RULE_LANGUAGE:
		return check_language(&path, member_string(msg, rule->offset), rule->required,
		                      verdict);
	case RULE_LANGUAGES: {
		char *const *tags;
		size_t n;

		memcpy(&tags, (const char *) msg + rule->offset, sizeof(tags));
		memcpy(&n, (const char *) msg + rule->count_offset, sizeof(n));
		return check_languages(&path, tags, n, rule->required, verdict);
	}
	case RULE_DATE:
		/* Every date in the schema is required: 0 means it was left out. */
		return check_time(&path, member_int64(msg, rule->offset), now_ms,
		                  WIRE_DATE_AHEAD_MAX_MS, verdict);
	}
	assert(!"unknown rule kind");
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Envelope */

static int
check_council(const char *council, struct wire_verdict *verdict)
{
	static const struct field_path path = {"", "council", -1};
	size_t len = strnlen(council, WIRE_COUNCIL_MAX + 1);
	char q[QUOTE_BUF];

	if (len == 0) {
		return reject(verdict, COORD__V1__REASON__REASON_MISSING_FIELD, &path,
		              " is required");
	}
	if (len > WIRE_COUNCIL_MAX) {
		return reject(verdict, COORD__V1__REASON__REASON_FIELD_TOO_LONG, &path,
		              " is longer than %d bytes", WIRE_COUNCIL_MAX);
	}
	for (size_t i = 0; i < len; i++) {
		if (!idrule_id_char(council[i], i == 0)) {
			return reject(verdict, COORD__V1__REASON__REASON_INVALID_ID, &path,
			              "%s may hold only a-z, 0-9, '_' and '-', starting with a "
			              "letter or digit",
			              quote(q, council));
		}
	}
	return 0;
}

static int
check_msg_id(const char *msg_id, struct wire_verdict *verdict)
{
	static const struct field_path path = {"", "msg_id", -1};
	size_t len = strnlen(msg_id, WIRE_MSG_ID_MAX + 1);

	if (len == 0) {
		return reject(verdict, COORD__V1__REASON__REASON_MISSING_FIELD, &path,
		              " is required");
	}
	if (len > WIRE_MSG_ID_MAX) {
		return reject(verdict, COORD__V1__REASON__REASON_FIELD_TOO_LONG, &path,
		              " is longer than %d bytes", WIRE_MSG_ID_MAX);
	}
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char) msg_id[i];

		if (!idrule_msg_id_char(c)) {
			return reject(verdict, COORD__V1__REASON__REASON_INVALID_ID, &path,
			              " holds byte 0x%02x at %zu; only printable ASCII without "
			              "spaces is allowed",
			              c, i);
		}
	}
	return 0;
}

/* The body's message and rules, or NULL when no (known) body is set. */
static const void *
envelope_body(const Coord__V1__Envelope *env, const struct body_rules **ret_rules)
{
	switch (env->body_case) {
	case COORD__V1__ENVELOPE__BODY_EVENT:
		*ret_rules = &event_body;
		return env->event;
	case COORD__V1__ENVELOPE__BODY_LETTER:
		*ret_rules = &letter_body;
		return env->letter;
	case COORD__V1__ENVELOPE__BODY_STATEMENT:
		*ret_rules = &statement_body;
		return env->statement;
	case COORD__V1__ENVELOPE__BODY_PETITION:
		*ret_rules = &petition_body;
		return env->petition;
	case COORD__V1__ENVELOPE__BODY_MEDIA:
		*ret_rules = &media_body;
		return env->media;
	case COORD__V1__ENVELOPE__BODY_RETRACTION:
		*ret_rules = &retraction_body;
		return env->retraction;
	default:
		return NULL;
	}
}

int
wire_validate_envelope(const Coord__V1__Envelope *env, int64_t now_ms, struct wire_verdict *verdict)
{
	static const struct field_path created_at = {"", "created_at", -1};
	const struct body_rules *body = NULL;
	const void *msg;
	int r;

	assert(env != NULL);
	assert(verdict != NULL);

	r = check_council(env->council != NULL ? env->council : "", verdict);
	if (r < 0) {
		return r;
	}
	r = check_msg_id(env->msg_id != NULL ? env->msg_id : "", verdict);
	if (r < 0) {
		return r;
	}
	if (env->revision == 0) {
		return reject(verdict, COORD__V1__REASON__REASON_INVALID_REVISION, NULL,
		              "revision must be 1 or more");
	}
	r = check_time(&created_at, env->created_at, now_ms, WIRE_CREATED_AHEAD_MAX_MS, verdict);
	if (r < 0) {
		return r;
	}

	msg = envelope_body(env, &body);
	if (msg == NULL) {
		return reject(verdict, COORD__V1__REASON__REASON_MISSING_FIELD, NULL,
		              "no record body (event, letter, statement, petition, media or "
		              "retraction)");
	}
	for (size_t i = 0; i < body->n_rules; i++) {
		r = check_field(body->prefix, &body->rules[i], msg, now_ms, verdict);
		if (r < 0) {
			return r;
		}
	}

	clear_verdict(verdict);
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Unpacking */

/* What the frame walk found wrong with a string occurrence. */
struct string_fault {
	const ProtobufCFieldDescriptor *parent; /* the message field holding it, or NULL */
	const ProtobufCFieldDescriptor *field;
	bool nul; /* a NUL byte, else invalid UTF-8 */
};

/*
 * Walk the fields of the message of type desc encoded in buf, descending into known message
 * fields, and look at every occurrence of a known string field. Returns 0 when all are clean,
 * 1 with *fault filled when one holds a NUL byte or invalid UTF-8, or -EBADMSG when the bytes
 * cannot be walked (protobuf-c accepted them, so this does not happen in practice).
 */
static int
find_string_fault(const uint8_t *buf, size_t len, const ProtobufCMessageDescriptor *desc,
                  unsigned depth, struct string_fault *fault)
{
	size_t pos = 0;

	while (pos < len) {
		uint64_t tag;
		uint64_t n;

		if (!varint_get(buf, len, &pos, &tag)) {
			return -EBADMSG;
		}
		switch (tag & 7) {
		case PROTOBUF_C_WIRE_TYPE_VARINT:
			if (!varint_get(buf, len, &pos, &n)) {
				return -EBADMSG;
			}
			continue;
		case PROTOBUF_C_WIRE_TYPE_64BIT:
			if (len - pos < 8) {
				return -EBADMSG;
			}
			pos += 8;
			continue;
		case PROTOBUF_C_WIRE_TYPE_32BIT:
			if (len - pos < 4) {
				return -EBADMSG;
			}
			pos += 4;
			continue;
		case PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED:
			if (!varint_get(buf, len, &pos, &n) || n > len - pos) {
				return -EBADMSG;
			}
			break;
		default:
			/* Groups: protobuf-c refuses them before we get here. */
			return -EBADMSG;
		}

		/* Unknown fields are kept as bytes by every decoder: only known ones matter. */
		const ProtobufCFieldDescriptor *field =
		        tag >> 3 <= UINT32_MAX ? protobuf_c_message_descriptor_get_field(
		                                         desc, (unsigned) (tag >> 3))
		                               : NULL;
		const uint8_t *value = buf + pos;

		pos += (size_t) n;
		if (field == NULL) {
			continue;
		}
		if (field->type == PROTOBUF_C_TYPE_STRING) {
			bool nul = memchr(value, 0, (size_t) n) != NULL;

			if (nul || !wire_utf8_valid((const char *) value, (size_t) n)) {
				*fault = (struct string_fault){.field = field, .nul = nul};
				return 1;
			}
		} else if (field->type == PROTOBUF_C_TYPE_MESSAGE && depth < NESTING_MAX) {
			int r = find_string_fault(value, (size_t) n, field->descriptor, depth + 1,
			                          fault);

			if (r != 0) {
				if (r > 0 && fault->parent == NULL) {
					fault->parent = field;
				}
				return r;
			}
		}
	}
	return 0;
}

/* protobuf-c returns NULL for both bad bytes and a failed allocation; an allocator that
 * records failures tells them apart. It allocates with the caller's allocator, or malloc()
 * without one, so what it returns is freed with the same (for malloc(), the default
 * allocator: coord__v1__envelope__free_unpacked(env, NULL)). */
struct noting {
	const ProtobufCAllocator *inner; /* NULL: malloc() */
	bool out_of_memory;
};

static void *
alloc_noting_failure(void *allocator_data, size_t size)
{
	struct noting *n = allocator_data;
	void *p = n->inner ? n->inner->alloc(n->inner->allocator_data, size) : malloc(size);

	if (p == NULL && size > 0) {
		n->out_of_memory = true;
	}
	return p;
}

static void
free_noting(void *allocator_data, void *pointer)
{
	struct noting *n = allocator_data;

	if (n->inner) {
		n->inner->free(n->inner->allocator_data, pointer);
	} else {
		free(pointer);
	}
}

int
wire_unpack_envelope(const void *buf, size_t len, size_t max_bytes, Coord__V1__Envelope **ret_env,
                     struct wire_verdict *verdict)
{
	return wire_unpack_envelope_with(NULL, buf, len, max_bytes, ret_env, verdict);
}

int
wire_unpack_envelope_with(const ProtobufCAllocator *alloc, const void *buf, size_t len,
                          size_t max_bytes, Coord__V1__Envelope **ret_env,
                          struct wire_verdict *verdict)
{
	struct noting noting = {.inner = alloc};
	ProtobufCAllocator allocator = {
	        .alloc = alloc_noting_failure,
	        .free = free_noting,
	        .allocator_data = &noting,
	};
	struct string_fault fault = {0};
	Coord__V1__Envelope *env;
	int r;

	assert(ret_env != NULL);
	assert(verdict != NULL);

	/* protobuf-c decodes zero bytes as an all-default Envelope: refuse it here. */
	if (len == 0 || buf == NULL) {
		(void) reject(verdict, COORD__V1__REASON__REASON_MALFORMED, NULL, "empty frame");
		return -EBADMSG;
	}
	if (len > max_bytes) {
		(void) reject(verdict, COORD__V1__REASON__REASON_TOO_LARGE, NULL,
		              "frame of %zu bytes exceeds the limit of %zu bytes", len, max_bytes);
		return -EBADMSG;
	}

	env = coord__v1__envelope__unpack(&allocator, len, buf);
	if (env == NULL) {
		if (noting.out_of_memory) {
			return -ENOMEM;
		}
		(void) reject(verdict, COORD__V1__REASON__REASON_MALFORMED, NULL,
		              "frame is not a protobuf coord.v1.Envelope");
		return -EBADMSG;
	}

	r = find_string_fault(buf, len, &coord__v1__envelope__descriptor, 0, &fault);
	if (r != 0) {
		/* Hand the envelope out only when its msg_id is whole, so that the caller can echo
		 * it; a msg_id cut at a NUL could name another message. */
		bool echo = r > 0 &&
		            !(fault.parent == NULL && strcmp(fault.field->name, "msg_id") == 0);

		if (echo) {
			*ret_env = env;
		} else {
			coord__v1__envelope__free_unpacked(env, &allocator);
		}
		if (r < 0) {
			(void) reject(verdict, COORD__V1__REASON__REASON_MALFORMED, NULL,
			              "frame is not a protobuf coord.v1.Envelope");
			return -EBADMSG;
		}
		(void) reject(verdict, COORD__V1__REASON__REASON_INVALID_UTF8, NULL, "%s%s%s %s",
		              fault.parent != NULL ? fault.parent->name : "",
		              fault.parent != NULL ? "." : "", fault.field->name,
		              fault.nul ? "holds a NUL byte" : "is not valid UTF-8");
		return -EBADMSG;
	}

	clear_verdict(verdict);
	*ret_env = env;
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Acks */

bool
wire_echoable(const char *s)
{
	if (s == NULL) {
		return false;
	}
	size_t len = strnlen(s, WIRE_MSG_ID_MAX + 1);

	return len <= WIRE_MSG_ID_MAX && wire_utf8_valid(s, len);
}

int
wire_pack_ack(const Coord__V1__Ack *ack, uint8_t *buf, size_t cap)
{
	size_t size;

	assert(ack != NULL);

	/* Size first: coord__v1__ack__pack() writes without a bound. */
	size = coord__v1__ack__get_packed_size(ack);
	if (size > cap || size > INT_MAX) {
		return -ENOBUFS;
	}
	if (size == 0) {
		/* An all-default Ack encodes as zero bytes; buf may be NULL then. */
		return 0;
	}
	return (int) coord__v1__ack__pack(ack, buf);
}

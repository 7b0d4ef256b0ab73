/*
 * record: text fields -> Envelope -> checked bytes.
 *
 * A record given as (name, value) pairs is written into a protobuf-c Envelope generically,
 * by the body message's descriptor: each field's type says how its text is parsed (strings
 * trimmed, enums by name, int64 fields are dates, unsigned integers are counts, repeated
 * strings are language lists). The message is built the way protobuf-c's unpack builds
 * one (strings malloc()ed, never a field's default_value; the oneof case set before the
 * member), so protobuf_c_message_free_unpacked() releases it on every path.
 *
 * Completion (coord__envelope_complete()) fills the Envelope's defaults, derives a msg_id
 * from the content when none is given, and runs the broker's own validation
 * (daemon/wire.c, compiled into libcoord under coord__ names; see wire-names.h).
 *
 * The derived msg_id hashes the body as protobuf-c serializes it: fields in number order,
 * proto3 defaults left out. So it depends on the parsed values only (" DE " and "DE",
 * "2020-10-04" and "2020-10-04T00:00:00Z", "rally" and "RALLY" give the same id), not on
 * the spelling of the input nor on created_at or the revision.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "wire-names.h"
#include "record.h"
#include "wire.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define NAME_MAX_LEN 64
/* Entries a language list may be split into before the broker's limit (16) is checked. */
#define LIST_ENTRIES_MAX 64
#define MS_PER_DAY INT64_C(86400000)

struct category {
	const char *name;
	Coord__V1__Envelope__BodyCase body;
	const ProtobufCMessageDescriptor *desc;
};

static const struct category categories[] = {
        {"event", COORD__V1__ENVELOPE__BODY_EVENT, &coord__v1__event__descriptor},
        {"letter", COORD__V1__ENVELOPE__BODY_LETTER, &coord__v1__outreach_letter__descriptor},
        {"statement", COORD__V1__ENVELOPE__BODY_STATEMENT, &coord__v1__statement__descriptor},
        {"petition", COORD__V1__ENVELOPE__BODY_PETITION, &coord__v1__petition__descriptor},
        {"media", COORD__V1__ENVELOPE__BODY_MEDIA, &coord__v1__media_report__descriptor},
        {"retraction", COORD__V1__ENVELOPE__BODY_RETRACTION, &coord__v1__retraction__descriptor},
};

/* Envelope fields a record may carry beside its body's. */
enum env_field {
	ENV_MSG_ID,
	ENV_REVISION,
	ENV_CREATED_AT,
	ENV_COUNCIL,
	ENV_CATEGORY,
	ENV_X_MAX,
};

static const char *const env_field_names[ENV_X_MAX] = {
        [ENV_MSG_ID] = "msg_id",   [ENV_REVISION] = "revision", [ENV_CREATED_AT] = "created_at",
        [ENV_COUNCIL] = "council", [ENV_CATEGORY] = "category",
};

int
coord__error_set(struct coord_error *err, const char *field, const char *fmt, ...)
{
	if (err == NULL) {
		return -EINVAL;
	}
	(void) snprintf(err->field, sizeof(err->field), "%s", field != NULL ? field : "");
	va_list ap;
	va_start(ap, fmt);
	(void) vsnprintf(err->message, sizeof(err->message), fmt, ap);
	va_end(ap);
	return -EINVAL;
}

/* Lower case without '_', '-' and ' ': "recipient_kind", "Recipient Kind" and
 * "recipientKind" all become "recipientkind". Returns false when it does not fit. */
static bool
fold_name(const char *in, char out[NAME_MAX_LEN])
{
	size_t n = 0;
	for (const char *p = in; *p != '\0'; p++) {
		if (*p == '_' || *p == '-' || *p == ' ') {
			continue;
		}
		if (n + 1 >= NAME_MAX_LEN) {
			return false;
		}
		out[n++] = (char) tolower((unsigned char) *p);
	}
	out[n] = '\0';
	return n > 0;
}

Coord__V1__Envelope__BodyCase
coord__category_parse(const char *name)
{
	char f[NAME_MAX_LEN];
	if (name == NULL || !fold_name(name, f)) {
		return COORD__V1__ENVELOPE__BODY__NOT_SET;
	}
	if (strcmp(f, "retract") == 0) {
		return COORD__V1__ENVELOPE__BODY_RETRACTION;
	}
	if (strcmp(f, "outreachletter") == 0) {
		return COORD__V1__ENVELOPE__BODY_LETTER;
	}
	if (strcmp(f, "mediareport") == 0) {
		return COORD__V1__ENVELOPE__BODY_MEDIA;
	}
	for (size_t i = 0; i < ARRAY_SIZE(categories); i++) {
		if (strcmp(f, categories[i].name) == 0) {
			return categories[i].body;
		}
	}
	return COORD__V1__ENVELOPE__BODY__NOT_SET;
}

static const struct category *
category_of(Coord__V1__Envelope__BodyCase body)
{
	for (size_t i = 0; i < ARRAY_SIZE(categories); i++) {
		if (categories[i].body == body) {
			return &categories[i];
		}
	}
	return NULL;
}

const char *
coord__category_name(Coord__V1__Envelope__BodyCase body)
{
	const struct category *c = category_of(body);
	return c != NULL ? c->name : NULL;
}

const ProtobufCMessageDescriptor *
coord__category_descriptor(Coord__V1__Envelope__BodyCase body)
{
	const struct category *c = category_of(body);
	return c != NULL ? c->desc : NULL;
}

static int
env_field_find(const char *folded)
{
	for (int i = 0; i < ENV_X_MAX; i++) {
		char f[NAME_MAX_LEN];
		if (fold_name(env_field_names[i], f) && strcmp(f, folded) == 0) {
			return i;
		}
	}
	return -1;
}

/* The body field named `folded`; "language" also finds a repeated "languages". */
static const ProtobufCFieldDescriptor *
body_field_find(const ProtobufCMessageDescriptor *desc, const char *folded)
{
	for (unsigned i = 0; i < desc->n_fields; i++) {
		char f[NAME_MAX_LEN];
		if (fold_name(desc->fields[i].name, f) && strcmp(f, folded) == 0) {
			return &desc->fields[i];
		}
	}
	for (unsigned i = 0; i < desc->n_fields; i++) {
		char f[NAME_MAX_LEN];
		size_t n = strlen(folded);
		if (desc->fields[i].label == PROTOBUF_C_LABEL_REPEATED &&
		    fold_name(desc->fields[i].name, f) && strlen(f) == n + 1 &&
		    strncmp(f, folded, n) == 0 && f[n] == 's') {
			return &desc->fields[i];
		}
	}
	return NULL;
}

bool
coord__field_known(Coord__V1__Envelope__BodyCase body, const char *name)
{
	char f[NAME_MAX_LEN];
	const struct category *c = category_of(body);
	if (name == NULL || !fold_name(name, f)) {
		return false;
	}
	return env_field_find(f) >= 0 || (c != NULL && body_field_find(c->desc, f) != NULL);
}

int64_t
coord__now_ms(void)
{
	struct timespec ts;
	(void) clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static int64_t
days_from_civil(int64_t y, unsigned m, unsigned d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	unsigned yoe = (unsigned) (y - era * 400);
	unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t) doe - 719468;
}

static bool
leap_year(unsigned y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Read exactly n digits at *p into *ret; advances *p. */
static bool
digits(const char **p, int n, unsigned *ret)
{
	unsigned v = 0;
	for (int i = 0; i < n; i++) {
		if (!isdigit((unsigned char) (*p)[i])) {
			return false;
		}
		v = v * 10 + (unsigned) ((*p)[i] - '0');
	}
	*p += n;
	*ret = v;
	return true;
}

static bool
all_digits(const char *s)
{
	if (*s == '\0') {
		return false;
	}
	for (; *s != '\0'; s++) {
		if (!isdigit((unsigned char) *s)) {
			return false;
		}
	}
	return true;
}

/* Decimal digits only, at most `max`. */
static int
parse_unsigned(const char *s, uint64_t max, uint64_t *ret)
{
	if (!all_digits(s)) {
		return -EINVAL;
	}
	uint64_t v = 0;
	for (; *s != '\0'; s++) {
		unsigned d = (unsigned) (*s - '0');
		if (v > (max - d) / 10) {
			return -ERANGE;
		}
		v = v * 10 + d;
	}
	*ret = v;
	return 0;
}

int
coord__parse_time(const char *text, int64_t *ret_ms)
{
	if (text == NULL) {
		return -EINVAL;
	}
	if (all_digits(text)) {
		uint64_t v;
		if (parse_unsigned(text, INT64_MAX, &v) < 0) {
			return -EINVAL;
		}
		*ret_ms = (int64_t) v;
		return 0;
	}
	const char *p = text;
	unsigned y, mo, d, h = 0, mi = 0, s = 0, ms = 0;
	if (!digits(&p, 4, &y) || *p++ != '-' || !digits(&p, 2, &mo) || *p++ != '-' ||
	    !digits(&p, 2, &d)) {
		return -EINVAL;
	}
	static const unsigned mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] + (mo == 2 && leap_year(y))) {
		return -EINVAL;
	}
	int64_t offset_min = 0;
	if (*p == 'T' || *p == 't' || *p == ' ') {
		p++;
		if (!digits(&p, 2, &h) || *p++ != ':' || !digits(&p, 2, &mi)) {
			return -EINVAL;
		}
		if (*p == ':') {
			p++;
			if (!digits(&p, 2, &s)) {
				return -EINVAL;
			}
			if (*p == '.' || *p == ',') {
				p++;
				unsigned scale = 100;
				if (!isdigit((unsigned char) *p)) {
					return -EINVAL;
				}
				for (; isdigit((unsigned char) *p); p++) {
					ms += (unsigned) (*p - '0') * scale;
					scale /= 10;
				}
			}
		}
		if (h > 23 || mi > 59 || s > 60) {
			return -EINVAL;
		}
		if (*p == 'Z' || *p == 'z') {
			p++;
		} else if (*p == '+' || *p == '-') {
			int sign = *p++ == '-' ? -1 : 1;
			unsigned oh, om = 0;
			if (!digits(&p, 2, &oh)) {
				return -EINVAL;
			}
			if (*p == ':') {
				p++;
			}
			if (isdigit((unsigned char) *p) && !digits(&p, 2, &om)) {
				return -EINVAL;
			}
			if (oh > 23 || om > 59) {
				return -EINVAL;
			}
			offset_min = sign * (int64_t) (oh * 60 + om);
		}
	}
	if (*p != '\0') {
		return -EINVAL;
	}
	int64_t days = days_from_civil(y, mo, d);
	int64_t secs = days * 86400 + (int64_t) h * 3600 + (int64_t) mi * 60 + s - offset_min * 60;
	*ret_ms = secs * 1000 + ms;
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Setting body fields from text */

static void *
member(ProtobufCMessage *msg, size_t offset)
{
	return (char *) msg + offset;
}

/* "EVENT_KIND_" for EventKind: the name of value 0 without "UNSPECIFIED". */
static size_t
enum_prefix_len(const ProtobufCEnumDescriptor *e)
{
	const char *zero = NULL;
	for (unsigned i = 0; i < e->n_values; i++) {
		if (e->values[i].value == 0) {
			zero = e->values[i].name;
		}
	}
	const char *tail = zero != NULL ? strstr(zero, "UNSPECIFIED") : NULL;
	return tail != NULL ? (size_t) (tail - zero) : 0;
}

static int
parse_enum(const ProtobufCEnumDescriptor *e, const char *value, int *ret, const char *field,
           struct coord_error *err)
{
	uint64_t n;
	if (parse_unsigned(value, INT32_MAX, &n) == 0) {
		*ret = (int) n;
		return 0;
	}
	char up[NAME_MAX_LEN * 2];
	size_t len = strlen(value);
	if (len < sizeof(up)) {
		for (size_t i = 0; i <= len; i++) {
			char c = value[i];
			up[i] = c == '-' || c == ' ' ? '_' : (char) toupper((unsigned char) c);
		}
		const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value_by_name(e, up);
		size_t plen = enum_prefix_len(e);
		char full[NAME_MAX_LEN * 3];
		if (v == NULL && plen > 0 &&
		    snprintf(full, sizeof(full), "%.*s%s", (int) plen, e->values[0].name, up) <
		            (int) sizeof(full)) {
			v = protobuf_c_enum_descriptor_get_value_by_name(e, full);
		}
		if (v != NULL && v->value != 0) {
			*ret = v->value;
			return 0;
		}
	}
	/* List the choices: "rally, car_rally, ...". */
	char list[200] = "";
	size_t used = 0;
	size_t plen = enum_prefix_len(e);
	for (unsigned i = 0; i < e->n_values && used < sizeof(list); i++) {
		if (e->values[i].value == 0) {
			continue;
		}
		const char *name = e->values[i].name + plen;
		int w = snprintf(list + used, sizeof(list) - used, "%s", used > 0 ? ", " : "");
		used += w > 0 ? (size_t) w : 0;
		for (const char *c = name; *c != '\0' && used + 1 < sizeof(list); c++) {
			list[used++] = (char) tolower((unsigned char) *c);
		}
		list[used < sizeof(list) ? used : sizeof(list) - 1] = '\0';
	}
	return coord__error_set(err, field, "'%.40s' is not one of: %s", value, list);
}

static int
append_string(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f, const char *s, size_t len)
{
	size_t *n = member(msg, f->quantifier_offset);
	char ***arr = member(msg, f->offset);
	char **grown = realloc(*arr, (*n + 1) * sizeof(char *));
	if (grown == NULL) {
		return -ENOMEM;
	}
	*arr = grown;
	char *copy = strndup(s, len);
	if (copy == NULL) {
		return -ENOMEM;
	}
	grown[(*n)++] = copy;
	return 0;
}

static int
set_string_list(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f, const char *value,
                const char *field, struct coord_error *err)
{
	const char *p = value;
	for (;;) {
		while (*p == ',' || *p == ';' || isspace((unsigned char) *p)) {
			p++;
		}
		if (*p == '\0') {
			return 0;
		}
		size_t len = strcspn(p, ",; \t\r\n\v\f");
		if (*(size_t *) member(msg, f->quantifier_offset) >= LIST_ENTRIES_MAX) {
			return coord__error_set(err, field, "more than %d entries",
			                        LIST_ENTRIES_MAX);
		}
		int r = append_string(msg, f, p, len);
		if (r < 0) {
			return r;
		}
		p += len;
	}
}

/* Set one body field from its trimmed, non-empty text. `seen` flags singular fields. */
static int
set_body_field(ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f, const char *value,
               const char *field, bool *seen, struct coord_error *err)
{
	if (f->label == PROTOBUF_C_LABEL_REPEATED) {
		if (f->type != PROTOBUF_C_TYPE_STRING) {
			return coord__error_set(err, field, "field type not supported in text");
		}
		return set_string_list(msg, f, value, field, err);
	}
	if (*seen) {
		return coord__error_set(err, field, "given more than once");
	}
	*seen = true;
	switch (f->type) {
	case PROTOBUF_C_TYPE_STRING: {
		char **slot = member(msg, f->offset);
		char *copy = strdup(value);
		if (copy == NULL) {
			return -ENOMEM;
		}
		if (*slot != NULL && *slot != (char *) f->default_value) {
			free(*slot);
		}
		*slot = copy;
		return 0;
	}
	case PROTOBUF_C_TYPE_ENUM: {
		int v = 0;
		int r = parse_enum(f->descriptor, value, &v, field, err);
		if (r == 0) {
			memcpy(member(msg, f->offset), &v, sizeof(v));
		}
		return r;
	}
	case PROTOBUF_C_TYPE_INT64: {
		int64_t v;
		if (coord__parse_time(value, &v) < 0) {
			return coord__error_set(err, field,
			                        "'%.40s' is not an ISO 8601 date or date-time "
			                        "(2020-10-04 or 2020-10-04T18:30:00Z)",
			                        value);
		}
		memcpy(member(msg, f->offset), &v, sizeof(v));
		return 0;
	}
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_UINT64: {
		uint64_t v;
		bool wide = f->type == PROTOBUF_C_TYPE_UINT64;
		int r = parse_unsigned(value, wide ? UINT64_MAX : UINT32_MAX, &v);
		if (r < 0) {
			return coord__error_set(err, field,
			                        r == -ERANGE ? "'%.40s' is too large"
			                                     : "'%.40s' is not a whole number",
			                        value);
		}
		if (wide) {
			memcpy(member(msg, f->offset), &v, sizeof(v));
		} else {
			uint32_t v32 = (uint32_t) v;
			memcpy(member(msg, f->offset), &v32, sizeof(v32));
		}
		return 0;
	}
	default:
		return coord__error_set(err, field, "field type not supported in text");
	}
}

/* Replace an Envelope string member (default or malloc()ed) with a copy of s. */
static int
env_set_string(char **slot, const char *s)
{
	char *copy = strdup(s);
	if (copy == NULL) {
		return -ENOMEM;
	}
	if (*slot != NULL && *slot != protobuf_c_empty_string) {
		free(*slot);
	}
	*slot = copy;
	return 0;
}

static int
set_env_field(Coord__V1__Envelope *env, enum env_field which, const char *value,
              Coord__V1__Envelope__BodyCase body, const char *council, const char *field,
              struct coord_error *err)
{
	switch (which) {
	case ENV_MSG_ID:
		return env_set_string(&env->msg_id, value);
	case ENV_REVISION: {
		uint64_t v;
		if (parse_unsigned(value, UINT32_MAX, &v) < 0 || v == 0) {
			return coord__error_set(err, field, "'%.40s' is not a revision (1 or more)",
			                        value);
		}
		env->revision = (uint32_t) v;
		return 0;
	}
	case ENV_CREATED_AT:
		if (coord__parse_time(value, &env->created_at) < 0) {
			return coord__error_set(err, field, "'%.40s' is not an ISO 8601 date-time",
			                        value);
		}
		return 0;
	case ENV_COUNCIL:
		if (strcmp(value, council) != 0) {
			return coord__error_set(err, field, "'%.40s' is not this council ('%s')",
			                        value, council);
		}
		return 0;
	case ENV_CATEGORY:
		if (coord__category_parse(value) != body) {
			return coord__error_set(err, field, "'%.40s' does not match category '%s'",
			                        value, coord__category_name(body));
		}
		return 0;
	case ENV_X_MAX:
		break;
	}
	return -EINVAL;
}

/* ------------------------------------------------------------------------------------------ */
/* Completion, msg_id, validation */

int
coord__derive_msg_id(const Coord__V1__Envelope *env, char ret_id[COORD_MSG_ID_MAX + 1])
{
	const char *cat = coord__category_name(env->body_case);
	const ProtobufCMessage *body = NULL;
	switch (env->body_case) {
	case COORD__V1__ENVELOPE__BODY_EVENT:
		body = &env->event->base;
		break;
	case COORD__V1__ENVELOPE__BODY_LETTER:
		body = &env->letter->base;
		break;
	case COORD__V1__ENVELOPE__BODY_STATEMENT:
		body = &env->statement->base;
		break;
	case COORD__V1__ENVELOPE__BODY_PETITION:
		body = &env->petition->base;
		break;
	case COORD__V1__ENVELOPE__BODY_MEDIA:
		body = &env->media->base;
		break;
	case COORD__V1__ENVELOPE__BODY_RETRACTION:
		body = &env->retraction->base;
		break;
	default:
		break;
	}
	if (cat == NULL || body == NULL) {
		return -EINVAL;
	}
	size_t len = protobuf_c_message_get_packed_size(body);
	uint8_t *packed = malloc(len > 0 ? len : 1);
	if (packed == NULL) {
		return -ENOMEM;
	}
	(void) protobuf_c_message_pack(body, packed);

	static const char domain[] = "coord-msg-id-v1";
	const char *council = env->council != NULL ? env->council : "";
	crypto_hash_sha256_state st;
	uint8_t digest[crypto_hash_sha256_BYTES];
	(void) crypto_hash_sha256_init(&st);
	(void) crypto_hash_sha256_update(&st, (const uint8_t *) domain, sizeof(domain));
	(void) crypto_hash_sha256_update(&st, (const uint8_t *) council, strlen(council) + 1);
	(void) crypto_hash_sha256_update(&st, (const uint8_t *) cat, strlen(cat) + 1);
	(void) crypto_hash_sha256_update(&st, packed, len);
	(void) crypto_hash_sha256_final(&st, digest);
	free(packed);

	static const char hex[] = "0123456789abcdef";
	memcpy(ret_id, COORD__DERIVED_ID_PREFIX, 2);
	for (size_t i = 0; i < 16; i++) {
		ret_id[2 + 2 * i] = hex[digest[i] >> 4];
		ret_id[3 + 2 * i] = hex[digest[i] & 0xf];
	}
	ret_id[COORD__DERIVED_ID_LEN] = '\0';
	return 0;
}

/* Split a wire verdict "event.languages[1] 'xx' is not ..." into field and message. */
static int
error_from_verdict(const struct wire_verdict *v, struct coord_error *err)
{
	const char *msg = v->message;
	size_t tok = strcspn(msg, " ");
	bool is_path = tok > 0 && tok < sizeof(err->field);
	for (size_t i = 0; is_path && i < tok; i++) {
		char c = msg[i];
		is_path = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
		          c == '.' || c == '[' || c == ']';
	}
	if (is_path && (memchr(msg, '.', tok) != NULL || strncmp(msg, "council", tok) == 0 ||
	                strncmp(msg, "msg_id", tok) == 0 || strncmp(msg, "created_at", tok) == 0)) {
		const char *rest = msg + tok;
		while (*rest == ' ') {
			rest++;
		}
		if (err != NULL) {
			(void) snprintf(err->field, sizeof(err->field), "%.*s", (int) tok, msg);
			(void) snprintf(err->message, sizeof(err->message), "%s", rest);
		}
		return -EINVAL;
	}
	if (strncmp(msg, "revision", 8) == 0) {
		return coord__error_set(err, "revision", "%s", msg);
	}
	return coord__error_set(err, NULL, "%s", msg);
}

int
coord__envelope_complete(Coord__V1__Envelope *env, const char *council, int64_t now_ms,
                         struct coord_envelope *ret, struct coord_error *err)
{
	if (now_ms == 0) {
		now_ms = coord__now_ms();
	}
	if (env->body_case == COORD__V1__ENVELOPE__BODY__NOT_SET) {
		return coord__error_set(err, NULL,
		                        "no record body (event, letter, statement, petition, media "
		                        "or retraction)");
	}
	int r;
	if (env->council == NULL || env->council[0] == '\0') {
		r = env_set_string(&env->council, council);
		if (r < 0) {
			return r;
		}
	} else if (strcmp(env->council, council) != 0) {
		return coord__error_set(err, "council", "'%.40s' is not this council ('%s')",
		                        env->council, council);
	}
	bool retraction = env->body_case == COORD__V1__ENVELOPE__BODY_RETRACTION;
	if (env->revision == 0) {
		env->revision = retraction ? 2 : 1;
	}
	if (env->created_at == 0) {
		env->created_at = now_ms;
	}
	if (env->msg_id == NULL || env->msg_id[0] == '\0') {
		if (retraction) {
			return coord__error_set(err, "msg_id",
			                        "a retraction needs the msg_id of the record it "
			                        "withdraws");
		}
		char id[COORD_MSG_ID_MAX + 1];
		r = coord__derive_msg_id(env, id);
		if (r == 0) {
			r = env_set_string(&env->msg_id, id);
		}
		if (r < 0) {
			return r;
		}
	}
	struct wire_verdict verdict;
	if (wire_validate_envelope(env, now_ms, &verdict) < 0) {
		return error_from_verdict(&verdict, err);
	}
	size_t len = coord__v1__envelope__get_packed_size(env);
	if (len > COORD_ENVELOPE_MAX) {
		return coord__error_set(err, NULL, "the record is %zu bytes, more than %d", len,
		                        COORD_ENVELOPE_MAX);
	}
	uint8_t *bytes = malloc(len);
	if (bytes == NULL) {
		return -ENOMEM;
	}
	(void) coord__v1__envelope__pack(env, bytes);
	*ret = (struct coord_envelope){
	        .bytes = bytes,
	        .len = len,
	        .revision = env->revision,
	        .created_at = env->created_at,
	};
	(void) snprintf(ret->msg_id, sizeof(ret->msg_id), "%s", env->msg_id);
	return 0;
}

/* Point an Envelope's oneof at a fresh, empty body message. */
static int
attach_body(Coord__V1__Envelope *env, const struct category *cat)
{
	ProtobufCMessage *body = calloc(1, cat->desc->sizeof_message);
	if (body == NULL) {
		return -ENOMEM;
	}
	protobuf_c_message_init(cat->desc, body);
	env->body_case = cat->body;
	switch (cat->body) {
	case COORD__V1__ENVELOPE__BODY_EVENT:
		env->event = (Coord__V1__Event *) body;
		break;
	case COORD__V1__ENVELOPE__BODY_LETTER:
		env->letter = (Coord__V1__OutreachLetter *) body;
		break;
	case COORD__V1__ENVELOPE__BODY_STATEMENT:
		env->statement = (Coord__V1__Statement *) body;
		break;
	case COORD__V1__ENVELOPE__BODY_PETITION:
		env->petition = (Coord__V1__Petition *) body;
		break;
	case COORD__V1__ENVELOPE__BODY_MEDIA:
		env->media = (Coord__V1__MediaReport *) body;
		break;
	case COORD__V1__ENVELOPE__BODY_RETRACTION:
		env->retraction = (Coord__V1__Retraction *) body;
		break;
	default:
		free(body);
		return -EINVAL;
	}
	return 0;
}

static ProtobufCMessage *
body_message(Coord__V1__Envelope *env)
{
	/* Every body pointer of the union sits at the same place. */
	return (ProtobufCMessage *) env->event;
}

/* Copy s without leading and trailing white space into a new string. */
static char *
trimmed_copy(const char *s)
{
	while (isspace((unsigned char) *s)) {
		s++;
	}
	size_t len = strlen(s);
	while (len > 0 && isspace((unsigned char) s[len - 1])) {
		len--;
	}
	return strndup(s, len);
}

/* After a validation error, name the field the way the caller spelled it. */
static void
caller_spelling(struct coord_error *err, const struct coord_field *fields, size_t n)
{
	if (err == NULL || err->field[0] == '\0') {
		return;
	}
	char last[sizeof(err->field)];
	const char *dot = strrchr(err->field, '.');
	(void) snprintf(last, sizeof(last), "%s", dot != NULL ? dot + 1 : err->field);
	char *bracket = strchr(last, '[');
	if (bracket != NULL) {
		*bracket = '\0';
	}
	char want[NAME_MAX_LEN];
	if (!fold_name(last, want)) {
		return;
	}
	for (size_t i = 0; i < n; i++) {
		char f[NAME_MAX_LEN];
		size_t fl;
		if (fields[i].name == NULL || !fold_name(fields[i].name, f)) {
			continue;
		}
		fl = strlen(f);
		if (strcmp(f, want) == 0 ||
		    (strlen(want) == fl + 1 && strncmp(want, f, fl) == 0 && want[fl] == 's')) {
			(void) snprintf(err->field, sizeof(err->field), "%s", fields[i].name);
			return;
		}
	}
	(void) snprintf(err->field, sizeof(err->field), "%s", last);
}

int
coord_envelope_build(const char *council, const char *category, const struct coord_field *fields,
                     size_t n_fields, int64_t now_ms, struct coord_envelope *ret,
                     struct coord_error *err)
{
	if (council == NULL || council[0] == '\0') {
		return coord__error_set(err, "council", "no council given");
	}
	const struct category *cat = category_of(coord__category_parse(category));
	if (cat == NULL) {
		return coord__error_set(err, "category",
		                        "'%.40s' is not a category (event, letter, statement, "
		                        "petition, media or retraction)",
		                        category != NULL ? category : "");
	}
	if (n_fields > 0 && fields == NULL) {
		return -EINVAL;
	}
	Coord__V1__Envelope *env = calloc(1, sizeof(*env));
	if (env == NULL) {
		return -ENOMEM;
	}
	coord__v1__envelope__init(env);
	int r = attach_body(env, cat);
	bool seen_body[32] = {false};
	bool seen_env[ENV_X_MAX] = {false};
	for (size_t i = 0; r == 0 && i < n_fields; i++) {
		const char *name = fields[i].name != NULL ? fields[i].name : "";
		char folded[NAME_MAX_LEN];
		if (!fold_name(name, folded)) {
			r = coord__error_set(err, name, "'%.40s' is not a field name", name);
			break;
		}
		char *value = trimmed_copy(fields[i].value != NULL ? fields[i].value : "");
		if (value == NULL) {
			r = -ENOMEM;
			break;
		}
		int which = env_field_find(folded);
		const ProtobufCFieldDescriptor *f =
		        which < 0 ? body_field_find(cat->desc, folded) : NULL;
		if (which < 0 && f == NULL) {
			r = coord__error_set(err, name, "not a field of %s", cat->name);
		} else if (value[0] == '\0') {
			r = 0; /* an empty cell leaves the field unset */
		} else if (which >= 0) {
			if (seen_env[which]) {
				r = coord__error_set(err, name, "given more than once");
			} else {
				seen_env[which] = true;
				r = set_env_field(env, (enum env_field) which, value, cat->body,
				                  council, name, err);
			}
		} else {
			size_t idx = (size_t) (f - cat->desc->fields);
			r = idx < ARRAY_SIZE(seen_body)
			            ? set_body_field(body_message(env), f, value, name,
			                             &seen_body[idx], err)
			            : -EINVAL;
		}
		free(value);
	}
	if (r == 0) {
		r = coord__envelope_complete(env, council, now_ms, ret, err);
		if (r == -EINVAL) {
			caller_spelling(err, fields, n_fields);
		}
	}
	coord__v1__envelope__free_unpacked(env, NULL);
	return r;
}

void
coord_envelope_done(struct coord_envelope *env)
{
	if (env == NULL) {
		return;
	}
	free(env->bytes);
	*env = (struct coord_envelope){0};
}

int
coord_envelope_check(const uint8_t *bytes, size_t len, int64_t now_ms, struct coord_error *err)
{
	if (len > COORD_ENVELOPE_MAX) {
		(void) coord__error_set(err, NULL, "the record is %zu bytes, more than %d", len,
		                        COORD_ENVELOPE_MAX);
		return -EMSGSIZE;
	}
	Coord__V1__Envelope *env = NULL;
	struct wire_verdict verdict;
	int r = wire_unpack_envelope(bytes, len, COORD_ENVELOPE_MAX, &env, &verdict);
	if (r == -ENOMEM) {
		return r;
	}
	if (r < 0) {
		if (env != NULL) {
			coord__v1__envelope__free_unpacked(env, NULL);
		}
		return error_from_verdict(&verdict, err);
	}
	r = wire_validate_envelope(env, now_ms != 0 ? now_ms : coord__now_ms(), &verdict);
	coord__v1__envelope__free_unpacked(env, NULL);
	return r < 0 ? error_from_verdict(&verdict, err) : 0;
}

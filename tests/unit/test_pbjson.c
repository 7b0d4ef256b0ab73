/*
 * Unit tests for clients/libcoord/pbjson.c, the proto3 JSON mapping.
 *
 * Round trips: a generic filler sets every field of every coord.v1 message (each oneof
 * member in turn, repeated fields with several elements, extreme integers, non-ASCII and
 * control characters), and the test checks that encode, decode and pack give back the
 * bytes protobuf-c packs from the original, in compact and pretty form. Spelling: exact
 * expected texts for a few messages. Errors: a table of inputs with the exact message
 * each must produce, covering every rejection in the decoder.
 *
 * coord.proto has no floats, doubles, bools outside HistoryPage, signed/fixed integers or
 * proto2-style optional fields, so the file also defines `AllTypes`, a message descriptor
 * written by hand in the shape protoc-gen-c generates, with one field of each kind.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
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
#include "pbjson.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* ---------------------------------------------------------------------------------------
 * AllTypes: one field of each protobuf-c type and label, hand-made like generated code.
 */

struct all_types {
	ProtobufCMessage base;
	int32_t i32;
	int32_t s32;
	int32_t sf32;
	uint32_t u32;
	uint32_t f32;
	int64_t i64;
	int64_t s64;
	int64_t sf64;
	uint64_t u64;
	uint64_t f64;
	float flt;
	double dbl;
	protobuf_c_boolean flag;
	int32_t kind;
	char *text;
	ProtobufCBinaryData blob;
	Coord__V1__Scope *scope;
	size_t n_many_doubles;
	double *many_doubles;
	size_t n_many_blobs;
	ProtobufCBinaryData *many_blobs;
	size_t n_many_flags;
	protobuf_c_boolean *many_flags;
	size_t n_many_kinds;
	int32_t *many_kinds;
	protobuf_c_boolean has_opt_int;
	int32_t opt_int;
	char *opt_text;
	uint32_t choice_case;
	union {
		char *choice_text;
		int64_t choice_int;
		Coord__V1__Scope *choice_scope;
	};
	size_t n_many_floats;
	float *many_floats;
	size_t n_big_numbers;
	uint64_t *big_numbers;
	size_t n_scopes;
	Coord__V1__Scope **scopes;
	struct all_types *child;
};

static void all_types_init(ProtobufCMessage *msg);

/* Tentative definition: the descriptor refers to itself through `child`. */
static const ProtobufCMessageDescriptor all_types_descriptor;

#define AT_OFF(member) offsetof(struct all_types, member)
#define AT_FIELD(fname, fid, flabel, ftype, qoff, member, fdesc, fdefault, fflags)                 \
	{                                                                                          \
		.name = fname, .id = fid, .label = PROTOBUF_C_LABEL_##flabel,                      \
		.type = PROTOBUF_C_TYPE_##ftype, .quantifier_offset = qoff,                        \
		.offset = AT_OFF(member), .descriptor = fdesc, .default_value = fdefault,          \
		.flags = fflags                                                                    \
	}
#define AT_SIMPLE(fname, fid, ftype, member)                                                       \
	AT_FIELD(fname, fid, NONE, ftype, 0, member, NULL, NULL, 0)
#define AT_REPEATED(fname, fid, ftype, member, fdesc, fflags)                                      \
	AT_FIELD(fname, fid, REPEATED, ftype, AT_OFF(n_##member), member, fdesc, NULL, fflags)
#define AT_ONEOF(fname, fid, ftype, member, fdesc, fdefault)                                       \
	AT_FIELD(fname, fid, NONE, ftype, AT_OFF(choice_case), member, fdesc, fdefault,            \
	         PROTOBUF_C_FIELD_FLAG_ONEOF)

static const ProtobufCFieldDescriptor all_types_fields[] = {
        AT_SIMPLE("i32", 1, INT32, i32),
        AT_SIMPLE("s32", 2, SINT32, s32),
        AT_SIMPLE("sf32", 3, SFIXED32, sf32),
        AT_SIMPLE("u32", 4, UINT32, u32),
        AT_SIMPLE("f32", 5, FIXED32, f32),
        AT_SIMPLE("i64", 6, INT64, i64),
        AT_SIMPLE("s64", 7, SINT64, s64),
        AT_SIMPLE("sf64", 8, SFIXED64, sf64),
        AT_SIMPLE("u64", 9, UINT64, u64),
        AT_SIMPLE("f64", 10, FIXED64, f64),
        AT_SIMPLE("flt", 11, FLOAT, flt),
        AT_SIMPLE("dbl", 12, DOUBLE, dbl),
        AT_SIMPLE("flag", 13, BOOL, flag),
        AT_FIELD("kind", 14, NONE, ENUM, 0, kind, &coord__v1__event_kind__descriptor, NULL, 0),
        AT_FIELD("text", 15, NONE, STRING, 0, text, NULL, &protobuf_c_empty_string, 0),
        AT_SIMPLE("blob", 16, BYTES, blob),
        AT_FIELD("scope", 17, NONE, MESSAGE, 0, scope, &coord__v1__scope__descriptor, NULL, 0),
        AT_REPEATED("many_doubles", 18, DOUBLE, many_doubles, NULL, PROTOBUF_C_FIELD_FLAG_PACKED),
        AT_REPEATED("many_blobs", 19, BYTES, many_blobs, NULL, 0),
        AT_REPEATED("many_flags", 20, BOOL, many_flags, NULL, PROTOBUF_C_FIELD_FLAG_PACKED),
        AT_REPEATED("many_kinds", 21, ENUM, many_kinds, &coord__v1__event_kind__descriptor,
                    PROTOBUF_C_FIELD_FLAG_PACKED),
        AT_FIELD("opt_int", 22, OPTIONAL, INT32, AT_OFF(has_opt_int), opt_int, NULL, NULL, 0),
        AT_FIELD("opt_text", 23, OPTIONAL, STRING, 0, opt_text, NULL, NULL, 0),
        AT_ONEOF("choice_text", 24, STRING, choice_text, NULL, &protobuf_c_empty_string),
        AT_ONEOF("choice_int", 25, INT64, choice_int, NULL, NULL),
        AT_ONEOF("choice_scope", 26, MESSAGE, choice_scope, &coord__v1__scope__descriptor, NULL),
        AT_REPEATED("many_floats", 27, FLOAT, many_floats, NULL, PROTOBUF_C_FIELD_FLAG_PACKED),
        AT_REPEATED("big_numbers", 28, FIXED64, big_numbers, NULL, PROTOBUF_C_FIELD_FLAG_PACKED),
        AT_REPEATED("scopes", 29, MESSAGE, scopes, &coord__v1__scope__descriptor, 0),
        AT_FIELD("child", 30, NONE, MESSAGE, 0, child, &all_types_descriptor, NULL, 0),
};

/* Filled in by setup_all_types(): field indices sorted by name, as protobuf-c expects. */
static unsigned all_types_by_name[ARRAY_SIZE(all_types_fields)];

static const ProtobufCIntRange all_types_ranges[] = {
        {1, 0},
        {0, ARRAY_SIZE(all_types_fields)},
};

static const ProtobufCMessageDescriptor all_types_descriptor = {
        .magic = PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC,
        .name = "test.AllTypes",
        .short_name = "AllTypes",
        .c_name = "AllTypes",
        .package_name = "test",
        .sizeof_message = sizeof(struct all_types),
        .n_fields = ARRAY_SIZE(all_types_fields),
        .fields = all_types_fields,
        .fields_sorted_by_name = all_types_by_name,
        .n_field_ranges = 1,
        .field_ranges = all_types_ranges,
        .message_init = all_types_init,
};

static void
all_types_init(ProtobufCMessage *msg)
{
	struct all_types *m = (struct all_types *) msg;

	*m = (struct all_types){
	        .base = PROTOBUF_C_MESSAGE_INIT(&all_types_descriptor),
	        .text = (char *) protobuf_c_empty_string,
	};
}

static int
compare_field_names(const void *a, const void *b)
{
	return strcmp(all_types_fields[*(const unsigned *) a].name,
	              all_types_fields[*(const unsigned *) b].name);
}

static int
setup_all_types(void **state)
{
	for (unsigned i = 0; i < ARRAY_SIZE(all_types_by_name); i++) {
		all_types_by_name[i] = i;
	}
	qsort(all_types_by_name, ARRAY_SIZE(all_types_by_name), sizeof(unsigned),
	      compare_field_names);
	return 0;
}

/* ---------------------------------------------------------------------------------------
 * Helpers
 */

static const ProtobufCMessageDescriptor *const coord_messages[] = {
        &coord__v1__envelope__descriptor,
        &coord__v1__event__descriptor,
        &coord__v1__outreach_letter__descriptor,
        &coord__v1__statement__descriptor,
        &coord__v1__petition__descriptor,
        &coord__v1__media_report__descriptor,
        &coord__v1__retraction__descriptor,
        &coord__v1__ack__descriptor,
        &coord__v1__item__descriptor,
        &coord__v1__code_count__descriptor,
        &coord__v1__digest_line__descriptor,
        &coord__v1__scope__descriptor,
        &coord__v1__headline__descriptor,
        &coord__v1__digest__descriptor,
        &coord__v1__aggregate__descriptor,
        &coord__v1__publication__descriptor,
        &coord__v1__digest_set__descriptor,
        &coord__v1__digest_request__descriptor,
        &coord__v1__history_request__descriptor,
        &coord__v1__history_page__descriptor,
        &coord__v1__status_request__descriptor,
        &coord__v1__record_status__descriptor,
        &coord__v1__stats_request__descriptor,
        &coord__v1__stats__descriptor,
        &coord__v1__query_request__descriptor,
        &coord__v1__query_error__descriptor,
        &coord__v1__query_response__descriptor,
};

static char *
encode_ok(const void *msg, unsigned flags)
{
	char *text = NULL;
	int r = coord__pbjson_encode(msg, flags, &text);

	assert_int_equal(r, 0);
	assert_non_null(text);
	return text;
}

static void
assert_encodes_to(const void *msg, const char *expected)
{
	char *text = encode_ok(msg, 0);

	assert_string_equal(text, expected);
	free(text);
}

static ProtobufCMessage *
decode_ok(const ProtobufCMessageDescriptor *desc, const char *text)
{
	ProtobufCMessage *msg = NULL;
	char err[256];
	int r = coord__pbjson_decode(desc, text, strlen(text), &msg, err, sizeof(err));

	if (r != 0) {
		fail_msg("decoding %s: %d %s", text, r, err);
	}
	assert_non_null(msg);
	return msg;
}

/* Decoding `text` as `desc` fails with -EINVAL and exactly this message. */
static void
assert_decode_error(const ProtobufCMessageDescriptor *desc, const char *text, size_t len,
                    const char *expected)
{
	ProtobufCMessage *msg = (ProtobufCMessage *) &msg;
	char err[256];
	int r = coord__pbjson_decode(desc, text, len, &msg, err, sizeof(err));

	if (r != -EINVAL || strcmp(err, expected) != 0) {
		fail_msg("decoding %s: got %d '%s', want '%s'", text, r, err, expected);
	}
	/* ret_msg is not touched on failure. */
	assert_ptr_equal(msg, &msg);
}

static uint8_t *
pack(const ProtobufCMessage *msg, size_t *ret_len)
{
	size_t len = protobuf_c_message_get_packed_size(msg);
	uint8_t *buf = malloc(len + 1);

	assert_non_null(buf);
	assert_int_equal(protobuf_c_message_pack(msg, buf), len);
	*ret_len = len;
	return buf;
}

static void
assert_same_packed(const ProtobufCMessage *a, const ProtobufCMessage *b)
{
	size_t alen, blen;
	uint8_t *abuf = pack(a, &alen);
	uint8_t *bbuf = pack(b, &blen);

	assert_int_equal(alen, blen);
	assert_memory_equal(abuf, bbuf, alen);
	free(abuf);
	free(bbuf);
}

/*
 * Encode (compact and pretty), decode both, and check: the decoded messages pack to the
 * original's bytes, and re-encoding gives the same text.
 */
static void
assert_round_trip(const ProtobufCMessage *msg)
{
	char *compact = encode_ok(msg, 0);
	char *pretty = encode_ok(msg, COORD__PBJSON_PRETTY);
	ProtobufCMessage *from_compact = decode_ok(msg->descriptor, compact);
	ProtobufCMessage *from_pretty = decode_ok(msg->descriptor, pretty);
	char *again = encode_ok(from_compact, 0);

	assert_same_packed(msg, from_compact);
	assert_same_packed(msg, from_pretty);
	assert_string_equal(again, compact);
	assert_null(strchr(compact, '\n'));
	free(again);
	protobuf_c_message_free_unpacked(from_pretty, NULL);
	protobuf_c_message_free_unpacked(from_compact, NULL);
	free(pretty);
	free(compact);
}

/* ---------------------------------------------------------------------------------------
 * The filler: every field of a message set to a value that is not the default.
 */

static const char *const sample_strings[] = {
        "fr",
        "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93 \xf0\x9f\x99\x82 \xd5\xb0\xd5\xa1\xd5\xb5",
        "quote \" backslash \\ slash / newline \n tab \t bell \x07 del \x7f",
        "</script><!-- \xe2\x80\xa8 \xe2\x80\xa9",
};

static void *xmalloc(size_t size) __attribute__((returns_nonnull));

/* malloc() that fails the test on NULL. */
static void *
xmalloc(size_t size)
{
	void *p = malloc(size > 0 ? size : 1);

	assert_non_null(p);
	return p;
}

static ProtobufCMessage *fill_message(const ProtobufCMessageDescriptor *desc, unsigned k);

/* Writes a non-default value, chosen by k, for one element of `field` at dst. */
static void
fill_value(const ProtobufCFieldDescriptor *field, void *dst, unsigned k)
{
	static const int32_t i32s[] = {INT32_MIN, -1, 1, INT32_MAX, 12345};
	static const uint32_t u32s[] = {UINT32_MAX, 1, 7, 2147483648u};
	static const int64_t i64s[] = {INT64_MIN, INT64_MAX, -1, INT64_C(1700000000000),
	                               INT64_C(9007199254740993)};
	static const uint64_t u64s[] = {UINT64_MAX, 1, UINT64_C(9007199254740993),
	                                UINT64_C(9223372036854775808)};
	static const double doubles[] = {0.1, -1e300, 5e-324, INFINITY, -INFINITY, NAN, 1.0};
	static const float floats[] = {1.5f, -0.25f, FLT_MAX, 1e-30f, 0.1f, INFINITY, NAN};

	switch (field->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
		*(int32_t *) dst = i32s[k % ARRAY_SIZE(i32s)];
		break;
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		*(uint32_t *) dst = u32s[k % ARRAY_SIZE(u32s)];
		break;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		*(int64_t *) dst = i64s[k % ARRAY_SIZE(i64s)];
		break;
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		*(uint64_t *) dst = u64s[k % ARRAY_SIZE(u64s)];
		break;
	case PROTOBUF_C_TYPE_FLOAT:
		*(float *) dst = floats[k % ARRAY_SIZE(floats)];
		break;
	case PROTOBUF_C_TYPE_DOUBLE:
		*(double *) dst = doubles[k % ARRAY_SIZE(doubles)];
		break;
	case PROTOBUF_C_TYPE_BOOL:
		*(protobuf_c_boolean *) dst = 1;
		break;
	case PROTOBUF_C_TYPE_ENUM: {
		const ProtobufCEnumDescriptor *ed = field->descriptor;

		/* Every sixth one is a number the enum does not name. */
		*(int32_t *) dst = k % 6 == 5 ? 1000 + (int32_t) k
		                              : ed->values[1 + k % (ed->n_values - 1)].value;
		break;
	}
	case PROTOBUF_C_TYPE_STRING:
		*(char **) dst = strdup(sample_strings[k % ARRAY_SIZE(sample_strings)]);
		assert_non_null(*(char **) dst);
		break;
	case PROTOBUF_C_TYPE_BYTES: {
		ProtobufCBinaryData *bd = dst;

		bd->len = 1 + k % 7;
		bd->data = xmalloc(bd->len);
		for (size_t i = 0; i < bd->len; i++) {
			bd->data[i] = (uint8_t) (0xff - 37 * (k + i));
		}
		break;
	}
	case PROTOBUF_C_TYPE_MESSAGE:
		*(ProtobufCMessage **) dst = fill_message(field->descriptor, k + 1);
		break;
	}
}

/* Which member of each oneof is set: the (k mod members)th, in field order. */
static bool
oneof_chosen(const ProtobufCMessageDescriptor *desc, const ProtobufCFieldDescriptor *field,
             unsigned k)
{
	unsigned index = 0, members = 0;

	for (unsigned i = 0; i < desc->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &desc->fields[i];

		if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
		    f->quantifier_offset == field->quantifier_offset) {
			if (f == field) {
				index = members;
			}
			members++;
		}
	}
	return index == k % members;
}

/* Bytes one element of a repeated field takes, as protobuf-c lays arrays out. */
static size_t
element_size(ProtobufCType type)
{
	switch (type) {
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
	case PROTOBUF_C_TYPE_DOUBLE:
		return 8;
	case PROTOBUF_C_TYPE_STRING:
	case PROTOBUF_C_TYPE_MESSAGE:
		return sizeof(void *);
	case PROTOBUF_C_TYPE_BYTES:
		return sizeof(ProtobufCBinaryData);
	default:
		return 4;
	}
}

static ProtobufCMessage *
fill_message(const ProtobufCMessageDescriptor *desc, unsigned k)
{
	ProtobufCMessage *msg = xmalloc(desc->sizeof_message);

	protobuf_c_message_init(desc, msg);
	for (unsigned i = 0; i < desc->n_fields; i++) {
		const ProtobufCFieldDescriptor *field = &desc->fields[i];
		char *base = (char *) msg;

		/* A message inside itself would never end; the nesting tests cover it. */
		if (field->descriptor == desc) {
			continue;
		}
		if (field->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t n = 1 + (k + i) % 3;
			size_t size = element_size(field->type);
			char *array = xmalloc(n * size);

			for (size_t j = 0; j < n; j++) {
				fill_value(field, array + j * size, k + i + (unsigned) j);
			}
			*(char **) (base + field->offset) = array;
			*(size_t *) (base + field->quantifier_offset) = n;
		} else if (field->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
			if (oneof_chosen(desc, field, k)) {
				fill_value(field, base + field->offset, k + i);
				*(uint32_t *) (base + field->quantifier_offset) = field->id;
			}
		} else {
			fill_value(field, base + field->offset, k + i);
			if (field->label == PROTOBUF_C_LABEL_OPTIONAL &&
			    field->type != PROTOBUF_C_TYPE_STRING &&
			    field->type != PROTOBUF_C_TYPE_MESSAGE) {
				*(protobuf_c_boolean *) (base + field->quantifier_offset) = 1;
			}
		}
	}
	return msg;
}

/* ---------------------------------------------------------------------------------------
 * Round trips
 */

static void
test_round_trip_every_message_with_all_fields(void **state)
{
	for (size_t i = 0; i < ARRAY_SIZE(coord_messages); i++) {
		/* Enough variants to set each member of the largest oneof (5) and cycle the
		 * value tables. */
		for (unsigned k = 0; k < 12; k++) {
			ProtobufCMessage *msg = fill_message(coord_messages[i], k);

			assert_round_trip(msg);
			protobuf_c_message_free_unpacked(msg, NULL);
		}
	}
}

static void
test_round_trip_all_types(void **state)
{
	for (unsigned k = 0; k < 21; k++) {
		ProtobufCMessage *msg = fill_message(&all_types_descriptor, k);

		assert_round_trip(msg);
		protobuf_c_message_free_unpacked(msg, NULL);
	}
}

static void
test_round_trip_empty_messages(void **state)
{
	for (size_t i = 0; i < ARRAY_SIZE(coord_messages); i++) {
		ProtobufCMessage *msg = xmalloc(coord_messages[i]->sizeof_message);

		protobuf_c_message_init(coord_messages[i], msg);
		assert_encodes_to(msg, "{}");
		assert_round_trip(msg);
		free(msg);
	}
}

/* ---------------------------------------------------------------------------------------
 * Encoding: exact spelling
 */

static void
test_encode_envelope_event_canonical(void **state)
{
	char *languages[] = {"fr", "hy"};
	Coord__V1__Event event = COORD__V1__EVENT__INIT;
	Coord__V1__Envelope env = COORD__V1__ENVELOPE__INIT;

	event.kind = COORD__V1__EVENT_KIND__EVENT_KIND_RALLY;
	event.country = "FR";
	event.city = "Paris";
	event.date = INT64_C(1699999999000);
	event.title = "Rally for \"peace\"";
	event.organiser = "CCAF";
	event.participants = 250;
	event.n_languages = 2;
	event.languages = languages;
	env.council = "fr";
	env.msg_id = "m1";
	env.revision = 1;
	env.created_at = INT64_C(1700000000000);
	env.body_case = COORD__V1__ENVELOPE__BODY_EVENT;
	env.event = &event;
	assert_encodes_to(&env, "{\"council\":\"fr\",\"msgId\":\"m1\",\"revision\":1,"
	                        "\"createdAt\":\"1700000000000\",\"event\":{\"kind\":"
	                        "\"EVENT_KIND_RALLY\",\"country\":\"FR\",\"city\":\"Paris\","
	                        "\"date\":\"1699999999000\",\"title\":\"Rally for \\\"peace\\\"\","
	                        "\"organiser\":\"CCAF\",\"participants\":250,\"languages\":["
	                        "\"fr\",\"hy\"]}}");
}

static void
test_encode_pretty_indents_two_spaces(void **state)
{
	Coord__V1__Scope scope = COORD__V1__SCOPE__INIT;
	Coord__V1__DigestRequest req = COORD__V1__DIGEST_REQUEST__INIT;
	char *text;

	scope.kind = COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNTRY;
	scope.id = "AM";
	req.scope = &scope;
	req.headlines = 5;
	text = encode_ok(&req, COORD__PBJSON_PRETTY);
	assert_string_equal(text, "{\n  \"scope\": {\n    \"kind\": \"SCOPE_KIND_COUNTRY\",\n"
	                          "    \"id\": \"AM\"\n  },\n  \"headlines\": 5\n}");
	free(text);
}

static void
test_encode_omits_defaults(void **state)
{
	Coord__V1__Stats stats = COORD__V1__STATS__INIT;
	Coord__V1__Event event = COORD__V1__EVENT__INIT;

	assert_encodes_to(&stats, "{}");
	stats.version = "";
	stats.uptime_ms = 1;
	assert_encodes_to(&stats, "{\"uptimeMs\":\"1\"}");
	event.n_languages = 0;
	event.languages = NULL;
	assert_encodes_to(&event, "{}");
}

static void
test_encode_set_oneof_member_always_written(void **state)
{
	Coord__V1__Retraction retraction = COORD__V1__RETRACTION__INIT;
	Coord__V1__Envelope env = COORD__V1__ENVELOPE__INIT;
	Coord__V1__StatsRequest stats = COORD__V1__STATS_REQUEST__INIT;
	Coord__V1__QueryRequest req = COORD__V1__QUERY_REQUEST__INIT;
	ProtobufCMessage *msg;

	env.body_case = COORD__V1__ENVELOPE__BODY_RETRACTION;
	env.retraction = &retraction;
	assert_encodes_to(&env, "{\"retraction\":{}}");
	msg = decode_ok(&coord__v1__envelope__descriptor, "{\"retraction\":{}}");
	assert_int_equal(((Coord__V1__Envelope *) msg)->body_case,
	                 COORD__V1__ENVELOPE__BODY_RETRACTION);
	assert_same_packed(msg, &env.base);
	protobuf_c_message_free_unpacked(msg, NULL);

	req.body_case = COORD__V1__QUERY_REQUEST__BODY_STATS;
	req.stats = &stats;
	assert_encodes_to(&req, "{\"stats\":{}}");

	/* A case with a NULL member is skipped, as protobuf-c's pack skips it. */
	req.stats = NULL;
	assert_encodes_to(&req, "{}");
}

static void
test_encode_set_message_field_written_when_empty(void **state)
{
	Coord__V1__Item item = COORD__V1__ITEM__INIT;
	Coord__V1__RecordStatus status = COORD__V1__RECORD_STATUS__INIT;

	status.item = &item;
	assert_encodes_to(&status, "{\"item\":{}}");
}

static void
test_encode_64_bit_integers_as_strings(void **state)
{
	Coord__V1__Ack ack = COORD__V1__ACK__INIT;
	Coord__V1__Digest digest = COORD__V1__DIGEST__INIT;
	Coord__V1__DigestLine line = COORD__V1__DIGEST_LINE__INIT;

	ack.seq = UINT64_MAX;
	ack.revision = UINT32_MAX;
	assert_encodes_to(&ack, "{\"revision\":4294967295,\"seq\":\"18446744073709551615\"}");
	digest.start = INT64_MIN;
	digest.end = INT64_MAX;
	assert_encodes_to(&digest, "{\"start\":\"-9223372036854775808\","
	                           "\"end\":\"9223372036854775807\"}");
	line.kind = INT32_MIN;
	assert_encodes_to(&line, "{\"kind\":-2147483648}");
}

static void
test_encode_unknown_enum_as_number(void **state)
{
	Coord__V1__Scope scope = COORD__V1__SCOPE__INIT;

	scope.kind = 42;
	assert_encodes_to(&scope, "{\"kind\":42}");
	scope.kind = -3;
	assert_encodes_to(&scope, "{\"kind\":-3}");
}

static void
test_encode_bytes_as_padded_base64(void **state)
{
	static const struct {
		const char *bytes;
		size_t len;
		const char *json;
	} cases[] = {
	        {"\x00", 1, "{\"envelope\":\"AA==\"}"},
	        {"\x00\x01", 2, "{\"envelope\":\"AAE=\"}"},
	        {"\x00\x01\x02", 3, "{\"envelope\":\"AAEC\"}"},
	        {"\xfb\xff", 2, "{\"envelope\":\"+/8=\"}"},
	        {"Many hands make light work.", 27,
	         "{\"envelope\":\"TWFueSBoYW5kcyBtYWtlIGxpZ2h0IHdvcmsu\"}"},
	};
	Coord__V1__Item item = COORD__V1__ITEM__INIT;

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		item.envelope.data = (uint8_t *) cases[i].bytes;
		item.envelope.len = cases[i].len;
		assert_encodes_to(&item, cases[i].json);
	}
}

static void
test_encode_escapes_strings(void **state)
{
	Coord__V1__QueryError qe = COORD__V1__QUERY_ERROR__INIT;

	qe.message = "a\"b\\c/d\n\t\x01\x1f \xc3\xa9 \xf0\x9f\x99\x82";
	assert_encodes_to(&qe, "{\"message\":\"a\\\"b\\\\c/d\\n\\t\\u0001\\u001F "
	                       "\xc3\xa9 \xf0\x9f\x99\x82\"}");
}

static void
test_encode_all_types_canonical(void **state)
{
	double doubles[] = {0.5, NAN, -INFINITY};
	uint64_t big[] = {UINT64_MAX};
	protobuf_c_boolean flags[] = {1, 0};
	Coord__V1__Scope scope = COORD__V1__SCOPE__INIT;
	struct all_types m;

	all_types_init(&m.base);
	m.s32 = -2;
	m.sf32 = -3;
	m.f32 = 4;
	m.s64 = -5;
	m.sf64 = -6;
	m.f64 = 7;
	m.flt = INFINITY;
	m.dbl = 2.5;
	m.flag = 1;
	m.has_opt_int = 1; /* present although 0 */
	m.opt_text = "";   /* present although empty */
	m.n_many_doubles = ARRAY_SIZE(doubles);
	m.many_doubles = doubles;
	m.n_big_numbers = 1;
	m.big_numbers = big;
	m.n_many_flags = 2;
	m.many_flags = flags;
	m.choice_case = 25;
	m.choice_int = 0; /* a set oneof member is written even when 0 */
	m.scope = &scope;
	assert_encodes_to(&m, "{\"s32\":-2,\"sf32\":-3,\"f32\":4,\"s64\":\"-5\",\"sf64\":\"-6\","
	                      "\"f64\":\"7\",\"flt\":\"Infinity\",\"dbl\":2.5,\"flag\":true,"
	                      "\"scope\":{},\"manyDoubles\":[0.5,\"NaN\",\"-Infinity\"],"
	                      "\"manyFlags\":[true,false],\"optInt\":0,\"optText\":\"\","
	                      "\"choiceInt\":\"0\",\"bigNumbers\":[\"18446744073709551615\"]}");
	m.choice_case = 24;
	m.choice_text = "";
	m.n_many_doubles = 0;
	m.n_many_flags = 0;
	m.n_big_numbers = 0;
	m.has_opt_int = 0;
	m.opt_text = NULL;
	m.scope = NULL;
	m.flt = -0.0f; /* -0 is the default, as in protobuf-c's pack */
	m.dbl = 0;
	assert_encodes_to(&m, "{\"s32\":-2,\"sf32\":-3,\"f32\":4,\"s64\":\"-5\",\"sf64\":\"-6\","
	                      "\"f64\":\"7\",\"flag\":true,\"choiceText\":\"\"}");
}

static void
test_encode_rejects_invalid_utf8(void **state)
{
	static const char *const bad[] = {
	        "\xff", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "ok \xe2\x82", "\x80",
	};
	Coord__V1__Scope scope = COORD__V1__SCOPE__INIT;
	Coord__V1__Event event = COORD__V1__EVENT__INIT;
	char *languages[2] = {"en", NULL};
	char *text = (char *) &text;

	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		scope.id = (char *) bad[i];
		assert_int_equal(coord__pbjson_encode(&scope.base, 0, &text), -EINVAL);
		assert_ptr_equal(text, &text);
		languages[1] = (char *) bad[i];
		event.n_languages = 2;
		event.languages = languages;
		assert_int_equal(coord__pbjson_encode(&event.base, 0, &text), -EINVAL);
	}
}

static void
test_encode_rejects_broken_messages(void **state)
{
	Coord__V1__Event event = COORD__V1__EVENT__INIT;
	Coord__V1__DigestSet set = COORD__V1__DIGEST_SET__INIT;
	Coord__V1__Digest *digests[1] = {NULL};
	char *languages[1] = {NULL};
	char *text = NULL;

	assert_int_equal(coord__pbjson_encode(NULL, 0, &text), -EINVAL);
	assert_int_equal(coord__pbjson_encode(&event.base, 0, NULL), -EINVAL);
	event.n_languages = 1; /* a count without an array */
	assert_int_equal(coord__pbjson_encode(&event.base, 0, &text), -EINVAL);
	event.languages = languages; /* a NULL string in an array */
	assert_int_equal(coord__pbjson_encode(&event.base, 0, &text), -EINVAL);
	set.n_digests = 1; /* a NULL message in an array */
	set.digests = digests;
	assert_int_equal(coord__pbjson_encode(&set.base, 0, &text), -EINVAL);
	assert_null(text);
}

/* ---------------------------------------------------------------------------------------
 * Decoding: accepted forms
 */

static void
test_decode_accepts_both_field_names(void **state)
{
	ProtobufCMessage *a =
	        decode_ok(&coord__v1__envelope__descriptor,
	                  "{\"msg_id\":\"x\",\"created_at\":\"5\",\"council\":\"c\"}");
	ProtobufCMessage *b = decode_ok(&coord__v1__envelope__descriptor,
	                                "{\"msgId\":\"x\",\"createdAt\":5,\"council\":\"c\"}");
	Coord__V1__Envelope *env = (Coord__V1__Envelope *) a;

	assert_string_equal(env->msg_id, "x");
	assert_int_equal(env->created_at, 5);
	assert_string_equal(env->council, "c");
	assert_same_packed(a, b);
	protobuf_c_message_free_unpacked(a, NULL);
	protobuf_c_message_free_unpacked(b, NULL);
}

static void
test_decode_null_means_default(void **state)
{
	ProtobufCMessage *msg = decode_ok(
	        &coord__v1__envelope__descriptor,
	        "{\"council\":null,\"revision\":null,\"event\":null,\"letter\":{\"subject\":null},"
	        "\"createdAt\":null}");
	Coord__V1__Envelope *env = (Coord__V1__Envelope *) msg;
	ProtobufCMessage *event;

	assert_string_equal(env->council, "");
	assert_int_equal(env->revision, 0);
	/* A null oneof member does not count as set: letter is the one. */
	assert_int_equal(env->body_case, COORD__V1__ENVELOPE__BODY_LETTER);
	assert_string_equal(env->letter->subject, "");
	protobuf_c_message_free_unpacked(msg, NULL);

	event = decode_ok(&coord__v1__event__descriptor, "{\"languages\":null}");
	assert_int_equal(((Coord__V1__Event *) event)->n_languages, 0);
	protobuf_c_message_free_unpacked(event, NULL);
}

static void
test_decode_integer_forms(void **state)
{
	static const struct {
		const char *json;
		int64_t created_at;
		uint32_t revision;
	} cases[] = {
	        {"{\"revision\":7,\"createdAt\":-5}", -5, 7},
	        {"{\"revision\":\"7\",\"createdAt\":\"-5\"}", -5, 7},
	        {"{\"revision\":7.0,\"createdAt\":-5e0}", -5, 7},
	        {"{\"revision\":7e0,\"createdAt\":1e15}", INT64_C(1000000000000000), 7},
	        {"{\"revision\":\"4294967295\",\"createdAt\":\"-9223372036854775808\"}", INT64_MIN,
	         UINT32_MAX},
	        {"{\"revision\":4294967295,\"createdAt\":-9223372036854775808}", INT64_MIN,
	         UINT32_MAX},
	        {"{\"revision\":\"007\",\"createdAt\":\"9223372036854775807\"}", INT64_MAX, 7},
	        {"{\"revision\":-0,\"createdAt\":\"-0\"}", 0, 0},
	        {"{\"revision\":-0.0,\"createdAt\":0}", 0, 0},
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		ProtobufCMessage *msg = decode_ok(&coord__v1__envelope__descriptor, cases[i].json);
		Coord__V1__Envelope *env = (Coord__V1__Envelope *) msg;

		assert_int_equal(env->created_at, cases[i].created_at);
		assert_int_equal(env->revision, cases[i].revision);
		protobuf_c_message_free_unpacked(msg, NULL);
	}
}

static void
test_decode_uint64_extremes(void **state)
{
	ProtobufCMessage *msg =
	        decode_ok(&coord__v1__ack__descriptor, "{\"seq\":\"18446744073709551615\"}");

	assert_true(((Coord__V1__Ack *) msg)->seq == UINT64_MAX);
	protobuf_c_message_free_unpacked(msg, NULL);
	msg = decode_ok(&coord__v1__ack__descriptor, "{\"seq\":1.8446744073709550e19}");
	assert_true(((Coord__V1__Ack *) msg)->seq == UINT64_C(18446744073709549568));
	protobuf_c_message_free_unpacked(msg, NULL);
	msg = decode_ok(&coord__v1__ack__descriptor, "{\"seq\":9223372036854775807}");
	assert_true(((Coord__V1__Ack *) msg)->seq == INT64_MAX);
	protobuf_c_message_free_unpacked(msg, NULL);
}

static void
test_decode_enum_forms(void **state)
{
	static const struct {
		const char *json;
		int32_t kind;
	} cases[] = {
	        {"{\"kind\":\"EVENT_KIND_RALLY\"}", 1},
	        {"{\"kind\":2}", 2},
	        {"{\"kind\":\"3\"}", 3},
	        {"{\"kind\":99}", 99}, /* open enum: unknown numbers are kept */
	        {"{\"kind\":-1}", -1},
	        {"{\"kind\":\"-7\"}", -7},
	        {"{\"kind\":4.0}", 4},
	        {"{\"kind\":\"EVENT_KIND_UNSPECIFIED\"}", 0},
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		ProtobufCMessage *msg = decode_ok(&coord__v1__event__descriptor, cases[i].json);

		assert_int_equal((int32_t) ((Coord__V1__Event *) msg)->kind, cases[i].kind);
		protobuf_c_message_free_unpacked(msg, NULL);
	}
}

static void
test_decode_base64_forms(void **state)
{
	static const struct {
		const char *json;
		const char *bytes;
		size_t len;
	} cases[] = {
	        {"{\"envelope\":\"AAE=\"}", "\x00\x01", 2},
	        {"{\"envelope\":\"AAE\"}", "\x00\x01", 2},
	        {"{\"envelope\":\"AA==\"}", "\x00", 1},
	        {"{\"envelope\":\"AA\"}", "\x00", 1},
	        {"{\"envelope\":\"+/8=\"}", "\xfb\xff", 2},
	        {"{\"envelope\":\"-_8=\"}", "\xfb\xff", 2},
	        {"{\"envelope\":\"-_8\"}", "\xfb\xff", 2},
	        {"{\"envelope\":\"AAEC\"}", "\x00\x01\x02", 3},
	        {"{\"envelope\":\"\"}", "", 0},
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		ProtobufCMessage *msg = decode_ok(&coord__v1__item__descriptor, cases[i].json);
		const ProtobufCBinaryData *bd = &((Coord__V1__Item *) msg)->envelope;

		assert_int_equal(bd->len, cases[i].len);
		if (cases[i].len > 0) {
			assert_memory_equal(bd->data, cases[i].bytes, cases[i].len);
		}
		protobuf_c_message_free_unpacked(msg, NULL);
	}
}

static void
test_decode_floating_forms(void **state)
{
	ProtobufCMessage *msg = decode_ok(
	        &all_types_descriptor,
	        "{\"flt\":\"NaN\",\"dbl\":\"-Infinity\",\"manyDoubles\":[1,\"2.5\",\"Infinity\","
	        "-1e-3,\"1E3\",\"NaN\"],\"manyFloats\":[3.4028234663852886e38,\"-0.5\","
	        "3.4028235e38,\"-3.4028235e38\"]}");
	struct all_types *m = (struct all_types *) msg;

	assert_true(isnan(m->flt));
	assert_true(isinf(m->dbl) && m->dbl < 0);
	assert_int_equal(m->n_many_doubles, 6);
	assert_true(m->many_doubles[0] == 1.0);
	assert_true(m->many_doubles[1] == 2.5);
	assert_true(isinf(m->many_doubles[2]) && m->many_doubles[2] > 0);
	assert_true(m->many_doubles[3] == -1e-3);
	assert_true(m->many_doubles[4] == 1000.0);
	assert_true(isnan(m->many_doubles[5]));
	assert_int_equal(m->n_many_floats, 4);
	assert_true(m->many_floats[0] == FLT_MAX);
	assert_true(m->many_floats[1] == -0.5f);
	/* Above FLT_MAX, but below the midpoint to infinity: rounds to FLT_MAX. */
	assert_true(m->many_floats[2] == FLT_MAX);
	assert_true(m->many_floats[3] == -FLT_MAX);
	protobuf_c_message_free_unpacked(msg, NULL);
}

static void
test_decode_optional_and_oneof_scalars(void **state)
{
	ProtobufCMessage *msg = decode_ok(&all_types_descriptor,
	                                  "{\"optInt\":0,\"opt_text\":\"\",\"choiceText\":\"\","
	                                  "\"flag\":false,\"manyFlags\":[true,false],"
	                                  "\"scopes\":[{},{\"id\":\"x\"}]}");
	struct all_types *m = (struct all_types *) msg;

	assert_true(m->has_opt_int);
	assert_int_equal(m->opt_int, 0);
	assert_string_equal(m->opt_text, "");
	assert_int_equal(m->choice_case, 24);
	assert_string_equal(m->choice_text, "");
	assert_false(m->flag);
	assert_int_equal(m->n_many_flags, 2);
	assert_true(m->many_flags[0]);
	assert_false(m->many_flags[1]);
	assert_int_equal(m->n_scopes, 2);
	assert_string_equal(m->scopes[1]->id, "x");
	protobuf_c_message_free_unpacked(msg, NULL);
}

static void
test_decode_whitespace_and_unicode_escapes(void **state)
{
	ProtobufCMessage *msg =
	        decode_ok(&coord__v1__scope__descriptor,
	                  " \n\t{ \"id\" : \"\\u00e9\\ud83d\\ude42\\n\" , \"kind\" : 1 }\r\n ");
	Coord__V1__Scope *scope = (Coord__V1__Scope *) msg;

	assert_string_equal(scope->id, "\xc3\xa9\xf0\x9f\x99\x82\n");
	assert_int_equal(scope->kind, 1);
	protobuf_c_message_free_unpacked(msg, NULL);
}

/* ---------------------------------------------------------------------------------------
 * Decoding: every rejection
 */

struct decode_error {
	const ProtobufCMessageDescriptor *desc;
	const char *json;
	const char *err;
};

#define ENV (&coord__v1__envelope__descriptor)
#define ACK (&coord__v1__ack__descriptor)
#define ITEM (&coord__v1__item__descriptor)
#define LINE (&coord__v1__digest_line__descriptor)
#define ALL (&all_types_descriptor)

static const struct decode_error decode_errors[] = {
        /* Syntax, from jansson. */
        {ENV, "", "invalid JSON at line 1 column 0: '[' or '{' expected near end of file"},
        {ENV,
         "{\"council\":", "invalid JSON at line 1 column 11: unexpected token near end of file"},
        {ENV, "{\"council\":\"fr\"} x",
         "invalid JSON at line 1 column 18: end of file expected near 'x'"},
        {ENV, "{'council':1}", "invalid JSON at line 1 column 2: string or '}' expected near '''"},
        {ENV, "{\"council\":\"a\",\"council\":\"b\"}",
         "invalid JSON at line 1 column 24: duplicate object key near '\"council\"'"},
        {ENV, "{\"revision\":NaN}", "invalid JSON at line 1 column 15: invalid token near 'NaN'"},
        {ACK, "{\"seq\":18446744073709551615}",
         "invalid JSON at line 1 column 27: too big integer near '18446744073709551615'"},
        {ENV, "[]", "expected an object"},
        {ENV, "[{}]", "expected an object"},
        /* Invalid UTF-8 and NUL: jansson rejects them; the message is made printable. */
        {ENV, "{\"council\":\"\xff\"}",
         "invalid JSON at line 1 column 12: unable to decode byte 0xff near '\"'"},
        {ENV, "{\"council\":\"\xc0\xaf\"}",
         "invalid JSON at line 1 column 12: unable to decode byte 0xc0 near '\"'"},
        {ENV, "{\"council\":\"\xed\xa0\x80\"}",
         "invalid JSON at line 1 column 12: unable to decode byte 0xed near '\"'"},
        {ENV, "{\"council\":\"\xf4\x90\x80\x80\"}",
         "invalid JSON at line 1 column 12: unable to decode byte 0xf4 near '\"'"},
        {ENV, "{\"council\":\"\\ud800\"}",
         "invalid JSON at line 1 column 19: invalid Unicode '\\uD800' near '\"\\ud800\"'"},
        {ENV, "{\"council\":\"\\udc00x\"}",
         "invalid JSON at line 1 column 20: invalid Unicode '\\uDC00' near '\"\\udc00x\"'"},
        {ENV, "{\"council\":\"\\u0000\"}",
         "invalid JSON at line 1 column 19: \\u0000 is not allowed without JSON_ALLOW_NUL "
         "near '\"\\u0000\"'"},
        {ENV, "{\"council\":\"a\nb\"}",
         "invalid JSON at line 1 column 13: unexpected newline near '\"a'"},
        {ENV,
         "{\"council\":\"a\x01"
         "b\"}",
         "invalid JSON at line 1 column 13: control character 0x1 near '\"a'"},
        /* Field names. */
        {ENV, "{\"bogus\":1}", "bogus: unknown field"},
        {ENV, "{\"MsgId\":\"a\"}", "MsgId: unknown field"},
        {ENV, "{\"msgid\":\"a\"}", "msgid: unknown field"},
        {ENV, "{\"msg-id\":\"a\"}", "msg-id: unknown field"},
        {ENV, "{\"msgId\":\"a\",\"msg_id\":\"b\"}",
         "msgId: duplicate field (also given as 'msg_id')"},
        {ENV, "{\"msg_id\":\"a\",\"msgId\":\"b\"}",
         "msgId: duplicate field (also given as 'msg_id')"},
        {ENV, "{\"event\":{\"kind\":1,\"colour\":\"red\"}}", "event.colour: unknown field"},
        {ENV, "{\"a\\tb\":1}", "a?b: unknown field"},
        /* Types. */
        {ENV, "{\"council\":5}", "council: expected a string"},
        {ENV, "{\"council\":[\"a\"]}", "council: expected a string"},
        {ENV, "{\"event\":[]}", "event: expected an object"},
        {ENV, "{\"event\":\"{}\"}", "event: expected an object"},
        {ENV, "{\"event\":{\"languages\":\"fr\"}}", "event.languages: expected an array"},
        {ENV, "{\"event\":{\"languages\":[\"fr\",5]}}", "event.languages[1]: expected a string"},
        {ENV, "{\"event\":{\"languages\":[null]}}",
         "event.languages[0]: null is not allowed in an array"},
        {&coord__v1__history_page__descriptor, "{\"complete\":1}",
         "complete: expected true or false"},
        {&coord__v1__history_page__descriptor, "{\"complete\":\"true\"}",
         "complete: expected true or false"},
        {&coord__v1__query_response__descriptor,
         "{\"digest\":{\"lines\":[{},{\"countries\":[{\"code\":\"DE\"},{\"code\":5}]}]}}",
         "digest.lines[1].countries[1].code: expected a string"},
        /* Integers. */
        {ENV, "{\"revision\":true}", "revision: expected an integer"},
        {ENV, "{\"revision\":{}}", "revision: expected an integer"},
        {ENV, "{\"revision\":[1]}", "revision: expected an integer"},
        {ENV, "{\"revision\":1.5}", "revision: not an integer: 1.5"},
        {ENV, "{\"revision\":1e-1}", "revision: not an integer: 0.10000000000000001"},
        {ENV, "{\"revision\":\"1.5\"}", "revision: not an integer: '1.5'"},
        {ENV, "{\"revision\":\"\"}", "revision: not an integer: ''"},
        {ENV, "{\"revision\":\"-\"}", "revision: not an integer: '-'"},
        {ENV, "{\"revision\":\" 1\"}", "revision: not an integer: ' 1'"},
        {ENV, "{\"revision\":\"+1\"}", "revision: not an integer: '+1'"},
        {ENV, "{\"revision\":\"0x10\"}", "revision: not an integer: '0x10'"},
        {ENV, "{\"revision\":\"1e3\"}", "revision: not an integer: '1e3'"},
        {ENV, "{\"revision\":4294967296}", "revision: integer out of range"},
        {ENV, "{\"revision\":-1}", "revision: integer out of range"},
        {ENV, "{\"revision\":\"-1\"}", "revision: integer out of range"},
        {LINE, "{\"kind\":2147483648}", "kind: integer out of range"},
        {LINE, "{\"kind\":-2147483649}", "kind: integer out of range"},
        {ENV, "{\"createdAt\":\"9223372036854775808\"}", "createdAt: integer out of range"},
        {ENV, "{\"createdAt\":\"-9223372036854775809\"}", "createdAt: integer out of range"},
        {ENV, "{\"createdAt\":9.3e18}", "createdAt: integer out of range"},
        {ACK, "{\"seq\":\"18446744073709551616\"}",
         "seq: integer out of range: '18446744073709551616'"},
        {ACK, "{\"seq\":\"99999999999999999999999\"}",
         "seq: integer out of range: '99999999999999999999999'"},
        {ACK, "{\"seq\":1.8446744073709552e19}",
         "seq: integer out of range: 1.8446744073709552e+19"},
        {ACK, "{\"seq\":-1}", "seq: integer out of range"},
        {ACK, "{\"seq\":\"-1\"}", "seq: integer out of range"},
        /* Enums. */
        {ENV, "{\"event\":{\"kind\":\"RALY\"}}", "event.kind: unknown enum value 'RALY'"},
        {ENV, "{\"event\":{\"kind\":\"event_kind_rally\"}}",
         "event.kind: unknown enum value 'event_kind_rally'"},
        {ENV, "{\"event\":{\"kind\":\"\"}}", "event.kind: unknown enum value ''"},
        {ENV, "{\"event\":{\"kind\":true}}", "event.kind: expected an enum name or number"},
        {ENV, "{\"event\":{\"kind\":{}}}", "event.kind: expected an enum name or number"},
        {ENV, "{\"event\":{\"kind\":2147483648}}", "event.kind: integer out of range"},
        {ENV, "{\"event\":{\"kind\":1.5}}", "event.kind: not an integer: 1.5"},
        {ENV, "{\"event\":{\"kind\":\"1x\"}}", "event.kind: not an integer: '1x'"},
        /* Bytes. */
        {ITEM, "{\"envelope\":5}", "envelope: expected a base64 string"},
        {ITEM, "{\"envelope\":\"A\"}", "envelope: invalid base64"},
        {ITEM, "{\"envelope\":\"AAAAA\"}", "envelope: invalid base64"},
        {ITEM, "{\"envelope\":\"AA=\"}", "envelope: invalid base64"},
        {ITEM, "{\"envelope\":\"A===\"}", "envelope: invalid base64"},
        {ITEM, "{\"envelope\":\"====\"}", "envelope: invalid base64"},
        {ITEM, "{\"envelope\":\"=\"}", "envelope: invalid base64"},
        {ITEM, "{\"envelope\":\"AA==AA==\"}", "envelope: invalid base64"},
        {ITEM, "{\"envelope\":\"AA*A\"}", "envelope: invalid base64"},
        {ITEM, "{\"envelope\":\"AA A\"}", "envelope: invalid base64"},
        {ITEM, "{\"envelope\":\"AB==\"}", "envelope: invalid base64"},
        {ITEM, "{\"envelope\":\"AAF\"}", "envelope: invalid base64"},
        /* Oneofs. */
        {ENV, "{\"event\":{},\"letter\":{}}", "letter: oneof member 'event' is already set"},
        {ENV, "{\"retraction\":{\"reason\":\"x\"},\"event\":null,\"media\":{}}",
         "media: oneof member 'retraction' is already set"},
        {&coord__v1__query_response__descriptor, "{\"stats\":{},\"error\":{\"message\":\"x\"}}",
         "error: oneof member 'stats' is already set"},
        {ALL, "{\"choiceInt\":\"1\",\"choice_text\":\"a\"}",
         "choice_text: oneof member 'choice_int' is already set"},
        /* A failure after allocations in a oneof member and repeated fields (freed). */
        {&coord__v1__publication__descriptor,
         "{\"digests\":{\"digests\":[{\"lines\":[{\"countries\":[{\"code\":\"A\"}],"
         "\"languages\":[{\"code\":\"en\",\"count\":\"x\"}]}]}]}}",
         "digests.digests[0].lines[0].languages[0].count: not an integer: 'x'"},
        /* Floating point. */
        {ALL, "{\"flt\":\"nan\"}", "flt: not a number: 'nan'"},
        {ALL, "{\"flt\":\"inf\"}", "flt: not a number: 'inf'"},
        {ALL, "{\"flt\":\"0x10\"}", "flt: not a number: '0x10'"},
        {ALL, "{\"flt\":\"\"}", "flt: not a number: ''"},
        {ALL, "{\"flt\":\"1.5x\"}", "flt: not a number: '1.5x'"},
        {ALL, "{\"flt\":\"1e5e5\"}", "flt: not a number: '1e5e5'"},
        {ALL, "{\"flt\":1e39}", "flt: number out of range for float"},
        {ALL, "{\"flt\":\"-1e39\"}", "flt: number out of range for float"},
        {ALL, "{\"flt\":3.4028236e38}", "flt: number out of range for float"},
        {ALL, "{\"flt\":\"-3.4028236e38\"}", "flt: number out of range for float"},
        {ALL, "{\"dbl\":\"1e999\"}", "dbl: number out of range: '1e999'"},
        {ALL, "{\"dbl\":true}", "dbl: expected a number"},
        {ALL, "{\"manyDoubles\":[1,null]}", "manyDoubles[1]: null is not allowed in an array"},
        {ALL, "{\"flag\":null,\"many_flags\":[true,1]}", "many_flags[1]: expected true or false"},
        {ALL, "{\"scopes\":[{},{\"kind\":\"X\"}]}", "scopes[1].kind: unknown enum value 'X'"},
        {ALL, "{\"optInt\":\"a\"}", "optInt: not an integer: 'a'"},
        {ALL, "{\"manyBlobs\":[\"AA==\",\"!\"]}", "manyBlobs[1]: invalid base64"},
};

static void
test_decode_rejects(void **state)
{
	unsigned failures = 0;

	/* Reports every mismatch before failing, so one run shows them all. */
	for (size_t i = 0; i < ARRAY_SIZE(decode_errors); i++) {
		const struct decode_error *e = &decode_errors[i];
		ProtobufCMessage *msg = (ProtobufCMessage *) &msg;
		char err[256];
		int r = coord__pbjson_decode(e->desc, e->json, strlen(e->json), &msg, err,
		                             sizeof(err));

		if (r != -EINVAL || strcmp(err, e->err) != 0 || msg != (ProtobufCMessage *) &msg) {
			print_error("decoding %s: got %d '%s', want '%s'\n", e->json, r, err,
			            e->err);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

static void
test_decode_rejects_embedded_nul_byte(void **state)
{
	assert_decode_error(ENV, "{\"council\":\"a\0b\"}", 17,
	                    "invalid JSON at line 1 column 13: control character 0x0 near '\"a'");
	assert_decode_error(
	        ENV, "{}\0", 3,
	        "invalid JSON at line 1 column 3: end of file expected near end of file");
}

/* Text nested `levels` deep: a field holding containers within containers. */
static char *
nested(unsigned levels, const char *open, const char *close)
{
	static const char head[] = "{\"council\":";
	size_t n = strlen(open), m = strlen(close);
	char *text = xmalloc(sizeof(head) + 3 + levels * (n + m));
	size_t o = sizeof(head) - 1;

	memcpy(text, head, o);
	for (unsigned i = 1; i < levels; i++, o += n) {
		memcpy(text + o, open, n);
	}
	text[o++] = '1';
	for (unsigned i = 1; i < levels; i++, o += m) {
		memcpy(text + o, close, m);
	}
	memcpy(text + o, "}", 2);
	return text;
}

static void
test_decode_limits_nesting_to_32(void **state)
{
	char *ok = nested(32, "[", "]");
	char *deep = nested(33, "[", "]");
	char *deeper = nested(100000, "{\"a\":", "}");
	char brackets[200];

	/* 32 levels reach the schema check; 33 are refused before parsing. */
	assert_decode_error(ENV, ok, strlen(ok), "council: expected a string");
	assert_decode_error(ENV, deep, strlen(deep), "nesting deeper than 32 levels");
	assert_decode_error(ENV, deeper, strlen(deeper), "nesting deeper than 32 levels");
	/* Brackets inside strings, escaped quotes included, do not count. */
	(void) snprintf(brackets, sizeof(brackets), "{\"council\":\"\\\"%s\"}",
	                "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[{{{{{{{{{{{{{{{{{{{{{{{{"
	                "{{{{{{{{{{");
	protobuf_c_message_free_unpacked(decode_ok(ENV, brackets), NULL);
	free(deeper);
	free(deep);
	free(ok);
}

static void
test_encode_limits_nesting_to_32(void **state)
{
	struct all_types chain[COORD__PBJSON_DEPTH_MAX + 1];
	ProtobufCMessage *msg;
	char *text = (char *) &text;

	for (size_t i = 0; i < ARRAY_SIZE(chain); i++) {
		all_types_init(&chain[i].base);
		chain[i].i32 = (int32_t) i;
		chain[i].child = i + 1 < ARRAY_SIZE(chain) ? &chain[i + 1] : NULL;
	}
	/* 33 objects inside each other: one level too many. */
	assert_int_equal(coord__pbjson_encode(&chain[0].base, 0, &text), -EINVAL);
	assert_ptr_equal(text, &text);
	/* 32 go both ways. */
	assert_round_trip(&chain[1].base);
	/* A cycle is caught by the same limit instead of exhausting the stack. */
	chain[5].child = &chain[1];
	assert_int_equal(coord__pbjson_encode(&chain[1].base, 0, &text), -EINVAL);
	/* The 33-level text, built by hand, is refused by the decoder too. */
	chain[5].child = &chain[6];
	text = encode_ok(&chain[1].base, 0);
	{
		size_t len = strlen(text);
		char *deeper = xmalloc(len + 16);

		memcpy(deeper, "{\"child\":", 9);
		memcpy(deeper + 9, text, len);
		memcpy(deeper + 9 + len, "}", 2);
		assert_decode_error(&all_types_descriptor, deeper, strlen(deeper),
		                    "nesting deeper than 32 levels");
		msg = decode_ok(&all_types_descriptor, text);
		assert_same_packed(msg, &chain[1].base);
		protobuf_c_message_free_unpacked(msg, NULL);
		free(deeper);
	}
	free(text);
}

static void
test_decode_error_text_is_bounded(void **state)
{
	ProtobufCMessage *msg = NULL;
	char err[12];
	char big[400];
	char text[sizeof(big) + 64];

	/* Truncated, NUL-terminated, and never cut inside a UTF-8 sequence. */
	assert_int_equal(coord__pbjson_decode(ENV, "{\"bogus\":1}", 11, &msg, err, sizeof(err)),
	                 -EINVAL);
	assert_string_equal(err, "bogus: unkn");
	assert_int_equal(coord__pbjson_decode(
	                         ENV, "{\"\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\":1}",
	                         18, &msg, err, sizeof(err)),
	                 -EINVAL);
	assert_string_equal(err, "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9");
	/* A zero-sized or missing buffer is fine. */
	assert_int_equal(coord__pbjson_decode(ENV, "{\"bogus\":1}", 11, &msg, err, 0), -EINVAL);
	assert_int_equal(coord__pbjson_decode(ENV, "{\"bogus\":1}", 11, &msg, NULL, 99), -EINVAL);
	assert_null(msg);
	/* Long peer-supplied text is cut, not overflowed. */
	memset(big, 'k', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	(void) snprintf(text, sizeof(text), "{\"event\":{\"kind\":\"%s\"}}", big);
	{
		char long_err[1024];

		assert_int_equal(coord__pbjson_decode(ENV, text, strlen(text), &msg, long_err,
		                                      sizeof(long_err)),
		                 -EINVAL);
		assert_true(strncmp(long_err, "event.kind: unknown enum value 'kkkk", 36) == 0);
		assert_true(strlen(long_err) < 600);
	}
}

static void
test_decode_rejects_bad_arguments(void **state)
{
	ProtobufCMessage *msg = NULL;
	char err[64];
	ProtobufCMessageDescriptor broken = coord__v1__scope__descriptor;

	assert_int_equal(coord__pbjson_decode(NULL, "{}", 2, &msg, err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "invalid arguments");
	assert_int_equal(coord__pbjson_decode(ENV, "{}", 2, NULL, err, sizeof(err)), -EINVAL);
	assert_int_equal(coord__pbjson_decode(ENV, NULL, 2, &msg, err, sizeof(err)), -EINVAL);
	broken.magic = 0;
	assert_int_equal(coord__pbjson_decode(&broken, "{}", 2, &msg, err, sizeof(err)), -EINVAL);
	assert_null(msg);
	/* NULL text of length 0 is empty input. */
	assert_int_equal(coord__pbjson_decode(ENV, NULL, 0, &msg, err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "invalid JSON at line 1 column 0: '[' or '{' expected near end o");
}

static void
test_decode_length_is_honoured(void **state)
{
	/* Only `len` bytes are read: the rest of the buffer is not part of the text. */
	ProtobufCMessage *msg = NULL;
	char err[128];

	assert_int_equal(coord__pbjson_decode(&coord__v1__scope__descriptor,
	                                      "{\"id\":\"x\"}garbage", 10, &msg, err, sizeof(err)),
	                 0);
	assert_string_equal(((Coord__V1__Scope *) msg)->id, "x");
	protobuf_c_message_free_unpacked(msg, NULL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_round_trip_every_message_with_all_fields),
	        cmocka_unit_test(test_round_trip_all_types),
	        cmocka_unit_test(test_round_trip_empty_messages),
	        cmocka_unit_test(test_encode_envelope_event_canonical),
	        cmocka_unit_test(test_encode_pretty_indents_two_spaces),
	        cmocka_unit_test(test_encode_omits_defaults),
	        cmocka_unit_test(test_encode_set_oneof_member_always_written),
	        cmocka_unit_test(test_encode_set_message_field_written_when_empty),
	        cmocka_unit_test(test_encode_64_bit_integers_as_strings),
	        cmocka_unit_test(test_encode_unknown_enum_as_number),
	        cmocka_unit_test(test_encode_bytes_as_padded_base64),
	        cmocka_unit_test(test_encode_escapes_strings),
	        cmocka_unit_test(test_encode_all_types_canonical),
	        cmocka_unit_test(test_encode_rejects_invalid_utf8),
	        cmocka_unit_test(test_encode_rejects_broken_messages),
	        cmocka_unit_test(test_decode_accepts_both_field_names),
	        cmocka_unit_test(test_decode_null_means_default),
	        cmocka_unit_test(test_decode_integer_forms),
	        cmocka_unit_test(test_decode_uint64_extremes),
	        cmocka_unit_test(test_decode_enum_forms),
	        cmocka_unit_test(test_decode_base64_forms),
	        cmocka_unit_test(test_decode_floating_forms),
	        cmocka_unit_test(test_decode_optional_and_oneof_scalars),
	        cmocka_unit_test(test_decode_whitespace_and_unicode_escapes),
	        cmocka_unit_test(test_decode_rejects),
	        cmocka_unit_test(test_decode_rejects_embedded_nul_byte),
	        cmocka_unit_test(test_decode_limits_nesting_to_32),
	        cmocka_unit_test(test_encode_limits_nesting_to_32),
	        cmocka_unit_test(test_decode_error_text_is_bounded),
	        cmocka_unit_test(test_decode_rejects_bad_arguments),
	        cmocka_unit_test(test_decode_length_is_honoured),
	};

	return cmocka_run_group_tests(tests, setup_all_types, NULL);
}

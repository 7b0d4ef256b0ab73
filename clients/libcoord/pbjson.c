/*
 * pbjson: the canonical proto3 JSON mapping, generic over protobuf-c descriptors.
 *
 * Encoding walks a message by its descriptor and builds a jansson tree, which jansson
 * prints. Decoding lets jansson parse the text (it rejects duplicate keys, invalid UTF-8
 * and \u0000), then walks the tree against the descriptor and writes into a message built
 * the way protobuf-c's own unpack builds one, so that protobuf_c_message_free_unpacked()
 * releases it: every string, bytes buffer, repeated array and sub-message stored is
 * malloc()ed and never a field's default_value; a oneof case is set before its member is
 * written (the member starts zeroed, so a half-written one frees cleanly); and a repeated
 * count only ever covers zeroed or finished elements. A decode that fails half-way
 * therefore frees its partial message with that same call.
 *
 * Depth: JSON containers (objects and arrays) nest at most COORD__PBJSON_DEPTH_MAX
 * levels. The text is pre-scanned for this before jansson parses it, because jansson's
 * parser recurses up to 2048 levels of its own. Encoding applies the same limit, so
 * whatever is encoded decodes again.
 *
 * Field presence: proto3 fields without presence are written unless they hold the
 * default (0, false, "", empty bytes, the zero enum); message fields whenever the pointer
 * is set; a oneof member whenever its case is set, even with a default value; proto2-style
 * optional fields (and proto3 `optional`) by their has_ flag or pointer, as protobuf-c's
 * pack does.
 *
 * jansson cannot hold integer numbers above INT64_MAX: its parser fails on them. Encoding
 * writes 64-bit integers as strings, so only hand-written JSON meets this.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>

#include "pbjson.h"

#define PBJSON_PATH_MAX 256
#define PBJSON_NAME_BUF 64

struct decoder {
	char path[PBJSON_PATH_MAX]; /* "event.languages[2]", always NUL-terminated */
	size_t path_len;
	char *err;
	size_t err_size;
};

/*
 * Length of the valid UTF-8 sequence at s (n > 0 bytes available), or 0 when it is not
 * one: overlong forms, surrogates and code points above U+10FFFF are invalid, as in
 * jansson.
 */
static size_t
utf8_seq_len(const unsigned char *s, size_t n)
{
	static const uint32_t shortest[5] = {0, 0, 0x80, 0x800, 0x10000};
	uint32_t cp;
	size_t len;

	if (s[0] < 0x80) {
		return 1;
	} else if ((s[0] & 0xe0) == 0xc0) {
		len = 2;
		cp = s[0] & 0x1f;
	} else if ((s[0] & 0xf0) == 0xe0) {
		len = 3;
		cp = s[0] & 0x0f;
	} else if ((s[0] & 0xf8) == 0xf0) {
		len = 4;
		cp = s[0] & 0x07;
	} else {
		return 0;
	}
	if (n < len) {
		return 0;
	}
	for (size_t k = 1; k < len; k++) {
		if ((s[k] & 0xc0) != 0x80) {
			return 0;
		}
		cp = (cp << 6) | (s[k] & 0x3f);
	}
	if (cp < shortest[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
		return 0;
	}
	return len;
}

static bool
utf8_valid(const char *s, size_t n)
{
	const unsigned char *p = (const unsigned char *) s;

	for (size_t i = 0; i < n;) {
		size_t len = utf8_seq_len(p + i, n - i);

		if (len == 0) {
			return false;
		}
		i += len;
	}
	return true;
}

/*
 * Copies src into dst as one line of valid UTF-8: control characters and bytes that are
 * not part of a valid sequence become '?', and a sequence that does not fit is dropped
 * whole. Error text quotes peer-supplied keys and values, and jansson's messages quote raw
 * input bytes.
 */
static void
copy_sanitized(char *dst, size_t size, const char *src)
{
	const unsigned char *s = (const unsigned char *) src;
	size_t n = strlen(src);
	size_t o = 0;

	for (size_t i = 0; i < n;) {
		size_t len = s[i] < 0x20 || s[i] == 0x7f ? 0 : utf8_seq_len(s + i, n - i);

		if (len == 0) {
			if (o + 1 >= size) {
				break;
			}
			dst[o++] = '?';
			i++;
			continue;
		}
		if (o + len >= size) {
			break;
		}
		memcpy(dst + o, s + i, len);
		o += len;
		i += len;
	}
	dst[o] = '\0';
}

/* Records "path: reason" (the first error only; callers return at once) and returns
 * -EINVAL. */
static int fail(struct decoder *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int
fail(struct decoder *d, const char *fmt, ...)
{
	char reason[320];
	char line[PBJSON_PATH_MAX + sizeof(reason) + 2];
	va_list ap;

	if (d->err == NULL || d->err_size == 0) {
		return -EINVAL;
	}
	va_start(ap, fmt);
	(void) vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	if (d->path_len > 0) {
		(void) snprintf(line, sizeof(line), "%s: %s", d->path, reason);
	} else {
		(void) snprintf(line, sizeof(line), "%s", reason);
	}
	copy_sanitized(d->err, d->err_size, line);
	return -EINVAL;
}

/* Appends a path component; returns the old length for path_pop(). A path too long for
 * the buffer is cut short, which only shortens error messages. */
static size_t path_push(struct decoder *d, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));

static size_t
path_push(struct decoder *d, const char *fmt, ...)
{
	size_t old = d->path_len;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(d->path + old, sizeof(d->path) - old, fmt, ap);
	va_end(ap);
	if (n > 0) {
		d->path_len =
		        old + (size_t) n < sizeof(d->path) ? old + (size_t) n : sizeof(d->path) - 1;
	}
	return old;
}

static void
path_pop(struct decoder *d, size_t old)
{
	d->path_len = old;
	d->path[old] = '\0';
}

/* protoc's ToJsonName(): drop each '_' and upper-case the letter after it. */
static void
camel_write(const char *name, char *out)
{
	bool upper = false;

	for (; *name != '\0'; name++) {
		if (*name == '_') {
			upper = true;
		} else if (upper) {
			*out++ = *name >= 'a' && *name <= 'z' ? (char) (*name - 'a' + 'A') : *name;
			upper = false;
		} else {
			*out++ = *name;
		}
	}
	*out = '\0';
}

/* The lowerCamelCase name of a field, in buf when it fits, else in a heap copy the caller
 * frees (when the result is not buf). NULL on -ENOMEM. */
static char *
camel_name(const char *name, char *buf, size_t size)
{
	size_t len = strlen(name);
	char *out = len < size ? buf : malloc(len + 1);

	if (out != NULL) {
		camel_write(name, out);
	}
	return out;
}

static bool
camel_equals(const char *name, const char *key)
{
	bool upper = false;

	for (; *name != '\0'; name++) {
		char c = *name;

		if (c == '_') {
			upper = true;
			continue;
		}
		if (upper) {
			c = c >= 'a' && c <= 'z' ? (char) (c - 'a' + 'A') : c;
			upper = false;
		}
		if (*key++ != c) {
			return false;
		}
	}
	return *key == '\0';
}

/* The field a JSON key names: its original name or its lowerCamelCase name. */
static const ProtobufCFieldDescriptor *
find_field(const ProtobufCMessageDescriptor *desc, const char *key)
{
	const ProtobufCFieldDescriptor *field =
	        protobuf_c_message_descriptor_get_field_by_name(desc, key);

	if (field != NULL) {
		return field;
	}
	for (unsigned i = 0; i < desc->n_fields; i++) {
		if (camel_equals(desc->fields[i].name, key)) {
			return &desc->fields[i];
		}
	}
	return NULL;
}

/* Bytes one element of a repeated field of this type takes in protobuf-c's array. */
static size_t
element_size(ProtobufCType type)
{
	switch (type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
	case PROTOBUF_C_TYPE_ENUM:
		return sizeof(int32_t);
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		return sizeof(int64_t);
	case PROTOBUF_C_TYPE_FLOAT:
		return sizeof(float);
	case PROTOBUF_C_TYPE_DOUBLE:
		return sizeof(double);
	case PROTOBUF_C_TYPE_BOOL:
		return sizeof(protobuf_c_boolean);
	case PROTOBUF_C_TYPE_STRING:
		return sizeof(char *);
	case PROTOBUF_C_TYPE_BYTES:
		return sizeof(ProtobufCBinaryData);
	case PROTOBUF_C_TYPE_MESSAGE:
		return sizeof(ProtobufCMessage *);
	}
	return 0;
}

/* ---------------------------------------------------------------------------------------
 * Base64 (RFC 4648). Encoding uses the standard alphabet with padding; decoding accepts
 * the standard and the URL-safe alphabet, with or without padding, and rejects anything
 * else, including unused low bits that are not zero.
 */

static const char b64_alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *
base64_encode(const uint8_t *data, size_t len)
{
	char *out = malloc((len + 2) / 3 * 4 + 1);
	char *o = out;
	size_t i = 0;

	if (out == NULL) {
		return NULL;
	}
	for (; len - i >= 3; i += 3) {
		uint32_t v = (uint32_t) data[i] << 16 | (uint32_t) data[i + 1] << 8 | data[i + 2];

		*o++ = b64_alphabet[v >> 18];
		*o++ = b64_alphabet[(v >> 12) & 0x3f];
		*o++ = b64_alphabet[(v >> 6) & 0x3f];
		*o++ = b64_alphabet[v & 0x3f];
	}
	if (len - i == 1) {
		uint32_t v = (uint32_t) data[i] << 16;

		*o++ = b64_alphabet[v >> 18];
		*o++ = b64_alphabet[(v >> 12) & 0x3f];
		*o++ = '=';
		*o++ = '=';
	} else if (len - i == 2) {
		uint32_t v = (uint32_t) data[i] << 16 | (uint32_t) data[i + 1] << 8;

		*o++ = b64_alphabet[v >> 18];
		*o++ = b64_alphabet[(v >> 12) & 0x3f];
		*o++ = b64_alphabet[(v >> 6) & 0x3f];
		*o++ = '=';
	}
	*o = '\0';
	return out;
}

static int
b64_value(char c)
{
	if (c >= 'A' && c <= 'Z') {
		return c - 'A';
	} else if (c >= 'a' && c <= 'z') {
		return c - 'a' + 26;
	} else if (c >= '0' && c <= '9') {
		return c - '0' + 52;
	} else if (c == '+' || c == '-') {
		return 62;
	} else if (c == '/' || c == '_') {
		return 63;
	}
	return -1;
}

/* Decodes s into a new buffer (NULL when empty). -EINVAL for bad base64, -ENOMEM. */
static int
base64_decode(const char *s, size_t n, uint8_t **ret_data, size_t *ret_len)
{
	size_t pad = 0;

	while (pad < 2 && n > pad && s[n - pad - 1] == '=') {
		pad++;
	}
	if (pad > 0 && n % 4 != 0) {
		return -EINVAL;
	}
	n -= pad;
	if (n % 4 == 1) {
		return -EINVAL;
	}

	size_t len = n / 4 * 3 + (n % 4 == 0 ? 0 : n % 4 - 1);
	uint8_t *data = NULL;
	uint32_t acc = 0;
	unsigned bits = 0;
	size_t o = 0;

	if (len > 0) {
		data = malloc(len);
		if (data == NULL) {
			return -ENOMEM;
		}
	}
	for (size_t i = 0; i < n; i++) {
		int v = b64_value(s[i]);

		if (v < 0) {
			free(data);
			return -EINVAL;
		}
		acc = (acc << 6) | (uint32_t) v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			data[o++] = (uint8_t) (acc >> bits);
			acc &= (1u << bits) - 1;
		}
	}
	/* Leftover bits must be zero, or two texts would decode to the same bytes. */
	if (acc != 0) {
		free(data);
		return -EINVAL;
	}
	*ret_data = data;
	*ret_len = len;
	return 0;
}

/* ---------------------------------------------------------------------------------------
 * Encoding
 */

static int encode_message(const ProtobufCMessage *msg, unsigned level, json_t **ret_value);

/* One value of `field` at `member` (a singular field or one array element), at nesting
 * level `level` should it be a container. */
static int
encode_value(const ProtobufCFieldDescriptor *field, const void *member, unsigned level,
             json_t **ret_value)
{
	json_t *value = NULL;
	char num[24];

	switch (field->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
		value = json_integer(*(const int32_t *) member);
		break;
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		value = json_integer(*(const uint32_t *) member);
		break;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		(void) snprintf(num, sizeof(num), "%" PRId64, *(const int64_t *) member);
		value = json_string(num);
		break;
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		(void) snprintf(num, sizeof(num), "%" PRIu64, *(const uint64_t *) member);
		value = json_string(num);
		break;
	case PROTOBUF_C_TYPE_FLOAT:
	case PROTOBUF_C_TYPE_DOUBLE: {
		double x = field->type == PROTOBUF_C_TYPE_FLOAT ? *(const float *) member
		                                                : *(const double *) member;

		/* JSON numbers cannot be NaN or infinite; proto3 JSON spells them as strings.
		 * Finite values print with 17 significant digits, which read back exactly. */
		if (isnan(x)) {
			value = json_string("NaN");
		} else if (isinf(x)) {
			value = json_string(x > 0 ? "Infinity" : "-Infinity");
		} else {
			value = json_real(x);
		}
		break;
	}
	case PROTOBUF_C_TYPE_BOOL:
		value = json_boolean(*(const protobuf_c_boolean *) member);
		break;
	case PROTOBUF_C_TYPE_ENUM: {
		int32_t number = *(const int32_t *) member;
		const ProtobufCEnumValue *ev =
		        protobuf_c_enum_descriptor_get_value(field->descriptor, number);

		/* A value this program does not know travels as its number. */
		value = ev != NULL ? json_string(ev->name) : json_integer(number);
		break;
	}
	case PROTOBUF_C_TYPE_STRING: {
		const char *s = *(char *const *) member;

		if (s == NULL) {
			return -EINVAL;
		}
		if (!utf8_valid(s, strlen(s))) {
			return -EINVAL;
		}
		value = json_string_nocheck(s);
		break;
	}
	case PROTOBUF_C_TYPE_BYTES: {
		const ProtobufCBinaryData *bd = member;
		char *text;

		if (bd->len > 0 && bd->data == NULL) {
			return -EINVAL;
		}
		text = base64_encode(bd->data, bd->len);
		if (text == NULL) {
			return -ENOMEM;
		}
		value = json_string_nocheck(text);
		free(text);
		break;
	}
	case PROTOBUF_C_TYPE_MESSAGE: {
		const ProtobufCMessage *sub = *(ProtobufCMessage *const *) member;

		if (sub == NULL) {
			return -EINVAL;
		}
		return encode_message(sub, level, ret_value);
	}
	default:
		return -EINVAL;
	}
	if (value == NULL) {
		return -ENOMEM;
	}
	*ret_value = value;
	return 0;
}

/* Whether a singular field is written: see "Field presence" at the top. */
static bool
field_present(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *field)
{
	const char *member = (const char *) msg + field->offset;
	bool pointer =
	        field->type == PROTOBUF_C_TYPE_STRING || field->type == PROTOBUF_C_TYPE_MESSAGE;

	if (field->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
		uint32_t which =
		        *(const uint32_t *) ((const char *) msg + field->quantifier_offset);

		/* protobuf-c's pack skips a set member whose pointer is NULL; so do we. */
		return which == field->id && (!pointer || *(void *const *) member != NULL);
	}
	if (field->label == PROTOBUF_C_LABEL_REQUIRED) {
		return true;
	}
	if (field->label == PROTOBUF_C_LABEL_OPTIONAL) {
		if (pointer) {
			const void *ptr = *(void *const *) member;

			return ptr != NULL && ptr != field->default_value;
		}
		return *(const protobuf_c_boolean *) ((const char *) msg +
		                                      field->quantifier_offset);
	}
	switch (field->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
	case PROTOBUF_C_TYPE_ENUM:
		return *(const uint32_t *) member != 0;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
		return *(const uint64_t *) member != 0;
	case PROTOBUF_C_TYPE_FLOAT:
		return *(const float *) member != 0;
	case PROTOBUF_C_TYPE_DOUBLE:
		return *(const double *) member != 0;
	case PROTOBUF_C_TYPE_BOOL:
		return *(const protobuf_c_boolean *) member != 0;
	case PROTOBUF_C_TYPE_STRING: {
		const char *s = *(char *const *) member;

		return s != NULL && s[0] != '\0';
	}
	case PROTOBUF_C_TYPE_BYTES:
		return ((const ProtobufCBinaryData *) member)->len > 0;
	case PROTOBUF_C_TYPE_MESSAGE:
		return *(void *const *) member != NULL;
	}
	return false;
}

static int
encode_repeated(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *field, unsigned level,
                json_t **ret_value)
{
	size_t n = *(const size_t *) ((const char *) msg + field->quantifier_offset);
	const char *array = *(char *const *) ((const char *) msg + field->offset);
	size_t size = element_size(field->type);
	json_t *value;

	if (array == NULL || size == 0) {
		return -EINVAL;
	}
	if (level > COORD__PBJSON_DEPTH_MAX) {
		return -EINVAL;
	}
	value = json_array();
	if (value == NULL) {
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *element;
		int r = encode_value(field, array + i * size, level + 1, &element);

		if (r < 0) {
			json_decref(value);
			return r;
		}
		/* The _new setters take the reference even when they fail. */
		if (json_array_append_new(value, element) < 0) {
			json_decref(value);
			return -ENOMEM;
		}
	}
	*ret_value = value;
	return 0;
}

static int
encode_message(const ProtobufCMessage *msg, unsigned level, json_t **ret_value)
{
	const ProtobufCMessageDescriptor *desc = msg->descriptor;
	json_t *obj;
	int r = 0;

	if (desc == NULL || desc->magic != PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC) {
		return -EINVAL;
	}
	/* Also ends a cycle of sub-message pointers, which a caller's bug could create. */
	if (level > COORD__PBJSON_DEPTH_MAX) {
		return -EINVAL;
	}
	obj = json_object();
	if (obj == NULL) {
		return -ENOMEM;
	}
	for (unsigned i = 0; i < desc->n_fields; i++) {
		const ProtobufCFieldDescriptor *field = &desc->fields[i];
		json_t *value = NULL;
		char buf[PBJSON_NAME_BUF];
		char *key;

		if (field->label == PROTOBUF_C_LABEL_REPEATED) {
			if (*(const size_t *) ((const char *) msg + field->quantifier_offset) ==
			    0) {
				continue;
			}
			r = encode_repeated(msg, field, level + 1, &value);
		} else {
			if (!field_present(msg, field)) {
				continue;
			}
			r = encode_value(field, (const char *) msg + field->offset, level + 1,
			                 &value);
		}
		if (r < 0) {
			break;
		}
		key = camel_name(field->name, buf, sizeof(buf));
		if (key == NULL) {
			json_decref(value);
			r = -ENOMEM;
			break;
		}
		if (json_object_set_new_nocheck(obj, key, value) < 0) {
			r = -ENOMEM;
		}
		if (key != buf) {
			free(key);
		}
		if (r < 0) {
			break;
		}
	}
	if (r < 0) {
		json_decref(obj);
		return r;
	}
	*ret_value = obj;
	return 0;
}

int
coord__pbjson_encode(const ProtobufCMessage *msg, unsigned flags, char **ret_text)
{
	json_t *root;
	char *text;
	int r;

	if (msg == NULL || ret_text == NULL) {
		return -EINVAL;
	}
	r = encode_message(msg, 1, &root);
	if (r < 0) {
		return r;
	}
	text = json_dumps(root, flags & COORD__PBJSON_PRETTY ? JSON_INDENT(2) : JSON_COMPACT);
	json_decref(root);
	if (text == NULL) {
		return -ENOMEM;
	}
	*ret_text = text;
	return 0;
}

/* ---------------------------------------------------------------------------------------
 * Decoding
 */

/*
 * An integer field's value as sign and magnitude: a JSON integer, a JSON number with no
 * fraction (1.0, 1e3), or a string of decimal digits with an optional '-'.
 */
static int
parse_integer(struct decoder *d, const json_t *v, bool *ret_negative, uint64_t *ret_magnitude)
{
	bool negative;
	uint64_t magnitude = 0;

	if (json_is_integer(v)) {
		json_int_t i = json_integer_value(v);

		negative = i < 0;
		magnitude = negative ? (uint64_t) (-(i + 1)) + 1 : (uint64_t) i;
	} else if (json_is_real(v)) {
		double x = json_real_value(v);

		if (x != trunc(x)) {
			return fail(d, "not an integer: %.17g", x);
		}
		if (fabs(x) >= 18446744073709551616.0) {
			return fail(d, "integer out of range: %.17g", x);
		}
		negative = x < 0;
		magnitude = (uint64_t) fabs(x);
	} else if (json_is_string(v)) {
		const char *s = json_string_value(v);
		const char *p = s;

		negative = *p == '-';
		if (negative) {
			p++;
		}
		if (*p == '\0') {
			return fail(d, "not an integer: '%s'", s);
		}
		for (; *p != '\0'; p++) {
			if (*p < '0' || *p > '9') {
				return fail(d, "not an integer: '%s'", s);
			}
			if (magnitude > (UINT64_MAX - (uint64_t) (*p - '0')) / 10) {
				return fail(d, "integer out of range: '%s'", s);
			}
			magnitude = magnitude * 10 + (uint64_t) (*p - '0');
		}
	} else {
		return fail(d, "expected an integer");
	}
	*ret_negative = negative;
	*ret_magnitude = magnitude;
	return 0;
}

/* Reads an integer into the range of `type` and stores it at dst. */
static int
decode_integer(struct decoder *d, const json_t *v, ProtobufCType type, void *dst)
{
	bool negative = false;
	uint64_t magnitude = 0;
	int r = parse_integer(d, v, &negative, &magnitude);

	if (r < 0) {
		return r;
	}
	switch (type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
	case PROTOBUF_C_TYPE_ENUM:
		if (magnitude > (negative ? UINT64_C(0x80000000) : UINT64_C(0x7fffffff))) {
			break;
		}
		*(int32_t *) dst =
		        negative ? (int32_t) (-(int64_t) magnitude) : (int32_t) magnitude;
		return 0;
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
		if (magnitude > (negative ? 0 : UINT32_MAX)) {
			break;
		}
		*(uint32_t *) dst = (uint32_t) magnitude;
		return 0;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
		if (magnitude > (negative ? UINT64_C(0x8000000000000000) : (uint64_t) INT64_MAX)) {
			break;
		}
		/* Negate in unsigned arithmetic: -INT64_MIN does not exist as int64. */
		*(int64_t *) dst = negative ? (int64_t) (0 - magnitude) : (int64_t) magnitude;
		return 0;
	default: /* UINT64, FIXED64 */
		if (negative && magnitude != 0) {
			break;
		}
		*(uint64_t *) dst = magnitude;
		return 0;
	}
	return fail(d, "integer out of range");
}

/* A float or double: a JSON number, "NaN", "Infinity", "-Infinity", or a decimal string. */
static int
decode_floating(struct decoder *d, const json_t *v, ProtobufCType type, void *dst)
{
	double x;

	if (json_is_number(v)) {
		x = json_number_value(v);
	} else if (json_is_string(v)) {
		const char *s = json_string_value(v);
		char *end;

		if (strcmp(s, "NaN") == 0) {
			x = NAN;
		} else if (strcmp(s, "Infinity") == 0) {
			x = INFINITY;
		} else if (strcmp(s, "-Infinity") == 0) {
			x = -INFINITY;
		} else {
			/* strtod() also reads "inf", "nan" and hex; a JSON number has none. */
			if (s[0] == '\0' || s[strspn(s, "0123456789+-.eE")] != '\0') {
				return fail(d, "not a number: '%s'", s);
			}
			errno = 0;
			x = strtod(s, &end);
			if (*end != '\0') {
				return fail(d, "not a number: '%s'", s);
			}
			if (errno == ERANGE && isinf(x)) {
				return fail(d, "number out of range: '%s'", s);
			}
		}
	} else {
		return fail(d, "expected a number");
	}
	if (type == PROTOBUF_C_TYPE_FLOAT) {
		/* Finite values that round to FLT_MAX are fine (3.4028235e38, the shortest
		 * spelling of FLT_MAX, is above it); from the midpoint up they round to infinity.
		 */
		if (isfinite(x) && fabs(x) >= 0x1.ffffffp127) {
			return fail(d, "number out of range for float");
		}
		*(float *) dst = (float) x;
	} else {
		*(double *) dst = x;
	}
	return 0;
}

static int
decode_enum(struct decoder *d, const ProtobufCFieldDescriptor *field, const json_t *v, void *dst)
{
	if (json_is_string(v)) {
		const char *s = json_string_value(v);
		const ProtobufCEnumValue *ev =
		        protobuf_c_enum_descriptor_get_value_by_name(field->descriptor, s);

		if (ev != NULL) {
			*(int32_t *) dst = ev->value;
			return 0;
		}
		/* A number in a string, as protobuf's own parsers accept it. */
		if (s[0] != '-' && (s[0] < '0' || s[0] > '9')) {
			return fail(d, "unknown enum value '%s'", s);
		}
	} else if (!json_is_number(v)) {
		return fail(d, "expected an enum name or number");
	}
	/* Proto3 enums are open: numbers without a name are kept as they are. */
	return decode_integer(d, v, PROTOBUF_C_TYPE_ENUM, dst);
}

static int decode_message(struct decoder *d, const ProtobufCMessageDescriptor *desc,
                          const json_t *obj, ProtobufCMessage *msg);

/* One value (not null) for `field` into dst: the singular member or one array element. */
static int
decode_value(struct decoder *d, const ProtobufCFieldDescriptor *field, const json_t *v, void *dst)
{
	switch (field->type) {
	case PROTOBUF_C_TYPE_FLOAT:
	case PROTOBUF_C_TYPE_DOUBLE:
		return decode_floating(d, v, field->type, dst);
	case PROTOBUF_C_TYPE_BOOL:
		if (!json_is_boolean(v)) {
			return fail(d, "expected true or false");
		}
		*(protobuf_c_boolean *) dst = json_is_true(v);
		return 0;
	case PROTOBUF_C_TYPE_ENUM:
		return decode_enum(d, field, v, dst);
	case PROTOBUF_C_TYPE_STRING: {
		char *s;

		if (!json_is_string(v)) {
			return fail(d, "expected a string");
		}
		/* jansson holds only valid UTF-8 without NUL (no JSON_ALLOW_NUL). */
		s = strdup(json_string_value(v));
		if (s == NULL) {
			return -ENOMEM;
		}
		*(char **) dst = s;
		return 0;
	}
	case PROTOBUF_C_TYPE_BYTES: {
		ProtobufCBinaryData *bd = dst;
		int r;

		if (!json_is_string(v)) {
			return fail(d, "expected a base64 string");
		}
		r = base64_decode(json_string_value(v), json_string_length(v), &bd->data, &bd->len);
		if (r == -EINVAL) {
			return fail(d, "invalid base64");
		}
		return r;
	}
	case PROTOBUF_C_TYPE_MESSAGE: {
		const ProtobufCMessageDescriptor *desc = field->descriptor;
		ProtobufCMessage *sub;

		if (!json_is_object(v)) {
			return fail(d, "expected an object");
		}
		sub = malloc(desc->sizeof_message);
		if (sub == NULL) {
			return -ENOMEM;
		}
		protobuf_c_message_init(desc, sub);
		/* Linked in first, so the parent's free releases it if decoding fails. */
		*(ProtobufCMessage **) dst = sub;
		return decode_message(d, desc, v, sub);
	}
	default:
		return decode_integer(d, v, field->type, dst);
	}
}

static int
decode_repeated(struct decoder *d, const ProtobufCFieldDescriptor *field, const json_t *v,
                ProtobufCMessage *msg)
{
	size_t n, size = element_size(field->type);
	char *array;

	if (!json_is_array(v)) {
		return fail(d, "expected an array");
	}
	n = json_array_size(v);
	if (n == 0) {
		return 0;
	}
	array = calloc(n, size);
	if (array == NULL) {
		return -ENOMEM;
	}
	/* Zeroed elements are safe to free, so the count can cover them all at once. */
	*(char **) ((char *) msg + field->offset) = array;
	*(size_t *) ((char *) msg + field->quantifier_offset) = n;
	for (size_t i = 0; i < n; i++) {
		const json_t *element = json_array_get(v, i);
		size_t old = path_push(d, "[%zu]", i);
		int r;

		if (json_is_null(element)) {
			r = fail(d, "null is not allowed in an array");
		} else {
			r = decode_value(d, field, element, array + i * size);
		}
		if (r < 0) {
			return r;
		}
		path_pop(d, old);
	}
	return 0;
}

static int
decode_field(struct decoder *d, const ProtobufCMessageDescriptor *desc,
             const ProtobufCFieldDescriptor *field, const json_t *v, ProtobufCMessage *msg)
{
	void *member = (char *) msg + field->offset;
	int r;

	/* null stands for the default: the field stays as message_init left it. */
	if (json_is_null(v)) {
		return 0;
	}
	if (field->label == PROTOBUF_C_LABEL_REPEATED) {
		return decode_repeated(d, field, v, msg);
	}
	if (field->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
		uint32_t *which = (uint32_t *) ((char *) msg + field->quantifier_offset);

		if (*which != 0 && *which != field->id) {
			const ProtobufCFieldDescriptor *other =
			        protobuf_c_message_descriptor_get_field(desc, *which);

			return fail(d, "oneof member '%s' is already set",
			            other != NULL ? other->name : "?");
		}
		/* The union is still zeroed here: freeing it as this member is safe. */
		*which = field->id;
		return decode_value(d, field, v, member);
	}
	r = decode_value(d, field, v, member);
	if (r == 0 && field->label == PROTOBUF_C_LABEL_OPTIONAL &&
	    field->type != PROTOBUF_C_TYPE_STRING && field->type != PROTOBUF_C_TYPE_MESSAGE) {
		*(protobuf_c_boolean *) ((char *) msg + field->quantifier_offset) = 1;
	}
	return r;
}

static int
decode_message(struct decoder *d, const ProtobufCMessageDescriptor *desc, const json_t *obj,
               ProtobufCMessage *msg)
{
	json_t *object = (json_t *) obj; /* jansson's iterators take no const */

	/* Every key must name a field, and no field may appear under both its names. */
	for (void *it = json_object_iter(object); it != NULL;
	     it = json_object_iter_next(object, it)) {
		const char *key = json_object_iter_key(it);
		const ProtobufCFieldDescriptor *field = find_field(desc, key);
		size_t old = path_push(d, d->path_len > 0 ? ".%s" : "%s", key);

		if (field == NULL) {
			return fail(d, "unknown field");
		}
		if (strcmp(key, field->name) != 0 && json_object_get(obj, field->name) != NULL) {
			return fail(d, "duplicate field (also given as '%s')", field->name);
		}
		path_pop(d, old);
	}
	for (void *it = json_object_iter(object); it != NULL;
	     it = json_object_iter_next(object, it)) {
		const char *key = json_object_iter_key(it);
		size_t old = path_push(d, d->path_len > 0 ? ".%s" : "%s", key);
		int r = decode_field(d, desc, find_field(desc, key), json_object_iter_value(it),
		                     msg);

		if (r < 0) {
			return r;
		}
		path_pop(d, old);
	}
	return 0;
}

/*
 * Whether the containers in `text` nest at most `max` levels deep, counting brackets
 * outside strings. For text jansson would accept this is its own nesting depth; for other
 * text jansson stops at the first error, no deeper than the brackets counted here.
 */
static bool
nesting_within(const char *text, size_t len, unsigned max)
{
	unsigned depth = 0;
	bool in_string = false;

	for (size_t i = 0; i < len; i++) {
		char c = text[i];

		if (in_string) {
			if (c == '\\') {
				i++;
			} else if (c == '"') {
				in_string = false;
			}
		} else if (c == '"') {
			in_string = true;
		} else if (c == '{' || c == '[') {
			if (++depth > max) {
				return false;
			}
		} else if ((c == '}' || c == ']') && depth > 0) {
			depth--;
		}
	}
	return true;
}

int
coord__pbjson_decode(const ProtobufCMessageDescriptor *desc, const char *text, size_t len,
                     ProtobufCMessage **ret_msg, char *err, size_t err_size)
{
	struct decoder d = {.err = err, .err_size = err_size};
	ProtobufCMessage *msg;
	json_error_t jerr;
	json_t *root;
	int r;

	if (err != NULL && err_size > 0) {
		err[0] = '\0';
	}
	if (desc == NULL || desc->magic != PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC ||
	    ret_msg == NULL || (text == NULL && len > 0)) {
		return fail(&d, "invalid arguments");
	}
	if (!nesting_within(text, len, COORD__PBJSON_DEPTH_MAX)) {
		return fail(&d, "nesting deeper than %d levels", COORD__PBJSON_DEPTH_MAX);
	}
	root = json_loadb(text != NULL ? text : "", len, JSON_REJECT_DUPLICATES, &jerr);
	if (root == NULL) {
		if (json_error_code(&jerr) == json_error_out_of_memory) {
			return -ENOMEM;
		}
		return fail(&d, "invalid JSON at line %d column %d: %s", jerr.line, jerr.column,
		            jerr.text);
	}
	if (!json_is_object(root)) {
		json_decref(root);
		return fail(&d, "expected an object");
	}
	msg = malloc(desc->sizeof_message);
	if (msg == NULL) {
		json_decref(root);
		return -ENOMEM;
	}
	protobuf_c_message_init(desc, msg);
	r = decode_message(&d, desc, root, msg);
	json_decref(root);
	if (r < 0) {
		protobuf_c_message_free_unpacked(msg, NULL);
		return r;
	}
	*ret_msg = msg;
	return 0;
}

/*
 * pbjson: the canonical proto3 JSON mapping for protobuf-c messages, generic over the
 * protobuf-c descriptors, using jansson for the JSON text.
 *
 * Mapping (https://protobuf.dev/programming-guides/proto3/#json): field names in
 * lowerCamelCase (protobuf-c 1.4 descriptors carry no json_name, so the name is derived);
 * int64/uint64 as decimal strings, 32-bit integers as numbers; enums by name; bytes as
 * standard base64 with padding; repeated fields as arrays; oneof members by their field
 * name; fields with default values omitted when encoding. Decoding accepts both the
 * lowerCamelCase and the original field names, integers as numbers or strings, enums as
 * names or numbers, and rejects unknown fields, wrong types, out-of-range numbers, bad
 * base64 and invalid UTF-8 with an error message naming the field path.
 *
 * Internal to libcoord (names coord__*). Thread-safe; non-logging.
 */
#pragma once

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

/* Encoding flags. */
#define COORD__PBJSON_PRETTY 0x1 /* indent with two spaces instead of one compact line */

/* JSON objects and arrays nest at most this deep (the top-level object is level 1), in
 * both directions; deeper input is rejected before it is parsed. */
#define COORD__PBJSON_DEPTH_MAX 32

/*
 * Encode `msg` as JSON text. On success returns 0 and *ret_text, a NUL-terminated heap
 * string owned by the caller (free()). Returns -ENOMEM or -EINVAL (a message that cannot
 * be represented, e.g. a string that is not valid UTF-8, a NULL array or element under a
 * nonzero count, or nesting deeper than COORD__PBJSON_DEPTH_MAX).
 */
int coord__pbjson_encode(const ProtobufCMessage *msg, unsigned flags, char **ret_text);

/*
 * Decode `len` bytes of JSON text into a new message of type `desc`. On success returns 0
 * and *ret_msg, owned by the caller, to be freed with protobuf_c_message_free_unpacked(msg,
 * NULL). On failure returns -EINVAL (and writes a one-line reason, such as
 * "event.country: expected a string", to `err` of `err_size` bytes, when not NULL) or
 * -ENOMEM; *ret_msg is not touched.
 *
 * null for a field means its default (and does not count as a set oneof member); a field
 * given under both of its names, or two members of one oneof, is an error. Integers above
 * INT64_MAX must be given as strings (jansson cannot hold them as numbers).
 */
int coord__pbjson_decode(const ProtobufCMessageDescriptor *desc, const char *text, size_t len,
                         ProtobufCMessage **ret_msg, char *err, size_t err_size);

/*
 * libFuzzer target for clients/libcoord/pbjson.c: arbitrary bytes are decoded as JSON into
 * an Envelope, a QueryRequest and a QueryResponse (the deepest message). jansson is the
 * system library and not instrumented; coverage comes from the mapping itself.
 *
 * Besides the sanitizers, it checks the module's promises and traps when one breaks:
 * - decoding fails only with -EINVAL, leaving a non-empty, one-line, valid UTF-8 reason
 *   (no -ENOMEM here: inputs are small);
 * - whatever decodes encodes again, in both styles, and that text decodes to a message
 *   that packs to the same bytes and encodes to the same text (a fixed point after one
 *   round).
 *
 * Build (clang only): CC=clang meson setup build-fuzz -Dfuzzing=true
 *   -Db_sanitize=address,undefined -Db_lundef=false && meson compile -C build-fuzz
 * Run: build-fuzz/tests/fuzz/fuzz_pbjson -max_len=4096 tests/fuzz/corpus/pbjson
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "coord.pb-c.h"
#include "pbjson.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const ProtobufCMessageDescriptor *const targets[] = {
        &coord__v1__envelope__descriptor,
        &coord__v1__query_request__descriptor,
        &coord__v1__query_response__descriptor,
};

/* Valid UTF-8 without control characters: what an error reason must be. */
static bool
reason_ok(const char *s)
{
	const unsigned char *p = (const unsigned char *) s;

	if (*p == '\0') {
		return false;
	}
	while (*p != '\0') {
		size_t n;

		if (*p < 0x20 || *p == 0x7f) {
			return false;
		} else if (*p < 0x80) {
			n = 1;
		} else if ((*p & 0xe0) == 0xc0 && *p >= 0xc2) {
			n = 2;
		} else if ((*p & 0xf0) == 0xe0) {
			n = 3;
		} else if ((*p & 0xf8) == 0xf0 && *p <= 0xf4) {
			n = 4;
		} else {
			return false;
		}
		for (size_t k = 1; k < n; k++) {
			if ((p[k] & 0xc0) != 0x80) {
				return false;
			}
		}
		p += n;
	}
	return true;
}

static uint8_t *
pack(const ProtobufCMessage *msg, size_t *ret_len)
{
	size_t len = protobuf_c_message_get_packed_size(msg);
	uint8_t *buf = malloc(len + 1);

	if (buf == NULL) {
		__builtin_trap();
	}
	if (protobuf_c_message_pack(msg, buf) != len) {
		__builtin_trap();
	}
	*ret_len = len;
	return buf;
}

/* Decodes `text` again and checks it gives `want` (packed) and re-encodes to `text`. */
static void
check_fixed_point(const ProtobufCMessageDescriptor *desc, const char *text, unsigned flags,
                  const uint8_t *want, size_t want_len)
{
	ProtobufCMessage *again = NULL;
	char err[256];
	char *text2 = NULL;
	uint8_t *bytes;
	size_t len;

	if (coord__pbjson_decode(desc, text, strlen(text), &again, err, sizeof(err)) != 0) {
		__builtin_trap();
	}
	bytes = pack(again, &len);
	if (len != want_len || memcmp(bytes, want, len) != 0) {
		__builtin_trap();
	}
	if (coord__pbjson_encode(again, flags, &text2) != 0 || strcmp(text, text2) != 0) {
		__builtin_trap();
	}
	free(text2);
	free(bytes);
	protobuf_c_message_free_unpacked(again, NULL);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	for (size_t i = 0; i < sizeof(targets) / sizeof(targets[0]); i++) {
		const ProtobufCMessageDescriptor *desc = targets[i];
		ProtobufCMessage *msg = NULL;
		char err[256];
		char *compact = NULL, *pretty = NULL;
		uint8_t *bytes;
		size_t len;
		int r;

		r = coord__pbjson_decode(desc, (const char *) data, size, &msg, err, sizeof(err));
		if (r == -EINVAL) {
			if (msg != NULL || !reason_ok(err)) {
				__builtin_trap();
			}
			continue;
		}
		if (r != 0 || msg == NULL) {
			__builtin_trap();
		}
		if (coord__pbjson_encode(msg, 0, &compact) != 0 ||
		    coord__pbjson_encode(msg, COORD__PBJSON_PRETTY, &pretty) != 0) {
			__builtin_trap();
		}
		bytes = pack(msg, &len);
		check_fixed_point(desc, compact, 0, bytes, len);
		check_fixed_point(desc, pretty, COORD__PBJSON_PRETTY, bytes, len);
		free(bytes);
		free(pretty);
		free(compact);
		protobuf_c_message_free_unpacked(msg, NULL);
	}
	return 0;
}

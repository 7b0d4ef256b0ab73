/*
 * libFuzzer target for wire: unpack, validate, echo and ack, as ingest does with every
 * frame. protobuf-c itself is not instrumented (it is the system library), so coverage
 * comes from wire.c and iso.c: the frame walk after unpacking, the field rules and the
 * verdict messages.
 *
 * Besides the sanitizers, it checks the module's promises and traps when one breaks:
 * verdict messages are NUL-terminated valid UTF-8, a rejection has a reason, every Ack we
 * build fits WIRE_ACK_MAX, and wire_utf8_valid() agrees with a plain reference decoder.
 *
 * Build (clang only): clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE
 *   -Idaemon -I<dir of coord.pb-c.h> tests/fuzz/fuzz_envelope.c daemon/wire.c daemon/iso.c
 *   coord.pb-c.c $(pkg-config --cflags --libs libprotobuf-c)
 * Run: ./fuzz_envelope -max_len=4096 tests/fuzz/corpus/envelope
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "wire.h"

/* A fixed clock, so a finding replays: 2024-06-01T00:00:00Z. */
#define FUZZ_NOW_MS INT64_C(1717200000000)

/* The broker's frame limit is configurable; this is small enough to keep runs fast. */
#define FUZZ_FRAME_MAX 65536

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Code-point-by-code-point reference for wire_utf8_valid(): decode, then check the value
 * against the shortest form, the surrogates and U+10FFFF. */
static bool
reference_utf8_valid(const uint8_t *s, size_t len)
{
	size_t i = 0;

	while (i < len) {
		uint32_t cp;
		size_t n;

		if (s[i] < 0x80) {
			i++;
			continue;
		} else if ((s[i] & 0xe0) == 0xc0) {
			n = 2;
			cp = s[i] & 0x1f;
		} else if ((s[i] & 0xf0) == 0xe0) {
			n = 3;
			cp = s[i] & 0x0f;
		} else if ((s[i] & 0xf8) == 0xf0) {
			n = 4;
			cp = s[i] & 0x07;
		} else {
			return false;
		}
		if (len - i < n) {
			return false;
		}
		for (size_t k = 1; k < n; k++) {
			if ((s[i + k] & 0xc0) != 0x80) {
				return false;
			}
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		static const uint32_t shortest[5] = {0, 0, 0x80, 0x800, 0x10000};
		if (cp < shortest[n] || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) {
			return false;
		}
		i += n;
	}
	return true;
}

static void
check_verdict(const struct wire_verdict *verdict)
{
	size_t len = strnlen(verdict->message, sizeof(verdict->message));

	if (len == sizeof(verdict->message) || !wire_utf8_valid(verdict->message, len) ||
	    verdict->reason == COORD__V1__REASON__REASON_NONE) {
		__builtin_trap();
	}
}

/* Build and pack the Ack ingest would send; it must always fit. */
static void
pack_ack(const char *msg_id, uint32_t revision, const struct wire_verdict *verdict)
{
	Coord__V1__Ack ack = COORD__V1__ACK__INIT;
	uint8_t buf[WIRE_ACK_MAX];

	if (msg_id != NULL && wire_echoable(msg_id)) {
		ack.msg_id = (char *) msg_id;
	}
	ack.revision = revision;
	ack.status = verdict->reason == COORD__V1__REASON__REASON_NONE
	                     ? COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED
	                     : COORD__V1__ACK_STATUS__ACK_STATUS_REJECTED;
	ack.reason = verdict->reason;
	ack.message = (char *) verdict->message;
	if (wire_pack_ack(&ack, buf, sizeof(buf)) < 0) {
		__builtin_trap();
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Coord__V1__Envelope *env = NULL;
	struct wire_verdict verdict;
	int r;

	if (wire_utf8_valid((const char *) data, size) != reference_utf8_valid(data, size)) {
		__builtin_trap();
	}

	r = wire_unpack_envelope(data, size, FUZZ_FRAME_MAX, &env, &verdict);
	if (r < 0) {
		/* Only a bad string outside msg_id hands the envelope out, for the echo. */
		if (env != NULL) {
			if (r != -EBADMSG ||
			    verdict.reason != COORD__V1__REASON__REASON_INVALID_UTF8) {
				__builtin_trap();
			}
			check_verdict(&verdict);
			pack_ack(wire_echoable(env->msg_id) ? env->msg_id : NULL, env->revision,
			         &verdict);
			coord__v1__envelope__free_unpacked(env, NULL);
			return 0;
		}
		if (r == -EBADMSG) {
			check_verdict(&verdict);
			pack_ack(NULL, 0, &verdict);
		}
		return 0;
	}

	r = wire_validate_envelope(env, FUZZ_NOW_MS, &verdict);
	if (r < 0) {
		check_verdict(&verdict);
	} else if (verdict.reason != COORD__V1__REASON__REASON_NONE) {
		__builtin_trap();
	}
	pack_ack(env->msg_id, env->revision, &verdict);

	coord__v1__envelope__free_unpacked(env, NULL);
	return 0;
}

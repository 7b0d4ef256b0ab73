/*
 * wire: the edge between bytes from the network and the daemon's typed records. Unpacks
 * protobuf-c messages with a size bound first, validates an Envelope against the rules in
 * docs/PROTOCOL.md, and packs Acks.
 *
 * Everything here is a pure function of its inputs (the caller supplies the clock), so the
 * fuzz target in tests/fuzz/ can drive it. Thread-safe; non-logging.
 *
 * The council check (is the named council registered, is it the one its key proves) is not
 * here: it lives in one place in ingest.c.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coord.pb-c.h"
#include "idrule.h"

/* Per-field limits, in bytes of UTF-8 unless said otherwise. */
#define WIRE_COUNCIL_MAX IDRULE_ID_MAX    /* council id: [a-z0-9][a-z0-9_-]* (idrule.h) */
#define WIRE_MSG_ID_MAX IDRULE_MSG_ID_MAX /* msg_id: printable ASCII, no space (idrule.h) */
#define WIRE_NAME_MAX 256        /* city, organiser, recipient, outlet, target, organisation */
#define WIRE_TEXT_MAX 1024       /* title, subject, retraction reason, url */
#define WIRE_LANGUAGE_TAG_MAX 35 /* one BCP 47 tag */
#define WIRE_LANGUAGES_MAX 16    /* entries in a repeated languages field */

/* Accepted time range for created_at and record dates (Unix ms). */
#define WIRE_TIME_MIN_MS INT64_C(946684800000)      /* 2000-01-01T00:00:00Z */
#define WIRE_CREATED_AHEAD_MAX_MS INT64_C(86400000) /* created_at: now + 1 day */
#define WIRE_DATE_AHEAD_MAX_MS INT64_C(31622400000) /* record dates: now + 366 days */

/* Why an Envelope was refused: a protocol reason and a human sentence. */
struct wire_verdict {
	Coord__V1__Reason reason; /* COORD__V1__REASON__REASON_NONE when valid */
	char message[160];        /* e.g. "event.country 'XX' is not an ISO 3166-1 alpha-2 code" */
};

/*
 * Unpack an Envelope from `len` bytes at `buf`. Frames larger than `max_bytes` are refused
 * before protobuf-c sees them (REASON_TOO_LARGE), empty or undecodable frames get
 * REASON_MALFORMED.
 *
 * protobuf-c keeps a string only up to a NUL byte and does not check UTF-8, so the frame is
 * walked once more: any string field holding a NUL byte or invalid UTF-8 is refused with
 * REASON_INVALID_UTF8.
 *
 * On success returns 0 and *ret_env, owned by the caller, to be freed with
 * coord__v1__envelope__free_unpacked(env, NULL). `buf` is not referenced afterwards. On
 * failure returns -EBADMSG (verdict filled) or -ENOMEM. On -EBADMSG for a bad string in a
 * field other than msg_id, *ret_env is still set to the decoded Envelope (owned by the
 * caller, to be freed), so that its msg_id and revision can be echoed in the Ack; on every
 * other failure *ret_env is not touched.
 */
int wire_unpack_envelope(const void *buf, size_t len, size_t max_bytes,
                         Coord__V1__Envelope **ret_env, struct wire_verdict *verdict);

/*
 * wire_unpack_envelope() with the Envelope's memory from `alloc` (NULL: malloc()): free it
 * with coord__v1__envelope__free_unpacked(env, alloc), or, for an arena whose free does
 * nothing, by emptying the arena. A failed allocation is -ENOMEM. Ingest unpacks into an
 * arena per batch, so a message costs no malloc() and the writer's hooks read the
 * decoded Envelope instead of unpacking it again.
 */
int wire_unpack_envelope_with(const ProtobufCAllocator *alloc, const void *buf, size_t len,
                              size_t max_bytes, Coord__V1__Envelope **ret_env,
                              struct wire_verdict *verdict);

/*
 * Check every field of an unpacked Envelope: required fields, id syntax, revision >= 1,
 * UTF-8 without control characters, field limits, known enum values, ISO countries, BCP 47
 * languages, timestamps within [WIRE_TIME_MIN_MS, now_ms + the allowances above].
 *
 * Returns 0 when valid, -EINVAL otherwise with `verdict` filled with the first problem
 * found. Does not look at whether the council is registered.
 */
int wire_validate_envelope(const Coord__V1__Envelope *env, int64_t now_ms,
                           struct wire_verdict *verdict);

/*
 * True when `s` may be echoed back in an Ack string field: valid UTF-8 and at most
 * WIRE_MSG_ID_MAX bytes. (A peer's invalid bytes must not make our Ack undecodable.)
 */
bool wire_echoable(const char *s);

/*
 * True when the `len` bytes at `s` are valid UTF-8 (no overlongs, no surrogates, nothing
 * above U+10FFFF).
 */
bool wire_utf8_valid(const char *s, size_t len);

/*
 * Pack `ack` into `buf` of `cap` bytes. Returns the packed length, or -ENOBUFS when it
 * does not fit (nothing useful written).
 */
int wire_pack_ack(const Coord__V1__Ack *ack, uint8_t *buf, size_t cap);

/* Upper bound of a packed Ack whose strings respect the limits above. */
#define WIRE_ACK_MAX 512

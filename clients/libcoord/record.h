/*
 * record: records from text fields to checked, serialized Envelopes (coord_envelope_build()
 * and coord_envelope_check() in coord.h), and the pieces coord-push shares with them: the
 * category names, ISO 8601 parsing, the content-derived msg_id, and completing an Envelope
 * decoded from JSON.
 *
 * Internal to libcoord (names coord__*). Pure functions; thread-safe; non-logging.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coord.h"
#include "coord.pb-c.h"

/* The prefix of content-derived msg_ids, and their length ("h-" + 32 hex digits). */
#define COORD__DERIVED_ID_PREFIX "h-"
#define COORD__DERIVED_ID_LEN 34

/*
 * The body case of a category name ("event", "letter", "statement", "petition", "media",
 * "retraction"; case-insensitive; "retract" and "outreach_letter"/"media_report" too), or
 * COORD__V1__ENVELOPE__BODY__NOT_SET when unknown.
 */
Coord__V1__Envelope__BodyCase coord__category_parse(const char *name);

/* The canonical name of a body case ("event", ...), or NULL for NOT_SET/unknown. */
const char *coord__category_name(Coord__V1__Envelope__BodyCase body);

/* The protobuf-c descriptor of a body case's message, or NULL. */
const ProtobufCMessageDescriptor *coord__category_descriptor(Coord__V1__Envelope__BodyCase body);

/*
 * Whether `name` (spelled as coord_envelope_build() accepts) is a field of that body or
 * an Envelope field (msg_id, revision, created_at, council, category). For a CSV header.
 */
bool coord__field_known(Coord__V1__Envelope__BodyCase body, const char *name);

/*
 * Parse an ISO 8601 date or date-time, or decimal Unix milliseconds (see coord.h), into
 * Unix ms. Returns 0 or -EINVAL (*ret untouched).
 */
int coord__parse_time(const char *text, int64_t *ret_ms);

/* The current time, Unix ms. */
int64_t coord__now_ms(void);

/*
 * The content-derived msg_id of `env` (COORD__DERIVED_ID_LEN characters and a NUL, into
 * ret_id): "h-" + the first 16 bytes of SHA-256 over "coord-msg-id-v1", NUL, council, NUL,
 * category name, NUL, and the body serialized by protobuf-c. Returns 0, -EINVAL (no body)
 * or -ENOMEM.
 */
int coord__derive_msg_id(const Coord__V1__Envelope *env, char ret_id[COORD_MSG_ID_MAX + 1]);

/*
 * Complete and check an Envelope (owned by the caller, built the way protobuf-c's unpack
 * builds one: strings malloc()ed or the default): an empty council becomes `council` (a
 * different one is an error), revision 0 becomes 1 (2 for a retraction), created_at 0
 * becomes now_ms, an empty msg_id the derived one (a retraction must name its record).
 * Then validate it with the broker's rules at now_ms and serialize it into *ret.
 *
 * Returns 0, -EINVAL with err filled (err->field is the proto path, e.g. "event.country"),
 * or -ENOMEM.
 */
int coord__envelope_complete(Coord__V1__Envelope *env, const char *council, int64_t now_ms,
                             struct coord_envelope *ret, struct coord_error *err);

/* printf into err->message and copy field (NULL: "") into err->field. err may be NULL.
 * Returns -EINVAL. */
int coord__error_set(struct coord_error *err, const char *field, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

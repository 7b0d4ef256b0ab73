/*
 * render: a Digest as plain sentences, numbers and times as people read them, and records
 * as JSON for the headquarters tools (coordctl, coord-watch).
 *
 * Sentences follow the campaign's own report, one per line:
 *
 *   5,123 records from 11 coordinating councils in 70 countries
 *   228 rallies in 38 countries with 51,300 participants
 *   4,700 letters by 11 coordinating councils
 *     1,200 letters to heads of state
 *   330 statements in 23 languages, from 51 countries
 *   12 petitions to national parliaments in 9 countries with 120,000 signatures
 *   1,941 news articles in 47 languages in 70 countries
 *   336 broadcast reports carried by 7,418 local sources
 *
 * Numbers have thousands separators; every noun agrees with its number ("1 rally in 1
 * country"); a category or kind without records is left out; distinct counts that span
 * several lines (the councils of all letters, the countries of the whole digest) come from
 * the digest's total and category lines, whose distinct counts the broker takes as unions
 * of the lines' codes, so they stay exact; a line's own distinct counts are its
 * distinct_* fields (published digests carry no CodeCount lists) or the lengths of its
 * lists. A digest from a broker without total lines falls back to unions of the lists.
 * The wording of each line is in render.c (`event_kinds`, `recipients`, `targets`) and in
 * docs/PROTOCOL.md.
 *
 * Every function is pure (no I/O, no global state) and thread-safe. Results are heap
 * strings owned by the caller (free()) or written to the caller's buffer.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "coord.pb-c.h"

/* Bytes a rendered number or time needs, with the NUL. */
#define RENDER_NUMBER_MAX 32
#define RENDER_TIME_MAX 32

/* render_digest() flags. */
#define RENDER_HEADER 0x1    /* begin with the scope, window and seq line */
#define RENDER_HEADLINES 0x2 /* end with the headlines, newest first */
#define RENDER_INDENT 0x4    /* indent every sentence by two spaces */

/*
 * Write `n` in decimal with a comma every three digits ("4,700") into `buf` of `size` bytes
 * (RENDER_NUMBER_MAX is always enough). Returns `buf`.
 */
const char *render_number(uint64_t n, char *buf, size_t size);

/*
 * Write the Unix millisecond time `ms` as ISO 8601 UTC, "2024-05-01T12:30:00Z" (with
 * ".123" when the milliseconds are not zero), into `buf` of `size` bytes (RENDER_TIME_MAX
 * is enough). Returns `buf`.
 */
const char *render_time(int64_t ms, char *buf, size_t size);

/*
 * Parse an ISO 8601 time into Unix milliseconds: "2024-05-01" (00:00 UTC of that day),
 * "2024-05-01T12:30", "2024-05-01T12:30:15", optionally with ".sss" fractions, and "Z" or a
 * "+HH:MM"/"-HH:MM" offset (none means UTC); "T" may be a space. Returns 0 and *ret_ms, or
 * -EINVAL (out-of-range fields included) leaving *ret_ms untouched.
 */
int render_parse_time(const char *s, int64_t *ret_ms);

/*
 * The sentences of `d` (see the top of this file), each ending in '\n'; "No records." for an
 * empty digest. `flags`: RENDER_HEADER, RENDER_HEADLINES, RENDER_INDENT. On success returns
 * 0 and *ret_text (heap, caller frees); -ENOMEM otherwise.
 */
int render_digest(const Coord__V1__Digest *d, unsigned flags, char **ret_text);

/*
 * One line (without '\n') naming the digest's scope, window and seq, e.g.
 * "All councils and countries, whole campaign; up to seq 4,120; generated
 * 2024-05-01T12:00:00Z". Returns 0 and *ret_text (heap), or -ENOMEM.
 */
int render_digest_header(const Coord__V1__Digest *d, char **ret_text);

/*
 * An Item as one line of canonical proto3 JSON with its envelope decoded: the Item's fields
 * ("seq", "receivedAt", "council") and "envelope" holding the Envelope's JSON object instead
 * of base64 (when the bytes do not decode as an Envelope, they stay base64). Returns 0 and
 * *ret_text (heap), -ENOMEM, or -EINVAL when the item cannot be represented.
 */
int render_item_json(const Coord__V1__Item *item, char **ret_text);

/*
 * Like render_item_json() for a RecordStatus: its "item" holds the decoded envelope.
 */
int render_status_json(const Coord__V1__RecordStatus *status, char **ret_text);

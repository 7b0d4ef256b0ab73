/*
 * outbox: libcoord's durable local queue of records, an LMDB environment in a directory of
 * the client's own.
 *
 * Tables (LMDB named databases):
 *
 *     pending   outbox seq (u64 big-endian, ascending in queue order)
 *                 -> format byte, msg_id length, revision, queued_at, msg_id, Envelope bytes
 *     keys      msg_id '\0' revision (u32 BE)  -> outbox seq: which keys are waiting
 *     rejected  msg_id '\0' revision (u32 BE)
 *                 -> format byte, queued_at, rejected_at, reason, message, Envelope bytes
 *     meta      "schema" -> u32 BE (1); "council" -> the council id;
 *               "next_seq" -> u64 BE, the seq the next queued record gets
 *
 * A record is waiting while its key is in `keys` (and its bytes in `pending`); it leaves on
 * a final answer: ACCEPTED and DUPLICATE delete it, REJECTED moves it to `rejected`.
 * Outbox seqs only grow (next_seq is persisted), so a sender scanning forward from the last
 * seq it took sees every record queued after that.
 *
 * Every write is one LMDB write transaction committed with fsync before the function
 * returns. LMDB serialises write transactions across threads and processes, and the
 * environment is opened with MDB_NOTLS, so any thread may call any function here
 * (transactions never outlive a call). Borrowed data passed to callbacks lives only during
 * the callback (the read transaction ends when the function returns).
 *
 * Errors: LMDB codes become negative errno once, here: MDB_MAP_FULL -> -ENOSPC,
 * MDB_NOTFOUND -> -ENOENT, MDB_VERSION_MISMATCH and MDB_INVALID -> -EPROTO, errno values
 * (from open and the like) pass through, the rest -> -EIO. Non-logging.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coord.h"

/* The outbox's on-disk format version (meta "schema"). */
#define COORD__OUTBOX_SCHEMA 1

struct coord__outbox;

/*
 * Open the outbox in directory `path` (created, with its parents, mode 0700, when missing)
 * for `council`. With `lock`, take an exclusive flock() on `path`/lock first (-EBUSY when
 * someone holds it); the lock lasts until coord__outbox_free().
 *
 * A new outbox records `council`; an existing one must have been created for the same
 * council (-EXDEV otherwise) and with COORD__OUTBOX_SCHEMA (-EPROTO). `map_size` is the
 * LMDB map size in bytes (an existing larger environment keeps its size).
 *
 * On success returns 0 and *ret_outbox, owned by the caller. Errors: -EINVAL, -EBUSY,
 * -EXDEV, -EPROTO, -ENOMEM, -EIO or a file error.
 */
int coord__outbox_open(const char *path, const char *council, uint64_t map_size, bool lock,
                       struct coord__outbox **ret_outbox);

/* Close the environment and release the lock. Accepts NULL; returns NULL. */
struct coord__outbox *coord__outbox_free(struct coord__outbox *outbox);

/* One record to queue: borrowed for the call. msg_id is NUL-terminated. */
struct coord__outbox_item {
	const char *msg_id;
	uint32_t revision;
	const uint8_t *bytes;
	size_t len;
};

/*
 * Queue `n` records in one transaction, at time `now_ms`. A record whose key is already
 * waiting is skipped (also a second copy within `items`); a record whose key is in
 * `rejected` leaves that table and is queued again. `added`, if not NULL, receives n
 * flags: 1 for each record queued now, 0 for each skipped.
 *
 * Returns the number queued now, or a negative errno (-EINVAL for an empty or over-long
 * msg_id, revision 0, or an empty or over-long record; -ENOSPC; -EIO); on error nothing
 * is written to the outbox and the `added` flags are meaningless.
 */
int coord__outbox_put(struct coord__outbox *outbox, const struct coord__outbox_item *items,
                      size_t n, int64_t now_ms, uint8_t *added);

/* A waiting record as coord__outbox_scan() shows it; pointers are borrowed. */
struct coord__outbox_record {
	uint64_t seq;
	const char *msg_id; /* NUL-terminated copy inside the record: valid during the callback */
	uint32_t revision;
	int64_t queued_at;
	const uint8_t *bytes;
	size_t len;
};

/* Return 0 to go on, a positive value to stop (returned by the scan), or a negative errno
 * to fail the scan. */
typedef int coord__outbox_scan_fn(void *userdata, const struct coord__outbox_record *rec);

/*
 * Visit the waiting records with seq > after_seq in seq order, in one read transaction.
 * Returns 0 after the last one, fn's non-zero value when it stopped, or a negative errno.
 */
int coord__outbox_scan(struct coord__outbox *outbox, uint64_t after_seq, coord__outbox_scan_fn *fn,
                       void *userdata);

/* A final answer for coord__outbox_settle(). */
struct coord__outbox_outcome {
	const char *msg_id; /* borrowed */
	uint32_t revision;
	bool rejected;       /* REJECTED: move to `rejected`; else (ACCEPTED, DUPLICATE) delete */
	int reason;          /* REJECTED: coord.v1.Reason */
	const char *message; /* REJECTED: the broker's sentence (NULL: "") */
	bool found;          /* out: the key was waiting and has now left */
};

/*
 * Apply `n` final answers in one transaction, at time `now_ms`. Sets each outcome's
 * `found`. Returns how many were found, or a negative errno (nothing applied; `found`
 * flags are then meaningless).
 */
int coord__outbox_settle(struct coord__outbox *outbox, struct coord__outbox_outcome *outcomes,
                         size_t n, int64_t now_ms);

/* Remove the rejected entry (msg_id, revision). Returns 0, -ENOENT or an error. */
int coord__outbox_forget(struct coord__outbox *outbox, const char *msg_id, uint32_t revision);

/* How many records are waiting and rejected. Returns 0 or a negative errno. */
int coord__outbox_count(struct coord__outbox *outbox, uint64_t *ret_waiting,
                        uint64_t *ret_rejected);

/* coord_outbox_list() over the outbox itself (see coord.h). */
int coord__outbox_list(struct coord__outbox *outbox, unsigned which, coord_outbox_fn *fn,
                       void *userdata);

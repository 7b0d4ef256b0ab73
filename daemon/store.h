/*
 * store: the LMDB environment in the state directory and everything written to it.
 *
 * Tables (named LMDB databases):
 *   items  u64 big-endian seq -> packed coord.v1.Item {seq, received_at, council, envelope}
 *          appended in seq order (MDB_APPEND); the envelope bytes are the client's, verbatim
 *   index  council "\0" msg_id -> 13 bytes: u64 BE latest seq, u32 BE latest revision,
 *          u8 flags (STORE_FLAG_RETRACTED)
 *   meta   "schema_version" -> u32 BE (STORE_SCHEMA_VERSION)
 *
 * Caveats:
 * - One process writes: store_open() takes an exclusive lock on <dir>/coordd.lock, so a
 *   second daemon on the same directory fails with -EBUSY. Other processes may read.
 * - Write functions run on one thread at a time (the writer); each call is one LMDB write
 *   transaction. Read functions may run on any thread concurrently with the writer.
 * - The map grows on MDB_MAP_FULL (doubling, up to map_size_max) and the batch is replayed;
 *   growing waits until no read transaction of this process is open.
 * - Never use a store across fork().
 *
 * Non-logging module: errors are negative errno values. MDB_NOTFOUND -> -ENOENT, map at its
 * maximum -> -ENOSPC, a newer schema -> -EPROTO, a held lock -> -EBUSY, other LMDB errors
 * -> -EIO.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coord.pb-c.h"

#define STORE_SCHEMA_VERSION 1
#define STORE_FLAG_RETRACTED 0x01

struct store;

struct store_options {
	const char *dir;   /* state directory; created (mode 0750) if missing */
	uint64_t map_size; /* initial map size in bytes (a larger existing store keeps its own) */
	uint64_t map_size_max; /* growth limit in bytes */
	bool sync;             /* flush every commit (false is UNSAFE: MDB_NOSYNC) */
};

/*
 * Open (or create) the store. Clears stale reader slots left by dead processes, checks the
 * schema version. On success returns 0 and *ret_store; on failure a negative errno and
 * *ret_store is untouched. `opts` is copied.
 */
int store_open(const struct store_options *opts, struct store **ret_store);

/*
 * Close the environment and release the directory lock. No transaction may be running.
 * Accepts NULL. Returns NULL.
 */
struct store *store_free(struct store *s);

/*
 * One record of a write batch. The caller fills the inputs; store_write_batch() sets the
 * outputs. All pointers are borrowed for the duration of the call only.
 */
struct store_record {
	/* inputs */
	const char *council;     /* validated council id */
	const char *msg_id;      /* validated msg_id */
	uint32_t revision;       /* >= 1 */
	bool retraction;         /* the body is a Retraction */
	const uint8_t *envelope; /* the Envelope bytes as received */
	size_t envelope_len;
	int64_t received_at; /* Unix ms */

	/* outputs */
	Coord__V1__AckStatus status; /* ACCEPTED, DUPLICATE or REJECTED */
	Coord__V1__Reason reason;    /* REASON_UNKNOWN_RECORD when REJECTED */
	uint64_t seq;                /* ACCEPTED: the new seq; DUPLICATE: the stored latest seq */
};

/*
 * Write a batch in one transaction and commit it (durably unless opts.sync is false). For
 * each record in order: a revision not above the stored one is DUPLICATE (nothing written);
 * a retraction of a record never stored is REJECTED with REASON_UNKNOWN_RECORD; anything else
 * is ACCEPTED as a new item with the next seq, and the index points at it. Records later in
 * the batch see the effect of earlier ones.
 *
 * Returns 0 when the transaction committed (every record's outputs are set); -ENOSPC when the
 * batch does not fit below map_size_max; -EIO when LMDB failed (for example a full disk);
 * -ENOMEM. On error nothing was written and the outputs are undefined.
 *
 * Writer thread only (one call at a time).
 */
int store_write_batch(struct store *s, struct store_record *recs, size_t n);

struct store_stats {
	uint64_t last_seq;   /* highest seq stored, 0 when empty */
	uint64_t items;      /* entries in items */
	uint64_t records;    /* entries in index: distinct (council, msg_id) */
	uint64_t map_size;   /* current map size in bytes */
	uint64_t used_bytes; /* pages in use * page size */
};

/*
 * Fill *ret_stats from a read transaction. Returns 0 or -EIO. Any thread.
 */
int store_get_stats(struct store *s, struct store_stats *ret_stats);

/*
 * Look up the latest revision of (council, msg_id). Returns 0 and the outputs (each may be
 * NULL), -ENOENT when the record was never stored, or -EIO. Any thread.
 */
int store_lookup(struct store *s, const char *council, const char *msg_id, uint64_t *ret_seq,
                 uint32_t *ret_revision, bool *ret_retracted);

/*
 * store: the LMDB environment in the state directory and everything written to it.
 *
 * Tables (named LMDB databases):
 *   items  u64 big-endian seq -> packed coord.v1.Item {seq, received_at, council, envelope}
 *          appended in seq order (MDB_APPEND); the envelope bytes are the client's, verbatim
 *   index  64-bit hash of (council, msg_id), big-endian (store_index_key()) -> sorted
 *          duplicates (MDB_DUPSORT | MDB_DUPFIXED) of 13 bytes: u64 BE latest seq, u32 BE
 *          latest revision, u8 flags (STORE_FLAG_RETRACTED). Usually one per key; records
 *          whose hashes collide have one each, told apart by the item each points at
 *   meta   "schema_version" -> u32 BE (STORE_SCHEMA_VERSION)
 * Other modules keep their own tables beside these (store_open_table(): digest, digest_log).
 *
 * Schema versions: 1 had no digest_log table; 2 adds it (digest.h); 3 stores the digest
 * table's values in a compact format (digest.c) instead of protobuf Aggregates; 4 keys the
 * index by a hash of (council, msg_id) instead of council "\0" msg_id itself. A store of
 * version 1 becomes version 2 at the first read-write open (an absent log is an empty one,
 * so nothing else changes). A store below version 3 becomes version 3 only with the
 * rebuild of its digest table, in the same write transaction (digest_upgrade(), run by
 * coordd at start; `coordctl repair` too): store_schema() tells, store_set_schema() writes
 * the version. A store of version 3 becomes version 4 with the rebuild of its index from
 * the items, in one write transaction (store_upgrade_index(), run by coordd at start after
 * digest_upgrade(); `coordctl repair` too). Each version is refused by builds that know
 * only older ones (-EPROTO); a store whose index is not yet of version 4 is read (verify
 * says what to do) but not written (store_write_batch() and store_lookup() fail -EPROTO).
 *
 * Caveats:
 * - One process writes: store_open() takes an exclusive lock on <dir>/coordd.lock, so a
 *   second daemon on the same directory fails with -EBUSY. Other processes may read, by
 *   opening with read_only (no lock taken).
 * - Write functions run on one thread at a time (the writer); each call is one LMDB write
 *   transaction. Read functions may run on any thread concurrently with the writer.
 * - The map doubles (up to map_size_max) ahead of need: after a commit that leaves more than
 *   1/STORE_GROW_AHEAD_DIV of it in use, when no read transaction of this process is open at
 *   that moment. A batch that still meets MDB_MAP_FULL grows it and is replayed; that growth
 *   waits until no read transaction of this process is open.
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

#include <lmdb.h>

#include "coord.pb-c.h"

#define STORE_SCHEMA_VERSION 4
/* The version whose digest table is current but whose index is still keyed by names. */
#define STORE_SCHEMA_DIGEST_VALUES 3
#define STORE_FLAG_RETRACTED 0x01
/* Bytes of an index key: the 64-bit hash of (council, msg_id). */
#define STORE_INDEX_KEY_SIZE 8
/* The map grows ahead once more than 1/this of it is in use (see Caveats). */
#define STORE_GROW_AHEAD_DIV 2

struct store;

struct store_options {
	const char *dir;   /* state directory; created (mode 0750) if missing */
	uint64_t map_size; /* initial map size in bytes (a larger existing store keeps its own) */
	uint64_t map_size_max; /* growth limit in bytes */
	bool sync;             /* flush every commit (false is UNSAFE: MDB_NOSYNC) */
	bool read_only;        /* for tools beside a running daemon: no lock, no writes, no
	                          directory creation; store_write_batch() fails */
};

/* The schema version the store holds (STORE_SCHEMA_VERSION for a store made by this build;
 * 2 for one of version 1 opened read-write). */
uint32_t store_schema(const struct store *s);

/*
 * Grow the map (doubling, up to map_size_max) until it has room for a second copy of what
 * is in use, for a write transaction of store_repair_begin() that may rewrite whole tables
 * (the schema upgrade): a store reopened with a smaller configured map_size maps no more
 * than it uses, and only write batches grow the map by themselves. At map_size_max it stops
 * there (the transaction then fails with -ENOSPC if it does not fit). No transaction of this
 * process may be open. Returns 0, -EROFS, -EIO or -ENOMEM.
 */
int store_reserve_copy(struct store *s);

/*
 * Write the schema version inside `txn` (from store_repair_begin()), for the module that
 * upgrades its tables in the same transaction: STORE_SCHEMA_VERSION when the index is of
 * version 4 (a new store, or store_rebuild_index() ran in `txn`), else
 * STORE_SCHEMA_DIGEST_VALUES (store_upgrade_index() then does the rest);
 * store_schema() returns it from then on (the caller fails the process when the commit
 * fails). Returns 0, -ENOSPC or -EIO.
 */
int store_set_schema(struct store *s, MDB_txn *txn);

/*
 * The index key of (council, msg_id), a u64 big-endian: its high 32 bits are those of the
 * SipHash-2-4 (fixed key) of council "\0" msg_id without the msg_id's last 2 bytes, its low
 * 32 bits those of the SipHash-2-4 of council "\0" msg_id. So msg_ids that differ only at
 * their end (sequential ids) sit together in the index, and a batch of them dirties a few
 * pages, as keys by name did; random ids (libcoord's content hashes) spread evenly either
 * way. Returns 0, or -ENAMETOOLONG when the two exceed 255 bytes.
 */
int store_index_key(const struct store *s, const char *council, const char *msg_id,
                    uint8_t ret_key[STORE_INDEX_KEY_SIZE]);

/*
 * For tests of hash collisions only: AND every index hash with `mask` from now on (0 puts
 * every record under one key). A store written so is consistent only under the same mask.
 */
void store_set_hash_mask(struct store *s, uint64_t mask);

/*
 * Open (or create) the store. Clears stale reader slots left by dead processes, checks the
 * schema version. A new store is made in <dir>/.new-store, committed and flushed there,
 * and its data.mdb renamed into <dir> (then <dir> is flushed), so a power cut never
 * leaves a half-made data.mdb; a .new-store left by a crash is removed. On success returns 0 and
 * *ret_store; on failure a negative errno and *ret_store is untouched. `opts` is copied.
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
	const uint8_t *envelope; /* the Envelope bytes as received: a packed Envelope of this
	                            council and msg_id (the index tells records whose hashes
	                            collide apart by the items' council and msg_id) */
	size_t envelope_len;
	int64_t received_at; /* Unix ms */
	/* `envelope` already unpacked (by ingest), or NULL. Not read by the store: the hooks
	 * use it instead of unpacking the bytes again (store_change.rec). */
	const Coord__V1__Envelope *decoded;

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
 * batch does not fit below map_size_max; -EIO when LMDB failed (for example a full disk: the
 * write of the pages is short, the transaction is aborted and the store stays as it was, so
 * a later batch succeeds once space is back; tell a full disk from an I/O error with
 * store_disk_free()); -ENOTRECOVERABLE when an earlier failure hit LMDB's meta page write
 * and the environment must be reopened (restart the daemon; the file is intact); -ENOMEM.
 * On error nothing was written and the outputs are undefined.
 *
 * Writer thread only (one call at a time).
 */
int store_write_batch(struct store *s, struct store_record *recs, size_t n);

/* What a write batch did to one record, as the hooks see it. */
struct store_change {
	const struct store_record *rec; /* the accepted revision; rec->seq is set */
	const uint8_t *old_envelope;    /* the superseded revision's Envelope bytes, or NULL when
	                                   the record is new; borrowed until the hook returns */
	size_t old_envelope_len;
	bool old_retracted; /* the superseded revision was a retraction */
};

/*
 * Callbacks that let another module keep its own tables in step with the items, inside the
 * same write transaction (the digest aggregates). All run on the writer thread.
 */
struct store_hooks {
	/* Once per ACCEPTED record, in seq order, inside the write transaction. Returns 0, an
	 * MDB_* error code from LMDB (MDB_MAP_FULL makes the store abort, grow the map and
	 * replay the whole batch), or a negative errno above -4096 (the batch fails with it;
	 * nothing is written). */
	int (*record)(void *data, MDB_txn *txn, const struct store_change *change);
	/* After the last record, before the commit: write back cached state. Same returns. */
	int (*batch_end)(void *data, MDB_txn *txn);
	/* The transaction was aborted (before a replay, or on failure): drop cached state. */
	void (*batch_abort)(void *data);
	/* The transaction committed. */
	void (*batch_committed)(void *data);
	void *data;
};

/*
 * Install hooks (copied). Call before the first store_write_batch(); NULL removes them.
 */
void store_set_hooks(struct store *s, const struct store_hooks *hooks);

/*
 * Open, creating it if needed, a named table beside the store's own ("items", "index" and
 * "meta" are taken). Returns 0 and *ret_dbi, or -EIO. Call before the first write.
 */
int store_open_table(struct store *s, const char *name, MDB_dbi *ret_dbi);

/*
 * Begin and end a read transaction for a module that reads its own table (any thread).
 * The transaction holds off map growth: keep it short. Values read are borrowed until
 * store_read_end(). Returns 0 or -EIO.
 */
int store_read_begin(struct store *s, MDB_txn **ret_txn);
void store_read_end(struct store *s, MDB_txn *txn);

/*
 * The highest seq stored as `txn` (from store_read_begin()) sees it, 0 when empty: for a
 * module that must know which items its own tables reflect in the same snapshot. Returns 0
 * and *ret_last_seq, or -EIO.
 */
int store_read_last_seq(struct store *s, MDB_txn *txn, uint64_t *ret_last_seq);

/*
 * Called by store_scan_items() for each item: `seq`, the packed Item bytes (borrowed until
 * the callback returns), and whether this item is the live revision of its record (the
 * latest revision, and not a retraction). Return 0 to go on, 1 to stop, or a negative errno
 * to stop with that error.
 */
typedef int store_item_fn(void *data, uint64_t seq, const uint8_t *item, size_t len, bool live);

/*
 * Visit items in one read transaction: forwards from the first seq above `after_seq`, or,
 * with `backwards`, from the last seq down. At most `max_items` items are visited.
 * Returns 0 (or 1 when the callback stopped), the callback's negative errno, or -EIO.
 * *ret_last_seq (may be NULL) is the last seq stored when the scan read. Any thread.
 */
int store_scan_items(struct store *s, uint64_t after_seq, bool backwards, size_t max_items,
                     store_item_fn *fn, void *data, uint64_t *ret_last_seq);

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
 * NULL), -ENOENT when the record was never stored, -EPROTO when the index is of a schema
 * below 4 (not upgraded yet), or -EIO. Any thread.
 */
int store_lookup(struct store *s, const char *council, const char *msg_id, uint64_t *ret_seq,
                 uint32_t *ret_revision, bool *ret_retracted);

/* What store_verify() found. */
struct store_verify_report {
	uint64_t items;          /* items checked */
	uint64_t records;        /* index entries checked */
	uint64_t problems;       /* inconsistencies found */
	char first_problem[256]; /* the first one, e.g. "items: seq 17 is missing" */
};

/* Progress of a long operation: `done` of `total` units. */
typedef void store_progress_fn(void *data, uint64_t done, uint64_t total);

/* One problem found, as one line of text (borrowed until the callback returns). */
typedef void store_problem_fn(void *data, const char *problem);

/*
 * Check the whole store in one read transaction: the schema version; items are keyed 1..N
 * without a gap, each decodes as an Item whose seq is its key and whose envelope passes the
 * daemon's own checks (wire_unpack_envelope() and wire_validate_envelope() as of the
 * item's received_at; whether the council is registered is not checked) and names the
 * item's council; every item's record is in the index at that seq or a later one with a
 * revision at least as high; the index entry's seq, revision and retraction flag match the
 * item it points at; every index entry points at an item.
 * `progress` (may be NULL) is called every STORE_PROGRESS_STEP items and at the end;
 * `problem` (may be NULL) once per problem found, in the order found; both get `data`.
 * Returns 0 when the store is consistent, -EBADMSG when it found problems (the report says
 * how many and the first), or -EIO/-ENOMEM. *ret_report is filled in every case. Any thread.
 */
int store_verify(struct store *s, store_progress_fn *progress, store_problem_fn *problem,
                 void *data, struct store_verify_report *ret_report);

#define STORE_PROGRESS_STEP 10000

/*
 * Write a consistent, compacted copy of the store as `dest_dir`/data.mdb while writers go
 * on, using LMDB's mdb_env_copyfd2(MDB_CP_COMPACT) in one read transaction: every commit
 * that returned before the call is in the copy. `dest_dir` must not exist (it is created,
 * mode 0750) or be an empty directory: otherwise -EEXIST (-ENOTDIR for a file). The file
 * and the directory are fsynced before returning 0; on error the partial data.mdb is
 * removed. `progress` (may be NULL) is called with bytes written so far and an estimate of
 * the total (the pages in use) as the copy goes. Returns 0 or a negative errno. Any thread.
 */
int store_backup(struct store *s, const char *dest_dir, store_progress_fn *progress, void *data);

/* What store_rebuild_index() did. */
struct store_repair_report {
	uint64_t items;    /* items read */
	uint64_t records;  /* index entries written */
	uint64_t skipped;  /* items that do not decode (left in place, not indexed) */
	uint64_t replaced; /* index entries that differed from, or were missing in, the old index */
	uint64_t dropped;  /* old index entries that no item supports */
};

/*
 * For repair tools, with the daemon stopped (the store opened read-write, so its lock is
 * held): begin one write transaction. Nothing else may write meanwhile. Returns 0 and
 * *ret_txn, or -EROFS for a read-only store, or -EIO. End it with store_repair_commit()
 * (returns 0, -ENOSPC when the map is full, or -EIO; the transaction is gone either way) or
 * store_repair_abort().
 */
int store_repair_begin(struct store *s, MDB_txn **ret_txn);
int store_repair_commit(struct store *s, MDB_txn *txn);
void store_repair_abort(struct store *s, MDB_txn *txn);

/*
 * Rebuild the index from the items inside `txn` (from store_repair_begin()): every record's
 * entry points at its item with the highest seq, with that item's revision and retraction
 * flag. Items that do not decode are reported to `problem` and skipped. `progress` is called
 * as for store_verify(). Every item is held in memory as 24 bytes (hash, seq, revision,
 * flags) and sorted by hash; items under one hash are told apart by their names. When the
 * result differs from the index, or the index is of an older layout (then the table is
 * made anew in version 4's), the table is emptied and written in key order (full pages).
 * Returns 0 and fills *ret_report, or an error (-ENOSPC: the map is full; -EIO; -ENOMEM);
 * on error abort the transaction.
 */
int store_rebuild_index(struct store *s, MDB_txn *txn, store_progress_fn *progress,
                        store_problem_fn *problem, void *data,
                        struct store_repair_report *ret_report);

/*
 * Bring a store of version STORE_SCHEMA_DIGEST_VALUES to STORE_SCHEMA_VERSION: the index
 * rebuilt from the items (store_rebuild_index()) and the version written, in one write
 * transaction, so a crash leaves the store as it was. `progress` as for
 * store_rebuild_index(). Returns 1 when it upgraded (*ret_report says what the rebuild
 * did), 0 when the store was current, -EPROTO for a version below
 * STORE_SCHEMA_DIGEST_VALUES (digest_upgrade() first), -EROFS, or the rebuild's and the
 * commit's errors.
 */
int store_upgrade_index(struct store *s, store_progress_fn *progress, void *data,
                        struct store_repair_report *ret_report);

/*
 * Visit every item in `txn` (NULL: in a read transaction of its own), from the highest seq
 * down to 1, telling for each whether it is the live revision of its record judged from the
 * items alone, without the index: the record's item with the highest seq, and not a
 * retraction. Items that do not decode are passed with live false. For the recount of
 * verify and repair: it keeps every record's key in memory. Returns as
 * store_scan_items(); -ENOMEM.
 */
int store_scan_latest(struct store *s, MDB_txn *txn, store_item_fn *fn, void *data);

/*
 * The state directory's file system, for the disk-trouble checks: bytes available to
 * unprivileged users. Returns 0 and *ret_free_bytes, or -errno from statvfs(). Any thread.
 */
int store_disk_free(const char *dir, uint64_t *ret_free_bytes);

/*
 * digest: incremental, exact aggregates of the live records, kept in the store's "digest"
 * table in the same write transaction as the items, and digests computed from them.
 *
 * A record contributes to one DigestLine (its category and kind) in three scopes (all, its
 * council, its country: where the activity happened — the event's country, the letter's
 * recipient country, the petition's target country, the statement's country, the media
 * outlet's country) and, in each scope, to two aggregates: the whole-campaign one and the
 * one of the UTC hour holding the record's own date. A contribution is: count 1; the sum
 * value (event participants, petition signatures, media local_sources); one count for its
 * country, for each distinct primary language subtag, and for its council. A correction
 * removes the superseded revision's contribution and adds the new one; a retraction only
 * removes; a restore only adds. So every figure is exact and nothing is ever rescanned.
 *
 * A batch writes its contributions to the "digest_log" table (a few bytes each, appended),
 * not to the aggregates; once the log holds more than the log limit, the folder thread folds
 * the log and the next batches write the result into the "digest" table, a slice each, the
 * last one deleting the entries folded (the install mark in the log says which aggregates
 * hold which entries meanwhile). A digest is the aggregates plus the log, read in one
 * transaction, so it is exact after every commit; the folding only saves the rewriting of
 * the same aggregates by every batch.
 *
 * Threads: the store hooks run on the writer thread; everything else on the loop thread
 * (reads use their own read transaction). The dirty-scope set is handed between the two
 * under a mutex.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coord.pb-c.h"
#include "store.h"

#define DIGEST_HOUR_MS INT64_C(3600000)
#define DIGEST_HEADLINES_DEFAULT 5
#define DIGEST_HEADLINES_MAX 50
/* Contributions the log holds before a batch folds it into the aggregates (digest.c). */
#define DIGEST_LOG_LIMIT_DEFAULT 8192
/* Bytes of decoded aggregates the write side keeps between folds (digest.c). */
#define DIGEST_CACHE_LIMIT_DEFAULT ((size_t) 32 << 20)
/* Aggregates one batch installs at least of a fold made by the folder thread (digest.c). */
#define DIGEST_INSTALL_SLICE_DEFAULT 256
/* digest_free() folds the log only when it holds at most this many contributions. */
#define DIGEST_SHUTDOWN_FOLD_MAX 65536
/* Headlines are looked for among this many newest items at most. */
#define DIGEST_HEADLINE_SCAN_MAX 2000

struct digest;
struct digest_check_report;

/*
 * Bring a store whose aggregates are protobuf Aggregates (store_schema() below
 * STORE_SCHEMA_DIGEST_VALUES) to this build's format: digest_rebuild() and the new schema
 * version (store_set_schema()) in one write transaction, so a crash leaves the old store as it was.
 * `progress` as for digest_rebuild(). Returns 1 when it upgraded (*ret_report says what the rebuild
 * did), 0 when the store was current, or digest_rebuild()'s and the commit's errors
 * (-EROFS for a read-only store). digest_new() calls it too.
 */
int digest_upgrade(struct store *store, store_progress_fn *progress, void *data,
                   struct digest_check_report *ret_report);

/*
 * Open (creating) the "digest" table in `store` and install the store hooks that keep it in
 * step. `store` is borrowed and must outlive the digest. Call before the first write.
 * Returns 0 and *ret_digest, or a negative errno.
 */
int digest_new(struct store *store, struct digest **ret_digest);

/*
 * Set how many contributions the log may hold before a batch folds it into the aggregates
 * (default DIGEST_LOG_LIMIT_DEFAULT; 0 folds in every batch, so the "digest" table alone is
 * always complete: for tests of the table's layout). Writer thread, or before any write.
 */
void digest_set_log_limit(struct digest *d, size_t records);

/*
 * Set how many aggregates a batch writes at least when it installs a fold made by the
 * folder thread (default DIGEST_INSTALL_SLICE_DEFAULT; a large one counts as several, and a
 * batch writes 2 more per contribution it logs; 0 writes the whole fold in one batch): the
 * rest goes into the next batches, and digests stay exact in between. Writer thread, or
 * before any write.
 */
void digest_set_install_slice(struct digest *d, size_t aggregates);

/*
 * Set how many bytes of decoded aggregates the folder thread keeps between folds (default
 * DIGEST_CACHE_LIMIT_DEFAULT), and so the most the writer's and the folder's caches hold
 * together: aggregates beyond it are dropped, least recently folded first, and read again
 * from the table when next needed. 0 keeps none (for tests). Before any write.
 */
void digest_set_cache_limit(struct digest *d, size_t bytes);

/*
 * Fold in the folder thread (the default) or, with `on` false, in the batch that takes the
 * log over the limit (the whole log, that batch's contributions too). Before any write.
 */
void digest_set_fold_background(struct digest *d, bool on);

/*
 * The digest log now: *ret_logged the contributions in the committed log not yet folded
 * into the aggregates, *ret_limit the log limit (digest_set_log_limit()). At or below the
 * limit nothing waits to be folded and the folder thread is idle; far above it the folder
 * is behind (after a large import it takes a few batches to catch up). Any thread.
 */
void digest_log_state(struct digest *d, size_t *ret_logged, size_t *ret_limit);

/*
 * For tests: wait (at most ~10 s) until the folder thread is not folding. Returns 0 when a
 * result waits for the next batch to install it, -EAGAIN when nothing waits (no folder, or
 * the fold found nothing or failed), -ETIMEDOUT.
 */
int digest_fold_wait(struct digest *d);

/*
 * Set the most contributions digest_free() folds (default DIGEST_SHUTDOWN_FOLD_MAX): a
 * larger log is left as it is, since the log is durable and digests, verify and the tools
 * read the aggregates and the log together. Before digest_free().
 */
void digest_set_shutdown_fold_max(struct digest *d, size_t records);

/*
 * Fold the log into the aggregates when it holds anything but not more than the shutdown
 * limit (digest_set_shutdown_fold_max(); one write transaction of the store, so no batch
 * may be in flight: call it after ingest has stopped, before store_free()): folding the
 * whole log of a large preload on the way out took minutes, beyond a service manager's stop
 * timeout, for nothing exactness needs. Then remove the store hooks and free. Accepts NULL.
 * Returns NULL.
 */
struct digest *digest_free(struct digest *d);

/*
 * Compute the digest of `scope` (kind ALL, or COUNCIL/COUNTRY with an id) over `window`:
 * WINDOW_ALL reads the whole-campaign aggregate; WINDOW_LAST_24H and WINDOW_LAST_1H cover
 * [now - 24 h, now) and [now - 1 h, now); WINDOW_RANGE covers [start, end). Windows other
 * than ALL merge the hour buckets that overlap them: start is rounded down and end up to a
 * whole UTC hour, and the digest reports the rounded bounds. `headlines` newest live records
 * in the scope and window (at most DIGEST_HEADLINES_MAX, looked for among the newest
 * DIGEST_HEADLINE_SCAN_MAX items).
 *
 * Its lines carry their CodeCount lists and distinct counts, with the total and category
 * lines (summary.h).
 *
 * On success returns 0 and *ret_digest, a heap object owned by the caller, to be freed with
 * digest_result_free(). Returns -EINVAL for a bad scope/window (an unknown scope id is not
 * an error: its digest is empty), -ENOMEM, -EIO. Any thread but the writer.
 */
int digest_compute(struct digest *d, Coord__V1__ScopeKind scope_kind, const char *scope_id,
                   Coord__V1__Window window, int64_t start, int64_t end, int64_t now_ms,
                   unsigned headlines, Coord__V1__Digest **ret_digest);

/* One digest asked of digest_compute_many(): the inputs of digest_compute(), and its
 * result. */
struct digest_request {
	/* inputs (scope_id is borrowed for the call) */
	Coord__V1__ScopeKind scope_kind;
	const char *scope_id;
	Coord__V1__Window window;
	int64_t start, end;
	/* outputs */
	int r;                     /* 0, or digest_compute()'s error for this request */
	Coord__V1__Digest *digest; /* when r is 0: owned by the caller, digest_result_free() */
};

/*
 * Compute several digests as digest_compute() would, each with `headlines` headlines, from
 * ONE scan of the newest DIGEST_HEADLINE_SCAN_MAX items (the scan dominates the cost of a
 * digest: one per request made a digest job of a few hundred scopes decode the same items
 * a thousand times). Every digest reports the same last_seq.
 * Returns 0 when the scan succeeded; then each request's `r` and `digest` are set (a bad
 * scope or window fails that request alone, with -EINVAL). Returns -ENOMEM or -EIO when the
 * scan failed: then no request has a digest. Any thread but the writer.
 */
int digest_compute_many(struct digest *d, struct digest_request *reqs, size_t n, int64_t now_ms,
                        unsigned headlines);

/* Free a digest from digest_compute(). Accepts NULL. */
void digest_result_free(Coord__V1__Digest *digest);

/* One scope whose aggregates changed. */
struct digest_scope {
	Coord__V1__ScopeKind kind;
	char id[33]; /* council id or country code; "" for ALL */
};

/*
 * Live digests: what the publish socket sends every publish interval, kept in memory so
 * that a tick costs microseconds per scope whatever the size of the store and of the log.
 *
 * For each scope asked for, the three windows' merged aggregates (whole campaign, the hour
 * buckets of the last 24 h and of the last hour as of the seeding), plus a ring of the
 * newest DIGEST_LIVE_RING items (council, msg_id, revision, contribution; the titles of
 * the newest DIGEST_HEADLINE_SCAN_MAX, for headlines). Seeded from the store (aggregates
 * and log in one read transaction, so at one seq), then moved forward by every committed
 * item in seq order: +1 for the new revision, -1 for the superseded one, found in the ring.
 * So a digest from here equals digest_compute() of the same committed state: the same
 * contributions applied by the same agg_apply(). The state is dropped and seeded again
 * (digest_live_prepare()) when it cannot stay exact: a window's hour rolled over, an item
 * missing from the sequence, a correction of a record whose previous revision is older
 * than the ring, a failed allocation.
 *
 * One thread at a time (the fanout's digest job); reads the store with read transactions.
 */
#define DIGEST_LIVE_RING 8192

struct digest_live;

/* A new, empty live state reading `d` (borrowed). Returns 0 and *ret_live, or -ENOMEM. */
int digest_live_new(struct digest *d, struct digest_live **ret_live);

/* Free. Accepts NULL. Returns NULL. */
struct digest_live *digest_live_free(struct digest_live *l);

/* Forget the state and the scopes prepared (an item could not be fed, or scopes are no
 * longer wanted): the next digest_live_prepare() seeds its own scopes from the store. */
void digest_live_reset(struct digest_live *l);

/* How many times the whole state was seeded from the store since digest_live_new(). */
uint64_t digest_live_seeds(const struct digest_live *l);

/*
 * Make the state usable at `now_ms` for `scopes` (n of them; others seeded before stay):
 * seed everything from the store when there is no valid state or the hour buckets of a
 * window moved, else seed only the scopes not known yet. Returns 0, -EINVAL for a bad
 * scope (nothing seeded), -ENOMEM or -EIO (the state is then dropped).
 */
int digest_live_prepare(struct digest_live *l, const struct digest_scope *scopes, size_t n,
                        int64_t now_ms);

/*
 * One committed item, in seq order: its seq, council and the Envelope bytes as stored.
 * Items the state already reflects are ignored. Returns 0, or -EAGAIN when the state could
 * not follow exactly (it is dropped: call digest_live_prepare() again, then go on with the
 * next item), or -ENOMEM (dropped too).
 */
int digest_live_feed(struct digest_live *l, uint64_t seq, const char *council,
                     const uint8_t *envelope, size_t envelope_len);

/*
 * The DigestSet {WINDOW_ALL, WINDOW_LAST_24H, WINDOW_LAST_1H} of `scope` at `now_ms` with
 * `headlines` headlines (0: the default), each Digest as digest_compute() makes it (without
 * the CodeCount lists after digest_live_set_lists(l, false)), packed into a malloc()ed
 * buffer (*ret_buf, caller frees, *ret_len bytes); *ret_last_seq is the seq every item up
 * to which, and no later one, the three digests count. Returns 0; -EAGAIN when the state
 * does not reach the seq it was seeded at yet (feed the items up to it first) or is not
 * valid; -ENOENT for a scope not prepared; -ENOMEM.
 */
int digest_live_render(struct digest_live *l, const struct digest_scope *scope, int64_t now_ms,
                       unsigned headlines, uint8_t **ret_buf, size_t *ret_len,
                       uint64_t *ret_last_seq);

/*
 * Whether digest_live_render() keeps each line's CodeCount lists (the default, as
 * digest_compute()) or leaves only the distinct counts (summary.h: what the publish socket
 * sends).
 */
void digest_live_set_lists(struct digest_live *l, bool with_lists);

/*
 * Take the set of scopes changed by batches committed since the last call (each once).
 * On success returns the number of scopes and *ret_scopes (heap, caller frees with free();
 * NULL when 0). Returns -ENOMEM on failure (the set is kept). Loop thread.
 */
int digest_take_dirty(struct digest *d, struct digest_scope **ret_scopes);

/*
 * What one Envelope contributes, for tests and tools: its category, kind, date, country,
 * sum value and distinct primary languages (lower case, at most WIRE_LANGUAGES_MAX).
 * Returns 0, or -EINVAL for an envelope without a countable body (a retraction).
 */
struct digest_contribution {
	Coord__V1__Category category;
	int32_t kind;
	int64_t date;
	char country[3];
	uint64_t sum;
	size_t n_languages;
	char languages[16][4];
};

int digest_contribution_of(const Coord__V1__Envelope *env,
                           struct digest_contribution *ret_contribution);

/*
 * The stored value of an aggregate in the "digest" table (store schema 3; the format is at
 * the top of digest.c): for tests, tools and the fuzzer. digest_value_decode() checks every
 * byte and returns 0 and a new aggregate (free with digest_value_free()), -EBADMSG for a
 * value that is not in the format (damaged, or the protobuf Aggregate of schema 2), or
 * -ENOMEM. digest_value_encode() returns 0 and a heap buffer (free()) with its length, or
 * -EINVAL for an aggregate without lines or with a code above 32 bytes, or -ENOMEM.
 */
int digest_value_decode(const uint8_t *value, size_t len, Coord__V1__Aggregate **ret_agg);
int digest_value_encode(const Coord__V1__Aggregate *agg, uint8_t **ret_value, size_t *ret_len);
void digest_value_free(Coord__V1__Aggregate *agg);

/* What digest_verify() or digest_rebuild() found. */
struct digest_check_report {
	uint64_t live;       /* live records counted from the items */
	uint64_t aggregates; /* aggregates the recount holds */
	uint64_t stored;     /* aggregates the table held */
	uint64_t problems;   /* aggregates stored but not in the recount, in the recount but not
	                        stored, differing, or not decoding (rebuild: rewritten) */
};

/*
 * Recount every aggregate from the items alone (each record's latest item, unless it is a
 * retraction; see store_scan_latest()) in one read transaction of `store`, and compare it
 * with the "digest" table, aggregate by aggregate. Each difference goes to `problem` (may
 * be NULL) as one line naming the scope and the hour, e.g. "digest: council 'c01', hour
 * 2024-05-01T10:00Z: stored count 5, recount 4". `progress` (may be NULL) is called every
 * STORE_PROGRESS_STEP items. The recount is held in memory. Returns 0 when the table agrees,
 * -EBADMSG when it does not, or -EIO/-ENOMEM; *ret_report is filled in every case. Any
 * thread; no digest object is needed, and the store may be read-only. A store whose
 * aggregates are of the old format (schema below STORE_SCHEMA_DIGEST_VALUES) is one problem
 * (it needs digest_upgrade(): start the daemon), not compared.
 */
int digest_verify(struct store *store, store_progress_fn *progress, store_problem_fn *problem,
                  void *data, struct digest_check_report *ret_report);

/*
 * Replace the "digest" table's content with a recount from the items, inside `txn` (from
 * store_repair_begin(); the table is created if missing), and set the store's schema to
 * STORE_SCHEMA_VERSION (the table is then in this build's format). Aggregates that already agree
 * are left alone; *ret_report->problems counts those written or deleted. Returns 0, -ENOSPC
 * when the map is full, -EIO or -ENOMEM; on error abort the transaction.
 */
int digest_rebuild(struct store *store, MDB_txn *txn, store_progress_fn *progress, void *data,
                   struct digest_check_report *ret_report);

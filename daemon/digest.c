/*
 * digest: incremental aggregates of the live records, and digests computed from them.
 *
 * Table "digest", written in the same write transaction as the items:
 *   key    u8 scope kind, scope id bytes, u8 0, u64 big-endian bucket, where the bucket is
 *          date / DIGEST_HOUR_MS (the UTC hour of the record's own date) or BUCKET_ALL
 *          (UINT64_MAX) for the whole-campaign aggregate
 *   value  the aggregate in the compact format below (store schema 3; schema 2 stored a
 *          packed coord.v1.Aggregate, which digest_upgrade() rebuilds at start)
 * Ids hold no 0 byte and the bucket is big-endian, so the hour buckets of one scope are
 * contiguous and in time order: a window is one cursor range.
 *
 * The compact format of a value (varints are LEB128, at most 10 bytes):
 *   u8      format, 1
 *   varint  n_codes, then n_codes times: u8 length (0..32) and the code's bytes (no 0
 *           byte): the aggregate's dictionary of every code its lines count (countries,
 *           language subtags, council ids alike), unique, in byte (strcmp) order
 *   varint  n_lines (at least 1), then per line, sorted by (category, kind) as int32:
 *           varint category, varint kind (its u32 bits), varint count (not 0), varint sum,
 *           then for countries, languages and councils in turn: varint n, and n times
 *           varint gap and varint count (not 0), the code being the dictionary entry at
 *           gap + 1 + the previous one's index (gap alone for the first)
 *   nothing after the last line
 * Each code is stored once per aggregate however many lines count it, and there are no
 * tags or nested lengths: the table of a 1 M store takes 3.2x fewer pages than with
 * protobuf Aggregates (docs/BENCHMARKS.md), and a fold's install writes that much less.
 * cv_check() checks a whole value within its length before anything is built from it (a
 * damaged value is -EBADMSG: a verify problem, MDB_CORRUPTED for a fold, never a crash;
 * fuzz_aggregate);
 * agg_decode() and cagg_decode() then build from the checked bytes. A value is canonical:
 * cagg_encode() (the write side, from interned ids) and agg_encode() (the recount, from
 * protobuf-c aggregates) make the same bytes of the same aggregate, and verify compares
 * bytes.
 *
 * Table "digest_log" (store schema 2), the contributions not yet in "digest":
 *   key    u64 big-endian seq of the first record a batch logged (appended, MDB_APPEND)
 *   value  that batch's contributions in order, each: u8 sign (1 add, 2 remove), u8 length
 *          and the council id, u8 category, varint kind, varint date, 2 bytes country (0 0
 *          for none), varint sum, u8 count and, per language, u8 length and the subtag
 * and, while a fold is installed over several batches, the install mark:
 *   key    the single byte 0 (before every entry)
 *   value  u8 0, u64 big-endian last_key, then a "digest" key K: the aggregates up to K
 *          (in key order) hold every entry up to last_key, those after K none of the log
 * Rewriting the aggregates a batch touches cost every batch ~1,000 aggregates and most of
 * the table's pages with varied records (and with one record per batch the large
 * whole-campaign aggregates alone). So a batch only appends its contributions, ~40 bytes
 * each, and the log is folded into the aggregates (each touched aggregate decoded and
 * written once for thousands of records) when it holds more than `log_limit` contributions.
 * Exactness does not depend on folding: a digest reads the aggregates and the log in one
 * read transaction and applies the log's contributions, oldest first, to the aggregates of
 * its window, so it counts exactly the committed records. verify takes the log back out of
 * its recount (newest first, opposite signs) before comparing with the table; rebuild folds
 * the log first. (All of them skip what the install mark, below, says is installed.)
 *
 * Folding off the ack path: the batch whose commit leaves the log over the limit asks the
 * folder thread (`struct folder`, started on first use) to fold. The folder reads the
 * committed log and the aggregates in a read transaction of its own, applies every entry of
 * that snapshot to its cache of decoded aggregates, and packs each aggregate it changed into
 * one buffer, in key order (READY). The next batches install it inside their own
 * transactions, a slice each (folder_install(), install_budget(): 256 aggregates plus 2 per
 * contribution the batch logs): a slice
 * writes its packed values and the install mark (the fold's last entry, the last key
 * written); the last slice deletes the mark and the log entries up to the newest one
 * folded. Every reader of the log applies an entry to an aggregate unless the mark says it
 * holds it already (mark_covers()), so the digests stay exact after every commit. Only one
 * fold is in flight (IDLE -> WORKING -> READY -> slices installed -> IDLE), and only folds
 * change the "digest" table, so the aggregates the folder read are still the stored ones
 * when its result is installed, however many batches committed meanwhile (they only
 * appended to the log). A batch that aborts (map growth) leaves the result and the slice
 * where they were, for its replay or the next batch. Folding the whole log inside one
 * batch, as before the folder, made that batch's commit ~150 ms with 8,192 contributions
 * and every batch queued behind it waited (p99 ack 0.3 to 1.2 s at 64 in flight); writing
 * the whole result in one batch (~13,500 aggregates at W=64) still held up the batches
 * behind it, and LMDB keeps every page a write transaction dirtied for reuse until the
 * environment closes, so the largest install set the broker's private memory. A store
 * left with a mark (a crash between slices): the next folder folds only the entries up to
 * the mark's last_key into the aggregates after its key and installs that the same way;
 * the writer's own fold and rebuild fold the whole log around the mark. No batch comes
 * while the broker is idle: an install then waits, exact, for the next one.
 * The writer folds in the batch itself (the whole log, that batch's entry too) with a
 * limit of 0 (tests), when the folder is off (digest_set_fold_background()) or could not
 * start, and as a safety net when the log reaches FOLD_HERE_FACTOR times the limit while
 * the folder is idle (its folds failing); the folder's cache is then emptied.
 * digest_free() stops the folder, drops a result not installed, and folds the log when it
 * holds at most DIGEST_SHUTDOWN_FOLD_MAX contributions (digest_set_shutdown_fold_max()); a
 * longer log stays, as exact, for the next run's folder (after a 10 M preload, folding it
 * all on the way out took ~3 minutes, beyond systemd's stop timeout).
 *
 * Invariants of a stored Aggregate: lines are unique and sorted by (category, kind); each
 * CodeCount list is unique and sorted by code (byte order); no line and no CodeCount has a
 * count of 0, and an aggregate left without lines is deleted. Every figure is the sum of the
 * contributions (digest.h) of the live records. Adding a contribution (sign +1) and removing
 * it (sign -1) go through one function, agg_apply(), and are exact inverses; sums wrap
 * modulo 2^64 for that reason. A count can only be asked to go below zero when the table
 * missed records (a store filled before this module existed); it then stops at zero rather
 * than failing every later batch.
 *
 * The write side (the folder, the writer's own folds) keeps aggregates in a compact form,
 * `struct cagg`: one block of lines (category, kind, count, sum, codes per list) followed
 * by their codes as (id, count), the codes interned to small ids (`struct interner`, whose
 * `rank` orders ids as the strings' bytes, the order of the CodeCount lists). A fold first
 * lists the log's contributions with their hour (read in place in its transaction), sorts
 * them by hour so that the hour aggregates of one hour are summed while in the CPU's
 * caches, and sums them per target aggregate (`struct deltas`: per key, the lines sorted by
 * (category, kind), per line its codes sorted by list and rank, in mapped arena chunks of
 * which ARENA_KEEP bytes are kept for the next fold). Then it visits the targets in key
 * order: each aggregate is read (from the cache or the table), merged with its sums in one
 * linear pass into a new block (cagg_apply()), and encoded by cagg_encode() into exactly
 * the bytes agg_encode() makes of the same aggregate (test_digest.c checks the table
 * against the read side's decoder and encoder, and a recount). Applying the sum of a
 * log's contributions gives what applying them one by one with agg_apply() gives: no count
 * of a table that counts every live record goes below zero along the way, so neither the
 * order of additions and removals nor the hour order matters.
 *
 * Cache: `ccache`, a hash table keyed by the key bytes, keeps decoded aggregates between
 * folds up to `limit` bytes (DIGEST_CACHE_LIMIT_DEFAULT, digest_set_cache_limit()):
 * beyond it hour buckets go first, least recently folded first, then whole-campaign ones;
 * a miss decodes the stored value (cagg_decode(): its dictionary is in byte order, so its
 * interned codes come out in rank order as they are; one that does not decode is
 * MDB_CORRUPTED). Any entry
 * may be dropped in the middle of a fold, because what the fold made of it is already
 * packed and the next fold starts only after this one's install, so it reads the table as
 * installed. The folder's deltas are bounded by the log it folds, its cache by the limit,
 * its result buffer by what the fold changed (kept after the install up to OUT_KEEP_BYTES);
 * the writer's cache serves only a fold inside a batch and is emptied after every batch,
 * and when the writer folds it first empties the idle folder's cache, so the two never
 * hold more than the limit together. batch_abort drops the writer's cache and the batch's
 * log, so the replay after a map growth starts again from the committed state. The scopes
 * a batch touched (for the old and the new revision alike) are listed in `pending` as it
 * logs; batch_end reserves room for them in `dirty`, so that batch_committed, which cannot
 * fail, only copies them in under `lock`.
 *
 * Read side and recount: an aggregate is a Coord__V1__Aggregate (agg_decode() of a stored
 * value), edited in place by agg_apply(). Lines and codes added there are allocated with
 * fewer calls than protobuf-c's (a CodeCount holds its code in its own block; pointer
 * arrays grow by half), so they are freed by agg_free(), line_free() and code_free(), which
 * free either kind, never by protobuf-c's free_unpacked(). verify and repair recount with
 * it, so they check the compact fold against an independent implementation.
 *
 * Loop thread: digest_compute() merges stored aggregates with agg_apply() too, builds the
 * Digest on the stack around the merged lines, packs it and hands out a fresh unpacked copy,
 * so the caller's object is exactly what protobuf-c allocated and
 * coord__v1__digest__free_unpacked() frees it.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sys/mman.h>

#include <lmdb.h>

#include "digest.h"
#include "varint.h"
#include "iso.h"
#include "summary.h"
#include "wire.h"

#define ID_MAX WIRE_COUNCIL_MAX
#define KEY_MAX (1 + ID_MAX + 1 + 8)
#define BUCKET_ALL UINT64_MAX
#define N_LISTS 3 /* countries, languages, councils */
#define LANGS_MAX (sizeof(((struct digest_contribution *) 0)->languages) / 4)
#define CACHE_SLOTS_MIN 64
#define OUT_KEEP_BYTES ((size_t) 8 << 20)     /* the folder's result buffer kept after install */
#define CODE_ID_MAX ((UINT32_C(1) << 24) - 1) /* ids of interned codes are below this */

_Static_assert(sizeof(((struct digest_scope *) 0)->id) == ID_MAX + 1, "scope id size");

struct entry {
	Coord__V1__Aggregate *agg;
	bool touched;  /* by the current batch */
	size_t packed; /* bytes at the last write, to bound what the cache keeps */
	size_t klen;
	uint8_t key[KEY_MAX];
};

/* Open addressing over `slots` (a power of two, at most half full). */
struct cache {
	struct entry **slots;
	size_t nslots;
	struct entry **list; /* every entry */
	size_t n, cap;
	struct entry **touched; /* the entries the current batch touched */
	size_t n_touched, cap_touched;
	size_t bytes; /* packed bytes of the hour-bucket entries */
};

/* The write side's form of the aggregates (see the top of this file). */

/* Codes interned to ids; `rank` orders ids as their strings' bytes (strcmp). */
struct interner {
	char (*str)[ID_MAX + 1]; /* by id */
	uint8_t *len;            /* by id */
	uint32_t *rank;          /* by id */
	uint32_t *order;         /* ids by rank */
	uint32_t n, cap;
	uint32_t *slots; /* open addressing over the strings: id + 1, or 0 */
	size_t nslots;
};

/* A DigestLine; its codes follow those of the lines before it, list by list. */
struct cline {
	int32_t category, kind;
	uint64_t count, sum;
	uint32_t n[N_LISTS];
};

struct ccode {
	uint32_t id;
	uint64_t count;
};

/* An aggregate in one block: n_lines lines, then n_codes codes. */
struct cagg {
	uint32_t n_lines, n_codes;
	struct cline lines[];
};

/* What a fold adds to one line of an aggregate: its count and sum, and the counts of its
 * codes (sorted by list, then by rank; the lists one after another). Counts and sums wrap:
 * a negative delta is -n modulo 2^64. */
struct dline {
	int32_t category, kind;
	uint64_t count, sum;
	uint32_t n[N_LISTS];
	uint32_t cap;
	struct ccode *c;
};

/* The deltas of one aggregate, its lines sorted by (category, kind). */
struct dentry {
	struct dline *lines;
	uint32_t n, cap;
	uint8_t klen;
	uint8_t key[KEY_MAX];
};

/*
 * The install mark (see the top of this file): while a fold is installed over several
 * batches, the aggregates up to `key` (in key order) hold every log entry up to `last_key`,
 * and those after it none of the log. Stored in the log table under the 1-byte key 0,
 * before every entry, as u8 0 (a byte no contribution starts with), u64 big-endian
 * last_key, and the key.
 */
#define MARK_KEY_LEN 1
struct mark {
	bool set;
	uint8_t klen;
	uint64_t last_key;
	uint8_t key[KEY_MAX];
};

struct arena_chunk;

/* A logged contribution in the folder's snapshot: its hour bucket, and its bytes. */
struct pending {
	uint64_t bucket;
	uint64_t entry; /* the key of its log entry */
	const uint8_t *at;
	size_t len;
};

/* The deltas of one fold, by key (open addressing over `slots`, at most half full). */
struct deltas {
	struct dentry **slots;
	size_t nslots;
	struct dentry **list;
	size_t n, cap;
	struct arena_chunk *arena; /* the entries, their lines and codes */
	struct arena_chunk *spare; /* chunks kept for the next fold (no page faults) */
	size_t spare_bytes;
	struct pending *order; /* the folder's snapshot, to be added in hour order */
	size_t n_order, cap_order;
	struct mark mark; /* the log's install mark: deltas_add() skips what it covers */
};

struct centry {
	struct cagg *agg; /* NULL: not in the table */
	uint64_t used;    /* the fold that last used it */
	uint8_t klen;
	uint8_t key[KEY_MAX];
};

/* Decoded aggregates kept between folds, at most `limit` bytes of them. */
struct ccache {
	struct centry **slots;
	size_t nslots;
	struct centry **list;
	size_t n, cap;
	size_t bytes, limit;
	uint64_t fold, misses, evicted;
};

/* A growing byte buffer. */
struct cbuf {
	uint8_t *p;
	size_t len, cap;
};

struct scope_set {
	struct digest_scope *v;
	size_t n, cap;
};

struct digest {
	struct store *store;
	MDB_dbi dbi;
	bool hooked;
	bool recount;       /* a recount's private object: the cache starts empty, reads nothing */
	struct cache cache; /* a recount's, and digest_rebuild()'s fold */
	/* Writer thread (the folder's in its `bg`): the compact aggregates and the fold. */
	struct interner codes;
	struct ccache ccache; /* emptied after every batch (the folder's: kept) */
	struct deltas deltas;
	struct cline *sl; /* scratch: the aggregate being made */
	size_t sl_n, sl_cap;
	struct ccode *sc;
	size_t sc_n, sc_cap;
	uint32_t *dict_ids; /* scratch: the interned ids of a stored value's codes */
	size_t dict_cap;
	uint32_t *enc_keys; /* scratch: the distinct ranks of a value being encoded */
	size_t enc_keys_cap;
	uint32_t *enc_pos; /* scratch: by rank, POS_NONE or the index in its dictionary */
	size_t enc_pos_cap;
	struct cbuf enc;          /* the value being encoded */
	struct scope_set pending; /* writer thread: scopes of the batch being committed */
	uint32_t *pend_slots;     /* their hash set (pending_scope()) */
	size_t pend_nslots;
	/* Writer thread: the log (see the top of this file). */
	MDB_dbi log_dbi;
	size_t log_limit;         /* fold when the log would hold more contributions than this */
	size_t logged;            /* contributions in the committed log */
	size_t shutdown_fold_max; /* digest_free() folds a log of at most this many */
	uint8_t *log_buf;         /* the batch's log value */
	size_t log_len, log_cap;
	uint64_t log_key;      /* its key: the seq of the batch's first accepted record */
	size_t batch_logged;   /* contributions in log_buf */
	size_t batch_folded;   /* contributions the batch folded (or installed) */
	bool batch_installs;   /* the batch installs the last slice of the folder's result */
	bool batch_slices;     /* the batch installs a slice before the last one */
	size_t install_next;   /* then: where the next slice starts in the folder's `out` */
	size_t install_slice;  /* aggregates a batch installs at least (0: all at once) */
	bool background;       /* fold in the folder thread (see the top of this file) */
	struct folder *folder; /* started on the first fold */
	pthread_mutex_t lock;
	struct scope_set dirty; /* under lock */
};

/* The folder thread and what it hands to the writer (see the top of this file). */
enum folder_state {
	FOLDER_IDLE,    /* nothing asked; the writer may fold itself */
	FOLDER_WORKING, /* folding a snapshot of the log */
	FOLDER_READY,   /* `out` waits for a batch to install it */
};

struct folder {
	struct digest *d; /* the owner */
	struct digest bg; /* the folder's own cache, and the tables (dbi, log_dbi) */
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	enum folder_state state; /* under mu */
	bool stop;               /* under mu */
	bool stale;              /* the writer folded: `bg.cache` no longer matches the table */
	/* The result, written by the folder while WORKING, read by the writer when READY:
	 * each aggregate as u8 key length, key, u32 value length (0: delete), packed value. */
	uint8_t *out;
	size_t out_len, out_cap;
	uint64_t last_key;  /* the newest log entry folded: install deletes it and all before */
	size_t folded;      /* contributions folded */
	size_t install_pos; /* bytes of `out` that committed batches installed */
	uint64_t folds, fold_errors;
};

/* A fold in progress. */
struct fold {
	struct digest *d;
	MDB_txn *txn;
	const struct mark *mark; /* NULL, or the log's install mark */
};

/* The three CodeCount lists of a DigestLine, by index. */
static const struct {
	size_t n, v;
} lists[N_LISTS] = {
        {offsetof(Coord__V1__DigestLine, n_countries), offsetof(Coord__V1__DigestLine, countries)},
        {offsetof(Coord__V1__DigestLine, n_languages), offsetof(Coord__V1__DigestLine, languages)},
        {offsetof(Coord__V1__DigestLine, n_councils), offsetof(Coord__V1__DigestLine, councils)},
};

static size_t *
list_n(const Coord__V1__DigestLine *l, int k)
{
	return (size_t *) ((uintptr_t) l + lists[k].n);
}

static Coord__V1__CodeCount ***
list_v(const Coord__V1__DigestLine *l, int k)
{
	return (Coord__V1__CodeCount ***) ((uintptr_t) l + lists[k].v);
}

static void
put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		p[i] = (uint8_t) v;
		v >>= 8;
	}
}

static uint64_t
get_be64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++) {
		v = (v << 8) | p[i];
	}
	return v;
}

/* Make room for `need` elements of `size` bytes. Returns the array (maybe moved) or NULL,
 * in which case `v` and *cap are unchanged. */
static void *
grow(void *v, size_t *cap, size_t need, size_t size)
{
	size_t n = *cap ? *cap : 4;

	if (need <= *cap) {
		return v;
	}
	while (n < need) {
		if (n > SIZE_MAX / 2) {
			return NULL;
		}
		n *= 2;
	}
	void *p = reallocarray(v, n, size);
	if (p) {
		*cap = n;
	}
	return p;
}

/* Insert `p` at `pos` of a protobuf-c array of message pointers (*n long). The array is
 * heap memory of at least *n pointers; it grows by half when full, which
 * malloc_usable_size() tells (protobuf-c's arrays are exactly n long, ours may be longer;
 * either frees with free()). */
static int
insert_at(void ***v, size_t *n, size_t pos, void *p)
{
	void **a = *v;

	if (!a || malloc_usable_size(a) < (*n + 1) * sizeof(*a)) {
		a = reallocarray(a, *n + 1 + *n / 2, sizeof(*a));
		if (!a) {
			return -ENOMEM;
		}
	}
	memmove(a + pos + 1, a + pos, (*n - pos) * sizeof(*a));
	a[pos] = p;
	*v = a;
	(*n)++;
	return 0;
}

/* A CodeCount made here holds its code in the same block (one allocation, not two);
 * code_free() tells it from one protobuf-c unpacked, whose code is a block of its own. */
static Coord__V1__CodeCount *
code_new(const char *code)
{
	size_t len = strlen(code);
	Coord__V1__CodeCount *c = malloc(sizeof(*c) + len + 1);

	if (c) {
		coord__v1__code_count__init(c);
		c->code = memcpy(c + 1, code, len + 1);
	}
	return c;
}

static void
free_unknown(ProtobufCMessage *m)
{
	for (size_t i = 0; i < m->n_unknown_fields; i++) {
		free(m->unknown_fields[i].data);
	}
	free(m->unknown_fields);
}

static void
code_free(Coord__V1__CodeCount *c)
{
	if (c->code != (char *) (c + 1) && c->code != protobuf_c_empty_string) {
		free(c->code);
	}
	free_unknown(&c->base);
	free(c);
}

/* What coord__v1__digest_line__free_unpacked() does, for codes of either kind. */
static void
line_free(Coord__V1__DigestLine *l)
{
	for (int k = 0; k < N_LISTS; k++) {
		Coord__V1__CodeCount **v = *list_v(l, k);
		for (size_t i = 0; i < *list_n(l, k); i++) {
			code_free(v[i]);
		}
		free(v);
	}
	free_unknown(&l->base);
	free(l);
}

/* Dates before 1970 cannot pass validation; clamping them keeps them off BUCKET_ALL. */
static uint64_t
bucket_of(int64_t date)
{
	return date > 0 ? (uint64_t) (date / DIGEST_HOUR_MS) : 0;
}

/* `id` is at most ID_MAX bytes (checked by the callers). */
static size_t
make_key(uint8_t key[KEY_MAX], Coord__V1__ScopeKind kind, const char *id, uint64_t bucket)
{
	size_t len = strlen(id);

	key[0] = (uint8_t) kind;
	memcpy(key + 1, id, len);
	key[1 + len] = 0;
	put_be64(key + 2 + len, bucket);
	return len + 10;
}

static uint64_t
count_add(uint64_t v, uint64_t delta, int sign)
{
	if (sign > 0) {
		return v + delta;
	}
	return v > delta ? v - delta : 0;
}

static Coord__V1__Aggregate *
agg_new(void)
{
	Coord__V1__Aggregate *a = malloc(sizeof(*a));

	if (a) {
		coord__v1__aggregate__init(a);
	}
	return a;
}

/* What coord__v1__aggregate__free_unpacked() does, for lines edited here. */
static void
agg_free(Coord__V1__Aggregate *a)
{
	if (!a) {
		return;
	}
	for (size_t i = 0; i < a->n_lines; i++) {
		line_free(a->lines[i]);
	}
	free(a->lines);
	free_unknown(&a->base);
	free(a);
}

/* Lower bound of `s` in a sorted CodeCount list; *found tells whether it is there. */
static size_t
codes_find(Coord__V1__CodeCount *const *v, size_t n, const char *s, bool *found)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (strcmp(v[mid]->code, s) < 0) {
			lo = mid + 1;
		} else {
			hi = mid;
		}
	}
	*found = lo < n && strcmp(v[lo]->code, s) == 0;
	return lo;
}

/* Add or remove the codes `in` in list `k` of `l`. */
static int
codes_apply(Coord__V1__DigestLine *l, int k, Coord__V1__CodeCount *const *in, size_t n_in, int sign)
{
	size_t *n = list_n(l, k);
	Coord__V1__CodeCount ***v = list_v(l, k);

	for (size_t i = 0; i < n_in; i++) {
		bool found;
		size_t pos = codes_find(*v, *n, in[i]->code, &found);

		if (!found && (sign < 0 || in[i]->count == 0)) {
			continue;
		}
		if (!found) {
			Coord__V1__CodeCount *c = code_new(in[i]->code);
			if (!c || insert_at((void ***) v, n, pos, c) < 0) {
				free(c);
				return -ENOMEM;
			}
		}
		(*v)[pos]->count = count_add((*v)[pos]->count, in[i]->count, sign);
		if ((*v)[pos]->count == 0) {
			code_free((*v)[pos]);
			memmove(*v + pos, *v + pos + 1, (*n - pos - 1) * sizeof(**v));
			(*n)--;
		}
	}
	return 0;
}

static size_t
lines_find(const Coord__V1__Aggregate *a, int32_t category, int32_t kind, bool *found)
{
	size_t lo = 0, hi = a->n_lines;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const Coord__V1__DigestLine *l = a->lines[mid];
		if ((int32_t) l->category < category ||
		    ((int32_t) l->category == category && l->kind < kind)) {
			lo = mid + 1;
		} else {
			hi = mid;
		}
	}
	*found = lo < a->n_lines && (int32_t) a->lines[lo]->category == category &&
	         a->lines[lo]->kind == kind;
	return lo;
}

/*
 * Add (sign +1) or remove (sign -1) one DigestLine: a record's contribution, or a stored
 * line being merged. The only place aggregates change.
 */
static int
agg_apply(Coord__V1__Aggregate *a, const Coord__V1__DigestLine *in, int sign)
{
	bool found;
	size_t pos = lines_find(a, in->category, in->kind, &found);

	if (!found && (sign < 0 || in->count == 0)) {
		return 0;
	}
	if (!found) {
		Coord__V1__DigestLine *l = malloc(sizeof(*l));
		if (!l || insert_at((void ***) &a->lines, &a->n_lines, pos, l) < 0) {
			free(l);
			return -ENOMEM;
		}
		coord__v1__digest_line__init(l);
		l->category = in->category;
		l->kind = in->kind;
	}

	Coord__V1__DigestLine *l = a->lines[pos];
	l->count = count_add(l->count, in->count, sign);
	l->sum = sign > 0 ? l->sum + in->sum : l->sum - in->sum;
	for (int k = 0; k < N_LISTS; k++) {
		int r = codes_apply(l, k, *list_v(in, k), *list_n(in, k), sign);
		if (r < 0) {
			return r;
		}
	}
	if (l->count == 0) {
		line_free(l);
		memmove(a->lines + pos, a->lines + pos + 1,
		        (a->n_lines - pos - 1) * sizeof(*a->lines));
		a->n_lines--;
	}
	return 0;
}

/*
 * The stored value of an aggregate (the "digest" table, store schema 3; the top of this
 * file describes it). Decoding checks every byte first (cv_check()), bounded by the value's
 * length, then builds from checked bytes only: a damaged value is -EBADMSG, never a crash.
 */
#define CV_FORMAT 1
/* At most what one varint holds: 10 bytes. */

static int line_order(int32_t cat_a, int32_t kind_a, int32_t cat_b, int32_t kind_b);

static uint8_t *
put_varint(uint8_t *p, uint64_t v)
{
	return p + varint_put(p, v);
}

/* varint_get() over [p, end): the byte after the varint, or NULL. */
static const uint8_t *
get_varint(const uint8_t *p, const uint8_t *end, uint64_t *ret)
{
	size_t pos = 0;

	return p < end && varint_get(p, (size_t) (end - p), &pos, ret) ? p + pos : NULL;
}

/* A varint already checked by cv_check(). */
static uint64_t
cv_varint(const uint8_t **pp)
{
	const uint8_t *p = *pp;
	uint64_t v = 0;
	unsigned shift = 0;
	uint8_t b;

	do {
		b = *p++;
		v |= (uint64_t) (b & 0x7f) << shift;
		shift += 7;
	} while (b & 0x80);
	*pp = p;
	return v;
}

/* strcmp() order of two codes (no 0 bytes). */
static int
code_cmp(const uint8_t *a, size_t la, const uint8_t *b, size_t lb)
{
	int c = memcmp(a, b, la < lb ? la : lb);

	return c ? c : la < lb ? -1 : la > lb;
}

/* Check a whole stored value: format byte; codes unique, sorted, at most ID_MAX bytes and
 * no 0 byte; at least one line; lines unique and sorted by (category, kind), each with a
 * count; per list, codes in dictionary order, each with a count; nothing after. Returns 0
 * and *ret_n_codes, or -EBADMSG. */
static int
cv_check(const uint8_t *p, size_t n, uint32_t *ret_n_codes)
{
	const uint8_t *end = p + n;
	const uint8_t *prev = NULL;
	size_t prev_len = 0;
	uint64_t n_codes, n_lines;
	int32_t prev_cat = 0, prev_kind = 0;

	if (n < 1 || *p++ != CV_FORMAT) {
		return -EBADMSG;
	}
	p = get_varint(p, end, &n_codes);
	if (!p || n_codes > (uint64_t) (end - p) || n_codes > CODE_ID_MAX) {
		return -EBADMSG;
	}
	for (uint64_t i = 0; i < n_codes; i++) {
		if (p == end) {
			return -EBADMSG;
		}
		size_t len = *p++;
		if (len > ID_MAX || len > (size_t) (end - p) || (len && memchr(p, 0, len)) ||
		    (i > 0 && code_cmp(prev, prev_len, p, len) >= 0)) {
			return -EBADMSG;
		}
		prev = p;
		prev_len = len;
		p += len;
	}
	p = get_varint(p, end, &n_lines);
	if (!p || n_lines == 0 || n_lines > (uint64_t) (end - p)) {
		return -EBADMSG;
	}
	for (uint64_t i = 0; i < n_lines; i++) {
		uint64_t cat, kind, count, sum;
		p = get_varint(p, end, &cat);
		p = p ? get_varint(p, end, &kind) : NULL;
		p = p ? get_varint(p, end, &count) : NULL;
		p = p ? get_varint(p, end, &sum) : NULL;
		if (!p || cat > UINT32_MAX || kind > UINT32_MAX || count == 0 ||
		    (i > 0 && line_order(prev_cat, prev_kind, (int32_t) (uint32_t) cat,
		                         (int32_t) (uint32_t) kind) >= 0)) {
			return -EBADMSG;
		}
		prev_cat = (int32_t) (uint32_t) cat;
		prev_kind = (int32_t) (uint32_t) kind;
		for (int k = 0; k < N_LISTS; k++) {
			uint64_t m, next = 0;
			p = get_varint(p, end, &m);
			if (!p || m > n_codes) {
				return -EBADMSG;
			}
			for (uint64_t j = 0; j < m; j++) {
				uint64_t gap, c;
				p = get_varint(p, end, &gap);
				p = p ? get_varint(p, end, &c) : NULL;
				if (!p || next >= n_codes || gap >= n_codes - next || c == 0) {
					return -EBADMSG;
				}
				next += gap + 1;
			}
		}
	}
	if (p != end) {
		return -EBADMSG;
	}
	*ret_n_codes = (uint32_t) n_codes;
	return 0;
}

/* Past the format byte and the code count of a checked value. */
static const uint8_t *
cv_codes(const uint8_t *p)
{
	p++;
	(void) cv_varint(&p);
	return p;
}

static int
cbuf_reserve(struct cbuf *b, size_t more)
{
	uint8_t *p = grow(b->p, &b->cap, b->len + more, 1);

	if (!p) {
		return -ENOMEM;
	}
	b->p = p;
	return 0;
}

/* The most bytes a value of these sizes takes. */
static size_t
cv_bound(size_t n_dict, size_t n_lines, size_t n_codes)
{
	return 1 + VARINT_MAX + n_dict * (1 + ID_MAX) + VARINT_MAX +
	       n_lines * (4 * VARINT_MAX + N_LISTS * VARINT_MAX) + n_codes * 2 * VARINT_MAX;
}

static int
str_ptr_cmp(const void *a, const void *b)
{
	return strcmp(*(const char *const *) a, *(const char *const *) b);
}

/* Append the stored value of `a` (at least one line) to `out`. Returns 0, -EINVAL for a
 * code longer than ID_MAX, or -ENOMEM. */
static int
agg_encode(const Coord__V1__Aggregate *a, struct cbuf *out)
{
	size_t total = 0;
	size_t nd = 0;

	for (size_t i = 0; i < a->n_lines; i++) {
		for (int k = 0; k < N_LISTS; k++) {
			total += *list_n(a->lines[i], k);
		}
	}
	const char **dict = malloc((total + 1) * sizeof(*dict));
	if (!dict) {
		return -ENOMEM;
	}
	for (size_t i = 0; i < a->n_lines; i++) {
		for (int k = 0; k < N_LISTS; k++) {
			Coord__V1__CodeCount *const *v = *list_v(a->lines[i], k);
			for (size_t j = 0; j < *list_n(a->lines[i], k); j++) {
				dict[nd++] = v[j]->code ? v[j]->code : "";
			}
		}
	}
	qsort(dict, nd, sizeof(*dict), str_ptr_cmp);
	size_t u = 0;
	for (size_t i = 0; i < nd; i++) {
		if (u == 0 || strcmp(dict[u - 1], dict[i]) != 0) {
			dict[u++] = dict[i];
		}
	}
	nd = u;
	int r = cbuf_reserve(out, cv_bound(nd, a->n_lines, total));
	uint8_t *p = out->p + out->len;
	if (r == 0) {
		*p++ = CV_FORMAT;
		p = put_varint(p, nd);
	}
	for (size_t i = 0; r == 0 && i < nd; i++) {
		size_t len = strlen(dict[i]);
		if (len > ID_MAX) {
			r = -EINVAL;
			break;
		}
		*p++ = (uint8_t) len;
		memcpy(p, dict[i], len);
		p += len;
	}
	if (r == 0) {
		p = put_varint(p, a->n_lines);
	}
	for (size_t i = 0; r == 0 && i < a->n_lines; i++) {
		const Coord__V1__DigestLine *l = a->lines[i];
		p = put_varint(p, (uint32_t) l->category);
		p = put_varint(p, (uint32_t) l->kind);
		p = put_varint(p, l->count);
		p = put_varint(p, l->sum);
		for (int k = 0; k < N_LISTS; k++) {
			Coord__V1__CodeCount *const *v = *list_v(l, k);
			size_t next = 0;
			p = put_varint(p, *list_n(l, k));
			for (size_t j = 0; j < *list_n(l, k); j++) {
				const char *code = v[j]->code ? v[j]->code : "";
				const char **at =
				        bsearch(&code, dict, nd, sizeof(*dict), str_ptr_cmp);
				size_t idx = (size_t) (at - dict);
				p = put_varint(p, idx - next);
				p = put_varint(p, v[j]->count);
				next = idx + 1;
			}
		}
	}
	if (r == 0) {
		out->len = (size_t) (p - out->p);
	}
	free(dict);
	return r;
}

/* A CodeCount made here of `len` bytes. */
static Coord__V1__CodeCount *
code_new_len(const uint8_t *code, size_t len)
{
	Coord__V1__CodeCount *c = malloc(sizeof(*c) + len + 1);

	if (c) {
		coord__v1__code_count__init(c);
		c->code = memcpy(c + 1, code, len);
		c->code[len] = 0;
	}
	return c;
}

/* Decode a stored value into a new aggregate (free with agg_free()). Returns 0, -EBADMSG
 * or -ENOMEM. */
static int
agg_decode(const uint8_t *p, size_t n, Coord__V1__Aggregate **ret)
{
	uint32_t n_codes;
	int r = cv_check(p, n, &n_codes);

	if (r < 0) {
		return r;
	}
	const uint8_t **dict = malloc(((size_t) n_codes + 1) * sizeof(*dict));
	Coord__V1__Aggregate *a = agg_new();
	if (!dict || !a) {
		free(dict);
		agg_free(a);
		return -ENOMEM;
	}
	p = cv_codes(p);
	for (uint32_t i = 0; i < n_codes; i++) {
		dict[i] = p;
		p += 1 + *p;
	}
	size_t n_lines = (size_t) cv_varint(&p);
	a->lines = calloc(n_lines, sizeof(*a->lines));
	r = a->lines ? 0 : -ENOMEM;
	for (size_t i = 0; r == 0 && i < n_lines; i++) {
		Coord__V1__DigestLine *l = malloc(sizeof(*l));
		if (!l) {
			r = -ENOMEM;
			break;
		}
		coord__v1__digest_line__init(l);
		a->lines[a->n_lines++] = l;
		l->category = (Coord__V1__Category) (int32_t) (uint32_t) cv_varint(&p);
		l->kind = (int32_t) (uint32_t) cv_varint(&p);
		l->count = cv_varint(&p);
		l->sum = cv_varint(&p);
		for (int k = 0; r == 0 && k < N_LISTS; k++) {
			size_t m = (size_t) cv_varint(&p);
			size_t next = 0;
			if (m == 0) {
				continue;
			}
			Coord__V1__CodeCount **v = malloc(m * sizeof(*v));
			if (!v) {
				r = -ENOMEM;
				break;
			}
			*list_v(l, k) = v;
			for (size_t j = 0; j < m; j++) {
				size_t idx = next + (size_t) cv_varint(&p);
				uint64_t count = cv_varint(&p);
				next = idx + 1;
				v[j] = code_new_len(dict[idx] + 1, dict[idx][0]);
				if (!v[j]) {
					r = -ENOMEM;
					break;
				}
				v[j]->count = count;
				(*list_n(l, k))++;
			}
		}
	}
	free(dict);
	if (r < 0) {
		agg_free(a);
		return r;
	}
	*ret = a;
	return 0;
}

/* Merge a stored value into `a`. Returns 0, -EBADMSG or -ENOMEM. */
static int
agg_merge_packed(Coord__V1__Aggregate *a, const MDB_val *v)
{
	Coord__V1__Aggregate *pb = NULL;
	int r = agg_decode(v->mv_data, v->mv_size, &pb);

	for (size_t i = 0; r == 0 && i < pb->n_lines; i++) {
		r = agg_apply(a, pb->lines[i], +1);
	}
	agg_free(pb);
	return r;
}

int
digest_value_decode(const uint8_t *value, size_t len, Coord__V1__Aggregate **ret_agg)
{
	return agg_decode(value, len, ret_agg);
}

int
digest_value_encode(const Coord__V1__Aggregate *agg, uint8_t **ret_value, size_t *ret_len)
{
	struct cbuf b = {0};
	int r = agg->n_lines == 0 ? -EINVAL : agg_encode(agg, &b);

	if (r < 0) {
		free(b.p);
		return r;
	}
	*ret_value = b.p;
	*ret_len = b.len;
	return 0;
}

void
digest_value_free(Coord__V1__Aggregate *agg)
{
	agg_free(agg);
}

static void
add_language(struct digest_contribution *c, const char *tag)
{
	char primary[4];

	if (!tag || c->n_languages >= LANGS_MAX || iso_language_primary(tag, primary) < 0) {
		return;
	}
	for (size_t i = 0; i < c->n_languages; i++) {
		if (strcmp(c->languages[i], primary) == 0) {
			return;
		}
	}
	memcpy(c->languages[c->n_languages++], primary, sizeof(primary));
}

int
digest_contribution_of(const Coord__V1__Envelope *env, struct digest_contribution *ret)
{
	struct digest_contribution c;
	const char *country;
	char *const *tags = NULL;
	size_t n_tags = 0;
	const char *tag = NULL;

	/* The body pointers share one union: one check covers them all. */
	if (!env->event) {
		return -EINVAL;
	}
	switch (env->body_case) {
	case COORD__V1__ENVELOPE__BODY_EVENT: {
		const Coord__V1__Event *b = env->event;
		c = (struct digest_contribution){.category = COORD__V1__CATEGORY__CATEGORY_EVENT,
		                                 .kind = b->kind,
		                                 .date = b->date,
		                                 .sum = b->participants};
		country = b->country;
		tags = b->languages;
		n_tags = b->n_languages;
		break;
	}
	case COORD__V1__ENVELOPE__BODY_LETTER: {
		const Coord__V1__OutreachLetter *b = env->letter;
		c = (struct digest_contribution){.category = COORD__V1__CATEGORY__CATEGORY_LETTER,
		                                 .kind = b->recipient_kind,
		                                 .date = b->sent_at};
		country = b->recipient_country;
		tag = b->language;
		break;
	}
	case COORD__V1__ENVELOPE__BODY_STATEMENT: {
		const Coord__V1__Statement *b = env->statement;
		c = (struct digest_contribution){
		        .category = COORD__V1__CATEGORY__CATEGORY_STATEMENT, .date = b->date};
		country = b->country;
		tags = b->languages;
		n_tags = b->n_languages;
		break;
	}
	case COORD__V1__ENVELOPE__BODY_PETITION: {
		const Coord__V1__Petition *b = env->petition;
		c = (struct digest_contribution){.category = COORD__V1__CATEGORY__CATEGORY_PETITION,
		                                 .kind = b->target_kind,
		                                 .date = b->date,
		                                 .sum = b->signatures};
		country = b->country;
		tag = b->language;
		break;
	}
	case COORD__V1__ENVELOPE__BODY_MEDIA: {
		const Coord__V1__MediaReport *b = env->media;
		c = (struct digest_contribution){.category = COORD__V1__CATEGORY__CATEGORY_MEDIA,
		                                 .kind = b->kind,
		                                 .date = b->date,
		                                 .sum = b->local_sources};
		country = b->country;
		tag = b->language;
		break;
	}
	default:
		return -EINVAL;
	}
	/* Validation guarantees a two-letter country; anything else counts as none. */
	if (country && strlen(country) == 2) {
		memcpy(c.country, country, 3);
	}
	for (size_t i = 0; i < n_tags; i++) {
		add_language(&c, tags[i]);
	}
	add_language(&c, tag);
	*ret = c;
	return 0;
}

/* A contribution as a DigestLine, pointing into itself and into `council`. */
struct contribution_line {
	Coord__V1__DigestLine line;
	Coord__V1__CodeCount codes[2 + LANGS_MAX];
	Coord__V1__CodeCount *country[1];
	Coord__V1__CodeCount *languages[LANGS_MAX];
	Coord__V1__CodeCount *council[1];
};

static void
contribution_line(struct digest_contribution *c, const char *council, struct contribution_line *out)
{
	size_t n = 0;

	out->line = (Coord__V1__DigestLine) COORD__V1__DIGEST_LINE__INIT;
	out->line.category = c->category;
	out->line.kind = c->kind;
	out->line.count = 1;
	out->line.sum = c->sum;
	for (size_t i = 0; i < 2 + LANGS_MAX; i++) {
		out->codes[i] = (Coord__V1__CodeCount) COORD__V1__CODE_COUNT__INIT;
		out->codes[i].count = 1;
	}
	if (c->country[0]) {
		out->codes[n].code = c->country;
		out->country[0] = &out->codes[n++];
		out->line.n_countries = 1;
		out->line.countries = out->country;
	}
	for (size_t i = 0; i < c->n_languages; i++) {
		out->codes[n].code = c->languages[i];
		out->languages[i] = &out->codes[n++];
	}
	out->line.n_languages = c->n_languages;
	out->line.languages = out->languages;
	out->codes[n].code = (char *) council;
	out->council[0] = &out->codes[n];
	out->line.n_councils = 1;
	out->line.councils = out->council;
}

static uint64_t
hash_key(const uint8_t *key, size_t len)
{
	/* Eight bytes at a time (FNV-1a byte by byte was 3 % of the broker: the folder hashes
	 * six aggregate keys per contribution and one per aggregate), then mixed (fmix64) so
	 * that the low bits, which index the tables, depend on every byte. In-memory tables
	 * only: nothing stored depends on it. */
	uint64_t h = UINT64_C(0x9e3779b97f4a7c15) ^ len;
	uint64_t w;

	for (; len >= 8; key += 8, len -= 8) {
		memcpy(&w, key, 8);
		h = (h ^ w) * UINT64_C(0xff51afd7ed558ccd);
		h ^= h >> 29;
	}
	if (len > 0) {
		w = 0;
		memcpy(&w, key, len);
		h = (h ^ w) * UINT64_C(0xff51afd7ed558ccd);
	}
	h ^= h >> 33;
	h *= UINT64_C(0xc4ceb9fe1a85ec53);
	h ^= h >> 33;
	return h;
}

static struct entry **
cache_slot(struct cache *c, const uint8_t *key, size_t klen)
{
	size_t mask = c->nslots - 1;

	for (size_t i = hash_key(key, klen) & mask;; i = (i + 1) & mask) {
		struct entry *e = c->slots[i];
		if (!e || (e->klen == klen && memcmp(e->key, key, klen) == 0)) {
			return &c->slots[i];
		}
	}
}

static void
cache_rehash(struct cache *c)
{
	memset(c->slots, 0, c->nslots * sizeof(*c->slots));
	for (size_t i = 0; i < c->n; i++) {
		*cache_slot(c, c->list[i]->key, c->list[i]->klen) = c->list[i];
	}
}

static void
cache_clear(struct cache *c)
{
	for (size_t i = 0; i < c->n; i++) {
		agg_free(c->list[i]->agg);
		free(c->list[i]);
	}
	free(c->list);
	free(c->slots);
	free(c->touched);
	*c = (struct cache){0};
}

/* The aggregate under `key`, read from the table on first use, and marked touched. Returns
 * 0, an MDB_* code, or a negative errno. */
static int
cache_get(struct digest *d, MDB_txn *txn, const uint8_t *key, size_t klen,
          Coord__V1__Aggregate **ret_agg)
{
	struct cache *c = &d->cache;

	if ((c->n + 1) * 2 > c->nslots) {
		size_t nslots = c->nslots ? c->nslots * 2 : CACHE_SLOTS_MIN;
		struct entry **slots = calloc(nslots, sizeof(*slots));
		if (!slots) {
			return -ENOMEM;
		}
		free(c->slots);
		c->slots = slots;
		c->nslots = nslots;
		cache_rehash(c);
	}
	struct entry **slot = cache_slot(c, key, klen);
	struct entry **touched =
	        grow(c->touched, &c->cap_touched, c->n_touched + 1, sizeof(*touched));
	if (!touched) {
		return -ENOMEM;
	}
	c->touched = touched;
	if (*slot) {
		if (!(*slot)->touched) {
			(*slot)->touched = true;
			c->touched[c->n_touched++] = *slot;
		}
		*ret_agg = (*slot)->agg;
		return 0;
	}

	struct entry **list = grow(c->list, &c->cap, c->n + 1, sizeof(*list));
	if (!list) {
		return -ENOMEM;
	}
	c->list = list;
	struct entry *e = calloc(1, sizeof(*e));
	if (!e) {
		return -ENOMEM;
	}
	e->touched = true;
	e->klen = klen;
	memcpy(e->key, key, klen);

	MDB_val k = {.mv_size = klen, .mv_data = e->key};
	MDB_val v;
	int rc = d->recount ? MDB_NOTFOUND : mdb_get(txn, d->dbi, &k, &v);
	if (rc == 0) {
		/* One that does not decode is corruption. */
		rc = agg_decode(v.mv_data, v.mv_size, &e->agg);
		rc = rc == -EBADMSG ? MDB_CORRUPTED : rc;
	} else if (rc == MDB_NOTFOUND) {
		e->agg = agg_new();
		rc = e->agg ? 0 : -ENOMEM;
	}
	if (rc != 0) {
		free(e);
		return rc;
	}
	c->list[c->n++] = e;
	c->touched[c->n_touched++] = e;
	*slot = e;
	*ret_agg = e->agg;
	return 0;
}

static int key_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen);

/* Whether the aggregate `key` already holds the log entry `at`: then a reader must not
 * apply it there. */
static bool
mark_covers(const struct mark *m, uint64_t at, const uint8_t *key, size_t klen)
{
	return m->set && at <= m->last_key && key_cmp(key, klen, m->key, m->klen) <= 0;
}

/* Read the install mark of the log table `dbi` (0: none) in `txn`. Returns 0 or -EBADMSG
 * (a mark that does not decode), -EIO. */
static int
mark_read(MDB_txn *txn, MDB_dbi dbi, struct mark *ret)
{
	MDB_val k = {.mv_size = MARK_KEY_LEN, .mv_data = (void *) (const uint8_t[]){0}};
	MDB_val v;
	int rc = dbi ? mdb_get(txn, dbi, &k, &v) : MDB_NOTFOUND;

	*ret = (struct mark){0};
	if (rc == MDB_NOTFOUND) {
		return 0;
	}
	if (rc != 0) {
		return -EIO;
	}
	const uint8_t *p = v.mv_data;
	if (v.mv_size < 1 + 8 + 1 || v.mv_size > 1 + 8 + KEY_MAX || p[0] != 0) {
		return -EBADMSG;
	}
	ret->set = true;
	ret->last_key = get_be64(p + 1);
	ret->klen = (uint8_t) (v.mv_size - 9);
	memcpy(ret->key, p + 9, ret->klen);
	return 0;
}

static int
mark_write(MDB_txn *txn, MDB_dbi dbi, uint64_t last_key, const uint8_t *key, size_t klen)
{
	uint8_t buf[1 + 8 + KEY_MAX];
	MDB_val k = {.mv_size = MARK_KEY_LEN, .mv_data = (void *) (const uint8_t[]){0}};
	MDB_val v = {.mv_size = 9 + klen, .mv_data = buf};

	buf[0] = 0;
	put_be64(buf + 1, last_key);
	memcpy(buf + 9, key, klen);
	return mdb_put(txn, dbi, &k, &v, 0);
}

/* The six aggregates a contribution goes to, in the order apply_contribution() visits
 * them: (all, the council's, the country's scope) x (its hour, the whole campaign). */
struct targets {
	size_t n;
	Coord__V1__ScopeKind kind[6];
	const char *id[6];
	uint64_t bucket[6];
};

static void
targets_of(const char *council, const struct digest_contribution *c, struct targets *t)
{
	const Coord__V1__ScopeKind kinds[] = {COORD__V1__SCOPE_KIND__SCOPE_KIND_ALL,
	                                      COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNCIL,
	                                      COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNTRY};
	const char *ids[] = {"", council, c->country};

	t->n = 0;
	for (size_t s = 0; s < 3; s++) {
		if (s > 0 && ids[s][0] == '\0') {
			continue;
		}
		for (size_t b = 0; b < 2; b++) {
			t->kind[t->n] = kinds[s];
			t->id[t->n] = ids[s];
			t->bucket[t->n] = b == 0 ? bucket_of(c->date) : BUCKET_ALL;
			t->n++;
		}
	}
}

/* apply_contribution() of the log entry `at`, but not to the aggregates that the install
 * mark `m` (may be NULL) says hold it already. */
static int
apply_logged(struct digest *d, MDB_txn *txn, const char *council, struct digest_contribution *c,
             int sign, const struct mark *m, uint64_t at)
{
	struct contribution_line cl;
	struct targets t;

	contribution_line(c, council, &cl);
	targets_of(council, c, &t);
	for (size_t i = 0; i < t.n; i++) {
		uint8_t key[KEY_MAX];
		size_t klen = make_key(key, t.kind[i], t.id[i], t.bucket[i]);
		Coord__V1__Aggregate *agg;
		if (m && mark_covers(m, at, key, klen)) {
			continue;
		}
		int r = cache_get(d, txn, key, klen, &agg);

		if (r == 0) {
			r = agg_apply(agg, &cl.line, sign);
		}
		if (r != 0) {
			return r;
		}
	}
	return 0;
}

/* Add (+1) or remove (-1) a contribution of `council` to the six aggregates, in the
 * cache. Returns 0, an MDB_* code or a negative errno. */
static int
apply_contribution(struct digest *d, MDB_txn *txn, const char *council,
                   struct digest_contribution *c, int sign)
{
	return apply_logged(d, txn, council, c, sign, NULL, 0);
}

/* Add (+1) or remove (-1) what the Envelope in `buf` contributes to the six aggregates. */
static int
apply_envelope(struct digest *d, MDB_txn *txn, const char *council, const uint8_t *buf, size_t len,
               int sign)
{
	Coord__V1__Envelope *env = coord__v1__envelope__unpack(NULL, len, buf);
	struct digest_contribution c;

	if (!env) {
		return -EBADMSG; /* store_scan_latest() passes no such item as live */
	}
	int r = digest_contribution_of(env, &c);
	coord__v1__envelope__free_unpacked(env, NULL);
	if (r < 0) {
		return 0; /* nothing countable */
	}
	return apply_contribution(d, txn, council, &c, sign);
}

/* ----------------------------------------------------------------------------------------- */
/* The log of contributions not yet folded into the aggregates */

/* One contribution as the log holds it. */
struct logged {
	uint64_t at; /* the key of its log entry */
	int sign;
	char council[ID_MAX + 1];
	struct digest_contribution c;
};

/* Longest encoding of a contribution: sign, council, category, kind, date, country, sum,
 * languages. */
#define LOGGED_MAX (1 + 1 + ID_MAX + 1 + 5 + 10 + 2 + 10 + 1 + 16 * 4)

static size_t
log_encode(const char *council, const struct digest_contribution *c, int sign,
           uint8_t out[LOGGED_MAX])
{
	uint8_t *p = out;
	size_t len = strlen(council);

	*p++ = sign > 0 ? 1 : 2;
	*p++ = (uint8_t) len;
	memcpy(p, council, len);
	p += len;
	*p++ = (uint8_t) c->category;
	p = put_varint(p, (uint32_t) c->kind);
	p = put_varint(p, (uint64_t) c->date);
	*p++ = (uint8_t) c->country[0];
	*p++ = (uint8_t) (c->country[0] ? c->country[1] : 0);
	p = put_varint(p, c->sum);
	*p++ = (uint8_t) c->n_languages;
	for (size_t i = 0; i < c->n_languages; i++) {
		size_t ll = strlen(c->languages[i]);
		*p++ = (uint8_t) ll;
		memcpy(p, c->languages[i], ll);
		p += ll;
	}
	return (size_t) (p - out);
}

/* Decode the contribution at *pp (advanced past it). Returns 0 or -EBADMSG. */
static int
log_decode(const uint8_t **pp, const uint8_t *end, struct logged *ret)
{
	const uint8_t *p = *pp;
	uint64_t kind, date, sum;
	struct logged l = {0};

	if (end - p < 2 || (p[0] != 1 && p[0] != 2) || p[1] > ID_MAX || end - p < 3 + p[1]) {
		return -EBADMSG;
	}
	l.sign = p[0] == 1 ? +1 : -1;
	memcpy(l.council, p + 2, p[1]);
	p += 2 + p[1];
	l.c.category = (Coord__V1__Category) *p++;
	p = get_varint(p, end, &kind);
	p = p ? get_varint(p, end, &date) : NULL;
	if (!p || end - p < 2) {
		return -EBADMSG;
	}
	l.c.kind = (int32_t) (uint32_t) kind;
	l.c.date = (int64_t) date;
	l.c.country[0] = (char) p[0];
	l.c.country[1] = (char) p[1];
	p += 2;
	p = get_varint(p, end, &sum);
	if (!p || p >= end || *p > LANGS_MAX) {
		return -EBADMSG;
	}
	l.c.sum = sum;
	l.c.n_languages = *p++;
	for (size_t i = 0; i < l.c.n_languages; i++) {
		if (p >= end || *p > 3 || end - p < 1 + *p) {
			return -EBADMSG;
		}
		memcpy(l.c.languages[i], p + 1, *p);
		p += 1 + *p;
	}
	*ret = l;
	*pp = p;
	return 0;
}

/* Called by log_each() for each logged contribution. Returns 0 to go on, or an error. */
typedef int log_fn(void *data, const struct logged *l);

/*
 * Visit the contributions of the log table in `txn`, oldest first, or newest first with
 * `reverse`. A missing table (dbi 0) is an empty log. Returns 0, the callback's error,
 * -EBADMSG for a value that does not decode, -ENOMEM or -EIO.
 */
static int
log_each(MDB_txn *txn, MDB_dbi dbi, bool reverse, log_fn *fn, void *data)
{
	MDB_cursor *cur;
	MDB_val k, v;
	struct logged *tmp = NULL;
	size_t cap = 0;
	int r = 0;

	if (dbi == 0) {
		return 0;
	}
	if (mdb_cursor_open(txn, dbi, &cur) != 0) {
		return -EIO;
	}
	int rc = mdb_cursor_get(cur, &k, &v, reverse ? MDB_LAST : MDB_FIRST);
	for (; rc == 0 && r == 0; rc = mdb_cursor_get(cur, &k, &v, reverse ? MDB_PREV : MDB_NEXT)) {
		const uint8_t *p = v.mv_data;
		const uint8_t *end = p + v.mv_size;
		uint64_t at = k.mv_size == 8 ? get_be64(k.mv_data) : 0;
		size_t n = 0;

		if (k.mv_size == MARK_KEY_LEN) {
			continue; /* the install mark (mark_read()) */
		}
		while (p < end && r == 0) {
			struct logged *t = grow(tmp, &cap, n + 1, sizeof(*t));
			if (!t) {
				r = -ENOMEM;
				break;
			}
			tmp = t;
			r = log_decode(&p, end, &tmp[n]);
			tmp[n++].at = at;
		}
		for (size_t i = 0; i < n && r == 0; i++) {
			r = fn(data, &tmp[reverse ? n - 1 - i : i]);
		}
	}
	mdb_cursor_close(cur);
	free(tmp);
	if (r == 0 && rc != MDB_NOTFOUND) {
		r = -EIO;
	}
	return r;
}

/* Add a scope to `pending` unless it is there: a hash set of its entries (index + 1 in
 * pend_slots, at most half full), emptied with the batch. A batch touches the same few
 * dozen scopes again and again; sorting them all (once per contribution) took 2 % of the
 * broker. */
static int
pending_scope(struct digest *d, Coord__V1__ScopeKind kind, const char *id, size_t len)
{
	struct scope_set *p = &d->pending;

	if ((p->n + 1) * 2 > d->pend_nslots) {
		size_t nslots = d->pend_nslots ? d->pend_nslots * 2 : 128;
		uint32_t *slots = calloc(nslots, sizeof(*slots));
		if (!slots) {
			return -ENOMEM;
		}
		for (size_t i = 0; i < p->n; i++) {
			size_t j = hash_key((const uint8_t *) p->v[i].id, strlen(p->v[i].id)) +
			           (size_t) p->v[i].kind;
			while (slots[j & (nslots - 1)]) {
				j++;
			}
			slots[j & (nslots - 1)] = (uint32_t) i + 1;
		}
		free(d->pend_slots);
		d->pend_slots = slots;
		d->pend_nslots = nslots;
	}
	size_t mask = d->pend_nslots - 1;
	size_t j = hash_key((const uint8_t *) id, len) + (size_t) kind;
	for (; d->pend_slots[j & mask]; j++) {
		const struct digest_scope *e = &p->v[d->pend_slots[j & mask] - 1];
		if (e->kind == kind && strncmp(e->id, id, len) == 0 && e->id[len] == '\0') {
			return 0;
		}
	}
	struct digest_scope *v = grow(p->v, &p->cap, p->n + 1, sizeof(*v));
	if (!v) {
		return -ENOMEM;
	}
	p->v = v;
	v[p->n] = (struct digest_scope){.kind = kind};
	memcpy(v[p->n].id, id, len);
	v[p->n].id[len] = '\0';
	d->pend_slots[j & mask] = (uint32_t) ++p->n;
	return 0;
}

/* Scopes touched by a contribution go to `pending`, once each. */
static int
add_pending(struct digest *d, const char *council, const struct digest_contribution *c)
{
	int r = pending_scope(d, COORD__V1__SCOPE_KIND__SCOPE_KIND_ALL, "", 0);

	if (r == 0) {
		r = pending_scope(d, COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNCIL, council,
		                  strlen(council));
	}
	if (r == 0 && c->country[0]) {
		r = pending_scope(d, COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNTRY, c->country,
		                  strlen(c->country));
	}
	return r;
}

/* Append what an Envelope contributes (sign +1 or -1) to the batch's log value: from
 * `decoded` when the caller unpacked it already, else from the bytes. */
static int
log_envelope(struct digest *d, const char *council, const uint8_t *buf, size_t len,
             const Coord__V1__Envelope *decoded, int sign)
{
	Coord__V1__Envelope *env = decoded ? NULL : coord__v1__envelope__unpack(NULL, len, buf);
	struct digest_contribution c;

	if (!decoded && !env) {
		/* The new revision was validated at ingest; the old one comes from the store. */
		return sign > 0 ? -EBADMSG : MDB_CORRUPTED;
	}
	int r = digest_contribution_of(decoded ? decoded : env, &c);
	if (env) {
		coord__v1__envelope__free_unpacked(env, NULL);
	}
	if (r < 0) {
		return 0; /* nothing countable */
	}
	uint8_t *b = grow(d->log_buf, &d->log_cap, d->log_len + LOGGED_MAX, 1);
	if (!b) {
		return -ENOMEM;
	}
	d->log_buf = b;
	d->log_len += log_encode(council, &c, sign, b + d->log_len);
	d->batch_logged++;
	return add_pending(d, council, &c);
}

static int
on_record(void *data, MDB_txn *txn, const struct store_change *change)
{
	struct digest *d = data;
	const struct store_record *rec = change->rec;
	int r = 0;

	if (strlen(rec->council) > ID_MAX) {
		return -EINVAL;
	}
	if (d->log_len == 0) {
		d->log_key = rec->seq;
	}
	if (change->old_envelope && !change->old_retracted) {
		r = log_envelope(d, rec->council, change->old_envelope, change->old_envelope_len,
		                 NULL, -1);
	}
	if (r == 0 && !rec->retraction) {
		r = log_envelope(d, rec->council, rec->envelope, rec->envelope_len, rec->decoded,
		                 +1);
	}
	return r;
}

static int
scope_cmp(const void *a, const void *b)
{
	const struct digest_scope *x = a;
	const struct digest_scope *y = b;

	if (x->kind != y->kind) {
		return x->kind < y->kind ? -1 : 1;
	}
	return strcmp(x->id, y->id);
}

/* Sort `s` and drop duplicates. */
static void
scope_set_unique(struct scope_set *s)
{
	if (s->n < 2) {
		return;
	}
	qsort(s->v, s->n, sizeof(*s->v), scope_cmp);
	size_t n = 1;
	for (size_t i = 1; i < s->n; i++) {
		if (scope_cmp(&s->v[i], &s->v[n - 1]) != 0) {
			s->v[n++] = s->v[i];
		}
	}
	s->n = n;
}

static int
write_entry(struct digest *d, MDB_txn *txn, struct entry *e)
{
	MDB_val k = {.mv_size = e->klen, .mv_data = (void *) e->key};

	e->packed = 0;
	if (e->agg->n_lines == 0) {
		int rc = mdb_del(txn, d->dbi, &k, NULL);
		return rc == MDB_NOTFOUND ? 0 : rc;
	}

	struct cbuf b = {0};
	int rc = agg_encode(e->agg, &b);
	MDB_val v = {.mv_size = b.len, .mv_data = b.p};
	if (rc == 0) {
		rc = mdb_put(txn, d->dbi, &k, &v, 0);
	}
	if (rc == 0) {
		e->packed = b.len;
	}
	free(b.p);
	return rc;
}

/* Make room in `dirty` for the batch's scopes (`pending`), so that batch_committed, which
 * cannot fail, only copies them in. */
static int
reserve_dirty(struct digest *d)
{
	struct scope_set *p = &d->pending;
	int r = 0;

	scope_set_unique(p);
	(void) pthread_mutex_lock(&d->lock);
	struct digest_scope *v = grow(d->dirty.v, &d->dirty.cap, d->dirty.n + p->n, sizeof(*v));
	if (v) {
		d->dirty.v = v;
	} else if (p->n > 0) {
		r = -ENOMEM;
	}
	(void) pthread_mutex_unlock(&d->lock);
	return r;
}

static int
fold_one(void *data, const struct logged *l)
{
	struct fold *f = data;
	struct digest_contribution c = l->c;

	return apply_logged(f->d, f->txn, l->council, &c, l->sign, f->mark, l->at);
}

/* ----------------------------------------------------------------------------------------- */
/* Compact aggregates and the fold (writer and folder thread; see the top of this file) */

/* Intern a code of `len` bytes: *ret_id is its id. Returns 0 or -ENOMEM. */
static int
intern(struct interner *in, const char *s, size_t len, uint32_t *ret_id)
{
	if (len > ID_MAX) {
		return -EBADMSG;
	}
	uint64_t h = hash_key((const uint8_t *) s, len);
	size_t mask = in->nslots - 1;
	size_t i = 0;

	if (in->nslots > 0) {
		for (i = h & mask; in->slots[i]; i = (i + 1) & mask) {
			uint32_t id = in->slots[i] - 1;
			if (in->len[id] == len && memcmp(in->str[id], s, len) == 0) {
				*ret_id = id;
				return 0;
			}
		}
	}
	if (in->n >= CODE_ID_MAX) {
		return -ENOMEM;
	}
	if ((in->n + 1) * 2 > in->nslots) {
		size_t nslots = in->nslots ? in->nslots * 2 : 64;
		uint32_t *slots = calloc(nslots, sizeof(*slots));
		if (!slots) {
			return -ENOMEM;
		}
		for (uint32_t id = 0; id < in->n; id++) {
			size_t j =
			        hash_key((const uint8_t *) in->str[id], in->len[id]) & (nslots - 1);
			while (slots[j]) {
				j = (j + 1) & (nslots - 1);
			}
			slots[j] = id + 1;
		}
		free(in->slots);
		in->slots = slots;
		in->nslots = nslots;
		mask = nslots - 1;
		for (i = h & mask; in->slots[i]; i = (i + 1) & mask) {
		}
	}
	if (in->n == in->cap) {
		size_t cap = in->cap ? in->cap * 2 : 64;
		char(*str)[ID_MAX + 1] = reallocarray(in->str, cap, sizeof(*str));
		if (str) {
			in->str = str;
		}
		uint8_t *l = str ? reallocarray(in->len, cap, 1) : NULL;
		if (l) {
			in->len = l;
		}
		uint32_t *rank = l ? reallocarray(in->rank, cap, sizeof(*rank)) : NULL;
		if (rank) {
			in->rank = rank;
		}
		uint32_t *order = rank ? reallocarray(in->order, cap, sizeof(*order)) : NULL;
		if (!order) {
			return -ENOMEM;
		}
		in->order = order;
		in->cap = (uint32_t) cap;
	}
	uint32_t id = in->n;
	memcpy(in->str[id], s, len);
	in->str[id][len] = '\0';
	in->len[id] = (uint8_t) len;
	/* Its place among the others, in byte order (strcmp's, the CodeCount lists' order). */
	size_t lo = 0, hi = in->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (strcmp(in->str[in->order[mid]], in->str[id]) < 0) {
			lo = mid + 1;
		} else {
			hi = mid;
		}
	}
	memmove(in->order + lo + 1, in->order + lo, (in->n - lo) * sizeof(*in->order));
	in->order[lo] = id;
	in->n++;
	for (size_t r = lo; r < in->n; r++) {
		in->rank[in->order[r]] = (uint32_t) r;
	}
	in->slots[i] = id + 1;
	*ret_id = id;
	return 0;
}

static void
interner_free(struct interner *in)
{
	free(in->str);
	free(in->len);
	free(in->rank);
	free(in->order);
	free(in->slots);
	*in = (struct interner){0};
}

static struct ccode *
cagg_codes(const struct cagg *a)
{
	return (struct ccode *) (void *) ((uint8_t *) (uintptr_t) a + sizeof(*a) +
	                                  a->n_lines * sizeof(struct cline));
}

static uint32_t
cline_codes(const struct cline *l)
{
	return l->n[0] + l->n[1] + l->n[2];
}

/* The line being built in the scratch arrays of `d`, and its codes. */
static int
scratch_line(struct digest *d, const struct cline *l)
{
	struct cline *v = grow(d->sl, &d->sl_cap, d->sl_n + 1, sizeof(*v));

	if (!v) {
		return -ENOMEM;
	}
	d->sl = v;
	v[d->sl_n++] = *l;
	return 0;
}

static int
scratch_code(struct digest *d, uint32_t id, uint64_t count)
{
	struct ccode *v = grow(d->sc, &d->sc_cap, d->sc_n + 1, sizeof(*v));

	if (!v) {
		return -ENOMEM;
	}
	d->sc = v;
	v[d->sc_n++] = (struct ccode){.id = id, .count = count};
	return 0;
}

/* The aggregate in the scratch arrays as one block, or NULL for none (no lines). The block
 * is `reuse` (whose content has been read) when it is large enough and not twice too
 * large, else a new one. */
static int
scratch_agg(struct digest *d, struct cagg *reuse, struct cagg **ret)
{
	*ret = NULL;
	if (d->sl_n == 0) {
		return 0;
	}
	size_t size = sizeof(struct cagg) + d->sl_n * sizeof(struct cline) +
	              d->sc_n * sizeof(struct ccode);
	size_t have = reuse ? malloc_usable_size(reuse) : 0;
	struct cagg *a = have >= size && have / 2 <= size ? reuse : malloc(size);
	if (!a) {
		return -ENOMEM;
	}
	a->n_lines = (uint32_t) d->sl_n;
	a->n_codes = (uint32_t) d->sc_n;
	memcpy(a->lines, d->sl, d->sl_n * sizeof(struct cline));
	memcpy(cagg_codes(a), d->sc, d->sc_n * sizeof(struct ccode));
	*ret = a;
	return 0;
}

/* Decode a stored value into a block, its codes interned. Returns 0, -EBADMSG or -ENOMEM.
 * The dictionary is in byte order and so in `rank` order: the codes come out in this
 * module's order as they are. */
static int
cagg_decode(struct digest *d, const uint8_t *p, size_t n, struct cagg **ret)
{
	uint32_t n_codes;
	int r = cv_check(p, n, &n_codes);

	if (r < 0) {
		return r;
	}
	uint32_t *ids = grow(d->dict_ids, &d->dict_cap, (size_t) n_codes + 1, sizeof(*ids));
	if (!ids) {
		return -ENOMEM;
	}
	d->dict_ids = ids;
	p = cv_codes(p);
	for (uint32_t i = 0; r == 0 && i < n_codes; i++) {
		r = intern(&d->codes, (const char *) p + 1, *p, &ids[i]);
		p += 1 + *p;
	}
	size_t n_lines = r == 0 ? (size_t) cv_varint(&p) : 0;
	d->sl_n = d->sc_n = 0;
	for (size_t i = 0; r == 0 && i < n_lines; i++) {
		struct cline l = {0};
		l.category = (int32_t) (uint32_t) cv_varint(&p);
		l.kind = (int32_t) (uint32_t) cv_varint(&p);
		l.count = cv_varint(&p);
		l.sum = cv_varint(&p);
		for (int k = 0; r == 0 && k < N_LISTS; k++) {
			uint32_t m = (uint32_t) cv_varint(&p);
			size_t next = 0;
			for (uint32_t j = 0; r == 0 && j < m; j++) {
				size_t idx = next + (size_t) cv_varint(&p);
				uint64_t count = cv_varint(&p);
				next = idx + 1;
				r = scratch_code(d, ids[idx], count);
			}
			l.n[k] = m;
		}
		if (r == 0) {
			r = scratch_line(d, &l);
		}
	}
	return r == 0 ? scratch_agg(d, NULL, ret) : r;
}

static int
u32_cmp(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *) a;
	uint32_t y = *(const uint32_t *) b;

	return x < y ? -1 : x > y;
}

#define POS_NONE UINT32_MAX

/*
 * The stored value of `a` into d->enc (replaced), its dictionary the codes it uses in rank
 * order: what agg_encode() makes of the same aggregate. Returns 0 or -ENOMEM.
 *
 * The codes of an aggregate repeat (a country in every line that counts it), and there are
 * few distinct ones (the interner holds every code seen, a few hundred), so each distinct
 * rank is marked once in d->enc_pos (by rank: POS_NONE, or its index in the dictionary),
 * the distinct ranks are put in order (a scan of all ranks when they are many, else a sort
 * of the few), and every code's dictionary index is then one look-up. enc_pos is left all
 * POS_NONE again.
 */
static int
cagg_encode(struct digest *d, const struct interner *in, const struct cagg *a)
{
	const struct ccode *c = cagg_codes(a);
	uint32_t *keys =
	        grow(d->enc_keys, &d->enc_keys_cap, (size_t) a->n_codes + 1, sizeof(*keys));
	size_t nd = 0;

	if (!keys) {
		return -ENOMEM;
	}
	d->enc_keys = keys;
	if (d->enc_pos_cap < in->n) {
		size_t cap = d->enc_pos_cap;
		uint32_t *pos = grow(d->enc_pos, &cap, in->n, sizeof(*pos));
		if (!pos) {
			return -ENOMEM;
		}
		for (size_t i = d->enc_pos_cap; i < cap; i++) {
			pos[i] = POS_NONE;
		}
		d->enc_pos = pos;
		d->enc_pos_cap = cap;
	}
	uint32_t *pos = d->enc_pos;
	for (uint32_t i = 0; i < a->n_codes; i++) {
		uint32_t rank = in->rank[c[i].id];
		if (pos[rank] == POS_NONE) {
			pos[rank] = 0;
			keys[nd++] = rank;
		}
	}
	if (nd * 16 >= in->n) {
		size_t k = 0;
		for (uint32_t rank = 0; rank < in->n; rank++) {
			if (pos[rank] != POS_NONE) {
				keys[k++] = rank;
			}
		}
	} else {
		qsort(keys, nd, sizeof(*keys), u32_cmp);
	}
	for (size_t i = 0; i < nd; i++) {
		pos[keys[i]] = (uint32_t) i;
	}

	int r = 0;
	d->enc.len = 0;
	if (cbuf_reserve(&d->enc, cv_bound(nd, a->n_lines, a->n_codes)) < 0) {
		r = -ENOMEM;
		goto out;
	}
	uint8_t *p = d->enc.p;
	*p++ = CV_FORMAT;
	p = put_varint(p, nd);
	for (size_t i = 0; i < nd; i++) {
		uint32_t id = in->order[keys[i]];
		*p++ = in->len[id];
		memcpy(p, in->str[id], in->len[id]);
		p += in->len[id];
	}
	p = put_varint(p, a->n_lines);
	for (uint32_t i = 0; i < a->n_lines; i++) {
		const struct cline *l = &a->lines[i];
		p = put_varint(p, (uint32_t) l->category);
		p = put_varint(p, (uint32_t) l->kind);
		p = put_varint(p, l->count);
		p = put_varint(p, l->sum);
		for (unsigned k = 0; k < N_LISTS; k++) {
			size_t next = 0;
			p = put_varint(p, l->n[k]);
			for (uint32_t j = 0; j < l->n[k]; j++, c++) {
				/* The dictionary index, relative to the previous code's plus one
				 * (a list is in rank order). */
				size_t at = pos[in->rank[c->id]];
				p = put_varint(p, at - next);
				p = put_varint(p, c->count);
				next = at + 1;
			}
		}
	}
	d->enc.len = (size_t) (p - d->enc.p);
out:
	for (size_t i = 0; i < nd; i++) {
		pos[keys[i]] = POS_NONE;
	}
	return r;
}

/* A count changed by a delta (a negative one is -n modulo 2^64): count_add()'s rule. */
static uint64_t
count_delta(uint64_t v, uint64_t delta)
{
	if ((int64_t) delta >= 0) {
		return v + delta;
	}
	return v > -delta ? v + delta : 0;
}

static int
line_order(int32_t cat_a, int32_t kind_a, int32_t cat_b, int32_t kind_b)
{
	if (cat_a != cat_b) {
		return cat_a < cat_b ? -1 : 1;
	}
	return kind_a < kind_b ? -1 : kind_a > kind_b;
}

/*
 * The aggregate `a` (NULL: none) with the deltas of `de` applied, as a block (NULL when no
 * line is left; `a` itself when it fits, else a new one): one merge of two sorted
 * sequences. Exactly what agg_apply() makes of
 * the same contributions one by one: the deltas are their sums, and with a table that
 * counts every live record no count is ever asked to go below zero along the way, so the
 * order does not matter (a line or code not stored takes only a positive delta, as
 * agg_apply() adds nothing on a removal there).
 */
static int
cagg_apply(struct digest *d, struct cagg *a, const struct dentry *de, struct cagg **ret)
{
	const uint32_t *rank = d->codes.rank;
	const struct ccode *ac = a ? cagg_codes(a) : NULL;
	uint32_t nl = a ? a->n_lines : 0;
	uint32_t i = 0, j = 0;
	int r = 0;

	d->sl_n = d->sc_n = 0;
	while (r == 0 && (i < nl || j < de->n)) {
		const struct cline *al = i < nl ? &a->lines[i] : NULL;
		const struct dline *dl = j < de->n ? &de->lines[j] : NULL;
		int c = !dl   ? -1
		        : !al ? 1
		              : line_order(al->category, al->kind, dl->category, dl->kind);
		if (c < 0) {
			/* Untouched: copied. */
			uint32_t nc = cline_codes(al);
			r = scratch_line(d, al);
			for (uint32_t x = 0; r == 0 && x < nc; x++) {
				r = scratch_code(d, ac[x].id, ac[x].count);
			}
			ac += nc;
			i++;
			continue;
		}
		j++;
		if (c > 0 && (int64_t) dl->count <= 0) {
			continue; /* nothing to remove from (see count_add()) */
		}
		struct cline l = {.category = dl->category, .kind = dl->kind};
		if (c == 0) {
			l.count = al->count;
			l.sum = al->sum;
		}
		l.count = count_delta(l.count, dl->count);
		l.sum += dl->sum;
		size_t mark = d->sc_n;
		const struct ccode *x = ac;
		const struct ccode *y = dl->c;
		for (unsigned k = 0; r == 0 && k < N_LISTS; k++) {
			uint32_t na = c == 0 ? al->n[k] : 0;
			uint32_t nd = dl->n[k];
			uint32_t xi = 0, yi = 0;
			while (r == 0 && (xi < na || yi < nd)) {
				uint64_t v;
				uint32_t id;
				if (yi == nd || (xi < na && rank[x[xi].id] < rank[y[yi].id])) {
					v = x[xi].count;
					id = x[xi++].id;
				} else if (xi == na || rank[y[yi].id] < rank[x[xi].id]) {
					v = (int64_t) y[yi].count > 0 ? y[yi].count : 0;
					id = y[yi++].id;
				} else {
					v = count_delta(x[xi].count, y[yi++].count);
					id = x[xi++].id;
				}
				if (v != 0) {
					r = scratch_code(d, id, v);
					l.n[k]++;
				}
			}
			x += na;
			y += nd;
		}
		if (c == 0) {
			ac += cline_codes(al);
			i++;
		}
		if (r == 0 && l.count == 0) {
			d->sc_n = mark; /* the line goes, with its codes */
		} else if (r == 0) {
			r = scratch_line(d, &l);
		}
	}
	return r == 0 ? scratch_agg(d, a, ret) : r;
}

/* Bump allocation for the deltas of one fold, in mapped chunks returned to the system
 * when the fold ends. */
#define ARENA_CHUNK ((size_t) 1 << 20)
#define ARENA_KEEP ((size_t) 16 << 20)
#define ORDER_KEEP ((size_t) 1 << 16) /* entries of `order` kept between folds */
struct arena_chunk {
	struct arena_chunk *next;
	size_t used, cap;
};

static void *
arena_alloc(struct deltas *t, size_t n)
{
	struct arena_chunk *c = t->arena;

	n = (n + 15) & ~(size_t) 15;
	if (!c || c->cap - c->used < n) {
		size_t cap = n + 64 > ARENA_CHUNK ? n + 64 : ARENA_CHUNK;
		if (cap == ARENA_CHUNK && t->spare) {
			c = t->spare;
			t->spare = c->next;
			t->spare_bytes -= c->cap;
		} else {
			void *m = mmap(NULL, cap, PROT_READ | PROT_WRITE,
			               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			if (m == MAP_FAILED) {
				return NULL;
			}
			c = m;
			c->cap = cap;
		}
		c->next = t->arena;
		c->used = 64;
		t->arena = c;
	}
	void *p = (uint8_t *) c + c->used;
	c->used += n;
	return p;
}

static void
arena_free(struct arena_chunk **head)
{
	while (*head) {
		struct arena_chunk *c = *head;
		*head = c->next;
		(void) munmap(c, c->cap);
	}
}

/* Forget the deltas of a fold; keep up to ARENA_KEEP bytes of chunks for the next one, or
 * none with `all`. */
static void
deltas_reset(struct deltas *t, bool all)
{
	while (t->arena) {
		struct arena_chunk *c = t->arena;
		t->arena = c->next;
		if (!all && c->cap == ARENA_CHUNK && t->spare_bytes < ARENA_KEEP) {
			c->next = t->spare;
			t->spare = c;
			t->spare_bytes += c->cap;
		} else {
			(void) munmap(c, c->cap);
		}
	}
	if (all) {
		arena_free(&t->spare);
		t->spare_bytes = 0;
	}
	free(t->slots);
	free(t->list);
	t->slots = NULL;
	t->list = NULL;
	t->nslots = t->n = t->cap = 0;
	if (all || t->cap_order > ORDER_KEEP) {
		free(t->order);
		t->order = NULL;
		t->cap_order = 0;
	}
	t->n_order = 0;
	t->mark = (struct mark){0};
}

/* The delta entry of `key`, made on first use. */
static int
deltas_entry(struct deltas *t, const uint8_t *key, size_t klen, struct dentry **ret)
{
	if ((t->n + 1) * 2 > t->nslots) {
		size_t nslots = t->nslots ? t->nslots * 2 : 1024;
		struct dentry **slots = calloc(nslots, sizeof(*slots));
		if (!slots) {
			return -ENOMEM;
		}
		for (size_t i = 0; i < t->n; i++) {
			size_t j = hash_key(t->list[i]->key, t->list[i]->klen) & (nslots - 1);
			while (slots[j]) {
				j = (j + 1) & (nslots - 1);
			}
			slots[j] = t->list[i];
		}
		free(t->slots);
		t->slots = slots;
		t->nslots = nslots;
	}
	size_t mask = t->nslots - 1;
	size_t i = hash_key(key, klen) & mask;
	for (; t->slots[i]; i = (i + 1) & mask) {
		struct dentry *e = t->slots[i];
		if (e->klen == klen && memcmp(e->key, key, klen) == 0) {
			*ret = e;
			return 0;
		}
	}
	struct dentry **list = grow(t->list, &t->cap, t->n + 1, sizeof(*list));
	if (!list) {
		return -ENOMEM;
	}
	t->list = list;
	struct dentry *e = arena_alloc(t, sizeof(*e));
	if (!e) {
		return -ENOMEM;
	}
	*e = (struct dentry){.klen = (uint8_t) klen};
	memcpy(e->key, key, klen);
	t->list[t->n++] = e;
	t->slots[i] = e;
	*ret = e;
	return 0;
}

/* One contribution as a fold adds it: count +-1, the sum, and its codes (list, id). */
struct dcontrib {
	int32_t category, kind;
	uint64_t one, sum;
	size_t n;
	unsigned list[2 + LANGS_MAX];
	uint32_t id[2 + LANGS_MAX];
};

/* Make room for one more code in `l` (its array comes from the arena). */
static int
dline_reserve(struct deltas *t, struct dline *l)
{
	uint32_t n = l->n[0] + l->n[1] + l->n[2];

	if (n < l->cap) {
		return 0;
	}
	uint32_t cap = l->cap ? l->cap * 2 : 4;
	struct ccode *c = arena_alloc(t, cap * sizeof(*c));
	if (!c) {
		return -ENOMEM;
	}
	if (n > 0) {
		memcpy(c, l->c, n * sizeof(*c));
	}
	l->c = c;
	l->cap = cap;
	return 0;
}

/* Add the contribution `x` to the deltas of one aggregate. */
static int
dentry_add(struct deltas *t, const uint32_t *rank, struct dentry *e, const struct dcontrib *x)
{
	size_t lo = 0, hi = e->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (line_order(e->lines[mid].category, e->lines[mid].kind, x->category, x->kind) <
		    0) {
			lo = mid + 1;
		} else {
			hi = mid;
		}
	}
	if (lo == e->n || e->lines[lo].category != x->category || e->lines[lo].kind != x->kind) {
		if (e->n == e->cap) {
			uint32_t cap = e->cap ? e->cap * 2 : 2;
			struct dline *v = arena_alloc(t, cap * sizeof(*v));
			if (!v) {
				return -ENOMEM;
			}
			if (e->n > 0) {
				memcpy(v, e->lines, e->n * sizeof(*v));
			}
			e->lines = v;
			e->cap = cap;
		}
		memmove(e->lines + lo + 1, e->lines + lo, (e->n - lo) * sizeof(*e->lines));
		e->lines[lo] = (struct dline){.category = x->category, .kind = x->kind};
		e->n++;
	}

	struct dline *l = &e->lines[lo];
	l->count += x->one;
	l->sum += x->sum;
	for (size_t i = 0; i < x->n; i++) {
		unsigned k = x->list[i];
		uint32_t off = k == 0 ? 0 : k == 1 ? l->n[0] : l->n[0] + l->n[1];
		uint32_t r = rank[x->id[i]];
		size_t a = 0, b = l->n[k];
		while (a < b) {
			size_t mid = a + (b - a) / 2;
			if (rank[l->c[off + mid].id] < r) {
				a = mid + 1;
			} else {
				b = mid;
			}
		}
		if (a < l->n[k] && l->c[off + a].id == x->id[i]) {
			l->c[off + a].count += x->one;
			continue;
		}
		if (dline_reserve(t, l) < 0) {
			return -ENOMEM;
		}
		uint32_t total = l->n[0] + l->n[1] + l->n[2];
		memmove(l->c + off + a + 1, l->c + off + a, (total - off - a) * sizeof(*l->c));
		l->c[off + a] = (struct ccode){.id = x->id[i], .count = x->one};
		l->n[k]++;
	}
	return 0;
}

/* Add a logged contribution to the deltas of its six aggregates (but those the install mark
 * says hold it already). */
static int
deltas_add(struct digest *d, const struct logged *l)
{
	struct dcontrib x = {.category = (int32_t) l->c.category,
	                     .kind = l->c.kind,
	                     .one = l->sign > 0 ? 1 : (uint64_t) -1,
	                     .sum = l->sign > 0 ? l->c.sum : -l->c.sum};
	int r = 0;

	if (l->c.country[0]) {
		x.list[x.n] = 0;
		r = intern(&d->codes, l->c.country, strlen(l->c.country), &x.id[x.n++]);
	}
	for (size_t i = 0; r == 0 && i < l->c.n_languages; i++) {
		x.list[x.n] = 1;
		r = intern(&d->codes, l->c.languages[i], strlen(l->c.languages[i]), &x.id[x.n++]);
	}
	if (r == 0) {
		x.list[x.n] = 2;
		r = intern(&d->codes, l->council, strlen(l->council), &x.id[x.n++]);
	}

	struct targets tg;
	targets_of(l->council, &l->c, &tg);
	for (size_t i = 0; r == 0 && i < tg.n; i++) {
		uint8_t key[KEY_MAX];
		size_t klen = make_key(key, tg.kind[i], tg.id[i], tg.bucket[i]);
		struct dentry *e;
		if (mark_covers(&d->deltas.mark, l->at, key, klen)) {
			continue;
		}
		r = deltas_entry(&d->deltas, key, klen, &e);
		if (r == 0) {
			r = dentry_add(&d->deltas, d->codes.rank, e, &x);
		}
	}
	return r;
}

static int
pending_add(struct deltas *t, uint64_t bucket, uint64_t entry, const uint8_t *at,
            const uint8_t *end)
{
	struct pending *v = grow(t->order, &t->cap_order, t->n_order + 1, sizeof(*v));

	if (!v) {
		return -ENOMEM;
	}
	t->order = v;
	v[t->n_order++] = (struct pending){
	        .bucket = bucket, .entry = entry, .at = at, .len = (size_t) (end - at)};
	return 0;
}

static int
pending_cmp(const void *a, const void *b)
{
	const struct pending *x = a;
	const struct pending *y = b;

	return x->bucket < y->bucket ? -1 : x->bucket > y->bucket;
}

/* Add the snapshot's contributions hour by hour: the hour aggregates of one hour (all, each
 * council, each country) are then used one after another while in the CPU's caches, which
 * the log's arrival order (dates spread over weeks) never gives. The sums do not depend on
 * the order. */
static int
deltas_add_pending(struct digest *d)
{
	struct deltas *t = &d->deltas;
	int r = 0;

	qsort(t->order, t->n_order, sizeof(*t->order), pending_cmp);
	for (size_t i = 0; r == 0 && i < t->n_order; i++) {
		const uint8_t *p = t->order[i].at;
		struct logged l;
		r = log_decode(&p, p + t->order[i].len, &l);
		if (r == 0) {
			l.at = t->order[i].entry;
			r = deltas_add(d, &l);
		}
	}
	return r;
}

/*
 * The deltas of the contributions in the log table (in `txn`, which must not write until
 * they are made: they are read in place), their number and the key of the newest entry.
 * Every contribution, except where the install mark says an aggregate holds it already;
 * with `finish` and a mark, only the entries up to the mark's last_key (what the
 * aggregates after the mark's key lack of the fold being installed), and *ret_last_key is
 * that last_key. Returns 0, MDB_CORRUPTED for a log that does not decode, -ENOMEM or -EIO.
 */
static int
deltas_of_log(struct digest *d, MDB_txn *txn, bool finish, size_t *ret_folded,
              uint64_t *ret_last_key)
{
	struct mark *mk = &d->deltas.mark;
	MDB_cursor *cur;
	MDB_val k, v;
	int r = mark_read(txn, d->log_dbi, mk);

	*ret_folded = 0;
	*ret_last_key = 0;
	if (r < 0) {
		return r == -EBADMSG ? MDB_CORRUPTED : r;
	}
	if (mdb_cursor_open(txn, d->log_dbi, &cur) != 0) {
		return -EIO;
	}
	int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	for (; rc == 0 && r == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		const uint8_t *p = v.mv_data;
		const uint8_t *end = p + v.mv_size;

		if (k.mv_size == MARK_KEY_LEN) {
			continue;
		}
		if (k.mv_size != 8) {
			r = -EBADMSG;
			break;
		}
		uint64_t entry = get_be64(k.mv_data);
		if (finish && mk->set && entry > mk->last_key) {
			break;
		}
		while (r == 0 && p < end) {
			const uint8_t *at = p;
			struct logged l;
			r = log_decode(&p, end, &l);
			if (r == 0) {
				r = pending_add(&d->deltas, bucket_of(l.c.date), entry, at, p);
				(*ret_folded)++;
			}
		}
		*ret_last_key = entry;
	}
	if (finish && mk->set) {
		*ret_last_key = mk->last_key;
	}
	mdb_cursor_close(cur);
	if (r == 0 && rc != MDB_NOTFOUND) {
		r = -EIO;
	}
	if (r == 0) {
		r = deltas_add_pending(d);
	}
	return r == -EBADMSG ? MDB_CORRUPTED : r;
}

/* LMDB's default order of keys: bytes, then the shorter first. */
static int
key_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
	int c = memcmp(a, b, alen < blen ? alen : blen);

	if (c != 0) {
		return c;
	}
	return alen < blen ? -1 : alen > blen;
}

static int
dentry_key_cmp(const void *a, const void *b)
{
	const struct dentry *x = *(const struct dentry *const *) a;
	const struct dentry *y = *(const struct dentry *const *) b;

	return key_cmp(x->key, x->klen, y->key, y->klen);
}

static bool
key_is_whole_campaign(const uint8_t *key, size_t klen)
{
	return get_be64(key + klen - 8) == BUCKET_ALL;
}

static size_t
centry_bytes(const struct centry *e)
{
	return sizeof(*e) + 2 * sizeof(e) + (e->agg ? malloc_usable_size(e->agg) : 0);
}

static void
ccache_clear(struct ccache *c)
{
	for (size_t i = 0; i < c->n; i++) {
		free(c->list[i]->agg);
		free(c->list[i]);
	}
	free(c->list);
	free(c->slots);
	c->list = NULL;
	c->slots = NULL;
	c->n = c->cap = c->nslots = 0;
	c->bytes = 0;
}

static struct centry **
ccache_slot(struct ccache *c, const uint8_t *key, size_t klen)
{
	size_t mask = c->nslots - 1;

	for (size_t i = hash_key(key, klen) & mask;; i = (i + 1) & mask) {
		struct centry *e = c->slots[i];
		if (!e || (e->klen == klen && memcmp(e->key, key, klen) == 0)) {
			return &c->slots[i];
		}
	}
}

static void
ccache_rehash(struct ccache *c)
{
	memset(c->slots, 0, c->nslots * sizeof(*c->slots));
	for (size_t i = 0; i < c->n; i++) {
		*ccache_slot(c, c->list[i]->key, c->list[i]->klen) = c->list[i];
	}
}

/* Eviction order: hour buckets before whole-campaign aggregates, then least recently
 * used (by fold) first. */
static int
evict_order(const void *a, const void *b)
{
	const struct centry *x = *(const struct centry *const *) a;
	const struct centry *y = *(const struct centry *const *) b;
	bool wx = key_is_whole_campaign(x->key, x->klen);
	bool wy = key_is_whole_campaign(y->key, y->klen);

	if (wx != wy) {
		return wx ? 1 : -1;
	}
	return x->used < y->used ? -1 : x->used > y->used;
}

/* Over the limit: drop aggregates (each is read again from the table when next needed)
 * until the cache holds three quarters of it. Any entry may go: what the fold made of it
 * is packed already, and the next fold reads the table after this one's install. */
static void
ccache_evict(struct ccache *c)
{
	size_t keep = c->limit / 4 * 3;

	qsort(c->list, c->n, sizeof(*c->list), evict_order);
	size_t i = 0;
	for (; i < c->n && c->bytes > keep; i++) {
		c->bytes -= centry_bytes(c->list[i]);
		free(c->list[i]->agg);
		free(c->list[i]);
	}
	memmove(c->list, c->list + i, (c->n - i) * sizeof(*c->list));
	c->n -= i;
	c->evicted += i;
	ccache_rehash(c);
}

/* The cached aggregate of `key`, read from the table (in `txn`) on a miss. Returns 0, an
 * MDB_* code or a negative errno. */
static int
ccache_get(struct digest *d, MDB_txn *txn, const uint8_t *key, size_t klen, struct centry **ret)
{
	struct ccache *c = &d->ccache;

	if ((c->n + 1) * 2 > c->nslots) {
		size_t nslots = c->nslots ? c->nslots * 2 : CACHE_SLOTS_MIN;
		struct centry **slots = calloc(nslots, sizeof(*slots));
		if (!slots) {
			return -ENOMEM;
		}
		free(c->slots);
		c->slots = slots;
		c->nslots = nslots;
		ccache_rehash(c);
	}
	struct centry **slot = ccache_slot(c, key, klen);
	if (*slot) {
		*ret = *slot;
		return 0;
	}
	struct centry **list = grow(c->list, &c->cap, c->n + 1, sizeof(*list));
	if (!list) {
		return -ENOMEM;
	}
	c->list = list;
	struct centry *e = calloc(1, sizeof(*e));
	if (!e) {
		return -ENOMEM;
	}
	e->klen = (uint8_t) klen;
	memcpy(e->key, key, klen);
	MDB_val k = {.mv_size = klen, .mv_data = e->key};
	MDB_val v;
	int rc = mdb_get(txn, d->dbi, &k, &v);
	if (rc == 0) {
		/* One that does not decode is corruption (or, indistinguishably, no memory). */
		rc = cagg_decode(d, v.mv_data, v.mv_size, &e->agg);
		rc = rc == -EBADMSG ? MDB_CORRUPTED : rc;
	} else if (rc == MDB_NOTFOUND) {
		rc = 0;
	}
	if (rc != 0) {
		free(e);
		return rc;
	}
	c->misses++;
	c->list[c->n++] = e;
	c->bytes += centry_bytes(e);
	*slot = e;
	*ret = e;
	return 0;
}

/* Where a fold's results go: the key, and the new aggregate (NULL: delete it). */
typedef int emit_fn(void *data, const uint8_t *key, size_t klen, const struct interner *in,
                    const struct cagg *a);

/* Apply the deltas to the aggregates (through the cache), in key order, and emit each
 * result. The deltas are left for deltas_reset(). Returns 0, an MDB_* code or -errno. */
static int
deltas_fold(struct digest *d, MDB_txn *txn, emit_fn *emit, void *data)
{
	struct deltas *t = &d->deltas;
	struct ccache *c = &d->ccache;
	int r = 0;

	qsort(t->list, t->n, sizeof(*t->list), dentry_key_cmp);
	c->fold++;
	for (size_t i = 0; r == 0 && i < t->n; i++) {
		const struct dentry *de = t->list[i];
		struct centry *e = NULL;
		struct cagg *a = NULL;
		size_t before = 0;

		r = ccache_get(d, txn, de->key, de->klen, &e);
		if (r == 0) {
			before = centry_bytes(e);
			r = cagg_apply(d, e->agg, de, &a);
		}
		if (r == 0) {
			r = emit(data, de->key, de->klen, &d->codes, a);
		}
		if (r != 0) {
			/* A reused block holds what was not written: the callers then empty the
			 * cache (folder_fold(), and batch_abort for the writer). */
			if (!e || a != e->agg) {
				free(a);
			}
			break;
		}
		if (a != e->agg) {
			free(e->agg);
		}
		e->agg = a;
		e->used = c->fold;
		c->bytes = c->bytes - before + centry_bytes(e);
		if (c->bytes > c->limit) {
			ccache_evict(c);
		}
	}
	return r;
}

/* emit_fn writing into the transaction `data`. */
static int
emit_txn(void *data, const uint8_t *key, size_t klen, const struct interner *in,
         const struct cagg *a)
{
	struct fold *f = data;
	MDB_val k = {.mv_size = klen, .mv_data = (void *) key};

	if (!a) {
		int rc = mdb_del(f->txn, f->d->dbi, &k, NULL);
		return rc == MDB_NOTFOUND ? 0 : rc;
	}
	int r = cagg_encode(f->d, in, a);
	if (r < 0) {
		return r;
	}
	MDB_val v = {.mv_size = f->d->enc.len};
	int rc = mdb_put(f->txn, f->d->dbi, &k, &v, MDB_RESERVE);
	if (rc == 0) {
		memcpy(v.mv_data, f->d->enc.p, f->d->enc.len);
	}
	return rc;
}

/* Fold the whole log into the aggregates, write back every aggregate that changed, and
 * empty the log. Inside the batch's transaction. */
static int
fold_log(struct digest *d, MDB_txn *txn)
{
	struct fold f = {.d = d, .txn = txn};
	size_t folded;
	uint64_t last_key;
	int r = deltas_of_log(d, txn, false, &folded, &last_key);

	if (r == 0) {
		r = deltas_fold(d, txn, emit_txn, &f);
	}
	deltas_reset(&d->deltas, true);
	if (r != 0) {
		return r;
	}
	return mdb_drop(txn, d->log_dbi, 0);
}

/* Free what the write side of `d` holds. */
static void
write_side_free(struct digest *d)
{
	ccache_clear(&d->ccache);
	deltas_reset(&d->deltas, true);
	interner_free(&d->codes);
	free(d->sl);
	free(d->sc);
	free(d->dict_ids);
	free(d->enc_keys);
	free(d->enc_pos);
	free(d->enc.p);
	d->sl = NULL;
	d->sc = NULL;
	d->dict_ids = NULL;
	d->enc_keys = NULL;
	d->enc_pos = NULL;
	d->enc_pos_cap = 0;
	d->enc = (struct cbuf){0};
	d->sl_n = d->sl_cap = d->sc_n = d->sc_cap = 0;
	d->dict_cap = d->enc_keys_cap = 0;
}

/* ----------------------------------------------------------------------------------------- */
/* The folder thread */

static enum folder_state
folder_state(struct folder *fo)
{
	(void) pthread_mutex_lock(&fo->mu);
	enum folder_state st = fo->state;
	(void) pthread_mutex_unlock(&fo->mu);
	return st;
}

/* Whether the writer folds the log itself in this batch (`total` contributions, the
 * batch's included): always with a limit of 0 or without the folder; with it, only when the
 * log has grown to FOLD_HERE_FACTOR times the limit (the folder failing or far behind), and
 * never while the folder works or waits to be installed. */
#define FOLD_HERE_FACTOR 8
static bool
fold_here(struct digest *d, size_t total)
{
	if (total <= d->log_limit) {
		return false;
	}
	if (!d->background || d->log_limit == 0) {
		return true;
	}
	if (total / FOLD_HERE_FACTOR <= d->log_limit) {
		return false;
	}
	return !d->folder || folder_state(d->folder) == FOLDER_IDLE;
}

/* emit_fn appending to the folder's result `out`. */
static int
emit_out(void *data, const uint8_t *key, size_t klen, const struct interner *in,
         const struct cagg *a)
{
	struct folder *fo = data;
	int r = a ? cagg_encode(&fo->bg, in, a) : 0;
	size_t vlen = a ? fo->bg.enc.len : 0;

	if (r < 0) {
		return r;
	}
	uint8_t *b = grow(fo->out, &fo->out_cap, fo->out_len + 1 + klen + 4 + vlen, 1);

	if (!b) {
		return -ENOMEM;
	}
	fo->out = b;
	b += fo->out_len;
	*b++ = (uint8_t) klen;
	memcpy(b, key, klen);
	b += klen;
	memcpy(b, &(uint32_t){(uint32_t) vlen}, 4);
	b += 4;
	if (vlen > 0) {
		memcpy(b, fo->bg.enc.p, vlen);
	}
	fo->out_len += 1 + klen + 4 + vlen;
	return 0;
}

/* Fold every entry of the committed log into the aggregates (through the folder's cache)
 * and pack each aggregate that changed into `out`, in key order (so the install walks the
 * table in order). Folder thread, WORKING. Returns 0, an MDB_* code or -errno. */
static int
folder_fold(struct folder *fo)
{
	struct digest *bg = &fo->bg;
	MDB_txn *txn;
	int r;

	if (fo->stale) {
		ccache_clear(&bg->ccache);
		fo->stale = false;
	}
	fo->out_len = 0;
	fo->folded = 0;
	fo->last_key = 0;
	r = store_read_begin(fo->d->store, &txn);
	if (r < 0) {
		return r;
	}
	r = deltas_of_log(bg, txn, true, &fo->folded, &fo->last_key);
	if (r == 0) {
		r = deltas_fold(bg, txn, emit_out, fo);
	}
	store_read_end(fo->d->store, txn);
	deltas_reset(&bg->deltas, false);
	if (r != 0) {
		ccache_clear(&bg->ccache); /* partly folded: read again from the table next time */
	}
	return r;
}

static void *
folder_main(void *data)
{
	struct folder *fo = data;

	(void) pthread_mutex_lock(&fo->mu);
	for (;;) {
		while (!fo->stop && fo->state != FOLDER_WORKING) {
			(void) pthread_cond_wait(&fo->cv, &fo->mu);
		}
		if (fo->stop) {
			break;
		}
		(void) pthread_mutex_unlock(&fo->mu);
		int r = folder_fold(fo);
		(void) pthread_mutex_lock(&fo->mu);
		if (r == 0 && fo->folded > 0) {
			fo->state = FOLDER_READY;
			fo->folds++;
		} else {
			fo->state = FOLDER_IDLE; /* asked again after the next batch */
			fo->fold_errors += r != 0;
		}
	}
	(void) pthread_mutex_unlock(&fo->mu);
	return NULL;
}

/* Ask the folder (started on first use) to fold the committed log, unless it is busy.
 * Writer thread, after a commit. A folder that cannot start leaves folding to the writer
 * (background off). */
static void
folder_ask(struct digest *d)
{
	struct folder *fo = d->folder;

	if (!fo) {
		fo = calloc(1, sizeof(*fo));
		if (!fo) {
			return;
		}
		fo->d = d;
		fo->bg.store = d->store;
		fo->bg.dbi = d->dbi;
		fo->bg.log_dbi = d->log_dbi;
		fo->bg.ccache.limit = d->ccache.limit;
		if (pthread_mutex_init(&fo->mu, NULL) != 0) {
			free(fo);
			return;
		}
		if (pthread_cond_init(&fo->cv, NULL) != 0 ||
		    pthread_create(&fo->thread, NULL, folder_main, fo) != 0) {
			(void) pthread_cond_destroy(&fo->cv);
			(void) pthread_mutex_destroy(&fo->mu);
			free(fo);
			d->background = false;
			return;
		}
		d->folder = fo;
	}
	(void) pthread_mutex_lock(&fo->mu);
	if (fo->state == FOLDER_IDLE) {
		fo->state = FOLDER_WORKING;
		(void) pthread_cond_signal(&fo->cv);
	}
	(void) pthread_mutex_unlock(&fo->mu);
}

/*
 * What a batch installs of a fold, in aggregates (a value of INSTALL_VALUE_UNIT bytes
 * counts as one more: what an aggregate costs is mostly the put and its page, then its
 * bytes): install_slice, plus INSTALL_PER_CONTRIBUTION per contribution the batch logs (a
 * fold writes ~1.6 aggregates per contribution folded with varied records, so the installs
 * keep pace with the log at any batch size). Never more: when they fall behind (a big
 * table, a fast preload), the log grows and the next fold takes more contributions for at
 * most the whole table, which is the equilibrium; multiplying the slice by the log's excess
 * let one preload batch install 39,000 aggregates (17 MB).
 */
#define INSTALL_VALUE_UNIT 512
#define INSTALL_PER_CONTRIBUTION 2
static size_t
install_budget(const struct digest *d)
{
	if (d->install_slice == 0) {
		return SIZE_MAX;
	}
	return d->install_slice + INSTALL_PER_CONTRIBUTION * d->batch_logged;
}

/* Write the next slice of the folder's result (at least one aggregate, about
 * install_budget() of them) into the batch's transaction. When more is left, the install
 * mark says how far it went (the batch is then `batch_slices`); with the last slice the
 * mark and the log entries folded are deleted (`batch_installs`). Writer thread, READY.
 * Returns 0 or an MDB_* code. */
static int
folder_install(struct digest *d, MDB_txn *txn)
{
	struct folder *fo = d->folder;
	const uint8_t *p = fo->out + fo->install_pos;
	const uint8_t *end = fo->out + fo->out_len;
	const uint8_t *last = NULL;
	size_t budget = install_budget(d);
	size_t written = 0;
	int rc = 0;

	while (rc == 0 && p < end && (written == 0 || written < budget)) {
		MDB_val k = {.mv_size = p[0], .mv_data = (void *) (p + 1)};
		uint32_t vlen;

		last = p;
		memcpy(&vlen, p + 1 + p[0], 4);
		p += 1 + p[0] + 4;
		if (vlen == 0) {
			rc = mdb_del(txn, d->dbi, &k, NULL);
			rc = rc == MDB_NOTFOUND ? 0 : rc;
		} else {
			MDB_val v = {.mv_size = vlen, .mv_data = (void *) p};
			rc = mdb_put(txn, d->dbi, &k, &v, 0);
		}
		p += vlen;
		written += 1 + vlen / INSTALL_VALUE_UNIT;
	}
	if (rc == 0 && p < end) {
		d->batch_slices = true;
		d->install_next = (size_t) (p - fo->out);
		return mark_write(txn, d->log_dbi, fo->last_key, last + 1, last[0]);
	}
	MDB_cursor *cur;
	if (rc == 0) {
		rc = mdb_cursor_open(txn, d->log_dbi, &cur);
	}
	if (rc != 0) {
		return rc;
	}
	MDB_val k, v;
	while ((rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)) == 0) {
		/* The mark first (its key sorts before every entry), then the entries folded. */
		if (k.mv_size != MARK_KEY_LEN &&
		    (k.mv_size != 8 || get_be64(k.mv_data) > fo->last_key)) {
			break;
		}
		rc = mdb_cursor_del(cur, 0);
		if (rc != 0) {
			break;
		}
	}
	mdb_cursor_close(cur);
	if (rc != 0 && rc != MDB_NOTFOUND) {
		return rc;
	}
	d->batch_folded = fo->folded;
	d->batch_installs = true;
	return 0;
}

/* The batch that installed the result committed: the folder may fold again. */
static void
folder_installed(struct folder *fo)
{
	(void) pthread_mutex_lock(&fo->mu);
	fo->state = FOLDER_IDLE;
	fo->out_len = 0;
	fo->install_pos = 0;
	if (fo->out_cap > OUT_KEEP_BYTES) {
		/* A large result (a fold of a big store rewrites most of the table) is not kept. */
		free(fo->out);
		fo->out = NULL;
		fo->out_cap = 0;
	}
	(void) pthread_mutex_unlock(&fo->mu);
}

/* Stop and free the folder; a result not installed is dropped (its entries are still in
 * the log, which is just as exact). */
static void
folder_free(struct folder *fo)
{
	if (!fo) {
		return;
	}
	(void) pthread_mutex_lock(&fo->mu);
	fo->stop = true;
	(void) pthread_cond_signal(&fo->cv);
	(void) pthread_mutex_unlock(&fo->mu);
	(void) pthread_join(fo->thread, NULL);
	write_side_free(&fo->bg);
	free(fo->out);
	(void) pthread_cond_destroy(&fo->cv);
	(void) pthread_mutex_destroy(&fo->mu);
	free(fo);
}

static int
on_batch_end(void *data, MDB_txn *txn)
{
	struct digest *d = data;
	int rc = 0;

	if (d->log_len > 0) {
		uint8_t key[8];
		MDB_val k = {.mv_size = sizeof(key), .mv_data = key};
		MDB_val v = {.mv_size = d->log_len, .mv_data = d->log_buf};

		put_be64(key, d->log_key);
		rc = mdb_put(txn, d->log_dbi, &k, &v, MDB_APPEND);
	}
	if (rc == 0 && d->folder && folder_state(d->folder) == FOLDER_READY) {
		rc = folder_install(d, txn);
	} else if (rc == 0 && fold_here(d, d->logged + d->batch_logged)) {
		if (d->folder && folder_state(d->folder) == FOLDER_IDLE) {
			/* The folder does not use its cache while IDLE, and the writer alone makes
			 * it WORKING: its aggregates are freed here, so that the two caches never
			 * hold more than the limit together. */
			ccache_clear(&d->folder->bg.ccache);
		}
		if (d->folder) {
			d->folder->stale = true;
		}
		rc = fold_log(d, txn);
		d->batch_folded = d->logged + d->batch_logged;
	}
	if (rc != 0) {
		return rc;
	}
	int r = reserve_dirty(d);
	if (r < 0) {
		return r;
	}
	/* The writer keeps no aggregates between batches: the folder changes the table. */
	ccache_clear(&d->ccache);
	return 0;
}

/* Forget what the batch did (it is aborted, or committed and accounted for). */
static void
batch_reset(struct digest *d)
{
	d->log_len = 0;
	d->batch_logged = 0;
	d->batch_folded = 0;
	d->batch_installs = false;
	d->batch_slices = false;
	if (d->pending.n > 0) {
		memset(d->pend_slots, 0, d->pend_nslots * sizeof(*d->pend_slots));
	}
	d->pending.n = 0;
}

static void
on_batch_abort(void *data)
{
	struct digest *d = data;

	ccache_clear(&d->ccache);
	deltas_reset(&d->deltas, true);
	batch_reset(d);
}

static void
on_batch_committed(void *data)
{
	struct digest *d = data;
	struct scope_set *p = &d->pending;

	/* Atomic for digest_log_state() on the loop thread (the writer alone writes it). */
	__atomic_store_n(&d->logged, d->logged + d->batch_logged - d->batch_folded,
	                 __ATOMIC_RELAXED);
	if (d->batch_installs) {
		folder_installed(d->folder);
	} else if (d->batch_slices) {
		d->folder->install_pos = d->install_next;
	}
	if (d->background && d->log_limit > 0 && d->logged > d->log_limit) {
		folder_ask(d);
	}
	if (p->n > 0) {
		(void) pthread_mutex_lock(&d->lock);
		struct scope_set *s = &d->dirty;
		assert(s->n + p->n <= s->cap);
		memcpy(s->v + s->n, p->v, p->n * sizeof(*p->v));
		s->n += p->n;
		scope_set_unique(s);
		(void) pthread_mutex_unlock(&d->lock);
	}
	batch_reset(d);
}

static int
count_one(void *data, const struct logged *l)
{
	(*(size_t *) data)++;
	return 0;
}

int
digest_new(struct store *store, struct digest **ret_digest)
{
	struct digest *d = calloc(1, sizeof(*d));
	MDB_txn *txn;
	int r;

	if (!d) {
		return -ENOMEM;
	}
	r = -pthread_mutex_init(&d->lock, NULL);
	if (r < 0) {
		free(d);
		return r;
	}
	d->store = store;
	d->log_limit = DIGEST_LOG_LIMIT_DEFAULT;
	d->shutdown_fold_max = DIGEST_SHUTDOWN_FOLD_MAX;
	d->ccache.limit = DIGEST_CACHE_LIMIT_DEFAULT;
	d->install_slice = DIGEST_INSTALL_SLICE_DEFAULT;
	d->background = true;
	/* A store of an older schema is upgraded first (main.c does it itself, with
	 * progress); this is for every other caller. */
	struct digest_check_report rep;
	r = digest_upgrade(store, NULL, NULL, &rep);
	r = r > 0 ? 0 : r;
	if (r == 0) {
		r = store_open_table(store, "digest", &d->dbi);
	}
	if (r == 0) {
		r = store_open_table(store, "digest_log", &d->log_dbi);
	}
	/* How much the log holds decides when the next batch folds it. */
	if (r == 0) {
		r = store_read_begin(store, &txn);
	}
	if (r == 0) {
		r = log_each(txn, d->log_dbi, false, count_one, &d->logged);
		store_read_end(store, txn);
	}
	if (r < 0) {
		digest_free(d);
		return r;
	}
	const struct store_hooks hooks = {
	        .record = on_record,
	        .batch_end = on_batch_end,
	        .batch_abort = on_batch_abort,
	        .batch_committed = on_batch_committed,
	        .data = d,
	};
	store_set_hooks(store, &hooks);
	d->hooked = true;
	*ret_digest = d;
	return 0;
}

void
digest_set_log_limit(struct digest *d, size_t records)
{
	d->log_limit = records;
}

void
digest_set_shutdown_fold_max(struct digest *d, size_t records)
{
	d->shutdown_fold_max = records;
}

void
digest_set_install_slice(struct digest *d, size_t aggregates)
{
	d->install_slice = aggregates;
}

void
digest_set_cache_limit(struct digest *d, size_t bytes)
{
	d->ccache.limit = bytes;
}

void
digest_set_fold_background(struct digest *d, bool on)
{
	d->background = on;
}

void
digest_log_state(struct digest *d, size_t *ret_logged, size_t *ret_limit)
{
	*ret_logged = __atomic_load_n(&d->logged, __ATOMIC_RELAXED);
	*ret_limit = d->log_limit;
}

int
digest_fold_wait(struct digest *d)
{
	struct folder *fo = d->folder;
	int r = -EAGAIN;

	if (!fo) {
		return r;
	}
	for (int i = 0; i < 1000; i++) {
		enum folder_state st = folder_state(fo);
		if (st != FOLDER_WORKING) {
			return st == FOLDER_READY ? 0 : r;
		}
		(void) nanosleep(&(struct timespec){.tv_nsec = 10 * 1000 * 1000}, NULL);
	}
	return -ETIMEDOUT;
}

struct digest *
digest_free(struct digest *d)
{
	if (!d) {
		return NULL;
	}
	if (d->folder) {
		/* A result not installed is dropped; the writer folds it all below. */
		folder_free(d->folder);
		d->folder = NULL;
	}
	if (d->hooked && d->logged > 0 && d->logged <= d->shutdown_fold_max) {
		/* Leave a stopped store with a short log folded: one transaction. A longer one
		 * (a preload's) is left for the next run: folding it here took minutes. A failure
		 * or a log left behind is just as exact, since every reader applies the log. */
		d->log_limit = 0;
		(void) store_write_batch(d->store, NULL, 0);
	}
	if (d->hooked) {
		store_set_hooks(d->store, NULL);
	}
	cache_clear(&d->cache);
	write_side_free(d);
	free(d->pending.v);
	free(d->pend_slots);
	free(d->dirty.v);
	free(d->log_buf);
	(void) pthread_mutex_destroy(&d->lock);
	free(d);
	return NULL;
}

int
digest_take_dirty(struct digest *d, struct digest_scope **ret_scopes)
{
	struct digest_scope *copy = NULL;
	size_t n;

	(void) pthread_mutex_lock(&d->lock);
	n = d->dirty.n;
	if (n > 0) {
		copy = malloc(n * sizeof(*copy));
		if (!copy) {
			(void) pthread_mutex_unlock(&d->lock);
			return -ENOMEM;
		}
		memcpy(copy, d->dirty.v, n * sizeof(*copy));
		d->dirty.n = 0;
	}
	(void) pthread_mutex_unlock(&d->lock);
	*ret_scopes = copy;
	return (int) n;
}

/* A window as whole hours: buckets [first, last) and their bounds in ms; or, for WINDOW_ALL,
 * the whole-campaign bucket alone. */
struct bounds {
	bool all;
	int64_t start, end;
	uint64_t first, last;
};

static int
window_bounds(Coord__V1__Window window, int64_t start, int64_t end, int64_t now_ms,
              struct bounds *ret)
{
	switch (window) {
	case COORD__V1__WINDOW__WINDOW_ALL:
		*ret = (struct bounds){.all = true, .first = BUCKET_ALL, .last = BUCKET_ALL};
		return 0;
	case COORD__V1__WINDOW__WINDOW_LAST_24H:
	case COORD__V1__WINDOW__WINDOW_LAST_1H:
		if (now_ms < 0) {
			return -EINVAL;
		}
		end = now_ms;
		start = now_ms -
		        (window == COORD__V1__WINDOW__WINDOW_LAST_1H ? 1 : 24) * DIGEST_HOUR_MS;
		start = start < 0 ? 0 : start;
		break;
	case COORD__V1__WINDOW__WINDOW_RANGE:
		if (start < 0 || end <= start) {
			return -EINVAL;
		}
		break;
	default:
		return -EINVAL;
	}
	uint64_t first = (uint64_t) start / DIGEST_HOUR_MS;
	uint64_t last = (uint64_t) end / DIGEST_HOUR_MS + ((uint64_t) end % DIGEST_HOUR_MS != 0);
	*ret = (struct bounds){
	        .start = (int64_t) first * DIGEST_HOUR_MS,
	        .end = last <= (uint64_t) (INT64_MAX / DIGEST_HOUR_MS)
	                       ? (int64_t) last * DIGEST_HOUR_MS
	                       : INT64_MAX,
	        .first = first,
	        .last = last,
	};
	return 0;
}

static int
check_scope(Coord__V1__ScopeKind kind, const char *id)
{
	size_t len = id ? strlen(id) : 0;

	switch (kind) {
	case COORD__V1__SCOPE_KIND__SCOPE_KIND_ALL:
		return len == 0 ? 0 : -EINVAL;
	case COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNCIL:
	case COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNTRY:
		return len > 0 && len <= ID_MAX ? 0 : -EINVAL;
	default:
		return -EINVAL;
	}
}

/* Merge the scope's aggregates over the window into `agg`, in `txn`. */
static int
read_aggregates(struct digest *d, MDB_txn *txn, Coord__V1__ScopeKind kind, const char *id,
                const struct bounds *w, Coord__V1__Aggregate *agg)
{
	uint8_t key[KEY_MAX];
	size_t klen = make_key(key, kind, id, w->first);
	size_t plen = klen - 8;
	MDB_val k = {.mv_size = klen, .mv_data = key};
	MDB_val v;
	MDB_cursor *cur;
	int r = 0;
	int rc = mdb_cursor_open(txn, d->dbi, &cur);

	if (rc == 0) {
		for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0 && r == 0;
		     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
			/* Same prefix (hence same length); for WINDOW_ALL the first key found is
			 * the whole-campaign one or none. */
			if (k.mv_size != klen || memcmp(k.mv_data, key, plen) != 0 ||
			    (!w->all && get_be64((const uint8_t *) k.mv_data + plen) >= w->last)) {
				break;
			}
			r = agg_merge_packed(agg, &v);
			if (w->all) {
				break;
			}
		}
		mdb_cursor_close(cur);
	}
	if (r == 0 && rc != 0 && rc != MDB_NOTFOUND) {
		r = -EIO;
	}
	return r == -EBADMSG ? -EIO : r;
}

/* What the headline scan looks for in one requested digest, and what it found. */
struct headline_scan {
	Coord__V1__ScopeKind kind;
	const char *id;
	struct bounds w;
	size_t want, n;
	Coord__V1__Aggregate *agg; /* the merged aggregates and log */
	Coord__V1__Headline hl[DIGEST_HEADLINES_MAX];
	char country[DIGEST_HEADLINES_MAX][3];
};

/* One scan of the newest items for every requested digest: `by_scope` orders the valid
 * requests by (kind, id), so an item finds the requests of its three scopes by binary
 * search instead of being matched against all of them. */
struct multi_scan {
	struct headline_scan *hs;        /* one per request */
	struct headline_scan **by_scope; /* the valid ones, sorted by scope */
	size_t n;                        /* in by_scope */
	size_t open;                     /* requests that still want headlines */
	struct mark mark;                /* the log's install mark */
};

static const char *
or_else(const char *s, const char *fallback)
{
	return s && s[0] ? s : (fallback ? fallback : "");
}

static const char *
headline_title(const Coord__V1__Envelope *env)
{
	switch (env->body_case) {
	case COORD__V1__ENVELOPE__BODY_EVENT:
		return or_else(env->event->title, NULL);
	case COORD__V1__ENVELOPE__BODY_LETTER:
		return or_else(env->letter->subject, env->letter->recipient);
	case COORD__V1__ENVELOPE__BODY_STATEMENT:
		return or_else(env->statement->title, env->statement->organisation);
	case COORD__V1__ENVELOPE__BODY_PETITION:
		return or_else(env->petition->title, env->petition->target);
	case COORD__V1__ENVELOPE__BODY_MEDIA:
		return or_else(env->media->title, env->media->outlet);
	default:
		return "";
	}
}

static int
headline_add(struct headline_scan *s, uint64_t seq, const char *council,
             const Coord__V1__Envelope *env, const struct digest_contribution *c)
{
	Coord__V1__Headline *h = &s->hl[s->n];
	char *council_copy = strdup(council);
	char *title = strdup(headline_title(env));

	if (!council_copy || !title) {
		free(council_copy);
		free(title);
		return -ENOMEM;
	}
	memcpy(s->country[s->n], c->country, sizeof(c->country));
	*h = (Coord__V1__Headline) COORD__V1__HEADLINE__INIT;
	h->seq = seq;
	h->council = council_copy;
	h->category = c->category;
	h->kind = c->kind;
	h->country = s->country[s->n];
	h->date = c->date;
	h->title = title;
	s->n++;
	return 0;
}

static int
scope_key_cmp(Coord__V1__ScopeKind kind, const char *id, const struct headline_scan *s)
{
	if (kind != s->kind) {
		return kind < s->kind ? -1 : 1;
	}
	return strcmp(id, s->id);
}

static int
scan_order(const void *a, const void *b)
{
	const struct headline_scan *x = *(const struct headline_scan *const *) a;
	const struct headline_scan *y = *(const struct headline_scan *const *) b;

	return scope_key_cmp(x->kind, x->id, y);
}

/* The first request of scope (kind, id) in m->by_scope; m->n when there is none. */
static size_t
first_of_scope(const struct multi_scan *m, Coord__V1__ScopeKind kind, const char *id)
{
	size_t lo = 0, hi = m->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (scope_key_cmp(kind, id, m->by_scope[mid]) > 0) {
			lo = mid + 1;
		} else {
			hi = mid;
		}
	}
	return lo;
}

/* Offer an item to every request of one scope whose window holds its date. */
static int
offer_headline(struct multi_scan *m, Coord__V1__ScopeKind kind, const char *id, uint64_t seq,
               const char *council, const Coord__V1__Envelope *env,
               const struct digest_contribution *c)
{
	for (size_t i = first_of_scope(m, kind, id);
	     i < m->n && scope_key_cmp(kind, id, m->by_scope[i]) == 0; i++) {
		struct headline_scan *s = m->by_scope[i];
		if (s->n == s->want ||
		    (!s->w.all && (c->date < s->w.start || c->date >= s->w.end))) {
			continue;
		}
		int r = headline_add(s, seq, council, env, c);
		if (r < 0) {
			return r;
		}
		if (s->n == s->want) {
			m->open--;
		}
	}
	return 0;
}

/* log_fn: apply a logged contribution to the merged aggregate of every request it counts
 * in: those of its three scopes whose window holds its hour bucket (WINDOW_ALL: all). */
static int
merge_logged(void *data, const struct logged *l)
{
	struct multi_scan *m = data;
	struct digest_contribution c = l->c;
	struct contribution_line cl;
	struct targets t;

	contribution_line(&c, l->council, &cl);
	targets_of(l->council, &c, &t);
	/* targets_of() lists each scope twice (hour, whole campaign): take each once. */
	for (size_t j = 0; j < t.n; j += 2) {
		uint64_t bucket = t.bucket[j];
		for (size_t i = first_of_scope(m, t.kind[j], t.id[j]);
		     i < m->n && scope_key_cmp(t.kind[j], t.id[j], m->by_scope[i]) == 0; i++) {
			struct headline_scan *s = m->by_scope[i];
			if (!s->w.all && (bucket < s->w.first || bucket >= s->w.last)) {
				continue;
			}
			if (m->mark.set && l->at <= m->mark.last_key) {
				uint8_t key[KEY_MAX];
				size_t klen = make_key(key, t.kind[j], t.id[j],
				                       s->w.all ? BUCKET_ALL : bucket);
				if (mark_covers(&m->mark, l->at, key, klen)) {
					continue; /* installed in that aggregate */
				}
			}
			int r = agg_apply(s->agg, &cl.line, l->sign);
			if (r < 0) {
				return r;
			}
		}
	}
	return 0;
}

/* store_item_fn: hand live items, newest first, to the requests of their scopes. Items that
 * do not decode are skipped here (store_verify reports them). */
static int
scan_headline(void *data, uint64_t seq, const uint8_t *buf, size_t len, bool live)
{
	struct multi_scan *m = data;
	struct digest_contribution c;
	int r = 0;

	if (!live) {
		return 0;
	}
	Coord__V1__Item *item = coord__v1__item__unpack(NULL, len, buf);
	if (!item) {
		return 0;
	}
	Coord__V1__Envelope *env =
	        coord__v1__envelope__unpack(NULL, item->envelope.len, item->envelope.data);
	if (env && digest_contribution_of(env, &c) == 0) {
		r = offer_headline(m, COORD__V1__SCOPE_KIND__SCOPE_KIND_ALL, "", seq, item->council,
		                   env, &c);
		if (r == 0) {
			r = offer_headline(m, COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNCIL,
			                   item->council, seq, item->council, env, &c);
		}
		if (r == 0 && c.country[0]) {
			r = offer_headline(m, COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNTRY, c.country,
			                   seq, item->council, env, &c);
		}
	}
	if (env) {
		coord__v1__envelope__free_unpacked(env, NULL);
	}
	coord__v1__item__free_unpacked(item, NULL);
	return r == 0 && m->open == 0 ? 1 : r;
}

static void
headline_scan_done(struct headline_scan *s)
{
	for (size_t i = 0; i < s->n; i++) {
		free(s->hl[i].council);
		free(s->hl[i].title);
	}
}

/* Pack the Digest and hand out a fresh unpacked copy that the caller owns. */
static int
finish_digest(Coord__V1__Digest *dg, Coord__V1__Digest **ret_digest)
{
	size_t size = coord__v1__digest__get_packed_size(dg);
	uint8_t *buf = malloc(size ? size : 1);

	if (!buf) {
		return -ENOMEM;
	}
	(void) coord__v1__digest__pack(dg, buf);
	Coord__V1__Digest *copy = coord__v1__digest__unpack(NULL, size, buf);
	free(buf);
	if (!copy) {
		return -ENOMEM;
	}
	*ret_digest = copy;
	return 0;
}

/* Build the Digest of one request around its merged aggregate and headlines. */
static int
build_digest(const struct digest_request *req, const struct headline_scan *hs, uint64_t last_seq,
             int64_t now_ms, Coord__V1__Digest **ret_digest)
{
	const Coord__V1__Aggregate *agg = hs->agg;
	int r;

	{
		Coord__V1__Scope scope = COORD__V1__SCOPE__INIT;
		Coord__V1__Digest dg = COORD__V1__DIGEST__INIT;
		Coord__V1__Headline *hptrs[DIGEST_HEADLINES_MAX];

		scope.kind = hs->kind;
		scope.id = (char *) hs->id;
		for (size_t i = 0; i < hs->n; i++) {
			hptrs[i] = (Coord__V1__Headline *) &hs->hl[i];
		}
		dg.scope = &scope;
		dg.window = req->window;
		dg.start = hs->w.start;
		dg.end = hs->w.end;
		dg.last_seq = last_seq;
		dg.generated_at = now_ms;
		dg.n_headlines = hs->n;
		dg.headlines = hs->n ? hptrs : NULL;
		/* Query answers: the lines with their lists and distinct counts (summary.h). */
		struct summary *sum;
		r = summary_new(agg->lines, agg->n_lines, true, &sum);
		if (r < 0) {
			return r;
		}
		summary_apply(sum, &dg);
		r = finish_digest(&dg, ret_digest);
		summary_free(sum);
	}
	return r;
}

/* Merge, for every valid request, the aggregates of its scope and window and then the log,
 * in one read transaction (a fold commits the two together); *ret_last_seq (may be NULL) is
 * the last seq that transaction saw, so the merged aggregates count exactly the items up to
 * it. */
static int
merge_requests(struct digest *d, struct multi_scan *m, uint64_t *ret_last_seq)
{
	MDB_txn *txn;
	int r = store_read_begin(d->store, &txn);

	if (r < 0) {
		return r;
	}
	if (ret_last_seq) {
		r = store_read_last_seq(d->store, txn, ret_last_seq);
	}
	for (size_t i = 0; r == 0 && i < m->n; i++) {
		struct headline_scan *s = m->by_scope[i];
		s->agg = agg_new();
		r = s->agg ? read_aggregates(d, txn, s->kind, s->id, &s->w, s->agg) : -ENOMEM;
	}
	if (r == 0) {
		r = mark_read(txn, d->log_dbi, &m->mark);
	}
	if (r == 0) {
		r = log_each(txn, d->log_dbi, false, merge_logged, m);
	}
	r = r == -EBADMSG ? -EIO : r;
	store_read_end(d->store, txn);
	return r;
}

int
digest_compute_many(struct digest *d, struct digest_request *reqs, size_t n, int64_t now_ms,
                    unsigned headlines)
{
	struct multi_scan m = {0};
	uint64_t last_seq = 0;
	size_t want = headlines == 0                     ? DIGEST_HEADLINES_DEFAULT
	              : headlines > DIGEST_HEADLINES_MAX ? DIGEST_HEADLINES_MAX
	                                                 : headlines;
	int r = 0;

	if (n == 0) {
		return 0;
	}
	m.hs = calloc(n, sizeof(*m.hs));
	m.by_scope = calloc(n, sizeof(*m.by_scope));
	if (!m.hs || !m.by_scope) {
		r = -ENOMEM;
		goto done;
	}
	for (size_t i = 0; i < n; i++) {
		struct digest_request *req = &reqs[i];
		struct headline_scan *hs = &m.hs[i];

		req->digest = NULL;
		req->r = check_scope(req->scope_kind, req->scope_id);
		if (req->r == 0) {
			req->r = window_bounds(req->window, req->start, req->end, now_ms, &hs->w);
		}
		if (req->r < 0) {
			continue;
		}
		hs->kind = req->scope_kind;
		hs->id = req->scope_id ? req->scope_id : "";
		hs->want = want;
		m.by_scope[m.n++] = hs;
	}
	m.open = m.n;
	qsort(m.by_scope, m.n, sizeof(*m.by_scope), scan_order);
	/* The scan comes first and its last seq is reported: the aggregates, read after it,
	 * reflect at least every item up to that seq. The two reads cannot share a transaction
	 * (the scan opens its own), and a read transaction must not wait on another. One scan
	 * serves every request: each takes its headlines among the same newest
	 * DIGEST_HEADLINE_SCAN_MAX items that a scan of its own would have looked at. */
	if (m.n > 0) {
		r = store_scan_items(d->store, 0, true, DIGEST_HEADLINE_SCAN_MAX, scan_headline, &m,
		                     &last_seq);
	}
	if (r >= 0 && m.n > 0) {
		r = merge_requests(d, &m, NULL);
	}
	for (size_t i = 0; r >= 0 && i < n; i++) {
		if (reqs[i].r == 0) {
			reqs[i].r =
			        build_digest(&reqs[i], &m.hs[i], last_seq, now_ms, &reqs[i].digest);
		}
	}
done:
	for (size_t i = 0; m.hs && i < n; i++) {
		headline_scan_done(&m.hs[i]);
		agg_free(m.hs[i].agg);
	}
	free(m.hs);
	free(m.by_scope);
	return r < 0 ? r : 0;
}

int
digest_compute(struct digest *d, Coord__V1__ScopeKind scope_kind, const char *scope_id,
               Coord__V1__Window window, int64_t start, int64_t end, int64_t now_ms,
               unsigned headlines, Coord__V1__Digest **ret_digest)
{
	struct digest_request req = {
	        .scope_kind = scope_kind,
	        .scope_id = scope_id,
	        .window = window,
	        .start = start,
	        .end = end,
	};
	int r = digest_compute_many(d, &req, 1, now_ms, headlines);

	if (r == 0) {
		r = req.r;
	}
	if (r == 0) {
		*ret_digest = req.digest;
	}
	return r;
}

void
digest_result_free(Coord__V1__Digest *digest)
{
	if (digest) {
		coord__v1__digest__free_unpacked(digest, NULL);
	}
}

/* ----------------------------------------------------------------------------------------- */
/* Live digests (digest.h): the publish socket's digests kept in memory */

/* Hash chain heads of the ring, a power of two. */
#define LIVE_HEADS (2 * DIGEST_LIVE_RING)

enum { LIVE_ALL, LIVE_24H, LIVE_1H, LIVE_WINDOWS };

static const Coord__V1__Window live_windows[LIVE_WINDOWS] = {
        COORD__V1__WINDOW__WINDOW_ALL,
        COORD__V1__WINDOW__WINDOW_LAST_24H,
        COORD__V1__WINDOW__WINDOW_LAST_1H,
};

/* One of the newest items, in the ring slot of seq % DIGEST_LIVE_RING. */
struct live_item {
	uint64_t seq;  /* 0: empty */
	uint64_t next; /* the next older item in its hash chain; 0: none */
	uint32_t revision;
	bool live;      /* the latest revision of its record, and not a retraction */
	bool countable; /* `c` is its contribution (digest_contribution_of() succeeded) */
	char council[ID_MAX + 1];
	char msg_id[WIRE_MSG_ID_MAX + 1];
	struct digest_contribution c;
	char *title; /* headline title while among the newest DIGEST_HEADLINE_SCAN_MAX */
};

struct live_scope {
	struct digest_scope scope;
	uint64_t pos; /* the seq its aggregates were seeded at: later items are applied */
	Coord__V1__Aggregate *agg[LIVE_WINDOWS];
};

struct digest_live {
	struct digest *d;
	bool valid;
	uint64_t last; /* every item up to this seq is in the ring (and scopes from pos on) */
	struct bounds w[LIVE_WINDOWS]; /* the windows as seeded */
	struct live_item *ring;
	uint64_t *heads;
	struct live_scope *scopes; /* sorted by scope_cmp() */
	size_t n_scopes, cap_scopes;
	uint64_t seeds; /* whole seedings */
	bool no_lists;  /* render without the CodeCount lists (digest_live_set_lists()) */
};

static uint64_t
live_hash(const char *council, const char *msg_id)
{
	uint64_t h = UINT64_C(14695981039346656037);

	for (const char *p = council; *p; p++) {
		h = (h ^ (uint8_t) *p) * UINT64_C(1099511628211);
	}
	h = (h ^ 0xff) * UINT64_C(1099511628211);
	for (const char *p = msg_id; *p; p++) {
		h = (h ^ (uint8_t) *p) * UINT64_C(1099511628211);
	}
	return h;
}

static struct live_item *
ring_at(struct digest_live *l, uint64_t seq)
{
	struct live_item *it = &l->ring[seq % DIGEST_LIVE_RING];

	return seq != 0 && it->seq == seq ? it : NULL;
}

/* The newest item of record (council, msg_id) in the ring, or NULL. A chain runs from new
 * to old, so the first item that left the ring ends it. */
static struct live_item *
ring_latest(struct digest_live *l, const char *council, const char *msg_id)
{
	uint64_t seq = l->heads[live_hash(council, msg_id) & (LIVE_HEADS - 1)];

	for (struct live_item *it; (it = ring_at(l, seq)) != NULL; seq = it->next) {
		if (strcmp(it->msg_id, msg_id) == 0 && strcmp(it->council, council) == 0) {
			return it;
		}
	}
	return NULL;
}

static void
ring_link(struct digest_live *l, struct live_item *it)
{
	uint64_t *head = &l->heads[live_hash(it->council, it->msg_id) & (LIVE_HEADS - 1)];

	it->next = *head;
	*head = it->seq;
}

static void
ring_clear(struct digest_live *l)
{
	for (size_t i = 0; i < DIGEST_LIVE_RING; i++) {
		free(l->ring[i].title);
		l->ring[i].title = NULL;
		l->ring[i].seq = 0;
	}
	memset(l->heads, 0, LIVE_HEADS * sizeof(*l->heads));
}

/* Fill `it` from a stored item's council and Envelope bytes; `title` to keep its headline
 * title. Returns 0, -EBADMSG or -ENOMEM. */
static int
live_item_parse(struct live_item *it, uint64_t seq, const char *council, const uint8_t *buf,
                size_t len, bool title)
{
	Coord__V1__Envelope *env;
	int r = 0;

	*it = (struct live_item){.seq = seq};
	if (!council || strlen(council) > ID_MAX) {
		return -EBADMSG;
	}
	env = coord__v1__envelope__unpack(NULL, len, buf);
	if (!env) {
		return -EBADMSG;
	}
	if (!env->msg_id || strlen(env->msg_id) > WIRE_MSG_ID_MAX) {
		r = -EBADMSG;
	} else {
		memcpy(it->council, council, strlen(council) + 1);
		memcpy(it->msg_id, env->msg_id, strlen(env->msg_id) + 1);
		it->revision = env->revision;
		it->countable = digest_contribution_of(env, &it->c) == 0;
		if (it->countable && title) {
			it->title = strdup(headline_title(env));
			r = it->title ? 0 : -ENOMEM;
		}
	}
	coord__v1__envelope__free_unpacked(env, NULL);
	return r;
}

static int
live_scope_cmp(const void *a, const void *b)
{
	return scope_cmp(&((const struct live_scope *) a)->scope,
	                 &((const struct live_scope *) b)->scope);
}

static struct live_scope *
live_find(struct digest_live *l, Coord__V1__ScopeKind kind, const char *id)
{
	struct live_scope key = {.scope.kind = kind};

	if (l->n_scopes == 0 || strlen(id) > ID_MAX) {
		return NULL;
	}
	memcpy(key.scope.id, id, strlen(id) + 1);
	return bsearch(&key, l->scopes, l->n_scopes, sizeof(*l->scopes), live_scope_cmp);
}

/* Forget everything but which scopes were asked for: the next prepare seeds them all. */
static void
live_drop(struct digest_live *l)
{
	for (size_t i = 0; i < l->n_scopes; i++) {
		for (int w = 0; w < LIVE_WINDOWS; w++) {
			agg_free(l->scopes[i].agg[w]);
			l->scopes[i].agg[w] = NULL;
		}
	}
	ring_clear(l);
	l->valid = false;
	l->last = 0;
}

int
digest_live_new(struct digest *d, struct digest_live **ret_live)
{
	struct digest_live *l = calloc(1, sizeof(*l));

	if (!l) {
		return -ENOMEM;
	}
	l->d = d;
	l->ring = calloc(DIGEST_LIVE_RING, sizeof(*l->ring));
	l->heads = calloc(LIVE_HEADS, sizeof(*l->heads));
	if (!l->ring || !l->heads) {
		digest_live_free(l);
		return -ENOMEM;
	}
	*ret_live = l;
	return 0;
}

struct digest_live *
digest_live_free(struct digest_live *l)
{
	if (!l) {
		return NULL;
	}
	if (l->ring && l->heads) {
		live_drop(l);
	}
	free(l->ring);
	free(l->heads);
	free(l->scopes);
	free(l);
	return NULL;
}

void
digest_live_reset(struct digest_live *l)
{
	live_drop(l);
	l->n_scopes = 0;
}

uint64_t
digest_live_seeds(const struct digest_live *l)
{
	return l->seeds;
}

/* A backwards scan of the newest items into the ring. */
struct live_seed {
	struct digest_live *l;
	size_t visited;
	int error;
};

/* store_item_fn: newest first. */
static int
live_seed_item(void *data, uint64_t seq, const uint8_t *buf, size_t len, bool live)
{
	struct live_seed *ls = data;
	struct live_item *slot = &ls->l->ring[seq % DIGEST_LIVE_RING];
	Coord__V1__Item *item = coord__v1__item__unpack(NULL, len, buf);
	int r = -EBADMSG;

	if (item) {
		r = live_item_parse(slot, seq, item->council, item->envelope.data,
		                    item->envelope.len, ls->visited < DIGEST_HEADLINE_SCAN_MAX);
		coord__v1__item__free_unpacked(item, NULL);
	}
	if (r == -ENOMEM) {
		return r;
	}
	/* An item that does not decode is kept as an empty slot: no headline, no record (a
	 * correction of it then finds no earlier revision and the state is seeded again). */
	if (r < 0) {
		*slot = (struct live_item){.seq = seq};
	}
	slot->live = r == 0 && live;
	ls->visited++;
	return 0;
}

/* Seed `n` scopes' aggregates (three windows each) from one read transaction and add them
 * (none is known yet). */
static int
live_seed_scopes(struct digest_live *l, const struct digest_scope *scopes, size_t n)
{
	size_t nreq = n * LIVE_WINDOWS;
	struct multi_scan m = {0};
	uint64_t last_seq = 0;
	int r = 0;

	if (n == 0) {
		return 0;
	}
	struct live_scope *v = grow(l->scopes, &l->cap_scopes, l->n_scopes + n, sizeof(*v));
	if (!v) {
		return -ENOMEM;
	}
	l->scopes = v;
	m.hs = calloc(nreq, sizeof(*m.hs));
	m.by_scope = calloc(nreq, sizeof(*m.by_scope));
	if (!m.hs || !m.by_scope) {
		r = -ENOMEM;
		goto done;
	}
	for (size_t i = 0; i < nreq; i++) {
		struct headline_scan *hs = &m.hs[i];
		hs->kind = scopes[i / LIVE_WINDOWS].kind;
		hs->id = scopes[i / LIVE_WINDOWS].id;
		hs->w = l->w[i % LIVE_WINDOWS];
		m.by_scope[m.n++] = hs;
	}
	qsort(m.by_scope, m.n, sizeof(*m.by_scope), scan_order);
	r = merge_requests(l->d, &m, &last_seq);
	if (r < 0) {
		goto done;
	}
	for (size_t i = 0; i < n; i++) {
		struct live_scope *ls = &l->scopes[l->n_scopes++];
		*ls = (struct live_scope){.scope = scopes[i], .pos = last_seq};
		for (int w = 0; w < LIVE_WINDOWS; w++) {
			ls->agg[w] = m.hs[i * LIVE_WINDOWS + (size_t) w].agg;
			m.hs[i * LIVE_WINDOWS + (size_t) w].agg = NULL;
		}
	}
	qsort(l->scopes, l->n_scopes, sizeof(*l->scopes), live_scope_cmp);
done:
	for (size_t i = 0; m.hs && i < nreq; i++) {
		agg_free(m.hs[i].agg);
	}
	free(m.hs);
	free(m.by_scope);
	return r;
}

/* Seed everything: the ring from the newest items, then every scope known and asked for. */
static int
live_seed_all(struct digest_live *l, const struct digest_scope *asked, size_t n_asked)
{
	struct live_seed seed = {.l = l};
	size_t n = 0;
	uint64_t last_seq = 0;
	int r;

	live_drop(l);
	l->seeds++;
	struct digest_scope *all = malloc((l->n_scopes + n_asked) * sizeof(*all) + 1);
	if (!all) {
		return -ENOMEM;
	}
	for (size_t i = 0; i < l->n_scopes; i++) {
		all[n++] = l->scopes[i].scope;
	}
	for (size_t i = 0; i < n_asked; i++) {
		if (!live_find(l, asked[i].kind, asked[i].id)) {
			all[n++] = asked[i];
		}
	}
	l->n_scopes = 0;
	r = store_scan_items(l->d->store, 0, true, DIGEST_LIVE_RING, live_seed_item, &seed,
	                     &last_seq);
	if (r >= 0) {
		uint64_t first = last_seq > DIGEST_LIVE_RING ? last_seq - DIGEST_LIVE_RING + 1 : 1;
		for (uint64_t seq = first; seq <= last_seq; seq++) {
			struct live_item *it = ring_at(l, seq);
			if (!it) {
				r = -EIO; /* items are keyed 1..N without a gap */
				break;
			}
			ring_link(l, it);
		}
		l->last = last_seq;
	}
	if (r >= 0) {
		/* Duplicates among the asked scopes would be seeded twice. */
		qsort(all, n, sizeof(*all), scope_cmp);
		size_t u = 0;
		for (size_t i = 0; i < n; i++) {
			if (u == 0 || scope_cmp(&all[i], &all[u - 1]) != 0) {
				all[u++] = all[i];
			}
		}
		r = live_seed_scopes(l, all, u);
	}
	free(all);
	if (r < 0) {
		live_drop(l);
		return r;
	}
	l->valid = true;
	return 0;
}

static int
live_bounds(int64_t now_ms, struct bounds w[LIVE_WINDOWS])
{
	for (int i = 0; i < LIVE_WINDOWS; i++) {
		int r = window_bounds(live_windows[i], 0, 0, now_ms, &w[i]);
		if (r < 0) {
			return r;
		}
	}
	return 0;
}

static bool
live_bounds_moved(const struct digest_live *l, const struct bounds w[LIVE_WINDOWS])
{
	for (int i = 0; i < LIVE_WINDOWS; i++) {
		if (w[i].first != l->w[i].first || w[i].last != l->w[i].last) {
			return true;
		}
	}
	return false;
}

int
digest_live_prepare(struct digest_live *l, const struct digest_scope *scopes, size_t n,
                    int64_t now_ms)
{
	struct bounds w[LIVE_WINDOWS];
	int r = live_bounds(now_ms, w);

	for (size_t i = 0; r == 0 && i < n; i++) {
		r = check_scope(scopes[i].kind, scopes[i].id);
	}
	if (r < 0) {
		return r;
	}
	if (!l->valid || live_bounds_moved(l, w)) {
		memcpy(l->w, w, sizeof(w));
		return live_seed_all(l, scopes, n);
	}
	struct digest_scope *add = malloc(n * sizeof(*add) + 1);
	size_t k = 0;
	if (!add) {
		live_drop(l);
		return -ENOMEM;
	}
	for (size_t i = 0; i < n; i++) {
		bool dup = false;
		for (size_t j = 0; j < k && !dup; j++) {
			dup = scope_cmp(&add[j], &scopes[i]) == 0;
		}
		if (!dup && !live_find(l, scopes[i].kind, scopes[i].id)) {
			add[k++] = scopes[i];
		}
	}
	r = live_seed_scopes(l, add, k);
	free(add);
	if (r < 0) {
		live_drop(l);
	}
	return r;
}

/* Apply (+1/-1) a contribution of `council` made by item `seq` to the live scopes it
 * counts in that do not reflect `seq` yet. */
static int
live_apply(struct digest_live *l, uint64_t seq, const char *council,
           const struct digest_contribution *contribution, int sign)
{
	struct digest_contribution c = *contribution;
	struct contribution_line cl;
	const Coord__V1__ScopeKind kinds[] = {COORD__V1__SCOPE_KIND__SCOPE_KIND_ALL,
	                                      COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNCIL,
	                                      COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNTRY};
	const char *ids[] = {"", council, c.country};
	uint64_t bucket = bucket_of(c.date);

	contribution_line(&c, council, &cl);
	for (size_t s = 0; s < 3; s++) {
		if (s > 0 && ids[s][0] == '\0') {
			continue;
		}
		struct live_scope *ls = live_find(l, kinds[s], ids[s]);
		if (!ls || ls->pos >= seq) {
			continue;
		}
		for (int w = 0; w < LIVE_WINDOWS; w++) {
			const struct bounds *b = &l->w[w];
			if (!b->all && (bucket < b->first || bucket >= b->last)) {
				continue;
			}
			int r = agg_apply(ls->agg[w], &cl.line, sign);
			if (r < 0) {
				return r;
			}
		}
	}
	return 0;
}

int
digest_live_feed(struct digest_live *l, uint64_t seq, const char *council, const uint8_t *envelope,
                 size_t envelope_len)
{
	struct live_item it;
	int r;

	if (!l->valid || seq <= l->last) {
		return 0;
	}
	if (seq != l->last + 1) {
		live_drop(l); /* an item never fed: only the store knows it now */
		return -EAGAIN;
	}
	r = live_item_parse(&it, seq, council, envelope, envelope_len, true);
	if (r < 0) {
		free(it.title);
		live_drop(l);
		return r == -ENOMEM ? r : -EAGAIN;
	}
	struct live_item *prior = ring_latest(l, it.council, it.msg_id);
	/* Revision 1 was accepted: nothing was stored before it. A later one without an
	 * earlier revision in the ring may correct a record older than the ring, unless the
	 * ring holds every item since the first. */
	if (!prior && it.revision > 1 && l->last >= DIGEST_LIVE_RING) {
		free(it.title);
		live_drop(l);
		return -EAGAIN;
	}
	r = 0;
	if (prior) {
		if (prior->countable) {
			r = live_apply(l, seq, prior->council, &prior->c, -1);
		}
		prior->live = false;
	}
	if (r == 0 && it.countable) {
		r = live_apply(l, seq, it.council, &it.c, +1);
	}
	if (r < 0) {
		free(it.title);
		live_drop(l);
		return r;
	}
	it.live = it.countable;
	struct live_item *slot = &l->ring[seq % DIGEST_LIVE_RING];
	free(slot->title);
	*slot = it;
	ring_link(l, slot);
	/* Headlines come from the newest DIGEST_HEADLINE_SCAN_MAX items only. */
	if (seq > DIGEST_HEADLINE_SCAN_MAX) {
		struct live_item *old = ring_at(l, seq - DIGEST_HEADLINE_SCAN_MAX);
		if (old) {
			free(old->title);
			old->title = NULL;
		}
	}
	l->last = seq;
	return 0;
}

static bool
live_item_in_scope(const struct live_item *it, const struct digest_scope *s)
{
	switch (s->kind) {
	case COORD__V1__SCOPE_KIND__SCOPE_KIND_ALL:
		return true;
	case COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNCIL:
		return strcmp(it->council, s->id) == 0;
	case COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNTRY:
		return it->c.country[0] && strcmp(it->c.country, s->id) == 0;
	default:
		return false;
	}
}

int
digest_live_render(struct digest_live *l, const struct digest_scope *scope, int64_t now_ms,
                   unsigned headlines, uint8_t **ret_buf, size_t *ret_len, uint64_t *ret_last_seq)
{
	struct bounds w[LIVE_WINDOWS];
	size_t want = headlines == 0                     ? DIGEST_HEADLINES_DEFAULT
	              : headlines > DIGEST_HEADLINES_MAX ? DIGEST_HEADLINES_MAX
	                                                 : headlines;
	Coord__V1__Headline hl[LIVE_WINDOWS][DIGEST_HEADLINES_MAX];
	Coord__V1__Headline *hp[LIVE_WINDOWS][DIGEST_HEADLINES_MAX];
	size_t nh[LIVE_WINDOWS] = {0};

	if (!l->valid || live_bounds(now_ms, w) < 0 || live_bounds_moved(l, w)) {
		return -EAGAIN;
	}
	struct live_scope *ls = live_find(l, scope->kind, scope->id);
	if (!ls) {
		return -ENOENT;
	}
	if (l->last < ls->pos) {
		return -EAGAIN;
	}
	/* Newest first, as digest_compute()'s scan: live records of the scope whose date is in
	 * the window. */
	uint64_t stop = l->last > DIGEST_HEADLINE_SCAN_MAX ? l->last - DIGEST_HEADLINE_SCAN_MAX : 0;
	size_t open = LIVE_WINDOWS;
	for (uint64_t seq = l->last; seq > stop && open > 0; seq--) {
		const struct live_item *it = ring_at(l, seq);
		if (!it || !it->live || !it->countable || !it->title ||
		    !live_item_in_scope(it, scope)) {
			continue;
		}
		for (int k = 0; k < LIVE_WINDOWS; k++) {
			if (nh[k] == want ||
			    (!w[k].all && (it->c.date < w[k].start || it->c.date >= w[k].end))) {
				continue;
			}
			Coord__V1__Headline *h = &hl[k][nh[k]];
			*h = (Coord__V1__Headline) COORD__V1__HEADLINE__INIT;
			h->seq = it->seq;
			h->council = (char *) it->council;
			h->category = it->c.category;
			h->kind = it->c.kind;
			h->country = (char *) it->c.country;
			h->date = it->c.date;
			h->title = it->title;
			hp[k][nh[k]++] = h;
			if (nh[k] == want) {
				open--;
			}
		}
	}

	Coord__V1__Scope sc = COORD__V1__SCOPE__INIT;
	Coord__V1__Digest dg[LIVE_WINDOWS];
	Coord__V1__Digest *dp[LIVE_WINDOWS];
	struct summary *sum[LIVE_WINDOWS] = {NULL};
	int r = 0;
	sc.kind = scope->kind;
	sc.id = (char *) scope->id;
	for (int k = 0; k < LIVE_WINDOWS; k++) {
		dg[k] = (Coord__V1__Digest) COORD__V1__DIGEST__INIT;
		dg[k].scope = &sc;
		dg[k].window = live_windows[k];
		dg[k].start = w[k].start;
		dg[k].end = w[k].end;
		dg[k].last_seq = l->last;
		dg[k].generated_at = now_ms;
		dg[k].n_headlines = nh[k];
		dg[k].headlines = nh[k] ? hp[k] : NULL;
		dp[k] = &dg[k];
		if (r == 0) {
			r = summary_new(ls->agg[k]->lines, ls->agg[k]->n_lines, !l->no_lists,
			                &sum[k]);
		}
		if (r == 0) {
			summary_apply(sum[k], &dg[k]);
		}
	}
	uint8_t *buf = NULL;
	if (r == 0) {
		Coord__V1__DigestSet set = COORD__V1__DIGEST_SET__INIT;
		set.n_digests = LIVE_WINDOWS;
		set.digests = dp;
		size_t size = coord__v1__digest_set__get_packed_size(&set);
		buf = malloc(size ? size : 1);
		if (buf) {
			*ret_len = coord__v1__digest_set__pack(&set, buf);
		}
	}
	for (int k = 0; k < LIVE_WINDOWS; k++) {
		summary_free(sum[k]);
	}
	if (!buf) {
		return r < 0 ? r : -ENOMEM;
	}
	*ret_buf = buf;
	*ret_last_seq = l->last;
	return 0;
}

void
digest_live_set_lists(struct digest_live *l, bool with_lists)
{
	l->no_lists = !with_lists;
}

/* ----------------------------------------------------------------------------------------- */
/* Recount, for verify and repair */

struct recount {
	struct digest d; /* `recount` set: its cache starts empty, nothing is read */
	MDB_txn *txn;
	struct mark mark; /* the log's install mark */
	store_progress_fn *progress;
	void *data;
	uint64_t items, total, live;
	int error;
};

static int
recount_item(void *data, uint64_t seq, const uint8_t *buf, size_t len, bool live)
{
	struct recount *rc = data;
	int r = 0;

	if (++rc->items % STORE_PROGRESS_STEP == 0 && rc->progress) {
		rc->progress(rc->data, rc->items, rc->total);
	}
	if (!live) {
		return 0;
	}
	Coord__V1__Item *it = coord__v1__item__unpack(NULL, len, buf);
	if (!it) {
		return -ENOMEM; /* it decoded a moment ago in store_scan_latest() */
	}
	if (strlen(it->council) <= ID_MAX) {
		rc->live++;
		r = apply_envelope(&rc->d, rc->txn, it->council, it->envelope.data,
		                   it->envelope.len, +1);
	}
	coord__v1__item__free_unpacked(it, NULL);
	/* MDB_* codes cannot come from a cache that reads nothing; keep errno values. */
	return r > 0 ? -EIO : r;
}

static int
entry_cmp(const void *a, const void *b)
{
	const struct entry *x = *(const struct entry *const *) a;
	const struct entry *y = *(const struct entry *const *) b;
	size_t n = x->klen < y->klen ? x->klen : y->klen;
	int c = memcmp(x->key, y->key, n);

	/* LMDB's default order: bytes, then the shorter first. */
	return c ? c : (x->klen > y->klen) - (x->klen < y->klen);
}

static int
unfold_one(void *data, const struct logged *l)
{
	struct recount *rc = data;
	struct digest_contribution c = l->c;
	int r = apply_logged(&rc->d, rc->txn, l->council, &c, -l->sign, &rc->mark, l->at);

	return r > 0 || r < -4095 ? -EIO : r;
}

/* Drop the recount's aggregates left without lines (by unfolding the log). */
static void
drop_empty(struct cache *c)
{
	size_t n = 0;

	for (size_t i = 0; i < c->n; i++) {
		struct entry *e = c->list[i];
		if (e->agg->n_lines > 0) {
			c->list[n++] = e;
		} else {
			agg_free(e->agg);
			free(e);
		}
	}
	if (n < c->n) {
		c->n = n;
		cache_rehash(c);
	}
}

/*
 * Recount into rc->d.cache, its list sorted by key. With `log_dbi` (not 0), the log is then
 * taken back out of the recount (newest first, each contribution with the opposite sign:
 * the exact inverse of the batches that wrote it), so that what is left is what the
 * "digest" table must hold. Returns 0, -EBADMSG when the log does not decode, or an error.
 */
static int
recount(struct store *store, MDB_txn *txn, MDB_dbi log_dbi, struct recount *rc)
{
	struct store_stats st = {0};

	(void) store_get_stats(store, &st);
	rc->total = st.items;
	rc->txn = txn;
	rc->d.recount = true;
	int r = store_scan_latest(store, txn, recount_item, rc);
	if (r < 0) {
		return r;
	}
	if (rc->progress) {
		rc->progress(rc->data, rc->items, rc->items);
	}
	r = mark_read(txn, log_dbi, &rc->mark);
	if (r == 0) {
		r = log_each(txn, log_dbi, true, unfold_one, rc);
	}
	drop_empty(&rc->d.cache);
	qsort(rc->d.cache.list, rc->d.cache.n, sizeof(*rc->d.cache.list), entry_cmp);
	return r;
}

/* The log table in `txn`, or 0 when there is none (a store from before it existed). */
static int
open_log(MDB_txn *txn, MDB_dbi *ret_dbi)
{
	int mrc = mdb_dbi_open(txn, "digest_log", 0, ret_dbi);

	if (mrc == MDB_NOTFOUND) {
		*ret_dbi = 0;
		return 0;
	}
	return mrc == 0 ? 0 : -EIO;
}

static uint64_t
agg_count(const Coord__V1__Aggregate *a)
{
	uint64_t n = 0;

	for (size_t i = 0; a && i < a->n_lines; i++) {
		n += a->lines[i]->count;
	}
	return n;
}

/* "council 'c01', hour 2024-05-01T10:00Z" */
static void
describe_key(const uint8_t *key, size_t klen, char *buf, size_t cap)
{
	static const char *const kinds[] = {"?", "all", "council", "country"};
	unsigned kind = klen > 0 && key[0] < 4 ? key[0] : 0;
	char when[40] = "the whole campaign";

	if (klen < 10) {
		(void) snprintf(buf, cap, "a key of %zu bytes", klen);
		return;
	}
	uint64_t bucket = get_be64(key + klen - 8);
	if (bucket != BUCKET_ALL) {
		time_t t = (time_t) (bucket * (uint64_t) (DIGEST_HOUR_MS / 1000));
		struct tm tm;
		if (gmtime_r(&t, &tm)) {
			(void) strftime(when, sizeof(when), "hour %Y-%m-%dT%H:00Z", &tm);
		}
	}
	if (kind == COORD__V1__SCOPE_KIND__SCOPE_KIND_ALL) {
		(void) snprintf(buf, cap, "all, %s", when);
	} else {
		(void) snprintf(buf, cap, "%s '%.*s', %s", kinds[kind], (int) (klen - 10), key + 1,
		                when);
	}
}

static void
report_difference(struct digest_check_report *rep, store_problem_fn *problem, void *data,
                  const uint8_t *key, size_t klen, const char *what)
{
	char where[96];
	char text[256];

	rep->problems++;
	if (problem) {
		describe_key(key, klen, where, sizeof(where));
		(void) snprintf(text, sizeof(text), "digest: %s: %s", where, what);
		problem(data, text);
	}
}

/* Walk the table and the sorted recount together and report each difference. Returns 0 or an
 * error. */
static int
compare(struct recount *rc, MDB_txn *txn, MDB_dbi dbi, store_problem_fn *problem,
        struct digest_check_report *rep)
{
	struct cache *c = &rc->d.cache;
	MDB_cursor *cur;
	MDB_val k, v;
	size_t i = 0;
	int r = 0;
	int mrc = mdb_cursor_open(txn, dbi, &cur);
	struct cbuf packed = {0};
	char what[128];

	if (mrc != 0) {
		return -EIO;
	}
	mrc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	while (r == 0 && (mrc == 0 || i < c->n)) {
		if (mrc != 0 && mrc != MDB_NOTFOUND) {
			r = -EIO;
			break;
		}
		const struct entry *e = i < c->n ? c->list[i] : NULL;
		int order;
		if (mrc != 0) {
			order = 1; /* only the recount is left */
		} else if (!e) {
			order = -1; /* only the table is left */
		} else {
			struct entry probe = {.klen = k.mv_size};
			const struct entry *pp = &probe;
			if (k.mv_size > KEY_MAX) {
				order = -1;
			} else {
				memcpy(probe.key, k.mv_data, k.mv_size);
				order = entry_cmp(&pp, &e);
			}
		}
		if (order < 0) {
			/* Stored, but no live record contributes to it. */
			rep->stored++;
			Coord__V1__Aggregate *a = NULL;
			(void) agg_decode(v.mv_data, v.mv_size, &a);
			(void) snprintf(what, sizeof(what),
			                "stored count %" PRIu64 ", but no live record counts here",
			                agg_count(a));
			agg_free(a);
			report_difference(rep, problem, rc->data, k.mv_data, k.mv_size, what);
			mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
			continue;
		}
		packed.len = 0;
		r = agg_encode(e->agg, &packed);
		if (r < 0) {
			break;
		}
		bool differs = true;
		if (order == 0) {
			rep->stored++;
			differs = v.mv_size != packed.len ||
			          memcmp(v.mv_data, packed.p, packed.len) != 0;
			if (differs) {
				Coord__V1__Aggregate *a = NULL;
				if (agg_decode(v.mv_data, v.mv_size, &a) == 0) {
					(void) snprintf(what, sizeof(what),
					                "stored count %" PRIu64 ", recount %" PRIu64
					                "%s",
					                agg_count(a), agg_count(e->agg),
					                agg_count(a) == agg_count(e->agg)
					                        ? " (other figures differ)"
					                        : "");
					agg_free(a);
				} else {
					(void) snprintf(what, sizeof(what),
					                "the stored aggregate does not decode");
				}
			}
		} else {
			(void) snprintf(what, sizeof(what),
			                "missing; the recount has count %" PRIu64,
			                agg_count(e->agg));
		}
		if (differs) {
			report_difference(rep, problem, rc->data, e->key, e->klen, what);
		}
		i++;
		if (order == 0) {
			mrc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
		}
	}
	mdb_cursor_close(cur);
	free(packed.p);
	rep->aggregates = c->n;
	rep->live = rc->live;
	return r;
}

int
digest_verify(struct store *store, store_progress_fn *progress, store_problem_fn *problem,
              void *data, struct digest_check_report *ret_report)
{
	struct recount rc = {.progress = progress, .data = data};
	struct digest_check_report rep = {0};
	MDB_txn *txn;
	MDB_dbi dbi;
	int r = store_read_begin(store, &txn);

	*ret_report = rep;
	if (r < 0) {
		return r;
	}
	MDB_dbi log_dbi;
	r = open_log(txn, &log_dbi);
	if (r == 0) {
		r = recount(store, txn, log_dbi, &rc);
	}
	if (r == -EBADMSG) {
		/* Compared all the same: the differences say which aggregates it touched. */
		rep.problems++;
		if (problem) {
			problem(data, "digest: the log of contributions does not decode");
		}
		r = 0;
	}
	if (r == 0 && store_schema(store) < STORE_SCHEMA_DIGEST_VALUES) {
		/* Its values are protobuf Aggregates: the daemon rebuilds them when it starts. */
		char msg[200];
		(void) snprintf(msg, sizeof(msg),
		                "digest: the store has schema %" PRIu32
		                " (aggregates in the old format): start coordd once to upgrade it "
		                "to schema %d, or run `coordctl repair`",
		                store_schema(store), STORE_SCHEMA_VERSION);
		rep.live = rc.live;
		rep.aggregates = rc.d.cache.n;
		rep.problems++;
		if (problem) {
			problem(data, msg);
		}
	} else if (r == 0) {
		int mrc = mdb_dbi_open(txn, "digest", 0, &dbi);
		if (mrc == MDB_NOTFOUND) {
			rep.live = rc.live;
			rep.aggregates = rc.d.cache.n;
			if (rc.d.cache.n > 0) {
				rep.problems++;
				if (problem) {
					problem(data, "digest: the table is missing");
				}
			}
		} else if (mrc != 0) {
			r = -EIO;
		} else {
			r = compare(&rc, txn, dbi, problem, &rep);
		}
	}
	store_read_end(store, txn);
	cache_clear(&rc.d.cache);
	*ret_report = rep;
	if (r < 0) {
		return r;
	}
	return rep.problems ? -EBADMSG : 0;
}

int
digest_rebuild(struct store *store, MDB_txn *txn, store_progress_fn *progress, void *data,
               struct digest_check_report *ret_report)
{
	struct recount rc = {.progress = progress, .data = data};
	struct digest_check_report rep = {0};
	MDB_dbi dbi;
	MDB_dbi log_dbi = 0;
	int mrc = mdb_dbi_open(txn, "digest", MDB_CREATE, &dbi);
	int r = mrc == 0 ? 0 : mrc == MDB_MAP_FULL ? -ENOSPC : -EIO;

	if (r == 0) {
		r = open_log(txn, &log_dbi);
	}
	/* Fold the log first, as a batch would: then the table alone must equal the recount.
	 * A log or a table that does not fold is dropped; the recount replaces the table. */
	if (r == 0 && log_dbi != 0) {
		struct digest fold = {.dbi = dbi, .log_dbi = log_dbi};
		struct mark mark;
		struct fold f = {.d = &fold, .txn = txn, .mark = &mark};
		int fr = mark_read(txn, log_dbi, &mark);
		if (fr == 0) {
			fr = log_each(txn, log_dbi, false, fold_one, &f);
		}
		for (size_t i = 0; fr == 0 && i < fold.cache.n_touched; i++) {
			fr = write_entry(&fold, txn, fold.cache.touched[i]);
		}
		cache_clear(&fold.cache);
		if (fr == MDB_MAP_FULL) {
			r = -ENOSPC;
		} else if (fr != 0) {
			rep.problems++;
		}
		if (r == 0) {
			mrc = mdb_drop(txn, log_dbi, 0);
			r = mrc == 0 ? 0 : mrc == MDB_MAP_FULL ? -ENOSPC : -EIO;
		}
	}
	if (r == 0) {
		r = recount(store, txn, 0, &rc);
		rc.d.dbi = dbi;
	}
	if (r == 0) {
		r = compare(&rc, txn, dbi, NULL, &rep);
	}
	/* Anything amiss: empty the table and write the recount, in key order. */
	for (size_t i = 0; r == 0 && rep.problems > 0 && i <= rc.d.cache.n; i++) {
		if (i == 0) {
			mrc = mdb_drop(txn, dbi, 0);
		} else {
			mrc = write_entry(&rc.d, txn, rc.d.cache.list[i - 1]);
		}
		r = mrc == 0 ? 0 : mrc == MDB_MAP_FULL ? -ENOSPC : -EIO;
	}
	cache_clear(&rc.d.cache);
	/* The table is now in this build's format, whatever it was before. */
	if (r == 0 && store_schema(store) != STORE_SCHEMA_VERSION) {
		r = store_set_schema(store, txn);
	}
	if (r == 0) {
		*ret_report = rep;
	}
	return r;
}

int
digest_upgrade(struct store *store, store_progress_fn *progress, void *data,
               struct digest_check_report *ret_report)
{
	MDB_txn *txn;
	int r;

	*ret_report = (struct digest_check_report){0};
	if (store_schema(store) >= STORE_SCHEMA_DIGEST_VALUES) {
		return 0;
	}
	/* The new table is written beside the old one's pages, which are freed only at the
	 * commit. */
	r = store_reserve_copy(store);
	if (r == 0) {
		r = store_repair_begin(store, &txn);
	}
	if (r < 0) {
		return r;
	}
	r = digest_rebuild(store, txn, progress, data, ret_report);
	if (r == 0) {
		r = store_repair_commit(store, txn);
	} else {
		store_repair_abort(store, txn);
	}
	/* The recount held every aggregate: give the heap back before the daemon runs. */
	(void) malloc_trim(0);
	return r < 0 ? r : 1;
}

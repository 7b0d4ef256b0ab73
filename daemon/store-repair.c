/*
 * store-repair: the store's checks and repairs, split from store.c (same module, store.h):
 * store_verify() (every item against the index), store_backup() (a compacted copy), and the
 * index rebuild behind `coordctl repair` and the schema 4 upgrade (store_scan_latest(),
 * store_repair_begin/commit/abort(), store_rebuild_index(), store_upgrade_index()).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lmdb.h>

#include "store-private.h"
#include "store.h"
#include "wire.h"

#define BACKUP_CHUNK (1u << 16) /* bytes read from the copy's pipe at a time */

/* ----------------------------------------------------------------------------------------- */
/* Verify */

/* A verify in progress: the report, and where each problem goes. */
struct verify {
	struct store_verify_report rep;
	store_problem_fn *fn;
	void *data;
};

static void problem(struct verify *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
problem(struct verify *v, const char *fmt, ...)
{
	char text[sizeof(v->rep.first_problem)];
	va_list ap;

	va_start(ap, fmt);
	(void) vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	if (v->rep.problems++ == 0) {
		memcpy(v->rep.first_problem, text, sizeof(text));
	}
	if (v->fn) {
		v->fn(v->data, text);
	}
}

/* Check one item against its index entry; counts index entries that point at it. */
static void
verify_item(struct store *s, MDB_txn *txn, MDB_cursor *icur, uint64_t seq, const MDB_val *val,
            struct verify *v, uint64_t *pointed_at)
{
	Coord__V1__Item *it = coord__v1__item__unpack(NULL, val->mv_size, val->mv_data);
	Coord__V1__Envelope *env = NULL;
	struct wire_verdict verdict;

	if (!it) {
		problem(v, "items: seq %" PRIu64 " does not decode as an Item", seq);
		return;
	}
	if (it->seq != seq) {
		problem(v, "items: seq %" PRIu64 " holds an Item with seq %" PRIu64, seq, it->seq);
	}
	/* The daemon's own checks, as they were when the item arrived. The size bound is the
	 * largest an item can hold: the config's limit is not known here. */
	int r = wire_unpack_envelope(it->envelope.data, it->envelope.len, SIZE_MAX, &env, &verdict);
	if (r == -ENOMEM) {
		problem(v, "items: seq %" PRIu64 ": out of memory decoding the envelope", seq);
		goto done;
	}
	if (r < 0) {
		problem(v, "items: seq %" PRIu64 ": the envelope does not decode: %s", seq,
		        verdict.message);
		if (!env) {
			goto done;
		}
	} else if (wire_validate_envelope(env, it->received_at, &verdict) < 0) {
		problem(v, "items: seq %" PRIu64 " (%s/%s): the envelope is invalid: %s", seq,
		        it->council, env->msg_id, verdict.message);
	}
	if (strcmp(env->council, it->council) != 0) {
		problem(v, "items: seq %" PRIu64 ": envelope council '%s' is not the item's '%s'",
		        seq, env->council, it->council);
	}
	if (!s->index_hashed) {
		goto done; /* an index of an older schema: store_verify() says so, once */
	}
	/* The record's entry is the duplicate under its hash that points at this item, or at
	 * another item of the same record. */
	const struct names n = {.council = (const uint8_t *) it->council,
	                        .council_len = strlen(it->council),
	                        .msg_id = (const uint8_t *) env->msg_id,
	                        .msg_id_len = strlen(env->msg_id)};
	uint8_t key[STORE_INDEX_KEY_SIZE];
	MDB_val k = {.mv_size = sizeof(key), .mv_data = key};
	MDB_val iv;
	bool have = false;
	if (store_names_hash(s, &n, key) == 0) {
		for (int rc = mdb_cursor_get(icur, &k, &iv, MDB_SET_KEY); rc == 0;
		     rc = mdb_cursor_get(icur, &k, &iv, MDB_NEXT_DUP)) {
			have = iv.mv_size == INDEX_VALUE_SIZE &&
			       (get_be64(iv.mv_data) == seq ||
			        store_item_is_of(s, txn, get_be64(iv.mv_data), &n) == 1);
			if (have) {
				break;
			}
		}
	}
	if (!have) {
		problem(v, "index: no entry for seq %" PRIu64 " (%s/%s)", seq, it->council,
		        env->msg_id);
		goto done;
	}
	uint64_t iseq = get_be64(iv.mv_data);
	uint32_t irev = get_be32((const uint8_t *) iv.mv_data + 8);
	bool iretracted = (((const uint8_t *) iv.mv_data)[12] & STORE_FLAG_RETRACTED) != 0;
	if (iseq < seq || irev < env->revision) {
		problem(v,
		        "index: %s/%s points at seq %" PRIu64 " revision %" PRIu32
		        ", older than item %" PRIu64 " revision %" PRIu32,
		        it->council, env->msg_id, iseq, irev, seq, env->revision);
	} else if (iseq == seq) {
		(*pointed_at)++;
		bool retraction = env->body_case == COORD__V1__ENVELOPE__BODY_RETRACTION;
		if (irev != env->revision || iretracted != retraction) {
			problem(v,
			        "index: %s/%s at seq %" PRIu64 " disagrees with the item's "
			        "revision or retraction",
			        it->council, env->msg_id, seq);
		}
	}
done:
	if (env) {
		coord__v1__envelope__free_unpacked(env, NULL);
	}
	coord__v1__item__free_unpacked(it, NULL);
}

int
store_verify(struct store *s, store_progress_fn *progress, store_problem_fn *problem_fn, void *data,
             struct store_verify_report *ret_report)
{
	struct verify v = {.fn = problem_fn, .data = data};
	MDB_txn *txn;
	MDB_cursor *cur = NULL;
	MDB_cursor *icur = NULL;
	MDB_stat st_items, st_index;
	MDB_val k, val;
	uint64_t pointed_at = 0;
	int r = store_read_begin(s, &txn);
	int rc;

	*ret_report = v.rep;
	if (r < 0) {
		return r;
	}
	rc = mdb_stat(txn, s->items, &st_items);
	if (rc == 0) {
		rc = mdb_stat(txn, s->index, &st_index);
	}
	k = (MDB_val){.mv_size = strlen(SCHEMA_KEY), .mv_data = SCHEMA_KEY};
	if (rc == 0 && (mdb_get(txn, s->meta, &k, &val) != 0 || val.mv_size != 4 ||
	                get_be32(val.mv_data) > STORE_SCHEMA_VERSION)) {
		problem(&v, "meta: missing or unknown schema_version");
	}
	if (rc == 0 && !s->index_hashed) {
		problem(&v,
		        "index: the store has schema %" PRIu32
		        " (an index keyed by names): start coordd once to upgrade it to schema %d, "
		        "or run `coordctl repair`",
		        s->schema, STORE_SCHEMA_VERSION);
	}
	if (rc == 0) {
		rc = mdb_cursor_open(txn, s->index, &icur);
	}
	if (rc == 0) {
		rc = mdb_cursor_open(txn, s->items, &cur);
	}
	uint64_t expect = 1;
	for (int op = MDB_FIRST; rc == 0; op = MDB_NEXT) {
		rc = mdb_cursor_get(cur, &k, &val, (MDB_cursor_op) op);
		if (rc != 0) {
			break;
		}
		if (k.mv_size != 8) {
			problem(&v, "items: a key of %zu bytes", k.mv_size);
			continue;
		}
		uint64_t seq = get_be64(k.mv_data);
		if (seq != expect) {
			problem(&v, "items: seq %" PRIu64 " follows %" PRIu64 " (a gap)", seq,
			        expect - 1);
		}
		expect = seq + 1;
		verify_item(s, txn, icur, seq, &val, &v, &pointed_at);
		if (++v.rep.items % STORE_PROGRESS_STEP == 0 && progress) {
			progress(data, v.rep.items, st_items.ms_entries);
		}
	}
	if (cur) {
		mdb_cursor_close(cur);
	}
	if (icur) {
		mdb_cursor_close(icur);
	}
	store_read_end(s, txn);
	if (rc != MDB_NOTFOUND) {
		return mdb_to_errno(rc);
	}
	v.rep.records = st_index.ms_entries;
	if (s->index_hashed && pointed_at != v.rep.records) {
		problem(&v,
		        "index: %" PRIu64 " entries but only %" PRIu64 " point at a matching item",
		        v.rep.records, pointed_at);
	}
	if (progress) {
		progress(data, v.rep.items, st_items.ms_entries);
	}
	*ret_report = v.rep;
	return v.rep.problems ? -EBADMSG : 0;
}

/* ----------------------------------------------------------------------------------------- */
/* Backup */

struct copy_job {
	struct store *s;
	int fd;
	int rc;
};

static void *
copy_thread(void *arg)
{
	struct copy_job *job = arg;

	/* A hot backup: the daemon may grow the map between this process's open and the copy's
	 * read transaction (MDB_MAP_RESIZED, before the copy has written anything). The copy
	 * holds no lock of ours, and store_backup() has no transaction open meanwhile. */
	for (int tries = 0;; tries++) {
		job->rc = mdb_env_copyfd2(job->s->env, job->fd, MDB_CP_COMPACT);
		if (job->rc != MDB_MAP_RESIZED || tries == 3 || store_adopt_map(job->s) != 0) {
			break;
		}
	}
	/* The reader sees end of file once the copy is written (or failed). */
	(void) close(job->fd);
	return NULL;
}

/* Whether `dir` exists and holds nothing. */
static int
check_dest(const char *dir)
{
	if (mkdir(dir, 0750) == 0) {
		return 0;
	}
	if (errno != EEXIST) {
		return -errno;
	}
	struct stat st;
	if (stat(dir, &st) < 0) {
		return -errno;
	}
	if (!S_ISDIR(st.st_mode)) {
		return -ENOTDIR;
	}
	char path[PATH_MAX];
	static const char *const names[] = {"data.mdb", "lock.mdb", "coordd.lock"};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if ((size_t) snprintf(path, sizeof(path), "%s/%s", dir, names[i]) >= sizeof(path)) {
			return -ENAMETOOLONG;
		}
		if (access(path, F_OK) == 0) {
			return -EEXIST;
		}
	}
	/* Anything else in it is refused too: a backup goes into a directory of its own. */
	if (rmdir(dir) < 0) {
		return errno == ENOTEMPTY || errno == EEXIST ? -EEXIST : -errno;
	}
	return mkdir(dir, 0750) < 0 ? -errno : 0;
}

int
store_backup(struct store *s, const char *dest_dir, store_progress_fn *progress, void *data)
{
	char path[PATH_MAX];
	struct store_stats st = {0};
	int pipefd[2];
	pthread_t thread;
	int r;

	if ((size_t) snprintf(path, sizeof(path), "%s/data.mdb", dest_dir) >= sizeof(path)) {
		return -ENAMETOOLONG;
	}
	r = check_dest(dest_dir);
	if (r < 0) {
		return r;
	}
	(void) store_get_stats(s, &st);
	uint8_t *buf = malloc(BACKUP_CHUNK);
	if (!buf) {
		return -ENOMEM;
	}
	int out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
	if (out < 0) {
		free(buf);
		return -errno;
	}
	if (pipe2(pipefd, O_CLOEXEC) < 0) {
		r = -errno;
		goto fail;
	}
	/* LMDB writes the compacted copy into the pipe from a thread; this side writes it to
	 * the file, which is what lets it report progress. */
	struct copy_job job = {.s = s, .fd = pipefd[1]};
	r = -pthread_create(&thread, NULL, copy_thread, &job);
	if (r < 0) {
		(void) close(pipefd[0]);
		(void) close(pipefd[1]);
		goto fail;
	}
	uint64_t done = 0;
	uint64_t next_report = 0;
	for (;;) {
		ssize_t n = read(pipefd[0], buf, BACKUP_CHUNK);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n <= 0) {
			r = n < 0 ? -errno : 0;
			break;
		}
		for (ssize_t off = 0; off < n && r == 0;) {
			ssize_t w = write(out, buf + off, (size_t) (n - off));
			if (w < 0 && errno != EINTR) {
				r = -errno;
			} else if (w > 0) {
				off += w;
			}
		}
		if (r < 0) {
			break;
		}
		done += (uint64_t) n;
		if (progress && done >= next_report) {
			progress(data, done, st.used_bytes > done ? st.used_bytes : done);
			next_report = done + (UINT64_C(1) << 22);
		}
	}
	/* Closing our end makes a writer still going fail with EPIPE (SIGPIPE is the
	 * caller's to ignore), so the thread always ends. */
	(void) close(pipefd[0]);
	(void) pthread_join(thread, NULL);
	if (r == 0 && job.rc != 0) {
		r = job.rc > 0 ? -job.rc : mdb_to_errno(job.rc);
	}
	if (r == 0 && fsync(out) < 0) {
		r = -errno;
	}
	if (close(out) < 0 && r == 0) {
		r = -errno;
	}
	out = -1;
	if (r == 0) {
		r = store_fsync_path(dest_dir, O_RDONLY | O_DIRECTORY);
	}
	if (r == 0) {
		if (progress) {
			progress(data, done, done);
		}
		free(buf);
		return 0;
	}
fail:
	if (out >= 0) {
		(void) close(out);
	}
	(void) unlink(path);
	free(buf);
	return r;
}

/* ----------------------------------------------------------------------------------------- */
/* Repair */

/* One record as the items alone tell it: the latest item's seq, revision and flags. */
struct latest {
	uint64_t seq;
	uint32_t revision;
	uint8_t flags;
	uint16_t klen;
	uint8_t key[];
};

/* Records by key: open addressing over a power-of-two table, at most half full. */
struct latest_set {
	struct latest **slots;
	size_t nslots;
	size_t n;
};

static uint64_t
hash_bytes(const uint8_t *p, size_t len)
{
	uint64_t h = UINT64_C(14695981039346656037);

	for (size_t i = 0; i < len; i++) {
		h = (h ^ p[i]) * UINT64_C(1099511628211);
	}
	return h;
}

static struct latest **
latest_slot(struct latest_set *set, const uint8_t *key, size_t klen)
{
	size_t mask = set->nslots - 1;

	for (size_t i = hash_bytes(key, klen) & mask;; i = (i + 1) & mask) {
		struct latest *e = set->slots[i];
		if (!e || (e->klen == klen && memcmp(e->key, key, klen) == 0)) {
			return &set->slots[i];
		}
	}
}

static void
latest_set_done(struct latest_set *set)
{
	for (size_t i = 0; i < set->nslots; i++) {
		free(set->slots[i]);
	}
	free(set->slots);
	*set = (struct latest_set){0};
}

/* Find `key`; when absent, add it with the given values. Returns 1 when it was added, 0
 * when it was there already (*ret holds it either way), or -ENOMEM. */
static int
latest_add(struct latest_set *set, const uint8_t *key, size_t klen, uint64_t seq, uint32_t revision,
           uint8_t flags, struct latest **ret)
{
	if ((set->n + 1) * 2 > set->nslots) {
		size_t nslots = set->nslots ? set->nslots * 2 : 1024;
		struct latest **slots = calloc(nslots, sizeof(*slots));
		if (!slots) {
			return -ENOMEM;
		}
		struct latest_set bigger = {.slots = slots, .nslots = nslots, .n = set->n};
		for (size_t i = 0; i < set->nslots; i++) {
			struct latest *e = set->slots[i];
			if (e) {
				*latest_slot(&bigger, e->key, e->klen) = e;
			}
		}
		free(set->slots);
		*set = bigger;
	}
	struct latest **slot = latest_slot(set, key, klen);
	if (*slot) {
		*ret = *slot;
		return 0;
	}
	struct latest *e = malloc(sizeof(*e) + klen);
	if (!e) {
		return -ENOMEM;
	}
	*e = (struct latest){
	        .seq = seq, .revision = revision, .flags = flags, .klen = (uint16_t) klen};
	memcpy(e->key, key, klen);
	*slot = e;
	set->n++;
	*ret = e;
	return 1;
}

/* Decode what the index needs of an item: its key, revision and retraction. Returns 0 or
 * -EBADMSG. */
static int
item_key(const MDB_val *v, uint8_t kbuf[INDEX_KEY_MAX], size_t *ret_klen, uint32_t *ret_revision,
         bool *ret_retraction)
{
	Coord__V1__Item *it = coord__v1__item__unpack(NULL, v->mv_size, v->mv_data);
	int r = -EBADMSG;

	if (!it) {
		return r;
	}
	Coord__V1__Envelope *env =
	        coord__v1__envelope__unpack(NULL, it->envelope.len, it->envelope.data);
	if (env) {
		int klen = store_index_bytes(it->council, env->msg_id, kbuf);
		if (klen > 0 && env->revision > 0) {
			*ret_klen = (size_t) klen;
			*ret_revision = env->revision;
			*ret_retraction = env->body_case == COORD__V1__ENVELOPE__BODY_RETRACTION;
			r = 0;
		}
		coord__v1__envelope__free_unpacked(env, NULL);
	}
	coord__v1__item__free_unpacked(it, NULL);
	return r;
}

/* An item that the index cannot take: tell `problem_fn` (may be NULL). */
static void
report_undecodable(store_problem_fn *problem_fn, void *data, uint64_t seq)
{
	char text[96];

	if (problem_fn) {
		(void) snprintf(text, sizeof(text),
		                "items: seq %" PRIu64 " does not decode; not indexed", seq);
		problem_fn(data, text);
	}
}

/* Walk the items from the last down, adding each record at its latest item to `set`; `fn`
 * (may be NULL) sees each item with its liveness. Returns 0, the callback's value, or an
 * error. */
static int
scan_latest(struct store *s, MDB_txn *txn, struct latest_set *set, store_item_fn *fn, void *data,
            store_progress_fn *progress, store_problem_fn *problem_fn, uint64_t *ret_items,
            uint64_t *ret_skipped)
{
	MDB_cursor *cur;
	MDB_stat st;
	MDB_val k, v;
	uint64_t items = 0;
	uint64_t skipped = 0;
	int r = 0;
	int rc = mdb_stat(txn, s->items, &st);

	if (rc == 0) {
		rc = mdb_cursor_open(txn, s->items, &cur);
	}
	if (rc != 0) {
		return mdb_to_errno(rc);
	}
	for (int op = MDB_LAST; r == 0; op = MDB_PREV) {
		rc = mdb_cursor_get(cur, &k, &v, (MDB_cursor_op) op);
		if (rc != 0) {
			break;
		}
		uint64_t seq = k.mv_size == 8 ? get_be64(k.mv_data) : 0;
		uint8_t kbuf[INDEX_KEY_MAX];
		size_t klen;
		uint32_t revision;
		bool retraction;
		bool live = false;

		if (seq > 0 && item_key(&v, kbuf, &klen, &revision, &retraction) == 0) {
			struct latest *e;
			r = latest_add(set, kbuf, klen, seq, revision,
			               retraction ? STORE_FLAG_RETRACTED : 0, &e);
			live = r == 1 && !retraction;
			r = r < 0 ? r : 0;
		} else {
			skipped++;
			report_undecodable(problem_fn, data, seq);
		}
		if (r == 0 && fn) {
			r = fn(data, seq, v.mv_data, v.mv_size, live);
		}
		if (++items % STORE_PROGRESS_STEP == 0 && progress) {
			progress(data, items, st.ms_entries);
		}
	}
	mdb_cursor_close(cur);
	if (ret_items) {
		*ret_items = items;
		*ret_skipped = skipped;
	}
	if (r != 0) {
		return r;
	}
	return rc == MDB_NOTFOUND ? 0 : mdb_to_errno(rc);
}

int
store_scan_latest(struct store *s, MDB_txn *txn, store_item_fn *fn, void *data)
{
	struct latest_set set = {0};
	MDB_txn *own = NULL;
	int r = 0;

	if (!txn) {
		r = store_read_begin(s, &own);
		txn = own;
	}
	if (r == 0) {
		r = scan_latest(s, txn, &set, fn, data, NULL, NULL, NULL, NULL);
	}
	if (own) {
		store_read_end(s, own);
	}
	latest_set_done(&set);
	return r;
}

int
store_reserve_copy(struct store *s)
{
	MDB_envinfo info;

	if (s->read_only) {
		return -EROFS;
	}
	if (mdb_env_info(s->env, &info) != 0) {
		return -EIO;
	}
	uint64_t used = ((uint64_t) info.me_last_pgno + 1) * s->page_size;
	/* At map_size_max, the transaction itself tells whether what it writes fits. */
	while ((s->map_size < used || s->map_size - used < used) && s->map_size < s->map_size_max) {
		int r = store_grow_map(s, true);
		if (r < 0) {
			return r;
		}
	}
	return 0;
}

void
store_set_hash_mask(struct store *s, uint64_t mask)
{
	s->hash_mask = mask;
}

uint32_t
store_schema(const struct store *s)
{
	return s->schema;
}

int
store_set_schema(struct store *s, MDB_txn *txn)
{
	MDB_val key = {.mv_size = strlen(SCHEMA_KEY), .mv_data = SCHEMA_KEY};
	uint8_t v[4];
	MDB_val val = {.mv_size = sizeof(v), .mv_data = v};
	uint32_t version = s->index_hashed ? STORE_SCHEMA_VERSION : STORE_SCHEMA_DIGEST_VALUES;

	put_be32(v, version);
	int rc = mdb_put(txn, s->meta, &key, &val, 0);
	if (rc == 0) {
		s->schema = version;
	}
	return rc == MDB_MAP_FULL ? -ENOSPC : mdb_to_errno(rc);
}

/* After a write transaction that may have replaced the index table ended without a
 * commit: take the table's handle and layout from the store again. */
static void
reopen_index(struct store *s)
{
	MDB_txn *txn;
	unsigned flags = 0;

	if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn) != 0) {
		return;
	}
	if (mdb_dbi_open(txn, "index", 0, &s->index) == 0 &&
	    mdb_dbi_flags(txn, s->index, &flags) == 0) {
		s->index_hashed = (flags & INDEX_FLAGS) == INDEX_FLAGS;
	}
	/* A read-only commit keeps the handle open in the environment. */
	(void) mdb_txn_commit(txn);
}

int
store_repair_begin(struct store *s, MDB_txn **ret_txn)
{
	if (s->read_only) {
		return -EROFS;
	}
	return mdb_to_errno(mdb_txn_begin(s->env, NULL, 0, ret_txn));
}

int
store_repair_commit(struct store *s, MDB_txn *txn)
{
	int rc = mdb_txn_commit(txn);

	if (rc != 0) {
		reopen_index(s);
	}
	return rc == MDB_MAP_FULL ? -ENOSPC : rc > 0 ? -rc : mdb_to_errno(rc);
}

void
store_repair_abort(struct store *s, MDB_txn *txn)
{
	mdb_txn_abort(txn);
	reopen_index(s);
}

static int
put_errno(int rc)
{
	return rc == MDB_MAP_FULL ? -ENOSPC : mdb_to_errno(rc);
}

/* One item as the index rebuild sees it. */
struct entry {
	uint64_t hash;
	uint64_t seq; /* 0 once a later item of the same record supersedes it */
	uint32_t revision;
	uint8_t flags;
};

static int
entry_cmp(const void *a, const void *b)
{
	const struct entry *x = a;
	const struct entry *y = b;

	if (x->hash != y->hash) {
		return x->hash < y->hash ? -1 : 1;
	}
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Read every item into `entries` (room for all of them), in seq order. */
static int
collect_entries(struct store *s, MDB_txn *txn, struct entry *entries, uint64_t total,
                store_progress_fn *progress, store_problem_fn *problem_fn, void *data,
                struct store_repair_report *rep, size_t *ret_n)
{
	MDB_cursor *cur;
	MDB_val k, v;
	size_t n = 0;
	int rc = mdb_cursor_open(txn, s->items, &cur);

	for (int op = MDB_FIRST; rc == 0; op = MDB_NEXT) {
		rc = mdb_cursor_get(cur, &k, &v, (MDB_cursor_op) op);
		if (rc != 0) {
			break;
		}
		uint64_t seq = k.mv_size == 8 ? get_be64(k.mv_data) : 0;
		struct item_facts f = {0};
		uint8_t key[STORE_INDEX_KEY_SIZE];

		if (seq > 0 && n < total && store_item_facts(&v, &f) == 0 && f.revision > 0 &&
		    store_names_hash(s, &f.names, key) == 0) {
			entries[n++] = (struct entry){
			        .hash = get_be64(key),
			        .seq = seq,
			        .revision = f.revision,
			        .flags = f.retraction ? STORE_FLAG_RETRACTED : 0,
			};
		} else {
			rep->skipped++;
			report_undecodable(problem_fn, data, seq);
		}
		if (++rep->items % STORE_PROGRESS_STEP == 0 && progress) {
			progress(data, rep->items, total);
		}
	}
	if (cur) {
		mdb_cursor_close(cur);
	}
	*ret_n = n;
	return rc == MDB_NOTFOUND ? 0 : mdb_to_errno(rc);
}

/*
 * Items under one hash, in seq order: revisions of one record, or records whose hashes
 * collide. Every item that a later item of its own record follows is superseded.
 */
static int
settle_run(struct store *s, MDB_txn *txn, struct entry *run, size_t n)
{
	struct names *names = calloc(n, sizeof(*names));

	if (!names) {
		return -ENOMEM;
	}
	int r = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		uint8_t key[8];
		MDB_val k = {.mv_size = sizeof(key), .mv_data = key};
		MDB_val v;

		put_be64(key, run[i].seq);
		int rc = mdb_get(txn, s->items, &k, &v);
		r = rc != 0 ? mdb_to_errno(rc) : store_item_names(&v, &names[i]) < 0 ? -EIO : 0;
	}
	for (size_t i = 0; i < n && r == 0; i++) {
		for (size_t j = i + 1; j < n; j++) {
			if (store_names_equal(&names[i], &names[j])) {
				run[i].seq = 0;
				break;
			}
		}
	}
	free(names);
	return r;
}

static void
entry_value(const struct entry *e, uint8_t vbuf[INDEX_VALUE_SIZE])
{
	put_be64(vbuf, e->seq);
	put_be32(vbuf + 8, e->revision);
	vbuf[12] = e->flags;
}

/* Compare the index (schema 4's layout) with the rebuilt entries, both in (hash, seq)
 * order: count the entries that differ or are missing, and those no item supports. */
static int
compare_index(struct store *s, MDB_txn *txn, const struct entry *entries, size_t n,
              struct store_repair_report *rep)
{
	MDB_cursor *cur;
	MDB_val k, v;
	size_t i = 0;
	int rc = mdb_cursor_open(txn, s->index, &cur);

	if (rc == 0) {
		rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	}
	while (rc == 0 || (rc == MDB_NOTFOUND && i < n)) {
		while (i < n && entries[i].seq == 0) {
			i++;
		}
		bool have_old = rc == 0;
		if (have_old &&
		    (k.mv_size != STORE_INDEX_KEY_SIZE || v.mv_size != INDEX_VALUE_SIZE)) {
			rep->dropped++;
			rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
			continue;
		}
		if (!have_old && i == n) {
			break;
		}
		uint64_t oh = have_old ? get_be64(k.mv_data) : 0;
		uint64_t oseq = have_old ? get_be64(v.mv_data) : 0;
		int order =
		        !have_old ? 1
		        : i == n  ? -1
		                 : entry_cmp(&(struct entry){.hash = oh, .seq = oseq}, &entries[i]);
		if (order < 0) {
			rep->dropped++;
		} else if (order > 0) {
			rep->replaced++;
			i++;
			continue;
		} else {
			uint8_t vbuf[INDEX_VALUE_SIZE];
			entry_value(&entries[i++], vbuf);
			rep->replaced += memcmp(vbuf, v.mv_data, sizeof(vbuf)) != 0;
		}
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	if (cur) {
		mdb_cursor_close(cur);
	}
	return rc == MDB_NOTFOUND ? 0 : mdb_to_errno(rc);
}

/* Empty the index (an index of an older layout is replaced by a table of schema 4's) and
 * write the entries, appended in key order. */
static int
write_index(struct store *s, MDB_txn *txn, const struct entry *entries, size_t n)
{
	MDB_cursor *cur = NULL;
	int rc;

	if (s->index_hashed) {
		rc = mdb_drop(txn, s->index, 0);
	} else {
		rc = mdb_drop(txn, s->index, 1);
		if (rc == 0) {
			rc = mdb_dbi_open(txn, "index", MDB_CREATE | INDEX_FLAGS, &s->index);
		}
		/* Until the transaction ends: store_repair_abort() looks again. */
		s->index_hashed = rc == 0;
	}
	if (rc == 0) {
		rc = mdb_cursor_open(txn, s->index, &cur);
	}
	uint64_t last = 0;
	bool written = false;
	for (size_t i = 0; i < n && rc == 0; i++) {
		if (entries[i].seq == 0) {
			continue;
		}
		uint8_t key[STORE_INDEX_KEY_SIZE];
		uint8_t vbuf[INDEX_VALUE_SIZE];
		MDB_val k = {.mv_size = sizeof(key), .mv_data = key};
		MDB_val v = {.mv_size = sizeof(vbuf), .mv_data = vbuf};

		put_be64(key, entries[i].hash);
		entry_value(&entries[i], vbuf);
		bool dup = written && last == entries[i].hash;
		rc = mdb_cursor_put(cur, &k, &v, dup ? MDB_APPENDDUP : MDB_APPEND);
		last = entries[i].hash;
		written = true;
	}
	if (cur) {
		mdb_cursor_close(cur);
	}
	return put_errno(rc);
}

int
store_rebuild_index(struct store *s, MDB_txn *txn, store_progress_fn *progress,
                    store_problem_fn *problem_fn, void *data,
                    struct store_repair_report *ret_report)
{
	struct store_repair_report rep = {0};
	MDB_stat st;
	size_t n = 0;
	int r = mdb_to_errno(mdb_stat(txn, s->items, &st));

	if (r < 0) {
		return r;
	}
	struct entry *entries = malloc((st.ms_entries ? st.ms_entries : 1) * sizeof(*entries));
	if (!entries) {
		return -ENOMEM;
	}
	r = collect_entries(s, txn, entries, st.ms_entries, progress, problem_fn, data, &rep, &n);
	if (r == 0) {
		qsort(entries, n, sizeof(*entries), entry_cmp);
	}
	for (size_t i = 0, j; r == 0 && i < n; i = j) {
		for (j = i + 1; j < n && entries[j].hash == entries[i].hash; j++) {
		}
		if (j - i > 1) {
			r = settle_run(s, txn, entries + i, j - i);
		}
	}
	for (size_t i = 0; r == 0 && i < n; i++) {
		rep.records += entries[i].seq != 0;
	}
	if (r == 0 && s->index_hashed) {
		r = compare_index(s, txn, entries, n, &rep);
	} else if (r == 0) {
		/* An index of an older layout: every entry is rewritten. */
		rep.replaced = rep.records;
	}
	if (r == 0 && (!s->index_hashed || rep.replaced > 0 || rep.dropped > 0)) {
		r = write_index(s, txn, entries, n);
	}
	if (progress && r == 0) {
		progress(data, rep.items, rep.items);
	}
	free(entries);
	if (r == 0) {
		*ret_report = rep;
	}
	return r;
}

int
store_upgrade_index(struct store *s, store_progress_fn *progress, void *data,
                    struct store_repair_report *ret_report)
{
	uint32_t schema = s->schema;
	MDB_txn *txn;
	int r;

	*ret_report = (struct store_repair_report){0};
	if (schema >= STORE_SCHEMA_VERSION && s->index_hashed) {
		return 0;
	}
	if (s->read_only) {
		return -EROFS;
	}
	if (schema < STORE_SCHEMA_DIGEST_VALUES) {
		return -EPROTO;
	}
	/* The new table is written beside the old one's pages, freed only at the commit. */
	r = store_reserve_copy(s);
	if (r == 0) {
		r = store_repair_begin(s, &txn);
	}
	if (r < 0) {
		return r;
	}
	r = store_rebuild_index(s, txn, progress, NULL, data, ret_report);
	if (r == 0) {
		r = store_set_schema(s, txn);
	}
	if (r == 0) {
		r = store_repair_commit(s, txn);
	} else {
		store_repair_abort(s, txn);
	}
	if (r < 0) {
		s->schema = schema;
	}
	/* The rebuild held an entry per item: give the heap back before the daemon runs. */
	(void) malloc_trim(0);
	return r < 0 ? r : 1;
}

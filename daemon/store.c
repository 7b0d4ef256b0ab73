/*
 * store: LMDB environment, tables, write batches, map growth, reader check.
 *
 * The writer keeps the next seq in memory (last_seq), read once at open from the last key of
 * items; only the writer changes it, after a successful commit. A batch that hits
 * MDB_MAP_FULL is aborted, the map is doubled (bounded by map_size_max) and the whole batch
 * is replayed from the start, so its outputs are recomputed against committed state.
 *
 * Growing the map requires that this process has no open transaction. Readers hold
 * `resize_lock` shared for the length of their read transaction; the writer takes it
 * exclusively only to call mdb_env_set_mapsize(), which is rare.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lmdb.h>

#include "store.h"

#define INDEX_VALUE_SIZE 13
#define INDEX_KEY_MAX 256
#define SCHEMA_KEY "schema_version"

struct store {
	MDB_env *env;
	MDB_dbi items;
	MDB_dbi index;
	MDB_dbi meta;
	uint64_t last_seq;
	uint64_t map_size;
	uint64_t map_size_max;
	bool read_only;
	pthread_rwlock_t resize_lock;
	struct store_hooks hooks;
	bool lock_initialised;
	int lock_fd;
};

static int
mdb_to_errno(int rc)
{
	switch (rc) {
	case MDB_SUCCESS:
		return 0;
	case MDB_NOTFOUND:
		return -ENOENT;
	case MDB_KEYEXIST:
		return -EEXIST;
	case ENOMEM:
		return -ENOMEM;
	default:
		return -EIO;
	}
}

/* LMDB's own codes are negative too (MDB_KEYEXIST is -30799): tell them from -errno. */
static bool
is_negative_errno(int rc)
{
	return rc < 0 && rc > -4096;
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

static void
put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t) (v >> 24);
	p[1] = (uint8_t) (v >> 16);
	p[2] = (uint8_t) (v >> 8);
	p[3] = (uint8_t) v;
}

static uint32_t
get_be32(const uint8_t *p)
{
	return (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 | (uint32_t) p[2] << 8 | p[3];
}

/* Build the index key council "\0" msg_id; returns its length or -ENAMETOOLONG. */
static int
index_key(const char *council, const char *msg_id, uint8_t buf[INDEX_KEY_MAX])
{
	size_t lc = strlen(council);
	size_t lm = strlen(msg_id);

	if (lc + 1 + lm > INDEX_KEY_MAX) {
		return -ENAMETOOLONG;
	}
	memcpy(buf, council, lc);
	buf[lc] = 0;
	memcpy(buf + lc + 1, msg_id, lm);
	return (int) (lc + 1 + lm);
}

static int
lock_dir(const char *dir, int *ret_fd)
{
	char path[PATH_MAX];

	if ((size_t) snprintf(path, sizeof(path), "%s/coordd.lock", dir) >= sizeof(path)) {
		return -ENAMETOOLONG;
	}
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0) {
		return -errno;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int r = errno == EWOULDBLOCK ? -EBUSY : -errno;
		(void) close(fd);
		return r;
	}
	*ret_fd = fd;
	return 0;
}

/* Create the tables, check or write the schema version, read the last seq. */
static int
init_tables(struct store *s)
{
	MDB_txn *txn;
	MDB_val key = {.mv_size = strlen(SCHEMA_KEY), .mv_data = SCHEMA_KEY};
	MDB_val val;
	int rc;
	int r = 0;

	unsigned create = s->read_only ? 0 : MDB_CREATE;

	rc = mdb_txn_begin(s->env, NULL, s->read_only ? MDB_RDONLY : 0, &txn);
	if (rc != 0) {
		return mdb_to_errno(rc);
	}
	rc = mdb_dbi_open(txn, "items", create, &s->items);
	if (rc == 0) {
		rc = mdb_dbi_open(txn, "index", create, &s->index);
	}
	if (rc == 0) {
		rc = mdb_dbi_open(txn, "meta", create, &s->meta);
	}
	if (rc != 0) {
		r = mdb_to_errno(rc);
		goto fail;
	}

	rc = mdb_get(txn, s->meta, &key, &val);
	if (rc == MDB_NOTFOUND && s->read_only) {
		r = -EBADMSG;
		goto fail;
	}
	if (rc == MDB_NOTFOUND) {
		uint8_t v[4];

		put_be32(v, STORE_SCHEMA_VERSION);
		val = (MDB_val){.mv_size = sizeof(v), .mv_data = v};
		rc = mdb_put(txn, s->meta, &key, &val, 0);
	} else if (rc == 0) {
		if (val.mv_size != 4) {
			r = -EBADMSG;
			goto fail;
		}
		if (get_be32(val.mv_data) > STORE_SCHEMA_VERSION) {
			r = -EPROTO;
			goto fail;
		}
	}
	if (rc != 0) {
		r = mdb_to_errno(rc);
		goto fail;
	}

	MDB_cursor *cur;
	rc = mdb_cursor_open(txn, s->items, &cur);
	if (rc == 0) {
		rc = mdb_cursor_get(cur, &key, &val, MDB_LAST);
		if (rc == 0 && key.mv_size == 8) {
			s->last_seq = get_be64(key.mv_data);
		} else if (rc == MDB_NOTFOUND) {
			s->last_seq = 0;
			rc = 0;
		} else if (rc == 0) {
			rc = MDB_CORRUPTED;
		}
		mdb_cursor_close(cur);
	}
	if (rc != 0) {
		r = mdb_to_errno(rc);
		goto fail;
	}
	return mdb_to_errno(mdb_txn_commit(txn));
fail:
	mdb_txn_abort(txn);
	return r;
}

int
store_open(const struct store_options *opts, struct store **ret_store)
{
	struct store *s;
	int rc;
	int r;

	if (!opts->read_only && mkdir(opts->dir, 0750) < 0 && errno != EEXIST) {
		return -errno;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		return -ENOMEM;
	}
	s->lock_fd = -1;
	s->map_size_max = opts->map_size_max;

	s->read_only = opts->read_only;
	if (!s->read_only) {
		r = lock_dir(opts->dir, &s->lock_fd);
		if (r < 0) {
			goto fail;
		}
	}
	r = -pthread_rwlock_init(&s->resize_lock, NULL);
	if (r < 0) {
		goto fail;
	}
	s->lock_initialised = true;

	rc = mdb_env_create(&s->env);
	if (rc == 0) {
		rc = mdb_env_set_maxdbs(s->env, 8);
	}
	if (rc == 0) {
		rc = mdb_env_set_mapsize(s->env, opts->map_size);
	}
	if (rc == 0) {
		/* MDB_NOTLS: read transactions are not tied to threads. No MDB_WRITEMAP: a full
		 * disk must fail a commit, not raise SIGBUS. */
		unsigned flags = MDB_NOTLS | (opts->sync ? 0 : MDB_NOSYNC) |
		                 (opts->read_only ? MDB_RDONLY : 0);
		rc = mdb_env_open(s->env, opts->dir, flags, 0640);
	}
	if (rc != 0) {
		r = rc > 0 ? -rc : mdb_to_errno(rc);
		goto fail;
	}

	int dead = 0;
	(void) mdb_reader_check(s->env, &dead);

	MDB_envinfo info;
	(void) mdb_env_info(s->env, &info);
	s->map_size = info.me_mapsize;

	r = init_tables(s);
	if (r < 0) {
		goto fail;
	}
	*ret_store = s;
	return 0;
fail:
	store_free(s);
	return r;
}

struct store *
store_free(struct store *s)
{
	if (!s) {
		return NULL;
	}
	if (s->env) {
		mdb_env_close(s->env);
	}
	if (s->lock_initialised) {
		(void) pthread_rwlock_destroy(&s->resize_lock);
	}
	if (s->lock_fd >= 0) {
		(void) close(s->lock_fd);
	}
	free(s);
	return NULL;
}

/* Double the map (bounded by the maximum). Caller has no transaction open. */
static int
grow_map(struct store *s)
{
	if (s->map_size >= s->map_size_max) {
		return -ENOSPC;
	}
	uint64_t size = s->map_size * 2;
	if (size > s->map_size_max || size < s->map_size) {
		size = s->map_size_max;
	}
	(void) pthread_rwlock_wrlock(&s->resize_lock);
	int rc = mdb_env_set_mapsize(s->env, size);
	(void) pthread_rwlock_unlock(&s->resize_lock);
	if (rc != 0) {
		return mdb_to_errno(rc);
	}
	s->map_size = size;
	return 0;
}

/* Tell the hook about an accepted record, with the revision it supersedes (if any). */
static int
run_record_hook(struct store *s, MDB_txn *txn, const struct store_record *rec, uint64_t old_seq,
                bool old_retracted)
{
	struct store_change change = {.rec = rec, .old_retracted = old_retracted};
	Coord__V1__Item *old = NULL;
	int rc;

	if (old_seq > 0) {
		uint8_t key[8];
		MDB_val k = {.mv_size = sizeof(key), .mv_data = key};
		MDB_val v;

		put_be64(key, old_seq);
		rc = mdb_get(txn, s->items, &k, &v);
		if (rc != 0) {
			return rc == MDB_NOTFOUND ? MDB_CORRUPTED : rc;
		}
		old = coord__v1__item__unpack(NULL, v.mv_size, v.mv_data);
		if (!old) {
			return MDB_CORRUPTED;
		}
		change.old_envelope = old->envelope.data;
		change.old_envelope_len = old->envelope.len;
	}
	rc = s->hooks.record(s->hooks.data, txn, &change);
	if (old) {
		coord__v1__item__free_unpacked(old, NULL);
	}
	return rc;
}

/* Apply one record inside `txn`. Returns an MDB_* code, or a hook's negative errno. */
static int
apply_record(struct store *s, MDB_txn *txn, struct store_record *rec, uint64_t *seq)
{
	uint8_t kbuf[INDEX_KEY_MAX];
	uint8_t vbuf[INDEX_VALUE_SIZE];
	int klen = index_key(rec->council, rec->msg_id, kbuf);
	MDB_val ikey = {.mv_size = (size_t) klen, .mv_data = kbuf};
	MDB_val ival;
	int rc;

	if (klen < 0) {
		/* Ids are validated long before; this is a programming error upstream. */
		return EINVAL;
	}

	uint64_t stored_seq = 0;
	bool stored_retracted = false;

	rc = mdb_get(txn, s->index, &ikey, &ival);
	if (rc == 0) {
		if (ival.mv_size != INDEX_VALUE_SIZE) {
			return MDB_CORRUPTED;
		}
		uint32_t stored_rev = get_be32((const uint8_t *) ival.mv_data + 8);

		stored_seq = get_be64(ival.mv_data);
		stored_retracted =
		        (((const uint8_t *) ival.mv_data)[12] & STORE_FLAG_RETRACTED) != 0;
		if (rec->revision <= stored_rev) {
			rec->status = COORD__V1__ACK_STATUS__ACK_STATUS_DUPLICATE;
			rec->seq = stored_seq;
			return 0;
		}
	} else if (rc == MDB_NOTFOUND) {
		if (rec->retraction) {
			rec->status = COORD__V1__ACK_STATUS__ACK_STATUS_REJECTED;
			rec->reason = COORD__V1__REASON__REASON_UNKNOWN_RECORD;
			return 0;
		}
	} else {
		return rc;
	}

	uint64_t next = *seq + 1;
	uint8_t seqkey[8];
	Coord__V1__Item item = COORD__V1__ITEM__INIT;

	put_be64(seqkey, next);
	item.seq = next;
	item.received_at = rec->received_at;
	item.council = (char *) rec->council;
	item.envelope.data = (uint8_t *) rec->envelope;
	item.envelope.len = rec->envelope_len;

	MDB_val key = {.mv_size = sizeof(seqkey), .mv_data = seqkey};
	MDB_val val = {.mv_size = coord__v1__item__get_packed_size(&item)};
	rc = mdb_put(txn, s->items, &key, &val, MDB_APPEND | MDB_RESERVE);
	if (rc != 0) {
		return rc;
	}
	(void) coord__v1__item__pack(&item, val.mv_data);

	put_be64(vbuf, next);
	put_be32(vbuf + 8, rec->revision);
	vbuf[12] = rec->retraction ? STORE_FLAG_RETRACTED : 0;
	ival = (MDB_val){.mv_size = sizeof(vbuf), .mv_data = vbuf};
	rc = mdb_put(txn, s->index, &ikey, &ival, 0);
	if (rc != 0) {
		return rc;
	}

	rec->status = COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED;
	rec->seq = next;
	*seq = next;
	return s->hooks.record ? run_record_hook(s, txn, rec, stored_seq, stored_retracted) : 0;
}

int
store_write_batch(struct store *s, struct store_record *recs, size_t n)
{
	for (;;) {
		MDB_txn *txn;
		uint64_t seq = s->last_seq;
		int rc = mdb_txn_begin(s->env, NULL, 0, &txn);

		if (rc == MDB_MAP_RESIZED) {
			/* Another process grew the map: adopt its size. */
			(void) pthread_rwlock_wrlock(&s->resize_lock);
			rc = mdb_env_set_mapsize(s->env, 0);
			(void) pthread_rwlock_unlock(&s->resize_lock);
			if (rc == 0) {
				MDB_envinfo info;
				(void) mdb_env_info(s->env, &info);
				s->map_size = info.me_mapsize;
				continue;
			}
		}
		if (rc != 0) {
			return mdb_to_errno(rc);
		}

		for (size_t i = 0; i < n && rc == 0; i++) {
			recs[i].status = COORD__V1__ACK_STATUS__ACK_STATUS_UNSPECIFIED;
			recs[i].reason = COORD__V1__REASON__REASON_NONE;
			recs[i].seq = 0;
			rc = apply_record(s, txn, &recs[i], &seq);
		}
		if (rc == 0 && s->hooks.batch_end) {
			rc = s->hooks.batch_end(s->hooks.data, txn);
		}
		if (rc == 0) {
			rc = mdb_txn_commit(txn);
		} else {
			mdb_txn_abort(txn);
		}
		if (rc == 0) {
			s->last_seq = seq;
			if (s->hooks.batch_committed) {
				s->hooks.batch_committed(s->hooks.data);
			}
			return 0;
		}
		if (s->hooks.batch_abort) {
			s->hooks.batch_abort(s->hooks.data);
		}
		if (is_negative_errno(rc)) {
			return rc;
		}
		if (rc != MDB_MAP_FULL) {
			return mdb_to_errno(rc);
		}
		int r = grow_map(s);
		if (r < 0) {
			return r;
		}
	}
}

int
store_read_begin(struct store *s, MDB_txn **ret_txn)
{
	(void) pthread_rwlock_rdlock(&s->resize_lock);
	int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, ret_txn);
	if (rc != 0) {
		(void) pthread_rwlock_unlock(&s->resize_lock);
		return mdb_to_errno(rc);
	}
	return 0;
}

void
store_read_end(struct store *s, MDB_txn *txn)
{
	mdb_txn_abort(txn);
	(void) pthread_rwlock_unlock(&s->resize_lock);
}

int
store_get_stats(struct store *s, struct store_stats *ret_stats)
{
	MDB_txn *txn;
	MDB_stat st_items, st_index;
	MDB_envinfo info;
	MDB_stat st_env;
	int r = store_read_begin(s, &txn);

	if (r < 0) {
		return r;
	}
	int rc = mdb_stat(txn, s->items, &st_items);
	if (rc == 0) {
		rc = mdb_stat(txn, s->index, &st_index);
	}
	if (rc == 0) {
		rc = mdb_env_info(s->env, &info);
	}
	if (rc == 0) {
		rc = mdb_env_stat(s->env, &st_env);
	}
	if (rc == 0) {
		MDB_cursor *cur;
		MDB_val key, val;
		uint64_t last = 0;

		rc = mdb_cursor_open(txn, s->items, &cur);
		if (rc == 0) {
			rc = mdb_cursor_get(cur, &key, &val, MDB_LAST);
			if (rc == 0 && key.mv_size == 8) {
				last = get_be64(key.mv_data);
			}
			rc = rc == MDB_NOTFOUND ? 0 : rc;
			mdb_cursor_close(cur);
		}
		*ret_stats = (struct store_stats){
		        .last_seq = last,
		        .items = st_items.ms_entries,
		        .records = st_index.ms_entries,
		        .map_size = info.me_mapsize,
		        .used_bytes = (uint64_t) (info.me_last_pgno + 1) * st_env.ms_psize,
		};
	}
	store_read_end(s, txn);
	return mdb_to_errno(rc);
}

int
store_lookup(struct store *s, const char *council, const char *msg_id, uint64_t *ret_seq,
             uint32_t *ret_revision, bool *ret_retracted)
{
	uint8_t kbuf[INDEX_KEY_MAX];
	int klen = index_key(council, msg_id, kbuf);
	MDB_txn *txn;
	int r;

	if (klen < 0) {
		return -ENOENT;
	}
	r = store_read_begin(s, &txn);
	if (r < 0) {
		return r;
	}
	MDB_val key = {.mv_size = (size_t) klen, .mv_data = kbuf};
	MDB_val val;
	int rc = mdb_get(txn, s->index, &key, &val);
	if (rc == 0 && val.mv_size != INDEX_VALUE_SIZE) {
		rc = MDB_CORRUPTED;
	}
	if (rc == 0) {
		if (ret_seq) {
			*ret_seq = get_be64(val.mv_data);
		}
		if (ret_revision) {
			*ret_revision = get_be32((const uint8_t *) val.mv_data + 8);
		}
		if (ret_retracted) {
			*ret_retracted =
			        (((const uint8_t *) val.mv_data)[12] & STORE_FLAG_RETRACTED) != 0;
		}
	}
	store_read_end(s, txn);
	return mdb_to_errno(rc);
}

void
store_set_hooks(struct store *s, const struct store_hooks *hooks)
{
	s->hooks = hooks ? *hooks : (struct store_hooks){0};
}

int
store_open_table(struct store *s, const char *name, MDB_dbi *ret_dbi)
{
	MDB_txn *txn;
	int rc = mdb_txn_begin(s->env, NULL, s->read_only ? MDB_RDONLY : 0, &txn);

	if (rc != 0) {
		return mdb_to_errno(rc);
	}
	rc = mdb_dbi_open(txn, name, s->read_only ? 0 : MDB_CREATE, ret_dbi);
	if (rc != 0) {
		mdb_txn_abort(txn);
		return mdb_to_errno(rc);
	}
	return mdb_to_errno(mdb_txn_commit(txn));
}

/* Whether `item` is the live revision of its record: the index points at it, unretracted. */
static bool
item_is_live(struct store *s, MDB_txn *txn, uint64_t seq, const MDB_val *item)
{
	Coord__V1__Item *it = coord__v1__item__unpack(NULL, item->mv_size, item->mv_data);
	bool live = false;

	if (!it) {
		return false;
	}
	Coord__V1__Envelope *env =
	        coord__v1__envelope__unpack(NULL, it->envelope.len, it->envelope.data);
	if (env) {
		uint8_t kbuf[INDEX_KEY_MAX];
		int klen = index_key(it->council, env->msg_id, kbuf);
		MDB_val k = {.mv_size = (size_t) (klen > 0 ? klen : 0), .mv_data = kbuf};
		MDB_val v;

		live = klen > 0 && mdb_get(txn, s->index, &k, &v) == 0 &&
		       v.mv_size == INDEX_VALUE_SIZE && get_be64(v.mv_data) == seq &&
		       !(((const uint8_t *) v.mv_data)[12] & STORE_FLAG_RETRACTED);
		coord__v1__envelope__free_unpacked(env, NULL);
	}
	coord__v1__item__free_unpacked(it, NULL);
	return live;
}

int
store_scan_items(struct store *s, uint64_t after_seq, bool backwards, size_t max_items,
                 store_item_fn *fn, void *data, uint64_t *ret_last_seq)
{
	MDB_txn *txn;
	MDB_cursor *cur;
	uint8_t key[8];
	MDB_val k = {.mv_size = sizeof(key), .mv_data = key};
	MDB_val v;
	int r = store_read_begin(s, &txn);
	int rc;

	if (r < 0) {
		return r;
	}
	rc = mdb_cursor_open(txn, s->items, &cur);
	if (rc != 0) {
		store_read_end(s, txn);
		return mdb_to_errno(rc);
	}
	if (ret_last_seq) {
		rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
		*ret_last_seq = rc == 0 && k.mv_size == 8 ? get_be64(k.mv_data) : 0;
	}
	if (backwards) {
		rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
	} else if (after_seq == UINT64_MAX) {
		rc = MDB_NOTFOUND;
	} else {
		put_be64(key, after_seq + 1);
		k = (MDB_val){.mv_size = sizeof(key), .mv_data = key};
		rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	}
	for (size_t n = 0; rc == 0 && n < max_items && r == 0; n++) {
		if (k.mv_size != 8) {
			rc = MDB_CORRUPTED;
			break;
		}
		uint64_t seq = get_be64(k.mv_data);
		r = fn(data, seq, v.mv_data, v.mv_size, item_is_live(s, txn, seq, &v));
		if (r == 0) {
			rc = mdb_cursor_get(cur, &k, &v, backwards ? MDB_PREV : MDB_NEXT);
		}
	}
	mdb_cursor_close(cur);
	store_read_end(s, txn);
	if (r != 0) {
		return r;
	}
	return rc == MDB_NOTFOUND ? 0 : mdb_to_errno(rc);
}

static void problem(struct store_verify_report *rep, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));

static void
problem(struct store_verify_report *rep, const char *fmt, ...)
{
	if (rep->problems++ == 0) {
		va_list ap;

		va_start(ap, fmt);
		(void) vsnprintf(rep->first_problem, sizeof(rep->first_problem), fmt, ap);
		va_end(ap);
	}
}

/* Check one item against its index entry; counts index entries that point at it. */
static void
verify_item(struct store *s, MDB_txn *txn, uint64_t seq, const MDB_val *v,
            struct store_verify_report *rep, uint64_t *pointed_at)
{
	Coord__V1__Item *it = coord__v1__item__unpack(NULL, v->mv_size, v->mv_data);
	Coord__V1__Envelope *env = NULL;

	if (!it) {
		problem(rep, "items: seq %" PRIu64 " does not decode as an Item", seq);
		return;
	}
	if (it->seq != seq) {
		problem(rep, "items: seq %" PRIu64 " holds an Item with seq %" PRIu64, seq,
		        it->seq);
	}
	env = coord__v1__envelope__unpack(NULL, it->envelope.len, it->envelope.data);
	if (!env) {
		problem(rep, "items: seq %" PRIu64 ": the envelope does not decode", seq);
		goto done;
	}
	if (strcmp(env->council, it->council) != 0) {
		problem(rep, "items: seq %" PRIu64 ": envelope council '%s' is not the item's '%s'",
		        seq, env->council, it->council);
	}
	uint8_t kbuf[INDEX_KEY_MAX];
	int klen = index_key(it->council, env->msg_id, kbuf);
	MDB_val k = {.mv_size = (size_t) (klen > 0 ? klen : 0), .mv_data = kbuf};
	MDB_val iv;
	if (klen < 0 || mdb_get(txn, s->index, &k, &iv) != 0 || iv.mv_size != INDEX_VALUE_SIZE) {
		problem(rep, "index: no entry for seq %" PRIu64 " (%s/%s)", seq, it->council,
		        env->msg_id);
		goto done;
	}
	uint64_t iseq = get_be64(iv.mv_data);
	uint32_t irev = get_be32((const uint8_t *) iv.mv_data + 8);
	bool iretracted = (((const uint8_t *) iv.mv_data)[12] & STORE_FLAG_RETRACTED) != 0;
	if (iseq < seq || irev < env->revision) {
		problem(rep,
		        "index: %s/%s points at seq %" PRIu64 " revision %" PRIu32
		        ", older than item %" PRIu64 " revision %" PRIu32,
		        it->council, env->msg_id, iseq, irev, seq, env->revision);
	} else if (iseq == seq) {
		(*pointed_at)++;
		bool retraction = env->body_case == COORD__V1__ENVELOPE__BODY_RETRACTION;
		if (irev != env->revision || iretracted != retraction) {
			problem(rep,
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
store_verify(struct store *s, store_progress_fn *progress, void *data,
             struct store_verify_report *ret_report)
{
	struct store_verify_report rep = {0};
	MDB_txn *txn;
	MDB_cursor *cur = NULL;
	MDB_stat st_items, st_index;
	MDB_val k, v;
	uint64_t pointed_at = 0;
	int r = store_read_begin(s, &txn);
	int rc;

	*ret_report = rep;
	if (r < 0) {
		return r;
	}
	rc = mdb_stat(txn, s->items, &st_items);
	if (rc == 0) {
		rc = mdb_stat(txn, s->index, &st_index);
	}
	k = (MDB_val){.mv_size = strlen(SCHEMA_KEY), .mv_data = SCHEMA_KEY};
	if (rc == 0 && (mdb_get(txn, s->meta, &k, &v) != 0 || v.mv_size != 4 ||
	                get_be32(v.mv_data) > STORE_SCHEMA_VERSION)) {
		problem(&rep, "meta: missing or unknown schema_version");
	}
	if (rc == 0) {
		rc = mdb_cursor_open(txn, s->items, &cur);
	}
	uint64_t expect = 1;
	for (int op = MDB_FIRST; rc == 0; op = MDB_NEXT) {
		rc = mdb_cursor_get(cur, &k, &v, (MDB_cursor_op) op);
		if (rc != 0) {
			break;
		}
		if (k.mv_size != 8) {
			problem(&rep, "items: a key of %zu bytes", k.mv_size);
			continue;
		}
		uint64_t seq = get_be64(k.mv_data);
		if (seq != expect) {
			problem(&rep, "items: seq %" PRIu64 " follows %" PRIu64 " (a gap)", seq,
			        expect - 1);
		}
		expect = seq + 1;
		verify_item(s, txn, seq, &v, &rep, &pointed_at);
		if (++rep.items % STORE_PROGRESS_STEP == 0 && progress) {
			progress(data, rep.items, st_items.ms_entries);
		}
	}
	if (cur) {
		mdb_cursor_close(cur);
	}
	store_read_end(s, txn);
	if (rc != MDB_NOTFOUND) {
		return mdb_to_errno(rc);
	}
	rep.records = st_index.ms_entries;
	if (pointed_at != rep.records) {
		problem(&rep,
		        "index: %" PRIu64 " entries but only %" PRIu64 " point at a matching item",
		        rep.records, pointed_at);
	}
	if (progress) {
		progress(data, rep.items, st_items.ms_entries);
	}
	*ret_report = rep;
	return rep.problems ? -EBADMSG : 0;
}

int
store_backup(struct store *s, const char *dest_dir)
{
	char path[PATH_MAX];

	if (mkdir(dest_dir, 0750) < 0 && errno != EEXIST) {
		return -errno;
	}
	if ((size_t) snprintf(path, sizeof(path), "%s/data.mdb", dest_dir) >= sizeof(path)) {
		return -ENAMETOOLONG;
	}
	if (access(path, F_OK) == 0) {
		return -EEXIST;
	}
	int rc = mdb_env_copy2(s->env, dest_dir, MDB_CP_COMPACT);
	return rc > 0 ? -rc : mdb_to_errno(rc);
}

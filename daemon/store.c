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
#include <sys/statvfs.h>
#include <unistd.h>

#include <lmdb.h>

#include "store.h"
#include "wire.h"

#define INDEX_VALUE_SIZE 13
#define BACKUP_CHUNK (1u << 16) /* bytes read from the copy's pipe at a time */
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
	uint64_t page_size;
	bool read_only;
	uint32_t schema; /* the stored schema version (STORE_SCHEMA_VERSION for a new store) */
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
		s->schema = STORE_SCHEMA_VERSION;
	} else if (rc == 0) {
		if (val.mv_size != 4) {
			r = -EBADMSG;
			goto fail;
		}
		uint32_t version = get_be32(val.mv_data);
		if (version > STORE_SCHEMA_VERSION) {
			r = -EPROTO;
			goto fail;
		}
		/* Version 1 is a subset of version 2 (store.h): only the number changes, so
		 * that builds of version 1 refuse the store from then on. Version 3 changes the
		 * digest table's values: store_set_schema() writes it with their rebuild. */
		s->schema = version;
		if (version < 2 && !s->read_only) {
			uint8_t v[4];

			put_be32(v, 2);
			val = (MDB_val){.mv_size = sizeof(v), .mv_data = v};
			rc = mdb_put(txn, s->meta, &key, &val, 0);
			s->schema = 2;
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

static int
fsync_path(const char *path, int flags)
{
	int fd = open(path, flags | O_CLOEXEC);

	if (fd < 0) {
		return -errno;
	}
	int r = fsync(fd) < 0 ? -errno : 0;
	(void) close(fd);
	return r;
}

#define NEW_STORE_DIR ".new-store"

/* Remove <dir>/.new-store, left by a start that crashed while creating the store. */
static int
remove_new_store_dir(const char *dir)
{
	static const char *const files[] = {"data.mdb", "lock.mdb"};
	char path[PATH_MAX];

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		if ((size_t) snprintf(path, sizeof(path), "%s/" NEW_STORE_DIR "/%s", dir,
		                      files[i]) >= sizeof(path)) {
			return -ENAMETOOLONG;
		}
		if (unlink(path) < 0 && errno != ENOENT) {
			return -errno;
		}
	}
	(void) snprintf(path, sizeof(path), "%s/" NEW_STORE_DIR, dir);
	if (rmdir(path) < 0 && errno != ENOENT) {
		return -errno;
	}
	return 0;
}

/*
 * Make <dir>/data.mdb when there is none, so that it only ever appears complete: LMDB
 * writes a new file's first meta pages without a flush, and a power cut before the first
 * commit's flush can leave a file LMDB refuses to open. So the store is created and
 * committed (flushed) in <dir>/.new-store, renamed into place, and the directory flushed.
 * Called with the directory's lock held.
 */
static int
create_store_file(struct store *s, const struct store_options *opts)
{
	char tmp[PATH_MAX], from[PATH_MAX], to[PATH_MAX];
	struct stat st;
	int r;

	if ((size_t) snprintf(to, sizeof(to), "%s/data.mdb", opts->dir) >= sizeof(to) ||
	    (size_t) snprintf(tmp, sizeof(tmp), "%s/" NEW_STORE_DIR, opts->dir) >= sizeof(tmp) ||
	    (size_t) snprintf(from, sizeof(from), "%s/data.mdb", tmp) >= sizeof(from)) {
		return -ENAMETOOLONG;
	}
	r = remove_new_store_dir(opts->dir);
	if (r < 0 || stat(to, &st) == 0) {
		return r;
	}
	if (errno != ENOENT) {
		return -errno;
	}
	if (mkdir(tmp, 0750) < 0) {
		return -errno;
	}
	int rc = mdb_env_create(&s->env);
	if (rc == 0) {
		rc = mdb_env_set_maxdbs(s->env, 8);
	}
	if (rc == 0) {
		rc = mdb_env_set_mapsize(s->env, opts->map_size);
	}
	if (rc == 0) {
		rc = mdb_env_open(s->env, tmp, MDB_NOTLS, 0640);
	}
	r = rc == 0 ? 0 : rc > 0 ? -rc : mdb_to_errno(rc);
	if (r == 0) {
		r = init_tables(s);
	}
	if (r == 0) {
		r = mdb_to_errno(mdb_env_sync(s->env, 1));
	}
	if (s->env) {
		mdb_env_close(s->env);
		s->env = NULL;
	}
	if (r == 0 && rename(from, to) < 0) {
		r = -errno;
	}
	if (r == 0) {
		r = fsync_path(opts->dir, O_RDONLY | O_DIRECTORY);
	}
	int r2 = remove_new_store_dir(opts->dir);
	return r < 0 ? r : r2;
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
		if (r == 0) {
			r = create_store_file(s, opts);
		}
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
	MDB_stat st;
	s->page_size = mdb_env_stat(s->env, &st) == 0 ? st.ms_psize : 4096;

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

/*
 * Double the map (bounded by the maximum). Caller has no transaction open. With `wait`, wait
 * until no read transaction is open; without, give up (-EBUSY) when one is.
 */
static int
grow_map(struct store *s, bool wait)
{
	if (s->map_size >= s->map_size_max) {
		return -ENOSPC;
	}
	uint64_t size = s->map_size * 2;
	if (size > s->map_size_max || size < s->map_size) {
		size = s->map_size_max;
	}
	if (wait) {
		(void) pthread_rwlock_wrlock(&s->resize_lock);
	} else if (pthread_rwlock_trywrlock(&s->resize_lock) != 0) {
		return -EBUSY;
	}
	int rc = mdb_env_set_mapsize(s->env, size);
	(void) pthread_rwlock_unlock(&s->resize_lock);
	if (rc != 0) {
		return mdb_to_errno(rc);
	}
	s->map_size = size;
	return 0;
}

/*
 * After a commit: once more than half the map is in use, double it if no read transaction is
 * open right now. Growing on MDB_MAP_FULL has to wait for every reader, and a reader can be
 * long (the digest's folder holds one for a whole fold: seconds on a big store), stalling
 * every commit meanwhile; growing ahead, at the first commit that finds no reader, almost
 * never has to wait.
 */
static void
grow_ahead(struct store *s)
{
	MDB_envinfo info;

	if (s->map_size >= s->map_size_max || mdb_env_info(s->env, &info) != 0) {
		return;
	}
	uint64_t used = ((uint64_t) info.me_last_pgno + 1) * s->page_size;
	if (used > s->map_size / STORE_GROW_AHEAD_DIV) {
		(void) grow_map(s, false);
	}
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

/*
 * Apply one record inside `txn`. Returns an MDB_* code, or a hook's negative errno.
 *
 * A new record, the common case, has its index entry put with MDB_NOOVERWRITE: one descent
 * of the index both looks for it and inserts it. When the key exists, LMDB answers
 * MDB_KEYEXIST with the stored value, and the record goes on as a revision or a duplicate.
 */
static int
apply_record(struct store *s, MDB_txn *txn, struct store_record *rec, uint64_t *seq)
{
	uint8_t kbuf[INDEX_KEY_MAX];
	uint8_t vbuf[INDEX_VALUE_SIZE];
	int klen = index_key(rec->council, rec->msg_id, kbuf);
	MDB_val ikey = {.mv_size = (size_t) klen, .mv_data = kbuf};
	MDB_val ival = {.mv_size = sizeof(vbuf), .mv_data = vbuf};
	uint64_t next = *seq + 1;
	bool found, indexed = false;
	int rc;

	if (klen < 0) {
		/* Ids are validated long before; this is a programming error upstream. */
		return EINVAL;
	}
	put_be64(vbuf, next);
	put_be32(vbuf + 8, rec->revision);
	vbuf[12] = rec->retraction ? STORE_FLAG_RETRACTED : 0;

	if (rec->retraction) {
		rc = mdb_get(txn, s->index, &ikey, &ival);
		found = rc == 0;
	} else {
		rc = mdb_put(txn, s->index, &ikey, &ival, MDB_NOOVERWRITE);
		indexed = rc == 0;
		found = rc == MDB_KEYEXIST; /* ival is the stored value */
	}
	if (rc != 0 && rc != MDB_NOTFOUND && rc != MDB_KEYEXIST) {
		return rc;
	}

	uint64_t stored_seq = 0;
	bool stored_retracted = false;

	if (found) {
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
	} else if (rec->retraction) {
		rec->status = COORD__V1__ACK_STATUS__ACK_STATUS_REJECTED;
		rec->reason = COORD__V1__REASON__REASON_UNKNOWN_RECORD;
		return 0;
	}

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

	if (!indexed) {
		ival = (MDB_val){.mv_size = sizeof(vbuf), .mv_data = vbuf};
		rc = mdb_put(txn, s->index, &ikey, &ival, 0);
		if (rc != 0) {
			return rc;
		}
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
		if (rc == MDB_PANIC) {
			/* A failed meta page write left the environment unusable in this process
			 * (the file is intact: the previous meta page stands). */
			return -ENOTRECOVERABLE;
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
			/* Before the hook, which may start a reader (the digest's folder). */
			grow_ahead(s);
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
		int r = grow_map(s, true);
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
store_read_last_seq(struct store *s, MDB_txn *txn, uint64_t *ret_last_seq)
{
	MDB_cursor *cur;
	MDB_val key, val;
	int rc = mdb_cursor_open(txn, s->items, &cur);

	if (rc != 0) {
		return mdb_to_errno(rc);
	}
	rc = mdb_cursor_get(cur, &key, &val, MDB_LAST);
	mdb_cursor_close(cur);
	if (rc == MDB_NOTFOUND) {
		*ret_last_seq = 0;
		return 0;
	}
	if (rc != 0 || key.mv_size != 8) {
		return rc != 0 ? mdb_to_errno(rc) : -EIO;
	}
	*ret_last_seq = get_be64(key.mv_data);
	return 0;
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
verify_item(struct store *s, MDB_txn *txn, uint64_t seq, const MDB_val *val, struct verify *v,
            uint64_t *pointed_at)
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
	uint8_t kbuf[INDEX_KEY_MAX];
	int klen = index_key(it->council, env->msg_id, kbuf);
	MDB_val k = {.mv_size = (size_t) (klen > 0 ? klen : 0), .mv_data = kbuf};
	MDB_val iv;
	if (klen < 0 || mdb_get(txn, s->index, &k, &iv) != 0 || iv.mv_size != INDEX_VALUE_SIZE) {
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
		verify_item(s, txn, seq, &val, &v, &pointed_at);
		if (++v.rep.items % STORE_PROGRESS_STEP == 0 && progress) {
			progress(data, v.rep.items, st_items.ms_entries);
		}
	}
	if (cur) {
		mdb_cursor_close(cur);
	}
	store_read_end(s, txn);
	if (rc != MDB_NOTFOUND) {
		return mdb_to_errno(rc);
	}
	v.rep.records = st_index.ms_entries;
	if (pointed_at != v.rep.records) {
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
	MDB_env *env;
	int fd;
	int rc;
};

static void *
copy_thread(void *arg)
{
	struct copy_job *job = arg;

	job->rc = mdb_env_copyfd2(job->env, job->fd, MDB_CP_COMPACT);
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
	struct copy_job job = {.env = s->env, .fd = pipefd[1]};
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
		r = fsync_path(dest_dir, O_RDONLY | O_DIRECTORY);
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
	bool indexed; /* store_rebuild_index(): its entry was looked at */
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
		int klen = index_key(it->council, env->msg_id, kbuf);
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
			if (problem_fn) {
				char text[96];
				(void) snprintf(
				        text, sizeof(text),
				        "items: seq %" PRIu64 " does not decode; not indexed", seq);
				problem_fn(data, text);
			}
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
		int r = grow_map(s, true);
		if (r < 0) {
			return r;
		}
	}
	return 0;
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

	put_be32(v, STORE_SCHEMA_VERSION);
	int rc = mdb_put(txn, s->meta, &key, &val, 0);
	if (rc == 0) {
		s->schema = STORE_SCHEMA_VERSION;
	}
	return rc == MDB_MAP_FULL ? -ENOSPC : mdb_to_errno(rc);
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

	return rc == MDB_MAP_FULL ? -ENOSPC : rc > 0 ? -rc : mdb_to_errno(rc);
}

void
store_repair_abort(struct store *s, MDB_txn *txn)
{
	mdb_txn_abort(txn);
}

static int
put_errno(int rc)
{
	return rc == MDB_MAP_FULL ? -ENOSPC : mdb_to_errno(rc);
}

int
store_rebuild_index(struct store *s, MDB_txn *txn, store_progress_fn *progress,
                    store_problem_fn *problem_fn, void *data,
                    struct store_repair_report *ret_report)
{
	struct store_repair_report rep = {0};
	struct latest_set set = {0};
	MDB_cursor *cur = NULL;
	MDB_val k, v;
	int rc;
	int r = scan_latest(s, txn, &set, NULL, data, progress, problem_fn, &rep.items,
	                    &rep.skipped);

	/* Entries that no item supports go; the others are checked against `set`. */
	if (r == 0) {
		r = mdb_to_errno(mdb_cursor_open(txn, s->index, &cur));
	}
	for (int op = MDB_FIRST; r == 0; op = MDB_NEXT) {
		rc = mdb_cursor_get(cur, &k, &v, (MDB_cursor_op) op);
		if (rc == MDB_NOTFOUND) {
			break;
		}
		if (rc != 0) {
			r = mdb_to_errno(rc);
			break;
		}
		struct latest **slot =
		        k.mv_size <= INDEX_KEY_MAX ? latest_slot(&set, k.mv_data, k.mv_size) : NULL;
		struct latest *e = slot ? *slot : NULL;
		if (!e) {
			rep.dropped++;
			r = put_errno(mdb_cursor_del(cur, 0));
			continue;
		}
		e->indexed = true;
		if (v.mv_size == INDEX_VALUE_SIZE && get_be64(v.mv_data) == e->seq &&
		    get_be32((const uint8_t *) v.mv_data + 8) == e->revision &&
		    ((const uint8_t *) v.mv_data)[12] == e->flags) {
			continue;
		}
		uint8_t vbuf[INDEX_VALUE_SIZE];
		put_be64(vbuf, e->seq);
		put_be32(vbuf + 8, e->revision);
		vbuf[12] = e->flags;
		MDB_val nv = {.mv_size = sizeof(vbuf), .mv_data = vbuf};
		rep.replaced++;
		r = put_errno(mdb_cursor_put(cur, &k, &nv, MDB_CURRENT));
	}
	if (cur) {
		mdb_cursor_close(cur);
	}
	for (size_t i = 0; r == 0 && i < set.nslots; i++) {
		struct latest *e = set.slots[i];
		if (!e || e->indexed) {
			continue;
		}
		uint8_t vbuf[INDEX_VALUE_SIZE];
		put_be64(vbuf, e->seq);
		put_be32(vbuf + 8, e->revision);
		vbuf[12] = e->flags;
		MDB_val nk = {.mv_size = e->klen, .mv_data = e->key};
		MDB_val nv = {.mv_size = sizeof(vbuf), .mv_data = vbuf};
		rep.replaced++;
		r = put_errno(mdb_put(txn, s->index, &nk, &nv, 0));
	}
	rep.records = set.n;
	latest_set_done(&set);
	if (r == 0) {
		*ret_report = rep;
	}
	return r;
}

int
store_disk_free(const char *dir, uint64_t *ret_free_bytes)
{
	struct statvfs vfs;

	if (statvfs(dir, &vfs) < 0) {
		return -errno;
	}
	*ret_free_bytes = (uint64_t) vfs.f_bavail * vfs.f_frsize;
	return 0;
}

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
#include <malloc.h>
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

#include "siphash.h"
#include "store-private.h"
#include "store.h"
#include "varint.h"
#include "wire.h"

/* msg_ids that differ only in their last this many bytes (sequential ids, rows of one
 * import) share the high half of their index keys: a batch of them dirties a few index
 * pages, not one page per record (store.h). */
#define INDEX_GROUP_CUT 2

/* The SipHash-2-4 key of the index hash: the 16 bytes "coordd.index.v4" and a NUL, as
 * siphash24() takes them (two little-endian halves). It is fixed, not secret: every build
 * and tool must find the same entries, and a collision costs a read of an item, never a
 * wrong answer. */
static const uint64_t index_hash_key[2] = {UINT64_C(0x692e6464726f6f63),
                                           UINT64_C(0x0034762e7865646e)};

/* LMDB's own codes are negative too (MDB_KEYEXIST is -30799): tell them from -errno. */
static bool
is_negative_errno(int rc)
{
	return rc < 0 && rc > -4096;
}

/* Build council "\0" msg_id, the input of the index hash; returns its length or
 * -ENAMETOOLONG. */
int
store_index_bytes(const char *council, const char *msg_id, uint8_t buf[INDEX_KEY_MAX])
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

/* One field of protobuf bytes: its number, and its value (wire types 0 and 2; the others
 * are skipped over). */
struct pb_field {
	uint64_t number;
	uint64_t varint;      /* wire type 0 */
	const uint8_t *bytes; /* wire type 2, else NULL */
	size_t len;
};

/* Read the field at buf[*pos] and move past it. Returns 1, 0 at the end, or -EBADMSG. */
static int
pb_next(const uint8_t *buf, size_t len, size_t *pos, struct pb_field *ret)
{
	uint64_t tag, n;

	if (*pos >= len) {
		return 0;
	}
	if (!varint_get(buf, len, pos, &tag)) {
		return -EBADMSG;
	}
	*ret = (struct pb_field){.number = tag >> 3};
	switch (tag & 7) {
	case 0:
		return varint_get(buf, len, pos, &ret->varint) ? 1 : -EBADMSG;
	case 1:
	case 5:
		n = (tag & 7) == 1 ? 8 : 4;
		break;
	case 2:
		if (!varint_get(buf, len, pos, &n)) {
			return -EBADMSG;
		}
		ret->bytes = buf + *pos;
		ret->len = (size_t) n;
		break;
	default:
		return -EBADMSG;
	}
	if (n > len - *pos) {
		return -EBADMSG;
	}
	*pos += n;
	return 1;
}

/*
 * The council (Item field 3), and from the envelope (Item field 4) its msg_id (2),
 * revision (3) and whether its body is a Retraction (15, the last of the body fields 10..15,
 * as a decoder keeps the last of a oneof). The last occurrence of a field counts, as for a
 * decoder. Returns 0 or -EBADMSG (also for an item without an envelope or a msg_id).
 */
int
store_item_facts(const MDB_val *item, struct item_facts *ret)
{
	struct item_facts f = {.names = {.council = (const uint8_t *) ""}};
	const uint8_t *env = NULL;
	size_t env_len = 0;
	struct pb_field field;
	size_t pos = 0;
	int r;

	while ((r = pb_next(item->mv_data, item->mv_size, &pos, &field)) == 1) {
		if (field.number == 3 && field.bytes) {
			f.names.council = field.bytes;
			f.names.council_len = field.len;
		} else if (field.number == 4 && field.bytes) {
			env = field.bytes;
			env_len = field.len;
		}
	}
	for (pos = 0; r == 0 && env && (r = pb_next(env, env_len, &pos, &field)) == 1; r = 0) {
		if (field.number == 2 && field.bytes) {
			f.names.msg_id = field.bytes;
			f.names.msg_id_len = field.len;
		} else if (field.number == 3 && !field.bytes) {
			f.revision = (uint32_t) field.varint;
		} else if (field.number >= 10 && field.number <= 15 && field.bytes) {
			f.retraction = field.number == 15;
		}
	}
	if (r != 0 || !f.names.msg_id || f.names.msg_id_len == 0) {
		return -EBADMSG;
	}
	*ret = f;
	return 0;
}

/* The council and msg_id of a packed Item. Returns 0 or -EBADMSG. */
int
store_item_names(const MDB_val *item, struct names *ret)
{
	struct item_facts f = {0};
	int r = store_item_facts(item, &f);

	if (r == 0) {
		*ret = f.names;
	}
	return r;
}

bool
store_names_equal(const struct names *a, const struct names *b)
{
	return a->council_len == b->council_len && a->msg_id_len == b->msg_id_len &&
	       memcmp(a->council, b->council, a->council_len) == 0 &&
	       memcmp(a->msg_id, b->msg_id, a->msg_id_len) == 0;
}

/*
 * The index key of a record (store.h): the high 32 bits of SipHash-2-4 of council "\0" and
 * msg_id without its last INDEX_GROUP_CUT bytes, then the low 32 bits of SipHash-2-4 of
 * council "\0" msg_id, big-endian. Returns 0 or -ENAMETOOLONG.
 */
int
store_names_hash(const struct store *s, const struct names *n, uint8_t key[STORE_INDEX_KEY_SIZE])
{
	uint8_t buf[INDEX_KEY_MAX];
	size_t len = n->council_len + 1 + n->msg_id_len;

	if (len > INDEX_KEY_MAX) {
		return -ENAMETOOLONG;
	}
	memcpy(buf, n->council, n->council_len);
	buf[n->council_len] = 0;
	memcpy(buf + n->council_len + 1, n->msg_id, n->msg_id_len);
	size_t cut = n->msg_id_len > INDEX_GROUP_CUT ? INDEX_GROUP_CUT : n->msg_id_len;
	uint64_t group = siphash24(index_hash_key, buf, len - cut);
	uint64_t whole = siphash24(index_hash_key, buf, len);
	uint64_t h = (group & UINT64_C(0xffffffff00000000)) | (whole & UINT64_C(0xffffffff));
	put_be64(key, h & s->hash_mask);
	return 0;
}

int
store_index_key(const struct store *s, const char *council, const char *msg_id,
                uint8_t ret_key[STORE_INDEX_KEY_SIZE])
{
	const struct names n = {.council = (const uint8_t *) council,
	                        .council_len = strlen(council),
	                        .msg_id = (const uint8_t *) msg_id,
	                        .msg_id_len = strlen(msg_id)};

	return store_names_hash(s, &n, ret_key);
}

/* Whether the item at `seq` is of the record `want`: 1 or 0, MDB_CORRUPTED when it is
 * missing or does not decode, or another MDB_* error. */
int
store_item_is_of(struct store *s, MDB_txn *txn, uint64_t seq, const struct names *want)
{
	uint8_t key[8];
	MDB_val k = {.mv_size = sizeof(key), .mv_data = key};
	MDB_val v;
	struct names n = {0};

	put_be64(key, seq);
	int rc = mdb_get(txn, s->items, &k, &v);
	if (rc != 0) {
		return rc == MDB_NOTFOUND ? MDB_CORRUPTED : rc;
	}
	if (store_item_names(&v, &n) < 0) {
		return MDB_CORRUPTED;
	}
	return store_names_equal(&n, want) ? 1 : 0;
}

/*
 * Find the index entry of the record `want` under its hash `key`: each duplicate there
 * points at an item, which is read to tell the record from another whose hash collides.
 * Returns 0 with `cur` on the entry and *ret_val its value, MDB_NOTFOUND, or an MDB_*
 * error (MDB_CORRUPTED: an entry points at an item that is missing or does not decode).
 */
static int
find_entry(struct store *s, MDB_txn *txn, MDB_cursor *cur, uint8_t key[STORE_INDEX_KEY_SIZE],
           const struct names *want, MDB_val *ret_val)
{
	MDB_val k = {.mv_size = STORE_INDEX_KEY_SIZE, .mv_data = key};
	MDB_val v;
	int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_KEY);

	while (rc == 0) {
		if (v.mv_size != INDEX_VALUE_SIZE) {
			return MDB_CORRUPTED;
		}
		rc = store_item_is_of(s, txn, get_be64(v.mv_data), want);
		if (rc == 1) {
			*ret_val = v;
			return 0;
		}
		if (rc == 0) {
			rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT_DUP);
		}
	}
	return rc;
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
		/* The flags make a new store's index; an existing one keeps its own. */
		rc = mdb_dbi_open(txn, "index", create ? create | INDEX_FLAGS : 0, &s->index);
	}
	unsigned index_flags = 0;
	if (rc == 0) {
		rc = mdb_dbi_flags(txn, s->index, &index_flags);
		s->index_hashed = (index_flags & INDEX_FLAGS) == INDEX_FLAGS;
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
		 * digest table's values: store_set_schema() writes it with their rebuild;
		 * version 4 the index's layout: store_upgrade_index() rebuilds it. */
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

int
store_fsync_path(const char *path, int flags)
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
		r = store_fsync_path(opts->dir, O_RDONLY | O_DIRECTORY);
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
	s->hash_mask = UINT64_MAX;

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
int
store_grow_map(struct store *s, bool wait)
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
		(void) store_grow_map(s, false);
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
 * Point the index entry of a record, found by find_entry() at `cur`, at its new revision
 * `val`. The new seq sorts after every duplicate under the key, so an only entry is
 * overwritten in place; among colliding records' entries it is deleted and put again.
 */
static int
replace_entry(struct store *s, MDB_txn *txn, MDB_cursor *cur, MDB_val *key, MDB_val *val)
{
	size_t dups;
	int rc = mdb_cursor_count(cur, &dups);

	if (rc == 0 && dups == 1) {
		return mdb_cursor_put(cur, key, val, MDB_CURRENT);
	}
	if (rc == 0) {
		rc = mdb_cursor_del(cur, 0);
	}
	return rc == 0 ? mdb_put(txn, s->index, key, val, 0) : rc;
}

/*
 * Apply one record inside `txn`. Returns an MDB_* code, or a hook's negative errno.
 *
 * A new record, the common case, has its index entry put with MDB_NOOVERWRITE: one descent
 * of the index both looks for its hash and inserts it. When the hash exists, LMDB answers
 * MDB_KEYEXIST, and find_entry() reads the items its duplicates point at to tell the
 * record (a revision or a duplicate) from another whose hash collides (then the record is
 * new and gets a duplicate of its own under the hash).
 */
static int
apply_record(struct store *s, MDB_txn *txn, struct store_record *rec, uint64_t *seq)
{
	uint8_t hkey[STORE_INDEX_KEY_SIZE];
	uint8_t vbuf[INDEX_VALUE_SIZE];
	const struct names want = {.council = (const uint8_t *) rec->council,
	                           .council_len = strlen(rec->council),
	                           .msg_id = (const uint8_t *) rec->msg_id,
	                           .msg_id_len = strlen(rec->msg_id)};
	MDB_val ikey = {.mv_size = sizeof(hkey), .mv_data = hkey};
	MDB_val ival = {.mv_size = sizeof(vbuf), .mv_data = vbuf};
	MDB_cursor *cur = NULL;
	uint64_t next = *seq + 1;
	bool found = false, indexed = false;
	int rc = 0;

	if (store_names_hash(s, &want, hkey) < 0) {
		/* Ids are validated long before; this is a programming error upstream. */
		return EINVAL;
	}
	put_be64(vbuf, next);
	put_be32(vbuf + 8, rec->revision);
	vbuf[12] = rec->retraction ? STORE_FLAG_RETRACTED : 0;

	if (!rec->retraction) {
		rc = mdb_put(txn, s->index, &ikey, &ival, MDB_NOOVERWRITE);
		indexed = rc == 0;
	}
	if (rec->retraction || rc == MDB_KEYEXIST) {
		rc = mdb_cursor_open(txn, s->index, &cur);
		if (rc == 0) {
			rc = find_entry(s, txn, cur, hkey, &want, &ival);
			found = rc == 0;
		}
	}
	if (rc != 0 && rc != MDB_NOTFOUND) {
		goto out;
	}

	uint64_t stored_seq = 0;
	bool stored_retracted = false;

	if (found) {
		uint32_t stored_rev = get_be32((const uint8_t *) ival.mv_data + 8);

		stored_seq = get_be64(ival.mv_data);
		stored_retracted =
		        (((const uint8_t *) ival.mv_data)[12] & STORE_FLAG_RETRACTED) != 0;
		if (rec->revision <= stored_rev) {
			rec->status = COORD__V1__ACK_STATUS__ACK_STATUS_DUPLICATE;
			rec->seq = stored_seq;
			rc = 0;
			goto out;
		}
	} else if (rec->retraction) {
		rec->status = COORD__V1__ACK_STATUS__ACK_STATUS_REJECTED;
		rec->reason = COORD__V1__REASON__REASON_UNKNOWN_RECORD;
		rc = 0;
		goto out;
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
		goto out;
	}
	(void) coord__v1__item__pack(&item, val.mv_data);

	ival = (MDB_val){.mv_size = sizeof(vbuf), .mv_data = vbuf};
	if (found) {
		rc = replace_entry(s, txn, cur, &ikey, &ival);
	} else if (!indexed) {
		/* A new record whose hash collides with another's. */
		rc = mdb_put(txn, s->index, &ikey, &ival, 0);
	}
	if (rc != 0) {
		goto out;
	}

	rec->status = COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED;
	rec->seq = next;
	*seq = next;
	if (cur) {
		mdb_cursor_close(cur);
		cur = NULL;
	}
	rc = s->hooks.record ? run_record_hook(s, txn, rec, stored_seq, stored_retracted) : 0;
out:
	if (cur) {
		mdb_cursor_close(cur);
	}
	return rc;
}

int
store_write_batch(struct store *s, struct store_record *recs, size_t n)
{
	if (!s->index_hashed) {
		/* An index of schema 3 or older: store_upgrade_index() first. */
		return -EPROTO;
	}
	for (;;) {
		MDB_txn *txn;
		uint64_t seq = s->last_seq;
		int rc = mdb_txn_begin(s->env, NULL, 0, &txn);

		if (rc == MDB_MAP_RESIZED) {
			rc = store_adopt_map(s);
			if (rc == 0) {
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
		int r = store_grow_map(s, true);
		if (r < 0) {
			return r;
		}
	}
}

int
store_adopt_map(struct store *s)
{
	(void) pthread_rwlock_wrlock(&s->resize_lock);
	int rc = mdb_env_set_mapsize(s->env, 0);
	if (rc == 0) {
		MDB_envinfo info;
		(void) mdb_env_info(s->env, &info);
		s->map_size = info.me_mapsize;
	}
	(void) pthread_rwlock_unlock(&s->resize_lock);
	return rc;
}

int
store_read_begin(struct store *s, MDB_txn **ret_txn)
{
	for (int tries = 0;; tries++) {
		(void) pthread_rwlock_rdlock(&s->resize_lock);
		int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, ret_txn);
		if (rc == 0) {
			return 0;
		}
		(void) pthread_rwlock_unlock(&s->resize_lock);
		/* Another process (the daemon, beside a coordctl) grew the map since this one
		 * was opened: adopt its size and begin again. */
		if (rc != MDB_MAP_RESIZED || tries == 3 || (rc = store_adopt_map(s)) != 0) {
			return mdb_to_errno(rc);
		}
	}
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
	const struct names want = {.council = (const uint8_t *) council,
	                           .council_len = strlen(council),
	                           .msg_id = (const uint8_t *) msg_id,
	                           .msg_id_len = strlen(msg_id)};
	uint8_t key[STORE_INDEX_KEY_SIZE];
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val val;
	int r;

	if (store_names_hash(s, &want, key) < 0) {
		return -ENOENT;
	}
	if (!s->index_hashed) {
		return -EPROTO;
	}
	r = store_read_begin(s, &txn);
	if (r < 0) {
		return r;
	}
	int rc = mdb_cursor_open(txn, s->index, &cur);
	if (rc == 0) {
		rc = find_entry(s, txn, cur, key, &want, &val);
		mdb_cursor_close(cur);
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

/*
 * Whether the item `seq` is the live revision of its record: an entry under its hash points
 * at it, unretracted (seqs are unique: no other record's entry can point at it). `cur` is
 * on the index.
 */
static bool
item_is_live(struct store *s, MDB_cursor *cur, uint64_t seq, const MDB_val *item)
{
	struct names n = {0};
	uint8_t key[STORE_INDEX_KEY_SIZE];
	MDB_val k = {.mv_size = sizeof(key), .mv_data = key};
	MDB_val v;

	if (store_item_names(item, &n) < 0 || store_names_hash(s, &n, key) < 0) {
		return false;
	}
	for (int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_KEY); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT_DUP)) {
		if (v.mv_size == INDEX_VALUE_SIZE && get_be64(v.mv_data) == seq) {
			return !(((const uint8_t *) v.mv_data)[12] & STORE_FLAG_RETRACTED);
		}
	}
	return false;
}

int
store_scan_items(struct store *s, uint64_t after_seq, bool backwards, size_t max_items,
                 store_item_fn *fn, void *data, uint64_t *ret_last_seq)
{
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_cursor *icur = NULL;
	uint8_t key[8];
	MDB_val k = {.mv_size = sizeof(key), .mv_data = key};
	MDB_val v;
	int r = store_read_begin(s, &txn);
	int rc;

	if (r < 0) {
		return r;
	}
	rc = mdb_cursor_open(txn, s->items, &cur);
	if (rc == 0) {
		rc = mdb_cursor_open(txn, s->index, &icur);
		if (rc != 0) {
			mdb_cursor_close(cur);
		}
	}
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
		bool live = s->index_hashed && item_is_live(s, icur, seq, &v);
		r = fn(data, seq, v.mv_data, v.mv_size, live);
		if (r == 0) {
			rc = mdb_cursor_get(cur, &k, &v, backwards ? MDB_PREV : MDB_NEXT);
		}
	}
	mdb_cursor_close(icur);
	mdb_cursor_close(cur);
	store_read_end(s, txn);
	if (r != 0) {
		return r;
	}
	return rc == MDB_NOTFOUND ? 0 : mdb_to_errno(rc);
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

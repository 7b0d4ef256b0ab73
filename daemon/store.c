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
#include "store.h"
#include "varint.h"
#include "wire.h"

#define INDEX_VALUE_SIZE 13
#define BACKUP_CHUNK (1u << 16) /* bytes read from the copy's pipe at a time */
#define INDEX_KEY_MAX 256       /* council "\0" msg_id, the input of the index hash */
#define SCHEMA_KEY "schema_version"
/* msg_ids that differ only in their last this many bytes (sequential ids, rows of one
 * import) share the high half of their index keys: a batch of them dirties a few index
 * pages, not one page per record (store.h). */
#define INDEX_GROUP_CUT 2
/* The index table of schema 4: sorted duplicates of fixed size under each hash. */
#define INDEX_FLAGS (MDB_DUPSORT | MDB_DUPFIXED)

/* The SipHash-2-4 key of the index hash: the 16 bytes "coordd.index.v4" and a NUL, as
 * siphash24() takes them (two little-endian halves). It is fixed, not secret: every build
 * and tool must find the same entries, and a collision costs a read of an item, never a
 * wrong answer. */
static const uint64_t index_hash_key[2] = {UINT64_C(0x692e6464726f6f63),
                                           UINT64_C(0x0034762e7865646e)};

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
	uint32_t schema;    /* the stored schema version (STORE_SCHEMA_VERSION for a new store) */
	bool index_hashed;  /* the index table has schema 4's layout (keyed by hash, INDEX_FLAGS) */
	uint64_t hash_mask; /* ANDed into every index hash: all ones but in collision tests */
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

/* Build council "\0" msg_id, the input of the index hash; returns its length or
 * -ENAMETOOLONG. */
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

/* What names a record inside an item's bytes (borrowed from them). */
struct names {
	const uint8_t *council;
	size_t council_len;
	const uint8_t *msg_id;
	size_t msg_id_len;
};

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

/* What the index needs of an item, read from its bytes without decoding the rest. */
struct item_facts {
	struct names names;
	uint32_t revision;
	bool retraction;
};

/*
 * The council (Item field 3), and from the envelope (Item field 4) its msg_id (2),
 * revision (3) and whether its body is a Retraction (15, the last of the body fields 10..15,
 * as a decoder keeps the last of a oneof). The last occurrence of a field counts, as for a
 * decoder. Returns 0 or -EBADMSG (also for an item without an envelope or a msg_id).
 */
static int
item_facts(const MDB_val *item, struct item_facts *ret)
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
static int
item_names(const MDB_val *item, struct names *ret)
{
	struct item_facts f = {0};
	int r = item_facts(item, &f);

	if (r == 0) {
		*ret = f.names;
	}
	return r;
}

static bool
names_equal(const struct names *a, const struct names *b)
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
static int
names_hash(const struct store *s, const struct names *n, uint8_t key[STORE_INDEX_KEY_SIZE])
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

	return names_hash(s, &n, ret_key);
}

/* Whether the item at `seq` is of the record `want`: 1 or 0, MDB_CORRUPTED when it is
 * missing or does not decode, or another MDB_* error. */
static int
item_is_of(struct store *s, MDB_txn *txn, uint64_t seq, const struct names *want)
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
	if (item_names(&v, &n) < 0) {
		return MDB_CORRUPTED;
	}
	return names_equal(&n, want) ? 1 : 0;
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
		rc = item_is_of(s, txn, get_be64(v.mv_data), want);
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

	if (names_hash(s, &want, hkey) < 0) {
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
	const struct names want = {.council = (const uint8_t *) council,
	                           .council_len = strlen(council),
	                           .msg_id = (const uint8_t *) msg_id,
	                           .msg_id_len = strlen(msg_id)};
	uint8_t key[STORE_INDEX_KEY_SIZE];
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val val;
	int r;

	if (names_hash(s, &want, key) < 0) {
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

	if (item_names(item, &n) < 0 || names_hash(s, &n, key) < 0) {
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
	if (names_hash(s, &n, key) == 0) {
		for (int rc = mdb_cursor_get(icur, &k, &iv, MDB_SET_KEY); rc == 0;
		     rc = mdb_cursor_get(icur, &k, &iv, MDB_NEXT_DUP)) {
			have = iv.mv_size == INDEX_VALUE_SIZE &&
			       (get_be64(iv.mv_data) == seq ||
			        item_is_of(s, txn, get_be64(iv.mv_data), &n) == 1);
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
		int r = grow_map(s, true);
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

		if (seq > 0 && n < total && item_facts(&v, &f) == 0 && f.revision > 0 &&
		    names_hash(s, &f.names, key) == 0) {
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
		r = rc != 0 ? mdb_to_errno(rc) : item_names(&v, &names[i]) < 0 ? -EIO : 0;
	}
	for (size_t i = 0; i < n && r == 0; i++) {
		for (size_t j = i + 1; j < n; j++) {
			if (names_equal(&names[i], &names[j])) {
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

/*
 * outbox: the LMDB tables behind libcoord's durable queue (layout in outbox.h).
 *
 * Invariants, kept by every write transaction:
 *   - a key (msg_id, revision) is in `keys` exactly when one `pending` entry holds it, and
 *     `keys` maps it to that entry's seq;
 *   - a key is never both waiting and rejected: queueing deletes the rejected entry,
 *     rejecting deletes the waiting one;
 *   - meta "next_seq" is above every seq ever used, so pending seqs are appended in
 *     ascending order (MDB_APPEND) and never reused, even after the table empties.
 *
 * Value formats are versioned by their first byte (OUTBOX_FORMAT) and by the meta schema;
 * integers are big-endian so that the files do not depend on the machine.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <lmdb.h>

#include "outbox.h"

#define OUTBOX_FORMAT 1
/* pending value: format, msg_id length, revision, queued_at, then msg_id and bytes. */
#define PENDING_HEAD (1 + 1 + 4 + 8)
/* rejected value: format, queued_at, rejected_at, reason, message length, then message and
 * bytes. */
#define REJECTED_HEAD (1 + 8 + 8 + 4 + 2)
#define REJECTED_MESSAGE_MAX 1024
/* msg_id, NUL, revision */
#define KEY_MAX (COORD_MSG_ID_MAX + 1 + 4)

struct coord__outbox {
	MDB_env *env;
	MDB_dbi pending;
	MDB_dbi keys;
	MDB_dbi rejected;
	MDB_dbi meta;
	int lock_fd;
};

static int
mdb_err(int rc)
{
	switch (rc) {
	case MDB_SUCCESS:
		return 0;
	case MDB_NOTFOUND:
		return -ENOENT;
	case MDB_KEYEXIST:
		return -EEXIST;
	case MDB_MAP_FULL:
		return -ENOSPC;
	case MDB_VERSION_MISMATCH:
	case MDB_INVALID:
		return -EPROTO;
	default:
		/* LMDB passes system errors through as positive errno values. */
		if (rc > 0 && rc < 4096) {
			return -rc;
		}
		return -EIO;
	}
}

static void
put_u32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t) (v >> 24);
	p[1] = (uint8_t) (v >> 16);
	p[2] = (uint8_t) (v >> 8);
	p[3] = (uint8_t) v;
}

static uint32_t
get_u32(const uint8_t *p)
{
	return (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 | (uint32_t) p[2] << 8 | p[3];
}

static void
put_u64(uint8_t *p, uint64_t v)
{
	put_u32(p, (uint32_t) (v >> 32));
	put_u32(p + 4, (uint32_t) v);
}

static uint64_t
get_u64(const uint8_t *p)
{
	return (uint64_t) get_u32(p) << 32 | get_u32(p + 4);
}

/* Encode the key of (msg_id, revision) into buf (KEY_MAX bytes); returns its length or
 * -EINVAL. */
static int
make_key(uint8_t *buf, const char *msg_id, uint32_t revision)
{
	size_t len = msg_id != NULL ? strnlen(msg_id, COORD_MSG_ID_MAX + 1) : 0;
	if (len == 0 || len > COORD_MSG_ID_MAX || revision == 0) {
		return -EINVAL;
	}
	memcpy(buf, msg_id, len);
	buf[len] = '\0';
	put_u32(buf + len + 1, revision);
	return (int) (len + 5);
}

/* mkdir -p with mode 0700 for the directories it creates. */
static int
make_dirs(const char *path)
{
	char buf[PATH_MAX];
	size_t len = strlen(path);
	if (len == 0 || len >= sizeof(buf)) {
		return -EINVAL;
	}
	memcpy(buf, path, len + 1);
	for (size_t i = 1; i <= len; i++) {
		if (buf[i] != '/' && buf[i] != '\0') {
			continue;
		}
		char saved = buf[i];
		buf[i] = '\0';
		if (mkdir(buf, 0700) < 0 && errno != EEXIST) {
			return -errno;
		}
		buf[i] = saved;
	}
	struct stat st;
	if (stat(path, &st) < 0) {
		return -errno;
	}
	if (!S_ISDIR(st.st_mode)) {
		return -ENOTDIR;
	}
	return 0;
}

static int
take_lock(const char *dir, int *ret_fd)
{
	char path[PATH_MAX];
	if (snprintf(path, sizeof(path), "%s/lock", dir) >= (int) sizeof(path)) {
		return -ENAMETOOLONG;
	}
	int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
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

/* Create or check the meta entries in a write transaction. */
static int
init_meta(struct coord__outbox *ob, MDB_txn *txn, const char *council)
{
	MDB_val k = {.mv_size = 6, .mv_data = "schema"};
	MDB_val v;
	int rc = mdb_get(txn, ob->meta, &k, &v);
	if (rc == MDB_NOTFOUND) {
		uint8_t schema[4];
		put_u32(schema, COORD__OUTBOX_SCHEMA);
		v = (MDB_val){.mv_size = 4, .mv_data = schema};
		rc = mdb_put(txn, ob->meta, &k, &v, 0);
		if (rc != 0) {
			return mdb_err(rc);
		}
		k = (MDB_val){.mv_size = 7, .mv_data = "council"};
		v = (MDB_val){.mv_size = strlen(council), .mv_data = (void *) council};
		rc = mdb_put(txn, ob->meta, &k, &v, 0);
		if (rc != 0) {
			return mdb_err(rc);
		}
		uint8_t next[8];
		put_u64(next, 1);
		k = (MDB_val){.mv_size = 8, .mv_data = "next_seq"};
		v = (MDB_val){.mv_size = 8, .mv_data = next};
		return mdb_err(mdb_put(txn, ob->meta, &k, &v, 0));
	}
	if (rc != 0) {
		return mdb_err(rc);
	}
	if (v.mv_size != 4 || get_u32(v.mv_data) != COORD__OUTBOX_SCHEMA) {
		return -EPROTO;
	}
	k = (MDB_val){.mv_size = 7, .mv_data = "council"};
	rc = mdb_get(txn, ob->meta, &k, &v);
	if (rc != 0) {
		return rc == MDB_NOTFOUND ? -EPROTO : mdb_err(rc);
	}
	if (v.mv_size != strlen(council) || memcmp(v.mv_data, council, v.mv_size) != 0) {
		return -EXDEV;
	}
	return 0;
}

int
coord__outbox_open(const char *path, const char *council, uint64_t map_size, bool lock,
                   struct coord__outbox **ret_outbox)
{
	if (path == NULL || council == NULL || council[0] == '\0' || map_size < (1u << 20)) {
		return -EINVAL;
	}
	struct coord__outbox *ob = calloc(1, sizeof(*ob));
	if (ob == NULL) {
		return -ENOMEM;
	}
	ob->lock_fd = -1;
	MDB_txn *txn = NULL;
	int r = make_dirs(path);
	if (r < 0) {
		goto fail;
	}
	if (lock) {
		r = take_lock(path, &ob->lock_fd);
		if (r < 0) {
			goto fail;
		}
	}
	r = mdb_err(mdb_env_create(&ob->env));
	if (r < 0) {
		goto fail;
	}
	if (map_size > SIZE_MAX) {
		map_size = SIZE_MAX;
	}
	r = mdb_err(mdb_env_set_maxdbs(ob->env, 4));
	if (r == 0) {
		r = mdb_err(mdb_env_set_mapsize(ob->env, (size_t) map_size));
	}
	if (r == 0) {
		r = mdb_err(mdb_env_open(ob->env, path, MDB_NOTLS, 0600));
	}
	if (r < 0) {
		goto fail;
	}
	/* Reader slots of processes killed while reading (kill -9) would pin old pages. */
	int dead = 0;
	(void) mdb_reader_check(ob->env, &dead);
	r = mdb_err(mdb_txn_begin(ob->env, NULL, 0, &txn));
	if (r < 0) {
		goto fail;
	}
	r = mdb_err(mdb_dbi_open(txn, "pending", MDB_CREATE, &ob->pending));
	if (r == 0) {
		r = mdb_err(mdb_dbi_open(txn, "keys", MDB_CREATE, &ob->keys));
	}
	if (r == 0) {
		r = mdb_err(mdb_dbi_open(txn, "rejected", MDB_CREATE, &ob->rejected));
	}
	if (r == 0) {
		r = mdb_err(mdb_dbi_open(txn, "meta", MDB_CREATE, &ob->meta));
	}
	if (r == 0) {
		r = init_meta(ob, txn, council);
	}
	if (r < 0) {
		goto fail;
	}
	r = mdb_err(mdb_txn_commit(txn));
	txn = NULL;
	if (r < 0) {
		goto fail;
	}
	*ret_outbox = ob;
	return 0;
fail:
	if (txn != NULL) {
		mdb_txn_abort(txn);
	}
	(void) coord__outbox_free(ob);
	return r;
}

struct coord__outbox *
coord__outbox_free(struct coord__outbox *ob)
{
	if (ob == NULL) {
		return NULL;
	}
	if (ob->env != NULL) {
		mdb_env_close(ob->env);
	}
	if (ob->lock_fd >= 0) {
		(void) close(ob->lock_fd);
	}
	free(ob);
	return NULL;
}

static int
read_next_seq(struct coord__outbox *ob, MDB_txn *txn, uint64_t *ret)
{
	MDB_val k = {.mv_size = 8, .mv_data = "next_seq"};
	MDB_val v;
	int rc = mdb_get(txn, ob->meta, &k, &v);
	if (rc != 0) {
		return rc == MDB_NOTFOUND ? -EPROTO : mdb_err(rc);
	}
	if (v.mv_size != 8) {
		return -EPROTO;
	}
	*ret = get_u64(v.mv_data);
	return 0;
}

static int
queue_one(struct coord__outbox *ob, MDB_txn *txn, const struct coord__outbox_item *it,
          int64_t now_ms, uint64_t *next_seq, bool *ret_added)
{
	uint8_t key[KEY_MAX];
	int klen = make_key(key, it->msg_id, it->revision);
	if (klen < 0 || it->bytes == NULL || it->len == 0 || it->len > COORD_ENVELOPE_MAX) {
		return -EINVAL;
	}
	MDB_val k = {.mv_size = (size_t) klen, .mv_data = key};
	MDB_val v;
	int rc = mdb_get(txn, ob->keys, &k, &v);
	if (rc == 0) {
		*ret_added = false;
		return 0;
	}
	if (rc != MDB_NOTFOUND) {
		return mdb_err(rc);
	}
	rc = mdb_del(txn, ob->rejected, &k, NULL);
	if (rc != 0 && rc != MDB_NOTFOUND) {
		return mdb_err(rc);
	}

	size_t id_len = (size_t) klen - 5;
	uint8_t seq_buf[8];
	put_u64(seq_buf, *next_seq);
	MDB_val sk = {.mv_size = 8, .mv_data = seq_buf};
	/* MDB_RESERVE: LMDB hands out the space, we fill it; no extra copy of the bytes. */
	MDB_val sv = {.mv_size = PENDING_HEAD + id_len + it->len, .mv_data = NULL};
	rc = mdb_put(txn, ob->pending, &sk, &sv, MDB_APPEND | MDB_RESERVE);
	if (rc != 0) {
		return mdb_err(rc);
	}
	uint8_t *p = sv.mv_data;
	p[0] = OUTBOX_FORMAT;
	p[1] = (uint8_t) id_len;
	put_u32(p + 2, it->revision);
	put_u64(p + 6, (uint64_t) now_ms);
	memcpy(p + PENDING_HEAD, it->msg_id, id_len);
	memcpy(p + PENDING_HEAD + id_len, it->bytes, it->len);

	v = (MDB_val){.mv_size = 8, .mv_data = seq_buf};
	rc = mdb_put(txn, ob->keys, &k, &v, MDB_NOOVERWRITE);
	if (rc != 0) {
		return mdb_err(rc);
	}
	(*next_seq)++;
	*ret_added = true;
	return 0;
}

int
coord__outbox_put(struct coord__outbox *ob, const struct coord__outbox_item *items, size_t n,
                  int64_t now_ms, uint8_t *added)
{
	if (n == 0) {
		return 0;
	}
	MDB_txn *txn;
	int r = mdb_err(mdb_txn_begin(ob->env, NULL, 0, &txn));
	if (r < 0) {
		return r;
	}
	uint64_t next_seq;
	r = read_next_seq(ob, txn, &next_seq);
	int n_added = 0;
	for (size_t i = 0; r == 0 && i < n; i++) {
		bool one = false;
		r = queue_one(ob, txn, &items[i], now_ms, &next_seq, &one);
		if (r == 0 && one) {
			n_added++;
		}
		if (r == 0 && added != NULL) {
			added[i] = one;
		}
	}
	if (r == 0 && n_added > 0) {
		uint8_t buf[8];
		put_u64(buf, next_seq);
		MDB_val k = {.mv_size = 8, .mv_data = "next_seq"};
		MDB_val v = {.mv_size = 8, .mv_data = buf};
		r = mdb_err(mdb_put(txn, ob->meta, &k, &v, 0));
	}
	if (r < 0 || n_added == 0) {
		mdb_txn_abort(txn);
		return r < 0 ? r : 0;
	}
	r = mdb_err(mdb_txn_commit(txn));
	return r < 0 ? r : n_added;
}

/* Decode a pending value into rec (msg_id copied into idbuf). */
static int
decode_pending(const MDB_val *key, const MDB_val *val, char *idbuf,
               struct coord__outbox_record *rec)
{
	const uint8_t *p = val->mv_data;
	if (key->mv_size != 8 || val->mv_size < PENDING_HEAD || p[0] != OUTBOX_FORMAT) {
		return -EPROTO;
	}
	size_t id_len = p[1];
	if (id_len == 0 || id_len > COORD_MSG_ID_MAX || val->mv_size <= PENDING_HEAD + id_len) {
		return -EPROTO;
	}
	memcpy(idbuf, p + PENDING_HEAD, id_len);
	idbuf[id_len] = '\0';
	*rec = (struct coord__outbox_record){
	        .seq = get_u64(key->mv_data),
	        .msg_id = idbuf,
	        .revision = get_u32(p + 2),
	        .queued_at = (int64_t) get_u64(p + 6),
	        .bytes = p + PENDING_HEAD + id_len,
	        .len = val->mv_size - PENDING_HEAD - id_len,
	};
	return 0;
}

int
coord__outbox_scan(struct coord__outbox *ob, uint64_t after_seq, coord__outbox_scan_fn *fn,
                   void *userdata)
{
	if (after_seq == UINT64_MAX) {
		return 0;
	}
	MDB_txn *txn;
	int r = mdb_err(mdb_txn_begin(ob->env, NULL, MDB_RDONLY, &txn));
	if (r < 0) {
		return r;
	}
	MDB_cursor *cur;
	r = mdb_err(mdb_cursor_open(txn, ob->pending, &cur));
	if (r < 0) {
		mdb_txn_abort(txn);
		return r;
	}
	uint8_t start[8];
	put_u64(start, after_seq + 1);
	MDB_val k = {.mv_size = 8, .mv_data = start};
	MDB_val v;
	int rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	while (rc == 0) {
		char idbuf[COORD_MSG_ID_MAX + 1];
		struct coord__outbox_record rec;
		r = decode_pending(&k, &v, idbuf, &rec);
		if (r == 0) {
			r = fn(userdata, &rec);
		}
		if (r != 0) {
			break;
		}
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	if (r == 0 && rc != MDB_NOTFOUND) {
		r = mdb_err(rc);
	}
	mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	return r;
}

static int
settle_one(struct coord__outbox *ob, MDB_txn *txn, struct coord__outbox_outcome *o, int64_t now_ms)
{
	uint8_t key[KEY_MAX];
	int klen = make_key(key, o->msg_id, o->revision);
	o->found = false;
	if (klen < 0) {
		return 0; /* an Ack with an id we could never have queued */
	}
	MDB_val k = {.mv_size = (size_t) klen, .mv_data = key};
	MDB_val v;
	int rc = mdb_get(txn, ob->keys, &k, &v);
	if (rc == MDB_NOTFOUND) {
		return 0;
	}
	if (rc != 0) {
		return mdb_err(rc);
	}
	if (v.mv_size != 8) {
		return -EPROTO;
	}
	uint8_t seq_buf[8];
	memcpy(seq_buf, v.mv_data, 8);
	MDB_val sk = {.mv_size = 8, .mv_data = seq_buf};
	if (o->rejected) {
		MDB_val pv;
		rc = mdb_get(txn, ob->pending, &sk, &pv);
		if (rc != 0) {
			return rc == MDB_NOTFOUND ? -EPROTO : mdb_err(rc);
		}
		char idbuf[COORD_MSG_ID_MAX + 1];
		struct coord__outbox_record rec;
		int r = decode_pending(&sk, &pv, idbuf, &rec);
		if (r < 0) {
			return r;
		}
		const char *msg = o->message != NULL ? o->message : "";
		size_t mlen = strnlen(msg, REJECTED_MESSAGE_MAX);
		MDB_val rv = {.mv_size = REJECTED_HEAD + mlen + rec.len, .mv_data = NULL};
		/* rec.bytes points into the map; MDB_RESERVE may not move it (a put on another
		 * table copies-on-write pages, never the one we read from in place), but copy
		 * defensively through a heap buffer to stay independent of that detail. */
		uint8_t *copy = malloc(rec.len);
		if (copy == NULL) {
			return -ENOMEM;
		}
		memcpy(copy, rec.bytes, rec.len);
		int64_t queued_at = rec.queued_at;
		rc = mdb_put(txn, ob->rejected, &k, &rv, MDB_RESERVE);
		if (rc != 0) {
			free(copy);
			return mdb_err(rc);
		}
		uint8_t *p = rv.mv_data;
		p[0] = OUTBOX_FORMAT;
		put_u64(p + 1, (uint64_t) queued_at);
		put_u64(p + 9, (uint64_t) now_ms);
		put_u32(p + 17, (uint32_t) o->reason);
		p[21] = (uint8_t) (mlen >> 8);
		p[22] = (uint8_t) mlen;
		memcpy(p + REJECTED_HEAD, msg, mlen);
		memcpy(p + REJECTED_HEAD + mlen, copy, rec.len);
		free(copy);
	}
	rc = mdb_del(txn, ob->pending, &sk, NULL);
	if (rc != 0) {
		return rc == MDB_NOTFOUND ? -EPROTO : mdb_err(rc);
	}
	rc = mdb_del(txn, ob->keys, &k, NULL);
	if (rc != 0) {
		return mdb_err(rc);
	}
	o->found = true;
	return 1;
}

int
coord__outbox_settle(struct coord__outbox *ob, struct coord__outbox_outcome *outcomes, size_t n,
                     int64_t now_ms)
{
	if (n == 0) {
		return 0;
	}
	MDB_txn *txn;
	int r = mdb_err(mdb_txn_begin(ob->env, NULL, 0, &txn));
	if (r < 0) {
		return r;
	}
	int found = 0;
	for (size_t i = 0; i < n; i++) {
		r = settle_one(ob, txn, &outcomes[i], now_ms);
		if (r < 0) {
			mdb_txn_abort(txn);
			return r;
		}
		found += r;
	}
	if (found == 0) {
		mdb_txn_abort(txn);
		return 0;
	}
	r = mdb_err(mdb_txn_commit(txn));
	return r < 0 ? r : found;
}

int
coord__outbox_forget(struct coord__outbox *ob, const char *msg_id, uint32_t revision)
{
	uint8_t key[KEY_MAX];
	int klen = make_key(key, msg_id, revision);
	if (klen < 0) {
		return -ENOENT;
	}
	MDB_txn *txn;
	int r = mdb_err(mdb_txn_begin(ob->env, NULL, 0, &txn));
	if (r < 0) {
		return r;
	}
	MDB_val k = {.mv_size = (size_t) klen, .mv_data = key};
	r = mdb_err(mdb_del(txn, ob->rejected, &k, NULL));
	if (r < 0) {
		mdb_txn_abort(txn);
		return r;
	}
	return mdb_err(mdb_txn_commit(txn));
}

int
coord__outbox_count(struct coord__outbox *ob, uint64_t *ret_waiting, uint64_t *ret_rejected)
{
	MDB_txn *txn;
	int r = mdb_err(mdb_txn_begin(ob->env, NULL, MDB_RDONLY, &txn));
	if (r < 0) {
		return r;
	}
	MDB_stat ks, rs;
	r = mdb_err(mdb_stat(txn, ob->keys, &ks));
	if (r == 0) {
		r = mdb_err(mdb_stat(txn, ob->rejected, &rs));
	}
	mdb_txn_abort(txn);
	if (r < 0) {
		return r;
	}
	if (ret_waiting != NULL) {
		*ret_waiting = ks.ms_entries;
	}
	if (ret_rejected != NULL) {
		*ret_rejected = rs.ms_entries;
	}
	return 0;
}

static int
list_waiting(struct coord__outbox *ob, MDB_txn *txn, coord_outbox_fn *fn, void *userdata)
{
	MDB_cursor *cur;
	int r = mdb_err(mdb_cursor_open(txn, ob->pending, &cur));
	if (r < 0) {
		return r;
	}
	MDB_val k, v;
	int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	while (rc == 0) {
		char idbuf[COORD_MSG_ID_MAX + 1];
		struct coord__outbox_record rec;
		r = decode_pending(&k, &v, idbuf, &rec);
		if (r < 0) {
			break;
		}
		const struct coord_outbox_entry e = {
		        .state = COORD_OUTBOX_WAITING,
		        .msg_id = rec.msg_id,
		        .revision = rec.revision,
		        .queued_at = rec.queued_at,
		        .message = "",
		        .envelope = rec.bytes,
		        .envelope_len = rec.len,
		};
		r = fn(userdata, &e);
		if (r != 0) {
			break;
		}
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	if (r == 0 && rc != MDB_NOTFOUND) {
		r = mdb_err(rc);
	}
	mdb_cursor_close(cur);
	return r;
}

static int
list_rejected(struct coord__outbox *ob, MDB_txn *txn, coord_outbox_fn *fn, void *userdata)
{
	MDB_cursor *cur;
	int r = mdb_err(mdb_cursor_open(txn, ob->rejected, &cur));
	if (r < 0) {
		return r;
	}
	MDB_val k, v;
	int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
	while (rc == 0) {
		const uint8_t *key = k.mv_data;
		const uint8_t *p = v.mv_data;
		if (k.mv_size < 6 || k.mv_size > KEY_MAX || key[k.mv_size - 5] != '\0' ||
		    v.mv_size < REJECTED_HEAD || p[0] != OUTBOX_FORMAT) {
			r = -EPROTO;
			break;
		}
		size_t mlen = (size_t) p[21] << 8 | p[22];
		if (mlen > REJECTED_MESSAGE_MAX || v.mv_size < REJECTED_HEAD + mlen) {
			r = -EPROTO;
			break;
		}
		char idbuf[COORD_MSG_ID_MAX + 1];
		char msg[REJECTED_MESSAGE_MAX + 1];
		memcpy(idbuf, key, k.mv_size - 5);
		idbuf[k.mv_size - 5] = '\0';
		memcpy(msg, p + REJECTED_HEAD, mlen);
		msg[mlen] = '\0';
		const struct coord_outbox_entry e = {
		        .state = COORD_OUTBOX_REJECTED,
		        .msg_id = idbuf,
		        .revision = get_u32(key + k.mv_size - 4),
		        .queued_at = (int64_t) get_u64(p + 1),
		        .rejected_at = (int64_t) get_u64(p + 9),
		        .reason = (int) get_u32(p + 17),
		        .message = msg,
		        .envelope = p + REJECTED_HEAD + mlen,
		        .envelope_len = v.mv_size - REJECTED_HEAD - mlen,
		};
		r = fn(userdata, &e);
		if (r != 0) {
			break;
		}
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	if (r == 0 && rc != MDB_NOTFOUND) {
		r = mdb_err(rc);
	}
	mdb_cursor_close(cur);
	return r;
}

int
coord__outbox_list(struct coord__outbox *ob, unsigned which, coord_outbox_fn *fn, void *userdata)
{
	MDB_txn *txn;
	int r = mdb_err(mdb_txn_begin(ob->env, NULL, MDB_RDONLY, &txn));
	if (r < 0) {
		return r;
	}
	if (which & COORD_LIST_WAITING) {
		r = list_waiting(ob, txn, fn, userdata);
	}
	if (r == 0 && (which & COORD_LIST_REJECTED)) {
		r = list_rejected(ob, txn, fn, userdata);
	}
	mdb_txn_abort(txn);
	return r;
}

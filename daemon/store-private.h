/*
 * store-private.h: what store.c and store-repair.c share inside the store module; not
 * installed, not for other modules (they use store.h). struct store, the index's value and
 * key sizes, the big-endian and error helpers, and the item-reading and index-hash helpers
 * store.c defines (each documented at its definition there).
 */
#ifndef COORDD_STORE_PRIVATE_H
#define COORDD_STORE_PRIVATE_H

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <lmdb.h>

#include "store.h"

#define INDEX_VALUE_SIZE 13
#define INDEX_KEY_MAX 256 /* council "\0" msg_id, the input of the index hash */
#define SCHEMA_KEY "schema_version"
/* The index table of schema 4: sorted duplicates of fixed size under each hash. */
#define INDEX_FLAGS (MDB_DUPSORT | MDB_DUPFIXED)

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

static inline int
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

static inline void
put_be64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		p[i] = (uint8_t) v;
		v >>= 8;
	}
}

static inline uint64_t
get_be64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++) {
		v = (v << 8) | p[i];
	}
	return v;
}

static inline void
put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t) (v >> 24);
	p[1] = (uint8_t) (v >> 16);
	p[2] = (uint8_t) (v >> 8);
	p[3] = (uint8_t) v;
}

static inline uint32_t
get_be32(const uint8_t *p)
{
	return (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 | (uint32_t) p[2] << 8 | p[3];
}

/* What names a record inside an item's bytes (borrowed from them). */
struct names {
	const uint8_t *council;
	size_t council_len;
	const uint8_t *msg_id;
	size_t msg_id_len;
};

/* What the index needs of an item, read from its bytes without decoding the rest. */
struct item_facts {
	struct names names;
	uint32_t revision;
	bool retraction;
};

int store_index_bytes(const char *council, const char *msg_id, uint8_t buf[INDEX_KEY_MAX]);
int store_item_facts(const MDB_val *item, struct item_facts *ret);
int store_item_names(const MDB_val *item, struct names *ret);
bool store_names_equal(const struct names *a, const struct names *b);
int store_names_hash(const struct store *s, const struct names *n,
                     uint8_t key[STORE_INDEX_KEY_SIZE]);
int store_item_is_of(struct store *s, MDB_txn *txn, uint64_t seq, const struct names *want);
int store_fsync_path(const char *path, int flags);
int store_grow_map(struct store *s, bool wait);
/* Another process grew the map (MDB_MAP_RESIZED): map the size it set. Takes resize_lock
 * for writing, so no transaction of this process may be open. Returns an LMDB code. */
int store_adopt_map(struct store *s);

#endif

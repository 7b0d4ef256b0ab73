/*
 * Unit tests for store: real LMDB files in a temporary directory.
 */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <lmdb.h>

#include "siphash.h"
#include "store.h"

#define MIB (UINT64_C(1) << 20)

struct fixture {
	char dir[64];
	struct store *store;
};

/*
 * A record whose envelope bytes are a minimal packed Envelope of its own council, msg_id,
 * revision and body kind (the index tells records apart by them). The bytes live in a ring
 * of buffers, valid for the next RECORD_RING records.
 */
#define RECORD_RING 256
static struct store_record
record(const char *council, const char *msg_id, uint32_t revision, bool retraction)
{
	static uint8_t bufs[RECORD_RING][128];
	static size_t next;
	Coord__V1__Envelope env = COORD__V1__ENVELOPE__INIT;
	Coord__V1__Retraction retract = COORD__V1__RETRACTION__INIT;
	uint8_t *buf = bufs[next++ % RECORD_RING];

	env.council = (char *) council;
	env.msg_id = (char *) msg_id;
	env.revision = revision;
	if (retraction) {
		env.body_case = COORD__V1__ENVELOPE__BODY_RETRACTION;
		env.retraction = &retract;
	}
	assert_true(coord__v1__envelope__get_packed_size(&env) <= sizeof(bufs[0]));
	return (struct store_record){
	        .council = council,
	        .msg_id = msg_id,
	        .revision = revision,
	        .retraction = retraction,
	        .envelope = buf,
	        .envelope_len = coord__v1__envelope__pack(&env, buf),
	        .received_at = 1700000000000,
	};
}

static int
open_store(struct fixture *f, uint64_t map_size, uint64_t map_size_max)
{
	const struct store_options o = {
	        .dir = f->dir,
	        .map_size = map_size,
	        .map_size_max = map_size_max,
	        .sync = true,
	};
	return store_open(&o, &f->store);
}

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	strcpy(f->dir, "/tmp/coordd-test-store-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	assert_int_equal(open_store(f, 4 * MIB, 64 * MIB), 0);
	*state = f;
	return 0;
}

static void
remove_dir(const char *dir)
{
	const char *files[] = {"data.mdb", "lock.mdb", "coordd.lock"};
	char path[128];

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		(void) snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
		(void) unlink(path);
	}
	(void) rmdir(dir);
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	f->store = store_free(f->store);
	remove_dir(f->dir);
	free(f);
	return 0;
}

static void
test_accept_assigns_gap_free_seqs(void **state)
{
	struct fixture *f = *state;
	struct store_record recs[] = {
	        record("c01", "a", 1, false),
	        record("c01", "b", 1, false),
	        record("c02", "a", 1, false),
	};

	assert_int_equal(store_write_batch(f->store, recs, 3), 0);
	for (size_t i = 0; i < 3; i++) {
		assert_int_equal(recs[i].status, COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED);
		assert_int_equal(recs[i].seq, i + 1);
	}
	struct store_record more[] = {record("c03", "a", 1, false)};
	assert_int_equal(store_write_batch(f->store, more, 1), 0);
	assert_int_equal(more[0].seq, 4);
}

static void
test_duplicate_returns_original_seq(void **state)
{
	struct fixture *f = *state;
	struct store_record first[] = {record("c01", "m1", 1, false)};
	struct store_record again[] = {record("c01", "m1", 1, false)};
	struct store_stats st;

	assert_int_equal(store_write_batch(f->store, first, 1), 0);
	assert_int_equal(store_write_batch(f->store, again, 1), 0);
	assert_int_equal(again[0].status, COORD__V1__ACK_STATUS__ACK_STATUS_DUPLICATE);
	assert_int_equal(again[0].seq, first[0].seq);
	assert_int_equal(store_get_stats(f->store, &st), 0);
	assert_int_equal(st.items, 1);
	assert_int_equal(st.records, 1);
}

static void
test_duplicate_within_one_batch(void **state)
{
	struct fixture *f = *state;
	struct store_record recs[] = {
	        record("c01", "m1", 1, false),
	        record("c01", "m1", 1, false),
	        record("c01", "m1", 2, false),
	};

	assert_int_equal(store_write_batch(f->store, recs, 3), 0);
	assert_int_equal(recs[0].status, COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED);
	assert_int_equal(recs[1].status, COORD__V1__ACK_STATUS__ACK_STATUS_DUPLICATE);
	assert_int_equal(recs[1].seq, recs[0].seq);
	assert_int_equal(recs[2].status, COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED);
	assert_int_equal(recs[2].seq, 2);
}

static void
test_stale_revision_is_duplicate_with_latest_seq(void **state)
{
	struct fixture *f = *state;
	struct store_record recs[] = {
	        record("c01", "m1", 1, false),
	        record("c01", "m1", 3, false),
	};
	struct store_record stale[] = {record("c01", "m1", 2, false)};
	uint32_t rev = 0;
	uint64_t seq = 0;

	assert_int_equal(store_write_batch(f->store, recs, 2), 0);
	assert_int_equal(store_write_batch(f->store, stale, 1), 0);
	assert_int_equal(stale[0].status, COORD__V1__ACK_STATUS__ACK_STATUS_DUPLICATE);
	assert_int_equal(stale[0].seq, recs[1].seq);
	assert_int_equal(store_lookup(f->store, "c01", "m1", &seq, &rev, NULL), 0);
	assert_int_equal(rev, 3);
	assert_int_equal(seq, 2);
}

static void
test_retraction_and_restore(void **state)
{
	struct fixture *f = *state;
	struct store_record recs[] = {
	        record("c01", "m1", 1, false),
	        record("c01", "m1", 2, true),
	};
	struct store_record restore[] = {record("c01", "m1", 3, false)};
	bool retracted = false;

	assert_int_equal(store_write_batch(f->store, recs, 2), 0);
	assert_int_equal(recs[1].status, COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED);
	assert_int_equal(store_lookup(f->store, "c01", "m1", NULL, NULL, &retracted), 0);
	assert_true(retracted);
	assert_int_equal(store_write_batch(f->store, restore, 1), 0);
	assert_int_equal(restore[0].status, COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED);
	assert_int_equal(store_lookup(f->store, "c01", "m1", NULL, NULL, &retracted), 0);
	assert_false(retracted);
}

static void
test_retraction_of_unknown_record_is_rejected(void **state)
{
	struct fixture *f = *state;
	struct store_record recs[] = {record("c01", "never", 2, true)};
	struct store_stats st;

	assert_int_equal(store_write_batch(f->store, recs, 1), 0);
	assert_int_equal(recs[0].status, COORD__V1__ACK_STATUS__ACK_STATUS_REJECTED);
	assert_int_equal(recs[0].reason, COORD__V1__REASON__REASON_UNKNOWN_RECORD);
	assert_int_equal(store_get_stats(f->store, &st), 0);
	assert_int_equal(st.items, 0);
	assert_int_equal(store_lookup(f->store, "c01", "never", NULL, NULL, NULL), -ENOENT);
}

static void
test_lookup_unknown_is_enoent(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(store_lookup(f->store, "c01", "nothing", NULL, NULL, NULL), -ENOENT);
}

static void
test_item_holds_envelope_bytes_verbatim(void **state)
{
	struct fixture *f = *state;
	struct store_record recs[] = {record("c07", "verbatim", 1, false)};
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	uint8_t key[8] = {0, 0, 0, 0, 0, 0, 0, 1};
	MDB_val k = {.mv_size = 8, .mv_data = key}, v;

	assert_int_equal(store_write_batch(f->store, recs, 1), 0);
	/* Read it back as another process would. */
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
	assert_int_equal(mdb_env_open(env, f->dir, MDB_RDONLY, 0), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "items", 0, &dbi), 0);
	assert_int_equal(mdb_get(txn, dbi, &k, &v), 0);
	Coord__V1__Item *item = coord__v1__item__unpack(NULL, v.mv_size, v.mv_data);
	assert_non_null(item);
	assert_int_equal(item->seq, 1);
	assert_string_equal(item->council, "c07");
	assert_int_equal(item->received_at, 1700000000000);
	assert_int_equal(item->envelope.len, recs[0].envelope_len);
	assert_memory_equal(item->envelope.data, recs[0].envelope, recs[0].envelope_len);
	coord__v1__item__free_unpacked(item, NULL);
	mdb_txn_abort(txn);
	mdb_env_close(env);
}

static void
test_reopen_continues_seq(void **state)
{
	struct fixture *f = *state;
	struct store_record recs[] = {record("c01", "a", 1, false), record("c01", "b", 1, false)};
	struct store_record more[] = {record("c01", "c", 1, false), record("c01", "a", 1, false)};

	assert_int_equal(store_write_batch(f->store, recs, 2), 0);
	f->store = store_free(f->store);
	assert_int_equal(open_store(f, 4 * MIB, 64 * MIB), 0);
	assert_int_equal(store_write_batch(f->store, more, 2), 0);
	assert_int_equal(more[0].seq, 3);
	assert_int_equal(more[1].status, COORD__V1__ACK_STATUS__ACK_STATUS_DUPLICATE);
	assert_int_equal(more[1].seq, 1);
}

static void
test_second_open_is_busy(void **state)
{
	struct fixture *f = *state;
	struct store *other = NULL;
	const struct store_options o = {
	        .dir = f->dir, .map_size = 4 * MIB, .map_size_max = 64 * MIB, .sync = true};

	assert_int_equal(store_open(&o, &other), -EBUSY);
	assert_null(other);
}

/* Enough records of ~8 KiB to need more than `bytes` of map. */
static void
write_bulk(struct fixture *f, size_t count, int expect)
{
	static uint8_t payload[8192];
	struct store_record *recs = calloc(count, sizeof(*recs));
	char(*ids)[32] = calloc(count, sizeof(*ids));

	assert_non_null(recs);
	assert_non_null(ids);
	for (size_t i = 0; i < count; i++) {
		(void) snprintf(ids[i], sizeof(ids[i]), "bulk-%zu", i);
		recs[i] = record("c01", ids[i], 1, false);
		recs[i].envelope = payload;
		recs[i].envelope_len = sizeof(payload);
	}
	assert_int_equal(store_write_batch(f->store, recs, count), expect);
	free(ids);
	free(recs);
}

static void
test_map_grows_when_full(void **state)
{
	struct fixture *f = *state;
	struct store_stats st;

	f->store = store_free(f->store);
	assert_int_equal(open_store(f, 1 * MIB, 64 * MIB), 0);
	write_bulk(f, 512, 0); /* ~4 MiB */
	assert_int_equal(store_get_stats(f->store, &st), 0);
	assert_int_equal(st.items, 512);
	assert_true(st.map_size > 1 * MIB);
	assert_true(st.map_size <= 64 * MIB);
}

/* One batch of `count` ~8 KiB records with ids "ahead-<first>.." (new each call). */
static void
write_ahead_batch(struct fixture *f, size_t first, size_t count)
{
	static uint8_t payload[8192];
	struct store_record recs[16];
	char ids[16][32];

	assert_true(count <= 16);
	for (size_t i = 0; i < count; i++) {
		(void) snprintf(ids[i], sizeof(ids[i]), "ahead-%zu", first + i);
		recs[i] = record("c01", ids[i], 1, false);
		recs[i].envelope = payload;
		recs[i].envelope_len = sizeof(payload);
	}
	assert_int_equal(store_write_batch(f->store, recs, count), 0);
	for (size_t i = 0; i < count; i++) {
		assert_int_equal(recs[i].status, COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED);
	}
}

static void
test_map_grows_ahead_unless_a_reader_is_open(void **state)
{
	struct fixture *f = *state;
	struct store_stats st;
	size_t next = 0;

	f->store = store_free(f->store);
	assert_int_equal(open_store(f, 1 * MIB, 64 * MIB), 0);
	/* No reader: after every commit at most half the map is in use. */
	for (int b = 0; b < 24; b++, next += 4) {
		write_ahead_batch(f, next, 4); /* ~32 KiB */
		assert_int_equal(store_get_stats(f->store, &st), 0);
		assert_true(st.used_bytes * STORE_GROW_AHEAD_DIV <= st.map_size);
	}
	assert_true(st.map_size >= 2 * MIB);

	/* A reader open: the map stays as it is, past half full (each batch is well under a
	 * tenth of the map, so it never meets MDB_MAP_FULL, which would wait for the reader). */
	uint64_t before = st.map_size;
	MDB_txn *txn;
	assert_int_equal(store_read_begin(f->store, &txn), 0);
	for (int b = 0; st.used_bytes * STORE_GROW_AHEAD_DIV <= before; b++, next += 4) {
		assert_true(b < 1000);
		write_ahead_batch(f, next, 4);
		assert_int_equal(store_get_stats(f->store, &st), 0);
		assert_int_equal(st.map_size, before);
	}
	store_read_end(f->store, txn);
	assert_int_equal(store_get_stats(f->store, &st), 0);
	assert_int_equal(st.map_size, before);
	assert_true(st.used_bytes * STORE_GROW_AHEAD_DIV > st.map_size);
	/* The next commit finds no reader and grows. */
	write_ahead_batch(f, next, 1);
	assert_int_equal(store_get_stats(f->store, &st), 0);
	assert_true(st.map_size > before);
	assert_true(st.used_bytes * STORE_GROW_AHEAD_DIV <= st.map_size);
	assert_int_equal(st.items, next + 1);
}

static void
test_map_at_maximum_is_enospc_and_writes_nothing(void **state)
{
	struct fixture *f = *state;
	struct store_stats st;

	f->store = store_free(f->store);
	assert_int_equal(open_store(f, 1 * MIB, 2 * MIB), 0);
	write_bulk(f, 512, -ENOSPC);
	assert_int_equal(store_get_stats(f->store, &st), 0);
	assert_int_equal(st.items, 0);
	assert_int_equal(st.last_seq, 0);
	/* Still usable for what fits. */
	write_bulk(f, 8, 0);
}

/* Write `version` as the schema version, with LMDB directly (the store must be closed). */
static void
put_schema(struct fixture *f, uint32_t version)
{
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	uint8_t b[4] = {(uint8_t) (version >> 24), (uint8_t) (version >> 16),
	                (uint8_t) (version >> 8), (uint8_t) version};
	MDB_val k = {.mv_size = strlen("schema_version"), .mv_data = "schema_version"};
	MDB_val v = {.mv_size = sizeof(b), .mv_data = b};

	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
	assert_int_equal(mdb_env_open(env, f->dir, 0, 0640), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
	assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
}

static void
test_newer_schema_is_refused(void **state)
{
	struct fixture *f = *state;

	f->store = store_free(f->store);
	put_schema(f, STORE_SCHEMA_VERSION + 1);

	assert_int_equal(open_store(f, 4 * MIB, 64 * MIB), -EPROTO);
	assert_null(f->store);
}

/*
 * A new store's data.mdb appears only complete: it is made in <dir>/.new-store and renamed;
 * a .new-store left by a crashed start (here with a torn file) is removed, never used.
 */
static void
test_new_store_is_created_aside_and_renamed(void **state)
{
	struct fixture *f = *state;
	char path[160];
	struct stat st;

	/* The setup's open created the store: no .new-store is left behind. */
	(void) snprintf(path, sizeof(path), "%s/.new-store", f->dir);
	assert_int_equal(stat(path, &st), -1);
	(void) snprintf(path, sizeof(path), "%s/data.mdb", f->dir);
	assert_int_equal(stat(path, &st), 0);

	/* Start over on an empty directory with a stale, torn .new-store/data.mdb. */
	f->store = store_free(f->store);
	remove_dir(f->dir);
	assert_int_equal(mkdir(f->dir, 0750), 0);
	(void) snprintf(path, sizeof(path), "%s/.new-store", f->dir);
	assert_int_equal(mkdir(path, 0750), 0);
	(void) snprintf(path, sizeof(path), "%s/.new-store/data.mdb", f->dir);
	FILE *torn = fopen(path, "w");
	assert_non_null(torn);
	assert_int_equal(fputs("not an LMDB file", torn) >= 0, 1);
	assert_int_equal(fclose(torn), 0);

	assert_int_equal(open_store(f, 4 * MIB, 64 * MIB), 0);
	assert_int_equal(stat(path, &st), -1);
	(void) snprintf(path, sizeof(path), "%s/.new-store", f->dir);
	assert_int_equal(stat(path, &st), -1);
	struct store_stats stats;
	assert_int_equal(store_get_stats(f->store, &stats), 0);
	assert_int_equal(stats.last_seq, 0);
}

static void
test_unusable_directory_fails(void **state)
{
	struct store *s = NULL;
	const struct store_options o = {
	        .dir = "/proc/coordd-no-such-dir", .map_size = MIB, .map_size_max = MIB};

	assert_true(store_open(&o, &s) < 0);
	assert_null(s);
}

static void
test_free_accepts_null(void **state)
{
	assert_null(store_free(NULL));
}

/* A record whose envelope bytes really are its Envelope (store_verify checks that). */
static struct store_record
real_record(const char *council, const char *msg_id, uint32_t revision, bool retraction,
            uint8_t *buf, size_t cap)
{
	Coord__V1__Envelope env = COORD__V1__ENVELOPE__INIT;
	Coord__V1__Event event = COORD__V1__EVENT__INIT;
	Coord__V1__Retraction retract = COORD__V1__RETRACTION__INIT;
	struct store_record rec = record(council, msg_id, revision, retraction);

	env.council = (char *) council;
	env.msg_id = (char *) msg_id;
	env.revision = revision;
	env.created_at = 1700000000000;
	if (retraction) {
		env.body_case = COORD__V1__ENVELOPE__BODY_RETRACTION;
		env.retraction = &retract;
	} else {
		event.kind = COORD__V1__EVENT_KIND__EVENT_KIND_RALLY;
		event.country = "FR";
		event.date = 1700000000000;
		event.title = "Rally";
		env.body_case = COORD__V1__ENVELOPE__BODY_EVENT;
		env.event = &event;
	}
	assert_true(coord__v1__envelope__get_packed_size(&env) <= cap);
	rec.envelope = buf;
	rec.envelope_len = coord__v1__envelope__pack(&env, buf);
	return rec;
}

static void
write_sample(struct fixture *f)
{
	static uint8_t bufs[5][128];
	struct store_record recs[] = {
	        real_record("c01", "a", 1, false, bufs[0], sizeof(bufs[0])),
	        real_record("c01", "b", 1, false, bufs[1], sizeof(bufs[1])),
	        real_record("c01", "a", 2, false, bufs[2], sizeof(bufs[2])),
	        real_record("c02", "a", 1, false, bufs[3], sizeof(bufs[3])),
	        real_record("c01", "b", 2, true, bufs[4], sizeof(bufs[4])),
	};

	assert_int_equal(store_write_batch(f->store, recs, 5), 0);
}

/* Open the store's environment raw, as another program could, and run `edit` on it. */
static void
raw_edit(struct fixture *f, const char *table, const void *key, size_t klen, const void *val,
         size_t vlen)
{
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	MDB_val k = {.mv_size = klen, .mv_data = (void *) key};
	MDB_val v = {.mv_size = vlen, .mv_data = (void *) val};

	f->store = store_free(f->store);
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
	assert_int_equal(mdb_env_open(env, f->dir, 0, 0640), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, table, 0, &dbi), 0);
	if (val) {
		/* The value replaces the key's (the index has duplicates: all of them). */
		int rc = mdb_del(txn, dbi, &k, NULL);
		assert_true(rc == 0 || rc == MDB_NOTFOUND);
		assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
	} else {
		assert_int_equal(mdb_del(txn, dbi, &k, NULL), 0);
	}
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
	assert_int_equal(open_store(f, 4 * MIB, 64 * MIB), 0);
}

/* The index key of (council, msg_id) in f's store (borrowed until the next call). */
static const uint8_t *
index_key(struct fixture *f, const char *council, const char *msg_id)
{
	static uint8_t key[STORE_INDEX_KEY_SIZE];

	assert_int_equal(store_index_key(f->store, council, msg_id, key), 0);
	return key;
}

static uint64_t progress_calls;

static void
count_progress(void *data, uint64_t done, uint64_t total)
{
	progress_calls++;
	assert_true(done <= total);
}

static void
test_verify_accepts_a_consistent_store(void **state)
{
	struct fixture *f = *state;
	struct store_verify_report rep;

	write_sample(f);
	progress_calls = 0;
	assert_int_equal(store_verify(f->store, count_progress, NULL, NULL, &rep), 0);
	assert_int_equal(rep.items, 5);
	assert_int_equal(rep.records, 3);
	assert_int_equal(rep.problems, 0);
	assert_true(progress_calls >= 1);
}

static void
test_verify_finds_a_missing_item(void **state)
{
	struct fixture *f = *state;
	struct store_verify_report rep;
	uint8_t key[8] = {0, 0, 0, 0, 0, 0, 0, 2};

	write_sample(f);
	raw_edit(f, "items", key, sizeof(key), NULL, 0);
	assert_int_equal(store_verify(f->store, NULL, NULL, NULL, &rep), -EBADMSG);
	assert_true(rep.problems >= 1);
	assert_non_null(strstr(rep.first_problem, "gap"));
}

static void
test_verify_finds_an_undecodable_item(void **state)
{
	struct fixture *f = *state;
	struct store_verify_report rep;
	uint8_t key[8] = {0, 0, 0, 0, 0, 0, 0, 1};

	write_sample(f);
	raw_edit(f, "items", key, sizeof(key), "\xff\xff\xff", 3);
	assert_int_equal(store_verify(f->store, NULL, NULL, NULL, &rep), -EBADMSG);
	assert_non_null(strstr(rep.first_problem, "does not decode"));
}

static void
test_verify_finds_a_wrong_index_entry(void **state)
{
	struct fixture *f = *state;
	struct store_verify_report rep;
	/* c02/a is at seq 4 revision 1; claim revision 7 there. */
	uint8_t val[13] = {0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 7, 0};

	write_sample(f);
	raw_edit(f, "index", index_key(f, "c02", "a"), STORE_INDEX_KEY_SIZE, val, sizeof(val));
	assert_int_equal(store_verify(f->store, NULL, NULL, NULL, &rep), -EBADMSG);
	assert_non_null(strstr(rep.first_problem, "c02/a"));
}

static void
test_verify_finds_an_index_entry_without_item(void **state)
{
	struct fixture *f = *state;
	struct store_verify_report rep;
	uint8_t val[13] = {0, 0, 0, 0, 0, 0, 0, 99, 0, 0, 0, 1, 0};

	write_sample(f);
	raw_edit(f, "index", index_key(f, "c09", "ghost"), STORE_INDEX_KEY_SIZE, val, sizeof(val));
	assert_int_equal(store_verify(f->store, NULL, NULL, NULL, &rep), -EBADMSG);
	assert_non_null(strstr(rep.first_problem, "point at a matching item"));
}

/* The schema version as stored, read with LMDB directly (the store must be closed). */
static uint32_t
stored_schema(struct fixture *f)
{
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	MDB_val k = {.mv_size = strlen("schema_version"), .mv_data = "schema_version"};
	MDB_val v;

	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
	assert_int_equal(mdb_env_open(env, f->dir, MDB_RDONLY, 0640), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
	assert_int_equal(mdb_get(txn, dbi, &k, &v), 0);
	assert_int_equal(v.mv_size, 4);
	const uint8_t *b = v.mv_data;
	uint32_t version =
	        (uint32_t) b[0] << 24 | (uint32_t) b[1] << 16 | (uint32_t) b[2] << 8 | b[3];
	mdb_txn_abort(txn);
	mdb_env_close(env);
	return version;
}

/* A version 1 store (before digest_log) stays 1 for a read-only open, and becomes the
 * current version at the first read-write open, its items intact. */
static void
test_older_schema_is_upgraded(void **state)
{
	struct fixture *f = *state;
	struct store *ro = NULL;
	struct store_stats st;
	const struct store_options o = {.dir = f->dir, .map_size = 4 * MIB, .read_only = true};

	write_sample(f);
	f->store = store_free(f->store);
	put_schema(f, 1);

	assert_int_equal(store_open(&o, &ro), 0);
	store_free(ro);
	assert_int_equal(stored_schema(f), 1);
	assert_int_equal(open_store(f, 4 * MIB, 64 * MIB), 0);
	assert_int_equal(store_get_stats(f->store, &st), 0);
	assert_int_equal(st.last_seq, 5);
	f->store = store_free(f->store);
	/* 2: version 3 comes with the digest table's rebuild (digest_upgrade()). */
	assert_int_equal(stored_schema(f), 2);
	assert_int_equal(open_store(f, 4 * MIB, 64 * MIB), 0);
	assert_int_equal(store_schema(f->store), 2);
	/* The index comes after the aggregates (digest_upgrade() first). */
	struct store_repair_report rrep;
	assert_int_equal(store_upgrade_index(f->store, NULL, NULL, &rrep), -EPROTO);
}

static void
test_read_only_open_beside_the_writer(void **state)
{
	struct fixture *f = *state;
	struct store *ro = NULL;
	struct store_stats st;
	const struct store_options o = {.dir = f->dir, .map_size = 4 * MIB, .read_only = true};
	struct store_record more[] = {record("c03", "x", 1, false)};

	write_sample(f);
	assert_int_equal(store_open(&o, &ro), 0);
	assert_int_equal(store_get_stats(ro, &st), 0);
	assert_int_equal(st.last_seq, 5);
	/* The writer goes on; the reader sees it in its next transaction. */
	assert_int_equal(store_write_batch(f->store, more, 1), 0);
	assert_int_equal(store_get_stats(ro, &st), 0);
	assert_int_equal(st.last_seq, 6);
	assert_true(store_write_batch(ro, more, 1) < 0);
	store_free(ro);
}

static void
test_read_only_open_of_missing_store_fails(void **state)
{
	struct store *ro = NULL;
	const struct store_options o = {
	        .dir = "/tmp/coordd-no-such-store", .map_size = MIB, .read_only = true};

	assert_int_equal(store_open(&o, &ro), -ENOENT);
	assert_null(ro);
}

static void
test_backup_is_a_consistent_copy(void **state)
{
	struct fixture *f = *state;
	struct fixture copy = {0};
	struct store_verify_report rep;
	struct store_stats st;

	write_sample(f);
	strcpy(copy.dir, "/tmp/coordd-test-backup-XXXXXX");
	assert_non_null(mkdtemp(copy.dir));
	assert_int_equal(store_backup(f->store, copy.dir, NULL, NULL), 0);
	assert_int_equal(store_backup(f->store, copy.dir, NULL, NULL), -EEXIST);
	assert_int_equal(open_store(&copy, 4 * MIB, 64 * MIB), 0);
	assert_int_equal(store_verify(copy.store, NULL, NULL, NULL, &rep), 0);
	assert_int_equal(store_get_stats(copy.store, &st), 0);
	assert_int_equal(st.last_seq, 5);
	assert_int_equal(st.records, 3);
	copy.store = store_free(copy.store);
	remove_dir(copy.dir);
}

/* coordctl beside the daemon: the writer grows the map after the reader opened the store. */
static void
test_reader_adopts_a_map_grown_by_the_writer(void **state)
{
	struct fixture *f = *state;
	struct fixture copy = {0};
	struct store *ro = NULL;
	struct store_stats st;
	const struct store_options o = {.dir = f->dir, .map_size = MIB, .read_only = true};

	f->store = store_free(f->store);
	assert_int_equal(open_store(f, 1 * MIB, 64 * MIB), 0);
	write_sample(f);
	assert_int_equal(store_open(&o, &ro), 0);
	write_bulk(f, 512, 0); /* ~4 MiB: the writer's map grows past the reader's */
	assert_int_equal(store_get_stats(f->store, &st), 0);
	assert_true(st.map_size > 2 * MIB);

	strcpy(copy.dir, "/tmp/coordd-test-backup-XXXXXX");
	assert_non_null(mkdtemp(copy.dir));
	assert_int_equal(store_backup(ro, copy.dir, NULL, NULL), 0);
	assert_int_equal(store_get_stats(ro, &st), 0);
	assert_int_equal(st.items, 517);
	store_free(ro);
	assert_int_equal(open_store(&copy, 4 * MIB, 64 * MIB), 0);
	assert_int_equal(store_get_stats(copy.store, &st), 0);
	assert_int_equal(st.items, 517);
	copy.store = store_free(copy.store);
	remove_dir(copy.dir);
}

static void
count_problem(void *data, const char *text)
{
	(*(unsigned *) data)++;
	assert_non_null(text);
}

/* Rebuild f's index in a repair transaction of its own; it must succeed. */
static void
rebuild_index(struct fixture *f, struct store_repair_report *ret_report)
{
	MDB_txn *txn;

	assert_int_equal(store_repair_begin(f->store, &txn), 0);
	assert_int_equal(store_rebuild_index(f->store, txn, NULL, NULL, NULL, ret_report), 0);
	assert_int_equal(store_repair_commit(f->store, txn), 0);
}

static void
test_rebuild_index_mends_a_missing_and_a_stray_entry(void **state)
{
	struct fixture *f = *state;
	struct store_verify_report rep;
	struct store_repair_report rrep;
	uint8_t stray[13] = {0, 0, 0, 0, 0, 0, 0, 99, 0, 0, 0, 1, 0};
	unsigned problems = 0;

	write_sample(f);
	raw_edit(f, "index", index_key(f, "c01", "a"), STORE_INDEX_KEY_SIZE, NULL, 0);
	raw_edit(f, "index", index_key(f, "c09", "ghost"), STORE_INDEX_KEY_SIZE, stray,
	         sizeof(stray));
	assert_int_equal(store_verify(f->store, NULL, count_problem, &problems, &rep), -EBADMSG);
	assert_int_equal(problems, rep.problems);
	assert_true(problems >= 2);

	rebuild_index(f, &rrep);
	assert_int_equal(rrep.items, 5);
	assert_int_equal(rrep.records, 3);
	assert_int_equal(rrep.replaced, 1);
	assert_int_equal(rrep.dropped, 1);
	assert_int_equal(rrep.skipped, 0);
	assert_int_equal(store_verify(f->store, NULL, NULL, NULL, &rep), 0);

	uint64_t seq;
	uint32_t revision;
	assert_int_equal(store_lookup(f->store, "c01", "a", &seq, &revision, NULL), 0);
	assert_int_equal(seq, 3);
	assert_int_equal(revision, 2);
}

static void
test_repair_needs_a_writable_store(void **state)
{
	struct fixture *f = *state;
	struct store *ro;
	MDB_txn *txn;
	const struct store_options o = {.dir = f->dir, .map_size = 4 * MIB, .read_only = true};

	write_sample(f);
	assert_int_equal(store_open(&o, &ro), 0);
	assert_int_equal(store_repair_begin(ro, &txn), -EROFS);
	store_free(ro);
}

static void
test_backup_refuses_a_directory_with_files(void **state)
{
	struct fixture *f = *state;
	char dir[] = "/tmp/coordd-test-backup-XXXXXX";
	char path[PATH_MAX];

	write_sample(f);
	assert_non_null(mkdtemp(dir));
	(void) snprintf(path, sizeof(path), "%s/keep", dir);
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	fclose(fp);
	assert_int_equal(store_backup(f->store, dir, NULL, NULL), -EEXIST);
	assert_int_equal(access(path, F_OK), 0);
	(void) snprintf(path, sizeof(path), "%s/data.mdb", dir);
	assert_int_equal(access(path, F_OK), -1);
	assert_int_equal(store_backup(f->store, "/proc/version", NULL, NULL), -ENOTDIR);
	(void) snprintf(path, sizeof(path), "%s/keep", dir);
	(void) unlink(path);
	remove_dir(dir);
}

/* SipHash-2-4's reference vectors: key 00..0f, message 00..n-1 (the paper's appendix and
 * the reference implementation's vectors_sip64). */
static void
test_siphash_reference_vectors(void **state)
{
	uint8_t key[16], msg[16];

	(void) state;
	for (int i = 0; i < 16; i++) {
		key[i] = msg[i] = (uint8_t) i;
	}
	const uint64_t k[2] = {siphash_le64(key), siphash_le64(key + 8)};
	assert_true(siphash24(k, msg, 0) == UINT64_C(0x726fdb47dd0e0e31));
	assert_true(siphash24(k, msg, 1) == UINT64_C(0x74f839c593dc67fd));
	assert_true(siphash24(k, msg, 8) == UINT64_C(0x93f5f5799a932462));
	assert_true(siphash24(k, msg, 15) == UINT64_C(0xa129ca6149be45e5));
	assert_true(siphash24(k, msg, 16) == UINT64_C(0x3f2acc7f57c29bdb));
}

/* Index keys of msg_ids that differ only in their last two bytes share their high half. */
static void
test_sequential_ids_share_the_high_half_of_their_keys(void **state)
{
	struct fixture *f = *state;
	uint8_t a[STORE_INDEX_KEY_SIZE], b[STORE_INDEX_KEY_SIZE], c[STORE_INDEX_KEY_SIZE];

	assert_int_equal(store_index_key(f->store, "c01", "row-1200", a), 0);
	assert_int_equal(store_index_key(f->store, "c01", "row-1299", b), 0);
	assert_int_equal(store_index_key(f->store, "c01", "row-1300", c), 0);
	assert_memory_equal(a, b, 4);
	assert_memory_not_equal(a + 4, b + 4, 4);
	assert_memory_not_equal(a, c, 4);
	assert_int_equal(store_index_key(f->store, "c02", "row-1200", c), 0);
	assert_memory_not_equal(a, c, 4);
	assert_int_equal(store_index_key(f->store, "c01", "x", c), 0);
	assert_int_equal(store_index_key(f->store, "c01", "", c), 0);
}

struct live_seen {
	uint64_t live; /* bit seq set when the scan called item seq live */
	unsigned items;
};

static int
note_live(void *data, uint64_t seq, const uint8_t *item, size_t len, bool live)
{
	struct live_seen *seen = data;

	assert_non_null(item);
	assert_true(len > 0 && seq < 64);
	seen->items++;
	if (live) {
		seen->live |= UINT64_C(1) << seq;
	}
	return 0;
}

static void
assert_lookup(struct fixture *f, const char *council, const char *msg_id, uint64_t want_seq,
              uint32_t want_revision, bool want_retracted)
{
	uint64_t seq;
	uint32_t revision;
	bool retracted;

	assert_int_equal(store_lookup(f->store, council, msg_id, &seq, &revision, &retracted), 0);
	assert_int_equal(seq, want_seq);
	assert_int_equal(revision, want_revision);
	assert_int_equal(retracted, want_retracted);
}

/* Every record under one hash (a mask of 0): records stay distinct through new puts, resends,
 * a correction, a retraction, lookups, the live check, verify and a rebuild. */
static void
test_colliding_records_stay_distinct(void **state)
{
	struct fixture *f = *state;
	static uint8_t bufs[12][128];
	struct store_record first[] = {
	        real_record("c01", "a", 1, false, bufs[0], sizeof(bufs[0])),
	        real_record("c01", "b", 1, false, bufs[1], sizeof(bufs[1])),
	        real_record("c02", "a", 1, false, bufs[2], sizeof(bufs[2])),
	};
	struct store_record again[] = {
	        real_record("c02", "a", 1, false, bufs[3], sizeof(bufs[3])),
	        real_record("c01", "b", 1, false, bufs[4], sizeof(bufs[4])),
	        real_record("c01", "a", 1, false, bufs[5], sizeof(bufs[5])),
	};
	struct store_record change[] = {
	        real_record("c01", "b", 2, false, bufs[6], sizeof(bufs[6])),
	        real_record("c02", "a", 2, true, bufs[7], sizeof(bufs[7])),
	        real_record("c03", "a", 2, true, bufs[8], sizeof(bufs[8])),
	        real_record("c01", "b", 2, false, bufs[9], sizeof(bufs[9])),
	};
	struct store_verify_report rep;
	struct store_repair_report rrep;
	struct store_stats st;
	struct live_seen seen = {0};

	store_set_hash_mask(f->store, 0);
	assert_memory_equal(index_key(f, "c01", "a"), index_key(f, "c02", "zzz"), 8);
	assert_int_equal(store_write_batch(f->store, first, 3), 0);
	for (size_t i = 0; i < 3; i++) {
		assert_int_equal(first[i].status, COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED);
		assert_int_equal(first[i].seq, i + 1);
	}
	/* A resend is recognised as its own record's, not as the first under the hash. */
	assert_int_equal(store_write_batch(f->store, again, 3), 0);
	for (size_t i = 0; i < 3; i++) {
		assert_int_equal(again[i].status, COORD__V1__ACK_STATUS__ACK_STATUS_DUPLICATE);
		assert_int_equal(again[i].seq, 3 - i);
	}
	/* A correction and a retraction change their own record; a retraction of a record
	 * never stored is refused although its hash is taken; a resend of the new revision
	 * in the same batch is a duplicate of it. */
	assert_int_equal(store_write_batch(f->store, change, 4), 0);
	assert_int_equal(change[0].status, COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED);
	assert_int_equal(change[0].seq, 4);
	assert_int_equal(change[1].status, COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED);
	assert_int_equal(change[1].seq, 5);
	assert_int_equal(change[2].status, COORD__V1__ACK_STATUS__ACK_STATUS_REJECTED);
	assert_int_equal(change[2].reason, COORD__V1__REASON__REASON_UNKNOWN_RECORD);
	assert_int_equal(change[3].status, COORD__V1__ACK_STATUS__ACK_STATUS_DUPLICATE);
	assert_int_equal(change[3].seq, 4);

	assert_lookup(f, "c01", "a", 1, 1, false);
	assert_lookup(f, "c01", "b", 4, 2, false);
	assert_lookup(f, "c02", "a", 5, 2, true);
	assert_int_equal(store_lookup(f->store, "c03", "a", NULL, NULL, NULL), -ENOENT);
	assert_int_equal(store_get_stats(f->store, &st), 0);
	assert_int_equal(st.items, 5);
	assert_int_equal(st.records, 3);
	assert_int_equal(store_scan_items(f->store, 0, false, 100, note_live, &seen, NULL), 0);
	assert_int_equal(seen.items, 5);
	assert_int_equal(seen.live, (UINT64_C(1) << 1) | (UINT64_C(1) << 4));

	assert_int_equal(store_verify(f->store, NULL, NULL, NULL, &rep), 0);
	assert_int_equal(rep.records, 3);
	rebuild_index(f, &rrep);
	assert_int_equal(rrep.records, 3);
	assert_int_equal(rrep.replaced, 0);
	assert_int_equal(rrep.dropped, 0);

	/* Without its entries (all under the one key), the rebuild tells the records apart
	 * again from their items. */
	raw_edit(f, "index", index_key(f, "c01", "a"), STORE_INDEX_KEY_SIZE, NULL, 0);
	store_set_hash_mask(f->store, 0);
	assert_int_equal(store_verify(f->store, NULL, NULL, NULL, &rep), -EBADMSG);
	rebuild_index(f, &rrep);
	assert_int_equal(rrep.records, 3);
	assert_int_equal(rrep.replaced, 3);
	assert_int_equal(store_verify(f->store, NULL, NULL, NULL, &rep), 0);
	assert_lookup(f, "c01", "a", 1, 1, false);
	assert_lookup(f, "c01", "b", 4, 2, false);
	assert_lookup(f, "c02", "a", 5, 2, true);
	struct store_record resend[] = {
	        real_record("c01", "b", 2, false, bufs[10], sizeof(bufs[10]))};
	assert_int_equal(store_write_batch(f->store, resend, 1), 0);
	assert_int_equal(resend[0].status, COORD__V1__ACK_STATUS__ACK_STATUS_DUPLICATE);
	assert_int_equal(resend[0].seq, 4);
}

/* Turn f's store (closed, written by write_sample()) into one of schema 3: its index keyed by
 * council "\0" msg_id, in a table without duplicates. */
static void
make_schema_3(struct fixture *f)
{
	static const struct {
		const char *key;
		size_t klen;
		uint8_t val[13];
	} entries[] = {
	        {"c01\0a", 5, {0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 2, 0}},
	        {"c01\0b", 5, {0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 2, STORE_FLAG_RETRACTED}},
	        {"c02\0a", 5, {0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 1, 0}},
	};
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;

	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
	assert_int_equal(mdb_env_open(env, f->dir, 0, 0640), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "index", 0, &dbi), 0);
	assert_int_equal(mdb_drop(txn, dbi, 1), 0);
	assert_int_equal(mdb_dbi_open(txn, "index", MDB_CREATE, &dbi), 0);
	for (size_t i = 0; i < sizeof(entries) / sizeof(entries[0]); i++) {
		MDB_val k = {.mv_size = entries[i].klen, .mv_data = (void *) entries[i].key};
		MDB_val v = {.mv_size = 13, .mv_data = (void *) entries[i].val};
		assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
	}
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
	put_schema(f, 3);
}

static void
test_schema_3_index_is_upgraded(void **state)
{
	struct fixture *f = *state;
	static uint8_t buf[128];
	struct store_record more[] = {record("c03", "x", 1, false)};
	struct store_record resend[] = {real_record("c01", "a", 2, false, buf, sizeof(buf))};
	struct store_verify_report rep;
	struct store_repair_report rrep;
	MDB_txn *txn;

	write_sample(f);
	f->store = store_free(f->store);
	make_schema_3(f);
	assert_int_equal(open_store(f, 4 * MIB, 64 * MIB), 0);
	assert_int_equal(store_schema(f->store), 3);
	/* Not written nor looked up through an index of the old layout; verify names the
	 * upgrade. */
	assert_int_equal(store_write_batch(f->store, more, 1), -EPROTO);
	assert_int_equal(store_lookup(f->store, "c01", "a", NULL, NULL, NULL), -EPROTO);
	assert_int_equal(store_verify(f->store, NULL, NULL, NULL, &rep), -EBADMSG);
	assert_int_equal(rep.problems, 1);
	assert_non_null(strstr(rep.first_problem, "schema 3"));
	assert_non_null(strstr(rep.first_problem, "start coordd once to upgrade it"));

	/* A rebuild that does not commit leaves the old index in place, and usable. */
	assert_int_equal(store_repair_begin(f->store, &txn), 0);
	assert_int_equal(store_rebuild_index(f->store, txn, NULL, NULL, NULL, &rrep), 0);
	store_repair_abort(f->store, txn);
	assert_int_equal(store_write_batch(f->store, more, 1), -EPROTO);
	assert_int_equal(store_verify(f->store, NULL, NULL, NULL, &rep), -EBADMSG);
	assert_non_null(strstr(rep.first_problem, "schema 3"));

	progress_calls = 0;
	assert_int_equal(store_upgrade_index(f->store, count_progress, NULL, &rrep), 1);
	assert_true(progress_calls >= 1);
	assert_int_equal(rrep.items, 5);
	assert_int_equal(rrep.records, 3);
	assert_int_equal(store_schema(f->store), STORE_SCHEMA_VERSION);
	assert_int_equal(store_upgrade_index(f->store, NULL, NULL, &rrep), 0);
	f->store = store_free(f->store);
	assert_int_equal(stored_schema(f), STORE_SCHEMA_VERSION);

	assert_int_equal(open_store(f, 4 * MIB, 64 * MIB), 0);
	assert_int_equal(store_verify(f->store, NULL, NULL, NULL, &rep), 0);
	assert_int_equal(rep.records, 3);
	assert_lookup(f, "c01", "a", 3, 2, false);
	assert_lookup(f, "c01", "b", 5, 2, true);
	assert_lookup(f, "c02", "a", 4, 1, false);
	assert_int_equal(store_write_batch(f->store, resend, 1), 0);
	assert_int_equal(resend[0].status, COORD__V1__ACK_STATUS__ACK_STATUS_DUPLICATE);
	assert_int_equal(resend[0].seq, 3);
	assert_int_equal(store_write_batch(f->store, more, 1), 0);
	assert_int_equal(more[0].seq, 6);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_accept_assigns_gap_free_seqs, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_new_store_is_created_aside_and_renamed, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_duplicate_returns_original_seq, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_duplicate_within_one_batch, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_stale_revision_is_duplicate_with_latest_seq,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_retraction_and_restore, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_retraction_of_unknown_record_is_rejected,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_lookup_unknown_is_enoent, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_item_holds_envelope_bytes_verbatim, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_reopen_continues_seq, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_second_open_is_busy, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_map_grows_when_full, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_map_grows_ahead_unless_a_reader_is_open, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_map_at_maximum_is_enospc_and_writes_nothing,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_newer_schema_is_refused, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_older_schema_is_upgraded, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_verify_accepts_a_consistent_store, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_verify_finds_a_missing_item, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_verify_finds_an_undecodable_item, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_verify_finds_a_wrong_index_entry, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_verify_finds_an_index_entry_without_item,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_read_only_open_beside_the_writer, setup,
	                                        teardown),
	        cmocka_unit_test(test_read_only_open_of_missing_store_fails),
	        cmocka_unit_test_setup_teardown(test_backup_is_a_consistent_copy, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_reader_adopts_a_map_grown_by_the_writer, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(
	                test_rebuild_index_mends_a_missing_and_a_stray_entry, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_repair_needs_a_writable_store, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_backup_refuses_a_directory_with_files, setup,
	                                        teardown),
	        cmocka_unit_test(test_siphash_reference_vectors),
	        cmocka_unit_test_setup_teardown(
	                test_sequential_ids_share_the_high_half_of_their_keys, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_colliding_records_stay_distinct, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_schema_3_index_is_upgraded, setup, teardown),
	        cmocka_unit_test(test_unusable_directory_fails),
	        cmocka_unit_test(test_free_accepts_null),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * Unit tests for store: real LMDB files in a temporary directory.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <lmdb.h>

#include "store.h"

#define MIB (UINT64_C(1) << 20)

struct fixture {
	char dir[64];
	struct store *store;
};

static const uint8_t sample_envelope[] = {0x0a, 0x03, 'c', '0', '1', 0x12, 0x01, 'x'};

static struct store_record
record(const char *council, const char *msg_id, uint32_t revision, bool retraction)
{
	return (struct store_record){
	        .council = council,
	        .msg_id = msg_id,
	        .revision = revision,
	        .retraction = retraction,
	        .envelope = sample_envelope,
	        .envelope_len = sizeof(sample_envelope),
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
	assert_memory_equal(item->envelope.data, sample_envelope, sizeof(sample_envelope));
	assert_int_equal(item->envelope.len, sizeof(sample_envelope));
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

static void
test_newer_schema_is_refused(void **state)
{
	struct fixture *f = *state;
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	uint8_t two[4] = {0, 0, 0, 2};
	MDB_val k = {.mv_size = strlen("schema_version"), .mv_data = "schema_version"};
	MDB_val v = {.mv_size = 4, .mv_data = two};

	f->store = store_free(f->store);
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 8), 0);
	assert_int_equal(mdb_env_open(env, f->dir, 0, 0640), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, "meta", 0, &dbi), 0);
	assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);

	assert_int_equal(open_store(f, 4 * MIB, 64 * MIB), -EPROTO);
	assert_null(f->store);
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

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_accept_assigns_gap_free_seqs, setup, teardown),
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
	        cmocka_unit_test_setup_teardown(test_map_at_maximum_is_enospc_and_writes_nothing,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_newer_schema_is_refused, setup, teardown),
	        cmocka_unit_test(test_unusable_directory_fails),
	        cmocka_unit_test(test_free_accepts_null),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

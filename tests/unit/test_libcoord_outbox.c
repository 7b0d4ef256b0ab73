/*
 * Unit tests for libcoord's outbox: real LMDB files in a temporary directory.
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

#include "outbox.h"

#define MIB (UINT64_C(1) << 20)
#define NOW INT64_C(1700000000000)

struct fixture {
	char dir[64];
	struct coord__outbox *ob;
};

static const uint8_t bytes_a[] = {0x0a, 0x03, 'c', '0', '1', 0x12, 0x01, 'a'};
static const uint8_t bytes_b[] = {0x0a, 0x03, 'c', '0', '1', 0x12, 0x01, 'b', 0x18, 0x01};

static struct coord__outbox_item
item(const char *msg_id, uint32_t revision)
{
	return (struct coord__outbox_item){
	        .msg_id = msg_id,
	        .revision = revision,
	        .bytes = bytes_a,
	        .len = sizeof(bytes_a),
	};
}

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	strcpy(f->dir, "/tmp/coord-test-outbox-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	assert_int_equal(coord__outbox_open(f->dir, "c01", 8 * MIB, true, &f->ob), 0);
	*state = f;
	return 0;
}

static void
remove_dir(const char *dir)
{
	const char *files[] = {"data.mdb", "lock.mdb", "lock"};
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

	f->ob = coord__outbox_free(f->ob);
	remove_dir(f->dir);
	free(f);
	return 0;
}

/* Collects what a scan shows. */
struct seen {
	size_t n;
	uint64_t seqs[64];
	char ids[64][16];
	uint32_t revisions[64];
	size_t lens[64];
	size_t stop_after; /* 0: never stop */
};

static int
collect(void *userdata, const struct coord__outbox_record *rec)
{
	struct seen *s = userdata;

	assert_true(s->n < 64);
	s->seqs[s->n] = rec->seq;
	(void) snprintf(s->ids[s->n], sizeof(s->ids[0]), "%s", rec->msg_id);
	s->revisions[s->n] = rec->revision;
	s->lens[s->n] = rec->len;
	s->n++;
	return s->stop_after != 0 && s->n == s->stop_after ? 7 : 0;
}

static void
counts(struct coord__outbox *ob, uint64_t waiting, uint64_t rejected)
{
	uint64_t w = 99, r = 99;

	assert_int_equal(coord__outbox_count(ob, &w, &r), 0);
	assert_int_equal(w, waiting);
	assert_int_equal(r, rejected);
}

static void
test_put_then_scan_in_queue_order(void **state)
{
	struct fixture *f = *state;
	struct coord__outbox_item items[] = {item("m3", 1), item("m1", 1), item("m2", 4)};
	items[2].bytes = bytes_b;
	items[2].len = sizeof(bytes_b);

	assert_int_equal(coord__outbox_put(f->ob, items, 3, NOW, NULL), 3);
	struct seen s = {0};
	assert_int_equal(coord__outbox_scan(f->ob, 0, collect, &s), 0);
	assert_int_equal(s.n, 3);
	assert_string_equal(s.ids[0], "m3");
	assert_string_equal(s.ids[1], "m1");
	assert_string_equal(s.ids[2], "m2");
	assert_int_equal(s.revisions[2], 4);
	assert_int_equal(s.lens[2], sizeof(bytes_b));
	assert_true(s.seqs[0] < s.seqs[1] && s.seqs[1] < s.seqs[2]);
	counts(f->ob, 3, 0);
}

static void
test_scan_resumes_after_seq_and_stops_on_request(void **state)
{
	struct fixture *f = *state;
	struct coord__outbox_item items[] = {item("a", 1), item("b", 1), item("c", 1)};

	assert_int_equal(coord__outbox_put(f->ob, items, 3, NOW, NULL), 3);
	struct seen first = {.stop_after = 2};
	assert_int_equal(coord__outbox_scan(f->ob, 0, collect, &first), 7);
	assert_int_equal(first.n, 2);
	struct seen rest = {0};
	assert_int_equal(coord__outbox_scan(f->ob, first.seqs[1], collect, &rest), 0);
	assert_int_equal(rest.n, 1);
	assert_string_equal(rest.ids[0], "c");
	struct seen none = {0};
	assert_int_equal(coord__outbox_scan(f->ob, UINT64_MAX, collect, &none), 0);
	assert_int_equal(none.n, 0);
}

static void
test_waiting_key_is_not_queued_twice(void **state)
{
	struct fixture *f = *state;
	struct coord__outbox_item items[] = {item("m1", 1), item("m1", 1), item("m1", 2)};
	uint8_t added[3];

	assert_int_equal(coord__outbox_put(f->ob, items, 3, NOW, added), 2);
	assert_int_equal(added[0], 1);
	assert_int_equal(added[1], 0);
	assert_int_equal(added[2], 1);
	/* Other bytes under a waiting key: still skipped, the first copy stays. */
	struct coord__outbox_item other = item("m1", 1);
	other.bytes = bytes_b;
	other.len = sizeof(bytes_b);
	assert_int_equal(coord__outbox_put(f->ob, &other, 1, NOW, added), 0);
	assert_int_equal(added[0], 0);
	struct seen s = {0};
	assert_int_equal(coord__outbox_scan(f->ob, 0, collect, &s), 0);
	assert_int_equal(s.n, 2);
	assert_int_equal(s.lens[0], sizeof(bytes_a));
	counts(f->ob, 2, 0);
}

static void
test_accepted_and_duplicate_leave_the_outbox(void **state)
{
	struct fixture *f = *state;
	struct coord__outbox_item items[] = {item("m1", 1), item("m2", 1), item("m3", 1)};

	assert_int_equal(coord__outbox_put(f->ob, items, 3, NOW, NULL), 3);
	struct coord__outbox_outcome out[] = {
	        {.msg_id = "m1", .revision = 1},
	        {.msg_id = "m3", .revision = 1},
	        {.msg_id = "m3", .revision = 1}, /* a second answer in the same batch */
	        {.msg_id = "m2", .revision = 2}, /* another revision: not waiting */
	};
	assert_int_equal(coord__outbox_settle(f->ob, out, 4, NOW), 2);
	assert_true(out[0].found);
	assert_true(out[1].found);
	assert_false(out[2].found);
	assert_false(out[3].found);
	struct seen s = {0};
	assert_int_equal(coord__outbox_scan(f->ob, 0, collect, &s), 0);
	assert_int_equal(s.n, 1);
	assert_string_equal(s.ids[0], "m2");
	counts(f->ob, 1, 0);
}

/* Collects coord_outbox_list() entries. */
struct listed {
	size_t n;
	enum coord_outbox_state states[8];
	char ids[8][16];
	char messages[8][64];
	int reasons[8];
	int64_t rejected_at[8];
	size_t lens[8];
};

static int
list_cb(void *userdata, const struct coord_outbox_entry *e)
{
	struct listed *l = userdata;

	assert_true(l->n < 8);
	l->states[l->n] = e->state;
	(void) snprintf(l->ids[l->n], sizeof(l->ids[0]), "%s", e->msg_id);
	(void) snprintf(l->messages[l->n], sizeof(l->messages[0]), "%s", e->message);
	l->reasons[l->n] = e->reason;
	l->rejected_at[l->n] = e->rejected_at;
	l->lens[l->n] = e->envelope_len;
	l->n++;
	return 0;
}

static void
test_rejected_is_kept_aside_with_its_reason(void **state)
{
	struct fixture *f = *state;
	struct coord__outbox_item items[] = {item("bad", 1), item("good", 1)};

	assert_int_equal(coord__outbox_put(f->ob, items, 2, NOW, NULL), 2);
	struct coord__outbox_outcome out[] = {
	        {.msg_id = "bad",
	         .revision = 1,
	         .rejected = true,
	         .reason = 7,
	         .message = "event.country 'XX' is not a code"},
	};
	assert_int_equal(coord__outbox_settle(f->ob, out, 1, NOW + 5), 1);
	counts(f->ob, 1, 1);

	struct listed l = {0};
	assert_int_equal(
	        coord__outbox_list(f->ob, COORD_LIST_WAITING | COORD_LIST_REJECTED, list_cb, &l),
	        0);
	assert_int_equal(l.n, 2);
	assert_int_equal(l.states[0], COORD_OUTBOX_WAITING);
	assert_string_equal(l.ids[0], "good");
	assert_int_equal(l.states[1], COORD_OUTBOX_REJECTED);
	assert_string_equal(l.ids[1], "bad");
	assert_int_equal(l.reasons[1], 7);
	assert_string_equal(l.messages[1], "event.country 'XX' is not a code");
	assert_int_equal(l.rejected_at[1], NOW + 5);
	assert_int_equal(l.lens[1], sizeof(bytes_a));

	struct listed only = {0};
	assert_int_equal(coord__outbox_list(f->ob, COORD_LIST_REJECTED, list_cb, &only), 0);
	assert_int_equal(only.n, 1);
	assert_string_equal(only.ids[0], "bad");
}

static void
test_pushing_a_rejected_key_queues_it_again(void **state)
{
	struct fixture *f = *state;
	struct coord__outbox_item it = item("m1", 1);

	assert_int_equal(coord__outbox_put(f->ob, &it, 1, NOW, NULL), 1);
	struct coord__outbox_outcome out = {.msg_id = "m1", .revision = 1, .rejected = true};
	assert_int_equal(coord__outbox_settle(f->ob, &out, 1, NOW), 1);
	counts(f->ob, 0, 1);
	assert_int_equal(coord__outbox_put(f->ob, &it, 1, NOW, NULL), 1);
	counts(f->ob, 1, 0);
}

static void
test_forget_removes_a_rejected_entry(void **state)
{
	struct fixture *f = *state;
	struct coord__outbox_item it = item("m1", 1);

	assert_int_equal(coord__outbox_put(f->ob, &it, 1, NOW, NULL), 1);
	assert_int_equal(coord__outbox_forget(f->ob, "m1", 1), -ENOENT); /* waiting, not rejected */
	struct coord__outbox_outcome out = {.msg_id = "m1", .revision = 1, .rejected = true};
	assert_int_equal(coord__outbox_settle(f->ob, &out, 1, NOW), 1);
	assert_int_equal(coord__outbox_forget(f->ob, "m1", 1), 0);
	assert_int_equal(coord__outbox_forget(f->ob, "m1", 1), -ENOENT);
	counts(f->ob, 0, 0);
}

static void
test_seqs_grow_across_reopen_even_when_empty(void **state)
{
	struct fixture *f = *state;
	struct coord__outbox_item it = item("m1", 1);

	assert_int_equal(coord__outbox_put(f->ob, &it, 1, NOW, NULL), 1);
	struct seen s1 = {0};
	assert_int_equal(coord__outbox_scan(f->ob, 0, collect, &s1), 0);
	struct coord__outbox_outcome out = {.msg_id = "m1", .revision = 1};
	assert_int_equal(coord__outbox_settle(f->ob, &out, 1, NOW), 1);

	f->ob = coord__outbox_free(f->ob);
	assert_int_equal(coord__outbox_open(f->dir, "c01", 8 * MIB, true, &f->ob), 0);
	counts(f->ob, 0, 0);
	struct coord__outbox_item it2 = item("m2", 1);
	assert_int_equal(coord__outbox_put(f->ob, &it2, 1, NOW, NULL), 1);
	struct seen s2 = {0};
	assert_int_equal(coord__outbox_scan(f->ob, s1.seqs[0], collect, &s2), 0);
	assert_int_equal(s2.n, 1);
	assert_true(s2.seqs[0] > s1.seqs[0]);
}

static void
test_records_survive_reopen(void **state)
{
	struct fixture *f = *state;
	struct coord__outbox_item items[] = {item("m1", 1), item("m2", 1)};

	assert_int_equal(coord__outbox_put(f->ob, items, 2, NOW, NULL), 2);
	f->ob = coord__outbox_free(f->ob);
	assert_int_equal(coord__outbox_open(f->dir, "c01", 8 * MIB, true, &f->ob), 0);
	struct seen s = {0};
	assert_int_equal(coord__outbox_scan(f->ob, 0, collect, &s), 0);
	assert_int_equal(s.n, 2);
	assert_string_equal(s.ids[1], "m2");
}

static void
test_another_council_is_refused(void **state)
{
	struct fixture *f = *state;
	struct coord__outbox *other = NULL;

	f->ob = coord__outbox_free(f->ob);
	assert_int_equal(coord__outbox_open(f->dir, "c02", 8 * MIB, true, &other), -EXDEV);
	assert_null(other);
	assert_int_equal(coord__outbox_open(f->dir, "c01", 8 * MIB, true, &f->ob), 0);
}

static void
test_lock_keeps_a_second_sender_out(void **state)
{
	struct fixture *f = *state;
	struct coord__outbox *second = NULL;

	assert_int_equal(coord__outbox_open(f->dir, "c01", 8 * MIB, true, &second), -EBUSY);
	/* Without the lock (a reader such as `coord-push outbox`) it opens beside the sender. */
	assert_int_equal(coord__outbox_open(f->dir, "c01", 8 * MIB, false, &second), 0);
	struct coord__outbox_item it = item("m1", 1);
	assert_int_equal(coord__outbox_put(f->ob, &it, 1, NOW, NULL), 1);
	counts(second, 1, 0);
	second = coord__outbox_free(second);
}

static void
test_bad_items_write_nothing(void **state)
{
	struct fixture *f = *state;
	char long_id[COORD_MSG_ID_MAX + 2];

	memset(long_id, 'x', sizeof(long_id) - 1);
	long_id[sizeof(long_id) - 1] = '\0';
	struct coord__outbox_item bad[][2] = {
	        {item("ok", 1), item("", 1)},
	        {item("ok", 1), item("m", 0)},
	        {item("ok", 1), item(long_id, 1)},
	        {item("ok", 1), {.msg_id = "m", .revision = 1, .bytes = NULL, .len = 0}},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_int_equal(coord__outbox_put(f->ob, bad[i], 2, NOW, NULL), -EINVAL);
	}
	counts(f->ob, 0, 0);
	assert_int_equal(coord__outbox_put(f->ob, NULL, 0, NOW, NULL), 0);
}

static void
test_full_outbox_returns_enospc_and_keeps_what_it_had(void **state)
{
	struct fixture *f = *state;

	f->ob = coord__outbox_free(f->ob);
	remove_dir(f->dir);
	assert_non_null(mkdtemp(strcpy(f->dir, "/tmp/coord-test-outbox-XXXXXX")));
	assert_int_equal(coord__outbox_open(f->dir, "c01", 1 * MIB, true, &f->ob), 0);
	static uint8_t big[64 * 1024];
	memset(big, 0x55, sizeof(big));
	int r = 0;
	size_t stored = 0;
	for (size_t i = 0; i < 64 && r >= 0; i++) {
		char id[16];
		(void) snprintf(id, sizeof(id), "big%zu", i);
		struct coord__outbox_item it = {
		        .msg_id = id, .revision = 1, .bytes = big, .len = sizeof(big)};
		r = coord__outbox_put(f->ob, &it, 1, NOW, NULL);
		if (r == 1) {
			stored++;
		}
	}
	assert_int_equal(r, -ENOSPC);
	assert_true(stored > 0);
	counts(f->ob, stored, 0);
	/* Answers still go through, and free space for more. */
	struct coord__outbox_outcome out = {.msg_id = "big0", .revision = 1};
	assert_int_equal(coord__outbox_settle(f->ob, &out, 1, NOW), 1);
	counts(f->ob, stored - 1, 0);
}

static void
test_unusable_path_fails(void **state)
{
	(void) state;
	struct coord__outbox *ob = NULL;

	assert_int_equal(coord__outbox_open("/proc/version/outbox", "c01", 8 * MIB, true, &ob),
	                 -ENOTDIR);
	assert_null(ob);
	assert_int_equal(coord__outbox_open("", "c01", 8 * MIB, true, &ob), -EINVAL);
	assert_int_equal(coord__outbox_open("/tmp/x", "", 8 * MIB, true, &ob), -EINVAL);
	assert_null(coord__outbox_free(NULL));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_put_then_scan_in_queue_order, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_scan_resumes_after_seq_and_stops_on_request,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_waiting_key_is_not_queued_twice, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_accepted_and_duplicate_leave_the_outbox, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_rejected_is_kept_aside_with_its_reason, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_pushing_a_rejected_key_queues_it_again, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_forget_removes_a_rejected_entry, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_seqs_grow_across_reopen_even_when_empty, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_records_survive_reopen, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_another_council_is_refused, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_lock_keeps_a_second_sender_out, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_bad_items_write_nothing, setup, teardown),
	        cmocka_unit_test_setup_teardown(
	                test_full_outbox_returns_enospc_and_keeps_what_it_had, setup, teardown),
	        cmocka_unit_test(test_unusable_path_fails),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

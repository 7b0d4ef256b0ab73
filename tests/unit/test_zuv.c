/*
 * Unit tests for zuv: a real libuv loop and a real inproc PAIR of libzmq sockets. Input is
 * handed to the callback in slices of at most the budget, pause and resume hold it back and
 * let it through, and every handle is gone after zuv_close()'s callback (uv_loop_close()
 * returns 0). A failed zuv_init() registers nothing, so its caller may free the memory at
 * once: the loop closes cleanly with that memory already freed (ASan sees any later use).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <zmq.h>

#include "zuv.h"

#define TURNS_MAX 1000
#define container_of(ptr, type, member) ((type *) ((char *) (ptr) -offsetof(type, member)))

struct fixture {
	uv_loop_t loop;
	void *zctx;
	void *rx;
	void *tx;
	struct zuv z;
	unsigned received;
	unsigned calls;
	unsigned largest_slice;
	unsigned closed;
};

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	int linger = 0;

	assert_non_null(f);
	assert_int_equal(uv_loop_init(&f->loop), 0);
	f->zctx = zmq_ctx_new();
	assert_non_null(f->zctx);
	f->rx = zmq_socket(f->zctx, ZMQ_PAIR);
	f->tx = zmq_socket(f->zctx, ZMQ_PAIR);
	assert_non_null(f->rx);
	assert_non_null(f->tx);
	assert_int_equal(zmq_setsockopt(f->rx, ZMQ_LINGER, &linger, sizeof(linger)), 0);
	assert_int_equal(zmq_setsockopt(f->tx, ZMQ_LINGER, &linger, sizeof(linger)), 0);
	assert_int_equal(zmq_bind(f->rx, "inproc://test-zuv"), 0);
	assert_int_equal(zmq_connect(f->tx, "inproc://test-zuv"), 0);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(zmq_close(f->tx), 0);
	assert_int_equal(zmq_close(f->rx), 0);
	assert_int_equal(zmq_ctx_term(f->zctx), 0);
	free(f);
	return 0;
}

static void
on_readable(struct zuv *z, void *zsock, unsigned budget, void *data)
{
	struct fixture *f = data;
	unsigned n = 0;
	char buf[16];

	assert_ptr_equal(z, &f->z);
	f->calls++;
	while (n < budget && zmq_recv(zsock, buf, sizeof(buf), ZMQ_DONTWAIT) >= 0) {
		n++;
	}
	f->received += n;
	if (n > f->largest_slice) {
		f->largest_slice = n;
	}
}

static void
on_closed(struct zuv *z)
{
	struct fixture *f = container_of(z, struct fixture, z);

	f->closed++;
}

static void
send_n(struct fixture *f, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		assert_int_equal(zmq_send(f->tx, "m", 1, 0), 1);
	}
}

/* Turn the loop without blocking until `received` reaches `want` (or TURNS_MAX turns). */
static void
run_until_received(struct fixture *f, unsigned want)
{
	for (unsigned i = 0; i < TURNS_MAX && f->received < want; i++) {
		(void) uv_run(&f->loop, UV_RUN_NOWAIT);
	}
}

/* Close `f->z`, run the loop until its callback, and check that no handle is left. */
static void
close_and_check_loop(struct fixture *f)
{
	zuv_close(&f->z, on_closed);
	assert_int_equal(f->closed, 0);
	for (unsigned i = 0; i < TURNS_MAX && f->closed == 0; i++) {
		(void) uv_run(&f->loop, UV_RUN_NOWAIT);
	}
	assert_int_equal(f->closed, 1);
	assert_int_equal(uv_run(&f->loop, UV_RUN_NOWAIT), 0);
	assert_int_equal(uv_loop_close(&f->loop), 0);
}

static void
test_input_comes_in_slices_of_the_budget(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(zuv_init(&f->loop, &f->z, f->rx, 3, on_readable, f), 0);
	send_n(f, 10);
	run_until_received(f, 10);
	assert_int_equal(f->received, 10);
	assert_int_equal(f->largest_slice, 3);
	assert_true(f->calls >= 4);
	close_and_check_loop(f);
}

static void
test_pause_holds_input_back_and_resume_delivers_it(void **state)
{
	struct fixture *f = *state;

	assert_int_equal(zuv_init(&f->loop, &f->z, f->rx, 16, on_readable, f), 0);
	zuv_pause(&f->z);
	send_n(f, 5);
	for (unsigned i = 0; i < 50; i++) {
		(void) uv_run(&f->loop, UV_RUN_NOWAIT);
	}
	assert_int_equal(f->received, 0);
	/* Queued while paused, with no new edge on ZMQ_FD: resume must still find it. */
	zuv_resume(&f->z);
	run_until_received(f, 5);
	assert_int_equal(f->received, 5);
	close_and_check_loop(f);
}

struct span {
	const char *start;
	size_t len;
	unsigned handles;
};

static void
count_handle_in(uv_handle_t *h, void *arg)
{
	struct span *span = arg;
	const char *p = (const char *) h;

	if (p >= span->start && p < span->start + span->len) {
		span->handles++;
	}
}

static void
test_failed_init_leaves_nothing_to_close(void **state)
{
	struct fixture *f = *state;
	struct zuv *second = malloc(sizeof(*second));

	assert_non_null(second);
	assert_int_equal(zuv_init(&f->loop, &f->z, f->rx, 4, on_readable, f), 0);
	/* The socket's fd is watched already: the second watcher is refused... */
	assert_int_equal(zuv_init(&f->loop, second, f->rx, 4, on_readable, f), -EEXIST);
	/* ...without a handle of its own in the loop (closing or not)... */
	struct span span = {.start = (const char *) second, .len = sizeof(*second)};
	uv_walk(&f->loop, count_handle_in, &span);
	assert_int_equal(span.handles, 0);
	/* ...so, as its callers do, its memory is freed at once. */
	free(second);
	send_n(f, 2);
	run_until_received(f, 2);
	assert_int_equal(f->received, 2);
	/* Only the first zuv's handles were ever registered. */
	close_and_check_loop(f);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_input_comes_in_slices_of_the_budget, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_pause_holds_input_back_and_resume_delivers_it,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_failed_init_leaves_nothing_to_close, setup,
	                                        teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

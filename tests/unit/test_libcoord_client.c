/*
 * Unit tests for libcoord's client against a fake broker: a ROUTER socket on an ipc://
 * endpoint, served by a thread of this test that answers each Envelope as a policy says.
 * Every wait has a timeout; nothing sleeps.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <zmq.h>

#include "coord.h"
#include "coord.pb-c.h"

#define WAIT_MS 20000

/* What the fake broker does with the n-th copy (1-based) of a key. */
typedef int policy_fn(const Coord__V1__Envelope *env, unsigned copy);

struct broker {
	void *ctx;
	void *sock;
	pthread_t thread;
	atomic_bool stop;
	policy_fn *policy;
	pthread_mutex_t mu;
	/* seen, under mu */
	unsigned received;
	char keys[4096][48]; /* "msg_id/revision" of each frame, in arrival order */
	unsigned max_unanswered;
	unsigned unanswered;
	unsigned silent; /* frames left unanswered on purpose */
};

struct fixture {
	char dir[64];
	char outbox[96];
	char endpoint[128];
	struct broker *broker;
	struct coord_client *client;
	pthread_mutex_t mu;
	unsigned acks[8]; /* by status */
	char last_message[200];
};

static unsigned
copies_of(struct broker *b, const char *key)
{
	unsigned n = 0;
	for (unsigned i = 0; i < b->received && i < 4096; i++) {
		n += strcmp(b->keys[i], key) == 0;
	}
	return n;
}

static void
answer(struct broker *b, zmq_msg_t *rid, const Coord__V1__Envelope *env, int status)
{
	Coord__V1__Ack ack = COORD__V1__ACK__INIT;
	ack.msg_id = env->msg_id;
	ack.revision = env->revision;
	ack.status = (Coord__V1__AckStatus) status;
	ack.seq = status == COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED ? 1 : 0;
	if (status == COORD__V1__ACK_STATUS__ACK_STATUS_REJECTED) {
		ack.reason = COORD__V1__REASON__REASON_INVALID_COUNTRY;
		ack.message = "event.country 'XX' is not a code";
	} else if (status == COORD__V1__ACK_STATUS__ACK_STATUS_RETRY_LATER) {
		ack.reason = COORD__V1__REASON__REASON_OVERLOADED;
		ack.message = "busy";
	}
	uint8_t buf[512];
	size_t len = coord__v1__ack__pack(&ack, buf);
	assert_true(zmq_msg_send(rid, b->sock, ZMQ_SNDMORE) >= 0);
	assert_true(zmq_send(b->sock, buf, len, 0) >= 0);
}

static void *
broker_main(void *arg)
{
	struct broker *b = arg;
	while (!atomic_load(&b->stop)) {
		zmq_pollitem_t it = {.socket = b->sock, .events = ZMQ_POLLIN};
		if (zmq_poll(&it, 1, 20) <= 0) {
			continue;
		}
		zmq_msg_t rid, body;
		zmq_msg_init(&rid);
		zmq_msg_init(&body);
		if (zmq_msg_recv(&rid, b->sock, 0) < 0 || zmq_msg_recv(&body, b->sock, 0) < 0) {
			zmq_msg_close(&rid);
			zmq_msg_close(&body);
			continue;
		}
		Coord__V1__Envelope *env =
		        coord__v1__envelope__unpack(NULL, zmq_msg_size(&body), zmq_msg_data(&body));
		assert_non_null(env);
		char key[48];
		(void) snprintf(key, sizeof(key), "%s/%u", env->msg_id, env->revision);
		(void) pthread_mutex_lock(&b->mu);
		unsigned copy = copies_of(b, key) + 1;
		if (b->received < 4096) {
			memcpy(b->keys[b->received], key, sizeof(key));
		}
		b->received++;
		int status = b->policy(env, copy);
		if (status == 0) {
			b->silent++;
			b->unanswered++;
			if (b->unanswered > b->max_unanswered) {
				b->max_unanswered = b->unanswered;
			}
		}
		(void) pthread_mutex_unlock(&b->mu);
		if (status != 0) {
			answer(b, &rid, env, status);
		}
		coord__v1__envelope__free_unpacked(env, NULL);
		zmq_msg_close(&rid);
		zmq_msg_close(&body);
	}
	return NULL;
}

static void
broker_start(struct fixture *f, policy_fn *policy)
{
	struct broker *b = calloc(1, sizeof(*b));
	assert_non_null(b);
	b->policy = policy;
	(void) pthread_mutex_init(&b->mu, NULL);
	b->ctx = zmq_ctx_new();
	b->sock = zmq_socket(b->ctx, ZMQ_ROUTER);
	int zero = 0;
	assert_int_equal(zmq_setsockopt(b->sock, ZMQ_LINGER, &zero, sizeof(zero)), 0);
	assert_int_equal(zmq_bind(b->sock, f->endpoint), 0);
	assert_int_equal(pthread_create(&b->thread, NULL, broker_main, b), 0);
	f->broker = b;
}

static void
broker_stop(struct fixture *f)
{
	struct broker *b = f->broker;
	if (b == NULL) {
		return;
	}
	atomic_store(&b->stop, true);
	(void) pthread_join(b->thread, NULL);
	(void) zmq_close(b->sock);
	(void) zmq_ctx_term(b->ctx);
	(void) pthread_mutex_destroy(&b->mu);
	free(b);
	f->broker = NULL;
}

static void
on_ack(void *userdata, const struct coord_ack *ack)
{
	struct fixture *f = userdata;
	(void) pthread_mutex_lock(&f->mu);
	if (ack->status >= 0 && ack->status < 8) {
		f->acks[ack->status]++;
	}
	(void) snprintf(f->last_message, sizeof(f->last_message), "%s", ack->message);
	(void) pthread_mutex_unlock(&f->mu);
}

static int
open_client(struct fixture *f, const char *council, uint32_t max_in_flight, uint32_t ack_timeout_ms,
            unsigned flags, struct coord_client **ret)
{
	struct coord_options o;
	coord_options_init(&o);
	o.endpoint = f->endpoint;
	o.council = council;
	o.outbox_path = f->outbox;
	o.max_in_flight = max_in_flight;
	o.ack_timeout_ms = ack_timeout_ms;
	o.backoff_min_ms = 10;
	o.backoff_max_ms = 100;
	o.on_ack = on_ack;
	o.userdata = f;
	o.flags = flags;
	return coord_client_new(&o, ret);
}

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	strcpy(f->dir, "/tmp/coord-test-client-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	(void) snprintf(f->outbox, sizeof(f->outbox), "%s/outbox", f->dir);
	(void) snprintf(f->endpoint, sizeof(f->endpoint), "ipc://%s/broker.sock", f->dir);
	(void) pthread_mutex_init(&f->mu, NULL);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;
	f->client = coord_client_free(f->client);
	broker_stop(f);
	char cmd[160];
	(void) snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	assert_int_equal(system(cmd), 0);
	(void) pthread_mutex_destroy(&f->mu);
	free(f);
	return 0;
}

/* Build the n-th test record of a council (a rally titled "Rally n"). */
static struct coord_envelope
record(const char *council, unsigned n, const char *msg_id, const char *revision)
{
	char title[32];
	(void) snprintf(title, sizeof(title), "Rally %u", n);
	const struct coord_field fields[] = {
	        {"kind", "rally"}, {"country", "FR"},  {"date", "2020-10-04"},
	        {"title", title},  {"msg_id", msg_id}, {"revision", revision},
	};
	struct coord_envelope e;
	struct coord_error err;
	assert_int_equal(coord_envelope_build(council, "event", fields, 6, 0, &e, &err), 0);
	return e;
}

static void
push_n(struct fixture *f, unsigned n)
{
	for (unsigned i = 0; i < n; i++) {
		struct coord_envelope e = record("fr", i, NULL, NULL);
		assert_int_equal(coord_push(f->client, e.bytes, e.len), 0);
		coord_envelope_done(&e);
	}
}

static int
accept_all(const Coord__V1__Envelope *env, unsigned copy)
{
	(void) env;
	(void) copy;
	return COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED;
}

static int
never_answer(const Coord__V1__Envelope *env, unsigned copy)
{
	(void) env;
	(void) copy;
	return 0;
}

static int
reject_title_3(const Coord__V1__Envelope *env, unsigned copy)
{
	(void) copy;
	return strcmp(env->event->title, "Rally 3") == 0
	               ? COORD__V1__ACK_STATUS__ACK_STATUS_REJECTED
	               : COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED;
}

static int
retry_twice(const Coord__V1__Envelope *env, unsigned copy)
{
	(void) env;
	return copy <= 2 ? COORD__V1__ACK_STATUS__ACK_STATUS_RETRY_LATER
	                 : COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED;
}

static int
drop_first_copy(const Coord__V1__Envelope *env, unsigned copy)
{
	(void) env;
	return copy == 1 ? 0 : COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED;
}

static void
test_push_is_on_disk_before_anything_is_sent(void **state)
{
	struct fixture *f = *state;
	struct coord_stats st;

	assert_int_equal(open_client(f, "fr", 0, 0, 0, &f->client), 0);
	push_n(f, 5);
	struct coord_envelope again = record("fr", 0, NULL, NULL);
	assert_int_equal(coord_push(f->client, again.bytes, again.len), 1); /* already waiting */
	coord_envelope_done(&again);
	assert_int_equal(coord_flush(f->client, 0), -ETIMEDOUT);
	assert_int_equal(coord_flush(f->client, 50), -ETIMEDOUT);
	f->client = coord_client_free(f->client);

	assert_int_equal(open_client(f, "fr", 0, 0, COORD_OFFLINE, &f->client), 0);
	assert_int_equal(coord_stats(f->client, &st), 0);
	assert_int_equal(st.waiting, 5);
	assert_int_equal(coord_flush(f->client, 1000), -ENOTCONN);
}

static void
test_restart_sends_what_an_earlier_run_left(void **state)
{
	struct fixture *f = *state;
	struct coord_stats st;

	assert_int_equal(open_client(f, "fr", 0, 0, 0, &f->client), 0);
	push_n(f, 20);
	f->client = coord_client_free(f->client);
	broker_start(f, accept_all);
	assert_int_equal(open_client(f, "fr", 0, 0, 0, &f->client), 0);
	assert_int_equal(coord_flush(f->client, WAIT_MS), 0);
	assert_int_equal(coord_stats(f->client, &st), 0);
	assert_int_equal(st.waiting, 0);
	assert_int_equal(st.accepted, 20);
	assert_int_equal(f->acks[COORD_STATUS_ACCEPTED], 20);
}

static void
test_window_holds_at_most_max_in_flight(void **state)
{
	struct fixture *f = *state;

	broker_start(f, never_answer);
	assert_int_equal(open_client(f, "fr", 7, 60000, 0, &f->client), 0);
	push_n(f, 30);
	/* Wait until the broker has seen a full window, then check nothing more comes. */
	for (int i = 0; i < 400; i++) {
		if (coord_flush(f->client, 25) != -ETIMEDOUT) {
			break;
		}
		(void) pthread_mutex_lock(&f->broker->mu);
		unsigned got = f->broker->received;
		(void) pthread_mutex_unlock(&f->broker->mu);
		if (got >= 7) {
			break;
		}
	}
	assert_int_equal(coord_flush(f->client, 200), -ETIMEDOUT);
	(void) pthread_mutex_lock(&f->broker->mu);
	assert_int_equal(f->broker->received, 7);
	(void) pthread_mutex_unlock(&f->broker->mu);
	struct coord_stats st;
	assert_int_equal(coord_stats(f->client, &st), 0);
	assert_int_equal(st.in_flight, 7);
	assert_int_equal(st.waiting, 30);
}

static int
list_cb(void *userdata, const struct coord_outbox_entry *e)
{
	struct fixture *f = userdata;
	assert_int_equal(e->state, COORD_OUTBOX_REJECTED);
	assert_int_equal(e->reason, COORD__V1__REASON__REASON_INVALID_COUNTRY);
	assert_string_equal(e->message, "event.country 'XX' is not a code");
	(void) snprintf(f->last_message, sizeof(f->last_message), "%s", e->msg_id);
	return 0;
}

static void
test_rejected_is_kept_aside_and_others_go_through(void **state)
{
	struct fixture *f = *state;
	struct coord_stats st;

	broker_start(f, reject_title_3);
	assert_int_equal(open_client(f, "fr", 0, 0, 0, &f->client), 0);
	push_n(f, 10);
	assert_int_equal(coord_flush(f->client, WAIT_MS), 0);
	assert_int_equal(coord_stats(f->client, &st), 0);
	assert_int_equal(st.waiting, 0);
	assert_int_equal(st.rejected, 1);
	assert_int_equal(st.accepted, 9);
	assert_int_equal(f->acks[COORD_STATUS_REJECTED], 1);
	assert_int_equal(coord_outbox_list(f->client, COORD_LIST_REJECTED, list_cb, f), 0);
	char id[sizeof(f->last_message)];
	memcpy(id, f->last_message, sizeof(id));
	assert_int_equal(coord_outbox_forget(f->client, id, 1), 0);
	assert_int_equal(coord_stats(f->client, &st), 0);
	assert_int_equal(st.rejected, 0);
}

static void
test_retry_later_is_resent_after_a_backoff(void **state)
{
	struct fixture *f = *state;
	struct coord_stats st;

	broker_start(f, retry_twice);
	assert_int_equal(open_client(f, "fr", 0, 0, 0, &f->client), 0);
	push_n(f, 3);
	assert_int_equal(coord_flush(f->client, WAIT_MS), 0);
	assert_int_equal(coord_stats(f->client, &st), 0);
	assert_int_equal(st.retry_later, 6);
	assert_int_equal(st.accepted, 3);
	assert_int_equal(f->acks[COORD_STATUS_RETRY_LATER], 6);
	assert_int_equal(f->broker->received, 9);
}

static void
test_unanswered_record_is_resent_on_a_new_connection(void **state)
{
	struct fixture *f = *state;
	struct coord_stats st;

	broker_start(f, drop_first_copy);
	assert_int_equal(open_client(f, "fr", 0, 100, 0, &f->client), 0);
	push_n(f, 4);
	assert_int_equal(coord_flush(f->client, WAIT_MS), 0);
	assert_int_equal(coord_stats(f->client, &st), 0);
	assert_int_equal(st.accepted, 4);
	assert_true(st.sent >= 8);
	assert_true(st.reconnects >= 1);
}

static void
test_revisions_of_one_record_go_in_order(void **state)
{
	struct fixture *f = *state;

	broker_start(f, accept_all);
	assert_int_equal(open_client(f, "fr", 0, 0, 0, &f->client), 0);
	struct coord_envelope r1 = record("fr", 1, "rec-1", "1");
	struct coord_envelope r2 = record("fr", 2, "rec-1", "2");
	struct coord_envelope r3 = record("fr", 3, "rec-1", "3");
	const struct coord_message m[] = {
	        {r1.bytes, r1.len}, {r2.bytes, r2.len}, {r3.bytes, r3.len}};
	assert_int_equal(coord_push_many(f->client, m, 3, NULL), 3);
	assert_int_equal(coord_flush(f->client, WAIT_MS), 0);
	assert_int_equal(f->broker->received, 3);
	assert_string_equal(f->broker->keys[0], "rec-1/1");
	assert_string_equal(f->broker->keys[1], "rec-1/2");
	assert_string_equal(f->broker->keys[2], "rec-1/3");
	coord_envelope_done(&r1);
	coord_envelope_done(&r2);
	coord_envelope_done(&r3);
}

static void
test_bad_pushes_and_options_are_refused(void **state)
{
	struct fixture *f = *state;
	struct coord_client *c = NULL;
	struct coord_options o;

	coord_options_init(&o);
	assert_int_equal(coord_client_new(&o, &c), -EINVAL); /* no council, no outbox */
	o.council = "Fr";
	o.outbox_path = f->outbox;
	assert_int_equal(coord_client_new(&o, &c), -EINVAL);
	o.council = "fr";
	o.curve_server_key = "not a key";
	assert_int_equal(coord_client_new(&o, &c), -EINVAL);
	o.curve_server_key = NULL;
	o.backoff_min_ms = 500;
	o.backoff_max_ms = 100;
	assert_int_equal(coord_client_new(&o, &c), -EINVAL);
	assert_null(c);

	assert_int_equal(open_client(f, "fr", 0, 0, 0, &f->client), 0);
	assert_int_equal(open_client(f, "fr", 0, 0, 0, &c), -EBUSY);
	struct coord_envelope other = record("de", 1, NULL, NULL);
	assert_int_equal(coord_push(f->client, other.bytes, other.len), -EINVAL);
	static const uint8_t garbage[] = {0xff, 0xff};
	assert_int_equal(coord_push(f->client, garbage, sizeof(garbage)), -EINVAL);
	struct coord_envelope good = record("fr", 1, NULL, NULL);
	const struct coord_message m[] = {{good.bytes, good.len}, {other.bytes, other.len}};
	size_t bad = 99;
	assert_int_equal(coord_push_many(f->client, m, 2, &bad), -EINVAL);
	assert_int_equal(bad, 1);
	struct coord_stats st;
	assert_int_equal(coord_stats(f->client, &st), 0);
	assert_int_equal(st.waiting, 0); /* all or nothing */
	assert_int_equal(coord_push(f->client, good.bytes, COORD_ENVELOPE_MAX + 1), -EMSGSIZE);
	coord_envelope_done(&other);
	coord_envelope_done(&good);
	f->client = coord_client_free(f->client);
	assert_int_equal(open_client(f, "de", 0, 0, 0, &c), -EXDEV);
	assert_null(coord_client_free(NULL));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_push_is_on_disk_before_anything_is_sent, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_restart_sends_what_an_earlier_run_left, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_window_holds_at_most_max_in_flight, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_rejected_is_kept_aside_and_others_go_through,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_retry_later_is_resent_after_a_backoff, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(
	                test_unanswered_record_is_resent_on_a_new_connection, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_revisions_of_one_record_go_in_order, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_bad_pushes_and_options_are_refused, setup,
	                                        teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * Unit tests for libcoord's CURVE keys: coord_keygen(), coord_keys_load() and
 * coord_keys_done(), and a client with keys against a fake CURVE broker: a ROUTER that is a
 * CURVE server, with a ZAP handler (RFC 27) that admits one public key, both served by a
 * thread of this test over real libzmq on an ipc:// endpoint. Every wait is bounded.
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
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <zmq.h>

#include "coord.h"
#include "coord.pb-c.h"

#define WAIT_MS 10000

struct broker {
	void *ctx;
	void *sock;
	void *zap;
	pthread_t thread;
	atomic_bool stop;
	char allowed[COORD_KEY_Z85_LEN + 1]; /* the one client key the ZAP handler admits */
	atomic_uint received;                /* Envelopes received */
	atomic_uint refused;                 /* ZAP answers 400 */
};

struct fixture {
	char dir[64];
	char path[160];
	char outbox[96];
	char endpoint[128];
	char server_public[COORD_KEY_Z85_LEN + 1];
	char server_secret[COORD_KEY_Z85_LEN + 1];
	struct broker *broker;
	struct coord_client *client;
};

static int64_t
mono_ms(void)
{
	struct timespec ts;
	(void) clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *
path(struct fixture *f, const char *name)
{
	(void) snprintf(f->path, sizeof(f->path), "%s/%s", f->dir, name);
	return f->path;
}

static void
write_file(const char *p, mode_t mode, const char *text)
{
	FILE *fp = fopen(p, "w");
	assert_non_null(fp);
	assert_true(fputs(text, fp) >= 0);
	assert_int_equal(fclose(fp), 0);
	assert_int_equal(chmod(p, mode), 0);
}

/* Answer one ZAP request: 200 for the allowed CURVE key, 400 for anything else. */
static void
zap_answer(struct broker *b)
{
	zmq_msg_t frames[8];
	int n = 0;
	bool more = true;
	while (more) {
		zmq_msg_t m;
		zmq_msg_init(&m);
		assert_true(zmq_msg_recv(&m, b->zap, 0) >= 0);
		more = zmq_msg_more(&m);
		if (n < 8) {
			frames[n++] = m;
		} else {
			zmq_msg_close(&m);
		}
	}
	assert_true(n >= 6); /* version, request id, domain, address, identity, mechanism */
	bool ok = false;
	if (n == 7 && zmq_msg_size(&frames[5]) == 5 &&
	    memcmp(zmq_msg_data(&frames[5]), "CURVE", 5) == 0 && zmq_msg_size(&frames[6]) == 32) {
		char z85[COORD_KEY_Z85_LEN + 1];
		assert_non_null(zmq_z85_encode(z85, zmq_msg_data(&frames[6]), 32));
		ok = strcmp(z85, b->allowed) == 0;
	}
	if (!ok) {
		atomic_fetch_add(&b->refused, 1);
	}
	assert_true(zmq_send(b->zap, "1.0", 3, ZMQ_SNDMORE) >= 0);
	assert_true(zmq_send(b->zap, zmq_msg_data(&frames[1]), zmq_msg_size(&frames[1]),
	                     ZMQ_SNDMORE) >= 0);
	assert_true(zmq_send(b->zap, ok ? "200" : "400", 3, ZMQ_SNDMORE) >= 0);
	assert_true(zmq_send(b->zap, ok ? "OK" : "no", 2, ZMQ_SNDMORE) >= 0);
	assert_true(zmq_send(b->zap, ok ? "council:fr" : "", ok ? 10 : 0, ZMQ_SNDMORE) >= 0);
	assert_true(zmq_send(b->zap, "", 0, 0) >= 0);
	for (int i = 0; i < n; i++) {
		zmq_msg_close(&frames[i]);
	}
}

/* Answer every Envelope ACCEPTED. */
static void
ingest_answer(struct broker *b)
{
	zmq_msg_t rid, body;
	zmq_msg_init(&rid);
	zmq_msg_init(&body);
	assert_true(zmq_msg_recv(&rid, b->sock, 0) >= 0);
	assert_true(zmq_msg_recv(&body, b->sock, 0) >= 0);
	Coord__V1__Envelope *env =
	        coord__v1__envelope__unpack(NULL, zmq_msg_size(&body), zmq_msg_data(&body));
	assert_non_null(env);
	atomic_fetch_add(&b->received, 1);
	Coord__V1__Ack ack = COORD__V1__ACK__INIT;
	ack.msg_id = env->msg_id;
	ack.revision = env->revision;
	ack.status = COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED;
	ack.seq = 1;
	uint8_t buf[512];
	size_t len = coord__v1__ack__pack(&ack, buf);
	assert_true(zmq_msg_send(&rid, b->sock, ZMQ_SNDMORE) >= 0);
	assert_true(zmq_send(b->sock, buf, len, 0) >= 0);
	coord__v1__envelope__free_unpacked(env, NULL);
	zmq_msg_close(&rid);
	zmq_msg_close(&body);
}

static void *
broker_main(void *arg)
{
	struct broker *b = arg;
	while (!atomic_load(&b->stop)) {
		zmq_pollitem_t items[2] = {
		        {.socket = b->sock, .events = ZMQ_POLLIN},
		        {.socket = b->zap, .events = ZMQ_POLLIN},
		};
		if (zmq_poll(items, 2, 20) <= 0) {
			continue;
		}
		if (items[1].revents & ZMQ_POLLIN) {
			zap_answer(b);
		}
		if (items[0].revents & ZMQ_POLLIN) {
			ingest_answer(b);
		}
	}
	return NULL;
}

/* A CURVE broker (the fixture's server keypair) admitting the client key `allowed`. */
static void
broker_start(struct fixture *f, const char *allowed)
{
	struct broker *b = calloc(1, sizeof(*b));
	assert_non_null(b);
	(void) snprintf(b->allowed, sizeof(b->allowed), "%s", allowed);
	int zero = 0, one = 1;
	b->ctx = zmq_ctx_new();
	/* The handler first: a CURVE server without one admits every key. */
	b->zap = zmq_socket(b->ctx, ZMQ_REP);
	assert_int_equal(zmq_setsockopt(b->zap, ZMQ_LINGER, &zero, sizeof(zero)), 0);
	assert_int_equal(zmq_bind(b->zap, "inproc://zeromq.zap.01"), 0);
	b->sock = zmq_socket(b->ctx, ZMQ_ROUTER);
	assert_int_equal(zmq_setsockopt(b->sock, ZMQ_LINGER, &zero, sizeof(zero)), 0);
	assert_int_equal(zmq_setsockopt(b->sock, ZMQ_CURVE_SERVER, &one, sizeof(one)), 0);
	assert_int_equal(zmq_setsockopt(b->sock, ZMQ_CURVE_SECRETKEY, f->server_secret, 41), 0);
	assert_int_equal(zmq_setsockopt(b->sock, ZMQ_ZAP_DOMAIN, "ingest", 6), 0);
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
	(void) zmq_close(b->zap);
	(void) zmq_ctx_term(b->ctx);
	free(b);
	f->broker = NULL;
}

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	strcpy(f->dir, "/tmp/coord-test-keys-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	(void) snprintf(f->outbox, sizeof(f->outbox), "%s/outbox", f->dir);
	(void) snprintf(f->endpoint, sizeof(f->endpoint), "ipc://%s/broker.sock", f->dir);
	assert_int_equal(zmq_curve_keypair(f->server_public, f->server_secret), 0);
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
	free(f);
	return 0;
}

static void
test_keygen_writes_a_pair_and_never_overwrites(void **state)
{
	struct fixture *f = *state;
	char public_key[COORD_KEY_Z85_LEN + 1];
	struct coord_error err = {.field = ""};
	struct stat st;
	char base[160];
	(void) snprintf(base, sizeof(base), "%s", path(f, "fr"));

	assert_int_equal(coord_keygen(base, public_key, &err), 0);
	assert_int_equal(strlen(public_key), COORD_KEY_Z85_LEN);
	assert_int_equal(stat(path(f, "fr.secret"), &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	assert_int_equal(stat(path(f, "fr.public"), &st), 0);
	assert_int_equal(st.st_mode & 07777, 0644);

	/* The pair loads, and the public key derived from the secret is the one printed. */
	struct coord_keys keys;
	char secret_file[160];
	(void) snprintf(secret_file, sizeof(secret_file), "%s", path(f, "fr.secret"));
	assert_int_equal(coord_keys_load(path(f, "fr.public"), secret_file, &keys, &err), 0);
	assert_string_equal(keys.public_key, public_key);
	assert_string_equal(keys.server_key, public_key);
	assert_int_equal(strlen(keys.secret_key), COORD_KEY_Z85_LEN);

	/* Again: refused, and neither file changed. */
	char before[256];
	FILE *fp = fopen(secret_file, "r");
	assert_non_null(fp);
	size_t n = fread(before, 1, sizeof(before) - 1, fp);
	before[n] = '\0';
	(void) fclose(fp);
	assert_int_equal(coord_keygen(base, public_key, &err), -EEXIST);
	assert_non_null(strstr(err.message, "exists"));
	struct coord_keys again;
	assert_int_equal(coord_keys_load(keys.server_key, secret_file, &again, &err), 0);
	assert_string_equal(again.secret_key, keys.secret_key);
	assert_non_null(strstr(before, keys.secret_key));

	/* Only the public file left from an earlier attempt: still refused. */
	assert_int_equal(unlink(secret_file), 0);
	assert_int_equal(coord_keygen(base, NULL, &err), -EEXIST);
	assert_int_equal(access(secret_file, F_OK), -1);

	assert_int_equal(coord_keygen("", NULL, &err), -EINVAL);
	assert_int_equal(coord_keygen(path(f, "no/such/dir/x"), NULL, &err), -ENOENT);
	coord_keys_done(&keys);
	coord_keys_done(&again);
}

static void
test_keys_load_takes_z85_or_a_file_and_explains_errors(void **state)
{
	struct fixture *f = *state;
	struct coord_error err = {.field = ""};
	char base[160], secret_file[160], public_file[160];
	(void) snprintf(base, sizeof(base), "%s", path(f, "hq"));
	char public_key[COORD_KEY_Z85_LEN + 1];
	assert_int_equal(coord_keygen(base, public_key, &err), 0);
	(void) snprintf(secret_file, sizeof(secret_file), "%s", path(f, "hq.secret"));
	(void) snprintf(public_file, sizeof(public_file), "%s", path(f, "hq.public"));

	struct coord_keys keys, untouched;
	memset(&untouched, 'x', sizeof(untouched));
	keys = untouched;

	/* The server key given as Z85 text. */
	assert_int_equal(coord_keys_load(f->server_public, secret_file, &keys, &err), 0);
	assert_string_equal(keys.server_key, f->server_public);
	assert_string_equal(keys.public_key, public_key);

	/* Missing arguments. */
	keys = untouched;
	assert_int_equal(coord_keys_load(NULL, secret_file, &keys, &err), -EINVAL);
	assert_string_equal(err.field, "server_key");
	assert_int_equal(coord_keys_load(f->server_public, "", &keys, &err), -EINVAL);
	assert_string_equal(err.field, "key_file");
	assert_int_equal(coord_keys_load(f->server_public, secret_file, NULL, &err), -EINVAL);

	/* Neither Z85 nor a file. */
	assert_int_equal(coord_keys_load(path(f, "nothing"), secret_file, &keys, &err), -ENOENT);
	assert_string_equal(err.field, "server_key");
	assert_non_null(strstr(err.message, "nothing"));
	char bad_z85[COORD_KEY_Z85_LEN + 1];
	memset(bad_z85, '~', COORD_KEY_Z85_LEN); /* '~' is not a Z85 character */
	bad_z85[COORD_KEY_Z85_LEN] = '\0';
	assert_int_equal(coord_keys_load(bad_z85, secret_file, &keys, &err), -EINVAL);
	assert_non_null(strstr(err.message, "neither a Z85 key"));

	/* A .public file given as the secret one. */
	assert_int_equal(coord_keys_load(f->server_public, public_file, &keys, &err), -EINVAL);
	assert_string_equal(err.field, "key_file");
	assert_non_null(strstr(err.message, "public key file"));

	/* A secret file that group or others may read: refused, with the fix. */
	assert_int_equal(chmod(secret_file, 0640), 0);
	assert_int_equal(coord_keys_load(f->server_public, secret_file, &keys, &err), -EPERM);
	assert_string_equal(err.field, "key_file");
	assert_non_null(strstr(err.message, "chmod 600"));
	assert_int_equal(chmod(secret_file, 0600), 0);

	/* A secret file that holds no key, or two. */
	write_file(path(f, "empty.secret"), 0600, "# nothing here\n");
	(void) snprintf(secret_file, sizeof(secret_file), "%s", path(f, "empty.secret"));
	assert_int_equal(coord_keys_load(f->server_public, secret_file, &keys, &err), -EINVAL);
	assert_non_null(strstr(err.message, "holds no secret key"));
	char two[128];
	(void) snprintf(two, sizeof(two), "%s\n%s\n", f->server_secret, f->server_secret);
	write_file(path(f, "two.secret"), 0600, two);
	(void) snprintf(secret_file, sizeof(secret_file), "%s", path(f, "two.secret"));
	assert_int_equal(coord_keys_load(f->server_public, secret_file, &keys, &err), -EINVAL);
	assert_non_null(strstr(err.message, "second key"));
	assert_int_equal(coord_keys_load(f->server_public, path(f, "none.secret"), &keys, &err),
	                 -ENOENT);

	/* Nothing was written on any error. */
	assert_memory_equal(&keys, &untouched, sizeof(keys));

	/* coord_keys_done() clears everything. */
	assert_int_equal(coord_keys_load(public_file, path(f, "hq.secret"), &keys, &err), 0);
	coord_keys_done(&keys);
	static const struct coord_keys zero;
	assert_memory_equal(&keys, &zero, sizeof(keys));
	coord_keys_done(NULL);
}

/* Open a client of council fr with `keys` (NULL: plain). */
static int
open_client(struct fixture *f, const struct coord_keys *keys, struct coord_client **ret)
{
	struct coord_options o;
	coord_options_init(&o);
	o.endpoint = f->endpoint;
	o.council = "fr";
	o.outbox_path = f->outbox;
	o.ack_timeout_ms = 2000;
	o.backoff_min_ms = 10;
	o.backoff_max_ms = 100;
	if (keys != NULL) {
		o.curve_server_key = keys->server_key;
		o.curve_public_key = keys->public_key;
		o.curve_secret_key = keys->secret_key;
	}
	return coord_client_new(&o, ret);
}

static void
push_one(struct fixture *f)
{
	const struct coord_field fields[] = {
	        {"kind", "rally"},
	        {"country", "FR"},
	        {"date", "2020-10-04"},
	        {"title", "Rally"},
	};
	struct coord_envelope e;
	struct coord_error err;
	assert_int_equal(coord_envelope_build("fr", "event", fields, 4, 0, &e, &err), 0);
	assert_int_equal(coord_push(f->client, e.bytes, e.len), 0);
	coord_envelope_done(&e);
}

/* Wait (bounded) until coord_connection_error() is `want`. */
static void
wait_connection_error(struct fixture *f, int want)
{
	int64_t deadline = mono_ms() + WAIT_MS;
	int got;
	while ((got = coord_connection_error(f->client)) != want && mono_ms() < deadline) {
		(void) coord_flush(f->client, 20);
	}
	assert_int_equal(got, want);
}

/* Make the client's pair in the fixture's directory and load it. */
static void
client_keys(struct fixture *f, struct coord_keys *ret)
{
	struct coord_error err = {.field = ""};
	char base[160], secret_file[160];
	(void) snprintf(base, sizeof(base), "%s", path(f, "client"));
	assert_int_equal(coord_keygen(base, NULL, &err), 0);
	(void) snprintf(secret_file, sizeof(secret_file), "%s", path(f, "client.secret"));
	assert_int_equal(coord_keys_load(f->server_public, secret_file, ret, &err), 0);
}

static void
test_client_with_its_key_is_admitted(void **state)
{
	struct fixture *f = *state;
	struct coord_keys keys;
	client_keys(f, &keys);
	broker_start(f, keys.public_key);

	assert_int_equal(open_client(f, &keys, &f->client), 0);
	coord_keys_done(&keys); /* the client has its own copy */
	push_one(f);
	assert_int_equal(coord_flush(f->client, WAIT_MS), 0);
	assert_int_equal(atomic_load(&f->broker->received), 1);
	assert_int_equal(atomic_load(&f->broker->refused), 0);
	assert_int_equal(coord_connection_error(f->client), 0);
	struct coord_stats st;
	assert_int_equal(coord_stats(f->client, &st), 0);
	assert_int_equal(st.accepted, 1);
	assert_true(st.connected);
}

static void
test_unknown_key_is_refused_and_said_so(void **state)
{
	struct fixture *f = *state;
	struct coord_keys keys;
	client_keys(f, &keys);
	broker_start(f, f->server_public); /* admits some other key only */

	assert_int_equal(open_client(f, &keys, &f->client), 0);
	coord_keys_done(&keys);
	push_one(f);
	wait_connection_error(f, -EACCES);
	assert_int_equal(coord_flush(f->client, 200), -ETIMEDOUT);
	assert_int_equal(atomic_load(&f->broker->received), 0);
	assert_true(atomic_load(&f->broker->refused) >= 1);
	struct coord_stats st;
	assert_int_equal(coord_stats(f->client, &st), 0);
	assert_int_equal(st.waiting, 1); /* kept in the outbox for when the key is admitted */
	assert_false(st.connected);
}

static void
test_plain_client_of_a_curve_broker_is_told(void **state)
{
	struct fixture *f = *state;
	broker_start(f, f->server_public);

	assert_int_equal(open_client(f, NULL, &f->client), 0);
	push_one(f);
	wait_connection_error(f, -EPROTONOSUPPORT);
	assert_int_equal(atomic_load(&f->broker->received), 0);
}

/* A server on the fixture's endpoint that accepts every connection and closes it at once,
 * before any greeting: what a plain client can see of a CURVE broker when the broker closes
 * first. Runs until `*stop`. */
struct closer {
	int fd;
	pthread_t thread;
	atomic_bool stop;
	atomic_uint accepted;
};

static void *
closer_main(void *arg)
{
	struct closer *cl = arg;
	while (!atomic_load(&cl->stop)) {
		struct pollfd p = {.fd = cl->fd, .events = POLLIN};
		if (poll(&p, 1, 20) == 1) {
			int c = accept(cl->fd, NULL, NULL);
			if (c >= 0) {
				atomic_fetch_add(&cl->accepted, 1);
				(void) close(c);
			}
		}
	}
	return NULL;
}

static void
test_connection_closed_in_the_handshake_is_said(void **state)
{
	struct fixture *f = *state;
	struct closer cl = {.fd = socket(AF_UNIX, SOCK_STREAM, 0)};
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	assert_true(cl.fd >= 0);
	const char *sock_path = path(f, "broker.sock");
	size_t len = strlen(sock_path);
	assert_true(len < sizeof(sa.sun_path));
	memcpy(sa.sun_path, sock_path, len + 1);
	assert_int_equal(bind(cl.fd, (const struct sockaddr *) &sa, sizeof(sa)), 0);
	assert_int_equal(listen(cl.fd, 16), 0);
	assert_int_equal(pthread_create(&cl.thread, NULL, closer_main, &cl), 0);

	assert_int_equal(open_client(f, NULL, &f->client), 0);
	push_one(f);
	wait_connection_error(f, -ECONNRESET);
	assert_true(atomic_load(&cl.accepted) >= 1);
	f->client = coord_client_free(f->client);
	atomic_store(&cl.stop, true);
	(void) pthread_join(cl.thread, NULL);
	(void) close(cl.fd);
}

static void
test_bad_keys_are_refused_by_client_new(void **state)
{
	struct fixture *f = *state;
	struct coord_keys keys;
	client_keys(f, &keys);
	struct coord_options o;
	coord_options_init(&o);
	o.council = "fr";
	o.outbox_path = f->outbox;
	o.endpoint = f->endpoint;
	o.curve_server_key = keys.server_key;
	o.curve_public_key = keys.public_key;
	assert_int_equal(coord_client_new(&o, &f->client), -EINVAL); /* no secret */
	o.curve_secret_key = "too short";
	assert_int_equal(coord_client_new(&o, &f->client), -EINVAL);
	assert_null(f->client);
	coord_keys_done(&keys);
	assert_int_equal(coord_connection_error(NULL), -EINVAL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_keygen_writes_a_pair_and_never_overwrites,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(
	                test_keys_load_takes_z85_or_a_file_and_explains_errors, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_client_with_its_key_is_admitted, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_unknown_key_is_refused_and_said_so, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_plain_client_of_a_curve_broker_is_told, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_connection_closed_in_the_handshake_is_said,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_bad_keys_are_refused_by_client_new, setup,
	                                        teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

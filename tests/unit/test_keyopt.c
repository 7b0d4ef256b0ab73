/*
 * Unit tests for clients/keyopt.c: --server-key/--key and $COORD_SERVER_KEY/$COORD_KEY as
 * coord-push, coordctl and coord-watch take them (both or neither, which wins, the messages
 * that name the option), keyopt_apply() on a real ZeroMQ socket, and the sentences for
 * refused handshakes.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>
#include <zmq.h>

#include "keyopt.h"

struct fixture {
	char dir[64];
	char secret[160]; /* a.secret, mode 0600 */
	char public[160]; /* a.public */
	char server[160]; /* server.public */
	char pub_z85[COORD_KEY_Z85_LEN + 1];
	char server_z85[COORD_KEY_Z85_LEN + 1];
	char msg[KEYOPT_MESSAGE_MAX];
};

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	strcpy(f->dir, "/tmp/coord-test-keyopt-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	char base[128];
	(void) snprintf(base, sizeof(base), "%s/a", f->dir);
	assert_int_equal(coord_keygen(base, f->pub_z85, NULL), 0);
	(void) snprintf(base, sizeof(base), "%s/server", f->dir);
	assert_int_equal(coord_keygen(base, f->server_z85, NULL), 0);
	(void) snprintf(f->secret, sizeof(f->secret), "%s/a.secret", f->dir);
	(void) snprintf(f->public, sizeof(f->public), "%s/a.public", f->dir);
	(void) snprintf(f->server, sizeof(f->server), "%s/server.public", f->dir);
	assert_int_equal(unsetenv(KEYOPT_ENV_SERVER_KEY), 0);
	assert_int_equal(unsetenv(KEYOPT_ENV_KEY), 0);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;
	char cmd[128];
	(void) snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
	assert_int_equal(system(cmd), 0);
	(void) unsetenv(KEYOPT_ENV_SERVER_KEY);
	(void) unsetenv(KEYOPT_ENV_KEY);
	free(f);
	return 0;
}

static void
test_neither_key_means_plain(void **state)
{
	struct fixture *f = *state;
	struct keyopt k;
	memset(&k, 'x', sizeof(k));
	assert_int_equal(keyopt_load(NULL, NULL, &k, f->msg, sizeof(f->msg)), 0);
	assert_false(k.curve);
	/* An empty variable counts as unset. */
	assert_int_equal(setenv(KEYOPT_ENV_KEY, "", 1), 0);
	assert_int_equal(keyopt_load(NULL, NULL, &k, f->msg, sizeof(f->msg)), 0);
	assert_false(k.curve);
	keyopt_done(&k);
}

static void
test_one_key_alone_is_a_usage_error(void **state)
{
	struct fixture *f = *state;
	struct keyopt k = {.curve = false};
	assert_int_equal(keyopt_load(f->server, NULL, &k, f->msg, sizeof(f->msg)), -EINVAL);
	assert_non_null(strstr(f->msg, "--server-key needs"));
	assert_non_null(strstr(f->msg, "--key NAME.secret"));
	assert_int_equal(keyopt_load(NULL, f->secret, &k, f->msg, sizeof(f->msg)), -EINVAL);
	assert_non_null(strstr(f->msg, "--key needs"));
	assert_non_null(strstr(f->msg, KEYOPT_ENV_SERVER_KEY));
	/* The variable that gave the lone key is named. */
	assert_int_equal(setenv(KEYOPT_ENV_KEY, f->secret, 1), 0);
	assert_int_equal(keyopt_load(NULL, NULL, &k, f->msg, sizeof(f->msg)), -EINVAL);
	assert_non_null(strstr(f->msg, "COORD_KEY needs"));
	assert_false(k.curve);
}

static void
test_both_keys_load_from_options_or_environment(void **state)
{
	struct fixture *f = *state;
	struct keyopt k;

	assert_int_equal(keyopt_load(f->server, f->secret, &k, f->msg, sizeof(f->msg)), 0);
	assert_true(k.curve);
	assert_string_equal(k.keys.server_key, f->server_z85);
	assert_string_equal(k.keys.public_key, f->pub_z85);
	keyopt_done(&k);
	assert_false(k.curve);
	assert_int_equal(k.keys.secret_key[0], '\0');

	/* The environment, the server key as Z85 text. */
	assert_int_equal(setenv(KEYOPT_ENV_SERVER_KEY, f->server_z85, 1), 0);
	assert_int_equal(setenv(KEYOPT_ENV_KEY, f->secret, 1), 0);
	assert_int_equal(keyopt_load(NULL, NULL, &k, f->msg, sizeof(f->msg)), 0);
	assert_true(k.curve);
	assert_string_equal(k.keys.server_key, f->server_z85);
	keyopt_done(&k);

	/* An option wins over its variable (which names a file that does not exist). */
	char missing[200];
	(void) snprintf(missing, sizeof(missing), "%s/missing.secret", f->dir);
	assert_int_equal(setenv(KEYOPT_ENV_KEY, missing, 1), 0);
	assert_int_equal(keyopt_load(NULL, f->secret, &k, f->msg, sizeof(f->msg)), 0);
	assert_true(k.curve);
	keyopt_done(&k);
	assert_int_equal(keyopt_load(NULL, NULL, &k, f->msg, sizeof(f->msg)), -ENOENT);
	assert_non_null(strstr(f->msg, "COORD_KEY: cannot open secret key file"));
}

static void
test_key_file_errors_name_the_option_and_the_fix(void **state)
{
	struct fixture *f = *state;
	struct keyopt k = {.curve = false};

	assert_int_equal(chmod(f->secret, 0644), 0);
	assert_int_equal(keyopt_load(f->server, f->secret, &k, f->msg, sizeof(f->msg)), -EPERM);
	assert_non_null(strstr(f->msg, "--key: secret key file"));
	assert_non_null(strstr(f->msg, "chmod 600"));
	assert_int_equal(chmod(f->secret, 0600), 0);

	assert_int_equal(keyopt_load(f->server, f->public, &k, f->msg, sizeof(f->msg)), -EINVAL);
	assert_non_null(strstr(f->msg, "--key: "));
	assert_non_null(strstr(f->msg, "is a public key file"));

	assert_int_equal(keyopt_load("not-a-key", f->secret, &k, f->msg, sizeof(f->msg)), -ENOENT);
	assert_non_null(strstr(f->msg, "--server-key: cannot open public key file 'not-a-key'"));
	assert_false(k.curve);
}

static void
test_apply_makes_a_curve_client_socket(void **state)
{
	struct fixture *f = *state;
	struct keyopt plain = {.curve = false}, k;
	void *ctx = zmq_ctx_new();
	void *a = zmq_socket(ctx, ZMQ_DEALER), *b = zmq_socket(ctx, ZMQ_DEALER);
	int mechanism = -1;
	size_t size = sizeof(mechanism);

	assert_int_equal(keyopt_apply(&plain, a), 0);
	assert_int_equal(zmq_getsockopt(a, ZMQ_MECHANISM, &mechanism, &size), 0);
	assert_int_equal(mechanism, ZMQ_NULL);

	assert_int_equal(keyopt_load(f->server, f->secret, &k, f->msg, sizeof(f->msg)), 0);
	assert_int_equal(keyopt_apply(&k, b), 0);
	size = sizeof(mechanism);
	assert_int_equal(zmq_getsockopt(b, ZMQ_MECHANISM, &mechanism, &size), 0);
	assert_int_equal(mechanism, ZMQ_CURVE);
	char z85[COORD_KEY_Z85_LEN + 1];
	size = sizeof(z85);
	assert_int_equal(zmq_getsockopt(b, ZMQ_CURVE_SERVERKEY, z85, &size), 0);
	assert_string_equal(z85, f->server_z85);
	size = sizeof(z85);
	assert_int_equal(zmq_getsockopt(b, ZMQ_CURVE_PUBLICKEY, z85, &size), 0);
	assert_string_equal(z85, f->pub_z85);
	keyopt_done(&k);
	(void) zmq_close(a);
	(void) zmq_close(b);
	(void) zmq_ctx_term(ctx);
}

static void
test_refused_handshakes_have_a_sentence(void **state)
{
	struct fixture *f = *state;
	assert_true(keyopt_event_message(ZMQ_EVENT_HANDSHAKE_FAILED_AUTH, 400, true, "tcp://x:1",
	                                 f->msg, sizeof(f->msg)));
	assert_non_null(strstr(f->msg, "tcp://x:1 refused this client's key (status 400)"));
	assert_true(keyopt_event_message(ZMQ_EVENT_HANDSHAKE_FAILED_AUTH, 400, false, "e", f->msg,
	                                 sizeof(f->msg)));
	assert_non_null(strstr(f->msg, "give --server-key and --key"));
	assert_true(keyopt_event_message(ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL,
	                                 ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH, false, "e",
	                                 f->msg, sizeof(f->msg)));
	assert_non_null(strstr(f->msg, "requires CURVE keys"));
	assert_true(keyopt_event_message(ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL,
	                                 ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH, true, "e",
	                                 f->msg, sizeof(f->msg)));
	assert_non_null(strstr(f->msg, "does not use CURVE"));
	assert_false(
	        keyopt_event_message(ZMQ_EVENT_DISCONNECTED, 0, true, "e", f->msg, sizeof(f->msg)));
	assert_false(keyopt_event_message(ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL,
	                                  ZMQ_PROTOCOL_ERROR_ZMTP_UNEXPECTED_COMMAND, true, "e",
	                                  f->msg, sizeof(f->msg)));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_neither_key_means_plain, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_one_key_alone_is_a_usage_error, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_both_keys_load_from_options_or_environment,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_key_file_errors_name_the_option_and_the_fix,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_apply_makes_a_curve_client_socket, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_refused_handshakes_have_a_sentence, setup,
	                                        teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}

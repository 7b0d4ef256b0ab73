/*
 * Unit tests for tests/bench/peers.c: --peer parsing (what it takes, what it refuses and
 * leaves untouched), the names and packages, and what a phase does against a peer that is
 * not there: not built (-ENOTSUP, saying which package) or nothing listening on the port
 * (-ECONNREFUSED). The phases against running servers are the bench-peers test.
 */
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "bench.h"

static void
test_parse_good(void **state)
{
	struct bench_peer p;

	assert_int_equal(bench_peer_parse("redis=127.0.0.1:6379", &p), 0);
	assert_int_equal(p.kind, BENCH_PEER_REDIS);
	assert_string_equal(p.host, "127.0.0.1");
	assert_int_equal(p.port, 6379);
	assert_int_equal(p.pid, 0);

	assert_int_equal(bench_peer_parse("nats=127.0.0.2:4222,pid=1234", &p), 0);
	assert_int_equal(p.kind, BENCH_PEER_NATS);
	assert_string_equal(p.host, "127.0.0.2");
	assert_int_equal(p.port, 4222);
	assert_int_equal(p.pid, 1234);

	assert_int_equal(bench_peer_parse("rabbitmq=localhost:1", &p), 0);
	assert_int_equal(p.kind, BENCH_PEER_RABBITMQ);
	assert_int_equal(p.port, 1);
}

static void
test_parse_bad(void **state)
{
	static const char *const bad[] = {
	        "",
	        "redis",
	        "redis=",
	        "redis=127.0.0.1",
	        "redis=:6379",
	        "redis=127.0.0.1:",
	        "redis=127.0.0.1:0",
	        "redis=127.0.0.1:65536",
	        "redis=127.0.0.1:-1",
	        "redis=127.0.0.1:63x",
	        "redis=127.0.0.1:6379,",
	        "redis=127.0.0.1:6379,pid=",
	        "redis=127.0.0.1:6379,pid=0",
	        "redis=127.0.0.1:6379,pid=12x",
	        "redis=127.0.0.1:6379,pid=1,",
	        "redis=127.0.0.1:6379 ",
	        "Redis=127.0.0.1:6379",
	        "redi=127.0.0.1:6379",
	        "redisx=127.0.0.1:6379",
	        "mqtt=127.0.0.1:1883",
	        "=127.0.0.1:1",
	        "nats=::1:4222", /* no IPv6: the NATS URL would need brackets */
	        "nats=0123456789012345678901234567890123456789012345678901234567890123456789:1",
	};
	struct bench_peer p = {.kind = BENCH_PEER_NATS, .port = 7, .pid = 9};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (bench_peer_parse(bad[i], &p) != -EINVAL) {
			fail_msg("'%s' was taken", bad[i]);
		}
		/* Refused: *ret_peer untouched. */
		assert_int_equal(p.kind, BENCH_PEER_NATS);
		assert_int_equal(p.port, 7);
		assert_int_equal(p.pid, 9);
	}
}

static void
test_names(void **state)
{
	assert_string_equal(bench_peer_name(BENCH_PEER_REDIS), "redis");
	assert_string_equal(bench_peer_name(BENCH_PEER_NATS), "nats");
	assert_string_equal(bench_peer_name(BENCH_PEER_RABBITMQ), "rabbitmq");
	assert_string_equal(bench_peer_name(BENCH_PEER_NONE), "?");
	assert_string_equal(bench_peer_name(BENCH_PEER_MAX), "?");
	assert_string_equal(bench_peer_package(BENCH_PEER_REDIS), "libhiredis-dev");
	assert_string_equal(bench_peer_package(BENCH_PEER_NATS), "libnats-dev");
	assert_string_equal(bench_peer_package(BENCH_PEER_RABBITMQ), "librabbitmq-dev");
}

/* A loopback port nothing listens on: bound, never listened to, so a connect is refused. */
static int
closed_port(int *ret_fd)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *) &a, sizeof(a)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *) &a, &len), 0);
	*ret_fd = fd;
	return ntohs(a.sin_port);
}

static void
test_absent_peers(void **state)
{
	int fd;
	int port = closed_port(&fd);

	for (int k = BENCH_PEER_NONE + 1; k < BENCH_PEER_MAX; k++) {
		struct bench_peer p = {.kind = (enum bench_peer_kind) k, .port = port};
		struct bench_link l;
		char err[256];
		(void) snprintf(p.host, sizeof(p.host), "127.0.0.1");

		int r = bench_peer_prepare(&p, err, sizeof(err));
		if (bench_peer_built(p.kind)) {
			assert_true(r < 0);
			assert_true(r != -ENOTSUP);
			assert_non_null(strstr(err, "127.0.0.1"));
			assert_int_equal(bench_link_open(&p, "t", 4, 1000, &l), -ECONNREFUSED);
		} else {
			assert_int_equal(r, -ENOTSUP);
			assert_non_null(strstr(err, "not built"));
			assert_non_null(strstr(err, bench_peer_package(p.kind)));
			assert_int_equal(bench_link_open(&p, "t", 4, 1000, &l), -ENOTSUP);
		}
	}
	(void) close(fd);
	bench_peers_cleanup();
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_parse_good),
	        cmocka_unit_test(test_parse_bad),
	        cmocka_unit_test(test_names),
	        cmocka_unit_test(test_absent_peers),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

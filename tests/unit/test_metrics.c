/*
 * Unit tests for metrics: a real listening socket on 127.0.0.1, driven by running the loop
 * between non-blocking client steps.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "metrics.h"

struct fixture {
	uv_loop_t loop;
	struct metrics *m;
	bool healthy;
	bool closed;
};

static const double bounds[] = {1, 10, 100};

static void
render(void *data, struct metrics_text *out)
{
	struct metrics_histogram h;

	metrics_text_family(out, "test_messages_total", "counter", "Messages.");
	metrics_text_sample(out, "test_messages_total", "status=\"accepted\"", 42);
	assert_int_equal(metrics_histogram_init(&h, bounds, 3), 0);
	metrics_histogram_observe(&h, 0.5);
	metrics_histogram_observe(&h, 10);
	metrics_histogram_observe(&h, 1000);
	metrics_text_histogram(out, "test_batch_size", "Batch sizes.", &h);
	metrics_histogram_done(&h);
}

static bool
health(void *data, struct metrics_text *out)
{
	struct fixture *f = data;

	metrics_text_printf(out, "%s\n", f->healthy ? "ok" : "store unavailable");
	return f->healthy;
}

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	assert_int_equal(uv_loop_init(&f->loop), 0);
	f->healthy = true;
	assert_int_equal(metrics_new(&f->loop, "127.0.0.1", 0, render, health, f, &f->m), 0);
	assert_true(metrics_port(f->m) > 0);
	*state = f;
	return 0;
}

static void
on_closed(void *data)
{
	((struct fixture *) data)->closed = true;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;

	metrics_close(f->m, on_closed, f);
	assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
	assert_true(f->closed);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	free(f);
	return 0;
}

static int
connect_to(uint16_t port)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_true(connect(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0 || errno == EINPROGRESS);
	return fd;
}

/* Send `req` (len bytes) and read until the server closes; bounded in steps. */
static size_t
exchange(struct fixture *f, const char *req, size_t len, char *out, size_t cap)
{
	int fd = connect_to(metrics_port(f->m));
	size_t sent = 0, got = 0;

	for (int step = 0; step < 20000; step++) {
		struct pollfd p = {.fd = fd, .events = POLLIN | (sent < len ? POLLOUT : 0)};

		(void) uv_run(&f->loop, UV_RUN_NOWAIT);
		(void) poll(&p, 1, 1);
		if (sent < len) {
			ssize_t n = send(fd, req + sent, len - sent, MSG_NOSIGNAL);
			if (n > 0) {
				sent += (size_t) n;
			}
		}
		ssize_t n = recv(fd, out + got, cap - 1 - got, 0);
		if (n > 0) {
			got += (size_t) n;
		} else if (n == 0 || (n < 0 && errno != EAGAIN)) {
			break;
		}
	}
	close(fd);
	out[got] = 0;
	return got;
}

static void
get(struct fixture *f, const char *req, char *out, size_t cap)
{
	(void) exchange(f, req, strlen(req), out, cap);
}

static void
test_metrics_page_has_counters_and_histograms(void **state)
{
	struct fixture *f = *state;
	char out[8192];

	get(f, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", out, sizeof(out));
	assert_non_null(strstr(out, "HTTP/1.1 200 OK\r\n"));
	assert_non_null(strstr(out, "Content-Type: text/plain; version=0.0.4"));
	assert_non_null(strstr(out, "# TYPE test_messages_total counter\n"));
	assert_non_null(strstr(out, "test_messages_total{status=\"accepted\"} 42\n"));
	assert_non_null(strstr(out, "test_batch_size_bucket{le=\"1\"} 1\n"));
	assert_non_null(strstr(out, "test_batch_size_bucket{le=\"10\"} 2\n"));
	assert_non_null(strstr(out, "test_batch_size_bucket{le=\"100\"} 2\n"));
	assert_non_null(strstr(out, "test_batch_size_bucket{le=\"+Inf\"} 3\n"));
	assert_non_null(strstr(out, "test_batch_size_count 3\n"));
	assert_non_null(strstr(out, "test_batch_size_sum 1010.5\n"));
	assert_int_equal(metrics_requests(f->m), 1);
}

static void
test_query_string_is_ignored(void **state)
{
	struct fixture *f = *state;
	char out[8192];

	get(f, "GET /metrics?x=1 HTTP/1.0\r\n\r\n", out, sizeof(out));
	assert_non_null(strstr(out, "HTTP/1.1 200 OK\r\n"));
}

static void
test_head_sends_no_body(void **state)
{
	struct fixture *f = *state;
	char out[8192];

	get(f, "HEAD /metrics HTTP/1.1\r\n\r\n", out, sizeof(out));
	assert_non_null(strstr(out, "HTTP/1.1 200 OK\r\n"));
	assert_null(strstr(out, "test_messages_total"));
}

static void
test_healthz_reports_health(void **state)
{
	struct fixture *f = *state;
	char out[1024];

	get(f, "GET /healthz HTTP/1.1\r\n\r\n", out, sizeof(out));
	assert_non_null(strstr(out, "HTTP/1.1 200 OK\r\n"));
	assert_non_null(strstr(out, "\r\n\r\nok\n"));
	f->healthy = false;
	get(f, "GET /healthz HTTP/1.1\r\n\r\n", out, sizeof(out));
	assert_non_null(strstr(out, "HTTP/1.1 503 Service Unavailable\r\n"));
	assert_non_null(strstr(out, "store unavailable"));
}

static void
test_unknown_path_is_404(void **state)
{
	struct fixture *f = *state;
	char out[1024];

	get(f, "GET /metricsx HTTP/1.1\r\n\r\n", out, sizeof(out));
	assert_non_null(strstr(out, "HTTP/1.1 404 Not Found\r\n"));
}

static void
test_post_is_405(void **state)
{
	struct fixture *f = *state;
	char out[1024];

	get(f, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", out, sizeof(out));
	assert_non_null(strstr(out, "HTTP/1.1 405 Method Not Allowed\r\n"));
	assert_non_null(strstr(out, "Allow: GET, HEAD\r\n"));
}

static void
test_garbage_is_400(void **state)
{
	struct fixture *f = *state;
	char out[1024];

	get(f, "\x01\x02 nonsense\r\n\r\n", out, sizeof(out));
	assert_non_null(strstr(out, "HTTP/1.1 400 Bad Request\r\n"));
}

static void
test_oversized_request_is_431(void **state)
{
	struct fixture *f = *state;
	size_t len = METRICS_REQUEST_MAX + 2048;
	char *req = malloc(len);
	char out[1024];

	assert_non_null(req);
	memcpy(req, "GET /metrics HTTP/1.1\r\nX-Pad: ", 30);
	memset(req + 30, 'a', len - 30);
	(void) exchange(f, req, len, out, sizeof(out));
	assert_non_null(strstr(out, "HTTP/1.1 431 "));
	free(req);
}

static void
test_long_url_is_414(void **state)
{
	struct fixture *f = *state;
	char req[1024];
	char out[1024];

	(void) snprintf(req, sizeof(req), "GET /%0600d HTTP/1.1\r\n\r\n", 0);
	get(f, req, out, sizeof(out));
	assert_non_null(strstr(out, "HTTP/1.1 414 URI Too Long\r\n"));
}

static void
test_connections_over_limit_are_closed(void **state)
{
	struct fixture *f = *state;
	int fds[METRICS_CONNECTIONS_MAX + 4];
	char out[8192];

	/* Idle connections fill the table; the server must still close the extra ones and,
	 * once they are gone, serve again. */
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
		fds[i] = connect_to(metrics_port(f->m));
		for (int step = 0; step < 50; step++) {
			(void) uv_run(&f->loop, UV_RUN_NOWAIT);
		}
	}
	int closed = 0;
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
		char c;
		if (recv(fds[i], &c, 1, 0) == 0) {
			closed++;
		}
		close(fds[i]);
	}
	assert_true(closed >= 4);
	for (int step = 0; step < 200; step++) {
		(void) uv_run(&f->loop, UV_RUN_NOWAIT);
	}
	get(f, "GET /healthz HTTP/1.1\r\n\r\n", out, sizeof(out));
	assert_non_null(strstr(out, "HTTP/1.1 200 OK\r\n"));
}

static void
test_bad_address_is_einval(void **state)
{
	uv_loop_t loop;
	struct metrics *m = NULL;

	assert_int_equal(uv_loop_init(&loop), 0);
	assert_int_equal(metrics_new(&loop, "localhost", 0, render, health, NULL, &m), -EINVAL);
	assert_null(m);
	assert_int_equal(uv_loop_close(&loop), 0);
}

static void
test_port_in_use_fails_and_closes(void **state)
{
	struct fixture *f = *state;
	struct metrics *m = NULL;

	assert_int_equal(
	        metrics_new(&f->loop, "127.0.0.1", metrics_port(f->m), render, health, f, &m),
	        UV_EADDRINUSE);
	assert_null(m);
}

static void
test_text_grows_past_initial_size(void **state)
{
	struct metrics_text t = {0};

	for (int i = 0; i < 2000; i++) {
		metrics_text_sample(&t, "test_line", "n=\"x\"", i);
	}
	assert_false(t.failed);
	assert_non_null(strstr(t.buf, "test_line{n=\"x\"} 1999\n"));
	metrics_text_done(&t);
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        T(test_metrics_page_has_counters_and_histograms),
	        T(test_query_string_is_ignored),
	        T(test_head_sends_no_body),
	        T(test_healthz_reports_health),
	        T(test_unknown_path_is_404),
	        T(test_post_is_405),
	        T(test_garbage_is_400),
	        T(test_oversized_request_is_431),
	        T(test_long_url_is_414),
	        T(test_connections_over_limit_are_closed),
	        T(test_port_in_use_fails_and_closes),
	        cmocka_unit_test(test_bad_address_is_einval),
	        cmocka_unit_test(test_text_grows_past_initial_size),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

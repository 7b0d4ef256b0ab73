/*
 * metrics: the HTTP endpoint for Prometheus (GET /metrics) and health checks (GET /healthz),
 * served from the libuv loop, plus helpers that write the Prometheus text format.
 *
 * The server is small on purpose: one request per connection (answered with
 * "Connection: close"), requests parsed with http-parser, GET and HEAD only, the request
 * line and headers bounded (METRICS_REQUEST_MAX bytes), at most METRICS_CONNECTIONS_MAX
 * connections, and each connection closed after METRICS_TIMEOUT_MS. It never reads a body.
 *
 * What the pages say comes from callbacks that main provides, so this module knows nothing
 * of the other modules. Loop thread only. Non-logging.
 */
#pragma once

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#define METRICS_REQUEST_MAX 8192
#define METRICS_CONNECTIONS_MAX 32
#define METRICS_TIMEOUT_MS 5000

/* A growing text buffer. A failed allocation sets `failed`; later writes are ignored. */
struct metrics_text {
	char *buf;
	size_t len;
	size_t cap;
	bool failed;
};

/* Append printf-style text. */
void metrics_text_printf(struct metrics_text *t, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));

/* Release the buffer (the struct itself is the caller's). */
void metrics_text_done(struct metrics_text *t);

/*
 * Write "# HELP" and "# TYPE" lines for a metric family. `type` is "counter", "gauge" or
 * "histogram". Counter family names end in "_total".
 */
void metrics_text_family(struct metrics_text *t, const char *name, const char *type,
                         const char *help);

/*
 * Write one sample line: `name{labels} value`. `labels` is the inside of the braces
 * (e.g. `status="accepted"`) or NULL.
 */
void metrics_text_sample(struct metrics_text *t, const char *name, const char *labels,
                         double value);

/* A cumulative histogram with fixed upper bounds (the +Inf bucket is implicit). */
struct metrics_histogram {
	const double *bounds; /* ascending, borrowed for the histogram's life */
	size_t n_bounds;
	uint64_t *counts; /* n_bounds + 1 entries, the last one for +Inf; owned */
	uint64_t count;
	double sum;
};

/* Allocate the counts of `h` for `bounds`. Returns 0 or -ENOMEM. */
int metrics_histogram_init(struct metrics_histogram *h, const double *bounds, size_t n_bounds);
void metrics_histogram_done(struct metrics_histogram *h);
void metrics_histogram_observe(struct metrics_histogram *h, double value);

/* Write a whole histogram family: HELP, TYPE, the _bucket lines, _sum and _count. */
void metrics_text_histogram(struct metrics_text *t, const char *name, const char *help,
                            const struct metrics_histogram *h);

/* Fill the /metrics page. */
typedef void metrics_render_fn(void *data, struct metrics_text *out);

/* Fill the /healthz page (one short line) and say whether the service is healthy. */
typedef bool metrics_health_fn(void *data, struct metrics_text *out);

struct metrics;

/*
 * Listen on `host` (a numeric IPv4 or IPv6 address) and `port` (0 picks a free one; see
 * metrics_port()). The callbacks and `data` are borrowed and must stay valid until the
 * close callback. Returns 0 and *ret_metrics, or a negative errno (-EADDRINUSE, -EINVAL for
 * a bad address, -ENOMEM).
 */
int metrics_new(uv_loop_t *loop, const char *host, uint16_t port, metrics_render_fn *render,
                metrics_health_fn *health, void *data, struct metrics **ret_metrics);

/* The port actually bound. */
uint16_t metrics_port(const struct metrics *m);

/* Requests answered since start, for tests. */
uint64_t metrics_requests(const struct metrics *m);

/*
 * Stop listening and close every connection; `done(data)` runs on the loop once every handle
 * is closed, and then `m` is freed. Call once.
 */
void metrics_close(struct metrics *m, void (*done)(void *data), void *data);

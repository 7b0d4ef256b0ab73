/*
 * metrics: a minimal HTTP/1.1 server for /metrics and /healthz on libuv, and Prometheus
 * text helpers.
 *
 * Each connection reads one request through http-parser. When the request is complete the
 * connection stops reading, writes one response with "Connection: close" and closes. A
 * connection that sends more than METRICS_REQUEST_MAX bytes before its request completes,
 * sends something http-parser refuses, or is still open after METRICS_TIMEOUT_MS is closed
 * (with a 4xx answer where one can still be sent). Over METRICS_CONNECTIONS_MAX open
 * connections, new ones are accepted and closed at once, so the listen queue cannot fill.
 *
 * A connection owns two handles (the TCP stream and its timer); it is freed when both close
 * callbacks have run, never from inside its own callbacks.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <http_parser.h>
#include <uv.h>

#include "metrics.h"

#define container_of(ptr, type, member) ((type *) ((char *) (ptr) -offsetof(type, member)))
#define URL_MAX 256

struct conn {
	uv_tcp_t tcp;
	uv_timer_t timer;
	uv_write_t write;
	http_parser parser;
	struct metrics *m;
	struct conn *next;
	struct conn **pprev;
	size_t received;
	char url[URL_MAX];
	size_t url_len;
	bool url_too_long;
	bool answered;
	bool closing;
	int open_handles;
	char *response;
	char read_buf[1024];
};

struct metrics {
	uv_loop_t *loop;
	uv_tcp_t server;
	metrics_render_fn *render;
	metrics_health_fn *health;
	void *data;
	struct conn *conns;
	unsigned n_conns;
	uint16_t port;
	uint64_t requests;
	bool closing;
	bool server_closed;
	void (*done)(void *data);
	void *done_data;
};

/* ----------------------------------------------------------------------------------------- */
/* Text helpers */

void
metrics_text_printf(struct metrics_text *t, const char *fmt, ...)
{
	va_list ap;

	if (t->failed) {
		return;
	}
	for (;;) {
		size_t room = t->cap - t->len;

		va_start(ap, fmt);
		int n = vsnprintf(t->buf ? t->buf + t->len : NULL, room, fmt, ap);
		va_end(ap);
		if (n < 0) {
			t->failed = true;
			return;
		}
		if ((size_t) n < room) {
			t->len += (size_t) n;
			return;
		}
		size_t cap = t->cap ? t->cap * 2 : 4096;
		while (cap - t->len <= (size_t) n) {
			cap *= 2;
		}
		char *buf = realloc(t->buf, cap);
		if (!buf) {
			t->failed = true;
			return;
		}
		t->buf = buf;
		t->cap = cap;
	}
}

void
metrics_text_done(struct metrics_text *t)
{
	free(t->buf);
	*t = (struct metrics_text){0};
}

void
metrics_text_family(struct metrics_text *t, const char *name, const char *type, const char *help)
{
	metrics_text_printf(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void
metrics_text_sample(struct metrics_text *t, const char *name, const char *labels, double value)
{
	if (labels && labels[0]) {
		metrics_text_printf(t, "%s{%s} %.17g\n", name, labels, value);
	} else {
		metrics_text_printf(t, "%s %.17g\n", name, value);
	}
}

int
metrics_histogram_init(struct metrics_histogram *h, const double *bounds, size_t n_bounds)
{
	*h = (struct metrics_histogram){.bounds = bounds, .n_bounds = n_bounds};
	h->counts = calloc(n_bounds + 1, sizeof(*h->counts));
	return h->counts ? 0 : -ENOMEM;
}

void
metrics_histogram_done(struct metrics_histogram *h)
{
	free(h->counts);
	h->counts = NULL;
}

void
metrics_histogram_observe(struct metrics_histogram *h, double value)
{
	size_t i = 0;

	while (i < h->n_bounds && value > h->bounds[i]) {
		i++;
	}
	h->counts[i]++;
	h->count++;
	h->sum += value;
}

void
metrics_text_histogram(struct metrics_text *t, const char *name, const char *help,
                       const struct metrics_histogram *h)
{
	uint64_t cumulative = 0;

	metrics_text_family(t, name, "histogram", help);
	for (size_t i = 0; i <= h->n_bounds; i++) {
		cumulative += h->counts[i];
		if (i < h->n_bounds) {
			metrics_text_printf(t, "%s_bucket{le=\"%.17g\"} %llu\n", name, h->bounds[i],
			                    (unsigned long long) cumulative);
		} else {
			metrics_text_printf(t, "%s_bucket{le=\"+Inf\"} %llu\n", name,
			                    (unsigned long long) cumulative);
		}
	}
	metrics_text_printf(t, "%s_sum %.17g\n%s_count %llu\n", name, h->sum, name,
	                    (unsigned long long) h->count);
}

/* ----------------------------------------------------------------------------------------- */
/* Connections */

static void maybe_done(struct metrics *m);

static void
on_conn_handle_closed(uv_handle_t *h)
{
	struct conn *c = h->data;

	if (--c->open_handles > 0) {
		return;
	}
	struct metrics *m = c->m;

	*c->pprev = c->next;
	if (c->next) {
		c->next->pprev = c->pprev;
	}
	m->n_conns--;
	free(c->response);
	free(c);
	maybe_done(m);
}

static void
conn_close(struct conn *c)
{
	if (c->closing) {
		return;
	}
	c->closing = true;
	c->tcp.data = c->timer.data = c;
	uv_close((uv_handle_t *) &c->tcp, on_conn_handle_closed);
	uv_close((uv_handle_t *) &c->timer, on_conn_handle_closed);
}

static void
on_written(uv_write_t *w, int status)
{
	conn_close(container_of(w, struct conn, write));
}

/* Queue one response and close after it. `body` may be NULL; HEAD sends no body. */
static void
respond(struct conn *c, int code, const char *reason, const char *type, const char *extra,
        const char *body, size_t body_len)
{
	struct metrics_text t = {0};
	bool head = c->parser.method == HTTP_HEAD;

	c->answered = true;
	(void) uv_read_stop((uv_stream_t *) &c->tcp);
	metrics_text_printf(&t,
	                    "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
	                    "Connection: close\r\n%s\r\n",
	                    code, reason, type, body_len, extra ? extra : "");
	if (!head && body_len > 0) {
		metrics_text_printf(&t, "%.*s", (int) body_len, body);
	}
	if (t.failed) {
		metrics_text_done(&t);
		conn_close(c);
		return;
	}
	c->response = t.buf;
	uv_buf_t buf = uv_buf_init(t.buf, (unsigned) t.len);
	if (uv_write(&c->write, (uv_stream_t *) &c->tcp, &buf, 1, on_written) < 0) {
		conn_close(c);
	}
}

static void
respond_text(struct conn *c, int code, const char *reason, const char *text)
{
	respond(c, code, reason, "text/plain; charset=utf-8", NULL, text, strlen(text));
}

static void
serve(struct conn *c)
{
	struct metrics *m = c->m;
	struct metrics_text page = {0};
	char *query = memchr(c->url, '?', c->url_len);
	size_t path_len = query ? (size_t) (query - c->url) : c->url_len;

	m->requests++;
	if (c->parser.method != HTTP_GET && c->parser.method != HTTP_HEAD) {
		respond(c, 405, "Method Not Allowed", "text/plain; charset=utf-8",
		        "Allow: GET, HEAD\r\n", "only GET and HEAD\n", 18);
		return;
	}
	if (c->url_too_long) {
		respond_text(c, 414, "URI Too Long", "URI too long\n");
		return;
	}
	if (path_len == 8 && memcmp(c->url, "/metrics", 8) == 0) {
		m->render(m->data, &page);
		if (page.failed) {
			respond_text(c, 500, "Internal Server Error", "out of memory\n");
		} else {
			respond(c, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", NULL,
			        page.buf, page.len);
		}
	} else if (path_len == 8 && memcmp(c->url, "/healthz", 8) == 0) {
		bool healthy = m->health(m->data, &page);

		if (page.failed) {
			respond_text(c, 500, "Internal Server Error", "out of memory\n");
		} else if (healthy) {
			respond(c, 200, "OK", "text/plain; charset=utf-8", NULL, page.buf,
			        page.len);
		} else {
			respond(c, 503, "Service Unavailable", "text/plain; charset=utf-8", NULL,
			        page.buf, page.len);
		}
	} else {
		respond_text(c, 404, "Not Found", "not found: try /metrics or /healthz\n");
	}
	metrics_text_done(&page);
}

static int
on_url(http_parser *p, const char *at, size_t len)
{
	struct conn *c = p->data;

	if (c->url_len + len >= sizeof(c->url)) {
		c->url_too_long = true;
		return 0;
	}
	memcpy(c->url + c->url_len, at, len);
	c->url_len += len;
	return 0;
}

static int
on_message_complete(http_parser *p)
{
	struct conn *c = p->data;

	serve(c);
	/* One request per connection: ignore whatever follows. */
	http_parser_pause(p, 1);
	return 0;
}

static const http_parser_settings parser_settings = {
        .on_url = on_url,
        .on_message_complete = on_message_complete,
};

static void
on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	struct conn *c = container_of((uv_tcp_t *) h, struct conn, tcp);

	*buf = uv_buf_init(c->read_buf, sizeof(c->read_buf));
}

static void
on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct conn *c = container_of((uv_tcp_t *) s, struct conn, tcp);

	if (nread < 0) {
		conn_close(c);
		return;
	}
	if (nread == 0 || c->answered) {
		return;
	}
	c->received += (size_t) nread;
	if (c->received > METRICS_REQUEST_MAX) {
		respond_text(c, 431, "Request Header Fields Too Large", "request too large\n");
		return;
	}
	size_t used = http_parser_execute(&c->parser, &parser_settings, buf->base, (size_t) nread);
	enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
	if (!c->answered && (err != HPE_OK || used != (size_t) nread)) {
		respond_text(c, 400, "Bad Request", "bad request\n");
	}
}

static void
on_timeout(uv_timer_t *t)
{
	conn_close(container_of(t, struct conn, timer));
}

static void
on_connection(uv_stream_t *server, int status)
{
	struct metrics *m = container_of((uv_tcp_t *) server, struct metrics, server);
	struct conn *c;

	if (status < 0 || m->closing) {
		return;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		return;
	}
	c->m = m;
	(void) uv_tcp_init(m->loop, &c->tcp);
	(void) uv_timer_init(m->loop, &c->timer);
	c->open_handles = 2;
	c->next = m->conns;
	c->pprev = &m->conns;
	if (m->conns) {
		m->conns->pprev = &c->next;
	}
	m->conns = c;
	m->n_conns++;
	http_parser_init(&c->parser, HTTP_REQUEST);
	c->parser.data = c;

	if (uv_accept(server, (uv_stream_t *) &c->tcp) < 0 ||
	    m->n_conns > METRICS_CONNECTIONS_MAX ||
	    uv_timer_start(&c->timer, on_timeout, METRICS_TIMEOUT_MS, 0) < 0 ||
	    uv_read_start((uv_stream_t *) &c->tcp, on_alloc, on_read) < 0) {
		conn_close(c);
	}
}

/* ----------------------------------------------------------------------------------------- */
/* Server */

static void
maybe_done(struct metrics *m)
{
	if (m->closing && m->server_closed && m->n_conns == 0) {
		void (*done)(void *) = m->done;
		void *data = m->done_data;

		free(m);
		if (done) {
			done(data);
		}
	}
}

static void
on_server_closed(uv_handle_t *h)
{
	struct metrics *m = container_of((uv_tcp_t *) h, struct metrics, server);

	m->server_closed = true;
	maybe_done(m);
}

int
metrics_new(uv_loop_t *loop, const char *host, uint16_t port, metrics_render_fn *render,
            metrics_health_fn *health, void *data, struct metrics **ret_metrics)
{
	struct sockaddr_storage sa;
	struct metrics *m;
	int r;

	if (uv_ip4_addr(host, port, (struct sockaddr_in *) &sa) < 0 &&
	    uv_ip6_addr(host, port, (struct sockaddr_in6 *) &sa) < 0) {
		return -EINVAL;
	}
	m = calloc(1, sizeof(*m));
	if (!m) {
		return -ENOMEM;
	}
	*m = (struct metrics){.loop = loop, .render = render, .health = health, .data = data};
	r = uv_tcp_init(loop, &m->server);
	if (r < 0) {
		free(m);
		return r;
	}
	r = uv_tcp_bind(&m->server, (const struct sockaddr *) &sa, 0);
	if (r >= 0) {
		r = uv_listen((uv_stream_t *) &m->server, 64, on_connection);
	}
	if (r >= 0) {
		struct sockaddr_storage bound;
		int len = sizeof(bound);

		r = uv_tcp_getsockname(&m->server, (struct sockaddr *) &bound, &len);
		if (r >= 0) {
			m->port = ntohs(bound.ss_family == AF_INET6
			                        ? ((struct sockaddr_in6 *) &bound)->sin6_port
			                        : ((struct sockaddr_in *) &bound)->sin_port);
		}
	}
	if (r < 0) {
		/* The handle must close before the memory goes: free from the close path. */
		metrics_close(m, NULL, NULL);
		return r;
	}
	*ret_metrics = m;
	return 0;
}

uint16_t
metrics_port(const struct metrics *m)
{
	return m->port;
}

uint64_t
metrics_requests(const struct metrics *m)
{
	return m->requests;
}

void
metrics_close(struct metrics *m, void (*done)(void *data), void *data)
{
	m->closing = true;
	m->done = done;
	m->done_data = data;
	for (struct conn *c = m->conns; c; c = c->next) {
		conn_close(c);
	}
	uv_close((uv_handle_t *) &m->server, on_server_closed);
}

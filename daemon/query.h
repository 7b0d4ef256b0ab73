/*
 * query: the query socket (ROUTER) where headquarters and coordctl ask for a digest, a page
 * of history, one record's status, or the broker's stats.
 *
 * Framing: a request is one frame, a packed coord.v1.QueryRequest, preceded by whatever
 * envelope the client's socket adds: a DEALER sends [request] (the ROUTER sees
 * [routing id, request]); a REQ sends [empty delimiter, request]. Every frame before the
 * last one is echoed back in front of the answer, a packed coord.v1.QueryResponse with the
 * request's request_id. A message of more than QUERY_FRAMES_MAX frames is dropped
 * unanswered (and counted).
 *
 * Limits: a request frame above QUERY_REQUEST_MAX bytes is answered with an error without
 * being unpacked; frames above cfg->query.max_request_bytes (ZMQ_MAXMSGSIZE) are dropped by
 * libzmq with the connection.
 * A history page holds at most cfg->query.history_limit_max items and
 * cfg->query.history_bytes_max bytes of items (at least one item), and visits at most
 * QUERY_SCAN_MAX items when filtered by council. Answers queue per client up to
 * cfg->query.hwm; beyond, libzmq drops them (the client times out and asks again).
 *
 * Every answer is computed on the loop thread, in read transactions, when the request is
 * read: a digest_compute(), a bounded store scan or a lookup. A bad request (undecodable,
 * too large, no known body, a bad scope or window) gets QueryResponse.error with a sentence
 * naming the problem; nothing a client sends can crash the broker.
 *
 * Loop thread only. Logs a warning when the store fails to answer.
 */
#pragma once

#include <stdint.h>

#include <uv.h>

#include "auth.h"
#include "config.h"
#include "coord.pb-c.h"
#include "digest.h"
#include "store.h"

#define QUERY_REQUEST_MAX 4096
#define QUERY_FRAMES_MAX 16
#define QUERY_SCAN_MAX 100000
#define QUERY_LINGER_MS 1000

struct query;

/*
 * Called for a stats request after the query filled the store's figures (last_seq, items,
 * records, store_bytes, map_size) into `stats`: the owner fills in the rest (counters,
 * connections, version, start time, uptime). String fields it sets must stay valid until
 * it returns to the loop (the answer is packed before that). Loop thread.
 */
typedef void query_stats_fn(void *data, Coord__V1__Stats *stats);

/* Counters since start; read with query_get_counters(). */
struct query_counters {
	uint64_t requests;  /* requests answered (errors included) */
	uint64_t errors;    /* answered with QueryResponse.error */
	uint64_t dropped;   /* messages dropped unanswered (bad framing) */
	uint64_t refused;   /* answered with an error because of the sender's key or role */
	uint64_t too_large; /* request frames above QUERY_REQUEST_MAX (answered with an error) */
};

/* Room for the sentence query_parse_request() gives for a refused request, NUL included. */
#define QUERY_ERROR_MAX 256

/*
 * A request decoded and checked by query_parse_request(). The strings point into `msg` and
 * live as long as it.
 */
struct query_request {
	Coord__V1__QueryRequest *msg; /* owned; NULL when the frame did not decode */
	uint64_t request_id;          /* 0 when the frame did not decode */
	Coord__V1__QueryRequest__BodyCase body;
	/* digest: the scope and window, UNSPECIFIED resolved to ALL; scope_id "" for ALL */
	Coord__V1__ScopeKind scope_kind;
	const char *scope_id;
	Coord__V1__Window window;
	/* history: the council filter or NULL; status: the council (valid id) */
	const char *council;
	const char *msg_id; /* status: 1 .. WIRE_MSG_ID_MAX bytes */
};

/*
 * Decode one request frame of `len` bytes and check it: size (QUERY_REQUEST_MAX), that it
 * is a QueryRequest with a known body, and every field the body's answer relies on (scope
 * and council ids, window and range, msg_id length). Checks only: it reads no store and no
 * clock, so the fuzzer can call it. Thread-safe.
 *
 * Returns 0 with *ret filled (ret->body is DIGEST, HISTORY, STATUS or STATS). Otherwise
 * returns -E2BIG (too large), -EBADMSG (does not decode) or -EINVAL (a bad field or no
 * body) and writes the sentence for QueryResponse.error to `err` (NUL-terminated; it quotes
 * peer strings only when they are short printable ASCII); ret->request_id is the request's
 * when it decoded. Either way release *ret with query_request_done().
 */
int query_parse_request(const uint8_t *buf, size_t len, struct query_request *ret,
                        char err[QUERY_ERROR_MAX]);

/* Free what query_parse_request() left in `qr`. Idempotent. */
void query_request_done(struct query_request *qr);

/*
 * Create the ROUTER socket in `zctx` (SNDHWM cfg->query.hwm, ZMQ_MAXMSGSIZE
 * cfg->query.max_request_bytes), secure it with `auth` (ZAP domain "query", CURVE when
 * cfg->query.security is curve), bind cfg->query.endpoint and start answering.
 * Roles on a CURVE socket: each request's key must still be allowlisted as a subscriber or
 * an admin (else an error answer); a subscriber may ask digests, status and history that
 * starts at most cfg->query.subscriber_history_window items below the last seq; stats and
 * older history (exports) need an admin. A plain socket answers everything.
 * `auth`, `store` and `digest` are borrowed and must outlive the query; `cfg` is
 * referenced until replaced or query_free();
 * `stats` (may be NULL) and `data` are borrowed until query_close() has called back.
 * Returns 0 and *ret_query, or a negative errno (from zmq_bind: -EADDRINUSE, ...; the caller
 * logs it); on error nothing is bound.
 */
int query_new(uv_loop_t *loop, void *zctx, struct auth *auth, struct store *store,
              struct digest *digest, struct config *cfg, query_stats_fn *stats, void *data,
              struct query **ret_query);

/*
 * Use `cfg` (referenced; the old one released) from the next request on: a reload. The
 * endpoint, security and hwm are applied at start only. Loop thread.
 */
void query_set_config(struct query *q, struct config *cfg);

/* Copy the counters. */
void query_get_counters(const struct query *q, struct query_counters *ret_counters);

/* Client connections open now (TCP and IPC; zmon.h). */
uint32_t query_connections(const struct query *q);

/*
 * Stop answering and close the socket (answers still queued get QUERY_LINGER_MS to leave);
 * `done(data)` runs on the loop thread once it is closed. Call once.
 */
void query_close(struct query *q, void (*done)(void *data), void *data);

/*
 * Free after query_close() has called back, or after query_new() failed. Accepts NULL.
 * Returns NULL.
 */
struct query *query_free(struct query *q);

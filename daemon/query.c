/*
 * query: ROUTER socket -> QueryRequest -> one answer, computed on the loop thread.
 *
 * A message is read whole (at most QUERY_FRAMES_MAX frames); its frames but the last are
 * the envelope and go back in front of the answer unchanged, whatever socket the client
 * uses. Answers are heap buffers handed to libzmq without a copy (zmq_msg_init_data); libzmq
 * frees them, possibly on its I/O thread, once sent or dropped.
 *
 * History pages are not built as protobuf-c objects: the stored Item bytes are copied once,
 * verbatim, into the answer, each behind its field key and length, and the few scalar
 * fields of HistoryPage and QueryResponse are written around them by hand (put_varint).
 * The answer buffer reserves room in front of the items for the QueryResponse and
 * HistoryPage headers, whose length is known only at the end, so nothing is moved.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "auth.h"
#include "iso.h"
#include "log.h"
#include "query.h"
#include "varint.h"
#include "wire.h"
#include "zmon.h"
#include "zuv.h"

#define container_of(ptr, type, member) ((type *) ((char *) (ptr) -offsetof(type, member)))

/* Requests handled per callback before other handles get a turn. */
#define QUERY_RECV_BUDGET 32
/* Room for QueryResponse {request_id, key 11, length} and HistoryPage's key and length. */
#define HEADER_ROOM 32

/* protobuf field numbers and wire types used by the hand-written history answer. */
#define WT_VARINT 0
#define WT_LEN 2
#define F_RESPONSE_REQUEST_ID 1
#define F_RESPONSE_HISTORY 11
#define F_PAGE_ITEMS 1
#define F_PAGE_NEXT_AFTER_SEQ 2
#define F_PAGE_LAST_SEQ 3
#define F_PAGE_COMPLETE 4
#define F_ITEM_COUNCIL 3

struct query {
	uv_loop_t *loop;
	void *sock;
	struct zuv zuv;
	bool zuv_started;
	struct zmon *zmon;
	struct store *store;
	struct digest *digest;
	struct config *cfg;
	struct auth *auth;
	bool curve; /* CURVE socket: requests are checked against the sender's role */
	query_stats_fn *stats_fn;
	void *stats_data;

	bool closing;
	unsigned closing_parts;
	void (*close_cb)(void *data);
	void *close_data;

	struct query_counters counters;
};

/* An answer: `len` bytes at buf + off; buf is what free() takes. */
struct answer {
	uint8_t *buf;
	size_t off, len, cap;
};

static int64_t
now_ms(void)
{
	struct timespec ts;

	(void) clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static size_t
put_key(uint8_t *p, unsigned field, unsigned wire_type)
{
	return varint_put(p, ((uint64_t) field << 3) | wire_type);
}

/*
 * Whether the packed Item `p` names `council` (field 3), without unpacking it. A field this
 * walk cannot skip makes the item not match.
 */
static bool
item_council_is(const uint8_t *p, size_t len, const char *council)
{
	size_t pos = 0, clen = strlen(council);
	uint64_t key, v;

	while (pos < len) {
		if (!varint_get(p, len, &pos, &key)) {
			return false;
		}
		switch (key & 7) {
		case WT_VARINT:
			if (!varint_get(p, len, &pos, &v)) {
				return false;
			}
			break;
		case WT_LEN:
			if (!varint_get(p, len, &pos, &v) || v > len - pos) {
				return false;
			}
			if ((key >> 3) == F_ITEM_COUNCIL) {
				return v == clen && memcmp(p + pos, council, clen) == 0;
			}
			pos += v;
			break;
		default:
			return false;
		}
	}
	return false;
}

static int
answer_reserve(struct answer *a, size_t more)
{
	if (a->off + a->len + more <= a->cap) {
		return 0;
	}
	size_t cap = a->cap ? a->cap : 4096;
	while (cap < a->off + a->len + more) {
		cap *= 2;
	}
	uint8_t *buf = realloc(a->buf, cap);
	if (!buf) {
		return -ENOMEM;
	}
	a->buf = buf;
	a->cap = cap;
	return 0;
}

static int
answer_pack(const Coord__V1__QueryResponse *resp, struct answer *a)
{
	size_t size = coord__v1__query_response__get_packed_size(resp);

	*a = (struct answer){.buf = malloc(size ? size : 1)};
	if (!a->buf) {
		return -ENOMEM;
	}
	a->len = coord__v1__query_response__pack(resp, a->buf);
	a->cap = size ? size : 1;
	return 0;
}

static int answer_error(struct query *q, uint64_t request_id, struct answer *a, const char *fmt,
                        ...) __attribute__((format(printf, 4, 5)));

static int
answer_error(struct query *q, uint64_t request_id, struct answer *a, const char *fmt, ...)
{
	char text[256];
	va_list ap;

	va_start(ap, fmt);
	(void) vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);

	Coord__V1__QueryError err = COORD__V1__QUERY_ERROR__INIT;
	Coord__V1__QueryResponse resp = COORD__V1__QUERY_RESPONSE__INIT;
	err.message = text;
	resp.request_id = request_id;
	resp.body_case = COORD__V1__QUERY_RESPONSE__BODY_ERROR;
	resp.error = &err;
	q->counters.errors++;
	return answer_pack(&resp, a);
}

/* A peer's string is quoted in an answer only when it is short printable ASCII. */
static const char *
quotable(const char *s)
{
	size_t n = 0;

	for (; s[n]; n++) {
		if (n >= 40 || s[n] < 0x20 || s[n] > 0x7E) {
			return "...";
		}
	}
	return s;
}

/* A council id in a request follows the rule of every id (auth_id_valid()). */
_Static_assert(AUTH_ID_MAX == WIRE_COUNCIL_MAX, "council ids are auth ids");

/* query_parse_request()'s refusal: the sentence for QueryError.message. Returns r. */
static int refuse(char *err, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int
refuse(char *err, int r, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	(void) vsnprintf(err, QUERY_ERROR_MAX, fmt, ap);
	va_end(ap);
	return r;
}

static int
check_digest(struct query_request *qr, char *err)
{
	const Coord__V1__DigestRequest *dr = qr->msg->digest;
	Coord__V1__ScopeKind kind = COORD__V1__SCOPE_KIND__SCOPE_KIND_ALL;
	const char *id = "";

	if (dr->scope && dr->scope->kind != COORD__V1__SCOPE_KIND__SCOPE_KIND_UNSPECIFIED) {
		kind = dr->scope->kind;
	}
	if (dr->scope && dr->scope->id) {
		id = dr->scope->id;
	}
	switch (kind) {
	case COORD__V1__SCOPE_KIND__SCOPE_KIND_ALL:
		if (id[0]) {
			return refuse(err, -EINVAL,
			              "digest.scope.id must be empty for the whole campaign "
			              "(SCOPE_KIND_ALL); set scope.kind to COUNCIL or COUNTRY");
		}
		break;
	case COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNCIL:
		if (!auth_id_valid(id)) {
			return refuse(err, -EINVAL,
			              "digest.scope.id '%s' is not a council id (1 to %d of "
			              "a-z, 0-9, '_', '-')",
			              quotable(id), WIRE_COUNCIL_MAX);
		}
		break;
	case COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNTRY:
		if (!iso_country_valid(id)) {
			return refuse(err, -EINVAL,
			              "digest.scope.id '%s' is not an ISO 3166-1 alpha-2 country "
			              "code (upper case, e.g. FR)",
			              quotable(id));
		}
		break;
	default:
		return refuse(err, -EINVAL, "digest.scope.kind %d is not a known ScopeKind",
		              (int) kind);
	}

	Coord__V1__Window window = dr->window;
	switch (window) {
	case COORD__V1__WINDOW__WINDOW_UNSPECIFIED:
		window = COORD__V1__WINDOW__WINDOW_ALL;
		/* fall through */
	case COORD__V1__WINDOW__WINDOW_ALL:
	case COORD__V1__WINDOW__WINDOW_LAST_24H:
	case COORD__V1__WINDOW__WINDOW_LAST_1H:
		if (dr->start != 0 || dr->end != 0) {
			return refuse(err, -EINVAL,
			              "digest.start and digest.end are only for WINDOW_RANGE");
		}
		break;
	case COORD__V1__WINDOW__WINDOW_RANGE:
		if (dr->start < 0 || dr->end <= dr->start) {
			return refuse(err, -EINVAL,
			              "digest: WINDOW_RANGE needs 0 <= start < end (Unix ms), "
			              "got start %" PRId64 ", end %" PRId64,
			              dr->start, dr->end);
		}
		break;
	default:
		return refuse(err, -EINVAL, "digest.window %d is not a known Window", (int) window);
	}
	qr->scope_kind = kind;
	qr->scope_id = id;
	qr->window = window;
	return 0;
}

static int
check_history(struct query_request *qr, char *err)
{
	const Coord__V1__HistoryRequest *hr = qr->msg->history;

	if (hr->council && hr->council[0] && !auth_id_valid(hr->council)) {
		return refuse(err, -EINVAL,
		              "history.council '%s' is not a council id (1 to %d of a-z, "
		              "0-9, '_', '-')",
		              quotable(hr->council), WIRE_COUNCIL_MAX);
	}
	qr->council = hr->council && hr->council[0] ? hr->council : NULL;
	return 0;
}

static int
check_status(struct query_request *qr, char *err)
{
	const Coord__V1__StatusRequest *sr = qr->msg->status;
	const char *council = sr->council ? sr->council : "";
	const char *msg_id = sr->msg_id ? sr->msg_id : "";

	if (!auth_id_valid(council)) {
		return refuse(err, -EINVAL,
		              "status.council '%s' is not a council id (1 to %d of a-z, 0-9, "
		              "'_', '-')",
		              quotable(council), WIRE_COUNCIL_MAX);
	}
	size_t idlen = strlen(msg_id);
	if (idlen == 0 || idlen > WIRE_MSG_ID_MAX) {
		return refuse(err, -EINVAL, "status.msg_id must hold 1 to %d bytes",
		              WIRE_MSG_ID_MAX);
	}
	qr->council = council;
	qr->msg_id = msg_id;
	return 0;
}

int
query_parse_request(const uint8_t *buf, size_t len, struct query_request *ret,
                    char err[QUERY_ERROR_MAX])
{
	*ret = (struct query_request){.msg = NULL};
	err[0] = '\0';
	if (len > QUERY_REQUEST_MAX) {
		return refuse(err, -E2BIG,
		              "request of %zu bytes exceeds the limit of %d bytes; a "
		              "QueryRequest is one frame",
		              len, QUERY_REQUEST_MAX);
	}
	ret->msg = coord__v1__query_request__unpack(NULL, len, buf);
	if (!ret->msg) {
		return refuse(err, -EBADMSG,
		              "not a QueryRequest: the frame does not decode as "
		              "coord.v1.QueryRequest");
	}
	ret->request_id = ret->msg->request_id;
	ret->body = ret->msg->body_case;
	switch (ret->body) {
	case COORD__V1__QUERY_REQUEST__BODY_DIGEST:
		return check_digest(ret, err);
	case COORD__V1__QUERY_REQUEST__BODY_HISTORY:
		return check_history(ret, err);
	case COORD__V1__QUERY_REQUEST__BODY_STATUS:
		return check_status(ret, err);
	case COORD__V1__QUERY_REQUEST__BODY_STATS:
		return 0;
	default:
		return refuse(err, -EINVAL,
		              "empty or unknown request: set one of digest, history, status, "
		              "stats");
	}
}

void
query_request_done(struct query_request *qr)
{
	if (qr->msg) {
		coord__v1__query_request__free_unpacked(qr->msg, NULL);
	}
	*qr = (struct query_request){.msg = NULL};
}

static int
do_digest(struct query *q, const struct query_request *qr, struct answer *a)
{
	const Coord__V1__DigestRequest *dr = qr->msg->digest;
	Coord__V1__ScopeKind kind = qr->scope_kind;
	const char *id = qr->scope_id;
	Coord__V1__Window window = qr->window;
	uint64_t rid = qr->request_id;

	unsigned headlines = dr->headlines ? dr->headlines : q->cfg->digest.headlines;
	Coord__V1__Digest *dg = NULL;
	int r = digest_compute(q->digest, kind, id, window, dr->start, dr->end, now_ms(),
	                       headlines > DIGEST_HEADLINES_MAX ? DIGEST_HEADLINES_MAX : headlines,
	                       &dg);
	if (r == -EINVAL) {
		return answer_error(q, rid, a, "digest: bad scope or window");
	}
	if (r < 0) {
		log_warning_errno(r, "Failed to compute a digest for a query, answering an error");
		return answer_error(q, rid, a, "the broker failed to compute the digest: %s",
		                    strerror(-r));
	}
	Coord__V1__QueryResponse resp = COORD__V1__QUERY_RESPONSE__INIT;
	resp.request_id = rid;
	resp.body_case = COORD__V1__QUERY_RESPONSE__BODY_DIGEST;
	resp.digest = dg;
	r = answer_pack(&resp, a);
	digest_result_free(dg);
	return r;
}

/* What a history scan collects. */
struct history_scan {
	const char *council; /* filter, or NULL */
	uint32_t limit;
	size_t bytes_max;
	struct answer *a;
	uint32_t n;
	size_t item_bytes;
	uint64_t next_after_seq; /* the last seq taken or skipped */
	int r;
};

static int
scan_history(void *data, uint64_t seq, const uint8_t *item, size_t len, bool live)
{
	struct history_scan *h = data;

	if (h->council && !item_council_is(item, len, h->council)) {
		h->next_after_seq = seq;
		return 0;
	}
	if (h->n > 0 && h->item_bytes + len > h->bytes_max) {
		return 1;
	}
	if (answer_reserve(h->a, 1 + VARINT_MAX + len) < 0) {
		h->r = -ENOMEM;
		return h->r;
	}
	uint8_t *p = h->a->buf + h->a->off + h->a->len;
	size_t n = put_key(p, F_PAGE_ITEMS, WT_LEN);
	n += varint_put(p + n, len);
	memcpy(p + n, item, len);
	h->a->len += n + len;
	h->item_bytes += len;
	h->n++;
	h->next_after_seq = seq;
	return h->n == h->limit ? 1 : 0;
}

static int
do_history(struct query *q, const struct query_request *qr, struct answer *a)
{
	const Coord__V1__HistoryRequest *hr = qr->msg->history;
	const struct config *cfg = q->cfg;
	uint64_t rid = qr->request_id;
	uint64_t last_seq = 0;

	uint32_t limit = hr->limit ? hr->limit : cfg->query.history_limit;
	if (limit > cfg->query.history_limit_max) {
		limit = cfg->query.history_limit_max;
	}
	struct history_scan h = {
	        .council = qr->council,
	        .limit = limit,
	        .bytes_max = cfg->query.history_bytes_max,
	        .a = a,
	        .next_after_seq = hr->after_seq,
	};
	*a = (struct answer){.off = HEADER_ROOM};
	int r = answer_reserve(a, 4096);
	if (r < 0) {
		return r;
	}
	r = store_scan_items(q->store, hr->after_seq, false, h.council ? QUERY_SCAN_MAX : limit,
	                     scan_history, &h, &last_seq);
	if (r < 0) {
		free(a->buf);
		*a = (struct answer){0};
		if (r == -ENOMEM) {
			return r;
		}
		log_warning_errno(r, "Failed to read history for a query, answering an error");
		return answer_error(q, rid, a, "the broker failed to read the history: %s",
		                    strerror(-r));
	}

	/* The page's scalar fields after its items. */
	bool complete = h.next_after_seq >= last_seq;
	r = answer_reserve(a, 3 * (1 + VARINT_MAX));
	if (r < 0) {
		free(a->buf);
		return r;
	}
	uint8_t *p = a->buf + a->off + a->len;
	size_t n = 0;
	if (h.next_after_seq) {
		n += put_key(p + n, F_PAGE_NEXT_AFTER_SEQ, WT_VARINT);
		n += varint_put(p + n, h.next_after_seq);
	}
	if (last_seq) {
		n += put_key(p + n, F_PAGE_LAST_SEQ, WT_VARINT);
		n += varint_put(p + n, last_seq);
	}
	if (complete) {
		n += put_key(p + n, F_PAGE_COMPLETE, WT_VARINT);
		n += varint_put(p + n, 1);
	}
	a->len += n;

	/* The headers, right before the page: request_id, then the page's key and length. */
	uint8_t head[HEADER_ROOM];
	size_t hn = 0;
	if (rid) {
		hn += put_key(head + hn, F_RESPONSE_REQUEST_ID, WT_VARINT);
		hn += varint_put(head + hn, rid);
	}
	hn += put_key(head + hn, F_RESPONSE_HISTORY, WT_LEN);
	hn += varint_put(head + hn, a->len);
	a->off -= hn;
	memcpy(a->buf + a->off, head, hn);
	a->len += hn;
	return 0;
}

/* store_item_fn: unpack the one item asked for. */
static int
scan_one_item(void *data, uint64_t seq, const uint8_t *item, size_t len, bool live)
{
	Coord__V1__Item **ret = data;

	*ret = coord__v1__item__unpack(NULL, len, item);
	return *ret ? 1 : -EIO;
}

static int
do_status(struct query *q, const struct query_request *qr, struct answer *a)
{
	uint64_t rid = qr->request_id;
	const char *council = qr->council;
	const char *msg_id = qr->msg_id;
	Coord__V1__RecordStatus st = COORD__V1__RECORD_STATUS__INIT;
	Coord__V1__Item *item = NULL;
	uint64_t seq = 0;
	uint32_t revision = 0;
	bool retracted = false;

	int r = store_lookup(q->store, council, msg_id, &seq, &revision, &retracted);
	if (r == 0 && seq > 0) {
		r = store_scan_items(q->store, seq - 1, false, 1, scan_one_item, &item, NULL);
		if (r >= 0 && !item) {
			r = -EIO; /* the index points at a missing item: store_verify says more */
		}
	}
	if (r < 0 && r != -ENOENT) {
		log_warning_errno(r, "Failed to look up a record for a query, answering an error");
		return answer_error(q, rid, a, "the broker failed to read the record: %s",
		                    strerror(-r));
	}
	if (r >= 0) {
		st.found = true;
		st.seq = seq;
		st.revision = revision;
		st.retracted = retracted;
		st.item = item;
	}
	Coord__V1__QueryResponse resp = COORD__V1__QUERY_RESPONSE__INIT;
	resp.request_id = rid;
	resp.body_case = COORD__V1__QUERY_RESPONSE__BODY_STATUS;
	resp.status = &st;
	r = answer_pack(&resp, a);
	if (item) {
		coord__v1__item__free_unpacked(item, NULL);
	}
	return r;
}

static int
do_stats(struct query *q, const struct query_request *qr, struct answer *a)
{
	const Coord__V1__QueryRequest *req = qr->msg;
	Coord__V1__Stats stats = COORD__V1__STATS__INIT;
	struct store_stats st = {0};
	int r = store_get_stats(q->store, &st);

	if (r < 0) {
		log_warning_errno(r, "Failed to read store stats for a query, answering an error");
		return answer_error(q, req->request_id, a,
		                    "the broker failed to read its store: %s", strerror(-r));
	}
	stats.last_seq = st.last_seq;
	stats.items = st.items;
	stats.records = st.records;
	stats.store_bytes = st.used_bytes;
	stats.map_size = st.map_size;
	stats.query_connections = zmon_connections(q->zmon);
	if (q->stats_fn) {
		q->stats_fn(q->stats_data, &stats);
	}
	Coord__V1__QueryResponse resp = COORD__V1__QUERY_RESPONSE__INIT;
	resp.request_id = req->request_id;
	resp.body_case = COORD__V1__QUERY_RESPONSE__BODY_STATS;
	resp.stats = &stats;
	return answer_pack(&resp, a);
}

/*
 * What a subscriber key may not ask (docs/SECURITY.md "Roles"): stats, and history that
 * starts more than subscriber_history_window items below the store's last seq, which is
 * what an export (coordctl export pages history from seq 0) does. Catching up a gap on the
 * publish socket stays within the window. Returns 1 with `a` filled with the refusal, 0
 * when allowed, or -ENOMEM.
 */
static int
refuse_subscriber(struct query *q, const Coord__V1__QueryRequest *req, struct answer *a)
{
	if (req->body_case == COORD__V1__QUERY_REQUEST__BODY_STATS) {
		int r = answer_error(q, req->request_id, a,
		                     "stats needs an admin key; this key has the subscriber role");
		return r < 0 ? r : 1;
	}
	if (req->body_case != COORD__V1__QUERY_REQUEST__BODY_HISTORY) {
		return 0;
	}
	struct store_stats st = {0};
	uint64_t window = q->cfg->query.subscriber_history_window;
	if (store_get_stats(q->store, &st) < 0 || st.last_seq <= window ||
	    req->history->after_seq >= st.last_seq - window) {
		/* A failing store is reported by do_history() itself. */
		return 0;
	}
	int r = answer_error(q, req->request_id, a,
	                     "history from after_seq %" PRIu64 " reaches back more than %" PRIu64
	                     " items (subscriber_history_window): exports need an admin key; "
	                     "ask from after_seq %" PRIu64 " or later",
	                     req->history->after_seq, window, st.last_seq - window);
	return r < 0 ? r : 1;
}

/*
 * Answer one request frame. `admin` is false for a subscriber key on a CURVE socket.
 * Returns 0 with `a` filled, or -ENOMEM.
 */
static int
handle(struct query *q, const uint8_t *buf, size_t len, bool admin, struct answer *a)
{
	struct query_request qr;
	char err[QUERY_ERROR_MAX];
	int r = query_parse_request(buf, len, &qr, err);

	if (r == -E2BIG) {
		q->counters.too_large++;
	}
	if (r < 0) {
		r = answer_error(q, qr.request_id, a, "%s", err);
		query_request_done(&qr);
		return r;
	}
	r = admin ? 0 : refuse_subscriber(q, qr.msg, a);
	if (r != 0) {
		q->counters.refused += r > 0;
		query_request_done(&qr);
		return r < 0 ? r : 0;
	}
	switch (qr.body) {
	case COORD__V1__QUERY_REQUEST__BODY_DIGEST:
		r = do_digest(q, &qr, a);
		break;
	case COORD__V1__QUERY_REQUEST__BODY_HISTORY:
		r = do_history(q, &qr, a);
		break;
	case COORD__V1__QUERY_REQUEST__BODY_STATUS:
		r = do_status(q, &qr, a);
		break;
	default:
		r = do_stats(q, &qr, a);
		break;
	}
	query_request_done(&qr);
	return r;
}

static void
free_answer(void *data, void *hint)
{
	free(hint);
}

static void
close_frames(zmq_msg_t *frames, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		(void) zmq_msg_close(&frames[i]);
	}
}

/*
 * Send the envelope frames (consumed) and the answer (handed to libzmq). The answer's
 * message is made before the first frame goes out, so that nothing but a send can fail
 * once a multipart message has begun: a ROUTER without ZMQ_ROUTER_MANDATORY drops a
 * message for a peer that is gone or full rather than failing, so a send fails only in a
 * bad socket state, and then the rest of the message is dropped with it.
 */
static void
send_answer(struct query *q, zmq_msg_t *env, size_t n_env, struct answer *a)
{
	zmq_msg_t body;
	size_t i = 0;

	if (zmq_msg_init_data(&body, a->buf + a->off, a->len, free_answer, a->buf) < 0) {
		free(a->buf);
		close_frames(env, n_env);
		q->counters.dropped++;
		return;
	}
	for (; i < n_env; i++) {
		if (zmq_msg_send(&env[i], q->sock, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
			break;
		}
	}
	if (i < n_env || zmq_msg_send(&body, q->sock, ZMQ_DONTWAIT) < 0) {
		/* The peer asks again on timeout. */
		close_frames(env + i, n_env - i);
		(void) zmq_msg_close(&body);
		q->counters.dropped++;
	}
}

/*
 * Read one message into `frames`. Returns its number of frames (> QUERY_FRAMES_MAX when
 * there were too many: the extra ones are discarded), or 0 when nothing was waiting.
 */
static size_t
recv_message(struct query *q, zmq_msg_t *frames)
{
	size_t n = 0;
	bool more = true;

	while (more) {
		zmq_msg_t *m = &frames[n < QUERY_FRAMES_MAX ? n : QUERY_FRAMES_MAX];
		(void) zmq_msg_init(m);
		if (zmq_msg_recv(m, q->sock, ZMQ_DONTWAIT) < 0) {
			(void) zmq_msg_close(m);
			break;
		}
		more = zmq_msg_more(m);
		if (n >= QUERY_FRAMES_MAX) {
			(void) zmq_msg_close(m);
		}
		n++;
	}
	return n;
}

static void
on_readable(struct zuv *z, void *zsock, unsigned budget, void *data)
{
	struct query *q = data;

	for (unsigned i = 0; i < budget; i++) {
		zmq_msg_t frames[QUERY_FRAMES_MAX + 1];
		size_t n = recv_message(q, frames);

		if (n == 0) {
			break;
		}
		if (n < 2 || n > QUERY_FRAMES_MAX) {
			close_frames(frames, n < QUERY_FRAMES_MAX ? n : QUERY_FRAMES_MAX);
			q->counters.dropped++;
			continue;
		}
		struct answer a = {0};
		zmq_msg_t *req = &frames[n - 1];
		int r;
		if (q->curve && auth_check_msg(q->auth, req, AUTH_ROLE_SUBSCRIBER, NULL) < 0) {
			/* A key removed by a reload, on a connection opened before it. */
			q->counters.refused++;
			r = answer_error(
			        q, 0, &a,
			        "this key is not (or no longer) allowed to query the broker");
		} else {
			bool admin = !q->curve ||
			             auth_check_msg(q->auth, req, AUTH_ROLE_ADMIN, NULL) >= 0;
			r = handle(q, zmq_msg_data(req), zmq_msg_size(req), admin, &a);
		}
		(void) zmq_msg_close(req);
		q->counters.requests++;
		if (r < 0) {
			close_frames(frames, n - 1);
			q->counters.dropped++;
			continue;
		}
		send_answer(q, frames, n - 1, &a);
	}
}

int
query_new(uv_loop_t *loop, void *zctx, struct auth *auth, struct store *store,
          struct digest *digest, struct config *cfg, query_stats_fn *stats, void *data,
          struct query **ret_query)
{
	struct query *q = calloc(1, sizeof(*q));
	int r;

	if (!q) {
		return -ENOMEM;
	}
	q->loop = loop;
	q->store = store;
	q->digest = digest;
	q->cfg = config_ref(cfg);
	q->auth = auth;
	q->curve = cfg->query.security == CONFIG_SECURITY_CURVE;
	q->stats_fn = stats;
	q->stats_data = data;

	r = zuv_socket_new(zctx, ZMQ_ROUTER, QUERY_LINGER_MS, (int) cfg->query.hwm,
	                   cfg->query.max_request_bytes, &q->sock);
	if (r >= 0) {
		r = auth_socket_setup(auth, q->sock, AUTH_DOMAIN_QUERY, q->curve);
	}
	if (r >= 0) {
		r = zmon_new(loop, zctx, q->sock, "query", &q->zmon);
	}
	if (r >= 0 && zmq_bind(q->sock, cfg->query.endpoint) < 0) {
		r = -zmq_errno();
	}
	if (r < 0) {
		goto fail;
	}
	r = zuv_init(loop, &q->zuv, q->sock, QUERY_RECV_BUDGET, on_readable, q);
	if (r < 0) {
		goto fail;
	}
	q->zuv_started = true;
	*ret_query = q;
	return 0;
fail:
	query_free(q);
	return r;
}

void
query_set_config(struct query *q, struct config *cfg)
{
	struct config *old = q->cfg;

	q->cfg = config_ref(cfg);
	config_unref(old);
}

void
query_get_counters(const struct query *q, struct query_counters *ret_counters)
{
	*ret_counters = q->counters;
}

uint32_t
query_connections(const struct query *q)
{
	return zmon_connections(q->zmon);
}

static void
finish_close(struct query *q)
{
	if (--q->closing_parts > 0) {
		return;
	}
	(void) zmq_close(q->sock);
	q->sock = NULL;
	if (q->close_cb) {
		q->close_cb(q->close_data);
	}
}

static void
on_zuv_closed(struct zuv *z)
{
	struct query *q = container_of(z, struct query, zuv);

	q->zuv_started = false;
	finish_close(q);
}

static void
on_zmon_closed(void *data)
{
	finish_close(data);
}

void
query_close(struct query *q, void (*done)(void *data), void *data)
{
	q->closing = true;
	q->close_cb = done;
	q->close_data = data;
	q->closing_parts = 1;
	if (q->zmon) {
		q->closing_parts++;
		zmon_close(q->zmon, on_zmon_closed, q);
		q->zmon = NULL;
	}
	zuv_close(&q->zuv, on_zuv_closed);
}

struct query *
query_free(struct query *q)
{
	if (!q) {
		return NULL;
	}
	/* A zmon left here belongs to a failed query_new(): it closes on later loop turns. */
	zmon_close(q->zmon, NULL, NULL);
	if (q->sock) {
		(void) zmq_close(q->sock);
	}
	config_unref(q->cfg);
	free(q);
	return NULL;
}

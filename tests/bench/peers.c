/*
 * peers: the same load against other brokers, each through its Debian client library.
 *
 *   redis  Redis Streams: `XADD coord * m <Envelope>` per message, pipelined (hiredis).
 *          Replies come in the order of the commands, so the oldest message in flight is
 *          the one answered. An error reply counts as refused. The server should run with
 *          `appendonly yes` and `appendfsync always`: bench_peer_prepare() reads both back
 *          and says when they are not set so.
 *   nats   NATS JetStream: PUB to subject coord.bench with a reply subject of its own per
 *          message (`_INBOX.<link>.<index>`); the PubAck that comes back on it is JSON,
 *          `{"stream":..,"seq":N}` (accepted), with `"duplicate":true`, or with an
 *          `"error"` (refused). bench_peer_prepare() creates the stream COORD (file
 *          storage, one replica) on subjects coord.> when it does not exist.
 *   rabbitmq  a RabbitMQ quorum queue with publisher confirms (rabbitmq-c): basic.publish
 *          of each Envelope, persistent, to the queue coord.bench through the default
 *          exchange on a channel in confirm mode; the broker's basic.ack (possibly
 *          `multiple`, covering every earlier delivery tag) counts it as accepted, a
 *          basic.nack as refused. Delivery tags number the publishes 1, 2, ... so the
 *          messages must be sent in index order from 0 (the councils do).
 *          bench_peer_prepare() declares the queue (durable, x-queue-type quorum) and
 *          purges it: a quorum queue holds its messages in memory.
 *
 * A peer whose library was missing at build time is still parsed; bench_peer_built() says
 * it is not there and opening a link to it gives -ENOTSUP.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#ifdef HAVE_HIREDIS
#include <hiredis/hiredis.h>
#endif
#ifdef HAVE_NATS
#include <nats/nats.h>
#endif
#ifdef HAVE_RABBITMQ
#include <amqp.h>
#include <amqp_tcp_socket.h>
#endif

#include "bench.h"

#define CONNECT_TIMEOUT_MS 5000

static const char *const peer_names[BENCH_PEER_MAX] = {
        [BENCH_PEER_REDIS] = "redis",
        [BENCH_PEER_NATS] = "nats",
        [BENCH_PEER_RABBITMQ] = "rabbitmq",
};

const char *
bench_peer_name(enum bench_peer_kind kind)
{
	return kind > BENCH_PEER_NONE && kind < BENCH_PEER_MAX ? peer_names[kind] : "?";
}

const char *
bench_peer_package(enum bench_peer_kind kind)
{
	static const char *const packages[BENCH_PEER_MAX] = {
	        [BENCH_PEER_REDIS] = "libhiredis-dev",
	        [BENCH_PEER_NATS] = "libnats-dev",
	        [BENCH_PEER_RABBITMQ] = "librabbitmq-dev",
	};

	return kind > BENCH_PEER_NONE && kind < BENCH_PEER_MAX ? packages[kind] : "?";
}

bool
bench_peer_built(enum bench_peer_kind kind)
{
	switch (kind) {
#ifdef HAVE_HIREDIS
	case BENCH_PEER_REDIS:
		return true;
#endif
#ifdef HAVE_NATS
	case BENCH_PEER_NATS:
		return true;
#endif
#ifdef HAVE_RABBITMQ
	case BENCH_PEER_RABBITMQ:
		return true;
#endif
	default:
		return false;
	}
}

int
bench_peer_parse(const char *s, struct bench_peer *ret_peer)
{
	struct bench_peer p = {0};
	const char *eq = strchr(s, '=');

	if (!eq) {
		return -EINVAL;
	}
	for (int k = BENCH_PEER_NONE + 1; k < BENCH_PEER_MAX; k++) {
		if (strlen(peer_names[k]) == (size_t) (eq - s) &&
		    strncmp(s, peer_names[k], (size_t) (eq - s)) == 0) {
			p.kind = (enum bench_peer_kind) k;
		}
	}
	const char *host = eq + 1;
	const char *colon = strchr(host, ':');
	if (p.kind == BENCH_PEER_NONE || !colon || colon == host ||
	    (size_t) (colon - host) >= sizeof(p.host)) {
		return -EINVAL;
	}
	memcpy(p.host, host, (size_t) (colon - host));
	char *end;
	errno = 0;
	long port = strtol(colon + 1, &end, 10);
	if (errno || end == colon + 1 || port < 1 || port > 65535) {
		return -EINVAL;
	}
	p.port = (int) port;
	if (strncmp(end, ",pid=", 5) == 0) {
		const char *num = end + 5;
		errno = 0;
		long pid = strtol(num, &end, 10);
		if (errno || end == num || pid < 1 || pid > (1L << 30)) {
			return -EINVAL;
		}
		p.pid = (pid_t) pid;
	}
	if (*end) {
		return -EINVAL;
	}
	*ret_peer = p;
	return 0;
}

/* ------------------------------------------------------------------------------------------
 * Redis */

#ifdef HAVE_HIREDIS
struct redis_link {
	redisContext *ctx;
	unsigned *ring; /* indexes in flight, oldest first */
	unsigned cap, head, n;
};

static redisContext *
redis_connect(const struct bench_peer *p, int timeout_ms, char *err, size_t errlen)
{
	struct timeval ct = {.tv_sec = CONNECT_TIMEOUT_MS / 1000};
	struct timeval rt = {.tv_sec = timeout_ms / 1000, .tv_usec = timeout_ms % 1000 * 1000};
	redisContext *ctx = redisConnectWithTimeout(p->host, p->port, ct);

	if (!ctx || ctx->err) {
		(void) snprintf(err, errlen, "cannot connect to redis at %s:%d: %s", p->host,
		                p->port, ctx ? ctx->errstr : "out of memory");
		redisFree(ctx);
		return NULL;
	}
	if (redisSetTimeout(ctx, rt) != REDIS_OK) {
		(void) snprintf(err, errlen, "redis: cannot set a timeout: %s", ctx->errstr);
		redisFree(ctx);
		return NULL;
	}
	return ctx;
}

static int
redis_errno(const redisContext *ctx)
{
	if (ctx->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK)) {
		return -ETIMEDOUT;
	}
	return ctx->err == REDIS_ERR_EOF ? -ECONNRESET : -EIO;
}

/* CONFIG GET name: 1 when its value is `want`, 0 when not, or a negative errno. */
static int
redis_config_is(redisContext *ctx, const char *name, const char *want, char *err, size_t errlen)
{
	redisReply *r = redisCommand(ctx, "CONFIG GET %s", name);
	int ret;

	if (!r) {
		(void) snprintf(err, errlen, "redis: CONFIG GET %s: %s", name, ctx->errstr);
		return redis_errno(ctx);
	}
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
	    r->element[1]->type != REDIS_REPLY_STRING) {
		(void) snprintf(err, errlen, "redis: CONFIG GET %s: unexpected reply", name);
		ret = -EBADMSG;
	} else {
		ret = strcmp(r->element[1]->str, want) == 0;
		if (!ret) {
			(void) snprintf(err, errlen,
			                "redis runs with %s %s, not %s: its acks do not wait for "
			                "fsync",
			                name, r->element[1]->str, want);
		}
	}
	freeReplyObject(r);
	return ret;
}

static int
redis_prepare(const struct bench_peer *p, char *err, size_t errlen)
{
	redisContext *ctx = redis_connect(p, CONNECT_TIMEOUT_MS, err, errlen);
	int r;

	if (!ctx) {
		return -ECONNREFUSED;
	}
	r = redis_config_is(ctx, "appendonly", "yes", err, errlen);
	if (r > 0) {
		r = redis_config_is(ctx, "appendfsync", "always", err, errlen);
	}
	redisFree(ctx);
	/* Not durable is reported, not refused: the figure is still a figure. */
	return r < 0 ? r : 0;
}

static int
redis_open(const struct bench_peer *p, unsigned window, int timeout_ms, struct bench_link *l)
{
	struct redis_link *rl = calloc(1, sizeof(*rl));
	char err[256];

	if (!rl) {
		return -ENOMEM;
	}
	rl->cap = window;
	rl->ring = calloc(window, sizeof(*rl->ring));
	rl->ctx = rl->ring ? redis_connect(p, timeout_ms, err, sizeof(err)) : NULL;
	if (!rl->ctx) {
		free(rl->ring);
		free(rl);
		return -ECONNREFUSED;
	}
	l->impl = rl;
	return 0;
}

static int
redis_send(struct redis_link *rl, unsigned index, const uint8_t *data, size_t len)
{
	static const char *const head[4] = {"XADD", "coord", "*", "m"};
	const char *argv[5] = {head[0], head[1], head[2], head[3], (const char *) data};
	size_t argvlen[5] = {4, 5, 1, 1, len};

	if (rl->n == rl->cap) {
		return -ENOBUFS;
	}
	if (redisAppendCommandArgv(rl->ctx, 5, argv, argvlen) != REDIS_OK) {
		return -ENOMEM;
	}
	rl->ring[(rl->head + rl->n++) % rl->cap] = index;
	return 0;
}

static int
redis_flush(struct redis_link *rl)
{
	int done = 0;

	while (!done) {
		if (redisBufferWrite(rl->ctx, &done) != REDIS_OK) {
			return redis_errno(rl->ctx);
		}
	}
	return 0;
}

static int
redis_recv(struct redis_link *rl, bool wait, unsigned *ret_index, unsigned *ret_status)
{
	void *reply = NULL;

	if (rl->n == 0) {
		return wait ? -EPROTO : 0; /* nothing in flight: nothing can come */
	}
	if (redisGetReplyFromReader(rl->ctx, &reply) != REDIS_OK) {
		return -EBADMSG;
	}
	if (!reply && wait && redisGetReply(rl->ctx, &reply) != REDIS_OK) {
		return redis_errno(rl->ctx);
	}
	if (!reply) {
		return 0;
	}
	redisReply *r = reply;
	int ret = 1;
	if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) {
		*ret_status = BENCH_STATUS_ACCEPTED; /* the entry id */
	} else if (r->type == REDIS_REPLY_ERROR) {
		*ret_status = BENCH_STATUS_REJECTED;
	} else {
		ret = -EBADMSG;
	}
	freeReplyObject(r);
	*ret_index = rl->ring[rl->head];
	rl->head = (rl->head + 1) % rl->cap;
	rl->n--;
	return ret;
}

static void
redis_close(struct redis_link *rl)
{
	if (rl) {
		redisFree(rl->ctx);
		free(rl->ring);
		free(rl);
	}
}
#endif /* HAVE_HIREDIS */

/* ------------------------------------------------------------------------------------------
 * NATS JetStream */

#ifdef HAVE_NATS
#define NATS_STREAM "COORD"
#define NATS_SUBJECT "coord.bench"

struct nats_link {
	natsConnection *nc;
	natsSubscription *sub;
	int timeout_ms;
	char reply[96]; /* the prefix, then the index is printed after it */
	size_t prefix_len;
};

static int
nats_connect(const struct bench_peer *p, bool send_asap, natsConnection **ret_nc, char *err,
             size_t errlen)
{
	natsOptions *opts = NULL;
	char url[96];
	natsStatus s;

	(void) snprintf(url, sizeof(url), "nats://%s:%d", p->host, p->port);
	s = natsOptions_Create(&opts);
	if (s == NATS_OK) {
		s = natsOptions_SetURL(opts, url);
	}
	if (s == NATS_OK) {
		s = natsOptions_SetTimeout(opts, CONNECT_TIMEOUT_MS);
	}
	if (s == NATS_OK) {
		s = natsOptions_SetSendAsap(opts, send_asap);
	}
	if (s == NATS_OK) {
		s = natsOptions_SetAllowReconnect(opts, false);
	}
	if (s == NATS_OK) {
		s = natsConnection_Connect(ret_nc, opts);
	}
	natsOptions_Destroy(opts);
	if (s != NATS_OK) {
		(void) snprintf(err, errlen, "cannot connect to nats at %s: %s", url,
		                natsStatus_GetText(s));
		return -ECONNREFUSED;
	}
	return 0;
}

static int
nats_prepare(const struct bench_peer *p, char *err, size_t errlen)
{
	static const char *subjects[] = {"coord.>"};
	natsConnection *nc = NULL;
	jsCtx *js = NULL;
	jsStreamConfig sc;
	jsErrCode jerr = 0;
	int r = nats_connect(p, true, &nc, err, errlen);

	if (r < 0) {
		return r;
	}
	natsStatus s = natsConnection_JetStream(&js, nc, NULL);
	if (s == NATS_OK) {
		(void) jsStreamConfig_Init(&sc);
		sc.Name = NATS_STREAM;
		sc.Subjects = subjects;
		sc.SubjectsLen = 1;
		sc.Storage = js_FileStorage;
		sc.Replicas = 1;
		s = js_AddStream(NULL, js, &sc, NULL, &jerr);
		if (s != NATS_OK && jerr == JSStreamNameExistErr) {
			s = NATS_OK;
		}
	}
	if (s != NATS_OK) {
		(void) snprintf(err, errlen,
		                "nats: cannot create the stream %s (is JetStream on, -js?): %s",
		                NATS_STREAM, natsStatus_GetText(s));
		r = -EIO;
	}
	jsCtx_Destroy(js);
	natsConnection_Destroy(nc);
	return r;
}

static int
nats_open(const struct bench_peer *p, const char *name, unsigned window, int timeout_ms,
          struct bench_link *l)
{
	struct nats_link *nl = calloc(1, sizeof(*nl));
	char err[256], subject[112];
	int r;

	if (!nl) {
		return -ENOMEM;
	}
	nl->timeout_ms = timeout_ms;
	nl->prefix_len = (size_t) snprintf(nl->reply, sizeof(nl->reply), "_INBOX.%s.", name);
	if (nl->prefix_len + 12 >= sizeof(nl->reply)) {
		free(nl);
		return -EINVAL;
	}
	/* Waiting for each ack: send each message at once, as nats.c advises for requests;
	 * else let its flusher thread gather what the window sends. */
	r = nats_connect(p, window == 1, &nl->nc, err, sizeof(err));
	if (r < 0) {
		free(nl);
		return r;
	}
	(void) snprintf(subject, sizeof(subject), "%s*", nl->reply);
	if (natsConnection_SubscribeSync(&nl->sub, nl->nc, subject) != NATS_OK) {
		natsConnection_Destroy(nl->nc);
		free(nl);
		return -EIO;
	}
	l->impl = nl;
	return 0;
}

static int
nats_send(struct nats_link *nl, unsigned index, const uint8_t *data, size_t len)
{
	(void) snprintf(nl->reply + nl->prefix_len, sizeof(nl->reply) - nl->prefix_len, "%u",
	                index);
	natsStatus s =
	        natsConnection_PublishRequest(nl->nc, NATS_SUBJECT, nl->reply, data, (int) len);
	return s == NATS_OK ? 0 : -EIO;
}

static int
nats_recv(struct nats_link *nl, bool wait, unsigned *ret_index, unsigned *ret_status)
{
	natsMsg *m = NULL;
	natsStatus s = natsSubscription_NextMsg(&m, nl->sub, wait ? nl->timeout_ms : 0);

	if (s == NATS_TIMEOUT) {
		return wait ? -ETIMEDOUT : 0;
	}
	if (s == NATS_NO_RESPONDERS) {
		return -ENOENT; /* no stream on the subject */
	}
	if (s != NATS_OK) {
		return -EIO;
	}
	const char *subject = natsMsg_GetSubject(m);
	const char *data = natsMsg_GetData(m);
	size_t len = (size_t) natsMsg_GetDataLength(m);
	char *end;
	int ret = 1;
	unsigned long index = 0;

	if (strlen(subject) <= nl->prefix_len || strncmp(subject, nl->reply, nl->prefix_len)) {
		ret = -EBADMSG;
	} else {
		errno = 0;
		index = strtoul(subject + nl->prefix_len, &end, 10);
		ret = errno || *end || index > UINT32_MAX ? -EBADMSG : 1;
	}
	if (ret == 1 && data && memmem(data, len, "\"error\"", 7)) {
		*ret_status = BENCH_STATUS_REJECTED;
	} else if (ret == 1 && data && memmem(data, len, "\"duplicate\":true", 16)) {
		*ret_status = BENCH_STATUS_DUPLICATE;
	} else if (ret == 1 && data && memmem(data, len, "\"seq\":", 6)) {
		*ret_status = BENCH_STATUS_ACCEPTED;
	} else {
		ret = -EBADMSG;
	}
	*ret_index = (unsigned) index;
	natsMsg_Destroy(m);
	return ret;
}

static void
nats_close(struct nats_link *nl)
{
	if (nl) {
		natsSubscription_Destroy(nl->sub);
		natsConnection_Destroy(nl->nc);
		free(nl);
	}
}
#endif /* HAVE_NATS */

/* ------------------------------------------------------------------------------------------
 * RabbitMQ */

#ifdef HAVE_RABBITMQ
#define RABBIT_QUEUE "coord.bench"
#define RABBIT_CHANNEL 1

struct rabbit_link {
	amqp_connection_state_t conn;
	int timeout_ms;
	uint64_t next_tag; /* the delivery tag of the next publish */
	uint64_t floor;    /* every tag below it is known to be answered */
	uint64_t from, to; /* tags of a `multiple` answer still to hand out */
	unsigned status;   /* theirs */
};

static bool
rabbit_ok(amqp_connection_state_t conn, const char *what, char *err, size_t errlen)
{
	amqp_rpc_reply_t r = amqp_get_rpc_reply(conn);

	if (r.reply_type == AMQP_RESPONSE_NORMAL) {
		return true;
	}
	(void) snprintf(err, errlen, "rabbitmq: %s: %s", what,
	                r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION
	                        ? amqp_error_string2(r.library_error)
	                        : "refused by the server");
	return false;
}

/* Connect as guest (allowed from the loopback only) and open the channel. */
static int
rabbit_connect(const struct bench_peer *p, amqp_connection_state_t *ret_conn, char *err,
               size_t errlen)
{
	struct timeval tv = {.tv_sec = CONNECT_TIMEOUT_MS / 1000};
	amqp_connection_state_t conn = amqp_new_connection();
	amqp_socket_t *sock = conn ? amqp_tcp_socket_new(conn) : NULL;

	if (!sock) {
		if (conn) {
			(void) amqp_destroy_connection(conn);
		}
		return -ENOMEM;
	}
	int s = amqp_socket_open_noblock(sock, p->host, p->port, &tv);
	if (s != AMQP_STATUS_OK) {
		(void) snprintf(err, errlen, "cannot connect to rabbitmq at %s:%d: %s", p->host,
		                p->port, amqp_error_string2(s));
		(void) amqp_destroy_connection(conn);
		return -ECONNREFUSED;
	}
	amqp_rpc_reply_t r = amqp_login(conn, "/", 0, AMQP_DEFAULT_FRAME_SIZE, 0,
	                                AMQP_SASL_METHOD_PLAIN, "guest", "guest");
	if (r.reply_type != AMQP_RESPONSE_NORMAL) {
		(void) snprintf(err, errlen, "rabbitmq at %s:%d: login as guest refused", p->host,
		                p->port);
		(void) amqp_destroy_connection(conn);
		return -EACCES;
	}
	(void) amqp_channel_open(conn, RABBIT_CHANNEL);
	if (!rabbit_ok(conn, "channel.open", err, errlen)) {
		(void) amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
		(void) amqp_destroy_connection(conn);
		return -EIO;
	}
	*ret_conn = conn;
	return 0;
}

static void
rabbit_disconnect(amqp_connection_state_t conn)
{
	(void) amqp_channel_close(conn, RABBIT_CHANNEL, AMQP_REPLY_SUCCESS);
	(void) amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
	(void) amqp_destroy_connection(conn);
}

static int
rabbit_prepare(const struct bench_peer *p, char *err, size_t errlen)
{
	amqp_connection_state_t conn;
	amqp_table_entry_t type = {
	        .key = amqp_cstring_bytes("x-queue-type"),
	        .value = {.kind = AMQP_FIELD_KIND_UTF8,
	                  .value.bytes = amqp_cstring_bytes("quorum")},
	};
	amqp_table_t args = {.num_entries = 1, .entries = &type};
	int r = rabbit_connect(p, &conn, err, errlen);

	if (r < 0) {
		return r;
	}
	(void) amqp_queue_declare(conn, RABBIT_CHANNEL, amqp_cstring_bytes(RABBIT_QUEUE), 0, 1, 0,
	                          0, args);
	r = rabbit_ok(conn, "cannot declare the quorum queue " RABBIT_QUEUE, err, errlen) ? 0
	                                                                                  : -EIO;
	if (r == 0) {
		/* A quorum queue keeps its messages in memory: start each phase empty. */
		(void) amqp_queue_purge(conn, RABBIT_CHANNEL, amqp_cstring_bytes(RABBIT_QUEUE));
		r = rabbit_ok(conn, "cannot purge " RABBIT_QUEUE, err, errlen) ? 0 : -EIO;
	}
	rabbit_disconnect(conn);
	return r;
}

static int
rabbit_open(const struct bench_peer *p, int timeout_ms, struct bench_link *l)
{
	struct rabbit_link *rl = calloc(1, sizeof(*rl));
	char err[256];
	int r;

	if (!rl) {
		return -ENOMEM;
	}
	r = rabbit_connect(p, &rl->conn, err, sizeof(err));
	if (r < 0) {
		free(rl);
		return r;
	}
	(void) amqp_confirm_select(rl->conn, RABBIT_CHANNEL);
	if (!rabbit_ok(rl->conn, "confirm.select", err, sizeof(err))) {
		rabbit_disconnect(rl->conn);
		free(rl);
		return -EIO;
	}
	rl->timeout_ms = timeout_ms;
	rl->next_tag = rl->floor = rl->from = 1;
	l->impl = rl;
	return 0;
}

static int
rabbit_send(struct rabbit_link *rl, unsigned index, const uint8_t *data, size_t len)
{
	amqp_basic_properties_t props = {
	        ._flags = AMQP_BASIC_DELIVERY_MODE_FLAG, .delivery_mode = 2, /* persistent */
	};
	amqp_bytes_t body = {.len = len, .bytes = (void *) data};

	if (index != rl->next_tag - 1) {
		return -EINVAL; /* tags would not map to indexes */
	}
	int s = amqp_basic_publish(rl->conn, RABBIT_CHANNEL, amqp_empty_bytes,
	                           amqp_cstring_bytes(RABBIT_QUEUE), 0, 0, &props, body);
	if (s != AMQP_STATUS_OK) {
		return -EIO;
	}
	rl->next_tag++;
	return 0;
}

static int
rabbit_recv(struct rabbit_link *rl, bool wait, unsigned *ret_index, unsigned *ret_status)
{
	/* Each pass takes one frame; a frame that is not an answer (a heartbeat) is skipped,
	 * and the window bounds how many answers there can be. */
	for (;;) {
		if (rl->from <= rl->to) {
			*ret_index = (unsigned) (rl->from++ - 1);
			*ret_status = rl->status;
			return 1;
		}
		struct timeval tv = {.tv_sec = wait ? rl->timeout_ms / 1000 : 0,
		                     .tv_usec = wait ? rl->timeout_ms % 1000 * 1000 : 0};
		amqp_frame_t f;
		int s = amqp_simple_wait_frame_noblock(rl->conn, &f, &tv);
		if (s == AMQP_STATUS_TIMEOUT) {
			return wait ? -ETIMEDOUT : 0;
		}
		if (s != AMQP_STATUS_OK) {
			return -EIO;
		}
		if (f.frame_type != AMQP_FRAME_METHOD) {
			continue;
		}
		uint64_t tag;
		bool multiple;
		switch (f.payload.method.id) {
		case AMQP_BASIC_ACK_METHOD: {
			const amqp_basic_ack_t *a = f.payload.method.decoded;
			tag = a->delivery_tag;
			multiple = a->multiple;
			rl->status = BENCH_STATUS_ACCEPTED;
			break;
		}
		case AMQP_BASIC_NACK_METHOD: {
			const amqp_basic_nack_t *a = f.payload.method.decoded;
			tag = a->delivery_tag;
			multiple = a->multiple;
			rl->status = BENCH_STATUS_REJECTED;
			break;
		}
		case AMQP_CHANNEL_CLOSE_METHOD:
		case AMQP_CONNECTION_CLOSE_METHOD:
			return -ECONNRESET;
		default:
			continue;
		}
		if (tag == 0 || tag >= rl->next_tag) {
			return -EBADMSG;
		}
		/* Hand out the tags from the floor to this one (some may have been answered
		 * one by one already: the council ignores a second answer). */
		rl->from = multiple ? rl->floor : tag;
		rl->to = tag;
		if (multiple && tag >= rl->floor) {
			rl->floor = tag + 1;
		} else if (tag == rl->floor) {
			rl->floor++;
		}
	}
}

static void
rabbit_close(struct rabbit_link *rl)
{
	if (rl) {
		rabbit_disconnect(rl->conn);
		free(rl);
	}
}
#endif /* HAVE_RABBITMQ */

/* ------------------------------------------------------------------------------------------ */

int
bench_peer_prepare(const struct bench_peer *p, char *err, size_t errlen)
{
	err[0] = '\0';
	switch (p->kind) {
#ifdef HAVE_HIREDIS
	case BENCH_PEER_REDIS:
		return redis_prepare(p, err, errlen);
#endif
#ifdef HAVE_NATS
	case BENCH_PEER_NATS:
		return nats_prepare(p, err, errlen);
#endif
#ifdef HAVE_RABBITMQ
	case BENCH_PEER_RABBITMQ:
		return rabbit_prepare(p, err, errlen);
#endif
	default:
		(void) snprintf(err, errlen, "the %s phase is not built (install %s and rebuild)",
		                bench_peer_name(p->kind), bench_peer_package(p->kind));
		return -ENOTSUP;
	}
}

int
bench_link_open(const struct bench_peer *p, const char *name, unsigned window, int timeout_ms,
                struct bench_link *l)
{
	*l = (struct bench_link){.kind = p->kind};
	switch (p->kind) {
#ifdef HAVE_HIREDIS
	case BENCH_PEER_REDIS:
		return redis_open(p, window, timeout_ms, l);
#endif
#ifdef HAVE_NATS
	case BENCH_PEER_NATS:
		return nats_open(p, name, window, timeout_ms, l);
#endif
#ifdef HAVE_RABBITMQ
	case BENCH_PEER_RABBITMQ:
		return rabbit_open(p, timeout_ms, l);
#endif
	default:
		return -ENOTSUP;
	}
}

int
bench_link_send(struct bench_link *l, unsigned index, const uint8_t *data, size_t len)
{
	switch (l->kind) {
#ifdef HAVE_HIREDIS
	case BENCH_PEER_REDIS:
		return redis_send(l->impl, index, data, len);
#endif
#ifdef HAVE_NATS
	case BENCH_PEER_NATS:
		return nats_send(l->impl, index, data, len);
#endif
#ifdef HAVE_RABBITMQ
	case BENCH_PEER_RABBITMQ:
		return rabbit_send(l->impl, index, data, len);
#endif
	default:
		return -ENOTSUP;
	}
}

int
bench_link_flush(struct bench_link *l)
{
#ifdef HAVE_HIREDIS
	if (l->kind == BENCH_PEER_REDIS) {
		return redis_flush(l->impl);
	}
#endif
	return 0; /* nats.c's flusher thread writes what was published, rabbitmq-c at once */
}

int
bench_link_recv(struct bench_link *l, bool wait, unsigned *ret_index, unsigned *ret_status)
{
	switch (l->kind) {
#ifdef HAVE_HIREDIS
	case BENCH_PEER_REDIS:
		return redis_recv(l->impl, wait, ret_index, ret_status);
#endif
#ifdef HAVE_NATS
	case BENCH_PEER_NATS:
		return nats_recv(l->impl, wait, ret_index, ret_status);
#endif
#ifdef HAVE_RABBITMQ
	case BENCH_PEER_RABBITMQ:
		return rabbit_recv(l->impl, wait, ret_index, ret_status);
#endif
	default:
		return -ENOTSUP;
	}
}

void
bench_link_close(struct bench_link *l)
{
	switch (l->kind) {
#ifdef HAVE_HIREDIS
	case BENCH_PEER_REDIS:
		redis_close(l->impl);
		break;
#endif
#ifdef HAVE_NATS
	case BENCH_PEER_NATS:
		nats_close(l->impl);
		break;
#endif
#ifdef HAVE_RABBITMQ
	case BENCH_PEER_RABBITMQ:
		rabbit_close(l->impl);
		break;
#endif
	default:
		break;
	}
	l->impl = NULL;
}

void
bench_peers_cleanup(void)
{
#ifdef HAVE_NATS
	/* Let the library's own threads end, so a leak checker sees nothing left. */
	(void) nats_CloseAndWait(5000);
#endif
}

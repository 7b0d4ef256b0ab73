/*
 * ingest: ROUTER socket -> decode -> validate -> batch -> writer -> ack.
 *
 * Messages that pass validation are appended to the `filling` batch; a full batch moves to a
 * FIFO queue. Exactly one batch at a time is `committing` on the libuv threadpool (so LMDB
 * sees one writer); when its commit returns, after_commit() submits the next batch and then,
 * while that one commits, acks every message of it on the loop thread. A message that fails
 * validation is answered at once: it changes nothing, so it needs no commit.
 *
 * A batch keeps the received zmq_msg_t frames themselves (routing id and body) until its
 * acks are sent, so the envelope bytes are written to LMDB without an extra copy. The
 * store_record array points into those frames and into the msg structs; neither moves while
 * the batch lives. After the acks, the batch's ACCEPTED records are reported to the owner's
 * on_accepted callback (fanout), from the same frames.
 *
 * Connections are counted by a zmon on the socket; it is closed before the socket.
 *
 * Per-sender limits (limiter.h) are checked on every message with the right framing, before
 * validation, so that a flood of garbage is limited too: a message refused by a limit is
 * answered RETRY_LATER (REASON_OVERLOADED) at once and changes nothing. An admitted message
 * holds an in-flight slot of its sender from then until its Ack is handed to libzmq (at once
 * for a REJECTED one, after the commit for the others). The sender is the authenticated
 * peer (the message's User-Id) on a CURVE socket, where the ZAP handler sets it; on any
 * other socket the peer could claim any User-Id in its handshake metadata, so there the
 * connection's routing id is the sender.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sys/timerfd.h>
#include <zmq.h>

#include "auth.h"
#include "ingest.h"
#include "limiter.h"
#include "log.h"
#include "wire.h"
#include "zmon.h"
#include "zuv.h"

#define container_of(ptr, type, member) ((type *) ((char *) (ptr) -offsetof(type, member)))

/* Messages handled per callback before other handles get a turn. */
#define INGEST_RECV_BUDGET 256
/* Frames above max(this, 4 x max_message_bytes) are dropped by libzmq, unanswered. */
#define INGEST_DROP_LIMIT_MIN (INT64_C(1) << 20)
/* How long acks queued at shutdown may take to leave. */
#define INGEST_LINGER_MS 2000
/* The longest a commit waits for the senders just acked (gather_arm()), and its share of
 * the last commit's duration. */
#define INGEST_GATHER_MAX_NS UINT64_C(2000000)
#define INGEST_GATHER_DIV 2
/* Batches above this size never wait: the commit's fixed cost (two flushes) is already
 * shared by many messages. */
#define INGEST_GATHER_MAX_BATCH 64

struct msg {
	zmq_msg_t rid;
	zmq_msg_t body;
	char council[WIRE_COUNCIL_MAX + 1];
	char msg_id[WIRE_MSG_ID_MAX + 1];
	Coord__V1__Envelope__BodyCase body_case;
	struct limiter_sender *sender; /* its in-flight slot, released after its Ack */
};

/*
 * Bump allocation for the batch's unpacked Envelopes (protobuf-c's allocator): each one
 * stays until the batch is recycled (the writer's digest hook reads it, store_record.decoded),
 * one refused is taken back at once (arena_rewind()), and nothing is freed one by one.
 * Chunks of ARENA_CHUNK bytes are kept for reuse, up to ARENA_KEEP of them.
 */
#define ARENA_CHUNK ((size_t) 64 << 10)
#define ARENA_KEEP 32

struct arena_chunk {
	struct arena_chunk *next;
	size_t used, cap;
	max_align_t data[];
};

struct arena {
	struct arena_chunk *cur; /* the newest chunk; older ones follow */
	struct arena_chunk *spare;
	unsigned n_spare;
};

struct arena_mark {
	struct arena_chunk *chunk;
	size_t used;
};

struct batch {
	struct batch *next;
	size_t n;
	int result;         /* store_write_batch() */
	uint64_t commit_ns; /* how long store_write_batch() took */
	struct msg *msgs;
	struct store_record *recs;
	struct arena arena;
	ProtobufCAllocator alloc; /* over `arena` */
};

struct ingest {
	uv_loop_t *loop;
	void *sock;
	struct zuv zuv;
	bool zuv_started;
	struct store *store;
	struct config *cfg;
	struct auth *auth;
	bool curve;                 /* CURVE socket: the council is the key's (check_council) */
	uint64_t refusal_log_ms;    /* start of the current second of refusal warnings */
	unsigned refusal_log_count; /* warnings logged in it */
	ingest_accepted_fn *on_accepted;
	void *accepted_data;
	struct zmon *zmon;
	unsigned closing_parts; /* zuv and zmon still closing */
	struct limiter *limiter;

	uv_work_t work;
	struct batch *filling;
	struct batch *committing;
	struct batch *queue_head;
	struct batch *queue_tail;
	struct batch *spare;
	size_t pending; /* messages in filling + queue */
	bool paused;

	/* Gathering (gather_arm()): the writer is idle, waiting until `gather_target` messages
	 * fill the batch or the timerfd fires. */
	int gather_fd;
	uv_poll_t gather_poll;
	bool gather_open; /* gather_poll initialised, not closed */
	bool gathering;
	size_t gather_target;

	bool stopping;
	bool closing;
	void (*stop_cb)(void *data);
	void *stop_data;

	struct ingest_counters counters;

	/* Disk trouble (note_commit()) */
	ingest_state_fn *state_fn;
	void *state_data;
	uint64_t next_disk_check;  /* uv_now() */
	uint64_t episode_batches;  /* failed batches in the current failing episode */
	uint64_t episode_messages; /* messages answered RETRY_LATER in it */
};

static int64_t
now_ms(void)
{
	struct timespec ts;

	(void) clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *
arena_alloc(void *data, size_t n)
{
	struct arena *a = data;
	struct arena_chunk *c = a->cur;

	n = (n + sizeof(max_align_t) - 1) & ~(sizeof(max_align_t) - 1);
	if (!c || c->cap - c->used < n) {
		if (n <= ARENA_CHUNK && a->spare) {
			c = a->spare;
			a->spare = c->next;
			a->n_spare--;
		} else {
			size_t cap = n > ARENA_CHUNK ? n : ARENA_CHUNK;
			c = malloc(sizeof(*c) + cap);
			if (!c) {
				return NULL;
			}
			c->cap = cap;
		}
		c->used = 0;
		c->next = a->cur;
		a->cur = c;
	}
	void *p = (uint8_t *) c->data + c->used;
	c->used += n;
	return p;
}

static void
arena_free_nothing(void *data, void *p)
{
	(void) data;
	(void) p;
}

static struct arena_mark
arena_mark(const struct arena *a)
{
	return (struct arena_mark){.chunk = a->cur, .used = a->cur ? a->cur->used : 0};
}

/* Take back everything allocated since `m`. */
static void
arena_rewind(struct arena *a, struct arena_mark m)
{
	while (a->cur && a->cur != m.chunk) {
		struct arena_chunk *c = a->cur;
		a->cur = c->next;
		if (c->cap == ARENA_CHUNK && a->n_spare < ARENA_KEEP) {
			c->next = a->spare;
			a->spare = c;
			a->n_spare++;
		} else {
			free(c);
		}
	}
	if (a->cur) {
		a->cur->used = m.used;
	}
}

static void
arena_free(struct arena *a)
{
	arena_rewind(a, (struct arena_mark){0});
	while (a->spare) {
		struct arena_chunk *c = a->spare;
		a->spare = c->next;
		free(c);
	}
	a->n_spare = 0;
}

static struct batch *
batch_free(struct batch *b)
{
	if (!b) {
		return NULL;
	}
	arena_free(&b->arena);
	free(b->msgs);
	free(b->recs);
	free(b);
	return NULL;
}

static struct batch *
batch_new(size_t cap)
{
	struct batch *b = calloc(1, sizeof(*b));

	if (!b) {
		return NULL;
	}
	b->alloc = (ProtobufCAllocator){
	        .alloc = arena_alloc,
	        .free = arena_free_nothing,
	        .allocator_data = &b->arena,
	};
	b->msgs = calloc(cap, sizeof(*b->msgs));
	b->recs = calloc(cap, sizeof(*b->recs));
	if (!b->msgs || !b->recs) {
		return batch_free(b);
	}
	return b;
}

/* Release the frames of a batch and keep the batch for reuse. */
static void
batch_recycle(struct ingest *in, struct batch *b)
{
	for (size_t i = 0; i < b->n; i++) {
		(void) zmq_msg_close(&b->msgs[i].rid);
		(void) zmq_msg_close(&b->msgs[i].body);
	}
	b->n = 0;
	b->result = 0;
	arena_rewind(&b->arena, (struct arena_mark){0});
	if (!in->spare) {
		in->spare = b;
	} else {
		batch_free(b);
	}
}

/* Send one Ack to the peer `rid`. Failures are counted: the client resends on timeout. */
static void
send_ack(struct ingest *in, zmq_msg_t *rid, const Coord__V1__Ack *ack)
{
	uint8_t buf[WIRE_ACK_MAX];
	int len = wire_pack_ack(ack, buf, sizeof(buf));

	if (len < 0 ||
	    zmq_send(in->sock, zmq_msg_data(rid), zmq_msg_size(rid), ZMQ_SNDMORE | ZMQ_DONTWAIT) <
	            0 ||
	    zmq_send(in->sock, buf, (size_t) len, ZMQ_DONTWAIT) < 0) {
		in->counters.acks_dropped++;
	}
}

/* Answer a message that changes nothing: REJECTED, or RETRY_LATER before any commit. */
static void
refuse(struct ingest *in, zmq_msg_t *rid, const Coord__V1__Envelope *env,
       Coord__V1__AckStatus status, Coord__V1__Reason reason, const char *message)
{
	Coord__V1__Ack ack = COORD__V1__ACK__INIT;

	if (env && wire_echoable(env->msg_id)) {
		ack.msg_id = env->msg_id;
		ack.revision = env->revision;
	}
	ack.status = status;
	ack.reason = reason;
	ack.message = (char *) message;
	if (status == COORD__V1__ACK_STATUS__ACK_STATUS_REJECTED) {
		in->counters.rejected++;
		in->counters.rejected_by_reason[(unsigned) reason % 32]++;
		log_debug("Rejected message: %s", message);
	} else {
		in->counters.retry_later++;
	}
	send_ack(in, rid, &ack);
}

/* Refusals of identity are logged at warning, at most this many per second. */
#define INGEST_REFUSAL_LOGS_PER_S 10

static bool
refusal_log_allowed(struct ingest *in)
{
	uint64_t now = uv_now(in->loop);

	if (now - in->refusal_log_ms >= 1000) {
		in->refusal_log_ms = now;
		in->refusal_log_count = 0;
	}
	return in->refusal_log_count++ < INGEST_REFUSAL_LOGS_PER_S;
}

/*
 * The one place that decides whether a message may be written as the council it names.
 * On a CURVE socket the council is the one proven by the connection's key, checked against
 * the CURRENT allowlist (auth_check_msg(), so a key removed by a reload is refused on open
 * connections too), and the record must name that council. On every socket the council
 * must be registered in the config.
 */
static int
check_council(struct ingest *in, const zmq_msg_t *body, const Coord__V1__Envelope *env,
              struct wire_verdict *v)
{
	if (in->curve) {
		char id[AUTH_ID_MAX + 1] = "";
		int r = auth_check_msg(in->auth, body, AUTH_ROLE_COUNCIL, id);
		if (r < 0 || strcmp(id, env->council) != 0) {
			v->reason = COORD__V1__REASON__REASON_UNAUTHORIZED;
			if (r < 0) {
				(void) snprintf(
				        v->message, sizeof(v->message),
				        "the sender's key is not (or no longer) allowlisted "
				        "as a council");
			} else {
				(void) snprintf(
				        v->message, sizeof(v->message),
				        "the sender's key belongs to council '%s', not '%s'", id,
				        env->council);
			}
			if (refusal_log_allowed(in)) {
				log_warning("Rejected a record the sender's key does not allow: "
				            "council=%s claimed='%s' msg_id='%s'",
				            r < 0 ? "(not allowlisted)" : id, env->council,
				            env->msg_id);
			}
			return -EACCES;
		}
	}
	if (!config_find_council(in->cfg, env->council)) {
		v->reason = COORD__V1__REASON__REASON_UNKNOWN_COUNCIL;
		(void) snprintf(v->message, sizeof(v->message), "council '%s' is not registered",
		                env->council);
		return -EPERM;
	}
	return 0;
}

static void maybe_submit(struct ingest *in);
static void maybe_resume(struct ingest *in);
static bool gather_arm(struct ingest *in, const struct batch *done);
static void gather_stop(struct ingest *in);

/* Make room for one more message in the filling batch. */
static struct batch *
filling_batch(struct ingest *in)
{
	struct batch *b = in->filling;

	if (b && b->n == in->cfg->ingest.max_batch) {
		b->next = NULL;
		if (in->queue_tail) {
			in->queue_tail->next = b;
		} else {
			in->queue_head = b;
		}
		in->queue_tail = b;
		b = in->filling = NULL;
	}
	if (!b) {
		b = in->spare ? in->spare : batch_new(in->cfg->ingest.max_batch);
		if (b == in->spare) {
			in->spare = NULL;
		}
		in->filling = b;
	}
	return b;
}

/*
 * Read one multipart message: routing id, then exactly one data frame. Returns 1 when a
 * message was read into `m` (frames owned by `m`), 0 when the socket had nothing, -EBADMSG
 * when the frame count was wrong (answered here), or another negative errno.
 */
static int
recv_message(struct ingest *in, struct msg *m)
{
	int frames = 0;

	(void) zmq_msg_init(&m->rid);
	(void) zmq_msg_init(&m->body);
	if (zmq_msg_recv(&m->rid, in->sock, ZMQ_DONTWAIT) < 0) {
		int r = -zmq_errno();
		(void) zmq_msg_close(&m->rid);
		(void) zmq_msg_close(&m->body);
		return r == -EAGAIN ? 0 : r;
	}
	bool more = zmq_msg_more(&m->rid);
	if (more && zmq_msg_recv(&m->body, in->sock, ZMQ_DONTWAIT) >= 0) {
		frames = 1;
		more = zmq_msg_more(&m->body);
	}
	/* libzmq delivers multipart messages whole, so the rest is already here. */
	while (more) {
		zmq_msg_t extra;

		(void) zmq_msg_init(&extra);
		if (zmq_msg_recv(&extra, in->sock, ZMQ_DONTWAIT) < 0) {
			more = false;
		} else {
			more = zmq_msg_more(&extra);
			frames++;
		}
		(void) zmq_msg_close(&extra);
	}
	in->counters.received++;
	if (frames != 1) {
		char text[96];

		(void) snprintf(text, sizeof(text),
		                "expected exactly one frame (an Envelope), got %d", frames);
		refuse(in, &m->rid, NULL, COORD__V1__ACK_STATUS__ACK_STATUS_REJECTED,
		       COORD__V1__REASON__REASON_BAD_FRAMING, text);
		(void) zmq_msg_close(&m->rid);
		(void) zmq_msg_close(&m->body);
		return -EBADMSG;
	}
	return 1;
}

/*
 * The sender of `m` for the per-sender limits, written to `key` (LIMITER_KEY_MAX bytes):
 * 'u' and the User-Id on a CURVE socket, else 'r' and the routing id. Returns its length.
 */
static size_t
sender_key(const struct ingest *in, zmq_msg_t *body, zmq_msg_t *rid, uint8_t *key)
{
	const char *user = in->curve ? zmq_msg_gets(body, "User-Id") : NULL;
	size_t len;

	if (user && user[0] && (len = strnlen(user, LIMITER_KEY_MAX)) < LIMITER_KEY_MAX) {
		key[0] = 'u';
		memcpy(key + 1, user, len);
		return len + 1;
	}
	/* libzmq caps routing ids at 255 bytes. */
	len = zmq_msg_size(rid);
	if (len > LIMITER_KEY_MAX - 1) {
		len = LIMITER_KEY_MAX - 1;
	}
	key[0] = 'r';
	memcpy(key + 1, zmq_msg_data(rid), len);
	return len + 1;
}

/*
 * Take an in-flight slot and a token of the sender of `m`. Returns 0 with m->sender set,
 * or answers RETRY_LATER (echoing `env` when it decoded), counts the limit and returns
 * -EAGAIN (or -ENOMEM).
 */
static int
check_limits(struct ingest *in, struct msg *m, const Coord__V1__Envelope *env)
{
	uint8_t key[LIMITER_KEY_MAX];
	size_t len = sender_key(in, &m->body, &m->rid, key);
	int r = limiter_acquire(in->limiter, key, len, uv_now(in->loop), &m->sender);

	switch (r) {
	case LIMITER_ADMIT:
		return 0;
	case LIMITER_INFLIGHT:
		in->counters.limit_inflight++;
		refuse(in, &m->rid, env, COORD__V1__ACK_STATUS__ACK_STATUS_RETRY_LATER,
		       COORD__V1__REASON__REASON_OVERLOADED,
		       "too many messages in flight from this sender "
		       "([ingest] max_inflight_per_council); retry after the pending acks");
		return -EAGAIN;
	case LIMITER_RATE:
		in->counters.limit_rate++;
		refuse(in, &m->rid, env, COORD__V1__ACK_STATUS__ACK_STATUS_RETRY_LATER,
		       COORD__V1__REASON__REASON_OVERLOADED,
		       "rate limit exceeded for this sender ([ingest] rate_limit); retry later");
		return -EAGAIN;
	default:
		refuse(in, &m->rid, env, COORD__V1__ACK_STATUS__ACK_STATUS_RETRY_LATER,
		       COORD__V1__REASON__REASON_OVERLOADED, "out of memory");
		return r < 0 ? r : -EIO;
	}
}

/*
 * Decode, limit and validate the message in `m`, the next of batch `b`. Returns 0 and
 * fills `rec` when it should be stored (m->sender then holds its in-flight slot, and
 * rec->decoded its Envelope, in the batch's arena); otherwise answers it and returns a
 * negative errno (frames still owned by `m`, no slot held, the arena as it was).
 */
static int
admit(struct ingest *in, struct batch *b, struct msg *m, struct store_record *rec, int64_t now)
{
	Coord__V1__Envelope *env = NULL;
	struct wire_verdict verdict;
	struct arena_mark mark = arena_mark(&b->arena);
	int r;

	m->sender = NULL;
	r = wire_unpack_envelope_with(&b->alloc, zmq_msg_data(&m->body), zmq_msg_size(&m->body),
	                              in->cfg->ingest.max_message_bytes, &env, &verdict);
	if (r == -ENOMEM) {
		arena_rewind(&b->arena, mark);
		refuse(in, &m->rid, NULL, COORD__V1__ACK_STATUS__ACK_STATUS_RETRY_LATER,
		       COORD__V1__REASON__REASON_OVERLOADED, "out of memory");
		return r;
	}
	/* Garbage counts against the limits too; a decoded msg_id is echoed either way. */
	int lr = check_limits(in, m, env);
	if (lr < 0) {
		arena_rewind(&b->arena, mark);
		return lr;
	}
	if (r >= 0) {
		r = wire_validate_envelope(env, now, &verdict);
	}
	if (r >= 0) {
		r = check_council(in, &m->body, env, &verdict);
	}
	if (r < 0) {
		refuse(in, &m->rid, env, COORD__V1__ACK_STATUS__ACK_STATUS_REJECTED, verdict.reason,
		       verdict.message);
		limiter_release(in->limiter, m->sender, uv_now(in->loop));
		m->sender = NULL;
		arena_rewind(&b->arena, mark);
		return r;
	}

	/* Lengths were validated; the bounds only keep the copies safe regardless. */
	size_t lc = strnlen(env->council, WIRE_COUNCIL_MAX);
	size_t lm = strnlen(env->msg_id, WIRE_MSG_ID_MAX);
	memcpy(m->council, env->council, lc);
	m->council[lc] = '\0';
	memcpy(m->msg_id, env->msg_id, lm);
	m->msg_id[lm] = '\0';
	m->body_case = env->body_case;
	*rec = (struct store_record){
	        .council = m->council,
	        .msg_id = m->msg_id,
	        .revision = env->revision,
	        .retraction = env->body_case == COORD__V1__ENVELOPE__BODY_RETRACTION,
	        .envelope = zmq_msg_data(&m->body),
	        .envelope_len = zmq_msg_size(&m->body),
	        .received_at = now,
	        .decoded = env,
	};
	return 0;
}

static void
on_readable(struct zuv *z, void *zsock, unsigned budget, void *data)
{
	struct ingest *in = data;
	int64_t now = now_ms();

	for (unsigned i = 0; i < budget; i++) {
		if (in->pending >= in->cfg->ingest.max_pending) {
			/* Backpressure: leave further messages in libzmq until a commit returns. */
			in->paused = true;
			zuv_pause(&in->zuv);
			break;
		}
		struct batch *b = filling_batch(in);
		if (!b) {
			/* Stop this turn; a commit in flight frees batches and resumes intake,
			 * otherwise the idle handle retries on the next turn. */
			log_error("Out of memory for an ingest batch, retrying");
			if (in->committing) {
				in->paused = true;
				zuv_pause(&in->zuv);
			}
			break;
		}
		struct msg *m = &b->msgs[b->n];
		int r = recv_message(in, m);
		if (r == 0) {
			break;
		}
		if (r < 0) {
			if (r != -EBADMSG) {
				log_warning_errno(
				        r, "Failed to receive on the ingest socket, ignoring");
				break;
			}
			continue;
		}
		if (admit(in, b, m, &b->recs[b->n], now) < 0) {
			(void) zmq_msg_close(&m->rid);
			(void) zmq_msg_close(&m->body);
			continue;
		}
		b->n++;
		in->pending++;
	}
	maybe_submit(in);
}

static void
commit_work(uv_work_t *req)
{
	struct ingest *in = container_of(req, struct ingest, work);
	struct batch *b = in->committing;

	uint64_t start = uv_hrtime();

	b->result = store_write_batch(in->store, b->recs, b->n);
	b->commit_ns = uv_hrtime() - start;
}

/* Count `value` in the histogram bucket of `bounds` it falls in. */
static void
observe(uint64_t counts[INGEST_HISTOGRAM_BUCKETS + 1], const double *bounds, double value)
{
	size_t i = 0;

	while (i < INGEST_HISTOGRAM_BUCKETS && value > bounds[i]) {
		i++;
	}
	counts[i]++;
}

/*
 * Disk trouble. A failed commit leaves the store as it was (store.h): the batch is answered
 * RETRY_LATER and councils resend it, so the broker recovers by itself with the first commit
 * that succeeds once space is back. What is done here: tell a full disk (LMDB reports the
 * short write as -EIO) from a full map and from an I/O error, log each failing episode once
 * when it starts and once when it ends, and watch free space against min_free_bytes.
 */
static enum ingest_failure
classify_failure(struct ingest *in, const struct batch *b)
{
	uint64_t bytes = 0;
	uint64_t free_bytes;

	if (b->result == -ENOSPC) {
		return INGEST_FAILURE_MAP_FULL;
	}
	if (b->result != -EIO || store_disk_free(in->cfg->state_dir, &free_bytes) < 0) {
		return INGEST_FAILURE_IO;
	}
	for (size_t i = 0; i < b->n; i++) {
		bytes += b->recs[i].envelope_len;
	}
	in->counters.disk_free_bytes = free_bytes;
	return free_bytes < INGEST_DISK_FULL_SLACK + 4 * bytes ? INGEST_FAILURE_DISK_FULL
	                                                       : INGEST_FAILURE_IO;
}

/* Look at free space (at most every INGEST_DISK_CHECK_MS); returns whether disk_low
 * changed. */
static bool
check_disk(struct ingest *in, bool force)
{
	struct ingest_counters *c = &in->counters;
	uint64_t now = uv_now(in->loop);
	uint64_t min_free = in->cfg->store.min_free_bytes;
	uint64_t free_bytes;

	if ((!force && now < in->next_disk_check) ||
	    store_disk_free(in->cfg->state_dir, &free_bytes) < 0) {
		return false;
	}
	in->next_disk_check = now + INGEST_DISK_CHECK_MS;
	c->disk_free_bytes = free_bytes;
	bool low = min_free > 0 && free_bytes < min_free;
	if (low == c->disk_low) {
		return false;
	}
	c->disk_low = low;
	if (low) {
		log_warning("Low disk space under '%s': %" PRIu64 " MiB free, below min_free_bytes "
		            "(%" PRIu64 " MiB); free some space before the store fills the disk",
		            in->cfg->state_dir, free_bytes >> 20, min_free >> 20);
	} else {
		log_notice("Disk space under '%s' is back above min_free_bytes: %" PRIu64
		           " MiB free",
		           in->cfg->state_dir, free_bytes >> 20);
	}
	return true;
}

static void
note_commit(struct ingest *in, const struct batch *b)
{
	struct ingest_counters *c = &in->counters;
	bool changed = false;

	if (b->result < 0) {
		enum ingest_failure cause = classify_failure(in, b);

		c->commit_failures[cause]++;
		in->episode_batches++;
		in->episode_messages += b->n;
		if (!c->store_failing || c->failing_cause != cause) {
			changed = true;
			if (cause == INGEST_FAILURE_DISK_FULL) {
				log_error("Disk full under '%s' (%" PRIu64 " bytes free): commits "
				          "fail, answering RETRY_LATER until space is freed; the "
				          "store is unchanged",
				          in->cfg->state_dir, c->disk_free_bytes);
			} else if (cause == INGEST_FAILURE_MAP_FULL) {
				log_error(
				        "Store full: its map reached [store] map_size_max (%" PRIu64
				        " MiB); answering RETRY_LATER; raise map_size_max and "
				        "restart coordd",
				        in->cfg->store.map_size_max >> 20);
			} else if (b->result == -ENOTRECOVERABLE) {
				log_error("The store cannot commit any more after an I/O error; "
				          "answering RETRY_LATER; restart coordd (the store on "
				          "disk is intact)");
			} else {
				log_error_errno(b->result,
				                "Failed to commit to the store, answering "
				                "RETRY_LATER until commits succeed");
			}
		} else {
			log_debug("Commit of %zu messages failed again, answering RETRY_LATER",
			          b->n);
		}
		c->store_failing = true;
		c->failing_cause = cause;
	} else if (c->store_failing) {
		log_notice("Store writable again after %" PRIu64 " failed commits (%" PRIu64
		           " messages answered RETRY_LATER)",
		           in->episode_batches, in->episode_messages);
		c->store_failing = false;
		in->episode_batches = in->episode_messages = 0;
		changed = true;
	}
	/* Space is looked at on every failure, and when the store recovers. */
	changed |= check_disk(in, b->result < 0 || changed);
	if (changed && in->state_fn) {
		in->state_fn(in->state_data, c);
	}
}

static void
ack_batch(struct ingest *in, struct batch *b)
{
	Coord__V1__Reason fail_reason = COORD__V1__REASON__REASON_STORE_ERROR;
	const char *fail_text = "the store failed to commit; nothing was stored";

	note_commit(in, b);
	if (b->result < 0 && in->counters.failing_cause == INGEST_FAILURE_MAP_FULL) {
		fail_reason = COORD__V1__REASON__REASON_STORE_FULL;
		fail_text = "the store reached its configured maximum size; nothing was stored";
	} else if (b->result < 0 && in->counters.failing_cause == INGEST_FAILURE_DISK_FULL) {
		fail_reason = COORD__V1__REASON__REASON_STORE_FULL;
		fail_text = "the disk holding the store is full; nothing was stored";
	}
	if (b->result >= 0) {
		static const double batch_bounds[] = INGEST_BATCH_BOUNDS;
		static const double commit_bounds[] = INGEST_COMMIT_BOUNDS;
		double seconds = (double) b->commit_ns / 1e9;

		in->counters.batches++;
		observe(in->counters.batch_size_counts, batch_bounds, (double) b->n);
		in->counters.batch_size_sum += (double) b->n;
		observe(in->counters.commit_seconds_counts, commit_bounds, seconds);
		in->counters.commit_seconds_sum += seconds;
	}

	for (size_t i = 0; i < b->n; i++) {
		struct store_record *rec = &b->recs[i];
		Coord__V1__Ack ack = COORD__V1__ACK__INIT;

		ack.msg_id = b->msgs[i].msg_id;
		ack.revision = rec->revision;
		if (b->result < 0) {
			ack.status = COORD__V1__ACK_STATUS__ACK_STATUS_RETRY_LATER;
			ack.reason = fail_reason;
			ack.message = (char *) fail_text;
			in->counters.retry_later++;
		} else {
			ack.status = rec->status;
			ack.reason = rec->reason;
			ack.seq = rec->seq;
			switch (rec->status) {
			case COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED:
				in->counters.accepted++;
				break;
			case COORD__V1__ACK_STATUS__ACK_STATUS_DUPLICATE:
				in->counters.duplicate++;
				break;
			default:
				ack.message = "a retraction of a record that was never stored";
				in->counters.rejected++;
				in->counters.rejected_by_reason[(unsigned) rec->reason % 32]++;
				break;
			}
		}
		send_ack(in, &b->msgs[i].rid, &ack);
		limiter_release(in->limiter, b->msgs[i].sender, uv_now(in->loop));
		b->msgs[i].sender = NULL;
	}
	if (b->result < 0 || !in->on_accepted) {
		return;
	}
	for (size_t i = 0; i < b->n; i++) {
		const struct store_record *rec = &b->recs[i];
		if (rec->status != COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED) {
			continue;
		}
		const struct ingest_accepted acc = {
		        .seq = rec->seq,
		        .council = rec->council,
		        .msg_id = rec->msg_id,
		        .revision = rec->revision,
		        .body = b->msgs[i].body_case,
		        .envelope = rec->envelope,
		        .envelope_len = rec->envelope_len,
		        .received_at = rec->received_at,
		};
		in->on_accepted(in->accepted_data, &acc);
	}
}

/* The zuv and the zmon are both closed: close the socket and report. */
static void
on_part_closed(struct ingest *in)
{
	if (--in->closing_parts > 0) {
		return;
	}
	(void) zmq_close(in->sock);
	in->sock = NULL;
	if (in->stop_cb) {
		in->stop_cb(in->stop_data);
	}
}

static void
on_zuv_closed(struct zuv *z)
{
	struct ingest *in = container_of(z, struct ingest, zuv);

	in->zuv_started = false;
	on_part_closed(in);
}

static void
on_zmon_closed(void *data)
{
	on_part_closed(data);
}

static void
on_gather_closed(uv_handle_t *h)
{
	on_part_closed(container_of((uv_poll_t *) h, struct ingest, gather_poll));
}

/* After a stop request: close once everything received has been committed and acked. */
static void
maybe_finish(struct ingest *in)
{
	if (!in->stopping || in->closing || in->committing || in->pending > 0) {
		return;
	}
	in->closing = true;
	in->closing_parts = 1;
	if (in->zmon) {
		in->closing_parts++;
		zmon_close(in->zmon, on_zmon_closed, in);
		in->zmon = NULL;
	}
	if (in->gather_open) {
		in->closing_parts++;
		in->gather_open = false;
		uv_close((uv_handle_t *) &in->gather_poll, on_gather_closed);
	}
	zuv_close(&in->zuv, on_zuv_closed);
}

/*
 * Group commit gathers what arrives while a batch commits; but when the senders wait for
 * each ack before sending again (one message in flight each), the batch that arrived
 * during a commit is only the other half of them, and the half just acked misses it by a
 * round trip: the senders split into two groups that take turns, each waiting for the
 * other's commit. So when a commit returns and the next batch holds fewer messages than it
 * plus the batch just committed (every sender answered may send again), the writer waits
 * for that many, at most half the last commit's duration (INGEST_GATHER_MAX_NS at most),
 * and then commits whatever is there. Only small batches wait (INGEST_GATHER_MAX_BATCH);
 * a queued batch or a stop never waits.
 * Returns whether it waits (then maybe_submit() submits once the target is reached, and
 * on_gather_timeout() when the time is up).
 */
static bool
gather_arm(struct ingest *in, const struct batch *done)
{
	size_t have = in->filling ? in->filling->n : 0;
	size_t target = have + done->n;
	uint64_t wait_ns = done->commit_ns / INGEST_GATHER_DIV;

	if (target > in->cfg->ingest.max_batch) {
		target = in->cfg->ingest.max_batch;
	}
	if (!in->gather_open || in->stopping || in->queue_head || done->result < 0 ||
	    have >= target || target > INGEST_GATHER_MAX_BATCH || wait_ns == 0) {
		return false;
	}
	if (wait_ns > INGEST_GATHER_MAX_NS) {
		wait_ns = INGEST_GATHER_MAX_NS;
	}
	struct itimerspec its = {
	        .it_value = {.tv_sec = 0, .tv_nsec = (long) wait_ns},
	};
	if (timerfd_settime(in->gather_fd, 0, &its, NULL) < 0) {
		return false;
	}
	in->gathering = true;
	in->gather_target = target;
	in->counters.gathers++;
	return true;
}

/* Disarm the gathering timer. */
static void
gather_stop(struct ingest *in)
{
	const struct itimerspec off = {0};

	in->gathering = false;
	(void) timerfd_settime(in->gather_fd, 0, &off, NULL);
}

static void
on_gather_timeout(uv_poll_t *h, int status, int events)
{
	struct ingest *in = container_of(h, struct ingest, gather_poll);
	uint64_t expirations;

	(void) status;
	(void) events;
	/* Nothing to read: the wait this expiry belonged to ended (timerfd_settime() resets
	 * the count), and a new one may have begun. */
	if (read(in->gather_fd, &expirations, sizeof(expirations)) != sizeof(expirations) ||
	    !in->gathering) {
		return;
	}
	gather_stop(in);
	maybe_submit(in);
}

static void
after_commit(uv_work_t *req, int status)
{
	struct ingest *in = container_of(req, struct ingest, work);
	struct batch *b = in->committing;

	in->committing = NULL;
	/* Hand the writer the next batch before answering this one: it commits while the loop
	 * sends these acks and publishes these records, instead of waiting for them; unless
	 * the batch would be short of the senders these acks answer (gather_arm()). */
	if (!gather_arm(in, b)) {
		maybe_submit(in);
	}
	ack_batch(in, b);
	batch_recycle(in, b);
	maybe_resume(in);
	maybe_finish(in);
}

/* Read again once the backlog is below max_pending (and not stopping). */
static void
maybe_resume(struct ingest *in)
{
	if (in->paused && !in->stopping && in->pending < in->cfg->ingest.max_pending) {
		in->paused = false;
		zuv_resume(&in->zuv);
	}
}

static void
maybe_submit(struct ingest *in)
{
	if (in->committing) {
		return;
	}
	if (in->gathering) {
		bool full = in->filling && in->filling->n >= in->gather_target;
		if (!full && !in->stopping && !in->queue_head) {
			return;
		}
		gather_stop(in);
		in->counters.gathers_full += full;
	}
	struct batch *b = in->queue_head;
	if (b) {
		in->queue_head = b->next;
		if (!in->queue_head) {
			in->queue_tail = NULL;
		}
	} else if (in->filling && in->filling->n > 0) {
		b = in->filling;
		in->filling = NULL;
	} else {
		return;
	}
	in->pending -= b->n;
	in->committing = b;
	int r = uv_queue_work(in->loop, &in->work, commit_work, after_commit);
	if (r < 0) {
		/* Cannot happen with valid arguments; answer rather than lose the batch. */
		b->result = -EIO;
		in->committing = NULL;
		ack_batch(in, b);
		batch_recycle(in, b);
		return;
	}
	maybe_resume(in);
}

static int
set_int(void *sock, int option, int value)
{
	return zmq_setsockopt(sock, option, &value, sizeof(value)) < 0 ? -zmq_errno() : 0;
}

/* The per-sender limits of a config (limiter.h). */
static struct limiter_options
limiter_options_of(const struct config *cfg)
{
	return (struct limiter_options){
	        .max_inflight = cfg->ingest.max_inflight_per_council,
	        .rate = cfg->ingest.rate_limit,
	        .burst = cfg->ingest.rate_burst,
	};
}

/* The gathering timer (gather_arm()); without it (no timerfd) batches never wait. */
static void
gather_open(struct ingest *in)
{
	in->gather_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (in->gather_fd < 0) {
		log_warning_errno(-errno, "Failed to create a timerfd, batches will not wait "
		                          "for the senders just acked");
		return;
	}
	int r = uv_poll_init(in->loop, &in->gather_poll, in->gather_fd);
	if (r >= 0) {
		in->gather_open = true;
		r = uv_poll_start(&in->gather_poll, UV_READABLE, on_gather_timeout);
		if (r < 0) {
			in->gather_open = false;
			uv_close((uv_handle_t *) &in->gather_poll, NULL);
		}
	}
	if (r < 0) {
		log_warning_errno(r, "Failed to watch a timerfd, batches will not wait for the "
		                     "senders just acked");
	}
}

int
ingest_new(uv_loop_t *loop, void *zctx, struct auth *auth, struct store *store, struct config *cfg,
           ingest_accepted_fn *on_accepted, void *data, struct ingest **ret_ingest)
{
	struct ingest *in = calloc(1, sizeof(*in));
	int r;

	if (!in) {
		return -ENOMEM;
	}
	in->loop = loop;
	in->gather_fd = -1;
	in->store = store;
	in->cfg = config_ref(cfg);
	in->auth = auth;
	in->curve = cfg->ingest.security == CONFIG_SECURITY_CURVE;
	in->on_accepted = on_accepted;
	in->accepted_data = data;

	const struct limiter_options lo = limiter_options_of(cfg);
	r = limiter_new(&lo, &in->limiter);
	if (r < 0) {
		goto fail;
	}

	in->sock = zmq_socket(zctx, ZMQ_ROUTER);
	if (!in->sock) {
		r = -zmq_errno();
		goto fail;
	}
	/* Frames far above the limit are dropped by libzmq with the connection, so a peer
	 * cannot make us allocate without bound; frames up to the drop limit get REJECTED. */
	int64_t maxmsg = (int64_t) cfg->ingest.max_message_bytes * 4;
	if (maxmsg < INGEST_DROP_LIMIT_MIN) {
		maxmsg = INGEST_DROP_LIMIT_MIN;
	}
	r = set_int(in->sock, ZMQ_LINGER, INGEST_LINGER_MS);
	if (r >= 0) {
		r = set_int(in->sock, ZMQ_SNDHWM, (int) cfg->ingest.hwm);
	}
	if (r >= 0) {
		r = set_int(in->sock, ZMQ_RCVHWM, (int) cfg->ingest.hwm);
	}
	/* An Ack that cannot be queued (the peer is gone, or it does not read and its queue is
	 * at hwm) fails the send instead of vanishing silently, so send_ack() counts it. */
	if (r >= 0) {
		r = set_int(in->sock, ZMQ_ROUTER_MANDATORY, 1);
	}
	if (r >= 0 && zmq_setsockopt(in->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg)) < 0) {
		r = -zmq_errno();
	}
	if (r >= 0) {
		r = auth_socket_setup(auth, in->sock, AUTH_DOMAIN_INGEST, in->curve);
	}
	/* Monitored before binding, so that no accepted connection goes uncounted. */
	if (r >= 0) {
		r = zmon_new(loop, zctx, in->sock, "ingest", &in->zmon);
	}
	if (r >= 0 && zmq_bind(in->sock, cfg->ingest.endpoint) < 0) {
		r = -zmq_errno();
	}
	if (r < 0) {
		goto fail;
	}
	r = zuv_init(loop, &in->zuv, in->sock, INGEST_RECV_BUDGET, on_readable, in);
	if (r < 0) {
		goto fail;
	}
	in->zuv_started = true;
	gather_open(in);
	(void) check_disk(in, true);
	*ret_ingest = in;
	return 0;
fail:
	ingest_free(in);
	return r;
}

void
ingest_stop(struct ingest *in, void (*done)(void *data), void *data)
{
	in->stopping = true;
	in->stop_cb = done;
	in->stop_data = data;
	in->paused = true;
	zuv_pause(&in->zuv);
	/* Whatever was received is committed now rather than at the batch's end. */
	maybe_submit(in);
	maybe_finish(in);
}

void
ingest_set_state_fn(struct ingest *in, ingest_state_fn *fn, void *data)
{
	in->state_fn = fn;
	in->state_data = data;
}

void
ingest_set_config(struct ingest *in, struct config *cfg)
{
	struct config *old = in->cfg;
	const struct limiter_options lo = limiter_options_of(cfg);

	/* config_load() checked the ranges, so the limiter takes them. */
	(void) limiter_set_options(in->limiter, &lo);
	in->cfg = config_ref(cfg);
	config_unref(old);
}

void
ingest_get_counters(const struct ingest *in, struct ingest_counters *ret_counters)
{
	*ret_counters = in->counters;
	ret_counters->senders = in->limiter ? limiter_senders(in->limiter) : 0;
}

uint32_t
ingest_connections(const struct ingest *in)
{
	return zmon_connections(in->zmon);
}

static void
free_batch_list(struct ingest *in, struct batch *b)
{
	while (b) {
		struct batch *next = b->next;

		for (size_t i = 0; i < b->n; i++) {
			(void) zmq_msg_close(&b->msgs[i].rid);
			(void) zmq_msg_close(&b->msgs[i].body);
		}
		batch_free(b);
		b = next;
	}
}

struct ingest *
ingest_free(struct ingest *in)
{
	if (!in) {
		return NULL;
	}
	/* Handles must be closed by now (ingest_stop); a failed ingest_new never started them
	 * or closed them itself. */
	/* A zmon left here belongs to a failed ingest_new(): its handles close on the next
	 * loop turns and free it. */
	zmon_close(in->zmon, NULL, NULL);
	in->zmon = NULL;
	if (in->sock) {
		(void) zmq_close(in->sock);
	}
	if (in->gather_fd >= 0) {
		(void) close(in->gather_fd);
	}
	if (in->filling) {
		in->filling->next = NULL;
	}
	free_batch_list(in, in->filling);
	free_batch_list(in, in->queue_head);
	batch_free(in->spare);
	/* After the batches: their messages' slots die with it, unreleased. */
	in->limiter = limiter_free(in->limiter);
	config_unref(in->cfg);
	free(in);
	return NULL;
}

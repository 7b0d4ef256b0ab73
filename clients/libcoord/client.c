/*
 * client: libcoord's client handle, its push path and its sender thread.
 *
 * Push path (any thread): unpack the Envelope to learn its key, commit it to the outbox
 * (outbox.c), refresh the shared counters, wake the sender through an eventfd.
 *
 * Sender thread (one per client) owns the ZeroMQ DEALER socket and its monitor. It keeps a
 * window of at most max_in_flight records in memory ("slots", each with a copy of the
 * bytes). A slot is UNSENT (to be sent when the socket can take it), SENT (waiting for its
 * Ack until a deadline) or BACKOFF (RETRY_LATER: waiting until a time to become UNSENT).
 * The window is refilled by scanning the outbox forward from `scan_seq`, the highest outbox
 * seq taken so far; so every waiting record with seq <= scan_seq is in a slot, and on
 * start (scan_seq 0) everything left from earlier runs is sent first.
 *
 * Ordering: at most one revision of a msg_id is in the window at a time, and the scan
 * stops at a record whose msg_id is busy. A correction or retraction queued behind its
 * record is therefore sent only after the record was answered, so the broker never sees a
 * retraction of a record it has not stored yet.
 *
 * Acks are read in batches; the final ones of a batch are applied in one outbox
 * transaction (delete, or move to `rejected`), then reported to the ack callback, then the
 * slots are freed and the window refilled.
 *
 * Losing the connection: the socket has ZMQ_IMMEDIATE, so nothing is queued towards a
 * broker that is not connected. A DISCONNECTED event from the monitor marks every SENT slot
 * UNSENT (its frame may be lost); they are resent when the socket can send again. A SENT
 * slot whose Ack does not come within ack_timeout_ms makes the thread close the socket and
 * open a new one (a half-open connection, a broker that dropped the frame), and resend the
 * whole window. libzmq reconnects with exponential backoff between backoff_min_ms and
 * backoff_max_ms. Resending is safe: the broker answers a second copy with DUPLICATE.
 *
 * A handshake the broker refuses (a CURVE key it does not know, keys on one side only) is
 * seen in the monitor's events and kept as `handshake_error` for coord_connection_error();
 * the thread goes on as for any lost connection, since the broker's keys file may change.
 *
 * Shared state (counters, the fatal error) is under `mu`; flush waits on `cond`. Counts of
 * waiting and rejected records are re-read from the outbox under `mu` after every commit,
 * so the last reader always saw the last commit.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "coord.h"
#include "idrule.h"
#include "outbox.h"
#include "record.h"
#include "wire-names.h"
#include "wire.h"

/* coord.h is installed on its own, so it spells the id limits out: they are idrule.h's. */
_Static_assert(COORD_COUNCIL_MAX == IDRULE_ID_MAX, "coord.h's council id limit");
_Static_assert(COORD_MSG_ID_MAX == IDRULE_MSG_ID_MAX, "coord.h's msg_id limit");

#define DEFAULT_MAX_IN_FLIGHT 256
#define MAX_IN_FLIGHT_LIMIT 10000
#define DEFAULT_ACK_TIMEOUT_MS 10000
#define DEFAULT_BACKOFF_MIN_MS 100
#define DEFAULT_BACKOFF_MAX_MS 30000
#define DEFAULT_OUTBOX_BYTES (UINT64_C(1) << 30)
/* Acks taken from the socket per outbox transaction. */
#define ACK_BATCH 512
/* The largest Ack frame read; a real one is a few hundred bytes. */
#define ACK_FRAME_MAX 4096
/* ZMTP heartbeats detect a dead TCP peer without waiting for an ack timeout. */
#define HEARTBEAT_IVL_MS 5000
#define HEARTBEAT_TIMEOUT_MS 15000
#define Z85_KEY_LEN 40

enum slot_state {
	SLOT_FREE,
	SLOT_UNSENT,
	SLOT_SENT,
	SLOT_BACKOFF,
};

struct slot {
	enum slot_state state;
	uint64_t seq;
	uint32_t revision;
	uint32_t hash; /* of msg_id */
	int next;      /* next slot in the hash chain, -1 at the end */
	unsigned retries;
	int64_t deadline; /* SENT: ack timeout; BACKOFF: resend time (monotonic ms) */
	uint8_t *bytes;
	size_t len;
	char msg_id[COORD_MSG_ID_MAX + 1];
};

struct coord_client {
	/* Set by coord_client_new(), then read-only. */
	char council[COORD_COUNCIL_MAX + 1];
	char *endpoint;
	char curve_server[Z85_KEY_LEN + 1];
	char curve_public[Z85_KEY_LEN + 1];
	char curve_secret[Z85_KEY_LEN + 1];
	bool curve;
	uint32_t max_in_flight;
	uint32_t ack_timeout_ms;
	uint32_t backoff_min_ms;
	uint32_t backoff_max_ms;
	coord_ack_fn *on_ack;
	void *userdata;
	bool offline;
	struct coord__outbox *outbox;
	int wake_fd;

	/* Sender thread only (handed over at pthread_create()). */
	void *zctx;
	void *sock;
	void *mon;
	unsigned mon_serial;
	bool connected;
	bool ever_connected;
	uint64_t rng;
	bool can_send; /* the last send did not hit EAGAIN */
	struct slot *slots;
	int *buckets;
	uint32_t n_buckets; /* a power of two */
	uint32_t n_used;
	uint64_t scan_seq;
	bool scan_more;
	struct coord_stats local;  /* the thread's counters, published under mu */
	int local_handshake_error; /* published under mu as handshake_error */

	pthread_t thread;
	bool thread_started;
	atomic_bool stop;

	/* Shared, under mu. */
	pthread_mutex_t mu;
	pthread_cond_t cond;
	struct coord_stats stats;
	int fatal;
	int handshake_error; /* coord_connection_error() */
};

static int64_t
mono_ms(void)
{
	struct timespec ts;
	(void) clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
coord_options_init(struct coord_options *opts)
{
	*opts = (struct coord_options){
	        .endpoint = NULL,
	        .max_in_flight = DEFAULT_MAX_IN_FLIGHT,
	        .ack_timeout_ms = DEFAULT_ACK_TIMEOUT_MS,
	        .backoff_min_ms = DEFAULT_BACKOFF_MIN_MS,
	        .backoff_max_ms = DEFAULT_BACKOFF_MAX_MS,
	        .outbox_max_bytes = DEFAULT_OUTBOX_BYTES,
	};
}

static int
copy_key(char dst[Z85_KEY_LEN + 1], const char *z85)
{
	uint8_t bin[32];
	/* zmq_z85_decode() writes strlen * 4 / 5 bytes: check the length first. */
	if (z85 == NULL || strnlen(z85, Z85_KEY_LEN + 1) != Z85_KEY_LEN ||
	    zmq_z85_decode(bin, z85) == NULL) {
		return -EINVAL;
	}
	explicit_bzero(bin, sizeof(bin));
	memcpy(dst, z85, Z85_KEY_LEN + 1);
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Shared counters */

/* Re-read the outbox counts and publish the thread's counters; wake flush waiters. */
static int
publish_counts(struct coord_client *c, const struct coord_stats *local)
{
	uint64_t waiting = 0, rejected = 0;
	(void) pthread_mutex_lock(&c->mu);
	int r = coord__outbox_count(c->outbox, &waiting, &rejected);
	if (r == 0) {
		c->stats.waiting = waiting;
		c->stats.rejected = rejected;
	}
	if (local != NULL) {
		uint64_t w = c->stats.waiting, rj = c->stats.rejected;
		c->stats = *local;
		c->stats.waiting = w;
		c->stats.rejected = rj;
		c->handshake_error = c->local_handshake_error;
	}
	(void) pthread_cond_broadcast(&c->cond);
	(void) pthread_mutex_unlock(&c->mu);
	return r;
}

static void
set_fatal(struct coord_client *c, int err)
{
	(void) pthread_mutex_lock(&c->mu);
	if (c->fatal == 0) {
		c->fatal = err;
	}
	(void) pthread_cond_broadcast(&c->cond);
	(void) pthread_mutex_unlock(&c->mu);
}

/* ------------------------------------------------------------------------------------------ */
/* The window: slots and their hash on msg_id */

static uint32_t
hash_id(const char *s)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (; *s != '\0'; s++) {
		h = (h ^ (uint8_t) *s) * 16777619u;
	}
	return h;
}

/* The slot holding (msg_id, revision), or -1; with revision 0, any revision of msg_id. */
static int
slot_find(const struct coord_client *c, const char *msg_id, uint32_t revision)
{
	uint32_t h = hash_id(msg_id);
	for (int i = c->buckets[h & (c->n_buckets - 1)]; i >= 0; i = c->slots[i].next) {
		const struct slot *s = &c->slots[i];
		if (s->hash == h && (revision == 0 || s->revision == revision) &&
		    strcmp(s->msg_id, msg_id) == 0) {
			return i;
		}
	}
	return -1;
}

static void
slot_release(struct coord_client *c, int i)
{
	struct slot *s = &c->slots[i];
	int *link = &c->buckets[s->hash & (c->n_buckets - 1)];
	while (*link != i) {
		link = &c->slots[*link].next;
	}
	*link = s->next;
	free(s->bytes);
	*s = (struct slot){.state = SLOT_FREE, .next = -1};
	c->n_used--;
}

/* Scan callback: take waiting records into free slots. Returns 1 to stop the scan. */
static int
take_record(void *userdata, const struct coord__outbox_record *rec)
{
	struct coord_client *c = userdata;
	if (c->n_used >= c->max_in_flight || slot_find(c, rec->msg_id, 0) >= 0) {
		return 1;
	}
	int free_slot = -1;
	for (uint32_t i = 0; i < c->max_in_flight; i++) {
		if (c->slots[i].state == SLOT_FREE) {
			free_slot = (int) i;
			break;
		}
	}
	if (free_slot < 0) {
		return 1;
	}
	uint8_t *copy = malloc(rec->len);
	if (copy == NULL) {
		return -ENOMEM;
	}
	memcpy(copy, rec->bytes, rec->len);
	struct slot *s = &c->slots[free_slot];
	uint32_t h = hash_id(rec->msg_id);
	*s = (struct slot){
	        .state = SLOT_UNSENT,
	        .seq = rec->seq,
	        .revision = rec->revision,
	        .hash = h,
	        .next = c->buckets[h & (c->n_buckets - 1)],
	        .bytes = copy,
	        .len = rec->len,
	};
	(void) snprintf(s->msg_id, sizeof(s->msg_id), "%s", rec->msg_id);
	c->buckets[h & (c->n_buckets - 1)] = free_slot;
	c->n_used++;
	c->scan_seq = rec->seq;
	return 0;
}

static int
fill_window(struct coord_client *c)
{
	if (!c->scan_more || c->n_used >= c->max_in_flight) {
		return 0;
	}
	int r = coord__outbox_scan(c->outbox, c->scan_seq, take_record, c);
	if (r < 0) {
		return r;
	}
	/* Stopped early (window full, or a busy msg_id): look again after the next Ack. */
	c->scan_more = r > 0;
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The socket */

static void
close_socket(struct coord_client *c)
{
	if (c->mon != NULL) {
		(void) zmq_close(c->mon);
		c->mon = NULL;
	}
	if (c->sock != NULL) {
		(void) zmq_socket_monitor(c->sock, NULL, 0);
		(void) zmq_close(c->sock);
		c->sock = NULL;
	}
	c->connected = false;
}

static int
set_int(void *sock, int option, int value)
{
	return zmq_setsockopt(sock, option, &value, sizeof(value)) < 0 ? -zmq_errno() : 0;
}

static int
open_socket(struct coord_client *c)
{
	int r = 0;
	c->sock = zmq_socket(c->zctx, ZMQ_DEALER);
	if (c->sock == NULL) {
		return -zmq_errno();
	}
	int64_t maxmsg = ACK_FRAME_MAX;
	int reconnect_max = (int) (c->backoff_max_ms > INT_MAX ? INT_MAX : c->backoff_max_ms);
	r = set_int(c->sock, ZMQ_LINGER, 0);
	if (r == 0) {
		r = set_int(c->sock, ZMQ_IMMEDIATE, 1);
	}
	if (r == 0) {
		r = set_int(c->sock, ZMQ_SNDHWM, (int) c->max_in_flight + 16);
	}
	if (r == 0) {
		r = set_int(c->sock, ZMQ_RCVHWM, (int) c->max_in_flight * 4 + 1000);
	}
	if (r == 0) {
		r = set_int(c->sock, ZMQ_RECONNECT_IVL, (int) c->backoff_min_ms);
	}
	if (r == 0) {
		r = set_int(c->sock, ZMQ_RECONNECT_IVL_MAX, reconnect_max);
	}
	if (r == 0) {
		r = set_int(c->sock, ZMQ_HEARTBEAT_IVL, HEARTBEAT_IVL_MS);
	}
	if (r == 0) {
		r = set_int(c->sock, ZMQ_HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS);
	}
	if (r == 0 && zmq_setsockopt(c->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof(maxmsg)) < 0) {
		r = -zmq_errno();
	}
	if (r == 0 && c->curve) {
		/* Z85 keys are passed as 41 bytes: 40 characters and the NUL. */
		if (zmq_setsockopt(c->sock, ZMQ_CURVE_SERVERKEY, c->curve_server, Z85_KEY_LEN + 1) <
		            0 ||
		    zmq_setsockopt(c->sock, ZMQ_CURVE_PUBLICKEY, c->curve_public, Z85_KEY_LEN + 1) <
		            0 ||
		    zmq_setsockopt(c->sock, ZMQ_CURVE_SECRETKEY, c->curve_secret, Z85_KEY_LEN + 1) <
		            0) {
			r = -zmq_errno();
		}
	}
	char mon_ep[64];
	(void) snprintf(mon_ep, sizeof(mon_ep), "inproc://coord-monitor-%u", c->mon_serial++);
	if (r == 0 && zmq_socket_monitor(c->sock, mon_ep,
	                                 ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED |
	                                         ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
	                                         ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
	                                         ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) < 0) {
		r = -zmq_errno();
	}
	if (r == 0) {
		c->mon = zmq_socket(c->zctx, ZMQ_PAIR);
		if (c->mon == NULL) {
			r = -zmq_errno();
		}
	}
	if (r == 0) {
		r = set_int(c->mon, ZMQ_LINGER, 0);
	}
	if (r == 0 && zmq_connect(c->mon, mon_ep) < 0) {
		r = -zmq_errno();
	}
	if (r == 0 && zmq_connect(c->sock, c->endpoint) < 0) {
		r = -zmq_errno();
	}
	if (r < 0) {
		close_socket(c);
		return r;
	}
	c->can_send = true;
	return 0;
}

/* Mark every SENT slot UNSENT: its frame or its Ack may be lost. */
static void
resend_all(struct coord_client *c)
{
	for (uint32_t i = 0; i < c->max_in_flight; i++) {
		if (c->slots[i].state == SLOT_SENT) {
			c->slots[i].state = SLOT_UNSENT;
		}
	}
}

static void
read_monitor(struct coord_client *c)
{
	for (;;) {
		zmq_msg_t ev;
		zmq_msg_init(&ev);
		if (zmq_msg_recv(&ev, c->mon, ZMQ_DONTWAIT) < 0) {
			zmq_msg_close(&ev);
			return;
		}
		uint16_t event = 0;
		uint32_t value = 0;
		/* A 16-bit event and a 32-bit value (the ZAP status, the protocol error). */
		if (zmq_msg_size(&ev) >= sizeof(event) + sizeof(value)) {
			memcpy(&event, zmq_msg_data(&ev), sizeof(event));
			memcpy(&value, (const uint8_t *) zmq_msg_data(&ev) + sizeof(event),
			       sizeof(value));
		}
		/* The second frame (the endpoint) follows; drain the rest of the message. */
		while (zmq_msg_more(&ev)) {
			if (zmq_msg_recv(&ev, c->mon, 0) < 0) {
				break;
			}
		}
		zmq_msg_close(&ev);
		if (event == ZMQ_EVENT_HANDSHAKE_SUCCEEDED) {
			if (c->ever_connected) {
				c->local.reconnects++;
			}
			c->ever_connected = true;
			c->connected = true;
			c->can_send = true;
			c->local_handshake_error = 0;
		} else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
			c->local_handshake_error = -EACCES;
		} else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL &&
		           value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) {
			c->local_handshake_error = -EPROTONOSUPPORT;
		} else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL &&
		           c->local_handshake_error == 0) {
			/* Closed in the handshake with nothing said. A CURVE broker may close a
			 * plain client before the client has read the broker's greeting (so no
			 * MECHANISM_MISMATCH here); a more specific error seen before stays. */
			c->local_handshake_error = -ECONNRESET;
		} else if (event == ZMQ_EVENT_DISCONNECTED) {
			c->connected = false;
			resend_all(c);
		}
	}
}

static void
send_unsent(struct coord_client *c, int64_t now)
{
	for (uint32_t i = 0; c->can_send && i < c->max_in_flight; i++) {
		struct slot *s = &c->slots[i];
		if (s->state != SLOT_UNSENT) {
			continue;
		}
		if (zmq_send(c->sock, s->bytes, s->len, ZMQ_DONTWAIT) < 0) {
			/* EAGAIN: not connected or the pipe is full; POLLOUT says when to go on. */
			c->can_send = false;
			break;
		}
		s->state = SLOT_SENT;
		s->deadline = now + c->ack_timeout_ms;
		c->local.sent++;
	}
}

/* xorshift64: jitter needs no quality, only no shared state. */
static uint64_t
next_random(uint64_t *state)
{
	uint64_t x = *state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*state = x;
	return x;
}

static int64_t
backoff_ms(struct coord_client *c, unsigned retries)
{
	int64_t d = c->backoff_min_ms;
	for (unsigned i = 1; i < retries && d < c->backoff_max_ms; i++) {
		d *= 2;
	}
	if (d > c->backoff_max_ms) {
		d = c->backoff_max_ms;
	}
	/* Up to a quarter of jitter, so that many clients do not come back in step. */
	return d - (int64_t) (next_random(&c->rng) % (uint64_t) (d / 4 + 1));
}

/* ------------------------------------------------------------------------------------------ */
/* Acks */

struct ack_batch {
	Coord__V1__Ack *acks[ACK_BATCH];
	struct coord__outbox_outcome outcomes[ACK_BATCH];
	Coord__V1__Ack *final[ACK_BATCH]; /* the Ack of each outcome */
	size_t n_acks;
	size_t n_outcomes;
};

static int
process_acks(struct coord_client *c, struct ack_batch *b, int64_t now)
{
	b->n_acks = 0;
	b->n_outcomes = 0;
	while (b->n_acks < ACK_BATCH) {
		zmq_msg_t m;
		zmq_msg_init(&m);
		if (zmq_msg_recv(&m, c->sock, ZMQ_DONTWAIT) < 0) {
			zmq_msg_close(&m);
			break;
		}
		bool more = zmq_msg_more(&m);
		Coord__V1__Ack *ack = NULL;
		if (!more && zmq_msg_size(&m) > 0) {
			ack = coord__v1__ack__unpack(NULL, zmq_msg_size(&m), zmq_msg_data(&m));
		}
		zmq_msg_close(&m);
		while (more) {
			/* Not an Ack (one frame): drain and drop the rest. */
			zmq_msg_init(&m);
			if (zmq_msg_recv(&m, c->sock, 0) < 0) {
				zmq_msg_close(&m);
				break;
			}
			more = zmq_msg_more(&m);
			zmq_msg_close(&m);
		}
		if (ack == NULL) {
			continue;
		}
		b->acks[b->n_acks++] = ack;
		int i = slot_find(c, ack->msg_id, ack->revision);
		if (i < 0 || ack->revision == 0) {
			continue; /* a late answer to a record already settled */
		}
		struct slot *s = &c->slots[i];
		switch (ack->status) {
		case COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED:
		case COORD__V1__ACK_STATUS__ACK_STATUS_DUPLICATE:
		case COORD__V1__ACK_STATUS__ACK_STATUS_REJECTED:
			b->outcomes[b->n_outcomes] = (struct coord__outbox_outcome){
			        .msg_id = s->msg_id,
			        .revision = s->revision,
			        .rejected =
			                ack->status == COORD__V1__ACK_STATUS__ACK_STATUS_REJECTED,
			        .reason = (int) ack->reason,
			        .message = ack->message,
			};
			b->final[b->n_outcomes++] = ack;
			break;
		default:
			/* RETRY_LATER, or a status this version does not know: try again later. */
			s->retries++;
			s->state = SLOT_BACKOFF;
			s->deadline = now + backoff_ms(c, s->retries);
			c->local.retry_later++;
			if (c->on_ack != NULL) {
				const struct coord_ack a = {
				        .msg_id = ack->msg_id,
				        .revision = ack->revision,
				        .status = COORD_STATUS_RETRY_LATER,
				        .reason = (int) ack->reason,
				        .message = ack->message != NULL ? ack->message : "",
				};
				c->on_ack(c->userdata, &a);
			}
			break;
		}
	}
	int r = coord__outbox_settle(c->outbox, b->outcomes, b->n_outcomes, coord__now_ms());
	if (r >= 0) {
		for (size_t k = 0; k < b->n_outcomes; k++) {
			const Coord__V1__Ack *ack = b->final[k];
			bool found = b->outcomes[k].found;
			int i = slot_find(c, ack->msg_id, ack->revision);
			if (i >= 0) {
				slot_release(c, i);
			}
			if (!found) {
				continue;
			}
			if (ack->status == COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED) {
				c->local.accepted++;
			} else if (ack->status == COORD__V1__ACK_STATUS__ACK_STATUS_DUPLICATE) {
				c->local.duplicate++;
			} else {
				c->local.rejections++;
			}
			if (c->on_ack != NULL) {
				const struct coord_ack a = {
				        .msg_id = ack->msg_id,
				        .revision = ack->revision,
				        .status = (enum coord_status) ack->status,
				        .seq = ack->seq,
				        .reason = (int) ack->reason,
				        .message = ack->message != NULL ? ack->message : "",
				};
				c->on_ack(c->userdata, &a);
			}
		}
		if (b->n_outcomes > 0) {
			c->scan_more = true;
		}
	}
	for (size_t k = 0; k < b->n_acks; k++) {
		coord__v1__ack__free_unpacked(b->acks[k], NULL);
	}
	return r < 0 ? r : (int) b->n_acks;
}

/* ------------------------------------------------------------------------------------------ */
/* The sender thread */

/* Expire deadlines; returns true when an ack timeout calls for a new connection. */
static bool
check_timers(struct coord_client *c, int64_t now)
{
	bool timed_out = false;
	for (uint32_t i = 0; i < c->max_in_flight; i++) {
		struct slot *s = &c->slots[i];
		if (s->state == SLOT_BACKOFF && s->deadline <= now) {
			s->state = SLOT_UNSENT;
		} else if (s->state == SLOT_SENT && s->deadline <= now) {
			timed_out = true;
		}
	}
	return timed_out;
}

static long
poll_timeout(const struct coord_client *c, int64_t now)
{
	int64_t next = -1;
	for (uint32_t i = 0; i < c->max_in_flight; i++) {
		const struct slot *s = &c->slots[i];
		if ((s->state == SLOT_SENT || s->state == SLOT_BACKOFF) &&
		    (next < 0 || s->deadline < next)) {
			next = s->deadline;
		}
	}
	if (next < 0) {
		return -1;
	}
	return next <= now ? 0 : (long) (next - now);
}

static bool
have_unsent(const struct coord_client *c)
{
	for (uint32_t i = 0; i < c->max_in_flight; i++) {
		if (c->slots[i].state == SLOT_UNSENT) {
			return true;
		}
	}
	return false;
}

static uint64_t
count_sent(const struct coord_client *c)
{
	uint64_t n = 0;
	for (uint32_t i = 0; i < c->max_in_flight; i++) {
		n += c->slots[i].state == SLOT_SENT;
	}
	return n;
}

static int
sender_loop(struct coord_client *c, struct ack_batch *batch)
{
	for (;;) {
		if (atomic_load(&c->stop)) {
			return 0;
		}
		int r = fill_window(c);
		if (r < 0) {
			return r;
		}
		int64_t now = mono_ms();
		send_unsent(c, now);
		c->local.in_flight = count_sent(c);
		c->local.connected = c->connected;
		r = publish_counts(c, &c->local);
		if (r < 0) {
			return r;
		}

		zmq_pollitem_t items[3] = {
		        {.socket = c->sock, .events = ZMQ_POLLIN},
		        {.socket = c->mon, .events = ZMQ_POLLIN},
		        {.socket = NULL, .fd = c->wake_fd, .events = ZMQ_POLLIN},
		};
		if (!c->can_send && have_unsent(c)) {
			items[0].events |= ZMQ_POLLOUT;
		}
		if (zmq_poll(items, 3, poll_timeout(c, now)) < 0) {
			if (zmq_errno() == EINTR) {
				continue;
			}
			return -zmq_errno();
		}
		if (items[2].revents & ZMQ_POLLIN) {
			uint64_t v;
			(void) read(c->wake_fd, &v, sizeof(v));
			c->scan_more = true;
		}
		if (items[1].revents & ZMQ_POLLIN) {
			read_monitor(c);
		}
		if (items[0].revents & ZMQ_POLLOUT) {
			c->can_send = true;
		}
		if (items[0].revents & ZMQ_POLLIN) {
			int got;
			do {
				got = process_acks(c, batch, mono_ms());
				if (got < 0) {
					return got;
				}
				r = fill_window(c);
				if (r < 0) {
					return r;
				}
				send_unsent(c, mono_ms());
			} while (got == ACK_BATCH && !atomic_load(&c->stop));
		}
		if (check_timers(c, mono_ms())) {
			/* No Ack within the timeout: assume the connection is broken (a half-open
			 * TCP connection, a frame the broker dropped) and start afresh. */
			close_socket(c);
			r = open_socket(c);
			if (r < 0) {
				return r;
			}
			resend_all(c);
		}
	}
}

static void *
sender_main(void *arg)
{
	struct coord_client *c = arg;
	struct ack_batch *batch = malloc(sizeof(*batch));
	int r = batch != NULL ? sender_loop(c, batch) : -ENOMEM;
	free(batch);
	close_socket(c);
	if (r < 0) {
		set_fatal(c, r);
	}
	return NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* Life cycle */

struct coord_client *
coord_client_free(struct coord_client *c)
{
	if (c == NULL) {
		return NULL;
	}
	if (c->thread_started) {
		atomic_store(&c->stop, true);
		uint64_t one = 1;
		(void) write(c->wake_fd, &one, sizeof(one));
		(void) pthread_join(c->thread, NULL);
	}
	close_socket(c);
	if (c->zctx != NULL) {
		(void) zmq_ctx_term(c->zctx);
	}
	if (c->wake_fd >= 0) {
		(void) close(c->wake_fd);
	}
	if (c->slots != NULL) {
		for (uint32_t i = 0; i < c->max_in_flight; i++) {
			free(c->slots[i].bytes);
		}
	}
	free(c->slots);
	free(c->buckets);
	(void) coord__outbox_free(c->outbox);
	free(c->endpoint);
	explicit_bzero(c->curve_secret, sizeof(c->curve_secret));
	(void) pthread_cond_destroy(&c->cond);
	(void) pthread_mutex_destroy(&c->mu);
	free(c);
	return NULL;
}

static int
check_options(const struct coord_options *o)
{
	if (!idrule_id_valid(o->council) || o->outbox_path == NULL || o->outbox_path[0] == '\0') {
		return -EINVAL;
	}
	if (o->endpoint != NULL && o->endpoint[0] == '\0') {
		return -EINVAL;
	}
	uint32_t lo = o->backoff_min_ms != 0 ? o->backoff_min_ms : DEFAULT_BACKOFF_MIN_MS;
	uint32_t hi = o->backoff_max_ms != 0 ? o->backoff_max_ms : DEFAULT_BACKOFF_MAX_MS;
	if (lo > hi || hi > INT_MAX / 2 || o->max_in_flight > MAX_IN_FLIGHT_LIMIT ||
	    o->ack_timeout_ms > INT_MAX / 2) {
		return -EINVAL;
	}
	bool any_key = o->curve_server_key != NULL || o->curve_public_key != NULL ||
	               o->curve_secret_key != NULL;
	bool all_keys = o->curve_server_key != NULL && o->curve_public_key != NULL &&
	                o->curve_secret_key != NULL;
	if (any_key && !all_keys) {
		return -EINVAL;
	}
	return 0;
}

static int
start_sender(struct coord_client *c)
{
	c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (c->wake_fd < 0) {
		return -errno;
	}
	c->n_buckets = 16;
	while (c->n_buckets < 2 * c->max_in_flight) {
		c->n_buckets *= 2;
	}
	c->slots = calloc(c->max_in_flight, sizeof(*c->slots));
	c->buckets = malloc(c->n_buckets * sizeof(*c->buckets));
	if (c->slots == NULL || c->buckets == NULL) {
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < c->n_buckets; i++) {
		c->buckets[i] = -1;
	}
	for (uint32_t i = 0; i < c->max_in_flight; i++) {
		c->slots[i].next = -1;
	}
	c->zctx = zmq_ctx_new();
	if (c->zctx == NULL) {
		return -zmq_errno();
	}
	/* Connect here, so that a bad endpoint fails coord_client_new(), not the thread. */
	int r = open_socket(c);
	if (r < 0) {
		return r;
	}
	c->scan_more = true;
	c->rng = (uint64_t) mono_ms() ^ (uint64_t) (uintptr_t) c;
	if (c->rng == 0) {
		c->rng = 1;
	}

	/* The thread takes no signals: they belong to the application's threads. */
	sigset_t all, old;
	(void) sigfillset(&all);
	(void) pthread_sigmask(SIG_SETMASK, &all, &old);
	r = -pthread_create(&c->thread, NULL, sender_main, c);
	(void) pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r < 0) {
		return r;
	}
	c->thread_started = true;
	return 0;
}

int
coord_client_new(const struct coord_options *opts, struct coord_client **ret_client)
{
	if (opts == NULL || ret_client == NULL) {
		return -EINVAL;
	}
	int r = check_options(opts);
	if (r < 0) {
		return r;
	}
	struct coord_client *c = calloc(1, sizeof(*c));
	if (c == NULL) {
		return -ENOMEM;
	}
	c->wake_fd = -1;
	(void) pthread_mutex_init(&c->mu, NULL);
	pthread_condattr_t ca;
	(void) pthread_condattr_init(&ca);
	(void) pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	(void) pthread_cond_init(&c->cond, &ca);
	(void) pthread_condattr_destroy(&ca);

	(void) snprintf(c->council, sizeof(c->council), "%s", opts->council);
	c->endpoint = strdup(opts->endpoint != NULL ? opts->endpoint : COORD_ENDPOINT_DEFAULT);
	if (c->endpoint == NULL) {
		r = -ENOMEM;
		goto fail;
	}
	c->max_in_flight = opts->max_in_flight != 0 ? opts->max_in_flight : DEFAULT_MAX_IN_FLIGHT;
	c->ack_timeout_ms =
	        opts->ack_timeout_ms != 0 ? opts->ack_timeout_ms : DEFAULT_ACK_TIMEOUT_MS;
	c->backoff_min_ms =
	        opts->backoff_min_ms != 0 ? opts->backoff_min_ms : DEFAULT_BACKOFF_MIN_MS;
	c->backoff_max_ms =
	        opts->backoff_max_ms != 0 ? opts->backoff_max_ms : DEFAULT_BACKOFF_MAX_MS;
	c->on_ack = opts->on_ack;
	c->userdata = opts->userdata;
	c->offline = (opts->flags & COORD_OFFLINE) != 0;
	if (opts->curve_server_key != NULL) {
		c->curve = true;
		r = copy_key(c->curve_server, opts->curve_server_key);
		if (r == 0) {
			r = copy_key(c->curve_public, opts->curve_public_key);
		}
		if (r == 0) {
			r = copy_key(c->curve_secret, opts->curve_secret_key);
		}
		if (r < 0) {
			goto fail;
		}
	}

	uint64_t map = opts->outbox_max_bytes != 0 ? opts->outbox_max_bytes : DEFAULT_OUTBOX_BYTES;
	r = coord__outbox_open(opts->outbox_path, c->council, map, !c->offline, &c->outbox);
	if (r < 0) {
		goto fail;
	}
	r = publish_counts(c, NULL);
	if (r < 0) {
		goto fail;
	}
	if (!c->offline) {
		r = start_sender(c);
		if (r < 0) {
			goto fail;
		}
	}
	*ret_client = c;
	return 0;
fail:
	(void) coord_client_free(c);
	return r;
}

/* ------------------------------------------------------------------------------------------ */
/* Pushing */

static void
wake_sender(struct coord_client *c)
{
	if (c->wake_fd >= 0) {
		uint64_t one = 1;
		(void) write(c->wake_fd, &one, sizeof(one));
	}
}

/* Unpack enough of an Envelope to key it, and check what the outbox relies on. */
static int
unpack_for_push(const struct coord_client *c, const uint8_t *bytes, size_t len,
                Coord__V1__Envelope **ret_env)
{
	if (bytes == NULL || len == 0) {
		return -EINVAL;
	}
	if (len > COORD_ENVELOPE_MAX) {
		return -EMSGSIZE;
	}
	Coord__V1__Envelope *env = NULL;
	struct wire_verdict verdict;
	int r = wire_unpack_envelope(bytes, len, COORD_ENVELOPE_MAX, &env, &verdict);
	if (r == -ENOMEM) {
		return r;
	}
	if (r < 0) {
		if (env != NULL) {
			coord__v1__envelope__free_unpacked(env, NULL);
		}
		return -EINVAL;
	}
	if (strcmp(env->council, c->council) != 0 || !idrule_msg_id_valid(env->msg_id) ||
	    env->revision == 0) {
		coord__v1__envelope__free_unpacked(env, NULL);
		return -EINVAL;
	}
	*ret_env = env;
	return 0;
}

int
coord_push_many(struct coord_client *c, const struct coord_message *msgs, size_t n,
                size_t *bad_index)
{
	if (c == NULL || (n > 0 && msgs == NULL)) {
		return -EINVAL;
	}
	if (n == 0) {
		return 0;
	}
	Coord__V1__Envelope **envs = calloc(n, sizeof(*envs));
	struct coord__outbox_item *items = calloc(n, sizeof(*items));
	int r = envs != NULL && items != NULL ? 0 : -ENOMEM;
	size_t unpacked = 0;
	for (; r == 0 && unpacked < n; unpacked++) {
		r = unpack_for_push(c, msgs[unpacked].bytes, msgs[unpacked].len, &envs[unpacked]);
		if (r < 0) {
			if (bad_index != NULL && r != -ENOMEM) {
				*bad_index = unpacked;
			}
			break;
		}
		items[unpacked] = (struct coord__outbox_item){
		        .msg_id = envs[unpacked]->msg_id,
		        .revision = envs[unpacked]->revision,
		        .bytes = msgs[unpacked].bytes,
		        .len = msgs[unpacked].len,
		};
	}
	if (r == 0) {
		r = coord__outbox_put(c->outbox, items, n, coord__now_ms(), NULL);
	}
	for (size_t i = 0; envs != NULL && i < n; i++) {
		if (envs[i] != NULL) {
			coord__v1__envelope__free_unpacked(envs[i], NULL);
		}
	}
	free(envs);
	free(items);
	if (r < 0) {
		return r;
	}
	(void) publish_counts(c, NULL);
	wake_sender(c);
	return r;
}

int
coord_push(struct coord_client *c, const uint8_t *bytes, size_t len)
{
	const struct coord_message m = {.bytes = bytes, .len = len};
	int r = coord_push_many(c, &m, 1, NULL);
	if (r < 0) {
		return r;
	}
	return r == 1 ? 0 : 1;
}

int
coord_flush(struct coord_client *c, int timeout_ms)
{
	if (c == NULL) {
		return -EINVAL;
	}
	struct timespec deadline;
	(void) clock_gettime(CLOCK_MONOTONIC, &deadline);
	if (timeout_ms > 0) {
		deadline.tv_sec += timeout_ms / 1000;
		deadline.tv_nsec += (long) (timeout_ms % 1000) * 1000000L;
		if (deadline.tv_nsec >= 1000000000L) {
			deadline.tv_sec++;
			deadline.tv_nsec -= 1000000000L;
		}
	}
	int r = 0;
	(void) pthread_mutex_lock(&c->mu);
	while (c->stats.waiting > 0) {
		if (c->fatal != 0) {
			r = c->fatal;
			break;
		}
		if (c->offline) {
			r = -ENOTCONN;
			break;
		}
		if (timeout_ms == 0) {
			r = -ETIMEDOUT;
			break;
		}
		int w = timeout_ms < 0 ? pthread_cond_wait(&c->cond, &c->mu)
		                       : pthread_cond_timedwait(&c->cond, &c->mu, &deadline);
		if (w == ETIMEDOUT) {
			r = c->stats.waiting > 0 ? -ETIMEDOUT : 0;
			break;
		}
	}
	(void) pthread_mutex_unlock(&c->mu);
	return r;
}

int
coord_stats(struct coord_client *c, struct coord_stats *ret_stats)
{
	if (c == NULL || ret_stats == NULL) {
		return -EINVAL;
	}
	(void) pthread_mutex_lock(&c->mu);
	*ret_stats = c->stats;
	(void) pthread_mutex_unlock(&c->mu);
	return 0;
}

int
coord_connection_error(struct coord_client *c)
{
	if (c == NULL) {
		return -EINVAL;
	}
	(void) pthread_mutex_lock(&c->mu);
	int r = c->handshake_error;
	(void) pthread_mutex_unlock(&c->mu);
	return r;
}

int
coord_outbox_list(struct coord_client *c, unsigned which, coord_outbox_fn *fn, void *userdata)
{
	if (c == NULL || fn == NULL) {
		return -EINVAL;
	}
	return coord__outbox_list(c->outbox, which, fn, userdata);
}

int
coord_outbox_forget(struct coord_client *c, const char *msg_id, uint32_t revision)
{
	if (c == NULL) {
		return -EINVAL;
	}
	int r = coord__outbox_forget(c->outbox, msg_id, revision);
	if (r == 0) {
		(void) publish_counts(c, NULL);
	}
	return r;
}

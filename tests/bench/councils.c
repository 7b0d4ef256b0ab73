/*
 * councils: the council threads of one phase.
 *
 * Each council thread has its own DEALER connection and sends its messages with at most
 * `window` unacknowledged, draining every Ack that is ready before sending more. Timed
 * phases build every Envelope before the clock starts and time each message from its send
 * to its Ack (matched by msg_id, whose last field is the message's index); the preload
 * builds each one just before sending it and times nothing but the whole. A phase against a
 * peer broker runs the same loop over a bench_link (peers.c) instead of the DEALER.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "bench.h"
#include "coord.pb-c.h"

struct council {
	pthread_t thread;
	const struct bench_options *o;
	const struct bench_phase *ph;
	void *zctx;
	unsigned index;
	char id[40];
	uint64_t nonce;
	uint8_t **frames;
	size_t *frame_len;
	int64_t *sent_ns;
	int64_t *latency_ns;
	uint64_t bytes;
	uint64_t acked;
	uint64_t status[5];
	int64_t first_send_ns;
	int64_t last_ack_ns;
	int error;
	bool done;
};

static int64_t
now_ns(void)
{
	struct timespec ts;

	(void) clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t
wall_ms(void)
{
	struct timespec ts;

	(void) clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
msg_id_of(const struct council *c, unsigned i, char *buf, size_t len)
{
	(void) snprintf(buf, len, "b%" PRIx64 "%c-%u", c->nonce, c->ph->tag, i);
}

static uint64_t
seed_of(const struct council *c, unsigned i)
{
	return c->o->seed ^ ((uint64_t) c->index << 40) ^
	       ((uint64_t) (unsigned char) c->ph->tag << 56) ^ i;
}

static int
pack_one(struct council *c, unsigned i, int64_t now, uint8_t *buf, size_t cap)
{
	char msg_id[64];
	enum bench_kind kind;

	msg_id_of(c, i, msg_id, sizeof(msg_id));
	return bench_record_pack(&c->o->mix, c->o->size, now, c->id, msg_id, seed_of(c, i), buf,
	                         cap, &kind);
}

/* Build every Envelope of one council up front. Returns 0 or a negative errno. */
static int
build_frames(struct council *c)
{
	const struct bench_phase *ph = c->ph;
	uint8_t buf[BENCH_SIZE_MAX + 1024];
	int64_t now = wall_ms();

	c->frames = calloc(ph->messages, sizeof(*c->frames));
	c->frame_len = calloc(ph->messages, sizeof(*c->frame_len));
	c->sent_ns = calloc(ph->messages, sizeof(*c->sent_ns));
	c->latency_ns = calloc(ph->messages, sizeof(*c->latency_ns));
	if (!c->frames || !c->frame_len || !c->sent_ns || !c->latency_ns) {
		return -ENOMEM;
	}
	for (unsigned i = 0; i < ph->messages; i++) {
		int len = pack_one(c, i, now, buf, sizeof(buf));
		if (len < 0) {
			return len;
		}
		c->frames[i] = malloc((size_t) len);
		if (!c->frames[i]) {
			return -ENOMEM;
		}
		memcpy(c->frames[i], buf, (size_t) len);
		c->frame_len[i] = (size_t) len;
		c->bytes += (uint64_t) len;
	}
	return 0;
}

static void
free_frames(struct council *c)
{
	for (unsigned i = 0; c->frames && i < c->ph->messages; i++) {
		free(c->frames[i]);
	}
	free(c->frames);
	free(c->frame_len);
	free(c->sent_ns);
	free(c->latency_ns);
	c->frames = NULL;
	c->frame_len = NULL;
	c->sent_ns = NULL;
	c->latency_ns = NULL;
}

/* The message index is the msg_id's last field. */
static long
index_of(const char *msg_id, unsigned messages)
{
	const char *dash = strrchr(msg_id, '-');
	char *end;

	if (!dash) {
		return -1;
	}
	long i = strtol(dash + 1, &end, 10);
	return *end || i < 0 || (unsigned long) i >= messages ? -1 : i;
}

/* Send the next message. Returns 0 or a negative errno. */
static int
send_next(struct council *c, void *sock, unsigned i, int64_t now_wall)
{
	uint8_t buf[BENCH_SIZE_MAX + 1024];

	if (c->ph->on_the_fly) {
		int len = pack_one(c, i, now_wall, buf, sizeof(buf));
		if (len < 0) {
			return len;
		}
		c->bytes += (uint64_t) len;
		return zmq_send(sock, buf, (size_t) len, 0) < 0 ? -zmq_errno() : 0;
	}
	c->sent_ns[i] = now_ns();
	return zmq_send(sock, c->frames[i], c->frame_len[i], 0) < 0 ? -zmq_errno() : 0;
}

/* Count the answer to message i (once). Returns 1 when it was one of ours not yet
 * answered, else 0. */
static int
note_ack(struct council *c, long i, unsigned status, uint64_t seq, int64_t t)
{
	const struct bench_phase *ph = c->ph;

	if (i < 0 || (unsigned long) i >= ph->messages || (!ph->on_the_fly && c->latency_ns[i])) {
		return 0;
	}
	if (!ph->on_the_fly) {
		c->latency_ns[i] = t - c->sent_ns[i] > 0 ? t - c->sent_ns[i] : 1;
	}
	if (ph->ack_by_seq && status == BENCH_STATUS_ACCEPTED && seq > ph->seq_base &&
	    seq - ph->seq_base <= ph->seq_n) {
		__atomic_store_n(&ph->ack_by_seq[seq - ph->seq_base - 1], t, __ATOMIC_RELAXED);
	}
	c->status[status < 5 ? status : 0]++;
	__atomic_add_fetch(&c->acked, 1, __ATOMIC_RELAXED);
	c->last_ack_ns = t;
	return 1;
}

/* Take one Ack. Returns 1 when it answered one of ours, 0 when not, or a negative errno. */
static int
take_ack(struct council *c, const uint8_t *buf, size_t len, int64_t t)
{
	Coord__V1__Ack *ack = coord__v1__ack__unpack(NULL, len, buf);

	if (!ack) {
		return -EBADMSG;
	}
	int r = note_ack(c, index_of(ack->msg_id, c->ph->messages), (unsigned) ack->status,
	                 ack->seq, t);
	coord__v1__ack__free_unpacked(ack, NULL);
	return r;
}

/* The same loop as run_council() against a peer broker (peers.c): send up to the window,
 * wait for one answer, take every answer already there. */
static void
run_council_peer(struct council *c)
{
	const struct bench_phase *ph = c->ph;
	struct bench_link link;
	char name[64];
	unsigned next = 0, in_flight = 0;

	(void) snprintf(name, sizeof(name), "b%" PRIx64 "%c%s", c->nonce, ph->tag, c->id);
	c->error = bench_link_open(ph->peer, name, ph->window, BENCH_ACK_TIMEOUT_MS, &link);
	if (c->error < 0) {
		return;
	}
	c->first_send_ns = now_ns();
	while (c->acked < ph->messages) {
		while (next < ph->messages && in_flight < ph->window) {
			c->sent_ns[next] = now_ns();
			c->error =
			        bench_link_send(&link, next, c->frames[next], c->frame_len[next]);
			if (c->error < 0) {
				goto out;
			}
			next++;
			in_flight++;
		}
		c->error = bench_link_flush(&link);
		for (bool wait = true; c->error == 0; wait = false) {
			unsigned index, status;
			int r = bench_link_recv(&link, wait, &index, &status);
			if (r <= 0) {
				c->error = r;
				break;
			}
			in_flight -= (unsigned) note_ack(c, index, status, 0, now_ns());
		}
		if (c->error < 0) {
			goto out;
		}
	}
out:
	bench_link_close(&link);
}

static void *
run_council(void *arg)
{
	struct council *c = arg;
	const struct bench_phase *ph = c->ph;
	int linger = 0, hwm = 0;
	unsigned next = 0, in_flight = 0;
	uint8_t buf[1024];
	int64_t wall = wall_ms();

	if (ph->peer) {
		run_council_peer(c);
		__atomic_store_n(&c->done, true, __ATOMIC_RELEASE);
		return NULL;
	}
	void *sock = zmq_socket(c->zctx, ZMQ_DEALER);
	if (!sock) {
		c->error = -zmq_errno();
		__atomic_store_n(&c->done, true, __ATOMIC_RELEASE);
		return NULL;
	}
	(void) zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof(linger));
	(void) zmq_setsockopt(sock, ZMQ_SNDHWM, &hwm, sizeof(hwm));
	(void) zmq_setsockopt(sock, ZMQ_RCVHWM, &hwm, sizeof(hwm));
	if (zmq_connect(sock, ph->endpoint) < 0) {
		c->error = -zmq_errno();
		goto out;
	}
	c->first_send_ns = now_ns();
	while (c->acked < ph->messages) {
		while (next < ph->messages && in_flight < ph->window) {
			c->error = send_next(c, sock, next, wall);
			if (c->error < 0) {
				goto out;
			}
			next++;
			in_flight++;
		}
		zmq_pollitem_t item = {.socket = sock, .events = ZMQ_POLLIN};
		int n = zmq_poll(&item, 1, BENCH_ACK_TIMEOUT_MS);
		if (n <= 0) {
			c->error = n == 0 ? -ETIMEDOUT : -zmq_errno();
			goto out;
		}
		/* Drain every Ack that is ready before sending more. */
		for (;;) {
			int len = zmq_recv(sock, buf, sizeof(buf), ZMQ_DONTWAIT);
			if (len < 0) {
				break;
			}
			if ((size_t) len > sizeof(buf)) {
				c->error = -EBADMSG;
				goto out;
			}
			int r = take_ack(c, buf, (size_t) len, now_ns());
			if (r < 0) {
				c->error = r;
				goto out;
			}
			in_flight -= (unsigned) r;
		}
	}
out:
	(void) zmq_close(sock);
	__atomic_store_n(&c->done, true, __ATOMIC_RELEASE);
	return NULL;
}

/*
 * A progress line on stderr about once a second until every council thread is done: acked
 * so far, the rate since the phase began and the time left at that rate. The preload, which
 * runs for minutes on a big store, still shows one every 10 s with --quiet.
 */
static void
progress(const struct bench_options *o, const struct bench_phase *ph, struct council *cs)
{
	uint64_t total = (uint64_t) o->councils * ph->messages;
	bool tty = isatty(STDERR_FILENO);
	int every = ph->silent ? 0 : !o->quiet ? 10 : ph->on_the_fly ? 100 : 0; /* 100 ms ticks */
	int64_t start = now_ns();

	for (int tick = 0;; tick++) {
		uint64_t acked = 0;
		bool running = false;

		for (unsigned i = 0; i < o->councils; i++) {
			acked += __atomic_load_n(&cs[i].acked, __ATOMIC_RELAXED);
			running |= !__atomic_load_n(&cs[i].done, __ATOMIC_ACQUIRE);
		}
		if (!running) {
			break;
		}
		if (every && tick % every == 0) {
			double s = (double) (now_ns() - start) / 1e9;
			double rate = s > 0 ? (double) acked / s : 0;
			fprintf(stderr, "%s%s: acked %" PRIu64 " of %" PRIu64 " (%.0f%%)",
			        tty ? "\r" : "", ph->name, acked, total,
			        100.0 * (double) acked / (double) total);
			if (rate > 0) {
				fprintf(stderr, ", %.0f msgs/s, %.0f s gone, ~%.0f s left", rate, s,
				        (double) (total - acked) / rate);
			}
			fprintf(stderr, "%s", tty ? "   " : "\n");
		}
		struct timespec ts = {.tv_nsec = 100000000};
		(void) nanosleep(&ts, NULL);
	}
	if (every && tty) {
		fprintf(stderr, "\r%*s\r", 78, "");
	}
}

double
bench_mono_s(void)
{
	return (double) now_ns() / 1e9;
}

int
bench_cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *) a, y = *(const int64_t *) b;

	return (x > y) - (x < y);
}

/* The p-quantile of sorted values in ms. */
double
bench_quantile_ms(const int64_t *v, size_t n, double p)
{
	return n ? (double) v[(size_t) ((double) (n - 1) * p)] / 1e6 : 0.0;
}

/* Run one phase to the end: every council sent all its messages and got every Ack, or
 * stopped on an error. Fills *res (throughput, latencies, counts). Returns 0 or -ENOMEM. */
int
bench_phase_run(const struct bench_options *o, void *zctx, const struct bench_phase *ph,
                uint64_t nonce, struct bench_result *res)
{
	struct council *cs = calloc(o->councils, sizeof(*cs));
	int r = 0;

	*res = (struct bench_result){.name = ph->name,
	                             .server_cpu = -1,
	                             .server_cpu_folded = -1,
	                             .avg_batch = -1,
	                             .avg_commit_ms = -1};
	if (!cs) {
		return -ENOMEM;
	}
	for (unsigned i = 0; i < o->councils; i++) {
		cs[i] = (struct council){
		        .o = o, .ph = ph, .zctx = zctx, .index = i, .nonce = nonce};
		(void) snprintf(cs[i].id, sizeof(cs[i].id), "%s%02u", o->prefix, i + 1);
		if (!ph->on_the_fly) {
			r = build_frames(&cs[i]);
			if (r < 0) {
				goto out;
			}
		}
	}
	unsigned started = 0;
	for (; started < o->councils; started++) {
		if (pthread_create(&cs[started].thread, NULL, run_council, &cs[started]) != 0) {
			r = -EAGAIN;
			for (unsigned i = started; i < o->councils; i++) {
				cs[i].done = true;
			}
			break;
		}
	}
	progress(o, ph, cs);
	for (unsigned i = 0; i < started; i++) {
		(void) pthread_join(cs[i].thread, NULL);
	}
	if (r < 0) {
		goto out;
	}

	res->ran = true;
	res->total = (uint64_t) o->councils * ph->messages;
	size_t n_lat = 0;
	int64_t *lat = ph->on_the_fly ? NULL : malloc((res->total ? res->total : 1) * sizeof(*lat));
	int64_t first = INT64_MAX, last = 0;
	uint64_t bytes = 0;
	for (unsigned i = 0; i < o->councils; i++) {
		res->acked += cs[i].acked;
		bytes += cs[i].bytes;
		for (int s = 0; s < 5; s++) {
			res->status[s] += cs[i].status[s];
		}
		if (cs[i].error && !res->error) {
			res->error = cs[i].error;
		}
		first = cs[i].first_send_ns && cs[i].first_send_ns < first ? cs[i].first_send_ns
		                                                           : first;
		last = cs[i].last_ack_ns > last ? cs[i].last_ack_ns : last;
		for (unsigned m = 0; lat && m < ph->messages; m++) {
			if (cs[i].latency_ns[m] > 0) {
				lat[n_lat++] = cs[i].latency_ns[m];
			}
		}
	}
	if (lat) {
		qsort(lat, n_lat, sizeof(*lat), bench_cmp_i64);
		res->p50 = bench_quantile_ms(lat, n_lat, 0.5);
		res->p99 = bench_quantile_ms(lat, n_lat, 0.99);
		res->p999 = bench_quantile_ms(lat, n_lat, 0.999);
		res->max = bench_quantile_ms(lat, n_lat, 1.0);
		free(lat);
	}
	res->seconds = last > first ? (double) (last - first) / 1e9 : 0;
	res->rate = res->seconds > 0 ? (double) res->acked / res->seconds : 0;
	res->mean_bytes = res->total ? (double) bytes / (double) res->total : 0;
out:
	for (unsigned i = 0; i < o->councils; i++) {
		free_frames(&cs[i]);
	}
	free(cs);
	return r;
}

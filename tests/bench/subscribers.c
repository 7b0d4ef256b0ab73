/*
 * subscribers: SUB sockets on the broker's publish endpoint that time digest delivery.
 *
 * The sockets live in their own libzmq context (ZMQ_MAX_SOCKETS raised to fit them) and are
 * spread over threads of at most SUBS_PER_THREAD sockets each (two threads for 1,000: one
 * per core of the machine the figures come from). A thread waits in epoll on its sockets'
 * ZMQ_FDs and drains only the sockets whose descriptor fired (until ZMQ_EVENTS has no
 * POLLIN left, as libzmq's edge-style ZMQ_FD requires), so a wake costs the sockets that
 * have messages, not all of them as zmq_poll() does. Of each Publication only first_seq
 * and last_seq are read (pbscan), never the DigestSet; its size is kept. A subscriber
 * applies a message whose last_seq is above the one it holds (the broker repeats last
 * values when others subscribe, docs/PROTOCOL.md) and, once armed, records (receive time,
 * first_seq, last_seq, size) for it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "bench.h"

#define SUBS_PER_THREAD 512
#define SUBS_EVENTS 256
#define SAMPLES_MAX_PER_SUB 100000

struct sub {
	void *sock;
	bool got_any;
	uint64_t held; /* last_seq of the newest digest applied; read by other threads */
	struct bench_sub_sample *samples;
	size_t n, cap;
	uint64_t dropped;
};

struct sub_thread {
	pthread_t thread;
	struct bench_subs *owner;
	struct sub *subs;
	unsigned n;
	int epfd; /* -1 when not open */
	bool started;
};

struct bench_subs {
	void *zctx;
	struct sub *subs;
	unsigned n;
	struct sub_thread *threads;
	unsigned n_threads;
	const char *topic;
	uint64_t base;
	bool armed;
	bool stop;
	struct bench_sub_sample *merged;
};

static int64_t
now_ns(void)
{
	struct timespec ts;

	(void) clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void
record(struct bench_subs *subs, struct sub *s, int64_t t, uint64_t first, uint64_t last,
       size_t bytes)
{
	if (last <= __atomic_load_n(&s->held, __ATOMIC_RELAXED)) {
		return; /* a repeated last value */
	}
	if (__atomic_load_n(&subs->armed, __ATOMIC_ACQUIRE) &&
	    last > __atomic_load_n(&subs->base, __ATOMIC_RELAXED)) {
		if (s->n == s->cap && s->cap < SAMPLES_MAX_PER_SUB) {
			size_t cap = s->cap ? s->cap * 2 : 64;
			struct bench_sub_sample *p = realloc(s->samples, cap * sizeof(*p));
			if (p) {
				s->samples = p;
				s->cap = cap;
			}
		}
		if (s->n < s->cap) {
			s->samples[s->n++] = (struct bench_sub_sample){t, first, last, bytes};
		} else {
			s->dropped++;
		}
	}
	__atomic_store_n(&s->held, last, __ATOMIC_RELEASE);
}

/* Receive every message the socket holds now; returns true when it held one. */
static bool
drain_once(struct bench_subs *subs, struct sub *s)
{
	bool any = false;

	for (;;) {
		zmq_msg_t topic, body;
		(void) zmq_msg_init(&topic);
		if (zmq_msg_recv(&topic, s->sock, ZMQ_DONTWAIT) < 0) {
			(void) zmq_msg_close(&topic);
			return any;
		}
		any = true;
		int64_t t = now_ns();
		(void) zmq_msg_init(&body);
		if (zmq_msg_more(&topic) && zmq_msg_recv(&body, s->sock, 0) >= 0) {
			uint64_t first = 0, last = 0;
			const uint8_t *p = zmq_msg_data(&body);
			size_t len = zmq_msg_size(&body);
			if (!s->got_any) {
				__atomic_store_n(&s->got_any, true, __ATOMIC_RELEASE);
			}
			if (bench_pb_varint(p, len, 3, &last) == 0) {
				(void) bench_pb_varint(p, len, 2, &first);
				record(subs, s, t, first, last, len);
			}
		}
		(void) zmq_msg_close(&body);
		(void) zmq_msg_close(&topic);
	}
}

/* Drain until ZMQ_EVENTS shows nothing more to read: ZMQ_FD fires again only for what
 * arrives after that check. */
static void
drain(struct bench_subs *subs, struct sub *s)
{
	for (;;) {
		(void) drain_once(subs, s);
		int events = 0;
		size_t size = sizeof(events);
		if (zmq_getsockopt(s->sock, ZMQ_EVENTS, &events, &size) < 0 ||
		    !(events & ZMQ_POLLIN)) {
			return;
		}
	}
}

static void *
run(void *arg)
{
	struct sub_thread *th = arg;
	struct epoll_event ev[SUBS_EVENTS];

	/* What arrived before the thread started did not wake the descriptors. */
	for (unsigned i = 0; i < th->n; i++) {
		drain(th->owner, &th->subs[i]);
	}
	while (!__atomic_load_n(&th->owner->stop, __ATOMIC_ACQUIRE)) {
		int r = epoll_wait(th->epfd, ev, SUBS_EVENTS, 100);
		for (int i = 0; i < r; i++) {
			drain(th->owner, &th->subs[ev[i].data.u32]);
		}
	}
	return NULL;
}

/* The thread's epoll set over its sockets' ZMQ_FDs. */
static int
watch_sockets(struct sub_thread *th)
{
	th->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (th->epfd < 0) {
		return -errno;
	}
	for (unsigned i = 0; i < th->n; i++) {
		int fd;
		size_t size = sizeof(fd);
		if (zmq_getsockopt(th->subs[i].sock, ZMQ_FD, &fd, &size) < 0) {
			return -zmq_errno();
		}
		struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
		if (epoll_ctl(th->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
			return -errno;
		}
	}
	return 0;
}

int
bench_subs_start(const char *endpoint, const char *topic, unsigned n, struct bench_subs **ret_subs)
{
	struct bench_subs *subs = calloc(1, sizeof(*subs));
	int r = 0, zero = 0;

	if (!subs) {
		return -ENOMEM;
	}
	subs->topic = topic;
	subs->n = n;
	subs->n_threads = (n + SUBS_PER_THREAD - 1) / SUBS_PER_THREAD;
	subs->subs = calloc(n, sizeof(*subs->subs));
	subs->threads = calloc(subs->n_threads, sizeof(*subs->threads));
	for (unsigned t = 0; subs->threads && t < subs->n_threads; t++) {
		subs->threads[t].epfd = -1;
	}
	subs->zctx = zmq_ctx_new();
	if (!subs->subs || !subs->threads || !subs->zctx) {
		r = -ENOMEM;
		goto fail;
	}
	(void) zmq_ctx_set(subs->zctx, ZMQ_MAX_SOCKETS, (int) n + 16);
	for (unsigned i = 0; i < n; i++) {
		void *sock = zmq_socket(subs->zctx, ZMQ_SUB);
		if (!sock) {
			r = -zmq_errno();
			goto fail;
		}
		subs->subs[i].sock = sock;
		(void) zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof(zero));
		if (zmq_setsockopt(sock, ZMQ_SUBSCRIBE, topic, strlen(topic)) < 0 ||
		    zmq_connect(sock, endpoint) < 0) {
			r = -zmq_errno();
			goto fail;
		}
	}
	for (unsigned t = 0; t < subs->n_threads; t++) {
		struct sub_thread *th = &subs->threads[t];
		th->owner = subs;
		th->subs = &subs->subs[t * SUBS_PER_THREAD];
		th->n = n - t * SUBS_PER_THREAD < SUBS_PER_THREAD ? n - t * SUBS_PER_THREAD
		                                                  : SUBS_PER_THREAD;
		r = watch_sockets(th);
		if (r < 0) {
			goto fail;
		}
		r = -pthread_create(&th->thread, NULL, run, th);
		if (r < 0) {
			goto fail;
		}
		th->started = true;
	}
	*ret_subs = subs;
	return 0;
fail:
	bench_subs_stop(subs);
	(void) bench_subs_free(subs);
	return r;
}

static void
nap(void)
{
	struct timespec ts = {.tv_nsec = 5000000};

	(void) nanosleep(&ts, NULL);
}

unsigned
bench_subs_wait_ready(struct bench_subs *subs, int timeout_ms)
{
	int64_t deadline = now_ns() + (int64_t) timeout_ms * 1000000;
	unsigned ready;

	for (;;) {
		ready = 0;
		for (unsigned i = 0; i < subs->n; i++) {
			ready += __atomic_load_n(&subs->subs[i].got_any, __ATOMIC_ACQUIRE);
		}
		if (ready == subs->n || now_ns() > deadline) {
			return ready;
		}
		nap();
	}
}

void
bench_subs_arm(struct bench_subs *subs, uint64_t base)
{
	__atomic_store_n(&subs->base, base, __ATOMIC_RELAXED);
	__atomic_store_n(&subs->armed, true, __ATOMIC_RELEASE);
}

unsigned
bench_subs_wait_seq(struct bench_subs *subs, uint64_t last, int timeout_ms)
{
	int64_t deadline = now_ns() + (int64_t) timeout_ms * 1000000;
	unsigned done;

	for (;;) {
		done = 0;
		for (unsigned i = 0; i < subs->n; i++) {
			done += __atomic_load_n(&subs->subs[i].held, __ATOMIC_ACQUIRE) >= last;
		}
		if (done == subs->n || now_ns() > deadline) {
			return done;
		}
		nap();
	}
}

void
bench_subs_stop(struct bench_subs *subs)
{
	if (!subs) {
		return;
	}
	__atomic_store_n(&subs->stop, true, __ATOMIC_RELEASE);
	for (unsigned t = 0; subs->threads && t < subs->n_threads; t++) {
		if (subs->threads[t].started) {
			(void) pthread_join(subs->threads[t].thread, NULL);
			subs->threads[t].started = false;
		}
		if (subs->threads[t].epfd >= 0) {
			(void) close(subs->threads[t].epfd);
			subs->threads[t].epfd = -1;
		}
	}
	for (unsigned i = 0; subs->subs && i < subs->n; i++) {
		if (subs->subs[i].sock) {
			(void) zmq_close(subs->subs[i].sock);
			subs->subs[i].sock = NULL;
		}
	}
	if (subs->zctx) {
		(void) zmq_ctx_term(subs->zctx);
		subs->zctx = NULL;
	}
}

const struct bench_sub_sample *
bench_subs_samples(struct bench_subs *subs, size_t *ret_n, uint64_t *ret_dropped)
{
	size_t total = 0;
	uint64_t dropped = 0;

	for (unsigned i = 0; i < subs->n; i++) {
		total += subs->subs[i].n;
		dropped += subs->subs[i].dropped;
	}
	free(subs->merged);
	subs->merged = malloc((total ? total : 1) * sizeof(*subs->merged));
	if (!subs->merged) {
		*ret_n = 0;
		*ret_dropped = dropped + total;
		return NULL;
	}
	size_t at = 0;
	for (unsigned i = 0; i < subs->n; i++) {
		if (subs->subs[i].n) {
			memcpy(subs->merged + at, subs->subs[i].samples,
			       subs->subs[i].n * sizeof(*subs->merged));
			at += subs->subs[i].n;
		}
	}
	*ret_n = total;
	*ret_dropped = dropped;
	return subs->merged;
}

struct bench_subs *
bench_subs_free(struct bench_subs *subs)
{
	if (!subs) {
		return NULL;
	}
	bench_subs_stop(subs);
	for (unsigned i = 0; subs->subs && i < subs->n; i++) {
		free(subs->subs[i].samples);
	}
	free(subs->subs);
	free(subs->threads);
	free(subs->merged);
	free(subs);
	return NULL;
}

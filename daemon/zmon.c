/*
 * zmon: connection counts from libzmq's socket monitor.
 *
 * Each event is two frames: 6 bytes (u16 event, u32 value, host byte order) and the
 * endpoint. Only ACCEPTED and DISCONNECTED are subscribed to; the count never goes below
 * zero (a DISCONNECTED whose ACCEPTED was never seen cannot happen with this event mask, but
 * a counter that wrapped would report four billion connections).
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "zmon.h"
#include "zuv.h"

#define container_of(ptr, type, member) ((type *) ((char *) (ptr) -offsetof(type, member)))

/* Events handled per callback before other handles get a turn. */
#define ZMON_RECV_BUDGET 256

struct zmon {
	void *zsock;    /* the monitored socket (borrowed) */
	void *pair;     /* our end of the monitor pipe */
	bool monitored; /* zmq_socket_monitor() is active on zsock */
	bool zuv_started;
	struct zuv zuv;
	uint32_t connections;
	void (*done)(void *data);
	void *done_data;
};

/* Read one event; returns 1 when one was read, 0 when none was waiting. */
static int
read_event(struct zmon *m)
{
	zmq_msg_t frame;
	uint16_t event = 0;

	(void) zmq_msg_init(&frame);
	if (zmq_msg_recv(&frame, m->pair, ZMQ_DONTWAIT) < 0) {
		(void) zmq_msg_close(&frame);
		return 0;
	}
	if (zmq_msg_size(&frame) >= sizeof(event)) {
		memcpy(&event, zmq_msg_data(&frame), sizeof(event));
	}
	/* The endpoint frame follows in the same message; it is not needed. */
	while (zmq_msg_more(&frame)) {
		if (zmq_msg_recv(&frame, m->pair, ZMQ_DONTWAIT) < 0) {
			break;
		}
	}
	(void) zmq_msg_close(&frame);
	if (event == ZMQ_EVENT_ACCEPTED) {
		m->connections++;
	} else if (event == ZMQ_EVENT_DISCONNECTED && m->connections > 0) {
		m->connections--;
	}
	return 1;
}

static void
on_readable(struct zuv *z, void *zsock, unsigned budget, void *data)
{
	struct zmon *m = data;

	for (unsigned i = 0; i < budget; i++) {
		if (read_event(m) == 0) {
			break;
		}
	}
}

static void
stop_monitor(struct zmon *m)
{
	if (m->monitored) {
		(void) zmq_socket_monitor(m->zsock, NULL, 0);
		m->monitored = false;
	}
}

static void
free_now(struct zmon *m)
{
	stop_monitor(m);
	if (m->pair) {
		(void) zmq_close(m->pair);
	}
	free(m);
}

int
zmon_new(uv_loop_t *loop, void *zctx, void *zsock, const char *name, struct zmon **ret_zmon)
{
	struct zmon *m = calloc(1, sizeof(*m));
	char endpoint[128];
	int hwm = ZMON_RCVHWM, linger = 0;
	int r;

	if (!m) {
		return -ENOMEM;
	}
	m->zsock = zsock;
	(void) snprintf(endpoint, sizeof(endpoint), "inproc://zmon-%.32s-%p", name, (void *) m);
	if (zmq_socket_monitor(zsock, endpoint, ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED) < 0) {
		r = -zmq_errno();
		goto fail;
	}
	m->monitored = true;
	m->pair = zmq_socket(zctx, ZMQ_PAIR);
	if (!m->pair) {
		r = -zmq_errno();
		goto fail;
	}
	/* The receive HWM is set before connecting: an inproc pipe takes its size then. */
	if (zmq_setsockopt(m->pair, ZMQ_RCVHWM, &hwm, sizeof(hwm)) < 0 ||
	    zmq_setsockopt(m->pair, ZMQ_LINGER, &linger, sizeof(linger)) < 0 ||
	    zmq_connect(m->pair, endpoint) < 0) {
		r = -zmq_errno();
		goto fail;
	}
	r = zuv_init(loop, &m->zuv, m->pair, ZMON_RECV_BUDGET, on_readable, m);
	if (r < 0) {
		goto fail;
	}
	m->zuv_started = true;
	*ret_zmon = m;
	return 0;
fail:
	free_now(m);
	return r;
}

uint32_t
zmon_connections(struct zmon *m)
{
	if (!m) {
		return 0;
	}
	/* Bounded: libzmq queues at most ZMON_RCVHWM events. */
	for (unsigned i = 0; i < ZMON_RCVHWM && m->monitored; i++) {
		if (read_event(m) == 0) {
			break;
		}
	}
	return m->connections;
}

static void
on_zuv_closed(struct zuv *z)
{
	struct zmon *m = container_of(z, struct zmon, zuv);
	void (*done)(void *data) = m->done;
	void *data = m->done_data;

	free_now(m);
	if (done) {
		done(data);
	}
}

void
zmon_close(struct zmon *m, void (*done)(void *data), void *data)
{
	if (!m) {
		return;
	}
	/* Stopped first, so that libzmq's monitor never sends into a pipe we closed. */
	stop_monitor(m);
	m->done = done;
	m->done_data = data;
	zuv_close(&m->zuv, on_zuv_closed);
}

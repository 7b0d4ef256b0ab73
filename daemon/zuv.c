/*
 * zuv: libzmq socket <-> uv_poll_t bridge.
 *
 * Invariant: whenever the loop is about to block, either ZMQ_EVENTS was read after the last
 * operation on the socket and showed no input, or the idle handle is active (so the loop does
 * not block). The prepare callback re-establishes that invariant on every iteration, which
 * also covers sends done elsewhere (acks from a commit callback) that swallowed an edge.
 */
#include <assert.h>
#include <errno.h>
#include <stddef.h>

#include <zmq.h>

#include "zuv.h"

#define container_of(ptr, type, member) ((type *) ((char *) (ptr) -offsetof(type, member)))

static bool
has_input(struct zuv *z)
{
	int events = 0;
	size_t len = sizeof(events);

	if (zmq_getsockopt(z->zsock, ZMQ_EVENTS, &events, &len) < 0) {
		return false;
	}
	return (events & ZMQ_POLLIN) != 0;
}

static void on_idle(uv_idle_t *h);

static void
service(struct zuv *z)
{
	if (!z->paused && !z->closing && has_input(z)) {
		z->on_readable(z, z->zsock, z->budget, z->data);
	}
	/* Input left over (budget used up): keep the loop turning instead of blocking. */
	if (!z->paused && !z->closing && has_input(z)) {
		(void) uv_idle_start(&z->idle, on_idle);
	} else {
		(void) uv_idle_stop(&z->idle);
	}
}

static void
on_idle(uv_idle_t *h)
{
	service(container_of(h, struct zuv, idle));
}

static void
on_prepare(uv_prepare_t *h)
{
	service(container_of(h, struct zuv, prepare));
}

static void
on_poll(uv_poll_t *h, int status, int events)
{
	/* An error on the signalling fd is not actionable here; ZMQ_EVENTS decides. */
	service(container_of(h, struct zuv, poll));
}

int
zuv_init(uv_loop_t *loop, struct zuv *z, void *zsock, unsigned budget, zuv_readable_fn *cb,
         void *data)
{
	int fd;
	size_t len = sizeof(fd);
	int r;

	*z = (struct zuv){
	        .zsock = zsock,
	        .on_readable = cb,
	        .data = data,
	        .budget = budget > 0 ? budget : 1,
	};
	if (zmq_getsockopt(zsock, ZMQ_FD, &fd, &len) < 0) {
		return -zmq_errno();
	}
	/* The last step that can fail; when it fails it has registered nothing with the loop. */
	r = uv_poll_init(loop, &z->poll, fd);
	if (r < 0) {
		return r;
	}
	/*
	 * Nothing below can fail, and it must not: an initialised handle is released only by
	 * uv_close(), whose callback runs on a later loop turn, and the callers free `z` with
	 * the rest of their half-built object as soon as zuv_init() fails. uv_idle_init() and
	 * uv_prepare_init() always succeed. uv_poll_start() fails only with UV_EEXIST, when
	 * another handle watches the same fd, which uv_poll_init() has just ruled out on this
	 * thread (libuv 1.44 checks in both, later versions only in uv_poll_init()).
	 * uv_prepare_start() fails only for a NULL callback.
	 */
	(void) uv_idle_init(loop, &z->idle);
	(void) uv_prepare_init(loop, &z->prepare);
	z->open_handles = 3;
	r = uv_poll_start(&z->poll, UV_READABLE, on_poll);
	assert(r == 0);
	r = uv_prepare_start(&z->prepare, on_prepare);
	assert(r == 0);
	return 0;
}

void
zuv_pause(struct zuv *z)
{
	z->paused = true;
	(void) uv_idle_stop(&z->idle);
}

void
zuv_resume(struct zuv *z)
{
	if (z->closing) {
		return;
	}
	z->paused = false;
	/* Input may have queued while paused without a new edge: look on the next turn. */
	(void) uv_idle_start(&z->idle, on_idle);
}

static void
on_handle_closed(uv_handle_t *h)
{
	struct zuv *z = h->data;

	if (--z->open_handles == 0 && z->on_close) {
		z->on_close(z);
	}
}

void
zuv_close(struct zuv *z, zuv_close_fn *cb)
{
	if (z->closing) {
		return;
	}
	z->closing = true;
	z->on_close = cb;
	z->poll.data = z->idle.data = z->prepare.data = z;
	uv_close((uv_handle_t *) &z->poll, on_handle_closed);
	uv_close((uv_handle_t *) &z->idle, on_handle_closed);
	uv_close((uv_handle_t *) &z->prepare, on_handle_closed);
}

static int
set_int(void *sock, int option, int value)
{
	return zmq_setsockopt(sock, option, &value, sizeof(value)) < 0 ? -zmq_errno() : 0;
}

int
zuv_socket_new(void *zctx, int type, int linger_ms, int sndhwm, int64_t maxmsgsize, void **ret_sock)
{
	void *sock = zmq_socket(zctx, type);
	int r;

	if (!sock) {
		return -zmq_errno();
	}
	r = set_int(sock, ZMQ_LINGER, linger_ms);
	if (r >= 0) {
		r = set_int(sock, ZMQ_SNDHWM, sndhwm);
	}
	if (r >= 0 && zmq_setsockopt(sock, ZMQ_MAXMSGSIZE, &maxmsgsize, sizeof(maxmsgsize)) < 0) {
		r = -zmq_errno();
	}
	if (r < 0) {
		(void) zmq_close(sock);
		return r;
	}
	*ret_sock = sock;
	return 0;
}

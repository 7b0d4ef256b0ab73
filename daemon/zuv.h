/*
 * zuv: drives a libzmq socket from a libuv loop.
 *
 * libzmq exposes a socket's readiness through ZMQ_FD, which is edge-triggered: it signals
 * when the socket's state changes, not while messages are waiting, and any send, receive or
 * ZMQ_EVENTS read anywhere may consume the edge. So zuv never trusts the fd alone: after the
 * fd fires, and before every loop iteration blocks (uv_prepare), it reads ZMQ_EVENTS and, while
 * ZMQ_POLLIN is set, calls the owner's callback with a budget of messages. When the budget
 * is used up and messages remain, a uv_idle handle keeps the loop turning so that other
 * handles run between slices and one busy socket cannot starve the loop.
 *
 * struct zuv is embedded in its owner's struct. Loop thread only. Non-logging.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

struct zuv;

/*
 * Called on the loop thread while the socket has input. It must receive at most `budget`
 * messages with ZMQ_DONTWAIT, stop at EAGAIN, and may call zuv_pause().
 */
typedef void zuv_readable_fn(struct zuv *z, void *zsock, unsigned budget, void *data);

/* Called once every handle of `z` is closed; then `z` may be freed. */
typedef void zuv_close_fn(struct zuv *z);

struct zuv {
	uv_poll_t poll;
	uv_idle_t idle;
	uv_prepare_t prepare;
	void *zsock;
	zuv_readable_fn *on_readable;
	zuv_close_fn *on_close;
	void *data;
	unsigned budget;
	unsigned open_handles;
	bool paused;
	bool closing;
};

/*
 * Start watching `zsock` (borrowed: it must outlive `z`; close it only from the close
 * callback). `budget` is the most messages handed to one callback (>= 1).
 * Returns 0, or a negative errno (from libzmq, or -EEXIST from libuv when another handle of
 * `loop` already watches the socket). On error nothing was registered with the loop: `z`
 * needs no zuv_close() and its memory may be freed at once. On success `z` must be closed
 * with zuv_close() and kept until its callback.
 */
int zuv_init(uv_loop_t *loop, struct zuv *z, void *zsock, unsigned budget, zuv_readable_fn *cb,
             void *data);

/* Stop delivering input (backpressure). The socket keeps queueing up to its HWM. */
void zuv_pause(struct zuv *z);

/* Deliver input again; pending input is picked up on the next loop iteration. */
void zuv_resume(struct zuv *z);

/*
 * Close the libuv handles. `cb` runs on a later loop iteration, after which `z` may be freed
 * and the zmq socket closed. Safe to call once, also from inside the readable callback.
 */
void zuv_close(struct zuv *z, zuv_close_fn *cb);

/*
 * Create a socket of `type` in `zctx` with ZMQ_LINGER `linger_ms`, ZMQ_SNDHWM `sndhwm` and
 * ZMQ_MAXMSGSIZE `maxmsgsize` set: the options every listening socket of coordd shares.
 * Returns 0 and *ret_sock (the caller owns it and closes it with zmq_close()), or
 * -zmq_errno(); on error no socket is left open.
 */
int zuv_socket_new(void *zctx, int type, int linger_ms, int sndhwm, int64_t maxmsgsize,
                   void **ret_sock);

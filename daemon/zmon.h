/*
 * zmon: counts the connections of one libzmq socket with zmq_socket_monitor().
 *
 * libzmq reports ZMQ_EVENT_ACCEPTED when a listener accepts a TCP or IPC connection and
 * ZMQ_EVENT_DISCONNECTED when that connection ends (for any reason, a failed handshake
 * included), so accepted minus disconnected is the number of open connections. The events
 * arrive on an inproc PAIR socket, which zmon drains from the loop through zuv.
 *
 * Caveats:
 * - libzmq's monitor socket sends each event with a blocking send from its I/O thread. If
 *   the events were never read, a full pipe would stall that thread, so the PAIR socket's
 *   receive HWM is large (ZMON_RCVHWM events) and the loop reads every event as it comes.
 * - Connections over inproc:// produce no events and are not counted.
 * - zmon_close() must run before the monitored socket is closed: it stops the monitor
 *   first (zmq_socket_monitor(sock, NULL, 0)), so the monitor never sends into a closed
 *   pipe.
 *
 * Loop thread only. Non-logging: errors are negative errno values.
 */
#pragma once

#include <stdint.h>

#include <uv.h>

/* Events the PAIR socket may queue before libzmq's monitor would block. */
#define ZMON_RCVHWM 100000

struct zmon;

/*
 * Start monitoring `zsock` (a socket of `zctx`; borrowed: it must stay open until
 * zmon_close() returned). `name` (e.g. "ingest") makes the inproc endpoint unique together
 * with the object's address; it is copied. Returns 0 and *ret_zmon, or a negative errno
 * (from libzmq or libuv, or -ENOMEM); on error nothing is monitored.
 */
int zmon_new(uv_loop_t *loop, void *zctx, void *zsock, const char *name, struct zmon **ret_zmon);

/*
 * Connections open now (accepted and not yet disconnected). Reads the events already
 * waiting first, so that a connection libzmq accepted before the call is counted (the ZAP
 * handler asks while the connection's handshake runs). 0 for NULL.
 */
uint32_t zmon_connections(struct zmon *m);

/*
 * Stop monitoring and close the PAIR socket. `done(data)` (may be NULL) runs on a later loop
 * iteration, after which `m` is freed: do not use it after this call. Call once. Accepts
 * NULL (then `done` is not called).
 */
void zmon_close(struct zmon *m, void (*done)(void *data), void *data);

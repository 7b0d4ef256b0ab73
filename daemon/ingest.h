/*
 * ingest: the councils' ROUTER socket. Receives Envelopes, decodes and validates them on the
 * loop thread, hands whole batches to the writer (one LMDB transaction per batch), and acks
 * every message of a batch only after its commit returned.
 *
 * Flow control: while a batch commits, the loop keeps receiving into the next one (group
 * commit). When `max_pending` messages wait for a commit, ingest stops reading its socket;
 * libzmq then queues up to the HWM and the councils' sends block or fail, which is the
 * backpressure the protocol relies on.
 *
 * Loop thread only, except the commit itself (libuv threadpool, one batch at a time).
 */
#pragma once

#include <stdint.h>

#include <uv.h>

#include "config.h"
#include "store.h"

struct ingest;

/* Counters since start; read with ingest_get_counters(). */
struct ingest_counters {
	uint64_t received; /* messages read from the socket */
	uint64_t accepted;
	uint64_t duplicate;
	uint64_t rejected;
	uint64_t retry_later;
	uint64_t acks_dropped;           /* acks libzmq refused (peer gone or at its HWM) */
	uint64_t batches;                /* committed transactions */
	uint64_t rejected_by_reason[32]; /* indexed by Coord__V1__Reason (< 32) */
};

/*
 * Create the ROUTER socket in `zctx`, bind cfg->ingest.endpoint and start receiving.
 * `store` is borrowed and must outlive the ingest. `cfg` is referenced (config_ref) until
 * ingest_free(). Returns 0 and *ret_ingest, or a negative errno (-EADDRINUSE, ... from
 * zmq_bind; the caller logs it); on error nothing is bound.
 */
int ingest_new(uv_loop_t *loop, void *zctx, struct store *store, struct config *cfg,
               struct ingest **ret_ingest);

/*
 * Stop for shutdown: stop reading, commit and ack every message already received, then close
 * the socket (acks still queued get up to 2 s to leave) and call `done(data)` on the loop
 * thread. Call once.
 */
void ingest_stop(struct ingest *in, void (*done)(void *data), void *data);

/*
 * Copy the counters. Loop thread.
 */
void ingest_get_counters(const struct ingest *in, struct ingest_counters *ret_counters);

/*
 * Free after ingest_stop() has called its callback (or after ingest_new() failed half-way).
 * Accepts NULL. Returns NULL.
 */
struct ingest *ingest_free(struct ingest *in);

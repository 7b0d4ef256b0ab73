/*
 * ingest: the councils' ROUTER socket. Receives Envelopes, decodes and validates them on the
 * loop thread, hands whole batches to the writer (one LMDB transaction per batch), and acks
 * every message of a batch only after its commit returned.
 *
 * Flow control: while a batch commits, the loop keeps receiving into the next one (group
 * commit). When `max_pending` messages wait for a commit, ingest stops reading its socket;
 * libzmq then queues up to the HWM and the councils' sends block or fail, which is the
 * backpressure the protocol relies on. When a commit returns and the next batch is short of
 * the senders it just acked (senders with one message in flight answer a round trip later),
 * the writer waits for them briefly: at most half the last commit's duration, 2 ms at most,
 * and only for batches of up to 64 (docs/ARCHITECTURE.md, "Gathering").
 *
 * Per-sender limits: a sender (the authenticated council on a CURVE socket, else the
 * connection) has at most cfg->ingest.max_inflight_per_council messages received and not yet
 * acked, and sends at most cfg->ingest.rate_limit messages per second (bursts up to
 * rate_burst). Beyond either, a message is answered RETRY_LATER with REASON_OVERLOADED at
 * once, not stored, and counted (limit_inflight, limit_rate). Frames above
 * max_message_bytes get REJECTED (REASON_TOO_LARGE); frames above max(1 MiB, 4 x
 * max_message_bytes) are dropped by libzmq (ZMQ_MAXMSGSIZE) with their connection.
 *
 * Loop thread only, except the commit itself (libuv threadpool, one batch at a time).
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "auth.h"
#include "config.h"
#include "coord.pb-c.h"
#include "store.h"

struct ingest;

#define INGEST_HISTOGRAM_BUCKETS 12
/* Upper bounds of the batch size buckets (messages per commit). */
#define INGEST_BATCH_BOUNDS                                                                        \
	{                                                                                          \
		1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096                                  \
	}
/* Upper bounds of the commit latency buckets (seconds, store_write_batch() alone). */
#define INGEST_COMMIT_BOUNDS                                                                       \
	{                                                                                          \
		0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1       \
	}

/* Why a batch failed to commit (ingest_counters.commit_failures). */
enum ingest_failure {
	INGEST_FAILURE_DISK_FULL, /* -EIO while the state_dir file system is (nearly) full */
	INGEST_FAILURE_MAP_FULL,  /* -ENOSPC: the map is at [store] map_size_max */
	INGEST_FAILURE_IO,        /* any other error */
	INGEST_FAILURE_X_MAX,
};

/* Free bytes under which a failed commit counts as a full disk: this plus 4 times the
 * batch's envelope bytes. */
#define INGEST_DISK_FULL_SLACK (UINT64_C(4) << 20)
/* Free space is looked at after a commit at most this often (ms). */
#define INGEST_DISK_CHECK_MS 1000

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
	/* RETRY_LATER answers because a per-sender limit bit ([ingest] in the config); each
	 * is also counted in retry_later. */
	uint64_t limit_inflight; /* max_inflight_per_council */
	uint64_t limit_rate;     /* rate_limit and rate_burst */
	uint64_t senders;        /* a gauge: senders tracked by the limits now */

	/* Gathering (docs/ARCHITECTURE.md): times the writer waited after a commit for the
	 * senders just acked, and how many of those waits the batch filled before the time was
	 * up. */
	uint64_t gathers;
	uint64_t gathers_full;

	/* Histograms of committed batches: counts per bucket of INGEST_BATCH_BOUNDS (messages)
	 * and INGEST_COMMIT_BOUNDS (seconds), the last entry for values above every bound. */
	uint64_t batch_size_counts[INGEST_HISTOGRAM_BUCKETS + 1];
	double batch_size_sum;
	uint64_t commit_seconds_counts[INGEST_HISTOGRAM_BUCKETS + 1];
	double commit_seconds_sum;

	/* Disk trouble. A failing episode starts with a failed commit and ends with the next
	 * one that succeeds; it is logged once at each end, not per batch. */
	uint64_t commit_failures[INGEST_FAILURE_X_MAX]; /* failed batches, by cause */
	bool store_failing;                             /* the last commit failed */
	enum ingest_failure failing_cause;              /* its cause, while store_failing */
	bool disk_low;            /* free space below [store] min_free_bytes */
	uint64_t disk_free_bytes; /* at the last check (after a commit) */
};

/*
 * Called on the loop thread when store_failing, failing_cause or disk_low changes (main
 * puts it in STATUS=). `counters` is borrowed for the call.
 */
typedef void ingest_state_fn(void *data, const struct ingest_counters *counters);

/* Install the state callback (NULL removes it). Loop thread. */
void ingest_set_state_fn(struct ingest *in, ingest_state_fn *fn, void *data);

/*
 * One record that a committed batch ACCEPTED, as reported to the ingest's owner (fanout
 * publishes it). Every pointer is borrowed for the duration of the callback only.
 */
struct ingest_accepted {
	uint64_t seq;                       /* its new seq */
	const char *council;                /* the council the broker attributed it to */
	const char *msg_id;                 /* validated msg_id */
	uint32_t revision;                  /* >= 1 */
	Coord__V1__Envelope__BodyCase body; /* which body it has: the record's category (a
	                                       retraction too) */
	const uint8_t *envelope;            /* the Envelope bytes exactly as received */
	size_t envelope_len;
	int64_t received_at; /* Unix ms, as stored in its Item */
};

/*
 * Called on the loop thread once per ACCEPTED record of each committed batch, in seq order,
 * after the batch's acks were handed to libzmq. It must not block and must not call back
 * into the ingest.
 */
typedef void ingest_accepted_fn(void *data, const struct ingest_accepted *rec);

/*
 * Create the ROUTER socket in `zctx`, secure it with `auth` (auth_socket_setup() on ZAP
 * domain "ingest", CURVE when cfg->ingest.security is curve), bind cfg->ingest.endpoint and
 * start receiving. On a CURVE socket every record must name the council of the sender's
 * allowlisted key, else it is REJECTED with REASON_UNAUTHORIZED (and a rate-limited
 * warning). `auth` and `store` are borrowed and must outlive the ingest. `cfg` is
 * referenced (config_ref) until replaced or ingest_free(). `on_accepted` (may be NULL) and `data`
 * are borrowed until ingest_stop() has called its callback; committed records are reported to it.
 * The socket's connections are counted with zmq_socket_monitor (ingest_connections()). Returns 0
 * and *ret_ingest, or a negative errno (-EADDRINUSE, ... from zmq_bind; the caller logs it); on
 * error nothing is bound.
 */
int ingest_new(uv_loop_t *loop, void *zctx, struct auth *auth, struct store *store,
               struct config *cfg, ingest_accepted_fn *on_accepted, void *data,
               struct ingest **ret_ingest);

/*
 * Use `cfg` (referenced; the old one is released) from the next message on: a reload.
 * Batches in flight keep the record pointers they hold, not the config. The caller keeps
 * the keys that apply only at start (endpoint, security, hwm, max_batch, ...) unchanged
 * (config_keep_restart_keys()). Loop thread.
 */
void ingest_set_config(struct ingest *in, struct config *cfg);

/*
 * Stop for shutdown: stop reading, commit and ack every message already received (and
 * report the accepted ones to `on_accepted`), then close the socket (acks still queued get
 * up to 2 s to leave) and call `done(data)` on the loop thread. Call once.
 */
void ingest_stop(struct ingest *in, void (*done)(void *data), void *data);

/*
 * Copy the counters. Loop thread.
 */
void ingest_get_counters(const struct ingest *in, struct ingest_counters *ret_counters);

/*
 * Council connections open now (TCP and IPC; see zmon.h). 0 once stopping. Loop thread.
 */
uint32_t ingest_connections(const struct ingest *in);

/*
 * Free after ingest_stop() has called its callback (or after ingest_new() failed half-way).
 * Accepts NULL. Returns NULL.
 */
struct ingest *ingest_free(struct ingest *in);

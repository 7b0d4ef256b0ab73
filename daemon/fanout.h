/*
 * fanout: the publish socket (XPUB) that headquarters subscribes to.
 *
 * Every message is two frames: the topic, then a packed coord.v1.Publication. Topics end in
 * '/', so that one is never a prefix of another by accident:
 *
 *   item/<council>/<category>/   each ACCEPTED record, published once its batch committed;
 *                                <category> is the Envelope's body: event, letter,
 *                                statement, petition, media or retraction. first_seq =
 *                                last_seq = the item's seq; the body is the Item.
 *   digest/all/                  the DigestSet {WINDOW_ALL, WINDOW_LAST_24H, WINDOW_LAST_1H}
 *   digest/council/<id>/         of the scope, published every publish_interval_ms when the
 *   digest/country/<CC>/         scope's aggregates changed and a subscription matches the
 *                                topic. last_seq = the lowest last_seq of the three digests
 *                                (each reflects at least every item up to it); first_seq =
 *                                prev_seq + 1.
 *
 * prev_seq is the last_seq of the previous message this broker process sent on the same
 * topic (0 for the first one since it started), so a subscriber that sees prev_seq differ
 * from the last_seq it holds for the topic knows it missed something, and catches up
 * through the query socket (Clone pattern; docs/PROTOCOL.md).
 *
 * Subscriptions: the prefixes subscribed to are tracked (ZMQ_XPUB_VERBOSE passes every
 * subscribe; an unsubscribe comes when a prefix's last subscriber leaves). A changed scope
 * whose topic no prefix matches is not computed but remembered; a later subscription that
 * matches its topic queues it, so the subscriber gets the current digest after the kept
 * one. With no subscription to any digest topic the live digests are not fed at all.
 *
 * Last values: the newest digest Publication of each digest topic is kept (one libzmq
 * message, shared by reference with every send). When a subscription for a prefix arrives
 * (ZMQ_XPUB_VERBOSE shows every one), the kept digests whose topic starts with the prefix
 * are sent again, once per loop turn however many subscriptions asked. XPUB cannot address
 * one subscriber (ZMQ_XPUB_MANUAL_LAST_VALUE is draft API), so every subscriber of that
 * topic gets the repeat: same bytes, same last_seq, which subscribers ignore. A subscription
 * to an exact digest topic that has no kept value yet (a registered council, an ISO country)
 * makes the broker compute and publish one.
 *
 * Fan-out budget: digest messages times the publish connections may take at most
 * cfg->publish.fanout_budget bytes a second, each copy counted as its bytes plus
 * FANOUT_BUDGET_COPY_BYTES (fanout.c); a changed scope over it is published by a later
 * job, rendered anew (a topic's first value always goes at once). With few subscribers it
 * never binds.
 *
 * Digest publications carry the distinct counts, total and category lines, not the
 * CodeCount lists (summary.h, digest_live_set_lists()).
 *
 * Slow subscribers: sends use ZMQ_DONTWAIT with ZMQ_XPUB_NODROP off, so at a subscriber's
 * SNDHWM (config publish.hwm) libzmq drops its messages. Publishing never blocks and the
 * memory a subscriber can hold is bounded by its HWM.
 *
 * Digests are computed on the libuv threadpool, one job at a time, from the live digests
 * (digest.h, digest_live_*): each ACCEPTED record given to fanout_publish_item() is also
 * queued for the next job, which feeds the queue to the live state in seq order and renders
 * the changed scopes from memory; the state is seeded from the store (read transactions)
 * at the first job, on an hour rollover of the windows, and whenever it could not follow
 * exactly. A digest's last_seq is the last item fed: it counts exactly the items up to it.
 * The results are published from the loop thread.
 *
 * Loop thread only (but for the digest job, internal). Logs warnings for failed digest
 * computations.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "auth.h"
#include "config.h"
#include "coord.pb-c.h"
#include "digest.h"
#include "store.h"

/* The longest topic: "digest/council/" or "item/" + a council id + "/retraction/". */
#define FANOUT_TOPIC_MAX 64

struct fanout;

/* One committed record to publish. Pointers are borrowed for the call only. */
struct fanout_item {
	uint64_t seq;
	const char *council;                /* a registered council id */
	Coord__V1__Envelope__BodyCase body; /* its category */
	const uint8_t *envelope;            /* the Envelope bytes as stored */
	size_t envelope_len;
	int64_t received_at;
};

/* Counters since start; read with fanout_get_counters(). */
struct fanout_counters {
	uint64_t items;           /* item messages sent */
	uint64_t digests;         /* digest messages sent (new values) */
	uint64_t last_values;     /* kept digests sent again after a subscription */
	uint64_t subscriptions;   /* subscribe messages received */
	uint64_t unsubscriptions; /* unsubscribe messages received */
	uint64_t other_messages;  /* anything else received (ignored) */
	uint64_t digest_jobs;     /* computation jobs run */
	uint64_t digest_seeds;    /* times the live digests were seeded from the store */
	uint64_t digests_held;    /* digests held back by the fan-out budget (sent later) */
	uint64_t digest_errors;   /* scopes whose digest could not be computed */
	uint64_t send_errors;     /* sends libzmq refused (not HWM drops: those are silent) */
};

/*
 * Create the XPUB socket in `zctx` (ZMQ_XPUB_VERBOSE, ZMQ_XPUB_NODROP off, SNDHWM
 * cfg->publish.hwm), bind cfg->publish.endpoint, start the digest timer
 * (cfg->digest.publish_interval_ms) and count connections. The socket is secured with
 * `auth` (ZAP domain "publish": only subscriber and admin keys connect when
 * cfg->publish.security is curve). `auth`, `store` and `digest` are borrowed and must
 * outlive the fanout; `cfg` is referenced until replaced or fanout_free().
 * Returns 0 and *ret_fanout, or a negative errno (from zmq_bind: -EADDRINUSE, ...; the
 * caller logs it); on error nothing is bound.
 */
int fanout_new(uv_loop_t *loop, void *zctx, struct auth *auth, struct store *store,
               struct digest *digest, struct config *cfg, struct fanout **ret_fanout);

/*
 * Use `cfg` (referenced; the old one released) from now on: a reload. A changed
 * digest.publish_interval_ms restarts the timer; headlines apply from the next digest job.
 * Returns 0 or a negative errno from uv_timer_start() (the old interval then stays).
 * Loop thread.
 */
int fanout_set_config(struct fanout *f, struct config *cfg);

/*
 * Publish one ACCEPTED record on its item topic, and queue it for the live digests (every
 * ACCEPTED record must come here: a missing seq makes the next digest job seed them from
 * the store again). Call in seq order. Ignored once closing.
 */
void fanout_publish_item(struct fanout *f, const struct fanout_item *item);

/* Copy the counters. */
void fanout_get_counters(const struct fanout *f, struct fanout_counters *ret_counters);

/* Subscriber connections open now (TCP and IPC; zmon.h). */
uint32_t fanout_connections(const struct fanout *f);

/*
 * Stop the timer, wait for a running digest job (its results are dropped), close the
 * socket (linger FANOUT_LINGER_MS) and call `done(data)` on the loop thread. Call once,
 * after the ingest that feeds fanout_publish_item() has stopped.
 */
void fanout_close(struct fanout *f, void (*done)(void *data), void *data);

#define FANOUT_LINGER_MS 500

/*
 * Free after fanout_close() has called its callback, or after fanout_new() failed (then it
 * is not needed). Accepts NULL. Returns NULL.
 */
struct fanout *fanout_free(struct fanout *f);

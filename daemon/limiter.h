/*
 * limiter: per-sender limits of the ingest socket. For each sender (a key of at most
 * LIMITER_KEY_MAX bytes that ingest derives from the authenticated council or, on a plain
 * socket, the connection's routing id) it keeps
 *   - the number of messages in flight: received and admitted but not yet answered; and
 *   - a token bucket of `rate` tokens per second and depth `burst` (rate 0: no bucket).
 * limiter_acquire() admits one message (taking an in-flight slot and a token) or says which
 * limit bites; limiter_release() gives the slot back once the message was answered.
 *
 * Cost and memory. Each call is O(1) (amortised: one hash lookup, at most two evictions;
 * the table doubles now and then). A sender is tracked while it has messages in flight,
 * and afterwards while its bucket is still refilling (so that a sender whose messages are
 * answered quickly cannot escape the rate limit); then it is forgotten. At most `idle_max`
 * senders without messages in flight are kept: beyond that the longest idle one is
 * forgotten early, which can only make the rate limit more lenient for it, never stricter.
 * So the table holds at most idle_max + (messages in flight) senders.
 *
 * Keys are hashed with SipHash-2-4 under a random key drawn at limiter_new(), so a peer
 * that chooses its routing id cannot aim many keys at one hash chain.
 *
 * Time is the caller's monotonic clock in milliseconds (ingest passes uv_now()); the
 * limiter never reads a clock itself. Not thread-safe: one thread (ingest: the loop
 * thread). Non-logging.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* The longest sender key, in bytes (a routing id is at most 255 bytes, plus a type byte). */
#define LIMITER_KEY_MAX 256
/* Default bound on tracked senders without messages in flight. */
#define LIMITER_IDLE_MAX 65536

/* What limiter_acquire() decided. */
enum limiter_verdict {
	LIMITER_ADMIT,    /* within limits: the message now holds an in-flight slot */
	LIMITER_INFLIGHT, /* the sender already has max_inflight messages in flight */
	LIMITER_RATE,     /* the sender's token bucket is empty */
	_LIMITER_VERDICT_MAX,
};

struct limiter_options {
	uint32_t max_inflight; /* >= 1 */
	uint32_t rate;         /* tokens per second; 0 turns the rate limit off */
	uint32_t burst;        /* bucket depth in tokens, >= 1 when rate > 0 */
	size_t idle_max;       /* senders kept without messages in flight; 0: LIMITER_IDLE_MAX */
};

struct limiter;
/* One tracked sender. Opaque; owned by the limiter. */
struct limiter_sender;

/*
 * Create a limiter. Returns 0 and *ret_limiter (free with limiter_free()), -EINVAL for
 * bad options (max_inflight 0, or rate > 0 with burst 0), -ENOMEM, or the error of
 * getrandom() (negative errno).
 */
int limiter_new(const struct limiter_options *opts, struct limiter **ret_limiter);

/*
 * Replace the options (a reload). Senders keep their in-flight messages and tokens: a
 * sender above a lowered max_inflight is refused until it drops below it, and a bucket
 * above a lowered burst is cut down at its next refill. Returns 0, or -EINVAL for bad
 * options (as limiter_new(); the old ones stay).
 */
int limiter_set_options(struct limiter *l, const struct limiter_options *opts);

/*
 * Free the limiter and every sender it tracks; senders handed out before are invalid
 * afterwards (nobody may release them). Accepts NULL. Returns NULL.
 */
struct limiter *limiter_free(struct limiter *l);

/*
 * Account for one message from the sender `key` (`len` bytes, 1 .. LIMITER_KEY_MAX) at
 * time `now_ms` (monotonic, never decreasing between calls).
 *
 * Returns LIMITER_ADMIT and *ret_sender: the message holds one in-flight slot and took one
 * token; hand *ret_sender to limiter_release() exactly once, when the message has been
 * answered. *ret_sender stays valid until then.
 * Returns LIMITER_INFLIGHT or LIMITER_RATE when a limit bites: nothing was taken and
 * *ret_sender is not touched. The in-flight limit is checked first, so a refused message
 * costs no token.
 * Returns -EINVAL for a bad key length, -ENOMEM when a new sender cannot be tracked.
 */
int limiter_acquire(struct limiter *l, const void *key, size_t len, uint64_t now_ms,
                    struct limiter_sender **ret_sender);

/*
 * Give back the in-flight slot taken by limiter_acquire() for a message answered at
 * `now_ms`. `s` may be forgotten by the limiter from here on: do not use it afterwards.
 */
void limiter_release(struct limiter *l, struct limiter_sender *s, uint64_t now_ms);

/* Senders tracked now (with messages in flight or a refilling bucket). */
size_t limiter_senders(const struct limiter *l);

/* Messages in flight for `key` now (0 when it is not tracked). For tests and metrics. */
uint32_t limiter_inflight(const struct limiter *l, const void *key, size_t len);

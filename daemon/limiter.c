/*
 * limiter: per-sender in-flight counts and token buckets in one hash table.
 *
 * Every tracked sender is in the hash table (chained, power-of-two buckets, doubled when
 * the table holds more senders than buckets). A sender with no message in flight is also on
 * the idle list, oldest first; it leaves the list when it is admitted again. Only idle
 * senders are ever forgotten: the head of the list is dropped when its bucket has refilled
 * completely (it then behaves exactly like a sender never seen), or when the list is
 * longer than idle_max. Each acquire and release looks at the head at most twice, so
 * forgetting costs O(1) per message.
 *
 * Tokens are counted in thousandths (millitokens), so that a refill over a few
 * milliseconds at a low rate is not rounded away: a sender gains rate millitokens per
 * millisecond, up to burst * 1000, and one message costs 1000.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "limiter.h"
#include "siphash.h"

#define INITIAL_BUCKETS 64
#define MILLI 1000

struct limiter_sender {
	struct limiter_sender *chain;                 /* next in its hash bucket */
	struct limiter_sender *prev_idle, *next_idle; /* on the idle list when inflight == 0 */
	uint64_t hash;
	uint64_t refilled_ms; /* when `millitokens` was last brought up to date */
	uint64_t millitokens;
	uint32_t inflight;
	uint16_t len;
	uint8_t key[];
};

struct limiter {
	struct limiter_options opts;
	uint64_t sip[2]; /* SipHash key */
	struct limiter_sender **buckets;
	size_t n_buckets; /* a power of two */
	size_t n_senders;
	struct limiter_sender *idle_head, *idle_tail;
	size_t n_idle;
};

/* ----------------------------------------------------------------------------------------- */
/* Table and idle list */

static struct limiter_sender **
bucket_of(const struct limiter *l, uint64_t hash)
{
	return &l->buckets[hash & (l->n_buckets - 1)];
}

static struct limiter_sender *
find(const struct limiter *l, const uint8_t *key, size_t len, uint64_t hash)
{
	for (struct limiter_sender *s = *bucket_of(l, hash); s; s = s->chain) {
		if (s->hash == hash && s->len == len && memcmp(s->key, key, len) == 0) {
			return s;
		}
	}
	return NULL;
}

/* Double the buckets. A failed allocation only leaves the chains longer. */
static void
grow(struct limiter *l)
{
	size_t n = l->n_buckets * 2;
	struct limiter_sender **buckets = calloc(n, sizeof(*buckets));

	if (!buckets) {
		return;
	}
	for (size_t i = 0; i < l->n_buckets; i++) {
		struct limiter_sender *s = l->buckets[i];
		while (s) {
			struct limiter_sender *next = s->chain;
			struct limiter_sender **b = &buckets[s->hash & (n - 1)];
			s->chain = *b;
			*b = s;
			s = next;
		}
	}
	free(l->buckets);
	l->buckets = buckets;
	l->n_buckets = n;
}

static void
idle_unlink(struct limiter *l, struct limiter_sender *s)
{
	if (s->prev_idle) {
		s->prev_idle->next_idle = s->next_idle;
	} else {
		l->idle_head = s->next_idle;
	}
	if (s->next_idle) {
		s->next_idle->prev_idle = s->prev_idle;
	} else {
		l->idle_tail = s->prev_idle;
	}
	s->prev_idle = s->next_idle = NULL;
	l->n_idle--;
}

static void
idle_append(struct limiter *l, struct limiter_sender *s)
{
	s->prev_idle = l->idle_tail;
	s->next_idle = NULL;
	if (l->idle_tail) {
		l->idle_tail->next_idle = s;
	} else {
		l->idle_head = s;
	}
	l->idle_tail = s;
	l->n_idle++;
}

/* Remove an idle sender from the table and free it. */
static void
forget(struct limiter *l, struct limiter_sender *s)
{
	struct limiter_sender **p = bucket_of(l, s->hash);

	while (*p != s) {
		p = &(*p)->chain;
	}
	*p = s->chain;
	idle_unlink(l, s);
	l->n_senders--;
	free(s);
}

/* Bring the bucket of `s` up to `now_ms`. */
static void
refill(const struct limiter *l, struct limiter_sender *s, uint64_t now_ms)
{
	uint64_t full = (uint64_t) l->opts.burst * MILLI;

	if (s->millitokens > full) {
		s->millitokens = full; /* the burst was lowered (limiter_set_options) */
	}
	if (now_ms <= s->refilled_ms) {
		return;
	}
	uint64_t elapsed = now_ms - s->refilled_ms;
	s->refilled_ms = now_ms;
	if (s->millitokens >= full) {
		return;
	}
	/* elapsed * rate could overflow after a long idle time: compare first. */
	uint64_t missing = full - s->millitokens;
	if (elapsed >= (missing + l->opts.rate - 1) / l->opts.rate) {
		s->millitokens = full;
	} else {
		s->millitokens += elapsed * l->opts.rate;
	}
}

/* Whether an idle sender may be forgotten without changing any later decision. */
static bool
settled(const struct limiter *l, struct limiter_sender *s, uint64_t now_ms)
{
	if (l->opts.rate == 0) {
		return true;
	}
	refill(l, s, now_ms);
	return s->millitokens >= (uint64_t) l->opts.burst * MILLI;
}

/* Forget at most two idle senders from the head: settled ones, or any beyond idle_max. */
static void
sweep(struct limiter *l, uint64_t now_ms)
{
	for (unsigned i = 0; i < 2 && l->idle_head; i++) {
		struct limiter_sender *s = l->idle_head;

		if (l->n_idle <= l->opts.idle_max && !settled(l, s, now_ms)) {
			return;
		}
		forget(l, s);
	}
}

/* ----------------------------------------------------------------------------------------- */
/* API */

int
limiter_new(const struct limiter_options *opts, struct limiter **ret_limiter)
{
	if (opts->max_inflight == 0 || (opts->rate > 0 && opts->burst == 0)) {
		return -EINVAL;
	}
	struct limiter *l = calloc(1, sizeof(*l));
	if (!l) {
		return -ENOMEM;
	}
	l->opts = *opts;
	if (l->opts.idle_max == 0) {
		l->opts.idle_max = LIMITER_IDLE_MAX;
	}
	if (getrandom(l->sip, sizeof(l->sip), 0) != (ssize_t) sizeof(l->sip)) {
		int r = errno > 0 ? -errno : -EIO;
		free(l);
		return r;
	}
	l->n_buckets = INITIAL_BUCKETS;
	l->buckets = calloc(l->n_buckets, sizeof(*l->buckets));
	if (!l->buckets) {
		free(l);
		return -ENOMEM;
	}
	*ret_limiter = l;
	return 0;
}

int
limiter_set_options(struct limiter *l, const struct limiter_options *opts)
{
	if (opts->max_inflight == 0 || (opts->rate > 0 && opts->burst == 0)) {
		return -EINVAL;
	}
	l->opts = *opts;
	if (l->opts.idle_max == 0) {
		l->opts.idle_max = LIMITER_IDLE_MAX;
	}
	return 0;
}

struct limiter *
limiter_free(struct limiter *l)
{
	if (!l) {
		return NULL;
	}
	for (size_t i = 0; i < l->n_buckets; i++) {
		struct limiter_sender *s = l->buckets[i];
		while (s) {
			struct limiter_sender *next = s->chain;
			free(s);
			s = next;
		}
	}
	free(l->buckets);
	free(l);
	return NULL;
}

int
limiter_acquire(struct limiter *l, const void *key, size_t len, uint64_t now_ms,
                struct limiter_sender **ret_sender)
{
	if (len == 0 || len > LIMITER_KEY_MAX) {
		return -EINVAL;
	}
	sweep(l, now_ms);

	uint64_t hash = siphash24(l->sip, key, len);
	struct limiter_sender *s = find(l, key, len, hash);
	if (!s) {
		s = malloc(sizeof(*s) + len);
		if (!s) {
			return -ENOMEM;
		}
		*s = (struct limiter_sender){
		        .hash = hash,
		        .refilled_ms = now_ms,
		        .millitokens = (uint64_t) l->opts.burst * MILLI,
		        .len = (uint16_t) len,
		};
		memcpy(s->key, key, len);
		struct limiter_sender **b = bucket_of(l, hash);
		s->chain = *b;
		*b = s;
		l->n_senders++;
		/* Tracked as idle until it holds a slot, so every exit below is consistent. */
		idle_append(l, s);
		if (l->n_senders > l->n_buckets) {
			grow(l);
		}
	}

	if (s->inflight >= l->opts.max_inflight) {
		return LIMITER_INFLIGHT;
	}
	if (l->opts.rate > 0) {
		refill(l, s, now_ms);
		if (s->millitokens < MILLI) {
			return LIMITER_RATE;
		}
		s->millitokens -= MILLI;
	}
	if (s->inflight == 0) {
		idle_unlink(l, s);
	}
	s->inflight++;
	*ret_sender = s;
	return LIMITER_ADMIT;
}

void
limiter_release(struct limiter *l, struct limiter_sender *s, uint64_t now_ms)
{
	if (s->inflight == 0) {
		return; /* a programming error; keep the table consistent anyway */
	}
	if (--s->inflight == 0) {
		idle_append(l, s);
	}
	sweep(l, now_ms);
}

size_t
limiter_senders(const struct limiter *l)
{
	return l->n_senders;
}

uint32_t
limiter_inflight(const struct limiter *l, const void *key, size_t len)
{
	if (len == 0 || len > LIMITER_KEY_MAX) {
		return 0;
	}
	const struct limiter_sender *s = find(l, key, len, siphash24(l->sip, key, len));
	return s ? s->inflight : 0;
}

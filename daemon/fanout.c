/*
 * fanout: XPUB topics, per-topic prev_seq, the last-value cache of digests, and the digest
 * job.
 *
 * Topics live in one array sorted by name (`topics`), so the topics under a subscription
 * prefix are one contiguous run found by binary search. A topic is created only for a
 * registered council or an ISO country (and the fixed categories), so the table is bounded
 * by the config. Each topic keeps the last_seq it last sent (the next message's prev_seq)
 * and, for digest topics, that message itself (`value`, a zmq_msg_t: every send is a
 * zmq_msg_copy(), which shares the bytes by reference count instead of copying them).
 *
 * Digest computations are queued in `todo` (scopes, each once): the timer adds the scopes
 * digest_take_dirty() reports, a subscription to a digest topic without a value adds that
 * scope. Committed items are queued in `feed` (their Envelope bytes copied). One job at a
 * time takes both queues to the threadpool, feeds the items to the live digests (`live`,
 * digest.h: seeded from the store when needed), renders each scope's packed DigestSet from
 * memory, and publishes on the loop thread in after_job(). Nothing of the loop's state is
 * touched by the worker but the job itself (`job`, `job_feed`, `live`).
 *
 * Last values asked for by subscriptions are only marked (`resend`) while the socket is
 * drained, and sent once at the end of the drain, so a flood of subscribe messages costs
 * at most one send per topic per drain.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <zmq.h>

#include "fanout.h"
#include "iso.h"
#include "log.h"
#include "zmon.h"
#include "zuv.h"

#define container_of(ptr, type, member) ((type *) ((char *) (ptr) -offsetof(type, member)))

_Static_assert(CONFIG_HEADLINES_MAX == DIGEST_HEADLINES_MAX, "headline limits differ");

/* Bytes of committed items queued for one digest job at most; beyond, the live digests are
 * seeded again from the store. */
#define FANOUT_FEED_MAX (64u << 20)
/* Queued bytes that start a job at once (it only feeds them) rather than at the next tick,
 * so that a long publish interval does not hold a second's worth of Envelopes. */
#define FANOUT_FEED_KICK (2u << 20)
/* A feed buffer above this size is not kept for reuse. */
#define FANOUT_FEED_KEEP (4u << 20)
/* Field number of Publication.digests (proto/coord.proto). */
#define COORD_PUBLICATION_DIGESTS_FIELD 10
_Static_assert(COORD__V1__PUBLICATION__BODY_DIGESTS == COORD_PUBLICATION_DIGESTS_FIELD,
               "Publication.digests field number");

/* What the publish socket may send of digests ([publish] fanout_budget, bytes a second),
 * counted per copy (every subscriber of a topic gets one; libzmq shares the bytes, but the
 * loop writes each copy into its subscriber's pipe and the I/O thread to its connection)
 * as the message's bytes plus FANOUT_BUDGET_COPY_BYTES for what a copy costs whatever its
 * size. Beyond it a changed scope waits for a later job: without a limit, 1,000
 * subscribers of a digest/all/ set every 10 ms starve ingest on a small machine and delay
 * every digest as the subscribers' queues fill (docs/BENCHMARKS.md). */
#define FANOUT_BUDGET_COPY_BYTES 16384.0
#define FANOUT_BUDGET_BURST_MS 100

/* Subscription messages handled per callback before other handles get a turn. */
#define FANOUT_RECV_BUDGET 256

struct topic {
	char name[FANOUT_TOPIC_MAX + 1];
	size_t len;
	uint64_t last_seq; /* of the last message sent on it; 0 before the first */
	bool has_value;    /* digest topics: `value` holds the last message */
	bool resend;       /* a subscription asked for `value` during this drain */
	zmq_msg_t value;
};

/* One scope of the digest job, with what the worker computed for it. */
struct job_scope {
	struct digest_scope scope;
	int r;        /* -EAGAIN: not caught up with its seeding yet, tried at the next tick */
	uint8_t *set; /* the packed DigestSet */
	size_t set_len;
	uint64_t last_seq;
};

/* Committed items queued for the live digests: each u64 seq, u8 council length, the
 * council, u32 Envelope length, the Envelope (host byte order, unaligned). */
struct feed {
	uint8_t *buf;
	size_t len, cap;
	bool lost; /* an item could not be queued: the live state is seeded again */
};

struct prefix {
	char name[FANOUT_TOPIC_MAX];
	size_t len;
};

struct fanout {
	uv_loop_t *loop;
	void *sock;
	struct zuv zuv;
	bool zuv_started;
	struct zmon *zmon;
	struct store *store;
	struct digest *digest;
	struct config *cfg;

	struct topic **topics; /* sorted by name */
	size_t n_topics, cap_topics;
	bool any_resend;

	uv_timer_t timer;
	bool timer_started;
	struct digest_scope *todo;
	size_t n_todo, cap_todo;

	struct digest_live *live; /* the digest job's: one job at a time */
	struct feed feed;         /* loop: items committed since the last job started */
	struct feed job_feed;     /* the running job's */
	bool job_reset;           /* the job starts by forgetting the live state */
	bool shrunk;              /* a prefix lost its last subscriber since the last job */
	/* Prefixes subscribed to now (XPUB_VERBOSE passes every subscribe; an unsubscribe
	 * comes when a prefix's last subscriber goes), at most FANOUT_TOPIC_MAX bytes: longer
	 * ones match no topic. Digests of topics no prefix matches are not computed. */
	struct prefix *prefixes;
	size_t n_prefixes, cap_prefixes;
	bool prefixes_lost; /* one could not be kept: every topic counts as subscribed */
	double budget;      /* bytes of digest messages that may go out now (budget_take()) */
	uint64_t budget_at; /* uv_now() of the last refill */
	/* Changed scopes whose digest was not computed (no subscriber): a subscription that
	 * matches their topic queues them. */
	struct digest_scope *skipped;
	size_t n_skipped, cap_skipped;
	bool waiting; /* scopes wait for items not fed yet: a new item starts a job */

	uv_work_t work;
	bool job_running;
	struct job_scope *job;
	size_t n_job;
	int64_t job_now;
	unsigned job_headlines; /* read by the worker: a reload may swap cfg meanwhile */
	uint64_t job_started;   /* uv_hrtime() */

	bool closing;
	unsigned closing_parts;
	void (*close_cb)(void *data);
	void *close_data;

	struct fanout_counters counters;
};

static int64_t
now_ms(void)
{
	struct timespec ts;

	(void) clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *
category_name(Coord__V1__Envelope__BodyCase body)
{
	switch (body) {
	case COORD__V1__ENVELOPE__BODY_EVENT:
		return "event";
	case COORD__V1__ENVELOPE__BODY_LETTER:
		return "letter";
	case COORD__V1__ENVELOPE__BODY_STATEMENT:
		return "statement";
	case COORD__V1__ENVELOPE__BODY_PETITION:
		return "petition";
	case COORD__V1__ENVELOPE__BODY_MEDIA:
		return "media";
	case COORD__V1__ENVELOPE__BODY_RETRACTION:
		return "retraction";
	default:
		return NULL;
	}
}

/* The digest topic of a scope; returns its length, or 0 when it does not fit. */
static size_t
digest_topic(const struct digest_scope *s, char buf[FANOUT_TOPIC_MAX + 1])
{
	int n;

	switch (s->kind) {
	case COORD__V1__SCOPE_KIND__SCOPE_KIND_ALL:
		n = snprintf(buf, FANOUT_TOPIC_MAX + 1, "digest/all/");
		break;
	case COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNCIL:
		n = snprintf(buf, FANOUT_TOPIC_MAX + 1, "digest/council/%s/", s->id);
		break;
	case COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNTRY:
		n = snprintf(buf, FANOUT_TOPIC_MAX + 1, "digest/country/%s/", s->id);
		break;
	default:
		return 0;
	}
	return n > 0 && n <= FANOUT_TOPIC_MAX ? (size_t) n : 0;
}

/*
 * The scope of an exact digest topic that this broker would publish: "digest/all/", a
 * registered council, an ISO country. Returns false for anything else.
 */
static bool
parse_digest_topic(const struct fanout *f, const char *t, size_t len, struct digest_scope *ret)
{
	static const char council[] = "digest/council/", country[] = "digest/country/";
	char id[sizeof(ret->id)];
	size_t idlen;

	if (len == sizeof("digest/all/") - 1 && memcmp(t, "digest/all/", len) == 0) {
		*ret = (struct digest_scope){.kind = COORD__V1__SCOPE_KIND__SCOPE_KIND_ALL};
		return true;
	}
	if (len < 2 || t[len - 1] != '/') {
		return false;
	}
	bool is_council = len > sizeof(council) - 1 && memcmp(t, council, sizeof(council) - 1) == 0;
	bool is_country = len > sizeof(country) - 1 && memcmp(t, country, sizeof(country) - 1) == 0;
	if (!is_council && !is_country) {
		return false;
	}
	size_t plen = is_council ? sizeof(council) - 1 : sizeof(country) - 1;
	idlen = len - plen - 1;
	if (idlen == 0 || idlen >= sizeof(id) || memchr(t + plen, '/', idlen) ||
	    memchr(t + plen, '\0', idlen)) {
		return false;
	}
	memcpy(id, t + plen, idlen);
	id[idlen] = '\0';
	if (is_council ? !config_find_council(f->cfg, id) : !iso_country_valid(id)) {
		return false;
	}
	*ret = (struct digest_scope){
	        .kind = is_council ? COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNCIL
	                           : COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNTRY,
	};
	memcpy(ret->id, id, idlen + 1);
	return true;
}

/* Index of the first topic whose name is >= (name, len) in byte order. */
static size_t
topic_lower_bound(const struct fanout *f, const char *name, size_t len)
{
	size_t lo = 0, hi = f->n_topics;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct topic *t = f->topics[mid];
		size_t n = t->len < len ? t->len : len;
		int c = memcmp(t->name, name, n);
		if (c < 0 || (c == 0 && t->len < len)) {
			lo = mid + 1;
		} else {
			hi = mid;
		}
	}
	return lo;
}

/* Find or create a topic. Returns NULL when out of memory. */
static struct topic *
topic_get(struct fanout *f, const char *name, size_t len)
{
	size_t i = topic_lower_bound(f, name, len);

	if (i < f->n_topics && f->topics[i]->len == len &&
	    memcmp(f->topics[i]->name, name, len) == 0) {
		return f->topics[i];
	}
	if (f->n_topics == f->cap_topics) {
		size_t cap = f->cap_topics ? f->cap_topics * 2 : 64;
		struct topic **v = reallocarray(f->topics, cap, sizeof(*v));
		if (!v) {
			return NULL;
		}
		f->topics = v;
		f->cap_topics = cap;
	}
	struct topic *t = calloc(1, sizeof(*t));
	if (!t) {
		return NULL;
	}
	memcpy(t->name, name, len);
	t->name[len] = '\0';
	t->len = len;
	memmove(f->topics + i + 1, f->topics + i, (f->n_topics - i) * sizeof(*f->topics));
	f->topics[i] = t;
	f->n_topics++;
	return t;
}

/* Send [topic, body]; `body` is consumed either way. */
static int
send_message(struct fanout *f, const struct topic *t, zmq_msg_t *body)
{
	if (zmq_send(f->sock, t->name, t->len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 ||
	    zmq_msg_send(body, f->sock, ZMQ_DONTWAIT) < 0) {
		int r = -zmq_errno();
		(void) zmq_msg_close(body);
		f->counters.send_errors++;
		return r;
	}
	return 0;
}

/* Send a copy of the topic's kept value (the bytes are shared, not copied). */
static void
send_value(struct fanout *f, struct topic *t)
{
	zmq_msg_t copy;

	(void) zmq_msg_init(&copy);
	if (zmq_msg_copy(&copy, &t->value) < 0) {
		(void) zmq_msg_close(&copy);
		f->counters.send_errors++;
		return;
	}
	(void) send_message(f, t, &copy);
}

/* Pack `pub` into a new libzmq message. */
static int
pack_publication(const Coord__V1__Publication *pub, zmq_msg_t *ret_msg)
{
	size_t size = coord__v1__publication__get_packed_size(pub);

	if (zmq_msg_init_size(ret_msg, size) < 0) {
		return -ENOMEM;
	}
	(void) coord__v1__publication__pack(pub, zmq_msg_data(ret_msg));
	return 0;
}

static void start_job(struct fanout *f, bool feed_only);

/* Whether some subscribed prefix matches the topic `name`. */
static bool
wanted(const struct fanout *f, const char *name, size_t len)
{
	if (f->prefixes_lost) {
		return true;
	}
	for (size_t i = 0; i < f->n_prefixes; i++) {
		const struct prefix *p = &f->prefixes[i];
		if (p->len <= len && memcmp(p->name, name, p->len) == 0) {
			return true;
		}
	}
	return false;
}

/* Whether some subscribed prefix matches a digest topic. */
static bool
any_digest_subscriber(const struct fanout *f)
{
	static const char d[] = "digest/";

	if (f->prefixes_lost) {
		return true;
	}
	for (size_t i = 0; i < f->n_prefixes; i++) {
		const struct prefix *p = &f->prefixes[i];
		size_t n = p->len < sizeof(d) - 1 ? p->len : sizeof(d) - 1;
		if (memcmp(p->name, d, n) == 0) {
			return true;
		}
	}
	return false;
}

/* Queue a committed item for the next digest job. */
static void
feed_add(struct feed *fd, const struct fanout_item *item)
{
	size_t clen = strlen(item->council);
	size_t need = 8 + 1 + clen + 4 + item->envelope_len;

	if (fd->lost) {
		return;
	}
	if (clen > UINT8_MAX || item->envelope_len > UINT32_MAX ||
	    fd->len + need > FANOUT_FEED_MAX) {
		fd->lost = true;
		return;
	}
	if (fd->len + need > fd->cap) {
		size_t cap = fd->cap ? fd->cap : 65536;
		while (cap < fd->len + need) {
			cap *= 2;
		}
		uint8_t *b = realloc(fd->buf, cap);
		if (!b) {
			fd->lost = true;
			return;
		}
		fd->buf = b;
		fd->cap = cap;
	}
	uint8_t *p = fd->buf + fd->len;
	uint32_t elen = (uint32_t) item->envelope_len;
	memcpy(p, &item->seq, 8);
	p[8] = (uint8_t) clen;
	memcpy(p + 9, item->council, clen);
	memcpy(p + 9 + clen, &elen, 4);
	memcpy(p + 13 + clen, item->envelope, item->envelope_len);
	fd->len += need;
}

void
fanout_publish_item(struct fanout *f, const struct fanout_item *item)
{
	char name[FANOUT_TOPIC_MAX + 1];
	const char *category = category_name(item->body);

	if (f->closing) {
		return;
	}
	if (any_digest_subscriber(f)) {
		feed_add(&f->feed, item);
		if (f->feed.len > FANOUT_FEED_KICK || f->waiting) {
			start_job(f, true);
		}
	} else if (!f->feed.lost) {
		/* Nobody reads digests: the live state is forgotten, not fed. */
		f->feed.len = 0;
		f->feed.lost = true;
	}
	if (!category) {
		return;
	}
	int n = snprintf(name, sizeof(name), "item/%s/%s/", item->council, category);
	if (n <= 0 || n > FANOUT_TOPIC_MAX) {
		return;
	}
	struct topic *t = topic_get(f, name, (size_t) n);
	if (!t) {
		f->counters.send_errors++;
		return;
	}

	Coord__V1__Item it = COORD__V1__ITEM__INIT;
	it.seq = item->seq;
	it.received_at = item->received_at;
	it.council = (char *) item->council;
	it.envelope.data = (uint8_t *) item->envelope;
	it.envelope.len = item->envelope_len;

	Coord__V1__Publication pub = COORD__V1__PUBLICATION__INIT;
	pub.topic = t->name;
	pub.first_seq = item->seq;
	pub.last_seq = item->seq;
	pub.prev_seq = t->last_seq;
	pub.body_case = COORD__V1__PUBLICATION__BODY_ITEM;
	pub.item = &it;

	/* The chain moves on even if this send fails: subscribers then see the gap. */
	t->last_seq = item->seq;
	zmq_msg_t msg;
	if (pack_publication(&pub, &msg) < 0) {
		f->counters.send_errors++;
		return;
	}
	if (send_message(f, t, &msg) == 0) {
		f->counters.items++;
	}
}

/* Queue a scope for the next digest job (each scope once). */
static int
todo_add(struct fanout *f, const struct digest_scope *s)
{
	for (size_t i = 0; i < f->n_todo; i++) {
		if (f->todo[i].kind == s->kind && strcmp(f->todo[i].id, s->id) == 0) {
			return 0;
		}
	}
	if (f->n_todo == f->cap_todo) {
		size_t cap = f->cap_todo ? f->cap_todo * 2 : 64;
		struct digest_scope *v = reallocarray(f->todo, cap, sizeof(*v));
		if (!v) {
			return -ENOMEM;
		}
		f->todo = v;
		f->cap_todo = cap;
	}
	f->todo[f->n_todo++] = *s;
	return 0;
}

static void
job_free_results(struct fanout *f)
{
	for (size_t i = 0; i < f->n_job; i++) {
		free(f->job[i].set);
	}
	free(f->job);
	f->job = NULL;
	f->n_job = 0;
}

/* Threadpool: feed the committed items to the live digests, (re)seeding them from the store
 * when needed, then render the three windows of every scope of the job from memory. */
static void
job_work(uv_work_t *req)
{
	struct fanout *f = container_of(req, struct fanout, work);
	struct digest_scope *scopes = malloc(f->n_job * sizeof(*scopes) + 1);
	int r = scopes ? 0 : -ENOMEM;

	for (size_t i = 0; r == 0 && i < f->n_job; i++) {
		scopes[i] = f->job[i].scope;
	}
	if (r == 0 && f->job_reset) {
		digest_live_reset(f->live);
	}
	if (r == 0) {
		r = digest_live_prepare(f->live, scopes, f->n_job, f->job_now);
	}
	/* After a seeding every queued item is older than what it read, so this seeds again
	 * at most once per job but for failures. */
	const uint8_t *p = f->job_feed.buf;
	const uint8_t *end = p + f->job_feed.len;
	unsigned reseeds = 0;
	while (r == 0 && p < end) {
		char council[256];
		uint64_t seq;
		uint32_t elen;

		memcpy(&seq, p, 8);
		memcpy(council, p + 9, p[8]);
		council[p[8]] = '\0';
		memcpy(&elen, p + 9 + p[8], 4);
		const uint8_t *env = p + 13 + p[8];
		p = env + elen;
		int fr = digest_live_feed(f->live, seq, council, env, elen);
		if (fr < 0) {
			r = ++reseeds > 2
			            ? fr
			            : digest_live_prepare(f->live, scopes, f->n_job, f->job_now);
		}
	}
	for (size_t i = 0; i < f->n_job; i++) {
		struct job_scope *js = &f->job[i];
		js->r = r < 0 ? r
		              : digest_live_render(f->live, &js->scope, f->job_now,
		                                   f->job_headlines, &js->set, &js->set_len,
		                                   &js->last_seq);
	}
	free(scopes);
}

/*
 * The fan-out budget: [publish] fanout_budget bytes a second, refilled continuously, at
 * most FANOUT_BUDGET_BURST_MS of it saved up; a message costs (its size +
 * FANOUT_BUDGET_COPY_BYTES) times the publish connections. A message may take the budget
 * below zero; the next one waits until it is positive again. Returns whether a message of
 * `size` bytes may go now (and takes it).
 */
static bool
budget_take(struct fanout *f, size_t size)
{
	uint64_t now = uv_now(f->loop);
	double rate = (double) f->cfg->publish.fanout_budget / 1000.0; /* per ms */

	f->budget += (double) (now - f->budget_at) * rate;
	f->budget_at = now;
	if (f->budget > rate * FANOUT_BUDGET_BURST_MS) {
		f->budget = rate * FANOUT_BUDGET_BURST_MS;
	}
	if (f->budget < 0) {
		return false;
	}
	uint32_t conns = fanout_connections(f);
	f->budget -= ((double) size + FANOUT_BUDGET_COPY_BYTES) * (conns > 0 ? conns : 1);
	return true;
}

/* Publish one computed scope as the new value of its topic, if it is newer. Returns false
 * when the budget held it back (it is queued again). */
static bool
publish_digest(struct fanout *f, struct job_scope *js)
{
	char name[FANOUT_TOPIC_MAX + 1];
	size_t len = digest_topic(&js->scope, name);
	uint64_t last_seq = js->last_seq;

	if (len == 0) {
		return true;
	}
	struct topic *t = topic_get(f, name, len);
	if (!t) {
		f->counters.digest_errors++;
		return true;
	}
	/* A value no newer than the kept one changes nothing for a subscriber. */
	if (t->has_value && last_seq <= t->last_seq) {
		return true;
	}
	/* Over the fan-out budget: the scope goes again with a later job, rendered anew. A
	 * topic's first value is never held back. */
	if (t->has_value && !budget_take(f, js->set_len)) {
		(void) todo_add(f, &js->scope);
		f->counters.digests_held++;
		return false;
	}

	/* The Publication without its body, then the body field (10, length-delimited)
	 * around the DigestSet the job packed: the bytes protobuf-c would write for the
	 * whole message, since it writes fields in number order. */
	Coord__V1__Publication pub = COORD__V1__PUBLICATION__INIT;
	pub.topic = t->name;
	pub.prev_seq = t->last_seq;
	pub.first_seq = t->last_seq + 1;
	pub.last_seq = last_seq;
	uint8_t lenbuf[10];
	size_t n_len = 0;
	for (uint64_t v = js->set_len;; v >>= 7) {
		lenbuf[n_len++] = (uint8_t) (v >= 0x80 ? (v & 0x7f) | 0x80 : v);
		if (v < 0x80) {
			break;
		}
	}
	size_t head = coord__v1__publication__get_packed_size(&pub);
	zmq_msg_t msg;
	if (zmq_msg_init_size(&msg, head + 1 + n_len + js->set_len) < 0) {
		f->counters.digest_errors++;
		return true;
	}
	uint8_t *out = zmq_msg_data(&msg);
	(void) coord__v1__publication__pack(&pub, out);
	out[head] = (uint8_t) ((COORD_PUBLICATION_DIGESTS_FIELD << 3) | 2);
	memcpy(out + head + 1, lenbuf, n_len);
	memcpy(out + head + 1 + n_len, js->set, js->set_len);
	if (t->has_value) {
		(void) zmq_msg_close(&t->value);
	}
	/* The topic keeps the packed message; what goes out is a shared copy. */
	t->value = msg;
	t->has_value = true;
	t->last_seq = last_seq;
	t->resend = false;
	send_value(f, t);
	f->counters.digests++;
	return true;
}

static void finish_close(struct fanout *f);

static void
after_job(uv_work_t *req, int status)
{
	struct fanout *f = container_of(req, struct fanout, work);
	int first_error = 0;
	size_t errors = 0, deferred = 0, held = 0;

	f->job_running = false;
	if (f->closing) {
		job_free_results(f);
		finish_close(f);
		return;
	}
	uint64_t seeds = digest_live_seeds(f->live);
	if (seeds != f->counters.digest_seeds) {
		log_debug("Seeded the live digests from the store (%" PRIu64 " times since start)",
		          seeds);
		f->counters.digest_seeds = seeds;
	}
	for (size_t i = 0; i < f->n_job; i++) {
		struct job_scope *js = &f->job[i];
		if (status < 0 && js->r == 0) {
			js->r = status;
		}
		if (js->r == -EAGAIN) {
			/* Seeded after the items fed so far: published once they arrive. */
			deferred++;
			(void) todo_add(f, &js->scope);
			continue;
		}
		if (js->r < 0) {
			/* Tried again with the next tick's scopes. */
			f->counters.digest_errors++;
			errors++;
			first_error = first_error ? first_error : js->r;
			(void) todo_add(f, &js->scope);
			continue;
		}
		if (!publish_digest(f, js)) {
			held++;
		}
	}
	log_debug("Published the digests of %zu scopes, computed in %.1f ms",
	          f->n_job - errors - deferred, (double) (uv_hrtime() - f->job_started) / 1e6);
	if (errors > 0) {
		log_warning_errno(first_error,
		                  "Failed to compute the digests of %zu scopes, retrying at the "
		                  "next publish interval",
		                  errors);
	}
	job_free_results(f);
	/* Scopes asked for by subscriptions while this job ran go now, not at the next tick. */
	/* Scopes seeded past the items fed wait for the next item, not for the next tick
	 * (the interval may be long). */
	f->waiting = deferred > 0;
	if ((f->n_todo > deferred + held || (f->waiting && f->feed.len > 0)) && errors == 0) {
		start_job(f, false);
	}
	if (f->feed.len > FANOUT_FEED_KICK) {
		start_job(f, true);
	}
}

/* Start a job for the queued scopes, or with `feed_only` one that only feeds the queued
 * items to the live digests when no scope is queued. */
static void
start_job(struct fanout *f, bool feed_only)
{
	if (f->job_running || f->closing || (f->n_todo == 0 && !feed_only)) {
		return;
	}
	struct job_scope *job = calloc(f->n_todo + 1, sizeof(*job));
	if (!job) {
		return; /* the scopes stay queued for the next tick */
	}
	for (size_t i = 0; i < f->n_todo; i++) {
		job[i].scope = f->todo[i];
	}
	f->job = job;
	f->n_job = f->n_todo;
	f->n_todo = 0;
	/* The job takes the queued items; the loop queues into the job's old buffer. */
	struct feed spare = f->job_feed;
	f->job_feed = f->feed;
	f->feed = (struct feed){0};
	f->job_reset = f->job_feed.lost || f->shrunk;
	f->shrunk = false;
	if (spare.cap <= FANOUT_FEED_KEEP) {
		f->feed = (struct feed){.buf = spare.buf, .cap = spare.cap};
	} else {
		free(spare.buf);
	}
	f->job_now = now_ms();
	f->job_headlines = f->cfg->digest.headlines;
	f->job_started = uv_hrtime();
	f->counters.digest_jobs++;
	int r = uv_queue_work(f->loop, &f->work, job_work, after_job);
	if (r < 0) {
		/* Cannot happen with valid arguments; put the scopes back. */
		for (size_t i = 0; i < f->n_job; i++) {
			(void) todo_add(f, &f->job[i].scope);
		}
		job_free_results(f);
		f->feed.lost = true; /* the taken items are not fed: seed again */
		return;
	}
	f->job_running = true;
}

/* Remember a changed scope nobody subscribes to (each once). */
static int
skipped_add(struct fanout *f, const struct digest_scope *s)
{
	for (size_t i = 0; i < f->n_skipped; i++) {
		if (f->skipped[i].kind == s->kind && strcmp(f->skipped[i].id, s->id) == 0) {
			return 0;
		}
	}
	if (f->n_skipped == f->cap_skipped) {
		size_t cap = f->cap_skipped ? f->cap_skipped * 2 : 64;
		struct digest_scope *v = reallocarray(f->skipped, cap, sizeof(*v));
		if (!v) {
			return -ENOMEM;
		}
		f->skipped = v;
		f->cap_skipped = cap;
	}
	f->skipped[f->n_skipped++] = *s;
	return 0;
}

/* Take the scopes whose aggregates changed and start a job for those subscribed to. */
static void
collect_dirty(struct fanout *f)
{
	struct digest_scope *scopes = NULL;
	int n = digest_take_dirty(f->digest, &scopes);

	for (int i = 0; i < n; i++) {
		char name[FANOUT_TOPIC_MAX + 1];
		size_t len = digest_topic(&scopes[i], name);
		if (len > 0 && !wanted(f, name, len)) {
			if (skipped_add(f, &scopes[i]) < 0) {
				f->counters.digest_errors++;
			}
			continue;
		}
		if (todo_add(f, &scopes[i]) < 0) {
			/* Out of memory: this scope's digest is not republished until it
			 * changes again (counted, so /metrics shows it). */
			f->counters.digest_errors++;
		}
	}
	free(scopes);
	start_job(f, false);
}

static void
on_tick(uv_timer_t *h)
{
	struct fanout *f = container_of(h, struct fanout, timer);

	if (!f->job_running) {
		collect_dirty(f);
	}
}

/* A subscription to `prefix`: mark the kept values under it, or ask for a missing one. */
static void
on_subscribe(struct fanout *f, const char *prefix, size_t len)
{
	struct digest_scope scope;
	bool matched = false;

	f->counters.subscriptions++;
	if (len > FANOUT_TOPIC_MAX) {
		return;
	}
	bool known = false;
	for (size_t i = 0; i < f->n_prefixes && !known; i++) {
		known = f->prefixes[i].len == len && memcmp(f->prefixes[i].name, prefix, len) == 0;
	}
	if (!known && f->n_prefixes == f->cap_prefixes) {
		size_t cap = f->cap_prefixes ? f->cap_prefixes * 2 : 16;
		struct prefix *v = reallocarray(f->prefixes, cap, sizeof(*v));
		if (v) {
			f->prefixes = v;
			f->cap_prefixes = cap;
		}
	}
	if (!known && f->n_prefixes < f->cap_prefixes) {
		struct prefix *p = &f->prefixes[f->n_prefixes++];
		memcpy(p->name, prefix, len);
		p->len = len;
	} else if (!known) {
		f->prefixes_lost = true; /* out of memory: every digest is computed from now on */
	}
	/* Changed scopes skipped while nobody subscribed to them: computed now. */
	bool queued = false;
	for (size_t i = 0; i < f->n_skipped;) {
		char name[FANOUT_TOPIC_MAX + 1];
		size_t tlen = digest_topic(&f->skipped[i], name);
		if (tlen >= len && memcmp(name, prefix, len) == 0 &&
		    todo_add(f, &f->skipped[i]) == 0) {
			f->skipped[i] = f->skipped[--f->n_skipped];
			queued = true;
		} else {
			i++;
		}
	}
	if (queued) {
		start_job(f, false);
	}
	for (size_t i = topic_lower_bound(f, prefix, len); i < f->n_topics; i++) {
		struct topic *t = f->topics[i];
		if (t->len < len || memcmp(t->name, prefix, len) != 0) {
			break;
		}
		if (t->has_value) {
			t->resend = true;
			f->any_resend = true;
			matched = true;
		}
	}
	if (!matched && parse_digest_topic(f, prefix, len, &scope)) {
		if (todo_add(f, &scope) == 0) {
			start_job(f, false);
		}
	}
}

/* The last subscriber of `prefix` went: its topics are computed no more (and the live
 * state is started again for the scopes still asked for, so it stops following others). */
static void
on_unsubscribe(struct fanout *f, const char *prefix, size_t len)
{
	for (size_t i = 0; i < f->n_prefixes; i++) {
		if (f->prefixes[i].len == len && memcmp(f->prefixes[i].name, prefix, len) == 0) {
			f->prefixes[i] = f->prefixes[--f->n_prefixes];
			f->shrunk = true;
			return;
		}
	}
}

static void
send_resends(struct fanout *f)
{
	if (!f->any_resend) {
		return;
	}
	f->any_resend = false;
	for (size_t i = 0; i < f->n_topics; i++) {
		struct topic *t = f->topics[i];
		if (t->resend) {
			t->resend = false;
			send_value(f, t);
			f->counters.last_values++;
		}
	}
}

static void
on_readable(struct zuv *z, void *zsock, unsigned budget, void *data)
{
	struct fanout *f = data;

	for (unsigned i = 0; i < budget; i++) {
		zmq_msg_t m;

		(void) zmq_msg_init(&m);
		if (zmq_msg_recv(&m, zsock, ZMQ_DONTWAIT) < 0) {
			(void) zmq_msg_close(&m);
			break;
		}
		const char *p = zmq_msg_data(&m);
		size_t len = zmq_msg_size(&m);
		if (len >= 1 && p[0] == 1 && !zmq_msg_more(&m)) {
			on_subscribe(f, p + 1, len - 1);
		} else if (len >= 1 && p[0] == 0 && !zmq_msg_more(&m)) {
			f->counters.unsubscriptions++;
			on_unsubscribe(f, p + 1, len - 1);
		} else {
			f->counters.other_messages++;
		}
		/* Parts of a message an XSUB peer sent upstream: read and ignored. */
		while (zmq_msg_more(&m)) {
			if (zmq_msg_recv(&m, zsock, ZMQ_DONTWAIT) < 0) {
				break;
			}
		}
		(void) zmq_msg_close(&m);
	}
	send_resends(f);
}

static int
set_int(void *sock, int option, int value)
{
	return zmq_setsockopt(sock, option, &value, sizeof(value)) < 0 ? -zmq_errno() : 0;
}

int
fanout_new(uv_loop_t *loop, void *zctx, struct auth *auth, struct store *store,
           struct digest *digest, struct config *cfg, struct fanout **ret_fanout)
{
	struct fanout *f = calloc(1, sizeof(*f));
	int r;

	if (!f) {
		return -ENOMEM;
	}
	f->loop = loop;
	f->store = store;
	f->digest = digest;
	f->cfg = config_ref(cfg);
	f->budget_at = uv_now(loop);
	f->budget = (double) cfg->publish.fanout_budget / 1000.0 * FANOUT_BUDGET_BURST_MS;

	r = digest_live_new(digest, &f->live);
	if (r < 0) {
		goto fail;
	}
	/* Publications carry the distinct counts, not the CodeCount lists (summary.h). */
	digest_live_set_lists(f->live, false);
	r = zuv_socket_new(zctx, ZMQ_XPUB, FANOUT_LINGER_MS, (int) cfg->publish.hwm,
	                   cfg->publish.max_subscription_bytes, &f->sock);
	if (r >= 0) {
		r = set_int(f->sock, ZMQ_XPUB_VERBOSE, 1);
	}
	if (r >= 0) {
		r = set_int(f->sock, ZMQ_XPUB_NODROP, 0);
	}
	/* Subscribers and admins only: item/ topics name people (docs/SECURITY.md). */
	if (r >= 0) {
		r = auth_socket_setup(auth, f->sock, AUTH_DOMAIN_PUBLISH,
		                      cfg->publish.security == CONFIG_SECURITY_CURVE);
	}
	if (r >= 0) {
		r = zmon_new(loop, zctx, f->sock, "publish", &f->zmon);
	}
	if (r >= 0 && zmq_bind(f->sock, cfg->publish.endpoint) < 0) {
		r = -zmq_errno();
	}
	if (r < 0) {
		goto fail;
	}
	r = zuv_init(loop, &f->zuv, f->sock, FANOUT_RECV_BUDGET, on_readable, f);
	if (r < 0) {
		goto fail;
	}
	f->zuv_started = true;
	(void) uv_timer_init(loop, &f->timer);
	f->timer_started = true;
	uint64_t interval = cfg->digest.publish_interval_ms;
	r = uv_timer_start(&f->timer, on_tick, interval, interval);
	if (r < 0) {
		/* The handles are live now: close them like a normal stop would. */
		fanout_close(f, NULL, NULL);
		return r;
	}
	*ret_fanout = f;
	return 0;
fail:
	fanout_free(f);
	return r;
}

int
fanout_set_config(struct fanout *f, struct config *cfg)
{
	struct config *old = f->cfg;
	int r = 0;

	f->cfg = config_ref(cfg);
	if (f->timer_started && !f->closing &&
	    cfg->digest.publish_interval_ms != old->digest.publish_interval_ms) {
		uint64_t interval = cfg->digest.publish_interval_ms;
		r = uv_timer_start(&f->timer, on_tick, interval, interval);
	}
	config_unref(old);
	return r;
}

void
fanout_get_counters(const struct fanout *f, struct fanout_counters *ret_counters)
{
	*ret_counters = f->counters;
}

uint32_t
fanout_connections(const struct fanout *f)
{
	return zmon_connections(f->zmon);
}

/* All parts closed (zuv, zmon, timer, job): close the socket and report. */
static void
finish_close(struct fanout *f)
{
	if (--f->closing_parts > 0) {
		return;
	}
	(void) zmq_close(f->sock);
	f->sock = NULL;
	if (f->close_cb) {
		f->close_cb(f->close_data);
	} else {
		/* Only a failed fanout_new() closes without a callback: nobody holds `f`. */
		fanout_free(f);
	}
}

static void
on_zuv_closed(struct zuv *z)
{
	struct fanout *f = container_of(z, struct fanout, zuv);

	f->zuv_started = false;
	finish_close(f);
}

static void
on_timer_closed(uv_handle_t *h)
{
	finish_close(container_of((uv_timer_t *) h, struct fanout, timer));
}

static void
on_zmon_closed(void *data)
{
	finish_close(data);
}

void
fanout_close(struct fanout *f, void (*done)(void *data), void *data)
{
	f->closing = true;
	f->close_cb = done;
	f->close_data = data;
	f->closing_parts = 2; /* the zuv and the timer */
	if (f->job_running) {
		f->closing_parts++;
	}
	if (f->zmon) {
		f->closing_parts++;
		zmon_close(f->zmon, on_zmon_closed, f);
		f->zmon = NULL;
	}
	(void) uv_timer_stop(&f->timer);
	uv_close((uv_handle_t *) &f->timer, on_timer_closed);
	zuv_close(&f->zuv, on_zuv_closed);
}

struct fanout *
fanout_free(struct fanout *f)
{
	if (!f) {
		return NULL;
	}
	/* A zmon left here belongs to a failed fanout_new(): it closes on later loop turns. */
	zmon_close(f->zmon, NULL, NULL);
	if (f->sock) {
		(void) zmq_close(f->sock);
	}
	for (size_t i = 0; i < f->n_topics; i++) {
		if (f->topics[i]->has_value) {
			(void) zmq_msg_close(&f->topics[i]->value);
		}
		free(f->topics[i]);
	}
	free(f->topics);
	free(f->todo);
	job_free_results(f);
	digest_live_free(f->live);
	free(f->feed.buf);
	free(f->job_feed.buf);
	free(f->prefixes);
	free(f->skipped);
	config_unref(f->cfg);
	free(f);
	return NULL;
}

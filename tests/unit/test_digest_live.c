/*
 * Unit tests for the live digests (digest.h, digest_live_*): a real store in a temporary
 * directory, Envelopes written through store_write_batch() (so the digest hooks and the log
 * run as in the daemon) and then fed to the live state as the fanout does. Every rendered
 * digest must be byte for byte the one digest_compute() gives for the same state and time.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "digest.h"
#include "digest_helpers.h"
#include "store.h"

#define N_SCOPES 6

static const struct digest_scope scopes[N_SCOPES] = {
        {.kind = ALL},
        {.kind = COUNCIL, .id = "c01"},
        {.kind = COUNCIL, .id = "c02"},
        {.kind = COUNTRY, .id = "DE"},
        {.kind = COUNTRY, .id = "FR"},
        {.kind = COUNTRY, .id = "AM"},
};
static const char *const countries[] = {"DE", "FR", "AM", "GR"};
static const char *const langs[] = {"de", "fr", "hy", "el", "en"};

struct fixture {
	char dir[64];
	struct store *store;
	struct digest *digest;
	struct digest_live *live;
	unsigned rnd;
};

static int
setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	const struct store_options o = {
	        .dir = f ? f->dir : NULL,
	        .map_size = 16 * MIB,
	        .map_size_max = 512 * MIB,
	        .sync = false,
	};

	assert_non_null(f);
	strcpy(f->dir, "/tmp/coordd-test-live-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	assert_int_equal(store_open(&o, &f->store), 0);
	assert_int_equal(digest_new(f->store, &f->digest), 0);
	/* A small log limit: folds happen between the feeds, and must not matter. */
	digest_set_log_limit(f->digest, 64);
	assert_int_equal(digest_live_new(f->digest, &f->live), 0);
	f->rnd = 1;
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fixture *f = *state;
	char cmd[128];

	f->live = digest_live_free(f->live);
	f->digest = digest_free(f->digest);
	f->store = store_free(f->store);
	(void) snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
	assert_int_equal(system(cmd), 0);
	free(f);
	return 0;
}

static unsigned
rnd(struct fixture *f, unsigned n)
{
	f->rnd = f->rnd * 1103515245u + 12345u;
	return (f->rnd >> 16) % n;
}

/* One Envelope of `council`/`msg_id`: an event, or a retraction. */
struct msg {
	Coord__V1__Envelope env;
	Coord__V1__Event event;
	Coord__V1__Retraction retraction;
	char msg_id[32];
	char title[64];
	char *langs[2];
	uint8_t buf[512];
	size_t len;
};

static void
make(struct fixture *f, struct msg *m, const char *council, unsigned id, uint32_t revision,
     bool retract, int64_t date)
{
	memset(m, 0, sizeof(*m));
	m->env = (Coord__V1__Envelope) COORD__V1__ENVELOPE__INIT;
	(void) snprintf(m->msg_id, sizeof(m->msg_id), "m%u", id);
	m->env.council = (char *) council;
	m->env.msg_id = m->msg_id;
	m->env.revision = revision;
	m->env.created_at = T0;
	if (retract) {
		m->retraction = (Coord__V1__Retraction) COORD__V1__RETRACTION__INIT;
		m->env.body_case = COORD__V1__ENVELOPE__BODY_RETRACTION;
		m->env.retraction = &m->retraction;
	} else {
		m->event = (Coord__V1__Event) COORD__V1__EVENT__INIT;
		m->event.kind = 1 + (int) rnd(f, 4);
		m->event.country = (char *) countries[rnd(f, 4)];
		m->event.city = "City";
		m->event.date = date;
		m->event.participants = rnd(f, 3) ? rnd(f, 1000) : 0;
		m->langs[0] = (char *) langs[rnd(f, 5)];
		m->langs[1] = (char *) langs[rnd(f, 5)];
		m->event.n_languages = rnd(f, 3);
		m->event.languages = m->langs;
		(void) snprintf(m->title, sizeof(m->title), "Event %u/%u", id, revision);
		m->event.title = m->title;
		m->env.body_case = COORD__V1__ENVELOPE__BODY_EVENT;
		m->env.event = &m->event;
	}
	assert_true(coord__v1__envelope__get_packed_size(&m->env) <= sizeof(m->buf));
	m->len = coord__v1__envelope__pack(&m->env, m->buf);
}

/* Write `n` messages in one batch (all must be accepted); their seqs go to ret_seqs. */
static void
write_batch(struct fixture *f, struct msg *ms, size_t n, uint64_t *ret_seqs)
{
	struct store_record *recs = calloc(n, sizeof(*recs));

	assert_non_null(recs);
	for (size_t i = 0; i < n; i++) {
		recs[i] = (struct store_record){
		        .council = ms[i].env.council,
		        .msg_id = ms[i].env.msg_id,
		        .revision = ms[i].env.revision,
		        .retraction = ms[i].env.body_case == COORD__V1__ENVELOPE__BODY_RETRACTION,
		        .envelope = ms[i].buf,
		        .envelope_len = ms[i].len,
		        .received_at = T0,
		};
	}
	assert_int_equal(store_write_batch(f->store, recs, n), 0);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(recs[i].status, ACCEPTED);
		ret_seqs[i] = recs[i].seq;
	}
	free(recs);
}

/* Feed the batch's items; returns the first non-zero digest_live_feed() result. */
static int
feed(struct fixture *f, const struct msg *ms, size_t n, const uint64_t *seqs)
{
	int first = 0;

	for (size_t i = 0; i < n; i++) {
		int r = digest_live_feed(f->live, seqs[i], ms[i].env.council, ms[i].buf, ms[i].len);
		if (r != 0 && first == 0) {
			first = r;
			assert_int_equal(digest_live_prepare(f->live, scopes, N_SCOPES, T0), 0);
		}
	}
	return first;
}

/* The rendered set of every scope equals digest_compute() of each window, byte for byte. */
static void
check_all(struct fixture *f, int64_t now, unsigned headlines)
{
	static const Coord__V1__Window windows[] = {W_ALL, W_24H, W_1H};
	struct store_stats st;

	assert_int_equal(store_get_stats(f->store, &st), 0);
	for (size_t s = 0; s < N_SCOPES; s++) {
		uint8_t *buf = NULL;
		size_t len = 0;
		uint64_t last = 0;

		assert_int_equal(
		        digest_live_render(f->live, &scopes[s], now, headlines, &buf, &len, &last),
		        0);
		assert_int_equal(last, st.last_seq);
		Coord__V1__DigestSet *set = coord__v1__digest_set__unpack(NULL, len, buf);
		assert_non_null(set);
		assert_int_equal(set->n_digests, 3);
		for (size_t w = 0; w < 3; w++) {
			Coord__V1__Digest *want = NULL;
			assert_int_equal(digest_compute(f->digest, scopes[s].kind, scopes[s].id,
			                                windows[w], 0, 0, now, headlines, &want),
			                 0);
			size_t n1 = coord__v1__digest__get_packed_size(set->digests[w]);
			size_t n2 = coord__v1__digest__get_packed_size(want);
			uint8_t *b1 = malloc(n1 + 1), *b2 = malloc(n2 + 1);
			assert_non_null(b1);
			assert_non_null(b2);
			(void) coord__v1__digest__pack(set->digests[w], b1);
			(void) coord__v1__digest__pack(want, b2);
			if (n1 != n2 || memcmp(b1, b2, n1) != 0) {
				fail_msg("scope %zu window %zu: live digest (%zu bytes, %zu lines, "
				         "%zu "
				         "headlines) differs from digest_compute() (%zu bytes, %zu "
				         "lines, %zu headlines)",
				         s, w, n1, set->digests[w]->n_lines,
				         set->digests[w]->n_headlines, n2, want->n_lines,
				         want->n_headlines);
			}
			free(b1);
			free(b2);
			digest_result_free(want);
		}
		coord__v1__digest_set__free_unpacked(set, NULL);
		free(buf);
	}
}

/* A random batch: new records, corrections, retractions and restores of recent ones. */
static size_t
random_batch(struct fixture *f, struct msg *ms, size_t max, unsigned *next_id, uint32_t *revisions,
             bool *retracted, unsigned window)
{
	size_t n = 1 + rnd(f, (unsigned) max);

	for (size_t i = 0; i < n; i++) {
		const char *council = rnd(f, 2) ? "c01" : "c02";
		int64_t date = T0 - (int64_t) rnd(f, 30) * H - (int64_t) rnd(f, (unsigned) H);
		unsigned id;
		if (*next_id == 0 || rnd(f, 4) != 0) {
			id = (*next_id)++;
			council = id % 2 ? "c01" : "c02";
		} else {
			/* Records touched again are among the last `window` ones. */
			unsigned back = 1 + rnd(f, *next_id < window ? *next_id : window);
			id = *next_id - back;
			council = id % 2 ? "c01" : "c02";
			/* Not twice in one batch: the revision must go up within the batch. */
			bool again = false;
			for (size_t j = 0; j < i && !again; j++) {
				again = strcmp(ms[j].env.council, council) == 0 &&
				        (unsigned) atoi(ms[j].msg_id + 1) == id;
			}
			if (again) {
				id = (*next_id)++;
				council = id % 2 ? "c01" : "c02";
			}
		}
		bool retract = revisions[id] > 0 && !retracted[id] && rnd(f, 3) == 0;
		revisions[id]++;
		retracted[id] = retract;
		make(f, &ms[i], council, id, revisions[id], retract, date);
	}
	return n;
}

static void
test_live_equals_compute_through_corrections_and_retractions(void **state)
{
	struct fixture *f = *state;
	enum { IDS = 4000 };
	uint32_t *revisions = calloc(IDS, sizeof(*revisions));
	bool *retracted = calloc(IDS, sizeof(*retracted));
	struct msg ms[16];
	uint64_t seqs[16];
	unsigned next_id = 0;

	assert_non_null(revisions);
	assert_non_null(retracted);
	assert_int_equal(digest_live_prepare(f->live, scopes, N_SCOPES, T0), 0);
	assert_int_equal(digest_live_seeds(f->live), 1);
	check_all(f, T0, 0);
	for (int b = 0; b < 300 && next_id < IDS - 16; b++) {
		size_t n = random_batch(f, ms, 16, &next_id, revisions, retracted, 200);
		write_batch(f, ms, n, seqs);
		assert_int_equal(feed(f, ms, n, seqs), 0);
		if (b % 10 == 0) {
			check_all(f, T0, b % 20 == 0 ? 3 : 0);
		}
	}
	check_all(f, T0, DIGEST_HEADLINES_MAX);
	/* Every correction found its earlier revision in the ring: no second seeding. */
	assert_int_equal(digest_live_seeds(f->live), 1);
	free(revisions);
	free(retracted);
}

static void
test_hour_rollover_needs_a_new_seeding(void **state)
{
	struct fixture *f = *state;
	struct msg m;
	uint64_t seq;
	uint8_t *buf = NULL;
	size_t len;
	uint64_t last;

	assert_int_equal(digest_live_prepare(f->live, scopes, N_SCOPES, T0 + H / 2), 0);
	make(f, &m, "c01", 1, 1, false, T0 - 1);
	write_batch(f, &m, 1, &seq);
	assert_int_equal(feed(f, &m, 1, &seq), 0);
	check_all(f, T0 + H / 2, 0);
	/* An hour later the windows cover other buckets: the state refuses to render. */
	assert_int_equal(digest_live_render(f->live, &scopes[0], T0 + H + 1, 0, &buf, &len, &last),
	                 -EAGAIN);
	assert_null(buf);
	assert_int_equal(digest_live_prepare(f->live, scopes, N_SCOPES, T0 + H + 1), 0);
	assert_int_equal(digest_live_seeds(f->live), 2);
	check_all(f, T0 + H + 1, 0);
	/* The record left the last hour's window. */
	assert_int_equal(digest_live_render(f->live, &scopes[0], T0 + H + 1, 0, &buf, &len, &last),
	                 0);
	Coord__V1__DigestSet *set = coord__v1__digest_set__unpack(NULL, len, buf);
	assert_non_null(set);
	assert_int_equal(set->digests[0]->n_lines, 1);
	assert_int_equal(set->digests[2]->n_lines, 0);
	coord__v1__digest_set__free_unpacked(set, NULL);
	free(buf);
}

static void
test_correction_older_than_the_ring_seeds_again(void **state)
{
	struct fixture *f = *state;
	enum { BATCH = 256 };
	struct msg *ms = calloc(BATCH, sizeof(*ms));
	uint64_t seqs[BATCH];
	unsigned id = 0;

	assert_non_null(ms);
	assert_int_equal(digest_live_prepare(f->live, scopes, N_SCOPES, T0), 0);
	while (id < DIGEST_LIVE_RING + 100) {
		for (size_t i = 0; i < BATCH; i++, id++) {
			make(f, &ms[i], id % 2 ? "c01" : "c02", id, 1, false, T0 - H / 2);
		}
		write_batch(f, ms, BATCH, seqs);
		assert_int_equal(feed(f, ms, BATCH, seqs), 0);
	}
	assert_int_equal(digest_live_seeds(f->live), 1);
	/* A recent record's correction is followed in memory. */
	make(f, &ms[0], "c02", id - 2, 2, false, T0 - 3 * H);
	write_batch(f, ms, 1, seqs);
	assert_int_equal(feed(f, ms, 1, seqs), 0);
	assert_int_equal(digest_live_seeds(f->live), 1);
	check_all(f, T0, 0);
	/* The first record's revision 1 left the ring: its retraction cannot be followed. */
	make(f, &ms[0], "c02", 0, 2, true, 0);
	write_batch(f, ms, 1, seqs);
	assert_int_equal(feed(f, ms, 1, seqs), -EAGAIN);
	assert_int_equal(digest_live_seeds(f->live), 2);
	check_all(f, T0, 0);
	/* Its restore finds the retraction in the ring. */
	make(f, &ms[0], "c02", 0, 3, false, T0 - H / 3);
	write_batch(f, ms, 1, seqs);
	assert_int_equal(feed(f, ms, 1, seqs), 0);
	assert_int_equal(digest_live_seeds(f->live), 2);
	check_all(f, T0, DIGEST_HEADLINES_MAX);
	free(ms);
}

static void
test_missing_item_and_late_scope(void **state)
{
	struct fixture *f = *state;
	struct msg m[3];
	uint64_t seqs[3];
	uint8_t *buf = NULL;
	size_t len;
	uint64_t last;
	const struct digest_scope gr = {.kind = COUNTRY, .id = "GR"};

	assert_int_equal(digest_live_prepare(f->live, scopes, N_SCOPES, T0), 0);
	for (unsigned i = 0; i < 3; i++) {
		make(f, &m[i], "c01", i, 1, false, T0 - H / 2);
	}
	write_batch(f, m, 3, seqs);
	/* The second item never arrives: the third cannot be applied exactly. */
	assert_int_equal(digest_live_feed(f->live, seqs[0], "c01", m[0].buf, m[0].len), 0);
	assert_int_equal(digest_live_feed(f->live, seqs[2], "c01", m[2].buf, m[2].len), -EAGAIN);
	assert_int_equal(digest_live_render(f->live, &scopes[0], T0, 0, &buf, &len, &last),
	                 -EAGAIN);
	assert_int_equal(digest_live_prepare(f->live, scopes, N_SCOPES, T0), 0);
	check_all(f, T0, 0);
	/* Items the state already holds are ignored. */
	assert_int_equal(digest_live_feed(f->live, seqs[1], "c01", m[1].buf, m[1].len), 0);
	check_all(f, T0, 0);

	/* A scope asked for while the store is ahead of the items fed waits for them. */
	assert_int_equal(digest_live_render(f->live, &gr, T0, 0, &buf, &len, &last), -ENOENT);
	for (unsigned i = 0; i < 3; i++) {
		make(f, &m[i], "c02", 10 + i, 1, false, T0 - H / 2);
	}
	write_batch(f, m, 3, seqs);
	assert_int_equal(digest_live_prepare(f->live, &gr, 1, T0), 0);
	assert_int_equal(digest_live_seeds(f->live), 2);
	assert_int_equal(digest_live_render(f->live, &gr, T0, 0, &buf, &len, &last), -EAGAIN);
	assert_int_equal(feed(f, m, 3, seqs), 0);
	assert_int_equal(digest_live_render(f->live, &gr, T0, 0, &buf, &len, &last), 0);
	assert_int_equal(last, seqs[2]);
	free(buf);
	check_all(f, T0, 0);

	const struct digest_scope bad = {.kind = COUNCIL};
	assert_int_equal(digest_live_prepare(f->live, &bad, 1, T0), -EINVAL);
}

static void
test_free_accepts_null(void **state)
{
	(void) state;
	assert_null(digest_live_free(NULL));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(
	                test_live_equals_compute_through_corrections_and_retractions, setup,
	                teardown),
	        cmocka_unit_test_setup_teardown(test_hour_rollover_needs_a_new_seeding, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_correction_older_than_the_ring_seeds_again,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_missing_item_and_late_scope, setup, teardown),
	        cmocka_unit_test(test_free_accepts_null),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

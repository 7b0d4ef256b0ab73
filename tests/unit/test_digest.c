/*
 * Unit tests for digest: a real store in a temporary directory, real packed Envelopes
 * written through store_write_batch(), so the hooks run exactly as in the daemon.
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
#include <lmdb.h>

#include "digest.h"
#include "digest_helpers.h"
#include "store.h"

#define C_EVENT COORD__V1__CATEGORY__CATEGORY_EVENT
#define C_LETTER COORD__V1__CATEGORY__CATEGORY_LETTER
#define C_STATEMENT COORD__V1__CATEGORY__CATEGORY_STATEMENT
#define C_PETITION COORD__V1__CATEGORY__CATEGORY_PETITION
#define C_MEDIA COORD__V1__CATEGORY__CATEGORY_MEDIA
#define RALLY COORD__V1__EVENT_KIND__EVENT_KIND_RALLY
#define ROUNDTABLE COORD__V1__EVENT_KIND__EVENT_KIND_ROUNDTABLE
#define BROADCAST COORD__V1__MEDIA_KIND__MEDIA_KIND_BROADCAST

struct fixture {
	char dir[64];
	struct store *store;
	struct digest *digest;
};

/* An Envelope and whichever body it carries, built in place (it points into itself). */
struct msg {
	Coord__V1__Envelope env;
	Coord__V1__Event event;
	Coord__V1__OutreachLetter letter;
	Coord__V1__Statement statement;
	Coord__V1__Petition petition;
	Coord__V1__MediaReport media;
	Coord__V1__Retraction retraction;
	char langbuf[128];
	char *langs[16];
	char title[1024];
};

static void
msg_init(struct msg *m, const char *council, const char *msg_id, uint32_t revision)
{
	memset(m, 0, sizeof(*m));
	m->env = (Coord__V1__Envelope) COORD__V1__ENVELOPE__INIT;
	m->event = (Coord__V1__Event) COORD__V1__EVENT__INIT;
	m->letter = (Coord__V1__OutreachLetter) COORD__V1__OUTREACH_LETTER__INIT;
	m->statement = (Coord__V1__Statement) COORD__V1__STATEMENT__INIT;
	m->petition = (Coord__V1__Petition) COORD__V1__PETITION__INIT;
	m->media = (Coord__V1__MediaReport) COORD__V1__MEDIA_REPORT__INIT;
	m->retraction = (Coord__V1__Retraction) COORD__V1__RETRACTION__INIT;
	m->env.council = (char *) council;
	m->env.msg_id = (char *) msg_id;
	m->env.revision = revision;
	m->env.created_at = T0;
}

/* Split "en-GB,fr" into m->langs. */
static size_t
split_langs(struct msg *m, const char *csv)
{
	size_t n = 0;

	assert_true(strlen(csv) < sizeof(m->langbuf));
	strcpy(m->langbuf, csv);
	for (char *save = NULL, *t = strtok_r(m->langbuf, ",", &save); t;
	     t = strtok_r(NULL, ",", &save)) {
		assert_true(n < 16);
		m->langs[n++] = t;
	}
	return n;
}

static struct msg *
event(struct msg *m, const char *council, const char *msg_id, uint32_t revision, int kind,
      const char *country, int64_t date, uint32_t participants, const char *langs,
      const char *title)
{
	msg_init(m, council, msg_id, revision);
	m->event.kind = kind;
	m->event.country = (char *) country;
	m->event.city = "City";
	m->event.date = date;
	m->event.participants = participants;
	m->event.n_languages = split_langs(m, langs);
	m->event.languages = m->langs;
	(void) snprintf(m->title, sizeof(m->title), "%s", title);
	m->event.title = m->title;
	m->env.body_case = COORD__V1__ENVELOPE__BODY_EVENT;
	m->env.event = &m->event;
	return m;
}

static struct msg *
letter(struct msg *m, const char *council, const char *msg_id, int kind, const char *country,
       const char *lang, int64_t date, const char *subject, const char *recipient)
{
	msg_init(m, council, msg_id, 1);
	m->letter.recipient_kind = kind;
	m->letter.recipient_country = (char *) country;
	m->letter.language = (char *) lang;
	m->letter.sent_at = date;
	m->letter.subject = (char *) subject;
	m->letter.recipient = (char *) recipient;
	m->letter.channel = COORD__V1__LETTER_CHANNEL__LETTER_CHANNEL_EMAIL;
	m->env.body_case = COORD__V1__ENVELOPE__BODY_LETTER;
	m->env.letter = &m->letter;
	return m;
}

static struct msg *
statement(struct msg *m, const char *council, const char *msg_id, const char *country,
          const char *langs, int64_t date, const char *title, const char *organisation)
{
	msg_init(m, council, msg_id, 1);
	m->statement.country = (char *) country;
	m->statement.n_languages = split_langs(m, langs);
	m->statement.languages = m->langs;
	m->statement.date = date;
	m->statement.title = (char *) title;
	m->statement.organisation = (char *) organisation;
	m->env.body_case = COORD__V1__ENVELOPE__BODY_STATEMENT;
	m->env.statement = &m->statement;
	return m;
}

static struct msg *
petition(struct msg *m, const char *council, const char *msg_id, int kind, const char *country,
         int64_t date, uint64_t signatures, const char *lang, const char *title, const char *target)
{
	msg_init(m, council, msg_id, 1);
	m->petition.target_kind = kind;
	m->petition.country = (char *) country;
	m->petition.date = date;
	m->petition.signatures = signatures;
	m->petition.language = (char *) lang;
	m->petition.title = (char *) title;
	m->petition.target = (char *) target;
	m->env.body_case = COORD__V1__ENVELOPE__BODY_PETITION;
	m->env.petition = &m->petition;
	return m;
}

static struct msg *
media(struct msg *m, const char *council, const char *msg_id, int kind, const char *country,
      const char *lang, int64_t date, uint32_t local_sources, const char *title, const char *outlet)
{
	msg_init(m, council, msg_id, 1);
	m->media.kind = kind;
	m->media.country = (char *) country;
	m->media.language = (char *) lang;
	m->media.date = date;
	m->media.local_sources = local_sources;
	m->media.title = (char *) title;
	m->media.outlet = (char *) outlet;
	m->env.body_case = COORD__V1__ENVELOPE__BODY_MEDIA;
	m->env.media = &m->media;
	return m;
}

static struct msg *
retraction(struct msg *m, const char *council, const char *msg_id, uint32_t revision)
{
	msg_init(m, council, msg_id, revision);
	m->env.body_case = COORD__V1__ENVELOPE__BODY_RETRACTION;
	m->env.retraction = &m->retraction;
	return m;
}

/* Write `n` messages in one batch; returns store_write_batch()'s result. Statuses and seqs
 * go to ret_recs when not NULL. */
static int
write_batch(struct fixture *f, struct msg *const *ms, size_t n, struct store_record *ret_recs)
{
	struct store_record *recs = calloc(n, sizeof(*recs));
	uint8_t **bufs = calloc(n, sizeof(*bufs));

	assert_non_null(recs);
	assert_non_null(bufs);
	for (size_t i = 0; i < n; i++) {
		const Coord__V1__Envelope *env = &ms[i]->env;

		bufs[i] = malloc(coord__v1__envelope__get_packed_size(env) + 1);
		assert_non_null(bufs[i]);
		recs[i] = (struct store_record){
		        .council = env->council,
		        .msg_id = env->msg_id,
		        .revision = env->revision,
		        .retraction = env->body_case == COORD__V1__ENVELOPE__BODY_RETRACTION,
		        .envelope = bufs[i],
		        .envelope_len = coord__v1__envelope__pack(env, bufs[i]),
		        .received_at = T0,
		};
	}
	int r = store_write_batch(f->store, recs, n);
	if (ret_recs) {
		memcpy(ret_recs, recs, n * sizeof(*recs));
	}
	for (size_t i = 0; i < n; i++) {
		free(bufs[i]);
	}
	free(bufs);
	free(recs);
	return r;
}

/* Write one message, which must be accepted; returns its seq. */
static uint64_t
push(struct fixture *f, struct msg *m)
{
	struct store_record rec;

	assert_int_equal(write_batch(f, &m, 1, &rec), 0);
	assert_int_equal(rec.status, ACCEPTED);
	return rec.seq;
}

static Coord__V1__Digest *
compute(struct fixture *f, Coord__V1__ScopeKind kind, const char *id, Coord__V1__Window window,
        int64_t start, int64_t end, int64_t now, unsigned headlines)
{
	Coord__V1__Digest *dg = NULL;

	assert_int_equal(
	        digest_compute(f->digest, kind, id, window, start, end, now, headlines, &dg), 0);
	assert_non_null(dg);
	return dg;
}

static const Coord__V1__DigestLine *
find_line(const Coord__V1__Digest *dg, int category, int kind)
{
	for (size_t i = 0; i < dg->n_lines; i++) {
		if ((int) dg->lines[i]->category == category && dg->lines[i]->kind == kind) {
			return dg->lines[i];
		}
	}
	return NULL;
}

static uint64_t
code_count(Coord__V1__CodeCount *const *v, size_t n, const char *code)
{
	for (size_t i = 0; i < n; i++) {
		if (strcmp(v[i]->code, code) == 0) {
			return v[i]->count;
		}
	}
	return 0;
}

/* Count of a line (0 when the line is absent) in a fresh digest. */
static uint64_t
line_count(struct fixture *f, Coord__V1__ScopeKind kind, const char *id, int category,
           int line_kind)
{
	Coord__V1__Digest *dg = compute(f, kind, id, W_ALL, 0, 0, T0, 0);
	const Coord__V1__DigestLine *l = find_line(dg, category, line_kind);
	uint64_t n = l ? l->count : 0;

	digest_result_free(dg);
	return n;
}

static int
open_all(struct fixture *f, uint64_t map_size)
{
	const struct store_options o = {
	        .dir = f->dir,
	        .map_size = map_size,
	        .map_size_max = 256 * MIB,
	        .sync = false,
	};
	int r = store_open(&o, &f->store);

	return r < 0 ? r : digest_new(f->store, &f->digest);
}

static void
close_all(struct fixture *f)
{
	f->digest = digest_free(f->digest);
	f->store = store_free(f->store);
}

static int
setup_with_map(void **state, uint64_t map_size)
{
	struct fixture *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	strcpy(f->dir, "/tmp/coordd-test-digest-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	assert_int_equal(open_all(f, map_size), 0);
	*state = f;
	return 0;
}

static int
setup(void **state)
{
	return setup_with_map(state, 4 * MIB);
}

static int
setup_small_map(void **state)
{
	return setup_with_map(state, MIB);
}

static int
teardown(void **state)
{
	struct fixture *f = *state;
	const char *files[] = {"data.mdb", "lock.mdb", "coordd.lock"};
	char path[128];

	close_all(f);
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		(void) snprintf(path, sizeof(path), "%s/%s", f->dir, files[i]);
		(void) unlink(path);
	}
	(void) rmdir(f->dir);
	free(f);
	return 0;
}

/* Entries (batches) in the digest_log table. */
static size_t
log_entries(struct fixture *f)
{
	MDB_dbi dbi;
	MDB_txn *txn;
	MDB_stat st;

	assert_int_equal(store_open_table(f->store, "digest_log", &dbi), 0);
	assert_int_equal(store_read_begin(f->store, &txn), 0);
	assert_int_equal(mdb_stat(txn, dbi, &st), 0);
	store_read_end(f->store, txn);
	return st.ms_entries;
}

/* Entries in the digest table. */
static size_t
table_entries(struct fixture *f)
{
	MDB_dbi dbi;
	MDB_txn *txn;
	MDB_stat st;

	assert_int_equal(store_open_table(f->store, "digest", &dbi), 0);
	assert_int_equal(store_read_begin(f->store, &txn), 0);
	assert_int_equal(mdb_stat(txn, dbi, &st), 0);
	store_read_end(f->store, txn);
	return st.ms_entries;
}

/* verify finds the table plus log intact; rebuild folds the log and changes nothing else. */
static void
assert_verify_and_rebuild_agree(struct fixture *f)
{
	struct digest_check_report rep;
	MDB_txn *txn;

	assert_int_equal(digest_verify(f->store, NULL, NULL, NULL, &rep), 0);
	assert_int_equal(rep.problems, 0);
	assert_true(rep.live > 0);
	/* The repair tools run with the daemon stopped: here the digest's hooks are taken
	 * away, so that rebuild meets the log (digest_free() would have folded it). */
	store_set_hooks(f->store, NULL);
	assert_int_equal(store_repair_begin(f->store, &txn), 0);
	assert_int_equal(digest_rebuild(f->store, txn, NULL, NULL, &rep), 0);
	assert_int_equal(store_repair_commit(f->store, txn), 0);
	assert_int_equal(rep.problems, 0);
	assert_int_equal(log_entries(f), 0);
	assert_int_equal(digest_verify(f->store, NULL, NULL, NULL, &rep), 0);
	/* A fresh digest object, hooked again, reads the rebuilt table. */
	close_all(f);
	assert_int_equal(open_all(f, 4 * MIB), 0);
}

static void
test_accepts_count_sums_and_distinct_codes(void **state)
{
	struct fixture *f = *state;
	struct msg m[6];
	struct msg *batch[] = {
	        event(&m[0], "c01", "e1", 1, RALLY, "DE", T0, 100, "de,en", "Rally Berlin"),
	        event(&m[1], "c02", "e2", 1, RALLY, "DE", T0, 50, "de", "Rally Munich"),
	        event(&m[2], "c01", "e3", 1, RALLY, "FR", T0, 30, "fr", "Rally Paris"),
	        event(&m[3], "c01", "e4", 1, ROUNDTABLE, "AM", T0, 0, "hy", "Roundtable"),
	        media(&m[4], "c01", "m1", BROADCAST, "US", "en", T0, 200, "Report", "TV"),
	        media(&m[5], "c02", "m2", BROADCAST, "US", "en-US", T0, 100, "Report", "TV"),
	};

	assert_int_equal(write_batch(f, batch, 6, NULL), 0);

	Coord__V1__Digest *dg = compute(f, ALL, "", W_ALL, 0, 0, T0 + H, 0);
	assert_int_equal(dg->n_lines, 3);
	/* By category, then kind. */
	assert_int_equal(dg->lines[0]->category, C_EVENT);
	assert_int_equal(dg->lines[0]->kind, RALLY);
	assert_int_equal(dg->lines[1]->kind, ROUNDTABLE);
	assert_int_equal(dg->lines[2]->category, C_MEDIA);

	const Coord__V1__DigestLine *l = dg->lines[0];
	assert_int_equal(l->count, 3);
	assert_int_equal(l->sum, 180);
	assert_int_equal(l->n_countries, 2);
	assert_string_equal(l->countries[0]->code, "DE");
	assert_int_equal(l->countries[0]->count, 2);
	assert_string_equal(l->countries[1]->code, "FR");
	assert_int_equal(l->countries[1]->count, 1);
	assert_int_equal(l->n_languages, 3);
	assert_int_equal(code_count(l->languages, l->n_languages, "de"), 2);
	assert_int_equal(code_count(l->languages, l->n_languages, "en"), 1);
	assert_int_equal(code_count(l->languages, l->n_languages, "fr"), 1);
	assert_int_equal(l->n_councils, 2);
	assert_int_equal(code_count(l->councils, l->n_councils, "c01"), 2);
	assert_int_equal(code_count(l->councils, l->n_councils, "c02"), 1);

	l = dg->lines[2];
	assert_int_equal(l->count, 2);
	assert_int_equal(l->sum, 300);
	assert_int_equal(l->n_languages, 1);
	assert_int_equal(code_count(l->languages, 1, "en"), 2);
	assert_int_equal(dg->last_seq, 6);
	assert_int_equal(dg->generated_at, T0 + H);
	assert_int_equal(dg->start, 0);
	assert_int_equal(dg->end, 0);
	assert_int_equal(dg->scope->kind, ALL);
	assert_string_equal(dg->scope->id, "");
	digest_result_free(dg);

	dg = compute(f, COUNCIL, "c02", W_ALL, 0, 0, T0, 0);
	assert_int_equal(dg->n_lines, 2);
	assert_int_equal(find_line(dg, C_EVENT, RALLY)->count, 1);
	assert_int_equal(find_line(dg, C_EVENT, RALLY)->sum, 50);
	assert_int_equal(find_line(dg, C_MEDIA, BROADCAST)->count, 1);
	assert_string_equal(dg->scope->id, "c02");
	digest_result_free(dg);

	dg = compute(f, COUNTRY, "DE", W_ALL, 0, 0, T0, 0);
	assert_int_equal(dg->n_lines, 1);
	assert_int_equal(dg->lines[0]->count, 2);
	assert_int_equal(dg->lines[0]->n_councils, 2);
	digest_result_free(dg);
}

static void
test_other_categories_count_kind_country_and_sum(void **state)
{
	struct fixture *f = *state;
	struct msg m[3];
	struct msg *batch[] = {
	        letter(&m[0], "c01", "l1", COORD__V1__RECIPIENT_KIND__RECIPIENT_KIND_PARLIAMENT,
	               "IT", "it", T0, "Appeal", "Camera"),
	        statement(&m[1], "c01", "s1", "GB", "en,hy-AM", T0, "Appeal", "Org"),
	        petition(&m[2], "c02", "p1",
	                 COORD__V1__PETITION_TARGET__PETITION_TARGET_NATIONAL_PARLIAMENT, "NL", T0,
	                 12345, "", "Petition", "Tweede Kamer"),
	};

	assert_int_equal(write_batch(f, batch, 3, NULL), 0);
	Coord__V1__Digest *dg = compute(f, ALL, NULL, W_ALL, 0, 0, T0, 0);
	const Coord__V1__DigestLine *l =
	        find_line(dg, C_LETTER, COORD__V1__RECIPIENT_KIND__RECIPIENT_KIND_PARLIAMENT);
	assert_non_null(l);
	assert_int_equal(code_count(l->countries, l->n_countries, "IT"), 1);
	assert_int_equal(code_count(l->languages, l->n_languages, "it"), 1);
	assert_int_equal(l->sum, 0);
	l = find_line(dg, C_STATEMENT, 0);
	assert_non_null(l);
	assert_int_equal(l->n_languages, 2);
	l = find_line(dg, C_PETITION,
	              COORD__V1__PETITION_TARGET__PETITION_TARGET_NATIONAL_PARLIAMENT);
	assert_non_null(l);
	assert_int_equal(l->sum, 12345);
	assert_int_equal(l->n_languages, 0); /* the optional language was empty */
	assert_int_equal(code_count(l->countries, l->n_countries, "NL"), 1);
	digest_result_free(dg);
}

static void
test_correction_moves_the_country(void **state)
{
	struct fixture *f = *state;
	struct msg m;

	push(f, event(&m, "c01", "r1", 1, RALLY, "DE", T0, 10, "de", "Rally"));
	push(f, event(&m, "c02", "r2", 1, RALLY, "DE", T0, 20, "de", "Rally"));
	push(f, event(&m, "c01", "r1", 2, RALLY, "FR", T0, 15, "fr", "Rally"));

	Coord__V1__Digest *dg = compute(f, ALL, "", W_ALL, 0, 0, T0, 0);
	const Coord__V1__DigestLine *l = find_line(dg, C_EVENT, RALLY);
	assert_int_equal(l->count, 2);
	assert_int_equal(l->sum, 35);
	assert_int_equal(code_count(l->countries, l->n_countries, "DE"), 1);
	assert_int_equal(code_count(l->countries, l->n_countries, "FR"), 1);
	assert_int_equal(code_count(l->languages, l->n_languages, "de"), 1);
	digest_result_free(dg);
	assert_int_equal(line_count(f, COUNTRY, "DE", C_EVENT, RALLY), 1);

	push(f, event(&m, "c02", "r2", 2, RALLY, "FR", T0, 20, "fr", "Rally"));
	dg = compute(f, ALL, "", W_ALL, 0, 0, T0, 0);
	l = find_line(dg, C_EVENT, RALLY);
	assert_int_equal(l->count, 2);
	assert_int_equal(l->n_countries, 1);
	assert_string_equal(l->countries[0]->code, "FR");
	assert_int_equal(l->countries[0]->count, 2);
	assert_int_equal(l->n_languages, 1);
	assert_string_equal(l->languages[0]->code, "fr");
	digest_result_free(dg);

	/* The DE scope has no line left at all. */
	dg = compute(f, COUNTRY, "DE", W_ALL, 0, 0, T0, 0);
	assert_int_equal(dg->n_lines, 0);
	assert_int_equal(dg->n_headlines, 0);
	digest_result_free(dg);
}

static void
test_correction_changes_the_kind(void **state)
{
	struct fixture *f = *state;
	struct msg m;

	push(f, event(&m, "c01", "r1", 1, RALLY, "DE", T0, 10, "de", "Rally"));
	push(f, event(&m, "c01", "r1", 2, ROUNDTABLE, "DE", T0, 10, "de", "Roundtable"));
	assert_int_equal(line_count(f, ALL, "", C_EVENT, RALLY), 0);
	assert_int_equal(line_count(f, ALL, "", C_EVENT, ROUNDTABLE), 1);
}

static void
test_retraction_removes_and_restore_adds_back(void **state)
{
	struct fixture *f = *state;
	struct msg m;

	push(f, event(&m, "c01", "r1", 1, RALLY, "DE", T0, 10, "de", "Rally"));
	push(f, event(&m, "c01", "r2", 1, RALLY, "DE", T0, 5, "de", "Rally"));
	push(f, retraction(&m, "c01", "r1", 2));
	Coord__V1__Digest *dg = compute(f, COUNCIL, "c01", W_ALL, 0, 0, T0, 0);
	assert_int_equal(dg->n_lines, 1);
	assert_int_equal(dg->lines[0]->count, 1);
	assert_int_equal(dg->lines[0]->sum, 5);
	digest_result_free(dg);

	push(f, retraction(&m, "c01", "r2", 2));
	assert_int_equal(line_count(f, ALL, "", C_EVENT, RALLY), 0);
	assert_int_equal(line_count(f, COUNCIL, "c01", C_EVENT, RALLY), 0);

	/* A second retraction of a retracted record changes nothing. */
	push(f, retraction(&m, "c01", "r2", 3));
	assert_int_equal(line_count(f, ALL, "", C_EVENT, RALLY), 0);

	push(f, event(&m, "c01", "r1", 3, RALLY, "DE", T0, 10, "de", "Rally"));
	dg = compute(f, COUNTRY, "DE", W_ALL, 0, 0, T0, 0);
	assert_int_equal(dg->n_lines, 1);
	assert_int_equal(dg->lines[0]->count, 1);
	assert_int_equal(dg->lines[0]->sum, 10);
	assert_int_equal(code_count(dg->lines[0]->languages, dg->lines[0]->n_languages, "de"), 1);
	digest_result_free(dg);
}

static void
test_languages_counted_by_primary_subtag(void **state)
{
	struct fixture *f = *state;
	struct msg m;
	struct digest_contribution c;

	event(&m, "c01", "e1", 1, RALLY, "DE", T0, 0, "en-GB,en,EN-us,hy,hyw", "Rally");
	assert_int_equal(digest_contribution_of(&m.env, &c), 0);
	assert_int_equal(c.n_languages, 3);
	assert_string_equal(c.languages[0], "en");
	assert_string_equal(c.languages[1], "hy");
	assert_string_equal(c.languages[2], "hyw");
	push(f, &m);
	push(f, event(&m, "c01", "e2", 1, RALLY, "DE", T0, 0, "en", "Rally"));

	Coord__V1__Digest *dg = compute(f, ALL, "", W_ALL, 0, 0, T0, 0);
	const Coord__V1__DigestLine *l = find_line(dg, C_EVENT, RALLY);
	assert_int_equal(l->n_languages, 3);
	assert_string_equal(l->languages[0]->code, "en");
	assert_int_equal(l->languages[0]->count, 2);
	assert_string_equal(l->languages[1]->code, "hy");
	assert_int_equal(l->languages[1]->count, 1);
	assert_string_equal(l->languages[2]->code, "hyw");
	digest_result_free(dg);
}

static void
test_contribution_of_each_category(void **state)
{
	struct msg m;
	struct digest_contribution c;

	letter(&m, "c01", "l", 2, "IT", "it-CH", T0 + 1, "S", "R");
	assert_int_equal(digest_contribution_of(&m.env, &c), 0);
	assert_int_equal(c.category, C_LETTER);
	assert_int_equal(c.kind, 2);
	assert_int_equal(c.date, T0 + 1);
	assert_string_equal(c.country, "IT");
	assert_int_equal(c.n_languages, 1);
	assert_string_equal(c.languages[0], "it");

	statement(&m, "c01", "s", "GB", "en", T0 + 2, "", "Org");
	assert_int_equal(digest_contribution_of(&m.env, &c), 0);
	assert_int_equal(c.category, C_STATEMENT);
	assert_int_equal(c.kind, 0);
	assert_int_equal(c.date, T0 + 2);

	petition(&m, "c01", "p", 1, "NL", T0 + 3, 77, "nl", "T", "Target");
	assert_int_equal(digest_contribution_of(&m.env, &c), 0);
	assert_int_equal(c.category, C_PETITION);
	assert_int_equal(c.sum, 77);
	assert_int_equal(c.n_languages, 1);

	media(&m, "c01", "m", BROADCAST, "US", "en", T0 + 4, 9, "T", "O");
	assert_int_equal(digest_contribution_of(&m.env, &c), 0);
	assert_int_equal(c.category, C_MEDIA);
	assert_int_equal(c.kind, BROADCAST);
	assert_int_equal(c.sum, 9);
	assert_string_equal(c.country, "US");

	event(&m, "c01", "e", 1, RALLY, "AM", T0 + 5, 40, "hy", "T");
	assert_int_equal(digest_contribution_of(&m.env, &c), 0);
	assert_int_equal(c.category, C_EVENT);
	assert_int_equal(c.sum, 40);
	assert_int_equal(c.date, T0 + 5);

	retraction(&m, "c01", "e", 2);
	assert_int_equal(digest_contribution_of(&m.env, &c), -EINVAL);
	msg_init(&m, "c01", "x", 1);
	assert_int_equal(digest_contribution_of(&m.env, &c), -EINVAL);
}

static void
test_hour_buckets_and_window_merging(void **state)
{
	struct fixture *f = *state;
	struct msg m[6];
	struct msg *batch[] = {
	        event(&m[0], "c01", "a", 1, RALLY, "DE", T0, 1, "de", "10:00"),
	        event(&m[1], "c01", "b", 1, RALLY, "DE", T0 + H - 1, 2, "de", "10:59:59.999"),
	        event(&m[2], "c01", "c", 1, RALLY, "DE", T0 + H, 4, "de", "11:00"),
	        event(&m[3], "c01", "d", 1, RALLY, "DE", T0 - H / 2, 8, "de", "09:30"),
	        event(&m[4], "c01", "e", 1, RALLY, "DE", T0 - 48 * H, 16, "de", "two days ago"),
	        event(&m[5], "c01", "f", 1, RALLY, "DE", T0 + 5 * H, 32, "de", "15:00"),
	};
	struct {
		Coord__V1__Window window;
		int64_t start, end, now;
		int64_t want_start, want_end;
		uint64_t want_sum;
	} cases[] = {
	        {W_1H, 0, 0, T0 + H + H / 2, T0, T0 + 2 * H, 1 + 2 + 4},
	        {W_1H, 0, 0, T0 + H, T0, T0 + H, 1 + 2},
	        {W_24H, 0, 0, T0 + H + H / 2, T0 - 23 * H, T0 + 2 * H, 1 + 2 + 4 + 8},
	        {W_24H, 0, 0, T0 + 3 * H, T0 - 21 * H, T0 + 3 * H, 1 + 2 + 4 + 8},
	        {W_RANGE, T0 + H / 4, T0 + 3 * H / 4, 0, T0, T0 + H, 1 + 2},
	        {W_RANGE, T0, T0 + 1, 0, T0, T0 + H, 1 + 2},
	        {W_RANGE, T0 - 49 * H, T0 + 6 * H, 0, T0 - 49 * H, T0 + 6 * H, 63},
	        {W_RANGE, T0 + 2 * H, T0 + 5 * H, 0, T0 + 2 * H, T0 + 5 * H, 0},
	        {W_RANGE, 0, INT64_MAX, 0, 0, INT64_MAX, 63},
	        {W_ALL, 0, 0, T0, 0, 0, 63},
	};

	assert_int_equal(write_batch(f, batch, 6, NULL), 0);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		static const struct {
			Coord__V1__ScopeKind kind;
			const char *id;
		} scopes[] = {{ALL, ""}, {COUNCIL, "c01"}, {COUNTRY, "DE"}};

		for (size_t s = 0; s < 3; s++) {
			Coord__V1__Digest *dg =
			        compute(f, scopes[s].kind, scopes[s].id, cases[i].window,
			                cases[i].start, cases[i].end, cases[i].now, 0);
			const Coord__V1__DigestLine *l = find_line(dg, C_EVENT, RALLY);

			assert_int_equal(dg->window, cases[i].window);
			assert_int_equal(dg->start, cases[i].want_start);
			assert_int_equal(dg->end, cases[i].want_end);
			assert_int_equal(l ? l->sum : 0, cases[i].want_sum);
			assert_int_equal(dg->n_lines, cases[i].want_sum ? 1 : 0);
			/* Headlines respect the same (rounded) window. */
			for (size_t j = 0; j < dg->n_headlines; j++) {
				if (cases[i].window != W_ALL) {
					assert_true(dg->headlines[j]->date >= dg->start);
					assert_true(dg->headlines[j]->date < dg->end);
				}
			}
			digest_result_free(dg);
		}
	}
}

/* The table layout is a storage format: check the keys directly. */
static void
test_table_keys_are_scope_and_bucket(void **state)
{
	struct fixture *f = *state;
	struct msg m;
	MDB_dbi dbi;
	MDB_txn *txn;
	MDB_stat st;
	MDB_val k, v;
	uint8_t key[64];
	uint64_t bucket = (uint64_t) (T0 / H) + 0;

	digest_set_log_limit(f->digest, 0);
	push(f, event(&m, "c01", "a", 1, RALLY, "DE", T0 + H / 2, 7, "de", "Rally"));
	assert_int_equal(store_open_table(f->store, "digest", &dbi), 0);
	assert_int_equal(store_read_begin(f->store, &txn), 0);
	assert_int_equal(mdb_stat(txn, dbi, &st), 0);
	assert_int_equal(st.ms_entries, 6);

	/* COUNTRY "DE" 0, hour bucket big-endian. */
	key[0] = COUNTRY;
	memcpy(key + 1, "DE", 3);
	for (int i = 0; i < 8; i++) {
		key[4 + i] = (uint8_t) (bucket >> (56 - 8 * i));
	}
	k = (MDB_val){.mv_size = 12, .mv_data = key};
	assert_int_equal(mdb_get(txn, dbi, &k, &v), 0);
	Coord__V1__Aggregate *agg = NULL;
	assert_int_equal(digest_value_decode(v.mv_data, v.mv_size, &agg), 0);
	assert_int_equal(agg->n_lines, 1);
	assert_int_equal(agg->lines[0]->count, 1);
	assert_int_equal(agg->lines[0]->sum, 7);
	digest_value_free(agg);

	/* ALL "" 0, whole campaign. */
	key[0] = ALL;
	key[1] = 0;
	memset(key + 2, 0xff, 8);
	k = (MDB_val){.mv_size = 10, .mv_data = key};
	assert_int_equal(mdb_get(txn, dbi, &k, &v), 0);
	store_read_end(f->store, txn);

	/* Empty aggregates are deleted. */
	push(f, retraction(&m, "c01", "a", 2));
	assert_int_equal(store_read_begin(f->store, &txn), 0);
	assert_int_equal(mdb_stat(txn, dbi, &st), 0);
	assert_int_equal(st.ms_entries, 0);
	store_read_end(f->store, txn);
}

/* Every stored aggregate (written by the write side's compact encoder) decodes, is byte for
 * byte what the read side's encoder makes of the decoded aggregate, and the table is smaller
 * than protobuf-c's packing of the same aggregates (schema 2's format). */
static void
assert_table_is_canonical(struct fixture *f)
{
	MDB_dbi dbi;
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, v;
	size_t n = 0, compact = 0, protobuf = 0;

	assert_int_equal(store_open_table(f->store, "digest", &dbi), 0);
	assert_int_equal(store_read_begin(f->store, &txn), 0);
	assert_int_equal(mdb_cursor_open(txn, dbi, &cur), 0);
	for (int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		Coord__V1__Aggregate *agg = NULL;
		uint8_t *buf = NULL;
		size_t len = 0;
		assert_int_equal(digest_value_decode(v.mv_data, v.mv_size, &agg), 0);
		assert_int_equal(digest_value_encode(agg, &buf, &len), 0);
		assert_int_equal(v.mv_size, len);
		assert_memory_equal(v.mv_data, buf, len);
		compact += len;
		protobuf += coord__v1__aggregate__get_packed_size(agg);
		free(buf);
		digest_value_free(agg);
		n++;
	}
	mdb_cursor_close(cur);
	store_read_end(f->store, txn);
	assert_true(n > 0);
	assert_true(compact < protobuf);
}

/* Large sums and counts (multi-byte varints), every category, several codes per list. */
static void
test_stored_aggregates_are_canonical(void **state)
{
	struct fixture *f = *state;
	struct msg m[6];
	struct msg *batch[] = {
	        event(&m[0], "c01", "e1", 1, RALLY, "DE", T0, 4000000000u, "de,en,fr", "Rally"),
	        letter(&m[1], "c02", "l1", 3, "FR", "fr", T0 + H, "Subject", "Mayor"),
	        statement(&m[2], "c03", "s1", "AM", "hy,ru", T0 - 30 * H, "Statement", "Org"),
	        petition(&m[3], "c01", "p1", 2, "US", T0, UINT64_C(1) << 40, "en", "Petition",
	                 "Senate"),
	        media(&m[4], "c02", "m1", BROADCAST, "US", "en", T0, 300, "Report", "TV"),
	        event(&m[5], "c03", "e2", 1, ROUNDTABLE, "", T0, 0, "", "Roundtable"),
	};

	digest_set_log_limit(f->digest, 0);
	assert_int_equal(write_batch(f, batch, 6, NULL), 0);
	for (int i = 0; i < 200; i++) {
		char id[16];
		(void) snprintf(id, sizeof(id), "r%d", i);
		push(f, event(&m[0], i % 2 ? "c01" : "c02", id, 1, RALLY, i % 3 ? "DE" : "GB", T0,
		              (uint32_t) i * 1000, "de", "Rally"));
	}
	assert_table_is_canonical(f);
}

static void
test_headlines_newest_first_skip_retracted_and_superseded(void **state)
{
	struct fixture *f = *state;
	struct msg m;

	push(f, event(&m, "c01", "a", 1, RALLY, "DE", T0, 0, "de", "A1"));
	push(f, event(&m, "c02", "b", 1, ROUNDTABLE, "FR", T0 - 2 * H, 0, "fr", "B"));
	push(f, event(&m, "c01", "c", 1, RALLY, "DE", T0, 0, "de", "C"));
	push(f, event(&m, "c01", "a", 2, RALLY, "DE", T0 + 1, 0, "de", "A2"));
	push(f, retraction(&m, "c01", "c", 2));
	push(f, letter(&m, "c03", "l", 1, "IT", "it", T0 - 3 * H, "", "Senato"));
	push(f, media(&m, "c03", "md", BROADCAST, "US", "en", T0 - 4 * H, 3, "", "Outlet"));

	Coord__V1__Digest *dg = compute(f, ALL, "", W_ALL, 0, 0, T0, 0);
	assert_int_equal(dg->n_headlines, 4);
	assert_int_equal(dg->headlines[0]->seq, 7);
	assert_string_equal(dg->headlines[0]->title, "Outlet");
	assert_int_equal(dg->headlines[0]->category, C_MEDIA);
	assert_int_equal(dg->headlines[0]->kind, BROADCAST);
	assert_string_equal(dg->headlines[1]->title, "Senato");
	assert_int_equal(dg->headlines[2]->seq, 4);
	assert_string_equal(dg->headlines[2]->title, "A2");
	assert_string_equal(dg->headlines[2]->council, "c01");
	assert_string_equal(dg->headlines[2]->country, "DE");
	assert_int_equal(dg->headlines[2]->date, T0 + 1);
	assert_int_equal(dg->headlines[3]->seq, 2);
	assert_string_equal(dg->headlines[3]->title, "B");
	assert_int_equal(dg->last_seq, 7);
	digest_result_free(dg);

	dg = compute(f, ALL, "", W_ALL, 0, 0, T0, 1);
	assert_int_equal(dg->n_headlines, 1);
	assert_int_equal(dg->headlines[0]->seq, 7);
	digest_result_free(dg);

	dg = compute(f, COUNCIL, "c01", W_ALL, 0, 0, T0, 0);
	assert_int_equal(dg->n_headlines, 1);
	assert_string_equal(dg->headlines[0]->title, "A2");
	digest_result_free(dg);

	dg = compute(f, COUNTRY, "FR", W_ALL, 0, 0, T0, 0);
	assert_int_equal(dg->n_headlines, 1);
	assert_string_equal(dg->headlines[0]->title, "B");
	digest_result_free(dg);

	/* [T0 - 2 h, T0 - 1 h) holds only B. */
	dg = compute(f, ALL, "", W_RANGE, T0 - 2 * H, T0 - H, T0, 0);
	assert_int_equal(dg->n_headlines, 1);
	assert_string_equal(dg->headlines[0]->title, "B");
	digest_result_free(dg);
}

static void
test_headlines_are_capped(void **state)
{
	struct fixture *f = *state;
	struct msg m[DIGEST_HEADLINES_MAX + 5];
	struct msg *batch[DIGEST_HEADLINES_MAX + 5];
	char ids[DIGEST_HEADLINES_MAX + 5][8];

	for (size_t i = 0; i < DIGEST_HEADLINES_MAX + 5; i++) {
		(void) snprintf(ids[i], sizeof(ids[i]), "e%zu", i);
		batch[i] = event(&m[i], "c01", ids[i], 1, RALLY, "DE", T0, 1, "de", ids[i]);
	}
	assert_int_equal(write_batch(f, batch, DIGEST_HEADLINES_MAX + 5, NULL), 0);
	Coord__V1__Digest *dg = compute(f, ALL, "", W_ALL, 0, 0, T0, 0);
	assert_int_equal(dg->n_headlines, DIGEST_HEADLINES_DEFAULT);
	digest_result_free(dg);
	dg = compute(f, ALL, "", W_ALL, 0, 0, T0, 1000);
	assert_int_equal(dg->n_headlines, DIGEST_HEADLINES_MAX);
	assert_int_equal(dg->headlines[0]->seq, DIGEST_HEADLINES_MAX + 5);
	assert_int_equal(dg->lines[0]->count, DIGEST_HEADLINES_MAX + 5);
	digest_result_free(dg);
}

static void
expect_scopes(struct fixture *f, const struct digest_scope *want, size_t n)
{
	struct digest_scope *got = NULL;
	int r = digest_take_dirty(f->digest, &got);

	assert_int_equal(r, (int) n);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(got[i].kind, want[i].kind);
		assert_string_equal(got[i].id, want[i].id);
	}
	if (n == 0) {
		assert_null(got);
	}
	free(got);
}

static void
test_dirty_scopes_hold_old_and_new_scopes(void **state)
{
	struct fixture *f = *state;
	struct msg m;

	expect_scopes(f, NULL, 0);
	push(f, event(&m, "c01", "r1", 1, RALLY, "DE", T0, 10, "de", "Rally"));
	push(f, event(&m, "c02", "r2", 1, RALLY, "DE", T0, 10, "de", "Rally"));
	const struct digest_scope first[] = {
	        {ALL, ""}, {COUNCIL, "c01"}, {COUNCIL, "c02"}, {COUNTRY, "DE"}};
	expect_scopes(f, first, 4);
	expect_scopes(f, NULL, 0);

	push(f, event(&m, "c01", "r1", 2, RALLY, "FR", T0, 10, "fr", "Rally"));
	const struct digest_scope moved[] = {
	        {ALL, ""}, {COUNCIL, "c01"}, {COUNTRY, "DE"}, {COUNTRY, "FR"}};
	expect_scopes(f, moved, 4);

	push(f, retraction(&m, "c02", "r2", 2));
	const struct digest_scope retracted[] = {{ALL, ""}, {COUNCIL, "c02"}, {COUNTRY, "DE"}};
	expect_scopes(f, retracted, 3);

	/* A duplicate changes nothing. */
	struct store_record rec;
	struct msg *p = event(&m, "c01", "r1", 2, RALLY, "FR", T0, 10, "fr", "Rally");
	assert_int_equal(write_batch(f, &p, 1, &rec), 0);
	assert_int_equal(rec.status, COORD__V1__ACK_STATUS__ACK_STATUS_DUPLICATE);
	expect_scopes(f, NULL, 0);
}

static void
test_correction_in_the_same_batch(void **state)
{
	struct fixture *f = *state;
	struct msg m[3];
	struct msg *batch[] = {
	        event(&m[0], "c01", "r1", 1, RALLY, "DE", T0, 10, "de", "Rally"),
	        event(&m[1], "c01", "r1", 2, RALLY, "FR", T0 + 3 * H, 10, "fr", "Rally"),
	        event(&m[2], "c01", "r2", 1, RALLY, "AM", T0, 1, "hy", "Rally"),
	};

	assert_int_equal(write_batch(f, batch, 3, NULL), 0);
	Coord__V1__Digest *dg = compute(f, ALL, "", W_ALL, 0, 0, T0, 0);
	const Coord__V1__DigestLine *l = find_line(dg, C_EVENT, RALLY);
	assert_int_equal(l->count, 2);
	assert_int_equal(l->sum, 11);
	assert_int_equal(code_count(l->countries, l->n_countries, "DE"), 0);
	assert_int_equal(l->n_countries, 2);
	digest_result_free(dg);
	assert_int_equal(line_count(f, COUNTRY, "DE", C_EVENT, RALLY), 0);
	dg = compute(f, ALL, "", W_RANGE, T0, T0 + H, T0, 0);
	assert_int_equal(find_line(dg, C_EVENT, RALLY)->count, 1); /* only r2 */
	digest_result_free(dg);

	/* DE was touched (added, then removed) inside the batch: it is listed too. */
	const struct digest_scope want[] = {
	        {ALL, ""}, {COUNCIL, "c01"}, {COUNTRY, "AM"}, {COUNTRY, "DE"}, {COUNTRY, "FR"}};
	expect_scopes(f, want, 5);
}

static void
test_undecodable_envelope_fails_the_batch(void **state)
{
	struct fixture *f = *state;
	struct msg m;
	static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff};
	struct store_stats st;

	push(f, event(&m, "c01", "r1", 1, RALLY, "DE", T0, 10, "de", "Rally"));
	expect_scopes(
	        f, (const struct digest_scope[]){{ALL, ""}, {COUNCIL, "c01"}, {COUNTRY, "DE"}}, 3);

	struct store_record recs[] = {
	        {.council = "c02", .msg_id = "ok", .revision = 1},
	        {.council = "c02",
	         .msg_id = "bad",
	         .revision = 1,
	         .envelope = garbage,
	         .envelope_len = sizeof(garbage)},
	};
	uint8_t buf[256];
	event(&m, "c02", "ok", 1, RALLY, "FR", T0, 1, "fr", "Rally");
	recs[0].envelope = buf;
	recs[0].envelope_len = coord__v1__envelope__pack(&m.env, buf);
	assert_int_equal(store_write_batch(f->store, recs, 2), -EBADMSG);

	assert_int_equal(store_get_stats(f->store, &st), 0);
	assert_int_equal(st.items, 1);
	expect_scopes(f, NULL, 0);
	assert_int_equal(line_count(f, ALL, "", C_EVENT, RALLY), 1);
	assert_int_equal(line_count(f, COUNTRY, "FR", C_EVENT, RALLY), 0);

	/* The next batch starts from committed state. */
	push(f, event(&m, "c02", "ok", 1, RALLY, "FR", T0, 1, "fr", "Rally"));
	assert_int_equal(line_count(f, ALL, "", C_EVENT, RALLY), 2);
}

/* A record handed over already unpacked (store_record.decoded, as ingest does) is counted
 * from that Envelope, not unpacked again; a correction's superseded revision, which only
 * the store holds, is still unpacked from its bytes. The bytes here say FR and the decoded
 * Envelope DE, so the country counted shows which was read. */
static void
test_decoded_envelope_is_counted_without_unpacking(void **state)
{
	struct fixture *f = *state;
	struct msg bytes_m, decoded_m;
	uint8_t buf[512];

	event(&bytes_m, "c01", "e1", 1, RALLY, "FR", T0, 10, "fr", "Rally");
	event(&decoded_m, "c01", "e1", 1, RALLY, "DE", T0, 10, "de", "Rally");
	struct store_record rec = {
	        .council = "c01",
	        .msg_id = "e1",
	        .revision = 1,
	        .envelope = buf,
	        .envelope_len = coord__v1__envelope__pack(&bytes_m.env, buf),
	        .received_at = T0,
	        .decoded = &decoded_m.env,
	};
	assert_int_equal(store_write_batch(f->store, &rec, 1), 0);
	assert_int_equal(rec.status, ACCEPTED);
	assert_int_equal(line_count(f, COUNTRY, "DE", C_EVENT, RALLY), 1);
	assert_int_equal(line_count(f, COUNTRY, "FR", C_EVENT, RALLY), 0);

	/* The correction removes what the stored bytes say (FR: nothing there to remove) and
	 * adds what its own decoded Envelope says. */
	event(&decoded_m, "c01", "e1", 2, RALLY, "AM", T0, 10, "hy", "Rally");
	rec = (struct store_record){
	        .council = "c01",
	        .msg_id = "e1",
	        .revision = 2,
	        .envelope = buf,
	        .envelope_len = coord__v1__envelope__pack(&decoded_m.env, buf),
	        .received_at = T0,
	        .decoded = &decoded_m.env,
	};
	assert_int_equal(store_write_batch(f->store, &rec, 1), 0);
	assert_int_equal(line_count(f, COUNTRY, "AM", C_EVENT, RALLY), 1);
	assert_int_equal(line_count(f, COUNTRY, "DE", C_EVENT, RALLY), 1);
	assert_int_equal(line_count(f, ALL, "", C_EVENT, RALLY), 1);
}

static void
test_aggregates_survive_reopen(void **state)
{
	struct fixture *f = *state;
	struct msg m;

	push(f, event(&m, "c01", "r1", 1, RALLY, "DE", T0, 10, "de", "Rally"));
	close_all(f);
	assert_int_equal(open_all(f, 4 * MIB), 0);
	assert_int_equal(line_count(f, COUNTRY, "DE", C_EVENT, RALLY), 1);
	push(f, event(&m, "c01", "r1", 2, RALLY, "FR", T0, 10, "fr", "Rally"));
	assert_int_equal(line_count(f, COUNTRY, "DE", C_EVENT, RALLY), 0);
	assert_int_equal(line_count(f, COUNTRY, "FR", C_EVENT, RALLY), 1);
}

static void
test_log_holds_contributions_until_the_limit(void **state)
{
	struct fixture *f = *state;
	struct msg m;

	digest_set_log_limit(f->digest, 4);
	digest_set_fold_background(f->digest, false);
	push(f, event(&m, "c01", "a", 1, RALLY, "DE", T0, 10, "de", "Rally"));
	push(f, event(&m, "c01", "b", 1, RALLY, "FR", T0 + H, 20, "fr", "Rally"));
	/* A correction logs two contributions: 4 in all, not above the limit. */
	push(f, event(&m, "c01", "a", 2, RALLY, "AM", T0, 30, "hy", "Rally"));
	assert_int_equal(log_entries(f), 3);
	assert_int_equal(table_entries(f), 0);
	assert_int_equal(line_count(f, ALL, "", C_EVENT, RALLY), 2);
	assert_int_equal(line_count(f, COUNTRY, "DE", C_EVENT, RALLY), 0);
	assert_int_equal(line_count(f, COUNTRY, "AM", C_EVENT, RALLY), 1);
	Coord__V1__Digest *dg = compute(f, ALL, "", W_RANGE, T0 + H, T0 + 2 * H, T0, 0);
	assert_int_equal(dg->n_lines, 1);
	assert_int_equal(dg->lines[0]->count, 1);
	assert_int_equal(dg->lines[0]->sum, 20);
	digest_result_free(dg);

	/* The fifth contribution folds everything, this batch's too. */
	push(f, retraction(&m, "c01", "b", 2));
	assert_int_equal(log_entries(f), 0);
	assert_int_equal(table_entries(f), 6);
	assert_int_equal(line_count(f, ALL, "", C_EVENT, RALLY), 1);
	assert_int_equal(line_count(f, COUNTRY, "AM", C_EVENT, RALLY), 1);
	assert_int_equal(line_count(f, COUNTRY, "FR", C_EVENT, RALLY), 0);
}

/* digest_log_state(): the contributions in the committed log, with the limit of 2. */
static size_t
log_pending(struct fixture *f)
{
	size_t logged, limit;

	digest_log_state(f->digest, &logged, &limit);
	assert_int_equal(limit, 2);
	return logged;
}

/* The folder thread folds a snapshot of the log; the next batch installs it (and deletes
 * the entries folded, not its own), and every digest stays exact on the way. */
static void
test_background_fold_is_installed_by_the_next_batch(void **state)
{
	struct fixture *f = *state;
	struct msg m;

	digest_set_log_limit(f->digest, 2);
	assert_int_equal(digest_fold_wait(f->digest), -EAGAIN); /* no folder yet */
	push(f, event(&m, "c01", "a", 1, RALLY, "DE", T0, 10, "de", "Rally"));
	push(f, event(&m, "c01", "b", 1, RALLY, "FR", T0 + H, 20, "fr", "Rally"));
	/* A correction: -1 and +1, 4 contributions in all, over the limit. */
	push(f, event(&m, "c01", "a", 2, RALLY, "AM", T0, 30, "hy", "Rally"));
	assert_int_equal(digest_fold_wait(f->digest), 0);
	/* Folded, not yet installed: the table is as it was, the digests exact. */
	assert_int_equal(log_entries(f), 3);
	assert_int_equal(log_pending(f), 4);
	assert_int_equal(table_entries(f), 0);
	assert_int_equal(line_count(f, ALL, "", C_EVENT, RALLY), 2);
	assert_int_equal(line_count(f, COUNTRY, "DE", C_EVENT, RALLY), 0);

	push(f, retraction(&m, "c01", "b", 2));
	assert_int_equal(log_entries(f), 1);
	assert_int_equal(log_pending(f), 1); /* the retraction's -1 */
	/* The first three batches: all, c01, FR and AM, hour and whole campaign (DE emptied). */
	assert_int_equal(table_entries(f), 10);
	assert_int_equal(line_count(f, ALL, "", C_EVENT, RALLY), 1);
	assert_int_equal(line_count(f, COUNTRY, "AM", C_EVENT, RALLY), 1);
	assert_int_equal(line_count(f, COUNTRY, "FR", C_EVENT, RALLY), 0);

	/* The retraction's entry alone is not over the limit: nothing more is folded. */
	push(f, event(&m, "c01", "c", 1, RALLY, "DE", T0, 10, "de", "Rally"));
	assert_int_equal(digest_fold_wait(f->digest), -EAGAIN);
	assert_int_equal(log_entries(f), 2);
	assert_int_equal(log_pending(f), 2);
	assert_int_equal(line_count(f, ALL, "", C_EVENT, RALLY), 2);
	assert_verify_and_rebuild_agree(f);
	assert_int_equal(log_entries(f), 0);
	push(f, event(&m, "c01", "d", 1, RALLY, "DE", T0, 10, "de", "Rally"));
	assert_int_equal(log_entries(f), 1);
	close_all(f);
	assert_int_equal(open_all(f, 4 * MIB), 0);
	assert_int_equal(log_entries(f), 0);
	assert_int_equal(line_count(f, ALL, "", C_EVENT, RALLY), 3);
	assert_int_equal(line_count(f, COUNTRY, "DE", C_EVENT, RALLY), 2);
}

static void
test_free_folds_the_log(void **state)
{
	struct fixture *f = *state;
	struct msg m;

	push(f, event(&m, "c01", "a", 1, RALLY, "DE", T0, 10, "de", "Rally"));
	assert_int_equal(log_entries(f), 1);
	close_all(f);
	assert_int_equal(open_all(f, 4 * MIB), 0);
	assert_int_equal(log_entries(f), 0);
	assert_int_equal(table_entries(f), 6);
	assert_int_equal(line_count(f, COUNTRY, "DE", C_EVENT, RALLY), 1);
}

/* A log longer than the shutdown limit is left as it is (folding a preload's log on the
 * way out took minutes): the next run counts it, digests and verify stay exact, and its
 * next fold empties it. */
static void
test_free_leaves_a_long_log(void **state)
{
	struct fixture *f = *state;
	struct msg m;

	push(f, event(&m, "c01", "a", 1, RALLY, "DE", T0, 10, "de", "Rally"));
	push(f, event(&m, "c02", "b", 1, RALLY, "FR", T0, 10, "fr", "Rally"));
	push(f, event(&m, "c01", "c", 1, RALLY, "DE", T0, 10, "de", "Rally"));
	assert_int_equal(log_entries(f), 3);
	/* Three records, one contribution each: one above the limit. */
	digest_set_shutdown_fold_max(f->digest, 2);
	close_all(f);
	assert_int_equal(open_all(f, 4 * MIB), 0);
	assert_int_equal(log_entries(f), 3);
	assert_int_equal(table_entries(f), 0);
	assert_int_equal(line_count(f, COUNTRY, "DE", C_EVENT, RALLY), 2);
	assert_int_equal(line_count(f, COUNTRY, "FR", C_EVENT, RALLY), 1);
	/* At the limit it is folded. */
	digest_set_shutdown_fold_max(f->digest, 3);
	close_all(f);
	assert_int_equal(open_all(f, 4 * MIB), 0);
	assert_int_equal(log_entries(f), 0);
	assert_int_equal(line_count(f, COUNTRY, "DE", C_EVENT, RALLY), 2);
	assert_verify_and_rebuild_agree(f);
}

/* A log left by a daemon that did not stop cleanly is counted after a restart, and folded
 * when it reaches the limit. */
static void
test_log_left_by_a_crash_is_merged_and_folded(void **state)
{
	struct fixture *f = *state;
	struct msg m;

	push(f, event(&m, "c01", "a", 1, RALLY, "DE", T0, 10, "de", "Rally"));
	push(f, event(&m, "c01", "b", 1, RALLY, "DE", T0, 10, "de", "Rally"));
	/* As if killed: without its hooks, digest_free() cannot fold. */
	store_set_hooks(f->store, NULL);
	close_all(f);
	assert_int_equal(open_all(f, 4 * MIB), 0);
	assert_int_equal(log_entries(f), 2);
	assert_int_equal(line_count(f, COUNTRY, "DE", C_EVENT, RALLY), 2);
	assert_verify_and_rebuild_agree(f);
	digest_set_log_limit(f->digest, 2);
	digest_set_fold_background(f->digest, false);
	push(f, event(&m, "c01", "c", 1, RALLY, "DE", T0, 10, "de", "Rally"));
	push(f, event(&m, "c01", "d", 1, RALLY, "DE", T0, 10, "de", "Rally"));
	push(f, event(&m, "c01", "e", 1, RALLY, "DE", T0, 10, "de", "Rally"));
	assert_int_equal(log_entries(f), 0);
	assert_int_equal(line_count(f, COUNTRY, "DE", C_EVENT, RALLY), 5);
}

static void
test_bad_scope_or_window_is_einval(void **state)
{
	struct fixture *f = *state;
	Coord__V1__Digest *dg = NULL;
	char long_id[40];

	memset(long_id, 'c', sizeof(long_id) - 1);
	long_id[sizeof(long_id) - 1] = 0;
	assert_int_equal(digest_compute(f->digest, ALL, "x", W_ALL, 0, 0, T0, 0, &dg), -EINVAL);
	assert_int_equal(digest_compute(f->digest, COUNCIL, "", W_ALL, 0, 0, T0, 0, &dg), -EINVAL);
	assert_int_equal(digest_compute(f->digest, COUNCIL, NULL, W_ALL, 0, 0, T0, 0, &dg),
	                 -EINVAL);
	assert_int_equal(digest_compute(f->digest, COUNTRY, "", W_ALL, 0, 0, T0, 0, &dg), -EINVAL);
	assert_int_equal(digest_compute(f->digest, COUNCIL, long_id, W_ALL, 0, 0, T0, 0, &dg),
	                 -EINVAL);
	assert_int_equal(digest_compute(f->digest, COORD__V1__SCOPE_KIND__SCOPE_KIND_UNSPECIFIED,
	                                "", W_ALL, 0, 0, T0, 0, &dg),
	                 -EINVAL);
	assert_int_equal(digest_compute(f->digest, ALL, "", COORD__V1__WINDOW__WINDOW_UNSPECIFIED,
	                                0, 0, T0, 0, &dg),
	                 -EINVAL);
	assert_int_equal(
	        digest_compute(f->digest, ALL, "", (Coord__V1__Window) 99, 0, 0, T0, 0, &dg),
	        -EINVAL);
	assert_int_equal(digest_compute(f->digest, ALL, "", W_RANGE, T0, T0, T0, 0, &dg), -EINVAL);
	assert_int_equal(digest_compute(f->digest, ALL, "", W_RANGE, T0, T0 - 1, T0, 0, &dg),
	                 -EINVAL);
	assert_int_equal(digest_compute(f->digest, ALL, "", W_RANGE, -H, T0, T0, 0, &dg), -EINVAL);
	assert_null(dg);
}

static void
test_unknown_scope_id_is_empty(void **state)
{
	struct fixture *f = *state;
	struct msg m;

	push(f, event(&m, "c01", "r1", 1, RALLY, "DE", T0, 10, "de", "Rally"));
	Coord__V1__Digest *dg = compute(f, COUNCIL, "nobody", W_24H, 0, 0, T0 + H, 3);
	assert_int_equal(dg->scope->kind, COUNCIL);
	assert_string_equal(dg->scope->id, "nobody");
	assert_int_equal(dg->n_lines, 0);
	assert_int_equal(dg->n_headlines, 0);
	assert_int_equal(dg->last_seq, 1);
	assert_int_equal(dg->window, W_24H);
	digest_result_free(dg);

	dg = compute(f, COUNTRY, "ZZ", W_ALL, 0, 0, T0, 0);
	assert_int_equal(dg->n_lines, 0);
	digest_result_free(dg);
}

static void
test_empty_store_gives_empty_digest(void **state)
{
	struct fixture *f = *state;
	Coord__V1__Digest *dg = compute(f, ALL, "", W_1H, 0, 0, T0, 0);

	assert_int_equal(dg->n_lines, 0);
	assert_int_equal(dg->n_headlines, 0);
	assert_int_equal(dg->last_seq, 0);
	digest_result_free(dg);
}

/*
 * Map growth: many large records with corrections, retractions and restores, pushed in
 * batches into a 1 MiB map, so that batches hit MDB_MAP_FULL and are replayed. The
 * aggregates must still equal a recount from the test's own model of the live records.
 */
#define GROW_RECORDS 2400
#define GROW_BATCH 200
static const char *const grow_councils[] = {"c00", "c01", "c02", "c03", "c04", "c05", "c06"};
static const char *const grow_countries[] = {"DE", "FR", "US", "AM", "GB",
                                             "IT", "ES", "NL", "BE", "CA"};
static const char *const grow_langs[] = {"en", "fr", "de", "hy", "ru"};
#define N_COUNCILS 7
#define N_COUNTRIES 10
#define N_LANGS 5
#define N_KINDS 5

struct model {
	int council, country, kind, langs;
	uint32_t participants;
	int64_t date;
	uint32_t revision;
	bool live;
};

static void
model_msg(const struct model *r, size_t i, struct msg *m, char *id, size_t id_len)
{
	char langs[64] = "";
	char title[901];

	(void) snprintf(id, id_len, "m%zu", i);
	for (int b = 0; b < N_LANGS; b++) {
		if (r->langs & (1 << b)) {
			/* Vary the tag, never the primary subtag. */
			strcat(langs, langs[0] ? "," : "");
			strcat(langs, grow_langs[b]);
			strcat(langs, i % 2 ? "-GB" : "");
		}
	}
	memset(title, 'x', sizeof(title) - 1);
	title[sizeof(title) - 1] = 0;
	if (r->live) {
		event(m, grow_councils[r->council], id, r->revision, r->kind,
		      grow_countries[r->country], r->date, r->participants, langs, title);
	} else {
		retraction(m, grow_councils[r->council], id, r->revision);
	}
}

struct expect_line {
	uint64_t count, sum;
	uint64_t countries[N_COUNTRIES], langs[N_LANGS], councils[N_COUNCILS];
};

static void
check_codes(Coord__V1__CodeCount *const *v, size_t n, const uint64_t *want,
            const char *const *names, size_t n_names)
{
	size_t nonzero = 0;

	for (size_t j = 0; j < n_names; j++) {
		nonzero += want[j] > 0;
		assert_int_equal(code_count(v, n, names[j]), want[j]);
	}
	assert_int_equal(n, nonzero);
	for (size_t j = 1; j < n; j++) {
		assert_true(strcmp(v[j - 1]->code, v[j]->code) < 0);
	}
}

/* Recount from the model and compare with digest_compute(). */
static void
check_recount(struct fixture *f, const struct model *recs, size_t n, Coord__V1__ScopeKind kind,
              int id, Coord__V1__Window window, int64_t start, int64_t end)
{
	struct expect_line want[N_KINDS + 1] = {0};
	const char *sid = kind == COUNCIL   ? grow_councils[id]
	                  : kind == COUNTRY ? grow_countries[id]
	                                    : "";
	Coord__V1__Digest *dg = compute(f, kind, sid, window, start, end, T0, 0);

	for (size_t i = 0; i < n; i++) {
		const struct model *r = &recs[i];

		if (!r->live || (kind == COUNCIL && r->council != id) ||
		    (kind == COUNTRY && r->country != id) ||
		    (window == W_RANGE && (r->date < dg->start || r->date >= dg->end))) {
			continue;
		}
		struct expect_line *l = &want[r->kind];
		l->count++;
		l->sum += r->participants;
		l->countries[r->country]++;
		l->councils[r->council]++;
		for (int b = 0; b < N_LANGS; b++) {
			l->langs[b] += (r->langs >> b) & 1;
		}
	}
	size_t lines = 0;
	for (int k = 1; k <= N_KINDS; k++) {
		const Coord__V1__DigestLine *l = find_line(dg, C_EVENT, k);

		if (want[k].count == 0) {
			assert_null(l);
			continue;
		}
		lines++;
		assert_non_null(l);
		assert_int_equal(l->count, want[k].count);
		assert_int_equal(l->sum, want[k].sum);
		check_codes(l->countries, l->n_countries, want[k].countries, grow_countries,
		            N_COUNTRIES);
		check_codes(l->languages, l->n_languages, want[k].langs, grow_langs, N_LANGS);
		check_codes(l->councils, l->n_councils, want[k].councils, grow_councils,
		            N_COUNCILS);
	}
	assert_int_equal(dg->n_lines, lines);
	digest_result_free(dg);
}

static void
model_write(struct fixture *f, struct msg *const *batch, size_t n, bool wait_folds)
{
	assert_int_equal(write_batch(f, batch, n, NULL), 0);
	if (wait_folds) {
		int r = digest_fold_wait(f->digest);
		assert_true(r == 0 || r == -EAGAIN);
	}
}

/* Ingest the model's three passes in batches of GROW_BATCH: first revisions; corrections of
 * every 3rd and retractions of every 7th; restores of every 14th. With `wait_folds`, each
 * batch waits for a background fold it asked for, so that the next batch installs it. */
static void
model_ingest(struct fixture *f, struct model *recs, bool wait_folds)
{
	struct msg *ms = calloc(GROW_BATCH, sizeof(*ms));
	struct msg *batch[GROW_BATCH];
	char ids[GROW_BATCH][16];

	assert_non_null(ms);
	for (int pass = 0; pass < 3; pass++) {
		size_t nb = 0;

		for (size_t i = 0; i < GROW_RECORDS; i++) {
			struct model *r = &recs[i];

			if (pass == 0) {
				*r = (struct model){
				        .council = (int) (i % N_COUNCILS),
				        .country = (int) (i * 3 % N_COUNTRIES),
				        .kind = 1 + (int) (i % N_KINDS),
				        .langs = 1 + (int) (i % 31),
				        .participants = (uint32_t) (i % 100),
				        .date = T0 + ((int64_t) (i % 50) - 25) * H +
				                (int64_t) i * 1000,
				        .revision = 1,
				        .live = true,
				};
			} else if (pass == 1 && i % 3 == 0) {
				r->revision++;
				r->country = (r->country + 1) % N_COUNTRIES;
				r->kind = 1 + r->kind % N_KINDS;
				r->participants += 7;
				r->date += H;
			} else if (pass == 1 && i % 7 == 0) {
				r->revision++;
				r->live = false;
			} else if (pass == 2 && i % 14 == 0) {
				r->revision++;
				r->live = true;
			} else {
				continue;
			}
			model_msg(r, i, &ms[nb], ids[nb], sizeof(ids[nb]));
			batch[nb] = &ms[nb];
			if (++nb == GROW_BATCH) {
				model_write(f, batch, nb, wait_folds);
				nb = 0;
			}
		}
		if (nb > 0) {
			model_write(f, batch, nb, wait_folds);
		}
	}
	free(ms);
}

/* Every digest of the model's scopes equals a recount from the model. */
static void
model_check(struct fixture *f, const struct model *recs)
{
	check_recount(f, recs, GROW_RECORDS, ALL, 0, W_ALL, 0, 0);
	check_recount(f, recs, GROW_RECORDS, ALL, 0, W_RANGE, T0 - 10 * H, T0 + 3 * H + 1);
	for (int c = 0; c < N_COUNCILS; c++) {
		check_recount(f, recs, GROW_RECORDS, COUNCIL, c, W_ALL, 0, 0);
	}
	for (int c = 0; c < N_COUNTRIES; c++) {
		check_recount(f, recs, GROW_RECORDS, COUNTRY, c, W_ALL, 0, 0);
		check_recount(f, recs, GROW_RECORDS, COUNTRY, c, W_RANGE, T0 - 3 * H, T0 + H / 2);
	}
}

/* Damaged stored values: each (a schema 2 protobuf Aggregate, a truncated value, codes out
 * of order) is a verify problem, and a fold that meets it fails the batch (MDB_CORRUPTED)
 * and changes nothing; rebuild rewrites it from the items and the next batch goes on. */
static void
test_fold_refuses_a_damaged_stored_aggregate(void **state)
{
	struct fixture *f = *state;
	struct digest_check_report rep;
	struct msg m, next;
	MDB_dbi dbi;
	MDB_txn *txn;
	MDB_val v;
	uint8_t key[] = {ALL, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
	MDB_val k = {.mv_size = sizeof(key), .mv_data = key};
	struct msg *batch[] = {event(&next, "c01", "c", 1, RALLY, "AM", T0, 5, "hy", "Rally")};

	digest_set_log_limit(f->digest, 0);
	digest_set_fold_background(f->digest, false);
	push(f, event(&m, "c01", "a", 1, RALLY, "DE", T0, 10, "de,fr", "Rally"));
	push(f, event(&m, "c02", "b", 1, RALLY, "FR", T0, 20, "fr", "Rally"));
	assert_int_equal(store_open_table(f->store, "digest", &dbi), 0);

	for (int damage = 0; damage < 3; damage++) {
		Coord__V1__Aggregate *a = NULL;
		uint8_t buf[512];
		assert_int_equal(store_repair_begin(f->store, &txn), 0);
		assert_int_equal(mdb_get(txn, dbi, &k, &v), 0);
		assert_true(v.mv_size <= sizeof(buf));
		memcpy(buf, v.mv_data, v.mv_size);
		assert_int_equal(digest_value_decode(buf, v.mv_size, &a), 0);
		assert_int_equal(a->n_lines, 1);
		assert_int_equal(a->lines[0]->n_countries, 2);
		if (damage == 0) {
			v.mv_size = coord__v1__aggregate__pack(a, buf);
		} else if (damage == 1) {
			v.mv_size--;
		} else {
			/* Codes "DE", "FR" first in the dictionary: swap their first bytes. */
			assert_int_equal(buf[2], 2);
			assert_memory_equal(buf + 3, "DE", 2);
			buf[3] = 'F';
			buf[6] = 'D';
		}
		digest_value_free(a);
		assert_int_equal(digest_value_decode(buf, v.mv_size, &a), -EBADMSG);
		v.mv_data = buf;
		assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
		assert_int_equal(store_repair_commit(f->store, txn), 0);
		assert_int_equal(digest_verify(f->store, NULL, NULL, NULL, &rep), -EBADMSG);
		assert_int_equal(rep.problems, 1);

		assert_true(write_batch(f, batch, 1, NULL) < 0);
		assert_int_equal(log_entries(f), 0);
		assert_int_equal(store_repair_begin(f->store, &txn), 0);
		assert_int_equal(digest_rebuild(f->store, txn, NULL, NULL, &rep), 0);
		assert_int_equal(store_repair_commit(f->store, txn), 0);
		assert_int_equal(rep.problems, 1);
		assert_int_equal(digest_verify(f->store, NULL, NULL, NULL, &rep), 0);
	}
	push(f, event(&m, "c01", "c", 1, RALLY, "AM", T0, 5, "hy", "Rally"));
	assert_int_equal(line_count(f, ALL, "", C_EVENT, RALLY), 3);
	assert_int_equal(digest_verify(f->store, NULL, NULL, NULL, &rep), 0);
	assert_table_is_canonical(f);
}

/* A schema 2 store (protobuf Aggregates in the table, contributions in the log): verify on
 * it says it needs an upgrade; digest_new() upgrades it (rebuild and schema 3 in one
 * transaction), and the digests equal a recount. */
static void
test_schema_2_store_is_upgraded(void **state)
{
	struct fixture *f = *state;
	struct digest_check_report rep;
	struct msg m;
	MDB_dbi dbi, meta;
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, v;
	uint8_t two[4] = {0, 0, 0, 2};
	MDB_val sk = {.mv_size = strlen("schema_version"), .mv_data = "schema_version"};
	size_t n = 0;

	push(f, event(&m, "c01", "a", 1, RALLY, "DE", T0, 10, "de,fr", "Rally"));
	push(f, event(&m, "c02", "b", 1, RALLY, "FR", T0 + H, 20, "fr", "Rally"));
	push(f, letter(&m, "c03", "l", 3, "AM", "hy", T0, "Subject", "Mayor"));
	close_all(f);
	assert_int_equal(open_all(f, 4 * MIB), 0);
	/* One more record in the log, not folded: digest_free() is not called below. */
	push(f, event(&m, "c01", "c", 1, RALLY, "DE", T0, 5, "de", "Rally"));
	assert_int_equal(log_entries(f), 1);
	store_set_hooks(f->store, NULL);

	assert_int_equal(store_open_table(f->store, "digest", &dbi), 0);
	assert_int_equal(store_open_table(f->store, "meta", &meta), 0);
	assert_int_equal(store_repair_begin(f->store, &txn), 0);
	assert_int_equal(mdb_cursor_open(txn, dbi, &cur), 0);
	for (int rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		Coord__V1__Aggregate *a = NULL;
		uint8_t buf[1024];
		assert_int_equal(digest_value_decode(v.mv_data, v.mv_size, &a), 0);
		assert_true(coord__v1__aggregate__get_packed_size(a) <= sizeof(buf));
		MDB_val pb = {.mv_size = coord__v1__aggregate__pack(a, buf), .mv_data = buf};
		digest_value_free(a);
		assert_int_equal(mdb_cursor_put(cur, &k, &pb, MDB_CURRENT), 0);
		n++;
	}
	mdb_cursor_close(cur);
	assert_true(n > 0);
	v = (MDB_val){.mv_size = 4, .mv_data = two};
	assert_int_equal(mdb_put(txn, meta, &sk, &v, 0), 0);
	assert_int_equal(store_repair_commit(f->store, txn), 0);
	f->digest = digest_free(f->digest);
	f->store = store_free(f->store);

	/* Read-only, as coordctl verify: one problem, naming the upgrade. */
	const struct store_options ro = {.dir = f->dir, .map_size = 4 * MIB, .read_only = true};
	assert_int_equal(store_open(&ro, &f->store), 0);
	assert_int_equal(store_schema(f->store), 2);
	assert_int_equal(digest_verify(f->store, NULL, NULL, NULL, &rep), -EBADMSG);
	assert_int_equal(rep.problems, 1);
	assert_int_equal(rep.live, 4);
	f->store = store_free(f->store);

	assert_int_equal(open_all(f, 4 * MIB), 0);
	assert_int_equal(store_schema(f->store), STORE_SCHEMA_VERSION);
	assert_int_equal(log_entries(f), 0);
	assert_int_equal(digest_verify(f->store, NULL, NULL, NULL, &rep), 0);
	assert_int_equal(rep.live, 4);
	assert_int_equal(line_count(f, COUNTRY, "DE", C_EVENT, RALLY), 2);
	assert_int_equal(line_count(f, ALL, "", C_EVENT, RALLY), 3);
	assert_table_is_canonical(f);
	/* Writing goes on in the new format; a second open has nothing to upgrade. */
	push(f, event(&m, "c02", "d", 1, RALLY, "FR", T0, 5, "fr", "Rally"));
	close_all(f);
	assert_int_equal(open_all(f, 4 * MIB), 0);
	assert_int_equal(line_count(f, COUNTRY, "FR", C_EVENT, RALLY), 2);
	assert_verify_and_rebuild_agree(f);
}

static void
test_map_growth_replay_matches_recount(void **state)
{
	struct fixture *f = *state;
	struct model *recs = calloc(GROW_RECORDS, sizeof(*recs));
	struct store_stats st;

	assert_non_null(recs);
	/* Folds every few batches, and leaves a log at the end that the digests merge. */
	digest_set_log_limit(f->digest, 3 * GROW_BATCH / 2);
	model_ingest(f, recs, false);
	assert_int_equal(store_get_stats(f->store, &st), 0);
	assert_true(st.map_size > MIB);

	assert_true(log_entries(f) > 0);
	check_recount(f, recs, GROW_RECORDS, ALL, 0, W_ALL, 0, 0);
	assert_table_is_canonical(f);
	assert_verify_and_rebuild_agree(f);
	model_check(f, recs);
	free(recs);
}

/* A cache far smaller than the aggregates: every fold drops aggregates and reads them
 * again from the table, in the folder thread and in the writer; the table stays exactly
 * what protobuf-c packs and what a recount gives. */
static void
test_small_cache_folds_match_recount(void **state)
{
	struct fixture *f = *state;
	struct model *recs = calloc(GROW_RECORDS, sizeof(*recs));

	assert_non_null(recs);
	digest_set_cache_limit(f->digest, 4096);
	digest_set_log_limit(f->digest, GROW_BATCH / 2);
	model_ingest(f, recs, true);
	model_check(f, recs);
	assert_table_is_canonical(f);
	assert_verify_and_rebuild_agree(f);
	model_check(f, recs);
	free(recs);
}

/* The writer folding the whole log in every batch, keeping no aggregate. */
static void
test_writer_fold_without_cache_matches_recount(void **state)
{
	struct fixture *f = *state;
	struct model *recs = calloc(GROW_RECORDS, sizeof(*recs));

	assert_non_null(recs);
	digest_set_cache_limit(f->digest, 0);
	digest_set_log_limit(f->digest, 0);
	digest_set_fold_background(f->digest, false);
	model_ingest(f, recs, false);
	assert_int_equal(log_entries(f), 0);
	assert_table_is_canonical(f);
	model_check(f, recs);
	assert_verify_and_rebuild_agree(f);
	free(recs);
}

/* Whether the log holds an install mark: a fold partly installed. */
static bool
install_marked(struct fixture *f)
{
	MDB_dbi dbi;
	MDB_txn *txn;
	MDB_val k = {.mv_size = 1, .mv_data = (void *) (const uint8_t[]){0}};
	MDB_val v;

	assert_int_equal(store_open_table(f->store, "digest_log", &dbi), 0);
	assert_int_equal(store_read_begin(f->store, &txn), 0);
	int rc = mdb_get(txn, dbi, &k, &v);
	store_read_end(f->store, txn);
	assert_true(rc == 0 || rc == MDB_NOTFOUND);
	return rc == 0;
}

static void
assert_verify_clean(struct fixture *f)
{
	struct digest_check_report rep;

	assert_int_equal(digest_verify(f->store, NULL, NULL, NULL, &rep), 0);
	assert_int_equal(rep.problems, 0);
}

/* Empty batches install the folder's result slice by slice, at most `max` of them; every
 * digest equals the recount after each. Returns how many batches installed a slice. */
static size_t
install_slices(struct fixture *f, const struct model *recs, size_t max)
{
	size_t n = 0;

	while (n < max && digest_fold_wait(f->digest) == 0) {
		assert_int_equal(store_write_batch(f->store, NULL, 0), 0);
		n++;
		model_check(f, recs);
		assert_true(n < 5000);
	}
	return n;
}

/* Small slices for the digest object of `f`, and a batch that asks the folder to fold the
 * whole log: the model's ~4,400 contributions are over a limit of 1,000, but not 8 times
 * (the writer would fold them itself). */
static void
ask_sliced_fold(struct fixture *f)
{
	digest_set_install_slice(f->digest, 16);
	digest_set_log_limit(f->digest, 1000);
	assert_int_equal(store_write_batch(f->store, NULL, 0), 0);
	assert_int_equal(digest_fold_wait(f->digest), 0);
}

/* The model's records in the log, folded by the folder, three slices installed, and the
 * daemon killed: the reopened store has the mark, its digests are exact and verify is
 * clean. */
static void
ingest_slice_and_crash(struct fixture *f, struct model *recs)
{
	model_ingest(f, recs, false); /* under the default limit: nothing folded */
	assert_false(install_marked(f));
	size_t logged = log_entries(f);
	ask_sliced_fold(f);
	assert_int_equal(install_slices(f, recs, 3), 3);
	assert_true(install_marked(f));
	assert_int_equal(log_entries(f), logged + 1); /* the entries, and the mark */
	assert_verify_clean(f);
	store_set_hooks(f->store, NULL);
	close_all(f);
	assert_int_equal(open_all(f, 4 * MIB), 0);
	assert_true(install_marked(f));
	model_check(f, recs);
	assert_verify_clean(f);
}

/* A fold installed over many batches: every digest is exact after every slice, and after
 * a crash between two slices the folder of the next run installs the rest. */
static void
test_sliced_install_resumes_after_a_crash(void **state)
{
	struct fixture *f = *state;
	struct model *recs = calloc(GROW_RECORDS, sizeof(*recs));

	assert_non_null(recs);
	ingest_slice_and_crash(f, recs);
	ask_sliced_fold(f);
	assert_true(install_slices(f, recs, SIZE_MAX) > 3);
	assert_false(install_marked(f));
	assert_int_equal(log_entries(f), 0);
	assert_table_is_canonical(f);
	assert_verify_and_rebuild_agree(f);
	model_check(f, recs);
	free(recs);
}

/* A partly installed fold left by a crash, finished by the writer's own fold instead. */
static void
test_writer_fold_finishes_a_sliced_install(void **state)
{
	struct fixture *f = *state;
	struct model *recs = calloc(GROW_RECORDS, sizeof(*recs));

	assert_non_null(recs);
	ingest_slice_and_crash(f, recs);
	digest_set_log_limit(f->digest, 0);
	digest_set_fold_background(f->digest, false);
	assert_int_equal(store_write_batch(f->store, NULL, 0), 0);
	assert_false(install_marked(f));
	assert_int_equal(log_entries(f), 0);
	model_check(f, recs);
	assert_table_is_canonical(f);
	assert_verify_and_rebuild_agree(f);
	free(recs);
}

/* rebuild (coordctl repair) folds a partly installed fold's log and drops the mark. */
static void
test_rebuild_finishes_a_sliced_install(void **state)
{
	struct fixture *f = *state;
	struct model *recs = calloc(GROW_RECORDS, sizeof(*recs));

	assert_non_null(recs);
	ingest_slice_and_crash(f, recs);
	assert_verify_and_rebuild_agree(f);
	assert_false(install_marked(f));
	model_check(f, recs);
	assert_table_is_canonical(f);
	free(recs);
}

static void
test_free_accepts_null(void **state)
{
	assert_null(digest_free(NULL));
	digest_result_free(NULL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test_setup_teardown(test_accepts_count_sums_and_distinct_codes, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_other_categories_count_kind_country_and_sum,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_correction_moves_the_country, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_correction_changes_the_kind, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_retraction_removes_and_restore_adds_back,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_languages_counted_by_primary_subtag, setup,
	                                        teardown),
	        cmocka_unit_test(test_contribution_of_each_category),
	        cmocka_unit_test_setup_teardown(test_hour_buckets_and_window_merging, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_stored_aggregates_are_canonical, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_table_keys_are_scope_and_bucket, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(
	                test_headlines_newest_first_skip_retracted_and_superseded, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_headlines_are_capped, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_dirty_scopes_hold_old_and_new_scopes, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_correction_in_the_same_batch, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_undecodable_envelope_fails_the_batch, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_decoded_envelope_is_counted_without_unpacking,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_aggregates_survive_reopen, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_log_holds_contributions_until_the_limit, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_background_fold_is_installed_by_the_next_batch,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_free_folds_the_log, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_free_leaves_a_long_log, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_log_left_by_a_crash_is_merged_and_folded,
	                                        setup, teardown),
	        cmocka_unit_test_setup_teardown(test_bad_scope_or_window_is_einval, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_unknown_scope_id_is_empty, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_empty_store_gives_empty_digest, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_map_growth_replay_matches_recount,
	                                        setup_small_map, teardown),
	        cmocka_unit_test_setup_teardown(test_fold_refuses_a_damaged_stored_aggregate, setup,
	                                        teardown),
	        cmocka_unit_test_setup_teardown(test_schema_2_store_is_upgraded, setup, teardown),
	        cmocka_unit_test_setup_teardown(test_small_cache_folds_match_recount,
	                                        setup_small_map, teardown),
	        cmocka_unit_test_setup_teardown(test_writer_fold_without_cache_matches_recount,
	                                        setup_small_map, teardown),
	        cmocka_unit_test_setup_teardown(test_sliced_install_resumes_after_a_crash,
	                                        setup_small_map, teardown),
	        cmocka_unit_test_setup_teardown(test_writer_fold_finishes_a_sliced_install,
	                                        setup_small_map, teardown),
	        cmocka_unit_test_setup_teardown(test_rebuild_finishes_a_sliced_install,
	                                        setup_small_map, teardown),
	        cmocka_unit_test(test_free_accepts_null),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

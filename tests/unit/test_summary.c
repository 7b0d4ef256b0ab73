/*
 * Unit tests for daemon/summary.c: the distinct counts of each line, the total and category
 * lines (exact unions across lines, checked against a brute-force count on random lines),
 * the lists dropped for publication and kept for query answers, the source lines never
 * changed, and the published form rendering the same sentences as the query form
 * (clients/render.c) in far fewer bytes.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "coord.pb-c.h"
#include "render.h"
#include "summary.h"

#define MAX_LINES 24
#define MAX_CODES 100

/* Hand-built lines whose list `k` holds codes chosen by a bitmap over MAX_CODES names. */
struct lines {
	Coord__V1__DigestLine line[MAX_LINES];
	Coord__V1__DigestLine *ptrs[MAX_LINES];
	Coord__V1__CodeCount codes[MAX_LINES][3][MAX_CODES];
	Coord__V1__CodeCount *cptrs[MAX_LINES][3][MAX_CODES];
	bool has[MAX_LINES][3][MAX_CODES];
	size_t n;
};

static char names[3][MAX_CODES][8];

static void
names_init(void)
{
	static const char prefix[3] = {'C', 'l', 'c'};

	for (int k = 0; k < 3; k++) {
		for (int i = 0; i < MAX_CODES; i++) {
			(void) snprintf(names[k][i], sizeof(names[k][i]), "%c%03d", prefix[k], i);
		}
	}
}

/* Add a line; its lists are set by lines_fill(). */
static Coord__V1__DigestLine *
lines_add(struct lines *ls, int category, int kind, uint64_t count, uint64_t sum)
{
	assert_true(ls->n < MAX_LINES);
	Coord__V1__DigestLine *l = &ls->line[ls->n];
	*l = (Coord__V1__DigestLine) COORD__V1__DIGEST_LINE__INIT;
	l->category = category;
	l->kind = kind;
	l->count = count;
	l->sum = sum;
	ls->ptrs[ls->n++] = l;
	return l;
}

/* Build the lists of every line from `has` (sorted: the names sort by index). */
static void
lines_fill(struct lines *ls)
{
	for (size_t j = 0; j < ls->n; j++) {
		size_t n[3] = {0};
		for (int k = 0; k < 3; k++) {
			for (int i = 0; i < MAX_CODES; i++) {
				if (!ls->has[j][k][i]) {
					continue;
				}
				Coord__V1__CodeCount *c = &ls->codes[j][k][n[k]];
				*c = (Coord__V1__CodeCount) COORD__V1__CODE_COUNT__INIT;
				c->code = names[k][i];
				c->count = 1 + (uint64_t) i % 3;
				ls->cptrs[j][k][n[k]++] = c;
			}
		}
		Coord__V1__DigestLine *l = &ls->line[j];
		l->n_countries = n[0];
		l->countries = ls->cptrs[j][0];
		l->n_languages = n[1];
		l->languages = ls->cptrs[j][1];
		l->n_councils = n[2];
		l->councils = ls->cptrs[j][2];
	}
}

/* Codes i..i+n-1 of list k in line j. */
static void
codes(struct lines *ls, size_t j, int k, int from, int n)
{
	for (int i = from; i < from + n; i++) {
		ls->has[j][k][i] = true;
	}
}

/* Brute force: distinct codes of list k over lines whose category is `category` (0: all). */
static uint32_t
union_of(const struct lines *ls, int k, int category)
{
	uint32_t n = 0;

	for (int i = 0; i < MAX_CODES; i++) {
		bool any = false;
		for (size_t j = 0; j < ls->n && !any; j++) {
			any = ls->has[j][k][i] &&
			      (category == 0 || (int) ls->line[j].category == category);
		}
		n += any;
	}
	return n;
}

static void
digest_of(const struct summary *s, Coord__V1__Digest *dg)
{
	*dg = (Coord__V1__Digest) COORD__V1__DIGEST__INIT;
	dg->window = COORD__V1__WINDOW__WINDOW_ALL;
	summary_apply(s, dg);
}

static uint8_t *
pack(const Coord__V1__Digest *dg, size_t *ret_len)
{
	size_t n = coord__v1__digest__get_packed_size(dg);
	uint8_t *buf = malloc(n ? n : 1);

	assert_non_null(buf);
	*ret_len = coord__v1__digest__pack(dg, buf);
	return buf;
}

static void
test_distinct_counts_and_lists(void **state)
{
	(void) state;
	struct lines *ls = calloc(1, sizeof(*ls));
	struct summary *with = NULL, *without = NULL;

	assert_non_null(ls);
	lines_add(ls, COORD__V1__CATEGORY__CATEGORY_EVENT, 1, 228, 51300);
	codes(ls, 0, 0, 0, 38);
	codes(ls, 0, 1, 0, 5);
	codes(ls, 0, 2, 0, 11);
	lines_add(ls, COORD__V1__CATEGORY__CATEGORY_STATEMENT, 0, 330, 0);
	codes(ls, 1, 0, 10, 51);
	codes(ls, 1, 1, 3, 23);
	codes(ls, 1, 2, 2, 9);
	lines_fill(ls);
	Coord__V1__DigestLine before = ls->line[0];

	assert_int_equal(summary_new(ls->ptrs, ls->n, true, &with), 0);
	assert_int_equal(summary_new(ls->ptrs, ls->n, false, &without), 0);
	Coord__V1__Digest a, b;
	digest_of(with, &a);
	digest_of(without, &b);
	assert_int_equal(a.n_lines, 2);
	assert_int_equal(b.n_lines, 2);
	for (size_t i = 0; i < 2; i++) {
		assert_int_equal(a.lines[i]->distinct_countries, ls->line[i].n_countries);
		assert_int_equal(a.lines[i]->distinct_languages, ls->line[i].n_languages);
		assert_int_equal(a.lines[i]->distinct_councils, ls->line[i].n_councils);
		assert_int_equal(a.lines[i]->n_countries, ls->line[i].n_countries);
		assert_ptr_equal(a.lines[i]->countries, ls->line[i].countries);
		/* Without lists: the same figures, nothing else. */
		assert_int_equal(b.lines[i]->count, ls->line[i].count);
		assert_int_equal(b.lines[i]->sum, ls->line[i].sum);
		assert_int_equal(b.lines[i]->distinct_countries, ls->line[i].n_countries);
		assert_int_equal(b.lines[i]->n_countries + b.lines[i]->n_languages +
		                         b.lines[i]->n_councils,
		                 0);
		assert_null(b.lines[i]->countries);
	}
	assert_int_equal(a.lines[0]->distinct_countries, 38);
	/* The source lines are not changed. */
	assert_memory_equal(&before, &ls->line[0], sizeof(before));
	assert_int_equal(ls->line[0].distinct_countries, 0);

	/* Total: countries 0..37 and 10..60 are 61; councils 0..10 and 2..10 are 11. */
	assert_non_null(b.total);
	assert_int_equal(b.total->category, COORD__V1__CATEGORY__CATEGORY_UNSPECIFIED);
	assert_int_equal(b.total->count, 558);
	assert_int_equal(b.total->sum, 0);
	assert_int_equal(b.total->distinct_countries, 61);
	assert_int_equal(b.total->distinct_languages, 26);
	assert_int_equal(b.total->distinct_councils, 11);
	assert_int_equal(b.n_categories, 2);
	assert_int_equal(b.categories[0]->category, COORD__V1__CATEGORY__CATEGORY_EVENT);
	assert_int_equal(b.categories[0]->sum, 51300);
	assert_int_equal(b.categories[1]->distinct_countries, 51);

	/* Packed without lists: a fraction of the bytes, and nothing of the lists unpacks. */
	size_t na, nb;
	uint8_t *pa = pack(&a, &na), *pb = pack(&b, &nb);
	assert_true(nb * 4 < na);
	Coord__V1__Digest *u = coord__v1__digest__unpack(NULL, nb, pb);
	assert_non_null(u);
	assert_int_equal(u->n_lines, 2);
	assert_int_equal(u->lines[1]->n_councils, 0);
	assert_int_equal(u->lines[1]->distinct_councils, 9);
	assert_int_equal(u->total->distinct_countries, 61);
	coord__v1__digest__free_unpacked(u, NULL);
	free(pa);
	free(pb);
	summary_free(with);
	summary_free(without);
	free(ls);
}

static void
test_no_lines_no_total(void **state)
{
	(void) state;
	struct summary *s = NULL;
	Coord__V1__Digest dg;

	assert_int_equal(summary_new(NULL, 0, false, &s), 0);
	digest_of(s, &dg);
	assert_int_equal(dg.n_lines, 0);
	assert_null(dg.total);
	assert_int_equal(dg.n_categories, 0);
	assert_null(summary_free(s));
	assert_null(summary_free(NULL));
}

static uint32_t
rnd(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return (uint32_t) (*x >> 32);
}

/* Random lines over the five categories: every union equals the brute-force count, and the
 * published form renders exactly the query form's sentences. */
static void
test_random_unions_and_sentences(void **state)
{
	(void) state;
	uint64_t x = 0x9e3779b97f4a7c15u;

	for (int round = 0; round < 200; round++) {
		struct lines *ls = calloc(1, sizeof(*ls));
		assert_non_null(ls);
		size_t n = 1 + rnd(&x) % MAX_LINES;
		for (size_t j = 0; j < n; j++) {
			/* Sorted by (category, kind), as the aggregates keep them. */
			int category = 1 + (int) (j * 5 / n);
			int kind = category == COORD__V1__CATEGORY__CATEGORY_STATEMENT
			                   ? 0
			                   : (int) j + 1;
			if (category == COORD__V1__CATEGORY__CATEGORY_STATEMENT && j > 0 &&
			    (int) ls->line[j - 1].category == category) {
				break;
			}
			lines_add(ls, category, kind, 1 + rnd(&x) % 5000, rnd(&x) % 100000);
			for (int k = 0; k < 3; k++) {
				int from = (int) (rnd(&x) % MAX_CODES), len = (int) (rnd(&x) % 40);
				codes(ls, j, k, from,
				      from + len > MAX_CODES ? MAX_CODES - from : len);
			}
		}
		lines_fill(ls);
		struct summary *full = NULL, *pub = NULL;
		assert_int_equal(summary_new(ls->ptrs, ls->n, true, &full), 0);
		assert_int_equal(summary_new(ls->ptrs, ls->n, false, &pub), 0);
		Coord__V1__Digest a, b;
		digest_of(full, &a);
		digest_of(pub, &b);
		assert_int_equal(b.total->distinct_countries, union_of(ls, 0, 0));
		assert_int_equal(b.total->distinct_languages, union_of(ls, 1, 0));
		assert_int_equal(b.total->distinct_councils, union_of(ls, 2, 0));
		for (size_t c = 0; c < b.n_categories; c++) {
			int cat = b.categories[c]->category;
			assert_int_equal(b.categories[c]->distinct_countries, union_of(ls, 0, cat));
			assert_int_equal(b.categories[c]->distinct_languages, union_of(ls, 1, cat));
			assert_int_equal(b.categories[c]->distinct_councils, union_of(ls, 2, cat));
		}
		char *ta = NULL, *tb = NULL;
		assert_int_equal(render_digest(&a, 0, &ta), 0);
		assert_int_equal(render_digest(&b, 0, &tb), 0);
		assert_string_equal(ta, tb);
		/* Without total and categories (an older broker's answer): the unions of the
		 * lists give the same sentences. */
		Coord__V1__Digest old = a;
		old.total = NULL;
		old.n_categories = 0;
		old.categories = NULL;
		char *tc = NULL;
		assert_int_equal(render_digest(&old, 0, &tc), 0);
		assert_string_equal(ta, tc);
		free(ta);
		free(tb);
		free(tc);
		summary_free(full);
		summary_free(pub);
		free(ls);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
	        cmocka_unit_test(test_distinct_counts_and_lists),
	        cmocka_unit_test(test_no_lines_no_total),
	        cmocka_unit_test(test_random_unions_and_sentences),
	};

	names_init();
	return cmocka_run_group_tests(tests, NULL, NULL);
}

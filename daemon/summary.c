/*
 * summary: copies of a digest's lines with their distinct counts, the total line and the
 * category lines.
 *
 * One heap block holds the struct, the line copies, the category lines and the pointer
 * arrays protobuf-c wants. Distinct codes across lines are counted by merging the lines'
 * sorted lists into a scratch array (two halves used in turn), so the cost is linear in the
 * codes of the lines merged times the number of lines.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "summary.h"

struct summary {
	size_t n_lines, n_categories;
	bool has_total;
	Coord__V1__DigestLine total;
	Coord__V1__DigestLine *copies;     /* n_lines */
	Coord__V1__DigestLine **lines;     /* n_lines pointers into copies */
	Coord__V1__DigestLine *categories; /* at most n_lines */
	Coord__V1__DigestLine **category_ptrs;
};

/* List `k` (0 countries, 1 languages, 2 councils) of a line and its length. */
static Coord__V1__CodeCount *const *
list_of(const Coord__V1__DigestLine *l, int k, size_t *ret_n)
{
	switch (k) {
	case 0:
		*ret_n = l->n_countries;
		return l->countries;
	case 1:
		*ret_n = l->n_languages;
		return l->languages;
	default:
		*ret_n = l->n_councils;
		return l->councils;
	}
}

/* Set the three distinct counts of `out`. */
static void
set_distinct(Coord__V1__DigestLine *out, const uint32_t d[3])
{
	out->distinct_countries = d[0];
	out->distinct_languages = d[1];
	out->distinct_councils = d[2];
}

/* The distinct codes of list `k` across lines[0..n): each sorted list merged in turn into
 * `a`, alternating with `b` (both with room for every code of the lines). */
static uint32_t
distinct(Coord__V1__DigestLine *const *lines, size_t n, int k, const char **a, const char **b)
{
	size_t na = 0;

	for (size_t i = 0; i < n; i++) {
		size_t nl;
		Coord__V1__CodeCount *const *v = list_of(lines[i], k, &nl);
		size_t x = 0, y = 0, o = 0;
		while (x < na || y < nl) {
			int c = x == na ? 1 : y == nl ? -1 : strcmp(a[x], v[y]->code);
			if (c < 0) {
				b[o++] = a[x++];
			} else if (c > 0) {
				b[o++] = v[y++]->code;
			} else {
				b[o++] = a[x++];
				y++;
			}
		}
		const char **t = a;
		a = b;
		b = t;
		na = o;
	}
	return (uint32_t) na;
}

/* A line of sums over lines[0..n): `category`, kind 0, counts and sums added, distinct
 * counts across them, no lists. */
static void
rollup(Coord__V1__DigestLine *const *lines, size_t n, Coord__V1__Category category, bool with_sum,
       const char **a, const char **b, Coord__V1__DigestLine *out)
{
	uint32_t d[3];

	*out = (Coord__V1__DigestLine) COORD__V1__DIGEST_LINE__INIT;
	out->category = category;
	for (size_t i = 0; i < n; i++) {
		out->count += lines[i]->count;
		out->sum += with_sum ? lines[i]->sum : 0;
	}
	for (int k = 0; k < 3; k++) {
		d[k] = distinct(lines, n, k, a, b);
	}
	set_distinct(out, d);
}

int
summary_new(Coord__V1__DigestLine *const *lines, size_t n, bool lists, struct summary **ret_summary)
{
	size_t codes = 0;

	for (size_t i = 0; i < n; i++) {
		size_t most = lines[i]->n_countries;
		most = lines[i]->n_languages > most ? lines[i]->n_languages : most;
		most = lines[i]->n_councils > most ? lines[i]->n_councils : most;
		codes += most;
	}
	/* The struct, then n copies, n category lines, and the two pointer arrays. */
	size_t size = sizeof(struct summary) + n * 2 * sizeof(Coord__V1__DigestLine) +
	              n * 2 * sizeof(Coord__V1__DigestLine *);
	struct summary *s = calloc(1, size);
	const char **scratch = malloc((codes ? codes : 1) * 2 * sizeof(*scratch));
	if (!s || !scratch) {
		free(s);
		free(scratch);
		return -ENOMEM;
	}
	s->n_lines = n;
	s->copies = (Coord__V1__DigestLine *) (s + 1);
	s->categories = s->copies + n;
	s->lines = (Coord__V1__DigestLine **) (s->categories + n);
	s->category_ptrs = s->lines + n;

	for (size_t i = 0; i < n; i++) {
		Coord__V1__DigestLine *c = &s->copies[i];
		uint32_t d[3] = {(uint32_t) lines[i]->n_countries, (uint32_t) lines[i]->n_languages,
		                 (uint32_t) lines[i]->n_councils};
		*c = *lines[i];
		set_distinct(c, d);
		if (!lists) {
			c->n_countries = c->n_languages = c->n_councils = 0;
			c->countries = c->languages = c->councils = NULL;
		}
		s->lines[i] = c;
	}
	/* Lines come by category then kind: each category is one run. */
	for (size_t i = 0; i < n;) {
		size_t j = i;
		while (j < n && lines[j]->category == lines[i]->category) {
			j++;
		}
		Coord__V1__DigestLine *c = &s->categories[s->n_categories];
		rollup(lines + i, j - i, lines[i]->category, true, scratch, scratch + codes, c);
		s->category_ptrs[s->n_categories++] = c;
		i = j;
	}
	if (n > 0) {
		rollup(lines, n, COORD__V1__CATEGORY__CATEGORY_UNSPECIFIED, false, scratch,
		       scratch + codes, &s->total);
		s->has_total = true;
	}
	free(scratch);
	*ret_summary = s;
	return 0;
}

void
summary_apply(const struct summary *s, Coord__V1__Digest *digest)
{
	digest->n_lines = s->n_lines;
	digest->lines = s->n_lines ? s->lines : NULL;
	digest->total = s->has_total ? (Coord__V1__DigestLine *) &s->total : NULL;
	digest->n_categories = s->n_categories;
	digest->categories = s->n_categories ? s->category_ptrs : NULL;
}

struct summary *
summary_free(struct summary *s)
{
	free(s);
	return NULL;
}

/*
 * render: sentences, numbers, times and JSON for people reading digests and records.
 *
 * Text is written into an open_memstream() buffer; a failed allocation shows as a failed
 * fflush/fclose and becomes -ENOMEM. The wording tables below hold each noun in the
 * singular and the plural; a noun used after "to" carries its article in the singular
 * ("1 letter to a head of state"). Distinct counts across lines come from the digest's
 * total and category lines; without them (an older broker), from `struct codes`, a small
 * sorted set of the lines' code strings.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "pbjson.h"
#include "render.h"

#define DAY_MS INT64_C(86400000)

struct noun {
	const char *one, *many;
};

/* EventKind -> what its line counts. */
static const struct noun event_kinds[] = {
        [COORD__V1__EVENT_KIND__EVENT_KIND_RALLY] = {"rally", "rallies"},
        [COORD__V1__EVENT_KIND__EVENT_KIND_CAR_RALLY] = {"car rally", "car rallies"},
        [COORD__V1__EVENT_KIND__EVENT_KIND_ROUNDTABLE] = {"roundtable", "roundtables"},
        [COORD__V1__EVENT_KIND__EVENT_KIND_GATHERING] = {"gathering", "gatherings"},
        [COORD__V1__EVENT_KIND__EVENT_KIND_PRESS_CONFERENCE] = {"press conference",
                                                                "press conferences"},
        [COORD__V1__EVENT_KIND__EVENT_KIND_EXHIBITION] = {"poster or billboard exhibition",
                                                          "poster or billboard exhibitions"},
        [COORD__V1__EVENT_KIND__EVENT_KIND_OFFICIALS_MEETING] = {"meeting with officials",
                                                                 "meetings with officials"},
        [COORD__V1__EVENT_KIND__EVENT_KIND_COMMEMORATION] = {"commemoration", "commemorations"},
        [COORD__V1__EVENT_KIND__EVENT_KIND_FUNDRAISER] = {"fundraiser", "fundraisers"},
        [COORD__V1__EVENT_KIND__EVENT_KIND_MEDICAL_MISSION] = {"volunteer medical mission",
                                                               "volunteer medical missions"},
        [COORD__V1__EVENT_KIND__EVENT_KIND_VIDEO_CONFERENCE] = {"video conference",
                                                                "video conferences"},
        [COORD__V1__EVENT_KIND__EVENT_KIND_INTERVIEW] = {"interview", "interviews"},
        [COORD__V1__EVENT_KIND__EVENT_KIND_MASTER_CLASS] = {"master class", "master classes"},
};

/* RecipientKind -> who letters went to ("to ..."). */
static const struct noun recipients[] = {
        [COORD__V1__RECIPIENT_KIND__RECIPIENT_KIND_HEAD_OF_STATE] = {"a head of state",
                                                                     "heads of state"},
        [COORD__V1__RECIPIENT_KIND__RECIPIENT_KIND_MEDIA] = {"an international media outlet",
                                                             "international media outlets"},
        [COORD__V1__RECIPIENT_KIND__RECIPIENT_KIND_INTERNATIONAL_ORGANISATION] =
                {"an international organisation", "international organisations"},
        [COORD__V1__RECIPIENT_KIND__RECIPIENT_KIND_PARLIAMENT] = {"a parliament", "parliaments"},
        [COORD__V1__RECIPIENT_KIND__RECIPIENT_KIND_MEMBER_OF_PARLIAMENT] =
                {"a member of parliament", "members of parliament"},
        [COORD__V1__RECIPIENT_KIND__RECIPIENT_KIND_PUBLIC_FIGURE] = {"a public figure",
                                                                     "public figures"},
        [COORD__V1__RECIPIENT_KIND__RECIPIENT_KIND_GOVERNMENT] = {"a government", "governments"},
};

/* PetitionTarget -> what petitions went to ("to ..."). */
static const struct noun targets[] = {
        [COORD__V1__PETITION_TARGET__PETITION_TARGET_NATIONAL_PARLIAMENT] =
                {"a national parliament", "national parliaments"},
        [COORD__V1__PETITION_TARGET__PETITION_TARGET_SUPRANATIONAL_ASSEMBLY] =
                {"a supranational assembly", "supranational assemblies"},
        [COORD__V1__PETITION_TARGET__PETITION_TARGET_INTERNATIONAL_ORGANISATION] =
                {"an international organisation", "international organisations"},
};

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

static const struct noun *
noun_of(const struct noun *table, size_t n, int32_t kind)
{
	return kind > 0 && (size_t) kind < n && table[kind].one ? &table[kind] : NULL;
}

const char *
render_number(uint64_t n, char *buf, size_t size)
{
	char digits[24];
	char out[RENDER_NUMBER_MAX];
	int len = snprintf(digits, sizeof(digits), "%" PRIu64, n);
	size_t o = 0;

	for (int i = 0; i < len; i++) {
		if (i > 0 && (len - i) % 3 == 0) {
			out[o++] = ',';
		}
		out[o++] = digits[i];
	}
	out[o] = '\0';
	(void) snprintf(buf, size, "%s", out);
	return buf;
}

const char *
render_time(int64_t ms, char *buf, size_t size)
{
	int64_t secs = ms / 1000, frac = ms % 1000;
	struct tm tm;

	if (frac < 0) {
		frac += 1000;
		secs--;
	}
	time_t t = (time_t) secs;
	if (!gmtime_r(&t, &tm)) {
		(void) snprintf(buf, size, "%" PRId64 " ms", ms);
		return buf;
	}
	if (frac) {
		(void) snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
		                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		                (int) frac);
	} else {
		(void) snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900,
		                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
	}
	return buf;
}

/* Exactly `n` digits at *s; advances *s. */
static bool
take_digits(const char **s, int n, int *ret)
{
	int v = 0;

	for (int i = 0; i < n; i++) {
		char c = (*s)[i];
		if (c < '0' || c > '9') {
			return false;
		}
		v = v * 10 + (c - '0');
	}
	*s += n;
	*ret = v;
	return true;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil). */
static int64_t
days_from_civil(int64_t y, int m, int d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	int64_t yoe = y - era * 400;
	int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static int
days_in_month(int y, int m)
{
	static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;

	return m == 2 && leap ? 29 : days[m - 1];
}

int
render_parse_time(const char *s, int64_t *ret_ms)
{
	int y, mo, d, h = 0, mi = 0, sec = 0, ms = 0, off = 0;

	if (!s || !take_digits(&s, 4, &y) || *s++ != '-' || !take_digits(&s, 2, &mo) ||
	    *s++ != '-' || !take_digits(&s, 2, &d)) {
		return -EINVAL;
	}
	if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo)) {
		return -EINVAL;
	}
	if (*s == 'T' || *s == 't' || *s == ' ') {
		s++;
		if (!take_digits(&s, 2, &h) || *s++ != ':' || !take_digits(&s, 2, &mi)) {
			return -EINVAL;
		}
		if (*s == ':') {
			s++;
			if (!take_digits(&s, 2, &sec)) {
				return -EINVAL;
			}
			if (*s == '.' || *s == ',') {
				s++;
				int scale = 100, digits = 0;
				while (*s >= '0' && *s <= '9') {
					ms += scale * (*s - '0');
					scale /= 10;
					s++;
					digits++;
				}
				if (digits == 0) {
					return -EINVAL;
				}
			}
		}
		if (h > 23 || mi > 59 || sec > 59) {
			return -EINVAL;
		}
		if (*s == 'Z' || *s == 'z') {
			s++;
		} else if (*s == '+' || *s == '-') {
			int sign = *s++ == '-' ? -1 : 1, oh, om;
			if (!take_digits(&s, 2, &oh)) {
				return -EINVAL;
			}
			if (*s == ':') {
				s++;
			}
			if (!take_digits(&s, 2, &om) || oh > 23 || om > 59) {
				return -EINVAL;
			}
			off = sign * (oh * 60 + om);
		}
	}
	if (*s != '\0') {
		return -EINVAL;
	}
	int64_t days = days_from_civil(y, mo, d);
	*ret_ms = ((days * 24 + h) * 60 + mi - off) * INT64_C(60000) + sec * INT64_C(1000) + ms;
	return 0;
}

/* A sorted set of short code strings. */
struct codes {
	char (*v)[36];
	size_t n, cap;
	bool failed;
};

static void
codes_add(struct codes *c, const char *code)
{
	size_t lo = 0, hi = c->n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int r = strcmp(c->v[mid], code);
		if (r == 0) {
			return;
		}
		if (r < 0) {
			lo = mid + 1;
		} else {
			hi = mid;
		}
	}
	if (c->n == c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 64;
		char(*v)[36] = realloc(c->v, cap * sizeof(*v));
		if (!v) {
			c->failed = true;
			return;
		}
		c->v = v;
		c->cap = cap;
	}
	memmove(c->v + lo + 1, c->v + lo, (c->n - lo) * sizeof(*c->v));
	(void) snprintf(c->v[lo], sizeof(c->v[lo]), "%s", code);
	c->n++;
}

static void
codes_add_list(struct codes *c, Coord__V1__CodeCount *const *list, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (list[i]->code && list[i]->count > 0) {
			codes_add(c, list[i]->code);
		}
	}
}

/* A line's distinct countries, languages or councils: the length of its list when the list
 * is there (a query answer, or a broker before distinct counts), else the distinct count
 * the broker filled in (a published digest carries no lists). */
static uint64_t
n_countries(const Coord__V1__DigestLine *l)
{
	return l->n_countries > l->distinct_countries ? l->n_countries : l->distinct_countries;
}

static uint64_t
n_languages(const Coord__V1__DigestLine *l)
{
	return l->n_languages > l->distinct_languages ? l->n_languages : l->distinct_languages;
}

/* The digest's line for `category` across its kinds (Digest.categories), or NULL. */
static const Coord__V1__DigestLine *
category_line(const Coord__V1__Digest *d, Coord__V1__Category category)
{
	for (size_t i = 0; i < d->n_categories; i++) {
		if (d->categories[i]->category == category) {
			return d->categories[i];
		}
	}
	return NULL;
}

/* "1 country", "38 countries": the number with thousands separators and its noun. */
static void
counted(FILE *f, uint64_t n, const char *one, const char *many)
{
	char num[RENDER_NUMBER_MAX];

	fprintf(f, "%s %s", render_number(n, num, sizeof(num)), n == 1 ? one : many);
}

static void
begin_line(FILE *f, unsigned flags)
{
	if (flags & RENDER_INDENT) {
		fputs("  ", f);
	}
}

static const char *
or_default(const char *s, const char *fallback)
{
	return s && s[0] ? s : fallback;
}

static void
render_event(FILE *f, const Coord__V1__DigestLine *l, unsigned flags)
{
	const struct noun *k = noun_of(event_kinds, N_OF(event_kinds), l->kind);

	begin_line(f, flags);
	if (k) {
		counted(f, l->count, k->one, k->many);
	} else {
		counted(f, l->count, "event", "events");
		fprintf(f, " of kind %" PRId32, l->kind);
	}
	fputs(" in ", f);
	counted(f, n_countries(l), "country", "countries");
	if (l->sum > 0) {
		fputs(" with ", f);
		counted(f, l->sum, "participant", "participants");
	}
	fputc('\n', f);
}

/* The letters' lines; `all` is their category line (Digest.categories) or NULL, when the
 * councils across kinds are the union of the lines' lists. */
static void
render_letters(FILE *f, Coord__V1__DigestLine *const *lines, size_t n,
               const Coord__V1__DigestLine *all, unsigned flags, bool *failed)
{
	struct codes councils = {0};
	uint64_t total = 0;

	for (size_t i = 0; i < n; i++) {
		total += lines[i]->count;
		if (!all) {
			codes_add_list(&councils, lines[i]->councils, lines[i]->n_councils);
		}
	}
	begin_line(f, flags);
	counted(f, total, "letter", "letters");
	fputs(" by ", f);
	counted(f, all ? all->distinct_councils : councils.n, "coordinating council",
	        "coordinating councils");
	fputc('\n', f);
	free(councils.v);
	*failed = *failed || councils.failed;
	for (size_t i = 0; i < n; i++) {
		const Coord__V1__DigestLine *l = lines[i];
		const struct noun *r = noun_of(recipients, N_OF(recipients), l->kind);
		begin_line(f, flags);
		fputs("  ", f);
		counted(f, l->count, "letter", "letters");
		if (r) {
			fprintf(f, " to %s\n", l->count == 1 ? r->one : r->many);
		} else {
			fprintf(f, " to recipients of kind %" PRId32 "\n", l->kind);
		}
	}
}

static void
render_statement(FILE *f, const Coord__V1__DigestLine *l, unsigned flags)
{
	begin_line(f, flags);
	counted(f, l->count, "statement", "statements");
	fputs(" in ", f);
	counted(f, n_languages(l), "language", "languages");
	fputs(", from ", f);
	counted(f, n_countries(l), "country", "countries");
	fputc('\n', f);
}

static void
render_petition(FILE *f, const Coord__V1__DigestLine *l, unsigned flags)
{
	const struct noun *t = noun_of(targets, N_OF(targets), l->kind);

	begin_line(f, flags);
	counted(f, l->count, "petition", "petitions");
	if (t) {
		fprintf(f, " to %s", l->count == 1 ? t->one : t->many);
	} else {
		fprintf(f, " to bodies of kind %" PRId32, l->kind);
	}
	fputs(" in ", f);
	counted(f, n_countries(l), "country", "countries");
	if (l->sum > 0) {
		fputs(" with ", f);
		counted(f, l->sum, "signature", "signatures");
	}
	fputc('\n', f);
}

static void
render_media(FILE *f, const Coord__V1__DigestLine *l, unsigned flags)
{
	begin_line(f, flags);
	switch (l->kind) {
	case COORD__V1__MEDIA_KIND__MEDIA_KIND_BROADCAST:
		counted(f, l->count, "broadcast report", "broadcast reports");
		if (l->sum > 0) {
			fputs(" carried by ", f);
			counted(f, l->sum, "local source", "local sources");
			fputc('\n', f);
			return;
		}
		break;
	case COORD__V1__MEDIA_KIND__MEDIA_KIND_ARTICLE:
		counted(f, l->count, "news article", "news articles");
		break;
	case COORD__V1__MEDIA_KIND__MEDIA_KIND_INTERVIEW:
		counted(f, l->count, "media interview", "media interviews");
		break;
	default:
		counted(f, l->count, "media report", "media reports");
		fprintf(f, " of kind %" PRId32, l->kind);
		break;
	}
	if (n_languages(l) > 0) {
		fputs(" in ", f);
		counted(f, n_languages(l), "language", "languages");
	}
	fputs(" in ", f);
	counted(f, n_countries(l), "country", "countries");
	if (l->sum > 0) {
		fputs(", carried by ", f);
		counted(f, l->sum, "local source", "local sources");
	}
	fputc('\n', f);
}

static const char *
category_word(int32_t category)
{
	switch (category) {
	case COORD__V1__CATEGORY__CATEGORY_EVENT:
		return "event";
	case COORD__V1__CATEGORY__CATEGORY_LETTER:
		return "letter";
	case COORD__V1__CATEGORY__CATEGORY_STATEMENT:
		return "statement";
	case COORD__V1__CATEGORY__CATEGORY_PETITION:
		return "petition";
	case COORD__V1__CATEGORY__CATEGORY_MEDIA:
		return "media report";
	default:
		return "record";
	}
}

static void
write_header(FILE *f, const Coord__V1__Digest *d)
{
	char a[RENDER_TIME_MAX], b[RENDER_TIME_MAX], num[RENDER_NUMBER_MAX];
	const Coord__V1__Scope *s = d->scope;

	if (!s || s->kind == COORD__V1__SCOPE_KIND__SCOPE_KIND_ALL ||
	    s->kind == COORD__V1__SCOPE_KIND__SCOPE_KIND_UNSPECIFIED) {
		fputs("All councils and countries", f);
	} else if (s->kind == COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNCIL) {
		fprintf(f, "Council %s", or_default(s->id, "?"));
	} else {
		fprintf(f, "Country %s", or_default(s->id, "?"));
	}
	render_time(d->start, a, sizeof(a));
	render_time(d->end, b, sizeof(b));
	switch (d->window) {
	case COORD__V1__WINDOW__WINDOW_LAST_24H:
		fprintf(f, ", last 24 hours (%s to %s)", a, b);
		break;
	case COORD__V1__WINDOW__WINDOW_LAST_1H:
		fprintf(f, ", last hour (%s to %s)", a, b);
		break;
	case COORD__V1__WINDOW__WINDOW_RANGE:
		fprintf(f, ", from %s to %s", a, b);
		break;
	default:
		fputs(", whole campaign", f);
		break;
	}
	fprintf(f, "; up to seq %s; generated %s", render_number(d->last_seq, num, sizeof(num)),
	        render_time(d->generated_at, a, sizeof(a)));
}

static void
write_headlines(FILE *f, const Coord__V1__Digest *d, unsigned flags)
{
	char date[RENDER_TIME_MAX], num[RENDER_NUMBER_MAX];

	if (d->n_headlines == 0) {
		return;
	}
	begin_line(f, flags);
	fputs("Newest:\n", f);
	for (size_t i = 0; i < d->n_headlines; i++) {
		const Coord__V1__Headline *h = d->headlines[i];
		render_time(h->date, date, sizeof(date));
		/* A date alone is shown as one. */
		if (h->date % DAY_MS == 0) {
			date[10] = '\0';
		}
		begin_line(f, flags);
		fprintf(f, "  %s %s %s: %s (%s, seq %s)\n", date, or_default(h->country, "--"),
		        category_word(h->category), or_default(h->title, "(no title)"),
		        or_default(h->council, "?"), render_number(h->seq, num, sizeof(num)));
	}
}

/* The lead sentence: every live record of the digest, its councils and countries (from the
 * digest's total line, else the union of the lines' lists). */
static void
write_totals(FILE *f, const Coord__V1__Digest *d, unsigned flags, bool *failed)
{
	struct codes councils = {0}, countries = {0};
	uint64_t total = 0;

	for (size_t i = 0; i < d->n_lines; i++) {
		const Coord__V1__DigestLine *l = d->lines[i];
		total += l->count;
		if (!d->total) {
			codes_add_list(&councils, l->councils, l->n_councils);
			codes_add_list(&countries, l->countries, l->n_countries);
		}
	}
	begin_line(f, flags);
	counted(f, total, "record", "records");
	fputs(" from ", f);
	counted(f, d->total ? d->total->distinct_councils : councils.n, "coordinating council",
	        "coordinating councils");
	fputs(" in ", f);
	counted(f, d->total ? d->total->distinct_countries : countries.n, "country", "countries");
	fputc('\n', f);
	*failed = *failed || councils.failed || countries.failed;
	free(councils.v);
	free(countries.v);
}

int
render_digest(const Coord__V1__Digest *d, unsigned flags, char **ret_text)
{
	char *text = NULL;
	size_t len = 0;
	bool failed = false;
	FILE *f = open_memstream(&text, &len);

	if (!f) {
		return -ENOMEM;
	}
	if (flags & RENDER_HEADER) {
		write_header(f, d);
		fputc('\n', f);
	}
	if (d->n_lines == 0) {
		begin_line(f, flags);
		fputs("No records.\n", f);
	} else {
		write_totals(f, d, flags, &failed);
	}
	for (size_t i = 0; i < d->n_lines;) {
		const Coord__V1__DigestLine *l = d->lines[i];
		if (l->count == 0) {
			i++;
			continue;
		}
		switch (l->category) {
		case COORD__V1__CATEGORY__CATEGORY_EVENT:
			render_event(f, l, flags);
			break;
		case COORD__V1__CATEGORY__CATEGORY_LETTER: {
			/* Letters read as one total, then a line per recipient kind. */
			size_t j = i;
			while (j < d->n_lines &&
			       d->lines[j]->category == COORD__V1__CATEGORY__CATEGORY_LETTER) {
				j++;
			}
			render_letters(f, d->lines + i, j - i,
			               category_line(d, COORD__V1__CATEGORY__CATEGORY_LETTER),
			               flags, &failed);
			i = j;
			continue;
		}
		case COORD__V1__CATEGORY__CATEGORY_STATEMENT:
			render_statement(f, l, flags);
			break;
		case COORD__V1__CATEGORY__CATEGORY_PETITION:
			render_petition(f, l, flags);
			break;
		case COORD__V1__CATEGORY__CATEGORY_MEDIA:
			render_media(f, l, flags);
			break;
		default:
			begin_line(f, flags);
			counted(f, l->count, "record", "records");
			fprintf(f, " of category %d\n", (int) l->category);
			break;
		}
		i++;
	}
	if (flags & RENDER_HEADLINES) {
		write_headlines(f, d, flags);
	}
	if (fclose(f) != 0 || failed || !text) {
		free(text);
		return -ENOMEM;
	}
	*ret_text = text;
	return 0;
}

int
render_digest_header(const Coord__V1__Digest *d, char **ret_text)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	if (!f) {
		return -ENOMEM;
	}
	write_header(f, d);
	if (fclose(f) != 0 || !text) {
		free(text);
		return -ENOMEM;
	}
	*ret_text = text;
	return 0;
}

/* The JSON object of an Item with its envelope decoded. New reference, or NULL. */
static int
item_object(const Coord__V1__Item *item, json_t **ret)
{
	Coord__V1__Item copy = *item;
	char *text = NULL;
	json_error_t err;
	int r;

	/* The Item without its bytes, then the Envelope as an object in their place. */
	copy.envelope.len = 0;
	copy.envelope.data = NULL;
	r = coord__pbjson_encode(&copy.base, 0, &text);
	if (r < 0) {
		return r;
	}
	json_t *obj = json_loads(text, 0, &err);
	free(text);
	if (!obj) {
		return -ENOMEM;
	}
	Coord__V1__Envelope *env =
	        coord__v1__envelope__unpack(NULL, item->envelope.len, item->envelope.data);
	json_t *envj = NULL;
	if (env) {
		r = coord__pbjson_encode(&env->base, 0, &text);
		coord__v1__envelope__free_unpacked(env, NULL);
		if (r >= 0) {
			envj = json_loads(text, 0, &err);
			free(text);
		}
	}
	if (!envj) {
		/* Not an Envelope (or not representable): the bytes as the mapping has them. */
		r = coord__pbjson_encode(&item->base, 0, &text);
		json_decref(obj);
		if (r < 0) {
			return r;
		}
		obj = json_loads(text, 0, &err);
		free(text);
		if (!obj) {
			return -ENOMEM;
		}
		*ret = obj;
		return 0;
	}
	if (json_object_set_new(obj, "envelope", envj) < 0) {
		json_decref(obj);
		return -ENOMEM;
	}
	*ret = obj;
	return 0;
}

static int
dump(json_t *obj, char **ret_text)
{
	char *text = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);

	json_decref(obj);
	if (!text) {
		return -ENOMEM;
	}
	*ret_text = text;
	return 0;
}

int
render_item_json(const Coord__V1__Item *item, char **ret_text)
{
	json_t *obj;
	int r = item_object(item, &obj);

	return r < 0 ? r : dump(obj, ret_text);
}

int
render_status_json(const Coord__V1__RecordStatus *status, char **ret_text)
{
	Coord__V1__RecordStatus copy = *status;
	char *text = NULL;
	json_error_t err;
	json_t *itemj = NULL;
	int r;

	copy.item = NULL;
	r = coord__pbjson_encode(&copy.base, 0, &text);
	if (r < 0) {
		return r;
	}
	json_t *obj = json_loads(text, 0, &err);
	free(text);
	if (!obj) {
		return -ENOMEM;
	}
	if (status->item) {
		r = item_object(status->item, &itemj);
		if (r < 0 || json_object_set_new(obj, "item", itemj) < 0) {
			json_decref(obj);
			return r < 0 ? r : -ENOMEM;
		}
	}
	return dump(obj, ret_text);
}

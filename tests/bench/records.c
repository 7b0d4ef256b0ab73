/*
 * records: the record mix and the Envelopes coord-bench sends.
 *
 * Every record is valid for the broker (docs/PROTOCOL.md) and varied the way a campaign's
 * records are: 50 countries, 20 languages, every kind of each category, dates spread over
 * the last 30 days. Variety matters for the broker's cost: the digest aggregates touch one
 * line per (scope, hour, category, kind) and one code count per country and language. All
 * choices come from a seeded generator (splitmix64), so a run can be repeated exactly.
 *
 * Size: the record's long text field (title or subject, at most 1,024 bytes) is padded so
 * that the packed Envelope is `size` bytes, or as close as the varint lengths allow.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "coord.pb-c.h"

#define TEXT_MAX 1024
#define DAY_MS (24 * 3600 * 1000LL)

static const char *const kind_names[BENCH_KIND_MAX] = {
        [BENCH_KIND_EVENT] = "events",         [BENCH_KIND_LETTER] = "letters",
        [BENCH_KIND_STATEMENT] = "statements", [BENCH_KIND_PETITION] = "petitions",
        [BENCH_KIND_MEDIA] = "media",
};

/* Officially assigned ISO 3166-1 alpha-2 codes, so none is rejected. */
static const char *const countries[] = {
        "FR", "US", "RU", "DE", "AR", "LB", "CA", "GB", "AU", "IR", "GR", "AM", "BE",
        "NL", "IT", "ES", "SE", "CH", "AT", "PL", "BR", "UY", "CY", "EG", "SY", "GE",
        "UA", "KZ", "TR", "JP", "CN", "IN", "ZA", "MX", "CL", "VE", "BG", "RO", "CZ",
        "HU", "DK", "NO", "FI", "IE", "PT", "IL", "JO", "IQ", "AE", "QA",
};
static const char *const languages[] = {
        "en", "fr", "ru", "de", "es", "hy", "ar", "fa", "el", "it",
        "pt", "nl", "sv", "tr", "pl", "uk", "ka", "he", "ja", "zh",
};
static const char *const cities[] = {"Paris",        "Lyon",   "Marseille", "Los Angeles",
                                     "Buenos Aires", "Beirut", "Montreal",  "London"};
static const char *const outlets[] = {"Le Monde",   "The Guardian", "Der Spiegel",  "El Pais",
                                      "Kommersant", "Al-Nahar",     "La Repubblica"};

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

const char *
bench_kind_name(enum bench_kind k)
{
	return k >= 0 && k < BENCH_KIND_MAX ? kind_names[k] : "?";
}

static int
kind_from_name(const char *name, size_t len)
{
	for (int k = 0; k < BENCH_KIND_MAX; k++) {
		size_t n = strlen(kind_names[k]);
		/* "events" or "event"; "media" has no singular form of its own. */
		if ((len == n || (len == n - 1 && kind_names[k][n - 1] == 's')) &&
		    strncmp(name, kind_names[k], len) == 0) {
			return k;
		}
	}
	return -EINVAL;
}

int
bench_mix_parse(const char *s, struct bench_mix *ret_mix)
{
	struct bench_mix mix = {0};
	const char *p = s;

	while (*p) {
		const char *eq = strchr(p, '=');
		if (!eq) {
			return -EINVAL;
		}
		int k = kind_from_name(p, (size_t) (eq - p));
		if (k < 0) {
			return -EINVAL;
		}
		char *end;
		errno = 0;
		unsigned long w = strtoul(eq + 1, &end, 10);
		if (errno || end == eq + 1 || w > 1000000 || (*end && *end != ',') ||
		    eq[1] == '-') {
			return -EINVAL;
		}
		mix.weight[k] = (unsigned) w;
		p = *end ? end + 1 : end;
		if (*end && !*p) {
			return -EINVAL; /* a trailing comma */
		}
	}
	for (int k = 0; k < BENCH_KIND_MAX; k++) {
		mix.total += mix.weight[k];
	}
	if (mix.total == 0) {
		return -EINVAL;
	}
	*ret_mix = mix;
	return 0;
}

void
bench_mix_format(const struct bench_mix *mix, char *buf, size_t len)
{
	size_t used = 0;

	buf[0] = 0;
	for (int k = 0; k < BENCH_KIND_MAX && used < len; k++) {
		int n = snprintf(buf + used, len - used, "%s%s=%u", used ? "," : "", kind_names[k],
		                 mix->weight[k]);
		if (n < 0) {
			break;
		}
		used += (size_t) n;
	}
}

static uint64_t
splitmix64(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static unsigned
pick(uint64_t *rng, unsigned n)
{
	return (unsigned) (splitmix64(rng) % n);
}

/* The body of one record, with pointers into `pad` for its long text field. */
struct record {
	Coord__V1__Envelope env;
	Coord__V1__Event event;
	Coord__V1__OutreachLetter letter;
	Coord__V1__Statement statement;
	Coord__V1__Petition petition;
	Coord__V1__MediaReport media;
	char *langs[2];
	char **text; /* the field that carries the padding */
};

static void
fill(struct record *r, enum bench_kind kind, uint64_t *rng, int64_t now_ms)
{
	int64_t date = now_ms - 3600000 - (int64_t) (splitmix64(rng) % (30 * DAY_MS));
	char *country = (char *) countries[pick(rng, N_OF(countries))];
	char *language = (char *) languages[pick(rng, N_OF(languages))];

	r->langs[0] = language;
	r->langs[1] = (char *) languages[pick(rng, N_OF(languages))];
	switch (kind) {
	case BENCH_KIND_EVENT:
		r->event = (Coord__V1__Event) COORD__V1__EVENT__INIT;
		r->event.kind = (Coord__V1__EventKind) (1 + pick(rng, 13));
		r->event.country = country;
		r->event.city = (char *) cities[pick(rng, N_OF(cities))];
		r->event.date = date;
		r->event.organiser = "Community council";
		r->event.participants = 10 + pick(rng, 5000);
		r->event.n_languages = 1 + pick(rng, 2);
		r->event.languages = r->langs;
		r->env.body_case = COORD__V1__ENVELOPE__BODY_EVENT;
		r->env.event = &r->event;
		r->text = &r->event.title;
		break;
	case BENCH_KIND_LETTER:
		r->letter = (Coord__V1__OutreachLetter) COORD__V1__OUTREACH_LETTER__INIT;
		r->letter.recipient_kind = (Coord__V1__RecipientKind) (1 + pick(rng, 7));
		r->letter.recipient = "Office of the President";
		r->letter.recipient_country = country;
		r->letter.language = language;
		r->letter.sent_at = date;
		r->letter.channel = (Coord__V1__LetterChannel) (1 + pick(rng, 5));
		r->env.body_case = COORD__V1__ENVELOPE__BODY_LETTER;
		r->env.letter = &r->letter;
		r->text = &r->letter.subject;
		break;
	case BENCH_KIND_STATEMENT:
		r->statement = (Coord__V1__Statement) COORD__V1__STATEMENT__INIT;
		r->statement.organisation = "Union of students";
		r->statement.country = country;
		r->statement.n_languages = 1 + pick(rng, 2);
		r->statement.languages = r->langs;
		r->statement.date = date;
		r->env.body_case = COORD__V1__ENVELOPE__BODY_STATEMENT;
		r->env.statement = &r->statement;
		r->text = &r->statement.title;
		break;
	case BENCH_KIND_PETITION:
		r->petition = (Coord__V1__Petition) COORD__V1__PETITION__INIT;
		r->petition.target_kind = (Coord__V1__PetitionTarget) (1 + pick(rng, 3));
		r->petition.target = "National Assembly";
		r->petition.country = country;
		r->petition.date = date;
		r->petition.signatures = 100 + pick(rng, 100000);
		r->petition.language = language;
		r->env.body_case = COORD__V1__ENVELOPE__BODY_PETITION;
		r->env.petition = &r->petition;
		r->text = &r->petition.title;
		break;
	default:
		r->media = (Coord__V1__MediaReport) COORD__V1__MEDIA_REPORT__INIT;
		r->media.kind = (Coord__V1__MediaKind) (1 + pick(rng, 3));
		r->media.outlet = (char *) outlets[pick(rng, N_OF(outlets))];
		r->media.country = country;
		r->media.language = language;
		r->media.date = date;
		r->media.local_sources = pick(rng, 300);
		r->env.body_case = COORD__V1__ENVELOPE__BODY_MEDIA;
		r->env.media = &r->media;
		r->text = &r->media.title;
		break;
	}
}

int
bench_record_pack(const struct bench_mix *mix, unsigned size, int64_t now_ms, const char *council,
                  const char *msg_id, uint64_t seed, uint8_t *buf, size_t cap,
                  enum bench_kind *ret_kind)
{
	static const char letters[] = "Campaign outreach report ";
	char pad[TEXT_MAX + 1];
	struct record r = {.env = COORD__V1__ENVELOPE__INIT};
	uint64_t rng = seed;
	unsigned draw = pick(&rng, mix->total);
	enum bench_kind kind = BENCH_KIND_EVENT;

	for (int k = 0; k < BENCH_KIND_MAX; k++) {
		if (draw < mix->weight[k]) {
			kind = (enum bench_kind) k;
			break;
		}
		draw -= mix->weight[k];
	}
	r.env.council = (char *) council;
	r.env.msg_id = (char *) msg_id;
	r.env.revision = 1;
	r.env.created_at = now_ms;
	fill(&r, kind, &rng, now_ms);

	/* Measure with a one-byte text, then grow it; a second pass absorbs the length
	 * varint growing by a byte. */
	for (size_t i = 0; i < TEXT_MAX; i++) {
		pad[i] = letters[i % (sizeof(letters) - 1)];
	}
	size_t len = 1;
	for (int pass = 0; pass < 3; pass++) {
		pad[len] = 0;
		*r.text = pad;
		size_t packed = coord__v1__envelope__get_packed_size(&r.env);
		pad[len] = letters[len % (sizeof(letters) - 1)];
		if (packed == size) {
			break;
		}
		long want = (long) len + (long) size - (long) packed;
		len = want < 1 ? 1 : want > TEXT_MAX ? TEXT_MAX : (size_t) want;
	}
	pad[len] = 0;
	*r.text = pad;
	size_t packed = coord__v1__envelope__get_packed_size(&r.env);
	if (packed > cap) {
		return -ENOBUFS;
	}
	(void) coord__v1__envelope__pack(&r.env, buf);
	*ret_kind = kind;
	return (int) packed;
}

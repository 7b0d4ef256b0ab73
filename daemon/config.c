/*
 * config: read the INI configuration file into an immutable, reference-counted struct config.
 *
 * inih does the tokenising, but it is fed through our own line reader (inifile.c), because
 * inih as packaged gives the handler no line number, silently splits lines longer than its
 * buffer, and knows nothing of sections that have no keys. The reader therefore:
 *   - counts lines, so every error names its line (inih calls the handler for a line before
 *     it asks for the next one, so p->ini.line is the handler's line too);
 *   - rejects a line that does not fit inih's buffer (and CONFIG_LINE_MAX) instead of
 *     letting inih split it;
 *   - drops leading whitespace, so inih never sees a continuation line (an indented key is
 *     just a key, not a new line of the previous value);
 *   - cuts an inline '#' comment (a '#' after a space or tab); inih itself cuts inline ';'
 *     comments the same way;
 *   - handles "[section]" lines itself: validates the name, rejects repeats and creates the
 *     council, so empty sections are checked too. inih still sees the line.
 * The handler (handle_key) then checks and stores one "key = value" pair. Checks that need
 * the whole file (required keys, max_pending >= max_batch, ...) run in finish(). The first
 * error wins: once one is recorded the reader ends the input.
 *
 * Non-logging module: errors go to struct config_error.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ini.h>

#include "config.h"
#include "idrule.h"
#include "inifile.h"
#include "iso.h"
#include "log.h"

#define CONFIG_COUNCIL_PREFIX "council."

#define KIB UINT64_C(1024)
#define MIB (KIB * 1024)
#define GIB (MIB * 1024)

enum section {
	SECTION_NONE, /* before the first "[section]" line */
	SECTION_COORDD,
	SECTION_INGEST,
	SECTION_PUBLISH,
	SECTION_QUERY,
	SECTION_DIGEST,
	SECTION_STORE,
	SECTION_METRICS,
	SECTION_SECURITY,
	SECTION_COUNCIL,
	_SECTION_MAX,
};

static const char *const section_names[_SECTION_MAX] = {
        [SECTION_NONE] = "",           [SECTION_COORDD] = "coordd",
        [SECTION_INGEST] = "ingest",   [SECTION_PUBLISH] = "publish",
        [SECTION_QUERY] = "query",     [SECTION_DIGEST] = "digest",
        [SECTION_STORE] = "store",     [SECTION_METRICS] = "metrics",
        [SECTION_COUNCIL] = "council", [SECTION_SECURITY] = "security",
};

/* Every fixed section, for messages that list them. */
#define SECTION_LIST                                                                               \
	"[coordd], [ingest], [publish], [query], [digest], [store], [metrics], [security]"

enum key_type {
	KEY_STRING,   /* char *, must not be empty */
	KEY_ENDPOINT, /* char *, "transport://address" */
	KEY_LISTEN,   /* char *, numeric "host:port" or "[v6host]:port", or "off" (NULL) */
	KEY_U32,      /* uint32_t, plain decimal */
	KEY_SIZE32,   /* uint32_t, config_parse_size() */
	KEY_SIZE64,   /* uint64_t, config_parse_size() */
	KEY_LOG_LEVEL,
	KEY_SYNC,
	KEY_SECURITY, /* enum config_security */
};

/* The keys of the fixed sections; council keys are handled by handle_council_key(). */
enum key_id {
	KEY_STATE_DIR,
	KEY_LOG_LEVEL_ID,
	KEY_INGEST_ENDPOINT,
	KEY_MAX_MESSAGE_BYTES,
	KEY_MAX_BATCH,
	KEY_MAX_PENDING,
	KEY_HWM,
	KEY_MAX_INFLIGHT_PER_COUNCIL,
	KEY_RATE_LIMIT,
	KEY_RATE_BURST,
	KEY_PUBLISH_ENDPOINT,
	KEY_PUBLISH_HWM,
	KEY_MAX_SUBSCRIPTION_BYTES,
	KEY_QUERY_ENDPOINT,
	KEY_HISTORY_LIMIT,
	KEY_HISTORY_LIMIT_MAX,
	KEY_HISTORY_BYTES_MAX,
	KEY_QUERY_HWM,
	KEY_MAX_REQUEST_BYTES,
	KEY_PUBLISH_INTERVAL_MS,
	KEY_HEADLINES,
	KEY_MAP_SIZE,
	KEY_MAP_SIZE_MAX,
	KEY_SYNC_ID,
	KEY_MIN_FREE_BYTES,
	KEY_METRICS_LISTEN,
	KEY_INGEST_SECURITY,
	KEY_INGEST_MAX_CONNECTIONS,
	KEY_PUBLISH_SECURITY,
	KEY_PUBLISH_MAX_CONNECTIONS,
	KEY_QUERY_SECURITY,
	KEY_QUERY_MAX_CONNECTIONS,
	KEY_SUBSCRIBER_HISTORY_WINDOW,
	KEY_SECRET_KEY_FILE,
	KEY_KEYS_FILE,
	KEY_FANOUT_BUDGET,
	_KEY_MAX,
};

struct key {
	enum section section;
	const char *name;
	enum key_type type;
	size_t offset; /* into struct config */
	uint64_t min, max;
};

static const struct key keys[_KEY_MAX] = {
        [KEY_STATE_DIR] = {SECTION_COORDD, "state_dir", KEY_STRING,
                           offsetof(struct config, state_dir), 0, 0},
        [KEY_LOG_LEVEL_ID] = {SECTION_COORDD, "log_level", KEY_LOG_LEVEL,
                              offsetof(struct config, log_level), 0, 0},
        [KEY_INGEST_ENDPOINT] = {SECTION_INGEST, "endpoint", KEY_ENDPOINT,
                                 offsetof(struct config, ingest.endpoint), 0, 0},
        [KEY_MAX_MESSAGE_BYTES] = {SECTION_INGEST, "max_message_bytes", KEY_SIZE32,
                                   offsetof(struct config, ingest.max_message_bytes), KIB, MIB},
        [KEY_MAX_BATCH] = {SECTION_INGEST, "max_batch", KEY_U32,
                           offsetof(struct config, ingest.max_batch), 1, 65536},
        [KEY_MAX_PENDING] = {SECTION_INGEST, "max_pending", KEY_U32,
                             offsetof(struct config, ingest.max_pending), 1, UINT32_MAX},
        [KEY_HWM] = {SECTION_INGEST, "hwm", KEY_U32, offsetof(struct config, ingest.hwm), 100,
                     1000000},
        [KEY_MAX_INFLIGHT_PER_COUNCIL] = {SECTION_INGEST, "max_inflight_per_council", KEY_U32,
                                          offsetof(struct config, ingest.max_inflight_per_council),
                                          1, 1000000},
        [KEY_RATE_LIMIT] = {SECTION_INGEST, "rate_limit", KEY_U32,
                            offsetof(struct config, ingest.rate_limit), 0, 10000000},
        [KEY_RATE_BURST] = {SECTION_INGEST, "rate_burst", KEY_U32,
                            offsetof(struct config, ingest.rate_burst), 1, 20000000},
        [KEY_PUBLISH_ENDPOINT] = {SECTION_PUBLISH, "endpoint", KEY_ENDPOINT,
                                  offsetof(struct config, publish.endpoint), 0, 0},
        [KEY_PUBLISH_HWM] = {SECTION_PUBLISH, "hwm", KEY_U32, offsetof(struct config, publish.hwm),
                             100, 1000000},
        [KEY_MAX_SUBSCRIPTION_BYTES] = {SECTION_PUBLISH, "max_subscription_bytes", KEY_SIZE32,
                                        offsetof(struct config, publish.max_subscription_bytes),
                                        256, 64 * KIB},
        [KEY_FANOUT_BUDGET] = {SECTION_PUBLISH, "fanout_budget", KEY_SIZE64,
                               offsetof(struct config, publish.fanout_budget), KIB,
                               UINT64_C(1) << 40},
        [KEY_QUERY_ENDPOINT] = {SECTION_QUERY, "endpoint", KEY_ENDPOINT,
                                offsetof(struct config, query.endpoint), 0, 0},
        [KEY_HISTORY_LIMIT] = {SECTION_QUERY, "history_limit", KEY_U32,
                               offsetof(struct config, query.history_limit), 1, 100000},
        [KEY_HISTORY_LIMIT_MAX] = {SECTION_QUERY, "history_limit_max", KEY_U32,
                                   offsetof(struct config, query.history_limit_max), 1, 100000},
        [KEY_HISTORY_BYTES_MAX] = {SECTION_QUERY, "history_bytes_max", KEY_SIZE32,
                                   offsetof(struct config, query.history_bytes_max), 64 * KIB,
                                   64 * MIB},
        [KEY_QUERY_HWM] = {SECTION_QUERY, "hwm", KEY_U32, offsetof(struct config, query.hwm), 1,
                           100000},
        [KEY_MAX_REQUEST_BYTES] = {SECTION_QUERY, "max_request_bytes", KEY_SIZE32,
                                   offsetof(struct config, query.max_request_bytes), 4 * KIB, MIB},
        [KEY_PUBLISH_INTERVAL_MS] = {SECTION_DIGEST, "publish_interval_ms", KEY_U32,
                                     offsetof(struct config, digest.publish_interval_ms), 10,
                                     3600000},
        [KEY_HEADLINES] = {SECTION_DIGEST, "headlines", KEY_U32,
                           offsetof(struct config, digest.headlines), 1, CONFIG_HEADLINES_MAX},
        [KEY_MAP_SIZE] = {SECTION_STORE, "map_size", KEY_SIZE64,
                          offsetof(struct config, store.map_size), MIB, UINT64_MAX},
        [KEY_MAP_SIZE_MAX] = {SECTION_STORE, "map_size_max", KEY_SIZE64,
                              offsetof(struct config, store.map_size_max), MIB, UINT64_MAX},
        [KEY_SYNC_ID] = {SECTION_STORE, "sync", KEY_SYNC, offsetof(struct config, store.sync), 0,
                         0},
        [KEY_MIN_FREE_BYTES] = {SECTION_STORE, "min_free_bytes", KEY_SIZE64,
                                offsetof(struct config, store.min_free_bytes), 0, UINT64_MAX},
        [KEY_METRICS_LISTEN] = {SECTION_METRICS, "listen", KEY_LISTEN,
                                offsetof(struct config, metrics.listen), 0, 0},
        [KEY_INGEST_SECURITY] = {SECTION_INGEST, "security", KEY_SECURITY,
                                 offsetof(struct config, ingest.security), 0, 0},
        [KEY_INGEST_MAX_CONNECTIONS] = {SECTION_INGEST, "max_connections", KEY_U32,
                                        offsetof(struct config, ingest.max_connections), 1,
                                        1000000},
        [KEY_PUBLISH_SECURITY] = {SECTION_PUBLISH, "security", KEY_SECURITY,
                                  offsetof(struct config, publish.security), 0, 0},
        [KEY_PUBLISH_MAX_CONNECTIONS] = {SECTION_PUBLISH, "max_connections", KEY_U32,
                                         offsetof(struct config, publish.max_connections), 1,
                                         1000000},
        [KEY_QUERY_SECURITY] = {SECTION_QUERY, "security", KEY_SECURITY,
                                offsetof(struct config, query.security), 0, 0},
        [KEY_QUERY_MAX_CONNECTIONS] = {SECTION_QUERY, "max_connections", KEY_U32,
                                       offsetof(struct config, query.max_connections), 1, 1000000},
        [KEY_SUBSCRIBER_HISTORY_WINDOW] = {SECTION_QUERY, "subscriber_history_window", KEY_U32,
                                           offsetof(struct config, query.subscriber_history_window),
                                           1, 1000000000},
        [KEY_SECRET_KEY_FILE] = {SECTION_SECURITY, "secret_key_file", KEY_STRING,
                                 offsetof(struct config, security.secret_key_file), 0, 0},
        [KEY_KEYS_FILE] = {SECTION_SECURITY, "keys_file", KEY_STRING,
                           offsetof(struct config, security.keys_file), 0, 0},
};

/* Keys the running daemon applies only at start: a reload keeps their old values. */
static const enum key_id restart_keys[] = {
        KEY_STATE_DIR,
        KEY_INGEST_ENDPOINT,
        KEY_MAX_MESSAGE_BYTES,
        KEY_MAX_BATCH,
        KEY_MAX_PENDING,
        KEY_HWM,
        KEY_INGEST_SECURITY,
        KEY_PUBLISH_ENDPOINT,
        KEY_PUBLISH_HWM,
        KEY_PUBLISH_SECURITY,
        KEY_QUERY_ENDPOINT,
        KEY_QUERY_HWM,
        KEY_QUERY_SECURITY,
        KEY_MAP_SIZE,
        KEY_MAP_SIZE_MAX,
        KEY_SYNC_ID,
        KEY_METRICS_LISTEN,
        KEY_SECRET_KEY_FILE,
        KEY_MAX_SUBSCRIPTION_BYTES,
        KEY_MAX_REQUEST_BYTES,
};

/* Parse-time bookkeeping for one council, parallel to config->councils (file order). */
struct council_state {
	unsigned line; /* of its "[council.<id>]" line */
	unsigned name_line, country_line;
};

struct parser {
	struct config *config;
	struct config_error error;
	int r; /* first failure, 0 while none */

	struct inifile ini; /* input and line reader */

	enum section section;
	struct council_state *council_states;
	size_t councils_allocated;
	unsigned section_line[_SECTION_MAX]; /* 0 until the section is seen */
	unsigned key_line[_KEY_MAX];         /* 0 until the key is set */
};

static int fail(struct parser *p, unsigned line, int r, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

/* Record the first error only; later ones are consequences of it. Returns r. */
static int
fail(struct parser *p, unsigned line, int r, const char *fmt, ...)
{
	if (p->r < 0) {
		return r;
	}
	p->r = r;
	p->error.line = line;
	va_list ap;
	va_start(ap, fmt);
	(void) vsnprintf(p->error.message, sizeof(p->error.message), fmt, ap);
	va_end(ap);
	return r;
}

static int
fail_oom(struct parser *p)
{
	return fail(p, p->ini.line, -ENOMEM, "out of memory");
}

static bool
is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

static char
ascii_lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char) (c - 'A' + 'a') : c;
}

static bool
is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static int
add_council(struct parser *p, const char *id)
{
	struct config *c = p->config;

	for (size_t i = 0; i < c->n_councils; i++) {
		if (strcmp(c->councils[i].id, id) == 0) {
			return fail(p, p->ini.line, -EINVAL,
			            "duplicate section [council.%s] (first at line %u): merge them",
			            id, p->council_states[i].line);
		}
	}
	if (c->n_councils == p->councils_allocated) {
		size_t n = p->councils_allocated ? p->councils_allocated * 2 : 16;
		struct config_council *councils = reallocarray(c->councils, n, sizeof(*councils));
		if (!councils) {
			return fail_oom(p);
		}
		c->councils = councils;
		struct council_state *states = reallocarray(p->council_states, n, sizeof(*states));
		if (!states) {
			return fail_oom(p);
		}
		p->council_states = states;
		p->councils_allocated = n;
	}
	struct config_council *council = &c->councils[c->n_councils];
	*council = (struct config_council){.name = NULL};
	memcpy(council->id, id, strlen(id) + 1);
	p->council_states[c->n_councils] = (struct council_state){.line = p->ini.line};
	c->n_councils++;
	return 0;
}

/*
 * A "[name]" line, already left-trimmed. Sets p->section or records an error. inih gets the
 * line as well and keeps its own copy of the name, which we do not use.
 */
static int
handle_section_line(struct parser *p, char *line)
{
	char *end = strchr(line, ']');

	if (!end) {
		return fail(p, p->ini.line, -EINVAL, "missing ']' in section header");
	}
	const char *rest = end + 1;
	while (is_blank(*rest)) {
		rest++;
	}
	if (*rest != '\0' && *rest != ';' && *rest != '#') {
		return fail(p, p->ini.line, -EINVAL,
		            "unexpected text after ']': put it on its own line");
	}

	/* The name is at most CONFIG_LINE_MAX bytes, so it always fits the message. */
	*end = '\0';
	const char *name = line + 1;
	int r = 0;
	size_t prefix = strlen(CONFIG_COUNCIL_PREFIX);
	if (strncmp(name, CONFIG_COUNCIL_PREFIX, prefix) == 0) {
		const char *id = name + prefix;
		if (!idrule_id_valid(id)) {
			r = fail(p, p->ini.line, -EINVAL,
			         "bad council id '%s': use 1 to %d of a-z, 0-9, '_', '-', "
			         "starting with a letter or digit",
			         id, CONFIG_COUNCIL_ID_MAX);
		} else {
			r = add_council(p, id);
			p->section = SECTION_COUNCIL;
		}
		*end = ']';
		return r;
	}

	enum section s = SECTION_NONE;
	for (int i = SECTION_COORDD; i < _SECTION_MAX; i++) {
		if (i == SECTION_COUNCIL) {
			continue;
		}
		if (strcmp(name, section_names[i]) == 0) {
			s = (enum section) i;
		}
	}
	if (s == SECTION_NONE) {
		r = fail(p, p->ini.line, -EINVAL,
		         "unknown section [%s]: use " SECTION_LIST " or [council.<id>]", name);
	} else if (p->section_line[s] != 0) {
		r = fail(p, p->ini.line, -EINVAL,
		         "duplicate section [%s] (first at line %u): merge them", name,
		         p->section_line[s]);
	} else {
		p->section_line[s] = p->ini.line;
		p->section = s;
	}
	*end = ']';
	return r;
}

/* on_section for inifile: a "[...]" line. */
static int
section_line(void *data, char *line)
{
	return handle_section_line(data, line);
}

/* on_error for inifile. */
static int
reader_error(void *data, unsigned line, int r, const char *message)
{
	return fail(data, line, r, "%s", message);
}

/* Strict unsigned decimal: digits only. -EINVAL on syntax, -ERANGE above UINT64_MAX. */
static int
parse_u64(const char *s, uint64_t *ret)
{
	uint64_t n = 0;
	bool overflow = false;

	if (!is_digit(*s)) {
		return -EINVAL;
	}
	for (; is_digit(*s); s++) {
		unsigned d = (unsigned) (*s - '0');
		if (n > (UINT64_MAX - d) / 10) {
			overflow = true;
		} else {
			n = n * 10 + d;
		}
	}
	if (*s != '\0') {
		return -EINVAL;
	}
	if (overflow) {
		return -ERANGE;
	}
	*ret = n;
	return 0;
}

int
config_parse_size(const char *s, uint64_t *ret)
{
	if (!s || !ret) {
		return -EINVAL;
	}

	size_t digits = 0;
	while (is_digit(s[digits])) {
		digits++;
	}
	if (digits == 0 || digits >= 32) {
		return digits == 0 ? -EINVAL : -ERANGE;
	}
	char number[32];
	memcpy(number, s, digits);
	number[digits] = '\0';

	const char *suffix = s + digits;
	unsigned shift = 0;
	switch (ascii_lower(*suffix)) {
	case 'k':
		shift = 10;
		break;
	case 'm':
		shift = 20;
		break;
	case 'g':
		shift = 30;
		break;
	case 't':
		shift = 40;
		break;
	default:
		break;
	}
	if (shift > 0) {
		suffix++;
		if (ascii_lower(suffix[0]) == 'i' && ascii_lower(suffix[1]) == 'b') {
			suffix += 2;
		} else if (ascii_lower(suffix[0]) == 'b') {
			suffix++;
		}
	} else if (ascii_lower(*suffix) == 'b') {
		suffix++;
	}
	if (*suffix != '\0') {
		return -EINVAL;
	}

	uint64_t n;
	int r = parse_u64(number, &n);
	if (r < 0) {
		return r;
	}
	if (n > (UINT64_MAX >> shift)) {
		return -ERANGE;
	}
	*ret = n << shift;
	return 0;
}

/* "64M" for a whole number of the largest unit, else the plain number. */
static void
format_size(uint64_t n, char *buf, size_t size)
{
	static const char units[] = "KMGT";
	int unit = -1;

	while (unit < 3 && n >= 1024 && n % 1024 == 0) {
		n /= 1024;
		unit++;
	}
	if (unit < 0) {
		(void) snprintf(buf, size, "%" PRIu64, n);
	} else {
		(void) snprintf(buf, size, "%" PRIu64 "%c", n, units[unit]);
	}
}

static void
format_range(const struct key *k, char *buf, size_t size)
{
	char lo[32], hi[32];

	if (k->type == KEY_U32) {
		(void) snprintf(lo, sizeof(lo), "%" PRIu64, k->min);
		(void) snprintf(hi, sizeof(hi), "%" PRIu64, k->max);
	} else {
		format_size(k->min, lo, sizeof(lo));
		format_size(k->max, hi, sizeof(hi));
	}
	if (k->max == UINT64_MAX) {
		(void) snprintf(buf, size, "at least %s", lo);
	} else {
		(void) snprintf(buf, size, "%s to %s", lo, hi);
	}
}

static bool
utf8_text_valid(const char *s)
{
	const unsigned char *u = (const unsigned char *) s;

	while (*u) {
		unsigned char c = *u;
		size_t n;
		uint32_t cp, min;
		if (c < 0x20 || c == 0x7F) {
			return false;
		} else if (c < 0x80) {
			u++;
			continue;
		} else if ((c & 0xE0) == 0xC0) {
			n = 1, cp = c & 0x1F, min = 0x80;
		} else if ((c & 0xF0) == 0xE0) {
			n = 2, cp = c & 0x0F, min = 0x800;
		} else if ((c & 0xF8) == 0xF0) {
			n = 3, cp = c & 0x07, min = 0x10000;
		} else {
			return false;
		}
		for (size_t i = 1; i <= n; i++) {
			if ((u[i] & 0xC0) != 0x80) {
				return false;
			}
			cp = (cp << 6) | (u[i] & 0x3F);
		}
		if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
			return false;
		}
		u += n + 1;
	}
	return true;
}

static int
set_string(struct parser *p, char **field, const char *value)
{
	char *copy = strdup(value);

	if (!copy) {
		return fail_oom(p);
	}
	free(*field);
	*field = copy;
	return 0;
}

static int
handle_fixed_key(struct parser *p, enum key_id id, const char *value)
{
	const struct key *k = &keys[id];
	const char *sect = section_names[k->section];
	void *field = (char *) p->config + k->offset;
	char range[80];
	uint64_t n = 0;
	int r;

	switch (k->type) {
	case KEY_ENDPOINT:
		if (!strstr(value, "://") || strpbrk(value, " \t")) {
			return fail(p, p->ini.line, -EINVAL,
			            "bad %s '%s' in [%s]: use transport://address, e.g. "
			            "tcp://127.0.0.1:7701",
			            k->name, value, sect);
		}
		return set_string(p, field, value);
	case KEY_STRING:
		return set_string(p, field, value);
	case KEY_LISTEN: {
		char host[64];
		uint16_t port;

		if (strcmp(value, "off") == 0) {
			free(*(char **) field);
			*(char **) field = NULL;
			return 0;
		}
		if (config_parse_listen(value, host, &port) < 0) {
			return fail(p, p->ini.line, -EINVAL,
			            "bad %s '%s' in [%s]: use a numeric address and port, e.g. "
			            "127.0.0.1:9771 or [::1]:9771, or off",
			            k->name, value, sect);
		}
		return set_string(p, field, value);
	}
	case KEY_LOG_LEVEL: {
		enum log_level level = log_level_from_string(value);
		if (level == LOG_LEVEL_INVALID) {
			return fail(p, p->ini.line, -EINVAL,
			            "bad %s '%s' in [%s]: use error, warning, notice, info or "
			            "debug",
			            k->name, value, sect);
		}
		*(int *) field = (int) level;
		return 0;
	}
	case KEY_SECURITY:
		if (strcmp(value, "curve") == 0) {
			*(enum config_security *) field = CONFIG_SECURITY_CURVE;
		} else if (strcmp(value, "plain") == 0) {
			*(enum config_security *) field = CONFIG_SECURITY_PLAIN;
		} else {
			return fail(p, p->ini.line, -EINVAL,
			            "bad %s '%s' in [%s]: use curve or plain", k->name, value,
			            sect);
		}
		return 0;
	case KEY_SYNC:
		if (strcmp(value, "full") == 0) {
			*(enum config_sync *) field = CONFIG_SYNC_FULL;
		} else if (strcmp(value, "none") == 0) {
			*(enum config_sync *) field = CONFIG_SYNC_NONE;
		} else {
			return fail(p, p->ini.line, -EINVAL,
			            "bad %s '%s' in [%s]: use full or none", k->name, value, sect);
		}
		return 0;
	case KEY_U32:
		format_range(k, range, sizeof(range));
		r = parse_u64(value, &n);
		if (r == -EINVAL) {
			return fail(p, p->ini.line, r, "bad number '%s' for %s in [%s]: use %s",
			            value, k->name, sect, range);
		}
		break;
	case KEY_SIZE32:
	case KEY_SIZE64:
		format_range(k, range, sizeof(range));
		r = config_parse_size(value, &n);
		if (r == -EINVAL) {
			return fail(p, p->ini.line, r,
			            "bad size '%s' for %s in [%s]: use a number with an optional "
			            "K, M, G or T suffix (%s)",
			            value, k->name, sect, range);
		}
		break;
	default:
		return fail(p, p->ini.line, -EINVAL, "internal error: key %s", k->name);
	}

	/* A number that overflowed parsing is out of range too. */
	if (r == -ERANGE || n < k->min || n > k->max) {
		return fail(p, p->ini.line, -EINVAL, "%s = %s is out of range in [%s]: use %s",
		            k->name, value, sect, range);
	}
	if (k->type == KEY_SIZE64) {
		*(uint64_t *) field = n;
	} else {
		*(uint32_t *) field = (uint32_t) n;
	}
	return 0;
}

static int
handle_council_key(struct parser *p, const char *name, const char *value)
{
	struct config_council *council = &p->config->councils[p->config->n_councils - 1];
	struct council_state *state = &p->council_states[p->config->n_councils - 1];
	unsigned *seen;

	if (strcmp(name, "name") == 0) {
		seen = &state->name_line;
	} else if (strcmp(name, "country") == 0) {
		seen = &state->country_line;
	} else {
		return fail(p, p->ini.line, -EINVAL,
		            "unknown key '%s' in [council.%s]: use name or country", name,
		            council->id);
	}
	if (*seen != 0) {
		return fail(p, p->ini.line, -EINVAL,
		            "duplicate key '%s' in [council.%s] (first at line %u): keep one", name,
		            council->id, *seen);
	}
	if (*value == '\0') {
		return fail(p, p->ini.line, -EINVAL, "empty value for '%s' in [council.%s]", name,
		            council->id);
	}
	*seen = p->ini.line;

	if (seen == &state->country_line) {
		if (!iso_country_valid(value)) {
			return fail(p, p->ini.line, -EINVAL,
			            "bad country '%s' in [council.%s]: use an ISO 3166-1 alpha-2 "
			            "code in upper case, e.g. FR",
			            value, council->id);
		}
		memcpy(council->country, value, 3);
		return 0;
	}
	if (!utf8_text_valid(value)) {
		return fail(p, p->ini.line, -EINVAL,
		            "bad name in [council.%s]: use UTF-8 text without control characters",
		            council->id);
	}
	return set_string(p, &council->name, value);
}

static int
handle_key_line(struct parser *p, const char *name, const char *value)
{
	if (p->section == SECTION_NONE) {
		return fail(p, p->ini.line, -EINVAL,
		            "key '%s' is outside a section: put it under " SECTION_LIST
		            " or [council.<id>]",
		            name);
	}
	if (p->section == SECTION_COUNCIL) {
		return handle_council_key(p, name, value);
	}

	const char *sect = section_names[p->section];
	for (int i = 0; i < _KEY_MAX; i++) {
		if (keys[i].section != p->section || strcmp(keys[i].name, name) != 0) {
			continue;
		}
		if (p->key_line[i] != 0) {
			return fail(p, p->ini.line, -EINVAL,
			            "duplicate key '%s' in [%s] (first at line %u): keep one", name,
			            sect, p->key_line[i]);
		}
		if (*value == '\0') {
			return fail(p, p->ini.line, -EINVAL, "empty value for '%s' in [%s]", name,
			            sect);
		}
		p->key_line[i] = p->ini.line;
		return handle_fixed_key(p, (enum key_id) i, value);
	}
	return fail(p, p->ini.line, -EINVAL, "unknown key '%s' in [%s]", name, sect);
}

/*
 * inih's handler: one "key = value" line, in the section the reader last saw (inih's own
 * `section` says the same). Returns 0, which makes inih record an error, on failure.
 */
static int
handle_key(void *user, const char *section, const char *name, const char *value)
{
	struct parser *p = user;

	(void) section;
	if (p->r < 0) {
		return 0;
	}
	return handle_key_line(p, name, value) >= 0;
}

static int
council_compare(const void *a, const void *b)
{
	const struct config_council *x = a, *y = b;

	return strcmp(x->id, y->id);
}

/* The line to blame for a cross-key error: the later key that was set, else the section. */
static unsigned
blame_line(const struct parser *p, enum key_id a, enum key_id b)
{
	unsigned line = p->key_line[a] > p->key_line[b] ? p->key_line[a] : p->key_line[b];

	return line ? line : p->section_line[keys[a].section];
}

/* The three sockets need three endpoints: a shared one would fail to bind at start. */
static int
check_endpoints(struct parser *p)
{
	static const enum key_id ids[] = {KEY_INGEST_ENDPOINT, KEY_PUBLISH_ENDPOINT,
	                                  KEY_QUERY_ENDPOINT};
	const struct config *c = p->config;
	const char *values[] = {c->ingest.endpoint, c->publish.endpoint, c->query.endpoint};

	for (size_t i = 0; i < 3; i++) {
		for (size_t j = i + 1; j < 3; j++) {
			if (strcmp(values[i], values[j]) != 0) {
				continue;
			}
			const struct key *a = &keys[ids[i]], *b = &keys[ids[j]];
			return fail(p, blame_line(p, ids[i], ids[j]), -EINVAL,
			            "[%s] and [%s] both use endpoint '%s': give each socket its "
			            "own",
			            section_names[a->section], section_names[b->section],
			            values[i]);
		}
	}
	return 0;
}

bool
config_endpoint_is_local(const char *endpoint)
{
	unsigned char addr[16];
	char host[64];

	if (!endpoint) {
		return false;
	}
	if (strncmp(endpoint, "ipc://", 6) == 0 || strncmp(endpoint, "inproc://", 9) == 0) {
		return true;
	}
	if (strncmp(endpoint, "tcp://", 6) != 0) {
		return false;
	}
	const char *h = endpoint + 6;
	const char *colon = strrchr(h, ':');
	if (!colon || colon == h) {
		return false;
	}
	size_t n = (size_t) (colon - h);
	if (n >= sizeof(host)) {
		return false;
	}
	memcpy(host, h, n);
	host[n] = '\0';
	if (strcmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0) {
		return true;
	}
	/* Dotted IPv4 only: inet_pton refuses "127.1" and names such as "lo". */
	return inet_pton(AF_INET, host, addr) == 1 && addr[0] == 127;
}

const char *
config_security_to_string(enum config_security s)
{
	switch (s) {
	case CONFIG_SECURITY_PLAIN:
		return "plain";
	case CONFIG_SECURITY_CURVE:
		return "curve";
	default:
		return NULL;
	}
}

/*
 * [security] holds both keys or is absent; each socket's security defaults to curve when
 * it is present; curve needs it; plain needs a local endpoint (secure by default).
 */
static int
check_security(struct parser *p)
{
	struct config *c = p->config;
	bool have_keys = p->section_line[SECTION_SECURITY] != 0;

	if (have_keys && (!c->security.secret_key_file || !c->security.keys_file)) {
		return fail(p, p->section_line[SECTION_SECURITY], -EINVAL,
		            "missing key '%s' in [security]: set both secret_key_file and "
		            "keys_file, or remove [security] (then only loopback and ipc:// "
		            "endpoints are allowed)",
		            c->security.secret_key_file ? "keys_file" : "secret_key_file");
	}
	static const struct {
		enum key_id security, endpoint;
	} sockets[] = {
	        {KEY_INGEST_SECURITY, KEY_INGEST_ENDPOINT},
	        {KEY_PUBLISH_SECURITY, KEY_PUBLISH_ENDPOINT},
	        {KEY_QUERY_SECURITY, KEY_QUERY_ENDPOINT},
	};
	for (size_t i = 0; i < sizeof(sockets) / sizeof(sockets[0]); i++) {
		const struct key *ks = &keys[sockets[i].security];
		const struct key *ke = &keys[sockets[i].endpoint];
		enum config_security *sec = (void *) ((char *) c + ks->offset);
		const char *endpoint = *(char **) ((char *) c + ke->offset);
		const char *sect = section_names[ks->section];

		if (*sec == _CONFIG_SECURITY_INVALID) {
			*sec = have_keys ? CONFIG_SECURITY_CURVE : CONFIG_SECURITY_PLAIN;
		} else if (*sec == CONFIG_SECURITY_CURVE && !have_keys) {
			return fail(p, p->key_line[sockets[i].security], -EINVAL,
			            "security = curve in [%s] needs the server's keys: add "
			            "[security] with secret_key_file and keys_file",
			            sect);
		}
		if (*sec == CONFIG_SECURITY_PLAIN && !config_endpoint_is_local(endpoint)) {
			unsigned line = blame_line(p, sockets[i].security, sockets[i].endpoint);
			return fail(
			        p, line, -EINVAL,
			        "[%s] endpoint '%s' is not loopback or ipc:// and the socket is "
			        "plain (unauthenticated): configure [security] secret_key_file "
			        "and keys_file (security = curve), or bind 127.0.0.1, [::1], "
			        "localhost or ipc://",
			        sect, endpoint);
		}
	}
	return 0;
}

/* Checks that need the whole file. */
static int
finish(struct parser *p)
{
	struct config *c = p->config;
	char a[32], b[32];
	int r;

	if (p->section_line[SECTION_COORDD] == 0) {
		return fail(p, 0, -EINVAL,
		            "missing section [coordd]: add it with state_dir = <dir>");
	}
	if (!c->state_dir) {
		return fail(p, p->section_line[SECTION_COORDD], -EINVAL,
		            "missing key 'state_dir' in [coordd]: set the store's directory");
	}
	if (c->ingest.max_pending < c->ingest.max_batch) {
		return fail(p, blame_line(p, KEY_MAX_PENDING, KEY_MAX_BATCH), -EINVAL,
		            "max_pending (%" PRIu32 ") is below max_batch (%" PRIu32
		            ") in [ingest]: raise max_pending",
		            c->ingest.max_pending, c->ingest.max_batch);
	}
	/* rate_burst defaults to twice rate_limit, whatever rate_limit was set to. */
	if (p->key_line[KEY_RATE_BURST] == 0) {
		c->ingest.rate_burst = (uint32_t) ((uint64_t) c->ingest.rate_limit * 2);
	}
	if (c->query.history_limit_max < c->query.history_limit) {
		return fail(p, blame_line(p, KEY_HISTORY_LIMIT_MAX, KEY_HISTORY_LIMIT), -EINVAL,
		            "history_limit_max (%" PRIu32 ") is below history_limit (%" PRIu32
		            ") in [query]: raise history_limit_max",
		            c->query.history_limit_max, c->query.history_limit);
	}
	r = check_endpoints(p);
	if (r < 0) {
		return r;
	}
	r = check_security(p);
	if (r < 0) {
		return r;
	}
	if (c->store.map_size_max < c->store.map_size) {
		format_size(c->store.map_size_max, a, sizeof(a));
		format_size(c->store.map_size, b, sizeof(b));
		return fail(p, blame_line(p, KEY_MAP_SIZE_MAX, KEY_MAP_SIZE), -EINVAL,
		            "map_size_max (%s) is below map_size (%s) in [store]: raise "
		            "map_size_max",
		            a, b);
	}
	for (size_t i = 0; i < c->n_councils; i++) {
		const char *missing = !c->councils[i].name                ? "name"
		                      : c->councils[i].country[0] == '\0' ? "country"
		                                                          : NULL;
		if (missing) {
			return fail(p, p->council_states[i].line, -EINVAL,
			            "missing key '%s' in [council.%s]", missing, c->councils[i].id);
		}
	}
	if (c->n_councils > 1) {
		qsort(c->councils, c->n_councils, sizeof(c->councils[0]), council_compare);
	}
	return 0;
}

static int
parse(struct parser *p, const char *name, struct config **ret_config,
      struct config_error *ret_error)
{
	struct config *c = calloc(1, sizeof(*c));
	int r;

	if (!c) {
		r = fail_oom(p);
		goto out;
	}
	*c = (struct config){
	        .refs = 1,
	        .log_level = LOG_LEVEL_INFO,
	        .ingest =
	                {
	                        .max_message_bytes = 64 * KIB,
	                        .max_batch = 1024,
	                        .max_pending = 8192,
	                        .hwm = 10000,
	                        .security = _CONFIG_SECURITY_INVALID,
	                        .max_connections = 2048,
	                        .max_inflight_per_council = 1024,
	                        .rate_limit = 100000,
	                },
	        .publish =
	                {
	                        .hwm = 1000,
	                        .security = _CONFIG_SECURITY_INVALID,
	                        .max_connections = 1024,
	                        .max_subscription_bytes = KIB,
	                        .fanout_budget = CONFIG_FANOUT_BUDGET_DEFAULT,
	                },
	        .query =
	                {
	                        .history_limit = 1000,
	                        .history_limit_max = 10000,
	                        .history_bytes_max = 4 * MIB,
	                        .hwm = 32,
	                        .security = _CONFIG_SECURITY_INVALID,
	                        .max_connections = 256,
	                        .subscriber_history_window = 100000,
	                        .max_request_bytes = 64 * KIB,
	                },
	        .digest =
	                {
	                        .publish_interval_ms = 1000,
	                        .headlines = 5,
	                },
	        .store =
	                {
	                        .map_size = 64 * MIB,
	                        .map_size_max = 16 * GIB,
	                        .sync = CONFIG_SYNC_FULL,
	                        .min_free_bytes = 256 * MIB,
	                },
	};
	p->config = c;
	c->path = strdup(name);
	c->ingest.endpoint = strdup("tcp://127.0.0.1:7701");
	c->publish.endpoint = strdup("tcp://127.0.0.1:7702");
	c->query.endpoint = strdup("tcp://127.0.0.1:7703");
	c->metrics.listen = strdup("127.0.0.1:9771");
	if (!c->path || !c->ingest.endpoint || !c->publish.endpoint || !c->query.endpoint ||
	    !c->metrics.listen) {
		r = fail_oom(p);
		goto out;
	}

	static const struct inifile_ops ops = {
	        .line_max = CONFIG_LINE_MAX,
	        .nul_message = "NUL byte in line: this is not a text file",
	        .syntax_message = "expected 'key = value' or '[section]'",
	        .on_section = section_line,
	        .on_key = handle_key,
	        .on_error = reader_error,
	};
	r = inifile_parse(&p->ini, &ops, p, &p->r, &p->error.line);
	if (r == 0) {
		r = finish(p);
	}

out:
	free(p->council_states);
	if (r < 0) {
		(void) config_unref(c);
		if (ret_error) {
			*ret_error = p->error;
		}
		return r;
	}
	*ret_config = c;
	return 0;
}

int
config_load(const char *path, struct config **ret_config, struct config_error *ret_error)
{
	struct parser p = {.r = 0};

	p.ini.file = fopen(path, "re");
	if (!p.ini.file) {
		int r = -errno;
		(void) fail(&p, 0, r, "cannot open '%s': %s", path, strerror(-r));
		if (ret_error) {
			*ret_error = p.error;
		}
		return r;
	}
	int r = parse(&p, path, ret_config, ret_error);
	(void) fclose(p.ini.file);
	return r;
}

int
config_parse_string(const char *text, const char *name, struct config **ret_config,
                    struct config_error *ret_error)
{
	struct parser p = {.ini.text = text};

	return parse(&p, name ? name : "<string>", ret_config, ret_error);
}

struct config *
config_ref(struct config *c)
{
	if (c) {
		/* Atomic so that a snapshot may be dropped on the store's writer thread. */
		(void) __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
	}
	return c;
}

struct config *
config_unref(struct config *c)
{
	if (!c || __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) > 0) {
		return NULL;
	}
	for (size_t i = 0; i < c->n_councils; i++) {
		free(c->councils[i].name);
	}
	free(c->councils);
	free(c->ingest.endpoint);
	free(c->publish.endpoint);
	free(c->query.endpoint);
	free(c->metrics.listen);
	free(c->security.secret_key_file);
	free(c->security.keys_file);
	free(c->state_dir);
	free(c->path);
	free(c);
	return NULL;
}

const struct config_council *
config_find_council(const struct config *c, const char *id)
{
	if (!c || !id || c->n_councils == 0) {
		return NULL;
	}
	struct config_council key = {.name = NULL};
	size_t n = strlen(id);
	if (n > CONFIG_COUNCIL_ID_MAX) {
		return NULL;
	}
	memcpy(key.id, id, n + 1);
	return bsearch(&key, c->councils, c->n_councils, sizeof(c->councils[0]), council_compare);
}

int
config_parse_listen(const char *s, char ret_host[64], uint16_t *ret_port)
{
	const char *colon;
	const char *host = s;
	size_t host_len;
	unsigned char addr[16];

	if (s[0] == '[') {
		const char *close = strchr(s, ']');
		if (!close || close[1] != ':') {
			return -EINVAL;
		}
		host = s + 1;
		host_len = (size_t) (close - host);
		colon = close + 1;
	} else {
		colon = strrchr(s, ':');
		if (!colon) {
			return -EINVAL;
		}
		host_len = (size_t) (colon - s);
	}
	if (host_len == 0 || host_len >= 64) {
		return -EINVAL;
	}
	char *end;
	errno = 0;
	unsigned long port = strtoul(colon + 1, &end, 10);
	if (errno || end == colon + 1 || *end || port > 65535 || colon[1] == '-' ||
	    colon[1] == '+' || colon[1] == ' ') {
		return -EINVAL;
	}
	char h[64];
	memcpy(h, host, host_len);
	h[host_len] = 0;
	if (inet_pton(AF_INET, h, addr) != 1 && inet_pton(AF_INET6, h, addr) != 1) {
		return -EINVAL;
	}
	memcpy(ret_host, h, host_len + 1);
	*ret_port = (uint16_t) port;
	return 0;
}

static bool
nullable_streq(const char *a, const char *b)
{
	return a == b || (a && b && strcmp(a, b) == 0);
}

int
config_keep_restart_keys(struct config *fresh, const struct config *old, config_restart_fn *cb,
                         void *data)
{
	int kept = 0;

	for (size_t i = 0; i < sizeof(restart_keys) / sizeof(restart_keys[0]); i++) {
		const struct key *k = &keys[restart_keys[i]];
		void *to = (char *) fresh + k->offset;
		const void *from = (const char *) old + k->offset;
		bool same;

		switch (k->type) {
		case KEY_STRING:
		case KEY_ENDPOINT:
		case KEY_LISTEN:
			same = nullable_streq(*(char *const *) to, *(char *const *) from);
			break;
		case KEY_SIZE64:
			same = *(const uint64_t *) to == *(const uint64_t *) from;
			break;
		case KEY_SYNC:
			same = *(const enum config_sync *) to == *(const enum config_sync *) from;
			break;
		case KEY_SECURITY:
			same = *(const enum config_security *) to ==
			       *(const enum config_security *) from;
			break;
		default:
			same = *(const uint32_t *) to == *(const uint32_t *) from;
			break;
		}
		if (same) {
			continue;
		}
		switch (k->type) {
		case KEY_STRING:
		case KEY_ENDPOINT:
		case KEY_LISTEN: {
			const char *value = *(char *const *) from;
			char *copy = value ? strdup(value) : NULL;
			if (value && !copy) {
				return -ENOMEM;
			}
			free(*(char **) to);
			*(char **) to = copy;
			break;
		}
		case KEY_SIZE64:
			*(uint64_t *) to = *(const uint64_t *) from;
			break;
		case KEY_SYNC:
			*(enum config_sync *) to = *(const enum config_sync *) from;
			break;
		case KEY_SECURITY:
			*(enum config_security *) to = *(const enum config_security *) from;
			break;
		default:
			*(uint32_t *) to = *(const uint32_t *) from;
			break;
		}
		kept++;
		if (cb) {
			cb(data, section_names[k->section], k->name);
		}
	}
	return kept;
}

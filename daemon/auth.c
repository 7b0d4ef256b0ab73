/*
 * auth: CURVE key files, the allowlist (keys file -> immutable struct auth_keys) and the ZAP
 * handler.
 *
 * Allowlist. The keys file is tokenised by inih, fed through our own line reader
 * (inifile.c) as in config.c, because inih as packaged gives the handler no line number and
 * silently splits long lines. The reader counts lines, rejects over-long lines and NUL
 * bytes, drops leading whitespace (no continuation lines), cuts inline '#' comments (a '#'
 * after a space or tab: safe, since Z85 has no space and a Z85 key never starts with '#')
 * and handles "[role.id]" lines itself, creating the entry. Cross-entry checks (missing
 * public_key, a section or a key seen twice) run in finish() over two sorted views: entries
 * sorted by binary key (for lookups during handshakes and per message) and pointers sorted
 * by role and id (for auth_keys_find and listing). The earliest line wins among those
 * errors, as it would in a line-by-line check.
 *
 * ZAP handler. A REP socket answers one request per multipart message. Every frame is
 * bounded (AUTH_ZAP_FRAME_MAX bytes, AUTH_ZAP_FRAMES_MAX frames kept; the rest are drained
 * and make the request malformed): only code in this process can reach the inproc
 * endpoint, but a bad request must still get "500", not a crash. The decision is a pure
 * function of the request, the current allowlist and the plain domains (decide()).
 *
 * The allowlist is swapped only on the loop thread, which is also where handshakes are
 * answered and messages checked, so no lock is needed; keys are refcounted (atomically) so
 * that other holders keep an old snapshot alive.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ini.h>
#include <zmq.h>

#include "auth.h"
#include "config.h"
#include "inifile.h"
#include "zuv.h"

#define container_of(ptr, type, member) ((type *) ((char *) (ptr) -offsetof(type, member)))

_Static_assert(AUTH_ID_MAX == CONFIG_COUNCIL_ID_MAX, "a council's key id is its council id");
_Static_assert(AUTH_LINE_MAX <= INI_MAX_LINE, "inih must hold every line we accept");

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
/* ZMQ_ZAP_ENFORCE_DOMAIN: compiled into every libzmq 4.3, but its macro is draft-only. */
#define AUTH_ZMQ_ZAP_ENFORCE_DOMAIN 93
/* Requests answered per callback before other handles get a turn. */
#define AUTH_ZAP_BUDGET 64
/* Frames of a request that are looked at; a request with more is malformed. */
#define AUTH_ZAP_FRAMES_MAX 8
/* The largest frame of a request (libzmq: domain <= 255 bytes, routing id <= 255 bytes). */
#define AUTH_ZAP_FRAME_MAX 255
/* Random bytes behind AUTH_PROPERTY_TOKEN (sent as twice as many hex digits). */
#define AUTH_TOKEN_BYTES 16

/* ---- Roles, ids and User-Ids ---- */

static const char *const role_names[_AUTH_ROLE_MAX] = {
        [AUTH_ROLE_COUNCIL] = "council",
        [AUTH_ROLE_SUBSCRIBER] = "subscriber",
        [AUTH_ROLE_ADMIN] = "admin",
};

const char *
auth_role_to_string(enum auth_role role)
{
	if (role < 0 || role >= _AUTH_ROLE_MAX) {
		return NULL;
	}
	return role_names[role];
}

enum auth_role
auth_role_from_string(const char *s)
{
	if (!s) {
		return _AUTH_ROLE_INVALID;
	}
	for (int i = 0; i < _AUTH_ROLE_MAX; i++) {
		if (strcmp(s, role_names[i]) == 0) {
			return (enum auth_role) i;
		}
	}
	return _AUTH_ROLE_INVALID;
}

bool
auth_role_allows(enum auth_role have, enum auth_role need)
{
	if (have < 0 || have >= _AUTH_ROLE_MAX || need < 0 || need >= _AUTH_ROLE_MAX) {
		return false;
	}
	return have == need || (have == AUTH_ROLE_ADMIN && need == AUTH_ROLE_SUBSCRIBER);
}

bool
auth_id_valid(const char *id)
{
	return idrule_id_valid(id);
}

int
auth_user_id_format(enum auth_role role, const char *id, char ret_user_id[AUTH_USER_ID_MAX + 1])
{
	const char *name = auth_role_to_string(role);

	if (!name || !auth_id_valid(id)) {
		return -EINVAL;
	}
	(void) snprintf(ret_user_id, AUTH_USER_ID_MAX + 1, "%s:%s", name, id);
	return 0;
}

int
auth_user_id_parse(const char *user_id, enum auth_role *ret_role, char ret_id[AUTH_ID_MAX + 1])
{
	if (!user_id) {
		return -EINVAL;
	}
	/* Bounded: a longer string cannot be a User-Id, and we never scan far into it. */
	size_t len = strnlen(user_id, AUTH_USER_ID_MAX + 1);
	const char *colon = memchr(user_id, ':', len);
	if (len > AUTH_USER_ID_MAX || !colon) {
		return -EINVAL;
	}
	char role_name[sizeof("subscriber")];
	size_t role_len = (size_t) (colon - user_id);
	if (role_len >= sizeof(role_name)) {
		return -EINVAL;
	}
	memcpy(role_name, user_id, role_len);
	role_name[role_len] = '\0';
	enum auth_role role = auth_role_from_string(role_name);
	const char *id = colon + 1;
	size_t id_len = len - role_len - 1;
	if (role == _AUTH_ROLE_INVALID || !idrule_id_valid_n(id, id_len)) {
		return -EINVAL;
	}
	*ret_role = role;
	memcpy(ret_id, id, id_len);
	ret_id[id_len] = '\0';
	return 0;
}

/* ---- The allowlist ---- */

/* (The key files, auth_key_decode() to auth_read_public_key(), are in authkey.c.) */

static bool
is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

struct auth_keys {
	unsigned refs;
	char *path;
	struct auth_entry *entries;      /* sorted by key */
	const struct auth_entry **by_id; /* the same entries sorted by role, then id */
	size_t n;
};

struct parser {
	struct auth_keys *keys;
	struct auth_error error;
	int r; /* first failure, 0 while none */

	struct inifile ini; /* input and line reader */

	bool in_section;  /* the last entry is the current section */
	size_t allocated; /* entries */
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

static int
add_entry(struct parser *p, enum auth_role role, const char *id)
{
	struct auth_keys *k = p->keys;

	if (k->n == AUTH_KEYS_MAX) {
		return fail(p, p->ini.line, -EINVAL, "more than %d sections: split the allowlist",
		            AUTH_KEYS_MAX);
	}
	if (k->n == p->allocated) {
		size_t n = p->allocated ? p->allocated * 2 : 16;
		struct auth_entry *entries = reallocarray(k->entries, n, sizeof(*entries));
		if (!entries) {
			return fail_oom(p);
		}
		k->entries = entries;
		p->allocated = n;
	}
	struct auth_entry *e = &k->entries[k->n];
	*e = (struct auth_entry){.role = role, .line = p->ini.line};
	memcpy(e->id, id, strlen(id) + 1);
	k->n++;
	p->in_section = true;
	return 0;
}

/*
 * A "[role.id]" line, already left-trimmed and with inline comments cut. Creates the entry
 * or records an error. inih gets the line as well and keeps its own copy, which we ignore.
 */
static int
handle_section_line(struct parser *p, char *line)
{
	char *end = strchr(line, ']');

	p->in_section = false;
	if (!end) {
		return fail(p, p->ini.line, -EINVAL, "missing ']' in section header");
	}
	const char *rest = end + 1;
	while (is_blank(*rest)) {
		rest++;
	}
	if (*rest != '\0' && *rest != ';') {
		return fail(p, p->ini.line, -EINVAL,
		            "unexpected text after ']': put it on its own line");
	}

	/* The name is shorter than AUTH_LINE_MAX, so it always fits the message. */
	*end = '\0';
	const char *name = line + 1;
	const char *dot = strchr(name, '.');
	enum auth_role role = _AUTH_ROLE_INVALID;
	if (dot) {
		char role_name[sizeof("subscriber")];
		size_t n = (size_t) (dot - name);
		if (n < sizeof(role_name)) {
			memcpy(role_name, name, n);
			role_name[n] = '\0';
			role = auth_role_from_string(role_name);
		}
	}
	int r;
	if (role == _AUTH_ROLE_INVALID) {
		r = fail(p, p->ini.line, -EINVAL,
		         "unknown section [%s]: use [council.<id>], [subscriber.<name>] or "
		         "[admin.<name>]",
		         name);
	} else if (!auth_id_valid(dot + 1)) {
		r = fail(p, p->ini.line, -EINVAL,
		         "bad id '%s' in [%s]: use 1 to %d of a-z, 0-9, '_', '-', starting "
		         "with a letter or digit",
		         dot + 1, name, AUTH_ID_MAX);
	} else {
		r = add_entry(p, role, dot + 1);
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

static int
handle_key_line(struct parser *p, const char *name, const char *value)
{
	if (!p->in_section) {
		return fail(p, p->ini.line, -EINVAL,
		            "key '%s' is outside a section: put it under [council.<id>], "
		            "[subscriber.<name>] or [admin.<name>]",
		            name);
	}
	struct auth_entry *e = &p->keys->entries[p->keys->n - 1];
	const char *role = role_names[e->role];
	if (strcmp(name, "public_key") != 0) {
		return fail(p, p->ini.line, -EINVAL, "unknown key '%s' in [%s.%s]: use public_key",
		            name, role, e->id);
	}
	if (e->key_line != 0) {
		return fail(p, p->ini.line, -EINVAL,
		            "duplicate public_key in [%s.%s] (first at line %u): one key per "
		            "section",
		            role, e->id, e->key_line);
	}
	if (*value == '\0') {
		return fail(p, p->ini.line, -EINVAL, "empty public_key in [%s.%s]", role, e->id);
	}
	if (auth_key_decode(value, e->key) < 0) {
		return fail(p, p->ini.line, -EINVAL,
		            "bad public_key in [%s.%s]: use the 40-character Z85 key of the "
		            "peer's .public file",
		            role, e->id);
	}
	memcpy(e->key_z85, value, AUTH_KEY_Z85_LEN + 1);
	e->key_line = p->ini.line;
	return 0;
}

/* inih's handler. Returns 0, which makes inih record an error, on failure. */
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
compare_key(const void *a, const void *b)
{
	const struct auth_entry *x = a, *y = b;

	return memcmp(x->key, y->key, AUTH_KEY_BYTES);
}

static int
compare_role_id(enum auth_role role_a, const char *id_a, enum auth_role role_b, const char *id_b)
{
	if (role_a != role_b) {
		return role_a < role_b ? -1 : 1;
	}
	return strcmp(id_a, id_b);
}

static int
compare_by_id(const void *a, const void *b)
{
	const struct auth_entry *const *x = a, *const *y = b;

	return compare_role_id((*x)->role, (*x)->id, (*y)->role, (*y)->id);
}

/* A cross-entry error; finish() reports the one on the earliest line. */
struct candidate {
	unsigned line;
	char message[256];
};

static void consider(struct candidate *c, unsigned line, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

static void
consider(struct candidate *c, unsigned line, const char *fmt, ...)
{
	if (c->line != 0 && c->line <= line) {
		return;
	}
	c->line = line;
	va_list ap;
	va_start(ap, fmt);
	(void) vsnprintf(c->message, sizeof(c->message), fmt, ap);
	va_end(ap);
}

/*
 * Checks that need the whole file, on the two sorted views it builds: a public_key missing
 * (blamed on its section line), a section seen twice (on the later header) and a key seen
 * twice (on the later public_key line).
 */
static int
finish(struct parser *p)
{
	struct auth_keys *k = p->keys;
	struct candidate c = {.line = 0};

	for (size_t i = 0; i < k->n; i++) {
		if (k->entries[i].key_line == 0) {
			consider(&c, k->entries[i].line, "missing public_key in [%s.%s]",
			         role_names[k->entries[i].role], k->entries[i].id);
		}
	}
	if (k->n == 0) {
		return 0;
	}
	k->by_id = calloc(k->n, sizeof(*k->by_id));
	if (!k->by_id) {
		return fail_oom(p);
	}

	qsort(k->entries, k->n, sizeof(*k->entries), compare_key);
	for (size_t i = 1; i < k->n; i++) {
		const struct auth_entry *a = &k->entries[i - 1], *b = &k->entries[i];
		if (a->key_line != 0 && b->key_line != 0 && compare_key(a, b) == 0) {
			const struct auth_entry *first = a->key_line < b->key_line ? a : b;
			const struct auth_entry *later = first == a ? b : a;
			consider(&c, later->key_line,
			         "public_key of [%s.%s] is already the key of [%s.%s] (line %u): "
			         "each key may appear once",
			         role_names[later->role], later->id, role_names[first->role],
			         first->id, first->key_line);
		}
	}

	for (size_t i = 0; i < k->n; i++) {
		k->by_id[i] = &k->entries[i];
	}
	qsort(k->by_id, k->n, sizeof(*k->by_id), compare_by_id);
	for (size_t i = 1; i < k->n; i++) {
		const struct auth_entry *a = k->by_id[i - 1], *b = k->by_id[i];
		if (compare_by_id(&a, &b) == 0) {
			const struct auth_entry *first = a->line < b->line ? a : b;
			const struct auth_entry *later = first == a ? b : a;
			consider(&c, later->line,
			         "duplicate section [%s.%s] (first at line %u): keep one",
			         role_names[later->role], later->id, first->line);
		}
	}
	if (c.line != 0) {
		return fail(p, c.line, -EINVAL, "%s", c.message);
	}
	return 0;
}

static int
parse(struct parser *p, const char *name, struct auth_keys **ret_keys, struct auth_error *ret_error)
{
	struct auth_keys *k = calloc(1, sizeof(*k));
	int r;

	if (!k) {
		r = fail_oom(p);
		goto out;
	}
	k->refs = 1;
	p->keys = k;
	k->path = strdup(name);
	if (!k->path) {
		r = fail_oom(p);
		goto out;
	}

	static const struct inifile_ops ops = {
	        .line_max = AUTH_LINE_MAX,
	        .nul_message = "NUL byte: the keys file must be text",
	        .syntax_message = "expected 'public_key = <key>' or '[role.id]'",
	        .on_section = section_line,
	        .on_key = handle_key,
	        .on_error = reader_error,
	};
	r = inifile_parse(&p->ini, &ops, p, &p->r, &p->error.line);
	if (r == 0) {
		r = finish(p);
	}

out:
	if (r < 0) {
		(void) auth_keys_unref(k);
		if (ret_error) {
			*ret_error = p->error;
		}
		return r;
	}
	*ret_keys = k;
	return 0;
}

int
auth_keys_load(const char *path, struct auth_keys **ret_keys, struct auth_error *ret_error)
{
	struct parser p = {.r = 0};

	p.ini.file = fopen(path, "re");
	if (!p.ini.file) {
		int r = -errno;
		auth_error_set(ret_error, 0, "cannot open keys file '%s': %s", path, strerror(-r));
		return r;
	}
	int r = parse(&p, path, ret_keys, ret_error);
	(void) fclose(p.ini.file);
	return r;
}

int
auth_keys_parse_string(const char *text, const char *name, struct auth_keys **ret_keys,
                       struct auth_error *ret_error)
{
	struct parser p = {.ini.text = text};

	return parse(&p, name ? name : "<string>", ret_keys, ret_error);
}

struct auth_keys *
auth_keys_ref(struct auth_keys *keys)
{
	if (keys) {
		(void) __atomic_add_fetch(&keys->refs, 1, __ATOMIC_RELAXED);
	}
	return keys;
}

struct auth_keys *
auth_keys_unref(struct auth_keys *keys)
{
	if (!keys || __atomic_sub_fetch(&keys->refs, 1, __ATOMIC_ACQ_REL) > 0) {
		return NULL;
	}
	free(keys->by_id);
	free(keys->entries);
	free(keys->path);
	free(keys);
	return NULL;
}

const char *
auth_keys_path(const struct auth_keys *keys)
{
	return keys->path;
}

size_t
auth_keys_count(const struct auth_keys *keys)
{
	return keys ? keys->n : 0;
}

const struct auth_entry *
auth_keys_get(const struct auth_keys *keys, size_t i)
{
	if (!keys || i >= keys->n) {
		return NULL;
	}
	return keys->by_id[i];
}

const struct auth_entry *
auth_keys_lookup(const struct auth_keys *keys, const uint8_t key[AUTH_KEY_BYTES])
{
	if (!keys || !key || keys->n == 0) {
		return NULL;
	}
	struct auth_entry probe = {.line = 0};
	memcpy(probe.key, key, AUTH_KEY_BYTES);
	return bsearch(&probe, keys->entries, keys->n, sizeof(*keys->entries), compare_key);
}

const struct auth_entry *
auth_keys_find(const struct auth_keys *keys, enum auth_role role, const char *id)
{
	if (!keys || keys->n == 0 || !auth_role_to_string(role) || !auth_id_valid(id)) {
		return NULL;
	}
	size_t lo = 0, hi = keys->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct auth_entry *e = keys->by_id[mid];
		int c = compare_role_id(e->role, e->id, role, id);
		if (c == 0) {
			return e;
		}
		if (c < 0) {
			lo = mid + 1;
		} else {
			hi = mid;
		}
	}
	return NULL;
}

/* ---- Sockets ---- */

int
auth_server_setup(void *zsock, const char *domain, const char *secret_z85)
{
	int one = 1;

	if (!domain || *domain == '\0' || strlen(domain) > AUTH_ZAP_FRAME_MAX) {
		return -EINVAL;
	}
	if (secret_z85 && strnlen(secret_z85, AUTH_KEY_Z85_LEN + 1) != AUTH_KEY_Z85_LEN) {
		return -EINVAL;
	}
	if (zmq_setsockopt(zsock, ZMQ_ZAP_DOMAIN, domain, strlen(domain)) < 0 ||
	    zmq_setsockopt(zsock, AUTH_ZMQ_ZAP_ENFORCE_DOMAIN, &one, sizeof(one)) < 0) {
		return -zmq_errno();
	}
	if (secret_z85 &&
	    (zmq_setsockopt(zsock, ZMQ_CURVE_SERVER, &one, sizeof(one)) < 0 ||
	     zmq_setsockopt(zsock, ZMQ_CURVE_SECRETKEY, secret_z85, AUTH_KEY_Z85_LEN) < 0)) {
		return -zmq_errno();
	}
	return 0;
}

/* ---- The ZAP handler ---- */

struct auth {
	uv_loop_t *loop;
	void *sock;
	struct zuv zuv;
	bool started; /* zuv handles exist */
	bool closed;  /* and are closed */
	struct auth_keys *keys;
	char token[2 * AUTH_TOKEN_BYTES + 1]; /* AUTH_PROPERTY_TOKEN of accepted peers */
	char *plain_domains[AUTH_PLAIN_DOMAINS_MAX];
	size_t n_plain;
	struct {
		char *domain;
		uint32_t max;
		auth_count_fn *count;
		void *data;
		uint64_t refused;
	} limits[AUTH_LIMITS_MAX];
	size_t n_limits;
	char server_key[AUTH_KEY_Z85_LEN + 1]; /* "" until auth_set_server_key() */
	struct auth_counters counters;
	auth_event_fn *event_cb;
	void *event_data;
	void (*close_cb)(void *data);
	void *close_data;
};

/* Which roles may use which domain. */
static const struct {
	const char *domain;
	unsigned roles; /* bit per enum auth_role */
} domain_roles[] = {
        {AUTH_DOMAIN_INGEST, 1U << AUTH_ROLE_COUNCIL},
        {AUTH_DOMAIN_PUBLISH, (1U << AUTH_ROLE_SUBSCRIBER) | (1U << AUTH_ROLE_ADMIN)},
        {AUTH_DOMAIN_QUERY, (1U << AUTH_ROLE_SUBSCRIBER) | (1U << AUTH_ROLE_ADMIN)},
};

/* Request frames after REP has removed the envelope (RFC 27). */
enum {
	ZAP_VERSION,
	ZAP_REQUEST_ID,
	ZAP_DOMAIN,
	ZAP_ADDRESS,
	ZAP_IDENTITY,
	ZAP_MECHANISM,
	ZAP_CREDENTIALS, /* the first one */
};

struct request {
	zmq_msg_t frames[AUTH_ZAP_FRAMES_MAX];
	unsigned n;    /* frames kept */
	unsigned more; /* frames past AUTH_ZAP_FRAMES_MAX, drained */
};

struct verdict {
	const char *status; /* "200", "400", "500" */
	const char *reason;
	char user_id[AUTH_USER_ID_MAX + 1];
	char key_z85[AUTH_KEY_Z85_LEN + 1];
};

/*
 * Receive one request. Returns 1 with a request (its frames to be closed by the caller),
 * 0 when none is waiting, or a negative errno.
 */
static int
read_request(void *sock, struct request *rq)
{
	rq->n = rq->more = 0;
	for (;;) {
		zmq_msg_t spill;
		zmq_msg_t *m = rq->n < AUTH_ZAP_FRAMES_MAX ? &rq->frames[rq->n] : &spill;
		(void) zmq_msg_init(m);
		if (zmq_msg_recv(m, sock, ZMQ_DONTWAIT) < 0) {
			int r = -zmq_errno();
			(void) zmq_msg_close(m);
			/*
			 * libzmq delivers multipart messages whole, so only the first frame can
			 * be missing; a failure later leaves a truncated request to answer.
			 */
			return rq->n + rq->more == 0 ? (r == -EAGAIN ? 0 : r) : 1;
		}
		bool more = zmq_msg_more(m);
		if (m == &spill) {
			(void) zmq_msg_close(m);
			rq->more++;
		} else {
			rq->n++;
		}
		if (!more) {
			return 1;
		}
	}
}

static bool
frame_is(zmq_msg_t *m, const char *s)
{
	size_t n = strlen(s);

	return zmq_msg_size(m) == n && memcmp(zmq_msg_data(m), s, n) == 0;
}

static bool
plain_allowed(const struct auth *a, zmq_msg_t *domain)
{
	for (size_t i = 0; i < a->n_plain; i++) {
		if (frame_is(domain, a->plain_domains[i])) {
			return true;
		}
	}
	return false;
}

static void
decide(const struct auth *a, struct request *rq, struct verdict *v)
{
	*v = (struct verdict){.status = "500", .reason = "malformed ZAP request"};

	/* Every frame is bounded before anything is read from it. */
	if (rq->more > 0 || rq->n <= ZAP_MECHANISM) {
		return;
	}
	for (unsigned i = 0; i < rq->n; i++) {
		if (zmq_msg_size(&rq->frames[i]) > AUTH_ZAP_FRAME_MAX) {
			return;
		}
	}
	if (!frame_is(&rq->frames[ZAP_VERSION], "1.0")) {
		v->reason = "unsupported ZAP version";
		return;
	}

	zmq_msg_t *domain = &rq->frames[ZAP_DOMAIN];
	zmq_msg_t *mechanism = &rq->frames[ZAP_MECHANISM];
	unsigned n_credentials = rq->n - ZAP_CREDENTIALS;
	if (frame_is(mechanism, "NULL")) {
		if (n_credentials != 0) {
			v->reason = "NULL request with credentials";
			return;
		}
		v->status = "400";
		v->reason = "plain connections are not allowed on this domain";
		if (zmq_msg_size(domain) > 0 && plain_allowed(a, domain)) {
			v->status = "200";
			v->reason = "OK (plain)";
		}
		return;
	}
	if (!frame_is(mechanism, "CURVE")) {
		v->status = "400";
		v->reason = "mechanism not supported: use CURVE";
		return;
	}
	if (n_credentials != 1 || zmq_msg_size(&rq->frames[ZAP_CREDENTIALS]) != AUTH_KEY_BYTES) {
		v->reason = "CURVE request without a 32-byte key";
		return;
	}
	const uint8_t *key = zmq_msg_data(&rq->frames[ZAP_CREDENTIALS]);
	(void) zmq_z85_encode(v->key_z85, key, AUTH_KEY_BYTES);

	v->status = "400";
	unsigned roles = 0;
	bool known = false;
	for (size_t i = 0; i < sizeof(domain_roles) / sizeof(domain_roles[0]); i++) {
		if (frame_is(domain, domain_roles[i].domain)) {
			roles = domain_roles[i].roles;
			known = true;
		}
	}
	if (!known) {
		v->reason = zmq_msg_size(domain) == 0 ? "socket has no ZAP domain"
		                                      : "unknown ZAP domain";
		return;
	}
	const struct auth_entry *e = auth_keys_lookup(a->keys, key);
	if (!e) {
		v->reason = "key not allowlisted";
		return;
	}
	if ((roles & (1U << e->role)) == 0) {
		v->reason = "role not allowed on this domain";
		return;
	}
	(void) auth_user_id_format(e->role, e->id, v->user_id);
	v->status = "200";
	v->reason = "OK";
}

/* A printable, NUL-terminated copy of a frame for struct auth_event. */
static void
printable(char *buf, size_t size, struct request *rq, unsigned i)
{
	size_t n = 0;

	if (i < rq->n) {
		const unsigned char *d = zmq_msg_data(&rq->frames[i]);
		size_t len = zmq_msg_size(&rq->frames[i]);
		for (; n < len && n + 1 < size; n++) {
			buf[n] = d[n] >= 0x20 && d[n] < 0x7F ? (char) d[n] : '?';
		}
	}
	buf[n] = '\0';
}

static void
report(struct auth *a, struct request *rq, const struct verdict *v)
{
	char domain[AUTH_ZAP_FRAME_MAX + 1], address[AUTH_ZAP_FRAME_MAX + 1], mechanism[32];

	if (!a->event_cb) {
		return;
	}
	printable(domain, sizeof(domain), rq, ZAP_DOMAIN);
	printable(address, sizeof(address), rq, ZAP_ADDRESS);
	printable(mechanism, sizeof(mechanism), rq, ZAP_MECHANISM);
	struct auth_event ev = {
	        .status = atoi(v->status),
	        .reason = v->reason,
	        .domain = domain,
	        .address = address,
	        .mechanism = mechanism,
	        .key_z85 = v->key_z85,
	        .user_id = v->user_id,
	};
	a->event_cb(&ev, a->event_data);
}

static int
send_frame(void *sock, const void *data, size_t len, bool more)
{
	int flags = ZMQ_DONTWAIT | (more ? ZMQ_SNDMORE : 0);

	return zmq_send(sock, data, len, flags) < 0 ? -zmq_errno() : 0;
}

/* Append one ZMTP metadata property: name length (1 byte), name, value length (4 bytes, BE). */
static uint8_t *
put_property(uint8_t *m, const char *name, const char *value)
{
	size_t name_len = strlen(name), value_len = strlen(value);

	*m++ = (uint8_t) name_len;
	memcpy(m, name, name_len);
	m += name_len;
	*m++ = (uint8_t) (value_len >> 24);
	*m++ = (uint8_t) (value_len >> 16);
	*m++ = (uint8_t) (value_len >> 8);
	*m++ = (uint8_t) value_len;
	memcpy(m, value, value_len);
	return m + value_len;
}

/*
 * The reply (RFC 27): version, request id, status code, status text, user id, metadata.
 * An accepted CURVE peer's metadata carries its key, so each message says which key sent
 * it, and the token, so that properties forged by peers of unchecked sockets are told apart.
 */
static int
send_reply(const struct auth *a, void *sock, struct request *rq, const struct verdict *v)
{
	const void *request_id = "";
	size_t request_id_len = 0;
	uint8_t metadata[2 * (1 + 32 + 4 + 64)];
	size_t metadata_len = 0;

	_Static_assert(sizeof(AUTH_PROPERTY_KEY) <= 32 && sizeof(AUTH_PROPERTY_TOKEN) <= 32,
	               "property names fit the metadata buffer");
	if (rq->n > ZAP_REQUEST_ID &&
	    zmq_msg_size(&rq->frames[ZAP_REQUEST_ID]) <= AUTH_ZAP_FRAME_MAX) {
		request_id = zmq_msg_data(&rq->frames[ZAP_REQUEST_ID]);
		request_id_len = zmq_msg_size(&rq->frames[ZAP_REQUEST_ID]);
	}
	if (v->user_id[0] != '\0') {
		uint8_t *m = put_property(metadata, AUTH_PROPERTY_KEY, v->key_z85);
		m = put_property(m, AUTH_PROPERTY_TOKEN, a->token);
		metadata_len = (size_t) (m - metadata);
	}
	int r = send_frame(sock, "1.0", 3, true);
	if (r >= 0) {
		r = send_frame(sock, request_id, request_id_len, true);
	}
	if (r >= 0) {
		r = send_frame(sock, v->status, 3, true);
	}
	if (r >= 0) {
		r = send_frame(sock, v->reason, strlen(v->reason), true);
	}
	if (r >= 0) {
		r = send_frame(sock, v->user_id, strlen(v->user_id), true);
	}
	if (r >= 0) {
		r = send_frame(sock, metadata, metadata_len, false);
	}
	return r;
}

/* A handshake decide() accepted is refused when its socket is at its connection cap. */
static void
apply_limit(struct auth *a, struct request *rq, struct verdict *v)
{
	if (v->status[0] != '2') {
		return;
	}
	for (size_t i = 0; i < a->n_limits; i++) {
		if (!frame_is(&rq->frames[ZAP_DOMAIN], a->limits[i].domain)) {
			continue;
		}
		if (a->limits[i].count(a->limits[i].data) > a->limits[i].max) {
			a->limits[i].refused++;
			v->status = "400";
			v->reason = "connection limit reached";
			v->user_id[0] = '\0';
		}
		return;
	}
}

static void
on_readable(struct zuv *z, void *zsock, unsigned budget, void *data)
{
	struct auth *a = data;
	struct request rq;
	struct verdict v;

	for (unsigned i = 0; i < budget; i++) {
		if (read_request(zsock, &rq) <= 0) {
			break;
		}
		decide(a, &rq, &v);
		apply_limit(a, &rq, &v);
		if (v.status[0] == '2') {
			a->counters.accepted++;
		} else if (v.status[0] == '4') {
			a->counters.refused++;
		} else {
			a->counters.malformed++;
		}
		report(a, &rq, &v);
		/*
		 * The ZAP pipe has no HWM, so a send cannot block; if the peer's session has
		 * gone meanwhile, REP drops the reply. Nothing else can fail here but the
		 * context terminating, which closes us anyway.
		 */
		(void) send_reply(a, zsock, &rq, &v);
		for (unsigned f = 0; f < rq.n; f++) {
			(void) zmq_msg_close(&rq.frames[f]);
		}
	}
}

int
auth_new(uv_loop_t *loop, void *zctx, struct auth_keys *keys, struct auth **ret_auth)
{
	struct auth *a = calloc(1, sizeof(*a));
	int linger = 0;
	int r;

	if (!a) {
		return -ENOMEM;
	}
	a->loop = loop;
	a->keys = auth_keys_ref(keys);
	uint8_t random[AUTH_TOKEN_BYTES];
	if (getrandom(random, sizeof(random), 0) != (ssize_t) sizeof(random)) {
		r = errno > 0 ? -errno : -EIO;
		goto fail;
	}
	for (size_t i = 0; i < sizeof(random); i++) {
		(void) snprintf(a->token + 2 * i, 3, "%02x", random[i]);
	}
	explicit_bzero(random, sizeof(random));
	a->sock = zmq_socket(zctx, ZMQ_REP);
	if (!a->sock) {
		r = -zmq_errno();
		goto fail;
	}
	if (zmq_setsockopt(a->sock, ZMQ_LINGER, &linger, sizeof(linger)) < 0 ||
	    zmq_bind(a->sock, ZAP_ENDPOINT) < 0) {
		r = -zmq_errno();
		goto fail;
	}
	r = zuv_init(loop, &a->zuv, a->sock, AUTH_ZAP_BUDGET, on_readable, a);
	if (r < 0) {
		goto fail;
	}
	a->started = true;
	*ret_auth = a;
	return 0;
fail:
	(void) auth_free(a);
	return r;
}

int
auth_allow_plain(struct auth *a, const char *domain)
{
	if (!domain || *domain == '\0' || strlen(domain) > AUTH_ZAP_FRAME_MAX) {
		return -EINVAL;
	}
	for (size_t i = 0; i < a->n_plain; i++) {
		if (strcmp(a->plain_domains[i], domain) == 0) {
			return 0;
		}
	}
	if (a->n_plain == AUTH_PLAIN_DOMAINS_MAX) {
		return -ENOSPC;
	}
	char *copy = strdup(domain);
	if (!copy) {
		return -ENOMEM;
	}
	a->plain_domains[a->n_plain++] = copy;
	return 0;
}

int
auth_set_server_key(struct auth *a, const char *secret_z85)
{
	if (!secret_z85 || strnlen(secret_z85, AUTH_KEY_Z85_LEN + 1) != AUTH_KEY_Z85_LEN) {
		return -EINVAL;
	}
	explicit_bzero(a->server_key, sizeof(a->server_key));
	memcpy(a->server_key, secret_z85, AUTH_KEY_Z85_LEN + 1);
	return 0;
}

int
auth_socket_setup(struct auth *a, void *zsock, const char *domain, bool curve)
{
	if (curve) {
		if (a->server_key[0] == '\0') {
			return -ENOKEY;
		}
		return auth_server_setup(zsock, domain, a->server_key);
	}
	int r = auth_allow_plain(a, domain);
	if (r < 0) {
		return r;
	}
	return auth_server_setup(zsock, domain, NULL);
}

int
auth_set_limit(struct auth *a, const char *domain, uint32_t max, auth_count_fn *count, void *data)
{
	if (!domain || *domain == '\0' || strlen(domain) > AUTH_ZAP_FRAME_MAX || max == 0 ||
	    !count) {
		return -EINVAL;
	}
	size_t i = 0;
	while (i < a->n_limits && strcmp(a->limits[i].domain, domain) != 0) {
		i++;
	}
	if (i == a->n_limits) {
		if (a->n_limits == AUTH_LIMITS_MAX) {
			return -ENOSPC;
		}
		char *copy = strdup(domain);
		if (!copy) {
			return -ENOMEM;
		}
		a->limits[i].domain = copy;
		a->limits[i].refused = 0;
		a->n_limits++;
	}
	a->limits[i].max = max;
	a->limits[i].count = count;
	a->limits[i].data = data;
	return 0;
}

uint64_t
auth_limit_refused(const struct auth *a, const char *domain)
{
	for (size_t i = 0; i < a->n_limits; i++) {
		if (strcmp(a->limits[i].domain, domain) == 0) {
			return a->limits[i].refused;
		}
	}
	return 0;
}

void
auth_set_keys(struct auth *a, struct auth_keys *keys)
{
	struct auth_keys *old = a->keys;

	a->keys = auth_keys_ref(keys);
	(void) auth_keys_unref(old);
}

struct auth_keys *
auth_get_keys(const struct auth *a)
{
	return a->keys;
}

int
auth_check_user(const struct auth *a, const char *user_id, const char *key_z85, enum auth_role role,
                char ret_id[AUTH_ID_MAX + 1])
{
	enum auth_role claimed;
	char id[AUTH_ID_MAX + 1];
	uint8_t key[AUTH_KEY_BYTES];

	if (auth_user_id_parse(user_id, &claimed, id) < 0 || auth_key_decode(key_z85, key) < 0) {
		return -EACCES;
	}
	/* The key must still be allowlisted, and still as the identity it connected with. */
	const struct auth_entry *e = auth_keys_lookup(a->keys, key);
	if (!e || e->role != claimed || strcmp(e->id, id) != 0) {
		return -EACCES;
	}
	if (!auth_role_allows(e->role, role)) {
		return -EPERM;
	}
	if (ret_id) {
		memcpy(ret_id, id, strlen(id) + 1);
	}
	return 0;
}

int
auth_check_msg(const struct auth *a, const zmq_msg_t *msg, enum auth_role role,
               char ret_id[AUTH_ID_MAX + 1])
{
	/* zmq_msg_gets() takes a non-const message in some libzmq versions. */
	zmq_msg_t *m = (zmq_msg_t *) msg;
	const char *token = zmq_msg_gets(m, AUTH_PROPERTY_TOKEN);

	/* Compare every byte, so the time taken says nothing about how much matched. */
	unsigned char diff = 0;
	if (!token || strnlen(token, sizeof(a->token)) != sizeof(a->token) - 1) {
		return -EACCES;
	}
	for (size_t i = 0; i < sizeof(a->token) - 1; i++) {
		diff |= (unsigned char) (token[i] ^ a->token[i]);
	}
	if (diff != 0) {
		return -EACCES;
	}
	return auth_check_user(a, zmq_msg_gets(m, AUTH_PROPERTY_USER_ID),
	                       zmq_msg_gets(m, AUTH_PROPERTY_KEY), role, ret_id);
}

void
auth_set_event_cb(struct auth *a, auth_event_fn *cb, void *data)
{
	a->event_cb = cb;
	a->event_data = data;
}

void
auth_get_counters(const struct auth *a, struct auth_counters *ret_counters)
{
	*ret_counters = a->counters;
}

static void
on_closed(struct zuv *z)
{
	struct auth *a = container_of(z, struct auth, zuv);

	(void) zmq_close(a->sock);
	a->sock = NULL;
	a->closed = true;
	/* Last: the callback may free `a`. */
	if (a->close_cb) {
		a->close_cb(a->close_data);
	}
}

void
auth_close(struct auth *a, void (*done)(void *data), void *data)
{
	a->close_cb = done;
	a->close_data = data;
	zuv_close(&a->zuv, on_closed);
}

struct auth *
auth_free(struct auth *a)
{
	if (!a) {
		return NULL;
	}
	/* Freeing with live handles would leave libuv pointing into freed memory. */
	assert(!a->started || a->closed);
	if (a->sock) {
		(void) zmq_close(a->sock);
	}
	for (size_t i = 0; i < a->n_plain; i++) {
		free(a->plain_domains[i]);
	}
	for (size_t i = 0; i < a->n_limits; i++) {
		free(a->limits[i].domain);
	}
	explicit_bzero(a->server_key, sizeof(a->server_key));
	(void) auth_keys_unref(a->keys);
	free(a);
	return NULL;
}

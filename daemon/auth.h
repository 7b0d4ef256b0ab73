/*
 * auth: CURVE keys, the key allowlist and the ZAP handler (RFC 27) that decides which peer
 * may connect to which socket.
 *
 * Who is who. Every peer of a CURVE socket proves that it holds the secret key of a 32-byte
 * public key. The allowlist (a "keys file", see auth_keys_load()) maps each public key to a
 * role and an id: a council (role AUTH_ROLE_COUNCIL, id = council id), a headquarters
 * subscriber or an admin. The ZAP handler accepts a connection when the key is allowlisted
 * and its role may use the socket's ZAP domain:
 *
 *     domain "ingest"   councils
 *     domain "publish"  subscribers and admins
 *     domain "query"    subscribers and admins
 *
 * and then tells libzmq the peer's User-Id ("council:fr", "subscriber:desk1", "admin:ops")
 * and its public key (message property AUTH_PROPERTY_KEY, Z85). libzmq attaches both to
 * every message received on that connection (zmq_msg_gets()).
 *
 * Revocation. libzmq consults ZAP only during the handshake: a connection that was accepted
 * stays open when its key is later removed or replaced. So the per-message check,
 * auth_check_msg() (or auth_check_user()), looks the message's key up in the CURRENT
 * allowlist: after auth_set_keys() without that key (or with another key for the same id),
 * the old connection's messages are refused from then on.
 *
 * What libzmq 4.3.4 does (read in its source and checked by tests/unit/test_auth.c):
 *   - The handler must be bound on "inproc://zeromq.zap.01" in the same zmq context before
 *     any CURVE socket accepts a connection. One handler per context: auth_new() fails
 *     with -EADDRINUSE if there is one already.
 *   - A CURVE server asks ZAP about every client, whether or not it has ZMQ_ZAP_DOMAIN
 *     (the domain is then ""): this module refuses an empty or unknown domain, so a CURVE
 *     socket that forgot its domain admits nobody rather than everybody.
 *   - A NULL (plain) socket asks ZAP only when ZMQ_ZAP_DOMAIN is set. This module answers
 *     200 (with User-Id "") to mechanism NULL only on domains registered with
 *     auth_allow_plain(), 400 elsewhere. PLAIN, GSSAPI and anything else get 400.
 *   - When no handler is bound (before auth_new(), or after auth_close()), a CURVE server
 *     accepts ANY client key and a NULL server any client, unless the socket has the
 *     (draft-numbered but always compiled) option ZMQ_ZAP_ENFORCE_DOMAIN with a domain
 *     set: then the handshake fails. auth_server_setup() sets it. Still: create the
 *     handler before binding and close it after closing the sockets it guards.
 *   - Message properties merge the ZAP reply's metadata with the peer's own handshake
 *     metadata, the ZAP reply winning a name clash. So on a socket that skipped ZAP (a
 *     plain socket without a domain) a hostile peer can present any "User-Id" and
 *     AUTH_PROPERTY_KEY it likes (public keys are public). Accepted replies therefore also
 *     carry AUTH_PROPERTY_TOKEN, a random value made by auth_new() that never leaves the
 *     process, and auth_check_msg() requires it: it is safe on any socket.
 *
 * Threads: the keys functions are pure and thread-safe on distinct objects; struct auth_keys
 * is immutable and its reference count atomic, so a snapshot may be dropped on any thread.
 * struct auth is loop thread only. Non-logging module: refusals are counted and reported
 * through an optional callback (auth_set_event_cb()); file errors through struct
 * auth_error.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>
#include <zmq.h>

#include "idrule.h"

#define AUTH_KEY_BYTES 32         /* a CURVE public or secret key */
#define AUTH_KEY_Z85_LEN 40       /* its Z85 text, without the NUL */
#define AUTH_ID_MAX IDRULE_ID_MAX /* bytes of an id, without the NUL (idrule.h) */
/* "subscriber:" + id, without the NUL: the longest User-Id this module produces. */
#define AUTH_USER_ID_MAX (sizeof("subscriber:") - 1 + AUTH_ID_MAX)
/* A keys-file line holds at most AUTH_LINE_MAX - 1 bytes, newline included (inih's buffer). */
#define AUTH_LINE_MAX 200
/* Entries in one keys file. */
#define AUTH_KEYS_MAX 65536
/* Domains that auth_allow_plain() can register. */
#define AUTH_PLAIN_DOMAINS_MAX 8
/* Domains that auth_set_limit() can register. */
#define AUTH_LIMITS_MAX 8

/* ZAP domains: set with auth_server_setup() on the socket of the same name. */
#define AUTH_DOMAIN_INGEST "ingest"
#define AUTH_DOMAIN_PUBLISH "publish"
#define AUTH_DOMAIN_QUERY "query"

/* Message property holding the authenticated peer's public key in Z85 (set by the handler). */
#define AUTH_PROPERTY_KEY "X-Coord-Key"
/* Message property holding the peer's "role:id" (libzmq's ZMQ_MSG_PROPERTY_USER_ID). */
#define AUTH_PROPERTY_USER_ID "User-Id"
/* Message property proving that this handler accepted the connection (see the top). */
#define AUTH_PROPERTY_TOKEN "X-Coord-Auth"

enum auth_role {
	AUTH_ROLE_COUNCIL,    /* "council": pushes records as its council */
	AUTH_ROLE_SUBSCRIBER, /* "subscriber": digests and history */
	AUTH_ROLE_ADMIN,      /* "admin": what a subscriber may, plus stats and export */
	_AUTH_ROLE_MAX,
	_AUTH_ROLE_INVALID = -22, /* -EINVAL */
};

/* Where and why reading a file failed. line is 0 when the error is not tied to a line. */
struct auth_error {
	unsigned line;
	char message[256];
};

/*
 * Fill `e` (may be NULL: then nothing) with `line` and a printf-style message. Shared by
 * auth.c and authkey.c.
 */
void auth_error_set(struct auth_error *e, unsigned line, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

/* ---- Roles, ids and User-Ids (pure functions, any thread) ---- */

/*
 * "council", "subscriber" or "admin"; NULL for a value outside the enum.
 */
const char *auth_role_to_string(enum auth_role role);

/*
 * The inverse of auth_role_to_string(). Returns _AUTH_ROLE_INVALID for anything else
 * (also for NULL).
 */
enum auth_role auth_role_from_string(const char *s);

/*
 * Whether a peer with role `have` may do what needs role `need`: the same role, or an admin
 * where a subscriber is needed.
 */
bool auth_role_allows(enum auth_role have, enum auth_role need);

/*
 * Whether `id` is a valid id: 1 to AUTH_ID_MAX bytes of [a-z0-9_-], starting with [a-z0-9]
 * (the council id rule of the config). NULL is not.
 */
bool auth_id_valid(const char *id);

/*
 * Write "role:id" (e.g. "council:fr") into `ret_user_id`. Returns 0, or -EINVAL for a role
 * outside the enum or an invalid id (then `ret_user_id` is untouched).
 */
int auth_user_id_format(enum auth_role role, const char *id,
                        char ret_user_id[AUTH_USER_ID_MAX + 1]);

/*
 * Split a User-Id made by auth_user_id_format(). Returns 0 and fills both outputs, or
 * -EINVAL (NULL, "", no ':', unknown role, invalid id) and touches neither.
 */
int auth_user_id_parse(const char *user_id, enum auth_role *ret_role, char ret_id[AUTH_ID_MAX + 1]);

/* ---- Key files (any thread; they block on file I/O) ----
 * Implemented in authkey.c, which needs only libc and libzmq: libcoord compiles it too
 * (clients/libcoord/wire-names.h), so clients and broker share one implementation. */

/*
 * Decode a Z85 CURVE key (exactly AUTH_KEY_Z85_LEN characters of the Z85 alphabet, each
 * 5-character group at most 2^32 - 1). Returns 0 and the 32 bytes, or -EINVAL (also for
 * NULL), leaving `ret_key` untouched.
 */
int auth_key_decode(const char *z85, uint8_t ret_key[AUTH_KEY_BYTES]);

/*
 * Generate a CURVE keypair and write it as two files:
 *   PATH_BASE.secret  mode 0600, "# <comment>\n<40 Z85 characters>\n"
 *   PATH_BASE.public  mode 0644, same layout
 * Neither file may exist: the files are created with O_EXCL and nothing is overwritten.
 * Both are fsync()ed. On failure no file created by this call is left behind.
 * `ret_public` (may be NULL) receives the Z85 public key; `ret_error` (may be NULL) a
 * message naming the file.
 * Returns 0, or -EEXIST (a file exists), -ENAMETOOLONG, -ENOTSUP (libzmq without CURVE),
 * or another negative errno from open/write/fsync.
 */
int auth_keygen(const char *path_base, char ret_public[AUTH_KEY_Z85_LEN + 1],
                struct auth_error *ret_error);

/*
 * Read a secret key file written by auth_keygen(): lines that are blank or start with '#'
 * are comments (a Z85 key never starts with '#'); exactly one line must be the key.
 * The file must be a regular file that neither group nor others can access (mode & 077 ==
 * 0): otherwise -EPERM, with a message saying to chmod 600 it. The public key is derived
 * from the secret one (zmq_curve_public()).
 * Returns 0 and both keys, NUL-terminated, or a negative errno (-EPERM, -EINVAL for a bad
 * file, -EFBIG above 4 KiB, -ENOENT/-EACCES/... from open) and fills `ret_error` (may be
 * NULL); the outputs are untouched on error. The caller should explicit_bzero() the secret
 * when done.
 */
int auth_read_secret_key(const char *path, char ret_secret[AUTH_KEY_Z85_LEN + 1],
                         char ret_public[AUTH_KEY_Z85_LEN + 1], struct auth_error *ret_error);

/*
 * Read a public key file (same layout; any mode). Returns 0 and the key, or a negative
 * errno as auth_read_secret_key() (without -EPERM) and fills `ret_error` (may be NULL).
 */
int auth_read_public_key(const char *path, char ret_public[AUTH_KEY_Z85_LEN + 1],
                         struct auth_error *ret_error);

/* ---- The allowlist ---- */

/* One allowlisted key. Part of an immutable struct auth_keys: read only. */
struct auth_entry {
	enum auth_role role;
	char id[AUTH_ID_MAX + 1];
	uint8_t key[AUTH_KEY_BYTES];
	char key_z85[AUTH_KEY_Z85_LEN + 1];
	unsigned line;     /* of its "[role.id]" line */
	unsigned key_line; /* of its "public_key = ..." line */
};

struct auth_keys;

/*
 * Read the keys file at `path`. Format (INI, parsed with inih; comments start with '#' or
 * ';' at the start of a line, or after a space or tab):
 *
 *     [council.fr]
 *     public_key = <40 Z85 characters>     # from fr.public
 *     [subscriber.desk1]
 *     public_key = ...
 *     [admin.ops]
 *     public_key = ...
 *
 * Section names are "council.", "subscriber." or "admin." followed by an id
 * (auth_id_valid()); each section appears once and holds exactly one public_key. A key
 * may appear only once in the whole file. Unknown sections and keys, over-long lines
 * (AUTH_LINE_MAX), NUL bytes and more than AUTH_KEYS_MAX sections are errors. An empty
 * file is a valid, empty allowlist (it admits nobody).
 *
 * Returns 0 and a new allowlist with one reference in *ret_keys, or a negative errno
 * (-EINVAL for a bad file, -ENOENT/-EACCES/... when it cannot be read, -ENOMEM) and fills
 * `ret_error` (may be NULL) with the first error and its line; *ret_keys is untouched.
 */
int auth_keys_load(const char *path, struct auth_keys **ret_keys, struct auth_error *ret_error);

/*
 * Like auth_keys_load() but parses `text` (NUL-terminated); `name` (may be NULL) is recorded
 * as the path. For tests and fuzzing.
 */
int auth_keys_parse_string(const char *text, const char *name, struct auth_keys **ret_keys,
                           struct auth_error *ret_error);

/*
 * Take another reference. Accepts NULL. Returns `keys`.
 */
struct auth_keys *auth_keys_ref(struct auth_keys *keys);

/*
 * Drop a reference; the allowlist is freed with the last one. Accepts NULL. Returns NULL.
 */
struct auth_keys *auth_keys_unref(struct auth_keys *keys);

/*
 * The file the allowlist was read from ("<string>" for text). Valid as long as `keys`.
 */
const char *auth_keys_path(const struct auth_keys *keys);

/*
 * Number of entries; auth_keys_get(keys, i) for i below it returns them sorted by role,
 * then id. Pointers stay valid as long as `keys`. auth_keys_get() returns NULL past the end.
 */
size_t auth_keys_count(const struct auth_keys *keys);
const struct auth_entry *auth_keys_get(const struct auth_keys *keys, size_t i);

/*
 * Find the entry of a binary public key (binary search). Returns a pointer valid as long as
 * `keys`, or NULL when the key is not allowlisted (or either argument is NULL).
 */
const struct auth_entry *auth_keys_lookup(const struct auth_keys *keys,
                                          const uint8_t key[AUTH_KEY_BYTES]);

/*
 * Find the entry of role + id (binary search). Returns a pointer valid as long as `keys`, or
 * NULL.
 */
const struct auth_entry *auth_keys_find(const struct auth_keys *keys, enum auth_role role,
                                        const char *id);

/* ---- Sockets ---- */

/*
 * Prepare a server socket before zmq_bind(): set its ZAP domain `domain` (one of
 * AUTH_DOMAIN_*, or a domain registered with auth_allow_plain()) and ZMQ_ZAP_ENFORCE_DOMAIN,
 * so a missing handler fails the handshake instead of admitting everyone. With
 * `secret_z85` (the server's Z85 secret key) the socket becomes a CURVE server; with NULL
 * it stays a NULL (plain) socket whose peers the handler admits only on plain domains.
 * Returns 0 or a negative errno from libzmq (-EINVAL for a bad key).
 */
int auth_server_setup(void *zsock, const char *domain, const char *secret_z85);

/* ---- The ZAP handler ---- */

struct auth;

/* Counters since auth_new(); read with auth_get_counters(). */
struct auth_counters {
	uint64_t accepted;  /* ZAP "200": handshakes allowed */
	uint64_t refused;   /* ZAP "400": unknown key, wrong domain, plain not allowed, ... */
	uint64_t malformed; /* ZAP "500": requests that break RFC 27 (never from libzmq) */
};

/* What the handler decided about one request; every string is printable ASCII. */
struct auth_event {
	int status;            /* 200, 400 or 500 */
	const char *reason;    /* e.g. "key not allowlisted" */
	const char *domain;    /* the request's ZAP domain (non-printable bytes as '?') */
	const char *address;   /* the peer's address as libzmq reports it, e.g. "127.0.0.1" */
	const char *mechanism; /* "CURVE", "NULL", ... */
	const char *key_z85;   /* the CURVE client's public key, "" for other mechanisms */
	const char *user_id;   /* "role:id" on 200 for CURVE, else "" */
};

/*
 * Called on the loop thread after each decision, before the reply is sent. Must not call
 * auth_close() or auth_free(). The event and its strings are valid during the call only.
 */
typedef void auth_event_fn(const struct auth_event *ev, void *data);

/*
 * Bind the ZAP handler (a ZMQ_REP socket on "inproc://zeromq.zap.01") in `zctx` and answer
 * requests from `loop` (through zuv). Call it before binding any socket it guards.
 * `keys` is referenced (auth_keys_ref) until it is replaced or auth_free(); the caller keeps
 * its own reference. NULL is an empty allowlist. `zctx` and `loop` are borrowed and must outlive
 * the handler. Returns 0 and *ret_auth, or a negative errno (-EADDRINUSE when the context already
 * has a handler, -ENOMEM, ...); on error nothing is bound and *ret_auth is untouched. Loop thread
 * only.
 */
int auth_new(uv_loop_t *loop, void *zctx, struct auth_keys *keys, struct auth **ret_auth);

/*
 * Answer 200 to mechanism NULL on ZAP domain `domain` (copied; 1 to 255 bytes), for plain
 * sockets that are allowed (loopback, ipc://). The connection's User-Id is then "", which
 * auth_check_user() refuses: plain peers have no proven identity. Registering a domain
 * twice is harmless. Returns 0, -EINVAL for a bad domain, -ENOSPC past
 * AUTH_PLAIN_DOMAINS_MAX domains, -ENOMEM. Loop thread only.
 */
int auth_allow_plain(struct auth *a, const char *domain);

/*
 * Replace the allowlist (SIGHUP reload). `keys` (NULL: empty) is referenced, the old one
 * released.
 * Handshakes from now on and auth_check_*() use the new list; open connections stay open.
 * Loop thread only.
 */
void auth_set_keys(struct auth *a, struct auth_keys *keys);

/*
 * The current allowlist, borrowed: valid until the next auth_set_keys() unless the caller
 * takes a reference. Loop thread only.
 */
struct auth_keys *auth_get_keys(const struct auth *a);

/*
 * The identity check behind auth_check_msg(), for callers that hold the properties already.
 * `user_id` and `key_z85` (either may be NULL) must come from a connection this handler
 * accepted: this function cannot tell forged properties (see the top); prefer
 * auth_check_msg(). Succeeds when the key is in the CURRENT allowlist, its entry's
 * "role:id" is `user_id`, and that role allows `role` (auth_role_allows()).
 * Returns 0 and copies the id into `ret_id` (may be NULL); -EACCES when the peer is not
 * (or no longer) allowlisted with that identity (also plain peers: User-Id ""); -EPERM when
 * it is, but its role does not allow `role`. Loop thread only.
 */
int auth_check_user(const struct auth *a, const char *user_id, const char *key_z85,
                    enum auth_role role, char ret_id[AUTH_ID_MAX + 1]);

/*
 * The per-message check: call it for every message. `msg` is a received data frame (a
 * ROUTER's routing-id frame has no properties). Refuses (-EACCES) a message whose
 * AUTH_PROPERTY_TOKEN is not this handler's, i.e. whose connection this handler did not
 * accept, then does auth_check_user() on its AUTH_PROPERTY_USER_ID and AUTH_PROPERTY_KEY.
 * Same returns. Loop thread only.
 */
int auth_check_msg(const struct auth *a, const zmq_msg_t *msg, enum auth_role role,
                   char ret_id[AUTH_ID_MAX + 1]);

/*
 * Keep a copy of the server's Z85 secret key for auth_socket_setup() (it is
 * explicit_bzero()ed when replaced and by auth_free()). Returns 0, or -EINVAL when
 * `secret_z85` is not AUTH_KEY_Z85_LEN characters. Loop thread only.
 */
int auth_set_server_key(struct auth *a, const char *secret_z85);

/*
 * Prepare a server socket of this handler before zmq_bind(): with `curve`, a CURVE server
 * with the key of auth_set_server_key() (auth_server_setup(zsock, domain, key)); without,
 * a plain socket whose domain is registered with auth_allow_plain(), so the handler still
 * sees every connection (and can enforce auth_set_limit()). Returns 0, -ENOKEY for `curve`
 * without a server key, or the errors of auth_server_setup() and auth_allow_plain().
 * Loop thread only.
 */
int auth_socket_setup(struct auth *a, void *zsock, const char *domain, bool curve);

/* Tells how many connections a socket has open now (e.g. from zmon), for auth_set_limit(). */
typedef uint32_t auth_count_fn(void *data);

/*
 * Cap the connections of the socket with ZAP domain `domain` (copied) at `max`: a handshake
 * that would otherwise be accepted is refused (400 "connection limit reached") when
 * `count(data)` is above `max`. The count includes the connection being decided and any
 * other connection still in its handshake, so a burst of simultaneous connections may be
 * refused slightly early. Setting a domain again replaces its cap and callback (a reload)
 * and keeps its counter. `count` and `data` are borrowed until auth_close(). Returns 0,
 * -EINVAL (bad domain, max 0, count NULL), -ENOSPC past AUTH_LIMITS_MAX domains, -ENOMEM.
 * Loop thread only.
 */
int auth_set_limit(struct auth *a, const char *domain, uint32_t max, auth_count_fn *count,
                   void *data);

/*
 * Handshakes refused on `domain` because of its auth_set_limit() cap (0 for a domain without
 * one). Loop thread only.
 */
uint64_t auth_limit_refused(const struct auth *a, const char *domain);

/*
 * Set (or with NULL clear) the callback told of every decision, e.g. for logging. A refused
 * libzmq 4.3.4 client gives up (it ends the session on the server's ERROR), but a hostile
 * peer may retry at will: rate-limit what the callback logs. `data` is passed to it.
 * Loop thread only.
 */
void auth_set_event_cb(struct auth *a, auth_event_fn *cb, void *data);

/*
 * Copy the counters. Loop thread only.
 */
void auth_get_counters(const struct auth *a, struct auth_counters *ret_counters);

/*
 * Stop answering and close the ZAP socket; then call `done(data)` (may be NULL) on a later
 * loop iteration. `done` may call auth_free(). Close the sockets the handler guards FIRST:
 * without a handler libzmq admits clients of sockets lacking ZMQ_ZAP_ENFORCE_DOMAIN.
 * Call once. Loop thread only.
 */
void auth_close(struct auth *a, void (*done)(void *data), void *data);

/*
 * Free the handler after auth_close() has called back (the ZAP socket and handles are gone)
 * and release its allowlist reference. Accepts NULL. Returns NULL.
 */
struct auth *auth_free(struct auth *a);

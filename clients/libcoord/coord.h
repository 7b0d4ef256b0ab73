/*
 * libcoord: the coordd client library for coordinating councils.
 *
 * A council's program pushes activity records (protobuf `coord.v1.Envelope`s, see
 * proto/coord.proto and docs/PROTOCOL.md) to a coordd broker. libcoord makes that safe
 * against everything that goes wrong on the way: before coord_push() returns, the record is
 * committed to a durable local outbox (an LMDB environment in a directory of the client's
 * own); a background thread sends what the broker has not acknowledged yet, pipelined, and
 * resends after an ack timeout, a reconnect or a restart of the program. A record leaves
 * the outbox only when the broker answers ACCEPTED or DUPLICATE; RETRY_LATER is retried with
 * exponential backoff; REJECTED records are kept aside, with their reason, in the outbox's
 * rejected table. The broker de-duplicates by (council, msg_id, revision), so the effect is
 * exactly once even though a record may be sent more than once.
 *
 * Records can be built from text fields (coord_envelope_build(), the same rules as the
 * coord-push command line and its CSV import), or by any protobuf library from coord.proto
 * and pushed as bytes.
 *
 * Conventions
 *   - Functions that can fail return an int: >= 0 on success, a negative errno value on
 *     failure; coord_strerror() describes it. Output parameters are named ret_* and are
 *     written only on success.
 *   - There is no global state; every client is independent (it has its own ZeroMQ
 *     context and its own sender thread).
 *   - Timestamps are Unix milliseconds, UTC.
 *
 * Threads
 *   - coord_push(), coord_push_many(), coord_flush(), coord_stats(), coord_outbox_list() and
 *     coord_outbox_forget() may be called from any thread, concurrently, on one client.
 *   - coord_client_free() must not run concurrently with any other call on that client,
 *     and never from an ack callback.
 *   - The ack callback runs on the client's sender thread. It may call coord_push(),
 *     coord_push_many() and coord_stats(); it must not call coord_flush() (that would wait
 *     for the thread that runs the callback) or coord_client_free(). Keep it short: no
 *     record is sent or acknowledged while it runs.
 *   - coord_envelope_build(), coord_envelope_check() and the name functions are pure and
 *     thread-safe.
 *
 * Processes
 *   - One sending client per outbox at a time: coord_client_new() takes an exclusive lock
 *     on the outbox directory and fails with -EBUSY when another process (or another
 *     client in this process) sends from it. A client opened with COORD_OFFLINE only reads
 *     and writes the outbox (no thread, no socket, no lock), so `coord-push outbox` can look
 *     at an outbox while an import runs.
 *   - Do not fork() while a client is open and use it in the child (LMDB and ZeroMQ forbid
 *     it).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define COORD_VERSION_MAJOR 0
#define COORD_VERSION_MINOR 1
#define COORD_VERSION_PATCH 0
#define COORD_VERSION_STRING "0.1.0"

/* Where a broker takes councils' records when nothing else is configured. */
#define COORD_ENDPOINT_DEFAULT "tcp://127.0.0.1:7701"

/* Limits from docs/PROTOCOL.md, in bytes, without the terminating NUL. */
#define COORD_COUNCIL_MAX 32 /* council id: [a-z0-9][a-z0-9_-]* */
#define COORD_MSG_ID_MAX 128 /* msg_id: printable ASCII without space (0x21-0x7e) */
/* The largest Envelope coord_push() takes (the broker's own limit is usually lower: its
 * max_message_bytes, 64 KiB by default, answered with REJECTED/TOO_LARGE). */
#define COORD_ENVELOPE_MAX (1024 * 1024)

/* Ack statuses: the values of coord.v1.AckStatus. */
enum coord_status {
	COORD_STATUS_ACCEPTED = 1,    /* stored durably now, with a new seq; final */
	COORD_STATUS_DUPLICATE = 2,   /* this or a later revision was already stored; final */
	COORD_STATUS_REJECTED = 3,    /* permanently invalid; kept aside in the outbox; final */
	COORD_STATUS_RETRY_LATER = 4, /* a transient refusal; libcoord resends after a backoff */
};

/*
 * One acknowledgement, as passed to the ack callback. `reason` is a coord.v1.Reason value
 * (0 for ACCEPTED and DUPLICATE; see coord_reason_name()). The strings are borrowed: valid
 * only during the callback.
 */
struct coord_ack {
	const char *msg_id;
	uint32_t revision;
	enum coord_status status;
	uint64_t seq;        /* ACCEPTED: the new item's seq; DUPLICATE: the stored one; else 0 */
	int reason;          /* coord.v1.Reason */
	const char *message; /* the broker's sentence for REJECTED and RETRY_LATER, else "" */
};

/*
 * Called on the sender thread for each Ack that answers a record of this outbox, after
 * the outcome has been committed to the outbox: once per record for the final statuses
 * (ACCEPTED, DUPLICATE, REJECTED), and on every RETRY_LATER. Acks for records that are no
 * longer waiting (a late answer to a record that was resent) are not reported.
 */
typedef void coord_ack_fn(void *userdata, const struct coord_ack *ack);

/* coord_options.flags */
#define COORD_OFFLINE 0x1u /* open the outbox only: no sender thread, no socket, no lock */

/*
 * How to create a client. Initialise with coord_options_init() and then set what you need;
 * a zero numeric field means "the default" below. Strings are copied by
 * coord_client_new(); the caller keeps ownership.
 *
 * Fields may be added at the end in later minor versions; coord_options_init() sets them
 * to their defaults, so always call it first.
 */
struct coord_options {
	const char *endpoint;    /* broker ingest endpoint; NULL: COORD_ENDPOINT_DEFAULT */
	const char *council;     /* this council's id; required */
	const char *outbox_path; /* directory of the outbox (created 0700 if missing); required */

	uint32_t max_in_flight;    /* records sent and not yet answered; default 256 */
	uint32_t ack_timeout_ms;   /* resend (on a new connection) after this; default 10000 */
	uint32_t backoff_min_ms;   /* first RETRY_LATER / reconnect delay; default 100 */
	uint32_t backoff_max_ms;   /* delays double up to this; default 30000 */
	uint64_t outbox_max_bytes; /* LMDB map size of the outbox; default 1 GiB */

	/* CURVE: all three Z85 keys (40 characters each) or none (a plain connection); see
	 * coord_keys_load(). */
	const char *curve_server_key; /* the broker's public key */
	const char *curve_public_key; /* this council's public key */
	const char *curve_secret_key; /* this council's secret key */

	coord_ack_fn *on_ack; /* optional */
	void *userdata;       /* passed to on_ack */
	unsigned flags;       /* COORD_OFFLINE */
};

/* Fill `opts` with the defaults (all fields). */
void coord_options_init(struct coord_options *opts);

struct coord_client;

/*
 * Open (creating it if needed) the outbox at opts->outbox_path and, unless COORD_OFFLINE,
 * start the sender thread, which connects to the broker and at once sends everything the
 * outbox holds from earlier runs.
 *
 * An outbox belongs to one council: it remembers the council it was created for and
 * refuses another.
 *
 * On success returns 0 and *ret_client, owned by the caller (coord_client_free()).
 * Errors: -EINVAL (a missing or malformed option: council id syntax, endpoint, keys,
 * backoff_min_ms > backoff_max_ms), -EXDEV (the outbox belongs to another council),
 * -EBUSY (another client sends from this outbox), -EPROTO (the outbox was written by an
 * incompatible libcoord), -ENOMEM, or the errno of a failed file or socket operation.
 */
int coord_client_new(const struct coord_options *opts, struct coord_client **ret_client);

/*
 * Stop the sender thread (records not yet acknowledged stay in the outbox and are sent by
 * the next client on it), close the connection and the outbox, free the client. Does not
 * wait for acks: call coord_flush() first for that. Accepts NULL; returns NULL.
 */
struct coord_client *coord_client_free(struct coord_client *client);

/*
 * Queue one serialized Envelope of `len` bytes. The Envelope must carry this client's
 * council, a non-empty msg_id of at most COORD_MSG_ID_MAX bytes and a revision >= 1; the
 * rest is checked by the broker (or beforehand with coord_envelope_check()).
 *
 * Before it returns 0, the bytes are committed durably (fsync) to the outbox under the key
 * (msg_id, revision), and the sender thread has been woken. If that key is already waiting
 * in the outbox, nothing is written and 1 is returned: the waiting copy will be sent (the
 * broker de-duplicates by key, not by bytes). If the key was rejected earlier, it leaves
 * the rejected table and is queued again.
 *
 * `bytes` is not referenced after the call. Errors: -EINVAL (not an Envelope, another
 * council, bad msg_id or revision), -EMSGSIZE (len > COORD_ENVELOPE_MAX), -ENOSPC (the
 * outbox reached outbox_max_bytes), -EIO, -ENOMEM.
 */
int coord_push(struct coord_client *client, const uint8_t *bytes, size_t len);

/* One serialized Envelope for coord_push_many(); borrowed for the duration of the call. */
struct coord_message {
	const uint8_t *bytes;
	size_t len;
};

/*
 * Queue `n` Envelopes in one outbox transaction (one disk flush): all of them or, on
 * error, none. Each is checked as by coord_push(). Returns how many were newly queued (the
 * others were already waiting), or a negative errno; on -EINVAL or -EMSGSIZE, `*bad_index`
 * (if not NULL) is the index of the offending message.
 */
int coord_push_many(struct coord_client *client, const struct coord_message *msgs, size_t n,
                    size_t *bad_index);

/*
 * Wait until no record is waiting in the outbox (every record was answered ACCEPTED,
 * DUPLICATE or REJECTED), at most `timeout_ms` milliseconds (-1: no limit; 0: just check).
 * Returns 0 when the outbox holds nothing waiting, -ETIMEDOUT, -ENOTCONN for a COORD_OFFLINE
 * client with records waiting, or the error that stopped the sender thread (-EIO and the
 * like; the records stay in the outbox).
 */
int coord_flush(struct coord_client *client, int timeout_ms);

/* Counters of one client; the totals count since coord_client_new(). */
struct coord_stats {
	uint64_t waiting;     /* records in the outbox waiting for a final answer */
	uint64_t rejected;    /* records kept aside in the rejected table */
	uint64_t in_flight;   /* sent and not yet answered */
	uint64_t accepted;    /* ACCEPTED answers */
	uint64_t duplicate;   /* DUPLICATE answers */
	uint64_t rejections;  /* REJECTED answers */
	uint64_t retry_later; /* RETRY_LATER answers */
	uint64_t sent;        /* frames sent, resends included */
	uint64_t reconnects;  /* connections re-established after a loss or an ack timeout */
	bool connected;       /* a connection to the broker is up now */
};

/* Fill *ret_stats. Returns 0, or -EIO when the outbox cannot be read. */
int coord_stats(struct coord_client *client, struct coord_stats *ret_stats);

/*
 * Why the connection to the broker is not up, when the broker said so in the handshake:
 *   -EACCES           it refused this client: with CURVE keys, its keys file does not hold
 *                     this client's public key (for this council); without keys, the socket
 *                     requires them;
 *   -EPROTONOSUPPORT  CURVE on one side only (keys given for a plain socket, or none for a
 *                     CURVE one);
 *   -ECONNRESET       the broker closed the connection during the handshake without saying
 *                     why (a CURVE broker can do that to a plain client before the client
 *                     reads its greeting; so can a server that does not speak ZMTP); a
 *                     more specific value seen before is kept;
 *   0                 connected, not tried yet, or nothing was said: a broker that is down
 *                     and a wrong broker key (curve_server_key) look alike, no answer.
 * The value is that of the last handshake; a successful one clears it. The sender thread
 * keeps trying either way (the broker's keys may be changed). Any thread.
 */
int coord_connection_error(struct coord_client *client);

/* Which outbox table an entry is in. */
enum coord_outbox_state {
	COORD_OUTBOX_WAITING = 1,  /* not yet answered finally: will be sent (again) */
	COORD_OUTBOX_REJECTED = 2, /* answered REJECTED: kept aside, never resent by itself */
};

/* coord_outbox_list() `which` flags */
#define COORD_LIST_WAITING 0x1u
#define COORD_LIST_REJECTED 0x2u

/*
 * One outbox entry. Everything is borrowed and valid only during the callback.
 */
struct coord_outbox_entry {
	enum coord_outbox_state state;
	const char *msg_id;
	uint32_t revision;
	int64_t queued_at;       /* when coord_push() stored it */
	int64_t rejected_at;     /* REJECTED: when the answer came; else 0 */
	int reason;              /* REJECTED: the coord.v1.Reason; else 0 */
	const char *message;     /* REJECTED: the broker's sentence; else "" */
	const uint8_t *envelope; /* the serialized Envelope, as pushed */
	size_t envelope_len;
};

/* Return 0 to go on, anything else to stop the listing (coord_outbox_list() returns it). */
typedef int coord_outbox_fn(void *userdata, const struct coord_outbox_entry *entry);

/*
 * Call `fn` for each entry of the tables chosen by `which`: waiting entries in the order
 * they were queued, then rejected ones ordered by (msg_id, revision). The listing is one
 * consistent snapshot; the callback may not call other functions on this client.
 * Returns 0 after the last entry, fn's non-zero value if it stopped, or -EIO.
 */
int coord_outbox_list(struct coord_client *client, unsigned which, coord_outbox_fn *fn,
                      void *userdata);

/*
 * Remove the rejected entry (msg_id, revision) from the outbox (after it has been fixed
 * and pushed under a new id or revision, or given up). Returns 0, -ENOENT when there is no
 * such rejected entry, or -EIO.
 */
int coord_outbox_forget(struct coord_client *client, const char *msg_id, uint32_t revision);

/*
 * Building records from text
 *
 * coord_envelope_build() turns a record given as (name, value) text pairs, the way a
 * spreadsheet row or a command line gives it, into a serialized, validated Envelope.
 *
 * category: "event", "letter", "statement", "petition", "media" or "retraction".
 * Field names are the proto field names of that category's message (docs/PROTOCOL.md):
 * e.g. for "event": kind, country, city, date, title, organiser, participants, languages.
 * Envelope fields may be given too: msg_id, revision, created_at, and council (which must
 * then equal `council`). Names are case-insensitive, '-' and ' ' count as '_', and the
 * lowerCamelCase JSON names are accepted. Values:
 *   - text: leading and trailing white space is removed;
 *   - enums: the value name with or without its prefix, any case, '-' or ' ' for '_'
 *     ("rally", "car-rally", "EVENT_KIND_RALLY", "head of state"), or the number;
 *   - dates and times: ISO 8601, "2020-10-04" (00:00 UTC), "2020-10-04T18:30:00Z",
 *     "2020-10-04T18:30+02:00", "2020-10-04 18:30" (UTC); or Unix milliseconds;
 *   - numbers: decimal digits;
 *   - languages: tags separated by ',', ';' or white space ("fr; hy");
 *   - an empty value leaves the field unset.
 * A field given twice is an error.
 *
 * Defaults: revision 1 (2 for a retraction), created_at `now_ms`. Without msg_id, the id is
 * derived from the content: "h-" and 32 hex digits of SHA-256 over the council, the
 * category and the record's body as serialized (after the normalisation above), so the same
 * record always gets the same id, and the same record imported twice is one record. A
 * retraction needs an explicit msg_id (the record it withdraws).
 *
 * `now_ms` is the current time (0: read the clock); it is used for created_at and for the
 * broker's date ranges. On success returns 0 and fills *ret (release it with
 * coord_envelope_done()). On failure returns -EINVAL with `err` (if not NULL) naming the
 * field (as the caller spelled it; empty when no one field is at fault) and the problem, or
 * -ENOMEM; *ret is then untouched.
 */
struct coord_field {
	const char *name;
	const char *value;
};

struct coord_envelope {
	uint8_t *bytes; /* the serialized Envelope, malloc()ed, owned by the struct */
	size_t len;
	char msg_id[COORD_MSG_ID_MAX + 1];
	uint32_t revision;
	int64_t created_at;
};

struct coord_error {
	char field[64];    /* the field at fault, or "" */
	char message[256]; /* one sentence, e.g. "'XX' is not an ISO 3166-1 alpha-2 code" */
};

int coord_envelope_build(const char *council, const char *category,
                         const struct coord_field *fields, size_t n_fields, int64_t now_ms,
                         struct coord_envelope *ret, struct coord_error *err);

/* Free what coord_envelope_build() stored in `env` and zero it. Accepts NULL. */
void coord_envelope_done(struct coord_envelope *env);

/*
 * Check a serialized Envelope against the broker's validation rules (docs/PROTOCOL.md),
 * as of this libcoord's version, at time `now_ms` (0: the clock). Whether the council is
 * registered is only known to the broker. Returns 0 when valid, -EINVAL with `err` filled
 * (field: the proto path such as "event.country") otherwise, -EMSGSIZE, or -ENOMEM.
 */
int coord_envelope_check(const uint8_t *bytes, size_t len, int64_t now_ms, struct coord_error *err);

/*
 * CURVE keys
 *
 * A broker that requires CURVE (docs/SECURITY.md) admits a council only with a keypair whose
 * public key is in its keys file under the council's id. Make the pair with coord_keygen()
 * (or `coordctl keygen NAME`), send NAME.public to the broker's operator, keep NAME.secret.
 * Then load the keys with coord_keys_load() and hand them to coord_client_new():
 *
 *     struct coord_keys keys;
 *     struct coord_error err;
 *     if (coord_keys_load("broker.public", "fr.secret", &keys, &err) < 0) {
 *             fprintf(stderr, "%s: %s\n", err.field, err.message);
 *             ...
 *     }
 *     opts.curve_server_key = keys.server_key;
 *     opts.curve_public_key = keys.public_key;
 *     opts.curve_secret_key = keys.secret_key;
 *     r = coord_client_new(&opts, &client);  (copies the keys)
 *     coord_keys_done(&keys);                (clears the secret)
 *
 * A wrong key is not an error libcoord can see: the broker refuses the handshake, the
 * connection never comes up, records wait in the outbox and coord_flush() times out.
 */

/* Characters of a CURVE key in Z85 (32 bytes), without the NUL. */
#define COORD_KEY_Z85_LEN 40

/* A client's CURVE keys, NUL-terminated Z85. Clear with coord_keys_done(). */
struct coord_keys {
	char server_key[COORD_KEY_Z85_LEN + 1]; /* the broker's public key */
	char public_key[COORD_KEY_Z85_LEN + 1]; /* this client's, derived from the secret */
	char secret_key[COORD_KEY_Z85_LEN + 1]; /* this client's secret key */
};

/*
 * Load a client's keys. `server_key` is the broker's public key: its 40 Z85 characters, or
 * (anything else) the path of its NAME.public file. `key_file` is the path of this client's
 * NAME.secret file (as coord_keygen() writes it: '#' comment lines and one Z85 line); it
 * must be a regular file that neither group nor others may read (chmod 600), and the public
 * key is derived from it. Both are required.
 *
 * Returns 0 and fills *ret_keys, or a negative errno and fills `err` (if not NULL; field is
 * "server_key" or "key_file", message names the file and says what to do): -EINVAL (a
 * missing argument, not a key, a .public file given as the secret one), -EPERM (the secret
 * file is readable by group or others), -EFBIG, or the errno of open()/read() (-ENOENT,
 * -EACCES, ...). *ret_keys is untouched on error; every copy of the secret made on the way
 * is cleared.
 */
int coord_keys_load(const char *server_key, const char *key_file, struct coord_keys *ret_keys,
                    struct coord_error *err);

/* Clear `keys` (explicit_bzero, which the compiler cannot skip). Accepts NULL. */
void coord_keys_done(struct coord_keys *keys);

/*
 * Make a new CURVE keypair and write it as PATH_BASE.secret (mode 0600) and PATH_BASE.public
 * (0644), each a '#' comment line and the Z85 key, synced to disk. Never overwrites: when
 * either file exists, nothing is written. The public key is copied to `ret_public` (may be
 * NULL). Returns 0, or a negative errno (-EEXIST, -ENAMETOOLONG, -EINVAL for an empty
 * PATH_BASE, -ENOTSUP for a libzmq without CURVE, or that of open()/write()/fsync()) with
 * `err` (may be NULL) filled; then no file made by this call is left behind.
 */
int coord_keygen(const char *path_base, char ret_public[COORD_KEY_Z85_LEN + 1],
                 struct coord_error *err);

/*
 * Names
 */

/* A sentence for a negative errno value returned by libcoord (or its absolute value).
 * Never NULL; static storage. */
const char *coord_strerror(int err);

/* "ACCEPTED", "DUPLICATE", "REJECTED", "RETRY_LATER", or "UNKNOWN". */
const char *coord_status_name(int status);

/* The coord.v1.Reason name without "REASON_": "INVALID_COUNTRY", ...; "UNKNOWN" if none. */
const char *coord_reason_name(int reason);

/* The library version, "0.1.0". */
const char *coord_version(void);

#ifdef __cplusplus
}
#endif

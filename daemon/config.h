/*
 * config: the daemon's configuration file, parsed with inih into an immutable struct.
 *
 * The file is INI: "[section]" lines, "key = value" lines, and comments starting with '#'
 * or ';' (at the start of a line, or after a value when preceded by a space or tab; values
 * cannot contain " #" or " ;"). Leading whitespace is ignored (no continuation lines).
 * Every key, its default and its range are documented in config/coordd.conf. Unknown
 * sections and keys, bad values, duplicate keys and duplicate councils are errors; each
 * error names its line.
 *
 * A loaded config is never modified. It is reference-counted so that a reload can build a
 * new one while work in flight still holds the old one. Non-logging module: errors are
 * returned through struct config_error.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "idrule.h"

#define CONFIG_COUNCIL_ID_MAX IDRULE_ID_MAX /* bytes, without the NUL */
/*
 * A line holds at most CONFIG_LINE_MAX - 1 bytes, its newline included (198 characters plus
 * "\n"); a longer line is an error. This is inih's line buffer (INI_MAX_LINE, 200 as Debian
 * builds it): inih would split a longer line, so the limit cannot be raised through it.
 */
#define CONFIG_LINE_MAX 200
#define CONFIG_EXIT_INVALID 78 /* EX_CONFIG: exit status for a bad config */
/* The most headlines a digest can carry (DIGEST_HEADLINES_MAX; config sits below digest). */
#define CONFIG_HEADLINES_MAX 50
/* [publish] fanout_budget by default: 128 MiB of digest messages a second (fanout.h). */
#define CONFIG_FANOUT_BUDGET_DEFAULT (UINT64_C(128) << 20)

enum config_sync {
	CONFIG_SYNC_FULL, /* every commit is flushed to disk before any ack (default) */
	CONFIG_SYNC_NONE, /* UNSAFE: commits are not flushed; a power cut loses acked records */
	_CONFIG_SYNC_MAX,
	_CONFIG_SYNC_INVALID = -22,
};

/*
 * A socket's security ("security = curve | plain" in [ingest], [publish] and [query]).
 * The default is curve when [security] is configured, plain otherwise. A plain socket must
 * be local (config_endpoint_is_local()): anything else is refused by validation.
 */
enum config_security {
	CONFIG_SECURITY_PLAIN, /* no encryption, no authentication: loopback and ipc:// only */
	CONFIG_SECURITY_CURVE, /* CURVE encryption; peers authenticated by the keys file */
	_CONFIG_SECURITY_MAX,
	_CONFIG_SECURITY_INVALID = -22,
};

/* One registered coordinating council: "[council.<id>]". */
struct config_council {
	char id[CONFIG_COUNCIL_ID_MAX + 1]; /* [a-z0-9][a-z0-9_-]*, unique */
	char *name;                         /* human name, required */
	char country[3];                    /* ISO 3166-1 alpha-2, upper case */
};

struct config {
	unsigned refs;
	char *path; /* the file it was read from ("<string>" for text) */

	/* [coordd] */
	char *state_dir; /* state_dir: directory of the LMDB store (required) */
	int log_level;   /* log_level: enum log_level, default LOG_LEVEL_INFO */

	/* [ingest] */
	struct {
		char *endpoint;             /* endpoint, default tcp://127.0.0.1:7701 */
		uint32_t max_message_bytes; /* 1 KiB .. 1 MiB, default 64 KiB */
		uint32_t max_batch;         /* messages per commit, 1 .. 65536, default 1024 */
		uint32_t max_pending;       /* received but uncommitted before reading pauses,
		                               >= max_batch, default 8192 */
		uint32_t hwm; /* ZMQ send and receive HWM, 100 .. 1000000, default 10000 */
		enum config_security security;     /* security, see enum config_security */
		uint32_t max_connections;          /* 1 .. 1000000, default 2048 */
		uint32_t max_inflight_per_council; /* messages received from one sender and not
		                                      yet acked, 1 .. 1000000, default 1024 */
		uint32_t rate_limit; /* messages per second per sender, 0 (off) .. 10000000,
		                        default 100000 */
		uint32_t rate_burst; /* token bucket depth, 1 .. 20000000, default 2 x rate_limit
		                        (0 when rate_limit is 0 and rate_burst is not set) */
	} ingest;

	/* [publish]: the XPUB socket headquarters subscribes to (fanout) */
	struct {
		char *endpoint; /* endpoint, default tcp://127.0.0.1:7702 */
		uint32_t hwm;   /* messages queued per subscriber before libzmq drops, 100 ..
		                   1000000, default 1000 */
		enum config_security security;
		uint32_t max_connections;        /* 1 .. 1000000, default 1024 */
		uint32_t max_subscription_bytes; /* ZMQ_MAXMSGSIZE of the socket: a bigger
		                                    (un)subscription drops its connection,
		                                    256 .. 64 KiB, default 1 KiB */
		uint64_t fanout_budget; /* digest bytes per second times the connections the
		                           publish socket may send (fanout.h), 1 KiB .. 1 TiB,
		                           default CONFIG_FANOUT_BUDGET_DEFAULT */
	} publish;

	/* [query]: the ROUTER socket for digests, history, status and stats (query) */
	struct {
		char *endpoint;             /* endpoint, default tcp://127.0.0.1:7703 */
		uint32_t history_limit;     /* items per history page when the request says 0,
		                               1 .. 100000, default 1000 */
		uint32_t history_limit_max; /* the most items per page whatever the request says,
		                               history_limit .. 100000, default 10000 */
		uint32_t history_bytes_max; /* the most item bytes per page, 64 KiB .. 64 MiB,
		                               default 4 MiB (at least one item is always sent) */
		uint32_t hwm; /* answers queued per client before libzmq drops, 1 .. 100000,
		                 default 32 */
		enum config_security security;
		uint32_t max_connections;           /* 1 .. 1000000, default 256 */
		uint32_t subscriber_history_window; /* how far back (in items below the store's
		                                       last seq) a subscriber's history request
		                                       may start; further back (an export) needs
		                                       an admin key. 1 .. 1000000000, default
		                                       100000. Only on a curve query socket. */
		uint32_t max_request_bytes; /* ZMQ_MAXMSGSIZE of the socket: a bigger frame drops
		                               its connection, 4 KiB .. 1 MiB, default 64 KiB */
	} query;

	/* [digest] */
	struct {
		uint32_t publish_interval_ms; /* how often changed digests are published,
		                                 10 .. 3600000, default 1000 */
		uint32_t headlines; /* headlines per published digest, 1 .. CONFIG_HEADLINES_MAX,
		                       default 5 */
	} digest;

	/* [store] */
	struct {
		uint64_t map_size;       /* initial LMDB map size, default 64 MiB, >= 1 MiB */
		uint64_t map_size_max;   /* growth limit, default 16 GiB, >= map_size */
		enum config_sync sync;   /* sync = full | none, default full */
		uint64_t min_free_bytes; /* warn when the state_dir file system has less free;
		                            default 256 MiB, 0 = never */
	} store;

	/* [metrics]: the HTTP endpoint for Prometheus and health checks */
	struct {
		char *listen; /* listen, numeric "host:port", default 127.0.0.1:9771; NULL when
		                 set to "off" */
	} metrics;

	/* [security]: CURVE keys; both set or neither (then every socket is plain) */
	struct {
		char *secret_key_file; /* the server's secret key (auth_read_secret_key()) */
		char *keys_file;       /* the allowlist of peers' public keys (auth_keys_load()) */
	} security;

	/* [council.<id>] sections, sorted by id */
	struct config_council *councils;
	size_t n_councils;
};

/* Where and why parsing failed. line is 0 when the error is not tied to a line. */
struct config_error {
	unsigned line;
	char message[256];
};

/*
 * Read and validate the file at `path`. On success returns 0 and stores a new config with
 * one reference in *ret_config. On failure returns a negative errno (-EINVAL for a bad
 * config, -ENOENT/-EACCES/... when the file cannot be read, -ENOMEM) and fills *ret_error;
 * *ret_config is not touched. `ret_error` may be NULL.
 */
int config_load(const char *path, struct config **ret_config, struct config_error *ret_error);

/*
 * Like config_load() but parses `text` (NUL-terminated); `name` is recorded as the path.
 * For tests and fuzzing.
 */
int config_parse_string(const char *text, const char *name, struct config **ret_config,
                        struct config_error *ret_error);

/*
 * Take another reference. Returns `c`.
 */
struct config *config_ref(struct config *c);

/*
 * Drop a reference; the config is freed with the last one. Accepts NULL. Returns NULL.
 */
struct config *config_unref(struct config *c);

/*
 * Find a council by id (binary search). Returns a pointer valid as long as the config, or
 * NULL when no council has that id.
 */
const struct config_council *config_find_council(const struct config *c, const char *id);

/*
 * Parse a size with an optional suffix: "65536", "64K", "64KiB", "64M", "16G", "1T"
 * (powers of 1024; "B" and "iB" optional, case-insensitive). Returns 0 and *ret, or
 * -EINVAL / -ERANGE.
 */
int config_parse_size(const char *s, uint64_t *ret);

/*
 * Whether a plain (unauthenticated) socket may bind `endpoint`: ipc:// and inproc://, or
 * tcp:// on a loopback host (127.0.0.0/8 in dotted form, [::1], localhost). The host "*",
 * 0.0.0.0, other addresses, interface names and other transports are not. NULL is not.
 */
bool config_endpoint_is_local(const char *endpoint);

/*
 * "curve" or "plain"; NULL outside the enum.
 */
const char *config_security_to_string(enum config_security s);

/*
 * Called by config_keep_restart_keys() for each key whose change needs a restart:
 * `section` and `key` name it (e.g. "ingest", "endpoint").
 */
typedef void config_restart_fn(void *data, const char *section, const char *key);

/*
 * For a reload: make `fresh` (a config just loaded, not yet shared with anyone: refs 1)
 * keep the values of `old` for every key that the running daemon applies only at start
 * (endpoints, socket security, HWMs, message and batch sizes, the store, state_dir,
 * metrics.listen and [security] secret_key_file), calling `cb` (may be NULL) once per key
 * whose value differed. Everything else (councils, log_level, limits, digest settings,
 * [query] paging, keys_file) keeps the fresh value. Returns the number of keys kept from
 * `old`, or -ENOMEM (then `fresh` is a mix of both and must be dropped).
 */
int config_keep_restart_keys(struct config *fresh, const struct config *old, config_restart_fn *cb,
                             void *data);

/*
 * Parse a numeric listen address, "HOST:PORT" or "[V6HOST]:PORT" (no names: the daemon
 * never resolves). Returns 0 and the parts (`ret_host` has room for 64 bytes), or -EINVAL.
 */
int config_parse_listen(const char *s, char ret_host[64], uint16_t *ret_port);

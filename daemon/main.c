/*
 * main: arguments, startup order, signals, sd_notify, reload, watchdog, shutdown order.
 *
 * Startup: config -> the server's secret key and the keys file (when [security] is set) ->
 * store -> digest (its store hooks, before the first write) -> zmq context -> the ZAP
 * handler (auth, before any socket binds) -> fanout (publish socket) -> query (query
 * socket) -> ingest (councils' socket; its committed records go to fanout) -> connection
 * caps -> READY=1 once all three are bound.
 * SIGHUP: RELOADING=1, re-read the config and the keys file; either both are valid and
 * replace the running ones in every module (keys that apply only at start keep their
 * running value, with a warning each), or nothing changes (an error names the file and
 * line); then READY=1. Counted in coordd_reloads_total.
 * Watchdog: when systemd sets WATCHDOG_USEC, a loop timer sends WATCHDOG=1 every half
 * interval, so a stuck loop misses it and gets restarted; another timer refreshes STATUS=.
 * Shutdown on SIGTERM or SIGINT: STOPPING=1, ingest stops reading and commits, acks and
 * publishes what it received, its socket closes; then the query and publish sockets and the
 * metrics server close; then the ZAP handler (after the sockets it guards);
 * the loop runs until idle; then the zmq context, digest, store and config go.
 * Exit status: 0 after a clean stop, 78 (EX_CONFIG) for a bad config, 1 for other startup
 * failures, 2 for bad arguments.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>
#include <uv.h>
#include <zmq.h>

#include "auth.h"
#include "config.h"
#include "coordd-version.h"
#include "digest.h"
#include "fanout.h"
#include "ingest.h"
#include "log.h"
#include "metrics.h"
#include "query.h"
#include "store.h"

#define EXIT_USAGE 2
/* How often STATUS= is refreshed. */
#define STATUS_INTERVAL_MS 5000
/* Refused handshakes logged at warning, at most this many per second. */
#define REFUSAL_LOGS_PER_S 10

static const char *arg_config = "/etc/coordd/coordd.conf";
static bool arg_check_only = false;

struct coordd {
	uv_loop_t loop;
	struct config *cfg;
	struct store *store;
	struct digest *digest;
	void *zctx;
	struct fanout *fanout;
	struct query *query;
	struct ingest *ingest;
	struct metrics *metrics;
	struct auth *auth;
	struct auth_keys *keys; /* the allowlist in force (NULL without [security]) */
	uv_signal_t sigterm;
	uv_signal_t sigint;
	uv_signal_t sighup;
	uv_timer_t watchdog;
	uv_timer_t status;
	bool stopping;
	unsigned closing; /* sockets (query, fanout, metrics) still closing */
	uint64_t reloads_ok, reloads_failed;
	uint64_t status_batches; /* ingest batches at the last STATUS= */
	int64_t last_commit_at;  /* Unix ms when a new batch was first seen, 0: none */
	char status_text[192];   /* the last STATUS= sent */
	char store_note[128];    /* STATUS= while the store is in trouble, else "" */
	uint64_t refusal_log_ms; /* start of the current second of refusal warnings */
	unsigned refusal_log_count;
	int64_t started_at;    /* Unix ms */
	uint64_t started_mono; /* uv_now() at start */
};

static int64_t
now_ms(void)
{
	struct timespec ts;

	(void) clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
help(void)
{
	printf("Usage: coordd [OPTION]...\n"
	       "The coordd broker: takes activity records from coordinating councils over\n"
	       "ZeroMQ, stores them durably in LMDB and acknowledges each once it is on disk;\n"
	       "publishes live digests and records to headquarters and answers its queries.\n"
	       "\n"
	       "  -c, --config=PATH        read the configuration from PATH\n"
	       "                           (default %s)\n"
	       "      --check-config=PATH  validate PATH, print any problem as FILE:LINE: text,\n"
	       "                           and exit (0 valid, 78 invalid)\n"
	       "      --version            print the version and exit\n"
	       "  -h, --help               print this help and exit\n"
	       "\n"
	       "Signals: SIGTERM or SIGINT stop after committing and acknowledging what was\n"
	       "received; SIGHUP reloads the configuration and the keys file.\n"
	       "Documentation: docs/OPERATIONS.md, docs/SECURITY.md.\n",
	       arg_config);
}

static int
parse_argv(int argc, char **argv)
{
	enum { ARG_VERSION = 0x100, ARG_CHECK_CONFIG };
	static const struct option options[] = {
	        {"config", required_argument, NULL, 'c'},
	        {"check-config", required_argument, NULL, ARG_CHECK_CONFIG},
	        {"version", no_argument, NULL, ARG_VERSION},
	        {"help", no_argument, NULL, 'h'},
	        {0},
	};
	int c;

	while ((c = getopt_long(argc, argv, "c:h", options, NULL)) >= 0) {
		switch (c) {
		case 'c':
			arg_config = optarg;
			break;
		case ARG_CHECK_CONFIG:
			arg_config = optarg;
			arg_check_only = true;
			break;
		case ARG_VERSION:
			printf("coordd %s\n", COORDD_VERSION);
			return 0;
		case 'h':
			help();
			return 0;
		default:
			fprintf(stderr, "Try 'coordd --help'.\n");
			return -EINVAL;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "coordd: unexpected argument '%s'. Try 'coordd --help'.\n",
		        argv[optind]);
		return -EINVAL;
	}
	return 1;
}

/* "FILE:LINE: message", "FILE: message" or "FILE: strerror" for a failed file. */
static void
format_file_error(char *buf, size_t size, const char *path, unsigned line, const char *message,
                  int r)
{
	if (line > 0) {
		(void) snprintf(buf, size, "%s:%u: %s", path, line, message);
	} else if (message[0]) {
		(void) snprintf(buf, size, "%s: %s", path, message);
	} else {
		(void) snprintf(buf, size, "%s: %s", path, strerror(-r));
	}
}

static int
load_config(struct config **ret)
{
	struct config_error err = {0};
	int r = config_load(arg_config, ret, &err);

	if (r < 0) {
		char text[512];
		format_file_error(text, sizeof(text), arg_config, err.line, err.message, r);
		fprintf(stderr, "%s\n", text);
	}
	return r;
}

/*
 * Read the allowlist named by cfg's [security] keys_file (NULL without [security]).
 * On failure fills `text` with "FILE:LINE: reason" and returns a negative errno.
 */
static int
load_keys(const struct config *cfg, struct auth_keys **ret_keys, char *text, size_t size)
{
	struct auth_error err = {0};

	if (!cfg->security.keys_file) {
		*ret_keys = NULL;
		return 0;
	}
	int r = auth_keys_load(cfg->security.keys_file, ret_keys, &err);
	if (r < 0) {
		format_file_error(text, size, cfg->security.keys_file, err.line, err.message, r);
	}
	return r;
}

/*
 * Read the server's secret key (and check its file's mode) when [security] is set;
 * `ret_secret` is "" without it. On failure fills `text` and returns a negative errno.
 */
static int
load_secret(const struct config *cfg, char ret_secret[AUTH_KEY_Z85_LEN + 1], char *text,
            size_t size)
{
	struct auth_error err = {0};
	char public[AUTH_KEY_Z85_LEN + 1];

	ret_secret[0] = '\0';
	if (!cfg->security.secret_key_file) {
		return 0;
	}
	int r = auth_read_secret_key(cfg->security.secret_key_file, ret_secret, public, &err);
	if (r < 0) {
		format_file_error(text, size, cfg->security.secret_key_file, err.line, err.message,
		                  r);
		return r;
	}
	log_info("Server public key: %s (give it to clients)", public);
	return 0;
}

/* The ZAP handler is closed (or never was): nothing is left but signals and timers. */
static void
on_auth_closed(void *data)
{
	struct coordd *d = data;

	uv_close((uv_handle_t *) &d->sigterm, NULL);
	uv_close((uv_handle_t *) &d->sigint, NULL);
	uv_close((uv_handle_t *) &d->sighup, NULL);
	uv_close((uv_handle_t *) &d->watchdog, NULL);
	uv_close((uv_handle_t *) &d->status, NULL);
}

/* The last of the sockets is closed: the ZAP handler that guarded them may go now. */
static void
on_socket_closed(void *data)
{
	struct coordd *d = data;

	if (d->closing > 0 && --d->closing > 0) {
		return;
	}
	if (d->auth) {
		auth_close(d->auth, on_auth_closed, d);
	} else {
		on_auth_closed(d);
	}
}

/* Ingest is done (everything it received is committed, acked and published): close the
 * headquarters' sockets. */
static void
on_ingest_stopped(void *data)
{
	struct coordd *d = data;

	d->closing = (d->query ? 1 : 0) + (d->fanout ? 1 : 0) + (d->metrics ? 1 : 0);
	if (d->closing == 0) {
		on_socket_closed(d);
		return;
	}
	if (d->metrics) {
		/* It frees itself once closed. */
		metrics_close(d->metrics, on_socket_closed, d);
		d->metrics = NULL;
	}
	if (d->query) {
		query_close(d->query, on_socket_closed, d);
	}
	if (d->fanout) {
		fanout_close(d->fanout, on_socket_closed, d);
	}
}

/* ingest_accepted_fn: each committed record goes out on the publish socket. */
static void
on_accepted(void *data, const struct ingest_accepted *rec)
{
	struct coordd *d = data;
	const struct fanout_item item = {
	        .seq = rec->seq,
	        .council = rec->council,
	        .body = rec->body,
	        .envelope = rec->envelope,
	        .envelope_len = rec->envelope_len,
	        .received_at = rec->received_at,
	};

	fanout_publish_item(d->fanout, &item);
}

/* query_stats_fn: what only main knows, for a stats request. */
static void
fill_stats(void *data, Coord__V1__Stats *stats)
{
	struct coordd *d = data;
	struct ingest_counters c = {0};

	if (d->ingest) {
		ingest_get_counters(d->ingest, &c);
		stats->ingest_connections = ingest_connections(d->ingest);
	}
	stats->started_at = d->started_at;
	stats->uptime_ms = uv_now(&d->loop) - d->started_mono;
	stats->accepted = c.accepted;
	stats->duplicate = c.duplicate;
	stats->rejected = c.rejected;
	stats->retry_later = c.retry_later;
	stats->batches = c.batches;
	stats->publish_connections = d->fanout ? fanout_connections(d->fanout) : 0;
	stats->version = (char *) COORDD_VERSION;
}

static void
render_counter(struct metrics_text *t, const char *name, const char *help, uint64_t value)
{
	metrics_text_family(t, name, "counter", help);
	metrics_text_sample(t, name, NULL, (double) value);
}

static void
render_gauge(struct metrics_text *t, const char *name, const char *help, double value)
{
	metrics_text_family(t, name, "gauge", help);
	metrics_text_sample(t, name, NULL, value);
}

/* metrics_render_fn: the /metrics page. */
static void
render_metrics(void *data, struct metrics_text *t)
{
	static const double batch_bounds[] = INGEST_BATCH_BOUNDS;
	static const double commit_bounds[] = INGEST_COMMIT_BOUNDS;
	struct coordd *d = data;
	struct ingest_counters c = {0};
	struct fanout_counters fc = {0};
	struct query_counters qc = {0};
	struct store_stats st = {0};
	struct statvfs vfs;
	char labels[96];

	if (d->ingest) {
		ingest_get_counters(d->ingest, &c);
	}
	if (d->fanout) {
		fanout_get_counters(d->fanout, &fc);
	}
	if (d->query) {
		query_get_counters(d->query, &qc);
	}
	metrics_text_family(t, "coordd_build_info", "gauge", "The running coordd's version.");
	metrics_text_sample(t, "coordd_build_info", "version=\"" COORDD_VERSION "\"", 1);
	render_gauge(t, "coordd_uptime_seconds", "Seconds since coordd started.",
	             (double) (uv_now(&d->loop) - d->started_mono) / 1000);

	render_counter(t, "coordd_messages_received_total", "Messages read from the ingest socket.",
	               c.received);
	metrics_text_family(t, "coordd_messages_total", "counter",
	                    "Messages answered, by the status of their Ack.");
	metrics_text_sample(t, "coordd_messages_total", "status=\"accepted\"", (double) c.accepted);
	metrics_text_sample(t, "coordd_messages_total", "status=\"duplicate\"",
	                    (double) c.duplicate);
	metrics_text_sample(t, "coordd_messages_total", "status=\"rejected\"", (double) c.rejected);
	metrics_text_sample(t, "coordd_messages_total", "status=\"retry_later\"",
	                    (double) c.retry_later);
	metrics_text_family(t, "coordd_rejections_total", "counter",
	                    "REJECTED answers by reason code.");
	for (unsigned i = 0; i < 32; i++) {
		const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(
		        &coord__v1__reason__descriptor, (int) i);
		if (c.rejected_by_reason[i] > 0 && v) {
			(void) snprintf(labels, sizeof(labels), "reason=\"%s\"", v->name);
			metrics_text_sample(t, "coordd_rejections_total", labels,
			                    (double) c.rejected_by_reason[i]);
		}
	}
	metrics_text_family(t, "coordd_limit_hits_total", "counter",
	                    "Messages refused because a limit bit, by the limit's config key.");
	metrics_text_sample(t, "coordd_limit_hits_total", "limit=\"max_message_bytes\"",
	                    (double) c.rejected_by_reason[COORD__V1__REASON__REASON_TOO_LARGE]);
	metrics_text_sample(t, "coordd_limit_hits_total", "limit=\"max_inflight_per_council\"",
	                    (double) c.limit_inflight);
	metrics_text_sample(t, "coordd_limit_hits_total", "limit=\"rate_limit\"",
	                    (double) c.limit_rate);
	metrics_text_sample(t, "coordd_limit_hits_total", "limit=\"query_request_bytes\"",
	                    (double) qc.too_large);
	render_gauge(t, "coordd_limit_senders",
	             "Ingest senders tracked by the per-sender limits (in flight or refilling).",
	             (double) c.senders);
	render_counter(t, "coordd_acks_dropped_total",
	               "Acks libzmq refused to queue (peer gone or at its HWM).", c.acks_dropped);
	render_counter(t, "coordd_batches_total", "Committed write transactions.", c.batches);

	struct metrics_histogram h = {
	        .bounds = batch_bounds,
	        .n_bounds = INGEST_HISTOGRAM_BUCKETS,
	        .counts = c.batch_size_counts,
	        .count = c.batches,
	        .sum = c.batch_size_sum,
	};
	metrics_text_histogram(t, "coordd_batch_size_messages", "Messages per committed batch.",
	                       &h);
	h = (struct metrics_histogram){
	        .bounds = commit_bounds,
	        .n_bounds = INGEST_HISTOGRAM_BUCKETS,
	        .counts = c.commit_seconds_counts,
	        .count = c.batches,
	        .sum = c.commit_seconds_sum,
	};
	metrics_text_histogram(t, "coordd_commit_seconds",
	                       "Time to write and durably commit one batch.", &h);

	render_counter(t, "coordd_items_published_total", "Accepted records published.", fc.items);
	render_counter(t, "coordd_digests_published_total", "Digest sets published.", fc.digests);
	render_counter(t, "coordd_digests_held_total",
	               "Digest sets held back by the fan-out budget (published later).",
	               fc.digests_held);
	render_counter(t, "coordd_digest_seeds_total",
	               "Times the live digests were seeded from the store.", fc.digest_seeds);
	render_counter(t, "coordd_digest_errors_total", "Digests that could not be computed.",
	               fc.digest_errors);
	render_counter(t, "coordd_queries_total", "Query requests answered.", qc.requests);
	render_counter(t, "coordd_query_errors_total", "Query requests answered with an error.",
	               qc.errors);

	metrics_text_family(t, "coordd_connections", "gauge", "Open connections by socket.");
	metrics_text_sample(t, "coordd_connections", "socket=\"ingest\"",
	                    d->ingest ? ingest_connections(d->ingest) : 0);
	metrics_text_sample(t, "coordd_connections", "socket=\"publish\"",
	                    d->fanout ? fanout_connections(d->fanout) : 0);
	metrics_text_sample(t, "coordd_connections", "socket=\"query\"",
	                    d->query ? query_connections(d->query) : 0);

	/* Security: handshakes, connection caps, refused queries, reloads. */
	if (d->auth) {
		struct auth_counters ac;
		auth_get_counters(d->auth, &ac);
		metrics_text_family(t, "coordd_handshakes_total", "counter",
		                    "Connection handshakes decided by the ZAP handler, by result.");
		metrics_text_sample(t, "coordd_handshakes_total", "result=\"accepted\"",
		                    (double) ac.accepted);
		metrics_text_sample(t, "coordd_handshakes_total", "result=\"refused\"",
		                    (double) ac.refused);
		metrics_text_sample(t, "coordd_handshakes_total", "result=\"malformed\"",
		                    (double) ac.malformed);
		metrics_text_family(t, "coordd_connections_refused_total", "counter",
		                    "Connections refused because the socket had max_connections.");
		static const char *const domains[] = {AUTH_DOMAIN_INGEST, AUTH_DOMAIN_PUBLISH,
		                                      AUTH_DOMAIN_QUERY};
		for (size_t i = 0; i < 3; i++) {
			(void) snprintf(labels, sizeof(labels), "socket=\"%s\"", domains[i]);
			metrics_text_sample(t, "coordd_connections_refused_total", labels,
			                    (double) auth_limit_refused(d->auth, domains[i]));
		}
	}
	render_counter(t, "coordd_query_refused_total",
	               "Query requests refused because of the sender's key or role.", qc.refused);
	metrics_text_family(t, "coordd_reloads_total", "counter",
	                    "Configuration reloads (SIGHUP), by result.");
	metrics_text_sample(t, "coordd_reloads_total", "result=\"ok\"", (double) d->reloads_ok);
	metrics_text_sample(t, "coordd_reloads_total", "result=\"failed\"",
	                    (double) d->reloads_failed);

	if (store_get_stats(d->store, &st) >= 0) {
		render_gauge(t, "coordd_store_last_seq", "Highest seq stored.",
		             (double) st.last_seq);
		render_gauge(t, "coordd_store_items", "Items (revisions) stored.",
		             (double) st.items);
		render_gauge(t, "coordd_store_records", "Distinct records stored.",
		             (double) st.records);
		render_gauge(t, "coordd_store_used_bytes", "Bytes of the store in use.",
		             (double) st.used_bytes);
		render_gauge(t, "coordd_store_map_size_bytes", "The store's current map size.",
		             (double) st.map_size);
	}
	if (d->digest) {
		size_t logged, limit;
		digest_log_state(d->digest, &logged, &limit);
		render_gauge(t, "coordd_digest_log_contributions",
		             "Contributions in the digest log not yet folded into the aggregates.",
		             (double) logged);
		render_gauge(t, "coordd_digest_log_limit",
		             "Contributions the digest log holds before a fold starts.",
		             (double) limit);
	}
	if (statvfs(d->cfg->state_dir, &vfs) == 0) {
		render_gauge(t, "coordd_disk_free_bytes",
		             "Bytes free to unprivileged users on the store's file system.",
		             (double) vfs.f_bavail * (double) vfs.f_frsize);
	}
	/* Disk trouble (ingest.h). */
	static const char *const causes[INGEST_FAILURE_X_MAX] = {"disk_full", "map_full",
	                                                         "io_error"};
	metrics_text_family(t, "coordd_commit_failures_total", "counter",
	                    "Batches whose commit failed (answered RETRY_LATER), by cause.");
	for (unsigned i = 0; i < INGEST_FAILURE_X_MAX; i++) {
		(void) snprintf(labels, sizeof(labels), "cause=\"%s\"", causes[i]);
		metrics_text_sample(t, "coordd_commit_failures_total", labels,
		                    (double) c.commit_failures[i]);
	}
	render_gauge(t, "coordd_store_full",
	             "1 while commits fail for want of space (disk or map full), else 0.",
	             c.store_failing && c.failing_cause != INGEST_FAILURE_IO);
	render_gauge(t, "coordd_store_failing", "1 while commits fail for any cause, else 0.",
	             c.store_failing);
	render_gauge(t, "coordd_disk_low",
	             "1 while free space was below [store] min_free_bytes at the last check.",
	             c.disk_low);
	render_gauge(t, "coordd_disk_min_free_bytes", "The [store] min_free_bytes setting.",
	             (double) d->cfg->store.min_free_bytes);
}

/* metrics_health_fn: healthy while serving and the store answers. */
static bool
check_health(void *data, struct metrics_text *t)
{
	struct coordd *d = data;
	struct store_stats st;

	if (d->stopping) {
		metrics_text_printf(t, "stopping\n");
		return false;
	}
	if (store_get_stats(d->store, &st) < 0) {
		metrics_text_printf(t, "store unavailable\n");
		return false;
	}
	metrics_text_printf(t, "ok seq=%" PRIu64 "\n", st.last_seq);
	return true;
}

/*
 * sd_notify() that never blocks. libsystemd's send blocks while the receiver's queue is
 * full (net.unix.max_dgram_qlen, 10 by default): a notify socket nobody reads would stall
 * the loop, and with it the broker. Here such a message is dropped instead. Returns 1 when
 * sent, 0 without $NOTIFY_SOCKET, or a negative errno (dropped).
 */
static int
notify(const char *text)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa = {.sun_family = AF_UNIX};

	if (!path || !*path) {
		return 0;
	}
	size_t n = strlen(path);
	if ((path[0] != '/' && path[0] != '@') || n >= sizeof(sa.sun_path)) {
		return -EINVAL;
	}
	memcpy(sa.sun_path, path, n);
	if (path[0] == '@') {
		sa.sun_path[0] = '\0'; /* abstract namespace */
	}
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		return -errno;
	}
	socklen_t len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + n);
	ssize_t sent = sendto(fd, text, strlen(text), MSG_NOSIGNAL | MSG_DONTWAIT,
	                      (const struct sockaddr *) &sa, len);
	int r = sent < 0 ? -errno : 1;
	(void) close(fd);
	return r;
}

/* notify() with a printf format; the text is cut at 511 bytes (STATUS= lines are short). */
static int notifyf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int
notifyf(const char *fmt, ...)
{
	char text[512];
	va_list ap;

	va_start(ap, fmt);
	(void) vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	return notify(text);
}

/*
 * A one-line summary for systemd: connections, what is stored, the last commit. With
 * `extra` "" (the periodic refresh) it is sent only when it changed, so that a slow reader
 * is not flooded.
 */
static void
notify_status(struct coordd *d, const char *extra)
{
	struct ingest_counters c = {0};
	struct store_stats st = {0};
	char last[64] = "no commit yet";
	char status[sizeof(d->status_text)];
	char text[sizeof(d->status_text) + 64];

	if (d->ingest) {
		ingest_get_counters(d->ingest, &c);
	}
	(void) store_get_stats(d->store, &st);
	if (c.batches != d->status_batches) {
		d->status_batches = c.batches;
		d->last_commit_at = now_ms();
	}
	if (d->last_commit_at > 0) {
		time_t t = (time_t) (d->last_commit_at / 1000);
		struct tm tm;
		(void) gmtime_r(&t, &tm);
		(void) strftime(last, sizeof(last), "last commit %Y-%m-%dT%H:%M:%SZ", &tm);
	}
	(void) snprintf(status, sizeof(status),
	                "Serving: %" PRIu32 " council connections, %" PRIu64
	                " records stored (seq %" PRIu64 "), %s",
	                d->ingest ? ingest_connections(d->ingest) : 0, st.records, st.last_seq,
	                last);
	if (d->store_note[0]) {
		(void) snprintf(status, sizeof(status), "%s", d->store_note);
	}
	if (!extra[0] && strcmp(status, d->status_text) == 0) {
		return;
	}
	(void) snprintf(text, sizeof(text), "%sSTATUS=%s", extra, status);
	if (notify(text) < 0) {
		d->status_text[0] = '\0'; /* dropped: the next refresh sends it again */
		return;
	}
	memcpy(d->status_text, status, sizeof(status));
}

/*
 * ingest_state_fn: disk trouble starts or ends; say so in STATUS=. While it lasts, the
 * trouble is the status (the periodic refresh repeats it rather than the summary, and sends
 * it again if a full notify queue dropped it); once over, one "Serving N councils" line, then
 * the summary again.
 */
static void
on_store_state(void *data, const struct ingest_counters *c)
{
	struct coordd *d = data;
	static const char *const causes[INGEST_FAILURE_X_MAX] = {"disk full", "store map full",
	                                                         "store I/O error"};

	if (c->store_failing) {
		(void) snprintf(d->store_note, sizeof(d->store_note),
		                "Refusing writes (%s): answering RETRY_LATER",
		                causes[c->failing_cause]);
	} else if (c->disk_low) {
		(void) snprintf(d->store_note, sizeof(d->store_note),
		                "Serving %zu councils; low disk space: %" PRIu64 " MiB free",
		                d->cfg->n_councils, c->disk_free_bytes >> 20);
	} else {
		d->store_note[0] = '\0';
		d->status_text[0] = '\0'; /* the next refresh sends the summary */
		(void) notifyf("STATUS=Serving %zu councils", d->cfg->n_councils);
		return;
	}
	notify_status(d, "");
}

static void
on_status_timer(uv_timer_t *h)
{
	notify_status(h->data, "");
}

/* From the loop itself: a loop stuck elsewhere stops these, and systemd restarts us. */
static void
on_watchdog_timer(uv_timer_t *h)
{
	(void) notify("WATCHDOG=1");
}

/* config_restart_fn: a key the running daemon cannot change. */
static void
warn_restart_key(void *data, const char *section, const char *key)
{
	log_warning("Reload: [%s] %s changed, but it applies only at start: restart coordd to "
	            "apply it; keeping the running value",
	            section, key);
}

static int apply_limits(struct coordd *d);

/*
 * SIGHUP: re-read the config file and the keys file; apply both, or neither. Open
 * connections stay; the new allowlist decides new handshakes and every later message.
 */
static void
on_sighup(uv_signal_t *h, int signum)
{
	struct coordd *d = h->data;
	struct config *fresh = NULL;
	struct auth_keys *keys = NULL;
	struct config_error err = {0};
	char text[512];
	int r;

	if (d->stopping) {
		return;
	}
	char reloading[96];
	struct timespec mono;
	(void) clock_gettime(CLOCK_MONOTONIC, &mono);
	(void) snprintf(reloading, sizeof(reloading),
	                "RELOADING=1\nMONOTONIC_USEC=%" PRIu64 "\nSTATUS=Reloading",
	                (uint64_t) mono.tv_sec * 1000000 + (uint64_t) mono.tv_nsec / 1000);
	(void) notify(reloading);
	log_notice("Received SIGHUP, reloading '%s'", arg_config);
	r = config_load(arg_config, &fresh, &err);
	if (r < 0) {
		format_file_error(text, sizeof(text), arg_config, err.line, err.message, r);
		log_error("Reload failed: %s; keeping the running configuration", text);
		goto failed;
	}
	if (!fresh->security.keys_file && d->cfg->security.keys_file) {
		/* [security] went away: the sockets stay CURVE until a restart, so the keys
		 * they need stay too. */
		log_warning("Reload: [security] was removed, but it applies only at start: "
		            "restart coordd to apply it; keeping the running keys file");
		fresh->security.keys_file = strdup(d->cfg->security.keys_file);
		if (!fresh->security.keys_file) {
			log_error(
			        "Reload failed: out of memory; keeping the running configuration");
			goto failed;
		}
	}
	r = load_keys(fresh, &keys, text, sizeof(text));
	if (r < 0) {
		log_error("Reload failed: %s; keeping the running configuration and keys", text);
		goto failed;
	}
	r = config_keep_restart_keys(fresh, d->cfg, warn_restart_key, d);
	if (r < 0) {
		log_error_errno(r, "Reload failed; keeping the running configuration");
		goto failed;
	}

	/* Nothing can fail from here on but the timer restart, which keeps the old timer. */
	log_set_level((enum log_level) fresh->log_level);
	ingest_set_config(d->ingest, fresh);
	query_set_config(d->query, fresh);
	r = fanout_set_config(d->fanout, fresh);
	if (r < 0) {
		log_warning_errno(r, "Reload: failed to restart the digest timer, ignoring");
	}
	if (d->auth && d->cfg->security.keys_file) {
		auth_set_keys(d->auth, keys);
		(void) auth_keys_unref(d->keys);
		d->keys = keys;
		keys = NULL;
	}
	(void) auth_keys_unref(keys);
	config_unref(d->cfg);
	d->cfg = fresh;
	(void) apply_limits(d);
	d->reloads_ok++;
	log_notice("Reloaded '%s': %zu councils, %zu keys", arg_config, d->cfg->n_councils,
	           d->keys ? auth_keys_count(d->keys) : (size_t) 0);
	notify_status(d, "READY=1\n");
	return;

failed:
	(void) auth_keys_unref(keys);
	config_unref(fresh);
	d->reloads_failed++;
	notify_status(d, "READY=1\n");
}

/* auth_event_fn: refused handshakes are warnings (rate-limited: peers may retry at will). */
static void
on_auth_event(const struct auth_event *ev, void *data)
{
	struct coordd *d = data;

	if (ev->status == 200) {
		log_debug("Accepted a connection: domain=%s user='%s' address='%s'", ev->domain,
		          ev->user_id, ev->address);
		return;
	}
	uint64_t now = uv_now(&d->loop);
	if (now - d->refusal_log_ms >= 1000) {
		d->refusal_log_ms = now;
		d->refusal_log_count = 0;
	}
	if (d->refusal_log_count++ < REFUSAL_LOGS_PER_S) {
		log_warning("Refused a connection: reason='%s' domain=%s mechanism=%s "
		            "address='%s' key=%s",
		            ev->reason, ev->domain, ev->mechanism, ev->address,
		            ev->key_z85[0] ? ev->key_z85 : "-");
	}
}

static uint32_t
count_ingest(void *data)
{
	struct coordd *d = data;

	return d->ingest ? ingest_connections(d->ingest) : 0;
}

static uint32_t
count_publish(void *data)
{
	struct coordd *d = data;

	return d->fanout ? fanout_connections(d->fanout) : 0;
}

static uint32_t
count_query(void *data)
{
	struct coordd *d = data;

	return d->query ? query_connections(d->query) : 0;
}

/* The connection caps of the three sockets, from the config in force. */
static int
apply_limits(struct coordd *d)
{
	int r = auth_set_limit(d->auth, AUTH_DOMAIN_INGEST, d->cfg->ingest.max_connections,
	                       count_ingest, d);
	if (r >= 0) {
		r = auth_set_limit(d->auth, AUTH_DOMAIN_PUBLISH, d->cfg->publish.max_connections,
		                   count_publish, d);
	}
	if (r >= 0) {
		r = auth_set_limit(d->auth, AUTH_DOMAIN_QUERY, d->cfg->query.max_connections,
		                   count_query, d);
	}
	return r;
}

static void
on_signal(uv_signal_t *h, int signum)
{
	struct coordd *d = h->data;

	if (d->stopping) {
		return;
	}
	d->stopping = true;
	log_notice("Received %s, stopping: committing and acknowledging what was received",
	           strsignal(signum));
	(void) notify("STOPPING=1\nSTATUS=Stopping");
	ingest_stop(d->ingest, on_ingest_stopped, d);
}

static void
log_summary(struct coordd *d)
{
	struct ingest_counters c;
	struct store_stats st = {0};

	ingest_get_counters(d->ingest, &c);
	(void) store_get_stats(d->store, &st);
	struct fanout_counters fc = {0};
	struct query_counters qc = {0};
	if (d->fanout) {
		fanout_get_counters(d->fanout, &fc);
	}
	if (d->query) {
		query_get_counters(d->query, &qc);
	}
	log_notice("Stopped: received=%" PRIu64 " accepted=%" PRIu64 " duplicate=%" PRIu64
	           " rejected=%" PRIu64 " retry_later=%" PRIu64 " batches=%" PRIu64
	           " batch_waits=%" PRIu64 "/%" PRIu64 " last_seq=%" PRIu64
	           " published_items=%" PRIu64 " published_digests=%" PRIu64 " queries=%" PRIu64,
	           c.received, c.accepted, c.duplicate, c.rejected, c.retry_later, c.batches,
	           c.gathers_full, c.gathers, st.last_seq, fc.items, fc.digests, qc.requests);
}

/* Progress of a store upgrade: a line every UPGRADE_LOG_STEP items. */
#define UPGRADE_LOG_STEP UINT64_C(1000000)
static void
on_upgrade_progress(void *data, uint64_t done, uint64_t total)
{
	uint64_t *next = data;

	if (done >= *next) {
		log_notice("Upgrading the store: %" PRIu64 " of %" PRIu64 " items recounted", done,
		           total);
		/* A service manager waiting for READY=1 is told that the start goes on. */
		(void) notifyf("EXTEND_TIMEOUT_USEC=120000000\nSTATUS=Upgrading the store: %" PRIu64
		               " of %" PRIu64 " items",
		               done, total);
		*next = done + UPGRADE_LOG_STEP;
	}
}

static int
run(struct coordd *d)
{
	int r;

	log_set_level((enum log_level) d->cfg->log_level);

	/* Initialised first so that every exit path can close them. */
	d->sigterm.data = d->sigint.data = d->sighup.data = d;
	d->watchdog.data = d->status.data = d;
	(void) uv_signal_init(&d->loop, &d->sigterm);
	(void) uv_signal_init(&d->loop, &d->sigint);
	(void) uv_signal_init(&d->loop, &d->sighup);
	(void) uv_timer_init(&d->loop, &d->watchdog);
	(void) uv_timer_init(&d->loop, &d->status);

	/* Keys before anything else opens: a bad key file is a config error (exit 78). */
	char secret[AUTH_KEY_Z85_LEN + 1];
	char text[512];
	r = load_secret(d->cfg, secret, text, sizeof(text));
	if (r >= 0) {
		r = load_keys(d->cfg, &d->keys, text, sizeof(text));
	}
	if (r < 0) {
		log_error("%s", text);
		return -EKEYREJECTED;
	}

	const struct store_options so = {
	        .dir = d->cfg->state_dir,
	        .map_size = d->cfg->store.map_size,
	        .map_size_max = d->cfg->store.map_size_max,
	        .sync = d->cfg->store.sync == CONFIG_SYNC_FULL,
	};
	r = store_open(&so, &d->store);
	if (r == -EBUSY) {
		return log_error_errno(r,
		                       "Failed to open the store in '%s': another coordd is "
		                       "using this state directory",
		                       so.dir);
	}
	if (r == -EPROTO) {
		return log_error_errno(r,
		                       "Failed to open the store in '%s': it was written by a "
		                       "newer coordd (schema above %d); upgrade coordd",
		                       so.dir, STORE_SCHEMA_VERSION);
	}
	if (r < 0) {
		return log_error_errno(r, "Failed to open the store in '%s'", so.dir);
	}
	if (!so.sync) {
		log_warning("store.sync = none: commits are not flushed, a power cut can lose "
		            "acknowledged records (UNSAFE)");
	}
	/* A store of an older schema: its aggregates are rebuilt in the new format first (below
	 * schema 3), then its index (below schema 4); each step is one transaction, so a crash
	 * leaves a store that the next start upgrades from where it stands. */
	if (store_schema(d->store) < STORE_SCHEMA_VERSION) {
		struct digest_check_report rep = {0};
		struct store_repair_report irep;
		uint64_t next = 0;
		log_notice("Upgrading the store in '%s' from schema %" PRIu32 " to %d: rebuilding "
		           "%s from the items",
		           so.dir, store_schema(d->store), STORE_SCHEMA_VERSION,
		           store_schema(d->store) < STORE_SCHEMA_DIGEST_VALUES
		                   ? "the aggregates and the index"
		                   : "the index");
		if (store_schema(d->store) < STORE_SCHEMA_DIGEST_VALUES) {
			r = digest_upgrade(d->store, on_upgrade_progress, &next, &rep);
		}
		if (r >= 0) {
			next = 0;
			r = store_upgrade_index(d->store, on_upgrade_progress, &next, &irep);
		}
		if (r < 0) {
			return log_error_errno(
			        r,
			        "Failed to upgrade the store in '%s' (left intact at schema "
			        "%" PRIu32 ")",
			        so.dir, store_schema(d->store));
		}
		log_notice("Upgraded the store in '%s' to schema %d: %" PRIu64 " items, %" PRIu64
		           " records indexed (%" PRIu64 " undecodable items skipped)%s",
		           so.dir, STORE_SCHEMA_VERSION, irep.items, irep.records, irep.skipped,
		           rep.aggregates ? "; aggregates rebuilt" : "");
		/* LMDB keeps every page a write transaction dirtied for reuse until the
		 * environment closes: after a rebuilt index, ~300 MiB on 10 M records.
		 * Reopening gives them back. */
		d->store = store_free(d->store);
		r = store_open(&so, &d->store);
		if (r < 0) {
			return log_error_errno(r, "Failed to open the store in '%s' again", so.dir);
		}
	}
	/* Before anything can write: the aggregates must see every record. */
	r = digest_new(d->store, &d->digest);
	if (r < 0) {
		return log_error_errno(r, "Failed to open the digest table in '%s'", so.dir);
	}

	d->zctx = zmq_ctx_new();
	if (!d->zctx) {
		return log_error_errno(-errno, "Failed to create the ZeroMQ context");
	}
	d->started_at = now_ms();
	d->started_mono = uv_now(&d->loop);

	/* The ZAP handler is bound before any socket, so no handshake goes unchecked. */
	r = auth_new(&d->loop, d->zctx, d->keys, &d->auth);
	if (r >= 0 && secret[0]) {
		r = auth_set_server_key(d->auth, secret);
	}
	explicit_bzero(secret, sizeof(secret));
	if (r < 0) {
		return log_error_errno(r, "Failed to start the ZAP handler");
	}
	auth_set_event_cb(d->auth, on_auth_event, d);

	r = fanout_new(&d->loop, d->zctx, d->auth, d->store, d->digest, d->cfg, &d->fanout);
	if (r < 0) {
		return log_error_errno(r, "Failed to set up the publish socket on '%s'",
		                       d->cfg->publish.endpoint);
	}
	log_notice("Publishing digests and records on %s (%s)", d->cfg->publish.endpoint,
	           config_security_to_string(d->cfg->publish.security));
	r = query_new(&d->loop, d->zctx, d->auth, d->store, d->digest, d->cfg, fill_stats, d,
	              &d->query);
	if (r < 0) {
		return log_error_errno(r, "Failed to set up the query socket on '%s'",
		                       d->cfg->query.endpoint);
	}
	log_notice("Answering queries on %s (%s)", d->cfg->query.endpoint,
	           config_security_to_string(d->cfg->query.security));
	r = ingest_new(&d->loop, d->zctx, d->auth, d->store, d->cfg, on_accepted, d, &d->ingest);
	if (r < 0) {
		return log_error_errno(r, "Failed to set up ingest on '%s'",
		                       d->cfg->ingest.endpoint);
	}
	log_notice("Listening for councils on %s (%s)", d->cfg->ingest.endpoint,
	           config_security_to_string(d->cfg->ingest.security));
	ingest_set_state_fn(d->ingest, on_store_state, d);
	r = apply_limits(d);
	if (r < 0) {
		return log_error_errno(r, "Failed to set the connection limits");
	}

	if (d->cfg->metrics.listen) {
		char host[64];
		uint16_t port = 0;

		(void) config_parse_listen(d->cfg->metrics.listen, host, &port);
		r = metrics_new(&d->loop, host, port, render_metrics, check_health, d, &d->metrics);
		if (r < 0) {
			return log_error_errno(r, "Failed to serve metrics on %s",
			                       d->cfg->metrics.listen);
		}
		log_notice("Serving /metrics and /healthz on http://%s", d->cfg->metrics.listen);
	}

	r = uv_signal_start(&d->sigterm, on_signal, SIGTERM);
	if (r >= 0) {
		r = uv_signal_start(&d->sigint, on_signal, SIGINT);
	}
	if (r >= 0) {
		r = uv_signal_start(&d->sighup, on_sighup, SIGHUP);
	}
	if (r < 0) {
		return log_error_errno(r, "Failed to install signal handlers");
	}
	uint64_t watchdog_usec = 0;
	if (sd_watchdog_enabled(0, &watchdog_usec) > 0 && watchdog_usec > 0) {
		uint64_t every = watchdog_usec / 2000;
		r = uv_timer_start(&d->watchdog, on_watchdog_timer, every ? every : 1,
		                   every ? every : 1);
		if (r < 0) {
			return log_error_errno(r, "Failed to start the watchdog timer");
		}
		log_info("Watchdog: pinging systemd every %" PRIu64 " ms", every);
	}
	r = uv_timer_start(&d->status, on_status_timer, STATUS_INTERVAL_MS, STATUS_INTERVAL_MS);
	if (r < 0) {
		return log_error_errno(r, "Failed to start the status timer");
	}

	struct store_stats st = {0};
	(void) store_get_stats(d->store, &st);
	log_notice("coordd %s ready: %zu councils, store '%s' at seq %" PRIu64, COORDD_VERSION,
	           d->cfg->n_councils, d->cfg->state_dir, st.last_seq);
	notify_status(d, "READY=1\n");
	if (watchdog_usec > 0) {
		(void) notify("WATCHDOG=1");
	}

	(void) uv_run(&d->loop, UV_RUN_DEFAULT);
	log_summary(d);
	return 0;
}

int
main(int argc, char **argv)
{
	struct coordd d = {0};
	int r;

	r = parse_argv(argc, argv);
	if (r <= 0) {
		return r < 0 ? EXIT_USAGE : EXIT_SUCCESS;
	}
	log_setup_from_env();
	(void) signal(SIGPIPE, SIG_IGN);

	r = load_config(&d.cfg);
	if (r < 0) {
		return r == -EINVAL ? CONFIG_EXIT_INVALID : EXIT_FAILURE;
	}
	if (arg_check_only) {
		/* The key files are part of the configuration: check them too. */
		char secret[AUTH_KEY_Z85_LEN + 1], text[512];
		struct auth_keys *keys = NULL;
		r = load_secret(d.cfg, secret, text, sizeof(text));
		explicit_bzero(secret, sizeof(secret));
		if (r >= 0) {
			r = load_keys(d.cfg, &keys, text, sizeof(text));
		}
		if (r < 0) {
			fprintf(stderr, "%s\n", text);
		} else {
			printf("%s: OK (%zu councils, %zu keys)\n", arg_config, d.cfg->n_councils,
			       keys ? auth_keys_count(keys) : (size_t) 0);
		}
		(void) auth_keys_unref(keys);
		config_unref(d.cfg);
		return r < 0 ? CONFIG_EXIT_INVALID : EXIT_SUCCESS;
	}

	r = uv_loop_init(&d.loop);
	if (r < 0) {
		log_error_errno(r, "Failed to initialise the event loop");
		config_unref(d.cfg);
		return EXIT_FAILURE;
	}
	r = run(&d);
	if (r < 0) {
		/* Startup failed: close whatever was opened; handles close on one more turn. */
		if (d.ingest) {
			ingest_stop(d.ingest, on_ingest_stopped, &d);
		} else {
			on_ingest_stopped(&d);
		}
		(void) uv_run(&d.loop, UV_RUN_DEFAULT);
	}
	d.ingest = ingest_free(d.ingest);
	d.query = query_free(d.query);
	d.fanout = fanout_free(d.fanout);
	d.auth = auth_free(d.auth);
	d.keys = auth_keys_unref(d.keys);
	if (d.zctx) {
		(void) zmq_ctx_term(d.zctx);
	}
	/* After every writer is gone: it removes the store hooks. */
	d.digest = digest_free(d.digest);
	d.store = store_free(d.store);
	if (uv_loop_close(&d.loop) != 0) {
		log_warning("Event loop still had open handles at exit");
	}
	config_unref(d.cfg);
	if (r == -EKEYREJECTED) {
		return CONFIG_EXIT_INVALID;
	}
	return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}

/*
 * main: arguments, startup order, signals, sd_notify, shutdown order.
 *
 * Startup: config -> store -> digest (its store hooks, before the first write) -> zmq
 * context -> fanout (publish socket) -> query (query socket) -> ingest (councils' socket;
 * its committed records go to fanout) -> READY=1 once all three are bound.
 * Shutdown on SIGTERM or SIGINT: STOPPING=1, ingest stops reading and commits, acks and
 * publishes what it received, its socket closes; then the query and publish sockets and the
 * metrics server close;
 * the loop runs until idle; then the zmq context, digest, store and config go.
 * Exit status: 0 after a clean stop, 78 (EX_CONFIG) for a bad config, 1 for other startup
 * failures, 2 for bad arguments.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>

#include <systemd/sd-daemon.h>
#include <uv.h>
#include <zmq.h>

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
	uv_signal_t sigterm;
	uv_signal_t sigint;
	uv_signal_t sighup;
	bool stopping;
	unsigned closing;      /* sockets (query, fanout, metrics) still closing */
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
	       "received. Documentation: docs/OPERATIONS.md.\n",
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

static int
load_config(struct config **ret)
{
	struct config_error err = {0};
	int r = config_load(arg_config, ret, &err);

	if (r < 0) {
		if (err.line > 0) {
			fprintf(stderr, "%s:%u: %s\n", arg_config, err.line, err.message);
		} else if (err.message[0]) {
			fprintf(stderr, "%s: %s\n", arg_config, err.message);
		} else {
			fprintf(stderr, "%s: %s\n", arg_config, strerror(-r));
		}
	}
	return r;
}

/* The last of the sockets is closed: nothing is left but the signal handles. */
static void
on_socket_closed(void *data)
{
	struct coordd *d = data;

	if (d->closing > 0 && --d->closing > 0) {
		return;
	}
	uv_close((uv_handle_t *) &d->sigterm, NULL);
	uv_close((uv_handle_t *) &d->sigint, NULL);
	uv_close((uv_handle_t *) &d->sighup, NULL);
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
	if (statvfs(d->cfg->state_dir, &vfs) == 0) {
		render_gauge(t, "coordd_disk_free_bytes",
		             "Bytes free to unprivileged users on the store's file system.",
		             (double) vfs.f_bavail * (double) vfs.f_frsize);
	}
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

/* SIGHUP must not stop the broker (its default action would). Reloading the config in
 * place is not built yet: say so, and keep serving with the config in force. */
static void
on_sighup(uv_signal_t *h, int signum)
{
	log_warning("Received SIGHUP: reloading the configuration is not supported yet; "
	            "restart coordd to apply changes, ignoring");
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
	(void) sd_notify(0, "STOPPING=1\nSTATUS=Stopping");
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
	           " last_seq=%" PRIu64 " published_items=%" PRIu64 " published_digests=%" PRIu64
	           " queries=%" PRIu64,
	           c.received, c.accepted, c.duplicate, c.rejected, c.retry_later, c.batches,
	           st.last_seq, fc.items, fc.digests, qc.requests);
}

static int
run(struct coordd *d)
{
	int r;

	log_set_level((enum log_level) d->cfg->log_level);

	/* Initialised first so that every exit path can close them. */
	d->sigterm.data = d->sigint.data = d->sighup.data = d;
	(void) uv_signal_init(&d->loop, &d->sigterm);
	(void) uv_signal_init(&d->loop, &d->sigint);
	(void) uv_signal_init(&d->loop, &d->sighup);

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
	r = fanout_new(&d->loop, d->zctx, d->store, d->digest, d->cfg, &d->fanout);
	if (r < 0) {
		return log_error_errno(r, "Failed to set up the publish socket on '%s'",
		                       d->cfg->publish.endpoint);
	}
	log_notice("Publishing digests and records on %s", d->cfg->publish.endpoint);
	r = query_new(&d->loop, d->zctx, d->store, d->digest, d->cfg, fill_stats, d, &d->query);
	if (r < 0) {
		return log_error_errno(r, "Failed to set up the query socket on '%s'",
		                       d->cfg->query.endpoint);
	}
	log_notice("Answering queries on %s", d->cfg->query.endpoint);
	r = ingest_new(&d->loop, d->zctx, d->store, d->cfg, on_accepted, d, &d->ingest);
	if (r < 0) {
		return log_error_errno(r, "Failed to set up ingest on '%s'",
		                       d->cfg->ingest.endpoint);
	}
	log_notice("Listening for councils on %s", d->cfg->ingest.endpoint);

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

	struct store_stats st = {0};
	(void) store_get_stats(d->store, &st);
	log_notice("coordd %s ready: %zu councils, store '%s' at seq %" PRIu64, COORDD_VERSION,
	           d->cfg->n_councils, d->cfg->state_dir, st.last_seq);
	(void) sd_notifyf(0, "READY=1\nSTATUS=Serving %zu councils, store at seq %" PRIu64,
	                  d->cfg->n_councils, st.last_seq);

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
		printf("%s: OK (%zu councils)\n", arg_config, d.cfg->n_councils);
		config_unref(d.cfg);
		return EXIT_SUCCESS;
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
	return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}

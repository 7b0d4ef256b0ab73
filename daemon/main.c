/*
 * main: arguments, startup order, signals, sd_notify, shutdown order.
 *
 * Startup: config -> store -> zmq context -> ingest (binds) -> READY=1. Shutdown on SIGTERM
 * or SIGINT: STOPPING=1, ingest stops reading and commits and acks what it received, its
 * socket closes, the loop runs until idle, then the zmq context, store and config go.
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

#include <systemd/sd-daemon.h>
#include <uv.h>
#include <zmq.h>

#include "config.h"
#include "coordd-version.h"
#include "ingest.h"
#include "log.h"
#include "store.h"

#define EXIT_USAGE 2

static const char *arg_config = "/etc/coordd/coordd.conf";
static bool arg_check_only = false;

struct coordd {
	uv_loop_t loop;
	struct config *cfg;
	struct store *store;
	void *zctx;
	struct ingest *ingest;
	uv_signal_t sigterm;
	uv_signal_t sigint;
	bool stopping;
};

static void
help(void)
{
	printf("Usage: coordd [OPTION]...\n"
	       "The coordd broker: takes activity records from coordinating councils over\n"
	       "ZeroMQ, stores them durably in LMDB and acknowledges each once it is on disk.\n"
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

static void
on_ingest_stopped(void *data)
{
	struct coordd *d = data;

	uv_close((uv_handle_t *) &d->sigterm, NULL);
	uv_close((uv_handle_t *) &d->sigint, NULL);
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
	log_notice("Stopped: received=%" PRIu64 " accepted=%" PRIu64 " duplicate=%" PRIu64
	           " rejected=%" PRIu64 " retry_later=%" PRIu64 " batches=%" PRIu64
	           " last_seq=%" PRIu64,
	           c.received, c.accepted, c.duplicate, c.rejected, c.retry_later, c.batches,
	           st.last_seq);
}

static int
run(struct coordd *d)
{
	int r;

	log_set_level((enum log_level) d->cfg->log_level);

	/* Initialised first so that every exit path can close them. */
	d->sigterm.data = d->sigint.data = d;
	(void) uv_signal_init(&d->loop, &d->sigterm);
	(void) uv_signal_init(&d->loop, &d->sigint);

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

	d->zctx = zmq_ctx_new();
	if (!d->zctx) {
		return log_error_errno(-errno, "Failed to create the ZeroMQ context");
	}
	r = ingest_new(&d->loop, d->zctx, d->store, d->cfg, &d->ingest);
	if (r < 0) {
		return log_error_errno(r, "Failed to set up ingest on '%s'",
		                       d->cfg->ingest.endpoint);
	}
	log_notice("Listening for councils on %s", d->cfg->ingest.endpoint);

	r = uv_signal_start(&d->sigterm, on_signal, SIGTERM);
	if (r >= 0) {
		r = uv_signal_start(&d->sigint, on_signal, SIGINT);
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
	if (d.zctx) {
		(void) zmq_ctx_term(d.zctx);
	}
	d.store = store_free(d.store);
	if (uv_loop_close(&d.loop) != 0) {
		log_warning("Event loop still had open handles at exit");
	}
	config_unref(d.cfg);
	return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}

/*
 * coord-watch: the live digest of one scope, Clone-style.
 *
 * It subscribes to the scope's digest topic first, then fetches the current digests (whole
 * campaign, last 24 h, last hour) from the query socket, then applies the DigestSets the
 * broker publishes. A publication is applied only when it is newer than what is shown
 * (last_seq); one with the same or an older last_seq (the broker repeats its last value
 * whenever anyone subscribes) is skipped. A publication whose prev_seq is not the last_seq
 * of the previous one applied is a gap (something was dropped): the digests are fetched
 * again. So is a reconnect to the publish socket, seen through zmq_socket_monitor (after a
 * broker restart the chain of prev_seq starts again at 0).
 *
 * Every update is printed with the time it arrived; with --json as one JSON object per line.
 * Live updates carry each line's distinct counts and the digest's total and category lines,
 * not the lists of codes (docs/PROTOCOL.md): render.c makes the same sentences from either.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <zmq.h>

#include "coord.pb-c.h"
#include "coordd-version.h"
#include "pbjson.h"
#include "hqlib.h"
#include "keyopt.h"
#include "render.h"

#define EXIT_BROKER 1
#define EXIT_USAGE 2
#define EXIT_UNREACHABLE 3

#define DEFAULT_PUBLISH "tcp://127.0.0.1:7702"
#define DEFAULT_QUERY "tcp://127.0.0.1:7703"
#define N_WINDOWS 3
#define MESSAGE_MAX (64 * 1024 * 1024)

static const Coord__V1__Window windows[N_WINDOWS] = {
        COORD__V1__WINDOW__WINDOW_ALL,
        COORD__V1__WINDOW__WINDOW_LAST_24H,
        COORD__V1__WINDOW__WINDOW_LAST_1H,
};

static const char *arg_publish = DEFAULT_PUBLISH;
static const char *arg_query = DEFAULT_QUERY;
static const char *arg_council = NULL;
static const char *arg_country = NULL;
static bool arg_json = false;
static unsigned long arg_count = 0;
static double arg_timeout = 5.0;
static unsigned arg_headlines = 5;
static const char *arg_server_key = NULL;
static const char *arg_key = NULL;

static volatile sig_atomic_t stop_signal = 0;

struct watch {
	void *ctx;
	void *sub;
	void *mon;
	void *query;
	void *query_mon; /* handshake failures of query (keyopt) */
	struct keyopt keys;
	char topic[80];
	Coord__V1__Scope scope;
	uint64_t next_id;

	Coord__V1__Digest *digests[N_WINDOWS]; /* what is shown, owned */
	uint64_t last_seq;                     /* of what is shown */
	uint64_t live_last; /* last_seq of the last publication applied; 0 after a fetch */
	unsigned long updates;
	bool disconnected;
	int64_t last_update_mono;
};

static void
help(void)
{
	printf("Usage: coord-watch [OPTION]...\n"
	       "Watch the live digest of the whole campaign, one council or one country: fetch\n"
	       "the current digests from the query socket, then apply the updates coordd\n"
	       "publishes. A missed update (a gap in prev_seq) or a reconnect makes it fetch\n"
	       "again, so what it shows is never behind by a lost message. Each update shows\n"
	       "the whole campaign, the last 24 hours and the last hour, and when it arrived.\n"
	       "\n"
	       "  -p, --publish=ENDPOINT  the publish socket (default %s)\n"
	       "  -q, --query=ENDPOINT    the query socket (default %s)\n"
	       "  -c, --council=ID        watch one council's records\n"
	       "  -C, --country=CC        watch one country (where the activity happened)\n"
	       "  -n, --headlines=N       newest records to show, 0 to 50 (default 5)\n"
	       "      --json              one JSON object per update (JSON Lines): topic, source\n"
	       "                          (query or live), updatedAt, lastSeq, digests (the\n"
	       "                          proto3 JSON mapping of each Digest: distinct counts,\n"
	       "                          total and categories; the code lists only in a\n"
	       "                          query update)\n"
	       "      --count=N           exit after N updates (the first digest is update 1)\n"
	       "  -t, --timeout=SECONDS   how long coordd may stay silent when an answer is due:\n"
	       "                          a query, or with --count the next update (default 5)\n"
	       "      --server-key=KEY    CURVE: the broker's public key, Z85 or a .public file\n"
	       "                          ($COORD_SERVER_KEY)\n"
	       "      --key=FILE          CURVE: your secret key file, NAME.secret, mode 0600\n"
	       "                          ($COORD_KEY); a subscriber or admin key; both keys or\n"
	       "                          neither\n"
	       "  -h, --help              print this help and exit\n"
	       "      --version           print the version and exit\n"
	       "\n"
	       "Runs until interrupted (Ctrl-C) or --count updates were shown.\n"
	       "Exit status: 0 interrupted or --count reached; 1 coordd answered with an error;\n"
	       "2 bad usage or a bad key file; 3 coordd did not answer within the timeout (not\n"
	       "running or unreachable, or it refused the key: printed).\n",
	       DEFAULT_PUBLISH, DEFAULT_QUERY);
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int
usage_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	int r = hq_usage_verror("coord-watch", fmt, ap);
	va_end(ap);
	return r;
}

static int64_t
wall_ms(void)
{
	struct timespec ts;

	(void) clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
on_signal(int sig)
{
	stop_signal = sig;
}

/* An owned copy of a Digest (the original belongs to a larger message). */
static Coord__V1__Digest *
dup_digest(const Coord__V1__Digest *d)
{
	size_t size = coord__v1__digest__get_packed_size(d);
	uint8_t *buf = malloc(size ? size : 1);

	if (!buf) {
		return NULL;
	}
	(void) coord__v1__digest__pack(d, buf);
	Coord__V1__Digest *copy = coord__v1__digest__unpack(NULL, size, buf);
	free(buf);
	return copy;
}

static void
set_digests(struct watch *w, Coord__V1__Digest **digests)
{
	for (int i = 0; i < N_WINDOWS; i++) {
		if (w->digests[i]) {
			coord__v1__digest__free_unpacked(w->digests[i], NULL);
		}
		w->digests[i] = digests[i];
	}
}

/* Print the shown digests as an update that came from `source`. */
static int
show(struct watch *w, const char *source, uint64_t prev_seq)
{
	char when[RENDER_TIME_MAX], num[RENDER_NUMBER_MAX];
	static const char *const titles[N_WINDOWS] = {"Whole campaign", "Last 24 hours",
	                                              "Last hour"};

	render_time(wall_ms(), when, sizeof(when));
	w->updates++;
	w->last_update_mono = hq_mono_ms();
	if (arg_json) {
		json_t *obj = json_object(), *arr = json_array();
		char seq[32];
		(void) snprintf(seq, sizeof(seq), "%" PRIu64, w->last_seq);
		json_object_set_new(obj, "topic", json_string(w->topic));
		json_object_set_new(obj, "source", json_string(source));
		json_object_set_new(obj, "updatedAt", json_string(when));
		json_object_set_new(obj, "lastSeq", json_string(seq));
		(void) snprintf(seq, sizeof(seq), "%" PRIu64, prev_seq);
		json_object_set_new(obj, "prevSeq", json_string(seq));
		for (int i = 0; i < N_WINDOWS; i++) {
			char *text = NULL;
			json_error_t err;
			if (coord__pbjson_encode(&w->digests[i]->base, 0, &text) < 0) {
				json_decref(obj);
				json_decref(arr);
				fprintf(stderr, "coord-watch: cannot write a digest as JSON\n");
				return EXIT_BROKER;
			}
			json_array_append_new(arr, json_loads(text, 0, &err));
			free(text);
		}
		json_object_set_new(obj, "digests", arr);
		char *line = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
		json_decref(obj);
		if (!line) {
			fprintf(stderr, "coord-watch: out of memory\n");
			return EXIT_BROKER;
		}
		printf("%s\n", line);
		free(line);
	} else {
		printf("== %s updated %s, up to seq %s (%s) ==\n", w->topic, when,
		       render_number(w->last_seq, num, sizeof(num)), source);
		for (int i = 0; i < N_WINDOWS; i++) {
			char *text = NULL;
			unsigned flags = RENDER_INDENT | (i == 0 ? RENDER_HEADLINES : 0);
			if (render_digest(w->digests[i], flags, &text) < 0) {
				fprintf(stderr, "coord-watch: out of memory\n");
				return EXIT_BROKER;
			}
			printf("%s:\n%s", titles[i], text);
			free(text);
		}
		printf("\n");
	}
	(void) fflush(stdout);
	return 0;
}

/*
 * Ask the query socket for one digest. Returns 0 with *ret (owned), or an exit status.
 */
static int
ask_digest(struct watch *w, Coord__V1__Window window, Coord__V1__Digest **ret)
{
	Coord__V1__QueryRequest req = COORD__V1__QUERY_REQUEST__INIT;
	Coord__V1__DigestRequest dr = COORD__V1__DIGEST_REQUEST__INIT;
	dr.scope = &w->scope;
	dr.window = window;
	dr.headlines = arg_headlines;
	req.request_id = ++w->next_id;
	req.body_case = COORD__V1__QUERY_REQUEST__BODY_DIGEST;
	req.digest = &dr;
	const struct hq_query q = {
	        .prog = "coord-watch",
	        .sock = w->query,
	        .mon = w->query_mon,
	        .curve = w->keys.curve,
	        .endpoint = arg_query,
	        .timeout = arg_timeout,
	        .answer_max = MESSAGE_MAX,
	        .stop = &stop_signal,
	};
	Coord__V1__QueryResponse *resp = NULL;
	int r = hq_ask(&q, &req, &resp);
	if (r != 0) {
		return r;
	}
	if (resp->body_case != COORD__V1__QUERY_RESPONSE__BODY_DIGEST ||
	    !(*ret = dup_digest(resp->digest))) {
		fprintf(stderr, "coord-watch: unexpected answer from coordd\n");
		r = EXIT_BROKER;
	}
	coord__v1__query_response__free_unpacked(resp, NULL);
	return r;
}

/* Fetch the three current digests and show them. Returns 0 or an exit status. */
static int
fetch(struct watch *w)
{
	Coord__V1__Digest *got[N_WINDOWS] = {NULL};
	uint64_t last = UINT64_MAX;

	for (int i = 0; i < N_WINDOWS; i++) {
		int r = ask_digest(w, windows[i], &got[i]);
		if (r != 0) {
			for (int j = 0; j < i; j++) {
				coord__v1__digest__free_unpacked(got[j], NULL);
			}
			return r;
		}
		if (got[i]->last_seq < last) {
			last = got[i]->last_seq;
		}
	}
	set_digests(w, got);
	w->last_seq = last;
	w->live_last = 0;
	return show(w, "query", 0);
}

/*
 * One message from the publish socket. Returns 0, 1 when the digests must be fetched again,
 * or an exit status (> 1).
 */
static int
on_publication(struct watch *w)
{
	zmq_msg_t frames[2];
	int n = 0;
	bool more = true;
	int r = 0;

	/* Two frames, topic and Publication; anything longer is read and dropped. */
	while (more) {
		zmq_msg_t extra;
		zmq_msg_t *m = n < 2 ? &frames[n] : &extra;
		(void) zmq_msg_init(m);
		if (zmq_msg_recv(m, w->sub, ZMQ_DONTWAIT) < 0) {
			(void) zmq_msg_close(m);
			break;
		}
		more = zmq_msg_more(m);
		if (m == &extra) {
			(void) zmq_msg_close(m);
		}
		n++;
	}
	if (n != 2 || zmq_msg_size(&frames[1]) > MESSAGE_MAX) {
		for (int i = 0; i < (n < 2 ? n : 2); i++) {
			(void) zmq_msg_close(&frames[i]);
		}
		return 0;
	}
	Coord__V1__Publication *pub = coord__v1__publication__unpack(NULL, zmq_msg_size(&frames[1]),
	                                                             zmq_msg_data(&frames[1]));
	bool ours = zmq_msg_size(&frames[0]) == strlen(w->topic) &&
	            memcmp(zmq_msg_data(&frames[0]), w->topic, strlen(w->topic)) == 0;
	(void) zmq_msg_close(&frames[0]);
	(void) zmq_msg_close(&frames[1]);
	if (!pub) {
		return 0;
	}
	if (!ours || pub->body_case != COORD__V1__PUBLICATION__BODY_DIGESTS ||
	    pub->digests->n_digests != N_WINDOWS || pub->last_seq <= w->last_seq) {
		/* Not ours, or not newer than what is shown (a repeated last value). */
		coord__v1__publication__free_unpacked(pub, NULL);
		return 0;
	}
	/* After a fetch, anything published since the fetched state may precede this one. */
	bool gap = w->live_last ? pub->prev_seq != w->live_last : pub->prev_seq > w->last_seq;
	if (gap) {
		coord__v1__publication__free_unpacked(pub, NULL);
		return 1;
	}
	Coord__V1__Digest *copies[N_WINDOWS] = {NULL};
	for (int i = 0; i < N_WINDOWS; i++) {
		copies[i] = dup_digest(pub->digests->digests[i]);
		if (!copies[i]) {
			r = EXIT_BROKER;
		}
	}
	if (r != 0) {
		for (int i = 0; i < N_WINDOWS; i++) {
			if (copies[i]) {
				coord__v1__digest__free_unpacked(copies[i], NULL);
			}
		}
		fprintf(stderr, "coord-watch: out of memory\n");
	} else {
		set_digests(w, copies);
		w->last_seq = pub->last_seq;
		w->live_last = pub->last_seq;
		r = show(w, "live", pub->prev_seq);
	}
	coord__v1__publication__free_unpacked(pub, NULL);
	return r;
}

/*
 * One monitor event of the SUB socket. Returns 1 when the digests must be fetched again, or
 * EXIT_UNREACHABLE (printed) when the broker refused the handshake.
 */
static int
on_monitor(struct watch *w)
{
	zmq_msg_t m;
	uint16_t event = 0;
	uint32_t value = 0;
	char why[KEYOPT_MESSAGE_MAX];

	(void) zmq_msg_init(&m);
	if (zmq_msg_recv(&m, w->mon, ZMQ_DONTWAIT) < 0) {
		(void) zmq_msg_close(&m);
		return 0;
	}
	if (zmq_msg_size(&m) >= sizeof(event) + sizeof(value)) {
		memcpy(&event, zmq_msg_data(&m), sizeof(event));
		memcpy(&value, (const char *) zmq_msg_data(&m) + sizeof(event), sizeof(value));
	}
	while (zmq_msg_more(&m)) {
		if (zmq_msg_recv(&m, w->mon, ZMQ_DONTWAIT) < 0) {
			break;
		}
	}
	(void) zmq_msg_close(&m);
	if (keyopt_event_message(event, value, w->keys.curve, arg_publish, why, sizeof(why))) {
		fprintf(stderr, "coord-watch: %s\n", why);
		return EXIT_UNREACHABLE;
	}
	if (event == ZMQ_EVENT_DISCONNECTED) {
		w->disconnected = true;
	} else if (event == ZMQ_EVENT_CONNECTED && w->disconnected) {
		w->disconnected = false;
		return 1;
	}
	return 0;
}

static int
setup(struct watch *w)
{
	int linger = 0;

	w->ctx = zmq_ctx_new();
	if (!w->ctx) {
		return -ENOMEM;
	}
	w->sub = zmq_socket(w->ctx, ZMQ_SUB);
	w->query = zmq_socket(w->ctx, ZMQ_DEALER);
	w->mon = zmq_socket(w->ctx, ZMQ_PAIR);
	if (!w->sub || !w->query || !w->mon) {
		return -zmq_errno();
	}
	(void) zmq_setsockopt(w->sub, ZMQ_LINGER, &linger, sizeof(linger));
	(void) zmq_setsockopt(w->query, ZMQ_LINGER, &linger, sizeof(linger));
	(void) zmq_setsockopt(w->mon, ZMQ_LINGER, &linger, sizeof(linger));
	char endpoint[64];
	(void) snprintf(endpoint, sizeof(endpoint), "inproc://coord-watch-monitor-%d",
	                (int) getpid());
	if (zmq_socket_monitor(w->sub, endpoint,
	                       ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED |
	                               ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
	                               ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) < 0 ||
	    zmq_connect(w->mon, endpoint) < 0) {
		return -zmq_errno();
	}
	int r = keyopt_apply(&w->keys, w->sub);
	if (r == 0) {
		r = keyopt_apply(&w->keys, w->query);
	}
	if (r < 0) {
		return r;
	}
	w->query_mon = keyopt_monitor(w->ctx, w->query, "coord-watch-query");
	if (!w->query_mon) {
		return -zmq_errno();
	}
	/* Subscribe before fetching: nothing published after the fetch can be missed. */
	if (zmq_setsockopt(w->sub, ZMQ_SUBSCRIBE, w->topic, strlen(w->topic)) < 0) {
		return -zmq_errno();
	}
	if (zmq_connect(w->sub, arg_publish) < 0) {
		fprintf(stderr, "coord-watch: bad --publish endpoint '%s': %s\n", arg_publish,
		        zmq_strerror(zmq_errno()));
		return -EINVAL;
	}
	if (zmq_connect(w->query, arg_query) < 0) {
		fprintf(stderr, "coord-watch: bad --query endpoint '%s': %s\n", arg_query,
		        zmq_strerror(zmq_errno()));
		return -EINVAL;
	}
	w->next_id = ((uint64_t) time(NULL) << 20) ^ ((uint64_t) getpid() << 4);
	return 0;
}

static void
teardown(struct watch *w)
{
	if (w->sub) {
		(void) zmq_socket_monitor(w->sub, NULL, 0);
		(void) zmq_close(w->sub);
	}
	if (w->mon) {
		(void) zmq_close(w->mon);
	}
	if (w->query_mon) {
		(void) zmq_socket_monitor(w->query, NULL, 0);
		(void) zmq_close(w->query_mon);
	}
	if (w->query) {
		(void) zmq_close(w->query);
	}
	keyopt_done(&w->keys);
	if (w->ctx) {
		(void) zmq_ctx_term(w->ctx);
	}
	for (int i = 0; i < N_WINDOWS; i++) {
		if (w->digests[i]) {
			coord__v1__digest__free_unpacked(w->digests[i], NULL);
		}
	}
}

static int
run(struct watch *w)
{
	int r = fetch(w);

	while (r == 0 && !stop_signal) {
		if (arg_count && w->updates >= arg_count) {
			return 0;
		}
		long wait = -1;
		if (arg_count) {
			int64_t left =
			        w->last_update_mono + (int64_t) (arg_timeout * 1000) - hq_mono_ms();
			if (left <= 0) {
				fprintf(stderr,
				        "coord-watch: no update from %s within %g s (%lu of %lu "
				        "shown)\n",
				        arg_publish, arg_timeout, w->updates, arg_count);
				return EXIT_UNREACHABLE;
			}
			wait = (long) left;
		}
		zmq_pollitem_t items[2] = {
		        {.socket = w->sub, .events = ZMQ_POLLIN},
		        {.socket = w->mon, .events = ZMQ_POLLIN},
		};
		if (zmq_poll(items, 2, wait) < 0) {
			if (zmq_errno() == EINTR) {
				continue;
			}
			fprintf(stderr, "coord-watch: %s\n", zmq_strerror(zmq_errno()));
			return EXIT_BROKER;
		}
		bool refetch = false;
		if (items[1].revents & ZMQ_POLLIN) {
			int m = on_monitor(w);
			if (m > 1) {
				return m;
			}
			refetch = m == 1;
		}
		if (items[0].revents & ZMQ_POLLIN) {
			int p = on_publication(w);
			if (p > 1) {
				return p;
			}
			refetch = refetch || p == 1;
		}
		if (refetch) {
			r = fetch(w);
		}
	}
	return r == -EINTR ? 0 : r;
}

int
main(int argc, char **argv)
{
	enum { ARG_VERSION = HQ_OPT_VERSION, ARG_JSON, ARG_COUNT, ARG_SERVER_KEY, ARG_KEY };
	static const struct option options[] = {
	        {"publish", required_argument, NULL, 'p'},
	        {"query", required_argument, NULL, 'q'},
	        {"council", required_argument, NULL, 'c'},
	        {"country", required_argument, NULL, 'C'},
	        {"headlines", required_argument, NULL, 'n'},
	        {"json", no_argument, NULL, ARG_JSON},
	        {"count", required_argument, NULL, ARG_COUNT},
	        {"timeout", required_argument, NULL, 't'},
	        {"help", no_argument, NULL, 'h'},
	        {"version", no_argument, NULL, ARG_VERSION},
	        {"server-key", required_argument, NULL, ARG_SERVER_KEY},
	        {"key", required_argument, NULL, ARG_KEY},
	        {0},
	};
	struct watch w = {0};
	char *end;
	unsigned long n;
	int opt, r;

	while ((opt = getopt_long(argc, argv, "p:q:c:C:n:t:h", options, NULL)) >= 0) {
		switch (opt) {
		case 'p':
			arg_publish = optarg;
			break;
		case 'q':
			arg_query = optarg;
			break;
		case 'c':
			arg_council = optarg;
			break;
		case 'C':
			arg_country = optarg;
			break;
		case 'n':
			errno = 0;
			n = strtoul(optarg, &end, 10);
			if (errno || *end || optarg[0] < '0' || optarg[0] > '9' || n > 50) {
				return usage_error("bad --headlines '%s': use 0 to 50", optarg);
			}
			arg_headlines = (unsigned) n;
			break;
		case ARG_JSON:
			arg_json = true;
			break;
		case ARG_COUNT:
			errno = 0;
			n = strtoul(optarg, &end, 10);
			if (errno || *end || optarg[0] < '1' || optarg[0] > '9') {
				return usage_error("bad --count '%s': use a number above 0",
				                   optarg);
			}
			arg_count = n;
			break;
		case ARG_SERVER_KEY:
			arg_server_key = optarg;
			break;
		case ARG_KEY:
			arg_key = optarg;
			break;
		default:
			/* -t, -h, --version, and what getopt refused. */
			r = hq_common_option("coord-watch", opt, optarg, &arg_timeout, help);
			if (r != HQ_OPTION_HANDLED) {
				return r;
			}
			break;
		}
	}
	if (optind < argc) {
		return usage_error("unexpected argument '%s'", argv[optind]);
	}
	if (arg_council && arg_country) {
		return usage_error("give at most one of --council and --country");
	}
	const char *id = arg_council ? arg_council : arg_country;
	if (id && (strlen(id) == 0 || strlen(id) > 32 || strchr(id, '/'))) {
		return usage_error("bad scope id '%s'", id);
	}
	w.scope = (Coord__V1__Scope) COORD__V1__SCOPE__INIT;
	if (arg_council) {
		w.scope.kind = COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNCIL;
		w.scope.id = (char *) arg_council;
		(void) snprintf(w.topic, sizeof(w.topic), "digest/council/%s/", arg_council);
	} else if (arg_country) {
		w.scope.kind = COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNTRY;
		w.scope.id = (char *) arg_country;
		(void) snprintf(w.topic, sizeof(w.topic), "digest/country/%s/", arg_country);
	} else {
		w.scope.kind = COORD__V1__SCOPE_KIND__SCOPE_KIND_ALL;
		(void) snprintf(w.topic, sizeof(w.topic), "digest/all/");
	}

	char why[KEYOPT_MESSAGE_MAX];
	if (keyopt_load(arg_server_key, arg_key, &w.keys, why, sizeof(why)) < 0) {
		fprintf(stderr, "coord-watch: %s\n", why);
		return EXIT_USAGE;
	}

	/* No SA_RESTART: a signal interrupts zmq_poll(), and the loop ends. */
	struct sigaction sa = {.sa_handler = on_signal};
	(void) sigemptyset(&sa.sa_mask);
	(void) sigaction(SIGINT, &sa, NULL);
	(void) sigaction(SIGTERM, &sa, NULL);

	r = setup(&w);
	if (r < 0) {
		if (r != -EINVAL) {
			fprintf(stderr, "coord-watch: cannot set up ZeroMQ: %s\n", strerror(-r));
		}
		teardown(&w);
		return r == -EINVAL ? EXIT_USAGE : EXIT_BROKER;
	}
	r = run(&w);
	teardown(&w);
	return r;
}

/*
 * coord-bench: load generator and meter for coordd's ingest path.
 *
 * N council threads, each with its own DEALER connection, send M Envelopes each with at most
 * W unacknowledged at a time, and time every message from its send to its Ack. At the end it
 * prints acked messages per second (first send to last ack), ack latency percentiles, the
 * status counts, and, given the broker's pid, the broker's CPU time and peak RSS.
 *
 * Envelopes are built before the clock starts, so the meter measures the broker (and the
 * loopback), not protobuf packing on the client side. msg_ids carry a per-run nonce, so
 * runs against the same store do not collide.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "coord.pb-c.h"

#define BENCH_ACK_TIMEOUT_MS 30000

struct options {
	const char *endpoint;
	const char *prefix;
	unsigned councils;
	unsigned messages;
	unsigned window;
	unsigned size;
	pid_t pid;
	bool json;
	bool quiet;
};

struct council {
	pthread_t thread;
	const struct options *o;
	void *zctx;
	unsigned index;
	char id[32];
	uint64_t nonce;
	uint8_t **frames;
	size_t *frame_len;
	int64_t *sent_ns;
	int64_t *latency_ns;
	uint64_t acked;
	uint64_t status[5];
	int64_t first_send_ns;
	int64_t last_ack_ns;
	int error;
	bool done;
};

static int64_t
now_ns(void)
{
	struct timespec ts;

	(void) clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t
wall_ms(void)
{
	struct timespec ts;

	(void) clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Build every Envelope of one council up front. Returns 0 or -ENOMEM. */
static int
build_frames(struct council *c)
{
	const struct options *o = c->o;
	char msg_id[64];
	char *title = malloc(o->size + 1);

	c->frames = calloc(o->messages, sizeof(*c->frames));
	c->frame_len = calloc(o->messages, sizeof(*c->frame_len));
	c->sent_ns = calloc(o->messages, sizeof(*c->sent_ns));
	c->latency_ns = calloc(o->messages, sizeof(*c->latency_ns));
	if (!title || !c->frames || !c->frame_len || !c->sent_ns || !c->latency_ns) {
		free(title);
		return -ENOMEM;
	}
	/* The title pads the Envelope to about --size bytes. */
	size_t pad = o->size > 80 ? o->size - 80 : 1;
	memset(title, 't', pad);
	title[pad] = 0;
	int64_t now = wall_ms();
	for (unsigned i = 0; i < o->messages; i++) {
		Coord__V1__Envelope env = COORD__V1__ENVELOPE__INIT;
		Coord__V1__Event ev = COORD__V1__EVENT__INIT;
		char *langs[] = {"en"};

		(void) snprintf(msg_id, sizeof(msg_id), "bench-%" PRIx64 "-%u", c->nonce, i);
		ev.kind = COORD__V1__EVENT_KIND__EVENT_KIND_RALLY;
		ev.country = "FR";
		ev.city = "Paris";
		ev.date = now - 3600000;
		ev.title = title;
		ev.participants = 100;
		ev.n_languages = 1;
		ev.languages = langs;
		env.council = c->id;
		env.msg_id = msg_id;
		env.revision = 1;
		env.created_at = now;
		env.body_case = COORD__V1__ENVELOPE__BODY_EVENT;
		env.event = &ev;
		c->frame_len[i] = coord__v1__envelope__get_packed_size(&env);
		c->frames[i] = malloc(c->frame_len[i]);
		if (!c->frames[i]) {
			free(title);
			return -ENOMEM;
		}
		(void) coord__v1__envelope__pack(&env, c->frames[i]);
	}
	free(title);
	return 0;
}

/* The message index is the msg_id's last field. */
static long
index_of(const char *msg_id, unsigned messages)
{
	const char *dash = strrchr(msg_id, '-');
	char *end;

	if (!dash) {
		return -1;
	}
	long i = strtol(dash + 1, &end, 10);
	return *end || i < 0 || (unsigned long) i >= messages ? -1 : i;
}

static void *
run_council(void *arg)
{
	struct council *c = arg;
	const struct options *o = c->o;
	void *sock = zmq_socket(c->zctx, ZMQ_DEALER);
	int linger = 0, hwm = 0;
	unsigned next = 0, in_flight = 0;
	uint8_t buf[1024];

	if (!sock) {
		c->error = -zmq_errno();
		__atomic_store_n(&c->done, true, __ATOMIC_RELEASE);
		return NULL;
	}
	(void) zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof(linger));
	(void) zmq_setsockopt(sock, ZMQ_SNDHWM, &hwm, sizeof(hwm));
	(void) zmq_setsockopt(sock, ZMQ_RCVHWM, &hwm, sizeof(hwm));
	if (zmq_connect(sock, o->endpoint) < 0) {
		c->error = -zmq_errno();
		goto out;
	}
	c->first_send_ns = now_ns();
	while (c->acked < o->messages) {
		while (next < o->messages && in_flight < o->window) {
			c->sent_ns[next] = now_ns();
			if (zmq_send(sock, c->frames[next], c->frame_len[next], 0) < 0) {
				c->error = -zmq_errno();
				goto out;
			}
			next++;
			in_flight++;
		}
		zmq_pollitem_t item = {.socket = sock, .events = ZMQ_POLLIN};
		int n = zmq_poll(&item, 1, BENCH_ACK_TIMEOUT_MS);
		if (n <= 0) {
			c->error = n == 0 ? -ETIMEDOUT : -zmq_errno();
			goto out;
		}
		/* Drain every Ack that is ready before sending more. */
		for (;;) {
			int len = zmq_recv(sock, buf, sizeof(buf), ZMQ_DONTWAIT);
			if (len < 0) {
				break;
			}
			int64_t t = now_ns();
			Coord__V1__Ack *ack = coord__v1__ack__unpack(
			        NULL, (size_t) len < sizeof(buf) ? (size_t) len : sizeof(buf), buf);
			if (!ack) {
				c->error = -EBADMSG;
				goto out;
			}
			long i = index_of(ack->msg_id, o->messages);
			if (i >= 0 && c->latency_ns[i] == 0) {
				c->latency_ns[i] = t - c->sent_ns[i];
				c->status[ack->status < 5 ? ack->status : 0]++;
				__atomic_add_fetch(&c->acked, 1, __ATOMIC_RELAXED);
				in_flight--;
				c->last_ack_ns = t;
			}
			coord__v1__ack__free_unpacked(ack, NULL);
		}
	}
out:
	(void) zmq_close(sock);
	__atomic_store_n(&c->done, true, __ATOMIC_RELEASE);
	return NULL;
}

/* A progress line on stderr about once a second until every council thread is done. */
static void
progress(const struct options *o, struct council *cs)
{
	uint64_t total = (uint64_t) o->councils * o->messages;
	bool tty = isatty(STDERR_FILENO);

	for (;;) {
		uint64_t acked = 0;
		bool running = false;

		for (unsigned i = 0; i < o->councils; i++) {
			acked += __atomic_load_n(&cs[i].acked, __ATOMIC_RELAXED);
			running |= !__atomic_load_n(&cs[i].done, __ATOMIC_ACQUIRE);
		}
		if (!running) {
			break;
		}
		if (!o->quiet) {
			fprintf(stderr, "%sacked %" PRIu64 " of %" PRIu64 " (%.0f%%)%s",
			        tty ? "\r" : "", acked, total,
			        100.0 * (double) acked / (double) total, tty ? "" : "\n");
		}
		for (int i = 0; i < 10 && running; i++) {
			struct timespec ts = {.tv_nsec = 100000000};
			(void) nanosleep(&ts, NULL);
			running = false;
			for (unsigned c = 0; c < o->councils; c++) {
				running |= !__atomic_load_n(&cs[c].done, __ATOMIC_ACQUIRE);
			}
		}
	}
	if (!o->quiet && tty) {
		fprintf(stderr, "\n");
	}
}

static int
cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *) a, y = *(const int64_t *) b;

	return (x > y) - (x < y);
}

/* Broker CPU seconds (user + system) and peak RSS in KiB, from /proc; -1 if unknown. */
static void
broker_usage(pid_t pid, double *ret_cpu, long *ret_hwm_kib)
{
	char path[64], line[512];
	FILE *f;

	*ret_cpu = -1;
	*ret_hwm_kib = -1;
	if (pid <= 0) {
		return;
	}
	(void) snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
	f = fopen(path, "re");
	if (f) {
		unsigned long ut, st;
		/* Fields 14 and 15 follow the ')' that closes the command name. */
		if (fgets(line, sizeof(line), f)) {
			char *p = strrchr(line, ')');
			if (p &&
			    sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
			           &ut, &st) == 2) {
				*ret_cpu = (double) (ut + st) / (double) sysconf(_SC_CLK_TCK);
			}
		}
		(void) fclose(f);
	}
	(void) snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
	f = fopen(path, "re");
	if (f) {
		while (fgets(line, sizeof(line), f)) {
			if (sscanf(line, "VmHWM: %ld kB", ret_hwm_kib) == 1) {
				break;
			}
		}
		(void) fclose(f);
	}
}

static void
help(void)
{
	printf("Usage: coord-bench [OPTION]...\n"
	       "Push Envelopes to a coordd ingest endpoint from several council connections and\n"
	       "measure acknowledged messages per second and ack latency.\n"
	       "\n"
	       "  -e, --endpoint=E      ingest endpoint (default tcp://127.0.0.1:7701)\n"
	       "  -n, --councils=N      council connections, one thread each (default 11)\n"
	       "      --prefix=P        council ids are P01..PNN (default c); they must be\n"
	       "                        registered in the broker's config\n"
	       "  -m, --messages=M      messages per council (default 10000)\n"
	       "  -w, --window=W        unacknowledged messages per council (default 64)\n"
	       "  -s, --size=BYTES      approximate Envelope size (default 300)\n"
	       "  -p, --pid=PID         the broker's pid, to report its CPU time and peak RSS\n"
	       "      --json            one JSON object instead of text\n"
	       "  -q, --quiet           no progress line on stderr\n"
	       "  -h, --help            this help\n"
	       "\n"
	       "Exit status: 0 when every message was acked ACCEPTED or DUPLICATE; 1 when any\n"
	       "was refused; 3 when an ack did not come within %d s (broker down?); 2 for usage.\n"
	       "tests/bench/run-bench starts a throw-away broker and runs this against it.\n",
	       BENCH_ACK_TIMEOUT_MS / 1000);
}

static int
parse_unsigned(const char *s, unsigned min, unsigned max, unsigned *ret)
{
	char *end;

	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max) {
		return -EINVAL;
	}
	*ret = (unsigned) v;
	return 0;
}

static int
parse_args(int argc, char **argv, struct options *o)
{
	static const struct option opts[] = {
	        {"endpoint", required_argument, NULL, 'e'},
	        {"councils", required_argument, NULL, 'n'},
	        {"prefix", required_argument, NULL, 'P'},
	        {"messages", required_argument, NULL, 'm'},
	        {"window", required_argument, NULL, 'w'},
	        {"size", required_argument, NULL, 's'},
	        {"pid", required_argument, NULL, 'p'},
	        {"json", no_argument, NULL, 'j'},
	        {"quiet", no_argument, NULL, 'q'},
	        {"help", no_argument, NULL, 'h'},
	        {0},
	};
	int c;
	unsigned pid = 0;

	while ((c = getopt_long(argc, argv, "e:n:m:w:s:p:qh", opts, NULL)) >= 0) {
		int r = 0;
		switch (c) {
		case 'e':
			o->endpoint = optarg;
			break;
		case 'n':
			r = parse_unsigned(optarg, 1, 1000, &o->councils);
			break;
		case 'P':
			o->prefix = optarg;
			break;
		case 'm':
			r = parse_unsigned(optarg, 1, 100000000, &o->messages);
			break;
		case 'w':
			r = parse_unsigned(optarg, 1, 100000, &o->window);
			break;
		case 's':
			r = parse_unsigned(optarg, 100, 60000, &o->size);
			break;
		case 'p':
			r = parse_unsigned(optarg, 1, 1u << 30, &pid);
			o->pid = (pid_t) pid;
			break;
		case 'j':
			o->json = true;
			break;
		case 'q':
			o->quiet = true;
			break;
		case 'h':
			help();
			return 0;
		default:
			fprintf(stderr, "Try 'coord-bench --help'.\n");
			return -EINVAL;
		}
		if (r < 0) {
			fprintf(stderr,
			        "coord-bench: invalid value '%s'. Try 'coord-bench --help'.\n",
			        optarg);
			return r;
		}
	}
	return 1;
}

int
main(int argc, char **argv)
{
	struct options o = {
	        .endpoint = "tcp://127.0.0.1:7701",
	        .prefix = "c",
	        .councils = 11,
	        .messages = 10000,
	        .window = 64,
	        .size = 300,
	};
	int r = parse_args(argc, argv, &o);

	if (r <= 0) {
		return r < 0 ? 2 : 0;
	}
	void *zctx = zmq_ctx_new();
	struct council *cs = calloc(o.councils, sizeof(*cs));
	if (!zctx || !cs) {
		fprintf(stderr, "coord-bench: out of memory\n");
		return 1;
	}
	uint64_t nonce = (uint64_t) wall_ms() ^ ((uint64_t) getpid() << 40);
	for (unsigned i = 0; i < o.councils; i++) {
		cs[i] = (struct council){.o = &o, .zctx = zctx, .index = i, .nonce = nonce};
		(void) snprintf(cs[i].id, sizeof(cs[i].id), "%s%02u", o.prefix, i + 1);
		if (build_frames(&cs[i]) < 0) {
			fprintf(stderr, "coord-bench: out of memory building messages\n");
			return 1;
		}
	}

	double cpu0, cpu1;
	long hwm;
	broker_usage(o.pid, &cpu0, &hwm);
	int64_t t0 = now_ns();
	for (unsigned i = 0; i < o.councils; i++) {
		if (pthread_create(&cs[i].thread, NULL, run_council, &cs[i]) != 0) {
			fprintf(stderr, "coord-bench: cannot start thread %u\n", i);
			return 1;
		}
	}
	progress(&o, cs);
	for (unsigned i = 0; i < o.councils; i++) {
		(void) pthread_join(cs[i].thread, NULL);
	}
	int64_t t1 = now_ns();
	broker_usage(o.pid, &cpu1, &hwm);

	uint64_t total = (uint64_t) o.councils * o.messages, acked = 0, status[5] = {0};
	int error = 0;
	int64_t *lat = malloc(total * sizeof(*lat));
	size_t n_lat = 0;
	int64_t first = INT64_MAX, last = 0;
	for (unsigned i = 0; i < o.councils; i++) {
		acked += cs[i].acked;
		for (int s = 0; s < 5; s++) {
			status[s] += cs[i].status[s];
		}
		if (cs[i].error && !error) {
			error = cs[i].error;
		}
		first = cs[i].first_send_ns < first ? cs[i].first_send_ns : first;
		last = cs[i].last_ack_ns > last ? cs[i].last_ack_ns : last;
		for (unsigned m = 0; lat && m < o.messages; m++) {
			if (cs[i].latency_ns[m] > 0) {
				lat[n_lat++] = cs[i].latency_ns[m];
			}
		}
	}
	if (lat) {
		qsort(lat, n_lat, sizeof(*lat), cmp_i64);
	}
#define PCT(p) (n_lat ? (double) lat[(size_t) ((double) (n_lat - 1) * (p))] / 1e6 : 0.0)
	double secs =
	        (double) ((last > first ? last : t1) - (first < INT64_MAX ? first : t0)) / 1e9;
	double rate = secs > 0 ? (double) acked / secs : 0;

	if (o.json) {
		printf("{\"councils\":%u,\"messages\":%u,\"window\":%u,\"size\":%u,\"acked\":"
		       "%" PRIu64 ",\"accepted\":%" PRIu64 ",\"duplicate\":%" PRIu64
		       ",\"rejected\":%" PRIu64 ",\"retry_later\":%" PRIu64
		       ",\"seconds\":%.3f,\"acked_per_second\":%.0f,"
		       "\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"p999_ms\":%.3f,\"max_ms\":%.3f,"
		       "\"broker_cpu_seconds\":%.2f,\"broker_peak_rss_kib\":%ld}\n",
		       o.councils, o.messages, o.window, o.size, acked, status[1], status[2],
		       status[3], status[4], secs, rate, PCT(0.5), PCT(0.99), PCT(0.999), PCT(1.0),
		       cpu1 >= 0 ? cpu1 - cpu0 : -1.0, hwm);
	} else {
		printf("coord-bench: %u councils x %u messages, window %u, ~%u-byte envelopes\n",
		       o.councils, o.messages, o.window, o.size);
		printf("acked        %" PRIu64 " of %" PRIu64 " (accepted %" PRIu64
		       ", duplicate %" PRIu64 ", rejected %" PRIu64 ", retry later %" PRIu64 ")\n",
		       acked, total, status[1], status[2], status[3], status[4]);
		printf("throughput   %.0f acked msgs/s over %.3f s\n", rate, secs);
		printf("ack latency  p50 %.3f ms  p99 %.3f ms  p99.9 %.3f ms  max %.3f ms\n",
		       PCT(0.5), PCT(0.99), PCT(0.999), PCT(1.0));
		if (cpu1 >= 0) {
			printf("broker       %.2f s CPU (%.0f%% of one core), peak RSS %ld KiB\n",
			       cpu1 - cpu0, secs > 0 ? 100 * (cpu1 - cpu0) / secs : 0.0, hwm);
		}
	}
	if (error) {
		fprintf(stderr, "coord-bench: %s\n",
		        error == -ETIMEDOUT ? "no ack within the timeout (is the broker running?)"
		                            : strerror(-error));
	}
	for (unsigned i = 0; i < o.councils; i++) {
		for (unsigned m = 0; cs[i].frames && m < o.messages; m++) {
			free(cs[i].frames[m]);
		}
		free(cs[i].frames);
		free(cs[i].frame_len);
		free(cs[i].sent_ns);
		free(cs[i].latency_ns);
	}
	free(cs);
	free(lat);
	(void) zmq_ctx_term(zctx);
	if (error == -ETIMEDOUT) {
		return 3;
	}
	return error || acked != total || status[3] || status[4] ? 1 : 0;
}

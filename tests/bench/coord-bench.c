/*
 * coord-bench: load generator and meter for coordd's ingest path.
 *
 * N council threads, each with its own DEALER connection, send M Envelopes each with at most
 * W unacknowledged at a time, and time every message from its send to its Ack. A run has
 * phases, each with the same shape (N, M, W, record mix and size) and fresh msg_ids:
 *
 *   preload      --preload P: P records pushed as fast as the broker takes them (built on
 *                the fly, not timed per message), so the measured phases run on a big store
 *   settle       after a preload: wait until the broker has folded its digest log (a few
 *                messages trickled, one at a time, so that batches install the folder's
 *                folds) and the kernel has written back the store's file system, so the
 *                phases measure the cost at that size, not the digesting of the preload
 *   echo, lmdb   --ceiling: the same load against the two ceiling servers of ceiling.c
 *   coordd       the broker itself
 *   subscribed   --subscribers S: the broker again with S SUB sockets on its publish
 *                endpoint, timing each digest from the ack of the records it covers
 *   redis, nats, rabbitmq
 *                --peer KIND=HOST:PORT: the same load against Redis Streams (XADD), NATS
 *                JetStream (publish, PubAck) and a RabbitMQ quorum queue (publisher
 *                confirms) through their client libraries (peers.c), in the order given
 *
 * Envelopes of timed phases are built before the clock starts, so the meter measures the
 * broker (and the loopback), not protobuf packing. msg_ids carry a per-run nonce and a
 * phase letter, so runs and phases against the same store do not collide.
 *
 * Fan-out latency: the commit time is not visible to a client, and the Digest's own
 * generated_at is a wall-clock millisecond taken before the digest is packed. So a
 * digest's latency is its receive time minus the ack receive time of the newest record it
 * counts (its last_seq: Acks carry the seq) -- the time a subscriber waits after the council
 * learnt the record is stored. The same from the oldest record it newly counts (first_seq)
 * is reported beside it: the worst wait of any record in that digest.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "bench.h"

#define BENCH_PRELOAD_WINDOW 256
#define BENCH_SUBS_READY_MS 30000
#define MIB (1024.0 * 1024.0)
/* The settle: messages trickled per round (one council, one in flight: a batch each), the
 * pause between rounds, and a progress line every so often. */
#define BENCH_SETTLE_TRICKLE 4
#define BENCH_SETTLE_PAUSE_MS 50
#define BENCH_SETTLE_NOTE_S 10
#define BENCH_SETTLE_TIMEOUT_DEFAULT 900

/* ------------------------------------------------------------------------------------------
 * The broker's own view, around a phase. */

static void
snap(const struct bench_options *o, void *zctx, bool smaps, struct bench_snapshot *s)
{
	bench_usage_read(o->pid, smaps, &s->usage);
	(void) bench_broker_stats(zctx, o->query, o->metrics, &s->stats);
}

static void
broker_delta(const struct bench_snapshot *a, const struct bench_snapshot *b,
             struct bench_result *res)
{
	if (a->usage.cpu_seconds >= 0 && b->usage.cpu_seconds >= 0) {
		res->server_cpu = b->usage.cpu_seconds - a->usage.cpu_seconds;
	}
	if (a->stats.have_metrics && b->stats.have_metrics &&
	    b->stats.batch_count > a->stats.batch_count) {
		double n = b->stats.batch_count - a->stats.batch_count;
		res->avg_batch = (b->stats.batch_sum - a->stats.batch_sum) / n;
		res->avg_commit_ms = (b->stats.commit_sum - a->stats.commit_sum) / n * 1e3;
	} else if (a->stats.have_stats && b->stats.have_stats &&
	           b->stats.batches > a->stats.batches) {
		/* Without /metrics: what was committed, over the commits. */
		res->avg_batch = (double) (b->stats.accepted + b->stats.duplicate -
		                           a->stats.accepted - a->stats.duplicate) /
		                 (double) (b->stats.batches - a->stats.batches);
	}
}

/* ------------------------------------------------------------------------------------------
 * Options. */

static void
help(void)
{
	char built[64] = "";

	for (int k = BENCH_PEER_NONE + 1; k < BENCH_PEER_MAX; k++) {
		if (bench_peer_built((enum bench_peer_kind) k)) {
			size_t n = strlen(built);
			(void) snprintf(built + n, sizeof(built) - n, " %s",
			                bench_peer_name((enum bench_peer_kind) k));
		}
	}
	if (!built[0]) {
		(void) snprintf(built, sizeof(built), " none");
	}
	printf("Usage: coord-bench [OPTION]...\n"
	       "Push Envelopes to a coordd ingest endpoint from several council connections and\n"
	       "measure acknowledged messages per second and ack latency; optionally the same\n"
	       "load against two ceilings, and digest fan-out to subscribers.\n"
	       "\n"
	       "Load:\n"
	       "  -e, --endpoint=E      ingest endpoint (default tcp://127.0.0.1:7701)\n"
	       "  -n, --councils=N      council connections, one thread each (default 11)\n"
	       "      --prefix=P        council ids are P01..PNN (default c); they must be\n"
	       "                        registered in the broker's config\n"
	       "  -m, --messages=M      messages per council and phase (default 10000)\n"
	       "  -w, --window=W        unacknowledged messages per council (default 64)\n"
	       "  -s, --size=BYTES      Envelope size, %d..%d (default 300): the long text field\n"
	       "                        of every kind is padded to it\n"
	       "      --mix=K=W,...     record kinds and weights, kinds: events letters "
	       "statements\n"
	       "                        petitions media (default %s)\n"
	       "      --seed=N          seed of the record generator (default 1)\n"
	       "      --preload=P       first push P records (not timed per message) so the "
	       "phases\n"
	       "                        run on a store that size; checks free disk with\n"
	       "                        --ceiling-dir\n"
	       "      --settle-timeout=SEC\n"
	       "                        after a preload, wait at most SEC seconds (default %d;\n"
	       "                        0: no wait) until the broker folded its digest log\n"
	       "                        (needs --metrics; a message is trickled now and then\n"
	       "                        so batches install the folds) and the kernel wrote\n"
	       "                        back the store's file system (syncfs of --ceiling-dir)\n"
	       "      --preload-only    the preload and its settle, then the report: no other\n"
	       "                        phase (tests/bench/run-bench --sizes)\n"
	       "      --check-disk      only check free disk for --preload, then exit\n"
	       "\n",
	       BENCH_SIZE_MIN, BENCH_SIZE_MAX, BENCH_MIX_DEFAULT, BENCH_SETTLE_TIMEOUT_DEFAULT);
	printf("Phases:\n"
	       "      --ceiling         also run the load against a bare ROUTER echo and a bare\n"
	       "                        ROUTER + LMDB group-commit loop (threads of this "
	       "program),\n"
	       "                        and report coordd's throughput as a ratio to each\n"
	       "      --ceiling-dir=DIR where the LMDB loop keeps its store (use a directory on "
	       "the\n"
	       "                        broker's file system; default $TMPDIR or /tmp)\n"
	       "      --subscribers=S   then run the load again with S SUB sockets on --publish,\n"
	       "                        timing each digest from the acks of its records (needs\n"
	       "                        --query)\n"
	       "      --publish=E       the broker's publish endpoint\n"
	       "      --topic=T         topic the subscribers subscribe to (default digest/all/)\n"
	       "      --fanout-wait=SEC after the load, wait at most SEC seconds for every\n"
	       "                        subscriber to get the digest of the last record (default "
	       "10)\n"
	       "      --peer=KIND=HOST:PORT[,pid=PID]\n"
	       "                        also run the load against a peer broker, KIND:\n"
	       "                          redis     XADD coord * m ENVELOPE, pipelined up to\n"
	       "                                    the window (run it with appendfsync always)\n"
	       "                          nats      JetStream publish to coord.bench, each\n"
	       "                                    waiting for its PubAck (stream COORD is\n"
	       "                                    created)\n"
	       "                          rabbitmq  persistent publish to the quorum queue\n"
	       "                                    coord.bench (declared) with publisher\n"
	       "                                    confirms, as guest\n"
	       "                        repeatable; PID: the server's, for its CPU time\n"
	       "                        (built in:%s)\n"
	       "\n"
	       "Broker figures:\n"
	       "  -p, --pid=PID         the broker's pid: CPU time, peak RSS, private RSS\n"
	       "      --query=E         the broker's query endpoint: stats (seqs, store size)\n"
	       "      --metrics=H:P     the broker's metrics listener: group-commit batch sizes,\n"
	       "                        and its digest log: the settle, and coordd's CPU \"with\n"
	       "                        its folds\" (read again once the log is folded after\n"
	       "                        the phase, messages trickled as in the settle)\n"
	       "\n"
	       "  -j, --json            one JSON object instead of text\n"
	       "  -q, --quiet           no progress lines on stderr (a --preload still shows one\n"
	       "                        every 10 s)\n"
	       "  -h, --help            this help\n"
	       "\n"
	       "Exit status: 0 when every message of every phase was acked ACCEPTED or DUPLICATE;\n"
	       "1 when any was refused or lost; 3 when an ack did not come within %d s (broker\n"
	       "down?); 2 for usage or setup errors (not enough disk for --preload, a --peer\n"
	       "not reachable or not built: its phase is left out, the others run).\n"
	       "tests/bench/run-bench starts a throw-away broker and runs this against it.\n",
	       built, BENCH_ACK_TIMEOUT_MS / 1000);
}

static int
parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *ret)
{
	char *end;

	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || v < min || v > max) {
		return -EINVAL;
	}
	*ret = v;
	return 0;
}

static int
parse_unsigned(const char *s, unsigned min, unsigned max, unsigned *ret)
{
	uint64_t v;
	int r = parse_u64(s, min, max, &v);

	if (r == 0) {
		*ret = (unsigned) v;
	}
	return r;
}

enum {
	OPT_PREFIX = 256,
	OPT_MIX,
	OPT_SEED,
	OPT_PRELOAD,
	OPT_SETTLE_TIMEOUT,
	OPT_CHECK_DISK,
	OPT_PRELOAD_ONLY,
	OPT_CEILING,
	OPT_CEILING_DIR,
	OPT_SUBSCRIBERS,
	OPT_PUBLISH,
	OPT_TOPIC,
	OPT_FANOUT_WAIT,
	OPT_QUERY,
	OPT_METRICS,
	OPT_PEER,
};

/* Returns 1 to run, 0 to exit successfully (--help), or -EINVAL. */
static int
parse_args(int argc, char **argv, struct bench_options *o, const char **ret_publish,
           bool *ret_check_disk)
{
	static const struct option opts[] = {
	        {"endpoint", required_argument, NULL, 'e'},
	        {"councils", required_argument, NULL, 'n'},
	        {"prefix", required_argument, NULL, OPT_PREFIX},
	        {"messages", required_argument, NULL, 'm'},
	        {"window", required_argument, NULL, 'w'},
	        {"size", required_argument, NULL, 's'},
	        {"mix", required_argument, NULL, OPT_MIX},
	        {"seed", required_argument, NULL, OPT_SEED},
	        {"preload", required_argument, NULL, OPT_PRELOAD},
	        {"settle-timeout", required_argument, NULL, OPT_SETTLE_TIMEOUT},
	        {"check-disk", no_argument, NULL, OPT_CHECK_DISK},
	        {"preload-only", no_argument, NULL, OPT_PRELOAD_ONLY},
	        {"ceiling", no_argument, NULL, OPT_CEILING},
	        {"ceiling-dir", required_argument, NULL, OPT_CEILING_DIR},
	        {"subscribers", required_argument, NULL, OPT_SUBSCRIBERS},
	        {"publish", required_argument, NULL, OPT_PUBLISH},
	        {"topic", required_argument, NULL, OPT_TOPIC},
	        {"fanout-wait", required_argument, NULL, OPT_FANOUT_WAIT},
	        {"pid", required_argument, NULL, 'p'},
	        {"query", required_argument, NULL, OPT_QUERY},
	        {"metrics", required_argument, NULL, OPT_METRICS},
	        {"peer", required_argument, NULL, OPT_PEER},
	        {"json", no_argument, NULL, 'j'},
	        {"quiet", no_argument, NULL, 'q'},
	        {"help", no_argument, NULL, 'h'},
	        {0},
	};
	int c;
	unsigned pid = 0;

	while ((c = getopt_long(argc, argv, "e:n:m:w:s:p:jqh", opts, NULL)) >= 0) {
		int r = 0;
		switch (c) {
		case 'e':
			o->endpoint = optarg;
			break;
		case 'n':
			r = parse_unsigned(optarg, 1, 999, &o->councils);
			break;
		case OPT_PREFIX:
			o->prefix = optarg;
			r = strlen(optarg) > 20 ? -EINVAL : 0;
			break;
		case 'm':
			r = parse_unsigned(optarg, 1, 100000000, &o->messages);
			break;
		case 'w':
			r = parse_unsigned(optarg, 1, 100000, &o->window);
			break;
		case 's':
			r = parse_unsigned(optarg, BENCH_SIZE_MIN, BENCH_SIZE_MAX, &o->size);
			break;
		case OPT_MIX:
			r = bench_mix_parse(optarg, &o->mix);
			break;
		case OPT_SEED:
			r = parse_u64(optarg, 0, UINT64_MAX, &o->seed);
			break;
		case OPT_PRELOAD:
			r = parse_u64(optarg, 0, 1000000000, &o->preload);
			break;
		case OPT_SETTLE_TIMEOUT:
			r = parse_unsigned(optarg, 0, 86400, &o->settle_timeout);
			break;
		case OPT_CHECK_DISK:
			*ret_check_disk = true;
			break;
		case OPT_PRELOAD_ONLY:
			o->preload_only = true;
			break;
		case OPT_CEILING:
			o->ceiling = true;
			break;
		case OPT_CEILING_DIR:
			o->ceiling_dir = optarg;
			break;
		case OPT_SUBSCRIBERS:
			r = parse_unsigned(optarg, 0, 100000, &o->subscribers);
			break;
		case OPT_PUBLISH:
			*ret_publish = optarg;
			break;
		case OPT_FANOUT_WAIT:
			r = parse_unsigned(optarg, 1, 3600, &o->fanout_wait);
			break;
		case OPT_TOPIC:
			o->topic = optarg;
			break;
		case 'p':
			r = parse_unsigned(optarg, 1, 1u << 30, &pid);
			o->pid = (pid_t) pid;
			break;
		case OPT_QUERY:
			o->query = optarg;
			break;
		case OPT_METRICS:
			o->metrics = optarg;
			break;
		case OPT_PEER:
			r = o->n_peers < BENCH_PEER_MAX
			            ? bench_peer_parse(optarg, &o->peers[o->n_peers])
			            : -EINVAL;
			o->n_peers += r == 0;
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
	if (optind < argc) {
		fprintf(stderr,
		        "coord-bench: unexpected argument '%s'. Try 'coord-bench --help'.\n",
		        argv[optind]);
		return -EINVAL;
	}
	if (o->subscribers && (!*ret_publish || !o->query)) {
		fprintf(stderr, "coord-bench: --subscribers needs --publish and --query.\n");
		return -EINVAL;
	}
	return 1;
}

/* Enough free disk for the preload? Returns 0, or -ENOSPC after saying so. */
static int
check_disk(const struct bench_options *o, const char *dir)
{
	struct statvfs vfs;
	/* An item is the Envelope plus ~40 bytes, an index entry ~60; B-tree pages run about
	 * two-thirds full, and the digest table and free pages come on top: allow 2x. */
	double need = (double) o->preload * ((double) o->size + 100) * 2;

	if (statvfs(dir, &vfs) < 0) {
		fprintf(stderr, "coord-bench: cannot check free disk in '%s': %s\n", dir,
		        strerror(errno));
		return -errno;
	}
	double avail = (double) vfs.f_bavail * (double) vfs.f_frsize;
	if (!o->quiet || avail < need) {
		fprintf(stderr,
		        "coord-bench: preload of %" PRIu64 " records needs ~%.1f GiB, '%s' has "
		        "%.1f GiB free\n",
		        o->preload, need / MIB / 1024, dir, avail / MIB / 1024);
	}
	if (avail < need) {
		fprintf(stderr, "coord-bench: not enough free disk for --preload; not running\n");
		return -ENOSPC;
	}
	return 0;
}

static void
raise_file_limit(const struct bench_options *o)
{
	struct rlimit rl;

	/* Each SUB socket holds a connection and a mailbox descriptor, and so on. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void) setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 3 * (rlim_t) o->subscribers + 256) {
		fprintf(stderr,
		        "coord-bench: the file limit %lu may be too low for %u subscribers "
		        "(ulimit -n)\n",
		        (unsigned long) rl.rlim_cur, o->subscribers);
	}
}

static bool
result_ok(const struct bench_result *r)
{
	return r->ran && !r->error && r->acked == r->total && !r->status[3] && !r->status[4] &&
	       !r->status[0];
}

/* ------------------------------------------------------------------------------------------ */

#define MAX_PHASES (5 + BENCH_PEER_MAX)

struct run {
	struct bench_options o;
	const char *publish;
	void *zctx;
	uint64_t nonce;
	struct bench_result res[MAX_PHASES];
	size_t n_res;
	struct bench_settle settle;
	uint64_t trickles; /* rounds of fold_wait() so far */
	struct bench_snapshot end;
	struct bench_fanout fan;
	bool have_fan;
	bool used_nats;
	int setup_error;
};

static int
run_ceiling(struct run *run, enum bench_server_kind kind)
{
	const struct bench_options *o = &run->o;
	const char *dir = o->ceiling_dir ? o->ceiling_dir : getenv("TMPDIR");
	struct bench_server *srv;
	struct bench_server_stats st;
	/* Room for every Envelope with B-tree overhead, and a floor. */
	uint64_t map_size = (uint64_t) o->councils * o->messages * (o->size + 64) * 3 + (64 << 20);
	int r = bench_server_start(kind, o->endpoint, dir ? dir : "/tmp", map_size, &srv);

	if (r < 0) {
		fprintf(stderr, "coord-bench: cannot start the %s ceiling: %s\n",
		        kind == BENCH_SERVER_ECHO ? "echo" : "LMDB", strerror(-r));
		return r;
	}
	struct bench_phase ph = {
	        .name = kind == BENCH_SERVER_ECHO ? "ceiling-echo" : "ceiling-lmdb",
	        .endpoint = bench_server_endpoint(srv),
	        .tag = kind == BENCH_SERVER_ECHO ? 'e' : 'l',
	        .messages = o->messages,
	        .window = o->window,
	};
	struct bench_result *res = &run->res[run->n_res++];
	r = bench_phase_run(o, run->zctx, &ph, run->nonce, res);
	res->reference = true;
	bench_server_stop(srv, &st);
	res->server_cpu = st.cpu_seconds;
	if (st.batches) {
		res->avg_batch = (double) st.messages / (double) st.batches;
		if (kind == BENCH_SERVER_LMDB) {
			res->avg_commit_ms = st.commit_seconds / (double) st.batches * 1e3;
		}
	}
	if (st.error && !res->error) {
		res->error = st.error;
	}
	return r;
}

/* A phase against a peer broker; one that is not built or not reachable is left out, and
 * said so, and the run goes on. */
static int
run_peer(struct run *run, const struct bench_peer *peer, char tag)
{
	const struct bench_options *o = &run->o;
	const char *name = bench_peer_name(peer->kind);
	struct bench_usage a, b;
	char err[256];
	int r = bench_peer_prepare(peer, err, sizeof(err));

	if (err[0]) {
		fprintf(stderr, "coord-bench: %s%s\n", err, r < 0 ? "; phase left out" : "");
	}
	if (r < 0) {
		run->setup_error = r;
		return 0;
	}
	struct bench_phase ph = {
	        .name = name,
	        .peer = peer,
	        .tag = tag,
	        .messages = o->messages,
	        .window = o->window,
	};
	if (peer->pid) {
		bench_usage_read(peer->pid, false, &a);
	}
	struct bench_result *res = &run->res[run->n_res++];
	r = bench_phase_run(o, run->zctx, &ph, run->nonce, res);
	res->reference = true;
	if (peer->pid) {
		bench_usage_read(peer->pid, false, &b);
		if (a.cpu_seconds >= 0 && b.cpu_seconds >= 0) {
			res->server_cpu = b.cpu_seconds - a.cpu_seconds;
		}
	}
	run->used_nats |= peer->kind == BENCH_PEER_NATS;
	return r;
}

static int fold_wait(struct run *run, double t0, double *log, double limit, uint64_t *messages);

static int
run_coordd(struct run *run, const char *name, char tag, bool smaps)
{
	const struct bench_options *o = &run->o;
	struct bench_snapshot a, b;
	struct bench_phase ph = {
	        .name = name,
	        .endpoint = o->endpoint,
	        .tag = tag,
	        .messages = o->messages,
	        .window = o->window,
	};

	snap(o, run->zctx, false, &a);
	struct bench_result *res = &run->res[run->n_res++];
	int r = bench_phase_run(o, run->zctx, &ph, run->nonce, res);
	snap(o, run->zctx, smaps, &b);
	broker_delta(&a, &b, res);
	run->end = b;
	/* The folder may end the phase behind: its folds of the phase's records are part of
	 * their cost, so the CPU is also read once the log is folded again. */
	double log = b.stats.digest_log;
	if (r == 0 && o->settle_timeout > 0 && log >= 0 && a.usage.cpu_seconds >= 0 &&
	    fold_wait(run, bench_mono_s(), &log, b.stats.digest_log_limit, &res->fold_messages) ==
	            0) {
		struct bench_usage u;
		bench_usage_read(o->pid, false, &u);
		res->server_cpu_folded = u.cpu_seconds - a.usage.cpu_seconds;
	}
	return r;
}

static int
run_subscribed(struct run *run)
{
	const struct bench_options *o = &run->o;
	struct bench_subs *subs;
	struct bench_snapshot a, b;
	uint64_t total = (uint64_t) o->councils * o->messages;
	int r = bench_subs_start(run->publish, o->topic, o->subscribers, &subs);

	if (r < 0) {
		fprintf(stderr, "coord-bench: cannot start %u subscribers: %s\n", o->subscribers,
		        strerror(-r));
		return r;
	}
	run->have_fan = true;
	run->fan.subscribers = o->subscribers;
	run->fan.ready = bench_subs_wait_ready(subs, BENCH_SUBS_READY_MS);
	snap(o, run->zctx, false, &a);
	struct bench_phase ph = {
	        .name = "subscribed",
	        .endpoint = o->endpoint,
	        .tag = 's',
	        .messages = o->messages,
	        .window = o->window,
	        .seq_base = a.stats.last_seq,
	        .seq_n = total,
	        .ack_by_seq = calloc(total, sizeof(int64_t)),
	};
	if (!ph.ack_by_seq || !a.stats.have_stats) {
		subs = bench_subs_free(subs);
		free(ph.ack_by_seq);
		fprintf(stderr, "coord-bench: %s\n",
		        ph.ack_by_seq ? "no stats from --query" : strerror(ENOMEM));
		return ph.ack_by_seq ? -EBADMSG : -ENOMEM;
	}
	bench_subs_arm(subs, ph.seq_base);
	struct bench_result *res = &run->res[run->n_res++];
	r = bench_phase_run(o, run->zctx, &ph, run->nonce, res);
	snap(o, run->zctx, false, &b);
	broker_delta(&a, &b, res);
	/* The last digest comes one publish interval after the last commit plus the time the
	 * digest job takes; wait for it so the tail of the run is measured too. */
	run->fan.caught_up =
	        bench_subs_wait_seq(subs, b.stats.last_seq, (int) o->fanout_wait * 1000);
	bench_subs_stop(subs);
	size_t n;
	const struct bench_sub_sample *s = bench_subs_samples(subs, &n, &run->fan.dropped);
	bench_fanout_compute(&ph, s, n, &run->fan);
	for (size_t i = 0; i < run->n_res; i++) {
		if (strcmp(run->res[i].name, "coordd") == 0 && run->res[i].rate > 0) {
			run->fan.ingest_ratio = res->rate / run->res[i].rate;
		}
	}
	subs = bench_subs_free(subs);
	free(ph.ack_by_seq);
	return r;
}

static void
pause_ms(long ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = ms % 1000 * 1000000};

	(void) nanosleep(&ts, NULL);
}

/* The syncfs() of the settle, in a thread of its own so that the wait is bounded and shows
 * progress. One per run: a thread that outlives its wait is left to finish (detached). */
static struct {
	int fd;
	int r;
	bool done; /* atomic */
} sync_job;

static void *
sync_main(void *arg)
{
	sync_job.r = syncfs(sync_job.fd) < 0 ? -errno : 0;
	__atomic_store_n(&sync_job.done, true, __ATOMIC_RELEASE);
	return NULL;
}

static void
settle_note(const struct bench_options *o, const char *what, double log, double limit, double gone)
{
	long dirty = bench_dirty_kib();

	fprintf(stderr, "settle: %s", what);
	if (log >= 0) {
		fprintf(stderr, "; digest log %.0f contributions (folded at or below %.0f)", log,
		        limit);
	}
	fprintf(stderr, "; dirty + writeback %.0f MiB; %.0f s of at most %u s\n",
	        (double) dirty / 1024, gone, o->settle_timeout);
}

/*
 * Wait until the broker's digest log (*log, from /metrics) is at or below `limit`, at most
 * --settle-timeout seconds from t0. A fold is installed by the batches after it, a slice
 * each, so while the log is over the limit one council sends BENCH_SETTLE_TRICKLE messages
 * one at a time every BENCH_SETTLE_PAUSE_MS (added to *messages). Returns 0, -ETIMEDOUT,
 * or a negative errno when a trickled message was not acked.
 */
static int
fold_wait(struct run *run, double t0, double *log, double limit, uint64_t *messages)
{
	const struct bench_options *o = &run->o;
	struct bench_options one = *o;
	double next = t0 + BENCH_SETTLE_NOTE_S;

	one.councils = 1;
	while (*log > limit) {
		double now = bench_mono_s();
		if (now - t0 >= o->settle_timeout) {
			return -ETIMEDOUT;
		}
		if (now >= next) {
			settle_note(o, "folding the digest log", *log, limit, now - t0);
			next = now + BENCH_SETTLE_NOTE_S;
		}
		struct bench_phase ph = {
		        .name = "settle",
		        .endpoint = o->endpoint,
		        .tag = 't',
		        .messages = BENCH_SETTLE_TRICKLE,
		        .window = 1,
		        .on_the_fly = true,
		        .silent = true,
		};
		struct bench_result res;
		/* A nonce of its own per round keeps the msg_ids apart. */
		int r = bench_phase_run(&one, run->zctx, &ph, run->nonce + ++run->trickles, &res);
		*messages += res.acked;
		if (r < 0 || !result_ok(&res)) {
			fprintf(stderr, "coord-bench: settle: a trickled message was not acked\n");
			return r < 0 ? r : res.error ? res.error : -EPROTO;
		}
		pause_ms(BENCH_SETTLE_PAUSE_MS);
		struct bench_broker_stats st;
		(void) bench_broker_stats(run->zctx, NULL, o->metrics, &st);
		*log = st.digest_log >= 0 ? st.digest_log : *log; /* asked again */
	}
	return 0;
}

/* Write back the store's file system (syncfs of `dir`) within `left` seconds. Returns 0,
 * -ETIMEDOUT (the syncfs goes on in its thread) or another negative errno. */
static int
settle_sync(const struct bench_options *o, const char *dir, double t0, double left)
{
	pthread_t thread;
	double start = bench_mono_s(), next = start + BENCH_SETTLE_NOTE_S;

	sync_job.fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sync_job.fd < 0) {
		return -errno;
	}
	if (pthread_create(&thread, NULL, sync_main, NULL) != 0) {
		(void) close(sync_job.fd);
		return -EAGAIN;
	}
	while (!__atomic_load_n(&sync_job.done, __ATOMIC_ACQUIRE)) {
		double now = bench_mono_s();
		if (now - start >= left) {
			(void) pthread_detach(thread);
			return -ETIMEDOUT;
		}
		if (now >= next) {
			settle_note(o, "writing back the store's file system", -1, -1, now - t0);
			next = now + BENCH_SETTLE_NOTE_S;
		}
		pause_ms(50);
	}
	(void) pthread_join(thread, NULL);
	(void) close(sync_job.fd);
	return sync_job.r;
}

/*
 * After the preload: wait until the broker's digest log is back at or below its limit
 * (nothing waits to be folded, the folder idle) and the store's file system is written
 * back, at most --settle-timeout seconds. A fold is installed by the batches after it, a
 * slice each, so while the log is over the limit a few messages are trickled (one council,
 * one in flight) every BENCH_SETTLE_PAUSE_MS. Returns 0 (settled or not: run->settle
 * says), or a negative errno when a trickled message was not acked.
 */
static int
run_settle(struct run *run)
{
	const struct bench_options *o = &run->o;
	struct bench_settle *st = &run->settle;
	const char *dir = o->ceiling_dir ? o->ceiling_dir : getenv("TMPDIR");
	struct bench_snapshot a, b;
	double t0 = bench_mono_s();
	int r = 0;

	*st = (struct bench_settle){.ran = true, .broker_cpu = -1};
	snap(o, run->zctx, false, &a);
	st->log_before = a.stats.digest_log;
	st->log_limit = a.stats.digest_log_limit;
	st->dirty_before_kib = bench_dirty_kib();
	if (!o->metrics || st->log_before < 0) {
		fprintf(stderr, "coord-bench: settle: the broker's digest log is not known (no "
		                "--metrics, or a broker without coordd_digest_log_contributions): "
		                "waiting for the write-back only\n");
	}
	double log = st->log_before;
	r = fold_wait(run, t0, &log, st->log_limit, &st->messages);
	if (r < 0 && r != -ETIMEDOUT) {
		return r;
	}
	st->log_after = log;
	if (r == 0) {
		double s0 = bench_mono_s();
		r = settle_sync(o, dir ? dir : "/tmp", t0, o->settle_timeout - (s0 - t0));
		st->sync_seconds = bench_mono_s() - s0;
	}
	st->dirty_after_kib = bench_dirty_kib();
	st->seconds = bench_mono_s() - t0;
	st->settled = r == 0;
	snap(o, run->zctx, false, &b);
	if (a.usage.cpu_seconds >= 0 && b.usage.cpu_seconds >= 0) {
		st->broker_cpu = b.usage.cpu_seconds - a.usage.cpu_seconds;
	}
	if (r < 0) {
		fprintf(stderr,
		        "coord-bench: settle: not settled after %.0f s (%s); the phases run "
		        "anyway\n",
		        st->seconds, r == -ETIMEDOUT ? "--settle-timeout" : strerror(-r));
	} else if (!o->quiet || st->seconds >= BENCH_SETTLE_NOTE_S) {
		settle_note(o, "done", log, st->log_limit, st->seconds);
	}
	return 0;
}

static int
run_all(struct run *run)
{
	const struct bench_options *o = &run->o;
	int r;

	if (o->preload) {
		uint64_t per = (o->preload + o->councils - 1) / o->councils;
		struct bench_phase ph = {
		        .name = "preload",
		        .endpoint = o->endpoint,
		        .tag = 'p',
		        .messages = (unsigned) per,
		        .window = BENCH_PRELOAD_WINDOW,
		        .on_the_fly = true,
		};
		struct bench_snapshot a, b;
		snap(o, run->zctx, false, &a);
		r = bench_phase_run(o, run->zctx, &ph, run->nonce, &run->res[run->n_res]);
		snap(o, run->zctx, false, &b);
		broker_delta(&a, &b, &run->res[run->n_res++]);
		if (r < 0 || !result_ok(&run->res[run->n_res - 1])) {
			return r < 0 ? r : 0;
		}
		if (o->settle_timeout > 0) {
			r = run_settle(run);
			if (r < 0) {
				return r;
			}
		}
	}
	if (o->preload_only) {
		snap(o, run->zctx, true, &run->end);
		return 0;
	}
	if (o->ceiling) {
		r = run_ceiling(run, BENCH_SERVER_ECHO);
		if (r < 0) {
			return r;
		}
		r = run_ceiling(run, BENCH_SERVER_LMDB);
		if (r < 0) {
			return r;
		}
	}
	r = run_coordd(run, "coordd", 'c', true);
	if (r >= 0 && o->subscribers) {
		r = run_subscribed(run);
	}
	/* The peers last: a server keeps working after its phase (RabbitMQ's quorum queue
	 * moves its log to segment files, holds what it took in memory), and that must not
	 * fall on coordd's phase. */
	for (unsigned i = 0; r >= 0 && i < o->n_peers; i++) {
		r = run_peer(run, &o->peers[i], (char) ('1' + i));
	}
	return r;
}

int
main(int argc, char **argv)
{
	struct run run = {
	        .o =
	                {
	                        .endpoint = "tcp://127.0.0.1:7701",
	                        .prefix = "c",
	                        .topic = "digest/all/",
	                        .councils = 11,
	                        .messages = 10000,
	                        .window = 64,
	                        .size = 300,
	                        .seed = 1,
	                        .fanout_wait = 10,
	                        .settle_timeout = BENCH_SETTLE_TIMEOUT_DEFAULT,
	                },
	};
	struct bench_options *o = &run.o;
	bool check_only = false;

	(void) bench_mix_parse(BENCH_MIX_DEFAULT, &o->mix);
	int r = parse_args(argc, argv, o, &run.publish, &check_only);
	if (r <= 0) {
		return r < 0 ? 2 : 0;
	}
	if (o->preload || check_only) {
		const char *dir = o->ceiling_dir ? o->ceiling_dir : getenv("TMPDIR");
		if (check_disk(o, dir ? dir : "/tmp") < 0) {
			return 2;
		}
		if (check_only) {
			return 0;
		}
	}
	if (o->subscribers) {
		raise_file_limit(o);
	}
	run.zctx = zmq_ctx_new();
	if (!run.zctx) {
		fprintf(stderr, "coord-bench: cannot create a libzmq context\n");
		return 2;
	}
	run.nonce = (uint64_t) time(NULL) * 1000003 ^ ((uint64_t) getpid() << 40);
	r = run_all(&run);
	if (r < 0) {
		fprintf(stderr, "coord-bench: %s\n", strerror(-r));
	}

	const struct bench_result *coordd = NULL;
	bool ok = r >= 0;
	int error = 0;
	for (size_t i = 0; i < run.n_res; i++) {
		if (strcmp(run.res[i].name, "coordd") == 0) {
			coordd = &run.res[i];
		}
		ok &= result_ok(&run.res[i]);
		if (run.res[i].error && !error) {
			error = run.res[i].error;
			fprintf(stderr, "coord-bench: %s: %s\n", run.res[i].name,
			        error == -ETIMEDOUT
			                ? "no ack within the timeout (is the broker running?)"
			                : strerror(-error));
		}
	}
	static const struct bench_result none = {.name = "coordd"};
	if (o->json) {
		bench_report_json(o, run.res, run.n_res, &run.settle, coordd ? coordd : &none,
		                  &run.end, run.have_fan ? &run.fan : NULL);
	} else {
		bench_report_text(o, run.res, run.n_res, &run.settle, coordd ? coordd : &none,
		                  &run.end, run.have_fan ? &run.fan : NULL);
	}
	(void) zmq_ctx_term(run.zctx);
	if (run.used_nats) {
		bench_peers_cleanup();
	}
	if (error == -ETIMEDOUT) {
		return 3;
	}
	if (ok && run.setup_error) {
		return 2; /* a --peer phase could not run */
	}
	return ok ? 0 : 1;
}

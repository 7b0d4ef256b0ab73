/*
 * bench: the parts of coord-bench, shared between its files.
 *
 *   records.c      the record mix and the Envelopes it builds
 *   pbscan.c       reading one top-level field of a protobuf message without unpacking it,
 *                  and the Ack the ceiling servers send
 *   ceiling.c      the two ceilings: a bare ROUTER echo and a bare ROUTER + LMDB group
 *                  commit loop, each one thread inside coord-bench
 *   broker.c       what the broker tells about itself: /proc, the stats query, /metrics
 *   subscribers.c  SUB sockets on the publish endpoint that time digest delivery
 *   peers.c        the same load against Redis Streams, NATS JetStream and RabbitMQ
 *   councils.c     the council threads of one phase
 *   report.c       the report, text or JSON, and the fan-out latencies
 *   coord-bench.c  options and the phases of a run
 *
 * Functions return 0 (or a count) on success and a negative errno on failure; none of them
 * prints, except coord-bench.c.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ------------------------------------------------------------------------------------------
 * records.c */

/* The five record kinds of proto/coord.proto (a Retraction is a revision, not a kind). */
enum bench_kind {
	BENCH_KIND_EVENT,
	BENCH_KIND_LETTER,
	BENCH_KIND_STATEMENT,
	BENCH_KIND_PETITION,
	BENCH_KIND_MEDIA,
	BENCH_KIND_MAX,
};

/* How often each kind is drawn: weight[k] / total. */
struct bench_mix {
	unsigned weight[BENCH_KIND_MAX];
	unsigned total;
};

/*
 * The default mix, the campaign of docs (shared DOMAIN.md) over nine weeks: 452 events,
 * 4,700 letters, 330 statements, ~50 petitions, 2,277 media reports.
 */
#define BENCH_MIX_DEFAULT "events=6,letters=60,statements=4,petitions=1,media=29"

/* The plural name of a kind as --mix spells it ("events"). */
const char *bench_kind_name(enum bench_kind k);

/*
 * Parse "events=40,letters=30,..." (names as bench_kind_name(), singular also accepted;
 * kinds left out weigh 0; weights 0 .. 1000000; at least one above 0). On success fills
 * *ret_mix and returns 0; -EINVAL otherwise (and *ret_mix is untouched).
 */
int bench_mix_parse(const char *s, struct bench_mix *ret_mix);

/* Write the mix as "events=6,letters=60,..." into buf (always terminated). */
void bench_mix_format(const struct bench_mix *mix, char *buf, size_t len);

/* Bounds of --size: the smallest Envelope any kind can be padded to, and the largest (one
 * text field holds at most 1,024 bytes, docs/PROTOCOL.md). */
#define BENCH_SIZE_MIN 200
#define BENCH_SIZE_MAX 1100

/*
 * Pack the Envelope of message `index` of `council`: a record of the kind the mix draws for
 * `seed` (any number; the same seed gives the same record), with varied countries,
 * languages, kinds and dates, its long text field padded so the Envelope is about `size`
 * bytes. `msg_id` is borrowed. Returns the packed length, written to buf, or -ENOBUFS when
 * it does not fit in `cap`. *ret_kind gets the kind drawn.
 */
int bench_record_pack(const struct bench_mix *mix, unsigned size, int64_t now_ms,
                      const char *council, const char *msg_id, uint64_t seed, uint8_t *buf,
                      size_t cap, enum bench_kind *ret_kind);

/* ------------------------------------------------------------------------------------------
 * pbscan.c */

/*
 * Find top-level field `field` of the protobuf message in buf and return its bytes
 * (length-delimited fields) or its value (varint fields). Only the top level is walked:
 * nested messages are skipped by their length. Return 0 when found, -ENOENT when absent,
 * -EBADMSG when buf is not a well-formed message or the field has another wire type.
 */
int bench_pb_bytes(const uint8_t *buf, size_t len, unsigned field, const uint8_t **ret_ptr,
                   size_t *ret_len);
int bench_pb_varint(const uint8_t *buf, size_t len, unsigned field, uint64_t *ret_value);

/*
 * Encode Ack {msg_id, revision 1, ACCEPTED, seq} by hand into buf. Returns its length, or
 * -ENOBUFS.
 */
int bench_ack_encode(const uint8_t *msg_id, size_t msg_id_len, uint64_t seq, uint8_t *buf,
                     size_t cap);

/* ------------------------------------------------------------------------------------------
 * ceiling.c */

enum bench_server_kind {
	BENCH_SERVER_ECHO, /* ROUTER: answer each message at once with an Ack */
	BENCH_SERVER_LMDB, /* ROUTER: drain, MDB_APPEND all in one txn, commit (fsync), ack all */
};

struct bench_server;

struct bench_server_stats {
	uint64_t messages;     /* answered */
	uint64_t batches;      /* LMDB commits (echo: wake-ups) */
	double cpu_seconds;    /* of the server thread alone (not libzmq's I/O thread) */
	double commit_seconds; /* time inside mdb_txn_commit() */
	int error;             /* the first error that stopped the thread, or 0 */
};

/* Most messages the LMDB loop takes into one transaction: coordd's default max_batch. */
#define BENCH_LMDB_MAX_BATCH 1024

/*
 * Start a ceiling server thread with its own libzmq context. `like` is the broker's ingest
 * endpoint: an ipc:// one makes the server bind ipc://<dir>/<kind>.sock, anything else
 * tcp://127.0.0.1 on a free port. `dir` must exist; the LMDB loop opens its environment in
 * a fresh subdirectory of it (removed by bench_server_stop()) with map size `map_size`.
 * On success returns 0 and *ret_server; the endpoint to connect to is
 * bench_server_endpoint().
 */
int bench_server_start(enum bench_server_kind kind, const char *like, const char *dir,
                       uint64_t map_size, struct bench_server **ret_server);
const char *bench_server_endpoint(const struct bench_server *s);

/* Stop the thread, fill *ret_stats, remove what it created, free. Accepts NULL. */
void bench_server_stop(struct bench_server *s, struct bench_server_stats *ret_stats);

/* ------------------------------------------------------------------------------------------
 * broker.c */

/* What /proc tells about a process; -1 where unknown. */
struct bench_usage {
	double cpu_seconds;    /* utime + stime, /proc/<pid>/stat */
	long hwm_kib;          /* VmHWM: peak resident set */
	long rss_kib;          /* VmRSS */
	long private_kib;      /* Private_Clean + Private_Dirty + Private_Hugetlb, smaps_rollup */
	long lmdb_private_kib; /* the same, of the mapping of the store's data.mdb (smaps) */
};

/* Read the usage of `pid`. With `smaps` false the two private figures stay -1 (smaps
 * walks every mapping: too slow to sample often). */
void bench_usage_read(pid_t pid, bool smaps, struct bench_usage *ret_usage);

/* The broker's counters; have_* say which parts were read. */
struct bench_broker_stats {
	bool have_stats; /* from the query socket */
	uint64_t last_seq, items, records, store_bytes, accepted, duplicate, batches;
	bool have_metrics; /* from GET /metrics */
	double batch_sum, batch_count, commit_sum;
	/* coordd_digest_log_contributions and coordd_digest_log_limit; -1 when the broker
	 * does not export them (an older one) */
	double digest_log, digest_log_limit;
};

/*
 * Ask the broker: a StatsRequest on `query_endpoint` (NULL: skipped) and GET /metrics on
 * `metrics_addr` ("HOST:PORT", numeric; NULL: skipped), each within a few seconds. Returns
 * 0 when every source asked answered, else the first error (-ETIMEDOUT, -EBADMSG, ...);
 * what did answer is filled in either way.
 */
int bench_broker_stats(void *zctx, const char *query_endpoint, const char *metrics_addr,
                       struct bench_broker_stats *ret_stats);

/* Dirty + Writeback of /proc/meminfo in KiB (data the kernel has yet to write back, all
 * file systems), or -1. */
long bench_dirty_kib(void);

/* ------------------------------------------------------------------------------------------
 * subscribers.c */

struct bench_subs;

/* One digest a subscriber applied: received at recv_ns (CLOCK_MONOTONIC), covering the
 * seqs first_seq .. last_seq, a Publication of `bytes` bytes. */
struct bench_sub_sample {
	int64_t recv_ns;
	uint64_t first_seq;
	uint64_t last_seq;
	size_t bytes;
};

/*
 * Start `n` SUB sockets on `endpoint`, in a libzmq context of their own, subscribed to
 * `topic` (borrowed for the life of subs), spread over a few threads. Returns 0 and
 * *ret_subs, or a negative errno (-EMFILE: raise the file limit).
 */
int bench_subs_start(const char *endpoint, const char *topic, unsigned n,
                     struct bench_subs **ret_subs);

/* Wait until every subscriber received something (the broker answers a subscription with
 * the topic's current digest), at most timeout_ms. Returns how many have. */
unsigned bench_subs_wait_ready(struct bench_subs *subs, int timeout_ms);

/* Record from now on only digests whose last_seq is above `base` (the store's last seq
 * before the measured phase). */
void bench_subs_arm(struct bench_subs *subs, uint64_t base);

/* Wait until every subscriber applied a digest with last_seq >= `last`, at most timeout_ms.
 * Returns how many did. */
unsigned bench_subs_wait_seq(struct bench_subs *subs, uint64_t last, int timeout_ms);

/* Stop the threads and close the sockets; the samples stay. Accepts NULL. */
void bench_subs_stop(struct bench_subs *subs);

/* All samples recorded since bench_subs_arm(), over every subscriber (call after
 * bench_subs_stop(); borrowed until bench_subs_free()); *ret_dropped counts samples not kept
 * for lack of room. */
const struct bench_sub_sample *bench_subs_samples(struct bench_subs *subs, size_t *ret_n,
                                                  uint64_t *ret_dropped);

/* Stop if needed and free everything. Accepts NULL. Returns NULL. */
struct bench_subs *bench_subs_free(struct bench_subs *subs);

/* ------------------------------------------------------------------------------------------
 * peers.c */

/* The Ack statuses of proto/coord.proto, which every phase counts in bench_result.status. */
enum {
	BENCH_STATUS_ACCEPTED = 1,
	BENCH_STATUS_DUPLICATE = 2,
	BENCH_STATUS_REJECTED = 3,
};

enum bench_peer_kind {
	BENCH_PEER_NONE,
	BENCH_PEER_REDIS,    /* Redis Streams, XADD (hiredis) */
	BENCH_PEER_NATS,     /* NATS JetStream, publish and PubAck (nats.c) */
	BENCH_PEER_RABBITMQ, /* RabbitMQ quorum queue, publisher confirms (rabbitmq-c) */
	BENCH_PEER_MAX,
};

/* One --peer KIND=HOST:PORT[,pid=PID]. */
struct bench_peer {
	enum bench_peer_kind kind;
	char host[64];
	int port;
	pid_t pid; /* the server's, for its CPU time and peak RSS; 0 unknown */
};

/* "redis", "nats"; the Debian package of its client library; whether this coord-bench was
 * built with that library. */
const char *bench_peer_name(enum bench_peer_kind kind);
const char *bench_peer_package(enum bench_peer_kind kind);
bool bench_peer_built(enum bench_peer_kind kind);

/* Parse "redis=127.0.0.1:6379" or "nats=127.0.0.1:4222,pid=1234" (an IPv4 address or a
 * host name, at most 63 bytes). Returns 0 and fills *ret_peer, or -EINVAL and leaves it. */
int bench_peer_parse(const char *s, struct bench_peer *ret_peer);

/*
 * Before the phase: Redis is asked whether it runs with appendonly yes and appendfsync
 * always; NATS gets its stream, RabbitMQ its quorum queue. Returns 0 (err may still say something
 * worth printing, such as a Redis that does not fsync), or a negative errno with the reason in err
 * (-ENOTSUP: the phase is not built).
 */
int bench_peer_prepare(const struct bench_peer *p, char *err, size_t errlen);

/* One council's connection to a peer. */
struct bench_link {
	enum bench_peer_kind kind;
	void *impl;
};

/*
 * Connect to the peer for one council named `name` (unique in the run: NATS uses it in the
 * reply subjects) that keeps at most `window` messages in flight; a receive that waits gives
 * up after timeout_ms. Returns 0, -ECONNREFUSED, -ENOMEM or -ENOTSUP.
 */
int bench_link_open(const struct bench_peer *p, const char *name, unsigned window, int timeout_ms,
                    struct bench_link *l);

/* Queue message `index` (data borrowed for the call only); messages go in index order from
 * 0 (RabbitMQ maps its delivery tags to them). Returns 0 or a negative errno. */
int bench_link_send(struct bench_link *l, unsigned index, const uint8_t *data, size_t len);

/* Write out what bench_link_send() queued (Redis; NATS's library writes on its own). */
int bench_link_flush(struct bench_link *l);

/*
 * Take one answer: with `wait`, block for it (at most the timeout: -ETIMEDOUT); without,
 * only one already received (0 when none). Returns 1 with the answered message's index and
 * its BENCH_STATUS_*, or a negative errno (-EBADMSG for an answer it does not understand).
 */
int bench_link_recv(struct bench_link *l, bool wait, unsigned *ret_index, unsigned *ret_status);

void bench_link_close(struct bench_link *l);

/* At exit: let the NATS library's threads end. */
void bench_peers_cleanup(void);

/* ------------------------------------------------------------------------------------------
 * councils.c, report.c: one phase of a run and what it measured */

/* coord-bench's command line. */
struct bench_options {
	const char *endpoint;
	const char *prefix;
	const char *query;
	const char *metrics;
	const char *ceiling_dir;
	const char *topic;
	unsigned councils;
	unsigned messages;
	unsigned window;
	unsigned size;
	unsigned subscribers;
	unsigned fanout_wait; /* seconds */
	uint64_t preload;
	unsigned settle_timeout; /* seconds; 0: no settle after the preload */
	bool preload_only;       /* the preload and its settle, no other phase */
	uint64_t seed;
	struct bench_mix mix;
	struct bench_peer peers[BENCH_PEER_MAX];
	unsigned n_peers;
	pid_t pid;
	bool ceiling;
	bool json;
	bool quiet;
};

/* One phase: the same load against one server. */
struct bench_phase {
	const char *name;
	const char *endpoint;
	const struct bench_peer *peer; /* not coordd nor a ceiling: this peer (endpoint unused) */
	char tag;                      /* in every msg_id of the phase */
	unsigned messages;             /* per council */
	unsigned window;
	bool on_the_fly;     /* build each Envelope just before sending it; no latencies */
	bool silent;         /* no progress lines, even for an on_the_fly phase */
	int64_t *ack_by_seq; /* subscribed phase: ack time of seq base + 1 + i, or NULL */
	uint64_t seq_base;
	uint64_t seq_n;
};

/* What one phase measured. */
struct bench_result {
	const char *name;
	bool ran;
	bool reference; /* a ceiling or a peer: coordd's throughput is reported as a ratio to it */
	uint64_t total, acked, status[5];
	double seconds, rate;
	double p50, p99, p999, max; /* ms */
	double mean_bytes;
	double server_cpu; /* broker CPU (coordd), the server thread's (ceilings); -1 unknown */
	/* coordd: the broker's CPU from the phase's start until its digest log was folded
	 * again (the folds of the phase's records that ran after its last ack included), and
	 * the messages trickled to get there (coord-bench.c fold_wait()); -1, 0 unknown */
	double server_cpu_folded;
	uint64_t fold_messages;
	double avg_batch, avg_commit_ms; /* -1 unknown */
	int error;
};

/* Fan-out figures of the subscribed phase. */
struct bench_fanout {
	unsigned subscribers, ready, caught_up;
	size_t digests;    /* samples with a known ack time */
	size_t before_ack; /* digests received before the ack of their newest record */
	uint64_t dropped;
	double newest[4];    /* p50, p99, p99.9, max in ms: from the newest record's ack */
	double oldest[4];    /* the same from the oldest record newly counted */
	double ingest_ratio; /* subscribed throughput / coordd throughput */
	double bytes[2];     /* mean and largest Publication of the digests, in bytes */
};

/* The settle after a preload (coord-bench.c): until the broker's digest log is folded
 * (a few messages trickled so that batches install the folds) and the kernel wrote back
 * the state directory's file system. */
struct bench_settle {
	bool ran;
	bool settled;          /* both done within --settle-timeout */
	double seconds;        /* the whole settle */
	double sync_seconds;   /* of it, the syncfs() of the store's file system */
	double broker_cpu;     /* the broker's CPU during the settle; -1 unknown */
	uint64_t messages;     /* trickled */
	double log_before;     /* digest log contributions at the start; -1 unknown */
	double log_after;      /* and at the end */
	double log_limit;      /* the broker's log limit; -1 unknown */
	long dirty_before_kib; /* Dirty + Writeback at the start; -1 unknown */
	long dirty_after_kib;  /* and after the syncfs() */
};

/* The broker's own view at one moment. */
struct bench_snapshot {
	struct bench_usage usage;
	struct bench_broker_stats stats;
};

/*
 * Run one phase to its end: every council sent all its messages and got every Ack, or
 * stopped on an error (kept in res->error: -ETIMEDOUT when an Ack did not come within
 * BENCH_ACK_TIMEOUT_MS). Fills *res: throughput (first send to last ack), latencies, counts.
 * Returns 0, or a negative errno when the phase could not run at all (-ENOMEM, -EAGAIN).
 */
#define BENCH_ACK_TIMEOUT_MS 30000
int bench_phase_run(const struct bench_options *o, void *zctx, const struct bench_phase *ph,
                    uint64_t nonce, struct bench_result *res);

/* CLOCK_MONOTONIC in seconds. */
double bench_mono_s(void);

/* qsort() comparison of int64_t; the p-quantile (0..1) of n sorted nanoseconds, in ms. */
int bench_cmp_i64(const void *a, const void *b);
double bench_quantile_ms(const int64_t *v, size_t n, double p);

/*
 * Fan-out latencies of the subscribed phase `ph` (its ack_by_seq filled) from the n samples
 * of the subscribers: fills f->digests, before_ack, newest and oldest.
 */
void bench_fanout_compute(const struct bench_phase *ph, const struct bench_sub_sample *s, size_t n,
                          struct bench_fanout *f);

/*
 * Print the report on stdout: the phases in res[0..n_res), the settle after the preload
 * (printed when it ran), coordd's result (one of res, or an empty result) as the reference
 * for ratios, the broker at the end, and the fan-out figures (NULL: none).
 */
void bench_report_json(const struct bench_options *o, const struct bench_result *res, size_t n_res,
                       const struct bench_settle *settle, const struct bench_result *coordd,
                       const struct bench_snapshot *end, const struct bench_fanout *f);
void bench_report_text(const struct bench_options *o, const struct bench_result *res, size_t n_res,
                       const struct bench_settle *settle, const struct bench_result *coordd,
                       const struct bench_snapshot *end, const struct bench_fanout *f);

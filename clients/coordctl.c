/*
 * coordctl: ask a running coordd for a digest, history, one record's status or its stats,
 * over the query socket (a DEALER sending one QueryRequest frame per request).
 *
 * Every request waits at most --timeout seconds for its answer; no answer means the broker
 * is unreachable (exit 3): libzmq connects lazily and never reports a refused connection,
 * so the timeout is the only signal. Answers are matched by request_id, so a late answer
 * to an earlier request is never taken for the current one.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <zmq.h>

#include "coord.pb-c.h"
#include "coordctl-store.h"
#include "coordd-version.h"
#include "pbjson.h"
#include "hqlib.h"
#include "idrule.h"
#include "keyopt.h"
#include "render.h"

#define EXIT_BROKER 1      /* the broker answered with an error (or a local failure) */
#define EXIT_USAGE 2       /* bad command line */
#define EXIT_UNREACHABLE 3 /* no answer within the timeout */

#define DEFAULT_ENDPOINT "tcp://127.0.0.1:7703"
#define ANSWER_MAX (64 * 1024 * 1024)

static const char *arg_endpoint = DEFAULT_ENDPOINT;
static double arg_timeout = 5.0;
static bool arg_json = false;
static bool arg_export = false; /* history prints bare Envelopes: coord-push import's format */
static const char *arg_server_key = NULL;
static const char *arg_key = NULL;

struct client {
	void *ctx;
	void *sock;
	void *mon; /* handshake failures of sock (keyopt) */
	struct keyopt keys;
	uint64_t next_id;
};

static void
help(void)
{
	printf("Usage: coordctl [--endpoint ENDPOINT] [--timeout SECONDS] COMMAND [OPTION]...\n"
	       "Ask a running coordd (its query socket) for digests, history, a record's status\n"
	       "or its stats.\n"
	       "\n"
	       "Commands:\n"
	       "  digest [--window all|24h|1h|FROM..TO] [--council ID | --country CC]\n"
	       "         [--headlines N] [--json]\n"
	       "      The digest of the whole campaign, one council or one country (where the\n"
	       "      activity happened) over a window: the whole campaign (default), the last\n"
	       "      24 hours, the last hour, or [FROM, TO) in ISO 8601 (2024-05-01 is 00:00\n"
	       "      UTC; 2024-05-01T12:00Z, 2024-05-01T14:00+02:00 also work), widened to\n"
	       "      whole UTC hours. Text: the scope/window/seq line, one sentence per line,\n"
	       "      the newest headlines. --json: the Digest in the proto3 JSON mapping.\n"
	       "  history [--after SEQ] [--limit N] [--council ID] [--json]\n"
	       "      Stored records with seq above SEQ (default 0), in seq order, at most N\n"
	       "      (default: all). --json: JSON Lines, one Item per line with its envelope\n"
	       "      decoded.\n"
	       "  export [--after SEQ] [--limit N] [--council ID]\n"
	       "      Like history, but one Envelope per line in the proto3 JSON mapping:\n"
	       "      exactly what `coord-push import FILE.jsonl` reads (every revision, in\n"
	       "      seq order; a progress line on a terminal).\n"
	       "  status COUNCIL MSG_ID [--json]\n"
	       "      The latest revision of one record, and whether it is retracted.\n"
	       "  stats [--json]\n"
	       "      Store size, counters, connections, version and uptime.\n"
	       "  keygen NAME [--role council|subscriber|admin]\n"
	       "      Make a CURVE keypair: NAME.secret (mode 0600) and NAME.public; never\n"
	       "      overwrites. Prints the public key and the keys-file lines to give the\n"
	       "      broker's operator. `coordctl keygen --help` says more.\n"
	       "\n"
	       "Commands on a state directory (no broker needed; --endpoint is not used):\n"
	       "  backup [--json] STATE_DIR DEST\n"
	       "      A hot, compacted, consistent copy of the store into DEST (which must not\n"
	       "      exist or be an empty directory), fsynced; coordd may keep running. Every\n"
	       "      record acknowledged before the backup began is in it.\n"
	       "  verify [--json] STATE_DIR\n"
	       "      Check every record (it decodes and passes the broker's validation), the\n"
	       "      index against the items and the aggregates against a recount; name each\n"
	       "      problem. Safe while coordd runs.\n"
	       "  repair [--json] STATE_DIR\n"
	       "      Rebuild the index and the aggregates from the items, then verify. Refuses\n"
	       "      while coordd runs on STATE_DIR. Records themselves are never changed.\n"
	       "  --json prints one JSON object (a summary; problems listed) on stdout. Progress\n"
	       "  goes to stderr on a terminal.\n"
	       "\n"
	       "Options:\n"
	       "  -e, --endpoint=ENDPOINT  the query socket (default %s)\n"
	       "  -t, --timeout=SECONDS    wait at most this long for each answer (default 5)\n"
	       "      --server-key=KEY     CURVE: the broker's public key, Z85 or a .public file\n"
	       "                           ($COORD_SERVER_KEY)\n"
	       "      --key=FILE           CURVE: your secret key file, NAME.secret, mode 0600\n"
	       "                           ($COORD_KEY); both keys or neither. stats and export\n"
	       "                           need an admin key, the others a subscriber key\n"
	       "  -h, --help               print this help and exit\n"
	       "      --version            print the version and exit\n"
	       "\n"
	       "Exit status: 0 success; 1 the broker answered with an error (printed), or keygen\n"
	       "failed; 2 bad usage or a bad key file; 3 no answer within the timeout (coordd not\n"
	       "running or unreachable, or it refused the key: printed).\n"
	       "backup/verify/repair: 0 success (verify: intact); 1 problems found (verify) or\n"
	       "left (repair); 2 bad usage; 4 the state directory cannot be used (no store,\n"
	       "coordd holds it for repair, DEST not empty, I/O error).\n",
	       DEFAULT_ENDPOINT);
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int
usage_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	int r = hq_usage_verror("coordctl", fmt, ap);
	va_end(ap);
	return r;
}

static bool
parse_u64(const char *s, uint64_t *ret)
{
	char *end;

	if (!s || *s < '0' || *s > '9') {
		return false;
	}
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end) {
		return false;
	}
	*ret = v;
	return true;
}

static int
client_open(struct client *c)
{
	int linger = 0;

	c->ctx = zmq_ctx_new();
	c->sock = c->ctx ? zmq_socket(c->ctx, ZMQ_DEALER) : NULL;
	if (!c->sock) {
		fprintf(stderr, "coordctl: cannot create a ZeroMQ socket: %s\n",
		        zmq_strerror(zmq_errno()));
		return -EIO;
	}
	(void) zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof(linger));
	int r = keyopt_apply(&c->keys, c->sock);
	if (r < 0) {
		fprintf(stderr, "coordctl: cannot set the CURVE keys: %s\n", zmq_strerror(-r));
		return -EIO;
	}
	c->mon = keyopt_monitor(c->ctx, c->sock, "coordctl");
	if (!c->mon) {
		fprintf(stderr, "coordctl: cannot monitor the ZeroMQ socket: %s\n",
		        zmq_strerror(zmq_errno()));
		return -EIO;
	}
	if (zmq_connect(c->sock, arg_endpoint) < 0) {
		fprintf(stderr, "coordctl: bad endpoint '%s': %s\n", arg_endpoint,
		        zmq_strerror(zmq_errno()));
		return -EINVAL;
	}
	/* Distinct ids across runs, so that nothing stale can match. */
	c->next_id = ((uint64_t) time(NULL) << 20) ^ ((uint64_t) getpid() << 4);
	return 0;
}

static void
client_close(struct client *c)
{
	if (c->mon) {
		(void) zmq_socket_monitor(c->sock, NULL, 0);
		(void) zmq_close(c->mon);
	}
	if (c->sock) {
		(void) zmq_close(c->sock);
	}
	keyopt_done(&c->keys);
	if (c->ctx) {
		(void) zmq_ctx_term(c->ctx);
	}
}

/*
 * Send `req` and wait for its answer. Returns an exit status: 0 with *ret_resp (caller
 * frees; an error answer is printed and gives EXIT_BROKER), or EXIT_UNREACHABLE.
 */
static int
ask(struct client *c, Coord__V1__QueryRequest *req, Coord__V1__QueryResponse **ret_resp)
{
	const struct hq_query q = {
	        .prog = "coordctl",
	        .sock = c->sock,
	        .mon = c->mon,
	        .curve = c->keys.curve,
	        .endpoint = arg_endpoint,
	        .timeout = arg_timeout,
	        .answer_max = ANSWER_MAX,
	};
	req->request_id = ++c->next_id;
	return hq_ask(&q, req, ret_resp);
}

static int
print_json(const ProtobufCMessage *msg)
{
	char *text = NULL;
	int r = coord__pbjson_encode(msg, 0, &text);

	if (r < 0) {
		fprintf(stderr, "coordctl: cannot write JSON: %s\n", strerror(-r));
		return EXIT_BROKER;
	}
	printf("%s\n", text);
	free(text);
	return 0;
}

/* "all", "24h", "1h" or "FROM..TO". */
static int
parse_window(const char *s, Coord__V1__DigestRequest *dr)
{
	if (strcmp(s, "all") == 0) {
		dr->window = COORD__V1__WINDOW__WINDOW_ALL;
		return 0;
	}
	if (strcmp(s, "24h") == 0) {
		dr->window = COORD__V1__WINDOW__WINDOW_LAST_24H;
		return 0;
	}
	if (strcmp(s, "1h") == 0) {
		dr->window = COORD__V1__WINDOW__WINDOW_LAST_1H;
		return 0;
	}
	const char *dots = strstr(s, "..");
	if (!dots || dots == s) {
		return -EINVAL;
	}
	char from[64];
	size_t n = (size_t) (dots - s);
	if (n >= sizeof(from)) {
		return -EINVAL;
	}
	memcpy(from, s, n);
	from[n] = '\0';
	if (render_parse_time(from, &dr->start) < 0 || render_parse_time(dots + 2, &dr->end) < 0 ||
	    dr->end <= dr->start) {
		return -EINVAL;
	}
	dr->window = COORD__V1__WINDOW__WINDOW_RANGE;
	return 0;
}

static int
cmd_digest(struct client *c, int argc, char **argv)
{
	enum { ARG_JSON = 0x100 };
	static const struct option options[] = {
	        {"window", required_argument, NULL, 'w'},
	        {"council", required_argument, NULL, 'c'},
	        {"country", required_argument, NULL, 'C'},
	        {"headlines", required_argument, NULL, 'n'},
	        {"json", no_argument, NULL, ARG_JSON},
	        {0},
	};
	Coord__V1__QueryRequest req = COORD__V1__QUERY_REQUEST__INIT;
	Coord__V1__DigestRequest dr = COORD__V1__DIGEST_REQUEST__INIT;
	Coord__V1__Scope scope = COORD__V1__SCOPE__INIT;
	uint64_t n;
	int opt;

	scope.kind = COORD__V1__SCOPE_KIND__SCOPE_KIND_ALL;
	while ((opt = getopt_long(argc, argv, "w:c:C:n:", options, NULL)) >= 0) {
		switch (opt) {
		case 'w':
			if (parse_window(optarg, &dr) < 0) {
				return usage_error(
				        "bad --window '%s': use all, 24h, 1h or FROM..TO in "
				        "ISO 8601 (e.g. 2024-05-01..2024-05-08)",
				        optarg);
			}
			break;
		case 'c':
		case 'C':
			if (scope.kind != COORD__V1__SCOPE_KIND__SCOPE_KIND_ALL) {
				return usage_error("give at most one of --council and --country");
			}
			scope.kind = opt == 'c' ? COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNCIL
			                        : COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNTRY;
			scope.id = optarg;
			break;
		case 'n':
			if (!parse_u64(optarg, &n) || n > 50) {
				return usage_error("bad --headlines '%s': use 0 to 50", optarg);
			}
			dr.headlines = (uint32_t) n;
			break;
		case ARG_JSON:
			arg_json = true;
			break;
		default:
			return usage_error("bad option for 'digest'");
		}
	}
	if (optind < argc) {
		return usage_error("unexpected argument '%s' for 'digest'", argv[optind]);
	}
	dr.scope = &scope;
	req.body_case = COORD__V1__QUERY_REQUEST__BODY_DIGEST;
	req.digest = &dr;

	Coord__V1__QueryResponse *resp = NULL;
	int r = ask(c, &req, &resp);
	if (r != 0) {
		return r;
	}
	if (resp->body_case != COORD__V1__QUERY_RESPONSE__BODY_DIGEST) {
		fprintf(stderr, "coordctl: the broker answered something else than a digest\n");
		r = EXIT_BROKER;
	} else if (arg_json) {
		r = print_json(&resp->digest->base);
	} else {
		char *text = NULL;
		if (render_digest(resp->digest, RENDER_HEADER | RENDER_HEADLINES, &text) < 0) {
			fprintf(stderr, "coordctl: out of memory\n");
			r = EXIT_BROKER;
		} else {
			fputs(text, stdout);
			free(text);
		}
	}
	coord__v1__query_response__free_unpacked(resp, NULL);
	return r;
}

static const char *
body_name(Coord__V1__Envelope__BodyCase body)
{
	switch (body) {
	case COORD__V1__ENVELOPE__BODY_EVENT:
		return "event";
	case COORD__V1__ENVELOPE__BODY_LETTER:
		return "letter";
	case COORD__V1__ENVELOPE__BODY_STATEMENT:
		return "statement";
	case COORD__V1__ENVELOPE__BODY_PETITION:
		return "petition";
	case COORD__V1__ENVELOPE__BODY_MEDIA:
		return "media";
	case COORD__V1__ENVELOPE__BODY_RETRACTION:
		return "retraction";
	default:
		return "?";
	}
}

/* One line per item: seq, received at, council, category, msg_id and revision. */
static int
print_item(const Coord__V1__Item *it)
{
	char when[RENDER_TIME_MAX];

	if (arg_export) {
		Coord__V1__Envelope *env =
		        coord__v1__envelope__unpack(NULL, it->envelope.len, it->envelope.data);
		if (!env) {
			fprintf(stderr, "coordctl: item %" PRIu64 " holds no decodable Envelope\n",
			        it->seq);
			return EXIT_BROKER;
		}
		int r = print_json(&env->base);
		coord__v1__envelope__free_unpacked(env, NULL);
		return r;
	}
	if (arg_json) {
		char *text = NULL;
		int r = render_item_json(it, &text);
		if (r < 0) {
			fprintf(stderr, "coordctl: cannot write item %" PRIu64 " as JSON: %s\n",
			        it->seq, strerror(-r));
			return EXIT_BROKER;
		}
		printf("%s\n", text);
		free(text);
		return 0;
	}
	Coord__V1__Envelope *env =
	        coord__v1__envelope__unpack(NULL, it->envelope.len, it->envelope.data);
	printf("%" PRIu64 "\t%s\t%s\t%s\t%s\trev %" PRIu32 "\n", it->seq,
	       render_time(it->received_at, when, sizeof(when)), it->council ? it->council : "",
	       env ? body_name(env->body_case) : "?", env && env->msg_id ? env->msg_id : "?",
	       env ? env->revision : 0);
	if (env) {
		coord__v1__envelope__free_unpacked(env, NULL);
	}
	return 0;
}

static int
cmd_history(struct client *c, int argc, char **argv)
{
	enum { ARG_JSON = 0x100 };
	static const struct option options[] = {
	        {"after", required_argument, NULL, 'a'},
	        {"limit", required_argument, NULL, 'l'},
	        {"council", required_argument, NULL, 'c'},
	        {"json", no_argument, NULL, ARG_JSON},
	        {0},
	};
	Coord__V1__QueryRequest req = COORD__V1__QUERY_REQUEST__INIT;
	Coord__V1__HistoryRequest hr = COORD__V1__HISTORY_REQUEST__INIT;
	uint64_t after = 0, limit = 0;
	int opt;

	while ((opt = getopt_long(argc, argv, "a:l:c:", options, NULL)) >= 0) {
		switch (opt) {
		case 'a':
			if (!parse_u64(optarg, &after)) {
				return usage_error("bad --after '%s': use a seq number", optarg);
			}
			break;
		case 'l':
			if (!parse_u64(optarg, &limit) || limit == 0) {
				return usage_error("bad --limit '%s': use a number above 0",
				                   optarg);
			}
			break;
		case 'c':
			hr.council = optarg;
			break;
		case ARG_JSON:
			arg_json = true;
			break;
		default:
			return usage_error("bad option for 'history' or 'export'");
		}
	}
	if (optind < argc) {
		return usage_error("unexpected argument '%s' for 'history' or 'export'",
		                   argv[optind]);
	}
	req.body_case = COORD__V1__QUERY_REQUEST__BODY_HISTORY;
	req.history = &hr;
	uint64_t printed = 0;
	/* A long export shows how far it got, on a terminal only (stdout is the data). */
	bool progress = arg_export && isatty(STDERR_FILENO);
	for (;;) {
		Coord__V1__QueryResponse *resp = NULL;
		hr.after_seq = after;
		hr.limit = limit && limit - printed < UINT32_MAX ? (uint32_t) (limit - printed) : 0;
		int r = ask(c, &req, &resp);
		if (r != 0) {
			return r;
		}
		if (resp->body_case != COORD__V1__QUERY_RESPONSE__BODY_HISTORY) {
			coord__v1__query_response__free_unpacked(resp, NULL);
			fprintf(stderr,
			        "coordctl: the broker answered something else than history\n");
			return EXIT_BROKER;
		}
		const Coord__V1__HistoryPage *page = resp->history;
		for (size_t i = 0; i < page->n_items && r == 0; i++) {
			r = print_item(page->items[i]);
			printed++;
		}
		if (progress) {
			fprintf(stderr, "\rcoordctl: %" PRIu64 " records, up to seq %" PRIu64,
			        printed, page->next_after_seq);
		}
		bool done = page->complete || (limit && printed >= limit) ||
		            page->next_after_seq <= after;
		after = page->next_after_seq;
		coord__v1__query_response__free_unpacked(resp, NULL);
		if (r != 0 || done) {
			if (progress) {
				fprintf(stderr, "\n");
			}
			(void) fflush(stdout);
			return r;
		}
	}
}

/* export: history in coord-push import's JSON Lines format. */
static int
cmd_export(struct client *c, int argc, char **argv)
{
	arg_export = true;
	return cmd_history(c, argc, argv);
}

static int
cmd_status(struct client *c, int argc, char **argv)
{
	enum { ARG_JSON = 0x100 };
	static const struct option options[] = {
	        {"json", no_argument, NULL, ARG_JSON},
	        {0},
	};
	Coord__V1__QueryRequest req = COORD__V1__QUERY_REQUEST__INIT;
	Coord__V1__StatusRequest sr = COORD__V1__STATUS_REQUEST__INIT;
	int opt;

	while ((opt = getopt_long(argc, argv, "", options, NULL)) >= 0) {
		if (opt != ARG_JSON) {
			return usage_error("bad option for 'status'");
		}
		arg_json = true;
	}
	if (argc - optind != 2) {
		return usage_error("'status' needs COUNCIL and MSG_ID");
	}
	sr.council = argv[optind];
	sr.msg_id = argv[optind + 1];
	req.body_case = COORD__V1__QUERY_REQUEST__BODY_STATUS;
	req.status = &sr;

	Coord__V1__QueryResponse *resp = NULL;
	int r = ask(c, &req, &resp);
	if (r != 0) {
		return r;
	}
	const Coord__V1__RecordStatus *st = resp->status;
	if (resp->body_case != COORD__V1__QUERY_RESPONSE__BODY_STATUS) {
		fprintf(stderr, "coordctl: the broker answered something else than a status\n");
		r = EXIT_BROKER;
	} else if (arg_json) {
		char *text = NULL;
		r = render_status_json(st, &text);
		if (r < 0) {
			fprintf(stderr, "coordctl: cannot write JSON: %s\n", strerror(-r));
			r = EXIT_BROKER;
		} else {
			printf("%s\n", text);
			free(text);
		}
	} else if (!st->found) {
		printf("%s %s: not found\n", sr.council, sr.msg_id);
	} else {
		char when[RENDER_TIME_MAX], num[RENDER_NUMBER_MAX];
		printf("%s %s: revision %" PRIu32 " at seq %s, received %s%s\n", sr.council,
		       sr.msg_id, st->revision, render_number(st->seq, num, sizeof(num)),
		       render_time(st->item ? st->item->received_at : 0, when, sizeof(when)),
		       st->retracted ? ", RETRACTED" : "");
	}
	coord__v1__query_response__free_unpacked(resp, NULL);
	return r;
}

static void
print_duration(uint64_t ms)
{
	uint64_t s = ms / 1000;

	if (s >= 86400) {
		printf("%" PRIu64 "d %" PRIu64 "h", s / 86400, s % 86400 / 3600);
	} else if (s >= 3600) {
		printf("%" PRIu64 "h %" PRIu64 "m", s / 3600, s % 3600 / 60);
	} else {
		printf("%" PRIu64 "m %" PRIu64 "s", s / 60, s % 60);
	}
}

static int
cmd_stats(struct client *c, int argc, char **argv)
{
	enum { ARG_JSON = 0x100 };
	static const struct option options[] = {
	        {"json", no_argument, NULL, ARG_JSON},
	        {0},
	};
	Coord__V1__QueryRequest req = COORD__V1__QUERY_REQUEST__INIT;
	Coord__V1__StatsRequest sr = COORD__V1__STATS_REQUEST__INIT;
	int opt;

	while ((opt = getopt_long(argc, argv, "", options, NULL)) >= 0) {
		if (opt != ARG_JSON) {
			return usage_error("bad option for 'stats'");
		}
		arg_json = true;
	}
	if (optind < argc) {
		return usage_error("unexpected argument '%s' for 'stats'", argv[optind]);
	}
	req.body_case = COORD__V1__QUERY_REQUEST__BODY_STATS;
	req.stats = &sr;

	Coord__V1__QueryResponse *resp = NULL;
	int r = ask(c, &req, &resp);
	if (r != 0) {
		return r;
	}
	const Coord__V1__Stats *s = resp->stats;
	if (resp->body_case != COORD__V1__QUERY_RESPONSE__BODY_STATS) {
		fprintf(stderr, "coordctl: the broker answered something else than stats\n");
		r = EXIT_BROKER;
	} else if (arg_json) {
		r = print_json(&s->base);
	} else {
		char a[RENDER_NUMBER_MAX], b[RENDER_NUMBER_MAX], t[RENDER_TIME_MAX];
		printf("coordd %s, up ", s->version ? s->version : "?");
		print_duration(s->uptime_ms);
		printf(" (since %s)\n", render_time(s->started_at, t, sizeof(t)));
		printf("store: %s items, %s records, ", render_number(s->items, a, sizeof(a)),
		       render_number(s->records, b, sizeof(b)));
		printf("last seq %s, %" PRIu64 " MiB used of a %" PRIu64 " MiB map\n",
		       render_number(s->last_seq, a, sizeof(a)), s->store_bytes >> 20,
		       s->map_size >> 20);
		printf("since start: %s accepted, %" PRIu64 " duplicate, %" PRIu64
		       " rejected, %" PRIu64 " retry later, in %s batches\n",
		       render_number(s->accepted, a, sizeof(a)), s->duplicate, s->rejected,
		       s->retry_later, render_number(s->batches, b, sizeof(b)));
		printf("connections: %" PRIu32 " council, %" PRIu32 " subscriber, %" PRIu32
		       " query\n",
		       s->ingest_connections, s->publish_connections, s->query_connections);
	}
	coord__v1__query_response__free_unpacked(resp, NULL);
	return r;
}

static void
keygen_help(void)
{
	printf("Usage: coordctl keygen NAME [--role council|subscriber|admin]\n"
	       "Make a CURVE keypair for a council, a headquarters subscriber or admin, or the\n"
	       "broker itself. NAME is a path without extension: writes NAME.secret (mode 0600:\n"
	       "keep it on the host that uses it, never send it) and NAME.public. Refuses when\n"
	       "either file exists: a key is never overwritten.\n"
	       "\n"
	       "Prints the public key and the lines for the broker's keys file ([security]\n"
	       "keys_file), under the role given (default council) and the id NAME's last path\n"
	       "component (change it to the council's id if it differs), e.g.\n"
	       "\n"
	       "    [council.fr]\n"
	       "    public_key = <the 40 characters>\n"
	       "\n"
	       "Give NAME.public to the broker's operator; the broker takes it after a reload\n"
	       "(SIGHUP). Clients use the pair with --key NAME.secret and the broker's public\n"
	       "key with --server-key. For the broker's own pair, set secret_key_file =\n"
	       "NAME.secret in [security] and give NAME.public to every client.\n"
	       "\n"
	       "Exit status: 0 written; 1 a file exists or cannot be written (nothing is left\n"
	       "behind); 2 bad usage.\n");
}

/* keygen: no connection; argv[0] is "keygen". */
static int
cmd_keygen(int argc, char **argv)
{
	static const struct option options[] = {
	        {"role", required_argument, NULL, 'r'},
	        {"help", no_argument, NULL, 'h'},
	        {0},
	};
	const char *role = "council";
	int opt;

	while ((opt = getopt_long(argc, argv, "r:h", options, NULL)) >= 0) {
		switch (opt) {
		case 'r':
			if (strcmp(optarg, "council") != 0 && strcmp(optarg, "subscriber") != 0 &&
			    strcmp(optarg, "admin") != 0) {
				return usage_error(
				        "bad --role '%s': use council, subscriber or admin",
				        optarg);
			}
			role = optarg;
			break;
		case 'h':
			keygen_help();
			return 0;
		default:
			return usage_error("bad option for 'keygen'");
		}
	}
	if (argc - optind != 1) {
		return usage_error("'keygen' needs one NAME (a path without extension)");
	}
	const char *name = argv[optind];
	char public_key[COORD_KEY_Z85_LEN + 1];
	struct coord_error err = {.field = ""};
	int r = coord_keygen(name, public_key, &err);
	if (r < 0) {
		fprintf(stderr, "coordctl: keygen: %s\n", err.message);
		return EXIT_BROKER;
	}
	/* The id hint: NAME's last component when it is a valid id, else a placeholder. */
	const char *base = strrchr(name, '/') ? strrchr(name, '/') + 1 : name;
	bool id_ok = idrule_id_valid(base);
	printf("wrote %s.secret (mode 0600, keep it secret) and %s.public\n", name, name);
	printf("public key: %s\n", public_key);
	printf("\nFor the broker's keys file (then reload it):\n\n[%s.%s]\npublic_key = %s\n", role,
	       id_ok ? base : "ID", public_key);
	return 0;
}

int
main(int argc, char **argv)
{
	enum { ARG_VERSION = HQ_OPT_VERSION, ARG_SERVER_KEY, ARG_KEY };
	static const struct option options[] = {
	        {"endpoint", required_argument, NULL, 'e'},
	        {"timeout", required_argument, NULL, 't'},
	        {"help", no_argument, NULL, 'h'},
	        {"version", no_argument, NULL, ARG_VERSION},
	        {"server-key", required_argument, NULL, ARG_SERVER_KEY},
	        {"key", required_argument, NULL, ARG_KEY},
	        {0},
	};
	struct client c = {0};
	int opt, r;

	/* '+': options after the command belong to the command. */
	while ((opt = getopt_long(argc, argv, "+e:t:h", options, NULL)) >= 0) {
		switch (opt) {
		case 'e':
			arg_endpoint = optarg;
			break;
		case ARG_SERVER_KEY:
			arg_server_key = optarg;
			break;
		case ARG_KEY:
			arg_key = optarg;
			break;
		default:
			/* -t, -h, --version, and what getopt refused. */
			r = hq_common_option("coordctl", opt, optarg, &arg_timeout, help);
			if (r != HQ_OPTION_HANDLED) {
				return r;
			}
			break;
		}
	}
	if (optind >= argc) {
		return usage_error("no command: use digest, history, export, status, stats, "
		                   "keygen, backup, verify or repair");
	}
	const char *cmd = argv[optind];
	if (coordctl_store_command(cmd)) {
		int first = optind;

		optind = 0; /* as below: the command parses its own options from its name on */
		return coordctl_store_main(argc - first, argv + first);
	}
	if (strcmp(cmd, "keygen") == 0) {
		/* No connection and no keys: it makes them. Its options as below. */
		int keygen_argc = argc - optind;
		char **keygen_argv = argv + optind;
		optind = 0;
		return cmd_keygen(keygen_argc, keygen_argv);
	}
	int (*run)(struct client *, int, char **) = NULL;
	if (strcmp(cmd, "digest") == 0) {
		run = cmd_digest;
	} else if (strcmp(cmd, "history") == 0) {
		run = cmd_history;
	} else if (strcmp(cmd, "export") == 0) {
		run = cmd_export;
	} else if (strcmp(cmd, "status") == 0) {
		run = cmd_status;
	} else if (strcmp(cmd, "stats") == 0) {
		run = cmd_stats;
	} else {
		return usage_error(
		        "unknown command '%s': use digest, history, export, status, stats "
		        "or keygen",
		        cmd);
	}
	/* The command parses its own options from its name on. */
	argc -= optind;
	argv += optind;
	optind = 0; /* 0, not 1: glibc's getopt then forgets its state */
	char why[KEYOPT_MESSAGE_MAX];
	r = keyopt_load(arg_server_key, arg_key, &c.keys, why, sizeof(why));
	if (r < 0) {
		fprintf(stderr, "coordctl: %s\n", why);
		return EXIT_USAGE;
	}
	r = client_open(&c);
	r = r < 0 ? (r == -EINVAL ? EXIT_USAGE : EXIT_BROKER) : run(&c, argc, argv);
	client_close(&c);
	return r;
}

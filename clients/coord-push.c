/*
 * coord-push: a council's command line for pushing records to coordd, over libcoord.
 *
 *     coord-push [OPTION]... event|letter|statement|petition|media --FIELD VALUE...
 *     coord-push [OPTION]... retract MSG_ID [--reason TEXT] [--revision N]
 *     coord-push [OPTION]... correct MSG_ID --revision N CATEGORY --FIELD VALUE...
 *     coord-push [OPTION]... import FILE
 *     coord-push [OPTION]... outbox | flush
 *
 * Every record goes through libcoord's durable outbox: it is on disk before anything is
 * sent, and stays there until the broker answered it finally, so a crash, a Ctrl-C or a
 * broker restart loses nothing; running the same command again sends nothing twice, because
 * a record's msg_id is given or derived from its content (libcoord's record.c) and the
 * broker de-duplicates by it.
 *
 * import reads the whole file and checks every row with the broker's own rules before
 * sending anything, names each bad row by line and field, then queues the good rows
 * (default) or none (--all-or-nothing), and waits for the answers with a progress display.
 * The command waits only for the records it pushed: a tracker (a hash table of their keys)
 * takes the ack callback's reports.
 *
 * Output: results on stdout (text, or one JSON object with --json); progress, bad rows and
 * errors on stderr.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "coord.h"
#include "coord.pb-c.h"
#include "coordd-version.h"
#include "pbjson.h"
#include "coord-push.h"
#include "keyopt.h"
#include "record.h"

#define PROGRESS_TICK_MS 250

const char *arg_endpoint = NULL;
const char *arg_council = NULL;
const char *arg_outbox = NULL;
double arg_timeout = 30.0;
bool arg_json = false;
static unsigned arg_max_in_flight = 0;
static unsigned arg_ack_timeout_ms = 0;
static unsigned arg_backoff_max_ms = 0;
static const char *arg_server_key = NULL;
static const char *arg_key = NULL;
static struct keyopt push_keys; /* loaded by push_resolve_defaults(), cleared when used */
static bool push_curve;         /* keys were given */
/* import */
const char *arg_format = NULL;
const char *arg_category = NULL;
bool arg_all_or_nothing = false;
bool arg_check_only = false;
char arg_delimiter = ',';

void
push_help(void)
{
	printf("Usage: coord-push [OPTION]... COMMAND [ARGUMENT]...\n"
	       "Push a council's activity records to coordd, through a durable local outbox.\n"
	       "\n"
	       "Commands:\n"
	       "  event|letter|statement|petition|media --FIELD VALUE...\n"
	       "      One record from flags, e.g. event --kind rally --country DE --city Berlin\n"
	       "      --date 2020-10-04 --title \"...\". `coord-push event --help` lists the\n"
	       "      fields. --msg-id ID sets the record's id (default: derived from the\n"
	       "      council, the category and the content, so the same record is one record).\n"
	       "  retract MSG_ID [--reason TEXT] [--revision N]\n"
	       "      Withdraw a record; N must be above its stored revision (default 2).\n"
	       "  correct MSG_ID --revision N CATEGORY --FIELD VALUE...\n"
	       "      A new revision of a record (N above the stored one) with a new body.\n"
	       "  import FILE [--format csv|jsonl] [--category C] [--all-or-nothing] [--check]\n"
	       "              [--delimiter C]\n"
	       "      Push every row of a CSV file (header row of field names; a `category`\n"
	       "      column or --category) or a JSON Lines file (one Envelope per line, proto3\n"
	       "      JSON). Every row is checked first; bad rows are reported by line and field\n"
	       "      and the good ones are sent, or none with --all-or-nothing. --check only\n"
	       "      checks. Safe to run again after a crash: no row is counted twice.\n"
	       "  outbox [--json]\n"
	       "      List the records waiting in the outbox and those the broker rejected.\n"
	       "  outbox forget MSG_ID REVISION\n"
	       "      Remove a rejected record from the outbox.\n"
	       "  flush\n"
	       "      Send what waits in the outbox and wait for the answers.\n"
	       "\n"
	       "Options (before or after the command):\n"
	       "  -e, --endpoint=ENDPOINT  broker ingest socket ($COORD_ENDPOINT, default %s)\n"
	       "  -c, --council=ID         your council's id ($COORD_COUNCIL)\n"
	       "  -o, --outbox=DIR         the outbox ($COORD_OUTBOX, default\n"
	       "                           $XDG_STATE_HOME/coord/outbox-ID or\n"
	       "                           ~/.local/state/coord/outbox-ID)\n"
	       "  -t, --timeout=SECONDS    give up when the broker sends no answer for this long\n"
	       "                           (default 30; 0: queue only, do not wait)\n"
	       "  -j, --json               results as one JSON object on stdout\n"
	       "      --max-in-flight=N    records sent and not yet answered (default 256)\n"
	       "      --ack-timeout=MS     resend a record unanswered for MS (default 10000)\n"
	       "      --backoff-max=MS     longest retry and reconnect delay (default 30000)\n"
	       "      --server-key=KEY     CURVE: the broker's public key, Z85 or a .public file\n"
	       "                           ($COORD_SERVER_KEY)\n"
	       "      --key=FILE           CURVE: your council's secret key file, NAME.secret,\n"
	       "                           mode 0600 ($COORD_KEY); both keys or neither\n"
	       "  -h, --help               print this help and exit\n"
	       "      --version            print the version and exit\n"
	       "\n"
	       "Exit status: 0 every record ACCEPTED or DUPLICATE (or queued, with --timeout 0);\n"
	       "1 a record was REJECTED or a row is invalid; 2 bad usage; 3 no answer in time\n"
	       "(the records wait in the outbox: run `coord-push flush` or the same command\n"
	       "again); 4 the outbox, the file or the system failed.\n",
	       COORD_ENDPOINT_DEFAULT);
}

int push_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

int
push_usage_error(const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "coord-push: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry 'coord-push --help'.\n");
	return EXIT_USAGE;
}

void push_errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

void
push_errorf(const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "coord-push: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
}

static int64_t
mono_ms(void)
{
	struct timespec ts;
	(void) clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
format_time(int64_t ms, char buf[32])
{
	time_t t = (time_t) (ms / 1000);
	struct tm tm;
	if (gmtime_r(&t, &tm) == NULL || strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) {
		(void) snprintf(buf, 32, "%" PRId64, ms);
	}
}

/* Print a JSON value on stdout and release it. */
void
push_print_json(json_t *v)
{
	if (v == NULL) {
		return;
	}
	char *text = json_dumps(v, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	if (text != NULL) {
		printf("%s\n", text);
		free(text);
	}
	json_decref(v);
}

/* ------------------------------------------------------------------------------------------ */
/* Options shared by every command */

enum {
	OPT_VERSION = 256,
	OPT_MAX_IN_FLIGHT,
	OPT_ACK_TIMEOUT,
	OPT_BACKOFF_MAX,
	OPT_SERVER_KEY,
	OPT_KEY,
	OPT_FORMAT,
	OPT_CATEGORY,
	OPT_ALL_OR_NOTHING,
	OPT_CHECK,
	OPT_DELIMITER,
};

static const struct option global_options[] = {
        {"endpoint", required_argument, NULL, 'e'},
        {"council", required_argument, NULL, 'c'},
        {"outbox", required_argument, NULL, 'o'},
        {"timeout", required_argument, NULL, 't'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, OPT_VERSION},
        {"max-in-flight", required_argument, NULL, OPT_MAX_IN_FLIGHT},
        {"ack-timeout", required_argument, NULL, OPT_ACK_TIMEOUT},
        {"backoff-max", required_argument, NULL, OPT_BACKOFF_MAX},
        {"server-key", required_argument, NULL, OPT_SERVER_KEY},
        {"key", required_argument, NULL, OPT_KEY},
        {"format", required_argument, NULL, OPT_FORMAT},
        {"category", required_argument, NULL, OPT_CATEGORY},
        {"all-or-nothing", no_argument, NULL, OPT_ALL_OR_NOTHING},
        {"check", no_argument, NULL, OPT_CHECK},
        {"delimiter", required_argument, NULL, OPT_DELIMITER},
        {NULL, 0, NULL, 0},
};

static bool
parse_uint(const char *s, unsigned max, unsigned *ret)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || !isdigit((unsigned char) s[0]) || v > max) {
		return false;
	}
	*ret = (unsigned) v;
	return true;
}

/* Apply one option. Returns 0, or the exit status of a usage error. -h/--help sets
 * *ret_help. */
static int
handle_option(int opt, const char *value, bool *ret_help)
{
	switch (opt) {
	case 'e':
		arg_endpoint = value;
		return 0;
	case 'c':
		arg_council = value;
		return 0;
	case 'o':
		arg_outbox = value;
		return 0;
	case 't': {
		char *end;
		errno = 0;
		double t = strtod(value, &end);
		if (errno != 0 || end == value || *end != '\0' || !(t >= 0) || t > 86400 * 365) {
			return push_usage_error("--timeout: '%s' is not a number of seconds",
			                        value);
		}
		arg_timeout = t;
		return 0;
	}
	case 'j':
		arg_json = true;
		return 0;
	case 'h':
		*ret_help = true;
		return 0;
	case OPT_VERSION:
		printf("coord-push %s (libcoord %s)\n", COORDD_VERSION, coord_version());
		exit(0);
	case OPT_MAX_IN_FLIGHT:
		if (!parse_uint(value, 10000, &arg_max_in_flight) || arg_max_in_flight == 0) {
			return push_usage_error("--max-in-flight: '%s' is not in 1..10000", value);
		}
		return 0;
	case OPT_ACK_TIMEOUT:
		if (!parse_uint(value, 3600000, &arg_ack_timeout_ms) || arg_ack_timeout_ms < 10) {
			return push_usage_error("--ack-timeout: '%s' is not in 10..3600000 ms",
			                        value);
		}
		return 0;
	case OPT_BACKOFF_MAX:
		if (!parse_uint(value, 3600000, &arg_backoff_max_ms) || arg_backoff_max_ms < 100) {
			return push_usage_error("--backoff-max: '%s' is not in 100..3600000 ms",
			                        value);
		}
		return 0;
	case OPT_SERVER_KEY:
		arg_server_key = value;
		return 0;
	case OPT_KEY:
		arg_key = value;
		return 0;
	case OPT_FORMAT:
		if (strcmp(value, "csv") != 0 && strcmp(value, "jsonl") != 0) {
			return push_usage_error("--format: '%s' is not csv or jsonl", value);
		}
		arg_format = value;
		return 0;
	case OPT_CATEGORY:
		if (coord__category_parse(value) == COORD__V1__ENVELOPE__BODY__NOT_SET) {
			return push_usage_error("--category: '%s' is not event, letter, statement, "
			                        "petition, media or retraction",
			                        value);
		}
		arg_category = value;
		return 0;
	case OPT_ALL_OR_NOTHING:
		arg_all_or_nothing = true;
		return 0;
	case OPT_CHECK:
		arg_check_only = true;
		return 0;
	case OPT_DELIMITER:
		if (strcmp(value, "\\t") == 0 || strcmp(value, "tab") == 0) {
			arg_delimiter = '\t';
		} else if (strlen(value) == 1 && value[0] != '"' && value[0] != '\n') {
			arg_delimiter = value[0];
		} else {
			return push_usage_error("--delimiter: '%s' is not one character", value);
		}
		return 0;
	default:
		return EXIT_USAGE;
	}
}

/* The option of global_options named `name` ("endpoint"), or NULL. */
static const struct option *
find_option(const char *name)
{
	for (const struct option *o = global_options; o->name != NULL; o++) {
		if (strcmp(o->name, name) == 0) {
			return o;
		}
	}
	return NULL;
}

static char arg_outbox_default[4096];

static void
clear_keys(void)
{
	keyopt_done(&push_keys);
}

/* Fill in the environment's defaults; check what every networked command needs. */
int
push_resolve_defaults(void)
{
	if (arg_endpoint == NULL) {
		arg_endpoint = getenv("COORD_ENDPOINT");
	}
	if (arg_council == NULL) {
		arg_council = getenv("COORD_COUNCIL");
	}
	if (arg_council == NULL || arg_council[0] == '\0') {
		return push_usage_error("no council: give --council ID (or set COORD_COUNCIL)");
	}
	if (arg_outbox == NULL) {
		arg_outbox = getenv("COORD_OUTBOX");
	}
	if (arg_outbox == NULL) {
		const char *state = getenv("XDG_STATE_HOME");
		const char *home = getenv("HOME");
		int n;
		if (state != NULL && state[0] == '/') {
			n = snprintf(arg_outbox_default, sizeof(arg_outbox_default),
			             "%s/coord/outbox-%s", state, arg_council);
		} else if (home != NULL && home[0] == '/') {
			n = snprintf(arg_outbox_default, sizeof(arg_outbox_default),
			             "%s/.local/state/coord/outbox-%s", home, arg_council);
		} else {
			return push_usage_error(
			        "no outbox: give --outbox DIR (or set COORD_OUTBOX)");
		}
		if (n < 0 || (size_t) n >= sizeof(arg_outbox_default)) {
			return push_usage_error("the outbox path is too long");
		}
		arg_outbox = arg_outbox_default;
	}
	/* Load the keys now, so that a bad key file fails before anything is queued. */
	char why[KEYOPT_MESSAGE_MAX];
	keyopt_done(&push_keys);
	if (keyopt_load(arg_server_key, arg_key, &push_keys, why, sizeof(why)) < 0) {
		return push_usage_error("%s", why);
	}
	push_curve = push_keys.curve;
	if (push_curve) {
		(void) atexit(clear_keys);
	}
	return 0;
}

const char *
push_no_answer_hint(struct coord_client *client)
{
	int r = client != NULL ? coord_connection_error(client) : 0;
	if (r == -EACCES && push_curve) {
		return "; the broker refused this council's key: is its public key in the broker's "
		       "keys file under [council.ID]?";
	}
	if (r == -EACCES || (r == -EPROTONOSUPPORT && !push_curve)) {
		return "; the broker requires CURVE keys: give --server-key and --key";
	}
	if (r == -EPROTONOSUPPORT) {
		return "; the broker's ingest socket does not use CURVE: leave out --server-key "
		       "and "
		       "--key";
	}
	if (r == -ECONNRESET && !push_curve) {
		return "; the broker closed the connection during the handshake: if it requires "
		       "CURVE keys, give --server-key and --key";
	}
	if (push_curve) {
		return "; is --server-key the broker's public key?";
	}
	return "";
}

int
push_parse_options(int argc, char **argv, bool *ret_help)
{
	optind = 1;
	int opt;
	while ((opt = getopt_long(argc, argv, "e:c:o:t:jh", global_options, NULL)) != -1) {
		if (opt == '?') {
			return push_usage_error("%s: bad option", argv[0]);
		}
		int r = handle_option(opt, optarg, ret_help);
		if (r != 0) {
			return r;
		}
	}
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* The tracker: this run's records and their answers */

static uint64_t
key_hash(const char *msg_id, uint32_t revision)
{
	uint64_t h = 1469598103934665603u;
	for (const char *p = msg_id; *p != '\0'; p++) {
		h = (h ^ (uint8_t) *p) * 1099511628211u;
	}
	return (h ^ revision) * 1099511628211u;
}

int
push_tracker_init(struct push_tracker *t, size_t expected)
{
	*t = (struct push_tracker){0};
	(void) pthread_mutex_init(&t->mu, NULL);
	pthread_condattr_t ca;
	(void) pthread_condattr_init(&ca);
	(void) pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	(void) pthread_cond_init(&t->cond, &ca);
	(void) pthread_condattr_destroy(&ca);
	t->cap = expected > 0 ? expected : 1;
	t->table_size = 16;
	while (t->table_size < 2 * t->cap) {
		t->table_size *= 2;
	}
	t->items = calloc(t->cap, sizeof(*t->items));
	t->table = malloc(t->table_size * sizeof(*t->table));
	if (t->items == NULL || t->table == NULL) {
		return -ENOMEM;
	}
	for (size_t i = 0; i < t->table_size; i++) {
		t->table[i] = -1;
	}
	return 0;
}

void
push_tracker_done(struct push_tracker *t)
{
	for (size_t i = 0; i < t->n; i++) {
		free(t->items[i].message);
	}
	free(t->items);
	free(t->table);
	(void) pthread_cond_destroy(&t->cond);
	(void) pthread_mutex_destroy(&t->mu);
}

/* The index of (msg_id, revision), or -1; *ret_slot is its table slot (or the free one). */
static long
tracker_find(const struct push_tracker *t, const char *msg_id, uint32_t revision, size_t *ret_slot)
{
	size_t mask = t->table_size - 1;
	for (size_t i = key_hash(msg_id, revision) & mask;; i = (i + 1) & mask) {
		int k = t->table[i];
		if (k < 0) {
			*ret_slot = i;
			return -1;
		}
		if (t->items[k].revision == revision && strcmp(t->items[k].msg_id, msg_id) == 0) {
			*ret_slot = i;
			return k;
		}
	}
}

/* Add a record (capacity fixed at init). Returns its index, or that of an equal key. */
long
push_tracker_add(struct push_tracker *t, const char *msg_id, uint32_t revision, long line,
                 bool *ret_new)
{
	size_t slot;
	long k = tracker_find(t, msg_id, revision, &slot);
	*ret_new = k < 0;
	if (k >= 0 || t->n >= t->cap) {
		return k;
	}
	struct push_tracked *it = &t->items[t->n];
	(void) snprintf(it->msg_id, sizeof(it->msg_id), "%s", msg_id);
	it->revision = revision;
	it->line = line;
	t->table[slot] = (int) t->n;
	return (long) t->n++;
}

/* The ack callback (libcoord's sender thread). */
static void
on_ack(void *userdata, const struct coord_ack *ack)
{
	struct push_tracker *t = userdata;
	(void) pthread_mutex_lock(&t->mu);
	size_t slot;
	long k = tracker_find(t, ack->msg_id, ack->revision, &slot);
	if (k >= 0) {
		struct push_tracked *it = &t->items[k];
		if (ack->status == COORD_STATUS_RETRY_LATER) {
			it->retries++;
			t->retry_later++;
		} else if (it->status == 0) {
			it->status = ack->status;
			it->reason = ack->reason;
			it->seq = ack->seq;
			it->message = ack->message[0] != '\0' ? strdup(ack->message) : NULL;
			t->answered++;
			if (ack->status == COORD_STATUS_ACCEPTED) {
				t->accepted++;
			} else if (ack->status == COORD_STATUS_DUPLICATE) {
				t->duplicate++;
			} else {
				t->rejected++;
			}
		}
	}
	(void) pthread_cond_broadcast(&t->cond);
	(void) pthread_mutex_unlock(&t->mu);
}

int
push_open_client(struct push_tracker *t, unsigned flags, struct coord_client **ret)
{
	struct coord_options o;
	coord_options_init(&o);
	o.endpoint = arg_endpoint;
	o.council = arg_council;
	o.outbox_path = arg_outbox;
	o.max_in_flight = arg_max_in_flight;
	o.ack_timeout_ms = arg_ack_timeout_ms;
	if (arg_backoff_max_ms != 0) {
		o.backoff_max_ms = arg_backoff_max_ms;
		if (o.backoff_min_ms > o.backoff_max_ms) {
			o.backoff_min_ms = o.backoff_max_ms;
		}
	}
	if (push_keys.curve) {
		/* coord_client_new() copies them. */
		o.curve_server_key = push_keys.keys.server_key;
		o.curve_public_key = push_keys.keys.public_key;
		o.curve_secret_key = push_keys.keys.secret_key;
	}
	o.on_ack = t != NULL ? on_ack : NULL;
	o.userdata = t;
	o.flags = flags;
	int r = coord_client_new(&o, ret);
	keyopt_done(&push_keys);
	if (r < 0) {
		push_errorf("cannot open the outbox %s for council '%s' (endpoint %s): %s",
		            arg_outbox, arg_council,
		            arg_endpoint != NULL ? arg_endpoint : COORD_ENDPOINT_DEFAULT,
		            coord_strerror(r));
	}
	return r;
}

/* Progress on stderr: a bar redrawn in place on a terminal, else a plain line when the
 * count changed (at most every PROGRESS_TICK_MS). */
static void
show_progress(size_t done, size_t total, bool tty, bool final)
{
	if (tty) {
		int width = 40;
		int filled = total > 0 ? (int) ((double) done / (double) total * width) : width;
		fprintf(stderr, "\r[%.*s%*s] %zu/%zu answered", filled,
		        "========================================", width - filled, "", done,
		        total);
		if (final) {
			fprintf(stderr, "\n");
		}
	} else {
		fprintf(stderr, "coord-push: answered %zu of %zu\n", done, total);
	}
	fflush(stderr);
}

/*
 * Wait until every tracked record is answered, giving up after arg_timeout seconds without
 * a new answer. Returns 0, -ETIMEDOUT, or the error that stopped libcoord's sender.
 */
int
push_wait_answers(struct push_tracker *t, struct coord_client *client, bool progress)
{
	bool tty = progress && isatty(STDERR_FILENO);
	int64_t idle_ms = (int64_t) (arg_timeout * 1000);
	int64_t last_change = mono_ms();
	size_t last_answered = SIZE_MAX;
	int r = 0;
	(void) pthread_mutex_lock(&t->mu);
	for (;;) {
		size_t answered = t->answered;
		if (answered != last_answered) {
			if (progress && (answered < t->n || last_answered != SIZE_MAX || tty)) {
				show_progress(answered, t->n, tty, answered == t->n);
			}
			if (last_answered != SIZE_MAX) {
				last_change = mono_ms();
			}
			last_answered = answered;
		}
		if (answered >= t->n) {
			break;
		}
		int64_t now = mono_ms();
		if (now - last_change >= idle_ms) {
			r = -ETIMEDOUT;
			break;
		}
		int64_t wait = idle_ms - (now - last_change);
		if (wait > PROGRESS_TICK_MS) {
			wait = PROGRESS_TICK_MS;
		}
		struct timespec ts;
		(void) clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += (long) wait * 1000000L;
		ts.tv_sec += ts.tv_nsec / 1000000000L;
		ts.tv_nsec %= 1000000000L;
		(void) pthread_cond_timedwait(&t->cond, &t->mu, &ts);

		/* A sender that stopped on an error will never answer: report it. */
		(void) pthread_mutex_unlock(&t->mu);
		int f = coord_flush(client, 0);
		(void) pthread_mutex_lock(&t->mu);
		if (f < 0 && f != -ETIMEDOUT) {
			r = f;
			break;
		}
	}
	(void) pthread_mutex_unlock(&t->mu);
	if (r == 0) {
		/* Every row is answered, but the outbox may still hold a copy: a row whose entry,
		 * left by an earlier run, was answered and settled before this run queued it again
		 * is sent once more (and answered DUPLICATE). Let those drain too, so that a run
		 * that answered everything leaves an empty outbox; a timeout here changes nothing
		 * (the rows are answered, and the copies wait for the next run). */
		int f = coord_flush(client, (int) idle_ms);
		if (f < 0 && f != -ETIMEDOUT) {
			r = f;
		}
	}
	if (tty && r < 0) {
		fprintf(stderr, "\n");
	}
	return r;
}

/* ------------------------------------------------------------------------------------------ */
/* One record from flags */

/* Print what happened to one tracked record (stdout). Returns the exit status for it. */
static int
report_one(const struct push_tracked *it, const char *category, bool waited, int wait_result,
           const char *hint)
{
	const char *status = it->status != 0               ? coord_status_name(it->status)
	                     : wait_result == 0 && !waited ? "QUEUED"
	                                                   : "WAITING";
	if (arg_json) {
		json_t *o = json_object();
		(void) json_object_set_new(o, "status", json_string(status));
		(void) json_object_set_new(o, "category", json_string(category));
		(void) json_object_set_new(o, "msgId", json_string(it->msg_id));
		(void) json_object_set_new(o, "revision", json_integer(it->revision));
		if (it->seq != 0) {
			(void) json_object_set_new(o, "seq", json_integer((json_int_t) it->seq));
		}
		if (it->status == COORD_STATUS_REJECTED) {
			(void) json_object_set_new(o, "reason",
			                           json_string(coord_reason_name(it->reason)));
			(void) json_object_set_new(o, "message",
			                           json_string(it->message ? it->message : ""));
		}
		push_print_json(o);
	} else {
		printf("%s %s %s revision %u", status, category, it->msg_id, it->revision);
		if (it->seq != 0) {
			printf(" seq %" PRIu64, it->seq);
		}
		if (it->status == COORD_STATUS_REJECTED) {
			printf(": %s: %s", coord_reason_name(it->reason),
			       it->message ? it->message : "");
		}
		printf("\n");
	}
	if (it->status == COORD_STATUS_REJECTED) {
		return EXIT_REJECTED;
	}
	if (it->status == 0 && waited) {
		push_errorf("no answer from the broker within %g s; the record waits in the outbox "
		            "%s (run the same command again, or `coord-push flush`)%s",
		            arg_timeout, arg_outbox, hint);
		return EXIT_WAITING;
	}
	return 0;
}

/* Push one built record, wait for its answer, report. */
static int
push_and_report(const struct coord_envelope *env, const char *category, bool amend)
{
	struct push_tracker t;
	struct coord_client *client = NULL;
	int status = EXIT_ERROR;
	if (push_tracker_init(&t, 1) < 0) {
		push_errorf("out of memory");
		push_tracker_done(&t);
		return EXIT_ERROR;
	}
	bool fresh;
	long k = push_tracker_add(&t, env->msg_id, env->revision, 0, &fresh);
	if (push_open_client(&t, 0, &client) < 0) {
		goto out;
	}
	int r = coord_push(client, env->bytes, env->len);
	if (r < 0) {
		push_errorf("cannot queue the record: %s", coord_strerror(r));
		goto out;
	}
	bool waited = arg_timeout > 0;
	int w = waited ? push_wait_answers(&t, client, false) : 0;
	if (w < 0 && w != -ETIMEDOUT) {
		push_errorf("sending stopped: %s (the record waits in the outbox %s)",
		            coord_strerror(w), arg_outbox);
		goto out;
	}
	(void) pthread_mutex_lock(&t.mu);
	status = report_one(&t.items[k], category, waited, w, push_no_answer_hint(client));
	if (amend && t.items[k].status == COORD_STATUS_DUPLICATE) {
		push_errorf("note: revision %u (or a later one) of %s was already stored, so this "
		            "revision changed nothing; give --revision above the stored one",
		            env->revision, env->msg_id);
	}
	(void) pthread_mutex_unlock(&t.mu);
out:
	client = coord_client_free(client);
	push_tracker_done(&t);
	return status;
}

/* Required fields per category (docs/PROTOCOL.md), for the help text. */
static bool
field_required(Coord__V1__Envelope__BodyCase body, const char *name)
{
	static const char *const required[][8] = {
	        [COORD__V1__ENVELOPE__BODY_EVENT - 10] = {"kind", "country", "date", "title"},
	        [COORD__V1__ENVELOPE__BODY_LETTER - 10] = {"recipient_kind", "recipient",
	                                                   "recipient_country", "language",
	                                                   "sent_at"},
	        [COORD__V1__ENVELOPE__BODY_STATEMENT - 10] = {"organisation", "country",
	                                                      "languages", "date"},
	        [COORD__V1__ENVELOPE__BODY_PETITION - 10] = {"target_kind", "target", "country",
	                                                     "date"},
	        [COORD__V1__ENVELOPE__BODY_MEDIA - 10] = {"kind", "outlet", "country", "language",
	                                                  "date"},
	        [COORD__V1__ENVELOPE__BODY_RETRACTION - 10] = {NULL},
	};
	int i = (int) body - 10;
	if (i < 0 || i >= (int) (sizeof(required) / sizeof(required[0]))) {
		return false;
	}
	for (size_t k = 0; k < 8 && required[i][k] != NULL; k++) {
		if (strcmp(required[i][k], name) == 0) {
			return true;
		}
	}
	return false;
}

static void
category_help(Coord__V1__Envelope__BodyCase body)
{
	const char *cat = coord__category_name(body);
	const ProtobufCMessageDescriptor *d = coord__category_descriptor(body);
	if (body == COORD__V1__ENVELOPE__BODY_RETRACTION) {
		printf("Usage: coord-push [OPTION]... retract MSG_ID [--reason TEXT] "
		       "[--revision N]\n");
	} else {
		printf("Usage: coord-push [OPTION]... %s --FIELD VALUE...\n"
		       "       coord-push [OPTION]... correct MSG_ID --revision N %s --FIELD "
		       "VALUE...\n",
		       cat, cat);
	}
	printf("\nFields of %s (* required):\n", cat);
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		char flag[64];
		(void) snprintf(flag, sizeof(flag), "--%s", f->name);
		for (char *p = flag + 2; *p != '\0'; p++) {
			*p = *p == '_' ? '-' : *p;
		}
		printf("  %c %-22s ", field_required(body, f->name) ? '*' : ' ', flag);
		if (f->type == PROTOBUF_C_TYPE_ENUM) {
			const ProtobufCEnumDescriptor *e = f->descriptor;
			const char *zero = e->values[0].name;
			const char *u = strstr(zero, "UNSPECIFIED");
			size_t plen = u != NULL ? (size_t) (u - zero) : 0;
			printf("one of:");
			for (unsigned v = 0; v < e->n_values; v++) {
				if (e->values[v].value == 0) {
					continue;
				}
				printf(" ");
				for (const char *c = e->values[v].name + plen; *c != '\0'; c++) {
					putchar(*c == '_' ? '-' : tolower((unsigned char) *c));
				}
			}
			printf("\n");
		} else if (f->type == PROTOBUF_C_TYPE_INT64) {
			printf("ISO 8601 date or date-time (2020-10-04, 2020-10-04T18:30Z)\n");
		} else if (f->type == PROTOBUF_C_TYPE_UINT32 || f->type == PROTOBUF_C_TYPE_UINT64) {
			printf("a whole number\n");
		} else if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			printf("language tags, repeat the flag or separate with ',' or ';'\n");
		} else if (strstr(f->name, "country") != NULL) {
			printf("ISO 3166-1 alpha-2 code, upper case (DE)\n");
		} else if (strcmp(f->name, "language") == 0) {
			printf("BCP 47 language tag (en, hy, fr-CA)\n");
		} else {
			printf("text\n");
		}
	}
	printf("\nAlso: --msg-id ID (default: derived from the content), --revision N "
	       "(default %d),\n      --created-at ISO8601 (default now). Global options: "
	       "coord-push --help.\n",
	       body == COORD__V1__ENVELOPE__BODY_RETRACTION ? 2 : 1);
}

/*
 * event/letter/statement/petition/media, retract and correct. argv[0] is the command.
 * Options are `--name value` or `--name=value`: global options first, else record fields.
 */
static int
cmd_record(int argc, char **argv)
{
	const char *cmd = argv[0];
	const char *target = NULL; /* retract/correct: the record's msg_id */
	const char *category = NULL;
	bool amend = strcmp(cmd, "retract") == 0 || strcmp(cmd, "correct") == 0;
	if (strcmp(cmd, "retract") == 0) {
		category = "retraction";
	} else if (strcmp(cmd, "correct") != 0) {
		category = cmd;
	}
	struct coord_field fields[PUSH_FIELDS_MAX];
	char names[PUSH_FIELDS_MAX][64];
	size_t n = 0;
	bool want_help = false;
	bool has_revision = false;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			want_help = true;
			continue;
		}
		if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
			/* A bare word: the target msg_id, then (correct) the category. */
			if (amend && target == NULL) {
				target = a;
			} else if (category == NULL) {
				category = a;
			} else {
				return push_usage_error("%s: unexpected argument '%s'", cmd, a);
			}
			continue;
		}
		char name[64];
		const char *eq = strchr(a + 2, '=');
		size_t nlen = eq != NULL ? (size_t) (eq - a - 2) : strlen(a + 2);
		if (nlen >= sizeof(name)) {
			return push_usage_error("%s: option '%.40s' is too long", cmd, a);
		}
		memcpy(name, a + 2, nlen);
		name[nlen] = '\0';
		const struct option *o = find_option(name);
		if (o != NULL && o->has_arg == no_argument) {
			if (eq != NULL) {
				return push_usage_error("%s: --%s takes no value", cmd, name);
			}
			int r = handle_option(o->val, NULL, &want_help);
			if (r != 0) {
				return r;
			}
			continue;
		}
		const char *value = eq != NULL ? eq + 1 : NULL;
		if (value == NULL) {
			if (i + 1 >= argc) {
				return push_usage_error("%s: --%s needs a value", cmd, name);
			}
			value = argv[++i];
		}
		if (o != NULL) {
			int r = handle_option(o->val, value, &want_help);
			if (r != 0) {
				return r;
			}
			continue;
		}
		if (n >= PUSH_FIELDS_MAX) {
			return push_usage_error("%s: too many fields", cmd);
		}
		has_revision = has_revision || strcmp(name, "revision") == 0;
		memcpy(names[n], name, nlen + 1);
		fields[n] = (struct coord_field){.name = names[n], .value = value};
		n++;
	}
	Coord__V1__Envelope__BodyCase body = category != NULL ? coord__category_parse(category)
	                                                      : COORD__V1__ENVELOPE__BODY__NOT_SET;
	if (want_help) {
		if (body == COORD__V1__ENVELOPE__BODY__NOT_SET) {
			push_help();
		} else {
			category_help(body);
		}
		return 0;
	}
	if (category == NULL || body == COORD__V1__ENVELOPE__BODY__NOT_SET) {
		return push_usage_error(
		        "%s: %s%s%sgive a category: event, letter, statement, petition "
		        "or media",
		        cmd, category ? "'" : "", category ? category : "",
		        category ? "' is not a category; " : "");
	}
	if (amend && target == NULL) {
		return push_usage_error("%s: which record? Give its MSG_ID", cmd);
	}
	if (strcmp(cmd, "correct") == 0 && !has_revision) {
		return push_usage_error(
		        "correct: give --revision N, above the record's stored revision "
		        "(`coordctl status COUNCIL MSG_ID` shows it)");
	}
	for (size_t i = 0; i < n; i++) {
		if (!coord__field_known(body, fields[i].name)) {
			return push_usage_error(
			        "%s: --%s is not a field of %s (see coord-push %s --push_help)",
			        cmd, fields[i].name, coord__category_name(body),
			        strcmp(cmd, "retract") == 0 ? "retract"
			                                    : coord__category_name(body));
		}
	}
	if (target != NULL) {
		if (n >= PUSH_FIELDS_MAX) {
			return push_usage_error("%s: too many fields", cmd);
		}
		fields[n++] = (struct coord_field){.name = "msg_id", .value = target};
	}
	int r = push_resolve_defaults();
	if (r != 0) {
		return r;
	}
	struct coord_envelope env;
	struct coord_error err;
	r = coord_envelope_build(arg_council, category, fields, n, 0, &env, &err);
	if (r < 0) {
		if (r == -ENOMEM) {
			push_errorf("out of memory");
			return EXIT_ERROR;
		}
		if (arg_json) {
			json_t *o = json_object();
			(void) json_object_set_new(o, "status", json_string("INVALID"));
			(void) json_object_set_new(o, "field", json_string(err.field));
			(void) json_object_set_new(o, "message", json_string(err.message));
			push_print_json(o);
		}
		push_errorf("%s%s%s%s", err.field[0] != '\0' ? "--" : "", err.field,
		            err.field[0] != '\0' ? ": " : "", err.message);
		return EXIT_REJECTED;
	}
	int status = push_and_report(&env, coord__category_name(body), amend);
	coord_envelope_done(&env);
	return status;
}

/* ------------------------------------------------------------------------------------------ */
/* outbox, flush */

struct listing {
	json_t *waiting;
	json_t *rejected;
	size_t n_waiting;
	size_t n_rejected;
};

static int
list_entry(void *userdata, const struct coord_outbox_entry *e)
{
	struct listing *l = userdata;
	Coord__V1__Envelope *env = coord__v1__envelope__unpack(NULL, e->envelope_len, e->envelope);
	const char *cat = env != NULL ? coord__category_name(env->body_case) : NULL;
	char queued[32], rejected[32];
	format_time(e->queued_at, queued);
	format_time(e->rejected_at, rejected);
	bool is_rejected = e->state == COORD_OUTBOX_REJECTED;
	if (arg_json) {
		json_t *o = json_object();
		(void) json_object_set_new(o, "msgId", json_string(e->msg_id));
		(void) json_object_set_new(o, "revision", json_integer(e->revision));
		(void) json_object_set_new(o, "category", json_string(cat != NULL ? cat : "?"));
		(void) json_object_set_new(o, "queuedAt", json_string(queued));
		if (is_rejected) {
			(void) json_object_set_new(o, "rejectedAt", json_string(rejected));
			(void) json_object_set_new(o, "reason",
			                           json_string(coord_reason_name(e->reason)));
			(void) json_object_set_new(o, "message", json_string(e->message));
		}
		char *text = NULL;
		if (env != NULL && coord__pbjson_encode(&env->base, 0, &text) == 0) {
			json_t *j = json_loads(text, 0, NULL);
			if (j != NULL) {
				(void) json_object_set_new(o, "envelope", j);
			}
			free(text);
		}
		(void) json_array_append_new(is_rejected ? l->rejected : l->waiting, o);
	} else if (is_rejected) {
		printf("rejected  %s revision %u %s (queued %s, rejected %s): %s: %s\n", e->msg_id,
		       e->revision, cat != NULL ? cat : "?", queued, rejected,
		       coord_reason_name(e->reason), e->message);
	} else {
		printf("waiting   %s revision %u %s (queued %s)\n", e->msg_id, e->revision,
		       cat != NULL ? cat : "?", queued);
	}
	if (is_rejected) {
		l->n_rejected++;
	} else {
		l->n_waiting++;
	}
	if (env != NULL) {
		coord__v1__envelope__free_unpacked(env, NULL);
	}
	return 0;
}

static int
cmd_outbox(int argc, char **argv)
{
	bool want_help = false;
	int r = push_parse_options(argc, argv, &want_help);
	if (r != 0) {
		return r;
	}
	if (want_help) {
		push_help();
		return 0;
	}
	bool forget = optind < argc && strcmp(argv[optind], "forget") == 0;
	unsigned revision = 0;
	if (forget && (optind + 3 != argc || !parse_uint(argv[optind + 2], UINT32_MAX, &revision) ||
	               revision == 0)) {
		return push_usage_error("outbox forget MSG_ID REVISION");
	}
	if (!forget && optind != argc) {
		return push_usage_error("outbox: unexpected argument '%s'", argv[optind]);
	}
	r = push_resolve_defaults();
	if (r != 0) {
		return r;
	}
	struct coord_client *client = NULL;
	if (push_open_client(NULL, COORD_OFFLINE, &client) < 0) {
		return EXIT_ERROR;
	}
	int status = 0;
	if (forget) {
		r = coord_outbox_forget(client, argv[optind + 1], revision);
		if (r < 0) {
			push_errorf("forget %s revision %u: %s", argv[optind + 1], revision,
			            r == -ENOENT ? "no such rejected record" : coord_strerror(r));
			status = r == -ENOENT ? EXIT_USAGE : EXIT_ERROR;
		}
		client = coord_client_free(client);
		return status;
	}
	struct listing l = {.waiting = json_array(), .rejected = json_array()};
	r = coord_outbox_list(client, COORD_LIST_WAITING | COORD_LIST_REJECTED, list_entry, &l);
	if (r < 0) {
		push_errorf("cannot read the outbox %s: %s", arg_outbox, coord_strerror(r));
		status = EXIT_ERROR;
	} else if (arg_json) {
		json_t *o = json_object();
		(void) json_object_set_new(o, "outbox", json_string(arg_outbox));
		(void) json_object_set_new(o, "council", json_string(arg_council));
		(void) json_object_set(o, "waiting", l.waiting);
		(void) json_object_set(o, "rejected", l.rejected);
		push_print_json(o);
	} else {
		printf("%zu waiting, %zu rejected (outbox %s)\n", l.n_waiting, l.n_rejected,
		       arg_outbox);
	}
	json_decref(l.waiting);
	json_decref(l.rejected);
	client = coord_client_free(client);
	return status;
}

static int
cmd_flush(int argc, char **argv)
{
	bool want_help = false;
	int r = push_parse_options(argc, argv, &want_help);
	if (r != 0) {
		return r;
	}
	if (want_help) {
		push_help();
		return 0;
	}
	if (optind != argc) {
		return push_usage_error("flush: unexpected argument '%s'", argv[optind]);
	}
	r = push_resolve_defaults();
	if (r != 0) {
		return r;
	}
	struct coord_client *client = NULL;
	if (push_open_client(NULL, 0, &client) < 0) {
		return EXIT_ERROR;
	}
	/* Wait while answers keep coming, at most arg_timeout without one. */
	struct coord_stats st = {0};
	uint64_t last = UINT64_MAX;
	int64_t last_change = mono_ms();
	for (;;) {
		r = coord_flush(client, PROGRESS_TICK_MS);
		(void) coord_stats(client, &st);
		uint64_t answered = st.accepted + st.duplicate + st.rejections;
		if (answered != last) {
			last = answered;
			last_change = mono_ms();
		}
		if (r != -ETIMEDOUT || mono_ms() - last_change >= (int64_t) (arg_timeout * 1000)) {
			break;
		}
	}
	int status = 0;
	if (r < 0 && r != -ETIMEDOUT) {
		push_errorf("sending stopped: %s", coord_strerror(r));
		status = EXIT_ERROR;
	} else if (arg_json) {
		json_t *o = json_object();
		(void) json_object_set_new(o, "accepted", json_integer((json_int_t) st.accepted));
		(void) json_object_set_new(o, "duplicate", json_integer((json_int_t) st.duplicate));
		(void) json_object_set_new(o, "rejected", json_integer((json_int_t) st.rejections));
		(void) json_object_set_new(o, "waiting", json_integer((json_int_t) st.waiting));
		push_print_json(o);
	} else {
		printf("accepted %" PRIu64 ", duplicate %" PRIu64 ", rejected %" PRIu64
		       ", waiting %" PRIu64 "\n",
		       st.accepted, st.duplicate, st.rejections, st.waiting);
	}
	if (status == 0 && r == -ETIMEDOUT) {
		push_errorf("no answer from the broker for %g s; %" PRIu64
		            " records wait in the outbox%s",
		            arg_timeout, st.waiting, push_no_answer_hint(client));
		status = EXIT_WAITING;
	} else if (status == 0 && st.rejections > 0) {
		status = EXIT_REJECTED;
	}
	client = coord_client_free(client);
	return status;
}

int
main(int argc, char **argv)
{
	bool want_help = false;
	int opt;
	/* Global options before the command; "+" stops at the command word. */
	while ((opt = getopt_long(argc, argv, "+e:c:o:t:jh", global_options, NULL)) != -1) {
		if (opt == '?') {
			return push_usage_error("bad option");
		}
		int r = handle_option(opt, optarg, &want_help);
		if (r != 0) {
			return r;
		}
	}
	if (optind >= argc) {
		if (want_help) {
			push_help();
			return 0;
		}
		return push_usage_error(
		        "no command (event, letter, statement, petition, media, retract, "
		        "correct, import, outbox, flush)");
	}
	const char *cmd = argv[optind];
	int sub_argc = argc - optind;
	char **sub_argv = argv + optind;
	if (want_help && strcmp(cmd, "help") != 0) {
		/* "coord-push --help event": the command's help. */
		if (coord__category_parse(cmd) != COORD__V1__ENVELOPE__BODY__NOT_SET) {
			category_help(coord__category_parse(cmd));
		} else {
			push_help();
		}
		return 0;
	}
	if (strcmp(cmd, "help") == 0) {
		push_help();
		return 0;
	}
	if (strcmp(cmd, "import") == 0) {
		return push_import(sub_argc, sub_argv);
	}
	if (strcmp(cmd, "outbox") == 0) {
		return cmd_outbox(sub_argc, sub_argv);
	}
	if (strcmp(cmd, "flush") == 0) {
		return cmd_flush(sub_argc, sub_argv);
	}
	if (strcmp(cmd, "retract") == 0 || strcmp(cmd, "correct") == 0 ||
	    (coord__category_parse(cmd) != COORD__V1__ENVELOPE__BODY__NOT_SET &&
	     coord__category_parse(cmd) != COORD__V1__ENVELOPE__BODY_RETRACTION)) {
		return cmd_record(sub_argc, sub_argv);
	}
	return push_usage_error("unknown command '%s'", cmd);
}

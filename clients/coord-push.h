/*
 * coord-push.h: what the two files of coord-push share. coord-push.c has main(), the
 * options, the tracker, the one-record commands, outbox and flush; coord-push-import.c has
 * `import` (CSV and JSON Lines, validation, the summary).
 *
 * The globals are the parsed command line (arg_*), set by push_handle_option() before a
 * command runs and read-only afterwards. Single-threaded, except the tracker, which
 * libcoord's sender thread updates through the ack callback under the tracker's mutex.
 */
#pragma once

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "coord.h"

#define EXIT_REJECTED 1 /* a record was rejected, by the broker or by the checks here */
#define EXIT_USAGE 2    /* bad command line */
#define EXIT_WAITING 3  /* no answer in time: records wait in the outbox */
#define EXIT_ERROR 4    /* the outbox, the file or the system failed */

#define PUSH_FIELDS_MAX 64 /* fields of one record */
#define PUSH_BATCH 512     /* records per outbox transaction in an import */

extern const char *arg_endpoint;
extern const char *arg_council;
extern const char *arg_outbox;
extern double arg_timeout; /* seconds without an answer before giving up; 0: do not wait */
extern bool arg_json;
extern const char *arg_format;   /* import: "csv", "jsonl" or NULL (guess) */
extern const char *arg_category; /* import: the category of rows without one */
extern bool arg_all_or_nothing;
extern bool arg_check_only;
extern char arg_delimiter;

/* Messages on stderr, prefixed "coord-push: ". push_usage_error() adds a hint and
 * returns EXIT_USAGE. */
int push_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void push_errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

void push_help(void);

/* Print `v` as indented JSON on stdout, then release it (accepts NULL). */
void push_print_json(json_t *v);

/*
 * Parse a subcommand's options (argv[0] is the command; GNU getopt permutes, so options
 * may follow the arguments). Returns 0 with optind at the first argument, or the exit
 * status of a usage error. *ret_help is set by -h/--help.
 */
int push_parse_options(int argc, char **argv, bool *ret_help);

/* Fill in defaults from the environment; check that a council is known. Returns 0 or the
 * exit status of a usage error. */
int push_resolve_defaults(void);

/* One record of this run and its final answer. */
struct push_tracked {
	char msg_id[COORD_MSG_ID_MAX + 1];
	uint32_t revision;
	int status; /* enum coord_status; 0 until answered finally */
	int reason;
	uint64_t seq;
	char *message; /* the broker's sentence, malloc()ed, or NULL */
	unsigned retries;
	long line; /* import: the file line; else 0 */
};

/*
 * The records this run pushed, by key (msg_id, revision), and the counts of their
 * answers. Its capacity is fixed at init. The counters and items' answers are written by
 * the ack callback (libcoord's sender thread) under `mu`: read them under `mu` too.
 */
struct push_tracker {
	pthread_mutex_t mu;
	pthread_cond_t cond;
	struct push_tracked *items;
	size_t n;
	size_t cap;
	int *table; /* open addressing over items, -1 empty */
	size_t table_size;
	size_t answered;
	size_t accepted;
	size_t duplicate;
	size_t rejected;
	size_t retry_later;
};

/* Returns 0 or -ENOMEM; push_tracker_done() is needed either way. */
int push_tracker_init(struct push_tracker *t, size_t capacity);
void push_tracker_done(struct push_tracker *t);

/* Add a key. Returns its index, or that of the key added before (*ret_new false); -1 when
 * full. Call before the client can report answers (before pushing). */
long push_tracker_add(struct push_tracker *t, const char *msg_id, uint32_t revision, long line,
                      bool *ret_new);

/* Open libcoord's client on arg_outbox with the command-line settings, reporting answers
 * to `t` (NULL: none). Prints the error; returns 0 or a negative errno. */
int push_open_client(struct push_tracker *t, unsigned flags, struct coord_client **ret);

/*
 * Wait until every tracked record is answered, giving up after arg_timeout seconds without
 * a new answer; with `progress`, show it on stderr (a bar on a terminal, else lines
 * "coord-push: answered N of M"). Returns 0, -ETIMEDOUT, or the error that stopped
 * libcoord's sender.
 */
int push_wait_answers(struct push_tracker *t, struct coord_client *client, bool progress);

/*
 * What to add to a "no answer from the broker" message: "" or "; <a sentence>" from
 * coord_connection_error() and whether keys are in use (`client` may be NULL).
 */
const char *push_no_answer_hint(struct coord_client *client);

/* `coord-push import`: argv[0] is "import". Returns the exit status. */
int push_import(int argc, char **argv);

/*
 * The reading half of `import`, without the outbox or the network: parse `len` bytes of a
 * CSV (`csv`) or JSON Lines file exactly as `import` reads a file (the arg_* settings
 * apply: arg_council must be set; arg_category, arg_delimiter), build and check every row
 * at time `now_ms`, and find reused msg_ids. Returns 0 with the numbers of good and bad
 * rows, or the exit status `import` would stop with (EXIT_REJECTED for a file-level
 * problem, which it prints, EXIT_ERROR for a system failure). For the fuzzer.
 */
int push_import_check_buffer(const char *data, size_t len, bool csv, int64_t now_ms,
                             size_t *ret_rows, size_t *ret_bad);

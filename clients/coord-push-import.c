/*
 * coord-push import: a file of records (CSV or JSON Lines) into the outbox and to the broker.
 *
 * The whole file is read and every row built and checked (coord_envelope_build() for a CSV
 * row, pbjson + coord__envelope_complete() for a JSON line: the broker's own rules) before
 * anything is queued; bad rows are kept with their line and field. Rows that describe the
 * same record (same msg_id and revision, same bytes) are sent once; a msg_id and revision
 * reused for other content is a bad row. Then the good rows are queued in batches of
 * PUSH_BATCH per outbox transaction, or none with --all-or-nothing when a row is bad, and
 * the answers are awaited through the tracker.
 *
 * Why send the good rows by default: the ids are stable (a msg_id column, or the content
 * hash), so after fixing the bad rows the same file can simply be imported again: the rows
 * already stored come back DUPLICATE and only the fixed ones are added. Holding back 997
 * good rows for 3 typos would only delay the campaign's figures. --all-or-nothing is for
 * files that must land as a unit.
 *
 * CSV line numbers: libcsv reports fields and rows, not lines, so the file is fed to it one
 * line at a time and a row is numbered by the line where its first field ended (the line it
 * starts on, unless its first field is a quoted value spanning lines).
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <csv.h>
#include <jansson.h>

#include "coord-push.h"
#include "coord.h"
#include "coord.pb-c.h"
#include "pbjson.h"
#include "record.h"

struct row {
	long line;
	struct coord_envelope env;
	char category[12];
	long same_as; /* -1, or the index of an earlier row with the same record */
};

struct bad_row {
	long line;
	char field[64];
	char message[256];
};

struct import {
	const char *path;
	bool csv;
	int64_t now_ms;
	struct row *rows;
	size_t n_rows;
	size_t cap_rows;
	struct bad_row *bad;
	size_t n_bad;
	size_t cap_bad;
	size_t blank;
	size_t n_conflicts; /* rows both in `rows` and in `bad` (a msg_id reused) */
	int fatal;          /* a file-level problem (exit status), 0 if none */
	/* CSV */
	char **header;
	size_t n_header;
	char **cells;
	size_t n_cells;
	size_t cap_cells;
	long line;     /* the physical line being fed to libcsv */
	long row_line; /* the line where the current row's first field ended */
	bool in_row;
};

static int add_bad(struct import *im, long line, const char *field, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

static int
add_bad(struct import *im, long line, const char *field, const char *fmt, ...)
{
	if (im->n_bad == im->cap_bad) {
		size_t cap = im->cap_bad ? 2 * im->cap_bad : 16;
		struct bad_row *b = realloc(im->bad, cap * sizeof(*b));
		if (b == NULL) {
			return -ENOMEM;
		}
		im->bad = b;
		im->cap_bad = cap;
	}
	struct bad_row *b = &im->bad[im->n_bad++];
	b->line = line;
	(void) snprintf(b->field, sizeof(b->field), "%s", field != NULL ? field : "");
	va_list ap;
	va_start(ap, fmt);
	(void) vsnprintf(b->message, sizeof(b->message), fmt, ap);
	va_end(ap);
	return 0;
}

static int
add_row(struct import *im, long line, const char *category, struct coord_envelope *env)
{
	if (im->n_rows == im->cap_rows) {
		size_t cap = im->cap_rows ? 2 * im->cap_rows : 256;
		struct row *r = realloc(im->rows, cap * sizeof(*r));
		if (r == NULL) {
			return -ENOMEM;
		}
		im->rows = r;
		im->cap_rows = cap;
	}
	struct row *r = &im->rows[im->n_rows++];
	*r = (struct row){.line = line, .env = *env, .same_as = -1};
	(void) snprintf(r->category, sizeof(r->category), "%s", category);
	*env = (struct coord_envelope){0};
	return 0;
}

static char *
trim(char *s)
{
	while (isspace((unsigned char) *s)) {
		s++;
	}
	size_t len = strlen(s);
	while (len > 0 && isspace((unsigned char) s[len - 1])) {
		s[--len] = '\0';
	}
	return s;
}

/* One CSV data row (cells owned by im). Returns 0 or -ENOMEM. */
static int
csv_row(struct import *im)
{
	bool empty = true;
	for (size_t i = 0; i < im->n_cells && empty; i++) {
		empty = trim(im->cells[i])[0] == '\0';
	}
	if (empty) {
		im->blank++;
		return 0;
	}
	if (im->n_cells > im->n_header) {
		return add_bad(im, im->row_line, NULL,
		               "%zu cells, but the header names %zu columns", im->n_cells,
		               im->n_header);
	}
	const char *category = arg_category;
	for (size_t i = 0; i < im->n_cells; i++) {
		if (strcmp(im->header[i], "category") == 0 && trim(im->cells[i])[0] != '\0') {
			category = trim(im->cells[i]);
		}
	}
	if (category == NULL) {
		return add_bad(im, im->row_line, "category",
		               "no category: add a category column or give --category");
	}
	Coord__V1__Envelope__BodyCase body = coord__category_parse(category);
	if (body == COORD__V1__ENVELOPE__BODY__NOT_SET) {
		return add_bad(im, im->row_line, "category",
		               "'%.40s' is not event, letter, statement, petition, media or "
		               "retraction",
		               category);
	}
	struct coord_field fields[PUSH_FIELDS_MAX];
	size_t n = 0;
	for (size_t i = 0; i < im->n_cells && n < PUSH_FIELDS_MAX; i++) {
		const char *value = trim(im->cells[i]);
		if (value[0] == '\0' || strcmp(im->header[i], "category") == 0) {
			continue;
		}
		if (im->header[i][0] == '\0') {
			return add_bad(im, im->row_line, NULL,
			               "a value in column %zu, which has no name in the header",
			               i + 1);
		}
		if (!coord__field_known(body, im->header[i])) {
			return add_bad(im, im->row_line, im->header[i], "not a field of %s",
			               coord__category_name(body));
		}
		fields[n++] = (struct coord_field){.name = im->header[i], .value = value};
	}
	struct coord_envelope env;
	struct coord_error err;
	int r = coord_envelope_build(arg_council, category, fields, n, im->now_ms, &env, &err);
	if (r == -ENOMEM) {
		return r;
	}
	if (r < 0) {
		return add_bad(im, im->row_line, err.field, "%s", err.message);
	}
	r = add_row(im, im->row_line, coord__category_name(body), &env);
	coord_envelope_done(&env);
	return r;
}

static int
csv_header(struct import *im)
{
	im->header = calloc(im->n_cells > 0 ? im->n_cells : 1, sizeof(char *));
	if (im->header == NULL) {
		return -ENOMEM;
	}
	im->n_header = im->n_cells;
	bool any_field = false;
	for (size_t i = 0; i < im->n_cells; i++) {
		char *name = trim(im->cells[i]);
		/* A byte order mark (spreadsheets write one) before the first name. */
		if (i == 0 && strncmp(name, "\xEF\xBB\xBF", 3) == 0) {
			name = trim(name + 3);
		}
		for (char *p = name; *p != '\0'; p++) {
			*p = *p == '-' || *p == ' ' ? '_' : (char) tolower((unsigned char) *p);
		}
		im->header[i] = strdup(name);
		if (im->header[i] == NULL) {
			return -ENOMEM;
		}
		if (name[0] == '\0') {
			continue;
		}
		bool known = strcmp(name, "category") == 0;
		for (int b = COORD__V1__ENVELOPE__BODY_EVENT;
		     !known && b <= COORD__V1__ENVELOPE__BODY_RETRACTION; b++) {
			known = coord__field_known((Coord__V1__Envelope__BodyCase) b, name);
		}
		if (!known) {
			push_errorf(
			        "%s:%ld: column %zu, '%s', is not a field of any record category",
			        im->path, im->row_line, i + 1, name);
			im->fatal = EXIT_REJECTED;
		}
		for (size_t k = 0; k < i; k++) {
			if (strcmp(im->header[k], name) == 0) {
				push_errorf("%s:%ld: column '%s' appears twice", im->path,
				            im->row_line, name);
				im->fatal = EXIT_REJECTED;
			}
		}
		any_field = any_field || strcmp(name, "category") != 0;
	}
	if (!any_field) {
		push_errorf("%s:%ld: the first row must name the fields (kind,country,date,...)",
		            im->path, im->row_line);
		im->fatal = EXIT_REJECTED;
	}
	return 0;
}

static void
csv_cb_field(void *s, size_t len, void *data)
{
	struct import *im = data;
	if (!im->in_row) {
		im->in_row = true;
		im->row_line = im->line;
	}
	if (im->n_cells == im->cap_cells) {
		size_t cap = im->cap_cells ? 2 * im->cap_cells : 32;
		char **c = realloc(im->cells, cap * sizeof(*c));
		if (c == NULL) {
			im->fatal = EXIT_ERROR;
			return;
		}
		im->cells = c;
		im->cap_cells = cap;
	}
	char *cell = strndup(s != NULL ? s : "", len);
	if (cell == NULL) {
		im->fatal = EXIT_ERROR;
		return;
	}
	im->cells[im->n_cells++] = cell;
}

static void
csv_cb_row(int c, void *data)
{
	struct import *im = data;
	(void) c;
	if (!im->in_row) {
		im->row_line = im->line;
	}
	if (im->fatal == 0) {
		int r = im->header == NULL ? csv_header(im) : csv_row(im);
		if (r < 0) {
			im->fatal = EXIT_ERROR;
		}
	}
	for (size_t i = 0; i < im->n_cells; i++) {
		free(im->cells[i]);
	}
	im->n_cells = 0;
	im->in_row = false;
}

static int
read_csv(struct import *im, FILE *f)
{
	struct csv_parser p;
	if (csv_init(&p, CSV_STRICT | CSV_STRICT_FINI | CSV_APPEND_NULL) != 0) {
		return EXIT_ERROR;
	}
	csv_set_delim(&p, (unsigned char) arg_delimiter);
	char *buf = NULL;
	size_t cap = 0;
	ssize_t len;
	int status = 0;
	while (status == 0 && (len = getline(&buf, &cap, f)) >= 0) {
		im->line++;
		if (csv_parse(&p, buf, (size_t) len, csv_cb_field, csv_cb_row, im) !=
		    (size_t) len) {
			push_errorf("%s:%ld: not valid CSV: %s", im->path, im->line,
			            csv_strerror(csv_error(&p)));
			status = EXIT_REJECTED;
		}
		status = status != 0 ? status : im->fatal;
	}
	if (status == 0 && ferror(f)) {
		push_errorf("%s: %s", im->path, strerror(errno));
		status = EXIT_ERROR;
	}
	if (status == 0 && csv_fini(&p, csv_cb_field, csv_cb_row, im) != 0) {
		push_errorf("%s:%ld: not valid CSV: %s", im->path, im->line,
		            csv_strerror(csv_error(&p)));
		status = EXIT_REJECTED;
	}
	status = status != 0 ? status : im->fatal;
	if (status == 0 && im->header == NULL) {
		push_errorf("%s: empty file (the first row must name the fields)", im->path);
		status = EXIT_REJECTED;
	}
	for (size_t i = 0; i < im->n_cells; i++) {
		free(im->cells[i]);
	}
	im->n_cells = 0;
	free(buf);
	csv_free(&p);
	return status;
}

/* Split pbjson's "event.country: expected a string" into field and message. */
static void
split_json_error(const char *text, char *field, size_t field_size, const char **ret_msg)
{
	const char *colon = strstr(text, ": ");
	size_t len = colon != NULL ? (size_t) (colon - text) : 0;
	bool path = len > 0 && len < field_size && strcspn(text, " ") > len;
	if (path) {
		(void) snprintf(field, field_size, "%.*s", (int) len, text);
		*ret_msg = colon + 2;
	} else {
		field[0] = '\0';
		*ret_msg = text;
	}
}

static int
jsonl_line(struct import *im, const char *text, size_t len)
{
	size_t i = 0;
	while (i < len && isspace((unsigned char) text[i])) {
		i++;
	}
	if (i == len) {
		im->blank++;
		return 0;
	}
	ProtobufCMessage *msg = NULL;
	char errbuf[256] = "";
	int r = coord__pbjson_decode(&coord__v1__envelope__descriptor, text, len, &msg, errbuf,
	                             sizeof(errbuf));
	if (r == -ENOMEM) {
		return r;
	}
	if (r < 0) {
		char field[64];
		const char *m;
		split_json_error(errbuf[0] != '\0' ? errbuf : "not a JSON Envelope", field,
		                 sizeof(field), &m);
		return add_bad(im, im->line, field, "%s", m);
	}
	Coord__V1__Envelope *env = (Coord__V1__Envelope *) msg;
	struct coord_envelope out;
	struct coord_error err;
	r = coord__envelope_complete(env, arg_council, im->now_ms, &out, &err);
	const char *cat = coord__category_name(env->body_case);
	coord__v1__envelope__free_unpacked(env, NULL);
	if (r == -ENOMEM) {
		return r;
	}
	if (r < 0) {
		return add_bad(im, im->line, err.field, "%s", err.message);
	}
	r = add_row(im, im->line, cat, &out);
	coord_envelope_done(&out);
	return r;
}

static int
read_jsonl(struct import *im, FILE *f)
{
	char *buf = NULL;
	size_t cap = 0;
	ssize_t len;
	int status = 0;
	while (status == 0 && (len = getline(&buf, &cap, f)) >= 0) {
		im->line++;
		if (im->line == 1 && len >= 3 && memcmp(buf, "\xEF\xBB\xBF", 3) == 0) {
			memmove(buf, buf + 3, (size_t) len - 2);
			len -= 3;
		}
		if (jsonl_line(im, buf, (size_t) len) < 0) {
			push_errorf("out of memory");
			status = EXIT_ERROR;
		}
	}
	if (status == 0 && ferror(f)) {
		push_errorf("%s: %s", im->path, strerror(errno));
		status = EXIT_ERROR;
	}
	free(buf);
	return status;
}

/* Mark rows that repeat an earlier row's record; a msg_id and revision reused for
 * different content is a bad row. */
static int
find_repeats(struct import *im, struct push_tracker *t)
{
	for (size_t i = 0; i < im->n_rows; i++) {
		struct row *r = &im->rows[i];
		bool fresh;
		long k = push_tracker_add(t, r->env.msg_id, r->env.revision, r->line, &fresh);
		if (fresh) {
			continue;
		}
		const struct row *first = NULL;
		for (size_t j = 0; j < i; j++) {
			if (im->rows[j].same_as < 0 && im->rows[j].line == t->items[k].line) {
				first = &im->rows[j];
				r->same_as = (long) j;
				break;
			}
		}
		if (first != NULL && first->env.len == r->env.len &&
		    memcmp(first->env.bytes, r->env.bytes, r->env.len) == 0) {
			continue;
		}
		r->same_as = -2; /* not sent */
		im->n_conflicts++;
		if (add_bad(im, r->line, "msg_id",
		            "msg_id '%s' revision %u is already used on line %ld for other content",
		            r->env.msg_id, r->env.revision, t->items[k].line) < 0) {
			return -ENOMEM;
		}
	}
	return 0;
}

static int
bad_row_cmp(const void *a, const void *b)
{
	const struct bad_row *x = a, *y = b;
	return (x->line > y->line) - (x->line < y->line);
}

static void
import_free(struct import *im)
{
	for (size_t i = 0; i < im->n_rows; i++) {
		coord_envelope_done(&im->rows[i].env);
	}
	free(im->rows);
	free(im->bad);
	for (size_t i = 0; i < im->n_header; i++) {
		free(im->header[i]);
	}
	free(im->header);
	free(im->cells);
}

/* Queue every row to send (same_as == -1), in batches of one transaction each. */
static int
queue_rows(struct import *im, struct coord_client *client, size_t *ret_queued)
{
	struct coord_message batch[PUSH_BATCH];
	size_t n = 0, queued = 0;
	for (size_t i = 0; i <= im->n_rows; i++) {
		if (i < im->n_rows && im->rows[i].same_as == -1) {
			batch[n++] = (struct coord_message){.bytes = im->rows[i].env.bytes,
			                                    .len = im->rows[i].env.len};
		}
		if (n == PUSH_BATCH || (i == im->n_rows && n > 0)) {
			int r = coord_push_many(client, batch, n, NULL);
			if (r < 0) {
				return r;
			}
			queued += (size_t) r;
			n = 0;
		}
	}
	*ret_queued = queued;
	return 0;
}

static int
print_import_result(const struct import *im, const struct push_tracker *t, size_t to_send,
                    size_t queued_now, bool sent, bool waited, int wait_result, const char *hint)
{
	size_t waiting = sent ? t->n - t->answered : 0;
	size_t rows = im->n_rows + im->n_bad - im->n_conflicts;
	size_t repeats = 0;
	for (size_t i = 0; i < im->n_rows; i++) {
		repeats += im->rows[i].same_as >= 0;
	}
	if (arg_json) {
		json_t *o = json_object();
		(void) json_object_set_new(o, "file", json_string(im->path));
		(void) json_object_set_new(o, "format", json_string(im->csv ? "csv" : "jsonl"));
		(void) json_object_set_new(o, "rows", json_integer((json_int_t) rows));
		(void) json_object_set_new(o, "valid", json_integer((json_int_t) to_send));
		(void) json_object_set_new(o, "repeated", json_integer((json_int_t) repeats));
		json_t *bad = json_array();
		for (size_t i = 0; i < im->n_bad; i++) {
			json_t *b = json_object();
			(void) json_object_set_new(b, "line", json_integer(im->bad[i].line));
			(void) json_object_set_new(b, "field", json_string(im->bad[i].field));
			(void) json_object_set_new(b, "message", json_string(im->bad[i].message));
			(void) json_array_append_new(bad, b);
		}
		(void) json_object_set_new(o, "invalid", bad);
		(void) json_object_set_new(o, "sent", json_boolean(sent));
		(void) json_object_set_new(o, "queued", json_integer((json_int_t) queued_now));
		(void) json_object_set_new(o, "accepted", json_integer((json_int_t) t->accepted));
		(void) json_object_set_new(o, "duplicate", json_integer((json_int_t) t->duplicate));
		json_t *rej = json_array();
		for (size_t i = 0; sent && i < t->n; i++) {
			const struct push_tracked *it = &t->items[i];
			if (it->status != COORD_STATUS_REJECTED) {
				continue;
			}
			json_t *b = json_object();
			(void) json_object_set_new(b, "line", json_integer(it->line));
			(void) json_object_set_new(b, "msgId", json_string(it->msg_id));
			(void) json_object_set_new(b, "revision", json_integer(it->revision));
			(void) json_object_set_new(b, "reason",
			                           json_string(coord_reason_name(it->reason)));
			(void) json_object_set_new(b, "message",
			                           json_string(it->message ? it->message : ""));
			(void) json_array_append_new(rej, b);
		}
		(void) json_object_set_new(o, "rejected", rej);
		(void) json_object_set_new(o, "waiting", json_integer((json_int_t) waiting));
		push_print_json(o);
	} else {
		printf("%s: %zu rows: %zu valid, %zu invalid", im->path, rows, to_send + repeats,
		       im->n_bad);
		if (repeats > 0) {
			printf(" (%zu repeat an earlier row)", repeats);
		}
		printf("\n");
		if (sent && !waited) {
			printf("queued %zu records (%zu were already waiting); not waiting for the "
			       "answers (--timeout 0)\n",
			       to_send, to_send - queued_now);
		} else if (!sent) {
			printf("nothing sent%s\n",
			       arg_check_only ? " (--check)"
			       : im->n_bad > 0 && arg_all_or_nothing
			               ? " (--all-or-nothing: fix the invalid rows and run again)"
			               : "");
		} else {
			printf("accepted %zu, duplicate %zu, rejected %zu, waiting %zu\n",
			       t->accepted, t->duplicate, t->rejected, waiting);
			for (size_t i = 0; i < t->n; i++) {
				const struct push_tracked *it = &t->items[i];
				if (it->status == COORD_STATUS_REJECTED) {
					printf("rejected: %s:%ld: %s: %s: %s\n", im->path, it->line,
					       it->msg_id, coord_reason_name(it->reason),
					       it->message ? it->message : "");
				}
			}
		}
	}
	if (wait_result == -ETIMEDOUT && waiting > 0) {
		push_errorf("no answer from the broker for %g s; %zu records wait in the outbox %s "
		            "(run the same import again, or `coord-push flush`)%s",
		            arg_timeout, waiting, arg_outbox, hint);
		return EXIT_WAITING;
	}
	if (im->n_bad > 0 || t->rejected > 0) {
		return EXIT_REJECTED;
	}
	return 0;
}

int
push_import_check_buffer(const char *data, size_t len, bool csv, int64_t now_ms, size_t *ret_rows,
                         size_t *ret_bad)
{
	struct import im = {.path = "<buffer>", .csv = csv, .now_ms = now_ms};
	/* fmemopen() refuses an empty buffer: an empty file reads the same as /dev/null. */
	FILE *f = len > 0 ? fmemopen((void *) data, len, "r") : fopen("/dev/null", "re");
	if (f == NULL) {
		return EXIT_ERROR;
	}
	int status = csv ? read_csv(&im, f) : read_jsonl(&im, f);
	(void) fclose(f);
	struct push_tracker t;
	bool tracker_ok = push_tracker_init(&t, im.n_rows) == 0;
	if (status == 0 && (!tracker_ok || find_repeats(&im, &t) < 0)) {
		status = EXIT_ERROR;
	}
	if (status == 0) {
		*ret_rows = im.n_rows;
		*ret_bad = im.n_bad;
	}
	if (tracker_ok) {
		push_tracker_done(&t);
	}
	import_free(&im);
	return status;
}

int
push_import(int argc, char **argv)
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
	if (optind + 1 != argc) {
		return push_usage_error("import: give exactly one FILE");
	}
	r = push_resolve_defaults();
	if (r != 0) {
		return r;
	}
	struct import im = {.path = argv[optind], .now_ms = coord__now_ms()};
	FILE *f = strcmp(im.path, "-") == 0 ? stdin : fopen(im.path, "r");
	if (f == NULL) {
		push_errorf("%s: %s", im.path, strerror(errno));
		return EXIT_ERROR;
	}
	if (arg_format != NULL) {
		im.csv = strcmp(arg_format, "csv") == 0;
	} else {
		const char *dot = strrchr(im.path, '.');
		if (dot != NULL && (strcmp(dot, ".jsonl") == 0 || strcmp(dot, ".ndjson") == 0 ||
		                    strcmp(dot, ".json") == 0)) {
			im.csv = false;
		} else if (dot != NULL && (strcmp(dot, ".csv") == 0 || strcmp(dot, ".tsv") == 0)) {
			im.csv = true;
			if (strcmp(dot, ".tsv") == 0) {
				arg_delimiter = '\t';
			}
		} else {
			int c;
			while ((c = getc(f)) != EOF && isspace(c)) {
			}
			im.csv = c != '{';
			if (c != EOF) {
				(void) ungetc(c, f);
			}
		}
	}
	int status = im.csv ? read_csv(&im, f) : read_jsonl(&im, f);
	if (f != stdin) {
		(void) fclose(f);
	}
	struct push_tracker t;
	struct coord_client *client = NULL;
	bool tracker_ok = push_tracker_init(&t, im.n_rows) == 0;
	if (status == 0 && !tracker_ok) {
		push_errorf("out of memory");
		status = EXIT_ERROR;
	}
	if (status == 0 && find_repeats(&im, &t) < 0) {
		push_errorf("out of memory");
		status = EXIT_ERROR;
	}
	if (status != 0) {
		goto out;
	}
	if (im.n_bad > 0) {
		qsort(im.bad, im.n_bad, sizeof(*im.bad), bad_row_cmp);
	}
	for (size_t i = 0; i < im.n_bad; i++) {
		const struct bad_row *b = &im.bad[i];
		fprintf(stderr, "%s:%ld: %s%s%s\n", im.path, b->line, b->field,
		        b->field[0] != '\0' ? ": " : "", b->message);
	}
	size_t to_send = 0;
	for (size_t i = 0; i < im.n_rows; i++) {
		to_send += im.rows[i].same_as == -1;
	}
	bool send = !arg_check_only && !(arg_all_or_nothing && im.n_bad > 0) && to_send > 0;
	size_t queued = 0;
	int w = 0;
	if (send) {
		if (push_open_client(&t, 0, &client) < 0) {
			status = EXIT_ERROR;
			goto out;
		}
		r = queue_rows(&im, client, &queued);
		if (r < 0) {
			push_errorf("cannot queue the records: %s", coord_strerror(r));
			status = EXIT_ERROR;
			goto out;
		}
		fprintf(stderr, "coord-push: queued %zu records (%zu were already waiting)\n",
		        to_send, to_send - queued);
		fflush(stderr);
		if (arg_timeout > 0) {
			w = push_wait_answers(&t, client, true);
			if (w < 0 && w != -ETIMEDOUT) {
				push_errorf(
				        "sending stopped: %s (the records wait in the outbox %s)",
				        coord_strerror(w), arg_outbox);
				status = EXIT_ERROR;
				goto out;
			}
		}
	}
	(void) pthread_mutex_lock(&t.mu);
	status = print_import_result(&im, &t, to_send, queued, send, send && arg_timeout > 0, w,
	                             push_no_answer_hint(client));
	(void) pthread_mutex_unlock(&t.mu);
out:
	client = coord_client_free(client);
	if (tracker_ok) {
		push_tracker_done(&t);
	}
	import_free(&im);
	return status;
}

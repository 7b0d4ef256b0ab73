/*
 * coordctl-store: backup, verify and repair on a state directory (see coordctl-store.h).
 *
 * These link the daemon's own store and digest modules (coordd-core), so verify checks
 * records with exactly the validation the broker applies, and repair rebuilds with exactly
 * the code the broker uses to keep the index and the aggregates. Progress goes to stderr
 * when it is a terminal; results go to stdout, as text or (--json) one JSON object.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "coordctl-store.h"
#include "digest.h"
#include "hqlib.h"
#include "store.h"

/* Problems listed in --json output (all are counted). */
#define JSON_PROBLEMS_MAX 1000
/* Map size for read-only opens: LMDB takes the store's own when it is larger. */
#define READ_MAP_SIZE (UINT64_C(1) << 20)
/* Room repair leaves for the rebuilt tables beside the old pages. */
#define REPAIR_MAP_EXTRA (UINT64_C(256) << 20)

struct run {
	const char *cmd;
	bool json;
	bool progress; /* stderr is a terminal */
	const char *unit;
	json_t *problems;
	uint64_t n_problems;
};

static const char *const commands[] = {"backup", "verify", "repair"};

bool
coordctl_store_command(const char *cmd)
{
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(cmd, commands[i]) == 0) {
			return true;
		}
	}
	return false;
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

static void
on_progress(void *data, uint64_t done, uint64_t total)
{
	struct run *run = data;

	if (!run->progress) {
		return;
	}
	if (strcmp(run->unit, "bytes") == 0) {
		fprintf(stderr, "\rcoordctl %s: %.1f of ~%.1f MiB", run->cmd,
		        (double) done / (1 << 20), (double) total / (1 << 20));
	} else {
		fprintf(stderr, "\rcoordctl %s: %" PRIu64 " of %" PRIu64 " %s", run->cmd, done,
		        total, run->unit);
	}
	(void) fflush(stderr);
}

static void
progress_end(struct run *run)
{
	if (run->progress) {
		fprintf(stderr, "\n");
	}
}

static void
on_problem(void *data, const char *text)
{
	struct run *run = data;

	run->n_problems++;
	if (run->json) {
		if (run->n_problems <= JSON_PROBLEMS_MAX) {
			(void) json_array_append_new(run->problems, json_string(text));
		}
		return;
	}
	if (run->progress) {
		fprintf(stderr, "\n");
	}
	printf("problem: %s\n", text);
}

static int
print_json(json_t *obj)
{
	char *text = json_dumps(obj, JSON_COMPACT | JSON_ENSURE_ASCII);

	json_decref(obj);
	if (!text) {
		fprintf(stderr, "coordctl: out of memory\n");
		return 1;
	}
	printf("%s\n", text);
	free(text);
	return 0;
}

/* Report a failure to use the state directory; returns COORDCTL_EXIT_STORE. */
static int
store_error(struct run *run, const char *dir, int r, const char *what)
{
	if (run->json) {
		(void) print_json(json_pack("{s:s, s:s, s:b, s:s, s:s}", "command", run->cmd,
		                            "state_dir", dir, "ok", 0, "error", what, "reason",
		                            strerror(-r)));
	}
	fprintf(stderr, "coordctl %s: %s: %s (%s)\n", run->cmd, dir, what, strerror(-r));
	return COORDCTL_EXIT_STORE;
}

static int
open_store(struct run *run, const char *dir, bool read_only, uint64_t map_size, struct store **ret)
{
	char path[PATH_MAX];
	struct stat st;

	if ((size_t) snprintf(path, sizeof(path), "%s/data.mdb", dir) >= sizeof(path) ||
	    stat(path, &st) < 0) {
		return store_error(run, dir, -ENOENT, "no coordd store here (no data.mdb)");
	}
	const struct store_options o = {
	        .dir = dir,
	        .map_size = map_size ? map_size : READ_MAP_SIZE,
	        .map_size_max = map_size ? map_size : READ_MAP_SIZE,
	        .sync = true,
	        .read_only = read_only,
	};
	int r = store_open(&o, ret);
	if (r == -EBUSY) {
		return store_error(run, dir, r,
		                   "coordd is running on it (it holds coordd.lock): stop it first");
	}
	if (r == -EPROTO) {
		return store_error(run, dir, r, "written by a newer coordd");
	}
	if (r < 0) {
		return store_error(run, dir, r, "cannot open the store");
	}
	return 0;
}

/* Parse [--json] and exactly `n_args` operands into args[]. Returns -1 to go on, else the
 * exit status. */
static int
parse(struct run *run, int argc, char **argv, size_t n_args, const char **args)
{
	enum { ARG_JSON = 0x100 };
	static const struct option options[] = {
	        {"json", no_argument, NULL, ARG_JSON},
	        {0},
	};
	int opt;

	while ((opt = getopt_long(argc, argv, "", options, NULL)) >= 0) {
		if (opt != ARG_JSON) {
			return usage_error("bad option for '%s'", run->cmd);
		}
		run->json = true;
	}
	if ((size_t) (argc - optind) != n_args) {
		return usage_error("'%s' takes %s", run->cmd,
		                   n_args == 2 ? "STATE_DIR DEST" : "STATE_DIR");
	}
	for (size_t i = 0; i < n_args; i++) {
		args[i] = argv[optind + (int) i];
	}
	run->progress = isatty(STDERR_FILENO) == 1;
	return -1;
}

static int
cmd_backup(struct run *run, const char *dir, const char *dest)
{
	struct store *s = NULL;
	struct store *copy = NULL;
	struct store_stats st = {0};
	struct stat sb;
	char path[PATH_MAX];
	int r = open_store(run, dir, true, 0, &s);

	if (r != 0) {
		return r;
	}
	/* mdb_env_copyfd2 writes into a pipe that store_backup() reads. */
	(void) signal(SIGPIPE, SIG_IGN);
	run->unit = "bytes";
	r = store_backup(s, dest, on_progress, run);
	progress_end(run);
	s = store_free(s);
	if (r == -EEXIST || r == -ENOTDIR) {
		return store_error(run, dest, r,
		                   "the destination must not exist or be an empty directory");
	}
	if (r < 0) {
		return store_error(run, dest, r, "backup failed");
	}
	(void) snprintf(path, sizeof(path), "%s/data.mdb", dest);
	if (stat(path, &sb) < 0) {
		sb.st_size = 0;
	}
	/* What the copy holds, read from the copy itself. */
	const struct store_options o = {.dir = dest,
	                                .map_size = READ_MAP_SIZE,
	                                .map_size_max = READ_MAP_SIZE,
	                                .read_only = true};
	r = store_open(&o, &copy);
	if (r == 0) {
		r = store_get_stats(copy, &st);
	}
	copy = store_free(copy);
	if (r < 0) {
		return store_error(run, dest, r, "the backup cannot be read back");
	}
	if (run->json) {
		return print_json(json_pack(
		        "{s:s, s:s, s:s, s:b, s:I, s:I, s:I, s:I}", "command", "backup",
		        "state_dir", dir, "dest", dest, "ok", 1, "last_seq",
		        (json_int_t) st.last_seq, "items", (json_int_t) st.items, "records",
		        (json_int_t) st.records, "bytes", (json_int_t) sb.st_size));
	}
	printf("Backed up %s to %s: %" PRIu64 " items, %" PRIu64 " records, up to seq %" PRIu64
	       ", %lld bytes (compacted, fsynced)\n",
	       dir, dest, st.items, st.records, st.last_seq, (long long) sb.st_size);
	return 0;
}

/* Check the store and the aggregates; problems go to on_problem(). */
static int
check(struct run *run, struct store *s, struct store_verify_report *rep,
      struct digest_check_report *drep)
{
	run->unit = "items";
	int r = store_verify(s, on_progress, on_problem, run, rep);
	progress_end(run);
	if (r < 0 && r != -EBADMSG) {
		return r;
	}
	run->unit = "items recounted";
	r = digest_verify(s, on_progress, on_problem, run, drep);
	progress_end(run);
	return r < 0 && r != -EBADMSG ? r : 0;
}

static json_t *
verify_json(struct run *run, const struct store_verify_report *rep,
            const struct digest_check_report *drep)
{
	return json_pack("{s:I, s:I, s:I, s:I, s:I, s:o}", "items", (json_int_t) rep->items,
	                 "records", (json_int_t) rep->records, "live_records",
	                 (json_int_t) drep->live, "aggregates", (json_int_t) drep->aggregates,
	                 "problem_count", (json_int_t) run->n_problems, "problems",
	                 json_incref(run->problems));
}

static int
cmd_verify(struct run *run, const char *dir)
{
	struct store *s = NULL;
	struct store_verify_report rep = {0};
	struct digest_check_report drep = {0};
	int r = open_store(run, dir, true, 0, &s);

	if (r != 0) {
		return r;
	}
	r = check(run, s, &rep, &drep);
	s = store_free(s);
	if (r < 0) {
		return store_error(run, dir, r, "verify could not read the store");
	}
	if (run->json) {
		json_t *o = verify_json(run, &rep, &drep);
		(void) json_object_set_new(o, "command", json_string("verify"));
		(void) json_object_set_new(o, "state_dir", json_string(dir));
		(void) json_object_set_new(o, "ok", json_boolean(run->n_problems == 0));
		r = print_json(o);
		return r ? r : run->n_problems ? 1 : 0;
	}
	printf("%s: %" PRIu64 " items, %" PRIu64 " records (%" PRIu64 " live), %" PRIu64
	       " aggregates: %s\n",
	       dir, rep.items, rep.records, drep.live, drep.aggregates,
	       run->n_problems == 0 ? "intact" : "DAMAGED");
	if (run->n_problems) {
		printf("%" PRIu64 " problems; `coordctl repair %s` rebuilds the index and the "
		       "aggregates from the items (with coordd stopped)\n",
		       run->n_problems, dir);
		return 1;
	}
	return 0;
}

static int
cmd_repair(struct run *run, const char *dir)
{
	char path[PATH_MAX];
	struct stat st;
	struct store *s = NULL;
	struct store_repair_report rrep = {0};
	struct digest_check_report drep = {0};
	MDB_txn *txn = NULL;

	/* Rebuilt tables are written beside the old pages (freed only at the commit): give the
	 * map room for a copy of everything. A larger map is kept in the store afterwards. */
	(void) snprintf(path, sizeof(path), "%s/data.mdb", dir);
	uint64_t map = stat(path, &st) == 0 ? (uint64_t) st.st_size * 2 + REPAIR_MAP_EXTRA : 0;
	int r = open_store(run, dir, false, map, &s);
	if (r != 0) {
		return r;
	}
	run->unit = "items (index)";
	r = store_repair_begin(s, &txn);
	if (r == 0) {
		r = store_rebuild_index(s, txn, on_progress, on_problem, run, &rrep);
		progress_end(run);
	}
	if (r == 0) {
		run->unit = "items (aggregates)";
		r = digest_rebuild(s, txn, on_progress, run, &drep);
		progress_end(run);
	}
	if (r == 0) {
		r = store_repair_commit(s, txn);
	} else if (txn) {
		store_repair_abort(s, txn);
	}
	if (r < 0) {
		s = store_free(s);
		return store_error(run, dir, r, "repair failed; nothing was changed");
	}
	/* What is left: items that do not decode cannot be repaired from themselves. */
	uint64_t skipped_problems = run->n_problems;
	struct store_verify_report vrep = {0};
	struct digest_check_report vdrep = {0};
	run->n_problems = 0;
	json_array_clear(run->problems);
	r = check(run, s, &vrep, &vdrep);
	s = store_free(s);
	if (r < 0) {
		return store_error(run, dir, r, "verify after repair could not read the store");
	}
	if (run->json) {
		json_t *o = json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b, s:o}",
		                      "command", "repair", "state_dir", dir, "items",
		                      (json_int_t) rrep.items, "records", (json_int_t) rrep.records,
		                      "index_entries_fixed", (json_int_t) rrep.replaced,
		                      "index_entries_dropped", (json_int_t) rrep.dropped,
		                      "items_skipped", (json_int_t) rrep.skipped, "aggregates",
		                      (json_int_t) drep.aggregates, "aggregates_fixed",
		                      (json_int_t) drep.problems, "ok", run->n_problems == 0,
		                      "verify", verify_json(run, &vrep, &vdrep));
		r = print_json(o);
		return r ? r : run->n_problems ? 1 : 0;
	}
	printf("Repaired %s: %" PRIu64 " items read (%" PRIu64 " undecodable, skipped); index: "
	       "%" PRIu64 " records, %" PRIu64 " entries fixed, %" PRIu64
	       " dropped; aggregates: %" PRIu64 ", %" PRIu64 " fixed\n",
	       dir, rrep.items, skipped_problems ? rrep.skipped : 0, rrep.records, rrep.replaced,
	       rrep.dropped, drep.aggregates, drep.problems);
	if (run->n_problems) {
		printf("verify after repair: %" PRIu64 " problems remain (listed above)\n",
		       run->n_problems);
		return 1;
	}
	printf("verify after repair: intact\n");
	return 0;
}

int
coordctl_store_main(int argc, char **argv)
{
	struct run run = {.cmd = argv[0], .problems = json_array()};
	const char *args[2] = {NULL, NULL};
	int r;

	if (!run.problems) {
		fprintf(stderr, "coordctl: out of memory\n");
		return 1;
	}
	bool backup = strcmp(run.cmd, "backup") == 0;
	r = parse(&run, argc, argv, backup ? 2 : 1, args);
	if (r < 0) {
		if (backup) {
			r = cmd_backup(&run, args[0], args[1]);
		} else if (strcmp(run.cmd, "verify") == 0) {
			r = cmd_verify(&run, args[0]);
		} else {
			r = cmd_repair(&run, args[0]);
		}
	}
	json_decref(run.problems);
	(void) fflush(stdout);
	return r;
}

/*
 * Unit tests for daemon/config.c: defaults, every key, size suffixes, comments, council
 * sorting and lookup, reference counting, files, and every error branch with the line it
 * must name.
 *
 * Error cases are data (struct error_case) run by one function, each registered under its
 * own test_<behaviour> name in the table at the bottom. Tests that need files write them
 * into their own mkdtemp() directory and remove it. test_shipped_config_loads reads the
 * file named by $COORDD_CONF (config/coordd.conf) and is skipped when it is unset.
 */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "log.h"

#define BASE "[coordd]\nstate_dir = /var/lib/coordd\n"

static struct config *
parse_ok(const char *text)
{
	struct config *c = NULL;
	struct config_error e = {.line = 0};

	int r = config_parse_string(text, "test", &c, &e);
	if (r < 0) {
		print_error("unexpected error at line %u: %s\n", e.line, e.message);
	}
	assert_int_equal(r, 0);
	assert_non_null(c);
	return c;
}

/* A directory of files for one test; removed by tmp_done(). */
struct tmp {
	char dir[PATH_MAX - 64];
	char path[PATH_MAX];
};

static void
tmp_init(struct tmp *t)
{
	const char *base = getenv("TMPDIR");

	(void) snprintf(t->dir, sizeof(t->dir), "%s/test_config.XXXXXX", base ? base : "/tmp");
	assert_non_null(mkdtemp(t->dir));
	(void) snprintf(t->path, sizeof(t->path), "%s/coordd.conf", t->dir);
}

static void
tmp_write(struct tmp *t, const char *data, size_t len)
{
	FILE *f = fopen(t->path, "we");

	assert_non_null(f);
	assert_int_equal(fwrite(data, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
}

static void
tmp_done(struct tmp *t)
{
	(void) unlink(t->path);
	assert_int_equal(rmdir(t->dir), 0);
}

static void
test_minimal_config_uses_defaults(void **state)
{
	(void) state;
	struct config *c = parse_ok(BASE);

	assert_string_equal(c->path, "test");
	assert_int_equal(c->refs, 1);
	assert_string_equal(c->state_dir, "/var/lib/coordd");
	assert_int_equal(c->log_level, LOG_LEVEL_INFO);
	assert_string_equal(c->ingest.endpoint, "tcp://127.0.0.1:7701");
	assert_int_equal(c->ingest.max_message_bytes, 64 * 1024);
	assert_int_equal(c->ingest.max_batch, 1024);
	assert_int_equal(c->ingest.max_pending, 8192);
	assert_int_equal(c->ingest.hwm, 10000);
	assert_string_equal(c->publish.endpoint, "tcp://127.0.0.1:7702");
	assert_int_equal(c->publish.hwm, 1000);
	assert_string_equal(c->query.endpoint, "tcp://127.0.0.1:7703");
	assert_int_equal(c->query.history_limit, 1000);
	assert_int_equal(c->query.history_limit_max, 10000);
	assert_int_equal(c->query.history_bytes_max, 4 << 20);
	assert_int_equal(c->query.hwm, 32);
	assert_int_equal(c->digest.publish_interval_ms, 1000);
	assert_int_equal(c->digest.headlines, 5);
	assert_true(c->store.map_size == UINT64_C(64) << 20);
	assert_true(c->store.map_size_max == UINT64_C(16) << 30);
	assert_int_equal(c->store.sync, CONFIG_SYNC_FULL);
	assert_int_equal(c->n_councils, 0);
	assert_null(config_find_council(c, "fr"));
	assert_null(config_unref(c));
}

static void
test_every_key_is_set(void **state)
{
	(void) state;
	struct config *c = parse_ok("[coordd]\n"
	                            "state_dir = ./state\n"
	                            "log_level = debug\n"
	                            "[ingest]\n"
	                            "endpoint = ipc:///run/coordd/ingest\n"
	                            "max_message_bytes = 1M\n"
	                            "max_batch = 65536\n"
	                            "max_pending = 4294967295\n"
	                            "hwm = 1000000\n"
	                            "[publish]\n"
	                            "endpoint = ipc:///run/coordd/publish\n"
	                            "hwm = 1000000\n"
	                            "[query]\n"
	                            "endpoint = ipc:///run/coordd/query\n"
	                            "history_limit = 100000\n"
	                            "history_limit_max = 100000\n"
	                            "history_bytes_max = 64M\n"
	                            "hwm = 100000\n"
	                            "[digest]\n"
	                            "publish_interval_ms = 3600000\n"
	                            "headlines = 50\n"
	                            "[store]\n"
	                            "map_size = 1MiB\n"
	                            "map_size_max = 1T\n"
	                            "sync = none\n"
	                            "[council.am]\n"
	                            "name = Council of Armenia\n"
	                            "country = AM\n");

	assert_string_equal(c->state_dir, "./state");
	assert_int_equal(c->log_level, LOG_LEVEL_DEBUG);
	assert_string_equal(c->ingest.endpoint, "ipc:///run/coordd/ingest");
	assert_int_equal(c->ingest.max_message_bytes, 1024 * 1024);
	assert_int_equal(c->ingest.max_batch, 65536);
	assert_true(c->ingest.max_pending == UINT32_MAX);
	assert_int_equal(c->ingest.hwm, 1000000);
	assert_string_equal(c->publish.endpoint, "ipc:///run/coordd/publish");
	assert_int_equal(c->publish.hwm, 1000000);
	assert_string_equal(c->query.endpoint, "ipc:///run/coordd/query");
	assert_int_equal(c->query.history_limit, 100000);
	assert_int_equal(c->query.history_limit_max, 100000);
	assert_int_equal(c->query.history_bytes_max, 64 << 20);
	assert_int_equal(c->query.hwm, 100000);
	assert_int_equal(c->digest.publish_interval_ms, 3600000);
	assert_int_equal(c->digest.headlines, 50);
	assert_true(c->store.map_size == UINT64_C(1) << 20);
	assert_true(c->store.map_size_max == UINT64_C(1) << 40);
	assert_int_equal(c->store.sync, CONFIG_SYNC_NONE);
	assert_int_equal(c->n_councils, 1);
	assert_string_equal(c->councils[0].id, "am");
	assert_string_equal(c->councils[0].name, "Council of Armenia");
	assert_string_equal(c->councils[0].country, "AM");
	assert_null(config_unref(c));
}

static void
test_log_levels_map_to_enum(void **state)
{
	(void) state;
	static const struct {
		const char *word;
		int level;
	} levels[] = {
	        {"error", LOG_LEVEL_ERROR},   {"warning", LOG_LEVEL_WARNING},
	        {"notice", LOG_LEVEL_NOTICE}, {"info", LOG_LEVEL_INFO},
	        {"debug", LOG_LEVEL_DEBUG},
	};

	for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
		char text[128];
		(void) snprintf(text, sizeof(text), BASE "log_level = %s\n", levels[i].word);
		struct config *c = parse_ok(text);
		assert_int_equal(c->log_level, levels[i].level);
		assert_null(config_unref(c));
	}
}

static void
test_range_limits_are_inclusive(void **state)
{
	(void) state;
	struct config *c = parse_ok(BASE "[ingest]\n"
	                                 "max_message_bytes = 1024\n"
	                                 "max_batch = 1\n"
	                                 "max_pending = 1\n"
	                                 "hwm = 100\n"
	                                 "[publish]\n"
	                                 "hwm = 100\n"
	                                 "[query]\n"
	                                 "history_limit = 1\n"
	                                 "history_limit_max = 1\n"
	                                 "history_bytes_max = 64K\n"
	                                 "hwm = 1\n"
	                                 "[digest]\n"
	                                 "publish_interval_ms = 10\n"
	                                 "headlines = 1\n"
	                                 "[store]\n"
	                                 "map_size = 1048576\n"
	                                 "map_size_max = 1048576\n");

	assert_int_equal(c->ingest.max_message_bytes, 1024);
	assert_int_equal(c->ingest.max_batch, 1);
	assert_int_equal(c->ingest.max_pending, 1);
	assert_int_equal(c->ingest.hwm, 100);
	assert_int_equal(c->publish.hwm, 100);
	assert_int_equal(c->query.history_limit, 1);
	assert_int_equal(c->query.history_limit_max, 1);
	assert_int_equal(c->query.history_bytes_max, 64 * 1024);
	assert_int_equal(c->query.hwm, 1);
	assert_int_equal(c->digest.publish_interval_ms, 10);
	assert_int_equal(c->digest.headlines, 1);
	assert_true(c->store.map_size == 1048576);
	assert_true(c->store.map_size_max == 1048576);
	assert_null(config_unref(c));
}

static void
test_size_suffixes(void **state)
{
	(void) state;
	static const struct {
		const char *s;
		uint64_t v;
	} good[] = {
	        {"0", 0},
	        {"65536", 65536},
	        {"512B", 512},
	        {"512b", 512},
	        {"64K", 64 << 10},
	        {"64k", 64 << 10},
	        {"64KB", 64 << 10},
	        {"64KiB", 64 << 10},
	        {"64kib", 64 << 10},
	        {"64M", UINT64_C(64) << 20},
	        {"64MiB", UINT64_C(64) << 20},
	        {"16G", UINT64_C(16) << 30},
	        {"16gb", UINT64_C(16) << 30},
	        {"1T", UINT64_C(1) << 40},
	        {"1TiB", UINT64_C(1) << 40},
	        {"007", 7},
	        {"18446744073709551615", UINT64_MAX},
	        {"16777215T", UINT64_C(16777215) << 40},
	};
	static const struct {
		const char *s;
		int r;
	} bad[] = {
	        {"", -EINVAL},
	        {"K", -EINVAL},
	        {"-1", -EINVAL},
	        {"+1", -EINVAL},
	        {" 1", -EINVAL},
	        {"1 ", -EINVAL},
	        {"64 K", -EINVAL},
	        {"1.5G", -EINVAL},
	        {"64Q", -EINVAL},
	        {"64KiBs", -EINVAL},
	        {"64iB", -EINVAL},
	        {"64Ki", -EINVAL},
	        {"64BB", -EINVAL},
	        {"0x10", -EINVAL},
	        {"18446744073709551616", -ERANGE},
	        {"99999999999999999999999999999999999", -ERANGE},
	        {"16777216T", -ERANGE},
	        {"17179869184G", -ERANGE},
	};

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		uint64_t v = 1;
		if (config_parse_size(good[i].s, &v) != 0 || v != good[i].v) {
			fail_msg("'%s' parsed wrong", good[i].s);
		}
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint64_t v = 12345;
		if (config_parse_size(bad[i].s, &v) != bad[i].r || v != 12345) {
			fail_msg("'%s' should fail with %d", bad[i].s, bad[i].r);
		}
	}
	uint64_t v;
	assert_int_equal(config_parse_size(NULL, &v), -EINVAL);
}

static void
test_comments_and_whitespace(void **state)
{
	(void) state;
	struct config *c = parse_ok("\xEF\xBB\xBF; a comment\r\n"
	                            "# another comment\n"
	                            "\n"
	                            "   [coordd]   ; section comment\n"
	                            "\tstate_dir\t=\t/srv/a#b   # inline comment\n"
	                            "  log_level = notice ; inline comment\r\n"
	                            "[ingest] # section comment\n"
	                            "    endpoint = tcp://127.0.0.1:9999;not-a-comment\n"
	                            "[council.fr]\n"
	                            "name =   Coordinating Council ; of France\n"
	                            "    country = FR\n");

	assert_string_equal(c->state_dir, "/srv/a#b");
	assert_int_equal(c->log_level, LOG_LEVEL_NOTICE);
	/* ';' and '#' start a comment only after whitespace. */
	assert_string_equal(c->ingest.endpoint, "tcp://127.0.0.1:9999;not-a-comment");
	assert_string_equal(c->councils[0].name, "Coordinating Council");
	assert_string_equal(c->councils[0].country, "FR");
	assert_null(config_unref(c));
}

static void
test_last_line_without_newline(void **state)
{
	(void) state;
	struct config *c = parse_ok(BASE "log_level = error");
	assert_int_equal(c->log_level, LOG_LEVEL_ERROR);
	assert_null(config_unref(c));

	c = parse_ok(BASE "  \t ");
	assert_null(config_unref(c));
}

static void
test_utf8_council_name(void **state)
{
	(void) state;
	struct config *c = parse_ok(BASE "[council.fr]\n"
	                                 "name = Conseil de Coordination des Organisations "
	                                 "Arm\xC3\xA9niennes de France\n"
	                                 "country = FR\n");

	assert_string_equal(
	        c->councils[0].name,
	        "Conseil de Coordination des Organisations Arm\xC3\xA9niennes de France");
	assert_null(config_unref(c));
}

static void
test_councils_sorted_and_found(void **state)
{
	(void) state;
	struct config *c = parse_ok(BASE "[council.us]\nname = U\ncountry = US\n"
	                                 "[council.fr]\nname = F\ncountry = FR\n"
	                                 "[council.zz-9_x]\nname = Z\ncountry = GR\n"
	                                 "[council.0ar]\nname = A\ncountry = AR\n"
	                                 "[council.de]\nname = D\ncountry = DE\n");

	assert_int_equal(c->n_councils, 5);
	for (size_t i = 1; i < c->n_councils; i++) {
		assert_true(strcmp(c->councils[i - 1].id, c->councils[i].id) < 0);
	}
	static const char *const ids[] = {"us", "fr", "zz-9_x", "0ar", "de"};
	for (size_t i = 0; i < 5; i++) {
		const struct config_council *k = config_find_council(c, ids[i]);
		assert_non_null(k);
		assert_string_equal(k->id, ids[i]);
	}
	assert_string_equal(config_find_council(c, "fr")->name, "F");
	assert_string_equal(config_find_council(c, "zz-9_x")->country, "GR");
	assert_null(config_find_council(c, "gb"));
	assert_null(config_find_council(c, "f"));
	assert_null(config_find_council(c, "FR"));
	assert_null(config_find_council(c, ""));
	assert_null(config_find_council(c, "a-very-long-id-that-exceeds-32-bytes"));
	assert_null(config_find_council(c, NULL));
	assert_null(config_find_council(NULL, "fr"));
	assert_null(config_unref(c));
}

static void
test_many_councils(void **state)
{
	(void) state;
	size_t n = 1000, cap = n * 64 + 64, len = 0;
	char *text = malloc(cap);

	assert_non_null(text);
	len += (size_t) snprintf(text + len, cap - len, "%s", BASE);
	for (size_t i = n; i > 0; i--) {
		len += (size_t) snprintf(text + len, cap - len,
		                         "[council.c%04zu]\nname = Council %zu\ncountry = FR\n", i,
		                         i);
	}
	struct config *c = parse_ok(text);
	free(text);

	assert_int_equal(c->n_councils, n);
	assert_string_equal(c->councils[0].id, "c0001");
	assert_string_equal(config_find_council(c, "c0777")->name, "Council 777");
	assert_null(config_unref(c));
}

static void
test_ref_unref(void **state)
{
	(void) state;
	struct config *c = parse_ok(BASE);

	assert_ptr_equal(config_ref(c), c);
	assert_int_equal(c->refs, 2);
	assert_null(config_unref(c));
	assert_int_equal(c->refs, 1);
	assert_string_equal(c->state_dir, "/var/lib/coordd");
	/* The last reference frees; ASan and valgrind check that nothing leaks. */
	assert_null(config_unref(c));
	assert_null(config_unref(NULL));
	assert_null(config_ref(NULL));
}

static void
test_error_leaves_ret_config_alone(void **state)
{
	(void) state;
	struct config *c = (struct config *) 0x1;
	struct config_error e = {.line = 99};

	assert_int_equal(config_parse_string("[nope]\n", NULL, &c, &e), -EINVAL);
	assert_ptr_equal(c, (struct config *) 0x1);
	assert_int_equal(e.line, 1);
	/* ret_error may be NULL. */
	assert_int_equal(config_parse_string("[nope]\n", NULL, &c, NULL), -EINVAL);
	assert_ptr_equal(c, (struct config *) 0x1);
}

static void
test_string_name_defaults(void **state)
{
	(void) state;
	struct config *c = NULL;

	assert_int_equal(config_parse_string(BASE, NULL, &c, NULL), 0);
	assert_string_equal(c->path, "<string>");
	assert_null(config_unref(c));
}

static void
test_load_file(void **state)
{
	(void) state;
	struct tmp t;
	struct config *c = NULL;
	struct config_error e;
	const char text[] = BASE "[council.lb]\nname = L\ncountry = LB\n";

	tmp_init(&t);
	tmp_write(&t, text, sizeof(text) - 1);
	assert_int_equal(config_load(t.path, &c, &e), 0);
	assert_string_equal(c->path, t.path);
	assert_string_equal(c->state_dir, "/var/lib/coordd");
	assert_string_equal(config_find_council(c, "lb")->country, "LB");
	assert_null(config_unref(c));
	tmp_done(&t);
}

static void
test_load_missing_file_returns_enoent(void **state)
{
	(void) state;
	struct tmp t;
	struct config *c = NULL;
	struct config_error e = {.line = 7};

	tmp_init(&t);
	assert_int_equal(config_load(t.path, &c, &e), -ENOENT);
	assert_null(c);
	assert_int_equal(e.line, 0);
	assert_non_null(strstr(e.message, t.path));
	assert_int_equal(config_load(t.path, &c, NULL), -ENOENT);
	tmp_done(&t);
}

static void
test_load_directory_fails(void **state)
{
	(void) state;
	struct tmp t;
	struct config *c = NULL;
	struct config_error e;

	tmp_init(&t);
	assert_int_equal(config_load(t.dir, &c, &e), -EISDIR);
	assert_null(c);
	assert_int_equal(e.line, 0);
	tmp_done(&t);
}

static void
test_load_file_with_nul_byte_fails(void **state)
{
	(void) state;
	struct tmp t;
	struct config *c = NULL;
	struct config_error e;
	const char text[] = BASE "log_level = de\0bug\n";

	tmp_init(&t);
	tmp_write(&t, text, sizeof(text) - 1);
	assert_int_equal(config_load(t.path, &c, &e), -EINVAL);
	assert_null(c);
	assert_int_equal(e.line, 3);
	assert_non_null(strstr(e.message, "NUL"));
	tmp_done(&t);
}

/* BASE, then a line of `len` bytes (newline included, when `newline`), then a last line. */
static char *
text_with_line(size_t len, bool newline)
{
	char *text = malloc(len + 256);

	assert_non_null(text);
	size_t n = (size_t) snprintf(text, len + 256, "%s", BASE);
	const char *head = "# ";
	memcpy(text + n, head, 2);
	memset(text + n + 2, 'x', len - 2);
	n += len;
	if (newline) {
		text[n - 1] = '\n';
		(void) snprintf(text + n, 256, "log_level = debug\n");
	} else {
		text[n] = '\0';
	}
	return text;
}

static void
test_line_at_limit_is_accepted(void **state)
{
	(void) state;
	char *text = text_with_line(CONFIG_LINE_MAX - 1, true);
	struct config *c = parse_ok(text);
	free(text);
	assert_int_equal(c->log_level, LOG_LEVEL_DEBUG);
	assert_null(config_unref(c));

	/* The last line may lack its newline. */
	text = text_with_line(CONFIG_LINE_MAX - 1, false);
	c = parse_ok(text);
	free(text);
	assert_null(config_unref(c));
}

static void
test_overlong_line_names_its_line(void **state)
{
	(void) state;
	struct config *c = NULL;
	struct config_error e;

	for (size_t len = CONFIG_LINE_MAX; len < CONFIG_LINE_MAX + 3; len++) {
		char *text = text_with_line(len, true);
		assert_int_equal(config_parse_string(text, NULL, &c, &e), -EINVAL);
		free(text);
		assert_null(c);
		assert_int_equal(e.line, 3);
		assert_non_null(strstr(e.message, "line longer than"));
	}

	/* Far over inih's buffer, in a file; inih would have split it into three lines. */
	struct tmp t;
	char *text = text_with_line(3 * CONFIG_LINE_MAX, true);
	tmp_init(&t);
	tmp_write(&t, text, strlen(text));
	free(text);
	assert_int_equal(config_load(t.path, &c, &e), -EINVAL);
	assert_int_equal(e.line, 3);
	tmp_done(&t);
}

static void
test_shipped_config_loads(void **state)
{
	(void) state;
	const char *path = getenv("COORDD_CONF");
	struct config *c = NULL;
	struct config_error e = {.line = 0};

	if (!path) {
		skip();
	}
	int r = config_load(path, &c, &e);
	if (r < 0) {
		print_error("%s:%u: %s\n", path, e.line, e.message);
	}
	assert_int_equal(r, 0);
	assert_string_equal(c->state_dir, "./state");
	assert_int_equal(c->n_councils, 11);
	/* The shipped file states the defaults. */
	assert_string_equal(c->publish.endpoint, "tcp://127.0.0.1:7702");
	assert_string_equal(c->query.endpoint, "tcp://127.0.0.1:7703");
	assert_int_equal(c->publish.hwm, 1000);
	assert_int_equal(c->query.history_limit, 1000);
	assert_int_equal(c->query.history_limit_max, 10000);
	assert_int_equal(c->query.history_bytes_max, 4 << 20);
	assert_int_equal(c->query.hwm, 32);
	assert_int_equal(c->digest.publish_interval_ms, 1000);
	assert_int_equal(c->digest.headlines, 5);
	assert_int_equal(c->ingest.max_inflight_per_council, 1024);
	assert_int_equal(c->ingest.rate_limit, 100000);
	assert_int_equal(c->ingest.rate_burst, 200000);
	assert_int_equal(c->publish.max_subscription_bytes, 1024);
	assert_int_equal(c->publish.fanout_budget, CONFIG_FANOUT_BUDGET_DEFAULT);
	assert_int_equal(c->query.max_request_bytes, 64 * 1024);
	assert_null(config_unref(c));
}

/* An invalid config: config_parse_string() must fail with r at line, saying message. */
struct error_case {
	const char *text;
	int r;
	unsigned line;
	const char *message; /* a substring of the expected message */
};

static void
run_error_case(void **state)
{
	const struct error_case *ec = *state;
	struct config *c = NULL;
	struct config_error e = {.line = 12345};

	int r = config_parse_string(ec->text, NULL, &c, &e);
	if (r != ec->r || e.line != ec->line || !strstr(e.message, ec->message)) {
		print_error("got r=%d line=%u '%s'\n", r, e.line, e.message);
		print_error("want r=%d line=%u '%s'\n", ec->r, ec->line, ec->message);
		fail();
	}
	assert_null(c);
}

#define ERROR_CASE(name, ...) static struct error_case name##_case = {__VA_ARGS__}
#define error_test(name)                                                                           \
	{                                                                                          \
#name, run_error_case, NULL, NULL, &name##_case                                    \
	}

ERROR_CASE(test_metrics_listen_needs_numeric_address, BASE "[metrics]\nlisten = localhost:9771\n",
           -EINVAL, 4, "bad listen 'localhost:9771' in [metrics]");
ERROR_CASE(test_empty_text_is_missing_coordd, "", -EINVAL, 0, "missing section [coordd]");
ERROR_CASE(test_missing_coordd_section, "[store]\nsync = full\n", -EINVAL, 0,
           "missing section [coordd]");
ERROR_CASE(test_missing_state_dir_names_section_line, "\n[ingest]\nhwm = 100\n\n[coordd]\n",
           -EINVAL, 5, "missing key 'state_dir' in [coordd]");
ERROR_CASE(test_unknown_section, BASE "[ingest]\nhwm = 100\n[storage]\n", -EINVAL, 5,
           "unknown section [storage]");
ERROR_CASE(test_empty_section_name, BASE "[]\n", -EINVAL, 3, "unknown section []");
ERROR_CASE(test_section_name_with_spaces, BASE "[ ingest ]\n", -EINVAL, 3,
           "unknown section [ ingest ]");
ERROR_CASE(test_unknown_key, BASE "[ingest]\nmax_batchs = 10\n", -EINVAL, 4,
           "unknown key 'max_batchs' in [ingest]");
ERROR_CASE(test_key_in_wrong_section, BASE "[store]\nhwm = 1000\n", -EINVAL, 4,
           "unknown key 'hwm' in [store]");
ERROR_CASE(test_key_outside_section, "state_dir = /x\n" BASE, -EINVAL, 1,
           "key 'state_dir' is outside a section");
ERROR_CASE(test_duplicate_key, BASE "log_level = info\nstate_dir = /y\n", -EINVAL, 4,
           "duplicate key 'state_dir' in [coordd] (first at line 2)");
ERROR_CASE(test_indented_key_is_not_continuation, BASE "[ingest]\nhwm = 100\n  hwm = 200\n",
           -EINVAL, 5, "duplicate key 'hwm' in [ingest] (first at line 4)");
ERROR_CASE(test_duplicate_section, BASE "[ingest]\n[store]\n[ingest]\n", -EINVAL, 5,
           "duplicate section [ingest] (first at line 3)");
ERROR_CASE(test_duplicate_council_section,
           BASE "[council.fr]\nname = F\ncountry = FR\n[council.fr]\n", -EINVAL, 6,
           "duplicate section [council.fr] (first at line 3)");
ERROR_CASE(test_duplicate_empty_council_section, BASE "[council.fr]\n[council.fr]\n", -EINVAL, 4,
           "duplicate section [council.fr]");
ERROR_CASE(test_council_id_upper_case, BASE "[council.FR]\n", -EINVAL, 3, "bad council id 'FR'");
ERROR_CASE(test_council_id_empty, BASE "[council.]\n", -EINVAL, 3, "bad council id ''");
ERROR_CASE(test_council_id_leading_dash, BASE "[council.-fr]\n", -EINVAL, 3,
           "bad council id '-fr'");
ERROR_CASE(test_council_id_leading_underscore, BASE "[council._fr]\n", -EINVAL, 3,
           "bad council id");
ERROR_CASE(test_council_id_with_dot, BASE "[council.f.r]\n", -EINVAL, 3, "bad council id");
ERROR_CASE(test_council_id_too_long, BASE "[council.abcdefghijabcdefghijabcdefghijabc]\n", -EINVAL,
           3, "bad council id");
ERROR_CASE(test_council_missing_name_names_section_line,
           BASE "[council.fr]\ncountry = FR\n[council.us]\nname = U\ncountry = US\n", -EINVAL, 3,
           "missing key 'name' in [council.fr]");
ERROR_CASE(test_council_missing_country_names_section_line,
           BASE "[council.us]\nname = U\ncountry = US\n[council.fr]\nname = F\n", -EINVAL, 6,
           "missing key 'country' in [council.fr]");
ERROR_CASE(test_empty_council_section, BASE "[council.fr]\n", -EINVAL, 3,
           "missing key 'name' in [council.fr]");
ERROR_CASE(test_council_unknown_key, BASE "[council.fr]\ncity = Paris\n", -EINVAL, 4,
           "unknown key 'city' in [council.fr]");
ERROR_CASE(test_council_duplicate_key, BASE "[council.fr]\nname = F\nname = G\n", -EINVAL, 5,
           "duplicate key 'name' in [council.fr] (first at line 4)");
ERROR_CASE(test_council_empty_name, BASE "[council.fr]\nname =\n", -EINVAL, 4,
           "empty value for 'name' in [council.fr]");
ERROR_CASE(test_council_name_bad_utf8, BASE "[council.fr]\nname = Arm\xE9nie\n", -EINVAL, 4,
           "bad name in [council.fr]");
ERROR_CASE(test_council_name_control_char, BASE "[council.fr]\nname = a\x01z\n", -EINVAL, 4,
           "bad name in [council.fr]");
ERROR_CASE(test_council_name_overlong_utf8, BASE "[council.fr]\nname = \xC0\xAF\n", -EINVAL, 4,
           "bad name");
ERROR_CASE(test_council_name_surrogate, BASE "[council.fr]\nname = \xED\xA0\x80\n", -EINVAL, 4,
           "bad name");
ERROR_CASE(test_council_country_lower_case, BASE "[council.fr]\ncountry = fr\n", -EINVAL, 4,
           "bad country 'fr' in [council.fr]");
ERROR_CASE(test_council_country_unassigned, BASE "[council.fr]\ncountry = XX\n", -EINVAL, 4,
           "bad country 'XX'");
ERROR_CASE(test_council_country_alpha3, BASE "[council.fr]\ncountry = FRA\n", -EINVAL, 4,
           "bad country 'FRA'");
ERROR_CASE(test_empty_value, BASE "[ingest]\nendpoint =   ; nothing\n", -EINVAL, 4,
           "empty value for 'endpoint' in [ingest]");
ERROR_CASE(test_empty_value_after_hash_comment, BASE "[store]\nsync = # full\n", -EINVAL, 4,
           "empty value for 'sync' in [store]");
ERROR_CASE(test_empty_state_dir, "[coordd]\nstate_dir =\n", -EINVAL, 2,
           "empty value for 'state_dir' in [coordd]");
ERROR_CASE(test_bad_log_level, BASE "log_level = verbose\n", -EINVAL, 3,
           "bad log_level 'verbose' in [coordd]");
ERROR_CASE(test_bad_sync, BASE "[store]\nsync = fsync\n", -EINVAL, 4,
           "bad sync 'fsync' in [store]: use full or none");
ERROR_CASE(test_bad_endpoint, BASE "[ingest]\nendpoint = 127.0.0.1:7701\n", -EINVAL, 4,
           "bad endpoint '127.0.0.1:7701'");
ERROR_CASE(test_endpoint_with_space, BASE "[ingest]\nendpoint = tcp://a b:1\n", -EINVAL, 4,
           "bad endpoint");
ERROR_CASE(test_bad_number, BASE "[ingest]\nmax_batch = 10x\n", -EINVAL, 4,
           "bad number '10x' for max_batch in [ingest]: use 1 to 65536");
ERROR_CASE(test_negative_number, BASE "[ingest]\nhwm = -1\n", -EINVAL, 4,
           "bad number '-1' for hwm");
ERROR_CASE(test_number_with_suffix, BASE "[ingest]\nmax_batch = 1K\n", -EINVAL, 4,
           "bad number '1K'");
ERROR_CASE(test_number_overflow_is_out_of_range,
           BASE "[ingest]\nmax_pending = 99999999999999999999999\n", -EINVAL, 4,
           "max_pending = 99999999999999999999999 is out of range");
ERROR_CASE(test_bad_size, BASE "[store]\nmap_size = 64Q\n", -EINVAL, 4,
           "bad size '64Q' for map_size in [store]");
ERROR_CASE(test_max_batch_zero, BASE "[ingest]\nmax_batch = 0\n", -EINVAL, 4,
           "max_batch = 0 is out of range in [ingest]: use 1 to 65536");
ERROR_CASE(test_max_batch_too_big, BASE "[ingest]\nmax_batch = 65537\n", -EINVAL, 4,
           "max_batch = 65537 is out of range");
ERROR_CASE(test_max_pending_zero, BASE "[ingest]\nmax_pending = 0\n", -EINVAL, 4,
           "max_pending = 0 is out of range");
ERROR_CASE(test_max_pending_too_big, BASE "[ingest]\nmax_pending = 4294967296\n", -EINVAL, 4,
           "max_pending = 4294967296 is out of range");
ERROR_CASE(test_hwm_too_small, BASE "[ingest]\nhwm = 99\n", -EINVAL, 4,
           "hwm = 99 is out of range in [ingest]: use 100 to 1000000");
ERROR_CASE(test_hwm_too_big, BASE "[ingest]\nhwm = 1000001\n", -EINVAL, 4,
           "hwm = 1000001 is out of range");
ERROR_CASE(test_max_message_bytes_too_small, BASE "[ingest]\nmax_message_bytes = 1023\n", -EINVAL,
           4, "max_message_bytes = 1023 is out of range in [ingest]: use 1K to 1M");
ERROR_CASE(test_max_message_bytes_too_big, BASE "[ingest]\nmax_message_bytes = 1025K\n", -EINVAL, 4,
           "max_message_bytes = 1025K is out of range");
ERROR_CASE(test_max_message_bytes_overflow, BASE "[ingest]\nmax_message_bytes = 16777216T\n",
           -EINVAL, 4, "max_message_bytes = 16777216T is out of range");
ERROR_CASE(test_map_size_too_small, BASE "[store]\nmap_size = 1023K\n", -EINVAL, 4,
           "map_size = 1023K is out of range in [store]: use at least 1M");
ERROR_CASE(test_map_size_max_too_small, BASE "[store]\nmap_size_max = 0\n", -EINVAL, 4,
           "map_size_max = 0 is out of range");
ERROR_CASE(test_map_size_max_below_map_size,
           BASE "[store]\nmap_size_max = 1G\nmap_size = 2G\nsync = full\n", -EINVAL, 5,
           "map_size_max (1G) is below map_size (2G) in [store]");
ERROR_CASE(test_map_size_above_default_max, BASE "[store]\nmap_size = 32G\n", -EINVAL, 4,
           "map_size_max (16G) is below map_size (32G)");
ERROR_CASE(test_max_pending_below_max_batch, BASE "[ingest]\nmax_batch = 16\nmax_pending = 10\n",
           -EINVAL, 5, "max_pending (10) is below max_batch (16) in [ingest]: raise max_pending");
ERROR_CASE(test_max_pending_below_max_batch_names_later_line,
           BASE "[ingest]\nmax_pending = 10\n\nmax_batch = 11\n", -EINVAL, 6,
           "max_pending (10) is below max_batch (11) in [ingest]");
ERROR_CASE(test_max_batch_above_default_pending, BASE "[ingest]\nmax_batch = 8193\n", -EINVAL, 4,
           "max_pending (8192) is below max_batch (8193)");
ERROR_CASE(test_unknown_section_lists_the_sections, BASE "[fanout]\n", -EINVAL, 3,
           "use [coordd], [ingest], [publish], [query], [digest], [store], [metrics], "
           "[security] or [council.<id>]");
ERROR_CASE(test_publish_hwm_too_small, BASE "[publish]\nhwm = 99\n", -EINVAL, 4,
           "hwm = 99 is out of range in [publish]: use 100 to 1000000");
ERROR_CASE(test_publish_bad_endpoint, BASE "[publish]\nendpoint = 7702\n", -EINVAL, 4,
           "bad endpoint '7702' in [publish]");
ERROR_CASE(test_history_limit_zero, BASE "[query]\nhistory_limit = 0\n", -EINVAL, 4,
           "history_limit = 0 is out of range in [query]: use 1 to 100000");
ERROR_CASE(test_history_limit_max_too_big, BASE "[query]\nhistory_limit_max = 100001\n", -EINVAL, 4,
           "history_limit_max = 100001 is out of range in [query]");
ERROR_CASE(test_history_limit_max_below_limit,
           BASE "[query]\nhistory_limit_max = 50\n\nhistory_limit = 60\n", -EINVAL, 6,
           "history_limit_max (50) is below history_limit (60) in [query]");
ERROR_CASE(test_history_limit_above_default_max, BASE "[query]\nhistory_limit = 10001\n", -EINVAL,
           4, "history_limit_max (10000) is below history_limit (10001)");
ERROR_CASE(test_history_bytes_max_too_small, BASE "[query]\nhistory_bytes_max = 63K\n", -EINVAL, 4,
           "history_bytes_max = 63K is out of range in [query]: use 64K to 64M");
ERROR_CASE(test_query_hwm_zero, BASE "[query]\nhwm = 0\n", -EINVAL, 4,
           "hwm = 0 is out of range in [query]");
ERROR_CASE(test_publish_interval_too_short, BASE "[digest]\npublish_interval_ms = 9\n", -EINVAL, 4,
           "publish_interval_ms = 9 is out of range in [digest]: use 10 to 3600000");
ERROR_CASE(test_headlines_zero, BASE "[digest]\nheadlines = 0\n", -EINVAL, 4,
           "headlines = 0 is out of range in [digest]: use 1 to 50");
ERROR_CASE(test_headlines_too_many, BASE "[digest]\nheadlines = 51\n", -EINVAL, 4,
           "headlines = 51 is out of range in [digest]");
ERROR_CASE(test_digest_unknown_key, BASE "[digest]\ninterval = 5\n", -EINVAL, 4,
           "unknown key 'interval' in [digest]");
ERROR_CASE(test_publish_endpoint_equals_ingest_default,
           BASE "[publish]\nendpoint = tcp://127.0.0.1:7701\n", -EINVAL, 4,
           "[ingest] and [publish] both use endpoint 'tcp://127.0.0.1:7701'");
ERROR_CASE(test_query_endpoint_equals_publish_names_later_line,
           BASE "[query]\nendpoint = ipc:///x\n[publish]\nendpoint = ipc:///x\n", -EINVAL, 6,
           "[publish] and [query] both use endpoint 'ipc:///x'");
ERROR_CASE(test_missing_close_bracket, BASE "[ingest\n", -EINVAL, 3, "missing ']'");

#define SECURITY "[security]\nsecret_key_file = /k/server.secret\nkeys_file = /k/keys.ini\n"
ERROR_CASE(test_plain_wildcard_endpoint_is_refused, BASE "[ingest]\nendpoint = tcp://*:7701\n",
           -EINVAL, 4,
           "[ingest] endpoint 'tcp://*:7701' is not loopback or ipc:// and the socket is "
           "plain (unauthenticated): configure [security] secret_key_file and keys_file "
           "(security = curve), or bind 127.0.0.1, [::1], localhost or ipc://");
ERROR_CASE(test_plain_any_address_is_refused, BASE "[publish]\nendpoint = tcp://0.0.0.0:7702\n",
           -EINVAL, 4, "[publish] endpoint 'tcp://0.0.0.0:7702' is not loopback");
ERROR_CASE(test_plain_interface_name_is_refused, BASE "[query]\nendpoint = tcp://lo:7703\n",
           -EINVAL, 4, "[query] endpoint 'tcp://lo:7703' is not loopback");
ERROR_CASE(test_explicit_plain_public_endpoint_is_refused_with_keys,
           BASE SECURITY "[ingest]\nendpoint = tcp://192.0.2.1:7701\nsecurity = plain\n", -EINVAL,
           8, "[ingest] endpoint 'tcp://192.0.2.1:7701' is not loopback");
ERROR_CASE(test_curve_without_security_section, BASE "[ingest]\nsecurity = curve\n", -EINVAL, 4,
           "security = curve in [ingest] needs the server's keys: add [security]");
ERROR_CASE(test_security_needs_both_files, BASE "[security]\nkeys_file = /k/keys.ini\n", -EINVAL, 3,
           "missing key 'secret_key_file' in [security]: set both");
ERROR_CASE(test_security_needs_keys_file, BASE "[security]\nsecret_key_file = /k/s\n", -EINVAL, 3,
           "missing key 'keys_file' in [security]");
ERROR_CASE(test_bad_security_value, BASE "[publish]\nsecurity = tls\n", -EINVAL, 4,
           "bad security 'tls' in [publish]: use curve or plain");
ERROR_CASE(test_max_connections_zero, BASE "[ingest]\nmax_connections = 0\n", -EINVAL, 4,
           "max_connections = 0 is out of range in [ingest]: use 1 to 1000000");
ERROR_CASE(test_max_connections_too_big, BASE "[query]\nmax_connections = 1000001\n", -EINVAL, 4,
           "max_connections = 1000001 is out of range in [query]");
ERROR_CASE(test_security_unknown_key, BASE "[security]\nserver_key = x\n", -EINVAL, 4,
           "unknown key 'server_key' in [security]");

static void
test_security_defaults(void **state)
{
	(void) state;
	struct config *c = parse_ok(BASE);

	assert_int_equal(c->ingest.security, CONFIG_SECURITY_PLAIN);
	assert_int_equal(c->publish.security, CONFIG_SECURITY_PLAIN);
	assert_int_equal(c->query.security, CONFIG_SECURITY_PLAIN);
	assert_int_equal(c->ingest.max_connections, 2048);
	assert_int_equal(c->publish.max_connections, 1024);
	assert_int_equal(c->query.max_connections, 256);
	assert_int_equal(c->query.subscriber_history_window, 100000);
	assert_null(c->security.secret_key_file);
	assert_null(c->security.keys_file);
	assert_null(config_unref(c));

	/* With keys, every socket defaults to curve and may bind any address. */
	c = parse_ok(BASE SECURITY "[ingest]\nendpoint = tcp://*:7701\n"
	                           "[publish]\nendpoint = tcp://0.0.0.0:7702\nsecurity = curve\n"
	                           "[query]\nsecurity = plain\nmax_connections = 3\n");
	assert_int_equal(c->ingest.security, CONFIG_SECURITY_CURVE);
	assert_int_equal(c->publish.security, CONFIG_SECURITY_CURVE);
	assert_int_equal(c->query.security, CONFIG_SECURITY_PLAIN);
	assert_int_equal(c->query.max_connections, 3);
	assert_string_equal(c->security.secret_key_file, "/k/server.secret");
	assert_string_equal(c->security.keys_file, "/k/keys.ini");
	assert_string_equal(config_security_to_string(c->ingest.security), "curve");
	assert_string_equal(config_security_to_string(c->query.security), "plain");
	assert_null(config_security_to_string(_CONFIG_SECURITY_MAX));
	assert_null(config_unref(c));
}

static void
test_local_endpoints(void **state)
{
	(void) state;
	static const char *const local[] = {
	        "ipc:///run/coordd/ingest", "inproc://x",       "tcp://127.0.0.1:7701",
	        "tcp://127.255.0.9:1",      "tcp://[::1]:7701", "tcp://localhost:7701",
	};
	static const char *const remote[] = {
	        "tcp://*:7701",
	        "tcp://0.0.0.0:7701",
	        "tcp://192.0.2.1:7701",
	        "tcp://[::]:7701",
	        "tcp://eth0:7701",
	        "tcp://lo:7701",
	        "tcp://127.1:7701",
	        "tcp://128.0.0.1:1",
	        "tcp://:7701",
	        "tcp://127.0.0.1",
	        "pgm://127.0.0.1:1",
	        "ws://127.0.0.1:1",
	        "tcp://localhost.example.com:1",
	        "ipc:/x",
	};
	for (size_t i = 0; i < sizeof(local) / sizeof(local[0]); i++) {
		if (!config_endpoint_is_local(local[i])) {
			fail_msg("%s should be local", local[i]);
		}
	}
	for (size_t i = 0; i < sizeof(remote) / sizeof(remote[0]); i++) {
		if (config_endpoint_is_local(remote[i])) {
			fail_msg("%s should not be local", remote[i]);
		}
	}
	assert_false(config_endpoint_is_local(NULL));
}

struct restart_seen {
	char keys[16][48];
	size_t n;
};

static void
note_restart(void *data, const char *section, const char *key)
{
	struct restart_seen *seen = data;

	assert_true(seen->n < 16);
	(void) snprintf(seen->keys[seen->n++], sizeof(seen->keys[0]), "%s.%s", section, key);
}

static void
test_reload_keeps_restart_keys(void **state)
{
	(void) state;
	struct config *old = parse_ok(BASE SECURITY "[ingest]\nendpoint = tcp://*:1\n"
	                                            "max_batch = 10\nmax_pending = 100\n"
	                                            "[digest]\nheadlines = 3\n");
	struct config *fresh = parse_ok("[coordd]\nstate_dir = /elsewhere\nlog_level = debug\n"
	                                "[security]\nsecret_key_file = /k/other.secret\n"
	                                "keys_file = /k/new-keys.ini\n"
	                                "[ingest]\nendpoint = tcp://*:2\nmax_batch = 20\n"
	                                "max_pending = 100\nmax_connections = 5\n"
	                                "[digest]\nheadlines = 7\n"
	                                "[council.fr]\nname = France\ncountry = FR\n");
	struct restart_seen seen = {.n = 0};

	assert_int_equal(config_keep_restart_keys(fresh, old, note_restart, &seen), 4);
	assert_int_equal(seen.n, 4);
	assert_string_equal(seen.keys[0], "coordd.state_dir");
	assert_string_equal(seen.keys[1], "ingest.endpoint");
	assert_string_equal(seen.keys[2], "ingest.max_batch");
	assert_string_equal(seen.keys[3], "security.secret_key_file");
	/* Kept from the running config. */
	assert_string_equal(fresh->state_dir, "/var/lib/coordd");
	assert_string_equal(fresh->ingest.endpoint, "tcp://*:1");
	assert_int_equal(fresh->ingest.max_batch, 10);
	assert_string_equal(fresh->security.secret_key_file, "/k/server.secret");
	/* Taken from the new file. */
	assert_int_equal(fresh->log_level, LOG_LEVEL_DEBUG);
	assert_string_equal(fresh->security.keys_file, "/k/new-keys.ini");
	assert_int_equal(fresh->ingest.max_connections, 5);
	assert_int_equal(fresh->digest.headlines, 7);
	assert_non_null(config_find_council(fresh, "fr"));
	/* Nothing left to differ. */
	assert_int_equal(config_keep_restart_keys(fresh, old, NULL, NULL), 0);
	assert_null(config_unref(fresh));
	assert_null(config_unref(old));
}
ERROR_CASE(test_text_after_section, BASE "[ingest] hwm = 100\n", -EINVAL, 3,
           "unexpected text after ']'");
ERROR_CASE(test_line_without_equals, BASE "[ingest]\nhwm 100\n", -EINVAL, 4,
           "expected 'key = value' or '[section]'");
ERROR_CASE(test_first_error_wins, BASE "bogus\nalso_bogus = 1\n", -EINVAL, 3,
           "expected 'key = value'");

static void
test_metrics_listen_default_and_off(void **state)
{
	struct config *c = parse_ok(BASE);

	assert_string_equal(c->metrics.listen, "127.0.0.1:9771");
	config_unref(c);
	c = parse_ok(BASE "[metrics]\nlisten = off\n");
	assert_null(c->metrics.listen);
	config_unref(c);
	c = parse_ok(BASE "[metrics]\nlisten = [::1]:9000\n");
	assert_string_equal(c->metrics.listen, "[::1]:9000");
	config_unref(c);
}

static void
test_parse_listen_addresses(void **state)
{
	char host[64];
	uint16_t port = 0;

	assert_int_equal(config_parse_listen("127.0.0.1:9771", host, &port), 0);
	assert_string_equal(host, "127.0.0.1");
	assert_int_equal(port, 9771);
	assert_int_equal(config_parse_listen("[::1]:80", host, &port), 0);
	assert_string_equal(host, "::1");
	assert_int_equal(port, 80);
	assert_int_equal(config_parse_listen("127.0.0.1", host, &port), -EINVAL);
	assert_int_equal(config_parse_listen("127.0.0.1:70000", host, &port), -EINVAL);
	assert_int_equal(config_parse_listen("127.0.0.1:", host, &port), -EINVAL);
	assert_int_equal(config_parse_listen("localhost:80", host, &port), -EINVAL);
	assert_int_equal(config_parse_listen("[::1]80", host, &port), -EINVAL);
	assert_int_equal(config_parse_listen(":80", host, &port), -EINVAL);
}

/* The limits against abuse: defaults, bounds, and rate_burst following rate_limit. */
static void
test_limit_keys_default(void **state)
{
	struct config *c = parse_ok(BASE);

	assert_int_equal(c->ingest.max_inflight_per_council, 1024);
	assert_int_equal(c->ingest.rate_limit, 100000);
	assert_int_equal(c->ingest.rate_burst, 200000);
	assert_int_equal(c->publish.max_subscription_bytes, 1024);
	assert_int_equal(c->query.max_request_bytes, 64 * 1024);
	config_unref(c);
}

static void
test_limit_keys_bounds_are_inclusive(void **state)
{
	struct config *c = parse_ok(BASE "[ingest]\n"
	                                 "max_inflight_per_council = 1\n"
	                                 "rate_limit = 0\n"
	                                 "rate_burst = 1\n"
	                                 "[publish]\n"
	                                 "max_subscription_bytes = 256\n"
	                                 "fanout_budget = 1K\n"
	                                 "[query]\n"
	                                 "max_request_bytes = 4K\n");

	assert_int_equal(c->ingest.max_inflight_per_council, 1);
	assert_int_equal(c->ingest.rate_limit, 0);
	assert_int_equal(c->ingest.rate_burst, 1);
	assert_int_equal(c->publish.max_subscription_bytes, 256);
	assert_int_equal(c->publish.fanout_budget, 1024);
	assert_int_equal(c->query.max_request_bytes, 4096);
	config_unref(c);

	c = parse_ok(BASE "[ingest]\n"
	                  "max_inflight_per_council = 1000000\n"
	                  "rate_limit = 10000000\n"
	                  "rate_burst = 20000000\n"
	                  "[publish]\n"
	                  "max_subscription_bytes = 64K\n"
	                  "[query]\n"
	                  "max_request_bytes = 1M\n");
	assert_int_equal(c->ingest.max_inflight_per_council, 1000000);
	assert_int_equal(c->ingest.rate_limit, 10000000);
	assert_int_equal(c->ingest.rate_burst, 20000000);
	assert_int_equal(c->publish.max_subscription_bytes, 64 * 1024);
	assert_int_equal(c->query.max_request_bytes, 1024 * 1024);
	config_unref(c);
}

static void
test_rate_burst_defaults_to_twice_rate_limit(void **state)
{
	struct config *c = parse_ok(BASE "[ingest]\nrate_limit = 7\n");

	assert_int_equal(c->ingest.rate_burst, 14);
	config_unref(c);
	/* Set before rate_limit in the file: still its own value. */
	c = parse_ok(BASE "[ingest]\nrate_burst = 3\nrate_limit = 7\n");
	assert_int_equal(c->ingest.rate_burst, 3);
	config_unref(c);
	c = parse_ok(BASE "[ingest]\nrate_limit = 10000000\n");
	assert_int_equal(c->ingest.rate_burst, 20000000);
	config_unref(c);
	c = parse_ok(BASE "[ingest]\nrate_limit = 0\n");
	assert_int_equal(c->ingest.rate_limit, 0);
	assert_int_equal(c->ingest.rate_burst, 0);
	config_unref(c);
}

ERROR_CASE(test_max_inflight_zero, BASE "[ingest]\nmax_inflight_per_council = 0\n", -EINVAL, 4,
           "max_inflight_per_council = 0 is out of range in [ingest]: use 1 to 1000000");
ERROR_CASE(test_max_inflight_too_big, BASE "[ingest]\nmax_inflight_per_council = 1000001\n",
           -EINVAL, 4, "max_inflight_per_council = 1000001 is out of range");
ERROR_CASE(test_rate_limit_too_big, BASE "[ingest]\nrate_limit = 10000001\n", -EINVAL, 4,
           "rate_limit = 10000001 is out of range in [ingest]: use 0 to 10000000");
ERROR_CASE(test_rate_limit_negative, BASE "[ingest]\nrate_limit = -1\n", -EINVAL, 4,
           "bad number '-1' for rate_limit");
ERROR_CASE(test_rate_burst_zero, BASE "[ingest]\nrate_burst = 0\n", -EINVAL, 4,
           "rate_burst = 0 is out of range in [ingest]: use 1 to 20000000");
ERROR_CASE(test_max_subscription_bytes_too_small, BASE "[publish]\nmax_subscription_bytes = 255\n",
           -EINVAL, 4, "max_subscription_bytes = 255 is out of range in [publish]: use 256 to 64K");
ERROR_CASE(test_fanout_budget_too_small, BASE "[publish]\nfanout_budget = 1023\n", -EINVAL, 4,
           "fanout_budget = 1023 is out of range in [publish]: use 1K to 1T");
ERROR_CASE(test_max_request_bytes_too_small, BASE "[query]\nmax_request_bytes = 4095\n", -EINVAL, 4,
           "max_request_bytes = 4095 is out of range in [query]: use 4K to 1M");
ERROR_CASE(test_max_request_bytes_too_big, BASE "[query]\nmax_request_bytes = 2M\n", -EINVAL, 4,
           "max_request_bytes = 2M is out of range");

static const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_minimal_config_uses_defaults),
        cmocka_unit_test(test_security_defaults),
        cmocka_unit_test(test_local_endpoints),
        cmocka_unit_test(test_reload_keeps_restart_keys),
        cmocka_unit_test(test_every_key_is_set),
        cmocka_unit_test(test_log_levels_map_to_enum),
        cmocka_unit_test(test_range_limits_are_inclusive),
        cmocka_unit_test(test_size_suffixes),
        cmocka_unit_test(test_comments_and_whitespace),
        cmocka_unit_test(test_last_line_without_newline),
        cmocka_unit_test(test_utf8_council_name),
        cmocka_unit_test(test_councils_sorted_and_found),
        cmocka_unit_test(test_many_councils),
        cmocka_unit_test(test_ref_unref),
        cmocka_unit_test(test_error_leaves_ret_config_alone),
        cmocka_unit_test(test_string_name_defaults),
        cmocka_unit_test(test_load_file),
        cmocka_unit_test(test_load_missing_file_returns_enoent),
        cmocka_unit_test(test_load_directory_fails),
        cmocka_unit_test(test_load_file_with_nul_byte_fails),
        cmocka_unit_test(test_line_at_limit_is_accepted),
        cmocka_unit_test(test_overlong_line_names_its_line),
        cmocka_unit_test(test_shipped_config_loads),
        cmocka_unit_test(test_parse_listen_addresses),
        cmocka_unit_test(test_metrics_listen_default_and_off),
        cmocka_unit_test(test_limit_keys_default),
        cmocka_unit_test(test_limit_keys_bounds_are_inclusive),
        cmocka_unit_test(test_rate_burst_defaults_to_twice_rate_limit),
        error_test(test_max_inflight_zero),
        error_test(test_max_inflight_too_big),
        error_test(test_rate_limit_too_big),
        error_test(test_rate_limit_negative),
        error_test(test_rate_burst_zero),
        error_test(test_max_subscription_bytes_too_small),
        error_test(test_fanout_budget_too_small),
        error_test(test_max_request_bytes_too_small),
        error_test(test_max_request_bytes_too_big),
        error_test(test_metrics_listen_needs_numeric_address),
        error_test(test_empty_text_is_missing_coordd),
        error_test(test_missing_coordd_section),
        error_test(test_missing_state_dir_names_section_line),
        error_test(test_unknown_section),
        error_test(test_empty_section_name),
        error_test(test_section_name_with_spaces),
        error_test(test_unknown_key),
        error_test(test_key_in_wrong_section),
        error_test(test_key_outside_section),
        error_test(test_duplicate_key),
        error_test(test_indented_key_is_not_continuation),
        error_test(test_duplicate_section),
        error_test(test_duplicate_council_section),
        error_test(test_duplicate_empty_council_section),
        error_test(test_council_id_upper_case),
        error_test(test_council_id_empty),
        error_test(test_council_id_leading_dash),
        error_test(test_council_id_leading_underscore),
        error_test(test_council_id_with_dot),
        error_test(test_council_id_too_long),
        error_test(test_council_missing_name_names_section_line),
        error_test(test_council_missing_country_names_section_line),
        error_test(test_empty_council_section),
        error_test(test_council_unknown_key),
        error_test(test_council_duplicate_key),
        error_test(test_council_empty_name),
        error_test(test_council_name_bad_utf8),
        error_test(test_council_name_control_char),
        error_test(test_council_name_overlong_utf8),
        error_test(test_council_name_surrogate),
        error_test(test_council_country_lower_case),
        error_test(test_council_country_unassigned),
        error_test(test_council_country_alpha3),
        error_test(test_empty_value),
        error_test(test_empty_value_after_hash_comment),
        error_test(test_empty_state_dir),
        error_test(test_bad_log_level),
        error_test(test_bad_sync),
        error_test(test_bad_endpoint),
        error_test(test_endpoint_with_space),
        error_test(test_bad_number),
        error_test(test_negative_number),
        error_test(test_number_with_suffix),
        error_test(test_number_overflow_is_out_of_range),
        error_test(test_bad_size),
        error_test(test_max_batch_zero),
        error_test(test_max_batch_too_big),
        error_test(test_max_pending_zero),
        error_test(test_max_pending_too_big),
        error_test(test_hwm_too_small),
        error_test(test_hwm_too_big),
        error_test(test_max_message_bytes_too_small),
        error_test(test_max_message_bytes_too_big),
        error_test(test_max_message_bytes_overflow),
        error_test(test_map_size_too_small),
        error_test(test_map_size_max_too_small),
        error_test(test_map_size_max_below_map_size),
        error_test(test_map_size_above_default_max),
        error_test(test_max_pending_below_max_batch),
        error_test(test_max_pending_below_max_batch_names_later_line),
        error_test(test_max_batch_above_default_pending),
        error_test(test_unknown_section_lists_the_sections),
        error_test(test_publish_hwm_too_small),
        error_test(test_publish_bad_endpoint),
        error_test(test_history_limit_zero),
        error_test(test_history_limit_max_too_big),
        error_test(test_history_limit_max_below_limit),
        error_test(test_history_limit_above_default_max),
        error_test(test_history_bytes_max_too_small),
        error_test(test_query_hwm_zero),
        error_test(test_publish_interval_too_short),
        error_test(test_headlines_zero),
        error_test(test_headlines_too_many),
        error_test(test_digest_unknown_key),
        error_test(test_publish_endpoint_equals_ingest_default),
        error_test(test_query_endpoint_equals_publish_names_later_line),
        error_test(test_missing_close_bracket),
        error_test(test_text_after_section),
        error_test(test_line_without_equals),
        error_test(test_first_error_wins),
        error_test(test_plain_wildcard_endpoint_is_refused),
        error_test(test_plain_any_address_is_refused),
        error_test(test_plain_interface_name_is_refused),
        error_test(test_explicit_plain_public_endpoint_is_refused_with_keys),
        error_test(test_curve_without_security_section),
        error_test(test_security_needs_both_files),
        error_test(test_security_needs_keys_file),
        error_test(test_bad_security_value),
        error_test(test_max_connections_zero),
        error_test(test_max_connections_too_big),
        error_test(test_security_unknown_key),
};

int
main(void)
{
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * Unit tests for daemon/auth.c: roles and User-Ids, key files (keygen, modes, O_EXCL,
 * permission refusal, every reader error), the keys file (lookup, sorting, every error with
 * the line it must name) and the ZAP handler end to end.
 *
 * ZAP tests run a real libuv loop and a real zmq context: ROUTER servers with CURVE bound
 * on ipc:// in a mkdtemp() directory (inproc:// has no security handshake) and DEALER
 * clients with CURVE keys. The loop is stepped with uv_run(UV_RUN_NOWAIT) between short
 * zmq_poll() waits, in loops bounded by a deadline; nothing sleeps. The decision table and
 * malformed requests are also checked by talking to inproc://zeromq.zap.01 directly.
 * Timeouts are 10 times longer when COORD_UNDER_VALGRIND is set.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>
#include <zmq.h>

#include "auth.h"

/* ZMQ_METADATA: compiled into libzmq 4.3, but its macro is draft-only in zmq.h. */
#ifndef ZMQ_METADATA
#define ZMQ_METADATA 95
#endif

/* Valid Z85 keys for parser tests (each 5-character group is below 2^32). */
#define KEY_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define KEY_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define KEY_C "cccccccccccccccccccccccccccccccccccccccc"
/* Z85 characters that are INI syntax elsewhere: ':' '=' '#' '[' ']'. */
#define KEY_ODD "0:=#00[]:=0:=#00[]:=0:=#00[]:=0:=#00[]:="

/* ---- Helpers ---- */

static int
timeout_ms(int ms)
{
	return getenv("COORD_UNDER_VALGRIND") ? ms * 10 : ms;
}

static int64_t
now_ms(void)
{
	struct timespec ts;

	(void) clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A flat directory of files for one test; removed with everything in it by tmp_done(). */
struct tmp {
	char dir[PATH_MAX / 2];
};

static void
tmp_init(struct tmp *t)
{
	const char *base = getenv("TMPDIR");

	(void) snprintf(t->dir, sizeof(t->dir), "%s/test_auth.XXXXXX", base ? base : "/tmp");
	assert_non_null(mkdtemp(t->dir));
}

static void
tmp_path(const struct tmp *t, const char *name, char *buf, size_t size)
{
	assert_true((size_t) snprintf(buf, size, "%s/%s", t->dir, name) < size);
}

static void
tmp_write(const struct tmp *t, const char *name, mode_t mode, const char *data, size_t len)
{
	char path[PATH_MAX];

	tmp_path(t, name, path, sizeof(path));
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t) len);
	assert_int_equal(fchmod(fd, mode), 0);
	assert_int_equal(close(fd), 0);
}

static void
tmp_done(struct tmp *t)
{
	DIR *d = opendir(t->dir);
	struct dirent *de;
	char path[PATH_MAX];

	assert_non_null(d);
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) {
			continue;
		}
		tmp_path(t, de->d_name, path, sizeof(path));
		if (unlink(path) < 0) {
			assert_int_equal(rmdir(path), 0);
		}
	}
	(void) closedir(d);
	assert_int_equal(rmdir(t->dir), 0);
}

static struct auth_keys *
keys_ok(const char *text)
{
	struct auth_keys *keys = NULL;
	struct auth_error e = {.line = 0};

	int r = auth_keys_parse_string(text, "test", &keys, &e);
	if (r < 0) {
		print_error("unexpected error at line %u: %s\n", e.line, e.message);
	}
	assert_int_equal(r, 0);
	assert_non_null(keys);
	return keys;
}

/* ---- Roles, ids, User-Ids ---- */

static void
test_role_names_round_trip(void **state)
{
	(void) state;
	for (int i = 0; i < _AUTH_ROLE_MAX; i++) {
		const char *name = auth_role_to_string((enum auth_role) i);
		assert_non_null(name);
		assert_int_equal(auth_role_from_string(name), i);
	}
	assert_string_equal(auth_role_to_string(AUTH_ROLE_COUNCIL), "council");
	assert_string_equal(auth_role_to_string(AUTH_ROLE_SUBSCRIBER), "subscriber");
	assert_string_equal(auth_role_to_string(AUTH_ROLE_ADMIN), "admin");
	assert_null(auth_role_to_string(_AUTH_ROLE_MAX));
	assert_null(auth_role_to_string(_AUTH_ROLE_INVALID));
	assert_int_equal(auth_role_from_string("Admin"), _AUTH_ROLE_INVALID);
	assert_int_equal(auth_role_from_string(""), _AUTH_ROLE_INVALID);
	assert_int_equal(auth_role_from_string(NULL), _AUTH_ROLE_INVALID);
}

static void
test_admin_may_do_what_a_subscriber_may(void **state)
{
	(void) state;
	assert_true(auth_role_allows(AUTH_ROLE_COUNCIL, AUTH_ROLE_COUNCIL));
	assert_true(auth_role_allows(AUTH_ROLE_SUBSCRIBER, AUTH_ROLE_SUBSCRIBER));
	assert_true(auth_role_allows(AUTH_ROLE_ADMIN, AUTH_ROLE_ADMIN));
	assert_true(auth_role_allows(AUTH_ROLE_ADMIN, AUTH_ROLE_SUBSCRIBER));
	assert_false(auth_role_allows(AUTH_ROLE_SUBSCRIBER, AUTH_ROLE_ADMIN));
	assert_false(auth_role_allows(AUTH_ROLE_ADMIN, AUTH_ROLE_COUNCIL));
	assert_false(auth_role_allows(AUTH_ROLE_COUNCIL, AUTH_ROLE_SUBSCRIBER));
	assert_false(auth_role_allows(_AUTH_ROLE_INVALID, AUTH_ROLE_COUNCIL));
	assert_false(auth_role_allows(AUTH_ROLE_ADMIN, _AUTH_ROLE_MAX));
}

static void
test_id_rules(void **state)
{
	(void) state;
	assert_true(auth_id_valid("fr"));
	assert_true(auth_id_valid("0"));
	assert_true(auth_id_valid("desk_1-b"));
	assert_true(auth_id_valid("abcdefghijklmnopqrstuvwxyz012345")); /* 32 */
	assert_false(auth_id_valid("abcdefghijklmnopqrstuvwxyz0123456"));
	assert_false(auth_id_valid(""));
	assert_false(auth_id_valid("Fr"));
	assert_false(auth_id_valid("_fr"));
	assert_false(auth_id_valid("-fr"));
	assert_false(auth_id_valid("f r"));
	assert_false(auth_id_valid("f:r"));
	assert_false(auth_id_valid("f.r"));
	assert_false(auth_id_valid(NULL));
}

static void
test_user_id_round_trip(void **state)
{
	static const struct {
		enum auth_role role;
		const char *id, *text;
	} cases[] = {
	        {AUTH_ROLE_COUNCIL, "fr", "council:fr"},
	        {AUTH_ROLE_SUBSCRIBER, "desk1", "subscriber:desk1"},
	        {AUTH_ROLE_ADMIN, "ops", "admin:ops"},
	        {AUTH_ROLE_SUBSCRIBER, "abcdefghijklmnopqrstuvwxyz012345",
	         "subscriber:abcdefghijklmnopqrstuvwxyz012345"},
	};
	(void) state;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char user_id[AUTH_USER_ID_MAX + 1];
		char id[AUTH_ID_MAX + 1];
		enum auth_role role = _AUTH_ROLE_INVALID;

		assert_int_equal(auth_user_id_format(cases[i].role, cases[i].id, user_id), 0);
		assert_string_equal(user_id, cases[i].text);
		assert_int_equal(auth_user_id_parse(user_id, &role, id), 0);
		assert_int_equal(role, cases[i].role);
		assert_string_equal(id, cases[i].id);
	}
	/* The longest User-Id fits the buffer exactly. */
	assert_int_equal(strlen(cases[3].text), AUTH_USER_ID_MAX);
}

static void
test_user_id_format_rejects_bad_input(void **state)
{
	char user_id[AUTH_USER_ID_MAX + 1] = "untouched";

	(void) state;
	assert_int_equal(auth_user_id_format(_AUTH_ROLE_MAX, "fr", user_id), -EINVAL);
	assert_int_equal(auth_user_id_format(_AUTH_ROLE_INVALID, "fr", user_id), -EINVAL);
	assert_int_equal(auth_user_id_format(AUTH_ROLE_COUNCIL, "", user_id), -EINVAL);
	assert_int_equal(auth_user_id_format(AUTH_ROLE_COUNCIL, "FR", user_id), -EINVAL);
	assert_int_equal(auth_user_id_format(AUTH_ROLE_COUNCIL, NULL, user_id), -EINVAL);
	assert_int_equal(auth_user_id_format(AUTH_ROLE_COUNCIL, "abcdefghijklmnopqrstuvwxyz0123456",
	                                     user_id),
	                 -EINVAL);
	assert_string_equal(user_id, "untouched");
}

static void
test_user_id_parse_rejects_bad_input(void **state)
{
	static const char *const bad[] = {
	        "",
	        "council",
	        ":fr",
	        "council:",
	        "root:fr",
	        "Council:fr",
	        "council:FR",
	        "council:fr:x",
	        "council:f r",
	        "subscriberx:desk1",
	        "subscriber:abcdefghijklmnopqrstuvwxyz0123456",
	        "council:abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz",
	        "council;fr",
	};
	enum auth_role role = AUTH_ROLE_ADMIN;
	char id[AUTH_ID_MAX + 1] = "untouched";
	(void) state;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (auth_user_id_parse(bad[i], &role, id) != -EINVAL) {
			print_error("accepted '%s'\n", bad[i]);
			fail();
		}
	}
	assert_int_equal(auth_user_id_parse(NULL, &role, id), -EINVAL);
	assert_int_equal(role, AUTH_ROLE_ADMIN);
	assert_string_equal(id, "untouched");
}

/* ---- Key files ---- */

static void
test_key_decode_checks_length_and_alphabet(void **state)
{
	uint8_t key[AUTH_KEY_BYTES] = {0};
	char pub[41], sec[41], again[41];

	(void) state;
	assert_int_equal(zmq_curve_keypair(pub, sec), 0);
	assert_int_equal(auth_key_decode(pub, key), 0);
	assert_non_null(zmq_z85_encode(again, key, sizeof(key)));
	assert_string_equal(again, pub);

	assert_int_equal(auth_key_decode(KEY_ODD, key), 0);
	assert_int_equal(auth_key_decode(NULL, key), -EINVAL);
	assert_int_equal(auth_key_decode("", key), -EINVAL);
	assert_int_equal(auth_key_decode(KEY_A "a", key), -EINVAL);
	assert_int_equal(auth_key_decode(KEY_A KEY_A, key), -EINVAL);
	assert_int_equal(auth_key_decode("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", key), -EINVAL);
	assert_int_equal(auth_key_decode("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa~", key), -EINVAL);
	assert_int_equal(auth_key_decode("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa ", key), -EINVAL);
	assert_int_equal(auth_key_decode("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\x01", key),
	                 -EINVAL);
	/* A group above 2^32 - 1: also why no key starts with '#'. */
	assert_int_equal(auth_key_decode("#####aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", key), -EINVAL);
}

static void
assert_mode(const char *path, mode_t mode)
{
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	assert_true(S_ISREG(st.st_mode));
	assert_int_equal(st.st_mode & 07777, mode);
}

static void
read_text(const char *path, char *buf, size_t size)
{
	FILE *f = fopen(path, "re");

	assert_non_null(f);
	size_t n = fread(buf, 1, size - 1, f);
	buf[n] = '\0';
	assert_int_equal(fclose(f), 0);
}

static void
test_keygen_writes_both_files_with_modes(void **state)
{
	struct tmp t;
	char base[PATH_MAX], sec_path[PATH_MAX], pub_path[PATH_MAX];
	char ret_public[41] = "", secret[41] = "", derived[41] = "", written[41] = "";
	char text[512];
	struct auth_error e = {.line = 0};

	(void) state;
	tmp_init(&t);
	tmp_path(&t, "fr", base, sizeof(base));
	tmp_path(&t, "fr.secret", sec_path, sizeof(sec_path));
	tmp_path(&t, "fr.public", pub_path, sizeof(pub_path));

	/* Modes are exact whatever the umask. */
	mode_t old = umask(0777);
	int r = auth_keygen(base, ret_public, &e);
	(void) umask(old);
	assert_int_equal(r, 0);
	assert_int_equal(strlen(ret_public), AUTH_KEY_Z85_LEN);
	assert_mode(sec_path, 0600);
	assert_mode(pub_path, 0644);

	/* One comment line saying what the file is, then the key. */
	read_text(sec_path, text, sizeof(text));
	assert_non_null(strstr(text, "# coordd CURVE secret key 'fr'"));
	assert_int_equal(strchr(text, '\n')[1 + AUTH_KEY_Z85_LEN], '\n');
	read_text(pub_path, text, sizeof(text));
	assert_non_null(strstr(text, "# coordd CURVE public key 'fr'"));
	assert_non_null(strstr(text, ret_public));

	assert_int_equal(auth_read_secret_key(sec_path, secret, derived, &e), 0);
	assert_int_equal(auth_read_public_key(pub_path, written, &e), 0);
	assert_string_equal(derived, written);
	assert_string_equal(derived, ret_public);
	assert_string_not_equal(secret, derived);
	char check[41];
	assert_int_equal(zmq_curve_public(check, secret), 0);
	assert_string_equal(check, written);

	/* Without ret_public and ret_error. */
	tmp_path(&t, "de", base, sizeof(base));
	assert_int_equal(auth_keygen(base, NULL, NULL), 0);
	tmp_done(&t);
}

static void
test_keygen_refuses_to_overwrite(void **state)
{
	struct tmp t;
	char base[PATH_MAX], sec_path[PATH_MAX], pub_path[PATH_MAX];
	char before[512], after[512];
	struct auth_error e = {.line = 0};

	(void) state;
	tmp_init(&t);
	tmp_path(&t, "fr", base, sizeof(base));
	tmp_path(&t, "fr.secret", sec_path, sizeof(sec_path));
	tmp_path(&t, "fr.public", pub_path, sizeof(pub_path));

	assert_int_equal(auth_keygen(base, NULL, &e), 0);
	read_text(sec_path, before, sizeof(before));
	assert_int_equal(auth_keygen(base, NULL, &e), -EEXIST);
	assert_non_null(strstr(e.message, "never overwrites"));
	assert_non_null(strstr(e.message, "fr.secret"));
	read_text(sec_path, after, sizeof(after));
	assert_string_equal(before, after);

	/* Only the public file exists: refused, and no secret file is left behind. */
	assert_int_equal(unlink(sec_path), 0);
	assert_int_equal(auth_keygen(base, NULL, &e), -EEXIST);
	assert_non_null(strstr(e.message, "fr.public"));
	assert_int_equal(access(sec_path, F_OK), -1);

	/* A symlink where the secret goes is not followed. */
	char target[PATH_MAX];
	tmp_path(&t, "target", target, sizeof(target));
	tmp_path(&t, "ln", base, sizeof(base));
	tmp_path(&t, "ln.secret", sec_path, sizeof(sec_path));
	assert_int_equal(symlink(target, sec_path), 0);
	assert_int_equal(auth_keygen(base, NULL, &e), -EEXIST);
	assert_int_equal(access(target, F_OK), -1);

	tmp_path(&t, "missing-dir/x", base, sizeof(base));
	assert_int_equal(auth_keygen(base, NULL, &e), -ENOENT);
	assert_int_equal(auth_keygen("", NULL, &e), -EINVAL);
	tmp_done(&t);
}

static void
test_keygen_rejects_overlong_path(void **state)
{
	char base[PATH_MAX + 8];
	struct auth_error e = {.line = 0};

	(void) state;
	memset(base, 'x', sizeof(base) - 1);
	base[sizeof(base) - 1] = '\0';
	assert_int_equal(auth_keygen(base, NULL, &e), -ENAMETOOLONG);
}

static void
test_secret_key_readable_by_others_is_refused(void **state)
{
	static const mode_t modes[] = {0640, 0604, 0620, 0602, 0610, 0700 | 0001, 0644};
	struct tmp t;
	char base[PATH_MAX], sec_path[PATH_MAX], pub_path[PATH_MAX];
	char secret[41] = "untouched", public[41] = "untouched";
	struct auth_error e = {.line = 0};

	(void) state;
	tmp_init(&t);
	tmp_path(&t, "fr", base, sizeof(base));
	tmp_path(&t, "fr.secret", sec_path, sizeof(sec_path));
	tmp_path(&t, "fr.public", pub_path, sizeof(pub_path));
	assert_int_equal(auth_keygen(base, NULL, NULL), 0);

	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
		assert_int_equal(chmod(sec_path, modes[i]), 0);
		e = (struct auth_error){.line = 0};
		assert_int_equal(auth_read_secret_key(sec_path, secret, public, &e), -EPERM);
		assert_non_null(strstr(e.message, "accessible by group or others"));
		assert_non_null(strstr(e.message, "chmod 600"));
	}
	assert_string_equal(secret, "untouched");
	assert_string_equal(public, "untouched");

	/* 0400 is fine; a public key file may have any mode. */
	assert_int_equal(chmod(sec_path, 0400), 0);
	assert_int_equal(auth_read_secret_key(sec_path, secret, public, &e), 0);
	assert_int_equal(chmod(pub_path, 0666), 0);
	assert_int_equal(auth_read_public_key(pub_path, public, &e), 0);
	tmp_done(&t);
}

struct key_file_case {
	const char *name;
	const char *text;
	size_t len; /* 0: strlen(text) */
	int r;
	unsigned line;
	const char *message;
};

static void
test_key_file_errors_name_their_line(void **state)
{
	static const struct key_file_case cases[] = {
	        {"empty", "", 0, -EINVAL, 0, "holds no public key"},
	        {"comments only", "# a\n\n#b\n", 0, -EINVAL, 0, "holds no public key"},
	        {"two keys", "# c\n" KEY_A "\n" KEY_B "\n", 0, -EINVAL, 3,
	         "a second key (the first is at line 2)"},
	        {"comment then key", "# c\n" KEY_A "\n", 0, 0, 0, NULL},
	        {"bad line", "# c\nhello world\n", 0, -EINVAL, 2, "expected a 40-character"},
	        {"key with text", KEY_A " x\n", 0, -EINVAL, 1, "expected a 40-character"},
	        {"bad alphabet", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa~\n", 0, -EINVAL, 1,
	         "expected a 40-character"},
	        {"nul byte", "# c\n\n" KEY_A "\0\n", sizeof("# c\n\n" KEY_A "\0\n") - 1, -EINVAL, 3,
	         "NUL byte"},
	        {"indented crlf", "  # c\r\n\t" KEY_A "  \r\n\r\n", 0, 0, 0, NULL},
	        {"no newline", KEY_C, 0, 0, 0, NULL},
	};
	struct tmp t;
	char path[PATH_MAX];
	(void) state;

	tmp_init(&t);
	tmp_path(&t, "k.public", path, sizeof(path));
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct key_file_case *c = &cases[i];
		char key[41] = "";
		struct auth_error e = {.line = 12345};

		tmp_write(&t, "k.public", 0644, c->text, c->len ? c->len : strlen(c->text));
		int r = auth_read_public_key(path, key, &e);
		if (r != c->r || (r < 0 && (e.line != c->line || !strstr(e.message, c->message)))) {
			print_error("case '%s': got r=%d line=%u '%s'\n", c->name, r, e.line,
			            e.message);
			fail();
		}
		if (r == 0) {
			assert_int_equal(strlen(key), AUTH_KEY_Z85_LEN);
		}
	}

	/* Too big, a directory, missing. */
	char big[AUTH_KEY_Z85_LEN + 8000];
	memset(big, '#', sizeof(big));
	tmp_write(&t, "k.public", 0644, big, sizeof(big));
	char key[41];
	struct auth_error e = {.line = 0};
	assert_int_equal(auth_read_public_key(path, key, &e), -EFBIG);
	assert_int_equal(auth_read_public_key(t.dir, key, &e), -EINVAL);
	assert_non_null(strstr(e.message, "not a regular file"));
	tmp_path(&t, "missing", path, sizeof(path));
	assert_int_equal(auth_read_public_key(path, key, &e), -ENOENT);
	assert_non_null(strstr(e.message, "cannot open public key file"));
	char secret[41];
	assert_int_equal(auth_read_secret_key(path, secret, key, NULL), -ENOENT);
	tmp_done(&t);
}

/* ---- The keys file ---- */

static void
test_keys_file_lookup_by_key_and_id(void **state)
{
	static const char text[] = "\xEF\xBB\xBF# coordd allowlist\n"
	                           "[subscriber.desk1]\n"
	                           "public_key = " KEY_B " # desk one\n"
	                           "\n"
	                           "  [council.fr] ; France\r\n"
	                           "\tpublic_key=" KEY_A "\r\n"
	                           "[admin.ops]\n"
	                           "public_key : " KEY_ODD "\n"
	                           "[council.de]\n"
	                           "; a comment\n"
	                           "public_key = " KEY_C " ; inline\n"
	                           "[subscriber.fr]\n"
	                           "public_key = 00000000000000000000000000000000000000zz\n";
	uint8_t key[AUTH_KEY_BYTES];
	(void) state;

	struct auth_keys *keys = keys_ok(text);
	assert_string_equal(auth_keys_path(keys), "test");
	assert_int_equal(auth_keys_count(keys), 5);

	assert_int_equal(auth_key_decode(KEY_A, key), 0);
	const struct auth_entry *e = auth_keys_lookup(keys, key);
	assert_non_null(e);
	assert_int_equal(e->role, AUTH_ROLE_COUNCIL);
	assert_string_equal(e->id, "fr");
	assert_string_equal(e->key_z85, KEY_A);
	assert_int_equal(e->line, 5);
	assert_int_equal(e->key_line, 6);

	assert_int_equal(auth_key_decode(KEY_ODD, key), 0);
	e = auth_keys_lookup(keys, key);
	assert_non_null(e);
	assert_int_equal(e->role, AUTH_ROLE_ADMIN);
	assert_string_equal(e->id, "ops");
	assert_string_equal(e->key_z85, KEY_ODD);

	assert_int_equal(auth_key_decode(KEY_B, key), 0);
	assert_string_equal(auth_keys_lookup(keys, key)->id, "desk1");
	assert_int_equal(auth_key_decode(KEY_C, key), 0);
	assert_string_equal(auth_keys_lookup(keys, key)->id, "de");

	memset(key, 0x55, sizeof(key));
	assert_null(auth_keys_lookup(keys, key));
	assert_null(auth_keys_lookup(NULL, key));
	assert_null(auth_keys_lookup(keys, NULL));

	/* Sorted by role (council, subscriber, admin), then id. */
	static const char *const order[] = {"council:de", "council:fr", "subscriber:desk1",
	                                    "subscriber:fr", "admin:ops"};
	for (size_t i = 0; i < 5; i++) {
		char user_id[AUTH_USER_ID_MAX + 1];
		e = auth_keys_get(keys, i);
		assert_int_equal(auth_user_id_format(e->role, e->id, user_id), 0);
		assert_string_equal(user_id, order[i]);
		assert_ptr_equal(auth_keys_find(keys, e->role, e->id), e);
	}
	assert_null(auth_keys_get(keys, 5));
	assert_null(auth_keys_find(keys, AUTH_ROLE_ADMIN, "fr"));
	assert_null(auth_keys_find(keys, AUTH_ROLE_COUNCIL, "it"));
	assert_null(auth_keys_find(keys, _AUTH_ROLE_MAX, "fr"));
	assert_null(auth_keys_find(keys, AUTH_ROLE_COUNCIL, NULL));

	/* Reference counting: the last unref frees (checked by ASan and valgrind). */
	assert_ptr_equal(auth_keys_ref(keys), keys);
	assert_null(auth_keys_unref(keys));
	assert_int_equal(auth_keys_count(keys), 5);
	assert_null(auth_keys_unref(keys));
	assert_null(auth_keys_unref(NULL));
	assert_null(auth_keys_ref(NULL));
}

static void
test_empty_keys_file_admits_nobody(void **state)
{
	uint8_t key[AUTH_KEY_BYTES];
	(void) state;

	struct auth_keys *keys = keys_ok("# nobody yet\n\n");
	assert_int_equal(auth_keys_count(keys), 0);
	assert_int_equal(auth_key_decode(KEY_A, key), 0);
	assert_null(auth_keys_lookup(keys, key));
	assert_null(auth_keys_find(keys, AUTH_ROLE_COUNCIL, "fr"));
	assert_null(auth_keys_get(keys, 0));
	auth_keys_unref(keys);
	keys = keys_ok("");
	assert_int_equal(auth_keys_count(keys), 0);
	auth_keys_unref(keys);
}

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
	struct auth_keys *keys = NULL;
	struct auth_error e = {.line = 12345};

	int r = auth_keys_parse_string(ec->text, NULL, &keys, &e);
	if (r != ec->r || e.line != ec->line || !strstr(e.message, ec->message)) {
		print_error("got r=%d line=%u '%s'\n", r, e.line, e.message);
		print_error("want r=%d line=%u '%s'\n", ec->r, ec->line, ec->message);
		fail();
	}
	assert_null(keys);
}

#define ERROR_CASE(name, ...) static struct error_case name##_case = {__VA_ARGS__}
#define error_test(name)                                                                           \
	{                                                                                          \
#name, run_error_case, NULL, NULL, &name##_case                                    \
	}

#define LONG_ID "abcdefghijklmnopqrstuvwxyz0123456"
#define LONG_200                                                                                   \
	"# xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"  \
	"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" \
	"xxx"                                                                                      \
	"xxxxxxxxxxxxxxxxxxxxxxxx\n"

ERROR_CASE(test_keys_unknown_section_names_its_line, "# allowlist\n\n[server]\n", -EINVAL, 3,
           "unknown section [server]: use [council.<id>]");
ERROR_CASE(test_keys_unknown_role_is_an_unknown_section, "[councils.fr]\n", -EINVAL, 1,
           "unknown section [councils.fr]");
ERROR_CASE(test_keys_section_without_dot_is_unknown, "[council]\n", -EINVAL, 1,
           "unknown section [council]");
ERROR_CASE(test_keys_upper_case_id_is_refused,
           "[council.fr]\npublic_key = " KEY_A "\n[council.FR]\n", -EINVAL, 3,
           "bad id 'FR' in [council.FR]");
ERROR_CASE(test_keys_empty_id_is_refused, "[admin.]\n", -EINVAL, 1, "bad id '' in [admin.]");
ERROR_CASE(test_keys_overlong_id_is_refused, "[subscriber." LONG_ID "]\n", -EINVAL, 1,
           "bad id '" LONG_ID "'");
ERROR_CASE(test_keys_id_starting_with_dash_is_refused, "[council.-fr]\n", -EINVAL, 1,
           "bad id '-fr'");
ERROR_CASE(test_keys_missing_bracket_names_its_line, "\n[council.fr\n", -EINVAL, 2, "missing ']'");
ERROR_CASE(test_keys_text_after_section_names_its_line, "[council.fr] x\n", -EINVAL, 1,
           "unexpected text after ']'");
ERROR_CASE(test_keys_key_outside_section_names_its_line, "# c\npublic_key = " KEY_A "\n", -EINVAL,
           2, "key 'public_key' is outside a section");
ERROR_CASE(test_keys_unknown_key_names_its_line,
           "[council.fr]\npublic_key = " KEY_A "\nname = France\n", -EINVAL, 3,
           "unknown key 'name' in [council.fr]: use public_key");
ERROR_CASE(test_keys_second_public_key_names_its_line,
           "[council.fr]\npublic_key = " KEY_A "\npublic_key = " KEY_B "\n", -EINVAL, 3,
           "duplicate public_key in [council.fr] (first at line 2)");
ERROR_CASE(test_keys_empty_public_key_names_its_line, "[admin.ops]\npublic_key =\n", -EINVAL, 2,
           "empty public_key in [admin.ops]");
ERROR_CASE(test_keys_short_public_key_names_its_line,
           "[admin.ops]\npublic_key = aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n", -EINVAL, 2,
           "bad public_key in [admin.ops]");
ERROR_CASE(test_keys_public_key_outside_z85_names_its_line,
           "[admin.ops]\npublic_key = aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa~\n", -EINVAL, 2,
           "bad public_key in [admin.ops]");
ERROR_CASE(test_keys_public_key_above_2_32_names_its_line,
           "[admin.ops]\npublic_key = aaaaa#####aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n", -EINVAL, 2,
           "bad public_key in [admin.ops]");
ERROR_CASE(test_keys_public_key_with_trailing_text_names_its_line,
           "[admin.ops]\npublic_key = " KEY_A " extra\n", -EINVAL, 2,
           "bad public_key in [admin.ops]");
ERROR_CASE(test_keys_missing_public_key_names_its_section,
           "[council.fr]\n\n[council.de]\npublic_key = " KEY_A "\n", -EINVAL, 1,
           "missing public_key in [council.fr]");
ERROR_CASE(test_keys_duplicate_section_names_the_later_one,
           "[council.fr]\npublic_key = " KEY_A "\n[council.de]\npublic_key = " KEY_B
           "\n[council.fr]\npublic_key = " KEY_C "\n",
           -EINVAL, 5, "duplicate section [council.fr] (first at line 1)");
ERROR_CASE(test_keys_same_key_twice_names_the_later_line,
           "[council.fr]\npublic_key = " KEY_A "\n[council.de]\npublic_key = " KEY_B
           "\n[subscriber.desk1]\n# same as fr\npublic_key = " KEY_A "\n",
           -EINVAL, 7,
           "public_key of [subscriber.desk1] is already the key of [council.fr] "
           "(line 2)");
ERROR_CASE(test_keys_earliest_cross_entry_error_wins,
           "[council.fr]\npublic_key = " KEY_A "\n[council.de]\npublic_key = " KEY_A
           "\n[council.fr]\n",
           -EINVAL, 4, "already the key of [council.fr]");
ERROR_CASE(test_keys_line_without_equals_names_its_line, "[council.fr]\nhello\n", -EINVAL, 2,
           "expected 'public_key = <key>' or '[role.id]'");
ERROR_CASE(test_keys_overlong_line_names_its_line, "# c\n" LONG_200, -EINVAL, 2,
           "line longer than 199 bytes");

static void
test_keys_line_at_limit_is_accepted(void **state)
{
	char text[AUTH_LINE_MAX + 64];
	(void) state;

	/* 198 characters plus the newline. */
	memset(text, 'x', AUTH_LINE_MAX - 2);
	text[0] = '#';
	text[AUTH_LINE_MAX - 2] = '\n';
	text[AUTH_LINE_MAX - 1] = '\0';
	auth_keys_unref(keys_ok(text));
}

static void
test_keys_load_reads_files_and_names_errors(void **state)
{
	static const char nul_text[] = "[council.fr]\n\0public_key = " KEY_A "\n";
	static const char good[] = "[council.fr]\npublic_key = " KEY_A "\n";
	struct tmp t;
	char path[PATH_MAX];
	struct auth_keys *keys = NULL;
	struct auth_error e = {.line = 0};
	(void) state;

	tmp_init(&t);
	tmp_path(&t, "keys.conf", path, sizeof(path));
	tmp_write(&t, "keys.conf", 0644, good, strlen(good));
	assert_int_equal(auth_keys_load(path, &keys, &e), 0);
	assert_string_equal(auth_keys_path(keys), path);
	assert_int_equal(auth_keys_count(keys), 1);
	keys = auth_keys_unref(keys);

	tmp_write(&t, "keys.conf", 0644, nul_text, sizeof(nul_text) - 1);
	assert_int_equal(auth_keys_load(path, &keys, &e), -EINVAL);
	assert_int_equal(e.line, 2);
	assert_non_null(strstr(e.message, "NUL byte"));
	assert_null(keys);

	tmp_path(&t, "missing.conf", path, sizeof(path));
	assert_int_equal(auth_keys_load(path, &keys, &e), -ENOENT);
	assert_int_equal(e.line, 0);
	assert_non_null(strstr(e.message, "cannot open keys file"));
	assert_int_equal(auth_keys_load(path, &keys, NULL), -ENOENT);
	assert_null(keys);
	tmp_done(&t);
}

/* ---- The ZAP handler ---- */

struct keypair {
	char pub[41], sec[41];
};

/* One loop, one zmq context, one handler, keys for every role. */
struct world {
	uv_loop_t loop;
	void *zctx;
	struct tmp tmp;
	struct auth *auth;
	struct auth_keys *keys;
	struct keypair server, fr, de, desk1, ops, stranger;
	unsigned n_endpoints;
	bool closed;
	uint32_t connections; /* what count_connections() reports, for auth_set_limit() */
	/* Open sockets and an extra context, closed by the teardown if a test fails. */
	void *socks[16];
	void *extra_zctx;

	/* From the event callback. */
	unsigned n_events;
	struct {
		int status;
		char reason[64], domain[64], mechanism[16], key_z85[41], user_id[64], address[64];
	} last;
};

static void
on_event(const struct auth_event *ev, void *data)
{
	struct world *w = data;

	w->n_events++;
	w->last.status = ev->status;
	(void) snprintf(w->last.reason, sizeof(w->last.reason), "%s", ev->reason);
	(void) snprintf(w->last.domain, sizeof(w->last.domain), "%s", ev->domain);
	(void) snprintf(w->last.mechanism, sizeof(w->last.mechanism), "%s", ev->mechanism);
	(void) snprintf(w->last.key_z85, sizeof(w->last.key_z85), "%s", ev->key_z85);
	(void) snprintf(w->last.user_id, sizeof(w->last.user_id), "%s", ev->user_id);
	(void) snprintf(w->last.address, sizeof(w->last.address), "%s", ev->address);
}

static struct auth_keys *
world_keys(struct world *w, bool with_fr, const char *fr_key)
{
	char text[1024];

	(void) snprintf(text, sizeof(text),
	                "%s%s%s"
	                "[council.de]\npublic_key = %s\n"
	                "[subscriber.desk1]\npublic_key = %s\n"
	                "[admin.ops]\npublic_key = %s\n",
	                with_fr ? "[council.fr]\npublic_key = " : "", with_fr ? fr_key : "",
	                with_fr ? "\n" : "", w->de.pub, w->desk1.pub, w->ops.pub);
	return keys_ok(text);
}

static int
world_setup(void **state)
{
	struct world *w = calloc(1, sizeof(*w));

	assert_non_null(w);
	assert_int_equal(uv_loop_init(&w->loop), 0);
	w->zctx = zmq_ctx_new();
	assert_non_null(w->zctx);
	tmp_init(&w->tmp);
	struct keypair *kps[] = {&w->server, &w->fr, &w->de, &w->desk1, &w->ops, &w->stranger};
	for (size_t i = 0; i < sizeof(kps) / sizeof(kps[0]); i++) {
		assert_int_equal(zmq_curve_keypair(kps[i]->pub, kps[i]->sec), 0);
	}
	w->keys = world_keys(w, true, w->fr.pub);
	assert_int_equal(auth_new(&w->loop, w->zctx, w->keys, &w->auth), 0);
	auth_set_event_cb(w->auth, on_event, w);
	*state = w;
	return 0;
}

static void
on_auth_closed(void *data)
{
	struct world *w = data;

	w->closed = true;
	w->auth = auth_free(w->auth);
}

static int
world_teardown(void **state)
{
	struct world *w = *state;

	for (size_t i = 0; i < sizeof(w->socks) / sizeof(w->socks[0]); i++) {
		if (w->socks[i]) {
			assert_int_equal(zmq_close(w->socks[i]), 0);
		}
	}
	if (w->extra_zctx) {
		assert_int_equal(zmq_ctx_term(w->extra_zctx), 0);
	}
	if (w->auth) {
		auth_close(w->auth, on_auth_closed, w);
		for (int i = 0; i < 100 && !w->closed; i++) {
			(void) uv_run(&w->loop, UV_RUN_NOWAIT);
		}
		assert_true(w->closed);
	}
	assert_int_equal(uv_run(&w->loop, UV_RUN_DEFAULT), 0);
	assert_int_equal(uv_loop_close(&w->loop), 0);
	assert_int_equal(zmq_ctx_term(w->zctx), 0);
	auth_keys_unref(w->keys);
	tmp_done(&w->tmp);
	free(w);
	return 0;
}

/* Remember an open socket for the teardown. Returns it. */
static void *
track(struct world *w, void *sock)
{
	assert_non_null(sock);
	for (size_t i = 0; i < sizeof(w->socks) / sizeof(w->socks[0]); i++) {
		if (!w->socks[i]) {
			w->socks[i] = sock;
			return sock;
		}
	}
	fail_msg("too many sockets");
	return NULL;
}

static void
close_socket(struct world *w, void *sock)
{
	for (size_t i = 0; i < sizeof(w->socks) / sizeof(w->socks[0]); i++) {
		if (w->socks[i] == sock) {
			w->socks[i] = NULL;
		}
	}
	assert_int_equal(zmq_close(sock), 0);
}

static void
set_int(void *sock, int option, int value)
{
	assert_int_equal(zmq_setsockopt(sock, option, &value, sizeof(value)), 0);
}

/* How a test server socket is secured. */
enum server_kind {
	SERVER_CURVE,         /* auth_server_setup(domain, server secret) */
	SERVER_PLAIN,         /* auth_server_setup(domain, NULL) */
	SERVER_CURVE_RAW,     /* CURVE server, ZMQ_ZAP_DOMAIN only if domain != NULL */
	SERVER_PLAIN_NO_AUTH, /* nothing set */
};

static void *
server_new(struct world *w, void *zctx, enum server_kind kind, const char *domain, char *endpoint,
           size_t size)
{
	void *s = track(w, zmq_socket(zctx, ZMQ_ROUTER));
	char name[32];

	set_int(s, ZMQ_LINGER, 0);
	switch (kind) {
	case SERVER_CURVE:
		assert_int_equal(auth_server_setup(s, domain, w->server.sec), 0);
		break;
	case SERVER_PLAIN:
		assert_int_equal(auth_server_setup(s, domain, NULL), 0);
		break;
	case SERVER_CURVE_RAW:
		set_int(s, ZMQ_CURVE_SERVER, 1);
		assert_int_equal(zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, w->server.sec, 40), 0);
		if (domain) {
			assert_int_equal(zmq_setsockopt(s, ZMQ_ZAP_DOMAIN, domain, strlen(domain)),
			                 0);
		}
		break;
	case SERVER_PLAIN_NO_AUTH:
		break;
	}
	(void) snprintf(name, sizeof(name), "s%u", w->n_endpoints++);
	char path[PATH_MAX];
	tmp_path(&w->tmp, name, path, sizeof(path));
	assert_true((size_t) snprintf(endpoint, size, "ipc://%s", path) < size);
	assert_int_equal(zmq_bind(s, endpoint), 0);
	return s;
}

/* A DEALER that connects with `kp`'s CURVE keys (plain when NULL) and sends "hello". */
static void *
client_new(struct world *w, void *zctx, const struct keypair *kp, const char *endpoint,
           const char *metadata)
{
	void *c = track(w, zmq_socket(zctx, ZMQ_DEALER));

	set_int(c, ZMQ_LINGER, 0);
	if (kp) {
		assert_int_equal(zmq_setsockopt(c, ZMQ_CURVE_SERVERKEY, w->server.pub, 40), 0);
		assert_int_equal(zmq_setsockopt(c, ZMQ_CURVE_PUBLICKEY, kp->pub, 40), 0);
		assert_int_equal(zmq_setsockopt(c, ZMQ_CURVE_SECRETKEY, kp->sec, 40), 0);
	}
	if (metadata) {
		assert_int_equal(zmq_setsockopt(c, ZMQ_METADATA, metadata, strlen(metadata)), 0);
	}
	assert_int_equal(zmq_connect(c, endpoint), 0);
	assert_int_equal(zmq_send(c, "hello", 5, ZMQ_DONTWAIT), 5);
	return c;
}

/*
 * Step the loop until `server` has a message (returns true and its body frame, which the
 * caller closes) or `ms` have passed. Waits only in short zmq_poll() calls.
 */
static bool
recv_within(struct world *w, void *server, zmq_msg_t *body, int ms)
{
	int64_t deadline = now_ms() + timeout_ms(ms);

	do {
		(void) uv_run(&w->loop, UV_RUN_NOWAIT);
		zmq_pollitem_t item = {.socket = server, .events = ZMQ_POLLIN};
		if (zmq_poll(&item, 1, 2) == 1) {
			zmq_msg_t rid;
			assert_int_equal(zmq_msg_init(&rid), 0);
			assert_true(zmq_msg_recv(&rid, server, 0) >= 0);
			assert_true(zmq_msg_more(&rid));
			assert_int_equal(zmq_msg_close(&rid), 0);
			assert_int_equal(zmq_msg_init(body), 0);
			assert_true(zmq_msg_recv(body, server, 0) >= 0);
			assert_false(zmq_msg_more(body));
			return true;
		}
	} while (now_ms() < deadline);
	return false;
}

/* Step the loop until the handler has answered `n` requests in all, or fail after `ms`. */
static void
wait_decisions(struct world *w, uint64_t n, int ms)
{
	int64_t deadline = now_ms() + timeout_ms(ms);
	struct auth_counters c;

	for (;;) {
		(void) uv_run(&w->loop, UV_RUN_NOWAIT);
		auth_get_counters(w->auth, &c);
		if (c.accepted + c.refused + c.malformed >= n) {
			return;
		}
		assert_true(now_ms() < deadline);
		(void) zmq_poll(NULL, 0, 1);
	}
}

static void
test_zap_allowlisted_council_gets_its_user_id(void **state)
{
	struct world *w = *state;
	char endpoint[PATH_MAX + 8], id[AUTH_ID_MAX + 1] = "";
	zmq_msg_t body;
	struct auth_counters c;

	void *server = server_new(w, w->zctx, SERVER_CURVE, AUTH_DOMAIN_INGEST, endpoint,
	                          sizeof(endpoint));
	void *client = client_new(w, w->zctx, &w->fr, endpoint, NULL);
	assert_true(recv_within(w, server, &body, 5000));
	assert_int_equal(zmq_msg_size(&body), 5);
	assert_string_equal(zmq_msg_gets(&body, "User-Id"), "council:fr");
	assert_string_equal(zmq_msg_gets(&body, AUTH_PROPERTY_KEY), w->fr.pub);
	assert_int_equal(auth_check_msg(w->auth, &body, AUTH_ROLE_COUNCIL, id), 0);
	assert_string_equal(id, "fr");
	assert_int_equal(auth_check_msg(w->auth, &body, AUTH_ROLE_SUBSCRIBER, id), -EPERM);
	assert_int_equal(auth_check_msg(w->auth, &body, AUTH_ROLE_COUNCIL, NULL), 0);
	assert_int_equal(zmq_msg_close(&body), 0);

	auth_get_counters(w->auth, &c);
	assert_int_equal(c.accepted, 1);
	assert_int_equal(c.refused, 0);
	assert_int_equal(c.malformed, 0);
	assert_int_equal(w->last.status, 200);
	assert_string_equal(w->last.reason, "OK");
	assert_string_equal(w->last.domain, "ingest");
	assert_string_equal(w->last.mechanism, "CURVE");
	assert_string_equal(w->last.key_z85, w->fr.pub);
	assert_string_equal(w->last.user_id, "council:fr");
	close_socket(w, client);
	close_socket(w, server);
}

static void
test_zap_unknown_key_never_delivers(void **state)
{
	struct world *w = *state;
	char endpoint[PATH_MAX + 8];
	zmq_msg_t body;
	struct auth_counters c;

	void *server = server_new(w, w->zctx, SERVER_CURVE, AUTH_DOMAIN_INGEST, endpoint,
	                          sizeof(endpoint));
	void *client = client_new(w, w->zctx, &w->stranger, endpoint, NULL);
	wait_decisions(w, 1, 5000);
	assert_false(recv_within(w, server, &body, 300));
	auth_get_counters(w->auth, &c);
	assert_int_equal(c.accepted, 0);
	assert_true(c.refused >= 1);
	assert_int_equal(w->last.status, 400);
	assert_string_equal(w->last.reason, "key not allowlisted");
	assert_string_equal(w->last.key_z85, w->stranger.pub);
	assert_string_equal(w->last.user_id, "");
	close_socket(w, client);
	close_socket(w, server);
}

static void
test_zap_subscriber_is_refused_on_ingest(void **state)
{
	struct world *w = *state;
	char endpoint[PATH_MAX + 8];
	zmq_msg_t body;

	void *server = server_new(w, w->zctx, SERVER_CURVE, AUTH_DOMAIN_INGEST, endpoint,
	                          sizeof(endpoint));
	void *client = client_new(w, w->zctx, &w->desk1, endpoint, NULL);
	wait_decisions(w, 1, 5000);
	assert_false(recv_within(w, server, &body, 300));
	assert_int_equal(w->last.status, 400);
	assert_string_equal(w->last.reason, "role not allowed on this domain");
	close_socket(w, client);
	close_socket(w, server);
}

static void
test_zap_subscriber_and_admin_use_query_and_publish(void **state)
{
	struct world *w = *state;
	char query[PATH_MAX + 8], publish[PATH_MAX + 8];
	zmq_msg_t body;

	void *q = server_new(w, w->zctx, SERVER_CURVE, AUTH_DOMAIN_QUERY, query, sizeof(query));
	void *p =
	        server_new(w, w->zctx, SERVER_CURVE, AUTH_DOMAIN_PUBLISH, publish, sizeof(publish));

	void *client = client_new(w, w->zctx, &w->ops, query, NULL);
	assert_true(recv_within(w, q, &body, 5000));
	assert_string_equal(zmq_msg_gets(&body, "User-Id"), "admin:ops");
	assert_int_equal(auth_check_msg(w->auth, &body, AUTH_ROLE_ADMIN, NULL), 0);
	assert_int_equal(auth_check_msg(w->auth, &body, AUTH_ROLE_SUBSCRIBER, NULL), 0);
	assert_int_equal(auth_check_msg(w->auth, &body, AUTH_ROLE_COUNCIL, NULL), -EPERM);
	assert_int_equal(zmq_msg_close(&body), 0);
	close_socket(w, client);

	client = client_new(w, w->zctx, &w->desk1, publish, NULL);
	assert_true(recv_within(w, p, &body, 5000));
	assert_string_equal(zmq_msg_gets(&body, "User-Id"), "subscriber:desk1");
	assert_int_equal(auth_check_msg(w->auth, &body, AUTH_ROLE_SUBSCRIBER, NULL), 0);
	assert_int_equal(auth_check_msg(w->auth, &body, AUTH_ROLE_ADMIN, NULL), -EPERM);
	assert_int_equal(zmq_msg_close(&body), 0);
	close_socket(w, client);

	/* A council cannot read. */
	client = client_new(w, w->zctx, &w->de, query, NULL);
	wait_decisions(w, 3, 5000);
	assert_false(recv_within(w, q, &body, 300));
	assert_string_equal(w->last.reason, "role not allowed on this domain");
	close_socket(w, client);
	close_socket(w, p);
	close_socket(w, q);
}

static void
test_zap_removed_key_is_refused_on_open_connection(void **state)
{
	struct world *w = *state;
	char endpoint[PATH_MAX + 8], id[AUTH_ID_MAX + 1];
	zmq_msg_t body;
	struct auth_counters c;

	void *server = server_new(w, w->zctx, SERVER_CURVE, AUTH_DOMAIN_INGEST, endpoint,
	                          sizeof(endpoint));
	void *client = client_new(w, w->zctx, &w->fr, endpoint, NULL);
	assert_true(recv_within(w, server, &body, 5000));
	assert_int_equal(auth_check_msg(w->auth, &body, AUTH_ROLE_COUNCIL, id), 0);
	assert_int_equal(zmq_msg_close(&body), 0);

	/* Reload without fr: the open connection stays open, its messages are refused. */
	struct auth_keys *without = world_keys(w, false, NULL);
	auth_set_keys(w->auth, without);
	assert_ptr_equal(auth_get_keys(w->auth), without);
	auth_keys_unref(without);
	assert_int_equal(zmq_send(client, "again", 5, ZMQ_DONTWAIT), 5);
	assert_true(recv_within(w, server, &body, 5000));
	assert_string_equal(zmq_msg_gets(&body, "User-Id"), "council:fr");
	assert_int_equal(auth_check_msg(w->auth, &body, AUTH_ROLE_COUNCIL, id), -EACCES);
	assert_int_equal(zmq_msg_close(&body), 0);

	/* Rotation: fr is back with a new key; the old key's connection stays refused. */
	struct auth_keys *rotated = world_keys(w, true, w->stranger.pub);
	auth_set_keys(w->auth, rotated);
	auth_keys_unref(rotated);
	assert_int_equal(zmq_send(client, "third", 5, ZMQ_DONTWAIT), 5);
	assert_true(recv_within(w, server, &body, 5000));
	assert_int_equal(auth_check_msg(w->auth, &body, AUTH_ROLE_COUNCIL, id), -EACCES);
	assert_int_equal(zmq_msg_close(&body), 0);
	close_socket(w, client);

	/* A new connection with the old key is refused at the handshake. */
	auth_get_counters(w->auth, &c);
	uint64_t before = c.accepted + c.refused;
	client = client_new(w, w->zctx, &w->fr, endpoint, NULL);
	wait_decisions(w, before + 1, 5000);
	assert_false(recv_within(w, server, &body, 300));
	assert_string_equal(w->last.reason, "key not allowlisted");
	close_socket(w, client);

	/* And the new key is accepted as fr. */
	client = client_new(w, w->zctx, &w->stranger, endpoint, NULL);
	assert_true(recv_within(w, server, &body, 5000));
	assert_int_equal(auth_check_msg(w->auth, &body, AUTH_ROLE_COUNCIL, id), 0);
	assert_string_equal(id, "fr");
	assert_int_equal(zmq_msg_close(&body), 0);
	close_socket(w, client);
	close_socket(w, server);
}

static void
test_zap_properties_win_over_peer_metadata(void **state)
{
	struct world *w = *state;
	char endpoint[PATH_MAX + 8], metadata[64];
	zmq_msg_t body;

	void *server = server_new(w, w->zctx, SERVER_CURVE, AUTH_DOMAIN_INGEST, endpoint,
	                          sizeof(endpoint));
	/* fr claims de's key in its own handshake metadata. */
	(void) snprintf(metadata, sizeof(metadata), "%s:%s", AUTH_PROPERTY_KEY, w->de.pub);
	void *client = client_new(w, w->zctx, &w->fr, endpoint, metadata);
	assert_true(recv_within(w, server, &body, 5000));
	assert_string_equal(zmq_msg_gets(&body, AUTH_PROPERTY_KEY), w->fr.pub);
	assert_string_equal(zmq_msg_gets(&body, "User-Id"), "council:fr");
	assert_int_equal(zmq_msg_close(&body), 0);
	close_socket(w, client);
	close_socket(w, server);
}

/* Write all of `len` bytes to a blocking fd. */
static void
write_all(int fd, const void *data, size_t len)
{
	assert_int_equal(write(fd, data, len), (ssize_t) len);
}

/* Append a ZMTP metadata property to buf at *len. */
static void
put_property(char *buf, size_t *len, const char *name, const char *value)
{
	size_t n = strlen(name), v = strlen(value);

	buf[(*len)++] = (char) n;
	memcpy(buf + *len, name, n);
	*len += n;
	buf[(*len)++] = 0;
	buf[(*len)++] = 0;
	buf[(*len)++] = 0;
	buf[(*len)++] = (char) v;
	memcpy(buf + *len, value, v);
	*len += v;
}

static void
test_zap_forged_properties_on_unchecked_socket_are_refused(void **state)
{
	struct world *w = *state;
	char endpoint[PATH_MAX + 8];
	zmq_msg_t body;

	/*
	 * A plain socket without a ZAP domain never asks the handler. Speak ZMTP 3.0 by hand
	 * and claim fr's identity in our own READY metadata: libzmq passes it on as message
	 * properties, but without the handler's token auth_check_msg() refuses it.
	 */
	void *server =
	        server_new(w, w->zctx, SERVER_PLAIN_NO_AUTH, NULL, endpoint, sizeof(endpoint));
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	assert_true(strlen(endpoint + 6) < sizeof(addr.sun_path));
	strcpy(addr.sun_path, endpoint + 6);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_int_equal(connect(fd, (struct sockaddr *) &addr, sizeof(addr)), 0);
	struct timeval tv = {.tv_sec = timeout_ms(5000) / 1000};
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);

	char greeting[64] = {
	        (char) 0xFF, [9] = 0x7F, [10] = 3, [11] = 0, [12] = 'N', 'U', 'L', 'L'};
	write_all(fd, greeting, sizeof(greeting));
	/* Wait for the server's greeting before going on, as a real peer does. */
	char peer[64];
	for (size_t got = 0; got < sizeof(peer);) {
		ssize_t n = read(fd, peer + got, sizeof(peer) - got);
		assert_true(n > 0);
		got += (size_t) n;
	}
	char ready[256] = {0x04, 0, 5, 'R', 'E', 'A', 'D', 'Y'};
	size_t len = 8;
	put_property(ready, &len, "Socket-Type", "DEALER");
	put_property(ready, &len, "User-Id", "council:fr");
	put_property(ready, &len, AUTH_PROPERTY_KEY, w->fr.pub);
	put_property(ready, &len, AUTH_PROPERTY_TOKEN, "0123456789abcdef0123456789abcdef");
	assert_true(len - 2 < 256);
	ready[1] = (char) (len - 2);
	write_all(fd, ready, len);
	write_all(fd, "\x00\x05hello", 7);

	assert_true(recv_within(w, server, &body, 5000));
	assert_string_equal(zmq_msg_gets(&body, "User-Id"), "council:fr");
	assert_string_equal(zmq_msg_gets(&body, AUTH_PROPERTY_KEY), w->fr.pub);
	/* The properties alone would pass; the message does not. */
	assert_int_equal(auth_check_user(w->auth, "council:fr", w->fr.pub, AUTH_ROLE_COUNCIL, NULL),
	                 0);
	assert_int_equal(auth_check_msg(w->auth, &body, AUTH_ROLE_COUNCIL, NULL), -EACCES);
	assert_int_equal(zmq_msg_close(&body), 0);
	assert_int_equal(close(fd), 0);
	close_socket(w, server);
}

static void
test_zap_curve_socket_without_domain_is_refused(void **state)
{
	struct world *w = *state;
	char endpoint[PATH_MAX + 8];
	zmq_msg_t body;

	/* libzmq 4.3.4 asks ZAP even without ZMQ_ZAP_DOMAIN (domain ""); we refuse it. */
	void *server = server_new(w, w->zctx, SERVER_CURVE_RAW, NULL, endpoint, sizeof(endpoint));
	void *client = client_new(w, w->zctx, &w->fr, endpoint, NULL);
	wait_decisions(w, 1, 5000);
	assert_false(recv_within(w, server, &body, 300));
	assert_string_equal(w->last.reason, "socket has no ZAP domain");
	assert_string_equal(w->last.domain, "");
	close_socket(w, client);

	/* A domain the handler does not know is refused too. */
	void *other =
	        server_new(w, w->zctx, SERVER_CURVE_RAW, "metrics", endpoint, sizeof(endpoint));
	client = client_new(w, w->zctx, &w->ops, endpoint, NULL);
	wait_decisions(w, 2, 5000);
	assert_false(recv_within(w, other, &body, 300));
	assert_string_equal(w->last.reason, "unknown ZAP domain");
	close_socket(w, client);
	close_socket(w, other);
	close_socket(w, server);
}

static void
test_zap_plain_socket_without_domain_skips_zap(void **state)
{
	struct world *w = *state;
	char endpoint[PATH_MAX + 8];
	zmq_msg_t body;
	struct auth_counters c;

	void *server =
	        server_new(w, w->zctx, SERVER_PLAIN_NO_AUTH, NULL, endpoint, sizeof(endpoint));
	void *client = client_new(w, w->zctx, NULL, endpoint, NULL);
	assert_true(recv_within(w, server, &body, 5000));
	/* No ZAP request, so no User-Id: nothing for auth_check_msg() to accept. */
	assert_null(zmq_msg_gets(&body, "User-Id"));
	assert_int_equal(auth_check_msg(w->auth, &body, AUTH_ROLE_COUNCIL, NULL), -EACCES);
	assert_int_equal(zmq_msg_close(&body), 0);
	auth_get_counters(w->auth, &c);
	assert_int_equal(c.accepted + c.refused + c.malformed, 0);
	close_socket(w, client);
	close_socket(w, server);
}

static void
test_zap_plain_peer_needs_allow_plain(void **state)
{
	struct world *w = *state;
	char endpoint[PATH_MAX + 8];
	zmq_msg_t body;

	void *server = server_new(w, w->zctx, SERVER_PLAIN, "local", endpoint, sizeof(endpoint));
	void *client = client_new(w, w->zctx, NULL, endpoint, NULL);
	wait_decisions(w, 1, 5000);
	assert_false(recv_within(w, server, &body, 300));
	assert_int_equal(w->last.status, 400);
	assert_string_equal(w->last.mechanism, "NULL");
	assert_string_equal(w->last.reason, "plain connections are not allowed on this domain");
	close_socket(w, client);

	assert_int_equal(auth_allow_plain(w->auth, "local"), 0);
	assert_int_equal(auth_allow_plain(w->auth, "local"), 0);
	client = client_new(w, w->zctx, NULL, endpoint, NULL);
	assert_true(recv_within(w, server, &body, 5000));
	assert_string_equal(zmq_msg_gets(&body, "User-Id"), "");
	/* A plain peer has no proven identity. */
	assert_int_equal(auth_check_msg(w->auth, &body, AUTH_ROLE_COUNCIL, NULL), -EACCES);
	assert_int_equal(zmq_msg_close(&body), 0);
	assert_int_equal(w->last.status, 200);
	close_socket(w, client);
	close_socket(w, server);

	/* Registration limits. */
	assert_int_equal(auth_allow_plain(w->auth, ""), -EINVAL);
	assert_int_equal(auth_allow_plain(w->auth, NULL), -EINVAL);
	char name[300];
	memset(name, 'd', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	assert_int_equal(auth_allow_plain(w->auth, name), -EINVAL);
	int r = 0;
	for (int i = 0; i < AUTH_PLAIN_DOMAINS_MAX + 1 && r == 0; i++) {
		(void) snprintf(name, sizeof(name), "plain%d", i);
		r = auth_allow_plain(w->auth, name);
	}
	assert_int_equal(r, -ENOSPC);
}

static void
test_zap_missing_handler_fails_closed_only_with_enforce(void **state)
{
	struct world *w = *state;
	char strict_ep[PATH_MAX + 8], lax_ep[PATH_MAX + 8];
	zmq_msg_t body;

	/* A second context has no handler. */
	void *zctx = w->extra_zctx = zmq_ctx_new();
	assert_non_null(zctx);
	void *strict =
	        server_new(w, zctx, SERVER_CURVE, AUTH_DOMAIN_INGEST, strict_ep, sizeof(strict_ep));
	void *lax =
	        server_new(w, zctx, SERVER_CURVE_RAW, AUTH_DOMAIN_INGEST, lax_ep, sizeof(lax_ep));
	void *c1 = client_new(w, zctx, &w->stranger, strict_ep, NULL);
	void *c2 = client_new(w, zctx, &w->stranger, lax_ep, NULL);
	/* Without ZMQ_ZAP_ENFORCE_DOMAIN, libzmq admits any key when no handler is bound. */
	assert_true(recv_within(w, lax, &body, 5000));
	assert_null(zmq_msg_gets(&body, "User-Id"));
	assert_int_equal(zmq_msg_close(&body), 0);
	assert_false(recv_within(w, strict, &body, 300));
	close_socket(w, c1);
	close_socket(w, c2);
	close_socket(w, lax);
	close_socket(w, strict);
	w->extra_zctx = NULL;
	assert_int_equal(zmq_ctx_term(zctx), 0);
}

static uint32_t
count_connections(void *data)
{
	struct world *w = data;

	return w->connections;
}

/* A ROUTER secured by auth_socket_setup() and bound to a fresh ipc:// endpoint. */
static void *
setup_server(struct world *w, const char *domain, bool curve, char *endpoint, size_t size)
{
	void *s = track(w, zmq_socket(w->zctx, ZMQ_ROUTER));
	char name[32], path[PATH_MAX];

	set_int(s, ZMQ_LINGER, 0);
	assert_int_equal(auth_socket_setup(w->auth, s, domain, curve), 0);
	(void) snprintf(name, sizeof(name), "s%u", w->n_endpoints++);
	tmp_path(&w->tmp, name, path, sizeof(path));
	assert_true((size_t) snprintf(endpoint, size, "ipc://%s", path) < size);
	assert_int_equal(zmq_bind(s, endpoint), 0);
	return s;
}

static void
test_socket_setup_uses_the_server_key(void **state)
{
	struct world *w = *state;
	char endpoint[PATH_MAX + 8], id[AUTH_ID_MAX + 1] = "";
	zmq_msg_t body;

	void *s = track(w, zmq_socket(w->zctx, ZMQ_ROUTER));
	assert_int_equal(auth_socket_setup(w->auth, s, AUTH_DOMAIN_INGEST, true), -ENOKEY);
	close_socket(w, s);
	assert_int_equal(auth_set_server_key(w->auth, "short"), -EINVAL);
	assert_int_equal(auth_set_server_key(w->auth, NULL), -EINVAL);
	assert_int_equal(auth_set_server_key(w->auth, w->server.sec), 0);

	void *server = setup_server(w, AUTH_DOMAIN_INGEST, true, endpoint, sizeof(endpoint));
	void *client = client_new(w, w->zctx, &w->fr, endpoint, NULL);
	assert_true(recv_within(w, server, &body, 5000));
	assert_int_equal(auth_check_msg(w->auth, &body, AUTH_ROLE_COUNCIL, id), 0);
	assert_string_equal(id, "fr");
	assert_int_equal(zmq_msg_close(&body), 0);
	close_socket(w, client);

	/* A plain client on a CURVE socket never gets through. */
	client = client_new(w, w->zctx, NULL, endpoint, NULL);
	assert_false(recv_within(w, server, &body, 300));
	close_socket(w, client);
	close_socket(w, server);
}

static void
test_connection_limit_refuses_and_counts(void **state)
{
	struct world *w = *state;
	char endpoint[PATH_MAX + 8];
	zmq_msg_t body;
	struct auth_counters c;

	/* A plain socket still asks the handler, which applies the cap. */
	void *server = setup_server(w, "capped", false, endpoint, sizeof(endpoint));
	assert_int_equal(auth_set_limit(w->auth, "capped", 1, count_connections, w), 0);
	assert_int_equal(auth_limit_refused(w->auth, "capped"), 0);
	w->connections = 2; /* this connection and one more */
	void *client = client_new(w, w->zctx, NULL, endpoint, NULL);
	wait_decisions(w, 1, 5000);
	assert_false(recv_within(w, server, &body, 300));
	assert_int_equal(w->last.status, 400);
	assert_string_equal(w->last.reason, "connection limit reached");
	assert_int_equal(auth_limit_refused(w->auth, "capped"), 1);
	close_socket(w, client);

	/* Raised by a reload: the counter stays, the next connection gets through. */
	assert_int_equal(auth_set_limit(w->auth, "capped", 2, count_connections, w), 0);
	client = client_new(w, w->zctx, NULL, endpoint, NULL);
	assert_true(recv_within(w, server, &body, 5000));
	assert_int_equal(zmq_msg_close(&body), 0);
	assert_int_equal(auth_limit_refused(w->auth, "capped"), 1);
	auth_get_counters(w->auth, &c);
	assert_int_equal(c.accepted, 1);
	close_socket(w, client);
	close_socket(w, server);

	/* Arguments. */
	assert_int_equal(auth_set_limit(w->auth, "x", 0, count_connections, w), -EINVAL);
	assert_int_equal(auth_set_limit(w->auth, "x", 1, NULL, w), -EINVAL);
	assert_int_equal(auth_set_limit(w->auth, "", 1, count_connections, w), -EINVAL);
	assert_int_equal(auth_limit_refused(w->auth, "never-set"), 0);
	int r = 0;
	for (int i = 0; i < AUTH_LIMITS_MAX + 1 && r == 0; i++) {
		char name[32];
		(void) snprintf(name, sizeof(name), "limit%d", i);
		r = auth_set_limit(w->auth, name, 1, count_connections, w);
	}
	assert_int_equal(r, -ENOSPC);
}

static void
test_auth_new_refuses_a_second_handler(void **state)
{
	struct world *w = *state;
	struct auth *second = NULL;

	assert_int_equal(auth_new(&w->loop, w->zctx, w->keys, &second), -EADDRINUSE);
	assert_null(second);
	assert_null(auth_free(NULL));
}

/* Request frames for the direct tests. */
struct frames {
	unsigned n;
	const void *data[12];
	size_t len[12];
};

struct reply {
	unsigned n;
	char frame[8][300];
	size_t len[8];
};

static void
add_frame(struct frames *f, const void *data, size_t len)
{
	assert_true(f->n < 12);
	f->data[f->n] = data;
	f->len[f->n] = len;
	f->n++;
}

static void
add_string(struct frames *f, const char *s)
{
	add_frame(f, s, strlen(s));
}

/* A well-formed request up to the mechanism frame. */
static void
request_head(struct frames *f, const char *domain, const char *mechanism)
{
	*f = (struct frames){.n = 0};
	add_string(f, "1.0");
	add_string(f, "42");
	add_string(f, domain);
	add_string(f, "192.0.2.7");
	add_string(f, "");
	add_string(f, mechanism);
}

/* Send a request to the handler through `sock` (REQ) and step the loop until the reply. */
static void
zap_ask_on(struct world *w, void *sock, const struct frames *f, struct reply *rep)
{
	for (unsigned i = 0; i < f->n; i++) {
		int flags = i + 1 < f->n ? ZMQ_SNDMORE : 0;
		assert_int_equal(zmq_send(sock, f->data[i], f->len[i], flags), (int) f->len[i]);
	}
	int64_t deadline = now_ms() + timeout_ms(5000);
	zmq_pollitem_t item = {.socket = sock, .events = ZMQ_POLLIN};
	while (zmq_poll(&item, 1, 1) == 0) {
		(void) uv_run(&w->loop, UV_RUN_NOWAIT);
		assert_true(now_ms() < deadline);
	}
	*rep = (struct reply){.n = 0};
	int more = 1;
	while (more) {
		assert_true(rep->n < 8);
		int n = zmq_recv(sock, rep->frame[rep->n], sizeof(rep->frame[0]) - 1, 0);
		assert_true(n >= 0);
		rep->len[rep->n] = (size_t) n;
		rep->frame[rep->n][n] = '\0';
		rep->n++;
		size_t size = sizeof(more);
		assert_int_equal(zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &size), 0);
	}
}

static void
zap_ask(struct world *w, const struct frames *f, struct reply *rep)
{
	void *req = track(w, zmq_socket(w->zctx, ZMQ_REQ));

	set_int(req, ZMQ_LINGER, 0);
	assert_int_equal(zmq_connect(req, "inproc://zeromq.zap.01"), 0);
	zap_ask_on(w, req, f, rep);
	close_socket(w, req);
}

/* Find property `name` in ZMTP metadata; copies its value, NUL-terminated. */
static bool
metadata_get(const char *meta, size_t len, const char *name, char *value, size_t size)
{
	const unsigned char *p = (const unsigned char *) meta, *end = p + len;

	while (p < end) {
		size_t name_len = *p++;
		assert_true((size_t) (end - p) >= name_len + 4);
		const unsigned char *n = p;
		p += name_len;
		size_t value_len =
		        (size_t) p[0] << 24 | (size_t) p[1] << 16 | (size_t) p[2] << 8 | p[3];
		p += 4;
		assert_true((size_t) (end - p) >= value_len);
		if (name_len == strlen(name) && memcmp(n, name, name_len) == 0) {
			assert_true(value_len < size);
			memcpy(value, p, value_len);
			value[value_len] = '\0';
			return true;
		}
		p += value_len;
	}
	return false;
}

static void
assert_reply(const struct reply *rep, const char *request_id, const char *status)
{
	assert_int_equal(rep->n, 6);
	assert_string_equal(rep->frame[0], "1.0");
	assert_string_equal(rep->frame[1], request_id);
	assert_string_equal(rep->frame[2], status);
	assert_true(rep->len[3] > 0);
}

static void
test_zap_decides_by_domain_and_role(void **state)
{
	struct world *w = *state;
	static const struct {
		const char *domain;
		size_t domain_len; /* 0: strlen(domain) */
		int who;           /* index into who[] below */
		const char *status, *user_id;
	} cases[] = {
	        {"ingest", 0, 0, "200", "council:fr"},
	        {"ingest", 0, 1, "400", ""},
	        {"ingest", 0, 2, "400", ""},
	        {"ingest", 0, 3, "400", ""},
	        {"publish", 0, 0, "400", ""},
	        {"publish", 0, 1, "200", "subscriber:desk1"},
	        {"publish", 0, 2, "200", "admin:ops"},
	        {"query", 0, 0, "400", ""},
	        {"query", 0, 1, "200", "subscriber:desk1"},
	        {"query", 0, 2, "200", "admin:ops"},
	        {"query", 0, 3, "400", ""},
	        {"", 0, 0, "400", ""},
	        {"Ingest", 0, 0, "400", ""},
	        {"ingest\0x", 8, 0, "400", ""},
	};
	const struct keypair *who[] = {&w->fr, &w->desk1, &w->ops, &w->stranger};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct frames f;
		struct reply rep;
		uint8_t key[AUTH_KEY_BYTES];

		request_head(&f, cases[i].domain, "CURVE");
		if (cases[i].domain_len) {
			f.len[2] = cases[i].domain_len;
		}
		assert_int_equal(auth_key_decode(who[cases[i].who]->pub, key), 0);
		add_frame(&f, key, sizeof(key));
		zap_ask(w, &f, &rep);
		if (strcmp(rep.frame[2], cases[i].status) != 0) {
			print_error("case %zu: domain '%s' got %s '%s'\n", i, cases[i].domain,
			            rep.frame[2], rep.frame[3]);
			fail();
		}
		assert_reply(&rep, "42", cases[i].status);
		assert_string_equal(rep.frame[4], cases[i].user_id);
		if (cases[i].status[0] == '2') {
			/* Metadata: the key and the handler's token, ZMTP-encoded. */
			char value[64];
			assert_true(metadata_get(rep.frame[5], rep.len[5], AUTH_PROPERTY_KEY, value,
			                         sizeof(value)));
			assert_string_equal(value, who[cases[i].who]->pub);
			assert_true(metadata_get(rep.frame[5], rep.len[5], AUTH_PROPERTY_TOKEN,
			                         value, sizeof(value)));
			assert_int_equal(strlen(value), 32);
			assert_int_equal(strspn(value, "0123456789abcdef"), 32);
		} else {
			assert_int_equal(rep.len[5], 0);
		}
	}
	assert_string_equal(w->last.domain, "ingest?x");
	assert_string_equal(w->last.address, "192.0.2.7");
}

static void
test_zap_malformed_requests_get_500(void **state)
{
	struct world *w = *state;
	uint8_t key[AUTH_KEY_BYTES] = {1};
	char big[AUTH_KEY_BYTES * 10] = {0};
	struct frames f;
	struct reply rep;
	struct auth_counters c;

	/* Only a version. */
	f = (struct frames){.n = 0};
	add_string(&f, "1.0");
	zap_ask(w, &f, &rep);
	assert_reply(&rep, "", "500");

	/* An empty frame. */
	f = (struct frames){.n = 0};
	add_string(&f, "");
	zap_ask(w, &f, &rep);
	assert_reply(&rep, "", "500");

	/* Wrong version: the request id is still echoed. */
	request_head(&f, "ingest", "CURVE");
	f.data[0] = "2.0";
	add_frame(&f, key, sizeof(key));
	zap_ask(w, &f, &rep);
	assert_reply(&rep, "42", "500");
	assert_string_equal(rep.frame[3], "unsupported ZAP version");

	/* Too many frames. */
	request_head(&f, "ingest", "CURVE");
	for (int i = 0; i < 5; i++) {
		add_frame(&f, key, sizeof(key));
	}
	zap_ask(w, &f, &rep);
	assert_reply(&rep, "42", "500");
	assert_string_equal(rep.frame[3], "malformed ZAP request");

	/* An oversized frame (domain), and an oversized request id (not echoed). */
	request_head(&f, "ingest", "CURVE");
	f.data[2] = big;
	f.len[2] = sizeof(big);
	add_frame(&f, key, sizeof(key));
	zap_ask(w, &f, &rep);
	assert_reply(&rep, "42", "500");
	request_head(&f, "ingest", "CURVE");
	f.data[1] = big;
	f.len[1] = sizeof(big);
	add_frame(&f, key, sizeof(key));
	zap_ask(w, &f, &rep);
	assert_reply(&rep, "", "500");

	/* CURVE without a 32-byte key, with two keys, with none. */
	request_head(&f, "ingest", "CURVE");
	add_frame(&f, key, sizeof(key) - 1);
	zap_ask(w, &f, &rep);
	assert_reply(&rep, "42", "500");
	assert_string_equal(rep.frame[3], "CURVE request without a 32-byte key");
	request_head(&f, "ingest", "CURVE");
	add_frame(&f, key, sizeof(key));
	add_frame(&f, key, sizeof(key));
	zap_ask(w, &f, &rep);
	assert_reply(&rep, "42", "500");
	request_head(&f, "ingest", "CURVE");
	zap_ask(w, &f, &rep);
	assert_reply(&rep, "42", "500");

	/* NULL with credentials. */
	request_head(&f, "ingest", "NULL");
	add_frame(&f, key, sizeof(key));
	zap_ask(w, &f, &rep);
	assert_reply(&rep, "42", "500");

	auth_get_counters(w->auth, &c);
	assert_int_equal(c.malformed, 10);
	assert_int_equal(c.accepted, 0);
	assert_int_equal(c.refused, 0);

	/* Other mechanisms are well-formed but refused. */
	request_head(&f, "ingest", "PLAIN");
	add_string(&f, "user");
	add_string(&f, "password");
	zap_ask(w, &f, &rep);
	assert_reply(&rep, "42", "400");
	assert_string_equal(rep.frame[3], "mechanism not supported: use CURVE");
	request_head(&f, "ingest", "\x01\xff");
	zap_ask(w, &f, &rep);
	assert_reply(&rep, "42", "400");
	assert_string_equal(w->last.mechanism, "??");
	auth_get_counters(w->auth, &c);
	assert_int_equal(c.refused, 2);
}

static void
test_zap_answers_bursts_beyond_one_budget(void **state)
{
	struct world *w = *state;
	enum { N = 300 };
	struct frames f;
	uint8_t key[AUTH_KEY_BYTES];

	/* A DEALER may have many requests in flight; REQ only one. */
	void *dealer = track(w, zmq_socket(w->zctx, ZMQ_DEALER));
	set_int(dealer, ZMQ_LINGER, 0);
	assert_int_equal(zmq_connect(dealer, "inproc://zeromq.zap.01"), 0);
	request_head(&f, "ingest", "CURVE");
	assert_int_equal(auth_key_decode(w->fr.pub, key), 0);
	add_frame(&f, key, sizeof(key));
	for (int i = 0; i < N; i++) {
		assert_int_equal(zmq_send(dealer, "", 0, ZMQ_SNDMORE), 0);
		for (unsigned j = 0; j < f.n; j++) {
			int flags = j + 1 < f.n ? ZMQ_SNDMORE : 0;
			assert_int_equal(zmq_send(dealer, f.data[j], f.len[j], flags),
			                 (int) f.len[j]);
		}
	}
	int replies = 0;
	int64_t deadline = now_ms() + timeout_ms(10000);
	while (replies < N) {
		(void) uv_run(&w->loop, UV_RUN_NOWAIT);
		zmq_pollitem_t item = {.socket = dealer, .events = ZMQ_POLLIN};
		while (zmq_poll(&item, 1, 1) == 1) {
			char buf[300];
			int more = 1;
			unsigned n = 0;
			while (more) {
				assert_true(zmq_recv(dealer, buf, sizeof(buf), 0) >= 0);
				size_t size = sizeof(more);
				assert_int_equal(zmq_getsockopt(dealer, ZMQ_RCVMORE, &more, &size),
				                 0);
				n++;
			}
			assert_int_equal(n, 7); /* delimiter + 6 */
			replies++;
		}
		assert_true(now_ms() < deadline);
	}
	struct auth_counters c;
	auth_get_counters(w->auth, &c);
	assert_int_equal(c.accepted, N);
	close_socket(w, dealer);
}

static void
test_check_user_needs_current_key_and_identity(void **state)
{
	struct world *w = *state;
	char id[AUTH_ID_MAX + 1] = "untouched";

	assert_int_equal(auth_check_user(w->auth, "council:fr", w->fr.pub, AUTH_ROLE_COUNCIL, id),
	                 0);
	assert_string_equal(id, "fr");
	strcpy(id, "untouched");
	/* The claimed identity must be the key's. */
	assert_int_equal(auth_check_user(w->auth, "council:de", w->fr.pub, AUTH_ROLE_COUNCIL, id),
	                 -EACCES);
	assert_int_equal(
	        auth_check_user(w->auth, "subscriber:fr", w->fr.pub, AUTH_ROLE_SUBSCRIBER, id),
	        -EACCES);
	assert_int_equal(
	        auth_check_user(w->auth, "council:fr", w->stranger.pub, AUTH_ROLE_COUNCIL, id),
	        -EACCES);
	assert_int_equal(auth_check_user(w->auth, "council:fr", NULL, AUTH_ROLE_COUNCIL, id),
	                 -EACCES);
	assert_int_equal(auth_check_user(w->auth, NULL, w->fr.pub, AUTH_ROLE_COUNCIL, id), -EACCES);
	assert_int_equal(auth_check_user(w->auth, "", w->fr.pub, AUTH_ROLE_COUNCIL, id), -EACCES);
	assert_int_equal(auth_check_user(w->auth, "council:fr", "short", AUTH_ROLE_COUNCIL, id),
	                 -EACCES);
	assert_int_equal(auth_check_user(w->auth, "council:fr", w->fr.pub, AUTH_ROLE_ADMIN, id),
	                 -EPERM);
	assert_string_equal(id, "untouched");
	assert_int_equal(
	        auth_check_user(w->auth, "admin:ops", w->ops.pub, AUTH_ROLE_SUBSCRIBER, id), 0);
	assert_string_equal(id, "ops");
}

static void
test_server_setup_rejects_bad_arguments(void **state)
{
	struct world *w = *state;
	void *s = track(w, zmq_socket(w->zctx, ZMQ_ROUTER));

	assert_int_equal(auth_server_setup(s, "", NULL), -EINVAL);
	assert_int_equal(auth_server_setup(s, NULL, NULL), -EINVAL);
	assert_int_equal(auth_server_setup(s, "ingest", "short"), -EINVAL);
	assert_int_equal(auth_server_setup(s, "ingest", w->server.sec), 0);
	int v = 0;
	size_t size = sizeof(v);
	assert_int_equal(zmq_getsockopt(s, ZMQ_CURVE_SERVER, &v, &size), 0);
	assert_int_equal(v, 1);
	char domain[32];
	size = sizeof(domain);
	assert_int_equal(zmq_getsockopt(s, ZMQ_ZAP_DOMAIN, domain, &size), 0);
	assert_string_equal(domain, "ingest");
	close_socket(w, s);
}

#define world_test(name) cmocka_unit_test_setup_teardown(name, world_setup, world_teardown)

static const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_role_names_round_trip),
        cmocka_unit_test(test_admin_may_do_what_a_subscriber_may),
        cmocka_unit_test(test_id_rules),
        cmocka_unit_test(test_user_id_round_trip),
        cmocka_unit_test(test_user_id_format_rejects_bad_input),
        cmocka_unit_test(test_user_id_parse_rejects_bad_input),
        cmocka_unit_test(test_key_decode_checks_length_and_alphabet),
        cmocka_unit_test(test_keygen_writes_both_files_with_modes),
        cmocka_unit_test(test_keygen_refuses_to_overwrite),
        cmocka_unit_test(test_keygen_rejects_overlong_path),
        cmocka_unit_test(test_secret_key_readable_by_others_is_refused),
        cmocka_unit_test(test_key_file_errors_name_their_line),
        cmocka_unit_test(test_keys_file_lookup_by_key_and_id),
        cmocka_unit_test(test_empty_keys_file_admits_nobody),
        error_test(test_keys_unknown_section_names_its_line),
        error_test(test_keys_unknown_role_is_an_unknown_section),
        error_test(test_keys_section_without_dot_is_unknown),
        error_test(test_keys_upper_case_id_is_refused),
        error_test(test_keys_empty_id_is_refused),
        error_test(test_keys_overlong_id_is_refused),
        error_test(test_keys_id_starting_with_dash_is_refused),
        error_test(test_keys_missing_bracket_names_its_line),
        error_test(test_keys_text_after_section_names_its_line),
        error_test(test_keys_key_outside_section_names_its_line),
        error_test(test_keys_unknown_key_names_its_line),
        error_test(test_keys_second_public_key_names_its_line),
        error_test(test_keys_empty_public_key_names_its_line),
        error_test(test_keys_short_public_key_names_its_line),
        error_test(test_keys_public_key_outside_z85_names_its_line),
        error_test(test_keys_public_key_above_2_32_names_its_line),
        error_test(test_keys_public_key_with_trailing_text_names_its_line),
        error_test(test_keys_missing_public_key_names_its_section),
        error_test(test_keys_duplicate_section_names_the_later_one),
        error_test(test_keys_same_key_twice_names_the_later_line),
        error_test(test_keys_earliest_cross_entry_error_wins),
        error_test(test_keys_line_without_equals_names_its_line),
        error_test(test_keys_overlong_line_names_its_line),
        cmocka_unit_test(test_keys_line_at_limit_is_accepted),
        cmocka_unit_test(test_keys_load_reads_files_and_names_errors),
        world_test(test_zap_allowlisted_council_gets_its_user_id),
        world_test(test_zap_unknown_key_never_delivers),
        world_test(test_zap_subscriber_is_refused_on_ingest),
        world_test(test_zap_subscriber_and_admin_use_query_and_publish),
        world_test(test_zap_removed_key_is_refused_on_open_connection),
        world_test(test_zap_properties_win_over_peer_metadata),
        world_test(test_zap_forged_properties_on_unchecked_socket_are_refused),
        world_test(test_zap_curve_socket_without_domain_is_refused),
        world_test(test_zap_plain_socket_without_domain_skips_zap),
        world_test(test_zap_plain_peer_needs_allow_plain),
        world_test(test_zap_missing_handler_fails_closed_only_with_enforce),
        world_test(test_auth_new_refuses_a_second_handler),
        world_test(test_socket_setup_uses_the_server_key),
        world_test(test_connection_limit_refuses_and_counts),
        world_test(test_zap_decides_by_domain_and_role),
        world_test(test_zap_malformed_requests_get_500),
        world_test(test_zap_answers_bursts_beyond_one_budget),
        world_test(test_check_user_needs_current_key_and_identity),
        world_test(test_server_setup_rejects_bad_arguments),
};

int
main(void)
{
	return cmocka_run_group_tests(tests, NULL, NULL);
}

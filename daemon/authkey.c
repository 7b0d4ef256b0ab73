/*
 * authkey: the key-file half of the auth module (auth.h, "Key files"): Z85 keys, auth_keygen()
 * and the readers of NAME.secret and NAME.public.
 *
 * Split from auth.c so that the clients (libcoord, coord-push, coordctl, coord-watch) use the
 * very code the broker uses, without the ZAP handler and its libuv and inih dependencies:
 * this file needs only libc and libzmq. libcoord compiles it with its symbols renamed
 * (clients/libcoord/wire-names.h) and exposes it as coord_keygen() and coord_keys_load().
 *
 * Secrets: every buffer that held a secret key is cleared with explicit_bzero() before it
 * goes out of scope, on every path.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zmq.h>

#include "auth.h"

/* Key files are two short lines; anything much bigger is not one. */
#define AUTH_KEY_FILE_MAX 4096

void
auth_error_set(struct auth_error *e, unsigned line, const char *fmt, ...)
{
	if (!e) {
		return;
	}
	e->line = line;
	va_list ap;
	va_start(ap, fmt);
	(void) vsnprintf(e->message, sizeof(e->message), fmt, ap);
	va_end(ap);
}

/* ---- Key files ---- */

int
auth_key_decode(const char *z85, uint8_t ret_key[AUTH_KEY_BYTES])
{
	uint8_t key[AUTH_KEY_BYTES];

	/* zmq_z85_decode() writes strlen * 4 / 5 bytes: check the length before calling it. */
	if (!z85 || strnlen(z85, AUTH_KEY_Z85_LEN + 1) != AUTH_KEY_Z85_LEN) {
		return -EINVAL;
	}
	if (!zmq_z85_decode(key, z85)) {
		return -EINVAL;
	}
	memcpy(ret_key, key, sizeof(key));
	explicit_bzero(key, sizeof(key));
	return 0;
}

static bool
is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

/* The last path component, for the comment line of a key file. */
static const char *
base_name(const char *path)
{
	const char *slash = strrchr(path, '/');

	return slash ? slash + 1 : path;
}

/*
 * Create `path` exclusively with `mode` and write `text` to it, synced. Returns 0 or a
 * negative errno; on failure after creating the file, the file is removed.
 */
static int
write_new_file(const char *path, mode_t mode, const char *text, struct auth_error *ret_error)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
	int r = 0;

	if (fd < 0) {
		r = -errno;
		if (r == -EEXIST) {
			auth_error_set(ret_error, 0,
			               "'%s' exists: keygen never overwrites a key; remove it or "
			               "choose another name",
			               path);
		} else {
			auth_error_set(ret_error, 0, "cannot create '%s': %s", path, strerror(-r));
		}
		return r;
	}
	/* The umask may have taken bits away; the mode must be exactly this one. */
	size_t len = strlen(text);
	if (fchmod(fd, mode) < 0) {
		r = -errno;
	}
	for (size_t done = 0; r == 0 && done < len;) {
		ssize_t n = write(fd, text + done, len - done);
		if (n < 0 && errno != EINTR) {
			r = -errno;
		} else if (n > 0) {
			done += (size_t) n;
		}
	}
	if (r == 0 && fsync(fd) < 0) {
		r = -errno;
	}
	if (close(fd) < 0 && r == 0) {
		r = -errno;
	}
	if (r < 0) {
		auth_error_set(ret_error, 0, "cannot write '%s': %s", path, strerror(-r));
		(void) unlink(path);
	}
	return r;
}

int
auth_keygen(const char *path_base, char ret_public[AUTH_KEY_Z85_LEN + 1],
            struct auth_error *ret_error)
{
	char secret_path[PATH_MAX], public_path[PATH_MAX];
	char public_z85[AUTH_KEY_Z85_LEN + 1], secret_z85[AUTH_KEY_Z85_LEN + 1];
	char name[64];
	char text[256];
	int r;

	if (!path_base || *path_base == '\0') {
		auth_error_set(ret_error, 0, "empty key name");
		return -EINVAL;
	}
	if ((size_t) snprintf(secret_path, sizeof(secret_path), "%s.secret", path_base) >=
	            sizeof(secret_path) ||
	    (size_t) snprintf(public_path, sizeof(public_path), "%s.public", path_base) >=
	            sizeof(public_path)) {
		auth_error_set(ret_error, 0, "key path '%s' is too long", path_base);
		return -ENAMETOOLONG;
	}
	/* The name goes into a comment line: keep it printable and on one line. */
	(void) snprintf(name, sizeof(name), "%s", base_name(path_base));
	for (char *c = name; *c; c++) {
		if ((unsigned char) *c < 0x20 || (unsigned char) *c >= 0x7F) {
			*c = '?';
		}
	}

	if (zmq_curve_keypair(public_z85, secret_z85) < 0) {
		r = -zmq_errno();
		auth_error_set(ret_error, 0, "cannot generate a CURVE keypair: %s", strerror(-r));
		return r;
	}

	(void) snprintf(text, sizeof(text),
	                "# coordd CURVE secret key '%s' (Z85). Keep it secret: mode 0600, "
	                "never copy it to another host.\n%s\n",
	                name, secret_z85);
	r = write_new_file(secret_path, 0600, text, ret_error);
	explicit_bzero(text, sizeof(text));
	explicit_bzero(secret_z85, sizeof(secret_z85));
	if (r < 0) {
		return r;
	}
	(void) snprintf(text, sizeof(text),
	                "# coordd CURVE public key '%s' (Z85). Give it to the broker's keys "
	                "file as public_key.\n%s\n",
	                name, public_z85);
	r = write_new_file(public_path, 0644, text, ret_error);
	if (r < 0) {
		/* We created the secret file (O_EXCL), so removing it loses nothing of anyone's. */
		(void) unlink(secret_path);
		return r;
	}
	if (ret_public) {
		memcpy(ret_public, public_z85, sizeof(public_z85));
	}
	return 0;
}

/*
 * Read a key file into `ret_key` (Z85, NUL-terminated). With `secret`, the file must not be
 * accessible by group or others.
 */
static int
read_key_file(const char *path, bool secret, char ret_key[AUTH_KEY_Z85_LEN + 1],
              struct auth_error *ret_error)
{
	char buf[AUTH_KEY_FILE_MAX + 1];
	char key[AUTH_KEY_Z85_LEN + 1] = "";
	const char *what = secret ? "secret" : "public";
	struct stat st;
	size_t len = 0;
	int r = 0;

	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		r = -errno;
		auth_error_set(ret_error, 0, "cannot open %s key file '%s': %s", what, path,
		               strerror(-r));
		return r;
	}
	if (fstat(fd, &st) < 0) {
		r = -errno;
		auth_error_set(ret_error, 0, "cannot stat '%s': %s", path, strerror(-r));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		r = -EINVAL;
		auth_error_set(ret_error, 0, "%s key file '%s' is not a regular file", what, path);
		goto out;
	}
	if (secret && (st.st_mode & 077) != 0) {
		r = -EPERM;
		auth_error_set(ret_error, 0,
		               "secret key file '%s' is accessible by group or others (mode %04o): "
		               "run 'chmod 600 %s', and make a new key if others may have read it",
		               path, (unsigned) (st.st_mode & 07777), path);
		goto out;
	}
	for (;;) {
		ssize_t n = read(fd, buf + len, sizeof(buf) - len);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n < 0) {
			r = -errno;
			auth_error_set(ret_error, 0, "cannot read '%s': %s", path, strerror(-r));
			goto out;
		}
		if (n == 0) {
			break;
		}
		len += (size_t) n;
		if (len == sizeof(buf)) {
			r = -EFBIG;
			auth_error_set(ret_error, 0, "'%s' is larger than %d bytes: not a key file",
			               path, AUTH_KEY_FILE_MAX);
			goto out;
		}
	}
	buf[len] = '\0';
	const char *nul = memchr(buf, '\0', len);
	if (nul) {
		unsigned at = 1;
		for (const char *c = buf; c < nul; c++) {
			at += *c == '\n';
		}
		r = -EINVAL;
		auth_error_set(ret_error, at, "'%s' line %u: NUL byte: not a key file", path, at);
		goto out;
	}

	unsigned line = 0, key_line = 0;
	for (char *s = buf; r == 0 && *s;) {
		char *end = strchr(s, '\n');
		char *next = end ? end + 1 : s + strlen(s);
		size_t n = (size_t) ((end ? end : next) - s);
		line++;
		while (n > 0 && is_blank(s[n - 1])) {
			n--;
		}
		while (n > 0 && is_blank(*s)) {
			s++, n--;
		}
		s[n] = '\0';
		if (n == 0 || s[0] == '#') {
			/* A comment: a Z85 key cannot start with '#' (it would exceed 2^32). */
		} else if (n != AUTH_KEY_Z85_LEN || auth_key_decode(s, (uint8_t[32]){0}) < 0) {
			r = -EINVAL;
			auth_error_set(ret_error, line,
			               "'%s' line %u: expected a 40-character Z85 %s key or a '#' "
			               "comment",
			               path, line, what);
		} else if (key_line != 0) {
			r = -EINVAL;
			auth_error_set(
			        ret_error, line,
			        "'%s' line %u: a second key (the first is at line %u): keep one",
			        path, line, key_line);
		} else {
			key_line = line;
			memcpy(key, s, AUTH_KEY_Z85_LEN + 1);
		}
		s = next;
	}
	if (r == 0 && key_line == 0) {
		r = -EINVAL;
		auth_error_set(ret_error, 0, "'%s' holds no %s key", path, what);
	}
	if (r == 0) {
		memcpy(ret_key, key, sizeof(key));
	}
out:
	explicit_bzero(buf, sizeof(buf));
	explicit_bzero(key, sizeof(key));
	(void) close(fd);
	return r;
}

int
auth_read_secret_key(const char *path, char ret_secret[AUTH_KEY_Z85_LEN + 1],
                     char ret_public[AUTH_KEY_Z85_LEN + 1], struct auth_error *ret_error)
{
	char secret[AUTH_KEY_Z85_LEN + 1], public[AUTH_KEY_Z85_LEN + 1];

	int r = read_key_file(path, true, secret, ret_error);
	if (r < 0) {
		return r;
	}
	if (zmq_curve_public(public, secret) < 0) {
		r = -zmq_errno();
		auth_error_set(ret_error, 0, "cannot derive the public key of '%s': %s", path,
		               strerror(-r));
	} else {
		memcpy(ret_secret, secret, sizeof(secret));
		memcpy(ret_public, public, sizeof(public));
	}
	explicit_bzero(secret, sizeof(secret));
	return r;
}

int
auth_read_public_key(const char *path, char ret_public[AUTH_KEY_Z85_LEN + 1],
                     struct auth_error *ret_error)
{
	return read_key_file(path, false, ret_public, ret_error);
}

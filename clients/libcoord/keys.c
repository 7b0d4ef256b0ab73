/*
 * keys: libcoord's CURVE key files (coord_keys_load(), coord_keygen()).
 *
 * The files are read and written by the broker's own code, daemon/authkey.c, which libcoord
 * compiles with its symbols renamed (wire-names.h): one implementation of the format, of the
 * secret file's permission check and of the no-overwrite rule. This file only decides what
 * a `server_key` argument is (a Z85 key or a file) and turns auth_error into coord_error.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "coord.h"
#include "wire-names.h"
#include "auth.h"

_Static_assert(COORD_KEY_Z85_LEN == AUTH_KEY_Z85_LEN, "one key length");

static void
set_error(struct coord_error *err, const char *field, const char *message)
{
	if (err == NULL) {
		return;
	}
	(void) snprintf(err->field, sizeof(err->field), "%s", field);
	(void) snprintf(err->message, sizeof(err->message), "%s", message);
}

static bool
ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);
	return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* `arg` is a Z85 key (exactly 40 valid characters) or the path of a public key file. */
static int
load_server_key(const char *arg, char ret[AUTH_KEY_Z85_LEN + 1], struct coord_error *err)
{
	uint8_t bin[AUTH_KEY_BYTES];
	struct auth_error e = {0};

	if (auth_key_decode(arg, bin) == 0) {
		memcpy(ret, arg, AUTH_KEY_Z85_LEN + 1);
		return 0;
	}
	int r = auth_read_public_key(arg, ret, &e);
	if (r == -ENOENT && strlen(arg) == AUTH_KEY_Z85_LEN) {
		char msg[sizeof(err->message)];
		(void) snprintf(msg, sizeof(msg),
		                "'%s' is neither a Z85 key (not all its 40 characters are Z85) "
		                "nor a public key file",
		                arg);
		set_error(err, "server_key", msg);
		return -EINVAL;
	}
	if (r < 0) {
		set_error(err, "server_key", e.message);
	}
	return r;
}

int
coord_keys_load(const char *server_key, const char *key_file, struct coord_keys *ret_keys,
                struct coord_error *err)
{
	struct coord_keys keys;
	struct auth_error e = {0};

	if (ret_keys == NULL) {
		set_error(err, "", "no place for the keys");
		return -EINVAL;
	}
	if (server_key == NULL || server_key[0] == '\0') {
		set_error(err, "server_key", "the broker's public key is missing");
		return -EINVAL;
	}
	if (key_file == NULL || key_file[0] == '\0') {
		set_error(err, "key_file", "the secret key file is missing");
		return -EINVAL;
	}
	/* A common slip, which the permission check would report as "chmod 600". */
	if (ends_with(key_file, ".public")) {
		char msg[sizeof(err->message)];
		(void) snprintf(msg, sizeof(msg),
		                "'%s' is a public key file: give your NAME.secret (the broker's "
		                "public key is the server key)",
		                key_file);
		set_error(err, "key_file", msg);
		return -EINVAL;
	}
	int r = load_server_key(server_key, keys.server_key, err);
	if (r < 0) {
		return r;
	}
	r = auth_read_secret_key(key_file, keys.secret_key, keys.public_key, &e);
	if (r < 0) {
		set_error(err, "key_file", e.message);
		explicit_bzero(&keys, sizeof(keys));
		return r;
	}
	memcpy(ret_keys, &keys, sizeof(keys));
	explicit_bzero(&keys, sizeof(keys));
	return 0;
}

void
coord_keys_done(struct coord_keys *keys)
{
	if (keys != NULL) {
		explicit_bzero(keys, sizeof(*keys));
	}
}

int
coord_keygen(const char *path_base, char ret_public[COORD_KEY_Z85_LEN + 1], struct coord_error *err)
{
	struct auth_error e = {0};

	int r = auth_keygen(path_base, ret_public, &e);
	if (r < 0) {
		set_error(err, "", e.message);
	}
	return r;
}

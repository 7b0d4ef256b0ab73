/*
 * keyopt: the CURVE key options that every client program takes, the same way:
 *
 *     --server-key KEY   the broker's public key: 40 Z85 characters, or a NAME.public file
 *     --key FILE         this client's NAME.secret (chmod 600; the public key is derived)
 *
 * with the environment variables COORD_SERVER_KEY and COORD_KEY for an option not given.
 * Both or neither: with both the program connects with CURVE, with neither in plain text.
 * Used by coord-push, coordctl and coord-watch; the files are read by libcoord's
 * coord_keys_load() (daemon/authkey.c). Single-threaded.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coord.h"

/* The two environment variables. */
#define KEYOPT_ENV_SERVER_KEY "COORD_SERVER_KEY"
#define KEYOPT_ENV_KEY "COORD_KEY"

/* Room for keyopt_load()'s message. */
#define KEYOPT_MESSAGE_MAX 512

struct keyopt {
	bool curve;             /* keys were given: use CURVE */
	struct coord_keys keys; /* valid when curve */
};

/*
 * Resolve the options: `server_key` and `key_file` as given on the command line (NULL when
 * not given; then the environment variable, if set and not empty). With neither, *ret is
 * {.curve = false} and 0 is returned. With both, the keys are loaded (coord_keys_load()).
 * Returns 0, or a negative errno with a one-line message in `msg` (what is wrong and what to
 * do, naming the option or variable): -EINVAL when only one was given or a key is bad,
 * -EPERM for a secret file that group or others may read, the errno of open() etc.
 * *ret is written only on success; call keyopt_done() after a success.
 */
int keyopt_load(const char *server_key, const char *key_file, struct keyopt *ret, char *msg,
                size_t msg_size);

/*
 * Make the ZeroMQ socket `zsock` a CURVE client with the keys, before zmq_connect(); does
 * nothing without keys. Returns 0 or -zmq_errno().
 */
int keyopt_apply(const struct keyopt *k, void *zsock);

/* Clear the secret key. Accepts NULL. */
void keyopt_done(struct keyopt *k);

/*
 * Watch the handshakes of `zsock` (a client socket, before zmq_connect()): starts
 * zmq_socket_monitor() on an inproc endpoint named after `name` and returns a connected PAIR
 * socket in `zctx` to poll (ZMQ_POLLIN), or NULL with errno set. Close it before `zsock`
 * after zmq_socket_monitor(zsock, NULL, 0).
 */
void *keyopt_monitor(void *zctx, void *zsock, const char *name);

/*
 * Read the monitor's pending events. When one says that a handshake failed for a reason the
 * user can fix (the broker refused the key; CURVE on one side only), write a sentence about
 * `endpoint` into `msg` and return true; `curve` is whether this client uses keys.
 */
bool keyopt_handshake_failed(void *mon, bool curve, const char *endpoint, char *msg,
                             size_t msg_size);

/*
 * The sentence for one monitor event of a client socket (`event`, its 32-bit `value`), as
 * keyopt_handshake_failed() writes it, for a program that reads its own monitor. Returns
 * true when the event is such a failure.
 */
bool keyopt_event_message(unsigned event, uint32_t value, bool curve, const char *endpoint,
                          char *msg, size_t msg_size);

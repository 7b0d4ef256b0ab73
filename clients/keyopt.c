/*
 * keyopt: --server-key / --key / $COORD_SERVER_KEY / $COORD_KEY for every client program
 * (see keyopt.h). Everything about the files is libcoord's coord_keys_load(); this file
 * adds the environment, the both-or-neither rule and messages that name the options.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "keyopt.h"

/* The option, or the environment variable, that gave a value. */
static const char *
resolve(const char **value, const char *option, const char *env)
{
	if (*value != NULL) {
		return option;
	}
	const char *e = getenv(env);
	if (e != NULL && e[0] != '\0') {
		*value = e;
		return env;
	}
	return NULL;
}

int
keyopt_load(const char *server_key, const char *key_file, struct keyopt *ret, char *msg,
            size_t msg_size)
{
	const char *server_from = resolve(&server_key, "--server-key", KEYOPT_ENV_SERVER_KEY);
	const char *key_from = resolve(&key_file, "--key", KEYOPT_ENV_KEY);

	if (server_from == NULL && key_from == NULL) {
		*ret = (struct keyopt){.curve = false};
		return 0;
	}
	if (server_from == NULL) {
		(void) snprintf(msg, msg_size,
		                "%s needs the broker's public key too: give --server-key KEY "
		                "(Z85 or its .public file) or set %s",
		                key_from, KEYOPT_ENV_SERVER_KEY);
		return -EINVAL;
	}
	if (key_from == NULL) {
		(void) snprintf(msg, msg_size,
		                "%s needs your own key too: give --key NAME.secret (made by "
		                "'coordctl keygen NAME') or set %s",
		                server_from, KEYOPT_ENV_KEY);
		return -EINVAL;
	}
	struct coord_keys keys;
	struct coord_error err = {.field = ""};
	int r = coord_keys_load(server_key, key_file, &keys, &err);
	if (r < 0) {
		const char *from = strcmp(err.field, "server_key") == 0 ? server_from : key_from;
		(void) snprintf(msg, msg_size, "%s: %s", from, err.message);
		return r;
	}
	/* Field by field: a compound literal could leave another copy of the secret behind. */
	ret->curve = true;
	ret->keys = keys;
	coord_keys_done(&keys);
	return 0;
}

int
keyopt_apply(const struct keyopt *k, void *zsock)
{
	if (!k->curve) {
		return 0;
	}
	/* Z85 keys are passed as 41 bytes: 40 characters and the NUL. */
	if (zmq_setsockopt(zsock, ZMQ_CURVE_SERVERKEY, k->keys.server_key,
	                   sizeof(k->keys.server_key)) < 0 ||
	    zmq_setsockopt(zsock, ZMQ_CURVE_PUBLICKEY, k->keys.public_key,
	                   sizeof(k->keys.public_key)) < 0 ||
	    zmq_setsockopt(zsock, ZMQ_CURVE_SECRETKEY, k->keys.secret_key,
	                   sizeof(k->keys.secret_key)) < 0) {
		return -zmq_errno();
	}
	return 0;
}

void
keyopt_done(struct keyopt *k)
{
	if (k != NULL) {
		coord_keys_done(&k->keys);
		k->curve = false;
	}
}

void *
keyopt_monitor(void *zctx, void *zsock, const char *name)
{
	char endpoint[96];
	int linger = 0;

	(void) snprintf(endpoint, sizeof(endpoint), "inproc://keyopt-%s-%p", name, zsock);
	if (zmq_socket_monitor(zsock, endpoint,
	                       ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
	                               ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) < 0) {
		return NULL;
	}
	void *mon = zmq_socket(zctx, ZMQ_PAIR);
	if (mon == NULL) {
		return NULL;
	}
	(void) zmq_setsockopt(mon, ZMQ_LINGER, &linger, sizeof(linger));
	if (zmq_connect(mon, endpoint) < 0) {
		int e = zmq_errno();
		(void) zmq_close(mon);
		errno = e;
		return NULL;
	}
	return mon;
}

bool
keyopt_event_message(unsigned event, uint32_t value, bool curve, const char *endpoint, char *msg,
                     size_t msg_size)
{
	if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH && curve) {
		(void) snprintf(msg, msg_size,
		                "%s refused this client's key (status %u): is its public key in "
		                "the broker's keys file, with a role that may use this socket?",
		                endpoint, (unsigned) value);
		return true;
	}
	if (event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
		(void) snprintf(msg, msg_size,
		                "%s refused this client (status %u): give --server-key and --key",
		                endpoint, (unsigned) value);
		return true;
	}
	if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL &&
	    value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH && curve) {
		(void) snprintf(msg, msg_size,
		                "%s does not use CURVE: leave out --server-key and --key (and "
		                "$COORD_SERVER_KEY, $COORD_KEY)",
		                endpoint);
		return true;
	}
	if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL &&
	    value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) {
		(void) snprintf(msg, msg_size,
		                "%s requires CURVE keys: give --server-key (the broker's public "
		                "key) and --key (your NAME.secret)",
		                endpoint);
		return true;
	}
	return false;
}

bool
keyopt_handshake_failed(void *mon, bool curve, const char *endpoint, char *msg, size_t msg_size)
{
	bool failed = false;

	for (;;) {
		zmq_msg_t m;
		uint16_t event = 0;
		uint32_t value = 0;
		(void) zmq_msg_init(&m);
		if (zmq_msg_recv(&m, mon, ZMQ_DONTWAIT) < 0) {
			(void) zmq_msg_close(&m);
			return failed;
		}
		/* Frame 1: a 16-bit event and a 32-bit value; frame 2: the endpoint. */
		if (zmq_msg_size(&m) >= sizeof(event) + sizeof(value)) {
			memcpy(&event, zmq_msg_data(&m), sizeof(event));
			memcpy(&value, (const char *) zmq_msg_data(&m) + sizeof(event),
			       sizeof(value));
		}
		while (zmq_msg_more(&m)) {
			if (zmq_msg_recv(&m, mon, ZMQ_DONTWAIT) < 0) {
				break;
			}
		}
		(void) zmq_msg_close(&m);
		if (!failed) {
			failed = keyopt_event_message(event, value, curve, endpoint, msg, msg_size);
		}
	}
}

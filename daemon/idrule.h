/*
 * idrule: what an id may hold and how long it may be, written once for the broker and its
 * clients. Pure, header-only; libcoord includes it too (daemon/ is on its include path).
 *
 * An id (a council's, and the id of a subscriber or admin key): 1 to IDRULE_ID_MAX bytes of
 * a-z, 0-9, '_' and '-', starting with a-z or 0-9 (docs/PROTOCOL.md). It names config
 * sections, key-file sections, User-Ids and LMDB keys, which is why it is so narrow.
 * A msg_id: 1 to IDRULE_MSG_ID_MAX bytes of printable ASCII without the space (0x21-0x7e).
 *
 * Users: config.c (council sections), auth.c (key-file sections and the ids in requests,
 * auth_id_valid()), wire.c (an Envelope's council and msg_id, whose rejections say which
 * byte is wrong, so it walks the bytes with idrule_id_char() and idrule_msg_id_char()),
 * libcoord's client.c (coord_client_new()'s council, coord_push()'s msg_id) and coordctl
 * (keygen's id hint).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#define IDRULE_ID_MAX 32      /* bytes of an id, without the NUL */
#define IDRULE_MSG_ID_MAX 128 /* bytes of a msg_id, without the NUL */

/* Whether `c` may stand in an id, at its start when `first`. */
static inline bool
idrule_id_char(char c, bool first)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       (!first && (c == '_' || c == '-'));
}

/* Whether the `n` bytes at `id` (not NUL-terminated) are a valid id. */
static inline bool
idrule_id_valid_n(const char *id, size_t n)
{
	if (n == 0 || n > IDRULE_ID_MAX) {
		return false;
	}
	for (size_t i = 0; i < n; i++) {
		if (!idrule_id_char(id[i], i == 0)) {
			return false;
		}
	}
	return true;
}

/* Whether the string `id` is a valid id. NULL is not. Reads at most IDRULE_ID_MAX + 1 bytes. */
static inline bool
idrule_id_valid(const char *id)
{
	return id != NULL && idrule_id_valid_n(id, strnlen(id, IDRULE_ID_MAX + 1));
}

/* Whether byte `c` may stand in a msg_id. */
static inline bool
idrule_msg_id_char(unsigned char c)
{
	return c >= 0x21 && c <= 0x7e;
}

/* Whether the string `msg_id` is a valid msg_id. NULL is not. Reads at most
 * IDRULE_MSG_ID_MAX + 1 bytes. */
static inline bool
idrule_msg_id_valid(const char *msg_id)
{
	size_t n = msg_id != NULL ? strnlen(msg_id, IDRULE_MSG_ID_MAX + 1) : 0;

	if (n == 0 || n > IDRULE_MSG_ID_MAX) {
		return false;
	}
	for (size_t i = 0; i < n; i++) {
		if (!idrule_msg_id_char((unsigned char) msg_id[i])) {
			return false;
		}
	}
	return true;
}

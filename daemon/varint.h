/*
 * varint: protobuf base-128 varints, for the places that read or write protobuf bytes by
 * hand (wire's string walk, query's Item scan and request parsing, digest's compact values
 * and log). Pure, header-only.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The most bytes a varint of a uint64_t takes. */
#define VARINT_MAX 10

/* Write `v` at `p` (room for VARINT_MAX bytes). Returns the bytes written. */
static inline size_t
varint_put(uint8_t *p, uint64_t v)
{
	size_t n = 0;

	while (v >= 0x80) {
		p[n++] = (uint8_t) (v | 0x80);
		v >>= 7;
	}
	p[n++] = (uint8_t) v;
	return n;
}

/* Read a varint at buf[*pos], below len, and move *pos past it. Returns false when it is
 * truncated or longer than 64 bits' worth (then *pos is somewhere inside it). */
static inline bool
varint_get(const uint8_t *buf, size_t len, size_t *pos, uint64_t *ret)
{
	uint64_t v = 0;

	for (unsigned shift = 0; shift < 64 && *pos < len; shift += 7) {
		uint8_t b = buf[(*pos)++];
		v |= (uint64_t) (b & 0x7f) << shift;
		if (!(b & 0x80)) {
			*ret = v;
			return true;
		}
	}
	return false;
}

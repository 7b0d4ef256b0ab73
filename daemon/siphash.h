/*
 * siphash: SipHash-2-4 (Aumasson and Bernstein, "SipHash: a fast short-input PRF", 2012),
 * 64-bit output, for the places that hash short keys: limiter's table (a random key, so
 * that senders cannot choose colliding ids) and store's index keys (a fixed key, so that
 * every build and tool finds the same entry). Pure, header-only.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>

/* The little-endian u64 at p (a SipHash key's halves, and its message words). */
static inline uint64_t
siphash_le64(const uint8_t *p)
{
	uint64_t x = 0;

	for (unsigned i = 0; i < 8; i++) {
		x |= (uint64_t) p[i] << (8 * i);
	}
	return x;
}

static inline uint64_t
siphash_rotl(uint64_t x, unsigned b)
{
	return (x << b) | (x >> (64 - b));
}

static inline void
siphash_round(uint64_t v[4])
{
	v[0] += v[1];
	v[1] = siphash_rotl(v[1], 13) ^ v[0];
	v[0] = siphash_rotl(v[0], 32);
	v[2] += v[3];
	v[3] = siphash_rotl(v[3], 16) ^ v[2];
	v[0] += v[3];
	v[3] = siphash_rotl(v[3], 21) ^ v[0];
	v[2] += v[1];
	v[1] = siphash_rotl(v[1], 17) ^ v[2];
	v[2] = siphash_rotl(v[2], 32);
}

/* SipHash-2-4 of `len` bytes at `in` under the key k[0] (its bytes 0-7, little-endian) and
 * k[1] (bytes 8-15). */
static inline uint64_t
siphash24(const uint64_t k[2], const uint8_t *in, size_t len)
{
	uint64_t v[4] = {
	        k[0] ^ UINT64_C(0x736f6d6570736575),
	        k[1] ^ UINT64_C(0x646f72616e646f6d),
	        k[0] ^ UINT64_C(0x6c7967656e657261),
	        k[1] ^ UINT64_C(0x7465646279746573),
	};
	size_t whole = len - len % 8;

	for (size_t i = 0; i < whole; i += 8) {
		uint64_t m = siphash_le64(in + i);
		v[3] ^= m;
		siphash_round(v);
		siphash_round(v);
		v[0] ^= m;
	}
	uint64_t last = (uint64_t) len << 56;
	for (size_t i = 0; i < len % 8; i++) {
		last |= (uint64_t) in[whole + i] << (8 * i);
	}
	v[3] ^= last;
	siphash_round(v);
	siphash_round(v);
	v[0] ^= last;
	v[2] ^= 0xff;
	for (unsigned i = 0; i < 4; i++) {
		siphash_round(v);
	}
	return v[0] ^ v[1] ^ v[2] ^ v[3];
}

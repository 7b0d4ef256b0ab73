/*
 * libFuzzer target for the decoder of the digest table's stored values (daemon/digest.c,
 * store schema 3): the value of one aggregate as it sits in the store, which a damaged or
 * hostile file may hold. digest_value_decode() must answer 0 or -EBADMSG (or -ENOMEM) for
 * any bytes without reading outside them. Besides the sanitizers it traps when a decoded
 * value breaks the format's promises: it must encode again (digest_value_encode()), that
 * encoding must not be longer than the input (it drops unused codes and long varints), and
 * it must decode and encode to the same bytes (the format is canonical).
 *
 * Run: build-fuzz/tests/fuzz/fuzz_aggregate tests/fuzz/corpus/aggregate
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "digest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	Coord__V1__Aggregate *a = NULL, *b = NULL;
	uint8_t *one = NULL, *two = NULL;
	size_t one_len = 0, two_len = 0;
	int r = digest_value_decode(data, size, &a);

	if (r == -EBADMSG || r == -ENOMEM) {
		return 0;
	}
	if (r != 0 || a->n_lines == 0) {
		__builtin_trap();
	}
	if (digest_value_encode(a, &one, &one_len) != 0 || one_len > size) {
		__builtin_trap();
	}
	if (digest_value_decode(one, one_len, &b) != 0 ||
	    digest_value_encode(b, &two, &two_len) != 0 || two_len != one_len ||
	    memcmp(one, two, one_len) != 0) {
		__builtin_trap();
	}
	digest_value_free(a);
	digest_value_free(b);
	free(one);
	free(two);
	return 0;
}

/*
 * digest_helpers.h: the names test_digest.c and test_digest_live.c share for the digest's
 * scopes, windows and clock, so the two suites build their stores and ask for their digests
 * in the same terms. Test code only.
 */
#pragma once

#include <stdint.h>

#include "digest.h"

#define MIB (UINT64_C(1) << 20)
/* The digest's bucket: a UTC hour. */
#define H DIGEST_HOUR_MS
/* The tests' clock: 2024-03-01T10:00:00Z, a whole hour. */
#define T0 INT64_C(1709287200000)

/* Scope kinds. */
#define ALL COORD__V1__SCOPE_KIND__SCOPE_KIND_ALL
#define COUNCIL COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNCIL
#define COUNTRY COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNTRY

/* Windows. */
#define W_ALL COORD__V1__WINDOW__WINDOW_ALL
#define W_24H COORD__V1__WINDOW__WINDOW_LAST_24H
#define W_1H COORD__V1__WINDOW__WINDOW_LAST_1H
#define W_RANGE COORD__V1__WINDOW__WINDOW_RANGE

#define ACCEPTED COORD__V1__ACK_STATUS__ACK_STATUS_ACCEPTED

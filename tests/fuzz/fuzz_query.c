/*
 * libFuzzer target for the query socket's request parser, query_parse_request(): the size
 * limit, the decode and every check a request passes before the broker computes an answer
 * (scope, council and country ids, windows and ranges, msg_id length). As with the
 * envelope, protobuf-c itself is not instrumented: coverage comes from query.c and iso.c.
 *
 * Besides the sanitizers, it traps when a promise of query.h breaks: a refusal has a
 * non-empty NUL-terminated sentence of valid UTF-8 (it goes into QueryResponse.error, a
 * proto3 string), a request that passes names a known body and the fields its answer reads
 * are set and within their limits, and query_request_done() leaves nothing behind.
 *
 * Run: build-fuzz/tests/fuzz/fuzz_query -max_len=8192 tests/fuzz/corpus/query
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "iso.h"
#include "query.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check(int ok)
{
	if (!ok) {
		__builtin_trap();
	}
}

static int
council_id_ok(const char *id)
{
	size_t n = strlen(id);

	if (n == 0 || n > WIRE_COUNCIL_MAX) {
		return 0;
	}
	for (size_t i = 0; i < n; i++) {
		char c = id[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      (i > 0 && (c == '_' || c == '-')))) {
			return 0;
		}
	}
	return 1;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct query_request qr;
	char err[QUERY_ERROR_MAX];

	memset(err, 0x5A, sizeof(err));
	int r = query_parse_request(data, size, &qr, err);

	if (r < 0) {
		check(r == -E2BIG || r == -EBADMSG || r == -EINVAL);
		size_t n = strnlen(err, sizeof(err));
		check(n > 0 && n < sizeof(err));
		check(wire_utf8_valid(err, n));
		check(r != -E2BIG || size > QUERY_REQUEST_MAX);
		check(r != -EBADMSG || (qr.msg == NULL && qr.request_id == 0));
		check(r != -E2BIG || qr.msg == NULL);
	} else {
		check(r == 0 && qr.msg != NULL && size <= QUERY_REQUEST_MAX);
		check(qr.request_id == qr.msg->request_id);
		switch (qr.body) {
		case COORD__V1__QUERY_REQUEST__BODY_DIGEST:
			check(qr.scope_id != NULL);
			switch (qr.scope_kind) {
			case COORD__V1__SCOPE_KIND__SCOPE_KIND_ALL:
				check(qr.scope_id[0] == '\0');
				break;
			case COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNCIL:
				check(council_id_ok(qr.scope_id));
				break;
			case COORD__V1__SCOPE_KIND__SCOPE_KIND_COUNTRY:
				check(iso_country_valid(qr.scope_id));
				break;
			default:
				check(0);
			}
			check(qr.window != COORD__V1__WINDOW__WINDOW_UNSPECIFIED);
			if (qr.window == COORD__V1__WINDOW__WINDOW_RANGE) {
				check(qr.msg->digest->start >= 0 &&
				      qr.msg->digest->end > qr.msg->digest->start);
			}
			break;
		case COORD__V1__QUERY_REQUEST__BODY_HISTORY:
			check(qr.council == NULL || council_id_ok(qr.council));
			break;
		case COORD__V1__QUERY_REQUEST__BODY_STATUS: {
			check(qr.council != NULL && council_id_ok(qr.council));
			check(qr.msg_id != NULL);
			size_t n = strlen(qr.msg_id);
			check(n >= 1 && n <= WIRE_MSG_ID_MAX);
			break;
		}
		case COORD__V1__QUERY_REQUEST__BODY_STATS:
			break;
		default:
			check(0);
		}
	}
	query_request_done(&qr);
	check(qr.msg == NULL);
	query_request_done(&qr);
	return 0;
}

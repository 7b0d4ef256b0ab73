/*
 * hqlib: shared command-line pieces of the headquarters tools (see hqlib.h).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <zmq.h>

#include "coordd-version.h"
#include "hqlib.h"
#include "keyopt.h"

int
hq_usage_verror(const char *prog, const char *fmt, va_list ap)
{
	fprintf(stderr, "%s: ", prog);
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\nTry '%s --help'.\n", prog);
	return HQ_EXIT_USAGE;
}

static int usage_error(const char *prog, const char *fmt, ...)
        __attribute__((format(printf, 2, 3)));

static int
usage_error(const char *prog, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	int r = hq_usage_verror(prog, fmt, ap);
	va_end(ap);
	return r;
}

int
hq_common_option(const char *prog, int opt, const char *arg, double *timeout, void (*help)(void))
{
	char *end;

	switch (opt) {
	case 't':
		*timeout = strtod(arg, &end);
		if (*end || !(*timeout > 0 && *timeout <= 3600)) {
			return usage_error(prog, "bad --timeout '%s': use seconds, above 0", arg);
		}
		return HQ_OPTION_HANDLED;
	case 'h':
		help();
		return 0;
	case HQ_OPT_VERSION:
		printf("%s %s\n", prog, COORDD_VERSION);
		return 0;
	default:
		fprintf(stderr, "Try '%s --help'.\n", prog);
		return HQ_EXIT_USAGE;
	}
}

int64_t
hq_mono_ms(void)
{
	struct timespec ts;

	(void) clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Receive one message; decode it when it is a single frame of at most `max` bytes. */
static Coord__V1__QueryResponse *
recv_response(void *sock, size_t max)
{
	zmq_msg_t msg;
	(void) zmq_msg_init(&msg);
	if (zmq_msg_recv(&msg, sock, 0) < 0) {
		(void) zmq_msg_close(&msg);
		return NULL;
	}
	bool more = zmq_msg_more(&msg);
	Coord__V1__QueryResponse *resp = NULL;
	if (!more && zmq_msg_size(&msg) <= max) {
		resp = coord__v1__query_response__unpack(NULL, zmq_msg_size(&msg),
		                                         zmq_msg_data(&msg));
	}
	while (more) {
		/* Not an answer of ours (one frame): skip the rest of it. */
		if (zmq_msg_recv(&msg, sock, 0) < 0) {
			break;
		}
		more = zmq_msg_more(&msg);
	}
	(void) zmq_msg_close(&msg);
	return resp;
}

int
hq_ask(const struct hq_query *q, const Coord__V1__QueryRequest *req,
       Coord__V1__QueryResponse **ret_resp)
{
	size_t size = coord__v1__query_request__get_packed_size(req);
	uint8_t *buf = malloc(size ? size : 1);
	if (!buf) {
		fprintf(stderr, "%s: out of memory\n", q->prog);
		return HQ_EXIT_BROKER;
	}
	(void) coord__v1__query_request__pack(req, buf);
	int r = zmq_send(q->sock, buf, size, 0);
	free(buf);
	if (r < 0) {
		fprintf(stderr, "%s: cannot send to %s: %s\n", q->prog, q->endpoint,
		        zmq_strerror(zmq_errno()));
		return HQ_EXIT_UNREACHABLE;
	}

	int64_t deadline = hq_mono_ms() + (int64_t) (q->timeout * 1000);
	for (;;) {
		int64_t left = deadline - hq_mono_ms();
		zmq_pollitem_t items[2] = {
		        {.socket = q->sock, .events = ZMQ_POLLIN},
		        {.socket = q->mon, .events = ZMQ_POLLIN},
		};
		int n = left > 0 ? zmq_poll(items, 2, (long) left) : 0;
		if (n < 0 && zmq_errno() == EINTR) {
			if (q->stop && *q->stop) {
				return -EINTR;
			}
			continue;
		}
		if (n <= 0) {
			fprintf(stderr,
			        "%s: no answer from the query socket %s within %g s: is coordd "
			        "running, and is this its query endpoint?%s\n",
			        q->prog, q->endpoint, q->timeout,
			        q->curve ? " Is --server-key the broker's public key?" : "");
			return HQ_EXIT_UNREACHABLE;
		}
		char why[KEYOPT_MESSAGE_MAX];
		if ((items[1].revents & ZMQ_POLLIN) &&
		    keyopt_handshake_failed(q->mon, q->curve, q->endpoint, why, sizeof(why))) {
			fprintf(stderr, "%s: %s\n", q->prog, why);
			return HQ_EXIT_UNREACHABLE;
		}
		if (!(items[0].revents & ZMQ_POLLIN)) {
			continue;
		}
		Coord__V1__QueryResponse *resp = recv_response(q->sock, q->answer_max);
		if (!resp) {
			continue;
		}
		if (resp->request_id != req->request_id) {
			/* An answer to an earlier request that timed out. */
			coord__v1__query_response__free_unpacked(resp, NULL);
			continue;
		}
		if (resp->body_case == COORD__V1__QUERY_RESPONSE__BODY_ERROR) {
			fprintf(stderr, "%s: the broker refused the request: %s\n", q->prog,
			        resp->error->message ? resp->error->message : "(no message)");
			coord__v1__query_response__free_unpacked(resp, NULL);
			return HQ_EXIT_BROKER;
		}
		*ret_resp = resp;
		return 0;
	}
}

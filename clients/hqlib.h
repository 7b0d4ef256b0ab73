/*
 * hqlib: what the headquarters tools (coordctl, coord-watch) share on their command line:
 * usage errors, the common options and a monotonic clock. Part of render_lib.
 */
#pragma once

#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coord.pb-c.h"

#define HQ_EXIT_BROKER 1      /* the broker answered with an error */
#define HQ_EXIT_USAGE 2       /* bad command line */
#define HQ_EXIT_UNREACHABLE 3 /* no answer within the timeout, or the key was refused */
#define HQ_OPTION_HANDLED -1  /* hq_common_option(): parsing goes on */
#define HQ_OPT_VERSION 0x100  /* getopt_long() value of --version */

/* Print "<prog>: <message>\nTry '<prog> --help'." to stderr. Returns HQ_EXIT_USAGE. */
int hq_usage_verror(const char *prog, const char *fmt, va_list ap)
        __attribute__((format(printf, 2, 0)));

/*
 * Handle a getopt_long() result that is common to the tools or not theirs: 't' (--timeout:
 * seconds in (0, 3600] into *timeout), 'h' (calls help()), HQ_OPT_VERSION (prints
 * "<prog> <version>") and anything else (an unknown option, already reported by getopt).
 * Returns HQ_OPTION_HANDLED when parsing goes on, or the status main() exits with.
 */
int hq_common_option(const char *prog, int opt, const char *arg, double *timeout,
                     void (*help)(void));

/* Milliseconds of CLOCK_MONOTONIC. */
int64_t hq_mono_ms(void);

/* A tool's connection to the query socket, for hq_ask(). */
struct hq_query {
	const char *prog;     /* for messages: "coordctl" */
	void *sock;           /* DEALER connected to `endpoint` */
	void *mon;            /* its monitor (keyopt_monitor()), read for refused handshakes */
	bool curve;           /* the socket uses keys */
	const char *endpoint; /* for messages */
	double timeout;       /* seconds to wait for the answer */
	size_t answer_max;    /* bigger frames are not decoded */
	/* May be NULL. When set while zmq_poll() is interrupted, hq_ask() returns -EINTR. */
	const volatile sig_atomic_t *stop;
};

/*
 * Send `req` (its request_id set by the caller) and wait for the one-frame answer with the
 * same request_id, skipping answers to earlier requests and anything that does not decode.
 * Returns 0 with *ret_resp (the caller frees it; never an error answer), HQ_EXIT_BROKER
 * after printing the broker's error answer, HQ_EXIT_UNREACHABLE after printing why (no
 * answer within the timeout, the key refused, the send failed), or -EINTR (see `stop`).
 */
int hq_ask(const struct hq_query *q, const Coord__V1__QueryRequest *req,
           Coord__V1__QueryResponse **ret_resp);

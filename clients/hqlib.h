/*
 * hqlib: what the headquarters tools (coordctl, coord-watch) share on their command line:
 * usage errors, the common options and a monotonic clock. Part of render_lib.
 */
#pragma once

#include <stdarg.h>
#include <stdint.h>

#define HQ_EXIT_USAGE 2      /* bad command line */
#define HQ_OPTION_HANDLED -1 /* hq_common_option(): parsing goes on */
#define HQ_OPT_VERSION 0x100 /* getopt_long() value of --version */

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

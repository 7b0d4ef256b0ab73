/*
 * hqlib: shared command-line pieces of the headquarters tools (see hqlib.h).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "coordd-version.h"
#include "hqlib.h"

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

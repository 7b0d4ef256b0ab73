/*
 * log: stderr records with sd-daemon priority prefixes.
 *
 * A record is formatted into one buffer and written with a single write(2), so records from
 * the loop and the writer thread never interleave. Records longer than the buffer are
 * truncated with "...". Timestamps (UTC, milliseconds) are added only when stderr is not
 * connected to the journal, which stamps records itself.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

static enum log_level log_max_level = LOG_LEVEL_INFO;
static bool log_timestamps = true;

void
log_set_level(enum log_level level)
{
	log_max_level = level;
}

enum log_level
log_get_level(void)
{
	return log_max_level;
}

enum log_level
log_level_from_string(const char *s)
{
	static const char *const names[] = {
	        [LOG_LEVEL_ERROR] = "error",   [LOG_LEVEL_WARNING] = "warning",
	        [LOG_LEVEL_NOTICE] = "notice", [LOG_LEVEL_INFO] = "info",
	        [LOG_LEVEL_DEBUG] = "debug",
	};

	for (int l = LOG_LEVEL_ERROR; l <= LOG_LEVEL_DEBUG; l++) {
		if (strcmp(s, names[l]) == 0) {
			return (enum log_level) l;
		}
	}
	return LOG_LEVEL_INVALID;
}

void
log_setup_from_env(void)
{
	log_timestamps = getenv("JOURNAL_STREAM") == NULL;
}

int
log_internal(enum log_level level, int error, const char *fmt, ...)
{
	if (level > log_max_level) {
		return error;
	}

	int saved_errno = errno;
	char buf[2048];
	size_t n = (size_t) snprintf(buf, sizeof(buf), "<%d>", (int) level);

	if (log_timestamps) {
		struct timespec ts;
		struct tm tm;

		(void) clock_gettime(CLOCK_REALTIME, &ts);
		(void) gmtime_r(&ts.tv_sec, &tm);
		n += strftime(buf + n, sizeof(buf) - n, "%Y-%m-%dT%H:%M:%S", &tm);
		n += (size_t) snprintf(buf + n, sizeof(buf) - n, ".%03ldZ ", ts.tv_nsec / 1000000);
	}

	va_list ap;
	va_start(ap, fmt);
	int r = vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
	va_end(ap);
	n = r < 0 ? n : n + (size_t) r;

	if (error < 0 && n < sizeof(buf)) {
		r = snprintf(buf + n, sizeof(buf) - n, ": %s", strerror(-error));
		n = r < 0 ? n : n + (size_t) r;
	}
	/* Keep room for the newline; mark truncation. */
	if (n >= sizeof(buf) - 1) {
		n = sizeof(buf) - 5;
		memcpy(buf + n, "...", 3);
		n += 3;
	}
	buf[n++] = '\n';
	(void) !write(STDERR_FILENO, buf, n);

	errno = saved_errno;
	return error;
}

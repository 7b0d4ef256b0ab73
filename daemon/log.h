/*
 * log: one line per record on stderr, prefixed with an sd-daemon priority ("<3>" .. "<7>")
 * so journald keeps the level. A timestamp is added only when stderr is not the journal
 * (JOURNAL_STREAM unset).
 *
 * The log level and whether to print timestamps are the only global state in coordd
 * besides command-line values. Thread-safe: each record is written with one write(2).
 */
#pragma once

#include <stdarg.h>
#include <stdbool.h>

enum log_level {
	LOG_LEVEL_ERROR = 3,
	LOG_LEVEL_WARNING = 4,
	LOG_LEVEL_NOTICE = 5,
	LOG_LEVEL_INFO = 6,
	LOG_LEVEL_DEBUG = 7,
	LOG_LEVEL_INVALID = -22,
};

/*
 * Set the most verbose level that is printed (default LOG_LEVEL_INFO).
 */
void log_set_level(enum log_level level);

enum log_level log_get_level(void);

/*
 * Parse "error", "warning", "notice", "info" or "debug". Returns LOG_LEVEL_INVALID for
 * anything else.
 */
enum log_level log_level_from_string(const char *s);

/*
 * Decide whether records carry a timestamp: yes unless JOURNAL_STREAM is set. Called once
 * by main; tests may skip it.
 */
void log_setup_from_env(void);

/*
 * Write one record at `level`. When `error` is negative, ": <strerror(-error)>" is appended.
 * Returns `error`, so callers can write `return log_error_errno(r, "...")`.
 */
int log_internal(enum log_level level, int error, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));

#define log_error(...) ((void) log_internal(LOG_LEVEL_ERROR, 0, __VA_ARGS__))
#define log_warning(...) ((void) log_internal(LOG_LEVEL_WARNING, 0, __VA_ARGS__))
#define log_notice(...) ((void) log_internal(LOG_LEVEL_NOTICE, 0, __VA_ARGS__))
#define log_info(...) ((void) log_internal(LOG_LEVEL_INFO, 0, __VA_ARGS__))
/* Debug records are formatted only when debug is on: some sit on per-message paths. */
#define log_debug(...)                                                                             \
	((void) (log_get_level() >= LOG_LEVEL_DEBUG                                                \
	                 ? log_internal(LOG_LEVEL_DEBUG, 0, __VA_ARGS__)                           \
	                 : 0))

#define log_error_errno(r, ...) log_internal(LOG_LEVEL_ERROR, (r), __VA_ARGS__)
#define log_warning_errno(r, ...) log_internal(LOG_LEVEL_WARNING, (r), __VA_ARGS__)
#define log_debug_errno(r, ...) log_internal(LOG_LEVEL_DEBUG, (r), __VA_ARGS__)

/*
 * inifile: the line reader that config.c and auth.c put in front of inih.
 *
 * inih as packaged gives its handler no line number, silently splits lines longer than its
 * buffer and knows nothing of sections that have no keys. inifile_parse() therefore feeds
 * inih one line at a time through its own reader, which:
 *   - counts lines (inih calls the handler for a line before it asks for the next one, so
 *     struct inifile.line is the handler's line too);
 *   - refuses a line longer than line_max - 1 bytes (newline included) and NUL bytes;
 *   - skips a UTF-8 byte order mark on line 1 and drops leading whitespace, so inih never
 *     sees a continuation line;
 *   - cuts an inline '#' comment (a '#' after a space or tab);
 *   - hands each "[section]" line to on_section before inih sees it.
 * Errors go to the caller through on_error; the reader ends the input once *failed is
 * negative. Non-logging module.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include <ini.h>

/* What a caller plugs in; static and constant in each caller. */
struct inifile_ops {
	size_t line_max;            /* inih's line buffer, in bytes with the NUL */
	const char *nul_message;    /* the error for a NUL byte */
	const char *syntax_message; /* the error for a line inih cannot parse */
	/* A "[..." line, left-trimmed, inline '#' comment cut; may modify it but must restore. */
	int (*on_section)(void *data, char *line);
	ini_handler on_key; /* one "key = value" pair; 0 on failure (recorded), else 1 */
	/* Records an error (line 0: not tied to a line) unless one is recorded; returns r. */
	int (*on_error)(void *data, unsigned line, int r, const char *message);
};

struct inifile {
	/* Input, set by the caller: exactly one of file and text. */
	FILE *file;
	const char *text;
	unsigned line; /* of the line last handed to inih: the handlers' line */

	/* Private to inifile.c. */
	bool eof;
	int r; /* a read error or a refused line */
	const struct inifile_ops *ops;
	void *data;
	int *failed;
	const unsigned *failed_line;
};

/*
 * Runs inih over ini's input, handing sections, keys and errors to ops with data.
 * failed and failed_line are the caller's first-error record (0 while none, and its line):
 * reading stops once *failed is negative, and a syntax error inih finds on an earlier line
 * replaces the recorded one (inih does not stop at it, so a later error may already be
 * recorded; *failed is cleared so that on_error takes the new one).
 * Returns 0 when the whole input was read without error, else the recorded negative errno.
 */
int inifile_parse(struct inifile *ini, const struct inifile_ops *ops, void *data, int *failed,
                  const unsigned *failed_line);

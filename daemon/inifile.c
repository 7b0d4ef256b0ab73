/*
 * inifile: inih's line reader for config.c and auth.c (see inifile.h).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <ini.h>

#include "inifile.h"

static bool
is_blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

static int
fail(struct inifile *ini, unsigned line, int r, const char *message)
{
	ini->r = r;
	return ini->ops->on_error(ini->data, line, r, message);
}

/* Returns the next byte of input, or EOF at the end or on a read error (recorded). */
static int
next_byte(struct inifile *ini)
{
	if (ini->text) {
		if (*ini->text == '\0') {
			return EOF;
		}
		return (unsigned char) *ini->text++;
	}
	int c = getc(ini->file);
	if (c == EOF && ferror(ini->file)) {
		int r = errno > 0 ? -errno : -EIO;
		char message[128];
		(void) snprintf(message, sizeof(message), "cannot read the file: %s", strerror(-r));
		(void) fail(ini, 0, r, message);
	}
	return c;
}

/* Cut the line at the first '#' that follows a space or tab: an inline comment. */
static void
cut_hash_comment(char *line)
{
	if (line[0] == '\0') {
		return;
	}
	for (char *s = line + 1; *s; s++) {
		if (*s == '#' && (s[-1] == ' ' || s[-1] == '\t')) {
			*s = '\0';
			return;
		}
	}
}

/*
 * inih's ini_reader: fgets() semantics (at most num - 1 bytes, newline included), one line
 * per call, so inih's line count stays equal to ours.
 */
static char *
read_line(char *str, int num, void *stream)
{
	struct inifile *ini = stream;

	if (ini->r < 0 || *ini->failed < 0 || ini->eof || num < 2) {
		return NULL;
	}

	/* The longest line we accept, in bytes with its newline: what both sides can hold. */
	size_t limit = (size_t) num - 1;
	if (limit > ini->ops->line_max - 1) {
		limit = ini->ops->line_max - 1;
	}

	size_t len = 0;
	int c = EOF;
	ini->line++;
	for (;;) {
		c = next_byte(ini);
		if (c == EOF) {
			break;
		}
		if (c == '\0') {
			(void) fail(ini, ini->line, -EINVAL, ini->ops->nul_message);
			return NULL;
		}
		if (len == limit) {
			char message[128];
			(void) snprintf(message, sizeof(message),
			                "line longer than %zu bytes (newline included): shorten it",
			                limit);
			(void) fail(ini, ini->line, -EINVAL, message);
			return NULL;
		}
		str[len++] = (char) c;
		if (c == '\n') {
			break;
		}
	}
	if (ini->r < 0 || *ini->failed < 0) {
		return NULL;
	}
	if (c == EOF) {
		ini->eof = true;
		if (len == 0) {
			ini->line--;
			return NULL;
		}
	}
	str[len] = '\0';

	/* A UTF-8 byte order mark is allowed at the very start; inih would skip it too. */
	char *start = str;
	if (ini->line == 1 && strncmp(start, "\xEF\xBB\xBF", 3) == 0) {
		start += 3;
	}
	/* No leading whitespace reaches inih, so it never sees a continuation line. */
	while (is_blank(*start) && *start != '\n') {
		start++;
	}
	if (start != str) {
		memmove(str, start, strlen(start) + 1);
	}

	if (str[0] == ';' || str[0] == '#') {
		return str;
	}
	cut_hash_comment(str);
	if (str[0] == '[' && ini->ops->on_section(ini->data, str) < 0) {
		return NULL;
	}
	return str;
}

int
inifile_parse(struct inifile *ini, const struct inifile_ops *ops, void *data, int *failed,
              const unsigned *failed_line)
{
	ini->ops = ops;
	ini->data = data;
	ini->failed = failed;
	ini->failed_line = failed_line;

	/*
	 * inih returns the line of its first error, which is either ours (the handler failed
	 * there) or a line that is neither "[section]" nor "key = value". inih does not stop at
	 * the latter, so a later error of ours may already be recorded: the earlier line wins.
	 */
	int r = ini_parse_stream(read_line, ini, ops->on_key, data);
	if (r > 0 && (*failed == 0 || (unsigned) r < *failed_line)) {
		*failed = 0;
		return ops->on_error(data, (unsigned) r, -EINVAL, ops->syntax_message);
	}
	if (*failed < 0) {
		return *failed;
	}
	if (r == -2) {
		return ops->on_error(data, 0, -ENOMEM, "out of memory");
	}
	if (r < 0) {
		return ops->on_error(data, 0, -EIO, "cannot parse the file");
	}
	return 0;
}

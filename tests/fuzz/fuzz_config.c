/*
 * libFuzzer target for the two INI parsers of operator files: the daemon's config
 * (config_parse_string) and the key allowlist (auth_keys_parse_string), both on inifile.
 * The first byte picks the parser; the rest is the file's text. Whatever the bytes, a parse
 * either succeeds with an object that is freed, or fails with a message that is a
 * NUL-terminated string naming a line within the text.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The line an error names must exist in the text (0: no line). */
static void
check_line(unsigned line, const char *text)
{
	unsigned lines = 1;

	for (const char *p = text; *p; p++) {
		lines += *p == '\n';
	}
	if (line > lines) {
		__builtin_trap();
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0) {
		return 0;
	}
	char *text = malloc(size);
	if (!text) {
		return 0;
	}
	/* The text ends at the first NUL, as a file read by the daemon would be refused there. */
	memcpy(text, data + 1, size - 1);
	text[size - 1] = 0;

	if (data[0] & 1) {
		struct auth_keys *keys = NULL;
		struct auth_error err = {0};

		if (auth_keys_parse_string(text, "fuzz", &keys, &err) >= 0) {
			keys = auth_keys_unref(keys);
		} else {
			check_line(err.line, text);
			if (strnlen(err.message, sizeof(err.message)) == sizeof(err.message)) {
				__builtin_trap();
			}
		}
	} else {
		struct config *c = NULL;
		struct config_error err = {0};

		if (config_parse_string(text, "fuzz", &c, &err) >= 0) {
			c = config_unref(c);
		} else {
			check_line(err.line, text);
			if (strnlen(err.message, sizeof(err.message)) == sizeof(err.message)) {
				__builtin_trap();
			}
		}
	}
	free(text);
	return 0;
}

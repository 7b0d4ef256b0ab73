/*
 * pbjson_tool: a line-oriented driver of clients/libcoord/pbjson.c for the Python
 * cross-check (tests/integration/test_pbjson_python.py) and for trying the mapping by hand.
 *
 *   pbjson_tool to-json TYPE      each input line: a TYPE message's bytes in hex;
 *                                 output line: its compact JSON
 *   pbjson_tool from-json TYPE    each input line: JSON text; output line: the decoded
 *                                 message packed, in hex
 *   pbjson_tool round-trip TYPE   each input line: JSON text; output line: decoded and
 *                                 encoded again, compact
 *
 * TYPE is a coord.v1 message name ("Envelope"). A line that fails gives "ERR <reason>" and
 * the tool goes on with the next one, so one process serves a whole batch. Exit status: 0
 * after all input, 2 for bad usage, 1 on a read or allocation failure.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "coord.pb-c.h"
#include "pbjson.h"

static const ProtobufCMessageDescriptor *const types[] = {
        &coord__v1__envelope__descriptor,
        &coord__v1__event__descriptor,
        &coord__v1__outreach_letter__descriptor,
        &coord__v1__statement__descriptor,
        &coord__v1__petition__descriptor,
        &coord__v1__media_report__descriptor,
        &coord__v1__retraction__descriptor,
        &coord__v1__ack__descriptor,
        &coord__v1__item__descriptor,
        &coord__v1__code_count__descriptor,
        &coord__v1__digest_line__descriptor,
        &coord__v1__scope__descriptor,
        &coord__v1__headline__descriptor,
        &coord__v1__digest__descriptor,
        &coord__v1__aggregate__descriptor,
        &coord__v1__publication__descriptor,
        &coord__v1__digest_set__descriptor,
        &coord__v1__digest_request__descriptor,
        &coord__v1__history_request__descriptor,
        &coord__v1__history_page__descriptor,
        &coord__v1__status_request__descriptor,
        &coord__v1__record_status__descriptor,
        &coord__v1__stats_request__descriptor,
        &coord__v1__stats__descriptor,
        &coord__v1__query_request__descriptor,
        &coord__v1__query_error__descriptor,
        &coord__v1__query_response__descriptor,
};

static int
hex_digit(char c)
{
	if (c >= '0' && c <= '9') {
		return c - '0';
	} else if (c >= 'a' && c <= 'f') {
		return c - 'a' + 10;
	} else if (c >= 'A' && c <= 'F') {
		return c - 'A' + 10;
	}
	return -1;
}

/* Bytes from hex, in place; returns the byte count or -EINVAL. */
static ssize_t
unhex(char *s, size_t len)
{
	uint8_t *out = (uint8_t *) s;

	if (len % 2 != 0) {
		return -EINVAL;
	}
	for (size_t i = 0; i < len; i += 2) {
		int hi = hex_digit(s[i]), lo = hex_digit(s[i + 1]);

		if (hi < 0 || lo < 0) {
			return -EINVAL;
		}
		out[i / 2] = (uint8_t) (hi << 4 | lo);
	}
	return (ssize_t) (len / 2);
}

static int
to_json(const ProtobufCMessageDescriptor *desc, char *line, size_t len)
{
	ssize_t n = unhex(line, len);
	ProtobufCMessage *msg;
	char *text;
	int r;

	if (n < 0) {
		return printf("ERR bad hex\n") < 0 ? -EIO : 0;
	}
	msg = protobuf_c_message_unpack(desc, NULL, (size_t) n, (const uint8_t *) line);
	if (msg == NULL) {
		return printf("ERR cannot unpack\n") < 0 ? -EIO : 0;
	}
	r = coord__pbjson_encode(msg, 0, &text);
	protobuf_c_message_free_unpacked(msg, NULL);
	if (r == -ENOMEM) {
		return r;
	} else if (r < 0) {
		return printf("ERR encode: %s\n", strerror(-r)) < 0 ? -EIO : 0;
	}
	r = printf("%s\n", text) < 0 ? -EIO : 0;
	free(text);
	return r;
}

static int
from_json(const ProtobufCMessageDescriptor *desc, const char *line, size_t len, bool again)
{
	ProtobufCMessage *msg;
	char err[512];
	uint8_t *buf;
	size_t size;
	int r = coord__pbjson_decode(desc, line, len, &msg, err, sizeof(err));

	if (r == -ENOMEM) {
		return r;
	} else if (r < 0) {
		return printf("ERR %s\n", err) < 0 ? -EIO : 0;
	}
	if (again) {
		char *text;

		r = coord__pbjson_encode(msg, 0, &text);
		protobuf_c_message_free_unpacked(msg, NULL);
		if (r == -ENOMEM) {
			return r;
		} else if (r < 0) {
			return printf("ERR encode: %s\n", strerror(-r)) < 0 ? -EIO : 0;
		}
		r = printf("%s\n", text) < 0 ? -EIO : 0;
		free(text);
		return r;
	}
	size = protobuf_c_message_get_packed_size(msg);
	buf = malloc(size + 1);
	if (buf == NULL) {
		protobuf_c_message_free_unpacked(msg, NULL);
		return -ENOMEM;
	}
	(void) protobuf_c_message_pack(msg, buf);
	protobuf_c_message_free_unpacked(msg, NULL);
	for (size_t i = 0; i < size; i++) {
		if (printf("%02x", buf[i]) < 0) {
			free(buf);
			return -EIO;
		}
	}
	free(buf);
	return printf("\n") < 0 ? -EIO : 0;
}

int
main(int argc, char **argv)
{
	const ProtobufCMessageDescriptor *desc = NULL;
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;
	int r = 0;

	if (argc != 3 || (strcmp(argv[1], "to-json") != 0 && strcmp(argv[1], "from-json") != 0 &&
	                  strcmp(argv[1], "round-trip") != 0)) {
		fprintf(stderr, "usage: %s to-json|from-json|round-trip TYPE\n", argv[0]);
		return 2;
	}
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		if (strcmp(types[i]->short_name, argv[2]) == 0) {
			desc = types[i];
		}
	}
	if (desc == NULL) {
		fprintf(stderr, "%s: unknown message type '%s'\n", argv[0], argv[2]);
		return 2;
	}
	while (r == 0 && (len = getline(&line, &cap, stdin)) >= 0) {
		if (len > 0 && line[len - 1] == '\n') {
			line[--len] = '\0';
		}
		if (strcmp(argv[1], "to-json") == 0) {
			r = to_json(desc, line, (size_t) len);
		} else {
			r = from_json(desc, line, (size_t) len, strcmp(argv[1], "round-trip") == 0);
		}
		if (r == 0 && fflush(stdout) != 0) {
			r = -EIO;
		}
	}
	free(line);
	if (r < 0 || ferror(stdin)) {
		fprintf(stderr, "%s: %s\n", argv[0], strerror(r < 0 ? -r : EIO));
		return 1;
	}
	return 0;
}

/*
 * libFuzzer target for coord-push's import readers (clients/coord-push-import.c): a whole
 * CSV or JSON Lines file, as `coord-push import` reads it, into checked records, without
 * the outbox or the network (push_import_check_buffer()). That covers libcsv's callbacks
 * and the row, header and line bookkeeping around them, coord_envelope_build() for each
 * CSV row, the proto3 JSON mapping (pbjson) and coord__envelope_complete() for each JSON
 * line, and the detection of reused msg_ids.
 *
 * The first byte picks the settings: bit 0 CSV (else JSON Lines), bit 1 a default
 * category (--category event), bit 2 ';' as the CSV delimiter; the rest is the file.
 * The clock is fixed, so a finding replays. Besides the sanitizers it traps when the
 * reader's promise breaks: a status of 0, EXIT_REJECTED or EXIT_ERROR, and never more
 * rows than lines.
 *
 * The target links coord-push.c itself (its main() renamed), so the options and helpers
 * are the real ones. Run: build-fuzz/tests/fuzz/fuzz_import tests/fuzz/corpus/import
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coord-push.h"

/* 2024-06-01T00:00:00Z, as in fuzz_envelope.c. */
#define FUZZ_NOW_MS INT64_C(1717200000000)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0) {
		return 0;
	}
	bool csv = data[0] & 1;
	arg_council = "council-de";
	arg_category = data[0] & 2 ? "event" : NULL;
	arg_delimiter = data[0] & 4 ? ';' : ',';

	const char *text = (const char *) data + 1;
	size_t len = size - 1;
	size_t rows = 0, bad = 0;
	int status = push_import_check_buffer(text, len, csv, FUZZ_NOW_MS, &rows, &bad);

	if (status != 0 && status != EXIT_REJECTED && status != EXIT_ERROR) {
		__builtin_trap();
	}
	if (status == 0) {
		size_t lines = 1;
		for (size_t i = 0; i < len; i++) {
			lines += text[i] == '\n';
		}
		if (rows > lines) {
			__builtin_trap();
		}
	}
	return 0;
}

/*
 * powercut-verify: run store_verify() (the daemon's own consistency check of the items and
 * the index) on a stopped store, for the power-loss test. Prints one line with what it
 * checked; exit status 0 when the store is consistent, 1 when it found problems, 2 when it
 * could not open or read the store.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "store.h"

static void
usage(FILE *f)
{
	fprintf(f, "Usage: powercut-verify STATE_DIR\n"
	           "Check a stopped coordd store with store_verify(): items 1..N without a gap,\n"
	           "each decodes and names its council, and the index matches the items.\n"
	           "Exit status: 0 consistent, 1 problems found, 2 the store did not open.\n");
}

int
main(int argc, char **argv)
{
	if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		usage(stdout);
		return 0;
	}
	if (argc != 2 || argv[1][0] == '-') {
		usage(stderr);
		return 2;
	}
	const struct store_options opts = {
	        .dir = argv[1],
	        .map_size = 1u << 20,
	        .map_size_max = 1u << 20,
	        .sync = true,
	        .read_only = true,
	};
	struct store *s = NULL;
	int r = store_open(&opts, &s);
	if (r < 0) {
		fprintf(stderr, "powercut-verify: cannot open the store in '%s': %s\n", argv[1],
		        strerror(-r));
		return 2;
	}
	struct store_verify_report rep;
	r = store_verify(s, NULL, NULL, &rep);
	s = store_free(s);
	printf("items %" PRIu64 " records %" PRIu64 " problems %" PRIu64 "%s%s\n", rep.items,
	       rep.records, rep.problems, rep.problems ? " first: " : "", rep.first_problem);
	if (r == -EBADMSG) {
		return 1;
	}
	if (r < 0) {
		fprintf(stderr, "powercut-verify: cannot read the store in '%s': %s\n", argv[1],
		        strerror(-r));
		return 2;
	}
	return 0;
}

/*
 * coordctl-store: the coordctl commands that work on a state directory directly rather than
 * over the query socket: backup, verify and repair (see coordctl --help and
 * docs/OPERATIONS.md). LMDB lets them read beside a running broker; repair writes and so
 * needs the broker stopped.
 */
#pragma once

#include <stdbool.h>

/* Exit status when the state directory cannot be used (no store there, the broker holds
 * it for repair, a destination that is not empty, an I/O error). */
#define COORDCTL_EXIT_STORE 4

/* Whether `cmd` is one of these commands. */
bool coordctl_store_command(const char *cmd);

/*
 * Run the command argv[0] (one for which coordctl_store_command() is true) with its
 * options and arguments; getopt's optind must be 0. Returns the exit status: 0 success;
 * 1 verify found problems, or repair left some; 2 bad usage; COORDCTL_EXIT_STORE.
 */
int coordctl_store_main(int argc, char **argv);

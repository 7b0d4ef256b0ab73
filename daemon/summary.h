/*
 * summary: what a Digest carries beside the lines of its aggregate (docs/PROTOCOL.md,
 * "Digests").
 *
 * Every line gets its distinct counts (distinct_countries, distinct_languages,
 * distinct_councils: the lengths of its CodeCount lists). The digest gets a total line (all
 * lines together) and one line per category present, whose distinct counts are exact unions
 * of the lines' lists, never sums ("4,700 letters by 11 coordinating councils" counts a
 * council that wrote to two kinds of recipients once). The lines go out with their
 * CodeCount lists (query answers) or without them (published digests: a digest/all/ set
 * with its lists was 25-43 KB, too many bytes for a thousand subscribers every 10 ms).
 *
 * A summary holds shallow copies of the lines: it points into them, so they must outlive
 * it, and it never changes them. Pure, any thread.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "coord.pb-c.h"

struct summary;

/*
 * Summarise `n` lines (each list sorted by strcmp(), as the aggregates keep them; borrowed
 * until summary_free()); `lists` keeps their CodeCount lists in the copies. Returns 0 and
 * *ret_summary, or -ENOMEM.
 */
int summary_new(Coord__V1__DigestLine *const *lines, size_t n, bool lists,
                struct summary **ret_summary);

/* Point `digest`'s lines, total and categories at the summary's (valid until
 * summary_free()). */
void summary_apply(const struct summary *s, Coord__V1__Digest *digest);

/* Free. Accepts NULL. Returns NULL. */
struct summary *summary_free(struct summary *s);

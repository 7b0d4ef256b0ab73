/*
 * iso: the code tables records are checked against: ISO 3166-1 alpha-2 country codes
 * (the officially assigned ones) and ISO 639-1 language codes, and the BCP 47 tag syntax.
 *
 * Pure functions over static tables; thread-safe; non-logging.
 */
#pragma once

#include <stdbool.h>

/*
 * True when `cc` is an officially assigned ISO 3166-1 alpha-2 code. Exactly two upper-case
 * ASCII letters; "de" or "DEU" are false.
 */
bool iso_country_valid(const char *cc);

/*
 * Check a BCP 47 language tag (RFC 5646 syntax: primary subtag, then subtags of 1-8
 * alphanumerics separated by '-', at most 35 bytes in all) whose primary subtag is either
 * an ISO 639-1 code (two letters, checked against the table) or a three-letter ISO 639-2/3
 * code (checked for shape only). Case-insensitive.
 *
 * On success returns 0 and writes the primary subtag in lower case, NUL-terminated, to
 * ret_primary (4 bytes: "en", "hyw"); that is what digests count. Returns -EINVAL for
 * anything else, leaving ret_primary untouched. ret_primary may be NULL.
 */
int iso_language_primary(const char *tag, char ret_primary[4]);

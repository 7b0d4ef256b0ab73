/*
 * wire-names: libcoord compiles the broker's own validation, daemon/wire.c and
 * daemon/iso.c, so that a record checked on the council's side passes the same rules the
 * broker applies (one source of truth, no drift), and the broker's key files,
 * daemon/authkey.c (coord_keys_load(), coord_keygen()). It does not link coordd-core:
 * these files are pure functions over libc, libzmq and the generated protobuf-c code.
 *
 * This header renames their external symbols into libcoord's internal namespace
 * (coord__*). meson passes it with `-include` when compiling those two files, and libcoord's
 * own files include it before "wire.h", "iso.h" or "auth.h". A new non-static function in
 * wire.c, iso.c or authkey.c needs a line here (tests/unit/test_libcoord_exports checks that
 * libcoord exports coord_* only).
 */
#pragma once

#define wire_unpack_envelope coord__wire_unpack_envelope
#define wire_unpack_envelope_with coord__wire_unpack_envelope_with
#define wire_validate_envelope coord__wire_validate_envelope
#define wire_echoable coord__wire_echoable
#define wire_utf8_valid coord__wire_utf8_valid
#define wire_pack_ack coord__wire_pack_ack
#define iso_country_valid coord__iso_country_valid
#define iso_language_primary coord__iso_language_primary
#define auth_key_decode coord__auth_key_decode
#define auth_keygen coord__auth_keygen
#define auth_read_secret_key coord__auth_read_secret_key
#define auth_read_public_key coord__auth_read_public_key

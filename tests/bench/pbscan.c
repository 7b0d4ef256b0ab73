/*
 * pbscan: one top-level field of a protobuf message, read without unpacking it.
 *
 * The ceiling servers must answer with an Ack the councils can match, without decoding the
 * Envelope (decoding is part of what coordd does and the ceilings do not); the subscribers
 * read first_seq and last_seq of each Publication without unpacking its DigestSet, which a
 * thousand subscribers could not afford on two cores. Both need only a walk over the
 * top-level tags (protobuf encoding: tag = field << 3 | wire type).
 */
#include <errno.h>
#include <string.h>

#include "bench.h"
#include "daemon/varint.h"

enum {
	WIRE_VARINT = 0,
	WIRE_I64 = 1,
	WIRE_LEN = 2,
	WIRE_I32 = 5,
};

/* daemon/varint.h's reader over a pointer that moves past the varint. */
static int
varint(const uint8_t **p, const uint8_t *end, uint64_t *ret)
{
	size_t pos = 0;

	if (!varint_get(*p, (size_t) (end - *p), &pos, ret)) {
		return -EBADMSG;
	}
	*p += pos;
	return 0;
}

/* Find `field`; on success *ret_type is its wire type and *p points at its payload. */
static int
find(const uint8_t *buf, size_t len, unsigned field, const uint8_t **ret_p, unsigned *ret_type)
{
	const uint8_t *p = buf, *end = buf + len;

	while (p < end) {
		uint64_t tag, n;
		if (varint(&p, end, &tag) < 0) {
			return -EBADMSG;
		}
		unsigned type = (unsigned) (tag & 7);
		if ((tag >> 3) == field) {
			*ret_p = p;
			*ret_type = type;
			return 0;
		}
		switch (type) {
		case WIRE_VARINT:
			if (varint(&p, end, &n) < 0) {
				return -EBADMSG;
			}
			break;
		case WIRE_I64:
			if (end - p < 8) {
				return -EBADMSG;
			}
			p += 8;
			break;
		case WIRE_LEN:
			if (varint(&p, end, &n) < 0 || n > (uint64_t) (end - p)) {
				return -EBADMSG;
			}
			p += n;
			break;
		case WIRE_I32:
			if (end - p < 4) {
				return -EBADMSG;
			}
			p += 4;
			break;
		default:
			return -EBADMSG;
		}
	}
	return -ENOENT;
}

int
bench_pb_bytes(const uint8_t *buf, size_t len, unsigned field, const uint8_t **ret_ptr,
               size_t *ret_len)
{
	const uint8_t *p, *end = buf + len;
	unsigned type;
	uint64_t n;
	int r = find(buf, len, field, &p, &type);

	if (r < 0) {
		return r;
	}
	if (type != WIRE_LEN || varint(&p, end, &n) < 0 || n > (uint64_t) (end - p)) {
		return -EBADMSG;
	}
	*ret_ptr = p;
	*ret_len = (size_t) n;
	return 0;
}

int
bench_pb_varint(const uint8_t *buf, size_t len, unsigned field, uint64_t *ret_value)
{
	const uint8_t *p;
	unsigned type;
	uint64_t v;
	int r = find(buf, len, field, &p, &type);

	if (r < 0) {
		return r;
	}
	if (type != WIRE_VARINT || varint(&p, buf + len, &v) < 0) {
		return -EBADMSG;
	}
	*ret_value = v;
	return 0;
}

int
bench_ack_encode(const uint8_t *msg_id, size_t msg_id_len, uint64_t seq, uint8_t *buf, size_t cap)
{
	/* Tags: msg_id 1 (len), revision 2, status 3, seq 4 (varints); at most 10 bytes each. */
	if (cap < msg_id_len + 1 + 10 + 2 + 2 + 1 + 10) {
		return -ENOBUFS;
	}
	size_t n = 0;
	buf[n++] = 1 << 3 | WIRE_LEN;
	n += varint_put(buf + n, msg_id_len);
	memcpy(buf + n, msg_id, msg_id_len);
	n += msg_id_len;
	buf[n++] = 2 << 3 | WIRE_VARINT;
	buf[n++] = 1;
	buf[n++] = 3 << 3 | WIRE_VARINT;
	buf[n++] = 1; /* ACK_STATUS_ACCEPTED */
	buf[n++] = 4 << 3 | WIRE_VARINT;
	n += varint_put(buf + n, seq);
	return (int) n;
}

/*
 * misc: libcoord's names and messages (errors, statuses, reasons, version).
 *
 * Everything here returns static strings: thread-safe, nothing to free.
 */
#include <errno.h>
#include <string.h>

#include "coord.h"
#include "coord.pb-c.h"

const char *
coord_strerror(int err)
{
	if (err < 0) {
		err = -err;
	}
	switch (err) {
	case 0:
		return "success";
	case EINVAL:
		return "invalid argument or record";
	case EXDEV:
		return "the outbox belongs to another council";
	case EBUSY:
		return "the outbox is in use by another client";
	case EPROTO:
		return "the outbox was written by an incompatible version of libcoord";
	case ENOSPC:
		return "the outbox is full (outbox_max_bytes) or the disk is full";
	case EMSGSIZE:
		return "the record is too large";
	case ETIMEDOUT:
		return "timed out waiting for the broker's answers";
	case ENOTCONN:
		return "the client is offline (COORD_OFFLINE): records are not sent";
	default:
		break;
	}
	const char *s = strerrordesc_np(err);
	return s != NULL ? s : "unknown error";
}

const char *
coord_status_name(int status)
{
	switch (status) {
	case COORD_STATUS_ACCEPTED:
		return "ACCEPTED";
	case COORD_STATUS_DUPLICATE:
		return "DUPLICATE";
	case COORD_STATUS_REJECTED:
		return "REJECTED";
	case COORD_STATUS_RETRY_LATER:
		return "RETRY_LATER";
	default:
		return "UNKNOWN";
	}
}

const char *
coord_reason_name(int reason)
{
	const ProtobufCEnumValue *v =
	        protobuf_c_enum_descriptor_get_value(&coord__v1__reason__descriptor, reason);
	if (v == NULL) {
		return "UNKNOWN";
	}
	static const char prefix[] = "REASON_";
	if (strncmp(v->name, prefix, sizeof(prefix) - 1) == 0) {
		return v->name + sizeof(prefix) - 1;
	}
	return v->name;
}

const char *
coord_version(void)
{
	return COORD_VERSION_STRING;
}

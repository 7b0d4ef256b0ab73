/*
 * broker: what the broker under test tells about itself.
 *
 * /proc/<pid>/stat      utime + stime (fields 14 and 15) in clock ticks
 * /proc/<pid>/status    VmHWM (peak resident set) and VmRSS
 * /proc/<pid>/smaps_rollup  Private_Clean + Private_Dirty + Private_Hugetlb: the resident
 *                       pages no other process maps. That includes the pages of the LMDB
 *                       file the broker alone has touched (file-backed, clean, reclaimable),
 *                       so the same sum for the mapping of .../data.mdb, read from
 *                       /proc/<pid>/smaps, is reported beside it to be subtracted.
 * StatsRequest          on the query socket: counters since start (accepted, batches, ...)
 * GET /metrics          coordd_batch_size_messages_{sum,count}, coordd_commit_seconds_sum,
 *                       coordd_digest_log_contributions and coordd_digest_log_limit
 * /proc/meminfo         Dirty + Writeback: what the kernel has not yet written back
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <zmq.h>

#include "bench.h"
#include "coord.pb-c.h"

#define BENCH_ASK_TIMEOUT_MS 5000

static long
private_of(FILE *f, const char *mapping_suffix)
{
	char line[512];
	long sum = -1, kib;
	bool in = mapping_suffix == NULL;

	while (fgets(line, sizeof(line), f)) {
		/* A mapping's header line starts with its address range "start-end ". */
		char *sp = strchr(line, ' ');
		if (mapping_suffix && sp && strchr(line, '-') && strchr(line, '-') < sp) {
			size_t len = strlen(line), slen = strlen(mapping_suffix);
			while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == ' ')) {
				line[--len] = 0;
			}
			in = len >= slen && strcmp(line + len - slen, mapping_suffix) == 0;
			continue;
		}
		if (in && (sscanf(line, "Private_Clean: %ld kB", &kib) == 1 ||
		           sscanf(line, "Private_Dirty: %ld kB", &kib) == 1 ||
		           sscanf(line, "Private_Hugetlb: %ld kB", &kib) == 1)) {
			sum = (sum < 0 ? 0 : sum) + kib;
		}
	}
	return sum;
}

void
bench_usage_read(pid_t pid, bool smaps, struct bench_usage *ret_usage)
{
	struct bench_usage u = {-1, -1, -1, -1, -1};
	char path[64], line[512];
	FILE *f;

	if (pid <= 0) {
		*ret_usage = u;
		return;
	}
	(void) snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
	f = fopen(path, "re");
	if (f) {
		unsigned long ut, st;
		/* Fields 14 and 15 follow the ')' that closes the command name. */
		if (fgets(line, sizeof(line), f)) {
			char *p = strrchr(line, ')');
			if (p &&
			    sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
			           &ut, &st) == 2) {
				u.cpu_seconds = (double) (ut + st) / (double) sysconf(_SC_CLK_TCK);
			}
		}
		(void) fclose(f);
	}
	(void) snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
	f = fopen(path, "re");
	if (f) {
		while (fgets(line, sizeof(line), f)) {
			(void) sscanf(line, "VmHWM: %ld kB", &u.hwm_kib);
			(void) sscanf(line, "VmRSS: %ld kB", &u.rss_kib);
		}
		(void) fclose(f);
	}
	if (smaps) {
		(void) snprintf(path, sizeof(path), "/proc/%d/smaps_rollup", (int) pid);
		f = fopen(path, "re");
		if (f) {
			u.private_kib = private_of(f, NULL);
			(void) fclose(f);
		}
		(void) snprintf(path, sizeof(path), "/proc/%d/smaps", (int) pid);
		f = fopen(path, "re");
		if (f) {
			u.lmdb_private_kib = private_of(f, "/data.mdb");
			if (u.lmdb_private_kib < 0 && u.private_kib >= 0) {
				u.lmdb_private_kib = 0; /* no such mapping resident */
			}
			(void) fclose(f);
		}
	}
	*ret_usage = u;
}

static int
ask_stats(void *zctx, const char *endpoint, struct bench_broker_stats *st)
{
	Coord__V1__QueryRequest req = COORD__V1__QUERY_REQUEST__INIT;
	Coord__V1__StatsRequest sreq = COORD__V1__STATS_REQUEST__INIT;
	uint8_t out[64], in[4096];
	int linger = 0, timeout = BENCH_ASK_TIMEOUT_MS;
	void *sock = zmq_socket(zctx, ZMQ_DEALER);
	int r = 0;

	if (!sock) {
		return -zmq_errno();
	}
	(void) zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof(linger));
	(void) zmq_setsockopt(sock, ZMQ_RCVTIMEO, &timeout, sizeof(timeout));
	req.request_id = 1;
	req.body_case = COORD__V1__QUERY_REQUEST__BODY_STATS;
	req.stats = &sreq;
	size_t len = coord__v1__query_request__pack(&req, out);
	if (zmq_connect(sock, endpoint) < 0 || zmq_send(sock, out, len, 0) < 0) {
		r = -zmq_errno();
		goto out;
	}
	int n = zmq_recv(sock, in, sizeof(in), 0);
	if (n < 0) {
		r = zmq_errno() == EAGAIN ? -ETIMEDOUT : -zmq_errno();
		goto out;
	}
	Coord__V1__QueryResponse *resp = coord__v1__query_response__unpack(
	        NULL, (size_t) n < sizeof(in) ? (size_t) n : 0, in);
	if (!resp || resp->body_case != COORD__V1__QUERY_RESPONSE__BODY_STATS) {
		r = -EBADMSG;
	} else {
		const Coord__V1__Stats *s = resp->stats;
		st->have_stats = true;
		st->last_seq = s->last_seq;
		st->items = s->items;
		st->records = s->records;
		st->store_bytes = s->store_bytes;
		st->accepted = s->accepted;
		st->duplicate = s->duplicate;
		st->batches = s->batches;
	}
	coord__v1__query_response__free_unpacked(resp, NULL);
out:
	(void) zmq_close(sock);
	return r;
}

/* The value of the sample `name` (no labels) in a Prometheus text page, or -1. */
static double
sample(const char *page, const char *name)
{
	size_t len = strlen(name);

	for (const char *p = page; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
		if (strncmp(p, name, len) == 0 && p[len] == ' ') {
			return strtod(p + len + 1, NULL);
		}
	}
	return -1;
}

static int
ask_metrics(const char *addr, struct bench_broker_stats *st)
{
	char host[64], req[160];
	static char page[256 * 1024];
	const char *colon = strrchr(addr, ':');
	struct sockaddr_in sa = {.sin_family = AF_INET};
	size_t used = 0;
	int r = 0;

	if (!colon || (size_t) (colon - addr) >= sizeof(host)) {
		return -EINVAL;
	}
	memcpy(host, addr, (size_t) (colon - addr));
	host[colon - addr] = 0;
	sa.sin_port = htons((uint16_t) atoi(colon + 1));
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
		return -EINVAL;
	}
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		return -errno;
	}
	if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
		r = -errno;
		goto out;
	}
	int n = snprintf(req, sizeof(req),
	                 "GET /metrics HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", addr);
	if (write(fd, req, (size_t) n) != n) {
		r = -EIO;
		goto out;
	}
	for (;;) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		if (poll(&pfd, 1, BENCH_ASK_TIMEOUT_MS) <= 0) {
			r = -ETIMEDOUT;
			goto out;
		}
		ssize_t got = read(fd, page + used, sizeof(page) - 1 - used);
		if (got < 0) {
			r = -errno;
			goto out;
		}
		if (got == 0 || used + (size_t) got >= sizeof(page) - 1) {
			used += (size_t) got;
			break;
		}
		used += (size_t) got;
	}
	page[used] = 0;
	st->batch_sum = sample(page, "coordd_batch_size_messages_sum");
	st->batch_count = sample(page, "coordd_batch_size_messages_count");
	st->commit_sum = sample(page, "coordd_commit_seconds_sum");
	st->digest_log = sample(page, "coordd_digest_log_contributions");
	st->digest_log_limit = sample(page, "coordd_digest_log_limit");
	st->have_metrics = st->batch_sum >= 0 && st->batch_count >= 0;
	r = st->have_metrics ? 0 : -EBADMSG;
out:
	(void) close(fd);
	return r;
}

long
bench_dirty_kib(void)
{
	FILE *f = fopen("/proc/meminfo", "re");
	char line[256];
	long kib, dirty = -1, writeback = -1;

	if (!f) {
		return -1;
	}
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "Dirty: %ld kB", &kib) == 1) {
			dirty = kib;
		} else if (sscanf(line, "Writeback: %ld kB", &kib) == 1) {
			writeback = kib;
		}
	}
	(void) fclose(f);
	return dirty >= 0 && writeback >= 0 ? dirty + writeback : -1;
}

int
bench_broker_stats(void *zctx, const char *query_endpoint, const char *metrics_addr,
                   struct bench_broker_stats *ret_stats)
{
	struct bench_broker_stats st = {.digest_log = -1, .digest_log_limit = -1};
	int r = 0, q;

	if (query_endpoint) {
		q = ask_stats(zctx, query_endpoint, &st);
		r = r < 0 ? r : q;
	}
	if (metrics_addr) {
		q = ask_metrics(metrics_addr, &st);
		r = r < 0 ? r : q;
	}
	*ret_stats = st;
	return r;
}

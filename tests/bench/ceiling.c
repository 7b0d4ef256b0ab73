/*
 * ceiling: what the machine can do at most, measured beside coordd in the same run.
 *
 * Two servers, each one thread with its own libzmq context and ROUTER socket, answering
 * the councils' DEALERs exactly as coordd would (one Ack frame per Envelope, matched by
 * msg_id):
 *
 *   echo  drain every readable message (at most BENCH_LMDB_MAX_BATCH), then answer each at
 *         once: libzmq and the loopback alone;
 *   lmdb  drain the same way, append every Envelope with MDB_APPEND under the next seq in
 *         ONE write transaction, commit it with LMDB's default flush (the environment flags
 *         coordd uses with sync = full: MDB_NOTLS only, so each commit flushes twice), then
 *         answer them all. No decode, no validation, no index, no digest; the receive
 *         blocks while the commit flushes, since there is only this one thread.
 *
 * Neither unpacks an Envelope: the msg_id is read by pbscan and the Ack is encoded by
 * hand, so the councils' side costs the same against all three servers.
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <lmdb.h>
#include <zmq.h>

#include "bench.h"

struct bench_server {
	enum bench_server_kind kind;
	pthread_t thread;
	bool started;
	void *zctx;
	void *sock;
	char endpoint[PATH_MAX + 16];
	char dir[PATH_MAX]; /* the LMDB environment, or "" */
	char ipc_path[PATH_MAX];
	MDB_env *env;
	MDB_dbi dbi;
	bool stop;
	struct bench_server_stats stats;
	zmq_msg_t ids[BENCH_LMDB_MAX_BATCH];
	zmq_msg_t bodies[BENCH_LMDB_MAX_BATCH];
};

static double
thread_cpu(void)
{
	struct timespec ts;

	(void) clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

/* Receive every message that is ready, up to the batch limit. Returns how many. */
static size_t
drain(struct bench_server *s)
{
	size_t n = 0;

	while (n < BENCH_LMDB_MAX_BATCH) {
		zmq_msg_t *id = &s->ids[n], *body = &s->bodies[n];
		(void) zmq_msg_init(id);
		if (zmq_msg_recv(id, s->sock, ZMQ_DONTWAIT) < 0) {
			(void) zmq_msg_close(id);
			break;
		}
		(void) zmq_msg_init(body);
		if (!zmq_msg_more(id) || zmq_msg_recv(body, s->sock, 0) < 0) {
			/* A DEALER always sends the body with its routing id; drop the odd one. */
			(void) zmq_msg_close(body);
			(void) zmq_msg_close(id);
			continue;
		}
		while (zmq_msg_more(body)) {
			zmq_msg_t extra;
			(void) zmq_msg_init(&extra);
			(void) zmq_msg_recv(&extra, s->sock, 0);
			(void) zmq_msg_close(&extra);
		}
		n++;
	}
	return n;
}

static int
append(struct bench_server *s, size_t n, uint64_t first_seq)
{
	MDB_txn *txn;
	int rc = mdb_txn_begin(s->env, NULL, 0, &txn);

	if (rc != 0) {
		return -EIO;
	}
	for (size_t i = 0; i < n && rc == 0; i++) {
		uint64_t seq = first_seq + i;
		uint8_t k[8];
		for (int b = 0; b < 8; b++) {
			k[b] = (uint8_t) (seq >> (56 - 8 * b));
		}
		MDB_val key = {.mv_size = sizeof(k), .mv_data = k};
		MDB_val val = {.mv_size = zmq_msg_size(&s->bodies[i]),
		               .mv_data = zmq_msg_data(&s->bodies[i])};
		rc = mdb_put(txn, s->dbi, &key, &val, MDB_APPEND);
	}
	if (rc != 0) {
		mdb_txn_abort(txn);
		return rc == MDB_MAP_FULL ? -ENOSPC : -EIO;
	}
	double t0 = bench_mono_s();
	rc = mdb_txn_commit(txn);
	s->stats.commit_seconds += bench_mono_s() - t0;
	return rc == 0 ? 0 : -EIO;
}

static void *
serve(void *arg)
{
	struct bench_server *s = arg;
	double cpu0 = thread_cpu();
	uint64_t seq = 0;
	uint8_t ack[256];

	while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
		zmq_pollitem_t item = {.socket = s->sock, .events = ZMQ_POLLIN};
		int r = zmq_poll(&item, 1, 100);
		if (r < 0 && zmq_errno() != EINTR) {
			s->stats.error = -zmq_errno();
			break;
		}
		if (r <= 0) {
			continue;
		}
		size_t n = drain(s);
		if (n == 0) {
			continue;
		}
		if (s->kind == BENCH_SERVER_LMDB) {
			r = append(s, n, seq + 1);
			if (r < 0 && !s->stats.error) {
				s->stats.error = r;
			}
		}
		s->stats.batches++;
		for (size_t i = 0; i < n; i++) {
			const uint8_t *msg_id = NULL;
			size_t msg_id_len = 0;
			(void) bench_pb_bytes(zmq_msg_data(&s->bodies[i]),
			                      zmq_msg_size(&s->bodies[i]), 2, &msg_id, &msg_id_len);
			int len = bench_ack_encode(msg_id, msg_id_len, ++seq, ack, sizeof(ack));
			/* A failed commit gets no Ack: the councils time out and report it. */
			if (len > 0 && !s->stats.error &&
			    zmq_msg_send(&s->ids[i], s->sock, ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0) {
				(void) zmq_send(s->sock, ack, (size_t) len, ZMQ_DONTWAIT);
				s->stats.messages++;
			} else {
				(void) zmq_msg_close(&s->ids[i]);
			}
			(void) zmq_msg_close(&s->bodies[i]);
		}
	}
	s->stats.cpu_seconds = thread_cpu() - cpu0;
	return NULL;
}

static int
open_env(struct bench_server *s, const char *dir, uint64_t map_size)
{
	MDB_txn *txn;

	(void) snprintf(s->dir, sizeof(s->dir), "%s/ceiling-lmdb-XXXXXX", dir);
	if (!mkdtemp(s->dir)) {
		s->dir[0] = 0;
		return -errno;
	}
	int rc = mdb_env_create(&s->env);
	if (rc == 0) {
		rc = mdb_env_set_maxdbs(s->env, 8);
	}
	if (rc == 0) {
		rc = mdb_env_set_mapsize(s->env, map_size);
	}
	if (rc == 0) {
		/* daemon/store.c with sync = full: MDB_NOTLS, nothing that weakens the flush. */
		rc = mdb_env_open(s->env, s->dir, MDB_NOTLS, 0640);
	}
	if (rc == 0) {
		rc = mdb_txn_begin(s->env, NULL, 0, &txn);
		if (rc == 0) {
			rc = mdb_dbi_open(txn, "items", MDB_CREATE, &s->dbi);
			rc = rc == 0 ? mdb_txn_commit(txn) : (mdb_txn_abort(txn), rc);
		}
	}
	return rc == 0 ? 0 : rc > 0 ? -rc : -EIO;
}

static int
bind_socket(struct bench_server *s, const char *like, const char *dir)
{
	int zero = 0, hwm = 100000;

	s->sock = zmq_socket(s->zctx, ZMQ_ROUTER);
	if (!s->sock) {
		return -zmq_errno();
	}
	(void) zmq_setsockopt(s->sock, ZMQ_LINGER, &zero, sizeof(zero));
	(void) zmq_setsockopt(s->sock, ZMQ_SNDHWM, &hwm, sizeof(hwm));
	(void) zmq_setsockopt(s->sock, ZMQ_RCVHWM, &hwm, sizeof(hwm));
	if (strncmp(like, "ipc://", 6) == 0) {
		(void) snprintf(s->ipc_path, sizeof(s->ipc_path), "%s/ceiling-%s-%d.sock", dir,
		                s->kind == BENCH_SERVER_ECHO ? "echo" : "lmdb", (int) getpid());
		(void) snprintf(s->endpoint, sizeof(s->endpoint), "ipc://%s", s->ipc_path);
		if (zmq_bind(s->sock, s->endpoint) < 0) {
			return -zmq_errno();
		}
		return 0;
	}
	size_t len = sizeof(s->endpoint);
	if (zmq_bind(s->sock, "tcp://127.0.0.1:*") < 0 ||
	    zmq_getsockopt(s->sock, ZMQ_LAST_ENDPOINT, s->endpoint, &len) < 0) {
		return -zmq_errno();
	}
	return 0;
}

int
bench_server_start(enum bench_server_kind kind, const char *like, const char *dir,
                   uint64_t map_size, struct bench_server **ret_server)
{
	struct bench_server *s = calloc(1, sizeof(*s));
	int r;

	if (!s) {
		return -ENOMEM;
	}
	s->kind = kind;
	s->zctx = zmq_ctx_new();
	if (!s->zctx) {
		r = -ENOMEM;
		goto fail;
	}
	if (kind == BENCH_SERVER_LMDB) {
		r = open_env(s, dir, map_size);
		if (r < 0) {
			goto fail;
		}
	}
	r = bind_socket(s, like, dir);
	if (r < 0) {
		goto fail;
	}
	r = -pthread_create(&s->thread, NULL, serve, s);
	if (r < 0) {
		goto fail;
	}
	s->started = true;
	*ret_server = s;
	return 0;
fail:
	bench_server_stop(s, NULL);
	return r;
}

const char *
bench_server_endpoint(const struct bench_server *s)
{
	return s->endpoint;
}

static void
remove_env_dir(const char *dir)
{
	char path[PATH_MAX + 16];

	(void) snprintf(path, sizeof(path), "%s/data.mdb", dir);
	(void) unlink(path);
	(void) snprintf(path, sizeof(path), "%s/lock.mdb", dir);
	(void) unlink(path);
	(void) rmdir(dir);
}

void
bench_server_stop(struct bench_server *s, struct bench_server_stats *ret_stats)
{
	if (!s) {
		return;
	}
	if (s->started) {
		__atomic_store_n(&s->stop, true, __ATOMIC_RELEASE);
		(void) pthread_join(s->thread, NULL);
	}
	if (ret_stats) {
		*ret_stats = s->stats;
	}
	if (s->sock) {
		(void) zmq_close(s->sock);
	}
	if (s->zctx) {
		(void) zmq_ctx_term(s->zctx);
	}
	if (s->ipc_path[0]) {
		(void) unlink(s->ipc_path);
	}
	if (s->env) {
		mdb_env_close(s->env);
	}
	if (s->dir[0]) {
		remove_env_dir(s->dir);
	}
	free(s);
}

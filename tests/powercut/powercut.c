/*
 * powercut: an LD_PRELOAD library that records, in order, every write to the files of one
 * directory and every flush of them, while letting each call through unchanged. The log it
 * writes is the input of crashstate.py, which rebuilds the files as a power cut at any
 * point of the log would have left them (see README.md).
 *
 * Environment (read once, when the library loads):
 *   POWERCUT_DIR  the directory whose regular files are traced (the store); required
 *   POWERCUT_LOG  the log file, appended to (created if missing); required
 * Without both the library does nothing.
 *
 * Files traced: regular files below POWERCUT_DIR except lock.mdb, which LMDB maps shared
 * and writable and resets when it is the first to open it: its bytes are not state.
 *
 * Log format (native byte order, this machine only): the 8-byte magic "PCUTLOG1", then
 * records of a 32-byte header {u32 type, u32 file, u64 off, u64 len, u64 t_ns} and, for
 * OPEN, WRITE and SYNCWRITE, `len` bytes of payload:
 *   OPEN       first open of a file: `file` is its new id, the payload its path relative
 *              to POWERCUT_DIR
 *   WRITE      `len` bytes written at `off` (the payload is the bytes)
 *   SYNCWRITE  the same through an O_DSYNC/O_SYNC descriptor or with RWF_DSYNC/RWF_SYNC:
 *              that write is durable when the call returns
 *   FLUSH      fsync/fdatasync (off 0, len UINT64_MAX) or msync(MS_SYNC) of a traced
 *              mapping (the mapped range): the file's earlier writes in the range are
 *              durable
 *   TRUNCATE   ftruncate to `off` bytes
 *   HINT       sync_file_range (off, len): no durability guarantee (no disk cache flush,
 *              no metadata), so the builder ignores it
 *   UNSUPPORTED something the log cannot represent (a writable shared mapping of a traced
 *              file: its writes bypass write(2)); the payload says what. The builder
 *              refuses a log holding one.
 * `t_ns` is CLOCK_MONOTONIC (shared by all processes of the machine) when the call
 * returned, so a test can tell which of its own observations came before a record.
 *
 * Each traced call runs under one mutex, together with the appending of its record, so
 * the log order is the order in which the calls took effect, and a record is in the log
 * before the call returns to the program: whatever the program did after a flush
 * returned (an acknowledgement) comes after that flush in the log. Records are appended
 * with raw write(2) system calls; a kill -9 can cut the last record short, which the
 * builder ignores.
 */

/* meson builds with _FILE_OFFSET_BITS=64, which renames open to open64 and so on in the
 * headers; this file defines both names itself. (off_t is 64-bit on LP64 either way.) */
#undef _FILE_OFFSET_BITS

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

enum {
	REC_OPEN = 1,
	REC_WRITE = 2,
	REC_SYNCWRITE = 3,
	REC_FLUSH = 4,
	REC_TRUNCATE = 5,
	REC_HINT = 6,
	REC_UNSUPPORTED = 7,
};

#define MAX_FDS 65536
#define MAX_FILES 256
#define MAX_MAPS 256
#define FD_DSYNC 0x80000000u
#define FD_FILE_MASK 0x00ffffffu

struct rec_header {
	uint32_t type;
	uint32_t file;
	uint64_t off;
	uint64_t len;
	uint64_t t_ns;
};

struct map {
	uintptr_t addr;
	size_t len;
	uint64_t off;
	uint32_t file;
};

/* fd -> (file id + 1) | FD_DSYNC; 0: not traced. Read without the lock by every call. */
static _Atomic uint32_t fd_info[MAX_FDS];

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int log_fd = -1;
static char dir[PATH_MAX];
static size_t dir_len;
static char *files[MAX_FILES]; /* file id -> path relative to dir */
static uint32_t n_files;
static struct map maps[MAX_MAPS];

static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);
static int (*real_open_2)(const char *, int);
static int (*real_open64_2)(const char *, int);
static int (*real_openat_2)(int, const char *, int);
static int (*real_openat64_2)(int, const char *, int);
static int (*real_creat)(const char *, mode_t);
static int (*real_creat64)(const char *, mode_t);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev64)(int, const struct iovec *, int, off_t);
static ssize_t (*real_pwritev2)(int, const struct iovec *, int, off_t, int);
static ssize_t (*real_pwritev64v2)(int, const struct iovec *, int, off_t, int);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_msync)(void *, size_t, int);
static int (*real_sync_file_range)(int, off_t, off_t, unsigned int);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off_t);
static int (*real_close)(int);
static int (*real_dup)(int);
static int (*real_dup2)(int, int);
static int (*real_dup3)(int, int, int);
static int (*real_fcntl)(int, int, ...);
static int (*real_fcntl64)(int, int, ...);
static void *(*real_mmap)(void *, size_t, int, int, int, off_t);
static void *(*real_mmap64)(void *, size_t, int, int, int, off_t);
static int (*real_munmap)(void *, size_t);

/* glibc's fortified entry points; declared here because only <bits/fcntl2.h> does. */
int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);
ssize_t pwritev64v2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags);
int fcntl64(int fd, int cmd, ...);

/* ISO C cannot convert dlsym's void * to a function pointer; POSIX says the bytes do. */
#define RESOLVE(var, name)                                                                         \
	do {                                                                                       \
		void *sym_ = dlsym(RTLD_NEXT, name);                                               \
		memcpy(&(var), &sym_, sizeof(var));                                                \
	} while (0)

static pthread_once_t resolved = PTHREAD_ONCE_INIT;

/* Find the functions wrapped here. Called by every wrapper (another library's constructor
 * may run before this one's) and by the constructor. */
static void
resolve_all(void)
{
	RESOLVE(real_open, "open");
	RESOLVE(real_open64, "open64");
	RESOLVE(real_openat, "openat");
	RESOLVE(real_openat64, "openat64");
	RESOLVE(real_open_2, "__open_2");
	RESOLVE(real_open64_2, "__open64_2");
	RESOLVE(real_openat_2, "__openat_2");
	RESOLVE(real_openat64_2, "__openat64_2");
	RESOLVE(real_creat, "creat");
	RESOLVE(real_creat64, "creat64");
	RESOLVE(real_write, "write");
	RESOLVE(real_pwrite, "pwrite");
	RESOLVE(real_pwrite64, "pwrite64");
	RESOLVE(real_writev, "writev");
	RESOLVE(real_pwritev, "pwritev");
	RESOLVE(real_pwritev64, "pwritev64");
	RESOLVE(real_pwritev2, "pwritev2");
	RESOLVE(real_pwritev64v2, "pwritev64v2");
	RESOLVE(real_fsync, "fsync");
	RESOLVE(real_fdatasync, "fdatasync");
	RESOLVE(real_msync, "msync");
	RESOLVE(real_sync_file_range, "sync_file_range");
	RESOLVE(real_ftruncate, "ftruncate");
	RESOLVE(real_ftruncate64, "ftruncate64");
	RESOLVE(real_close, "close");
	RESOLVE(real_dup, "dup");
	RESOLVE(real_dup2, "dup2");
	RESOLVE(real_dup3, "dup3");
	RESOLVE(real_fcntl, "fcntl");
	RESOLVE(real_fcntl64, "fcntl64");
	RESOLVE(real_mmap, "mmap");
	RESOLVE(real_mmap64, "mmap64");
	RESOLVE(real_munmap, "munmap");
}

static void
resolve(void)
{
	(void) pthread_once(&resolved, resolve_all);
}

__attribute__((constructor)) static void
powercut_init(void)
{
	resolve();
	const char *d = getenv("POWERCUT_DIR");
	const char *l = getenv("POWERCUT_LOG");
	if (!d || !l || !realpath(d, dir)) {
		return;
	}
	dir_len = strlen(dir);
	int fd = (int) syscall(SYS_openat, AT_FDCWD, l, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC,
	                       0640);
	if (fd < 0) {
		return;
	}
	struct stat st;
	if (fstat(fd, &st) == 0 && st.st_size == 0) {
		(void) syscall(SYS_write, fd, "PCUTLOG1", 8);
	}
	log_fd = fd;
}

static uint64_t
now_ns(void)
{
	struct timespec ts;
	(void) clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

/* Append bytes to the log with raw system calls (never through the wrappers). */
static void
log_bytes(const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		long n = syscall(SYS_write, log_fd, p, len);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n <= 0) {
			return; /* the log is broken; the builder will see a short record */
		}
		p += n;
		len -= (size_t) n;
	}
}

static void
log_record(uint32_t type, uint32_t file, uint64_t off, uint64_t len, const void *payload)
{
	struct rec_header h = {
	        .type = type, .file = file, .off = off, .len = len, .t_ns = now_ns()};
	log_bytes(&h, sizeof(h));
	if (payload && len > 0) {
		log_bytes(payload, len);
	}
}

/* Lock around a traced call, keeping errno as the call left it. */
static void
trace_lock(void)
{
	int e = errno;
	(void) pthread_mutex_lock(&lock);
	errno = e;
}

static void
trace_unlock(void)
{
	int e = errno;
	(void) pthread_mutex_unlock(&lock);
	errno = e;
}

/* The traced file id of fd, or -1. `dsync` (may be NULL) says whether it was opened with
 * O_DSYNC or O_SYNC. */
static int
traced(int fd, bool *dsync)
{
	if (log_fd < 0 || fd < 0 || fd >= MAX_FDS) {
		return -1;
	}
	uint32_t v = atomic_load(&fd_info[fd]);
	if (v == 0) {
		return -1;
	}
	if (dsync) {
		*dsync = (v & FD_DSYNC) != 0;
	}
	return (int) ((v & FD_FILE_MASK) - 1);
}

/* After a successful open: trace fd if it is a regular file below dir. */
static void
opened(int fd, int flags)
{
	if (log_fd < 0 || fd < 0 || fd >= MAX_FDS) {
		return;
	}
	atomic_store(&fd_info[fd], 0);
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		return;
	}
	char link[64], path[PATH_MAX];
	(void) snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, path, sizeof(path) - 1);
	if (n <= 0) {
		return;
	}
	path[n] = '\0';
	if ((size_t) n <= dir_len + 1 || strncmp(path, dir, dir_len) != 0 || path[dir_len] != '/') {
		return;
	}
	const char *rel = path + dir_len + 1;
	const char *base = strrchr(rel, '/');
	base = base ? base + 1 : rel;
	if (strcmp(base, "lock.mdb") == 0) {
		return;
	}
	trace_lock();
	uint32_t id;
	for (id = 0; id < n_files; id++) {
		if (strcmp(files[id], rel) == 0) {
			break;
		}
	}
	if (id == n_files && n_files < MAX_FILES) {
		files[id] = strdup(rel);
		if (files[id]) {
			n_files++;
			log_record(REC_OPEN, id, 0, strlen(rel), rel);
		}
	}
	if (id < n_files) {
		uint32_t v = (id + 1) | ((flags & O_DSYNC) ? FD_DSYNC : 0);
		atomic_store(&fd_info[fd], v);
	}
	trace_unlock();
}

static int
mode_arg(int flags, va_list ap)
{
	return (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, int) : 0;
}

int
open(const char *path, int flags, ...)
{
	resolve();
	va_list ap;
	va_start(ap, flags);
	int mode = mode_arg(flags, ap);
	va_end(ap);
	int fd = real_open(path, flags, mode);
	opened(fd, flags);
	return fd;
}

int
open64(const char *path, int flags, ...)
{
	resolve();
	va_list ap;
	va_start(ap, flags);
	int mode = mode_arg(flags, ap);
	va_end(ap);
	int fd = real_open64(path, flags, mode);
	opened(fd, flags);
	return fd;
}

int
openat(int dirfd, const char *path, int flags, ...)
{
	resolve();
	va_list ap;
	va_start(ap, flags);
	int mode = mode_arg(flags, ap);
	va_end(ap);
	int fd = real_openat(dirfd, path, flags, mode);
	opened(fd, flags);
	return fd;
}

int
openat64(int dirfd, const char *path, int flags, ...)
{
	resolve();
	va_list ap;
	va_start(ap, flags);
	int mode = mode_arg(flags, ap);
	va_end(ap);
	int fd = real_openat64(dirfd, path, flags, mode);
	opened(fd, flags);
	return fd;
}

int
__open_2(const char *path, int flags)
{
	resolve();
	int fd = real_open_2(path, flags);
	opened(fd, flags);
	return fd;
}

int
__open64_2(const char *path, int flags)
{
	resolve();
	int fd = real_open64_2(path, flags);
	opened(fd, flags);
	return fd;
}

int
__openat_2(int dirfd, const char *path, int flags)
{
	resolve();
	int fd = real_openat_2(dirfd, path, flags);
	opened(fd, flags);
	return fd;
}

int
__openat64_2(int dirfd, const char *path, int flags)
{
	resolve();
	int fd = real_openat64_2(dirfd, path, flags);
	opened(fd, flags);
	return fd;
}

int
creat(const char *path, mode_t mode)
{
	resolve();
	int fd = real_creat(path, mode);
	opened(fd, O_WRONLY);
	return fd;
}

int
creat64(const char *path, mode_t mode)
{
	resolve();
	int fd = real_creat64(path, mode);
	opened(fd, O_WRONLY);
	return fd;
}

/* Log a completed write of `n` bytes at `off`, gathered from `iov`. */
static void
log_write(int file, bool sync, uint64_t off, const struct iovec *iov, int iovcnt, ssize_t n)
{
	if (n <= 0) {
		return;
	}
	struct rec_header h = {.type = sync ? REC_SYNCWRITE : REC_WRITE,
	                       .file = (uint32_t) file,
	                       .off = off,
	                       .len = (uint64_t) n,
	                       .t_ns = now_ns()};
	log_bytes(&h, sizeof(h));
	size_t left = (size_t) n;
	for (int i = 0; i < iovcnt && left > 0; i++) {
		size_t k = iov[i].iov_len < left ? iov[i].iov_len : left;
		log_bytes(iov[i].iov_base, k);
		left -= k;
	}
}

/* The offset a write(2)-style call just wrote at: the file position after it, less n. */
static uint64_t
written_at(int fd, ssize_t n)
{
	long pos = syscall(SYS_lseek, fd, 0L, SEEK_CUR);
	return pos >= n ? (uint64_t) (pos - n) : 0;
}

ssize_t
write(int fd, const void *buf, size_t len)
{
	resolve();
	bool sync;
	int file = traced(fd, &sync);
	if (file < 0) {
		return real_write(fd, buf, len);
	}
	trace_lock();
	ssize_t n = real_write(fd, buf, len);
	if (n > 0) {
		struct iovec iov = {.iov_base = (void *) buf, .iov_len = (size_t) n};
		log_write(file, sync, written_at(fd, n), &iov, 1, n);
	}
	trace_unlock();
	return n;
}

static ssize_t
traced_pwrite(ssize_t (*fn)(int, const void *, size_t, off_t), int fd, const void *buf, size_t len,
              off_t off)
{
	bool sync;
	int file = traced(fd, &sync);
	if (file < 0) {
		return fn(fd, buf, len, off);
	}
	trace_lock();
	ssize_t n = fn(fd, buf, len, off);
	struct iovec iov = {.iov_base = (void *) buf, .iov_len = len};
	log_write(file, sync, (uint64_t) off, &iov, 1, n);
	trace_unlock();
	return n;
}

ssize_t
pwrite(int fd, const void *buf, size_t len, off_t off)
{
	resolve();
	return traced_pwrite(real_pwrite, fd, buf, len, off);
}

ssize_t
pwrite64(int fd, const void *buf, size_t len, off_t off)
{
	resolve();
	return traced_pwrite(real_pwrite64, fd, buf, len, off);
}

ssize_t
writev(int fd, const struct iovec *iov, int iovcnt)
{
	resolve();
	bool sync;
	int file = traced(fd, &sync);
	if (file < 0) {
		return real_writev(fd, iov, iovcnt);
	}
	trace_lock();
	ssize_t n = real_writev(fd, iov, iovcnt);
	if (n > 0) {
		log_write(file, sync, written_at(fd, n), iov, iovcnt, n);
	}
	trace_unlock();
	return n;
}

static ssize_t
traced_pwritev(ssize_t (*fn)(int, const struct iovec *, int, off_t, int), int fd,
               const struct iovec *iov, int iovcnt, off_t off, int flags)
{
	bool sync;
	int file = traced(fd, &sync);
	if (file < 0) {
		return fn(fd, iov, iovcnt, off, flags);
	}
	trace_lock();
	ssize_t n = fn(fd, iov, iovcnt, off, flags);
	if (n > 0) {
		bool s = sync || (flags & (RWF_DSYNC | RWF_SYNC));
		/* off -1 (pwritev2 only) writes at and advances the file position. */
		uint64_t at = off == -1 ? written_at(fd, n) : (uint64_t) off;
		log_write(file, s, at, iov, iovcnt, n);
	}
	trace_unlock();
	return n;
}

static ssize_t
call_pwritev(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
{
	(void) flags;
	return real_pwritev(fd, iov, iovcnt, off);
}

static ssize_t
call_pwritev64(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
{
	(void) flags;
	return real_pwritev64(fd, iov, iovcnt, off);
}

ssize_t
pwritev(int fd, const struct iovec *iov, int iovcnt, off_t off)
{
	resolve();
	return traced_pwritev(call_pwritev, fd, iov, iovcnt, off, 0);
}

ssize_t
pwritev64(int fd, const struct iovec *iov, int iovcnt, off_t off)
{
	resolve();
	return traced_pwritev(call_pwritev64, fd, iov, iovcnt, off, 0);
}

ssize_t
pwritev2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
{
	resolve();
	return traced_pwritev(real_pwritev2, fd, iov, iovcnt, off, flags);
}

ssize_t
pwritev64v2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags)
{
	resolve();
	return traced_pwritev(real_pwritev64v2, fd, iov, iovcnt, off, flags);
}

static int
traced_flush(int (*fn)(int), int fd)
{
	int file = traced(fd, NULL);
	if (file < 0) {
		return fn(fd);
	}
	trace_lock();
	int r = fn(fd);
	if (r == 0) {
		log_record(REC_FLUSH, (uint32_t) file, 0, UINT64_MAX, NULL);
	}
	trace_unlock();
	return r;
}

int
fsync(int fd)
{
	resolve();
	return traced_flush(real_fsync, fd);
}

int
fdatasync(int fd)
{
	resolve();
	return traced_flush(real_fdatasync, fd);
}

int
sync_file_range(int fd, off_t off, off_t len, unsigned int flags)
{
	resolve();
	int file = traced(fd, NULL);
	if (file < 0) {
		return real_sync_file_range(fd, off, len, flags);
	}
	trace_lock();
	int r = real_sync_file_range(fd, off, len, flags);
	if (r == 0) {
		log_record(REC_HINT, (uint32_t) file, (uint64_t) off, (uint64_t) len, NULL);
	}
	trace_unlock();
	return r;
}

static int
traced_truncate(int (*fn)(int, off_t), int fd, off_t size)
{
	int file = traced(fd, NULL);
	if (file < 0) {
		return fn(fd, size);
	}
	trace_lock();
	int r = fn(fd, size);
	if (r == 0) {
		log_record(REC_TRUNCATE, (uint32_t) file, (uint64_t) size, 0, NULL);
	}
	trace_unlock();
	return r;
}

int
ftruncate(int fd, off_t size)
{
	resolve();
	return traced_truncate(real_ftruncate, fd, size);
}

int
ftruncate64(int fd, off_t size)
{
	resolve();
	return traced_truncate(real_ftruncate64, fd, size);
}

/* A descriptor is gone or replaced: forget it. */
static void
forget(int fd)
{
	if (fd >= 0 && fd < MAX_FDS) {
		atomic_store(&fd_info[fd], 0);
	}
}

/* newfd now refers to what oldfd refers to. */
static void
copied(int oldfd, int newfd)
{
	if (newfd < 0 || newfd >= MAX_FDS) {
		return;
	}
	uint32_t v = (oldfd >= 0 && oldfd < MAX_FDS) ? atomic_load(&fd_info[oldfd]) : 0;
	atomic_store(&fd_info[newfd], v);
}

int
close(int fd)
{
	resolve();
	forget(fd);
	return real_close(fd);
}

int
dup(int fd)
{
	resolve();
	int r = real_dup(fd);
	copied(fd, r);
	return r;
}

int
dup2(int fd, int newfd)
{
	resolve();
	int r = real_dup2(fd, newfd);
	if (r >= 0 && r != fd) {
		copied(fd, r);
	}
	return r;
}

int
dup3(int fd, int newfd, int flags)
{
	resolve();
	int r = real_dup3(fd, newfd, flags);
	copied(fd, r);
	return r;
}

static int
traced_fcntl(int (*fn)(int, int, ...), int fd, int cmd, void *arg)
{
	int r = fn(fd, cmd, arg);
	if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)) {
		copied(fd, r);
	}
	return r;
}

int
fcntl(int fd, int cmd, ...)
{
	resolve();
	va_list ap;
	va_start(ap, cmd);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	return traced_fcntl(real_fcntl, fd, cmd, arg);
}

int
fcntl64(int fd, int cmd, ...)
{
	resolve();
	va_list ap;
	va_start(ap, cmd);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	return traced_fcntl(real_fcntl64 ? real_fcntl64 : real_fcntl, fd, cmd, arg);
}

static void *
traced_mmap(void *(*fn)(void *, size_t, int, int, int, off_t), void *addr, size_t len, int prot,
            int flags, int fd, off_t off)
{
	void *p = fn(addr, len, prot, flags, fd, off);
	int file = traced(fd, NULL);
	if (file < 0 || p == MAP_FAILED) {
		return p;
	}
	trace_lock();
	if ((prot & PROT_WRITE) && (flags & MAP_SHARED)) {
		static const char what[] = "writable shared mapping: its writes are not traced";
		log_record(REC_UNSUPPORTED, (uint32_t) file, (uint64_t) off, sizeof(what) - 1,
		           what);
	}
	for (size_t i = 0; i < MAX_MAPS; i++) {
		if (maps[i].len == 0) {
			maps[i] = (struct map){.addr = (uintptr_t) p,
			                       .len = len,
			                       .off = (uint64_t) off,
			                       .file = (uint32_t) file};
			break;
		}
	}
	trace_unlock();
	return p;
}

void *
mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	resolve();
	return traced_mmap(real_mmap, addr, len, prot, flags, fd, off);
}

void *
mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	resolve();
	return traced_mmap(real_mmap64 ? real_mmap64 : real_mmap, addr, len, prot, flags, fd, off);
}

int
munmap(void *addr, size_t len)
{
	resolve();
	if (log_fd >= 0) {
		trace_lock();
		for (size_t i = 0; i < MAX_MAPS; i++) {
			if (maps[i].len && maps[i].addr == (uintptr_t) addr) {
				maps[i].len = 0;
			}
		}
		trace_unlock();
	}
	return real_munmap(addr, len);
}

int
msync(void *addr, size_t len, int flags)
{
	resolve();
	if (log_fd < 0) {
		return real_msync(addr, len, flags);
	}
	trace_lock();
	int r = real_msync(addr, len, flags);
	if (r == 0 && (flags & MS_SYNC)) {
		uintptr_t a = (uintptr_t) addr;
		for (size_t i = 0; i < MAX_MAPS; i++) {
			const struct map *m = &maps[i];
			if (m->len && a >= m->addr && a < m->addr + m->len) {
				uint64_t from = m->off + (a - m->addr);
				log_record(REC_FLUSH, m->file, from, len, NULL);
			}
		}
	}
	trace_unlock();
	return r;
}

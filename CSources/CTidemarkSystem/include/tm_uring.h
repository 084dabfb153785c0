/*
 * io_uring glue for the chunk reader (Sources/TidemarkSystem/ChunkReader.swift).
 *
 * Why C: liburing's submission/completion helpers (io_uring_get_sqe,
 * io_uring_prep_read, io_uring_wait_cqe, io_uring_cqe_seen, ...) are static
 * inline functions over shared-memory rings with explicit memory barriers,
 * and struct io_uring is a large by-value struct; Swift can neither call
 * them nor safely reproduce their barrier semantics. The ring is therefore
 * opaque to Swift. Every function returns 0 (or a count) on success and
 * -errno on failure; none sets errno.
 */
#ifndef TM_URING_H
#define TM_URING_H

#include <stdint.h>

struct tm_uring;

/* Sets up a ring with `entries` submission slots (the kernel rounds up to a
 * power of two; the completion queue is twice that) and checks that the
 * kernel supports IORING_OP_READ (Linux 5.6+). Returns 0 and *out, or
 * -errno: -ENOSYS (no io_uring), -EPERM (seccomp filter or the
 * kernel.io_uring_disabled sysctl), -ENOMEM (memlock limit),
 * -EOPNOTSUPP (IORING_OP_READ missing). */
int tm_uring_create(unsigned entries, struct tm_uring **out);

/* Tears the ring down. Callers must have reaped every submitted read. */
void tm_uring_destroy(struct tm_uring *ring);

/* Queues (does not submit) a read of len bytes at offset of fd into buf,
 * tagged with user_data. Returns 0, or -EBUSY when the submission queue is
 * full (submit, then retry). */
int tm_uring_prep_read(struct tm_uring *ring, int fd, void *buf, unsigned len,
                       uint64_t offset, uint64_t user_data);

/* Submits queued reads (io_uring_enter). Returns how many the kernel took
 * (may be fewer than queued) or -errno (-EAGAIN/-ENOMEM/-EBUSY: reap
 * completions, then retry; -EINTR: retry). */
/* Queues a write (IORING_OP_WRITE, Linux 5.6+, probed with the read op):
 * io_uring_prep_write is static inline. 0, or -EBUSY when the SQ is full. */
int tm_uring_prep_write(struct tm_uring *ring, int fd, const void *buf, unsigned len,
                        uint64_t offset, uint64_t user_data);

int tm_uring_submit(struct tm_uring *ring);

/* Waits for one completion, copies out its user_data and result (bytes read
 * or -errno of the read) and marks it seen. Returns 0, or -errno of the wait
 * itself (-EINTR: retry). Does not submit: call tm_uring_submit first. */
int tm_uring_wait(struct tm_uring *ring, uint64_t *user_data, int32_t *res);

#endif

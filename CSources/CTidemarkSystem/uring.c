/* io_uring glue: see include/tm_uring.h for why this is C. Kept thin: no
 * policy here, the chunk reader decides what to submit and how to recover. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <liburing.h>
#include "CTidemarkSystem.h"

struct tm_uring {
    struct io_uring ring;
};

int tm_uring_create(unsigned entries, struct tm_uring **out) {
    struct tm_uring *r = calloc(1, sizeof(*r));
    if (!r) return -ENOMEM;
    int ret = io_uring_queue_init(entries, &r->ring, 0);
    if (ret < 0) {
        free(r);
        return ret;
    }
    /* IORING_REGISTER_PROBE and IORING_OP_READ both arrived in 5.6: no probe
     * means no plain read opcode either. */
    struct io_uring_probe *probe = io_uring_get_probe_ring(&r->ring);
    int ok = probe && io_uring_opcode_supported(probe, IORING_OP_READ);
    if (probe) io_uring_free_probe(probe);
    if (!ok) {
        io_uring_queue_exit(&r->ring);
        free(r);
        return -EOPNOTSUPP;
    }
    *out = r;
    return 0;
}

void tm_uring_destroy(struct tm_uring *r) {
    if (!r) return;
    io_uring_queue_exit(&r->ring);
    free(r);
}

int tm_uring_prep_read(struct tm_uring *r, int fd, void *buf, unsigned len,
                       uint64_t offset, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_read(sqe, fd, buf, len, offset);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int tm_uring_prep_write(struct tm_uring *r, int fd, const void *buf, unsigned len,
                        uint64_t offset, uint64_t user_data) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
    if (!sqe) return -EBUSY;
    io_uring_prep_write(sqe, fd, buf, len, offset);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

int tm_uring_submit(struct tm_uring *r) {
    return io_uring_submit(&r->ring);
}

int tm_uring_wait(struct tm_uring *r, uint64_t *user_data, int32_t *res) {
    struct io_uring_cqe *cqe = NULL;
    int ret = io_uring_wait_cqe(&r->ring, &cqe);
    if (ret < 0) return ret;
    *user_data = io_uring_cqe_get_data64(cqe);
    *res = cqe->res;
    io_uring_cqe_seen(&r->ring, cqe);
    return 0;
}

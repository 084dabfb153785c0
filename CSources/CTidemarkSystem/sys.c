#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/falloc.h>
#include <linux/fiemap.h>
#include <linux/fsmap.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <signal.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/mount.h>
#include <sys/vfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include "CTidemarkSystem.h"

const int tm_O_DIRECT = O_DIRECT;

int tm_blk_size_bytes(int fd, uint64_t *out) {
    return ioctl(fd, BLKGETSIZE64, out) == 0 ? 0 : -errno;
}

int tm_blk_logical_sector_size(int fd, uint32_t *out) {
    int v = 0;
    if (ioctl(fd, BLKSSZGET, &v) != 0) return -errno;
    *out = (uint32_t)v;
    return 0;
}

int tm_blk_zeroout(int fd, uint64_t offset, uint64_t length) {
    uint64_t range[2] = { offset, length };
    return ioctl(fd, BLKZEROOUT, range) == 0 ? 0 : -errno;
}

int tm_fs_freeze(int fd) {
    return ioctl(fd, FIFREEZE, 0) == 0 ? 0 : -errno;
}

int tm_fs_thaw(int fd) {
    return ioctl(fd, FITHAW, 0) == 0 ? 0 : -errno;
}

extern char **environ;

int tm_spawn_session_with_socket(const char *path, char *const argv[], int *pid_out, int *sock_out) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return -errno;
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    int r = posix_spawn_file_actions_init(&fa);
    if (r != 0) { close(sv[0]); close(sv[1]); return -r; }
    r = posix_spawnattr_init(&attr);
    if (r != 0) { posix_spawn_file_actions_destroy(&fa); close(sv[0]); close(sv[1]); return -r; }
    /* dup2 clears close-on-exec on the child's fd 0; sv[1] itself is closed at exec. */
    r = posix_spawn_file_actions_adddup2(&fa, sv[1], 0);
    if (r == 0) r = posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    sigset_t empty, all;
    sigemptyset(&empty);
    sigfillset(&all);
    if (r == 0) r = posix_spawnattr_setsigmask(&attr, &empty);
    if (r == 0) r = posix_spawnattr_setsigdefault(&attr, &all);
    if (r == 0) r = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid = -1;
    if (r == 0) r = posix_spawn(&pid, path, &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close(sv[1]);
    if (r != 0) { close(sv[0]); return -r; }
    *pid_out = (int)pid;
    *sock_out = sv[0];
    return 0;
}

int tm_start_writeback(int fd) {
    return sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE) == 0 ? 0 : -errno;
}

int tm_syncfs(int fd) {
    return syncfs(fd) == 0 ? 0 : -errno;
}

int tm_open(const char *path, int flags, mode_t mode) {
    int fd;
    do { fd = open(path, flags | O_CLOEXEC, mode); } while (fd < 0 && errno == EINTR);
    return fd >= 0 ? fd : -errno;
}

int tm_punch_hole(int fd, uint64_t offset, uint64_t length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length) == 0 ? 0 : -errno;
}

static size_t find_nonzero_scalar(const uint64_t *p, size_t n) {
    size_t i = 0;
    /* Eight words at a time: OR-reduce, which the compiler vectorizes. */
    for (; i + 8 <= n; i += 8) {
        uint64_t acc = p[i] | p[i + 1] | p[i + 2] | p[i + 3] | p[i + 4] | p[i + 5] | p[i + 6] | p[i + 7];
        if (acc) break;
    }
    for (; i < n; i++)
        if (__atomic_load_n(&p[i], __ATOMIC_RELAXED)) return i;
    return n;
}

#if defined(__x86_64__)
#include <immintrin.h>
/* 32 words (256 bytes) per step with AVX2: the scan of a mostly clean bitmap
 * is bound by memory bandwidth, and wide loads get closest to it. */
__attribute__((target("avx2")))
static size_t find_nonzero_avx2(const uint64_t *p, size_t n) {
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m256i *v = (const __m256i *)(p + i);
        __m256i a = _mm256_or_si256(_mm256_loadu_si256(v), _mm256_loadu_si256(v + 1));
        __m256i b = _mm256_or_si256(_mm256_loadu_si256(v + 2), _mm256_loadu_si256(v + 3));
        __m256i c = _mm256_or_si256(_mm256_loadu_si256(v + 4), _mm256_loadu_si256(v + 5));
        __m256i d = _mm256_or_si256(_mm256_loadu_si256(v + 6), _mm256_loadu_si256(v + 7));
        __m256i x = _mm256_or_si256(_mm256_or_si256(a, b), _mm256_or_si256(c, d));
        if (!_mm256_testz_si256(x, x)) break;
    }
    return i + find_nonzero_scalar(p + i, n - i);
}
#endif

size_t tm_find_nonzero_word(const uint64_t *p, size_t n) {
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx2")) return find_nonzero_avx2(p, n);
#endif
    return find_nonzero_scalar(p, n);
}

int tm_flock_exclusive_nb(int fd) {
    return flock(fd, LOCK_EX | LOCK_NB) == 0 ? 0 : -errno;
}

int tm_stat(const char *path, struct stat *out) {
    return stat(path, out) == 0 ? 0 : -errno;
}

unsigned int tm_dev_major(unsigned long long dev) { return major(dev); }
unsigned int tm_dev_minor(unsigned long long dev) { return minor(dev); }

int tm_flock(int fd, int op) {
    return flock(fd, op) == 0 ? 0 : -errno;
}

long long tm_statfs_type(const char *path) {
    struct statfs s;
    if (statfs(path, &s) != 0) return -errno;
    return (long long)(unsigned long)s.f_type;
}

/* Gives the heap's free memory back to the system (glibc keeps it otherwise). */
void tm_heap_trim(void) {
    malloc_trim(0);
}

/* FS_IOC_FIEMAP over [0, length) with FIEMAP_FLAG_SYNC (delayed allocation is
 * resolved first). Copies at most max_extents extents; *count is how many
 * the kernel mapped (at most max_extents). 0 or -errno. */
int tm_fiemap(int fd, uint64_t length, uint32_t max_extents, uint64_t *logical, uint64_t *physical,
              uint64_t *extent_length, uint32_t *flags, uint32_t *count) {
    size_t size = sizeof(struct fiemap) + (size_t)max_extents * sizeof(struct fiemap_extent);
    struct fiemap *fm = calloc(1, size);
    if (fm == NULL) return -ENOMEM;
    fm->fm_start = 0;
    fm->fm_length = length;
    fm->fm_flags = FIEMAP_FLAG_SYNC;
    fm->fm_extent_count = max_extents;
    if (ioctl(fd, FS_IOC_FIEMAP, fm) != 0) {
        int e = errno;
        free(fm);
        return -e;
    }
    uint32_t n = fm->fm_mapped_extents < max_extents ? fm->fm_mapped_extents : max_extents;
    for (uint32_t i = 0; i < n; i++) {
        logical[i] = fm->fm_extents[i].fe_logical;
        physical[i] = fm->fm_extents[i].fe_physical;
        extent_length[i] = fm->fm_extents[i].fe_length;
        flags[i] = fm->fm_extents[i].fe_flags;
    }
    *count = n;
    free(fm);
    return 0;
}

int tm_getfsmap_free(int fd, uint32_t device, size_t max_pairs, uint64_t **pairs, size_t *count) {
    enum { RECS = 1024 };
    struct fsmap_head *h = calloc(1, sizeof(*h) + RECS * sizeof(struct fsmap));
    size_t cap = 256, n = 0;
    uint64_t *out = malloc(cap * 2 * sizeof(uint64_t));
    if (h == NULL || out == NULL) { free(h); free(out); return -ENOMEM; }
    /* Keys: everything, from (0, 0, 0, 0) to all ones. */
    h->fmh_keys[1].fmr_device = UINT32_MAX;
    h->fmh_keys[1].fmr_flags = UINT32_MAX;
    h->fmh_keys[1].fmr_physical = UINT64_MAX;
    h->fmh_keys[1].fmr_owner = UINT64_MAX;
    h->fmh_keys[1].fmr_offset = UINT64_MAX;
    int err = 0, last = 0;
    while (!last) {
        h->fmh_count = RECS;
        if (ioctl(fd, FS_IOC_GETFSMAP, h) != 0) { err = -errno; break; }
        if (h->fmh_entries == 0) break;
        for (uint32_t i = 0; i < h->fmh_entries; i++) {
            struct fsmap *r = &h->fmh_recs[i];
            if (r->fmr_flags & FMR_OF_LAST) last = 1;
            if (r->fmr_device != device || r->fmr_length == 0) continue;
            if (!((r->fmr_flags & FMR_OF_SPECIAL_OWNER) && r->fmr_owner == FMR_OWN_FREE)) continue;
            uint64_t a = r->fmr_physical, b = r->fmr_physical + r->fmr_length;
            if (n > 0 && a <= out[2 * n - 1]) { /* touches or overlaps the last range */
                if (b > out[2 * n - 1]) out[2 * n - 1] = b;
                continue;
            }
            if (n == max_pairs) { err = -E2BIG; last = 1; break; }
            if (n == cap) {
                uint64_t *grown = realloc(out, cap * 4 * sizeof(uint64_t));
                if (grown == NULL) { err = -ENOMEM; last = 1; break; }
                out = grown;
                cap *= 2;
            }
            out[2 * n] = a;
            out[2 * n + 1] = b;
            n++;
        }
        /* The next call starts after the last record returned. */
        h->fmh_keys[0] = h->fmh_recs[h->fmh_entries - 1];
    }
    free(h);
    if (err != 0) { free(out); return err; }
    for (size_t i = 0; i < n; i++) out[2 * i + 1] -= out[2 * i]; /* end -> length */
    *pairs = out;
    *count = n;
    return 0;
}

int tm_eventfd_cloexec_nonblock(void) {
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return fd >= 0 ? fd : -errno;
}

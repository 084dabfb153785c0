/*
 * CTidemarkSystem: the thin C shim under TidemarkSystem (only that target
 * imports it). It holds only what Swift cannot do directly: ioctl request
 * numbers and the variadic ioctl/open calls, GNU extensions that Swift's
 * Glibc module (built without _GNU_SOURCE) does not declare, macros, the
 * libbpf object lifecycle (load, attach, pin) of the embedded tracer,
 * atomic read-modify-write on words of a shared mmapped BPF map, the vector
 * loops of a drain, the CRC32C instruction, and io_uring glue (liburing's
 * API is mostly static inline). Each declaration says which of these it is.
 * Every symbol is prefixed tm_; functions return 0 (or a value) on success
 * and -errno on failure, and never leave errno for Swift to read.
 *
 * Cryptography, compression and TLS have shims of their own
 * (CTidemarkCrypto, CTidemarkCompression, CTidemarkTransport), so this one
 * links only libbpf, libelf, zlib (libbpf's) and liburing.
 */
#ifndef CTIDEMARK_SYSTEM_H
#define CTIDEMARK_SYSTEM_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "tidemark_tracer_abi.h"

/* ---- block device ioctls (Swift cannot import the _IO* macros) ---- */
/* Size of a block device in bytes (BLKGETSIZE64). Returns 0 or -errno. */
int tm_blk_size_bytes(int fd, uint64_t *out);
/* Logical sector size (BLKSSZGET). Returns 0 or -errno. */
int tm_blk_logical_sector_size(int fd, uint32_t *out);
/* Zero a byte range of a block device (BLKZEROOUT). Returns 0 or -errno. */
int tm_blk_zeroout(int fd, uint64_t offset, uint64_t length);
/* Freeze / thaw the filesystem of the open directory fd (FIFREEZE/FITHAW).
 * Returns 0 or -errno. */
int tm_fs_freeze(int fd);
int tm_fs_thaw(int fd);

/* ---- GNU extensions and macros Swift's Glibc module does not declare ---- */
/* malloc_trim(0): gives the heap's free memory back to the system (glibc
 * keeps freed large blocks otherwise). */
void tm_heap_trim(void);
/* Starts `path` with `argv` (NULL-terminated) as a child in a new session
 * (setsid: its own process group, so a signal to the caller's group does not
 * reach it), with default signal dispositions and an empty signal mask, and
 * with one end of a new AF_UNIX stream socket pair as its standard input;
 * standard output is /dev/null, standard error the caller's. The other end,
 * close-on-exec, is returned in *sock_out, the child's pid in *pid_out.
 * Returns 0 or -errno. (posix_spawn: no code runs between fork and exec;
 * POSIX_SPAWN_SETSID is a GNU extension Swift's Glibc module does not
 * declare.) */
int tm_spawn_session_with_socket(const char *path, char *const argv[], int *pid_out, int *sock_out);
/* syncfs(2) of the filesystem holding fd (a GNU extension). 0 or -errno. */
int tm_syncfs(int fd);
/* sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE) (a GNU extension): starts
 * writeback of the whole file's dirty pages, without waiting. 0 or -errno. */
int tm_start_writeback(int fd);
/* open(2) is variadic in C; Swift imports it only through Glibc overlays
 * that lack O_DIRECT. Returns fd or -errno. */
int tm_open(const char *path, int flags, mode_t mode);
extern const int tm_O_DIRECT;
/* stat(2): Swift resolves `stat` to the struct of the same name. 0 or -errno. */
struct stat;
int tm_stat(const char *path, struct stat *out);
/* major()/minor() are macros. */
unsigned int tm_dev_major(unsigned long long dev);
unsigned int tm_dev_minor(unsigned long long dev);
/* flock(LOCK_EX|LOCK_NB): Swift resolves `flock` to the struct of the same
 * name. Returns 0 or -errno. */
int tm_flock_exclusive_nb(int fd);
/* flock(fd, op) for any op (LOCK_EX, LOCK_UN...), for the same reason. 0 or -errno. */
int tm_flock(int fd, int op);
/* statfs(2) f_type of path, or -errno (Swift resolves `statfs` to the
 * struct of the same name). */
long long tm_statfs_type(const char *path);
/* ioctl(FS_IOC_FIEMAP) of [0, length) with FIEMAP_FLAG_SYNC (the request
 * number is an _IOWR macro, struct fiemap ends in a flexible array): up to
 * max_extents extents into the arrays, their number in *count. 0 or -errno. */
int tm_fiemap(int fd, uint64_t length, uint32_t max_extents, uint64_t *logical, uint64_t *physical,
              uint64_t *extent_length, uint32_t *flags, uint32_t *count);
/* ioctl(FS_IOC_GETFSMAP) on an open file or directory of a mounted
 * filesystem: every record of free space on the filesystem's device `device`
 * (the kernel's encoding in struct fsmap: major << 8 | minor & 0xff |
 * (minor & ~0xff) << 12), as byte ranges [offset, offset + length) merged
 * where they touch, into a malloc'd array of pairs (*pairs, *count pairs;
 * free() it). Free space, not used space: ext4 leaves some used ranges out
 * of its answer altogether, so only what is reported free may be skipped.
 * At most max_pairs pairs: more gives -E2BIG. 0 or -errno (-ENOTTY,
 * -EOPNOTSUPP: the filesystem cannot say). */
int tm_getfsmap_free(int fd, uint32_t device, size_t max_pairs, uint64_t **pairs, size_t *count);
/* The free space of the unmounted ext2/3/4 on block device `path`, from its
 * own block bitmaps (libext2fs, read-only): byte ranges [offset, offset +
 * length) into a malloc'd array of pairs as tm_getfsmap_free gives them, and
 * the filesystem's size in *filesystem_bytes. Refused (-1, the reason in
 * `why`) unless the filesystem was cleanly unmounted (valid state, no errors,
 * no journal to replay) and its superblock read the same before and after
 * the bitmaps (not mounted meanwhile, here or elsewhere); more than
 * max_pairs free extents is refused too. 0 on success. */
int tm_extfs_free(const char *path, size_t max_pairs, uint64_t **pairs, size_t *count,
                  uint64_t *filesystem_bytes, char *why, size_t why_len);
/* fallocate(FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE) (a GNU extension). 0 or -errno. */
int tm_punch_hole(int fd, uint64_t offset, uint64_t length);

/* ---- atomics on shared memory (Swift's Atomic needs storage it owns) ---- */
static inline uint64_t tm_atomic_load_u64(const uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
/* Clears the bits of mask in *p and returns the previous value. */
static inline uint64_t tm_atomic_fetch_and_u64(uint64_t *p, uint64_t mask) {
    return __atomic_fetch_and(p, mask, __ATOMIC_SEQ_CST);
}
static inline uint64_t tm_atomic_fetch_or_u64(uint64_t *p, uint64_t mask) {
    return __atomic_fetch_or(p, mask, __ATOMIC_SEQ_CST);
}
static inline uint64_t tm_atomic_exchange_u64(uint64_t *p, uint64_t v) {
    return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
}
/* A spin-wait hint (PAUSE on x86): for a loop that polls a flag another
 * thread sets, to spare the other hyperthread and the memory order machine. */
static inline void tm_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}
/* Index of the first non-zero word in [p, p+n), or n: the hot loop of
 * draining a mostly clean bitmap, with AVX2 loads chosen at run time
 * (Swift has neither vector intrinsics nor __builtin_cpu_supports). */
size_t tm_find_nonzero_word(const uint64_t *p, size_t n);

/* ---- CRC32C (Castagnoli), hardware instruction when present ---- */
/* The SSE4.2 crc32 instruction (with run-time CPU detection) is a compiler
 * builtin Swift cannot call. A checksum against accidental damage of the
 * formats below the crypto layer (.hrl, shutdown seal, spool, epoch
 * history), not a cryptographic digest: so it lives here, not in
 * CTidemarkCrypto. */
/* crc: the CRC of what came before (0 to start); returns the CRC of it and
 * data[0..len). From 16 KiB on, three parts of the buffer are summed at once
 * and their CRCs combined. */
uint32_t tm_crc32c(uint32_t crc, const void *data, size_t len);
/* The same value computed in one stream (for tests of the above). */
uint32_t tm_crc32c_serial(uint32_t crc, const void *data, size_t len);

/* ---- the tracer (libbpf) ---- */
struct tm_tracer_fds {
    int disks_fd;      /* tm_disks: whole dev_t -> struct tm_disk */
    int bitmaps_fd;    /* tm_bitmaps: slot -> inner bitmap map */
    int slot_state_fd; /* tm_slot_state (mmapable) */
    int slot_info_fd;  /* tm_slot_info */
};
/* Loads the embedded tracer, attaches it to block:block_rq_complete and pins
 * maps and link under pin_dir (which must exist). If pin_dir already holds a
 * link, nothing is loaded. Returns 0 or -errno; errbuf gets a message. */
int tm_tracer_load_and_pin(const char *pin_dir, char *errbuf, size_t errlen);
/* Creates an mmapable inner bitmap map of nr_words 64-bit words. fd or -errno. */
int tm_tracer_create_bitmap(uint32_t nr_words, char *errbuf, size_t errlen);
/* Silences or restores libbpf's own stderr output (libbpf_set_print takes a
 * C variadic callback, which Swift cannot write). */
void tm_libbpf_quiet(int quiet);

/* eventfd(0, EFD_CLOEXEC|EFD_NONBLOCK): <sys/eventfd.h> is not in Swift's
 * Glibc module. fd or -errno. */
int tm_eventfd_cloexec_nonblock(void);

/* io_uring glue and the drain's loops live in headers of their own. */
#include "tm_uring.h"
#include "tm_drain.h"

#endif

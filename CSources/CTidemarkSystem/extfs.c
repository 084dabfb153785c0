/* The free space of an unmounted ext2/3/4, from its own allocation bitmaps
 * (libext2fs, as e2image reads them). See tm_extfs_free in CTidemarkSystem.h. */
#include "CTidemarkSystem.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <et/com_err.h>
#include <ext2fs/ext2fs.h>

enum { SB_OFFSET = 1024, SB_BYTES = 1024 };

/* The superblock as the block device's page cache holds it now: a
 * filesystem mounted meanwhile (here or in another mount namespace) writes
 * its superblock through that cache, so a buffered read sees the change. */
static int read_superblock(const char *path, unsigned char *out) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    ssize_t n = pread(fd, out, SB_BYTES, SB_OFFSET);
    int err = n < 0 ? -errno : (n == SB_BYTES ? 0 : -EIO);
    close(fd);
    return err;
}

static void say(char *why, size_t why_len, const char *fmt, const char *arg) {
    if (why_len > 0) snprintf(why, why_len, fmt, arg);
}

int tm_extfs_free(const char *path, size_t max_pairs, uint64_t **pairs, size_t *count,
                  uint64_t *filesystem_bytes, char *why, size_t why_len) {
    unsigned char before[SB_BYTES], after[SB_BYTES];
    int rc = read_superblock(path, before);
    if (rc != 0) { say(why, why_len, "its superblock could not be read (%s)", strerror(-rc)); return -1; }

    ext2_filsys fs = NULL;
    /* Read-only (no EXT2_FLAG_RW): nothing is ever written to the device.
     * Checksum errors are not ignored: a damaged filesystem is read whole. */
    errcode_t e = ext2fs_open(path, EXT2_FLAG_64BITS, 0, 0, unix_io_manager, &fs);
    if (e != 0) { say(why, why_len, "libext2fs could not open it (%s)", error_message(e)); return -1; }

    int result = -1;
    uint64_t *out = NULL;
    struct ext2_super_block *sb = fs->super;
    /* Only a cleanly unmounted filesystem's bitmaps are whole: one that is
     * mounted (elsewhere), crashed, or has its journal to replay may have
     * allocations recorded only in memory or in the journal. */
    if (!(sb->s_state & EXT2_VALID_FS) || (sb->s_state & EXT2_ERROR_FS)) {
        say(why, why_len, "%s", (sb->s_state & EXT2_ERROR_FS)
            ? "its ext2/3/4 filesystem has errors recorded (run fsck)"
            : "its ext2/3/4 filesystem was not cleanly unmounted (it is mounted elsewhere, or crashed)");
        goto done;
    }
    if (ext2fs_has_feature_journal_needs_recovery(sb)) {
        say(why, why_len, "%s", "its ext2/3/4 journal needs recovery (mount it once, or run fsck)");
        goto done;
    }
    e = ext2fs_read_block_bitmap(fs);
    if (e != 0) { say(why, why_len, "its block bitmaps could not be read (%s)", error_message(e)); goto done; }

    uint64_t block_bytes = (uint64_t)EXT2_BLOCK_SIZE(sb);
    blk64_t first = sb->s_first_data_block, last = ext2fs_blocks_count(sb);
    if (last == 0 || first >= last || block_bytes == 0 || last > UINT64_MAX / block_bytes) {
        say(why, why_len, "%s", "its superblock gives an impossible size");
        goto done;
    }
    last -= 1;
    size_t cap = 256, n = 0;
    out = malloc(cap * 2 * sizeof(uint64_t));
    if (out == NULL) { say(why, why_len, "%s", "out of memory"); goto done; }
    blk64_t at = first;
    for (;;) {
        blk64_t a, b;
        e = ext2fs_find_first_zero_block_bitmap2(fs->block_map, at, last, &a);
        if (e == ENOENT) break;
        if (e != 0) { say(why, why_len, "its block bitmap could not be searched (%s)", error_message(e)); goto done; }
        e = ext2fs_find_first_set_block_bitmap2(fs->block_map, a, last, &b);
        if (e == ENOENT) b = last + 1;
        else if (e != 0) { say(why, why_len, "its block bitmap could not be searched (%s)", error_message(e)); goto done; }
        if (n == max_pairs) { say(why, why_len, "%s", "it has too many free extents"); goto done; }
        if (n == cap) {
            uint64_t *grown = realloc(out, cap * 4 * sizeof(uint64_t));
            if (grown == NULL) { say(why, why_len, "%s", "out of memory"); goto done; }
            out = grown;
            cap *= 2;
        }
        out[2 * n] = (uint64_t)a * block_bytes;
        out[2 * n + 1] = (uint64_t)(b - a) * block_bytes;
        n++;
        if (b > last) break;
        at = b;
    }
    /* Mounted (anywhere) while the bitmaps were read: the answer may mix
     * two states. Unchanged: it is the clean state the filesystem was left in. */
    rc = read_superblock(path, after);
    if (rc != 0) { say(why, why_len, "its superblock could not be read again (%s)", strerror(-rc)); goto done; }
    if (memcmp(before, after, SB_BYTES) != 0) {
        say(why, why_len, "%s", "its ext2/3/4 filesystem changed (was mounted) while its bitmaps were read");
        goto done;
    }
    *filesystem_bytes = (uint64_t)(last + 1) * block_bytes;
    *pairs = out;
    *count = n;
    out = NULL;
    result = 0;
done:
    free(out);
    ext2fs_free(fs);
    return result;
}

/* zstd behind tm_ functions: see include/CTidemarkCompression.h for why this is C. */
#include <errno.h>
#include <zstd.h>
#include <zstd_errors.h>
#include "CTidemarkCompression.h"

struct tm_zstd_cctx *tm_zstd_cctx_new(void) { return (struct tm_zstd_cctx *)ZSTD_createCCtx(); }
void tm_zstd_cctx_free(struct tm_zstd_cctx *c) { ZSTD_freeCCtx((ZSTD_CCtx *)c); }

long tm_zstd_compress(struct tm_zstd_cctx *c, int level, void *dst, size_t cap, const void *src, size_t n) {
    if (n == 0) return 0;
    /* Anything of n bytes or more is "not smaller": let zstd stop early. */
    if (cap > n - 1) cap = n - 1;
    if (cap == 0) return 0;
    size_t r = ZSTD_compressCCtx((ZSTD_CCtx *)c, dst, cap, src, n, level);
    if (ZSTD_isError(r)) return ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall ? 0 : -EINVAL;
    return r < n ? (long)r : 0;
}

size_t tm_zstd_compress_bound(size_t n) { return ZSTD_compressBound(n); }
int tm_zstd_min_level(void) { return ZSTD_minCLevel(); }
int tm_zstd_max_level(void) { return ZSTD_maxCLevel(); }

struct tm_zstd_dctx *tm_zstd_dctx_new(void) { return (struct tm_zstd_dctx *)ZSTD_createDCtx(); }
void tm_zstd_dctx_free(struct tm_zstd_dctx *d) { ZSTD_freeDCtx((ZSTD_DCtx *)d); }

long tm_zstd_decompress(struct tm_zstd_dctx *d, void *dst, size_t cap, const void *src, size_t n, const char **err) {
    /* One-shot decompression into a caller-sized buffer: the output buffer is
     * the window, so a hostile frame header cannot make zstd allocate more. */
    size_t r = ZSTD_decompressDCtx((ZSTD_DCtx *)d, dst, cap, src, n);
    if (ZSTD_isError(r)) {
        if (err) *err = ZSTD_getErrorName(r);
        return -EBADMSG;
    }
    return (long)r;
}

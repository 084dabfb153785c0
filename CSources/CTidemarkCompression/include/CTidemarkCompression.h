/*
 * CTidemarkCompression: zstd (libzstd) behind tm_ functions, for the
 * compression of sealed segments. Only the TidemarkCompression target
 * imports it (Sources/TidemarkCompression/Zstd.swift wraps these).
 *
 * Why C: zstd's header stays out of the module Swift imports, so Swift sees
 * one error convention (a length or 0 on success, -errno on failure)
 * instead of zstd's size_t error codes that need ZSTD_isError and
 * ZSTD_getErrorCode, and a decompression that is bounded by construction
 * (ZSTD_decompressDCtx into a buffer of known capacity, never a size taken
 * from the frame). Contexts are opaque pointers owned by the Swift classes;
 * none is thread-safe (one per worker).
 */
#ifndef CTIDEMARK_COMPRESSION_H
#define CTIDEMARK_COMPRESSION_H

#include <stdint.h>
#include <stddef.h>

struct tm_zstd_cctx;
struct tm_zstd_dctx;

/* A compression context (ZSTD_createCCtx), or NULL when out of memory. */
struct tm_zstd_cctx *tm_zstd_cctx_new(void);
void tm_zstd_cctx_free(struct tm_zstd_cctx *c);
/* Compresses src[0..n) at level into dst (capacity cap) as one zstd frame
 * with the content size recorded. Returns the compressed length when it is
 * smaller than n and fits in cap, 0 when it is not smaller (or does not fit),
 * -EINVAL on any other zstd error. */
long tm_zstd_compress(struct tm_zstd_cctx *c, int level, void *dst, size_t cap, const void *src, size_t n);
/* ZSTD_compressBound(n). */
size_t tm_zstd_compress_bound(size_t n);
/* ZSTD_minCLevel() and ZSTD_maxCLevel(). */
int tm_zstd_min_level(void);
int tm_zstd_max_level(void);

/* A decompression context (ZSTD_createDCtx), or NULL when out of memory. */
struct tm_zstd_dctx *tm_zstd_dctx_new(void);
void tm_zstd_dctx_free(struct tm_zstd_dctx *d);
/* Decompresses src[0..n) into dst (capacity cap; nothing beyond cap is ever
 * written or allocated). Returns the decompressed length, or -EBADMSG when the
 * input is not a valid frame or does not fit in cap; *err then names zstd's
 * reason (a static string). */
long tm_zstd_decompress(struct tm_zstd_dctx *d, void *dst, size_t cap, const void *src, size_t n, const char **err);

#endif

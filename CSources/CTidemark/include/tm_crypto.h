/*
 * tm_crypto.h: zstd compression and OpenSSL crypto for sealed segments
 * (Sources/TidemarkSystem/Zstd.swift and Crypto.swift wrap these; the formats
 * are in docs/wire-format.md).
 *
 * Why C: the library headers stay out of the module Swift imports, so Swift
 * sees only these tm_ functions with one error convention (0 or a length on
 * success, -errno on failure) instead of zstd's size_t error codes that need
 * ZSTD_isError/ZSTD_getErrorCode, and OpenSSL's int/pointer conventions, its
 * EVP_CIPHER_CTX_ctrl(EVP_CTRL_GCM_*) calls that take a non-const void *, and
 * its function-like macros. Contexts are opaque pointers owned by the Swift
 * classes; none is thread-safe (one per worker).
 */
#ifndef TM_CRYPTO_H
#define TM_CRYPTO_H

#include <stdint.h>
#include <stddef.h>

/* ---- zstd ---- */
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

/* ---- AES-256-GCM (OpenSSL EVP), 12-byte nonce, 16-byte tag ---- */
struct tm_gcm;

/* Two EVP_CIPHER_CTXs (encrypt, decrypt) keyed once with the 32-byte key and
 * reused for every message. NULL when OpenSSL fails (out of memory). */
struct tm_gcm *tm_gcm_new(const uint8_t *key32);
/* Frees both contexts; the key schedule is cleansed by OpenSSL. */
void tm_gcm_free(struct tm_gcm *g);
/* Encrypts buf[0..n) in place under nonce12 with aad[0..aadlen) authenticated,
 * and writes the 16-byte tag to tag16. 0 or -EINVAL/-EIO. */
int tm_gcm_seal(struct tm_gcm *g, void *buf, size_t n, const uint8_t *nonce12,
                const void *aad, size_t aadlen, uint8_t *tag16);
/* As tm_gcm_seal, encrypting in[0..n) into out[0..n) (the same buffer, or
 * two that do not overlap): saves a copy when the plaintext is elsewhere. */
int tm_gcm_seal_to(struct tm_gcm *g, const void *in, void *out, size_t n, const uint8_t *nonce12,
                   const void *aad, size_t aadlen, uint8_t *tag16);
/* Decrypts buf[0..n) in place and checks the tag. 0, or -EBADMSG when the tag
 * does not match (buf is then zeroed: unauthenticated plaintext is never
 * released), or -EINVAL/-EIO. */
int tm_gcm_open(struct tm_gcm *g, void *buf, size_t n, const uint8_t *nonce12,
                const void *aad, size_t aadlen, const uint8_t *tag16);
/* As tm_gcm_open, decrypting in[0..n) into out[0..n) (the same buffer, or
 * two that do not overlap). On -EBADMSG out is zeroed. */
int tm_gcm_open_to(struct tm_gcm *g, const void *in, void *out, size_t n, const uint8_t *nonce12,
                   const void *aad, size_t aadlen, const uint8_t *tag16);

/* ---- hashing and randomness ---- */
/* SHA-256 of data[0..n) into out32 (EVP_Digest). 0 or -EIO. */
int tm_sha256(const void *data, size_t n, uint8_t *out32);
/* HMAC-SHA-256 (RFC 2104) with a key of at most 64 bytes over
 * prefix[0..prefixlen) ‖ data[0..n), into out32. 0, -EINVAL (key too long)
 * or -ENOMEM/-EIO. */
int tm_hmac_sha256(const uint8_t *key, size_t keylen, const void *prefix, size_t prefixlen,
                   const void *data, size_t n, uint8_t *out32);
/* Keyed 128-bit PRF for chunk digests (docs/wire-format.md 4.5, construction
 * 3): AES-256 under prp_key32 of the GMAC tag (AES-256-GCM under gmac_key32,
 * a 12-byte all-zero IV, no plaintext) over prefix[0..prefixlen) ‖
 * data[0..n) as associated data. Both key schedules are made once per
 * context; a context serves one thread at a time. NULL when OpenSSL cannot
 * allocate or lacks AES. */
struct tm_gmac_prf;
struct tm_gmac_prf *tm_gmac_prf_new(const uint8_t *gmac_key32, const uint8_t *prp_key32);
void tm_gmac_prf_free(struct tm_gmac_prf *c);
/* The PRF of prefix ‖ data into out16. 0 or -EIO. */
int tm_gmac_prf(struct tm_gmac_prf *c, const void *prefix, size_t prefixlen, const void *data, size_t n,
                uint8_t *out16);
/* Fills buf[0..n) from the OS CSPRNG (getrandom(2), retried on EINTR and
 * short reads). 0 or -errno. */
int tm_random_bytes(void *buf, size_t n);

#endif

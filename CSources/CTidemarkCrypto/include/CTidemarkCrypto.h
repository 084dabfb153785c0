/*
 * CTidemarkCrypto: OpenSSL's libcrypto (AES-256-GCM, SHA-256, HMAC-SHA-256,
 * the GMAC-based PRF of the chunk digests) and the kernel's CSPRNG, behind
 * tm_ functions. Only the TidemarkCrypto target imports it
 * (Sources/TidemarkCrypto/Crypto.swift wraps these; the formats are in
 * docs/wire-format.md).
 *
 * Why C: the library headers stay out of the module Swift imports, so Swift
 * sees only these tm_ functions with one error convention (0 on success,
 * -errno on failure) instead of OpenSSL's int/pointer conventions, its
 * EVP_CIPHER_CTX_ctrl(EVP_CTRL_GCM_*) calls that take a non-const void *,
 * and its function-like macros. Contexts are opaque pointers owned by the
 * Swift classes; none is thread-safe (one per worker).
 */
#ifndef CTIDEMARK_CRYPTO_H
#define CTIDEMARK_CRYPTO_H

#include <stdint.h>
#include <stddef.h>

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
 * short reads). 0 or -errno. (Glibc's module does not show getrandom's
 * <sys/random.h> to Swift.) */
int tm_random_bytes(void *buf, size_t n);

#endif

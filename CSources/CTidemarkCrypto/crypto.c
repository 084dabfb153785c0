/* OpenSSL EVP and getrandom behind tm_ functions: see include/CTidemarkCrypto.h for
 * why this is C. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <openssl/evp.h>
#include <openssl/crypto.h>
#include "CTidemarkCrypto.h"

/* One context per direction, each keyed once: a message then costs only the
 * nonce reset (EVP_*Init_ex with NULL cipher and key keeps the key schedule). */
struct tm_gcm {
    EVP_CIPHER_CTX *enc;
    EVP_CIPHER_CTX *dec;
};

struct tm_gcm *tm_gcm_new(const uint8_t *key32) {
    struct tm_gcm *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->enc = EVP_CIPHER_CTX_new();
    g->dec = EVP_CIPHER_CTX_new();
    if (!g->enc || !g->dec
        || EVP_EncryptInit_ex(g->enc, EVP_aes_256_gcm(), NULL, key32, NULL) != 1
        || EVP_DecryptInit_ex(g->dec, EVP_aes_256_gcm(), NULL, key32, NULL) != 1) {
        tm_gcm_free(g);
        return NULL;
    }
    /* The default GCM IV length is 12 bytes, which is what we use. */
    return g;
}

void tm_gcm_free(struct tm_gcm *g) {
    if (!g) return;
    EVP_CIPHER_CTX_free(g->enc);
    EVP_CIPHER_CTX_free(g->dec);
    free(g);
}

/* EVP_*Update takes an int length: feed at most 1 GiB per call. */
#define TM_GCM_STEP ((size_t)1 << 30)

int tm_gcm_seal(struct tm_gcm *g, void *buf, size_t n, const uint8_t *nonce12,
                const void *aad, size_t aadlen, uint8_t *tag16) {
    return tm_gcm_seal_to(g, buf, buf, n, nonce12, aad, aadlen, tag16);
}

int tm_gcm_seal_to(struct tm_gcm *g, const void *in, void *out, size_t n, const uint8_t *nonce12,
                   const void *aad, size_t aadlen, uint8_t *tag16) {
    int outl = 0;
    if (aadlen > INT_MAX) return -EINVAL;
    if (EVP_EncryptInit_ex(g->enc, NULL, NULL, NULL, nonce12) != 1) return -EIO;
    if (aadlen && EVP_EncryptUpdate(g->enc, NULL, &outl, aad, (int)aadlen) != 1) return -EIO;
    const unsigned char *src = in;
    unsigned char *dst = out;
    for (size_t done = 0; done < n;) {
        size_t step = n - done < TM_GCM_STEP ? n - done : TM_GCM_STEP;
        if (EVP_EncryptUpdate(g->enc, dst + done, &outl, src + done, (int)step) != 1) return -EIO;
        done += step;
    }
    if (EVP_EncryptFinal_ex(g->enc, dst + n, &outl) != 1) return -EIO; /* GCM writes nothing here */
    if (EVP_CIPHER_CTX_ctrl(g->enc, EVP_CTRL_GCM_GET_TAG, 16, tag16) != 1) return -EIO;
    return 0;
}

int tm_gcm_open(struct tm_gcm *g, void *buf, size_t n, const uint8_t *nonce12,
                const void *aad, size_t aadlen, const uint8_t *tag16) {
    return tm_gcm_open_to(g, buf, buf, n, nonce12, aad, aadlen, tag16);
}

int tm_gcm_open_to(struct tm_gcm *g, const void *in, void *out, size_t n, const uint8_t *nonce12,
                   const void *aad, size_t aadlen, const uint8_t *tag16) {
    int outl = 0;
    unsigned char tag[16];
    if (aadlen > INT_MAX) return -EINVAL;
    memcpy(tag, tag16, 16); /* EVP_CTRL_GCM_SET_TAG takes a non-const pointer */
    if (EVP_DecryptInit_ex(g->dec, NULL, NULL, NULL, nonce12) != 1) return -EIO;
    if (aadlen && EVP_DecryptUpdate(g->dec, NULL, &outl, aad, (int)aadlen) != 1) return -EIO;
    const unsigned char *src = in;
    unsigned char *dst = out;
    for (size_t done = 0; done < n;) {
        size_t step = n - done < TM_GCM_STEP ? n - done : TM_GCM_STEP;
        if (EVP_DecryptUpdate(g->dec, dst + done, &outl, src + done, (int)step) != 1) return -EIO;
        done += step;
    }
    if (EVP_CIPHER_CTX_ctrl(g->dec, EVP_CTRL_GCM_SET_TAG, 16, tag) != 1) return -EIO;
    if (EVP_DecryptFinal_ex(g->dec, dst + n, &outl) != 1) {
        OPENSSL_cleanse(out, n);
        return -EBADMSG;
    }
    return 0;
}

int tm_sha256(const void *data, size_t n, uint8_t *out32) {
    unsigned int len = 0;
    return EVP_Digest(data, n, out32, &len, EVP_sha256(), NULL) == 1 && len == 32 ? 0 : -EIO;
}

/* HMAC-SHA-256 (RFC 2104) over prefix ‖ data, built on EVP_Digest* so no
 * deprecated HMAC_CTX is needed: the key is at most one SHA-256 block (64
 * bytes), so it is zero-padded, never hashed first. */
int tm_hmac_sha256(const uint8_t *key, size_t keylen, const void *prefix, size_t prefixlen,
                   const void *data, size_t n, uint8_t *out32) {
    if (keylen > 64) return -EINVAL;
    uint8_t ipad[64], opad[64], inner[32];
    memset(ipad, 0x36, sizeof ipad);
    memset(opad, 0x5c, sizeof opad);
    for (size_t i = 0; i < keylen; i++) { ipad[i] ^= key[i]; opad[i] ^= key[i]; }
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    if (!c) return -ENOMEM;
    unsigned int len = 0;
    int ok = EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1
        && EVP_DigestUpdate(c, ipad, sizeof ipad) == 1
        && (prefixlen == 0 || EVP_DigestUpdate(c, prefix, prefixlen) == 1)
        && (n == 0 || EVP_DigestUpdate(c, data, n) == 1)
        && EVP_DigestFinal_ex(c, inner, &len) == 1 && len == 32
        && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1
        && EVP_DigestUpdate(c, opad, sizeof opad) == 1
        && EVP_DigestUpdate(c, inner, sizeof inner) == 1
        && EVP_DigestFinal_ex(c, out32, &len) == 1 && len == 32;
    EVP_MD_CTX_free(c);
    OPENSSL_cleanse(ipad, sizeof ipad);
    OPENSSL_cleanse(opad, sizeof opad);
    return ok ? 0 : -EIO;
}

/* GMAC then one AES block. GHASH alone is a universal hash: with its output
 * in the clear (digests travel unencrypted in segment headers) the hash key
 * could be solved for and collisions made; the AES layer on top hides it, so
 * equal digests reveal only equal GHASH values (docs/wire-format.md 4.5). */
struct tm_gmac_prf {
    EVP_CIPHER_CTX *gmac;
    EVP_CIPHER_CTX *prp;
};

void tm_gmac_prf_free(struct tm_gmac_prf *c) {
    if (!c) return;
    EVP_CIPHER_CTX_free(c->gmac);
    EVP_CIPHER_CTX_free(c->prp);
    free(c);
}

struct tm_gmac_prf *tm_gmac_prf_new(const uint8_t *gmac_key32, const uint8_t *prp_key32) {
    static const uint8_t zero_iv[12];
    struct tm_gmac_prf *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->gmac = EVP_CIPHER_CTX_new();
    c->prp = EVP_CIPHER_CTX_new();
    if (!c->gmac || !c->prp
        || EVP_EncryptInit_ex(c->gmac, EVP_aes_256_gcm(), NULL, gmac_key32, zero_iv) != 1
        || EVP_EncryptInit_ex(c->prp, EVP_aes_256_ecb(), NULL, prp_key32, NULL) != 1
        || EVP_CIPHER_CTX_set_padding(c->prp, 0) != 1) {
        tm_gmac_prf_free(c);
        return NULL;
    }
    return c;
}

int tm_gmac_prf(struct tm_gmac_prf *c, const void *prefix, size_t prefixlen, const void *data, size_t n,
                uint8_t *out16) {
    static const uint8_t zero_iv[12];
    uint8_t tag[16];
    int len = 0;
    /* Associated data is fed in pieces of at most INT_MAX bytes. */
    const uint8_t *d = data;
    if (prefixlen > INT_MAX) return -EINVAL;
    int ok = EVP_EncryptInit_ex(c->gmac, NULL, NULL, NULL, zero_iv) == 1
        && (prefixlen == 0 || EVP_EncryptUpdate(c->gmac, NULL, &len, prefix, (int)prefixlen) == 1);
    for (size_t left = n; ok && left > 0;) {
        int piece = left > (size_t)INT_MAX ? INT_MAX : (int)left;
        ok = EVP_EncryptUpdate(c->gmac, NULL, &len, d, piece) == 1;
        d += piece;
        left -= (size_t)piece;
    }
    ok = ok && EVP_EncryptFinal_ex(c->gmac, tag, &len) == 1
        && EVP_CIPHER_CTX_ctrl(c->gmac, EVP_CTRL_GCM_GET_TAG, 16, tag) == 1
        && EVP_EncryptUpdate(c->prp, out16, &len, tag, 16) == 1 && len == 16;
    OPENSSL_cleanse(tag, sizeof tag);
    return ok ? 0 : -EIO;
}

int tm_random_bytes(void *buf, size_t n) {
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t r = getrandom(p, n, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

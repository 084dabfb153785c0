/* CRC32C (Castagnoli, reflected polynomial 0x82F63B78), as used by iSCSI,
 * ext4 and btrfs. Uses the SSE4.2 crc32 instruction when the CPU has it. */
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include "CTidemarkSystem.h"

static uint32_t table[256];
static int table_ready;

static void build_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        table[i] = c;
    }
    __atomic_store_n(&table_ready, 1, __ATOMIC_RELEASE);
}

static uint32_t crc32c_sw(uint32_t crc, const uint8_t *p, size_t len) {
    if (!__atomic_load_n(&table_ready, __ATOMIC_ACQUIRE)) build_table();
    while (len--) crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return crc;
}

/* crc32c(A ‖ B) = crc32c(A) · x^(8|B|) ⊕ crc32c(B) (mod P), for CRCs with
 * all-ones initial value and final xor, like this one; the product is taken
 * in the reflected representation (zlib's multmodp / x2nmodp). Lets a long
 * buffer be cut into three parts whose CRCs are computed together. */
#define CRC32C_POLY 0x82F63B78u

static uint32_t multmodp(uint32_t a, uint32_t b) {
    uint32_t m = (uint32_t)1 << 31, p = 0;
    for (;;) {
        if (a & m) {
            p ^= b;
            if ((a & (m - 1)) == 0) break;
        }
        m >>= 1;
        b = b & 1 ? (b >> 1) ^ CRC32C_POLY : b >> 1;
    }
    return p;
}

/* x^(8·n) mod P. */
static uint32_t x8nmodp(size_t n) {
    uint32_t p = (uint32_t)1 << 31; /* x^0 */
    uint32_t x2k = (uint32_t)1 << 23; /* x^8 (x^k is bit 31 - k) */
    while (n) {
        if (n & 1) p = multmodp(x2k, p);
        n >>= 1;
        x2k = multmodp(x2k, x2k);
    }
    return p;
}

/* Finished CRCs of A and of B (|B| = lenb bytes) → the CRC of A ‖ B. */
static uint32_t crc32c_combine(uint32_t crca, uint32_t crcb, size_t lenb) {
    return multmodp(x8nmodp(lenb), crca) ^ crcb;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const uint8_t *p, size_t len) {
    uint64_t c = crc;
    while (len >= 8) {
        uint64_t v; memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
        p += 8; len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--) c32 = __builtin_ia32_crc32qi(c32, *p++);
    return c32;
}

/* The crc32 instruction has a latency of three cycles and a throughput of
 * one per cycle: three independent streams (three equal parts of the
 * buffer) run about three times as fast as one. `crc` and the result are
 * finished CRCs (as tm_crc32c). */
__attribute__((target("sse4.2")))
static uint32_t crc32c_hw3(uint32_t crc, const uint8_t *p, size_t len) {
    size_t part = len / 24 * 8; /* a multiple of 8; the third part takes the rest */
    const uint8_t *a = p, *b = p + part, *c = p + 2 * part;
    uint64_t ca = ~crc, cb = 0xFFFFFFFFu, cc = 0xFFFFFFFFu;
    for (size_t i = 0; i < part; i += 8) {
        uint64_t va, vb, vc;
        memcpy(&va, a + i, 8); memcpy(&vb, b + i, 8); memcpy(&vc, c + i, 8);
        ca = __builtin_ia32_crc32di(ca, va);
        cb = __builtin_ia32_crc32di(cb, vb);
        cc = __builtin_ia32_crc32di(cc, vc);
    }
    size_t rest = len - 3 * part;
    uint32_t fc = ~crc32c_hw((uint32_t)cc, c + part, rest);
    uint32_t fa = ~(uint32_t)ca, fb = ~(uint32_t)cb;
    return crc32c_combine(crc32c_combine(fa, fb, part), fc, part + rest);
}
#endif

/* Below this, one stream (the combination costs about a microsecond). */
#define CRC32C_THREE_WAY_MIN 16384

uint32_t tm_crc32c(uint32_t crc, const void *data, size_t len) {
    const uint8_t *p = data;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2")) {
        if (len >= CRC32C_THREE_WAY_MIN) return crc32c_hw3(crc, p, len);
        return ~crc32c_hw(~crc, p, len);
    }
#endif
    return ~crc32c_sw(~crc, p, len);
}

/* For tests: the single-stream result, to check the three-way one against. */
uint32_t tm_crc32c_serial(uint32_t crc, const void *data, size_t len) {
    const uint8_t *p = data;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2")) return ~crc32c_hw(~crc, p, len);
#endif
    return ~crc32c_sw(~crc, p, len);
}

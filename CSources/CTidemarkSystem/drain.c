/*
 * The drain's loops over the shared bitmap words; see tm_drain.h for what
 * they do and why they are in C.
 */
#include "tm_drain.h"

/* Free entries the snapshot needs before looking at a block: a block of 32
 * words can yield 32 entries. */
#define SNAP_BLOCK 32

static size_t snapshot_scalar(const uint64_t *w, size_t n, size_t *pos,
                              uint32_t *idx, uint64_t *bits, size_t cap) {
    size_t i = *pos, o = 0;
    while (i < n) {
        if (cap - o < SNAP_BLOCK) break;
        size_t end = i + SNAP_BLOCK < n ? i + SNAP_BLOCK : n;
        for (; i < end; i++) {
            /* One read per word: the value tested is the value recorded. */
            uint64_t v = __atomic_load_n(&w[i], __ATOMIC_RELAXED);
            idx[o] = (uint32_t)i;
            bits[o] = v;
            o += v != 0; /* branch-free compaction */
        }
    }
    *pos = i;
    return o;
}

#if defined(__x86_64__)
#include <immintrin.h>

__attribute__((target("avx2")))
static size_t snapshot_avx2(const uint64_t *w, size_t n, size_t *pos,
                            uint32_t *idx, uint64_t *bits, size_t cap) {
    size_t i = *pos, o = 0;
    const __m256i zero = _mm256_setzero_si256();
    while (i + SNAP_BLOCK <= n) {
        if (cap - o < SNAP_BLOCK) { *pos = i; return o; }
        const __m256i *p = (const __m256i *)(w + i);
        __m256i x0 = _mm256_loadu_si256(p), x1 = _mm256_loadu_si256(p + 1);
        __m256i x2 = _mm256_loadu_si256(p + 2), x3 = _mm256_loadu_si256(p + 3);
        __m256i x4 = _mm256_loadu_si256(p + 4), x5 = _mm256_loadu_si256(p + 5);
        __m256i x6 = _mm256_loadu_si256(p + 6), x7 = _mm256_loadu_si256(p + 7);
        __m256i any = _mm256_or_si256(_mm256_or_si256(_mm256_or_si256(x0, x1), _mm256_or_si256(x2, x3)),
                                      _mm256_or_si256(_mm256_or_si256(x4, x5), _mm256_or_si256(x6, x7)));
        if (_mm256_testz_si256(any, any)) { i += SNAP_BLOCK; continue; }
        /* Which of the 32 words are non-zero, from the registers already
         * loaded: the recorded values are exactly the ones tested. */
#define ZM(x) ((uint32_t)_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpeq_epi64((x), zero))))
        uint32_t m = ~(ZM(x0) | ZM(x1) << 4 | ZM(x2) << 8 | ZM(x3) << 12 |
                       ZM(x4) << 16 | ZM(x5) << 20 | ZM(x6) << 24 | ZM(x7) << 28);
#undef ZM
        uint64_t tmp[SNAP_BLOCK] __attribute__((aligned(32)));
        __m256i *t = (__m256i *)tmp;
        _mm256_store_si256(t, x0); _mm256_store_si256(t + 1, x1);
        _mm256_store_si256(t + 2, x2); _mm256_store_si256(t + 3, x3);
        _mm256_store_si256(t + 4, x4); _mm256_store_si256(t + 5, x5);
        _mm256_store_si256(t + 6, x6); _mm256_store_si256(t + 7, x7);
        do {
            unsigned k = (unsigned)__builtin_ctz(m);
            idx[o] = (uint32_t)(i + k);
            bits[o] = tmp[k];
            o++;
            m &= m - 1;
        } while (m);
        i += SNAP_BLOCK;
    }
    /* The last n % 32 words. */
    *pos = i;
    return o + snapshot_scalar(w, n, pos, idx + o, bits + o, cap - o);
}

/* The same with AVX-512: each group of 8 words is compacted in a register
 * (VPCOMPRESSQ, and VPCOMPRESSD for their indices) and stored whole, with no
 * branch per non-zero word. At 1% dirty in clusters most 32-word blocks hold
 * a non-zero word, and the AVX2 loop's branch per word mispredicted there.
 * The register forms are used: the memory-destination compress is slow on
 * some CPUs. A group's whole-vector store writes past its non-zero entries,
 * within the 32 free entries checked per block. */
__attribute__((target("avx512f,avx512vl")))
static size_t snapshot_avx512(const uint64_t *w, size_t n, size_t *pos,
                              uint32_t *idx, uint64_t *bits, size_t cap) {
    size_t i = *pos, o = 0;
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    while (i + SNAP_BLOCK <= n) {
        if (cap - o < SNAP_BLOCK) { *pos = i; return o; }
        const uint64_t *p = w + i;
        __m512i x[4];
        x[0] = _mm512_loadu_si512(p);      x[1] = _mm512_loadu_si512(p + 8);
        x[2] = _mm512_loadu_si512(p + 16); x[3] = _mm512_loadu_si512(p + 24);
        __m512i any = _mm512_or_si512(_mm512_or_si512(x[0], x[1]), _mm512_or_si512(x[2], x[3]));
        if (_mm512_test_epi64_mask(any, any) == 0) { i += SNAP_BLOCK; continue; }
        for (int g = 0; g < 4; g++) {
            /* The recorded values are exactly the ones tested. */
            __mmask8 m = _mm512_test_epi64_mask(x[g], x[g]);
            _mm512_storeu_si512(bits + o, _mm512_maskz_compress_epi64(m, x[g]));
            __m256i ix = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)(i + 8 * (size_t)g)), lane);
            _mm256_storeu_si256((__m256i *)(idx + o), _mm256_maskz_compress_epi32(m, ix));
            o += (size_t)__builtin_popcount((unsigned)m);
        }
        i += SNAP_BLOCK;
    }
    *pos = i;
    return o + snapshot_scalar(w, n, pos, idx + o, bits + o, cap - o);
}
#endif

size_t tm_snapshot_nonzero(const uint64_t *words, size_t n, size_t *pos,
                           uint32_t *idx_out, uint64_t *bits_out, size_t cap) {
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl"))
        return snapshot_avx512(words, n, pos, idx_out, bits_out, cap);
    if (__builtin_cpu_supports("avx2")) return snapshot_avx2(words, n, pos, idx_out, bits_out, cap);
#endif
    return snapshot_scalar(words, n, pos, idx_out, bits_out, cap);
}

/* How many entries ahead the clear prefetches. Enough misses in flight to
 * cover memory latency; the prefetched lines (one per entry at worst) stay
 * far below L1 capacity. */
#ifndef TM_CLEAR_PREFETCH
#define TM_CLEAR_PREFETCH 32
#endif

#define CLEAR_LOOP                                                                  \
    size_t i = 0;                                                                   \
    for (; i + TM_CLEAR_PREFETCH < count; i++) {                                    \
        __builtin_prefetch(&words[idx[i + TM_CLEAR_PREFETCH]], 1, 3);              \
        __atomic_fetch_and(&words[idx[i]], ~bits[i], __ATOMIC_SEQ_CST);             \
    }                                                                               \
    for (; i < count; i++) __atomic_fetch_and(&words[idx[i]], ~bits[i], __ATOMIC_SEQ_CST);

#if defined(__x86_64__)
/* With PRFCHW the prefetch is PREFETCHW: the line arrives in exclusive
 * state, ready for the locked AND, instead of shared and upgraded later. */
__attribute__((target("prfchw")))
static void clear_prfchw(uint64_t *words, const uint32_t *idx, const uint64_t *bits, size_t count) {
    CLEAR_LOOP
}
#endif

static void clear_plain(uint64_t *words, const uint32_t *idx, const uint64_t *bits, size_t count) {
    CLEAR_LOOP
}

void tm_clear_snapshot(uint64_t *words, const uint32_t *idx, const uint64_t *bits, size_t count) {
#if defined(__x86_64__)
    if (__builtin_cpu_supports("prfchw")) { clear_prfchw(words, idx, bits, count); return; }
#endif
    clear_plain(words, idx, bits, count);
}

/*
 * The two hot loops of a drain over the kernel's shared bitmap words
 * (Sources/TidemarkSystem/DrainWords.swift wraps them; docs/tracer.md,
 * "Draining", gives the order they run in).
 *
 * Why C: both loops run over memory the BPF program modifies concurrently
 * from other CPUs, one word per dirty 64 chunks, so their cost is per-word
 * instruction overhead and cache misses rather than arithmetic.
 *  - The snapshot extracts the non-zero words from the same AVX2 registers
 *    that found them (one read per word, no second load that could differ),
 *    with a compare/movemask per 256-byte block instead of a call per word.
 *  - The clear issues prefetch-for-write (__builtin_prefetch(p, 1), PREFETCHW
 *    on x86) a few dozen words ahead of the locked AND-NOTs. A locked RMW is
 *    a full barrier on x86; where it also holds back later misses, each one
 *    would wait alone for its cold cache line. (Measured on the 2-vCPU AMD
 *    EPYC VM of BENCHMARKS.md, the clear costs ~8-9 ns per word with or
 *    without the prefetch, bitmap cached or evicted, rolling or batched:
 *    there the locked operation itself is the cost. The prefetch is kept as
 *    it costs nothing measurable.)
 * Swift has neither the vector intrinsics nor prefetch.
 */
#ifndef TM_DRAIN_H
#define TM_DRAIN_H

#include <stdint.h>
#include <stddef.h>

/* Appends every non-zero word of words[*pos ..< n] to idx_out/bits_out
 * (word index and value as read; the words are not modified), in increasing
 * index order, writing at most cap entries. Returns the number written and
 * advances *pos to where the scan stopped: *pos == n when done, otherwise
 * call again (with more room) to resume. Stops early only when fewer than
 * 32 free entries remain, so cap < 32 makes no progress. Indices are
 * absolute, so n must be at most 2^32 (a BPF array map holds fewer words). */
size_t tm_snapshot_nonzero(const uint64_t *words, size_t n, size_t *pos,
                           uint32_t *idx_out, uint64_t *bits_out, size_t cap);

/* For i in 0 ..< count: atomically words[idx[i]] &= ~bits[i] (a locked
 * AND per word, so bits the BPF program sets concurrently survive). */
void tm_clear_snapshot(uint64_t *words, const uint32_t *idx, const uint64_t *bits, size_t count);

#endif

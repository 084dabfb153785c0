// SPDX-License-Identifier: GPL-2.0
/*
 * Tidemark change tracer: on every completed block request that writes
 * (write, discard, secure erase, write-zeroes, zone append...), set the bits
 * of every chunk the request touched in the tracked region's bitmap, with
 * atomic OR. The bitmaps are BPF_F_MMAPABLE arrays of 64-bit words that the
 * agent maps and drains. See docs/tracer.md.
 *
 * Built by CSources/bpf/build.sh into CSources/CTidemarkSystem/tracer_bpf_object.h.
 */
#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "../CTidemarkSystem/include/tidemark_tracer_abi.h"

char LICENSE[] SEC("license") = "GPL";

/* CO-RE views of the kernel's block request: libbpf relocates every field
 * access against the running kernel's BTF. Only the fields used are named. */
struct gendisk {
    int major;
    int first_minor;
} __attribute__((preserve_access_index));

struct request_queue {
    struct gendisk *disk;
} __attribute__((preserve_access_index));

struct request {
    struct request_queue *q;
    unsigned int cmd_flags;
    unsigned long long __sector;
} __attribute__((preserve_access_index));

/* REQ_OP_MASK and op_is_write() from include/linux/blk_types.h: operations
 * with the low bit set (write, discard, secure erase, write-zeroes, zone
 * append, zone resets...) change data; reads, flushes and driver-private
 * "in" operations do not. */
#define TM_REQ_OP_MASK 0xffu
#define TM_OP_CHANGES_DATA(op) ((op) & 1u)
/* REQ_OP_DRV_IN: driver passthrough operations from here on, which the
 * kernel leaves out of the disk's I/O statistics. */
#define TM_REQ_OP_DRV_IN 34u

struct inner_bitmap {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(map_flags, BPF_F_MMAPABLE | BPF_F_INNER_MAP);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
    __uint(max_entries, TM_MAX_SLOTS);
    __type(key, __u32);
    __array(values, struct inner_bitmap);
} tm_bitmaps SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, TM_MAX_SLOTS);
    __type(key, __u32);
    __type(value, struct tm_disk);
} tm_disks SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(map_flags, BPF_F_MMAPABLE);
    __uint(max_entries, TM_MAX_SLOTS);
    __type(key, __u32);
    __type(value, struct tm_slot_state);
} tm_slot_state SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, TM_MAX_SLOTS);
    __type(key, __u32);
    __type(value, struct tm_slot_info);
} tm_slot_info SEC(".maps");

struct fill_ctx {
    __u32 slot;
    __u32 first_word;
    int failed;
};

/* bpf_loop callback: set every bit of one full word. */
static long fill_word(__u64 index, void *data)
{
    struct fill_ctx *c = data;
    __u32 slot = c->slot;
    void *bitmap = bpf_map_lookup_elem(&tm_bitmaps, &slot);
    if (!bitmap) {
        c->failed = 1;
        return 1;
    }
    __u32 word = c->first_word + (__u32)index;
    __u64 *w = bpf_map_lookup_elem(bitmap, &word);
    if (!w) {
        c->failed = 1;
        return 1;
    }
    __sync_fetch_and_or(w, ~0ULL);
    return 0;
}

static int or_word(void *bitmap, __u32 word, __u64 mask)
{
    __u64 *w = bpf_map_lookup_elem(bitmap, &word);
    if (!w)
        return -1;
    __sync_fetch_and_or(w, mask);
    return 0;
}

static __always_inline void mark_chunks(__u32 slot, __u64 first, __u64 last)
{
    struct tm_slot_state *st = bpf_map_lookup_elem(&tm_slot_state, &slot);
    void *bitmap = bpf_map_lookup_elem(&tm_bitmaps, &slot);
    if (!st)
        return;
    if (!bitmap) {
        __sync_fetch_and_add(&st->lookup_misses, 1);
        __sync_fetch_and_or(&st->overflow, 1);
        return;
    }
    __sync_fetch_and_add(&st->events, 1);

    __u64 w0 = first >> 6, w1 = last >> 6;
    __u64 head = ~0ULL << (first & 63);
    __u64 tail = ~0ULL >> (63 - (last & 63));
    int err = 0;
    if (w0 == w1) {
        err |= or_word(bitmap, (__u32)w0, head & tail);
    } else {
        err |= or_word(bitmap, (__u32)w0, head);
        err |= or_word(bitmap, (__u32)w1, tail);
        __u64 middle = w1 - w0 - 1;
        if (middle > TM_MAX_WORDS_PER_EVENT) {
            /* Too long to set word by word: ask the agent to mark it all. */
            __sync_fetch_and_or(&st->overflow, 1);
        } else if (middle > 0) {
            struct fill_ctx c = { .slot = slot, .first_word = (__u32)(w0 + 1), .failed = 0 };
            long n = bpf_loop((__u32)middle, fill_word, &c, 0);
            if (n != (long)middle || c.failed)
                err = -1;
        }
    }
    if (err) {
        __sync_fetch_and_add(&st->lookup_misses, 1);
        __sync_fetch_and_or(&st->overflow, 1);
    }
}

/* A BTF raw tracepoint on block:block_rq_complete: the same tracepoint,
 * called with (struct request *rq, blk_status_t error, unsigned int nr_bytes),
 * without the perf event record a classic tracepoint program makes the kernel
 * build for every completion on every disk. */
SEC("tp_btf/block_rq_complete")
int BPF_PROG(tm_block_rq_complete, struct request *rq, int error, unsigned int nr_bytes)
{
    /* BTF-typed arguments are read with plain loads: the verifier checks
     * them against the kernel's types and makes each a fault-safe load, so
     * no helper call per field (BPF_CORE_READ would make six). The local
     * struct views above still relocate every field offset (CO-RE). */
    struct request_queue *q = rq->q;
    if (!q)
        return 0;
    struct gendisk *gd = q->disk;
    if (!gd)
        return 0;
    /* The whole disk's dev_t in the kernel's encoding, as disk_devt(). */
    __u32 dev = ((__u32)gd->major << 20) | (__u32)gd->first_minor;
    struct tm_disk *disk = bpf_map_lookup_elem(&tm_disks, &dev);
    if (!disk)
        return 0;

    __u32 op = rq->cmd_flags & TM_REQ_OP_MASK;
    if (!TM_OP_CHANGES_DATA(op))
        return 0;
    __u32 nr_sector = nr_bytes >> 9;
    if (nr_sector == 0)
        return 0;

    __u64 lo = rq->__sector;
    __u64 hi = lo + nr_sector; /* exclusive */

    __u32 n = disk->nr_regions;
    /* Counted like the kernel's statistics count them (see the ABI). */
    int accounted = op < TM_REQ_OP_DRV_IN;

    for (__u32 i = 0; i < TM_MAX_REGIONS_PER_DISK; i++) {
        if (i >= n)
            break;
        struct tm_region *r = &disk->regions[i];
        if (accounted) {
            __u32 slot = r->slot;
            struct tm_slot_state *st = bpf_map_lookup_elem(&tm_slot_state, &slot);
            if (st)
                __sync_fetch_and_add(&st->disk_sectors, nr_sector);
        }
        __u64 rs = r->start_sector, re = r->start_sector + r->nr_sectors;
        __u64 a = lo > rs ? lo : rs;
        __u64 b = hi < re ? hi : re;
        if (a >= b || r->nr_chunks == 0)
            continue;
        __u32 shift = r->chunk_shift & 63;
        __u64 first = (a - rs) >> shift;
        __u64 last = (b - 1 - rs) >> shift;
        if (last >= r->nr_chunks)
            last = r->nr_chunks - 1;
        mark_chunks(r->slot, first, last);
    }
    return 0;
}

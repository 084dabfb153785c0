// SPDX-License-Identifier: GPL-2.0
/*
 * Tidemark change tracer: on every completed block request that writes
 * (write, discard, secure erase, write-zeroes, zone append...), set the bits
 * of every chunk the request touched in the tracked region's bitmap, with
 * atomic OR. The bitmaps are BPF_F_MMAPABLE arrays of 64-bit words that the
 * agent maps and drains. A second program records each write request from
 * its issue until its completion is seen (the issue record), so that a
 * completion the kernel skips the probe for can be found again. See
 * docs/tracer.md.
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
    unsigned int __data_len;
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

/* The issue record: write requests on tracked disks from their issue until
 * the program sees their final completion (docs/tracer.md, "Issue record").
 * An array indexed by a hash of the request's address: no locks, one
 * compare-and-swap to claim an entry and one to free it. */
struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(map_flags, BPF_F_MMAPABLE);
    __uint(max_entries, TM_MAX_INFLIGHT);
    __type(key, __u32);
    __type(value, struct tm_issued);
} tm_inflight SEC(".maps");

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

/* Sets the bits of every tracked region of `disk` that [lo, hi) touches. */
static __always_inline void mark_range(struct tm_disk *disk, __u64 lo, __u64 hi)
{
    __u32 n = disk->nr_regions;
    for (__u32 i = 0; i < TM_MAX_REGIONS_PER_DISK; i++) {
        if (i >= n)
            break;
        struct tm_region *r = &disk->regions[i];
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
}

enum tm_counter { TM_DISK_SECTORS, TM_ISSUED, TM_UNMATCHED, TM_RECOVERED, TM_UNRECORDED };

/* Adds n to one counter of every slot on `disk` (each slot counts its whole disk). */
static __always_inline void count_disk(struct tm_disk *disk, enum tm_counter which, __u64 n)
{
    __u32 nr = disk->nr_regions;
    for (__u32 i = 0; i < TM_MAX_REGIONS_PER_DISK; i++) {
        if (i >= nr)
            break;
        __u32 slot = disk->regions[i].slot;
        struct tm_slot_state *st = bpf_map_lookup_elem(&tm_slot_state, &slot);
        if (!st)
            continue;
        switch (which) {
        case TM_DISK_SECTORS: __sync_fetch_and_add(&st->disk_sectors, n); break;
        case TM_ISSUED: __sync_fetch_and_add(&st->issued_sectors, n); break;
        case TM_UNMATCHED: __sync_fetch_and_add(&st->unmatched_sectors, n); break;
        case TM_RECOVERED: __sync_fetch_and_add(&st->recovered_sectors, n); break;
        case TM_UNRECORDED: __sync_fetch_and_add(&st->issues_unrecorded, n); break;
        }
    }
}

/* A record whose request was issued or completed again without the program
 * seeing its final completion: that completion was skipped. Its chunks are
 * marked now; the caller then reuses or frees the entry. */
static __always_inline void recover_stale(struct tm_issued *stale)
{
    __u32 odev = stale->whole_dev;
    __u64 osector = stale->sector, onr = stale->nr_sectors;
    struct tm_disk *od = bpf_map_lookup_elem(&tm_disks, &odev);
    if (!od)
        return; /* no longer tracked */
    mark_range(od, osector, osector + onr);
    count_disk(od, TM_RECOVERED, onr);
}

/* The request's address as a number. The verifier forbids arithmetic on a
 * pointer and reading a spilled pointer in parts; copied by the helper, the
 * address is a plain scalar. */
static __always_inline __u64 request_address(struct request *rq)
{
    __u64 spilled = (__u64)rq, key = 0;
    bpf_probe_read_kernel(&key, sizeof(key), &spilled);
    return key;
}

/* The tracked disk of a request, and its dev_t; NULL when untracked. */
static __always_inline struct tm_disk *tracked_disk(struct request *rq, __u32 *dev)
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
    *dev = ((__u32)gd->major << 20) | (__u32)gd->first_minor;
    return bpf_map_lookup_elem(&tm_disks, dev);
}

/* A BTF raw tracepoint on block:block_rq_complete: the same tracepoint,
 * called with (struct request *rq, blk_status_t error, unsigned int nr_bytes),
 * without the perf event record a classic tracepoint program makes the kernel
 * build for every completion on every disk. */
SEC("tp_btf/block_rq_complete")
int BPF_PROG(tm_block_rq_complete, struct request *rq, int error, unsigned int nr_bytes)
{
    __u32 dev;
    struct tm_disk *disk = tracked_disk(rq, &dev);
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

    /* Counted like the kernel's statistics count them (see the ABI), and
     * only those are in the issue record. */
    if (op < TM_REQ_OP_DRV_IN) {
        count_disk(disk, TM_DISK_SECTORS, nr_sector);
        mark_range(disk, lo, hi);
        /* This request's own record covers what is left of it, [lo, lo +
         * remaining): its final completion ends the record. A record of
         * another request under this address is one before it whose
         * completion was skipped. */
        __u64 key = request_address(rq);
        __u32 idx = TM_INFLIGHT_INDEX(key);
        __u32 remaining = rq->__data_len >> 9;
        struct tm_issued *e = bpf_map_lookup_elem(&tm_inflight, &idx);
        if (e && e->rq == key) {
            if (e->whole_dev == dev && e->sector <= lo &&
                lo + remaining == e->sector + (__u64)e->nr_sectors) {
                if (nr_sector >= remaining)
                    __sync_val_compare_and_swap(&e->rq, key, 0);
                return 0;
            }
            recover_stale(e);
            __sync_val_compare_and_swap(&e->rq, key, 0);
        }
        count_disk(disk, TM_UNMATCHED, nr_sector);
        return 0;
    }
    mark_range(disk, lo, hi);
    return 0;
}

/* A BTF raw tracepoint on block:block_rq_issue, called with (struct request
 * *rq) when the request goes to the driver: the second, independent record
 * of writes, kept until the completion program sees the request end. */
SEC("tp_btf/block_rq_issue")
int BPF_PROG(tm_block_rq_issue, struct request *rq)
{
    __u32 dev;
    struct tm_disk *disk = tracked_disk(rq, &dev);
    if (!disk)
        return 0;
    __u32 op = rq->cmd_flags & TM_REQ_OP_MASK;
    if (!TM_OP_CHANGES_DATA(op) || op >= TM_REQ_OP_DRV_IN)
        return 0;
    __u32 nr_sector = rq->__data_len >> 9;
    if (nr_sector == 0)
        return 0;
    __u64 key = request_address(rq);
    __u32 idx = TM_INFLIGHT_INDEX(key);
    __u64 sector = rq->__sector;
    struct tm_issued *e = bpf_map_lookup_elem(&tm_inflight, &idx);
    if (!e)
        return 0;
    __u64 held = __sync_val_compare_and_swap(&e->rq, 0, key);
    if (held != 0 && held != key) {
        /* Another request holds the entry: this one goes unrecorded, and
         * the balance counts it if its completion is missed too. */
        count_disk(disk, TM_UNRECORDED, 1);
        return 0;
    }
    if (held == key) {
        /* The same request issued again (after a requeue, maybe after a
         * partial completion): same disk and end, within the recorded
         * range. Keep the record; it is counted once. */
        if (e->whole_dev == dev && e->sector <= sector &&
            sector + nr_sector == e->sector + (__u64)e->nr_sectors)
            return 0;
        recover_stale(e);
    }
    e->whole_dev = dev;
    e->nr_sectors = nr_sector;
    e->sector = sector;
    count_disk(disk, TM_ISSUED, nr_sector);
    return 0;
}

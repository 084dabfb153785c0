/*
 * Tidemark tracer ABI: the layout of the BPF maps shared between the eBPF
 * program (CSources/bpf/tracer.bpf.c) and the agent. Plain fixed-width C
 * types only, so both the BPF target and the host compiler agree on the
 * layout. Changing anything here changes TM_TRACER_ABI_VERSION.
 */
#ifndef TIDEMARK_TRACER_ABI_H
#define TIDEMARK_TRACER_ABI_H

#define TM_TRACER_ABI_VERSION 3u

/* Maximum number of tracked regions (disks or partitions) on one host. */
#define TM_MAX_SLOTS 64u
/* Maximum number of tracked regions that share one whole disk. */
#define TM_MAX_REGIONS_PER_DISK 4u
/* The longest run of full bitmap words one event may set with bpf_loop.
 * 2^23 is the kernel's limit for bpf_loop iterations (BPF_MAX_LOOPS).
 * A longer run sets the slot's overflow flag instead, which the agent
 * answers by marking the whole region dirty: never fewer bits. */
#define TM_MAX_WORDS_PER_EVENT (1u << 23)
/* Entries of tm_inflight, host-wide: write requests on tracked disks that
 * were issued and whose completion the program has not seen (in flight, or
 * completed with the completion probe skipped). A request's entry is
 * TM_INFLIGHT_INDEX of its address; an entry held by another request leaves
 * the issue unrecorded, which the agent's issue balance counts. */
#define TM_INFLIGHT_SHIFT 16u
#define TM_MAX_INFLIGHT (1u << TM_INFLIGHT_SHIFT)
/* Fibonacci hashing of the request's address (struct request is larger than
 * 16 bytes, so its low 4 bits say nothing). */
#define TM_INFLIGHT_INDEX(addr) \
    ((unsigned int)((((unsigned long long)(addr) >> 4) * 0x9E3779B97F4A7C15ULL) >> (64u - TM_INFLIGHT_SHIFT)))

/* One tracked region of a whole disk, in 512-byte sectors relative to the
 * start of the whole disk (a partition's /sys/class/block/<part>/start). */
struct tm_region {
    unsigned long long start_sector;
    unsigned long long nr_sectors;
    unsigned long long nr_chunks;
    unsigned int slot;               /* index into tm_bitmaps / tm_slot_state */
    unsigned int chunk_shift;        /* log2(chunk size in sectors) */
};

/* Value of tm_disks, keyed by the whole disk's kernel dev_t
 * (major << 20 | minor). */
struct tm_disk {
    unsigned int nr_regions;
    unsigned int pad;
    struct tm_region regions[TM_MAX_REGIONS_PER_DISK];
};

/* Value of tm_slot_state (mmapable array indexed by slot): counters and the
 * overflow flag written by the BPF program with atomic operations. */
struct tm_slot_state {
    unsigned long long overflow;     /* non-zero: mark the whole region dirty */
    unsigned long long events;       /* write/discard completions that touched the region */
    unsigned long long lookup_misses;/* bitmap word lookups that failed (must stay 0) */
    unsigned long long reserved;     /* agents only: the program's recursion_misses already accounted for */
    /* Sectors of every write, discard, secure erase or write-zeroes request
     * (not driver passthrough) completed on the slot's whole disk, counted
     * at each call of the program: the same requests and sizes the kernel
     * adds to the disk's write and discard sector statistics right after
     * the tracepoint. A completion the program never saw leaves this count
     * behind the kernel's (docs/tracer.md, "Completion cross-check"). */
    unsigned long long disk_sectors;
    /* Agents only: 1 + (kernel's write+discard sectors of the whole disk -
     * disk_sectors) when it was established; 0 while not established. */
    unsigned long long sector_offset;
    /* Version 3: the issue record (docs/tracer.md, "Issue record").
     * Program: sectors of write-class requests (as disk_sectors counts
     * them) recorded in tm_inflight when issued (block_rq_issue), once per
     * request: a request issued again after a requeue is not counted twice. */
    unsigned long long issued_sectors;
    /* Program: sectors completed on the whole disk whose request has no
     * record of its issue (the issue probe was skipped, or tm_inflight
     * was full). */
    unsigned long long unmatched_sectors;
    /* Program: sectors of recorded requests whose completion the program
     * never saw, found when their request slot was issued or completed
     * again and marked then. */
    unsigned long long recovered_sectors;
    /* Program: issues that could not be recorded because their entry in
     * tm_inflight was held by another request. */
    unsigned long long issues_unrecorded;
    /* Agents only: 1 + (kernel sectors - issued_sectors - unmatched_sectors)
     * at the last moment the disk was still; 0 while none. */
    unsigned long long balance_base;
    /* Agents only: sectors of completion deficits answered from the issue
     * record and not yet confirmed by the balance; 0 when none. */
    unsigned long long pending_sectors;
};

/* Value of tm_inflight (mmapable array, TM_MAX_INFLIGHT entries): one write
 * request on a tracked disk, recorded when it was issued to the driver.
 * `rq` 0: the entry is free. The issue program claims an entry with an
 * atomic compare-and-swap of `rq` from 0 and then writes the rest; the
 * completion program frees it by swapping `rq` back to 0 (the other fields
 * keep their old values). */
struct tm_issued {
    unsigned long long rq;           /* kernel address of the struct request */
    unsigned int whole_dev;          /* kernel dev_t of the whole disk */
    unsigned int nr_sectors;         /* the request's size when issued */
    unsigned long long sector;       /* its first sector, whole-disk relative */
};

/* Value of tm_slot_info (array indexed by slot), written only by agents:
 * who owns the slot, so a second agent or the debug tool can find it. */
#define TM_PATH_MAX 256u
struct tm_slot_info {
    unsigned int in_use;
    unsigned int whole_dev;          /* kernel dev_t of the whole disk */
    unsigned int region_dev;         /* kernel dev_t of the tracked device (partition or disk) */
    unsigned int chunk_shift;
    unsigned long long start_sector;
    unsigned long long nr_sectors;
    unsigned long long nr_chunks;
    unsigned long long attached_unix_ns;
    char hrl_path[TM_PATH_MAX];      /* absolute path of the owning .hrl file */
};

#endif

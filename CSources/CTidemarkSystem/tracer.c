/* Loading, attaching and pinning the embedded tracer with libbpf. libbpf's
 * object lifecycle (relocation against the running kernel's BTF for CO-RE,
 * map creation, attachment) is C API built around opaque pointers, so it
 * stays here; the policy (when to load, which slot to use) is in Swift. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include "CTidemarkSystem.h"
#include "tracer_bpf_object.h"

static int quiet_print(enum libbpf_print_level level, const char *fmt, va_list ap) {
    (void)level; (void)fmt; (void)ap;
    return 0;
}

void tm_libbpf_quiet(int quiet) {
    libbpf_set_print(quiet ? quiet_print : NULL);
}

static int fail(char *errbuf, size_t errlen, int err, const char *what) {
    if (err > 0) err = -err;
    if (err == 0) err = -EINVAL;
    snprintf(errbuf, errlen, "%s: %s", what, strerror(-err));
    return err;
}

int tm_tracer_load_and_pin(const char *pin_dir, char *errbuf, size_t errlen) {
    char path[512];
    snprintf(path, sizeof(path), "%s/link", pin_dir);
    if (access(path, F_OK) == 0) return 0;

    LIBBPF_OPTS(bpf_object_open_opts, opts, .object_name = "tidemark_tracer");
    struct bpf_object *obj = bpf_object__open_mem(tm_tracer_bpf_object, sizeof(tm_tracer_bpf_object), &opts);
    if (!obj) return fail(errbuf, errlen, errno, "opening the embedded BPF object");

    int err = bpf_object__load(obj);
    if (err) {
        bpf_object__close(obj);
        return fail(errbuf, errlen, err, "loading the tracer into the kernel (is BPF enabled and are you root?)");
    }
    static const char *names[] = { "tm_bitmaps", "tm_disks", "tm_slot_state", "tm_slot_info", "tm_inflight" };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        struct bpf_map *m = bpf_object__find_map_by_name(obj, names[i]);
        snprintf(path, sizeof(path), "%s/%s", pin_dir, names[i]);
        unlink(path); /* a stale pin from a tracer whose link is gone */
        if (!m || (err = bpf_map__pin(m, path)) != 0) {
            bpf_object__close(obj);
            return fail(errbuf, errlen, m ? err : -ENOENT, "pinning a tracer map");
        }
    }
    /* The issue record first, so that a request whose completion the
     * completion program sees was recorded at issue unless the issue probe
     * was skipped. Then the completion program, pinned as `link` last: its
     * pin says the tracer is complete. */
    static const struct { const char *prog, *pin, *what; } links[] = {
        { "tm_block_rq_issue", "link-issue", "attaching to tracepoint block:block_rq_issue" },
        { "tm_block_rq_complete", "link", "attaching to tracepoint block:block_rq_complete" },
    };
    for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++) {
        struct bpf_program *prog = bpf_object__find_program_by_name(obj, links[i].prog);
        struct bpf_link *link = prog ? bpf_program__attach(prog) : NULL;
        if (!link) {
            err = -errno;
            bpf_object__close(obj);
            return fail(errbuf, errlen, err, links[i].what);
        }
        snprintf(path, sizeof(path), "%s/%s", pin_dir, links[i].pin);
        unlink(path); /* a stale pin from a tracer whose link is gone */
        err = bpf_link__pin(link, path);
        if (err) {
            bpf_link__destroy(link);
            bpf_object__close(obj);
            return fail(errbuf, errlen, err, "pinning the tracer link");
        }
        bpf_link__disconnect(link);
        bpf_link__destroy(link);
    }
    /* The pins keep programs, links and maps alive after we close our handles. */
    bpf_object__close(obj);
    return 0;
}

int tm_tracer_create_bitmap(uint32_t nr_words, char *errbuf, size_t errlen) {
    LIBBPF_OPTS(bpf_map_create_opts, o, .map_flags = BPF_F_MMAPABLE | BPF_F_INNER_MAP);
    int fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "tm_bitmap", sizeof(uint32_t), sizeof(uint64_t), nr_words, &o);
    if (fd < 0) return fail(errbuf, errlen, errno, "creating a bitmap map");
    return fd;
}

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
    static const char *names[] = { "tm_bitmaps", "tm_disks", "tm_slot_state", "tm_slot_info" };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        struct bpf_map *m = bpf_object__find_map_by_name(obj, names[i]);
        snprintf(path, sizeof(path), "%s/%s", pin_dir, names[i]);
        unlink(path); /* a stale pin from a tracer whose link is gone */
        if (!m || (err = bpf_map__pin(m, path)) != 0) {
            bpf_object__close(obj);
            return fail(errbuf, errlen, m ? err : -ENOENT, "pinning a tracer map");
        }
    }
    struct bpf_program *prog = bpf_object__find_program_by_name(obj, "tm_block_rq_complete");
    struct bpf_link *link = prog ? bpf_program__attach(prog) : NULL; /* tp_btf/block_rq_complete */
    if (!link) {
        err = -errno;
        bpf_object__close(obj);
        return fail(errbuf, errlen, err, "attaching to tracepoint block:block_rq_complete");
    }
    snprintf(path, sizeof(path), "%s/link", pin_dir);
    err = bpf_link__pin(link, path);
    if (err) {
        bpf_link__destroy(link);
        bpf_object__close(obj);
        return fail(errbuf, errlen, err, "pinning the tracer link");
    }
    /* The pins keep program, link and maps alive after we close our handles. */
    bpf_link__disconnect(link);
    bpf_link__destroy(link);
    bpf_object__close(obj);
    return 0;
}

int tm_tracer_create_bitmap(uint32_t nr_words, char *errbuf, size_t errlen) {
    LIBBPF_OPTS(bpf_map_create_opts, o, .map_flags = BPF_F_MMAPABLE | BPF_F_INNER_MAP);
    int fd = bpf_map_create(BPF_MAP_TYPE_ARRAY, "tm_bitmap", sizeof(uint32_t), sizeof(uint64_t), nr_words, &o);
    if (fd < 0) return fail(errbuf, errlen, errno, "creating a bitmap map");
    return fd;
}

/*
 * test_jit.c — NVRTC builds and the kernel cache. NVRTC only: no CUDA runtime,
 * no GPU. Every test gets its own fresh cache directory under /tmp.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>

#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gen/emit.h"
#include "runtime/core/jit.h"

/* ------------------------------------------------------------------------ */
/* Kernels: tiny, so the whole suite stays a few NVRTC builds long.         */

/* Three kernels with known resources: work (registers), a dynamically indexed
 * local array (stack), a static shared array of 4096 bytes (smem). */
static const char *K_ALL =
    "extern \"C\" __global__ void k_saxpy(float *y, const float *x, float a, int n) {\n"
    "  int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
    "  if (i < n) y[i] = a * x[i] + y[i];\n"
    "}\n"
    "extern \"C\" __global__ void k_stack(float *o, int j) {\n"
    "  float a[64];\n"
    "  for (int i = 0; i < 64; i++) a[(i * 7 + j) & 63] = o[i];\n"
    "  o[threadIdx.x] = a[threadIdx.x & 63];\n"
    "}\n"
    "extern \"C\" __global__ void k_smem(float *o) {\n"
    "  __shared__ float s[1024];\n"
    "  s[threadIdx.x] = o[threadIdx.x];\n"
    "  __syncthreads();\n"
    "  o[threadIdx.x] = s[1023 - threadIdx.x];\n"
    "}\n";

static const char *K_TINY = "extern \"C\" __global__ void k_tiny(float *o) { o[threadIdx.x] = 1.0f; }\n";

/* Another unit as small: a valid entry of its own, under another key. */
static const char *K_OTHER =
    "extern \"C\" __global__ void k_other(float *o) { o[threadIdx.x] = 2.0f; }\n";

/* setmaxnreg exists only on sm_90a: builds there, refused for plain sm_90. */
static const char *K_SM90A = "extern \"C\" __global__ void __launch_bounds__(128, 1) k_a(float *o) {\n"
                             "  asm volatile(\"setmaxnreg.inc.sync.aligned.u32 240;\\n\");\n"
                             "  o[threadIdx.x] = 1.0f;\n"
                             "}\n";

/* Line 3 lacks its ';'. */
static const char *K_BROKEN = "extern \"C\" __global__ void k_broken(float *o) {\n"
                              "  float v = 2.0f;\n"
                              "  o[threadIdx.x] = v\n"
                              "}\n";

/* ------------------------------------------------------------------------ */
/* Fixture: one temp cache dir per test                                     */

static char cache_dir[64];

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void cache_setup(void)
{
    strcpy(cache_dir, "/tmp/s2jit-test-XXXXXX");
    cr_assert_not_null(mkdtemp(cache_dir));
}

static void cache_teardown(void)
{
    nftw(cache_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(jit, .init = cache_setup, .fini = cache_teardown);

static s2_jit_opts opts_for(const char *arch)
{
    s2_jit_opts o = {.arch = arch, .cache_dir = cache_dir, .threads = 1};
    return o;
}

/* Builds one unit; asserts success. */
static s2_jit_result build1(const char *unit, const char *source, const s2_jit_opts *o)
{
    s2_jit_src s = {.unit = unit, .source = source};
    s2_jit_result r;
    s2_error err = {0};
    s2_status st = s2_jit_build(&s, 1, o, &r, &err);
    cr_assert_eq(st, S2_OK, "build of %s failed: %s", unit, err.msg ? err.msg : "?");
    s2_error_clear(&err);
    return r;
}

static const s2_kernel_res *res_named(const s2_jit_result *r, const char *name)
{
    for (int i = 0; i < r->n_res; i++)
        if (strcmp(r->res[i].name, name) == 0)
            return &r->res[i];
    cr_assert_fail("no resource row for %s", name);
    return NULL;
}

static int is_elf(const s2_jit_result *r)
{
    return r->size > 64 && memcmp(r->cubin, "\177ELF", 4) == 0;
}

/* The SM a CUDA ELF targets, from e_flags: ABI version 8 (CUDA 12.8+) moved
 * it from bits 0..7 to bits 8..15. */
static int elf_sm(const s2_jit_result *r)
{
    const unsigned char *e = r->cubin;
    unsigned flags = e[48] | e[49] << 8 | (unsigned)e[50] << 16 | (unsigned)e[51] << 24;
    return e[8] >= 8 ? (flags >> 8) & 0xff : flags & 0xff;
}

static int file_exists(const char *dir, const char *key, const char *ext)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/%s%s", dir, key, ext);
    return access(p, F_OK) == 0;
}

/* ------------------------------------------------------------------------ */
/* Builds and resources                                                     */

Test(jit, builds_sm80_with_resources)
{
    s2_jit_opts o = opts_for("sm_80");
    s2_jit_result r = build1("t/all", K_ALL, &o);
    cr_assert(is_elf(&r));
    cr_assert_eq(elf_sm(&r), 80);
    cr_assert_eq(r.cache_hit, 0);
    cr_assert_eq(r.n_res, 3);
    cr_assert_gt(res_named(&r, "k_saxpy")->regs, 0);
    cr_assert_eq(res_named(&r, "k_stack")->stack, 256);
    cr_assert_eq(res_named(&r, "k_smem")->smem, 4096);
    cr_assert_eq(res_named(&r, "k_saxpy")->smem, 0);
    cr_assert_eq(res_named(&r, "k_saxpy")->spill_stores, 0);
    cr_assert_not_null(strstr(r.log, "Compiling entry function 'k_smem' for 'sm_80'"));
    cr_assert_eq(strlen(r.key), 64);
    cr_assert_not_null(strstr(r.path, cache_dir));
    s2_jit_result_free(&r);
}

Test(jit, builds_real_sm90a)
{
    s2_jit_opts o = opts_for("sm_90a");
    s2_jit_result r = build1("t/all", K_ALL, &o);
    cr_assert(is_elf(&r));
    cr_assert_eq(elf_sm(&r), 90);
    cr_assert_eq(r.n_res, 3);
    cr_assert_gt(res_named(&r, "k_saxpy")->regs, 0);
    cr_assert_eq(res_named(&r, "k_stack")->stack, 256);
    cr_assert_eq(res_named(&r, "k_smem")->smem, 4096);
    s2_jit_result_free(&r);

    /* An sm_90a-only instruction: proof the target is the arch-specific one. */
    r = build1("t/sm90a", K_SM90A, &o);
    cr_assert(is_elf(&r));
    cr_assert_eq(r.n_res, 1);
    s2_jit_result_free(&r);

    o.arch = "sm_90";
    s2_jit_src s = {.unit = "t/sm90a", .source = K_SM90A};
    s2_error err = {0};
    cr_assert_eq(s2_jit_build(&s, 1, &o, &r, &err), S2_ERR_NVRTC);
    cr_assert_not_null(strstr(err.msg, "setmaxnreg"), "%s", err.msg);
    s2_error_clear(&err);
}

/* ------------------------------------------------------------------------ */
/* Cache hits and keys                                                      */

Test(jit, second_build_is_a_cache_hit)
{
    s2_jit_opts o = opts_for("sm_80");
    s2_jit_result a = build1("t/tiny", K_TINY, &o);
    cr_assert_eq(a.cache_hit, 0);
    cr_assert(file_exists(cache_dir, a.key, ".cubin"));
    cr_assert(file_exists(cache_dir, a.key, ".log"));
    cr_assert(file_exists(cache_dir, a.key, ".cu"));

    s2_jit_result b = build1("t/tiny-again", K_TINY, &o);
    cr_assert_eq(b.cache_hit, 1);
    cr_assert_str_eq(a.key, b.key);
    cr_assert_str_eq(a.path, b.path);
    cr_assert_eq(a.size, b.size);
    cr_assert_eq(memcmp(a.cubin, b.cubin, a.size), 0);
    cr_assert_eq(b.n_res, 1);
    cr_assert_str_eq(b.res[0].name, "k_tiny");
    cr_assert_eq(b.res[0].regs, a.res[0].regs);
    cr_assert_gt(b.ms, 0.0);

    char p[1024], *cu = NULL;
    snprintf(p, sizeof p, "%s/%s.cu", cache_dir, a.key);
    cr_assert_eq(s2_read_file(p, &cu, NULL, NULL), S2_OK);
    cr_assert_str_eq(cu, K_TINY);
    free(cu);
    s2_jit_result_free(&a);
    s2_jit_result_free(&b);
}

Test(jit, key_covers_arch_source_and_options)
{
    s2_jit_opts o = opts_for("sm_80");
    s2_jit_result base = build1("t/k", K_TINY, &o);

    o.arch = "sm_86";
    s2_jit_result arch = build1("t/k", K_TINY, &o);
    cr_assert_str_neq(base.key, arch.key);
    cr_assert_eq(arch.cache_hit, 0);

    o.arch = "sm_80";
    s2_jit_result src = build1("t/k", "extern \"C\" __global__ void k_tiny(float *o) { o[0] = 2.0f; }\n", &o);
    cr_assert_str_neq(base.key, src.key);

    o.n_extra = 2;
    o.extra[0] = "-DS2_A=1";
    o.extra[1] = "-DS2_B=2";
    s2_jit_result opt = build1("t/k", K_TINY, &o);
    cr_assert_str_neq(base.key, opt.key);
    cr_assert_eq(opt.cache_hit, 0);

    /* Options are sorted into the key: another order is the same build. */
    o.extra[0] = "-DS2_B=2";
    o.extra[1] = "-DS2_A=1";
    s2_jit_result swapped = build1("t/k", K_TINY, &o);
    cr_assert_str_eq(opt.key, swapped.key);
    cr_assert_eq(swapped.cache_hit, 1);

    s2_jit_result_free(&base);
    s2_jit_result_free(&arch);
    s2_jit_result_free(&src);
    s2_jit_result_free(&opt);
    s2_jit_result_free(&swapped);
}

Test(jit, no_cache_builds_and_writes_nothing)
{
    s2_jit_opts o = opts_for("sm_80");
    o.no_cache = 1;
    s2_jit_result a = build1("t/tiny", K_TINY, &o);
    cr_assert_eq(a.cache_hit, 0);
    cr_assert_str_eq(a.path, "");
    cr_assert_eq(strlen(a.key), 64);
    cr_assert_not(file_exists(cache_dir, a.key, ".cubin"));
    s2_jit_result_free(&a);
}

/* ------------------------------------------------------------------------ */
/* Corrupt entries                                                          */

typedef void (*corrupt_fn)(const char *path);

/* A byte 100 from the end: inside the cubin whatever the header's length. */
static void flip_payload_byte(const char *path)
{
    FILE *f = fopen(path, "r+b");
    cr_assert_not_null(f);
    fseek(f, -100, SEEK_END);
    int c = fgetc(f);
    fseek(f, -100, SEEK_END);
    fputc(c ^ 0x01, f);
    fclose(f);
}

static void truncate_half(const char *path)
{
    struct stat st;
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(truncate(path, st.st_size / 2), 0);
}

static void garbage_header(const char *path)
{
    FILE *f = fopen(path, "r+b");
    cr_assert_not_null(f);
    fwrite("garbage!garbage!", 1, 16, f);
    fclose(f);
}

static void drop_log(const char *path)
{
    char log[1024];
    snprintf(log, sizeof log, "%.*s.log", (int)(strlen(path) - strlen(".cubin")), path);
    cr_assert_eq(unlink(log), 0);
}

Test(jit, corrupt_entries_are_rebuilt)
{
    const corrupt_fn fns[] = {flip_payload_byte, truncate_half, garbage_header, drop_log};
    const char *names[] = {"flipped payload byte", "truncated", "garbage header", "missing log"};
    const char *says[] = {"does not match its SHA-256", "holds", "not a cache entry",
                          ".log is missing"};
    s2_jit_opts o = opts_for("sm_80");
    s2_jit_result good = build1("t/tiny", K_TINY, &o);
    cr_assert_str_eq(good.warning, "", "a plain miss is no problem: %s", good.warning);

    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
        fns[i](good.path);
        s2_jit_result r = build1("t/tiny", K_TINY, &o);
        cr_assert_eq(r.cache_hit, 0, "%s entry was used", names[i]);
        cr_assert_eq(r.size, good.size);
        cr_assert_eq(memcmp(r.cubin, good.cubin, r.size), 0);
        /* Said once, naming the unit, the entry and what was wrong. */
        cr_assert(strstr(r.warning, "unit t/tiny: cache entry "), "%s: '%s'", names[i], r.warning);
        cr_assert(strstr(r.warning, good.path), "%s: '%s'", names[i], r.warning);
        cr_assert(strstr(r.warning, says[i]), "%s: '%s' lacks '%s'", names[i], r.warning, says[i]);
        s2_jit_result_free(&r);

        /* ... and the rewritten entry verifies again. */
        r = build1("t/tiny", K_TINY, &o);
        cr_assert_eq(r.cache_hit, 1, "entry not valid after rebuilding the %s one", names[i]);
        cr_assert_eq(memcmp(r.cubin, good.cubin, r.size), 0);
        cr_assert_str_eq(r.warning, "");
        s2_jit_result_free(&r);
    }
    s2_jit_result_free(&good);
}

/* The entry check accepts what the cache writes, for its key and arch only, and nothing with a
 * byte of any header field, of the variable part or of the payload changed, or cut short. */
Test(jit, cache_entry_check_covers_every_header_field)
{
    s2_jit_opts o = opts_for("sm_80");
    s2_jit_result good = build1("t/tiny", K_TINY, &o);
    uint8_t key[32];
    for (int i = 0; i < 32; i++)
        cr_assert_eq(sscanf(good.key + 2 * i, "%2hhx", &key[i]), 1);
    char *data, why[768];
    size_t size;
    cr_assert_eq(s2_read_file(good.path, &data, &size, NULL), S2_OK);
    cr_assert_gt(size, 88 + good.size);
    size_t hlen = size - good.size;
    cr_assert_eq(s2_jit_cache_entry_fault("sm_80", key, data, size, why, sizeof why), 0, "%s",
                 why);

    /* One byte of each field: magic, format, header length, payload size, hash, key; the
     * arch string's length and first byte; the payload's first and last. (The kernel names
     * at the header's end are held against the log after this check.) */
    const size_t at[] = {0, 7, 8, 11, 12, 15, 16, 23, 24, 55, 56, 87, 88, 90, hlen,
                         size - 1};
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
        data[at[i]] ^= 0x10;
        why[0] = '\0';
        cr_assert_eq(s2_jit_cache_entry_fault("sm_80", key, data, size, why, sizeof why), 1,
                     "byte %zu changed, entry accepted", at[i]);
        cr_assert_neq(why[0], '\0', "byte %zu: no reason given", at[i]);
        data[at[i]] ^= 0x10;
    }
    for (size_t n = 0; n < size; n++)
        cr_assert_eq(s2_jit_cache_entry_fault("sm_80", key, data, n, why, sizeof why), 1,
                     "entry cut to %zu bytes accepted", n);
    cr_assert_eq(s2_jit_cache_entry_fault("sm_90a", key, data, size, why, sizeof why), 1);
    cr_assert(strstr(why, "built for sm_80, not sm_90a"), "%s", why);
    key[31] ^= 1;
    cr_assert_eq(s2_jit_cache_entry_fault("sm_80", key, data, size, why, sizeof why), 1);
    cr_assert(strstr(why, "made for key"), "%s", why);
    key[31] ^= 1;
    cr_assert_eq(s2_jit_cache_entry_fault("sm_80", key, data, size, why, sizeof why), 0);
    free(data);
    s2_jit_result_free(&good);
}

/* ------------------------------------------------------------------------ */
/* Valid entries made for something else                                    */

static void copy_file(const char *from, const char *to)
{
    char *data = NULL;
    size_t n = 0;
    cr_assert_eq(s2_read_file(from, &data, &n, NULL), S2_OK, "cannot read %s", from);
    cr_assert_eq(s2_write_file_atomic(to, data, n, NULL), S2_OK, "cannot write %s", to);
    free(data);
}

static void log_of(const s2_jit_result *r, char *buf, size_t n)
{
    snprintf(buf, n, "%s/%s.log", cache_dir, r->key);
}

/*
 * Asserts that building (unit, source) did not use the entry in its place but rebuilt it,
 * saying why (the warning holds the unit, the entry's path and `why`), that the result is
 * want's cubin and kernels, and that the entry written in its place is a hit with no warning.
 */
static void assert_rebuilt(const char *unit, const char *source, const s2_jit_opts *o,
                           const s2_jit_result *want, const char *why)
{
    s2_jit_result r = build1(unit, source, o);
    cr_assert_eq(r.cache_hit, 0, "the entry in %s was used (%s)", want->path, why);
    cr_assert(strstr(r.warning, unit), "'%s' does not name %s", r.warning, unit);
    cr_assert(strstr(r.warning, want->path), "'%s' does not name the entry", r.warning);
    cr_assert(strstr(r.warning, why), "'%s' lacks '%s'", r.warning, why);
    cr_assert_eq(r.size, want->size);
    cr_assert_eq(memcmp(r.cubin, want->cubin, r.size), 0, "rebuilt some other cubin");
    cr_assert_eq(r.n_res, want->n_res);
    cr_assert_str_eq(r.res[0].name, want->res[0].name);
    s2_jit_result_free(&r);

    r = build1(unit, source, o);
    cr_assert_eq(r.cache_hit, 1, "the rebuilt entry does not verify (%s)", why);
    cr_assert_str_eq(r.warning, "", "reported twice: %s", r.warning);
    cr_assert_eq(r.size, want->size);
    cr_assert_eq(memcmp(r.cubin, want->cubin, r.size), 0);
    cr_assert_str_eq(r.res[0].name, want->res[0].name);
    s2_jit_result_free(&r);
}

Test(jit, valid_entry_of_another_key_is_rebuilt_not_used)
{
    s2_jit_opts o = opts_for("sm_80");
    s2_jit_result a = build1("t/a", K_TINY, &o), b = build1("t/b", K_OTHER, &o);
    cr_assert_str_neq(a.key, b.key);
    cr_assert_str_eq(b.res[0].name, "k_other");

    /* A's whole, valid entry copied onto B's key: its payload still matches its hash. */
    copy_file(a.path, b.path);
    assert_rebuilt("t/b", K_OTHER, &o, &b, "made for key");

    /* The same with A's log beside it, so the resource report would say k_tiny too. */
    char alog[1024], blog[1024];
    log_of(&a, alog, sizeof alog);
    log_of(&b, blog, sizeof blog);
    copy_file(a.path, b.path);
    copy_file(alog, blog);
    assert_rebuilt("t/b", K_OTHER, &o, &b, "made for key");

    /* Only A's log beside B's own cubin: the kernels the two name differ. */
    copy_file(alog, blog);
    assert_rebuilt("t/b", K_OTHER, &o, &b, "kernels");
    s2_jit_result_free(&a);
    s2_jit_result_free(&b);
}

/* Replaces the first `from` in the header of the entry at path (the bytes before its
 * payload_size-byte cubin) by `to`, of the same length; the payload and its hash stay. */
static void patch_header(const char *path, size_t payload_size, const char *from, const char *to)
{
    char *data = NULL;
    size_t n = 0;
    cr_assert_eq(strlen(from), strlen(to));
    cr_assert_eq(s2_read_file(path, &data, &n, NULL), S2_OK);
    cr_assert_gt(n, payload_size);
    char *at = memmem(data, n - payload_size, from, strlen(from));
    cr_assert_not_null(at, "the header of %s does not hold '%s'", path, from);
    memcpy(at, to, strlen(to));
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(data, 1, n, f), n);
    fclose(f);
    free(data);
}

Test(jit, header_of_another_arch_generator_or_kernels_is_rebuilt)
{
    char gen[64];
    snprintf(gen, sizeof gen, "%s", S2_GEN_VERSION);
    gen[strlen(gen) - 1] ^= 1; /* another generator version of the same length */
    const char *from[] = {"sm_80", S2_GEN_VERSION, "k_tiny"};
    const char *to[] = {"sm_86", gen, "k_tinz"};
    const char *why[] = {"built for sm_86", "generator", "kernels"};
    s2_jit_opts o = opts_for("sm_80");
    s2_jit_result good = build1("t/tiny", K_TINY, &o);
    for (int i = 0; i < 3; i++) {
        patch_header(good.path, good.size, from[i], to[i]);
        assert_rebuilt("t/tiny", K_TINY, &o, &good, why[i]);
    }
    s2_jit_result_free(&good);
}

Test(jit, old_format_entry_is_rebuilt)
{
    s2_jit_opts o = opts_for("sm_80");
    s2_jit_result good = build1("t/tiny", K_TINY, &o);
    /* The first format: a 64-byte header of magic, version 1, payload size and hash. */
    size_t n = 64 + good.size;
    unsigned char *old = calloc(1, n);
    cr_assert_not_null(old);
    memcpy(old, "S2CUBIN", 8);
    old[8] = 1;
    for (int i = 0; i < 8; i++)
        old[16 + i] = (unsigned char)((uint64_t)good.size >> (8 * i));
    s2_sha256(good.cubin, good.size, old + 24);
    memcpy(old + 64, good.cubin, good.size);
    cr_assert_eq(s2_write_file_atomic(good.path, old, n, NULL), S2_OK);
    free(old);
    assert_rebuilt("t/tiny", K_TINY, &o, &good, "format 1");
    s2_jit_result_free(&good);
}

Test(jit, kernels_the_caller_needs_are_checked)
{
    static const char *const tiny[] = {"k_tiny"};
    static const char *const more[] = {"k_tiny", "k_nope"};
    s2_jit_opts o = opts_for("sm_80");
    s2_jit_src s = {.unit = "t/tiny", .source = K_TINY, .kernels = tiny, .n_kernels = 1};
    s2_jit_result r;
    s2_error err = {0};
    cr_assert_eq(s2_jit_build(&s, 1, &o, &r, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(r.cache_hit, 0);
    s2_jit_result_free(&r);
    cr_assert_eq(s2_jit_build(&s, 1, &o, &r, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(r.cache_hit, 1);
    s2_jit_result_free(&r);

    /* A kernel the unit does not define: never a hit, and the fresh build says so. */
    s.kernels = more;
    s.n_kernels = 2;
    cr_assert_eq(s2_jit_build(&s, 1, &o, &r, &err), S2_ERR_INVALID);
    cr_assert(strstr(err.msg, "unit t/tiny"), "%s", err.msg);
    cr_assert(strstr(err.msg, "'k_nope'"), "%s", err.msg);
    cr_assert(strstr(err.msg, "exports k_tiny"), "%s", err.msg);
    cr_assert_null(r.cubin);
    s2_error_clear(&err);

    s.n_kernels = -1;
    cr_assert_eq(s2_jit_build(&s, 1, &o, &r, &err), S2_ERR_INVALID);
    s2_error_clear(&err);
}

/* ------------------------------------------------------------------------ */
/* Concurrency                                                              */

/* Child: waits for the start signal, builds, writes the cubin to OUT. */
static void child_build(int go_fd, const char *out)
{
    char c;
    if (read(go_fd, &c, 1) != 1)
        _exit(2);
    s2_jit_opts o = opts_for("sm_80");
    s2_jit_src s = {.unit = "t/race", .source = K_ALL};
    s2_jit_result r;
    if (s2_jit_build(&s, 1, &o, &r, NULL) != S2_OK)
        _exit(3);
    s2_status st = s2_write_file_atomic(out, r.cubin, r.size, NULL);
    _exit(st == S2_OK ? 0 : 4);
}

Test(jit, two_processes_build_one_key)
{
    int go[2];
    cr_assert_eq(pipe(go), 0);
    char outs[2][128];
    pid_t pids[2];
    for (int i = 0; i < 2; i++) {
        snprintf(outs[i], sizeof outs[i], "%s/child%d.bin", cache_dir, i);
        pids[i] = fork();
        cr_assert_geq(pids[i], 0);
        if (pids[i] == 0) {
            close(go[1]);
            child_build(go[0], outs[i]);
        }
    }
    close(go[0]);
    /* Release both at once, so their builds and renames overlap. */
    cr_assert_eq(write(go[1], "go", 2), 2);
    close(go[1]);
    for (int i = 0; i < 2; i++) {
        int ws;
        cr_assert_eq(waitpid(pids[i], &ws, 0), pids[i]);
        cr_assert(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "child %d failed (status %d)", i, ws);
    }

    char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    cr_assert_eq(s2_read_file(outs[0], &a, &na, NULL), S2_OK);
    cr_assert_eq(s2_read_file(outs[1], &b, &nb, NULL), S2_OK);
    cr_assert_eq(na, nb);
    cr_assert_eq(memcmp(a, b, na), 0, "the two processes built different cubins");

    s2_jit_opts o = opts_for("sm_80");
    s2_jit_result r = build1("t/race", K_ALL, &o);
    cr_assert_eq(r.cache_hit, 1, "entry does not verify after the race");
    cr_assert_eq(r.size, na);
    cr_assert_eq(memcmp(r.cubin, a, na), 0);
    cr_assert_eq(r.n_res, 3);
    s2_jit_result_free(&r);
    free(a);
    free(b);
}

#define N_UNITS 6

Test(jit, many_units_on_threads_keep_their_order)
{
    char names[N_UNITS][32], sources[N_UNITS][160];
    s2_jit_src src[N_UNITS];
    for (int i = 0; i < N_UNITS; i++) {
        snprintf(names[i], sizeof names[i], "t/unit%d", i);
        snprintf(sources[i], sizeof sources[i],
                 "extern \"C\" __global__ void k_unit%d(float *o) { o[threadIdx.x] = %d.0f; }\n",
                 i, i);
        src[i] = (s2_jit_src){.unit = names[i], .source = sources[i]};
    }
    s2_jit_opts o = opts_for("sm_80");
    o.threads = 3;
    s2_jit_result out[N_UNITS];
    s2_error err = {0};
    cr_assert_eq(s2_jit_build(src, N_UNITS, &o, out, &err), S2_OK, "%s", err.msg);
    for (int i = 0; i < N_UNITS; i++) {
        char k[32];
        snprintf(k, sizeof k, "k_unit%d", i);
        cr_assert(is_elf(&out[i]));
        cr_assert_eq(out[i].cache_hit, 0);
        cr_assert_eq(out[i].n_res, 1);
        cr_assert_str_eq(out[i].res[0].name, k);
        s2_jit_result_free(&out[i]);
    }

    /* threads = 0: one per CPU; everything is cached now. */
    o.threads = 0;
    cr_assert_eq(s2_jit_build(src, N_UNITS, &o, out, &err), S2_OK, "%s", err.msg);
    for (int i = 0; i < N_UNITS; i++) {
        char k[32];
        snprintf(k, sizeof k, "k_unit%d", i);
        cr_assert_eq(out[i].cache_hit, 1);
        cr_assert_str_eq(out[i].res[0].name, k);
        s2_jit_result_free(&out[i]);
    }
}

/* ------------------------------------------------------------------------ */
/* Failures                                                                 */

Test(jit, nvrtc_failure_shows_unit_options_log_and_source)
{
    s2_jit_src src[2] = {{.unit = "t/good", .source = K_TINY},
                         {.unit = "model-x/broken_fwd", .source = K_BROKEN}};
    s2_jit_opts o = opts_for("sm_80");
    o.threads = 2;
    o.n_extra = 1;
    o.extra[0] = "-DS2_MARK=7";
    s2_jit_result out[2];
    s2_error err = {0};
    cr_assert_eq(s2_jit_build(src, 2, &o, out, &err), S2_ERR_NVRTC);
    cr_assert_eq(err.status, S2_ERR_NVRTC);
    const char *m = err.msg;
    cr_assert_not_null(strstr(m, "unit model-x/broken_fwd: NVRTC failed for sm_80 with options: "),
                       "%s", m);
    cr_assert_not_null(strstr(m, "--gpu-architecture=sm_80"), "%s", m);
    cr_assert_not_null(strstr(m, "-lineinfo"), "%s", m);
    /* NVRTC's own cache (the driver's, on a GPU machine) would skip ptxas and its report. */
    cr_assert_not_null(strstr(m, "--no-cache"), "%s", m);
    cr_assert_not_null(strstr(m, "-DS2_MARK=7"), "%s", m);
    cr_assert_not_null(strstr(m, "(4): error: expected a \";\""), "%s", m);
    cr_assert_not_null(strstr(m, "    3 |   o[threadIdx.x] = v\n"), "%s", m);
    cr_assert_not_null(strstr(m, "    1 | extern"), "%s", m);
    /* The good unit's result was freed with the call. */
    cr_assert_null(out[0].cubin);
    cr_assert_null(out[1].cubin);
    s2_error_clear(&err);
}

Test(jit, bad_nvrtc_option_is_an_nvrtc_error)
{
    s2_jit_opts o = opts_for("sm_80");
    o.n_extra = 1;
    o.extra[0] = "--no-such-option";
    s2_jit_src s = {.unit = "t/opt", .source = K_TINY};
    s2_jit_result r;
    s2_error err = {0};
    cr_assert_eq(s2_jit_build(&s, 1, &o, &r, &err), S2_ERR_NVRTC);
    cr_assert_not_null(strstr(err.msg, "unit t/opt"), "%s", err.msg);
    cr_assert_not_null(strstr(err.msg, "--no-such-option"), "%s", err.msg);
    cr_assert_not_null(strstr(err.msg, "NVRTC_ERROR_INVALID_OPTION"), "%s", err.msg);
    s2_error_clear(&err);
}

Test(jit, invalid_arch_is_rejected)
{
    cr_assert(s2_jit_arch_valid("sm_80"));
    cr_assert(s2_jit_arch_valid("sm_90a"));
    cr_assert_not(s2_jit_arch_valid("sm_75"));
    cr_assert_not(s2_jit_arch_valid("compute_90"));
    cr_assert_not(s2_jit_arch_valid(NULL));

    const char *bad[] = {"sm_75", NULL};
    for (int i = 0; i < 2; i++) {
        s2_jit_opts o = opts_for(bad[i]);
        s2_jit_src s = {.unit = "t/arch", .source = K_TINY};
        s2_jit_result r;
        s2_error err = {0};
        cr_assert_eq(s2_jit_build(&s, 1, &o, &r, &err), S2_ERR_INVALID);
        cr_assert_not_null(strstr(err.msg, "sm_80, sm_86, sm_89, sm_90, sm_90a"), "%s", err.msg);
        if (bad[i])
            cr_assert_not_null(strstr(err.msg, "sm_75"), "%s", err.msg);
        s2_error_clear(&err);
    }
}

Test(jit, bad_arguments_are_rejected)
{
    s2_jit_opts o = opts_for("sm_80");
    s2_jit_src s = {.unit = "t/none", .source = NULL};
    s2_jit_result r;
    s2_error err = {0};
    cr_assert_eq(s2_jit_build(&s, 1, &o, &r, &err), S2_ERR_INVALID);
    cr_assert_not_null(strstr(err.msg, "t/none"), "%s", err.msg);
    o.threads = -1;
    s.source = K_TINY;
    cr_assert_eq(s2_jit_build(&s, 1, &o, &r, &err), S2_ERR_INVALID);
    o.threads = 1;
    o.n_extra = S2_JIT_MAX_EXTRA + 1;
    cr_assert_eq(s2_jit_build(&s, 1, &o, &r, &err), S2_ERR_INVALID);
    o.n_extra = 0;
    cr_assert_eq(s2_jit_build(&s, 0, &o, NULL, &err), S2_OK);
    s2_error_clear(&err);
}

/* ------------------------------------------------------------------------ */
/* Cache directory and NVRTC version                                        */

Test(jit, cache_dir_resolution)
{
    char buf[1024], want[1024];
    s2_error err = {0};
    s2_jit_opts o = opts_for("sm_80");

    cr_assert_eq(s2_jit_cache_dir(&o, buf, sizeof buf, &err), S2_OK);
    cr_assert_str_eq(buf, cache_dir);

    snprintf(want, sizeof want, "%s/env", cache_dir);
    setenv("S2LORA_CACHE_DIR", want, 1);
    cr_assert_eq(s2_jit_cache_dir(NULL, buf, sizeof buf, &err), S2_OK);
    cr_assert_str_eq(buf, want);
    struct stat st;
    cr_assert(stat(want, &st) == 0 && S_ISDIR(st.st_mode), "not created");

    unsetenv("S2LORA_CACHE_DIR");
    snprintf(want, sizeof want, "%s/xdg", cache_dir);
    setenv("XDG_CACHE_HOME", want, 1);
    cr_assert_eq(s2_jit_cache_dir(NULL, buf, sizeof buf, &err), S2_OK);
    snprintf(want, sizeof want, "%s/xdg/s2lora", cache_dir);
    cr_assert_str_eq(buf, want);

    unsetenv("XDG_CACHE_HOME");
    snprintf(want, sizeof want, "%s/home", cache_dir);
    setenv("HOME", want, 1);
    cr_assert_eq(s2_jit_cache_dir(NULL, buf, sizeof buf, &err), S2_OK);
    snprintf(want, sizeof want, "%s/home/.cache/s2lora", cache_dir);
    cr_assert_str_eq(buf, want);
    s2_error_clear(&err);
}

Test(jit, unusable_cache_dir_is_an_error_naming_it)
{
    /* A directory under a regular file cannot be created, even by root. */
    char file[1024], dir[1100];
    snprintf(file, sizeof file, "%s/plainfile", cache_dir);
    cr_assert_eq(s2_write_file_atomic(file, "x", 1, NULL), S2_OK);
    snprintf(dir, sizeof dir, "%s/sub", file);

    s2_jit_opts o = opts_for("sm_80");
    o.cache_dir = dir;
    char buf[1024];
    s2_error err = {0};
    cr_assert_eq(s2_jit_cache_dir(&o, buf, sizeof buf, &err), S2_ERR_CACHE);
    cr_assert_not_null(strstr(err.msg, dir), "%s", err.msg);

    s2_jit_src s = {.unit = "t/tiny", .source = K_TINY};
    s2_jit_result r;
    cr_assert_eq(s2_jit_build(&s, 1, &o, &r, &err), S2_ERR_CACHE);
    cr_assert_not_null(strstr(err.msg, dir), "%s", err.msg);
    s2_error_clear(&err);
}

Test(jit, nvrtc_version)
{
    int major = 0, minor = -1;
    cr_assert_eq(s2_jit_nvrtc_version(&major, &minor, NULL), S2_OK);
    cr_assert_geq(major, 11);
    cr_assert_geq(minor, 0);
}

/* ------------------------------------------------------------------------ */
/* Resource report parsing on literal logs                                  */

/* As NVRTC 13.0 prints it for sm_80 (sm_90 omits cmem[0]). */
static const char *LOG_NVRTC13 =
    "ptxas info    : 0 bytes gmem\n"
    "ptxas info    : Compiling entry function 'k_b' for 'sm_80'\n"
    "ptxas info    : Function properties for k_b\n"
    "ptxas         .     1024 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
    "ptxas info    : Used 40 registers, used 0 barriers, 1024 bytes cumulative stack size, 368 "
    "bytes cmem[0]\n"
    "ptxas info    : Compile time = 31.957 ms\n"
    "ptxas info    : Compiling entry function 'k_a' for 'sm_80'\n"
    "ptxas info    : Function properties for k_a\n"
    "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
    "ptxas info    : Used 9 registers, used 1 barriers, 4096 bytes smem, 360 bytes cmem[0]\n"
    "ptxas info    : Compile time = 0.989 ms\n";

/* The older layout: unprefixed frame line, spills, a device function whose
 * properties come first, lines without barriers or smem, CRLF endings. */
static const char *LOG_OLD =
    "ptxas info    : 0 bytes gmem\r\n"
    "ptxas info    : Function properties for _Z6helperPf\r\n"
    "    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\r\n"
    "ptxas info    : Compiling entry function 'attn_fwd' for 'sm_90a'\r\n"
    "ptxas info    : Function properties for attn_fwd\r\n"
    "    16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads\r\n"
    "ptxas info    : Used 255 registers, used 1 barriers, 8192 bytes smem, 400 bytes cmem[0], 8 "
    "bytes cmem[2]\r\n"
    "ptxas info    : Compiling entry function 'attn_bwd' for 'sm_90a'\r\n"
    "ptxas info    : Function properties for attn_bwd\r\n"
    "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\r\n"
    "ptxas info    : Used 128 registers, 392 bytes cmem[0]\r\n";

Test(jit, parse_resources_nvrtc13_log)
{
    s2_kernel_res r[4];
    cr_assert_eq(s2_jit_parse_resources(LOG_NVRTC13, r, 4), 2);
    cr_assert_str_eq(r[0].name, "k_b");
    cr_assert_eq(r[0].regs, 40);
    cr_assert_eq(r[0].stack, 1024);
    cr_assert_eq(r[0].smem, 0);
    cr_assert_eq(r[0].cmem0, 368);
    cr_assert_str_eq(r[1].name, "k_a");
    cr_assert_eq(r[1].regs, 9);
    cr_assert_eq(r[1].smem, 4096);
    cr_assert_eq(r[1].cmem0, 360);
    cr_assert_eq(r[1].stack, 0);
}

Test(jit, parse_resources_spills_and_several_kernels)
{
    s2_kernel_res r[4];
    cr_assert_eq(s2_jit_parse_resources(LOG_OLD, r, 4), 2);
    cr_assert_str_eq(r[0].name, "attn_fwd");
    cr_assert_eq(r[0].regs, 255);
    cr_assert_eq(r[0].smem, 8192);
    cr_assert_eq(r[0].cmem0, 400);
    cr_assert_eq(r[0].stack, 16);
    cr_assert_eq(r[0].spill_stores, 8);
    cr_assert_eq(r[0].spill_loads, 12);
    cr_assert_str_eq(r[1].name, "attn_bwd");
    cr_assert_eq(r[1].regs, 128);
    cr_assert_eq(r[1].smem, 0);
    cr_assert_eq(r[1].cmem0, 392);
    cr_assert_eq(r[1].spill_stores, 0);

    /* At most max rows; nothing from an empty or NULL log. */
    cr_assert_eq(s2_jit_parse_resources(LOG_OLD, r, 1), 1);
    cr_assert_str_eq(r[0].name, "attn_fwd");
    cr_assert_eq(r[0].spill_loads, 12);
    cr_assert_eq(s2_jit_parse_resources("", r, 4), 0);
    cr_assert_eq(s2_jit_parse_resources(NULL, r, 4), 0);
}

/* A corrupt log (the cache reads KEY.log back from disk) gives no negative or wrapped count:
 * numbers past INT_MAX, sums included, read as INT_MAX; "A+-B" is not a count. */
Test(jit, parse_resources_corrupt_numbers)
{
    static const char log[] =
        "ptxas info    : Compiling entry function 'k' for 'sm_90a'\n"
        "ptxas info    : Used 99999999999999999999999 registers, "
        "9223372036854775807+33333333333333 bytes smem, 2147483647+1 bytes cmem[0]\n"
        "ptxas info    : Function properties for k\n"
        "    7+-9 bytes stack frame, 5 bytes spill stores, 6 bytes spill loads\n";
    s2_kernel_res r[1];
    cr_assert_eq(s2_jit_parse_resources(log, r, 1), 1);
    cr_assert_eq(r[0].regs, INT_MAX);
    cr_assert_eq(r[0].smem, INT_MAX);
    cr_assert_eq(r[0].cmem0, INT_MAX);
    cr_assert_eq(r[0].stack, 0, "stack %d", r[0].stack);
    cr_assert_eq(r[0].spill_stores, 5);
    cr_assert_eq(r[0].spill_loads, 6);
}

/*
 * test_train_kern.c — the trainer's kernel unit without a GPU: the emitted source carries the
 * spec's constants (full precision), NVRTC builds it for sm_80 and sm_90a with every kernel of
 * train_kern.h present and no spills or stack, and the launch functions refuse bad arguments
 * (and accept empty work) before touching CUDA. tests/gpu_check.c runs the kernels.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen/emit.h"
#include "runtime/core/jit.h"
#include "runtime/ref/ref_train.h"
#include "runtime/core/rt.h"
#include "runtime/train/train_kern.h"
#include "cache_warn.h"
#include "tmpdir.h"

/* Every kernel of the unit, as named in templates/train.cuh (train_kern.h's fields). */
static const char *const KERNELS[] = {
    "s2_embed_fwd", "s2_embed_bwd", "s2_embed_bwd_finish", "s2_rmsnorm_fwd", "s2_rmsnorm_bwd",
    "s2_colsum_f32", "s2_rope", "s2_swiglu_fwd", "s2_swiglu_bwd", "s2_add", "s2_xent",
    "s2_adamw", "s2_sumsq", "s2_cast_f32", "s2_cast_elem", "s2_scale_f32",
};
#define N_KERNELS ((int)(sizeof KERNELS / sizeof KERNELS[0]))

static s2_spec load_spec(const char *file, const char *set)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/specs/%s", S2_SOURCE_DIR, file);
    s2_spec_override ov[1] = {{set}};
    s2_spec s;
    s2_error err = {0};
    cr_assert_eq(s2_spec_load(path, ov, set ? 1 : 0, &s, &err), S2_OK, "%s", err.msg);
    return s;
}

static char *emit(const s2_spec *s)
{
    char *src = NULL;
    s2_error err = {0};
    cr_assert_eq(s2_emit_train(s, &src, &err), S2_OK, "%s", err.msg);
    cr_assert_not_null(src);
    return src;
}

/* The value of "#define NAME value" in src, as a double. */
static double define_value(const char *src, const char *name)
{
    char key[64];
    snprintf(key, sizeof key, "#define %s ", name);
    const char *p = strstr(src, key);
    cr_assert_not_null(p, "no %s in the source", name);
    return strtod(p + strlen(key), NULL);
}

/* ---------------------------------------------------------------- emitted source */

Test(train_emit, tiny_constants)
{
    s2_spec s = load_spec("tiny-byte-512.yaml", NULL);
    char *src = emit(&s);
    cr_expect(strstr(src, "from spec 'tiny-byte-512'"));
    cr_expect(strstr(src, s.hash_hex), "the banner names the spec's hash");
    cr_expect(strstr(src, "#define S2_IS_BF16 1\n"));
    cr_expect(strstr(src, "#define S2_HIDDEN 256\n"));
    cr_expect(strstr(src, "#define S2_INTER 688\n"));
    cr_expect(strstr(src, "#define S2_HEAD_DIM 64\n"));
    cr_expect(strstr(src, "#define S2_VOCAB 264\n"));
    /* doubles keep every digit and stay double literals (10000 would be an int) */
    cr_expect(strstr(src, "#define S2_RMS_EPS 1.0000000000000001e-05\n"), "%.400s", src);
    cr_expect(strstr(src, "#define S2_ROPE_THETA 10000.0\n"));
    cr_expect(strstr(src, "#define S2_ROPE_FACTOR 8.0\n"));
    cr_expect_eq(define_value(src, "S2_RMS_EPS"), s.model.rms_norm_eps);
    cr_expect_eq(define_value(src, "S2_ROPE_THETA"), s.model.rope_theta);
    cr_expect_eq(define_value(src, "S2_ROPE_FACTOR"), (double)s.rope_factor);
    cr_expect(strstr(src, "#define S2_ROW_THREADS 32\n"));
    cr_expect(strstr(src, "#define S2_ROW_ITERS 1\n"));
    cr_expect(strstr(src, "// ---- templates/dtype.cuh ----"));
    cr_expect(strstr(src, "// ---- templates/train.cuh ----"));
    cr_expect(!strstr(src, "#include"), "a unit includes no files");
    for (int i = 0; i < N_KERNELS; i++) {
        char decl[64];
        snprintf(decl, sizeof decl, "\n%s(", KERNELS[i]);
        cr_expect(strstr(src, decl), "kernel %s is not in the source", KERNELS[i]);
    }
    /* the kernels' ignore index is the twins' */
    char ign[64];
    snprintf(ign, sizeof ign, "#define S2_IGNORE_INDEX (%d)", S2_REF_IGNORE_INDEX);
    cr_expect(strstr(src, ign));
    free(src);
}

Test(train_emit, llama7b_constants_and_dtype)
{
    s2_spec s = load_spec("llama2-7b-32k.yaml", NULL);
    char *src = emit(&s);
    cr_expect(strstr(src, "from spec 'llama2-7b-32k'"));
    cr_expect(strstr(src, "#define S2_HIDDEN 4096\n"));
    cr_expect(strstr(src, "#define S2_INTER 11008\n"));
    cr_expect(strstr(src, "#define S2_HEAD_DIM 128\n"));
    cr_expect(strstr(src, "#define S2_VOCAB 32000\n"));
    cr_expect(strstr(src, "#define S2_ROPE_FACTOR 8.0\n")); /* 32768 / 4096 */
    cr_expect(strstr(src, "#define S2_ROW_THREADS 512\n"));
    cr_expect(strstr(src, "#define S2_ROW_ITERS 1\n"));
    cr_expect_eq(define_value(src, "S2_RMS_EPS"), s.model.rms_norm_eps);
    free(src);
    /* an odd theta and eps survive to the last digit; fp16 changes the storage switch */
    s2_spec_override ov[] = {{"model.rope_theta=500000.123456789"}, {"model.rms_norm_eps=3.3e-6"},
                             {"dtype=fp16"}};
    char path[1024];
    snprintf(path, sizeof path, "%s/specs/llama2-7b-32k.yaml", S2_SOURCE_DIR);
    s2_error err = {0};
    cr_assert_eq(s2_spec_load(path, ov, 3, &s, &err), S2_OK, "%s", err.msg);
    src = emit(&s);
    cr_expect(strstr(src, "#define S2_IS_BF16 0\n"));
    cr_expect_eq(define_value(src, "S2_ROPE_THETA"), 500000.123456789);
    cr_expect_eq(define_value(src, "S2_RMS_EPS"), 3.3e-6);
    free(src);
}

Test(train_emit, row_geometry)
{
    int t, it;
    s2_emit_train_row_geometry(256, &t, &it); /* 32 chunks: one warp */
    cr_expect(t == 32 && it == 1, "%d %d", t, it);
    s2_emit_train_row_geometry(100, &t, &it); /* 13 chunks, the last one partial */
    cr_expect(t == 32 && it == 1, "%d %d", t, it);
    s2_emit_train_row_geometry(2560, &t, &it);
    cr_expect(t == 320 && it == 1, "%d %d", t, it);
    s2_emit_train_row_geometry(4096, &t, &it);
    cr_expect(t == 512 && it == 1, "%d %d", t, it);
    s2_emit_train_row_geometry(5120, &t, &it); /* 640 chunks */
    cr_expect(t == 512 && it == 2, "%d %d", t, it);
    s2_emit_train_row_geometry(8192, &t, &it);
    cr_expect(t == 512 && it == 2, "%d %d", t, it);
}

/* ---------------------------------------------------------------- NVRTC builds */

static char cache_dir[64];

static void cache_setup(void)
{
    strcpy(cache_dir, "/tmp/s2train-test-XXXXXX");
    cr_assert_not_null(mkdtemp(cache_dir));
}

static void cache_teardown(void) { s2_test_rmtree(cache_dir); }

static void check_build(const char *file, const char *set, const char *arch)
{
    s2_spec s = load_spec(file, set);
    s2_jit_opts o = {.arch = arch, .cache_dir = cache_dir, .threads = 1};
    s2_jit_result r;
    s2_error err = {0};
    cr_assert_eq(s2_train_kern_build(&s, &o, &r, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(r.cache_hit, 0);
    cr_expect_eq(r.n_res, N_KERNELS, "%d kernels in the build, %d expected", r.n_res, N_KERNELS);
    for (int i = 0; i < N_KERNELS; i++) {
        const s2_kernel_res *k = NULL;
        for (int j = 0; j < r.n_res; j++)
            if (strcmp(r.res[j].name, KERNELS[i]) == 0)
                k = &r.res[j];
        cr_expect_not_null(k, "%s: %s missing for %s", file, KERNELS[i], arch);
        if (!k)
            continue;
        cr_expect_gt(k->regs, 0);
        cr_expect_eq(k->spill_stores, 0, "%s %s: %d bytes spill stores", arch, k->name,
                     k->spill_stores);
        cr_expect_eq(k->spill_loads, 0, "%s %s: %d bytes spill loads", arch, k->name,
                     k->spill_loads);
        cr_expect_eq(k->stack, 0, "%s %s: %d-byte stack frame", arch, k->name, k->stack);
    }
    s2_jit_result_free(&r);
    /* the same unit again comes from the cache, under the unit name <spec>/train */
    cr_assert_eq(s2_train_kern_build(&s, &o, &r, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(r.cache_hit, 1);
    s2_jit_result_free(&r);
}

TestSuite(train_build, .init = cache_setup, .fini = cache_teardown, .timeout = 600);

Test(train_build, tiny_sm80) { check_build("tiny-byte-512.yaml", NULL, "sm_80"); }
Test(train_build, tiny_sm90a) { check_build("tiny-byte-512.yaml", NULL, "sm_90a"); }
Test(train_build, tiny_fp16_sm90a) { check_build("tiny-byte-512.yaml", "dtype=fp16", "sm_90a"); }
Test(train_build, llama7b_sm80) { check_build("llama2-7b-32k.yaml", NULL, "sm_80"); }
Test(train_build, llama7b_sm90a) { check_build("llama2-7b-32k.yaml", NULL, "sm_90a"); }
/* 13B: 5120 columns, two chunks a thread in the row kernels; a 32001 vocabulary (LongLoRA's
 * [PAD]) takes the element path of the cross-entropy */
Test(train_build, llama13b_vocab32001_sm90a)
{
    check_build("llama2-13b-32k.yaml", "model.vocab_size=32001", "sm_90a");
}

/* A corrupt entry under the trainer's unit is rebuilt by s2_train_kern_load, and its warning
 * reaches the device's cache_warn (the CLI prints it) before the load itself: here, with no
 * GPU, the load then fails, and the warning has still been told, once. */
Test(train_build, load_tells_rebuilt_entry)
{
    s2_spec s = load_spec("tiny-byte-512.yaml", NULL);
    s2_jit_opts o = {.arch = "sm_80", .cache_dir = cache_dir, .threads = 1};
    s2_jit_result r;
    s2_error err = {0};
    cr_assert_eq(s2_train_kern_build(&s, &o, &r, &err), S2_OK, "%s", err.msg);
    cr_assert_str_eq(r.warning, "", "a plain miss is no problem: %s", r.warning);
    char path[sizeof r.path];
    snprintf(path, sizeof path, "%s", r.path);
    s2_jit_result_free(&r);
    flip_last_byte(path);

    heard h = {0};
    s2_rt rt = {.arch = "sm_80", .sm_count = 1, .cache_warn = hear, .cache_warn_arg = &h};
    s2_train_kern k;
    s2_status st = s2_train_kern_load(&k, &rt, &s, &o, &err);
    s2_error_clear(&err);
    if (!st)
        s2_train_kern_free(&k);
    cr_assert_eq(h.n, 1, "the rebuilt entry was told %d times", h.n);
    cr_expect(strstr(h.last, "unit tiny-byte-512/train: "), "%s", h.last);
    cr_expect(strstr(h.last, path), "'%s' does not name %s", h.last, path);
    cr_expect(strstr(h.last, "rebuilt"), "%s", h.last);
    /* the entry written in its place is whole: the build after says nothing */
    cr_assert_eq(s2_train_kern_build(&s, &o, &r, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(r.cache_hit, 1);
    cr_expect_str_eq(r.warning, "");
    s2_jit_result_free(&r);
}

/* ---------------------------------------------------------------- argument checks */

/* A kernel set that was never loaded: every check runs before CUDA, so no GPU is needed. */
static s2_train_kern fake(void)
{
    s2_train_kern k = {.dtype = S2_DTYPE_BF16, .hidden = 256, .inter = 688, .head_dim = 64,
                       .vocab = 264, .eps = 1e-5, .rope_theta = 1e4, .rope_factor = 8,
                       .sm_count = 1, .row_threads = 32};
    return k;
}

/* Expects S2_ERR_INVALID with a message holding both fragments. */
#define EXPECT_INVALID(call, frag1, frag2)                                                        \
    do {                                                                                          \
        s2_error err_ = {0};                                                                      \
        s2_error *err = &err_;                                                                    \
        s2_status st_ = (call);                                                                   \
        cr_expect_eq(st_, S2_ERR_INVALID, "%s: status %d", #call, st_);                          \
        cr_expect(err_.msg && strstr(err_.msg, frag1) && strstr(err_.msg, frag2), "%s: '%s'",     \
                  #call, err_.msg ? err_.msg : "(none)");                                         \
        s2_error_clear(&err_);                                                                    \
    } while (0)

#define EXPECT_OK(call)                                                                           \
    do {                                                                                          \
        s2_error err_ = {0};                                                                      \
        s2_error *err = &err_;                                                                    \
        s2_status st_ = (call);                                                                   \
        cr_expect_eq(st_, S2_OK, "%s: %s", #call, err_.msg ? err_.msg : "");                    \
        s2_error_clear(&err_);                                                                    \
    } while (0)

/* Stand-ins for device pointers: never dereferenced on the host. */
static char dev_a[64] __attribute__((aligned(16))), dev_b[64] __attribute__((aligned(16)));
static char dev_c[64] __attribute__((aligned(16)));

Test(train_args, negative_sizes)
{
    s2_train_kern k = fake();
    void *a = dev_a, *b = dev_b;
    float *f = (float *)dev_c;
    EXPECT_INVALID(s2_k_embed_fwd(&k, -1, (int32_t *)a, a, b, 256, 0, err), "s2_k_embed_fwd",
                   "T = -1");
    EXPECT_INVALID(s2_k_rmsnorm_fwd(&k, -5, a, 256, a, b, 256, f, 0, err), "s2_k_rmsnorm_fwd",
                   "M = -5");
    EXPECT_INVALID(s2_k_rope(&k, 4, -2, (int32_t *)a, 1, a, 256, b, 256, 0, err), "s2_k_rope",
                   "heads = -2");
    EXPECT_INVALID(s2_k_add(&k, 3, -7, a, 8, b, 8, b, 8, 0, err), "s2_k_add", "cols = -7");
    EXPECT_INVALID(s2_k_cast_f32(&k, -1, 8, f, a, 8, 0, err), "s2_k_cast_f32", "rows = -1");
    EXPECT_INVALID(s2_k_xent(&k, -3, a, 264, (int32_t *)b, 1.f, 1, (double *)dev_c, NULL, 0,
                             err),
                   "s2_k_xent", "M = -3");
}

Test(train_args, strides_below_width)
{
    s2_train_kern k = fake();
    void *a = dev_a, *b = dev_b, *c = dev_c;
    float *f = (float *)dev_c;
    EXPECT_INVALID(s2_k_embed_fwd(&k, 4, (int32_t *)a, a, b, 255, 0, err), "s2_k_embed_fwd",
                   "ldo = 255 < hidden 256");
    EXPECT_INVALID(s2_k_rmsnorm_bwd(&k, 4, a, 256, a, b, 100, f, NULL, 0, c, 256, NULL, NULL, 0,
                                    err),
                   "s2_k_rmsnorm_bwd", "lddy = 100 < hidden 256");
    EXPECT_INVALID(s2_k_rope(&k, 4, 4, (int32_t *)a, 1, a, 255, b, 256, 0, err), "s2_k_rope",
                   "lds = 255 < heads x head_dim 256");
    EXPECT_INVALID(s2_k_swiglu_fwd(&k, 4, a, 688, b, 688, 0, err), "s2_k_swiglu_fwd",
                   "ldgu = 688 < 2 x intermediate 1376");
    EXPECT_INVALID(s2_k_swiglu_bwd(&k, 4, a, 1376, b, 687, c, 1376, 0, err), "s2_k_swiglu_bwd",
                   "lddh = 687 < intermediate 688");
    EXPECT_INVALID(s2_k_add(&k, 2, 10, a, 10, b, 9, c, 10, 0, err), "s2_k_add",
                   "ldb = 9 < cols 10");
    EXPECT_INVALID(s2_k_xent(&k, 2, a, 263, (int32_t *)b, 1.f, 1, (double *)c, NULL, 0, err),
                   "s2_k_xent", "ldl = 263 < vocab 264");
    EXPECT_INVALID(s2_k_cast_elem(&k, 2, 16, a, 15, f, 0, err), "s2_k_cast_elem",
                   "lds = 15 < cols 16");
    /* in place needs equal strides */
    EXPECT_INVALID(s2_k_rope(&k, 4, 4, (int32_t *)a, -1, b, 264, b, 256, 0, err), "s2_k_rope",
                   "in place");
    EXPECT_INVALID(s2_k_add(&k, 2, 8, a, 16, b, 8, a, 8, 0, err), "s2_k_add", "in place");
}

Test(train_args, null_pointers_and_values)
{
    s2_train_kern k = fake();
    void *a = dev_a, *b = dev_b, *c = dev_c;
    float *f = (float *)dev_c;
    EXPECT_INVALID(s2_k_embed_fwd(&k, 4, NULL, a, b, 256, 0, err), "s2_k_embed_fwd",
                   "tokens is NULL");
    EXPECT_INVALID(s2_k_rmsnorm_fwd(&k, 4, a, 256, NULL, b, 256, NULL, 0, err),
                   "s2_k_rmsnorm_fwd", "w is NULL");
    EXPECT_INVALID(s2_k_rmsnorm_fwd(&k, 4, a, 256, b, a, 256, NULL, 0, err), "s2_k_rmsnorm_fwd",
                   "aliases");
    EXPECT_INVALID(s2_k_rmsnorm_bwd(&k, 4, a, 256, a, b, 256, NULL, NULL, 0, c, 256, NULL, NULL,
                                    0, err),
                   "s2_k_rmsnorm_bwd", "rstd is NULL");
    EXPECT_INVALID(s2_k_rope(&k, 4, 4, NULL, 1, a, 256, b, 256, 0, err), "s2_k_rope",
                   "pos is NULL");
    EXPECT_INVALID(s2_k_rope(&k, 4, 4, (int32_t *)a, 0, a, 256, b, 256, 0, err), "s2_k_rope",
                   "dir = 0");
    EXPECT_INVALID(s2_k_xent(&k, 4, a, 264, (int32_t *)b, 1.f, 1, NULL, NULL, 0, err), "s2_k_xent",
                   "acc is NULL");
    EXPECT_INVALID(s2_k_adamw(&k, 10, f, f, f, f, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.f, 0, 1.f, 0, err),
                   "s2_k_adamw", "t = 0");
    EXPECT_INVALID(s2_k_adamw(&k, 10, f, f, f, f, 1e-3f, 1.0f, 0.999f, 1e-8f, 0.f, 1, 1.f, 0, err),
                   "s2_k_adamw", "beta1 = 1");
    EXPECT_INVALID(s2_k_adamw(&k, 10, f, NULL, f, f, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.f, 1, 1.f, 0,
                              err),
                   "s2_k_adamw", "g is NULL");
    EXPECT_INVALID(s2_k_sumsq(&k, 10, f, NULL, NULL, 0, err), "s2_k_sumsq", "acc is NULL");
    EXPECT_INVALID(s2_k_scale_f32(&k, 10, NULL, 2.f, 0, err), "s2_k_scale_f32", "x is NULL");
    EXPECT_INVALID(s2_k_embed_bwd(NULL, NULL, (int32_t *)a, a, 256, f, NULL, 0, err),
                   "s2_k_embed_bwd", "k is NULL");
    EXPECT_INVALID(s2_k_embed_bwd(&k, NULL, (int32_t *)a, a, 256, f, NULL, 0, err),
                   "s2_k_embed_bwd", "l is NULL");
}

/* Nothing to do is success with no launch (and no CUDA call: this machine has no GPU); the
 * pointers of an empty call may be NULL. */
Test(train_args, empty_work_launches_nothing)
{
    s2_train_kern k = fake();
    EXPECT_OK(s2_k_embed_fwd(&k, 0, NULL, NULL, NULL, 256, 0, err));
    s2_embed_list empty = {0};
    EXPECT_OK(s2_k_embed_bwd(&k, &empty, NULL, NULL, 256, NULL, NULL, 0, err));
    EXPECT_OK(s2_k_rmsnorm_fwd(&k, 0, NULL, 256, NULL, NULL, 256, NULL, 0, err));
    EXPECT_OK(s2_k_rmsnorm_bwd(&k, 0, NULL, 256, NULL, NULL, 256, NULL, NULL, 0, NULL, 256, NULL,
                               NULL, 0, err));
    EXPECT_OK(s2_k_rope(&k, 0, 4, NULL, 1, NULL, 256, NULL, 256, 0, err));
    EXPECT_OK(s2_k_rope(&k, 5, 0, NULL, -1, NULL, 0, NULL, 0, 0, err));
    EXPECT_OK(s2_k_swiglu_fwd(&k, 0, NULL, 1376, NULL, 688, 0, err));
    EXPECT_OK(s2_k_swiglu_bwd(&k, 0, NULL, 1376, NULL, 688, NULL, 1376, 0, err));
    EXPECT_OK(s2_k_add(&k, 0, 8, NULL, 8, NULL, 8, NULL, 8, 0, err));
    EXPECT_OK(s2_k_add(&k, 8, 0, NULL, 0, NULL, 0, NULL, 0, 0, err));
    EXPECT_OK(s2_k_xent(&k, 0, NULL, 264, NULL, 1.f, 1, NULL, NULL, 0, err));
    EXPECT_OK(s2_k_adamw(&k, 0, NULL, NULL, NULL, NULL, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.f, 1, 1.f, 0,
                         err));
    EXPECT_OK(s2_k_sumsq(&k, 0, NULL, NULL, NULL, 0, err));
    EXPECT_OK(s2_k_cast_f32(&k, 0, 8, NULL, NULL, 8, 0, err));
    EXPECT_OK(s2_k_cast_elem(&k, 3, 0, NULL, 0, NULL, 0, err));
    EXPECT_OK(s2_k_scale_f32(&k, 0, NULL, 2.f, 0, err));
}

/* Valid work on a kernel set that was never loaded is refused, not launched. */
Test(train_args, not_loaded)
{
    s2_train_kern k = fake();
    void *a = dev_a, *b = dev_b;
    EXPECT_INVALID(s2_k_add(&k, 2, 8, a, 8, b, 8, b, 8, 0, err), "s2_k_add", "not loaded");
}

/* ---------------------------------------------------------------- determinism */

/* The emitted units add no floating-point value with atomics: the train unit's one atomicAdd
 * is the arrival counter of its fixed-order grid sums; the LoRA unit (its pass over dy at the
 * ranks that take it) has none. */
Test(train_emit, no_float_atomics)
{
    const char *specs[] = {"tiny-byte-512.yaml", "llama2-7b-32k.yaml", "llama2-13b-32k.yaml"};
    for (size_t i = 0; i < sizeof specs / sizeof specs[0]; i++) {
        s2_spec s = load_spec(specs[i], NULL);
        char *src = emit(&s);
        int n = 0;
        for (const char *p = src; (p = strstr(p, "atomicAdd(")); p++, n++)
            cr_expect(strncmp(p, "atomicAdd(counter, 1u)", 22) == 0, "%s: a float atomic: %.60s",
                      specs[i], p);
        cr_expect_eq(n, 1, "%s: %d atomicAdd in the train unit, 1 expected (the counter)",
                     specs[i], n);
        cr_expect(!strstr(src, "atomicSub(") && !strstr(src, "atomicExch(") &&
                      !strstr(src, "atom."), "%s", specs[i]);
        free(src);
    }
    for (int r = 8; r <= 32; r += 8) {
        char *src = NULL;
        s2_error err = {0};
        cr_assert_eq(s2_emit_lora(S2_DTYPE_BF16, r, &src, &err), S2_OK, "%s", err.msg);
        cr_expect(strstr(src, "s2_lora_vdb("), "rank %d takes the pass", r);
        cr_expect(!strstr(src, "atomic") && !strstr(src, "atom."),
                  "rank %d: the LoRA unit adds with atomics", r);
        free(src);
    }
}

/* Checks every invariant s2_k_embed_bwd relies on; returns the number of split tokens seen. */
static int check_list(const s2_embed_list *l, const int32_t *tok, int T, int vocab)
{
    cr_assert_eq(l->T, T);
    cr_assert_eq(l->n_ints, (size_t)T + 3 * (size_t)l->n_items + 2 * (size_t)l->n_split + 2);
    cr_assert_leq(l->n_ints, s2_embed_list_max_ints(T));
    cr_assert_leq(l->n_items, T > 0 ? T : 0);
    cr_assert_leq(l->n_split, l->n_items);
    /* the workspace bound s2_k_ws_bytes takes: n_part <= 2 T / S2_EMBED_CHUNK */
    cr_assert_leq(l->n_part, 2 * T / S2_EMBED_CHUNK, "n_part %d for T %d", l->n_part, T);
    const s2_embed_list_arrays a = s2_embed_list_at(l, l->data);
    int *seen = calloc((size_t)(T > 0 ? T : 1), sizeof *seen);
    int *per_tok = calloc((size_t)vocab, sizeof *per_tok);
    for (int t = 0; t < T; t++)
        per_tok[tok[t]]++;
    cr_assert_eq(a.item_start[0], 0);
    cr_assert_eq(a.item_start[l->n_items], T);
    int slot = 0, j = 0, prev_tok = -1;
    for (int i = 0; i < l->n_items; i++) {
        const int p0 = a.item_start[i], p1 = a.item_start[i + 1], v = a.item_tok[i];
        cr_assert(p1 > p0 && p1 - p0 <= S2_EMBED_CHUNK, "item %d: [%d, %d)", i, p0, p1);
        cr_assert(v >= prev_tok, "tokens in increasing id");
        const int first = v != prev_tok; /* the token's first item */
        for (int p = p0; p < p1; p++) {
            const int t = a.pos[p];
            cr_assert(t >= 0 && t < T && !seen[t], "position %d twice or out of range", t);
            seen[t] = 1;
            cr_assert_eq(tok[t], v, "position %d of item %d holds token %d, not %d", t, i,
                         tok[t], v);
            cr_assert(p == 0 || first || a.pos[p - 1] < t, "positions in order within a token");
        }
        /* a token's items cover its positions whole; slots for split tokens only */
        const int split = per_tok[v] > S2_EMBED_CHUNK;
        if (!split) {
            cr_assert_eq(a.item_slot[i], -1);
            cr_assert(first && p1 - p0 == per_tok[v]);
        } else {
            if (first) {
                cr_assert_lt(j, l->n_split);
                cr_assert_eq(a.split_tok[j], v);
                cr_assert_eq(a.split_first[j], slot);
                j++;
            }
            cr_assert_eq(a.item_slot[i], slot++, "slots in item order");
        }
        prev_tok = v;
    }
    cr_assert_eq(j, l->n_split);
    cr_assert_eq(slot, l->n_part);
    cr_assert_eq(a.split_first[l->n_split], l->n_part);
    for (int t = 0; t < T; t++)
        cr_assert(seen[t], "position %d in no item", t);
    free(seen);
    free(per_tok);
    return j;
}

static uint64_t lcg = 12345;
static int rnd(int n)
{
    lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
    return (int)((lcg >> 33) % (uint64_t)n);
}

Test(embed_list, groups_chunks_and_slots)
{
    s2_embed_list l = {0};
    s2_error err = {0};
    /* token 3 at 150 positions (3 items: 64, 64, 22), token 1 at 65 (2 items), token 7 at 64
     * (one item: exactly a chunk), others once */
    enum { T = 150 + 65 + 64 + 5 };
    int32_t tok[T];
    int n = 0;
    for (int i = 0; i < 150; i++)
        tok[n++] = 3;
    for (int i = 0; i < 65; i++)
        tok[n++] = 1;
    for (int i = 0; i < 64; i++)
        tok[n++] = 7;
    for (int i = 0; i < 5; i++)
        tok[n++] = 10 + i;
    for (int i = T - 1; i > 0; i--) { /* shuffled */
        const int k = rnd(i + 1), x = tok[i];
        tok[i] = tok[k], tok[k] = x;
    }
    cr_assert_eq(s2_embed_list_build(&l, tok, T, 20, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(l.n_items, 2 + 3 + 1 + 5);
    cr_expect_eq(l.n_split, 2);
    cr_expect_eq(l.n_part, 5);
    cr_expect_eq(check_list(&l, tok, T, 20), 2);
    const s2_embed_list_arrays a = s2_embed_list_at(&l, l.data);
    cr_expect(a.split_tok[0] == 1 && a.split_tok[1] == 3, "split tokens in id order");
    cr_expect(a.item_tok[0] == 1 && a.item_tok[2] == 3 && a.item_tok[5] == 7);
    cr_expect(a.item_start[3] - a.item_start[2] == 64 && a.item_start[5] - a.item_start[4] == 22);
    /* rebuilt into the same allocations from the same tokens: the same ints */
    int32_t *copy = malloc(l.n_ints * 4);
    memcpy(copy, l.data, l.n_ints * 4);
    const size_t n_ints = l.n_ints;
    cr_assert_eq(s2_embed_list_build(&l, tok, T, 20, &err), S2_OK);
    cr_expect_eq(l.n_ints, n_ints);
    cr_expect(!memcmp(copy, l.data, n_ints * 4));
    /* a smaller batch reuses the list */
    cr_assert_eq(s2_embed_list_build(&l, tok, 3, 20, &err), S2_OK);
    check_list(&l, tok, 3, 20);
    cr_assert_eq(s2_embed_list_build(&l, tok, 0, 20, &err), S2_OK);
    cr_expect(l.T == 0 && l.n_items == 0 && l.n_ints == 2);
    free(copy);
    s2_embed_list_free(&l);
}

Test(embed_list, random_batches)
{
    s2_embed_list l = {0};
    s2_error err = {0};
    for (int trial = 0; trial < 200; trial++) {
        const int T = 1 + rnd(3000), vocab = 1 + rnd(trial % 3 ? 40 : 5000);
        int32_t *tok = malloc((size_t)T * 4);
        for (int t = 0; t < T; t++) /* skewed: token 0 often */
            tok[t] = rnd(4) ? rnd(vocab) : 0;
        cr_assert_eq(s2_embed_list_build(&l, tok, T, vocab, &err), S2_OK, "%s", err.msg);
        check_list(&l, tok, T, vocab);
        free(tok);
    }
    /* the worst case for the partials: every token just over a chunk */
    const int T = 10 * (S2_EMBED_CHUNK + 1);
    int32_t tok[10 * (S2_EMBED_CHUNK + 1)];
    for (int t = 0; t < T; t++)
        tok[t] = t % 10;
    cr_assert_eq(s2_embed_list_build(&l, tok, T, 10, &err), S2_OK);
    cr_expect_eq(l.n_part, 20);
    check_list(&l, tok, T, 10);
    s2_embed_list_free(&l);
}

/* What the two kernels compute, in their order, on the host: the gradient rows equal the
 * sequential scatter bit for bit wherever a token fits one item (g + d1 + d2 + ... in
 * position order), and split tokens' rows equal g + (the items' sums in order). */
Test(embed_list, host_emulation_is_the_position_order_sum)
{
    enum { T = 700, V = 9, H = 5 };
    int32_t tok[T];
    for (int t = 0; t < T; t++)
        tok[t] = t % 3 ? rnd(V) : 4; /* token 4: > 233 positions, 4 items */
    float dout[T][H], seq[V][H], got[V][H];
    for (int t = 0; t < T; t++)
        for (int c = 0; c < H; c++)
            dout[t][c] = (float)(rnd(2001) - 1000) / 997.f;
    for (int v = 0; v < V; v++)
        for (int c = 0; c < H; c++)
            seq[v][c] = got[v][c] = (float)(rnd(2001) - 1000) / 13.f;
    for (int t = 0; t < T; t++)
        for (int c = 0; c < H; c++)
            seq[tok[t]][c] += dout[t][c];
    s2_embed_list l = {0};
    s2_error err = {0};
    cr_assert_eq(s2_embed_list_build(&l, tok, T, V, &err), S2_OK);
    const s2_embed_list_arrays a = s2_embed_list_at(&l, l.data);
    float (*part)[H] = calloc((size_t)l.n_part + 1, sizeof *part);
    for (int i = 0; i < l.n_items; i++) {
        const int slot = a.item_slot[i];
        float *dst = slot < 0 ? got[a.item_tok[i]] : part[slot];
        for (int c = 0; c < H; c++) {
            float acc = slot < 0 ? dst[c] : 0.f;
            for (int p = a.item_start[i]; p < a.item_start[i + 1]; p++)
                acc += dout[a.pos[p]][c];
            dst[c] = acc;
        }
    }
    for (int j = 0; j < l.n_split; j++)
        for (int c = 0; c < H; c++) {
            float acc = got[a.split_tok[j]][c];
            for (int q = a.split_first[j]; q < a.split_first[j + 1]; q++)
                acc += part[q][c];
            got[a.split_tok[j]][c] = acc;
        }
    cr_assert_eq(l.n_split, 1);
    for (int v = 0; v < V; v++)
        for (int c = 0; c < H; c++) {
            if (v != 4)
                cr_expect(memcmp(&got[v][c], &seq[v][c], 4) == 0, "token %d column %d", v, c);
            else
                cr_expect(fabsf(got[v][c] - seq[v][c]) <= 1e-4f * (1.f + fabsf(seq[v][c])),
                          "token 4 column %d: %g vs %g", c, got[v][c], seq[v][c]);
        }
    free(part);
    s2_embed_list_free(&l);
}

Test(embed_list, refuses_tokens_outside_the_vocabulary)
{
    s2_embed_list l = {0};
    int32_t tok[4] = {1, 2, 9, 0};
    EXPECT_INVALID(s2_embed_list_build(&l, tok, 4, 9, err), "tokens[2] = 9",
                   "outside the vocabulary [0, 9)");
    tok[2] = -1;
    EXPECT_INVALID(s2_embed_list_build(&l, tok, 4, 9, err), "tokens[2] = -1", "[0, 9)");
    EXPECT_INVALID(s2_embed_list_build(&l, tok, -1, 9, err), "s2_embed_list_build", "T = -1");
    EXPECT_INVALID(s2_embed_list_build(&l, NULL, 4, 9, err), "s2_embed_list_build",
                   "tokens is NULL");
    s2_embed_list_free(&l);
}

/* The reductions take a workspace: refused when missing, misaligned or short of what the call
 * needs, accepted at s2_k_ws_bytes (the call then reaches the launch, which a never-loaded
 * kernel set refuses: "not loaded"). */
Test(train_args, workspace)
{
    s2_train_kern k = fake();
    k.sm_count = 132;
    void *a = dev_a, *b = dev_b, *c = dev_c;
    float *f = (float *)dev_c;
    static char big[1 << 20] __attribute__((aligned(256)));
    for (int rows = 1; rows <= 4096; rows *= 4) {
        const size_t need = s2_k_ws_bytes(&k, rows);
        cr_assert_leq(need, sizeof big);
        s2_k_ws ok = {big, need}, none = {NULL, need}, odd = {big + 8, need};
        /* the cross-entropy: 2 doubles a block of min(rows, resident) blocks */
        EXPECT_INVALID(s2_k_xent(&k, rows, a, 264, (int32_t *)b, 1.f, 1, (double *)c, &ok, 0,
                                 err), "s2_k_xent", "not loaded");
        EXPECT_INVALID(s2_k_xent(&k, rows, a, 264, (int32_t *)b, 1.f, 1, (double *)c, NULL, 0,
                                 err), "s2_k_xent", "ws is NULL");
        EXPECT_INVALID(s2_k_xent(&k, rows, a, 264, (int32_t *)b, 1.f, 1, (double *)c, &none, 0,
                                 err), "s2_k_xent", "ws is NULL");
        EXPECT_INVALID(s2_k_xent(&k, rows, a, 264, (int32_t *)b, 1.f, 1, (double *)c, &odd, 0,
                                 err), "s2_k_xent", "16-byte aligned");
        /* the weight gradient needs it; without dw none is needed */
        EXPECT_INVALID(s2_k_rmsnorm_bwd(&k, rows, a, 256, a, b, 256, f, NULL, 0, c, 256, f, &ok,
                                        0, err), "s2_k_rmsnorm_bwd", "not loaded");
        EXPECT_INVALID(s2_k_rmsnorm_bwd(&k, rows, a, 256, a, b, 256, f, NULL, 0, c, 256, f, NULL,
                                        0, err), "s2_k_rmsnorm_bwd", "ws is NULL");
        EXPECT_INVALID(s2_k_rmsnorm_bwd(&k, rows, a, 256, a, b, 256, f, NULL, 0, c, 256, NULL,
                                        NULL, 0, err), "s2_k_rmsnorm_bwd", "not loaded");
        /* the sum of squares: any n */
        EXPECT_INVALID(s2_k_sumsq(&k, (size_t)rows << 20, f, (double *)c, &ok, 0, err),
                       "s2_k_sumsq", "not loaded");
        /* the embedding, at its worst: every token just over a chunk */
        int32_t *tok = malloc((size_t)rows * 4);
        const int ntok = rows / (S2_EMBED_CHUNK + 1) > 1 ? rows / (S2_EMBED_CHUNK + 1) : 1;
        for (int t = 0; t < rows; t++)
            tok[t] = t % ntok;
        s2_embed_list l = {0};
        EXPECT_OK(s2_embed_list_build(&l, tok, rows, 264, err));
        cr_expect_eq(l.n_split, rows > S2_EMBED_CHUNK ? ntok : 0, "rows %d", rows);
        EXPECT_INVALID(s2_k_embed_bwd(&k, &l, (int32_t *)a, b, 256, f, &ok, 0, err),
                       "s2_k_embed_bwd", "not loaded");
        if (l.n_split) {
            EXPECT_INVALID(s2_k_embed_bwd(&k, &l, (int32_t *)a, b, 256, f, NULL, 0, err),
                           "s2_k_embed_bwd", "ws is NULL");
        } else { /* no split token: no workspace needed */
            EXPECT_INVALID(s2_k_embed_bwd(&k, &l, (int32_t *)a, b, 256, f, NULL, 0, err),
                           "s2_k_embed_bwd", "not loaded");
        }
        s2_embed_list_free(&l);
        free(tok);
    }
    /* one byte short of what a call needs: said with both numbers */
    const size_t need_x = S2_K_WS_HEAD + 2 * 64 * sizeof(double); /* 64 rows: 64 blocks */
    s2_k_ws x_short = {big, need_x - 1};
    EXPECT_INVALID(s2_k_xent(&k, 64, a, 264, (int32_t *)b, 1.f, 1, (double *)c, &x_short, 0, err),
                   "ws of 1279 bytes", "needs 1280");
    s2_k_ws x_ok = {big, need_x};
    EXPECT_INVALID(s2_k_xent(&k, 64, a, 264, (int32_t *)b, 1.f, 1, (double *)c, &x_ok, 0, err),
                   "s2_k_xent", "not loaded");
    /* RMSNorm with dw over 4096 rows on 132 SMs: a row a block would be 4096 blocks (more than 2
     * an SM), so blocks take 8 rows: 512 partials of 256 floats */
    const size_t need_r = S2_K_WS_HEAD + (size_t)512 * 256 * 4;
    s2_k_ws r_short = {big, need_r - 1}, r_ok = {big, need_r};
    EXPECT_INVALID(s2_k_rmsnorm_bwd(&k, 4096, a, 256, a, b, 256, f, NULL, 0, c, 256, f, &r_short,
                                    0, err), "s2_k_rmsnorm_bwd", "needs 524544");
    EXPECT_INVALID(s2_k_rmsnorm_bwd(&k, 4096, a, 256, a, b, 256, f, NULL, 0, c, 256, f, &r_ok, 0,
                                    err), "s2_k_rmsnorm_bwd", "not loaded");
}

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
#include "runtime/jit.h"
#include "runtime/ref_train.h"
#include "runtime/train_kern.h"
#include "tmpdir.h"

/* Every kernel of the unit, as named in templates/train.cuh (train_kern.h's fields). */
static const char *const KERNELS[] = {
    "s2_embed_fwd", "s2_embed_bwd", "s2_rmsnorm_fwd", "s2_rmsnorm_bwd", "s2_rope",
    "s2_swiglu_fwd", "s2_swiglu_bwd", "s2_add", "s2_xent", "s2_adamw", "s2_sumsq",
    "s2_cast_f32", "s2_cast_elem", "s2_scale_f32",
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
    EXPECT_INVALID(s2_k_xent(&k, -3, a, 264, (int32_t *)b, 1.f, 1, (double *)dev_c, 0, err),
                   "s2_k_xent", "M = -3");
}

Test(train_args, strides_below_width)
{
    s2_train_kern k = fake();
    void *a = dev_a, *b = dev_b, *c = dev_c;
    float *f = (float *)dev_c;
    EXPECT_INVALID(s2_k_embed_fwd(&k, 4, (int32_t *)a, a, b, 255, 0, err), "s2_k_embed_fwd",
                   "ldo = 255 < hidden 256");
    EXPECT_INVALID(s2_k_rmsnorm_bwd(&k, 4, a, 256, a, b, 100, f, NULL, 0, c, 256, NULL, 0, err),
                   "s2_k_rmsnorm_bwd", "lddy = 100 < hidden 256");
    EXPECT_INVALID(s2_k_rope(&k, 4, 4, (int32_t *)a, 1, a, 255, b, 256, 0, err), "s2_k_rope",
                   "lds = 255 < heads x head_dim 256");
    EXPECT_INVALID(s2_k_swiglu_fwd(&k, 4, a, 688, b, 688, 0, err), "s2_k_swiglu_fwd",
                   "ldgu = 688 < 2 x intermediate 1376");
    EXPECT_INVALID(s2_k_swiglu_bwd(&k, 4, a, 1376, b, 687, c, 1376, 0, err), "s2_k_swiglu_bwd",
                   "lddh = 687 < intermediate 688");
    EXPECT_INVALID(s2_k_add(&k, 2, 10, a, 10, b, 9, c, 10, 0, err), "s2_k_add",
                   "ldb = 9 < cols 10");
    EXPECT_INVALID(s2_k_xent(&k, 2, a, 263, (int32_t *)b, 1.f, 1, (double *)c, 0, err),
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
    EXPECT_INVALID(s2_k_rmsnorm_bwd(&k, 4, a, 256, a, b, 256, NULL, NULL, 0, c, 256, NULL, 0, err),
                   "s2_k_rmsnorm_bwd", "rstd is NULL");
    EXPECT_INVALID(s2_k_rope(&k, 4, 4, NULL, 1, a, 256, b, 256, 0, err), "s2_k_rope",
                   "pos is NULL");
    EXPECT_INVALID(s2_k_rope(&k, 4, 4, (int32_t *)a, 0, a, 256, b, 256, 0, err), "s2_k_rope",
                   "dir = 0");
    EXPECT_INVALID(s2_k_xent(&k, 4, a, 264, (int32_t *)b, 1.f, 1, NULL, 0, err), "s2_k_xent",
                   "acc is NULL");
    EXPECT_INVALID(s2_k_adamw(&k, 10, f, f, f, f, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.f, 0, 1.f, 0, err),
                   "s2_k_adamw", "t = 0");
    EXPECT_INVALID(s2_k_adamw(&k, 10, f, f, f, f, 1e-3f, 1.0f, 0.999f, 1e-8f, 0.f, 1, 1.f, 0, err),
                   "s2_k_adamw", "beta1 = 1");
    EXPECT_INVALID(s2_k_adamw(&k, 10, f, NULL, f, f, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.f, 1, 1.f, 0,
                              err),
                   "s2_k_adamw", "g is NULL");
    EXPECT_INVALID(s2_k_sumsq(&k, 10, f, NULL, 0, err), "s2_k_sumsq", "acc is NULL");
    EXPECT_INVALID(s2_k_scale_f32(&k, 10, NULL, 2.f, 0, err), "s2_k_scale_f32", "x is NULL");
    EXPECT_INVALID(s2_k_embed_bwd(NULL, 4, (int32_t *)a, a, 256, f, 0, err), "s2_k_embed_bwd",
                   "k is NULL");
}

/* Nothing to do is success with no launch (and no CUDA call: this machine has no GPU); the
 * pointers of an empty call may be NULL. */
Test(train_args, empty_work_launches_nothing)
{
    s2_train_kern k = fake();
    EXPECT_OK(s2_k_embed_fwd(&k, 0, NULL, NULL, NULL, 256, 0, err));
    EXPECT_OK(s2_k_embed_bwd(&k, 0, NULL, NULL, 256, NULL, 0, err));
    EXPECT_OK(s2_k_rmsnorm_fwd(&k, 0, NULL, 256, NULL, NULL, 256, NULL, 0, err));
    EXPECT_OK(s2_k_rmsnorm_bwd(&k, 0, NULL, 256, NULL, NULL, 256, NULL, NULL, 0, NULL, 256, NULL,
                               0, err));
    EXPECT_OK(s2_k_rope(&k, 0, 4, NULL, 1, NULL, 256, NULL, 256, 0, err));
    EXPECT_OK(s2_k_rope(&k, 5, 0, NULL, -1, NULL, 0, NULL, 0, 0, err));
    EXPECT_OK(s2_k_swiglu_fwd(&k, 0, NULL, 1376, NULL, 688, 0, err));
    EXPECT_OK(s2_k_swiglu_bwd(&k, 0, NULL, 1376, NULL, 688, NULL, 1376, 0, err));
    EXPECT_OK(s2_k_add(&k, 0, 8, NULL, 8, NULL, 8, NULL, 8, 0, err));
    EXPECT_OK(s2_k_add(&k, 8, 0, NULL, 0, NULL, 0, NULL, 0, 0, err));
    EXPECT_OK(s2_k_xent(&k, 0, NULL, 264, NULL, 1.f, 1, NULL, 0, err));
    EXPECT_OK(s2_k_adamw(&k, 0, NULL, NULL, NULL, NULL, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.f, 1, 1.f, 0,
                         err));
    EXPECT_OK(s2_k_sumsq(&k, 0, NULL, NULL, 0, err));
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

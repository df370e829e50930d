/*
 * api_check.c — libs2lora's public API (s2lora.h) on the GPU against the CPU references, as an
 * application drives it: contexts, specs parsed from text, s2lora_attn_forward / _backward
 * and the LoRA linears on device memory the API allocates.
 *
 * Attention: fixed-length batches (cu_seqlens NULL: the handle's own device boundaries, several
 * (T, B) in turn on one handle, on the legacy stream and on a stream of its own, so its
 * boundary buffers are taken, reused and taken over) and varlen ones (with and without the host
 * copy), GQA, both shift modes, d 64 and 128, bf16 and fp16. Every output poisoned with NaN
 * before the run; o, lse, dq, dk, dv held to s2_ref_attn_forward / _backward on the inputs as
 * rounded to the storage dtype, relative L2 below 1e-2 (gpu_check's tolerance) and no NaN.
 *
 * LoRA: fused q, k, v and single projections, with and without dropout, dtype and fp32
 * accumulated gradients: s2lora_lora_pack_weights' wc against the layout built on the host
 * (bit for bit, pad zeros included), then y, dx, dA and dB against s2_ref_lora per projection
 * (dropout stream layer * 8 + i), and dB outside its diagonal blocks untouched.
 *
 * One line per case; exit status 0 only if every case passes, 3 with no GPU. No Criterion (the
 * GPU machine has none). bench/gpu-check.sh runs it (section api).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime_api.h>
#include <s2lora.h>

#include "runtime/core/st.h"
#include "runtime/ref/ref.h"
#include "tests/check_rng.h"

#define TOL 1e-2

static void *xmalloc(size_t n)
{
    void *p = calloc(1, n ? n : 1);
    if (!p) {
        fprintf(stderr, "api_check: out of memory\n");
        exit(1);
    }
    return p;
}

/* n random values times scale in storage dtype dt (h) and their fp32 view after rounding (f). */
static void fill(s2_st_dtype dt, float scale, uint16_t *h, float *f, size_t n)
{
    for (size_t i = 0; i < n; i++)
        f[i] = scale * rng_normal();
    s2_f32_to_half(dt, f, h, n);
    s2_half_to_f32(dt, h, f, n);
}

static double rel_l2(const float *got, const float *ref, size_t n, int *nan)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        *nan += isnan(got[i]) != 0;
        double e = (double)got[i] - ref[i];
        num += e * e, den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Device buffers through the API; the first failure is kept in *st and reported by the caller. */
typedef struct dev {
    s2lora_ctx *ctx;
    s2lora_status st;
    const char *what;
    void *p[24];
    int n;
} dev;

static void *dnew(dev *d, size_t bytes, const void *from, const char *what)
{
    void *p = NULL;
    if (d->st)
        return NULL;
    if ((d->st = s2lora_device_alloc(d->ctx, bytes, &p))) {
        d->what = what;
        return NULL;
    }
    d->p[d->n++] = p;
    void *poison = NULL;
    if (!from) /* poison: 0xFF.. is NaN in bf16, fp16 and fp32 */
        from = poison = memset(xmalloc(bytes), 0xff, bytes);
    if ((d->st = s2lora_memcpy_to_device(d->ctx, p, from, bytes)))
        d->what = what;
    free(poison);
    return p;
}

static void dget(dev *d, void *host, const void *p, size_t bytes, const char *what)
{
    if (!d->st && (d->st = s2lora_memcpy_to_host(d->ctx, host, p, bytes)))
        d->what = what;
}

static void dfree(dev *d)
{
    for (int i = 0; i < d->n; i++)
        s2lora_device_free(d->ctx, d->p[i]);
    d->n = 0;
}

/* ---------------------------------------------------------------- attention */

#define MAX_RUNS 10
typedef struct acase {
    const char *what;
    int d, H, Hkv, G, S;
    const char *mode, *dtype;
    int T;
    int runs;                  /* fixed length: one run per batch count below, in turn */
    int batch[MAX_RUNS];
    int nseq;                  /* varlen (runs 0): these sequences */
    int seqlen[5];
    int host_cu;               /* varlen: give cu_seqlens_host too */
} acase;

static const acase acases[] = {
    /* five (T, B) and more on one handle: buffers taken over, one grown (B + 1 > 64) */
    {"fixed split bf16 d128", 128, 4, 4, 256, 128, "split", "bf16", 1024, 9,
     {2, 1, 2, 4, 8, 16, 128, 1, 2}, 0, {0}, 0},
    {"fixed roll fp16 d64 GQA 8/2", 64, 8, 2, 128, 64, "roll", "fp16", 1152, 3, {3, 2, 3}, 0,
     {0}, 0},
    {"fixed split bf16 d64 N<G", 64, 4, 4, 512, 256, "split", "bf16", 600, 2, {3, 1}, 0, {0},
     0},
    {"fixed roll bf16 d128 GQA 8/4", 128, 8, 4, 256, 128, "roll", "bf16", 2048, 2, {1, 8}, 0,
     {0}, 0},
    {"varlen split bf16 d128 GQA 8/4", 128, 8, 4, 256, 128, "split", "bf16", 0, 0, {0}, 3,
     {300, 1024, 77}, 1},
    {"varlen roll fp16 d64 (no host copy)", 64, 8, 2, 256, 128, "roll", "fp16", 0, 0, {0}, 3,
     {129, 640, 255}, 0},
    {"varlen split fp16 d64 empty seq", 64, 4, 4, 200, 100, "split", "fp16", 0, 0, {0}, 4,
     {1, 0, 401, 999}, 1},
};
#define N_ACASES ((int)(sizeof acases / sizeof acases[0]))

static s2lora_status case_spec(s2lora_ctx *ctx, const acase *c, s2lora_spec **spec)
{
    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "name: api-check\ndtype: %s\n"
             "model: {hidden_size: %d, intermediate_size: 1024, num_layers: 1, num_heads: %d,\n"
             "        num_kv_heads: %d, head_dim: %d, vocab_size: 256,\n"
             "        max_position_embeddings: 1024}\n"
             "context_length: 4096\n"
             "s2attn: {group_size: %d, shift: %d, shift_mode: %s}\n",
             c->dtype, c->H * c->d, c->H, c->Hkv, c->d, c->G, c->S, c->mode);
    return s2lora_spec_parse(ctx, yaml, strlen(yaml), c->what, NULL, 0, spec);
}

/* One run of case c on handle a over the batch cu[0..B] (cu_dev NULL: fixed length) on stream;
 * e[5]: o, lse, dq, dk, dv. */
static s2lora_status attn_run(s2lora_ctx *ctx, s2lora_attn *a, const acase *c, const int32_t *cu,
                              int B, int fixed, int host_cu, void *stream, double e[5], int *nan,
                              const char **what)
{
    const int T = cu[B];
    const s2_st_dtype dt = !strcmp(c->dtype, "bf16") ? S2_ST_BF16 : S2_ST_F16;
    const size_t nq = (size_t)T * c->H * c->d, nk = (size_t)T * c->Hkv * c->d;
    const size_t nl = (size_t)c->H * T;
    uint16_t *h[5];
    float *f[5], *got[5], *ref[5];
    const size_t n[5] = {nq, nk, nk, nq, 0}; /* q, k, v, dout */
    for (int i = 0; i < 4; i++) {
        h[i] = xmalloc(n[i] * 2), f[i] = xmalloc(n[i] * 4);
        fill(dt, 1.f, h[i], f[i], n[i]);
    }
    const size_t no[5] = {nq, nl, nq, nk, nk}; /* o, lse, dq, dk, dv */
    for (int i = 0; i < 5; i++)
        got[i] = xmalloc(no[i] * 4), ref[i] = xmalloc(no[i] * 4);
    uint16_t *back = xmalloc(nq * 2);
    dev d = {.ctx = ctx};
    const size_t wsb = s2lora_attn_workspace_bytes(a, T);
    s2lora_attn_args args = S2LORA_ATTN_ARGS_INIT;
    args.tokens = T, args.batch = B;
    args.q = dnew(&d, nq * 2, h[0], "q");
    args.k = dnew(&d, nk * 2, h[1], "k");
    args.v = dnew(&d, nk * 2, h[2], "v");
    args.o = dnew(&d, nq * 2, NULL, "o");
    args.lse = dnew(&d, nl * 4, NULL, "lse");
    if (!fixed) {
        int max = 0;
        for (int b = 0; b < B; b++)
            max = cu[b + 1] - cu[b] > max ? cu[b + 1] - cu[b] : max;
        args.cu_seqlens = dnew(&d, sizeof(int32_t) * (size_t)(B + 1), cu, "cu_seqlens");
        args.cu_seqlens_host = host_cu ? cu : NULL;
        args.max_seqlen = max;
    }
    s2lora_attn_grads g = S2LORA_ATTN_GRADS_INIT;
    g.dout = dnew(&d, nq * 2, h[3], "dout");
    g.dq = dnew(&d, nq * 2, NULL, "dq");
    g.dk = dnew(&d, nk * 2, NULL, "dk");
    g.dv = dnew(&d, nk * 2, NULL, "dv");
    g.workspace = dnew(&d, wsb, NULL, "workspace"), g.workspace_bytes = wsb;
    s2lora_status st = d.st;
    *what = d.what;
    if (!st && (st = s2lora_attn_forward(a, &args, stream)))
        *what = "s2lora_attn_forward";
    if (!st && (st = s2lora_attn_backward(a, &args, &g, stream)))
        *what = "s2lora_attn_backward";
    if (!st && (st = s2lora_synchronize(ctx, stream)))
        *what = "running the kernels";
    void *const outs[5] = {args.o, args.lse, g.dq, g.dk, g.dv};
    for (int i = 0; !st && i < 5; i++) {
        if (i == 1) {
            dget(&d, got[1], outs[1], nl * 4, "lse back");
            continue;
        }
        dget(&d, back, outs[i], no[i] * 2, "outputs back");
        s2_half_to_f32(dt, back, got[i], no[i]);
    }
    if (!st && (st = d.st))
        *what = d.what;
    if (!st) {
        s2_ref_attn ra = {.T = T, .H = c->H, .Hkv = c->Hkv, .d = c->d, .B = B, .cu_seqlens = cu,
                          .G = c->G, .S = c->S,
                          .mode = !strcmp(c->mode, "roll") ? S2_SHIFT_ROLL : S2_SHIFT_SPLIT,
                          .scale = 1.f / sqrtf((float)c->d)};
        s2_ref_attn_forward(&ra, f[0], f[1], f[2], ref[0], ref[1]);
        s2_ref_attn_backward(&ra, f[0], f[1], f[2], ref[0], ref[1], f[3], ref[2], ref[3], ref[4]);
        for (int i = 0; i < 5; i++)
            e[i] = rel_l2(got[i], ref[i], no[i], nan);
    }
    dfree(&d);
    for (int i = 0; i < 4; i++)
        free(h[i]), free(f[i]);
    for (int i = 0; i < 5; i++)
        free(got[i]), free(ref[i]);
    free(back);
    return st;
}

static int check_attn(s2lora_ctx *ctx, cudaStream_t own)
{
    printf("%-36s %-5s %5s %3s %9s %9s %9s %9s %9s %s\n", "attention case", "run", "T", "B", "o",
           "lse", "dq", "dk", "dv", "result");
    int failed = 0, total = 0;
    for (int i = 0; i < N_ACASES; i++) {
        const acase *c = &acases[i];
        s2lora_spec *spec = NULL;
        s2lora_attn *a = NULL;
        s2lora_status st = case_spec(ctx, c, &spec);
        if (!st)
            st = s2lora_attn_create(ctx, spec, &a);
        s2lora_spec_free(spec);
        if (st) {
            printf("%-36s ERROR %s: %s\n", c->what, s2lora_status_string(st), s2lora_errmsg(ctx));
            failed++, total++;
            continue;
        }
        printf("%-36s tile %s\n", c->what, s2lora_attn_tile(a));
        const int runs = c->runs ? c->runs : 1;
        for (int r = 0; r < runs; r++) {
            int32_t cu[257] = {0};
            int B;
            if (c->runs) { /* B sequences of T / B */
                B = c->batch[r];
                for (int b = 0; b < B; b++)
                    cu[b + 1] = cu[b] + c->T / B;
            } else {
                B = c->nseq;
                for (int b = 0; b < B; b++)
                    cu[b + 1] = cu[b] + c->seqlen[b];
            }
            void *stream = r % 2 ? (void *)own : NULL; /* the boundaries cross streams */
            double e[5] = {0};
            int nan = 0;
            const char *what = "";
            total++;
            st = attn_run(ctx, a, c, cu, B, c->runs != 0, c->host_cu, stream, e, &nan, &what);
            char run[16];
            snprintf(run, sizeof run, "%d%s", r, stream ? "s" : "");
            if (st) {
                printf("%-36s %-5s ERROR %s: %s: %s\n", c->what, run, what,
                       s2lora_status_string(st), s2lora_errmsg(ctx));
                failed++;
                continue;
            }
            int ok = !nan;
            for (int k = 0; k < 5; k++)
                ok = ok && e[k] < TOL;
            printf("%-36s %-5s %5d %3d %9.2e %9.2e %9.2e %9.2e %9.2e %s", c->what, run, cu[B], B,
                   e[0], e[1], e[2], e[3], e[4], ok ? "PASS" : "FAIL");
            if (nan)
                printf(" (%d NaN: unwritten outputs)", nan);
            printf("\n");
            failed += !ok;
        }
        s2lora_attn_free(a);
    }
    printf("api_check: %d of %d attention runs passed\n", total - failed, total);
    return failed;
}

/* ---------------------------------------------------------------- LoRA */

typedef struct lcase {
    const char *what;
    s2lora_lora_shape sh;
} lcase;

static const lcase lcases[] = {
    {"qkv bf16 r=8", {.tokens = 1000, .in = 512, .n_proj = 3, .out = {512, 128, 128}, .rank = 8,
                      .alpha = 16, .dtype = 0, .layer = 1}},
    {"qkv fp16 r=16 dropout 0.1 f32 grads", {.tokens = 777, .in = 512, .n_proj = 3,
                                             .out = {512, 256, 256}, .rank = 16, .alpha = 32,
                                             .dtype = 1, .dropout = 0.1f, .seed = 1234,
                                             .layer = 2, .grad_f32 = 1, .grad_beta = 1}},
    {"o bf16 r=4 in 520 out 516 (pad)", {.tokens = 300, .in = 520, .n_proj = 1, .out = {516},
                                         .rank = 4, .alpha = 8, .dtype = 0, .grad_f32 = 1,
                                         .grad_beta = 0.5f}},
    {"gate,up bf16 r=32 dropout 0.3", {.tokens = 513, .in = 256, .n_proj = 2, .out = {768, 768},
                                       .rank = 32, .alpha = 16, .dtype = 0, .dropout = 0.3f,
                                       .seed = 99, .layer = 7}},
};
#define N_LCASES ((int)(sizeof lcases / sizeof lcases[0]))

/* e: y, dx, dA, dB, wc (0 or 1: packed bit for bit); *bad_db: dB written outside its blocks. */
static s2lora_status lora_run(s2lora_ctx *ctx, const lcase *c, double e[5], int *nan,
                              int *bad_db, const char **what)
{
    s2lora_lora_shape sh = c->sh;
    sh.seed = sh.seed ? sh.seed : rng_state;
    s2lora_lora *l = NULL;
    s2lora_status st = s2lora_lora_create(ctx, &sh, &l);
    if (st) {
        *what = "s2lora_lora_create";
        return st;
    }
    const s2_st_dtype dt = sh.dtype ? S2_ST_F16 : S2_ST_BF16;
    const int M = sh.tokens, in = sh.in, r = sh.rank, np = sh.n_proj;
    const int rp = s2lora_lora_rp(np, r), lx = in + rp;
    int ot = 0;
    for (int i = 0; i < np; i++)
        ot += sh.out[i];
    const int ly = ot + rp;
    const size_t ge = sh.grad_f32 ? 4 : 2;
    /* host operands, rounded to the storage dtype */
    float *x = xmalloc((size_t)M * in * 4), *dy = xmalloc((size_t)M * ot * 4);
    float *W = xmalloc((size_t)ot * in * 4), *A = xmalloc((size_t)np * r * in * 4);
    float *B = xmalloc((size_t)ot * r * 4);
    uint16_t *hx = xmalloc((size_t)M * in * 2), *hdy = xmalloc((size_t)M * ot * 2);
    uint16_t *hW = xmalloc((size_t)ot * in * 2), *hA = xmalloc((size_t)np * r * in * 2);
    uint16_t *hB = xmalloc((size_t)ot * r * 2);
    fill(dt, 1.f, hx, x, (size_t)M * in);
    fill(dt, 1.f, hdy, dy, (size_t)M * ot);
    fill(dt, 1.f / sqrtf((float)in), hW, W, (size_t)ot * in);
    fill(dt, 1.f / sqrtf((float)in), hA, A, (size_t)np * r * in);
    fill(dt, 1.f / sqrtf((float)r), hB, B, (size_t)ot * r); /* not PEFT's zeros: tested */
    /* xa, dya: x and dy with NaN in the columns the forward and backward must write */
    uint16_t *hxa = xmalloc((size_t)M * lx * 2), *hdya = xmalloc((size_t)M * ly * 2);
    memset(hxa, 0xff, (size_t)M * lx * 2);
    memset(hdya, 0xff, (size_t)M * ly * 2);
    for (int m = 0; m < M; m++) {
        memcpy(hxa + (size_t)m * lx, hx + (size_t)m * in, (size_t)in * 2);
        memcpy(hdya + (size_t)m * ly, hdy + (size_t)m * ot, (size_t)ot * 2);
    }
    /* wc as lora.h lays it out, for pack_weights to match bit for bit */
    uint16_t *hwc = xmalloc((size_t)ly * lx * 2), *gwc = xmalloc((size_t)ly * lx * 2);
    for (int o = 0; o < ot; o++)
        memcpy(hwc + (size_t)o * lx, hW + (size_t)o * in, (size_t)in * 2);
    for (int i = 0, off = 0; i < np; off += sh.out[i], i++)
        for (int o = off; o < off + sh.out[i]; o++)
            memcpy(hwc + (size_t)o * lx + in + i * r, hB + (size_t)o * r, (size_t)r * 2);
    for (int j = 0; j < np * r; j++)
        memcpy(hwc + (size_t)(ot + j) * lx, hA + (size_t)j * in, (size_t)in * 2);
    /* fp32 gradients accumulate onto a start: random, kept on the host */
    const size_t nda = (size_t)rp * in, ndb = (size_t)ot * rp;
    float *da0 = xmalloc(nda * 4), *db0 = xmalloc(ndb * 4);
    for (size_t i = 0; i < nda; i++)
        da0[i] = 0.1f * rng_normal();
    for (size_t i = 0; i < ndb; i++)
        db0[i] = 0.1f * rng_normal();
    dev d = {.ctx = ctx};
    const size_t wsb = s2lora_lora_workspace_bytes(l);
    void *w = dnew(&d, (size_t)ot * in * 2, hW, "W");
    void *a = dnew(&d, (size_t)np * r * in * 2, hA, "A");
    void *b = dnew(&d, (size_t)ot * r * 2, hB, "B");
    void *wc = dnew(&d, (size_t)ly * lx * 2, NULL, "wc");
    void *xa = dnew(&d, (size_t)M * lx * 2, hxa, "xa");
    void *y = dnew(&d, (size_t)M * ot * 2, NULL, "y");
    void *dya = dnew(&d, (size_t)M * ly * 2, hdya, "dya");
    void *dxv = dnew(&d, (size_t)M * lx * 2, NULL, "dxv");
    void *da = dnew(&d, nda * ge, sh.grad_f32 ? (void *)da0 : NULL, "dA");
    void *db = dnew(&d, ndb * ge, sh.grad_f32 ? (void *)db0 : NULL, "dB");
    void *ws = wsb ? dnew(&d, wsb, NULL, "workspace") : NULL;
    st = d.st;
    *what = d.what;
    if (!st && (st = s2lora_lora_pack_weights(l, w, a, b, wc, NULL)))
        *what = "s2lora_lora_pack_weights";
    if (!st && (st = s2lora_lora_forward(l, xa, wc, y, ws, NULL)))
        *what = "s2lora_lora_forward";
    if (!st && (st = s2lora_lora_backward(l, xa, wc, dya, dxv, da, db, ws, NULL)))
        *what = "s2lora_lora_backward";
    if (!st && (st = s2lora_synchronize(ctx, NULL)))
        *what = "running the LoRA linears";
    float *gy = xmalloc((size_t)M * ot * 4), *gdx = xmalloc((size_t)M * lx * 4);
    float *gda = xmalloc(nda * 4), *gdb = xmalloc(ndb * 4);
    uint16_t *back = xmalloc((size_t)M * (lx > ot ? lx : ot) * 2 + nda * 2 + ndb * 2);
    if (!st) {
        dget(&d, gwc, wc, (size_t)ly * lx * 2, "wc back");
        dget(&d, back, y, (size_t)M * ot * 2, "y back");
        s2_half_to_f32(dt, back, gy, (size_t)M * ot);
        dget(&d, back, dxv, (size_t)M * lx * 2, "dxv back");
        s2_half_to_f32(dt, back, gdx, (size_t)M * lx);
        if (sh.grad_f32) {
            dget(&d, gda, da, nda * 4, "dA back");
            dget(&d, gdb, db, ndb * 4, "dB back");
        } else {
            dget(&d, back, da, nda * 2, "dA back");
            s2_half_to_f32(dt, back, gda, nda);
            dget(&d, back, db, ndb * 2, "dB back");
            s2_half_to_f32(dt, back, gdb, ndb);
        }
        if ((st = d.st))
            *what = d.what;
    }
    if (!st) {
        e[4] = memcmp(gwc, hwc, (size_t)ly * lx * 2) != 0;
        float *rdx = xmalloc((size_t)M * in * 4), *gdxi = xmalloc((size_t)M * in * 4);
        e[0] = e[1] = e[2] = e[3] = 0;
        const float gb = sh.grad_f32 ? sh.grad_beta : 0.f;
        for (int i = 0, off = 0; i < np; off += sh.out[i], i++) {
            const int oi = sh.out[i];
            float *Wi = xmalloc((size_t)oi * in * 4), *Bi = xmalloc((size_t)oi * r * 4);
            float *dyi = xmalloc((size_t)M * oi * 4), *yi = xmalloc((size_t)M * oi * 4);
            float *dxi = xmalloc((size_t)M * in * 4), *dAi = xmalloc((size_t)r * in * 4);
            float *dBi = xmalloc((size_t)oi * r * 4), *gyi = xmalloc((size_t)M * oi * 4);
            float *gdai = xmalloc((size_t)r * in * 4), *gdbi = xmalloc((size_t)oi * r * 4);
            memcpy(Wi, W + (size_t)off * in, (size_t)oi * in * 4);
            memcpy(Bi, B + (size_t)off * r, (size_t)oi * r * 4);
            for (int m = 0; m < M; m++) {
                memcpy(dyi + (size_t)m * oi, dy + (size_t)m * ot + off, (size_t)oi * 4);
                memcpy(gyi + (size_t)m * oi, gy + (size_t)m * ot + off, (size_t)oi * 4);
            }
            s2_ref_lora rl = {.M = M, .in = in, .out = oi, .r = r, .scale = sh.alpha / (float)r,
                              .dropout = sh.dropout, .seed = sh.seed,
                              .stream = (uint32_t)sh.layer * 8u + (uint32_t)i};
            const float *Ai = A + (size_t)i * r * in;
            s2_ref_lora_forward(&rl, x, Wi, Ai, Bi, yi);
            s2_ref_lora_backward(&rl, x, Wi, Ai, Bi, dyi, dxi, dAi, dBi);
            for (size_t k = 0; k < (size_t)M * in; k++)
                rdx[k] = (i ? rdx[k] : 0.f) + dxi[k];
            for (size_t k = 0; k < (size_t)r * in; k++) { /* what accumulation should give */
                dAi[k] += gb * da0[(size_t)i * r * in + k];
                gdai[k] = gda[(size_t)i * r * in + k];
            }
            for (int o = 0; o < oi; o++)
                for (int j = 0; j < r; j++) {
                    dBi[(size_t)o * r + j] += gb * db0[(size_t)(off + o) * rp + i * r + j];
                    gdbi[(size_t)o * r + j] = gdb[(size_t)(off + o) * rp + i * r + j];
                }
            e[0] = fmax(e[0], rel_l2(gyi, yi, (size_t)M * oi, nan));
            e[2] = fmax(e[2], rel_l2(gdai, dAi, (size_t)r * in, nan));
            e[3] = fmax(e[3], rel_l2(gdbi, dBi, (size_t)oi * r, nan));
            /* dB outside projection i's block is not a parameter: it keeps what it held */
            for (int o = off; o < off + oi; o++)
                for (int j = 0; j < rp; j++)
                    if (j < i * r || j >= (i + 1) * r) {
                        float want = sh.grad_f32 ? db0[(size_t)o * rp + j] : NAN;
                        float have = gdb[(size_t)o * rp + j];
                        *bad_db += sh.grad_f32 ? have != want : !isnan(have);
                    }
            free(Wi), free(Bi), free(dyi), free(yi), free(dxi), free(dAi), free(dBi), free(gyi);
            free(gdai), free(gdbi);
        }
        for (int m = 0; m < M; m++)
            memcpy(gdxi + (size_t)m * in, gdx + (size_t)m * lx, (size_t)in * 4);
        e[1] = rel_l2(gdxi, rdx, (size_t)M * in, nan);
        free(rdx), free(gdxi);
    }
    dfree(&d);
    s2lora_lora_free(l);
    free(x), free(dy), free(W), free(A), free(B), free(hx), free(hdy), free(hW), free(hA);
    free(hB), free(hxa), free(hdya), free(hwc), free(gwc), free(da0), free(db0), free(gy);
    free(gdx), free(gda), free(gdb), free(back);
    return st;
}

static int check_lora(s2lora_ctx *ctx)
{
    printf("%-36s %9s %9s %9s %9s %4s %s\n", "LoRA case", "y", "dx", "dA", "dB", "wc", "result");
    int failed = 0;
    for (int i = 0; i < N_LCASES; i++) {
        double e[5] = {0};
        int nan = 0, bad_db = 0;
        const char *what = "";
        s2lora_status st = lora_run(ctx, &lcases[i], e, &nan, &bad_db, &what);
        if (st) {
            printf("%-36s ERROR %s: %s: %s\n", lcases[i].what, what, s2lora_status_string(st),
                   s2lora_errmsg(ctx));
            failed++;
            continue;
        }
        int ok = !nan && !bad_db && e[0] < TOL && e[1] < TOL && e[2] < TOL && e[3] < TOL && !e[4];
        printf("%-36s %9.2e %9.2e %9.2e %9.2e %4s %s", lcases[i].what, e[0], e[1], e[2], e[3],
               e[4] ? "DIFF" : "same", ok ? "PASS" : "FAIL");
        if (nan)
            printf(" (%d NaN: unwritten outputs)", nan);
        if (bad_db)
            printf(" (%d elements of dB outside its blocks changed)", bad_db);
        printf("\n");
        failed += !ok;
    }
    printf("api_check: %d of %d LoRA cases passed\n", N_LCASES - failed, N_LCASES);
    return failed;
}

int main(int argc, char **argv)
{
    unsigned long long seed = 0;
    int device = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--device") && i + 1 < argc)
            device = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: s2lora_api_check [--seed N] [--device N]\n");
            return 2;
        }
    }
    if (!seed) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = (unsigned long long)ts.tv_nsec ^ ((unsigned long long)ts.tv_sec << 20);
    }
    rng_state = seed ? seed : 1;
    s2lora_ctx *ctx = NULL;
    s2lora_status st = s2lora_open(&ctx, device, NULL);
    if (st) {
        fprintf(stderr, "api_check: %s\n", s2lora_errmsg(ctx));
        s2lora_close(ctx);
        return st == S2LORA_ERR_NO_DEVICE ? 3 : 1;
    }
    printf("api_check: libs2lora %s on %s (%s), seed %llu, tolerance %.0e\n", s2lora_version(),
           s2lora_device_name(ctx), s2lora_device_arch(ctx), seed, TOL);
    cudaStream_t own = NULL;
    if (cudaStreamCreateWithFlags(&own, cudaStreamNonBlocking) != cudaSuccess) {
        fprintf(stderr, "api_check: cudaStreamCreate failed\n");
        return 1;
    }
    int failed = check_attn(ctx, own);
    failed += check_lora(ctx);
    cudaStreamDestroy(own);
    s2lora_close(ctx);
    printf("api_check: %s\n", failed ? "FAIL" : "PASS");
    return failed ? 1 : 0;
}

/* bench_lora.c — the LoRA linears against the frozen base GEMM on packed buffers of its own. */
#include "runtime/tune/bench_lora.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/core/rt.h"
#include "runtime/core/st.h"


typedef struct lora_bufs {
    void *xa, *wc, *y, *dya, *dxv, *da, *db, *ws; /* ours (lora.h's layout) */
    void *x, *w, *dy, *dx;                        /* the base's, packed */
} lora_bufs;

static void bufs_free(lora_bufs *b)
{
    void *p[] = {b->xa, b->wc, b->y, b->dya, b->dxv, b->da, b->db, b->ws,
                 b->x, b->w, b->dy, b->dx};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        if (p[i])
            cudaFree(p[i]);
}

typedef struct lora_run {
    s2_lora_ctx *ctx;
    const s2_lora_dims *d;
    const lora_bufs *b;
} lora_run;

static s2_status base_fwd(void *p, s2_error *err)
{
    const lora_run *r = p;
    return s2_lora_base_forward(r->ctx, r->d, r->b->x, r->b->w, r->b->y, 0, err);
}

static s2_status lora_fwd(void *p, s2_error *err)
{
    const lora_run *r = p;
    return s2_lora_forward(r->ctx, r->d, r->b->xa, r->b->wc, r->b->y, r->b->ws, 0, err);
}

static s2_status base_fb(void *p, s2_error *err)
{
    const lora_run *r = p;
    s2_status st = base_fwd(p, err);
    return st ? st : s2_lora_base_backward(r->ctx, r->d, r->b->w, r->b->dy, r->b->dx, 0, err);
}

static s2_status lora_fb(void *p, s2_error *err)
{
    const lora_run *r = p;
    s2_status st = lora_fwd(p, err);
    return st ? st : s2_lora_backward(r->ctx, r->d, r->b->xa, r->b->wc, r->b->dya, r->b->dxv,
                                      r->b->da, r->b->db, r->b->ws, 0, err);
}

/* 1 if any of the first n halves of dev is NaN or inf. */
static s2_status any_nonfinite(const void *dev, size_t n, s2_dtype dt, int *bad, s2_error *err)
{
    uint16_t *h = malloc(n * 2);
    if (!h)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    s2_status st = s2_rt_check(cudaMemcpy(h, dev, n * 2, cudaMemcpyDeviceToHost), "copy back", err);
    for (size_t i = 0; !st && i < n; i++) {
        float f = dt == S2_DTYPE_BF16 ? s2_bf16_to_f32(h[i]) : s2_f16_to_f32(h[i]);
        if (!isfinite(f)) {
            *bad = 1;
            break;
        }
    }
    free(h);
    return st;
}

s2_lora_dims s2_bench_lora_dims(s2_dtype dtype, int M, int dim, int r)
{
    return (s2_lora_dims){.M = M, .in = dim, .n_proj = 1, .out = {dim}, .out_total = dim, .r = r,
                          .rp = s2_lora_rp(r), .scale = 16.0f / (float)r, .dtype = dtype};
}

s2_status s2_bench_lora_case(s2_lora_ctx *ctx, s2_dtype dtype, int M, int dim, int r, int warmup,
                             int reps, const s2_lora_dims *tuned, s2_bench_lora_row *row,
                             s2_error *err)
{
    memset(row, 0, sizeof *row);
    row->M = M, row->dim = dim, row->r = r;
    s2_lora_dims d = s2_bench_lora_dims(dtype, M, dim, r);
    if (tuned)
        memcpy(d.algo, tuned->algo, sizeof d.algo);
    for (int g = 0; g < S2_LG_COUNT; g++)
        row->tuned += d.algo[g] != 0;
    const size_t lx = (size_t)dim + d.rp, ly = (size_t)dim + d.rp;
    lora_bufs b = {0};
    struct { void **p; size_t n; } a[] = {
        {&b.xa, (size_t)M * lx}, {&b.wc, ((size_t)dim + d.rp) * lx}, {&b.y, (size_t)M * dim},
        {&b.dya, (size_t)M * ly}, {&b.dxv, (size_t)M * lx}, {&b.da, (size_t)d.rp * dim},
        {&b.db, (size_t)dim * d.rp}, {&b.ws, (s2_lora_workspace_bytes(&d) + 1) / 2},
        {&b.x, (size_t)M * dim}, {&b.w, (size_t)dim * dim}, {&b.dy, (size_t)M * dim},
        {&b.dx, (size_t)M * dim},
    };
    s2_status st = S2_OK;
    for (size_t i = 0; !st && i < sizeof a / sizeof a[0]; i++)
        st = s2_rt_check(cudaMalloc(a[i].p, a[i].n * 2), "cudaMalloc (bench lora)", err);
    uint64_t state = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull | 1;
    if (!st)
        st = s2_rt_fill_normal(b.xa, (size_t)M * lx, 1.f, dtype, &state, err);
    if (!st) /* W, B and A (wc's extra rows) */
        st = s2_rt_fill_normal(b.wc, ((size_t)dim + d.rp) * lx, 1.f / sqrtf((float)dim), dtype,
                               &state, err);
    if (!st)
        st = s2_rt_fill_normal(b.dya, (size_t)M * ly, 1.f, dtype, &state, err);
    if (!st)
        st = s2_rt_fill_normal(b.x, (size_t)M * dim, 1.f, dtype, &state, err);
    if (!st)
        st = s2_rt_fill_normal(b.w, (size_t)dim * dim, 1.f / sqrtf((float)dim), dtype, &state, err);
    if (!st)
        st = s2_rt_fill_normal(b.dy, (size_t)M * dim, 1.f, dtype, &state, err);
    if (!st)
        st = s2_rt_check(cudaMemset(b.dx, 0xff, (size_t)M * dim * 2), "poison base dx", err);
    if (!st)
        st = s2_rt_check(cudaMemset(b.y, 0xff, (size_t)M * dim * 2), "poison y", err);
    if (!st)
        st = s2_rt_check(cudaMemset(b.dxv, 0xff, (size_t)M * lx * 2), "poison dx", err);
    lora_run run = {.ctx = ctx, .d = &d, .b = &b};
    s2_rt_work fns[4] = {base_fwd, lora_fwd, base_fb, lora_fb};
    double ms[4] = {0};
    if (!st)
        st = s2_rt_time_medians(fns, 4, &run, warmup, reps, ms, err);
    row->base_fwd_ms = ms[0], row->lora_fwd_ms = ms[1], row->base_fb_ms = ms[2];
    row->lora_fb_ms = ms[3];
    int bad = 0, bad_base = 0;
    if (!st)
        st = any_nonfinite(b.y, (size_t)M * dim, dtype, &bad, err);
    if (!st)
        st = any_nonfinite(b.dx, (size_t)M * dim, dtype, &bad_base, err);
    if (!st && (bad || bad_base)) {
        row->failed = 1;
        snprintf(row->note, sizeof row->note, "inf/NaN in %s", bad ? "y" : "the base's dx");
    }
    bufs_free(&b);
    return st;
}

/* tune_lora.c — the LoRA linears' tuning space: the cuBLAS algorithm of each product of each
 * adapted group, timed on the device (s2lora tune --kernels lora), and its use at run time. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gen/emit.h"
#include "runtime/core/st.h"
#include "runtime/tune/tune.h"

#define LORA_GATE_TOL 1e-2
#define LORA_ROW_STRIDE 8 /* the gate compares every eighth row of the large outputs */

static const char *const group_names[4] = {"qkv", "o", "gate_up", "down"};

const char *s2_tune_lora_group_name(const s2_lora_plan *plan, int g)
{
    if (g < 0 || g >= plan->n_groups)
        return "?";
    switch (plan->group[g].proj[0]) {
    case S2_PROJ_Q:
    case S2_PROJ_K:
    case S2_PROJ_V:
        return group_names[0];
    case S2_PROJ_O:
        return group_names[1];
    case S2_PROJ_GATE:
    case S2_PROJ_UP:
        return group_names[2];
    default:
        return group_names[3];
    }
}

void s2_tune_lora_identity(const s2_lora_dims *d, char hex[65])
{
    char text[256];
    snprintf(text, sizeof text, "lora dtype=%s in=%d out=%d,%d,%d n=%d r=%d rp=%d",
             s2_dtype_name(d->dtype), d->in, d->out[0], d->n_proj > 1 ? d->out[1] : 0,
             d->n_proj > 2 ? d->out[2] : 0, d->n_proj, d->r, d->rp);
    uint8_t h[32];
    s2_sha256(text, strlen(text), h);
    s2_hex(h, 32, hex);
}

void s2_tune_lora_select(const s2_tunedb *db, const char *device, const char *arch,
                         s2_lora_dims *d, char *why, size_t why_len)
{
    memset(d->algo, 0, sizeof d->algo);
    char ident[65], shape[64], kernel[64];
    s2_tune_lora_identity(d, ident);
    s2_tunedb_shape_class(d->M, shape, sizeof shape);
    int tuned = 0;
    for (int g = 0; g < S2_LG_COUNT; g++) {
        s2_tune_lora_kernel_name((s2_lora_gemm)g, d->grad_f32, kernel, sizeof kernel);
        s2_tunedb_key key = {.device = device, .arch = arch, .kernel = kernel,
                             .spec_sha256 = ident, .shape = shape};
        s2_tunedb_entry e;
        int k = 0;
        if (db && s2_tunedb_lookup(db, &key, 0, &e) && sscanf(e.tile, "algo=%d", &k) == 1 &&
            k >= 0 && k <= S2_BLAS_MAX_ALGOS) {
            d->algo[g] = (unsigned char)k;
            tuned++;
        }
    }
    if (why)
        snprintf(why, why_len, tuned ? "LoRA products: %d of %d tuned (%s)"
                                     : "LoRA products: cuBLAS's default (%d of %d tuned%s)",
                 tuned, S2_LG_COUNT, tuned ? shape : "");
}

void s2_tune_lora_select_cached(const s2_jit_opts *jo, const char *device, const char *arch,
                                s2_lora_dims *d, char *why, size_t why_len)
{
    s2_tunedb *db = s2_tune_open_cached(jo, device, NULL, 0);
    s2_tune_lora_select(db, device, arch, d, why, why_len);
    s2_tunedb_close(db);
}

/* ---- the device side ---- */

/* Where product g writes: rows x cols elements of esize bytes at row stride ld; the gate
 * compares every row_step-th row. */
typedef struct out_region {
    void *p;
    size_t rows, cols, ld, esize, row_step;
} out_region;

static out_region region_of(const s2_lora_dims *d, s2_lora_gemm g, const s2_lora_bufs *b)
{
    const size_t lx = (size_t)d->in + d->rp, ly = (size_t)d->out_total + d->rp;
    const size_t ge = d->grad_f32 ? 4 : 2;
    switch (g) {
    case S2_LG_U:
        return (out_region){(char *)b->xa + 2 * (size_t)d->in, d->M, d->rp, lx, 2, 1};
    case S2_LG_Y:
        return (out_region){b->y, d->M, d->out_total, d->out_total, 2, LORA_ROW_STRIDE};
    case S2_LG_V:
        return (out_region){(char *)b->dya + 2 * (size_t)d->out_total, d->M, d->rp, ly, 2, 1};
    case S2_LG_DX:
        return (out_region){b->dxv, d->M, d->in, lx, 2, LORA_ROW_STRIDE};
    case S2_LG_DA:
        return (out_region){b->da, d->rp, d->in, d->in, ge, 1};
    default:
        return (out_region){b->db, d->out_total, d->rp, d->rp, ge, 1};
    }
}

/* The compared rows of r as floats into host (rows / row_step x cols). */
static s2_status fetch_region(const out_region *r, s2_dtype dt, float *host, uint16_t *scratch,
                              size_t *n, s2_error *err)
{
    const size_t rows = (r->rows + r->row_step - 1) / r->row_step;
    *n = rows * r->cols;
    void *dst = r->esize == 4 ? (void *)host : (void *)scratch;
    s2_status st = s2_rt_check(cudaMemcpy2D(dst, r->cols * r->esize, r->p,
                                            r->row_step * r->ld * r->esize, r->cols * r->esize,
                                            rows, cudaMemcpyDeviceToHost),
                               "copy back (LoRA gate)", err);
    if (!st && r->esize == 2)
        for (size_t i = 0; i < *n; i++)
            host[i] = dt == S2_DTYPE_BF16 ? s2_bf16_to_f32(scratch[i]) : s2_f16_to_f32(scratch[i]);
    return st;
}

typedef struct lora_case {
    s2_lora_ctx *ctx;
    s2_lora_dims *d;
    s2_lora_bufs *b;
    s2_lora_gemm g;
    int algo;
} lora_case;

static s2_status run_case(void *p, s2_error *err)
{
    const lora_case *c = p;
    return s2_lora_gemm_run(c->ctx, c->d, c->g, c->algo, c->b, err);
}

/* Buffers of one group at M tokens (gradients sized for fp32), inputs random: xa and dya
 * whole (u and s v as the products after them would find them), and wc with its A rows. */
typedef struct group_bufs {
    s2_lora_bufs b;
    void *backup; /* a copy of an accumulated output, restored before each gate run */
    void *flush;
    size_t flush_bytes, backup_bytes;
} group_bufs;

static void group_free(group_bufs *g)
{
    void *p[] = {g->b.xa, (void *)g->b.wc, g->b.y, g->b.dya, g->b.dxv, g->b.da, g->b.db,
                 g->backup, g->flush};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        if (p[i])
            cudaFree(p[i]);
    memset(g, 0, sizeof *g);
}

static s2_status group_alloc(group_bufs *g, const s2_lora_dims *d, s2_error *err)
{
    memset(g, 0, sizeof *g);
    const size_t M = (size_t)d->M, lx = (size_t)d->in + d->rp, ot = (size_t)d->out_total;
    const size_t ly = ot + d->rp, wrows = ot + d->rp;
    void *wc = NULL;
    int l2 = 0;
    s2_status st = s2_rt_check(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0),
                               "cudaDeviceGetAttribute(L2 size)", err);
    g->flush_bytes = 2 * (size_t)(l2 > 0 ? l2 : 64 << 20);
    g->backup_bytes = M * lx * 2;
    struct { void **p; size_t bytes; } al[] = {
        {&g->b.xa, M * lx * 2}, {&wc, wrows * lx * 2}, {&g->b.y, M * ot * 2},
        {&g->b.dya, M * ly * 2}, {&g->b.dxv, M * lx * 2},
        {&g->b.da, (size_t)d->rp * d->in * 4}, {&g->b.db, ot * d->rp * 4},
        {&g->backup, g->backup_bytes}, {&g->flush, g->flush_bytes},
    };
    for (size_t i = 0; !st && i < sizeof al / sizeof al[0]; i++)
        st = s2_rt_check(cudaMalloc(al[i].p, al[i].bytes), "cudaMalloc (LoRA tuning)", err);
    g->b.wc = wc;
    uint64_t state = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull | 1;
    if (!st)
        st = s2_rt_fill_normal(g->b.xa, M * lx, 1.f, d->dtype, &state, err);
    if (!st)
        st = s2_rt_fill_normal(wc, wrows * lx, 1.f / sqrtf((float)d->in), d->dtype, &state, err);
    if (!st)
        st = s2_rt_fill_normal(g->b.dya, M * ly, 1.f, d->dtype, &state, err);
    if (!st)
        st = s2_rt_check(cudaMemset(g->b.da, 0, (size_t)d->rp * d->in * 4), "zero dA", err);
    if (!st)
        st = s2_rt_check(cudaMemset(g->b.db, 0, ot * d->rp * 4), "zero dB", err);
    return st;
}

/* The products whose result accumulates (beta 1) restart from the same values each gate run. */
static int accumulates(const s2_lora_dims *d, s2_lora_gemm g)
{
    return (g == S2_LG_DA || g == S2_LG_DB) && d->grad_f32 && d->grad_beta != 0;
}

static s2_status save_or_restore(group_bufs *gb, const out_region *r, int restore, s2_error *err)
{
    const size_t bytes = r->rows * r->ld * r->esize;
    if (bytes > gb->backup_bytes)
        return s2_error_set(err, S2_ERR_INVALID, "LoRA tuning: backup too small");
    return s2_rt_check(cudaMemcpy(restore ? r->p : gb->backup, restore ? gb->backup : r->p, bytes,
                                  cudaMemcpyDeviceToDevice),
                       "LoRA tuning: saving an accumulated output", err);
}

/* Gates and times every algorithm of product g of the group; fills res. */
static s2_status tune_product(s2_lora_ctx *ctx, s2_lora_dims *d, group_bufs *gb, s2_lora_gemm g,
                              const s2_tune_opts *o, s2_tune_lora_result *res, s2_error *err)
{
    out_region r = region_of(d, g, &gb->b);
    const size_t rows = (r.rows + r.row_step - 1) / r.row_step, cmp = rows * r.cols;
    float *ref = malloc(cmp * sizeof(float)), *got = malloc(cmp * sizeof(float));
    uint16_t *scratch = malloc(cmp * 2 + 2);
    s2_status st = ref && got && scratch
                       ? S2_OK
                       : s2_error_set(err, S2_ERR_NOMEM, "out of memory (LoRA gate)");
    int n_algo = 0;
    if (!st)
        st = s2_lora_gemm_algos(ctx, d, g, &gb->b, &n_algo, err);
    res->algos = n_algo;
    const int acc = accumulates(d, g);
    if (!st && acc)
        st = save_or_restore(gb, &r, 0, err);
    lora_case c = {.ctx = ctx, .d = d, .b = &gb->b, .g = g};
    size_t n = 0;
    for (int k = 0; !st && k <= n_algo; k++) {
        c.algo = k;
        /* the gate: the same inputs, the output against algorithm 0's (cuBLAS's choice) */
        if (!st && acc)
            st = save_or_restore(gb, &r, 1, err);
        if (!st)
            st = run_case(&c, err);
        if (!st)
            st = s2_rt_check(cudaDeviceSynchronize(), "LoRA product", err);
        if (!st)
            st = fetch_region(&r, d->dtype, k ? got : ref, scratch, &n, err);
        int ok = 1;
        double e = 0;
        if (!st && k) {
            double num = 0, den = 0;
            for (size_t i = 0; i < n; i++) {
                ok &= isfinite(got[i]) || !isfinite(ref[i]);
                num += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
                den += (double)ref[i] * ref[i];
            }
            e = den > 0 ? sqrt(num / den) : sqrt(num);
            ok &= e < LORA_GATE_TOL;
        }
        if (!st && !ok) {
            res->rejected++;
            s2_tune_say(o, "lora %s %s: algorithm %d REJECTED (error %.2e vs cuBLAS's choice)", res->group,
                s2_lora_gemm_name(g), k, e);
            continue;
        }
        double ms = 0;
        if (!st)
            st = s2_rt_time_median(run_case, &c, o->warmup ? o->warmup : 3, o->reps ? o->reps : 10,
                                   gb->flush, gb->flush_bytes, &ms, err);
        if (st)
            break;
        res->timed++;
        if (k == 0)
            res->default_ms = ms, res->best_ms = ms, res->best = 0;
        else if (ms < res->best_ms)
            res->best_ms = ms, res->best = k;
        s2_tune_say(o, "lora %s %s: %.3f ms algorithm %d%s (best %.3f)", res->group, s2_lora_gemm_name(g),
            ms, k, k ? "" : " [cuBLAS's choice]", res->best_ms);
    }
    if (!st && acc)
        st = save_or_restore(gb, &r, 1, err);
    free(ref);
    free(got);
    free(scratch);
    return st;
}

static s2_status record(s2_tunedb *db, const s2_rt *rt, const s2_lora_dims *d,
                        const s2_tune_lora_result *r, s2_error *err)
{
    s2_tunedb_entry e = {0};
    int maj = 0, min = 0;
    s2_jit_nvrtc_version(&maj, &min, NULL);
    snprintf(e.device, sizeof e.device, "%s", rt->name);
    snprintf(e.arch, sizeof e.arch, "%s", rt->arch);
    s2_tune_lora_kernel_name(r->gemm, r->grad_f32, e.kernel, sizeof e.kernel);
    s2_tune_lora_identity(d, e.spec_sha256);
    s2_tunedb_shape_class(d->M, e.shape, sizeof e.shape);
    snprintf(e.tile, sizeof e.tile, "algo=%d", r->best);
    e.default_ms = r->default_ms, e.tuned_ms = r->best_ms;
    snprintf(e.gen, sizeof e.gen, "%s", S2_GEN_VERSION);
    snprintf(e.nvrtc, sizeof e.nvrtc, "%d.%d", maj, min);
    s2_tunedb_now(e.when);
    return s2_tunedb_put(db, &e, err);
}

s2_status s2_tune_lora_run(const s2_rt *rt, const s2_spec *spec, const s2_tune_opts *o,
                           s2_tunedb *db, s2_tune_lora_result *res, int max, int *n_res,
                           s2_error *err)
{
    *n_res = 0;
    s2_lora_plan plan;
    s2_plan_lora(spec, &plan);
    const int M = o->seqlen > 0 ? o->seqlen : spec->context_length;
    s2_lora_ctx *ctx = NULL;
    s2_status st = s2_lora_open(&ctx, rt, o->cache_dir, err);
    if (!st)
        st = s2_blas_stream(s2_lora_blas(ctx), 0, err);
    for (int g = 0; !st && g < plan.n_groups; g++) {
        s2_lora_dims d;
        st = s2_lora_dims_of(&plan, g, 0, M, 1, &d, err);
        if (st)
            break;
        d.dropout = 0; /* the products without dropout: the dropout path keeps cuBLAS's own */
        group_bufs gb;
        st = group_alloc(&gb, &d, err);
        /* u, y, dx, dA, v, dB, then dA and dB again with fp32 accumulated gradients; v and dB
         * only where they are cuBLAS products (ranks without the generated pass) */
        static const struct { s2_lora_gemm g; int f32; } order[] = {
            {S2_LG_U, 0}, {S2_LG_Y, 0}, {S2_LG_DX, 0}, {S2_LG_DA, 0}, {S2_LG_V, 0},
            {S2_LG_DB, 0}, {S2_LG_DA, 1}, {S2_LG_DB, 1}};
        for (size_t k = 0; !st && k < sizeof order / sizeof order[0]; k++) {
            const s2_lora_gemm p = order[k].g;
            d.grad_f32 = order[k].f32, d.grad_beta = d.grad_f32 ? 1.f : 0.f;
            int n_algo = 0;
            st = s2_lora_gemm_algos(ctx, &d, p, &gb.b, &n_algo, err);
            if (st || n_algo == 0)
                continue;
            if (*n_res == max) {
                st = s2_error_set(err, S2_ERR_INVALID, "LoRA tuning: more than %d products", max);
                break;
            }
            s2_tune_lora_result *r = &res[(*n_res)++];
            memset(r, 0, sizeof *r);
            snprintf(r->group, sizeof r->group, "%s", s2_tune_lora_group_name(&plan, g));
            r->gemm = p, r->grad_f32 = d.grad_f32, r->M = M;
            st = tune_product(ctx, &d, &gb, p, o, r, err);
            if (!st && db && r->timed)
                st = record(db, rt, &d, r, err);
        }
        group_free(&gb);
    }
    s2_lora_close(ctx);
    return st;
}

/* lora.c — LoRA linears through cuBLAS GEMMs on the augmented layout (see lora.h). */
#include "runtime/ops/lora.h"

#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "gen/emit.h"
#include "templates/philox.cuh"
#include "runtime/core/jit.h"

/* One generated LoRA unit (gen/emit.h's s2_emit_lora), per dtype and rank, built on first use. */
typedef struct lora_unit {
    int used;
    s2_dtype dtype;
    int rank;
    cudaLibrary_t lib;
    cudaKernel_t drop, drop_add, vdb, vdb_finish; /* vdb: NULL for ranks without the pass */
} lora_unit;

#define LORA_UNITS 16

/* side, side_blas, fork, join: the backward's second stream (created on first use), where dA
 * and dB's sums run beside the dx product (s2_lora_backward). */
struct s2_lora_ctx {
    char arch[16];
    const char *cache_dir;
    s2_rt rt; /* the device it was opened on: its cache_warn hears of rebuilt units */
    lora_unit unit[LORA_UNITS];
    s2_blas *blas;
    s2_blas *side_blas;
    cudaStream_t side;
    cudaEvent_t fork, join;
};

s2_status s2_lora_dims_of(const s2_lora_plan *plan, int g, int layer, int M,
                          unsigned long long seed, s2_lora_dims *d, s2_error *err)
{
    memset(d, 0, sizeof *d);
    if (g < 0 || g >= plan->n_groups)
        return s2_error_set(err, S2_ERR_INVALID, "LoRA group %d: the plan has %d", g, plan->n_groups);
    const s2_lora_group *grp = &plan->group[g];
    d->M = M;
    d->in = grp->in;
    d->n_proj = grp->n;
    for (int i = 0; i < grp->n; i++) {
        d->out[i] = plan->lin[grp->proj[i]].out;
        d->stream[i] = (unsigned)layer * 8u + (unsigned)grp->proj[i];
    }
    d->out_total = grp->out_total;
    d->r = plan->rank;
    d->rp = s2_lora_rp(grp->r_total);
    d->scale = (float)plan->scale;
    d->dtype = plan->dtype;
    d->dropout = (float)plan->dropout;
    d->seed = seed;
    return S2_OK;
}

/* 1 when d's backward takes the generated pass: a rank it is built for (gen/lora_plan.h), and
 * rows of x and dy that start 16-byte aligned (its cp.async loads), i.e. in and every out a
 * multiple of 8 (LLaMA's sizes all are); otherwise the cuBLAS products, which take any stride. */
static int vdb_used(const s2_lora_dims *d)
{
    int aligned = d->in % 8 == 0;
    for (int i = 0; i < d->n_proj; i++)
        aligned &= d->out[i] % 8 == 0;
    return aligned && s2_lora_vdb_ok(d->r);
}

/* The slabs of the pass over every projection of d (v's partials: one [M, r] a slab). */
static int vdb_slabs_total(const s2_lora_dims *d)
{
    int slabs = 0;
    for (int i = 0; i < d->n_proj; i++)
        slabs += s2_lora_vdb_slabs(d->out[i]);
    return slabs;
}

/* The generated pass's geometry for d: rows per block and row ranges. */
static void vdb_geometry(const s2_lora_dims *d, int *rows, int *ranges)
{
    *rows = s2_lora_vdb_rows(d->M, vdb_slabs_total(d));
    *ranges = (d->M + *rows - 1) / *rows;
}

/* Workspace layout: [v partials: slabs x M x r fp32][dB partials: ranges x out_total x r fp32]
 * [drop: M x in]. v's partials replace an [M, rp] accumulator that the slabs added into with
 * atomics: one fp32 store per element and slab where there was one atomic, one read of them in
 * the finish, no zeroing, and a fixed order (lora.cuh). Writing and reading them moves
 * r / 128 of what the pass reads of dy (a slab is 512 columns of bf16 dy for r fp32 values a
 * row): 6 % at rank 8. For llama2-7b at 32k tokens and rank 8 they take 24 MiB (q, k, v) and
 * 44 MiB (gate, up). */
static size_t align256(size_t n) { return (n + 255) / 256 * 256; }

static size_t ws_vpart(const s2_lora_dims *d)
{
    return vdb_used(d) ? align256((size_t)vdb_slabs_total(d) * d->M * d->r * 4) : 0;
}

static size_t ws_part(const s2_lora_dims *d)
{
    if (!vdb_used(d))
        return 0;
    int rows, ranges;
    vdb_geometry(d, &rows, &ranges);
    return align256((size_t)ranges * d->out_total * d->r * 4);
}

size_t s2_lora_workspace_bytes(const s2_lora_dims *d)
{
    return ws_vpart(d) + ws_part(d) + (d->dropout > 0 ? (size_t)d->M * d->in * 2 : 0);
}

/* The dropout workspace inside ws. */
static void *ws_drop(const s2_lora_dims *d, void *ws)
{
    return ws ? (char *)ws + ws_vpart(d) + ws_part(d) : NULL;
}

s2_status s2_lora_open(s2_lora_ctx **out, const s2_rt *rt, const char *cache_dir, s2_error *err)
{
    *out = NULL;
    s2_lora_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    snprintf(c->arch, sizeof c->arch, "%s", rt->arch);
    c->rt = *rt;
    c->cache_dir = cache_dir;
    s2_status st = s2_blas_open(&c->blas, err);
    if (st) {
        free(c);
        return st;
    }
    *out = c;
    return S2_OK;
}

void s2_lora_close(s2_lora_ctx *c)
{
    if (!c)
        return;
    for (int i = 0; i < LORA_UNITS; i++)
        if (c->unit[i].lib)
            cudaLibraryUnload(c->unit[i].lib);
    s2_blas_close(c->blas);
    s2_blas_close(c->side_blas);
    if (c->fork)
        cudaEventDestroy(c->fork);
    if (c->join)
        cudaEventDestroy(c->join);
    if (c->side)
        cudaStreamDestroy(c->side);
    free(c);
}

s2_blas *s2_lora_blas(s2_lora_ctx *c) { return c->blas; }

/* The LoRA unit of d's dtype and rank: built (NVRTC, through the cache) and loaded once. */
static s2_status lora_unit_of(s2_lora_ctx *c, const s2_lora_dims *d, const lora_unit **out,
                              s2_error *err)
{
    *out = NULL;
    lora_unit *u = NULL;
    for (int i = 0; i < LORA_UNITS && !u; i++)
        if (!c->unit[i].used || (c->unit[i].dtype == d->dtype && c->unit[i].rank == d->r))
            u = &c->unit[i];
    if (!u)
        return s2_error_set(err, S2_ERR_INVALID,
                            "LoRA: more than %d (dtype, rank) pairs in one context", LORA_UNITS);
    if (u->used) {
        *out = u;
        return S2_OK;
    }
    char *src = NULL;
    s2_status st = s2_emit_lora(d->dtype, d->r, &src, err);
    if (st)
        return st;
    static const char *const kernels[] = {"s2_lora_dropout", "s2_lora_dropout_add"};
    s2_jit_src unit = {.unit = "lora", .source = src, .kernels = kernels, .n_kernels = 2};
    s2_jit_opts jo = {.arch = c->arch, .cache_dir = c->cache_dir};
    s2_jit_result res = {0};
    st = s2_jit_build(&unit, 1, &jo, &res, err);
    free(src);
    if (!st)
        s2_rt_cache_warn(&c->rt, &res);
    cudaLibrary_t lib = NULL;
    if (!st)
        st = s2_rt_check(cudaLibraryLoadData(&lib, res.cubin, NULL, NULL, 0, NULL, NULL, 0),
                         "cudaLibraryLoadData(lora)", err);
    s2_jit_result_free(&res);
    lora_unit nu = {.used = 1, .dtype = d->dtype, .rank = d->r, .lib = lib};
    if (!st)
        st = s2_rt_check(cudaLibraryGetKernel(&nu.drop, lib, "s2_lora_dropout"),
                         "cudaLibraryGetKernel(s2_lora_dropout)", err);
    if (!st)
        st = s2_rt_check(cudaLibraryGetKernel(&nu.drop_add, lib, "s2_lora_dropout_add"),
                         "cudaLibraryGetKernel(s2_lora_dropout_add)", err);
    if (!st && s2_lora_vdb_ok(d->r)) { /* the unit has the pass for its rank */
        st = s2_rt_check(cudaLibraryGetKernel(&nu.vdb, lib, "s2_lora_vdb"),
                         "cudaLibraryGetKernel(s2_lora_vdb)", err);
        if (!st)
            st = s2_rt_check(cudaLibraryGetKernel(&nu.vdb_finish, lib, "s2_lora_vdb_finish"),
                             "cudaLibraryGetKernel(s2_lora_vdb_finish)", err);
        if (!st)
            st = s2_rt_check(cudaFuncSetAttribute((const void *)nu.vdb,
                                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                  (int)s2_lora_vdb_smem(d->r)),
                             "cudaFuncSetAttribute(s2_lora_vdb, max dynamic shared memory)", err);
    }
    if (st) {
        if (lib)
            cudaLibraryUnload(lib);
        return st;
    }
    *u = nu;
    *out = u;
    return S2_OK;
}

/* One launch of a dropout kernel over M x in elements (grid-stride, one thread per quad):
 * add 0: xd = drop_i(src) with src [M, ld]; add 1: dst [M, ld] += drop_i(src) with src [M, in]. */
static s2_status launch_dropout(const lora_unit *lu, const s2_lora_dims *d, int add, void *dst,
                                const void *src, int ld, int proj, cudaStream_t stream,
                                s2_error *err)
{
    const long quads = ((long)d->M * d->in + 3) / 4;
    const unsigned blocks = (unsigned)((quads + 255) / 256 < 8192 ? (quads + 255) / 256 : 8192);
    unsigned long long seed = d->seed;
    unsigned strm = d->stream[proj], thr = s2_dropout_threshold(d->dropout);
    float scale = s2_dropout_scale(d->dropout);
    int M = d->M, in = d->in;
    /* s2_lora_dropout(x, ldx, xd, ...) and s2_lora_dropout_add(dx, lddx, t, ...) */
    void *args_drop[] = {&src, &ld, &dst, &M, &in, &seed, &strm, &thr, &scale};
    void *args_add[] = {&dst, &ld, &src, &M, &in, &seed, &strm, &thr, &scale};
    const char *name = add ? "s2_lora_dropout_add" : "s2_lora_dropout";
    cudaKernel_t k = add ? lu->drop_add : lu->drop;
    s2_status st = s2_rt_check(cudaLaunchKernel((const void *)k, (dim3){blocks, 1, 1},
                                                (dim3){256, 1, 1}, add ? args_add : args_drop, 0,
                                                stream),
                               name, err);
    return st ? st : s2_rt_check(cudaGetLastError(), name, err);
}

/* A product of storage-dtype operands and result. */
static s2_status gemm_rm(s2_lora_ctx *c, const s2_lora_dims *d, const char *what, int ta, int tb,
                         int M, int N, int K, float alpha, const void *A, int lda, const void *B,
                         int ldb, float beta, void *C, int ldc, s2_error *err)
{
    return s2_blas_gemm(c->blas, d->dtype, what, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C,
                        ldc, 0, err);
}

/* A product into a gradient of a trainable tensor: the dtype, or fp32 accumulated with
 * d->grad_beta when d->grad_f32. */
static s2_status gemm_grad(s2_lora_ctx *c, const s2_lora_dims *d, const char *what, int ta,
                           int tb, int M, int N, int K, float alpha, const void *A, int lda,
                           const void *B, int ldb, void *C, int ldc, s2_error *err)
{
    return s2_blas_gemm(c->blas, d->dtype, what, ta, tb, M, N, K, alpha, A, lda, B, ldb,
                        d->grad_f32 ? d->grad_beta : 0.f, C, ldc, d->grad_f32, err);
}

static s2_status on_stream(s2_lora_ctx *c, cudaStream_t stream, s2_error *err)
{
    return s2_blas_stream(c->blas, stream, err);
}

/* Element offset of column col in a half matrix, as a pointer. */
static const void *col(const void *base, int c) { return (const char *)base + 2 * (size_t)c; }

/* Row j of the stacked A [rp, in]: wc's row out_total + j (stride in + rp). */
static const void *a_row(const s2_lora_dims *d, const void *wc, int j)
{
    return (const char *)wc + 2 * ((size_t)d->out_total + (size_t)j) * (size_t)(d->in + d->rp);
}

const char *s2_lora_gemm_name(s2_lora_gemm g)
{
    static const char *const names[S2_LG_COUNT] = {"u", "y", "dx", "da", "v", "db"};
    return g >= 0 && g < S2_LG_COUNT ? names[g] : "?";
}

void s2_tune_lora_kernel_name(s2_lora_gemm g, int grad_f32, char *buf, size_t n)
{
    const int grad = g == S2_LG_DA || g == S2_LG_DB;
    snprintf(buf, n, "lora_%s%s", s2_lora_gemm_name(g), grad && grad_f32 ? "_f32" : "");
}

/* One row-major product's arguments (s2_blas_gemm's). */
typedef struct prod {
    const char *what;
    int ta, tb, M, N, K;
    float alpha;
    const void *A;
    int lda;
    const void *B;
    int ldb;
    float beta;
    void *C;
    int ldc, c_f32;
} prod;

/* Runs p with algo, or (n not NULL) counts its algorithms into *n (the fewest so far). */
static s2_status run_prod(s2_blas *bl, const s2_lora_dims *d, const prod *p, int algo, int *n,
                          s2_error *err)
{
    if (n) {
        int k = 0;
        s2_status st = s2_blas_algos(bl, d->dtype, p->ta, p->tb, p->M, p->N, p->K, p->A,
                                     p->lda, p->B, p->ldb, p->C, p->ldc, p->c_f32, &k, err);
        if (!st && k < *n)
            *n = k;
        return st;
    }
    return s2_blas_gemm_algo(bl, d->dtype, p->what, p->ta, p->tb, p->M, p->N, p->K, p->alpha,
                             p->A, p->lda, p->B, p->ldb, p->beta, p->C, p->ldc, p->c_f32, algo,
                             err);
}

/* Product g of the group (see s2_lora_gemm), run with algo through bl (on bl's stream) or
 * counted into *n. */
static s2_status lora_gemm(s2_blas *bl, const s2_lora_dims *d, s2_lora_gemm g, int algo,
                           const s2_lora_bufs *b, int *n, s2_error *err)
{
    const int lx = d->in + d->rp, ly = d->out_total + d->rp;
    void *u = (void *)col(b->xa, d->in), *sv = (void *)col(b->dya, d->out_total);
    const void *a = a_row(d, b->wc, 0);
    const float gb = d->grad_f32 ? d->grad_beta : 0.f;
    if ((g == S2_LG_V || g == S2_LG_DB) && vdb_used(d)) {
        if (n) /* the generated pass's, not cuBLAS's */
            *n = 0;
        return n ? S2_OK
                 : s2_error_set(err, S2_ERR_INVALID,
                                "LoRA: %s is the generated pass's for rank %d, not a cuBLAS "
                                "product", s2_lora_gemm_name(g), d->r);
    }
    prod p;
    switch (g) {
    case S2_LG_U:
        p = (prod){"u = s x A^T", 0, 1, d->M, d->rp, d->in, d->scale, b->xa, lx, a, lx, 0.f, u,
                   lx, 0};
        break;
    case S2_LG_Y: /* y = [x | u] [W | B]^T */
        p = (prod){"y = xa wc^T", 0, 1, d->M, d->out_total, lx, 1.f, b->xa, lx, b->wc, lx, 0.f,
                   b->y, d->out_total, 0};
        break;
    case S2_LG_DX: /* dx = [dy | s v] [W ; A] */
        p = (prod){"dx = dya wc", 0, 0, d->M, d->in, ly, 1.f, b->dya, ly, b->wc, lx, 0.f, b->dxv,
                   lx, 0};
        break;
    case S2_LG_DA:
        p = (prod){"dA = (s v)^T x", 1, 0, d->rp, d->in, d->M, 1.f, sv, ly, b->xa, lx, gb, b->da,
                   d->in, d->grad_f32};
        break;
    case S2_LG_V: /* s v = s dy B over the whole [out_total, rp] B: its off-diagonal blocks are 0 */
        p = (prod){"s v = s dy B", 0, 0, d->M, d->rp, d->out_total, d->scale, b->dya, ly,
                   col(b->wc, d->in), lx, 0.f, sv, ly, 0};
        break;
    case S2_LG_DB: {
        /* dB_i = dy_i^T u_i (u already holds s and the masks), one GEMM per projection into
         * its diagonal block of the [out_total, rp] result: the off-diagonal blocks are not
         * parameters (a dense dy^T u would give them gradients, and an optimizer would then
         * let one projection's adapter feed another's output). Together one read of dy. */
        const size_t ge = d->grad_f32 ? 4 : 2;
        s2_status st = S2_OK;
        for (int i = 0, off = 0; !st && i < d->n_proj; off += d->out[i], i++) {
            const prod pi = {"dB_i = dy_i^T u_i", 1, 0, d->out[i], d->r, d->M, 1.f,
                             col(b->dya, off), ly, col(u, i * d->r), lx, gb,
                             (char *)b->db + ge * ((size_t)off * d->rp + (size_t)i * d->r),
                             d->rp, d->grad_f32};
            st = run_prod(bl, d, &pi, algo, n, err);
        }
        return st;
    }
    default:
        return s2_error_set(err, S2_ERR_INVALID, "LoRA: no product %d", (int)g);
    }
    return run_prod(bl, d, &p, algo, n, err);
}

s2_status s2_lora_gemm_run(s2_lora_ctx *c, const s2_lora_dims *d, s2_lora_gemm g, int algo,
                           const s2_lora_bufs *b, s2_error *err)
{
    return lora_gemm(c->blas, d, g, algo, b, NULL, err);
}

s2_status s2_lora_gemm_algos(s2_lora_ctx *c, const s2_lora_dims *d, s2_lora_gemm g,
                             const s2_lora_bufs *b, int *n, s2_error *err)
{
    *n = S2_BLAS_MAX_ALGOS;
    return lora_gemm(c->blas, d, g, 0, b, n, err);
}

s2_status s2_lora_forward(s2_lora_ctx *c, const s2_lora_dims *d, void *xa, const void *wc,
                          void *y, void *ws, cudaStream_t stream, s2_error *err)
{
    const int lx = d->in + d->rp;
    const s2_lora_bufs b = {.xa = xa, .wc = wc, .y = y};
    s2_status st = on_stream(c, stream, err);
    if (!st && d->dropout <= 0) /* u = s x A^T into the extra columns of xa */
        st = lora_gemm(c->blas, d, S2_LG_U, d->algo[S2_LG_U], &b, NULL, err);
    if (!st && d->dropout > 0) { /* per projection: u_i = s drop_i(x) A_i^T; pad columns 0 */
        const lora_unit *lu = NULL;
        void *xd = ws_drop(d, ws);
        st = lora_unit_of(c, d, &lu, err);
        const int used = d->n_proj * d->r;
        if (!st && d->rp > used)
            st = s2_rt_check(cudaMemset2DAsync((char *)xa + 2 * (size_t)(d->in + used), 2 * (size_t)lx,
                                               0, 2 * (size_t)(d->rp - used), (size_t)d->M, stream),
                             "zeroing u's pad columns", err);
        for (int i = 0; !st && i < d->n_proj; i++) {
            st = launch_dropout(lu, d, 0, xd, xa, lx, i, stream, err);
            if (!st)
                st = gemm_rm(c, d, "u_i = s drop_i(x) A_i^T", 0, 1, d->M, d->r, d->in, d->scale,
                             xd, d->in,
                             a_row(d, wc, i * d->r), lx, 0.f, (void *)col(xa, d->in + i * d->r), lx, err);
        }
    }
    if (!st) /* y = [x | u] [W | B]^T */
        st = lora_gemm(c->blas, d, S2_LG_Y, d->algo[S2_LG_Y], &b, NULL, err);
    return st;
}

s2_status s2_lora_base_forward(s2_lora_ctx *c, const s2_lora_dims *d, const void *x,
                               const void *w, void *y, cudaStream_t stream, s2_error *err)
{
    s2_status st = on_stream(c, stream, err);
    if (!st)
        st = gemm_rm(c, d, "y = x W^T", 0, 1, d->M, d->out_total, d->in, 1.f, x, d->in, w, d->in,
                     0.f, y, d->out_total, err);
    return st;
}

/* s2_lora_vdb_finish over part sel (0: s v and dB; 1: s v; 2: dB) on stream. */
static s2_status vdb_finish(const lora_unit *lu, const s2_lora_dims *d, const s2_lora_bufs *b,
                            void *ws, int sel, cudaStream_t stream, s2_error *err)
{
    int rows, ranges;
    vdb_geometry(d, &rows, &ranges);
    float *vpart = ws, *part = (float *)((char *)ws + ws_vpart(d));
    const int ly = d->out_total + d->rp;
    void *sv = b->dya, *db = b->db;
    float scale = d->scale, beta = d->grad_f32 ? d->grad_beta : 0.f;
    int M = d->M, ot = d->out_total, rp = d->rp, off1 = d->n_proj > 1 ? d->out[0] : ot;
    int off2 = d->n_proj > 2 ? d->out[0] + d->out[1] : ot, gf = d->grad_f32;
    int se[3], end = 0; /* the projections' cumulative slab ends (the total for absent ones) */
    for (int i = 0; i < 3; i++) {
        end += i < d->n_proj ? s2_lora_vdb_slabs(d->out[i]) : 0;
        se[i] = end;
    }
    void *args[] = {&vpart, &M, &rp, &se[0], &se[1], &se[2], &sv, (void *)&ly, &ot, &scale,
                    &part, &ranges, &db, &rp, &off1, &off2, &gf, &beta, &sel};
    const long n = (sel != 2 ? (long)d->M * d->rp : 0) + (sel != 1 ? (long)ot * d->r : 0);
    const unsigned blocks = (unsigned)((n + 255) / 256 < 4096 ? (n + 255) / 256 : 4096);
    s2_status st = s2_rt_check(cudaLaunchKernel((const void *)lu->vdb_finish, (dim3){blocks, 1, 1},
                                                (dim3){256, 1, 1}, args, 0, stream),
                               "s2_lora_vdb_finish", err);
    return st ? st : s2_rt_check(cudaGetLastError(), "s2_lora_vdb_finish", err);
}

/* The generated pass over dy: s v into dya's extra columns and dB's diagonal blocks, through
 * its finish over part sel (vdb_finish's). */
static s2_status vdb_pass(s2_lora_ctx *c, const s2_lora_dims *d, const s2_lora_bufs *b,
                          void *ws, int sel, cudaStream_t stream, s2_error *err)
{
    if (!ws)
        return s2_error_set(err, S2_ERR_INVALID,
                            "LoRA backward: no workspace (s2_lora_workspace_bytes: %zu bytes)",
                            s2_lora_workspace_bytes(d));
    const lora_unit *lu = NULL;
    s2_status st = lora_unit_of(c, d, &lu, err);
    if (st)
        return st;
    int rows, ranges;
    vdb_geometry(d, &rows, &ranges);
    float *vpart = ws, *part = (float *)((char *)ws + ws_vpart(d));
    const int lx = d->in + d->rp, ly = d->out_total + d->rp;
    const void *dy = b->dya, *u = col(b->xa, d->in), *bb = col(b->wc, d->in);
    int M = d->M, ot = d->out_total;
    for (int i = 0, off = 0, s0 = 0; !st && i < d->n_proj;
         off += d->out[i], s0 += s2_lora_vdb_slabs(d->out[i]), i++) {
        int c0 = off, out_i = d->out[i], r0 = i * d->r, slab0 = s0;
        void *args[] = {&dy, (void *)&ly, &u, (void *)&lx, &bb, (void *)&lx, &vpart, &slab0,
                        &part, &ot, &M, &rows, &c0, &out_i, &r0};
        const dim3 grid = {(unsigned)s2_lora_vdb_slabs(out_i), (unsigned)ranges, 1};
        st = s2_rt_check(cudaLaunchKernel((const void *)lu->vdb, grid,
                                          (dim3){S2_LORA_VDB_WARPS * 32, 1, 1}, args,
                                          s2_lora_vdb_smem(d->r), stream),
                         "s2_lora_vdb", err);
        if (!st)
            st = s2_rt_check(cudaGetLastError(), "s2_lora_vdb", err);
    }
    return st ? st : vdb_finish(lu, d, b, ws, sel, stream, err);
}

/* The backward's second stream, its cuBLAS handle (a workspace of its own) and the events
 * that fork to it and join it back: created on first use. The stream takes the device's
 * greatest priority, so its blocks are scheduled as soon as the dx GEMM's free an SM (at the
 * default priority they waited behind the GEMM's and the split measured no gain). */
static s2_status side_open(s2_lora_ctx *c, s2_error *err)
{
    if (c->join)
        return S2_OK;
    s2_status st = S2_OK;
    if (!c->side_blas)
        st = s2_blas_open(&c->side_blas, err);
    int least = 0, greatest = 0;
    if (!st)
        st = s2_rt_check(cudaDeviceGetStreamPriorityRange(&least, &greatest),
                         "LoRA: stream priorities", err);
    if (!st && !c->side)
        st = s2_rt_check(cudaStreamCreateWithPriority(&c->side, cudaStreamNonBlocking, greatest),
                         "LoRA: the backward's second stream", err);
    if (!st && !c->fork)
        st = s2_rt_check(cudaEventCreateWithFlags(&c->fork, cudaEventDisableTiming),
                         "LoRA: an event", err);
    if (!st)
        st = s2_rt_check(cudaEventCreateWithFlags(&c->join, cudaEventDisableTiming),
                         "LoRA: an event", err);
    if (!st)
        st = s2_blas_stream(c->side_blas, c->side, err);
    return st;
}

s2_status s2_lora_backward(s2_lora_ctx *c, const s2_lora_dims *d, const void *xa,
                           const void *wc, void *dya, void *dxv, void *da, void *db, void *ws,
                           cudaStream_t stream, s2_error *err)
{
    const int lx = d->in + d->rp, ly = d->out_total + d->rp;
    const s2_lora_bufs b = {.xa = (void *)xa, .wc = wc, .dya = dya, .dxv = dxv, .da = da,
                            .db = db};
    s2_status st = on_stream(c, stream, err);
    /* Without dropout, once s v is formed, dx = dya wc (compute-bound) runs on the caller's
     * stream and dA = (s v)^T x with dB's sums (memory-bound) on the second stream beside it,
     * joined back before this returns. */
    const int fork = d->dropout <= 0;
    if (!st && fork)
        st = side_open(c, err);
    /* s v and dB: the generated pass (with fork, its dB sums later), or a GEMM and one per
     * projection */
    if (!st && vdb_used(d))
        st = vdb_pass(c, d, &b, ws, fork ? 1 : 0, stream, err);
    if (!st && !vdb_used(d))
        st = lora_gemm(c->blas, d, S2_LG_V, d->algo[S2_LG_V], &b, NULL, err);
    if (!st && !vdb_used(d) && !fork)
        st = lora_gemm(c->blas, d, S2_LG_DB, d->algo[S2_LG_DB], &b, NULL, err);
    if (!st && fork) {
        st = s2_rt_check(cudaEventRecord(c->fork, stream), "LoRA: forking the backward", err);
        if (!st)
            st = s2_rt_check(cudaStreamWaitEvent(c->side, c->fork, 0),
                             "LoRA: forking the backward", err);
        if (st)
            return st;
        st = lora_gemm(c->side_blas, d, S2_LG_DA, d->algo[S2_LG_DA], &b, NULL, err);
        const lora_unit *lu = NULL;
        if (!st && vdb_used(d))
            st = lora_unit_of(c, d, &lu, err);
        if (!st)
            st = vdb_used(d) ? vdb_finish(lu, d, &b, ws, 2, c->side, err)
                             : lora_gemm(c->side_blas, d, S2_LG_DB, d->algo[S2_LG_DB], &b, NULL,
                                         err);
        if (!st)
            st = lora_gemm(c->blas, d, S2_LG_DX, d->algo[S2_LG_DX], &b, NULL, err);
        /* the join, whatever failed after the fork, so the caller's stream never runs ahead
         * of work left on the second one */
        s2_status jst = s2_rt_check(cudaEventRecord(c->join, c->side),
                                    "LoRA: joining the backward", st ? NULL : err);
        if (!jst)
            jst = s2_rt_check(cudaStreamWaitEvent(stream, c->join, 0),
                              "LoRA: joining the backward", st ? NULL : err);
        if (!st)
            st = jst;
    }
    if (!st && d->dropout > 0) {
        const lora_unit *lu = NULL;
        void *xd = ws_drop(d, ws);
        st = lora_unit_of(c, d, &lu, err);
        if (!st) /* dx = dy W: the low-rank part goes in under each projection's mask */
            st = gemm_rm(c, d, "dx = dy W", 0, 0, d->M, d->in, d->out_total, 1.f, dya, ly, wc, lx,
                         0.f, dxv, lx, err);
        const int used = d->n_proj * d->r;
        const size_t ge = d->grad_f32 ? 4 : 2; /* bytes per element of dA and dB */
        if (!st && d->rp > used && !(d->grad_f32 && d->grad_beta != 0.f)) /* dA's pad rows */
            st = s2_rt_check(cudaMemsetAsync((char *)da + ge * (size_t)used * d->in, 0,
                                             ge * (size_t)(d->rp - used) * d->in, stream),
                             "zeroing dA's pad rows", err);
        for (int i = 0; !st && i < d->n_proj; i++) {
            const void *svi = col(dya, d->out_total + i * d->r);
            const void *ai = a_row(d, wc, i * d->r);
            char *dai = (char *)da + ge * (size_t)i * d->r * d->in;
            /* dA_i = (s v_i)^T drop_i(x), drop_i(x) regenerated from the seed */
            st = launch_dropout(lu, d, 0, xd, xa, lx, i, stream, err);
            if (!st)
                st = gemm_grad(c, d, "dA_i = (s v_i)^T drop_i(x)", 1, 0, d->r, d->in, d->M, 1.f,
                               svi, ly, xd, d->in, dai, d->in, err);
            /* dx += mask_i (s v_i A_i) / (1 - p) */
            if (!st)
                st = gemm_rm(c, d, "t = s v_i A_i", 0, 0, d->M, d->in, d->r, 1.f, svi, ly, ai, lx,
                             0.f, xd, d->in, err);
            if (!st)
                st = launch_dropout(lu, d, 1, dxv, xd, lx, i, stream, err);
        }
    }
    return st;
}

s2_status s2_lora_base_backward(s2_lora_ctx *c, const s2_lora_dims *d, const void *w,
                                const void *dy, void *dx, cudaStream_t stream, s2_error *err)
{
    s2_status st = on_stream(c, stream, err);
    if (!st)
        st = gemm_rm(c, d, "dx = dy W", 0, 0, d->M, d->in, d->out_total, 1.f, dy, d->out_total, w,
                     d->in, 0.f, dx, d->in, err);
    return st;
}

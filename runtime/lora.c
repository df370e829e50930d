/* lora.c — LoRA linears through cuBLAS GEMMs on the augmented layout (see lora.h). */
#include "lora.h"

#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "../gen/emit.h"
#include "../templates/philox.cuh"
#include "jit.h"

struct s2_lora_ctx {
    char arch[16];
    const char *cache_dir;
    cudaLibrary_t drop_lib[2];     /* the dropout unit per dtype, built on first use */
    cudaKernel_t drop[2], drop_add[2];
    s2_blas *blas;
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
    d->rp = (grp->r_total + 7) / 8 * 8;
    d->scale = (float)plan->scale;
    d->dtype = plan->dtype;
    d->dropout = (float)plan->dropout;
    d->seed = seed;
    return S2_OK;
}

size_t s2_lora_workspace_bytes(const s2_lora_dims *d)
{
    return d->dropout > 0 ? (size_t)d->M * d->in * 2 : 0;
}

s2_status s2_lora_open(s2_lora_ctx **out, const s2_rt *rt, const char *cache_dir, s2_error *err)
{
    *out = NULL;
    s2_lora_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    snprintf(c->arch, sizeof c->arch, "%s", rt->arch);
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
    for (int i = 0; i < 2; i++)
        if (c->drop_lib[i])
            cudaLibraryUnload(c->drop_lib[i]);
    s2_blas_close(c->blas);
    free(c);
}

s2_blas *s2_lora_blas(s2_lora_ctx *c) { return c->blas; }

/* Builds (NVRTC, through the cache) and loads the dropout kernels of dtype, once. */
static s2_status dropout_kernels(s2_lora_ctx *c, s2_dtype dt, s2_error *err)
{
    if (c->drop_lib[dt])
        return S2_OK;
    char *src = NULL;
    s2_status st = s2_emit_lora_dropout(dt, &src, err);
    if (st)
        return st;
    s2_jit_src unit = {.unit = "lora_dropout", .source = src};
    s2_jit_opts jo = {.arch = c->arch, .cache_dir = c->cache_dir};
    s2_jit_result res = {0};
    st = s2_jit_build(&unit, 1, &jo, &res, err);
    free(src);
    if (!st)
        st = s2_rt_check(cudaLibraryLoadData(&c->drop_lib[dt], res.cubin, NULL, NULL, 0, NULL,
                                             NULL, 0), "cudaLibraryLoadData(lora_dropout)", err);
    s2_jit_result_free(&res);
    if (!st)
        st = s2_rt_check(cudaLibraryGetKernel(&c->drop[dt], c->drop_lib[dt], "s2_lora_dropout"),
                         "cudaLibraryGetKernel(s2_lora_dropout)", err);
    if (!st)
        st = s2_rt_check(cudaLibraryGetKernel(&c->drop_add[dt], c->drop_lib[dt],
                                              "s2_lora_dropout_add"),
                         "cudaLibraryGetKernel(s2_lora_dropout_add)", err);
    return st;
}

/* One launch of a dropout kernel over M x in elements (grid-stride, one thread per quad):
 * add 0: xd = drop_i(src) with src [M, ld]; add 1: dst [M, ld] += drop_i(src) with src [M, in]. */
static s2_status launch_dropout(const s2_lora_ctx *c, const s2_lora_dims *d, int add, void *dst,
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
    cudaKernel_t k = add ? c->drop_add[d->dtype] : c->drop[d->dtype];
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

const char *s2_lora_gemm_name(s2_lora_gemm g)
{
    static const char *const names[S2_LG_COUNT] = {"u", "y", "dxv", "dx", "da", "db"};
    return g >= 0 && g < S2_LG_COUNT ? names[g] : "?";
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
static s2_status run_prod(s2_lora_ctx *c, const s2_lora_dims *d, const prod *p, int algo, int *n,
                          s2_error *err)
{
    if (n) {
        int k = 0;
        s2_status st = s2_blas_algos(c->blas, d->dtype, p->ta, p->tb, p->M, p->N, p->K, p->A,
                                     p->lda, p->B, p->ldb, p->C, p->ldc, p->c_f32, &k, err);
        if (!st && k < *n)
            *n = k;
        return st;
    }
    return s2_blas_gemm_algo(c->blas, d->dtype, p->what, p->ta, p->tb, p->M, p->N, p->K, p->alpha,
                             p->A, p->lda, p->B, p->ldb, p->beta, p->C, p->ldc, p->c_f32, algo,
                             err);
}

/* Product g of the group (see s2_lora_gemm), run with algo or counted into *n. */
static s2_status lora_gemm(s2_lora_ctx *c, const s2_lora_dims *d, s2_lora_gemm g, int algo,
                           const s2_lora_bufs *b, int *n, s2_error *err)
{
    const int lx = d->in + d->rp;
    void *u = (void *)col(b->xa, d->in), *v = (void *)col(b->dxv, d->in);
    const float gb = d->grad_f32 ? d->grad_beta : 0.f;
    prod p;
    switch (g) {
    case S2_LG_U:
        p = (prod){"u = s x A^T", 0, 1, d->M, d->rp, d->in, d->scale, b->xa, lx, b->a, d->in, 0.f,
                   u, lx, 0};
        break;
    case S2_LG_Y: /* y = [x | u] [W | B]^T */
        p = (prod){"y = xa wc^T", 0, 1, d->M, d->out_total, lx, 1.f, b->xa, lx, b->wc, lx, 0.f,
                   b->y, d->out_total, 0};
        break;
    case S2_LG_DXV: /* [dx | v] = dy [W | B] */
        p = (prod){"[dx | v] = dy wc", 0, 0, d->M, lx, d->out_total, 1.f, b->dy, d->out_total,
                   b->wc, lx, 0.f, b->dxv, lx, 0};
        break;
    case S2_LG_DX:
        p = (prod){"dx += s v A", 0, 0, d->M, d->in, d->rp, d->scale, v, lx, b->a, d->in, 1.f,
                   b->dxv, lx, 0};
        break;
    case S2_LG_DA:
        p = (prod){"dA = s v^T x", 1, 0, d->rp, d->in, d->M, d->scale, v, lx, b->xa, lx, gb, b->da,
                   d->in, d->grad_f32};
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
                             col(b->dy, off), d->out_total, col(u, i * d->r), lx, gb,
                             (char *)b->db + ge * ((size_t)off * d->rp + (size_t)i * d->r),
                             d->rp, d->grad_f32};
            st = run_prod(c, d, &pi, algo, n, err);
        }
        return st;
    }
    default:
        return s2_error_set(err, S2_ERR_INVALID, "LoRA: no product %d", (int)g);
    }
    return run_prod(c, d, &p, algo, n, err);
}

s2_status s2_lora_gemm_run(s2_lora_ctx *c, const s2_lora_dims *d, s2_lora_gemm g, int algo,
                           const s2_lora_bufs *b, s2_error *err)
{
    return lora_gemm(c, d, g, algo, b, NULL, err);
}

s2_status s2_lora_gemm_algos(s2_lora_ctx *c, const s2_lora_dims *d, s2_lora_gemm g,
                             const s2_lora_bufs *b, int *n, s2_error *err)
{
    *n = S2_BLAS_MAX_ALGOS;
    return lora_gemm(c, d, g, 0, b, n, err);
}

s2_status s2_lora_forward(s2_lora_ctx *c, const s2_lora_dims *d, void *xa, const void *wc,
                          const void *a, void *y, void *ws, cudaStream_t stream, s2_error *err)
{
    const int lx = d->in + d->rp;
    const s2_lora_bufs b = {.xa = xa, .wc = wc, .a = a, .y = y};
    s2_status st = on_stream(c, stream, err);
    if (!st && d->dropout <= 0) /* u = s x A^T into the extra columns of xa */
        st = lora_gemm(c, d, S2_LG_U, d->algo[S2_LG_U], &b, NULL, err);
    if (!st && d->dropout > 0) { /* per projection: u_i = s drop_i(x) A_i^T; pad columns 0 */
        st = dropout_kernels(c, d->dtype, err);
        const int used = d->n_proj * d->r;
        if (!st && d->rp > used)
            st = s2_rt_check(cudaMemset2DAsync((char *)xa + 2 * (size_t)(d->in + used), 2 * (size_t)lx,
                                               0, 2 * (size_t)(d->rp - used), (size_t)d->M, stream),
                             "zeroing u's pad columns", err);
        for (int i = 0; !st && i < d->n_proj; i++) {
            st = launch_dropout(c, d, 0, ws, xa, lx, i, stream, err);
            if (!st)
                st = gemm_rm(c, d, "u_i = s drop_i(x) A_i^T", 0, 1, d->M, d->r, d->in, d->scale, ws,
                             d->in, (const char *)a + 2 * (size_t)i * d->r * d->in, d->in, 0.f,
                             (void *)col(xa, d->in + i * d->r), lx, err);
        }
    }
    if (!st) /* y = [x | u] [W | B]^T */
        st = lora_gemm(c, d, S2_LG_Y, d->algo[S2_LG_Y], &b, NULL, err);
    return st;
}

s2_status s2_lora_base_forward(s2_lora_ctx *c, const s2_lora_dims *d, const void *xa,
                               const void *wc, void *y, cudaStream_t stream, s2_error *err)
{
    const int lx = d->in + d->rp;
    s2_status st = on_stream(c, stream, err);
    if (!st)
        st = gemm_rm(c, d, "y = x W^T", 0, 1, d->M, d->out_total, d->in, 1.f, xa, lx, wc, lx, 0.f,
                     y, d->out_total, err);
    return st;
}

s2_status s2_lora_backward(s2_lora_ctx *c, const s2_lora_dims *d, const void *xa,
                           const void *wc, const void *a, const void *dy, void *dxv, void *da,
                           void *db, void *ws, cudaStream_t stream, s2_error *err)
{
    const int lx = d->in + d->rp;
    const s2_lora_bufs b = {.xa = (void *)xa, .wc = wc, .a = a, .dy = dy, .dxv = dxv, .da = da,
                            .db = db};
    s2_status st = on_stream(c, stream, err);
    if (!st) /* [dx | v] = dy [W | B] */
        st = lora_gemm(c, d, S2_LG_DXV, d->algo[S2_LG_DXV], &b, NULL, err);
    if (!st && d->dropout <= 0) {
        st = lora_gemm(c, d, S2_LG_DX, d->algo[S2_LG_DX], &b, NULL, err); /* dx += s v A */
        if (!st) /* dA = s v^T x */
            st = lora_gemm(c, d, S2_LG_DA, d->algo[S2_LG_DA], &b, NULL, err);
    }
    if (!st && d->dropout > 0) {
        st = dropout_kernels(c, d->dtype, err);
        const int used = d->n_proj * d->r;
        const size_t ge = d->grad_f32 ? 4 : 2; /* bytes per element of dA and dB */
        if (!st && d->rp > used && !(d->grad_f32 && d->grad_beta != 0.f)) /* dA's pad rows */
            st = s2_rt_check(cudaMemsetAsync((char *)da + ge * (size_t)used * d->in, 0,
                                             ge * (size_t)(d->rp - used) * d->in, stream),
                             "zeroing dA's pad rows", err);
        for (int i = 0; !st && i < d->n_proj; i++) {
            const void *vi = col(dxv, d->in + i * d->r);
            const char *ai = (const char *)a + 2 * (size_t)i * d->r * d->in;
            char *dai = (char *)da + ge * (size_t)i * d->r * d->in;
            /* dA_i = s v_i^T drop_i(x), drop_i(x) regenerated from the seed */
            st = launch_dropout(c, d, 0, ws, xa, lx, i, stream, err);
            if (!st)
                st = gemm_grad(c, d, "dA_i = s v_i^T drop_i(x)", 1, 0, d->r, d->in, d->M,
                               d->scale, vi, lx, ws, d->in, dai, d->in, err);
            /* dx += mask_i (s v_i A_i) / (1 - p) */
            if (!st)
                st = gemm_rm(c, d, "t = s v_i A_i", 0, 0, d->M, d->in, d->r, d->scale, vi, lx, ai,
                             d->in, 0.f, ws, d->in, err);
            if (!st)
                st = launch_dropout(c, d, 1, dxv, ws, lx, i, stream, err);
        }
    }
    if (!st)
        st = lora_gemm(c, d, S2_LG_DB, d->algo[S2_LG_DB], &b, NULL, err);
    return st;
}

s2_status s2_lora_base_backward(s2_lora_ctx *c, const s2_lora_dims *d, const void *wc,
                                const void *dy, void *dxv, cudaStream_t stream, s2_error *err)
{
    const int lx = d->in + d->rp;
    s2_status st = on_stream(c, stream, err);
    if (!st)
        st = gemm_rm(c, d, "dx = dy W", 0, 0, d->M, d->in, d->out_total, 1.f, dy, d->out_total, wc,
                     lx, 0.f, dxv, lx, err);
    return st;
}

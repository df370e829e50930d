/* lora.c — LoRA linears through cuBLAS GEMMs on the augmented layout (see lora.h). */
#include "lora.h"

#include <cublas_api.h>
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "rt.h"

/* The cuBLAS entry points used, looked up at run time. */
typedef cublasStatus_t (*create_fn)(cublasHandle_t *);
typedef cublasStatus_t (*destroy_fn)(cublasHandle_t);
typedef cublasStatus_t (*set_stream_fn)(cublasHandle_t, cudaStream_t);
typedef const char *(*status_string_fn)(cublasStatus_t);
typedef cublasStatus_t (*gemm_ex_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int,
                                     int, int, const void *, const void *, cudaDataType, int,
                                     const void *, cudaDataType, int, const void *, void *,
                                     cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);

struct s2_lora_ctx {
    void *lib;
    cublasHandle_t h;
    create_fn create;
    destroy_fn destroy;
    set_stream_fn set_stream;
    status_string_fn status_string;
    gemm_ex_fn gemm;
};

s2_status s2_lora_dims_of(const s2_lora_plan *plan, int g, int M, s2_lora_dims *d, s2_error *err)
{
    memset(d, 0, sizeof *d);
    if (g < 0 || g >= plan->n_groups)
        return s2_error_set(err, S2_ERR_INVALID, "LoRA group %d: the plan has %d", g, plan->n_groups);
    if (plan->dropout > 0)
        return s2_error_set(err, S2_ERR_INVALID,
                            "lora.dropout = %g: the GPU LoRA path has no dropout yet (the CPU "
                            "reference has); use lora.dropout = 0", plan->dropout);
    const s2_lora_group *grp = &plan->group[g];
    d->M = M;
    d->in = grp->in;
    d->n_proj = grp->n;
    for (int i = 0; i < grp->n; i++)
        d->out[i] = plan->lin[grp->proj[i]].out;
    d->out_total = grp->out_total;
    d->r = plan->rank;
    d->rp = (grp->r_total + 7) / 8 * 8;
    d->scale = (float)plan->scale;
    d->dtype = plan->dtype;
    return S2_OK;
}

static void *sym(void *lib, const char *name, int *missing)
{
    void *p = dlsym(lib, name);
    *missing |= !p;
    return p;
}

s2_status s2_lora_open(s2_lora_ctx **out, s2_error *err)
{
    *out = NULL;
    s2_lora_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    c->lib = dlopen("libcublas.so.13", RTLD_NOW | RTLD_LOCAL);
    if (!c->lib) {
        free(c);
        return s2_error_set(err, S2_ERR_CUDA,
                            "cannot load cuBLAS (libcublas.so.13: %s); the LoRA linears need it "
                            "(add the CUDA Toolkit's lib64 to LD_LIBRARY_PATH)", dlerror());
    }
    int missing = 0;
    c->create = (create_fn)sym(c->lib, "cublasCreate_v2", &missing);
    c->destroy = (destroy_fn)sym(c->lib, "cublasDestroy_v2", &missing);
    c->set_stream = (set_stream_fn)sym(c->lib, "cublasSetStream_v2", &missing);
    c->status_string = (status_string_fn)sym(c->lib, "cublasGetStatusString", &missing);
    c->gemm = (gemm_ex_fn)sym(c->lib, "cublasGemmEx", &missing);
    if (missing) {
        dlclose(c->lib);
        free(c);
        return s2_error_set(err, S2_ERR_CUDA, "libcublas.so.13 lacks an entry point s2lora needs");
    }
    cublasStatus_t s = c->create(&c->h);
    if (s != CUBLAS_STATUS_SUCCESS) {
        s2_status st = s2_error_set(err, S2_ERR_CUDA, "cublasCreate: %s", c->status_string(s));
        dlclose(c->lib);
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
    if (c->h)
        c->destroy(c->h);
    dlclose(c->lib);
    free(c);
}

/*
 * Row-major C[M,N] = alpha op(A) op(B) + beta C (leading dimensions are row strides): the
 * column-major product C^T = op(B)^T op(A)^T, which cuBLAS computes directly.
 */
static s2_status gemm_rm(s2_lora_ctx *c, const s2_lora_dims *d, const char *what, int ta, int tb,
                         int M, int N, int K, float alpha, const void *A, int lda, const void *B,
                         int ldb, float beta, void *C, int ldc, s2_error *err)
{
    const cudaDataType t = d->dtype == S2_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    cublasStatus_t s = c->gemm(c->h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                               N, M, K, &alpha, B, t, ldb, A, t, lda, &beta, C, t, ldc,
                               CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS)
        return s2_error_set(err, S2_ERR_CUDA, "cuBLAS GEMM (%s, M=%d N=%d K=%d): %s", what, M, N,
                            K, c->status_string(s));
    return s2_rt_check(cudaGetLastError(), what, err);
}

static s2_status on_stream(s2_lora_ctx *c, cudaStream_t stream, s2_error *err)
{
    cublasStatus_t s = c->set_stream(c->h, stream);
    return s == CUBLAS_STATUS_SUCCESS ? S2_OK
                                      : s2_error_set(err, S2_ERR_CUDA, "cublasSetStream: %s",
                                                     c->status_string(s));
}

/* Element offset of column col in a half matrix, as a pointer. */
static const void *col(const void *base, int c) { return (const char *)base + 2 * (size_t)c; }

s2_status s2_lora_forward(s2_lora_ctx *c, const s2_lora_dims *d, void *xa, const void *wc,
                          const void *a, void *y, cudaStream_t stream, s2_error *err)
{
    const int lx = d->in + d->rp;
    s2_status st = on_stream(c, stream, err);
    if (!st) /* u = s x A^T into the extra columns of xa */
        st = gemm_rm(c, d, "u = s x A^T", 0, 1, d->M, d->rp, d->in, d->scale, xa, lx, a, d->in,
                     0.f, (void *)col(xa, d->in), lx, err);
    if (!st) /* y = [x | u] [W | B]^T */
        st = gemm_rm(c, d, "y = xa wc^T", 0, 1, d->M, d->out_total, lx, 1.f, xa, lx, wc, lx, 0.f,
                     y, d->out_total, err);
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
                           void *db, cudaStream_t stream, s2_error *err)
{
    const int lx = d->in + d->rp;
    const void *u = col(xa, d->in), *v = col(dxv, d->in);
    s2_status st = on_stream(c, stream, err);
    if (!st) /* [dx | v] = dy [W | B] */
        st = gemm_rm(c, d, "[dx | v] = dy wc", 0, 0, d->M, lx, d->out_total, 1.f, dy,
                     d->out_total, wc, lx, 0.f, dxv, lx, err);
    if (!st) /* dx += s v A */
        st = gemm_rm(c, d, "dx += s v A", 0, 0, d->M, d->in, d->rp, d->scale, v, lx, a, d->in,
                     1.f, dxv, lx, err);
    if (!st) /* dA = s v^T x */
        st = gemm_rm(c, d, "dA = s v^T x", 1, 0, d->rp, d->in, d->M, d->scale, v, lx, xa, lx, 0.f,
                     da, d->in, err);
    if (!st) /* dB = dy^T u (u already holds s) */
        st = gemm_rm(c, d, "dB = dy^T u", 1, 0, d->out_total, d->rp, d->M, 1.f, dy, d->out_total,
                     u, lx, 0.f, db, d->rp, err);
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

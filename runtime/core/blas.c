/* blas.c — cuBLAS loaded at run time, row-major GEMMs (see blas.h). */
#include "runtime/core/blas.h"

#include <cublasLt.h>
#include <cublas_api.h>
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/rt.h"

typedef cublasStatus_t (*create_fn)(cublasHandle_t *);
typedef cublasStatus_t (*destroy_fn)(cublasHandle_t);
typedef cublasStatus_t (*set_stream_fn)(cublasHandle_t, cudaStream_t);
typedef const char *(*status_string_fn)(cublasStatus_t);
typedef cublasStatus_t (*set_atomics_fn)(cublasHandle_t, cublasAtomicsMode_t);
typedef cublasStatus_t (*gemm_ex_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int,
                                     int, int, const void *, const void *, cudaDataType, int,
                                     const void *, cudaDataType, int, const void *, void *,
                                     cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);

typedef cublasStatus_t (*lt_create_fn)(cublasLtHandle_t *);
typedef cublasStatus_t (*lt_destroy_fn)(cublasLtHandle_t);
typedef cublasStatus_t (*lt_desc_create_fn)(cublasLtMatmulDesc_t *, cublasComputeType_t,
                                            cudaDataType_t);
typedef cublasStatus_t (*lt_desc_set_fn)(cublasLtMatmulDesc_t, cublasLtMatmulDescAttributes_t,
                                         const void *, size_t);
typedef cublasStatus_t (*lt_desc_destroy_fn)(cublasLtMatmulDesc_t);
typedef cublasStatus_t (*lt_layout_create_fn)(cublasLtMatrixLayout_t *, cudaDataType, uint64_t,
                                              uint64_t, int64_t);
typedef cublasStatus_t (*lt_layout_destroy_fn)(cublasLtMatrixLayout_t);
typedef cublasStatus_t (*lt_pref_create_fn)(cublasLtMatmulPreference_t *);
typedef cublasStatus_t (*lt_pref_set_fn)(cublasLtMatmulPreference_t,
                                         cublasLtMatmulPreferenceAttributes_t, const void *,
                                         size_t);
typedef cublasStatus_t (*lt_pref_destroy_fn)(cublasLtMatmulPreference_t);
typedef cublasStatus_t (*lt_heuristic_fn)(cublasLtHandle_t, cublasLtMatmulDesc_t,
                                          cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                          cublasLtMatrixLayout_t, cublasLtMatrixLayout_t,
                                          cublasLtMatmulPreference_t, int,
                                          cublasLtMatmulHeuristicResult_t *, int *);
typedef cublasStatus_t (*lt_matmul_fn)(cublasLtHandle_t, cublasLtMatmulDesc_t, const void *,
                                       const void *, cublasLtMatrixLayout_t, const void *,
                                       cublasLtMatrixLayout_t, const void *, const void *,
                                       cublasLtMatrixLayout_t, void *, cublasLtMatrixLayout_t,
                                       const cublasLtMatmulAlgo_t *, void *, size_t,
                                       cudaStream_t);

#define LT_WORKSPACE ((size_t)32 << 20)

/* One distinct product for cuBLASLt: its key, descriptors and heuristic list. */
typedef struct lt_problem {
    int key[14];
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulHeuristicResult_t res[S2_BLAS_MAX_ALGOS];
    int n;
    int warned; /* a tuned algorithm beyond the list was reported */
} lt_problem;

struct s2_blas {
    void *lib, *lt_lib;
    cublasHandle_t h;
    cublasLtHandle_t lt;
    cudaStream_t stream;
    create_fn create;
    destroy_fn destroy;
    set_stream_fn set_stream;
    status_string_fn status_string;
    set_atomics_fn set_atomics;
    gemm_ex_fn gemm;
    lt_create_fn lt_create;
    lt_destroy_fn lt_destroy;
    lt_desc_create_fn desc_create;
    lt_desc_set_fn desc_set;
    lt_desc_destroy_fn desc_destroy;
    lt_layout_create_fn layout_create;
    lt_layout_destroy_fn layout_destroy;
    lt_pref_create_fn pref_create;
    lt_pref_set_fn pref_set;
    lt_pref_destroy_fn pref_destroy;
    lt_heuristic_fn heuristic;
    lt_matmul_fn matmul;
    void *workspace; /* LT_WORKSPACE bytes, on first cuBLASLt product */
    lt_problem *probs;
    int n_probs, cap_probs;
};

static void *sym(void *lib, const char *name, int *missing)
{
    void *p = dlsym(lib, name);
    *missing |= !p;
    return p;
}

s2_status s2_blas_open(s2_blas **out, s2_error *err)
{
    *out = NULL;
    s2_blas *b = calloc(1, sizeof *b);
    if (!b)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    b->lib = dlopen("libcublas.so.13", RTLD_NOW | RTLD_LOCAL);
    if (!b->lib) {
        free(b);
        return s2_error_set(err, S2_ERR_CUDA,
                            "cannot load cuBLAS (libcublas.so.13: %s); the linears need it "
                            "(add the CUDA Toolkit's lib64 to LD_LIBRARY_PATH)", dlerror());
    }
    int missing = 0;
    b->create = (create_fn)sym(b->lib, "cublasCreate_v2", &missing);
    b->destroy = (destroy_fn)sym(b->lib, "cublasDestroy_v2", &missing);
    b->set_stream = (set_stream_fn)sym(b->lib, "cublasSetStream_v2", &missing);
    b->status_string = (status_string_fn)sym(b->lib, "cublasGetStatusString", &missing);
    b->gemm = (gemm_ex_fn)sym(b->lib, "cublasGemmEx", &missing);
    b->set_atomics = (set_atomics_fn)sym(b->lib, "cublasSetAtomicsMode", &missing);
    b->lt_lib = dlopen("libcublasLt.so.13", RTLD_NOW | RTLD_LOCAL);
    if (b->lt_lib) {
        b->lt_create = (lt_create_fn)sym(b->lt_lib, "cublasLtCreate", &missing);
        b->lt_destroy = (lt_destroy_fn)sym(b->lt_lib, "cublasLtDestroy", &missing);
        b->desc_create = (lt_desc_create_fn)sym(b->lt_lib, "cublasLtMatmulDescCreate", &missing);
        b->desc_set = (lt_desc_set_fn)sym(b->lt_lib, "cublasLtMatmulDescSetAttribute", &missing);
        b->desc_destroy = (lt_desc_destroy_fn)sym(b->lt_lib, "cublasLtMatmulDescDestroy", &missing);
        b->layout_create = (lt_layout_create_fn)sym(b->lt_lib, "cublasLtMatrixLayoutCreate",
                                                    &missing);
        b->layout_destroy = (lt_layout_destroy_fn)sym(b->lt_lib, "cublasLtMatrixLayoutDestroy",
                                                      &missing);
        b->pref_create = (lt_pref_create_fn)sym(b->lt_lib, "cublasLtMatmulPreferenceCreate",
                                                &missing);
        b->pref_set = (lt_pref_set_fn)sym(b->lt_lib, "cublasLtMatmulPreferenceSetAttribute",
                                          &missing);
        b->pref_destroy = (lt_pref_destroy_fn)sym(b->lt_lib, "cublasLtMatmulPreferenceDestroy",
                                                  &missing);
        b->heuristic = (lt_heuristic_fn)sym(b->lt_lib, "cublasLtMatmulAlgoGetHeuristic", &missing);
        b->matmul = (lt_matmul_fn)sym(b->lt_lib, "cublasLtMatmul", &missing);
    }
    if (missing || !b->lt_lib) {
        if (b->lt_lib)
            dlclose(b->lt_lib);
        dlclose(b->lib);
        free(b);
        return s2_error_set(err, S2_ERR_CUDA, "libcublas.so.13 or libcublasLt.so.13 is missing "
                                              "or lacks an entry point s2lora needs");
    }
    cublasStatus_t s = b->create(&b->h);
    /* cuBLAS's default, pinned: no routine may pick an algorithm that adds with atomics (the
     * products stay the same bits run to run; blas.h) */
    if (s == CUBLAS_STATUS_SUCCESS) {
        s = b->set_atomics(b->h, CUBLAS_ATOMICS_NOT_ALLOWED);
        if (s != CUBLAS_STATUS_SUCCESS)
            b->destroy(b->h);
    }
    if (s == CUBLAS_STATUS_SUCCESS) {
        s = b->lt_create(&b->lt);
        if (s != CUBLAS_STATUS_SUCCESS)
            b->destroy(b->h);
    }
    if (s != CUBLAS_STATUS_SUCCESS) {
        s2_status st = s2_error_set(err, S2_ERR_CUDA, "cublasCreate / cublasLtCreate: %s",
                                    b->status_string(s));
        dlclose(b->lt_lib);
        dlclose(b->lib);
        free(b);
        return st;
    }
    *out = b;
    return S2_OK;
}

void s2_blas_close(s2_blas *b)
{
    if (!b)
        return;
    for (int i = 0; i < b->n_probs; i++) {
        lt_problem *p = &b->probs[i];
        b->layout_destroy(p->a), b->layout_destroy(p->b), b->layout_destroy(p->c);
        b->desc_destroy(p->desc);
    }
    free(b->probs);
    if (b->workspace)
        cudaFree(b->workspace);
    if (b->lt)
        b->lt_destroy(b->lt);
    if (b->h)
        b->destroy(b->h);
    dlclose(b->lt_lib);
    dlclose(b->lib);
    free(b);
}

s2_status s2_blas_stream(s2_blas *b, cudaStream_t stream, s2_error *err)
{
    cublasStatus_t s = b->set_stream(b->h, stream);
    b->stream = stream;
    return s == CUBLAS_STATUS_SUCCESS
               ? S2_OK
               : s2_error_set(err, S2_ERR_CUDA, "cublasSetStream: %s", b->status_string(s));
}

s2_status s2_blas_gemm(s2_blas *b, s2_dtype dt, const char *what, int ta, int tb, int M, int N,
                       int K, float alpha, const void *A, int lda, const void *B, int ldb,
                       float beta, void *C, int ldc, int c_f32, s2_error *err)
{
    if (M == 0 || N == 0 || (K == 0 && beta == 1.f)) /* nothing to add */
        return S2_OK;
    const cudaDataType t = dt == S2_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    cublasStatus_t s = b->gemm(b->h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
                               N, M, K, &alpha, B, t, ldb, A, t, lda, &beta, C,
                               c_f32 ? CUDA_R_32F : t, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS)
        return s2_error_set(err, S2_ERR_CUDA, "cuBLAS GEMM (%s, M=%d N=%d K=%d): %s", what, M, N,
                            K, b->status_string(s));
    return s2_rt_check(cudaGetLastError(), what, err);
}

/* The largest power of two (up to 256) that divides a pointer: cuBLASLt's heuristic needs it. */
static int align_of(const void *p)
{
    int a = 256;
    while (a > 1 && (uintptr_t)p % (uintptr_t)a)
        a /= 2;
    return a;
}

/* The cached problem of these arguments, made on first sight (descriptors and heuristic).
 * Column-major, as s2_blas_gemm hands it to cublasGemmEx: C^T [N, M] = op(B)^T op(A)^T. */
static s2_status lt_problem_of(s2_blas *b, s2_dtype dt, int ta, int tb, int M, int N, int K,
                               const void *A, int lda, const void *B, int ldb, const void *C,
                               int ldc, int c_f32, lt_problem **out, s2_error *err)
{
    const int key[14] = {dt, ta, tb, M, N, K, lda, ldb, ldc, c_f32, align_of(A), align_of(B),
                         align_of(C), 1};
    for (int i = 0; i < b->n_probs; i++)
        if (!memcmp(b->probs[i].key, key, sizeof key)) {
            *out = &b->probs[i];
            return S2_OK;
        }
    if (b->n_probs == b->cap_probs) {
        const int cap = b->cap_probs ? 2 * b->cap_probs : 16;
        lt_problem *np = realloc(b->probs, (size_t)cap * sizeof *np);
        if (!np)
            return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
        b->probs = np, b->cap_probs = cap;
    }
    lt_problem *p = &b->probs[b->n_probs];
    memset(p, 0, sizeof *p);
    memcpy(p->key, key, sizeof key);
    const cudaDataType t = dt == S2_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    const cublasOperation_t opa = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opb = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasStatus_t s = b->desc_create(&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = b->desc_set(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = b->desc_set(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb);
    /* A_cm = B: [N, K] under opa (stored [K, N] column-major when transposed) */
    if (s == CUBLAS_STATUS_SUCCESS)
        s = b->layout_create(&p->a, t, tb ? (uint64_t)K : (uint64_t)N, tb ? (uint64_t)N : (uint64_t)K,
                             ldb);
    /* B_cm = A: [K, M] under opb */
    if (s == CUBLAS_STATUS_SUCCESS)
        s = b->layout_create(&p->b, t, ta ? (uint64_t)M : (uint64_t)K, ta ? (uint64_t)K : (uint64_t)M,
                             lda);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = b->layout_create(&p->c, c_f32 ? CUDA_R_32F : t, (uint64_t)N, (uint64_t)M, ldc);
    cublasLtMatmulPreference_t pref = NULL;
    if (s == CUBLAS_STATUS_SUCCESS)
        s = b->pref_create(&pref);
    const size_t ws = LT_WORKSPACE;
    if (s == CUBLAS_STATUS_SUCCESS)
        s = b->pref_set(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    const cublasLtMatmulPreferenceAttributes_t al[3] = {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES};
    const uint32_t av[3] = {(uint32_t)key[11], (uint32_t)key[10], (uint32_t)key[12]};
    for (int i = 0; i < 3 && s == CUBLAS_STATUS_SUCCESS; i++)
        s = b->pref_set(pref, al[i], &av[i], sizeof av[i]);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = b->heuristic(b->lt, p->desc, p->a, p->b, p->c, p->c, pref, S2_BLAS_MAX_ALGOS, p->res,
                         &p->n);
    if (pref)
        b->pref_destroy(pref);
    if (s != CUBLAS_STATUS_SUCCESS) {
        if (p->a)
            b->layout_destroy(p->a);
        if (p->b)
            b->layout_destroy(p->b);
        if (p->c)
            b->layout_destroy(p->c);
        if (p->desc)
            b->desc_destroy(p->desc);
        return s2_error_set(err, S2_ERR_CUDA, "cuBLASLt heuristic (M=%d N=%d K=%d): %s", M, N, K,
                            b->status_string(s));
    }
    b->n_probs++;
    *out = p;
    return S2_OK;
}

s2_status s2_blas_algos(s2_blas *b, s2_dtype dt, int ta, int tb, int M, int N, int K,
                        const void *A, int lda, const void *B, int ldb, const void *C, int ldc,
                        int c_f32, int *n, s2_error *err)
{
    *n = 0;
    if (M == 0 || N == 0 || K == 0)
        return S2_OK;
    lt_problem *p;
    s2_status st = lt_problem_of(b, dt, ta, tb, M, N, K, A, lda, B, ldb, C, ldc, c_f32, &p, err);
    if (!st)
        *n = p->n;
    return st;
}

s2_status s2_blas_gemm_algo(s2_blas *b, s2_dtype dt, const char *what, int ta, int tb, int M,
                            int N, int K, float alpha, const void *A, int lda, const void *B,
                            int ldb, float beta, void *C, int ldc, int c_f32, int algo,
                            s2_error *err)
{
    if (algo <= 0 || M == 0 || N == 0 || K == 0)
        return s2_blas_gemm(b, dt, what, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
                            c_f32, err);
    lt_problem *p;
    s2_status st = lt_problem_of(b, dt, ta, tb, M, N, K, A, lda, B, ldb, C, ldc, c_f32, &p, err);
    if (st)
        return st;
    if (algo > p->n) { /* a tuning entry from another cuBLAS: not trusted, said once */
        if (!p->warned)
            fprintf(stderr, "s2lora: warning: %s (M=%d N=%d K=%d): the tuned cuBLASLt algorithm "
                            "%d is not offered here (%d are); cuBLAS's own choice is used\n",
                    what, M, N, K, algo, p->n);
        p->warned = 1;
        return s2_blas_gemm(b, dt, what, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
                            c_f32, err);
    }
    if (!b->workspace)
        st = s2_rt_check(cudaMalloc(&b->workspace, LT_WORKSPACE), "cuBLASLt workspace", err);
    if (st)
        return st;
    cublasStatus_t s = b->matmul(b->lt, p->desc, &alpha, B, p->a, A, p->b, &beta, C, p->c, C,
                                 p->c, &p->res[algo - 1].algo, b->workspace, LT_WORKSPACE,
                                 b->stream);
    if (s != CUBLAS_STATUS_SUCCESS)
        return s2_error_set(err, S2_ERR_CUDA, "cuBLASLt GEMM (%s, M=%d N=%d K=%d, algorithm %d): "
                            "%s", what, M, N, K, algo, b->status_string(s));
    return s2_rt_check(cudaGetLastError(), what, err);
}

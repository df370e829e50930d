/* blas.c — cuBLAS loaded at run time, row-major GEMMs (see blas.h). */
#include "blas.h"

#include <cublas_api.h>
#include <dlfcn.h>
#include <stdlib.h>

#include "rt.h"

typedef cublasStatus_t (*create_fn)(cublasHandle_t *);
typedef cublasStatus_t (*destroy_fn)(cublasHandle_t);
typedef cublasStatus_t (*set_stream_fn)(cublasHandle_t, cudaStream_t);
typedef const char *(*status_string_fn)(cublasStatus_t);
typedef cublasStatus_t (*gemm_ex_fn)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int,
                                     int, int, const void *, const void *, cudaDataType, int,
                                     const void *, cudaDataType, int, const void *, void *,
                                     cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);

struct s2_blas {
    void *lib;
    cublasHandle_t h;
    create_fn create;
    destroy_fn destroy;
    set_stream_fn set_stream;
    status_string_fn status_string;
    gemm_ex_fn gemm;
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
    if (missing) {
        dlclose(b->lib);
        free(b);
        return s2_error_set(err, S2_ERR_CUDA, "libcublas.so.13 lacks an entry point s2lora needs");
    }
    cublasStatus_t s = b->create(&b->h);
    if (s != CUBLAS_STATUS_SUCCESS) {
        s2_status st = s2_error_set(err, S2_ERR_CUDA, "cublasCreate: %s", b->status_string(s));
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
    if (b->h)
        b->destroy(b->h);
    dlclose(b->lib);
    free(b);
}

s2_status s2_blas_stream(s2_blas *b, cudaStream_t stream, s2_error *err)
{
    cublasStatus_t s = b->set_stream(b->h, stream);
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

/*
 * blas.h — the one cuBLAS of a process: libcublas.so.13 loaded at run time (dlopen), so a binary
 * that never runs a GEMM does not need it and says so clearly when it is missing; one handle per
 * context, created once and reused (cuBLAS sizes its own workspace on first use).
 *
 * Products are written row-major, the way the rest of s2lora stores matrices:
 *   C [M, N] = alpha op(A) op(B) + beta C,  op(A) [M, K], op(B) [K, N]
 * with leading dimensions that are row strides (in elements). A row-major product is the
 * column-major C^T = op(B)^T op(A)^T, which cuBLAS computes directly — no copy, no transpose.
 * A and B are the storage dtype (bf16 or fp16); C is the storage dtype or fp32 (gradients of
 * trainable tensors accumulate in fp32 with beta = 1). Compute is always fp32.
 *
 * Algorithms: s2_blas_gemm lets cublasGemmEx choose. s2_blas_gemm_algo can instead run
 * algorithm k of the list cuBLASLt's heuristic gives for the same problem (its best guess
 * first, at most S2_BLAS_MAX_ALGOS), so a tuner can time them (s2lora tune --kernels lora).
 * libcublasLt.so.13 is loaded with cuBLAS; its descriptors and heuristic list are made once
 * per distinct problem (shape, transposes, leading dimensions, dtypes, pointer alignment) and
 * reused; one 32 MiB workspace is allocated on first use.
 *
 * Determinism: the same product with the same algorithm on the same GPU gives the same bits
 * run to run. cuBLAS guarantees it for a fixed toolkit, architecture and SM count while one
 * stream uses a handle (its internal workspace is then not shared between concurrent streams):
 * each s2_blas is one handle with its own cuBLASLt workspace, and the LoRA backward's second
 * stream has an s2_blas of its own (lora.c). The handle's atomics mode is pinned to
 * CUBLAS_ATOMICS_NOT_ALLOWED (the default). cublasGemmEx's choice is a heuristic of the shape
 * and the GPU, the same every run. cuBLASLt's algorithms may split K, but every reduction
 * scheme it has (cublasLtReductionScheme_t: none; in place, ordered by counters; a separate
 * reduction in the compute or output type) sums the splits in a fixed order, so a tuned
 * algorithm (s2lora tune --kernels lora) is deterministic too; which one runs depends on the
 * tuning database, so a run is reproduced with the same database.
 */
#ifndef S2_BLAS_H
#define S2_BLAS_H

#include <cuda_runtime_api.h>

#include "gen/spec.h"

typedef struct s2_blas s2_blas;

/* Loads cuBLAS and creates a handle on the current device. */
s2_status s2_blas_open(s2_blas **out, s2_error *err);
void s2_blas_close(s2_blas *b);

/* Every following product runs on stream. */
s2_status s2_blas_stream(s2_blas *b, cudaStream_t stream, s2_error *err);

/*
 * Row-major C = alpha op(A) op(B) + beta C (see above). ta/tb: 1 = transposed (A stored
 * [K, M], B stored [N, K]). c_f32: 1 when C is fp32. what names the product in errors, which
 * also give M, N and K.
 */
s2_status s2_blas_gemm(s2_blas *b, s2_dtype dt, const char *what, int ta, int tb, int M, int N,
                       int K, float alpha, const void *A, int lda, const void *B, int ldb,
                       float beta, void *C, int ldc, int c_f32, s2_error *err);

#define S2_BLAS_MAX_ALGOS 8

/* How many algorithms (0..S2_BLAS_MAX_ALGOS) cuBLASLt's heuristic offers for the product
 * s2_blas_gemm would run with these arguments (the pointers count only by their alignment). */
s2_status s2_blas_algos(s2_blas *b, s2_dtype dt, int ta, int tb, int M, int N, int K,
                        const void *A, int lda, const void *B, int ldb, const void *C, int ldc,
                        int c_f32, int *n, s2_error *err);

/* s2_blas_gemm with algorithm: 0 = cublasGemmEx's own choice (s2_blas_gemm); k >= 1 = entry
 * k - 1 of s2_blas_algos' list through cuBLASLt. A k beyond the list (a tuning entry made with
 * another cuBLAS) runs cuBLAS's own choice, with a warning on stderr once per problem. */
s2_status s2_blas_gemm_algo(s2_blas *b, s2_dtype dt, const char *what, int ta, int tb, int M,
                            int N, int K, float alpha, const void *A, int lda, const void *B,
                            int ldb, float beta, void *C, int ldc, int c_f32, int algo,
                            s2_error *err);

#endif

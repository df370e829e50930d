/*
 * lora.h — LoRA linears on the GPU: y = x W^T + s (x A^T) B^T for a group of projections that
 * read the same x (q, k, v; or gate, up; or one alone), and the backward dx, dA, dB (W is
 * frozen: no dW). PEFT's shapes and scale (s = alpha / r).
 *
 * The fusion is in the layout, so every product but one is a single cuBLAS GEMM and no pass is
 * spent on stitching: x lives in an augmented buffer whose extra columns receive the low-rank
 * activations u = s x A^T, dy in one whose extra columns receive s v = s dy B, and the frozen
 * W carries the adapters as an extra border, B as columns and A as rows:
 *
 *   xa  [M, in + rp]                 x in columns [0, in); u = s x A^T in [in, in + rp)
 *   dya [M, out_total + rp]          dy in columns [0, out_total); s v in the rest
 *   wc  [out_total + rp, in + rp]    rows [0, out_total): the projections' W | their B
 *                                    block-diagonal (projection i's B [out_i, r] at columns
 *                                    in + i*r); rows [out_total, +rp): the stacked A | 0
 *
 * (rp = n_proj * r rounded up to 16 by s2_lora_rp, so rows stay 32-byte aligned; the pad rows
 * and columns of wc and B's off-diagonal blocks are zero.) Then
 *   forward:  u = s x A^T              (GEMM, N = rp: one read of x, at 78 % of DRAM peak;
 *                                     a generated pass over x measured no faster:
 *                                     bench/RESULTS.md, 2026-11-26 session 5)
 *             y = xa wc[:out_total]^T  (GEMM, K = in + rp: the base product plus the adapters)
 *   backward: s v = s dy B, dB = dy^T u (one generated pass over dy, templates/lora.cuh, for
 *                                     the ranks s2_lora_vdb_ok() takes, when in and every out
 *                                     are multiples of 8; otherwise a GEMM for v and one per
 *                                     projection for dB's diagonal blocks)
 *             dx = dya wc[:, :in]      (GEMM, K = out_total + rp: dy W + s v A at once)
 *             dA = (s v)^T x           (GEMM over M: one read of x; beside dx, below)
 * Beyond the base GEMMs this reads x twice (u, dA) and dy once, and writes nothing of size
 * M x in or M x out: the temporaries are v's fp32 partials of the pass's column slabs
 * [slabs, M, r] and the dB partials of its row ranges (s2_lora_workspace_bytes), both summed in
 * a fixed order, so the backward gives the same bits run to run (no atomics; the second
 * stream's dA and dB write outputs of their own). Whoever writes x writes it into xa, whoever
 * writes dy writes it into dya, and whoever owns W keeps it, with A and B, in wc.
 *
 * Why this way (bench/RESULTS.md): the earlier layout formed [dx | v] = dy [W | B], then
 * dx += s v A, a rank-r update that reads and writes dx once more (0.12 ms of the 4096-wide
 * linear's 1.5 ms forward+backward at 16k tokens, H200), and read dy a second time for dB.
 * Forming s v first lets the one dx GEMM take the low-rank term through K, and the pass that
 * forms v also forms dB from the same read of dy. Once s v is formed, dA (a read of x, memory-
 * bound) and the pass's dB sums run on a second stream of the context, at the device's greatest
 * stream priority, beside the dx GEMM (compute-bound) on the caller's stream, which waits for
 * them before s2_lora_backward returns: their blocks take SMs as the GEMM's waves free them
 * instead of running after it (H100, 16384 x 4096: f+b overhead 0.214-0.227 -> 0.193 ms; at the
 * default priority no gain). Splitting the forward into row chunks, u of the next beside y of
 * this one, won at some shapes and lost at others (bench/RESULTS.md, 2026-11-26 session 9).
 *
 * Dropout (PEFT's: on the adapter's input only, an independent mask per projection): the mask
 * is templates/philox.cuh's, stream = layer * 8 + projection, element m * in + k of x, so the
 * backward regenerates it. Per projection i the forward forms drop_i(x) in a workspace
 * [M, in] (the one M x K temporary, only with dropout) and u_i = s drop_i(x) A_i^T; the
 * backward forms dx = dy W alone, recomputes drop_i(x) for dA_i = (s v_i)^T drop_i(x), then
 * reuses the workspace for s v_i A_i, added to dx under the mask. The elementwise kernels are
 * generated (templates/lora.cuh) and built through the NVRTC cache.
 *
 * cuBLAS is loaded at run time (blas.h), so binaries that never run a LoRA linear do not need
 * it; s2_lora_open() says so clearly when it is missing.
 */
#ifndef S2_LORA_H
#define S2_LORA_H

#include <cuda_runtime_api.h>

#include "gen/lora_plan.h"
#include "runtime/core/blas.h"
#include "runtime/core/rt.h"

typedef struct s2_lora_ctx s2_lora_ctx;

/* The cuBLAS products of a group without dropout (the list above), by name, so each can run
 * with its own cuBLAS algorithm (s2lora tune --kernels lora times them): u = s x A^T,
 * y = xa wc^T, dx = dya wc, dA = (s v)^T x, and, only for ranks without the generated pass,
 * s v = s dy B and dB_i = dy_i^T u_i (every projection). With dropout the per-projection
 * products take cuBLAS's default. */
typedef enum s2_lora_gemm {
    S2_LG_U,
    S2_LG_Y,
    S2_LG_DX,
    S2_LG_DA,
    S2_LG_V,
    S2_LG_DB,
    S2_LG_COUNT
} s2_lora_gemm;

/* "u", "y", "dx", "da", "v", "db". */
const char *s2_lora_gemm_name(s2_lora_gemm g);
/* The tuning database's kernel name of product g ("lora_y", "lora_db_f32", ...): the tuner
 * stores under it and the database checks imported lines against it. */
void s2_tune_lora_kernel_name(s2_lora_gemm g, int grad_f32, char *buf, size_t n);

typedef struct s2_lora_dims {
    int M;          /* tokens */
    int in;         /* input width */
    int n_proj;     /* projections in the group: 1..3 */
    int out[3];     /* each projection's out */
    int out_total;  /* sum of out */
    int r;          /* rank */
    int rp;         /* n_proj * r rounded up to a multiple of 16 (s2_lora_rp) */
    float scale;    /* alpha / r */
    s2_dtype dtype;
    float dropout;  /* p in [0, 1) */
    unsigned long long seed;
    unsigned stream[3]; /* each projection's mask stream: layer * 8 + s2_proj */
    /* dA and dB: 0 (what s2_lora_dims_of sets) = the storage dtype, overwritten; 1 = fp32,
     * C = grad_beta C + the product (the trainer accumulates over layers' micro-batches with
     * grad_beta 1 into zeroed gradients). */
    int grad_f32;
    float grad_beta;
    /* each product's algorithm (s2_blas_gemm_algo): 0 (what s2_lora_dims_of sets) = cuBLAS's
     * own choice, k >= 1 = cuBLASLt's heuristic entry k - 1 for that product */
    unsigned char algo[S2_LG_COUNT];
} s2_lora_dims;

/* Dimensions of group g of layer `layer` of a plan for M tokens, dropout seed `seed`. */
s2_status s2_lora_dims_of(const s2_lora_plan *plan, int g, int layer, int M,
                          unsigned long long seed, s2_lora_dims *d, s2_error *err);

/* Bytes of device workspace forward and backward need: v's and dB's partials of the
 * generated pass (ranks it takes), and drop_i(x) with dropout. */
size_t s2_lora_workspace_bytes(const s2_lora_dims *d);

/* Loads cuBLAS and creates the handle (once; reuse the context) for rt's device; the dropout
 * kernels are built on first use through the kernel cache in cache_dir (NULL: the default). */
s2_status s2_lora_open(s2_lora_ctx **ctx, const s2_rt *rt, const char *cache_dir, s2_error *err);
void s2_lora_close(s2_lora_ctx *ctx);

/* The context's cuBLAS, for the other products of whoever drives the linears (the trainer). */
s2_blas *s2_lora_blas(s2_lora_ctx *ctx);

/* Forward: writes u into xa's extra columns and y [M, out_total]. ws: workspace bytes. */
s2_status s2_lora_forward(s2_lora_ctx *ctx, const s2_lora_dims *d, void *xa, const void *wc,
                          void *y, void *ws, cudaStream_t stream, s2_error *err);

/* The frozen base product alone, y [M, out_total] = x W^T, on packed operands (x [M, in],
 * W [out_total, in]): what a linear without LoRA runs, what LoRA is measured against. */
s2_status s2_lora_base_forward(s2_lora_ctx *ctx, const s2_lora_dims *d, const void *x,
                               const void *w, void *y, cudaStream_t stream, s2_error *err);

/* Backward from dy in dya [M, out_total + rp] (its extra columns receive s v): dxv
 * [M, in + rp] (dx in [0, in); the extra columns are left alone), da [rp, in], db
 * [out_total, rp] (dtype or fp32: d->grad_f32). xa must hold the forward's u. Only the
 * diagonal blocks of db (projection i's rows, columns i*r .. i*r+r) are written: the rest is
 * not a parameter and keeps whatever it held (zeros, for an optimizer's gradient buffer). */
s2_status s2_lora_backward(s2_lora_ctx *ctx, const s2_lora_dims *d, const void *xa,
                           const void *wc, void *dya, void *dxv, void *da, void *db, void *ws,
                           cudaStream_t stream, s2_error *err);

/* The device buffers of one group's products (as forward and backward take them). */
typedef struct s2_lora_bufs {
    void *xa;
    const void *wc;
    void *y, *dya, *dxv, *da, *db;
} s2_lora_bufs;

/* Product g alone with algorithm algo (0: cuBLAS's choice), on the context's current stream:
 * what the tuner times. Its inputs must hold what the forward or backward would have there. */
s2_status s2_lora_gemm_run(s2_lora_ctx *ctx, const s2_lora_dims *d, s2_lora_gemm g, int algo,
                           const s2_lora_bufs *b, s2_error *err);

/* How many cuBLASLt algorithms product g can take (the fewest over dB's projections); 0 when
 * g is not a cuBLAS product for d's rank (v and dB of the generated pass). */
s2_status s2_lora_gemm_algos(s2_lora_ctx *ctx, const s2_lora_dims *d, s2_lora_gemm g,
                             const s2_lora_bufs *b, int *n, s2_error *err);

/* The frozen base backward alone, dx [M, in] = dy W (no dW), on packed operands (dy
 * [M, out_total], W [out_total, in]). */
s2_status s2_lora_base_backward(s2_lora_ctx *ctx, const s2_lora_dims *d, const void *w,
                                const void *dy, void *dx, cudaStream_t stream, s2_error *err);

#endif

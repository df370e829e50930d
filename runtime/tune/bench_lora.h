/*
 * bench_lora.h — timing of the LoRA linears against the frozen base GEMM.
 *
 * One case is (M tokens, in = out = dim, rank r), one projection, no dropout. Base: y = x W^T
 * forward and dx = dy W backward (W frozen, so no dW), on packed buffers of its own, as a
 * linear without LoRA runs. Ours: s2_lora_forward / s2_lora_backward (lora.h) on their layout.
 * Inputs are random (a block of N(0,1) values repeated over each buffer: never zeros), outputs
 * poisoned before the first run; times are CUDA-event medians after warm-up, the four
 * measurements interleaved run by run (base forward, ours, base forward+backward, ours), so a
 * drift of the GPU's clock over the case moves base and ours alike.
 */
#ifndef S2_BENCH_LORA_H
#define S2_BENCH_LORA_H

#include "runtime/ops/lora.h"

typedef struct s2_bench_lora_row {
    int M, dim, r;
    double base_fwd_ms, lora_fwd_ms; /* medians */
    double base_fb_ms, lora_fb_ms;   /* forward then backward, one timed region */
    int failed;
    int tuned;      /* products that ran a tuned cuBLAS algorithm (s2lora tune --kernels lora) */
    char note[256];
} s2_bench_lora_row;

/* Overhead of ours over the base, in percent. */
static inline double s2_bench_lora_overhead(double base, double ours)
{
    return base > 0 ? 100.0 * (ours - base) / base : 0.0;
}

/* Times one case on the current device (dtype: the storage type). tuned (may be NULL): the
 * tuning database's algorithms for this shape on this device, when it has them. */
s2_status s2_bench_lora_case(s2_lora_ctx *ctx, s2_dtype dtype, int M, int dim, int r, int warmup,
                             int reps, const s2_lora_dims *tuned, s2_bench_lora_row *row,
                             s2_error *err);

/* The dims of a case (one projection, in = out = dim, scale 16 / r, dtype gradients). */
s2_lora_dims s2_bench_lora_dims(s2_dtype dtype, int M, int dim, int r);

#endif

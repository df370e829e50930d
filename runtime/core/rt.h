/*
 * rt.h — the device side: open a GPU, build (NVRTC + cache) and load the
 * spec's kernels with the runtime API's library calls (cudaLibraryLoadData /
 * cudaLibraryGetKernel), and launch them. Every CUDA call is checked; a
 * failure names the call, the kernel and CUDA's message.
 *
 * With no GPU or no driver, s2_rt_open() returns S2_ERR_NO_DEVICE and nothing
 * else here is reached: the binary links the static CUDA runtime, so it starts
 * on machines without a driver.
 */
#ifndef S2_RT_H
#define S2_RT_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "gen/plan.h"
#include "runtime/core/jit.h"

typedef struct s2_rt {
    int device;
    char name[256];      /* "NVIDIA H100 80GB HBM3" */
    int cc_major, cc_minor;
    char arch[16];       /* what NVRTC builds for it: "sm_90a" on Hopper, else "sm_XY" */
    int sm_count;
    /* Where the kernel cache's warnings go (s2_jit_result.warning: an entry was in place but
     * not used, so it was rebuilt) when s2_attn_load*, s2_train_kern_load or a LoRA unit load
     * builds through it: called once per such entry with the one-line report, arg as given.
     * The caller sets it after s2_rt_open (which clears it) to show them; library code never
     * prints. */
    void (*cache_warn)(void *arg, const char *msg);
    void *cache_warn_arg;
} s2_rt;

/* Opens device `device` (usually 0). S2_ERR_NO_DEVICE when there is none or no driver. */
s2_status s2_rt_open(s2_rt *rt, int device, s2_error *err);

/* Passes res's kernel-cache warning, if it has one, to rt's cache_warn, if set. */
void s2_rt_cache_warn(const s2_rt *rt, const s2_jit_result *res);

/* Checks a CUDA call: on failure sets err with what and CUDA's message, returns S2_ERR_CUDA. */
s2_status s2_rt_check(cudaError_t e, const char *what, s2_error *err);

/* One unit of device work to time: enqueues it on the default stream. */
typedef s2_status (*s2_rt_work)(void *ctx, s2_error *err);

/*
 * Runs fn warmup times untimed, then reps times, each timed between CUDA events; *ms is the
 * median. Without flush the timed runs are back to back (run i between events i and i+1).
 * With flush (a device buffer of flush_bytes, at least twice the L2), the buffer is rewritten
 * before every timed run, outside its events, so inputs small enough for L2 are not served
 * from it.
 */
s2_status s2_rt_time_median(s2_rt_work fn, void *ctx, int warmup, int reps, void *flush,
                            size_t flush_bytes, double *ms, s2_error *err);

/*
 * The same for n works timed in turn, run by run (round i runs fn[0], ..., fn[n-1], each between
 * its own pair of events): ms[w] is fn[w]'s median. A drift of the GPU's clock over the
 * measurement then moves every work alike, which matters when their times are compared.
 */
s2_status s2_rt_time_medians(const s2_rt_work *fn, int n, void *ctx, int warmup, int reps,
                             double *ms, s2_error *err);

/* The median of n values (n >= 1); t is reordered. */
double s2_rt_median(double *t, int n);

/* Fills n halves (dtype dt) of dev with copies of one random block of N(0, scale^2) values
 * (4 Mi elements at most, drawn from *state): random operands for timing, never zeros. */
s2_status s2_rt_fill_normal(void *dev, size_t n, float scale, s2_dtype dt, uint64_t *state,
                            s2_error *err);

/*
 * Builds (NVRTC, through the cache) the attention units of spec for arch
 * (plan filled too): out[S2_UNIT_ATTN_COUNT]. Needs no GPU.
 */
s2_status s2_attn_build(const s2_spec *spec, const s2_attn_tile *tile, const s2_jit_opts *jo,
                        s2_attn_plan *plan, s2_jit_result *out, s2_error *err);

/* The same for the sequence-parallel window units of spec (s2_plan_window: split mode, tiles
 * on the window's edges; see s2_attn_window in gen/plan.h). */
s2_status s2_attn_build_window(const s2_spec *spec, const s2_attn_tile *tile,
                               const s2_jit_opts *jo, s2_attn_plan *plan, s2_jit_result *out,
                               s2_error *err);

/*
 * Every unit of spec (the attention units, then the trainer's: S2_EMIT_UNITS results in out),
 * built in parallel; what `s2lora build` does. Needs no GPU.
 */
s2_status s2_spec_build(const s2_spec *spec, const s2_attn_tile *tile, const s2_jit_opts *jo,
                        s2_attn_plan *plan, s2_jit_result *out, s2_error *err);

/* Loaded S²-Attn kernels of one spec on one device. */
typedef struct s2_attn {
    s2_attn_plan plan;
    cudaLibrary_t lib[S2_UNIT_ATTN_COUNT];
    cudaKernel_t fwd, pre, dq, dkdv, dq_convert;
    double build_ms[S2_UNIT_ATTN_COUNT];
    int cache_hit[S2_UNIT_ATTN_COUNT];
    /* The driver's cuTensorMapEncodeTiled (through cudaGetDriverEntryPointByVersion: no link
     * to the driver library), looked up at load when a kernel takes tensor maps (fwd_tma,
     * bwd_tma); the maps themselves are made at every launch, for its pointers and token count. */
    void *tma_encode;
    int sm_count; /* the device's SMs: the persistent forward's (fwd_persist) blocks at most */
} s2_attn;

/* Builds for rt->arch (jo->arch is ignored) and loads. s2_attn_free() undoes it. */
s2_status s2_attn_load(s2_attn *a, const s2_rt *rt, const s2_spec *spec, const s2_attn_tile *tile,
                       const s2_jit_opts *jo, s2_error *err);
void s2_attn_free(s2_attn *a);

/* The window units of spec (s2_attn_build_window), loaded: they run only through
 * s2_attn_forward_window and s2_attn_backward_window, and those take no other units. */
s2_status s2_attn_load_window(s2_attn *a, const s2_rt *rt, const s2_spec *spec,
                              const s2_attn_tile *tile, const s2_jit_opts *jo, s2_error *err);

/* One packed batch: B sequences, T tokens, boundaries on the device. */
typedef struct s2_attn_batch {
    int T, B;
    int max_seqlen;
    const int32_t *d_cu_seqlens; /* device [B+1] */
} s2_attn_batch;

/*
 * Validates host cu_seqlens ([B+1]: starts at 0, nondecreasing, ends at T) and
 * fills T, B and max_seqlen (d_cu_seqlens is left to the caller). what names the
 * tensor in messages.
 */
s2_status s2_attn_batch_init(s2_attn_batch *bt, const int32_t *cu_seqlens, int B, int T,
                             const char *what, s2_error *err);

/* Forward. q [T,H,d], k/v [T,Hkv,d], o [T,H,d] in the spec's dtype; lse [H,T] fp32. */
s2_status s2_attn_forward(const s2_attn *a, const s2_attn_batch *bt, const void *q, const void *k,
                          const void *v, void *o, float *lse, cudaStream_t stream, s2_error *err);

/*
 * Bytes of device workspace the backward needs for T tokens: delta [H,T] fp32 and, with the
 * atomic-dQ tile, the dQ accumulator [T,H,d] fp32 (with the ordered dQ, bwd_atomic_dq 2, also
 * its turn counters [H,T] u32 and one ticket). Nothing else is allocated anywhere.
 */
size_t s2_attn_workspace_bytes(const s2_attn *a, int T);

/* Backward. ws: s2_attn_workspace_bytes() of device memory (contents need not be set);
 * dq [T,H,d], dk/dv [T,Hkv,d]. */
s2_status s2_attn_backward(const s2_attn *a, const s2_attn_batch *bt, const void *q,
                           const void *k, const void *v, const void *o, const float *lse,
                           const void *dout, void *ws, void *dq, void *dk, void *dv,
                           cudaStream_t stream, s2_error *err);

/*
 * One sequence-parallel window (gen/plan.h s2_attn_window) of one sequence, with the window
 * units: q, o, dout, dq [qhi - qlo, H, d] (positions qlo ...), lse [H, qhi - qlo]; k, v, dk, dv
 * [qhi - klo, Hkv, d] (positions klo ...: the halo rows, then the window's own). dk and dv hold
 * the contributions of the window's queries only (the halo rows' go back to their owners, who
 * add them to theirs). ws: s2_attn_workspace_bytes(a, qhi - qlo). The arguments are checked
 * (s2_plan_check_window) before anything is launched; S2_ERR_INVALID names the one at fault.
 */
s2_status s2_attn_forward_window(const s2_attn *a, const s2_attn_window *w, const void *q,
                                 const void *k, const void *v, void *o, float *lse,
                                 cudaStream_t stream, s2_error *err);
s2_status s2_attn_backward_window(const s2_attn *a, const s2_attn_window *w, const void *q,
                                  const void *k, const void *v, const void *o, const float *lse,
                                  const void *dout, void *ws, void *dq, void *dk, void *dv,
                                  cudaStream_t stream, s2_error *err);

#endif

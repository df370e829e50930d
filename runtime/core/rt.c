/* rt.c — device, module loading and launches of the S²-Attn kernels. */
#include "runtime/core/rt.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda.h> /* CUtensorMap and its enums only: the driver is reached through the runtime */

#include "gen/emit.h"
#include "runtime/core/st.h"

s2_status s2_rt_check(cudaError_t e, const char *what, s2_error *err)
{
    if (e == cudaSuccess)
        return S2_OK;
    return s2_error_set(err, S2_ERR_CUDA, "%s: %s (%s)", what, cudaGetErrorString(e),
                        cudaGetErrorName(e));
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double s2_rt_median(double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/* n_ev events and reps times for a measurement; *created says how many events to destroy. */
static s2_status timing_alloc(int n_ev, int reps, cudaEvent_t **ev, double **t, int *created,
                              s2_error *err)
{
    *ev = calloc((size_t)n_ev, sizeof **ev);
    *t = calloc((size_t)reps, sizeof **t);
    *created = 0;
    s2_status st = *ev && *t && reps > 0
                       ? S2_OK
                       : s2_error_set(err, S2_ERR_NOMEM, "out of memory for events");
    while (!st && *created < n_ev) {
        st = s2_rt_check(cudaEventCreate(&(*ev)[*created]), "cudaEventCreate", err);
        *created += !st;
    }
    return st;
}

static void timing_free(cudaEvent_t *ev, double *t, int created)
{
    for (int i = 0; i < created; i++)
        cudaEventDestroy(ev[i]);
    free(ev);
    free(t);
}

s2_status s2_rt_time_median(s2_rt_work fn, void *ctx, int warmup, int reps, void *flush,
                            size_t flush_bytes, double *ms, s2_error *err)
{
    const int n_ev = flush ? 2 * reps : reps + 1;
    cudaEvent_t *ev;
    double *t;
    int created;
    s2_status st = timing_alloc(n_ev, reps, &ev, &t, &created, err);
    for (int i = 0; !st && i < warmup; i++)
        st = fn(ctx, err);
    for (int i = 0; !st && i < reps; i++) {
        cudaEvent_t start = flush ? ev[2 * i] : ev[i], stop = flush ? ev[2 * i + 1] : ev[i + 1];
        if (flush)
            st = s2_rt_check(cudaMemsetAsync(flush, i & 0xff, flush_bytes, 0), "flushing L2", err);
        if (!st && (flush || i == 0))
            st = s2_rt_check(cudaEventRecord(start, 0), "cudaEventRecord", err);
        if (!st)
            st = fn(ctx, err);
        if (!st)
            st = s2_rt_check(cudaEventRecord(stop, 0), "cudaEventRecord", err);
    }
    if (!st)
        st = s2_rt_check(cudaEventSynchronize(ev[n_ev - 1]), "running the timed work", err);
    for (int i = 0; !st && i < reps; i++) {
        float e = 0;
        cudaEvent_t start = flush ? ev[2 * i] : ev[i], stop = flush ? ev[2 * i + 1] : ev[i + 1];
        st = s2_rt_check(cudaEventElapsedTime(&e, start, stop), "cudaEventElapsedTime", err);
        t[i] = e;
    }
    if (!st)
        *ms = s2_rt_median(t, reps);
    timing_free(ev, t, created);
    return st;
}

s2_status s2_rt_time_medians(const s2_rt_work *fn, int n, void *ctx, int warmup, int reps,
                             double *ms, s2_error *err)
{
    const int n_ev = 2 * n * reps;
    cudaEvent_t *ev;
    double *t;
    int created;
    s2_status st = timing_alloc(n_ev, reps, &ev, &t, &created, err);
    for (int i = 0; !st && i < warmup; i++)
        for (int w = 0; !st && w < n; w++)
            st = fn[w](ctx, err);
    for (int i = 0; !st && i < reps; i++)
        for (int w = 0; !st && w < n; w++) {
            cudaEvent_t *e = ev + 2 * ((size_t)i * n + w);
            st = s2_rt_check(cudaEventRecord(e[0], 0), "cudaEventRecord", err);
            if (!st)
                st = fn[w](ctx, err);
            if (!st)
                st = s2_rt_check(cudaEventRecord(e[1], 0), "cudaEventRecord", err);
        }
    if (!st)
        st = s2_rt_check(cudaEventSynchronize(ev[n_ev - 1]), "running the timed work", err);
    for (int w = 0; !st && w < n; w++) {
        for (int i = 0; !st && i < reps; i++) {
            float e = 0;
            const cudaEvent_t *p = ev + 2 * ((size_t)i * n + w);
            st = s2_rt_check(cudaEventElapsedTime(&e, p[0], p[1]), "cudaEventElapsedTime", err);
            t[i] = e;
        }
        if (!st)
            ms[w] = s2_rt_median(t, reps);
    }
    timing_free(ev, t, created);
    return st;
}

void s2_rt_cache_warn(const s2_rt *rt, const s2_jit_result *res)
{
    if (rt && rt->cache_warn && res->warning[0])
        rt->cache_warn(rt->cache_warn_arg, res->warning);
}

s2_status s2_rt_open(s2_rt *rt, int device, s2_error *err)
{
    memset(rt, 0, sizeof *rt);
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver || (e == cudaSuccess && count == 0))
        return s2_error_set(err, S2_ERR_NO_DEVICE, "no CUDA device (%s)",
                            e == cudaSuccess ? "none found" : cudaGetErrorString(e));
    if (e != cudaSuccess) {
        cudaGetLastError();
        return s2_error_set(err, S2_ERR_NO_DEVICE, "no usable CUDA device: %s",
                            cudaGetErrorString(e));
    }
    if (device < 0 || device >= count)
        return s2_error_set(err, S2_ERR_INVALID, "device %d: valid 0..%d", device, count - 1);
    struct cudaDeviceProp prop;
    s2_status st = s2_rt_check(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties", err);
    if (!st)
        st = s2_rt_check(cudaSetDevice(device), "cudaSetDevice", err);
    if (st)
        return st;
    rt->device = device;
    snprintf(rt->name, sizeof rt->name, "%s", prop.name);
    rt->cc_major = prop.major;
    rt->cc_minor = prop.minor;
    rt->sm_count = prop.multiProcessorCount;
    /* Hopper builds for sm_90a: the arch-specific target is what later wgmma kernels need. */
    snprintf(rt->arch, sizeof rt->arch, "sm_%d%d%s", prop.major, prop.minor,
             prop.major == 9 && prop.minor == 0 ? "a" : "");
    if (!s2_jit_arch_valid(rt->arch))
        return s2_error_set(err, S2_ERR_NO_DEVICE,
                            "%s (compute capability %d.%d): no supported target; s2lora builds for "
                            "sm_80, sm_86, sm_89, sm_90 and sm_90a", rt->name, prop.major,
                            prop.minor);
    return S2_OK;
}

/* The attention units (with window, the sequence-parallel window's), and with train the
 * trainer's unit after them, in one parallel build. */
static s2_status build_units(const s2_spec *spec, const s2_attn_tile *tile, const s2_jit_opts *jo,
                             int train, int window, s2_attn_plan *plan, s2_jit_result *out,
                             s2_error *err)
{
    s2_status st = s2_plan_attn(spec, jo->arch, tile, plan, err);
    if (!st && window)
        st = s2_plan_window(spec, plan, err);
    if (st)
        return st;
    const int n = S2_UNIT_ATTN_COUNT + (train ? 1 : 0);
    char *src[S2_EMIT_UNITS] = {0};
    s2_jit_src units[S2_EMIT_UNITS];
    char names[S2_EMIT_UNITS][S2_SPEC_NAME_MAX + 32];
    for (int u = 0; u < n && !st; u++) {
        if (u < S2_UNIT_ATTN_COUNT) {
            st = s2_emit_attn(spec, plan, (s2_attn_unit)u, &src[u], err);
            snprintf(names[u], sizeof names[u], "%s/%s%s", spec->name, s2_attn_unit_name(u),
                     window ? " (window)" : "");
        } else {
            st = s2_emit_train(spec, &src[u], err);
            snprintf(names[u], sizeof names[u], "%s/train", spec->name);
        }
        units[u] = (s2_jit_src){.unit = names[u], .source = src[u]};
        if (u < S2_UNIT_ATTN_COUNT) /* the kernels s2_attn_load looks up */
            units[u].n_kernels = s2_attn_unit_kernels((s2_attn_unit)u, &units[u].kernels);
    }
    if (!st)
        st = s2_jit_build(units, n, jo, out, err);
    for (int u = 0; u < n; u++)
        free(src[u]);
    return st;
}

s2_status s2_attn_build(const s2_spec *spec, const s2_attn_tile *tile, const s2_jit_opts *jo,
                        s2_attn_plan *plan, s2_jit_result *out, s2_error *err)
{
    return build_units(spec, tile, jo, 0, 0, plan, out, err);
}

s2_status s2_attn_build_window(const s2_spec *spec, const s2_attn_tile *tile,
                               const s2_jit_opts *jo, s2_attn_plan *plan, s2_jit_result *out,
                               s2_error *err)
{
    return build_units(spec, tile, jo, 0, 1, plan, out, err);
}

s2_status s2_spec_build(const s2_spec *spec, const s2_attn_tile *tile, const s2_jit_opts *jo,
                        s2_attn_plan *plan, s2_jit_result *out, s2_error *err)
{
    return build_units(spec, tile, jo, 1, 0, plan, out, err);
}

static s2_status get_kernel(cudaKernel_t *k, cudaLibrary_t lib, const char *name, s2_error *err)
{
    char what[160];
    snprintf(what, sizeof what, "cudaLibraryGetKernel(%s)", name);
    return s2_rt_check(cudaLibraryGetKernel(k, lib, name), what, err);
}

static s2_status load_units(s2_attn *a, const s2_rt *rt, const s2_spec *spec,
                            const s2_attn_tile *tile, const s2_jit_opts *jo, int window,
                            s2_error *err)
{
    memset(a, 0, sizeof *a);
    a->sm_count = rt->sm_count;
    s2_jit_opts o = *jo;
    o.arch = rt->arch;
    s2_jit_result res[S2_UNIT_ATTN_COUNT];
    memset(res, 0, sizeof res);
    s2_status st = build_units(spec, tile, &o, 0, window, &a->plan, res, err);
    if (st)
        return st;
    for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++) /* a rebuilt entry is told even if loads fail */
        s2_rt_cache_warn(rt, &res[u]);
    for (int u = 0; u < S2_UNIT_ATTN_COUNT && !st; u++) {
        a->build_ms[u] = res[u].ms;
        a->cache_hit[u] = res[u].cache_hit;
        st = s2_rt_check(cudaLibraryLoadData(&a->lib[u], res[u].cubin, NULL, NULL, 0, NULL, NULL, 0),
                         "cudaLibraryLoadData", err);
        if (st)
            s2_error_prefix(err, "loading %s/%s", spec->name, s2_attn_unit_name(u));
    }
    for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++)
        s2_jit_result_free(&res[u]);
    if (!st)
        st = get_kernel(&a->fwd, a->lib[S2_UNIT_ATTN_FWD], "s2_attn_fwd", err);
    if (!st) /* the forward's tiles take more than the default 48 KB of shared memory */
        st = s2_rt_check(cudaFuncSetAttribute((const void *)a->fwd,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              a->plan.smem_fwd),
                         "cudaFuncSetAttribute(s2_attn_fwd, max dynamic shared memory)", err);
    if (!st && (a->plan.tile.fwd_tma || a->plan.tile.bwd_tma)) {
        enum cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
        st = s2_rt_check(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &a->tma_encode,
                                                          12000, cudaEnableDefault, &q),
                         "cudaGetDriverEntryPointByVersion(cuTensorMapEncodeTiled)", err);
        if (!st && (q != cudaDriverEntryPointSuccess || !a->tma_encode))
            st = s2_error_set(err, S2_ERR_CUDA,
                              "tile %s = 1: the driver has no cuTensorMapEncodeTiled "
                              "(query result %d); a CUDA 12 or newer driver is needed, or "
                              "%s 0", a->plan.tile.fwd_tma ? "fwd_tma" : "bwd_tma", (int)q,
                              a->plan.tile.fwd_tma ? "fwd_tma" : "bwd_tma");
    }
    if (!st)
        st = get_kernel(&a->pre, a->lib[S2_UNIT_ATTN_BWD], "s2_attn_bwd_pre", err);
    if (!st)
        st = get_kernel(&a->dq, a->lib[S2_UNIT_ATTN_BWD], "s2_attn_bwd_dq", err);
    if (!st)
        st = get_kernel(&a->dkdv, a->lib[S2_UNIT_ATTN_BWD], "s2_attn_bwd_dkdv", err);
    if (!st)
        st = get_kernel(&a->dq_convert, a->lib[S2_UNIT_ATTN_BWD], "s2_attn_bwd_dq_convert", err);
    if (!st && a->plan.smem_dq)
        st = s2_rt_check(cudaFuncSetAttribute((const void *)a->dq,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              a->plan.smem_dq),
                         "cudaFuncSetAttribute(s2_attn_bwd_dq, max dynamic shared memory)", err);
    if (!st && a->plan.smem_dkdv)
        st = s2_rt_check(cudaFuncSetAttribute((const void *)a->dkdv,
                                              cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              a->plan.smem_dkdv),
                         "cudaFuncSetAttribute(s2_attn_bwd_dkdv, max dynamic shared memory)", err);
    if (st)
        s2_attn_free(a);
    return st;
}

s2_status s2_attn_load(s2_attn *a, const s2_rt *rt, const s2_spec *spec, const s2_attn_tile *tile,
                       const s2_jit_opts *jo, s2_error *err)
{
    return load_units(a, rt, spec, tile, jo, 0, err);
}

s2_status s2_attn_load_window(s2_attn *a, const s2_rt *rt, const s2_spec *spec,
                              const s2_attn_tile *tile, const s2_jit_opts *jo, s2_error *err)
{
    return load_units(a, rt, spec, tile, jo, 1, err);
}

void s2_attn_free(s2_attn *a)
{
    if (!a)
        return;
    for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++)
        if (a->lib[u])
            cudaLibraryUnload(a->lib[u]);
    memset(a, 0, sizeof *a);
}

s2_status s2_attn_batch_init(s2_attn_batch *bt, const int32_t *cu, int B, int T, const char *what,
                             s2_error *err)
{
    memset(bt, 0, sizeof *bt);
    if (B < 1)
        return s2_error_set(err, S2_ERR_INVALID, "%s: %d sequences; need at least 1", what, B);
    if (cu[0] != 0)
        return s2_error_set(err, S2_ERR_INVALID, "%s[0] = %d; must be 0", what, cu[0]);
    int max = 0;
    for (int b = 0; b < B; b++) {
        if (cu[b + 1] < cu[b])
            return s2_error_set(err, S2_ERR_INVALID,
                                "%s[%d] = %d < %s[%d] = %d; boundaries must not decrease", what,
                                b + 1, cu[b + 1], what, b, cu[b]);
        if (cu[b + 1] - cu[b] > max)
            max = cu[b + 1] - cu[b];
    }
    if (cu[B] != T)
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s[%d] = %d; must equal the token count %d of q", what, B, cu[B], T);
    bt->T = T;
    bt->B = B;
    bt->max_seqlen = max;
    return S2_OK;
}

/* pdl: launched with programmatic stream serialization (the Hopper kernels, which wait for the
 * kernel before them in their first instruction, s2_grid_dependency in wgmma.cuh): their blocks
 * are scheduled while that kernel's last blocks still run, instead of after it has ended. */
static s2_status launch_pdl(cudaKernel_t k, const char *name, s2_dim3 g, int threads, int smem,
                            void **args, cudaStream_t s, int pdl, s2_error *err)
{
    if (g.x == 0)
        return S2_OK; /* an empty batch: nothing to do */
    char what[128];
    snprintf(what, sizeof what, "launch %s (grid %u,%u,%u block %d)", name, g.x, g.y, g.z, threads);
    cudaLaunchAttribute attr = {.id = cudaLaunchAttributeProgrammaticStreamSerialization};
    attr.val.programmaticStreamSerializationAllowed = 1;
    const cudaLaunchConfig_t cfg = {.gridDim = {g.x, g.y, g.z},
                                    .blockDim = {(unsigned)threads, 1, 1},
                                    .dynamicSmemBytes = (size_t)smem,
                                    .stream = s,
                                    .attrs = pdl ? &attr : NULL,
                                    .numAttrs = pdl ? 1 : 0};
    s2_status st = s2_rt_check(cudaLaunchKernelExC(&cfg, (const void *)k, args), what, err);
    if (!st)
        st = s2_rt_check(cudaGetLastError(), what, err);
    return st;
}

static s2_status launch(cudaKernel_t k, const char *name, s2_dim3 g, int threads, int smem,
                        void **args, cudaStream_t s, s2_error *err)
{
    return launch_pdl(k, name, g, threads, smem, args, s, 0, err);
}

/* The batch entry points refuse the window units and the window's refuse the others: their
 * kernels take other arguments. */
static s2_status check_units(const s2_attn *a, int window, const char *fn, s2_error *err)
{
    if (a->plan.window == window)
        return S2_OK;
    return s2_error_set(err, S2_ERR_INVALID,
                        window ? "%s: these attention units were loaded for batches "
                                 "(s2_attn_load); a window needs the window units "
                                 "(s2_attn_load_window)"
                               : "%s: these are the sequence-parallel window units "
                                 "(s2_attn_load_window), which take one window, not a batch: "
                                 "use s2_attn_forward_window / s2_attn_backward_window",
                        fn);
}

typedef CUresult (*tma_encode_fn)(CUtensorMap *, CUtensorMapDataType, cuuint32_t, void *,
                                  const cuuint64_t *, const cuuint64_t *, const cuuint32_t *,
                                  const cuuint32_t *, CUtensorMapInterleave, CUtensorMapSwizzle,
                                  CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

/* The tensor map of a [T, heads, d] tensor at base for boxes of `rows` rows of one head and 64
 * of its columns, written in the 128-byte swizzle of the wgmma panels (templates/wgmma.cuh);
 * rows past T read as zeros. fn and opt name the entry point and the tile option in messages. */
static s2_status tma_map_as(const s2_attn *a, CUtensorMap *m, const void *base, const char *name,
                            int T, int heads, int rows, int f32, const char *fn, const char *opt,
                            s2_error *err)
{
    const int d = a->plan.d, eb = f32 ? 4 : 2; /* element bytes */
    if ((uintptr_t)base % 16)
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: %s at %p is not 16-byte aligned, which the tile's TMA loads "
                            "(%s = 1) need; valid: a 16-byte aligned pointer, or %s 0", fn, name,
                            base, opt, opt);
    const cuuint64_t dims[3] = {(cuuint64_t)d, (cuuint64_t)heads, (cuuint64_t)T};
    const cuuint64_t strides[2] = {(cuuint64_t)d * eb, (cuuint64_t)heads * d * eb};
    /* a box row is 128 bytes, the swizzle's span: 64 elements of 2 bytes, 32 of 4 */
    const cuuint32_t box[3] = {(cuuint32_t)(128 / eb), 1, (cuuint32_t)rows}, one[3] = {1, 1, 1};
    const CUresult r = ((tma_encode_fn)a->tma_encode)(
        m, f32 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT32
        : a->plan.dtype == S2_DTYPE_BF16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                         : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        3, (void *)base, dims, strides, box, one, CU_TENSOR_MAP_INTERLEAVE_NONE,
        CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
        CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS)
        return s2_error_set(err, S2_ERR_CUDA,
                            "cuTensorMapEncodeTiled(%s [%d, %d, %d], box %d rows): error %d", name,
                            T, heads, d, rows, (int)r);
    return S2_OK;
}

/* The persistent forward's next scheduling slot (the kernel takes it modulo its slot count). */
static _Atomic unsigned fwd_sched_slot;

/* The map of a q, k, v or dout tensor [T, heads, d] in the plan's dtype. */
static s2_status tma_map(const s2_attn *a, CUtensorMap *m, const void *base, const char *name,
                         int T, int heads, int rows, const char *fn, const char *opt,
                         s2_error *err)
{
    return tma_map_as(a, m, base, name, T, heads, rows, 0, fn, opt, err);
}

s2_status s2_attn_forward(const s2_attn *a, const s2_attn_batch *bt, const void *q, const void *k,
                          const void *v, void *o, float *lse, cudaStream_t stream, s2_error *err)
{
    int T = bt->T;
    s2_status st = check_units(a, 0, "s2_attn_forward", err);
    if (!st)
        st = s2_plan_check_batch(&a->plan, bt->max_seqlen, bt->B, T, err);
    if (st)
        return st;
    s2_dim3 grid = s2_plan_grid_fwd(&a->plan, bt->max_seqlen, bt->B);
    if (grid.x == 0)
        return S2_OK; /* an empty batch: nothing to do (and no tensor map of no rows) */
    CUtensorMap maps[3];
    /* The persistent forward (fwd_persist) runs the grid's tiles on at most one block an SM; it
     * takes the tiles' grid and a scheduling counter slot of its own (templates/
     * attn_fwd_wgmma.cuh): launches take the slots in turn, so launches of these units on
     * several streams at once count apart. */
    int vtiles = (int)grid.x, vbatch = (int)grid.z;
    unsigned slot = 0;
    void *args[] = {&q, &k, &v, &o, &lse, (void *)&bt->d_cu_seqlens, &T,
                    &maps[0], &maps[1], &maps[2], &vtiles, &vbatch, &slot};
    if (a->plan.tile.fwd_persist) {
        if (a->sm_count < 1)
            return s2_error_set(err, S2_ERR_INVALID,
                                "s2_attn_forward: fwd_persist = 1 needs the device's SM count, "
                                "which these units were loaded without (s2_attn_load sets it)");
        grid = s2_plan_grid_fwd_persist(&a->plan, bt->max_seqlen, bt->B, a->sm_count);
        slot = atomic_fetch_add(&fwd_sched_slot, 1u);
    }
    if (a->plan.tile.fwd_tma) {
        const int bm = a->plan.fwd_block_m, bn = a->plan.tile.fwd_block_n;
        const char *fn = "s2_attn_forward";
        st = tma_map(a, &maps[0], q, "q", T, a->plan.H, bm, fn, "fwd_tma", err);
        if (!st)
            st = tma_map(a, &maps[1], k, "k", T, a->plan.Hkv, bn, fn, "fwd_tma", err);
        if (!st)
            st = tma_map(a, &maps[2], v, "v", T, a->plan.Hkv, bn, fn, "fwd_tma", err);
        if (st)
            return st;
    }
    return launch_pdl(a->fwd, "s2_attn_fwd", grid, a->plan.fwd_threads, a->plan.smem_fwd, args,
                      stream, a->plan.tile.fwd_wgmma, err);
}

/* Row r of a k, v, dk or dv buffer [rows, Hkv, d]: the window kernels take those tensors at
 * their row of position qlo (templates/common.cuh), inside the buffer. */
static const void *kv_row(const s2_attn *a, const void *base, int r)
{
    return (const char *)base + (size_t)r * a->plan.Hkv * a->plan.d * 2;
}

/* The window's checks (s2_plan_check_window), named for fn. */
static s2_status check_window(const s2_attn *a, const s2_attn_window *w, const char *fn,
                              s2_error *err)
{
    s2_status st = check_units(a, 1, fn, err);
    if (!st && (st = s2_plan_check_window(&a->plan, w, err)))
        s2_error_prefix(err, "%s", fn);
    return st;
}

s2_status s2_attn_forward_window(const s2_attn *a, const s2_attn_window *w, const void *q,
                                 const void *k, const void *v, void *o, float *lse,
                                 cudaStream_t stream, s2_error *err)
{
    s2_status st = check_window(a, w, "s2_attn_forward_window", err);
    if (st)
        return st;
    int T = w->qhi - w->qlo, qlo = w->qlo, klo = w->klo;
    const int32_t *cu = NULL; /* not read by the window kernels (one sequence) */
    k = kv_row(a, k, qlo - klo), v = kv_row(a, v, qlo - klo);
    void *args[] = {&q, &k, &v, &o, &lse, &cu, &T, &qlo, &klo};
    return launch_pdl(a->fwd, "s2_attn_fwd", s2_plan_grid_fwd_window(&a->plan, w),
                      a->plan.fwd_threads, a->plan.smem_fwd, args, stream, a->plan.tile.fwd_wgmma,
                      err);
}

/* delta first, then the dQ accumulator at a 256-byte boundary. */
static size_t delta_bytes(const s2_attn *a, int T)
{
    return ((size_t)a->plan.H * (size_t)T * sizeof(float) + 255) & ~(size_t)255;
}

/* The dQ accumulator [T, H, d] fp32 (bwd_atomic_dq), and with the ordered dQ (2) its turn
 * counters [H, T] and the block ticket after it (u32, templates/attn_bwd_wgmma.cuh), all
 * zeroed together before each backward. */
static size_t dq_acc_bytes(const s2_attn *a, int T)
{
    const s2_attn_plan *p = &a->plan;
    if (!p->tile.bwd_atomic_dq)
        return 0;
    size_t bytes = (size_t)T * p->H * p->d * sizeof(float);
    if (p->tile.bwd_atomic_dq == 2)
        bytes += ((size_t)p->H * T + 1) * sizeof(uint32_t);
    return bytes;
}

size_t s2_attn_workspace_bytes(const s2_attn *a, int T)
{
    return delta_bytes(a, T) + dq_acc_bytes(a, T);
}

/* The backward's launches for T query rows: the batch's (cu, win NULL) or a window's (cu NULL,
 * win = {qlo, klo}, the window kernels' two extra arguments), on the grids given. (A kernel
 * reads as many arguments as its image says it has: the batch kernels leave the last two.) */
static s2_status run_backward(const s2_attn *a, int T, s2_dim3 g_dq, s2_dim3 g_dkdv,
                              const int32_t *cu, const int *win, const void *q, const void *k,
                              const void *v, const void *o, const float *lse, const void *dout,
                              void *ws, void *dq, void *dk, void *dv, cudaStream_t stream,
                              s2_error *err)
{
    const s2_attn_plan *p = &a->plan;
    float *delta = ws;
    float *dq_acc = p->tile.bwd_atomic_dq ? (float *)((char *)ws + delta_bytes(a, T)) : NULL;
    int qlo = win ? win[0] : 0, klo = win ? win[1] : 0;
    s2_status st = S2_OK;
    /* With bwd_tma (batches only: the window units take the cp.async twin) the dK/dV kernel
     * takes q, k, v and dout as tensor maps after T, made before any launch, and the dQ
     * accumulator's (fp32; with bwd_atomic_dq, else unused and zero). */
    CUtensorMap maps[5];
    memset(maps, 0, sizeof maps);
    if (p->tile.bwd_tma && g_dkdv.x > 0) { /* (an empty batch makes no tensor map of no rows) */
        const char *fn = "s2_attn_backward";
        st = tma_map(a, &maps[0], q, "q", T, p->H, p->tile.bwd_block_n, fn, "bwd_tma", err);
        if (!st)
            st = tma_map(a, &maps[1], k, "k", T, p->Hkv, p->bwd_block_m, fn, "bwd_tma", err);
        if (!st)
            st = tma_map(a, &maps[2], v, "v", T, p->Hkv, p->bwd_block_m, fn, "bwd_tma", err);
        if (!st)
            st = tma_map(a, &maps[3], dout, "dout", T, p->H, p->tile.bwd_block_n, fn, "bwd_tma",
                         err);
        if (!st && dq_acc)
            st = tma_map_as(a, &maps[4], dq_acc, "the dQ accumulator", T, p->H,
                            p->tile.bwd_block_n, 1, fn, "bwd_tma", err);
        if (st)
            return st;
    }
    if (!p->bwd_dq_delta) { /* else the dQ kernel forms delta beside its own rows */
        void *pre_args[] = {&o, &dout, &delta, &T};
        st = launch(a->pre, "s2_attn_bwd_pre", s2_plan_grid_pre(p, T), p->bwd_threads, 0,
                    pre_args, stream, err);
    }
    if (st)
        return st;
    if (dq_acc) {
        st = s2_rt_check(cudaMemsetAsync(dq_acc, 0, dq_acc_bytes(a, T), stream),
                         "zeroing the dQ accumulator", err);
    } else {
        void *dq_args[] = {&q, &k, &v, &dout, &o, &lse, &delta, &dq, &cu, &T, &qlo, &klo};
        st = launch_pdl(a->dq, "s2_attn_bwd_dq", g_dq, p->bwd_threads, p->smem_dq, dq_args, stream,
                        p->tile.bwd_wgmma, err);
    }
    if (st)
        return st;
    void *kv_args[] = {&q, &k, &v, &dout, &lse, &delta, &dk, &dv, &dq_acc, &cu, &T, &qlo, &klo};
    void *kv_tma_args[] = {&q, &k, &v, &dout, &lse, &delta, &dk, &dv, &dq_acc, &cu, &T,
                           &maps[0], &maps[1], &maps[2], &maps[3], &maps[4]};
    st = launch_pdl(a->dkdv, "s2_attn_bwd_dkdv", g_dkdv, p->dkdv_threads, p->smem_dkdv,
                    p->tile.bwd_tma ? kv_tma_args : kv_args, stream, p->tile.bwd_wgmma, err);
    if (st || !dq_acc)
        return st;
    long count = (long)T * p->H * p->d;
    void *cv_args[] = {&dq_acc, &dq, &count};
    s2_dim3 g = {(unsigned)((count + 255) / 256 < 4096 ? (count + 255) / 256 : 4096), 1, 1};
    return launch(a->dq_convert, "s2_attn_bwd_dq_convert", g, 256, 0, cv_args, stream, err);
}

s2_status s2_attn_backward(const s2_attn *a, const s2_attn_batch *bt, const void *q,
                           const void *k, const void *v, const void *o, const float *lse,
                           const void *dout, void *ws, void *dq, void *dk, void *dv,
                           cudaStream_t stream, s2_error *err)
{
    const s2_attn_plan *p = &a->plan;
    s2_status st = check_units(a, 0, "s2_attn_backward", err);
    if (!st)
        st = s2_plan_check_batch(p, bt->max_seqlen, bt->B, bt->T, err);
    if (st)
        return st;
    return run_backward(a, bt->T, s2_plan_grid_dq(p, bt->max_seqlen, bt->B),
                        s2_plan_grid_dkdv(p, bt->max_seqlen, bt->B), bt->d_cu_seqlens, NULL, q,
                        k, v, o, lse, dout, ws, dq, dk, dv, stream, err);
}

s2_status s2_attn_backward_window(const s2_attn *a, const s2_attn_window *w, const void *q,
                                  const void *k, const void *v, const void *o, const float *lse,
                                  const void *dout, void *ws, void *dq, void *dk, void *dv,
                                  cudaStream_t stream, s2_error *err)
{
    s2_status st = check_window(a, w, "s2_attn_backward_window", err);
    if (st)
        return st;
    const int win[2] = {w->qlo, w->klo}, in = w->qlo - w->klo;
    return run_backward(a, w->qhi - w->qlo, s2_plan_grid_dq_window(&a->plan, w),
                        s2_plan_grid_dkdv_window(&a->plan, w), NULL, win, q, kv_row(a, k, in),
                        kv_row(a, v, in), o, lse, dout, ws, dq, (void *)kv_row(a, dk, in),
                        (void *)kv_row(a, dv, in), stream, err);
}

s2_status s2_rt_fill_normal(void *dev, size_t n, float scale, s2_dtype dt, uint64_t *state,
                            s2_error *err)
{
    const size_t block = (size_t)1 << 22;
    size_t blk = n < block ? n : block;
    uint16_t *h = malloc(blk * 2 + 2);
    if (!h)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    for (size_t i = 0; i < blk; i++) {
        double u[2];
        for (int j = 0; j < 2; j++) {
            *state ^= *state >> 12, *state ^= *state << 25, *state ^= *state >> 27;
            u[j] = ((*state * 2685821657736338717ull) >> 11) * (1.0 / 9007199254740992.0);
        }
        float v = scale * (float)(sqrt(-2.0 * log(u[0] + 1e-300)) * cos(2 * M_PI * u[1]));
        h[i] = dt == S2_DTYPE_BF16 ? s2_f32_to_bf16(v) : s2_f32_to_f16(v);
    }
    s2_status st = S2_OK;
    for (size_t off = 0; !st && off < n; off += blk) {
        size_t k = n - off < blk ? n - off : blk;
        st = s2_rt_check(cudaMemcpy((char *)dev + off * 2, h, k * 2, cudaMemcpyHostToDevice),
                         "copy inputs", err);
    }
    free(h);
    return st;
}

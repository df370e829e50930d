// templates/train.cuh — the trainer's small kernels (runtime/train/train_kern.h): embedding, RMSNorm,
// RoPE, SwiGLU, residual add, cross-entropy, AdamW, the gradient's sum of squares and casts.
// Their CPU twins are runtime/ref/ref_train.h; tests/gpu_check.c compares the two.
//
// The emitter (gen/emit.c s2_emit_train) puts the model's constants above this text, after
// dtype.cuh:
//   S2_HIDDEN, S2_INTER, S2_HEAD_DIM, S2_VOCAB    sizes
//   S2_RMS_EPS, S2_ROPE_THETA, S2_ROPE_FACTOR     double literals
//   S2_ROW_THREADS, S2_ROW_ITERS                  block of the row kernels over hidden: thread t
//                                                 owns S2_ROW_ITERS chunks of 8 columns
//   S2_EW_THREADS, S2_XENT_THREADS, S2_ROPE_THREADS  the other block sizes
// runtime/train/train_kern.c launches with the same numbers (gen/emit.h).
//
// Every kernel is memory-bound. A storage-dtype tensor moves in 16-byte chunks of 8 elements
// when the host found every pointer of the launch 16-byte aligned and every row stride and
// width a multiple of 8 (the `vec` argument); otherwise the body is instantiated with N = 1
// and moves single elements, still coalesced. Compute is fp32; the loss and sum-of-squares
// accumulators are fp64, gradients of trainable tensors fp32.
//
// Deterministic: no floating-point atomics. Where many rows add into one value (the
// embedding's rows of a token, RMSNorm's weight gradient, the loss and the sum of squares),
// each block writes its partial sum into the caller's workspace and the partials are added in
// a fixed order (by a second kernel, or by the grid's last block), so the same inputs on the
// same GPU give the same bits run to run. The workspace (train_kern.h s2_k_ws) holds an
// arrival counter at byte 0, zero between launches, and the partials from byte S2_K_WS_HEAD;
// the host passes the kernels the two pointers.

#define S2_IGNORE_INDEX (-100) // runtime/ref/ref_train.h S2_REF_IGNORE_INDEX (HF's ignore_index)
#define S2_HALF (S2_HEAD_DIM / 2)
#define S2T_INF __int_as_float(0x7f800000)
#define S2T_NAN __int_as_float(0x7fffffff)
#define S2T_ELEM_NAN ((s2_elem)(S2_IS_BF16 ? 0x7fc0u : 0x7e00u))

// ------------------------------------------------------------------ loads and stores

// N elements at p (N = 8: one 16-byte access, p 16-byte aligned) to fp32 and back.
template <int N> __device__ __forceinline__ void s2t_ld(const s2_elem *p, float *f)
{
    if constexpr (N == 8) {
        const uint4 u = *reinterpret_cast<const uint4 *>(p);
        const float2 a = s2_to_f32x2(u.x), b = s2_to_f32x2(u.y), c = s2_to_f32x2(u.z),
                     d = s2_to_f32x2(u.w);
        f[0] = a.x, f[1] = a.y, f[2] = b.x, f[3] = b.y;
        f[4] = c.x, f[5] = c.y, f[6] = d.x, f[7] = d.y;
    } else {
#pragma unroll
        for (int e = 0; e < N; e++)
            f[e] = s2_to_f32(p[e]);
    }
}

__device__ __forceinline__ unsigned s2t_pack2(float lo, float hi)
{
    return (unsigned)s2_from_f32(lo) | ((unsigned)s2_from_f32(hi) << 16);
}

template <int N> __device__ __forceinline__ void s2t_st(s2_elem *p, const float *f)
{
    if constexpr (N == 8) {
        uint4 u;
        u.x = s2t_pack2(f[0], f[1]), u.y = s2t_pack2(f[2], f[3]);
        u.z = s2t_pack2(f[4], f[5]), u.w = s2t_pack2(f[6], f[7]);
        *reinterpret_cast<uint4 *>(p) = u;
    } else {
#pragma unroll
        for (int e = 0; e < N; e++)
            p[e] = s2_from_f32(f[e]);
    }
}

template <int N> __device__ __forceinline__ void s2t_ldf(const float *p, float *f)
{
    if constexpr (N == 8) {
        const float4 a = reinterpret_cast<const float4 *>(p)[0];
        const float4 b = reinterpret_cast<const float4 *>(p)[1];
        f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w;
        f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
    } else {
#pragma unroll
        for (int e = 0; e < N; e++)
            f[e] = p[e];
    }
}

template <int N> __device__ __forceinline__ void s2t_stf(float *p, const float *f)
{
    if constexpr (N == 8) {
        reinterpret_cast<float4 *>(p)[0] = make_float4(f[0], f[1], f[2], f[3]);
        reinterpret_cast<float4 *>(p)[1] = make_float4(f[4], f[5], f[6], f[7]);
    } else {
#pragma unroll
        for (int e = 0; e < N; e++)
            p[e] = f[e];
    }
}

// ------------------------------------------------------------------ reductions

__device__ __forceinline__ float s2t_warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double s2t_warp_sum_d(double v)
{
#pragma unroll
    for (int o = 16; o; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// The block's sum, in every thread (blockDim.x a multiple of 32). red: 32 shared slots. The
// barrier first lets a kernel call this once per row with the same slots: no warp can
// overwrite a slot before every warp has read the previous row's.
__device__ __forceinline__ float s2t_block_sum(float v, float *red)
{
    v = s2t_warp_sum(v);
    const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0)
        red[threadIdx.x >> 5] = v;
    __syncthreads();
    return s2t_warp_sum(lane < nw ? red[lane] : 0.f);
}

__device__ __forceinline__ double s2t_block_sum_d(double v, double *red)
{
    v = s2t_warp_sum_d(v);
    const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0)
        red[threadIdx.x >> 5] = v;
    __syncthreads();
    return s2t_warp_sum_d(lane < nw ? red[lane] : 0.0);
}

// Log-sum-exp state (max m, sum s of exp(x - m)): merges (m2, s2) into (m, s). An empty
// state is (-inf, 0); two empty ones stay empty rather than turning into NaN.
__device__ __forceinline__ void s2t_lse_merge(float &m, float &s, float m2, float s2)
{
    const float mm = fmaxf(m, m2);
    if (mm == -S2T_INF)
        return;
    s = s * expf(m - mm) + s2 * expf(m2 - mm);
    m = mm;
}

__device__ __forceinline__ void s2t_block_lse(float &m, float &s, float *red_m, float *red_s)
{
#pragma unroll
    for (int o = 16; o; o >>= 1)
        s2t_lse_merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0)
        red_m[threadIdx.x >> 5] = m, red_s[threadIdx.x >> 5] = s;
    __syncthreads();
    m = lane < nw ? red_m[lane] : -S2T_INF;
    s = lane < nw ? red_s[lane] : 0.f;
#pragma unroll
    for (int o = 16; o; o >>= 1)
        s2t_lse_merge(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
}

// acc[i] += the sum over the grid's blocks of v[i] (i < NV; v is read in thread 0), in an
// order that does not depend on which block finishes when: every block stores its values at
// part[block * NV + i] and counts itself in; the block that arrives last (the counter reads
// gridDim.x - 1) sums the partials, thread t over blocks t, t + blockDim.x, ... and then the
// block's fixed shuffle tree, adds the sums to acc and re-arms the counter for the next launch.
// The fence before the count publishes a block's partial before it is counted; the last block
// reads the partials through L2 (__ldcg), never a stale L1 line. Every thread must call this.
template <int NV>
__device__ __forceinline__ void s2t_grid_sum_d(const double *v, double *acc, double *part,
                                               unsigned *counter)
{
    __shared__ int last;
    __shared__ double red[32];
    if (threadIdx.x == 0) {
#pragma unroll
        for (int i = 0; i < NV; i++)
            part[(long)blockIdx.x * NV + i] = v[i];
        __threadfence();
        last = atomicAdd(counter, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!last)
        return;
    __threadfence();
#pragma unroll
    for (int i = 0; i < NV; i++) {
        double s = 0.0;
        for (unsigned b = threadIdx.x; b < gridDim.x; b += blockDim.x)
            s += __ldcg(part + (long)b * NV + i);
        s = s2t_block_sum_d(s, red);
        if (threadIdx.x == 0)
            acc[i] += s;
    }
    if (threadIdx.x == 0)
        *counter = 0u;
}

// ------------------------------------------------------------------ row kernels over hidden

// Thread t owns slots k < S2T_SLOTS(N) of N columns each, slot k at columns
// (k * S2_ROW_THREADS + t) * N: coalesced either way, and the same columns in every row, so
// per-column values (the norm weight, dw's partial sums) stay in registers across rows.
#define S2T_SLOTS(N) (S2_ROW_ITERS * 8 / (N))

template <int N> __device__ __forceinline__ int s2t_slot_col(int k)
{
    return (k * S2_ROW_THREADS + (int)threadIdx.x) * N;
}

// Loads a row's slots (0 beyond hidden: every slot is wholly in or out, as N divides hidden).
template <int N> __device__ __forceinline__ void s2t_row_ld(const s2_elem *row, float *v)
{
#pragma unroll
    for (int k = 0; k < S2T_SLOTS(N); k++) {
        const int c = s2t_slot_col<N>(k);
        if (c < S2_HIDDEN)
            s2t_ld<N>(row + c, v + k * N);
        else
#pragma unroll
            for (int e = 0; e < N; e++)
                v[k * N + e] = 0.f;
    }
}

template <int N> __device__ __forceinline__ void s2t_row_st(s2_elem *row, const float *v)
{
#pragma unroll
    for (int k = 0; k < S2T_SLOTS(N); k++) {
        const int c = s2t_slot_col<N>(k);
        if (c < S2_HIDDEN)
            s2t_st<N>(row + c, v + k * N);
    }
}

// The same slots of an fp32 row (a gradient row or a partial; 0 beyond hidden).
template <int N> __device__ __forceinline__ void s2t_rowf_ld(const float *row, float *v)
{
#pragma unroll
    for (int k = 0; k < S2T_SLOTS(N); k++) {
        const int c = s2t_slot_col<N>(k);
        if (c < S2_HIDDEN)
            s2t_ldf<N>(row + c, v + k * N);
        else
#pragma unroll
            for (int e = 0; e < N; e++)
                v[k * N + e] = 0.f;
    }
}

template <int N> __device__ __forceinline__ void s2t_rowf_st(float *row, const float *v)
{
#pragma unroll
    for (int k = 0; k < S2T_SLOTS(N); k++) {
        const int c = s2t_slot_col<N>(k);
        if (c < S2_HIDDEN)
            s2t_stf<N>(row + c, v + k * N);
    }
}

// out[t, :] = table[tokens[t], :]; a token outside the vocabulary writes NaN.
template <int N>
__device__ __forceinline__ void s2t_embed_fwd(const int *tokens, const s2_elem *table,
                                              s2_elem *out, int ldo, int T)
{
    for (int t = blockIdx.x; t < T; t += gridDim.x) {
        const int tok = tokens[t];
        const bool ok = tok >= 0 && tok < S2_VOCAB;
        const s2_elem *src = table + (long)(ok ? tok : 0) * S2_HIDDEN;
        s2_elem *dst = out + (long)t * ldo;
#pragma unroll
        for (int k = 0; k < S2T_SLOTS(N); k++) {
            const int c = s2t_slot_col<N>(k);
            if (c >= S2_HIDDEN)
                continue;
            if constexpr (N == 8) {
                uint4 u = make_uint4(0x7fc07fc0u, 0x7fc07fc0u, 0x7fc07fc0u, 0x7fc07fc0u);
                if (!S2_IS_BF16)
                    u = make_uint4(0x7e007e00u, 0x7e007e00u, 0x7e007e00u, 0x7e007e00u);
                if (ok)
                    u = *reinterpret_cast<const uint4 *>(src + c);
                *reinterpret_cast<uint4 *>(dst + c) = u;
            } else {
#pragma unroll
                for (int e = 0; e < N; e++)
                    dst[c + e] = ok ? src[c + e] : S2T_ELEM_NAN;
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(S2_ROW_THREADS)
s2_embed_fwd(const int *__restrict__ tokens, const s2_elem *__restrict__ table,
             s2_elem *__restrict__ out, int ldo, int T, int vec)
{
    if (vec)
        s2t_embed_fwd<8>(tokens, table, out, ldo, T);
    else
        s2t_embed_fwd<1>(tokens, table, out, ldo, T);
}

// dtable[tok, :] += the rows dout[t, :] of the positions t holding tok, without atomics, from
// the host's work list (train_kern.h s2_embed_list): the positions sorted by token, in position
// order within a token, cut into items of at most S2_EMBED_CHUNK positions. One block an item
// (grid-stride) sums its rows in list order, S2T_EMB_UNROLL rows loaded ahead of their adds so
// the loads overlap. An item that is its token's only one (slot < 0) starts from the gradient
// row and writes it back: the row is then g + d1 + d2 + ... in position order, one writer. The
// items of a token with more positions (slot >= 0) write their sums to partial row `slot` of
// part, and s2_embed_bwd_finish adds those into the gradient row in item order.
#define S2T_EMB_UNROLL 4
template <int N>
__device__ __forceinline__ void s2t_embed_bwd(const int *item_start, const int *item_tok,
                                              const int *item_slot, const int *pos,
                                              const s2_elem *dout, int lddo, float *dtable,
                                              float *part, int n_items)
{
    constexpr int S = S2T_SLOTS(N) * N;
    for (int it = blockIdx.x; it < n_items; it += gridDim.x) {
        const int p0 = item_start[it], p1 = item_start[it + 1], slot = item_slot[it];
        float *dst = slot < 0 ? dtable + (long)item_tok[it] * S2_HIDDEN
                              : part + (long)slot * S2_HIDDEN;
        float acc[S];
        if (slot < 0)
            s2t_rowf_ld<N>(dst, acc);
        else
#pragma unroll
            for (int i = 0; i < S; i++)
                acc[i] = 0.f;
        int p = p0;
        for (; p + S2T_EMB_UNROLL <= p1; p += S2T_EMB_UNROLL) {
            float v[S2T_EMB_UNROLL][S];
#pragma unroll
            for (int u = 0; u < S2T_EMB_UNROLL; u++)
                s2t_row_ld<N>(dout + (long)pos[p + u] * lddo, v[u]);
#pragma unroll
            for (int u = 0; u < S2T_EMB_UNROLL; u++)
#pragma unroll
                for (int i = 0; i < S; i++)
                    acc[i] += v[u][i];
        }
        for (; p < p1; p++) {
            float v[S];
            s2t_row_ld<N>(dout + (long)pos[p] * lddo, v);
#pragma unroll
            for (int i = 0; i < S; i++)
                acc[i] += v[i];
        }
        s2t_rowf_st<N>(dst, acc);
    }
}

extern "C" __global__ void __launch_bounds__(S2_ROW_THREADS)
s2_embed_bwd(const int *__restrict__ item_start, const int *__restrict__ item_tok,
             const int *__restrict__ item_slot, const int *__restrict__ pos,
             const s2_elem *__restrict__ dout, int lddo, float *__restrict__ dtable,
             float *__restrict__ part, int n_items, int vec)
{
    if (vec)
        s2t_embed_bwd<8>(item_start, item_tok, item_slot, pos, dout, lddo, dtable, part, n_items);
    else
        s2t_embed_bwd<1>(item_start, item_tok, item_slot, pos, dout, lddo, dtable, part, n_items);
}

// For each split token j (one block each, grid-stride): its gradient row += its items' partial
// rows split_first[j] .. split_first[j + 1] - 1, in that (position) order.
template <int N>
__device__ __forceinline__ void s2t_embed_bwd_finish(const int *split_first, const int *split_tok,
                                                     const float *part, float *dtable,
                                                     int n_split)
{
    constexpr int S = S2T_SLOTS(N) * N;
    for (int j = blockIdx.x; j < n_split; j += gridDim.x) {
        float *drow = dtable + (long)split_tok[j] * S2_HIDDEN;
        float acc[S];
        s2t_rowf_ld<N>(drow, acc);
        for (int q = split_first[j]; q < split_first[j + 1]; q++) {
            float v[S];
            s2t_rowf_ld<N>(part + (long)q * S2_HIDDEN, v);
#pragma unroll
            for (int i = 0; i < S; i++)
                acc[i] += v[i];
        }
        s2t_rowf_st<N>(drow, acc);
    }
}

extern "C" __global__ void __launch_bounds__(S2_ROW_THREADS)
s2_embed_bwd_finish(const int *__restrict__ split_first, const int *__restrict__ split_tok,
                    const float *__restrict__ part, float *__restrict__ dtable, int n_split,
                    int vec)
{
    if (vec)
        s2t_embed_bwd_finish<8>(split_first, split_tok, part, dtable, n_split);
    else
        s2t_embed_bwd_finish<1>(split_first, split_tok, part, dtable, n_split);
}

// y = x r w with r = 1 / sqrt(mean(x^2) + eps); rstd[m] = r. The row stays in registers
// between the sum and the scaling: x is read once.
template <int N>
__device__ __forceinline__ void s2t_rmsnorm_fwd(const s2_elem *x, int ldx, const s2_elem *w,
                                                s2_elem *y, int ldy, float *rstd, int M)
{
    __shared__ float red[32];
    float wv[S2T_SLOTS(N) * N];
    s2t_row_ld<N>(w, wv);
    for (int m = blockIdx.x; m < M; m += gridDim.x) {
        float v[S2T_SLOTS(N) * N];
        s2t_row_ld<N>(x + (long)m * ldx, v);
        float ss = 0.f;
#pragma unroll
        for (int i = 0; i < S2T_SLOTS(N) * N; i++)
            ss += v[i] * v[i];
        ss = s2t_block_sum(ss, red);
        const float r = 1.0f / sqrtf(ss / (float)S2_HIDDEN + (float)S2_RMS_EPS);
#pragma unroll
        for (int i = 0; i < S2T_SLOTS(N) * N; i++)
            v[i] = v[i] * r * wv[i];
        s2t_row_st<N>(y + (long)m * ldy, v);
        if (rstd && threadIdx.x == 0)
            rstd[m] = r;
    }
}

extern "C" __global__ void __launch_bounds__(S2_ROW_THREADS)
s2_rmsnorm_fwd(const s2_elem *__restrict__ x, int ldx, const s2_elem *__restrict__ w,
               s2_elem *__restrict__ y, int ldy, float *__restrict__ rstd, int M, int vec)
{
    if (vec)
        s2t_rmsnorm_fwd<8>(x, ldx, w, y, ldy, rstd, M);
    else
        s2t_rmsnorm_fwd<1>(x, ldx, w, y, ldy, rstd, M);
}

// dx = resid + r (dy w - xh mean(dy w xh)), xh = x r; dw's partial: the sum over the block's
// rows of dy xh. Each thread's dw columns are the same in every row of the block, so the block
// sums its rows in registers (in row order) and writes the sums once, as row blockIdx.x of
// dw_part [gridDim.x, hidden]; s2_colsum_f32 then adds the partials into dw in block order.
// resid may be dx (read before written, by the same thread): neither carries __restrict__.
template <int N>
__device__ __forceinline__ void s2t_rmsnorm_bwd(const s2_elem *x, int ldx, const s2_elem *w,
                                                const s2_elem *dy, int lddy, const float *rstd,
                                                const s2_elem *resid, int ldr, s2_elem *dx,
                                                int lddx, float *dw_part, int M)
{
    __shared__ float red[32];
    constexpr int S = S2T_SLOTS(N) * N;
    float wv[S], dwv[S];
    s2t_row_ld<N>(w, wv);
#pragma unroll
    for (int i = 0; i < S; i++)
        dwv[i] = 0.f;
    for (int m = blockIdx.x; m < M; m += gridDim.x) {
        float xv[S], gv[S];
        s2t_row_ld<N>(x + (long)m * ldx, xv);
        s2t_row_ld<N>(dy + (long)m * lddy, gv);
        const float r = rstd[m];
        float dot = 0.f;
#pragma unroll
        for (int i = 0; i < S; i++) {
            xv[i] *= r;                   // xh
            dwv[i] += gv[i] * xv[i];
            gv[i] *= wv[i];               // dy w
            dot += gv[i] * xv[i];
        }
        const float mean = s2t_block_sum(dot, red) / (float)S2_HIDDEN;
#pragma unroll
        for (int i = 0; i < S; i++)
            gv[i] = r * (gv[i] - xv[i] * mean);
        if (resid) {
            float rv[S];
            s2t_row_ld<N>(resid + (long)m * ldr, rv);
#pragma unroll
            for (int i = 0; i < S; i++)
                gv[i] += rv[i];
        }
        s2t_row_st<N>(dx + (long)m * lddx, gv);
    }
    if (dw_part)
        s2t_rowf_st<N>(dw_part + (long)blockIdx.x * S2_HIDDEN, dwv);
}

extern "C" __global__ void __launch_bounds__(S2_ROW_THREADS)
s2_rmsnorm_bwd(const s2_elem *__restrict__ x, int ldx, const s2_elem *__restrict__ w,
               const s2_elem *__restrict__ dy, int lddy, const float *__restrict__ rstd,
               const s2_elem *resid, int ldr, s2_elem *dx, int lddx,
               float *__restrict__ dw_part, int M, int vec)
{
    if (vec)
        s2t_rmsnorm_bwd<8>(x, ldx, w, dy, lddy, rstd, resid, ldr, dx, lddx, dw_part, M);
    else
        s2t_rmsnorm_bwd<1>(x, ldx, w, dy, lddy, rstd, resid, ldr, dx, lddx, dw_part, M);
}

// dst[c] += the sum over rows b < rows of src[b * cols + c] (fp32, contiguous), the partials of
// blocks that each summed a share of the rows (RMSNorm's weight gradient). Block: 32 columns x
// S2T_COLSUM_ROWS row lanes, S2_EW_THREADS threads; lane y sums rows y, y + S2T_COLSUM_ROWS, ...
// in order (one coalesced 128-byte row segment a warp a step), then thread y = 0 adds the
// lanes' sums to dst in lane order: a fixed order, whatever the timing.
#define S2T_COLSUM_ROWS (S2_EW_THREADS / 32)
extern "C" __global__ void __launch_bounds__(S2_EW_THREADS)
s2_colsum_f32(const float *__restrict__ src, int rows, int cols, float *__restrict__ dst)
{
    __shared__ float red[S2T_COLSUM_ROWS][33];
    const int x = threadIdx.x & 31, y = threadIdx.x >> 5;
    const int c = blockIdx.x * 32 + x;
    float s = 0.f;
    if (c < cols)
#pragma unroll 4
        for (int b = y; b < rows; b += S2T_COLSUM_ROWS)
            s += src[(long)b * cols + c];
    red[y][x] = s;
    __syncthreads();
    if (y == 0 && c < cols) {
        float t = dst[c];
#pragma unroll
        for (int i = 0; i < S2T_COLSUM_ROWS; i++)
            t += red[i][x];
        dst[c] = t;
    }
}

// ------------------------------------------------------------------ RoPE

// One token per block iteration: the d/2 angles depend on the position only, so they are
// computed once per token into shared memory and reused by every head. The angle is HF's
// fp32 arithmetic step by step (ref_train.c s2_ref_rope_angle with fp32_angles = 1):
//   inv_freq[j] = 1 / theta^(float(2j) / d), the power rounded to fp32, then / factor in fp32;
//   angle = fp32(inv_freq[j] * float(p)).
// At positions near 32k the angle reaches 1e4 rad and more, so sincosf is the precise one
// (full range reduction), never __sincosf.
template <int N>
__device__ __forceinline__ void s2t_rope(const int *pos, float sgn, const s2_elem *src, int lds,
                                         s2_elem *dst, int ldd, int T, int heads)
{
    __shared__ float inv_freq[S2_HALF], cs[S2_HALF], sn[S2_HALF];
    for (int j = threadIdx.x; j < S2_HALF; j += blockDim.x) {
        const float e = (float)(2 * j) / (float)S2_HEAD_DIM;
        const float inv = 1.0f / (float)pow((double)S2_ROPE_THETA, (double)e);
        inv_freq[j] = inv / (float)S2_ROPE_FACTOR;
    }
    constexpr int per_head = S2_HALF / N; // items of N pairs per head
    const int items = heads * per_head;
    for (int t = blockIdx.x; t < T; t += gridDim.x) {
        __syncthreads(); // inv_freq written; the previous token's cs, sn no longer read
        const float p = (float)pos[t];
        for (int j = threadIdx.x; j < S2_HALF; j += blockDim.x) {
            float s, c;
            sincosf(__fmul_rn(inv_freq[j], p), &s, &c);
            cs[j] = c;
            sn[j] = sgn * s;
        }
        __syncthreads();
        const s2_elem *xr = src + (long)t * lds;
        s2_elem *yr = dst + (long)t * ldd;
        for (int it = threadIdx.x; it < items; it += blockDim.x) {
            const int h = it / per_head, j0 = (it - h * per_head) * N;
            const int o = h * S2_HEAD_DIM + j0;
            float x1[N], x2[N], y1[N], y2[N];
            s2t_ld<N>(xr + o, x1);
            s2t_ld<N>(xr + o + S2_HALF, x2);
#pragma unroll
            for (int e = 0; e < N; e++) {
                const float c = cs[j0 + e], s = sn[j0 + e];
                y1[e] = x1[e] * c - x2[e] * s; // x cos + rotate_half(x) sin, first half
                y2[e] = x2[e] * c + x1[e] * s;
            }
            s2t_st<N>(yr + o, y1);
            s2t_st<N>(yr + o + S2_HALF, y2);
        }
    }
}

// src and dst may be the same buffer (in place): each pair is read before it is written, by
// one thread, so neither pointer is __restrict__.
extern "C" __global__ void __launch_bounds__(S2_ROPE_THREADS)
s2_rope(const int *__restrict__ pos, int dir, const s2_elem *src, int lds, s2_elem *dst, int ldd,
        int T, int heads, int vec)
{
    const float sgn = dir < 0 ? -1.f : 1.f;
#if S2_HALF % 8 == 0
    if (vec) {
        s2t_rope<8>(pos, sgn, src, lds, dst, ldd, T, heads);
        return;
    }
#endif
    s2t_rope<1>(pos, sgn, src, lds, dst, ldd, T, heads);
}

// ------------------------------------------------------------------ elementwise over rows

// The 2-D elementwise launches: blockIdx.x * blockDim.x + threadIdx.x picks the chunk of N
// columns in a row, blockIdx.y strides over rows (the grid's y covers as many rows as keep
// the GPU busy; a block takes rows y, y + gridDim.y, ...).
#define S2T_FOR_ROWS(m, rows) for (long m = blockIdx.y; m < (rows); m += gridDim.y)
#define S2T_CHUNK_COL(N) ((int)(blockIdx.x * blockDim.x + threadIdx.x) * (N))

__device__ __forceinline__ float s2t_sigmoid(float z) { return 1.f / (1.f + expf(-z)); }

// h = silu(g) u; g = gu[:, 0:inter], u = gu[:, inter:2 inter].
template <int N>
__device__ __forceinline__ void s2t_swiglu_fwd(const s2_elem *gu, int ldgu, s2_elem *h, int ldh,
                                               int M)
{
    const int c = S2T_CHUNK_COL(N);
    if (c >= S2_INTER)
        return;
    S2T_FOR_ROWS(m, M)
    {
        float g[N], u[N];
        s2t_ld<N>(gu + m * ldgu + c, g);
        s2t_ld<N>(gu + m * ldgu + S2_INTER + c, u);
#pragma unroll
        for (int e = 0; e < N; e++)
            g[e] = g[e] * s2t_sigmoid(g[e]) * u[e];
        s2t_st<N>(h + m * ldh + c, g);
    }
}

extern "C" __global__ void __launch_bounds__(S2_EW_THREADS)
s2_swiglu_fwd(const s2_elem *__restrict__ gu, int ldgu, s2_elem *__restrict__ h, int ldh, int M,
              int vec)
{
    if (vec)
        s2t_swiglu_fwd<8>(gu, ldgu, h, ldh, M);
    else
        s2t_swiglu_fwd<1>(gu, ldgu, h, ldh, M);
}

// dg = dh u s (1 + g (1 - s)), du = dh silu(g), s = sigmoid(g). dgu may be gu (in place).
template <int N>
__device__ __forceinline__ void s2t_swiglu_bwd(const s2_elem *gu, int ldgu, const s2_elem *dh,
                                               int lddh, s2_elem *dgu, int lddgu, int M)
{
    const int c = S2T_CHUNK_COL(N);
    if (c >= S2_INTER)
        return;
    S2T_FOR_ROWS(m, M)
    {
        float g[N], u[N], d[N];
        s2t_ld<N>(gu + m * ldgu + c, g);
        s2t_ld<N>(gu + m * ldgu + S2_INTER + c, u);
        s2t_ld<N>(dh + m * lddh + c, d);
#pragma unroll
        for (int e = 0; e < N; e++) {
            const float s = s2t_sigmoid(g[e]);
            const float dg = d[e] * u[e] * s * (1.f + g[e] * (1.f - s));
            u[e] = d[e] * g[e] * s; // du
            g[e] = dg;
        }
        s2t_st<N>(dgu + m * lddgu + c, g);
        s2t_st<N>(dgu + m * lddgu + S2_INTER + c, u);
    }
}

extern "C" __global__ void __launch_bounds__(S2_EW_THREADS)
s2_swiglu_bwd(const s2_elem *gu, int ldgu, const s2_elem *__restrict__ dh, int lddh,
              s2_elem *dgu, int lddgu, int M, int vec)
{
    if (vec)
        s2t_swiglu_bwd<8>(gu, ldgu, dh, lddh, dgu, lddgu, M);
    else
        s2t_swiglu_bwd<1>(gu, ldgu, dh, lddh, dgu, lddgu, M);
}

// y = a + b; y may be a or b.
template <int N>
__device__ __forceinline__ void s2t_add(const s2_elem *a, int lda, const s2_elem *b, int ldb,
                                        s2_elem *y, int ldy, int rows, int cols)
{
    const int c = S2T_CHUNK_COL(N);
    if (c >= cols)
        return;
    S2T_FOR_ROWS(m, rows)
    {
        float x[N], z[N];
        s2t_ld<N>(a + m * lda + c, x);
        s2t_ld<N>(b + m * ldb + c, z);
#pragma unroll
        for (int e = 0; e < N; e++)
            x[e] += z[e];
        s2t_st<N>(y + m * ldy + c, x);
    }
}

extern "C" __global__ void __launch_bounds__(S2_EW_THREADS)
s2_add(const s2_elem *a, int lda, const s2_elem *b, int ldb, s2_elem *y, int ldy, int rows,
       int cols, int vec)
{
    if (vec)
        s2t_add<8>(a, lda, b, ldb, y, ldy, rows, cols);
    else
        s2t_add<1>(a, lda, b, ldb, y, ldy, rows, cols);
}

// dst [rows, ldd] (elem) = src [rows, cols] (fp32, contiguous), rounded to nearest even.
template <int N>
__device__ __forceinline__ void s2t_cast_f32(const float *src, s2_elem *dst, int ldd, int rows,
                                             int cols)
{
    const int c = S2T_CHUNK_COL(N);
    if (c >= cols)
        return;
    S2T_FOR_ROWS(m, rows)
    {
        float f[N];
        s2t_ldf<N>(src + m * cols + c, f);
        s2t_st<N>(dst + m * ldd + c, f);
    }
}

extern "C" __global__ void __launch_bounds__(S2_EW_THREADS)
s2_cast_f32(const float *__restrict__ src, s2_elem *__restrict__ dst, int ldd, int rows, int cols,
            int vec)
{
    if (vec)
        s2t_cast_f32<8>(src, dst, ldd, rows, cols);
    else
        s2t_cast_f32<1>(src, dst, ldd, rows, cols);
}

// dst [rows, cols] (fp32, contiguous) = src [rows, lds] (elem).
template <int N>
__device__ __forceinline__ void s2t_cast_elem(const s2_elem *src, int lds, float *dst, int rows,
                                              int cols)
{
    const int c = S2T_CHUNK_COL(N);
    if (c >= cols)
        return;
    S2T_FOR_ROWS(m, rows)
    {
        float f[N];
        s2t_ld<N>(src + m * lds + c, f);
        s2t_stf<N>(dst + m * cols + c, f);
    }
}

extern "C" __global__ void __launch_bounds__(S2_EW_THREADS)
s2_cast_elem(const s2_elem *__restrict__ src, int lds, float *__restrict__ dst, int rows,
             int cols, int vec)
{
    if (vec)
        s2t_cast_elem<8>(src, lds, dst, rows, cols);
    else
        s2t_cast_elem<1>(src, lds, dst, rows, cols);
}

// ------------------------------------------------------------------ cross-entropy

// One block per row (grid-stride). Pass 1: online max and sum of exp over the vocabulary,
// merged across the block; lse = max + log(sum). Pass 2 (grad): the row is overwritten in
// place by (softmax - onehot) * inv_denom, each element by the thread that read it. The
// labelled logit is read by thread 0 before the first barrier of the row, so before any
// thread can overwrite it. The blocks' nll and counts reach acc through s2t_grid_sum_d (a
// fixed order; ws_part holds gridDim.x pairs, ws_count the arrival counter).
template <int N>
__device__ __forceinline__ void s2t_xent(s2_elem *logits, int ldl, const int *labels,
                                         float inv_denom, int grad, double *acc,
                                         double *ws_part, unsigned *ws_count, int M)
{
    __shared__ float red_m[32], red_s[32];
    double nll = 0.0, cnt = 0.0;
    for (int m = blockIdx.x; m < M; m += gridDim.x) {
        s2_elem *z = logits + (long)m * ldl;
        const int lab = labels[m];
        if (lab == S2_IGNORE_INDEX) { // counts nothing; its gradient is 0
            if (grad) {
                const float zero[N] = {};
                for (int c = threadIdx.x * N; c < S2_VOCAB; c += S2_XENT_THREADS * N)
                    s2t_st<N>(z + c, zero);
            }
            continue;
        }
        const bool bad = lab < 0 || lab >= S2_VOCAB; // adds NaN, never reads out of the row
        float zl = 0.f;
        if (threadIdx.x == 0)
            zl = bad ? S2T_NAN : s2_to_f32(z[lab]);
        float mx = -S2T_INF, s = 0.f;
        for (int c = threadIdx.x * N; c < S2_VOCAB; c += S2_XENT_THREADS * N) {
            float f[N];
            s2t_ld<N>(z + c, f);
            float cm = f[0];
#pragma unroll
            for (int e = 1; e < N; e++)
                cm = fmaxf(cm, f[e]);
            if (cm > mx) { // rescale what was summed against the old max
                s *= expf(mx - cm);
                mx = cm;
            }
#pragma unroll
            for (int e = 0; e < N; e++)
                s += expf(f[e] - mx);
        }
        s2t_block_lse(mx, s, red_m, red_s);
        const float lse = mx + logf(s);
        if (threadIdx.x == 0) {
            nll += (double)lse - (double)zl;
            cnt += 1.0;
        }
        if (!grad)
            continue;
        for (int c = threadIdx.x * N; c < S2_VOCAB; c += S2_XENT_THREADS * N) {
            float f[N];
            s2t_ld<N>(z + c, f);
#pragma unroll
            for (int e = 0; e < N; e++)
                f[e] = bad ? S2T_NAN : (expf(f[e] - lse) - (c + e == lab ? 1.f : 0.f)) * inv_denom;
            s2t_st<N>(z + c, f);
        }
    }
    const double v[2] = {nll, cnt};
    s2t_grid_sum_d<2>(v, acc, ws_part, ws_count);
}

extern "C" __global__ void __launch_bounds__(S2_XENT_THREADS)
s2_xent(s2_elem *logits, int ldl, const int *__restrict__ labels, float inv_denom, int grad,
        double *acc, double *ws_part, unsigned *ws_count, int M, int vec)
{
    if (vec)
        s2t_xent<8>(logits, ldl, labels, inv_denom, grad, acc, ws_part, ws_count, M);
    else
        s2t_xent<1>(logits, ldl, labels, inv_denom, grad, acc, ws_part, ws_count, M);
}

// ------------------------------------------------------------------ flat fp32 vectors

// The flat kernels walk quads of 4 fp32 (one 16-byte access when vec, i.e. every pointer is
// 16-byte aligned); a quad that runs past n, or any quad without vec, goes element by element.

// One AdamW step (ref_train.h s2_ref_adamw_step, torch's order of operations), with the
// per-step constants formed on the host in fp64: decay = 1 - lr wd, step = lr / (1 - b1^t),
// bc2s = sqrt(1 - b2^t); omb1 = 1 - b1, omb2 = 1 - b2.
__device__ __forceinline__ void s2t_adamw1(float &p, float g, float &m, float &v, float b1,
                                           float omb1, float b2, float omb2, float eps,
                                           float decay, float step, float bc2s, float gscale)
{
    g *= gscale;
    const float pd = p * decay;
    m = b1 * m + omb1 * g;
    v = b2 * v + omb2 * g * g;
    const float denom = sqrtf(v) / bc2s + eps;
    p = pd - step * m / denom;
}

extern "C" __global__ void __launch_bounds__(S2_EW_THREADS)
s2_adamw(float *__restrict__ p, const float *__restrict__ g, float *__restrict__ m,
         float *__restrict__ v, unsigned long long n, float b1, float omb1, float b2, float omb2,
         float eps, float decay, float step, float bc2s, float gscale, int vec)
{
    const unsigned long long quads = (n + 3) / 4;
    for (unsigned long long q = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         q < quads; q += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned long long i0 = 4 * q;
        if (vec && i0 + 4 <= n) {
            float4 pp = reinterpret_cast<float4 *>(p)[q];
            const float4 gg = reinterpret_cast<const float4 *>(g)[q];
            float4 mm = reinterpret_cast<float4 *>(m)[q];
            float4 vv = reinterpret_cast<float4 *>(v)[q];
            s2t_adamw1(pp.x, gg.x, mm.x, vv.x, b1, omb1, b2, omb2, eps, decay, step, bc2s, gscale);
            s2t_adamw1(pp.y, gg.y, mm.y, vv.y, b1, omb1, b2, omb2, eps, decay, step, bc2s, gscale);
            s2t_adamw1(pp.z, gg.z, mm.z, vv.z, b1, omb1, b2, omb2, eps, decay, step, bc2s, gscale);
            s2t_adamw1(pp.w, gg.w, mm.w, vv.w, b1, omb1, b2, omb2, eps, decay, step, bc2s, gscale);
            reinterpret_cast<float4 *>(p)[q] = pp;
            reinterpret_cast<float4 *>(m)[q] = mm;
            reinterpret_cast<float4 *>(v)[q] = vv;
        } else {
            for (unsigned long long i = i0; i < i0 + 4 && i < n; i++)
                s2t_adamw1(p[i], g[i], m[i], v[i], b1, omb1, b2, omb2, eps, decay, step, bc2s,
                           gscale);
        }
    }
}

// acc[0] += sum of g^2: fp32 within a quad, fp64 from there on (a gradient can hold 1e8
// elements); the blocks' sums reach acc through s2t_grid_sum_d (a fixed order).
extern "C" __global__ void __launch_bounds__(S2_EW_THREADS)
s2_sumsq(const float *__restrict__ g, unsigned long long n, double *acc, double *ws_part,
         unsigned *ws_count, int vec)
{
    __shared__ double red[32];
    const unsigned long long quads = (n + 3) / 4;
    double s = 0.0;
    for (unsigned long long q = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         q < quads; q += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned long long i0 = 4 * q;
        float part = 0.f;
        if (vec && i0 + 4 <= n) {
            const float4 x = reinterpret_cast<const float4 *>(g)[q];
            part = x.x * x.x + x.y * x.y + x.z * x.z + x.w * x.w;
        } else {
            for (unsigned long long i = i0; i < i0 + 4 && i < n; i++)
                part += g[i] * g[i];
        }
        s += (double)part;
    }
    s = s2t_block_sum_d(s, red);
    s2t_grid_sum_d<1>(&s, acc, ws_part, ws_count);
}

// x *= s.
extern "C" __global__ void __launch_bounds__(S2_EW_THREADS)
s2_scale_f32(float *__restrict__ x, unsigned long long n, float s, int vec)
{
    const unsigned long long quads = (n + 3) / 4;
    for (unsigned long long q = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         q < quads; q += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned long long i0 = 4 * q;
        if (vec && i0 + 4 <= n) {
            float4 a = reinterpret_cast<float4 *>(x)[q];
            a.x *= s, a.y *= s, a.z *= s, a.w *= s;
            reinterpret_cast<float4 *>(x)[q] = a;
        } else {
            for (unsigned long long i = i0; i < i0 + 4 && i < n; i++)
                x[i] *= s;
        }
    }
}

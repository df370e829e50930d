// templates/attn_bwd_wgmma.cuh — S²-Attn backward for Hopper (sm_90a) on warpgroup products,
// the plan's tile option bwd_wgmma = 1. The same two deterministic kernels, grids, walks and
// masks as attn_bwd.cuh (after s2_attn_bwd_pre), the blocks' tiles taken longest work first
// (s2_block_tile); every product is a wgmma with the layouts of wgmma.cuh, and none needs a
// transpose in shared memory:
//   s2_attn_bwd_dq    per warpgroup 64 query rows: S = Q K^T (Q held as register A fragments,
//                     so the product reads only K from shared memory) and dP = dO V^T (K-major;
//                     at d = 64 dO in registers too), dS = P ∘ (dP - delta) in registers,
//                     dQ += dS K (dS as the register A fragment, K read MN-major), issued
//                     behind the next step's S and dP so it runs while that step's dS is
//                     formed; at its first step it forms delta = rowsum(dO ∘ O) of its rows
//                     (written for s2_attn_bwd_dkdv);
//   s2_attn_bwd_dkdv  per warpgroup 64 key rows: S^T = K Q^T and dP^T = V dO^T (K-major; at
//                     d = 64 on the cp.async walk K and V in registers, S2_BWD_RS_ALL),
//                     P^T and dS^T in registers (lse and delta per column from shared memory),
//                     dV += P^T dO and dK += dS^T Q (dO and Q read MN-major).
// S2_BWD_WARPS / 4 warpgroups a block; S2_BWD_BN rows per streamed tile, S2_BWD_STAGES deep.
// With S2_BWD_ATOMIC_DQ (S2_BWD_BN = 64) the dK/dV kernel also adds each tile's dQ = dS K into
// the fp32 accumulator (s2_dq_atomic_wg) and s2_attn_bwd_dq is not launched: five products
// per tile pair instead of seven, and a run-to-run order of the additions that is not fixed.
// With S2_BWD_TMA as well (s2_dq_product), each consumer warpgroup forms its part of dQ, which
// is added to the accumulator with bulk tensor reductions from shared memory; with
// S2_BWD_ATOMIC_DQ 2 (S2_BWD_DQ_ORDERED) in a fixed order, so that dQ too has the same bits
// every run (s2_dq_turn_wait).

#define S2_BWD_BM (16 * S2_BWD_WARPS)
#define S2_BWD_THREADS (32 * S2_BWD_WARPS)
#define S2_SACC (S2_BWD_BN / 2)
#define S2_OACC (S2_HEAD_DIM / 2)
// The first products' X operands that stay in registers for the whole walk: the dQ kernel's Q
// always (32 registers at d = 128 fit beside the rest), and at d = 64 (16 registers an operand)
// also its dO and the K and V of the dK/dV kernel's walk on cp.async without the atomic dQ (at
// d = 128 that kernel has no registers to spare).
#define S2_BWD_RS_ALL (S2_HEAD_DIM == 64)

// s = X1 Y1^T and dp = X2 Y2^T over the head dim, both overwritten, for this warpgroup's 64 rows
// from row r0 of the X tiles (S2_BWD_BM rows; either X may be register fragments instead,
// s2_wgmma_xt) against the streamed Y tiles (S2_BWD_BN rows): issued together as one group,
// not waited for.
template <class X1, class X2>
__device__ __forceinline__ void s2_wgmma_pair_issue(float (&s)[S2_SACC], float (&dp)[S2_SACC],
                                                    const X1 &x1, const s2_elem *y1,
                                                    const X2 &x2, const s2_elem *y2, int r0)
{
    s2_overwritten_regs(s);
    s2_overwritten_regs(dp);
    s2_wgmma_fence();
    s2_wgmma_xt<S2_BWD_BM, S2_BWD_BN>(s, x1, r0, y1);
    s2_wgmma_xt<S2_BWD_BM, S2_BWD_BN>(dp, x2, r0, y2);
    s2_wgmma_commit();
}

// The same, waited for.
template <class X1, class X2>
__device__ __forceinline__ void s2_wgmma_pair(float (&s)[S2_SACC], float (&dp)[S2_SACC],
                                              const X1 &x1, const s2_elem *y1,
                                              const X2 &x2, const s2_elem *y2, int r0)
{
    s2_wgmma_pair_issue(s, dp, x1, y1, x2, y2, r0);
    s2_wgmma_wait0();
    s2_fence_regs(s);
    s2_fence_regs(dp);
}

// The streamed tiles of a walk whose step also reads the tile before it (its second products
// run behind the next step's first ones), so tiles are loaded STAGES - 2 steps ahead; load(j)
// copies tile j into stage j % STAGES (this thread's share). Two ways to hand a stage from the
// copies to the products and back, the plan's bwd_mbar:
//   0  cp.async commit groups and a block barrier a step (with two stages, two);
//   1  a ring of mbarriers, bars[st] (full: every thread's copies of the stage's tile have
//      landed, each thread arriving through cp.async.mbarrier.arrive.noinc) and
//      bars[STAGES + st] (empty: every thread is done with it), so the two warpgroups of a
//      block run apart and take turns issuing their first products (s2_turn_*). o_stage: the
//      last stage first holds the block's own rows (the dQ kernel's O), released once by every
//      thread before its first tile. bars is unused with bwd_mbar 0.
#define S2_BWD_TURNS (S2_BWD_MBAR && S2_BWD_WARPS == 8)

__device__ __forceinline__ void s2_ring_init(unsigned long long *bars)
{
#if S2_BWD_MBAR
    s2_mbar_ring_init(bars, 2 * S2_BWD_STAGES, S2_BWD_THREADS);
#else
    (void)bars;
#endif
}

// This thread's copies of tile j (j < n_tiles), with bwd_mbar once every thread is done with
// the tile the stage held before.
template <class Load>
__device__ __forceinline__ void s2_ring_load(unsigned long long *bars, int j, bool o_stage,
                                             Load load)
{
#if S2_BWD_MBAR
    const int st = j % S2_BWD_STAGES;
    const int phase = j / S2_BWD_STAGES - 1 + (o_stage && st == S2_BWD_STAGES - 1);
    if (phase >= 0)
        s2_mbar_wait(&bars[S2_BWD_STAGES + st], phase & 1);
    load(j);
    s2_mbar_arrive_copies(&bars[st]);
#else
    (void)bars, (void)o_stage;
    load(j);
#endif
}

// The first tiles (after the block's own rows, whose copies land with tile 0's); one commit
// group each with bwd_mbar 0.
template <class Load>
__device__ __forceinline__ void s2_ring_prologue(unsigned long long *bars, int n_tiles, Load load)
{
#pragma unroll
    for (int j = 0; j < S2_BWD_STAGES - 2; j++) {
        if (j < n_tiles)
            s2_ring_load(bars, j, false, load);
#if !S2_BWD_MBAR
        s2_cp_async_commit();
#endif
    }
}

// The top of step it: tile it has landed for every thread and is visible to this thread's
// products. bwd_mbar 0: after the (first) barrier, and every thread is done with tile it - 2
// (its products waited for in step it - 1), whose stage s2_overlap_products reloads with tile
// it + STAGES - 2 behind the step's S and dP (with two stages, tile it itself, here, behind a
// second barrier).
template <class Load>
__device__ __forceinline__ void s2_ring_top(unsigned long long *bars, int it, Load load)
{
#if S2_BWD_MBAR
    static_assert(S2_BWD_STAGES >= 3 || S2_BWD_ATOMIC_DQ, // (then no dQ kernel runs)
                  "the plan refuses bwd_mbar with two stages (they spill)");
    (void)load;
    s2_mbar_wait(&bars[it % S2_BWD_STAGES], (it / S2_BWD_STAGES) & 1);
    s2_fence_proxy_async(); // every thread's copies, visible to this thread's wgmma
#elif S2_BWD_STAGES >= 3
    (void)bars, (void)load; // loaded by s2_overlap_products, behind S and dP
    s2_cp_async_wait<S2_BWD_STAGES - 3>();
    s2_fence_proxy_async(); // this thread's copies, visible to wgmma after the barrier
    __syncthreads();
#else
    (void)bars;
    __syncthreads();
    load(it);
    s2_cp_async_commit();
    s2_cp_async_wait<0>();
    s2_fence_proxy_async();
    __syncthreads();
#endif
}

// This thread is done with tile j (its step's products and the next step's, waited for).
__device__ __forceinline__ void s2_ring_release(unsigned long long *bars, int j)
{
#if S2_BWD_MBAR
    s2_mbar_arrive(&bars[S2_BWD_STAGES + j % S2_BWD_STAGES]);
#else
    (void)bars, (void)j;
#endif
}

// Step it's S and dP (s2_wgmma_pair_issue; with bwd_mbar and two warpgroups, warpgroup wg's
// turn), then, with three or more stages, this thread's copies of tile it + STAGES - 2 (one
// commit group with bwd_mbar 0; measured 1.3 % faster here than before the products, and
// 10 % slower after the second ones), then, from the second step on, the step before's second
// products (prev issues them; committed here as one group); waits for S and dP only.
template <class X1, class X2, class Prev, class Load>
__device__ __forceinline__ void s2_overlap_products(int it, float (&s)[S2_SACC],
                                                    float (&dp)[S2_SACC], const X1 &x1,
                                                    const s2_elem *y1, const X2 &x2,
                                                    const s2_elem *y2, int wg, Prev prev,
                                                    int n_tiles, unsigned long long *bars,
                                                    bool o_stage, Load load)
{
#if S2_BWD_TURNS
    s2_turn_wait(wg);
#endif
    s2_wgmma_pair_issue(s, dp, x1, y1, x2, y2, wg * 64);
#if S2_BWD_TURNS
    s2_turn_pass(wg);
#endif
#if S2_BWD_STAGES >= 3
    if (it + S2_BWD_STAGES - 2 < n_tiles)
        s2_ring_load(bars, it + S2_BWD_STAGES - 2, o_stage, load);
#if !S2_BWD_MBAR
    s2_cp_async_commit();
#endif
#endif
    if (it > 0) {
        prev();
        s2_wgmma_commit();
        s2_wgmma_wait1();
    } else {
        s2_wgmma_wait0();
    }
    s2_fence_regs(s);
    s2_fence_regs(dp);
}

// delta = rowsum(dO ∘ O) of this thread's rows r and r + 8 of the block's tiles (swizzled
// panels of S2_BWD_BM rows in shared memory; x the first row's query), the quad sharing
// each row's columns; written to delta [H, T] by the quad's first thread (rows before n).
__device__ __forceinline__ void s2_delta_rows(float (&dlt)[2], const s2_elem *so,
                                              const s2_elem *sdo, float *delta, int r, int x,
                                              int n, int seq0, int cls, int h, int total_tokens,
                                              int lane)
{
    constexpr int CHUNKS = S2_HEAD_DIM / 8; // 16-byte chunks a row, CHUNKS / 4 a thread
    const int t = lane % 4;
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        const int rr = r + 8 * hf;
        float acc = 0.f;
#pragma unroll
        for (int j = 0; j < CHUNKS / 4; j++) {
            const int c = t * (CHUNKS / 4) + j;
            const int at = (c / 8) * (S2_BWD_BM * 64) + rr * 64 + (((c % 8) ^ (rr % 8)) * 8);
            const uint4 a = *reinterpret_cast<const uint4 *>(so + at);
            const uint4 b = *reinterpret_cast<const uint4 *>(sdo + at);
            const unsigned aw[4] = {a.x, a.y, a.z, a.w}, bw[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int w = 0; w < 4; w++) {
                const float2 fa = s2_to_f32x2(aw[w]), fb = s2_to_f32x2(bw[w]);
                acc = fmaf(fa.x, fb.x, acc);
                acc = fmaf(fa.y, fb.y, acc);
            }
        }
        acc += __shfl_xor_sync(0xffffffffu, acc, 1);
        acc += __shfl_xor_sync(0xffffffffu, acc, 2);
        dlt[hf] = acc;
        const int xx = x + 8 * hf;
        if (t == 0 && xx < n)
            delta[(long)h * total_tokens + seq0 + s2_position(xx, cls, n)] = acc;
    }
}

extern "C" __global__ void __launch_bounds__(S2_BWD_THREADS, 1)
s2_attn_bwd_dq(const s2_elem *__restrict__ q, const s2_elem *__restrict__ k,
               const s2_elem *__restrict__ v, const s2_elem *__restrict__ dout,
               const s2_elem *__restrict__ o,   // [T, H, d]
               const float *__restrict__ lse,   // [H, T]
               float *__restrict__ delta,       // [H, T], written here for the dK/dV kernel
               s2_elem *__restrict__ dq,        // [T, H, d]
#if S2_WINDOW
               const int *__restrict__ cu_seqlens, int total_tokens, int win_qlo, int win_klo)
#else
               const int *__restrict__ cu_seqlens, int total_tokens)
#endif
{
    s2_grid_dependency();
    extern __shared__ __align__(16) unsigned char s2_smem_raw[];
    s2_elem *sq = (s2_elem *)s2_smem_aligned(s2_smem_raw); // [panels][BM][64]
    s2_elem *sdo = sq + S2_BWD_BM * S2_HEAD_DIM;             // [panels][BM][64]
    s2_elem *skv = sdo + S2_BWD_BM * S2_HEAD_DIM;            // [stages][K, V][panels][BN][64]
    const int kv_stride = S2_BWD_BN * S2_HEAD_DIM;

    int h, tile;
    s2_block_tile<S2_BWD_BM, true, 1>(h, tile);
    const int b = blockIdx.z;
    const int hk = h / (S2_NUM_HEADS / S2_NUM_KV_HEADS);
#if S2_WINDOW
    const int seq0 = -win_qlo, n = win_qlo + total_tokens; // one sequence: b = 0
    (void)b;
    const int cls = s2_head_class(h);
    const int x0 = (s2_window_tile0<S2_BWD_BM>(win_qlo) + tile) * S2_BWD_BM;
    if (x0 >= n || x0 < win_qlo)
        return;
#else
    const int seq0 = cu_seqlens[b], n = cu_seqlens[b + 1] - seq0;
    const int cls = s2_head_class(h);
    const int x0 = tile * S2_BWD_BM;
    if (x0 >= n)
        return;
#endif
    const int wg = threadIdx.x / 128, warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
    const int t = lane % 4;
    const int xlast = min(x0 + S2_BWD_BM, n) - 1;
    const int gs_last = s2_group_start(xlast, cls);
    const int kt_begin = s2_group_start(x0, cls) / S2_BWD_BN;
    const int kt_end = xlast / S2_BWD_BN + 1;
    const int row0 = x0 + wg * 64 + warp * 16 + lane / 4;

    // Key tile j of the walk into stage j % STAGES, this thread's share.
    auto load_kv = [&](int j) {
        s2_elem *dk = skv + 2 * (j % S2_BWD_STAGES) * kv_stride;
        s2_load_tile_sw<S2_BWD_BN, S2_BWD_THREADS>(dk, k, seq0, (kt_begin + j) * S2_BWD_BN, n, cls, S2_NUM_KV_HEADS, hk);
        s2_load_tile_sw<S2_BWD_BN, S2_BWD_THREADS>(dk + kv_stride, v, seq0, (kt_begin + j) * S2_BWD_BN, n, cls, S2_NUM_KV_HEADS, hk);
    };
    const int n_kt = kt_end - kt_begin;
    // Step j's S and dP run beside dQ += dS K of step j - 1, which reads K of tile j - 1.
    // This block's O rows go into the last stage, which no tile reaches before the top of step
    // 1: delta = rowsum(dO ∘ O) is formed at step 0 (written for the dK/dV kernel), in place
    // of a pass of its own.
    s2_elem *so = skv + 2 * (S2_BWD_STAGES - 1) * kv_stride;
    static_assert(S2_BWD_STAGES >= 2 && S2_BWD_BM <= 2 * S2_BWD_BN,
                  "a step reads the tile before it; O's rows fit one stage");
    s2_load_tile_sw<S2_BWD_BM, S2_BWD_THREADS>(sq, q, seq0, x0, n, cls, S2_NUM_HEADS, h);
    s2_load_tile_sw<S2_BWD_BM, S2_BWD_THREADS>(sdo, dout, seq0, x0, n, cls, S2_NUM_HEADS, h);
    unsigned long long *bars = (unsigned long long *)(skv + 2 * S2_BWD_STAGES * kv_stride);
    s2_ring_init(bars);
    s2_load_tile_sw<S2_BWD_BM, S2_BWD_THREADS>(so, o, seq0, x0, n, cls, S2_NUM_HEADS, h);
    s2_ring_prologue(bars, n_kt, load_kv);

    float lse2[2], dlt[2];
    int klo[2], khi[2]; // the keys each of this thread's rows sees
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        const int x = row0 + 8 * hf;
        s2_query_span(x, cls, n, klo[hf], khi[hf]);
        lse2[hf] = x < n ? lse[(long)h * total_tokens + seq0 + s2_position(x, cls, n)] * S2_LOG2E
                         : 0.f;
    }
    float acc[S2_OACC];
#pragma unroll
    for (int i = 0; i < S2_OACC; i++)
        acc[i] = 0.f;
    unsigned a[S2_BWD_BN / 16][4]; // dS of the step before, as the A fragments of dQ += dS K
    unsigned qa[S2_HEAD_DIM / 16][4]; // this warpgroup's Q rows, the A fragments of S = Q K^T
#if S2_BWD_RS_ALL
    unsigned doa[S2_HEAD_DIM / 16][4]; // and its dO rows, of dP = dO V^T
    const auto &x_do = doa;
#else
    const s2_elem *x_do = sdo;
#endif

#if S2_BWD_TURNS
    s2_turn_start(wg);
#endif
    for (int it = 0; it < n_kt; it++) {
        s2_ring_top(bars, it, load_kv);
        if (it == 0) { // Q, dO and O have landed; O's stage is free once every thread is done
            s2_delta_rows(dlt, so, sdo, delta, row0 - x0, row0, n, seq0, cls, h, total_tokens,
                          lane);
            s2_ring_release(bars, S2_BWD_STAGES - 1);
            s2_rows_to_afrag<S2_BWD_BM>(qa, sq, row0 - x0, lane);
#if S2_BWD_RS_ALL
            s2_rows_to_afrag<S2_BWD_BM>(doa, sdo, row0 - x0, lane);
#endif
        }
        const s2_elem *sk = skv + 2 * (it % S2_BWD_STAGES) * kv_stride;
        const s2_elem *sv = sk + kv_stride;

        // S = Q K^T and dP = dO V^T, then dQ += dS K of the step before behind them; wait for
        // S and dP only
        float s[S2_SACC], dp[S2_SACC];
        s2_fence_regs(acc);
        s2_overlap_products(it, s, dp, qa, sk, x_do, sv, wg, [&] {
            s2_wgmma_py<S2_BWD_BN>(acc, a, skv + 2 * ((it - 1) % S2_BWD_STAGES) * kv_stride);
        }, n_kt, bars, true, load_kv);

        // dS = P ∘ (dP - delta) in place of S; packed into the fragments once the product of
        // the step before is done with them
        const int y0 = (kt_begin + it) * S2_BWD_BN;
        const bool masked = s2_tile_needs_mask(x0, gs_last, y0, n, S2_BWD_BN);
#pragma unroll
        for (int i = 0; i < S2_SACC; i++) { // n8 chunk i / 4, row half (i / 2) % 2
            const int hf = (i / 2) % 2;
            bool live = true;
            if (masked) {
                const int y = y0 + (i / 4) * 8 + 2 * t + i % 2;
                live = y >= klo[hf] && y <= khi[hf];
            }
            const float p = live ? s2_exp2(fmaf(s[i], S2_SCALE_LOG2, -lse2[hf])) : 0.f;
            s[i] = p * (dp[i] - dlt[hf]);
        }
        s2_wgmma_wait0();
        s2_fence_regs(acc);
        s2_acc_to_afrag<S2_BWD_BN / 8>(s, a);
        if (it > 0)
            s2_ring_release(bars, it - 1);
    }
#if S2_BWD_TURNS
    s2_turn_end(wg);
#endif
    if (n_kt > 0) { // the last step's dQ += dS K
        s2_fence_regs(acc);
        s2_wgmma_fence();
        s2_wgmma_py<S2_BWD_BN>(acc, a, skv + 2 * ((n_kt - 1) % S2_BWD_STAGES) * kv_stride);
        s2_wgmma_commit();
        s2_wgmma_wait0();
        s2_fence_regs(acc);
    }
    s2_cp_async_wait<0>();
    s2_store_strip(dq, S2_NUM_HEADS, h, *reinterpret_cast<const float(*)[S2_ON][4]>(acc),
                   S2_SCALE, row0, n, seq0, cls, lane);
}

#if S2_BWD_ATOMIC_DQ
// The warpgroup's dS^T (64 keys x 64 queries, as the packed A fragments of the dK product)
// into rows 64 wg .. 64 wg + 63 of the staged tile [S2_BWD_BM keys][64 queries], swizzled like
// a panel.
__device__ __forceinline__ void s2_stage_dst(s2_elem *sds, const unsigned (&da)[4][4], int wg,
                                             int warp, int lane)
{
    const int t = lane % 4;
#pragma unroll
    for (int j = 0; j < 8; j++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            const int r = wg * 64 + warp * 16 + lane / 4 + 8 * hf, c = j * 8 + 2 * t;
            *reinterpret_cast<unsigned *>(sds + r * 64 + ((j ^ (r % 8)) * 8) + (c % 8)) =
                da[j / 2][2 * (j % 2) + hf];
        }
}

// dQ[x0 + i] += sum over the block's S2_BWD_BM keys y of dS[x0 + i][y] K[y], for the 64 queries
// of the tile: warpgroup wg takes the 64-dim panels wg, wg + 2, ... of the head dim; A = dS
// (64 queries x 16 keys a step) read MN-major from the staged dS^T, B = K (16 keys x 64 dims)
// read MN-major from the block's K panel; one fp32 atomic per element (scaled on conversion).
__device__ __forceinline__ void s2_dq_atomic_wg(const s2_elem *sds, const s2_elem *sk,
                                                float *dq_acc, int h, int x0, int n, int seq0,
                                                int cls, int wg, int warp, int lane)
{
    constexpr int WGS = S2_BWD_WARPS / 4;
    const int t = lane % 4;
    for (int c = wg; c < S2_HEAD_DIM / 64; c += WGS) {
        float dq[32];
        s2_overwritten_regs(dq);
        s2_wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < S2_BWD_BM / 16; kk++)
            s2_wgmma_tt(dq, s2_desc_mn<S2_BWD_BM>(sds, kk),
                        s2_desc_mn<S2_BWD_BM>(sk + c * S2_BWD_BM * 64, kk), kk > 0);
        s2_wgmma_commit();
        s2_wgmma_wait0();
        s2_fence_regs(dq);
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            const int x = x0 + warp * 16 + lane / 4 + 8 * hf;
            if (x >= n)
                continue;
            float *row = dq_acc +
                         ((long)(seq0 + s2_position(x, cls, n)) * S2_NUM_HEADS + h) * S2_HEAD_DIM +
                         c * 64 + 2 * t;
#pragma unroll
            for (int j = 0; j < 8; j++) {
                atomicAdd(row + j * 8, dq[4 * j + 2 * hf]);
                atomicAdd(row + j * 8 + 1, dq[4 * j + 2 * hf + 1]);
            }
        }
    }
}
#endif

#if S2_BWD_TMA
#if S2_BWD_ATOMIC_DQ
// The atomic dQ of the TMA dK/dV kernel. Each consumer warpgroup adds its part of the dQ of a
// step's 64 queries, dQ[x0 + i] += sum over keys y of dS[x0 + i][y] K[y], to dq_acc [T, H, d]
// with cp.reduce.async.bulk.tensor (rows x0 .. x0 + 63 of head h: a split-mode tile's rows are
// consecutive positions; rows past the sequence's end add dS = 0) from its two fp32 boxes (sdq:
// [2][64 rows][32], 128-byte swizzled as the tensor map reads them, so a quad's stores meet no
// bank conflict). dS^T is staged in shared memory (rows 64 wg .. of [S2_BWD_BM keys][64
// queries]) and read MN-major with K, as in s2_dq_atomic_wg. Thread 0 of a warpgroup issues
// the reductions, and waits for those of before to have read the boxes before the warpgroup
// writes them again; but with the ordered dQ (S2_DQ_REDUCER) the reducer, a thread of the
// producer warpgroup, issues them and waits for the turns (s2_dq_reducer), so that no consumer
// waits for a reduction or a turn.
//
// At head_dim 64 (s2_dq_tma_step) each warpgroup takes every dim over its own 64 keys, in the
// step itself, with no barrier between the warpgroups (both add to the same rows). Either way
// dS^T is staged before the dK product is issued: the A fragments of a wgmma in flight may not
// be read.
//
// At head_dim 128 (S2_DQ_SPLIT_DIMS: s2_dq_stage, then s2_dq_lagged) warpgroup wg takes dims
// 64 wg .. 64 wg + 63 over all the block's keys, so it needs the other warpgroup's dS^T too,
// and takes it one step late so that neither waits for the other: at step it each stages its
// dS^T of step it into buffer it % 2 and then forms the dQ of step it - 1 from buffer
// (it - 1) % 2, which the other staged a step ago. Four mbarriers a buffer and warpgroup hand
// the buffers over (dbar: full[wg][b] = dbar[2 wg + b], one arrival when warpgroup wg has
// staged b; empty[wg][b] = dbar[4 + 2 wg + b], one arrival when its dQ has read b), and with
// the reducer two a warpgroup its boxes (boxes-full[wg] = dbar[8 + wg], one arrival when it has
// written them; boxes-empty[wg] = dbar[10 + wg], the reducer's once its reductions have read
// them); the last step's dQ comes after the loop.
//
// The reducer serves the ordered dQ only: on an H100 it took the ordered dQ's backward from 364
// to 425-436 TF/s at 32k, but the atomic dQ's from 465 to 411-420 (bench/RESULTS.md, session
// 19), so the atomic dQ keeps its consumers issuing.
#define S2_DQ_SPLIT_DIMS (S2_HEAD_DIM == 128)
#define S2_BWD_DQ_ORDERED (S2_BWD_ATOMIC_DQ == 2)
#define S2_DQ_REDUCER S2_BWD_DQ_ORDERED
// the handover mbarriers (dbar), after the block's others
#define S2_DQ_MBARS (S2_DQ_SPLIT_DIMS ? (S2_DQ_REDUCER ? 12 : 8) : 0)

// One bulk group: the bulk reductions of a warpgroup's two dQ boxes (sdq, dims 64 c ..
// 64 c + 63) into rows row .. row + 63 of head h of the accumulator.
__device__ __forceinline__ void s2_dq_reduce(const s2_tmap *tm_dq, const float *sdq, int c, int h,
                                             int row)
{
#pragma unroll
    for (int bx = 0; bx < 2; bx++)
        asm volatile("cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.tile.bulk_group"
                     " [%0, {%1, %2, %3}], [%4];\n" ::"l"((unsigned long long)tm_dq),
                     "r"(64 * c + 32 * bx), "r"(h), "r"(row),
                     "r"(s2_smem_addr(sdq + bx * 64 * 32))
                     : "memory");
    asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}

// The warpgroup's dQ product (dims 64 c .., keys 16 k0 .. 16 (k0 + KN) - 1 of the staged dS^T
// at sds) waited for (and the products issued before it with it) and written into its boxes;
// `done` runs on thread 0 once every thread of the warpgroup has written them (and is done
// reading sds): it has them added (s2_dq_reduce).
template <int KN, class Done>
__device__ __forceinline__ void s2_dq_product(const s2_elem *sds, const s2_elem *sk, float *sdq,
                                              int c, int k0, int wg, int warp, int lane,
                                              Done done)
{
    const int tid = threadIdx.x % 128, t = lane % 4;
    float dq[32];
    s2_overwritten_regs(dq);
    s2_wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < KN; kk++)
        s2_wgmma_tt(dq, s2_desc_mn<S2_BWD_BM>(sds, k0 + kk),
                    s2_desc_mn<S2_BWD_BM>(sk + c * S2_BWD_BM * 64, k0 + kk), kk > 0);
    s2_wgmma_commit();
    s2_wgmma_wait0();
    s2_fence_regs(dq);
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        const int r = warp * 16 + lane / 4 + 8 * hf;
#pragma unroll
        for (int j = 0; j < 8; j++) { // dims 64 c + 8 j + 2 t, + 1: box j / 4
            const int chunk = 2 * (j % 4) + t / 2;
            *reinterpret_cast<float2 *>(sdq + (j / 4) * (64 * 32) + r * 32 +
                                        ((chunk ^ (r % 8)) * 4) + 2 * (t % 2)) =
                make_float2(dq[4 * j + 2 * hf], dq[4 * j + 2 * hf + 1]);
        }
    }
    s2_fence_proxy_async(); // the boxes, read by the bulk reductions
    asm volatile("bar.sync %0, 128;\n" ::"r"(3 + wg) : "memory");
    if (tid == 0)
        done();
}

// The ordered dQ's turn counters, after dq_acc ([T, H, d] fp32) in the workspace.
__device__ __forceinline__ unsigned *s2_dq_turns(float *dq_acc, int total_tokens)
{
    return (unsigned *)(dq_acc + (long)total_tokens * S2_NUM_HEADS * S2_HEAD_DIM);
}
#if S2_BWD_DQ_ORDERED
// The ordered dQ (head_dim 128). The blocks that add to a 64-row query tile i of head h are
// those of the key tiles (of S2_BWD_BM keys) from the first that tile i's rows see up to the
// one on its diagonal, i * 64 / S2_BWD_BM: a contiguous range, whose blocks add in descending
// order, each once its turn has come. Every (head, query tile) has a turn counter,
// turns[h * T + its first row] ([H][T] u32 after dq_acc in the workspace, zeroed with it): the
// block of key tile j waits until it reads 2 (i * 64 / S2_BWD_BM - j), every block above it
// having added 2 once its reductions (both warpgroups' dims) have completed. A block only ever
// waits for blocks of higher key tiles, and takes its tile from a ticket (s2_dq_ordered_block)
// in an order that gives those tiles earlier tickets, so they are running or done: no block
// waits for one that cannot start. The block's reducer (s2_dq_reducer) waits before it issues
// a step's reductions, and arrives one step after, once they have completed.
__device__ __forceinline__ void s2_dq_turn_wait(const unsigned *turn, unsigned want)
{
    for (;;) {
        unsigned seen;
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(seen) : "l"(turn) : "memory");
        if (seen >= want)
            break;
        __nanosleep(32);
    }
    asm volatile("fence.proxy.async.global;\n" ::: "memory"); // before the bulk reductions
}

// The arrival (2) once every bulk group but the newest `Newer` has completed (written, not only
// read): the step before's reductions with Newer 2, the last step's with 0.
template <int Newer>
__device__ __forceinline__ void s2_dq_turn_pass(unsigned *turn)
{
    asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(Newer) : "memory");
    asm volatile("fence.proxy.async.global;\n" ::: "memory"); // the reductions' writes first
    asm volatile("red.release.gpu.global.add.u32 [%0], 2;\n" ::"l"(turn) : "memory");
}

// This block's (kv head, key tile, sequence): thread 0 takes the launch's next ticket (the
// counter after the turn counters); ticket order is the batch's sequences in turn, in each the
// kv heads in chunks as s2_block_tile takes them, in a chunk the key tiles from the last down,
// each for the chunk's heads. (The longest-work-first order cannot be kept: a group's lowest
// key tile walks the most query tiles and has to add last.)
__device__ __forceinline__ void s2_dq_ordered_block(unsigned *ticket, int &hk, int &tile,
                                                    int &b)
{
    __shared__ int lin;
    if (threadIdx.x == 0)
        lin = (int)atomicAdd(ticket, 1u);
    __syncthreads();
    const int tiles = gridDim.x, heads = gridDim.y;
    b = lin / (tiles * heads);
    const int j = lin - b * tiles * heads;
    int h0, in_chunk;
    s2_head_chunk<S2_BWD_BM>(j, tiles, heads, h0, in_chunk);
    const int m = j - h0 * tiles, k = m / in_chunk;
    hk = h0 + (m - k * in_chunk);
    tile = tiles - 1 - k;
}
#endif

#if S2_DQ_SPLIT_DIMS
// Step it's dS^T of warpgroup wg into buffer it % 2, once the other warpgroup's dQ of step
// it - 2 has read it; then full[wg][it % 2]. Without the reducer thread 0 first waits for the
// warpgroup's boxes to have been read (the barrier passes that on).
__device__ __forceinline__ void s2_dq_stage(const unsigned (&da)[4][4], s2_elem *sds,
                                            unsigned long long *dbar, int it, int wg, int warp,
                                            int lane)
{
    const int b = it % 2;
#if !S2_DQ_REDUCER
    if (threadIdx.x % 128 == 0)
        asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
#endif
    if (it >= 2)
        s2_mbar_wait(&dbar[4 + 2 * (1 - wg) + b], ((it - 2) / 2) & 1);
    s2_stage_dst(sds + b * S2_BWD_BM * 64, da, wg, warp, lane);
    s2_fence_proxy_async(); // the staged dS^T, read by the wgmma of both warpgroups
    asm volatile("bar.sync %0, 128;\n" ::"r"(3 + wg) : "memory");
    if (threadIdx.x % 128 == 0)
        s2_mbar_arrive(&dbar[2 * wg + b]);
}

// The dQ of step j from buffer j % 2, once the other warpgroup has staged its rows there, into
// the warpgroup's boxes; then empty[wg][j % 2]. With the reducer the boxes are written once it
// has read them for step j - 1 (boxes-empty[wg] = dbar[10 + wg]) and handed to it
// (boxes-full[wg] = dbar[8 + wg]); without, thread 0 adds them to rows row .. of head h.
__device__ __forceinline__ void s2_dq_lagged(const s2_elem *sds, const s2_elem *sk, float *sdq,
                                             const s2_tmap *tm_dq, unsigned long long *dbar,
                                             int j, int h, int row, int wg, int warp, int lane)
{
    const int b = j % 2;
    s2_mbar_wait(&dbar[2 * (1 - wg) + b], (j / 2) & 1);
#if S2_DQ_REDUCER
    (void)tm_dq, (void)h, (void)row;
    if (j > 0)
        s2_mbar_wait(&dbar[10 + wg], (j - 1) & 1);
#endif
    s2_dq_product<S2_BWD_BM / 16>(sds + b * S2_BWD_BM * 64, sk, sdq, wg, 0, wg, warp, lane, [&] {
        s2_mbar_arrive(&dbar[4 + 2 * wg + b]);
#if S2_DQ_REDUCER
        s2_mbar_arrive(&dbar[8 + wg]);
#else
        s2_dq_reduce(tm_dq, sdq, wg, h, row);
#endif
    });
}

#if S2_DQ_REDUCER
// The reducer, one thread of the producer warpgroup: the steps in walk order (head h, query
// tile qt, as the producer loads them), each consumer's boxes added to the accumulator once it
// has written them (boxes-full[wg]), and handed back once read (boxes-empty[wg]). The consumers
// never wait for a reduction or a turn; the reducer does: each step's reductions once its turn
// has come, its arrival once they have completed, a step later (the newest two bulk groups,
// the step's own, may still be in flight), the last step's at the end. Every reduction has
// completed before the reducer leaves, so the block's shared memory stays until then.
__device__ __forceinline__ void s2_dq_reducer(const s2_tmap *tm_dq, const float *sdq,
                                              unsigned long long *dbar, float *dq_acc,
                                              int total_tokens, int h, int seq0, int qt_begin,
                                              int n_qt, int n_it)
{
#if S2_WINDOW
#error "the window units' twin of the ordered dQ is the dQ kernel"
#endif
    // (the walk with counters only: the reducer has 40 registers, S2_DKDV_PRODUCER_REGS)
    const int row0 = seq0 + qt_begin * S2_BWD_BN;
    int row = row0, in_head = n_qt;
    // (the walk's first query tile is the key tile's diagonal: qt_begin S2_BWD_BN = y0 =
    // tile S2_BWD_BM, so query tile qt's turn, 2 (qt S2_BWD_BN / S2_BWD_BM - tile), is
    // 2 ((row - row0) / S2_BWD_BM))
    unsigned *turn = s2_dq_turns(dq_acc, total_tokens) + ((long)h * total_tokens + row0);
    unsigned *pend = nullptr;
#pragma unroll 1
    for (int j = 0; j < n_it; j++) {
        s2_dq_turn_wait(turn, 2u * (unsigned)((row - row0) / S2_BWD_BM));
#pragma unroll
        for (int wg = 0; wg < 2; wg++) {
            s2_mbar_wait(&dbar[8 + wg], j & 1);
            s2_dq_reduce(tm_dq, sdq + wg * 64 * 64, wg, h, row);
        }
        asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
        s2_mbar_arrive(&dbar[10]);
        s2_mbar_arrive(&dbar[11]);
        if (pend)
            s2_dq_turn_pass<2>(pend);
        pend = turn;
        row += S2_BWD_BN, turn += S2_BWD_BN;
        if (--in_head == 0) { // the next head's walk
            in_head = n_qt, h++, row = row0;
            turn += total_tokens - n_qt * S2_BWD_BN;
        }
    }
    if (pend)
        s2_dq_turn_pass<0>(pend);
    asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}
#endif
#else
static_assert(!S2_BWD_DQ_ORDERED, "the plan refuses the ordered dQ at head_dim 64");
// The step's dQ of warpgroup wg over its own keys (head_dim 64), its dS^T staged by the caller
// (s2_stage_dst).
__device__ __forceinline__ void s2_dq_tma_step(const s2_elem *sds, const s2_elem *sk, float *sdq,
                                               const s2_tmap *tm_dq, int h, int row, int wg,
                                               int warp, int lane)
{
    if (threadIdx.x % 128 == 0)
        asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
    s2_fence_proxy_async(); // the staged dS^T, read by this warpgroup's wgmma
    asm volatile("bar.sync %0, 128;\n" ::"r"(3 + wg) : "memory");
    s2_dq_product<4>(sds, sk, sdq, 0, 4 * wg, wg, warp, lane,
                     [&] { s2_dq_reduce(tm_dq, sdq, 0, h, row); });
}
#endif
#endif
#endif

// P^T = exp2(S^T scale log2(e) - lse log2(e)) in place of this thread's S^T accumulators
// (rows: its two keys, seen by the queries [qlo, qhi] each (s2_key_span); columns: queries
// x0 + 8 j + 2 t + e % 2), 0 where the pair is masked (only in tiles that need it); lse per
// query column in shared memory.
__device__ __forceinline__ void s2_pt_in_place(float (&s)[S2_SACC], const float *slse,
                                               bool masked, int x0, const int (&qlo)[2],
                                               const int (&qhi)[2], int t)
{
#pragma unroll
    for (int j = 0; j < S2_BWD_BN / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int col = j * 8 + 2 * t + (e % 2);
            bool live = true;
            if (masked) {
                const int x = x0 + col;
                live = x >= qlo[e / 2] && x <= qhi[e / 2];
            }
            s[4 * j + e] =
                live ? s2_exp2(fmaf(s[4 * j + e], S2_SCALE_LOG2, -slse[col] * S2_LOG2E)) : 0.f;
        }
}

#if S2_BWD_TMA // (the option blocks of the TMA dK/dV kernel: templates/tma.cuh says how it works)
#define S2_DKDV_BLOCK (S2_BWD_THREADS + 128) // the threads that compute, and the producer's
// full[st]'s arrivals a phase: the issuing thread's arrive.expect_tx, and each of the producer
// warp's 32 threads once its cp.async copies of lse and delta have landed
#define S2_DKDV_FULL_ARRIVALS 33
// The producer warpgroup's registers a thread after setmaxnreg, and the consumers' (the rest of
// the SM's 65536, a multiple of 8): 24 and 240, or with the reducer (s2_dq_reducer) 40 and 232
// (at 32 ptxas spills in the loader).
#if S2_DQ_REDUCER
#define S2_DKDV_PRODUCER_REGS 40
#else
#define S2_DKDV_PRODUCER_REGS 24
#endif
#define S2_DKDV_CONSUMER_REGS ((65536 / 128 - S2_DKDV_PRODUCER_REGS) / 2 / 8 * 8)
extern "C" __global__ void __launch_bounds__(S2_DKDV_BLOCK, 1)
#else
extern "C" __global__ void __launch_bounds__(S2_BWD_THREADS, 1)
#endif
s2_attn_bwd_dkdv(const s2_elem *__restrict__ q, const s2_elem *__restrict__ k,
                 const s2_elem *__restrict__ v, const s2_elem *__restrict__ dout,
                 const float *__restrict__ lse, const float *__restrict__ delta,
                 s2_elem *__restrict__ dk,   // [T, Hkv, d]
                 s2_elem *__restrict__ dv,   // [T, Hkv, d]
                 float *__restrict__ dq_acc, // [T, H, d] fp32, zeroed: S2_BWD_ATOMIC_DQ only
#if S2_WINDOW
                 const int *__restrict__ cu_seqlens, int total_tokens, int win_qlo, int win_klo)
#else
#if S2_BWD_TMA
                 const int *__restrict__ cu_seqlens, int total_tokens,
                 const __grid_constant__ s2_tmap tm_q,   // q, k, v, dout as tensor maps
                 const __grid_constant__ s2_tmap tm_k, const __grid_constant__ s2_tmap tm_v,
                 const __grid_constant__ s2_tmap tm_do,
                 const __grid_constant__ s2_tmap tm_dq) // dq_acc (fp32): S2_BWD_ATOMIC_DQ only
#else
                 const int *__restrict__ cu_seqlens, int total_tokens)
#endif
#endif
{
    s2_grid_dependency();
    extern __shared__ __align__(16) unsigned char s2_smem_raw[];
    s2_elem *sk = (s2_elem *)s2_smem_aligned(s2_smem_raw); // [panels][BM][64]
    s2_elem *sv = sk + S2_BWD_BM * S2_HEAD_DIM;              // [panels][BM][64]
    s2_elem *sqd = sv + S2_BWD_BM * S2_HEAD_DIM;             // [stages][Q, dO][panels][BN][64]
    float *sl = (float *)(sqd + 2 * S2_BWD_STAGES * S2_BWD_BN * S2_HEAD_DIM); // [stages][2][BN]
#if S2_BWD_ATOMIC_DQ
#if S2_BWD_TMA // after the rings' mbarriers (below), at a 1 KiB boundary (sk's offset is
    // one): dS^T (two buffers with S2_DQ_SPLIT_DIMS), then each consumer's two dQ boxes
    // [consumers][2][64][32] (constant offsets)
    constexpr int SDS_AT = ((2 * S2_BWD_BM + 2 * S2_BWD_STAGES * S2_BWD_BN) * S2_HEAD_DIM * 2 +
                            2 * S2_BWD_STAGES * S2_BWD_BN * 4 +
                            8 * (2 * S2_BWD_STAGES + 1 + S2_DQ_MBARS) + 1023) /
                           1024 * 1024;
    s2_elem *sds = (s2_elem *)((unsigned char *)sk + SDS_AT);
    float *sdq = (float *)(sds + (1 + S2_DQ_SPLIT_DIMS) * S2_BWD_BM * 64);
#else
    s2_elem *sds = (s2_elem *)s2_smem_aligned((unsigned char *)(sl + 2 * S2_BWD_STAGES * S2_BWD_BN));
#endif
#endif
    const int qd_stride = S2_BWD_BN * S2_HEAD_DIM;

    int hk, tile, b;
#if S2_BWD_TMA && S2_BWD_DQ_ORDERED // (their order: s2_dq_ordered_block)
    s2_dq_ordered_block(s2_dq_turns(dq_acc, total_tokens) + (long)S2_NUM_HEADS * total_tokens,
                        hk, tile, b);
#else
    s2_block_tile<S2_BWD_BM, false, S2_NUM_HEADS / S2_NUM_KV_HEADS>(hk, tile);
    b = blockIdx.z;
#endif
    const int rep = S2_NUM_HEADS / S2_NUM_KV_HEADS;
#if S2_WINDOW
    const int seq0 = -win_qlo, n = win_qlo + total_tokens; // one sequence: b = 0
    (void)b;
    const int cls = s2_head_class(hk * rep);
    const int y0 = (s2_window_tile0<S2_BWD_BM>(win_klo) + tile) * S2_BWD_BM;
    if (y0 >= n || y0 < win_klo)
        return;
#else
    const int seq0 = cu_seqlens[b], n = cu_seqlens[b + 1] - seq0;
    const int cls = s2_head_class(hk * rep);
    const int y0 = tile * S2_BWD_BM;
    if (y0 >= n)
        return;
#endif
#if S2_BWD_TMA // the consumers are warpgroups 1 and 2 of the block, numbered 0 and 1 here
    const int wg = threadIdx.x / 128 - 1, warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
#else
    const int wg = threadIdx.x / 128, warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
#endif
    const int t = lane % 4;
    const int ylast = min(y0 + S2_BWD_BM, n) - 1;
    const int y_group_end = s2_group_end(y0, cls, n);
#if S2_WINDOW // the window's queries only: the other ranks add theirs to the halo's dK, dV
    const int qt_begin = max(y0, win_qlo) / S2_BWD_BN;
    const int n_qt = max(0, (s2_group_end(ylast, cls, n) - 1) / S2_BWD_BN + 1 - qt_begin);
#else
    const int qt_begin = y0 / S2_BWD_BN;
    const int n_qt = (s2_group_end(ylast, cls, n) - 1) / S2_BWD_BN + 1 - qt_begin;
#endif
    const int n_it = rep * n_qt;
    const int key0 = y0 + wg * 64 + warp * 16 + lane / 4; // this thread's keys: key0, key0 + 8
    int qlo[2], qhi[2]; // the queries each of them is seen by
#pragma unroll
    for (int e = 0; e < 2; e++)
        s2_key_span(key0 + 8 * e, cls, n, qlo[e], qhi[e]);

#if S2_BWD_TMA
    // full[st] = bars[st]: S2_DKDV_FULL_ARRIVALS and the Q and dO tiles' bytes; empty[st] =
    // bars[STAGES + st]: every consumer thread (s2_ring_release); kvbar: K's and V's bytes.
    unsigned long long *bars = (unsigned long long *)(sl + 2 * S2_BWD_STAGES * S2_BWD_BN);
    unsigned long long *kvbar = bars + 2 * S2_BWD_STAGES;
    if (threadIdx.x == 0) {
        for (int i = 0; i < S2_BWD_STAGES; i++) {
            s2_mbar_init(&bars[i], S2_DKDV_FULL_ARRIVALS);
            s2_mbar_init(&bars[S2_BWD_STAGES + i], S2_BWD_THREADS);
        }
        s2_mbar_init(kvbar, 1);
#if S2_BWD_ATOMIC_DQ && S2_DQ_SPLIT_DIMS // the dQ's buffers' and boxes' handover (dbar)
        for (int i = 0; i < S2_DQ_MBARS; i++)
            s2_mbar_init(&kvbar[1 + i], 1);
#endif
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    if (threadIdx.x < 128) { // the producer: its first warp loads, the rest leave (but the
        // reducer, with the ordered dQ)
        s2_setmaxnreg_dec<S2_DKDV_PRODUCER_REGS>();
#if S2_DQ_REDUCER
        if (threadIdx.x == 32) { // the second warp's first thread adds the consumers' dQ
            s2_dq_reducer(&tm_dq, sdq, kvbar + 1, dq_acc, total_tokens, hk * rep, seq0,
                          qt_begin, n_qt, n_it);
            return;
        }
#endif
        if (threadIdx.x < 32) {
            constexpr unsigned KVBYTES = 2 * S2_BWD_BM * S2_HEAD_DIM * 2;
            constexpr unsigned QDBYTES = 2 * S2_BWD_BN * S2_HEAD_DIM * 2;
            const bool issues = threadIdx.x == 0;
            if (issues) { // the block's K and V rows, once
                s2_tma_prefetch_map(&tm_q);
                s2_tma_prefetch_map(&tm_k);
                s2_tma_prefetch_map(&tm_v);
                s2_tma_prefetch_map(&tm_do);
                s2_mbar_expect_tx(kvbar, KVBYTES);
#pragma unroll
                for (int pn = 0; pn < S2_HEAD_DIM / 64; pn++) {
                    s2_tma_load3(sk + pn * S2_BWD_BM * 64, &tm_k, pn * 64, hk, seq0 + y0, kvbar);
                    s2_tma_load3(sv + pn * S2_BWD_BM * 64, &tm_v, pn * 64, hk, seq0 + y0, kvbar);
                }
            }
            // The (head, query tile) pairs in walk order, as the consumers take them: into
            // stage j % STAGES once every consumer is done with tile j - STAGES there. lse and
            // delta by cp.async (their rows of [H, T] need not be 16-byte aligned for a bulk
            // copy), zero at or past n as in the other kernels.
            int h = hk * rep, qt = qt_begin;
            for (int j = 0; j < n_it; j++) {
                const int st = j % S2_BWD_STAGES, x0 = qt * S2_BWD_BN;
                if (j >= S2_BWD_STAGES)
                    s2_mbar_wait(&bars[S2_BWD_STAGES + st], (j / S2_BWD_STAGES - 1) & 1);
                if (issues) {
                    s2_elem *dst = sqd + 2 * st * qd_stride;
                    s2_mbar_expect_tx(&bars[st], QDBYTES);
#pragma unroll
                    for (int pn = 0; pn < S2_HEAD_DIM / 64; pn++) {
                        s2_tma_load3(dst + pn * S2_BWD_BN * 64, &tm_q, pn * 64, h, seq0 + x0,
                                     &bars[st]);
                        s2_tma_load3(dst + qd_stride + pn * S2_BWD_BN * 64, &tm_do, pn * 64, h,
                                     seq0 + x0, &bars[st]);
                    }
                }
                s2_load_lse_delta<S2_BWD_BN, 32>(sl + 2 * st * S2_BWD_BN, lse, delta, x0, n,
                                                 seq0, cls, h, total_tokens);
                s2_mbar_arrive_copies(&bars[st]);
                if (++qt == qt_begin + n_qt)
                    qt = qt_begin, h++;
            }
            s2_cp_async_wait<0>(); // (this warp's last copies land before it leaves)
        }
        return;
    }
    s2_setmaxnreg_inc<S2_DKDV_CONSUMER_REGS>();
    s2_mbar_wait(kvbar, 0);
#else
    s2_load_tile_sw<S2_BWD_BM, S2_BWD_THREADS>(sk, k, seq0, y0, n, cls, S2_NUM_KV_HEADS, hk);
    s2_load_tile_sw<S2_BWD_BM, S2_BWD_THREADS>(sv, v, seq0, y0, n, cls, S2_NUM_KV_HEADS, hk);

    // The pairs in walk order, (head offset, tile) = (it / n_qt, it % n_qt), followed by
    // counters: a division a step costs more than the rest of a step's integer work.
    int ld_h = hk * rep, ld_qt = qt_begin; // the next pair to load
    auto load_tile = [&](int st) {
        const int h = ld_h, x0 = ld_qt * S2_BWD_BN;
        if (++ld_qt == qt_begin + n_qt)
            ld_qt = qt_begin, ld_h++;
        s2_elem *dst = sqd + 2 * st * qd_stride;
        s2_load_tile_sw<S2_BWD_BN, S2_BWD_THREADS>(dst, q, seq0, x0, n, cls, S2_NUM_HEADS, h);
        s2_load_tile_sw<S2_BWD_BN, S2_BWD_THREADS>(dst + qd_stride, dout, seq0, x0, n, cls, S2_NUM_HEADS, h);
        s2_load_lse_delta<S2_BWD_BN, S2_BWD_THREADS>(sl + 2 * st * S2_BWD_BN, lse, delta, x0, n,
                                                     seq0, cls, h, total_tokens);
    };
#endif
#if !S2_BWD_ATOMIC_DQ || S2_BWD_TMA
#if S2_BWD_TMA // (the producer loads every tile, on the ring set up above)
#else
    // Step j's S^T and dP^T run beside dV += P^T dO and dK += dS^T Q of step j - 1, which read
    // Q and dO of tile j - 1. (load_tile follows the walk, so tile j is the next pair.)
    auto load_next = [&](int j) { load_tile(j % S2_BWD_STAGES); };
    unsigned long long *bars = (unsigned long long *)(sl + 2 * S2_BWD_STAGES * S2_BWD_BN);
    s2_ring_init(bars);
    s2_ring_prologue(bars, n_it, load_next);
#endif

    float adk[S2_OACC], adv[S2_OACC];
#pragma unroll
    for (int i = 0; i < S2_OACC; i++)
        adk[i] = adv[i] = 0.f;
    // P^T and dS^T of the step before, as the A fragments of its dV and dK products
    unsigned pa[S2_BWD_BN / 16][4], da[S2_BWD_BN / 16][4];

    int cur_qt = qt_begin - 1; // this step's query tile
#if S2_BWD_RS_ALL && !S2_BWD_TMA
    // this warpgroup's K and V rows, the A fragments of S^T = K Q^T and dP^T = V dO^T
    unsigned ka[S2_HEAD_DIM / 16][4], va[S2_HEAD_DIM / 16][4];
    const auto &x_k = ka;
    const auto &x_v = va;
#else
    const s2_elem *x_k = sk, *x_v = sv;
#endif
#if S2_BWD_TMA && S2_BWD_ATOMIC_DQ && S2_DQ_SPLIT_DIMS
    int dq_h = hk * rep, dq_row = 0; // the head and first row of the step whose dQ comes next
#endif
#if S2_BWD_TURNS
    s2_turn_start(wg);
#endif
    for (int it = 0; it < n_it; it++) {
        if (++cur_qt == qt_begin + n_qt)
            cur_qt = qt_begin;
#if S2_BWD_TMA // tile it's Q, dO (the TMA writes through the async proxy, which wgmma reads)
        s2_mbar_wait(&bars[it % S2_BWD_STAGES], (it / S2_BWD_STAGES) & 1); // lse and delta too
#else
        s2_ring_top(bars, it, load_next);
#if S2_BWD_RS_ALL
        if (it == 0) { // the block's K and V rows landed with tile 0
            s2_rows_to_afrag<S2_BWD_BM>(ka, sk, key0 - y0, lane);
            s2_rows_to_afrag<S2_BWD_BM>(va, sv, key0 - y0, lane);
        }
#endif
#endif
        const int st = it % S2_BWD_STAGES;
        const s2_elem *sq = sqd + 2 * st * qd_stride, *sdo = sq + qd_stride;
        const float *slse = sl + (2 * st) * S2_BWD_BN, *sdl = slse + S2_BWD_BN;
        const int x0 = cur_qt * S2_BWD_BN;

        // S^T = K Q^T and dP^T = V dO^T, then the step before's dV += P^T dO and dK += dS^T Q
        // behind them; wait for S^T and dP^T only
        float s[S2_SACC], dp[S2_SACC]; // rows: this warpgroup's keys; columns: the queries
        s2_fence_regs(adv);
        s2_fence_regs(adk);
#if S2_BWD_TMA
        // (Not behind them here: with the step before's products in flight across the loop,
        // ptxas serialises every product at the consumers' 240 registers. Each step's own dV
        // product runs while its dS^T is formed, and the other warpgroup's products, in turns,
        // while this one forms P^T.)
#if S2_BWD_TURNS
        s2_turn_wait(wg);
#endif
        s2_wgmma_pair_issue(s, dp, x_k, sq, x_v, sdo, wg * 64);
#if S2_BWD_TURNS
        s2_turn_pass(wg);
#endif
        s2_wgmma_wait0();
        s2_fence_regs(s);
        s2_fence_regs(dp);
#else
        s2_overlap_products(it, s, dp, x_k, sq, x_v, sdo, wg, [&] {
            const s2_elem *pq = sqd + 2 * ((it - 1) % S2_BWD_STAGES) * qd_stride;
            s2_wgmma_py<S2_BWD_BN>(adv, pa, pq + qd_stride); // dV += P^T dO
            s2_wgmma_py<S2_BWD_BN>(adk, da, pq);             // dK += dS^T Q
        }, n_it, bars, false, load_next);
#endif

        // P^T and dS^T = P^T ∘ (dP^T - delta) in place of S^T and dP^T; packed into the
        // fragments once the products of the step before are done with them
        const bool masked = (S2_MASK_GROUP_EDGE && x0 + S2_BWD_BN > y_group_end) ||
                            x0 < y0 + S2_BWD_BM - 1 || x0 + S2_BWD_BN > n;
        s2_pt_in_place(s, slse, masked, x0, qlo, qhi, t);
#if S2_BWD_TMA // dV += P^T dO, issued
        s2_acc_to_afrag<S2_BWD_BN / 8>(s, pa);
        s2_fence_regs(adv);
        s2_wgmma_fence();
        s2_wgmma_py<S2_BWD_BN>(adv, pa, sdo);
        s2_wgmma_commit();
#endif
#pragma unroll
        for (int i = 0; i < S2_SACC; i++) // n8 chunk i / 4, query column 2 t + i % 2 of it
            dp[i] = s[i] * (dp[i] - sdl[(i / 4) * 8 + 2 * t + i % 2]); // dS^T
#if S2_BWD_TMA // dK += dS^T Q, then both waited for: the stage goes back to the producer
        s2_acc_to_afrag<S2_BWD_BN / 8>(dp, da);
#if S2_BWD_ATOMIC_DQ && S2_DQ_SPLIT_DIMS // dS^T staged before da is in flight
        s2_dq_stage(da, sds, kvbar + 1, it, wg, warp, lane);
#elif S2_BWD_ATOMIC_DQ
        s2_stage_dst(sds, da, wg, warp, lane);
#endif
        s2_fence_regs(adk);
        s2_wgmma_fence();
        s2_wgmma_py<S2_BWD_BN>(adk, da, sq);
        s2_wgmma_commit();
#if S2_BWD_ATOMIC_DQ && S2_DQ_SPLIT_DIMS // the step before's dQ
        if (it > 0) // (its waits wait for dV and dK too)
            s2_dq_lagged(sds, sk, sdq + wg * 64 * 64, &tm_dq, kvbar + 1, it - 1, dq_h, dq_row,
                         wg, warp, lane);
        else
            s2_wgmma_wait0();
        dq_h += it > 0 && cur_qt == qt_begin, dq_row = seq0 + x0; // (the next head's walk)
#elif S2_BWD_ATOMIC_DQ // and dQ behind them (its waits wait for them too)
        s2_dq_tma_step(sds, sk, sdq + wg * 64 * 64, &tm_dq, hk * rep + it / n_qt, seq0 + x0, wg,
                       warp, lane);
#else
        s2_wgmma_wait0();
#endif
        s2_fence_regs(adv);
        s2_fence_regs(adk);
        s2_ring_release(bars, it);
    }
#if S2_BWD_TURNS
    s2_turn_end(wg);
#endif
#if S2_BWD_ATOMIC_DQ && S2_DQ_SPLIT_DIMS // the last step's dQ (the reducer adds it; without
    // one, thread 0 does once its boxes have been read)
#if !S2_DQ_REDUCER
    if (threadIdx.x % 128 == 0)
        asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
    asm volatile("bar.sync %0, 128;\n" ::"r"(3 + wg) : "memory");
#endif
    if (n_it > 0)
        s2_dq_lagged(sds, sk, sdq + wg * 64 * 64, &tm_dq, kvbar + 1, n_it - 1, dq_h, dq_row, wg,
                     warp, lane);
#endif
#if S2_BWD_ATOMIC_DQ && !S2_DQ_REDUCER // the last reductions have completed before the
    // block's memory goes (the reducer waits for its own)
    if (threadIdx.x % 128 == 0)
        asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
#endif
#else
        s2_wgmma_wait0();
        s2_fence_regs(adv);
        s2_fence_regs(adk);
        s2_acc_to_afrag<S2_BWD_BN / 8>(s, pa);
        s2_acc_to_afrag<S2_BWD_BN / 8>(dp, da);
        if (it > 0)
            s2_ring_release(bars, it - 1);
    }
#if S2_BWD_TURNS
    s2_turn_end(wg);
#endif
    if (n_it > 0) { // the last step's dV and dK products
        const s2_elem *pq = sqd + 2 * ((n_it - 1) % S2_BWD_STAGES) * qd_stride;
        s2_fence_regs(adv);
        s2_fence_regs(adk);
        s2_wgmma_fence();
        s2_wgmma_py<S2_BWD_BN>(adv, pa, pq + qd_stride);
        s2_wgmma_py<S2_BWD_BN>(adk, da, pq);
        s2_wgmma_commit();
        s2_wgmma_wait0();
        s2_fence_regs(adv);
        s2_fence_regs(adk);
    }
#endif
#else
#pragma unroll
    for (int s = 0; s < S2_BWD_STAGES - 1; s++) {
        if (s < n_it)
            load_tile(s);
        s2_cp_async_commit();
    }

    float adk[S2_OACC], adv[S2_OACC];
#pragma unroll
    for (int i = 0; i < S2_OACC; i++)
        adk[i] = adv[i] = 0.f;

    int cur_h = hk * rep, cur_qt = qt_begin - 1; // this step's pair
    for (int it = 0; it < n_it; it++) {
        if (++cur_qt == qt_begin + n_qt)
            cur_qt = qt_begin, cur_h++;
        {
            // One barrier a step (two with one stage): after it, tile it has landed for every
            // thread and every thread is done with tile it - 1 (whose stage is reloaded) and
            // with the staged dS^T.
#if S2_BWD_STAGES >= 2
            s2_cp_async_wait<S2_BWD_STAGES - 2>();
            s2_fence_proxy_async();
            __syncthreads();
#endif
            const int nx = it + S2_BWD_STAGES - 1;
            if (nx < n_it)
                load_tile(nx % S2_BWD_STAGES);
            s2_cp_async_commit();
#if S2_BWD_STAGES == 1
            s2_cp_async_wait<0>();
            s2_fence_proxy_async();
            __syncthreads();
#endif
        }
        const int st = it % S2_BWD_STAGES;
        const s2_elem *sq = sqd + 2 * st * qd_stride, *sdo = sq + qd_stride;
        const float *slse = sl + (2 * st) * S2_BWD_BN, *sdl = slse + S2_BWD_BN;
        const int x0 = cur_qt * S2_BWD_BN;

        float s[S2_SACC], dp[S2_SACC]; // rows: this warpgroup's keys; columns: the queries
        s2_wgmma_pair(s, dp, sk, sq, sv, sdo, wg * 64); // S^T = K Q^T, dP^T = V dO^T

        const bool masked = (S2_MASK_GROUP_EDGE && x0 + S2_BWD_BN > y_group_end) ||
                            x0 < y0 + S2_BWD_BM - 1 || x0 + S2_BWD_BN > n;
        // P^T in place; dV += P^T dO issued, then dS^T = P^T ∘ (dP^T - delta) into the A
        // fragments, staged for the dQ product, and dK += dS^T Q
        s2_pt_in_place(s, slse, masked, x0, qlo, qhi, t);
        unsigned pa[S2_BWD_BN / 16][4], da[S2_BWD_BN / 16][4];
        s2_acc_to_afrag<S2_BWD_BN / 8>(s, pa);
        s2_fence_regs(adv);
        s2_fence_regs(adk);
        s2_wgmma_fence();
        s2_wgmma_py<S2_BWD_BN>(adv, pa, sdo); // dV += P^T dO
#pragma unroll
        for (int kk = 0; kk < S2_BWD_BN / 16; kk++) {
#pragma unroll
            for (int r = 0; r < 4; r++) { // da[kk][r]: n8 chunk 2kk + r / 2, key half r % 2
                const int i = 8 * kk + 2 * r, col = (2 * kk + r / 2) * 8 + 2 * t;
                da[kk][r] = s2_pack2(s[i] * (dp[i] - sdl[col]),
                                     s[i + 1] * (dp[i + 1] - sdl[col + 1]));
            }
        }
        s2_stage_dst(sds, da, wg, warp, lane);
        s2_wgmma_fence();
        s2_wgmma_py<S2_BWD_BN>(adk, da, sq); // dK += dS^T Q
        s2_wgmma_commit();
        s2_wgmma_wait0();
        s2_fence_regs(adv);
        s2_fence_regs(adk);
        s2_fence_proxy_async(); // the staged dS^T, written by every warpgroup, then read by wgmma
        __syncthreads();
        s2_dq_atomic_wg(sds, sk, dq_acc, cur_h, x0, n, seq0, cls, wg, warp, lane);
#if S2_BWD_STAGES == 1
        __syncthreads(); // the one stage is reloaded at the top of the next step
#endif
    }
#endif
    s2_cp_async_wait<0>();
    s2_store_strip(dk, S2_NUM_KV_HEADS, hk, *reinterpret_cast<const float(*)[S2_ON][4]>(adk),
                   S2_SCALE, key0, n, seq0, cls, lane);
    s2_store_strip(dv, S2_NUM_KV_HEADS, hk, *reinterpret_cast<const float(*)[S2_ON][4]>(adv),
                   1.f, key0, n, seq0, cls, lane);
}

// templates/attn_bwd.cuh — S²-Attn backward on tensor cores (after s2_attn_bwd_pre), two
// kernels, both deterministic (no atomics: every output element has one writer):
//   s2_attn_bwd_dq    dQ = scale · dS K, parallel over query tiles; walks the same key tiles as
//                     the forward (the plan's classification) and recomputes
//                     P = exp2(S·scale·log2e - lse·log2e), dP = dO V^T, dS = P ∘ (dP - delta).
//   s2_attn_bwd_dkdv  dK = scale · dS^T Q and dV = P^T dO, parallel over key tiles; walks the
//                     query tiles that can see them (from the tile's first key to the end of its
//                     last key's group), for every query head of the kv head, so GQA sums in
//                     registers without a copy or an atomic.
// With S2_BWD_ATOMIC_DQ the dK/dV kernel also adds this tile's dS K into an fp32 dQ
// accumulator (atomics; s2_attn_bwd_dq_convert scales and rounds it), and s2_attn_bwd_dq is not
// launched: two products per tile pair fewer, at the price of a run-to-run summation order.
// Tiles: S2_BWD_WARPS warps of 16 rows; S2_BWD_BN columns per streamed tile, S2_BWD_STAGES
// deep. Rows are strips of 16 per warp as in the forward; see mma.cuh for the fragment shapes.

#define S2_BWD_BM (16 * S2_BWD_WARPS)
#define S2_BWD_THREADS (32 * S2_BWD_WARPS)
#define S2_BNT (S2_BWD_BN / 8) // n8 tiles per streamed tile

extern "C" __global__ void __launch_bounds__(S2_BWD_THREADS)
s2_attn_bwd_dq(const s2_elem *__restrict__ q, const s2_elem *__restrict__ k,
               const s2_elem *__restrict__ v, const s2_elem *__restrict__ dout,
               const s2_elem *__restrict__ o,   // unused: s2_attn_bwd_pre formed delta
               const float *__restrict__ lse,   // [H, T]
               const float *__restrict__ delta, // [H, T]
               s2_elem *__restrict__ dq,        // [T, H, d]
#if S2_WINDOW
               const int *__restrict__ cu_seqlens, int total_tokens, int win_qlo, int win_klo)
#else
               const int *__restrict__ cu_seqlens, int total_tokens)
#endif
{
    extern __shared__ __align__(16) unsigned char s2_smem[];
    s2_elem *sq = (s2_elem *)s2_smem;        // [BM][LD]
    s2_elem *sdo = sq + S2_BWD_BM * S2_LD;   // [BM][LD]
    s2_elem *skv = sdo + S2_BWD_BM * S2_LD;  // [stages][K, V][BN][LD]
    const int kv_stride = S2_BWD_BN * S2_LD;

    const int h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (S2_NUM_HEADS / S2_NUM_KV_HEADS);
#if S2_WINDOW
    const int seq0 = -win_qlo, n = win_qlo + total_tokens; // one sequence: b = 0
    (void)b;
    const int x0 = (s2_window_tile0<S2_BWD_BM>(win_qlo) + gridDim.x - 1 - blockIdx.x) * S2_BWD_BM;
    if (x0 >= n || x0 < win_qlo)
        return;
#else
    const int seq0 = cu_seqlens[b], n = cu_seqlens[b + 1] - seq0;
    const int x0 = (gridDim.x - 1 - blockIdx.x) * S2_BWD_BM; // heavier tiles first
    if (x0 >= n)
        return;
#endif
    const int cls = s2_head_class(h);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const int xlast = min(x0 + S2_BWD_BM, n) - 1;
    const int gs_last = s2_group_start(xlast, cls);
    const int kt_begin = s2_group_start(x0, cls) / S2_BWD_BN;
    const int kt_end = xlast / S2_BWD_BN + 1;
    const int row0 = x0 + warp * 16 + g;

    s2_load_tile_async<S2_BWD_BM, S2_BWD_THREADS>(sq, S2_LD, q, seq0, x0, n, cls, S2_NUM_HEADS, h);
    s2_load_tile_async<S2_BWD_BM, S2_BWD_THREADS>(sdo, S2_LD, dout, seq0, x0, n, cls, S2_NUM_HEADS, h);
#pragma unroll
    for (int s = 0; s < S2_BWD_STAGES - 1; s++) {
        if (kt_begin + s < kt_end) {
            s2_elem *dk = skv + 2 * s * kv_stride;
            s2_load_tile_async<S2_BWD_BN, S2_BWD_THREADS>(dk, S2_LD, k, seq0, (kt_begin + s) * S2_BWD_BN, n, cls, S2_NUM_KV_HEADS, hk);
            s2_load_tile_async<S2_BWD_BN, S2_BWD_THREADS>(dk + kv_stride, S2_LD, v, seq0, (kt_begin + s) * S2_BWD_BN, n, cls, S2_NUM_KV_HEADS, hk);
        }
        s2_cp_async_commit();
    }

    float lse2[2], dlt[2];
#pragma unroll
    for (int hf = 0; hf < 2; hf++)
        s2_lse_delta(lse, delta, row0 + 8 * hf, n, seq0, cls, h, total_tokens, lse2[hf], dlt[hf]);
    float acc[1][S2_ON][4];
#pragma unroll
    for (int i = 0; i < S2_ON; i++)
        acc[0][i][0] = acc[0][i][1] = acc[0][i][2] = acc[0][i][3] = 0.f;
    unsigned qf[1][S2_KSTEPS][4], dof[1][S2_KSTEPS][4];

    for (int kt = kt_begin; kt < kt_end; kt++) {
        const int it = kt - kt_begin;
        {
            const int nx = it + S2_BWD_STAGES - 1;
            if (kt_begin + nx < kt_end) {
                s2_elem *dk = skv + 2 * (nx % S2_BWD_STAGES) * kv_stride;
                s2_load_tile_async<S2_BWD_BN, S2_BWD_THREADS>(dk, S2_LD, k, seq0, (kt_begin + nx) * S2_BWD_BN, n, cls, S2_NUM_KV_HEADS, hk);
                s2_load_tile_async<S2_BWD_BN, S2_BWD_THREADS>(dk + kv_stride, S2_LD, v, seq0, (kt_begin + nx) * S2_BWD_BN, n, cls, S2_NUM_KV_HEADS, hk);
            }
            s2_cp_async_commit();
            s2_cp_async_wait<S2_BWD_STAGES - 1>();
            __syncthreads();
        }
        if (it == 0) {
            s2_load_afrag(qf[0], sq + warp * 16 * S2_LD, lane);
            s2_load_afrag(dof[0], sdo + warp * 16 * S2_LD, lane);
        }
        const s2_elem *sk = skv + 2 * (it % S2_BWD_STAGES) * kv_stride;
        const s2_elem *sv = sk + kv_stride;

        float s[1][S2_BNT][4], dp[1][S2_BNT][4];
#pragma unroll
        for (int j = 0; j < S2_BNT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                s[0][j][e] = dp[0][j][e] = 0.f;
        s2_mma_abt(s, qf, sk, lane);   // S = Q K^T
        s2_mma_abt(dp, dof, sv, lane); // dP = dO V^T

        const int y0 = kt * S2_BWD_BN;
        const bool masked = s2_tile_needs_mask(x0, gs_last, y0, n, S2_BWD_BN);
        int klo[2] = {0, 0}, khi[2] = {0, 0}; // the keys each row sees, where masked
        if (masked)
#pragma unroll
            for (int hf = 0; hf < 2; hf++)
                s2_query_span(row0 + 8 * hf, cls, n, klo[hf], khi[hf]);
#pragma unroll
        for (int j = 0; j < S2_BNT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int hf = e / 2;
                bool live = true;
                if (masked) {
                    const int y = y0 + j * 8 + 2 * t + (e % 2);
                    live = y >= klo[hf] && y <= khi[hf];
                }
                const float p = live ? s2_exp2(fmaf(s[0][j][e], S2_SCALE_LOG2, -lse2[hf])) : 0.f;
                s[0][j][e] = p * (dp[0][j][e] - dlt[hf]); // dS
            }
        s2_mma_pb(acc, s, sk, lane); // dQ += dS K
        __syncthreads();
    }
    s2_cp_async_wait<0>();
    s2_store_strip(dq, S2_NUM_HEADS, h, acc[0], S2_SCALE, row0, n, seq0, cls, lane);
}

#if S2_BWD_ATOMIC_DQ
#define S2_DS_LD (S2_BWD_BN + 8) // dS^T row stride: 16 bytes of pad keep ldmatrix conflict-free

// dQ[x] += sum over this block's keys y of dS[x][y] K[y], into the fp32 accumulator. Each warp
// stores its strip of dS^T (16 keys x BN queries, as bf16/fp16) in shared memory; then the
// tile's dQ (BN queries x d) is cut into pieces of 16 queries x 32 dims, each a product over
// all S2_BWD_BM keys of the block (A = dS via ldmatrix.trans of dS^T, B = K via
// ldmatrix.trans), added with one atomic per element: one atomic per (query, dim, key block).
__device__ __forceinline__ void s2_dq_atomic(s2_elem *sds, const float (&ds)[S2_BNT][4],
                                             const s2_elem *sk, float *dq_acc, int h, int x0,
                                             int n, int seq0, int cls, int warp, int lane)
{
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int j = 0; j < S2_BNT; j++)
#pragma unroll
        for (int hf = 0; hf < 2; hf++)
            *(unsigned *)(sds + (warp * 16 + g + 8 * hf) * S2_DS_LD + j * 8 + 2 * t) =
                s2_pack2(ds[j][2 * hf], ds[j][2 * hf + 1]);
    __syncthreads();
    constexpr int QS = S2_BWD_BN / 16, CC = S2_HEAD_DIM / 32; // query strips, 32-dim chunks
    for (int unit = warp; unit < QS * CC; unit += S2_BWD_WARPS) {
        const int q0 = (unit % QS) * 16, c0 = (unit / QS) * 32;
        float c[4][4];
#pragma unroll
        for (int i = 0; i < 4; i++)
            c[i][0] = c[i][1] = c[i][2] = c[i][3] = 0.f;
#pragma unroll
        for (int k0 = 0; k0 < S2_BWD_BM; k0 += 16) {
            unsigned a[4];
            s2_ldmatrix_x4_trans(a[0], a[1], a[2], a[3],
                                 sds + (k0 + (lane % 8) + (lane / 16) * 8) * S2_DS_LD + q0 + ((lane / 8) % 2) * 8);
#pragma unroll
            for (int i = 0; i < 4; i += 2) {
                unsigned b0, b1, b2, b3;
                s2_ldmatrix_x4_trans(b0, b1, b2, b3,
                                     sk + (k0 + (lane % 8) + ((lane / 8) % 2) * 8) * S2_LD + c0 + i * 8 + (lane / 16) * 8);
                s2_mma(c[i], a, b0, b1);
                s2_mma(c[i + 1], a, b2, b3);
            }
        }
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            const int x = x0 + q0 + g + 8 * hf;
            if (x >= n)
                continue;
            float *row = dq_acc + ((long)(seq0 + s2_position(x, cls, n)) * S2_NUM_HEADS + h) * S2_HEAD_DIM + c0;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                atomicAdd(row + i * 8 + 2 * t, c[i][2 * hf]);
                atomicAdd(row + i * 8 + 2 * t + 1, c[i][2 * hf + 1]);
            }
        }
    }
}
#endif

extern "C" __global__ void __launch_bounds__(S2_BWD_THREADS)
s2_attn_bwd_dkdv(const s2_elem *__restrict__ q, const s2_elem *__restrict__ k,
                 const s2_elem *__restrict__ v, const s2_elem *__restrict__ dout,
                 const float *__restrict__ lse, const float *__restrict__ delta,
                 s2_elem *__restrict__ dk, // [T, Hkv, d]
                 s2_elem *__restrict__ dv, // [T, Hkv, d]
                 float *__restrict__ dq_acc, // [T, H, d] fp32, zeroed; used with S2_BWD_ATOMIC_DQ
#if S2_WINDOW
                 const int *__restrict__ cu_seqlens, int total_tokens, int win_qlo, int win_klo)
#else
                 const int *__restrict__ cu_seqlens, int total_tokens)
#endif
{
    extern __shared__ __align__(16) unsigned char s2_smem[];
    s2_elem *sk = (s2_elem *)s2_smem;       // [BM][LD]
    s2_elem *sv = sk + S2_BWD_BM * S2_LD;   // [BM][LD]
    s2_elem *sqd = sv + S2_BWD_BM * S2_LD;  // [stages][Q, dO][BN][LD]
    float *sl = (float *)(sqd + 2 * S2_BWD_STAGES * S2_BWD_BN * S2_LD); // [stages][lse2, delta][BN]
#if S2_BWD_ATOMIC_DQ
    s2_elem *sds = (s2_elem *)(sl + 2 * S2_BWD_STAGES * S2_BWD_BN); // [BM][BN + 8]: dS^T
#endif
    const int qd_stride = S2_BWD_BN * S2_LD;

    const int hk = blockIdx.y, b = blockIdx.z;
    const int rep = S2_NUM_HEADS / S2_NUM_KV_HEADS;
#if S2_WINDOW
    const int seq0 = -win_qlo, n = win_qlo + total_tokens; // one sequence: b = 0
    (void)b;
    const int y0 = (s2_window_tile0<S2_BWD_BM>(win_klo) + blockIdx.x) * S2_BWD_BM;
    if (y0 >= n || y0 < win_klo)
        return;
#else
    const int seq0 = cu_seqlens[b], n = cu_seqlens[b + 1] - seq0;
    const int y0 = blockIdx.x * S2_BWD_BM; // early keys of a group see the most queries: first
    if (y0 >= n)
        return;
#endif
    // Every query head of one kv head is in one shift class (the plan checks it).
    const int cls = s2_head_class(hk * rep);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const int ylast = min(y0 + S2_BWD_BM, n) - 1;
    const int y_group_end = s2_group_end(y0, cls, n); // queries at or past it miss the first key
#if S2_WINDOW // the window's queries only: the other ranks add theirs to the halo's dK, dV
    const int qt_begin = max(y0, win_qlo) / S2_BWD_BN;
    const int n_qt = max(0, (s2_group_end(ylast, cls, n) - 1) / S2_BWD_BN + 1 - qt_begin);
#else
    const int qt_begin = y0 / S2_BWD_BN;
    const int n_qt = (s2_group_end(ylast, cls, n) - 1) / S2_BWD_BN + 1 - qt_begin;
#endif
    const int n_it = rep * n_qt; // (query head, query tile) pairs
    const int key0 = y0 + warp * 16 + g; // this thread's key rows: key0, key0 + 8

    s2_load_tile_async<S2_BWD_BM, S2_BWD_THREADS>(sk, S2_LD, k, seq0, y0, n, cls, S2_NUM_KV_HEADS, hk);
    s2_load_tile_async<S2_BWD_BM, S2_BWD_THREADS>(sv, S2_LD, v, seq0, y0, n, cls, S2_NUM_KV_HEADS, hk);

    // Streams the next (head, query tile) pair into stage st: Q and dO rows, lse and delta, all
    // by cp.async. The pairs in walk order, (head offset, tile) = (it / n_qt, it % n_qt),
    // followed by counters: a division a step costs more than the rest of a step's integer work.
    int ld_h = hk * rep, ld_qt = qt_begin; // the next pair to load
    auto load_tile = [&](int st) {
        const int h = ld_h, x0 = ld_qt * S2_BWD_BN;
        if (++ld_qt == qt_begin + n_qt)
            ld_qt = qt_begin, ld_h++;
        s2_elem *dst = sqd + 2 * st * qd_stride;
        s2_load_tile_async<S2_BWD_BN, S2_BWD_THREADS>(dst, S2_LD, q, seq0, x0, n, cls, S2_NUM_HEADS, h);
        s2_load_tile_async<S2_BWD_BN, S2_BWD_THREADS>(dst + qd_stride, S2_LD, dout, seq0, x0, n, cls, S2_NUM_HEADS, h);
        s2_load_lse_delta<S2_BWD_BN, S2_BWD_THREADS>(sl + 2 * st * S2_BWD_BN, lse, delta, x0, n,
                                                     seq0, cls, h, total_tokens);
    };
#pragma unroll
    for (int s = 0; s < S2_BWD_STAGES - 1; s++) {
        if (s < n_it)
            load_tile(s);
        s2_cp_async_commit();
    }

    float adk[1][S2_ON][4], adv[1][S2_ON][4];
#pragma unroll
    for (int i = 0; i < S2_ON; i++)
#pragma unroll
        for (int e = 0; e < 4; e++)
            adk[0][i][e] = adv[0][i][e] = 0.f;

    int cur_h = hk * rep, cur_qt = qt_begin - 1; // this step's pair
    for (int it = 0; it < n_it; it++) {
        if (++cur_qt == qt_begin + n_qt)
            cur_qt = qt_begin, cur_h++;
        {
            const int nx = it + S2_BWD_STAGES - 1;
            if (nx < n_it)
                load_tile(nx % S2_BWD_STAGES);
            s2_cp_async_commit();
            s2_cp_async_wait<S2_BWD_STAGES - 1>();
            __syncthreads();
        }
        const int st = it % S2_BWD_STAGES;
        const s2_elem *sq = sqd + 2 * st * qd_stride, *sdo = sq + qd_stride;
        const float *slse = sl + (2 * st) * S2_BWD_BN, *sdl = slse + S2_BWD_BN;
        const int x0 = cur_qt * S2_BWD_BN;

        float s[1][S2_BNT][4], dp[1][S2_BNT][4]; // rows: this warp's keys; columns: the queries
#pragma unroll
        for (int j = 0; j < S2_BNT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                s[0][j][e] = dp[0][j][e] = 0.f;
        s2_mma_abt_sa(s[0], sk + warp * 16 * S2_LD, sq, lane);   // S^T = K Q^T
        s2_mma_abt_sa(dp[0], sv + warp * 16 * S2_LD, sdo, lane); // dP^T = V dO^T

        const bool masked = (S2_MASK_GROUP_EDGE && x0 + S2_BWD_BN > y_group_end) ||
                            x0 < y0 + S2_BWD_BM - 1 || x0 + S2_BWD_BN > n;
        int qlo[2] = {0, 0}, qhi[2] = {0, 0}; // the queries that see each key row, where masked
        if (masked)
#pragma unroll
            for (int e = 0; e < 2; e++)
                s2_key_span(key0 + 8 * e, cls, n, qlo[e], qhi[e]);
#pragma unroll
        for (int j = 0; j < S2_BNT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int col = j * 8 + 2 * t + (e % 2);
                bool live = true;
                if (masked) {
                    const int x = x0 + col;
                    live = x >= qlo[e / 2] && x <= qhi[e / 2];
                }
                const float p = live ? s2_exp2(fmaf(s[0][j][e], S2_SCALE_LOG2, -slse[col] * S2_LOG2E)) : 0.f;
                s[0][j][e] = p;                             // P^T
                dp[0][j][e] = p * (dp[0][j][e] - sdl[col]); // dS^T
            }
        s2_mma_pb(adv, s, sdo, lane); // dV += P^T dO
        s2_mma_pb(adk, dp, sq, lane); // dK += dS^T Q
#if S2_BWD_ATOMIC_DQ
        s2_dq_atomic(sds, dp[0], sk, dq_acc, cur_h, x0, n, seq0, cls, warp, lane);
#endif
        __syncthreads();
    }
    s2_cp_async_wait<0>();
    s2_store_strip(dk, S2_NUM_KV_HEADS, hk, adk[0], S2_SCALE, key0, n, seq0, cls, lane);
    s2_store_strip(dv, S2_NUM_KV_HEADS, hk, adv[0], 1.f, key0, n, seq0, cls, lane);
}

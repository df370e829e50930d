// templates/attn_bwd_simple.cuh — S²-Attn backward without tensor cores, for head dims the
// tensor-core kernels do not hold in registers (d > 128). Same contract as attn_bwd.cuh:
//   s2_attn_bwd_dq    dQ, parallel over query rows, one key per lane
//   s2_attn_bwd_dkdv  dK and dV, parallel over key rows; each block loops over
//                     the query heads that share its kv head, so GQA sums
//                     without atomics and the result is deterministic.
// P is recomputed from Q, K and the forward's LSE: P = exp2(s·scale·log2e - lse·log2e).
// Tile: S2_BLOCK_M = 2 rows per warp, S2_WARPS = the plan's bwd_warps.

#define S2_ROWS_PER_WARP (S2_BLOCK_M / S2_WARPS)
#define S2_COLS_PER_LANE (S2_HEAD_DIM / 32)

// Grid (ceil(max_seqlen / S2_BLOCK_M), H, B).
extern "C" __global__ void __launch_bounds__(S2_WARPS * 32)
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
    __shared__ __align__(16) s2_elem sq[S2_BLOCK_M * S2_ROW];
    __shared__ __align__(16) s2_elem sdo[S2_BLOCK_M * S2_ROW];
    __shared__ __align__(16) s2_elem sk[S2_BLOCK_N * S2_ROW];
    __shared__ __align__(16) s2_elem sv[S2_BLOCK_N * S2_ROW];

    const int h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (S2_NUM_HEADS / S2_NUM_KV_HEADS);
#if S2_WINDOW
    const int seq0 = -win_qlo, n = win_qlo + total_tokens; // one sequence: b = 0
    (void)b;
    const int x0 = win_qlo + blockIdx.x * S2_BLOCK_M; // every pair is masked: no tile edges
    if (x0 >= n)
        return;
#else
    const int seq0 = cu_seqlens[b], n = cu_seqlens[b + 1] - seq0;
    const int x0 = blockIdx.x * S2_BLOCK_M;
    if (x0 >= n)
        return;
#endif
    const int cls = s2_head_class(h);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int xlast = min(x0 + S2_BLOCK_M, n) - 1;

    s2_load_rows(sq, q, seq0, x0, S2_BLOCK_M, n, cls, S2_NUM_HEADS, h);
    s2_load_rows(sdo, dout, seq0, x0, S2_BLOCK_M, n, cls, S2_NUM_HEADS, h);

    float lse2[S2_ROWS_PER_WARP], dlt[S2_ROWS_PER_WARP], acc[S2_ROWS_PER_WARP][S2_COLS_PER_LANE];
#pragma unroll
    for (int r = 0; r < S2_ROWS_PER_WARP; r++) {
        const int x = x0 + warp * S2_ROWS_PER_WARP + r;
        lse2[r] = 0.f;
        dlt[r] = 0.f;
        if (x < n) {
            const long tok = seq0 + s2_position(x, cls, n);
            lse2[r] = lse[(long)h * total_tokens + tok] * S2_LOG2E;
            dlt[r] = delta[(long)h * total_tokens + tok];
        }
#pragma unroll
        for (int c = 0; c < S2_COLS_PER_LANE; c++)
            acc[r][c] = 0.f;
    }

    for (int y0 = s2_group_start(x0, cls); y0 <= xlast; y0 += S2_BLOCK_N) {
        __syncthreads();
        s2_load_rows(sk, k, seq0, y0, S2_BLOCK_N, n, cls, S2_NUM_KV_HEADS, hk);
        s2_load_rows(sv, v, seq0, y0, S2_BLOCK_N, n, cls, S2_NUM_KV_HEADS, hk);
        __syncthreads();
        const int y = y0 + lane;
#pragma unroll
        for (int r = 0; r < S2_ROWS_PER_WARP; r++) {
            const int rr = warp * S2_ROWS_PER_WARP + r;
            const int x = x0 + rr;
            const bool live = x < n && y < n && s2_visible(x, y, cls);
            float ds = 0.f;
            if (live) {
                const float p = exp2f(s2_dot_rows(sq + rr * S2_ROW, sk + lane * S2_ROW) * S2_SCALE_LOG2 - lse2[r]);
                const float dp = s2_dot_rows(sdo + rr * S2_ROW, sv + lane * S2_ROW);
                ds = p * (dp - dlt[r]);
            }
            for (int j = 0; j < 32; j++) {
                const float dsj = __shfl_sync(0xffffffffu, ds, j);
                if (dsj == 0.f)
                    continue;
#pragma unroll
                for (int c = 0; c < S2_COLS_PER_LANE; c++)
                    acc[r][c] = fmaf(dsj, s2_to_f32(sk[j * S2_ROW + lane + 32 * c]), acc[r][c]);
            }
        }
    }

    const float scale = S2_SCALE;
#pragma unroll
    for (int r = 0; r < S2_ROWS_PER_WARP; r++) {
        const int x = x0 + warp * S2_ROWS_PER_WARP + r;
        if (x >= n)
            continue;
        const long tok = seq0 + s2_position(x, cls, n);
#pragma unroll
        for (int c = 0; c < S2_COLS_PER_LANE; c++)
            dq[(tok * S2_NUM_HEADS + h) * S2_HEAD_DIM + lane + 32 * c] = s2_from_f32(acc[r][c] * scale);
    }
}

// Grid (ceil(max_seqlen / S2_BLOCK_M), Hkv, B). A block owns S2_BLOCK_M key rows
// of one kv head; queries stream in tiles of 32 (one per lane) from the first
// key through the end of the last key's group, for each query head of the kv head.
extern "C" __global__ void __launch_bounds__(S2_WARPS * 32)
s2_attn_bwd_dkdv(const s2_elem *__restrict__ q, const s2_elem *__restrict__ k,
                 const s2_elem *__restrict__ v, const s2_elem *__restrict__ dout,
                 const float *__restrict__ lse, const float *__restrict__ delta,
                 s2_elem *__restrict__ dk, // [T, Hkv, d]
                 s2_elem *__restrict__ dv, // [T, Hkv, d]
                 float *__restrict__ dq_acc, // unused here: the same signature as attn_bwd.cuh
#if S2_WINDOW
                 const int *__restrict__ cu_seqlens, int total_tokens, int win_qlo, int win_klo)
#else
                 const int *__restrict__ cu_seqlens, int total_tokens)
#endif
{
    __shared__ __align__(16) s2_elem sk[S2_BLOCK_M * S2_ROW];
    __shared__ __align__(16) s2_elem sv[S2_BLOCK_M * S2_ROW];
    __shared__ __align__(16) s2_elem sq[32 * S2_ROW];
    __shared__ __align__(16) s2_elem sdo[32 * S2_ROW];

    const int hk = blockIdx.y, b = blockIdx.z;
    const int rep = S2_NUM_HEADS / S2_NUM_KV_HEADS;
#if S2_WINDOW
    const int seq0 = -win_qlo, n = win_qlo + total_tokens; // one sequence: b = 0
    (void)b;
    const int y0 = win_klo + blockIdx.x * S2_BLOCK_M; // every pair is masked: no tile edges
    if (y0 >= n)
        return;
#else
    const int seq0 = cu_seqlens[b], n = cu_seqlens[b + 1] - seq0;
    const int y0 = blockIdx.x * S2_BLOCK_M;
    if (y0 >= n)
        return;
#endif
    // Every query head of one kv head is in one shift class (the plan checks it).
    const int cls = s2_head_class(hk * rep);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int ylast = min(y0 + S2_BLOCK_M, n) - 1;
    const int xend = s2_group_end(ylast, cls, n);

    s2_load_rows(sk, k, seq0, y0, S2_BLOCK_M, n, cls, S2_NUM_KV_HEADS, hk);
    s2_load_rows(sv, v, seq0, y0, S2_BLOCK_M, n, cls, S2_NUM_KV_HEADS, hk);

    float adk[S2_ROWS_PER_WARP][S2_COLS_PER_LANE], adv[S2_ROWS_PER_WARP][S2_COLS_PER_LANE];
#pragma unroll
    for (int r = 0; r < S2_ROWS_PER_WARP; r++)
#pragma unroll
        for (int c = 0; c < S2_COLS_PER_LANE; c++)
            adk[r][c] = adv[r][c] = 0.f;

    for (int h = hk * rep; h < (hk + 1) * rep; h++) {
#if S2_WINDOW // the window's queries only: the other ranks add theirs to the halo's dK, dV
        for (int x0 = max(y0, win_qlo); x0 < xend; x0 += 32) {
#else
        for (int x0 = y0; x0 < xend; x0 += 32) {
#endif
            __syncthreads();
            s2_load_rows(sq, q, seq0, x0, 32, n, cls, S2_NUM_HEADS, h);
            s2_load_rows(sdo, dout, seq0, x0, 32, n, cls, S2_NUM_HEADS, h);
            __syncthreads();
            const int x = x0 + lane; // this lane's query
            float lse2 = 0.f, dlt = 0.f;
            if (x < n) {
                const long tok = seq0 + s2_position(x, cls, n);
                lse2 = lse[(long)h * total_tokens + tok] * S2_LOG2E;
                dlt = delta[(long)h * total_tokens + tok];
            }
#pragma unroll
            for (int r = 0; r < S2_ROWS_PER_WARP; r++) {
                const int rr = warp * S2_ROWS_PER_WARP + r;
                const int y = y0 + rr;
                const bool live = x < n && y < n && s2_visible(x, y, cls);
                float p = 0.f, ds = 0.f;
                if (live) {
                    p = exp2f(s2_dot_rows(sq + lane * S2_ROW, sk + rr * S2_ROW) * S2_SCALE_LOG2 - lse2);
                    const float dp = s2_dot_rows(sdo + lane * S2_ROW, sv + rr * S2_ROW);
                    ds = p * (dp - dlt);
                }
                for (int j = 0; j < 32; j++) {
                    const float pj = __shfl_sync(0xffffffffu, p, j);
                    const float dsj = __shfl_sync(0xffffffffu, ds, j);
                    if (pj == 0.f && dsj == 0.f)
                        continue;
#pragma unroll
                    for (int c = 0; c < S2_COLS_PER_LANE; c++) {
                        adv[r][c] = fmaf(pj, s2_to_f32(sdo[j * S2_ROW + lane + 32 * c]), adv[r][c]);
                        adk[r][c] = fmaf(dsj, s2_to_f32(sq[j * S2_ROW + lane + 32 * c]), adk[r][c]);
                    }
                }
            }
        }
    }

    const float scale = S2_SCALE;
#pragma unroll
    for (int r = 0; r < S2_ROWS_PER_WARP; r++) {
        const int y = y0 + warp * S2_ROWS_PER_WARP + r;
        if (y >= n)
            continue;
        const long tok = seq0 + s2_position(y, cls, n);
#pragma unroll
        for (int c = 0; c < S2_COLS_PER_LANE; c++) {
            const long i = (tok * S2_NUM_KV_HEADS + hk) * S2_HEAD_DIM + lane + 32 * c;
            dk[i] = s2_from_f32(adk[r][c] * scale);
            dv[i] = s2_from_f32(adv[r][c]);
        }
    }
}

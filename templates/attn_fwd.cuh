// templates/attn_fwd.cuh — S²-Attn forward: O and LSE in one pass (online softmax).
//
// Grid (ceil(max_seqlen / S2_BLOCK_M), H, B); S2_WARPS warps. A block owns
// S2_BLOCK_M consecutive virtual query indices of one head of one sequence;
// each warp owns S2_BLOCK_M / S2_WARPS of those rows. Key tiles of S2_BLOCK_N
// (= 32: one key per lane) stream through shared memory from the start of the
// first row's group to the last row; the mask is applied per element.

#define S2_ROWS_PER_WARP (S2_BLOCK_M / S2_WARPS)
#define S2_COLS_PER_LANE (S2_HEAD_DIM / 32)

extern "C" __global__ void __launch_bounds__(S2_WARPS * 32)
s2_attn_fwd(const s2_elem *__restrict__ q,  // [T, H, d]
            const s2_elem *__restrict__ k,  // [T, Hkv, d]
            const s2_elem *__restrict__ v,  // [T, Hkv, d]
            s2_elem *__restrict__ o,        // [T, H, d]
            float *__restrict__ lse,        // [H, T], natural log
            const int *__restrict__ cu_seqlens, // [B + 1]
            int total_tokens)
{
    __shared__ __align__(16) s2_elem sq[S2_BLOCK_M * S2_ROW];
    __shared__ __align__(16) s2_elem sk[S2_BLOCK_N * S2_ROW];
    __shared__ __align__(16) s2_elem sv[S2_BLOCK_N * S2_ROW];

    const int h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (S2_NUM_HEADS / S2_NUM_KV_HEADS);
    const int seq0 = cu_seqlens[b], n = cu_seqlens[b + 1] - seq0;
    const int x0 = blockIdx.x * S2_BLOCK_M;
    if (x0 >= n)
        return;
    const int cls = s2_head_class(h);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int xlast = min(x0 + S2_BLOCK_M, n) - 1;

    s2_load_rows(sq, q, seq0, x0, S2_BLOCK_M, n, cls, S2_NUM_HEADS, h);

    float m[S2_ROWS_PER_WARP], l[S2_ROWS_PER_WARP], acc[S2_ROWS_PER_WARP][S2_COLS_PER_LANE];
#pragma unroll
    for (int r = 0; r < S2_ROWS_PER_WARP; r++) {
        m[r] = S2_NEG_INF;
        l[r] = 0.f;
#pragma unroll
        for (int c = 0; c < S2_COLS_PER_LANE; c++)
            acc[r][c] = 0.f;
    }

    // The tile loop: keys from the first row's group start through the last row.
    for (int y0 = s2_group_start(x0, cls); y0 <= xlast; y0 += S2_BLOCK_N) {
        __syncthreads(); // the previous tile is no longer read
        s2_load_rows(sk, k, seq0, y0, S2_BLOCK_N, n, cls, S2_NUM_KV_HEADS, hk);
        s2_load_rows(sv, v, seq0, y0, S2_BLOCK_N, n, cls, S2_NUM_KV_HEADS, hk);
        __syncthreads();
        const int y = y0 + lane; // this lane's key
#pragma unroll
        for (int r = 0; r < S2_ROWS_PER_WARP; r++) {
            const int rr = warp * S2_ROWS_PER_WARP + r;
            const int x = x0 + rr;
            // The online softmax, in the exp2 domain with the scale folded in.
            float s = s2_dot_rows(sq + rr * S2_ROW, sk + lane * S2_ROW) * S2_SCALE_LOG2;
            const bool live = x < n && y < n && s2_visible(x, y, cls);
            s = live ? s : S2_NEG_INF;
            const float mt = s2_warp_max(s);
            const float mnew = fmaxf(m[r], mt);
            if (mnew == S2_NEG_INF)
                continue; // nothing visible yet for this row (uniform across the warp)
            const float p = live ? exp2f(s - mnew) : 0.f;
            const float alpha = exp2f(m[r] - mnew); // exp2(-inf) = 0 on the first live tile
            l[r] = l[r] * alpha + s2_warp_sum(p);
            m[r] = mnew;
#pragma unroll
            for (int c = 0; c < S2_COLS_PER_LANE; c++)
                acc[r][c] *= alpha;
            for (int j = 0; j < 32; j++) {
                const float pj = __shfl_sync(0xffffffffu, p, j);
                if (pj == 0.f)
                    continue; // uniform: pj is the same in every lane
#pragma unroll
                for (int c = 0; c < S2_COLS_PER_LANE; c++)
                    acc[r][c] = fmaf(pj, s2_to_f32(sv[j * S2_ROW + lane + 32 * c]), acc[r][c]);
            }
        }
    }

    // O and LSE written once, at the row's original position.
#pragma unroll
    for (int r = 0; r < S2_ROWS_PER_WARP; r++) {
        const int x = x0 + warp * S2_ROWS_PER_WARP + r;
        if (x >= n)
            continue;
        const long tok = seq0 + s2_position(x, cls, n);
        const float inv = 1.f / l[r];
#pragma unroll
        for (int c = 0; c < S2_COLS_PER_LANE; c++)
            o[(tok * S2_NUM_HEADS + h) * S2_HEAD_DIM + lane + 32 * c] = s2_from_f32(acc[r][c] * inv);
        if (lane == 0)
            lse[(long)h * total_tokens + tok] = (m[r] + log2f(l[r])) * S2_LN2;
    }
}

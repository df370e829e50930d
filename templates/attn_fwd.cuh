// templates/attn_fwd.cuh — S²-Attn forward on tensor cores: O and LSE in one pass.
//
// Grid (ceil(max_seqlen / BM), H, B), S2_FWD_WARPS warps; BM = 16 * S2_FWD_STRIPS query rows
// per warp (each key fragment loaded from shared memory feeds every strip of the warp). A block
// owns BM consecutive virtual query indices of one head of one sequence (see common.cuh for
// the index map). Key/value tiles of S2_FWD_BN rows stream through shared memory with cp.async,
// S2_FWD_STAGES deep, from the tile holding the first row's group start to the tile holding the
// last row: only live tiles are visited. A tile is masked only when the plan's classification
// says it can hold an invisible pair (group edge, causal diagonal, or the sequence end); full
// tiles run unmasked.
//
// Per warp: S = Q K^T (mma, Q fragments kept in registers), the online softmax in the exp2
// domain with the scale folded in, then O += P V with P straight from the accumulators.

#define S2_FWD_MT S2_FWD_STRIPS // 16-row strips per warp
// One strip keeps its Q fragments in registers; two read them from shared memory each tile
// (their accumulators need the registers).
#define S2_FWD_Q_IN_REGS (S2_FWD_MT == 1)
#define S2_FWD_BM (16 * S2_FWD_MT * S2_FWD_WARPS)
#define S2_FWD_THREADS (32 * S2_FWD_WARPS)
#define S2_SN (S2_FWD_BN / 8) // n8 tiles of S per strip

extern "C" __global__ void __launch_bounds__(S2_FWD_THREADS)
s2_attn_fwd(const s2_elem *__restrict__ q,      // [T, H, d]
            const s2_elem *__restrict__ k,      // [T, Hkv, d]
            const s2_elem *__restrict__ v,      // [T, Hkv, d]
            s2_elem *__restrict__ o,            // [T, H, d]
            float *__restrict__ lse,            // [H, T], natural log
            const int *__restrict__ cu_seqlens, // [B + 1]
#if S2_WINDOW
            int total_tokens, int win_qlo, int win_klo) // the window (common.cuh)
#else
            int total_tokens)
#endif
{
    extern __shared__ __align__(16) unsigned char s2_smem[];
    s2_elem *sq = (s2_elem *)s2_smem;        // [BM][LD]
    s2_elem *skv = sq + S2_FWD_BM * S2_LD;   // [stages][K, V][BN][LD]
    const int kv_stride = S2_FWD_BN * S2_LD;

    const int h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (S2_NUM_HEADS / S2_NUM_KV_HEADS);
#if S2_WINDOW
    const int seq0 = -win_qlo, n = win_qlo + total_tokens; // one sequence: b = 0
    (void)b;
    // Heavier tiles (later in a group) first: reverse the tile order within the grid.
    const int x0 = (s2_window_tile0<S2_FWD_BM>(win_qlo) + gridDim.x - 1 - blockIdx.x) * S2_FWD_BM;
    if (x0 >= n || x0 < win_qlo)
        return;
#else
    const int seq0 = cu_seqlens[b], n = cu_seqlens[b + 1] - seq0;
    // Heavier tiles (later in a group) first: reverse the tile order within the grid.
    const int x0 = (gridDim.x - 1 - blockIdx.x) * S2_FWD_BM;
    if (x0 >= n)
        return;
#endif
    const int cls = s2_head_class(h);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const int xlast = min(x0 + S2_FWD_BM, n) - 1;
    const int gs_last = s2_group_start(xlast, cls);
    const int kt_begin = s2_group_start(x0, cls) / S2_FWD_BN;
    const int kt_end = xlast / S2_FWD_BN + 1;

    s2_load_tile_async<S2_FWD_BM, S2_FWD_THREADS>(sq, S2_LD, q, seq0, x0, n, cls, S2_NUM_HEADS, h);
    // Prologue: the first STAGES - 1 key/value tiles in flight.
#pragma unroll
    for (int s = 0; s < S2_FWD_STAGES - 1; s++) {
        if (kt_begin + s < kt_end) {
            s2_elem *dk = skv + (2 * s) * kv_stride;
            s2_load_tile_async<S2_FWD_BN, S2_FWD_THREADS>(dk, S2_LD, k, seq0, (kt_begin + s) * S2_FWD_BN, n, cls, S2_NUM_KV_HEADS, hk);
            s2_load_tile_async<S2_FWD_BN, S2_FWD_THREADS>(dk + kv_stride, S2_LD, v, seq0, (kt_begin + s) * S2_FWD_BN, n, cls, S2_NUM_KV_HEADS, hk);
        }
        s2_cp_async_commit();
    }

    float acc[S2_FWD_MT][S2_ON][4];
    float m[S2_FWD_MT][2], l[S2_FWD_MT][2]; // running max (exp2 domain), partial row sums
#pragma unroll
    for (int mt = 0; mt < S2_FWD_MT; mt++) {
#pragma unroll
        for (int i = 0; i < S2_ON; i++)
            acc[mt][i][0] = acc[mt][i][1] = acc[mt][i][2] = acc[mt][i][3] = 0.f;
        m[mt][0] = m[mt][1] = S2_NEG_INF;
        l[mt][0] = l[mt][1] = 0.f;
    }
    unsigned qf[S2_FWD_MT][S2_KSTEPS][4]; // used (and allocated registers) only when in regs
    // This thread's rows: row0 + 16 * mt + 8 * hf.
    const int row0 = x0 + warp * 16 * S2_FWD_MT + g;

    for (int kt = kt_begin; kt < kt_end; kt++) {
        const int it = kt - kt_begin;
        // Keep STAGES - 1 tiles in flight: issue tile it + STAGES - 1, wait for tile it.
        {
            const int nx = it + S2_FWD_STAGES - 1;
            if (kt_begin + nx < kt_end) {
                s2_elem *dk = skv + (2 * (nx % S2_FWD_STAGES)) * kv_stride;
                s2_load_tile_async<S2_FWD_BN, S2_FWD_THREADS>(dk, S2_LD, k, seq0, (kt_begin + nx) * S2_FWD_BN, n, cls, S2_NUM_KV_HEADS, hk);
                s2_load_tile_async<S2_FWD_BN, S2_FWD_THREADS>(dk + kv_stride, S2_LD, v, seq0, (kt_begin + nx) * S2_FWD_BN, n, cls, S2_NUM_KV_HEADS, hk);
            }
            s2_cp_async_commit();
            s2_cp_async_wait<S2_FWD_STAGES - 1>();
            __syncthreads();
        }
        if (S2_FWD_Q_IN_REGS && it == 0)
            s2_load_afrag(qf[0], sq + warp * 16 * S2_LD, lane);
        const s2_elem *sk = skv + (2 * (it % S2_FWD_STAGES)) * kv_stride;
        const s2_elem *sv = sk + kv_stride;

        // S = Q K^T
        float s[S2_FWD_MT][S2_SN][4];
#pragma unroll
        for (int mt = 0; mt < S2_FWD_MT; mt++)
#pragma unroll
            for (int j = 0; j < S2_SN; j++)
                s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.f;
        if (S2_FWD_Q_IN_REGS)
            s2_mma_abt(s, qf, sk, lane);
        else
            s2_mma_abt_smem(s, sq + warp * S2_FWD_MT * 16 * S2_LD, sk, lane);

        // The mask, only where the classification asks for it.
        const int y0 = kt * S2_FWD_BN;
        if (s2_tile_needs_mask(x0, gs_last, y0, n, S2_FWD_BN)) {
#pragma unroll
            for (int mt = 0; mt < S2_FWD_MT; mt++)
#pragma unroll
                for (int j = 0; j < S2_SN; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int x = row0 + 16 * mt + (e / 2) * 8, y = y0 + j * 8 + 2 * t + (e % 2);
                        if (!(y < n && s2_visible(x, y, cls)))
                            s[mt][j][e] = S2_NEG_INF;
                    }
        }

        // The online softmax: exp2(s * scale * log2e - m).
#pragma unroll
        for (int mt = 0; mt < S2_FWD_MT; mt++) {
            float alpha[2];
#pragma unroll
            for (int hf = 0; hf < 2; hf++) {
                float mx = S2_NEG_INF;
#pragma unroll
                for (int j = 0; j < S2_SN; j++)
                    mx = fmaxf(mx, fmaxf(s[mt][j][2 * hf], s[mt][j][2 * hf + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float mnew = fmaxf(m[mt][hf], mx * S2_SCALE_LOG2);
                const float msafe = mnew == S2_NEG_INF ? 0.f : mnew; // nothing visible yet
                alpha[hf] = s2_exp2(m[mt][hf] - msafe);
                m[mt][hf] = mnew;
                float sum = 0.f;
#pragma unroll
                for (int j = 0; j < S2_SN; j++)
#pragma unroll
                    for (int e = 2 * hf; e < 2 * hf + 2; e++) {
                        s[mt][j][e] = s2_exp2(fmaf(s[mt][j][e], S2_SCALE_LOG2, -msafe));
                        sum += s[mt][j][e];
                    }
                l[mt][hf] = l[mt][hf] * alpha[hf] + sum;
            }
#pragma unroll
            for (int i = 0; i < S2_ON; i++) {
                acc[mt][i][0] *= alpha[0], acc[mt][i][1] *= alpha[0];
                acc[mt][i][2] *= alpha[1], acc[mt][i][3] *= alpha[1];
            }
        }

        // O += P V: P straight from the accumulators.
        s2_mma_pb(acc, s, sv, lane);
        __syncthreads(); // this stage is overwritten STAGES - 1 iterations from now
    }
    s2_cp_async_wait<0>();

    // O and LSE, written once, at each row's original position.
#pragma unroll
    for (int mt = 0; mt < S2_FWD_MT; mt++) {
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            float lsum = l[mt][hf];
            lsum += __shfl_xor_sync(0xffffffffu, lsum, 1);
            lsum += __shfl_xor_sync(0xffffffffu, lsum, 2);
            const float inv = 1.f / lsum;
#pragma unroll
            for (int i = 0; i < S2_ON; i++)
                acc[mt][i][2 * hf] *= inv, acc[mt][i][2 * hf + 1] *= inv;
            const int x = row0 + 16 * mt + 8 * hf;
            if (x < n && t == 0)
                lse[(long)h * total_tokens + seq0 + s2_position(x, cls, n)] = (m[mt][hf] + log2f(lsum)) * S2_LN2;
        }
        // S2_TEST_BROKEN is 1 only in test builds: a deliberately wrong O for the tuner's gate.
        s2_store_strip(o, S2_NUM_HEADS, h, acc[mt], S2_TEST_BROKEN ? 1.01f : 1.f, row0 + 16 * mt,
                       n, seq0, cls, lane);
    }
}

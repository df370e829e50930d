// templates/attn_fwd_wgmma.cuh — S²-Attn forward for Hopper (sm_90a) on warpgroup tensor-core
// products (wgmma), the plan's tile option fwd_wgmma = 1. Same contract, grid, index map and
// tile classification as attn_fwd.cuh; only the products differ.
//
// A block is S2_FWD_WARPS / 4 warpgroups of 128 threads; each warpgroup owns 64 consecutive
// virtual query rows (warp w of it rows 16w .. 16w+15, the same per-thread row layout as
// mma.m16n8k16, so masking, the online softmax and the store are attn_fwd.cuh's). Q and the
// streamed K/V tiles live in shared memory in the 128-byte-swizzled layout wgmma reads through
// matrix descriptors: the head dim is cut into panels of 64 elements; a panel holds its rows as
// 128-byte lines, 16-byte chunk c of row r at chunk c ^ (r % 8), and starts 1024-byte aligned.
//   S = Q K^T:  m64 n(BN) k16 steps over d, both operands from shared memory (K-major);
//   O += P V:   m64 n(d) k16 steps over the BN keys, P from registers (the S accumulators,
//               rounded to the storage type, are exactly the register A fragment), V from
//               shared memory read transposed (MN-major: d is contiguous in V's rows).
// Step j issues its S behind the O += P V of step j - 1 and waits only for S: the tensor cores
// run the step before's P V while this step's softmax runs; O is rescaled and P packed once
// that product is done. So a step reads two tiles (K of j, V of j - 1) and needs two stages.
// cp.async fills shared memory through the generic proxy, wgmma reads it through the async
// proxy: every thread fences its copies (fence.proxy.async) before the barrier that publishes
// a tile. The emitter generates the wgmma wrappers for this tile's n (s2_wgmma_qk, s2_wgmma_pv);
// the layout, descriptor and fence helpers are wgmma.cuh's.

#define S2_FWD_BM (16 * S2_FWD_WARPS)
#define S2_FWD_THREADS (32 * S2_FWD_WARPS)
#define S2_PANELS (S2_HEAD_DIM / 64)
#define S2_SACC (S2_FWD_BN / 2)  // S accumulators per thread (m64 n(BN) over 128 threads)
#define S2_OACC (S2_HEAD_DIM / 2) // O accumulators per thread

extern "C" __global__ void __launch_bounds__(S2_FWD_THREADS, 1)
s2_attn_fwd(const s2_elem *__restrict__ q,      // [T, H, d]
            const s2_elem *__restrict__ k,      // [T, Hkv, d]
            const s2_elem *__restrict__ v,      // [T, Hkv, d]
            s2_elem *__restrict__ o,            // [T, H, d]
            float *__restrict__ lse,            // [H, T], natural log
            const int *__restrict__ cu_seqlens, // [B + 1]
            int total_tokens)
{
    extern __shared__ __align__(16) unsigned char s2_smem_raw[];
    s2_elem *sq = (s2_elem *)s2_smem_aligned(s2_smem_raw); // panels start 1024-byte aligned
    s2_elem *skv = sq + S2_FWD_BM * S2_HEAD_DIM; // [stages][K, V][panels][BN][64]
    const int kv_stride = S2_FWD_BN * S2_HEAD_DIM;

    const int h = blockIdx.y, b = blockIdx.z;
    const int hk = h / (S2_NUM_HEADS / S2_NUM_KV_HEADS);
    const int seq0 = cu_seqlens[b], n = cu_seqlens[b + 1] - seq0;
    const int x0 = (gridDim.x - 1 - blockIdx.x) * S2_FWD_BM; // heavier tiles first
    if (x0 >= n)
        return;
    const int cls = s2_head_class(h);
    const int wg = threadIdx.x / 128, warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
    const int t = lane % 4;
    const int xlast = min(x0 + S2_FWD_BM, n) - 1;
    const int gs_last = s2_group_start(xlast, cls);
    const int kt_begin = s2_group_start(x0, cls) / S2_FWD_BN;
    const int kt_end = xlast / S2_FWD_BN + 1;

    // Key tile j of the walk into stage j % STAGES, this thread's share.
    auto load_kv = [&](int j) {
        s2_elem *dk = skv + (2 * (j % S2_FWD_STAGES)) * kv_stride;
        s2_load_tile_sw<S2_FWD_BN, S2_FWD_THREADS>(dk, k, seq0, (kt_begin + j) * S2_FWD_BN, n, cls, S2_NUM_KV_HEADS, hk);
        s2_load_tile_sw<S2_FWD_BN, S2_FWD_THREADS>(dk + kv_stride, v, seq0, (kt_begin + j) * S2_FWD_BN, n, cls, S2_NUM_KV_HEADS, hk);
    };
    const int n_kt = kt_end - kt_begin;
    // Step j reads V of tile j - 1 (its P V runs beside this step's S), so at the top of step j
    // the stage of tile j - 2 is the one free: tiles are loaded AHEAD = STAGES - 2 steps ahead
    // (with two stages, at the top of the step that uses them, behind a second barrier).
    constexpr int AHEAD = S2_FWD_STAGES - 2;
    s2_load_tile_sw<S2_FWD_BM, S2_FWD_THREADS>(sq, q, seq0, x0, n, cls, S2_NUM_HEADS, h);
#pragma unroll
    for (int s = 0; s < AHEAD; s++) {
        if (s < n_kt)
            load_kv(s);
        s2_cp_async_commit(); // (tile 0's group holds Q too)
    }

    float acc[S2_OACC];
#pragma unroll
    for (int i = 0; i < S2_OACC; i++)
        acc[i] = 0.f;
    float m[2] = {S2_NEG_INF, S2_NEG_INF}, l[2] = {0.f, 0.f};
    // This thread's first row; its second is 8 below.
    const int row0 = x0 + wg * 64 + warp * 16 + lane / 4;
    // P of the step before, as the register A fragments of its O += P V (the S accumulators of
    // two adjacent n8 chunks, rounded, are one k16 step).
    unsigned pa[S2_FWD_BN / 16][4];

    for (int it = 0; it < n_kt; it++) {
        {
            // After the (first) barrier tile it has landed for every thread and every thread
            // is done with tile it - 2 (its P V waited for in step it - 1), whose stage is
            // reloaded with tile it + AHEAD.
#if S2_FWD_STAGES >= 3
            s2_cp_async_wait<AHEAD - 1>();
            s2_fence_proxy_async(); // this thread's copies, visible to wgmma after the barrier
            __syncthreads();
            if (it + AHEAD < n_kt)
                load_kv(it + AHEAD);
            s2_cp_async_commit();
#else
            __syncthreads();
            load_kv(it);
            s2_cp_async_commit();
            s2_cp_async_wait<0>();
            s2_fence_proxy_async();
            __syncthreads();
#endif
        }
        const s2_elem *sk = skv + (2 * (it % S2_FWD_STAGES)) * kv_stride;

        // S = Q K^T (K-major operands, k16 steps of 32 bytes inside a 64-element panel), then
        // O += P V of the step before behind it (V MN-major: the next 64 d-columns a panel,
        // BN * 128 bytes, away, the next 8 keys 1024 bytes away): the tensor cores run that
        // product while this step's softmax runs.
        float s[S2_SACC];
#pragma unroll
        for (int i = 0; i < S2_SACC; i++)
            s[i] = 0.f; // overwritten by the first step (scale-d 0); defined for the compiler
        s2_fence_regs(s);
        s2_fence_regs(acc);
        s2_wgmma_fence();
        s2_wgmma_xyt<S2_FWD_BM, S2_FWD_BN>(s, sq, wg * 64, sk);
        s2_wgmma_commit();
        if (it > 0) {
            const s2_elem *sv = skv + (2 * ((it - 1) % S2_FWD_STAGES) + 1) * kv_stride;
            s2_wgmma_py<S2_FWD_BN>(acc, pa, sv);
            s2_wgmma_commit();
            asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory"); // S, not P V
        } else {
            s2_wgmma_wait0();
        }
        s2_fence_regs(s);

        const int y0 = (kt_begin + it) * S2_FWD_BN;
        if (s2_tile_needs_mask(x0, gs_last, y0, n, S2_FWD_BN)) {
#pragma unroll
            for (int j = 0; j < S2_FWD_BN / 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const int x = row0 + (e / 2) * 8, y = y0 + j * 8 + 2 * t + (e % 2);
                    if (!(y < n && s2_visible(x, y, cls)))
                        s[4 * j + e] = S2_NEG_INF;
                }
        }

        // The online softmax (exp2 domain, scale folded in), rows in quads as in attn_fwd.cuh:
        // the row maxima, then P = exp2(S - m) in place; O is rescaled and P packed into the
        // fragments once the P V of the step before has finished with both.
        float msafe[2], alpha[2];
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            float mx = S2_NEG_INF;
#pragma unroll
            for (int j = 0; j < S2_FWD_BN / 8; j++)
                mx = fmaxf(mx, fmaxf(s[4 * j + 2 * hf], s[4 * j + 2 * hf + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            const float mnew = fmaxf(m[hf], mx * S2_SCALE_LOG2);
            msafe[hf] = mnew == S2_NEG_INF ? 0.f : mnew;
            alpha[hf] = s2_exp2(m[hf] - msafe[hf]);
            m[hf] = mnew;
        }
        float sum[2] = {0.f, 0.f};
#pragma unroll
        for (int i = 0; i < S2_SACC; i++) {
            const int hf = (i / 2) % 2;
            s[i] = s2_exp2(fmaf(s[i], S2_SCALE_LOG2, -msafe[hf]));
            sum[hf] += s[i];
        }
        l[0] = l[0] * alpha[0] + sum[0];
        l[1] = l[1] * alpha[1] + sum[1];
        s2_wgmma_wait0(); // the P V of the step before: acc and pa are free
        s2_fence_regs(acc);
#pragma unroll
        for (int i = 0; i < S2_HEAD_DIM / 8; i++) {
            acc[4 * i] *= alpha[0], acc[4 * i + 1] *= alpha[0];
            acc[4 * i + 2] *= alpha[1], acc[4 * i + 3] *= alpha[1];
        }
        s2_acc_to_afrag<S2_FWD_BN / 8>(s, pa);
    }
    if (n_kt > 0) { // the last step's P V
        const s2_elem *sv = skv + (2 * ((n_kt - 1) % S2_FWD_STAGES) + 1) * kv_stride;
        s2_fence_regs(acc);
        s2_wgmma_fence();
        s2_wgmma_py<S2_FWD_BN>(acc, pa, sv);
        s2_wgmma_commit();
        s2_wgmma_wait0();
        s2_fence_regs(acc);
    }
    s2_cp_async_wait<0>();

#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        float lsum = l[hf];
        lsum += __shfl_xor_sync(0xffffffffu, lsum, 1);
        lsum += __shfl_xor_sync(0xffffffffu, lsum, 2);
        const float inv = 1.f / lsum;
#pragma unroll
        for (int i = 0; i < S2_HEAD_DIM / 8; i++)
            acc[4 * i + 2 * hf] *= inv, acc[4 * i + 2 * hf + 1] *= inv;
        const int x = row0 + 8 * hf;
        if (x < n && t == 0)
            lse[(long)h * total_tokens + seq0 + s2_position(x, cls, n)] = (m[hf] + log2f(lsum)) * S2_LN2;
    }
    s2_store_strip(o, S2_NUM_HEADS, h, *reinterpret_cast<const float(*)[S2_ON][4]>(acc),
                   S2_TEST_BROKEN ? 1.01f : 1.f, row0, n, seq0, cls, lane);
}

// templates/attn_fwd_wgmma.cuh — S²-Attn forward for Hopper (sm_90a) on warpgroup tensor-core
// products (wgmma), the plan's tile option fwd_wgmma = 1. Same contract, grid, index map and
// tile classification as attn_fwd.cuh; the products differ, and the order in which blocks take
// their tiles (s2_block_tile, longest work first).
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
// cp.async fills shared memory through the generic proxy, wgmma reads it through the async
// proxy. A stage passes from the copies to the products and back in one of two ways, the
// plan's fwd_mbar:
//   0  cp.async commit groups and a block barrier a step: every thread fences its copies
//      (fence.proxy.async) before the barrier that publishes a tile;
//   1  a ring of mbarriers, full[st] (every thread's copies of the stage's tile have landed;
//      each thread arrives through cp.async.mbarrier.arrive.noinc) and empty[st] (every thread
//      is done with it), each thread fencing after its wait on full; no block barrier a step,
//      so the two warpgroups of a block run apart and take turns issuing S (s2_turn_*), each
//      one's softmax beside the other's products.
// The emitter generates the wgmma wrappers for this tile's n (s2_wgmma_qk, s2_wgmma_pv);
// the layout, descriptor and fence helpers are wgmma.cuh's.

#define S2_FWD_BM (16 * S2_FWD_WARPS)
#define S2_FWD_THREADS (32 * S2_FWD_WARPS)
#if S2_FWD_TMA // (the option blocks of the TMA forward: templates/tma.cuh says how it works)
#define S2_FWD_BLOCK (S2_FWD_THREADS + 128) // the threads that compute, and the producer's
#endif
#define S2_PANELS (S2_HEAD_DIM / 64)
#define S2_SACC (S2_FWD_BN / 2)  // S accumulators per thread (m64 n(BN) over 128 threads)
#define S2_OACC (S2_HEAD_DIM / 2) // O accumulators per thread
#define S2_FWD_TURNS (S2_FWD_MBAR && S2_FWD_WARPS == 8)

// S of the key tile at y0 with -inf where a key lies outside the span [klo, khi] of the
// thread's row (row half e / 2 of accumulator e), on the tiles that need a mask at all.
__device__ __forceinline__ void s2_mask_scores(float (&s)[S2_SACC], int x0, int gs_last, int y0,
                                               int n, int t, const int (&klo)[2],
                                               const int (&khi)[2])
{
    if (s2_tile_needs_mask(x0, gs_last, y0, n, S2_FWD_BN)) {
#pragma unroll
        for (int j = 0; j < S2_FWD_BN / 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int y = y0 + j * 8 + 2 * t + (e % 2);
                if (y < klo[e / 2] || y > khi[e / 2])
                    s[4 * j + e] = S2_NEG_INF;
            }
    }
}

// The maximum over the tile of the thread's row half hf, its quad's (the row's four threads).
__device__ __forceinline__ float s2_row_max(const float (&s)[S2_SACC], int hf)
{
    float mx = S2_NEG_INF;
#pragma unroll
    for (int j = 0; j < S2_FWD_BN / 8; j++)
        mx = fmaxf(mx, fmaxf(s[4 * j + 2 * hf], s[4 * j + 2 * hf + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    return fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
}

#if S2_FWD_TMA
extern "C" __global__ void __launch_bounds__(S2_FWD_BLOCK, 1)
#else
extern "C" __global__ void __launch_bounds__(S2_FWD_THREADS, 1)
#endif
s2_attn_fwd(const s2_elem *__restrict__ q,      // [T, H, d]
            const s2_elem *__restrict__ k,      // [T, Hkv, d]
            const s2_elem *__restrict__ v,      // [T, Hkv, d]
            s2_elem *__restrict__ o,            // [T, H, d]
            float *__restrict__ lse,            // [H, T], natural log
            const int *__restrict__ cu_seqlens, // [B + 1]
#if S2_WINDOW
            int total_tokens, int win_qlo, int win_klo) // the window (common.cuh)
#else
#if S2_FWD_TMA
            int total_tokens, const __grid_constant__ s2_tmap tm_q, // q, k, v as tensor maps
            const __grid_constant__ s2_tmap tm_k, const __grid_constant__ s2_tmap tm_v)
#else
            int total_tokens)
#endif
#endif
{
    s2_grid_dependency();
    extern __shared__ __align__(16) unsigned char s2_smem_raw[];
    s2_elem *sq = (s2_elem *)s2_smem_aligned(s2_smem_raw); // panels start 1024-byte aligned
    s2_elem *skv = sq + S2_FWD_BM * S2_HEAD_DIM; // [stages][K, V][panels][BN][64]
    const int kv_stride = S2_FWD_BN * S2_HEAD_DIM;

    int h, tile;
    s2_block_tile<S2_FWD_BM, true, 1>(h, tile);
    const int b = blockIdx.z;
    const int hk = h / (S2_NUM_HEADS / S2_NUM_KV_HEADS);
#if S2_WINDOW
    const int seq0 = -win_qlo, n = win_qlo + total_tokens; // one sequence: b = 0
    (void)b;
    const int cls = s2_head_class(h);
    const int x0 = (s2_window_tile0<S2_FWD_BM>(win_qlo) + tile) * S2_FWD_BM;
    if (x0 >= n || x0 < win_qlo)
        return;
#else
    const int seq0 = cu_seqlens[b], n = cu_seqlens[b + 1] - seq0;
    const int cls = s2_head_class(h);
    const int x0 = tile * S2_FWD_BM;
    if (x0 >= n)
        return;
#endif
#if S2_FWD_TMA // the consumers are warpgroups 1 and 2 of the block, numbered 0 and 1 here
    const int wg = threadIdx.x / 128 - 1, warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
#else
    const int wg = threadIdx.x / 128, warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
#endif
    const int t = lane % 4;
    const int xlast = min(x0 + S2_FWD_BM, n) - 1;
    const int gs_last = s2_group_start(xlast, cls);
    const int kt_begin = s2_group_start(x0, cls) / S2_FWD_BN;
    const int kt_end = xlast / S2_FWD_BN + 1;

#if S2_FWD_MBAR // full[STAGES], empty[STAGES] below the stages
    unsigned long long *full = (unsigned long long *)(skv + 2 * S2_FWD_STAGES * kv_stride);
    unsigned long long *empty = full + S2_FWD_STAGES;
#if S2_FWD_TMA
    // full[st]: the producer's one arrival and the tile's bytes; empty[st]: every consumer
    // thread; qbar: Q's bytes.
    unsigned long long *qbar = empty + S2_FWD_STAGES;
    if (threadIdx.x == 0) {
        for (int i = 0; i < S2_FWD_STAGES; i++) {
            s2_mbar_init(&full[i], 1);
            s2_mbar_init(&empty[i], S2_FWD_THREADS);
        }
        s2_mbar_init(qbar, 1);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
#else
    s2_mbar_ring_init(full, 2 * S2_FWD_STAGES, S2_FWD_THREADS);
#endif
#endif
    // Key/value tile j of the walk into stage j % STAGES (this thread's share; with fwd_mbar 0
    // one commit group a tile, empty past the last tile; with fwd_mbar 1 once every thread is
    // done with the stage's tile before, j - STAGES): the first STAGES - 1 here, then step it
    // loads tile it + STAGES - 1 into the stage tile it - 1 used, with two or more stages
    // behind the step's S, so the tensor cores start on it first.
    [[maybe_unused]] const int n_kt = kt_end - kt_begin; // (the block-barrier steps count kt)
#if S2_FWD_TMA
    if (threadIdx.x < 128) { // the producer: one thread issues every load, the rest leave
        s2_setmaxnreg_dec<24>();
        if (threadIdx.x == 0) {
            constexpr unsigned QBYTES = S2_FWD_BM * S2_HEAD_DIM * 2;
            constexpr unsigned KVBYTES = 2 * S2_FWD_BN * S2_HEAD_DIM * 2;
            s2_tma_prefetch_map(&tm_q);
            s2_tma_prefetch_map(&tm_k);
            s2_tma_prefetch_map(&tm_v);
            s2_mbar_expect_tx(qbar, QBYTES);
#pragma unroll
            for (int pn = 0; pn < S2_PANELS; pn++)
                s2_tma_load3(sq + pn * S2_FWD_BM * 64, &tm_q, pn * 64, h, seq0 + x0, qbar);
            for (int j = 0; j < n_kt; j++) {
                const int st = j % S2_FWD_STAGES, y0 = seq0 + (kt_begin + j) * S2_FWD_BN;
                if (j >= S2_FWD_STAGES)
                    s2_mbar_wait(&empty[st], (j / S2_FWD_STAGES - 1) & 1);
                s2_elem *dk = skv + (2 * st) * kv_stride;
                s2_mbar_expect_tx(&full[st], KVBYTES);
#pragma unroll
                for (int pn = 0; pn < S2_PANELS; pn++) {
                    s2_tma_load3(dk + pn * S2_FWD_BN * 64, &tm_k, pn * 64, hk, y0, &full[st]);
                    s2_tma_load3(dk + kv_stride + pn * S2_FWD_BN * 64, &tm_v, pn * 64, hk, y0,
                                 &full[st]);
                }
            }
        }
        return;
    }
    s2_setmaxnreg_inc<240>();
#if S2_FWD_OVERLAP
#else
    auto load_tile = [&](int) {}; // the producer loads
#endif
    s2_mbar_wait(qbar, 0);
#else
    auto copy_tile = [&](int j) { // this thread's copies of tile j, into stage j % STAGES
        s2_elem *dk = skv + (2 * (j % S2_FWD_STAGES)) * kv_stride;
        s2_load_tile_sw<S2_FWD_BN, S2_FWD_THREADS>(dk, k, seq0, (kt_begin + j) * S2_FWD_BN, n, cls, S2_NUM_KV_HEADS, hk);
        s2_load_tile_sw<S2_FWD_BN, S2_FWD_THREADS>(dk + kv_stride, v, seq0, (kt_begin + j) * S2_FWD_BN, n, cls, S2_NUM_KV_HEADS, hk);
    };
    auto load_tile = [&](int j) {
#if S2_FWD_MBAR
        if (j < n_kt) {
            const int st = j % S2_FWD_STAGES;
            if (j >= S2_FWD_STAGES)
                s2_mbar_wait(&empty[st], (j / S2_FWD_STAGES - 1) & 1);
            copy_tile(j);
            s2_mbar_arrive_copies(&full[st]);
        }
#else
        if (kt_begin + j < kt_end)
            copy_tile(j);
        s2_cp_async_commit();
#endif
    };
    // Q's copies, landing with tile 0's
    s2_load_tile_sw<S2_FWD_BM, S2_FWD_THREADS>(sq, q, seq0, x0, n, cls, S2_NUM_HEADS, h);
#pragma unroll
    for (int j = 0; j < S2_FWD_STAGES - 1; j++)
        load_tile(j);
#endif

    float acc[S2_OACC];
#pragma unroll
    for (int i = 0; i < S2_OACC; i++)
        acc[i] = 0.f;
    float m[2] = {S2_NEG_INF, S2_NEG_INF}, l[2] = {0.f, 0.f};
    // This thread's first row; its second is 8 below. The keys each row sees: [klo, khi].
    const int row0 = x0 + wg * 64 + warp * 16 + lane / 4;
    int klo[2], khi[2];
#pragma unroll
    for (int hf = 0; hf < 2; hf++)
        s2_query_span(row0 + 8 * hf, cls, n, klo[hf], khi[hf]);

#if S2_FWD_OVERLAP // (the TMA forward's steps with each warpgroup's S ahead of its P V)
    // Step it issues S_it = Q K_it^T and then O += P_{it-1} V_{it-1} in one turn, waits for
    // S_it alone (the older group), masks it and forms its softmax while P_{it-1} V_{it-1}
    // still runs on the tensor cores, then waits for that product, releases stage it - 1,
    // rescales O and rounds P_it into the A fragments of the next step's P V. The first step
    // has no P V, a last turn issues the last one. P stays in s (exponentiated in place) until
    // the product that reads the fragments has finished.
    float s[S2_SACC];
    unsigned pa[S2_FWD_BN / 16][4];
    // Masks S of tile it, takes the row maxima into m and forms P in s (the new maxima's
    // rescale of O in alpha; l rescaled and summed here).
    auto softmax = [&](int it, float (&alpha)[2]) {
        s2_mask_scores(s, x0, gs_last, (kt_begin + it) * S2_FWD_BN, n, t, klo, khi);
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            const float mnew = fmaxf(m[hf], s2_row_max(s, hf) * S2_SCALE_LOG2);
            const float msafe = mnew == S2_NEG_INF ? 0.f : mnew;
            alpha[hf] = s2_exp2(m[hf] - msafe);
            m[hf] = mnew;
            float sum = 0.f;
#pragma unroll
            for (int j = 0; j < S2_FWD_BN / 8; j++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    float &x = s[4 * j + 2 * hf + e];
                    x = s2_exp2(fmaf(x, S2_SCALE_LOG2, -msafe));
                    sum += x;
                }
            l[hf] = l[hf] * alpha[hf] + sum;
        }
    };
    // O rescaled by alpha (once the P V before has finished) and P rounded into pa.
    auto rescale_and_round = [&](const float (&alpha)[2]) {
#pragma unroll
        for (int i = 0; i < S2_HEAD_DIM / 8; i++)
#pragma unroll
            for (int hf = 0; hf < 2; hf++)
                acc[4 * i + 2 * hf] *= alpha[hf], acc[4 * i + 2 * hf + 1] *= alpha[hf];
        s2_acc_to_afrag<S2_FWD_BN / 8>(s, pa);
    };
    s2_turn_start(wg);
    {
        float alpha[2];
        s2_mbar_wait(&full[0], 0);
        s2_overwritten_regs(s);
        s2_wgmma_fence();
        s2_turn_wait(wg);
        s2_wgmma_xyt<S2_FWD_BM, S2_FWD_BN>(s, sq, wg * 64, skv);
        s2_wgmma_commit();
        s2_turn_pass(wg);
        s2_wgmma_wait0();
        s2_fence_regs(s);
        softmax(0, alpha);
        rescale_and_round(alpha);
    }
    for (int it = 1; it < n_kt; it++) {
        const s2_elem *sk = skv + (2 * (it % S2_FWD_STAGES)) * kv_stride;
        const s2_elem *sv_prev = skv + (2 * ((it - 1) % S2_FWD_STAGES) + 1) * kv_stride;
        float alpha[2];
        s2_mbar_wait(&full[it % S2_FWD_STAGES], (it / S2_FWD_STAGES) & 1);
        s2_overwritten_regs(s);
        s2_fence_regs(acc);
        s2_wgmma_fence();
        s2_turn_wait(wg);
        s2_wgmma_xyt<S2_FWD_BM, S2_FWD_BN>(s, sq, wg * 64, sk);
        s2_wgmma_commit();
        s2_wgmma_py<S2_FWD_BN>(acc, pa, sv_prev);
        s2_wgmma_commit();
        s2_turn_pass(wg);
        s2_wgmma_wait1(); // S_it has finished; P_{it-1} V_{it-1} may still run
        s2_fence_regs(s);
        softmax(it, alpha);
        s2_wgmma_wait0();
        s2_fence_regs(acc);
        s2_mbar_arrive(&empty[(it - 1) % S2_FWD_STAGES]); // this thread is done with tile it - 1
        rescale_and_round(alpha);
    }
    {
        s2_fence_regs(acc);
        s2_wgmma_fence();
        s2_turn_wait(wg);
        s2_wgmma_py<S2_FWD_BN>(acc, pa, skv + (2 * ((n_kt - 1) % S2_FWD_STAGES) + 1) * kv_stride);
        s2_wgmma_commit();
        s2_turn_pass(wg);
        s2_wgmma_wait0();
        s2_fence_regs(acc);
        s2_mbar_arrive(&empty[(n_kt - 1) % S2_FWD_STAGES]);
    }
    s2_turn_end(wg);
#else
#if S2_FWD_TURNS
    s2_turn_start(wg);
#endif
    // (The two rings keep the loop and guard forms they were measured in: with the block
    // barriers' forms, 3b79811, the mbarrier ring's forward was 3 % slower at N = 16k, H100.)
#if S2_FWD_MBAR
    for (int it = 0; it < n_kt; it++) {
#else
    for (int kt = kt_begin; kt < kt_end; kt++) {
        const int it = kt - kt_begin;
#endif
        {
#if S2_FWD_MBAR
            // Tile it has landed for every thread (with one stage, loaded here first).
#if S2_FWD_STAGES == 1
            load_tile(it);
#endif
            s2_mbar_wait(&full[it % S2_FWD_STAGES], (it / S2_FWD_STAGES) & 1);
#if S2_FWD_TMA // (the TMA writes through the async proxy, which wgmma reads)
#else
            s2_fence_proxy_async(); // every thread's copies, visible to this thread's wgmma
#endif
#elif S2_FWD_STAGES >= 2
            // One barrier a step (two with one stage): after it, tile it has landed for every
            // thread and every thread is done with tile it - 1, whose stage is reloaded (behind
            // this step's S).
            s2_cp_async_wait<S2_FWD_STAGES - 2>();
            s2_fence_proxy_async(); // this thread's copies, visible to wgmma after the barrier
            __syncthreads();
#else
            load_tile(it + S2_FWD_STAGES - 1);
            s2_cp_async_wait<0>();
            s2_fence_proxy_async();
            __syncthreads();
#endif
        }
        const s2_elem *sk = skv + (2 * (it % S2_FWD_STAGES)) * kv_stride;
        const s2_elem *sv = sk + kv_stride;

        // S = Q K^T: K-major operands, k16 steps of 32 bytes inside a 64-element panel.
        float s[S2_SACC];
        s2_overwritten_regs(s);
        s2_wgmma_fence();
#if S2_FWD_TURNS
        s2_turn_wait(wg);
#endif
        s2_wgmma_xyt<S2_FWD_BM, S2_FWD_BN>(s, sq, wg * 64, sk);
        s2_wgmma_commit();
#if S2_FWD_TURNS
        s2_turn_pass(wg);
#endif
#if S2_FWD_STAGES >= 2
        load_tile(it + S2_FWD_STAGES - 1);
#endif
        s2_wgmma_wait0();
        s2_fence_regs(s);

        s2_mask_scores(s, x0, gs_last, (kt_begin + it) * S2_FWD_BN, n, t, klo, khi);

        // The online softmax (exp2 domain, scale folded in), rows in quads as in attn_fwd.cuh:
        // the row maxima first and O rescaled, then P sixteen keys at a time, each k16 step of
        // O += P V issued as soon as its fragment is formed, so the tensor cores work through
        // P V while the rest of P is exponentiated. (s is not written while a product is in
        // flight: P goes straight into the fragments.)
        float msafe[2], sum[2] = {0.f, 0.f};
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            const float mnew = fmaxf(m[hf], s2_row_max(s, hf) * S2_SCALE_LOG2);
            msafe[hf] = mnew == S2_NEG_INF ? 0.f : mnew;
            const float alpha = s2_exp2(m[hf] - msafe[hf]);
            m[hf] = mnew;
            l[hf] *= alpha;
#pragma unroll
            for (int i = 0; i < S2_HEAD_DIM / 8; i++)
                acc[4 * i + 2 * hf] *= alpha, acc[4 * i + 2 * hf + 1] *= alpha;
        }

        // O += P V: the k16 step kk of P is S's n8 chunks 2kk and 2kk + 1; V MN-major, the
        // next 64 d-columns a panel (BN * 128 bytes) away, the next 8 keys 1024 bytes away.
        unsigned pa[S2_FWD_BN / 16][4];
        s2_fence_regs(acc);
#pragma unroll
        for (int kk = 0; kk < S2_FWD_BN / 16; kk++) {
#pragma unroll
            for (int r = 0; r < 4; r++) { // pa[kk][r]: chunk 2kk + r / 2, row half r % 2
                const int i = 8 * kk + 2 * r, hf = r % 2;
                const float p0 = s2_exp2(fmaf(s[i], S2_SCALE_LOG2, -msafe[hf]));
                const float p1 = s2_exp2(fmaf(s[i + 1], S2_SCALE_LOG2, -msafe[hf]));
                sum[hf] += p0 + p1;
                pa[kk][r] = s2_pack2(p0, p1);
            }
            s2_wgmma_fence();
            s2_wgmma_pv(acc, pa[kk], s2_desc_mn<S2_FWD_BN>(sv, kk));
        }
        s2_wgmma_commit();
        l[0] += sum[0];
        l[1] += sum[1];
        s2_wgmma_wait0();
        s2_fence_regs(acc);
#if S2_FWD_MBAR
        s2_mbar_arrive(&empty[it % S2_FWD_STAGES]); // this thread is done with tile it
#elif S2_FWD_STAGES == 1
        __syncthreads(); // the one stage is reloaded at the top of the next step
#endif
    }
#if S2_FWD_TURNS
    s2_turn_end(wg);
#endif
#if !S2_FWD_MBAR
    s2_cp_async_wait<0>();
#endif
#endif

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

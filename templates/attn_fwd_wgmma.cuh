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

// A warpgroup thread's rows before the first step: O, the row maxima and sums cleared, its first
// row row0 (its second is 8 below) and the keys each row sees, [klo, khi].
__device__ __forceinline__ int s2_fwd_rows_begin(float (&acc)[S2_OACC], float (&m)[2],
                                                 float (&l)[2], int (&klo)[2], int (&khi)[2],
                                                 int x0, int wg, int warp, int lane, int cls,
                                                 int n)
{
#pragma unroll
    for (int i = 0; i < S2_OACC; i++)
        acc[i] = 0.f;
    m[0] = m[1] = S2_NEG_INF;
    l[0] = l[1] = 0.f;
    const int row0 = x0 + wg * 64 + warp * 16 + lane / 4;
#pragma unroll
    for (int hf = 0; hf < 2; hf++)
        s2_query_span(row0 + 8 * hf, cls, n, klo[hf], khi[hf]);
    return row0;
}

// The end of a warpgroup's rows: O divided by the row sums and stored at the rows' positions,
// and each row's log-sum-exp (natural log) into lse [H, T].
__device__ __forceinline__ void s2_fwd_store(float (&acc)[S2_OACC], const float (&m)[2],
                                             const float (&l)[2], s2_elem *o, float *lse, int h,
                                             int row0, int n, int seq0, int cls, int total_tokens,
                                             int lane)
{
    const int t = lane % 4;
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
            lse[(long)h * total_tokens + seq0 + s2_position(x, cls, n)] =
                (m[hf] + log2f(lsum)) * S2_LN2;
    }
    s2_store_strip(o, S2_NUM_HEADS, h, *reinterpret_cast<const float(*)[S2_ON][4]>(acc),
                   S2_TEST_BROKEN ? 1.01f : 1.f, row0, n, seq0, cls, lane);
}

#if S2_FWD_TMA
// The producer's loads of one block tile (one thread issues them): Q's rows [row_q, row_q + BM)
// of head h, counted on qbar, then the n_kt key/value tiles from row y_first of kv head hk into
// the ring's stages g, g + 1, ... (stage g % STAGES, each once the consumers are done with the
// tile it held before: g counts the tiles the ring has taken, across block tiles).
__device__ __forceinline__ void s2_fwd_produce(s2_elem *sq, s2_elem *skv, unsigned long long *full,
                                               unsigned long long *empty, unsigned long long *qbar,
                                               const s2_tmap *tm_q, const s2_tmap *tm_k,
                                               const s2_tmap *tm_v, int h, int hk, int row_q,
                                               int y_first, int n_kt, int g)
{
    constexpr unsigned QBYTES = S2_FWD_BM * S2_HEAD_DIM * 2;
    constexpr unsigned KVBYTES = 2 * S2_FWD_BN * S2_HEAD_DIM * 2;
    constexpr int kv_stride = S2_FWD_BN * S2_HEAD_DIM;
    s2_mbar_expect_tx(qbar, QBYTES);
#pragma unroll
    for (int pn = 0; pn < S2_PANELS; pn++)
        s2_tma_load3(sq + pn * S2_FWD_BM * 64, tm_q, pn * 64, h, row_q, qbar);
    for (int j = 0; j < n_kt; j++) {
        const int gj = g + j, st = gj % S2_FWD_STAGES, y0 = y_first + j * S2_FWD_BN;
        if (gj >= S2_FWD_STAGES)
            s2_mbar_wait(&empty[st], (gj / S2_FWD_STAGES - 1) & 1);
        s2_elem *dk = skv + (2 * st) * kv_stride;
        s2_mbar_expect_tx(&full[st], KVBYTES);
#pragma unroll
        for (int pn = 0; pn < S2_PANELS; pn++) {
            s2_tma_load3(dk + pn * S2_FWD_BN * 64, tm_k, pn * 64, hk, y0, &full[st]);
            s2_tma_load3(dk + kv_stride + pn * S2_FWD_BN * 64, tm_v, pn * 64, hk, y0, &full[st]);
        }
    }
}
#endif

#if S2_FWD_OVERLAP // (the TMA forward's steps with each warpgroup's S ahead of its P V)
// One block tile's steps over its n_kt key tiles, taken from the ring's stages g, g + 1, ...
// Step it issues S_it = Q K_it^T and then O += P_{it-1} V_{it-1} in one turn, waits for S_it
// alone (the older group), masks it and forms its softmax while P_{it-1} V_{it-1} still runs on
// the tensor cores, then waits for that product, releases stage it - 1, rescales O and rounds
// P_it into the A fragments of the next step's P V. The first step has no P V, a last turn
// issues the last one. P stays in s (exponentiated in place) until the product that reads the
// fragments has finished. Q (landed: the caller waited for it) is read once into register A
// fragments, so S reads only K from shared memory (S2_FWD_Q_REGS; the persistent forward's
// consumers, at 232 registers beside its producer's 40, would spill, so there S reads Q from
// shared memory, and the producer reloads it once the tile's last S is done). acc, m and l come
// in cleared and leave with the tile's O, row maxima and row sums.
#define S2_FWD_Q_REGS (!S2_FWD_PERSIST)
__device__ __forceinline__ void s2_fwd_overlap_steps(float (&acc)[S2_OACC], float (&m)[2],
                                                     float (&l)[2], const s2_elem *sq,
                                                     const s2_elem *skv, unsigned long long *full,
                                                     unsigned long long *empty,
#if S2_FWD_PERSIST
                                                     unsigned long long *qempty,
#endif
                                                     int g, int n_kt, int wg, int x0, int gs_last,
                                                     int kt_begin, int n, int t,
                                                     const int (&klo)[2], const int (&khi)[2])
{
    constexpr int kv_stride = S2_FWD_BN * S2_HEAD_DIM;
    float s[S2_SACC];
    unsigned pa[S2_FWD_BN / 16][4];
#if S2_FWD_Q_REGS
    unsigned qa[S2_HEAD_DIM / 16][4]; // this warpgroup's Q rows
    s2_rows_to_afrag<S2_FWD_BM>(qa, sq, wg * 64 + (threadIdx.x % 128) / 32 * 16 +
                                            (threadIdx.x % 32) / 4, threadIdx.x % 32);
    const auto &xq = qa;
#else
    const s2_elem *xq = sq;
#endif
    auto product_s = [&](const s2_elem *sk) {
        s2_wgmma_xt<S2_FWD_BM, S2_FWD_BN>(s, xq, wg * 64, sk);
    };
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
    auto stage = [&](int it) { return (g + it) % S2_FWD_STAGES; }; // tile it's stage
    s2_turn_start(wg);
    {
        float alpha[2];
        s2_mbar_wait(&full[stage(0)], (g / S2_FWD_STAGES) & 1);
        s2_overwritten_regs(s);
        s2_wgmma_fence();
        s2_turn_wait(wg);
        product_s(skv + (2 * stage(0)) * kv_stride);
        s2_wgmma_commit();
        s2_turn_pass(wg);
        s2_wgmma_wait0();
        s2_fence_regs(s);
#if S2_FWD_PERSIST
        if (n_kt == 1)
            s2_mbar_arrive(qempty); // this thread's last S of the tile: Q may be reloaded
#endif
        softmax(0, alpha);
        rescale_and_round(alpha);
    }
    for (int it = 1; it < n_kt; it++) {
        const s2_elem *sk = skv + (2 * stage(it)) * kv_stride;
        const s2_elem *sv_prev = skv + (2 * stage(it - 1) + 1) * kv_stride;
        float alpha[2];
        s2_mbar_wait(&full[stage(it)], ((g + it) / S2_FWD_STAGES) & 1);
        s2_overwritten_regs(s);
        s2_fence_regs(acc);
        s2_wgmma_fence();
        s2_turn_wait(wg);
        product_s(sk);
        s2_wgmma_commit();
        s2_wgmma_py<S2_FWD_BN>(acc, pa, sv_prev);
        s2_wgmma_commit();
        s2_turn_pass(wg);
        s2_wgmma_wait1(); // S_it has finished; P_{it-1} V_{it-1} may still run
        s2_fence_regs(s);
#if S2_FWD_PERSIST
        if (it == n_kt - 1)
            s2_mbar_arrive(qempty);
#endif
        softmax(it, alpha);
        s2_wgmma_wait0();
        s2_fence_regs(acc);
        s2_mbar_arrive(&empty[stage(it - 1)]); // this thread is done with tile it - 1
        rescale_and_round(alpha);
    }
    {
        s2_fence_regs(acc);
        s2_wgmma_fence();
        s2_turn_wait(wg);
        s2_wgmma_py<S2_FWD_BN>(acc, pa, skv + (2 * stage(n_kt - 1) + 1) * kv_stride);
        s2_wgmma_commit();
        s2_turn_pass(wg);
        s2_wgmma_wait0();
        s2_fence_regs(acc);
        s2_mbar_arrive(&empty[stage(n_kt - 1)]);
    }
    s2_turn_end(wg);
}
#endif

#if S2_FWD_PERSIST // (the persistent TMA forward: grid = the SMs, a block takes tile after tile)
// The persistent forward's tile scheduler: a block's first tile is its own index, every later
// one the next of a counter slot in the module's memory (atomicAdd), so a block that finishes
// early takes the next tile in the grid's order (longest first, as s2_block_tile orders the
// blocks of a launch). The last block out resets the slot for the next launch. The host gives
// each launch a slot in turn (S2_FWD_SCHED_SLOTS of them), so launches on several streams at
// once take separate counters.
#define S2_FWD_SCHED_SLOTS 64
__device__ unsigned s2_fwd_sched[S2_FWD_SCHED_SLOTS][2]; // next tile past the grid's, blocks out

__device__ __forceinline__ int s2_fwd_next(unsigned *sched)
{
    return (int)(gridDim.x + atomicAdd(&sched[0], 1u));
}
#endif

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
#if S2_FWD_PERSIST
            const __grid_constant__ s2_tmap tm_k, const __grid_constant__ s2_tmap tm_v,
            int vtiles, int vbatch, unsigned sched_slot) // the tiles' grid (x, batch); its slot
#else
            const __grid_constant__ s2_tmap tm_k, const __grid_constant__ s2_tmap tm_v)
#endif
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

#if S2_FWD_PERSIST
    // The grid is at most one block an SM; the tiles are the blocks of the grid s2_plan_grid_fwd
    // gives (vtiles, H, vbatch), in its order. The producer thread finds each tile (skipping
    // those past their sequence), waits until the consumers' last S of the tile before is done
    // (qempty), hands the tile over in info (its index, seq0, n: qbar's phase publishes them)
    // and loads its Q and K/V tiles; the ring's stages and phases run on across tiles (g). An
    // index of -1 ends the consumers' loop.
    unsigned long long *full = (unsigned long long *)(skv + 2 * S2_FWD_STAGES * kv_stride);
    unsigned long long *empty = full + S2_FWD_STAGES;
    unsigned long long *qbar = empty + S2_FWD_STAGES, *qempty = qbar + 1;
    volatile int *info = (volatile int *)(qbar + 2);
    if (threadIdx.x == 0) {
        for (int i = 0; i < S2_FWD_STAGES; i++) {
            s2_mbar_init(&full[i], 1);
            s2_mbar_init(&empty[i], S2_FWD_THREADS);
        }
        s2_mbar_init(qbar, 1);
        s2_mbar_init(qempty, S2_FWD_THREADS);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    const int per_b = vtiles * S2_NUM_HEADS, total = per_b * vbatch;
    if (threadIdx.x < 128) { // the producer: one thread, the rest leave
        s2_setmaxnreg_dec<40>();
        if (threadIdx.x == 0) {
            unsigned *sched = s2_fwd_sched[sched_slot % S2_FWD_SCHED_SLOTS];
            s2_tma_prefetch_map(&tm_q);
            s2_tma_prefetch_map(&tm_k);
            s2_tma_prefetch_map(&tm_v);
            int vb = blockIdx.x, g = 0;
            for (int kq = 0;; kq++) {
                int h = 0, seq0 = 0, n = 0, x0 = 0;
                for (; vb < total; vb = s2_fwd_next(sched)) {
                    const int b = vb / per_b;
                    int tile;
                    s2_block_tile_at<S2_FWD_BM, true, 1>(vb - b * per_b, vtiles, S2_NUM_HEADS, h,
                                                         tile);
                    seq0 = cu_seqlens[b], n = cu_seqlens[b + 1] - seq0, x0 = tile * S2_FWD_BM;
                    if (x0 < n)
                        break;
                }
                if (kq > 0)
                    s2_mbar_wait(qempty, (kq - 1) & 1); // Q of the tile before is done with
                if (vb >= total) {
                    info[0] = -1;
                    s2_mbar_arrive(qbar); // no more tiles
                    break;
                }
                info[0] = vb, info[1] = seq0, info[2] = n;
                const int cls = s2_head_class(h), xlast = min(x0 + S2_FWD_BM, n) - 1;
                const int kt_begin = s2_group_start(x0, cls) / S2_FWD_BN;
                const int n_kt = xlast / S2_FWD_BN + 1 - kt_begin;
                const int next = s2_fwd_next(sched); // issued here, read after the loads
                s2_fwd_produce(sq, skv, full, empty, qbar, &tm_q, &tm_k, &tm_v, h,
                               h / (S2_NUM_HEADS / S2_NUM_KV_HEADS), seq0 + x0,
                               seq0 + kt_begin * S2_FWD_BN, n_kt, g);
                g += n_kt;
                vb = next;
            }
            __threadfence(); // this block's last fetch before its count
            if (atomicAdd(&sched[1], 1u) == gridDim.x - 1) { // the last block out
                __threadfence();
                atomicExch(&sched[0], 0u);
                atomicExch(&sched[1], 0u);
            }
        }
        return;
    }
    s2_setmaxnreg_inc<232>();
    const int wg = threadIdx.x / 128 - 1, warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
    const int t = lane % 4;
    for (int kq = 0, g = 0;; kq++) {
        s2_mbar_wait(qbar, kq & 1);
        const int vb = info[0];
        if (vb < 0)
            return;
        const int seq0 = info[1], n = info[2], b = vb / per_b;
        int h, tile;
        s2_block_tile_at<S2_FWD_BM, true, 1>(vb - b * per_b, vtiles, S2_NUM_HEADS, h, tile);
        const int cls = s2_head_class(h), x0 = tile * S2_FWD_BM;
        const int xlast = min(x0 + S2_FWD_BM, n) - 1;
        const int gs_last = s2_group_start(xlast, cls);
        const int kt_begin = s2_group_start(x0, cls) / S2_FWD_BN;
        const int n_kt = xlast / S2_FWD_BN + 1 - kt_begin;
        float acc[S2_OACC], m[2], l[2];
        int klo[2], khi[2];
        const int row0 = s2_fwd_rows_begin(acc, m, l, klo, khi, x0, wg, warp, lane, cls, n);
        s2_fwd_overlap_steps(acc, m, l, sq, skv, full, empty, qempty, g, n_kt, wg, x0, gs_last,
                             kt_begin, n, t, klo, khi);
        s2_fwd_store(acc, m, l, o, lse, h, row0, n, seq0, cls, total_tokens, lane);
        g += n_kt;
    }
#else
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
            s2_tma_prefetch_map(&tm_q);
            s2_tma_prefetch_map(&tm_k);
            s2_tma_prefetch_map(&tm_v);
            s2_fwd_produce(sq, skv, full, empty, qbar, &tm_q, &tm_k, &tm_v, h, hk, seq0 + x0,
                           seq0 + kt_begin * S2_FWD_BN, n_kt, 0);
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

    float acc[S2_OACC], m[2], l[2];
    int klo[2], khi[2];
    const int row0 = s2_fwd_rows_begin(acc, m, l, klo, khi, x0, wg, warp, lane, cls, n);

#if S2_FWD_OVERLAP
    s2_fwd_overlap_steps(acc, m, l, sq, skv, full, empty, 0, n_kt, wg, x0, gs_last, kt_begin, n, t,
                         klo, khi);
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

    s2_fwd_store(acc, m, l, o, lse, h, row0, n, seq0, cls, total_tokens, lane);
#endif
}

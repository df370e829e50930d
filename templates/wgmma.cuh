// templates/wgmma.cuh — what the Hopper (sm_90a) attention units share: the 128-byte-swizzled
// shared-memory layout that warpgroup products (wgmma) read through matrix descriptors, the
// descriptors, and the fences around asynchronous products. Emitted after mma.cuh (cp.async,
// s2_smem_addr, s2_pack2) and the unit's generated wgmma wrappers (s2_wgmma_qk, s2_wgmma_pv).
//
// Layout: the head dim is cut into panels of 64 elements; a panel holds its rows as 128-byte
// lines, 16-byte chunk c of row r at chunk c ^ (r % 8), and starts 1024-byte aligned. Read
//   K-major (the row is the reduction dim: Q, K, dO as left or right factor of X Y^T): 8-row
//     groups 1024 bytes apart (stride byte offset), k16 steps 32 bytes apart inside a panel,
//     the next 64 columns one panel further;
//   MN-major (the rows are the reduction dim: K, V, Q, dO as the right factor of P Y): the next
//     8 rows 1024 bytes apart (stride byte offset), the next 64 columns one panel away (leading
//     byte offset), k16 steps 2048 bytes apart.

// Rows [x0, x0 + ROWS) of one head, gathered by position, into the swizzled panel layout
// (panel p at dst + p * ROWS * 64 elements); rows at or past n are zero-filled. Thread i
// copies 16-byte chunk i % CHUNKS of rows i / CHUNKS + k * RSTEP, k = 0, 1, ... (RSTEP a
// multiple of 8, so every row of a thread has the same swizzle). Where the tile's rows lie
// inside the sequence at consecutive positions (all but the tile holding the sequence end or a
// roll-mode wrap), a thread's rows are a fixed stride apart in memory: one address, then
// constant offsets, instead of a position per row.
template <int ROWS, int THREADS>
__device__ __forceinline__ void s2_load_tile_sw(s2_elem *dst, const s2_elem *src, int seq0, int x0,
                                                int n, int cls, int heads, int head)
{
    constexpr int CHUNKS = S2_HEAD_DIM / 8;
    constexpr int RSTEP = THREADS / CHUNKS;
    static_assert(THREADS % CHUNKS == 0 && RSTEP % 8 == 0 && ROWS % RSTEP == 0,
                  "s2_load_tile_sw: each thread's rows must share one swizzle");
    const int r0 = threadIdx.x / CHUNKS, c = threadIdx.x % CHUNKS;
    s2_elem *d0 = dst + (c / 8) * (ROWS * 64) + r0 * 64 + (((c % 8) ^ (r0 % 8)) * 8);
    const int p0 = x0 < n ? s2_position(x0, cls, n) : 0;
    if (x0 + ROWS <= n && p0 + ROWS <= n) {
        const s2_elem *s0 = src + ((long)(seq0 + p0 + r0) * heads + head) * S2_HEAD_DIM + c * 8;
#pragma unroll
        for (int k = 0; k < ROWS / RSTEP; k++)
            s2_cp_async16(d0 + k * RSTEP * 64, s0 + (long)k * RSTEP * heads * S2_HEAD_DIM, true);
        return;
    }
#pragma unroll
    for (int k = 0; k < ROWS / RSTEP; k++) {
        const int x = x0 + r0 + k * RSTEP;
        const bool valid = x < n;
#if S2_WINDOW // a row of the window in the (zero-byte) copy of a row past its end
        const long tok = seq0 + (valid ? s2_position(x, cls, n) : n - 1);
#else
        const long tok = seq0 + (valid ? s2_position(x, cls, n) : 0);
#endif
        s2_cp_async16(d0 + k * RSTEP * 64, src + (tok * heads + head) * S2_HEAD_DIM + c * 8, valid);
    }
}

// A shared-memory matrix descriptor, 128-byte swizzle: start address, leading and stride byte
// offsets (each >> 4).
__device__ __forceinline__ unsigned long long s2_gmma_desc(const void *p, unsigned lbo,
                                                           unsigned sbo)
{
    const unsigned long long a = s2_smem_addr(p);
    return ((a & 0x3ffffull) >> 4) | ((unsigned long long)((lbo >> 4) & 0x3fff) << 16) |
           ((unsigned long long)((sbo >> 4) & 0x3fff) << 32) | (1ull << 62);
}

__device__ __forceinline__ void s2_wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void s2_wgmma_commit()
{
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void s2_wgmma_wait0()
{
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
}
// Until at most the most recent group is pending (the groups before it have finished).
__device__ __forceinline__ void s2_wgmma_wait1()
{
    asm volatile("wgmma.wait_group.sync.aligned 1;\n" ::: "memory");
}
// wgmma runs asynchronously to the thread: after the wait, this ties every accumulator register
// to the wait (the compiler may not read one before it), and before the issue, it keeps the
// writes to them ahead of it.
template <int N> __device__ __forceinline__ void s2_fence_regs(float (&r)[N])
{
#pragma unroll
    for (int i = 0; i < N; i++)
        asm volatile("" : "+f"(r[i])::"memory");
}

// Accumulators a product overwrites (its first k16 step runs with scale-d 0, so their values
// are never read): marked as written, with no instruction, so the compiler neither zeroes them
// nor sees them undefined.
template <int N> __device__ __forceinline__ void s2_overwritten_regs(float (&r)[N])
{
#pragma unroll
    for (int i = 0; i < N; i++)
        asm volatile("" : "=f"(r[i])::"memory");
}

// The runtime launches the Hopper attention kernels with programmatic stream serialization, so
// their blocks may be scheduled onto the SMs the kernel before them in the stream leaves idle
// while its last blocks finish. Each block waits here, before its first global memory access,
// until that kernel has completed and its writes are visible; then lets the next such kernel's
// blocks be scheduled likewise (they wait for this whole grid in turn).
__device__ __forceinline__ void s2_grid_dependency()
{
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
}

// Strict turn-taking of a block's two warpgroups on named barriers 1 and 2 (barrier 0 is
// __syncthreads): each issues a step's first products only after the other has issued its
// own for the step before (warpgroup 0 first), so the tensor cores take them one warpgroup
// after the other and each warpgroup's softmax runs beside the other's products. Warp-uniform:
// s2_turn_start before the first step, s2_turn_wait and s2_turn_pass around every step's
// issue, s2_turn_end after the last (it takes warpgroup 1's last pass).
__device__ __forceinline__ void s2_turn_start(int wg)
{
    if (wg == 1)
        asm volatile("bar.arrive 2, 256;\n" ::: "memory");
}

__device__ __forceinline__ void s2_turn_wait(int wg)
{
    asm volatile("bar.sync %0, 256;\n" ::"r"(2 - wg) : "memory");
}

__device__ __forceinline__ void s2_turn_pass(int wg)
{
    asm volatile("bar.arrive %0, 256;\n" ::"r"(1 + wg) : "memory");
}

__device__ __forceinline__ void s2_turn_end(int wg)
{
    if (wg == 0)
        asm volatile("bar.sync 2, 256;\n" ::: "memory");
}

// Shared-memory barriers (mbarrier) of a stage ring: full[st] completes a phase once every
// thread's copies of the stage's tile have landed (each thread arrives through
// cp.async.mbarrier.arrive.noinc, which fires when its earlier copies complete); empty[st] once
// every thread is done reading it.
__device__ __forceinline__ void s2_mbar_init(unsigned long long *bar, int count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(s2_smem_addr(bar)), "r"(count)
                 : "memory");
}

// A ring's n mbarriers (full[stages] then empty[stages]), each completing a phase on count
// arrivals: set up by thread 0, visible to the whole block after the barrier.
__device__ __forceinline__ void s2_mbar_ring_init(unsigned long long *bars, int n, int count)
{
    if (threadIdx.x == 0)
#pragma unroll
        for (int i = 0; i < n; i++)
            s2_mbar_init(&bars[i], count);
    __syncthreads();
}

__device__ __forceinline__ void s2_mbar_arrive(unsigned long long *bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(s2_smem_addr(bar)) : "memory");
}

__device__ __forceinline__ void s2_mbar_arrive_copies(unsigned long long *bar)
{
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(s2_smem_addr(bar))
                 : "memory");
}

__device__ __forceinline__ void s2_mbar_wait(unsigned long long *bar, int parity)
{
    asm volatile("{\n.reg .pred p;\nS2_MBAR_WAIT:\n"
                 "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
                 "@!p bra S2_MBAR_WAIT;\n}\n" ::"r"(s2_smem_addr(bar)),
                 "r"(parity)
                 : "memory");
}

__device__ __forceinline__ void s2_fence_proxy_async()
{
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}


// K-major operand: 8-row groups from row r0 of a tile of ROWS rows at base, k16 step ks.
template <int ROWS>
__device__ __forceinline__ unsigned long long s2_desc_k(const s2_elem *base, int r0, int ks)
{
    return s2_gmma_desc(base + (ks / 4) * (ROWS * 64) + r0 * 64 + (ks % 4) * 16, 16, 1024);
}

// MN-major operand: rows 16 kk .. 16 kk + 15 of a tile of ROWS rows at base, every column.
template <int ROWS>
__device__ __forceinline__ unsigned long long s2_desc_mn(const s2_elem *base, int kk)
{
    return s2_gmma_desc(base + kk * 16 * 64, ROWS * 128, 1024);
}

// acc = X Y^T over the head dim (k16 steps), both operands K-major in shared memory: X's 64 rows
// from row r0 of a tile of RX rows, Y a tile of RY rows. The first step overwrites acc.
template <int RX, int RY, int N>
__device__ __forceinline__ void s2_wgmma_xyt(float (&acc)[N], const s2_elem *x, int r0,
                                             const s2_elem *y)
{
#pragma unroll
    for (int ks = 0; ks < S2_HEAD_DIM / 16; ks++)
        s2_wgmma_qk(acc, s2_desc_k<RX>(x, r0, ks), s2_desc_k<RY>(y, 0, ks), ks > 0);
}

// This warpgroup's 64 rows of a tile of ROWS rows (swizzled 64-column panels, as
// s2_load_tile_sw and the TMA write them; r: this thread's first row in the tile) as the
// register A fragments of a product over the head dim: k16 step ks holds rows r and r + 8,
// columns 16 ks + 2 t, + 1 and 16 ks + 8 + 2 t, + 1.
template <int ROWS>
__device__ __forceinline__ void s2_rows_to_afrag(unsigned (&a)[S2_HEAD_DIM / 16][4],
                                                 const s2_elem *tile, int r, int lane)
{
    const int t = lane % 4;
#pragma unroll
    for (int ks = 0; ks < S2_HEAD_DIM / 16; ks++)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int rr = r + 8 * (i % 2), c = 2 * ks + i / 2; // c: the 16-byte chunk
            a[ks][i] = *reinterpret_cast<const unsigned *>(
                tile + (c / 8) * (ROWS * 64) + rr * 64 + (((c % 8) ^ (rr % 8)) * 8) + 2 * t);
        }
}

// acc = X Y^T over the head dim, X's k16 steps as register A fragments (s2_rows_to_afrag), Y a
// tile of RY rows (K-major). The first step overwrites acc.
template <int RY, int N>
__device__ __forceinline__ void s2_wgmma_ryt(float (&acc)[N],
                                             const unsigned (&x)[S2_HEAD_DIM / 16][4],
                                             const s2_elem *y)
{
#pragma unroll
    for (int ks = 0; ks < S2_HEAD_DIM / 16; ks++)
        s2_wgmma_qk_rs(acc, x[ks], s2_desc_k<RY>(y, 0, ks), ks > 0);
}

// acc = X Y^T with X either way: its register A fragments (s2_wgmma_ryt; r0 unused) or its 64
// rows from row r0 of a tile of RX rows in shared memory (s2_wgmma_xyt).
template <int RX, int RY, int N>
__device__ __forceinline__ void s2_wgmma_xt(float (&acc)[N],
                                            const unsigned (&x)[S2_HEAD_DIM / 16][4], int,
                                            const s2_elem *y)
{
    s2_wgmma_ryt<RY>(acc, x, y);
}
template <int RX, int RY, int N>
__device__ __forceinline__ void s2_wgmma_xt(float (&acc)[N], const s2_elem *x, int r0,
                                            const s2_elem *y)
{
    s2_wgmma_xyt<RX, RY>(acc, x, r0, y);
}

// acc += P Y: P's k16 steps as register A fragments, Y a tile of RY rows read MN-major.
template <int RY, int N, int KK>
__device__ __forceinline__ void s2_wgmma_py(float (&acc)[N], const unsigned (&p)[KK][4],
                                            const s2_elem *y)
{
#pragma unroll
    for (int kk = 0; kk < KK; kk++)
        s2_wgmma_pv(acc, p[kk], s2_desc_mn<RY>(y, kk));
}

// Dynamic shared memory from its first 1024-byte boundary (the plan asks for 1 KiB more).
__device__ __forceinline__ unsigned char *s2_smem_aligned(unsigned char *raw)
{
    return raw + ((1024 - (s2_smem_addr(raw) & 1023)) & 1023);
}

// The S accumulators of one warpgroup product m64 n(8 N8) as the register A fragments of the
// next product's k16 steps: step kk is n8 chunks 2kk and 2kk + 1, rounded to the storage type.
template <int N8>
__device__ __forceinline__ void s2_acc_to_afrag(const float (&s)[4 * N8], unsigned (&a)[N8 / 2][4])
{
#pragma unroll
    for (int kk = 0; kk < N8 / 2; kk++) {
        a[kk][0] = s2_pack2(s[8 * kk + 0], s[8 * kk + 1]);
        a[kk][1] = s2_pack2(s[8 * kk + 2], s[8 * kk + 3]);
        a[kk][2] = s2_pack2(s[8 * kk + 4], s[8 * kk + 5]);
        a[kk][3] = s2_pack2(s[8 * kk + 6], s[8 * kk + 7]);
    }
}

// templates/tma.cuh — the Tensor Memory Accelerator and register reallocation of the Hopper
// (sm_90a) units that load with it; emitted after wgmma.cuh, only for the tiles that do
// (fwd_tma), so the other units' sources stay as they were.
//
// The TMA forward (attn_fwd_wgmma.cuh's S2_FWD_TMA blocks; the plan's fwd_tma, on fwd_mbar's
// rings): a third warpgroup, the producer, comes first in the block. It gives up its registers
// (setmaxnreg) and one of its threads loads Q once and every K/V tile with the Tensor Memory
// Accelerator, a box of BM or BN consecutive rows of one head a panel, counting the bytes on
// Q's mbarrier and full[st]; the two consumer warpgroups take the registers and only compute.
// Split mode only (a tile's rows are consecutive positions; the plan refuses roll mode), and
// rows past the sequence's end inside the batch are the next sequence's: the masks keep them
// out, as they keep out the zeros the cp.async forms write there.
#if S2_BWD_TMA
//
// The TMA dK/dV kernel (attn_bwd_wgmma.cuh's S2_BWD_TMA blocks; the plan's bwd_tma, on
// bwd_mbar's rings), the same way: the producer warpgroup first, its first warp alone staying
// (with the ordered dQ, also its second warp's first thread, the reducer).
// Its thread 0 loads the block's K and V rows once (their own mbarrier) and, for every (head,
// query tile) pair of the walk, the Q and dO tiles into the pair's stage, counting the bytes on
// full[st]; the warp's 32 threads copy the pair's lse and delta rows there by cp.async (a bulk
// copy needs a 16-byte aligned source, which a row of [H, T] fp32 is not in general), each
// arriving on full[st] once its copies land, so full[st] waits for 33 arrivals and the bytes.
// The consumers release a stage on empty[st] as with cp.async. Rows past the sequence's end
// read as the next sequence's Q, dO, K and V (masked out, as above) and as zero lse and delta.
// With the atomic dQ (bwd_atomic_dq) the consumers also store: each forms its part of a query
// tile's dQ in 128-byte-swizzled fp32 boxes (s2_dq_product), added into the fp32 accumulator
// with cp.reduce.async.bulk.tensor (with the ordered dQ by the reducer, s2_dq_reducer, which
// takes the producer 40 registers and leaves the consumers 232); such a reduction's rows past
// the sequence's end add zeros.
#endif

// The Tensor Memory Accelerator (the plan's fwd_tma). A tensor map (CUtensorMap: 128 bytes, made
// on the host by cuTensorMapEncodeTiled for the launch's pointer and token count) is a kernel
// parameter (__grid_constant__, so its address is the parameter's own); one thread issues a
// copy of a whole box of rows into shared memory, written in the 128-byte-swizzled panel
// layout of wgmma.cuh, and the copy counts its bytes on an mbarrier: the barrier's phase
// completes once its arrivals are in (one, the issuing thread's arrive.expect_tx) and every
// byte it expects has landed. Rows past the tensor's end land as zeros.
struct __align__(64) s2_tmap {
    unsigned long long w[16];
};

// A box of the 3-d tensor map (dims: head dim, heads, tokens) from coordinate (c0, c1, c2) into
// dst, its bytes counted on bar.
__device__ __forceinline__ void s2_tma_load3(void *dst, const s2_tmap *map, int c0, int c1, int c2,
                                             unsigned long long *bar)
{
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes"
                 " [%0], [%1, {%2, %3, %4}], [%5];\n" ::"r"(s2_smem_addr(dst)),
                 "l"((unsigned long long)map), "r"(c0), "r"(c1), "r"(c2),
                 "r"(s2_smem_addr(bar))
                 : "memory");
}

// This thread's arrival on bar, which also raises the bytes the phase waits for by bytes.
__device__ __forceinline__ void s2_mbar_expect_tx(unsigned long long *bar, unsigned bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n"
                 ::"r"(s2_smem_addr(bar)), "r"(bytes)
                 : "memory");
}

__device__ __forceinline__ void s2_tma_prefetch_map(const s2_tmap *map)
{
    asm volatile("prefetch.tensormap [%0];\n" ::"l"((unsigned long long)map) : "memory");
}

// Register reallocation between a block's warpgroups (every thread of a warpgroup executes it):
// the producer gives its registers up, the consumers take them.
template <int N> __device__ __forceinline__ void s2_setmaxnreg_dec()
{
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
}
template <int N> __device__ __forceinline__ void s2_setmaxnreg_inc()
{
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
}

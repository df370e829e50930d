// templates/mma.cuh — tensor-core and async-copy primitives (sm_80 and later), as inline PTX so
// the generated sources include nothing. Needs only dtype.cuh; the attention units' strip
// products built on them (which need the head dim) are in mma_strip.cuh.
//
// Fragment layouts of mma.m16n8k16 (g = lane / 4, t = lane % 4), each register two elements:
//   A 16x16 (row):  a0 (g, 2t..2t+1)  a1 (g+8, 2t..)  a2 (g, 2t+8..)  a3 (g+8, 2t+8..)
//   B 16x8  (col):  b0 (k 2t..2t+1, n g)  b1 (k 2t+8.., n g)
//   C 16x8  (f32):  c0,c1 (g, 2t..2t+1)  c2,c3 (g+8, 2t..2t+1)
// So the accumulators of two adjacent n8 tiles are, packed, the A fragment of one k16 step:
// the softmax probabilities feed the next product without leaving registers.

__device__ __forceinline__ unsigned s2_smem_addr(const void *p)
{
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

// 16 bytes global -> shared, asynchronously; src_bytes 0 fills zeros (rows past the sequence).
__device__ __forceinline__ void s2_cp_async16(void *dst, const void *src, bool valid)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s2_smem_addr(dst)),
                 "l"(src), "r"(valid ? 16 : 0));
}
// 4 bytes global -> shared, asynchronously; valid false fills zero.
__device__ __forceinline__ void s2_cp_async4(void *dst, const void *src, bool valid)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(s2_smem_addr(dst)),
                 "l"(src), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void s2_cp_async_commit() { asm volatile("cp.async.commit_group;\n"); }
template <int N> __device__ __forceinline__ void s2_cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void s2_ldmatrix_x4(unsigned &r0, unsigned &r1, unsigned &r2,
                                               unsigned &r3, const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(s2_smem_addr(p)));
}

__device__ __forceinline__ void s2_ldmatrix_x4_trans(unsigned &r0, unsigned &r1, unsigned &r2,
                                                     unsigned &r3, const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(s2_smem_addr(p)));
}

// c += a * b, 16x8x16, fp32 accumulation.
__device__ __forceinline__ void s2_mma(float *c, const unsigned *a, unsigned b0, unsigned b1)
{
#if S2_IS_BF16
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
#endif
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x with the special-function unit (relative error about 2^-22; exp2(-inf) = 0): the
// softmax's exponent, without exp2f's denormal range handling around it.
__device__ __forceinline__ float s2_exp2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

// Two floats -> two packed 16-bit elements (lo in the low half), round to nearest even.
__device__ __forceinline__ unsigned s2_pack2(float lo, float hi)
{
    unsigned r;
#if S2_IS_BF16
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
#else
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
#endif
    return r;
}

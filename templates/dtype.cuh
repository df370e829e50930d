// templates/dtype.cuh — the storage type of every generated unit (S2_IS_BF16: bf16, else
// fp16) and its conversions, round to nearest even; emitted first, before the unit's code.

typedef unsigned short s2_elem; // bf16 or fp16 bits; never reinterpreted by the host

__device__ __forceinline__ float s2_to_f32(s2_elem h)
{
#if S2_IS_BF16
    return __uint_as_float(((unsigned)h) << 16);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

__device__ __forceinline__ s2_elem s2_from_f32(float f)
{
#if S2_IS_BF16
    unsigned u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) // NaN stays NaN (quiet)
        return (s2_elem)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u); // round to nearest even
    return (s2_elem)(u >> 16);
#else
    s2_elem h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#endif
}

// Two packed elements (the low one first in memory).
__device__ __forceinline__ float2 s2_to_f32x2(unsigned w)
{
    return make_float2(s2_to_f32((s2_elem)(w & 0xffffu)), s2_to_f32((s2_elem)(w >> 16)));
}


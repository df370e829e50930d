// templates/attn_bwd_pre.cuh — the backward's first pass: delta = rowsum(dO ∘ O) per (token,
// head), fp32 [H, T]; the dS of both backward families subtracts it.

// One warp per (token, head).
extern "C" __global__ void __launch_bounds__(S2_BWD_WARPS * 32)
s2_attn_bwd_pre(const s2_elem *__restrict__ o,   // [T, H, d]
                const s2_elem *__restrict__ dout, // [T, H, d]
                float *__restrict__ delta,        // [H, T]
                int total_tokens)
{
    const long row = (long)blockIdx.x * S2_BWD_WARPS + threadIdx.x / 32; // token * H + head
    const int lane = threadIdx.x % 32;
    if (row >= (long)total_tokens * S2_NUM_HEADS)
        return;
    float acc = 0.f;
#pragma unroll
    for (int c = 0; c < (S2_HEAD_DIM / 32); c++) {
        const long i = row * S2_HEAD_DIM + lane + 32 * c;
        acc = fmaf(s2_to_f32(o[i]), s2_to_f32(dout[i]), acc);
    }
    acc = s2_warp_sum(acc);
    if (lane == 0) {
        const long tok = row / S2_NUM_HEADS;
        const int h = (int)(row % S2_NUM_HEADS);
        delta[(long)h * total_tokens + tok] = acc;
    }
}


// With the atomic dQ of attn_bwd.cuh: dq = round(scale * dq_acc), [T, H, d].
extern "C" __global__ void __launch_bounds__(256)
s2_attn_bwd_dq_convert(const float *__restrict__ dq_acc, s2_elem *__restrict__ dq, long count)
{
    for (long i = (long)blockIdx.x * 256 + threadIdx.x; i < count; i += (long)gridDim.x * 256)
        dq[i] = s2_from_f32(dq_acc[i] * S2_SCALE);
}

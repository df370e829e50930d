// templates/lora.cuh — the elementwise kernels of LoRA dropout; the products are cuBLAS GEMMs
// (runtime/lora.h). The mask is philox.cuh's contract: element i = m * in + k of x [M, in]
// under (seed, stream), so the backward regenerates the forward's mask. One thread per aligned
// quad of elements: one Philox call per four.

// xd = drop(x): x [M, ldx] (its first `in` columns), xd [M, in].
extern "C" __global__ void __launch_bounds__(256)
s2_lora_dropout(const s2_elem *__restrict__ x, int ldx, s2_elem *__restrict__ xd, int M, int in,
                unsigned long long seed, unsigned stream, unsigned threshold, float keep_scale)
{
    const long n = (long)M * in, quads = (n + 3) / 4;
    for (long q = (long)blockIdx.x * blockDim.x + threadIdx.x; q < quads;
         q += (long)gridDim.x * blockDim.x) {
        int keep[4];
        s2_dropout_keep4(seed, stream, (uint64_t)q, threshold, keep);
        for (int j = 0; j < 4 && 4 * q + j < n; j++) {
            const long i = 4 * q + j, m = i / in, k = i % in;
            xd[i] = keep[j] ? s2_from_f32(s2_to_f32(x[m * ldx + k]) * keep_scale) : (s2_elem)0;
        }
    }
}

// dx += drop'(t): dx [M, lddx] (its first `in` columns), t [M, in] = s v A of one projection;
// the mask and scale of that projection's forward.
extern "C" __global__ void __launch_bounds__(256)
s2_lora_dropout_add(s2_elem *__restrict__ dx, int lddx, const s2_elem *__restrict__ t, int M,
                    int in, unsigned long long seed, unsigned stream, unsigned threshold,
                    float keep_scale)
{
    const long n = (long)M * in, quads = (n + 3) / 4;
    for (long q = (long)blockIdx.x * blockDim.x + threadIdx.x; q < quads;
         q += (long)gridDim.x * blockDim.x) {
        int keep[4];
        s2_dropout_keep4(seed, stream, (uint64_t)q, threshold, keep);
        for (int j = 0; j < 4 && 4 * q + j < n; j++) {
            const long i = 4 * q + j, m = i / in, k = i % in;
            if (keep[j])
                dx[m * lddx + k] = s2_from_f32(s2_to_f32(dx[m * lddx + k]) +
                                               s2_to_f32(t[i]) * keep_scale);
        }
    }
}

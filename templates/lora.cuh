// templates/lora.cuh — the generated LoRA kernels (runtime/ops/lora.h says how they fit between the
// cuBLAS GEMMs): the backward's one pass over dy for v = dy B and dB = dy^T u (below, when the
// emitter defines S2_LORA_R), and the elementwise kernels of dropout. The dropout mask is
// philox.cuh's contract: element i = m * in + k of x [M, in] under (seed, stream), so the
// backward regenerates the forward's mask. One thread per aligned quad of elements: one Philox
// call per four.

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

#ifdef S2_LORA_R
// ---- the backward's pass over dy: v = dy B and dB = dy^T u, one read of dy ----
//
// For one projection (columns [c0, c0 + out_i) of dy, its rank columns [r0, r0 + R) of u and
// of B): block (x, y) takes the slab of S2_VDB_BO columns c0 + x * S2_VDB_BO and the rows of
// range y, and streams the rows S2_VDB_BM at a time through shared memory (cp.async,
// S2_VDB_STAGES stages, 16-byte chunks XOR-swizzled by row so ldmatrix is conflict-free).
// Warp w owns the slab's 64 columns 64w..64w+63:
//   v:  [BM x R] += dy[BM x 64] B[64 x R]     B's fragments held in registers all along;
//       the 8 warps' partial sums meet in shared memory, are added in warp order and written
//       as the slab's partial vpart[s0 + x][m][0..R) (fp32 [slabs of the group][M][R]; every
//       element written, no zeroing), which s2_lora_vdb_finish sums over the projection's
//       slabs in slab order
//   dB: [64 x R] += dy^T[64 x BM] u[BM x R]   accumulated in registers over the whole range,
//       written once as the range's partial part[y][c0 + o][0..R) (s2_lora_vdb_finish sums the
//       ranges in range order)
// Every sum has a fixed order, so v and dB are the same bits run to run (runtime/ops/lora.c says
// what the slabs' partials cost).
// Columns past the projection and rows past the range are zero-filled, so they add nothing.
// The emitter defines S2_LORA_R (a multiple of 8), S2_VDB_WARPS, S2_VDB_BM (a multiple of 16)
// and S2_VDB_STAGES (gen/lora_plan.h's s2_lora_vdb_* say how the host sizes the launch).
#define S2_VDB_BO (S2_VDB_WARPS * 64)
#define S2_VDB_NT (S2_LORA_R / 8)
#define S2_VDB_CH (S2_VDB_BO / 8) // 16-byte chunks per staged row

extern "C" __global__ void __launch_bounds__(S2_VDB_WARPS * 32)
s2_lora_vdb(const s2_elem *__restrict__ dy, int ldy, const s2_elem *__restrict__ u, int ldu,
            const s2_elem *__restrict__ b, int ldb, float *__restrict__ vpart, int s0,
            float *__restrict__ part, int out_total, int M, int rows_per_block, int c0,
            int out_i, int r0)
{
    extern __shared__ __align__(16) unsigned char s2_smem[];
    s2_elem *sdy = (s2_elem *)s2_smem;                          // [STAGES][BM][BO]
    s2_elem *su = sdy + S2_VDB_STAGES * S2_VDB_BM * S2_VDB_BO;  // [STAGES][BM][R]
    float *sred = (float *)(su + S2_VDB_STAGES * S2_VDB_BM * S2_LORA_R); // [WARPS][BM][R]

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const int slab0 = blockIdx.x * S2_VDB_BO;
    const int cols = out_i - slab0 < S2_VDB_BO ? out_i - slab0 : S2_VDB_BO;
    const int m_begin = blockIdx.y * rows_per_block;
    const int m_end = M - m_begin < rows_per_block ? M : m_begin + rows_per_block;
    const int steps = m_end > m_begin ? (m_end - m_begin + S2_VDB_BM - 1) / S2_VDB_BM : 0;

    // B [64 x R] of this warp as mma B fragments (k = column o, n = rank j); zero past the slab.
    unsigned bf[4][S2_VDB_NT][2];
#pragma unroll
    for (int ks = 0; ks < 4; ks++)
#pragma unroll
        for (int nt = 0; nt < S2_VDB_NT; nt++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int k = 64 * warp + 16 * ks + 2 * t + 8 * h;
                const long col = r0 + 8 * nt + g;
                const s2_elem lo = k < cols ? b[(long)(c0 + slab0 + k) * ldb + col] : (s2_elem)0;
                const s2_elem hi =
                    k + 1 < cols ? b[(long)(c0 + slab0 + k + 1) * ldb + col] : (s2_elem)0;
                bf[ks][nt][h] = (unsigned)lo | ((unsigned)hi << 16);
            }
    float db[4][S2_VDB_NT][4];
#pragma unroll
    for (int ot = 0; ot < 4; ot++)
#pragma unroll
        for (int nt = 0; nt < S2_VDB_NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                db[ot][nt][e] = 0.f;

    // Rows [m0, m0 + BM) of the slab and of u into stage st.
    auto load = [&](int step, int st) {
        const int m0 = m_begin + step * S2_VDB_BM;
        s2_elem *d = sdy + st * S2_VDB_BM * S2_VDB_BO;
        for (int i = threadIdx.x; i < S2_VDB_BM * S2_VDB_CH; i += S2_VDB_WARPS * 32) {
            const int row = i / S2_VDB_CH, ch = i % S2_VDB_CH, m = m0 + row;
            const bool ok = m < m_end && ch * 8 < cols;
            s2_cp_async16(d + row * S2_VDB_BO + ((ch ^ (row & 7)) * 8),
                          ok ? dy + (long)m * ldy + c0 + slab0 + ch * 8 : dy, ok);
        }
        s2_elem *du = su + st * S2_VDB_BM * S2_LORA_R;
        for (int i = threadIdx.x; i < S2_VDB_BM * (S2_LORA_R / 8); i += S2_VDB_WARPS * 32) {
            const int row = i / (S2_LORA_R / 8), ch = i % (S2_LORA_R / 8), m = m0 + row;
            const bool ok = m < m_end;
            s2_cp_async16(du + row * S2_LORA_R + ch * 8, ok ? u + (long)m * ldu + r0 + ch * 8 : u,
                          ok);
        }
    };

#pragma unroll
    for (int s = 0; s < S2_VDB_STAGES - 1; s++) {
        if (s < steps)
            load(s, s);
        s2_cp_async_commit();
    }
    for (int step = 0; step < steps; step++) {
        s2_cp_async_wait<S2_VDB_STAGES - 2>();
        __syncthreads(); // stage `step` has landed; every warp is done with the one reloaded next
        if (step + S2_VDB_STAGES - 1 < steps)
            load(step + S2_VDB_STAGES - 1, (step + S2_VDB_STAGES - 1) % S2_VDB_STAGES);
        s2_cp_async_commit();
        const s2_elem *d = sdy + (step % S2_VDB_STAGES) * S2_VDB_BM * S2_VDB_BO;
        const s2_elem *du = su + (step % S2_VDB_STAGES) * S2_VDB_BM * S2_LORA_R;

        // v: the warp's [BM x R] over its 64 columns
        float vp[S2_VDB_BM / 16][S2_VDB_NT][4];
#pragma unroll
        for (int mt = 0; mt < S2_VDB_BM / 16; mt++)
#pragma unroll
            for (int nt = 0; nt < S2_VDB_NT; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    vp[mt][nt][e] = 0.f;
#pragma unroll
        for (int ks = 0; ks < 4; ks++)
#pragma unroll
            for (int mt = 0; mt < S2_VDB_BM / 16; mt++) {
                const int row = 16 * mt + (lane % 8) + 8 * ((lane / 8) % 2);
                const int ch = 8 * warp + 2 * ks + lane / 16;
                unsigned a[4];
                s2_ldmatrix_x4(a[0], a[1], a[2], a[3],
                               d + row * S2_VDB_BO + ((ch ^ (row & 7)) * 8));
#pragma unroll
                for (int nt = 0; nt < S2_VDB_NT; nt++)
                    s2_mma(vp[mt][nt], a, bf[ks][nt][0], bf[ks][nt][1]);
            }

        // dB: the warp's [64 x R] over the BM rows (A = dy^T and B = u, both by ldmatrix.trans)
#pragma unroll
        for (int kk = 0; kk < S2_VDB_BM / 16; kk++) {
            unsigned ub[S2_VDB_NT + 1][2];
#pragma unroll
            for (int nt = 0; nt < S2_VDB_NT; nt += 2) {
                const int q = lane / 8, row = 16 * kk + (lane % 8) + 8 * (q % 2);
                const int nn = nt + q / 2 < S2_VDB_NT ? nt + q / 2 : S2_VDB_NT - 1;
                s2_ldmatrix_x4_trans(ub[nt][0], ub[nt][1], ub[nt + 1][0], ub[nt + 1][1],
                                     du + row * S2_LORA_R + nn * 8);
            }
#pragma unroll
            for (int ot = 0; ot < 4; ot++) {
                const int q = lane / 8, row = 16 * kk + (lane % 8) + 8 * (q / 2);
                const int ch = 8 * warp + 2 * ot + q % 2;
                unsigned a[4];
                s2_ldmatrix_x4_trans(a[0], a[1], a[2], a[3],
                                     d + row * S2_VDB_BO + ((ch ^ (row & 7)) * 8));
#pragma unroll
                for (int nt = 0; nt < S2_VDB_NT; nt++)
                    s2_mma(db[ot][nt], a, ub[nt][0], ub[nt][1]);
            }
        }

        // the warps' v partials meet in shared memory; the slab's sum, in warp order
        float *sr = sred + warp * S2_VDB_BM * S2_LORA_R;
#pragma unroll
        for (int mt = 0; mt < S2_VDB_BM / 16; mt++)
#pragma unroll
            for (int nt = 0; nt < S2_VDB_NT; nt++)
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    float *p = sr + (16 * mt + g + 8 * h) * S2_LORA_R + 8 * nt + 2 * t;
                    p[0] = vp[mt][nt][2 * h];
                    p[1] = vp[mt][nt][2 * h + 1];
                }
        __syncthreads();
        const int m0 = m_begin + step * S2_VDB_BM;
        float *vs = vpart + ((long)(s0 + blockIdx.x) * M + m0) * S2_LORA_R;
        for (int i = threadIdx.x; i < S2_VDB_BM * S2_LORA_R; i += S2_VDB_WARPS * 32) {
            if (m0 + i / S2_LORA_R >= m_end)
                continue;
            float sum = 0.f;
#pragma unroll
            for (int w = 0; w < S2_VDB_WARPS; w++)
                sum += sred[w * S2_VDB_BM * S2_LORA_R + i];
            vs[i] = sum;
        }
    }

    // the range's dB partial: rows c0 + slab0 + o of part[y]
    float *py = part + ((long)blockIdx.y * out_total + c0 + slab0) * S2_LORA_R;
#pragma unroll
    for (int ot = 0; ot < 4; ot++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int o = 64 * warp + 16 * ot + g + 8 * h;
            if (o >= cols)
                continue;
#pragma unroll
            for (int nt = 0; nt < S2_VDB_NT; nt++) {
                float *p = py + (long)o * S2_LORA_R + 8 * nt + 2 * t;
                p[0] = db[ot][nt][2 * h];
                p[1] = db[ot][nt][2 * h + 1];
            }
        }
}

// After s2_lora_vdb over every projection: s v into dy's extra columns (the rp columns from
// out_total of dya [M, ldya]): column c = i*R + j of projection i is the sum of vpart's slabs
// se_{i-1} .. se_i - 1 (se_{-1} = 0; se0, se1, se2 are the projections' cumulative slab ends,
// the total for absent ones), in slab order; pad columns (no projection) are 0. dB from the
// ranges' partials in range order: db [out_total, ld_db] column i*R + j of row o, i the
// projection of row o (rows >= off1 are projection 1, >= off2 projection 2); fp32 with
// C = beta C + sum when grad_f32, else the storage dtype, overwritten. part_sel: 0 both, 1 s v
// only, 2 dB only (so dB's sums can run beside the products that need s v).
extern "C" __global__ void __launch_bounds__(256)
s2_lora_vdb_finish(const float *__restrict__ vpart, int M, int rp, int se0, int se1, int se2,
                   s2_elem *__restrict__ dya, int ldya, int out_total, float scale,
                   const float *__restrict__ part, int ranges, void *__restrict__ db, int ld_db,
                   int off1, int off2, int grad_f32, float beta, int part_sel)
{
    const long nv = (long)M * rp, n = nv + (long)out_total * S2_LORA_R;
    const long lo = part_sel == 2 ? nv : 0, hi = part_sel == 1 ? nv : n;
    for (long i = lo + (long)blockIdx.x * blockDim.x + threadIdx.x; i < hi;
         i += (long)gridDim.x * blockDim.x) {
        if (i < nv) {
            const long m = i / rp;
            const int c = (int)(i % rp), proj = c / S2_LORA_R, j = c % S2_LORA_R;
            const int s_lo = proj == 0 ? 0 : proj == 1 ? se0 : proj == 2 ? se1 : se2;
            const int s_hi = proj == 0 ? se0 : proj == 1 ? se1 : se2;
            float sum = 0.f;
            for (int sl = s_lo; sl < s_hi; sl++)
                sum += vpart[((long)sl * M + m) * S2_LORA_R + j];
            dya[m * ldya + out_total + c] = s2_from_f32(scale * sum);
            continue;
        }
        const long k = i - nv, o = k / S2_LORA_R, j = k % S2_LORA_R;
        const int proj = o >= off2 ? 2 : o >= off1 ? 1 : 0;
        float sum = 0.f;
        for (int y = 0; y < ranges; y++)
            sum += part[((long)y * out_total + o) * S2_LORA_R + j];
        const long at = o * ld_db + proj * S2_LORA_R + j;
        if (grad_f32) {
            float *p = (float *)db + at;
            *p = beta != 0.f ? beta * *p + sum : sum;
        } else {
            ((s2_elem *)db)[at] = s2_from_f32(sum);
        }
    }
}
#endif

// templates/mma_strip.cuh — the attention units' warp-level products over 16-row strips of
// S2_HEAD_DIM columns, on mma.cuh's primitives (after common.cuh and mma.cuh), and the
// backward's streamed per-query constants.

// Rows [x0, x0 + rows) of one head, gathered by position, into shared [rows][ld] with
// cp.async; rows at or past n are zero-filled.
template <int ROWS, int THREADS>
__device__ __forceinline__ void s2_load_tile_async(s2_elem *dst, int ld, const s2_elem *src,
                                                   int seq0, int x0, int n, int cls, int heads,
                                                   int head)
{
    constexpr int CHUNKS = S2_HEAD_DIM / 8; // 16-byte chunks per row
    for (int i = threadIdx.x; i < ROWS * CHUNKS; i += THREADS) {
        const int r = i / CHUNKS, c = i % CHUNKS;
        const int x = x0 + r;
        const bool valid = x < n;
#if S2_WINDOW // a row of the window in the (zero-byte) copy of a row past its end
        const long tok = seq0 + (valid ? s2_position(x, cls, n) : n - 1);
#else
        const long tok = seq0 + (valid ? s2_position(x, cls, n) : 0);
#endif
        s2_cp_async16(dst + r * ld + c * 8, src + (tok * heads + head) * S2_HEAD_DIM + c * 8, valid);
    }
}

// ---- warp-level products over one 16-row strip (shared rows have stride S2_LD) ----

#define S2_LD (S2_HEAD_DIM + 8) // shared row stride: 16 bytes of pad keep ldmatrix conflict-free
#define S2_KSTEPS (S2_HEAD_DIM / 16)
#define S2_ON (S2_HEAD_DIM / 8) // n8 tiles across the head dim

// A fragments of 16 shared rows x d (the rows this warp multiplies from the left).
__device__ __forceinline__ void s2_load_afrag(unsigned (&a)[S2_KSTEPS][4], const s2_elem *rows,
                                              int lane)
{
#pragma unroll
    for (int kk = 0; kk < S2_KSTEPS; kk++)
        s2_ldmatrix_x4(a[kk][0], a[kk][1], a[kk][2], a[kk][3],
                       rows + ((lane % 8) + ((lane / 8) % 2) * 8) * S2_LD + kk * 16 + (lane / 16) * 8);
}

// k16 step kk of c[MT][16 x 8NT] += A[MT][16 x d] B[8NT x d]^T, the MT strips' A fragments
// of that step given: each B fragment (B rows in shared memory) feeds MT products.
template <int MT, int NT>
__device__ __forceinline__ void s2_mma_abt_step(float (&c)[MT][NT][4], const unsigned (&af)[MT][4],
                                                const s2_elem *b, int kk, int lane)
{
#pragma unroll
    for (int j = 0; j < NT; j += 2) {
        unsigned b0, b1, b2, b3;
        s2_ldmatrix_x4(b0, b1, b2, b3,
                       b + (j * 8 + (lane % 8) + (lane / 16) * 8) * S2_LD + kk * 16 + ((lane / 8) % 2) * 8);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            s2_mma(c[mt][j], af[mt], b0, b1);
            s2_mma(c[mt][j + 1], af[mt], b2, b3);
        }
    }
}

// c[MT][16 x 8NT] += A[MT][16 x d] B[8NT x d]^T: MT strips of 16 rows with their A fragments
// in registers, B rows in shared memory. Each B fragment feeds MT products: more strips per
// warp, less shared-memory traffic per flop.
template <int MT, int NT>
__device__ __forceinline__ void s2_mma_abt(float (&c)[MT][NT][4],
                                           const unsigned (&a)[MT][S2_KSTEPS][4],
                                           const s2_elem *b, int lane)
{
#pragma unroll
    for (int kk = 0; kk < S2_KSTEPS; kk++) {
        unsigned af[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int i = 0; i < 4; i++)
                af[mt][i] = a[mt][kk][i];
        s2_mma_abt_step(c, af, b, kk, lane);
    }
}

// The same with the MT strips' A fragments read from shared memory step by step (rows
// a + 16 * mt * S2_LD), so only one k16 step of A is held in registers.
template <int MT, int NT>
__device__ __forceinline__ void s2_mma_abt_smem(float (&c)[MT][NT][4], const s2_elem *a,
                                                const s2_elem *b, int lane)
{
#pragma unroll
    for (int kk = 0; kk < S2_KSTEPS; kk++) {
        unsigned af[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
            s2_ldmatrix_x4(af[mt][0], af[mt][1], af[mt][2], af[mt][3],
                           a + (16 * mt + (lane % 8) + ((lane / 8) % 2) * 8) * S2_LD + kk * 16 + (lane / 16) * 8);
        s2_mma_abt_step(c, af, b, kk, lane);
    }
}

// One strip with A's 16 rows read from shared memory step by step (fewer registers held).
template <int NT>
__device__ __forceinline__ void s2_mma_abt_sa(float (&c)[NT][4], const s2_elem *a, const s2_elem *b,
                                              int lane)
{
#pragma unroll
    for (int kk = 0; kk < S2_KSTEPS; kk++) {
        unsigned af[4];
        s2_ldmatrix_x4(af[0], af[1], af[2], af[3],
                       a + ((lane % 8) + ((lane / 8) % 2) * 8) * S2_LD + kk * 16 + (lane / 16) * 8);
#pragma unroll
        for (int j = 0; j < NT; j += 2) {
            unsigned b0, b1, b2, b3;
            s2_ldmatrix_x4(b0, b1, b2, b3,
                           b + (j * 8 + (lane % 8) + (lane / 16) * 8) * S2_LD + kk * 16 + ((lane / 8) % 2) * 8);
            s2_mma(c[j], af, b0, b1);
            s2_mma(c[j + 1], af, b2, b3);
        }
    }
}

// acc[MT][16 x d] += P[MT][16 x 8NT] B[8NT x d]: P from accumulators (rounded to the storage
// type, as the A fragment of each k16 step), B rows in shared memory (ldmatrix.trans).
template <int MT, int NT>
__device__ __forceinline__ void s2_mma_pb(float (&acc)[MT][S2_ON][4], const float (&p)[MT][NT][4],
                                          const s2_elem *b, int lane)
{
#pragma unroll
    for (int kk = 0; kk < NT / 2; kk++) {
        unsigned a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            a[mt][0] = s2_pack2(p[mt][2 * kk][0], p[mt][2 * kk][1]);
            a[mt][1] = s2_pack2(p[mt][2 * kk][2], p[mt][2 * kk][3]);
            a[mt][2] = s2_pack2(p[mt][2 * kk + 1][0], p[mt][2 * kk + 1][1]);
            a[mt][3] = s2_pack2(p[mt][2 * kk + 1][2], p[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int i = 0; i < S2_ON; i += 2) {
            unsigned b0, b1, b2, b3;
            s2_ldmatrix_x4_trans(b0, b1, b2, b3,
                                 b + (kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * S2_LD + i * 8 + (lane / 16) * 8);
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                s2_mma(acc[mt][i], a[mt], b0, b1);
                s2_mma(acc[mt][i + 1], a[mt], b2, b3);
            }
        }
    }
}

// Stores a 16 x d accumulator strip (scaled) at the rows' original positions.
__device__ __forceinline__ void s2_store_strip(s2_elem *out, int heads, int head,
                                               const float (&acc)[S2_ON][4], float scale,
                                               int row0, int n, int seq0, int cls, int lane)
{
    const int t = lane % 4;
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        const int x = row0 + 8 * hf;
        if (x >= n)
            continue;
        const long tok = seq0 + s2_position(x, cls, n);
        unsigned *row = (unsigned *)(out + (tok * heads + head) * S2_HEAD_DIM);
#pragma unroll
        for (int i = 0; i < S2_ON; i++)
            row[i * 4 + t] = s2_pack2(acc[i][2 * hf] * scale, acc[i][2 * hf + 1] * scale);
    }
}

// The backward's per-query constants of queries x0 .. x0 + BN of head h, as they are in memory
// (lse in natural log, delta), into dst[0, BN) and dst[BN, 2 BN) by cp.async in the caller's
// commit group (0 at or past n); the dK/dV kernels stream them beside each query tile.
template <int BN, int THREADS>
__device__ __forceinline__ void s2_load_lse_delta(float *dst, const float *lse, const float *delta,
                                                  int x0, int n, int seq0, int cls, int h,
                                                  int total_tokens)
{
    for (int i = threadIdx.x; i < 2 * BN; i += THREADS) {
        const int x = x0 + i % BN;
        const bool valid = x < n;
#if S2_WINDOW // a row of the window in the (zero-byte) copy of a row past its end
        const long at = (long)h * total_tokens + seq0 + (valid ? s2_position(x, cls, n) : n - 1);
#else
        const long at = (long)h * total_tokens + seq0 + (valid ? s2_position(x, cls, n) : 0);
#endif
        s2_cp_async4(dst + i, (i < BN ? lse : delta) + at, valid);
    }
}

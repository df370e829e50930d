// templates/common.cuh — shared by every generated S²-Attn unit.
//
// The emitter puts the specialised constants above this text:
//   S2_IS_BF16        1 for bf16 storage, 0 for fp16
//   S2_HEAD_DIM       d
//   S2_NUM_HEADS      H;  S2_NUM_KV_HEADS  Hkv
//   S2_GROUP          G
//   S2_SHIFT_OFF, S2_SHIFT_ROT  the index map of shifted heads (plain heads: 0, 0)
//   S2_SCALE          softmax scale; S2_SCALE_LOG2 = S2_SCALE * log2(e): scores live in the exp2 domain
//   S2_BLOCK_M, S2_BLOCK_N, S2_WARPS  the tile shape
//
// Index space. Every head class is attended in a "virtual" order x = 0..N-1 in
// which the mask is plain causal attention inside groups of G:
//   group(x) = (x + OFF) / G,   group start = max(0, group * G - OFF)
//   position(x) = (x + ROT) mod N
// plain heads: OFF = ROT = 0; split shift: OFF = S (the short first group
// [0, G-S)); roll shift: ROT = S (x is the rolled index (p - S) mod N, so the
// last group wraps the tail onto the head, as LongLoRA's roll does).
// Query x sees key y iff group(x) == group(y) and y <= x.
// The storage type and its conversions are in dtype.cuh, emitted before this file.

#define S2_LOG2E 1.4426950408889634f
#define S2_LN2 0.6931471805599453f
#define S2_NEG_INF (-__int_as_float(0x7f800000))

__device__ __forceinline__ int s2_off(int cls) { return cls ? S2_SHIFT_OFF : 0; }
__device__ __forceinline__ int s2_rot(int cls) { return cls ? S2_SHIFT_ROT : 0; }

// The shift class of query head h: heads h >= H/2 are shifted.
__device__ __forceinline__ int s2_head_class(int h) { return h >= S2_NUM_HEADS / 2 ? 1 : 0; }

__device__ __forceinline__ int s2_group_of(int x, int cls) { return (x + s2_off(cls)) / S2_GROUP; }

__device__ __forceinline__ int s2_group_start(int x, int cls)
{
    int s = s2_group_of(x, cls) * S2_GROUP - s2_off(cls);
    return s > 0 ? s : 0;
}

// One past the last index of x's group, clipped to the sequence.
__device__ __forceinline__ int s2_group_end(int x, int cls, int n)
{
    int e = (s2_group_of(x, cls) + 1) * S2_GROUP - s2_off(cls);
    return e < n ? e : n;
}

__device__ __forceinline__ int s2_position(int x, int cls, int n)
{
    if (s2_rot(cls) == 0)
        return x;
    int p = x + s2_rot(cls);
    return p % n;
}

__device__ __forceinline__ bool s2_visible(int xq, int xk, int cls)
{
    return xk <= xq && s2_group_of(xq, cls) == s2_group_of(xk, cls);
}

// The same as spans, for masks that test many pairs of one row: query x sees exactly the keys
// [lo, hi] (its group's start up to x, inside the sequence; empty where hi < lo), and key y is
// seen by exactly the queries [lo, hi] (y up to its group's end, inside the sequence). Two
// compares a pair instead of two group divisions.
__device__ __forceinline__ void s2_query_span(int x, int cls, int n, int &lo, int &hi)
{
    lo = s2_group_start(x, cls);
    hi = min(x, n - 1);
}
__device__ __forceinline__ void s2_key_span(int y, int cls, int n, int &lo, int &hi)
{
    lo = y;
    hi = s2_group_end(y, cls, n) - 1;
}

// Which (head, row tile of BM rows) this block of a (tiles, heads, batch) grid takes: the
// longest work first, so the blocks that start last are short and the SMs run out of work
// together. Tile t's rank in its group is (t + OFF / BM) mod GT, GT = G / BM tiles a group (at
// least 1): a query tile's work (the keys it sees) grows with its rank, a key tile's (the
// queries that see it) shrinks. The heads go in chunks whose K and V fit L2 together (about
// S2_CHUNK_ROWS rows, at least one head); inside a chunk the blocks take the ranks in order of
// work, then the heads, then the groups. The grid holds ceil(tiles / GT) GT blocks a head
// (s2_plan_grid_*); blocks past the sequence return at once. REP: query heads a grid head (1,
// or H / Hkv where the grid runs over kv heads), for the shift class.
#define S2_CHUNK_ROWS (16 * 1024 * 1024 / (4 * S2_HEAD_DIM)) // K + V rows in 16 MiB
// s2_head_chunk: the chunk that block lin = y * tiles + x of a (tiles, heads) grid of BM-row
// tiles falls in, its first head h0 and its heads in_chunk.
template <int BM>
__device__ __forceinline__ void s2_head_chunk(int lin, int tiles, int heads, int &h0,
                                              int &in_chunk)
{
    const int c = max(1, min(heads, S2_CHUNK_ROWS / (tiles * BM))); // heads a chunk
    h0 = lin / (c * tiles) * c;
    in_chunk = min(c, heads - h0);
}
// s2_block_tile_at: the (head, tile) above for block lin = y * tiles + x of a (tiles, heads)
// grid that is not the launch's (the persistent forward's virtual grid).
template <int BM, bool QUERY, int REP>
__device__ __forceinline__ void s2_block_tile_at(int lin, int tiles, int heads, int &head,
                                                 int &tile)
{
    constexpr int GT = S2_GROUP / BM > 0 ? S2_GROUP / BM : 1;
    const int per_head = tiles / GT;
    int h0, in_chunk;
    s2_head_chunk<BM>(lin, tiles, heads, h0, in_chunk);
    const int j = lin - h0 * tiles, per_rank = in_chunk * per_head;
    const int rr = j / per_rank, m = j - rr * per_rank;
    const int hh = m / per_head, k = m - hh * per_head;
    head = h0 + hh;
    const int o = (s2_off(s2_head_class(head * REP)) / BM) % GT;
    const int r = QUERY ? GT - 1 - rr : rr;
    tile = (r - o + GT) % GT + k * GT;
}
template <int BM, bool QUERY, int REP>
__device__ __forceinline__ void s2_block_tile(int &head, int &tile)
{
    const int tiles = gridDim.x, heads = gridDim.y;
    s2_block_tile_at<BM, QUERY, REP>(blockIdx.y * tiles + blockIdx.x, tiles, heads, head, tile);
}
#if S2_WINDOW

// A sequence-parallel window (the plan's window option, gen/sp_plan.h): one sequence (B = 1) of
// which a launch sees the queries at positions [qlo, qlo + total_tokens), stored from row 0 of
// q, o, lse, delta, dO and dq, and the keys and values at [klo, qlo + total_tokens), stored from
// row 0 of their buffers (the halo rows a rank receives, then its own). Positions stay the
// sequence's, so groups, masks and the tile order are the whole sequence's; the window ends at
// n = qlo + total_tokens, past which none of its queries sees (and in split mode no group
// depends on the sequence's length). The host passes k, v, dk and dv at their buffers' row of
// position qlo (qlo - klo rows in), so with seq0 = -qlo every helper's row of position p,
// seq0 + p, is the window's row of every tensor, as in a batch (and k, v stay kernel
// arguments rather than registers). The host (s2_plan_check_window) holds qlo and klo to the
// tiles' edges and klo to at most the group start of qlo of both head classes, so no tile
// reaches a row the window does not hold.

// The first row tile (of BM rows) of a window's grid: the one holding lo, rounded down to a
// whole group of tiles, so that s2_block_tile ranks a tile in its group as in the whole
// sequence's grid (s2_plan_grid_*_window). Blocks before lo or past the end return at once.
template <int BM> __device__ __forceinline__ int s2_window_tile0(int lo)
{
    constexpr int GT = S2_GROUP / BM > 0 ? S2_GROUP / BM : 1;
    return lo / BM / GT * GT;
}
#endif

// The plan's tile classification, evaluated for one (query tile, key tile of bn keys) pair: 1
// when the pair may hold a masked element (group edge, causal diagonal, or the sequence end).
// gs_last is the group start of the query tile's last live row.
__device__ __forceinline__ bool s2_tile_needs_mask(int x0, int gs_last, int y0, int n, int bn)
{
    return (S2_MASK_GROUP_EDGE && y0 < gs_last) || y0 + bn - 1 > x0 || y0 + bn > n;
}

__device__ __forceinline__ float s2_warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float s2_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Copies rows [x0, x0 + rows) of one head from global [T, heads, d] into shared
// [rows][S2_ROW] (S2_ROW = d + 2: the pad keeps lane-per-row reads off one bank).
// Rows past n are zero-filled so masked lanes read finite values.
#define S2_ROW (S2_HEAD_DIM + 2)
__device__ __forceinline__ void s2_load_rows(s2_elem *dst, const s2_elem *src, int seq0, int x0,
                                             int rows, int n, int cls, int heads, int head)
{
    const int words = S2_HEAD_DIM / 2;
    for (int i = threadIdx.x; i < rows * words; i += blockDim.x) {
        int r = i / words, w = i % words;
        int x = x0 + r;
        unsigned val = 0u;
        if (x < n) {
            long tok = seq0 + s2_position(x, cls, n);
            val = ((const unsigned *)(src + (tok * heads + head) * S2_HEAD_DIM))[w];
        }
        ((unsigned *)(dst + r * S2_ROW))[w] = val;
    }
}

// The backward's constants of query x of head h: lse · log2(e) and delta (0 at or past n).
__device__ __forceinline__ void s2_lse_delta(const float *lse, const float *delta, int x, int n,
                                             int seq0, int cls, int h, int total_tokens,
                                             float &lse2, float &dlt)
{
    const long tok = seq0 + (x < n ? s2_position(x, cls, n) : 0);
    lse2 = x < n ? lse[(long)h * total_tokens + tok] * S2_LOG2E : 0.f;
    dlt = x < n ? delta[(long)h * total_tokens + tok] : 0.f;
}

// Dot product of two shared rows, fp32.
__device__ __forceinline__ float s2_dot_rows(const s2_elem *a, const s2_elem *b)
{
    float acc = 0.f;
#pragma unroll 8
    for (int w = 0; w < S2_HEAD_DIM / 2; w++) {
        float2 x = s2_to_f32x2(((const unsigned *)a)[w]);
        float2 y = s2_to_f32x2(((const unsigned *)b)[w]);
        acc = fmaf(x.x, y.x, acc);
        acc = fmaf(x.y, y.y, acc);
    }
    return acc;
}

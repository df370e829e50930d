/*
 * plan.h — every derived constant of the S²-Attn kernels for one spec.
 *
 * The plan is where the thinking happens, so the kernels only compute: the
 * index map of each head class (see templates/common.cuh: plain heads use
 * x = p; split shift groups x + S; roll shift reads x = (p - S) mod N), the
 * tile shape and the launch geometry. G, S, the shift mode, d, H, Hkv, the
 * dtype, the scale and the tiles are compile-time constants of the generated
 * source; the token count, the sequence boundaries and the pointers are kernel
 * arguments, so one build serves every batch of the spec's model.
 */
#ifndef S2_PLAN_H
#define S2_PLAN_H

#include "spec.h"

/* The compiled units of the attention, each one NVRTC program. */
typedef enum s2_attn_unit {
    S2_UNIT_ATTN_FWD = 0, /* s2_attn_fwd */
    S2_UNIT_ATTN_BWD,     /* s2_attn_bwd_pre, s2_attn_bwd_dq, s2_attn_bwd_dkdv, s2_attn_bwd_dq_convert */
    S2_UNIT_ATTN_COUNT
} s2_attn_unit;

/* Tuning parameters: plan inputs, so a tuner can search them. */
typedef struct s2_attn_tile {
    int fwd_warps;   /* forward: warps per block: 1..8 */
    int fwd_strips;  /* forward: 16-row query strips per warp: 1 or 2 */
    int fwd_block_n; /* forward: keys per shared-memory tile: 32, 64 or 128 */
    int fwd_stages;  /* forward: key/value tiles in flight (cp.async pipeline): 1..4 */
    int fwd_wgmma;   /* forward: 1 = Hopper warpgroup products (wgmma, sm_90a only, head_dim 64
                        or 128): fwd_warps 4 or 8 (one or two warpgroups of 64 rows),
                        fwd_strips 1, fwd_block_n 64 or 128; 0 = mma.sync (every arch) */
    int fwd_mbar;    /* forward with fwd_wgmma: 1 = the stage ring on mbarriers, no block barrier
                        a step, two warpgroups issuing S in turns; 0 = commit groups and a block
                        barrier a step */
    int fwd_tma;     /* forward with fwd_wgmma, fwd_mbar, fwd_warps 8 and two or more stages,
                        split mode (s2_plan_window gives the window units the cp.async twin
                        of such a tile): 1 = a producer warpgroup loads Q, K and V with
                        the Tensor Memory Accelerator (one thread issuing, the stage ring's
                        mbarriers counting the bytes) and hands its registers to the two
                        consumer warpgroups (setmaxnreg); 0 = every thread copies (cp.async) */
    int fwd_overlap; /* TMA forward (fwd_tma 1): 1 = each warpgroup issues S of a step together
                        with P V of the step before and forms the step's softmax while that
                        product runs (one step of intra-warpgroup pipelining); 0 = S, softmax,
                        P V in turn */
    int fwd_persist; /* overlapped TMA forward (fwd_overlap 1): 1 = persistent blocks, one an SM
                        (at most), each taking tile after tile from a scheduling counter, the
                        producer loading the next tile's Q and K/V while the consumers finish
                        the tile before; 0 = one block a tile */
    int bwd_warps;   /* backward: warps per block, 16 rows each (d > 128: 2 rows each) */
    int bwd_block_n; /* backward: keys (dQ) or queries (dK/dV) per streamed tile: 32 or 64 */
    int bwd_stages;  /* backward: streamed tiles in flight: 1..4 */
    int bwd_wgmma;     /* backward: 1 = Hopper warpgroup products (sm_90a, head_dim 64 or 128):
                          bwd_warps 4 or 8, bwd_block_n 64, bwd_stages 2..4; 0 = mma.sync */
    int bwd_atomic_dq; /* backward: 0 = a separate dQ kernel, deterministic; 1 = the dK/dV
                          kernel also adds dQ into an fp32 accumulator with atomics (two
                          fewer products per tile pair, run-to-run order not fixed); 2 = the
                          same with bwd_tma at head_dim 128, its bulk reductions added in a
                          fixed order (each query tile's key tiles from the last down, on turn
                          counters): deterministic */
    int bwd_mbar;      /* backward with bwd_wgmma, bwd_stages 3..4, bwd_atomic_dq 0 (or with
                          bwd_tma and bwd_atomic_dq 1): 1 = the stage rings on mbarriers, two
                          warpgroups issuing S and dP in turns; 0 = commit groups and a block
                          barrier a step */
    int bwd_tma;       /* dK/dV kernel with bwd_wgmma, bwd_mbar, bwd_warps 8, split mode, and
                          bwd_stages 3..4 with bwd_atomic_dq 0 or 2..4 with 1 (s2_plan_window
                          gives the window units the cp.async twin of such a tile): 1 = a
                          producer warpgroup loads K, V, Q and dO with the Tensor Memory
                          Accelerator and lse, delta with cp.async (one warp; the ring's full
                          mbarriers count both) and hands its registers to the two consumer
                          warpgroups (setmaxnreg); with bwd_atomic_dq the consumers add dQ to
                          its fp32 accumulator by bulk tensor reductions; 0 = every thread
                          copies (cp.async). The deterministic dQ kernel is the same either
                          way. */
    int test_broken;   /* test builds only (S2_TEST_BROKEN_TILE): 1 makes the forward scale O
                          by 1.01, so the tuner's correctness gate can be shown to reject a
                          wrong candidate; every other build refuses the key and the value */
} s2_attn_tile;

/* How the tiles of one (query tile, key tile) pair classify; see s2_plan_classify(). */
typedef enum s2_tile_class {
    S2_TILE_EMPTY = 0, /* nothing visible: never visited */
    S2_TILE_FULL,      /* every pair visible: no mask */
    S2_TILE_DIAGONAL,  /* the causal diagonal or the sequence end: masked */
    S2_TILE_EDGE,      /* crosses a group edge: masked */
    S2_TILE_CLASS_COUNT
} s2_tile_class;

typedef struct s2_attn_plan {
    s2_dtype dtype;
    int d, H, Hkv;        /* head dim, query heads, kv heads */
    int G, S;             /* group size, shift */
    s2_shift_mode mode;
    double scale;         /* softmax scale */
    int shift_off;        /* shifted heads: group(x) = (x + shift_off) / G   (split: S) */
    int shift_rot;        /* shifted heads: position(x) = (x + shift_rot) mod N (roll: S) */
    s2_attn_tile tile;
    int fwd_block_m;      /* 16 * fwd_strips * fwd_warps */
    int bwd_block_m;      /* 16 * bwd_warps; 2 * bwd_warps for the scalar backward (d > 128) */
    int bwd_tensor_cores; /* 1: templates/attn_bwd.cuh; 0: attn_bwd_simple.cuh (d > 128) */
    int fwd_threads, bwd_threads;
    int dkdv_threads;     /* the dK/dV kernel's block: bwd_threads, and with bwd_tma the
                             producer warpgroup's 128 more */
    int mask_group_edge;  /* 0 when every group start of both head classes falls on a tile
                             boundary: then no tile crosses a group edge and only diagonal
                             and sequence-end tiles are masked (a compile-time constant) */
    int smem_fwd;         /* dynamic shared memory of the forward, bytes */
    int smem_dq, smem_dkdv; /* dynamic shared memory of the backward kernels, bytes (0 for
                               the scalar backward, whose tiles are static) */
    int dq_units;         /* atomic dQ: (16 queries x 32 dims) pieces of one tile's dQ */
    int bwd_dq_delta;     /* 1: the dQ kernel forms delta = rowsum(dO ∘ O) itself (the
                             deterministic Hopper backward); 0: s2_attn_bwd_pre runs first */
    int smem_limit;       /* the arch's per-block limit, bytes */
    int window;           /* 1: the sequence-parallel window units (s2_plan_window) */
} s2_attn_plan;

/* The default tile for an arch ("sm_80" ... "sm_90a") and head dim, for split mode. */
s2_attn_tile s2_plan_default_tile(const char *arch, int head_dim);

/* The group size from which the default backward at head_dim 128 on sm_90a (one kv head a
 * query head, split mode or no shift) is the ordered dQ (bwd_atomic_dq 2 on the TMA dK/dV
 * kernel). */
#define S2_PLAN_ORDERED_DQ_MIN_GROUP 8192

/* The default tile for spec on arch: s2_plan_default_tile's, with the TMA forward (fwd_tma)
 * swapped for its cp.async twin where the spec cannot take it (roll mode with a shift), and
 * the ordered dQ's backward from S2_PLAN_ORDERED_DQ_MIN_GROUP on. What s2_plan_attn() plans
 * with when given no tile, and the first of the tuning space. */
s2_attn_tile s2_plan_spec_default_tile(const s2_spec *spec, const char *arch);

/*
 * Applies "key=value[,key=value]..." (keys: the field names of s2_attn_tile) to *t. Unknown
 * keys and non-integers are S2_ERR_INVALID naming the key and listing the valid ones; ranges
 * are checked by s2_plan_attn().
 */
s2_status s2_plan_parse_tile(const char *text, s2_attn_tile *t, s2_error *err);

/*
 * Checks a tile text without a spec (e.g. one read back from the tuning database): every key
 * it names is one s2_plan_parse_tile() knows, with a value that key may take on some spec
 * (fwd_warps 1..8, fwd_strips 1..2, fwd_block_n 32/64/128, fwd_stages 1..4, bwd_warps 1..8,
 * bwd_block_n 32/64, bwd_stages 1..4, the switches 0/1), named once, and fwd_wgmma, fwd_tma,
 * bwd_wgmma or bwd_tma = 1 only for sm_90a (arch NULL: any). Which combinations fit a spec's
 * head_dim and the arch's shared memory is s2_plan_attn()'s to say. S2_ERR_INVALID names the
 * key and the valid values.
 */
s2_status s2_plan_check_tile_text(const char *text, const char *arch, s2_error *err);

/*
 * The tuning space of one unit for spec on arch: every combination of that unit's tile fields
 * (the other unit's fields at the default) that s2_plan_attn() accepts — shared memory within
 * the arch's limit, no register spills by the plan's rules. The default comes first. Writes at
 * most max tiles to out and returns how many there are in all (call with max 0 to count).
 */
int s2_plan_tile_space(const s2_spec *spec, const char *arch, s2_attn_unit unit,
                       s2_attn_tile *out, int max);

/*
 * The identity of the attention kernels of spec, 64 hex digits: SHA-256 over what the
 * generated attention depends on (dtype, head dim, heads, kv heads, G, S, shift mode, scale) —
 * not the spec's name, context length or LoRA settings. The tuning database keys tuned tiles
 * by it, so every spec with the same attention shares them.
 */
void s2_plan_attn_identity(const s2_spec *spec, char hex[65]);

/* The bytes s2_plan_tile_str needs at most: every key with an int of 11 characters, and the NUL
 * (tests/test_gen.c checks the widest text fits). */
#define S2_PLAN_TILE_STR_MAX 512

/* "fwd_warps=4,fwd_block_n=64,..." into buf (S2_PLAN_TILE_STR_MAX bytes hold every tile);
 * returns buf. */
const char *s2_plan_tile_str(const s2_attn_tile *t, char *buf, size_t n);

/*
 * Plans the attention of spec with the given tile (NULL: the default for
 * arch). Fails with S2_ERR_SPEC (naming the spec key) for shapes the kernels
 * cannot serve, and S2_ERR_INVALID for a tile they cannot run (saying which
 * values are valid).
 */
s2_status s2_plan_attn(const s2_spec *spec, const char *arch, const s2_attn_tile *tile,
                       s2_attn_plan *plan, s2_error *err);

/* Unit names ("attn_fwd") and the extern "C" kernels each unit holds. */
const char *s2_attn_unit_name(s2_attn_unit u);
int s2_attn_unit_kernels(s2_attn_unit u, const char *const **names);

/*
 * The classification the forward kernel applies, in C: for query tile qt (virtual rows
 * [qt*BM, qt*BM + BM)) and key tile kt of head class cls in a sequence of n tokens. The kernel
 * visits key tiles kt_begin..kt_end-1 (s2_plan_key_tiles) and masks those classed DIAGONAL or
 * EDGE. Tests hold this against the reference mask element by element.
 */
void s2_plan_key_tiles(const s2_attn_plan *p, int cls, int qt, int n, int *kt_begin, int *kt_end);
s2_tile_class s2_plan_classify(const s2_attn_plan *p, int cls, int qt, int kt, int n);

/* Launch geometry for a batch whose longest sequence has max_seqlen tokens. */
typedef struct s2_dim3 { unsigned x, y, z; } s2_dim3;
s2_dim3 s2_plan_grid_fwd(const s2_attn_plan *p, int max_seqlen, int batch);
s2_dim3 s2_plan_grid_dq(const s2_attn_plan *p, int max_seqlen, int batch);
s2_dim3 s2_plan_grid_dkdv(const s2_attn_plan *p, int max_seqlen, int batch);
s2_dim3 s2_plan_grid_pre(const s2_attn_plan *p, int total_tokens);
/* The persistent forward's (fwd_persist) launch: the tiles are s2_plan_grid_fwd's blocks
 * (x, H, batch), taken in its order by min(their count, blocks_max) blocks in one row
 * (blocks_max: the SMs, one block an SM); {0, 1, 1} for an empty batch. */
s2_dim3 s2_plan_grid_fwd_persist(const s2_attn_plan *p, int max_seqlen, int batch,
                                 int blocks_max);

/*
 * Whether a batch can be launched with the plan: one sequence of at most S2_SPEC_MAX_TOKENS
 * tokens (the kernels form positions and group indices in int), every grid above within CUDA's
 * limits (gridDim.x < 2^31, y and z < 65536) and the Hopper kernels' linear block index in int.
 * S2_ERR_INVALID names the kernel and the grid. s2_plan_attn() checks the spec's own
 * context_length (one sequence) this way; the runtime checks every batch before it launches.
 */
s2_status s2_plan_check_batch(const s2_attn_plan *p, int max_seqlen, int batch, long total_tokens,
                              s2_error *err);

/*
 * Sequence-parallel windows (DESIGN §5, gen/sp_plan.h). Rank r holds the positions [lo, hi) of
 * one sequence of N tokens; its attention reads, besides its own key and value rows, the halo
 * rows [klo, lo) it receives, all in one buffer: the halo first, then its own rows. The window
 * units compute the attention of such a window: queries at positions [qlo, qhi) stored from row
 * 0 of q, o, lse, dO and dq; keys and values at [klo, qhi) stored from row 0 of k, v, dk and
 * dv; masks, groups and the tile order in the sequence's positions. The dK/dV kernel sums over
 * the window's queries only (the other ranks' contributions to the halo rows come back to their
 * owner). The kernels take qlo and klo as arguments; the window's end qhi is where its queries
 * stop seeing keys, and in split mode no group depends on N, so N is only checked.
 */
typedef struct s2_attn_window {
    int qlo, qhi;  /* the queries: positions [qlo, qhi) */
    int klo;       /* the keys and values: positions [klo, qhi) */
    int n_global;  /* tokens of the whole sequence */
} s2_attn_window;

/* The sequence-parallel chunks' row alignment the window units are planned for
 * (S2_SP_DEFAULT_ALIGN): every row tile of a window unit divides it. */
#define S2_WINDOW_ALIGN 128

/*
 * Makes p (from s2_plan_attn) the plan of the window units of spec (p->window = 1; the
 * emitter then defines S2_WINDOW 1 and the kernels take the window's qlo and klo). Refused
 * (S2_ERR_SPEC naming the spec key, S2_ERR_INVALID naming the tile field, p unchanged): roll
 * mode with a shift (its last group wraps onto the head: a chunk would need rows of the last
 * rank); head_dim 96 (its dQ kernel spills with the window on sm_90a); a tile whose query or key
 * tiles do not divide S2_WINDOW_ALIGN rows; G or S not a multiple of every key tile (so that
 * klo and every group edge fall on a key tile's edge).
 */
s2_status s2_plan_window(const s2_spec *spec, s2_attn_plan *p, s2_error *err);

/* The cp.async twin of tile t, what runs where the TMA cannot (window units, roll mode): the
 * same rings, stages and warpgroups with fwd_tma and bwd_tma off; an atomic dQ that had the TMA
 * producer streams on commit groups without it (bwd_mbar 0), and the ordered dQ (deterministic)
 * becomes the separate dQ kernel, on four stages as in the default. */
s2_attn_tile s2_plan_cp_async_twin(s2_attn_tile t);

/* The rows of the window's query tiles and of its key tiles, the largest of each (all powers
 * of two once s2_plan_window accepted the plan): qlo must be a multiple of the first, klo of
 * the second. */
void s2_plan_window_tiles(const s2_attn_plan *p, int *query_rows, int *key_rows);

/*
 * Whether w can be launched with the window plan p: 0 <= klo <= qlo < qhi <= n_global <=
 * S2_SPEC_MAX_TOKENS; qlo and klo on tile edges (s2_plan_window_tiles); klo at most the group
 * start of qlo for both head classes (the window's queries see nothing below it, which the
 * window does not hold); every grid within CUDA's limits. S2_ERR_INVALID names the argument and
 * what would be valid.
 */
s2_status s2_plan_check_window(const s2_attn_plan *p, const s2_attn_window *w, s2_error *err);

/* The window units' grids: the row tiles from the one holding qlo (forward, dQ) or klo (dK/dV),
 * rounded down to a whole group of tiles, to the one holding qhi - 1, rounded up to whole
 * groups (s2_block_tile in templates/common.cuh ranks tiles as in the whole sequence's grid);
 * the scalar backward's (head_dim > 128), blocks of rows from qlo or klo itself. */
s2_dim3 s2_plan_grid_fwd_window(const s2_attn_plan *p, const s2_attn_window *w);
s2_dim3 s2_plan_grid_dq_window(const s2_attn_plan *p, const s2_attn_window *w);
s2_dim3 s2_plan_grid_dkdv_window(const s2_attn_plan *p, const s2_attn_window *w);

/*
 * The index map of templates/common.cuh, in C, so tests can hold it against
 * the reference mask of DESIGN §1: for head class cls (0 plain, 1 shifted)
 * and a sequence of n tokens, virtual index x has position s2_plan_position()
 * and query x sees key y iff y <= x and both have the same s2_plan_group().
 */
static inline int s2_plan_group(const s2_attn_plan *p, int cls, int x)
{
    return (x + (cls ? p->shift_off : 0)) / p->G;
}

static inline int s2_plan_position(const s2_attn_plan *p, int cls, int x, int n)
{
    return cls && p->shift_rot ? (x + p->shift_rot) % n : x;
}

#endif

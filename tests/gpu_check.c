/*
 * gpu_check.c — every S²-Attn kernel against the CPU reference on the GPU.
 *
 * For each case: fresh random inputs (seeded from the clock unless --seed),
 * outputs poisoned with NaN before the run, forward and backward on the
 * device, the same problem through the fp64-accumulating CPU reference on the
 * inputs as rounded to the storage dtype, and the relative L2 error of o, lse,
 * dq, dk and dv. A case passes when every error is below 1e-2 and no output
 * element is NaN (a NaN left means an element was never written), and, where the tile's
 * backward is deterministic (every tile but the atomic dQ, bwd_atomic_dq 1), when a second
 * backward on the same inputs, its outputs poisoned again, gives the same bits of dq, dk, dv.
 *
 * Then the LoRA linears (lora.h) and the trainer's kernels (train_kern.h) the same way, each
 * against its CPU twin (ref.h, ref_train.h): the train cases run every kernel on two layouts
 * (16-byte paths; odd strides and misaligned pointers for the element paths) and also check
 * that no pad column of a strided buffer is written. The "window" cases run sequence-parallel
 * attention windows (s2_attn_forward_window, _backward_window) rank by rank, as the NCCL path
 * will, and hold the gathered outputs to the whole sequence's (see run_window_case). The train
 * family also holds the determinism cases ("train det ..."): every kernel that sums across
 * blocks (embedding and RMSNorm backward, cross-entropy, sum of squares) and the LoRA linear as
 * the trainer runs it ("train det lora ...", cuBLAS's and cuBLASLt's algorithms), run several
 * times on the same inputs, must give the same bits every run. --only SUBSTRING picks cases by
 * name ("lora", "train", "train rope", "train det", "fp16", ...); --family attn|lora|train runs
 * one family alone (the compute-sanitizer sweep of bench/gpu-check.sh takes them one at a time).
 *
 * One line per case; exit status 0 only if every case passes, 3 with no GPU.
 * Built without Criterion: the GPU machine has none.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gen/lora_plan.h"
#include "gen/sp_plan.h"
#include "runtime/ops/lora.h"
#include "runtime/ref/ref.h"
#include "tests/check_rng.h"
#include "runtime/ref/ref_train.h"
#include "runtime/core/pool.h"
#include "runtime/core/rt.h"
#include "runtime/core/st.h"
#include "runtime/train/train_kern.h"

#define TOL 1e-2
#define MAX_SEQS 8

typedef struct gcase {
    const char *what;
    int d, H, Hkv, G, S;
    const char *mode;  /* split | roll */
    const char *dtype; /* bf16 | fp16 */
    int nseq;
    int seqlen[MAX_SEQS];
} gcase;

/* Item 11's cases: several N (N < G, N = G, N not a multiple of G), varlen with
 * sequences of different lengths, both shift modes, GQA, d in {64, 96, 128, 256}. */
static const gcase cases[] = {
    {"split N%G=0", 128, 4, 4, 256, 128, "split", "bf16", 1, {1024}},
    {"split short last group", 128, 4, 4, 256, 128, "split", "bf16", 1, {1000}},
    {"split N<G", 128, 4, 4, 256, 128, "split", "bf16", 1, {200}},
    {"split N=G", 128, 4, 4, 256, 128, "split", "bf16", 1, {256}},
    {"roll N%G=0", 128, 4, 4, 256, 128, "roll", "bf16", 1, {1024}},
    {"roll short last group", 128, 4, 4, 256, 128, "roll", "bf16", 1, {1000}},
    {"roll N<G", 128, 4, 4, 256, 128, "roll", "bf16", 1, {200}},
    {"roll N=G", 128, 4, 4, 256, 128, "roll", "bf16", 1, {256}},
    {"split GQA 8/2", 128, 8, 2, 256, 128, "split", "bf16", 1, {777}},
    {"roll GQA 8/2", 128, 8, 2, 256, 128, "roll", "bf16", 1, {777}},
    {"split fp16 d64", 64, 4, 4, 256, 128, "split", "fp16", 1, {1000}},
    {"roll fp16 d64 GQA 8/4", 64, 8, 4, 256, 128, "roll", "fp16", 1, {1000}},
    {"split bf16 d64 N<G", 64, 4, 4, 512, 256, "split", "bf16", 1, {300}},
    {"varlen split", 128, 4, 4, 256, 128, "split", "bf16", 4, {300, 1024, 77, 513}},
    {"varlen roll", 128, 4, 4, 256, 128, "roll", "bf16", 4, {300, 1024, 77, 513}},
    {"varlen roll fp16 d64 GQA", 64, 8, 2, 256, 128, "roll", "fp16", 3, {129, 640, 255}},
    {"varlen split fp16 GQA", 128, 8, 4, 200, 100, "split", "fp16", 5, {1, 31, 200, 401, 999}},
    {"full causal G>=N S=0", 128, 4, 4, 2048, 0, "split", "bf16", 1, {1500}},
    {"odd shift G=96 S=40 d96", 96, 4, 4, 96, 40, "split", "bf16", 1, {500}},
    {"roll G=96 S=40 d96", 96, 4, 4, 96, 40, "roll", "fp16", 1, {500}},
    {"d256 split", 256, 4, 4, 128, 64, "split", "bf16", 1, {600}},
    {"G/4 N=4096 H=8", 128, 8, 8, 1024, 512, "split", "bf16", 1, {4096}},
    {"G/4 N=4096 roll GQA", 128, 8, 4, 1024, 512, "roll", "bf16", 1, {4096}},
    /* Hopper tiles: 9216 rows of K/V a head put 3 heads in a 16 MiB chunk (s2_block_tile),
     * so the 4 heads make a whole chunk and a partial one. */
    {"heads in chunks N=9000", 128, 4, 4, 256, 128, "split", "bf16", 1, {9000}},
    /* Groups of 8192 tokens: on sm_90a the default backward at head_dim 128 is the ordered dQ
     * from that group size on (S2_PLAN_ORDERED_DQ_MIN_GROUP), so tile 0 runs it here; the
     * sequences stay shorter than a group, which keeps the CPU reference cheap. */
    {"split G=8192 N<G", 128, 4, 4, 8192, 4096, "split", "bf16", 1, {5000}},
    {"varlen split G=8192", 128, 4, 4, 8192, 4096, "split", "bf16", 3, {700, 4500, 33}},
};
#define N_CASES ((int)(sizeof cases / sizeof cases[0]))

/* Every case runs with the plan's default tile and five others (tile 0 is the default: on
 * sm_90a with head_dim 64 and 128 the wgmma forward and backward together, on mbarrier rings
 * with two warpgroups in turns at 128 and on block barriers at 64). Each alternative names
 * every field but the wgmma and mbar switches, which stay off unless named, so a change of
 * the defaults cannot change what it tests.
 * Tiles 4 and 5 are the Hopper kernels on sm_90a with head_dim 64 and 128: tile 4 the wgmma
 * forward with one warpgroup a block at head_dim 64 and two at 128, on two stages of 128-key
 * tiles (the defaults have two warpgroups, on four stages of 64-key tiles at head_dim 64 and
 * three of 128-key tiles at 128), with the wgmma backward's atomic dQ on two warpgroups (the
 * head_dim 64 default has one), tile 5 the
 * deterministic wgmma backward after an mma.sync forward, so a fault of the forward cannot
 * hide in the backward (two stages for head_dim 128 and three for 64: with the default's four,
 * each load distance of its pipeline). The mbarrier rings run in one warpgroup a block too:
 * tile 4's forward and tile 5's backward at head_dim 64, while tile 4's forward at 128 and
 * tile 5's backward at 128 step on block barriers with two warpgroups; elsewhere, and for
 * head_dim 96, they are further mma.sync tiles. Below sm_90 (A100 and the like), tiles 1
 * and 2 take one pipeline stage less where ptxas spills registers (the plan's register rules
 * are estimates) or sm_80's shared memory is exceeded; the same products otherwise. (The tiles are for the 163-227 KiB of shared
 * memory of sm_80 and sm_90; sm_86 and sm_89 have 99 KiB and refuse several of them.) */
#define N_TILES 13
#define PERSIST_FEW_BLOCKS 3 /* tile 11's blocks (the SMs the runtime is told of) */
static const char *alt_tile(int i, int d, const char *arch)
{
    /* Tile 12: the TMA dK/dV kernel with the ordered dQ (bwd_atomic_dq 2: the bulk reductions
     * of each query tile added key tile by key tile from the last down, so dQ is deterministic
     * and the second backward must match it bit for bit) on sm_90a with head_dim 128, two
     * stages, after the default forward. Roll-mode and window cases take the cp.async twin,
     * the deterministic dQ kernel. Elsewhere (the plan refuses it at head_dim 64) tile 12 is
     * the default again. */
    if (i == 12)
        return strcmp(arch, "sm_90a") || d != 128
                   ? NULL
                   : "fwd_wgmma=1,fwd_warps=8,fwd_strips=1,fwd_block_n=128,fwd_stages=3,"
                     "fwd_mbar=1,fwd_tma=1,fwd_overlap=1,bwd_wgmma=1,bwd_warps=8,bwd_block_n=64,"
                     "bwd_stages=2,bwd_atomic_dq=2,bwd_mbar=1,bwd_tma=1";
    /* Tiles 10 and 11: the persistent TMA forward (fwd_persist: at most one block an SM, each
     * taking tile after tile from the scheduling counter, the ring's stages and phases running
     * on across tiles) on sm_90a with head_dim 64 and 128. Tile 10 is the default forward at
     * 128 (three stages of 128 keys) and four stages of 64 keys at 64, on every SM; tile 11 is
     * four stages of 64 keys with the runtime told of PERSIST_FEW_BLOCKS SMs (run_case), so
     * that in every case each block walks many tiles (the other tiles' cases hold fewer tiles
     * than an H100 has SMs, but for the two of 4096 and 9000 tokens). Roll-mode and window
     * cases take the cp.async twin. Elsewhere both are the default again. */
    if (i == 10 || i == 11)
        return strcmp(arch, "sm_90a") || (d != 64 && d != 128)
                   ? NULL
                   : d == 128 && i == 10
                   ? "fwd_wgmma=1,fwd_warps=8,fwd_strips=1,fwd_block_n=128,fwd_stages=3,"
                     "fwd_mbar=1,fwd_tma=1,fwd_overlap=1,fwd_persist=1,bwd_wgmma=1,bwd_warps=8,"
                     "bwd_block_n=64,bwd_stages=4,bwd_mbar=1"
                   : d == 128 ? "fwd_wgmma=1,fwd_warps=8,fwd_strips=1,fwd_block_n=64,fwd_stages=4,"
                                "fwd_mbar=1,fwd_tma=1,fwd_overlap=1,fwd_persist=1,bwd_wgmma=1,"
                                "bwd_warps=8,bwd_block_n=64,bwd_stages=4,bwd_mbar=1"
                              : "fwd_wgmma=1,fwd_warps=8,fwd_strips=1,fwd_block_n=64,fwd_stages=4,"
                                "fwd_mbar=1,fwd_tma=1,fwd_overlap=1,fwd_persist=1,bwd_wgmma=1,"
                                "bwd_warps=4,bwd_block_n=64,bwd_stages=4";
    /* Tile 9: the TMA forward with its steps overlapped (fwd_overlap: S of a step issued with
     * P V of the step before) on sm_90a with head_dim 64 and 128, on four stages of 64 keys
     * (the default at 128 overlaps three of 128; each parity of the ring's wrap), beside the
     * default backward. Roll-mode and window cases take the cp.async twin (case_tile,
     * s2_plan_window), without the overlap. Elsewhere tile 9 is the default again. */
    if (i == 9)
        return strcmp(arch, "sm_90a") || (d != 64 && d != 128)
                   ? NULL
                   : d == 64 ? "fwd_wgmma=1,fwd_warps=8,fwd_strips=1,fwd_block_n=64,fwd_stages=4,"
                               "fwd_mbar=1,fwd_tma=1,fwd_overlap=1,bwd_wgmma=1,bwd_warps=4,"
                               "bwd_block_n=64,bwd_stages=4"
                             : "fwd_wgmma=1,fwd_warps=8,fwd_strips=1,fwd_block_n=64,fwd_stages=4,"
                               "fwd_mbar=1,fwd_tma=1,fwd_overlap=1,bwd_wgmma=1,bwd_warps=8,"
                               "bwd_block_n=64,bwd_stages=4,bwd_mbar=1";
    /* Tile 8: the TMA dK/dV kernel with the atomic dQ (each consumer warpgroup's dQ over its
     * keys added by bulk tensor reductions; no dQ kernel) on sm_90a with head_dim 64 and 128,
     * two stages (all that fit at 128 beside the fp32 dQ), after the TMA forward. Roll-mode
     * cases take the atomic dQ on commit groups (case_tile), the window cases the plan's twin,
     * the same. Elsewhere tile 8 is the default again. */
    if (i == 8)
        return strcmp(arch, "sm_90a") || (d != 64 && d != 128)
                   ? NULL
                   : d == 64 ? "fwd_wgmma=1,fwd_warps=8,fwd_strips=1,fwd_block_n=64,fwd_stages=4,"
                               "bwd_wgmma=1,bwd_warps=8,bwd_block_n=64,bwd_stages=2,"
                               "bwd_atomic_dq=1,bwd_mbar=1,bwd_tma=1"
                             : "fwd_wgmma=1,fwd_warps=8,fwd_strips=1,fwd_block_n=128,fwd_stages=2,"
                               "fwd_mbar=1,fwd_tma=1,bwd_wgmma=1,bwd_warps=8,bwd_block_n=64,"
                               "bwd_stages=2,bwd_atomic_dq=1,bwd_mbar=1,bwd_tma=1";
    /* Tile 7: the TMA dK/dV kernel (a producer warpgroup, two consumers; bwd_tma) on sm_90a with
     * head_dim 64 and 128, on three stages at 64 and four at 128 (each parity of the ring's
     * wrap), after the wgmma forward on cp.async. GQA cases walk several query heads a block.
     * Roll-mode cases take it without bwd_tma (case_tile) and the window cases take the plan's
     * cp.async twin (s2_plan_window). Elsewhere tile 7 is the default again. */
    if (i == 7)
        return strcmp(arch, "sm_90a") || (d != 64 && d != 128) ? NULL
               : d == 64 ? "fwd_wgmma=1,fwd_warps=8,fwd_strips=1,fwd_block_n=64,fwd_stages=4,"
                           "bwd_wgmma=1,bwd_warps=8,bwd_block_n=64,bwd_stages=3,bwd_atomic_dq=0,"
                           "bwd_mbar=1,bwd_tma=1"
                         : "fwd_wgmma=1,fwd_warps=8,fwd_strips=1,fwd_block_n=128,fwd_stages=3,"
                           "fwd_mbar=1,bwd_wgmma=1,bwd_warps=8,bwd_block_n=64,bwd_stages=4,"
                           "bwd_atomic_dq=0,bwd_mbar=1,bwd_tma=1";
    /* Tile 6: the TMA forward (a producer warpgroup, two consumers; fwd_tma) without the
     * overlap (fwd_overlap 0) on sm_90a with head_dim 64 and 128, on two stages at 128 (the
     * ring wraps every other tile) and four of 64-key tiles at 64, after the deterministic
     * wgmma backward. Roll-mode cases take it
     * without fwd_tma (case_tile: the plan refuses the TMA forward there); the window cases'
     * window units run its cp.async twin, as s2_plan_window gives every window unit.
     * Elsewhere tile 6 is the default again. */
    if (i == 6)
        return strcmp(arch, "sm_90a") || (d != 64 && d != 128) ? NULL
               : d == 64 ? "fwd_wgmma=1,fwd_warps=8,fwd_strips=1,fwd_block_n=64,fwd_stages=4,"
                           "fwd_mbar=1,fwd_tma=1,bwd_wgmma=1,bwd_warps=4,bwd_block_n=64,"
                           "bwd_stages=4,bwd_atomic_dq=0"
                         : "fwd_wgmma=1,fwd_warps=8,fwd_strips=1,fwd_block_n=128,fwd_stages=2,"
                           "fwd_mbar=1,fwd_tma=1,bwd_wgmma=1,bwd_warps=8,bwd_block_n=64,"
                           "bwd_stages=4,bwd_atomic_dq=0,bwd_mbar=1";
    static const char *const hopper128[2] = {
        "fwd_wgmma=1,fwd_warps=8,fwd_strips=1,fwd_block_n=128,fwd_stages=2,bwd_wgmma=1,"
        "bwd_warps=8,bwd_block_n=64,bwd_stages=3,bwd_atomic_dq=1",
        "fwd_wgmma=0,fwd_warps=4,fwd_strips=2,fwd_block_n=32,fwd_stages=2,bwd_wgmma=1,"
        "bwd_warps=8,bwd_block_n=64,bwd_stages=2,bwd_atomic_dq=0",
    };
    static const char *const hopper64[2] = {
        "fwd_wgmma=1,fwd_warps=4,fwd_strips=1,fwd_block_n=128,fwd_stages=2,fwd_mbar=1,"
        "bwd_wgmma=1,bwd_warps=8,bwd_block_n=64,bwd_stages=3,bwd_atomic_dq=1",
        "fwd_wgmma=0,fwd_warps=4,fwd_strips=1,fwd_block_n=128,fwd_stages=2,bwd_wgmma=1,"
        "bwd_warps=4,bwd_block_n=64,bwd_stages=3,bwd_atomic_dq=0,bwd_mbar=1",
    };
    if (i >= 4 && (d == 64 || d == 128) && !strcmp(arch, "sm_90a"))
        return d == 64 ? hopper64[i - 4] : hopper128[i - 4];
    const int ampere = strncmp(arch, "sm_9", 4) != 0;
    if (ampere && i == 1 && d <= 128)
        return "fwd_warps=4,fwd_strips=2,fwd_block_n=32,fwd_stages=2,bwd_warps=8,bwd_block_n=32,"
               "bwd_stages=3,bwd_atomic_dq=0";
    if (ampere && i == 2 && d <= 128)
        return "fwd_warps=2,fwd_strips=1,fwd_block_n=64,fwd_stages=1,bwd_warps=2,bwd_block_n=32,"
               "bwd_stages=2,bwd_atomic_dq=1";
    if (ampere && i == 1 && d > 128)
        return "fwd_warps=8,fwd_strips=1,fwd_block_n=32,fwd_stages=2,bwd_warps=4,bwd_block_n=32,"
               "bwd_stages=2,bwd_atomic_dq=0";
    static const char *const upto128[N_TILES] = {
        NULL,
        "fwd_warps=4,fwd_strips=2,fwd_block_n=32,fwd_stages=3,bwd_warps=8,bwd_block_n=32,bwd_stages=3,"
        "bwd_atomic_dq=0",
        "fwd_warps=2,fwd_strips=1,fwd_block_n=64,fwd_stages=1,bwd_warps=2,bwd_block_n=32,bwd_stages=1,"
        "bwd_atomic_dq=1",
        "fwd_warps=4,fwd_strips=1,fwd_block_n=128,fwd_stages=2,bwd_warps=4,bwd_block_n=32,bwd_stages=2,"
        "bwd_atomic_dq=1",
        "fwd_warps=8,fwd_strips=1,fwd_block_n=64,fwd_stages=2,bwd_warps=8,bwd_block_n=32,bwd_stages=1,"
        "bwd_atomic_dq=0",
        "fwd_warps=2,fwd_strips=2,fwd_block_n=32,fwd_stages=2,bwd_warps=2,bwd_block_n=32,bwd_stages=4,"
        "bwd_atomic_dq=1",
    };
    static const char *const d256[N_TILES] = {
        NULL,
        "fwd_warps=8,fwd_strips=1,fwd_block_n=32,fwd_stages=3,bwd_warps=4,bwd_block_n=32,bwd_stages=2,"
        "bwd_atomic_dq=0",
        "fwd_warps=2,fwd_strips=1,fwd_block_n=32,fwd_stages=1,bwd_warps=2,bwd_block_n=32,bwd_stages=2,"
        "bwd_atomic_dq=0",
        "fwd_warps=1,fwd_strips=1,fwd_block_n=32,fwd_stages=4,bwd_warps=1,bwd_block_n=32,bwd_stages=2,"
        "bwd_atomic_dq=0",
        "fwd_warps=4,fwd_strips=1,fwd_block_n=32,fwd_stages=2,bwd_warps=2,bwd_block_n=32,bwd_stages=1,"
        "bwd_atomic_dq=0",
        "fwd_warps=2,fwd_strips=1,fwd_block_n=32,fwd_stages=3,bwd_warps=3,bwd_block_n=32,bwd_stages=2,"
        "bwd_atomic_dq=0",
    };
    return d > 128 ? d256[i] : upto128[i];
}

/* The tile of case c with tile index i on arch; NULL for the default. */
static const s2_attn_tile *case_tile(const gcase *c, int i, const char *arch, s2_attn_tile *t,
                                     s2_error *err, s2_status *st)
{
    *st = S2_OK;
    const char *text = alt_tile(i, c->d, arch);
    if (!text)
        return NULL;
    *t = s2_plan_default_tile("sm_80", c->d); /* mma.sync; the Hopper tiles name wgmma */
    *st = s2_plan_parse_tile(text, t, err);
    if (!strcmp(c->mode, "roll")) /* TMA is split mode's (tiles 6 to 9 above) */
        *t = s2_plan_cp_async_twin(*t);
    return t;
}

static s2_status case_spec(const gcase *c, s2_spec *spec, s2_error *err)
{
    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "name: gpu-check\n"
             "dtype: %s\n"
             "model: {hidden_size: %d, intermediate_size: 1024, num_layers: 1, num_heads: %d,\n"
             "        num_kv_heads: %d, head_dim: %d, vocab_size: 256, max_position_embeddings: 1024}\n"
             "context_length: 4096\n"
             "s2attn: {group_size: %d, shift: %d, shift_mode: %s}\n",
             c->dtype, c->H * c->d, c->H, c->Hkv, c->d, c->G, c->S, c->mode);
    return s2_spec_load_string(yaml, c->what, NULL, 0, spec, err);
}

/* Random half tensor and its fp32 view after rounding. */
static void fill_random(s2_st_dtype dt, uint16_t *h, float *f, size_t n)
{
    for (size_t i = 0; i < n; i++)
        f[i] = rng_normal();
    s2_f32_to_half(dt, f, h, n);
    s2_half_to_f32(dt, h, f, n);
}

static double rel_l2(const float *got, const float *ref, size_t n, int *nan)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i]))
            (*nan)++;
        double e = (double)got[i] - ref[i];
        num += e * e;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

typedef struct host_bufs {
    uint16_t *q, *k, *v, *dout, *o, *dq, *dk, *dv;
    float *qf, *kf, *vf, *doutf, *of, *lse, *dqf, *dkf, *dvf;
    float *ro, *rlse, *rdq, *rdk, *rdv;
} host_bufs;

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "gpu_check: out of memory\n");
        exit(1);
    }
    return p;
}

static void host_alloc(host_bufs *b, size_t nq, size_t nk, size_t nl)
{
    b->q = xmalloc(nq * 2), b->dout = xmalloc(nq * 2), b->o = xmalloc(nq * 2), b->dq = xmalloc(nq * 2);
    b->k = xmalloc(nk * 2), b->v = xmalloc(nk * 2), b->dk = xmalloc(nk * 2), b->dv = xmalloc(nk * 2);
    b->qf = xmalloc(nq * 4), b->doutf = xmalloc(nq * 4), b->of = xmalloc(nq * 4), b->dqf = xmalloc(nq * 4);
    b->kf = xmalloc(nk * 4), b->vf = xmalloc(nk * 4), b->dkf = xmalloc(nk * 4), b->dvf = xmalloc(nk * 4);
    b->lse = xmalloc(nl * 4), b->rlse = xmalloc(nl * 4);
    b->ro = xmalloc(nq * 4), b->rdq = xmalloc(nq * 4), b->rdk = xmalloc(nk * 4), b->rdv = xmalloc(nk * 4);
}

static void host_free(host_bufs *b)
{
    void *p[] = {b->q, b->k, b->v, b->dout, b->o, b->dq, b->dk, b->dv, b->qf, b->kf, b->vf,
                 b->doutf, b->of, b->lse, b->dqf, b->dkf, b->dvf, b->ro, b->rlse, b->rdq,
                 b->rdk, b->rdv};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        free(p[i]);
}

typedef struct dev_bufs {
    void *q, *k, *v, *dout, *o, *dq, *dk, *dv;
    float *lse, *delta;
    int32_t *cu;
} dev_bufs;

#define CK(call, what)                                                                            \
    do {                                                                                          \
        if ((st = s2_rt_check((call), (what), err)) != S2_OK)                                     \
            goto out_free;                                                                        \
    } while (0)

static void dev_free(dev_bufs *d)
{
    cudaFree(d->q), cudaFree(d->k), cudaFree(d->v), cudaFree(d->dout), cudaFree(d->o);
    cudaFree(d->dq), cudaFree(d->dk), cudaFree(d->dv), cudaFree(d->lse), cudaFree(d->delta);
    cudaFree(d->cu);
    memset(d, 0, sizeof *d);
}

/* Elements of the n 16-bit values at dev that differ from host's bits. */
static s2_status count_changed(const void *dev, const uint16_t *host, size_t n, long *changed,
                               const char *what, s2_error *err)
{
    uint16_t *again = xmalloc(n * 2);
    s2_status st = s2_rt_check(cudaMemcpy(again, dev, n * 2, cudaMemcpyDeviceToHost), what, err);
    for (size_t i = 0; !st && i < n; i++)
        *changed += again[i] != host[i];
    free(again);
    return st;
}

/* h's inputs (q, k, v, dout) through a's forward and backward over the batch cu[0..B] of T
 * tokens, in d (the caller frees it with dev_free), outputs poisoned first; h gets o, lse,
 * dq, dk, dv back, and their fp32 copies. With *nondet >= 0 (a deterministic backward) the
 * backward runs again, dq, dk, dv and the workspace poisoned first, and *nondet gets the
 * number of their elements whose bits differ from the first run's. */
static s2_status run_device(const s2_attn *a, const int32_t *cu, int B, int T, s2_st_dtype dt,
                            size_t nq, size_t nk, size_t nl, host_bufs *h, dev_bufs *d,
                            long *nondet, s2_error *err)
{
    s2_attn_batch bt;
    s2_status st = s2_attn_batch_init(&bt, cu, B, T, "cu_seqlens", err);
    if (st)
        return st;
    const size_t ws = s2_attn_workspace_bytes(a, T), cub = (size_t)(B + 1) * sizeof *cu;
    CK(cudaMalloc(&d->q, nq * 2), "cudaMalloc q");
    CK(cudaMalloc(&d->k, nk * 2), "cudaMalloc k");
    CK(cudaMalloc(&d->v, nk * 2), "cudaMalloc v");
    CK(cudaMalloc(&d->dout, nq * 2), "cudaMalloc do");
    CK(cudaMalloc(&d->o, nq * 2), "cudaMalloc o");
    CK(cudaMalloc(&d->dq, nq * 2), "cudaMalloc dq");
    CK(cudaMalloc(&d->dk, nk * 2), "cudaMalloc dk");
    CK(cudaMalloc(&d->dv, nk * 2), "cudaMalloc dv");
    CK(cudaMalloc((void **)&d->lse, nl * 4), "cudaMalloc lse");
    CK(cudaMalloc((void **)&d->delta, ws), "cudaMalloc backward workspace");
    CK(cudaMalloc((void **)&d->cu, cub), "cudaMalloc cu_seqlens");
    CK(cudaMemcpy(d->q, h->q, nq * 2, cudaMemcpyHostToDevice), "copy q");
    CK(cudaMemcpy(d->k, h->k, nk * 2, cudaMemcpyHostToDevice), "copy k");
    CK(cudaMemcpy(d->v, h->v, nk * 2, cudaMemcpyHostToDevice), "copy v");
    CK(cudaMemcpy(d->dout, h->dout, nq * 2, cudaMemcpyHostToDevice), "copy do");
    CK(cudaMemcpy(d->cu, cu, cub, cudaMemcpyHostToDevice), "copy cu_seqlens");
    /* Poison: 0xFFFF is NaN in bf16 and fp16, 0xFFFFFFFF in fp32. */
    CK(cudaMemset(d->o, 0xff, nq * 2), "poison o");
    CK(cudaMemset(d->dq, 0xff, nq * 2), "poison dq");
    CK(cudaMemset(d->dk, 0xff, nk * 2), "poison dk");
    CK(cudaMemset(d->dv, 0xff, nk * 2), "poison dv");
    CK(cudaMemset(d->lse, 0xff, nl * 4), "poison lse");
    CK(cudaMemset(d->delta, 0xff, ws), "poison the backward workspace");
    bt.d_cu_seqlens = d->cu;
    if ((st = s2_attn_forward(a, &bt, d->q, d->k, d->v, d->o, d->lse, 0, err)))
        goto out_free;
    if ((st = s2_attn_backward(a, &bt, d->q, d->k, d->v, d->o, d->lse, d->dout, d->delta, d->dq,
                               d->dk, d->dv, 0, err)))
        goto out_free;
    CK(cudaDeviceSynchronize(), "running the kernels");
    CK(cudaMemcpy(h->o, d->o, nq * 2, cudaMemcpyDeviceToHost), "copy o back");
    CK(cudaMemcpy(h->lse, d->lse, nl * 4, cudaMemcpyDeviceToHost), "copy lse back");
    CK(cudaMemcpy(h->dq, d->dq, nq * 2, cudaMemcpyDeviceToHost), "copy dq back");
    CK(cudaMemcpy(h->dk, d->dk, nk * 2, cudaMemcpyDeviceToHost), "copy dk back");
    CK(cudaMemcpy(h->dv, d->dv, nk * 2, cudaMemcpyDeviceToHost), "copy dv back");
    s2_half_to_f32(dt, h->o, h->of, nq);
    s2_half_to_f32(dt, h->dq, h->dqf, nq);
    s2_half_to_f32(dt, h->dk, h->dkf, nk);
    s2_half_to_f32(dt, h->dv, h->dvf, nk);
    if (*nondet < 0)
        goto out_free;
    CK(cudaMemset(d->dq, 0xff, nq * 2), "poison dq (second backward)");
    CK(cudaMemset(d->dk, 0xff, nk * 2), "poison dk (second backward)");
    CK(cudaMemset(d->dv, 0xff, nk * 2), "poison dv (second backward)");
    CK(cudaMemset(d->delta, 0xff, ws), "poison the backward workspace (second backward)");
    if ((st = s2_attn_backward(a, &bt, d->q, d->k, d->v, d->o, d->lse, d->dout, d->delta, d->dq,
                               d->dk, d->dv, 0, err)))
        goto out_free;
    CK(cudaDeviceSynchronize(), "running the second backward");
    *nondet = 0;
    if (!(st = count_changed(d->dq, h->dq, nq, nondet, "copy dq back (second backward)", err)) &&
        !(st = count_changed(d->dk, h->dk, nk, nondet, "copy dk back (second backward)", err)))
        st = count_changed(d->dv, h->dv, nk, nondet, "copy dv back (second backward)", err);
out_free:
    return st;
}

typedef struct case_result {
    double e[5]; /* o, lse, dq, dk, dv */
    int nan;
    int T;
    long nondet; /* dq, dk, dv elements a second backward changed; -1: not run (atomic dQ) */
} case_result;

static s2_status run_case(const s2_rt *rt, const gcase *c, int tile_idx, const s2_jit_opts *jo,
                          case_result *res, s2_error *err)
{
    s2_spec spec;
    s2_status st = case_spec(c, &spec, err);
    if (st)
        return st;
    s2_attn_tile tile;
    const s2_attn_tile *tp = case_tile(c, tile_idx, rt->arch, &tile, err, &st);
    if (st)
        return st;
    s2_attn a;
    st = s2_attn_load(&a, rt, &spec, tp, jo, err);
    if (st)
        return st;
    if (tile_idx == 11 && a.plan.tile.fwd_persist)
        a.sm_count = PERSIST_FEW_BLOCKS;
    int32_t cu[MAX_SEQS + 1] = {0};
    for (int i = 0; i < c->nseq; i++)
        cu[i + 1] = cu[i] + c->seqlen[i];
    const int T = cu[c->nseq];
    const s2_st_dtype dt = spec.dtype == S2_DTYPE_BF16 ? S2_ST_BF16 : S2_ST_F16;
    const size_t nq = (size_t)T * c->H * c->d, nk = (size_t)T * c->Hkv * c->d, nl = (size_t)c->H * T;
    host_bufs h;
    host_alloc(&h, nq, nk, nl);
    dev_bufs d = {0};
    fill_random(dt, h.q, h.qf, nq);
    fill_random(dt, h.k, h.kf, nk);
    fill_random(dt, h.v, h.vf, nk);
    fill_random(dt, h.dout, h.doutf, nq);

    res->nondet = a.plan.tile.bwd_atomic_dq == 1 ? -1 : 0;
    if ((st = run_device(&a, cu, c->nseq, T, dt, nq, nk, nl, &h, &d, &res->nondet, err)))
        goto out_free;

    s2_ref_attn ra = {.T = T, .H = c->H, .Hkv = c->Hkv, .d = c->d, .B = c->nseq,
                      .cu_seqlens = cu, .G = c->G, .S = c->S,
                      .mode = spec.s2attn.shift_mode, .scale = (float)spec.s2attn.softmax_scale};
    s2_ref_attn_forward(&ra, h.qf, h.kf, h.vf, h.ro, h.rlse);
    s2_ref_attn_backward(&ra, h.qf, h.kf, h.vf, h.ro, h.rlse, h.doutf, h.rdq, h.rdk, h.rdv);
    res->T = T;
    res->nan = 0;
    res->e[0] = rel_l2(h.of, h.ro, nq, &res->nan);
    res->e[1] = rel_l2(h.lse, h.rlse, nl, &res->nan);
    res->e[2] = rel_l2(h.dqf, h.rdq, nq, &res->nan);
    res->e[3] = rel_l2(h.dkf, h.rdk, nk, &res->nan);
    res->e[4] = rel_l2(h.dvf, h.rdv, nk, &res->nan);
out_free:
    dev_free(&d);
    host_free(&h);
    s2_attn_free(&a);
    return st;
}

/* ---------------------------------------------------------------- sequence-parallel windows */

/* A sequence of seqlen[0] tokens cut into P chunks by gen/sp_plan.h (128-row alignment): chunks
 * shorter than G, N not a multiple of P * G, short last chunks, GQA, full causal attention,
 * d 64, 128 and 256 (the scalar backward; the plan refuses d = 96 windows). The specs are those
 * of cases above (the whole-sequence units come from the cache); G and S are multiples of the
 * widest key tile of every tile (128 rows; 32 at d = 256). */
typedef struct wcase {
    gcase c; /* one sequence */
    int P;   /* ranks */
} wcase;

static const wcase wcases[] = {
    {{"window P=2 N%PG=0", 128, 4, 4, 256, 128, "split", "bf16", 1, {2048}}, 2},
    {{"window P=3 short last chunk", 128, 4, 4, 256, 128, "split", "bf16", 1, {1000}}, 3},
    {{"window P=8 GQA 8/2", 128, 8, 2, 256, 128, "split", "bf16", 1, {4000}}, 8},
    {{"window P=4 GQA 8/2 N%PG!=0", 128, 8, 2, 256, 128, "split", "bf16", 1, {3001}}, 4},
    {{"window P=4 chunks<G H=8", 128, 8, 8, 1024, 512, "split", "bf16", 1, {3000}}, 4},
    {{"window P=8 chunks<G H=8", 128, 8, 8, 1024, 512, "split", "bf16", 1, {4096}}, 8},
    {{"window P=2 fp16 d64", 64, 4, 4, 256, 128, "split", "fp16", 1, {1000}}, 2},
    {{"window P=4 d64 chunks<G", 64, 4, 4, 512, 256, "split", "bf16", 1, {1300}}, 4},
    {{"window P=8 d64 chunks<G", 64, 4, 4, 512, 256, "split", "bf16", 1, {3000}}, 8},
    {{"window P=4 full causal", 128, 4, 4, 2048, 0, "split", "bf16", 1, {1500}}, 4},
    {{"window P=3 d256", 256, 4, 4, 128, 64, "split", "bf16", 1, {1000}}, 3},
};
#define N_WCASES ((int)(sizeof wcases / sizeof wcases[0]))

/* Relative L2 error of rows [r0, r1) of a [rows, width] tensor; with lse, rows [r0, r1) of
 * each of the H rows of a [H, n] tensor. */
static double rel_rows(const float *got, const float *ref, int r0, int r1, size_t width, int H,
                       int n, int lse, int *nan)
{
    double num = 0, den = 0;
    for (int h = 0; h < (lse ? H : 1); h++)
        for (size_t i = lse ? (size_t)h * n + r0 : r0 * width;
             i < (lse ? (size_t)h * n + r1 : r1 * width); i++) {
            if (nan)
                *nan += isnan(got[i]);
            double e = (double)got[i] - ref[i];
            num += e * e;
            den += (double)ref[i] * ref[i];
        }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

typedef struct window_result {
    double e[5];  /* o, lse, dq, dk, dv against the CPU reference: the worst rank's rows */
    double g[5];  /* the same against the whole-sequence GPU kernels */
    int nan;      /* NaN outputs of any rank (poison left, or a halo row read unsent) */
    int halo;     /* halo rows sent, all ranks and kinds */
} window_result;

/* One rank's device buffers. */
typedef struct wdev {
    void *q, *kv_k, *kv_v, *dout, *o, *dq, *dk, *dv, *ws;
    float *lse;
} wdev;

static void wdev_free(wdev *d)
{
    void *p[] = {d->q, d->kv_k, d->kv_v, d->dout, d->o, d->dq, d->dk, d->dv, d->ws, d->lse};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        cudaFree(p[i]);
    memset(d, 0, sizeof *d);
}

static s2_status upload(void **dev, const void *host, size_t bytes, const char *what,
                        s2_error *err)
{
    s2_status st = s2_rt_check(cudaMalloc(dev, bytes ? bytes : 1), what, err);
    if (!st && bytes)
        st = s2_rt_check(cudaMemcpy(*dev, host, bytes, cudaMemcpyHostToDevice), what, err);
    return st;
}

static s2_status poisoned(void **dev, size_t bytes, const char *what, s2_error *err)
{
    s2_status st = s2_rt_check(cudaMalloc(dev, bytes ? bytes : 1), what, err);
    if (!st)
        st = s2_rt_check(cudaMemset(*dev, 0xff, bytes), what, err);
    return st;
}

/*
 * The window case c with tile tile_idx: one whole-sequence set of random inputs; the whole
 * sequence through the GPU kernels and the CPU reference; then every rank of gen/sp_plan.h's
 * plan as the NCCL path will run it: q and dO rows [lo, hi); k and v rows [klo, hi) in one
 * buffer (klo the lowest halo row of any kind), its own rows copied in and the halo rows copied
 * from their owners' rows exactly as the plan's transfers say (every other row, and every head
 * a transfer does not name, NaN: a kernel that read one would leave NaN in its outputs); the
 * window forward and backward; o, lse and dq gathered, dk and dv of the rank's own rows added
 * to the owner's and those of its halo rows sent back (added to the owner's) per transfer.
 */
static s2_status run_window_case(const s2_rt *rt, const wcase *wc, int tile_idx,
                                 const s2_jit_opts *jo, window_result *res, s2_error *err)
{
    const gcase *c = &wc->c;
    memset(res, 0, sizeof *res);
    s2_spec spec;
    s2_status st = case_spec(c, &spec, err);
    if (st)
        return st;
    s2_attn_tile tile;
    const s2_attn_tile *tp = case_tile(c, tile_idx, rt->arch, &tile, err, &st);
    if (st)
        return st;
    s2_attn whole, win;
    if ((st = s2_attn_load(&whole, rt, &spec, tp, jo, err)))
        return st;
    if ((st = s2_attn_load_window(&win, rt, &spec, tp, jo, err))) {
        s2_attn_free(&whole);
        return st;
    }
    const int N = c->seqlen[0], H = c->H, Hkv = c->Hkv, d = c->d;
    s2_sp_attn sa;
    s2_sp_attn_from_spec(&spec, &sa);
    sa.N = N;
    s2_sp_plan plan = {0};
    if ((st = s2_sp_plan_make(&sa, wc->P, S2_SP_DEFAULT_ALIGN, &plan, err))) {
        s2_attn_free(&win), s2_attn_free(&whole);
        return st;
    }
    const s2_st_dtype dt = spec.dtype == S2_DTYPE_BF16 ? S2_ST_BF16 : S2_ST_F16;
    const size_t qw = (size_t)H * d, kw = (size_t)Hkv * d; /* elements a row */
    const size_t nq = N * qw, nk = N * kw, nl = (size_t)H * N;
    host_bufs h; /* the whole sequence: inputs, GPU outputs (o, lse, dq, dk, dv), reference */
    host_alloc(&h, nq, nk, nl);
    fill_random(dt, h.q, h.qf, nq);
    fill_random(dt, h.k, h.kf, nk);
    fill_random(dt, h.v, h.vf, nk);
    fill_random(dt, h.dout, h.doutf, nq);
    /* the gathered window outputs, as fp32 */
    float *wo = xmalloc(nq * 4), *wlse = xmalloc(nl * 4), *wdq = xmalloc(nq * 4);
    float *wdk = xmalloc(nk * 4), *wdv = xmalloc(nk * 4);
    memset(wdk, 0, nk * 4), memset(wdv, 0, nk * 4);
    dev_bufs g = {0};
    wdev rd = {0};
    uint16_t *hk = NULL, *hv = NULL, *hbuf = NULL;
    float *fbuf = NULL;

    /* the whole sequence on the GPU */
    int32_t cu[2] = {0, N};
    long nondet = -1; /* (the whole-sequence cases check the backward's bits) */
    if ((st = run_device(&whole, cu, 1, N, dt, nq, nk, nl, &h, &g, &nondet, err)))
        goto out_free;

    /* the whole sequence on the CPU */
    s2_ref_attn ra = {.T = N, .H = H, .Hkv = Hkv, .d = d, .B = 1, .cu_seqlens = cu, .G = c->G,
                      .S = c->S, .mode = spec.s2attn.shift_mode,
                      .scale = (float)spec.s2attn.softmax_scale};
    s2_ref_attn_forward(&ra, h.qf, h.kf, h.vf, h.ro, h.rlse);
    s2_ref_attn_backward(&ra, h.qf, h.kf, h.vf, h.ro, h.rlse, h.doutf, h.rdq, h.rdk, h.rdv);

    /* every rank's window */
    for (int r = 0; r < plan.P; r++) {
        const int lo = plan.rank[r].lo, hi = plan.rank[r].hi;
        int klo = lo;
        for (int kd = 0; kd < S2_SP_KINDS; kd++) {
            const s2_sp_range *b = &plan.rank[r].before[kd];
            if (b->lo < b->hi && b->lo < klo)
                klo = b->lo;
            if (plan.rank[r].wrap[kd].lo < plan.rank[r].wrap[kd].hi) {
                st = s2_error_set(err, S2_ERR_CHECK, "rank %d: a wrapped halo in split mode", r);
                goto out_free;
            }
        }
        const int rows = hi - lo, krows = hi - klo;
        const size_t rq = (size_t)rows * qw, rk = (size_t)krows * kw;
        hk = xmalloc(rk * 2), hv = xmalloc(rk * 2);
        memset(hk, 0xff, rk * 2), memset(hv, 0xff, rk * 2); /* NaN: rows no one sends */
        memcpy(hk + (size_t)(lo - klo) * kw, h.k + (size_t)lo * kw, (size_t)rows * kw * 2);
        memcpy(hv + (size_t)(lo - klo) * kw, h.v + (size_t)lo * kw, (size_t)rows * kw * 2);
        for (int x = 0; x < plan.n_xfer; x++) { /* the halo, from its owners' rows */
            const s2_sp_xfer *t = &plan.xfer[x];
            if (t->dst != r)
                continue;
            const s2_sp_rank *src = &plan.rank[t->src];
            if (t->lo < klo || t->hi > lo || t->lo < src->lo || t->hi > src->hi) {
                st = s2_error_set(err, S2_ERR_CHECK,
                                  "rank %d: transfer of rows %d..%d from rank %d (rows %d..%d) "
                                  "outside its halo %d..%d", r, t->lo, t->hi, t->src, src->lo,
                                  src->hi, klo, lo);
                goto out_free;
            }
            const size_t h0 = (size_t)plan.kv_first[t->kind] * d;
            const size_t hn = (size_t)plan.kv_count[t->kind] * d;
            for (int p = t->lo; p < t->hi; p++) {
                memcpy(hk + (size_t)(p - klo) * kw + h0, h.k + (size_t)p * kw + h0, hn * 2);
                memcpy(hv + (size_t)(p - klo) * kw + h0, h.v + (size_t)p * kw + h0, hn * 2);
            }
            res->halo += t->hi - t->lo;
        }
        const s2_attn_window w = {.qlo = lo, .qhi = hi, .klo = klo, .n_global = N};
        const size_t ws = s2_attn_workspace_bytes(&win, rows);
        if ((st = upload(&rd.q, h.q + (size_t)lo * qw, rq * 2, "window q", err)) ||
            (st = upload(&rd.dout, h.dout + (size_t)lo * qw, rq * 2, "window do", err)) ||
            (st = upload(&rd.kv_k, hk, rk * 2, "window k", err)) ||
            (st = upload(&rd.kv_v, hv, rk * 2, "window v", err)) ||
            (st = poisoned(&rd.o, rq * 2, "window o", err)) ||
            (st = poisoned(&rd.dq, rq * 2, "window dq", err)) ||
            (st = poisoned(&rd.dk, rk * 2, "window dk", err)) ||
            (st = poisoned(&rd.dv, rk * 2, "window dv", err)) ||
            (st = poisoned((void **)&rd.lse, (size_t)H * rows * 4, "window lse", err)) ||
            (st = poisoned(&rd.ws, ws, "window workspace", err)))
            goto out_free;
        if ((st = s2_attn_forward_window(&win, &w, rd.q, rd.kv_k, rd.kv_v, rd.o, rd.lse, 0,
                                         err)) ||
            (st = s2_attn_backward_window(&win, &w, rd.q, rd.kv_k, rd.kv_v, rd.o, rd.lse,
                                          rd.dout, rd.ws, rd.dq, rd.dk, rd.dv, 0, err))) {
            s2_error_prefix(err, "rank %d (rows %d..%d, halo from %d)", r, lo, hi, klo);
            goto out_free;
        }
        CK(cudaDeviceSynchronize(), "running a window's kernels");
        hbuf = xmalloc((rq > rk ? rq : rk) * 2);
        fbuf = xmalloc((rq > rk ? rq : rk) * 4);
        CK(cudaMemcpy(hbuf, rd.o, rq * 2, cudaMemcpyDeviceToHost), "copy window o back");
        s2_half_to_f32(dt, hbuf, wo + (size_t)lo * qw, rq);
        CK(cudaMemcpy(hbuf, rd.dq, rq * 2, cudaMemcpyDeviceToHost), "copy window dq back");
        s2_half_to_f32(dt, hbuf, wdq + (size_t)lo * qw, rq);
        CK(cudaMemcpy(fbuf, rd.lse, (size_t)H * rows * 4, cudaMemcpyDeviceToHost),
           "copy window lse back");
        for (int hh = 0; hh < H; hh++)
            memcpy(wlse + (size_t)hh * N + lo, fbuf + (size_t)hh * rows, (size_t)rows * 4);
        for (int which = 0; which < 2; which++) { /* dk, then dv */
            float *sum = which ? wdv : wdk;
            CK(cudaMemcpy(hbuf, which ? rd.dv : rd.dk, rk * 2, cudaMemcpyDeviceToHost),
               "copy window dk, dv back");
            s2_half_to_f32(dt, hbuf, fbuf, rk);
            for (size_t i = 0; i < rk; i++) /* every row is written, unsent halo rows too */
                res->nan += isnan(fbuf[i]);
            for (size_t i = 0; i < (size_t)rows * kw; i++) /* its own rows */
                sum[(size_t)lo * kw + i] += fbuf[(size_t)(lo - klo) * kw + i];
            for (int x = 0; x < plan.n_xfer; x++) { /* the halo's, back to the owners */
                const s2_sp_xfer *t = &plan.xfer[x];
                if (t->dst != r)
                    continue;
                const size_t h0 = (size_t)plan.kv_first[t->kind] * d;
                const size_t hn = (size_t)plan.kv_count[t->kind] * d;
                for (int p = t->lo; p < t->hi; p++)
                    for (size_t e = 0; e < hn; e++)
                        sum[(size_t)p * kw + h0 + e] += fbuf[(size_t)(p - klo) * kw + h0 + e];
            }
        }
        free(hk), free(hv), free(hbuf), free(fbuf);
        hk = hv = hbuf = NULL, fbuf = NULL;
        wdev_free(&rd);
    }
    /* every rank's rows against the whole sequence's, the worst rank counted */
    for (int r = 0; r < plan.P; r++) {
        const int lo = plan.rank[r].lo, hi = plan.rank[r].hi;
        const float *got[5] = {wo, wlse, wdq, wdk, wdv};
        const float *ref[5] = {h.ro, h.rlse, h.rdq, h.rdk, h.rdv};
        const float *gpu[5] = {h.of, h.lse, h.dqf, h.dkf, h.dvf};
        const size_t width[5] = {qw, 1, qw, kw, kw};
        for (int e = 0; e < 5; e++) {
            res->e[e] = fmax(res->e[e], rel_rows(got[e], ref[e], lo, hi, width[e], H, N, e == 1,
                                                 &res->nan));
            res->g[e] = fmax(res->g[e], rel_rows(got[e], gpu[e], lo, hi, width[e], H, N, e == 1,
                                                 NULL));
        }
    }
out_free:
    dev_free(&g);
    wdev_free(&rd);
    free(hk), free(hv), free(hbuf), free(fbuf);
    free(wo), free(wlse), free(wdq), free(wdk), free(wdv);
    host_free(&h);
    s2_sp_plan_free(&plan);
    s2_attn_free(&win);
    s2_attn_free(&whole);
    return st;
}

/* Every window case with tile ti whose name holds only (NULL: all); returns the failures and
 * adds the runs to *n_run. */
static int check_windows(const s2_rt *rt, int ti, const s2_jit_opts *jo, const char *only,
                         int *n_run)
{
    int failed = 0, header = 0;
    s2_error err = {0};
    for (int i = 0; i < N_WCASES; i++) {
        const gcase *c = &wcases[i].c;
        if (only && !strstr(c->what, only))
            continue;
        if (!header++)
            printf("%-28s %2s %-4s %4s %5s %4s %4s %6s %9s %9s %9s %9s %9s %9s %s\n", "case", "P",
                   "dt", "d", "H/kv", "G", "S", "N", "o", "lse", "dq", "dk", "dv", "vs whole",
                   "result");
        window_result r;
        (*n_run)++;
        if (run_window_case(rt, &wcases[i], ti, jo, &r, &err)) {
            printf("%-28s ERROR %s\n", c->what, err.msg);
            s2_error_clear(&err);
            failed++;
            continue;
        }
        int ok = !r.nan && (r.halo > 0) == (wcases[i].P > 1); /* a case with ranks sends a halo */
        double worst_gpu = 0;
        for (int e = 0; e < 5; e++) {
            ok = ok && r.e[e] < TOL && r.g[e] < TOL;
            worst_gpu = fmax(worst_gpu, r.g[e]);
        }
        char hk[16];
        snprintf(hk, sizeof hk, "%d/%d", c->H, c->Hkv);
        printf("%-28s %2d %-4s %4d %5s %4d %4d %6d %9.2e %9.2e %9.2e %9.2e %9.2e %9.2e %s",
               c->what, wcases[i].P, c->dtype, c->d, hk, c->G, c->S, c->seqlen[0], r.e[0],
               r.e[1], r.e[2], r.e[3], r.e[4], worst_gpu, ok ? "PASS" : "FAIL");
        if (r.nan)
            printf(" (%d NaN: unwritten outputs or unsent halo rows read)", r.nan);
        printf("\n");
        failed += !ok;
    }
    return failed;
}

/* Builds every (case, tile) pair's kernels first, on the thread pool, so the runs below load
 * from the cache. */
typedef struct prebuild_job {
    const gcase *c;
    int tile_idx;
    int window; /* also the window units (a window case) */
    s2_status st;
    s2_error err;
} prebuild_job;

typedef struct prebuild_pool {
    prebuild_job *jobs;
    int n;
    s2_jit_opts jo;
} prebuild_pool;

/* One pair as an item of the pool: its failure is its own (j->st, j->err). */
static s2_status prebuild(void *arg, int i, int worker, s2_error *unused)
{
    prebuild_pool *pool = arg;
    prebuild_job *j = &pool->jobs[i];
    s2_spec spec;
    s2_attn_plan plan;
    s2_attn_tile tile;
    s2_jit_result res[S2_UNIT_ATTN_COUNT];
    memset(res, 0, sizeof res);
    j->st = case_spec(j->c, &spec, &j->err);
    const s2_attn_tile *tp = NULL;
    if (!j->st)
        tp = case_tile(j->c, j->tile_idx, pool->jo.arch, &tile, &j->err, &j->st);
    for (int w = 0; w <= j->window && !j->st; w++) {
        j->st = w ? s2_attn_build_window(&spec, tp, &pool->jo, &plan, res, &j->err)
                  : s2_attn_build(&spec, tp, &pool->jo, &plan, res, &j->err);
        for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++) {
            for (int k = 0; !j->st && k < res[u].n_res; k++) {
                const s2_kernel_res *r = &res[u].res[k];
                if (r->spill_stores + r->spill_loads + r->stack)
                    j->st = s2_error_set(&j->err, S2_ERR_CHECK,
                                         "%s%s: %d bytes spilled, %d-byte stack frame",
                                         r->name, w ? " (window)" : "",
                                         r->spill_stores + r->spill_loads, r->stack);
            }
            s2_jit_result_free(&res[u]);
        }
    }
    return S2_OK;
}


/* ---------------------------------------------------------------- LoRA linears */

typedef struct lcase {
    const char *what;
    const char *dtype;
    int M, r;
    const char *targets; /* the spec's lora.targets */
    int group;           /* which group of the plan */
    double dropout;
    int hidden;          /* the model's hidden size; 0: 512 */
    int heads;           /* query heads of 64 dims (2 kv heads); 0: 8 */
} lcase;

/* GQA-shaped q/k/v (H=8, Hkv=2, d=64: outs 512, 128, 128) and o; M not a multiple of a tile.
 * Ranks 8, 16, 24, 32 take the generated pass over dy (gate/up: two slabs per projection, the
 * second partial, and several row ranges), ranks 4, 12 and 64 the cuBLAS products, and so does
 * rank 8 on an o_proj of 516 outputs (rows of dy not 16-byte aligned); gate/up with in = 520
 * (rows of x 16-byte aligned, in not a multiple of 64) takes the pass too. */
static const lcase lcases[] = {
    {"qkv r=8", "bf16", 1000, 8, "[q_proj, k_proj, v_proj, o_proj]", 0, 0.0, 0, 0},
    {"qkv r=16", "bf16", 1000, 16, "[q_proj, k_proj, v_proj, o_proj]", 0, 0.0, 0, 0},
    {"qkv r=32 fp16", "fp16", 700, 32, "[q_proj, k_proj, v_proj]", 0, 0.0, 0, 0},
    {"o r=24", "bf16", 900, 24, "[o_proj]", 0, 0.0, 0, 0},
    {"gate,up r=8", "bf16", 1500, 8, "[gate_proj, up_proj]", 0, 0.0, 0, 0},
    {"qkv r=64 fp16", "fp16", 777, 64, "[q_proj, k_proj, v_proj, o_proj]", 0, 0.0, 0, 0},
    {"o r=8", "bf16", 1000, 8, "[q_proj, k_proj, v_proj, o_proj]", 1, 0.0, 0, 0},
    {"q,v r=8", "bf16", 513, 8, "[q_proj, v_proj]", 0, 0.0, 0, 0},
    {"qkv r=4 (rp pad)", "bf16", 300, 4, "[q_proj, k_proj, v_proj]", 0, 0.0, 0, 0},
    {"down r=16 fp16", "fp16", 640, 16, "[down_proj]", 0, 0.0, 0, 0},
    {"qkv r=8 dropout 0.1", "bf16", 1000, 8, "[q_proj, k_proj, v_proj, o_proj]", 0, 0.1, 0, 0},
    {"o r=16 dropout 0.3 fp16", "fp16", 513, 16, "[q_proj, k_proj, v_proj, o_proj]", 1, 0.3, 0, 0},
    {"qkv r=12 dropout (pad)", "bf16", 257, 12, "[q_proj, k_proj, v_proj]", 0, 0.2, 0, 0},
    {"o r=8 out 516", "bf16", 600, 8, "[o_proj]", 0, 0.0, 516, 0},
    {"gate,up r=16 in 520", "bf16", 777, 16, "[gate_proj, up_proj]", 0, 0.0, 520, 0},
    /* q over two slabs, k and v one each: v's partials at different slab offsets */
    {"qkv r=8 q 1024", "bf16", 900, 8, "[q_proj, k_proj, v_proj]", 0, 0.0, 0, 16},
};
#define N_LCASES ((int)(sizeof lcases / sizeof lcases[0]))

static s2_status lcase_plan(const lcase *c, s2_lora_plan *plan, s2_error *err)
{
    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "name: gpu-check-lora\ndtype: %s\n"
             "model: {hidden_size: %d, intermediate_size: 768, num_layers: 1, num_heads: %d,\n"
             "        num_kv_heads: 2, head_dim: 64, vocab_size: 256, max_position_embeddings: 1024}\n"
             "context_length: 1024\nlora: {rank: %d, alpha: 16, dropout: %g, targets: %s}\n",
             c->dtype, c->hidden ? c->hidden : 512, c->heads ? c->heads : 8, c->r, c->dropout,
             c->targets);
    s2_spec spec;
    s2_status st = s2_spec_load_string(yaml, c->what, NULL, 0, &spec, err);
    if (!st)
        s2_plan_lora(&spec, plan);
    return st;
}

/* Relative L2 over a strided block: rows x cols of got (ld_got) vs ref (ld_ref). */
static double rel_block(const float *got, int ld_got, const float *ref, int ld_ref, int rows,
                        int cols, int *nan)
{
    double num = 0, den = 0;
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            double g = got[(size_t)i * ld_got + j], r = ref[(size_t)i * ld_ref + j];
            *nan += isnan(g);
            num += (g - r) * (g - r), den += r * r;
        }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Elements of n bytes each (es) in got that differ bitwise from ref. */
static double ndiff(const void *got, const void *ref, size_t n, size_t es)
{
    double d = 0;
    for (size_t i = 0; i < n; i++)
        d += memcmp((const char *)got + i * es, (const char *)ref + i * es, es) != 0;
    return d;
}

typedef struct lbufs {
    void *xa, *wc, *y, *dya, *dxv, *da, *db, *ws;
} lbufs;

static void lbufs_free(lbufs *b)
{
    void *p[] = {b->xa, b->wc, b->y, b->dya, b->dxv, b->da, b->db, b->ws};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        cudaFree(p[i]);
}

static s2_status upload_half(void **dev, const float *f, size_t n, s2_st_dtype dt, s2_error *err)
{
    uint16_t *h = xmalloc(n * 2);
    s2_f32_to_half(dt, f, h, n);
    s2_status st = s2_rt_check(cudaMalloc(dev, n * 2), "cudaMalloc (LoRA)", err);
    if (!st)
        st = s2_rt_check(cudaMemcpy(*dev, h, n * 2, cudaMemcpyHostToDevice), "copy (LoRA)", err);
    free(h);
    return st;
}

static s2_status download_half(float *f, const void *dev, size_t n, s2_st_dtype dt, s2_error *err)
{
    uint16_t *h = xmalloc(n * 2);
    s2_status st = s2_rt_check(cudaMemcpy(h, dev, n * 2, cudaMemcpyDeviceToHost), "copy back (LoRA)", err);
    if (!st)
        s2_half_to_f32(dt, h, f, n);
    free(h);
    return st;
}

/* Random values rounded to the storage dtype, so the reference sees what the device sees. */
static void rand_rounded(float *f, size_t n, float scale, s2_st_dtype dt)
{
    uint16_t *h = xmalloc(n * 2);
    for (size_t i = 0; i < n; i++)
        f[i] = scale * rng_normal();
    s2_f32_to_half(dt, f, h, n);
    s2_half_to_f32(dt, h, f, n);
    free(h);
}

/* e[0] y, e[1] dx, e[2] dA, e[3] dB: the worst over the group's projections. algo: every
 * product's cuBLAS algorithm (0: cuBLAS's choice; k: cuBLASLt's heuristic entry k - 1, what a
 * tuned entry selects). */
static s2_status run_lora_case(s2_lora_ctx *ctx, const lcase *c, int algo, double e[4], int *nan,
                               s2_error *err)
{
    s2_lora_plan plan;
    s2_lora_dims d;
    const unsigned long long seed = rng_state; /* fresh per run */
    s2_status st = lcase_plan(c, &plan, err);
    if (!st) /* layer 5: the masks' streams are 5 * 8 + projection */
        st = s2_lora_dims_of(&plan, c->group, 5, c->M, seed, &d, err);
    if (st)
        return st;
    memset(d.algo, algo, sizeof d.algo);
    const s2_st_dtype dt = d.dtype == S2_DTYPE_BF16 ? S2_ST_BF16 : S2_ST_F16;
    const int M = d.M, in = d.in, r = d.r, rp = d.rp, lx = in + rp, ot = d.out_total;
    const int ly = ot + rp;
    float *xa = xmalloc((size_t)M * lx * 4), *wc = xmalloc((size_t)(ot + rp) * lx * 4);
    float *a = xmalloc((size_t)rp * in * 4), *dy = xmalloc((size_t)M * ot * 4);
    float *x = xmalloc((size_t)M * in * 4), *dya = xmalloc((size_t)M * ly * 4);
    rand_rounded(x, (size_t)M * in, 1.f, dt);
    rand_rounded(dy, (size_t)M * ot, 1.f, dt);
    memset(wc, 0, (size_t)(ot + rp) * lx * 4);
    memset(a, 0, (size_t)rp * in * 4);
    for (int m = 0; m < M; m++) {
        memcpy(xa + (size_t)m * lx, x + (size_t)m * in, (size_t)in * 4);
        for (int j = in; j < lx; j++)
            xa[(size_t)m * lx + j] = NAN; /* poison: the forward must write u here */
        memcpy(dya + (size_t)m * ly, dy + (size_t)m * ot, (size_t)ot * 4);
        for (int j = ot; j < ly; j++)
            dya[(size_t)m * ly + j] = NAN; /* poison: the backward must write s v here */
    }
    /* W rows, B block-diagonal, A stacked (and in wc's extra rows): B random, not PEFT's zero
     * start, so it is tested. */
    float *tmp = xmalloc((size_t)ot * (in > r ? in : r) * 4);
    for (int i = 0, off = 0; i < d.n_proj; off += d.out[i], i++) {
        rand_rounded(tmp, (size_t)d.out[i] * in, 1.f / sqrtf((float)in), dt);
        for (int o = 0; o < d.out[i]; o++)
            memcpy(wc + (size_t)(off + o) * lx, tmp + (size_t)o * in, (size_t)in * 4);
        rand_rounded(tmp, (size_t)d.out[i] * r, 1.f / sqrtf((float)r), dt);
        for (int o = 0; o < d.out[i]; o++)
            memcpy(wc + (size_t)(off + o) * lx + in + i * r, tmp + (size_t)o * r, (size_t)r * 4);
        rand_rounded(a + (size_t)i * r * in, (size_t)r * in, 1.f / sqrtf((float)in), dt);
    }
    for (int j = 0; j < rp; j++)
        memcpy(wc + (size_t)(ot + j) * lx, a + (size_t)j * in, (size_t)in * 4);
    free(tmp);
    lbufs b = {0};
    st = upload_half(&b.xa, xa, (size_t)M * lx, dt, err);
    if (!st)
        st = upload_half(&b.wc, wc, (size_t)(ot + rp) * lx, dt, err);
    if (!st)
        st = upload_half(&b.dya, dya, (size_t)M * ly, dt, err);
    const size_t ny = (size_t)M * ot, ndx = (size_t)M * lx, nda = (size_t)rp * in, ndb = (size_t)ot * rp;
    if (!st)
        st = s2_rt_check(cudaMalloc(&b.y, ny * 2), "cudaMalloc y", err);
    if (!st)
        st = s2_rt_check(cudaMalloc(&b.dxv, ndx * 2), "cudaMalloc dxv", err);
    if (!st)
        st = s2_rt_check(cudaMalloc(&b.da, nda * 2), "cudaMalloc da", err);
    if (!st)
        st = s2_rt_check(cudaMalloc(&b.db, ndb * 2), "cudaMalloc db", err);
    if (!st && s2_lora_workspace_bytes(&d))
        st = s2_rt_check(cudaMalloc(&b.ws, s2_lora_workspace_bytes(&d)), "cudaMalloc ws", err);
    if (!st) /* poison every output */
        st = s2_rt_check(cudaMemset(b.y, 0xff, ny * 2), "poison", err);
    if (!st)
        st = s2_rt_check(cudaMemset(b.dxv, 0xff, ndx * 2), "poison", err);
    if (!st)
        st = s2_rt_check(cudaMemset(b.da, 0xff, nda * 2), "poison", err);
    if (!st)
        st = s2_rt_check(cudaMemset(b.db, 0xff, ndb * 2), "poison", err);
    if (!st)
        st = s2_lora_forward(ctx, &d, b.xa, b.wc, b.y, b.ws, 0, err);
    if (!st)
        st = s2_lora_backward(ctx, &d, b.xa, b.wc, b.dya, b.dxv, b.da, b.db, b.ws, 0, err);
    if (!st)
        st = s2_rt_check(cudaDeviceSynchronize(), "running the LoRA GEMMs", err);
    float *gy = xmalloc(ny * 4), *gdx = xmalloc(ndx * 4), *gda = xmalloc(nda * 4), *gdb = xmalloc(ndb * 4);
    if (!st)
        st = download_half(gy, b.y, ny, dt, err);
    if (!st)
        st = download_half(gdx, b.dxv, ndx, dt, err);
    if (!st)
        st = download_half(gda, b.da, nda, dt, err);
    if (!st)
        st = download_half(gdb, b.db, ndb, dt, err);
    /* The reference, one projection at a time; dx sums over them. */
    float *rdx = xmalloc((size_t)M * in * 4);
    memset(rdx, 0, (size_t)M * in * 4);
    e[0] = e[1] = e[2] = e[3] = 0;
    for (int i = 0, off = 0; !st && i < d.n_proj; off += d.out[i], i++) {
        const int oi = d.out[i];
        float *W = xmalloc((size_t)oi * in * 4), *B = xmalloc((size_t)oi * r * 4);
        float *dyi = xmalloc((size_t)M * oi * 4), *yi = xmalloc((size_t)M * oi * 4);
        float *dxi = xmalloc((size_t)M * in * 4), *dAi = xmalloc((size_t)r * in * 4);
        float *dBi = xmalloc((size_t)oi * r * 4);
        for (int o = 0; o < oi; o++) {
            memcpy(W + (size_t)o * in, wc + (size_t)(off + o) * lx, (size_t)in * 4);
            memcpy(B + (size_t)o * r, wc + (size_t)(off + o) * lx + in + i * r, (size_t)r * 4);
        }
        for (int m = 0; m < M; m++)
            memcpy(dyi + (size_t)m * oi, dy + (size_t)m * ot + off, (size_t)oi * 4);
        s2_ref_lora rl = {.M = M, .in = in, .out = oi, .r = r, .scale = d.scale,
                          .dropout = d.dropout, .seed = d.seed, .stream = d.stream[i]};
        const float *Ai = a + (size_t)i * r * in;
        s2_ref_lora_forward(&rl, x, W, Ai, B, yi);
        s2_ref_lora_backward(&rl, x, W, Ai, B, dyi, dxi, dAi, dBi);
        for (size_t k = 0; k < (size_t)M * in; k++)
            rdx[k] += dxi[k];
        e[0] = fmax(e[0], rel_block(gy + off, ot, yi, oi, M, oi, nan));
        e[2] = fmax(e[2], rel_block(gda + (size_t)i * r * in, in, dAi, in, r, in, nan));
        e[3] = fmax(e[3], rel_block(gdb + (size_t)off * rp + i * r, rp, dBi, r, oi, r, nan));
        free(W), free(B), free(dyi), free(yi), free(dxi), free(dAi), free(dBi);
    }
    if (!st)
        e[1] = rel_block(gdx, lx, rdx, in, M, in, nan);
    /* dB outside the diagonal blocks is not a parameter: it must keep its poison */
    for (int i = 0, off = 0; !st && i < d.n_proj; off += d.out[i], i++)
        for (int o = off; o < off + d.out[i]; o++)
            for (int c = 0; c < rp; c++)
                if ((c < i * r || c >= (i + 1) * r) && !isnan(gdb[(size_t)o * rp + c])) {
                    fprintf(stderr, "gpu_check: LoRA dB written outside its diagonal block "
                                    "(row %d, column %d)\n", o, c);
                    e[3] = INFINITY;
                    o = off + d.out[i], c = rp; /* one report per projection */
                }
    free(rdx), free(gy), free(gdx), free(gda), free(gdb);
    free(xa), free(wc), free(a), free(dy), free(x), free(dya);
    lbufs_free(&b);
    return st;
}

#define N_LALGOS 3

/* Every LoRA case against the CPU reference; returns the failures. */
static int check_lora(const s2_rt *rt)
{
    s2_error err = {0};
    s2_lora_ctx *ctx = NULL;
    if (s2_lora_open(&ctx, rt, NULL, &err)) {
        printf("lora: ERROR %s\n", err.msg);
        s2_error_clear(&err);
        return 1;
    }
    printf("%-20s %-4s %5s %3s %4s %9s %9s %9s %9s %s\n", "lora case", "dt", "M", "r", "algo",
           "y", "dx", "dA", "dB", "result");
    int failed = 0;
    /* every case with cuBLAS's own algorithms, then with cuBLASLt's first and second */
    for (int algo = 0; algo < N_LALGOS; algo++)
        for (int i = 0; i < N_LCASES; i++) {
            double e[4];
            int nan = 0;
            if (run_lora_case(ctx, &lcases[i], algo, e, &nan, &err)) {
                printf("%-20s ERROR %s\n", lcases[i].what, err.msg);
                s2_error_clear(&err);
                failed++;
                continue;
            }
            int ok = !nan && e[0] < TOL && e[1] < TOL && e[2] < TOL && e[3] < TOL;
            printf("%-20s %-4s %5d %3d %4d %9.2e %9.2e %9.2e %9.2e %s%s\n", lcases[i].what,
                   lcases[i].dtype, lcases[i].M, lcases[i].r, algo, e[0], e[1], e[2], e[3],
                   ok ? "PASS" : "FAIL", nan ? " (NaN: unwritten outputs)" : "");
            failed += !ok;
        }
    s2_lora_close(ctx);
    printf("gpu_check: %d of %d LoRA case runs passed (%d cases x %d algorithm choices)\n",
           N_LALGOS * N_LCASES - failed, N_LALGOS * N_LCASES, N_LCASES, N_LALGOS);
    return failed;
}

/* The LoRA linear as the trainer runs it (fp32 gradients accumulated onto a start, the
 * backward's second stream), DET_RUNS_LORA times on the same inputs, restored before each run:
 * the elements of y, dx, s v (dya's extra columns), dA and dB that differ from the first run's
 * bits go to *diff. */
#define DET_RUNS_LORA 3
static s2_status run_lora_det(s2_lora_ctx *ctx, const lcase *c, int algo, double *diff,
                              s2_error *err)
{
    s2_lora_plan plan;
    s2_lora_dims d;
    s2_status st = lcase_plan(c, &plan, err);
    if (!st)
        st = s2_lora_dims_of(&plan, c->group, 5, c->M, rng_state, &d, err);
    if (st)
        return st;
    memset(d.algo, algo, sizeof d.algo);
    d.grad_f32 = 1, d.grad_beta = 1.f;
    const s2_st_dtype dt = d.dtype == S2_DTYPE_BF16 ? S2_ST_BF16 : S2_ST_F16;
    const int lx = d.in + d.rp, ly = d.out_total + d.rp;
    const size_t nxa = (size_t)d.M * lx, nwc = (size_t)(d.out_total + d.rp) * lx;
    const size_t ndya = (size_t)d.M * ly, ny = (size_t)d.M * d.out_total;
    const size_t nda = (size_t)d.rp * d.in, ndb = (size_t)d.out_total * d.rp;
    float *xa = xmalloc(nxa * 4), *wc = xmalloc(nwc * 4), *dya = xmalloc(ndya * 4);
    float *da0 = xmalloc(nda * 4), *db0 = xmalloc(ndb * 4);
    rand_rounded(xa, nxa, 1.f, dt);
    rand_rounded(wc, nwc, 1.f / sqrtf((float)d.in), dt);
    rand_rounded(dya, ndya, 1.f, dt);
    for (size_t i = 0; i < nda; i++)
        da0[i] = rng_normal();
    for (size_t i = 0; i < ndb; i++)
        db0[i] = rng_normal();
    /* the off-diagonal blocks of B are zero, as the trainer keeps them */
    for (int i = 0, off = 0; i < d.n_proj; off += d.out[i], i++)
        for (int o = off; o < off + d.out[i]; o++)
            for (int j = 0; j < d.rp; j++)
                if (j < i * d.r || j >= (i + 1) * d.r)
                    wc[(size_t)o * lx + d.in + j] = 0.f;
    lbufs b = {0};
    uint16_t *h_xa = xmalloc(nxa * 2), *h_dya = xmalloc(ndya * 2);
    s2_f32_to_half(dt, xa, h_xa, nxa);
    s2_f32_to_half(dt, dya, h_dya, ndya);
    st = upload_half(&b.wc, wc, nwc, dt, err);
    const size_t bytes[] = {nxa * 2, ndya * 2, ny * 2, nxa * 2, nda * 4, ndb * 4};
    void **ptr[] = {&b.xa, &b.dya, &b.y, &b.dxv, &b.da, &b.db};
    for (int i = 0; i < 6 && !st; i++)
        st = s2_rt_check(cudaMalloc(ptr[i], bytes[i]), "cudaMalloc (LoRA det)", err);
    if (!st && s2_lora_workspace_bytes(&d))
        st = s2_rt_check(cudaMalloc(&b.ws, s2_lora_workspace_bytes(&d)), "cudaMalloc ws", err);
    /* outputs read back: y, dxv, dya (its s v columns), da, db */
    const size_t out_bytes = ny * 2 + nxa * 2 + ndya * 2 + nda * 4 + ndb * 4;
    char *first = xmalloc(out_bytes), *got = xmalloc(out_bytes);
    *diff = 0;
    for (int r = 0; !st && r < DET_RUNS_LORA; r++) {
        char *h = r ? got : first;
        st = s2_rt_check(cudaMemcpy(b.xa, h_xa, nxa * 2, cudaMemcpyHostToDevice), "restore", err);
        if (!st)
            st = s2_rt_check(cudaMemcpy(b.dya, h_dya, ndya * 2, cudaMemcpyHostToDevice), "restore",
                             err);
        if (!st)
            st = s2_rt_check(cudaMemcpy(b.da, da0, nda * 4, cudaMemcpyHostToDevice), "restore",
                             err);
        if (!st)
            st = s2_rt_check(cudaMemcpy(b.db, db0, ndb * 4, cudaMemcpyHostToDevice), "restore",
                             err);
        if (!st)
            st = s2_rt_check(cudaMemset(b.dxv, 0xff, nxa * 2), "poison", err);
        if (!st)
            st = s2_lora_forward(ctx, &d, b.xa, b.wc, b.y, b.ws, 0, err);
        if (!st)
            st = s2_lora_backward(ctx, &d, b.xa, b.wc, b.dya, b.dxv, b.da, b.db, b.ws, 0, err);
        if (!st)
            st = s2_rt_check(cudaDeviceSynchronize(), "running the LoRA linear", err);
        const void *src[] = {b.y, b.dxv, b.dya, b.da, b.db};
        const size_t nb[] = {ny * 2, nxa * 2, ndya * 2, nda * 4, ndb * 4};
        size_t at = 0;
        for (int i = 0; i < 5 && !st; at += nb[i], i++)
            st = s2_rt_check(cudaMemcpy(h + at, src[i], nb[i], cudaMemcpyDeviceToHost),
                             "copy back", err);
        if (!st && r) {
            at = 0;
            for (int i = 0; i < 5; at += nb[i], i++)
                *diff += ndiff(got + at, first + at, nb[i] / (i < 3 ? 2 : 4), i < 3 ? 2 : 4);
        }
    }
    free(xa), free(wc), free(dya), free(da0), free(db0), free(h_xa), free(h_dya);
    free(first), free(got);
    lbufs_free(&b);
    return st;
}

/* Every LoRA case (those whose name "train det lora CASE" holds `only`), with cuBLAS's own
 * algorithms and cuBLASLt's first: the same bits run after run. Returns the failures. */
static int check_lora_det(const s2_rt *rt, const char *only)
{
    int any = 0;
    char full[160];
    for (int i = 0; i < N_LCASES && !any; i++) {
        snprintf(full, sizeof full, "train det lora %s", lcases[i].what);
        any = !only || strstr(full, only);
    }
    if (!any)
        return 0;
    s2_error err = {0};
    s2_lora_ctx *ctx = NULL;
    if (s2_lora_open(&ctx, rt, NULL, &err)) {
        printf("det lora: ERROR %s\n", err.msg);
        s2_error_clear(&err);
        return 1;
    }
    printf("%-28s %-4s %5s %3s %4s %9s %s\n", "det lora case", "dt", "M", "r", "algo", "diff",
           "result");
    int failed = 0, n_run = 0;
    for (int algo = 0; algo < 2; algo++)
        for (int i = 0; i < N_LCASES; i++) {
            snprintf(full, sizeof full, "train det lora %s", lcases[i].what);
            if (only && !strstr(full, only))
                continue;
            double diff = 0;
            n_run++;
            if (run_lora_det(ctx, &lcases[i], algo, &diff, &err)) {
                printf("%-28s ERROR %s\n", lcases[i].what, err.msg);
                s2_error_clear(&err);
                failed++;
                continue;
            }
            printf("%-28s %-4s %5d %3d %4d %9.0f %s\n", lcases[i].what, lcases[i].dtype,
                   lcases[i].M, lcases[i].r, algo, diff, diff == 0 ? "PASS" : "FAIL");
            failed += diff != 0;
        }
    s2_lora_close(ctx);
    printf("gpu_check: %d of %d LoRA determinism runs passed (%d runs each)\n", n_run - failed,
           n_run, DET_RUNS_LORA);
    return failed;
}

/* ---------------------------------------------------------------- the trainer's kernels */

/* Model shapes of the train unit: the tiny spec's in both dtypes, and LLaMA-2 13B's widths (5120
 * columns: two chunks a thread in the row kernels, the second one partial; several warps per
 * block; a 32000 vocabulary). */
typedef struct tspec {
    const char *what;
    const char *dtype;
    int hidden, inter, heads, d, vocab;
} tspec;
static const tspec tspecs[] = {
    {"tiny", "bf16", 256, 688, 4, 64, 264},
    {"tiny", "fp16", 256, 688, 4, 64, 264},
    {"13b", "bf16", 5120, 13824, 40, 128, 32000},
};
#define N_TSPECS ((int)(sizeof tspecs / sizeof tspecs[0]))

/* Rows, and how the buffers are laid out: pad columns added to every row stride and an element
 * offset of every pointer. The first shape takes the 16-byte paths, the second (strides not a
 * multiple of 8, pointers 2 bytes off 16-byte alignment) the element paths. */
typedef struct tshape {
    const char *what;
    int M, pad, off;
} tshape;
static const tshape tshapes[] = {{"M=512", 512, 0, 0}, {"M=37 ld+3 off1", 37, 3, 1}};
#define N_TSHAPES ((int)(sizeof tshapes / sizeof tshapes[0]))

#define TOL_TIGHT 1e-5 /* AdamW and the sum of squares: fp32 arithmetic on identical inputs */
#define TOL_LOSS 1e-4  /* the summed loss */

static s2_status tspec_load(const tspec *t, s2_spec *spec, s2_error *err)
{
    char yaml[1024];
    /* max_position_embeddings 512 and context 4096: rope_factor 8 */
    snprintf(yaml, sizeof yaml,
             "name: gpu-check-train-%s-%s\ndtype: %s\n"
             "model: {hidden_size: %d, intermediate_size: %d, num_layers: 1, num_heads: %d,\n"
             "        num_kv_heads: %d, head_dim: %d, vocab_size: %d, rope_theta: 10000,\n"
             "        max_position_embeddings: 512, rms_norm_eps: 1.0e-5}\n"
             "context_length: 4096\n",
             t->what, t->dtype, t->dtype, t->hidden, t->inter, t->heads, t->heads, t->d, t->vocab);
    return s2_spec_load_string(yaml, t->what, NULL, 0, spec, err);
}

/* One run's context: the loaded kernels, the storage dtype, the shape. */
typedef struct tctx {
    const s2_train_kern *k;
    const tspec *ts;
    s2_st_dtype dt;
    int M, pad, off;
} tctx;

/* What a case reports: up to 3 named outputs with their errors and tolerances. */
typedef struct tout {
    int n;
    const char *name[3];
    double e[3], tol[3];
    int nan;   /* NaN in a compared output: an element never written */
    int stray; /* pad columns of a row-strided buffer that lost their NaN: written out of bounds */
} tout;

static void tout_add(tout *o, const char *name, double e, double tol)
{
    if (o->n < 3)
        o->name[o->n] = name, o->e[o->n] = e, o->tol[o->n] = tol, o->n++;
}

/* Device allocations of one case, freed together. */
typedef struct darena {
    void *p[32];
    int n;
} darena;

static void darena_free(darena *ar)
{
    for (int i = 0; i < ar->n; i++)
        cudaFree(ar->p[i]);
    ar->n = 0;
}

/* bytes of device memory, poisoned with 0xff (NaN in bf16, fp16 and fp32). */
static s2_status dnew(darena *ar, size_t bytes, void **out, s2_error *err)
{
    *out = NULL;
    if (ar->n == (int)(sizeof ar->p / sizeof ar->p[0]))
        return s2_error_set(err, S2_ERR_INVALID, "gpu_check: too many buffers in one case");
    s2_status st = s2_rt_check(cudaMalloc(out, bytes ? bytes : 16), "cudaMalloc (train)", err);
    if (!st)
        ar->p[ar->n++] = *out;
    if (!st)
        st = s2_rt_check(cudaMemset(*out, 0xff, bytes), "poisoning (train)", err);
    return st;
}

/* A [rows, ld] storage-dtype matrix at element c->off of a fresh allocation: columns
 * [0, cols) from f (contiguous rows x cols), everything else NaN, so a kernel that reads a pad
 * column spreads NaN into its row. f NULL: all NaN (an output). */
static s2_status dmat(darena *ar, const tctx *c, const float *f, int rows, int cols, int ld,
                      void **out, s2_error *err)
{
    const size_t n = (size_t)rows * ld + c->off;
    uint16_t *h = xmalloc(n * 2);
    memset(h, 0xff, n * 2);
    for (int r = 0; f && r < rows; r++)
        s2_f32_to_half(c->dt, f + (size_t)r * cols, h + c->off + (size_t)r * ld, (size_t)cols);
    void *base;
    s2_status st = dnew(ar, n * 2, &base, err);
    if (!st)
        st = s2_rt_check(cudaMemcpy(base, h, n * 2, cudaMemcpyHostToDevice), "copy (train)", err);
    free(h);
    *out = (uint16_t *)base + c->off;
    return st;
}

/* Reads columns [0, cols) of a [rows, ld] matrix back as fp32; counts the pad elements that
 * are no longer NaN (0xffff) into *stray. */
static s2_status dmat_get(const tctx *c, const void *dev, int rows, int cols, int ld, float *f,
                          int *stray, s2_error *err)
{
    const size_t n = (size_t)rows * ld;
    uint16_t *h = xmalloc(n * 2);
    s2_status st = s2_rt_check(cudaMemcpy(h, dev, n * 2, cudaMemcpyDeviceToHost),
                               "copy back (train)", err);
    for (int r = 0; !st && r < rows; r++) {
        s2_half_to_f32(c->dt, h + (size_t)r * ld, f + (size_t)r * cols, (size_t)cols);
        for (int j = cols; j < ld; j++)
            *stray += h[(size_t)r * ld + j] != 0xffff;
    }
    free(h);
    return st;
}

/* n fp32 at float c->off of a fresh allocation (f NULL: NaN). */
static s2_status dvec(darena *ar, const tctx *c, const float *f, size_t n, float **out,
                      s2_error *err)
{
    void *base;
    s2_status st = dnew(ar, (n + c->off) * 4, &base, err);
    *out = (float *)base + c->off;
    if (!st && f)
        st = s2_rt_check(cudaMemcpy(*out, f, n * 4, cudaMemcpyHostToDevice), "copy (train)", err);
    return st;
}

static s2_status dvec_get(float *f, const float *dev, size_t n, s2_error *err)
{
    return s2_rt_check(cudaMemcpy(f, dev, n * 4, cudaMemcpyDeviceToHost), "copy back (train)", err);
}

static s2_status dsync(s2_error *err)
{
    return s2_rt_check(cudaDeviceSynchronize(), "running the train kernels", err);
}

/* n normal draws times scale, rounded to the case's dtype (what the device will hold). */
static float *trand(const tctx *c, size_t n, float scale)
{
    float *f = xmalloc(n * 4);
    rand_rounded(f, n, scale, c->dt);
    return f;
}

static float *tzeros(size_t n)
{
    float *f = xmalloc(n * 4);
    memset(f, 0, n * 4);
    return f;
}

/* Random tokens in [0, vocab): repeats happen (M > vocab for the tiny spec). */
static int32_t *ttokens(int M, int vocab)
{
    int32_t *t = xmalloc((size_t)(M ? M : 1) * 4);
    for (int i = 0; i < M; i++)
        t[i] = (int32_t)(rng_u01() * vocab) % vocab;
    return t;
}

static s2_status dints(darena *ar, const int32_t *h, int n, int32_t **out, s2_error *err)
{
    void *p;
    s2_status st = dnew(ar, (size_t)n * 4, &p, err);
    *out = p;
    if (!st)
        st = s2_rt_check(cudaMemcpy(p, h, (size_t)n * 4, cudaMemcpyHostToDevice), "copy ints", err);
    return st;
}

/* The reduction workspace for `rows` rows: poisoned (partials a kernel reads before writing
 * turn NaN), its arrival counter zeroed as train_kern.h asks. */
static s2_status tws(darena *ar, const tctx *c, int rows, s2_k_ws *ws, s2_error *err)
{
    ws->bytes = s2_k_ws_bytes(c->k, rows);
    s2_status st = dnew(ar, ws->bytes, &ws->p, err);
    if (!st)
        st = s2_rt_check(cudaMemset(ws->p, 0, S2_K_WS_HEAD), "zeroing the counter", err);
    return st;
}

/* M tokens for the embedding backward: random, with token 5 at every third position and 9
 * at every seventh (from 1), so at M = 512 both fill more than one S2_EMBED_CHUNK item and
 * take the partials and the second kernel; the work list built from them. */
static s2_status tembed_tokens(darena *ar, const tctx *c, int32_t **tok, s2_embed_list *l,
                               int32_t **dlist, s2_error *err)
{
    const int M = c->M, V = c->k->vocab;
    *tok = ttokens(M, V);
    for (int t = 0; t < M; t++)
        (*tok)[t] = t % 3 == 0 ? 5 % V : t % 7 == 1 ? 9 % V : (*tok)[t];
    s2_status st = s2_embed_list_build(l, *tok, M, V, err);
    if (!st)
        st = dints(ar, l->data, (int)l->n_ints, dlist, err);
    return st;
}

typedef s2_status (*tcase_fn)(const tctx *c, darena *ar, tout *o, s2_error *err);

/* out = table[tokens]; the last token is outside the vocabulary, and its row must be NaN. */
static s2_status tc_embed_fwd(const tctx *c, darena *ar, tout *o, s2_error *err)
{
    const int M = c->M, H = c->k->hidden, V = c->k->vocab, ld = H + c->pad;
    float *table = trand(c, (size_t)V * H, 1.f), *got = xmalloc((size_t)M * H * 4);
    float *ref = xmalloc((size_t)M * H * 4);
    int32_t *tok = ttokens(M, V), *dtok;
    tok[M - 1] = V;
    void *dtab, *dout;
    s2_status st = dints(ar, tok, M, &dtok, err);
    if (!st)
        st = dmat(ar, c, table, V, H, H, &dtab, err);
    if (!st)
        st = dmat(ar, c, NULL, M, H, ld, &dout, err);
    if (!st)
        st = s2_k_embed_fwd(c->k, M, dtok, dtab, dout, ld, 0, err);
    if (!st)
        st = dsync(err);
    if (!st)
        st = dmat_get(c, dout, M, H, ld, got, &o->stray, err);
    if (!st) {
        for (int t = 0; t < M - 1; t++)
            memcpy(ref + (size_t)t * H, table + (size_t)tok[t] * H, (size_t)H * 4);
        tout_add(o, "out", rel_block(got, H, ref, H, M - 1, H, &o->nan), TOL);
        int written = 0;
        for (int j = 0; j < H; j++)
            written += !isnan(got[(size_t)(M - 1) * H + j]);
        tout_add(o, "badtok", (double)written / H, TOL); /* the fraction not NaN */
    }
    free(table), free(got), free(ref), free(tok);
    return st;
}

/* dtable += scatter of dout by token (repeats add up, some tokens over several items); the
 * increment is compared. */
static s2_status tc_embed_bwd(const tctx *c, darena *ar, tout *o, s2_error *err)
{
    const int M = c->M, H = c->k->hidden, V = c->k->vocab, ld = H + c->pad;
    const size_t nt = (size_t)V * H;
    float *dout = trand(c, (size_t)M * H, 1.f), *t0 = trand(c, nt, 1.f);
    float *got = xmalloc(nt * 4), *ref = tzeros(nt);
    int32_t *tok = NULL, *dlist = NULL;
    s2_embed_list l = {0};
    s2_k_ws ws;
    void *ddout;
    float *dtab;
    s2_status st = tembed_tokens(ar, c, &tok, &l, &dlist, err);
    if (!st)
        st = dmat(ar, c, dout, M, H, ld, &ddout, err);
    if (!st)
        st = dvec(ar, c, t0, nt, &dtab, err);
    if (!st)
        st = tws(ar, c, M, &ws, err);
    if (!st)
        st = s2_k_embed_bwd(c->k, &l, dlist, ddout, ld, dtab, &ws, 0, err);
    if (!st)
        st = dsync(err);
    if (!st)
        st = dvec_get(got, dtab, nt, err);
    if (!st) {
        for (int t = 0; t < M; t++)
            for (int j = 0; j < H; j++)
                ref[(size_t)tok[t] * H + j] += dout[(size_t)t * H + j];
        for (size_t i = 0; i < nt; i++)
            got[i] -= t0[i];
        tout_add(o, "dtable", rel_l2(got, ref, nt, &o->nan), TOL);
    }
    free(dout), free(t0), free(got), free(ref), free(tok);
    s2_embed_list_free(&l);
    return st;
}

static float *tweight(const tctx *c, int n)
{
    float *w = trand(c, (size_t)n, 0.1f);
    for (int i = 0; i < n; i++)
        w[i] += 1.f;
    uint16_t *h = xmalloc((size_t)n * 2);
    s2_f32_to_half(c->dt, w, h, (size_t)n);
    s2_half_to_f32(c->dt, h, w, (size_t)n);
    free(h);
    return w;
}

static s2_status tc_rmsnorm_fwd(const tctx *c, darena *ar, tout *o, s2_error *err)
{
    const int M = c->M, H = c->k->hidden, ldx = H + c->pad, ldy = H + 2 * c->pad;
    float *x = trand(c, (size_t)M * H, 2.f), *w = tweight(c, H);
    float *y = xmalloc((size_t)M * H * 4), *ry = xmalloc((size_t)M * H * 4);
    float *r = xmalloc((size_t)M * 4), *rr = xmalloc((size_t)M * 4);
    void *dx, *dw, *dy;
    float *dr;
    s2_status st = dmat(ar, c, x, M, H, ldx, &dx, err);
    if (!st)
        st = dmat(ar, c, w, 1, H, H, &dw, err);
    if (!st)
        st = dmat(ar, c, NULL, M, H, ldy, &dy, err);
    if (!st)
        st = dvec(ar, c, NULL, (size_t)M, &dr, err);
    if (!st)
        st = s2_k_rmsnorm_fwd(c->k, M, dx, ldx, dw, dy, ldy, dr, 0, err);
    if (!st)
        st = dsync(err);
    if (!st)
        st = dmat_get(c, dy, M, H, ldy, y, &o->stray, err);
    if (!st)
        st = dvec_get(r, dr, (size_t)M, err);
    if (!st) {
        s2_ref_rmsnorm_forward(M, H, c->k->eps, x, w, ry, rr);
        tout_add(o, "y", rel_l2(y, ry, (size_t)M * H, &o->nan), TOL);
        tout_add(o, "rstd", rel_l2(r, rr, (size_t)M, &o->nan), TOL);
    }
    free(x), free(w), free(y), free(ry), free(r), free(rr);
    return st;
}

/* The backward from the twin's rstd. in_place: dx starts as the residual and the kernel adds
 * the norm's gradient into it (resid = dx), with dw frozen (NULL); otherwise no residual and
 * dw accumulates onto a random start. */
static s2_status rmsnorm_bwd_case(const tctx *c, darena *ar, tout *o, int in_place, s2_error *err)
{
    const int M = c->M, H = c->k->hidden, ldx = H + c->pad, lddy = H + 2 * c->pad;
    const int lddx = H + 3 * c->pad;
    const size_t n = (size_t)M * H;
    float *x = trand(c, n, 2.f), *w = tweight(c, H), *dy = trand(c, n, 1.f);
    float *res = trand(c, n, 1.f), *dw0 = trand(c, (size_t)H, 1.f);
    float *rstd = xmalloc((size_t)M * 4), *tmp = xmalloc(n * 4);
    float *got = xmalloc(n * 4), *ref = xmalloc(n * 4), *gdw = xmalloc((size_t)H * 4);
    float *rdw = xmalloc((size_t)H * 4);
    s2_ref_rmsnorm_forward(M, H, c->k->eps, x, w, tmp, rstd);
    void *dx_, *dw_, *ddy, *ddx;
    float *drstd, *ddw = NULL;
    s2_status st = dmat(ar, c, x, M, H, ldx, &dx_, err);
    if (!st)
        st = dmat(ar, c, w, 1, H, H, &dw_, err);
    if (!st)
        st = dmat(ar, c, dy, M, H, lddy, &ddy, err);
    if (!st)
        st = dvec(ar, c, rstd, (size_t)M, &drstd, err);
    if (!st)
        st = dmat(ar, c, in_place ? res : NULL, M, H, lddx, &ddx, err);
    /* dw at the other alignment than the rest: the partials' sum then adds into a gradient
     * at an odd float offset on the 16-byte path */
    tctx cw = *c;
    cw.off = !c->off;
    s2_k_ws ws = {0};
    if (!st && !in_place)
        st = dvec(ar, &cw, dw0, (size_t)H, &ddw, err);
    if (!st && !in_place)
        st = tws(ar, c, M, &ws, err);
    if (!st)
        st = s2_k_rmsnorm_bwd(c->k, M, dx_, ldx, dw_, ddy, lddy, drstd, in_place ? ddx : NULL,
                              lddx, ddx, lddx, ddw, in_place ? NULL : &ws, 0, err);
    if (!st)
        st = dsync(err);
    if (!st)
        st = dmat_get(c, ddx, M, H, lddx, got, &o->stray, err);
    if (!st && !in_place)
        st = dvec_get(gdw, ddw, (size_t)H, err);
    if (!st) {
        s2_ref_rmsnorm_backward(M, H, c->k->eps, x, w, dy, ref, rdw);
        for (size_t i = 0; in_place && i < n; i++)
            ref[i] += res[i];
        tout_add(o, "dx", rel_l2(got, ref, n, &o->nan), TOL);
        if (!in_place) {
            for (int j = 0; j < H; j++)
                gdw[j] -= dw0[j];
            tout_add(o, "dw", rel_l2(gdw, rdw, (size_t)H, &o->nan), TOL);
        }
    }
    free(x), free(w), free(dy), free(res), free(dw0), free(rstd), free(tmp);
    free(got), free(ref), free(gdw), free(rdw);
    return st;
}

static s2_status tc_rmsnorm_bwd(const tctx *c, darena *ar, tout *o, s2_error *err)
{
    return rmsnorm_bwd_case(c, ar, o, 0, err);
}

static s2_status tc_rmsnorm_bwd_resid(const tctx *c, darena *ar, tout *o, s2_error *err)
{
    return rmsnorm_bwd_case(c, ar, o, 1, err);
}

/* Positions of a packed batch of three sequences (varlen: each restarts), the last one
 * ending at 32767, so angles (p / 8) * inv_freq reach 4096 rad. */
static int32_t *tpositions(int T)
{
    int32_t *p = xmalloc((size_t)T * 4);
    const int a = T / 3, b = 2 * T / 3;
    for (int t = 0; t < T; t++)
        p[t] = t < a ? t : t < b ? t - a : 32767 - (T - 1 - t);
    return p;
}

/* Forward out of place, or the backward in place (dst = src). */
static s2_status rope_case(const tctx *c, darena *ar, tout *o, int dir, s2_error *err)
{
    const int T = c->M, H = c->ts->heads, d = c->k->head_dim, W = H * d, lds = W + c->pad;
    const int in_place = dir < 0, ldd = in_place ? lds : W + 2 * c->pad;
    const size_t n = (size_t)T * W;
    float *x = trand(c, n, 1.f), *got = xmalloc(n * 4), *ref = xmalloc(n * 4);
    int32_t *pos = tpositions(T), *dpos;
    void *dsrc, *ddst;
    s2_status st = dints(ar, pos, T, &dpos, err);
    if (!st)
        st = dmat(ar, c, x, T, W, lds, &dsrc, err);
    ddst = dsrc;
    if (!st && !in_place)
        st = dmat(ar, c, NULL, T, W, ldd, &ddst, err);
    if (!st)
        st = s2_k_rope(c->k, T, H, dpos, dir, dsrc, lds, ddst, ldd, 0, err);
    if (!st)
        st = dsync(err);
    if (!st)
        st = dmat_get(c, ddst, T, W, ldd, got, &o->stray, err);
    if (!st) {
        s2_ref_rope r = {.d = d, .theta = c->k->rope_theta, .factor = c->k->rope_factor,
                         .fp32_angles = 1};
        if (dir > 0)
            s2_ref_rope_forward(&r, T, H, pos, x, ref);
        else
            s2_ref_rope_backward(&r, T, H, pos, x, ref);
        tout_add(o, dir > 0 ? "y" : "dx", rel_l2(got, ref, n, &o->nan), TOL);
    }
    free(x), free(got), free(ref), free(pos);
    return st;
}

static s2_status tc_rope_fwd(const tctx *c, darena *ar, tout *o, s2_error *err)
{
    return rope_case(c, ar, o, 1, err);
}

static s2_status tc_rope_bwd(const tctx *c, darena *ar, tout *o, s2_error *err)
{
    return rope_case(c, ar, o, -1, err);
}

/* gu [M, 2 inter] as the host holds it, with g and u apart for the twins. */
static float *tgu(const tctx *c, float **g, float **u)
{
    const int M = c->M, I = c->k->inter;
    float *gu = trand(c, (size_t)M * 2 * I, 2.f);
    *g = xmalloc((size_t)M * I * 4), *u = xmalloc((size_t)M * I * 4);
    for (int m = 0; m < M; m++) {
        memcpy(*g + (size_t)m * I, gu + (size_t)m * 2 * I, (size_t)I * 4);
        memcpy(*u + (size_t)m * I, gu + (size_t)m * 2 * I + I, (size_t)I * 4);
    }
    return gu;
}

static s2_status tc_swiglu_fwd(const tctx *c, darena *ar, tout *o, s2_error *err)
{
    const int M = c->M, I = c->k->inter, ldgu = 2 * I + c->pad, ldh = I + 2 * c->pad;
    const size_t n = (size_t)M * I;
    float *g, *u, *gu = tgu(c, &g, &u), *got = xmalloc(n * 4), *ref = xmalloc(n * 4);
    void *dgu, *dh;
    s2_status st = dmat(ar, c, gu, M, 2 * I, ldgu, &dgu, err);
    if (!st)
        st = dmat(ar, c, NULL, M, I, ldh, &dh, err);
    if (!st)
        st = s2_k_swiglu_fwd(c->k, M, dgu, ldgu, dh, ldh, 0, err);
    if (!st)
        st = dsync(err);
    if (!st)
        st = dmat_get(c, dh, M, I, ldh, got, &o->stray, err);
    if (!st) {
        s2_ref_swiglu_forward(n, g, u, ref);
        tout_add(o, "h", rel_l2(got, ref, n, &o->nan), TOL);
    }
    free(gu), free(g), free(u), free(got), free(ref);
    return st;
}

/* Out of place with the aligned shape; in place (dgu = gu) with the odd one. */
static s2_status tc_swiglu_bwd(const tctx *c, darena *ar, tout *o, s2_error *err)
{
    const int M = c->M, I = c->k->inter, ldgu = 2 * I + c->pad, lddh = I + 2 * c->pad;
    const int in_place = c->off != 0, lddgu = in_place ? ldgu : 2 * I + 3 * c->pad;
    const size_t n = (size_t)M * I;
    float *g, *u, *gu = tgu(c, &g, &u), *dh = trand(c, n, 1.f);
    float *got = xmalloc(2 * n * 4), *rdg = xmalloc(n * 4), *rdu = xmalloc(n * 4);
    float *gdg = xmalloc(n * 4), *gdu = xmalloc(n * 4);
    void *dgu, *ddh, *ddgu;
    s2_status st = dmat(ar, c, gu, M, 2 * I, ldgu, &dgu, err);
    if (!st)
        st = dmat(ar, c, dh, M, I, lddh, &ddh, err);
    ddgu = dgu;
    if (!st && !in_place)
        st = dmat(ar, c, NULL, M, 2 * I, lddgu, &ddgu, err);
    if (!st)
        st = s2_k_swiglu_bwd(c->k, M, dgu, ldgu, ddh, lddh, ddgu, lddgu, 0, err);
    if (!st)
        st = dsync(err);
    if (!st)
        st = dmat_get(c, ddgu, M, 2 * I, lddgu, got, &o->stray, err);
    if (!st) {
        s2_ref_swiglu_backward(n, g, u, dh, rdg, rdu);
        for (int m = 0; m < M; m++) {
            memcpy(gdg + (size_t)m * I, got + (size_t)m * 2 * I, (size_t)I * 4);
            memcpy(gdu + (size_t)m * I, got + (size_t)m * 2 * I + I, (size_t)I * 4);
        }
        tout_add(o, "dg", rel_l2(gdg, rdg, n, &o->nan), TOL);
        tout_add(o, "du", rel_l2(gdu, rdu, n, &o->nan), TOL);
    }
    free(gu), free(g), free(u), free(dh), free(got), free(rdg), free(rdu), free(gdg), free(gdu);
    return st;
}

/* y = a + b into a third buffer, then in place into b. */
static s2_status tc_add(const tctx *c, darena *ar, tout *o, s2_error *err)
{
    const int M = c->M, H = c->k->hidden, lda = H + c->pad, ldb = H + 2 * c->pad;
    const int ldy = H + 3 * c->pad;
    const size_t n = (size_t)M * H;
    float *a = trand(c, n, 1.f), *b = trand(c, n, 1.f), *ref = xmalloc(n * 4);
    float *got = xmalloc(n * 4), *got2 = xmalloc(n * 4);
    void *da, *db, *dy;
    s2_status st = dmat(ar, c, a, M, H, lda, &da, err);
    if (!st)
        st = dmat(ar, c, b, M, H, ldb, &db, err);
    if (!st)
        st = dmat(ar, c, NULL, M, H, ldy, &dy, err);
    if (!st)
        st = s2_k_add(c->k, M, H, da, lda, db, ldb, dy, ldy, 0, err);
    if (!st)
        st = s2_k_add(c->k, M, H, da, lda, db, ldb, db, ldb, 0, err);
    if (!st)
        st = dsync(err);
    if (!st)
        st = dmat_get(c, dy, M, H, ldy, got, &o->stray, err);
    if (!st)
        st = dmat_get(c, db, M, H, ldb, got2, &o->stray, err);
    if (!st) {
        for (size_t i = 0; i < n; i++)
            ref[i] = a[i] + b[i];
        tout_add(o, "y", rel_l2(got, ref, n, &o->nan), TOL);
        tout_add(o, "y=b", rel_l2(got2, ref, n, &o->nan), TOL);
    }
    free(a), free(b), free(ref), free(got), free(got2);
    return st;
}

/* The loss alone (grad 0: the logits must stay as they were), then loss and dlogits in place;
 * every fifth row is ignored. */
static s2_status tc_xent(const tctx *c, darena *ar, tout *o, s2_error *err)
{
    const int M = c->M, V = c->k->vocab, ldl = V + c->pad;
    const size_t n = (size_t)M * V;
    float *z = trand(c, n, 3.f), *got = xmalloc(n * 4), *ref = xmalloc(n * 4);
    int32_t *lab = ttokens(M, V), *dlab;
    int count = 0;
    for (int m = 0; m < M; m++) {
        if (m % 5 == 1)
            lab[m] = S2_REF_IGNORE_INDEX;
        count += lab[m] != S2_REF_IGNORE_INDEX;
    }
    void *dz, *dacc;
    double acc[2][2];
    s2_k_ws ws;
    s2_status st = dints(ar, lab, M, &dlab, err);
    if (!st)
        st = dmat(ar, c, z, M, V, ldl, &dz, err);
    if (!st)
        st = dnew(ar, 4 * sizeof(double), &dacc, err);
    if (!st)
        st = s2_rt_check(cudaMemset(dacc, 0, 4 * sizeof(double)), "zeroing acc", err);
    if (!st)
        st = tws(ar, c, M, &ws, err);
    if (!st)
        st = s2_k_xent(c->k, M, dz, ldl, dlab, 1.f / count, 0, (double *)dacc, &ws, 0, err);
    if (!st)
        st = dsync(err);
    if (!st)
        st = dmat_get(c, dz, M, V, ldl, got, &o->stray, err);
    int changed = 0;
    for (size_t i = 0; !st && i < n; i++)
        changed += memcmp(&got[i], &z[i], 4) != 0;
    if (!st)
        st = s2_k_xent(c->k, M, dz, ldl, dlab, 1.f / count, 1, (double *)dacc + 2, &ws, 0, err);
    if (!st)
        st = dsync(err);
    if (!st)
        st = s2_rt_check(cudaMemcpy(acc, dacc, sizeof acc, cudaMemcpyDeviceToHost), "copy acc",
                         err);
    if (!st)
        st = dmat_get(c, dz, M, V, ldl, got, &o->stray, err);
    if (!st) {
        s2_ref_xent_sum sum;
        s2_ref_cross_entropy(M, V, z, lab, (double)count, ref, &sum);
        double e = 0;
        for (int r = 0; r < 2; r++) {
            e = fmax(e, fabs(acc[r][0] - sum.nll_sum) / fabs(sum.nll_sum));
            if (acc[r][1] != (double)sum.count || isnan(acc[r][0]))
                e = 1; /* a wrong count fails the case */
        }
        tout_add(o, "nll+count", e, TOL_LOSS);
        tout_add(o, "dlogits", rel_l2(got, ref, n, &o->nan), TOL);
        tout_add(o, "kept", (double)changed / n, TOL); /* grad 0 changed logits */
    }
    free(z), free(got), free(ref), free(lab);
    return st;
}

/* Two AdamW steps (t = 1, 2) with weight decay and a clipping scale, fresh gradients each. */
static s2_status tc_adamw(const tctx *c, darena *ar, tout *o, s2_error *err)
{
    const size_t n = (size_t)c->M * c->k->hidden + 3; /* a tail that is not a whole quad */
    const float lr = 1e-3f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.01f, gs = 0.5f;
    float *p = xmalloc(n * 4), *g = xmalloc(n * 4), *m = tzeros(n), *v = tzeros(n);
    float *gp = xmalloc(n * 4), *gm = xmalloc(n * 4), *gv = xmalloc(n * 4);
    for (size_t i = 0; i < n; i++)
        p[i] = rng_normal();
    float *dp, *dg, *dm, *dv;
    s2_status st = dvec(ar, c, p, n, &dp, err);
    if (!st)
        st = dvec(ar, c, NULL, n, &dg, err);
    if (!st)
        st = dvec(ar, c, m, n, &dm, err);
    if (!st)
        st = dvec(ar, c, v, n, &dv, err);
    s2_ref_adamw ro = {.lr = lr, .beta1 = b1, .beta2 = b2, .eps = eps, .weight_decay = wd};
    for (int t = 1; !st && t <= 2; t++) {
        for (size_t i = 0; i < n; i++)
            g[i] = 1e-2f * rng_normal();
        st = s2_rt_check(cudaMemcpy(dg, g, n * 4, cudaMemcpyHostToDevice), "copy g", err);
        if (!st)
            st = s2_k_adamw(c->k, n, dp, dg, dm, dv, lr, b1, b2, eps, wd, t, gs, 0, err);
        for (size_t i = 0; i < n; i++)
            g[i] *= gs; /* the twin takes the scaled gradient (torch's clip: an fp32 multiply) */
        s2_ref_adamw_step(&ro, t, n, p, g, m, v);
    }
    if (!st)
        st = dsync(err);
    if (!st)
        st = dvec_get(gp, dp, n, err);
    if (!st)
        st = dvec_get(gm, dm, n, err);
    if (!st)
        st = dvec_get(gv, dv, n, err);
    if (!st) {
        tout_add(o, "p", rel_l2(gp, p, n, &o->nan), TOL_TIGHT);
        tout_add(o, "m", rel_l2(gm, m, n, &o->nan), TOL_TIGHT);
        tout_add(o, "v", rel_l2(gv, v, n, &o->nan), TOL_TIGHT);
    }
    free(p), free(g), free(m), free(v), free(gp), free(gm), free(gv);
    return st;
}

/* acc += sum g^2, twice onto the same accumulator. */
static s2_status tc_sumsq(const tctx *c, darena *ar, tout *o, s2_error *err)
{
    const size_t n = (size_t)c->M * c->k->hidden + 5;
    float *g = xmalloc(n * 4), *dg;
    double ref = 0, acc = NAN;
    for (size_t i = 0; i < n; i++) {
        g[i] = rng_normal();
        ref += 2.0 * g[i] * g[i];
    }
    void *dacc;
    s2_k_ws ws;
    s2_status st = dvec(ar, c, g, n, &dg, err);
    if (!st)
        st = dnew(ar, sizeof(double), &dacc, err);
    if (!st)
        st = s2_rt_check(cudaMemset(dacc, 0, sizeof(double)), "zeroing acc", err);
    if (!st)
        st = tws(ar, c, 0, &ws, err);
    for (int r = 0; !st && r < 2; r++)
        st = s2_k_sumsq(c->k, n, dg, dacc, &ws, 0, err);
    if (!st)
        st = dsync(err);
    if (!st)
        st = s2_rt_check(cudaMemcpy(&acc, dacc, sizeof acc, cudaMemcpyDeviceToHost), "copy acc",
                         err);
    if (!st) {
        o->nan += isnan(acc);
        tout_add(o, "sumsq", fabs(acc - ref) / ref, TOL_TIGHT);
    }
    free(g);
    return st;
}

/* fp32 -> dtype (round to nearest even, as the host's s2_f32_to_half), dtype -> fp32, and the
 * fp32 scale: all exact. */
static s2_status tc_casts(const tctx *c, darena *ar, tout *o, s2_error *err)
{
    const int M = c->M, H = c->k->hidden, ld = H + c->pad;
    const size_t n = (size_t)M * H;
    float *f = xmalloc(n * 4), *ref = xmalloc(n * 4), *got = xmalloc(n * 4);
    float *h = trand(c, n, 1.f), *got2 = xmalloc(n * 4), *got3 = xmalloc(n * 4);
    uint16_t *tmp = xmalloc(n * 2);
    for (size_t i = 0; i < n; i++)
        f[i] = rng_normal();
    s2_f32_to_half(c->dt, f, tmp, n);
    s2_half_to_f32(c->dt, tmp, ref, n);
    float *df, *df2, *dsc;
    void *dh, *dh2;
    s2_status st = dvec(ar, c, f, n, &df, err);
    if (!st)
        st = dmat(ar, c, NULL, M, H, ld, &dh, err);
    if (!st)
        st = dmat(ar, c, h, M, H, ld, &dh2, err);
    if (!st)
        st = dvec(ar, c, NULL, n, &df2, err);
    if (!st)
        st = dvec(ar, c, f, n, &dsc, err);
    if (!st)
        st = s2_k_cast_f32(c->k, M, H, df, dh, ld, 0, err);
    if (!st)
        st = s2_k_cast_elem(c->k, M, H, dh2, ld, df2, 0, err);
    if (!st)
        st = s2_k_scale_f32(c->k, n, dsc, 0.37f, 0, err);
    if (!st)
        st = dsync(err);
    if (!st)
        st = dmat_get(c, dh, M, H, ld, got, &o->stray, err);
    if (!st)
        st = dvec_get(got2, df2, n, err);
    if (!st)
        st = dvec_get(got3, dsc, n, err);
    if (!st) {
        tout_add(o, "to dt", rel_l2(got, ref, n, &o->nan), 1e-7);
        tout_add(o, "to f32", rel_l2(got2, h, n, &o->nan), 1e-7);
        for (size_t i = 0; i < n; i++)
            f[i] *= 0.37f;
        tout_add(o, "scale", rel_l2(got3, f, n, &o->nan), 1e-7);
    }
    free(f), free(ref), free(got), free(h), free(got2), free(got3), free(tmp);
    return st;
}

/* ---- determinism: each kernel that sums across blocks, run DET_RUNS times on the same
 * inputs (restored before each run), must give the same bits every time (train_kern.h). A
 * case reports "diff": the elements (of any output) that differ from the first run's; it
 * passes only at 0. The inputs make blocks meet: repeated tokens (some over several items),
 * many rows into one weight gradient, many blocks into one loss and one sum of squares. */
#define DET_RUNS 4

static s2_status tc_det_embed_bwd(const tctx *c, darena *ar, tout *o, s2_error *err)
{
    const int M = c->M, H = c->k->hidden, V = c->k->vocab, ld = H + c->pad;
    const size_t nt = (size_t)V * H;
    float *dout = trand(c, (size_t)M * H, 1.f), *t0 = trand(c, nt, 1.f);
    float *first = xmalloc(nt * 4), *got = xmalloc(nt * 4);
    int32_t *tok = NULL, *dlist = NULL;
    s2_embed_list l = {0};
    s2_k_ws ws;
    void *ddout;
    float *dtab;
    double diff = 0;
    s2_status st = tembed_tokens(ar, c, &tok, &l, &dlist, err);
    if (!st)
        st = dmat(ar, c, dout, M, H, ld, &ddout, err);
    if (!st)
        st = dvec(ar, c, t0, nt, &dtab, err);
    if (!st)
        st = tws(ar, c, M, &ws, err);
    for (int r = 0; !st && r < DET_RUNS; r++) {
        st = s2_rt_check(cudaMemcpy(dtab, t0, nt * 4, cudaMemcpyHostToDevice), "restore", err);
        if (!st)
            st = s2_k_embed_bwd(c->k, &l, dlist, ddout, ld, dtab, &ws, 0, err);
        if (!st)
            st = dsync(err);
        if (!st)
            st = dvec_get(r ? got : first, dtab, nt, err);
        if (!st && r)
            diff += ndiff(got, first, nt, 4);
    }
    if (!st)
        tout_add(o, "diff", diff, 1);
    free(dout), free(t0), free(first), free(got), free(tok);
    s2_embed_list_free(&l);
    return st;
}

/* dx and dw (onto a random start), the weight gradient's partials from every block */
static s2_status tc_det_rmsnorm_bwd(const tctx *c, darena *ar, tout *o, s2_error *err)
{
    const int M = c->M, H = c->k->hidden, ldx = H + c->pad;
    const size_t n = (size_t)M * H, nx = (size_t)M * ldx;
    float *x = trand(c, n, 2.f), *w = tweight(c, H), *dy = trand(c, n, 1.f);
    float *dw0 = trand(c, (size_t)H, 1.f), *rstd = xmalloc((size_t)M * 4), *tmp = xmalloc(n * 4);
    float *fdw = xmalloc((size_t)H * 4), *gdw = xmalloc((size_t)H * 4);
    uint16_t *fdx = xmalloc(nx * 2), *gdx = xmalloc(nx * 2);
    s2_ref_rmsnorm_forward(M, H, c->k->eps, x, w, tmp, rstd);
    void *dx_, *dw_, *ddy, *ddx;
    float *drstd, *ddw;
    s2_k_ws ws;
    double diff = 0;
    s2_status st = dmat(ar, c, x, M, H, ldx, &dx_, err);
    if (!st)
        st = dmat(ar, c, w, 1, H, H, &dw_, err);
    if (!st)
        st = dmat(ar, c, dy, M, H, ldx, &ddy, err);
    if (!st)
        st = dvec(ar, c, rstd, (size_t)M, &drstd, err);
    if (!st)
        st = dmat(ar, c, NULL, M, H, ldx, &ddx, err);
    if (!st)
        st = dvec(ar, c, dw0, (size_t)H, &ddw, err);
    if (!st)
        st = tws(ar, c, M, &ws, err);
    for (int r = 0; !st && r < DET_RUNS; r++) {
        st = s2_rt_check(cudaMemcpy(ddw, dw0, (size_t)H * 4, cudaMemcpyHostToDevice), "restore",
                         err);
        if (!st)
            st = s2_k_rmsnorm_bwd(c->k, M, dx_, ldx, dw_, ddy, ldx, drstd, NULL, 0, ddx, ldx, ddw,
                                  &ws, 0, err);
        if (!st)
            st = dsync(err);
        if (!st)
            st = dvec_get(r ? gdw : fdw, ddw, (size_t)H, err);
        if (!st)
            st = s2_rt_check(cudaMemcpy(r ? gdx : fdx, ddx, nx * 2, cudaMemcpyDeviceToHost),
                             "copy back", err);
        if (!st && r)
            diff += ndiff(gdw, fdw, (size_t)H, 4) + ndiff(gdx, fdx, nx, 2);
    }
    if (!st)
        tout_add(o, "diff", diff, 1);
    free(x), free(w), free(dy), free(dw0), free(rstd), free(tmp);
    free(fdw), free(gdw), free(fdx), free(gdx);
    return st;
}

/* the loss sum and count (fp64, from every block) and dlogits */
static s2_status tc_det_xent(const tctx *c, darena *ar, tout *o, s2_error *err)
{
    const int M = c->M, V = c->k->vocab, ldl = V + c->pad;
    const size_t n = (size_t)M * ldl;
    float *z = trand(c, (size_t)M * V, 3.f);
    int32_t *lab = ttokens(M, V), *dlab;
    for (int m = 0; m < M; m++)
        if (m % 5 == 1)
            lab[m] = S2_REF_IGNORE_INDEX;
    uint16_t *z16 = xmalloc(n * 2), *fz = xmalloc(n * 2), *gz = xmalloc(n * 2);
    void *dz, *dacc;
    double facc[2], gacc[2], diff = 0;
    s2_k_ws ws;
    s2_status st = dints(ar, lab, M, &dlab, err);
    if (!st)
        st = dmat(ar, c, z, M, V, ldl, &dz, err);
    if (!st) /* the logits as uploaded, to restore them (the gradient overwrites them) */
        st = s2_rt_check(cudaMemcpy(z16, dz, n * 2, cudaMemcpyDeviceToHost), "copy", err);
    if (!st)
        st = dnew(ar, 2 * sizeof(double), &dacc, err);
    if (!st)
        st = tws(ar, c, M, &ws, err);
    for (int r = 0; !st && r < DET_RUNS; r++) {
        st = s2_rt_check(cudaMemcpy(dz, z16, n * 2, cudaMemcpyHostToDevice), "restore", err);
        if (!st)
            st = s2_rt_check(cudaMemset(dacc, 0, 2 * sizeof(double)), "zeroing acc", err);
        if (!st)
            st = s2_k_xent(c->k, M, dz, ldl, dlab, 1.f / M, 1, (double *)dacc, &ws, 0, err);
        if (!st)
            st = dsync(err);
        if (!st)
            st = s2_rt_check(cudaMemcpy(r ? gacc : facc, dacc, sizeof facc,
                                        cudaMemcpyDeviceToHost), "copy acc", err);
        if (!st)
            st = s2_rt_check(cudaMemcpy(r ? gz : fz, dz, n * 2, cudaMemcpyDeviceToHost),
                             "copy back", err);
        if (!st && r)
            diff += ndiff(gacc, facc, 2, 8) + ndiff(gz, fz, n, 2);
    }
    if (!st) {
        o->nan += isnan(facc[0]);
        tout_add(o, "diff", diff, 1);
    }
    free(z), free(lab), free(z16), free(fz), free(gz);
    return st;
}

/* the sum of squares over 8 rows of work per row of the shape (many blocks) */
static s2_status tc_det_sumsq(const tctx *c, darena *ar, tout *o, s2_error *err)
{
    const size_t n = 8 * (size_t)c->M * c->k->hidden + 3;
    float *g = xmalloc(n * 4), *dg;
    for (size_t i = 0; i < n; i++)
        g[i] = rng_normal();
    void *dacc;
    double first = 0, got = 0, diff = 0;
    s2_k_ws ws;
    s2_status st = dvec(ar, c, g, n, &dg, err);
    if (!st)
        st = dnew(ar, sizeof(double), &dacc, err);
    if (!st)
        st = tws(ar, c, 0, &ws, err);
    for (int r = 0; !st && r < DET_RUNS; r++) {
        st = s2_rt_check(cudaMemset(dacc, 0, sizeof(double)), "zeroing acc", err);
        if (!st)
            st = s2_k_sumsq(c->k, n, dg, dacc, &ws, 0, err);
        if (!st)
            st = dsync(err);
        if (!st)
            st = s2_rt_check(cudaMemcpy(r ? &got : &first, dacc, sizeof(double),
                                        cudaMemcpyDeviceToHost), "copy acc", err);
        if (!st && r)
            diff += ndiff(&got, &first, 1, 8);
    }
    if (!st) {
        o->nan += isnan(first);
        tout_add(o, "diff", diff, 1);
    }
    free(g);
    return st;
}

static const struct {
    const char *what;
    tcase_fn fn;
} tcases[] = {
    {"embed fwd", tc_embed_fwd},
    {"embed bwd", tc_embed_bwd},
    {"rmsnorm fwd", tc_rmsnorm_fwd},
    {"rmsnorm bwd", tc_rmsnorm_bwd},
    {"rmsnorm bwd +resid", tc_rmsnorm_bwd_resid},
    {"rope fwd", tc_rope_fwd},
    {"rope bwd in place", tc_rope_bwd},
    {"swiglu fwd", tc_swiglu_fwd},
    {"swiglu bwd", tc_swiglu_bwd},
    {"add", tc_add},
    {"xent", tc_xent},
    {"adamw 2 steps", tc_adamw},
    {"sumsq", tc_sumsq},
    {"casts", tc_casts},
    {"det embed bwd", tc_det_embed_bwd},
    {"det rmsnorm bwd", tc_det_rmsnorm_bwd},
    {"det xent", tc_det_xent},
    {"det sumsq", tc_det_sumsq},
};
#define N_TCASES ((int)(sizeof tcases / sizeof tcases[0]))

/* Every train case (those whose full name "train CASE SPEC DTYPE SHAPE" holds `only`, when
 * given) against the twins; returns the failures. */
static int check_train(const s2_rt *rt, const char *only)
{
    int failed = 0, n_run = 0;
    s2_error err = {0};
    printf("%-20s %-4s %-4s %-14s %s\n", "train case", "spec", "dt", "shape",
           "errors (output rel-err / tolerance)");
    for (int si = 0; si < N_TSPECS; si++) {
        const tspec *ts = &tspecs[si];
        int any = 0;
        char full[160];
        for (int ci = 0; ci < N_TCASES && !any; ci++)
            for (int hi = 0; hi < N_TSHAPES && !any; hi++) {
                snprintf(full, sizeof full, "train %s %s %s %s", tcases[ci].what, ts->what,
                         ts->dtype, tshapes[hi].what);
                any = !only || strstr(full, only);
            }
        if (!any)
            continue;
        s2_spec spec;
        s2_train_kern k;
        s2_jit_opts jo = {.arch = rt->arch, .threads = 1};
        if (tspec_load(ts, &spec, &err) || s2_train_kern_load(&k, rt, &spec, &jo, &err)) {
            printf("train %s %s: ERROR %s\n", ts->what, ts->dtype, err.msg);
            s2_error_clear(&err);
            failed++;
            continue;
        }
        for (int ci = 0; ci < N_TCASES; ci++)
            for (int hi = 0; hi < N_TSHAPES; hi++) {
                snprintf(full, sizeof full, "train %s %s %s %s", tcases[ci].what, ts->what,
                         ts->dtype, tshapes[hi].what);
                if (only && !strstr(full, only))
                    continue;
                tctx c = {.k = &k, .ts = ts,
                          .dt = spec.dtype == S2_DTYPE_BF16 ? S2_ST_BF16 : S2_ST_F16,
                          .M = tshapes[hi].M, .pad = tshapes[hi].pad, .off = tshapes[hi].off};
                tout o = {0};
                darena ar = {0};
                n_run++;
                s2_status st = tcases[ci].fn(&c, &ar, &o, &err);
                darena_free(&ar);
                printf("%-20s %-4s %-4s %-14s", tcases[ci].what, ts->what, ts->dtype,
                       tshapes[hi].what);
                if (st) {
                    printf(" ERROR %s\n", err.msg);
                    s2_error_clear(&err);
                    failed++;
                    continue;
                }
                int ok = !o.nan && !o.stray;
                for (int i = 0; i < o.n; i++) {
                    printf(" %s %8.2e/%.0e", o.name[i], o.e[i], o.tol[i]);
                    ok = ok && o.e[i] < o.tol[i]; /* NaN errors fail too */
                }
                printf(" %s", ok ? "PASS" : "FAIL");
                if (o.nan)
                    printf(" (%d NaN: unwritten outputs)", o.nan);
                if (o.stray)
                    printf(" (%d pad elements written)", o.stray);
                printf("\n");
                failed += !ok;
            }
        s2_train_kern_free(&k);
    }
    printf("gpu_check: %d of %d train case runs passed\n", n_run - failed, n_run);
    return failed;
}

#define N_TRAIN_KERNELS 16 /* train_kern.c's kernel table */

/* Builds the train unit of every train spec for arch: every kernel present, no spill, no
 * stack; returns the failures, each reported on stderr. */
static int prebuild_train(const char *arch)
{
    int failed = 0;
    for (int si = 0; si < N_TSPECS; si++) {
        s2_spec spec;
        s2_jit_opts jo = {.arch = arch, .threads = 1};
        s2_jit_result res = {0};
        s2_error err = {0};
        s2_status st = tspec_load(&tspecs[si], &spec, &err);
        if (!st)
            st = s2_train_kern_build(&spec, &jo, &res, &err);
        if (!st && res.n_res != N_TRAIN_KERNELS)
            st = s2_error_set(&err, S2_ERR_CHECK, "%d kernels in the unit; %d expected",
                              res.n_res, N_TRAIN_KERNELS);
        for (int i = 0; !st && i < res.n_res; i++) {
            const s2_kernel_res *r = &res.res[i];
            if (r->spill_stores + r->spill_loads + r->stack)
                st = s2_error_set(&err, S2_ERR_CHECK, "%s: %d bytes spilled, %d-byte stack frame",
                                  r->name, r->spill_stores + r->spill_loads, r->stack);
        }
        if (st) {
            fprintf(stderr, "gpu_check: building the train unit of %s %s for %s: %s\n",
                    tspecs[si].what, tspecs[si].dtype, arch, err.msg);
            failed++;
        }
        s2_error_clear(&err);
        s2_jit_result_free(&res);
    }
    printf("gpu_check: built the train unit of %d specs for %s, %d failed\n", N_TSPECS, arch,
           failed);
    return failed;
}


/* Builds every (case, tile) pair for arch on all cores, the window cases' window units too, of
 * the cases whose name holds only (NULL: all) and of tile tile_only (-1: every tile); returns
 * how many failed (a build error, a plan refusal or a spill), each reported on stderr. */
static int prebuild_all(const char *arch, const char *only, int tile_only)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    prebuild_pool pool = {.jo = {.arch = arch, .threads = 1}};
    pool.jobs = calloc((size_t)(N_CASES + N_WCASES) * N_TILES, sizeof *pool.jobs);
    if (!pool.jobs)
        return (N_CASES + N_WCASES) * N_TILES;
    int n_cases = 0;
    for (int i = 0; i < N_CASES + N_WCASES; i++) {
        const gcase *c = i < N_CASES ? &cases[i] : &wcases[i - N_CASES].c;
        if (only && !strstr(c->what, only))
            continue;
        n_cases++;
        for (int ti = 0; ti < N_TILES; ti++)
            if (tile_only < 0 || ti == tile_only)
                pool.jobs[pool.n++] =
                    (prebuild_job){.c = c, .tile_idx = ti, .window = i >= N_CASES};
    }
    s2_error perr = {0};
    if (s2_pool_for(pool.n, 0, prebuild, &pool, &perr)) {
        fprintf(stderr, "gpu_check: building for %s: %s\n", arch, perr.msg);
        s2_error_clear(&perr);
        free(pool.jobs);
        return pool.n;
    }
    int failed = 0;
    for (int i = 0; i < pool.n; i++) {
        if (pool.jobs[i].st) {
            fprintf(stderr, "gpu_check: building '%s' tile %d for %s: %s\n", pool.jobs[i].c->what,
                    pool.jobs[i].tile_idx, arch, pool.jobs[i].err.msg);
            failed++;
        }
        s2_error_clear(&pool.jobs[i].err);
    }
    free(pool.jobs);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    char tiles[32];
    if (tile_only < 0)
        snprintf(tiles, sizeof tiles, "%d tiles", N_TILES);
    else
        snprintf(tiles, sizeof tiles, "tile %d", tile_only);
    printf("gpu_check: built %d cases x %s for %s in %.1f s, %d failed\n", n_cases, tiles, arch,
           (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9, failed);
    return failed;
}

int main(int argc, char **argv)
{
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    const char *only = NULL, *build_only = NULL, *family = NULL;
    int tile_only = -1; /* --tile N: the attention cases of tile N only (-1: every tile) */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            seed = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else if (!strcmp(argv[i], "--family") && i + 1 < argc &&
                 (!strcmp(argv[i + 1], "attn") || !strcmp(argv[i + 1], "lora") ||
                  !strcmp(argv[i + 1], "train")))
            family = argv[++i];
        else if (!strcmp(argv[i], "--build-only") && i + 1 < argc)
            build_only = argv[++i];
        else if (!strcmp(argv[i], "--tile") && i + 1 < argc) {
            char *end;
            long t = strtol(argv[++i], &end, 10);
            if (*end || end == argv[i] || t < 0 || t >= N_TILES) {
                fprintf(stderr, "gpu_check: --tile %s: valid 0 to %d\n", argv[i], N_TILES - 1);
                return 2;
            }
            tile_only = (int)t;
        } else {
            fprintf(stderr, "usage: s2lora_gpu_check [--seed N] [--only SUBSTRING] "
                            "[--family attn|lora|train] [--tile N] [--build-only ARCH]\n"
                            "  --family F         run one family of cases only: attention (every\n"
                            "                     tile), the LoRA linears or the trainer kernels\n"
                            "  --tile N           run the attention cases of tile N (0-%d) only\n"
                            "  --build-only ARCH  plan and NVRTC-build every case and tile (the\n"
                            "                     window cases' window units too, and the train\n"
                            "                     unit of every train spec) for ARCH, check for\n"
                            "                     spills, run nothing (needs no GPU); with\n"
                            "                     --only, the cases it picks, with --tile N that\n"
                            "                     tile's, with --family attn or train that\n"
                            "                     family's\n",
                    N_TILES - 1);
            return 2;
        }
    }
    const int fam_attn = !family || !strcmp(family, "attn");
    const int fam_lora = !family || !strcmp(family, "lora");
    const int fam_train = !family || !strcmp(family, "train");
    if (tile_only >= 0 && !fam_attn) {
        fprintf(stderr, "gpu_check: --tile %d with --family %s: a tile is an attention tile; valid "
                        "--family attn (or none)\n",
                tile_only, family);
        return 2;
    }
    /* Every (case, tile) pair must plan and build without spills before the device sees it. */
    if (build_only) {
        if (!s2_jit_arch_valid(build_only)) {
            fprintf(stderr, "gpu_check: --build-only %s: valid sm_80, sm_86, sm_89, sm_90, sm_90a\n",
                    build_only);
            return 2;
        }
        if (!fam_attn && !fam_train) {
            fprintf(stderr, "gpu_check: --build-only with --family lora: it builds the attention "
                            "and train units; valid --family attn or train\n");
            return 2;
        }
        int bad = 0;
        if (fam_attn)
            bad += prebuild_all(build_only, only, tile_only);
        if (fam_train && (!only || strstr(only, "train")))
            bad += prebuild_train(build_only);
        return bad ? 1 : 0;
    }
    rng_state = seed ? seed : 1;
    s2_error err = {0};
    s2_rt rt;
    if (s2_rt_open(&rt, 0, &err)) {
        fprintf(stderr, "gpu_check: %s\n", err.msg);
        return err.status == S2_ERR_NO_DEVICE ? 3 : 1;
    }
    printf("gpu_check: %s (%s, %d SMs), seed %llu, tolerance %.0e\n", rt.name, rt.arch,
           rt.sm_count, (unsigned long long)seed, TOL);
    s2_jit_opts jo = {.arch = rt.arch, .threads = 1};
    /* A failed build is reported here and again as that run's ERROR line below (the load
     * rebuilds and fails the same way); the other runs go on. */
    int failed = 0;
    /* (builds of cases that --only leaves out are skipped: they cost minutes of device time) */
    int any_attn = fam_attn && !only;
    for (int i = 0; i < N_CASES && fam_attn && !any_attn; i++)
        any_attn = strstr(cases[i].what, only) != NULL;
    for (int i = 0; i < N_WCASES && fam_attn && !any_attn; i++)
        any_attn = strstr(wcases[i].c.what, only) != NULL;
    if (any_attn)
        prebuild_all(rt.arch, only, tile_only);
    if (fam_train && (!only || strstr(only, "train")))
        prebuild_train(rt.arch);

    int n_run = 0;
    for (int ti = 0; ti < N_TILES && any_attn; ti++) {
        if (tile_only >= 0 && ti != tile_only)
            continue;
        printf("tile %d: %s (d=64: %s; d=96, 256: %s, %s)\n", ti,
               alt_tile(ti, 128, rt.arch) ? alt_tile(ti, 128, rt.arch) : "plan default",
               alt_tile(ti, 64, rt.arch) ? alt_tile(ti, 64, rt.arch) : "plan default",
               alt_tile(ti, 96, rt.arch) ? alt_tile(ti, 96, rt.arch) : "plan default",
               alt_tile(ti, 256, rt.arch) ? alt_tile(ti, 256, rt.arch) : "plan default");
        printf("%-28s %-5s %-4s %4s %5s %4s %4s %6s %9s %9s %9s %9s %9s %s\n", "case", "mode",
               "dt", "d", "H/kv", "G", "S", "T", "o", "lse", "dq", "dk", "dv", "result");
        for (int i = 0; i < N_CASES; i++) {
            const gcase *c = &cases[i];
            if (only && !strstr(c->what, only))
                continue;
            case_result r;
            n_run++;
            if (run_case(&rt, c, ti, &jo, &r, &err)) {
                printf("%-28s ERROR %s\n", c->what, err.msg);
                s2_error_clear(&err);
                failed++;
                continue;
            }
            int ok = !r.nan && r.nondet <= 0;
            for (int e = 0; e < 5; e++)
                ok = ok && r.e[e] < TOL;
            char hk[16];
            snprintf(hk, sizeof hk, "%d/%d", c->H, c->Hkv);
            printf("%-28s %-5s %-4s %4d %5s %4d %4d %6d %9.2e %9.2e %9.2e %9.2e %9.2e %s", c->what,
                   c->mode, c->dtype, c->d, hk, c->G, c->S, r.T, r.e[0], r.e[1], r.e[2], r.e[3],
                   r.e[4], ok ? "PASS" : "FAIL");
            if (r.nan)
                printf(" (%d NaN: unwritten or invalid outputs)", r.nan);
            if (r.nondet > 0)
                printf(" (a second backward changed %ld elements of dq, dk, dv: this tile's "
                       "backward is meant to be deterministic)", r.nondet);
            printf("\n");
            failed += !ok;
        }
        failed += check_windows(&rt, ti, &jo, only, &n_run);
    }
    const int n_tiles = tile_only >= 0 ? 1 : N_TILES;
    if (any_attn)
        printf("gpu_check: %d of %d case runs passed (%d cases x %d tiles, windows included)\n",
               n_run - failed, n_run, n_run / n_tiles, n_tiles);
    if (fam_lora && (!only || strstr(only, "lora")))
        failed += check_lora(&rt);
    if (fam_train)
        failed += check_train(&rt, only);
    if (fam_train)
        failed += check_lora_det(&rt, only);
    return failed ? 1 : 0;
}

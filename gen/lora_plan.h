/*
 * lora_plan.h — the LoRA linears of one decoder layer as the spec defines them: which
 * projections carry adapters, their shapes (PEFT's: A [r, in], B [out, r], W [out, in]), the
 * scale alpha / r, and which projections read the same input, so their low-rank products can
 * share one pass over it (q, k and v read the layer's normed hidden state; gate and up read
 * the MLP's). Hugging Face LLaMA shapes: q_proj [H*d, hidden], k_proj and v_proj
 * [Hkv*d, hidden], o_proj [hidden, H*d], gate_proj and up_proj [intermediate, hidden],
 * down_proj [hidden, intermediate].
 */
#ifndef S2_LORA_PLAN_H
#define S2_LORA_PLAN_H

#include <stddef.h>

#include "spec.h"

typedef enum s2_proj {
    S2_PROJ_Q = 0, S2_PROJ_K, S2_PROJ_V, S2_PROJ_O, S2_PROJ_GATE, S2_PROJ_UP, S2_PROJ_DOWN,
    S2_PROJ_COUNT
} s2_proj;

typedef struct s2_lora_linear {
    int in, out;   /* W [out, in] */
    int adapted;   /* 1: the spec's lora.targets names it (A [r, in], B [out, r]) */
} s2_lora_linear;

/* Adapted projections that read one input: their A matrices stack into one [sum r, in]. */
typedef struct s2_lora_group {
    int n;
    s2_proj proj[3];
    int in;        /* the shared input width */
    int out_total; /* sum of the members' out */
    int r_total;   /* n * rank: the stacked low-rank width */
} s2_lora_group;

typedef struct s2_lora_plan {
    s2_dtype dtype;
    int rank;
    double alpha, scale; /* scale = alpha / rank, as PEFT applies it */
    double dropout;      /* on the adapter's input only, as PEFT applies it */
    s2_lora_linear lin[S2_PROJ_COUNT];
    int n_groups;
    s2_lora_group group[4]; /* in layer order: {q,k,v}, {o}, {gate,up}, {down}; empty ones left out */
} s2_lora_plan;

/*
 * The backward's one pass over dy (templates/lora.cuh, s2_lora_vdb): v = dy B and dB = dy^T u
 * on tensor cores, for ranks that are a multiple of 8 up to S2_LORA_VDB_MAX_RANK (larger ranks
 * hold too many accumulators per thread; they take two cuBLAS products instead). A block of
 * S2_LORA_VDB_WARPS warps takes S2_LORA_VDB_SLAB columns of one projection and a range of
 * rows, S2_LORA_VDB_BM rows per step through s2_lora_vdb_stages(r) shared-memory stages.
 * The grid is sized for two blocks per SM of a 132-SM GPU (H100, H200) in one wave.
 */
#define S2_LORA_VDB_MAX_RANK 32
#define S2_LORA_VDB_WARPS 8
#define S2_LORA_VDB_SLAB (S2_LORA_VDB_WARPS * 64)
#define S2_LORA_VDB_BM 32
#define S2_LORA_VDB_SMS 132

/* 1 when rank r takes the fused pass. */
int s2_lora_vdb_ok(int r);
/* Shared-memory stages for rank r: 3 (two loads in flight per block), except rank 16, whose
 * third stage would leave room for one block per SM where two fit with two stages (ranks 24
 * and 32 hold one block per SM by their registers either way). */
int s2_lora_vdb_stages(int r);
/* Dynamic shared memory of one block for rank r. */
size_t s2_lora_vdb_smem(int r);
/* Slabs of a projection of `out` columns. */
int s2_lora_vdb_slabs(int out);
/* Rows per block for M rows when the group has `slabs` slabs in all: at most two blocks per
 * SM of S2_LORA_VDB_SMS SMs in all, so the grid is one wave (a second wave of a few blocks
 * would cost a whole block's time), a multiple of S2_LORA_VDB_BM, at least 256 rows (so the
 * ranges' dB partials stay small next to dy). */
int s2_lora_vdb_rows(int M, int slabs);

/*
 * The stacked low-rank width of a group of r_total = n * rank columns, padded with zero columns
 * (and rows of A) to a multiple of 16, so the augmented rows of x, dy and W (in + rp, out + rp
 * elements) stay 32-byte aligned when in and out are: with rows only 16-byte aligned, cuBLAS's
 * K-extended GEMMs made the linear's overhead 15-18 % against 7-8 % (H100, 16k x 8192, ranks
 * 8, 24, 40, 56 against 16, 32, 48, 64; bench/RESULTS.md).
 */
int s2_lora_rp(int r_total);

/* "q_proj" ... "down_proj" (Hugging Face's module names, PEFT's target_modules). */
const char *s2_proj_name(s2_proj p);
/* "self_attn" or "mlp": the module that holds the projection in HF's LLaMA. */
const char *s2_proj_module(s2_proj p);

/* Fills plan from spec (already validated by the loader; nothing here fails on a loaded spec). */
void s2_plan_lora(const s2_spec *spec, s2_lora_plan *plan);

/*
 * The PEFT tensor name of an adapter matrix of layer `layer`: which = 'A' or 'B', e.g.
 * "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight". Returns buf, or NULL when
 * which is neither or buf is too small.
 */
const char *s2_lora_tensor_name(int layer, s2_proj p, char which, char *buf, size_t n);

#endif

/*
 * ref.h — CPU references (the oracles): plain C, fp32 storage, fp64
 * accumulation. Every GPU kernel has a twin here; tests check these against
 * naive implementations written straight from DESIGN §1 and against finite
 * differences, and the GPU check compares the device against them.
 *
 * Layouts (row-major, as a QKV projection writes them):
 *   q, o, dq, do   [T, H, d]      T = total tokens of the (packed) batch
 *   k, v, dk, dv   [T, Hkv, d]
 *   lse            [H, T]          natural-log log-sum-exp of the scaled scores
 * Sequences: cu_seqlens [B+1] int32, cu_seqlens[0] = 0, cu_seqlens[B] = T,
 * nondecreasing; NULL means one sequence of T tokens. Positions p are
 * positions inside one sequence (0 .. N-1, N its length).
 *
 * Masking (DESIGN §1): heads h < H/2 are plain, h >= H/2 shifted. Query p sees
 * key p' iff both are in the same group and p' comes no later than p in the
 * group's causal order:
 *   plain:          group floor(p / G),                 order p
 *   shifted split:  group floor((p + S) / G),           order p
 *   shifted roll:   group floor(((p - S) mod N) / G),   order (p - S) mod N
 * A row that sees no key cannot occur (every query sees itself).
 *
 * Functions are thread-safe and use up to s2_ref_threads threads of the pool
 * (runtime/core/pool.h); results do not depend on the thread count. Attention
 * with T = 0 (or a shape it cannot serve) reads and writes nothing; the LoRA
 * backward with M = 0 writes dA = dB = 0 (empty sums). If memory runs out, or
 * S2LORA_THREADS is invalid (with s2_ref_threads 0), the outputs are NaN.
 */
#ifndef S2_REF_H
#define S2_REF_H

#include <stddef.h>
#include <stdint.h>

#include "gen/spec.h"

typedef struct s2_ref_attn {
    int T;                      /* total tokens */
    int H, Hkv, d;              /* query heads, kv heads (H % Hkv == 0), head dim */
    int B;                      /* sequences; ignored when cu_seqlens is NULL */
    const int32_t *cu_seqlens;  /* [B+1] or NULL */
    int G, S;                   /* group size (>= 1), shift (0 <= S < G) */
    s2_shift_mode mode;
    float scale;                /* softmax scale, usually 1/sqrt(d) */
} s2_ref_attn;

/* Threads the references may use; 0 (default) means the pool's width (S2LORA_THREADS, else the
 * online CPUs). */
extern int s2_ref_threads;

/* The mask predicate, straight from DESIGN §1: 1 if query position p of head h may see key
 * position pk in a sequence of N tokens. */
int s2_ref_attn_visible(const s2_ref_attn *a, int h, int N, int p, int pk);

/* Forward: o [T,H,d], lse [H,T]. */
void s2_ref_attn_forward(const s2_ref_attn *a, const float *q, const float *k, const float *v,
                         float *o, float *lse);

/* Backward: dq [T,H,d], dk/dv [T,Hkv,d] (summed over the query heads that share a kv head).
 * o and lse are the forward's outputs. */
void s2_ref_attn_backward(const s2_ref_attn *a, const float *q, const float *k, const float *v,
                          const float *o, const float *lse, const float *dout, float *dq,
                          float *dk, float *dv);

/*
 * Attention of a window of one sequence, for sequence parallelism (gen/sp_plan.h): the queries
 * at positions [qlo, qhi) of a sequence of a->T tokens (cu_seqlens NULL), with key and value
 * rows given as blocks at their positions in the sequence — a rank's own rows and the rows it
 * received (several ranges, roll mode's wrapped tail included). Each block holds positions
 * [lo, hi) of kv heads [kv_lo, kv_hi): k, v (and, for the backward, dk, dv) are
 * [hi - lo, kv_hi - kv_lo, d]. No (position, kv head) may be in two blocks.
 *
 * The sums and their order are those of s2_ref_attn_forward / _backward (one implementation):
 * the window's O and LSE equal the whole sequence's rows [qlo, qhi), and its dq too; a block's
 * dk, dv hold the contributions of the window's queries only (zero for a row none of them
 * sees), so summing every rank's dk, dv of a row gives the whole sequence's.
 *
 * q, o, dout, dq are [qhi - qlo, H, d], lse [H, qhi - qlo]. S2_ERR_INVALID when the arguments do
 * not describe such a window, or when a query sees a key no block holds (the message names the
 * query, head and key); the outputs are then NaN.
 */
typedef struct s2_ref_kv_rows {
    int lo, hi;         /* positions [lo, hi) of the sequence */
    int kv_lo, kv_hi;   /* kv heads [kv_lo, kv_hi) */
    const float *k, *v; /* [hi - lo, kv_hi - kv_lo, d] */
    float *dk, *dv;     /* backward: written, the same shape */
} s2_ref_kv_rows;

s2_status s2_ref_attn_window_forward(const s2_ref_attn *a, int qlo, int qhi, const float *q,
                                     const s2_ref_kv_rows *kv, int n_kv, float *o, float *lse,
                                     s2_error *err);
s2_status s2_ref_attn_window_backward(const s2_ref_attn *a, int qlo, int qhi, const float *q,
                                      const s2_ref_kv_rows *kv, int n_kv, const float *o,
                                      const float *lse, const float *dout, float *dq,
                                      s2_error *err);

/* Naive dense attention: the full T x T score matrix per head with the mask above (O(N^2)).
 * Only for checking the references on small sizes. Same outputs as the forward. */
void s2_ref_attn_naive_forward(const s2_ref_attn *a, const float *q, const float *k,
                               const float *v, float *o, float *lse);

/*
 * LoRA linear (PEFT shapes): y = x W^T + s (drop(x) A^T) B^T, s = alpha / r.
 *   x [M, in], W [out, in], A [r, in], B [out, r], y [M, out]
 * Backward from dy [M, out]: dx [M, in], dA [r, in], dB [out, r]; W is frozen (no dW):
 *   dx = dy W + s ((dy B) A) ∘ mask / (1-p),  dA = s (dy B)^T drop(x),  dB = s dy^T (drop(x) A^T)
 * Dropout (PEFT's lora_dropout) acts on the adapter's input only, never on the frozen path:
 * drop(x) = x ∘ mask · s2_dropout_scale(p), where mask[m, k] = s2_dropout_keep(seed, stream,
 * m*in + k, p) (templates/philox.cuh): fixed by (seed, stream), so the backward regenerates the
 * forward's mask and the forward is a differentiable function of x, A and B. dropout = 0 (a
 * zero-initialised struct) is no dropout and gives exactly the results without these fields.
 * A dropout outside [0, 1) (or NaN) makes every output NaN.
 */
typedef struct s2_ref_lora {
    int M, in, out, r;
    float scale;     /* alpha / r */
    float dropout;   /* p in [0, 1); 0: none */
    uint64_t seed;   /* dropout key */
    uint32_t stream; /* dropout stream, e.g. layer*8 + projection */
} s2_ref_lora;

void s2_ref_lora_forward(const s2_ref_lora *l, const float *x, const float *W, const float *A,
                         const float *B, float *y);
void s2_ref_lora_backward(const s2_ref_lora *l, const float *x, const float *W, const float *A,
                          const float *B, const float *dy, float *dx, float *dA, float *dB);

/* Internal to the references (shared by ref_attn.c and ref_lora.c, not an API): runs
 * fn(ctx, item, scratch) for every item in [0, n) on up to s2_ref_threads workers of the pool,
 * the caller included. Each worker owns a scratch buffer of scratch_bytes. Items must write
 * disjoint outputs; each item runs on one thread, so results do not depend on the thread count.
 * Returns 0, or -1 when the items could not run (no worker could allocate its scratch, or
 * S2LORA_THREADS is invalid). */
int s2_ref_parallel_for(int n, size_t scratch_bytes, void (*fn)(void *ctx, int item, void *scratch),
                        void *ctx);

#endif

/*
 * sp_plan.h — S²-aware sequence parallelism: which rank holds which rows of a sequence, and
 * which key/value rows each rank's attention must receive from the others (DESIGN §5).
 *
 * A sequence of N tokens is cut into P contiguous chunks: rank r holds positions
 * [r·C, min((r+1)·C, N)), C = ceil(N / P) rounded up to `align` rows (the kernels' row
 * granularity), so the last chunk may be shorter. Everything but attention is token-local.
 * Query p sees key p' only inside its group (DESIGN §1), so a rank needs, besides its own rows,
 * exactly the rows some of its queries can see:
 *   - "before": rows [klo, lo) of the group (run of positions) that holds lo, received from
 *     the earlier ranks that hold them (several when chunks are shorter than G);
 *   - "wrap" (roll mode only): a rank holding part of the sequence's head that lies in the
 *     group wrapping the tail onto the head sees that group's tail rows [wlo, N) (minus its own),
 *     received from the last rank(s).
 * Both follow from one fact of the semantics: the queries that see a key form a run of
 * positions starting at the key (cyclic in roll mode), so a rank sees key p' outside
 * [lo, hi) iff its first query lo sees it.
 *
 * kv heads: with GQA kv head k serves query heads k·H/Hkv .. (k+1)·H/Hkv - 1; heads h < H/2
 * are plain, the rest shifted. A kv head serving only plain (only shifted) query heads needs
 * the plain (shifted) rows; with Hkv odd one kv head serves both kinds and needs the union.
 * The kinds are contiguous runs of kv heads: plain, then mixed (at most one), then shifted.
 *
 * Keys travel forward only (to later ranks, and in roll mode from the last ranks to the first);
 * in the backward their dK/dV travel back along the same transfers and are summed into the
 * owner's gradients. Bytes are per layer and per sequence: k and v (forward), dk and dv
 * (backward), each rows × kv heads of the kind × d × element size.
 *
 * The compiler layer: plain C, no GPU. runtime/ref/ref_attn.c's window reference computes a rank's
 * attention from its rows plus the rows this plan says it receives.
 */
#ifndef S2_SP_PLAN_H
#define S2_SP_PLAN_H

#include <stdint.h>

#include "spec.h"
#include "util.h"

#define S2_SP_DEFAULT_ALIGN 128

/* The kinds of kv heads, by the query heads they serve. */
typedef enum s2_sp_kind {
    S2_SP_PLAIN = 0, /* only plain query heads */
    S2_SP_SHIFTED,   /* only shifted query heads */
    S2_SP_MIXED,     /* both (one kv head at most, only when Hkv is odd) */
    S2_SP_KINDS
} s2_sp_kind;

/* The attention constants the plan needs (DESIGN §1). */
typedef struct s2_sp_attn {
    int N;               /* tokens of the sequence */
    int G, S;            /* group size (>= 1), shift (0 <= S < G) */
    s2_shift_mode mode;
    int H, Hkv, d;       /* query heads, kv heads (H % Hkv == 0), head dim */
    int elem_bytes;      /* bytes of one k or v element as sent (the spec's dtype: 2) */
    int grad_elem_bytes; /* bytes of one dk or dv element as sent back; 0: elem_bytes */
} s2_sp_attn;

/* Rows [lo, hi) of the sequence; empty when lo == hi. */
typedef struct s2_sp_range {
    int lo, hi;
} s2_sp_range;

typedef struct s2_sp_rank {
    int lo, hi;                      /* the rows (queries, keys, values) this rank holds */
    s2_sp_range before[S2_SP_KINDS]; /* [klo, lo): earlier rows its queries see, per kind */
    s2_sp_range wrap[S2_SP_KINDS];   /* roll: tail rows [wlo, N) after hi its queries see */
    long long fwd_recv, fwd_send;    /* k+v bytes a layer this rank receives / sends */
    long long bwd_recv, bwd_send;    /* dk+dv bytes a layer it receives back / sends back */
} s2_sp_rank;

/* One forward transfer: rank src sends rows [lo, hi) of the kind's kv heads (kv_first[kind] ..
 * + kv_count[kind]) to rank dst; in the backward dst sends their dk, dv back to src. */
typedef struct s2_sp_xfer {
    int src, dst;
    s2_sp_kind kind;
    int lo, hi;
    long long fwd_bytes; /* k and v */
    long long bwd_bytes; /* dk and dv */
} s2_sp_xfer;

typedef struct s2_sp_plan {
    s2_sp_attn a;                 /* grad_elem_bytes filled in */
    int P, align, C;              /* ranks, row alignment, chunk rows */
    int kv_first[S2_SP_KINDS];    /* the kind's kv heads: kv_first .. kv_first + kv_count - 1 */
    int kv_count[S2_SP_KINDS];
    s2_sp_rank *rank;             /* [P] */
    s2_sp_xfer *xfer;             /* ordered by dst, then src, then kind */
    int n_xfer;
    long long fwd_bytes, bwd_bytes; /* a layer, all transfers */
} s2_sp_plan;

/* The constants of spec's attention at its context length (elem_bytes from the dtype). */
void s2_sp_attn_from_spec(const s2_spec *spec, s2_sp_attn *a);

/*
 * Plans P ranks with chunk starts on multiples of align rows. S2_ERR_INVALID (nothing
 * allocated) for attention constants the semantics do not define, P < 1, align < 1, or a P for
 * which some chunk would be empty (the message gives the largest valid P). Free with
 * s2_sp_plan_free().
 */
s2_status s2_sp_plan_make(const s2_sp_attn *a, int P, int align, s2_sp_plan *plan,
                          s2_error *err);
void s2_sp_plan_free(s2_sp_plan *plan);

/* The kind of kv head kvh (0 <= kvh < Hkv). */
s2_sp_kind s2_sp_kv_kind(const s2_sp_plan *plan, int kvh);

/* "plain", "shifted", "mixed". */
const char *s2_sp_kind_name(s2_sp_kind k);

/*
 * The plan for people: the chunks, then per rank what it receives ("rank 1 receives rows
 * 4096..8191 of 16 shifted kv heads from rank 0: 33.6 MB k+v a layer"), its bytes a layer,
 * and the totals. Appends to b.
 */
void s2_sp_plan_format(const s2_sp_plan *plan, s2_buf *b);

/*
 * The GPU model's first exchange (runtime/train/model.h's sequence-parallel mode): every kv head's
 * rows of the union of a rank's "before" ranges. Split mode only (no wrap). The halo of rank r
 * is [klo, lo) with klo the smallest non-empty before[kind].lo (lo itself when none); a span
 * is one contiguous part of it held by one source rank. Spans are ordered by dst, then src.
 * Costs against the per-kind transfers: the rows of the kinds that need fewer (all Hkv heads
 * travel for every row of the union).
 */
typedef struct s2_sp_span {
    int src, dst, lo, hi; /* rows [lo, hi), held by src, sent to dst */
} s2_sp_span;

/* klo of rank r's union halo (split mode). */
int s2_sp_union_klo(const s2_sp_plan *plan, int r);

/* The spans of every rank's union halo into out (at most P * (P - 1) of them); their count. */
int s2_sp_union_spans(const s2_sp_plan *plan, s2_sp_span *out);

/* k+v bytes a layer the union exchange moves forward, all ranks (dk+dv back: the same rows at
 * grad_elem_bytes). */
long long s2_sp_union_fwd_bytes(const s2_sp_plan *plan);

/*
 * The labels of a chunk [lo, lo + T) of one sequence (Hugging Face's causal-LM labels cut at
 * the chunk): label t = tokens[t + 1] for t < T - 1, and the last one the first token of the
 * next chunk (next >= 0), or `ignore` for the sequence's last chunk (next < 0).
 */
void s2_sp_chunk_labels(const int32_t *tokens, int T, int32_t next, int32_t ignore,
                        int32_t *labels);

#endif

/*
 * train_kern.h — the trainer's small kernels on the GPU: embedding, RMSNorm, RoPE, SwiGLU,
 * residual add, cross-entropy, AdamW, the gradient norm and casts. They are generated from the
 * spec like the attention (gen/emit.c s2_emit_train: one unit, templates/train.cuh, with the
 * model's constants — hidden, intermediate and head sizes, vocabulary, RMS eps, RoPE theta and
 * factor — compiled in), built through NVRTC and the kernel cache, and loaded once per model.
 * Each has a CPU twin in ref_train.h; tests/gpu_check.c compares them on the device.
 *
 * Conventions: activations are the spec's storage dtype (bf16 or fp16, "elem"), row-major, with
 * an explicit row stride (ld, in elements) wherever the trainer reads or writes a column block
 * of a wider buffer (the LoRA augmented layout of lora.h, the fused q/k/v and gate/up outputs).
 * Every compute is fp32; gradients of trainable tensors and optimizer state are fp32.
 * Functions enqueue on `stream` and check the launch; none synchronizes.
 *
 * Arguments are checked before any CUDA call: a negative size, a row stride below the row's
 * width, an unknown dir, t < 1 (AdamW) are S2_ERR_INVALID naming the function and the value; so
 * is a NULL required pointer or an unloaded k when there is work (a call with nothing to do —
 * M, T, rows, cols, heads or n of 0 — launches nothing and returns S2_OK). Any alignment and
 * row stride work: each launch moves 16-byte chunks when every pointer it touches is 16-byte
 * aligned and every row stride (and the width) a multiple of 8 elements, and single elements
 * otherwise (correct, slower). cudaMalloc'd buffers at column offsets that are multiples of 8
 * get the fast path (for the fp32 gradient rows of dtable: a 16-byte aligned dtable).
 *
 * Deterministic: the same inputs on the same GPU give the same bits, run to run. No kernel adds
 * floating-point values with atomics; where many rows meet in one sum (the embedding's rows of
 * a token, RMSNorm's weight gradient, the loss, the sum of squares) the partial sums go through
 * a workspace, s2_k_ws, and are added in a fixed order (templates/train.cuh). The order
 * depends on the launch grid, i.e. on the device's SM count: another GPU model may round
 * differently.
 */
#ifndef S2_TRAIN_KERN_H
#define S2_TRAIN_KERN_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#include "gen/spec.h"
#include "runtime/core/jit.h"
#include "runtime/core/rt.h"

typedef struct s2_train_kern {
    s2_dtype dtype;
    int hidden, inter, head_dim, vocab;
    double eps, rope_theta, rope_factor;
    cudaLibrary_t lib;
    /* the kernels, by name in templates/train.cuh */
    cudaKernel_t embed_fwd, embed_bwd, embed_bwd_finish, rmsnorm_fwd, rmsnorm_bwd, colsum_f32,
        rope, swiglu_fwd, swiglu_bwd, add, xent, adamw, sumsq, cast_f32, cast_elem, scale_f32;
    double build_ms;
    int cache_hit;
    /* launch geometry: the device's SMs (grids of the kernels that loop over rows) and the
     * row kernels' block (gen/emit.h s2_emit_train_row_geometry, as compiled in) */
    int sm_count, row_threads;
} s2_train_kern;

/* Builds the spec's unit for rt->arch (through the cache in jo->cache_dir; jo may be NULL: the
 * default cache) and loads it. */
s2_status s2_train_kern_load(s2_train_kern *k, const s2_rt *rt, const s2_spec *spec,
                             const s2_jit_opts *jo, s2_error *err);
void s2_train_kern_free(s2_train_kern *k);

/* Builds the unit for jo->arch without a GPU (CI: every spec builds, resources in res). */
s2_status s2_train_kern_build(const s2_spec *spec, const s2_jit_opts *jo, s2_jit_result *res,
                              s2_error *err);

/*
 * The reduction workspace of s2_k_embed_bwd, s2_k_rmsnorm_bwd (with dw), s2_k_xent and
 * s2_k_sumsq: device memory, 16-byte aligned, of `bytes` bytes. Byte 0 holds an arrival counter
 * (unsigned) that must be zero before the first launch (cudaMemset once after allocating); the
 * kernels leave it zero. The partial sums start at byte S2_K_WS_HEAD. Calls that share one
 * workspace must run in turn (one stream); concurrent calls need one each.
 */
typedef struct s2_k_ws {
    void *p;
    size_t bytes;
} s2_k_ws;

#define S2_K_WS_HEAD 256

/*
 * Bytes of a workspace that serves every one of those calls for up to `rows` rows (T of the
 * embedding, M of RMSNorm and the cross-entropy; any n of the sum of squares): the largest of
 *   RMSNorm's weight gradient: one fp32 [hidden] partial a block, at most min(rows, resident
 *     blocks) of them (a block takes at least 8 rows when more than 2 blocks an SM would be
 *     needed, so writing and reading the partials moves at most 1/6 of the kernel's own
 *     traffic; 1.6 % for llama2-7b at 32k rows on an H100, whose grid is one block an SM
 *     already);
 *   the embedding: one fp32 [hidden] partial per item of a split token, at most
 *     2 rows / S2_EMBED_CHUNK of them (writing and reading them moves at most 1/8 of the
 *     kernel's reads of dout, and only for tokens that fill more than one item);
 *   the cross-entropy and the sum of squares: 1 or 2 fp64 a block (a few KiB);
 * plus the S2_K_WS_HEAD bytes of the counter. llama2-7b at 32k rows: 16 MiB (the embedding's
 * bound; RMSNorm's is 8.3 MiB on an H100).
 */
size_t s2_k_ws_bytes(const s2_train_kern *k, int rows);

/*
 * The embedding backward's work list for one batch of T tokens, built on the host (a counting
 * sort by token id, O(T + vocab)) and uploaded with the batch: the positions grouped by token,
 * tokens in increasing id, positions increasing within a token, cut into items of at most
 * S2_EMBED_CHUNK consecutive positions of one token. A token with more positions is "split":
 * its items write partial rows into the workspace (slots 0 .. n_part - 1, a split token's in
 * position order) that a second kernel adds into the gradient row in that order.
 *
 * data holds n_ints int32 in this order (s2_k_embed_bwd finds them by these counts):
 *   pos [T], item_start [n_items + 1] (item i covers pos[item_start[i] .. item_start[i + 1])),
 *   item_tok [n_items], item_slot [n_items] (-1: the token's only item, else its partial row),
 *   split_first [n_split + 1] (split token j's slots split_first[j] .. split_first[j + 1] - 1),
 *   split_tok [n_split].
 * n_ints <= s2_embed_list_max_ints(T), the size of a device copy that fits any batch of T.
 */
#define S2_EMBED_CHUNK 64

typedef struct s2_embed_list {
    int T, n_items, n_split, n_part;
    size_t n_ints;
    int32_t *data;                  /* host, n_ints used */
    size_t cap;                     /* ints allocated in data */
    int32_t *count;                 /* scratch: vocab + 1 counters */
    int count_cap;
} s2_embed_list;

/* Builds (or rebuilds, reusing l's allocations) the list of tokens [T] over a vocabulary of
 * `vocab`; a token outside [0, vocab) is refused (S2_ERR_INVALID, naming its position). l must
 * start zeroed; free it with s2_embed_list_free. */
s2_status s2_embed_list_build(s2_embed_list *l, const int32_t *tokens, int T, int vocab,
                              s2_error *err);
void s2_embed_list_free(s2_embed_list *l);
size_t s2_embed_list_max_ints(int T);

/* The arrays of a list inside data, or inside a device copy of it at base. */
typedef struct s2_embed_list_arrays {
    const int32_t *pos, *item_start, *item_tok, *item_slot, *split_first, *split_tok;
} s2_embed_list_arrays;
s2_embed_list_arrays s2_embed_list_at(const s2_embed_list *l, const int32_t *base);

/* out[t, :] = table[tokens[t], :]; table [vocab, hidden], out [T, hidden] (row stride ldo).
 * A token outside [0, vocab) writes NaN into its row (the host validates tokens first). */
s2_status s2_k_embed_fwd(const s2_train_kern *k, int T, const int32_t *tokens, const void *table,
                         void *out, int ldo, cudaStream_t stream, s2_error *err);

/*
 * dtable[tokens[t], :] += dout[t, :] for t < l->T, from the batch's work list l (host) and its
 * device copy d_list (l->n_ints int32, s2_embed_list_build's data): dtable fp32 [vocab, hidden],
 * dout [T, lddo]. Each gradient row receives its token's rows in position order (a token's
 * only item: g + d1 + d2 + ...; a split token: g + (its items' sums, in order)). ws: at least
 * S2_K_WS_HEAD + l->n_part x hidden x 4 bytes (s2_k_ws_bytes(k, T) suffices); unused (may be
 * NULL) when no token is split.
 */
s2_status s2_k_embed_bwd(const s2_train_kern *k, const s2_embed_list *l, const int32_t *d_list,
                         const void *dout, int lddo, float *dtable, const s2_k_ws *ws,
                         cudaStream_t stream, s2_error *err);

/* y = x / sqrt(mean(x^2) + eps) * w over hidden; rstd [M] fp32 receives the reciprocal RMS
 * (NULL: not kept). x [M, ldx], w [hidden], y [M, ldy] (y may not alias x). */
s2_status s2_k_rmsnorm_fwd(const s2_train_kern *k, int M, const void *x, int ldx, const void *w,
                           void *y, int ldy, float *rstd, cudaStream_t stream, s2_error *err);

/* dx = resid + (J_rmsnorm)^T dy, from x, w, dy and the forward's rstd; resid [M, ldr] may be
 * NULL (then dx is the norm's gradient alone) and may equal dx (in place, ldr == lddx).
 * dw (fp32 [hidden], or NULL when the norm weight is frozen) += sum over rows of dy * x * rstd
 * (accumulates across calls): each block's partial into ws, then a second kernel
 * (s2_colsum_f32) adds them in block order. ws (s2_k_ws_bytes(k, M) suffices) is needed only
 * with dw. */
s2_status s2_k_rmsnorm_bwd(const s2_train_kern *k, int M, const void *x, int ldx, const void *w,
                           const void *dy, int lddy, const float *rstd, const void *resid, int ldr,
                           void *dx, int lddx, float *dw, const s2_k_ws *ws, cudaStream_t stream,
                           s2_error *err);

/* RoPE of `heads` heads of head_dim on T tokens at positions pos [T] (device int32), HF's
 * half-split rotation with linear interpolation (angle = (p / factor) * theta^(-2j/d), computed
 * in fp32 as HF does: ref_train.h's fp32_angles = 1). dir = +1: forward; dir = -1: the
 * backward (rotation by -angle). src [T, lds] and dst [T, ldd] hold the heads contiguously
 * ([heads, head_dim] per row); dst may equal src with the same stride. */
s2_status s2_k_rope(const s2_train_kern *k, int T, int heads, const int32_t *pos, int dir,
                    const void *src, int lds, void *dst, int ldd, cudaStream_t stream,
                    s2_error *err);

/* h = silu(g) * u with gu [M, ldgu] holding g in columns [0, inter) and u in [inter, 2 inter);
 * h [M, ldh]. */
s2_status s2_k_swiglu_fwd(const s2_train_kern *k, int M, const void *gu, int ldgu, void *h,
                          int ldh, cudaStream_t stream, s2_error *err);

/* From dh [M, lddh]: dgu [M, lddgu] = [dg | du] (same column split as gu). */
s2_status s2_k_swiglu_bwd(const s2_train_kern *k, int M, const void *gu, int ldgu,
                          const void *dh, int lddh, void *dgu, int lddgu, cudaStream_t stream,
                          s2_error *err);

/* y = a + b over rows x cols (each with its own row stride); y may equal a or b. */
s2_status s2_k_add(const s2_train_kern *k, int rows, int cols, const void *a, int lda,
                   const void *b, int ldb, void *y, int ldy, cudaStream_t stream, s2_error *err);

/*
 * Cross-entropy over vocab of each of M rows of logits [M, ldl] against labels [M] (device
 * int32; S2_REF_IGNORE_INDEX rows count nothing). acc[0] += sum of -log softmax[label] and
 * acc[1] += the count of labelled rows (fp64, the blocks' sums added in a fixed order through
 * ws, s2_k_ws_bytes(k, M) suffices; the caller zeroes acc). With grad != 0 the logits are
 * overwritten in place by (softmax - onehot) * inv_denom (0 on ignored rows), i.e. dlogits
 * for loss = sum / denom. A label outside [0, vocab) that is not ignored adds NaN.
 */
s2_status s2_k_xent(const s2_train_kern *k, int M, void *logits, int ldl, const int32_t *labels,
                    float inv_denom, int grad, double *acc, const s2_k_ws *ws,
                    cudaStream_t stream, s2_error *err);

/*
 * One AdamW step over n fp32 elements (ref_train.h's s2_ref_adamw_step, torch's math), with the
 * gradient multiplied by grad_scale first (clipping, 1 when none): p, m, v updated in place;
 * t is the step count after this step (bias corrections 1 - beta^t).
 */
s2_status s2_k_adamw(const s2_train_kern *k, size_t n, float *p, const float *g, float *m,
                     float *v, float lr, float beta1, float beta2, float eps, float wd, int64_t t,
                     float grad_scale, cudaStream_t stream, s2_error *err);

/* acc[0] += sum of g[i]^2 over n fp32 elements (fp64, the blocks' sums added in a fixed order
 * through ws, s2_k_ws_bytes(k, 0) suffices for any n; the caller zeroes acc). */
s2_status s2_k_sumsq(const s2_train_kern *k, size_t n, const float *g, double *acc,
                     const s2_k_ws *ws, cudaStream_t stream, s2_error *err);

/* dst [rows, ldd] (elem) = src [rows, cols] (fp32, contiguous), rounded to nearest even. */
s2_status s2_k_cast_f32(const s2_train_kern *k, int rows, int cols, const float *src, void *dst,
                        int ldd, cudaStream_t stream, s2_error *err);

/* dst [rows, cols] (fp32, contiguous) = src [rows, lds] (elem). */
s2_status s2_k_cast_elem(const s2_train_kern *k, int rows, int cols, const void *src, int lds,
                         float *dst, cudaStream_t stream, s2_error *err);

/* x[i] *= s over n fp32 elements. */
s2_status s2_k_scale_f32(const s2_train_kern *k, size_t n, float *x, float s,
                         cudaStream_t stream, s2_error *err);

#endif

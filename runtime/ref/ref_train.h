/*
 * ref_train.h — CPU twins of the trainer's small kernels: RMSNorm, RoPE (linear position
 * interpolation), SwiGLU, cross-entropy, AdamW, gradient clipping and the LR schedules.
 * Same contract as ref.h: plain C, fp32 storage, fp64 accumulation, row-parallel through
 * s2_ref_parallel_for (results do not depend on the thread count), nothing prints or exits.
 *
 * Semantics are Hugging Face transformers' LLaMA (modeling_llama.py, modeling_rope_utils.py)
 * and torch.optim.AdamW / clip_grad_norm_, so a peer check against them can pass. Where HF
 * rounds to a narrower type on the way (bf16 activations), these twins do not: they are the
 * fp32 function that the peer approximates.
 *
 * Shapes are row-major. M = rows (tokens), n = feature width.
 */
#ifndef S2_REF_TRAIN_H
#define S2_REF_TRAIN_H

#include <stddef.h>
#include <stdint.h>

/* ---- RMSNorm (LlamaRMSNorm) ----
 * y = x / sqrt(mean(x^2) + eps) * w over the last dim.
 * rstd (optional, may be NULL) receives 1 / sqrt(mean(x^2) + eps) per row, which a fused
 * backward would keep instead of recomputing. */
void s2_ref_rmsnorm_forward(int M, int n, double eps,
                            const float *x, /* [M, n] */
                            const float *w, /* [n] */
                            float *y,       /* [M, n] */
                            float *rstd);   /* [M] or NULL */

/* Backward from dy: dx = r (dxh - xh * mean(dxh * xh)) with xh = x r, dxh = dy w;
 * dw = sum over rows of dy * xh (M = 0 gives dw = 0). If memory runs out dx, dw are NaN. */
void s2_ref_rmsnorm_backward(int M, int n, double eps,
                             const float *x,  /* [M, n] */
                             const float *w,  /* [n] */
                             const float *dy, /* [M, n] */
                             float *dx,       /* [M, n] */
                             float *dw);      /* [n] */

/* ---- RoPE (LlamaRotaryEmbedding + apply_rotary_pos_emb, rope_scaling type "linear") ----
 * inv_freq[j] = theta^(-2j/d), j < d/2; angle(p, j) = (p / factor) * inv_freq[j]; cos and sin
 * are duplicated to d ("cat(freqs, freqs)"), so element i and i + d/2 share angle j = i mod d/2:
 *   out = x cos + rotate_half(x) sin,  rotate_half(x) = cat(-x[d/2:], x[:d/2])
 * i.e. each pair (x[j], x[j + d/2]) is rotated by +angle (half-split, not interleaved).
 * fp32_angles = 1 rounds inv_freq / factor and the angle to fp32 the way HF computes them
 * (inv_freq is an fp32 buffer and freqs = inv_freq @ position_ids in fp32): at positions near
 * 32k that rounding moves the angle by up to ~2e-3 rad, more than a bf16 peer check forgives.
 * fp32_angles = 0 is the exact (fp64) function. */
typedef struct s2_ref_rope {
    int d;            /* head dim, even */
    double theta;     /* rope_theta (spec model.rope_theta) */
    double factor;    /* linear interpolation factor (spec rope_factor); 1 = none */
    int fp32_angles;  /* 0: fp64 angles; 1: HF's fp32 rounding */
} s2_ref_rope;

/* The angle (p / factor) * inv_freq[j] as the struct asks for it; the one definition the
 * forward, backward and tests share. */
double s2_ref_rope_angle(const s2_ref_rope *r, int32_t p, int j);

/* x [T, H, d] (q with H heads, or k with Hkv heads), pos [T] int32 per token (varlen batches
 * restart at 0). y may equal x (in place). d odd or < 2: nothing is written. */
void s2_ref_rope_forward(const s2_ref_rope *r, int T, int H,
                         const int32_t *pos, /* [T] */
                         const float *x,     /* [T, H, d] */
                         float *y);          /* [T, H, d] */

/* The transpose: dx = dy cos - rotate_half(dy) sin, i.e. each pair is rotated by -angle (a
 * rotation's transpose is its inverse). dx may equal dy. */
void s2_ref_rope_backward(const s2_ref_rope *r, int T, int H,
                          const int32_t *pos, /* [T] */
                          const float *dy,    /* [T, H, d] */
                          float *dx);         /* [T, H, d] */

/* ---- SwiGLU (LlamaMLP's act_fn(gate) * up, act = silu) ----
 * h = silu(g) u, silu(g) = g sigmoid(g). */
void s2_ref_swiglu_forward(size_t n,
                           const float *g, /* [n] (any shape [M, n'] flattened) */
                           const float *u, /* [n] */
                           float *h);      /* [n] */

/* dg = dh u sigmoid(g) (1 + g (1 - sigmoid(g))), du = dh silu(g). */
void s2_ref_swiglu_backward(size_t n,
                            const float *g,  /* [n] */
                            const float *u,  /* [n] */
                            const float *dh, /* [n] */
                            float *dg,       /* [n] */
                            float *du);      /* [n] */

/* ---- Cross-entropy (HF ForCausalLMLoss after its shift) ----
 * Row m predicts labels[m]: the caller has already shifted (HF compares logits[:, :-1] with
 * labels[:, 1:]). ignore_index rows contribute nothing. */
#define S2_REF_IGNORE_INDEX (-100)

/* What a perplexity eval sums across batches: ppl = exp(nll_sum / count). */
typedef struct s2_ref_xent_sum {
    double nll_sum; /* sum over counted rows of -log softmax(logits)[label] */
    int64_t count;  /* rows whose label is not ignore_index */
} s2_ref_xent_sum;

/* Returns the loss nll_sum / denom, where denom = the count of non-ignored rows when
 * denom <= 0 (HF's mean), or the given denom (HF's num_items_in_batch, for gradient
 * accumulation across micro-batches). A batch with nothing to count returns 0, count 0 and
 * dlogits = 0 (torch would give NaN: the trainer skips such a batch instead). dlogits
 * (optional) = (softmax - onehot) / denom on counted rows, 0 on ignored rows. A label outside
 * [0, V) that is not ignore_index (torch raises) makes the loss, nll_sum and dlogits NaN. */
double s2_ref_cross_entropy(int M, int V,
                            const float *logits,   /* [M, V] */
                            const int32_t *labels, /* [M] */
                            double denom,
                            float *dlogits,        /* [M, V] or NULL */
                            s2_ref_xent_sum *sum); /* or NULL */

/* ---- AdamW (torch.optim.AdamW, foreach/fused give the same math) ----
 * For step t >= 1 (the count after this step, torch's state['step']):
 *   p -= lr wd p                                    (decoupled: before the Adam update)
 *   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
 *   p -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
 * p, m, v are fp32 (master weights and moments); each element is computed in fp64. */
typedef struct s2_ref_adamw {
    double lr;           /* the scheduled lr of this step */
    double beta1, beta2; /* torch defaults 0.9, 0.999 */
    double eps;          /* 1e-8 */
    double weight_decay; /* torch AdamW default 0.01; LongLoRA 0.0 */
} s2_ref_adamw;

void s2_ref_adamw_step(const s2_ref_adamw *o, int64_t t, size_t n,
                       float *p,       /* [n] parameters, updated */
                       const float *g, /* [n] gradients */
                       float *m,       /* [n] first moment (0 before step 1), updated */
                       float *v);      /* [n] second moment (0 before step 1), updated */

/* torch.nn.utils.clip_grad_norm_ (norm_type 2): total = L2 norm over all tensors; the grads
 * are multiplied by min(1, max_norm / (total + 1e-6)) — a NaN total makes them NaN, as in
 * torch without error_if_nonfinite. Returns total (before clipping). */
double s2_ref_clip_grad_norm(int n_tensors,
                             float *const *grads,  /* [n_tensors] pointers, each [sizes[i]] */
                             const size_t *sizes,  /* [n_tensors] */
                             double max_norm);

/* ---- LR schedules (transformers' LambdaLR factories), as lr(step) ----
 * step = scheduler.step() calls so far = the 0-based index of the optimizer step about to
 * run, so with warmup W > 0 the first step runs at lr 0, exactly as in the HF Trainer. */

/* get_constant_schedule_with_warmup (LongLoRA's "constant_with_warmup"):
 * base_lr * step / max(1, W) while step < W, then base_lr. */
double s2_ref_lr_constant_warmup(double base_lr, int64_t step, int64_t warmup);

/* get_cosine_schedule_with_warmup (num_cycles 0.5): the warmup above, then
 * base_lr * max(0, 0.5 (1 + cos(pi progress))), progress = (step - W) / max(1, total - W). */
double s2_ref_lr_cosine_warmup(double base_lr, int64_t step, int64_t warmup, int64_t total);

#endif

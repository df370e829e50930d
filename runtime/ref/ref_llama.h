/*
 * ref_llama.h — the CPU twin of the whole model forward (prefix s2_ref_llama_): Hugging Face
 * LlamaForCausalLM (transformers 4.x/5.x modeling_llama.py) in fp32 storage with the fp64
 * accumulation of the twins it is built from (ref_train.h: RMSNorm, RoPE, SwiGLU,
 * cross-entropy; ref.h: S²-Attn / causal attention, LoRA linear).
 *
 *   h = embed[tokens]
 *   per layer:  x = rmsnorm(h, input_layernorm)
 *               q = x Wq^T, k = x Wk^T, v = x Wv^T    ([T, H, d], [T, Hkv, d], [T, Hkv, d])
 *               q, k = rope(q, k) at positions 0 .. N-1 restarting in every sequence
 *               h += attn(q, k, v) Wo^T                (scale 1/sqrt(d), GQA, S²-Attn mask)
 *               x = rmsnorm(h, post_attention_layernorm)
 *               h += down(silu(gate(x)) * up(x))
 *   logits = rmsnorm(h, norm) lm_head^T               (lm_head = embed_tokens when tied)
 *
 * Optional LoRA (PEFT, no dropout): y = x W^T + s (x A^T) B^T on any projection whose slot
 * S2_CKPT_SLOT(layer, proj) has both A [r, in] and B [out, r] non-NULL.
 *
 * Nothing prints or exits. Thread-safe (a loaded model is read-only).
 */
#ifndef S2_REF_LLAMA_H
#define S2_REF_LLAMA_H

#include <stddef.h>
#include <stdint.h>

#include "gen/spec.h"
#include "runtime/ref/ref_train.h"
#include "runtime/core/train_io.h"

/* One decoder layer's weights, fp32, Hugging Face layouts ([out, in] row-major). */
typedef struct s2_ref_llama_layer {
    float *input_norm;  /* [hidden] */
    float *wq;          /* [H*d, hidden] */
    float *wk;          /* [Hkv*d, hidden] */
    float *wv;          /* [Hkv*d, hidden] */
    float *wo;          /* [hidden, H*d] */
    float *post_norm;   /* [hidden] */
    float *wg;          /* [inter, hidden] */
    float *wu;          /* [inter, hidden] */
    float *wd;          /* [hidden, inter] */
} s2_ref_llama_layer;

typedef struct s2_ref_llama {
    s2_hf_config cfg;            /* copy of the checkpoint's config.json */
    float *embed;                /* [vocab, hidden] */
    s2_ref_llama_layer *layers;  /* [num_hidden_layers] */
    float *norm;                 /* [hidden] */
    float *lm_head;              /* [vocab, hidden]; == embed when tie_word_embeddings */
} s2_ref_llama;

/*
 * Loads every weight of ck into fp32 host arrays (from BF16, F16 or F32). Each tensor must be
 * present with Hugging Face LLaMA's shape (S2_ERR_INVALID naming tensor and shapes);
 * lm_head.weight is read only when the embeddings are not tied. On failure *out is NULL.
 */
s2_status s2_ref_llama_load(const s2_ckpt *ck, s2_ref_llama **out, s2_error *err);

/* Frees a loaded model. NULL is fine. */
void s2_ref_llama_free(s2_ref_llama *m);

/* Attention settings. NULL (or G <= 0) means plain causal attention (G = longest sequence,
 * S = 0); G >= every sequence length with S = 0 is the same. */
typedef struct s2_ref_llama_attn {
    int G, S;              /* group size, shift (0 <= S < G) */
    s2_shift_mode mode;
    int rope_fp32_angles;  /* s2_ref_rope.fp32_angles: 0 exact angles, 1 HF's fp32 rounding */
} s2_ref_llama_attn;

/* LoRA adapters: A[S2_CKPT_SLOT(l, p)] [r, in] and B[...] [out, r], NULL = no adapter on that
 * projection (either array itself may be NULL). scale = alpha / r. */
typedef struct s2_ref_llama_lora {
    int r;
    float scale;
    const float *const *A;  /* [num_layers * S2_PROJ_COUNT] or NULL */
    const float *const *B;  /* [num_layers * S2_PROJ_COUNT] or NULL */
} s2_ref_llama_lora;

/*
 * logits [T, vocab] for tokens [T] packed as cu_seqlens [B+1] (NULL = one sequence of T).
 * S2_ERR_INVALID for a token outside [0, vocab), bad cu_seqlens or bad attention settings;
 * S2_ERR_NOMEM when memory runs out. T = 0 writes nothing.
 */
s2_status s2_ref_llama_forward(const s2_ref_llama *m, const int32_t *tokens, int T,
                               const int32_t *cu_seqlens, int B, const s2_ref_llama_attn *attn,
                               const s2_ref_llama_lora *lora, float *logits, s2_error *err);

/* HF causal-LM labels: labels[t] = tokens[t+1] when t+1 is in the same sequence, else
 * S2_REF_IGNORE_INDEX (the last position of every sequence). */
void s2_ref_llama_labels(const int32_t *tokens, int T, const int32_t *cu_seqlens, int B,
                         int32_t *labels);

/*
 * HF's causal LM loss: mean cross-entropy of logits[t] against labels[t] above (count of
 * labelled positions as the denominator). dlogits [T, vocab] and sum are optional, as in
 * s2_ref_cross_entropy. Returns NaN if memory runs out. No labelled position: 0.
 */
double s2_ref_llama_loss(const float *logits, const int32_t *tokens, int T, int vocab,
                         const int32_t *cu_seqlens, int B, float *dlogits,
                         s2_ref_xent_sum *sum);

#endif

/*
 * model.h — the LLaMA model of a spec on the GPU, for training and evaluation (prefix s2_gm_).
 * The same function as the CPU twin ref_llama.h (Hugging Face LlamaForCausalLM), on the
 * generated kernels: S²-Attn (rt.h) or, for evaluation, full causal attention from the same
 * generator (one group, no shift); the q/k/v, o, gate/up and down products through lora.h's
 * augmented layout (cuBLAS; a projection group without adapters is the plain GEMM); RMSNorm,
 * RoPE, SwiGLU, embedding, cross-entropy and AdamW through train_kern.h.
 *
 * Weights: the frozen ones in the spec's dtype, as the checkpoint gives them. The trainable
 * ones (LoRA+: the adapters, and the whole tensors lora.trainable names — embeddings, norms,
 * head) have an fp32 master copy, an fp32 gradient and AdamW's m and v, all in one flat device
 * allocation; after each optimizer step the masters are rounded into the dtype copies the
 * products read.
 *
 * Adapters of one projection group (q, k, v read the same x) are stored stacked as lora.h
 * wants them: A [rp, in] with projection i's A in rows i*r .. i*r+r, and B block-diagonal in
 * the extra columns of the group's W. A member the spec does not adapt, and the pad rows,
 * keep A = 0 and B = 0: their gradients are then exactly 0 and the optimizer leaves them 0,
 * so the group runs as one product without changing the function. The trainable tensor of a
 * group is that whole stacked A and B block (state names "...self_attn.qkv.lora_A_stacked");
 * exports split it into PEFT's per-projection tensors.
 *
 * Memory (T = max_tokens): the input of every layer is kept from the forward ([T, hidden]
 * each, L + 1 of them); everything else of a layer is recomputed in the backward
 * (activation recomputation per layer), so long contexts fit. Logits are formed, turned into
 * their gradient and consumed in chunks of logits_chunk rows: the [T, vocab] matrix never
 * exists whole.
 *
 * Nothing prints or exits.
 */
#ifndef S2_MODEL_H
#define S2_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "gen/plan.h"
#include "gen/spec.h"
#include "runtime/core/rt.h"
#include "runtime/core/train_io.h"
#include "runtime/train/train_kern.h"
#include "runtime/train/train_state.h"

typedef struct s2_gm s2_gm;

/* Activation recomputation. LAYER keeps each layer's input only and recomputes the whole
 * layer in the backward (least memory). MLP also keeps, per layer, the attention half's
 * activations (the q/k/v and o projections' inputs, q, k, v, o, the log-sum-exps, the
 * residual after attention): the backward then recomputes only the MLP's norm, gate/up GEMM
 * and SwiGLU, and no attention forward; per layer that costs (qkv_in + o_in + 2 q + 2 kv +
 * hidden) * 2 bytes a token more. AUTO picks MLP when all layers' extra fits in half of the
 * device memory free after the weights, optimizer state and workspaces, else LAYER. */
enum { S2_GM_RECOMPUTE_AUTO = 0, S2_GM_RECOMPUTE_LAYER = 1, S2_GM_RECOMPUTE_MLP = 2 };

typedef struct s2_gm_opts {
    int max_tokens;            /* tokens of one micro-batch (all sequences together) */
    int logits_chunk;          /* rows of logits at a time; 0: 4096 */
    const s2_attn_tile *tile;  /* attention tile; NULL: the plan's default */
    const char *cache_dir;     /* kernel cache; NULL: the default */
    uint64_t init_seed;        /* LoRA A's initialisation (PEFT's kaiming-uniform bound) */
    int no_s2attn;             /* 1: no S²-Attn kernels (evaluation only needs full attention) */
    int recompute;             /* what the backward recomputes (S2_GM_RECOMPUTE_*) */
    int full;                  /* 1: every weight trainable ("full" fine-tuning, LongLoRA's
                                  Full-FT): no adapters; the q/k/v, o, gate/up and down weights
                                  train stacked per group ("...self_attn.qkv.weight_stacked"),
                                  with embeddings, norms and head; fp32 masters and moments of
                                  all of it must fit on the device */
    int sp_halo;               /* > 0: sequence-parallel micro-batches (s2_gm_sp) with up to
                                  this many halo rows; loads the window units and gives every
                                  layer's K/V and the dK/dV buffers sp_halo rows more */
    int rope_spec;             /* 1: the spec's rope factor replaces the checkpoint's
                                  rope_scaling (S2_ROPE_SPEC, train_io.h); 0: they must match */
} s2_gm_opts;

/*
 * Sequence parallelism (gen/sp_plan.h): the key/value exchange of one rank, behind a
 * transport (runtime/train/sp_xchg.h: a loopback for P ranks in one process, NCCL across
 * processes). k, v, dk, dv are this rank's buffers [hi - klo, Hkv, d] in the spec's dtype
 * (rows klo .. hi: the halo, then the rank's own rows), on the model's stream.
 *   fwd: layer l's own rows of k and v are written; fill the halo rows [klo, lo) from their
 *        owners (also called again by a backward that recomputes the layer).
 *   bwd: layer l's attention backward wrote dk, dv for all rows (the halo rows: this rank's
 *        partial sums); send the halo rows to their owners and add what the other ranks send
 *        back for this rank's rows into its rows [lo, hi).
 * Every rank must make the same sequence of calls.
 */
typedef struct s2_sp_transport {
    void *ctx;
    s2_status (*fwd)(void *ctx, int layer, void *k, void *v, cudaStream_t stream,
                     s2_error *err);
    s2_status (*bwd)(void *ctx, int layer, void *dk, void *dv, cudaStream_t stream,
                     s2_error *err);
} s2_sp_transport;

/* A micro-batch of one rank: the chunk [lo, lo + T) of one sequence of n_global tokens
 * (s2_gm_batch.tokens is the chunk, RoPE positions are lo + t), halo [klo, lo) (klo <= lo,
 * lo - klo <= the model's sp_halo). next_token: the token after the chunk (the label of its
 * last position); on the sequence's last chunk -1 leaves that position unlabelled. Split shift
 * mode only. */
typedef struct s2_gm_sp {
    int lo, klo, n_global;
    int32_t next_token;
    const s2_sp_transport *tp;
} s2_gm_sp;

/* One micro-batch on the host: T tokens packed as B sequences (cu_seqlens [B+1], NULL = one
 * sequence of T). labels [T] (NULL: Hugging Face's causal-LM labels, s2_ref_llama_labels;
 * S2_REF_IGNORE_INDEX rows count nothing). */
typedef struct s2_gm_batch {
    const int32_t *tokens;
    int T;
    const int32_t *cu_seqlens;
    int B;
    const int32_t *labels;
    uint64_t dropout_seed; /* LoRA dropout masks of this micro-batch (the backward's recompute
                              regenerates them); the trainer derives it from its RNG seed and
                              the micro-batch's index, so a resumed run draws the same masks */
    const s2_gm_sp *sp;    /* NULL, or one rank's chunk of a sequence (then B = 1, labels NULL:
                              s2_sp_chunk_labels; S²-Attn only, through the window units) */
} s2_gm_batch;

/*
 * Loads the spec's model from a checked Hugging Face checkpoint (s2_ckpt_check first), builds
 * and loads every kernel, allocates every buffer for o->max_tokens, and initialises the
 * adapters as PEFT does (A uniform in +-1/sqrt(in), B = 0). On failure *out is NULL and
 * nothing stays allocated.
 */
s2_status s2_gm_open(s2_gm **out, const s2_rt *rt, const s2_spec *spec, const s2_ckpt *ck,
                     const s2_gm_opts *o, s2_error *err);
void s2_gm_close(s2_gm *m);

/* Bytes of device memory the model holds (weights, state, activations, workspaces). */
size_t s2_gm_device_bytes(const s2_gm *m);

/* The recomputation in force (S2_GM_RECOMPUTE_LAYER or _MLP, AUTO resolved) and, in words,
 * what it keeps (for the trainer's opening line). */
int s2_gm_recompute(const s2_gm *m, const char **what);

/* Whether the adapted groups' products run tuned cuBLAS algorithms, in words. */
const char *s2_gm_lora_algos(const s2_gm *m);

/* Sets every gradient to 0 (before the first micro-batch of an optimizer step). */
s2_status s2_gm_zero_grad(s2_gm *m, s2_error *err);

/*
 * Forward, loss and backward of one micro-batch with S²-Attn (full = 0) or full causal
 * attention (full = 1, the same kernels with one group and no shift), adding the gradients of
 * loss = nll_sum / denom into the trainables' gradients (denom: the labelled rows of every
 * micro-batch of the optimizer step, as HF's num_items_in_batch). nll_sum and count (either
 * may be NULL) receive this micro-batch's summed -log p and labelled rows.
 */
s2_status s2_gm_train_batch(s2_gm *m, const s2_gm_batch *b, int full, double denom,
                            double *nll_sum, int64_t *count, s2_error *err);

/*
 * Forward and loss only. logits (NULL: not kept) receives [T, vocab] as fp32 on the host
 * (the checks compare it with the CPU twin; a trainer never asks for it).
 */
s2_status s2_gm_eval_batch(s2_gm *m, const s2_gm_batch *b, int full, double *nll_sum,
                           int64_t *count, float *logits, s2_error *err);

/* The L2 norm of all gradients (one device reduction; synchronizes). */
s2_status s2_gm_grad_norm(s2_gm *m, double *norm, s2_error *err);

/* One AdamW step on every trainable tensor (t: the step count after it), the gradients
 * multiplied by grad_scale first; then the dtype copies are refreshed from the masters. */
s2_status s2_gm_step(s2_gm *m, double lr, double beta1, double beta2, double eps,
                     double weight_decay, int64_t t, double grad_scale, s2_error *err);

/*
 * Data parallel (train_dp.h). While a hook is set, s2_gm_train_batch's backward calls
 * fn(ctx, stage, stream) at each point after which some gradients are complete, in this
 * order: stage 0 after the head and the final norm, stage L - l after layer l (l = L-1 .. 0),
 * stage L + 1 after the embedding (train_dp.h's s2_dp_stage_of maps a trainable tensor's name
 * to its stage); stream is the stream that computed them (work enqueued on it afterwards is
 * the rest of the backward). A failure the hook returns ends the micro-batch. NULL: none.
 */
typedef s2_status (*s2_gm_stage_fn)(void *ctx, int stage, cudaStream_t stream, s2_error *err);
void s2_gm_set_stage_hook(s2_gm *m, s2_gm_stage_fn fn, void *ctx);
/* The flat fp32 gradient buffer on the device and its length in floats (every trainable
 * tensor's range and the padding between them). */
float *s2_gm_grad_buffer(s2_gm *m, size_t *n);
/* Trainable i's range of that buffer, up to the next tensor's start (or the buffer's end):
 * the ranges tile it. -1 when i is out of range. */
int s2_gm_trainable_range(const s2_gm *m, int i, size_t *off, size_t *n);
int s2_gm_num_layers(const s2_gm *m);
/* The model's elementwise kernels (a transport adds received dK/dV rows with s2_k_add). */
const s2_train_kern *s2_gm_kern(const s2_gm *m);
/* The stream every model kernel runs on. */
cudaStream_t s2_gm_stream(const s2_gm *m);

/* Trainable tensors: count, and each one's state name, shape and element count. */
int s2_gm_n_trainable(const s2_gm *m);
const char *s2_gm_trainable_name(const s2_gm *m, int i, int *ndim, int64_t shape[2],
                                 size_t *numel);
/* Total trainable elements (the masters' size). */
size_t s2_gm_trainable_numel(const s2_gm *m);

/* Copies the masters and moments to a training state (tensors added in order) or back from
 * one (which must hold the same tensors with the same shapes: S2_ERR_INVALID naming the
 * tensor otherwise). Synchronizes. */
s2_status s2_gm_save_state(s2_gm *m, s2_train_state *s, s2_error *err);
s2_status s2_gm_load_state(s2_gm *m, const s2_train_state *s, s2_error *err);

/* Reads one trainable gradient (fp32, numel of it) to the host; for checks. Synchronizes. */
s2_status s2_gm_read_grad(s2_gm *m, int i, float *dst, s2_error *err);
/* Reads / writes one trainable master (fp32) and refreshes its dtype copy; for checks and
 * for loading an adapter. Synchronizes. */
s2_status s2_gm_read_param(s2_gm *m, int i, float *dst, s2_error *err);
s2_status s2_gm_write_param(s2_gm *m, int i, const float *src, s2_error *err);

/* Writes the adapters as a PEFT adapter directory, and (when the spec trains whole tensors)
 * those tensors to trainable_path under their HF names (NULL: not written). */
s2_status s2_gm_export(s2_gm *m, const char *adapter_dir, const char *base_model,
                       const char *trainable_path, s2_error *err);

/* Full mode: writes the whole model as a Hugging Face checkpoint into dir (model.safetensors
 * in the spec's dtype under HF names, config.json copied from src_model_dir). */
s2_status s2_gm_export_full(s2_gm *m, const char *dir, const char *src_model_dir, s2_error *err);

/* Loads adapters (and, with trainable_path, the whole trainable tensors) into the masters. */
s2_status s2_gm_import(s2_gm *m, const char *adapter_dir, const char *trainable_path,
                       s2_error *err);

#endif

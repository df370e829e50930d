/*
 * train_io.h — the trainer's checkpoint formats (prefix s2_ckpt_).
 *
 * In: a Hugging Face LLaMA checkpoint directory (config.json plus model.safetensors, or
 * model.safetensors.index.json and its shards), checked against the spec's model section.
 * Out: a PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors) that
 * PEFT's PeftModel.from_pretrained loads as is, and the whole tensors trained beside the
 * adapters (lora.trainable: embeddings, norms, head) in a second safetensors file under their
 * Hugging Face names; and the readers of both, which check them against the spec.
 *
 * Nothing here prints or exits. Every error names the file, and the tensor with the shape
 * found and the shape expected where there is one. Every write is atomic (temporary file,
 * rename), so a crash mid-save leaves the previous checkpoint whole.
 *
 * Adapter matrices cross this interface as fp32 host arrays in PEFT's layouts (A [r, in],
 * B [out, r], row-major), indexed by S2_CKPT_SLOT(layer, proj): an array of
 * num_layers * S2_PROJ_COUNT pointers, where only the projections the spec adapts
 * (s2_lora_plan.lin[p].adapted) are read or written and the others may be NULL.
 */
#ifndef S2_TRAIN_IO_H
#define S2_TRAIN_IO_H

#include <stddef.h>
#include <stdint.h>

#include "gen/lora_plan.h"
#include "gen/spec.h"
#include "runtime/core/progress.h"
#include "runtime/core/st.h"

/* Index of one projection's adapter matrix in the pointer arrays below. */
#define S2_CKPT_SLOT(layer, proj) ((layer) * S2_PROJ_COUNT + (proj))

/* config.json, as read (defaults filled). */
typedef struct s2_hf_config {
    int hidden_size;
    int intermediate_size;
    int num_hidden_layers;
    int num_attention_heads;
    int num_key_value_heads;     /* default num_attention_heads */
    int head_dim;                /* default hidden_size / num_attention_heads */
    int vocab_size;
    int max_position_embeddings;
    int tie_word_embeddings;     /* 0/1, default 0 */
    double rms_norm_eps;
    double rope_theta;           /* default 10000 */
    double rope_scaling_factor;  /* linear scaling's factor; 0 when rope_scaling is null/absent */
    char torch_dtype[32];        /* "bfloat16", ... ("torch_dtype" or the newer "dtype"); "" if absent */
} s2_hf_config;

typedef struct s2_ckpt s2_ckpt;

/*
 * Opens the Hugging Face checkpoint in dir: parses and validates config.json (required keys,
 * types; rope_scaling null, linear under "type" or "rope_type", or "default" meaning none;
 * any other type is refused; transformers 5's "rope_parameters" read the same way, its
 * rope_theta too when the top level has none), then reads dir/model.safetensors or, when that is
 * absent, dir/model.safetensors.index.json and every shard it names (each read once and kept
 * in memory until s2_ckpt_close). Every tensor the index maps must exist in its shard. On
 * success *out is the caller's, to free with s2_ckpt_close; on failure *out is NULL and
 * err says which file and what (S2_ERR_IO: a file is missing or unreadable; S2_ERR_PARSE:
 * a file is not what its format says).
 */
s2_status s2_ckpt_open(const char *dir, s2_ckpt **out, s2_error *err);

/* The same, reporting the bytes of the safetensors files read so far to progress (may be
 * NULL) after each file, for a caller's progress line on a multi-GiB load. */
s2_status s2_ckpt_open_progress(const char *dir, s2_progress_fn progress, void *ctx,
                                s2_ckpt **out, s2_error *err);

/*
 * The same checks, reading only config.json, the index and every safetensors file's header:
 * the tensors' names, dtypes and shapes are there for s2_ckpt_check, their data is not
 * (s2_ckpt_read_f32 refuses). For checking a multi-GiB checkpoint before a run.
 */
s2_status s2_ckpt_open_headers(const char *dir, s2_ckpt **out, s2_error *err);

/* Frees the checkpoint and everything its tensors point into. NULL is fine. */
void s2_ckpt_close(s2_ckpt *ck);

/* The parsed config.json; owned by ck. */
const s2_hf_config *s2_ckpt_config(const s2_ckpt *ck);

/* The tensor of that Hugging Face name, NULL if the checkpoint has none; owned by ck. */
const s2_tensor *s2_ckpt_tensor(const s2_ckpt *ck, const char *name);

/* The path of the file that holds the tensor (for messages), NULL if absent; owned by ck. */
const char *s2_ckpt_tensor_path(const s2_ckpt *ck, const char *name);

/*
 * Checks the checkpoint against the spec's model section: first config.json's values
 * (S2_ERR_SPEC naming both sides, e.g. "DIR/config.json: num_key_value_heads = 8, spec
 * model.num_kv_heads = 32"; a linear rope_scaling factor must equal the spec's rope_factor),
 * then every tensor the model needs: present, with Hugging Face LLaMA's shape and a float
 * dtype (BF16, F16 or F32); lm_head.weight only when the embeddings are not tied
 * (S2_ERR_INVALID naming file, tensor, shape found and expected). Reports the first problem.
 */
s2_status s2_ckpt_check(const s2_ckpt *ck, const s2_spec *spec, s2_error *err);

/*
 * What a checkpoint's rope_scaling must be against the spec. MATCH (s2_ckpt_check): absent or
 * null (a base model), or linear with the spec's rope_factor; another factor is refused with a
 * message naming the ways out. SPEC: any linear factor is taken, and the spec's rope_factor
 * replaces it: positions are divided by ceil(context_length / model.max_position_embeddings),
 * counted from the original pre-training length (Hugging Face's linear scaling divides the
 * position by the factor, whatever max_position_embeddings says; a LongLoRA-extended
 * checkpoint keeps the base model's max_position_embeddings beside its factor). This continues
 * an already-extended model (made for 32k) at a longer context (100k): the factors are not
 * multiplied, the new one is the whole interpolation.
 */
typedef enum s2_rope_policy { S2_ROPE_MATCH = 0, S2_ROPE_SPEC } s2_rope_policy;

/*
 * A checkpoint's config.json text (path for messages) with its RoPE scaling set to the spec's:
 * "rope_scaling" {"type": "linear", "factor": rope_factor}, or null at factor 1 (transformers
 * 5's "rope_parameters", when the file has it, gets rope_type and factor instead); everything
 * else kept. For a model trained at the spec's factor (train --mode full). *out is heap.
 */
s2_status s2_ckpt_config_with_spec_rope(const char *json_text, const char *path,
                                        const s2_spec *spec, char **out, s2_error *err);
s2_status s2_ckpt_check_rope(const s2_ckpt *ck, const s2_spec *spec, s2_rope_policy rope,
                             s2_error *err);

/*
 * Copies tensor `name` into dst as fp32 (from BF16, F16 or F32), n = its element count.
 * S2_ERR_INVALID when the tensor is absent, not a float dtype, or n differs.
 */
s2_status s2_ckpt_read_f32(const s2_ckpt *ck, const char *name, float *dst, size_t n,
                           s2_error *err);

/*
 * Writes a PEFT LoRA adapter into dir (created if needed): adapter_model.safetensors with
 * every adapted projection's lora_A [r, in] and lora_B [out, r] of every layer, named by
 * s2_lora_tensor_name, converted from fp32 to the spec's dtype (round to nearest even),
 * metadata {"format": "pt"}; then adapter_config.json as PEFT writes it (indent 2, sorted
 * keys; r, lora_alpha, lora_dropout and target_modules from the spec; base_model_name_or_path
 * as given, NULL meaning ""). lora_A / lora_B: see S2_CKPT_SLOT; the caller keeps them.
 * S2_ERR_INVALID when an adapted slot is NULL.
 */
s2_status s2_ckpt_save_adapter(const char *dir, const s2_spec *spec, const char *base_model,
                               const float *const *lora_A, const float *const *lora_B,
                               s2_error *err);

/*
 * Reads an adapter directory back into the caller's fp32 buffers (same slots and shapes as
 * s2_ckpt_save_adapter; adapted slots must be non-NULL). adapter_config.json must be LoRA with
 * the spec's r, lora_alpha and target_modules (S2_ERR_SPEC naming both sides) and without
 * rsLoRA or DoRA; every adapter tensor must be present with lora_plan's shape and a float
 * dtype, and the file may hold no adapter tensor the spec does not (S2_ERR_INVALID naming file,
 * tensor and shapes). The buffers' contents are unspecified on failure.
 */
s2_status s2_ckpt_load_adapter(const char *dir, const s2_spec *spec, float *const *lora_A,
                               float *const *lora_B, s2_error *err);

/* Every check of s2_ckpt_load_adapter, on the config and the tensor file's header alone. */
s2_status s2_ckpt_check_adapter(const char *dir, const s2_spec *spec, s2_error *err);

/* One whole trainable tensor: its Hugging Face name and shape. */
typedef struct s2_ckpt_param {
    char name[96];
    int ndim;
    int64_t shape[2];
} s2_ckpt_param;

/*
 * The whole tensors the spec's lora.trainable names, in model order: embed ->
 * model.embed_tokens.weight [vocab, hidden]; norm -> model.layers.N.input_layernorm.weight and
 * .post_attention_layernorm.weight [hidden] of every layer, then model.norm.weight; lm_head ->
 * lm_head.weight [vocab, hidden] (model.embed_tokens.weight, once, when the embeddings are
 * tied). *out is a heap array of *n entries (NULL when none), the caller frees it.
 */
s2_status s2_ckpt_trainable_params(const s2_spec *spec, s2_ckpt_param **out, int *n,
                                   s2_error *err);

/*
 * Writes n whole tensors (fp32 host data of params[i]'s shape, the caller's) to the
 * safetensors file at path, converted to dtype (F32, BF16 or F16), metadata {"format": "pt"};
 * atomic.
 */
s2_status s2_ckpt_save_trainable(const char *path, s2_st_dtype dtype, int n,
                                 const s2_ckpt_param *params, const float *const *data,
                                 s2_error *err);

/*
 * Reads the n tensors of params back from path into the caller's fp32 buffers: each must be
 * present with its shape and a float dtype (S2_ERR_INVALID naming file, tensor and shapes).
 */
s2_status s2_ckpt_load_trainable(const char *path, int n, const s2_ckpt_param *params,
                                 float *const *data, s2_error *err);

/* The header of a trainable-tensor file against the tensors the spec trains whole
 * (s2_ckpt_trainable_params): each present with its shape and a float dtype. */
s2_status s2_ckpt_check_trainable(const char *path, const s2_spec *spec, s2_error *err);

/*
 * Writes a freshly initialised model of the spec's shape as a Hugging Face LLaMA checkpoint in
 * dir (created if needed): config.json (the spec's model section; rope_scaling linear with the
 * spec's rope_factor when it is above 1, else null) and model.safetensors in the spec's dtype,
 * initialised as transformers initialises LlamaForCausalLM: every linear and the embeddings
 * normal(0, 0.02), every norm 1 (a seeded splitmix64 / Box-Muller stream, the same for a seed on
 * every machine). Both files are written atomically.
 */
s2_status s2_ckpt_init_random(const char *dir, const s2_spec *spec, uint64_t seed, s2_error *err);
/* The same, reporting the bytes of weights initialised so far to progress (may be NULL). */
s2_status s2_ckpt_init_random_progress(const char *dir, const s2_spec *spec, uint64_t seed,
                                       s2_progress_fn progress, void *progress_ctx,
                                       s2_error *err);

#endif

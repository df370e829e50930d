/*
 * train.h — the trainer (`s2lora train`) and the evaluator (`s2lora eval`) on the GPU model of
 * model.h. LongLoRA's recipe: a Hugging Face LLaMA checkpoint trained at a short context, RoPE
 * positions interpolated linearly to the spec's context (rope_factor), LoRA on the spec's
 * targets plus the whole tensors lora.trainable names ("LoRA+"), S²-Attn while training and
 * full attention when evaluating.
 *
 * One optimizer step = grad_accum micro-batches, each `batch` packed sequences of
 * context_length tokens from the token file (data.h: documents packed as LongLoRA packs them, in
 * an order shuffled by data_seed) run as one varlen batch (every sequence its own positions and
 * attention), on each of the data-parallel ranks (train_dp.h: rank r of dp takes global
 * sequences P + m * dp + r, m < grad_accum x batch); loss = the mean over every labelled token
 * of the step (HF's num_items_in_batch), gradient clipping by the global L2 norm, AdamW, the LR
 * schedule of ref_train.h (constant after warmup, LongLoRA's, or cosine). Every save_every
 * steps the training state (train_state.h: masters, moments, step, data position, seeds) is
 * saved atomically and the adapter is exported as PEFT; --resume continues from the last state
 * exactly (same data order, same dropout masks).
 *
 * Progress: one line per step through the callback (loss, lr, grad norm, tokens/s, MFU,
 * memory), and the same as JSON lines in log_path (emptied when a fresh run starts, appended to
 * by a resumed one). Nothing prints by itself.
 */
#ifndef S2_TRAIN_H
#define S2_TRAIN_H

#include <stdint.h>

#include "gen/spec.h"
#include "runtime/core/rt.h"
#include "runtime/core/train_io.h"

typedef void (*s2_train_progress)(void *ctx, const char *line);

typedef enum s2_schedule { S2_SCHED_CONSTANT = 0, S2_SCHED_COSINE = 1 } s2_schedule;

typedef struct s2_train_opts {
    const s2_spec *spec;
    const char *model_dir;     /* Hugging Face checkpoint */
    const char *data_path;     /* token file (s2lora data) */
    const char *out_dir;       /* state/, adapter/, trainable.safetensors, log */
    const char *cache_dir;     /* kernel cache (NULL: default) */
    const char *log_path;      /* JSON lines; NULL: OUT/train.jsonl */
    int64_t steps;             /* optimizer steps to reach (a resumed run counts from its state) */
    int grad_accum;            /* micro-batches per step (LongLoRA: 8) */
    int batch;                 /* sequences a micro-batch, packed as one varlen batch (1: one
                                  sequence; more run the step in fewer, larger kernels: short
                                  sequences on a small model are bound by launches) */
    int seqlen;                /* tokens a sequence (0: the spec's context_length) */
    double lr;                 /* LongLoRA: 2e-5 */
    int64_t warmup;            /* LongLoRA: 20 */
    s2_schedule schedule;
    double weight_decay;       /* LongLoRA: 0 */
    double beta1, beta2, eps;  /* torch's AdamW defaults */
    double max_grad_norm;      /* 0: no clipping; HF's default 1 */
    int64_t save_every;        /* 0: only at the end */
    int keep_last;             /* states kept */
    uint64_t seed;             /* data order, adapter init and dropout */
    int resume;                /* continue from OUT/state when it exists */
    int full_attention;        /* train with full causal attention instead of S²-Attn */
    int full;                  /* "full" mode (LongLoRA's Full-FT): every weight trained, the
                                  result a whole HF checkpoint in OUT/model; 0: LoRA+ */
    int recompute;             /* S2_GM_RECOMPUTE_* (model.h); 0: auto */
    struct s2_dp *dist;        /* data parallel over NCCL (train_dp.h): this rank's side; rank 0
                                  alone writes OUT and reports. NULL: one GPU, no NCCL */
    int sp;                    /* sequence-parallel ranks a sequence (train_dp.h's layout:
                                  dist's world is dp x sp); 0 or 1: none. > 1 needs dist */
    const struct s2_state_info *resume_from; /* with resume: the state to load, as
                                  s2_state_peek_latest found it (the ranks agreed on it); NULL:
                                  OUT/state's latest */
    s2_train_progress progress;
    void *progress_ctx;
    int rope_spec;             /* 1: the spec's rope_factor replaces the checkpoint's rope_scaling
                                  (an already-extended model trained further: S2_ROPE_SPEC,
                                  train_io.h); 0: they must match */
    s2_progress_fn load_progress; /* may be NULL: the checkpoint's load, in bytes */
    void *load_progress_ctx;
} s2_train_opts;

/* Fills the defaults above (LongLoRA's recipe) for spec. */
void s2_train_opts_default(s2_train_opts *o, const s2_spec *spec);

s2_status s2_train_run(const s2_rt *rt, const s2_train_opts *o, s2_error *err);

/*
 * What s2_train_run reads and writes, checked without a device (so a bad file is reported
 * before a GPU is asked for): the options; the checkpoint's config.json and safetensors
 * headers against the spec (names, shapes, dtypes; no tensor data is read); the token file's
 * header, size and index (its vocabulary within the model's, at least one sequence of
 * seqlen); the output directory (and state/, adapter/ or model/, trainable.safetensors, the
 * log) writable or creatable; with resume, OUT/state's latest and the header of the state it
 * names, trained with this spec. Creates and changes nothing.
 */
s2_status s2_train_check(const s2_train_opts *o, s2_error *err);

typedef struct s2_eval_opts {
    const s2_spec *spec;
    const char *model_dir;
    const char *adapter_dir;     /* NULL: the base model alone */
    const char *trainable_path;  /* whole trainable tensors (NULL: none) */
    const char *data_path;
    const char *cache_dir;
    int seqlen;                  /* window (0: the spec's context_length) */
    int stride;                  /* tokens between window starts (0: seqlen, no overlap) */
    int64_t max_windows;         /* 0: all */
    int s2attn;                  /* 1: evaluate with S²-Attn instead of full attention */
    s2_train_progress progress;
    void *progress_ctx;
    int rope_spec;               /* as s2_train_opts.rope_spec */
    s2_progress_fn load_progress; /* may be NULL: the checkpoint's load, in bytes */
    void *load_progress_ctx;
} s2_eval_opts;

typedef struct s2_eval_result {
    double nll_sum;
    int64_t count;    /* scored tokens */
    int64_t windows;
    double ppl;       /* exp(nll_sum / count) */
    double tokens_per_s;
} s2_eval_result;

/*
 * Passkey retrieval (LongLoRA's test) on the byte-level vocabulary of s2lora data: each trial
 * is passkey.h's prompt of seqlen - 6 tokens (a five-digit key at a random depth in filler
 * text, the question "What is the pass key? The pass key is" at the end), then greedy decoding
 * of the answer " NNNNN" (the space and the digits, six tokens; one full forward each, full
 * attention): a trial counts when all six are right. Trial t draws its key and depth from
 * (seed, t). Needs a model with the byte vocabulary (vocab_size >= 264).
 */
typedef struct s2_passkey_result {
    int trials, correct;
    double accuracy;
} s2_passkey_result;

s2_status s2_passkey_run(const s2_rt *rt, const s2_eval_opts *o, int trials, uint64_t seed,
                         s2_passkey_result *res, s2_error *err);

/*
 * Perplexity with full causal attention over windows of seqlen tokens of the file taken every
 * stride tokens (LongLoRA's sliding-window evaluation): in each window every position but the
 * first predicts the next token; a window that overlaps the previous one scores only the
 * tokens the previous did not, so each token is scored once.
 */
s2_status s2_eval_run(const s2_rt *rt, const s2_eval_opts *o, s2_eval_result *res,
                      s2_error *err);

/*
 * What s2_eval_run and s2_passkey_run read, checked without a device: the options, the model
 * files (s2_model_files_check), and with a data_path the token file's header (vocabulary,
 * at least seqlen + 1 tokens).
 */
s2_status s2_eval_check(const s2_eval_opts *o, s2_error *err);

/*
 * A checkpoint directory's config.json and safetensors headers against the spec
 * (s2_ckpt_check; no tensor data is read), and, when given, an adapter directory and a
 * trainable-tensor file (their JSON and headers).
 */
s2_status s2_model_files_check(const s2_spec *spec, const char *model_dir,
                               const char *adapter_dir, const char *trainable_path,
                               s2_error *err);
/* The same with the checkpoint's rope_scaling held to rope (train_io.h). */
s2_status s2_model_files_check_rope(const s2_spec *spec, const char *model_dir,
                                    const char *adapter_dir, const char *trainable_path,
                                    s2_rope_policy rope, s2_error *err);

/*
 * An output can be written: a directory (is_dir) that exists and can be written in, or that
 * can be created (its nearest existing ancestor can be written in); or a file that is absent
 * or regular, in an existing directory that can be written in.
 */
s2_status s2_output_check(const char *path, int is_dir, s2_error *err);

#endif

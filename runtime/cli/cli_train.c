/*
 * cli_train.c — the `s2lora train` and `s2lora eval` subcommands (part of the s2lora binary,
 * beside main.c): argument parsing, progress on stderr, the summary on stdout. The work is in
 * train.h; this file only translates between it and a terminal, and, for `train` on several
 * ranks (train_dp.h), sets up what the trainer is handed: the world, the checked inputs, the
 * rendezvous, the GPU, the watchdog and the NCCL communicator, in that order.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gen/spec.h"
#include "runtime/cli/cli.h"
#include "runtime/train/data.h"
#include "runtime/dist/dist.h"
#include "runtime/train/model.h"
#include "runtime/core/nccl.h"
#include "runtime/core/rt.h"
#include "runtime/core/st.h"
#include "runtime/train/train.h"
#include "runtime/train/train_dp.h"
#include "runtime/core/train_io.h"
#include "runtime/train/train_state.h"


#define TRAIN_ABOUT \
    "Extends a Hugging Face LLaMA checkpoint (--model: config.json and safetensors) to the\n" \
    "spec's context_length the LongLoRA way: RoPE interpolated by the spec's rope_factor,\n" \
    "LoRA on lora.targets plus the whole tensors lora.trainable names, S2-Attn while\n" \
    "training. --data is a token file (s2lora data); each micro-batch is --batch packed\n" \
    "sequences (default 1) of --seqlens tokens (default context_length), run as one varlen\n" \
    "batch (each sequence its own positions and attention), --grad-accum of them per step.\n" \
    "Defaults are LongLoRA's: lr 2e-5, warmup 20 then constant, weight decay 0, 8\n" \
    "micro-batches, AdamW (0.9, 0.999, 1e-8), gradient clipping at norm 1, 1000 steps.\n" \
    "Every --save-every steps (default 100) and at the end: OUT/state (resumable, atomic),\n" \
    "OUT/adapter (PEFT: adapter_config.json, adapter_model.safetensors) and\n" \
    "OUT/trainable.safetensors (embeddings and norms under their HF names). --resume\n" \
    "continues from OUT/state exactly. One line per step on stderr (on a terminal, one\n" \
    "line redrawn with a bar of the run); JSON lines in\n" \
    "OUT/train.jsonl (or --log). --mode full trains every weight instead (LongLoRA's\n" \
    "Full-FT; fp32 masters and AdamW moments of the whole model must fit on the GPU) and\n" \
    "writes the whole model as a Hugging Face checkpoint to OUT/model.\n" \
    "--recompute: what the backward recomputes. layer: each layer's input is kept and the\n" \
    "whole layer recomputed (least memory); mlp: the attention half's activations are kept\n" \
    "per layer too, and only the MLP's gate/up is recomputed (faster, about 7 x hidden x 2\n" \
    "bytes a token a layer more); auto (default): mlp when that fits in half of the free\n" \
    "device memory. The choice is said when training starts.\n" \
    "Several GPUs (data parallel): start one rank a GPU with `s2lora launch --gpus N --\n" \
    "train ...`, srun or mpirun (--rendezvous or S2LORA_RENDEZVOUS: where they meet).\n" \
    "A step then takes N x --grad-accum x --batch sequences; rank r trains on global\n" \
    "sequences P + m x N + r (P: the state's data position); gradients are all-reduced\n" \
    "as the backward runs; optimizer states are replicated; rank 0 writes OUT. --dp is the\n" \
    "world size / --sp (the default). --sp P (sequence parallel): the ranks form groups of\n" \
    "P consecutive ranks that share each sequence, rank d x P + s holding chunk s (rows\n" \
    "aligned to 128; S2-Attn with shift_mode split only), exchanging K/V halos over NCCL;\n" \
    "the sequence's last row is then unlabelled. P must divide the world (--batch 1).\n" \
    "--resume on another number of GPUs or --batch keeps the state's global batch:\n" \
    "--grad-accum is derived (or checked). S2LORA_NCCL_TIMEOUT: seconds a collective may\n" \
    "take before the run is aborted (default 600).\n"

/* Each subcommand's arguments: the library's options and what only the command line has. */
typedef struct train_args {
    s2_train_opts o;
    const char *spec[1];
    int n_spec;
    s2_spec_override sets[S2_CLI_MAX_SETS];
    int n_sets;
    int seqlens[1], n_seqlens;
    int grad_accum, dp, sp; /* 0: not given */
    const char *schedule, *mode, *recompute, *rdzv, *rope;
} train_args;

static const char *const schedule_values[] = {"constant", "cosine", NULL};
static const char *const mode_values[] = {"lora", "full", NULL};
static const char *const recompute_values[] = {"auto", "layer", "mlp", NULL};
static const char *const rope_values[] = {"match", "spec", NULL};

#define OPT_SET(T)                                                                              \
    S2_OPT_SETS_AT(T, sets, n_sets, "override a spec value, e.g. --set context_length=32768")
#define OPT_MODEL(T, F)                                                                         \
    {.name = "model", .short_name = 'm', .kind = S2_OPT_STRING, .metavar = "DIR",              \
     .help = "the Hugging Face checkpoint (config.json and safetensors)", .off = offsetof(T, F), \
     .flags = S2_OPT_REQUIRED, .complete = S2_COMPLETE_DIR}
#define OPT_CACHE(T, F)                                                                         \
    S2_OPT_CACHE_DIR_AT(T, F, "kernel cache directory (see 's2lora build --help')")
#define OPT_ROPE(T, F)                                                                          \
    {.name = "rope-scaling", .kind = S2_OPT_ENUM, .help = "match (default): a checkpoint's "   \
     "linear rope_scaling factor must be the spec's; spec: the spec's factor replaces it (an "  \
     "already-extended model, e.g. made for 32k, trained or evaluated at 100k; see README)",    \
     .values = rope_values, .off = offsetof(T, F)}
#define OPT_SEQLEN_ONE(T, H)                                                                    \
    {.name = "seqlens", .short_name = 's', .kind = S2_OPT_LIST, .metavar = "N", .help = H,     \
     .off = offsetof(T, seqlens), .lo = 2, .hi = 1 << 24, .max_count = 1,                      \
     .count_off = offsetof(T, n_seqlens)},                                                      \
    {.name = "seqlen", .kind = S2_OPT_LIST, .metavar = "N", .alias_of = "seqlens"}

static const s2_opt train_opts[] = {
    OPT_MODEL(train_args, o.model_dir),
    {.name = "data", .short_name = 'd', .kind = S2_OPT_STRING, .metavar = "FILE",
     .help = "the token file (s2lora data)", .off = offsetof(train_args, o.data_path),
     .flags = S2_OPT_REQUIRED, .complete = S2_COMPLETE_FILE},
    {.name = "out", .short_name = 'o', .kind = S2_OPT_STRING, .metavar = "DIR",
     .help = "the run's directory: state/, adapter/ (or model/), trainable.safetensors, the log",
     .off = offsetof(train_args, o.out_dir), .flags = S2_OPT_REQUIRED,
     .complete = S2_COMPLETE_DIR},
    OPT_SET(train_args),
    {.name = "steps", .kind = S2_OPT_I64, .metavar = "N", .help = "optimizer steps (default 1000)",
     .off = offsetof(train_args, o.steps), .lo = 0, .hi = LLONG_MAX},
    {.name = "grad-accum", .kind = S2_OPT_INT, .metavar = "N",
     .help = "micro-batches a step (default 8; on --resume derived from the state)",
     .off = offsetof(train_args, grad_accum), .lo = 1, .hi = INT_MAX},
    {.name = "batch", .kind = S2_OPT_INT, .metavar = "N",
     .help = "packed sequences a micro-batch, one varlen batch (default 1; more: fewer, larger "
             "kernels a step)", .off = offsetof(train_args, o.batch), .lo = 1, .hi = 1 << 20},
    OPT_SEQLEN_ONE(train_args, "tokens of a packed sequence (default context_length)"),
    {.name = "lr", .kind = S2_OPT_DOUBLE, .metavar = "X", .help = "peak learning rate (2e-5)",
     .off = offsetof(train_args, o.lr), .dlo = 0, .dhi = INFINITY},
    {.name = "warmup", .kind = S2_OPT_I64, .metavar = "N", .help = "warm-up steps (20)",
     .off = offsetof(train_args, o.warmup), .lo = 0, .hi = LLONG_MAX},
    {.name = "schedule", .kind = S2_OPT_ENUM, .help = "after the warm-up (default constant)",
     .values = schedule_values, .off = offsetof(train_args, schedule)},
    {.name = "weight-decay", .kind = S2_OPT_DOUBLE, .metavar = "X", .help = "AdamW's (0)",
     .off = offsetof(train_args, o.weight_decay), .dlo = 0, .dhi = INFINITY},
    {.name = "max-grad-norm", .kind = S2_OPT_DOUBLE, .metavar = "X",
     .help = "gradient clipping norm (1; 0: none)", .off = offsetof(train_args, o.max_grad_norm),
     .dlo = 0, .dhi = INFINITY},
    {.name = "save-every", .kind = S2_OPT_I64, .metavar = "N",
     .help = "steps between saves (100; 0: at the end only)",
     .off = offsetof(train_args, o.save_every), .lo = 0, .hi = LLONG_MAX},
    {.name = "keep-last", .kind = S2_OPT_INT, .metavar = "N", .help = "states kept",
     .off = offsetof(train_args, o.keep_last), .lo = 0, .hi = INT_MAX},
    {.name = "seed", .kind = S2_OPT_U64, .metavar = "N",
     .help = "data order, adapter init and dropout", .off = offsetof(train_args, o.seed)},
    {.name = "resume", .kind = S2_OPT_FLAG, .help = "continue from OUT/state exactly",
     .off = offsetof(train_args, o.resume)},
    {.name = "full-attention", .kind = S2_OPT_FLAG,
     .help = "train with full causal attention instead of S2-Attn",
     .off = offsetof(train_args, o.full_attention)},
    {.name = "mode", .kind = S2_OPT_ENUM, .help = "lora (LoRA+, default) or full fine-tuning",
     .values = mode_values, .off = offsetof(train_args, mode)},
    {.name = "recompute", .kind = S2_OPT_ENUM, .help = "what the backward recomputes (auto)",
     .values = recompute_values, .off = offsetof(train_args, recompute)},
    OPT_ROPE(train_args, rope),
    {.name = "log", .kind = S2_OPT_STRING, .metavar = "FILE",
     .help = "JSON lines (default OUT/train.jsonl)", .off = offsetof(train_args, o.log_path),
     .complete = S2_COMPLETE_FILE},
    OPT_CACHE(train_args, o.cache_dir),
    {.name = "dp", .kind = S2_OPT_INT, .metavar = "D",
     .help = "data-parallel ranks (default world size / --sp)", .off = offsetof(train_args, dp),
     .lo = 1, .hi = 1 << 20},
    {.name = "sp", .kind = S2_OPT_INT, .metavar = "P",
     .help = "sequence-parallel ranks a sequence", .off = offsetof(train_args, sp), .lo = 1,
     .hi = 1 << 20},
    {.name = "rendezvous", .kind = S2_OPT_STRING, .metavar = "file:PATH|tcp:HOST:PORT",
     .help = "where the ranks meet (default S2LORA_RENDEZVOUS)",
     .off = offsetof(train_args, rdzv)},
};

const s2_cmd s2_cmd_train = {
    .name = "train",
    .usage = "SPEC --model DIR --data FILE --out DIR [--set KEY=VALUE]...\n"
             "                    [--steps N] [--grad-accum N] [--batch N] [--seqlens N] [--lr X]\n"
             "                    [--warmup N] [--schedule constant|cosine] [--weight-decay X]\n"
             "                    [--max-grad-norm X] [--save-every N] [--keep-last N] [--seed N]\n"
             "                    [--resume] [--full-attention] [--mode lora|full]\n"
             "                    [--recompute auto|layer|mlp] [--rope-scaling match|spec]\n"
             "                    [--log FILE] [--cache-dir DIR] [--dp D] [--sp P]\n"
             "                    [--rendezvous file:PATH|tcp:HOST:PORT]",
    .about = TRAIN_ABOUT,
    .epilog = "Exit status 1 on an error, 2 on a usage error, 3 with no CUDA device.\n",
    .opts = train_opts, .n_opts = sizeof train_opts / sizeof train_opts[0],
    S2_POS_SPEC(train_args, spec, n_spec, 1),
};

typedef struct eval_args {
    s2_eval_opts o;
    const char *spec[1];
    int n_spec;
    s2_spec_override sets[S2_CLI_MAX_SETS];
    int n_sets;
    int seqlens[1], n_seqlens, passkey;
    uint64_t seed;
    const char *rope;
} eval_args;

static const s2_opt eval_opts[] = {
    OPT_MODEL(eval_args, o.model_dir),
    {.name = "data", .short_name = 'd', .kind = S2_OPT_STRING, .metavar = "FILE",
     .help = "the token file to score", .off = offsetof(eval_args, o.data_path),
     .complete = S2_COMPLETE_FILE},
    {.name = "adapter", .kind = S2_OPT_STRING, .metavar = "DIR",
     .help = "a PEFT adapter a train run wrote", .off = offsetof(eval_args, o.adapter_dir),
     .complete = S2_COMPLETE_DIR},
    {.name = "trainable", .kind = S2_OPT_STRING, .metavar = "FILE",
     .help = "whole trainable tensors (with --adapter)",
     .off = offsetof(eval_args, o.trainable_path), .complete = S2_COMPLETE_FILE},
    OPT_SET(eval_args),
    OPT_SEQLEN_ONE(eval_args, "window tokens (default context_length)"),
    {.name = "stride", .kind = S2_OPT_INT, .metavar = "N",
     .help = "tokens between window starts (default seqlen)",
     .off = offsetof(eval_args, o.stride), .lo = 1, .hi = INT_MAX},
    {.name = "max-windows", .kind = S2_OPT_I64, .metavar = "N", .help = "at most N windows",
     .off = offsetof(eval_args, o.max_windows), .lo = 1, .hi = LLONG_MAX},
    {.name = "s2attn", .kind = S2_OPT_FLAG, .help = "the training attention instead of full",
     .off = offsetof(eval_args, o.s2attn)},
    OPT_CACHE(eval_args, o.cache_dir),
    {.name = "passkey", .kind = S2_OPT_INT, .metavar = "TRIALS",
     .help = "passkey retrieval instead of perplexity", .off = offsetof(eval_args, passkey),
     .lo = 1, .hi = 1000000},
    {.name = "seed", .kind = S2_OPT_U64, .metavar = "N", .help = "the passkey prompts' (1)",
     .off = offsetof(eval_args, seed)},
    OPT_ROPE(eval_args, rope),
};

const s2_cmd s2_cmd_eval = {
    .name = "eval",
    .usage = "SPEC --model DIR --data FILE [--adapter DIR] [--trainable FILE]\n"
             "                   [--set KEY=VALUE]... [--seqlens N] [--stride N] [--max-windows N]\n"
             "                   [--s2attn] [--cache-dir DIR] [--rope-scaling match|spec]\n"
             "       s2lora eval SPEC --model DIR --passkey TRIALS [--seed N] [--seqlens N] ...",
    .about = "Perplexity of the model (with the adapter and trainable tensors a train run wrote)\n"
             "over a token file, with full causal attention (--s2attn: the training attention) in\n"
             "windows of --seqlens tokens (default context_length) every --stride tokens (default\n"
             "seqlen); a token is scored once, by the first window that predicts it.\n"
             "--passkey runs LongLoRA's passkey retrieval instead (byte-level vocabulary): TRIALS\n"
             "prompts of --seqlens tokens with a five-digit key at a random depth, greedy\n"
             "decoding of the answer (a space, then the key) with full attention; prints the\n"
             "accuracy.\n",
    .epilog = "Exit status 1 on an error, 2 on a usage error, 3 with no CUDA device.\n",
    .opts = eval_opts, .n_opts = sizeof eval_opts / sizeof eval_opts[0],
    S2_POS_SPEC(eval_args, spec, n_spec, 1),
};

typedef struct logits_args {
    const char *spec[1];
    int n_spec;
    s2_spec_override sets[S2_CLI_MAX_SETS];
    int n_sets;
    const char *model, *tokens, *out, *adapter, *trainable, *cache_dir, *rope;
    int s2attn, grads;
} logits_args;

static const s2_opt logits_opts[] = {
    OPT_MODEL(logits_args, model),
    {.name = "tokens", .kind = S2_OPT_STRING, .metavar = "FILE",
     .help = "safetensors: \"tokens\" I32 [T], optional \"cu_seqlens\" I32 [B+1]",
     .off = offsetof(logits_args, tokens), .flags = S2_OPT_REQUIRED,
     .complete = S2_COMPLETE_FILE},
    {.name = "out", .short_name = 'o', .kind = S2_OPT_STRING, .metavar = "OUT",
     .help = "the safetensors file to write", .off = offsetof(logits_args, out),
     .flags = S2_OPT_REQUIRED, .complete = S2_COMPLETE_FILE},
    {.name = "adapter", .kind = S2_OPT_STRING, .metavar = "DIR",
     .help = "a PEFT adapter a train run wrote", .off = offsetof(logits_args, adapter),
     .complete = S2_COMPLETE_DIR},
    {.name = "trainable", .kind = S2_OPT_STRING, .metavar = "FILE",
     .help = "whole trainable tensors (with --adapter)", .off = offsetof(logits_args, trainable),
     .complete = S2_COMPLETE_FILE},
    OPT_SET(logits_args),
    {.name = "s2attn", .kind = S2_OPT_FLAG, .help = "S2-Attn instead of full causal attention",
     .off = offsetof(logits_args, s2attn)},
    {.name = "grads", .kind = S2_OPT_FLAG, .help = "also the trainable tensors' gradients",
     .off = offsetof(logits_args, grads)},
    OPT_CACHE(logits_args, cache_dir),
    OPT_ROPE(logits_args, rope),
};

const s2_cmd s2_cmd_logits = {
    .name = "logits",
    .usage = "SPEC --model DIR --tokens FILE -o OUT [--adapter DIR]\n"
             "                     [--trainable FILE] [--set KEY=VALUE]... [--s2attn] [--grads]\n"
             "                     [--cache-dir DIR] [--rope-scaling match|spec]",
    .about = "Runs the model once on the tokens of FILE (safetensors: \"tokens\" I32 [T], optional\n"
             "\"cu_seqlens\" I32 [B+1] for a packed batch) and writes OUT (safetensors): \"logits\"\n"
             "F32 [T, vocab] and \"loss\" F64 [1] (HF's causal-LM loss: the mean over labelled\n"
             "positions). Full causal attention, or S2-Attn with --s2attn. --grads also runs the\n"
             "backward of that loss and writes each trainable tensor's gradient as\n"
             "\"grad.NAME\" (F32, the trainer's names: stacked adapters per projection group).\n"
             "For peer checks against transformers and PEFT (bench/peers/llama_peers.py).\n",
    .opts = logits_opts, .n_opts = sizeof logits_opts / sizeof logits_opts[0],
    S2_POS_SPEC(logits_args, spec, n_spec, 1),
};

typedef struct init_args {
    const char *spec[1];
    int n_spec;
    s2_spec_override sets[S2_CLI_MAX_SETS];
    int n_sets;
    const char *out;
    uint64_t seed;
    int force;
} init_args;

static const s2_opt init_opts[] = {
    {.name = "out", .short_name = 'o', .kind = S2_OPT_STRING, .metavar = "DIR",
     .help = "the checkpoint's directory: new, or empty (see --force)",
     .off = offsetof(init_args, out), .flags = S2_OPT_REQUIRED, .complete = S2_COMPLETE_DIR},
    OPT_SET(init_args),
    {.name = "seed", .kind = S2_OPT_U64, .metavar = "N", .help = "the weights' (0)",
     .off = offsetof(init_args, seed)},
    {.name = "force", .kind = S2_OPT_FLAG,
     .help = "write into a directory that is not empty: config.json and model.safetensors are "
             "replaced, other files stay",
     .off = offsetof(init_args, force)},
};

const s2_cmd s2_cmd_init = {
    .name = "init",
    .usage = "SPEC -o DIR [--set KEY=VALUE]... [--seed N] [--force]",
    .about = "Writes a freshly initialised model of SPEC's shape as a Hugging Face LLaMA checkpoint\n"
             "(config.json, model.safetensors in the spec's dtype), initialised as transformers\n"
             "does: linears and embeddings normal(0, 0.02), norms 1; the same seed gives the same\n"
             "weights everywhere. The start of a model trained from scratch (`s2lora train --mode\n"
             "full`). Needs no GPU. A directory that holds anything already is refused unless\n"
             "--force is given.\n",
    .opts = init_opts, .n_opts = sizeof init_opts / sizeof init_opts[0],
    S2_POS_SPEC(init_args, spec, n_spec, 1),
};

/*
 * Progress on stderr. On a terminal, the per-step lines ("step N/M ...") share one line that
 * ends in a bar of the run so far, redrawn each step; the other lines, and every line when
 * stderr is a file or a pipe (a log), are printed whole.
 */
static void progress(void *ctx, const char *line)
{
    static int on_bar; /* the cursor is at the end of a bar line */
    long long step = 0, total = 0;
    const int tty = isatty(STDERR_FILENO);
    if (tty && sscanf(line, "step %lld/%lld", &step, &total) == 2 && total > 0) {
        char bar[31];
        const int fill = (int)(30 * (step < total ? step : total) / total);
        for (int i = 0; i < 30; i++)
            bar[i] = i < fill ? '#' : '.';
        bar[30] = '\0';
        fprintf(stderr, "\r\033[K%s: %s [%s]", (const char *)ctx, line, bar);
        on_bar = 1;
        if (step >= total) {
            fputc('\n', stderr);
            on_bar = 0;
        }
        fflush(stderr);
        return;
    }
    if (on_bar)
        fputc('\n', stderr);
    on_bar = 0;
    fprintf(stderr, "%s: %s\n", (const char *)ctx, line);
}

static int failed(const char *prog, s2_error *err)
{
    fprintf(stderr, "%s: %s\n", prog, err->msg ? err->msg : s2_status_to_string(err->status));
    int code = err->status == S2_ERR_NO_DEVICE ? 3 : 1;
    s2_error_clear(err);
    return code;
}

#define WATCHDOG_GRACE_S 30

/* The watchdog's last resort (train_dp.h): the process did not end after the abort. */
static void watchdog_fatal(void *ctx, const char *msg)
{
    fprintf(stderr, "%s: %s; the process did not end within %d s of the abort: exiting\n",
            (const char *)ctx, msg, WATCHDOG_GRACE_S);
    _exit(1);
}

/* A refusal of the options' combination: the message, exit code 2. */
static int refused(const char *prog, s2_error *err)
{
    fprintf(stderr, "%s train: %s\n", prog, err->msg ? err->msg : "invalid options");
    s2_error_clear(err);
    return 2;
}

/*
 * The fingerprint part "data" of a data-parallel rank (every rank must train on the same
 * tokens): the token file opened, so its digest is verified before the rank meets the others
 * (s2_train_check, run before, has checked its header, vocabulary and the model's files).
 */
static s2_status check_inputs(const s2_train_opts *o, char *data_part, size_t cap,
                              s2_error *err)
{
    s2_data_file *df = NULL;
    s2_status st = s2_data_open(o->data_path, &df, err);
    if (!st) {
        char hex[2 * S2_DATA_DIGEST_SIZE + 1];
        s2_hex(df->digest, S2_DATA_DIGEST_SIZE, hex);
        snprintf(data_part, cap, "tokens %llu, documents %llu, vocab %u, digest %s",
                 (unsigned long long)df->n_tokens, (unsigned long long)df->n_docs, df->vocab,
                 hex);
    }
    s2_data_close(df);
    return st;
}

/*
 * One rank of a data-parallel run (train_dp.h): inputs checked, NCCL loaded, the rendezvous
 * (rank 0 hands out NCCL's unique id; every rank checks that all run the same build, spec,
 * options, tokens and resumed state), then this rank's GPU, the communicator under the
 * watchdog, and the trainer.
 */
static int train_dist(const char *prog, s2_train_opts *o, const s2_world *w, s2_env env,
                      const char *rdzv_flag, const s2_dp_layout *lay,
                      const s2_state_info *resume)
{
    static char rank_prog[96];
    if (w->rank) { /* ranks other than 0 say who they are (srun and mpirun mix the outputs) */
        snprintf(rank_prog, sizeof rank_prog, "%s (rank %d)", prog, w->rank);
        prog = rank_prog;
        o->progress_ctx = (void *)prog;
    }
    s2_error err = {0};
    s2_rdzv_addr addr;
    int have = 0;
    double rdzv_timeout = 0, nccl_timeout = 0;
    char data_part[256] = "", opts_text[2][512], resume_part[200];
    s2_status st = s2_rdzv_resolve(w, env, rdzv_flag, &addr, &have, &err);
    if (!st)
        st = s2_rdzv_timeout(env, &rdzv_timeout, &err);
    if (!st)
        st = s2_dp_timeout(env, &nccl_timeout, &err);
    if (!st)
        st = check_inputs(o, data_part, sizeof data_part, &err);
    for (int k = 0; k < 2 && !st; k++)
        if (s2_dp_options_text(o, lay, k, opts_text[k], sizeof opts_text[k]) < 0)
            st = s2_error_set(&err, S2_ERR_INVALID, "train: the options do not fit their "
                              "fingerprint text (%zu characters)", sizeof opts_text[k]);
    if (st)
        return failed(prog, &err);
    if (resume)
        snprintf(resume_part, sizeof resume_part, "resume %s (step %llu, data position %llu) "
                 "sha256 %s", resume->file, (unsigned long long)resume->step,
                 (unsigned long long)resume->data_position, resume->sha256);
    else
        snprintf(resume_part, sizeof resume_part, "a fresh start (no state resumed)");
    /* Static: NCCL stays loaded until the process ends (below), and its handle with it. */
    static s2_nccl *nccl = NULL;
    if (s2_nccl_open(NULL, &nccl, &err))
        return failed(prog, &err);
    s2_fingerprint fp;
    s2_fingerprint_init(&fp);
    char spec_shown[320];
    snprintf(spec_shown, sizeof spec_shown, "spec %s sha256 %s", o->spec->name,
             o->spec->hash_hex);
    st = s2_fingerprint_add(&fp, "spec", o->spec->hash_hex, strlen(o->spec->hash_hex),
                            spec_shown, &err);
    if (!st)
        st = s2_fingerprint_add(&fp, "options", opts_text[0], strlen(opts_text[0]), NULL, &err);
    if (!st)
        st = s2_fingerprint_add(&fp, "optimizer", opts_text[1], strlen(opts_text[1]), NULL,
                                &err);
    if (!st)
        st = s2_fingerprint_add(&fp, "data", data_part, strlen(data_part), NULL, &err);
    if (!st)
        st = s2_fingerprint_add(&fp, "resume", resume_part, strlen(resume_part), NULL, &err);
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    if (!st && w->rank == 0)
        st = s2_nccl_unique_id(nccl, &id, &err);
    s2_rdzv_result res = {0};
    if (!st)
        st = s2_rendezvous(have ? &addr : NULL, w, &fp, w->rank == 0 ? id.internal : NULL,
                           sizeof id.internal, rdzv_timeout, &res, &err);
    if (!st && res.payload_len != sizeof id.internal)
        st = s2_error_set(&err, S2_ERR_INVALID, "rendezvous: rank 0 handed out %zu bytes, "
                          "NCCL's unique id has %zu", res.payload_len, sizeof id.internal);
    if (!st) {
        memcpy(id.internal, res.payload, sizeof id.internal);
        fprintf(stderr, "%s: rank %d of %d: %d rank%s met (%s) in %.2f s, running the same "
                "build, spec, options, tokens and state\n", prog, w->rank, w->size, res.n_peers,
                res.n_peers == 1 ? "" : "s", have ? addr.text : "a world of one", res.seconds);
    }
    s2_rdzv_result_free(&res);
    /* NCCL stays loaded from here on: the unique id's bootstrap thread runs inside it. */
    if (st)
        return failed(prog, &err);
    s2_rt rt;
    if (s2_dist_device(w, &rt, &err))
        return failed(prog, &err);
    s2_cli_show_cache_warnings(&rt, prog);
    fprintf(stderr, "%s: train on %s (%s), rank %d of %d, CUDA device %d\n", prog, rt.name,
            rt.arch, w->rank, w->size, w->local_rank);
    s2_watchdog *wd = NULL;
    ncclComm_t comm = NULL;
    s2_dp *d = NULL;
    st = s2_watchdog_start(nccl, nccl_timeout, WATCHDOG_GRACE_S, watchdog_fatal, (void *)prog,
                           &wd, &err);
    if (!st) {
        s2_watchdog_begin(wd, "ncclCommInitRank (every rank joining the communicator)");
        st = s2_nccl_comm_init(nccl, w->size, w->rank, &id, &comm, &err);
        s2_watchdog_end(wd);
        if (comm)
            s2_watchdog_set_comm(wd, comm);
    }
    if (!st)
        st = s2_dp_open(nccl, comm, w->rank, w->size, wd, &d, &err);
    if (!st) {
        o->dist = d;
        st = s2_train_run(&rt, o, &err);
    }
    if (st && wd) /* never wait for the others after a failure */
        s2_watchdog_abort(wd, err.msg ? err.msg : s2_status_to_string(st));
    s2_dp_close(d);
    if (!st)
        st = s2_nccl_comm_destroy(nccl, comm, &err);
    s2_watchdog_stop(wd);
    if (st)
        return failed(prog, &err);
    if (w->rank == 0)
        printf("trained %s (%s) on %d GPUs (data parallel): state in %s/state, %s in %s/%s, "
               "log in %s%s\n", o->spec->name, o->full ? "full" : "LoRA+", w->size, o->out_dir,
               o->full ? "model" : "adapter", o->out_dir, o->full ? "model" : "adapter",
               o->log_path ? o->log_path : o->out_dir, o->log_path ? "" : "/train.jsonl");
    return 0;
}

int s2_cli_train(const char *prog, int argc, char **argv)
{
    static s2_spec spec; /* filled by the loader below; o keeps its address */
    train_args a = {0};
    s2_train_opts_default(&a.o, &spec);
    a.schedule = "constant", a.mode = "lora", a.recompute = "auto", a.rope = "match";
    s2_opts_result r;
    int rc;
    if (!s2_opts_run(&s2_cmd_train, argc, argv, &a, &r, &rc))
        return rc;
    s2_train_opts o = a.o;
    const char *spec_path = a.spec[0], *rdzv = a.rdzv;
    const int grad_accum = a.grad_accum, dp = a.dp, sp = a.sp; /* 0: not given */
    o.schedule = !strcmp(a.schedule, "cosine") ? S2_SCHED_COSINE : S2_SCHED_CONSTANT;
    o.full = !strcmp(a.mode, "full");
    o.recompute = !strcmp(a.recompute, "layer") ? S2_GM_RECOMPUTE_LAYER
                : !strcmp(a.recompute, "mlp")   ? S2_GM_RECOMPUTE_MLP
                                                : S2_GM_RECOMPUTE_AUTO;
    o.rope_spec = !strcmp(a.rope, "spec");
    if (a.n_seqlens)
        o.seqlen = a.seqlens[0];
    if (grad_accum)
        o.grad_accum = grad_accum;
    o.progress = progress;
    o.progress_ctx = (void *)prog;
    s2_error err = {0};
    /* every file read and checked before a device is asked for */
    if (s2_spec_load(spec_path, a.sets, a.n_sets, &spec, &err) || s2_train_check(&o, &err))
        return failed(prog, &err);
    if (sp > 1 && o.batch > 1)
        return s2_opts_usage_error(&s2_cmd_train, "--batch %d with --sp %d: a sequence-parallel "
                                   "micro-batch is one sequence that the --sp ranks share "
                                   "(leave --batch out, or give --grad-accum instead)", o.batch,
                                   sp);
    if (sp > 1) { /* the chunks' plan (and its refusals) before any rank is met */
        s2_sp_plan plan;
        int halo;
        if (s2_sp_train_plan(&spec, o.seqlen > 0 ? o.seqlen : spec.context_length, sp,
                             o.full_attention, &plan, &halo, &err))
            return refused(prog, &err);
        s2_sp_plan_free(&plan);
        o.sp = sp;
    }
    /* the world: several ranks, or one started by a launcher, train data parallel over NCCL;
     * a world of one without a launcher runs as it always has (no NCCL) */
    const s2_env env = s2_env_process();
    s2_world w;
    if (s2_world_from_env(env, &w, &err))
        return failed(prog, &err);
    const char *from = env.get(env.ctx, "S2LORA_WORLD_FROM");
    const int dist = w.size > 1 || w.launched || (from && strcmp(from, "single"));
    if (!dist && rdzv)
        return s2_opts_usage_error(&s2_cmd_train, "--rendezvous: this process is a world of one "
                                   "(no launcher's variables): it meets no other rank");
    if (o.sp > 1 && !dist)
        return s2_opts_usage_error(&s2_cmd_train, "--sp: sequence parallel needs several ranks "
                                   "(s2lora launch --gpus N -- train ... --sp P, P dividing N)");
    /* the state --resume continues (its header only), before any GPU or rank is met */
    s2_state_info info;
    int found = 0;
    if (o.resume) {
        char dir[1200];
        snprintf(dir, sizeof dir, "%s/state", o.out_dir);
        if (s2_state_peek_latest(dir, &info, &found, &err))
            return failed(prog, &err);
    }
    s2_dp_layout lay;
    if (s2_dp_resolve(w.size, dp > 0 ? dp : 0, sp > 0 ? sp : 0, grad_accum > 0 ? grad_accum : 0,
                      o.grad_accum, o.batch, found ? info.global_batch : 0, &lay, &err)) {
        if (found && info.global_batch)
            s2_error_prefix(&err, "--resume from %s/state/%s", o.out_dir, info.file);
        return refused(prog, &err);
    }
    o.grad_accum = lay.grad_accum;
    o.resume_from = found ? &info : NULL;
    if (lay.derived && w.rank == 0)
        fprintf(stderr, "%s: --grad-accum %d: the resumed state's global batch of %llu "
                "sequences over %d rank%s x --batch %d\n", prog, lay.grad_accum,
                (unsigned long long)lay.global_batch, lay.dp, lay.dp == 1 ? "" : "s", lay.batch);
    /* the checkpoint load's progress line, from here to the end of the run on every path */
    s2_cli_progress *load = s2_cli_progress_start(prog, "loading the checkpoint", 0);
    o.load_progress = s2_cli_progress_bytes;
    o.load_progress_ctx = load;
    if (dist) {
        const int rc = train_dist(prog, &o, &w, env, rdzv, &lay, found ? &info : NULL);
        s2_cli_progress_end(load);
        return rc;
    }
    s2_rt rt;
    s2_status st = s2_rt_open(&rt, 0, &err);
    if (!st) {
        s2_cli_show_cache_warnings(&rt, prog);
        fprintf(stderr, "%s: train on %s (%s)\n", prog, rt.name, rt.arch);
        st = s2_train_run(&rt, &o, &err);
    }
    s2_cli_progress_end(load);
    if (st)
        return failed(prog, &err);
    printf("trained %s (%s): state in %s/state, %s in %s/%s, log in %s%s\n", spec.name,
           o.full ? "full" : "LoRA+", o.out_dir, o.full ? "model" : "adapter", o.out_dir,
           o.full ? "model" : "adapter", o.log_path ? o.log_path : o.out_dir,
           o.log_path ? "" : "/train.jsonl");
    return 0;
}

int s2_cli_eval(const char *prog, int argc, char **argv)
{
    s2_spec spec;
    eval_args a = {.o = {.spec = &spec}, .seed = 1, .rope = "match"};
    s2_opts_result res;
    int rc;
    if (!s2_opts_run(&s2_cmd_eval, argc, argv, &a, &res, &rc))
        return rc;
    s2_eval_opts o = a.o;
    const char *spec_path = a.spec[0];
    const int passkey = a.passkey;
    const uint64_t seed = a.seed;
    if (a.n_seqlens)
        o.seqlen = a.seqlens[0];
    o.rope_spec = !strcmp(a.rope, "spec");
    if (!o.data_path && !passkey)
        return s2_opts_usage_error(&s2_cmd_eval, "missing --data FILE (or --passkey TRIALS)");
    if (passkey && (o.data_path || o.s2attn || o.stride || o.max_windows))
        return s2_opts_usage_error(&s2_cmd_eval, "--passkey takes no --data, --s2attn, --stride "
                                   "or --max-windows");
    if (o.trainable_path && !o.adapter_dir)
        return s2_opts_usage_error(&s2_cmd_eval, "--trainable goes with --adapter");
    o.progress = progress;
    o.progress_ctx = (void *)prog;
    s2_error err = {0};
    if (s2_spec_load(spec_path, a.sets, a.n_sets, &spec, &err) || s2_eval_check(&o, &err))
        return failed(prog, &err);
    s2_rt rt;
    if (s2_rt_open(&rt, 0, &err))
        return failed(prog, &err);
    s2_cli_show_cache_warnings(&rt, prog);
    /* the checkpoint load's progress line, to the end of the run on every path */
    s2_cli_progress *load = s2_cli_progress_start(prog, "loading the checkpoint", 0);
    o.load_progress = s2_cli_progress_bytes;
    o.load_progress_ctx = load;
    if (passkey) {
        s2_passkey_result pr;
        const s2_status pst = s2_passkey_run(&rt, &o, passkey, seed, &pr, &err);
        s2_cli_progress_end(load);
        if (pst)
            return failed(prog, &err);
        printf("passkey %s on %s: seqlen %d, %d/%d retrieved (accuracy %.3f)\n", spec.name,
               rt.name, o.seqlen ? o.seqlen : spec.context_length, pr.correct, pr.trials,
               pr.accuracy);
        return 0;
    }
    s2_eval_result r;
    const s2_status est = s2_eval_run(&rt, &o, &r, &err);
    s2_cli_progress_end(load);
    if (est)
        return failed(prog, &err);
    printf("eval %s on %s: %s attention, seqlen %d, %lld windows, %lld tokens scored, "
           "ppl %.4f (nll %.6f), %.0f tok/s\n", spec.name, rt.name, o.s2attn ? "S2" : "full",
           o.seqlen ? o.seqlen : spec.context_length, (long long)r.windows, (long long)r.count,
           r.ppl, r.count ? r.nll_sum / (double)r.count : 0.0, r.tokens_per_s);
    return 0;
}

static s2_status tensor_i32(const s2_st_file *f, const char *path, const char *name, int need,
                            const int32_t **data, int64_t *n, s2_error *err)
{
    const s2_tensor *t = s2_st_find(f, name);
    *data = NULL;
    *n = 0;
    if (!t)
        return need ? s2_error_set(err, S2_ERR_INVALID, "%s: no tensor \"%s\"", path, name)
                    : S2_OK;
    if (t->dtype != S2_ST_I32 || t->ndim != 1)
        return s2_error_set(err, S2_ERR_INVALID, "%s: tensor \"%s\": expected I32 with one "
                            "dimension, found %s with %d", path, name, s2_st_dtype_name(t->dtype),
                            t->ndim);
    *data = t->data;
    *n = t->shape[0];
    return S2_OK;
}

int s2_cli_logits(const char *prog, int argc, char **argv)
{
    logits_args a = {.rope = "match"};
    s2_opts_result r;
    int rc;
    if (!s2_opts_run(&s2_cmd_logits, argc, argv, &a, &r, &rc))
        return rc;
    const char *spec_path = a.spec[0], *model = a.model, *tokens = a.tokens, *out = a.out,
               *adapter = a.adapter, *trainable = a.trainable, *cache_dir = a.cache_dir;
    const int s2attn = a.s2attn, grads = a.grads;
    const s2_rope_policy rope = !strcmp(a.rope, "spec") ? S2_ROPE_SPEC : S2_ROPE_MATCH;
    if (trainable && !adapter)
        return s2_opts_usage_error(&s2_cmd_logits, "--trainable goes with --adapter");
    s2_error err = {0};
    s2_spec spec;
    if (s2_spec_load(spec_path, a.sets, a.n_sets, &spec, &err))
        return failed(prog, &err);
    s2_st_file in = {0};
    if (s2_st_read(tokens, &in, &err))
        return failed(prog, &err);
    const int32_t *tok = NULL, *cu = NULL;
    int64_t T = 0, ncu = 0;
    s2_status st = tensor_i32(&in, tokens, "tokens", 1, &tok, &T, &err);
    if (!st)
        st = tensor_i32(&in, tokens, "cu_seqlens", 0, &cu, &ncu, &err);
    if (!st && (T < 1 || T > (1 << 24)))
        st = s2_error_set(&err, S2_ERR_INVALID,
                          "%s: tokens has %lld elements (1 .. 16M)", tokens, (long long)T);
    if (!st && cu && ncu < 2)
        st = s2_error_set(&err, S2_ERR_INVALID, "%s: cu_seqlens needs B+1 >= 2 entries", tokens);
    /* every file read and checked before a device is asked for */
    for (int64_t i = 0; !st && i < T; i++) {
        int32_t v;
        memcpy(&v, tok + i, sizeof v); /* the file's data may be unaligned */
        if (v < 0 || v >= spec.model.vocab_size)
            st = s2_error_set(&err, S2_ERR_INVALID,
                              "%s: tokens[%lld] = %d: outside the model's vocabulary [0, %d)",
                              tokens, (long long)i, v, spec.model.vocab_size);
    }
    if (!st && cu) {
        s2_attn_batch bt;
        char what[1100];
        snprintf(what, sizeof what, "%s: cu_seqlens", tokens);
        st = s2_attn_batch_init(&bt, cu, (int)ncu - 1, (int)T, what, &err);
    }
    if (!st)
        st = s2_model_files_check_rope(&spec, model, adapter, trainable, rope, &err);
    if (!st)
        st = s2_output_check(out, 0, &err);
    s2_rt rt;
    if (!st)
        st = s2_rt_open(&rt, 0, &err);
    if (!st)
        s2_cli_show_cache_warnings(&rt, prog);
    s2_ckpt *ck = NULL;
    s2_gm *m = NULL;
    s2_cli_progress *load = st ? NULL : s2_cli_progress_start(prog, "loading the checkpoint", 0);
    if (!st)
        st = s2_ckpt_open_progress(model, s2_cli_progress_bytes, load, &ck, &err);
    s2_cli_progress_end(load);
    s2_gm_opts go = {.max_tokens = (int)T, .cache_dir = cache_dir, .no_s2attn = !s2attn,
                     .rope_spec = rope == S2_ROPE_SPEC};
    if (!st)
        st = s2_gm_open(&m, &rt, &spec, ck, &go, &err);
    s2_ckpt_close(ck);
    if (!st && adapter)
        st = s2_gm_import(m, adapter, trainable, &err);
    const int V = spec.model.vocab_size;
    float *logits = st ? NULL : malloc((size_t)T * V * sizeof *logits);
    if (!st && !logits)
        st = s2_error_set(&err, S2_ERR_NOMEM, "out of memory");
    s2_gm_batch b = {.tokens = tok, .T = (int)T, .cu_seqlens = cu, .B = cu ? (int)ncu - 1 : 1};
    double nll = 0, loss = 0;
    int64_t count = 0;
    if (!st)
        st = s2_gm_eval_batch(m, &b, !s2attn, &nll, &count, logits, &err);
    loss = count ? nll / (double)count : 0;
    const int n_tr = st ? 0 : s2_gm_n_trainable(m);
    const int n_out = 2 + (grads ? n_tr : 0);
    s2_tensor *t = calloc((size_t)n_out, sizeof *t);
    char **names = calloc((size_t)n_out, sizeof *names);
    if (!st && (!t || !names))
        st = s2_error_set(&err, S2_ERR_NOMEM, "out of memory");
    if (!st && grads) {
        st = s2_gm_zero_grad(m, &err);
        if (!st)
            st = s2_gm_train_batch(m, &b, !s2attn, (double)(count ? count : 1), NULL, NULL, &err);
    }
    if (!st) {
        t[0] = (s2_tensor){.name = "logits", .dtype = S2_ST_F32, .ndim = 2,
                           .shape = {T, V}, .data = logits,
                           .nbytes = (size_t)T * V * sizeof(float)};
        t[1] = (s2_tensor){.name = "loss", .dtype = S2_ST_F64, .ndim = 1, .shape = {1},
                           .data = &loss, .nbytes = sizeof loss};
    }
    for (int i = 0; !st && grads && i < n_tr; i++) {
        int nd;
        int64_t shape[2];
        size_t numel;
        const char *name = s2_gm_trainable_name(m, i, &nd, shape, &numel);
        float *g = malloc(numel * sizeof *g);
        names[2 + i] = malloc(strlen(name) + 8);
        if (!g || !names[2 + i]) {
            free(g);
            st = s2_error_set(&err, S2_ERR_NOMEM, "out of memory");
            break;
        }
        sprintf(names[2 + i], "grad.%s", name);
        t[2 + i] = (s2_tensor){.name = names[2 + i], .dtype = S2_ST_F32, .ndim = nd,
                               .shape = {shape[0], shape[1]}, .data = g,
                               .nbytes = numel * sizeof(float)};
        st = s2_gm_read_grad(m, i, g, &err);
    }
    static const char *mk[] = {"format"}, *mv[] = {"pt"};
    if (!st)
        st = s2_st_write(out, t, n_out, mk, mv, 1, &err);
    if (!st)
        printf("%s: %lld tokens, loss %.6f over %lld labelled, %s attention%s\n", out,
               (long long)T, loss, (long long)count, s2attn ? "S2" : "full",
               grads ? ", gradients written" : "");
    for (int i = 2; t && i < n_out; i++)
        free(t[i].data);
    for (int i = 0; names && i < n_out; i++)
        free(names[i]);
    free(t);
    free(names);
    free(logits);
    s2_gm_close(m);
    s2_st_close(&in);
    return st ? failed(prog, &err) : 0;
}

/* What a non-empty output directory holds, for the refusal: the first few names. */
static int dir_entries(const char *dir, char *names, size_t cap)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0; /* missing (created by the library), or not a directory (it says so) */
    int n = 0;
    size_t used = 0;
    names[0] = '\0';
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        if (n < 4 && used < cap)
            used += (size_t)snprintf(names + used, cap - used, "%s%s", n ? ", " : "", e->d_name);
        n++;
    }
    closedir(d);
    if (n > 4 && used < cap)
        snprintf(names + used, cap - used, " and %d more", n - 4);
    return n;
}

int s2_cli_init(const char *prog, int argc, char **argv)
{
    init_args a = {0};
    s2_opts_result r;
    int rc;
    if (!s2_opts_run(&s2_cmd_init, argc, argv, &a, &r, &rc))
        return rc;
    char names[512];
    if (!a.force && dir_entries(a.out, names, sizeof names))
        return s2_opts_usage_error(&s2_cmd_init, "%s is not empty (it holds %s): give a new or "
                                   "empty directory, or --force to write config.json and "
                                   "model.safetensors into it anyway", a.out, names);
    s2_error err = {0};
    s2_spec spec;
    if (s2_spec_load(a.spec[0], a.sets, a.n_sets, &spec, &err))
        return failed(prog, &err);
    s2_cli_progress *pr = s2_cli_progress_start(prog, "init", 0);
    s2_status st = s2_ckpt_init_random_progress(a.out, &spec, a.seed, s2_cli_progress_bytes, pr,
                                                &err);
    s2_cli_progress_end(pr);
    if (st)
        return failed(prog, &err);
    printf("%s: %s initialised (seed %llu): config.json, model.safetensors\n", a.out, spec.name,
           (unsigned long long)a.seed);
    printf("next: s2lora train %s --model %s --data FILE --out DIR --mode full\n", a.spec[0],
           a.out);
    return 0;
}

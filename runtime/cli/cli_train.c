/*
 * cli_train.c — the `s2lora train` and `s2lora eval` subcommands (part of the s2lora binary,
 * beside main.c): argument parsing, progress on stderr, the summary on stdout. The work is in
 * train.h; this file only translates between it and a terminal, and, for `train` on several
 * ranks (train_dp.h), sets up what the trainer is handed: the world, the checked inputs, the
 * rendezvous, the GPU, the watchdog and the NCCL communicator, in that order.
 */
#include <errno.h>
#include <math.h>
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

#define MAX_SETS 64

static const char train_help[] =
    "usage: s2lora train SPEC --model DIR --data FILE --out DIR [--set KEY=VALUE]...\n"
    "                    [--steps N] [--grad-accum N] [--seqlen N] [--lr X] [--warmup N]\n"
    "                    [--schedule constant|cosine] [--weight-decay X] [--max-grad-norm X]\n"
    "                    [--save-every N] [--keep-last N] [--seed N] [--resume]\n"
    "                    [--full-attention] [--mode lora|full] [--recompute auto|layer|mlp]\n"
    "                    [--log FILE] [--cache-dir DIR] [--dp D] [--sp P]\n"
    "                    [--rendezvous file:PATH|tcp:HOST:PORT]\n"
    "\n"
    "Extends a Hugging Face LLaMA checkpoint (--model: config.json and safetensors) to the\n"
    "spec's context_length the LongLoRA way: RoPE interpolated by the spec's rope_factor,\n"
    "LoRA on lora.targets plus the whole tensors lora.trainable names, S2-Attn while\n"
    "training. --data is a token file (s2lora data); each micro-batch is one packed\n"
    "sequence of --seqlen tokens (default context_length), --grad-accum of them per step.\n"
    "Defaults are LongLoRA's: lr 2e-5, warmup 20 then constant, weight decay 0, 8\n"
    "micro-batches, AdamW (0.9, 0.999, 1e-8), gradient clipping at norm 1, 1000 steps.\n"
    "Every --save-every steps (default 100) and at the end: OUT/state (resumable, atomic),\n"
    "OUT/adapter (PEFT: adapter_config.json, adapter_model.safetensors) and\n"
    "OUT/trainable.safetensors (embeddings and norms under their HF names). --resume\n"
    "continues from OUT/state exactly. One line per step on stderr (on a terminal, one\n"
    "line redrawn with a bar of the run); JSON lines in\n"
    "OUT/train.jsonl (or --log). --mode full trains every weight instead (LongLoRA's\n"
    "Full-FT; fp32 masters and AdamW moments of the whole model must fit on the GPU) and\n"
    "writes the whole model as a Hugging Face checkpoint to OUT/model.\n"
    "--recompute: what the backward recomputes. layer: each layer's input is kept and the\n"
    "whole layer recomputed (least memory); mlp: the attention half's activations are kept\n"
    "per layer too, and only the MLP's gate/up is recomputed (faster, about 7 x hidden x 2\n"
    "bytes a token a layer more); auto (default): mlp when that fits in half of the free\n"
    "device memory. The choice is said when training starts.\n"
    "Several GPUs (data parallel): start one rank a GPU with `s2lora launch --gpus N --\n"
    "train ...`, srun or mpirun (--rendezvous or S2LORA_RENDEZVOUS: where they meet).\n"
    "A step then takes N x --grad-accum sequences; rank r trains on global sequences\n"
    "P + m x N + r (P: the state's data position); gradients are all-reduced as the\n"
    "backward runs; optimizer states are replicated; rank 0 writes OUT. --dp is the\n"
    "world size / --sp (the default). --sp P (sequence parallel): the ranks form groups of\n"
    "P consecutive ranks that share each sequence, rank d x P + s holding chunk s (rows\n"
    "aligned to 128; S2-Attn with shift_mode split only), exchanging K/V halos over NCCL;\n"
    "the sequence's last row is then unlabelled. P must divide the world.\n"
    "--resume on another number of GPUs keeps the state's global batch: --grad-accum is\n"
    "derived (or checked). S2LORA_NCCL_TIMEOUT: seconds a collective may take before\n"
    "the run is aborted (default 600).\n"
    "Exit status 1 on an error, 2 on a usage error, 3 with no CUDA device.\n";

static const char eval_help[] =
    "usage: s2lora eval SPEC --model DIR --data FILE [--adapter DIR] [--trainable FILE]\n"
    "                   [--set KEY=VALUE]... [--seqlen N] [--stride N] [--max-windows N]\n"
    "                   [--s2attn] [--cache-dir DIR]\n"
    "       s2lora eval SPEC --model DIR --passkey TRIALS [--seed N] [--seqlen N] ...\n"
    "\n"
    "Perplexity of the model (with the adapter and trainable tensors a train run wrote)\n"
    "over a token file, with full causal attention (--s2attn: the training attention) in\n"
    "windows of --seqlen tokens (default context_length) every --stride tokens (default\n"
    "seqlen); a token is scored once, by the first window that predicts it.\n"
    "--passkey runs LongLoRA's passkey retrieval instead (byte-level vocabulary): TRIALS\n"
    "prompts of about --seqlen tokens with a five-digit key at a random depth, greedy\n"
    "decoding of the key with full attention; prints the accuracy.\n"
    "Exit status 1 on an error, 2 on a usage error, 3 with no CUDA device.\n";

typedef enum { OPT_STR, OPT_INT, OPT_I64, OPT_DBL, OPT_FLAG, OPT_SET } opt_kind;

typedef struct opt {
    const char *name;
    opt_kind kind;
    void *dst;
} opt;

typedef struct sets {
    s2_spec_override v[MAX_SETS];
    int n;
} sets;

static int usage(const char *prog, const char *cmd, const char *msg, const char *arg)
{
    fprintf(stderr, "%s %s: %s%s\nTry '%s %s --help'.\n", prog, cmd, msg, arg, prog, cmd);
    return 2;
}

/* Parses argv against opts; the one positional argument goes to *spec. 0, -1 for --help, or an
 * exit code. */
static int parse(const char *prog, const char *cmd, int argc, char **argv, const opt *opts,
                 int n_opts, const char **spec)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            return -1;
        if (a[0] != '-') {
            if (*spec)
                return usage(prog, cmd, "one SPEC only; extra argument ", a);
            *spec = a;
            continue;
        }
        const opt *o = NULL;
        for (int k = 0; k < n_opts && !o; k++)
            if (!strcmp(opts[k].name, a))
                o = &opts[k];
        if (!o)
            return usage(prog, cmd, "unknown option ", a);
        if (o->kind == OPT_FLAG) {
            *(int *)o->dst = 1;
            continue;
        }
        if (i + 1 == argc)
            return usage(prog, cmd, "this option needs a value: ", a);
        const char *v = argv[++i];
        char *end = NULL;
        errno = 0;
        switch (o->kind) {
        case OPT_STR:
            *(const char **)o->dst = v;
            break;
        case OPT_INT:
        case OPT_I64: {
            long long x = strtoll(v, &end, 10);
            if (errno || end == v || *end || x < 0 || (o->kind == OPT_INT && x > 2147483647LL)) {
                fprintf(stderr, "%s %s: %s %s: expected a non-negative integer\n", prog, cmd, a,
                        v);
                return 2;
            }
            if (o->kind == OPT_INT)
                *(int *)o->dst = (int)x;
            else
                *(int64_t *)o->dst = x;
            break;
        }
        case OPT_DBL: {
            double x = strtod(v, &end);
            if (errno || end == v || *end || !isfinite(x) || x < 0) {
                fprintf(stderr, "%s %s: %s %s: expected a non-negative number\n", prog, cmd, a, v);
                return 2;
            }
            *(double *)o->dst = x;
            break;
        }
        case OPT_SET: {
            sets *s = o->dst;
            if (s->n == MAX_SETS)
                return usage(prog, cmd, "too many --set options (at most 64)", "");
            s->v[s->n++].text = v;
            break;
        }
        case OPT_FLAG:
            break;
        }
    }
    return 0;
}

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
    const char *spec_path = NULL, *schedule = "constant", *mode = "lora",
               *recompute = "auto", *rdzv = NULL;
    static s2_spec spec; /* filled by the loader below; o keeps its address */
    s2_train_opts o;
    s2_train_opts_default(&o, &spec);
    sets ov = {0};
    int64_t seed = (int64_t)o.seed;
    int grad_accum = -1, dp = -1, sp = -1; /* -1: not given */
    const opt opts[] = {
        {"--model", OPT_STR, &o.model_dir},       {"--data", OPT_STR, &o.data_path},
        {"--out", OPT_STR, &o.out_dir},           {"--set", OPT_SET, &ov},
        {"--steps", OPT_I64, &o.steps},           {"--grad-accum", OPT_INT, &grad_accum},
        {"--seqlen", OPT_INT, &o.seqlen},         {"--lr", OPT_DBL, &o.lr},
        {"--warmup", OPT_I64, &o.warmup},         {"--schedule", OPT_STR, &schedule},
        {"--weight-decay", OPT_DBL, &o.weight_decay},
        {"--max-grad-norm", OPT_DBL, &o.max_grad_norm},
        {"--save-every", OPT_I64, &o.save_every}, {"--keep-last", OPT_INT, &o.keep_last},
        {"--seed", OPT_I64, &seed},               {"--resume", OPT_FLAG, &o.resume},
        {"--full-attention", OPT_FLAG, &o.full_attention},
        {"--log", OPT_STR, &o.log_path},          {"--cache-dir", OPT_STR, &o.cache_dir},
        {"--mode", OPT_STR, &mode},
        {"--recompute", OPT_STR, &recompute},
        {"--dp", OPT_INT, &dp},                   {"--sp", OPT_INT, &sp},
        {"--rendezvous", OPT_STR, &rdzv},
    };
    int rc = parse(prog, "train", argc, argv, opts, (int)(sizeof opts / sizeof opts[0]),
                   &spec_path);
    if (rc < 0)
        return fputs(train_help, stdout), 0;
    if (rc)
        return rc;
    if (!spec_path)
        return usage(prog, "train", "missing SPEC", "");
    if (!o.model_dir || !o.data_path || !o.out_dir)
        return usage(prog, "train", "missing ",
                     !o.model_dir ? "--model DIR" : !o.data_path ? "--data FILE" : "--out DIR");
    if (!strcmp(schedule, "constant"))
        o.schedule = S2_SCHED_CONSTANT;
    else if (!strcmp(schedule, "cosine"))
        o.schedule = S2_SCHED_COSINE;
    else
        return usage(prog, "train", "--schedule: valid: constant, cosine; got ", schedule);
    if (!strcmp(mode, "full"))
        o.full = 1;
    else if (strcmp(mode, "lora"))
        return usage(prog, "train", "--mode: valid: lora, full; got ", mode);
    if (!strcmp(recompute, "auto"))
        o.recompute = S2_GM_RECOMPUTE_AUTO;
    else if (!strcmp(recompute, "layer"))
        o.recompute = S2_GM_RECOMPUTE_LAYER;
    else if (!strcmp(recompute, "mlp"))
        o.recompute = S2_GM_RECOMPUTE_MLP;
    else
        return usage(prog, "train", "--recompute: valid: auto, layer, mlp; got ", recompute);
    if (grad_accum == 0)
        return usage(prog, "train", "--grad-accum: at least 1", "");
    if (dp == 0 || sp == 0)
        return usage(prog, "train", dp == 0 ? "--dp: at least 1" : "--sp: at least 1", "");
    o.seed = (uint64_t)seed;
    o.progress = progress;
    o.progress_ctx = (void *)prog;
    s2_error err = {0};
    /* every file read and checked before a device is asked for */
    if (s2_spec_load(spec_path, ov.v, ov.n, &spec, &err) || s2_train_check(&o, &err))
        return failed(prog, &err);
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
        return usage(prog, "train", "--rendezvous: this process is a world of one (no "
                     "launcher's variables): it meets no other rank", "");
    if (o.sp > 1 && !dist)
        return usage(prog, "train", "--sp: sequence parallel needs several ranks (s2lora launch "
                     "--gpus N -- train ... --sp P, P dividing N)", "");
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
                      o.grad_accum, found ? info.global_batch : 0, &lay, &err)) {
        if (found && info.global_batch)
            s2_error_prefix(&err, "--resume from %s/state/%s", o.out_dir, info.file);
        return refused(prog, &err);
    }
    o.grad_accum = lay.grad_accum;
    o.resume_from = found ? &info : NULL;
    if (lay.derived && w.rank == 0)
        fprintf(stderr, "%s: --grad-accum %d: the resumed state's global batch of %llu "
                "sequences over %d rank%s\n", prog, lay.grad_accum,
                (unsigned long long)lay.global_batch, lay.dp, lay.dp == 1 ? "" : "s");
    if (dist)
        return train_dist(prog, &o, &w, env, rdzv, &lay, found ? &info : NULL);
    s2_rt rt;
    if (s2_rt_open(&rt, 0, &err))
        return failed(prog, &err);
    s2_cli_show_cache_warnings(&rt, prog);
    fprintf(stderr, "%s: train on %s (%s)\n", prog, rt.name, rt.arch);
    if (s2_train_run(&rt, &o, &err))
        return failed(prog, &err);
    printf("trained %s (%s): state in %s/state, %s in %s/%s, log in %s%s\n", spec.name,
           o.full ? "full" : "LoRA+", o.out_dir, o.full ? "model" : "adapter", o.out_dir,
           o.full ? "model" : "adapter", o.log_path ? o.log_path : o.out_dir,
           o.log_path ? "" : "/train.jsonl");
    return 0;
}

int s2_cli_eval(const char *prog, int argc, char **argv)
{
    const char *spec_path = NULL;
    s2_spec spec;
    s2_eval_opts o = {.spec = &spec};
    sets ov = {0};
    int passkey = 0;
    int64_t seed = 1;
    const opt opts[] = {
        {"--model", OPT_STR, &o.model_dir},         {"--data", OPT_STR, &o.data_path},
        {"--adapter", OPT_STR, &o.adapter_dir},     {"--trainable", OPT_STR, &o.trainable_path},
        {"--set", OPT_SET, &ov},                    {"--seqlen", OPT_INT, &o.seqlen},
        {"--stride", OPT_INT, &o.stride},           {"--max-windows", OPT_I64, &o.max_windows},
        {"--s2attn", OPT_FLAG, &o.s2attn},          {"--cache-dir", OPT_STR, &o.cache_dir},
        {"--passkey", OPT_INT, &passkey},           {"--seed", OPT_I64, &seed},
    };
    int rc = parse(prog, "eval", argc, argv, opts, (int)(sizeof opts / sizeof opts[0]),
                   &spec_path);
    if (rc < 0)
        return fputs(eval_help, stdout), 0;
    if (rc)
        return rc;
    if (!spec_path)
        return usage(prog, "eval", "missing SPEC", "");
    if (!o.model_dir || (!o.data_path && !passkey))
        return usage(prog, "eval", "missing ",
                     !o.model_dir ? "--model DIR" : "--data FILE (or --passkey TRIALS)");
    if (passkey && (o.data_path || o.s2attn || o.stride || o.max_windows))
        return usage(prog, "eval", "--passkey takes no --data, --s2attn, --stride or "
                     "--max-windows", "");
    if (o.trainable_path && !o.adapter_dir)
        return usage(prog, "eval", "--trainable goes with --adapter", "");
    o.progress = progress;
    o.progress_ctx = (void *)prog;
    s2_error err = {0};
    if (s2_spec_load(spec_path, ov.v, ov.n, &spec, &err) || s2_eval_check(&o, &err))
        return failed(prog, &err);
    s2_rt rt;
    if (s2_rt_open(&rt, 0, &err))
        return failed(prog, &err);
    s2_cli_show_cache_warnings(&rt, prog);
    if (passkey) {
        s2_passkey_result pr;
        if (s2_passkey_run(&rt, &o, passkey, (uint64_t)seed, &pr, &err))
            return failed(prog, &err);
        printf("passkey %s on %s: seqlen %d, %d/%d retrieved (accuracy %.3f)\n", spec.name,
               rt.name, o.seqlen ? o.seqlen : spec.context_length, pr.correct, pr.trials,
               pr.accuracy);
        return 0;
    }
    s2_eval_result r;
    if (s2_eval_run(&rt, &o, &r, &err))
        return failed(prog, &err);
    printf("eval %s on %s: %s attention, seqlen %d, %lld windows, %lld tokens scored, "
           "ppl %.4f (nll %.6f), %.0f tok/s\n", spec.name, rt.name, o.s2attn ? "S2" : "full",
           o.seqlen ? o.seqlen : spec.context_length, (long long)r.windows, (long long)r.count,
           r.ppl, r.count ? r.nll_sum / (double)r.count : 0.0, r.tokens_per_s);
    return 0;
}

static const char logits_help[] =
    "usage: s2lora logits SPEC --model DIR --tokens FILE -o OUT [--adapter DIR]\n"
    "                     [--trainable FILE] [--set KEY=VALUE]... [--s2attn] [--grads]\n"
    "                     [--cache-dir DIR]\n"
    "\n"
    "Runs the model once on the tokens of FILE (safetensors: \"tokens\" I32 [T], optional\n"
    "\"cu_seqlens\" I32 [B+1] for a packed batch) and writes OUT (safetensors): \"logits\"\n"
    "F32 [T, vocab] and \"loss\" F64 [1] (HF's causal-LM loss: the mean over labelled\n"
    "positions). Full causal attention, or S2-Attn with --s2attn. --grads also runs the\n"
    "backward of that loss and writes each trainable tensor's gradient as\n"
    "\"grad.NAME\" (F32, the trainer's names: stacked adapters per projection group).\n"
    "For peer checks against transformers and PEFT (bench/peers/llama_peers.py).\n";

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
    const char *spec_path = NULL, *model = NULL, *tokens = NULL, *out = NULL, *adapter = NULL,
               *trainable = NULL, *cache_dir = NULL;
    int s2attn = 0, grads = 0;
    sets ov = {0};
    const opt opts[] = {
        {"--model", OPT_STR, &model},       {"--tokens", OPT_STR, &tokens},
        {"-o", OPT_STR, &out},              {"--out", OPT_STR, &out},
        {"--adapter", OPT_STR, &adapter},   {"--trainable", OPT_STR, &trainable},
        {"--set", OPT_SET, &ov},            {"--s2attn", OPT_FLAG, &s2attn},
        {"--grads", OPT_FLAG, &grads},      {"--cache-dir", OPT_STR, &cache_dir},
    };
    int rc = parse(prog, "logits", argc, argv, opts, (int)(sizeof opts / sizeof opts[0]),
                   &spec_path);
    if (rc < 0)
        return fputs(logits_help, stdout), 0;
    if (rc)
        return rc;
    if (!spec_path || !model || !tokens || !out)
        return usage(prog, "logits", "missing ",
                     !spec_path ? "SPEC" : !model ? "--model DIR" : !tokens ? "--tokens FILE"
                                                                            : "-o OUT");
    if (trainable && !adapter)
        return usage(prog, "logits", "--trainable goes with --adapter", "");
    s2_error err = {0};
    s2_spec spec;
    if (s2_spec_load(spec_path, ov.v, ov.n, &spec, &err))
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
        st = s2_model_files_check(&spec, model, adapter, trainable, &err);
    if (!st)
        st = s2_output_check(out, 0, &err);
    s2_rt rt;
    if (!st)
        st = s2_rt_open(&rt, 0, &err);
    if (!st)
        s2_cli_show_cache_warnings(&rt, prog);
    s2_ckpt *ck = NULL;
    s2_gm *m = NULL;
    if (!st)
        st = s2_ckpt_open(model, &ck, &err);
    s2_gm_opts go = {.max_tokens = (int)T, .cache_dir = cache_dir, .no_s2attn = !s2attn};
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

static const char init_help[] =
    "usage: s2lora init SPEC -o DIR [--set KEY=VALUE]... [--seed N]\n"
    "\n"
    "Writes a freshly initialised model of SPEC's shape as a Hugging Face LLaMA checkpoint\n"
    "(config.json, model.safetensors in the spec's dtype), initialised as transformers\n"
    "does: linears and embeddings normal(0, 0.02), norms 1; the same seed gives the same\n"
    "weights everywhere. The start of a model trained from scratch (`s2lora train --mode\n"
    "full`). Needs no GPU.\n";

int s2_cli_init(const char *prog, int argc, char **argv)
{
    const char *spec_path = NULL, *out = NULL;
    int64_t seed = 0;
    sets ov = {0};
    const opt opts[] = {
        {"-o", OPT_STR, &out}, {"--out", OPT_STR, &out}, {"--set", OPT_SET, &ov},
        {"--seed", OPT_I64, &seed},
    };
    int rc = parse(prog, "init", argc, argv, opts, (int)(sizeof opts / sizeof opts[0]),
                   &spec_path);
    if (rc < 0)
        return fputs(init_help, stdout), 0;
    if (rc)
        return rc;
    if (!spec_path || !out)
        return usage(prog, "init", "missing ", !spec_path ? "SPEC" : "-o DIR");
    s2_error err = {0};
    s2_spec spec;
    if (s2_spec_load(spec_path, ov.v, ov.n, &spec, &err) ||
        s2_ckpt_init_random(out, &spec, (uint64_t)seed, &err))
        return failed(prog, &err);
    printf("%s: %s initialised (seed %lld): config.json, model.safetensors\n", out, spec.name,
           (long long)seed);
    return 0;
}

/*
 * train_dp.h — data-parallel training over NCCL (`s2lora train` on several GPUs): one process
 * a GPU, every rank holding the whole model, each computing the gradients of its own slice of
 * the global batch, the gradients summed over the ranks while the backward still runs.
 *
 * World. The ranks form a grid world = dp x sp: dp data-parallel slots, each a group of sp
 * consecutive sequence-parallel ranks: world rank = d x sp + s (slot d, chunk s). The sp ranks
 * of a slot train on the same sequences, each on its chunk [lo, hi) of gen/sp_plan.h's plan
 * (chunk alignment S2_SP_DEFAULT_ALIGN), exchanging key/value halos with the ranks of its
 * group (runtime/train/sp_xchg.h's NCCL transport over the world communicator, which the gradient
 * all-reduce shares: every rank issues both in the same order, so they cannot deadlock, but
 * NCCL may run them one after the other; a communicator per group would let them overlap).
 *
 * Data. An optimizer step consumes a global batch of dp x grad_accum x batch packed sequences
 * (batch: sequences a micro-step, run as one varlen batch). Below, "rank r" is the
 * data-parallel slot d = world rank / sp (s2_dp_slot). The training state's data position P is
 * a global sequence index (the number of sequences the run has consumed); in the step starting
 * at P, the m-th sequence (0 <= m < grad_accum x batch; micro-step m / batch) of rank r
 * (0 <= r < dp) is global sequence
 *     g = P + m * dp + r                                  (s2_dp_sequence)
 * so rank r takes P + r, P + dp + r, P + 2 dp + r, ...: the ranks' slices are disjoint, their
 * union is [P, P + global batch), and P advances by the global batch a step; how the sequences
 * are grouped into micro-steps (grad_accum and batch) does not change which ones a step takes.
 * A global index maps to a packed sequence through the seeded shuffle of its epoch
 * (g / n_sequences), and a micro-step's LoRA dropout masks are drawn from its first sequence's
 * g, so what sequence g is and how it is masked does not depend on the world size (the masks
 * do depend on batch, which groups the sequences). With dp = 1 this is the one-GPU trainer's
 * order exactly.
 *
 * Resume. The state records the global batch (dp x grad_accum x batch). A run resumed at
 * another world size or batch keeps it: --grad-accum is derived as global_batch / (dp x batch),
 * or checked when given; a dp that does not divide it is refused with the combinations that
 * would work.
 *
 * Sequence parallel: every position of chunk s is labelled by the next token (the next chunk's
 * first for its last row; for the last chunk's, token C of the packed window of C + 1), so a
 * sequence holds C labelled tokens, as on one GPU. Each token is held by exactly one rank, so
 * the world all-reduce of the gradients below sums exactly the global gradient.
 *
 * Gradients. The loss of a step is the mean over every labelled token of the global batch:
 * each rank scales its backward by 1 / (labelled tokens of the global batch), so the sum of
 * the ranks' gradients is exactly the one-GPU gradient of that batch (the token count is known
 * before the step: every position of a packed sequence is labelled; the all-reduced count is
 * checked against it). The flat fp32 gradient buffer is cut into buckets of whole trainable
 * tensors (s2_dp_buckets); the backward announces each point after which some tensors'
 * gradients are complete (a "stage": the head and final norm, then each layer from the last,
 * then the embedding), the main stream records an event there, and a second stream waits for
 * it and all-reduces (sum, fp32, in place) the buckets of that stage while the backward goes
 * on. With grad_accum > 1 only the last micro-step reduces. Before the gradient norm the main
 * stream waits for every bucket; the norm, the clipping and the AdamW step then run on the
 * same reduced gradients on every rank: the optimizer states are replicated (every rank holds
 * its own fp32 masters and AdamW moments; sharding them over the ranks is a possible later
 * option).
 *
 * Failure. NCCL's calls return before the data moves; a rank that dies leaves its peers
 * waiting inside NCCL's kernels. Every wait here is a poll (never a blocking synchronize) that
 * checks ncclCommGetAsyncError and the time the host has waited against S2LORA_NCCL_TIMEOUT
 * (seconds, default 600; only waiting counts, not the compute before it); on either it aborts
 * the communicator (ncclCommAbort) and fails with a message naming the collective. A watchdog
 * thread checks the same while the host is inside a call that may block (the communicator's
 * creation, an enqueue), aborting the communicator itself only to unblock such a call (never
 * while the host may use it: see train_dp_comm.c); when the process has not ended within a
 * grace period after an abort, it calls the fatal callback its owner gave (the CLI prints the
 * message and exits 1).
 *
 * The pure functions (resolve, sequence, stages, buckets, options text, timeout, log line)
 * need neither NCCL nor a GPU. Nothing here prints or exits.
 */
#ifndef S2_TRAIN_DP_H
#define S2_TRAIN_DP_H

#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "gen/sp_plan.h"
#include "runtime/dist/dist.h"
#include "runtime/core/nccl.h"
#include "runtime/train/train.h"

/* ---------------------------------------------------------------- layout and data */

typedef struct s2_dp_layout {
    int world;             /* ranks */
    int dp, sp;            /* world = dp x sp: dp slots of sp consecutive ranks */
    int grad_accum;        /* micro-steps a rank runs per optimizer step */
    int batch;             /* sequences a micro-step (one varlen batch) */
    uint64_t global_batch; /* sequences an optimizer step consumes: dp x grad_accum x batch */
    int derived;           /* 1: grad_accum was derived from a resumed state's global batch */
} s2_dp_layout;

/*
 * The layout of a run of `world` ranks. dp, sp, grad_accum: as given (0: not given; dp then
 * defaults to world / sp, sp to 1, grad_accum to grad_accum_default); batch: sequences a
 * micro-step (>= 1). saved_global_batch: the resumed state's global batch (0: a fresh run, or a
 * state that did not record it — then nothing is checked). S2_ERR_INVALID, saying what is
 * valid, when sp does not divide the world, when dp x sp is not the world size, or when the
 * saved global batch is not dp x grad_accum x batch (the message lists every
 * --gpus/--grad-accum pair that keeps it at this batch).
 */
s2_status s2_dp_resolve(int world, int dp, int sp, int grad_accum, int grad_accum_default,
                        int batch, uint64_t saved_global_batch, s2_dp_layout *out,
                        s2_error *err);

/* The global sequence index of the `micro`-th sequence rank `rank` trains on in the step that
 * starts at global position `pos`: pos + micro * dp + rank (see above). */
uint64_t s2_dp_sequence(uint64_t pos, int dp, int rank, int micro);

/* The rank layout: world rank = slot x sp + chunk. s2_dp_slot: the data-parallel slot of a
 * world rank (what s2_dp_sequence calls its rank); s2_sp_chunk_of: its chunk index;
 * s2_sp_world_rank: the world rank holding chunk s of the slot of world rank `rank`. */
int s2_dp_slot(int rank, int sp);
int s2_sp_chunk_of(int rank, int sp);
int s2_sp_world_rank(int rank, int sp, int s);

/*
 * The sequence-parallel plan of training spec at C tokens a sequence over sp ranks (sp >= 2):
 * gen/sp_plan.h's plan at S2_SP_DEFAULT_ALIGN with the spec's attention at N = C. Refused
 * (S2_ERR_INVALID, nothing allocated) with what would work: full attention (the chunks attend
 * only through the S²-Attn window units), roll shift mode (its wrap needs the last chunk's rows
 * on the first rank: shift_mode split), and an sp for which a chunk would be empty (the plan's
 * message). *halo receives the most halo rows of any rank (s2_gm_opts.sp_halo).
 */
s2_status s2_sp_train_plan(const s2_spec *spec, int C, int sp, int full_attention,
                           s2_sp_plan *plan, int *halo, s2_error *err);

/* ---------------------------------------------------------------- gradient buckets */

/*
 * Backward stages of a model of num_layers layers (model.h's stage hook): stage 0 once the
 * head's and the final norm's gradients are complete, stage num_layers - l once layer l's
 * are, stage num_layers + 1 once the embedding's are (a head tied to the embedding is the
 * embedding). s2_dp_stage_of is the stage of a trainable tensor by its state name
 * ("model.layers.3.self_attn.qkv.lora_A_stacked" -> num_layers - 3, "model.norm.weight" and
 * "lm_head.weight" -> 0, "model.embed_tokens.weight" -> num_layers + 1), -1 for a name that
 * is none of these.
 */
int s2_dp_n_stages(int num_layers);
int s2_dp_stage_of(const char *name, int num_layers);

/* A trainable tensor's range of the flat gradient buffer (padding up to the next tensor
 * included) and its stage. */
typedef struct s2_dp_item {
    size_t off, n;
    int stage;
} s2_dp_item;

/* A contiguous range of the gradient buffer all-reduced as one call, once its stage (the
 * latest of its tensors') is reached. */
typedef struct s2_dp_bucket {
    size_t off, n;
    int stage;
    int n_items;
} s2_dp_bucket;

/* LoRA's adapter gradients are about 1 MiB a layer at LLaMA-2 7B: a few layers a bucket, so
 * the reductions start early and overlap most of the backward; full mode's layers (hundreds
 * of MiB) exceed it and go one a bucket. */
#define S2_DP_BUCKET_BYTES_DEFAULT (4u << 20)

/*
 * Cuts the gradient buffer [0, total) into buckets: items must tile it exactly (any order,
 * stages 0..n_stages-1), else S2_ERR_INVALID naming the item. The items are taken in the
 * order their stages complete (ties: from the end of the buffer); an item joins the open
 * bucket when it is adjacent to it in the buffer and the bucket stays within cap elements,
 * else it starts a new one. So buckets are contiguous, disjoint, tile the buffer, come out in
 * the order they can start (stages non-decreasing), and exceed cap only when one item does.
 * *out is heap (free()); *n_out buckets.
 */
s2_status s2_dp_buckets(const s2_dp_item *items, int n_items, size_t total, int n_stages,
                        size_t cap, s2_dp_bucket **out, int *n_out, s2_error *err);

/* ---------------------------------------------------------------- what the ranks must share */

/*
 * The fingerprint parts of the options every rank must share, as "key=value" words with each
 * double written in the fewest digits that read back exactly (equal text: equal options).
 * S2_DP_OPTS_RUN ("options"): steps, dp, sp, grad_accum, global batch, seqlen, save cadence,
 * seed, resume, mode, attention, recompute; S2_DP_OPTS_OPTIMIZER ("optimizer"): lr, warmup,
 * schedule, weight decay, betas, eps, clipping. Two parts, each short enough that a refusal
 * shows both ranks' whole text. LoRA's settings are the spec's (the "spec" part); per-rank
 * things (the paths of the output, the log and the kernel cache) are left out. Returns the
 * length, or a negative value when cap is too small.
 */
enum { S2_DP_OPTS_RUN = 0, S2_DP_OPTS_OPTIMIZER = 1 };
int s2_dp_options_text(const s2_train_opts *o, const s2_dp_layout *l, int part, char *buf,
                       size_t cap);

/* S2LORA_NCCL_TIMEOUT in seconds (a positive decimal number, fractions allowed, at most 1e7),
 * or S2_NCCL_TIMEOUT_DEFAULT when unset. */
#define S2_NCCL_TIMEOUT_DEFAULT 600.0
s2_status s2_dp_timeout(s2_env env, double *seconds, s2_error *err);

/* ---------------------------------------------------------------- the log */

/* One optimizer step as train.jsonl records it. */
typedef struct s2_step_log {
    uint64_t step;
    double loss, loss_ema, lr, grad_norm;
    int64_t tokens;           /* labelled tokens of the global batch */
    double seconds;           /* the slowest rank's step time */
    double tokens_per_s;      /* global: tokens / seconds */
    double mfu;               /* per GPU */
    double mem_gib;           /* this rank's device memory in use (rank 0's in the log) */
    int world_size, dp, sp;
    const double *peak_mem_gib; /* [world_size] each rank's peak so far */
} s2_step_log;

/*
 * The JSON line (no newline): the one-GPU trainer's fields, unchanged in name, order and
 * format ("step", "loss", "loss_ema", "lr", "grad_norm", "tokens", "seconds", "tokens_per_s",
 * "mfu", "mem_gib"), then "world_size", "dp", "sp" and "peak_mem_gib" (an array, by rank). Heap
 * (free()); NULL when out of memory.
 */
char *s2_step_log_json(const s2_step_log *s);

/* ---------------------------------------------------------------- the watchdog */

typedef struct s2_watchdog s2_watchdog;
typedef void (*s2_watchdog_fatal)(void *ctx, const char *msg);

/*
 * Starts the watchdog thread. n: NCCL (its async-error and abort entries); timeout_s: how long
 * one operation may take; grace_s: how long after an abort the process may take to end before
 * fatal(ctx, message) is called (NULL: never). The communicator comes later
 * (s2_watchdog_set_comm): before it, a timed-out operation can only be reported.
 */
s2_status s2_watchdog_start(const s2_nccl *n, double timeout_s, double grace_s,
                            s2_watchdog_fatal fatal, void *ctx, s2_watchdog **out,
                            s2_error *err);
void s2_watchdog_set_comm(s2_watchdog *w, ncclComm_t comm);
/* An operation is in flight from begin to end; what names it in messages ("all-reduce of the
 * gradients of step 12"). Only one at a time; begin while one is in flight renames it. */
void s2_watchdog_begin(s2_watchdog *w, const char *what);
void s2_watchdog_end(s2_watchdog *w);
/*
 * Polls done(ctx, err) (1: complete, 0: not yet, -1: failed, err set) until it completes,
 * checking NCCL's asynchronous error and the time since begin. On a timeout or an NCCL error
 * the communicator is aborted and S2_ERR_CUDA returned: "WHAT did not complete within
 * S2LORA_NCCL_TIMEOUT=T s (given up after E s): ..." or "NCCL failed during WHAT: ...". After
 * an abort every wait fails at once with the first message.
 */
s2_status s2_watchdog_wait(s2_watchdog *w, int (*done)(void *ctx, s2_error *err), void *ctx,
                           s2_error *err);
/*
 * Every use of the communicator (an enqueue) goes between these two. call_begin hands out the
 * communicator, or fails (S2_ERR_CUDA with the abort's reason, the communicator then aborted if
 * nobody had) once the watchdog flagged an abort; a call is timed from call_begin unless an
 * operation (begin) is in flight. While a call is in, the watchdog may abort the communicator
 * to unblock it; call_end returns st, or S2_ERR_CUDA with the abort's reason when an abort
 * came meanwhile: the caller must then never touch the communicator again.
 */
s2_status s2_watchdog_call_begin(s2_watchdog *w, const char *what, ncclComm_t *comm,
                                 s2_error *err);
s2_status s2_watchdog_call_end(s2_watchdog *w, s2_status st, s2_error *err);
/* Aborts the communicator now (this rank failed: why), unless that was done already; the
 * main thread's, outside any call. */
void s2_watchdog_abort(s2_watchdog *w, const char *why);
/* 1 once the communicator was aborted (it must then never be used or destroyed). */
int s2_watchdog_aborted(s2_watchdog *w);
/* Stops and joins the thread and frees w; NULL is fine. */
void s2_watchdog_stop(s2_watchdog *w);

/* ---------------------------------------------------------------- the communicator */

typedef struct s2_dp s2_dp;

/*
 * The data-parallel side of a run: comm (rank `rank` of `size`, on the current device) used
 * through a non-blocking stream of its own, pinned scratch for scalar collectives, and the
 * watchdog w for every wait. Takes no ownership of comm or w.
 */
s2_status s2_dp_open(const s2_nccl *n, ncclComm_t comm, int rank, int size, s2_watchdog *w,
                     s2_dp **out, s2_error *err);
void s2_dp_close(s2_dp *d);
int s2_dp_rank(const s2_dp *d);
int s2_dp_size(const s2_dp *d);
/* The communicator and NCCL's entries (for the sequence-parallel exchange over the world). */
ncclComm_t s2_dp_comm(const s2_dp *d);
/* The watchdog every enqueue on s2_dp_comm must go through (s2_watchdog_call_begin/_end). */
s2_watchdog *s2_dp_watchdog(const s2_dp *d);
const s2_nccl *s2_dp_nccl(const s2_dp *d);

/* The gradient buffer (device, fp32, total floats) and its buckets (copied) over n_stages. */
s2_status s2_dp_set_grads(s2_dp *d, float *grad, size_t total, const s2_dp_bucket *b, int nb,
                          int n_stages, s2_error *err);
/* Arms the next backward: its stage callbacks start the bucket all-reduces; step names the
 * optimizer step in messages. */
void s2_dp_arm(s2_dp *d, uint64_t step);
/* The model's stage callback (model.h's s2_gm_stage_fn; ctx = the s2_dp): records an event on
 * stream and all-reduces the buckets of that stage on the side stream after it. */
s2_status s2_dp_stage(void *ctx, int stage, cudaStream_t stream, s2_error *err);
/*
 * Ends the armed backward: checks that every bucket was started, sums vals[0..n) (fp64: the
 * step's nll and labelled tokens) over the ranks after them, makes stream wait for all of it
 * and waits (polled, under the watchdog) until it is done. vals receive the sums.
 */
s2_status s2_dp_finish(s2_dp *d, cudaStream_t stream, double *vals, int n, s2_error *err);

/* This rank failed (why): the communicator is aborted at once, so that nothing here (nor the
 * cleanup that follows: freeing device memory waits for the device) waits for the other ranks,
 * whose collectives then fail or time out. */
void s2_dp_fail(s2_dp *d, const char *why);

/* Scalar collectives on the side stream, waited for under the watchdog; what names them. */
s2_status s2_dp_sum(s2_dp *d, double *vals, int n, const char *what, s2_error *err);
s2_status s2_dp_max(s2_dp *d, double *vals, int n, const char *what, s2_error *err);
/* all[size] receives every rank's v, by rank. */
s2_status s2_dp_gather(s2_dp *d, double v, double *all, const char *what, s2_error *err);

#endif

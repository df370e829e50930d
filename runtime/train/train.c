/* train.c — the training loop and the perplexity evaluation on the GPU model (train.h). */
#include "runtime/train/train.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "runtime/train/data.h"
#include "runtime/train/model.h"
#include "runtime/train/passkey.h"
#include "runtime/ref/ref_train.h"
#include "runtime/core/train_io.h"
#include "runtime/train/sp_xchg.h"
#include "runtime/train/train_dp.h"
#include "runtime/train/train_state.h"

void s2_train_opts_default(s2_train_opts *o, const s2_spec *spec)
{
    memset(o, 0, sizeof *o);
    o->spec = spec;
    o->steps = 1000;
    o->grad_accum = 8;
    o->batch = 1;
    o->lr = 2e-5;
    o->warmup = 20;
    o->schedule = S2_SCHED_CONSTANT;
    o->weight_decay = 0.0;
    o->beta1 = 0.9;
    o->beta2 = 0.999;
    o->eps = 1e-8;
    o->max_grad_norm = 1.0;
    o->save_every = 100;
    o->keep_last = 2;
    o->seed = 42;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void say(s2_train_progress fn, void *ctx, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void say(s2_train_progress fn, void *ctx, const char *fmt, ...)
{
    if (!fn)
        return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fn(ctx, line);
}

/* Dense bf16 tensor-core peak of the card, for MFU; 0 when the card is not known. */
static double peak_flops(const char *device)
{
    if (strstr(device, "H100") || strstr(device, "H200") || strstr(device, "GH200"))
        return 989.4e12;
    if (strstr(device, "A100"))
        return 312e12;
    return 0;
}

/*
 * Model FLOPs of one training token: the linears' forward and the input-gradient backward
 * (4 per frozen weight: no weight gradient exists for them; the adapters are negligible; 6
 * per weight in full mode, which also forms every weight's gradient),
 * plus attention's forward+backward on S² FLOPs (3.5 x 2 G d H per token and layer, as the
 * benchmark counts it). The recomputed forward is not counted: MFU is on model FLOPs.
 */
static double flops_per_token(const s2_spec *sp, int seqlen, int full, int train_w)
{
    const s2_model *m = &sp->model;
    const double hq = (double)m->num_heads * m->head_dim, hk = (double)m->num_kv_heads * m->head_dim;
    const double lin = (double)m->hidden_size * (hq + 2 * hk) + hq * m->hidden_size +
                       3.0 * m->hidden_size * m->intermediate_size;
    const double G = full ? seqlen : (sp->s2attn.group_size < seqlen ? sp->s2attn.group_size
                                                                     : seqlen);
    const double attn = 3.5 * 2.0 * G * m->head_dim * m->num_heads;
    const double per_w = train_w ? 6.0 : 4.0; /* full mode adds each weight's gradient */
    return m->num_layers * (per_w * lin + attn) + per_w * (double)m->vocab_size * m->hidden_size;
}

static double lr_at(const s2_train_opts *o, int64_t step)
{
    return o->schedule == S2_SCHED_COSINE ? s2_ref_lr_cosine_warmup(o->lr, step, o->warmup,
                                                                    o->steps)
                                          : s2_ref_lr_constant_warmup(o->lr, step, o->warmup);
}

/* The separator between packed documents: EOS of the byte vocabulary, else none. */
static int64_t separator(const s2_data_file *f)
{
    return f->vocab == S2_DATA_BYTE_VOCAB ? (int64_t)S2_DATA_BYTE_EOS : S2_DATA_NO_SEP;
}

/* A seed derived from a seed and an index: splitmix64 started b steps into a's stream. */
static uint64_t mix(uint64_t a, uint64_t b)
{
    uint64_t s = a + 0x9E3779B97F4A7C15ull * b;
    return s2_splitmix64(&s);
}

/* The sequence a data position stands for: epoch e = pos / n uses order seed + e. */
typedef struct order {
    uint64_t n, epoch, seed;
    uint64_t *perm;
} order;

static uint64_t order_at(order *od, uint64_t pos)
{
    const uint64_t e = pos / od->n;
    if (e != od->epoch) { /* epoch starts at UINT64_MAX: the first call draws */
        s2_data_order(od->n, od->seed + e, od->perm);
        od->epoch = e;
    }
    return od->perm[pos % od->n];
}

/* Appends line and a newline to the log (a regular file: the run created it). */
static s2_status append_file(const char *path, const char *line, s2_error *err)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_NONBLOCK | O_CLOEXEC, 0644);
    if (fd < 0)
        return s2_error_set(err, S2_ERR_IO, "%s: cannot open for appending: %s", path,
                            strerror(errno));
    struct stat sb;
    const int stat_ok = fstat(fd, &sb) == 0, e = errno;
    if (!stat_ok || !S_ISREG(sb.st_mode)) {
        close(fd);
        return s2_error_set(err, S2_ERR_IO, "%s: %s", path,
                            !stat_ok ? strerror(e) : "not a regular file; the log must be one");
    }
    size_t n = strlen(line);
    char *buf = malloc(n + 1);
    if (!buf) {
        close(fd);
        return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", path);
    }
    memcpy(buf, line, n);
    buf[n++] = '\n';
    s2_status st = S2_OK;
    for (size_t done = 0; done < n && !st;) {
        ssize_t k = write(fd, buf + done, n - done);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            st = s2_error_set(err, S2_ERR_IO, "%s: write failed: %s", path,
                              k < 0 ? strerror(errno) : "no progress");
        else
            done += (size_t)k;
    }
    free(buf);
    if (close(fd) != 0 && !st)
        st = s2_error_set(err, S2_ERR_IO, "%s: write failed: %s", path, strerror(errno));
    return st;
}

static s2_status save_all(s2_gm *m, const s2_train_opts *o, const s2_train_state *base,
                          s2_error *err)
{
    char dir[1200], adapter[1200], trainable[1200];
    snprintf(dir, sizeof dir, "%s/state", o->out_dir);
    snprintf(adapter, sizeof adapter, "%s/adapter", o->out_dir);
    snprintf(trainable, sizeof trainable, "%s/trainable.safetensors", o->out_dir);
    s2_train_state s = *base;
    s.n = 0;
    s.t = NULL;
    s.spec_sha256 = NULL;
    s2_status st = s2_gm_save_state(m, &s, err);
    s.spec_sha256 = base->spec_sha256;
    if (!st)
        st = s2_state_save(dir, &s, o->keep_last, err);
    s.spec_sha256 = NULL;
    s2_state_free(&s);
    char model[1200];
    snprintf(model, sizeof model, "%s/model", o->out_dir);
    if (!st && o->full)
        st = s2_gm_export_full(m, model, o->model_dir, err);
    else if (!st)
        st = s2_gm_export(m, adapter, o->model_dir,
                          o->spec->lora.trainable ? trainable : NULL, err);
    return st;
}

/*
 * Saves the state (save_all) on rank 0; with several ranks every rank then meets the others
 * in a barrier (an all-reduce of rank 0's outcome), so no rank goes on or exits before the
 * save is complete, and all stop when it failed.
 */
static s2_status save_step(s2_gm *m, const s2_train_opts *o, const s2_train_state *state,
                           s2_error *err)
{
    const int lead = !o->dist || s2_dp_rank(o->dist) == 0;
    s2_status st = lead ? save_all(m, o, state, err) : S2_OK;
    if (!o->dist)
        return st;
    double failed = st ? 1 : 0;
    char what[96];
    snprintf(what, sizeof what, "the barrier after rank 0's save of step %llu",
             (unsigned long long)state->step);
    s2_error e = {0};
    s2_status bst = s2_dp_max(o->dist, &failed, 1, what, &e);
    if (bst) { /* a failed barrier always fails the run (rank 0's own error, if any, first) */
        if (!st && err) {
            s2_error_clear(err);
            *err = e;
        } else {
            s2_error_clear(&e);
        }
        return st ? st : bst;
    }
    s2_error_clear(&e);
    if (!st && failed > 0)
        st = s2_error_set(err, S2_ERR_IO, "rank 0 could not save the state of step %llu (its "
                          "output says why): stopping", (unsigned long long)state->step);
    return st;
}

/* Data parallel: the gradient buffer's buckets (train_dp.h) handed to the communicator. */
static s2_status dp_setup(s2_gm *m, s2_dp *d, int *nb, s2_error *err)
{
    const int n = s2_gm_n_trainable(m), L = s2_gm_num_layers(m);
    s2_dp_item *it = malloc((size_t)(n ? n : 1) * sizeof *it);
    if (!it)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    s2_status st = S2_OK;
    for (int i = 0; i < n && !st; i++) {
        const char *name = s2_gm_trainable_name(m, i, NULL, NULL, NULL);
        it[i].stage = s2_dp_stage_of(name, L);
        if (s2_gm_trainable_range(m, i, &it[i].off, &it[i].n) || it[i].stage < 0)
            st = s2_error_set(err, S2_ERR_INVALID, "data parallel: trainable tensor %s: no "
                              "backward stage is known for it", name);
    }
    size_t total = 0;
    float *grad = s2_gm_grad_buffer(m, &total);
    s2_dp_bucket *b = NULL;
    *nb = 0;
    if (!st)
        st = s2_dp_buckets(it, n, total, s2_dp_n_stages(L),
                           S2_DP_BUCKET_BYTES_DEFAULT / sizeof(float), &b, nb, err);
    if (!st)
        st = s2_dp_set_grads(d, grad, total, b, *nb, s2_dp_n_stages(L), err);
    free(it);
    free(b);
    return st;
}

/* ---- checks before a device is opened ------------------------------------------------------ */

/* dir can be written in, or, when create and it does not exist yet, created (its nearest
 * existing ancestor is a directory that can be written in). */
static s2_status writable_dir(const char *dir, int create, s2_error *err)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path)
        return s2_error_set(err, S2_ERR_IO, "%s: path too long", dir);
    for (;;) {
        struct stat sb;
        if (stat(path, &sb) == 0) {
            const int above = strcmp(path, dir) != 0; /* an ancestor of dir, to create it in */
            if (!S_ISDIR(sb.st_mode))
                return s2_error_set(err, S2_ERR_IO, "%s: not a directory%s%s", path,
                                    above ? ", so cannot create " : "", above ? dir : "");
            if (access(path, W_OK | X_OK) != 0)
                return s2_error_set(err, S2_ERR_IO, "%s: cannot write in this directory%s%s: %s",
                                    path, above ? " to create " : "", above ? dir : "",
                                    strerror(errno));
            return S2_OK;
        }
        if ((errno != ENOENT && errno != ENOTDIR) || !create)
            return s2_error_set(err, S2_ERR_IO, "%s: %s", path, strerror(errno));
        /* up one level: "a/b/c" -> "a/b", "a" -> ".", "/a" -> "/" */
        char *slash = strrchr(path, '/');
        while (slash && slash > path && slash[1] == '\0') { /* trailing slashes */
            *slash = '\0';
            slash = strrchr(path, '/');
        }
        if (!slash)
            snprintf(path, sizeof path, ".");
        else if (slash == path)
            path[1] = '\0';
        else
            *slash = '\0';
    }
}

s2_status s2_output_check(const char *path, int is_dir, s2_error *err)
{
    if (is_dir)
        return writable_dir(path, 1, err);
    struct stat sb;
    if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode))
        return s2_error_set(err, S2_ERR_IO, "%s: exists and is not a regular file (%s)", path,
                            S_ISDIR(sb.st_mode) ? "a directory" : "a device, FIFO or socket");
    char dir[PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir)
        return s2_error_set(err, S2_ERR_IO, "%s: path too long", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    s2_status st = writable_dir(dir, 0, err);
    if (st)
        s2_error_prefix(err, "%s: cannot be written", path);
    return st;
}

s2_status s2_model_files_check(const s2_spec *spec, const char *model_dir,
                               const char *adapter_dir, const char *trainable_path,
                               s2_error *err)
{
    return s2_model_files_check_rope(spec, model_dir, adapter_dir, trainable_path, S2_ROPE_MATCH,
                                     err);
}

s2_status s2_model_files_check_rope(const s2_spec *spec, const char *model_dir,
                                    const char *adapter_dir, const char *trainable_path,
                                    s2_rope_policy rope, s2_error *err)
{
    s2_ckpt *ck = NULL;
    s2_status st = s2_ckpt_open_headers(model_dir, &ck, err);
    if (!st)
        st = s2_ckpt_check_rope(ck, spec, rope, err);
    s2_ckpt_close(ck);
    if (!st && adapter_dir)
        st = s2_ckpt_check_adapter(adapter_dir, spec, err);
    if (!st && trainable_path)
        st = s2_ckpt_check_trainable(trainable_path, spec, err);
    return st;
}

/* The token file's header against the model: its vocabulary fits the embedding table. */
static s2_status data_check(const char *path, const s2_spec *sp, s2_data_info *info,
                            s2_error *err)
{
    s2_status st = s2_data_check(path, info, err);
    if (!st && info->vocab > (uint32_t)sp->model.vocab_size)
        st = s2_error_set(err, S2_ERR_INVALID,
                          "%s: token vocabulary %u is larger than the model's vocab_size %d",
                          path, info->vocab, sp->model.vocab_size);
    return st;
}

/* The numbers of a run: counts in range, and a micro-batch's tokens and a step's sequences a
 * rank within an int. */
static s2_status opts_check(const s2_train_opts *o, int C, s2_error *err)
{
    if (o->grad_accum < 1 || o->batch < 1 || o->steps < 0 || C < 2)
        return s2_error_set(err, S2_ERR_INVALID,
                            "train: grad_accum %d (>= 1), batch %d (>= 1), steps %lld (>= 0), "
                            "seqlen %d (>= 2)", o->grad_accum, o->batch, (long long)o->steps, C);
    if ((int64_t)o->batch * C > INT_MAX)
        return s2_error_set(err, S2_ERR_INVALID,
                            "train: batch %d x seqlen %d = %lld tokens a micro-batch: at most %d",
                            o->batch, C, (long long)o->batch * C, INT_MAX);
    if ((int64_t)o->batch * o->grad_accum > INT_MAX)
        return s2_error_set(err, S2_ERR_INVALID,
                            "train: batch %d x grad_accum %d = %lld sequences a step: at most %d "
                            "a rank", o->batch, o->grad_accum,
                            (long long)o->batch * o->grad_accum, INT_MAX);
    if (o->batch > 1 && o->sp > 1)
        return s2_error_set(err, S2_ERR_INVALID,
                            "train: batch %d with sp %d: a sequence-parallel micro-batch is one "
                            "sequence shared by the sp ranks (give batch 1)", o->batch, o->sp);
    return S2_OK;
}

s2_status s2_train_check(const s2_train_opts *o, s2_error *err)
{
    const s2_spec *sp = o->spec;
    const int C = o->seqlen > 0 ? o->seqlen : sp->context_length;
    s2_status st = opts_check(o, C, err);
    if (!st)
        st = s2_model_files_check_rope(sp, o->model_dir, NULL, NULL,
                                       o->rope_spec ? S2_ROPE_SPEC : S2_ROPE_MATCH, err);
    s2_data_info di = {0};
    if (!st)
        st = data_check(o->data_path, sp, &di, err);
    const int64_t sep = di.vocab == S2_DATA_BYTE_VOCAB ? (int64_t)S2_DATA_BYTE_EOS
                                                       : S2_DATA_NO_SEP;
    if (!st && !s2_data_count_sequences(di.n_tokens, di.n_docs, (uint64_t)C, sep))
        st = s2_error_set(err, S2_ERR_INVALID,
                          "%s: %llu tokens pack into no sequence of %d tokens", o->data_path,
                          (unsigned long long)di.n_tokens, C);
    char path[1200];
    if (!st)
        st = s2_output_check(o->out_dir, 1, err);
    if (!st && o->log_path)
        st = s2_output_check(o->log_path, 0, err);
    const char *const subdirs[] = {"state", o->full ? "model" : "adapter"};
    for (int i = 0; !st && i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", o->out_dir, subdirs[i]);
        st = s2_output_check(path, 1, err);
    }
    struct stat sb; /* in a directory checked above; it need not exist yet */
    snprintf(path, sizeof path, "%s/trainable.safetensors", o->out_dir);
    if (!st && !o->full && sp->lora.trainable && stat(path, &sb) == 0 && !S_ISREG(sb.st_mode))
        st = s2_error_set(err, S2_ERR_IO, "%s: exists and is not a regular file", path);
    if (!st && o->resume) {
        snprintf(path, sizeof path, "%s/state", o->out_dir);
        s2_train_state meta = {0};
        int found = 0;
        st = s2_state_check_latest(path, &meta, &found, err);
        if (!st && found && meta.spec_sha256 && strcmp(meta.spec_sha256, sp->hash_hex))
            st = s2_error_set(err, S2_ERR_INVALID,
                              "%s: the state was trained with spec %s, this run's spec is %s "
                              "(same file and --set values are needed to resume)", path,
                              meta.spec_sha256, sp->hash_hex);
        s2_state_free(&meta);
    }
    return st;
}

s2_status s2_eval_check(const s2_eval_opts *o, s2_error *err)
{
    const s2_spec *sp = o->spec;
    const int C = o->seqlen > 0 ? o->seqlen : sp->context_length;
    const int stride = o->stride > 0 ? o->stride : C;
    if (C < 2 || stride > C)
        return s2_error_set(err, S2_ERR_INVALID,
                            "eval: seqlen %d (>= 2), stride %d (1..seqlen)", C, stride);
    s2_status st = s2_model_files_check_rope(sp, o->model_dir, o->adapter_dir,
                                             o->trainable_path,
                                             o->rope_spec ? S2_ROPE_SPEC : S2_ROPE_MATCH, err);
    s2_data_info di = {0};
    if (!st && o->data_path)
        st = data_check(o->data_path, sp, &di, err);
    if (!st && o->data_path && di.n_tokens < (uint64_t)C + 1)
        st = s2_error_set(err, S2_ERR_INVALID, "%s: %llu tokens, a window needs %d",
                          o->data_path, (unsigned long long)di.n_tokens, C + 1);
    return st;
}

s2_status s2_train_run(const s2_rt *rt, const s2_train_opts *o, s2_error *err)
{
    s2_dp *dist = o->dist;
    const int rank = dist ? s2_dp_rank(dist) : 0, world = dist ? s2_dp_size(dist) : 1;
    const int spn = o->sp > 1 ? o->sp : 1, dp = world / spn;
    const int slot = s2_dp_slot(rank, spn), chunk = s2_sp_chunk_of(rank, spn);
    const int lead = rank == 0;
    const s2_train_progress prog = lead ? o->progress : NULL; /* rank 0 reports */
    const s2_spec *sp = o->spec;
    const int C = o->seqlen > 0 ? o->seqlen : sp->context_length;
    s2_status st = opts_check(o, C, err);
    if (st)
        return st;
    if (spn > 1 && (!dist || world % spn))
        return s2_error_set(err, S2_ERR_INVALID, "train: --sp %d needs a world of a multiple of "
                            "%d ranks over NCCL; this one has %d", spn, spn, world);
    const int nb_seq = o->batch; /* sequences a micro-batch */
    const uint64_t global_batch = (uint64_t)dp * (uint64_t)o->grad_accum * (uint64_t)nb_seq;
    s2_sp_plan spp = {0};
    int halo = 0;
    st = spn > 1 ? s2_sp_train_plan(sp, C, spn, o->full_attention, &spp, &halo, err) : S2_OK;
    const int lo = spn > 1 && !st ? spp.rank[chunk].lo : 0;
    const int hi = spn > 1 && !st ? spp.rank[chunk].hi : C;
    const int klo = spn > 1 && !st ? s2_sp_union_klo(&spp, chunk) : 0;
    if (!st && lead)
        st = s2_mkdir_p(o->out_dir, err);
    if (st) {
        s2_sp_plan_free(&spp);
        return st;
    }
    char log_path[1200];
    snprintf(log_path, sizeof log_path, "%s", o->log_path ? o->log_path : "");
    if (!o->log_path)
        snprintf(log_path, sizeof log_path, "%s/train.jsonl", o->out_dir);
    if (lead && !o->resume) /* a fresh run starts a fresh log; a resumed one appends to its own */
        st = s2_write_file_atomic(log_path, "", 0, err);
    if (st)
        return st;

    s2_data_file *df = NULL;
    s2_ckpt *ck = NULL;
    s2_gm *m = NULL;
    s2_sp_nccl *xc = NULL;
    s2_sp_transport tp = {0};
    uint32_t *seq = NULL;
    int32_t *tok = NULL, *lab = NULL, *cu = NULL;
    order od = {0};
    s2_train_state state = {0};

    st = s2_data_open(o->data_path, &df, err);
    if (!st && df->vocab > (uint32_t)sp->model.vocab_size)
        st = s2_error_set(err, S2_ERR_INVALID,
                          "%s: token vocabulary %u is larger than the model's vocab_size %d",
                          o->data_path, df->vocab, sp->model.vocab_size);
    const int64_t sep = st ? 0 : separator(df);
    if (!st) {
        od.n = s2_data_num_sequences(df, (uint64_t)C, sep);
        if (!od.n)
            st = s2_error_set(err, S2_ERR_INVALID,
                              "%s: %llu tokens pack into no sequence of %d tokens", o->data_path,
                              (unsigned long long)df->n_tokens, C);
    }
    if (!st) {
        od.seed = o->seed;
        od.epoch = UINT64_MAX;
        od.perm = calloc(od.n, sizeof *od.perm);
        seq = malloc(((size_t)C + 1) * sizeof *seq);
        tok = malloc((size_t)C * nb_seq * sizeof *tok);
        lab = malloc((size_t)C * nb_seq * sizeof *lab);
        cu = malloc(((size_t)nb_seq + 1) * sizeof *cu);
        if (!od.perm || !seq || !tok || !lab || !cu)
            st = s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    }
    if (!st)
        st = s2_ckpt_open_progress(o->model_dir, o->load_progress, o->load_progress_ctx, &ck,
                                   err);
    s2_gm_opts go = {.max_tokens = (hi - lo) * nb_seq, .cache_dir = o->cache_dir,
                     .init_seed = mix(o->seed, 1), .full = o->full, .recompute = o->recompute,
                     .sp_halo = halo, .rope_spec = o->rope_spec};
    if (!st)
        st = s2_gm_open(&m, rt, sp, ck, &go, err);
    if (!st && spn > 1) /* the halo exchange with the other chunks of this slot */
        st = s2_sp_nccl_open(&xc, s2_dp_nccl(dist), s2_dp_comm(dist), s2_dp_watchdog(dist), &spp,
                             chunk, s2_sp_world_rank(rank, spn, 0),
                             sp->model.num_kv_heads * sp->model.head_dim, sp->dtype,
                             s2_gm_kern(m), err);
    if (xc)
        s2_sp_nccl_transport(xc, &tp);
    s2_ckpt_close(ck);
    ck = NULL;

    /* a fresh run or the last saved state */
    state.data_seed = o->seed;
    state.rng_seed = mix(o->seed, 2);
    state.spec_sha256 = (char *)sp->hash_hex;
    state.global_batch = global_batch;
    /* with several ranks, "no state" was agreed on at the rendezvous: nothing is looked for */
    if (!st && o->resume && (o->resume_from || !dist)) {
        char dir[1200];
        snprintf(dir, sizeof dir, "%s/state", o->out_dir);
        s2_train_state loaded = {0};
        int found = 0;
        if (o->resume_from) {
            st = s2_state_load_info(dir, o->resume_from, &loaded, err);
            found = !st;
        } else {
            st = s2_state_load_latest(dir, &loaded, &found, err);
        }
        if (!st && found && loaded.global_batch && loaded.global_batch != global_batch)
            st = s2_error_set(err, S2_ERR_INVALID,
                              "%s: the state was trained with a global batch of %llu sequences "
                              "a step, this run's is %d rank%s x %d micro-batches x %d = %llu",
                              dir, (unsigned long long)loaded.global_batch, dp,
                              dp == 1 ? "" : "s", o->grad_accum, nb_seq,
                              (unsigned long long)global_batch);
        if (!st && found && loaded.spec_sha256 && strcmp(loaded.spec_sha256, sp->hash_hex))
            st = s2_error_set(err, S2_ERR_INVALID,
                              "%s: the state was trained with spec %s, this run's spec is %s "
                              "(same file and --set values are needed to resume)", dir,
                              loaded.spec_sha256, sp->hash_hex);
        if (!st && found)
            st = s2_gm_load_state(m, &loaded, err);
        if (!st && found) {
            state.step = loaded.step;
            state.data_position = loaded.data_position;
            state.data_seed = loaded.data_seed;
            state.rng_seed = loaded.rng_seed;
            state.loss_ema = loaded.loss_ema;
            od.seed = loaded.data_seed;
            say(prog, o->progress_ctx, "resumed at step %llu (data position %llu)",
                (unsigned long long)state.step, (unsigned long long)state.data_position);
        }
        s2_state_free(&loaded);
    }
    int nb = 0;
    if (!st && dist)
        st = dp_setup(m, dist, &nb, err);
    if (!st && dist) { /* every rank starts at the same point (and has loaded its state) */
        double v[4] = {(double)state.step, (double)state.data_position, -(double)state.step,
                       -(double)state.data_position};
        st = s2_dp_max(dist, v, 4, "the ranks' check of where they start", err);
        if (!st && (v[0] != -v[2] || v[1] != -v[3]))
            st = s2_error_set(err, S2_ERR_INVALID,
                              "the ranks start at different points: steps %.0f .. %.0f, data "
                              "positions %.0f .. %.0f (each rank must resume the same state)",
                              -v[2], v[0], -v[3], v[1]);
    }
    if (!st)
        say(prog, o->progress_ctx,
            "train (%s): %s, %d tokens x %d sequence%s a micro-batch x %d micro-batches per "
            "step, %zu trainable parameters, %.2f GiB on the device, %s attention",
            o->full ? "full" : "LoRA+", sp->name, C, nb_seq, nb_seq == 1 ? "" : "s",
            o->grad_accum, s2_gm_trainable_numel(m), (double)s2_gm_device_bytes(m) / (1 << 30),
            o->full_attention ? "full" : "S2");
    if (!st) {
        const char *what;
        s2_gm_recompute(m, &what);
        say(prog, o->progress_ctx, "%s; %s", what, s2_gm_lora_algos(m));
    }
    if (!st && dist) {
        const double tn = (double)s2_gm_trainable_numel(m);
        say(prog, o->progress_ctx,
            "data parallel: %d rank%s (dp %d x sp %d), a global batch of %llu sequences a "
            "step (%d micro-batches x %d sequence%s x %d): slot d (ranks d x %d ..) trains "
            "on sequences P + m x %d + d (m < %d); gradients all-reduced in %d buckets "
            "(%.1f MiB) as the backward runs", world, world == 1 ? "" : "s", dp, spn,
            (unsigned long long)global_batch, o->grad_accum, nb_seq, nb_seq == 1 ? "" : "s",
            dp, spn, dp, o->grad_accum * nb_seq, nb, tn * 4 / (1 << 20));
        /* the plan's numbers: every rank's chunk, and the halo rows it receives a layer */
        const double row_bytes = 2.0 * sp->model.num_kv_heads * sp->model.head_dim * 2;
        for (int s = 0; spn > 1 && s < spn; s++) {
            const int k0 = s2_sp_union_klo(&spp, s);
            say(prog, o->progress_ctx,
                "sequence parallel: chunk %d (ranks d x %d + %d) holds rows [%d, %d) of %d, "
                "receives halo rows [%d, %d): %.2f MiB k+v a layer (dk+dv back alike)", s,
                spn, s, spp.rank[s].lo, spp.rank[s].hi, C, k0, spp.rank[s].lo,
                (spp.rank[s].lo - k0) * row_bytes / (1 << 20));
        }
        if (spn > 1)
            say(prog, o->progress_ctx,
                "sequence parallel: %.2f MiB k+v a layer over the %d chunks (the per-kind plan "
                "would move %.2f MiB); %lld labelled tokens a sequence, as with one GPU", (double)s2_sp_union_fwd_bytes(&spp) / (1 << 20), spn,
                (double)spp.fwd_bytes / (1 << 20), (long long)C);
        say(prog, o->progress_ctx,
            "optimizer states replicated on every rank: %.3f GiB a rank (fp32 masters and AdamW "
            "m and v of %.0f parameters; sharding them over the ranks is a possible later "
            "option)", 3 * tn * 4 / (1 << 30), tn);
    }

    const double fpt = flops_per_token(sp, C, o->full_attention, o->full);
    const double peak = peak_flops(rt->name);
    size_t free0 = 0, total = 0;
    cudaMemGetInfo(&free0, &total);
    double peak_mem = 0; /* this rank's, GiB */
    double *peaks = calloc((size_t)world, sizeof *peaks);
    if (!st && !peaks)
        st = s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    int64_t last_save = (int64_t)state.step;
    while (!st && (int64_t)state.step < o->steps) {
        const double t0 = now_s();
        const double lr = lr_at(o, (int64_t)state.step);
        double nll = 0;
        int64_t count = 0;
        st = s2_gm_zero_grad(m, err);
        /* the step's labelled tokens over every slot's micro-batches: every position (a
         * packed sequence holds C + 1 tokens; the last chunk's next token is seq[C]) */
        const double denom = (double)global_batch * C;
        for (int mb = 0; mb < o->grad_accum && !st; mb++) {
            /* the micro-batch's sequences: windows mb x batch .. of this slot's share of the
             * step (train_dp.h), each C tokens of tok and lab from cu[s] */
            const uint64_t pos0 = s2_dp_sequence(state.data_position, dp, slot, mb * nb_seq);
            for (int s = 0; s < nb_seq && !st; s++) {
                const uint64_t pos = s2_dp_sequence(state.data_position, dp, slot,
                                                    mb * nb_seq + s);
                st = s2_data_batch(df, (uint64_t)C, sep, order_at(&od, pos), seq, err);
                cu[s] = s * (hi - lo);
                for (int t = 0; !st && t < hi - lo; t++) { /* this rank's chunk [lo, hi) */
                    tok[cu[s] + t] = (int32_t)seq[lo + t];
                    lab[cu[s] + t] = (int32_t)seq[lo + t + 1];
                }
            }
            cu[nb_seq] = nb_seq * (hi - lo);
            const s2_gm_sp chunk_sp = {.lo = lo, .klo = klo, .n_global = C,
                                       .next_token = (int32_t)seq[hi], .tp = &tp};
            s2_gm_batch b = {.tokens = tok, .T = nb_seq * (hi - lo), .cu_seqlens = cu,
                             .B = nb_seq, .labels = spn > 1 ? NULL : lab,
                             .dropout_seed = mix(state.rng_seed, pos0),
                             .sp = spn > 1 ? &chunk_sp : NULL};
            double n1 = 0;
            int64_t c1 = 0;
            if (dist && mb == o->grad_accum - 1) { /* the last micro-step reduces as it goes */
                s2_dp_arm(dist, state.step + 1);
                s2_gm_set_stage_hook(m, s2_dp_stage, dist);
            }
            if (!st)
                st = s2_gm_train_batch(m, &b, o->full_attention, denom, &n1, &c1, err);
            s2_gm_set_stage_hook(m, NULL, NULL);
            nll += n1;
            count += c1;
        }
        if (!st && dist) { /* every bucket reduced; the step's loss and tokens summed */
            double v[2] = {nll, (double)count};
            st = s2_dp_finish(dist, s2_gm_stream(m), v, 2, err);
            nll = v[0];
            count = (int64_t)v[1];
            if (!st && (double)count != denom)
                st = s2_error_set(err, S2_ERR_CHECK,
                                  "step %llu: %lld labelled tokens over the ranks, the "
                                  "gradients were scaled for %.0f",
                                  (unsigned long long)state.step + 1, (long long)count, denom);
        }
        double gnorm = 0, scale = 1;
        if (!st)
            st = s2_gm_grad_norm(m, &gnorm, err);
        if (!st && !isfinite(gnorm))
            st = s2_error_set(err, S2_ERR_CHECK,
                              "step %llu: the gradient norm is %g (loss %g): stopping before "
                              "the update, the last saved state is intact",
                              (unsigned long long)state.step + 1, gnorm, nll / denom);
        if (!st && o->max_grad_norm > 0 && gnorm > o->max_grad_norm)
            scale = o->max_grad_norm / (gnorm + 1e-6);
        if (!st)
            st = s2_gm_step(m, lr, o->beta1, o->beta2, o->eps, o->weight_decay,
                            (int64_t)state.step + 1, scale, err);
        if (!st)
            st = s2_rt_check(cudaDeviceSynchronize(), "optimizer step", err);
        if (st)
            break;
        state.step++;
        state.data_position += global_batch;
        const double loss = count ? nll / (double)count : 0;
        state.loss_ema = state.step == 1 ? loss : 0.98 * state.loss_ema + 0.02 * loss;
        double dt = now_s() - t0;
        size_t fr = 0;
        cudaMemGetInfo(&fr, &total);
        const double mem = (double)(total - fr) / (1 << 30);
        if (mem > peak_mem)
            peak_mem = mem;
        peaks[0] = peak_mem;
        if (dist) { /* the slowest rank sets the pace; every rank's memory is logged */
            st = s2_dp_max(dist, &dt, 1, "the slowest rank's step time", err);
            if (!st)
                st = s2_dp_gather(dist, peak_mem, peaks, "each rank's peak memory", err);
            if (st)
                break;
        }
        const double tps = (double)global_batch * C / dt;
        char mfu[32] = "n/a";
        if (peak > 0)
            snprintf(mfu, sizeof mfu, "%.1f%%", 100.0 * tps * fpt / (peak * world));
        char pace[64] = "";
        if (dist)
            snprintf(pace, sizeof pace, "  %.3f s/step (slowest of %d ranks)", dt, world);
        say(prog, o->progress_ctx,
            "step %6llu/%lld  loss %.4f  lr %.3g  grad_norm %.3f  %.0f tok/s  MFU %s  "
            "mem %.1f GiB%s", (unsigned long long)state.step, (long long)o->steps, loss, lr,
            gnorm, tps, mfu, mem, pace);
        if (lead) {
            const s2_step_log rec = {.step = state.step, .loss = loss,
                                     .loss_ema = state.loss_ema, .lr = lr, .grad_norm = gnorm,
                                     .tokens = count, .seconds = dt, .tokens_per_s = tps,
                                     .mfu = peak > 0 ? tps * fpt / (peak * world) : 0.0,
                                     .mem_gib = mem, .world_size = world, .dp = dp, .sp = spn,
                                     .peak_mem_gib = peaks};
            char *json = s2_step_log_json(&rec);
            st = json ? append_file(log_path, json, err)
                      : s2_error_set(err, S2_ERR_NOMEM, "out of memory");
            free(json);
        }
        if (!st && ((o->save_every > 0 && (int64_t)state.step % o->save_every == 0) ||
                    (int64_t)state.step == o->steps)) {
            st = save_step(m, o, &state, err);
            last_save = (int64_t)state.step;
            if (!st)
                say(prog, o->progress_ctx, "saved step %llu to %s/state and %s/%s",
                    (unsigned long long)state.step, o->out_dir, o->out_dir,
                    o->full ? "model" : "adapter");
        }
    }
    if (!st && last_save != (int64_t)state.step) /* e.g. steps already reached on resume */
        st = save_step(m, o, &state, err);
    if (st && dist) /* nothing of this rank may wait for the others now (the cleanup below) */
        s2_dp_fail(dist, err && err->msg ? err->msg : s2_status_to_string(st));
    state.spec_sha256 = NULL;
    free(peaks);
    if (xc) /* its scratch is freed after the model's stream is done with it */
        cudaDeviceSynchronize();
    s2_sp_nccl_close(xc);
    s2_sp_plan_free(&spp);
    s2_gm_close(m);
    s2_data_close(df);
    free(od.perm);
    free(seq);
    free(tok);
    free(lab);
    free(cu);
    return st;
}

/* The model an evaluation runs: o's checkpoint for batches of up to max_tokens, with o's
 * adapter and trainable tensors when given. No backward runs, so nothing is kept for one. */
static s2_status open_eval_model(const s2_rt *rt, const s2_eval_opts *o, int max_tokens,
                                 int s2attn, s2_gm **m, s2_error *err)
{
    s2_ckpt *ck = NULL;
    s2_status st = s2_ckpt_open_progress(o->model_dir, o->load_progress, o->load_progress_ctx,
                                         &ck, err);
    s2_gm_opts go = {.max_tokens = max_tokens, .cache_dir = o->cache_dir, .no_s2attn = !s2attn,
                     .recompute = S2_GM_RECOMPUTE_LAYER, .rope_spec = o->rope_spec};
    if (!st)
        st = s2_gm_open(m, rt, o->spec, ck, &go, err);
    s2_ckpt_close(ck);
    if (!st && o->adapter_dir)
        st = s2_gm_import(*m, o->adapter_dir, o->trainable_path, err);
    return st;
}

s2_status s2_eval_run(const s2_rt *rt, const s2_eval_opts *o, s2_eval_result *res,
                      s2_error *err)
{
    memset(res, 0, sizeof *res);
    const s2_spec *sp = o->spec;
    const int C = o->seqlen > 0 ? o->seqlen : sp->context_length;
    const int stride = o->stride > 0 ? o->stride : C;
    if (C < 2 || stride > C)
        return s2_error_set(err, S2_ERR_INVALID,
                            "eval: seqlen %d (>= 2), stride %d (1..seqlen)", C, stride);
    s2_data_file *df = NULL;
    s2_gm *m = NULL;
    int32_t *tok = malloc((size_t)C * sizeof *tok), *lab = malloc((size_t)C * sizeof *lab);
    s2_status st = (!tok || !lab) ? s2_error_set(err, S2_ERR_NOMEM, "out of memory")
                                  : s2_data_open(o->data_path, &df, err);
    if (!st && df->vocab > (uint32_t)sp->model.vocab_size)
        st = s2_error_set(err, S2_ERR_INVALID,
                          "%s: token vocabulary %u is larger than the model's vocab_size %d",
                          o->data_path, df->vocab, sp->model.vocab_size);
    if (!st && df->n_tokens < (uint64_t)C + 1)
        st = s2_error_set(err, S2_ERR_INVALID, "%s: %llu tokens, a window needs %d",
                          o->data_path, (unsigned long long)df->n_tokens, C + 1);
    if (!st)
        st = open_eval_model(rt, o, C, o->s2attn, &m, err);
    const double t0 = now_s();
    uint64_t scored_to = 0; /* targets below this index were scored by an earlier window */
    for (uint64_t start = 0; !st && start + (uint64_t)C + 1 <= df->n_tokens;
         start += (uint64_t)stride) {
        if (o->max_windows > 0 && res->windows == o->max_windows)
            break;
        for (int t = 0; t < C; t++) {
            tok[t] = (int32_t)s2_data_token(df, start + (uint64_t)t);
            const uint64_t target = start + (uint64_t)t + 1;
            lab[t] = target < scored_to ? S2_REF_IGNORE_INDEX
                                        : (int32_t)s2_data_token(df, target);
        }
        scored_to = start + (uint64_t)C + 1;
        s2_gm_batch b = {.tokens = tok, .T = C, .labels = lab};
        double nll = 0;
        int64_t count = 0;
        st = s2_gm_eval_batch(m, &b, !o->s2attn, &nll, &count, NULL, err);
        res->nll_sum += nll;
        res->count += count;
        res->windows++;
        if (!st && o->progress && (res->windows % 16 == 0))
            say(o->progress, o->progress_ctx, "eval: %lld windows, ppl so far %.4f",
                (long long)res->windows, exp(res->nll_sum / (double)res->count));
    }
    const double dt = now_s() - t0;
    if (!st) {
        res->ppl = res->count ? exp(res->nll_sum / (double)res->count) : NAN;
        res->tokens_per_s = dt > 0 ? (double)res->windows * C / dt : 0;
    }
    s2_gm_close(m);
    s2_data_close(df);
    free(tok);
    free(lab);
    return st;
}

/* ---- passkey retrieval ----------------------------------------------------------------------- */

/* The GPU model as passkey.h's next-token function: one full forward, full attention. */
typedef struct passkey_model {
    s2_gm *m;
    float *logits; /* [cap, vocab] */
    int vocab;
} passkey_model;

static s2_status passkey_next(void *ctx, const int32_t *tok, int T, float *row, s2_error *err)
{
    passkey_model *pm = ctx;
    s2_gm_batch b = {.tokens = tok, .T = T};
    s2_status st = s2_gm_eval_batch(pm->m, &b, 1, NULL, NULL, pm->logits, err);
    if (!st)
        memcpy(row, pm->logits + (size_t)(T - 1) * pm->vocab, (size_t)pm->vocab * sizeof *row);
    return st;
}

s2_status s2_passkey_run(const s2_rt *rt, const s2_eval_opts *o, int trials, uint64_t seed,
                         s2_passkey_result *res, s2_error *err)
{
    memset(res, 0, sizeof *res);
    const s2_spec *sp = o->spec;
    const int C = o->seqlen > 0 ? o->seqlen : sp->context_length;
    const int V = sp->model.vocab_size;
    if (V < (int)S2_DATA_BYTE_VOCAB)
        return s2_error_set(err, S2_ERR_INVALID,
                            "passkey: the byte-level vocabulary needs vocab_size >= %u, the "
                            "spec's model has %d", S2_DATA_BYTE_VOCAB, V);
    if (trials < 1 || C < s2_passkey_min_seqlen())
        return s2_error_set(err, S2_ERR_INVALID,
                            "passkey: %d trials (>= 1) at seqlen %d (>= %d: the task, the "
                            "information line, the question and the answer)", trials, C,
                            s2_passkey_min_seqlen());
    passkey_model pm = {.vocab = V};
    int32_t *tok = malloc((size_t)C * sizeof *tok);
    float *row = malloc((size_t)V * sizeof *row);
    pm.logits = malloc((size_t)C * V * sizeof *pm.logits);
    s2_status st = (!tok || !row || !pm.logits) ? s2_error_set(err, S2_ERR_NOMEM, "out of memory")
                                                : open_eval_model(rt, o, C, 0, &pm.m, err);
    for (int tr = 0; tr < trials && !st; tr++) {
        s2_passkey_prompt p;
        int ok = 0;
        int32_t picks[S2_PASSKEY_ANSWER];
        st = s2_passkey_prompt_make(C, seed, tr, tok, C, &p, err);
        if (!st)
            st = s2_passkey_decode(&p, tok, V, row, passkey_next, &pm, &ok, picks, err);
        if (st)
            break;
        res->trials++;
        res->correct += ok;
        if (o->progress) {
            char got[S2_PASSKEY_ANSWER + 1];
            for (int i = 0; i < S2_PASSKEY_ANSWER; i++) {
                const int c = s2_data_byte_of((uint32_t)picks[i]);
                got[i] = c >= 32 && c < 127 ? (char)c : '?';
            }
            got[S2_PASSKEY_ANSWER] = 0;
            say(o->progress, o->progress_ctx, "passkey trial %d: key %s at depth %d/%d: %s "
                "(decoded \"%s\")", tr + 1, p.key, p.prefix, p.garbage,
                ok ? "retrieved" : "missed", got);
        }
    }
    res->accuracy = res->trials ? (double)res->correct / res->trials : 0;
    s2_gm_close(pm.m);
    free(tok);
    free(row);
    free(pm.logits);
    return st;
}

/* train_dp.c — data-parallel training: the pure arithmetic (train_dp.h). The NCCL side and the
 * watchdog are in train_dp_comm.c. */
#include "runtime/train/train_dp.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/train/model.h"

/* ---------------------------------------------------------------- layout and data */

/* ", --gpus D --grad-accum G/D" for every D dividing g (at most 12 of them, then "..."): g is
 * the global batch in micro-batches (sequences / --batch). */
static void valid_pairs(uint64_t g, char *buf, size_t cap)
{
    size_t len = 0;
    int shown = 0;
    buf[0] = '\0';
    for (uint64_t d = 1; d <= g && d <= S2_WORLD_MAX && len < cap; d++) {
        if (g % d || g / d > INT_MAX)
            continue;
        if (shown == 12) {
            snprintf(buf + len, cap - len, ", ...");
            return;
        }
        int k = snprintf(buf + len, cap - len, "%s--gpus %llu --grad-accum %llu",
                         shown ? ", " : "", (unsigned long long)d, (unsigned long long)(g / d));
        if (k < 0)
            return;
        len += (size_t)k;
        shown++;
    }
}

s2_status s2_dp_resolve(int world, int dp, int sp, int grad_accum, int grad_accum_default,
                        int batch, uint64_t saved_global_batch, s2_dp_layout *out,
                        s2_error *err)
{
    memset(out, 0, sizeof *out);
    if (world < 1 || world > S2_WORLD_MAX || dp < 0 || sp < 0 || grad_accum < 0 ||
        grad_accum_default < 1 || batch < 1)
        return s2_error_set(err, S2_ERR_INVALID,
                            "data parallel: world %d (1..%d), --dp %d, --sp %d, --grad-accum %d "
                            "(>= 1, 0: not given), default grad accum %d (>= 1), --batch %d "
                            "(>= 1)", world, S2_WORLD_MAX, dp, sp, grad_accum,
                            grad_accum_default, batch);
    if (!sp)
        sp = 1;
    if (world % sp)
        return s2_error_set(err, S2_ERR_INVALID,
                            "--sp %d does not divide the world of %d rank%s: the ranks form "
                            "groups of --sp consecutive ranks (start a multiple of %d ranks, "
                            "or give an --sp dividing %d)", sp, world, world == 1 ? "" : "s", sp,
                            world);
    if (!dp)
        dp = world / sp;
    if (dp * sp != world)
        return s2_error_set(err, S2_ERR_INVALID,
                            "--dp %d x --sp %d is %d rank%s, but the world has %d: --dp is the "
                            "world size / --sp, %d here (leave --dp out, or start %d rank%s)",
                            dp, sp, dp * sp, dp * sp == 1 ? "" : "s", world, world / sp,
                            dp * sp, dp * sp == 1 ? "" : "s");
    char pairs[600], with[48] = "";
    if (batch > 1)
        snprintf(with, sizeof with, " (with --batch %d)", batch);
    if (saved_global_batch) {
        const uint64_t gs = saved_global_batch, b = (uint64_t)batch;
        if (gs % b)
            return s2_error_set(err, S2_ERR_INVALID,
                                "the state was trained with a global batch of %llu sequences a "
                                "step (ranks x --grad-accum x --batch); --batch %d does not "
                                "divide it (give a --batch dividing %llu, or start a fresh run)",
                                (unsigned long long)gs, batch, (unsigned long long)gs);
        const uint64_t g = gs / b; /* micro-batches a step, over the ranks */
        if (grad_accum && (uint64_t)dp * (uint64_t)grad_accum != g) {
            valid_pairs(g, pairs, sizeof pairs);
            return s2_error_set(err, S2_ERR_INVALID,
                                "the state was trained with a global batch of %llu sequences a "
                                "step (ranks x --grad-accum x --batch); this run has %d rank%s x "
                                "--grad-accum %d x --batch %d = %llu. Valid with this state%s: "
                                "%s (or start a fresh run)", (unsigned long long)gs, dp,
                                dp == 1 ? "" : "s", grad_accum, batch,
                                (unsigned long long)dp * (unsigned long long)grad_accum * b, with,
                                pairs);
        }
        if (!grad_accum && (g % (uint64_t)dp || g / (uint64_t)dp > INT_MAX)) {
            valid_pairs(g, pairs, sizeof pairs);
            return s2_error_set(err, S2_ERR_INVALID,
                                "the state was trained with a global batch of %llu sequences a "
                                "step (ranks x --grad-accum x --batch); %d rank%s cannot keep it "
                                "with --batch %d (%d x %d does not divide %llu). Valid with this "
                                "state%s: %s (or start a fresh run)", (unsigned long long)gs, dp,
                                dp == 1 ? "" : "s", batch, dp, batch, (unsigned long long)gs,
                                with, pairs);
        }
        out->derived = !grad_accum;
        grad_accum = (int)(g / (uint64_t)dp);
    } else if (!grad_accum) {
        grad_accum = grad_accum_default;
    }
    out->world = world;
    out->dp = dp;
    out->sp = sp;
    out->grad_accum = grad_accum;
    out->batch = batch;
    out->global_batch = (uint64_t)dp * (uint64_t)grad_accum * (uint64_t)batch;
    return S2_OK;
}

uint64_t s2_dp_sequence(uint64_t pos, int dp, int rank, int micro)
{
    return pos + (uint64_t)micro * (uint64_t)dp + (uint64_t)rank;
}

int s2_dp_slot(int rank, int sp) { return rank / sp; }
int s2_sp_chunk_of(int rank, int sp) { return rank % sp; }
int s2_sp_world_rank(int rank, int sp, int s) { return rank / sp * sp + s; }

s2_status s2_sp_train_plan(const s2_spec *spec, int C, int sp, int full_attention,
                           s2_sp_plan *plan, int *halo, s2_error *err)
{
    memset(plan, 0, sizeof *plan);
    *halo = 0;
    if (sp < 2)
        return s2_error_set(err, S2_ERR_INVALID, "sequence parallel: --sp %d (>= 2)", sp);
    if (full_attention)
        return s2_error_set(err, S2_ERR_INVALID,
                            "--sp %d with --full-attention: sequence-parallel chunks attend "
                            "only through S²-Attn's window units; train with S²-Attn (leave "
                            "--full-attention out) or with --sp 1", sp);
    if (spec->s2attn.shift_mode == S2_SHIFT_ROLL)
        return s2_error_set(err, S2_ERR_INVALID,
                            "--sp %d with %s's s2attn.shift_mode roll: roll's wrap needs the "
                            "last chunk's rows on the first rank, which the exchange does not "
                            "send; use --set s2attn.shift_mode=split (or --sp 1)", sp,
                            spec->name);
    s2_sp_attn a;
    s2_sp_attn_from_spec(spec, &a);
    a.N = C;
    s2_status st = s2_sp_plan_make(&a, sp, S2_SP_DEFAULT_ALIGN, plan, err);
    if (st) {
        s2_error_prefix(err, "--sp %d at %d tokens a sequence", sp, C);
        return st;
    }
    for (int r = 0; r < sp; r++) {
        const int rows = plan->rank[r].lo - s2_sp_union_klo(plan, r);
        if (rows > *halo)
            *halo = rows;
    }
    return S2_OK;
}

/* ---------------------------------------------------------------- gradient buckets */

int s2_dp_n_stages(int num_layers) { return num_layers + 2; }

int s2_dp_stage_of(const char *name, int num_layers)
{
    static const char layers[] = "model.layers.";
    if (!strcmp(name, "model.norm.weight") || !strcmp(name, "lm_head.weight"))
        return 0;
    if (!strcmp(name, "model.embed_tokens.weight"))
        return num_layers + 1;
    if (strncmp(name, layers, sizeof layers - 1))
        return -1;
    const char *p = name + sizeof layers - 1;
    long l = 0;
    int digits = 0;
    for (; *p >= '0' && *p <= '9' && digits < 9; p++, digits++)
        l = l * 10 + (*p - '0');
    if (!digits || *p != '.' || p[1] == '\0' || l >= num_layers ||
        (digits > 1 && p[-digits] == '0'))
        return -1;
    return num_layers - (int)l;
}

typedef struct ord {
    const s2_dp_item *it;
    int i;
} ord;

static int by_off(const void *a, const void *b)
{
    const ord *x = a, *y = b;
    return x->it->off < y->it->off ? -1 : x->it->off > y->it->off ? 1 : 0;
}

/* Stage first, then the later offset first (the backward runs from the buffer's end). */
static int by_stage(const void *a, const void *b)
{
    const ord *x = a, *y = b;
    if (x->it->stage != y->it->stage)
        return x->it->stage < y->it->stage ? -1 : 1;
    return x->it->off > y->it->off ? -1 : x->it->off < y->it->off ? 1 : 0;
}

s2_status s2_dp_buckets(const s2_dp_item *items, int n_items, size_t total, int n_stages,
                        size_t cap, s2_dp_bucket **out, int *n_out, s2_error *err)
{
    *out = NULL;
    *n_out = 0;
    if (n_items < 0 || cap == 0 || n_stages < 1)
        return s2_error_set(err, S2_ERR_INVALID,
                            "gradient buckets: %d items (>= 0), cap %zu elements (>= 1), %d "
                            "stages (>= 1)", n_items, cap, n_stages);
    ord *o = malloc((size_t)(n_items ? n_items : 1) * sizeof *o);
    s2_dp_bucket *b = malloc((size_t)(n_items ? n_items : 1) * sizeof *b);
    if (!o || !b) {
        free(o);
        free(b);
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    }
    s2_status st = S2_OK;
    for (int i = 0; i < n_items && !st; i++) {
        o[i] = (ord){&items[i], i};
        if (items[i].n == 0)
            st = s2_error_set(err, S2_ERR_INVALID, "gradient buckets: item %d is empty", i);
        else if (items[i].stage < 0 || items[i].stage >= n_stages)
            st = s2_error_set(err, S2_ERR_INVALID,
                              "gradient buckets: item %d has stage %d; valid: 0..%d", i,
                              items[i].stage, n_stages - 1);
    }
    if (!st)
        qsort(o, (size_t)n_items, sizeof *o, by_off);
    size_t at = 0;
    for (int k = 0; k < n_items && !st; k++) {
        const s2_dp_item *it = o[k].it;
        if (it->off > at)
            st = s2_error_set(err, S2_ERR_INVALID,
                              "gradient buckets: elements [%zu, %zu) belong to no item", at,
                              it->off);
        else if (it->off < at)
            st = s2_error_set(err, S2_ERR_INVALID,
                              "gradient buckets: item %d [%zu, %zu) overlaps item %d", o[k].i,
                              it->off, it->off + it->n, o[k - 1].i);
        at = it->off + it->n;
    }
    if (!st && at != total)
        st = s2_error_set(err, S2_ERR_INVALID,
                          "gradient buckets: the items cover [0, %zu), the buffer has %zu "
                          "elements", at, total);
    int nb = 0;
    if (!st) {
        qsort(o, (size_t)n_items, sizeof *o, by_stage);
        for (int k = 0; k < n_items; k++) {
            const s2_dp_item *it = o[k].it;
            s2_dp_bucket *c = nb ? &b[nb - 1] : NULL;
            const int adjacent = c && (it->off + it->n == c->off || c->off + c->n == it->off);
            if (adjacent && c->n + it->n <= cap) {
                if (it->off < c->off)
                    c->off = it->off;
                c->n += it->n;
                c->stage = it->stage; /* items come in stage order: the latest so far */
                c->n_items++;
            } else {
                b[nb++] = (s2_dp_bucket){.off = it->off, .n = it->n, .stage = it->stage,
                                         .n_items = 1};
            }
        }
    }
    free(o);
    if (st) {
        free(b);
        return st;
    }
    *out = b;
    *n_out = nb;
    return S2_OK;
}

/* ---------------------------------------------------------------- what the ranks must share */

static const char *recompute_name(int r)
{
    return r == S2_GM_RECOMPUTE_LAYER ? "layer" : r == S2_GM_RECOMPUTE_MLP ? "mlp" : "auto";
}

/* The shortest of %.15g, %.16g, %.17g that reads back as x (equal text: equal value). */
static const char *num(char *buf, size_t cap, double x)
{
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, cap, "%.*g", prec, x);
        if (strtod(buf, NULL) == x)
            break;
    }
    return buf;
}

int s2_dp_options_text(const s2_train_opts *o, const s2_dp_layout *l, int part, char *buf,
                       size_t cap)
{
    int k;
    if (part == S2_DP_OPTS_OPTIMIZER) {
        char lr[32], wd[32], b1[32], b2[32], eps[32], clip[32];
        k = snprintf(buf, cap,
                     "lr=%s warmup=%lld schedule=%s weight_decay=%s beta1=%s beta2=%s eps=%s "
                     "max_grad_norm=%s", num(lr, sizeof lr, o->lr), (long long)o->warmup,
                     o->schedule == S2_SCHED_COSINE ? "cosine" : "constant",
                     num(wd, sizeof wd, o->weight_decay), num(b1, sizeof b1, o->beta1),
                     num(b2, sizeof b2, o->beta2), num(eps, sizeof eps, o->eps),
                     num(clip, sizeof clip, o->max_grad_norm));
    } else {
        const int seqlen = o->seqlen > 0 ? o->seqlen : o->spec ? o->spec->context_length : 0;
        k = snprintf(buf, cap,
                     "steps=%lld dp=%d sp=%d grad_accum=%d batch=%d global_batch=%llu "
                     "seqlen=%d save_every=%lld seed=%llu resume=%d mode=%s attention=%s "
                     "recompute=%s rope_scaling=%s",
                     (long long)o->steps, l->dp, l->sp, l->grad_accum, l->batch,
                     (unsigned long long)l->global_batch, seqlen, (long long)o->save_every,
                     (unsigned long long)o->seed, o->resume ? 1 : 0, o->full ? "full" : "lora",
                     o->full_attention ? "full" : "s2", recompute_name(o->recompute),
                     o->rope_spec ? "spec" : "match");
    }
    return k >= 0 && (size_t)k < cap ? k : -1;
}

s2_status s2_dp_timeout(s2_env env, double *seconds, s2_error *err)
{
    return s2_env_seconds(env, "S2LORA_NCCL_TIMEOUT", S2_NCCL_TIMEOUT_DEFAULT, "600", seconds, err);
}

/* ---------------------------------------------------------------- the log */

char *s2_step_log_json(const s2_step_log *s)
{
    s2_buf b = {0};
    s2_buf_printf(&b,
                  "{\"step\": %llu, \"loss\": %.6g, \"loss_ema\": %.6g, \"lr\": %.6g, "
                  "\"grad_norm\": %.6g, \"tokens\": %lld, \"seconds\": %.4f, "
                  "\"tokens_per_s\": %.1f, \"mfu\": %.4f, \"mem_gib\": %.3f",
                  (unsigned long long)s->step, s->loss, s->loss_ema, s->lr, s->grad_norm,
                  (long long)s->tokens, s->seconds, s->tokens_per_s, s->mfu, s->mem_gib);
    s2_buf_printf(&b, ", \"world_size\": %d, \"dp\": %d, \"sp\": %d, \"peak_mem_gib\": [",
                  s->world_size, s->dp, s->sp > 0 ? s->sp : 1);
    for (int r = 0; r < s->world_size; r++)
        s2_buf_printf(&b, "%s%.3f", r ? ", " : "", s->peak_mem_gib ? s->peak_mem_gib[r] : 0.0);
    s2_buf_printf(&b, "]}");
    if (b.oom) {
        s2_buf_free(&b);
        return NULL;
    }
    return b.data;
}

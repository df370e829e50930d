/*
 * model_check.c — the GPU model of runtime/train/model.h against its CPU twin (ref_llama.h), on the
 * device. A tiny random LLaMA (2 layers, GQA 4/2, d 64, bf16 weights; a fresh seed per run
 * unless --seed) is written as a Hugging Face checkpoint into a temporary directory, loaded by
 * both, and a varlen batch of two sequences is run:
 *   1. logits with full causal attention and with S²-Attn (split), adapters non-zero, against
 *      s2_ref_llama_forward (HF's fp32 RoPE angles), and the loss against s2_ref_llama_loss;
 *   2. every trainable tensor's gradient (adapters of each group, norms, embeddings) against
 *      the CPU twin's central finite differences of the loss (fd_check: along the gradient
 *      itself and along random directions of that tensor), and the same gradients from a model that recomputes whole layers in the backward
 *      (the first keeps the attention half's activations per layer);
 *      and the same batch again, twice: the same loss, gradients and norm, bit for bit;
 *   3. one AdamW step against s2_ref_adamw_step on the gradients read back;
 *   4. the training state and the PEFT adapter written and read back into the model;
 *   5. full fine-tuning (every weight trained): the gradients of stacked projection weights,
 *      head and embeddings against finite differences, and the whole-model HF export;
 *   6. sequence parallelism on one GPU (sp_check): one sequence of 900 tokens (G 768, split:
 *      halos that span two owners, GQA 4/2) cut into P = 2 and 4 chunks, each chunk a model of
 *      its own driven by a thread, the K/V halos and dK/dV through the loopback transport:
 *      the summed loss, every chunk's logits and every trainable gradient (summed over the
 *      chunks) against the whole-sequence GPU run (2e-2; 5e-2 for gradients: the owners add
 *      the returned dK/dV partial sums in bf16).
 * Tolerances (relative): 2e-2 for logits and loss-derived values (the GPU rounds every
 * activation to bf16, the twin keeps fp32/fp64), 5e-2 for a directional derivative (a bf16
 * backward against an fp64 difference quotient), 1e-5 for the optimizer (fp32 on both sides).
 * One line per check; exit status 0 only if all pass, 3 with no GPU. No Criterion: the GPU
 * machine has none.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <ftw.h>
#include <pthread.h>
#include <sys/stat.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gen/lora_plan.h"
#include "runtime/train/model.h"
#include "runtime/train/sp_xchg.h"
#include "runtime/ref/ref_llama.h"
#include "runtime/ref/ref_train.h"
#include "runtime/core/st.h"

#define L 2
#define HID 256
#define H 4
#define HKV 2
#define D 64
#define INTER 688
#define VOCAB 264
#define MAXPOS 64
#define CTX 256
#define R 8

static const char spec_yaml[] =
    "name: model-check\n"
    "dtype: bf16\n"
    "context_length: 256\n"
    "model: {hidden_size: 256, intermediate_size: 688, num_layers: 2, num_heads: 4,\n"
    "        num_kv_heads: 2, head_dim: 64, vocab_size: 264, rope_theta: 10000,\n"
    "        max_position_embeddings: 64, rms_norm_eps: 1.0e-5, tie_word_embeddings: false}\n"
    "s2attn: {group_size: 64, shift_mode: split}\n"
    "lora: {rank: 8, alpha: 16, targets: [q_proj, k_proj, v_proj, o_proj],\n"
    "       trainable: [embed, norm]}\n";

static uint64_t rng_state;

static double unif(void) /* U(-1, 1), splitmix64 */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-52 - 1.0;
}

static int failures;

static void report(const char *what, double err, double tol)
{
    const int ok = err < tol; /* NaN fails */
    printf("%-52s rel err %.3e (tol %.0e) %s\n", what, err, tol, ok ? "PASS" : "FAIL");
    failures += !ok;
}

static double rel_l2(const float *x, const float *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        const double e = (double)x[i] - ref[i];
        num += e * e;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1e-300));
}

/* ---- the checkpoint ------------------------------------------------------------------------- */

typedef struct ckw {
    int n;
    s2_tensor t[40];
} ckw;

static void add(ckw *w, int64_t d0, int64_t d1, double a, double offset, const char *name)
{
    s2_tensor *t = &w->t[w->n++];
    t->name = strdup(name);
    t->dtype = S2_ST_BF16;
    t->ndim = d1 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1;
    const size_t n = (size_t)(d1 ? d0 * d1 : d0);
    t->nbytes = n * 2;
    uint16_t *p = malloc(t->nbytes);
    for (size_t i = 0; i < n; i++)
        p[i] = s2_f32_to_bf16((float)(offset + a * unif()));
    t->data = p;
}

static int write_ckpt(const char *dir, int maxpos, int ctx)
{
    ckw w = {0};
    char name[128];
    const double si = 1.7 / sqrt(HID), sq = 1.7 / sqrt(H * D), sm = 1.7 / sqrt(INTER);
    add(&w, VOCAB, HID, 1.0, 0, "model.embed_tokens.weight");
    for (int l = 0; l < L; l++) {
        static const struct { const char *n; int o, i; } lin[] = {
            {"self_attn.q_proj", H * D, HID},   {"self_attn.k_proj", HKV * D, HID},
            {"self_attn.v_proj", HKV * D, HID}, {"self_attn.o_proj", HID, H * D},
            {"mlp.gate_proj", INTER, HID},      {"mlp.up_proj", INTER, HID},
            {"mlp.down_proj", HID, INTER}};
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        add(&w, HID, 0, 0.2, 1.0, name);
        snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
        add(&w, HID, 0, 0.2, 1.0, name);
        for (int p = 0; p < 7; p++) {
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, lin[p].n);
            add(&w, lin[p].o, lin[p].i, lin[p].i == INTER ? sm : lin[p].i == HID ? si : sq, 0,
                name);
        }
    }
    add(&w, HID, 0, 0.2, 1.0, "model.norm.weight");
    add(&w, VOCAB, HID, 1.0, 0, "lm_head.weight");
    json_t *c = json_pack(
        "{s:[s], s:s, s:i, s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:{s:s, s:f}, s:f,"
        " s:b, s:s}",
        "architectures", "LlamaForCausalLM", "model_type", "llama", "hidden_size", HID,
        "hidden_act", "silu", "intermediate_size", INTER, "max_position_embeddings", maxpos,
        "num_attention_heads", H, "num_hidden_layers", L, "num_key_value_heads", HKV,
        "head_dim", D, "vocab_size", VOCAB, "rms_norm_eps", 1e-5, "rope_scaling", "type",
        "linear", "factor", (double)(ctx / maxpos), "rope_theta", 10000.0,
        "tie_word_embeddings", 0, "torch_dtype", "bfloat16");
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    int bad = !c || json_dump_file(c, path, JSON_INDENT(2)) != 0;
    json_decref(c);
    static const char *mk[] = {"format"}, *mv[] = {"pt"};
    s2_error err = {0};
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!bad && s2_st_write(path, w.t, w.n, mk, mv, 1, &err)) {
        fprintf(stderr, "model_check: %s\n", err.msg);
        s2_error_clear(&err);
        bad = 1;
    }
    for (int i = 0; i < w.n; i++) {
        free(w.t[i].name);
        free(w.t[i].data);
    }
    return bad;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

/* ---- the CPU side's view of the trainables ------------------------------------------------------ */

/* Host copies of every trainable master and the twin's LoRA slots built from them. */
typedef struct host {
    int n;
    float **p;       /* masters, per trainable */
    size_t *numel;
    int64_t (*shape)[2];
    const char **name;
    float *A[L * S2_PROJ_COUNT], *B[L * S2_PROJ_COUNT];
} host;

/* Group tags as model.c names them, and their members (projection, out offset, out). */
static const struct { const char *tag; int n; s2_proj p[3]; int off[3], out[3], in; } groups[] = {
    {"self_attn.qkv", 3, {S2_PROJ_Q, S2_PROJ_K, S2_PROJ_V}, {0, H * D, H * D + HKV * D},
     {H * D, HKV * D, HKV * D}, HID},
    {"self_attn.o", 1, {S2_PROJ_O}, {0}, {HID}, H * D},
};

static int find(const host *h, const char *name)
{
    for (int i = 0; i < h->n; i++)
        if (!strcmp(h->name[i], name))
            return i;
    return -1;
}

/* Rebuilds the twin's A and B slots from the stacked masters. */
static void slots_from_masters(host *h)
{
    char name[160];
    for (int l = 0; l < L; l++)
        for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
            snprintf(name, sizeof name, "model.layers.%d.%s.lora_A_stacked", l, groups[g].tag);
            const int ia = find(h, name);
            snprintf(name, sizeof name, "model.layers.%d.%s.lora_B_stacked", l, groups[g].tag);
            const int ib = find(h, name);
            const int rp = (int)h->shape[ia][0];
            for (int i = 0; i < groups[g].n; i++) {
                const int slot = l * S2_PROJ_COUNT + groups[g].p[i];
                if (!h->A[slot])
                    h->A[slot] = malloc((size_t)R * groups[g].in * sizeof(float));
                if (!h->B[slot])
                    h->B[slot] = malloc((size_t)groups[g].out[i] * R * sizeof(float));
                memcpy(h->A[slot], h->p[ia] + (size_t)i * R * groups[g].in,
                       (size_t)R * groups[g].in * sizeof(float));
                for (int o = 0; o < groups[g].out[i]; o++)
                    for (int c = 0; c < R; c++)
                        h->B[slot][(size_t)o * R + c] =
                            h->p[ib][(size_t)(groups[g].off[i] + o) * rp + (size_t)i * R + c];
            }
        }
}

static float *whole_tensor(s2_ref_llama *m, const char *name)
{
    int l;
    if (!strcmp(name, "model.embed_tokens.weight"))
        return m->embed;
    if (!strcmp(name, "model.norm.weight"))
        return m->norm;
    if (sscanf(name, "model.layers.%d.", &l) == 1 && l >= 0 && l < L) {
        if (strstr(name, "input_layernorm"))
            return m->layers[l].input_norm;
        if (strstr(name, "post_attention_layernorm"))
            return m->layers[l].post_norm;
    }
    return NULL;
}

/* Full mode: the twin's weight rows a stacked tensor covers, in order (q, k, v rows; gate, up
 * rows; or one projection). n receives the count; rows[i] each member's row count. */
static int stacked_members(s2_ref_llama *m, const char *name, float **w, int *rows)
{
    int l;
    if (sscanf(name, "model.layers.%d.", &l) != 1 || l < 0 || l >= L)
        return 0;
    s2_ref_llama_layer *y = &m->layers[l];
    if (strstr(name, "self_attn.qkv.weight_stacked")) {
        w[0] = y->wq, w[1] = y->wk, w[2] = y->wv;
        rows[0] = H * D, rows[1] = rows[2] = HKV * D;
        return 3;
    }
    if (strstr(name, "self_attn.o.weight_stacked"))
        return w[0] = y->wo, rows[0] = HID, 1;
    if (strstr(name, "mlp.gate_up.weight_stacked")) {
        w[0] = y->wg, w[1] = y->wu;
        rows[0] = rows[1] = INTER;
        return 2;
    }
    if (strstr(name, "mlp.down.weight_stacked"))
        return w[0] = y->wd, rows[0] = HID, 1;
    return 0;
}

/* Copies a full-mode tensor's values (p, numel elements) into the twin. */
/* The twin's loss with a tensor moved to p0 + eps u (the caller's context knows which). */
typedef double (*fd_loss_fn)(void *ctx, const float *moved, size_t n);

#define FD_DIRS 4
/* A gradient g [n] of the tensor p0 against the twin's central differences, two ways:
 *   along g itself: the derivative there is g_true . g, so a scale or sign error shows at
 *     full size, and the many rounding errors of a bf16 backward cannot cancel it away;
 *   along FD_DIRS random +-1 directions u (0 where keep[e] is 0: not a parameter): the
 *     differences (g . u - fd) divided by sqrt(sum (g u)^2) estimate the gradient's relative
 *     L2 error, whatever the size of each directional derivative (one alone can be tiny).
 * Two report lines, each against tol. */
static void fd_check(const char *name, const float *g, const float *p0, const int *keep,
                     size_t n, fd_loss_fn loss, void *ctx, double tol)
{
    float *u = malloc(n * sizeof(float)), *moved = malloc(n * sizeof(float));
    double pn = 0;
    for (size_t e = 0; e < n; e++)
        pn += (double)p0[e] * p0[e];
    double err2 = 0, scale2 = 0, along_g = NAN, g2 = 0, fdg = 0;
    for (int k = 0; k <= FD_DIRS; k++) {
        double un = 0, gu = 0, gu2 = 0;
        for (size_t e = 0; e < n; e++) {
            u[e] = keep && !keep[e] ? 0.f : k == 0 ? g[e] : unif() < 0 ? -1.f : 1.f;
            un += (double)u[e] * u[e];
            gu += (double)g[e] * u[e];
            gu2 += (double)g[e] * u[e] * g[e] * u[e];
        }
        const double eps = 1e-3 * sqrt(pn / (un > 0 ? un : 1)) + 1e-6;
        double l[2];
        for (int sgn = 0; sgn < 2; sgn++) {
            for (size_t e = 0; e < n; e++)
                moved[e] = (float)(p0[e] + (sgn ? -eps : eps) * u[e]);
            l[sgn] = loss(ctx, moved, n);
        }
        const double fd = (l[0] - l[1]) / (2 * eps);
        if (k == 0) {
            g2 = gu, fdg = fd;
            along_g = fabs(gu - fd) / (fabs(fd) > 1e-30 ? fabs(fd) : 1e-30);
        } else {
            err2 += (gu - fd) * (gu - fd);
            scale2 += gu2;
        }
    }
    loss(ctx, p0, n); /* put the tensor back */
    char what[160];
    snprintf(what, sizeof what, "grad %.34s along g (%.3e vs %.3e)", name, g2, fdg);
    report(what, along_g, tol);
    snprintf(what, sizeof what, "grad %.34s, %d random directions", name, FD_DIRS);
    report(what, scale2 > 0 ? sqrt(err2 / scale2) : NAN, tol);
    free(u);
    free(moved);
}

static void set_full_tensor(s2_ref_llama *m, const char *name, const float *p, size_t numel)
{
    float *w[3];
    int rows[3];
    const int n = stacked_members(m, name, w, rows);
    if (n) {
        const size_t cols = numel / (size_t)(rows[0] + (n > 1 ? rows[1] : 0) + (n > 2 ? rows[2] : 0));
        for (int i = 0; i < n; i++) {
            memcpy(w[i], p, (size_t)rows[i] * cols * sizeof(float));
            p += (size_t)rows[i] * cols;
        }
        return;
    }
    float *x = whole_tensor(m, name);
    if (!x && !strcmp(name, "lm_head.weight"))
        x = m->lm_head;
    if (x)
        memcpy(x, p, numel * sizeof(float));
}

/* Loss of the twin with the host masters (adapters and whole tensors copied in). */
static double ref_loss(s2_ref_llama *rm, host *h, const int32_t *tok, int T, const int32_t *cu,
                       int B, const s2_ref_llama_attn *at, float *logits)
{
    for (int i = 0; i < h->n; i++) {
        float *w = whole_tensor(rm, h->name[i]);
        if (w)
            memcpy(w, h->p[i], h->numel[i] * sizeof(float));
    }
    slots_from_masters(h);
    s2_ref_llama_lora lo = {.r = R, .scale = 16.0f / R, .A = (const float *const *)h->A,
                            .B = (const float *const *)h->B};
    s2_error err = {0};
    if (s2_ref_llama_forward(rm, tok, T, cu, B, at, &lo, logits, &err)) {
        fprintf(stderr, "model_check: twin: %s\n", err.msg);
        s2_error_clear(&err);
        return NAN;
    }
    return s2_ref_llama_loss(logits, tok, T, VOCAB, cu, B, NULL, NULL);
}

/* fd_check's loss: a LoRA+ trainable moved in the twin's host copies (h), or (full mode, h
 * NULL) the weight `name` of the twin itself. */
typedef struct fd_ctx {
    s2_ref_llama *rm;
    host *h;
    int i;
    const char *name;
    const int32_t *tok;
    int T;
    const int32_t *cu;
    int B;
    const s2_ref_llama_attn *at;
    float *logits;
} fd_ctx;

static double fd_loss(void *ctx, const float *moved, size_t n)
{
    fd_ctx *c = ctx;
    if (c->h) {
        memcpy(c->h->p[c->i], moved, n * sizeof(float));
        return ref_loss(c->rm, c->h, c->tok, c->T, c->cu, c->B, c->at, c->logits);
    }
    set_full_tensor(c->rm, c->name, moved, n);
    s2_error e = {0};
    const double l = s2_ref_llama_forward(c->rm, c->tok, c->T, c->cu, c->B, c->at, NULL,
                                          c->logits, &e)
                         ? NAN
                         : s2_ref_llama_loss(c->logits, c->tok, c->T, VOCAB, c->cu, c->B, NULL,
                                             NULL);
    s2_error_clear(&e);
    return l;
}

/* ---- sequence parallelism on one GPU ----------------------------------------------------- */

#define SP_CTX 1024
#define SP_MAXPOS 256
#define SP_N 900

static const char sp_yaml[] =
    "name: model-check-sp\n"
    "dtype: bf16\n"
    "context_length: 1024\n"
    "model: {hidden_size: 256, intermediate_size: 688, num_layers: 2, num_heads: 4,\n"
    "        num_kv_heads: 2, head_dim: 64, vocab_size: 264, rope_theta: 10000,\n"
    "        max_position_embeddings: 256, rms_norm_eps: 1.0e-5, tie_word_embeddings: false}\n"
    "s2attn: {group_size: 768, shift_mode: split}\n"
    "lora: {rank: 8, alpha: 16, targets: [q_proj, k_proj, v_proj, o_proj],\n"
    "       trainable: [embed, norm]}\n";

typedef struct sp_job {
    s2_gm *m;
    s2_gm_batch b;
    s2_gm_sp sp;
    s2_sp_transport tp;
    s2_sp_loop *lp;
    int device;
    double denom, nll;
    int64_t count;
    float *logits; /* NULL: train, else eval into it */
    s2_status st;
    s2_error err;
} sp_job;

static void *sp_rank(void *arg)
{
    sp_job *j = arg;
    j->st = s2_rt_check(cudaSetDevice(j->device), "cudaSetDevice", &j->err);
    if (!j->st && !j->logits)
        j->st = s2_gm_train_batch(j->m, &j->b, 0, j->denom, &j->nll, &j->count, &j->err);
    else if (!j->st)
        j->st = s2_gm_eval_batch(j->m, &j->b, 0, &j->nll, &j->count, j->logits, &j->err);
    if (j->st)
        s2_sp_loop_fail(j->lp);
    return NULL;
}

/* Runs every rank's job in its own thread; the first failure's message into err. Not the thread
 * pool: the ranks exchange halos with each other, so all P must run at once. */
static s2_status sp_run(sp_job *jobs, int P, s2_error *err)
{
    pthread_t th[8];
    for (int r = 0; r < P; r++)
        pthread_create(&th[r], NULL, sp_rank, &jobs[r]);
    for (int r = 0; r < P; r++)
        pthread_join(th[r], NULL);
    s2_status st = S2_OK;
    for (int r = 0; r < P; r++) {
        if (jobs[r].st && !st)
            st = s2_error_set(err, jobs[r].st, "sp rank %d: %s", r,
                              jobs[r].err.msg ? jobs[r].err.msg : "error");
        s2_error_clear(&jobs[r].err);
    }
    return st;
}

/* The whole sequence once (m: sp_halo 0), then P chunks through the loopback, compared. */
static s2_status sp_case(const s2_rt *rt, const s2_spec *spec, const s2_ckpt *ck, s2_gm *m,
                         float **params, const int32_t *tok, int P, int recompute, uint64_t seed,
                         s2_error *err)
{
    const int N = SP_N, n = s2_gm_n_trainable(m);
    s2_sp_attn a;
    s2_sp_attn_from_spec(spec, &a);
    a.N = N;
    s2_sp_plan plan = {0};
    s2_status st = s2_sp_plan_make(&a, P, S2_SP_DEFAULT_ALIGN, &plan, err);
    if (st)
        return st;
    s2_buf pb = {0};
    s2_sp_plan_format(&plan, &pb);
    printf("sp P %d (recompute %s): union halo exchange %lld bytes a layer (per-kind plan "
           "%lld)\n%s", P, recompute == S2_GM_RECOMPUTE_MLP ? "mlp" : "layer",
           s2_sp_union_fwd_bytes(&plan), plan.fwd_bytes, pb.data ? pb.data : "");
    s2_buf_free(&pb);
    int halo = 1;
    for (int r = 0; r < P; r++)
        if (plan.rank[r].lo - s2_sp_union_klo(&plan, r) > halo)
            halo = plan.rank[r].lo - s2_sp_union_klo(&plan, r);
    s2_gm *cm[8] = {0};
    sp_job jobs[8];
    memset(jobs, 0, sizeof jobs);
    s2_sp_loop *lp = NULL;
    float *whole_lg = malloc((size_t)N * VOCAB * sizeof(float));
    float *chunk_lg = malloc((size_t)N * VOCAB * sizeof(float));
    double wnll = 0;
    int64_t wcount = 0;
    /* the whole sequence */
    const s2_gm_batch wb = {.tokens = tok, .T = N, .dropout_seed = seed};
    st = s2_gm_zero_grad(m, err);
    if (!st)
        st = s2_gm_train_batch(m, &wb, 0, N - 1, &wnll, &wcount, err);
    if (!st)
        st = s2_gm_eval_batch(m, &wb, 0, NULL, NULL, whole_lg, err);
    if (!st)
        st = s2_sp_loop_open(&lp, &plan, HKV * D, err);
    s2_gm_opts co = {.max_tokens = plan.C, .logits_chunk = 100, .init_seed = seed ^ 0x1234,
                     .recompute = recompute, .sp_halo = halo};
    for (int r = 0; r < P && !st; r++) {
        st = s2_gm_open(&cm[r], rt, spec, ck, &co, err);
        for (int i = 0; i < n && !st; i++)
            st = s2_gm_write_param(cm[r], i, params[i], err);
        if (!st)
            st = s2_gm_zero_grad(cm[r], err);
        if (st)
            break;
        sp_job *j = &jobs[r];
        j->m = cm[r];
        j->lp = lp;
        j->device = rt->device;
        j->denom = N - 1;
        s2_sp_loop_transport(lp, r, s2_gm_kern(cm[r]), &j->tp);
        const int lo = plan.rank[r].lo, hi = plan.rank[r].hi;
        j->sp = (s2_gm_sp){.lo = lo, .klo = s2_sp_union_klo(&plan, r), .n_global = N,
                           .next_token = hi < N ? tok[hi] : -1, .tp = &j->tp};
        j->b = (s2_gm_batch){.tokens = tok + lo, .T = hi - lo, .dropout_seed = seed,
                             .sp = &j->sp};
    }
    if (!st)
        st = sp_run(jobs, P, err);
    double nll = 0;
    int64_t count = 0;
    for (int r = 0; r < P; r++) {
        nll += jobs[r].nll;
        count += jobs[r].count;
        jobs[r].logits = chunk_lg + (size_t)plan.rank[r].lo * VOCAB;
    }
    char what[160];
    if (!st) {
        snprintf(what, sizeof what, "sp P %d: loss (%lld labelled rows, whole %lld)", P,
                 (long long)count, (long long)wcount);
        const double e = count == wcount ? fabs(nll - wnll) / fabs(wnll) : INFINITY;
        report(what, e, 2e-2);
    }
    for (int i = 0; i < n && !st; i++) {
        size_t ne = 0;
        s2_gm_trainable_name(m, i, NULL, NULL, &ne);
        float *gw = malloc(ne * sizeof *gw), *gs = calloc(ne, sizeof *gs);
        float *g = malloc(ne * sizeof *g);
        st = s2_gm_read_grad(m, i, gw, err);
        for (int r = 0; r < P && !st; r++) {
            st = s2_gm_read_grad(cm[r], i, g, err);
            for (size_t e = 0; e < ne && !st; e++)
                gs[e] += g[e];
        }
        if (!st) {
            snprintf(what, sizeof what, "sp P %d: grad %s", P,
                     s2_gm_trainable_name(m, i, NULL, NULL, NULL));
            report(what, rel_l2(gs, gw, ne), 5e-2);
        }
        free(gw), free(gs), free(g);
    }
    if (!st) /* the forward again, logits of every chunk */
        st = sp_run(jobs, P, err);
    if (!st) {
        snprintf(what, sizeof what, "sp P %d: logits of every chunk", P);
        report(what, rel_l2(chunk_lg, whole_lg, (size_t)N * VOCAB), 2e-2);
        for (int r = 0; r < P; r++) {
            const size_t o = (size_t)plan.rank[r].lo * VOCAB;
            const size_t ne = (size_t)(plan.rank[r].hi - plan.rank[r].lo) * VOCAB;
            snprintf(what, sizeof what, "sp P %d: logits of chunk %d [%d, %d)", P, r,
                     plan.rank[r].lo, plan.rank[r].hi);
            report(what, rel_l2(chunk_lg + o, whole_lg + o, ne), 2e-2);
        }
    }
    for (int r = 0; r < P; r++)
        s2_gm_close(cm[r]);
    s2_sp_loop_close(lp);
    s2_sp_plan_free(&plan);
    free(whole_lg), free(chunk_lg);
    return st;
}

/* Section 6: its own checkpoint (context 1024) under root. */
static s2_status sp_check(const s2_rt *rt, const char *root, uint64_t seed, s2_error *err)
{
    char dir[600];
    snprintf(dir, sizeof dir, "%s/sp", root);
    if (mkdir(dir, 0700) || write_ckpt(dir, SP_MAXPOS, SP_CTX))
        return s2_error_set(err, S2_ERR_IO, "sp: cannot write the checkpoint in %s", dir);
    s2_spec spec;
    s2_ckpt *ck = NULL;
    s2_gm *m = NULL;
    int32_t tok[SP_N];
    for (int t = 0; t < SP_N; t++)
        tok[t] = (int32_t)((unif() + 1) * 0.5 * (VOCAB - 1));
    s2_status st = s2_spec_load_string(sp_yaml, "model-check-sp", NULL, 0, &spec, err);
    if (!st)
        st = s2_ckpt_open(dir, &ck, err);
    s2_gm_opts go = {.max_tokens = SP_N, .logits_chunk = 100, .init_seed = seed ^ 0x1234,
                     .recompute = S2_GM_RECOMPUTE_MLP};
    if (!st)
        st = s2_gm_open(&m, rt, &spec, ck, &go, err);
    const int n = st ? 0 : s2_gm_n_trainable(m);
    float **params = calloc((size_t)(n ? n : 1), sizeof *params);
    for (int i = 0; i < n && !st; i++) { /* B non-zero (B = 0 hides A's gradient) */
        size_t ne = 0;
        const char *name = s2_gm_trainable_name(m, i, NULL, NULL, &ne);
        params[i] = malloc(ne * sizeof(float));
        st = s2_gm_read_param(m, i, params[i], err);
        if (!st && strstr(name, "lora_B_stacked")) {
            for (size_t e = 0; e < ne; e++)
                params[i][e] = (float)(0.05 * unif());
            st = s2_gm_write_param(m, i, params[i], err);
        }
    }
    if (!st)
        st = sp_case(rt, &spec, ck, m, params, tok, 2, S2_GM_RECOMPUTE_MLP, seed, err);
    if (!st)
        st = sp_case(rt, &spec, ck, m, params, tok, 4, S2_GM_RECOMPUTE_LAYER, seed, err);
    for (int i = 0; i < n; i++)
        free(params[i]);
    free(params);
    s2_gm_close(m);
    s2_ckpt_close(ck);
    return st;
}

#define CHECK(call)                                                                          \
    do {                                                                                     \
        if ((st = (call)) != S2_OK) {                                                        \
            fprintf(stderr, "model_check: %s: %s\n", #call, err.msg ? err.msg : "error");   \
            goto done;                                                                       \
        }                                                                                    \
    } while (0)

int main(int argc, char **argv)
{
    uint64_t seed = (uint64_t)time(NULL);
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            seed = strtoull(argv[++i], NULL, 10);
        else {
            fprintf(stderr, "usage: s2lora_model_check [--seed N]\n");
            return 2;
        }
    }
    rng_state = seed;
    printf("model_check: seed %llu\n", (unsigned long long)seed);
    s2_error err = {0};
    s2_status st = S2_OK;
    s2_rt rt;
    if ((st = s2_rt_open(&rt, 0, &err))) {
        fprintf(stderr, "model_check: %s\n", err.msg);
        return st == S2_ERR_NO_DEVICE ? 3 : 1;
    }
    char dir[] = "/tmp/s2lora-model-check.XXXXXX";
    if (!mkdtemp(dir) || write_ckpt(dir, MAXPOS, CTX))
        return 1;
    s2_spec spec;
    s2_ckpt *ck = NULL;
    s2_gm *m = NULL;
    s2_ref_llama *rm = NULL;
    host h = {0};
    const int T = 256, B = 2;
    const int32_t cu[3] = {0, 150, 256};
    int32_t tok[256];
    float *lg = malloc((size_t)T * VOCAB * sizeof(float));
    float *lr = malloc((size_t)T * VOCAB * sizeof(float));
    s2_train_state state = {0};
    char adir[600];
    snprintf(adir, sizeof adir, "%s/adapter", dir);
    /* token 7 at every third position: more than one S2_EMBED_CHUNK item of the embedding
     * backward (its partials and second kernel) */
    for (int t = 0; t < T; t++)
        tok[t] = t % 3 == 0 ? 7 : (int32_t)((unif() + 1) * 0.5 * (VOCAB - 1));

    CHECK(s2_spec_load_string(spec_yaml, "model-check", NULL, 0, &spec, &err));
    CHECK(s2_ckpt_open(dir, &ck, &err));
    s2_gm_opts go = {.max_tokens = T, .logits_chunk = 100, .init_seed = seed ^ 0x1234,
                     .recompute = S2_GM_RECOMPUTE_MLP};
    CHECK(s2_gm_open(&m, &rt, &spec, ck, &go, &err));
    CHECK(s2_ref_llama_load(ck, &rm, &err));
    printf("model: %d trainable tensors, %zu elements, %.1f MiB on the device\n",
           s2_gm_n_trainable(m), s2_gm_trainable_numel(m),
           (double)s2_gm_device_bytes(m) / (1 << 20));

    /* host masters; the adapters' B made non-zero (B = 0 hides A's gradient) */
    h.n = s2_gm_n_trainable(m);
    h.p = calloc((size_t)h.n, sizeof *h.p);
    h.numel = calloc((size_t)h.n, sizeof *h.numel);
    h.shape = calloc((size_t)h.n, sizeof *h.shape);
    h.name = calloc((size_t)h.n, sizeof *h.name);
    for (int i = 0; i < h.n; i++) {
        int nd;
        h.name[i] = s2_gm_trainable_name(m, i, &nd, h.shape[i], &h.numel[i]);
        h.p[i] = malloc(h.numel[i] * sizeof(float));
        CHECK(s2_gm_read_param(m, i, h.p[i], &err));
        if (strstr(h.name[i], "lora_B_stacked")) {
            /* only the diagonal blocks of adapted members: the others must stay 0 */
            const int g = strstr(h.name[i], "qkv") ? 0 : 1, rp = (int)h.shape[i][1];
            for (int k = 0; k < groups[g].n; k++)
                for (int o = 0; o < groups[g].out[k]; o++)
                    for (int c = 0; c < R; c++)
                        h.p[i][(size_t)(groups[g].off[k] + o) * rp + k * R + c] =
                            (float)(0.05 * unif());
            CHECK(s2_gm_write_param(m, i, h.p[i], &err));
        }
    }

    /* 1. logits and loss */
    for (int full = 1; full >= 0; full--) {
        s2_ref_llama_attn at = {.G = full ? 0 : spec.s2attn.group_size,
                                .S = full ? 0 : spec.s2attn.shift,
                                .mode = spec.s2attn.shift_mode, .rope_fp32_angles = 1};
        const double want = ref_loss(rm, &h, tok, T, cu, B, &at, lr);
        s2_gm_batch b = {.tokens = tok, .T = T, .cu_seqlens = cu, .B = B};
        double nll = 0;
        int64_t count = 0;
        for (size_t i = 0; i < (size_t)T * VOCAB; i++)
            lg[i] = NAN;
        CHECK(s2_gm_eval_batch(m, &b, full, &nll, &count, lg, &err));
        char what[96];
        snprintf(what, sizeof what, "logits, %s attention", full ? "full" : "S2 (split)");
        report(what, rel_l2(lg, lr, (size_t)T * VOCAB), 2e-2);
        snprintf(what, sizeof what, "loss, %s attention (ours %.5f, twin %.5f)",
                 full ? "full" : "S2", count ? nll / count : NAN, want);
        report(what, fabs((count ? nll / count : NAN) - want) / want, 2e-2);
        if (count != T - B)
            printf("labelled rows: %lld, expected %d FAIL\n", (long long)count, T - B),
                failures++;
    }

    /* 2. gradients: directional derivatives per trainable tensor */
    s2_ref_llama_attn at = {.G = spec.s2attn.group_size, .S = spec.s2attn.shift,
                            .mode = spec.s2attn.shift_mode, .rope_fp32_angles = 1};
    s2_gm_batch b = {.tokens = tok, .T = T, .cu_seqlens = cu, .B = B};
    CHECK(s2_gm_zero_grad(m, &err));
    double nll = 0;
    int64_t count = 0;
    CHECK(s2_gm_train_batch(m, &b, 0, (double)(T - B), &nll, &count, &err));
    float **grads = calloc((size_t)h.n, sizeof *grads);
    for (int i = 0; i < h.n; i++) {
        grads[i] = malloc(h.numel[i] * sizeof(float));
        CHECK(s2_gm_read_grad(m, i, grads[i], &err));
        /* directions keep the stacked blocks' zeros (those are not parameters) */
        int *keep = malloc(h.numel[i] * sizeof(int));
        for (size_t e = 0; e < h.numel[i]; e++)
            keep[e] = !(strstr(h.name[i], "lora_") && h.p[i][e] == 0.f);
        float *save = malloc(h.numel[i] * sizeof(float));
        memcpy(save, h.p[i], h.numel[i] * sizeof(float));
        fd_ctx fc = {rm, &h, i, NULL, tok, T, cu, B, &at, lr};
        fd_check(h.name[i], grads[i], save, keep, h.numel[i], fd_loss, &fc, 5e-2);
        free(keep);
        free(save);
    }
    ref_loss(rm, &h, tok, T, cu, B, &at, lr); /* restore the twin */

    /* 2b. the same gradients when the backward recomputes whole layers instead of the MLP
     * only (m keeps the attention half per layer): the same kernels on the same inputs */
    {
        s2_gm *m2 = NULL;
        s2_gm_opts go2 = go;
        go2.recompute = S2_GM_RECOMPUTE_LAYER;
        CHECK(s2_gm_open(&m2, &rt, &spec, ck, &go2, &err));
        for (int i = 0; i < h.n; i++)
            CHECK(s2_gm_write_param(m2, i, h.p[i], &err));
        CHECK(s2_gm_zero_grad(m2, &err));
        CHECK(s2_gm_train_batch(m2, &b, 0, (double)(T - B), NULL, NULL, &err));
        double worst = 0;
        for (int i = 0; i < h.n; i++) {
            float *g2 = malloc(h.numel[i] * sizeof(float));
            CHECK(s2_gm_read_grad(m2, i, g2, &err));
            const double e = rel_l2(g2, grads[i], h.numel[i]);
            worst = e > worst || isnan(e) ? e : worst;
            free(g2);
        }
        const char *w1, *w2;
        s2_gm_recompute(m, &w1);
        s2_gm_recompute(m2, &w2);
        printf("recompute: %.60s... vs %.60s...\n", w1, w2);
        report("gradients, layer recompute vs mlp recompute", worst, 1e-5);
        s2_gm_close(m2);
    }

    /* 2c. determinism: the same batch again on the same model, twice, gives the same bits
     * (loss, count, every gradient, the gradient norm) as the first backward (train_kern.h,
     * lora.h, blas.h: no atomics, fixed-order sums) */
    for (int rep = 0; rep < 2; rep++) {
        double nll2 = 0, norm1 = 0, norm2 = 0;
        int64_t count2 = 0;
        CHECK(s2_gm_zero_grad(m, &err));
        CHECK(s2_gm_train_batch(m, &b, 0, (double)(T - B), &nll2, &count2, &err));
        CHECK(s2_gm_grad_norm(m, &norm1, &err));
        CHECK(s2_gm_grad_norm(m, &norm2, &err));
        double differ = (memcmp(&nll, &nll2, sizeof nll) != 0) + (count != count2) +
                        (memcmp(&norm1, &norm2, sizeof norm1) != 0);
        for (int i = 0; i < h.n; i++) {
            float *g2 = malloc(h.numel[i] * sizeof(float));
            CHECK(s2_gm_read_grad(m, i, g2, &err));
            for (size_t e = 0; e < h.numel[i]; e++)
                differ += memcmp(&g2[e], &grads[i][e], sizeof(float)) != 0;
            free(g2);
        }
        char what[96];
        snprintf(what, sizeof what, "determinism: run %d vs run 1, values that differ", rep + 2);
        report(what, differ, 1); /* 0 passes: the same bits */
    }

    /* 3. one AdamW step */
    {
        const double lr_ = 1e-3, wd = 0.01;
        CHECK(s2_gm_step(m, lr_, 0.9, 0.999, 1e-8, wd, 1, 0.5, &err));
        double worst = 0;
        for (int i = 0; i < h.n; i++) {
            float *mm = calloc(h.numel[i], sizeof(float)), *vv = calloc(h.numel[i], sizeof(float));
            float *want = malloc(h.numel[i] * sizeof(float)), *got = malloc(h.numel[i] * sizeof(float));
            memcpy(want, h.p[i], h.numel[i] * sizeof(float));
            for (size_t e = 0; e < h.numel[i]; e++)
                grads[i][e] *= 0.5f;
            s2_ref_adamw o = {.lr = lr_, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8,
                              .weight_decay = wd};
            s2_ref_adamw_step(&o, 1, h.numel[i], want, grads[i], mm, vv);
            CHECK(s2_gm_read_param(m, i, got, &err));
            const double e = rel_l2(got, want, h.numel[i]);
            worst = e > worst || isnan(e) ? e : worst;
            memcpy(h.p[i], got, h.numel[i] * sizeof(float));
            free(mm);
            free(vv);
            free(want);
            free(got);
        }
        report("AdamW step (worst tensor, grad_scale 0.5, wd 0.01)", worst, 1e-5);
    }

    /* 4. state and adapter round trips */
    {
        CHECK(s2_gm_save_state(m, &state, &err));
        float *zero = calloc(h.numel[0], sizeof(float));
        CHECK(s2_gm_write_param(m, 0, zero, &err));
        free(zero);
        CHECK(s2_gm_load_state(m, &state, &err));
        double worst = 0;
        for (int i = 0; i < h.n; i++) {
            float *got = malloc(h.numel[i] * sizeof(float));
            CHECK(s2_gm_read_param(m, i, got, &err));
            const double e = rel_l2(got, h.p[i], h.numel[i]);
            worst = e > worst || isnan(e) ? e : worst;
            free(got);
        }
        report("training state saved and loaded back", worst, 1e-12);
        CHECK(s2_gm_export(m, adir, dir, NULL, &err));
        for (int i = 0; i < h.n; i++)
            if (strstr(h.name[i], "lora_")) {
                float *zero = calloc(h.numel[i], sizeof(float));
                CHECK(s2_gm_write_param(m, i, zero, &err));
                free(zero);
            }
        CHECK(s2_gm_import(m, adir, NULL, &err));
        worst = 0;
        for (int i = 0; i < h.n; i++) {
            if (!strstr(h.name[i], "lora_"))
                continue;
            float *got = malloc(h.numel[i] * sizeof(float));
            CHECK(s2_gm_read_param(m, i, got, &err));
            const double e = rel_l2(got, h.p[i], h.numel[i]);
            worst = e > worst || isnan(e) ? e : worst;
            free(got);
        }
        report("PEFT adapter exported and imported (bf16 file)", worst, 1e-2);
    }

    /* 5. full mode: every weight trained; gradients of a few tensors, then the HF export */
    {
        s2_gm *fm = NULL;
        s2_gm_opts fo = {.max_tokens = T, .logits_chunk = 100, .full = 1};
        CHECK(s2_gm_open(&fm, &rt, &spec, ck, &fo, &err));
        s2_ref_llama *fr = NULL;
        CHECK(s2_ref_llama_load(ck, &fr, &err)); /* a twin without adapters */
        CHECK(s2_gm_zero_grad(fm, &err));
        CHECK(s2_gm_train_batch(fm, &b, 0, (double)(T - B), NULL, NULL, &err));
        static const char *const names[] = {
            "model.layers.0.self_attn.qkv.weight_stacked", "model.layers.1.self_attn.o.weight_stacked",
            "model.layers.0.mlp.gate_up.weight_stacked", "model.layers.1.mlp.down.weight_stacked",
            "lm_head.weight", "model.embed_tokens.weight"};
        for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
            int i = -1;
            for (int j = 0; j < s2_gm_n_trainable(fm); j++)
                if (!strcmp(s2_gm_trainable_name(fm, j, NULL, NULL, NULL), names[k]))
                    i = j;
            if (i < 0) {
                printf("full mode: no trainable tensor %s FAIL\n", names[k]);
                failures++;
                continue;
            }
            size_t n;
            s2_gm_trainable_name(fm, i, NULL, NULL, &n);
            float *p0 = malloc(n * sizeof(float)), *g = malloc(n * sizeof(float));
            CHECK(s2_gm_read_param(fm, i, p0, &err));
            CHECK(s2_gm_read_grad(fm, i, g, &err));
            fd_ctx fc = {fr, NULL, 0, names[k], tok, T, cu, B, &at, lr};
            char what[64];
            snprintf(what, sizeof what, "(full) %s", names[k]);
            fd_check(what, g, p0, NULL, n, fd_loss, &fc, 5e-2);
            free(p0), free(g);
        }
        /* the whole model as an HF checkpoint: it opens, passes the spec check, and holds the
         * masters (rounded to bf16) */
        char fdir[600];
        snprintf(fdir, sizeof fdir, "%s/full", dir);
        CHECK(s2_gm_export_full(fm, fdir, dir, &err));
        s2_ckpt *fck = NULL;
        CHECK(s2_ckpt_open(fdir, &fck, &err));
        CHECK(s2_ckpt_check(fck, &spec, &err));
        const size_t ne = (size_t)VOCAB * HID;
        float *want = malloc(ne * sizeof(float)), *got = malloc(ne * sizeof(float));
        int ie = -1;
        for (int j = 0; j < s2_gm_n_trainable(fm); j++)
            if (!strcmp(s2_gm_trainable_name(fm, j, NULL, NULL, NULL), "model.embed_tokens.weight"))
                ie = j;
        CHECK(s2_gm_read_param(fm, ie, want, &err));
        CHECK(s2_ckpt_read_f32(fck, "model.embed_tokens.weight", got, ne, &err));
        report("full mode: HF checkpoint written and read back", rel_l2(got, want, ne), 1e-2);
        free(want), free(got);
        s2_ckpt_close(fck);
        s2_ref_llama_free(fr);
        s2_gm_close(fm);
    }
    CHECK(sp_check(&rt, dir, seed, &err));

done:
    s2_state_free(&state);
    s2_gm_close(m);
    s2_ref_llama_free(rm);
    s2_ckpt_close(ck);
    nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    if (st) {
        s2_error_clear(&err);
        failures++;
    }
    printf("model_check: %s (%d failed)\n", failures ? "FAIL" : "PASS", failures);
    return failures ? 1 : 0;
}

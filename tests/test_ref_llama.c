/*
 * test_ref_llama.c — the CPU twin of the LLaMA forward (runtime/ref/ref_llama.h) against a second,
 * independent code path written here in double precision: explicit per-position loops,
 * explicit masked softmax straight from the S²-Attn definition, explicit rotate_half.
 *
 * Each test writes a tiny random Hugging Face checkpoint (config.json + model.safetensors, F32
 * so both paths see the same weights) into its own /tmp directory: 2 layers, hidden 48, 4
 * heads, 2 kv heads (GQA), head_dim 16 (explicit in config.json), intermediate 40, vocab 37,
 * rope_theta 10000 with linear rope_scaling factor 2.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>

#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/ref/ref.h"
#include "runtime/ref/ref_llama.h"

enum { L = 2, HID = 48, H = 4, HKV = 2, D = 16, INTER = 40, VOCAB = 37 };
#define EPS 1e-5
#define THETA 10000.0
#define FACTOR 2.0

static char dir[64];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/s2_test_llama.XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static void remove_dir(void) { nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS); }

TestSuite(llama, .init = make_dir, .fini = remove_dir);

/* ---- a tiny random checkpoint ------------------------------------------------------------- */

static uint32_t rng = 2024;

static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return (float)((rng >> 8) * (1.0 / 16777216.0) * 2.0 - 1.0);
}

#define MAX_T 32

typedef struct weights {
    int n;
    s2_tensor t[MAX_T];
} weights;

/* An F32 tensor of uniform values in [-a, a] (+ offset: norms near 1). */
static void add(weights *w, int64_t d0, int64_t d1, float a, float offset, const char *fmt,
                int layer)
{
    cr_assert_lt(w->n, MAX_T);
    s2_tensor *t = &w->t[w->n++];
    cr_assert_geq(asprintf(&t->name, fmt, layer), 0);
    t->dtype = S2_ST_F32;
    t->ndim = d1 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1;
    size_t n = (size_t)(d1 ? d0 * d1 : d0);
    t->nbytes = n * sizeof(float);
    float *p = malloc(t->nbytes);
    cr_assert_not_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = offset + a * frand();
    t->data = p;
}

static weights tiny_weights(int tie)
{
    weights w = {0};
    const float si = 1.0f / sqrtf((float)HID), sq = 1.0f / sqrtf((float)(H * D)),
                sm = 1.0f / sqrtf((float)INTER);
    add(&w, VOCAB, HID, 1.0f, 0, "model.embed_tokens.weight%.0d", 0);
    for (int l = 0; l < L; l++) {
        add(&w, HID, 0, 0.2f, 1.0f, "model.layers.%d.input_layernorm.weight", l);
        add(&w, H * D, HID, 1.7f * si, 0, "model.layers.%d.self_attn.q_proj.weight", l);
        add(&w, HKV * D, HID, 1.7f * si, 0, "model.layers.%d.self_attn.k_proj.weight", l);
        add(&w, HKV * D, HID, 1.7f * si, 0, "model.layers.%d.self_attn.v_proj.weight", l);
        add(&w, HID, H * D, 1.7f * sq, 0, "model.layers.%d.self_attn.o_proj.weight", l);
        add(&w, HID, 0, 0.2f, 1.0f, "model.layers.%d.post_attention_layernorm.weight", l);
        add(&w, INTER, HID, 1.7f * si, 0, "model.layers.%d.mlp.gate_proj.weight", l);
        add(&w, INTER, HID, 1.7f * si, 0, "model.layers.%d.mlp.up_proj.weight", l);
        add(&w, HID, INTER, 1.7f * sm, 0, "model.layers.%d.mlp.down_proj.weight", l);
    }
    add(&w, HID, 0, 0.2f, 1.0f, "model.norm.weight%.0d", 0);
    if (!tie)
        add(&w, VOCAB, HID, 1.0f, 0, "lm_head.weight%.0d", 0);
    return w;
}

static void free_weights(weights *w)
{
    for (int i = 0; i < w->n; i++) {
        free(w->t[i].name);
        free(w->t[i].data);
    }
    w->n = 0;
}

static const float *get(const weights *w, const char *fmt, int layer)
{
    char name[128];
    snprintf(name, sizeof name, fmt, layer);
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return w->t[i].data;
    cr_assert_fail("no tensor %s", name);
    return NULL;
}

static void write_ckpt(const weights *w, int tie)
{
    json_t *c = json_pack(
        "{s:[s], s:s, s:i, s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:{s:s, s:f}, s:f,"
        " s:b, s:s}",
        "architectures", "LlamaForCausalLM", "model_type", "llama", "hidden_size", HID,
        "hidden_act", "silu", "intermediate_size", INTER, "max_position_embeddings", 256,
        "num_attention_heads", H, "num_hidden_layers", L, "num_key_value_heads", HKV,
        "head_dim", D, "vocab_size", VOCAB, "rms_norm_eps", EPS, "rope_scaling", "type",
        "linear", "factor", FACTOR, "rope_theta", THETA, "tie_word_embeddings", tie,
        "torch_dtype", "float32");
    cr_assert_not_null(c);
    char *p;
    cr_assert_geq(asprintf(&p, "%s/config.json", dir), 0);
    cr_assert_eq(json_dump_file(c, p, JSON_INDENT(2)), 0);
    json_decref(c);
    free(p);
    static const char *mk[] = {"format"}, *mv[] = {"pt"};
    s2_error err = {0};
    cr_assert_geq(asprintf(&p, "%s/model.safetensors", dir), 0);
    cr_assert_eq(s2_st_write(p, w->t, w->n, mk, mv, 1, &err), S2_OK, "%s", err.msg);
    free(p);
}

/* Writes the checkpoint and loads it through s2_ckpt_open + s2_ref_llama_load. */
static s2_ref_llama *load(const weights *w, int tie)
{
    write_ckpt(w, tie);
    s2_error err = {0};
    s2_ckpt *ck = NULL;
    cr_assert_eq(s2_ckpt_open(dir, &ck, &err), S2_OK, "%s", err.msg);
    s2_ref_llama *m = NULL;
    cr_assert_eq(s2_ref_llama_load(ck, &m, &err), S2_OK, "%s", err.msg);
    s2_ckpt_close(ck);
    cr_assert_not_null(m);
    return m;
}

/* ---- the independent double-precision path ------------------------------------------------ */

typedef struct ref_opts {
    const int32_t *cu; /* NULL: one sequence */
    int B;
    int G, S, roll;    /* G = 0: causal */
    int r;
    double s;
    const float *const *A, *const *Bm; /* [L * S2_PROJ_COUNT] or NULL */
} ref_opts;

/* y[out] = x[in] W^T (+ s (x A^T) B^T) in double. */
static void dlin(const double *x, int in, int out, const float *W, const ref_opts *o, int slot,
                 double *y)
{
    const float *A = o->A ? o->A[slot] : NULL, *Bm = o->Bm ? o->Bm[slot] : NULL;
    double xa[64];
    if (A)
        for (int j = 0; j < o->r; j++) {
            xa[j] = 0;
            for (int k = 0; k < in; k++)
                xa[j] += x[k] * A[j * in + k];
        }
    for (int i = 0; i < out; i++) {
        double s = 0;
        for (int k = 0; k < in; k++)
            s += x[k] * W[(size_t)i * in + k];
        if (A)
            for (int j = 0; j < o->r; j++)
                s += o->s * xa[j] * Bm[i * o->r + j];
        y[i] = s;
    }
}

static void drms(const double *x, const float *w, double *y)
{
    double ss = 0;
    for (int i = 0; i < HID; i++)
        ss += x[i] * x[i];
    double r = 1.0 / sqrt(ss / HID + EPS);
    for (int i = 0; i < HID; i++)
        y[i] = x[i] * r * w[i];
}

/* cos/sin rotation with rotate_half(x) = cat(-x[d/2:], x[:d/2]). */
static void drope(double *x, int p)
{
    double out[D];
    for (int i = 0; i < D; i++) {
        int j = i % (D / 2);
        double ang = (p / FACTOR) * pow(THETA, -2.0 * j / D);
        double rh = i < D / 2 ? -x[i + D / 2] : x[i - D / 2];
        out[i] = x[i] * cos(ang) + rh * sin(ang);
    }
    memcpy(x, out, sizeof out);
}

/* Group and order of position p under head h (DESIGN §1, written out again here). */
static void grp(const ref_opts *o, int h, int N, int p, long *g, long *ord)
{
    if (!o->G || h < H / 2) {
        *g = o->G ? p / o->G : 0;
        *ord = p;
    } else if (!o->roll) {
        *g = (p + o->S) / o->G;
        *ord = p;
    } else {
        int q = ((p - o->S) % N + N) % N;
        *g = q / o->G;
        *ord = q;
    }
}

static int visible(const ref_opts *o, int h, int N, int p, int pk)
{
    long g1, o1, g2, o2;
    grp(o, h, N, p, &g1, &o1);
    grp(o, h, N, pk, &g2, &o2);
    return g1 == g2 && o2 <= o1;
}

/* logits [T, VOCAB] in double. */
static void ref_forward(const weights *w, int tie, const int32_t *tok, int T, const ref_opts *o,
                        double *logits)
{
    int32_t one[2] = {0, T};
    const int32_t *cu = o->cu ? o->cu : one;
    int B = o->cu ? o->B : 1;
    double *h = calloc((size_t)T * HID, sizeof(double));
    double *q = calloc((size_t)T * H * D, sizeof(double));
    double *k = calloc((size_t)T * HKV * D, sizeof(double));
    double *v = calloc((size_t)T * HKV * D, sizeof(double));
    double *att = calloc((size_t)T * H * D, sizeof(double));
    double x[HID], t1[HID], g[INTER], u[INTER];
    cr_assert(h && q && k && v && att);
    const float *emb = get(w, "model.embed_tokens.weight%.0d", 0);
    for (int t = 0; t < T; t++)
        for (int i = 0; i < HID; i++)
            h[t * HID + i] = emb[tok[t] * HID + i];
    for (int l = 0; l < L; l++) {
        for (int t = 0; t < T; t++) {
            drms(h + t * HID, get(w, "model.layers.%d.input_layernorm.weight", l), x);
            dlin(x, HID, H * D, get(w, "model.layers.%d.self_attn.q_proj.weight", l), o,
                 S2_CKPT_SLOT(l, S2_PROJ_Q), q + t * H * D);
            dlin(x, HID, HKV * D, get(w, "model.layers.%d.self_attn.k_proj.weight", l), o,
                 S2_CKPT_SLOT(l, S2_PROJ_K), k + t * HKV * D);
            dlin(x, HID, HKV * D, get(w, "model.layers.%d.self_attn.v_proj.weight", l), o,
                 S2_CKPT_SLOT(l, S2_PROJ_V), v + t * HKV * D);
        }
        for (int b = 0; b < B; b++) {
            int s0 = cu[b], N = cu[b + 1] - cu[b];
            for (int p = 0; p < N; p++) {
                for (int hh = 0; hh < H; hh++)
                    drope(q + (s0 + p) * H * D + hh * D, p);
                for (int hh = 0; hh < HKV; hh++)
                    drope(k + (s0 + p) * HKV * D + hh * D, p);
            }
            for (int hh = 0; hh < H; hh++) {
                int kh = hh / (H / HKV);
                for (int p = 0; p < N; p++) {
                    double sc[MAX_T * 4], mx = -INFINITY;
                    const double *qp = q + (s0 + p) * H * D + hh * D;
                    for (int pk = 0; pk < N; pk++) {
                        sc[pk] = -INFINITY;
                        if (!visible(o, hh, N, p, pk))
                            continue;
                        double s = 0;
                        for (int i = 0; i < D; i++)
                            s += qp[i] * k[(s0 + pk) * HKV * D + kh * D + i];
                        sc[pk] = s / sqrt((double)D);
                        mx = fmax(mx, sc[pk]);
                    }
                    double den = 0;
                    for (int pk = 0; pk < N; pk++) {
                        sc[pk] = isinf(sc[pk]) ? 0 : exp(sc[pk] - mx);
                        den += sc[pk];
                    }
                    double *op = att + (s0 + p) * H * D + hh * D;
                    for (int i = 0; i < D; i++) {
                        double s = 0;
                        for (int pk = 0; pk < N; pk++)
                            s += sc[pk] * v[(s0 + pk) * HKV * D + kh * D + i];
                        op[i] = s / den;
                    }
                }
            }
        }
        for (int t = 0; t < T; t++) {
            dlin(att + t * H * D, H * D, HID, get(w, "model.layers.%d.self_attn.o_proj.weight", l),
                 o, S2_CKPT_SLOT(l, S2_PROJ_O), t1);
            for (int i = 0; i < HID; i++)
                h[t * HID + i] += t1[i];
            drms(h + t * HID, get(w, "model.layers.%d.post_attention_layernorm.weight", l), x);
            dlin(x, HID, INTER, get(w, "model.layers.%d.mlp.gate_proj.weight", l), o,
                 S2_CKPT_SLOT(l, S2_PROJ_GATE), g);
            dlin(x, HID, INTER, get(w, "model.layers.%d.mlp.up_proj.weight", l), o,
                 S2_CKPT_SLOT(l, S2_PROJ_UP), u);
            for (int i = 0; i < INTER; i++)
                g[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
            dlin(g, INTER, HID, get(w, "model.layers.%d.mlp.down_proj.weight", l), o,
                 S2_CKPT_SLOT(l, S2_PROJ_DOWN), t1);
            for (int i = 0; i < HID; i++)
                h[t * HID + i] += t1[i];
        }
    }
    const float *head = tie ? emb : get(w, "lm_head.weight%.0d", 0);
    ref_opts plain = {0};
    for (int t = 0; t < T; t++) {
        drms(h + t * HID, get(w, "model.norm.weight%.0d", 0), x);
        dlin(x, HID, VOCAB, head, &plain, 0, logits + (size_t)t * VOCAB);
    }
    free(h), free(q), free(k), free(v), free(att);
}

/* max |a - b| / max |b|. */
static double rel_err(const float *a, const double *b, size_t n)
{
    double e = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs(a[i] - b[i]));
        m = fmax(m, fabs(b[i]));
    }
    return e / m;
}

static double max_diff(const float *a, const float *b, size_t n)
{
    double e = 0;
    for (size_t i = 0; i < n; i++)
        e = fmax(e, fabs((double)a[i] - b[i]));
    return e;
}

static float *fwd(const s2_ref_llama *m, const int32_t *tok, int T, const int32_t *cu, int B,
                  const s2_ref_llama_attn *a, const s2_ref_llama_lora *lo)
{
    float *lg = malloc((size_t)T * VOCAB * sizeof(float));
    cr_assert_not_null(lg);
    s2_error err = {0};
    cr_assert_eq(s2_ref_llama_forward(m, tok, T, cu, B, a, lo, lg, &err), S2_OK, "%s", err.msg);
    return lg;
}

/* ---- tests -------------------------------------------------------------------------------- */

Test(llama, forward_matches_independent_double)
{
    weights w = tiny_weights(0);
    s2_ref_llama *m = load(&w, 0);
    cr_assert_eq(m->cfg.head_dim, D);
    cr_assert_float_eq(m->cfg.rope_scaling_factor, FACTOR, 0);
    const int32_t tok[5] = {3, 17, 0, 36, 9};
    float *lg = fwd(m, tok, 5, NULL, 0, NULL, NULL);
    double ref[5 * VOCAB];
    ref_opts o = {0};
    ref_forward(&w, 0, tok, 5, &o, ref);
    double e = rel_err(lg, ref, 5 * VOCAB);
    cr_assert_lt(e, 1e-5, "relative error %g", e);
    /* G >= N with S = 0 (either mode) is the causal result exactly. */
    s2_ref_llama_attn big = {.G = 8, .S = 0, .mode = S2_SHIFT_ROLL};
    float *lg2 = fwd(m, tok, 5, NULL, 0, &big, NULL);
    cr_assert_eq(max_diff(lg, lg2, 5 * VOCAB), 0.0);
    free(lg), free(lg2);
    s2_ref_llama_free(m);
    free_weights(&w);
}

Test(llama, tied_and_untied_head)
{
    weights w = tiny_weights(1);
    s2_ref_llama *m = load(&w, 1);
    cr_assert_eq(m->lm_head, m->embed);
    const int32_t tok[6] = {1, 2, 30, 4, 4, 20};
    float *lg = fwd(m, tok, 6, NULL, 0, NULL, NULL);
    double ref[6 * VOCAB];
    ref_opts o = {0};
    ref_forward(&w, 1, tok, 6, &o, ref);
    cr_assert_lt(rel_err(lg, ref, 6 * VOCAB), 1e-5);
    s2_ref_llama_free(m);

    /* The same weights untied with lm_head = a copy of the embeddings: the same logits. */
    weights w2 = w;
    add(&w2, VOCAB, HID, 0, 0, "lm_head.weight%.0d", 0);
    memcpy(w2.t[w2.n - 1].data, get(&w, "model.embed_tokens.weight%.0d", 0),
           (size_t)VOCAB * HID * sizeof(float));
    s2_ref_llama *m2 = load(&w2, 0);
    cr_assert_neq(m2->lm_head, m2->embed);
    float *lg2 = fwd(m2, tok, 6, NULL, 0, NULL, NULL);
    cr_assert_eq(max_diff(lg, lg2, 6 * VOCAB), 0.0);
    free(lg2);
    s2_ref_llama_free(m2);

    /* A different head changes them, and still matches the double path. */
    float *hd = w2.t[w2.n - 1].data;
    for (int i = 0; i < VOCAB * HID; i++)
        hd[i] = frand();
    m2 = load(&w2, 0);
    lg2 = fwd(m2, tok, 6, NULL, 0, NULL, NULL);
    ref_forward(&w2, 0, tok, 6, &o, ref);
    cr_assert_lt(rel_err(lg2, ref, 6 * VOCAB), 1e-5);
    cr_assert_gt(max_diff(lg, lg2, 6 * VOCAB), 1e-2);
    free(lg), free(lg2);
    s2_ref_llama_free(m2);
    free_weights(&w2);
}

Test(llama, missing_lm_head_is_an_error)
{
    weights w = tiny_weights(1);
    write_ckpt(&w, 0); /* untied config, no lm_head.weight */
    s2_error err = {0};
    s2_ckpt *ck = NULL;
    cr_assert_eq(s2_ckpt_open(dir, &ck, &err), S2_OK, "%s", err.msg);
    s2_ref_llama *m = (s2_ref_llama *)1;
    cr_assert_eq(s2_ref_llama_load(ck, &m, &err), S2_ERR_INVALID);
    cr_assert_null(m);
    cr_assert(err.msg && strstr(err.msg, "lm_head.weight"), "%s", err.msg);
    s2_error_clear(&err);
    s2_ckpt_close(ck);
    free_weights(&w);
}

Test(llama, varlen_equals_separate_runs)
{
    weights w = tiny_weights(0);
    s2_ref_llama *m = load(&w, 0);
    const int32_t tok[8] = {5, 6, 7, 11, 12, 13, 14, 15};
    const int32_t cu[3] = {0, 3, 8};
    float *packed = fwd(m, tok, 8, cu, 2, NULL, NULL);
    float *a = fwd(m, tok, 3, NULL, 0, NULL, NULL);
    float *b = fwd(m, tok + 3, 5, NULL, 0, NULL, NULL);
    cr_assert_lt(max_diff(packed, a, 3 * VOCAB), 1e-6);
    cr_assert_lt(max_diff(packed + 3 * VOCAB, b, 5 * VOCAB), 1e-6);
    /* ... and both match the double path run on the packed batch. */
    double ref[8 * VOCAB];
    ref_opts o = {.cu = cu, .B = 2};
    ref_forward(&w, 0, tok, 8, &o, ref);
    cr_assert_lt(rel_err(packed, ref, 8 * VOCAB), 1e-5);
    /* One sequence of 8 differs from the packed pair after the boundary. */
    float *whole = fwd(m, tok, 8, NULL, 0, NULL, NULL);
    cr_assert_lt(max_diff(whole, packed, 3 * VOCAB), 1e-6);
    cr_assert_gt(max_diff(whole + 3 * VOCAB, packed + 3 * VOCAB, 5 * VOCAB), 1e-3);
    free(packed), free(a), free(b), free(whole);
    s2_ref_llama_free(m);
    free_weights(&w);
}

Test(llama, s2_attention_changes_only_regrouped_positions)
{
    weights w = tiny_weights(0);
    s2_ref_llama *m = load(&w, 0);
    enum { T = 12 };
    const int32_t tok[T] = {1, 9, 2, 8, 3, 7, 4, 6, 5, 36, 0, 18};
    float *causal = fwd(m, tok, T, NULL, 0, NULL, NULL);
    s2_ref_llama_attn full = {.G = T, .S = 0, .mode = S2_SHIFT_SPLIT};
    float *gn = fwd(m, tok, T, NULL, 0, &full, NULL);
    cr_assert_eq(max_diff(causal, gn, T * VOCAB), 0.0, "G = N must be exactly causal");

    /* split, G = 4, S = 2: plain heads regroup from p = 4, shifted heads from p = 2 (group
     * floor((p+2)/4) is 0 only for p < 2). Positions 0, 1 see exactly the causal keys. */
    s2_ref_llama_attn sp = {.G = 4, .S = 2, .mode = S2_SHIFT_SPLIT};
    float *s2 = fwd(m, tok, T, NULL, 0, &sp, NULL);
    cr_assert_lt(max_diff(causal, s2, 2 * VOCAB), 1e-6);
    for (int p = 2; p < T; p++)
        cr_assert_gt(max_diff(causal + p * VOCAB, s2 + p * VOCAB, VOCAB), 1e-4,
                     "position %d should differ", p);
    double ref[T * VOCAB];
    ref_opts o = {.G = 4, .S = 2};
    ref_forward(&w, 0, tok, T, &o, ref);
    cr_assert_lt(rel_err(s2, ref, T * VOCAB), 1e-5);

    /* S = 0, G = 4: only positions from 4 on regroup. */
    s2_ref_llama_attn g4 = {.G = 4, .S = 0, .mode = S2_SHIFT_SPLIT};
    float *s3 = fwd(m, tok, T, NULL, 0, &g4, NULL);
    cr_assert_lt(max_diff(causal, s3, 4 * VOCAB), 1e-6);
    for (int p = 4; p < T; p++)
        cr_assert_gt(max_diff(causal + p * VOCAB, s3 + p * VOCAB, VOCAB), 1e-4);

    /* roll against the double path, in a packed batch. */
    const int32_t cu[3] = {0, 5, T};
    s2_ref_llama_attn ro = {.G = 4, .S = 2, .mode = S2_SHIFT_ROLL};
    float *s4 = fwd(m, tok, T, cu, 2, &ro, NULL);
    ref_opts o2 = {.cu = cu, .B = 2, .G = 4, .S = 2, .roll = 1};
    ref_forward(&w, 0, tok, T, &o2, ref);
    cr_assert_lt(rel_err(s4, ref, T * VOCAB), 1e-5);

    /* bad settings are refused */
    s2_ref_llama_attn bad = {.G = 4, .S = 4};
    s2_error err = {0};
    cr_assert_eq(s2_ref_llama_forward(m, tok, T, NULL, 0, &bad, NULL, s4, &err), S2_ERR_INVALID);
    s2_error_clear(&err);
    free(causal), free(gn), free(s2), free(s3), free(s4);
    s2_ref_llama_free(m);
    free_weights(&w);
}

Test(llama, lora)
{
    weights w = tiny_weights(0);
    s2_ref_llama *m = load(&w, 0);
    enum { T = 6, R = 4 };
    const int32_t tok[T] = {2, 4, 6, 8, 10, 12};
    const float *A[L * S2_PROJ_COUNT] = {0}, *Bz[L * S2_PROJ_COUNT] = {0},
                *Bn[L * S2_PROJ_COUNT] = {0};
    float *bufs[L * 4 * 3];
    int nb = 0;
    for (int l = 0; l < L; l++)
        for (int p = S2_PROJ_Q; p <= S2_PROJ_O; p++) {
            int in = p == S2_PROJ_O ? H * D : HID;
            int out = p == S2_PROJ_O ? HID : p == S2_PROJ_Q ? H * D : HKV * D;
            float *a = malloc(sizeof(float) * R * in), *bz = calloc((size_t)out * R, 4),
                  *bn = malloc(sizeof(float) * out * R);
            cr_assert(a && bz && bn);
            for (int i = 0; i < R * in; i++)
                a[i] = frand() / sqrtf((float)in);
            for (int i = 0; i < out * R; i++)
                bn[i] = 0.3f * frand();
            A[S2_CKPT_SLOT(l, p)] = a, Bz[S2_CKPT_SLOT(l, p)] = bz, Bn[S2_CKPT_SLOT(l, p)] = bn;
            bufs[nb++] = a, bufs[nb++] = bz, bufs[nb++] = bn;
        }
    float *base = fwd(m, tok, T, NULL, 0, NULL, NULL);
    s2_ref_llama_lora zero = {.r = R, .scale = 2.0f, .A = A, .B = Bz};
    float *lz = fwd(m, tok, T, NULL, 0, NULL, &zero);
    cr_assert_eq(max_diff(base, lz, T * VOCAB), 0.0, "B = 0 must leave the logits unchanged");
    s2_ref_llama_lora nz = {.r = R, .scale = 2.0f, .A = A, .B = Bn};
    float *ln = fwd(m, tok, T, NULL, 0, NULL, &nz);
    cr_assert_gt(max_diff(base, ln, T * VOCAB), 1e-2);
    double ref[T * VOCAB];
    ref_opts o = {.r = R, .s = 2.0, .A = A, .Bm = Bn};
    ref_forward(&w, 0, tok, T, &o, ref);
    double e = rel_err(ln, ref, T * VOCAB);
    cr_assert_lt(e, 1e-5, "relative error %g", e);
    /* An adapter on o_proj only (other slots NULL) also matches. */
    const float *Ao[L * S2_PROJ_COUNT] = {0}, *Bo[L * S2_PROJ_COUNT] = {0};
    Ao[S2_CKPT_SLOT(1, S2_PROJ_O)] = A[S2_CKPT_SLOT(1, S2_PROJ_O)];
    Bo[S2_CKPT_SLOT(1, S2_PROJ_O)] = Bn[S2_CKPT_SLOT(1, S2_PROJ_O)];
    s2_ref_llama_lora oo = {.r = R, .scale = 0.5f, .A = Ao, .B = Bo};
    float *lo = fwd(m, tok, T, NULL, 0, NULL, &oo);
    ref_opts o2 = {.r = R, .s = 0.5, .A = Ao, .Bm = Bo};
    ref_forward(&w, 0, tok, T, &o2, ref);
    cr_assert_lt(rel_err(lo, ref, T * VOCAB), 1e-5);
    for (int i = 0; i < nb; i++)
        free(bufs[i]);
    free(base), free(lz), free(ln), free(lo);
    s2_ref_llama_free(m);
    free_weights(&w);
}

Test(llama, loss_shifts_within_sequences)
{
    weights w = tiny_weights(0);
    s2_ref_llama *m = load(&w, 0);
    enum { T = 9 };
    const int32_t tok[T] = {3, 1, 4, 1, 5, 9, 2, 6, 5};
    const int32_t cu[4] = {0, 4, 5, 9}; /* lengths 4, 1, 4 */
    float *lg = fwd(m, tok, T, cu, 3, NULL, NULL);
    int32_t labels[T];
    s2_ref_llama_labels(tok, T, cu, 3, labels);
    const int32_t want[T] = {1, 4, 1, -100, -100, 2, 6, 5, -100};
    for (int t = 0; t < T; t++)
        cr_assert_eq(labels[t], want[t], "label %d", t);
    double nll = 0;
    int cnt = 0;
    for (int b = 0; b < 3; b++)
        for (int t = cu[b]; t + 1 < cu[b + 1]; t++) {
            double mx = -INFINITY, se = 0;
            for (int c = 0; c < VOCAB; c++)
                mx = fmax(mx, lg[t * VOCAB + c]);
            for (int c = 0; c < VOCAB; c++)
                se += exp(lg[t * VOCAB + c] - mx);
            nll += mx + log(se) - lg[t * VOCAB + tok[t + 1]];
            cnt++;
        }
    cr_assert_eq(cnt, 6);
    s2_ref_xent_sum sum;
    double loss = s2_ref_llama_loss(lg, tok, T, VOCAB, cu, 3, NULL, &sum);
    cr_assert_eq(sum.count, 6);
    cr_assert_float_eq(loss, nll / cnt, 1e-9 * fabs(nll / cnt) + 1e-12);
    cr_assert_float_eq(sum.nll_sum, nll, 1e-9 * fabs(nll) + 1e-12);
    /* One sequence: T - 1 labelled positions. */
    double l1 = s2_ref_llama_loss(lg, tok, T, VOCAB, NULL, 0, NULL, &sum);
    cr_assert_eq(sum.count, T - 1);
    cr_assert(isfinite(l1) && l1 > 0);
    free(lg);
    s2_ref_llama_free(m);
    free_weights(&w);
}

Test(llama, bad_inputs_are_refused)
{
    weights w = tiny_weights(0);
    s2_ref_llama *m = load(&w, 0);
    const int32_t tok[3] = {1, VOCAB, 2};
    float lg[3 * VOCAB];
    s2_error err = {0};
    cr_assert_eq(s2_ref_llama_forward(m, tok, 3, NULL, 0, NULL, NULL, lg, &err),
                 S2_ERR_INVALID);
    cr_assert(err.msg && strstr(err.msg, "outside"), "%s", err.msg);
    s2_error_clear(&err);
    const int32_t ok[3] = {1, 2, 3}, cu[3] = {0, 2, 4};
    cr_assert_eq(s2_ref_llama_forward(m, ok, 3, cu, 2, NULL, NULL, lg, &err), S2_ERR_INVALID);
    s2_error_clear(&err);
    s2_ref_llama_free(m);
    free_weights(&w);
}

/* The thread pool's width comes from S2LORA_THREADS: an invalid value is named, not taken for a
 * lack of memory; with the references' own thread count set the variable is not read. */
Test(llama, invalid_threads_variable_is_named)
{
    weights w = tiny_weights(0);
    s2_ref_llama *m = load(&w, 0);
    const int32_t tok[3] = {1, 2, 3};
    float lg[3 * VOCAB];
    s2_error err = {0};
    setenv("S2LORA_THREADS", "0", 1);
    cr_assert_eq(s2_ref_llama_forward(m, tok, 3, NULL, 0, NULL, NULL, lg, &err),
                 S2_ERR_INVALID);
    cr_assert(err.msg && strstr(err.msg, "llama forward: S2LORA_THREADS=\"0\""), "%s", err.msg);
    s2_error_clear(&err);
    s2_ref_threads = 2;
    cr_assert_eq(s2_ref_llama_forward(m, tok, 3, NULL, 0, NULL, NULL, lg, &err), S2_OK, "%s",
                 err.msg);
    s2_ref_threads = 0;
    s2_ref_llama_free(m);
    free_weights(&w);
}

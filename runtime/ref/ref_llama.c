/*
 * ref_llama.c — the CPU twin of LlamaForCausalLM's forward (see ref_llama.h).
 */
#include "runtime/ref/ref_llama.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/pool.h"
#include "runtime/ref/ref.h"

/* ---- loading ------------------------------------------------------------------------------ */

static s2_status read_tensor(const s2_ckpt *ck, const char *name, int64_t d0, int64_t d1,
                             float **dst, s2_error *err)
{
    const s2_tensor *t = s2_ckpt_tensor(ck, name);
    int ndim = d1 > 0 ? 2 : 1;
    if (!t)
        return s2_error_set(err, S2_ERR_INVALID, "checkpoint has no tensor %s", name);
    if (t->ndim != ndim || t->shape[0] != d0 || (ndim == 2 && t->shape[1] != d1)) {
        char found[96];
        s2_tensor_shape_str(t, found, sizeof found);
        if (ndim == 2)
            return s2_error_set(err, S2_ERR_INVALID, "%s: tensor %s has shape %s, expected [%lld, %lld]",
                                s2_ckpt_tensor_path(ck, name), name, found, (long long)d0,
                                (long long)d1);
        return s2_error_set(err, S2_ERR_INVALID, "%s: tensor %s has shape %s, expected [%lld]",
                            s2_ckpt_tensor_path(ck, name), name, found, (long long)d0);
    }
    size_t n = (size_t)d0 * (size_t)(ndim == 2 ? d1 : 1);
    *dst = malloc(n * sizeof(float));
    if (!*dst)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory loading %s", name);
    return s2_ckpt_read_f32(ck, name, *dst, n, err);
}

void s2_ref_llama_free(s2_ref_llama *m)
{
    if (!m)
        return;
    if (m->layers) {
        for (int l = 0; l < m->cfg.num_hidden_layers; l++) {
            s2_ref_llama_layer *y = &m->layers[l];
            free(y->input_norm), free(y->wq), free(y->wk), free(y->wv), free(y->wo);
            free(y->post_norm), free(y->wg), free(y->wu), free(y->wd);
        }
        free(m->layers);
    }
    if (m->lm_head != m->embed)
        free(m->lm_head);
    free(m->embed);
    free(m->norm);
    free(m);
}

s2_status s2_ref_llama_load(const s2_ckpt *ck, s2_ref_llama **out, s2_error *err)
{
    *out = NULL;
    s2_ref_llama *m = calloc(1, sizeof *m);
    if (!m)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    m->cfg = *s2_ckpt_config(ck);
    const s2_hf_config *c = &m->cfg;
    int64_t hid = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    int64_t qd = (int64_t)c->num_attention_heads * c->head_dim;
    int64_t kvd = (int64_t)c->num_key_value_heads * c->head_dim;
    s2_status st;
    m->layers = calloc((size_t)c->num_hidden_layers, sizeof *m->layers);
    if (!m->layers && c->num_hidden_layers > 0) {
        st = s2_error_set(err, S2_ERR_NOMEM, "out of memory");
        goto fail;
    }
    if ((st = read_tensor(ck, "model.embed_tokens.weight", V, hid, &m->embed, err)))
        goto fail;
    char name[128];
#define LAYER_T(field, suffix, d0, d1)                                                          \
    do {                                                                                        \
        snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix);                           \
        if ((st = read_tensor(ck, name, d0, d1, &y->field, err)))                               \
            goto fail;                                                                          \
    } while (0)
    for (int l = 0; l < c->num_hidden_layers; l++) {
        s2_ref_llama_layer *y = &m->layers[l];
        LAYER_T(input_norm, "input_layernorm.weight", hid, 0);
        LAYER_T(wq, "self_attn.q_proj.weight", qd, hid);
        LAYER_T(wk, "self_attn.k_proj.weight", kvd, hid);
        LAYER_T(wv, "self_attn.v_proj.weight", kvd, hid);
        LAYER_T(wo, "self_attn.o_proj.weight", hid, qd);
        LAYER_T(post_norm, "post_attention_layernorm.weight", hid, 0);
        LAYER_T(wg, "mlp.gate_proj.weight", I, hid);
        LAYER_T(wu, "mlp.up_proj.weight", I, hid);
        LAYER_T(wd, "mlp.down_proj.weight", hid, I);
    }
#undef LAYER_T
    if ((st = read_tensor(ck, "model.norm.weight", hid, 0, &m->norm, err)))
        goto fail;
    if (c->tie_word_embeddings)
        m->lm_head = m->embed;
    else if ((st = read_tensor(ck, "lm_head.weight", V, hid, &m->lm_head, err)))
        goto fail;
    *out = m;
    return S2_OK;
fail:
    s2_ref_llama_free(m);
    return st;
}

/* ---- forward ------------------------------------------------------------------------------ */

/* y [M, out] = x [M, in] W^T (+ s (x A^T) B^T when A, B given); fp64 accumulation per row. */
typedef struct lin_ctx {
    int in, out, r;
    const float *x, *W, *A, *B;
    double s;
    float *y;
    int add; /* y += instead of y = */
} lin_ctx;

static void lin_item(void *vc, int m, void *scratch)
{
    const lin_ctx *c = vc;
    double *xa = scratch;
    const float *x = c->x + (size_t)m * c->in;
    float *y = c->y + (size_t)m * c->out;
    if (c->A)
        for (int j = 0; j < c->r; j++) {
            const float *a = c->A + (size_t)j * c->in;
            double s = 0;
            for (int k = 0; k < c->in; k++)
                s += (double)x[k] * a[k];
            xa[j] = s;
        }
    for (int o = 0; o < c->out; o++) {
        const float *w = c->W + (size_t)o * c->in;
        double s = 0;
        for (int k = 0; k < c->in; k++)
            s += (double)x[k] * w[k];
        if (c->A) {
            const float *b = c->B + (size_t)o * c->r;
            double t = 0;
            for (int j = 0; j < c->r; j++)
                t += xa[j] * b[j];
            s += c->s * t;
        }
        y[o] = c->add ? (float)((double)y[o] + (float)s) : (float)s;
    }
}

static int linear(int M, int in, int out, const float *x, const float *W,
                  const s2_ref_llama_lora *lora, int slot, float *y, int add)
{
    lin_ctx c = {in, out, 0, x, W, NULL, NULL, 0, y, add};
    if (lora && lora->A && lora->B && lora->r > 0 && lora->A[slot] && lora->B[slot]) {
        c.r = lora->r;
        c.A = lora->A[slot];
        c.B = lora->B[slot];
        c.s = lora->scale;
    }
    return s2_ref_parallel_for(M, (size_t)(c.r > 0 ? c.r : 1) * sizeof(double), lin_item, &c);
}

s2_status s2_ref_llama_forward(const s2_ref_llama *m, const int32_t *tokens, int T,
                               const int32_t *cu_seqlens, int B, const s2_ref_llama_attn *attn,
                               const s2_ref_llama_lora *lora, float *logits, s2_error *err)
{
    const s2_hf_config *c = &m->cfg;
    const int hid = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    const int H = c->num_attention_heads, Hkv = c->num_key_value_heads, d = c->head_dim;
    const int qd = H * d, kvd = Hkv * d;
    if (T < 0)
        return s2_error_set(err, S2_ERR_INVALID, "llama forward: T = %d", T);
    if (T == 0)
        return S2_OK;
    int32_t one[2] = {0, T};
    if (!cu_seqlens) {
        cu_seqlens = one;
        B = 1;
    }
    if (B < 1 || cu_seqlens[0] != 0 || cu_seqlens[B] != T)
        return s2_error_set(err, S2_ERR_INVALID,
                            "llama forward: cu_seqlens must start at 0 and end at T = %d", T);
    int maxN = 0;
    for (int b = 0; b < B; b++) {
        int N = cu_seqlens[b + 1] - cu_seqlens[b];
        if (N < 0)
            return s2_error_set(err, S2_ERR_INVALID,
                                "llama forward: cu_seqlens decreases at %d", b + 1);
        if (N > maxN)
            maxN = N;
    }
    for (int t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= V)
            return s2_error_set(err, S2_ERR_INVALID,
                                "llama forward: token %d at position %d is outside [0, %d)",
                                tokens[t], t, V);
    /* An invalid S2LORA_THREADS fails every loop below: say so rather than "out of memory". */
    int width;
    const s2_status pool_st = s2_ref_threads > 0 ? S2_OK : s2_pool_threads(&width, err);
    if (pool_st) {
        s2_error_prefix(err, "llama forward");
        return pool_st;
    }
    s2_ref_attn a = {.T = T, .H = H, .Hkv = Hkv, .d = d, .B = B, .cu_seqlens = cu_seqlens,
                     .G = maxN, .S = 0, .mode = S2_SHIFT_SPLIT,
                     .scale = (float)(1.0 / sqrt((double)d))};
    if (attn && attn->G > 0) {
        if (attn->S < 0 || attn->S >= attn->G)
            return s2_error_set(err, S2_ERR_INVALID,
                                "llama forward: shift %d is outside [0, group size %d)", attn->S,
                                attn->G);
        a.G = attn->G;
        a.S = attn->S;
        a.mode = attn->mode;
    }
    s2_ref_rope rope = {.d = d, .theta = c->rope_theta,
                        .factor = c->rope_scaling_factor > 0 ? c->rope_scaling_factor : 1.0,
                        .fp32_angles = attn ? attn->rope_fp32_angles : 0};

    size_t Tz = (size_t)T;
    int32_t *pos = malloc(Tz * sizeof *pos);
    float *h = malloc(Tz * hid * sizeof(float)), *x = malloc(Tz * hid * sizeof(float));
    float *q = malloc(Tz * qd * sizeof(float)), *ao = malloc(Tz * qd * sizeof(float));
    float *k = malloc(Tz * kvd * sizeof(float)), *v = malloc(Tz * kvd * sizeof(float));
    float *g = malloc(Tz * I * sizeof(float)), *u = malloc(Tz * I * sizeof(float));
    float *lse = malloc(Tz * H * sizeof(float));
    s2_status st = S2_OK;
    if (!pos || !h || !x || !q || !ao || !k || !v || !g || !u || !lse) {
        st = s2_error_set(err, S2_ERR_NOMEM, "llama forward: out of memory (T = %d)", T);
        goto done;
    }
    for (int b = 0; b < B; b++)
        for (int t = cu_seqlens[b]; t < cu_seqlens[b + 1]; t++)
            pos[t] = t - cu_seqlens[b];
    for (int t = 0; t < T; t++)
        memcpy(h + (size_t)t * hid, m->embed + (size_t)tokens[t] * hid, hid * sizeof(float));

    int bad = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const s2_ref_llama_layer *y = &m->layers[l];
        s2_ref_rmsnorm_forward(T, hid, c->rms_norm_eps, h, y->input_norm, x, NULL);
        bad |= linear(T, hid, qd, x, y->wq, lora, S2_CKPT_SLOT(l, S2_PROJ_Q), q, 0);
        bad |= linear(T, hid, kvd, x, y->wk, lora, S2_CKPT_SLOT(l, S2_PROJ_K), k, 0);
        bad |= linear(T, hid, kvd, x, y->wv, lora, S2_CKPT_SLOT(l, S2_PROJ_V), v, 0);
        s2_ref_rope_forward(&rope, T, H, pos, q, q);
        s2_ref_rope_forward(&rope, T, Hkv, pos, k, k);
        s2_ref_attn_forward(&a, q, k, v, ao, lse);
        bad |= linear(T, qd, hid, ao, y->wo, lora, S2_CKPT_SLOT(l, S2_PROJ_O), h, 1);
        s2_ref_rmsnorm_forward(T, hid, c->rms_norm_eps, h, y->post_norm, x, NULL);
        bad |= linear(T, hid, I, x, y->wg, lora, S2_CKPT_SLOT(l, S2_PROJ_GATE), g, 0);
        bad |= linear(T, hid, I, x, y->wu, lora, S2_CKPT_SLOT(l, S2_PROJ_UP), u, 0);
        s2_ref_swiglu_forward(Tz * I, g, u, g);
        bad |= linear(T, I, hid, g, y->wd, lora, S2_CKPT_SLOT(l, S2_PROJ_DOWN), h, 1);
    }
    s2_ref_rmsnorm_forward(T, hid, c->rms_norm_eps, h, m->norm, x, NULL);
    bad |= linear(T, hid, V, x, m->lm_head, NULL, 0, logits, 0);
    if (bad)
        st = s2_error_set(err, S2_ERR_NOMEM, "llama forward: out of memory (T = %d)", T);
done:
    free(pos), free(h), free(x), free(q), free(ao), free(k), free(v), free(g), free(u);
    free(lse);
    return st;
}

/* ---- loss --------------------------------------------------------------------------------- */

void s2_ref_llama_labels(const int32_t *tokens, int T, const int32_t *cu_seqlens, int B,
                         int32_t *labels)
{
    int32_t one[2] = {0, T};
    if (!cu_seqlens) {
        cu_seqlens = one;
        B = 1;
    }
    for (int t = 0; t < T; t++)
        labels[t] = S2_REF_IGNORE_INDEX;
    for (int b = 0; b < B; b++)
        for (int t = cu_seqlens[b]; t + 1 < cu_seqlens[b + 1]; t++)
            labels[t] = tokens[t + 1];
}

double s2_ref_llama_loss(const float *logits, const int32_t *tokens, int T, int vocab,
                         const int32_t *cu_seqlens, int B, float *dlogits,
                         s2_ref_xent_sum *sum)
{
    if (T <= 0) {
        if (sum)
            *sum = (s2_ref_xent_sum){0, 0};
        return 0;
    }
    int32_t *labels = malloc((size_t)T * sizeof *labels);
    if (!labels) {
        if (sum)
            *sum = (s2_ref_xent_sum){NAN, 0};
        if (dlogits)
            for (size_t i = 0; i < (size_t)T * vocab; i++)
                dlogits[i] = NAN;
        return NAN;
    }
    s2_ref_llama_labels(tokens, T, cu_seqlens, B, labels);
    double loss = s2_ref_cross_entropy(T, vocab, logits, labels, 0, dlogits, sum);
    free(labels);
    return loss;
}

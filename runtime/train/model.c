/* model.c — the LLaMA model on the GPU: weights, trainable state, forward, backward (model.h). */
#include "runtime/train/model.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/blas.h"
#include "runtime/ops/lora.h"
#include "gen/sp_plan.h"
#include "runtime/ref/ref_llama.h"
#include "runtime/train/train_kern.h"
#include "runtime/tune/tune.h"

#define GROUPS 4 /* per layer: {q, k, v}, {o}, {gate, up}, {down} */
enum { G_QKV = 0, G_O, G_GU, G_DOWN };

/* One projection group of a layer: its members stacked in one augmented W (lora.h). */
typedef struct group {
    int n;
    s2_proj proj[3];
    int out[3], out_off[3];
    int in, out_total, rp;
    s2_lora_dims d;  /* M, seed set per micro-batch */
    void *wc;        /* [out_total + rp, in + rp]: W | B, and A in the extra rows (lora.h) */
    int seg_a, seg_b; /* trainable tensors, -1 when the group has no adapter */
    int seg_w;        /* full mode: the stacked W itself, -1 otherwise */
    unsigned char algo[S2_LG_COUNT]; /* tuned cuBLAS algorithms (s2lora tune --kernels lora) */
} group;

typedef struct layer {
    group g[GROUPS];
    void *w_in, *w_post; /* [hidden] */
    int seg_in, seg_post;
} layer;

/* One trainable tensor: a range of the flat fp32 arrays and where its dtype copy lives. */
typedef struct seg {
    char name[128];
    int ndim;
    int64_t shape[2];
    size_t numel, off;
    void *dst;           /* the dtype copy: rows x cols at row stride ldd */
    int rows, cols, ldd;
} seg;

struct s2_gm {
    s2_spec spec;
    int full;       /* every weight trainable (no adapters) */
    s2_rt rt;
    s2_lora_plan lp;
    int L, hid, H, Hkv, hd, I, V, Tmax, chunk, nqkv;
    int ldy[4]; /* row stride of each group's output gradient: out_total + rp (lora.h's dya) */
    s2_attn attn[2]; /* [0] S²-Attn, [1] full causal */
    int have_attn[2];
    s2_attn attn_w;  /* sequence parallel: the window units (sp_halo > 0) */
    int have_attn_w;
    int halo;        /* sp_halo: K/V rows per layer are Tmax + halo */
    const s2_gm_sp *sp; /* the micro-batch's chunk, NULL when it is whole sequences */
    int hoff;        /* the chunk's own K/V rows start at row hoff (lo - klo; 0 without sp) */
    s2_train_kern k;
    int have_k;
    s2_lora_ctx *lora;
    s2_blas *blas;
    cudaStream_t stream;
    void *embed, *norm, *lm_head; /* lm_head == embed when tied */
    layer *layers;
    seg *segs;
    int n_segs, cap_segs;
    size_t numel;
    float *P, *G, *Mo, *Vo;       /* flat masters, gradients, AdamW m and v */
    int seg_embed, seg_norm, seg_head;
    /* activations and workspaces */
    void *hs;                      /* (L + 1) layer inputs [T, hid] */
    void *xa[GROUPS];              /* each group's augmented input [T, in + rp] */
    void *qkv, *q, *k_, *v, *o, *y, *h2, *gu; /* k_: keys (k is the kernels) */
    float *lse, *rstd1, *rstd2, *rstdf;
    void *dh, *dh2, *dxv, *dgu, *dout, *dq, *dk, *dv, *dqkv, *xf, *dxf, *logits;
    float *logits_f32;
    void *attn_ws, *lora_ws;
    int keep_attn;                 /* S2_GM_RECOMPUTE_MLP: the buffers of acts_of() hold L layers */
    char recompute_what[200];
    char lora_why[160];            /* which LoRA products run tuned cuBLAS algorithms */
    int32_t *d_tokens, *d_labels, *d_pos, *d_cu;
    double *d_acc;
    s2_k_ws kws;                   /* the train kernels' reductions (train_kern.h), zeroed once */
    s2_embed_list emb;             /* the embedding backward's work list of the micro-batch */
    int32_t *d_emb;                /* its device copy */
    s2_gm_stage_fn stage_fn;       /* data parallel: told when gradients are complete */
    void *stage_ctx;
    /* every device allocation, for close */
    void **allocs;
    int n_allocs, cap_allocs;
    size_t bytes;
};

#define EL 2 /* bytes per element of the storage dtype (bf16 or fp16) */

static void *at(const void *base, size_t elems) { return (char *)base + EL * elems; }

static s2_status dalloc(s2_gm *m, void *ptr, size_t bytes, const char *what, s2_error *err)
{
    void **p = ptr;
    *p = NULL;
    if (m->n_allocs == m->cap_allocs) {
        const int cap = m->cap_allocs ? 2 * m->cap_allocs : 128;
        void **a = realloc(m->allocs, (size_t)cap * sizeof *a);
        if (!a)
            return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
        m->allocs = a;
        m->cap_allocs = cap;
    }
    if (bytes == 0)
        bytes = 16;
    cudaError_t e = cudaMalloc(p, bytes);
    if (e != cudaSuccess)
        return s2_error_set(err, S2_ERR_CUDA, "model: cudaMalloc of %s (%.1f MiB): %s", what,
                            (double)bytes / (1 << 20), cudaGetErrorString(e));
    m->allocs[m->n_allocs++] = *p;
    m->bytes += bytes;
    return S2_OK;
}

/* ---- trainable tensors ------------------------------------------------------------------ */

static int add_seg(s2_gm *m, const char *name, int ndim, int64_t r, int64_t c, void *dst,
                   int ldd)
{
    if (m->n_segs == m->cap_segs) {
        int cap = m->cap_segs ? 2 * m->cap_segs : 64;
        seg *s = realloc(m->segs, (size_t)cap * sizeof *s);
        if (!s)
            return -1;
        m->segs = s;
        m->cap_segs = cap;
    }
    seg *s = &m->segs[m->n_segs];
    memset(s, 0, sizeof *s);
    snprintf(s->name, sizeof s->name, "%s", name);
    s->ndim = ndim;
    s->shape[0] = r;
    s->shape[1] = ndim == 2 ? c : 0;
    s->numel = (size_t)r * (size_t)(ndim == 2 ? c : 1);
    s->off = m->numel;
    s->dst = dst;
    s->rows = ndim == 2 ? (int)r : 1;
    s->cols = ndim == 2 ? (int)c : (int)r;
    s->ldd = ldd;
    m->numel += (s->numel + 63) / 64 * 64; /* 256-byte aligned starts */
    return m->n_segs++;
}

/* ---- loading ----------------------------------------------------------------------------- */

static s2_st_dtype st_dtype(s2_dtype d) { return d == S2_DTYPE_BF16 ? S2_ST_BF16 : S2_ST_F16; }

/* Reads checkpoint tensor `name` ([rows, cols]) into dst (dtype, row stride ldd elements). */
static s2_status upload(s2_gm *m, const s2_ckpt *ck, const char *name, int rows, int cols,
                        void *dst, int ldd, s2_error *err)
{
    const size_t n = (size_t)rows * cols;
    float *f = malloc(n * sizeof *f);
    uint16_t *h = malloc(n * sizeof *h);
    s2_status st = (!f || !h) ? s2_error_set(err, S2_ERR_NOMEM, "model: out of memory reading %s",
                                             name)
                              : s2_ckpt_read_f32(ck, name, f, n, err);
    if (!st) {
        s2_f32_to_half(st_dtype(m->spec.dtype), f, h, n);
        st = s2_rt_check(cudaMemcpy2D(dst, (size_t)ldd * EL, h, (size_t)cols * EL,
                                      (size_t)cols * EL, (size_t)rows, cudaMemcpyHostToDevice),
                         name, err);
    }
    free(f);
    free(h);
    return st;
}

/* Reads checkpoint tensor `name` (n elements) into the master of segment s. */
static s2_status upload_master(s2_gm *m, const s2_ckpt *ck, const char *name, int s,
                               s2_error *err)
{
    const size_t n = m->segs[s].numel;
    float *f = malloc(n * sizeof *f);
    s2_status st = !f ? s2_error_set(err, S2_ERR_NOMEM, "model: out of memory reading %s", name)
                      : s2_ckpt_read_f32(ck, name, f, n, err);
    if (!st)
        st = s2_rt_check(cudaMemcpy(m->P + m->segs[s].off, f, n * sizeof *f,
                                    cudaMemcpyHostToDevice), name, err);
    free(f);
    return st;
}

static void layer_name(char *buf, size_t n, int l, const char *rest)
{
    snprintf(buf, n, "model.layers.%d.%s", l, rest);
}

static const char *group_tag(int g)
{
    static const char *const t[GROUPS] = {"self_attn.qkv", "self_attn.o", "mlp.gate_up",
                                          "mlp.down"};
    return t[g];
}

/* Lays out group g of a layer: members, widths, adapters. */
static void group_init(const s2_gm *m, int g, group *gr)
{
    static const s2_proj members[GROUPS][3] = {
        {S2_PROJ_Q, S2_PROJ_K, S2_PROJ_V}, {S2_PROJ_O}, {S2_PROJ_GATE, S2_PROJ_UP}, {S2_PROJ_DOWN}};
    static const int count[GROUPS] = {3, 1, 2, 1};
    memset(gr, 0, sizeof *gr);
    gr->n = count[g];
    int adapted = 0;
    for (int i = 0; i < gr->n; i++) {
        gr->proj[i] = members[g][i];
        gr->out[i] = m->lp.lin[gr->proj[i]].out;
        gr->out_off[i] = gr->out_total;
        gr->out_total += gr->out[i];
        adapted |= m->lp.lin[gr->proj[i]].adapted;
    }
    gr->in = m->lp.lin[gr->proj[0]].in;
    gr->rp = adapted && !m->full ? s2_lora_rp(gr->n * m->lp.rank) : 0;
    gr->seg_a = gr->seg_b = gr->seg_w = -1;
}

/* The LoRA dims of group gr of layer l for T tokens (gradients fp32, accumulated). */
static void group_dims(const s2_gm *m, int l, const group *gr, int T, unsigned long long seed,
                       s2_lora_dims *d)
{
    memset(d, 0, sizeof *d);
    d->M = T;
    d->in = gr->in;
    d->n_proj = gr->n;
    d->out_total = gr->out_total;
    for (int i = 0; i < gr->n; i++) {
        d->out[i] = gr->out[i];
        d->stream[i] = (unsigned)l * 8u + (unsigned)gr->proj[i];
    }
    d->r = gr->rp ? m->lp.rank : 0;
    d->rp = gr->rp;
    d->scale = (float)m->lp.scale;
    d->dtype = m->spec.dtype;
    d->dropout = gr->rp ? (float)m->lp.dropout : 0.f;
    d->seed = seed;
    d->grad_f32 = 1;
    d->grad_beta = 1.f;
    memcpy(d->algo, gr->algo, sizeof d->algo);
}

static s2_status load_layers(s2_gm *m, const s2_ckpt *ck, s2_error *err)
{
    char name[160], rest[96];
    s2_status st = S2_OK;
    for (int l = 0; l < m->L && !st; l++) {
        layer *ly = &m->layers[l];
        for (int g = 0; g < GROUPS && !st; g++) {
            group *gr = &ly->g[g];
            const int lx = gr->in + gr->rp;
            const size_t wbytes = ((size_t)gr->out_total + gr->rp) * lx * EL;
            st = dalloc(m, &gr->wc, wbytes, "a layer's W", err);
            if (!st)
                st = s2_rt_check(cudaMemset(gr->wc, 0, wbytes), "cudaMemset(W)", err);
            for (int i = 0; i < gr->n && !st; i++) {
                snprintf(rest, sizeof rest, "%s.%s.weight", s2_proj_module(gr->proj[i]),
                         s2_proj_name(gr->proj[i]));
                layer_name(name, sizeof name, l, rest);
                st = upload(m, ck, name, gr->out[i], gr->in,
                            at(gr->wc, (size_t)gr->out_off[i] * lx), lx, err);
            }
            if (!st && m->full) { /* the stacked W is trained: one tensor per group */
                snprintf(rest, sizeof rest, "%s.weight_stacked", group_tag(g));
                layer_name(name, sizeof name, l, rest);
                if ((gr->seg_w = add_seg(m, name, 2, gr->out_total, gr->in, gr->wc, lx)) < 0)
                    st = s2_error_set(err, S2_ERR_NOMEM, "out of memory");
            }
            if (st || !gr->rp)
                continue;
            snprintf(rest, sizeof rest, "%s.lora_A_stacked", group_tag(g));
            layer_name(name, sizeof name, l, rest);
            if ((gr->seg_a = add_seg(m, name, 2, gr->rp, gr->in,
                                     at(gr->wc, (size_t)gr->out_total * lx), lx)) < 0)
                st = s2_error_set(err, S2_ERR_NOMEM, "out of memory");
            snprintf(rest, sizeof rest, "%s.lora_B_stacked", group_tag(g));
            layer_name(name, sizeof name, l, rest);
            if (!st && (gr->seg_b = add_seg(m, name, 2, gr->out_total, gr->rp,
                                            at(gr->wc, gr->in), lx)) < 0)
                st = s2_error_set(err, S2_ERR_NOMEM, "out of memory");
        }
        for (int w = 0; w < 2 && !st; w++) {
            void **dst = w ? &ly->w_post : &ly->w_in;
            const char *which = w ? "post_attention_layernorm.weight" : "input_layernorm.weight";
            layer_name(name, sizeof name, l, which);
            st = dalloc(m, dst, (size_t)m->hid * EL, name, err);
            if (!st)
                st = upload(m, ck, name, 1, m->hid, *dst, m->hid, err);
            int *sg = w ? &ly->seg_post : &ly->seg_in;
            *sg = -1;
            if (!st && (m->full || (m->spec.lora.trainable & S2_TRAIN_NORM)) &&
                (*sg = add_seg(m, name, 1, m->hid, 0, *dst, m->hid)) < 0)
                st = s2_error_set(err, S2_ERR_NOMEM, "out of memory");
        }
    }
    return st;
}

/* Masters: from the checkpoint for whole tensors; PEFT's initialisation for adapters. */
static s2_status init_masters(s2_gm *m, const s2_ckpt *ck, uint64_t init_seed, s2_error *err)
{
    s2_status st = s2_rt_check(cudaMemset(m->P, 0, m->numel * sizeof(float)), "cudaMemset(P)",
                               err);
    uint64_t rng = init_seed ? init_seed : 0x5eed;
    char name[160];
    for (int l = 0; l < m->L && !st; l++) {
        layer *ly = &m->layers[l];
        for (int g = 0; g < GROUPS && !st; g++) {
            group *gr = &ly->g[g];
            for (int i = 0; i < gr->n && !st && gr->seg_w >= 0; i++) { /* full: W's master */
                char rest[96];
                snprintf(rest, sizeof rest, "%s.%s.weight", s2_proj_module(gr->proj[i]),
                         s2_proj_name(gr->proj[i]));
                layer_name(name, sizeof name, l, rest);
                const size_t n = (size_t)gr->out[i] * gr->in;
                float *f = malloc(n * sizeof *f);
                st = !f ? s2_error_set(err, S2_ERR_NOMEM, "out of memory")
                        : s2_ckpt_read_f32(ck, name, f, n, err);
                if (!st)
                    st = s2_rt_check(cudaMemcpy(m->P + m->segs[gr->seg_w].off +
                                                    (size_t)gr->out_off[i] * gr->in,
                                                f, n * sizeof *f, cudaMemcpyHostToDevice),
                                     name, err);
                free(f);
            }
            if (gr->seg_a < 0)
                continue;
            /* A of each adapted member: uniform in +-1/sqrt(in) (kaiming_uniform_ with
             * a = sqrt(5), PEFT's default); other members and pad rows 0; B = 0. */
            const size_t n = (size_t)gr->rp * gr->in;
            float *a = calloc(n, sizeof *a);
            if (!a)
                return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
            const double bound = 1.0 / sqrt((double)gr->in);
            for (int i = 0; i < gr->n; i++) {
                if (!m->lp.lin[gr->proj[i]].adapted)
                    continue;
                for (size_t e = 0; e < (size_t)m->lp.rank * gr->in; e++) {
                    const double u = (double)(s2_splitmix64(&rng) >> 11) * 0x1.0p-53;
                    a[(size_t)i * m->lp.rank * gr->in + e] = (float)((2 * u - 1) * bound);
                }
            }
            st = s2_rt_check(cudaMemcpy(m->P + m->segs[gr->seg_a].off, a, n * sizeof *a,
                                        cudaMemcpyHostToDevice), "LoRA A init", err);
            free(a);
        }
        if (!st && ly->seg_in >= 0) {
            layer_name(name, sizeof name, l, "input_layernorm.weight");
            st = upload_master(m, ck, name, ly->seg_in, err);
        }
        if (!st && ly->seg_post >= 0) {
            layer_name(name, sizeof name, l, "post_attention_layernorm.weight");
            st = upload_master(m, ck, name, ly->seg_post, err);
        }
    }
    if (!st && m->seg_embed >= 0)
        st = upload_master(m, ck, "model.embed_tokens.weight", m->seg_embed, err);
    if (!st && m->seg_norm >= 0)
        st = upload_master(m, ck, "model.norm.weight", m->seg_norm, err);
    if (!st && m->seg_head >= 0 && m->seg_head != m->seg_embed)
        st = upload_master(m, ck, "lm_head.weight", m->seg_head, err);
    return st;
}

/* Rounds segment s's master into its dtype copy. */
static s2_status refresh(s2_gm *m, int s, s2_error *err)
{
    const seg *sg = &m->segs[s];
    return s2_k_cast_f32(&m->k, sg->rows, sg->cols, m->P + sg->off, sg->dst, sg->ldd, m->stream,
                         err);
}

static s2_status refresh_all(s2_gm *m, s2_error *err)
{
    s2_status st = S2_OK;
    for (int s = 0; s < m->n_segs && !st; s++)
        st = refresh(m, s, err);
    return st;
}

/* A copy of the spec with full causal attention over up to T tokens: one group, no shift. */
static void full_attention_spec(const s2_spec *in, int T, s2_spec *out)
{
    *out = *in;
    out->s2attn.group_size = T;
    out->s2attn.group_ratio = 0;
    out->s2attn.shift = 0;
    snprintf(out->name, sizeof out->name, "%.100s-full", in->name);
    char *c = s2_spec_canonical(out);
    if (c) {
        s2_sha256(c, strlen(c), out->hash);
        s2_hex(out->hash, 32, out->hash_hex);
        free(c);
    }
}

s2_status s2_gm_open(s2_gm **out, const s2_rt *rt, const s2_spec *spec, const s2_ckpt *ck,
                     const s2_gm_opts *o, s2_error *err)
{
    *out = NULL;
    if (o->max_tokens < 1)
        return s2_error_set(err, S2_ERR_INVALID, "model: max_tokens %d: must be >= 1",
                            o->max_tokens);
    s2_status st = s2_ckpt_check_rope(ck, spec, o->rope_spec ? S2_ROPE_SPEC : S2_ROPE_MATCH, err);
    if (st)
        return st;
    s2_gm *m = calloc(1, sizeof *m);
    if (!m)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    m->spec = *spec;
    m->rt = *rt;
    m->full = o->full;
    s2_plan_lora(spec, &m->lp);
    const s2_model *md = &spec->model;
    m->L = md->num_layers;
    m->hid = md->hidden_size;
    m->H = md->num_heads;
    m->Hkv = md->num_kv_heads;
    m->hd = md->head_dim;
    m->I = md->intermediate_size;
    m->V = md->vocab_size;
    m->Tmax = o->max_tokens;
    m->halo = o->sp_halo;
    if (o->sp_halo < 0 || o->sp_halo > S2_SPEC_MAX_TOKENS) {
        free(m);
        return s2_error_set(err, S2_ERR_INVALID, "model: sp_halo %d: must be in [0, %d]",
                            o->sp_halo, S2_SPEC_MAX_TOKENS);
    }
    if (o->recompute < S2_GM_RECOMPUTE_AUTO || o->recompute > S2_GM_RECOMPUTE_MLP) {
        free(m);
        return s2_error_set(err, S2_ERR_INVALID, "model: recompute = %d; valid: %d (auto), "
                            "%d (layer), %d (mlp)", o->recompute, S2_GM_RECOMPUTE_AUTO,
                            S2_GM_RECOMPUTE_LAYER, S2_GM_RECOMPUTE_MLP);
    }
    m->chunk = o->logits_chunk > 0 ? o->logits_chunk : 4096;
    if (m->chunk > m->Tmax)
        m->chunk = m->Tmax;
    m->nqkv = (m->H + 2 * m->Hkv) * m->hd;
    m->seg_embed = m->seg_norm = m->seg_head = -1;
    m->layers = calloc((size_t)m->L, sizeof *m->layers);
    if (!m->layers) {
        free(m);
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    }
    for (int l = 0; l < m->L; l++)
        for (int g = 0; g < GROUPS; g++)
            group_init(m, g, &m->layers[l].g[g]);
    for (int g = 0; g < GROUPS; g++)
        m->ldy[g] = m->layers[0].g[g].out_total + m->layers[0].g[g].rp;

    s2_jit_opts jo = {.arch = rt->arch, .cache_dir = o->cache_dir};
    /* A blocking stream: the uploads (cudaMemcpy, cudaMemset on the legacy stream) stay ordered
     * before the kernels that read what they wrote. */
    st = s2_rt_check(cudaStreamCreate(&m->stream), "cudaStreamCreate", err);
    if (!st)
        st = s2_train_kern_load(&m->k, rt, spec, &jo, err);
    m->have_k = !st;
    if (!st && !o->no_s2attn) {
        st = s2_attn_load(&m->attn[0], rt, spec, o->tile, &jo, err);
        m->have_attn[0] = !st;
    }
    if (!st && o->sp_halo > 0) {
        st = s2_attn_load_window(&m->attn_w, rt, spec, o->tile, &jo, err);
        m->have_attn_w = !st;
    }
    if (!st) {
        s2_spec full;
        full_attention_spec(spec, m->Tmax, &full);
        st = s2_attn_load(&m->attn[1], rt, &full, o->tile, &jo, err);
        m->have_attn[1] = !st;
    }
    if (!st)
        st = s2_lora_open(&m->lora, rt, o->cache_dir, err);
    if (!st) {
        m->blas = s2_lora_blas(m->lora);
        st = s2_blas_stream(m->blas, m->stream, err);
    }
    /* the adapted groups' tuned products, for micro-batches of Tmax tokens */
    snprintf(m->lora_why, sizeof m->lora_why, "LoRA products: cuBLAS's default");
    for (int g = 0; !st && !m->full && g < GROUPS; g++) {
        group *g0 = &m->layers[0].g[g];
        if (!g0->rp)
            continue;
        s2_lora_dims d = {.M = m->Tmax, .in = g0->in, .n_proj = g0->n, .out_total = g0->out_total,
                          .r = m->lp.rank, .rp = g0->rp, .dtype = spec->dtype, .grad_f32 = 1,
                          .grad_beta = 1.f};
        for (int i = 0; i < g0->n; i++)
            d.out[i] = g0->out[i];
        char why[160];
        s2_tune_lora_select_cached(&jo, rt->name, rt->arch, &d, why, sizeof why);
        if (strstr(why, " tuned ("))
            snprintf(m->lora_why, sizeof m->lora_why, "%s", why);
        for (int l = 0; l < m->L; l++)
            memcpy(m->layers[l].g[g].algo, d.algo, sizeof d.algo);
    }

    /* weights: embeddings, layers, final norm, head */
    const int tied = md->tie_word_embeddings;
    if (!st)
        st = dalloc(m, &m->embed, (size_t)m->V * m->hid * EL, "embed_tokens", err);
    if (!st)
        st = upload(m, ck, "model.embed_tokens.weight", m->V, m->hid, m->embed, m->hid, err);
    const unsigned trainable = o->full ? (S2_TRAIN_EMBED | S2_TRAIN_NORM | S2_TRAIN_HEAD)
                                       : spec->lora.trainable;
    if (!st && (trainable & S2_TRAIN_EMBED) &&
        (m->seg_embed = add_seg(m, "model.embed_tokens.weight", 2, m->V, m->hid, m->embed,
                                m->hid)) < 0)
        st = s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    if (!st)
        st = load_layers(m, ck, err);
    if (!st)
        st = dalloc(m, &m->norm, (size_t)m->hid * EL, "model.norm", err);
    if (!st)
        st = upload(m, ck, "model.norm.weight", 1, m->hid, m->norm, m->hid, err);
    if (!st && (trainable & S2_TRAIN_NORM) &&
        (m->seg_norm = add_seg(m, "model.norm.weight", 1, m->hid, 0, m->norm, m->hid)) < 0)
        st = s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    if (!st && tied) {
        m->lm_head = m->embed;
        /* one tensor: trained when either embed or head is */
        if (m->seg_embed < 0 && (trainable & S2_TRAIN_HEAD) &&
            (m->seg_embed = add_seg(m, "model.embed_tokens.weight", 2, m->V, m->hid, m->embed,
                                    m->hid)) < 0)
            st = s2_error_set(err, S2_ERR_NOMEM, "out of memory");
        m->seg_head = m->seg_embed;
    } else if (!st) {
        st = dalloc(m, &m->lm_head, (size_t)m->V * m->hid * EL, "lm_head", err);
        if (!st)
            st = upload(m, ck, "lm_head.weight", m->V, m->hid, m->lm_head, m->hid, err);
        if (!st && (trainable & S2_TRAIN_HEAD) &&
            (m->seg_head = add_seg(m, "lm_head.weight", 2, m->V, m->hid, m->lm_head,
                                   m->hid)) < 0)
            st = s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    }

    /* trainable state */
    const size_t fb = (m->numel ? m->numel : 1) * sizeof(float);
    if (!st)
        st = dalloc(m, &m->P, fb, "trainable masters", err);
    if (!st)
        st = dalloc(m, &m->G, fb, "trainable gradients", err);
    if (!st)
        st = dalloc(m, &m->Mo, fb, "AdamW m", err);
    if (!st)
        st = dalloc(m, &m->Vo, fb, "AdamW v", err);
    if (!st)
        st = s2_rt_check(cudaMemset(m->Mo, 0, fb), "cudaMemset(m)", err);
    if (!st)
        st = s2_rt_check(cudaMemset(m->Vo, 0, fb), "cudaMemset(v)", err);
    if (!st)
        st = s2_rt_check(cudaMemset(m->G, 0, fb), "cudaMemset(grad)", err);
    if (!st)
        st = init_masters(m, ck, o->init_seed, err);
    if (!st)
        st = refresh_all(m, err);

    /* activations and workspaces for Tmax tokens */
    const size_t T = (size_t)m->Tmax, hid = (size_t)m->hid;
    int max_lx = 0;
    for (int g = 0; g < GROUPS; g++) {
        const group *gr = &m->layers[0].g[g];
        if (gr->in + gr->rp > max_lx)
            max_lx = gr->in + gr->rp;
    }
    const size_t hq = (size_t)m->H * m->hd, hk = (size_t)m->Hkv * m->hd;
    const size_t TK = T + (size_t)m->halo; /* K/V rows: the halo, then the chunk's */
    /* the attention half's activations, once or per layer (s2_gm_opts.recompute) */
    const group *g0 = &m->layers[0].g[G_QKV], *g1 = &m->layers[0].g[G_O];
    const size_t lx0 = (size_t)(g0->in + g0->rp), lx1 = (size_t)(g1->in + g1->rp);
    const size_t per_layer = T * ((lx0 + lx1 + 2 * hq + hid) * EL + 4) + TK * 2 * hk * EL +
                             (size_t)m->H * T * 4;
    const size_t extra = (size_t)(m->L - 1) * per_layer;
    m->keep_attn = o->recompute == S2_GM_RECOMPUTE_MLP;
    if (!st && o->recompute == S2_GM_RECOMPUTE_AUTO) {
        size_t free_b = 0, total_b = 0;
        st = s2_rt_check(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo", err);
        m->keep_attn = !st && extra <= free_b / 2;
    }
    snprintf(m->recompute_what, sizeof m->recompute_what,
             m->keep_attn ? "recompute mlp: the attention half's activations kept per layer "
                            "(+%.2f GiB), the backward recomputes the MLP's gate/up only"
                          : "recompute layer: each layer's input kept, the backward recomputes "
                            "the layer (keeping the attention half would take %.2f GiB more)",
             (double)extra / (1 << 30));
    const size_t nl = m->keep_attn ? (size_t)m->L : 1;
    struct { void *p; size_t bytes; const char *what; } bufs[] = {
        {&m->hs, (size_t)(m->L + 1) * T * hid * EL, "layer inputs"},
        {&m->qkv, T * m->nqkv * EL, "qkv"},
        {&m->q, nl * T * hq * EL, "q"},
        {&m->k_, nl * TK * hk * EL, "k"},
        {&m->v, nl * TK * hk * EL, "v"},
        {&m->o, nl * T * hq * EL, "o"},
        {&m->y, T * hid * EL, "y"},
        {&m->h2, nl * T * hid * EL, "h2"},
        {&m->gu, T * 2 * (size_t)m->I * EL, "gate_up"},
        {&m->lse, nl * (size_t)m->H * T * 4, "lse"},
        {&m->rstd1, nl * T * 4, "rstd"},
        {&m->rstd2, T * 4, "rstd"},
        {&m->rstdf, T * 4, "rstd"},
        {&m->dh, T * (size_t)m->ldy[G_DOWN] * EL, "dh"},
        {&m->dh2, T * (size_t)m->ldy[G_O] * EL, "dh2"},
        {&m->dxv, T * (size_t)max_lx * EL, "dx"},
        {&m->dgu, T * (size_t)m->ldy[G_GU] * EL, "d gate_up"},
        {&m->dout, T * hq * EL, "do"},
        {&m->dq, T * hq * EL, "dq"},
        {&m->dk, TK * hk * EL, "dk"},
        {&m->dv, TK * hk * EL, "dv"},
        {&m->dqkv, T * (size_t)m->ldy[G_QKV] * EL, "dqkv"},
        {&m->xf, T * hid * EL, "final norm"},
        {&m->dxf, T * hid * EL, "d final norm"},
        {&m->logits, (size_t)m->chunk * m->V * EL, "logits chunk"},
        {&m->logits_f32, (size_t)m->chunk * m->V * 4, "logits chunk fp32"},
        {&m->d_tokens, T * 4, "tokens"},
        {&m->d_labels, T * 4, "labels"},
        {&m->d_pos, T * 4, "positions"},
        {&m->d_cu, (T + 1) * 4, "cu_seqlens"},
        {&m->d_acc, 2 * sizeof(double), "loss accumulator"},
        {&m->d_emb, s2_embed_list_max_ints(m->Tmax) * 4, "embedding backward's work list"},
    };
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0] && !st; i++)
        st = dalloc(m, bufs[i].p, bufs[i].bytes, bufs[i].what, err);
    if (!st) { /* T rows at most (the logits chunk is no longer) */
        m->kws.bytes = s2_k_ws_bytes(&m->k, m->Tmax);
        st = dalloc(m, &m->kws.p, m->kws.bytes, "reduction workspace", err);
    }
    if (!st) /* its arrival counter starts at zero; the kernels leave it so */
        st = s2_rt_check(cudaMemset(m->kws.p, 0, m->kws.bytes), "zeroing the workspace", err);
    for (int g = 0; g < GROUPS && !st; g++) {
        const group *gr = &m->layers[0].g[g];
        const size_t n = g == G_QKV || g == G_O ? nl : 1;
        st = dalloc(m, &m->xa[g], n * T * (size_t)(gr->in + gr->rp) * EL, "a group's input",
                    err);
    }
    size_t ws = 0;
    for (int i = 0; i < 2; i++)
        if (m->have_attn[i] && s2_attn_workspace_bytes(&m->attn[i], m->Tmax) > ws)
            ws = s2_attn_workspace_bytes(&m->attn[i], m->Tmax);
    if (m->have_attn_w && s2_attn_workspace_bytes(&m->attn_w, m->Tmax) > ws)
        ws = s2_attn_workspace_bytes(&m->attn_w, m->Tmax);
    if (!st)
        st = dalloc(m, &m->attn_ws, ws, "attention workspace", err);
    size_t lws = 0;
    for (int g = 0; g < GROUPS; g++) {
        s2_lora_dims d;
        group_dims(m, 0, &m->layers[0].g[g], m->Tmax, 0, &d);
        if (d.rp && s2_lora_workspace_bytes(&d) > lws)
            lws = s2_lora_workspace_bytes(&d);
    }
    if (!st)
        st = dalloc(m, &m->lora_ws, lws, "LoRA workspace", err);
    if (!st)
        st = s2_rt_check(cudaStreamSynchronize(m->stream), "model load", err);
    if (st) {
        s2_gm_close(m);
        return st;
    }
    *out = m;
    return S2_OK;
}

void s2_gm_close(s2_gm *m)
{
    if (!m)
        return;
    if (m->stream)
        cudaStreamSynchronize(m->stream);
    for (int i = 0; i < m->n_allocs; i++)
        cudaFree(m->allocs[i]);
    free(m->allocs);
    for (int i = 0; i < 2; i++)
        if (m->have_attn[i])
            s2_attn_free(&m->attn[i]);
    if (m->have_attn_w)
        s2_attn_free(&m->attn_w);
    if (m->have_k)
        s2_train_kern_free(&m->k);
    s2_lora_close(m->lora);
    if (m->stream)
        cudaStreamDestroy(m->stream);
    s2_embed_list_free(&m->emb);
    free(m->layers);
    free(m->segs);
    free(m);
}

size_t s2_gm_device_bytes(const s2_gm *m) { return m->bytes; }

const char *s2_gm_lora_algos(const s2_gm *m) { return m->lora_why; }

int s2_gm_recompute(const s2_gm *m, const char **what)
{
    if (what)
        *what = m->recompute_what;
    return m->keep_attn ? S2_GM_RECOMPUTE_MLP : S2_GM_RECOMPUTE_LAYER;
}

/* ---- one micro-batch ---------------------------------------------------------------------- */

/* Validates and uploads a batch; fills the attention batch and every group's dims. grad: a
 * training batch, whose embedding backward (when the embedding trains) needs its work list. */
static s2_status put_batch(s2_gm *m, const s2_gm_batch *b, int grad, s2_attn_batch *bt,
                           s2_error *err)
{
    if (b->T < 1 || b->T > m->Tmax)
        return s2_error_set(err, S2_ERR_INVALID,
                            "batch of %d tokens: the model was opened for 1..%d", b->T, m->Tmax);
    const int B = b->cu_seqlens ? b->B : 1;
    const s2_gm_sp *sp = b->sp;
    m->sp = NULL;
    m->hoff = 0;
    if (sp) {
        if (!m->have_attn_w)
            return s2_error_set(err, S2_ERR_INVALID, "sequence-parallel batch: the model was "
                                "opened with sp_halo 0 (no window units)");
        if (B != 1 || b->labels)
            return s2_error_set(err, S2_ERR_INVALID, "sequence-parallel batch: %s; a chunk is "
                                "one sequence (B 1) with the labels of s2_sp_chunk_labels",
                                B != 1 ? "B != 1" : "labels given");
        if (sp->lo < 0 || sp->klo < 0 || sp->klo > sp->lo || sp->lo - sp->klo > m->halo ||
            sp->lo + b->T > sp->n_global || !sp->tp)
            return s2_error_set(err, S2_ERR_INVALID, "sequence-parallel batch: chunk [%d, %d) "
                                "of %d tokens with halo [%d, %d): valid are 0 <= klo <= lo, "
                                "lo - klo <= sp_halo %d, lo + T <= n_global, and a transport",
                                sp->lo, sp->lo + b->T, sp->n_global, sp->klo, sp->lo, m->halo);
        /* the last chunk's last row: -1 leaves it unlabelled (Hugging Face's labels of one
         * sequence), a token labels it (the trainer's packed sequences of C + 1 tokens) */
        const int last = sp->lo + b->T == sp->n_global;
        if (sp->next_token < (last ? -1 : 0) || sp->next_token >= m->V)
            return s2_error_set(err, S2_ERR_INVALID, "sequence-parallel batch: next_token %d "
                                "for chunk [%d, %d) of %d: valid %s", sp->next_token, sp->lo,
                                sp->lo + b->T, sp->n_global,
                                last ? "-1 or a token in [0, vocab) (the last chunk)"
                                     : "a token in [0, vocab)");
    }
    int32_t one[2] = {0, b->T};
    const int32_t *cu = b->cu_seqlens ? b->cu_seqlens : one;
    s2_status st = s2_attn_batch_init(bt, cu, B, b->T, "cu_seqlens", err);
    if (st)
        return st;
    for (int t = 0; t < b->T; t++)
        if (b->tokens[t] < 0 || b->tokens[t] >= m->V)
            return s2_error_set(err, S2_ERR_INVALID,
                                "tokens[%d] = %d: outside the vocabulary [0, %d)", t,
                                b->tokens[t], m->V);
    int32_t *pos = malloc((size_t)b->T * sizeof *pos);
    int32_t *lab = b->labels ? NULL : malloc((size_t)b->T * sizeof *lab);
    const int pos0 = sp ? sp->lo : 0;
    if (!pos || (!b->labels && !lab)) {
        free(pos);
        free(lab);
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    }
    for (int s = 0; s < B; s++)
        for (int t = cu[s]; t < cu[s + 1]; t++)
            pos[t] = pos0 + t - cu[s];
    if (lab && sp)
        s2_sp_chunk_labels(b->tokens, b->T, sp->next_token, S2_REF_IGNORE_INDEX, lab);
    else if (lab)
        s2_ref_llama_labels(b->tokens, b->T, cu, B, lab);
    const int32_t *labels = b->labels ? b->labels : lab;
    st = s2_rt_check(cudaMemcpy(m->d_tokens, b->tokens, (size_t)b->T * 4,
                                cudaMemcpyHostToDevice), "upload tokens", err);
    if (!st)
        st = s2_rt_check(cudaMemcpy(m->d_labels, labels, (size_t)b->T * 4,
                                    cudaMemcpyHostToDevice), "upload labels", err);
    if (!st)
        st = s2_rt_check(cudaMemcpy(m->d_pos, pos, (size_t)b->T * 4, cudaMemcpyHostToDevice),
                         "upload positions", err);
    if (!st)
        st = s2_rt_check(cudaMemcpy(m->d_cu, cu, (size_t)(B + 1) * 4, cudaMemcpyHostToDevice),
                         "upload cu_seqlens", err);
    if (!st)
        st = s2_rt_check(cudaMemsetAsync(m->d_acc, 0, 2 * sizeof(double), m->stream),
                         "zero loss accumulator", err);
    if (!st && grad && m->seg_embed >= 0)
        st = s2_embed_list_build(&m->emb, b->tokens, b->T, m->V, err);
    if (!st && grad && m->seg_embed >= 0)
        st = s2_rt_check(cudaMemcpy(m->d_emb, m->emb.data, m->emb.n_ints * 4,
                                    cudaMemcpyHostToDevice), "upload the embedding's work list",
                         err);
    free(pos);
    free(lab);
    bt->d_cu_seqlens = m->d_cu;
    if (!st && sp) {
        m->sp = sp;
        m->hoff = sp->lo - sp->klo;
    }
    for (int l = 0; l < m->L; l++)
        for (int g = 0; g < GROUPS; g++)
            group_dims(m, l, &m->layers[l].g[g], b->T, b->dropout_seed, &m->layers[l].g[g].d);
    return st;
}

static void *hs(const s2_gm *m, int l) { return at(m->hs, (size_t)l * m->Tmax * m->hid); }

static float *grad_of(const s2_gm *m, int s) { return s >= 0 ? m->G + m->segs[s].off : NULL; }

static s2_status copy2d(void *dst, size_t ldd, const void *src, size_t lds, size_t cols,
                        size_t rows, cudaStream_t stream, const char *what, s2_error *err)
{
    return s2_rt_check(cudaMemcpy2DAsync(dst, ldd * EL, src, lds * EL, cols * EL, rows,
                                         cudaMemcpyDeviceToDevice, stream), what, err);
}

/* The attention half's activations of layer l: its own under S2_GM_RECOMPUTE_MLP, else the
 * one set every layer shares (and the backward recomputes). */
typedef struct acts {
    void *xa_qkv, *xa_o, *q, *k, *v, *o, *h2;
    float *lse, *rstd1;
} acts;

static acts acts_of(const s2_gm *m, int l)
{
    const size_t i = m->keep_attn ? (size_t)l : 0, T = (size_t)m->Tmax;
    const size_t hq = (size_t)m->H * m->hd, hk = (size_t)m->Hkv * m->hd;
    const size_t TK = T + (size_t)m->halo;
    const group *g0 = &m->layers[0].g[G_QKV], *g1 = &m->layers[0].g[G_O];
    return (acts){.xa_qkv = at(m->xa[G_QKV], i * T * (size_t)(g0->in + g0->rp)),
                  .xa_o = at(m->xa[G_O], i * T * (size_t)(g1->in + g1->rp)),
                  .q = at(m->q, i * T * hq), .k = at(m->k_, i * TK * hk),
                  .v = at(m->v, i * TK * hk), .o = at(m->o, i * T * hq),
                  .h2 = at(m->h2, i * T * (size_t)m->hid),
                  .lse = m->lse + i * T * (size_t)m->H, .rstd1 = m->rstd1 + i * T};
}

/* The MLP half of layer l from a.h2: norm, gate/up, SwiGLU, and down when its output is
 * wanted (write_out: the next layer's input) or its adapters' u is (a backward). */
static s2_status mlp_fwd(s2_gm *m, int l, const acts *a, int T, int write_out, s2_error *err)
{
    layer *ly = &m->layers[l];
    const int hid = m->hid;
    group *g2 = &ly->g[G_GU], *g3 = &ly->g[G_DOWN];
    const int lx2 = g2->in + g2->rp, lx3 = g3->in + g3->rp;
    cudaStream_t s = m->stream;
    s2_status st = s2_k_rmsnorm_fwd(&m->k, T, a->h2, hid, ly->w_post, m->xa[G_GU], lx2,
                                    m->rstd2, s, err);
    if (!st)
        st = s2_lora_forward(m->lora, &g2->d, m->xa[G_GU], g2->wc, m->gu, m->lora_ws, s,
                             err);
    if (!st)
        st = s2_k_swiglu_fwd(&m->k, T, m->gu, 2 * m->I, m->xa[G_DOWN], lx3, s, err);
    if (!st && (write_out || g3->rp))
        st = s2_lora_forward(m->lora, &g3->d, m->xa[G_DOWN], g3->wc, m->y, m->lora_ws, s,
                             err);
    if (!st && write_out)
        st = s2_k_add(&m->k, T, hid, a->h2, hid, m->y, hid, hs(m, l + 1), hid, s, err);
    return st;
}

/* Forward of layer l from its saved input; writes the next layer's input when write_out. */
static s2_status layer_fwd(s2_gm *m, int l, const s2_attn *at_, const s2_attn_batch *bt,
                           int write_out, s2_error *err)
{
    layer *ly = &m->layers[l];
    const int T = bt->T, hid = m->hid, hq = m->H * m->hd, hk = m->Hkv * m->hd;
    group *g0 = &ly->g[G_QKV], *g1 = &ly->g[G_O];
    const int lx0 = g0->in + g0->rp, lx1 = g1->in + g1->rp;
    const acts a = acts_of(m, l);
    const void *h = hs(m, l);
    cudaStream_t s = m->stream;
    s2_status st = s2_k_rmsnorm_fwd(&m->k, T, h, hid, ly->w_in, a.xa_qkv, lx0, a.rstd1, s, err);
    if (!st)
        st = s2_lora_forward(m->lora, &g0->d, a.xa_qkv, g0->wc, m->qkv, m->lora_ws, s,
                             err);
    if (!st)
        st = s2_k_rope(&m->k, T, m->H, m->d_pos, +1, m->qkv, m->nqkv, a.q, hq, s, err);
    /* the chunk's own K/V rows after the halo (sequence parallel; hoff 0 otherwise) */
    void *k_own = at(a.k, (size_t)m->hoff * hk), *v_own = at(a.v, (size_t)m->hoff * hk);
    if (!st)
        st = s2_k_rope(&m->k, T, m->Hkv, m->d_pos, +1, at(m->qkv, hq), m->nqkv, k_own, hk, s,
                       err);
    if (!st)
        st = copy2d(v_own, hk, at(m->qkv, hq + hk), m->nqkv, hk, T, s, "v out of qkv", err);
    if (!st && m->sp) {
        const s2_sp_transport *tp = m->sp->tp;
        const s2_attn_window w = {.qlo = m->sp->lo, .qhi = m->sp->lo + T, .klo = m->sp->klo,
                                  .n_global = m->sp->n_global};
        st = tp->fwd(tp->ctx, l, a.k, a.v, s, err);
        if (!st)
            st = s2_attn_forward_window(&m->attn_w, &w, a.q, a.k, a.v, a.o, a.lse, s, err);
    } else if (!st)
        st = s2_attn_forward(at_, bt, a.q, a.k, a.v, a.o, a.lse, s, err);
    if (!st)
        st = copy2d(a.xa_o, lx1, a.o, hq, hq, T, s, "o into o_proj's input", err);
    if (!st)
        st = s2_lora_forward(m->lora, &g1->d, a.xa_o, g1->wc, m->y, m->lora_ws, s, err);
    if (!st)
        st = s2_k_add(&m->k, T, hid, h, hid, m->y, hid, a.h2, hid, s, err);
    if (!st)
        st = mlp_fwd(m, l, &a, T, write_out, err);
    return st;
}

/* Full mode: the stacked W's gradient, dW += dy^T x, from the group's output gradient dy and
 * its input (fp32, accumulated). Nothing without a trainable W. */
static s2_status grad_w(s2_gm *m, const group *gr, const void *dy, const void *xa, int T,
                        s2_error *err)
{
    if (gr->seg_w < 0)
        return S2_OK;
    return s2_blas_gemm(m->blas, m->spec.dtype, "dW += dy^T x", 1, 0, gr->out_total, gr->in, T,
                        1.f, dy, gr->out_total + gr->rp, xa, gr->in + gr->rp, 1.f,
                        grad_of(m, gr->seg_w),
                        gr->in, 1, err);
}

/* Backward of layer l: m->dh holds the gradient of its output and receives that of its input.
 * Recomputes the layer's forward first: all of it, or (the attention half kept) its MLP. */
static s2_status layer_bwd(s2_gm *m, int l, const s2_attn *at_, const s2_attn_batch *bt,
                           s2_error *err)
{
    layer *ly = &m->layers[l];
    const int T = bt->T, hid = m->hid, hq = m->H * m->hd, hk = m->Hkv * m->hd;
    group *g0 = &ly->g[G_QKV], *g1 = &ly->g[G_O], *g2 = &ly->g[G_GU], *g3 = &ly->g[G_DOWN];
    const int lx0 = g0->in + g0->rp, lx1 = g1->in + g1->rp, lx2 = g2->in + g2->rp;
    const int lx3 = g3->in + g3->rp;
    const acts a = acts_of(m, l);
    cudaStream_t s = m->stream;
    s2_status st = m->keep_attn ? mlp_fwd(m, l, &a, T, 0, err) : layer_fwd(m, l, at_, bt, 0, err);
    if (!st) /* down: dy = dh */
        st = s2_lora_backward(m->lora, &g3->d, m->xa[G_DOWN], g3->wc, m->dh, m->dxv,
                              grad_of(m, g3->seg_a), grad_of(m, g3->seg_b), m->lora_ws, s, err);
    if (!st)
        st = grad_w(m, g3, m->dh, m->xa[G_DOWN], T, err);
    if (!st)
        st = s2_k_swiglu_bwd(&m->k, T, m->gu, 2 * m->I, m->dxv, lx3, m->dgu, m->ldy[G_GU], s,
                             err);
    if (!st)
        st = s2_lora_backward(m->lora, &g2->d, m->xa[G_GU], g2->wc, m->dgu, m->dxv,
                              grad_of(m, g2->seg_a), grad_of(m, g2->seg_b), m->lora_ws, s, err);
    if (!st)
        st = grad_w(m, g2, m->dgu, m->xa[G_GU], T, err);
    if (!st) /* dh2 = dh + norm'(dx2) */
        st = s2_k_rmsnorm_bwd(&m->k, T, a.h2, hid, ly->w_post, m->dxv, lx2, m->rstd2, m->dh,
                              m->ldy[G_DOWN], m->dh2, m->ldy[G_O], grad_of(m, ly->seg_post),
                              &m->kws, s, err);
    if (!st)
        st = s2_lora_backward(m->lora, &g1->d, a.xa_o, g1->wc, m->dh2, m->dxv,
                              grad_of(m, g1->seg_a), grad_of(m, g1->seg_b), m->lora_ws, s, err);
    if (!st)
        st = grad_w(m, g1, m->dh2, a.xa_o, T, err);
    if (!st)
        st = copy2d(m->dout, hq, m->dxv, lx1, hq, T, s, "dO out of o_proj's dx", err);
    if (!st && m->sp) { /* the halo rows' dK/dV go back to their owners, theirs come here */
        const s2_sp_transport *tp = m->sp->tp;
        const s2_attn_window w = {.qlo = m->sp->lo, .qhi = m->sp->lo + T, .klo = m->sp->klo,
                                  .n_global = m->sp->n_global};
        st = s2_attn_backward_window(&m->attn_w, &w, a.q, a.k, a.v, a.o, a.lse, m->dout,
                                     m->attn_ws, m->dq, m->dk, m->dv, s, err);
        if (!st)
            st = tp->bwd(tp->ctx, l, m->dk, m->dv, s, err);
    } else if (!st)
        st = s2_attn_backward(at_, bt, a.q, a.k, a.v, a.o, a.lse, m->dout, m->attn_ws,
                              m->dq, m->dk, m->dv, s, err);
    const void *dk_own = at(m->dk, (size_t)m->hoff * hk), *dv_own = at(m->dv, (size_t)m->hoff * hk);
    if (!st)
        st = s2_k_rope(&m->k, T, m->H, m->d_pos, -1, m->dq, hq, m->dqkv, m->ldy[G_QKV], s, err);
    if (!st)
        st = s2_k_rope(&m->k, T, m->Hkv, m->d_pos, -1, dk_own, hk, at(m->dqkv, hq),
                       m->ldy[G_QKV], s, err);
    if (!st)
        st = copy2d(at(m->dqkv, hq + hk), m->ldy[G_QKV], dv_own, hk, hk, T, s, "dv into dqkv",
                    err);
    if (!st)
        st = s2_lora_backward(m->lora, &g0->d, a.xa_qkv, g0->wc, m->dqkv, m->dxv,
                              grad_of(m, g0->seg_a), grad_of(m, g0->seg_b), m->lora_ws, s, err);
    if (!st)
        st = grad_w(m, g0, m->dqkv, a.xa_qkv, T, err);
    if (!st) /* dh = dh2 + norm'(dx) */
        st = s2_k_rmsnorm_bwd(&m->k, T, hs(m, l), hid, ly->w_in, m->dxv, lx0, a.rstd1, m->dh2,
                              m->ldy[G_O], m->dh, m->ldy[G_DOWN], grad_of(m, ly->seg_in),
                              &m->kws, s, err);
    return st;
}

/*
 * The final norm, head and loss in chunks of rows. grad: the logits become their gradient,
 * dxf and the head's gradient follow, then dh = norm'(dxf). logits_out (host fp32 [T, V]) is
 * filled when not NULL (forward only).
 */
static s2_status head(s2_gm *m, int T, int grad, double denom, float *logits_out, s2_error *err)
{
    const int hid = m->hid, V = m->V;
    cudaStream_t s = m->stream;
    s2_status st = s2_k_rmsnorm_fwd(&m->k, T, hs(m, m->L), hid, m->norm, m->xf, hid, m->rstdf,
                                    s, err);
    const float inv = denom > 0 ? (float)(1.0 / denom) : 0.f;
    for (int c0 = 0; c0 < T && !st; c0 += m->chunk) {
        const int C = T - c0 < m->chunk ? T - c0 : m->chunk;
        const void *xf = at(m->xf, (size_t)c0 * hid);
        st = s2_blas_gemm(m->blas, m->spec.dtype, "logits = x lm_head^T", 0, 1, C, V, hid, 1.f,
                          xf, hid, m->lm_head, hid, 0.f, m->logits, V, 0, err);
        if (!st && logits_out) {
            st = s2_k_cast_elem(&m->k, C, V, m->logits, V, m->logits_f32, s, err);
            if (!st)
                st = s2_rt_check(cudaMemcpyAsync(logits_out + (size_t)c0 * V, m->logits_f32,
                                                 (size_t)C * V * 4, cudaMemcpyDeviceToHost, s),
                                 "logits to the host", err);
            if (!st) /* the chunk buffer is reused next */
                st = s2_rt_check(cudaStreamSynchronize(s), "logits to the host", err);
        }
        if (!st)
            st = s2_k_xent(&m->k, C, m->logits, V, m->d_labels + c0, inv, grad, m->d_acc,
                           &m->kws, s, err);
        if (!st && grad)
            st = s2_blas_gemm(m->blas, m->spec.dtype, "dx = dlogits lm_head", 0, 0, C, hid, V,
                              1.f, m->logits, V, m->lm_head, hid, 0.f,
                              at(m->dxf, (size_t)c0 * hid), hid, 0, err);
        if (!st && grad && m->seg_head >= 0)
            st = s2_blas_gemm(m->blas, m->spec.dtype, "d lm_head += dlogits^T x", 1, 0, V, hid,
                              C, 1.f, m->logits, V, xf, hid, 1.f, grad_of(m, m->seg_head), hid,
                              1, err);
    }
    if (!st && grad)
        st = s2_k_rmsnorm_bwd(&m->k, T, hs(m, m->L), hid, m->norm, m->dxf, hid, m->rstdf, NULL,
                              0, m->dh, m->ldy[G_DOWN], grad_of(m, m->seg_norm), &m->kws, s,
                              err);
    return st;
}

static s2_status read_acc(s2_gm *m, double *nll_sum, int64_t *count, s2_error *err)
{
    double acc[2];
    s2_status st = s2_rt_check(cudaMemcpyAsync(acc, m->d_acc, sizeof acc, cudaMemcpyDeviceToHost,
                                               m->stream), "loss to the host", err);
    if (!st)
        st = s2_rt_check(cudaStreamSynchronize(m->stream), "micro-batch", err);
    if (!st) {
        if (nll_sum)
            *nll_sum = acc[0];
        if (count)
            *count = (int64_t)acc[1];
    }
    return st;
}

static const s2_attn *attention(const s2_gm *m, int full, s2_error *err)
{
    if (!m->have_attn[full ? 1 : 0]) {
        s2_error_set(err, S2_ERR_INVALID, "model: opened without S²-Attn kernels (no_s2attn)");
        return NULL;
    }
    return &m->attn[full ? 1 : 0];
}

static s2_status forward(s2_gm *m, const s2_gm_batch *b, int full, int grad,
                         const s2_attn **a, s2_attn_batch *bt, s2_error *err)
{
    if (b->sp && full)
        return s2_error_set(err, S2_ERR_INVALID, "sequence-parallel batch with full attention: "
                            "chunks run S²-Attn's window units only");
    *a = b->sp && !m->have_attn[0] ? &m->attn_w : attention(m, full, err);
    if (!*a)
        return S2_ERR_INVALID;
    s2_status st = put_batch(m, b, grad, bt, err);
    if (!st)
        st = s2_k_embed_fwd(&m->k, b->T, m->d_tokens, m->embed, hs(m, 0), m->hid, m->stream,
                            err);
    for (int l = 0; l < m->L && !st; l++)
        st = layer_fwd(m, l, *a, bt, 1, err);
    return st;
}

s2_status s2_gm_train_batch(s2_gm *m, const s2_gm_batch *b, int full, double denom,
                            double *nll_sum, int64_t *count, s2_error *err)
{
    const s2_attn *a;
    s2_attn_batch bt;
    s2_status st = forward(m, b, full, 1, &a, &bt, err);
    if (!st)
        st = head(m, b->T, 1, denom, NULL, err);
    if (!st && m->stage_fn) /* the head's and the final norm's gradients are complete */
        st = m->stage_fn(m->stage_ctx, 0, m->stream, err);
    for (int l = m->L - 1; l >= 0 && !st; l--) {
        st = layer_bwd(m, l, a, &bt, err);
        if (!st && m->stage_fn) /* layer l's */
            st = m->stage_fn(m->stage_ctx, m->L - l, m->stream, err);
    }
    if (!st && m->seg_embed >= 0)
        st = s2_k_embed_bwd(&m->k, &m->emb, m->d_emb, m->dh, m->ldy[G_DOWN],
                            grad_of(m, m->seg_embed), &m->kws, m->stream, err);
    if (!st && m->stage_fn) /* the embedding's (and a tied head's) */
        st = m->stage_fn(m->stage_ctx, m->L + 1, m->stream, err);
    if (!st)
        st = read_acc(m, nll_sum, count, err);
    return st;
}

s2_status s2_gm_eval_batch(s2_gm *m, const s2_gm_batch *b, int full, double *nll_sum,
                           int64_t *count, float *logits, s2_error *err)
{
    const s2_attn *a;
    s2_attn_batch bt;
    s2_status st = forward(m, b, full, 0, &a, &bt, err);
    if (!st)
        st = head(m, b->T, 0, 0, logits, err);
    if (!st)
        st = read_acc(m, nll_sum, count, err);
    return st;
}

/* ---- optimizer ------------------------------------------------------------------------------ */

s2_status s2_gm_zero_grad(s2_gm *m, s2_error *err)
{
    return s2_rt_check(cudaMemsetAsync(m->G, 0, (m->numel ? m->numel : 1) * sizeof(float),
                                       m->stream), "zero gradients", err);
}

s2_status s2_gm_grad_norm(s2_gm *m, double *norm, s2_error *err)
{
    s2_status st = s2_rt_check(cudaMemsetAsync(m->d_acc, 0, sizeof(double), m->stream),
                               "zero the norm accumulator", err);
    if (!st)
        st = s2_k_sumsq(&m->k, m->numel, m->G, m->d_acc, &m->kws, m->stream, err);
    double ss = 0;
    if (!st)
        st = s2_rt_check(cudaMemcpyAsync(&ss, m->d_acc, sizeof ss, cudaMemcpyDeviceToHost,
                                         m->stream), "gradient norm", err);
    if (!st)
        st = s2_rt_check(cudaStreamSynchronize(m->stream), "gradient norm", err);
    *norm = sqrt(ss);
    return st;
}

s2_status s2_gm_step(s2_gm *m, double lr, double beta1, double beta2, double eps,
                     double weight_decay, int64_t t, double grad_scale, s2_error *err)
{
    s2_status st = s2_k_adamw(&m->k, m->numel, m->P, m->G, m->Mo, m->Vo, (float)lr, (float)beta1,
                              (float)beta2, (float)eps, (float)weight_decay, t,
                              (float)grad_scale, m->stream, err);
    if (!st)
        st = refresh_all(m, err);
    return st;
}

/* ---- trainables: names, state, host access ---------------------------------------------------- */

int s2_gm_n_trainable(const s2_gm *m) { return m->n_segs; }

void s2_gm_set_stage_hook(s2_gm *m, s2_gm_stage_fn fn, void *ctx)
{
    m->stage_fn = fn;
    m->stage_ctx = ctx;
}

float *s2_gm_grad_buffer(s2_gm *m, size_t *n)
{
    *n = m->numel;
    return m->G;
}

int s2_gm_trainable_range(const s2_gm *m, int i, size_t *off, size_t *n)
{
    if (i < 0 || i >= m->n_segs)
        return -1;
    *off = m->segs[i].off; /* segments are laid out in order, each start 64-float aligned */
    *n = (i + 1 < m->n_segs ? m->segs[i + 1].off : m->numel) - m->segs[i].off;
    return 0;
}

int s2_gm_num_layers(const s2_gm *m) { return m->L; }

cudaStream_t s2_gm_stream(const s2_gm *m) { return m->stream; }

const s2_train_kern *s2_gm_kern(const s2_gm *m) { return &m->k; }

size_t s2_gm_trainable_numel(const s2_gm *m)
{
    size_t n = 0;
    for (int s = 0; s < m->n_segs; s++)
        n += m->segs[s].numel;
    return n;
}

const char *s2_gm_trainable_name(const s2_gm *m, int i, int *ndim, int64_t shape[2],
                                 size_t *numel)
{
    if (i < 0 || i >= m->n_segs)
        return NULL;
    const seg *s = &m->segs[i];
    if (ndim)
        *ndim = s->ndim;
    if (shape) {
        shape[0] = s->shape[0];
        shape[1] = s->shape[1];
    }
    if (numel)
        *numel = s->numel;
    return s->name;
}

static s2_status copy_seg(s2_gm *m, float *dev, int i, float *host, int to_host, s2_error *err)
{
    if (i < 0 || i >= m->n_segs)
        return s2_error_set(err, S2_ERR_INVALID, "trainable tensor %d: the model has %d", i,
                            m->n_segs);
    const seg *s = &m->segs[i];
    s2_status st = s2_rt_check(cudaStreamSynchronize(m->stream), s->name, err);
    if (!st)
        st = s2_rt_check(cudaMemcpy(to_host ? (void *)host : (void *)(dev + s->off),
                                    to_host ? (void *)(dev + s->off) : (void *)host,
                                    s->numel * sizeof(float),
                                    to_host ? cudaMemcpyDeviceToHost : cudaMemcpyHostToDevice),
                         s->name, err);
    return st;
}

s2_status s2_gm_read_grad(s2_gm *m, int i, float *dst, s2_error *err)
{
    return copy_seg(m, m->G, i, dst, 1, err);
}

s2_status s2_gm_read_param(s2_gm *m, int i, float *dst, s2_error *err)
{
    return copy_seg(m, m->P, i, dst, 1, err);
}

s2_status s2_gm_write_param(s2_gm *m, int i, const float *src, s2_error *err)
{
    s2_status st = copy_seg(m, m->P, i, (float *)src, 0, err);
    if (!st)
        st = refresh(m, i, err);
    if (!st)
        st = s2_rt_check(cudaStreamSynchronize(m->stream), m->segs[i].name, err);
    return st;
}

s2_status s2_gm_save_state(s2_gm *m, s2_train_state *s, s2_error *err)
{
    s2_status st = S2_OK;
    for (int i = 0; i < m->n_segs && !st; i++) {
        const seg *sg = &m->segs[i];
        s2_state_tensor *t;
        st = s2_state_add_tensor(s, sg->name, sg->ndim, sg->shape, &t, err);
        if (!st)
            st = copy_seg(m, m->P, i, t->w, 1, err);
        if (!st)
            st = copy_seg(m, m->Mo, i, t->m, 1, err);
        if (!st)
            st = copy_seg(m, m->Vo, i, t->v, 1, err);
    }
    return st;
}

s2_status s2_gm_load_state(s2_gm *m, const s2_train_state *s, s2_error *err)
{
    if (s->n != m->n_segs)
        return s2_error_set(err, S2_ERR_INVALID,
                            "training state: %d trainable tensors, this model has %d (another "
                            "spec or lora.trainable?)", s->n, m->n_segs);
    s2_status st = S2_OK;
    for (int i = 0; i < m->n_segs && !st; i++) {
        const seg *sg = &m->segs[i];
        const s2_state_tensor *t = &s->t[i];
        if (strcmp(t->name, sg->name) || t->numel != sg->numel)
            return s2_error_set(err, S2_ERR_INVALID,
                                "training state: tensor %d is %s with %zu elements, the model "
                                "expects %s with %zu", i, t->name, t->numel, sg->name,
                                sg->numel);
        st = copy_seg(m, m->P, i, t->w, 0, err);
        if (!st)
            st = copy_seg(m, m->Mo, i, t->m, 0, err);
        if (!st)
            st = copy_seg(m, m->Vo, i, t->v, 0, err);
        if (!st)
            st = refresh(m, i, err);
    }
    if (!st)
        st = s2_rt_check(cudaStreamSynchronize(m->stream), "training state", err);
    return st;
}

/* ---- PEFT export / import --------------------------------------------------------------------- */

/* Host copies of every group's stacked A and B (per layer and group; NULL where no adapter). */
typedef struct host_adapters {
    float **a, **b; /* [L * GROUPS] */
    float **A, **B; /* PEFT slots [L * S2_PROJ_COUNT]: A points into a, B owned */
} host_adapters;

static void host_adapters_free(const s2_gm *m, host_adapters *h)
{
    for (int i = 0; h->a && i < m->L * GROUPS; i++) {
        free(h->a[i]);
        free(h->b[i]);
    }
    for (int i = 0; h->B && i < m->L * S2_PROJ_COUNT; i++)
        free(h->B[i]);
    free(h->a);
    free(h->b);
    free(h->A);
    free(h->B);
    memset(h, 0, sizeof *h);
}

static s2_status host_adapters_alloc(const s2_gm *m, host_adapters *h, s2_error *err)
{
    memset(h, 0, sizeof *h);
    h->a = calloc((size_t)m->L * GROUPS, sizeof *h->a);
    h->b = calloc((size_t)m->L * GROUPS, sizeof *h->b);
    h->A = calloc((size_t)m->L * S2_PROJ_COUNT, sizeof *h->A);
    h->B = calloc((size_t)m->L * S2_PROJ_COUNT, sizeof *h->B);
    int oom = !h->a || !h->b || !h->A || !h->B;
    const int r = m->lp.rank;
    for (int l = 0; l < m->L && !oom; l++)
        for (int g = 0; g < GROUPS && !oom; g++) {
            const group *gr = &m->layers[l].g[g];
            if (gr->seg_a < 0)
                continue;
            float *a = h->a[l * GROUPS + g] = calloc(m->segs[gr->seg_a].numel, sizeof(float));
            h->b[l * GROUPS + g] = calloc(m->segs[gr->seg_b].numel, sizeof(float));
            oom = !a || !h->b[l * GROUPS + g];
            for (int i = 0; i < gr->n && !oom; i++) {
                if (!m->lp.lin[gr->proj[i]].adapted)
                    continue;
                const int slot = S2_CKPT_SLOT(l, gr->proj[i]);
                h->A[slot] = a + (size_t)i * r * gr->in;
                oom = !(h->B[slot] = calloc((size_t)gr->out[i] * r, sizeof(float)));
            }
        }
    if (oom) {
        host_adapters_free(m, h);
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    }
    return S2_OK;
}

/* Block of projection i of group gr in its stacked B [out_total, rp]: B_i [out_i, r]. */
static void b_block(const s2_gm *m, const group *gr, int i, float *stacked, float *bi, int get)
{
    const int r = m->lp.rank;
    for (int o = 0; o < gr->out[i]; o++)
        for (int c = 0; c < r; c++) {
            float *sp = &stacked[(size_t)(gr->out_off[i] + o) * gr->rp + (size_t)i * r + c];
            if (get)
                bi[(size_t)o * r + c] = *sp;
            else
                *sp = bi[(size_t)o * r + c];
        }
}

/* The whole trainable tensors the spec names, mapped to segments. */
static int seg_of_param(const s2_gm *m, const char *name)
{
    for (int s = 0; s < m->n_segs; s++)
        if (!strcmp(m->segs[s].name, name))
            return s;
    return -1;
}

static s2_status whole_params(s2_gm *m, s2_ckpt_param **ps, int *n, float ***data, int **segs,
                              s2_error *err)
{
    *data = NULL;
    *segs = NULL;
    s2_status st = s2_ckpt_trainable_params(&m->spec, ps, n, err);
    if (st || !*n)
        return st;
    *data = calloc((size_t)*n, sizeof **data);
    *segs = calloc((size_t)*n, sizeof **segs);
    if (!*data || !*segs)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    for (int i = 0; i < *n && !st; i++) {
        (*segs)[i] = seg_of_param(m, (*ps)[i].name);
        if ((*segs)[i] < 0)
            return s2_error_set(err, S2_ERR_INVALID, "trainable tensor %s: not in the model",
                                (*ps)[i].name);
        if (!((*data)[i] = malloc(m->segs[(*segs)[i]].numel * sizeof(float))))
            return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    }
    return st;
}

static void whole_params_free(s2_ckpt_param *ps, int n, float **data, int *segs)
{
    for (int i = 0; data && i < n; i++)
        free(data[i]);
    free(data);
    free(segs);
    free(ps);
}

s2_status s2_gm_export(s2_gm *m, const char *adapter_dir, const char *base_model,
                       const char *trainable_path, s2_error *err)
{
    host_adapters h;
    s2_status st = host_adapters_alloc(m, &h, err);
    if (st)
        return st;
    for (int l = 0; l < m->L && !st; l++)
        for (int g = 0; g < GROUPS && !st; g++) {
            const group *gr = &m->layers[l].g[g];
            if (gr->seg_a < 0)
                continue;
            st = s2_gm_read_param(m, gr->seg_a, h.a[l * GROUPS + g], err);
            if (!st)
                st = s2_gm_read_param(m, gr->seg_b, h.b[l * GROUPS + g], err);
            for (int i = 0; i < gr->n && !st; i++)
                if (m->lp.lin[gr->proj[i]].adapted)
                    b_block(m, gr, i, h.b[l * GROUPS + g], h.B[S2_CKPT_SLOT(l, gr->proj[i])], 1);
        }
    if (!st)
        st = s2_ckpt_save_adapter(adapter_dir, &m->spec, base_model, (const float *const *)h.A,
                                  (const float *const *)h.B, err);
    host_adapters_free(m, &h);
    if (st || !trainable_path)
        return st;
    s2_ckpt_param *ps = NULL;
    int n = 0;
    float **data = NULL;
    int *segs = NULL;
    st = whole_params(m, &ps, &n, &data, &segs, err);
    for (int i = 0; i < n && !st; i++)
        st = s2_gm_read_param(m, segs[i], data[i], err);
    if (!st && n)
        st = s2_ckpt_save_trainable(trainable_path, st_dtype(m->spec.dtype), n, ps,
                                    (const float *const *)data, err);
    whole_params_free(ps, n, data, segs);
    return st;
}

s2_status s2_gm_import(s2_gm *m, const char *adapter_dir, const char *trainable_path,
                       s2_error *err)
{
    host_adapters h;
    s2_status st = host_adapters_alloc(m, &h, err);
    if (st)
        return st;
    st = s2_ckpt_load_adapter(adapter_dir, &m->spec, h.A, h.B, err);
    for (int l = 0; l < m->L && !st; l++)
        for (int g = 0; g < GROUPS && !st; g++) {
            const group *gr = &m->layers[l].g[g];
            if (gr->seg_a < 0)
                continue;
            for (int i = 0; i < gr->n; i++)
                if (m->lp.lin[gr->proj[i]].adapted)
                    b_block(m, gr, i, h.b[l * GROUPS + g], h.B[S2_CKPT_SLOT(l, gr->proj[i])], 0);
            st = s2_gm_write_param(m, gr->seg_a, h.a[l * GROUPS + g], err);
            if (!st)
                st = s2_gm_write_param(m, gr->seg_b, h.b[l * GROUPS + g], err);
        }
    host_adapters_free(m, &h);
    if (st || !trainable_path)
        return st;
    s2_ckpt_param *ps = NULL;
    int n = 0;
    float **data = NULL;
    int *segs = NULL;
    st = whole_params(m, &ps, &n, &data, &segs, err);
    if (!st && n)
        st = s2_ckpt_load_trainable(trainable_path, n, ps, data, err);
    for (int i = 0; i < n && !st; i++)
        st = s2_gm_write_param(m, segs[i], data[i], err);
    whole_params_free(ps, n, data, segs);
    return st;
}

/* ---- full mode: the whole model as a Hugging Face checkpoint ---------------------------------- */

s2_status s2_gm_export_full(s2_gm *m, const char *dir, const char *src_model_dir, s2_error *err)
{
    if (!m->full)
        return s2_error_set(err, S2_ERR_INVALID, "export of the whole model: opened in LoRA "
                            "mode (s2_gm_opts.full = 0); export the adapter instead");
    s2_status st = s2_mkdir_p(dir, err);
    if (st)
        return st;
    /* one HF tensor per member of a stacked W, and every whole tensor, from the masters */
    const int max_t = m->L * (S2_PROJ_COUNT + 2) + 3;
    s2_tensor *t = calloc((size_t)max_t, sizeof *t);
    int nt = 0;
    if (!t)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    const s2_st_dtype dt = st_dtype(m->spec.dtype);
    for (int sgi = 0; sgi < m->n_segs && !st; sgi++) {
        const seg *sg = &m->segs[sgi];
        float *f = malloc(sg->numel * sizeof *f);
        st = !f ? s2_error_set(err, S2_ERR_NOMEM, "out of memory") : s2_gm_read_param(m, sgi, f, err);
        int l = -1, g = -1;
        for (int ll = 0; ll < m->L && g < 0; ll++)
            for (int gg = 0; gg < GROUPS; gg++)
                if (m->layers[ll].g[gg].seg_w == sgi)
                    l = ll, g = gg;
        const int parts = g >= 0 ? m->layers[l].g[g].n : 1;
        for (int i = 0; i < parts && !st; i++) {
            s2_tensor *x = &t[nt++];
            size_t off = 0, n = sg->numel;
            char name[160];
            if (g >= 0) {
                const group *gr = &m->layers[l].g[g];
                snprintf(name, sizeof name, "model.layers.%d.%s.%s.weight", l,
                         s2_proj_module(gr->proj[i]), s2_proj_name(gr->proj[i]));
                off = (size_t)gr->out_off[i] * gr->in;
                n = (size_t)gr->out[i] * gr->in;
                x->ndim = 2;
                x->shape[0] = gr->out[i];
                x->shape[1] = gr->in;
            } else {
                snprintf(name, sizeof name, "%s", sg->name);
                x->ndim = sg->ndim;
                x->shape[0] = sg->shape[0];
                x->shape[1] = sg->shape[1];
            }
            x->name = strdup(name);
            x->dtype = dt;
            x->nbytes = n * 2;
            x->data = malloc(x->nbytes);
            if (!x->name || !x->data)
                st = s2_error_set(err, S2_ERR_NOMEM, "out of memory");
            else
                s2_f32_to_half(dt, f + off, x->data, n);
        }
        free(f);
    }
    char path[1200];
    static const char *mk[] = {"format"}, *mv[] = {"pt"};
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!st)
        st = s2_st_write(path, t, nt, mk, mv, 1, err);
    for (int i = 0; i < nt; i++) {
        free(t[i].name);
        free(t[i].data);
    }
    free(t);
    /* config.json as the base model has it (the architecture is unchanged), with the RoPE
     * scaling these weights were trained at: the spec's */
    char *cfg = NULL, *out = NULL;
    snprintf(path, sizeof path, "%s/config.json", src_model_dir);
    if (!st)
        st = s2_read_file_max(path, S2_MAX_JSON_BYTES, "a JSON file", &cfg, NULL, err);
    if (!st)
        st = s2_ckpt_config_with_spec_rope(cfg, path, &m->spec, &out, err);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (!st)
        st = s2_write_file_atomic(path, out, strlen(out), err);
    free(cfg);
    free(out);
    return st;
}

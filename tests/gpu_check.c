/*
 * gpu_check.c — every S²-Attn kernel against the CPU reference on the GPU.
 *
 * For each case: fresh random inputs (seeded from the clock unless --seed),
 * outputs poisoned with NaN before the run, forward and backward on the
 * device, the same problem through the fp64-accumulating CPU reference on the
 * inputs as rounded to the storage dtype, and the relative L2 error of o, lse,
 * dq, dk and dv. A case passes when every error is below 1e-2 and no output
 * element is NaN (a NaN left means an element was never written).
 *
 * One line per case; exit status 0 only if every case passes, 3 with no GPU.
 * Built without Criterion: the GPU machine has none.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../gen/lora_plan.h"
#include "../runtime/lora.h"
#include "../runtime/ref.h"
#include "../runtime/rt.h"
#include "../runtime/st.h"

#define TOL 1e-2
#define MAX_SEQS 8

typedef struct gcase {
    const char *what;
    int d, H, Hkv, G, S;
    const char *mode;  /* split | roll */
    const char *dtype; /* bf16 | fp16 */
    int nseq;
    int seqlen[MAX_SEQS];
} gcase;

/* Item 11's cases: several N (N < G, N = G, N not a multiple of G), varlen with
 * sequences of different lengths, both shift modes, GQA, d in {64, 96, 128, 256}. */
static const gcase cases[] = {
    {"split N%G=0", 128, 4, 4, 256, 128, "split", "bf16", 1, {1024}},
    {"split short last group", 128, 4, 4, 256, 128, "split", "bf16", 1, {1000}},
    {"split N<G", 128, 4, 4, 256, 128, "split", "bf16", 1, {200}},
    {"split N=G", 128, 4, 4, 256, 128, "split", "bf16", 1, {256}},
    {"roll N%G=0", 128, 4, 4, 256, 128, "roll", "bf16", 1, {1024}},
    {"roll short last group", 128, 4, 4, 256, 128, "roll", "bf16", 1, {1000}},
    {"roll N<G", 128, 4, 4, 256, 128, "roll", "bf16", 1, {200}},
    {"roll N=G", 128, 4, 4, 256, 128, "roll", "bf16", 1, {256}},
    {"split GQA 8/2", 128, 8, 2, 256, 128, "split", "bf16", 1, {777}},
    {"roll GQA 8/2", 128, 8, 2, 256, 128, "roll", "bf16", 1, {777}},
    {"split fp16 d64", 64, 4, 4, 256, 128, "split", "fp16", 1, {1000}},
    {"roll fp16 d64 GQA 8/4", 64, 8, 4, 256, 128, "roll", "fp16", 1, {1000}},
    {"split bf16 d64 N<G", 64, 4, 4, 512, 256, "split", "bf16", 1, {300}},
    {"varlen split", 128, 4, 4, 256, 128, "split", "bf16", 4, {300, 1024, 77, 513}},
    {"varlen roll", 128, 4, 4, 256, 128, "roll", "bf16", 4, {300, 1024, 77, 513}},
    {"varlen roll fp16 d64 GQA", 64, 8, 2, 256, 128, "roll", "fp16", 3, {129, 640, 255}},
    {"varlen split fp16 GQA", 128, 8, 4, 200, 100, "split", "fp16", 5, {1, 31, 200, 401, 999}},
    {"full causal G>=N S=0", 128, 4, 4, 2048, 0, "split", "bf16", 1, {1500}},
    {"odd shift G=96 S=40 d96", 96, 4, 4, 96, 40, "split", "bf16", 1, {500}},
    {"roll G=96 S=40 d96", 96, 4, 4, 96, 40, "roll", "fp16", 1, {500}},
    {"d256 split", 256, 4, 4, 128, 64, "split", "bf16", 1, {600}},
    {"G/4 N=4096 H=8", 128, 8, 8, 1024, 512, "split", "bf16", 1, {4096}},
    {"G/4 N=4096 roll GQA", 128, 8, 4, 1024, 512, "roll", "bf16", 1, {4096}},
};
#define N_CASES ((int)(sizeof cases / sizeof cases[0]))

/* Every case runs with the plan's default tile and three others (tile 0 is the default). Each
 * alternative names every field, so a change of the defaults cannot change what it tests. */
#define N_TILES 4
static const char *alt_tile(int i, int d)
{
    static const char *const upto128[N_TILES] = {
        NULL,
        "fwd_warps=4,fwd_strips=2,fwd_block_n=32,fwd_stages=3,bwd_warps=8,bwd_block_n=32,bwd_stages=3,"
        "bwd_atomic_dq=0",
        "fwd_warps=2,fwd_strips=1,fwd_block_n=64,fwd_stages=1,bwd_warps=2,bwd_block_n=32,bwd_stages=1,"
        "bwd_atomic_dq=1",
        "fwd_warps=4,fwd_strips=1,fwd_block_n=128,fwd_stages=2,bwd_warps=4,bwd_block_n=32,bwd_stages=2,"
        "bwd_atomic_dq=1",
    };
    static const char *const d256[N_TILES] = {
        NULL,
        "fwd_warps=8,fwd_strips=1,fwd_block_n=32,fwd_stages=3,bwd_warps=4,bwd_block_n=32,bwd_stages=2,"
        "bwd_atomic_dq=0",
        "fwd_warps=2,fwd_strips=1,fwd_block_n=32,fwd_stages=1,bwd_warps=2,bwd_block_n=32,bwd_stages=2,"
        "bwd_atomic_dq=0",
        "fwd_warps=1,fwd_strips=1,fwd_block_n=32,fwd_stages=4,bwd_warps=1,bwd_block_n=32,bwd_stages=2,"
        "bwd_atomic_dq=0",
    };
    return d > 128 ? d256[i] : upto128[i];
}

/* The tile of case c with tile index i on arch; NULL for the default. */
static const s2_attn_tile *case_tile(const gcase *c, int i, const char *arch, s2_attn_tile *t,
                                     s2_error *err, s2_status *st)
{
    *st = S2_OK;
    const char *text = alt_tile(i, c->d);
    if (!text)
        return NULL;
    *t = s2_plan_default_tile(arch, c->d);
    *st = s2_plan_parse_tile(text, t, err);
    return t;
}

static s2_status case_spec(const gcase *c, s2_spec *spec, s2_error *err)
{
    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "name: gpu-check\n"
             "dtype: %s\n"
             "model: {hidden_size: %d, intermediate_size: 1024, num_layers: 1, num_heads: %d,\n"
             "        num_kv_heads: %d, head_dim: %d, vocab_size: 256, max_position_embeddings: 1024}\n"
             "context_length: 4096\n"
             "s2attn: {group_size: %d, shift: %d, shift_mode: %s}\n",
             c->dtype, c->H * c->d, c->H, c->Hkv, c->d, c->G, c->S, c->mode);
    return s2_spec_load_string(yaml, c->what, NULL, 0, spec, err);
}

/* xorshift64*; normal draws by Box-Muller. */
static uint64_t rng_state;
static double rng_u01(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return ((rng_state * 2685821657736338717ull) >> 11) * (1.0 / 9007199254740992.0);
}
static float rng_normal(void)
{
    double u = rng_u01(), v = rng_u01();
    return (float)(sqrt(-2.0 * log(u + 1e-300)) * cos(2 * M_PI * v));
}

/* Random half tensor and its fp32 view after rounding. */
static void fill_random(s2_st_dtype dt, uint16_t *h, float *f, size_t n)
{
    for (size_t i = 0; i < n; i++)
        f[i] = rng_normal();
    s2_f32_to_half(dt, f, h, n);
    s2_half_to_f32(dt, h, f, n);
}

static double rel_l2(const float *got, const float *ref, size_t n, int *nan)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i]))
            (*nan)++;
        double e = (double)got[i] - ref[i];
        num += e * e;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

typedef struct host_bufs {
    uint16_t *q, *k, *v, *dout, *o, *dq, *dk, *dv;
    float *qf, *kf, *vf, *doutf, *of, *lse, *dqf, *dkf, *dvf;
    float *ro, *rlse, *rdq, *rdk, *rdv;
} host_bufs;

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "gpu_check: out of memory\n");
        exit(1);
    }
    return p;
}

static void host_alloc(host_bufs *b, size_t nq, size_t nk, size_t nl)
{
    b->q = xmalloc(nq * 2), b->dout = xmalloc(nq * 2), b->o = xmalloc(nq * 2), b->dq = xmalloc(nq * 2);
    b->k = xmalloc(nk * 2), b->v = xmalloc(nk * 2), b->dk = xmalloc(nk * 2), b->dv = xmalloc(nk * 2);
    b->qf = xmalloc(nq * 4), b->doutf = xmalloc(nq * 4), b->of = xmalloc(nq * 4), b->dqf = xmalloc(nq * 4);
    b->kf = xmalloc(nk * 4), b->vf = xmalloc(nk * 4), b->dkf = xmalloc(nk * 4), b->dvf = xmalloc(nk * 4);
    b->lse = xmalloc(nl * 4), b->rlse = xmalloc(nl * 4);
    b->ro = xmalloc(nq * 4), b->rdq = xmalloc(nq * 4), b->rdk = xmalloc(nk * 4), b->rdv = xmalloc(nk * 4);
}

static void host_free(host_bufs *b)
{
    void *p[] = {b->q, b->k, b->v, b->dout, b->o, b->dq, b->dk, b->dv, b->qf, b->kf, b->vf,
                 b->doutf, b->of, b->lse, b->dqf, b->dkf, b->dvf, b->ro, b->rlse, b->rdq,
                 b->rdk, b->rdv};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        free(p[i]);
}

typedef struct dev_bufs {
    void *q, *k, *v, *dout, *o, *dq, *dk, *dv;
    float *lse, *delta;
    int32_t *cu;
} dev_bufs;

#define CK(call, what)                                                                            \
    do {                                                                                          \
        if ((st = s2_rt_check((call), (what), err)) != S2_OK)                                     \
            goto out_free;                                                                        \
    } while (0)

typedef struct case_result {
    double e[5]; /* o, lse, dq, dk, dv */
    int nan;
    int T;
} case_result;

static s2_status run_case(const s2_rt *rt, const gcase *c, int tile_idx, const s2_jit_opts *jo,
                          case_result *res, s2_error *err)
{
    s2_spec spec;
    s2_status st = case_spec(c, &spec, err);
    if (st)
        return st;
    s2_attn_tile tile;
    const s2_attn_tile *tp = case_tile(c, tile_idx, rt->arch, &tile, err, &st);
    if (st)
        return st;
    s2_attn a;
    st = s2_attn_load(&a, rt, &spec, tp, jo, err);
    if (st)
        return st;
    int32_t cu[MAX_SEQS + 1] = {0};
    for (int i = 0; i < c->nseq; i++)
        cu[i + 1] = cu[i] + c->seqlen[i];
    const int T = cu[c->nseq];
    s2_attn_batch bt;
    st = s2_attn_batch_init(&bt, cu, c->nseq, T, "cu_seqlens", err);
    if (st) {
        s2_attn_free(&a);
        return st;
    }
    const s2_st_dtype dt = spec.dtype == S2_DTYPE_BF16 ? S2_ST_BF16 : S2_ST_F16;
    const size_t nq = (size_t)T * c->H * c->d, nk = (size_t)T * c->Hkv * c->d, nl = (size_t)c->H * T;
    host_bufs h;
    host_alloc(&h, nq, nk, nl);
    dev_bufs d = {0};
    fill_random(dt, h.q, h.qf, nq);
    fill_random(dt, h.k, h.kf, nk);
    fill_random(dt, h.v, h.vf, nk);
    fill_random(dt, h.dout, h.doutf, nq);

    CK(cudaMalloc(&d.q, nq * 2), "cudaMalloc q");
    CK(cudaMalloc(&d.k, nk * 2), "cudaMalloc k");
    CK(cudaMalloc(&d.v, nk * 2), "cudaMalloc v");
    CK(cudaMalloc(&d.dout, nq * 2), "cudaMalloc do");
    CK(cudaMalloc(&d.o, nq * 2), "cudaMalloc o");
    CK(cudaMalloc(&d.dq, nq * 2), "cudaMalloc dq");
    CK(cudaMalloc(&d.dk, nk * 2), "cudaMalloc dk");
    CK(cudaMalloc(&d.dv, nk * 2), "cudaMalloc dv");
    CK(cudaMalloc((void **)&d.lse, nl * 4), "cudaMalloc lse");
    const size_t ws = s2_attn_workspace_bytes(&a, T);
    CK(cudaMalloc((void **)&d.delta, ws), "cudaMalloc backward workspace");
    CK(cudaMalloc((void **)&d.cu, sizeof cu), "cudaMalloc cu_seqlens");
    CK(cudaMemcpy(d.q, h.q, nq * 2, cudaMemcpyHostToDevice), "copy q");
    CK(cudaMemcpy(d.k, h.k, nk * 2, cudaMemcpyHostToDevice), "copy k");
    CK(cudaMemcpy(d.v, h.v, nk * 2, cudaMemcpyHostToDevice), "copy v");
    CK(cudaMemcpy(d.dout, h.dout, nq * 2, cudaMemcpyHostToDevice), "copy do");
    CK(cudaMemcpy(d.cu, cu, sizeof cu, cudaMemcpyHostToDevice), "copy cu_seqlens");
    /* Poison: 0xFFFF is NaN in bf16 and fp16, 0xFFFFFFFF in fp32. */
    CK(cudaMemset(d.o, 0xff, nq * 2), "poison o");
    CK(cudaMemset(d.dq, 0xff, nq * 2), "poison dq");
    CK(cudaMemset(d.dk, 0xff, nk * 2), "poison dk");
    CK(cudaMemset(d.dv, 0xff, nk * 2), "poison dv");
    CK(cudaMemset(d.lse, 0xff, nl * 4), "poison lse");
    CK(cudaMemset(d.delta, 0xff, ws), "poison the backward workspace");
    bt.d_cu_seqlens = d.cu;
    if ((st = s2_attn_forward(&a, &bt, d.q, d.k, d.v, d.o, d.lse, 0, err)))
        goto out_free;
    if ((st = s2_attn_backward(&a, &bt, d.q, d.k, d.v, d.o, d.lse, d.dout, d.delta, d.dq, d.dk,
                               d.dv, 0, err)))
        goto out_free;
    CK(cudaDeviceSynchronize(), "running the kernels");
    CK(cudaMemcpy(h.o, d.o, nq * 2, cudaMemcpyDeviceToHost), "copy o back");
    CK(cudaMemcpy(h.lse, d.lse, nl * 4, cudaMemcpyDeviceToHost), "copy lse back");
    CK(cudaMemcpy(h.dq, d.dq, nq * 2, cudaMemcpyDeviceToHost), "copy dq back");
    CK(cudaMemcpy(h.dk, d.dk, nk * 2, cudaMemcpyDeviceToHost), "copy dk back");
    CK(cudaMemcpy(h.dv, d.dv, nk * 2, cudaMemcpyDeviceToHost), "copy dv back");
    s2_half_to_f32(dt, h.o, h.of, nq);
    s2_half_to_f32(dt, h.dq, h.dqf, nq);
    s2_half_to_f32(dt, h.dk, h.dkf, nk);
    s2_half_to_f32(dt, h.dv, h.dvf, nk);

    s2_ref_attn ra = {.T = T, .H = c->H, .Hkv = c->Hkv, .d = c->d, .B = c->nseq,
                      .cu_seqlens = cu, .G = c->G, .S = c->S,
                      .mode = spec.s2attn.shift_mode, .scale = (float)spec.s2attn.softmax_scale};
    s2_ref_attn_forward(&ra, h.qf, h.kf, h.vf, h.ro, h.rlse);
    s2_ref_attn_backward(&ra, h.qf, h.kf, h.vf, h.ro, h.rlse, h.doutf, h.rdq, h.rdk, h.rdv);
    res->T = T;
    res->nan = 0;
    res->e[0] = rel_l2(h.of, h.ro, nq, &res->nan);
    res->e[1] = rel_l2(h.lse, h.rlse, nl, &res->nan);
    res->e[2] = rel_l2(h.dqf, h.rdq, nq, &res->nan);
    res->e[3] = rel_l2(h.dkf, h.rdk, nk, &res->nan);
    res->e[4] = rel_l2(h.dvf, h.rdv, nk, &res->nan);
out_free:
    cudaFree(d.q), cudaFree(d.k), cudaFree(d.v), cudaFree(d.dout), cudaFree(d.o);
    cudaFree(d.dq), cudaFree(d.dk), cudaFree(d.dv), cudaFree(d.lse), cudaFree(d.delta);
    cudaFree(d.cu);
    host_free(&h);
    s2_attn_free(&a);
    return st;
}

/* Builds every (case, tile) pair's kernels first, on a pool of threads, so the runs below
 * load from the cache. */
typedef struct prebuild_job {
    const gcase *c;
    int tile_idx;
    s2_status st;
    s2_error err;
} prebuild_job;

typedef struct prebuild_pool {
    prebuild_job *jobs;
    int n, next;
    s2_jit_opts jo;
} prebuild_pool;

static void *prebuild(void *arg)
{
    prebuild_pool *pool = arg;
    for (;;) {
        int i = __atomic_fetch_add(&pool->next, 1, __ATOMIC_RELAXED);
        if (i >= pool->n)
            return NULL;
        prebuild_job *j = &pool->jobs[i];
        s2_spec spec;
        s2_attn_plan plan;
        s2_attn_tile tile;
        s2_jit_result res[S2_UNIT_ATTN_COUNT];
        memset(res, 0, sizeof res);
        j->st = case_spec(j->c, &spec, &j->err);
        const s2_attn_tile *tp = NULL;
        if (!j->st)
            tp = case_tile(j->c, j->tile_idx, pool->jo.arch, &tile, &j->err, &j->st);
        if (!j->st)
            j->st = s2_attn_build(&spec, tp, &pool->jo, &plan, res, &j->err);
        for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++) {
            for (int k = 0; !j->st && k < res[u].n_res; k++) {
                const s2_kernel_res *r = &res[u].res[k];
                if (r->spill_stores + r->spill_loads + r->stack)
                    j->st = s2_error_set(&j->err, S2_ERR_CHECK,
                                         "%s: %d bytes spilled, %d-byte stack frame", r->name,
                                         r->spill_stores + r->spill_loads, r->stack);
            }
            s2_jit_result_free(&res[u]);
        }
    }
}


/* ---------------------------------------------------------------- LoRA linears */

typedef struct lcase {
    const char *what;
    const char *dtype;
    int M, r;
    const char *targets; /* the spec's lora.targets */
    int group;           /* which group of the plan */
    double dropout;
} lcase;

/* GQA-shaped q/k/v (H=8, Hkv=2, d=64: outs 512, 128, 128) and o; M not a multiple of a tile. */
static const lcase lcases[] = {
    {"qkv r=8", "bf16", 1000, 8, "[q_proj, k_proj, v_proj, o_proj]", 0, 0.0},
    {"qkv r=16", "bf16", 1000, 16, "[q_proj, k_proj, v_proj, o_proj]", 0, 0.0},
    {"qkv r=64 fp16", "fp16", 777, 64, "[q_proj, k_proj, v_proj, o_proj]", 0, 0.0},
    {"o r=8", "bf16", 1000, 8, "[q_proj, k_proj, v_proj, o_proj]", 1, 0.0},
    {"q,v r=8", "bf16", 513, 8, "[q_proj, v_proj]", 0, 0.0},
    {"qkv r=4 (rp pad)", "bf16", 300, 4, "[q_proj, k_proj, v_proj]", 0, 0.0},
    {"down r=16 fp16", "fp16", 640, 16, "[down_proj]", 0, 0.0},
    {"qkv r=8 dropout 0.1", "bf16", 1000, 8, "[q_proj, k_proj, v_proj, o_proj]", 0, 0.1},
    {"o r=16 dropout 0.3 fp16", "fp16", 513, 16, "[q_proj, k_proj, v_proj, o_proj]", 1, 0.3},
    {"qkv r=12 dropout (pad)", "bf16", 257, 12, "[q_proj, k_proj, v_proj]", 0, 0.2},
};
#define N_LCASES ((int)(sizeof lcases / sizeof lcases[0]))

static s2_status lcase_plan(const lcase *c, s2_lora_plan *plan, s2_error *err)
{
    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "name: gpu-check-lora\ndtype: %s\n"
             "model: {hidden_size: 512, intermediate_size: 768, num_layers: 1, num_heads: 8,\n"
             "        num_kv_heads: 2, head_dim: 64, vocab_size: 256, max_position_embeddings: 1024}\n"
             "context_length: 1024\nlora: {rank: %d, alpha: 16, dropout: %g, targets: %s}\n",
             c->dtype, c->r, c->dropout, c->targets);
    s2_spec spec;
    s2_status st = s2_spec_load_string(yaml, c->what, NULL, 0, &spec, err);
    if (!st)
        s2_plan_lora(&spec, plan);
    return st;
}

/* Relative L2 over a strided block: rows x cols of got (ld_got) vs ref (ld_ref). */
static double rel_block(const float *got, int ld_got, const float *ref, int ld_ref, int rows,
                        int cols, int *nan)
{
    double num = 0, den = 0;
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            double g = got[(size_t)i * ld_got + j], r = ref[(size_t)i * ld_ref + j];
            *nan += isnan(g);
            num += (g - r) * (g - r), den += r * r;
        }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

typedef struct lbufs {
    void *xa, *wc, *a, *y, *dy, *dxv, *da, *db, *ws;
} lbufs;

static void lbufs_free(lbufs *b)
{
    void *p[] = {b->xa, b->wc, b->a, b->y, b->dy, b->dxv, b->da, b->db, b->ws};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        cudaFree(p[i]);
}

static s2_status upload_half(void **dev, const float *f, size_t n, s2_st_dtype dt, s2_error *err)
{
    uint16_t *h = xmalloc(n * 2);
    s2_f32_to_half(dt, f, h, n);
    s2_status st = s2_rt_check(cudaMalloc(dev, n * 2), "cudaMalloc (LoRA)", err);
    if (!st)
        st = s2_rt_check(cudaMemcpy(*dev, h, n * 2, cudaMemcpyHostToDevice), "copy (LoRA)", err);
    free(h);
    return st;
}

static s2_status download_half(float *f, const void *dev, size_t n, s2_st_dtype dt, s2_error *err)
{
    uint16_t *h = xmalloc(n * 2);
    s2_status st = s2_rt_check(cudaMemcpy(h, dev, n * 2, cudaMemcpyDeviceToHost), "copy back (LoRA)", err);
    if (!st)
        s2_half_to_f32(dt, h, f, n);
    free(h);
    return st;
}

/* Random values rounded to the storage dtype, so the reference sees what the device sees. */
static void rand_rounded(float *f, size_t n, float scale, s2_st_dtype dt)
{
    uint16_t *h = xmalloc(n * 2);
    for (size_t i = 0; i < n; i++)
        f[i] = scale * rng_normal();
    s2_f32_to_half(dt, f, h, n);
    s2_half_to_f32(dt, h, f, n);
    free(h);
}

/* e[0] y, e[1] dx, e[2] dA, e[3] dB: the worst over the group's projections. */
static s2_status run_lora_case(s2_lora_ctx *ctx, const lcase *c, double e[4], int *nan,
                               s2_error *err)
{
    s2_lora_plan plan;
    s2_lora_dims d;
    const unsigned long long seed = rng_state; /* fresh per run */
    s2_status st = lcase_plan(c, &plan, err);
    if (!st) /* layer 5: the masks' streams are 5 * 8 + projection */
        st = s2_lora_dims_of(&plan, c->group, 5, c->M, seed, &d, err);
    if (st)
        return st;
    const s2_st_dtype dt = d.dtype == S2_DTYPE_BF16 ? S2_ST_BF16 : S2_ST_F16;
    const int M = d.M, in = d.in, r = d.r, rp = d.rp, lx = in + rp, ot = d.out_total;
    float *xa = xmalloc((size_t)M * lx * 4), *wc = xmalloc((size_t)ot * lx * 4);
    float *a = xmalloc((size_t)rp * in * 4), *dy = xmalloc((size_t)M * ot * 4);
    float *x = xmalloc((size_t)M * in * 4);
    rand_rounded(x, (size_t)M * in, 1.f, dt);
    rand_rounded(dy, (size_t)M * ot, 1.f, dt);
    memset(wc, 0, (size_t)ot * lx * 4);
    memset(a, 0, (size_t)rp * in * 4);
    for (int m = 0; m < M; m++) {
        memcpy(xa + (size_t)m * lx, x + (size_t)m * in, (size_t)in * 4);
        for (int j = in; j < lx; j++)
            xa[(size_t)m * lx + j] = NAN; /* poison: the forward must write u here */
    }
    /* W rows, B block-diagonal, A stacked: B random, not PEFT's zero start, so it is tested. */
    float *tmp = xmalloc((size_t)ot * (in > r ? in : r) * 4);
    for (int i = 0, off = 0; i < d.n_proj; off += d.out[i], i++) {
        rand_rounded(tmp, (size_t)d.out[i] * in, 1.f / sqrtf((float)in), dt);
        for (int o = 0; o < d.out[i]; o++)
            memcpy(wc + (size_t)(off + o) * lx, tmp + (size_t)o * in, (size_t)in * 4);
        rand_rounded(tmp, (size_t)d.out[i] * r, 1.f / sqrtf((float)r), dt);
        for (int o = 0; o < d.out[i]; o++)
            memcpy(wc + (size_t)(off + o) * lx + in + i * r, tmp + (size_t)o * r, (size_t)r * 4);
        rand_rounded(a + (size_t)i * r * in, (size_t)r * in, 1.f / sqrtf((float)in), dt);
    }
    free(tmp);
    lbufs b = {0};
    st = upload_half(&b.xa, xa, (size_t)M * lx, dt, err);
    if (!st)
        st = upload_half(&b.wc, wc, (size_t)ot * lx, dt, err);
    if (!st)
        st = upload_half(&b.a, a, (size_t)rp * in, dt, err);
    if (!st)
        st = upload_half(&b.dy, dy, (size_t)M * ot, dt, err);
    const size_t ny = (size_t)M * ot, ndx = (size_t)M * lx, nda = (size_t)rp * in, ndb = (size_t)ot * rp;
    if (!st)
        st = s2_rt_check(cudaMalloc(&b.y, ny * 2), "cudaMalloc y", err);
    if (!st)
        st = s2_rt_check(cudaMalloc(&b.dxv, ndx * 2), "cudaMalloc dxv", err);
    if (!st)
        st = s2_rt_check(cudaMalloc(&b.da, nda * 2), "cudaMalloc da", err);
    if (!st)
        st = s2_rt_check(cudaMalloc(&b.db, ndb * 2), "cudaMalloc db", err);
    if (!st && s2_lora_workspace_bytes(&d))
        st = s2_rt_check(cudaMalloc(&b.ws, s2_lora_workspace_bytes(&d)), "cudaMalloc ws", err);
    if (!st) /* poison every output */
        st = s2_rt_check(cudaMemset(b.y, 0xff, ny * 2), "poison", err);
    if (!st)
        st = s2_rt_check(cudaMemset(b.dxv, 0xff, ndx * 2), "poison", err);
    if (!st)
        st = s2_rt_check(cudaMemset(b.da, 0xff, nda * 2), "poison", err);
    if (!st)
        st = s2_rt_check(cudaMemset(b.db, 0xff, ndb * 2), "poison", err);
    if (!st)
        st = s2_lora_forward(ctx, &d, b.xa, b.wc, b.a, b.y, b.ws, 0, err);
    if (!st)
        st = s2_lora_backward(ctx, &d, b.xa, b.wc, b.a, b.dy, b.dxv, b.da, b.db, b.ws, 0, err);
    if (!st)
        st = s2_rt_check(cudaDeviceSynchronize(), "running the LoRA GEMMs", err);
    float *gy = xmalloc(ny * 4), *gdx = xmalloc(ndx * 4), *gda = xmalloc(nda * 4), *gdb = xmalloc(ndb * 4);
    if (!st)
        st = download_half(gy, b.y, ny, dt, err);
    if (!st)
        st = download_half(gdx, b.dxv, ndx, dt, err);
    if (!st)
        st = download_half(gda, b.da, nda, dt, err);
    if (!st)
        st = download_half(gdb, b.db, ndb, dt, err);
    /* The reference, one projection at a time; dx sums over them. */
    float *rdx = xmalloc((size_t)M * in * 4);
    memset(rdx, 0, (size_t)M * in * 4);
    e[0] = e[1] = e[2] = e[3] = 0;
    for (int i = 0, off = 0; !st && i < d.n_proj; off += d.out[i], i++) {
        const int oi = d.out[i];
        float *W = xmalloc((size_t)oi * in * 4), *B = xmalloc((size_t)oi * r * 4);
        float *dyi = xmalloc((size_t)M * oi * 4), *yi = xmalloc((size_t)M * oi * 4);
        float *dxi = xmalloc((size_t)M * in * 4), *dAi = xmalloc((size_t)r * in * 4);
        float *dBi = xmalloc((size_t)oi * r * 4);
        for (int o = 0; o < oi; o++) {
            memcpy(W + (size_t)o * in, wc + (size_t)(off + o) * lx, (size_t)in * 4);
            memcpy(B + (size_t)o * r, wc + (size_t)(off + o) * lx + in + i * r, (size_t)r * 4);
        }
        for (int m = 0; m < M; m++)
            memcpy(dyi + (size_t)m * oi, dy + (size_t)m * ot + off, (size_t)oi * 4);
        s2_ref_lora rl = {.M = M, .in = in, .out = oi, .r = r, .scale = d.scale,
                          .dropout = d.dropout, .seed = d.seed, .stream = d.stream[i]};
        const float *Ai = a + (size_t)i * r * in;
        s2_ref_lora_forward(&rl, x, W, Ai, B, yi);
        s2_ref_lora_backward(&rl, x, W, Ai, B, dyi, dxi, dAi, dBi);
        for (size_t k = 0; k < (size_t)M * in; k++)
            rdx[k] += dxi[k];
        e[0] = fmax(e[0], rel_block(gy + off, ot, yi, oi, M, oi, nan));
        e[2] = fmax(e[2], rel_block(gda + (size_t)i * r * in, in, dAi, in, r, in, nan));
        e[3] = fmax(e[3], rel_block(gdb + (size_t)off * rp + i * r, rp, dBi, r, oi, r, nan));
        free(W), free(B), free(dyi), free(yi), free(dxi), free(dAi), free(dBi);
    }
    if (!st)
        e[1] = rel_block(gdx, lx, rdx, in, M, in, nan);
    free(rdx), free(gy), free(gdx), free(gda), free(gdb);
    free(xa), free(wc), free(a), free(dy), free(x);
    lbufs_free(&b);
    return st;
}

/* Every LoRA case against the CPU reference; returns the failures. */
static int check_lora(const s2_rt *rt)
{
    s2_error err = {0};
    s2_lora_ctx *ctx = NULL;
    if (s2_lora_open(&ctx, rt, NULL, &err)) {
        printf("lora: ERROR %s\n", err.msg);
        s2_error_clear(&err);
        return 1;
    }
    printf("%-20s %-4s %5s %3s %9s %9s %9s %9s %s\n", "lora case", "dt", "M", "r", "y", "dx",
           "dA", "dB", "result");
    int failed = 0;
    for (int i = 0; i < N_LCASES; i++) {
        double e[4];
        int nan = 0;
        if (run_lora_case(ctx, &lcases[i], e, &nan, &err)) {
            printf("%-20s ERROR %s\n", lcases[i].what, err.msg);
            s2_error_clear(&err);
            failed++;
            continue;
        }
        int ok = !nan && e[0] < TOL && e[1] < TOL && e[2] < TOL && e[3] < TOL;
        printf("%-20s %-4s %5d %3d %9.2e %9.2e %9.2e %9.2e %s%s\n", lcases[i].what,
               lcases[i].dtype, lcases[i].M, lcases[i].r, e[0], e[1], e[2], e[3],
               ok ? "PASS" : "FAIL", nan ? " (NaN: unwritten outputs)" : "");
        failed += !ok;
    }
    s2_lora_close(ctx);
    printf("gpu_check: %d of %d LoRA cases passed\n", N_LCASES - failed, N_LCASES);
    return failed;
}

/* Builds every (case, tile) pair for arch on all cores; returns how many failed (a build
 * error, a plan refusal or a spill), each reported on stderr. */
static int prebuild_all(const char *arch)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    prebuild_pool pool = {.n = N_CASES * N_TILES, .jo = {.arch = arch, .threads = 1}};
    pool.jobs = calloc((size_t)pool.n, sizeof *pool.jobs);
    if (!pool.jobs)
        return pool.n;
    for (int i = 0; i < pool.n; i++)
        pool.jobs[i] = (prebuild_job){.c = &cases[i % N_CASES], .tile_idx = i / N_CASES};
    int nth = s2_cpu_count();
    pthread_t th[64];
    if (nth > 64)
        nth = 64;
    for (int i = 0; i < nth; i++)
        pthread_create(&th[i], NULL, prebuild, &pool);
    for (int i = 0; i < nth; i++)
        pthread_join(th[i], NULL);
    int failed = 0;
    for (int i = 0; i < pool.n; i++) {
        if (pool.jobs[i].st) {
            fprintf(stderr, "gpu_check: building '%s' tile %d for %s: %s\n", pool.jobs[i].c->what,
                    pool.jobs[i].tile_idx, arch, pool.jobs[i].err.msg);
            failed++;
        }
        s2_error_clear(&pool.jobs[i].err);
    }
    free(pool.jobs);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("gpu_check: built %d cases x %d tiles for %s in %.1f s, %d failed\n", N_CASES, N_TILES,
           arch, (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9, failed);
    return failed;
}

int main(int argc, char **argv)
{
    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    const char *only = NULL, *build_only = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            seed = strtoull(argv[++i], NULL, 0);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else if (!strcmp(argv[i], "--build-only") && i + 1 < argc)
            build_only = argv[++i];
        else {
            fprintf(stderr, "usage: s2lora_gpu_check [--seed N] [--only SUBSTRING] "
                            "[--build-only ARCH]\n"
                            "  --build-only ARCH  plan and NVRTC-build every case and tile for ARCH,\n"
                            "                     check for spills, run nothing (needs no GPU)\n");
            return 2;
        }
    }
    /* Every (case, tile) pair must plan and build without spills before the device sees it. */
    if (build_only) {
        if (!s2_jit_arch_valid(build_only)) {
            fprintf(stderr, "gpu_check: --build-only %s: valid sm_80, sm_86, sm_89, sm_90, sm_90a\n",
                    build_only);
            return 2;
        }
        return prebuild_all(build_only) ? 1 : 0;
    }
    rng_state = seed ? seed : 1;
    s2_error err = {0};
    s2_rt rt;
    if (s2_rt_open(&rt, 0, &err)) {
        fprintf(stderr, "gpu_check: %s\n", err.msg);
        return err.status == S2_ERR_NO_DEVICE ? 3 : 1;
    }
    printf("gpu_check: %s (%s, %d SMs), seed %llu, tolerance %.0e\n", rt.name, rt.arch,
           rt.sm_count, (unsigned long long)seed, TOL);
    s2_jit_opts jo = {.arch = rt.arch, .threads = 1};
    /* A failed build is reported here and again as that run's ERROR line below (the load
     * rebuilds and fails the same way); the other runs go on. */
    int failed = 0;
    prebuild_all(rt.arch);

    int n_run = 0;
    for (int ti = 0; ti < N_TILES; ti++) {
        printf("tile %d: %s (d=256: %s)\n", ti, alt_tile(ti, 128) ? alt_tile(ti, 128) : "plan default",
               alt_tile(ti, 256) ? alt_tile(ti, 256) : "plan default");
        printf("%-28s %-5s %-4s %4s %5s %4s %4s %6s %9s %9s %9s %9s %9s %s\n", "case", "mode",
               "dt", "d", "H/kv", "G", "S", "T", "o", "lse", "dq", "dk", "dv", "result");
        for (int i = 0; i < N_CASES; i++) {
            const gcase *c = &cases[i];
            if (only && !strstr(c->what, only))
                continue;
            case_result r;
            n_run++;
            if (run_case(&rt, c, ti, &jo, &r, &err)) {
                printf("%-28s ERROR %s\n", c->what, err.msg);
                s2_error_clear(&err);
                failed++;
                continue;
            }
            int ok = !r.nan;
            for (int e = 0; e < 5; e++)
                ok = ok && r.e[e] < TOL;
            char hk[16];
            snprintf(hk, sizeof hk, "%d/%d", c->H, c->Hkv);
            printf("%-28s %-5s %-4s %4d %5s %4d %4d %6d %9.2e %9.2e %9.2e %9.2e %9.2e %s", c->what,
                   c->mode, c->dtype, c->d, hk, c->G, c->S, r.T, r.e[0], r.e[1], r.e[2], r.e[3],
                   r.e[4], ok ? "PASS" : "FAIL");
            if (r.nan)
                printf(" (%d NaN: unwritten or invalid outputs)", r.nan);
            printf("\n");
            failed += !ok;
        }
    }
    printf("gpu_check: %d of %d case runs passed (%d cases x %d tiles)\n", n_run - failed, n_run,
           n_run / N_TILES, N_TILES);
    if (!only || strstr(only, "lora"))
        failed += check_lora(&rt);
    return failed ? 1 : 0;
}

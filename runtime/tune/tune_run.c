/* tune_run.c — the tuner on the device: gate every candidate against the default, time it,
 * keep the fastest per unit. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gen/emit.h"
#include "runtime/core/pool.h"
#include "runtime/core/st.h"
#include "runtime/tune/tune.h"

#define GATE_TOL 1e-2
#define ROW_STRIDE 4 /* the gate compares every fourth token row of the large outputs */
#define CUT 1.3      /* a candidate whose first timed run takes CUT x the best median so far
                        is not timed further (it cannot win) */
#define FILL_CHUNK ((size_t)1 << 20) /* elements of one random stream of the inputs */

/* The device buffers of the timing case; ref_* hold the default tile's outputs. */
typedef struct tune_bufs {
    void *q, *k, *v, *dout, *o, *dq, *dk, *dv;
    void *ref_o, *ref_dq, *ref_dk, *ref_dv;
    float *lse, *ref_lse;
    void *ws, *flush;
    int32_t *cu;
    size_t nq, nk, nl, ws_bytes, flush_bytes; /* elements (q, k, lse); bytes */
    size_t rq, rk;                            /* q- and kv-shaped token rows, elements each */
    /* host copies of the compared rows: the candidate's (scratch) and the reference's (once) */
    uint16_t *h_got, *h_ref[4]; /* h_ref: o, dq, dk, dv */
    float *h_lse, *h_ref_lse;
} tune_bufs;

static void bufs_free(tune_bufs *b)
{
    void *p[] = {b->q, b->k, b->v, b->dout, b->o, b->dq, b->dk, b->dv, b->ref_o, b->ref_dq,
                 b->ref_dk, b->ref_dv, b->lse, b->ref_lse, b->ws, b->flush, b->cu};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        if (p[i])
            cudaFree(p[i]);
    free(b->h_got);
    for (int i = 0; i < 4; i++)
        free(b->h_ref[i]);
    free(b->h_lse);
    free(b->h_ref_lse);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* N(0,1) halves from a seeded xorshift (fresh per run: the seed comes from the clock). */
static void fill_normal(s2_st_dtype dt, uint16_t *h, size_t n, uint64_t *state)
{
    for (size_t i = 0; i < n; i += 2) {
        double u[2];
        for (int j = 0; j < 2; j++) {
            *state ^= *state >> 12, *state ^= *state << 25, *state ^= *state >> 27;
            u[j] = ((*state * 2685821657736338717ull) >> 11) * (1.0 / 9007199254740992.0);
        }
        double r = sqrt(-2.0 * log(u[0] + 1e-300));
        h[i] = dt == S2_ST_BF16 ? s2_f32_to_bf16((float)(r * cos(2 * M_PI * u[1])))
                                : s2_f32_to_f16((float)(r * cos(2 * M_PI * u[1])));
        if (i + 1 < n)
            h[i + 1] = dt == S2_ST_BF16 ? s2_f32_to_bf16((float)(r * sin(2 * M_PI * u[1])))
                                        : s2_f32_to_f16((float)(r * sin(2 * M_PI * u[1])));
    }
}

/* One tensor filled by the pool: chunk c of FILL_CHUNK elements from its own stream, seeded by
 * splitmix64 of (seed, c), so the values do not depend on the thread count. */
typedef struct fill_job {
    s2_st_dtype dt;
    uint16_t *h;
    size_t n;
    uint64_t seed;
} fill_job;

static s2_status fill_item(void *arg, int item, int worker, s2_error *err)
{
    const fill_job *j = arg;
    const size_t c = (size_t)item;
    uint64_t sm = j->seed ^ (c * 0x9E3779B97F4A7C15ull);
    uint64_t state = s2_splitmix64(&sm) | 1;
    const size_t len = j->n - c * FILL_CHUNK < FILL_CHUNK ? j->n - c * FILL_CHUNK : FILL_CHUNK;
    fill_normal(j->dt, j->h + c * FILL_CHUNK, len, &state);
    return S2_OK;
}

static s2_status fill_parallel(s2_st_dtype dt, uint16_t *h, size_t n, uint64_t seed,
                               s2_error *err)
{
    const size_t chunks = (n + FILL_CHUNK - 1) / FILL_CHUNK;
    if (chunks > INT_MAX)
        return s2_error_set(err, S2_ERR_INVALID, "tuning inputs: %zu elements (at most %zu)", n,
                            (size_t)INT_MAX * FILL_CHUNK);
    fill_job j = {.dt = dt, .h = h, .n = n, .seed = seed};
    return s2_pool_for((int)chunks, 0, fill_item, &j, err);
}

static s2_status bufs_alloc(tune_bufs *b, const s2_spec *spec, int N, s2_error *err)
{
    const int H = spec->model.num_heads, Hkv = spec->model.num_kv_heads, d = spec->model.head_dim;
    b->nq = (size_t)N * H * d, b->nk = (size_t)N * Hkv * d, b->nl = (size_t)H * N;
    /* The largest workspace any tile needs: delta plus the atomic-dQ accumulator, and the
     * ordered dQ's turn counters (one a query row and head) and ticket after it. */
    b->ws_bytes = ((b->nl * 4 + 255) & ~(size_t)255) + b->nq * 4 + (b->nl + 1) * 4;
    int l2 = 0;
    s2_status st = s2_rt_check(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0),
                               "cudaDeviceGetAttribute(L2 size)", err);
    b->flush_bytes = 2 * (size_t)(l2 > 0 ? l2 : 64 << 20);
    struct { void **p; size_t n; } a[] = {
        {&b->q, b->nq * 2}, {&b->k, b->nk * 2}, {&b->v, b->nk * 2}, {&b->dout, b->nq * 2},
        {&b->o, b->nq * 2}, {&b->dq, b->nq * 2}, {&b->dk, b->nk * 2}, {&b->dv, b->nk * 2},
        {&b->ref_o, b->nq * 2}, {&b->ref_dq, b->nq * 2}, {&b->ref_dk, b->nk * 2},
        {&b->ref_dv, b->nk * 2}, {(void **)&b->lse, b->nl * 4}, {(void **)&b->ref_lse, b->nl * 4},
        {&b->ws, b->ws_bytes}, {&b->flush, b->flush_bytes}, {(void **)&b->cu, 2 * sizeof(int32_t)},
    };
    for (size_t i = 0; !st && i < sizeof a / sizeof a[0]; i++)
        st = s2_rt_check(cudaMalloc(a[i].p, a[i].n), "cudaMalloc (tuning buffers)", err);
    b->rq = (size_t)H * d, b->rk = (size_t)Hkv * d;
    const size_t rows = ((size_t)N + ROW_STRIDE - 1) / ROW_STRIDE;
    b->h_got = malloc(rows * b->rq * 2);
    b->h_ref[0] = malloc(rows * b->rq * 2), b->h_ref[1] = malloc(rows * b->rq * 2);
    b->h_ref[2] = malloc(rows * b->rk * 2), b->h_ref[3] = malloc(rows * b->rk * 2);
    b->h_lse = malloc(b->nl * 4), b->h_ref_lse = malloc(b->nl * 4);
    if (!st && !(b->h_got && b->h_ref[0] && b->h_ref[1] && b->h_ref[2] && b->h_ref[3] &&
                 b->h_lse && b->h_ref_lse))
        st = s2_error_set(err, S2_ERR_NOMEM, "out of memory for the gate's host copies");
    return st;
}

static s2_status bufs_fill(tune_bufs *b, s2_st_dtype dt, int N, s2_error *err)
{
    uint16_t *h = malloc(b->nq * 2);
    if (!h)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory for the tuning inputs");
    uint64_t state = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull | 1;
    void *dst[] = {b->q, b->k, b->v, b->dout};
    size_t n[] = {b->nq, b->nk, b->nk, b->nq};
    s2_status st = S2_OK;
    for (int i = 0; !st && i < 4; i++) {
        st = fill_parallel(dt, h, n[i], s2_splitmix64(&state), err);
        if (!st)
            st = s2_rt_check(cudaMemcpy(dst[i], h, n[i] * 2, cudaMemcpyHostToDevice),
                             "copy inputs", err);
    }
    int32_t cu[2] = {0, N};
    if (!st)
        st = s2_rt_check(cudaMemcpy(b->cu, cu, sizeof cu, cudaMemcpyHostToDevice), "copy cu_seqlens", err);
    free(h);
    return st;
}

/* Every ROW_STRIDE-th token row (row_elems halves each) of a device tensor of n halves into
 * host (rows packed): one strided copy, so the gate moves a quarter of the tensor. */
static s2_status fetch_rows(const void *dev, size_t n, size_t row_elems, uint16_t *host,
                            size_t *got, s2_error *err)
{
    const size_t rows = (n / row_elems + ROW_STRIDE - 1) / ROW_STRIDE;
    *got = rows * row_elems;
    return s2_rt_check(cudaMemcpy2D(host, row_elems * 2, dev, ROW_STRIDE * row_elems * 2,
                                    row_elems * 2, rows, cudaMemcpyDeviceToHost),
                       "copy back (gate)", err);
}

/* Accumulates one compared element into the error sums and the NaN count. */
static void add_diff(double x, double y, double *num, double *den, long *nan)
{
    *nan += isnan(x);
    *num += (x - y) * (x - y), *den += y * y;
}

/* Relative L2 of the sampled rows of a device half tensor against the reference's rows
 * (already on the host); NaN counted in *nan. */
static s2_status compare_half(const tune_bufs *b, const void *got, const uint16_t *ref, size_t n,
                              size_t row_elems, s2_st_dtype dt, double *rel, long *nan,
                              s2_error *err)
{
    size_t m = 0;
    s2_status st = fetch_rows(got, n, row_elems, b->h_got, &m, err);
    const uint16_t *a = b->h_got;
    double num = 0, den = 0;
    for (size_t i = 0; !st && i < m; i++)
        add_diff(dt == S2_ST_BF16 ? s2_bf16_to_f32(a[i]) : s2_f16_to_f32(a[i]),
                 dt == S2_ST_BF16 ? s2_bf16_to_f32(ref[i]) : s2_f16_to_f32(ref[i]), &num, &den,
                 nan);
    *rel = den > 0 ? sqrt(num / den) : sqrt(num);
    return st;
}

/* The same over every element of an fp32 tensor. */
static s2_status compare_f32(const tune_bufs *b, const float *got, const float *ref, size_t n,
                             double *rel, long *nan, s2_error *err)
{
    s2_status st = s2_rt_check(cudaMemcpy(b->h_lse, got, n * 4, cudaMemcpyDeviceToHost),
                               "copy back (gate)", err);
    double num = 0, den = 0;
    for (size_t i = 0; !st && i < n; i++)
        add_diff(b->h_lse[i], ref[i], &num, &den, nan);
    *rel = den > 0 ? sqrt(num / den) : sqrt(num);
    return st;
}

/* One loaded candidate on the timing case. */
typedef struct tune_case {
    const s2_attn *a;
    const s2_attn_batch *bt;
    const tune_bufs *b;
} tune_case;

static s2_status run_forward(void *ctx, s2_error *err)
{
    const tune_case *c = ctx;
    return s2_attn_forward(c->a, c->bt, c->b->q, c->b->k, c->b->v, c->b->o, c->b->lse, 0, err);
}

/* The backward from the reference forward's o and lse, so a backward candidate is judged
 * on its own. */
static s2_status run_backward(void *ctx, s2_error *err)
{
    const tune_case *c = ctx;
    const tune_bufs *b = c->b;
    return s2_attn_backward(c->a, c->bt, b->q, b->k, b->v, b->ref_o, b->ref_lse, b->dout, b->ws,
                            b->dq, b->dk, b->dv, 0, err);
}

static s2_status poison(const tune_bufs *b, s2_error *err)
{
    s2_status st = s2_rt_check(cudaMemset(b->o, 0xff, b->nq * 2), "poison o", err);
    if (!st)
        st = s2_rt_check(cudaMemset(b->lse, 0xff, b->nl * 4), "poison lse", err);
    if (!st)
        st = s2_rt_check(cudaMemset(b->dq, 0xff, b->nq * 2), "poison dq", err);
    if (!st)
        st = s2_rt_check(cudaMemset(b->dk, 0xff, b->nk * 2), "poison dk", err);
    if (!st)
        st = s2_rt_check(cudaMemset(b->dv, 0xff, b->nk * 2), "poison dv", err);
    return st;
}

/* Runs unit u of the loaded candidate once and holds its outputs against the reference:
 * *ok = 0 (rejected) on a relative error of GATE_TOL or more or any NaN. */
static s2_status gate(const tune_case *c, s2_attn_unit u, s2_st_dtype dt, int *ok,
                      double *worst, s2_error *err)
{
    const tune_bufs *b = c->b;
    s2_status st = poison(b, err);
    if (!st)
        st = u == S2_UNIT_ATTN_FWD ? run_forward((void *)c, err) : run_backward((void *)c, err);
    if (!st)
        st = s2_rt_check(cudaDeviceSynchronize(), "running the candidate", err);
    double e[3] = {0, 0, 0};
    long nan = 0;
    if (!st && u == S2_UNIT_ATTN_FWD) {
        st = compare_half(b, b->o, b->h_ref[0], b->nq, b->rq, dt, &e[0], &nan, err);
        if (!st)
            st = compare_f32(b, b->lse, b->h_ref_lse, b->nl, &e[1], &nan, err);
    } else if (!st) {
        st = compare_half(b, b->dq, b->h_ref[1], b->nq, b->rq, dt, &e[0], &nan, err);
        if (!st)
            st = compare_half(b, b->dk, b->h_ref[2], b->nk, b->rk, dt, &e[1], &nan, err);
        if (!st)
            st = compare_half(b, b->dv, b->h_ref[3], b->nk, b->rk, dt, &e[2], &nan, err);
    }
    *worst = fmax(e[0], fmax(e[1], e[2]));
    *ok = !st && nan == 0 && *worst < GATE_TOL;
    return st;
}

/* The default tile's outputs become the reference. */
static s2_status run_reference(const s2_rt *rt, const s2_spec *spec, const s2_jit_opts *jo,
                               const s2_attn_batch *bt, tune_bufs *b, s2_error *err)
{
    s2_attn a;
    s2_status st = s2_attn_load(&a, rt, spec, NULL, jo, err);
    if (st)
        return st;
    st = poison(b, err);
    if (!st)
        st = s2_attn_forward(&a, bt, b->q, b->k, b->v, b->ref_o, b->ref_lse, 0, err);
    if (!st)
        st = s2_attn_backward(&a, bt, b->q, b->k, b->v, b->ref_o, b->ref_lse, b->dout, b->ws,
                              b->ref_dq, b->ref_dk, b->ref_dv, 0, err);
    if (!st)
        st = s2_rt_check(cudaDeviceSynchronize(), "running the default tile", err);
    /* the compared rows of the reference, on the host once for every candidate's gate */
    const void *ref[4] = {b->ref_o, b->ref_dq, b->ref_dk, b->ref_dv};
    const size_t n[4] = {b->nq, b->nq, b->nk, b->nk}, re[4] = {b->rq, b->rq, b->rk, b->rk};
    size_t got;
    for (int i = 0; !st && i < 4; i++)
        st = fetch_rows(ref[i], n[i], re[i], b->h_ref[i], &got, err);
    if (!st)
        st = s2_rt_check(cudaMemcpy(b->h_ref_lse, b->ref_lse, b->nl * 4, cudaMemcpyDeviceToHost),
                         "copy back (reference)", err);
    s2_attn_free(&a);
    return st;
}

/* Gates and times candidate k of unit u; updates r. */
static s2_status try_candidate(const s2_rt *rt, const s2_spec *spec, const s2_jit_opts *jo,
                               const s2_tune_opts *o, const s2_attn_batch *bt, const tune_bufs *b,
                               const s2_tune_candidate *cand, int is_default,
                               s2_tune_unit_result *r, s2_error *err)
{
    s2_attn a;
    s2_status st = s2_attn_load(&a, rt, spec, &cand->tile, jo, err);
    if (st)
        return st;
    const s2_st_dtype dt = spec->dtype == S2_DTYPE_BF16 ? S2_ST_BF16 : S2_ST_F16;
    tune_case c = {.a = &a, .bt = bt, .b = b};
    int ok = 0;
    double worst = 0, ms = 0;
    char ts[S2_PLAN_TILE_STR_MAX];
    s2_plan_tile_str(&cand->tile, ts, sizeof ts);
    st = gate(&c, cand->unit, dt, &ok, &worst, err);
    if (!st && !ok) {
        r->rejected++;
        s2_tune_say(o, "%s: REJECTED %s (error %.2e vs the default)", s2_attn_unit_name(cand->unit), ts, worst);
    }
    s2_rt_work fn = cand->unit == S2_UNIT_ATTN_FWD ? run_forward : run_backward;
    int cut = 0;
    if (!st && ok && !is_default && r->best_ms > 0) { /* one run first: a hopeless one stops */
        double first = 0;
        st = s2_rt_time_median(fn, &c, 1, 1, b->flush, b->flush_bytes, &first, err);
        cut = !st && first > CUT * r->best_ms;
        if (cut) {
            r->cut++;
            s2_tune_say(o, "%s: %.3f ms %s (one run; over %.1fx the best %.3f: not timed further)",
                s2_attn_unit_name(cand->unit), first, ts, CUT, r->best_ms);
        }
    }
    if (!st && ok && !cut)
        st = s2_rt_time_median(fn, &c, o->warmup ? o->warmup : 3, o->reps ? o->reps : 10,
                               b->flush, b->flush_bytes, &ms, err);
    if (!st && ok && !cut) {
        r->timed++;
        if (is_default)
            r->default_ms = ms;
        if (is_default || r->best_ms == 0 || ms < r->best_ms)
            r->best_ms = ms, r->best = cand->tile;
        s2_tune_say(o, "%s: %.3f ms %s%s (best %.3f)", s2_attn_unit_name(cand->unit), ms, ts,
            is_default ? " [default]" : "", r->best_ms);
    }
    s2_attn_free(&a);
    return st;
}

static s2_status record(s2_tunedb *db, const s2_rt *rt, const s2_spec *spec, int N,
                        s2_attn_unit u, const s2_tune_unit_result *r, s2_error *err)
{
    s2_tunedb_entry e = {0};
    int maj = 0, min = 0;
    s2_jit_nvrtc_version(&maj, &min, NULL);
    snprintf(e.device, sizeof e.device, "%s", rt->name);
    snprintf(e.arch, sizeof e.arch, "%s", rt->arch);
    snprintf(e.kernel, sizeof e.kernel, "%s", s2_attn_unit_name(u));
    s2_plan_attn_identity(spec, e.spec_sha256);
    s2_tunedb_shape_class(N, e.shape, sizeof e.shape);
    s2_plan_tile_str(&r->best, e.tile, sizeof e.tile);
    e.default_ms = r->default_ms, e.tuned_ms = r->best_ms;
    snprintf(e.gen, sizeof e.gen, "%s", S2_GEN_VERSION);
    snprintf(e.nvrtc, sizeof e.nvrtc, "%d.%d", maj, min);
    s2_tunedb_now(e.when);
    return s2_tunedb_put(db, &e, err);
}

s2_status s2_tune_run(const s2_rt *rt, const s2_spec *spec, const s2_tune_opts *o, s2_tunedb *db,
                      s2_tune_unit_result res[S2_UNIT_ATTN_COUNT], s2_error *err)
{
    memset(res, 0, sizeof *res * S2_UNIT_ATTN_COUNT);
    const int N = o->seqlen > 0 ? o->seqlen : spec->context_length;
    const unsigned units = o->units ? o->units : (1u << S2_UNIT_ATTN_COUNT) - 1;
    const double t0 = now_s();
    s2_jit_opts jo = {.arch = rt->arch, .cache_dir = o->cache_dir};
    s2_tune_candidate *c = NULL;
    int n = 0;
    s2_status st = s2_tune_build_space(spec, &jo, units, o->atomic_dq, &c, &n, err);
    if (st)
        return st;
    for (int k = 0; k < n; k++) {
        s2_tune_unit_result *r = &res[c[k].unit];
        if (c[k].warning)
            s2_tune_say(o, "warning: %s", c[k].warning);
        r->candidates++;
        r->built += c[k].st == S2_OK;
        r->spilled += c[k].st == S2_OK && c[k].spilled;
    }
    s2_tune_say(o, "built %d candidates in %.1f s", n, now_s() - t0);

    int32_t cu[2] = {0, N};
    s2_attn_batch bt;
    tune_bufs b = {0};
    const s2_st_dtype dt = spec->dtype == S2_DTYPE_BF16 ? S2_ST_BF16 : S2_ST_F16;
    st = s2_attn_batch_init(&bt, cu, 1, N, "cu_seqlens", err);
    if (!st)
        st = bufs_alloc(&b, spec, N, err);
    if (!st)
        st = bufs_fill(&b, dt, N, err);
    bt.d_cu_seqlens = b.cu;
    if (!st)
        st = run_reference(rt, spec, &jo, &bt, &b, err);
    const s2_attn_tile def = s2_plan_spec_default_tile(spec, rt->arch);
    /* The space lists each unit's default first: it is timed before any budget can stop. */
    for (int k = 0; !st && k < n; k++) {
        s2_tune_unit_result *r = &res[c[k].unit];
        const int is_default = !memcmp(&c[k].tile, &def, sizeof def);
        if (c[k].st || c[k].spilled)
            continue;
        if (!is_default && o->budget_s > 0 && now_s() - t0 > o->budget_s) {
            r->over_budget++;
            continue;
        }
        st = try_candidate(rt, spec, &jo, o, &bt, &b, &c[k], is_default, r, err);
    }
    for (int u = 0; !st && u < S2_UNIT_ATTN_COUNT; u++)
        if ((units & (1u << u)) && res[u].default_ms > 0 && db)
            st = record(db, rt, spec, N, (s2_attn_unit)u, &res[u], err);
    bufs_free(&b);
    s2_tune_free(c, n);
    return st;
}

/*
 * bench.c — `s2lora bench attn`: S²-Attn timings of our kernels and of the
 * PyTorch peers on the same inputs. See bench.h for the conventions (FLOPs,
 * medians, what "peak" counts).
 *
 * One case is one (spec, N). Its inputs are drawn on the host (N(0,1), a
 * seeded xorshift per 1 Mi-element chunk, so the values do not depend on the
 * thread count) and rounded to the spec's dtype. Our outputs are poisoned with
 * NaN before the first run, so a NaN left after timing means an element was
 * never written. The peers run in a child process (python3, torch) after our
 * device buffers are freed, so each side has the whole card.
 */
#include "runtime/tune/bench.h"
#include "runtime/tune/tune.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runtime/core/blas.h"
#include "runtime/core/pool.h"
#include "runtime/core/st.h"

extern char **environ;

#define GIB (1024.0 * 1024.0 * 1024.0)
#define FILL_CHUNK ((size_t)1 << 20)
/* Device memory that may appear beyond our buffers without comment (allocation rounding). */
#define MEM_SLACK ((size_t)64 << 20)
/* attn_peers.py's exit status when torch or a CUDA device is missing. */
#define PEERS_UNAVAILABLE 3

/* ------------------------------------------------------------------ helpers */

double s2_bench_fwd_flops(int N, int G, int d, int H)
{
    /* A group never holds more than the sequence: G >= N is plain causal attention over N. */
    double g = G < N ? G : N;
    return 2.0 * N * g * d * H;
}

double s2_bench_tflops(double flops, double ms)
{
    if (!(ms > 0))
        return NAN;
    return flops / (ms * 1e-3) / 1e12;
}

double s2_bench_median(double *v, int n) { return n <= 0 ? NAN : s2_rt_median(v, n); }

void s2_bench_bwd(const s2_bench_row *r, double *ms, double *tflops)
{
    const double d = r->fb_ms - r->fwd_ms; /* NAN if either is */
    *ms = d > 0 ? d : NAN;
    *tflops = s2_bench_tflops(2.5 * s2_bench_fwd_flops(r->N, r->G, r->d, r->H), *ms);
}

void s2_bench_rows_free(s2_bench_rows *r)
{
    free(r->row);
    memset(r, 0, sizeof *r);
}

static s2_status rows_push(s2_bench_rows *r, const s2_bench_row *row, s2_error *err)
{
    if (r->n == r->cap) {
        int cap = r->cap ? 2 * r->cap : 16;
        s2_bench_row *p = realloc(r->row, sizeof *p * (size_t)cap);
        if (!p)
            return s2_error_set(err, S2_ERR_NOMEM, "out of memory for the bench rows");
        r->row = p;
        r->cap = cap;
    }
    r->row[r->n++] = *row;
    return S2_OK;
}


/* ------------------------------------------------------------------ arguments */

void s2_bench_opts_default(s2_bench_opts *o)
{
    memset(o, 0, sizeof *o);
    o->reps_fwd = 20;
    o->reps_fb = 10;
    o->warmup = 5;
    o->peers = S2_BENCH_DEFAULT_PEERS;
}

/* ------------------------------------------------------------------ validation */

/* Whether the comma-separated names [names, names + names_len) hold p[0..len). */
static int names_hold(const char *names, size_t names_len, const char *p, size_t len)
{
    for (const char *q = names, *stop = names + names_len; q < stop;) {
        while (q < stop && (*q == ',' || *q == ' '))
            q++;
        const char *e = q;
        while (e < stop && *e != ',')
            e++;
        if ((size_t)(e - q) == len && !strncmp(q, p, len))
            return 1;
        q = e;
    }
    return 0;
}

int s2_bench_peer_impls_valid(const char *list, char *why, size_t n)
{
    int item = 0;
    for (const char *p = list;;) {
        const char *end = strchr(p, ',');
        const size_t len = end ? (size_t)(end - p) : strlen(p);
        item++;
        if (!names_hold(S2_BENCH_PEER_IMPLS, strlen(S2_BENCH_PEER_IMPLS), p, len)) {
            snprintf(why, n, "item %d \"%.*s\" is not a peer; valid: %s", item, (int)len, p,
                     S2_BENCH_PEER_IMPLS);
            return 0;
        }
        if (names_hold(list, (size_t)(p - list), p, len)) {
            snprintf(why, n, "%.*s is listed twice", (int)len, p);
            return 0;
        }
        if (!end)
            return 1;
        p = end + 1;
    }
}

/* The directory an output file goes to must exist and be writable: found out before the sweep,
 * not after it. */
static s2_status check_out_dir(const char *path, const char *opt, s2_error *err)
{
    if (!path)
        return S2_OK;
    char *dup = strdup(path);
    if (!dup)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    const char *dir = dirname(dup);
    s2_status st = S2_OK;
    if (access(dir, W_OK) != 0)
        st = s2_error_set(err, S2_ERR_IO, "%s %s: cannot write in directory '%s': %s", opt, path,
                          dir, strerror(errno));
    free(dup);
    return st;
}

/* Loads one spec at N (0: at its own context_length) and plans it for its first arch. */
static s2_status load_case(const s2_bench_opts *o, const char *path, int N, s2_bench_case *c,
                           s2_error *err)
{
    s2_spec_override ov[S2_BENCH_MAX_SETS + 1];
    memcpy(ov, o->sets, sizeof ov[0] * (size_t)o->n_sets);
    int n_ov = o->n_sets;
    char ctx_len[48];
    if (N) {
        /* The loader re-derives G (group_ratio) and S (when not given) from the new length. */
        snprintf(ctx_len, sizeof ctx_len, "context_length=%d", N);
        ov[n_ov++].text = ctx_len;
    }
    s2_status st = s2_spec_load(path, ov, n_ov, &c->spec, err);
    if (!st) {
        s2_attn_plan plan;
        st = s2_plan_attn(&c->spec, c->spec.arch[0], NULL, &plan, err);
    }
    if (st && N)
        s2_error_prefix(err, "%s at --seqlens %d", path, N);
    c->N = c->spec.context_length;
    return st;
}

static uint64_t clock_seed(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t s = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec ^
                 ((uint64_t)getpid() << 40);
    return s ? s : 1;
}

s2_status s2_bench_prepare(s2_bench_opts *o, s2_bench_case **cases, int *n_cases, s2_error *err)
{
    *cases = NULL;
    *n_cases = 0;
    if (!o->seed)
        o->seed = clock_seed();
    s2_status st = check_out_dir(o->csv, "--csv", err);
    if (!st)
        st = check_out_dir(o->json, "--json", err);
    if (!st && o->peers && o->peers_given && access(o->peers, R_OK) != 0)
        st = s2_error_set(err, S2_ERR_IO, "--peers %s: %s", o->peers, strerror(errno));
    if (st)
        return st;
    const int per_spec = o->n_seqlens ? o->n_seqlens : 1;
    s2_bench_case *c = calloc((size_t)(o->n_specs * per_spec), sizeof *c);
    if (!c)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory for the bench cases");
    int n = 0;
    for (int s = 0; s < o->n_specs && !st; s++)
        for (int i = 0; i < per_spec && !st; i++)
            st = load_case(o, o->specs[s], o->n_seqlens ? o->seqlens[i] : 0, &c[n++], err);
    if (st) {
        free(c);
        return st;
    }
    *cases = c;
    *n_cases = n;
    return S2_OK;
}

/* ------------------------------------------------------------------ inputs */

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* xorshift64* in (0, 1]: never 0, so log() below stays finite. */
static double u01(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return ((*s * 2685821657736338717ull) >> 11) * (1.0 / 9007199254740992.0) +
           (1.0 / 9007199254740992.0);
}

/* N(0,1) by Box-Muller, rounded to the storage dtype. */
static void fill_chunk(s2_st_dtype dt, uint16_t *dst, size_t n, uint64_t state)
{
    uint16_t (*cvt)(float) = dt == S2_ST_BF16 ? s2_f32_to_bf16 : s2_f32_to_f16;
    for (size_t i = 0; i < n; i += 2) {
        double r = sqrt(-2.0 * log(u01(&state))), a = 2.0 * M_PI * u01(&state);
        dst[i] = cvt((float)(r * cos(a)));
        if (i + 1 < n)
            dst[i + 1] = cvt((float)(r * sin(a)));
    }
}

typedef struct fill_job {
    s2_st_dtype dt;
    uint16_t *dst;
    size_t n;
    uint64_t seed;
} fill_job;

static s2_status fill_item(void *arg, int c, int worker, s2_error *err)
{
    const fill_job *j = arg;
    const size_t begin = (size_t)c * FILL_CHUNK;
    const size_t len = j->n - begin < FILL_CHUNK ? j->n - begin : FILL_CHUNK;
    fill_chunk(j->dt, j->dst + begin, len, splitmix64(j->seed + (uint64_t)c) | 1);
    return S2_OK;
}

/* Hundreds of millions of draws at N = 100k: spread over the pool, chunk c from its own stream
 * (seed + c), so the values do not depend on the thread count. */
static s2_status fill_normal(s2_st_dtype dt, uint16_t *dst, size_t n, uint64_t seed, s2_error *err)
{
    const size_t chunks = (n + FILL_CHUNK - 1) / FILL_CHUNK;
    if (chunks > INT_MAX)
        return s2_error_set(err, S2_ERR_INVALID, "bench inputs: %zu elements (at most %zu)", n,
                            (size_t)INT_MAX * FILL_CHUNK);
    fill_job j = {.dt = dt, .dst = dst, .n = n, .seed = seed};
    return s2_pool_for((int)chunks, 0, fill_item, &j, err);
}

/* bf16 and fp16 both mark inf and NaN with an all-ones exponent. */
static size_t count_nonfinite(s2_st_dtype dt, const uint16_t *h, size_t n)
{
    const uint16_t e = dt == S2_ST_BF16 ? 0x7f80 : 0x7c00;
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += (h[i] & e) == e;
    return c;
}

typedef struct host_bufs {
    uint16_t *q, *k, *v, *dout, *o, *scratch;
    size_t nq, nk; /* elements of q-shaped and k-shaped tensors */
} host_bufs;

static void host_free(host_bufs *h)
{
    free(h->q), free(h->k), free(h->v), free(h->dout), free(h->o), free(h->scratch);
    memset(h, 0, sizeof *h);
}

static s2_status host_alloc(host_bufs *h, size_t nq, size_t nk, s2_error *err)
{
    memset(h, 0, sizeof *h);
    h->nq = nq, h->nk = nk;
    h->q = malloc(nq * 2), h->dout = malloc(nq * 2), h->o = malloc(nq * 2);
    h->scratch = malloc(nq * 2);
    h->k = malloc(nk * 2), h->v = malloc(nk * 2);
    if (h->q && h->dout && h->o && h->scratch && h->k && h->v)
        return S2_OK;
    host_free(h);
    return s2_error_set(err, S2_ERR_NOMEM, "out of host memory for %zu + %zu elements", nq, nk);
}

/* ------------------------------------------------------------------ rows */

static void row_init(s2_bench_row *r, const s2_bench_case *c, const char *impl, const char *mode)
{
    memset(r, 0, sizeof *r);
    snprintf(r->spec, sizeof r->spec, "%s", c->spec.name);
    snprintf(r->impl, sizeof r->impl, "%s", impl);
    snprintf(r->mode, sizeof r->mode, "%s", mode);
    r->dtype = s2_dtype_name(c->spec.dtype);
    r->N = c->N;
    r->G = c->spec.s2attn.group_size;
    r->S = c->spec.s2attn.shift;
    r->d = c->spec.model.head_dim;
    r->H = c->spec.model.num_heads;
    r->Hkv = c->spec.model.num_kv_heads;
    r->fwd_ms = r->fb_ms = r->fwd_tflops = r->fb_tflops = r->peak_gib = r->rel_err = NAN;
}

static void row_tflops(s2_bench_row *r)
{
    double f = s2_bench_fwd_flops(r->N, r->G, r->d, r->H);
    r->fwd_tflops = s2_bench_tflops(f, r->fwd_ms);
    r->fb_tflops = s2_bench_tflops(3.5 * f, r->fb_ms);
}

static void row_note(s2_bench_row *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void row_note(s2_bench_row *r, const char *fmt, ...)
{
    size_t len = strlen(r->note);
    if (len && len + 2 < sizeof r->note)
        memcpy(r->note + len, "; ", 3), len += 2;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->note + len, sizeof r->note - len, fmt, ap);
    va_end(ap);
}

static void ctx_warn(s2_bench_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void ctx_warn(s2_bench_ctx *ctx, const char *fmt, ...)
{
    size_t len = strlen(ctx->warn);
    if (len && len + 2 < sizeof ctx->warn)
        memcpy(ctx->warn + len, "; ", 3), len += 2;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->warn + len, sizeof ctx->warn - len, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------ our kernels */

typedef struct dev_bufs {
    void *q, *k, *v, *dout, *o, *dq, *dk, *dv;
    float *lse, *delta;
    int32_t *cu;
} dev_bufs;

static void dev_free(dev_bufs *d)
{
    void *p[] = {d->q, d->k, d->v, d->dout, d->o, d->dq, d->dk, d->dv, d->lse, d->delta, d->cu};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        if (p[i])
            cudaFree(p[i]);
    memset(d, 0, sizeof *d);
}

static s2_status dev_alloc1(void **p, size_t n, const char *name, s2_error *err)
{
    char what[96];
    snprintf(what, sizeof what, "cudaMalloc(%s, %zu bytes)", name, n);
    return s2_rt_check(cudaMalloc(p, n), what, err);
}

/* Everything one layer's fwd+bwd needs; *bytes is what "peak" reports for s2lora. */
static s2_status dev_alloc(dev_bufs *d, size_t nq, size_t nk, size_t nl, size_t ws,
                           size_t *bytes, s2_error *err)
{
    struct { void **p; size_t n; const char *name; } a[] = {
        {&d->q, nq * 2, "q"},      {&d->k, nk * 2, "k"},   {&d->v, nk * 2, "v"},
        {&d->dout, nq * 2, "do"},  {&d->o, nq * 2, "o"},   {&d->dq, nq * 2, "dq"},
        {&d->dk, nk * 2, "dk"},    {&d->dv, nk * 2, "dv"}, {(void **)&d->lse, nl * 4, "lse"},
        {(void **)&d->delta, ws, "workspace"}, {(void **)&d->cu, 2 * sizeof(int32_t), "cu_seqlens"},
    };
    *bytes = 0;
    for (size_t i = 0; i < sizeof a / sizeof a[0]; i++) {
        s2_status st = dev_alloc1(a[i].p, a[i].n, a[i].name, err);
        if (st)
            return st;
        *bytes += a[i].n;
    }
    return S2_OK;
}

typedef struct ours_run {
    const s2_attn *a;
    const s2_attn_batch *bt;
    const dev_bufs *d;
} ours_run;

typedef s2_status (*run_fn)(const ours_run *r, s2_error *err);

static s2_status run_fwd(const ours_run *r, s2_error *err)
{
    const dev_bufs *d = r->d;
    return s2_attn_forward(r->a, r->bt, d->q, d->k, d->v, d->o, d->lse, 0, err);
}

static s2_status run_fwd_bwd(const ours_run *r, s2_error *err)
{
    const dev_bufs *d = r->d;
    s2_status st = s2_attn_forward(r->a, r->bt, d->q, d->k, d->v, d->o, d->lse, 0, err);
    if (!st)
        st = s2_attn_backward(r->a, r->bt, d->q, d->k, d->v, d->o, d->lse, d->dout, d->delta,
                              d->dq, d->dk, d->dv, 0, err);
    return st;
}

/* Adapts a run to s2_rt_time_median's callback. */
typedef struct timed_run {
    run_fn fn;
    const ours_run *r;
} timed_run;

static s2_status timed_call(void *ctx, s2_error *err)
{
    const timed_run *t = ctx;
    return t->fn(t->r, err);
}

static s2_status time_median(run_fn fn, const ours_run *r, int warmup, int reps, double *ms,
                             s2_error *err)
{
    timed_run t = {.fn = fn, .r = r};
    return s2_rt_time_median(timed_call, &t, warmup, reps, NULL, 0, ms, err);
}

/* Copies a device half tensor to the host and counts its inf/NaN into the row's note. */
static s2_status check_output(const void *dev, uint16_t *host, size_t n, s2_st_dtype dt,
                              const char *name, s2_bench_row *row, s2_error *err)
{
    char what[64];
    snprintf(what, sizeof what, "copying %s back", name);
    s2_status st = s2_rt_check(cudaMemcpy(host, dev, n * 2, cudaMemcpyDeviceToHost), what, err);
    if (st)
        return st;
    size_t bad = count_nonfinite(dt, host, n);
    if (bad) {
        row->failed = 1;
        row_note(row, "%zu of %zu values of %s are inf/NaN (unwritten or invalid)", bad, n, name);
    }
    return S2_OK;
}

/* Puts the host inputs on the device, poisons the outputs (0xFFFF is NaN in bf16 and fp16). */
static s2_status dev_upload(dev_bufs *d, const host_bufs *h, int N, s2_error *err)
{
    const size_t nq = h->nq * 2, nk = h->nk * 2;
    int32_t cu[2] = {0, N};
    s2_status st = s2_rt_check(cudaMemcpy(d->q, h->q, nq, cudaMemcpyHostToDevice), "copy q", err);
    if (!st)
        st = s2_rt_check(cudaMemcpy(d->k, h->k, nk, cudaMemcpyHostToDevice), "copy k", err);
    if (!st)
        st = s2_rt_check(cudaMemcpy(d->v, h->v, nk, cudaMemcpyHostToDevice), "copy v", err);
    if (!st)
        st = s2_rt_check(cudaMemcpy(d->dout, h->dout, nq, cudaMemcpyHostToDevice), "copy do", err);
    if (!st)
        st = s2_rt_check(cudaMemcpy(d->cu, cu, sizeof cu, cudaMemcpyHostToDevice), "copy cu_seqlens", err);
    if (!st)
        st = s2_rt_check(cudaMemset(d->o, 0xff, nq), "poison o", err);
    if (!st)
        st = s2_rt_check(cudaMemset(d->dq, 0xff, nq), "poison dq", err);
    if (!st)
        st = s2_rt_check(cudaMemset(d->dk, 0xff, nk), "poison dk", err);
    if (!st)
        st = s2_rt_check(cudaMemset(d->dv, 0xff, nk), "poison dv", err);
    return st;
}

/* Times, then checks every output for values never written; o stays in h->o for the peers. */
static s2_status time_and_check(const s2_attn *a, const s2_attn_batch *bt, const dev_bufs *d,
                                const s2_bench_opts *o, host_bufs *h, s2_st_dtype dt,
                                s2_bench_row *row, s2_error *err)
{
    ours_run r = {.a = a, .bt = bt, .d = d};
    s2_status st = time_median(run_fwd, &r, o->warmup, o->reps_fwd, &row->fwd_ms, err);
    if (!st)
        st = time_median(run_fwd_bwd, &r, o->warmup, o->reps_fb, &row->fb_ms, err);
    if (!st)
        st = check_output(d->o, h->o, h->nq, dt, "o", row, err);
    if (!st)
        st = check_output(d->dq, h->scratch, h->nq, dt, "dq", row, err);
    if (!st)
        st = check_output(d->dk, h->scratch, h->nk, dt, "dk", row, err);
    if (!st)
        st = check_output(d->dv, h->scratch, h->nk, dt, "dv", row, err);
    return st;
}

/* s2lora's row. *have_o is set once o is on the host (the peers compare with it). */
static s2_status run_ours(s2_bench_ctx *ctx, const s2_bench_case *c, const char *tile_text,
                          host_bufs *h, s2_bench_row *row, int *have_o, s2_error *err)
{
    const s2_spec *sp = &c->spec;
    const s2_st_dtype dt = sp->dtype == S2_DTYPE_BF16 ? S2_ST_BF16 : S2_ST_F16;
    const size_t nl = (size_t)sp->model.num_heads * (size_t)c->N;
    s2_jit_opts jo = {.cache_dir = ctx->opts->cache_dir};
    s2_attn_tile tile = s2_plan_spec_default_tile(sp, ctx->rt.arch);
    s2_status st = tile_text ? s2_plan_parse_tile(tile_text, &tile, err) : S2_OK;
    if (st)
        return st;
    char ts[S2_PLAN_TILE_STR_MAX];
    if (!tile_text) { /* the tuned tile for this GPU and N when there is one */
        s2_tune_choice choice;
        s2_tune_select_cached(&jo, ctx->rt.name, ctx->rt.arch, sp, c->N, &choice);
        tile = choice.tile;
        row_note(row, "%s", choice.tuned[0] || choice.tuned[1] ? "tuned" : "default");
    }
    row_note(row, "tile %s", s2_plan_tile_str(&tile, ts, sizeof ts));
    s2_attn a;
    st = s2_attn_load(&a, &ctx->rt, sp, &tile, &jo, err);
    if (st)
        return st;
    int32_t cu[2] = {0, c->N};
    s2_attn_batch bt;
    dev_bufs d = {0};
    size_t free0 = 0, free1 = 0, total = 0, bytes = 0;
    st = s2_attn_batch_init(&bt, cu, 1, c->N, "cu_seqlens", err);
    if (!st)
        st = s2_rt_check(cudaMemGetInfo(&free0, &total), "cudaMemGetInfo", err);
    if (!st)
        st = dev_alloc(&d, h->nq, h->nk, nl, s2_attn_workspace_bytes(&a, c->N), &bytes, err);
    if (!st)
        st = dev_upload(&d, h, c->N, err);
    bt.d_cu_seqlens = d.cu;
    if (!st)
        st = time_and_check(&a, &bt, &d, ctx->opts, h, dt, row, err);
    if (!st)
        *have_o = 1;
    if (!st)
        st = s2_rt_check(cudaMemGetInfo(&free1, &total), "cudaMemGetInfo", err);
    if (!st) {
        row->peak_gib = bytes / GIB;
        /* The kernels are meant to allocate nothing: say so if the device disagrees. */
        size_t used = free0 > free1 ? free0 - free1 : 0;
        if (used > bytes + MEM_SLACK)
            row_note(row, "device memory in use grew by %.2f GiB, %.2f GiB beyond the buffers",
                     used / GIB, (used - bytes) / GIB);
    }
    dev_free(&d);
    s2_attn_free(&a);
    return st;
}

/* ------------------------------------------------------------------ the card's GEMM rate */

typedef struct gemm_run {
    s2_blas *blas;
    void *a, *b, *c;
} gemm_run;

static s2_status gemm_call(void *ctx, s2_error *err)
{
    const gemm_run *g = ctx;
    const int n = S2_BENCH_GEMM_DIM;
    return s2_blas_gemm(g->blas, S2_DTYPE_BF16, "card rate", 0, 0, n, n, n, 1.f, g->a,
                        n, g->b, n, 0.f, g->c, n, 0, err);
}

s2_status s2_bench_gemm_rate(uint64_t seed, double *tflops, s2_error *err)
{
    const size_t n = S2_BENCH_GEMM_DIM, elems = n * n;
    *tflops = NAN;
    gemm_run g = {0};
    s2_status st = s2_blas_open(&g.blas, err);
    /* The stream s2_rt_time_median records its events on. */
    if (!st)
        st = s2_blas_stream(g.blas, 0, err);
    if (!st)
        st = dev_alloc1(&g.a, elems * 2, "A of the GEMM", err);
    if (!st)
        st = dev_alloc1(&g.b, elems * 2, "B of the GEMM", err);
    if (!st)
        st = dev_alloc1(&g.c, elems * 2, "C of the GEMM", err);
    /* Random operands, never zeros (a product of zeros draws less power and runs faster);
     * B scaled by 1/sqrt(K) so C stays near N(0, 1) in bf16. */
    uint64_t state = splitmix64(seed ^ 0x67656d6d72617465ull) | 1;
    if (!st)
        st = s2_rt_fill_normal(g.a, elems, 1.f, S2_DTYPE_BF16, &state, err);
    if (!st)
        st = s2_rt_fill_normal(g.b, elems, 1.f / sqrtf((float)n), S2_DTYPE_BF16, &state, err);
    double ms = NAN;
    if (!st)
        st = s2_rt_time_median(gemm_call, &g, S2_BENCH_GEMM_WARMUP, S2_BENCH_GEMM_REPS, NULL, 0,
                               &ms, err);
    if (!st && !(ms > 0))
        st = s2_error_set(err, S2_ERR_CHECK, "a median time of %g ms", ms);
    if (!st)
        *tflops = s2_bench_tflops(2.0 * n * n * n, ms);
    /* Everything back before the cases: each side of the bench gets the whole card. */
    void *p[] = {g.a, g.b, g.c};
    for (size_t i = 0; i < 3; i++)
        if (p[i])
            cudaFree(p[i]);
    if (g.blas)
        s2_blas_close(g.blas);
    if (st)
        s2_error_prefix(err, "dense bf16 GEMM %zu^3 (cuBLAS)", n);
    return st;
}

/* ------------------------------------------------------------------ peers */

/* Runs argv with the child's stdout on our stderr (our stdout is the table); *code is its exit
 * status, 127 when argv[0] was not found. */
static s2_status spawn_wait(char *const argv[], int *code, s2_error *err)
{
    posix_spawn_file_actions_t fa;
    if (posix_spawn_file_actions_init(&fa))
        return s2_error_set(err, S2_ERR_NOMEM, "posix_spawn_file_actions_init failed");
    posix_spawn_file_actions_adddup2(&fa, STDERR_FILENO, STDOUT_FILENO);
    pid_t pid;
    int e = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (e == ENOENT) {
        *code = 127;
        return S2_OK;
    }
    if (e)
        return s2_error_set(err, S2_ERR_IO, "starting %s: %s", argv[0], strerror(e));
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return s2_error_set(err, S2_ERR_IO, "waiting for %s: %s", argv[0], strerror(errno));
    *code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return S2_OK;
}

static double json_num(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static const char *json_str(const json_t *o, const char *key, const char *dflt)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : dflt;
}

/* attn_peers.py's {"peers": [{"impl", "mode", "fwd_ms", "fb_ms", "peak_gib", "rel_err",
 * "note"}]} into rows. */
static s2_status read_peers(const char *path, const s2_bench_case *c, s2_bench_rows *rows,
                            s2_error *err)
{
    char *text;
    size_t size;
    s2_status rd = s2_read_file_max(path, S2_MAX_JSON_BYTES, "a JSON file", &text, &size, err);
    if (rd)
        return rd;
    json_error_t je;
    json_t *root = json_loadb(text, size, 0, &je);
    free(text);
    if (!root)
        return s2_error_set(err, S2_ERR_PARSE, "%s:%d:%d: %s", path, je.line, je.column, je.text);
    json_t *arr = json_object_get(root, "peers");
    s2_status st = json_is_array(arr) ? S2_OK
                                      : s2_error_set(err, S2_ERR_PARSE,
                                                     "%s: expected {\"peers\": [...]}", path);
    size_t i;
    json_t *p;
    json_array_foreach(arr, i, p) {
        if (st)
            break;
        s2_bench_row r;
        row_init(&r, c, json_str(p, "impl", "?"), json_str(p, "mode", "?"));
        r.fwd_ms = json_num(p, "fwd_ms");
        r.fb_ms = json_num(p, "fb_ms");
        r.peak_gib = json_num(p, "peak_gib");
        r.rel_err = json_num(p, "rel_err");
        r.failed = isnan(r.fwd_ms) && isnan(r.fb_ms);
        snprintf(r.note, sizeof r.note, "%s", json_str(p, "note", ""));
        row_tflops(&r);
        st = rows_push(rows, &r, err);
    }
    json_decref(root);
    return st;
}

/* The inputs and our o, as the peers script reads them. */
static s2_status write_inputs(const char *path, const s2_bench_case *c, const host_bufs *h,
                              s2_error *err)
{
    const s2_spec *sp = &c->spec;
    const s2_st_dtype dt = sp->dtype == S2_DTYPE_BF16 ? S2_ST_BF16 : S2_ST_F16;
    const int64_t N = c->N, H = sp->model.num_heads, Hkv = sp->model.num_kv_heads,
                  d = sp->model.head_dim;
    s2_tensor t[5] = {
        {.name = "q", .dtype = dt, .ndim = 3, .shape = {N, H, d}, .data = h->q, .nbytes = h->nq * 2},
        {.name = "k", .dtype = dt, .ndim = 3, .shape = {N, Hkv, d}, .data = h->k, .nbytes = h->nk * 2},
        {.name = "v", .dtype = dt, .ndim = 3, .shape = {N, Hkv, d}, .data = h->v, .nbytes = h->nk * 2},
        {.name = "do", .dtype = dt, .ndim = 3, .shape = {N, H, d}, .data = h->dout, .nbytes = h->nq * 2},
        {.name = "o", .dtype = dt, .ndim = 3, .shape = {N, H, d}, .data = h->o, .nbytes = h->nq * 2},
    };
    const char *mk[] = {"s2lora.spec", "s2lora.spec_sha256"};
    const char *mv[] = {sp->name, sp->hash_hex};
    return s2_st_write(path, t, 5, mk, mv, 2, err);
}


/* What the script's exit status means for this case and the rest of the run. */
static s2_status peers_outcome(s2_bench_ctx *ctx, int code, const char *out,
                               const s2_bench_case *c, s2_bench_rows *rows, s2_error *err)
{
    const char *script = ctx->opts->peers;
    if (code == 127) {
        ctx->peers_off = 1;
        ctx_warn(ctx, "python3 not found; running without peers");
        return S2_OK;
    }
    if (code == PEERS_UNAVAILABLE) {
        ctx->peers_off = 1;
        ctx_warn(ctx, "%s: torch or a CUDA device is missing (its message is above); running "
                 "without peers", script);
        return S2_OK;
    }
    if (code != 0) {
        ctx_warn(ctx, "%s exited with status %d (its messages are above); no peer rows for %s "
                 "at N=%d", script, code, c->spec.name, c->N);
        return S2_OK;
    }
    return read_peers(out, c, rows, err);
}

/*
 * The peers on this case's inputs: writes them (and our o) to a temporary
 * safetensors file, runs `python3 SCRIPT --in ... --out ...` and reads its JSON.
 * Missing python3 or torch turns the peers off for the rest of the run, with a
 * warning; an error here is reported as a warning by the caller, never as a
 * failure of our row.
 */
static s2_status run_peers(s2_bench_ctx *ctx, const s2_bench_case *c, const host_bufs *h,
                           s2_bench_rows *rows, s2_error *err)
{
    const s2_bench_opts *o = ctx->opts;
    const s2_spec *sp = &c->spec;
    if (!o->peers || ctx->peers_off)
        return S2_OK;
    if (access(o->peers, R_OK) != 0) {
        ctx->peers_off = 1;
        ctx_warn(ctx, "peers script %s: %s; running without peers (--peers PATH names it)",
                 o->peers, strerror(errno));
        return S2_OK;
    }
    const char *tmp = getenv("TMPDIR");
    char dir[PATH_MAX], in[PATH_MAX + 32], out[PATH_MAX + 32];
    snprintf(dir, sizeof dir, "%s/s2bench.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir))
        return s2_error_set(err, S2_ERR_IO, "mkdtemp %s: %s", dir, strerror(errno));
    snprintf(in, sizeof in, "%s/in.safetensors", dir);
    snprintf(out, sizeof out, "%s/peers.json", dir);
    char G[16], S[16], scale[32], reps[16], reps_fb[16], warm[16];
    snprintf(G, sizeof G, "%d", sp->s2attn.group_size);
    snprintf(S, sizeof S, "%d", sp->s2attn.shift);
    snprintf(scale, sizeof scale, "%.17g", sp->s2attn.softmax_scale);
    snprintf(reps, sizeof reps, "%d", o->reps_fwd);
    snprintf(reps_fb, sizeof reps_fb, "%d", o->reps_fb);
    snprintf(warm, sizeof warm, "%d", o->warmup);
    char *argv[] = {"python3", (char *)o->peers, "--in", in, "--out", out, "--G", G, "--S", S,
                    "--mode", (char *)s2_shift_mode_name(sp->s2attn.shift_mode), "--scale", scale,
                    "--reps", reps, "--reps-fb", reps_fb, "--warmup", warm,
                    o->peer_impls ? "--peers" : NULL, (char *)o->peer_impls, NULL};
    int code = 0;
    s2_status st = write_inputs(in, c, h, err);
    if (!st)
        st = spawn_wait(argv, &code, err);
    if (!st)
        st = peers_outcome(ctx, code, out, c, rows, err);
    unlink(in);
    unlink(out);
    rmdir(dir);
    return st;
}

/* ------------------------------------------------------------------ one case */

s2_status s2_bench_run_case(s2_bench_ctx *ctx, const s2_bench_case *c, s2_bench_rows *rows,
                            s2_error *err)
{
    const s2_spec *sp = &c->spec;
    const s2_st_dtype dt = sp->dtype == S2_DTYPE_BF16 ? S2_ST_BF16 : S2_ST_F16;
    const size_t nq = (size_t)c->N * sp->model.num_heads * sp->model.head_dim;
    const size_t nk = (size_t)c->N * sp->model.num_kv_heads * sp->model.head_dim;
    ctx->warn[0] = '\0';
    host_bufs h;
    s2_status st = host_alloc(&h, nq, nk, err);
    if (st)
        return st;
    /* Fresh inputs per case, reproducible from the run's seed. */
    const uint64_t seed = splitmix64(ctx->opts->seed + 0x100000000ull * (uint64_t)ctx->case_no++);
    st = fill_normal(dt, h.q, nq, splitmix64(seed + 1), err);
    if (!st)
        st = fill_normal(dt, h.k, nk, splitmix64(seed + 2), err);
    if (!st)
        st = fill_normal(dt, h.v, nk, splitmix64(seed + 3), err);
    if (!st)
        st = fill_normal(dt, h.dout, nq, splitmix64(seed + 4), err);
    if (st) {
        host_free(&h);
        return st;
    }

    /* One row per tile (the plan's default without --tile), each on the same inputs. */
    const int n_tiles = ctx->opts->n_tiles ? ctx->opts->n_tiles : 1;
    int have_o = 0;
    s2_error e = {0};
    for (int i = 0; i < n_tiles && !st; i++) {
        s2_bench_row ours;
        char impl[32] = "s2lora";
        if (ctx->opts->n_tiles > 1)
            snprintf(impl, sizeof impl, "s2lora#%d", i + 1);
        row_init(&ours, c, impl, s2_shift_mode_name(sp->s2attn.shift_mode));
        if (run_ours(ctx, c, ctx->opts->n_tiles ? ctx->opts->tiles[i] : NULL, &h, &ours,
                     &have_o, &e)) {
            ours.failed = 1;
            row_note(&ours, "%s", e.msg ? e.msg : s2_status_to_string(e.status));
            s2_error_clear(&e);
        }
        row_tflops(&ours);
        st = rows_push(rows, &ours, err);
    }
    /* Our device buffers are freed by now: the peers get the whole card. */
    if (!st && have_o && run_peers(ctx, c, &h, rows, &e)) {
        ctx_warn(ctx, "peers: %s", e.msg ? e.msg : s2_status_to_string(e.status));
        s2_error_clear(&e);
    }
    host_free(&h);
    return st;
}

/* ------------------------------------------------------------------ text */

void s2_bench_case_title(s2_buf *b, const s2_bench_case *c)
{
    const s2_spec *sp = &c->spec;
    s2_buf_printf(b, "== %s N=%d: G=%d S=%d %s, %s, d=%d, H=%d, Hkv=%d\n", sp->name, c->N,
                  sp->s2attn.group_size, sp->s2attn.shift,
                  s2_shift_mode_name(sp->s2attn.shift_mode), s2_dtype_name(sp->dtype),
                  sp->model.head_dim, sp->model.num_heads, sp->model.num_kv_heads);
}

#define TABLE_FMT "%-12s %7s %6s %4s %4s %-5s %9s %8s %9s %8s %8s %8s %15s  %s\n"

void s2_bench_table_header(s2_buf *b)
{
    s2_buf_printf(b, TABLE_FMT, "impl", "N", "G", "d", "H", "mode", "fwd_ms", "fwd_TFs",
                  "fb_ms", "fb_TFs", "bwd_TFs", "peak_GiB", "rel_err_vs_ours", "note");
}

static const char *num_or(char *buf, size_t n, const char *fmt, double v, const char *none)
{
    if (!isfinite(v))
        return none;
    snprintf(buf, n, fmt, v);
    return buf;
}

/* s2lora's rows ("s2lora", or "s2lora#k" for the k-th --tile) come first in a case. */
static int is_ours(const s2_bench_row *r) { return !strncmp(r->impl, "s2lora", 6); }

void s2_bench_table_row(s2_buf *b, const s2_bench_row *r)
{
    char N[16], G[16], d[16], H[16], f[32], ft[32], fb[32], fbt[32], bt[32], pk[32], re[32];
    double bwd_ms, bwd_tflops;
    s2_bench_bwd(r, &bwd_ms, &bwd_tflops);
    char note[sizeof r->note + 16];
    snprintf(N, sizeof N, "%d", r->N);
    snprintf(G, sizeof G, "%d", r->G);
    snprintf(d, sizeof d, "%d", r->d);
    snprintf(H, sizeof H, "%d", r->H);
    snprintf(note, sizeof note, "%s%s%s", r->failed ? "FAILED" : "",
             r->failed && r->note[0] ? ": " : "", r->note);
    /* Our own rows are the reference of the last column. */
    const char *rel = is_ours(r) ? "-" : num_or(re, sizeof re, "%.2e", r->rel_err, "n/a");
    s2_buf_printf(b, TABLE_FMT, r->impl, N, G, d, H, r->mode,
                  num_or(f, sizeof f, "%.3f", r->fwd_ms, "-"),
                  num_or(ft, sizeof ft, "%.1f", r->fwd_tflops, "-"),
                  num_or(fb, sizeof fb, "%.3f", r->fb_ms, "-"),
                  num_or(fbt, sizeof fbt, "%.1f", r->fb_tflops, "-"),
                  num_or(bt, sizeof bt, "%.1f", bwd_tflops, "-"),
                  num_or(pk, sizeof pk, "%.2f", r->peak_gib, "-"), rel, note);
}

void s2_bench_case_summary(s2_buf *b, const s2_bench_row *rows, int n)
{
    if (n < 1)
        return;
    const s2_bench_row *ours = &rows[0], *best = NULL;
    for (int i = 1; i < n; i++) {
        const s2_bench_row *r = &rows[i];
        if (is_ours(r)) { /* the fastest of our tiles that ran */
            if (!r->failed && isfinite(r->fb_ms) && (ours->failed || !(r->fb_ms >= ours->fb_ms)))
                ours = r;
        } else if (isfinite(r->fb_ms) && (!best || r->fb_ms < best->fb_ms)) {
            best = r;
        }
    }
    if (!best) {
        if (isfinite(ours->fb_ms))
            s2_buf_printf(b, "no peer fwd+bwd time; ours %.3f ms\n", ours->fb_ms);
        return;
    }
    if (!isfinite(ours->fb_ms) || ours->failed) {
        s2_buf_printf(b, "fastest peer fwd+bwd %.3f ms (%s); ours failed\n", best->fb_ms,
                      best->impl);
        return;
    }
    s2_buf_printf(b, "fastest peer fwd+bwd %.3f ms (%s); ours %.3f ms (%s) = %.2f× the fastest peer\n",
                  best->fb_ms, best->impl, ours->fb_ms, ours->impl, ours->fb_ms / best->fb_ms);
}

/* A CSV field, quoted when it holds a comma, quote or line break. */
static void csv_str(s2_buf *b, const char *s, const char *sep)
{
    if (!strpbrk(s, ",\"\r\n")) {
        s2_buf_printf(b, "%s%s", s, sep);
        return;
    }
    s2_buf_append(b, "\"", 1);
    for (const char *p = s; *p; p++) {
        if (*p == '"')
            s2_buf_append(b, "\"", 1); /* a quote inside is doubled */
        s2_buf_append(b, p, 1);
    }
    s2_buf_printf(b, "\"%s", sep);
}

static void csv_num(s2_buf *b, double v)
{
    if (isfinite(v))
        s2_buf_printf(b, "%.6g", v);
    s2_buf_append(b, ",", 1);
}

/* A row's TF/s as a fraction of the card's GEMM rate; NAN when either is not a number. */
static double frac_of_gemm(double tflops, double gemm_tflops)
{
    return isfinite(tflops) && gemm_tflops > 0 && isfinite(gemm_tflops) ? tflops / gemm_tflops
                                                                         : NAN;
}

void s2_bench_csv(s2_buf *b, const s2_bench_row *rows, int n, double gemm_tflops)
{
    /* The fractions, then the backward, come last: readers that index the earlier columns
     * keep working. */
    s2_buf_printf(b, "spec,impl,N,G,S,d,H,Hkv,dtype,mode,fwd_ms,fwd_tflops,fb_ms,fb_tflops,"
                     "peak_gib,rel_err_vs_ours,failed,note,fwd_frac_of_gemm,fb_frac_of_gemm,"
                     "bwd_ms,bwd_tflops\n");
    for (int i = 0; i < n; i++) {
        const s2_bench_row *r = &rows[i];
        csv_str(b, r->spec, ",");
        csv_str(b, r->impl, ",");
        s2_buf_printf(b, "%d,%d,%d,%d,%d,%d,%s,", r->N, r->G, r->S, r->d, r->H, r->Hkv, r->dtype);
        csv_str(b, r->mode, ",");
        csv_num(b, r->fwd_ms);
        csv_num(b, r->fwd_tflops);
        csv_num(b, r->fb_ms);
        csv_num(b, r->fb_tflops);
        csv_num(b, r->peak_gib);
        csv_num(b, r->rel_err);
        s2_buf_printf(b, "%d,", r->failed);
        csv_str(b, r->note, ",");
        csv_num(b, frac_of_gemm(r->fwd_tflops, gemm_tflops));
        csv_num(b, frac_of_gemm(r->fb_tflops, gemm_tflops));
        double bwd_ms, bwd_tflops;
        s2_bench_bwd(r, &bwd_ms, &bwd_tflops);
        csv_num(b, bwd_ms);
        if (isfinite(bwd_tflops))
            s2_buf_printf(b, "%.6g", bwd_tflops);
        s2_buf_append(b, "\n", 1);
    }
}

static json_t *jnum(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

/* Notes may be cut inside a UTF-8 sequence; jansson refuses those rather than emit bad JSON. */
static json_t *jstr(const char *s)
{
    json_t *j = json_string(s);
    return j ? j : json_string("(not valid UTF-8)");
}

char *s2_bench_json(const s2_bench_row *rows, int n, const char *device, uint64_t seed,
                    double gemm_tflops)
{
    json_t *root = json_object(), *arr = json_array();
    if (!root || !arr) {
        json_decref(root);
        json_decref(arr);
        return NULL;
    }
    char hex[32];
    snprintf(hex, sizeof hex, "0x%016llx", (unsigned long long)seed);
    json_object_set_new(root, "device", jstr(device ? device : ""));
    json_object_set_new(root, "seed", json_string(hex));
    json_object_set_new(root, "flops", json_string("S2 FLOPs: fwd 2*N*min(G,N)*d*H; fwd+bwd 3.5x; "
                                                   "bwd (fb_ms - fwd_ms) 2.5x"));
    /* null when not measured (--no-gemm, or it failed), like every number not measured here */
    json_object_set_new(root, "gemm_bf16_tflops", jnum(gemm_tflops > 0 ? gemm_tflops : NAN));
    for (int i = 0; i < n; i++) {
        const s2_bench_row *r = &rows[i];
        json_t *o = json_object();
        json_object_set_new(o, "spec", jstr(r->spec));
        json_object_set_new(o, "impl", jstr(r->impl));
        json_object_set_new(o, "N", json_integer(r->N));
        json_object_set_new(o, "G", json_integer(r->G));
        json_object_set_new(o, "S", json_integer(r->S));
        json_object_set_new(o, "d", json_integer(r->d));
        json_object_set_new(o, "H", json_integer(r->H));
        json_object_set_new(o, "Hkv", json_integer(r->Hkv));
        json_object_set_new(o, "dtype", jstr(r->dtype ? r->dtype : ""));
        json_object_set_new(o, "mode", jstr(r->mode));
        json_object_set_new(o, "fwd_ms", jnum(r->fwd_ms));
        json_object_set_new(o, "fwd_tflops", jnum(r->fwd_tflops));
        json_object_set_new(o, "fb_ms", jnum(r->fb_ms));
        json_object_set_new(o, "fb_tflops", jnum(r->fb_tflops));
        json_object_set_new(o, "peak_gib", jnum(r->peak_gib));
        json_object_set_new(o, "rel_err_vs_ours", jnum(r->rel_err));
        json_object_set_new(o, "failed", json_boolean(r->failed));
        json_object_set_new(o, "note", jstr(r->note));
        json_object_set_new(o, "fwd_frac_of_gemm", jnum(frac_of_gemm(r->fwd_tflops, gemm_tflops)));
        json_object_set_new(o, "fb_frac_of_gemm", jnum(frac_of_gemm(r->fb_tflops, gemm_tflops)));
        double bwd_ms, bwd_tflops;
        s2_bench_bwd(r, &bwd_ms, &bwd_tflops);
        json_object_set_new(o, "bwd_ms", jnum(bwd_ms));
        json_object_set_new(o, "bwd_tflops", jnum(bwd_tflops));
        json_array_append_new(arr, o);
    }
    json_object_set_new(root, "rows", arr);
    char *s = json_dumps(root, JSON_INDENT(2));
    json_decref(root);
    return s;
}

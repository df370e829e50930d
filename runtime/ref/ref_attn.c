/*
 * ref_attn.c — CPU reference for S²-Attn (DESIGN §1): forward, backward, the
 * mask predicate, a naive dense forward that checks the reference itself, and
 * the window of one rank under sequence parallelism (the same code, its key
 * rows gathered from blocks).
 *
 * fp32 storage, fp64 accumulation for every dot product, softmax sum and
 * gradient sum. The forward and backward never scan all N keys of a query:
 * they walk the query's group directly, so the cost is O(T·G·d·H) and the
 * reference stays usable at the paper's context lengths.
 *
 * One abstraction covers all three masks. Each head and sequence has an
 * *order*: a bijection between positions p and order indices i (identity for
 * plain and split heads, i = (p - S) mod N for roll heads), and groups are
 * contiguous runs of order indices. Query i sees keys [group start, i]; key i
 * is seen by queries [i, group end). Roll mode is then plain grouping in the
 * rolled index space, exactly the paper's roll(-S) / attend / roll(+S).
 *
 * Parallelism: work items are (head, chunk of tokens). The forward and dq
 * items own one query head's rows; the dk/dv items own one kv head's rows and
 * loop over its query heads themselves (GQA), so no two threads ever write the
 * same output and the summation order is fixed: results are bitwise
 * independent of the thread count.
 */
#include "runtime/ref/ref.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "gen/util.h"
#include "runtime/core/pool.h"

int s2_ref_threads = 0;

/* Tokens per work item: small enough to balance a single long sequence over
 * many threads, large enough that claiming an item costs nothing. */
enum { CHUNK = 32 };

/* ---- parallel for (shared with ref_lora.c through ref.h) ---- */

typedef struct pf_call {
    void (*fn)(void *ctx, int item, void *scratch);
    void *ctx;
    void *const *scratch; /* one buffer per worker of the pool call */
} pf_call;

static s2_status pf_item(void *arg, int item, int worker, s2_error *err) {
    const pf_call *c = arg;
    c->fn(c->ctx, item, c->scratch[worker]);
    return S2_OK;
}

int s2_ref_parallel_for(int n, size_t scratch_bytes, void (*fn)(void *ctx, int item, void *scratch),
                        void *ctx) {
    if (n <= 0)
        return 0;
    int width = 0;
    if (s2_pool_width(n, s2_ref_threads > 0 ? s2_ref_threads : 0, &width, NULL) != S2_OK)
        return -1;
    /* A worker without scratch takes no part: the call runs on as many as got theirs. */
    void *scratch[S2_POOL_MAX_THREADS];
    int have = 0;
    while (have < width && (scratch[have] = malloc(scratch_bytes ? scratch_bytes : 1)))
        have++;
    pf_call c = {.fn = fn, .ctx = ctx, .scratch = scratch};
    const int rc = have > 0 && s2_pool_for(n, have, pf_item, &c, NULL) == S2_OK ? 0 : -1;
    for (int i = 0; i < have; i++)
        free(scratch[i]);
    return rc;
}

/* ---- masks ---- */

static long long mod_ll(long long x, long long n) { return ((x % n) + n) % n; }

int s2_ref_attn_visible(const s2_ref_attn *a, int h, int N, int p, int pk) {
    if (N <= 0 || p < 0 || pk < 0 || p >= N || pk >= N || a->G < 1)
        return 0;
    long long G = a->G, S = a->S;
    if (h < a->H / 2) /* plain */
        return p / G == pk / G && pk <= p;
    if (a->mode == S2_SHIFT_SPLIT)
        return (p + S) / G == (pk + S) / G && pk <= p;
    /* roll: group and causal order both live in the rolled index (p - S) mod N */
    long long r = mod_ll(p - S, N), rk = mod_ll(pk - S, N);
    return r / G == rk / G && rk <= r;
}

/* The order of one head in one sequence (see the file comment). */
typedef struct order {
    long long N, G;
    long long off;  /* split: group of order index i is floor((i + off) / G); else 0 */
    long long roll; /* roll: order index i is position (i + roll) mod N; else 0 */
} order;

static order order_for(const s2_ref_attn *a, int h, int N) {
    order o = {.N = N, .G = a->G, .off = 0, .roll = 0};
    if (h >= a->H / 2) {
        if (a->mode == S2_SHIFT_ROLL)
            o.roll = mod_ll(a->S, N);
        else
            o.off = a->S;
    }
    return o;
}

static long long ord_of(const order *o, long long p) {
    return o->roll ? mod_ll(p - o->roll, o->N) : p;
}
static long long pos_of(const order *o, long long i) { return o->roll ? (i + o->roll) % o->N : i; }

/* [*gs, *ge): the order indices of the group holding order index i, clipped to the sequence. */
static void group_of(const order *o, long long i, long long *gs, long long *ge) {
    long long first = (i + o->off) / o->G * o->G - o->off;
    *gs = first > 0 ? first : 0;
    *ge = first + o->G < o->N ? first + o->G : o->N;
}

/* ---- shared helpers ---- */

/* The sequence holding packed token t: its first token and its length. */
static void seq_of(const s2_ref_attn *a, int t, int *start, int *n) {
    if (!a->cu_seqlens) {
        *start = 0;
        *n = a->T;
        return;
    }
    const int32_t *cu = a->cu_seqlens;
    int lo = 0, hi = a->B - 1; /* largest b with cu[b] <= t: skips empty sequences */
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (cu[mid] <= t)
            lo = mid;
        else
            hi = mid - 1;
    }
    *start = cu[lo];
    *n = cu[lo + 1] - cu[lo];
}

/* Four partial sums: a single fp64 chain is bound by add latency, and this is the hot loop
 * (the order is still fixed, so results stay deterministic). */
static double dot(const float *x, const float *y, int d) {
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int c = 0;
    for (; c + 4 <= d; c += 4) {
        s0 += (double)x[c] * y[c];
        s1 += (double)x[c + 1] * y[c + 1];
        s2 += (double)x[c + 2] * y[c + 2];
        s3 += (double)x[c + 3] * y[c + 3];
    }
    for (; c < d; c++)
        s0 += (double)x[c] * y[c];
    return (s0 + s1) + (s2 + s3);
}

static int valid(const s2_ref_attn *a) {
    return a->T > 0 && a->H > 0 && a->Hkv > 0 && a->H % a->Hkv == 0 && a->d > 0 && a->G >= 1 &&
           (!a->cu_seqlens || a->B > 0);
}

/* On an allocation failure the outputs become NaN, so every check fails loudly. */
static void fill_nan(float *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        p[i] = NAN;
}

static int nchunks(int T) { return (T + CHUNK - 1) / CHUNK; }

/*
 * One context serves the whole-sequence reference and the window (s2_ref_attn_window_*): the
 * same walks over a query's group and a key's queries, so both compute the same sums in the
 * same order; only where rows live differs. Query rows (q, o, dout, dq, lse, D) are those of
 * positions [qoff, qoff + nq) (the whole reference: 0, T). Key rows are the packed k, v, dk, dv
 * arrays, or in a window the caller's blocks, found through `where`.
 */
typedef struct attn_ctx {
    const s2_ref_attn *a;
    const float *q, *k, *v;   /* [nq,H,d], [T,Hkv,d], [T,Hkv,d] (k, v: NULL in a window) */
    const float *o, *lse;     /* backward inputs: [nq,H,d], [H,nq] */
    const float *dout;        /* [nq,H,d] */
    const double *D;          /* [H,nq]: rowsum(dO ∘ O) */
    double *Dw;               /* the same, while it is being written */
    float *o_out, *lse_out;   /* forward outputs */
    float *dq, *dk, *dv;      /* backward outputs (dk, dv: NULL in a window) */
    int nchunk;               /* chunks of the items' rows (nq for queries, T for keys) */
    int nchunk_k;
    int qoff, nq;
    const s2_ref_kv_rows *blk; /* window: the key blocks; NULL: the whole sequence */
    const int32_t *where;      /* window: [Hkv, T] block index + 1 holding (kv head, position) */
    atomic_int missing;        /* window: 1 once a query met a key no block holds */
    int miss_h, miss_p, miss_k; /* the first such (written by the thread that set missing) */
} attn_ctx;

static const float *row(const float *base, int t, int heads, int h, int d) {
    return base + ((size_t)t * heads + h) * d;
}

/* Row of query position t of head h in a query-side array ([nq, H, d]). */
static const float *qrow(const attn_ctx *c, const float *base, int t, int h) {
    return row(base, t - c->qoff, c->a->H, h, c->a->d);
}

static size_t lse_at(const attn_ctx *c, int h, int t) {
    return (size_t)h * c->nq + (size_t)(t - c->qoff);
}

/* Key-side row of kv head kvh at packed token tk in k (0), v (1), dk (2) or dv (3); NULL when
 * a window's blocks do not hold it. */
static float *kvrow(const attn_ctx *c, int which, int tk, int kvh) {
    const s2_ref_attn *a = c->a;
    if (!c->blk) {
        const float *base = which == 0 ? c->k : which == 1 ? c->v : which == 2 ? c->dk : c->dv;
        return (float *)row(base, tk, a->Hkv, kvh, a->d);
    }
    int b = c->where[(size_t)kvh * a->T + tk];
    if (!b)
        return NULL;
    const s2_ref_kv_rows *k = &c->blk[b - 1];
    const float *base = which == 0 ? k->k : which == 1 ? k->v : which == 2 ? k->dk : k->dv;
    return (float *)row(base, tk - k->lo, k->kv_hi - k->kv_lo, kvh - k->kv_lo, a->d);
}

/* A window's query met a key no block holds: remembered once, reported by the caller. */
static void note_missing(const attn_ctx *c, int h, int t, int tk) {
    attn_ctx *m = (attn_ctx *)c;
    int expect = 0;
    if (atomic_compare_exchange_strong(&m->missing, &expect, 1)) {
        m->miss_h = h;
        m->miss_p = t;
        m->miss_k = tk;
    }
}

/* ---- forward ---- */

/* One query row: online softmax over its group's keys, acc [d] scratch. */
static void fwd_query(const attn_ctx *c, int h, int t, double *acc) {
    const s2_ref_attn *a = c->a;
    int d = a->d, s0, N;
    seq_of(a, t, &s0, &N);
    order o = order_for(a, h, N);
    long long i = ord_of(&o, t - s0), gs, ge;
    group_of(&o, i, &gs, &ge);
    int kvh = h / (a->H / a->Hkv);
    const float *qr = qrow(c, c->q, t, h);
    double m = -INFINITY, l = 0, scale = a->scale;
    for (int x = 0; x < d; x++)
        acc[x] = 0;
    for (long long j = gs; j <= i; j++) {
        int tk = s0 + (int)pos_of(&o, j);
        const float *kr = kvrow(c, 0, tk, kvh), *vr = kvrow(c, 1, tk, kvh);
        if (!kr) {
            note_missing(c, h, t, tk);
            return;
        }
        double s = scale * dot(qr, kr, d);
        if (s > m) { /* new max: rescale what was summed so far (exp(-inf) = 0 at the start) */
            double r = exp(m - s);
            l *= r;
            for (int x = 0; x < d; x++)
                acc[x] *= r;
            m = s;
        }
        double w = exp(s - m);
        l += w;
        for (int x = 0; x < d; x++)
            acc[x] += w * vr[x];
    }
    float *orow = (float *)qrow(c, c->o_out, t, h);
    for (int x = 0; x < d; x++)
        orow[x] = (float)(acc[x] / l);
    c->lse_out[lse_at(c, h, t)] = (float)(m + log(l));
}

static void fwd_item(void *vc, int item, void *scratch) {
    const attn_ctx *c = vc;
    int h = item / c->nchunk, t0 = c->qoff + item % c->nchunk * CHUNK;
    int t1 = t0 + CHUNK < c->qoff + c->nq ? t0 + CHUNK : c->qoff + c->nq;
    for (int t = t0; t < t1; t++)
        fwd_query(c, h, t, scratch);
}

void s2_ref_attn_forward(const s2_ref_attn *a, const float *q, const float *k, const float *v,
                         float *o, float *lse) {
    if (!valid(a))
        return;
    attn_ctx c = {.a = a, .q = q, .k = k, .v = v, .o_out = o, .lse_out = lse,
                  .nchunk = nchunks(a->T), .qoff = 0, .nq = a->T};
    atomic_init(&c.missing, 0);
    if (s2_ref_parallel_for(a->H * c.nchunk, sizeof(double) * a->d, fwd_item, &c) != 0) {
        fill_nan(o, (size_t)a->T * a->H * a->d);
        fill_nan(lse, (size_t)a->H * a->T);
    }
}

/* ---- backward ---- */

static void delta_item(void *vc, int item, void *scratch) {
    const attn_ctx *c = vc;
    int h = item / c->nchunk, t0 = c->qoff + item % c->nchunk * CHUNK;
    int t1 = t0 + CHUNK < c->qoff + c->nq ? t0 + CHUNK : c->qoff + c->nq;
    for (int t = t0; t < t1; t++)
        c->Dw[lse_at(c, h, t)] = dot(qrow(c, c->dout, t, h), qrow(c, c->o, t, h), c->a->d);
}

/* The softmax probability and dS of one (query head h, query t, key row kr / vr) pair. */
static void pair_grad(const attn_ctx *c, int h, int t, const float *kr, const float *vr,
                      double *P, double *dS) {
    const s2_ref_attn *a = c->a;
    int d = a->d;
    double s = (double)a->scale * dot(qrow(c, c->q, t, h), kr, d);
    *P = exp(s - c->lse[lse_at(c, h, t)]);
    double dP = dot(qrow(c, c->dout, t, h), vr, d);
    *dS = *P * (dP - c->D[lse_at(c, h, t)]);
}

/* dq of one query row: scale · sum over its keys of dS · k. acc [d]. */
static void dq_query(const attn_ctx *c, int h, int t, double *acc) {
    const s2_ref_attn *a = c->a;
    int d = a->d, s0, N;
    seq_of(a, t, &s0, &N);
    order o = order_for(a, h, N);
    long long i = ord_of(&o, t - s0), gs, ge;
    group_of(&o, i, &gs, &ge);
    int kvh = h / (a->H / a->Hkv);
    for (int x = 0; x < d; x++)
        acc[x] = 0;
    for (long long j = gs; j <= i; j++) {
        int tk = s0 + (int)pos_of(&o, j);
        const float *kr = kvrow(c, 0, tk, kvh), *vr = kvrow(c, 1, tk, kvh);
        if (!kr) {
            note_missing(c, h, t, tk);
            return;
        }
        double P, dS;
        pair_grad(c, h, t, kr, vr, &P, &dS);
        for (int x = 0; x < d; x++)
            acc[x] += dS * kr[x];
    }
    float *out = (float *)qrow(c, c->dq, t, h);
    for (int x = 0; x < d; x++)
        out[x] = (float)(a->scale * acc[x]);
}

/* dk, dv of one key row of kv head kvh: sums over every query head of kvh and every query that
 * sees the key (order indices [i, group end)) — in a window, the window's queries only. A
 * window skips the rows its blocks do not hold. acc [2d]. */
static void dkv_key(const attn_ctx *c, int kvh, int tk, double *acc) {
    const s2_ref_attn *a = c->a;
    int d = a->d, s0, N, rep = a->H / a->Hkv;
    double *ak = acc, *av = acc + d;
    const float *kr = kvrow(c, 0, tk, kvh), *vr = kvrow(c, 1, tk, kvh);
    if (!kr)
        return;
    seq_of(a, tk, &s0, &N);
    for (int x = 0; x < 2 * d; x++)
        acc[x] = 0;
    for (int h = kvh * rep; h < (kvh + 1) * rep; h++) {
        order o = order_for(a, h, N);
        long long i = ord_of(&o, tk - s0), gs, ge;
        group_of(&o, i, &gs, &ge);
        for (long long u = i; u < ge; u++) {
            int t = s0 + (int)pos_of(&o, u);
            if (t < c->qoff || t >= c->qoff + c->nq)
                continue;
            double P, dS;
            pair_grad(c, h, t, kr, vr, &P, &dS);
            const float *qr = qrow(c, c->q, t, h), *dor = qrow(c, c->dout, t, h);
            for (int x = 0; x < d; x++) {
                ak[x] += dS * qr[x];
                av[x] += P * dor[x];
            }
        }
    }
    float *k_out = kvrow(c, 2, tk, kvh), *v_out = kvrow(c, 3, tk, kvh);
    for (int x = 0; x < d; x++) {
        k_out[x] = (float)(a->scale * ak[x]);
        v_out[x] = (float)av[x];
    }
}

/* Items [0, H·nchunk) are dq rows of one query head; the rest dk/dv rows of one kv head. */
static void grad_item(void *vc, int item, void *scratch) {
    const attn_ctx *c = vc;
    int nq = c->a->H * c->nchunk;
    if (item < nq) {
        int h = item / c->nchunk, t0 = c->qoff + item % c->nchunk * CHUNK;
        int t1 = t0 + CHUNK < c->qoff + c->nq ? t0 + CHUNK : c->qoff + c->nq;
        for (int t = t0; t < t1; t++)
            dq_query(c, h, t, scratch);
        return;
    }
    item -= nq;
    int kvh = item / c->nchunk_k, t0 = item % c->nchunk_k * CHUNK;
    int t1 = t0 + CHUNK < c->a->T ? t0 + CHUNK : c->a->T;
    for (int t = t0; t < t1; t++)
        dkv_key(c, kvh, t, scratch);
}

/* D, then dq and dk/dv; 0, or -1 when the work could not run (out of memory). */
static int backward_run(attn_ctx *c) {
    const s2_ref_attn *a = c->a;
    double *D = malloc(sizeof(double) * a->H * (size_t)(c->nq ? c->nq : 1));
    int fail = !D;
    if (!fail) {
        c->Dw = D;
        c->D = D;
        /* D first: every dk/dv item reads D of many queries. */
        fail = s2_ref_parallel_for(a->H * c->nchunk, 0, delta_item, c) != 0;
    }
    if (!fail)
        fail = s2_ref_parallel_for(a->H * c->nchunk + a->Hkv * c->nchunk_k,
                                   sizeof(double) * 2 * a->d, grad_item, c) != 0;
    free(D);
    return fail ? -1 : 0;
}

void s2_ref_attn_backward(const s2_ref_attn *a, const float *q, const float *k, const float *v,
                          const float *o, const float *lse, const float *dout, float *dq,
                          float *dk, float *dv) {
    if (!valid(a))
        return;
    attn_ctx c = {.a = a, .q = q, .k = k, .v = v, .o = o, .lse = lse, .dout = dout,
                  .dq = dq, .dk = dk, .dv = dv, .nchunk = nchunks(a->T),
                  .nchunk_k = nchunks(a->T), .qoff = 0, .nq = a->T};
    atomic_init(&c.missing, 0);
    if (backward_run(&c)) {
        fill_nan(dq, (size_t)a->T * a->H * a->d);
        fill_nan(dk, (size_t)a->T * a->Hkv * a->d);
        fill_nan(dv, (size_t)a->T * a->Hkv * a->d);
    }
}

/* ---- window (sequence parallelism) ---- */

/* Checks a window's arguments and maps every (kv head, position) to the block holding it. */
static s2_status window_setup(const s2_ref_attn *a, int qlo, int qhi, const s2_ref_kv_rows *kv,
                              int n_kv, int32_t **where, s2_error *err) {
    *where = NULL;
    if (!valid(a) || a->cu_seqlens)
        return s2_error_set(err, S2_ERR_INVALID, "attention window: expected one sequence "
                            "(cu_seqlens NULL) of T >= 1 tokens with H, Hkv >= 1 (H %% Hkv == "
                            "0), d >= 1, G >= 1; got T = %d, H = %d, Hkv = %d, d = %d, G = %d%s",
                            a->T, a->H, a->Hkv, a->d, a->G, a->cu_seqlens ? ", cu_seqlens" : "");
    if (qlo < 0 || qlo >= qhi || qhi > a->T)
        return s2_error_set(err, S2_ERR_INVALID, "attention window: queries [%d, %d) of a "
                            "sequence of %d tokens: expected 0 <= qlo < qhi <= %d",
                            qlo, qhi, a->T, a->T);
    if (n_kv < 0 || (n_kv && !kv))
        return s2_error_set(err, S2_ERR_INVALID, "attention window: %d key blocks", n_kv);
    int32_t *w = calloc((size_t)a->Hkv * a->T, sizeof *w);
    if (!w)
        return s2_error_set(err, S2_ERR_NOMEM, "attention window: out of memory for the key "
                            "index of %d kv heads x %d positions", a->Hkv, a->T);
    for (int b = 0; b < n_kv; b++) {
        const s2_ref_kv_rows *k = &kv[b];
        if (k->lo < 0 || k->lo > k->hi || k->hi > a->T || k->kv_lo < 0 || k->kv_lo > k->kv_hi ||
            k->kv_hi > a->Hkv || (k->lo < k->hi && k->kv_lo < k->kv_hi && (!k->k || !k->v))) {
            free(w);
            return s2_error_set(err, S2_ERR_INVALID, "attention window: key block %d holds "
                                "positions [%d, %d) of kv heads [%d, %d): expected ranges inside "
                                "[0, %d) and [0, %d) and k, v rows", b, k->lo, k->hi, k->kv_lo,
                                k->kv_hi, a->T, a->Hkv);
        }
        for (int h = k->kv_lo; h < k->kv_hi; h++)
            for (int p = k->lo; p < k->hi; p++) {
                int32_t *slot = &w[(size_t)h * a->T + p];
                if (*slot) {
                    s2_error_set(err, S2_ERR_INVALID, "attention window: key blocks %d and %d "
                                 "both hold position %d of kv head %d", *slot - 1, b, p, h);
                    free(w);
                    return S2_ERR_INVALID;
                }
                *slot = b + 1;
            }
    }
    *where = w;
    return S2_OK;
}

static s2_status window_missing(const attn_ctx *c, const char *what, s2_error *err) {
    return s2_error_set(err, S2_ERR_INVALID, "attention window %s: query %d of head %d sees key "
                        "%d of kv head %d, which no key block holds", what, c->miss_p,
                        c->miss_h, c->miss_k, c->miss_h / (c->a->H / c->a->Hkv));
}

s2_status s2_ref_attn_window_forward(const s2_ref_attn *a, int qlo, int qhi, const float *q,
                                     const s2_ref_kv_rows *kv, int n_kv, float *o, float *lse,
                                     s2_error *err) {
    int32_t *where;
    s2_status st = window_setup(a, qlo, qhi, kv, n_kv, &where, err);
    if (st)
        return st;
    int nq = qhi - qlo;
    attn_ctx c = {.a = a, .q = q, .o_out = o, .lse_out = lse, .nchunk = nchunks(nq),
                  .qoff = qlo, .nq = nq, .blk = kv, .where = where};
    atomic_init(&c.missing, 0);
    int fail = s2_ref_parallel_for(a->H * c.nchunk, sizeof(double) * a->d, fwd_item, &c) != 0;
    free(where);
    if (fail || atomic_load(&c.missing)) {
        fill_nan(o, (size_t)nq * a->H * a->d);
        fill_nan(lse, (size_t)a->H * nq);
        return fail ? s2_error_set(err, S2_ERR_NOMEM, "attention window forward: out of memory")
                    : window_missing(&c, "forward", err);
    }
    return S2_OK;
}

s2_status s2_ref_attn_window_backward(const s2_ref_attn *a, int qlo, int qhi, const float *q,
                                      const s2_ref_kv_rows *kv, int n_kv, const float *o,
                                      const float *lse, const float *dout, float *dq,
                                      s2_error *err) {
    int32_t *where;
    s2_status st = window_setup(a, qlo, qhi, kv, n_kv, &where, err);
    if (st)
        return st;
    for (int b = 0; b < n_kv; b++)
        if (kv[b].lo < kv[b].hi && kv[b].kv_lo < kv[b].kv_hi && (!kv[b].dk || !kv[b].dv)) {
            free(where);
            return s2_error_set(err, S2_ERR_INVALID, "attention window backward: key block %d "
                                "has no dk, dv rows to write", b);
        }
    int nq = qhi - qlo;
    attn_ctx c = {.a = a, .q = q, .o = o, .lse = lse, .dout = dout, .dq = dq,
                  .nchunk = nchunks(nq), .nchunk_k = nchunks(a->T), .qoff = qlo, .nq = nq,
                  .blk = kv, .where = where};
    atomic_init(&c.missing, 0);
    int fail = backward_run(&c);
    free(where);
    if (fail || atomic_load(&c.missing)) {
        fill_nan(dq, (size_t)nq * a->H * a->d);
        for (int b = 0; b < n_kv; b++) {
            size_t n = (size_t)(kv[b].hi - kv[b].lo) * (kv[b].kv_hi - kv[b].kv_lo) * a->d;
            if (kv[b].dk && kv[b].dv) {
                fill_nan(kv[b].dk, n);
                fill_nan(kv[b].dv, n);
            }
        }
        return fail ? s2_error_set(err, S2_ERR_NOMEM, "attention window backward: out of memory")
                    : window_missing(&c, "backward", err);
    }
    return S2_OK;
}

/* ---- naive dense forward ---- */

/* One query row of one sequence by brute force: every key scored, visible() decides. sc [N]. */
static void naive_row(const s2_ref_attn *a, const float *q, const float *k, const float *v,
                      float *o, float *lse, int h, int s0, int N, int p, double *sc) {
    int d = a->d, kvh = h / (a->H / a->Hkv), t = s0 + p;
    double m = -INFINITY;
    for (int pk = 0; pk < N; pk++) {
        sc[pk] = -INFINITY;
        if (s2_ref_attn_visible(a, h, N, p, pk)) {
            const float *qr = row(q, t, a->H, h, d), *kr = row(k, s0 + pk, a->Hkv, kvh, d);
            sc[pk] = (double)a->scale * dot(qr, kr, d);
        }
        if (sc[pk] > m)
            m = sc[pk];
    }
    double l = 0;
    for (int pk = 0; pk < N; pk++) {
        sc[pk] = exp(sc[pk] - m); /* masked keys: exp(-inf) = 0 */
        l += sc[pk];
    }
    for (int x = 0; x < d; x++) {
        double acc = 0;
        for (int pk = 0; pk < N; pk++)
            acc += sc[pk] / l * row(v, s0 + pk, a->Hkv, kvh, d)[x];
        o[((size_t)t * a->H + h) * d + x] = (float)acc;
    }
    lse[(size_t)h * a->T + t] = (float)(m + log(l));
}

void s2_ref_attn_naive_forward(const s2_ref_attn *a, const float *q, const float *k,
                               const float *v, float *o, float *lse) {
    if (!valid(a))
        return;
    int nseq = a->cu_seqlens ? a->B : 1;
    double *sc = malloc(sizeof(double) * a->T);
    if (!sc) {
        fill_nan(o, (size_t)a->T * a->H * a->d);
        fill_nan(lse, (size_t)a->H * a->T);
        return;
    }
    for (int b = 0; b < nseq; b++) {
        int s0 = a->cu_seqlens ? a->cu_seqlens[b] : 0;
        int N = a->cu_seqlens ? a->cu_seqlens[b + 1] - s0 : a->T;
        for (int h = 0; h < a->H; h++)
            for (int p = 0; p < N; p++)
                naive_row(a, q, k, v, o, lse, h, s0, N, p, sc);
    }
    free(sc);
}

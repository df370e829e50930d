/*
 * ref_attn.c — CPU reference for S²-Attn (DESIGN §1): forward, backward, the
 * mask predicate and a naive dense forward that checks the reference itself.
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
#include "ref.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "../gen/util.h"

int s2_ref_threads = 0;

/* Tokens per work item: small enough to balance a single long sequence over
 * many threads, large enough that claiming an item costs nothing. */
enum { CHUNK = 32, MAX_THREADS = 256 };

/* ---- parallel for (shared with ref_lora.c through ref.h) ---- */

typedef struct pf_shared {
    atomic_int next;  /* next unclaimed item */
    atomic_int done;  /* items finished */
    int n;
    size_t scratch_bytes;
    void (*fn)(void *ctx, int item, void *scratch);
    void *ctx;
} pf_shared;

static void *pf_worker(void *arg) {
    pf_shared *sh = arg;
    /* A thread without scratch claims nothing: the others take its share. */
    void *scratch = malloc(sh->scratch_bytes ? sh->scratch_bytes : 1);
    if (!scratch)
        return NULL;
    for (;;) {
        int i = atomic_fetch_add(&sh->next, 1);
        if (i >= sh->n)
            break;
        sh->fn(sh->ctx, i, scratch);
        atomic_fetch_add(&sh->done, 1);
    }
    free(scratch);
    return NULL;
}

int s2_ref_parallel_for(int n, size_t scratch_bytes, void (*fn)(void *ctx, int item, void *scratch),
                        void *ctx) {
    if (n <= 0)
        return 0;
    pf_shared sh = {.n = n, .scratch_bytes = scratch_bytes, .fn = fn, .ctx = ctx};
    atomic_init(&sh.next, 0);
    atomic_init(&sh.done, 0);
    int nt = s2_ref_threads > 0 ? s2_ref_threads : s2_cpu_count();
    if (nt > n)
        nt = n;
    if (nt > MAX_THREADS)
        nt = MAX_THREADS;
    pthread_t tid[MAX_THREADS];
    int started = 0;
    for (int i = 1; i < nt; i++) /* the caller is worker 0 */
        if (pthread_create(&tid[started], NULL, pf_worker, &sh) == 0)
            started++;
    pf_worker(&sh);
    for (int i = 0; i < started; i++)
        pthread_join(tid[i], NULL);
    return atomic_load(&sh.done) == n ? 0 : -1;
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

typedef struct attn_ctx {
    const s2_ref_attn *a;
    const float *q, *k, *v;   /* [T,H,d], [T,Hkv,d], [T,Hkv,d] */
    const float *o, *lse;     /* backward inputs: [T,H,d], [H,T] */
    const float *dout;        /* [T,H,d] */
    const double *D;          /* [H,T]: rowsum(dO ∘ O) */
    double *Dw;               /* the same, while it is being written */
    float *o_out, *lse_out;   /* forward outputs */
    float *dq, *dk, *dv;      /* backward outputs */
    int nchunk;
} attn_ctx;

static const float *row(const float *base, int t, int heads, int h, int d) {
    return base + ((size_t)t * heads + h) * d;
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
    const float *qr = row(c->q, t, a->H, h, d);
    double m = -INFINITY, l = 0, scale = a->scale;
    for (int x = 0; x < d; x++)
        acc[x] = 0;
    for (long long j = gs; j <= i; j++) {
        int tk = s0 + (int)pos_of(&o, j);
        double s = scale * dot(qr, row(c->k, tk, a->Hkv, kvh, d), d);
        if (s > m) { /* new max: rescale what was summed so far (exp(-inf) = 0 at the start) */
            double r = exp(m - s);
            l *= r;
            for (int x = 0; x < d; x++)
                acc[x] *= r;
            m = s;
        }
        double w = exp(s - m);
        const float *vr = row(c->v, tk, a->Hkv, kvh, d);
        l += w;
        for (int x = 0; x < d; x++)
            acc[x] += w * vr[x];
    }
    float *orow = c->o_out + ((size_t)t * a->H + h) * d;
    for (int x = 0; x < d; x++)
        orow[x] = (float)(acc[x] / l);
    c->lse_out[(size_t)h * a->T + t] = (float)(m + log(l));
}

static void fwd_item(void *vc, int item, void *scratch) {
    const attn_ctx *c = vc;
    int h = item / c->nchunk, t0 = item % c->nchunk * CHUNK;
    int t1 = t0 + CHUNK < c->a->T ? t0 + CHUNK : c->a->T;
    for (int t = t0; t < t1; t++)
        fwd_query(c, h, t, scratch);
}

void s2_ref_attn_forward(const s2_ref_attn *a, const float *q, const float *k, const float *v,
                         float *o, float *lse) {
    if (!valid(a))
        return;
    attn_ctx c = {.a = a, .q = q, .k = k, .v = v, .o_out = o, .lse_out = lse,
                  .nchunk = nchunks(a->T)};
    if (s2_ref_parallel_for(a->H * c.nchunk, sizeof(double) * a->d, fwd_item, &c) != 0) {
        fill_nan(o, (size_t)a->T * a->H * a->d);
        fill_nan(lse, (size_t)a->H * a->T);
    }
}

/* ---- backward ---- */

static void delta_item(void *vc, int item, void *scratch) {
    const attn_ctx *c = vc;
    const s2_ref_attn *a = c->a;
    int h = item / c->nchunk, t0 = item % c->nchunk * CHUNK;
    int t1 = t0 + CHUNK < a->T ? t0 + CHUNK : a->T;
    for (int t = t0; t < t1; t++) {
        const float *dor = row(c->dout, t, a->H, h, a->d), *orow = row(c->o, t, a->H, h, a->d);
        c->Dw[(size_t)h * a->T + t] = dot(dor, orow, a->d);
    }
}

/* The softmax probability and dS of one (query head h, query t, key tk) pair. */
static void pair_grad(const attn_ctx *c, int h, int kvh, int t, int tk, double *P, double *dS) {
    const s2_ref_attn *a = c->a;
    int d = a->d;
    double s = (double)a->scale * dot(row(c->q, t, a->H, h, d), row(c->k, tk, a->Hkv, kvh, d), d);
    *P = exp(s - c->lse[(size_t)h * a->T + t]);
    double dP = dot(row(c->dout, t, a->H, h, d), row(c->v, tk, a->Hkv, kvh, d), d);
    *dS = *P * (dP - c->D[(size_t)h * a->T + t]);
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
        double P, dS;
        pair_grad(c, h, kvh, t, tk, &P, &dS);
        const float *kr = row(c->k, tk, a->Hkv, kvh, d);
        for (int x = 0; x < d; x++)
            acc[x] += dS * kr[x];
    }
    float *out = c->dq + ((size_t)t * a->H + h) * d;
    for (int x = 0; x < d; x++)
        out[x] = (float)(a->scale * acc[x]);
}

/* dk, dv of one key row of kv head kvh: sums over every query head of kvh and every query that
 * sees the key (order indices [i, group end)). acc [2d]. */
static void dkv_key(const attn_ctx *c, int kvh, int tk, double *acc) {
    const s2_ref_attn *a = c->a;
    int d = a->d, s0, N, rep = a->H / a->Hkv;
    double *ak = acc, *av = acc + d;
    seq_of(a, tk, &s0, &N);
    for (int x = 0; x < 2 * d; x++)
        acc[x] = 0;
    for (int h = kvh * rep; h < (kvh + 1) * rep; h++) {
        order o = order_for(a, h, N);
        long long i = ord_of(&o, tk - s0), gs, ge;
        group_of(&o, i, &gs, &ge);
        for (long long u = i; u < ge; u++) {
            int t = s0 + (int)pos_of(&o, u);
            double P, dS;
            pair_grad(c, h, kvh, t, tk, &P, &dS);
            const float *qr = row(c->q, t, a->H, h, d), *dor = row(c->dout, t, a->H, h, d);
            for (int x = 0; x < d; x++) {
                ak[x] += dS * qr[x];
                av[x] += P * dor[x];
            }
        }
    }
    float *k_out = c->dk + ((size_t)tk * a->Hkv + kvh) * d;
    float *v_out = c->dv + ((size_t)tk * a->Hkv + kvh) * d;
    for (int x = 0; x < d; x++) {
        k_out[x] = (float)(a->scale * ak[x]);
        v_out[x] = (float)av[x];
    }
}

/* Items [0, H·nchunk) are dq rows of one query head; the rest dk/dv rows of one kv head. */
static void grad_item(void *vc, int item, void *scratch) {
    const attn_ctx *c = vc;
    int nq = c->a->H * c->nchunk, T = c->a->T;
    int kv = item >= nq;
    if (kv)
        item -= nq;
    int h = item / c->nchunk, t0 = item % c->nchunk * CHUNK;
    int t1 = t0 + CHUNK < T ? t0 + CHUNK : T;
    for (int t = t0; t < t1; t++) {
        if (kv)
            dkv_key(c, h, t, scratch);
        else
            dq_query(c, h, t, scratch);
    }
}

void s2_ref_attn_backward(const s2_ref_attn *a, const float *q, const float *k, const float *v,
                          const float *o, const float *lse, const float *dout, float *dq,
                          float *dk, float *dv) {
    if (!valid(a))
        return;
    attn_ctx c = {.a = a, .q = q, .k = k, .v = v, .o = o, .lse = lse, .dout = dout,
                  .dq = dq, .dk = dk, .dv = dv, .nchunk = nchunks(a->T)};
    double *D = malloc(sizeof(double) * a->H * (size_t)a->T);
    int fail = !D;
    if (!fail) {
        c.Dw = D;
        c.D = D;
        /* D first: every dk/dv item reads D of many queries. */
        fail = s2_ref_parallel_for(a->H * c.nchunk, 0, delta_item, &c) != 0;
    }
    if (!fail)
        fail = s2_ref_parallel_for((a->H + a->Hkv) * c.nchunk, sizeof(double) * 2 * a->d,
                                   grad_item, &c) != 0;
    if (fail) {
        fill_nan(dq, (size_t)a->T * a->H * a->d);
        fill_nan(dk, (size_t)a->T * a->Hkv * a->d);
        fill_nan(dv, (size_t)a->T * a->Hkv * a->d);
    }
    free(D);
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

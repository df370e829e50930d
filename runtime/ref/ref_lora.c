/*
 * ref_lora.c — CPU reference for the LoRA linear (DESIGN §1, PEFT shapes):
 *   y  = x W^T + s (x A^T) B^T
 *   dx = dy W + s (dy B) A,   dA = s (dy B)^T x,   dB = s dy^T (x A^T)
 * With dropout p > 0 (PEFT's lora_dropout, on the adapter's input only), x in the adapter
 * terms becomes drop(x) = x ∘ mask · c, c = s2_dropout_scale(p), and dx's adapter term is
 * masked the same way: dx = dy W + s ((dy B) A) ∘ mask · c. The mask comes from
 * templates/philox.cuh (element m*in + k of x), regenerated in the backward, never passed in.
 * fp32 storage, fp64 accumulation; the rank-r intermediates x A^T and dy B are
 * kept in fp64 so they add no rounding of their own, and drop(x) is formed in
 * fp64 (x · c is exact there).
 *
 * Work items own disjoint output rows (rows of y or dx, rows or row pieces of
 * dA, rows of dB), and each sums in a fixed order, so the results do not
 * depend on the thread count.
 */
#include "runtime/ref/ref.h"

#include <math.h>
#include <stdlib.h>

#include "templates/philox.cuh"

/* Columns of dA per work item: dA has only r rows, too few to spread over threads. */
enum { DA_COLS = 256 };

typedef struct lora_ctx {
    const s2_ref_lora *l;
    const float *x;  /* [M, in] */
    const float *W;  /* [out, in] */
    const float *A;  /* [r, in] */
    const float *B;  /* [out, r] */
    const float *dy; /* [M, out] */
    float *y;        /* [M, out] */
    float *dx;       /* [M, in] */
    float *dA;       /* [r, in] */
    float *dB;       /* [out, r] */
    double *xa;      /* [M, r]: x A^T (drop(x) A^T with dropout) */
    double *dyb;     /* [M, r]: dy B */
    /* Dropout; drop = 0 runs the code paths that predate it, so p = 0 is bit-identical. */
    int drop;
    uint32_t thr;        /* s2_dropout_threshold(p) */
    double dscale;       /* s2_dropout_scale(p), the fp32 value a kernel uses */
    unsigned char *mask; /* [M, in], backward only: phase 1 writes it, dA reads it */
} lora_ctx;

static double dot(const float *x, const float *y, int n) {
    double s = 0;
    for (int i = 0; i < n; i++)
        s += (double)x[i] * y[i];
    return s;
}

/* On an allocation failure the outputs become NaN, so every check fails loudly. */
static void fill_nan(float *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        p[i] = NAN;
}

/* x A^T of row m into xa [r]. */
static void xa_row(const lora_ctx *c, int m, double *xa) {
    const s2_ref_lora *l = c->l;
    for (int j = 0; j < l->r; j++)
        xa[j] = dot(c->x + (size_t)m * l->in, c->A + (size_t)j * l->in, l->in);
}

/* NaN fails both comparisons, so it is rejected with the out-of-range values. */
static int dropout_valid(const s2_ref_lora *l) { return l->dropout >= 0 && l->dropout < 1; }

static void set_dropout(lora_ctx *c) {
    const s2_ref_lora *l = c->l;
    c->drop = l->dropout > 0;
    c->thr = s2_dropout_threshold(l->dropout);
    c->dscale = s2_dropout_scale(l->dropout);
}

/* drop(x) of row m into xd [in] (fp64), and its mask bits into mk [in] unless NULL. The mask
 * index of x[m, k] is m*in + k; one Philox call serves the aligned quad of indices it lies in,
 * which need not start at k = 0 when in % 4 != 0. */
static void drop_row(const lora_ctx *c, int m, double *xd, unsigned char *mk) {
    const s2_ref_lora *l = c->l;
    const float *x = c->x + (size_t)m * l->in;
    uint64_t base = (uint64_t)m * (uint64_t)l->in, q = UINT64_MAX; /* no index has quad 2^64-1 */
    int keep[4] = {0};
    for (int k = 0; k < l->in; k++) {
        uint64_t i = base + (uint64_t)k;
        if (i >> 2 != q) {
            q = i >> 2;
            s2_dropout_keep4(l->seed, l->stream, q, c->thr, keep);
        }
        int kb = keep[i & 3];
        xd[k] = kb ? (double)x[k] * c->dscale : 0.0;
        if (mk)
            mk[k] = (unsigned char)kb;
    }
}

/* sum_k xd[k] y[k], for a row already in fp64. */
static double dot_d(const double *xd, const float *y, int n) {
    double s = 0;
    for (int i = 0; i < n; i++)
        s += xd[i] * y[i];
    return s;
}

/* drop(x) A^T of row m into xa [r]; xd [in] receives drop(x[m]). */
static void xa_row_drop(const lora_ctx *c, int m, double *xa, double *xd, unsigned char *mk) {
    const s2_ref_lora *l = c->l;
    drop_row(c, m, xd, mk);
    for (int j = 0; j < l->r; j++)
        xa[j] = dot_d(xd, c->A + (size_t)j * l->in, l->in);
}

/* ---- forward ---- */

static void fwd_item(void *vc, int m, void *scratch) {
    const lora_ctx *c = vc;
    const s2_ref_lora *l = c->l;
    double *xa = scratch; /* [r], then [in] for drop(x[m]) when dropping */
    if (c->drop)
        xa_row_drop(c, m, xa, xa + l->r, NULL);
    else
        xa_row(c, m, xa);
    for (int o = 0; o < l->out; o++) {
        double low = 0;
        for (int j = 0; j < l->r; j++)
            low += xa[j] * c->B[(size_t)o * l->r + j];
        double base = dot(c->x + (size_t)m * l->in, c->W + (size_t)o * l->in, l->in);
        c->y[(size_t)m * l->out + o] = (float)(base + (double)l->scale * low);
    }
}

void s2_ref_lora_forward(const s2_ref_lora *l, const float *x, const float *W, const float *A,
                         const float *B, float *y) {
    if (l->M <= 0 || l->out <= 0 || l->in < 0 || l->r < 0)
        return;
    if (!dropout_valid(l)) {
        fill_nan(y, (size_t)l->M * l->out);
        return;
    }
    lora_ctx c = {.l = l, .x = x, .W = W, .A = A, .B = B, .y = y};
    set_dropout(&c);
    size_t scratch = sizeof(double) * ((size_t)l->r + (c.drop ? (size_t)l->in : 0));
    if (s2_ref_parallel_for(l->M, scratch, fwd_item, &c) != 0)
        fill_nan(y, (size_t)l->M * l->out);
}

/* ---- backward ---- */

/* Phase 1, one row m: xa[m], dyb[m] and dx[m] (and mask[m] when dropping). acc [in], then
 * [in] more when dropping: drop(x[m]), later (dy B) A of row m. */
static void row_item(void *vc, int m, void *scratch) {
    const lora_ctx *c = vc;
    const s2_ref_lora *l = c->l;
    double *xa = c->xa + (size_t)m * l->r, *dyb = c->dyb + (size_t)m * l->r, *acc = scratch;
    const float *dy = c->dy + (size_t)m * l->out;
    double *tmp = acc + l->in;
    const unsigned char *mk = c->drop ? c->mask + (size_t)m * l->in : NULL;
    if (c->drop)
        xa_row_drop(c, m, xa, tmp, c->mask + (size_t)m * l->in);
    else
        xa_row(c, m, xa);
    for (int j = 0; j < l->r; j++) {
        dyb[j] = 0;
        for (int o = 0; o < l->out; o++)
            dyb[j] += (double)dy[o] * c->B[(size_t)o * l->r + j];
    }
    for (int i = 0; i < l->in; i++)
        acc[i] = 0;
    /* Row-wise over W and A (row-major), so the inner loop walks memory in order. */
    for (int o = 0; o < l->out; o++)
        for (int i = 0; i < l->in; i++)
            acc[i] += (double)dy[o] * c->W[(size_t)o * l->in + i];
    if (!c->drop) {
        for (int j = 0; j < l->r; j++)
            for (int i = 0; i < l->in; i++)
                acc[i] += (double)l->scale * dyb[j] * c->A[(size_t)j * l->in + i];
    } else {
        /* The mask multiplies the whole adapter term, so it is summed apart first. */
        for (int i = 0; i < l->in; i++)
            tmp[i] = 0;
        for (int j = 0; j < l->r; j++)
            for (int i = 0; i < l->in; i++)
                tmp[i] += dyb[j] * c->A[(size_t)j * l->in + i];
        for (int i = 0; i < l->in; i++)
            if (mk[i])
                acc[i] += (double)l->scale * c->dscale * tmp[i];
    }
    for (int i = 0; i < l->in; i++)
        c->dx[(size_t)m * l->in + i] = (float)acc[i];
}

static int da_items(const s2_ref_lora *l) { return l->r * ((l->in + DA_COLS - 1) / DA_COLS); }

/* dA[j, i0:i1] = s · sum_m dyb[m, j] drop(x)[m, i0:i1] (x without dropout). acc [DA_COLS]. */
static void da_item(const lora_ctx *c, int item, double *acc) {
    const s2_ref_lora *l = c->l;
    int pieces = (l->in + DA_COLS - 1) / DA_COLS;
    int j = item / pieces, i0 = item % pieces * DA_COLS;
    int i1 = i0 + DA_COLS < l->in ? i0 + DA_COLS : l->in;
    for (int i = i0; i < i1; i++)
        acc[i - i0] = 0;
    for (int m = 0; m < l->M; m++) {
        double g = c->dyb[(size_t)m * l->r + j];
        if (!c->drop) {
            for (int i = i0; i < i1; i++)
                acc[i - i0] += g * c->x[(size_t)m * l->in + i];
        } else {
            /* The mask phase 1 stored: the same bits drop_row formed drop(x) from. */
            const unsigned char *mk = c->mask + (size_t)m * l->in;
            for (int i = i0; i < i1; i++)
                if (mk[i])
                    acc[i - i0] += g * ((double)c->x[(size_t)m * l->in + i] * c->dscale);
        }
    }
    for (int i = i0; i < i1; i++)
        c->dA[(size_t)j * l->in + i] = (float)(l->scale * acc[i - i0]);
}

/* dB[o, :] = s · sum_m dy[m, o] xa[m, :]. acc [r]. */
static void db_item(const lora_ctx *c, int o, double *acc) {
    const s2_ref_lora *l = c->l;
    for (int j = 0; j < l->r; j++)
        acc[j] = 0;
    for (int m = 0; m < l->M; m++) {
        double g = c->dy[(size_t)m * l->out + o];
        for (int j = 0; j < l->r; j++)
            acc[j] += g * c->xa[(size_t)m * l->r + j];
    }
    for (int j = 0; j < l->r; j++)
        c->dB[(size_t)o * l->r + j] = (float)(l->scale * acc[j]);
}

/* Phase 2: items [0, da_items) are pieces of dA, the rest rows of dB. */
static void weight_item(void *vc, int item, void *scratch) {
    const lora_ctx *c = vc;
    int nda = da_items(c->l);
    if (item < nda)
        da_item(c, item, scratch);
    else
        db_item(c, item - nda, scratch);
}

void s2_ref_lora_backward(const s2_ref_lora *l, const float *x, const float *W, const float *A,
                          const float *B, const float *dy, float *dx, float *dA, float *dB) {
    /* M = 0 still runs: dA and dB are then sums over no rows, zero. */
    if (l->M < 0 || l->out < 0 || l->in < 0 || l->r < 0)
        return;
    lora_ctx c = {.l = l, .x = x, .W = W, .A = A, .B = B, .dy = dy, .dx = dx, .dA = dA, .dB = dB};
    set_dropout(&c);
    size_t inter = sizeof(double) * (size_t)l->M * l->r + 1; /* +1: r = 0 is not a failure */
    int fail = !dropout_valid(l);
    if (!fail) {
        c.xa = malloc(inter);
        c.dyb = malloc(inter);
        /* The reference keeps the mask between its two phases for speed (one Philox call per
         * quad of x); a kernel regenerates it instead. 1 byte an element of x. */
        if (c.drop)
            c.mask = malloc((size_t)l->M * l->in + 1);
        fail = !c.xa || !c.dyb || (c.drop && !c.mask);
    }
    size_t rows = sizeof(double) * (size_t)l->in * (c.drop ? 2 : 1);
    if (!fail)
        fail = s2_ref_parallel_for(l->M, rows, row_item, &c) != 0;
    size_t acc = sizeof(double) * (l->r > DA_COLS ? l->r : DA_COLS);
    if (!fail)
        fail = s2_ref_parallel_for(da_items(l) + l->out, acc, weight_item, &c) != 0;
    if (fail) {
        fill_nan(dx, (size_t)l->M * l->in);
        fill_nan(dA, (size_t)l->r * l->in);
        fill_nan(dB, (size_t)l->out * l->r);
    }
    free(c.xa);
    free(c.dyb);
    free(c.mask);
}

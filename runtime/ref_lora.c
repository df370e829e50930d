/*
 * ref_lora.c — CPU reference for the LoRA linear (DESIGN §1, PEFT shapes):
 *   y  = x W^T + s (x A^T) B^T
 *   dx = dy W + s (dy B) A,   dA = s (dy B)^T x,   dB = s dy^T (x A^T)
 * fp32 storage, fp64 accumulation; the rank-r intermediates x A^T and dy B are
 * kept in fp64 so they add no rounding of their own.
 *
 * Work items own disjoint output rows (rows of y or dx, rows or row pieces of
 * dA, rows of dB), and each sums in a fixed order, so the results do not
 * depend on the thread count.
 */
#include "ref.h"

#include <math.h>
#include <stdlib.h>

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
    double *xa;      /* [M, r]: x A^T */
    double *dyb;     /* [M, r]: dy B */
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

/* ---- forward ---- */

static void fwd_item(void *vc, int m, void *scratch) {
    const lora_ctx *c = vc;
    const s2_ref_lora *l = c->l;
    double *xa = scratch; /* [r] */
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
    lora_ctx c = {.l = l, .x = x, .W = W, .A = A, .B = B, .y = y};
    if (s2_ref_parallel_for(l->M, sizeof(double) * l->r, fwd_item, &c) != 0)
        fill_nan(y, (size_t)l->M * l->out);
}

/* ---- backward ---- */

/* Phase 1, one row m: xa[m], dyb[m] and dx[m]. acc [in]. */
static void row_item(void *vc, int m, void *scratch) {
    const lora_ctx *c = vc;
    const s2_ref_lora *l = c->l;
    double *xa = c->xa + (size_t)m * l->r, *dyb = c->dyb + (size_t)m * l->r, *acc = scratch;
    const float *dy = c->dy + (size_t)m * l->out;
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
    for (int j = 0; j < l->r; j++)
        for (int i = 0; i < l->in; i++)
            acc[i] += (double)l->scale * dyb[j] * c->A[(size_t)j * l->in + i];
    for (int i = 0; i < l->in; i++)
        c->dx[(size_t)m * l->in + i] = (float)acc[i];
}

static int da_items(const s2_ref_lora *l) { return l->r * ((l->in + DA_COLS - 1) / DA_COLS); }

/* dA[j, i0:i1] = s · sum_m dyb[m, j] x[m, i0:i1]. acc [DA_COLS]. */
static void da_item(const lora_ctx *c, int item, double *acc) {
    const s2_ref_lora *l = c->l;
    int pieces = (l->in + DA_COLS - 1) / DA_COLS;
    int j = item / pieces, i0 = item % pieces * DA_COLS;
    int i1 = i0 + DA_COLS < l->in ? i0 + DA_COLS : l->in;
    for (int i = i0; i < i1; i++)
        acc[i - i0] = 0;
    for (int m = 0; m < l->M; m++) {
        double g = c->dyb[(size_t)m * l->r + j];
        for (int i = i0; i < i1; i++)
            acc[i - i0] += g * c->x[(size_t)m * l->in + i];
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
    size_t inter = sizeof(double) * (size_t)l->M * l->r + 1; /* +1: r = 0 is not a failure */
    c.xa = malloc(inter);
    c.dyb = malloc(inter);
    int fail = !c.xa || !c.dyb;
    if (!fail)
        fail = s2_ref_parallel_for(l->M, sizeof(double) * l->in, row_item, &c) != 0;
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
}

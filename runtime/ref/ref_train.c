/*
 * ref_train.c — CPU twins of the trainer's small kernels (see ref_train.h for the
 * semantics). Row-wise work goes through s2_ref_parallel_for with one item per row (or
 * column block), so every output element is computed by one thread in a fixed order and the
 * results do not depend on the thread count. Element-wise work (SwiGLU, AdamW) is
 * memory-bound and stays on the calling thread.
 */
#include "runtime/ref/ref_train.h"

#include <math.h>
#include <stdlib.h>

#include "runtime/ref/ref.h"

static void fill_nan(float *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        p[i] = NAN;
}

/* ---- RMSNorm ---- */

typedef struct rms_ctx {
    int M, n;
    double eps;
    const float *x, *w, *dy;
    float *y, *dx, *dw, *rstd_f;
    double *rstd; /* [M], backward only: shared by the dx and dw passes */
} rms_ctx;

/* 1 / sqrt(mean(x^2) + eps) of one row, the mean in fp64 (HF: fp32 x.pow(2).mean(-1)). */
static double row_rstd(const float *xr, int n, double eps) {
    double ss = 0;
    for (int j = 0; j < n; j++)
        ss += (double)xr[j] * xr[j];
    return 1.0 / sqrt(ss / n + eps);
}

static void rms_fwd_item(void *vc, int m, void *scratch) {
    (void)scratch;
    const rms_ctx *c = vc;
    const float *xr = c->x + (size_t)m * c->n;
    float *yr = c->y + (size_t)m * c->n;
    double r = row_rstd(xr, c->n, c->eps);
    for (int j = 0; j < c->n; j++)
        yr[j] = (float)((double)xr[j] * r * c->w[j]);
    if (c->rstd_f)
        c->rstd_f[m] = (float)r;
}

void s2_ref_rmsnorm_forward(int M, int n, double eps, const float *x, const float *w, float *y,
                            float *rstd) {
    if (M <= 0 || n <= 0)
        return;
    rms_ctx c = {.n = n, .eps = eps, .x = x, .w = w, .y = y, .rstd_f = rstd};
    if (s2_ref_parallel_for(M, 0, rms_fwd_item, &c) != 0) {
        fill_nan(y, (size_t)M * n);
        if (rstd)
            fill_nan(rstd, (size_t)M);
    }
}

/* dx of one row: with xh = x r and g = dy w, dx = r (g - xh mean(g xh)); the mean term is the
 * derivative through r, which every element of the row shares. */
static void rms_dx_item(void *vc, int m, void *scratch) {
    (void)scratch;
    rms_ctx *c = vc;
    const float *xr = c->x + (size_t)m * c->n, *dyr = c->dy + (size_t)m * c->n;
    float *dxr = c->dx + (size_t)m * c->n;
    double r = row_rstd(xr, c->n, c->eps);
    double dot = 0;
    for (int j = 0; j < c->n; j++)
        dot += (double)dyr[j] * c->w[j] * ((double)xr[j] * r);
    double mean = dot / c->n;
    for (int j = 0; j < c->n; j++) {
        double xh = (double)xr[j] * r;
        dxr[j] = (float)(r * ((double)dyr[j] * c->w[j] - xh * mean));
    }
    c->rstd[m] = r;
}

enum { RMS_DW_COLS = 64 }; /* columns per dw item: rows are read in contiguous runs */

/* dw for one block of columns, summed over rows in row order (deterministic). */
static void rms_dw_item(void *vc, int blk, void *scratch) {
    const rms_ctx *c = vc;
    double *acc = scratch;
    int j0 = blk * RMS_DW_COLS;
    int j1 = j0 + RMS_DW_COLS < c->n ? j0 + RMS_DW_COLS : c->n;
    for (int j = j0; j < j1; j++)
        acc[j - j0] = 0;
    for (int m = 0; m < c->M; m++) {
        const float *xr = c->x + (size_t)m * c->n, *dyr = c->dy + (size_t)m * c->n;
        for (int j = j0; j < j1; j++)
            acc[j - j0] += (double)dyr[j] * ((double)xr[j] * c->rstd[m]);
    }
    for (int j = j0; j < j1; j++)
        c->dw[j] = (float)acc[j - j0];
}

void s2_ref_rmsnorm_backward(int M, int n, double eps, const float *x, const float *w,
                             const float *dy, float *dx, float *dw) {
    if (n <= 0)
        return;
    if (M <= 0) { /* empty sum */
        for (int j = 0; j < n; j++)
            dw[j] = 0;
        return;
    }
    rms_ctx c = {.M = M, .n = n, .eps = eps, .x = x, .w = w, .dy = dy, .dx = dx, .dw = dw};
    c.rstd = malloc(sizeof(double) * (size_t)M);
    int nblk = (n + RMS_DW_COLS - 1) / RMS_DW_COLS;
    int fail = !c.rstd;
    if (!fail)
        fail = s2_ref_parallel_for(M, 0, rms_dx_item, &c) != 0;
    if (!fail)
        fail = s2_ref_parallel_for(nblk, sizeof(double) * RMS_DW_COLS, rms_dw_item, &c) != 0;
    if (fail) {
        fill_nan(dx, (size_t)M * n);
        fill_nan(dw, (size_t)n);
    }
    free(c.rstd);
}

/* ---- RoPE ---- */

double s2_ref_rope_angle(const s2_ref_rope *r, int32_t p, int j) {
    if (!r->fp32_angles)
        return ((double)p / r->factor) * pow(r->theta, -2.0 * j / r->d);
    /* HF, step by step in fp32: inv_freq = 1 / base ** (arange(0, d, 2).float() / d);
     * inv_freq /= factor (linear scaling); freqs = inv_freq @ position_ids.float(). */
    float e = (float)(2 * j) / (float)r->d;
    float inv = 1.0f / (float)pow(r->theta, (double)e);
    inv = inv / (float)r->factor;
    return (double)(float)((double)inv * (double)(float)p);
}

typedef struct rope_ctx {
    const s2_ref_rope *r;
    int H;
    double sign; /* +1 forward (rotate by +angle), -1 backward (the transpose) */
    const int32_t *pos;
    const float *x;
    float *y;
} rope_ctx;

/* One token, all heads: the angles depend on the position only, so they are computed once
 * per token (scratch holds cos and sin for the d/2 frequencies). */
static void rope_item(void *vc, int t, void *scratch) {
    const rope_ctx *c = vc;
    int d = c->r->d, half = d / 2;
    double *cs = scratch, *sn = cs + half;
    for (int j = 0; j < half; j++) {
        double a = s2_ref_rope_angle(c->r, c->pos[t], j);
        cs[j] = cos(a);
        sn[j] = c->sign * sin(a);
    }
    for (int h = 0; h < c->H; h++) {
        size_t base = ((size_t)t * c->H + h) * d;
        const float *xr = c->x + base;
        float *yr = c->y + base;
        for (int j = 0; j < half; j++) {
            /* both halves are read before either is written, so y may alias x */
            double x1 = xr[j], x2 = xr[j + half];
            yr[j] = (float)(x1 * cs[j] - x2 * sn[j]);        /* x cos + (-x2) sin */
            yr[j + half] = (float)(x2 * cs[j] + x1 * sn[j]); /* x cos + x1 sin */
        }
    }
}

static void rope_apply(const s2_ref_rope *r, int T, int H, const int32_t *pos, const float *x,
                       float *y, double sign) {
    if (T <= 0 || H <= 0 || r->d < 2 || r->d % 2)
        return;
    rope_ctx c = {.r = r, .H = H, .sign = sign, .pos = pos, .x = x, .y = y};
    if (s2_ref_parallel_for(T, sizeof(double) * (size_t)r->d, rope_item, &c) != 0)
        fill_nan(y, (size_t)T * H * r->d);
}

void s2_ref_rope_forward(const s2_ref_rope *r, int T, int H, const int32_t *pos, const float *x,
                         float *y) {
    rope_apply(r, T, H, pos, x, y, 1.0);
}

void s2_ref_rope_backward(const s2_ref_rope *r, int T, int H, const int32_t *pos,
                          const float *dy, float *dx) {
    rope_apply(r, T, H, pos, dy, dx, -1.0);
}

/* ---- SwiGLU ---- */

/* sigmoid without overflow: exp of a non-positive argument only. */
static double sigmoid(double z) {
    if (z >= 0)
        return 1.0 / (1.0 + exp(-z));
    double e = exp(z);
    return e / (1.0 + e);
}

void s2_ref_swiglu_forward(size_t n, const float *g, const float *u, float *h) {
    for (size_t i = 0; i < n; i++) {
        double gi = g[i];
        h[i] = (float)(gi * sigmoid(gi) * u[i]);
    }
}

void s2_ref_swiglu_backward(size_t n, const float *g, const float *u, const float *dh, float *dg,
                            float *du) {
    for (size_t i = 0; i < n; i++) {
        double gi = g[i], s = sigmoid(gi);
        /* d silu / dg = s + g s (1 - s) */
        dg[i] = (float)((double)dh[i] * u[i] * s * (1.0 + gi * (1.0 - s)));
        du[i] = (float)((double)dh[i] * gi * s);
    }
}

/* ---- cross-entropy ---- */

typedef struct xent_ctx {
    int V;
    double denom;
    const float *logits;
    const int32_t *labels;
    float *dlogits;
    double *nll; /* [M]: summed afterwards in row order, so the sum is deterministic */
} xent_ctx;

/* One row: log-sum-exp after subtracting the max (no overflow), nll = lse - logit[label],
 * dlogits = (softmax - onehot) / denom. */
static void xent_item(void *vc, int m, void *scratch) {
    (void)scratch;
    const xent_ctx *c = vc;
    const float *zr = c->logits + (size_t)m * c->V;
    float *dr = c->dlogits ? c->dlogits + (size_t)m * c->V : NULL;
    int32_t lab = c->labels[m];
    if (lab == S2_REF_IGNORE_INDEX) {
        c->nll[m] = 0;
        for (int k = 0; dr && k < c->V; k++)
            dr[k] = 0;
        return;
    }
    double mx = -INFINITY;
    for (int k = 0; k < c->V; k++)
        mx = zr[k] > mx ? zr[k] : mx;
    double se = 0;
    for (int k = 0; k < c->V; k++)
        se += exp((double)zr[k] - mx);
    double lse = mx + log(se);
    c->nll[m] = lse - zr[lab];
    for (int k = 0; dr && k < c->V; k++)
        dr[k] = (float)((exp((double)zr[k] - lse) - (k == lab)) / c->denom);
}

static double xent_fail(int M, int V, float *dlogits, s2_ref_xent_sum *sum, int64_t count) {
    if (dlogits)
        fill_nan(dlogits, (size_t)M * V);
    if (sum)
        *sum = (s2_ref_xent_sum){NAN, count};
    return NAN;
}

double s2_ref_cross_entropy(int M, int V, const float *logits, const int32_t *labels,
                            double denom, float *dlogits, s2_ref_xent_sum *sum) {
    if (M < 0 || V <= 0)
        M = 0;
    int64_t count = 0;
    int bad = 0;
    for (int m = 0; m < M; m++) {
        if (labels[m] == S2_REF_IGNORE_INDEX)
            continue;
        count++;
        bad |= labels[m] < 0 || labels[m] >= V;
    }
    if (bad)
        return xent_fail(M, V, dlogits, sum, count);
    if (count == 0) { /* nothing to learn from: 0, not torch's 0/0 */
        if (dlogits)
            for (size_t i = 0; i < (size_t)M * V; i++)
                dlogits[i] = 0;
        if (sum)
            *sum = (s2_ref_xent_sum){0, 0};
        return 0;
    }
    xent_ctx c = {.V = V, .denom = denom > 0 ? denom : (double)count, .logits = logits,
                  .labels = labels, .dlogits = dlogits};
    c.nll = malloc(sizeof(double) * (size_t)M);
    if (!c.nll || s2_ref_parallel_for(M, 0, xent_item, &c) != 0) {
        free(c.nll);
        return xent_fail(M, V, dlogits, sum, count);
    }
    double total = 0;
    for (int m = 0; m < M; m++)
        total += c.nll[m];
    free(c.nll);
    if (sum)
        *sum = (s2_ref_xent_sum){total, count};
    return total / c.denom;
}

/* ---- AdamW ---- */

void s2_ref_adamw_step(const s2_ref_adamw *o, int64_t t, size_t n, float *p, const float *g,
                       float *m, float *v) {
    if (t < 1) { /* no bias correction exists before the first step: say so loudly */
        fill_nan(p, n);
        return;
    }
    double bc1 = 1.0 - pow(o->beta1, (double)t);
    double bc2 = 1.0 - pow(o->beta2, (double)t);
    double decay = 1.0 - o->lr * o->weight_decay;
    for (size_t i = 0; i < n; i++) {
        double gi = g[i];
        /* Each stored value is rounded to fp32 before the next use, as torch's in-place
         * fp32 ops do, so the twin follows torch to the last bit where libm allows. */
        float pd = (float)(p[i] * decay);
        m[i] = (float)(o->beta1 * m[i] + (1.0 - o->beta1) * gi);
        v[i] = (float)(o->beta2 * v[i] + (1.0 - o->beta2) * gi * gi);
        double denom = sqrt((double)v[i]) / sqrt(bc2) + o->eps;
        p[i] = (float)(pd - (o->lr / bc1) * m[i] / denom);
    }
}

double s2_ref_clip_grad_norm(int n_tensors, float *const *grads, const size_t *sizes,
                             double max_norm) {
    double ss = 0;
    for (int k = 0; k < n_tensors; k++)
        for (size_t i = 0; i < sizes[k]; i++)
            ss += (double)grads[k][i] * grads[k][i];
    double total = sqrt(ss);
    double coef = max_norm / (total + 1e-6);
    if (coef >= 1.0) /* torch clamps the coefficient to 1: a no-op multiply (NaN goes on) */
        return total;
    float cf = (float)coef; /* torch multiplies by an fp32 coefficient */
    for (int k = 0; k < n_tensors; k++)
        for (size_t i = 0; i < sizes[k]; i++)
            grads[k][i] *= cf;
    return total;
}

/* ---- LR schedules ---- */

static double warmup_factor(int64_t step, int64_t warmup) {
    return (double)step / (double)(warmup > 1 ? warmup : 1);
}

double s2_ref_lr_constant_warmup(double base_lr, int64_t step, int64_t warmup) {
    return step < warmup ? base_lr * warmup_factor(step, warmup) : base_lr;
}

double s2_ref_lr_cosine_warmup(double base_lr, int64_t step, int64_t warmup, int64_t total) {
    if (step < warmup)
        return base_lr * warmup_factor(step, warmup);
    int64_t span = total - warmup > 1 ? total - warmup : 1;
    double progress = (double)(step - warmup) / (double)span;
    double f = 0.5 * (1.0 + cos(3.14159265358979323846 * 0.5 * 2.0 * progress)); /* num_cycles = 0.5 */
    return base_lr * (f > 0 ? f : 0);
}

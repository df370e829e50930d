/*
 * test_ref_train.c — the trainer's small CPU twins (runtime/ref/ref_train.h) checked against
 * things that do not share their code: formulas written out here in fp64, numbers worked by
 * hand, and central finite differences of L = sum(dout ∘ out) for every backward.
 *
 * Finite differences: the twins store fp32, so L carries ~1e-7 relative rounding noise; a
 * step of 2^-6 keeps that noise near 1e-5 after dividing by 2h while the truncation error of
 * these smooth functions stays near 1e-4, well inside the 2e-3 tolerance. A wrong sign or a
 * missing term is O(1).
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ref_helpers.h"
#include "runtime/ref/ref_train.h"

static double dot_fd(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)a[i] * b[i];
    return s;
}

/* ---- central finite differences ---- */

#define FD_H 0x1p-6
#define FD_TOL 2e-3

typedef double (*loss_fn)(void *ctx);

/* For every element of x: (L(x + h) - L(x - h)) / (actual step) vs grad. The step is taken
 * from the perturbed fp32 values so rounding of x +- h does not bias the quotient. */
static void check_fd(const char *what, float *x, size_t n, const float *grad, loss_fn f,
                     void *ctx) {
    for (size_t i = 0; i < n; i++) {
        float x0 = x[i];
        float xp = (float)(x0 + FD_H), xm = (float)(x0 - FD_H);
        x[i] = xp;
        double lp = f(ctx);
        x[i] = xm;
        double lm = f(ctx);
        x[i] = x0;
        double fd = (lp - lm) / ((double)xp - (double)xm);
        cr_assert(fabs(fd - grad[i]) <= FD_TOL * (1 + fabs(fd)), "%s[%zu]: analytic %.8g, fd %.8g",
                  what, i, (double)grad[i], fd);
    }
}

/* ---- RMSNorm ---- */

Test(rmsnorm, forward_matches_direct_formula) {
    rng r = rng_seed(1);
    int M = 5, n = 37;
    double eps = 1e-5;
    float *x = rand_f(&r, (size_t)M * n, 2.0), *w = rand_f(&r, n, 1.5);
    float *y = nan_f((size_t)M * n), *rstd = nan_f(M);
    s2_ref_rmsnorm_forward(M, n, eps, x, w, y, rstd);
    for (int m = 0; m < M; m++) {
        double ms = 0;
        for (int j = 0; j < n; j++)
            ms += (double)x[m * n + j] * x[m * n + j] / n;
        double rs = 1 / sqrt(ms + eps);
        cr_assert_float_eq(rstd[m], rs, 1e-6 * rs);
        for (int j = 0; j < n; j++) {
            double want = x[m * n + j] / sqrt(ms + eps) * w[j];
            cr_assert_float_eq(y[m * n + j], want, 1e-6 * (1 + fabs(want)), "y[%d,%d]", m, j);
        }
    }
    /* rstd is optional */
    s2_ref_rmsnorm_forward(M, n, eps, x, w, y, NULL);
    free(x), free(w), free(y), free(rstd);
}

/* eps matters: a zero row gives 0, not NaN, and a tiny row is not blown up to unit scale. */
Test(rmsnorm, eps_guards_zero_rows) {
    float x[4] = {0, 0, 0, 0}, w[4] = {1, 1, 1, 1}, y[4];
    s2_ref_rmsnorm_forward(1, 4, 1e-5, x, w, y, NULL);
    for (int j = 0; j < 4; j++)
        cr_assert_eq(y[j], 0.0f);
    float t[2] = {1e-3f, 1e-3f}, yt[2];
    s2_ref_rmsnorm_forward(1, 2, 1e-5, t, w, yt, NULL);
    cr_assert_float_eq(yt[0], 1e-3 / sqrt(1e-6 + 1e-5), 1e-7);
}

typedef struct rms_fd {
    int M, n;
    float *x, *w, *dy, *y;
} rms_fd;

static double rms_loss(void *vc) {
    rms_fd *c = vc;
    s2_ref_rmsnorm_forward(c->M, c->n, 1e-5, c->x, c->w, c->y, NULL);
    return dot_fd(c->dy, c->y, (size_t)c->M * c->n);
}

Test(rmsnorm, backward_matches_finite_differences) {
    rng r = rng_seed(2);
    rms_fd c = {.M = 3, .n = 9};
    size_t mn = (size_t)c.M * c.n;
    c.x = rand_f(&r, mn, 1.0), c.w = rand_f(&r, c.n, 1.0), c.dy = rand_f(&r, mn, 1.0);
    c.y = nan_f(mn);
    float *dx = nan_f(mn), *dw = nan_f(c.n);
    s2_ref_rmsnorm_backward(c.M, c.n, 1e-5, c.x, c.w, c.dy, dx, dw);
    check_fd("dx", c.x, mn, dx, rms_loss, &c);
    check_fd("dw", c.w, c.n, dw, rms_loss, &c);
    free(c.x), free(c.w), free(c.dy), free(c.y), free(dx), free(dw);
}

/* dw is a sum over rows: with many rows (more than one dw column block, several threads) it
 * equals the row-by-row sum written here. */
Test(rmsnorm, dw_sums_over_rows) {
    rng r = rng_seed(3);
    int M = 41, n = 150;
    size_t mn = (size_t)M * n;
    float *x = rand_f(&r, mn, 1.0), *w = rand_f(&r, n, 1.0), *dy = rand_f(&r, mn, 1.0);
    float *dx = nan_f(mn), *dw = nan_f(n);
    s2_ref_rmsnorm_backward(M, n, 1e-6, x, w, dy, dx, dw);
    for (int j = 0; j < n; j++) {
        double s = 0;
        for (int m = 0; m < M; m++) {
            double ms = 0;
            for (int k = 0; k < n; k++)
                ms += (double)x[m * n + k] * x[m * n + k] / n;
            s += dy[m * n + j] * x[m * n + j] / sqrt(ms + 1e-6);
        }
        cr_assert_float_eq(dw[j], s, 1e-5 * (1 + fabs(s)), "dw[%d]", j);
    }
    float dw0[3] = {NAN, NAN, NAN};
    s2_ref_rmsnorm_backward(0, 3, 1e-6, NULL, w, NULL, NULL, dw0);
    cr_assert(dw0[0] == 0 && dw0[1] == 0 && dw0[2] == 0, "M = 0: dw is an empty sum");
    free(x), free(w), free(dy), free(dx), free(dw);
}

/* ---- RoPE ---- */

/* d = 4, theta = 1e4: inv_freq = {1, 0.01}; position 3 rotates the pair (x0, x2) by 3 rad and
 * (x1, x3) by 0.03 rad. Values worked out by hand (cos 3 = -0.98999250, sin 3 = 0.14112001). */
Test(rope, hand_computed_small_case) {
    s2_ref_rope r = {.d = 4, .theta = 10000, .factor = 1};
    int32_t pos[1] = {3};
    float x[4] = {1, 2, 3, 4}, y[4];
    s2_ref_rope_forward(&r, 1, 1, pos, x, y);
    cr_assert_float_eq(y[0], -1.413352521, 1e-6);
    cr_assert_float_eq(y[1], 1.879118067, 1e-6);
    cr_assert_float_eq(y[2], -2.828857482, 1e-6);
    cr_assert_float_eq(y[3], 4.058191135, 1e-6);
    /* position 0 is the identity */
    pos[0] = 0;
    s2_ref_rope_forward(&r, 1, 1, pos, x, y);
    for (int i = 0; i < 4; i++)
        cr_assert_eq(y[i], x[i]);
}

/* Linear interpolation: position 4p at factor 4 is position p at factor 1, bit for bit (p/4
 * and inv_freq/4 are exact), in both angle modes. */
Test(rope, factor_divides_positions) {
    rng g = rng_seed(4);
    int T = 5, H = 2, d = 16;
    size_t n = (size_t)T * H * d;
    float *x = rand_f(&g, n, 1.0), *y1 = nan_f(n), *y4 = nan_f(n);
    int32_t p1[5] = {0, 1, 7, 1000, 8191}, p4[5];
    for (int t = 0; t < T; t++)
        p4[t] = 4 * p1[t];
    for (int fp32 = 0; fp32 < 2; fp32++) {
        s2_ref_rope r1 = {.d = d, .theta = 10000, .factor = 1, .fp32_angles = fp32};
        s2_ref_rope r4 = r1;
        r4.factor = 4;
        s2_ref_rope_forward(&r1, T, H, p1, x, y1);
        s2_ref_rope_forward(&r4, T, H, p4, x, y4);
        cr_assert(memcmp(y1, y4, n * sizeof(float)) == 0, "fp32_angles=%d", fp32);
    }
    free(x), free(y1), free(y4);
}

/* rotate_half splits the head in halves: x[j] pairs with x[j + d/2], never x[j + 1]. */
Test(rope, rotate_half_convention) {
    int d = 8;
    s2_ref_rope r = {.d = d, .theta = 10000, .factor = 1};
    int32_t pos[1] = {1};
    for (int j = 0; j < d / 2; j++) {
        double a = s2_ref_rope_angle(&r, 1, j);
        float x[8] = {0}, y[8];
        x[j] = 1; /* first half: out[j] = cos, out[j + d/2] = +sin */
        s2_ref_rope_forward(&r, 1, 1, pos, x, y);
        for (int i = 0; i < d; i++) {
            double want = i == j ? cos(a) : i == j + d / 2 ? sin(a) : 0;
            cr_assert_float_eq(y[i], want, 1e-7, "e%d -> y[%d]", j, i);
        }
        memset(x, 0, sizeof x);
        x[j + d / 2] = 1; /* second half: out[j] = -sin, out[j + d/2] = cos */
        s2_ref_rope_forward(&r, 1, 1, pos, x, y);
        for (int i = 0; i < d; i++) {
            double want = i == j ? -sin(a) : i == j + d / 2 ? cos(a) : 0;
            cr_assert_float_eq(y[i], want, 1e-7, "e%d -> y[%d]", j + d / 2, i);
        }
    }
    /* inv_freq[j] = theta^(-2j/d) */
    cr_assert_float_eq(s2_ref_rope_angle(&r, 1, 1), pow(10000, -0.25), 1e-15);
    cr_assert_float_eq(s2_ref_rope_angle(&r, 6, 3), 6 * pow(10000, -0.75), 1e-15);
}

/* A rotation keeps each pair's length, at any position (varlen restarts, long contexts). */
Test(rope, preserves_pair_norms) {
    rng g = rng_seed(5);
    int T = 6, H = 3, d = 16, half = 8;
    size_t n = (size_t)T * H * d;
    float *x = rand_f(&g, n, 3.0), *y = nan_f(n);
    int32_t pos[6] = {0, 1, 2, 0, 1, 32767}; /* two sequences, then a long position */
    for (int fp32 = 0; fp32 < 2; fp32++) {
        s2_ref_rope r = {.d = d, .theta = 500000, .factor = 8, .fp32_angles = fp32};
        s2_ref_rope_forward(&r, T, H, pos, x, y);
        for (size_t row = 0; row < (size_t)T * H; row++)
            for (int j = 0; j < half; j++) {
                const float *a = x + row * d, *b = y + row * d;
                double nx = hypot(a[j], a[j + half]), ny = hypot(b[j], b[j + half]);
                cr_assert_float_eq(ny, nx, 1e-6 * (1 + nx), "row %zu pair %d", row, j);
            }
    }
    free(x), free(y);
}

/* HF's fp32 angles differ from the exact ones by fp32 rounding only: ~p * 2^-24 rad. */
Test(rope, fp32_angles_round_like_fp32) {
    s2_ref_rope r64 = {.d = 128, .theta = 10000, .factor = 4}, r32 = r64;
    r32.fp32_angles = 1;
    for (int32_t p = 0; p < 40000; p += 997)
        for (int j = 0; j < 64; j += 7) {
            double a = s2_ref_rope_angle(&r64, p, j), b = s2_ref_rope_angle(&r32, p, j);
            cr_assert(fabs(a - b) <= 4 * 0x1p-24 * (1 + a), "p %d j %d: %.17g vs %.17g", p, j, a, b);
            cr_assert_eq(b, (double)(float)b, "the angle is an fp32 value");
        }
}

typedef struct rope_fd {
    s2_ref_rope r;
    int T, H;
    const int32_t *pos;
    float *x, *dy, *y;
} rope_fd;

static double rope_loss(void *vc) {
    rope_fd *c = vc;
    s2_ref_rope_forward(&c->r, c->T, c->H, c->pos, c->x, c->y);
    return dot_fd(c->dy, c->y, (size_t)c->T * c->H * c->r.d);
}

Test(rope, backward_matches_finite_differences_and_inverts) {
    rng g = rng_seed(6);
    int32_t pos[3] = {5, 0, 1234};
    rope_fd c = {.r = {.d = 8, .theta = 10000, .factor = 2}, .T = 3, .H = 2, .pos = pos};
    size_t n = (size_t)c.T * c.H * c.r.d;
    c.x = rand_f(&g, n, 1.0), c.dy = rand_f(&g, n, 1.0), c.y = nan_f(n);
    float *dx = nan_f(n);
    s2_ref_rope_backward(&c.r, c.T, c.H, pos, c.dy, dx);
    check_fd("dx", c.x, n, dx, rope_loss, &c);
    /* the transpose of a rotation is its inverse; in place works both ways */
    float *z = xalloc(n * sizeof(float));
    memcpy(z, c.x, n * sizeof(float));
    s2_ref_rope_forward(&c.r, c.T, c.H, pos, z, z);
    s2_ref_rope_backward(&c.r, c.T, c.H, pos, z, z);
    for (size_t i = 0; i < n; i++)
        cr_assert_float_eq(z[i], c.x[i], 1e-6);
    free(c.x), free(c.dy), free(c.y), free(dx), free(z);
}

/* ---- SwiGLU ---- */

Test(swiglu, forward_matches_formula) {
    float g[5] = {-30, -1, 0, 0.5f, 20}, u[5] = {2, 3, 4, -1, 0.5f}, h[5];
    s2_ref_swiglu_forward(5, g, u, h);
    for (int i = 0; i < 5; i++) {
        double want = g[i] / (1 + exp(-(double)g[i])) * u[i];
        cr_assert_float_eq(h[i], want, 1e-6 * (1 + fabs(want)), "h[%d]", i);
    }
}

typedef struct swiglu_fd {
    size_t n;
    float *g, *u, *dh, *h;
} swiglu_fd;

static double swiglu_loss(void *vc) {
    swiglu_fd *c = vc;
    s2_ref_swiglu_forward(c->n, c->g, c->u, c->h);
    return dot_fd(c->dh, c->h, c->n);
}

Test(swiglu, backward_matches_finite_differences) {
    rng r = rng_seed(7);
    swiglu_fd c = {.n = 40};
    c.g = rand_f(&r, c.n, 4.0), c.u = rand_f(&r, c.n, 2.0), c.dh = rand_f(&r, c.n, 1.0);
    c.h = nan_f(c.n);
    float *dg = nan_f(c.n), *du = nan_f(c.n);
    s2_ref_swiglu_backward(c.n, c.g, c.u, c.dh, dg, du);
    check_fd("dg", c.g, c.n, dg, swiglu_loss, &c);
    check_fd("du", c.u, c.n, du, swiglu_loss, &c);
    /* large |g| neither overflows nor NaNs: silu -> g or 0, silu' -> 1 or 0 */
    float gb[2] = {-1000, 1000}, ub[2] = {1, 1}, db[2] = {1, 1}, dgb[2], dub[2];
    s2_ref_swiglu_backward(2, gb, ub, db, dgb, dub);
    cr_assert(dgb[0] == 0 && dgb[1] == 1 && dub[0] == 0 && dub[1] == 1000);
    free(c.g), free(c.u), free(c.dh), free(c.h), free(dg), free(du);
}

/* ---- cross-entropy ---- */

/* log-softmax written out by hand per row */
static double nll_by_hand(const float *z, int V, int lab) {
    double s = 0;
    for (int k = 0; k < V; k++)
        s += exp(z[k]);
    return log(s) - z[lab];
}

Test(xent, matches_log_softmax_with_ignore_index) {
    float z[3 * 4] = {1, 2, 3, 4, /* */ 0.5f, -1, 2, 0, /* */ 9, 9, 9, 9};
    int32_t lab[3] = {3, S2_REF_IGNORE_INDEX, 1};
    float dz[12];
    s2_ref_xent_sum s;
    double loss = s2_ref_cross_entropy(3, 4, z, lab, 0, dz, &s);
    double n0 = nll_by_hand(z, 4, 3), n2 = log(4.0); /* equal logits: -log(1/4) */
    cr_assert_eq(s.count, 2);
    cr_assert_float_eq(s.nll_sum, n0 + n2, 1e-12);
    cr_assert_float_eq(loss, (n0 + n2) / 2, 1e-12);
    cr_assert_float_eq(n0, 0.4401896985, 1e-9, "log(e+e^2+e^3+e^4) - 4, by hand");
    for (int k = 0; k < 4; k++) {
        double p0 = exp(z[k] - (n0 + z[3]));
        cr_assert_float_eq(dz[k], (p0 - (k == 3)) / 2, 1e-7, "dz[0,%d]", k);
        cr_assert_eq(dz[4 + k], 0.0f, "ignored row has no gradient");
        cr_assert_float_eq(dz[8 + k], (0.25 - (k == 1)) / 2, 1e-7, "dz[2,%d]", k);
    }
    /* a given denom (num_items_in_batch) replaces the count */
    double l10 = s2_ref_cross_entropy(3, 4, z, lab, 10, dz, NULL);
    cr_assert_float_eq(l10, (n0 + n2) / 10, 1e-12);
    cr_assert_float_eq(dz[8], 0.25 / 10, 1e-8);
}

Test(xent, stable_for_huge_logits) {
    float z[3] = {1e4f, 1e4f - 1, -1e4f};
    int32_t lab[1] = {1};
    float dz[3];
    double loss = s2_ref_cross_entropy(1, 3, z, lab, 0, dz, NULL);
    double want = log(1 + exp(-1.0) + exp(-2e4)) + 1;
    cr_assert_float_eq(loss, want, 1e-9);
    for (int k = 0; k < 3; k++)
        cr_assert(isfinite(dz[k]));
}

Test(xent, all_ignored_gives_zero_count_and_no_nan) {
    float z[2 * 3] = {1, 2, 3, 4, 5, 6}, dz[6];
    int32_t lab[2] = {S2_REF_IGNORE_INDEX, S2_REF_IGNORE_INDEX};
    s2_ref_xent_sum s = {NAN, -1};
    double loss = s2_ref_cross_entropy(2, 3, z, lab, 0, dz, &s);
    cr_assert_eq(loss, 0.0);
    cr_assert_eq(s.count, 0);
    cr_assert_eq(s.nll_sum, 0.0);
    for (int i = 0; i < 6; i++)
        cr_assert_eq(dz[i], 0.0f);
}

Test(xent, out_of_range_label_is_nan) {
    float z[3] = {1, 2, 3}, dz[3];
    int32_t lab[1] = {3};
    cr_assert(isnan(s2_ref_cross_entropy(1, 3, z, lab, 0, dz, NULL)));
    cr_assert(isnan(dz[0]));
}

typedef struct xent_fd {
    int M, V;
    float *z;
    const int32_t *lab;
} xent_fd;

static double xent_loss(void *vc) {
    xent_fd *c = vc;
    return s2_ref_cross_entropy(c->M, c->V, c->z, c->lab, 0, NULL, NULL);
}

Test(xent, gradient_matches_finite_differences) {
    rng r = rng_seed(8);
    int32_t lab[5] = {2, S2_REF_IGNORE_INDEX, 0, 6, 6};
    xent_fd c = {.M = 5, .V = 7, .lab = lab};
    size_t n = (size_t)c.M * c.V;
    c.z = rand_f(&r, n, 3.0);
    float *dz = nan_f(n);
    s2_ref_cross_entropy(c.M, c.V, c.z, lab, 0, dz, NULL);
    check_fd("dlogits", c.z, n, dz, xent_loss, &c);
    free(c.z), free(dz);
}

/* ---- AdamW ---- */

/* p = 1, g = 0.5, lr 0.1, wd 0.1: decay to 0.99; m = 0.05, v = 0.00025; bias-corrected
 * mhat = 0.5, vhat = 0.25, so the step is 0.1 * 0.5 / (0.5 + 1e-8) and p = 0.89. */
Test(adamw, one_step_by_hand) {
    s2_ref_adamw o = {.lr = 0.1, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.1};
    float p[1] = {1}, g[1] = {0.5f}, m[1] = {0}, v[1] = {0};
    s2_ref_adamw_step(&o, 1, 1, p, g, m, v);
    /* fp32 state: a relative half-ulp is 6e-8 */
    cr_assert_float_eq(m[0], 0.05, 0.05 * 1e-7);
    cr_assert_float_eq(v[0], 0.00025, 0.00025 * 1e-7);
    cr_assert_float_eq(p[0], 0.99 - 0.1 * 0.5 / (0.5 + 1e-8), 1e-7);
}

/* Several steps with changing gradients vs the torch formula in fp64. */
Test(adamw, several_steps_match_torch_formula) {
    rng r = rng_seed(9);
    enum { N = 16, STEPS = 7 };
    s2_ref_adamw o = {.lr = 2e-3, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.05};
    float *p = rand_f(&r, N, 1.0), m[N] = {0}, v[N] = {0};
    double P[N], Mo[N] = {0}, Vo[N] = {0};
    for (int i = 0; i < N; i++)
        P[i] = p[i];
    for (int t = 1; t <= STEPS; t++) {
        float *g = rand_f(&r, N, 1.0 / t);
        s2_ref_adamw_step(&o, t, N, p, g, m, v);
        for (int i = 0; i < N; i++) {
            P[i] -= o.lr * o.weight_decay * P[i];
            Mo[i] = o.beta1 * Mo[i] + (1 - o.beta1) * g[i];
            Vo[i] = o.beta2 * Vo[i] + (1 - o.beta2) * g[i] * g[i];
            double mh = Mo[i] / (1 - pow(o.beta1, t)), vh = Vo[i] / (1 - pow(o.beta2, t));
            P[i] -= o.lr * mh / (sqrt(vh) + o.eps);
        }
        free(g);
    }
    for (int i = 0; i < N; i++) {
        cr_assert_float_eq(p[i], P[i], 1e-6 * (1 + fabs(P[i])), "p[%d]", i);
        cr_assert_float_eq(m[i], Mo[i], 1e-6 * (1e-3 + fabs(Mo[i])), "m[%d]", i);
        cr_assert_float_eq(v[i], Vo[i], 1e-6 * (1e-6 + fabs(Vo[i])), "v[%d]", i);
    }
    free(p);
}

/* Decoupled: weight decay shrinks p directly and never enters the moments (Adam with L2
 * would add wd * p to g and so to m and v). */
Test(adamw, weight_decay_is_decoupled) {
    s2_ref_adamw o = {.lr = 0.01, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.5};
    float p[2] = {2, -3}, g[2] = {0, 0.25f}, m[2] = {0}, v[2] = {0};
    s2_ref_adamw_step(&o, 1, 2, p, g, m, v);
    cr_assert_float_eq(p[0], 2 * (1 - 0.005), 1e-7, "zero gradient: decay only");
    cr_assert_eq(m[0], 0.0f);
    cr_assert_eq(v[0], 0.0f);
    cr_assert_float_eq(m[1], 0.025, 0.025 * 1e-7, "m ignores wd");
    cr_assert_float_eq(p[1], -3 * (1 - 0.005) - 0.01 * 0.25 / (0.25 + 1e-8), 1e-6);
    float q[1] = {1};
    s2_ref_adamw_step(&o, 0, 1, q, g, m, v);
    cr_assert(isnan(q[0]), "step 0 has no bias correction");
}

/* ---- gradient clipping ---- */

Test(clip, global_norm_like_torch) {
    float a[2] = {3, 4}, b[1] = {12};
    float *gs[2] = {a, b};
    size_t sz[2] = {2, 1};
    double n = s2_ref_clip_grad_norm(2, gs, sz, 100);
    cr_assert_float_eq(n, 13, 1e-12);
    cr_assert(a[0] == 3 && a[1] == 4 && b[0] == 12, "under max_norm: untouched");
    n = s2_ref_clip_grad_norm(2, gs, sz, 1);
    cr_assert_float_eq(n, 13, 1e-12, "returns the norm before clipping");
    double c = 1 / (13 + 1e-6);
    cr_assert_float_eq(a[0], 3 * c, 1e-7);
    cr_assert_float_eq(a[1], 4 * c, 1e-7);
    cr_assert_float_eq(b[0], 12 * c, 1e-7);
    /* a NaN gradient poisons everything, as torch without error_if_nonfinite */
    float z[2] = {NAN, 1};
    float *gz[1] = {z};
    size_t s1[1] = {2};
    cr_assert(isnan(s2_ref_clip_grad_norm(1, gz, s1, 1)));
    cr_assert(isnan(z[1]));
}

/* ---- LR schedules ---- */

Test(schedule, constant_with_warmup_boundaries) {
    double lr = 2e-5;
    int64_t W = 20;
    cr_assert_eq(s2_ref_lr_constant_warmup(lr, 0, W), 0.0);
    cr_assert_float_eq(s2_ref_lr_constant_warmup(lr, 1, W), lr / 20, 1e-20);
    cr_assert_float_eq(s2_ref_lr_constant_warmup(lr, W - 1, W), lr * 19 / 20, 1e-20);
    cr_assert_eq(s2_ref_lr_constant_warmup(lr, W, W), lr);
    cr_assert_eq(s2_ref_lr_constant_warmup(lr, 1000, W), lr, "end: still constant");
    cr_assert_eq(s2_ref_lr_constant_warmup(lr, 0, 0), lr, "no warmup");
}

Test(schedule, cosine_with_warmup_boundaries) {
    double lr = 1e-4;
    int64_t W = 10, N = 110;
    cr_assert_eq(s2_ref_lr_cosine_warmup(lr, 0, W, N), 0.0);
    cr_assert_float_eq(s2_ref_lr_cosine_warmup(lr, W - 1, W, N), lr * 0.9, 1e-18);
    cr_assert_float_eq(s2_ref_lr_cosine_warmup(lr, W, W, N), lr, 1e-18, "peak after warmup");
    cr_assert_float_eq(s2_ref_lr_cosine_warmup(lr, 60, W, N), lr * 0.5, 1e-18, "halfway");
    cr_assert_float_eq(s2_ref_lr_cosine_warmup(lr, 35, W, N),
                       lr * 0.5 * (1 + cos(M_PI * 0.25)), 1e-18);
    cr_assert_float_eq(s2_ref_lr_cosine_warmup(lr, N, W, N), 0.0, 1e-18, "end");
    cr_assert(s2_ref_lr_cosine_warmup(lr, N + 5, W, N) >= 0, "past the end: clamped at 0...");
    cr_assert_float_eq(s2_ref_lr_cosine_warmup(lr, N + 5, W, N),
                       lr * 0.5 * (1 + cos(M_PI * 105.0 / 100)), 1e-18,
                       "...and rising again, as transformers' formula does");
}

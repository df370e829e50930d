/* ref_helpers.h — what the suites of the CPU references share: a seeded xorshift64*
 * generator, NaN-filled outputs (an unwritten element fails every comparison) and the
 * relative L2 error against an fp64 reference. */
#ifndef S2_TESTS_REF_HELPERS_H
#define S2_TESTS_REF_HELPERS_H

#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "runtime/ref/ref.h"

/* ---- random inputs: xorshift64*, seeded per test ---- */

typedef struct rng {
    uint64_t s;
} rng;

static inline rng rng_seed(uint64_t seed) { return (rng){seed * 0x9E3779B97F4A7C15ULL | 1}; }

static inline uint64_t rng_next(rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 2685821657736338717ULL;
}

/* U(-1, 1) */
static inline double rng_unif(rng *r) { return (double)(rng_next(r) >> 11) * 0x1p-52 - 1.0; }

static inline int rng_int(rng *r, int n) { return (int)(rng_next(r) % (uint64_t)n); }

static inline void *xalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    cr_assert(p, "out of memory");
    return p;
}

static inline float *rand_f(rng *r, size_t n, double amp) {
    float *p = xalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(amp * rng_unif(r));
    return p;
}

/* Outputs start as NaN so an unwritten element fails every comparison. */
static inline float *nan_f(size_t n) {
    float *p = xalloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        p[i] = NAN;
    return p;
}

static inline double *to_d(const float *x, size_t n) {
    double *p = xalloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++)
        p[i] = x[i];
    return p;
}

/* ||x - ref|| / ||ref||; NaN anywhere makes it NaN, which fails every "< tol". */
static inline double rel_l2(const float *x, const double *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double e = x[i] - ref[i];
        num += e * e;
        den += ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1e-300));
}

/* Root mean square of x (0 for an empty array). */
static inline double rms(const float *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)x[i] * x[i];
    return sqrt(s / (n ? n : 1));
}

/* y = x W^T + s ((x ∘ mk) A^T) B^T by the definition, in fp64 (mk NULL: no dropout); returns
 * sum(dy ∘ y) when dy != NULL. */
static inline double lora_loop(const s2_ref_lora *l, const double *mk, const double *x, const double *W,
                        const double *A, const double *B, const double *dy, double *y) {
    double loss = 0;
    for (int m = 0; m < l->M; m++)
        for (int o = 0; o < l->out; o++) {
            double base = 0, low = 0;
            for (int i = 0; i < l->in; i++)
                base += x[m * l->in + i] * W[o * l->in + i];
            for (int j = 0; j < l->r; j++) {
                double xa = 0;
                for (int i = 0; i < l->in; i++)
                    xa += x[m * l->in + i] * (mk ? mk[m * l->in + i] : 1.0) * A[j * l->in + i];
                low += xa * B[o * l->r + j];
            }
            double yv = base + l->scale * low;
            if (y)
                y[m * l->out + o] = yv;
            if (dy)
                loss += dy[m * l->out + o] * yv;
        }
    return loss;
}

#endif

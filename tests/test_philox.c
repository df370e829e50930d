/*
 * test_philox.c — Philox4x32-10 against Random123's known answers, the dropout mask contract
 * of templates/philox.cuh (counter layout, threshold, keep fraction, independence of streams,
 * seeds and counter words), and the LoRA reference with dropout: the forward against a direct
 * loop that builds its mask element by element with s2_dropout_keep, the backward against
 * central finite differences of that loop (the mask is fixed by seed and stream, so the
 * forward is a differentiable function of x, A and B), and p = 0 against the results without
 * dropout, bit for bit.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "templates/philox.cuh"
#include "ref_helpers.h"
#include "runtime/ref/ref.h"



/* ---- Philox4x32 known answers ---- */

/* Random123's kat_vectors lines "philox4x32 R ctr[4] key[2] out[4]" (as DEShawResearch's own
 * tests carry them): all zero, all ones, and the digits of pi. */
typedef struct kat {
    int rounds;
    uint32_t ctr[4], key[2], out[4];
} kat;

static const kat KATS[] = {
    {10, {0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
    {10,
     {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
     {0xffffffff, 0xffffffff},
     {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
    {10,
     {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
     {0xa4093822, 0x299f31d0},
     {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    /* 7 rounds: the same round function and key schedule stopped earlier, so a schedule bug
     * that happened to survive the 10-round vectors could not survive these too. */
    {7, {0, 0, 0, 0}, {0, 0}, {0x5f6fb709, 0x0d893f64, 0x4f121f81, 0x4f730a48}},
    {7,
     {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
     {0xffffffff, 0xffffffff},
     {0x5207ddc2, 0x45165e59, 0x4d8ee751, 0x8c52f662}},
    {7,
     {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
     {0xa4093822, 0x299f31d0},
     {0x4dfccaba, 0x190a87f0, 0xc47362ba, 0xb6b5242a}},
};

Test(philox, known_answers) {
    for (size_t t = 0; t < sizeof KATS / sizeof KATS[0]; t++) {
        const kat *k = &KATS[t];
        uint32_t out[4];
        if (k->rounds == 10)
            s2_philox4x32_10(k->ctr, k->key, out);
        else
            s2_philox4x32_r(k->rounds, k->ctr, k->key, out);
        for (int j = 0; j < 4; j++)
            cr_assert(out[j] == k->out[j], "KAT %zu (R=%d) word %d: got %08x want %08x", t,
                      k->rounds, j, out[j], k->out[j]);
    }
}

/* The arguments are inputs only: the same call twice gives the same words. */
Test(philox, pure_function) {
    const uint32_t ctr[4] = {1, 2, 3, 4}, key[2] = {5, 6};
    uint32_t a[4], b[4];
    s2_philox4x32_10(ctr, key, a);
    s2_philox4x32_10(ctr, key, b);
    cr_assert(memcmp(a, b, sizeof a) == 0);
    cr_assert(ctr[0] == 1 && ctr[3] == 4 && key[0] == 5 && key[1] == 6);
}

/* ---- the dropout mask contract ---- */

Test(dropout, threshold_and_scale) {
    cr_assert(s2_dropout_threshold(0.0f) == 0);
    cr_assert(s2_dropout_threshold(0.5f) == 0x80000000u);
    cr_assert(s2_dropout_threshold(0.25f) == 0x40000000u);
    /* 0.1f = 13421773 * 2^-27, so floor(0.1f * 2^32) = 13421773 * 32 exactly. */
    cr_assert(s2_dropout_threshold(0.1f) == 13421773u * 32u);
    cr_assert(s2_dropout_threshold(nextafterf(1.0f, 0.0f)) == 0xFFFFFF00u);
    cr_assert(s2_dropout_threshold(1e-12f) == 0);
    cr_assert(s2_dropout_threshold(-0.5f) == 0);
    cr_assert(s2_dropout_threshold(NAN) == 0);
    cr_assert(s2_dropout_threshold(1.0f) == 0xFFFFFFFFu);
    cr_assert(s2_dropout_scale(0.0f) == 1.0f);
    cr_assert(s2_dropout_scale(0.5f) == 2.0f);
    cr_assert(s2_dropout_scale(0.75f) == 4.0f);
    cr_assert(fabsf(s2_dropout_scale(0.1f) - 1.0f / 0.9f) < 1e-6f);
}

/* Element i's word is word i % 4 of Philox at ctr = {i/4 lo, i/4 hi, stream, 0}, key = seed:
 * the all-zero KAT is quad 0 of stream 0 under seed 0, and keep is word >= threshold. */
Test(dropout, contract_pins_the_zero_kat) {
    for (int i = 0; i < 4; i++) {
        uint32_t w = KATS[0].out[i];
        cr_assert(s2_dropout_keep_thr(0, 0, (uint64_t)i, w) == 1, "element %d", i);
        cr_assert(s2_dropout_keep_thr(0, 0, (uint64_t)i, w + 1) == 0, "element %d", i);
    }
}

/* The same layout written out by hand for indices and seeds that use every word: the high
 * counter word (i >= 2^34), the high key word and streams above 2^16. */
Test(dropout, contract_counter_layout) {
    rng g = rng_seed(11);
    for (int t = 0; t < 2000; t++) {
        uint64_t seed = rng_next(&g), i = rng_next(&g) >> (t % 3 == 0 ? 0 : 20);
        uint32_t stream = (uint32_t)rng_next(&g), thr = (uint32_t)rng_next(&g);
        uint64_t q = i / 4;
        const uint32_t ctr[4] = {(uint32_t)q, (uint32_t)(q >> 32), stream, 0};
        const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
        uint32_t w[4];
        s2_philox4x32_10(ctr, key, w);
        int want = w[i % 4] >= thr;
        cr_assert(s2_dropout_keep_thr(seed, stream, i, thr) == want, "t %d", t);
        int k4[4];
        s2_dropout_keep4(seed, stream, q, thr, k4);
        cr_assert(k4[i % 4] == want, "t %d", t);
    }
    /* s2_dropout_keep is the threshold form at s2_dropout_threshold(p). */
    for (uint64_t i = 0; i < 1000; i++)
        cr_assert(s2_dropout_keep(42, 3, i, 0.3f) ==
                  s2_dropout_keep_thr(42, 3, i, s2_dropout_threshold(0.3f)));
}

/* A mask is a pure function of (seed, stream, i): any order of evaluation, any repetition. */
Test(dropout, deterministic) {
    enum { N = 4099 };
    static unsigned char a[N], b[N];
    for (uint64_t i = 0; i < N; i++)
        a[i] = (unsigned char)s2_dropout_keep(0x123456789ABCDEFull, 7, i, 0.5f);
    for (uint64_t i = N; i-- > 0;)
        b[i] = (unsigned char)s2_dropout_keep(0x123456789ABCDEFull, 7, i, 0.5f);
    cr_assert(memcmp(a, b, N) == 0);
}

/* Fraction kept over n = 10^6 elements: Binomial(n, 1-p)/n, within 5 standard deviations of
 * 1 - p (the expectation is 1 - threshold/2^32, which equals 1 - p up to 2^-32). */
static void check_fraction(float p, uint64_t seed, uint32_t stream) {
    const uint64_t n = 1000000;
    uint64_t kept = 0;
    for (uint64_t i = 0; i < n; i++)
        kept += (uint64_t)s2_dropout_keep(seed, stream, i, p);
    double f = (double)kept / (double)n, want = 1.0 - p;
    double sd = sqrt(p * (1.0 - p) / (double)n);
    cr_assert(fabs(f - want) <= 5 * sd, "p %g: kept %.6f want %.6f (sd %.2g)", p, f, want, sd);
}

Test(dropout, keep_fraction) {
    check_fraction(0.1f, 1, 0);
    check_fraction(0.5f, 2, 9);
    check_fraction(0.9f, 0xFFFFFFFF00000001ull, 0xFFFFFFFFu);
}

Test(dropout, p_zero_keeps_all) {
    for (uint64_t i = 0; i < 100000; i++) {
        cr_assert(s2_dropout_keep(i * 0x9E3779B97F4A7C15ull, (uint32_t)i, i, 0.0f) == 1);
        cr_assert(s2_dropout_keep(3, 1, i << 20, 0.0f) == 1);
    }
}

/* Two masks at p = 0.5 that should be independent disagree on a fraction ~ 1/2 of n = 10^5
 * elements (sd sqrt(1/4n)); equal masks or a shifted copy would disagree on ~0. */
typedef struct mask_arg {
    uint64_t seed;
    uint32_t stream;
    uint64_t off; /* index offset */
} mask_arg;

static void check_independent(const char *what, mask_arg a, mask_arg b) {
    const uint64_t n = 100000;
    uint64_t diff = 0;
    for (uint64_t i = 0; i < n; i++)
        diff += (uint64_t)(s2_dropout_keep(a.seed, a.stream, a.off + i, 0.5f) !=
                           s2_dropout_keep(b.seed, b.stream, b.off + i, 0.5f));
    double f = (double)diff / (double)n, sd = sqrt(0.25 / (double)n);
    cr_assert(fabs(f - 0.5) <= 5 * sd, "%s: masks disagree on %.4f of elements", what, f);
}

Test(dropout, streams_seeds_and_counters_independent) {
    mask_arg base = {.seed = 1234, .stream = 5, .off = 0};
    check_independent("stream+1", base, (mask_arg){1234, 6, 0});
    check_independent("stream high bit", base, (mask_arg){1234, 5 | 0x80000000u, 0});
    check_independent("seed+1", base, (mask_arg){1235, 5, 0});
    check_independent("seed high word", base, (mask_arg){1234 + (1ull << 32), 5, 0});
    check_independent("index + 2^34 (counter high word)", base, (mask_arg){1234, 5, 1ull << 34});
    /* Neighbours inside one quad come from different words of one call. */
    check_independent("next element", base, (mask_arg){1234, 5, 1});
    check_independent("next quad", base, (mask_arg){1234, 5, 4});
}

/* ---- LoRA with dropout ---- */

typedef struct lprob {
    s2_ref_lora l;
    float *x, *W, *A, *B; /* [M,in], [out,in], [r,in], [out,r] */
} lprob;

static void lprob_make(lprob *L, int M, int in, int out, int r, float p, uint64_t seed) {
    L->l = (s2_ref_lora){.M = M, .in = in, .out = out, .r = r, .scale = 16.0f / r,
                         .dropout = p, .seed = seed ^ 0xA5A5A5A500000000ull,
                         .stream = (uint32_t)seed * 8 + 3};
    rng g = rng_seed(seed);
    L->x = rand_f(&g, (size_t)M * in, 1.0);
    L->W = rand_f(&g, (size_t)out * in, 0.2);
    L->A = rand_f(&g, (size_t)r * in, 0.2);
    L->B = rand_f(&g, (size_t)out * r, 0.1); /* nonzero: B = 0 would hide the adapter path */
}

static void lprob_free(lprob *L) { free(L->x), free(L->W), free(L->A), free(L->B); }

/* The dropout multiplier of every element of x [M, in], built element by element from
 * s2_dropout_keep: s2_dropout_scale(p) where kept, 0 where dropped (1 everywhere at p = 0). */
static double *mask_of(const s2_ref_lora *l) {
    size_t n = (size_t)l->M * l->in;
    double *mk = xalloc(n * sizeof(double));
    for (int m = 0; m < l->M; m++)
        for (int k = 0; k < l->in; k++) {
            uint64_t i = (uint64_t)m * (uint64_t)l->in + (uint64_t)k;
            mk[i] = s2_dropout_keep(l->seed, l->stream, i, l->dropout)
                        ? (double)s2_dropout_scale(l->dropout)
                        : 0.0;
        }
    return mk;
}

static void check_forward(int M, int in, int out, int r, float p, uint64_t seed) {
    lprob L;
    lprob_make(&L, M, in, out, r, p, seed);
    const s2_ref_lora *l = &L.l;
    size_t nx = (size_t)M * in, ny = (size_t)M * out;
    float *y = nan_f(ny);
    double *yd = xalloc(ny * sizeof(double)), *mk = mask_of(l);
    double *xd = to_d(L.x, nx), *Wd = to_d(L.W, (size_t)out * in);
    double *Ad = to_d(L.A, (size_t)r * in), *Bd = to_d(L.B, (size_t)out * r);
    size_t dropped = 0;
    for (size_t i = 0; i < nx; i++)
        dropped += mk[i] == 0;
    cr_assert(dropped > nx * p / 2 && dropped < nx * p * 1.5 + 1, "%zu of %zu dropped", dropped, nx);
    s2_ref_lora_forward(l, L.x, L.W, L.A, L.B, y);
    lora_loop(l, mk, xd, Wd, Ad, Bd, NULL, yd);
    double e = rel_l2(y, yd, ny);
    cr_assert(e < 1e-6, "p %g: y rel err %g", p, e);
    /* The mask must matter: with every element kept (unscaled) the result is far off. */
    double *ones = xalloc(nx * sizeof(double));
    for (size_t i = 0; i < nx; i++)
        ones[i] = 1;
    lora_loop(l, ones, xd, Wd, Ad, Bd, NULL, yd);
    cr_assert(rel_l2(y, yd, ny) > 1e-3, "dropout did not change y");
    /* Another stream is another mask, hence another y. */
    s2_ref_lora l2 = *l;
    l2.stream++;
    float *y2 = nan_f(ny);
    s2_ref_lora_forward(&l2, L.x, L.W, L.A, L.B, y2);
    cr_assert(memcmp(y, y2, ny * sizeof(float)) != 0);
    free(y), free(y2), free(yd), free(mk), free(ones), free(xd), free(Wd), free(Ad), free(Bd);
    lprob_free(&L);
}

/* in % 4 != 0 puts quads across row boundaries. */
Test(lora_dropout, forward_vs_loop) {
    check_forward(13, 37, 29, 4, 0.3f, 4000);
    check_forward(7, 64, 5, 8, 0.1f, 4001);
    check_forward(9, 301, 11, 2, 0.5f, 4002);
}

/* The loss is linear in each of x, A, B alone (the mask is fixed), so central differences are
 * exact up to rounding; every coordinate is checked. */
static void check_grad(const char *name, const float *g, double *v, size_t n, const lprob *L,
                       const double *mk, const double *xd, const double *Wd, const double *Ad,
                       const double *Bd, const double *dyd) {
    const double h = 1e-3;
    double scale = rms(g, n);
    cr_assert(scale > 1e-3, "%s: gradient ~0", name);
    for (size_t i = 0; i < n; i++) {
        double v0 = v[i];
        v[i] = v0 + h;
        double lp = lora_loop(&L->l, mk, xd, Wd, Ad, Bd, dyd, NULL);
        v[i] = v0 - h;
        double lm = lora_loop(&L->l, mk, xd, Wd, Ad, Bd, dyd, NULL);
        v[i] = v0;
        double fd = (lp - lm) / (2 * h);
        cr_assert(fabs(g[i] - fd) <= 1e-5 * (fabs(fd) + scale), "d%s[%zu]: ref %.9g fd %.9g",
                  name, i, g[i], fd);
    }
}

static void check_backward(int M, int in, int out, int r, float p, uint64_t seed) {
    lprob L;
    lprob_make(&L, M, in, out, r, p, seed);
    const s2_ref_lora *l = &L.l;
    size_t nx = (size_t)M * in, nA = (size_t)r * in, nB = (size_t)out * r;
    rng g = rng_seed(seed + 1);
    float *dy = rand_f(&g, (size_t)M * out, 1.0);
    float *dx = nan_f(nx), *dA = nan_f(nA), *dB = nan_f(nB);
    s2_ref_lora_backward(l, L.x, L.W, L.A, L.B, dy, dx, dA, dB);
    double *mk = mask_of(l);
    double *xd = to_d(L.x, nx), *Wd = to_d(L.W, (size_t)out * in), *Ad = to_d(L.A, nA);
    double *Bd = to_d(L.B, nB), *dyd = to_d(dy, (size_t)M * out);
    check_grad("x", dx, xd, nx, &L, mk, xd, Wd, Ad, Bd, dyd);
    check_grad("A", dA, Ad, nA, &L, mk, xd, Wd, Ad, Bd, dyd);
    check_grad("B", dB, Bd, nB, &L, mk, xd, Wd, Ad, Bd, dyd);
    free(dy), free(dx), free(dA), free(dB), free(mk), free(xd), free(Wd), free(Ad), free(Bd);
    free(dyd);
    lprob_free(&L);
}

/* in = 300 > 256 splits dA into two column pieces, the second one short. */
Test(lora_dropout, backward_fd) {
    check_backward(11, 23, 17, 3, 0.3f, 4100);
    check_backward(5, 300, 7, 2, 0.5f, 4101);
}

/* Results do not depend on the thread count, dropout included (each work item regenerates or
 * reads the mask of exactly the rows it owns). */
Test(lora_dropout, thread_count_invariant) {
    lprob L;
    lprob_make(&L, 37, 45, 19, 4, 0.25f, 4200);
    const s2_ref_lora *l = &L.l;
    size_t nx = 37 * 45, ny = 37 * 19, nA = 4 * 45, nB = 19 * 4;
    rng g = rng_seed(4201);
    float *dy = rand_f(&g, ny, 1.0);
    float *o[2][4];
    int threads[2] = {1, 3};
    for (int t = 0; t < 2; t++) {
        s2_ref_threads = threads[t];
        o[t][0] = nan_f(ny), o[t][1] = nan_f(nx), o[t][2] = nan_f(nA), o[t][3] = nan_f(nB);
        s2_ref_lora_forward(l, L.x, L.W, L.A, L.B, o[t][0]);
        s2_ref_lora_backward(l, L.x, L.W, L.A, L.B, dy, o[t][1], o[t][2], o[t][3]);
    }
    s2_ref_threads = 0;
    size_t n[4] = {ny, nx, nA, nB};
    for (int k = 0; k < 4; k++) {
        cr_assert(memcmp(o[0][k], o[1][k], n[k] * sizeof(float)) == 0, "output %d", k);
        free(o[0][k]), free(o[1][k]);
    }
    free(dy);
    lprob_free(&L);
}

/* p = 0 is no dropout, whatever seed and stream say: bit for bit the results of a struct that
 * never set the dropout fields (the code paths that predate them), and those match the plain
 * definition. */
Test(lora_dropout, p_zero_identical) {
    lprob L;
    lprob_make(&L, 11, 23, 17, 3, 0.0f, 4300);
    s2_ref_lora plain = {.M = 11, .in = 23, .out = 17, .r = 3, .scale = L.l.scale};
    cr_assert(L.l.seed != 0 && L.l.stream != 0);
    size_t nx = 11 * 23, ny = 11 * 17, nA = 3 * 23, nB = 17 * 3;
    rng g = rng_seed(4301);
    float *dy = rand_f(&g, ny, 1.0);
    const s2_ref_lora *ls[2] = {&plain, &L.l};
    float *o[2][4];
    for (int t = 0; t < 2; t++) {
        o[t][0] = nan_f(ny), o[t][1] = nan_f(nx), o[t][2] = nan_f(nA), o[t][3] = nan_f(nB);
        s2_ref_lora_forward(ls[t], L.x, L.W, L.A, L.B, o[t][0]);
        s2_ref_lora_backward(ls[t], L.x, L.W, L.A, L.B, dy, o[t][1], o[t][2], o[t][3]);
    }
    size_t n[4] = {ny, nx, nA, nB};
    for (int k = 0; k < 4; k++)
        cr_assert(memcmp(o[0][k], o[1][k], n[k] * sizeof(float)) == 0, "output %d", k);
    double *mk = mask_of(&L.l), *yd = xalloc(ny * sizeof(double));
    for (size_t i = 0; i < nx; i++)
        cr_assert(mk[i] == 1.0);
    double *xd = to_d(L.x, nx), *Wd = to_d(L.W, (size_t)17 * 23), *Ad = to_d(L.A, nA);
    double *Bd = to_d(L.B, nB);
    lora_loop(&L.l, mk, xd, Wd, Ad, Bd, NULL, yd);
    cr_assert(rel_l2(o[0][0], yd, ny) < 1e-6);
    for (int k = 0; k < 4; k++)
        free(o[0][k]), free(o[1][k]);
    free(dy), free(mk), free(yd), free(xd), free(Wd), free(Ad), free(Bd);
    lprob_free(&L);
}

/* A dropout probability outside [0, 1) is a caller's bug: every output is NaN. */
Test(lora_dropout, invalid_p_is_nan) {
    const float bad[] = {1.0f, 1.5f, -0.1f, NAN};
    float x[6] = {1, 2, 3, 4, 5, 6}, W[6] = {1, 1, 1, 1, 1, 1}, A[3] = {1, 1, 1}, B[2] = {1, 1};
    float dy[4] = {1, 1, 1, 1};
    for (size_t t = 0; t < sizeof bad / sizeof bad[0]; t++) {
        s2_ref_lora l = {.M = 2, .in = 3, .out = 2, .r = 1, .scale = 1, .dropout = bad[t]};
        float y[4] = {0}, dx[6] = {0}, dA[3] = {0}, dB[2] = {0};
        s2_ref_lora_forward(&l, x, W, A, B, y);
        s2_ref_lora_backward(&l, x, W, A, B, dy, dx, dA, dB);
        for (int i = 0; i < 4; i++)
            cr_assert(isnan(y[i]), "p %g: y[%d] = %g", bad[t], i, y[i]);
        for (int i = 0; i < 6; i++)
            cr_assert(isnan(dx[i]));
        for (int i = 0; i < 3; i++)
            cr_assert(isnan(dA[i]));
        for (int i = 0; i < 2; i++)
            cr_assert(isnan(dB[i]));
    }
}

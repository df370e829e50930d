/*
 * test_ref.c — the CPU references checked against things that do not share
 * their code: the naive dense forward (visible() per pair), a double-precision
 * dense forward written here with its own mask construction (an explicit
 * roll(-S) / group listing, as the paper and LongLoRA describe it), masks
 * computed by hand, central finite differences of L = sum(dO ∘ O), and a
 * repeat_kv MHA problem for the GQA sums. LoRA: a direct triple loop and
 * finite differences.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ref_helpers.h"
#include "runtime/ref/ref.h"


static double rel_l2_ff(const float *x, const float *ref, size_t n) {
    double *r = to_d(ref, n), e = rel_l2(x, r, n);
    free(r);
    return e;
}


/* ---- problems ---- */

typedef struct cfg {
    int H, Hkv, d, G, S;
    s2_shift_mode mode;
    int nseq;    /* 0: one sequence of lens[0] tokens, cu_seqlens NULL */
    int lens[8]; /* sequence lengths */
} cfg;

typedef struct prob {
    s2_ref_attn a;
    int32_t cu[9];
    size_t nq, nkv;   /* elements of q and of k */
    float *q, *k, *v; /* [T,H,d], [T,Hkv,d], [T,Hkv,d] */
} prob;

static void prob_make(prob *P, const cfg *c, uint64_t seed) {
    memset(P, 0, sizeof *P);
    int T = 0;
    P->cu[0] = 0;
    for (int b = 0; b < (c->nseq ? c->nseq : 1); b++)
        P->cu[b + 1] = T += c->lens[b];
    P->a = (s2_ref_attn){.T = T, .H = c->H, .Hkv = c->Hkv, .d = c->d, .B = c->nseq,
                         .cu_seqlens = c->nseq ? P->cu : NULL, .G = c->G, .S = c->S,
                         .mode = c->mode, .scale = 1.0f / sqrtf((float)c->d)};
    P->nq = (size_t)T * c->H * c->d;
    P->nkv = (size_t)T * c->Hkv * c->d;
    rng r = rng_seed(seed);
    /* q, k in U(-2, 2): scores spread over a few units, so softmax rows are far from uniform. */
    P->q = rand_f(&r, P->nq, 2.0);
    P->k = rand_f(&r, P->nkv, 2.0);
    P->v = rand_f(&r, P->nkv, 1.0);
}

static void prob_free(prob *P) {
    free(P->q);
    free(P->k);
    free(P->v);
}

/* ---- the test's own mask and double-precision dense forward ---- */

/*
 * Order index and group id of every position of one head of one sequence, built the way the
 * semantics are described rather than by the reference's formulas:
 *   roll: torch.roll(x, -S) puts position (i + S) mod N at index i; groups are runs of G indices.
 *   split: boundaries listed from the start: a first group of G - S, then groups of G.
 *   plain: runs of G positions.
 */
static void tmask(s2_shift_mode mode, int shifted, int N, int G, int S, int *ord, int *grp) {
    if (shifted && mode == S2_SHIFT_ROLL) {
        for (int i = 0; i < N; i++) {
            int p = (int)(((long long)i + S) % N);
            ord[p] = i;
            grp[p] = i / G;
        }
        return;
    }
    int g = 0, left = shifted && S > 0 ? G - S : G;
    for (int p = 0; p < N; p++) {
        if (left == 0) {
            g++;
            left = G;
        }
        grp[p] = g;
        ord[p] = p;
        left--;
    }
}

/* Dense double forward of a (from prob's a), with the mask above, or plain causal when
 * causal_only. o [T,H,d], lse [H,T] (either may be NULL); returns sum(dO ∘ O) when dO != NULL. */
static double dfwd(const s2_ref_attn *a, int causal_only, const double *q, const double *k,
                   const double *v, const double *dO, double *o, double *lse) {
    int H = a->H, Hkv = a->Hkv, d = a->d, nseq = a->cu_seqlens ? a->B : 1;
    double loss = 0, *oc = xalloc(sizeof(double) * d), *w = xalloc(sizeof(double) * (a->T + 1));
    int *ord = xalloc(sizeof(int) * (a->T + 1)), *grp = xalloc(sizeof(int) * (a->T + 1));
    for (int b = 0; b < nseq; b++) {
        int s0 = a->cu_seqlens ? a->cu_seqlens[b] : 0;
        int N = a->cu_seqlens ? a->cu_seqlens[b + 1] - s0 : a->T;
        for (int h = 0; h < H; h++) {
            int kvh = h / (H / Hkv);
            tmask(a->mode, h >= H / 2, N, a->G, a->S, ord, grp);
            for (int p = 0; p < N; p++) {
                const double *qr = q + ((size_t)(s0 + p) * H + h) * d;
                double m = -INFINITY, l = 0;
                for (int pk = 0; pk < N; pk++) {
                    int vis = causal_only ? pk <= p : grp[pk] == grp[p] && ord[pk] <= ord[p];
                    w[pk] = -INFINITY;
                    if (vis) {
                        const double *kr = k + ((size_t)(s0 + pk) * Hkv + kvh) * d;
                        double s = 0;
                        for (int x = 0; x < d; x++)
                            s += qr[x] * kr[x];
                        w[pk] = a->scale * s;
                        m = fmax(m, w[pk]);
                    }
                }
                for (int pk = 0; pk < N; pk++)
                    l += w[pk] = exp(w[pk] - m);
                for (int x = 0; x < d; x++)
                    oc[x] = 0;
                for (int pk = 0; pk < N; pk++)
                    for (int x = 0; x < d; x++)
                        oc[x] += w[pk] / l * v[((size_t)(s0 + pk) * Hkv + kvh) * d + x];
                size_t at = ((size_t)(s0 + p) * H + h) * d;
                for (int x = 0; x < d; x++) {
                    if (o)
                        o[at + x] = oc[x];
                    if (dO)
                        loss += dO[at + x] * oc[x];
                }
                if (lse)
                    lse[(size_t)h * a->T + s0 + p] = m + log(l);
            }
        }
    }
    free(oc);
    free(w);
    free(ord);
    free(grp);
    return loss;
}

/* ---- forward checks ---- */

static const double FWD_TOL = 1e-5;

/* Reference forward vs the naive dense forward and vs the test's double forward. */
static void check_fwd(const cfg *c, uint64_t seed) {
    prob P;
    prob_make(&P, c, seed);
    const s2_ref_attn *a = &P.a;
    size_t nl = (size_t)a->H * a->T;
    float *o = nan_f(P.nq), *lse = nan_f(nl), *o2 = nan_f(P.nq), *lse2 = nan_f(nl);
    double *od = xalloc(sizeof(double) * (P.nq + 1)), *lsed = xalloc(sizeof(double) * (nl + 1));
    double *qd = to_d(P.q, P.nq), *kd = to_d(P.k, P.nkv), *vd = to_d(P.v, P.nkv);
    s2_ref_attn_forward(a, P.q, P.k, P.v, o, lse);
    s2_ref_attn_naive_forward(a, P.q, P.k, P.v, o2, lse2);
    dfwd(a, 0, qd, kd, vd, NULL, od, lsed);
    const char *mode = c->mode == S2_SHIFT_ROLL ? "roll" : "split";
    double e;
    cr_assert((e = rel_l2_ff(o, o2, P.nq)) < FWD_TOL, "O vs naive %g (%s N0=%d G=%d S=%d d=%d)", e,
              mode, c->lens[0], c->G, c->S, c->d);
    cr_assert((e = rel_l2_ff(lse, lse2, nl)) < FWD_TOL, "lse vs naive %g (%s G=%d S=%d)", e, mode,
              c->G, c->S);
    cr_assert((e = rel_l2(o, od, P.nq)) < FWD_TOL, "O vs double %g (%s G=%d S=%d)", e, mode, c->G,
              c->S);
    cr_assert((e = rel_l2(lse, lsed, nl)) < FWD_TOL, "lse vs double %g (%s G=%d S=%d)", e, mode,
              c->G, c->S);
    free(o), free(lse), free(o2), free(lse2), free(od), free(lsed), free(qd), free(kd), free(vd);
    prob_free(&P);
}

/* check_fwd for both shift modes and d in {8, 64}. */
static void check_fwd_all(cfg c, uint64_t seed) {
    static const int ds[] = {8, 64};
    for (int m = 0; m < 2; m++)
        for (int i = 0; i < 2; i++) {
            c.mode = m ? S2_SHIFT_ROLL : S2_SHIFT_SPLIT;
            c.d = ds[i];
            check_fwd(&c, seed + 10 * m + i);
        }
}

static cfg one_seq(int H, int Hkv, int N, int G, int S) {
    return (cfg){.H = H, .Hkv = Hkv, .d = 8, .G = G, .S = S, .lens = {N}};
}

/* S = 0: shifted heads are plain in both modes; identical inputs per head give identical rows. */
Test(fwd, plain_only) {
    for (int m = 0; m < 2; m++) {
        cfg c = one_seq(2, 1, 37, 8, 0);
        c.mode = m ? S2_SHIFT_ROLL : S2_SHIFT_SPLIT;
        check_fwd(&c, 100 + m);
        prob P;
        prob_make(&P, &c, 110 + m);
        for (int t = 0; t < P.a.T; t++) /* head 1 (shifted) gets head 0's queries */
            memcpy(P.q + ((size_t)t * 2 + 1) * 8, P.q + (size_t)t * 2 * 8, 8 * sizeof(float));
        float *o = nan_f(P.nq), *lse = nan_f(2 * (size_t)P.a.T);
        s2_ref_attn_forward(&P.a, P.q, P.k, P.v, o, lse);
        for (int t = 0; t < P.a.T; t++) {
            cr_assert(memcmp(o + (size_t)t * 16, o + (size_t)t * 16 + 8, 8 * sizeof(float)) == 0,
                      "t=%d", t);
            cr_assert(lse[t] == lse[P.a.T + t], "t=%d", t);
        }
        free(o), free(lse);
        prob_free(&P);
    }
}

Test(fwd, n_multiple_of_g) {
    check_fwd_all(one_seq(4, 4, 64, 16, 8), 200);
    check_fwd_all(one_seq(4, 4, 48, 8, 3), 210); /* a shift other than G/2 */
}

Test(fwd, short_last_group) {
    check_fwd_all(one_seq(4, 4, 70, 16, 8), 300);
    check_fwd_all(one_seq(4, 2, 45, 16, 5), 310);
}

Test(fwd, n_less_than_g) {
    check_fwd_all(one_seq(4, 4, 5, 16, 8), 400);  /* N < G - S: split keeps one group */
    check_fwd_all(one_seq(4, 4, 11, 16, 8), 410); /* G - S < N < G */
}

Test(fwd, n_equal_g) { check_fwd_all(one_seq(4, 4, 16, 16, 8), 500); }

Test(fwd, s0_g_less_than_n) { check_fwd_all(one_seq(4, 4, 40, 8, 0), 600); }

/* G >= N, S = 0 is plain causal attention: also compared with a causal-only forward. */
Test(fwd, g_ge_n_s0_is_causal) {
    static const int Gs[] = {50, 64, 1 << 20};
    for (int gi = 0; gi < 3; gi++)
        for (int m = 0; m < 2; m++) {
            cfg c = one_seq(4, 2, 50, Gs[gi], 0);
            c.mode = m ? S2_SHIFT_ROLL : S2_SHIFT_SPLIT;
            check_fwd_all(c, 700 + gi);
            prob P;
            prob_make(&P, &c, 720 + gi);
            size_t nl = (size_t)P.a.H * P.a.T;
            float *o = nan_f(P.nq), *lse = nan_f(nl);
            double *od = xalloc(sizeof(double) * P.nq), *lsed = xalloc(sizeof(double) * nl);
            double *qd = to_d(P.q, P.nq), *kd = to_d(P.k, P.nkv), *vd = to_d(P.v, P.nkv);
            s2_ref_attn_forward(&P.a, P.q, P.k, P.v, o, lse);
            dfwd(&P.a, 1, qd, kd, vd, NULL, od, lsed);
            cr_assert(rel_l2(o, od, P.nq) < FWD_TOL, "G=%d", Gs[gi]);
            cr_assert(rel_l2(lse, lsed, nl) < FWD_TOL, "G=%d", Gs[gi]);
            free(o), free(lse), free(od), free(lsed), free(qd), free(kd), free(vd);
            prob_free(&P);
        }
}

/* Lengths: shorter than G, empty, not a multiple of G, multiple of G, a single token. */
Test(fwd, varlen) {
    cfg c = {.H = 4, .Hkv = 2, .G = 16, .S = 8, .nseq = 6, .lens = {5, 0, 45, 13, 32, 1}};
    check_fwd_all(c, 800);
    cfg c2 = {.H = 2, .Hkv = 1, .G = 8, .S = 4, .nseq = 3, .lens = {19, 8, 3}};
    check_fwd_all(c2, 810);
}

Test(fwd, gqa) {
    static const int Hkvs[] = {1, 2, 4, 8};
    for (int i = 0; i < 4; i++)
        check_fwd_all(one_seq(8, Hkvs[i], 40, 16, 8), 900 + i);
}

/* N = 1: the only key is the query itself, so O = V and lse = scale q·k. */
Test(fwd, single_token) {
    for (int m = 0; m < 2; m++) {
        cfg c = one_seq(4, 2, 1, 8, 4);
        c.mode = m ? S2_SHIFT_ROLL : S2_SHIFT_SPLIT;
        prob P;
        prob_make(&P, &c, 1000 + m);
        float *o = nan_f(P.nq), *lse = nan_f(4);
        s2_ref_attn_forward(&P.a, P.q, P.k, P.v, o, lse);
        for (int h = 0; h < 4; h++) {
            double s = 0;
            for (int x = 0; x < 8; x++) {
                cr_assert(fabsf(o[h * 8 + x] - P.v[(h / 2) * 8 + x]) < 1e-6f, "h=%d", h);
                s += (double)P.q[h * 8 + x] * P.k[(h / 2) * 8 + x];
            }
            cr_assert(fabs(lse[h] - s * P.a.scale) < 1e-5, "h=%d lse %g vs %g", h, lse[h], s);
        }
        free(o), free(lse);
        prob_free(&P);
    }
}

/* T = 0 (NULL pointers) and a batch of empty sequences: nothing read, nothing written. */
Test(fwd, empty_untouched) {
    s2_ref_attn a = {.T = 0, .H = 4, .Hkv = 2, .d = 8, .G = 8, .S = 4, .scale = 1};
    s2_ref_attn_forward(&a, NULL, NULL, NULL, NULL, NULL);
    s2_ref_attn_naive_forward(&a, NULL, NULL, NULL, NULL, NULL);
    s2_ref_attn_backward(&a, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
    int32_t cu[3] = {0, 0, 0};
    a.B = 2;
    a.cu_seqlens = cu;
    float sentinel[8] = {1, 2, 3, 4, 5, 6, 7, 8}, buf[8];
    memcpy(buf, sentinel, sizeof buf);
    s2_ref_attn_forward(&a, buf, buf, buf, buf, buf);
    s2_ref_attn_backward(&a, buf, buf, buf, buf, buf, buf, buf, buf, buf);
    cr_assert(memcmp(buf, sentinel, sizeof buf) == 0);
}

/* Each output element is summed by one thread in a fixed order: bitwise equal for any count. */
Test(fwd, threads_deterministic) {
    cfg c = {.H = 4, .Hkv = 2, .d = 16, .G = 32, .S = 16, .mode = S2_SHIFT_ROLL, .nseq = 2,
             .lens = {150, 77}};
    prob P;
    prob_make(&P, &c, 1100);
    size_t nl = (size_t)P.a.H * P.a.T;
    float *out[2][5];
    rng r = rng_seed(1101);
    float *dO = rand_f(&r, P.nq, 1.0);
    for (int run = 0; run < 2; run++) {
        s2_ref_threads = run ? 3 : 1;
        float **r = out[run];
        r[0] = nan_f(P.nq), r[1] = nan_f(nl), r[2] = nan_f(P.nq), r[3] = nan_f(P.nkv);
        r[4] = nan_f(P.nkv);
        float *dv = nan_f(P.nkv);
        s2_ref_attn_forward(&P.a, P.q, P.k, P.v, r[0], r[1]);
        s2_ref_attn_backward(&P.a, P.q, P.k, P.v, r[0], r[1], dO, r[2], r[3], dv);
        memcpy(r[4], dv, P.nkv * sizeof(float));
        free(dv);
    }
    s2_ref_threads = 0;
    size_t sz[5] = {P.nq, nl, P.nq, P.nkv, P.nkv};
    for (int i = 0; i < 5; i++) {
        cr_assert(memcmp(out[0][i], out[1][i], sz[i] * sizeof(float)) == 0, "output %d", i);
        cr_assert(!isnan(out[0][i][0]), "output %d unwritten", i);
        free(out[0][i]), free(out[1][i]);
    }
    free(dO);
    prob_free(&P);
}

/* ---- masks from DESIGN §1, by hand ---- */

static s2_ref_attn mask_attn(s2_shift_mode mode, int G, int S) {
    return (s2_ref_attn){.H = 2, .Hkv = 1, .d = 1, .G = G, .S = S, .mode = mode, .scale = 1};
}

Test(mask, plain_heads) {
    s2_ref_attn a = mask_attn(S2_SHIFT_ROLL, 8, 4); /* the mode must not matter for head 0 */
    cr_assert(s2_ref_attn_visible(&a, 0, 20, 9, 8));
    cr_assert(!s2_ref_attn_visible(&a, 0, 20, 9, 7));  /* previous group */
    cr_assert(!s2_ref_attn_visible(&a, 0, 20, 8, 9));  /* future */
    cr_assert(s2_ref_attn_visible(&a, 0, 20, 19, 16)); /* short last group [16, 20) */
    cr_assert(!s2_ref_attn_visible(&a, 0, 20, 16, 15));
}

/* N = 22, G = 8, S = 4, split: groups [0,4) [4,12) [12,20) [20,22); nothing wraps. */
Test(mask, split_groups) {
    s2_ref_attn a = mask_attn(S2_SHIFT_SPLIT, 8, 4);
    int h = 1, N = 22;
    cr_assert(s2_ref_attn_visible(&a, h, N, 3, 0));   /* first group is [0, G - S) */
    cr_assert(!s2_ref_attn_visible(&a, h, N, 4, 3));  /* 4 starts the next group */
    cr_assert(s2_ref_attn_visible(&a, h, N, 11, 4));
    cr_assert(!s2_ref_attn_visible(&a, h, N, 12, 11));
    cr_assert(s2_ref_attn_visible(&a, h, N, 21, 20)); /* short tail group */
    cr_assert(!s2_ref_attn_visible(&a, h, N, 21, 19));
    cr_assert(!s2_ref_attn_visible(&a, h, N, 0, 21)); /* no wrap */
    cr_assert(!s2_ref_attn_visible(&a, h, N, 0, 1));
}

/*
 * N = 16, G = 8, S = 4, roll: rolled index r(p) = (p - 4) mod 16.
 *   rolled group 0 = r 0..7  = positions 4..11 in that order;
 *   rolled group 1 = r 8..15 = positions 12, 13, 14, 15, 0, 1, 2, 3 in that order.
 * So position 0 (r = 12) sees 12..15 and itself — the head attends to the tail — but not 1,
 * and position 15 (r = 11) does not see 0.
 */
Test(mask, roll_wraps) {
    s2_ref_attn a = mask_attn(S2_SHIFT_ROLL, 8, 4);
    int h = 1, N = 16;
    for (int pk = 12; pk <= 15; pk++)
        cr_assert(s2_ref_attn_visible(&a, h, N, 0, pk), "0 sees %d", pk);
    cr_assert(s2_ref_attn_visible(&a, h, N, 0, 0));
    cr_assert(!s2_ref_attn_visible(&a, h, N, 0, 1));
    cr_assert(!s2_ref_attn_visible(&a, h, N, 0, 11));
    cr_assert(!s2_ref_attn_visible(&a, h, N, 15, 0));
    cr_assert(s2_ref_attn_visible(&a, h, N, 3, 12));
    cr_assert(s2_ref_attn_visible(&a, h, N, 3, 0));
    cr_assert(!s2_ref_attn_visible(&a, h, N, 12, 13)); /* 12 opens its rolled group */
    cr_assert(s2_ref_attn_visible(&a, h, N, 11, 4));
    cr_assert(!s2_ref_attn_visible(&a, h, N, 4, 3));
    cr_assert(!s2_ref_attn_visible(&a, 0, N, 0, 15)); /* plain head: no leak */
}

/* Every query sees itself, at most G keys, and visible() agrees with the explicit roll / group
 * listing of tmask() on every pair. */
Test(mask, self_and_explicit_construction) {
    static const int Gs[] = {1, 2, 3, 5, 8, 16, 64};
    int ord[41], grp[41];
    for (int m = 0; m < 2; m++)
        for (int gi = 0; gi < 7; gi++)
            for (int S = 0; S < Gs[gi]; S += 1 + Gs[gi] / 6)
                for (int N = 1; N <= 40; N++) {
                    s2_ref_attn a = mask_attn(m ? S2_SHIFT_ROLL : S2_SHIFT_SPLIT, Gs[gi], S);
                    for (int h = 0; h < 2; h++) {
                        tmask(a.mode, h == 1, N, a.G, S, ord, grp);
                        for (int p = 0; p < N; p++) {
                            int seen = 0;
                            cr_assert(s2_ref_attn_visible(&a, h, N, p, p));
                            for (int pk = 0; pk < N; pk++) {
                                int want = grp[pk] == grp[p] && ord[pk] <= ord[p];
                                int got = s2_ref_attn_visible(&a, h, N, p, pk);
                                cr_assert(got == want, "m=%d G=%d S=%d N=%d h=%d p=%d pk=%d", m,
                                          a.G, S, N, h, p, pk);
                                seen += got;
                            }
                            cr_assert(seen <= a.G);
                        }
                    }
                }
}

/* ---- backward ---- */

/* Finite differences of L = sum(dO ∘ O) through the test's double forward (step 1e-3, fp64:
 * truncation ~1e-7, rounding ~1e-12), against the reference backward (fp32 outputs, fp32 o and
 * lse inputs: ~1e-6 relative). The tolerance leaves ~50x margin and is far below what any
 * missing term, factor or mask error produces. */
static void check_grad(const char *name, const float *g, double *x, size_t n, const prob *P,
                       const double *qd, const double *kd, const double *vd, const double *dOd,
                       rng *r) {
    const double h = 1e-3;
    double scale = rms(g, n);
    cr_assert(scale > 1e-3, "%s: gradient ~0 (rms %g): the test would prove nothing", name,
              scale);
    for (int s = 0; s < 50; s++) {
        size_t i = (size_t)rng_int(r, (int)n);
        double x0 = x[i];
        x[i] = x0 + h;
        double lp = dfwd(&P->a, 0, qd, kd, vd, dOd, NULL, NULL);
        x[i] = x0 - h;
        double lm = dfwd(&P->a, 0, qd, kd, vd, dOd, NULL, NULL);
        x[i] = x0;
        double fd = (lp - lm) / (2 * h);
        cr_assert(fabs(g[i] - fd) <= 1e-4 * fabs(fd) + 1e-4 * scale,
                  "d%s[%zu]: ref %.9g fd %.9g (rms %g)", name, i, g[i], fd, scale);
    }
}

static void check_bwd_fd(const cfg *c, uint64_t seed) {
    prob P;
    prob_make(&P, c, seed);
    size_t nl = (size_t)P.a.H * P.a.T;
    rng r = rng_seed(seed + 1);
    float *dO = rand_f(&r, P.nq, 1.0), *o = nan_f(P.nq), *lse = nan_f(nl);
    float *dq = nan_f(P.nq), *dk = nan_f(P.nkv), *dv = nan_f(P.nkv);
    s2_ref_attn_forward(&P.a, P.q, P.k, P.v, o, lse);
    s2_ref_attn_backward(&P.a, P.q, P.k, P.v, o, lse, dO, dq, dk, dv);
    double *qd = to_d(P.q, P.nq), *kd = to_d(P.k, P.nkv), *vd = to_d(P.v, P.nkv);
    double *dOd = to_d(dO, P.nq);
    check_grad("q", dq, qd, P.nq, &P, qd, kd, vd, dOd, &r);
    check_grad("k", dk, kd, P.nkv, &P, qd, kd, vd, dOd, &r);
    check_grad("v", dv, vd, P.nkv, &P, qd, kd, vd, dOd, &r);
    free(dO), free(o), free(lse), free(dq), free(dk), free(dv);
    free(qd), free(kd), free(vd), free(dOd);
    prob_free(&P);
}

Test(bwd, fd_split) {
    cfg c = {.H = 4, .Hkv = 4, .d = 8, .G = 8, .S = 4, .mode = S2_SHIFT_SPLIT, .lens = {32}};
    check_bwd_fd(&c, 2000);
}

Test(bwd, fd_roll) {
    cfg c = {.H = 4, .Hkv = 4, .d = 8, .G = 8, .S = 4, .mode = S2_SHIFT_ROLL, .lens = {32}};
    check_bwd_fd(&c, 2100);
}

Test(bwd, fd_short_last_group) {
    for (int m = 0; m < 2; m++) {
        cfg c = {.H = 2, .Hkv = 2, .d = 8, .G = 8, .S = 3, .mode = m, .lens = {29}};
        check_bwd_fd(&c, 2200 + m);
    }
}

Test(bwd, fd_gqa) {
    for (int m = 0; m < 2; m++) {
        cfg c = {.H = 8, .Hkv = 2, .d = 8, .G = 8, .S = 4, .mode = m, .lens = {24}};
        check_bwd_fd(&c, 2300 + m);
        cfg c1 = {.H = 4, .Hkv = 1, .d = 8, .G = 8, .S = 4, .mode = m, .lens = {20}};
        check_bwd_fd(&c1, 2310 + m); /* one kv head serves plain and shifted heads */
    }
}

Test(bwd, fd_varlen) {
    for (int m = 0; m < 2; m++) {
        cfg c = {.H = 4, .Hkv = 2, .d = 8, .G = 8, .S = 4, .mode = m, .nseq = 4,
                 .lens = {5, 0, 19, 9}};
        check_bwd_fd(&c, 2400 + m);
    }
}

/* GQA dk/dv = the per-query-head dk/dv of the MHA problem with repeat_kv'd k and v, summed over
 * the query heads that share a kv head. */
static void check_repeat_kv(int H, int Hkv, s2_shift_mode mode, uint64_t seed) {
    cfg c = {.H = H, .Hkv = Hkv, .d = 8, .G = 16, .S = 8, .mode = mode, .nseq = 2,
             .lens = {45, 21}};
    prob P;
    prob_make(&P, &c, seed);
    int T = P.a.T, d = 8, rep = H / Hkv;
    size_t nl = (size_t)H * T, nrep = P.nq;
    rng r = rng_seed(seed + 1);
    float *dO = rand_f(&r, P.nq, 1.0), *o = nan_f(P.nq), *lse = nan_f(nl);
    float *dq = nan_f(P.nq), *dk = nan_f(P.nkv), *dv = nan_f(P.nkv);
    s2_ref_attn_forward(&P.a, P.q, P.k, P.v, o, lse);
    s2_ref_attn_backward(&P.a, P.q, P.k, P.v, o, lse, dO, dq, dk, dv);

    float *kr = xalloc(nrep * sizeof(float)), *vr = xalloc(nrep * sizeof(float));
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
            size_t to = ((size_t)t * H + h) * d, from = ((size_t)t * Hkv + h / rep) * d;
            memcpy(kr + to, P.k + from, d * sizeof(float));
            memcpy(vr + to, P.v + from, d * sizeof(float));
        }
    s2_ref_attn m = P.a;
    m.Hkv = H;
    float *o2 = nan_f(P.nq), *lse2 = nan_f(nl), *dq2 = nan_f(P.nq), *dk2 = nan_f(nrep),
          *dv2 = nan_f(nrep);
    s2_ref_attn_forward(&m, P.q, kr, vr, o2, lse2);
    s2_ref_attn_backward(&m, P.q, kr, vr, o2, lse2, dO, dq2, dk2, dv2);

    double *sk = xalloc(P.nkv * sizeof(double)), *sv = xalloc(P.nkv * sizeof(double));
    for (size_t i = 0; i < P.nkv; i++)
        sk[i] = sv[i] = 0;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++)
            for (int x = 0; x < d; x++) {
                sk[((size_t)t * Hkv + h / rep) * d + x] += dk2[((size_t)t * H + h) * d + x];
                sv[((size_t)t * Hkv + h / rep) * d + x] += dv2[((size_t)t * H + h) * d + x];
            }
    cr_assert(rms(dk, P.nkv) > 1e-3 && rms(dv, P.nkv) > 1e-3);
    cr_assert(rel_l2_ff(o, o2, P.nq) < 1e-6);
    cr_assert(rel_l2_ff(dq, dq2, P.nq) < 1e-6, "dq H=%d Hkv=%d", H, Hkv);
    cr_assert(rel_l2(dk, sk, P.nkv) < 1e-5, "dk H=%d Hkv=%d", H, Hkv);
    cr_assert(rel_l2(dv, sv, P.nkv) < 1e-5, "dv H=%d Hkv=%d", H, Hkv);
    free(dO), free(o), free(lse), free(dq), free(dk), free(dv), free(kr), free(vr);
    free(o2), free(lse2), free(dq2), free(dk2), free(dv2), free(sk), free(sv);
    prob_free(&P);
}

Test(bwd, gqa_equals_repeat_kv) {
    for (int m = 0; m < 2; m++) {
        check_repeat_kv(8, 2, m, 2500 + m);
        check_repeat_kv(8, 4, m, 2510 + m);
        check_repeat_kv(8, 1, m, 2520 + m);
    }
}

/* ---- LoRA ---- */

typedef struct lprob {
    s2_ref_lora l;
    float *x, *W, *A, *B; /* [M,in], [out,in], [r,in], [out,r] */
} lprob;

static void lprob_make(lprob *L, int M, int in, int out, int r, uint64_t seed) {
    L->l = (s2_ref_lora){.M = M, .in = in, .out = out, .r = r, .scale = 16.0f / r};
    rng g = rng_seed(seed);
    L->x = rand_f(&g, (size_t)M * in, 1.0);
    L->W = rand_f(&g, (size_t)out * in, 0.2);
    L->A = rand_f(&g, (size_t)r * in, 0.2);
    L->B = rand_f(&g, (size_t)out * r, 0.1); /* nonzero: B = 0 would hide the adapter path */
}

static void lprob_free(lprob *L) { free(L->x), free(L->W), free(L->A), free(L->B); }

Test(lora, forward_vs_loop) {
    lprob L;
    lprob_make(&L, 13, 37, 29, 4, 3000);
    const s2_ref_lora *l = &L.l;
    size_t ny = (size_t)l->M * l->out;
    float *y = nan_f(ny);
    double *yd = xalloc(ny * sizeof(double));
    double *xd = to_d(L.x, (size_t)l->M * l->in), *Wd = to_d(L.W, (size_t)l->out * l->in);
    double *Ad = to_d(L.A, (size_t)l->r * l->in), *Bd = to_d(L.B, (size_t)l->out * l->r);
    s2_ref_lora_forward(l, L.x, L.W, L.A, L.B, y);
    lora_loop(l, NULL, xd, Wd, Ad, Bd, NULL, yd);
    double e = rel_l2(y, yd, ny);
    cr_assert(e < 1e-6, "y rel err %g", e);
    /* The adapter term must matter at this scale, or the check would not cover it. */
    double *Bz = xalloc((size_t)l->out * l->r * sizeof(double));
    for (int i = 0; i < l->out * l->r; i++)
        Bz[i] = 0;
    lora_loop(l, NULL, xd, Wd, Ad, Bz, NULL, yd);
    cr_assert(rel_l2(y, yd, ny) > 1e-2);
    free(y), free(yd), free(xd), free(Wd), free(Ad), free(Bd), free(Bz);
    lprob_free(&L);
}

/* The loss is linear in each of x, A, B alone, so central differences are exact up to
 * rounding (~1e-12 here); every coordinate is checked. */
static void check_lora_grad(const char *name, const float *g, double *x, size_t n,
                            const lprob *L, const double *xd, const double *Wd, const double *Ad,
                            const double *Bd, const double *dyd) {
    const double h = 1e-3;
    double scale = rms(g, n);
    cr_assert(scale > 1e-3, "%s: gradient ~0", name);
    for (size_t i = 0; i < n; i++) {
        double x0 = x[i];
        x[i] = x0 + h;
        double lp = lora_loop(&L->l, NULL, xd, Wd, Ad, Bd, dyd, NULL);
        x[i] = x0 - h;
        double lm = lora_loop(&L->l, NULL, xd, Wd, Ad, Bd, dyd, NULL);
        x[i] = x0;
        double fd = (lp - lm) / (2 * h);
        cr_assert(fabs(g[i] - fd) <= 1e-5 * (fabs(fd) + scale), "d%s[%zu]: ref %.9g fd %.9g",
                  name, i, g[i], fd);
    }
}

Test(lora, backward_fd) {
    lprob L;
    lprob_make(&L, 11, 23, 17, 3, 3100);
    const s2_ref_lora *l = &L.l;
    size_t nx = (size_t)l->M * l->in, nA = (size_t)l->r * l->in, nB = (size_t)l->out * l->r;
    rng g = rng_seed(3101);
    float *dy = rand_f(&g, (size_t)l->M * l->out, 1.0);
    float *dx = nan_f(nx), *dA = nan_f(nA), *dB = nan_f(nB);
    s2_ref_lora_backward(l, L.x, L.W, L.A, L.B, dy, dx, dA, dB);
    double *xd = to_d(L.x, nx), *Wd = to_d(L.W, (size_t)l->out * l->in), *Ad = to_d(L.A, nA);
    double *Bd = to_d(L.B, nB), *dyd = to_d(dy, (size_t)l->M * l->out);
    check_lora_grad("x", dx, xd, nx, &L, xd, Wd, Ad, Bd, dyd);
    check_lora_grad("A", dA, Ad, nA, &L, xd, Wd, Ad, Bd, dyd);
    check_lora_grad("B", dB, Bd, nB, &L, xd, Wd, Ad, Bd, dyd);
    free(dy), free(dx), free(dA), free(dB), free(xd), free(Wd), free(Ad), free(Bd), free(dyd);
    lprob_free(&L);
}

/* M = 0: nothing to read; the weight gradients are empty sums, zero. */
Test(lora, empty_batch) {
    s2_ref_lora l = {.M = 0, .in = 4, .out = 3, .r = 2, .scale = 1};
    float W[12] = {1}, A[8] = {1}, B[6] = {1}, dA[8], dB[6], y = 42;
    for (int i = 0; i < 8; i++)
        dA[i] = NAN;
    for (int i = 0; i < 6; i++)
        dB[i] = NAN;
    s2_ref_lora_forward(&l, NULL, W, A, B, &y);
    cr_assert(y == 42);
    s2_ref_lora_backward(&l, NULL, W, A, B, NULL, NULL, dA, dB);
    for (int i = 0; i < 8; i++)
        cr_assert(dA[i] == 0);
    for (int i = 0; i < 6; i++)
        cr_assert(dB[i] == 0);
}

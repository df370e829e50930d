/*
 * test_sp_plan.c — the sequence-parallel plan (gen/sp_plan.h) and the window reference
 * (runtime/ref/ref.h) held against things that do not share their code:
 *   - the halo of every rank and kv head against a brute-force enumeration of the visibility
 *     predicate s2_ref_attn_visible() (DESIGN §1 written out pair by pair): on small problems
 *     over every (query of the rank, key) pair; on the shipped specs over the keys the rank's
 *     first query sees, which is exact because the queries that see a key form a cyclic run
 *     starting at the key — itself checked here pair by pair over every small problem;
 *   - the transfer list against those halos (every row exactly once, from its owner), and its
 *     byte counts against their definition;
 *   - the chunked attention (each rank's window on its rows plus exactly the rows the transfer
 *     list brings, dK/dV sent back and summed into the owners) against the whole-sequence
 *     reference;
 *   - the errors, and `s2lora sp-plan` as a user runs it.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen/sp_plan.h"
#include "ref_helpers.h"
#include "run_cmd.h"
#include "runtime/ref/ref.h"
#include "runtime/ref/ref_llama.h"

#define BIN S2_BINARY_DIR "/s2lora"

static s2_ref_attn ref_of(const s2_sp_attn *a)
{
    return (s2_ref_attn){.T = a->N, .H = a->H, .Hkv = a->Hkv, .d = a->d, .G = a->G, .S = a->S,
                         .mode = a->mode, .scale = 1.0f / sqrtf((float)a->d)};
}

/* Some query head of kv head j at query position p sees key position k. */
static int kv_sees(const s2_ref_attn *r, int j, int p, int k)
{
    int rep = r->H / r->Hkv;
    for (int h = j * rep; h < (j + 1) * rep; h++)
        if (s2_ref_attn_visible(r, h, r->T, p, k))
            return 1;
    return 0;
}

/*
 * Holds plan against the predicate. full: every (query of the rank, key) pair; else only the
 * rank's first query (exact by the run property, see the file comment). Also checks the kinds
 * of the kv heads, the transfer list and the byte counts.
 */
static void check_plan(const s2_sp_plan *pl, int full, const char *what)
{
    const s2_sp_attn *a = &pl->a;
    s2_ref_attn r = ref_of(a);
    int N = a->N, P = pl->P, rep = a->H / a->Hkv;
    cr_assert_eq(pl->C % pl->align, 0, "%s: C %d not a multiple of %d", what, pl->C, pl->align);
    /* Chunks: contiguous, covering [0, N), none empty. */
    for (int i = 0; i < P; i++) {
        cr_assert_eq(pl->rank[i].lo, i ? pl->rank[i - 1].hi : 0, "%s: rank %d lo", what, i);
        cr_assert_lt(pl->rank[i].lo, pl->rank[i].hi, "%s: rank %d empty", what, i);
        cr_assert_eq(pl->rank[i].lo, i * pl->C, "%s: rank %d lo", what, i);
    }
    cr_assert_eq(pl->rank[P - 1].hi, N, "%s: last rank's hi", what);
    /* Kinds: by the query heads each kv head serves. */
    int count[S2_SP_KINDS] = {0};
    for (int j = 0; j < a->Hkv; j++) {
        int plain = 0, shifted = 0;
        for (int h = j * rep; h < (j + 1) * rep; h++)
            *(h < a->H / 2 ? &plain : &shifted) = 1;
        s2_sp_kind want = plain && shifted ? S2_SP_MIXED : plain ? S2_SP_PLAIN : S2_SP_SHIFTED;
        cr_assert_eq(s2_sp_kv_kind(pl, j), want, "%s: kv head %d kind", what, j);
        count[want]++;
    }
    for (int k = 0; k < S2_SP_KINDS; k++)
        cr_assert_eq(pl->kv_count[k], count[k], "%s: kind %d count", what, k);

    unsigned char *brute = xalloc((size_t)N), *got = xalloc((size_t)N);
    long long recv[64] = {0}, send[64] = {0}, total = 0, total_b = 0;
    cr_assert_leq(P, 64);
    for (int i = 0; i < pl->n_xfer; i++) {
        const s2_sp_xfer *x = &pl->xfer[i];
        cr_assert(x->src >= 0 && x->src < P && x->dst >= 0 && x->dst < P && x->src != x->dst,
                  "%s: transfer %d ranks %d -> %d", what, i, x->src, x->dst);
        cr_assert(x->lo < x->hi && x->lo >= pl->rank[x->src].lo && x->hi <= pl->rank[x->src].hi,
                  "%s: transfer %d rows [%d, %d) not inside rank %d's [%d, %d)", what, i, x->lo,
                  x->hi, x->src, pl->rank[x->src].lo, pl->rank[x->src].hi);
        cr_assert_gt(pl->kv_count[x->kind], 0, "%s: transfer %d of an empty kind", what, i);
        long long vals = (long long)(x->hi - x->lo) * pl->kv_count[x->kind] * a->d * 2;
        cr_assert_eq(x->fwd_bytes, vals * a->elem_bytes, "%s: transfer %d bytes", what, i);
        cr_assert_eq(x->bwd_bytes, vals * a->grad_elem_bytes, "%s: transfer %d bytes", what, i);
        if (i)
            cr_assert(pl->xfer[i - 1].dst < x->dst ||
                          (pl->xfer[i - 1].dst == x->dst && (pl->xfer[i - 1].src < x->src ||
                           (pl->xfer[i - 1].src == x->src && pl->xfer[i - 1].kind < x->kind))),
                      "%s: transfers out of order at %d", what, i);
        recv[x->dst] += x->fwd_bytes;
        send[x->src] += x->fwd_bytes;
        total += x->fwd_bytes;
        total_b += x->bwd_bytes;
    }
    cr_assert_eq(pl->fwd_bytes, total, "%s: total bytes", what);
    cr_assert_eq(pl->bwd_bytes, total_b, "%s: total backward bytes", what);

    for (int i = 0; i < P; i++) {
        const s2_sp_rank *rk = &pl->rank[i];
        int lo = rk->lo, hi = rk->hi;
        cr_assert_eq(rk->fwd_recv, recv[i], "%s: rank %d receives", what, i);
        cr_assert_eq(rk->fwd_send, send[i], "%s: rank %d sends", what, i);
        cr_assert_eq(rk->bwd_send * a->elem_bytes, rk->fwd_recv * a->grad_elem_bytes,
                     "%s: rank %d sends back what it received", what, i);
        for (int j = 0; j < a->Hkv; j++) {
            s2_sp_kind kind = s2_sp_kv_kind(pl, j);
            /* What the plan's ranges and its transfer list say rank i receives. */
            memset(got, 0, (size_t)N);
            for (int t = 0; t < pl->n_xfer; t++) {
                const s2_sp_xfer *x = &pl->xfer[t];
                if (x->dst != i || x->kind != kind)
                    continue;
                for (int k = x->lo; k < x->hi; k++) {
                    cr_assert(!got[k], "%s: rank %d receives row %d of kv head %d twice", what,
                              i, k, j);
                    got[k] = 1;
                }
            }
            for (int k = 0; k < N; k++) {
                int in_ranges = (k >= rk->before[kind].lo && k < rk->before[kind].hi) ||
                                (k >= rk->wrap[kind].lo && k < rk->wrap[kind].hi);
                cr_assert_eq(in_ranges, got[k], "%s: rank %d kv head %d row %d: ranges %d, "
                             "transfers %d", what, i, j, k, in_ranges, got[k]);
            }
            /* The brute force. */
            for (int k = 0; k < N; k++) {
                brute[k] = 0;
                if (k >= lo && k < hi)
                    continue;
                if (!full)
                    brute[k] = (unsigned char)kv_sees(&r, j, lo, k);
                else
                    for (int p = lo; p < hi && !brute[k]; p++)
                        brute[k] = (unsigned char)kv_sees(&r, j, p, k);
            }
            for (int k = 0; k < N; k++)
                if (brute[k] != got[k])
                    cr_assert_fail("%s: rank %d [%d, %d), kv head %d (%s), row %d: %s sees it, "
                                   "the plan %s it", what, i, lo, hi, j, s2_sp_kind_name(kind),
                                   k, brute[k] ? "a query" : "no query",
                                   got[k] ? "sends" : "does not send");
        }
    }
    free(brute);
    free(got);
}

static s2_sp_attn sp_attn(int N, int G, int S, s2_shift_mode mode, int H, int Hkv, int d)
{
    return (s2_sp_attn){.N = N, .G = G, .S = S, .mode = mode, .H = H, .Hkv = Hkv, .d = d,
                        .elem_bytes = 2};
}

/* ---- the run property the shipped-spec check rests on ---- */

/* For every small problem, head class and key: the queries that see the key are the positions
 * k, k+1, ..., k+m-1 (mod N) for some m >= 1, and no others. */
Test(sp_plan, queries_seeing_a_key_form_a_cyclic_run_from_it)
{
    for (int mode = 0; mode < 2; mode++)
        for (int N = 1; N <= 30; N++)
            for (int G = 1; G <= N + 2; G++)
                for (int S = 0; S < G; S++) {
                    s2_ref_attn r = {.T = N, .H = 2, .Hkv = 2, .d = 1, .G = G, .S = S,
                                     .mode = (s2_shift_mode)mode, .scale = 1};
                    for (int h = 0; h < 2; h++)
                        for (int k = 0; k < N; k++) {
                            int t = 0;
                            while (t < N && s2_ref_attn_visible(&r, h, N, (k + t) % N, k))
                                t++;
                            cr_assert_geq(t, 1, "key %d does not see itself", k);
                            for (int u = t; u < N; u++)
                                cr_assert(!s2_ref_attn_visible(&r, h, N, (k + u) % N, k),
                                          "%s N %d G %d S %d head %d: key %d seen by %d, not "
                                          "by %d, again by %d", mode ? "roll" : "split", N, G,
                                          S, h, k, (k + t - 1) % N, (k + t) % N, (k + u) % N);
                        }
                }
}

/* ---- (a) plans against the brute force ---- */

/* Small problems, every pair, both modes, with and without GQA, Hkv odd, chunks shorter than
 * G, alignments that make chunk edges fall anywhere in a group. */
Test(sp_plan, small_problems_match_the_brute_force)
{
    const int heads[][2] = {{2, 2}, {4, 2}, {8, 2}, {2, 1}, {4, 1}, {6, 3}, {6, 1}, {3, 3}};
    rng g = rng_seed(11);
    int planned = 0;
    for (int it = 0; it < 4000; it++) {
        int N = 1 + rng_int(&g, 48), G = 1 + rng_int(&g, N + 6), S = rng_int(&g, G);
        int hh = rng_int(&g, (int)(sizeof heads / sizeof heads[0]));
        int P = 1 + rng_int(&g, 9), align = 1 + rng_int(&g, 6);
        s2_shift_mode mode = (s2_shift_mode)rng_int(&g, 2);
        s2_sp_attn a = sp_attn(N, G, S, mode, heads[hh][0], heads[hh][1], 1 + rng_int(&g, 4));
        a.grad_elem_bytes = rng_int(&g, 2) * 4;
        s2_sp_plan pl;
        s2_error err = {0};
        s2_status st = s2_sp_plan_make(&a, P, align, &pl, &err);
        /* Valid iff every chunk of ceil(N / P) rounded up to align rows holds a row. */
        int C = ((N + P - 1) / P + align - 1) / align * align;
        int ok = (P - 1) * C < N;
        char what[160];
        snprintf(what, sizeof what, "N %d G %d S %d %s H %d Hkv %d P %d align %d", N, G, S,
                 s2_shift_mode_name(mode), a.H, a.Hkv, P, align);
        cr_assert_eq(st, ok ? S2_OK : S2_ERR_INVALID, "%s: %s", what, err.msg ? err.msg : "ok");
        s2_error_clear(&err);
        if (!ok)
            continue;
        cr_assert_eq(pl.C, C, "%s", what);
        cr_assert_eq(pl.a.grad_elem_bytes, a.grad_elem_bytes ? a.grad_elem_bytes : 2);
        check_plan(&pl, 1, what);
        s2_sp_plan_free(&pl);
        planned++;
    }
    cr_assert_gt(planned, 1500, "too few valid plans drawn: %d", planned);
}

/* Hand-picked shapes at N = 1000 (like those of the numeric tests below), every pair. */
Test(sp_plan, n1000_shapes_match_the_brute_force)
{
    const int shapes[][5] = {/* G, S, H, Hkv, align */
                             {96, 48, 4, 2, 16},  {96, 48, 8, 2, 1},   {96, 17, 4, 1, 16},
                             {96, 48, 6, 3, 8},   {400, 200, 4, 2, 8}, {1024, 0, 4, 2, 16},
                             {1024, 300, 4, 2, 8}, {700, 350, 6, 3, 1}, {96, 95, 2, 1, 1}};
    const int Ps[] = {1, 2, 3, 5, 8};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int mode = 0; mode < 2; mode++)
            for (size_t pi = 0; pi < sizeof Ps / sizeof Ps[0]; pi++) {
                s2_sp_attn a = sp_attn(1000, shapes[s][0], shapes[s][1], (s2_shift_mode)mode,
                                       shapes[s][2], shapes[s][3], 16);
                s2_sp_plan pl;
                s2_error err = {0};
                cr_assert_eq(s2_sp_plan_make(&a, Ps[pi], shapes[s][4], &pl, &err), S2_OK, "%s",
                             err.msg);
                char what[128];
                snprintf(what, sizeof what, "G %d S %d %s H %d Hkv %d P %d", a.G, a.S,
                         s2_shift_mode_name(a.mode), a.H, a.Hkv, Ps[pi]);
                check_plan(&pl, 1, what);
                s2_sp_plan_free(&pl);
            }
}

/* Every spec in specs/, P in {1, 2, 4, 8}, one shift mode; plus the facts DESIGN §5 states. */
static void check_shipped(s2_shift_mode mode)
{
    DIR *dir = opendir(S2_SOURCE_DIR "/specs");
    cr_assert(dir);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(dir))) {
        size_t len = strlen(e->d_name);
        if (len < 6 || strcmp(e->d_name + len - 5, ".yaml"))
            continue;
        char path[1024], set[64];
        snprintf(path, sizeof path, "%s/specs/%s", S2_SOURCE_DIR, e->d_name);
        snprintf(set, sizeof set, "s2attn.shift_mode=%s", s2_shift_mode_name(mode));
        s2_spec_override ov = {set};
        s2_spec spec;
        s2_error err = {0};
        cr_assert_eq(s2_spec_load(path, &ov, 1, &spec, &err), S2_OK, "%s", err.msg);
        s2_sp_attn a;
        s2_sp_attn_from_spec(&spec, &a);
        cr_assert_eq(a.mode, mode);
        for (int P = 1; P <= 8; P *= 2) {
            s2_sp_plan pl;
            cr_assert_eq(s2_sp_plan_make(&a, P, S2_SP_DEFAULT_ALIGN, &pl, &err), S2_OK, "%s: %s",
                         e->d_name, err.msg);
            char what[256];
            snprintf(what, sizeof what, "%s %s P %d", e->d_name, s2_shift_mode_name(mode), P);
            check_plan(&pl, 0, what);
            if (P == 1)
                cr_assert_eq(pl.n_xfer, 0, "%s: one rank exchanges nothing", what);
            /* C a multiple of G: plain groups never cross a chunk edge; each rank's first
             * shifted group starts S rows (split) or G - S rows (roll) before it, on the rank
             * before (the last one for rank 0 in roll mode, whose group wraps). */
            if (P > 1 && pl.C % a.G == 0 && a.N % a.G == 0 && a.S > 0) {
                int rows = mode == S2_SHIFT_SPLIT ? a.S : a.G - a.S;
                cr_assert_eq(pl.n_xfer, mode == S2_SHIFT_SPLIT ? P - 1 : P, "%s", what);
                for (int i = 0; i < pl.n_xfer; i++) {
                    const s2_sp_xfer *x = &pl.xfer[i];
                    cr_assert_eq(x->kind, S2_SP_SHIFTED, "%s", what);
                    cr_assert_eq(x->src, (x->dst + P - 1) % P, "%s", what);
                    cr_assert_eq(x->hi - x->lo, rows, "%s", what);
                    cr_assert_eq(x->hi, x->dst ? pl.rank[x->dst].lo : a.N, "%s", what);
                    cr_assert_eq(pl.rank[x->dst].fwd_recv,
                                 (long long)rows * (a.Hkv / 2) * a.d * 2 * 2, "%s", what);
                }
            }
            /* DESIGN §5: 33.5 MB a rank a layer for LLaMA-2 7B at 32k (split, C = G). */
            if (!strcmp(spec.name, "llama2-7b-32k") && P == 4 && mode == S2_SHIFT_SPLIT)
                cr_assert_eq(pl.rank[1].fwd_recv, 4096LL * 16 * 128 * 2 * 2, "%s", what);
            s2_sp_plan_free(&pl);
        }
        n++;
    }
    closedir(dir);
    cr_assert_geq(n, 10, "specs/ should hold the paper's nine configurations and a small model");
}

Test(sp_plan, shipped_specs_split) { check_shipped(S2_SHIFT_SPLIT); }
Test(sp_plan, shipped_specs_roll) { check_shipped(S2_SHIFT_ROLL); }

/* G >= N with S = 0 is plain causal attention: every rank needs every earlier row, of every kv
 * head, from every earlier rank. */
Test(sp_plan, causal_needs_every_earlier_row)
{
    for (int mode = 0; mode < 2; mode++) {
        s2_sp_attn a = sp_attn(1000, 1024, 0, (s2_shift_mode)mode, 4, 2, 16);
        s2_sp_plan pl;
        cr_assert_eq(s2_sp_plan_make(&a, 8, 16, &pl, NULL), S2_OK);
        for (int r = 0; r < 8; r++)
            for (int k = 0; k < S2_SP_KINDS; k++) {
                cr_assert_eq(pl.rank[r].before[k].lo, 0);
                cr_assert_eq(pl.rank[r].before[k].hi, pl.rank[r].lo);
                cr_assert_eq(pl.rank[r].wrap[k].lo, pl.rank[r].wrap[k].hi);
            }
        cr_assert_eq(pl.n_xfer, 2 * 8 * 7 / 2); /* two kinds, every (earlier, later) pair */
        s2_sp_plan_free(&pl);
    }
}

/* Roll mode: the head's queries see the tail, so rank 0 (and every rank holding part of the
 * wrapped group's head) receives the tail from the last rank(s). */
Test(sp_plan, roll_wrap_reaches_every_head_rank)
{
    /* N 1000, G 700, S 350: order index 650 (position 0) lies inside the order group [0, 700),
     * which is the positions [350, 1000) then [0, 50); in chunks of 16 rows, ranks 0..3 hold
     * head rows. */
    s2_sp_attn a = sp_attn(1000, 700, 350, S2_SHIFT_ROLL, 2, 2, 8);
    s2_sp_plan pl;
    cr_assert_eq(s2_sp_plan_make(&a, 63, 1, &pl, NULL), S2_OK);
    check_plan(&pl, 1, "roll G 700 S 350 P 63");
    int wrapped = 0;
    for (int r = 0; r < pl.P; r++)
        if (pl.rank[r].wrap[S2_SP_SHIFTED].lo < pl.rank[r].wrap[S2_SP_SHIFTED].hi) {
            cr_assert_lt(pl.rank[r].lo, 50, "rank %d holds no head row but receives the tail", r);
            cr_assert_eq(pl.rank[r].wrap[S2_SP_SHIFTED].lo, 350);
            cr_assert_eq(pl.rank[r].wrap[S2_SP_SHIFTED].hi, 1000);
            wrapped++;
        }
    cr_assert_eq(wrapped, 4); /* ranks of 16 rows: 0..15, 16..31, 32..47, 48..63 */
    s2_sp_plan_free(&pl);
}

/* ---- (b) the chunked reference equals the whole one ---- */

typedef struct eq_case {
    int N, G, S, H, Hkv, d;
} eq_case;

static void max_err(const float *x, const float *ref, size_t n, double *err, double *scale)
{
    *err = 0;
    *scale = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)x[i] - ref[i]);
        if (!(e <= *err)) /* NaN sticks */
            *err = e;
        if (fabs(ref[i]) > *scale)
            *scale = fabs(ref[i]);
    }
}

/* A problem and the whole sequence's forward and backward (the reference to match). */
typedef struct whole {
    s2_sp_attn sa;
    s2_ref_attn a;
    float *q, *k, *v, *dout, *o, *lse, *dq, *dk, *dv;
} whole;

static void whole_make(whole *w, const eq_case *c, s2_shift_mode mode)
{
    w->sa = sp_attn(c->N, c->G, c->S, mode, c->H, c->Hkv, c->d);
    w->a = ref_of(&w->sa);
    size_t nq = (size_t)c->N * c->H * c->d, nkv = (size_t)c->N * c->Hkv * c->d;
    rng g = rng_seed(1000u * (unsigned)c->G + (unsigned)mode + 13u * (unsigned)c->S);
    w->q = rand_f(&g, nq, 2.0);
    w->k = rand_f(&g, nkv, 2.0);
    w->v = rand_f(&g, nkv, 1.0);
    w->dout = rand_f(&g, nq, 1.0);
    w->o = nan_f(nq), w->lse = nan_f((size_t)c->H * c->N), w->dq = nan_f(nq);
    w->dk = nan_f(nkv), w->dv = nan_f(nkv);
    s2_ref_attn_forward(&w->a, w->q, w->k, w->v, w->o, w->lse);
    s2_ref_attn_backward(&w->a, w->q, w->k, w->v, w->o, w->lse, w->dout, w->dq, w->dk, w->dv);
}

static void whole_free(whole *w)
{
    free(w->q), free(w->k), free(w->v), free(w->dout), free(w->o), free(w->lse), free(w->dq);
    free(w->dk), free(w->dv);
}

/* Runs every rank as the NCCL path would: its own rows, the rows the transfer list sends it
 * (copied out of the senders' own buffers), its window's forward and backward, then every halo
 * row's dK/dV sent back and summed into its owner. drop >= 0 leaves transfer `drop` out and
 * expects the receiving window to refuse. */
static void run_chunked(const whole *w, int P, int align, int drop)
{
    const s2_sp_attn sa = w->sa;
    const s2_ref_attn a = w->a;
    int N = sa.N, H = sa.H, Hkv = sa.Hkv, d = sa.d;
    size_t nkv = (size_t)N * Hkv * d;
    const float *q = w->q, *k = w->k, *v = w->v, *dout = w->dout, *o = w->o, *lse = w->lse;
    const float *dq = w->dq, *dk = w->dk, *dv = w->dv;
    s2_sp_plan pl;
    s2_error err = {0};
    cr_assert_eq(s2_sp_plan_make(&sa, P, align, &pl, &err), S2_OK, "%s", err.msg);
    char what[160];
    snprintf(what, sizeof what, "N %d G %d S %d %s H %d Hkv %d P %d align %d (C %d)", N, sa.G,
             sa.S, s2_shift_mode_name(sa.mode), H, Hkv, P, align, pl.C);

    /* Each rank's own rows, in buffers of its own. */
    float **lk = xalloc(sizeof(float *) * P), **lv = xalloc(sizeof(float *) * P);
    float **ldk = xalloc(sizeof(float *) * P), **ldv = xalloc(sizeof(float *) * P);
    float **rk = xalloc(sizeof(float *) * pl.n_xfer), **rv = xalloc(sizeof(float *) * pl.n_xfer);
    float **rdk = xalloc(sizeof(float *) * pl.n_xfer), **rdv = xalloc(sizeof(float *) * pl.n_xfer);
    for (int r = 0; r < P; r++) {
        size_t n = (size_t)(pl.rank[r].hi - pl.rank[r].lo) * Hkv * d;
        lk[r] = xalloc(n * sizeof(float));
        lv[r] = xalloc(n * sizeof(float));
        memcpy(lk[r], k + (size_t)pl.rank[r].lo * Hkv * d, n * sizeof(float));
        memcpy(lv[r], v + (size_t)pl.rank[r].lo * Hkv * d, n * sizeof(float));
        ldk[r] = nan_f(n);
        ldv[r] = nan_f(n);
    }
    /* The forward's sends: rows of the kind's kv heads, [rows, heads, d]. */
    for (int t = 0; t < pl.n_xfer; t++) {
        const s2_sp_xfer *x = &pl.xfer[t];
        int nh = pl.kv_count[x->kind], h0 = pl.kv_first[x->kind], slo = pl.rank[x->src].lo;
        size_t n = (size_t)(x->hi - x->lo) * nh * d;
        rk[t] = xalloc(n * sizeof(float));
        rv[t] = xalloc(n * sizeof(float));
        rdk[t] = nan_f(n);
        rdv[t] = nan_f(n);
        for (int p = x->lo; p < x->hi; p++)
            for (int j = 0; j < nh; j++) {
                size_t to = ((size_t)(p - x->lo) * nh + j) * d;
                size_t from = ((size_t)(p - slo) * Hkv + h0 + j) * d;
                memcpy(rk[t] + to, lk[x->src] + from, d * sizeof(float));
                memcpy(rv[t] + to, lv[x->src] + from, d * sizeof(float));
            }
    }
    /* Each rank's window. */
    int refused = 0;
    s2_ref_kv_rows *blk = xalloc(sizeof *blk * (size_t)(pl.n_xfer + 1));
    for (int r = 0; r < P; r++) {
        int lo = pl.rank[r].lo, hi = pl.rank[r].hi, n = 0;
        blk[n++] = (s2_ref_kv_rows){lo, hi, 0, Hkv, lk[r], lv[r], ldk[r], ldv[r]};
        for (int t = 0; t < pl.n_xfer; t++) {
            const s2_sp_xfer *x = &pl.xfer[t];
            if (x->dst != r || t == drop)
                continue;
            int h0 = pl.kv_first[x->kind];
            blk[n++] = (s2_ref_kv_rows){x->lo, x->hi, h0, h0 + pl.kv_count[x->kind], rk[t],
                                        rv[t], rdk[t], rdv[t]};
        }
        size_t rq = (size_t)(hi - lo) * H * d;
        float *wo = nan_f(rq), *wl = nan_f((size_t)H * (hi - lo)), *wdq = nan_f(rq);
        float *lse_r = xalloc(sizeof(float) * (size_t)H * (hi - lo));
        for (int h = 0; h < H; h++)
            memcpy(lse_r + (size_t)h * (hi - lo), lse + (size_t)h * N + lo,
                   sizeof(float) * (hi - lo));
        s2_status st = s2_ref_attn_window_forward(&a, lo, hi, q + (size_t)lo * H * d, blk, n, wo,
                                                  wl, &err);
        if (drop >= 0 && pl.xfer[drop].dst == r) {
            cr_assert_eq(st, S2_ERR_INVALID, "%s: rank %d without transfer %d", what, r, drop);
            cr_assert(strstr(err.msg, "which no key block holds"), "%s", err.msg);
            s2_error_clear(&err);
            refused = 1;
            free(wo), free(wl), free(wdq), free(lse_r);
            continue;
        }
        cr_assert_eq(st, S2_OK, "%s: rank %d: %s", what, r, err.msg);
        /* The same sums in the same order as the whole sequence's: the same bits. */
        cr_assert_eq(memcmp(wo, o + (size_t)lo * H * d, rq * sizeof(float)), 0,
                     "%s: rank %d O", what, r);
        cr_assert_eq(memcmp(wl, lse_r, sizeof(float) * (size_t)H * (hi - lo)), 0,
                     "%s: rank %d LSE", what, r);
        st = s2_ref_attn_window_backward(&a, lo, hi, q + (size_t)lo * H * d, blk, n, wo, wl,
                                         dout + (size_t)lo * H * d, wdq, &err);
        cr_assert_eq(st, S2_OK, "%s: rank %d: %s", what, r, err.msg);
        cr_assert_eq(memcmp(wdq, dq + (size_t)lo * H * d, rq * sizeof(float)), 0,
                     "%s: rank %d dQ", what, r);
        free(wo), free(wl), free(wdq), free(lse_r);
    }
    if (drop >= 0) {
        cr_assert(refused, "%s: no window refused the missing transfer", what);
    } else {
        /* The backward's sends: every halo row's dK/dV back to its owner, summed. */
        for (int t = 0; t < pl.n_xfer; t++) {
            const s2_sp_xfer *x = &pl.xfer[t];
            int nh = pl.kv_count[x->kind], h0 = pl.kv_first[x->kind], slo = pl.rank[x->src].lo;
            for (int p = x->lo; p < x->hi; p++)
                for (int j = 0; j < nh; j++)
                    for (int e = 0; e < d; e++) {
                        size_t from = ((size_t)(p - x->lo) * nh + j) * d + e;
                        size_t to = ((size_t)(p - slo) * Hkv + h0 + j) * d + e;
                        ldk[x->src][to] += rdk[t][from];
                        ldv[x->src][to] += rdv[t][from];
                    }
        }
        float *cdk = nan_f(nkv), *cdv = nan_f(nkv);
        for (int r = 0; r < P; r++) {
            size_t n = (size_t)(pl.rank[r].hi - pl.rank[r].lo) * Hkv * d;
            memcpy(cdk + (size_t)pl.rank[r].lo * Hkv * d, ldk[r], n * sizeof(float));
            memcpy(cdv + (size_t)pl.rank[r].lo * Hkv * d, ldv[r], n * sizeof(float));
        }
        /* Partial sums rounded to fp32 and added: the same math reordered. */
        double e, s;
        max_err(cdk, dk, nkv, &e, &s);
        cr_assert(e <= 1e-5 * s, "%s: dK max error %g of max %g", what, e, s);
        max_err(cdv, dv, nkv, &e, &s);
        cr_assert(e <= 1e-5 * s, "%s: dV max error %g of max %g", what, e, s);
        free(cdk), free(cdv);
    }
    for (int r = 0; r < P; r++)
        free(lk[r]), free(lv[r]), free(ldk[r]), free(ldv[r]);
    for (int t = 0; t < pl.n_xfer; t++)
        free(rk[t]), free(rv[t]), free(rdk[t]), free(rdv[t]);
    free(lk), free(lv), free(ldk), free(ldv), free(rk), free(rv), free(rdk), free(rdv), free(blk);
    s2_sp_plan_free(&pl);
}

/* Both modes, P in {1, 2, 3, 5, 8} (long groups, whose references cost G per row: 1, 3, 8). */
static void run_all(const eq_case *c, int align)
{
    const int all[] = {1, 2, 3, 5, 8, 0}, few[] = {1, 3, 8, 0};
    const int *Ps = c->G > 200 ? few : all;
    for (int mode = 0; mode < 2; mode++) {
        whole w;
        whole_make(&w, c, (s2_shift_mode)mode);
        for (int i = 0; Ps[i]; i++)
            run_chunked(&w, Ps[i], align, -1);
        whole_free(&w);
    }
}

/* N = 1000 is no multiple of P·G; align 16 puts chunk edges inside groups of 96. */
Test(sp_equiv, mha) { run_all(&(eq_case){1000, 96, 48, 4, 2, 16}, 16); }
Test(sp_equiv, gqa) { run_all(&(eq_case){1000, 96, 48, 8, 2, 16}, 1); }
Test(sp_equiv, one_kv_head_serves_both_kinds)
{
    run_all(&(eq_case){1000, 96, 17, 4, 1, 16}, 16);
}
Test(sp_equiv, odd_kv_heads) { run_all(&(eq_case){1000, 96, 48, 6, 3, 16}, 8); }
/* Chunks of 128 rows, groups of 400: a halo spans several ranks. */
Test(sp_equiv, chunks_shorter_than_g) { run_all(&(eq_case){1000, 400, 200, 4, 2, 16}, 8); }
/* G >= N, S = 0: plain causal attention, every earlier row needed. (Shorter sequences here:
 * the references cost G a row.) */
Test(sp_equiv, causal) { run_all(&(eq_case){600, 640, 0, 4, 2, 16}, 16); }
/* One group that, in roll mode, wraps 300 rows of the tail onto the head. */
Test(sp_equiv, one_wrapping_group) { run_all(&(eq_case){600, 640, 300, 4, 2, 16}, 8); }
Test(sp_equiv, wide_wrap) { run_all(&(eq_case){700, 490, 245, 6, 3, 16}, 1); }

/* A transfer left out is a key the receiving window cannot see: it refuses, naming it. */
Test(sp_equiv, missing_transfer_is_refused)
{
    eq_case c = {1000, 96, 48, 4, 2, 16};
    s2_sp_attn sa = sp_attn(c.N, c.G, c.S, S2_SHIFT_ROLL, c.H, c.Hkv, c.d);
    s2_sp_plan pl;
    cr_assert_eq(s2_sp_plan_make(&sa, 5, 16, &pl, NULL), S2_OK);
    int n = pl.n_xfer;
    s2_sp_plan_free(&pl);
    cr_assert_gt(n, 3);
    whole w;
    whole_make(&w, &c, S2_SHIFT_ROLL);
    for (int t = 0; t < n; t++)
        run_chunked(&w, 5, 16, t);
    whole_free(&w);
}

Test(sp_equiv, window_argument_errors)
{
    s2_ref_attn a = {.T = 10, .H = 2, .Hkv = 1, .d = 4, .G = 4, .S = 2, .scale = 0.5f};
    float buf[10 * 2 * 4] = {0}, o[10 * 2 * 4], lse[20];
    s2_ref_kv_rows two[2] = {{0, 10, 0, 1, buf, buf, buf, buf}, {5, 6, 0, 1, buf, buf, buf, buf}};
    s2_error err = {0};
    cr_assert_eq(s2_ref_attn_window_forward(&a, 0, 10, buf, two, 2, o, lse, &err),
                 S2_ERR_INVALID);
    cr_assert(strstr(err.msg, "key blocks 0 and 1 both hold position 5 of kv head 0"), "%s",
              err.msg);
    s2_error_clear(&err);
    cr_assert_eq(s2_ref_attn_window_forward(&a, 4, 11, buf, two, 1, o, lse, &err),
                 S2_ERR_INVALID);
    cr_assert(strstr(err.msg, "queries [4, 11)"), "%s", err.msg);
    s2_error_clear(&err);
    s2_ref_kv_rows bad = {0, 11, 0, 1, buf, buf, buf, buf};
    cr_assert_eq(s2_ref_attn_window_forward(&a, 0, 10, buf, &bad, 1, o, lse, &err),
                 S2_ERR_INVALID);
    cr_assert(strstr(err.msg, "key block 0 holds positions [0, 11)"), "%s", err.msg);
    s2_error_clear(&err);
    s2_ref_kv_rows nograd = {0, 10, 0, 1, buf, buf, NULL, NULL};
    cr_assert_eq(s2_ref_attn_window_backward(&a, 0, 10, buf, &nograd, 1, o, lse, buf, o, &err),
                 S2_ERR_INVALID);
    cr_assert(strstr(err.msg, "no dk, dv"), "%s", err.msg);
    s2_error_clear(&err);
    int32_t cu[2] = {0, 10};
    a.cu_seqlens = cu;
    a.B = 1;
    cr_assert_eq(s2_ref_attn_window_forward(&a, 0, 10, buf, two, 1, o, lse, &err),
                 S2_ERR_INVALID);
    cr_assert(strstr(err.msg, "cu_seqlens"), "%s", err.msg);
    s2_error_clear(&err);
}

/* ---- (c) plan errors ---- */

static void expect_error(const s2_sp_attn *a, int P, int align, const char *needle)
{
    s2_sp_plan pl;
    s2_error err = {0};
    cr_assert_eq(s2_sp_plan_make(a, P, align, &pl, &err), S2_ERR_INVALID, "P %d align %d", P,
                 align);
    cr_assert(err.msg && strstr(err.msg, needle), "P %d align %d: '%s' lacks '%s'", P, align,
              err.msg, needle);
    cr_assert_null(pl.rank);
    cr_assert_null(pl.xfer);
    s2_error_clear(&err);
}

Test(sp_plan, errors)
{
    s2_sp_attn a = sp_attn(1000, 96, 48, S2_SHIFT_SPLIT, 4, 2, 16);
    expect_error(&a, 0, 128, "0 ranks: expected >= 1");
    expect_error(&a, -3, 128, "-3 ranks: expected >= 1");
    /* Chunks of 128 rows: 8 ranks hold rows, a ninth none. */
    expect_error(&a, 9, 128, "the largest valid P is 8");
    expect_error(&a, 9, 128, "leave rank 8 without rows");
    expect_error(&a, 1000000, 128, "the largest valid P is 8");
    expect_error(&a, 2, 0, "alignment 0 rows");
    expect_error(&a, 2, -128, "alignment -128 rows");
    s2_sp_attn big = a;
    big.N = INT_MAX;
    expect_error(&big, 1, (1 << 30) + 1, "overflow a row index");
    /* Validity is not monotone in P: with N = 10 and no alignment, 5 and 10 ranks work, 6 do
     * not (chunks of 2 fill 5 ranks). */
    s2_sp_attn t = sp_attn(10, 4, 2, S2_SHIFT_ROLL, 2, 2, 4);
    expect_error(&t, 6, 1, "the largest valid P is 10 (the largest below 6 is 5)");
    s2_sp_plan pl;
    cr_assert_eq(s2_sp_plan_make(&t, 10, 1, &pl, NULL), S2_OK);
    s2_sp_plan_free(&pl);
    /* Constants the semantics do not define. */
    s2_sp_attn b = a;
    b.S = 96;
    expect_error(&b, 2, 1, "0 <= S < G");
    b = a;
    b.Hkv = 3;
    expect_error(&b, 2, 1, "kv heads dividing query heads");
    b = a;
    b.N = 0;
    expect_error(&b, 1, 1, "N = 0 tokens");
    b = a;
    b.elem_bytes = 0;
    expect_error(&b, 1, 1, "k/v bytes >= 1");
}

/* ---- the summary and the CLI ---- */

Test(sp_plan, summary_names_what_moves)
{
    s2_spec spec;
    s2_error err = {0};
    cr_assert_eq(s2_spec_load(S2_SOURCE_DIR "/specs/llama2-7b-32k.yaml", NULL, 0, &spec, &err),
                 S2_OK, "%s", err.msg);
    s2_sp_attn a;
    s2_sp_attn_from_spec(&spec, &a);
    s2_sp_plan pl;
    cr_assert_eq(s2_sp_plan_make(&a, 4, 128, &pl, &err), S2_OK);
    s2_buf b = {0};
    s2_sp_plan_format(&pl, &b);
    cr_assert(!b.oom);
    /* 4096 rows x 16 kv heads x 128 x 2 (k, v) x 2 bytes = 33,554,432 bytes. */
    cr_assert(strstr(b.data, "rank 1 receives rows 4096..8191 of 16 shifted kv heads from rank 0: "
                             "33.6 MB k+v a layer"), "%s", b.data);
    cr_assert(strstr(b.data, "rank 0 holds rows 0..8191 (8192)"), "%s", b.data);
    cr_assert(strstr(b.data, "16 plain (0..15), 16 shifted (16..31)"), "%s", b.data);
    cr_assert(strstr(b.data, "3 transfers, 100.7 MB k+v forward"), "%s", b.data);
    s2_buf_free(&b);
    s2_sp_plan_free(&pl);
    /* One kv head for four query heads: mixed. */
    s2_sp_attn m = sp_attn(1000, 96, 48, S2_SHIFT_SPLIT, 4, 1, 16);
    cr_assert_eq(s2_sp_plan_make(&m, 2, 16, &pl, NULL), S2_OK);
    s2_sp_plan_format(&pl, &b);
    cr_assert(strstr(b.data, "1 mixed (0..0)"), "%s", b.data);
    /* C = 512: the plain group [480, 576) and the shifted one [432, 528) cross it. */
    cr_assert(strstr(b.data, "rank 1 receives rows 432..511 of 1 mixed kv head from rank 0"),
              "%s", b.data);
    s2_buf_free(&b);
    s2_sp_plan_free(&pl);
}

Test(sp_cli, prints_the_plan)
{
    char *out;
    cr_assert_eq(run(BIN " sp-plan " S2_SOURCE_DIR "/specs/llama2-7b-32k.yaml --sp 4", &out), 0,
                 "%s", out);
    cr_expect(strstr(out, "rank 3 receives rows 20480..24575 of 16 shifted kv heads from rank 2"),
              "%s", out);
    free(out);
    cr_assert_eq(run(BIN " sp-plan " S2_SOURCE_DIR "/specs/tiny-byte-512.yaml --sp 4 "
                     "--set s2attn.shift_mode=roll --align 64", &out), 0, "%s", out);
    cr_expect(strstr(out, "rank 0 receives rows 3584..4095 of 2 shifted kv heads from rank 3 "
                          "(roll wrap)"), "%s", out);
    cr_expect(strstr(out, "(ceil(N / P) rounded up to 64)"), "%s", out);
    free(out);
    cr_assert_eq(run(BIN " sp-plan --help", &out), 0);
    cr_expect(strstr(out, "usage: s2lora sp-plan SPEC --sp P"), "%s", out);
    free(out);
    cr_assert_eq(run(BIN " --help", &out), 0);
    cr_expect(strstr(out, "sp-plan"), "%s", out);
    free(out);
}

Test(sp_cli, errors)
{
    char *out;
    const char *spec = S2_SOURCE_DIR "/specs/llama2-7b-32k.yaml";
    char cmd[1024];
    snprintf(cmd, sizeof cmd, BIN " sp-plan %s --sp 300", spec);
    cr_assert_eq(run(cmd, &out), 1, "%s", out);
    cr_expect(strstr(out, "llama2-7b-32k.yaml: sequence parallel plan: 300 ranks leave rank 256 "
                          "without rows"), "%s", out);
    cr_expect(strstr(out, "the largest valid P is 256"), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, BIN " sp-plan %s", spec);
    cr_assert_eq(run(cmd, &out), 2, "%s", out);
    cr_expect(strstr(out, "missing --sp P"), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, BIN " sp-plan %s --sp 0", spec);
    cr_assert_eq(run(cmd, &out), 2, "%s", out);
    cr_expect(strstr(out, "--sp: \"0\" is not an integer >= 1"), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, BIN " sp-plan %s --sp 2 --align 12x", spec);
    cr_assert_eq(run(cmd, &out), 2, "%s", out);
    cr_expect(strstr(out, "--align: \"12x\" is not an integer >= 1"), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, BIN " sp-plan %s --sp 2 --set s2attn.shift_mode=rol", spec);
    cr_assert_eq(run(cmd, &out), 1, "%s", out);
    cr_expect(strstr(out, "--set s2attn.shift_mode=rol"), "%s", out);
    free(out);
}

/* ---- the GPU model's union exchange (runtime/train/model.h's s2_gm_sp, runtime/train/sp_xchg.h) ---- */

/* Split mode, small problems: rank r's union klo is the earliest key its first query sees in
 * any head (brute force), the spans cover [klo, lo) exactly once, each row from its owner, and
 * the bytes are those rows' k and v of every kv head. */
Test(sp_union, spans_cover_the_union_halo_from_the_owners)
{
    const int heads[][2] = {{2, 2}, {4, 2}, {8, 2}, {2, 1}, {6, 3}};
    rng g = rng_seed(23);
    int planned = 0;
    for (int it = 0; it < 3000; it++) {
        int N = 1 + rng_int(&g, 48), G = 1 + rng_int(&g, N + 6), S = rng_int(&g, G);
        int hh = rng_int(&g, (int)(sizeof heads / sizeof heads[0]));
        int P = 1 + rng_int(&g, 9), align = 1 + rng_int(&g, 6);
        s2_sp_attn a = sp_attn(N, G, S, S2_SHIFT_SPLIT, heads[hh][0], heads[hh][1],
                               1 + rng_int(&g, 4));
        s2_sp_plan pl;
        if (s2_sp_plan_make(&a, P, align, &pl, NULL) != S2_OK)
            continue;
        s2_ref_attn r = ref_of(&a);
        s2_sp_span *sp = malloc((size_t)(P * P + 1) * sizeof *sp);
        const int n = s2_sp_union_spans(&pl, sp);
        cr_assert_leq(n, P * (P - 1) / 2 + 1);
        long long rows = 0;
        for (int d = 0; d < P; d++) {
            const int lo = pl.rank[d].lo;
            int want = lo;
            for (int k = 0; k < lo; k++)
                for (int j = 0; j < a.Hkv && want == lo; j++)
                    if (kv_sees(&r, j, lo, k))
                        want = k;
            const int klo = s2_sp_union_klo(&pl, d);
            cr_assert_eq(klo, want, "N %d G %d S %d P %d rank %d: klo %d, first key seen %d",
                         N, G, S, P, d, klo, want);
            rows += lo - klo;
            for (int p = klo; p < lo; p++) {
                int hits = 0;
                for (int i = 0; i < n; i++)
                    if (sp[i].dst == d && sp[i].lo <= p && p < sp[i].hi) {
                        hits++;
                        cr_assert(pl.rank[sp[i].src].lo <= p && p < pl.rank[sp[i].src].hi,
                                  "row %d of rank %d's halo from rank %d, not its owner", p, d,
                                  sp[i].src);
                    }
                cr_assert_eq(hits, 1, "row %d of rank %d's halo in %d spans", p, d, hits);
            }
        }
        for (int i = 0; i < n; i++) {
            cr_assert_lt(sp[i].lo, sp[i].hi);
            cr_assert_geq(sp[i].lo, s2_sp_union_klo(&pl, sp[i].dst));
            cr_assert_leq(sp[i].hi, pl.rank[sp[i].dst].lo);
            if (i)
                cr_assert(sp[i - 1].dst < sp[i].dst ||
                          (sp[i - 1].dst == sp[i].dst && sp[i - 1].src < sp[i].src));
        }
        cr_assert_eq(s2_sp_union_fwd_bytes(&pl), rows * 2 * a.Hkv * a.d * a.elem_bytes);
        cr_assert_geq(s2_sp_union_fwd_bytes(&pl), pl.fwd_bytes);
        free(sp);
        s2_sp_plan_free(&pl);
        planned++;
    }
    cr_assert_gt(planned, 1000, "too few valid plans drawn: %d", planned);
}

/* The GPU check's case (tests/model_check.c section 6): halos spanning two owners exist. */
Test(sp_union, model_check_case_has_two_owner_halos)
{
    s2_sp_attn a = sp_attn(900, 768, 384, S2_SHIFT_SPLIT, 4, 2, 64);
    s2_sp_plan pl;
    cr_assert_eq(s2_sp_plan_make(&a, 4, S2_SP_DEFAULT_ALIGN, &pl, NULL), S2_OK);
    s2_sp_span sp[17];
    const int n = s2_sp_union_spans(&pl, sp);
    int per_dst[4] = {0};
    for (int i = 0; i < n; i++)
        per_dst[sp[i].dst]++;
    cr_assert_eq(per_dst[2], 2);
    cr_assert_eq(per_dst[3], 2);
    cr_assert_eq(s2_sp_union_klo(&pl, 3), 384);
    s2_sp_plan_free(&pl);
}

/* Chunk labels, concatenated over the chunks (each given its next chunk's first token), are
 * Hugging Face's labels of the whole sequence (runtime/ref/ref_llama.h). */
Test(sp_union, chunk_labels_are_the_whole_sequence_labels)
{
    rng g = rng_seed(5);
    for (int it = 0; it < 200; it++) {
        const int N = 1 + rng_int(&g, 300), P = 1 + rng_int(&g, 6);
        int32_t tok[300], whole[300], got[300];
        for (int t = 0; t < N; t++)
            tok[t] = rng_int(&g, 1000);
        const int32_t cu[2] = {0, N};
        s2_ref_llama_labels(tok, N, cu, 1, whole);
        int lo = 0;
        for (int r = 0; r < P && lo < N; r++) {
            int hi = r == P - 1 ? N : lo + 1 + rng_int(&g, N - lo);
            s2_sp_chunk_labels(tok + lo, hi - lo, hi < N ? tok[hi] : -1, S2_REF_IGNORE_INDEX,
                               got + lo);
            lo = hi;
        }
        if (lo < N)
            s2_sp_chunk_labels(tok + lo, N - lo, -1, S2_REF_IGNORE_INDEX, got + lo);
        cr_assert_arr_eq(got, whole, (size_t)N * sizeof *got, "N %d P %d", N, P);
    }
}

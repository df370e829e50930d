/*
 * sp_plan.c — chunks and halos of S²-aware sequence parallelism (see sp_plan.h).
 *
 * The rows a rank needs follow from the group of its first query alone (sp_plan.h): with lo the
 * rank's first row, its queries see exactly the rows of lo's group that come before lo in the
 * group's causal order. For plain and split heads that group is a run of positions [klo, ...),
 * so the rank needs [klo, lo). In roll mode the group is a run of *order indices*
 * i = (p - S) mod N; mapped back to positions it is one run, except the one group that holds
 * order index N - S (position 0) past its start: that group is the tail [A, N) followed by the
 * head [0, B). A rank whose lo falls in the head part needs [0, lo) and the whole tail (minus
 * its own rows); one whose lo falls in the tail part needs [A, lo).
 *
 * tests/test_sp_plan.c holds every range against a brute-force enumeration of the visibility
 * predicate of runtime/ref/ref_attn.c.
 */
#include "sp_plan.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void s2_sp_attn_from_spec(const s2_spec *spec, s2_sp_attn *a)
{
    memset(a, 0, sizeof *a);
    a->N = spec->context_length;
    a->G = spec->s2attn.group_size;
    a->S = spec->s2attn.shift;
    a->mode = spec->s2attn.shift_mode;
    a->H = spec->model.num_heads;
    a->Hkv = spec->model.num_kv_heads;
    a->d = spec->model.head_dim;
    a->elem_bytes = 2; /* bf16 and fp16 alike */
    a->grad_elem_bytes = 0;
}

const char *s2_sp_kind_name(s2_sp_kind k)
{
    switch (k) {
    case S2_SP_PLAIN: return "plain";
    case S2_SP_SHIFTED: return "shifted";
    case S2_SP_MIXED: return "mixed";
    default: return "?";
    }
}

static s2_status check_attn(const s2_sp_attn *a, s2_error *err)
{
    if (a->N < 1)
        return s2_error_set(err, S2_ERR_INVALID, "sequence parallel plan: N = %d tokens, "
                            "expected >= 1", a->N);
    if (a->G < 1 || a->S < 0 || a->S >= a->G)
        return s2_error_set(err, S2_ERR_INVALID, "sequence parallel plan: group size %d, shift "
                            "%d: expected G >= 1 and 0 <= S < G", a->G, a->S);
    if (a->mode != S2_SHIFT_SPLIT && a->mode != S2_SHIFT_ROLL)
        return s2_error_set(err, S2_ERR_INVALID, "sequence parallel plan: shift mode %d, valid: "
                            "split, roll", (int)a->mode);
    if (a->H < 1 || a->Hkv < 1 || a->H % a->Hkv)
        return s2_error_set(err, S2_ERR_INVALID, "sequence parallel plan: %d query heads, %d kv "
                            "heads: expected both >= 1 and kv heads dividing query heads",
                            a->H, a->Hkv);
    if (a->d < 1 || a->elem_bytes < 1 || a->grad_elem_bytes < 0)
        return s2_error_set(err, S2_ERR_INVALID, "sequence parallel plan: head dim %d, element "
                            "bytes %d (k, v) and %d (dk, dv): expected d >= 1, k/v bytes >= 1, "
                            "dk/dv bytes >= 0 (0: as k/v)", a->d, a->elem_bytes,
                            a->grad_elem_bytes);
    return S2_OK;
}

/* Chunk rows for P ranks: ceil(N / P) rounded up to align. */
static long long chunk_rows(int N, int P, int align)
{
    long long c = ((long long)N + P - 1) / P;
    return (c + align - 1) / align * align;
}

/* 1 when every one of P chunks holds a row. */
static int p_valid(int N, int P, int align)
{
    return (long long)(P - 1) * chunk_rows(N, P, align) < N;
}

static long long mod_ll(long long x, long long n) { return ((x % n) + n) % n; }

/* The roll-mode group that wraps the tail onto the head, as positions: tail [*A, N), head
 * [0, *B). Returns 0 when no group wraps (no shift, or position 0 starts a group). */
static int roll_wrap_group(const s2_sp_attn *a, long long *A, long long *B)
{
    long long N = a->N, G = a->G, Sr = mod_ll(a->S, N);
    if (Sr == 0)
        return 0;
    long long i0 = N - Sr;     /* order index of position 0 */
    long long g0 = i0 / G * G; /* its group's first order index */
    if (g0 == i0)
        return 0;
    long long g1 = g0 + G < N ? g0 + G : N;
    *A = g0 + Sr;
    *B = g1 + Sr - N;
    return 1;
}

/* Rows outside [lo, hi) that queries of one head class (0 plain, 1 shifted) see. */
static void class_halo(const s2_sp_attn *a, int cls, int lo, int hi, s2_sp_range *before,
                       s2_sp_range *wrap)
{
    long long G = a->G, S = a->S, N = a->N, klo;
    *wrap = (s2_sp_range){hi, hi};
    if (!cls || (a->mode == S2_SHIFT_ROLL && mod_ll(S, N) == 0)) {
        klo = lo / G * G;
    } else if (a->mode == S2_SHIFT_SPLIT) {
        klo = (lo + S) / G * G - S;
        if (klo < 0)
            klo = 0;
    } else {
        long long Sr = mod_ll(S, N), A, B;
        int wraps = roll_wrap_group(a, &A, &B);
        if (wraps && lo < B) { /* lo in the head part of the wrapping group */
            klo = 0;
            long long w = A > hi ? A : hi;
            if (w < N)
                *wrap = (s2_sp_range){(int)w, (int)N};
        } else if (wraps && lo >= A) { /* in its tail part */
            klo = A;
        } else { /* a group that is one run of positions */
            long long i = mod_ll(lo - Sr, N);
            klo = (i / G * G + Sr) % N;
        }
    }
    *before = (s2_sp_range){(int)klo, lo};
}

s2_sp_kind s2_sp_kv_kind(const s2_sp_plan *plan, int kvh)
{
    for (int k = 0; k < S2_SP_KINDS; k++)
        if (kvh >= plan->kv_first[k] && kvh < plan->kv_first[k] + plan->kv_count[k])
            return (s2_sp_kind)k;
    return S2_SP_KINDS;
}

static int range_rows(s2_sp_range r) { return r.hi > r.lo ? r.hi - r.lo : 0; }

static s2_status add_xfer(s2_sp_plan *p, int *cap, s2_sp_xfer x, s2_error *err)
{
    if (p->n_xfer == *cap) {
        int n = *cap ? 2 * *cap : 16;
        s2_sp_xfer *t = realloc(p->xfer, sizeof *t * (size_t)n);
        if (!t)
            return s2_error_set(err, S2_ERR_NOMEM, "sequence parallel plan: out of memory for "
                                "%d transfers", n);
        p->xfer = t;
        *cap = n;
    }
    p->xfer[p->n_xfer++] = x;
    return S2_OK;
}

s2_status s2_sp_plan_make(const s2_sp_attn *a, int P, int align, s2_sp_plan *plan,
                          s2_error *err)
{
    memset(plan, 0, sizeof *plan);
    s2_status st = check_attn(a, err);
    if (st)
        return st;
    if (align < 1)
        return s2_error_set(err, S2_ERR_INVALID, "sequence parallel plan: alignment %d rows: "
                            "expected a positive row count (default %d)", align,
                            S2_SP_DEFAULT_ALIGN);
    if (P < 1)
        return s2_error_set(err, S2_ERR_INVALID, "sequence parallel plan: %d ranks: expected "
                            ">= 1", P);
    if (chunk_rows(a->N, P, align) > INT_MAX)
        return s2_error_set(err, S2_ERR_INVALID, "sequence parallel plan: alignment %d rows: "
                            "chunks of %d tokens rounded up to it overflow a row index (more "
                            "than %d rows); expected a smaller alignment", align,
                            (int)(((long long)a->N + P - 1) / P), INT_MAX);
    if (!p_valid(a->N, P, align)) {
        /* Valid P are at most ceil(N / align) (each chunk but the last holds >= align rows);
         * validity is not monotone in P, so look at each. */
        long long top = ((long long)a->N + align - 1) / align, best = 1, below = 1;
        for (long long q = top; q >= 1; q--)
            if (p_valid(a->N, (int)q, align)) {
                best = q;
                break;
            }
        for (long long q = P - 1 < top ? P - 1 : top; q >= 1; q--)
            if (p_valid(a->N, (int)q, align)) {
                below = q;
                break;
            }
        long long C = chunk_rows(a->N, P, align), filled = ((long long)a->N + C - 1) / C;
        s2_buf more = {0};
        if (best != below)
            s2_buf_printf(&more, " (the largest below %d is %lld)", P, below);
        s2_error_set(err, S2_ERR_INVALID, "sequence parallel plan: %d ranks leave rank %lld "
                     "without rows: N = %d tokens in chunks of %lld rows (ceil(N / P) rounded up "
                     "to the alignment %d) fill only %lld ranks; the largest valid P is %lld%s",
                     P, filled, a->N, C, align, filled, best, more.data ? more.data : "");
        s2_buf_free(&more);
        return S2_ERR_INVALID;
    }
    plan->a = *a;
    if (!plan->a.grad_elem_bytes)
        plan->a.grad_elem_bytes = a->elem_bytes;
    plan->P = P;
    plan->align = align;
    plan->C = (int)chunk_rows(a->N, P, align);

    /* kv head kinds: kv head k serves query heads [k·rep, (k+1)·rep); plain ones are < H/2. */
    int rep = a->H / a->Hkv, plain_q = a->H / 2;
    for (int k = 0; k < S2_SP_KINDS; k++)
        plan->kv_first[k] = a->Hkv;
    for (int j = a->Hkv - 1; j >= 0; j--) {
        int plain = j * rep < plain_q, shifted = (j + 1) * rep > plain_q;
        s2_sp_kind k = plain && shifted ? S2_SP_MIXED : plain ? S2_SP_PLAIN : S2_SP_SHIFTED;
        plan->kv_first[k] = j;
        plan->kv_count[k]++;
    }

    plan->rank = calloc((size_t)P, sizeof *plan->rank);
    if (!plan->rank)
        return s2_error_set(err, S2_ERR_NOMEM, "sequence parallel plan: out of memory for %d "
                            "ranks", P);
    for (int r = 0; r < P; r++) {
        s2_sp_rank *rk = &plan->rank[r];
        rk->lo = (int)((long long)r * plan->C);
        rk->hi = (int)((long long)(r + 1) * plan->C < a->N ? (long long)(r + 1) * plan->C : a->N);
        s2_sp_range b[2], w[2];
        class_halo(a, 0, rk->lo, rk->hi, &b[0], &w[0]);
        class_halo(a, 1, rk->lo, rk->hi, &b[1], &w[1]);
        rk->before[S2_SP_PLAIN] = b[0];
        rk->wrap[S2_SP_PLAIN] = w[0];
        rk->before[S2_SP_SHIFTED] = b[1];
        rk->wrap[S2_SP_SHIFTED] = w[1];
        /* The union: both "before" ranges end at lo; only the shifted class wraps. */
        rk->before[S2_SP_MIXED] = (s2_sp_range){b[0].lo < b[1].lo ? b[0].lo : b[1].lo, rk->lo};
        rk->wrap[S2_SP_MIXED] = range_rows(w[0]) ? w[0] : w[1];
    }

    /* Transfers: each kind's ranges cut at the senders' chunk edges. A sender is either before
     * the receiver or after it, so it sends one range a kind. */
    int cap = 0;
    for (int r = 0; r < P; r++) {
        s2_sp_rank *rk = &plan->rank[r];
        for (int s = 0; s < P; s++) {
            if (s == r)
                continue;
            const s2_sp_rank *sk = &plan->rank[s];
            for (int k = 0; k < S2_SP_KINDS; k++) {
                if (!plan->kv_count[k])
                    continue;
                s2_sp_range need = s < r ? rk->before[k] : rk->wrap[k];
                int lo = need.lo > sk->lo ? need.lo : sk->lo;
                int hi = need.hi < sk->hi ? need.hi : sk->hi;
                if (lo >= hi)
                    continue;
                long long vals = (long long)(hi - lo) * plan->kv_count[k] * a->d * 2;
                s2_sp_xfer x = {.src = s, .dst = r, .kind = (s2_sp_kind)k, .lo = lo, .hi = hi,
                                .fwd_bytes = vals * a->elem_bytes,
                                .bwd_bytes = vals * plan->a.grad_elem_bytes};
                if ((st = add_xfer(plan, &cap, x, err))) {
                    s2_sp_plan_free(plan);
                    return st;
                }
                rk->fwd_recv += x.fwd_bytes;
                rk->bwd_send += x.bwd_bytes;
                plan->rank[s].fwd_send += x.fwd_bytes;
                plan->rank[s].bwd_recv += x.bwd_bytes;
                plan->fwd_bytes += x.fwd_bytes;
                plan->bwd_bytes += x.bwd_bytes;
            }
        }
    }
    return S2_OK;
}

void s2_sp_plan_free(s2_sp_plan *plan)
{
    if (!plan)
        return;
    free(plan->rank);
    free(plan->xfer);
    memset(plan, 0, sizeof *plan);
}

/* "33.6 MB" (decimal units, as link rates are given). */
static const char *fmt_bytes(long long b, char *buf, size_t n)
{
    if (b < 1000)
        snprintf(buf, n, "%lld B", b);
    else if (b < 1000000)
        snprintf(buf, n, "%.1f kB", b / 1e3);
    else if (b < 1000000000)
        snprintf(buf, n, "%.1f MB", b / 1e6);
    else
        snprintf(buf, n, "%.2f GB", b / 1e9);
    return buf;
}

void s2_sp_plan_format(const s2_sp_plan *p, s2_buf *b)
{
    const s2_sp_attn *a = &p->a;
    char x[32], y[32], z[32];
    s2_buf_printf(b, "sequence parallel plan: N = %d tokens over %d ranks, chunks of %d rows "
                  "(ceil(N / P) rounded up to %d)\n", a->N, p->P, p->C, p->align);
    s2_buf_printf(b, "attention: G = %d, S = %d, %s; %d query heads, %d kv heads, d = %d; "
                  "k, v sent as %d-byte elements, dk, dv as %d-byte\n", a->G, a->S,
                  s2_shift_mode_name(a->mode), a->H, a->Hkv, a->d, a->elem_bytes,
                  a->grad_elem_bytes);
    s2_buf_printf(b, "kv heads:");
    const char *sep = " ";
    for (int k = 0; k < S2_SP_KINDS; k++) {
        if (!p->kv_count[k])
            continue;
        s2_buf_printf(b, "%s%d %s (%d..%d)", sep, p->kv_count[k], s2_sp_kind_name(k),
                      p->kv_first[k], p->kv_first[k] + p->kv_count[k] - 1);
        sep = ", ";
    }
    s2_buf_printf(b, "%s\n", p->kv_count[S2_SP_MIXED] ? " (mixed: serves plain and shifted "
                  "query heads, needs both kinds' rows)" : "");
    for (int r = 0; r < p->P; r++) {
        const s2_sp_rank *rk = &p->rank[r];
        s2_buf_printf(b, "rank %d holds rows %d..%d (%d)", r, rk->lo, rk->hi - 1, rk->hi - rk->lo);
        if (!rk->fwd_recv && !rk->fwd_send) {
            s2_buf_printf(b, "; exchanges nothing\n");
            continue;
        }
        s2_buf_printf(b, "; a layer: receives %s k+v, sends %s (backward: dk+dv the other "
                      "way)\n", fmt_bytes(rk->fwd_recv, x, sizeof x),
                      fmt_bytes(rk->fwd_send, y, sizeof y));
        for (int i = 0; i < p->n_xfer; i++) {
            const s2_sp_xfer *t = &p->xfer[i];
            if (t->dst != r)
                continue;
            int n = p->kv_count[t->kind];
            s2_buf_printf(b, "  rank %d receives rows %d..%d of %d %s kv head%s from rank %d%s: "
                          "%s k+v a layer (dk+dv %s back)\n", r, t->lo, t->hi - 1, n,
                          s2_sp_kind_name(t->kind), n == 1 ? "" : "s", t->src,
                          t->src > r ? " (roll wrap)" : "", fmt_bytes(t->fwd_bytes, x, sizeof x),
                          fmt_bytes(t->bwd_bytes, y, sizeof y));
        }
    }
    long long most = 0;
    for (int r = 0; r < p->P; r++)
        if (p->rank[r].fwd_recv > most)
            most = p->rank[r].fwd_recv;
    s2_buf_printf(b, "a layer in all: %d transfers, %s k+v forward, %s dk+dv backward; the most "
                  "one rank receives: %s\n", p->n_xfer, fmt_bytes(p->fwd_bytes, x, sizeof x),
                  fmt_bytes(p->bwd_bytes, y, sizeof y), fmt_bytes(most, z, sizeof z));
}

int s2_sp_union_klo(const s2_sp_plan *plan, int r)
{
    const s2_sp_rank *rk = &plan->rank[r];
    int klo = rk->lo;
    for (int k = 0; k < S2_SP_KINDS; k++)
        if (rk->before[k].hi > rk->before[k].lo && rk->before[k].lo < klo)
            klo = rk->before[k].lo;
    return klo;
}

int s2_sp_union_spans(const s2_sp_plan *plan, s2_sp_span *out)
{
    int n = 0;
    for (int d = 0; d < plan->P; d++) {
        const int klo = s2_sp_union_klo(plan, d), lo = plan->rank[d].lo;
        for (int s = 0; s < d; s++) {
            const int a = plan->rank[s].lo > klo ? plan->rank[s].lo : klo;
            const int b = plan->rank[s].hi < lo ? plan->rank[s].hi : lo;
            if (a < b)
                out[n++] = (s2_sp_span){.src = s, .dst = d, .lo = a, .hi = b};
        }
    }
    return n;
}

long long s2_sp_union_fwd_bytes(const s2_sp_plan *plan)
{
    long long rows = 0;
    for (int d = 0; d < plan->P; d++)
        rows += plan->rank[d].lo - s2_sp_union_klo(plan, d);
    return rows * 2 * plan->a.Hkv * plan->a.d * plan->a.elem_bytes;
}

void s2_sp_chunk_labels(const int32_t *tokens, int T, int32_t next, int32_t ignore,
                        int32_t *labels)
{
    for (int t = 0; t + 1 < T; t++)
        labels[t] = tokens[t + 1];
    if (T > 0)
        labels[T - 1] = next >= 0 ? next : ignore;
}

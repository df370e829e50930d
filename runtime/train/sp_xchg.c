/* sp_xchg.c — sequence parallelism's K/V exchange: loopback and NCCL (sp_xchg.h). */
#include "runtime/train/sp_xchg.h"
#include "runtime/train/train_dp.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define EL 2 /* bytes of a K/V element (bf16, fp16) */

void s2_sp_rank_rows(const s2_sp_plan *plan, int r, int *klo, int *lo, int *hi)
{
    *klo = s2_sp_union_klo(plan, r);
    *lo = plan->rank[r].lo;
    *hi = plan->rank[r].hi;
}

static s2_status spans_of(const s2_sp_plan *plan, s2_sp_span **spans, int *n, int **klo,
                          s2_error *err)
{
    if (plan->a.mode != S2_SHIFT_SPLIT)
        return s2_error_set(err, S2_ERR_INVALID, "sequence-parallel exchange: split shift mode "
                            "only (roll's wrap rows are not exchanged)");
    const int P = plan->P;
    /* P * P + 1 spans at most, counted in size_t: in int the product overflows past P = 46340 */
    const size_t np = P > 0 ? (size_t)P : 0;
    if (np == 0 || np > (SIZE_MAX / sizeof **spans - 1) / np)
        return s2_error_set(err, S2_ERR_INVALID, "sequence-parallel exchange: %d ranks: the "
                            "span table (P * P + 1 entries) needs P of 1 or more and its size "
                            "to fit in memory", P);
    *spans = malloc((np * np + 1) * sizeof **spans);
    *klo = malloc((size_t)P * sizeof **klo);
    if (!*spans || !*klo) {
        free(*spans), free(*klo);
        *spans = NULL, *klo = NULL;
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    }
    *n = s2_sp_union_spans(plan, *spans);
    for (int r = 0; r < P; r++)
        (*klo)[r] = s2_sp_union_klo(plan, r);
    return S2_OK;
}

/* ---- loopback ---------------------------------------------------------------------------- */

typedef struct loop_rank {
    s2_sp_loop *lp;
    int r;
    const s2_train_kern *k;
    void *a, *b; /* the buffers of the current call: k, v or dk, dv */
} loop_rank;

struct s2_sp_loop {
    int P, row_elems, n_spans;
    s2_sp_span *spans;
    int *klo;
    loop_rank *rk;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int arrived;
    unsigned long gen;
    int failed;
};

static s2_status loop_wait(s2_sp_loop *lp, int r, s2_error *err)
{
    pthread_mutex_lock(&lp->mu);
    const unsigned long gen = lp->gen;
    if (++lp->arrived == lp->P) {
        lp->arrived = 0;
        lp->gen++;
        pthread_cond_broadcast(&lp->cv);
    } else
        while (gen == lp->gen && !lp->failed)
            pthread_cond_wait(&lp->cv, &lp->mu);
    const int failed = lp->failed;
    pthread_mutex_unlock(&lp->mu);
    return failed ? s2_error_set(err, S2_ERR_INVALID, "sequence-parallel loopback: rank %d "
                                 "stopped: another rank's micro-batch failed", r)
                  : S2_OK;
}

void s2_sp_loop_fail(s2_sp_loop *lp)
{
    pthread_mutex_lock(&lp->mu);
    lp->failed = 1;
    pthread_cond_broadcast(&lp->cv);
    pthread_mutex_unlock(&lp->mu);
}

static void *row(void *base, int klo, int p, int row_elems)
{
    return (char *)base + (size_t)(p - klo) * row_elems * EL;
}

/* Every rank's buffers of this call are ready (their streams synchronized) and registered. */
static s2_status loop_enter(loop_rank *rc, void *a, void *b, cudaStream_t s, s2_error *err)
{
    s2_status st = s2_rt_check(cudaStreamSynchronize(s), "sequence-parallel exchange", err);
    if (st) {
        s2_sp_loop_fail(rc->lp);
        return st;
    }
    rc->a = a;
    rc->b = b;
    return loop_wait(rc->lp, rc->r, err);
}

/* This rank is done reading the others' buffers: nobody overwrites them before all are. */
static s2_status loop_leave(loop_rank *rc, s2_status st, cudaStream_t s, s2_error *err)
{
    if (!st)
        st = s2_rt_check(cudaStreamSynchronize(s), "sequence-parallel exchange", err);
    if (st) {
        s2_sp_loop_fail(rc->lp);
        return st;
    }
    return loop_wait(rc->lp, rc->r, err);
}

static s2_status loop_fwd(void *ctx, int layer, void *k, void *v, cudaStream_t s, s2_error *err)
{
    (void)layer;
    loop_rank *rc = ctx;
    s2_sp_loop *lp = rc->lp;
    s2_status st = loop_enter(rc, k, v, s, err);
    if (st)
        return st;
    const size_t rb = (size_t)lp->row_elems * EL;
    for (int i = 0; i < lp->n_spans && !st; i++) {
        const s2_sp_span *sp = &lp->spans[i];
        if (sp->dst != rc->r)
            continue;
        const loop_rank *src = &lp->rk[sp->src];
        const size_t n = (size_t)(sp->hi - sp->lo) * rb;
        for (int j = 0; j < 2 && !st; j++)
            st = s2_rt_check(cudaMemcpyAsync(row(j ? v : k, lp->klo[rc->r], sp->lo,
                                                 lp->row_elems),
                                             row(j ? src->b : src->a, lp->klo[sp->src], sp->lo,
                                                 lp->row_elems),
                                             n, cudaMemcpyDeviceToDevice, s),
                             j ? "halo v rows" : "halo k rows", err);
    }
    return loop_leave(rc, st, s, err);
}

static s2_status loop_bwd(void *ctx, int layer, void *dk, void *dv, cudaStream_t s,
                          s2_error *err)
{
    (void)layer;
    loop_rank *rc = ctx;
    s2_sp_loop *lp = rc->lp;
    s2_status st = loop_enter(rc, dk, dv, s, err);
    if (st)
        return st;
    const int re = lp->row_elems;
    for (int i = 0; i < lp->n_spans && !st; i++) {
        const s2_sp_span *sp = &lp->spans[i];
        if (sp->src != rc->r) /* the owner adds what the span's receiver computed */
            continue;
        const loop_rank *d = &lp->rk[sp->dst];
        for (int j = 0; j < 2 && !st; j++) {
            void *own = row(j ? dv : dk, lp->klo[rc->r], sp->lo, re);
            st = s2_k_add(rc->k, sp->hi - sp->lo, re, own, re,
                          row(j ? d->b : d->a, lp->klo[sp->dst], sp->lo, re), re, own, re, s,
                          err);
        }
    }
    return loop_leave(rc, st, s, err);
}

s2_status s2_sp_loop_open(s2_sp_loop **out, const s2_sp_plan *plan, int row_elems,
                          s2_error *err)
{
    *out = NULL;
    s2_sp_loop *lp = calloc(1, sizeof *lp);
    if (!lp)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    lp->P = plan->P;
    lp->row_elems = row_elems;
    s2_status st = spans_of(plan, &lp->spans, &lp->n_spans, &lp->klo, err);
    if (!st && !(lp->rk = calloc((size_t)plan->P, sizeof *lp->rk)))
        st = s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    if (st) {
        free(lp->spans), free(lp->klo), free(lp);
        return st;
    }
    pthread_mutex_init(&lp->mu, NULL);
    pthread_cond_init(&lp->cv, NULL);
    for (int r = 0; r < plan->P; r++)
        lp->rk[r] = (loop_rank){.lp = lp, .r = r};
    *out = lp;
    return S2_OK;
}

void s2_sp_loop_close(s2_sp_loop *lp)
{
    if (!lp)
        return;
    pthread_mutex_destroy(&lp->mu);
    pthread_cond_destroy(&lp->cv);
    free(lp->spans), free(lp->klo), free(lp->rk), free(lp);
}

void s2_sp_loop_transport(s2_sp_loop *lp, int r, const s2_train_kern *k, s2_sp_transport *tp)
{
    lp->rk[r].k = k;
    *tp = (s2_sp_transport){.ctx = &lp->rk[r], .fwd = loop_fwd, .bwd = loop_bwd};
}

/* ---- NCCL -------------------------------------------------------------------------------- */

struct s2_sp_nccl {
    const s2_nccl *nc;
    ncclComm_t comm;
    s2_watchdog *wd;
    int rank, base, row_elems, n_spans; /* base: comm's rank of the plan's rank 0 */
    ncclDataType_t dt;
    s2_sp_span *spans;
    int *klo;
    const s2_train_kern *k;
    void *scratch; /* the dk, dv rows the other ranks send back to this one, span by span */
};

/* One group of sends and receives as one watchdog call (train_dp.h), when there is one. */
static s2_status call_begin(s2_sp_nccl *x, const char *what, ncclComm_t *comm, s2_error *err)
{
    return x->wd ? s2_watchdog_call_begin(x->wd, what, comm, err) : S2_OK;
}

static s2_status call_end(s2_sp_nccl *x, s2_status st, s2_error *err)
{
    return x->wd ? s2_watchdog_call_end(x->wd, st, err) : st;
}

static s2_status nccl_fwd(void *ctx, int layer, void *k, void *v, cudaStream_t s, s2_error *err)
{
    (void)layer;
    s2_sp_nccl *x = ctx;
    const int re = x->row_elems;
    ncclComm_t comm = x->comm;
    s2_status st = call_begin(x, "the halo k/v rows' exchange", &comm, err);
    if (st)
        return st;
    st = s2_nccl_group_start(x->nc, err);
    for (int i = 0; i < x->n_spans && !st; i++) {
        const s2_sp_span *sp = &x->spans[i];
        const size_t n = (size_t)(sp->hi - sp->lo) * re;
        for (int j = 0; j < 2 && !st; j++) {
            void *buf = row(j ? v : k, x->klo[x->rank], sp->lo, re);
            if (sp->dst == x->rank)
                st = s2_nccl_recv(x->nc, comm, buf, n, x->dt, x->base + sp->src, s,
                                  j ? "halo v rows" : "halo k rows", err);
            else if (sp->src == x->rank)
                st = s2_nccl_send(x->nc, comm, buf, n, x->dt, x->base + sp->dst, s,
                                  j ? "halo v rows" : "halo k rows", err);
        }
    }
    s2_status st2 = s2_nccl_group_end(x->nc, st ? NULL : err);
    return call_end(x, st ? st : st2, err);
}

static s2_status nccl_bwd(void *ctx, int layer, void *dk, void *dv, cudaStream_t s,
                          s2_error *err)
{
    (void)layer;
    s2_sp_nccl *x = ctx;
    const int re = x->row_elems;
    ncclComm_t comm = x->comm;
    s2_status st = call_begin(x, "the halo dk/dv rows' exchange", &comm, err);
    if (st)
        return st;
    st = s2_nccl_group_start(x->nc, err);
    size_t off = 0;
    for (int i = 0; i < x->n_spans && !st; i++) {
        const s2_sp_span *sp = &x->spans[i];
        const size_t n = (size_t)(sp->hi - sp->lo) * re;
        for (int j = 0; j < 2 && !st; j++) {
            if (sp->dst == x->rank)
                st = s2_nccl_send(x->nc, comm, row(j ? dv : dk, x->klo[x->rank], sp->lo, re),
                                  n, x->dt, x->base + sp->src, s,
                                  j ? "halo dv rows" : "halo dk rows",
                                  err);
            else if (sp->src == x->rank) {
                st = s2_nccl_recv(x->nc, comm, (char *)x->scratch + off * EL, n, x->dt,
                                  x->base + sp->dst, s, j ? "halo dv rows" : "halo dk rows", err);
                off += n;
            }
        }
    }
    s2_status st2 = s2_nccl_group_end(x->nc, st ? NULL : err);
    if ((st = call_end(x, st ? st : st2, err)))
        return st;
    off = 0;
    for (int i = 0; i < x->n_spans && !st; i++) {
        const s2_sp_span *sp = &x->spans[i];
        if (sp->src != x->rank)
            continue;
        for (int j = 0; j < 2 && !st; j++) {
            void *own = row(j ? dv : dk, x->klo[x->rank], sp->lo, re);
            st = s2_k_add(x->k, sp->hi - sp->lo, re, own, re, (char *)x->scratch + off * EL, re,
                          own, re, s, err);
            off += (size_t)(sp->hi - sp->lo) * re;
        }
    }
    return st;
}

s2_status s2_sp_nccl_open(s2_sp_nccl **out, const s2_nccl *nc, ncclComm_t comm,
                          s2_watchdog *wd, const s2_sp_plan *plan, int rank, int base,
                          int row_elems, s2_dtype dt, const s2_train_kern *k, s2_error *err)
{
    *out = NULL;
    if (rank < 0 || rank >= plan->P || base < 0)
        return s2_error_set(err, S2_ERR_INVALID, "sequence-parallel exchange: rank %d of %d, "
                            "base %d (>= 0)", rank, plan->P, base);
    s2_sp_nccl *x = calloc(1, sizeof *x);
    if (!x)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    *x = (s2_sp_nccl){.nc = nc, .comm = comm, .wd = wd, .rank = rank, .base = base,
                      .row_elems = row_elems,
                      .dt = s2_nccl_dtype(dt), .k = k};
    s2_status st = spans_of(plan, &x->spans, &x->n_spans, &x->klo, err);
    size_t rows = 0;
    for (int i = 0; !st && i < x->n_spans; i++)
        if (x->spans[i].src == rank)
            rows += (size_t)(x->spans[i].hi - x->spans[i].lo);
    if (!st)
        st = s2_rt_check(cudaMalloc(&x->scratch, rows ? 2 * rows * row_elems * EL : 16),
                         "cudaMalloc(sequence-parallel dK/dV scratch)", err);
    if (st) {
        s2_sp_nccl_close(x);
        return st;
    }
    *out = x;
    return S2_OK;
}

void s2_sp_nccl_close(s2_sp_nccl *x)
{
    if (!x)
        return;
    if (x->scratch)
        cudaFree(x->scratch);
    free(x->spans), free(x->klo), free(x);
}

void s2_sp_nccl_transport(s2_sp_nccl *x, s2_sp_transport *tp)
{
    *tp = (s2_sp_transport){.ctx = x, .fwd = nccl_fwd, .bwd = nccl_bwd};
}

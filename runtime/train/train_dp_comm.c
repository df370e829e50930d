/* train_dp_comm.c — data-parallel training: the watchdog, the gradient buckets' all-reduces on
 * a stream of their own, and the scalar collectives (train_dp.h). */
#define _GNU_SOURCE
#include "runtime/train/train_dp.h"

#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---------------------------------------------------------------- the watchdog */

/*
 * Who may touch the communicator, and when (every field below under mu):
 *  - The main thread uses it only between s2_watchdog_call_begin and s2_watchdog_call_end
 *    (in_call set: an enqueue, which may block) or, in s2_watchdog_wait, under mu (the
 *    asynchronous error query). call_begin refuses once aborted is set; call_end reports an
 *    abort that happened meanwhile, and the caller then never touches the communicator again.
 *  - ncclCommAbort frees the communicator. It is called once (comm_aborted set under mu first,
 *    the call itself with mu released: it may take a while, and it must not keep the watchdog
 *    from its fatal fallback):
 *      by the watchdog thread only while the main thread is inside a call (in_call): the
 *      abort is NCCL's way to make that call return, with an error, and the main thread,
 *      back in call_end, sees aborted and stops;
 *      else by the main thread itself: when the watchdog finds a time limit or an NCCL error
 *      while no call is in flight it only sets aborted, and the main thread aborts at its next
 *      check (call_begin, a poll of s2_watchdog_wait, s2_watchdog_abort).
 *    So nobody uses the communicator during or after its abort.
 *  - If the process has not ended grace seconds after aborted was set (an abort that hangs, a
 *    host blocked where it never checks), the watchdog calls fatal.
 * The clock: an operation (begin .. end: the host waiting for collectives) runs from begin; a
 * call outside an operation runs from call_begin; compute between them never counts.
 */
struct s2_watchdog {
    const s2_nccl *n;
    ncclComm_t comm;
    double timeout, grace;
    s2_watchdog_fatal fatal;
    void *ctx;
    pthread_t thread; /* its own, not the pool's: it must wake on time while the pool is busy */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
    int active;         /* an operation is in flight since t0 */
    double t0;
    char what[256];
    int in_call;        /* the main thread is inside a call on the communicator since t_call */
    double t_call;
    char call_what[256];
    int aborted;        /* set at t_abort: the communicator is (to be) aborted; msg says why */
    double t_abort;
    int comm_aborted;   /* ncclCommAbort was called (or is running): comm is gone */
    int fatal_called;
    char msg[1024];
};

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* With mu held: records why (the first reason wins) and sets aborted. */
static void flag_locked(s2_watchdog *w, const char *why)
{
    if (w->aborted)
        return;
    w->aborted = 1;
    w->t_abort = mono();
    snprintf(w->msg, sizeof w->msg, "%s", why);
}

/* With mu held, aborted set: aborts the communicator unless that was done (mu released around
 * the call; comm_aborted is set first, so nobody else aborts or uses it meanwhile). */
static void abort_comm_locked(s2_watchdog *w)
{
    ncclComm_t c = w->comm;
    if (!c || w->comm_aborted)
        return;
    w->comm_aborted = 1;
    pthread_mutex_unlock(&w->mu);
    s2_nccl_comm_abort(w->n, c);
    pthread_mutex_lock(&w->mu);
}

/* With mu held: flags the in-flight operation's NCCL error or time limit, if either is hit. */
static void check_locked(s2_watchdog *w)
{
    if (w->aborted || (!w->active && !w->in_call))
        return;
    const char *what = w->in_call ? w->call_what : w->what;
    char why[1024];
    if (w->comm) {
        s2_error e = {0};
        if (s2_nccl_async_error(w->n, w->comm, &e)) {
            snprintf(why, sizeof why, "NCCL failed during %s: %s (the communicator is aborted)",
                     what, e.msg ? e.msg : "?");
            s2_error_clear(&e);
            flag_locked(w, why);
            return;
        }
    }
    const double dt = mono() - (w->active ? w->t0 : w->t_call);
    if (dt > w->timeout) {
        snprintf(why, sizeof why,
                 "%s did not complete within S2LORA_NCCL_TIMEOUT=%g s (given up after %.1f s): "
                 "a rank died, hangs or never came; the communicator is aborted", what,
                 w->timeout, dt);
        flag_locked(w, why);
    }
}

static void *watch(void *arg)
{
    s2_watchdog *w = arg;
    pthread_mutex_lock(&w->mu);
    while (!w->stop) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += 50 * 1000 * 1000;
        if (until.tv_nsec >= 1000000000) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&w->cv, &w->mu, &until);
        if (w->stop)
            break;
        check_locked(w);
        if (w->aborted && w->in_call) /* unblocks the main thread's call (see above) */
            abort_comm_locked(w);
        if (w->aborted && !w->fatal_called && w->fatal && mono() - w->t_abort > w->grace) {
            char msg[sizeof w->msg];
            snprintf(msg, sizeof msg, "%s", w->msg);
            w->fatal_called = 1;
            pthread_mutex_unlock(&w->mu);
            w->fatal(w->ctx, msg);
            pthread_mutex_lock(&w->mu);
        }
    }
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

s2_status s2_watchdog_start(const s2_nccl *n, double timeout_s, double grace_s,
                            s2_watchdog_fatal fatal, void *ctx, s2_watchdog **out,
                            s2_error *err)
{
    *out = NULL;
    if (!(timeout_s > 0) || !(grace_s >= 0))
        return s2_error_set(err, S2_ERR_INVALID, "watchdog: timeout %g s (> 0), grace %g s "
                            "(>= 0)", timeout_s, grace_s);
    s2_watchdog *w = calloc(1, sizeof *w);
    if (!w)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    w->n = n;
    w->timeout = timeout_s;
    w->grace = grace_s;
    w->fatal = fatal;
    w->ctx = ctx;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    int rc = pthread_create(&w->thread, NULL, watch, w);
    if (rc) {
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        free(w);
        return s2_error_set(err, S2_ERR_IO, "watchdog: cannot start its thread: %s",
                            strerror(rc));
    }
    *out = w;
    return S2_OK;
}

void s2_watchdog_set_comm(s2_watchdog *w, ncclComm_t comm)
{
    pthread_mutex_lock(&w->mu);
    w->comm = comm;
    pthread_mutex_unlock(&w->mu);
}

void s2_watchdog_begin(s2_watchdog *w, const char *what)
{
    pthread_mutex_lock(&w->mu);
    if (!w->active)
        w->t0 = mono();
    w->active = 1;
    snprintf(w->what, sizeof w->what, "%s", what);
    pthread_mutex_unlock(&w->mu);
}

void s2_watchdog_end(s2_watchdog *w)
{
    pthread_mutex_lock(&w->mu);
    w->active = 0;
    pthread_mutex_unlock(&w->mu);
}

/* With mu held, aborted set: aborts the communicator if nobody did (the main thread, never in
 * a call here) and fails with the first reason; mu is released on return. */
static s2_status fail_unlock(s2_watchdog *w, s2_error *err)
{
    abort_comm_locked(w);
    char msg[sizeof w->msg];
    snprintf(msg, sizeof msg, "%s", w->msg);
    pthread_mutex_unlock(&w->mu);
    return s2_error_set(err, S2_ERR_CUDA, "%s", msg);
}

s2_status s2_watchdog_call_begin(s2_watchdog *w, const char *what, ncclComm_t *comm,
                                 s2_error *err)
{
    *comm = NULL;
    pthread_mutex_lock(&w->mu);
    if (w->aborted)
        return fail_unlock(w, err);
    if (!w->comm) {
        pthread_mutex_unlock(&w->mu);
        return s2_error_set(err, S2_ERR_INVALID, "%s: no NCCL communicator yet", what);
    }
    w->in_call = 1;
    w->t_call = mono();
    snprintf(w->call_what, sizeof w->call_what, "%s", what);
    *comm = w->comm;
    pthread_mutex_unlock(&w->mu);
    return S2_OK;
}

s2_status s2_watchdog_call_end(s2_watchdog *w, s2_status st, s2_error *err)
{
    pthread_mutex_lock(&w->mu);
    w->in_call = 0;
    if (!w->aborted) {
        pthread_mutex_unlock(&w->mu);
        return st;
    }
    if (st) /* the call's own error is the abort's echo: the reason is the abort's */
        s2_error_clear(err);
    return fail_unlock(w, err);
}

void s2_watchdog_abort(s2_watchdog *w, const char *why)
{
    pthread_mutex_lock(&w->mu);
    char msg[sizeof w->msg];
    snprintf(msg, sizeof msg, "this rank failed: %s", why);
    flag_locked(w, msg);
    abort_comm_locked(w);
    pthread_mutex_unlock(&w->mu);
}

int s2_watchdog_aborted(s2_watchdog *w)
{
    pthread_mutex_lock(&w->mu);
    const int a = w->aborted;
    pthread_mutex_unlock(&w->mu);
    return a;
}

s2_status s2_watchdog_wait(s2_watchdog *w, int (*done)(void *ctx, s2_error *err), void *ctx,
                           s2_error *err)
{
    double next_check = mono();
    for (long i = 0;; i++) {
        const int r = done(ctx, err);
        if (r < 0)
            return err && err->status ? err->status : S2_ERR_CUDA;
        if (r > 0)
            return S2_OK;
        pthread_mutex_lock(&w->mu);
        const double now = mono();
        if (now >= next_check) { /* NCCL's error flag and the clock, every 10 ms */
            check_locked(w);
            next_check = now + 0.01;
        }
        if (w->aborted)
            return fail_unlock(w, err);
        pthread_mutex_unlock(&w->mu);
        if (i < 2000) { /* a short collective: spin politely first */
            sched_yield();
        } else {
            struct timespec ts = {0, 200 * 1000};
            nanosleep(&ts, NULL);
        }
    }
}

void s2_watchdog_stop(s2_watchdog *w)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    w->stop = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

/* ---------------------------------------------------------------- the communicator */

struct s2_dp {
    const s2_nccl *n;
    ncclComm_t comm;
    int rank, size;
    s2_watchdog *wd;
    cudaStream_t side;     /* non-blocking: the legacy stream's copies never wait for NCCL */
    cudaEvent_t done;
    cudaEvent_t *stage_ev; /* [n_stages] */
    int n_stages;
    double *h, *dv;        /* pinned host and device scratch, cap doubles each */
    int cap;
    float *grad;
    size_t total;
    s2_dp_bucket *b;
    unsigned char *started; /* [nb] */
    int nb, n_started;
    int armed;
    uint64_t step;
};

static int event_done(void *ctx, s2_error *err)
{
    const cudaError_t e = cudaEventQuery(*(cudaEvent_t *)ctx);
    if (e == cudaSuccess)
        return 1;
    if (e == cudaErrorNotReady)
        return 0;
    s2_rt_check(e, "waiting for a collective (cudaEventQuery)", err);
    return -1;
}

static s2_status dead(const s2_dp *d, s2_error *err)
{
    return s2_error_set(err, S2_ERR_CUDA, "the NCCL communicator was aborted after an earlier "
                        "failure; nothing more is sent");
}

s2_status s2_dp_open(const s2_nccl *n, ncclComm_t comm, int rank, int size, s2_watchdog *w,
                     s2_dp **out, s2_error *err)
{
    *out = NULL;
    if (!n || !comm || !w || size < 1 || rank < 0 || rank >= size)
        return s2_error_set(err, S2_ERR_INVALID, "data parallel: rank %d of %d, NCCL %s, "
                            "communicator %s, watchdog %s", rank, size, n ? "loaded" : "missing",
                            comm ? "given" : "missing", w ? "given" : "missing");
    s2_dp *d = calloc(1, sizeof *d);
    if (!d)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    d->n = n;
    d->comm = comm;
    d->rank = rank;
    d->size = size;
    d->wd = w;
    d->cap = size + 16;
    int lo = 0, hi = 0;
    s2_status st = s2_rt_check(cudaDeviceGetStreamPriorityRange(&lo, &hi),
                               "data parallel: stream priorities", err);
    if (!st) /* the greatest priority: a bucket's reduction starts as soon as SMs free up */
        st = s2_rt_check(cudaStreamCreateWithPriority(&d->side, cudaStreamNonBlocking, hi),
                         "data parallel: the collectives' stream", err);
    if (!st)
        st = s2_rt_check(cudaEventCreateWithFlags(&d->done, cudaEventDisableTiming),
                         "data parallel: an event", err);
    if (!st)
        st = s2_rt_check(cudaMallocHost((void **)&d->h, (size_t)d->cap * sizeof(double)),
                         "data parallel: pinned scratch", err);
    if (!st)
        st = s2_rt_check(cudaMalloc((void **)&d->dv, (size_t)d->cap * sizeof(double)),
                         "data parallel: device scratch", err);
    if (st) {
        s2_dp_close(d);
        return st;
    }
    *out = d;
    return S2_OK;
}

void s2_dp_close(s2_dp *d)
{
    if (!d)
        return;
    /* After an abort NCCL's kernels may still be leaving: nothing here may wait for them (the
     * process ends next); otherwise the side stream is idle. */
    if (!s2_watchdog_aborted(d->wd)) {
        for (int s = 0; s < d->n_stages; s++)
            if (d->stage_ev[s])
                cudaEventDestroy(d->stage_ev[s]);
        if (d->done)
            cudaEventDestroy(d->done);
        if (d->side)
            cudaStreamDestroy(d->side);
        if (d->h)
            cudaFreeHost(d->h);
        if (d->dv)
            cudaFree(d->dv);
    }
    free(d->stage_ev);
    free(d->b);
    free(d->started);
    free(d);
}

int s2_dp_rank(const s2_dp *d) { return d->rank; }
int s2_dp_size(const s2_dp *d) { return d->size; }
ncclComm_t s2_dp_comm(const s2_dp *d) { return d->comm; }
s2_watchdog *s2_dp_watchdog(const s2_dp *d) { return d->wd; }
const s2_nccl *s2_dp_nccl(const s2_dp *d) { return d->n; }

s2_status s2_dp_set_grads(s2_dp *d, float *grad, size_t total, const s2_dp_bucket *b, int nb,
                          int n_stages, s2_error *err)
{
    if (d->stage_ev || n_stages < 1 || nb < 0)
        return s2_error_set(err, S2_ERR_INVALID, "data parallel: the gradients are set once "
                            "(%d buckets, %d stages)", nb, n_stages);
    for (int i = 0; i < nb; i++)
        if (b[i].stage < 0 || b[i].stage >= n_stages || b[i].off + b[i].n > total)
            return s2_error_set(err, S2_ERR_INVALID,
                                "data parallel: bucket %d [%zu, %zu) at stage %d: outside the "
                                "gradient buffer of %zu floats or stages 0..%d", i, b[i].off,
                                b[i].off + b[i].n, b[i].stage, total, n_stages - 1);
    d->stage_ev = calloc((size_t)n_stages, sizeof *d->stage_ev);
    d->b = malloc((size_t)(nb ? nb : 1) * sizeof *d->b);
    d->started = calloc((size_t)(nb ? nb : 1), 1);
    if (!d->stage_ev || !d->b || !d->started)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    d->n_stages = n_stages;
    if (nb)
        memcpy(d->b, b, (size_t)nb * sizeof *b);
    d->nb = nb;
    d->grad = grad;
    d->total = total;
    s2_status st = S2_OK;
    for (int s = 0; s < n_stages && !st; s++)
        st = s2_rt_check(cudaEventCreateWithFlags(&d->stage_ev[s], cudaEventDisableTiming),
                         "data parallel: a stage's event", err);
    return st;
}

void s2_dp_arm(s2_dp *d, uint64_t step)
{
    d->armed = 1;
    d->step = step;
    d->n_started = 0;
    memset(d->started, 0, (size_t)(d->nb ? d->nb : 1));
}

/* An all-reduce on the side stream, enqueued under the watchdog's call protocol. */
static s2_status all_reduce(s2_dp *d, void *buf, size_t count, ncclDataType_t type,
                            ncclRedOp_t op, const char *what, s2_error *err)
{
    ncclComm_t comm;
    s2_status st = s2_watchdog_call_begin(d->wd, what, &comm, err);
    if (st)
        return st;
    st = s2_nccl_all_reduce(d->n, comm, buf, buf, count, type, op, d->side, what, err);
    return s2_watchdog_call_end(d->wd, st, err);
}

s2_status s2_dp_stage(void *ctx, int stage, cudaStream_t stream, s2_error *err)
{
    s2_dp *d = ctx;
    if (!d->armed)
        return S2_OK;
    if (s2_watchdog_aborted(d->wd))
        return dead(d, err);
    if (stage < 0 || stage >= d->n_stages)
        return s2_error_set(err, S2_ERR_INVALID, "data parallel: backward stage %d; valid: "
                            "0..%d", stage, d->n_stages - 1);
    s2_status st = S2_OK;
    int recorded = 0;
    for (int i = 0; i < d->nb && !st; i++) {
        if (d->b[i].stage != stage)
            continue;
        if (d->started[i])
            return s2_error_set(err, S2_ERR_INVALID, "data parallel: step %llu: backward stage "
                                "%d announced twice (gradient bucket %d)",
                                (unsigned long long)d->step, stage, i);
        if (!recorded) {
            st = s2_rt_check(cudaEventRecord(d->stage_ev[stage], stream),
                             "data parallel: a backward stage's event", err);
            if (!st)
                st = s2_rt_check(cudaStreamWaitEvent(d->side, d->stage_ev[stage], 0),
                                 "data parallel: the collectives' stream waiting for the "
                                 "backward", err);
            recorded = 1;
        }
        char what[96];
        snprintf(what, sizeof what, "gradient bucket %d of %d (step %llu, backward stage %d)",
                 i, d->nb, (unsigned long long)d->step, stage);
        if (!st)
            st = all_reduce(d, d->grad + d->b[i].off, d->b[i].n, ncclFloat32, ncclSum, what,
                            err);
        if (!st) {
            d->started[i] = 1;
            d->n_started++;
        }
    }
    return st;
}

/* Enqueues vals[0..n) -> device, the collective, -> host on the side stream; records done. */
typedef enum { COLL_SUM, COLL_MAX, COLL_GATHER } coll_kind;

static s2_status enqueue_scalars(s2_dp *d, coll_kind k, const double *vals, int n,
                                 const char *what, s2_error *err)
{
    const int out_n = k == COLL_GATHER ? d->size : n;
    double *send = k == COLL_GATHER ? d->dv + d->size : d->dv;
    if (n < 1 || (k == COLL_GATHER ? d->size + n : n) > d->cap)
        return s2_error_set(err, S2_ERR_INVALID, "data parallel: %d values for %s (at most %d)",
                            n, what, d->cap);
    memcpy(d->h, vals, (size_t)n * sizeof *vals);
    s2_status st = s2_rt_check(cudaMemcpyAsync(send, d->h, (size_t)n * sizeof(double),
                                               cudaMemcpyHostToDevice, d->side), what, err);
    if (!st && k == COLL_GATHER) {
        ncclComm_t comm;
        st = s2_watchdog_call_begin(d->wd, what, &comm, err);
        if (!st)
            st = s2_watchdog_call_end(d->wd, s2_nccl_all_gather(d->n, comm, send, d->dv, 1,
                                                                ncclFloat64, d->side, what,
                                                                err), err);
    } else if (!st) {
        st = all_reduce(d, d->dv, (size_t)n, ncclFloat64, k == COLL_SUM ? ncclSum : ncclMax,
                        what, err);
    }
    if (!st)
        st = s2_rt_check(cudaMemcpyAsync(d->h, d->dv, (size_t)out_n * sizeof(double),
                                         cudaMemcpyDeviceToHost, d->side), what, err);
    if (!st)
        st = s2_rt_check(cudaEventRecord(d->done, d->side), what, err);
    return st;
}

s2_status s2_dp_finish(s2_dp *d, cudaStream_t stream, double *vals, int n, s2_error *err)
{
    if (s2_watchdog_aborted(d->wd))
        return dead(d, err);
    if (!d->armed)
        return s2_error_set(err, S2_ERR_INVALID, "data parallel: no backward was armed");
    d->armed = 0;
    if (d->n_started != d->nb)
        return s2_error_set(err, S2_ERR_INVALID,
                            "data parallel: step %llu: the backward started %d of the %d "
                            "gradient buckets (a backward stage was never announced)",
                            (unsigned long long)d->step, d->n_started, d->nb);
    /* The clock starts here, where the host begins to wait for the collectives: the backward's
     * compute after the first bucket's enqueue never counts against S2LORA_NCCL_TIMEOUT. */
    char what[160];
    snprintf(what, sizeof what, "the all-reduce of step %llu's gradients and loss (%d buckets)",
             (unsigned long long)d->step, d->nb);
    s2_watchdog_begin(d->wd, what);
    snprintf(what, sizeof what, "the sum of step %llu's loss and labelled tokens",
             (unsigned long long)d->step);
    s2_status st = enqueue_scalars(d, COLL_SUM, vals, n, what, err);
    if (!st) /* the optimizer's kernels run after every bucket */
        st = s2_rt_check(cudaStreamWaitEvent(stream, d->done, 0),
                         "data parallel: the main stream waiting for the gradients", err);
    if (!st)
        st = s2_watchdog_wait(d->wd, event_done, &d->done, err);
    s2_watchdog_end(d->wd); /* on every path: an operation left open would time out later */
    if (!st)
        memcpy(vals, d->h, (size_t)n * sizeof *vals);
    return st;
}

static s2_status scalars(s2_dp *d, coll_kind k, double *vals, int n, double *out,
                         const char *what, s2_error *err)
{
    if (s2_watchdog_aborted(d->wd))
        return dead(d, err);
    s2_watchdog_begin(d->wd, what);
    s2_status st = enqueue_scalars(d, k, vals, n, what, err);
    if (!st)
        st = s2_watchdog_wait(d->wd, event_done, &d->done, err);
    s2_watchdog_end(d->wd);
    if (!st)
        memcpy(out, d->h, (size_t)(k == COLL_GATHER ? d->size : n) * sizeof *out);
    return st;
}

void s2_dp_fail(s2_dp *d, const char *why)
{
    d->armed = 0;
    s2_watchdog_abort(d->wd, why);
}

s2_status s2_dp_sum(s2_dp *d, double *vals, int n, const char *what, s2_error *err)
{
    return scalars(d, COLL_SUM, vals, n, vals, what, err);
}

s2_status s2_dp_max(s2_dp *d, double *vals, int n, const char *what, s2_error *err)
{
    return scalars(d, COLL_MAX, vals, n, vals, what, err);
}

s2_status s2_dp_gather(s2_dp *d, double v, double *all, const char *what, s2_error *err)
{
    return scalars(d, COLL_GATHER, &v, 1, all, what, err);
}

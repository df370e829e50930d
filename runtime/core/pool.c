/*
 * pool.c — the process's one thread pool (pool.h).
 *
 * One mutex guards the list of calls in progress (jobs) and each job's worker counts; the items
 * themselves are claimed with an atomic counter, outside the lock. A job lives on its caller's
 * stack: the caller takes it out of the list only after its last worker has left, so no thread
 * touches a job after its call returns.
 */
#include "runtime/core/pool.h"

#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Items include the NVRTC front end (jit), which recurses deeply on template-heavy sources:
 * pool threads get a main thread's worth of stack rather than whatever the rlimit makes the
 * default. */
#define POOL_STACK ((size_t)32 << 20)

typedef struct pool_job {
    struct pool_job *next_job; /* the list of calls in progress */
    s2_pool_fn fn;
    void *arg;
    int n, width;
    atomic_llong next;  /* the next unclaimed item (long long: n + width claims never wrap) */
    atomic_int failed;  /* once set, no worker claims another item */
    /* under pool.mu */
    int joined;         /* workers that joined, the caller first: the next worker index */
    int active;         /* workers still inside */
    int err_item;       /* the lowest failing item, n if none */
    s2_status err_status;
    char *err_msg;
} pool_job;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t work; /* a job wants workers, or stop */
    pthread_cond_t done; /* some job's last worker other than its caller left */
    pool_job *jobs;
    pthread_t th[S2_POOL_MAX_THREADS];
    int started;         /* threads in th */
    int stop;            /* s2_pool_shutdown is joining them */
    int width;           /* the pool's width; 0 until read */
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .work = PTHREAD_COND_INITIALIZER,
          .done = PTHREAD_COND_INITIALIZER};

static pthread_once_t hooks_once = PTHREAD_ONCE_INIT;

/* fork(): the child has only the forking thread. prepare holds the lock across the fork so the
 * child's copy of the pool is consistent; the child then forgets the threads and jobs it does not
 * have (their condition variables may record waiters that do not exist there: made afresh) and
 * starts threads again on its first wide call. */
static void atfork_prepare(void) { pthread_mutex_lock(&pool.mu); }
static void atfork_parent(void) { pthread_mutex_unlock(&pool.mu); }
static void atfork_child(void)
{
    pool.work = (pthread_cond_t)PTHREAD_COND_INITIALIZER;
    pool.done = (pthread_cond_t)PTHREAD_COND_INITIALIZER;
    pool.jobs = NULL;
    pool.started = 0;
    pool.stop = 0;
    pthread_mutex_unlock(&pool.mu);
}

static void install_hooks(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
    atexit(s2_pool_shutdown);
}

/* Every use of the pool's lock goes through here, so the fork hooks are in place before the lock
 * is first taken: a fork while another thread holds it then still leaves the child a free lock. */
static void pool_lock(void)
{
    pthread_once(&hooks_once, install_hooks);
    pthread_mutex_lock(&pool.mu);
}

/* ---------------------------------------------------------------- items */

/* Keeps the failure of the lowest item: the call's error whatever the finishing order. */
static void record_failure(pool_job *j, int item, s2_status st, s2_error *e)
{
    pool_lock();
    if (item < j->err_item) {
        j->err_item = item;
        j->err_status = st;
        free(j->err_msg);
        j->err_msg = e->msg; /* owned by the job now */
        e->msg = NULL;
    }
    pthread_mutex_unlock(&pool.mu);
    s2_error_clear(e);
}

static void run_items(pool_job *j, int worker)
{
    s2_error e = {0};
    while (!atomic_load(&j->failed)) {
        const long long i = atomic_fetch_add(&j->next, 1);
        if (i >= j->n)
            break;
        const s2_status st = j->fn(j->arg, (int)i, worker, &e);
        if (st) {
            record_failure(j, (int)i, st, &e);
            atomic_store(&j->failed, 1);
        } else {
            s2_error_clear(&e); /* a message set by an item that succeeded says nothing */
        }
    }
}

/* --------------------------------------------------------------- threads */

/* A job with items left and a free worker slot; called with pool.mu held. */
static pool_job *joinable(void)
{
    for (pool_job *j = pool.jobs; j; j = j->next_job)
        if (j->joined < j->width && !atomic_load(&j->failed) && atomic_load(&j->next) < j->n)
            return j;
    return NULL;
}

static void *pool_thread(void *unused)
{
    pool_lock();
    for (;;) {
        pool_job *j = NULL;
        while (!pool.stop && !(j = joinable()))
            pthread_cond_wait(&pool.work, &pool.mu);
        if (pool.stop)
            break;
        const int worker = j->joined++;
        j->active++;
        pthread_mutex_unlock(&pool.mu);
        run_items(j, worker);
        pool_lock();
        if (--j->active == 0)
            pthread_cond_broadcast(&pool.done);
    }
    pthread_mutex_unlock(&pool.mu);
    return NULL;
}

/* Starts threads until `want` run (as many as start: the callers work too, so a thread that
 * cannot start means less parallelism, never a lost item); called with pool.mu held. Pool
 * threads take no signals: those stay with the threads the program made. */
static void start_threads(int want)
{
    if (pool.stop || pool.started >= want)
        return;
    pthread_attr_t attr;
    const int have_attr = pthread_attr_init(&attr) == 0;
    if (have_attr)
        pthread_attr_setstacksize(&attr, POOL_STACK);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    while (pool.started < want &&
           pthread_create(&pool.th[pool.started], have_attr ? &attr : NULL, pool_thread, NULL) == 0)
        pool.started++;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (have_attr)
        pthread_attr_destroy(&attr);
}

void s2_pool_shutdown(void)
{
    pool_lock();
    if (pool.stop) { /* another shutdown is joining them */
        pthread_mutex_unlock(&pool.mu);
        return;
    }
    pool.stop = 1;
    pthread_cond_broadcast(&pool.work);
    const int n = pool.started;
    pthread_mutex_unlock(&pool.mu);
    /* Only this function changes th[0..n) while stop is set. A task that exits the process runs
     * this on a pool thread, which cannot join itself. */
    for (int i = 0; i < n; i++)
        if (!pthread_equal(pool.th[i], pthread_self()))
            pthread_join(pool.th[i], NULL);
    pool_lock();
    pool.started = 0;
    pool.stop = 0;
    pthread_mutex_unlock(&pool.mu);
}

int s2_pool_started(void)
{
    pool_lock();
    const int n = pool.started;
    pthread_mutex_unlock(&pool.mu);
    return n;
}

/* ------------------------------------------------------------------ width */

s2_status s2_pool_parse_threads(const char *value, int *threads, s2_error *err)
{
    long t = 0;
    int ok = value && *value;
    for (const char *p = value; ok && *p; p++) {
        ok = *p >= '0' && *p <= '9';
        t = ok ? t * 10 + (*p - '0') : t;
        ok = ok && t <= S2_POOL_MAX_THREADS;
    }
    if (!ok || t < 1)
        return s2_error_set(err, S2_ERR_INVALID,
                            "S2LORA_THREADS=\"%s\": expected a whole number of threads from 1 to "
                            "%d (unset: one per online CPU, %d here)",
                            value ? value : "", S2_POOL_MAX_THREADS, s2_cpu_count());
    *threads = (int)t;
    return S2_OK;
}

s2_status s2_pool_threads(int *threads, s2_error *err)
{
    pool_lock();
    s2_status st = S2_OK;
    if (!pool.width) {
        const char *v = getenv("S2LORA_THREADS");
        int w = s2_cpu_count();
        st = v ? s2_pool_parse_threads(v, &w, err) : S2_OK;
        if (!st)
            pool.width = w < S2_POOL_MAX_THREADS ? w : S2_POOL_MAX_THREADS;
    }
    *threads = st ? 0 : pool.width;
    pthread_mutex_unlock(&pool.mu);
    return st;
}

s2_status s2_pool_width(int n, int threads, int *width, s2_error *err)
{
    *width = 0;
    if (n < 0 || threads < 0)
        return s2_error_set(err, S2_ERR_INVALID, "thread pool: %d items with %d threads (valid: "
                            "items >= 0, threads >= 0, 0 meaning the pool's width)", n, threads);
    int w = threads;
    if (!w) {
        s2_status st = s2_pool_threads(&w, err);
        if (st)
            return st;
    }
    w = w < S2_POOL_MAX_THREADS ? w : S2_POOL_MAX_THREADS;
    *width = w < n ? w : n;
    return S2_OK;
}

/* ------------------------------------------------------------------- call */

s2_status s2_pool_for(int n, int threads, s2_pool_fn fn, void *arg, s2_error *err)
{
    int width;
    s2_status st = s2_pool_width(n, threads, &width, err);
    if (st)
        return st;
    if (n > 0 && !fn)
        return s2_error_set(err, S2_ERR_INVALID, "thread pool: %d items and no function", n);
    if (n == 0)
        return S2_OK;

    pool_job j = {.fn = fn, .arg = arg, .n = n, .width = width, .joined = 1, .active = 1,
                  .err_item = n};
    atomic_init(&j.next, 0);
    atomic_init(&j.failed, 0);
    if (width > 1) {
        pool_lock();
        start_threads(width - 1);
        j.next_job = pool.jobs;
        pool.jobs = &j;
        pthread_cond_broadcast(&pool.work);
        pthread_mutex_unlock(&pool.mu);
    }
    run_items(&j, 0);
    if (width > 1) {
        pool_lock();
        j.active--;
        while (j.active > 0)
            pthread_cond_wait(&pool.done, &pool.mu);
        pool_job **p = &pool.jobs;
        while (*p != &j)
            p = &(*p)->next_job;
        *p = j.next_job;
        pthread_mutex_unlock(&pool.mu);
    }
    if (!atomic_load(&j.failed))
        return S2_OK;
    if (j.err_msg)
        s2_error_set(err, j.err_status, "%s", j.err_msg);
    else
        s2_error_set(err, j.err_status, "item %d of %d failed (%s)", j.err_item, n,
                     s2_status_to_string(j.err_status));
    free(j.err_msg);
    return j.err_status;
}

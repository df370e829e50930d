/*
 * test_pool.c — the thread pool (runtime/core/pool.h): every item once, the worker slots and the
 * per-call cap, a cap above the pool's width, nested calls while every thread is busy, the error
 * of the lowest failing item whatever the finishing order, a fork() child, S2LORA_THREADS, and
 * many callers at once. Each test runs in a process of its own (Criterion forks), so each reads
 * S2LORA_THREADS afresh.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runtime/core/pool.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* A meeting point: returns 1 once `need` threads are inside at the same time, 0 after 10 s
 * without (the pool did not give the call that many threads). */
typedef struct meet {
    atomic_int in;
    int need;
} meet;

static int meet_wait(meet *m)
{
    atomic_fetch_add(&m->in, 1);
    const double until = now_s() + 10;
    while (atomic_load(&m->in) < m->need)
        if (now_s() > until)
            return 0;
        else
            sleep_us(100);
    return 1;
}

/* What every test's items record. */
typedef struct rec {
    int n, width;
    atomic_int *calls;      /* [n] how often each item ran */
    long long *out;         /* [n] per-item outputs */
    atomic_int busy[S2_POOL_MAX_THREADS]; /* a worker slot in use */
    atomic_int bad_worker;  /* a worker index out of range, or one slot used twice at once */
    atomic_int now, peak;   /* items running, the most at once */
    pthread_t caller;
    atomic_int on_caller;   /* items run on the calling thread */
    atomic_int signals_open; /* items on pool threads with SIGINT not blocked */
    long sleep_us;          /* per item */
    meet m;                 /* when m.need > 0, every item meets there first */
} rec;

static void rec_init(rec *r, int n, int width)
{
    memset(r, 0, sizeof *r);
    r->n = n;
    r->width = width;
    r->calls = calloc((size_t)(n ? n : 1), sizeof *r->calls);
    r->out = calloc((size_t)(n ? n : 1), sizeof *r->out);
    cr_assert(r->calls && r->out);
    r->caller = pthread_self();
}

static void rec_free(rec *r)
{
    free(r->calls);
    free(r->out);
}

static long long item_value(int i) { return (long long)i * i * 7919 + 13; }

static s2_status rec_item(void *arg, int i, int worker, s2_error *err)
{
    rec *r = arg;
    if (worker < 0 || worker >= r->width || atomic_exchange(&r->busy[worker], 1))
        atomic_store(&r->bad_worker, 1);
    const int now = atomic_fetch_add(&r->now, 1) + 1;
    int p = atomic_load(&r->peak);
    while (now > p && !atomic_compare_exchange_weak(&r->peak, &p, now))
        ;
    if (pthread_equal(pthread_self(), r->caller)) {
        atomic_fetch_add(&r->on_caller, 1);
    } else {
        sigset_t cur;
        pthread_sigmask(SIG_BLOCK, NULL, &cur);
        if (!sigismember(&cur, SIGINT))
            atomic_store(&r->signals_open, 1);
    }
    if (r->m.need > 0 && !meet_wait(&r->m))
        return s2_error_set(err, S2_ERR_CHECK, "item %d: %d of %d threads met", i,
                            atomic_load(&r->m.in), r->m.need);
    if (r->sleep_us)
        sleep_us(r->sleep_us);
    atomic_fetch_add(&r->calls[i], 1);
    r->out[i] = item_value(i);
    atomic_fetch_sub(&r->now, 1);
    if (worker >= 0 && worker < r->width)
        atomic_store(&r->busy[worker], 0);
    return S2_OK;
}

/* Every item ran exactly once and wrote its own output. */
static void rec_check(const rec *r)
{
    for (int i = 0; i < r->n; i++) {
        cr_assert_eq(atomic_load(&r->calls[i]), 1, "item %d ran %d times", i,
                     atomic_load(&r->calls[i]));
        cr_assert_eq(r->out[i], item_value(i), "item %d", i);
    }
    cr_assert_eq(atomic_load(&r->bad_worker), 0, "a worker index out of range or shared");
    cr_assert_eq(atomic_load(&r->signals_open), 0, "a pool thread takes SIGINT");
}

/* ---- sizes ---- */

Test(pool, zero_items_run_nothing)
{
    rec r;
    rec_init(&r, 0, 1);
    s2_error err = {0};
    cr_assert_eq(s2_pool_for(0, 0, rec_item, &r, &err), S2_OK);
    cr_assert_eq(s2_pool_for(0, 3, NULL, NULL, &err), S2_OK, "no items need no function");
    int w = -1;
    cr_assert_eq(s2_pool_width(0, 4, &w, &err), S2_OK);
    cr_assert_eq(w, 0);
    cr_assert_eq(atomic_load(&r.on_caller), 0);
    cr_assert_eq(s2_pool_started(), 0, "a call with nothing to do started threads");
    rec_free(&r);
}

Test(pool, one_item_runs_on_the_caller)
{
    rec r;
    rec_init(&r, 1, 1);
    cr_assert_eq(s2_pool_for(1, 0, rec_item, &r, NULL), S2_OK);
    rec_check(&r);
    cr_assert_eq(atomic_load(&r.on_caller), 1);
    cr_assert_eq(s2_pool_started(), 0, "one item needs no thread");
    rec_free(&r);
}

Test(pool, bad_arguments)
{
    s2_error err = {0};
    cr_assert_eq(s2_pool_for(-1, 0, rec_item, NULL, &err), S2_ERR_INVALID);
    cr_assert(strstr(err.msg, "-1 items"), "%s", err.msg);
    cr_assert_eq(s2_pool_for(4, -2, rec_item, NULL, &err), S2_ERR_INVALID);
    cr_assert(strstr(err.msg, "-2 threads"), "%s", err.msg);
    cr_assert_eq(s2_pool_for(4, 0, NULL, NULL, &err), S2_ERR_INVALID);
    cr_assert(strstr(err.msg, "no function"), "%s", err.msg);
    s2_error_clear(&err);
}

Test(pool, many_items_each_once_on_several_threads, .timeout = 60)
{
    unsetenv("S2LORA_THREADS");
    const int n = 20000, cap = 4;
    int w = 0;
    cr_assert_eq(s2_pool_width(n, cap, &w, NULL), S2_OK);
    cr_assert_eq(w, cap);
    rec r;
    rec_init(&r, n, w);
    r.m.need = cap; /* the first four items meet: the call has four workers; the rest run free */
    cr_assert_eq(s2_pool_for(n, cap, rec_item, &r, NULL), S2_OK);
    rec_check(&r);
    cr_assert_leq(atomic_load(&r.peak), cap);
    cr_assert_geq(s2_pool_started(), cap - 1);
    rec_free(&r);
}

/* ---- the cap ---- */

Test(pool, cap_bounds_concurrency_and_worker_slots, .timeout = 60)
{
    setenv("S2LORA_THREADS", "6", 1);
    int w = 0;
    cr_assert_eq(s2_pool_threads(&w, NULL), S2_OK);
    cr_assert_eq(w, 6);
    const int n = 60;
    /* Uncapped: all six at once (they meet), and never more. */
    rec r;
    rec_init(&r, n, 6);
    r.m.need = 6;
    cr_assert_eq(s2_pool_for(n, 0, rec_item, &r, NULL), S2_OK, "six workers did not meet");
    rec_check(&r);
    cr_assert_eq(atomic_load(&r.peak), 6);
    rec_free(&r);
    /* Capped at 2 on a pool of 5 threads: never more than two at once, slots 0 and 1 only. */
    rec_init(&r, n, 2);
    r.sleep_us = 2000;
    cr_assert_eq(s2_pool_for(n, 2, rec_item, &r, NULL), S2_OK);
    rec_check(&r);
    cr_assert_leq(atomic_load(&r.peak), 2);
    rec_free(&r);
    /* Capped at 1: the caller alone. */
    rec_init(&r, n, 1);
    cr_assert_eq(s2_pool_for(n, 1, rec_item, &r, NULL), S2_OK);
    rec_check(&r);
    cr_assert_eq(atomic_load(&r.on_caller), n);
    rec_free(&r);
}

Test(pool, cap_above_the_width_starts_more_threads, .timeout = 60)
{
    setenv("S2LORA_THREADS", "1", 1);
    rec r;
    rec_init(&r, 30, 1);
    cr_assert_eq(s2_pool_for(30, 0, rec_item, &r, NULL), S2_OK);
    cr_assert_eq(atomic_load(&r.on_caller), 30, "width 1 ran items off the caller");
    cr_assert_eq(s2_pool_started(), 0);
    rec_free(&r);
    /* --jobs 3 on a pool of width 1: three builds at once. */
    rec_init(&r, 3, 3);
    r.m.need = 3;
    cr_assert_eq(s2_pool_for(3, 3, rec_item, &r, NULL), S2_OK, "three workers did not meet");
    rec_check(&r);
    cr_assert_eq(s2_pool_started(), 2);
    rec_free(&r);
    /* A cap above the most any call uses means the most. */
    int w = 0;
    cr_assert_eq(s2_pool_width(100000, 100000, &w, NULL), S2_OK);
    cr_assert_eq(w, S2_POOL_MAX_THREADS);
    cr_assert_eq(s2_pool_width(5, 100000, &w, NULL), S2_OK);
    cr_assert_eq(w, 5);
}

/* ---- nesting ---- */

typedef struct outer {
    meet m;         /* every outer item waits here: all pool threads are then busy */
    int inner_n, inner_cap;
    long long *sums; /* [outer n] */
} outer;

static s2_status inner_item(void *arg, int i, int worker, s2_error *err)
{
    long long *parts = arg;
    parts[i] = item_value(i);
    return S2_OK;
}

static s2_status outer_item(void *arg, int i, int worker, s2_error *err)
{
    outer *o = arg;
    if (!meet_wait(&o->m))
        return s2_error_set(err, S2_ERR_CHECK, "outer item %d: the outer workers did not meet",
                            i);
    long long *parts = calloc((size_t)o->inner_n, sizeof *parts);
    if (!parts)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    s2_status st = s2_pool_for(o->inner_n, o->inner_cap, inner_item, parts, err);
    long long s = 0;
    for (int k = 0; k < o->inner_n; k++) /* a fixed order: the sum does not depend on threads */
        s += parts[k];
    o->sums[i] = s;
    free(parts);
    return st;
}

Test(pool, nested_calls_finish_while_every_thread_is_busy, .timeout = 60)
{
    setenv("S2LORA_THREADS", "4", 1);
    const int n = 4;
    long long sums[4] = {0}, want = 0;
    outer o = {.m = {.need = n}, .inner_n = 500, .inner_cap = 0, .sums = sums};
    for (int k = 0; k < o.inner_n; k++)
        want += item_value(k);
    s2_error err = {0};
    /* Four outer items hold all four workers (caller and three threads) when each starts an
     * inner call of width 4: the inner callers must do their own items. */
    cr_assert_eq(s2_pool_for(n, 0, outer_item, &o, &err), S2_OK, "%s", err.msg);
    for (int i = 0; i < n; i++)
        cr_assert_eq(sums[i], want, "outer item %d", i);
    /* Inner calls wider than the pool, two levels deep through the same items. */
    o = (outer){.m = {.need = 2}, .inner_n = 300, .inner_cap = 8, .sums = sums};
    want = 0;
    for (int k = 0; k < o.inner_n; k++)
        want += item_value(k);
    cr_assert_eq(s2_pool_for(2, 2, outer_item, &o, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(sums[0], want);
    cr_assert_eq(sums[1], want);
}

/* ---- errors ---- */

typedef struct failing {
    atomic_int *calls;
    int n;
} failing;

/* Items 100, 500 and 900 fail; 500 at once, 100 only after a wait, so 500 fails first. */
static s2_status failing_item(void *arg, int i, int worker, s2_error *err)
{
    failing *f = arg;
    atomic_fetch_add(&f->calls[i], 1);
    if (i == 100) {
        sleep_us(20000);
        return s2_error_set(err, S2_ERR_IO, "item %d: the lowest failure", i);
    }
    if (i == 500 || i == 900)
        return s2_error_set(err, S2_ERR_PARSE, "item %d: a later failure", i);
    if (i == 700)
        return S2_ERR_NOMEM; /* no message: the pool names the item */
    sleep_us(50);
    return S2_OK;
}

Test(pool, the_lowest_failing_item_is_the_error, .timeout = 120)
{
    setenv("S2LORA_THREADS", "4", 1);
    const int n = 1000;
    for (int round = 0; round < 5; round++) {
        failing f = {.calls = calloc(n, sizeof(atomic_int)), .n = n};
        s2_error err = {0};
        cr_assert_eq(s2_pool_for(n, 0, failing_item, &f, &err), S2_ERR_IO, "round %d: %s",
                     round, err.msg);
        cr_assert_str_eq(err.msg, "item 100: the lowest failure");
        cr_assert_eq(err.status, S2_ERR_IO);
        /* Every item below the failing one ran, once. */
        for (int i = 0; i <= 100; i++)
            cr_assert_eq(atomic_load(&f.calls[i]), 1, "item %d ran %d times", i,
                         atomic_load(&f.calls[i]));
        s2_error_clear(&err);
        free(f.calls);
    }
    /* On the caller alone the same error, and nothing after it runs. */
    failing f = {.calls = calloc(n, sizeof(atomic_int)), .n = n};
    s2_error err = {0};
    cr_assert_eq(s2_pool_for(n, 1, failing_item, &f, &err), S2_ERR_IO);
    cr_assert_str_eq(err.msg, "item 100: the lowest failure");
    for (int i = 101; i < n; i++)
        cr_assert_eq(atomic_load(&f.calls[i]), 0, "item %d ran after the failure", i);
    s2_error_clear(&err);
    free(f.calls);
}

static s2_status silent_fail(void *arg, int i, int worker, s2_error *err)
{
    return i == 3 ? S2_ERR_NOMEM : S2_OK;
}

Test(pool, a_failure_without_message_names_the_item)
{
    s2_error err = {0};
    cr_assert_eq(s2_pool_for(10, 1, silent_fail, NULL, &err), S2_ERR_NOMEM);
    cr_assert(strstr(err.msg, "item 3 of 10"), "%s", err.msg);
    s2_error_clear(&err);
}

/* ---- fork ---- */

/* Runs a call that needs three threads at once; 0 when it got them. */
static int needs_three(void)
{
    rec r;
    rec_init(&r, 3, 3);
    r.m.need = 3;
    const s2_status st = s2_pool_for(3, 3, rec_item, &r, NULL);
    int ok = st == S2_OK && atomic_load(&r.peak) == 3;
    for (int i = 0; i < 3; i++)
        ok = ok && atomic_load(&r.calls[i]) == 1 && r.out[i] == item_value(i);
    rec_free(&r);
    return ok ? 0 : 1;
}

Test(pool, a_fork_child_starts_its_own_threads, .timeout = 60)
{
    setenv("S2LORA_THREADS", "2", 1);
    cr_assert_eq(needs_three(), 0);
    cr_assert_eq(s2_pool_started(), 2);
    const pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        /* None of the parent's threads exists here: the pool must not count them, and a call
         * must get threads of its own. */
        int rc = s2_pool_started() != 0 ? 10 : needs_three() ? 11 : 0;
        if (!rc && s2_pool_started() != 2)
            rc = 12;
        int w = 0;
        if (!rc && (s2_pool_threads(&w, NULL) != S2_OK || w != 2))
            rc = 13; /* the width read in the parent holds here */
        _exit(rc);
    }
    int ws = 0;
    cr_assert_eq(waitpid(pid, &ws, 0), pid);
    cr_assert(WIFEXITED(ws), "the child did not exit (status %d)", ws);
    cr_assert_eq(WEXITSTATUS(ws), 0, "child: 10 stale threads, 11 no threads, 12 count, 13 width");
    /* The parent's pool is untouched. */
    cr_assert_eq(s2_pool_started(), 2);
    cr_assert_eq(needs_three(), 0);
}

/* ---- S2LORA_THREADS ---- */

Test(pool, threads_variable_is_parsed_strictly)
{
    const char *bad[] = {"", "0", "00", "-1", "+2", " 2", "2 ", "2x", "0x10", "1.5", "257",
                         "99999999999999999999999"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        s2_error err = {0};
        int t = -7;
        cr_assert_eq(s2_pool_parse_threads(bad[i], &t, &err), S2_ERR_INVALID, "'%s'", bad[i]);
        cr_assert_eq(t, -7, "'%s' wrote a value", bad[i]);
        char want[64];
        snprintf(want, sizeof want, "S2LORA_THREADS=\"%s\"", bad[i]);
        cr_assert(strstr(err.msg, want), "%s", err.msg);
        cr_assert(strstr(err.msg, "from 1 to 256"), "%s", err.msg);
        s2_error_clear(&err);
    }
    const struct { const char *v; int t; } good[] = {{"1", 1}, {"8", 8}, {"256", 256},
                                                     {"007", 7}};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        int t = 0;
        cr_assert_eq(s2_pool_parse_threads(good[i].v, &t, NULL), S2_OK, "'%s'", good[i].v);
        cr_assert_eq(t, good[i].t);
    }
}

Test(pool, an_invalid_threads_variable_fails_the_default_width)
{
    setenv("S2LORA_THREADS", "many", 1);
    rec r;
    rec_init(&r, 5, 2);
    s2_error err = {0};
    cr_assert_eq(s2_pool_for(5, 0, rec_item, &r, &err), S2_ERR_INVALID);
    cr_assert(strstr(err.msg, "S2LORA_THREADS=\"many\""), "%s", err.msg);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(atomic_load(&r.calls[i]), 0, "item %d ran", i);
    int w = 0;
    cr_assert_eq(s2_pool_threads(&w, NULL), S2_ERR_INVALID);
    /* An explicit width does not read the variable. */
    cr_assert_eq(s2_pool_for(5, 2, rec_item, &r, &err), S2_OK);
    rec_check(&r);
    s2_error_clear(&err);
    rec_free(&r);
}

Test(pool, unset_threads_variable_means_online_cpus)
{
    unsetenv("S2LORA_THREADS");
    int w = 0;
    cr_assert_eq(s2_pool_threads(&w, NULL), S2_OK);
    const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    cr_assert_eq(w, cpus < 1 ? 1 : cpus > S2_POOL_MAX_THREADS ? S2_POOL_MAX_THREADS : cpus);
}

/* ---- lifetime and load ---- */

Test(pool, shutdown_joins_and_a_later_call_restarts, .timeout = 60)
{
    setenv("S2LORA_THREADS", "2", 1);
    cr_assert_eq(needs_three(), 0);
    cr_assert_eq(s2_pool_started(), 2);
    s2_pool_shutdown();
    cr_assert_eq(s2_pool_started(), 0);
    s2_pool_shutdown(); /* twice is harmless */
    cr_assert_eq(needs_three(), 0);
    cr_assert_eq(s2_pool_started(), 2);
}

typedef struct stress_arg {
    unsigned seed;
    atomic_int *failures;
} stress_arg;

static s2_status sum_item(void *arg, int i, int worker, s2_error *err)
{
    long long *out = arg;
    out[i] = item_value(i);
    if (i % 37 == 0) { /* now and then a nested call */
        long long inner[16];
        s2_status st = s2_pool_for(16, 3, inner_item, inner, err);
        for (int k = 0; !st && k < 16; k++)
            if (inner[k] != item_value(k))
                st = s2_error_set(err, S2_ERR_CHECK, "inner item %d", k);
        return st;
    }
    return S2_OK;
}

/* An application thread: calls of random sizes and caps, outputs checked after each. */
static void *stress_thread(void *p)
{
    stress_arg *a = p;
    long long out[300];
    for (int call = 0; call < 300; call++) {
        const int n = (int)(rand_r(&a->seed) % 300), cap = (int)(rand_r(&a->seed) % 6);
        memset(out, 0, sizeof out);
        s2_error err = {0};
        int bad = s2_pool_for(n, cap, sum_item, out, &err) != S2_OK;
        for (int i = 0; !bad && i < n; i++)
            bad = out[i] != item_value(i);
        if (bad)
            atomic_fetch_add(a->failures, 1);
        s2_error_clear(&err);
    }
    return NULL;
}

Test(pool, many_callers_at_once, .timeout = 120)
{
    setenv("S2LORA_THREADS", "4", 1);
    enum { CALLERS = 8 };
    pthread_t th[CALLERS];
    stress_arg args[CALLERS];
    atomic_int failures = 0;
    for (int t = 0; t < CALLERS; t++) {
        args[t] = (stress_arg){.seed = 1234u + (unsigned)t, .failures = &failures};
        cr_assert_eq(pthread_create(&th[t], NULL, stress_thread, &args[t]), 0);
    }
    for (int t = 0; t < CALLERS; t++)
        pthread_join(th[t], NULL);
    cr_assert_eq(atomic_load(&failures), 0, "%d calls lost or wrong", atomic_load(&failures));
    cr_assert_leq(s2_pool_started(), S2_POOL_MAX_THREADS - 1);
    cr_assert_geq(s2_pool_started(), 3);
}

/*
 * pool.h — the process's one thread pool. Every parallel loop of the runtime runs on it: the
 * NVRTC builds (jit), the tuner's candidate builds and input fills (tune), the CPU references'
 * row and head loops (ref).
 *
 * s2_pool_for(n, threads, fn, arg, err) calls fn for every item in [0, n) and returns once all
 * have finished. The caller works too, as worker 0; pool threads join it as workers 1, 2, ...
 * Items are claimed in increasing order, one at a time, so which thread runs an item varies
 * but each item runs once, whole, on one thread: a caller whose items write disjoint outputs
 * (and reduce nothing in completion order) gets results independent of the thread count.
 *
 * Width: a call uses at most `threads` workers (the caller counted), 0 meaning the pool's width:
 * S2LORA_THREADS when set (a whole number 1..S2_POOL_MAX_THREADS, anything else an error), else
 * one per online CPU (at most S2_POOL_MAX_THREADS), read once per process at the first call that
 * needs it (a fork child keeps its parent's). An explicit
 * `threads` may exceed that width (`--jobs 8` on 4 cores runs 8 builds): the pool starts more
 * threads on demand, up to S2_POOL_MAX_THREADS, the most any call uses. Never more than n.
 *
 * Errors: fn returns S2_OK or a status with its message in the s2_error it is handed. After a
 * failure no further item is started; every item below the failing one was claimed before it
 * and still runs, and the call reports the failure of the LOWEST failing item, its status and
 * message unchanged: the same error whichever thread finished first.
 *
 * Nesting: fn may call s2_pool_for itself. The inner caller works on its own items as the inner
 * call's worker 0 while idle pool threads join it, so a nested call always makes progress and
 * never waits on a thread that waits on it.
 *
 * Lifetime: the threads start lazily (the first call wider than 1) and are joined at exit
 * (atexit), after the items in flight finish; s2_pool_shutdown() does the same at any time and a
 * later call starts them again. A fork() child has none of its parent's threads: the pool resets
 * in the child (pthread_atfork) and starts afresh there on its first call. A task must not fork
 * and go on in the child (its call's other workers do not exist there); fork-and-exec is fine.
 */
#ifndef S2_POOL_H
#define S2_POOL_H

#include "gen/util.h"

/* The most workers any call uses (the caller counted), and the largest S2LORA_THREADS. */
#define S2_POOL_MAX_THREADS 256

/* One item. worker (0 .. width-1, see s2_pool_width) names the thread's slot in this call: two
 * items with the same worker never run at once, so per-worker scratch needs no lock. */
typedef s2_status (*s2_pool_fn)(void *arg, int item, int worker, s2_error *err);

/* Runs fn(arg, item, worker, err) for every item in [0, n) on up to `threads` workers (0: the
 * pool's width); see the file comment. n < 0, threads < 0, or n > 0 without fn is an
 * S2_ERR_INVALID; so is an invalid S2LORA_THREADS when threads is 0. */
s2_status s2_pool_for(int n, int threads, s2_pool_fn fn, void *arg, s2_error *err);

/* The number of workers s2_pool_for(n, threads, ...) uses at most, hence one more than the
 * largest worker index it passes to fn: min(n, threads or the pool's width,
 * S2_POOL_MAX_THREADS); 0 for n = 0. Fails as s2_pool_for does on bad arguments. */
s2_status s2_pool_width(int n, int threads, int *width, s2_error *err);

/* The pool's width: S2LORA_THREADS, or the online CPUs. */
s2_status s2_pool_threads(int *threads, s2_error *err);

/* Parses a value of S2LORA_THREADS: decimal digits only, 1..S2_POOL_MAX_THREADS. Anything else
 * (empty, a sign, spaces, 0, too large) is an S2_ERR_INVALID naming the variable and the value. */
s2_status s2_pool_parse_threads(const char *value, int *threads, s2_error *err);

/* Joins the pool's threads after their items in flight; calls in progress finish on their
 * callers' threads, and a later call starts threads again. Registered with atexit. */
void s2_pool_shutdown(void);

/* How many threads the pool has started (callers not counted), for tests. */
int s2_pool_started(void);

#endif

/*
 * progress.h — how the library reports the progress of a long job (a checkpoint's load or
 * initialisation) to its caller, which decides whether and how to show it; the library itself
 * never prints.
 */
#ifndef S2_PROGRESS_H
#define S2_PROGRESS_H

#include <stdint.h>

/* done of total (bytes, or whatever unit what names) of the job what; called from the thread
 * doing the job, done nondecreasing, the last call with done == total. */
typedef void (*s2_progress_fn)(void *ctx, const char *what, uint64_t done, uint64_t total);

#endif

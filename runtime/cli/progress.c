/*
 * progress.c — the progress line of long jobs (cli.h): tune --build-only, build, init of a
 * large model, checkpoint loads. The library reports through callbacks and never prints; this
 * turns the reports into one line on stderr: redrawn in place (\r) on a terminal, a whole
 * line every ~5 s when stderr is a log, so a log shows the job is alive without a line a unit.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "runtime/cli/cli.h"

#define TTY_EVERY_S 0.1
#define LOG_EVERY_S 5.0

struct s2_cli_progress {
    pthread_mutex_t mu;
    const char *prog, *what;
    long long done, total;
    int tty, drawn, bytes; /* bytes: done and total are bytes, shown in MiB */
    double t0, last;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

s2_cli_progress *s2_cli_progress_start(const char *prog, const char *what, long long total)
{
    s2_cli_progress *p = calloc(1, sizeof *p);
    if (!p)
        return NULL; /* no progress line: the job itself goes on */
    pthread_mutex_init(&p->mu, NULL);
    p->prog = prog;
    p->what = what;
    p->total = total;
    p->tty = isatty(STDERR_FILENO);
    p->t0 = p->last = now_s();
    return p;
}

/* Under the lock. */
static void draw(s2_cli_progress *p, int force)
{
    const double t = now_s();
    if (!force && t - p->last < (p->tty ? TTY_EVERY_S : LOG_EVERY_S))
        return;
    p->last = t;
    char pct[16] = "";
    if (p->total > 0)
        snprintf(pct, sizeof pct, " (%d%%)", (int)(100.0 * p->done / p->total));
    char count[64];
    if (p->bytes)
        snprintf(count, sizeof count, "%.0f/%.0f MiB", p->done / 1048576.0,
                 p->total / 1048576.0);
    else
        snprintf(count, sizeof count, "%lld/%lld", p->done, p->total);
    fprintf(stderr, "%s%s: %s: %s%s, %.1f s%s", p->tty ? "\r\033[K" : "", p->prog, p->what,
            count, pct, t - p->t0, p->tty ? "" : "\n");
    p->drawn = 1;
    fflush(stderr);
}

void s2_cli_progress_add(s2_cli_progress *p, long long n)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->done += n;
    draw(p, 0);
    pthread_mutex_unlock(&p->mu);
}

void s2_cli_progress_set(s2_cli_progress *p, long long done, long long total)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->done = done;
    if (total > 0)
        p->total = total;
    draw(p, 0);
    if (p->tty && p->drawn && p->total > 0 && p->done >= p->total) { /* done: clear the line */
        fputs("\r\033[K", stderr);
        p->drawn = 0;
    }
    pthread_mutex_unlock(&p->mu);
}

void s2_cli_progress_unit(void *ctx, const char *unit, int cache_hit)
{
    (void)unit, (void)cache_hit;
    s2_cli_progress_add(ctx, 1);
}

void s2_cli_progress_bytes(void *ctx, const char *what, uint64_t done, uint64_t total)
{
    (void)what;
    s2_cli_progress *p = ctx;
    if (p)
        p->bytes = 1;
    s2_cli_progress_set(p, (long long)done, (long long)total);
}

void s2_cli_progress_end(s2_cli_progress *p)
{
    if (!p)
        return;
    if (p->tty && p->drawn) { /* the summary that follows replaces the line */
        fputs("\r\033[K", stderr);
        fflush(stderr);
    }
    pthread_mutex_destroy(&p->mu);
    free(p);
}

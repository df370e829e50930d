/* tune.c — build every candidate of the search space, in parallel. */
#include "tune.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../gen/emit.h"

typedef struct build_pool {
    const s2_spec *spec;
    const s2_jit_opts *jo;
    s2_tune_candidate *c;
    int n, next;
} build_pool;

static void build_one(const build_pool *pool, s2_tune_candidate *c)
{
    s2_error err = {0};
    s2_attn_plan plan;
    char *src = NULL;
    s2_jit_result res = {0};
    c->st = s2_plan_attn(pool->spec, pool->jo->arch, &c->tile, &plan, &err);
    if (!c->st)
        c->st = s2_emit_attn(pool->spec, &plan, c->unit, &src, &err);
    if (!c->st) {
        s2_jit_src unit = {.unit = s2_attn_unit_name(c->unit), .source = src};
        s2_jit_opts one = *pool->jo;
        one.threads = 1; /* the pool is the parallelism */
        c->st = s2_jit_build(&unit, 1, &one, &res, &err);
    }
    if (!c->st) {
        c->cache_hit = res.cache_hit;
        c->ms = res.ms;
        c->n_res = res.n_res;
        memcpy(c->res, res.res, sizeof c->res);
        for (int k = 0; k < res.n_res; k++)
            c->spilled |= res.res[k].spill_stores + res.res[k].spill_loads + res.res[k].stack > 0;
    }
    s2_jit_result_free(&res);
    free(src);
    if (c->st) {
        char ts[160];
        s2_error_prefix(&err, "%s with tile %s", s2_attn_unit_name(c->unit),
                        s2_plan_tile_str(&c->tile, ts, sizeof ts));
    }
    c->msg = err.msg; /* owned by the candidate now */
}

static void *build_worker(void *arg)
{
    build_pool *pool = arg;
    for (;;) {
        int i = __atomic_fetch_add(&pool->next, 1, __ATOMIC_RELAXED);
        if (i >= pool->n)
            return NULL;
        build_one(pool, &pool->c[i]);
    }
}

/* Fills c with the space of unit; returns how many were written. */
static int add_space(const s2_spec *spec, const char *arch, s2_attn_unit unit,
                     s2_tune_candidate *c, int max)
{
    int n = s2_plan_tile_space(spec, arch, unit, NULL, 0);
    s2_attn_tile *t = calloc((size_t)(n ? n : 1), sizeof *t);
    if (!t)
        return -1;
    s2_plan_tile_space(spec, arch, unit, t, n);
    int k = 0;
    for (; k < n && k < max; k++)
        c[k] = (s2_tune_candidate){.unit = unit, .tile = t[k]};
    free(t);
    return k;
}

s2_status s2_tune_build_space(const s2_spec *spec, const s2_jit_opts *jo, unsigned units,
                              s2_tune_candidate **out, int *n, s2_error *err)
{
    *out = NULL;
    *n = 0;
    if (!jo->arch || !s2_jit_arch_valid(jo->arch))
        return s2_error_set(err, S2_ERR_INVALID,
                            "arch '%s': valid sm_80, sm_86, sm_89, sm_90, sm_90a",
                            jo->arch ? jo->arch : "(none)");
    int total = 0;
    for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++)
        if (units & (1u << u))
            total += s2_plan_tile_space(spec, jo->arch, (s2_attn_unit)u, NULL, 0);
    s2_tune_candidate *c = calloc((size_t)(total ? total : 1), sizeof *c);
    if (!c)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory for %d candidates", total);
    int k = 0;
    for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++) {
        if (!(units & (1u << u)))
            continue;
        int got = add_space(spec, jo->arch, (s2_attn_unit)u, c + k, total - k);
        if (got < 0) {
            free(c);
            return s2_error_set(err, S2_ERR_NOMEM, "out of memory enumerating the space");
        }
        k += got;
    }
    build_pool pool = {.spec = spec, .jo = jo, .c = c, .n = k};
    int nth = jo->threads > 0 ? jo->threads : s2_cpu_count();
    if (nth > k)
        nth = k;
    pthread_t th[256];
    if (nth > 256)
        nth = 256;
    int started = 0;
    for (; started < nth; started++)
        if (pthread_create(&th[started], NULL, build_worker, &pool) != 0)
            break;
    build_worker(&pool); /* the caller works too; it also finishes alone if no thread started */
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    *out = c;
    *n = k;
    return S2_OK;
}

void s2_tune_free(s2_tune_candidate *c, int n)
{
    if (!c)
        return;
    for (int i = 0; i < n; i++)
        free(c[i].msg);
    free(c);
}

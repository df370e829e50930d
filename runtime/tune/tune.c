/* tune.c — build every candidate of the search space, in parallel. */
#include "runtime/tune/tune.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen/emit.h"
#include "runtime/core/pool.h"

typedef struct build_pool {
    const s2_spec *spec;
    const s2_jit_opts *jo;
    s2_tune_candidate *c;
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
        unit.n_kernels = s2_attn_unit_kernels(c->unit, &unit.kernels);
        s2_jit_opts one = *pool->jo;
        one.threads = 1; /* the pool is the parallelism */
        c->st = s2_jit_build(&unit, 1, &one, &res, &err);
    }
    if (!c->st) {
        c->cache_hit = res.cache_hit;
        c->warning = res.warning[0] ? strdup(res.warning) : NULL;
        c->ms = res.ms;
        c->n_res = res.n_res;
        memcpy(c->res, res.res, sizeof c->res);
        for (int k = 0; k < res.n_res; k++)
            c->spilled |= res.res[k].spill_stores + res.res[k].spill_loads + res.res[k].stack > 0;
    }
    s2_jit_result_free(&res);
    free(src);
    if (c->st) {
        char ts[S2_PLAN_TILE_STR_MAX];
        s2_error_prefix(&err, "%s with tile %s", s2_attn_unit_name(c->unit),
                        s2_plan_tile_str(&c->tile, ts, sizeof ts));
    }
    c->msg = err.msg; /* owned by the candidate now */
}

/* One candidate as an item of the thread pool: its failure is its own (c->st, c->msg), never
 * the call's. */
static s2_status build_item(void *arg, int item, int worker, s2_error *err)
{
    build_pool *pool = arg;
    build_one(pool, &pool->c[item]);
    return S2_OK;
}

int s2_tune_deterministic(const s2_attn_tile *tile)
{
    return tile->bwd_atomic_dq != 1;
}

/* The space of unit (the backward's without the atomic dQ unless atomic_dq) into c, at most
 * max candidates (c NULL: only counted); returns how many, -1 when out of memory. */
static int add_space(const s2_spec *spec, const char *arch, s2_attn_unit unit, int atomic_dq,
                     s2_tune_candidate *c, int max)
{
    int n = s2_plan_tile_space(spec, arch, unit, NULL, 0);
    s2_attn_tile *t = calloc((size_t)(n ? n : 1), sizeof *t);
    if (!t)
        return -1;
    s2_plan_tile_space(spec, arch, unit, t, n);
    int k = 0;
    for (int i = 0; i < n && k < max; i++)
        if (unit != S2_UNIT_ATTN_BWD || atomic_dq || s2_tune_deterministic(&t[i])) {
            if (c)
                c[k] = (s2_tune_candidate){.unit = unit, .tile = t[i]};
            k++;
        }
    free(t);
    return k;
}

int s2_tune_space_size(const s2_spec *spec, const char *arch, unsigned units, int atomic_dq)
{
    int total = 0;
    for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++) {
        const int n = units & (1u << u)
                          ? add_space(spec, arch, (s2_attn_unit)u, atomic_dq, NULL, INT_MAX)
                          : 0;
        if (n < 0)
            return -1;
        total += n;
    }
    return total;
}

s2_status s2_tune_build_space(const s2_spec *spec, const s2_jit_opts *jo, unsigned units,
                              int atomic_dq, s2_tune_candidate **out, int *n, s2_error *err)
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
        int got = add_space(spec, jo->arch, (s2_attn_unit)u, atomic_dq, c + k, total - k);
        if (got < 0) {
            free(c);
            return s2_error_set(err, S2_ERR_NOMEM, "out of memory enumerating the space");
        }
        k += got;
    }
    build_pool pool = {.spec = spec, .jo = jo, .c = c};
    s2_status st = s2_pool_for(k, jo->threads, build_item, &pool, err);
    if (st) {
        s2_tune_free(c, k);
        return st;
    }
    *out = c;
    *n = k;
    return S2_OK;
}

void s2_tune_free(s2_tune_candidate *c, int n)
{
    if (!c)
        return;
    for (int i = 0; i < n; i++) {
        free(c[i].msg);
        free(c[i].warning);
    }
    free(c);
}

/* Copies the fields of unit u from src into dst. */
static void take_unit_fields(s2_attn_tile *dst, const s2_attn_tile *src, s2_attn_unit u)
{
    if (u == S2_UNIT_ATTN_FWD) {
        dst->fwd_warps = src->fwd_warps, dst->fwd_strips = src->fwd_strips;
        dst->fwd_block_n = src->fwd_block_n, dst->fwd_stages = src->fwd_stages;
        dst->fwd_wgmma = src->fwd_wgmma, dst->fwd_mbar = src->fwd_mbar;
        dst->fwd_tma = src->fwd_tma, dst->fwd_overlap = src->fwd_overlap;
        dst->fwd_persist = src->fwd_persist;
        return;
    }
    dst->bwd_warps = src->bwd_warps, dst->bwd_block_n = src->bwd_block_n;
    dst->bwd_stages = src->bwd_stages, dst->bwd_atomic_dq = src->bwd_atomic_dq;
    dst->bwd_wgmma = src->bwd_wgmma, dst->bwd_mbar = src->bwd_mbar;
    dst->bwd_tma = src->bwd_tma;
}

/* The database's tile for unit u, if usable; why gets a word either way. */
static int select_unit(const s2_tunedb *db, const s2_tunedb_key *key, const s2_spec *spec,
                       const char *arch, s2_attn_unit u, s2_tune_choice *out, s2_buf *why)
{
    s2_tunedb_entry e;
    if (!db || !s2_tunedb_lookup(db, key, 0, &e)) {
        s2_buf_printf(why, "%s: default", s2_attn_unit_name(u));
        return 0;
    }
    s2_attn_tile t = s2_plan_spec_default_tile(spec, arch);
    s2_attn_tile merged = out->tile;
    s2_attn_plan p;
    /* A stored tile names every key its tuner knew; the mbarrier and TMA switches came later
     * and were off in every tile stored before them. */
    t.fwd_mbar = t.bwd_mbar = t.fwd_tma = t.fwd_overlap = t.fwd_persist = t.bwd_tma = 0;
    if (s2_plan_parse_tile(e.tile, &t, NULL) == S2_OK) {
        take_unit_fields(&merged, &t, u);
        if (s2_plan_attn(spec, arch, &merged, &p, NULL) == S2_OK) {
            out->tile = merged;
            s2_buf_printf(why, "%s: tuned (%s, %.3f ms vs %.3f default, %s)",
                          s2_attn_unit_name(u), e.shape, e.tuned_ms, e.default_ms, e.when);
            return 1;
        }
    }
    s2_buf_printf(why, "%s: default (the tuned tile '%s' no longer plans)", s2_attn_unit_name(u),
                  e.tile);
    return 0;
}

void s2_tune_select(const s2_tunedb *db, const char *device, const char *arch,
                    const s2_spec *spec, int seqlen, s2_tune_choice *out)
{
    memset(out, 0, sizeof *out);
    out->tile = s2_plan_spec_default_tile(spec, arch);
    char ident[65], shape[64];
    s2_plan_attn_identity(spec, ident);
    s2_tunedb_shape_class(seqlen, shape, sizeof shape);
    s2_buf why = {0};
    for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++) {
        s2_tunedb_key key = {.device = device, .arch = arch,
                             .kernel = s2_attn_unit_name((s2_attn_unit)u),
                             .spec_sha256 = ident, .shape = shape};
        if (u)
            s2_buf_append(&why, "; ", 2);
        out->tuned[u] = select_unit(db, &key, spec, arch, (s2_attn_unit)u, out, &why);
    }
    snprintf(out->why, sizeof out->why, "%s", why.data ? why.data : "default");
    s2_buf_free(&why);
}

s2_tunedb *s2_tune_open_cached(const s2_jit_opts *jo, const char *device, char *why,
                               size_t why_len)
{
    char dir[1024];
    s2_tunedb *db = NULL;
    s2_error err = {0};
    if (s2_jit_cache_dir(jo, dir, sizeof dir, &err) == S2_OK)
        s2_tunedb_open(dir, device, &db, &err);
    if (!db && why)
        snprintf(why, why_len, "%s", err.msg ? err.msg : "none");
    s2_error_clear(&err);
    return db;
}

void s2_tune_select_cached(const s2_jit_opts *jo, const char *device, const char *arch,
                           const s2_spec *spec, int seqlen, s2_tune_choice *out)
{
    char none[256];
    s2_tunedb *db = s2_tune_open_cached(jo, device, none, sizeof none);
    s2_tune_select(db, device, arch, spec, seqlen, out);
    if (!db) {
        s2_buf why = {0};
        s2_buf_printf(&why, "%s (no tuning database: %s)", out->why, none);
        if (why.data)
            snprintf(out->why, sizeof out->why, "%s", why.data);
        s2_buf_free(&why);
    }
    s2_tunedb_close(db);
}

void s2_tune_say(const s2_tune_opts *o, const char *fmt, ...)
{
    if (!o->progress)
        return;
    char line[S2_PLAN_TILE_STR_MAX + 256]; /* a tile's text whole, and the words around it */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    o->progress(o->progress_ctx, line);
}

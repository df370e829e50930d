/*
 * cli_kernels.c — the subcommands about the kernels themselves: gen, build, attn, bench
 * (attn, lora), tune and data. Each parses its arguments against its table (opts.h), calls
 * the library and prints; the library itself never prints or exits.
 */
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <errno.h>
#include <unistd.h>

#include <jansson.h>

#include "gen/emit.h"
#include "gen/spec.h"
#include "runtime/api/s2lora.h"
#include "runtime/tune/bench.h"
#include "runtime/core/jit.h"
#include "runtime/core/rt.h"
#include "runtime/core/st.h"
#include "runtime/tune/tune.h"
#include "runtime/tune/bench_lora.h"
#include "runtime/cli/cli.h"
#include "runtime/train/data.h"

#define EXIT_NO_DEVICE 3
#define MAX_ARCH 8
#define MAX_JOBS 1024

static const char *prog = "s2lora";

static int fail(s2_error *err)
{
    fprintf(stderr, "%s: %s\n", prog, err->msg ? err->msg : s2_status_to_string(err->status));
    int code = err->status == S2_ERR_NO_DEVICE ? EXIT_NO_DEVICE : 1;
    s2_error_clear(err);
    return code;
}

/* The options several subcommands share, one spelling and one meaning each. */
static const char *const arch_values[] = {"sm_80", "sm_86", "sm_89", "sm_90", "sm_90a", NULL};

#define OPT_SETS_AT(T, SETS, N)                                                                 \
    S2_OPT_SETS_AT(T, SETS, N, "override a spec value, e.g. --set s2attn.group_size=2048")
#define OPT_SETS(T) OPT_SETS_AT(T, sets, n_sets)
#define OPT_CACHE_DIR_AT(T, F)                                                                  \
    S2_OPT_CACHE_DIR_AT(T, F, "kernel cache directory (default $S2LORA_CACHE_DIR, else "       \
                              "$XDG_CACHE_HOME/s2lora, else ~/.cache/s2lora)")
#define OPT_CACHE_DIR(T) OPT_CACHE_DIR_AT(T, cache_dir)
#define OPT_JOBS(T)                                                                             \
    {.name = "jobs", .short_name = 'j', .kind = S2_OPT_INT, .metavar = "N",                    \
     .help = "parallel NVRTC builds, 1..1024 (default: all cores)", .off = offsetof(T, jobs),   \
     .lo = 1, .hi = MAX_JOBS}
#define OPT_TILE(T)                                                                             \
    {.name = "tile", .kind = S2_OPT_STRING, .metavar = "K=V,...",                              \
     .help = "tuning parameters instead of the arch's default: fwd_warps, fwd_block_n, "        \
             "fwd_stages, bwd_warps, bwd_block_n, bwd_stages, ... (a wrong key lists them all)", \
     .off = offsetof(T, tile)}

/* Options common to the subcommands that take one spec (gen, build, attn). */
typedef struct cli_opts {
    const char *spec[1];
    int n_spec;
    s2_spec_override sets[S2_CLI_MAX_SETS];
    int n_sets;
    const char *arch[MAX_ARCH];
    int n_arch;
    const char *out, *in, *cache_dir, *tile;
    int backward, no_cache, jobs;
} cli_opts;

/* "fwd_warps, bwd_stages": the keys of --tile's text, for messages. */
static const char *tile_keys_given(const char *text, char *buf, size_t n)
{
    size_t used = 0;
    buf[0] = '\0';
    for (const char *p = text; *p && used < n;) {
        size_t len = strcspn(p, "=,");
        used += (size_t)snprintf(buf + used, n - used, "%s%.*s", used ? ", " : "", (int)len, p);
        p += strcspn(p, ",");
        p += *p == ',';
    }
    return buf;
}

/* The plan's valid tile keys, as it lists them when it refuses an unknown one (one list, kept
 * by the plan). */
static const char *tile_keys_valid(char *buf, size_t n)
{
    s2_attn_tile t;
    s2_error e = {0};
    s2_plan_parse_tile("?=0", &t, &e);
    const char *v = e.msg ? strstr(e.msg, "valid: ") : NULL;
    snprintf(buf, n, "%s", v ? v + 7 : "see 's2lora build --help'");
    s2_error_clear(&e);
    return buf;
}

/* A refusal of a --tile run, with the keys the user set and the valid ones. */
static void tile_error_context(const char *tile, s2_error *err)
{
    char given[256], valid[512];
    s2_error_prefix(err, "--tile %s (you set %s; valid keys: %s)", tile,
                    tile_keys_given(tile, given, sizeof given),
                    tile_keys_valid(valid, sizeof valid));
}

/* The tile to build with: the plan's default for arch, with --tile applied. NULL without --tile. */
static const s2_attn_tile *cli_tile(const cli_opts *o, const s2_spec *spec, const char *arch,
                                    s2_attn_tile *t, s2_error *err, s2_status *st)
{
    *st = S2_OK;
    if (!o->tile)
        return NULL;
    *t = s2_plan_spec_default_tile(spec, arch);
    *st = s2_plan_check_tile_text(o->tile, arch, err);
    if (!*st)
        *st = s2_plan_parse_tile(o->tile, t, err);
    if (*st)
        tile_error_context(o->tile, err);
    return t;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---------------------------------------------------------------- gen */

static const s2_opt gen_opts[] = {
    OPT_SETS(cli_opts),
    {.name = "out", .short_name = 'o', .kind = S2_OPT_STRING, .metavar = "DIR",
     .help = "output directory (created if missing)", .off = offsetof(cli_opts, out),
     .flags = S2_OPT_REQUIRED, .complete = S2_COMPLETE_DIR},
    {.name = "arch", .short_name = 'a', .kind = S2_OPT_ENUM, .metavar = "ARCH",
     .help = "plan for this arch's default tile (default sm_90a)", .values = arch_values,
     .off = offsetof(cli_opts, arch), .max_count = 1, .count_off = offsetof(cli_opts, n_arch)},
};

const s2_cmd s2_cmd_gen = {
    .name = "gen",
    .usage = "SPEC [--set KEY=VALUE]... -o DIR [--arch ARCH]",
    .about = "Generates the specialised CUDA sources of SPEC (one .cu file per unit, each\n"
             "opening with a banner that names the spec and its hash) into DIR.\n",
    .opts = gen_opts, .n_opts = sizeof gen_opts / sizeof gen_opts[0],
    S2_POS_SPEC(cli_opts, spec, n_spec, 1),
};

int s2_cli_gen(const char *p, int argc, char **argv)
{
    cli_opts o = {0};
    s2_opts_result r;
    int rc;
    if (!s2_opts_run(&s2_cmd_gen, argc, argv, &o, &r, &rc))
        return rc;
    s2_error err = {0};
    s2_spec spec;
    s2_attn_plan plan;
    if (s2_spec_load(o.spec[0], o.sets, o.n_sets, &spec, &err) ||
        s2_plan_attn(&spec, o.n_arch ? o.arch[0] : "sm_90a", NULL, &plan, &err))
        return fail(&err);
    char *paths[S2_EMIT_UNITS];
    int n = 0;
    if (s2_emit_write_dir(&spec, &plan, o.out, paths, S2_EMIT_UNITS, &n, &err))
        return fail(&err);
    for (int i = 0; i < n; i++) {
        printf("%s\n", paths[i]);
        free(paths[i]);
    }
    return 0;
}

/* ---------------------------------------------------------------- build */

static const s2_opt build_opts[] = {
    OPT_SETS(cli_opts),
    {.name = "arch", .short_name = 'a', .kind = S2_OPT_ENUM, .metavar = "ARCH",
     .help = "build for this arch (default: the spec's arch list)", .values = arch_values,
     .off = offsetof(cli_opts, arch), .max_count = MAX_ARCH,
     .count_off = offsetof(cli_opts, n_arch)},
    OPT_JOBS(cli_opts),
    OPT_CACHE_DIR(cli_opts),
    {.name = "no-cache", .kind = S2_OPT_FLAG, .help = "build everything, read and write no cache",
     .off = offsetof(cli_opts, no_cache)},
    OPT_TILE(cli_opts),
};

const s2_cmd s2_cmd_build = {
    .name = "build",
    .usage = "SPEC [--set KEY=VALUE]... [--arch ARCH]... [--jobs N]\n"
             "                    [--cache-dir DIR] [--no-cache] [--tile K=V,...]",
    .about = "Generates SPEC's kernels (the attention units and the trainer's) and builds\n"
             "them with NVRTC for each ARCH (default: the spec's arch list), through the\n"
             "kernel cache. Needs no GPU. Prints one row per kernel: registers, static and\n"
             "dynamic shared memory, stack, spills; and per unit whether it came from the\n"
             "cache and its time; then a summary (units built and cache hits, kernels, spills\n"
             "by name, the cache directory) and the next useful command.\n",
    .epilog = "Exit status 1 if a build fails or any kernel spills.\n",
    .opts = build_opts, .n_opts = sizeof build_opts / sizeof build_opts[0],
    S2_POS_SPEC(cli_opts, spec, n_spec, 1),
};

/* The dynamic shared memory a kernel is launched with: the plan's (0 for the others). */
static int dyn_smem(const s2_attn_plan *plan, const char *kernel)
{
    if (!strcmp(kernel, "s2_attn_fwd"))
        return plan->smem_fwd;
    if (!strcmp(kernel, "s2_attn_bwd_dq"))
        return plan->smem_dq;
    if (!strcmp(kernel, "s2_attn_bwd_dkdv"))
        return plan->smem_dkdv;
    return 0;
}

typedef struct build_tally {
    int built, hits, kernels, spill_bytes;
    char spilled[1024]; /* "sm_80/s2_attn_bwd_dq (96 bytes), ..." */
} build_tally;

static void print_build_rows(const char *arch, const s2_attn_plan *plan,
                             const s2_jit_result *res, int n_units, build_tally *t)
{
    for (int u = 0; u < n_units; u++) {
        const s2_jit_result *r = &res[u];
        r->cache_hit ? t->hits++ : t->built++;
        for (int k = 0; k < r->n_res; k++) {
            const s2_kernel_res *x = &r->res[k];
            int sp = x->spill_stores + x->spill_loads;
            t->kernels++;
            if (sp) {
                size_t n = strlen(t->spilled);
                snprintf(t->spilled + n, sizeof t->spilled - n, "%s%s/%s (%d bytes)",
                         n ? ", " : "", arch, x->name, sp);
                t->spill_bytes += sp;
            }
            char ms[16] = "";
            if (k == 0) /* the unit's time, once: its kernels are built together */
                snprintf(ms, sizeof ms, "%.1f", r->ms);
            printf("%-7s %-9s %-22s %5d %8d %8d %6d %7d %-5s %8s\n", arch,
                   u < S2_UNIT_ATTN_COUNT ? s2_attn_unit_name((s2_attn_unit)u) : "train", x->name,
                   x->regs, x->smem, dyn_smem(plan, x->name), x->stack, sp,
                   k ? "" : r->cache_hit ? "hit" : "built", ms);
        }
    }
}

int s2_cli_build(const char *p, int argc, char **argv)
{
    cli_opts o = {0};
    s2_opts_result r;
    int rc;
    if (!s2_opts_run(&s2_cmd_build, argc, argv, &o, &r, &rc))
        return rc;
    s2_error err = {0};
    s2_spec spec;
    if (s2_spec_load(o.spec[0], o.sets, o.n_sets, &spec, &err))
        return fail(&err);
    int n_arch = o.n_arch ? o.n_arch : spec.n_arch;
    char cache[1024] = "none (--no-cache)";
    s2_jit_opts cd = {.cache_dir = o.cache_dir};
    if (!o.no_cache && s2_jit_cache_dir(&cd, cache, sizeof cache, &err))
        return fail(&err);
    printf("spec %s (sha256 %.16s), G=%d S=%d %s, d=%d, H=%d, Hkv=%d, %s\n", spec.name,
           spec.hash_hex, spec.s2attn.group_size, spec.s2attn.shift,
           s2_shift_mode_name(spec.s2attn.shift_mode), spec.model.head_dim,
           spec.model.num_heads, spec.model.num_kv_heads, s2_dtype_name(spec.dtype));
    printf("%-7s %-9s %-22s %5s %8s %8s %6s %7s %-5s %8s\n", "arch", "unit", "kernel", "regs",
           "smem", "dyn_smem", "stack", "spill", "cache", "unit_ms");
    build_tally t = {0};
    double t0 = now_ms();
    s2_cli_progress *pr = s2_cli_progress_start(prog, "build: units", (long long)n_arch *
                                                S2_EMIT_UNITS);
    for (int a = 0; a < n_arch; a++) {
        s2_jit_opts jo = {.arch = o.n_arch ? o.arch[a] : spec.arch[a], .cache_dir = o.cache_dir,
                          .threads = o.jobs, .no_cache = o.no_cache,
                          .on_unit = s2_cli_progress_unit, .on_unit_ctx = pr};
        s2_attn_plan plan;
        s2_jit_result res[S2_EMIT_UNITS];
        memset(res, 0, sizeof res);
        s2_attn_tile tile;
        s2_status st;
        const s2_attn_tile *tp = cli_tile(&o, &spec, jo.arch, &tile, &err, &st);
        if (!st && s2_spec_build(&spec, tp, &jo, &plan, res, &err)) {
            st = err.status;
            if (o.tile)
                tile_error_context(o.tile, &err);
        }
        if (st) {
            s2_cli_progress_end(pr);
            return fail(&err);
        }
        s2_cli_progress_end(pr); /* the rows replace the line; a next arch starts another */
        pr = a + 1 < n_arch ? s2_cli_progress_start(prog, "build: units",
                                                    (long long)(n_arch - a - 1) * S2_EMIT_UNITS)
                            : NULL;
        print_build_rows(jo.arch, &plan, res, S2_EMIT_UNITS, &t);
        for (int u = 0; u < S2_EMIT_UNITS; u++) {
            if (res[u].warning[0])
                fprintf(stderr, "%s: warning: %s\n", prog, res[u].warning);
            s2_jit_result_free(&res[u]);
        }
    }
    printf("built %d arch(es) in %.1f ms: %d unit(s) built, %d from the cache, %d kernels, ",
           n_arch, now_ms() - t0, t.built, t.hits, t.kernels);
    if (t.spill_bytes)
        printf("spills in %s\n", t.spilled);
    else
        printf("no spills\n");
    printf("cache: %s\n", cache);
    if (t.spill_bytes) {
        fprintf(stderr, "%s: %d bytes of register spills in the kernels above; next: try "
                "another tile (s2lora tune %s --arch ARCH --build-only shows which build "
                "clean)\n", prog, t.spill_bytes, o.spec[0]);
        return 1;
    }
    printf("next: s2lora tune %s (on a GPU: the fastest tile), or s2lora bench attn %s\n",
           o.spec[0], o.spec[0]);
    return 0;
}

/* ---------------------------------------------------------------- attn */
static const s2_opt attn_opts[] = {
    OPT_SETS(cli_opts),
    {.name = "in", .short_name = 'i', .kind = S2_OPT_STRING, .metavar = "IN.safetensors",
     .help = "the inputs: q, k, v (and do with --backward, cu_seqlens optional)",
     .off = offsetof(cli_opts, in), .flags = S2_OPT_REQUIRED, .complete = S2_COMPLETE_FILE},
    {.name = "out", .short_name = 'o', .kind = S2_OPT_STRING, .metavar = "OUT.safetensors",
     .help = "the outputs: o, lse (and dq, dk, dv with --backward)",
     .off = offsetof(cli_opts, out), .flags = S2_OPT_REQUIRED, .complete = S2_COMPLETE_FILE},
    {.name = "backward", .kind = S2_OPT_FLAG, .help = "run the backward too (needs do)",
     .off = offsetof(cli_opts, backward)},
    OPT_CACHE_DIR(cli_opts),
    {.name = "no-cache", .kind = S2_OPT_FLAG, .help = "build the kernels, read and write no cache",
     .off = offsetof(cli_opts, no_cache)},
    OPT_TILE(cli_opts),
    {.name = "spec", .kind = S2_OPT_STRING, .metavar = "SPEC", .flags = S2_OPT_TO_POS,
     .alias_of = "SPEC", .complete = S2_COMPLETE_SPEC},
};

const s2_cmd s2_cmd_attn = {
    .name = "attn",
    .usage = "SPEC [--set KEY=VALUE]... --in IN.safetensors --out OUT.safetensors\n"
             "                   [--backward] [--cache-dir DIR] [--no-cache] [--tile K=V,...]",
    .about = "Runs SPEC's S²-Attn kernels on the GPU on tensors from a file.\n"
             "IN holds q [T,H,d], k [T,Hkv,d], v [T,Hkv,d] in the spec's dtype, optionally\n"
             "cu_seqlens [B+1] int32 (absent: one sequence of T tokens), and with\n"
             "--backward do [T,H,d]. OUT receives o [T,H,d], lse [H,T] float32 and, with\n"
             "--backward, dq [T,H,d], dk [T,Hkv,d], dv [T,Hkv,d].\n",
    .epilog = "Exit status 3 when there is no CUDA device.\n",
    .opts = attn_opts, .n_opts = sizeof attn_opts / sizeof attn_opts[0],
    S2_POS_SPEC(cli_opts, spec, n_spec, 1),
};

/* Checks that tensor name exists with dtype and shape dims[0..ndim). */
static s2_status want_tensor(const s2_st_file *f, const char *path, const char *name,
                             s2_st_dtype dt, int ndim, const int64_t *dims, const char *why,
                             const s2_tensor **out, s2_error *err)
{
    const s2_tensor *t = s2_st_find(f, name);
    char got[96], want[96];
    s2_tensor w = {.ndim = ndim};
    for (int i = 0; i < ndim; i++)
        w.shape[i] = dims[i];
    s2_tensor_shape_str(&w, want, sizeof want);
    if (!t)
        return s2_error_set(err, S2_ERR_INVALID, "%s: missing tensor '%s' %s %s (%s)", path, name,
                            s2_st_dtype_name(dt), want, why);
    if (t->dtype != dt)
        return s2_error_set(err, S2_ERR_INVALID, "%s: tensor '%s' is %s; the spec needs %s", path,
                            name, s2_st_dtype_name(t->dtype), s2_st_dtype_name(dt));
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = t->shape[i] == dims[i];
    if (!same)
        return s2_error_set(err, S2_ERR_INVALID, "%s: tensor '%s' has shape %s; expected %s (%s)",
                            path, name, s2_tensor_shape_str(t, got, sizeof got), want, why);
    *out = t;
    return S2_OK;
}

typedef struct attn_io {
    const s2_tensor *q, *k, *v, *cu, *dout;
    int T, B;
    int32_t *cu_host; /* [B+1], owned */
} attn_io;

/* The inputs against the spec's attention (its heads, head dim and dtype, from the API). */
static s2_status check_inputs(const s2lora_spec_info *spec, const s2_st_file *f, const char *path,
                              int backward, attn_io *io, s2_error *err)
{
    const int H = spec->num_heads, Hkv = spec->num_kv_heads, d = spec->head_dim;
    s2_st_dtype dt = spec->dtype == 0 ? S2_ST_BF16 : S2_ST_F16;
    const s2_tensor *q = s2_st_find(f, "q");
    if (!q)
        return s2_error_set(err, S2_ERR_INVALID, "%s: missing tensor 'q' %s [T, %d, %d]", path,
                            s2_st_dtype_name(dt), H, d);
    if (q->ndim != 3 || q->shape[0] < 1 || q->shape[0] > INT_MAX / 2) {
        char got[96];
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: tensor 'q' has shape %s; expected [T, %d, %d] with T >= 1", path,
                            s2_tensor_shape_str(q, got, sizeof got), H, d);
    }
    io->T = (int)q->shape[0];
    int64_t qd[3] = {io->T, H, d}, kd[3] = {io->T, Hkv, d};
    s2_status st = want_tensor(f, path, "q", dt, 3, qd, "[T, num_heads, head_dim] of the spec", &io->q, err);
    if (!st)
        st = want_tensor(f, path, "k", dt, 3, kd, "[T, num_kv_heads, head_dim] of the spec", &io->k, err);
    if (!st)
        st = want_tensor(f, path, "v", dt, 3, kd, "[T, num_kv_heads, head_dim] of the spec", &io->v, err);
    if (!st && backward)
        st = want_tensor(f, path, "do", dt, 3, qd, "the gradient of o, needed by --backward", &io->dout, err);
    if (st)
        return st;
    const s2_tensor *cu = s2_st_find(f, "cu_seqlens");
    if (cu && (cu->dtype != S2_ST_I32 || cu->ndim != 1 || cu->shape[0] < 2)) {
        char got[96];
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: tensor 'cu_seqlens' is %s %s; expected I32 [B+1] with B >= 1",
                            path, s2_st_dtype_name(cu->dtype), s2_tensor_shape_str(cu, got, sizeof got));
    }
    io->B = cu ? (int)cu->shape[0] - 1 : 1;
    io->cu_host = malloc(sizeof(int32_t) * (io->B + 1));
    if (!io->cu_host)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    if (cu)
        memcpy(io->cu_host, cu->data, sizeof(int32_t) * (io->B + 1));
    else
        io->cu_host[0] = 0, io->cu_host[1] = io->T;
    return S2_OK;
}

/* A failed call of the public API: its message (after what, when given) and the exit code. */
static int api_fail(const s2lora_ctx *c, s2lora_status st, const char *what)
{
    fprintf(stderr, "%s: %s%s%s\n", prog, what ? what : "", what ? ": " : "", s2lora_errmsg(c));
    return st == S2LORA_ERR_NO_DEVICE ? EXIT_NO_DEVICE : 1;
}

/* --tile's text against the device's arch, refused with the keys given and the valid ones
 * before the build (s2lora_attn_create_tile checks it too, without this context). */
static s2_status check_tile(const char *tile, const char *arch, s2_error *err)
{
    s2_attn_tile t;
    s2_status st = s2_plan_check_tile_text(tile, arch, err);
    if (!st)
        st = s2_plan_parse_tile(tile, &t, err);
    if (st)
        tile_error_context(tile, err);
    return st;
}

/* Device buffers of one attn run, on the run's context. */
typedef struct attn_dev {
    s2lora_ctx *c;
    void *q, *k, *v, *o, *dout, *dq, *dk, *dv, *ws;
    float *lse;
    int32_t *cu;
} attn_dev;

static void attn_dev_free(attn_dev *d)
{
    void *p[] = {d->q, d->k, d->v, d->o, d->dout, d->dq, d->dk, d->dv, d->lse, d->ws, d->cu};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        s2lora_device_free(d->c, p[i]);
}

/* n bytes of device memory, src copied in when not NULL. */
static s2lora_status dev_copy_in(s2lora_ctx *c, void **dst, const void *src, size_t n)
{
    s2lora_status st = s2lora_device_alloc(c, n, dst);
    if (!st && src)
        st = s2lora_memcpy_to_device(c, *dst, src, n);
    return st;
}

/* The run on device 0 through the public API: the spec loaded again on the device's context
 * (the one it was checked on has none), the kernels built or loaded with --tile's tile or the
 * tuned one for the longest sequence, the forward (and backward), the outputs to the host.
 * Returns the exit code; prints the failure. */
static int run_attn(const cli_opts *o, const char *const *sets, const s2lora_options *opt,
                    const s2lora_spec_info *checked, const attn_io *io, int max_seqlen,
                    s2_tensor *outs, int *n_out)
{
    s2lora_ctx *c = NULL;
    s2lora_spec *spec = NULL;
    s2lora_attn *a = NULL;
    attn_dev dv = {0};
    const char *what = NULL; /* the buffer a failure was about */
    int rc = 0;
    s2lora_spec_info info;
    s2lora_status st = s2lora_open(&c, 0, opt);
    dv.c = c;
    if (!st && o->no_cache)
        st = s2lora_set_use_cache(c, 0);
    if (!st)
        st = s2lora_spec_load(c, o->spec[0], sets, o->n_sets, &spec);
    if (!st)
        st = s2lora_spec_get_info(spec, &info);
    if (st) {
        rc = api_fail(c, st, NULL);
        goto done;
    }
    if (strcmp(info.hash, checked->hash)) { /* the inputs were checked against other shapes */
        fprintf(stderr, "%s: %s: the spec changed while s2lora attn ran (sha256 %.12s, then "
                "%.12s); run it again\n", prog, o->spec[0], checked->hash, info.hash);
        rc = 1;
        goto done;
    }
    if (o->tile) {
        s2_error err = {0};
        if (check_tile(o->tile, s2lora_device_arch(c), &err)) {
            rc = fail(&err);
            goto done;
        }
        st = s2lora_attn_create_tile(c, spec, o->tile, &a);
    } else { /* the tuned tile for this GPU and the longest sequence, else the default */
        st = s2lora_attn_create_seqlen(c, spec, max_seqlen, &a);
        if (!st) { /* s2lora_attn_tile: "TILE (WHY)", the tile without spaces */
            const char *t = s2lora_attn_tile(a), *why = strstr(t, " (");
            size_t n = why ? strlen(why + 2) : 0;
            if (n && why[1 + n] == ')')
                fprintf(stderr, "%s: tile: %.*s\n", prog, (int)n - 1, why + 2);
            else
                fprintf(stderr, "%s: tile: %s\n", prog, t);
        }
    }
    /* the build's warnings: kernel cache entries found damaged and rebuilt, one a line */
    for (const char *w = s2lora_warnings(c); *w;) {
        size_t n = strcspn(w, "\n");
        fprintf(stderr, "%s: kernel cache: %.*s\n", prog, (int)n, w);
        w += n + (w[n] == '\n');
    }
    if (st) {
        rc = api_fail(c, st, NULL);
        goto done;
    }
    const int H = info.num_heads, Hkv = info.num_kv_heads, d = info.head_dim;
    const size_t nq = (size_t)io->T * H * d * 2, nk = (size_t)io->T * Hkv * d * 2;
    const size_t nl = (size_t)H * io->T * sizeof(float);
    if (!st && (st = dev_copy_in(c, &dv.q, io->q->data, nq)))
        what = "q";
    if (!st && (st = dev_copy_in(c, &dv.k, io->k->data, nk)))
        what = "k";
    if (!st && (st = dev_copy_in(c, &dv.v, io->v->data, nk)))
        what = "v";
    if (!st && (st = dev_copy_in(c, (void **)&dv.cu, io->cu_host, sizeof(int32_t) * (io->B + 1))))
        what = "cu_seqlens";
    if (!st && (st = dev_copy_in(c, &dv.o, NULL, nq)))
        what = "o";
    if (!st && (st = dev_copy_in(c, (void **)&dv.lse, NULL, nl)))
        what = "lse";
    s2lora_attn_args args = S2LORA_ATTN_ARGS_INIT;
    args.tokens = io->T, args.batch = io->B, args.max_seqlen = max_seqlen;
    args.cu_seqlens = dv.cu, args.cu_seqlens_host = io->cu_host;
    args.q = dv.q, args.k = dv.k, args.v = dv.v, args.o = dv.o, args.lse = dv.lse;
    if (!st)
        st = s2lora_attn_forward(a, &args, NULL);
    if (!st && o->backward) {
        const size_t nws = s2lora_attn_workspace_bytes(a, io->T);
        if ((st = dev_copy_in(c, &dv.dout, io->dout->data, nq)))
            what = "do";
        if (!st && (st = dev_copy_in(c, &dv.ws, NULL, nws)))
            what = "backward workspace";
        if (!st && (st = dev_copy_in(c, &dv.dq, NULL, nq)))
            what = "dq";
        if (!st && (st = dev_copy_in(c, &dv.dk, NULL, nk)))
            what = "dk";
        if (!st && (st = dev_copy_in(c, &dv.dv, NULL, nk)))
            what = "dv";
        s2lora_attn_grads g = S2LORA_ATTN_GRADS_INIT;
        g.dout = dv.dout, g.dq = dv.dq, g.dk = dv.dk, g.dv = dv.dv;
        g.workspace = dv.ws, g.workspace_bytes = nws;
        if (!st)
            st = s2lora_attn_backward(a, &args, &g, NULL);
    }
    if (!st)
        st = s2lora_synchronize(c, NULL);
    s2_st_dtype dt = info.dtype == 0 ? S2_ST_BF16 : S2_ST_F16;
    struct { const char *name; void *dev; size_t n; s2_st_dtype dt; int64_t s0, s1, s2; int nd; } spec_out[] = {
        {"o", dv.o, nq, dt, io->T, H, d, 3},
        {"lse", dv.lse, nl, S2_ST_F32, H, io->T, 0, 2},
        {"dq", dv.dq, nq, dt, io->T, H, d, 3},
        {"dk", dv.dk, nk, dt, io->T, Hkv, d, 3},
        {"dv", dv.dv, nk, dt, io->T, Hkv, d, 3},
    };
    int want = o->backward ? 5 : 2;
    for (int i = 0; i < want && !st; i++) {
        s2_tensor *t = &outs[i];
        t->name = (char *)spec_out[i].name;
        t->dtype = spec_out[i].dt;
        t->ndim = spec_out[i].nd;
        t->shape[0] = spec_out[i].s0, t->shape[1] = spec_out[i].s1, t->shape[2] = spec_out[i].s2;
        t->nbytes = spec_out[i].n;
        t->data = malloc(t->nbytes ? t->nbytes : 1);
        if (!t->data) {
            fprintf(stderr, "%s: out of memory for %s\n", prog, t->name);
            rc = 1;
            break;
        }
        *n_out = i + 1;
        if ((st = s2lora_memcpy_to_host(c, t->data, spec_out[i].dev, t->nbytes)))
            what = t->name;
    }
    if (st)
        rc = api_fail(c, st, what);
done:
    attn_dev_free(&dv);
    s2lora_attn_free(a);
    s2lora_spec_free(spec);
    s2lora_close(c);
    return rc;
}

int s2_cli_attn(const char *p, int argc, char **argv)
{
    cli_opts o = {0};
    s2_opts_result r;
    int rc;
    if (!s2_opts_run(&s2_cmd_attn, argc, argv, &o, &r, &rc))
        return rc;
    const char *sets[S2_CLI_MAX_SETS];
    for (int i = 0; i < o.n_sets; i++)
        sets[i] = o.sets[i].text;
    s2lora_options opt = S2LORA_OPTIONS_INIT;
    opt.cache_dir = o.cache_dir;
    s2_error err = {0};
    s2lora_ctx *none = NULL;
    s2lora_spec *spec = NULL;
    s2lora_spec_info info;
    s2_st_file f = {0};
    attn_io io = {0};
    s2_tensor outs[5];
    int n_out = 0;
    memset(outs, 0, sizeof outs);
    rc = 0;
    /* the spec and the inputs are checked on a context without a device, before any device
     * work (a machine without a GPU still says what is wrong with them) */
    s2lora_status as = s2lora_open(&none, -1, &opt);
    if (!as)
        as = s2lora_spec_load(none, o.spec[0], sets, o.n_sets, &spec);
    if (!as)
        as = s2lora_spec_get_info(spec, &info);
    if (as)
        rc = api_fail(none, as, NULL);
    s2_status st = S2_OK;
    if (!rc)
        st = s2_st_read(o.in, &f, &err);
    if (!rc && !st)
        st = check_inputs(&info, &f, o.in, o.backward, &io, &err);
    s2_attn_batch bt = {0};
    if (!rc && !st) { /* the boundaries are checked before any device work */
        st = s2_attn_batch_init(&bt, io.cu_host, io.B, io.T, "cu_seqlens", &err);
        if (st)
            s2_error_prefix(&err, "%s", o.in);
    }
    if (st)
        rc = fail(&err);
    if (!rc)
        rc = run_attn(&o, sets, &opt, &info, &io, bt.max_seqlen, outs, &n_out);
    if (!rc) {
        const char *mk[] = {"s2lora.spec", "s2lora.spec_sha256"};
        const char *mv[] = {info.name, info.hash};
        if (s2_st_write(o.out, outs, n_out, mk, mv, 2, &err))
            rc = fail(&err);
    }
    for (int i = 0; i < n_out; i++)
        free(outs[i].data);
    free(io.cu_host);
    s2_st_close(&f);
    s2lora_spec_free(spec);
    s2lora_close(none);
    if (!rc)
        fprintf(stderr, "%s: wrote %d tensors to %s\n", prog, n_out, o.out);
    return rc;
}

/* ---------------------------------------------------------------- bench */

/* bench attn's arguments: the library's options and the flags that only shape them. */
typedef struct bench_args {
    s2_bench_opts o;
    int reps, no_peers;
} bench_args;

#define BENCH_MAX_REPS 100000

static const s2_opt bench_attn_opts[] = {
    OPT_SETS_AT(bench_args, o.sets, o.n_sets),
    {.name = "seqlens", .short_name = 's', .kind = S2_OPT_LIST, .metavar = "N[,N]...",
     .help = "sequence lengths (default: each spec's context_length). The spec is reloaded "
             "with context_length=N: a group_ratio spec gets G = floor(N * ratio) and S = G/2 "
             "for that N; a spec that gives group_size keeps its G (and S)",
     .off = offsetof(bench_args, o.seqlens), .lo = 1, .hi = INT_MAX / 2,
     .max_count = S2_BENCH_MAX_SEQLENS, .count_off = offsetof(bench_args, o.n_seqlens)},
    {.name = "reps", .kind = S2_OPT_INT, .metavar = "N",
     .help = "timed runs (default: 20 forward, 10 forward+backward)",
     .off = offsetof(bench_args, reps), .lo = 1, .hi = BENCH_MAX_REPS},
    {.name = "warmup", .kind = S2_OPT_INT, .metavar = "N",
     .help = "untimed runs before each timing (default 5)", .off = offsetof(bench_args, o.warmup),
     .lo = 0, .hi = BENCH_MAX_REPS},
    {.name = "seed", .kind = S2_OPT_U64, .metavar = "N",
     .help = "seed of the inputs (default: from the clock; printed)",
     .off = offsetof(bench_args, o.seed), .lo = 1},
    {.name = "peers", .kind = S2_OPT_STRING, .metavar = "PATH",
     .help = "the peers script (default bench/peers/attn_peers.py, from the current directory); "
             "it runs under python3 with torch and CUDA; if one is missing: one warning, and no "
             "peer rows",
     .off = offsetof(bench_args, o.peers), .complete = S2_COMPLETE_FILE},
    {.name = "no-peers", .kind = S2_OPT_FLAG, .help = "time s2lora alone",
     .off = offsetof(bench_args, no_peers)},
    {.name = "peer-impls", .kind = S2_OPT_STRING, .metavar = "LIST",
     .help = "run only these peers, a comma-separated subset of " S2_BENCH_PEER_IMPLS
             " (default: all; the slow ones cost minutes at 32k and more)",
     .off = offsetof(bench_args, o.peer_impls)},
    {.name = "no-gemm", .kind = S2_OPT_FLAG,
     .help = "skip the card's dense bf16 GEMM rate timed before the cases (the JSON's "
             "gemm_bf16_tflops and the *_frac_of_gemm fields are then null)",
     .off = offsetof(bench_args, o.no_gemm)},
    {.name = "csv", .kind = S2_OPT_STRING, .metavar = "FILE",
     .help = "write the rows as CSV (whole, atomically, after the sweep)",
     .off = offsetof(bench_args, o.csv), .complete = S2_COMPLETE_FILE},
    {.name = "json", .kind = S2_OPT_STRING, .metavar = "FILE",
     .help = "write the rows as JSON (likewise)", .off = offsetof(bench_args, o.json),
     .complete = S2_COMPLETE_FILE},
    OPT_CACHE_DIR_AT(bench_args, o.cache_dir),
    {.name = "tile", .kind = S2_OPT_STRING, .metavar = "K=V,...",
     .help = "tuning parameters (see 's2lora build --help'): one s2lora row per tile "
             "(s2lora#1, #2, ...), the fastest compared",
     .off = offsetof(bench_args, o.tiles), .max_count = S2_BENCH_MAX_TILES,
     .count_off = offsetof(bench_args, o.n_tiles)},
};

const s2_cmd s2_cmd_bench_attn = {
    .name = "bench attn",
    .usage = "SPEC... [--set KEY=VALUE]... [--seqlens N[,N]...]\n"
             "                         [--reps N] [--warmup N] [--seed N]\n"
             "                         [--peers PATH | --no-peers] [--peer-impls LIST]\n"
             "                         [--no-gemm] [--csv FILE] [--json FILE]\n"
             "                         [--cache-dir DIR] [--tile K=V,...]...",
    .about =
        "Times the S²-Attn kernels of each SPEC on the GPU, forward and forward+backward,\n"
        "and the PyTorch peers on the same inputs. One case per SPEC and N: one sequence\n"
        "(B=1) of N tokens, fresh N(0,1) inputs in the spec's dtype, our outputs poisoned\n"
        "with NaN before the first run and checked for inf/NaN after the timing.\n",
    .epilog =
        "fwd_ms and fb_ms are medians of per-run CUDA event times after the warm-up; fb\n"
        "is a forward then a backward in one timed region. TF/s count S² FLOPs as the\n"
        "peers file does: forward 2*N*G*d*H (G capped at N), forward+backward 3.5x that;\n"
        "bwd_TFs is the backward read from the two medians (fb_ms - fwd_ms, at 2.5x the\n"
        "forward's FLOPs; the CSV's and JSON's bwd_ms, bwd_tflops), an estimate, not a\n"
        "region timed on its own;\n"
        "a short last group is counted as a full one, so the numbers compare with the\n"
        "peers file rather than count exact work. peak_GiB: for s2lora, the bytes this\n"
        "bench allocates for one layer's fwd+bwd (q, k, v, do, o, dq, dk, dv, lse and the\n"
        "delta workspace; the kernels allocate nothing, and the note says so if the\n"
        "device's free memory shrank by more); for a peer, torch.cuda.max_memory_allocated\n"
        "during one fwd+bwd less what was allocated before its inputs. rel_err_vs_ours:\n"
        "relative L2 error of the peer's o against ours, for peers that compute our shift\n"
        "mode (n/a otherwise). After each case, one line gives the fastest peer's fwd+bwd\n"
        "time and ours as a multiple of it.\n"
        "Before the cases, one line gives the card's measured rate: a dense bf16 GEMM\n"
        "8192^3 through cuBLAS (fp32 accumulate, 2*8192^3 FLOPs, fresh random inputs,\n"
        "median of 30 after 10 untimed; its buffers are freed before the cases). The CSV's\n"
        "last columns and the JSON's fwd_frac_of_gemm / fb_frac_of_gemm give each TF/s as a\n"
        "fraction of it, the JSON's gemm_bf16_tflops the rate itself; they are empty (null)\n"
        "with --no-gemm or when it could not be measured (cuBLAS missing, say: one warning\n"
        "says why, and the cases run).\n"
        "Exit status 1 if a row of ours failed (inf/NaN left in o, dq, dk or dv, or an\n"
        "error), 3 when there is no CUDA device (after the arguments and specs are checked).\n",
    .opts = bench_attn_opts, .n_opts = sizeof bench_attn_opts / sizeof bench_attn_opts[0],
    S2_POS_SPEC(bench_args, o.specs, o.n_specs, S2_BENCH_MAX_SPECS),
};

/* Prints one case's rows; returns 1 if our row failed. */
static int print_bench_case(const s2_bench_ctx *ctx, const s2_bench_case *c,
                            const s2_bench_row *rows, int n)
{
    s2_buf b = {0};
    s2_bench_case_title(&b, c);
    s2_bench_table_header(&b);
    for (int i = 0; i < n; i++)
        s2_bench_table_row(&b, &rows[i]);
    s2_bench_case_summary(&b, rows, n);
    fputs(b.data ? b.data : "", stdout);
    fflush(stdout);
    s2_buf_free(&b);
    if (ctx->warn[0])
        fprintf(stderr, "%s: warning: %s\n", prog, ctx->warn);
    return n > 0 && rows[0].failed;
}

static s2_status write_bench_files(const s2_bench_opts *o, const char *device, double gemm,
                                   const s2_bench_rows *r, s2_error *err)
{
    s2_status st = S2_OK;
    if (o->csv) {
        s2_buf b = {0};
        s2_bench_csv(&b, r->row, r->n, gemm);
        st = b.oom || !b.data ? s2_error_set(err, S2_ERR_NOMEM, "out of memory for the CSV")
                              : s2_write_file_atomic(o->csv, b.data, b.len, err);
        s2_buf_free(&b);
    }
    if (!st && o->json) {
        char *j = s2_bench_json(r->row, r->n, device, o->seed, gemm);
        st = !j ? s2_error_set(err, S2_ERR_NOMEM, "out of memory for the JSON")
                : s2_write_file_atomic(o->json, j, strlen(j), err);
        free(j);
    }
    return st;
}

typedef struct bench_lora_args {
    int tokens[8], n_tokens, dims[8], n_dims, ranks[8], n_ranks, reps;
    const char *dtype, *csv, *json;
} bench_lora_args;

static const char *const dtype_values[] = {"bf16", "fp16", NULL};

static const s2_opt bench_lora_opts[] = {
    {.name = "tokens", .kind = S2_OPT_LIST, .metavar = "N[,N]...",
     .help = "tokens M of the products (default 4096,16384,65536)",
     .off = offsetof(bench_lora_args, tokens), .lo = 1, .hi = INT_MAX, .max_count = 8,
     .count_off = offsetof(bench_lora_args, n_tokens)},
    {.name = "dims", .kind = S2_OPT_LIST, .metavar = "N[,N]...",
     .help = "in = out of the projection (default 4096,5120,8192)",
     .off = offsetof(bench_lora_args, dims), .lo = 1, .hi = INT_MAX, .max_count = 8,
     .count_off = offsetof(bench_lora_args, n_dims)},
    {.name = "ranks", .kind = S2_OPT_LIST, .metavar = "N[,N]...",
     .help = "LoRA ranks (default 8,16,64)", .off = offsetof(bench_lora_args, ranks), .lo = 1,
     .hi = INT_MAX, .max_count = 8, .count_off = offsetof(bench_lora_args, n_ranks)},
    {.name = "dtype", .kind = S2_OPT_ENUM, .help = "storage type (default bf16)",
     .values = dtype_values, .off = offsetof(bench_lora_args, dtype)},
    {.name = "reps", .kind = S2_OPT_INT, .metavar = "N", .help = "timed runs (default 20)",
     .off = offsetof(bench_lora_args, reps), .lo = 1, .hi = BENCH_MAX_REPS},
    {.name = "csv", .kind = S2_OPT_STRING, .metavar = "FILE",
     .help = "write the rows as CSV (whole, atomically, after the sweep)",
     .off = offsetof(bench_lora_args, csv), .complete = S2_COMPLETE_FILE},
    {.name = "json", .kind = S2_OPT_STRING, .metavar = "FILE",
     .help = "write the rows as one JSON object (rows with the CSV's field names; likewise)",
     .off = offsetof(bench_lora_args, json), .complete = S2_COMPLETE_FILE},
    {.name = "M", .kind = S2_OPT_LIST, .metavar = "N[,N]...", .alias_of = "tokens"},
};

const s2_cmd s2_cmd_bench_lora = {
    .name = "bench lora",
    .usage = "[--tokens LIST] [--dims LIST] [--ranks LIST] [--dtype bf16|fp16]\n"
             "                         [--reps N] [--csv FILE] [--json FILE]",
    .about = "Times the LoRA linear (runtime/ops/lora.h: cuBLAS GEMMs on the augmented layout)\n"
             "against the frozen base GEMM on the same buffers, for one projection of in = out =\n"
             "dim: forward (y = x W^T) and forward+backward (the backward of the base is dx = dy\n"
             "W: W is frozen). Overhead in percent; 20 timed runs after 5 warm-ups (medians).\n"
             "The PyTorch peers are bench/peers/lora_peers.py (run by bench/gpu-check.sh).\n",
    .epilog = "Exit status 1 if a case failed, 3 when there is no CUDA device.\n",
    .opts = bench_lora_opts, .n_opts = sizeof bench_lora_opts / sizeof bench_lora_opts[0],
};

/* The CSV's and the JSON's fields of a bench lora row, in order: one list for both. */
static const char *const lora_fields[] = {"M", "dim", "r", "base_fwd_ms", "lora_fwd_ms",
                                          "fwd_overhead_pct", "base_fb_ms", "lora_fb_ms",
                                          "fb_overhead_pct", "failed"};
#define N_LORA_FIELDS 10

static void lora_values(const s2_bench_lora_row *r, double v[N_LORA_FIELDS])
{
    const double fo = s2_bench_lora_overhead(r->base_fwd_ms, r->lora_fwd_ms);
    const double bo = s2_bench_lora_overhead(r->base_fb_ms, r->lora_fb_ms);
    const double x[N_LORA_FIELDS] = {r->M, r->dim, r->r, r->base_fwd_ms, r->lora_fwd_ms, fo,
                                     r->base_fb_ms, r->lora_fb_ms, bo, r->failed};
    memcpy(v, x, sizeof x);
}

void s2_cli_bench_lora_csv(const s2_bench_lora_row *rows, int n, s2_buf *b)
{
    for (int f = 0; f < N_LORA_FIELDS; f++)
        s2_buf_printf(b, "%s%s", f ? "," : "", lora_fields[f]);
    s2_buf_printf(b, "\n");
    for (int i = 0; i < n; i++) {
        double v[N_LORA_FIELDS];
        lora_values(&rows[i], v);
        s2_buf_printf(b, "%d,%d,%d,%.4f,%.4f,%.2f,%.4f,%.4f,%.2f,%d\n", (int)v[0], (int)v[1],
                      (int)v[2], v[3], v[4], v[5], v[6], v[7], v[8], (int)v[9]);
    }
}

char *s2_cli_bench_lora_json(const s2_bench_lora_row *rows, int n, const char *device,
                             const char *dtype, int reps, int errors)
{
    json_t *arr = json_array();
    for (int i = 0; arr && i < n; i++) {
        double v[N_LORA_FIELDS];
        lora_values(&rows[i], v);
        json_t *row = json_object();
        for (int f = 0; row && f < N_LORA_FIELDS; f++) /* integers as integers */
            json_object_set_new(row, lora_fields[f],
                                f < 3 || f == 9 ? json_integer((json_int_t)v[f])
                                                : json_real(v[f]));
        json_array_append_new(arr, row);
    }
    json_t *doc = arr ? json_pack("{s:s, s:s, s:s, s:i, s:i, s:o}", "bench", "lora", "device",
                                  device, "dtype", dtype, "reps", reps, "errors", errors, "rows",
                                  arr)
                      : NULL;
    char *text = doc ? json_dumps(doc, JSON_INDENT(1)) : NULL;
    json_decref(doc);
    return text;
}

/* An output file's directory must take it: found out before the device, not after the sweep. */
static int check_out_dir(const s2_cmd *c, const char *opt, const char *path)
{
    if (!path)
        return 0;
    char *dup = strdup(path);
    const char *slash = dup ? strrchr(dup, '/') : NULL;
    const char *dir = !dup ? "." : !slash ? "." : slash == dup ? "/" : (*strrchr(dup, '/') = 0, dup);
    int bad = access(dir, W_OK) != 0;
    if (bad)
        fprintf(stderr, "%s: %s: --%s %s: cannot write in directory '%s': %s\n", prog, c->name,
                opt, path, dir, strerror(errno));
    free(dup);
    return bad;
}

static int cmd_bench_lora(int argc, char **argv)
{
    bench_lora_args a = {.tokens = {4096, 16384, 65536}, .n_tokens = 3,
                         .dims = {4096, 5120, 8192}, .n_dims = 3, .ranks = {8, 16, 64},
                         .n_ranks = 3, .reps = 20, .dtype = "bf16"};
    s2_opts_result res;
    int rc;
    if (!s2_opts_run(&s2_cmd_bench_lora, argc, argv, &a, &res, &rc))
        return rc;
    const s2_dtype dt = !strcmp(a.dtype, "bf16") ? S2_DTYPE_BF16 : S2_DTYPE_FP16;
    if (check_out_dir(&s2_cmd_bench_lora, "csv", a.csv) ||
        check_out_dir(&s2_cmd_bench_lora, "json", a.json))
        return 1;
    s2_error err = {0};
    s2_rt rt;
    if (s2_rt_open(&rt, 0, &err))
        return fail(&err);
    s2_cli_show_cache_warnings(&rt, prog);
    s2_lora_ctx *ctx = NULL;
    if (s2_lora_open(&ctx, &rt, NULL, &err))
        return fail(&err);
    printf("bench lora: %s (%s), %s, %d timed runs (medians)\n", rt.name, rt.arch,
           s2_dtype_name(dt), a.reps);
    printf("%6s %5s %3s %12s %12s %7s %12s %12s %7s\n", "M", "dim", "r", "base_fwd_ms",
           "lora_fwd_ms", "fwd_%", "base_fb_ms", "lora_fb_ms", "fb_%");
    s2_bench_lora_row *rows = calloc((size_t)a.n_tokens * a.n_dims * a.n_ranks, sizeof *rows);
    if (!rows) {
        s2_lora_close(ctx);
        s2_error_set(&err, S2_ERR_NOMEM, "out of memory");
        return fail(&err);
    }
    int failed = 0, errors = 0, n_rows = 0; /* errors: cases that ended in an error */
    for (int i = 0; i < a.n_tokens; i++)
        for (int j = 0; j < a.n_dims; j++)
            for (int k = 0; k < a.n_ranks; k++) {
                s2_bench_lora_row r;
                const int M = a.tokens[i], dim = a.dims[j], rank = a.ranks[k];
                s2_lora_dims tuned = s2_bench_lora_dims(dt, M, dim, rank);
                s2_jit_opts jo = {0};
                s2_tune_lora_select_cached(&jo, rt.name, rt.arch, &tuned, NULL, 0);
                if (s2_bench_lora_case(ctx, dt, M, dim, rank, 5, a.reps, &tuned, &r, &err)) {
                    printf("%6d %5d %3d ERROR %s\n", M, dim, rank, err.msg);
                    s2_error_clear(&err);
                    failed++, errors++;
                    continue;
                }
                double fo = s2_bench_lora_overhead(r.base_fwd_ms, r.lora_fwd_ms);
                double bo = s2_bench_lora_overhead(r.base_fb_ms, r.lora_fb_ms);
                char tn[48] = "";
                if (r.tuned)
                    snprintf(tn, sizeof tn, " (%d products tuned)", r.tuned);
                printf("%6d %5d %3d %12.3f %12.3f %6.1f%% %12.3f %12.3f %6.1f%% %s%s\n", r.M,
                       r.dim, r.r, r.base_fwd_ms, r.lora_fwd_ms, fo, r.base_fb_ms, r.lora_fb_ms,
                       bo, r.failed ? r.note : "", tn);
                rows[n_rows++] = r;
                failed += r.failed;
            }
    s2_lora_close(ctx);
    s2_status st = S2_OK;
    if (a.csv) {
        s2_buf out = {0};
        s2_cli_bench_lora_csv(rows, n_rows, &out);
        st = out.oom || !out.data ? s2_error_set(&err, S2_ERR_NOMEM, "out of memory for the CSV")
                                  : s2_write_file_atomic(a.csv, out.data, out.len, &err);
        s2_buf_free(&out);
    }
    if (!st && a.json) {
        char *text = s2_cli_bench_lora_json(rows, n_rows, rt.name, s2_dtype_name(dt), a.reps,
                                            errors);
        st = !text ? s2_error_set(&err, S2_ERR_NOMEM, "out of memory for the JSON")
                   : s2_write_file_atomic(a.json, text, strlen(text), &err);
        free(text);
    }
    free(rows);
    if (st)
        return fail(&err);
    return failed ? 1 : 0;
}

static int bench_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "%s: bench: ", prog);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nusage: %s bench attn SPEC... [options]\n       %s bench lora [options]\n"
            "Try '%s bench attn --help' or '%s bench lora --help'.\n", prog, prog, prog, prog);
    return 2;
}

int s2_cli_bench(const char *p, int argc, char **argv)
{
    if (argc >= 1 && !strcmp(argv[0], "lora"))
        return cmd_bench_lora(argc - 1, argv + 1);
    if (argc >= 1 && (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h"))) {
        s2_buf b = {0};
        s2_opts_help(&s2_cmd_bench_attn, &b);
        fputs(b.data ? b.data : "", stdout);
        s2_buf_free(&b);
        printf("\nAlso: s2lora bench lora (see 's2lora bench lora --help').\n");
        return 0;
    }
    if (argc < 1)
        return bench_usage("missing what to bench%s (valid: attn, lora)", "");
    if (strcmp(argv[0], "attn"))
        return bench_usage("unknown benchmark '%s' (valid: attn, lora)", argv[0]);
    bench_args a = {0};
    s2_bench_opts_default(&a.o);
    s2_opts_result res;
    int rc;
    if (!s2_opts_run(&s2_cmd_bench_attn, argc - 1, argv + 1, &a, &res, &rc))
        return rc;
    s2_bench_opts *o = &a.o;
    if (a.reps)
        o->reps_fwd = o->reps_fb = a.reps;
    o->peers_given = s2_opts_given(&s2_cmd_bench_attn, &res, "peers");
    if (a.no_peers && o->peers_given)
        return s2_opts_usage_error(&s2_cmd_bench_attn, "--peers and --no-peers exclude each "
                                   "other");
    if (a.no_peers && o->peer_impls)
        return s2_opts_usage_error(&s2_cmd_bench_attn, "--peer-impls and --no-peers exclude "
                                   "each other");
    if (o->peer_impls) {
        char why[256];
        if (!s2_bench_peer_impls_valid(o->peer_impls, why, sizeof why))
            return s2_opts_usage_error(&s2_cmd_bench_attn, "--peer-impls: %s", why);
    }
    if (a.no_peers)
        o->peers = NULL;
    for (int i = 0; i < o->n_tiles; i++) { /* each tile's keys and values, before any spec */
        s2_attn_tile t = s2_plan_default_tile("sm_90a", 128);
        s2_error e = {0};
        if (s2_plan_parse_tile(o->tiles[i], &t, &e)) {
            tile_error_context(o->tiles[i], &e);
            rc = s2_opts_usage_error(&s2_cmd_bench_attn, "%s", e.msg);
            s2_error_clear(&e);
            return rc;
        }
    }
    s2_error err = {0};
    s2_bench_case *cases = NULL;
    int n_cases = 0;
    if (s2_bench_prepare(o, &cases, &n_cases, &err))
        return fail(&err);
    s2_bench_ctx ctx = {.opts = o};
    if (s2_rt_open(&ctx.rt, 0, &err)) {
        free(cases);
        return fail(&err);
    }
    s2_cli_show_cache_warnings(&ctx.rt, prog);
    printf("bench attn: %s (%s, %d SMs), seed 0x%llx, warm-up %d, reps %d fwd / %d fwd+bwd, "
           "peers: %s\n", ctx.rt.name, ctx.rt.arch, ctx.rt.sm_count, (unsigned long long)o->seed,
           o->warmup, o->reps_fwd, o->reps_fb, o->peers ? o->peers : "none");
    /* The card's own rate, once, so every TF/s can be read as a share of it. Not having it
     * (cuBLAS missing, say) costs only the fractions: one warning, and the cases go on. */
    double gemm = NAN;
    if (!o->no_gemm) {
        s2_error ge = {0};
        if (s2_bench_gemm_rate(o->seed, &gemm, &ge)) {
            fprintf(stderr, "%s: warning: %s; no card rate, TF/s are not given as a fraction of "
                    "it\n", prog, ge.msg ? ge.msg : s2_status_to_string(ge.status));
            s2_error_clear(&ge);
        } else {
            printf("card: dense bf16 GEMM %d^3 (cuBLAS): %.1f TF/s; the CSV and JSON give each "
                   "TF/s below as a fraction of it\n", S2_BENCH_GEMM_DIM, gemm);
        }
        fflush(stdout);
    }
    s2_bench_rows rows = {0};
    int failed = 0;
    s2_status st = S2_OK;
    for (int i = 0; i < n_cases && !st; i++) {
        int first = rows.n;
        st = s2_bench_run_case(&ctx, &cases[i], &rows, &err);
        if (!st)
            failed += print_bench_case(&ctx, &cases[i], rows.row + first, rows.n - first);
    }
    if (!st)
        st = write_bench_files(o, ctx.rt.name, gemm, &rows, &err);
    s2_bench_rows_free(&rows);
    free(cases);
    if (st)
        return fail(&err);
    return failed ? 1 : 0;
}

/* ---------------------------------------------------------------- tune */

#define TUNE_MAX_SEQLENS 8

typedef struct tune_args {
    const char *specs[16];
    int n_specs;
    s2_spec_override sets[S2_CLI_MAX_SETS];
    int n_sets;
    const char *arch, *db_dir, *export_path, *import_path, *cache_dir;
    unsigned kernels; /* bit i: kernel_values[i] */
    unsigned units;   /* attention units */
    int lora;         /* the LoRA linears' products */
    int seqlens[TUNE_MAX_SEQLENS], n_seqlens, jobs, build_only, atomic_dq;
    double budget;
} tune_args;

static const char *const kernel_values[] = {"attn", "attn_fwd", "attn_bwd", "lora", NULL};

static const s2_opt tune_opts[] = {
    OPT_SETS(tune_args),
    {.name = "seqlens", .short_name = 's', .kind = S2_OPT_LIST, .metavar = "N[,N]...",
     .help = "tokens of the timing case, one tuning run each (default: the spec's "
             "context_length); the database keeps the best per length class",
     .off = offsetof(tune_args, seqlens), .lo = 1, .hi = INT_MAX / 2,
     .max_count = TUNE_MAX_SEQLENS, .count_off = offsetof(tune_args, n_seqlens)},
    {.name = "kernels", .kind = S2_OPT_ENUM_LIST, .metavar = "LIST",
     .help = "attn (both units), attn_fwd, attn_bwd, lora (default: all)",
     .values = kernel_values, .off = offsetof(tune_args, kernels)},
    {.name = "atomic-dq", .kind = S2_OPT_FLAG,
     .help = "also try the backward tiles that add dQ with atomics (bwd_atomic_dq=1: faster "
             "on Hopper, but dQ's bits vary from run to run within rounding); without it "
             "only tiles whose backward gives the same bits every run are candidates",
     .off = offsetof(tune_args, atomic_dq)},
    {.name = "budget", .kind = S2_OPT_DOUBLE, .metavar = "SECONDS",
     .help = "after this, no new candidate is timed (the default always is)",
     .off = offsetof(tune_args, budget), .dlo = 0, .dhi = INFINITY, .flags = S2_OPT_ABOVE_LO},
    {.name = "db", .kind = S2_OPT_STRING, .metavar = "DIR",
     .help = "the tuning database's directory (default: the kernel cache directory)",
     .off = offsetof(tune_args, db_dir), .complete = S2_COMPLETE_DIR},
    {.name = "export", .kind = S2_OPT_STRING, .metavar = "FILE",
     .help = "also write the whole database to FILE (to move it elsewhere)",
     .off = offsetof(tune_args, export_path), .complete = S2_COMPLETE_FILE},
    {.name = "import", .kind = S2_OPT_STRING, .metavar = "FILE",
     .help = "merge FILE into the database first: its lines are checked (each refused one is "
             "named with its line number and why), an imported entry never replaces one "
             "measured here, and among imported ones the newer wins",
     .off = offsetof(tune_args, import_path), .complete = S2_COMPLETE_FILE},
    OPT_CACHE_DIR(tune_args),
    OPT_JOBS(tune_args),
    {.name = "arch", .short_name = 'a', .kind = S2_OPT_ENUM, .metavar = "ARCH",
     .help = "with --build-only: the arch to build the space for", .values = arch_values,
     .off = offsetof(tune_args, arch)},
    {.name = "build-only", .kind = S2_OPT_FLAG,
     .help = "build the whole space for --arch, run nothing (needs no GPU): an A100's sm_80 can "
             "be checked before renting one; --db, --import, --export, --seqlens and --budget "
             "are refused with it",
     .off = offsetof(tune_args, build_only)},
    {.name = "seqlen", .kind = S2_OPT_LIST, .metavar = "N", .alias_of = "seqlens"},
};

const s2_cmd s2_cmd_tune = {
    .name = "tune",
    .usage = "SPEC... [--set KEY=VALUE]... [--seqlens N[,N]...] [--kernels LIST]\n"
             "                  [--atomic-dq] [--budget SECONDS] [--db DIR] [--export FILE]\n"
             "                  [--import FILE] [--cache-dir DIR] [--jobs N]\n"
             "       s2lora tune SPEC... [--set KEY=VALUE]... --arch ARCH --build-only\n"
             "                  [--atomic-dq] [--jobs N]",
    .about =
        "Tunes each SPEC's kernels on this GPU. The tuning space of every unit is every\n"
        "tile the plan accepts (shared memory within the arch's limit, no register spills\n"
        "by the plan's rules), the backward's only where it gives the same bits every run\n"
        "(no atomic dQ) unless --atomic-dq; all of it is built with NVRTC in parallel\n"
        "(cache hits reused) and candidates that spill are pruned. On one sequence of\n"
        "each --seqlens length (default: the spec's context_length) with fresh random\n"
        "inputs, the default tile is the trusted reference; every other candidate runs on\n"
        "the same inputs with poisoned outputs and is rejected unless its outputs match\n"
        "the default's (relative L2 < 1e-2, no NaN), then is timed (median of 10 after 3\n"
        "warm-ups, L2 flushed before each run; one whose first run takes 1.3x the best so\n"
        "far is cut there: it cannot win). The fastest per unit goes into the tuning\n"
        "database of this GPU model, DIR/tune-<gpu>.jsonl (DIR: --db, default the kernel\n"
        "cache directory), which attn and bench then use. The LoRA linears' space is the\n"
        "cuBLAS algorithm of each product of each adapted group (cuBLAS's choice, then\n"
        "each one cuBLASLt's heuristic offers), gated against cuBLAS's choice the same\n"
        "way and timed at each length; bench lora and train use the result. Progress on\n"
        "stderr; a summary of default and tuned time per unit and product on stdout.\n",
    .epilog = "Exit status 1 if a candidate fails to build (or, on a GPU, on an error), 3 when\n"
              "there is no CUDA device.\n",
    .opts = tune_opts, .n_opts = sizeof tune_opts / sizeof tune_opts[0],
    S2_POS_SPEC(tune_args, specs, n_specs, 16),
};

/* What the backward's space holds, as tune says it. */
static const char *tune_bwd_space(int atomic_dq)
{
    return atomic_dq ? "attn_bwd candidates: every tile, the atomic dQ's too (bwd_atomic_dq=1: "
                       "dQ's bits vary from run to run)"
                     : "attn_bwd candidates: the tiles whose backward gives the same bits every "
                       "run (--atomic-dq also tries the atomic dQ)";
}

/* --build-only: the whole space for an arch that need not be here. */
static int tune_build_only(const tune_args *t)
{
    int failed = 0;
    for (int i = 0; i < t->n_specs; i++) {
        s2_error err = {0};
        s2_spec spec;
        if (s2_spec_load(t->specs[i], t->sets, t->n_sets, &spec, &err))
            return fail(&err);
        s2_jit_opts jo = {.arch = t->arch, .cache_dir = t->cache_dir, .threads = t->jobs};
        if (t->lora)
            printf("spec %s: the LoRA linears' tuning space is cuBLAS's algorithms: nothing to "
                   "build\n", spec.name);
        if (!t->units)
            continue;
        s2_tune_candidate *c = NULL;
        int n = 0;
        double t0 = now_ms();
        const long long total = s2_tune_space_size(&spec, jo.arch, t->units, t->atomic_dq);
        char what[200];
        snprintf(what, sizeof what, "tune --build-only %s for %s: candidates", spec.name,
                 jo.arch);
        s2_cli_progress *pr = s2_cli_progress_start(prog, what, total);
        jo.on_unit = s2_cli_progress_unit;
        jo.on_unit_ctx = pr;
        s2_status st = s2_tune_build_space(&spec, &jo, t->units, t->atomic_dq, &c, &n, &err);
        s2_cli_progress_end(pr);
        if (st)
            return fail(&err);
        printf("spec %s (sha256 %.16s) for %s: %d candidates in %.1f s\n", spec.name,
               spec.hash_hex, jo.arch, n, (now_ms() - t0) / 1e3);
        if (t->units & (1u << S2_UNIT_ATTN_BWD))
            puts(tune_bwd_space(t->atomic_dq));
        printf("%-9s %10s %6s %7s %6s %9s %9s\n", "unit", "candidates", "built", "spilled",
               "failed", "max regs", "max smem");
        for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++) {
            int cand = 0, ok = 0, spilled = 0, regs = 0, smem = 0;
            for (int k = 0; k < n; k++) {
                if (c[k].unit != (s2_attn_unit)u)
                    continue;
                cand++;
                ok += c[k].st == S2_OK;
                spilled += c[k].st == S2_OK && c[k].spilled;
                for (int r = 0; r < c[k].n_res; r++)
                    regs = c[k].res[r].regs > regs ? c[k].res[r].regs : regs;
                s2_attn_plan plan;
                if (s2_plan_attn(&spec, jo.arch, &c[k].tile, &plan, NULL) == S2_OK) {
                    int b = u == S2_UNIT_ATTN_FWD ? plan.smem_fwd : plan.smem_dkdv;
                    smem = b > smem ? b : smem;
                }
            }
            if (cand)
                printf("%-9s %10d %6d %7d %6d %9d %9d\n", s2_attn_unit_name((s2_attn_unit)u),
                       cand, ok, spilled, cand - ok, regs, smem);
        }
        for (int k = 0; k < n; k++)
            if (c[k].warning)
                fprintf(stderr, "%s: warning: %s\n", prog, c[k].warning);
        for (int k = 0; k < n; k++)
            if (c[k].st) {
                fprintf(stderr, "%s: %s\n", prog, c[k].msg ? c[k].msg : s2_status_to_string(c[k].st));
                failed++;
            }
        s2_tune_free(c, n);
    }
    return failed ? 1 : 0;
}

static void tune_progress(void *ctx, const char *line)
{
    fprintf(stderr, "%s: tune %s: %s\n", prog, (const char *)ctx, line);
}

static int tune_on_device(const tune_args *t)
{
    s2_error err = {0};
    s2_spec specs[16];
    for (int i = 0; i < t->n_specs; i++) /* every spec is checked before the device */
        if (s2_spec_load(t->specs[i], t->sets, t->n_sets, &specs[i], &err))
            return fail(&err);
    s2_rt rt;
    if (s2_rt_open(&rt, 0, &err))
        return fail(&err);
    s2_cli_show_cache_warnings(&rt, prog);
    char dir[1024];
    s2_jit_opts jo = {.cache_dir = t->cache_dir};
    if (t->db_dir)
        snprintf(dir, sizeof dir, "%s", t->db_dir);
    else if (s2_jit_cache_dir(&jo, dir, sizeof dir, &err))
        return fail(&err);
    s2_tunedb *db = NULL;
    if (s2_tunedb_open(dir, rt.name, &db, &err))
        return fail(&err);
    s2_tunedb_import_counts ic = {0};
    s2_status st = t->import_path ? s2_tunedb_import(db, t->import_path, &ic, &err) : S2_OK;
    if (!st && t->import_path) { /* the refused lines (and the db's own skipped ones) first */
        for (int w = 0; w < db->n_warnings; w++)
            fprintf(stderr, "%s: warning: %s\n", prog, db->warnings[w]);
        s2_tunedb_clear_warnings(db);
        fprintf(stderr, "%s: imported %s: %d lines taken (%d new, %d replaced, %d kept as held: "
                "a local measurement or a newer entry), %d refused\n", prog, t->import_path,
                ic.taken, ic.added, ic.replaced, ic.held, ic.refused);
    }
    printf("tune on %s (%s), database %s\n", rt.name, rt.arch, db->path);
    if (t->units & (1u << S2_UNIT_ATTN_BWD))
        puts(tune_bwd_space(t->atomic_dq));
    /* one pass at the spec's own length when no --seqlens was given */
    const int n_len = t->n_seqlens ? t->n_seqlens : 1;
    if (t->units)
        printf("%-16s %7s %-9s %6s %5s %7s %8s %5s %4s %6s %10s %9s %7s  %s\n", "spec", "seqlen",
               "unit", "cands", "built", "spilled", "rejected", "timed", "cut", "budget",
               "default_ms", "tuned_ms", "speedup", "tile");
    for (int i = 0; !st && t->units && i < t->n_specs; i++)
        for (int l = 0; !st && l < n_len; l++) {
            const int len = t->n_seqlens ? t->seqlens[l] : 0;
            s2_tune_opts o = {.seqlen = len, .units = t->units, .budget_s = t->budget,
                              .cache_dir = t->cache_dir, .atomic_dq = t->atomic_dq,
                              .progress = tune_progress,
                              .progress_ctx = specs[i].name};
            s2_tune_unit_result res[S2_UNIT_ATTN_COUNT];
            st = s2_tune_run(&rt, &specs[i], &o, db, res, &err);
            for (int u = 0; !st && u < S2_UNIT_ATTN_COUNT; u++) {
                const s2_tune_unit_result *r = &res[u];
                if (!r->candidates)
                    continue;
                char ts[S2_PLAN_TILE_STR_MAX];
                s2_plan_tile_str(&r->best, ts, sizeof ts);
                printf("%-16s %7d %-9s %6d %5d %7d %8d %5d %4d %6d %10.3f %9.3f %6.2fx  %s\n",
                       specs[i].name, len ? len : specs[i].context_length,
                       s2_attn_unit_name((s2_attn_unit)u), r->candidates, r->built, r->spilled,
                       r->rejected, r->timed, r->cut, r->over_budget, r->default_ms, r->best_ms,
                       r->best_ms > 0 ? r->default_ms / r->best_ms : 0.0, ts);
            }
        }
    if (!st && t->lora)
        printf("%-16s %-8s %-7s %5s %5s %8s %5s %10s %9s %7s  %s\n", "spec", "group", "product",
               "M", "algos", "rejected", "timed", "default_ms", "tuned_ms", "speedup", "algo");
    for (int i = 0; !st && t->lora && i < t->n_specs; i++)
        for (int l = 0; !st && l < n_len; l++) {
            s2_tune_opts o = {.seqlen = t->n_seqlens ? t->seqlens[l] : 0,
                              .cache_dir = t->cache_dir, .progress = tune_progress,
                              .progress_ctx = specs[i].name};
            s2_tune_lora_result res[64];
            int n = 0;
            st = s2_tune_lora_run(&rt, &specs[i], &o, db, res, 64, &n, &err);
            for (int k = 0; !st && k < n; k++) {
                const s2_tune_lora_result *r = &res[k];
                char name[64];
                s2_tune_lora_kernel_name(r->gemm, r->grad_f32, name, sizeof name);
                printf("%-16s %-8s %-7s %5d %5d %8d %5d %10.3f %9.3f %6.2fx  %d%s\n",
                       specs[i].name, r->group, name + 5, r->M, r->algos, r->rejected, r->timed,
                       r->default_ms, r->best_ms,
                       r->best_ms > 0 ? r->default_ms / r->best_ms : 0.0, r->best,
                       r->best ? "" : " (cuBLAS's choice)");
            }
        }
    if (!st)
        st = s2_tunedb_save(db, &err);
    if (!st && t->export_path)
        st = s2_tunedb_export(db, t->export_path, &err);
    for (int w = 0; w < db->n_warnings; w++)
        fprintf(stderr, "%s: warning: %s\n", prog, db->warnings[w]);
    s2_tunedb_close(db);
    return st ? fail(&err) : 0;
}

int s2_cli_tune(const char *p, int argc, char **argv)
{
    tune_args t = {0};
    s2_opts_result r;
    int rc;
    if (!s2_opts_run(&s2_cmd_tune, argc, argv, &t, &r, &rc))
        return rc;
    if (t.kernels & (1u << 0)) /* attn */
        t.units |= (1u << S2_UNIT_ATTN_FWD) | (1u << S2_UNIT_ATTN_BWD);
    if (t.kernels & (1u << 1))
        t.units |= 1u << S2_UNIT_ATTN_FWD;
    if (t.kernels & (1u << 2))
        t.units |= 1u << S2_UNIT_ATTN_BWD;
    t.lora = (t.kernels >> 3) & 1;
    if (!t.units && !t.lora) /* every kernel of the spec */
        t.units = (1u << S2_UNIT_ATTN_COUNT) - 1, t.lora = 1;
    if (t.build_only) {
        if (!t.arch)
            return s2_opts_usage_error(&s2_cmd_tune, "--build-only needs one --arch (sm_80, "
                                       "sm_86, sm_89, sm_90, sm_90a)");
        /* Options of the timing run: taken and dropped, they would look as if they did work. */
        static const char *const timing[] = {"db", "import", "export", "seqlens", "budget"};
        for (int i = 0; i < 5; i++)
            if (s2_opts_given(&s2_cmd_tune, &r, timing[i]))
                return s2_opts_usage_error(&s2_cmd_tune, "--%s does not go with --build-only, "
                                           "which times nothing: there is no tuning database to "
                                           "read, store or move and no timing run to size or "
                                           "bound (tune on a GPU for that)", timing[i]);
        return tune_build_only(&t);
    }
    if (t.arch)
        return s2_opts_usage_error(&s2_cmd_tune, "--arch %s: on a GPU the tuner builds for the "
                                   "GPU's own arch; --arch goes with --build-only", t.arch);
    return tune_on_device(&t);
}

/* ---------------------------------------------------------------- data */

typedef struct data_args {
    const char *paths[256];
    int n_paths, bytes;
    const char *out;
} data_args;

static const s2_opt data_opts[] = {
    {.name = "bytes", .kind = S2_OPT_FLAG,
     .help = "the byte-level vocabulary (the only one built in; naming it is required)",
     .off = offsetof(data_args, bytes)},
    {.name = "out", .short_name = 'o', .kind = S2_OPT_STRING, .metavar = "OUT.tokens",
     .help = "the token file to write", .off = offsetof(data_args, out),
     .flags = S2_OPT_REQUIRED, .complete = S2_COMPLETE_FILE},
};

const s2_cmd s2_cmd_data = {
    .name = "data",
    .usage = "--bytes TEXT... -o OUT.tokens",
    .about = "Turns text files into a token file (runtime/train/data.h) with the byte-level\n"
             "vocabulary of specs/tiny-byte-512.yaml: token = byte + 8, PAD 0, BOS 1, EOS 2\n"
             "(vocab 264); each file is one document, BOS + bytes + EOS. Written atomically.\n"
             "For LLaMA tokens use a tokenizer and s2_data_write (the trainer's data step).\n",
    .opts = data_opts, .n_opts = sizeof data_opts / sizeof data_opts[0],
    .pos_name = "TEXT", .pos_min = 1, .pos_max = 256, .pos_off = offsetof(data_args, paths),
    .pos_count_off = offsetof(data_args, n_paths), .pos_has_count = 1,
    .pos_complete = S2_COMPLETE_FILE,
};

int s2_cli_data(const char *p, int argc, char **argv)
{
    data_args a = {0};
    s2_opts_result r;
    int rc;
    if (!s2_opts_run(&s2_cmd_data, argc, argv, &a, &r, &rc))
        return rc;
    if (!a.bytes)
        return s2_opts_usage_error(&s2_cmd_data, "name the vocabulary: --bytes (the byte-level "
                                   "one)");
    s2_error err = {0};
    if (s2_data_from_text(a.paths, a.n_paths, a.out, &err))
        return fail(&err);
    s2_data_file *f = NULL;
    if (s2_data_open(a.out, &f, &err))
        return fail(&err);
    printf("%s: %llu tokens in %llu documents, vocab %u\n", a.out,
           (unsigned long long)f->n_tokens, (unsigned long long)f->n_docs, f->vocab);
    s2_data_close(f);
    return 0;
}

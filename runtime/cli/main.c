/*
 * main.c — the s2lora command line. Each subcommand parses its arguments,
 * calls the library and prints; the library itself never prints or exits.
 *
 * Exit codes: 0 success, 1 failure (message on stderr), 2 usage error,
 * 3 no CUDA device or driver.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "gen/emit.h"
#include "gen/spec.h"
#include "runtime/tune/bench.h"
#include "runtime/core/jit.h"
#include "runtime/core/rt.h"
#include "runtime/core/st.h"
#include "runtime/tune/tune.h"
#include "runtime/tune/bench_lora.h"
#include "runtime/cli/cli.h"
#include "runtime/train/data.h"

#define EXIT_USAGE 2
#define EXIT_NO_DEVICE 3
#define MAX_SETS 64
#define MAX_ARCH 8

static const char *prog = "s2lora";

static int fail(s2_error *err)
{
    fprintf(stderr, "%s: %s\n", prog, err->msg ? err->msg : s2_status_to_string(err->status));
    int code = err->status == S2_ERR_NO_DEVICE ? EXIT_NO_DEVICE : 1;
    s2_error_clear(err);
    return code;
}

static int usage_error(const char *cmd, const char *fmt, const char *arg)
{
    fprintf(stderr, "%s %s: ", prog, cmd);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry '%s %s --help'.\n", prog, cmd);
    return EXIT_USAGE;
}

/* Options common to the subcommands that take a spec. */
typedef struct cli_opts {
    const char *spec;
    s2_spec_override sets[MAX_SETS];
    int n_sets;
    const char *arch[MAX_ARCH];
    int n_arch;
    const char *out, *in, *cache_dir, *tile;
    int backward, no_cache, jobs, help;
} cli_opts;

/* Returns 0, or an exit code for a usage error. allowed lists the options this command takes. */
static int parse_opts(const char *cmd, int argc, char **argv, const char *allowed, cli_opts *o)
{
    memset(o, 0, sizeof *o);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            o->help = 1;
            return 0;
        }
        if (a[0] != '-') {
            if (o->spec)
                return usage_error(cmd, "unexpected argument '%s'", a);
            o->spec = a;
            continue;
        }
        char key[32];
        snprintf(key, sizeof key, "%s ", a);
        if (!strstr(allowed, key))
            return usage_error(cmd, "unknown option '%s'", a);
        int takes_value = strcmp(a, "--backward") && strcmp(a, "--no-cache");
        if (takes_value && !val)
            return usage_error(cmd, "option '%s' needs a value", a);
        if (!strcmp(a, "--set")) {
            if (o->n_sets == MAX_SETS)
                return usage_error(cmd, "too many --set options (at most %s)", "64");
            o->sets[o->n_sets++].text = val;
        } else if (!strcmp(a, "--arch")) {
            if (o->n_arch == MAX_ARCH)
                return usage_error(cmd, "too many --arch options (at most %s)", "8");
            if (!s2_jit_arch_valid(val))
                return usage_error(cmd, "--arch %s: valid: sm_80, sm_86, sm_89, sm_90, sm_90a", val);
            o->arch[o->n_arch++] = val;
        } else if (!strcmp(a, "--spec")) {
            o->spec = val;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--out")) {
            o->out = val;
        } else if (!strcmp(a, "--in")) {
            o->in = val;
        } else if (!strcmp(a, "--tile")) {
            o->tile = val;
        } else if (!strcmp(a, "--cache-dir")) {
            o->cache_dir = val;
        } else if (!strcmp(a, "--jobs")) {
            o->jobs = atoi(val);
            if (o->jobs < 1)
                return usage_error(cmd, "--jobs %s: expected a positive integer", val);
        } else if (!strcmp(a, "--backward")) {
            o->backward = 1;
            continue;
        } else if (!strcmp(a, "--no-cache")) {
            o->no_cache = 1;
            continue;
        }
        i++;
    }
    return 0;
}

/* The tile to build with: the plan's default for arch, with --tile applied. NULL without --tile. */
static const s2_attn_tile *cli_tile(const cli_opts *o, const s2_spec *spec, const char *arch,
                                    s2_attn_tile *t, s2_error *err, s2_status *st)
{
    *st = S2_OK;
    if (!o->tile)
        return NULL;
    *t = s2_plan_spec_default_tile(spec, arch);
    *st = s2_plan_parse_tile(o->tile, t, err);
    return t;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---------------------------------------------------------------- gen */

static const char gen_help[] =
    "usage: s2lora gen SPEC [--set KEY=VALUE]... -o DIR\n"
    "\n"
    "Generates the specialised CUDA sources of SPEC (one .cu file per unit, each\n"
    "opening with a banner that names the spec and its hash) into DIR.\n"
    "  --set KEY=VALUE   override a spec value, e.g. --set s2attn.group_size=2048\n"
    "  -o, --out DIR     output directory (created if missing)\n"
    "  --arch ARCH       plan for this arch's default tile (default sm_90a)\n";

static int cmd_gen(int argc, char **argv)
{
    cli_opts o;
    int rc = parse_opts("gen", argc, argv, "--set -o --out --arch ", &o);
    if (rc)
        return rc;
    if (o.help)
        return fputs(gen_help, stdout), 0;
    if (!o.spec)
        return usage_error("gen", "missing SPEC%s", "");
    if (!o.out)
        return usage_error("gen", "missing -o DIR%s", "");
    s2_error err = {0};
    s2_spec spec;
    s2_attn_plan plan;
    if (s2_spec_load(o.spec, o.sets, o.n_sets, &spec, &err) ||
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

static const char build_help[] =
    "usage: s2lora build SPEC [--set KEY=VALUE]... [--arch ARCH]... [--jobs N]\n"
    "                         [--cache-dir DIR] [--no-cache]\n"
    "\n"
    "Generates SPEC's kernels (the attention units and the trainer's) and builds\n"
    "them with NVRTC for each ARCH (default: the spec's arch list), through the\n"
    "kernel cache. Needs no GPU. Prints one row per kernel: registers, shared\n"
    "memory, stack, spills, cache hit, time.\n"
    "  --arch ARCH       sm_80 | sm_86 | sm_89 | sm_90 | sm_90a (repeatable)\n"
    "  --jobs N          parallel NVRTC builds (default: all cores)\n"
    "  --cache-dir DIR   cache directory (default $S2LORA_CACHE_DIR, else\n"
    "                    $XDG_CACHE_HOME/s2lora, else ~/.cache/s2lora)\n"
    "  --no-cache        build everything, read and write no cache\n"
    "  --tile K=V,...    tuning parameters instead of the arch's default: fwd_warps,\n"
    "                    fwd_block_n, fwd_stages, bwd_warps, bwd_block_n, bwd_stages\n"
    "Exit status 1 if a build fails or any kernel spills.\n";

static void print_build_rows(const char *arch, const s2_jit_result *res, int n_units,
                             int *spills)
{
    for (int u = 0; u < n_units; u++) {
        const s2_jit_result *r = &res[u];
        for (int k = 0; k < r->n_res; k++) {
            const s2_kernel_res *x = &r->res[k];
            int sp = x->spill_stores + x->spill_loads;
            *spills += sp;
            printf("%-7s %-9s %-22s %5d %8d %6d %7d %-5s %8.1f\n", arch,
                   u < S2_UNIT_ATTN_COUNT ? s2_attn_unit_name((s2_attn_unit)u) : "train", x->name,
                   x->regs, x->smem, x->stack, sp, r->cache_hit ? "hit" : "built", r->ms);
        }
    }
}

static int cmd_build(int argc, char **argv)
{
    cli_opts o;
    int rc = parse_opts("build", argc, argv, "--set --arch --jobs --cache-dir --no-cache --tile ", &o);
    if (rc)
        return rc;
    if (o.help)
        return fputs(build_help, stdout), 0;
    if (!o.spec)
        return usage_error("build", "missing SPEC%s", "");
    s2_error err = {0};
    s2_spec spec;
    if (s2_spec_load(o.spec, o.sets, o.n_sets, &spec, &err))
        return fail(&err);
    int n_arch = o.n_arch ? o.n_arch : spec.n_arch;
    printf("spec %s (sha256 %.16s), G=%d S=%d %s, d=%d, H=%d, Hkv=%d, %s\n", spec.name,
           spec.hash_hex, spec.s2attn.group_size, spec.s2attn.shift,
           s2_shift_mode_name(spec.s2attn.shift_mode), spec.model.head_dim,
           spec.model.num_heads, spec.model.num_kv_heads, s2_dtype_name(spec.dtype));
    printf("%-7s %-9s %-22s %5s %8s %6s %7s %-5s %8s\n", "arch", "unit", "kernel", "regs",
           "smem", "stack", "spill", "cache", "ms");
    int spills = 0;
    double t0 = now_ms();
    for (int a = 0; a < n_arch; a++) {
        s2_jit_opts jo = {.arch = o.n_arch ? o.arch[a] : spec.arch[a], .cache_dir = o.cache_dir,
                          .threads = o.jobs, .no_cache = o.no_cache};
        s2_attn_plan plan;
        s2_jit_result res[S2_EMIT_UNITS];
        memset(res, 0, sizeof res);
        s2_attn_tile tile;
        s2_status st;
        const s2_attn_tile *tp = cli_tile(&o, &spec, jo.arch, &tile, &err, &st);
        if (st || s2_spec_build(&spec, tp, &jo, &plan, res, &err))
            return fail(&err);
        print_build_rows(jo.arch, res, S2_EMIT_UNITS, &spills);
        for (int u = 0; u < S2_EMIT_UNITS; u++) {
            if (res[u].warning[0])
                fprintf(stderr, "%s: warning: %s\n", prog, res[u].warning);
            s2_jit_result_free(&res[u]);
        }
    }
    printf("built %d arch(es) in %.1f ms\n", n_arch, now_ms() - t0);
    if (spills) {
        fprintf(stderr, "%s: %d bytes of register spills in the kernels above\n", prog, spills);
        return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- attn */

static const char attn_help[] =
    "usage: s2lora attn --spec SPEC [--set KEY=VALUE]... --in IN.safetensors\n"
    "                   --out OUT.safetensors [--backward] [--cache-dir DIR]\n"
    "                   [--tile K=V,...]\n"
    "\n"
    "Runs SPEC's S²-Attn kernels on the GPU on tensors from a file.\n"
    "IN holds q [T,H,d], k [T,Hkv,d], v [T,Hkv,d] in the spec's dtype, optionally\n"
    "cu_seqlens [B+1] int32 (absent: one sequence of T tokens), and with\n"
    "--backward do [T,H,d]. OUT receives o [T,H,d], lse [H,T] float32 and, with\n"
    "--backward, dq [T,H,d], dk [T,Hkv,d], dv [T,Hkv,d].\n"
    "Exit status 3 when there is no CUDA device.\n";

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

static s2_status check_inputs(const s2_spec *spec, const s2_st_file *f, const char *path,
                              int backward, attn_io *io, s2_error *err)
{
    const int H = spec->model.num_heads, Hkv = spec->model.num_kv_heads, d = spec->model.head_dim;
    s2_st_dtype dt = spec->dtype == S2_DTYPE_BF16 ? S2_ST_BF16 : S2_ST_F16;
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

/* Device buffers of one attn run. */
typedef struct attn_dev {
    void *q, *k, *v, *o, *dout, *dq, *dk, *dv;
    float *lse, *delta;
    int32_t *cu;
} attn_dev;

static void attn_dev_free(attn_dev *d)
{
    void *p[] = {d->q, d->k, d->v, d->o, d->dout, d->dq, d->dk, d->dv, d->lse, d->delta, d->cu};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++)
        if (p[i])
            cudaFree(p[i]);
}

static s2_status dev_copy_in(void **dst, const void *src, size_t n, const char *name, s2_error *err)
{
    char what[96];
    snprintf(what, sizeof what, "cudaMalloc(%s, %zu bytes)", name, n);
    s2_status st = s2_rt_check(cudaMalloc(dst, n ? n : 1), what, err);
    if (!st && src)
        st = s2_rt_check(cudaMemcpy(*dst, src, n, cudaMemcpyHostToDevice), "cudaMemcpy to device", err);
    return st;
}

static s2_status run_attn(const s2_spec *spec, const cli_opts *o, const attn_io *io,
                          s2_tensor *outs, int *n_out, s2_error *err)
{
    s2_rt rt;
    s2_status st = s2_rt_open(&rt, 0, err);
    if (st)
        return st;
    s2_cli_show_cache_warnings(&rt, prog);
    s2_attn a;
    s2_jit_opts jo = {.cache_dir = o->cache_dir, .no_cache = o->no_cache};
    s2_attn_batch bt;
    st = s2_attn_batch_init(&bt, io->cu_host, io->B, io->T, "cu_seqlens", err);
    s2_attn_tile tile;
    const s2_attn_tile *tp = st ? NULL : cli_tile(o, spec, rt.arch, &tile, err, &st);
    if (!st && !tp) { /* no --tile: the tuned tile for this GPU and length, else the default */
        s2_tune_choice choice;
        s2_tune_select_cached(&jo, rt.name, rt.arch, spec, bt.max_seqlen, &choice);
        fprintf(stderr, "%s: tile: %s\n", prog, choice.why);
        tile = choice.tile;
        tp = &tile;
    }
    if (!st)
        st = s2_attn_load(&a, &rt, spec, tp, &jo, err);
    if (st)
        return st;
    const int H = spec->model.num_heads, Hkv = spec->model.num_kv_heads, d = spec->model.head_dim;
    const size_t nq = (size_t)io->T * H * d * 2, nk = (size_t)io->T * Hkv * d * 2;
    const size_t nl = (size_t)H * io->T * sizeof(float);
    attn_dev dv = {0};
    if (!st)
        st = dev_copy_in(&dv.q, io->q->data, nq, "q", err);
    if (!st)
        st = dev_copy_in(&dv.k, io->k->data, nk, "k", err);
    if (!st)
        st = dev_copy_in(&dv.v, io->v->data, nk, "v", err);
    if (!st)
        st = dev_copy_in((void **)&dv.cu, io->cu_host, sizeof(int32_t) * (io->B + 1), "cu_seqlens", err);
    if (!st)
        st = dev_copy_in(&dv.o, NULL, nq, "o", err);
    if (!st)
        st = dev_copy_in((void **)&dv.lse, NULL, nl, "lse", err);
    bt.d_cu_seqlens = dv.cu;
    if (!st)
        st = s2_attn_forward(&a, &bt, dv.q, dv.k, dv.v, dv.o, dv.lse, 0, err);
    if (!st && o->backward) {
        st = dev_copy_in(&dv.dout, io->dout->data, nq, "do", err);
        if (!st)
            st = dev_copy_in((void **)&dv.delta, NULL, s2_attn_workspace_bytes(&a, io->T),
                             "backward workspace", err);
        if (!st)
            st = dev_copy_in(&dv.dq, NULL, nq, "dq", err);
        if (!st)
            st = dev_copy_in(&dv.dk, NULL, nk, "dk", err);
        if (!st)
            st = dev_copy_in(&dv.dv, NULL, nk, "dv", err);
        if (!st)
            st = s2_attn_backward(&a, &bt, dv.q, dv.k, dv.v, dv.o, dv.lse, dv.dout, dv.delta,
                                  dv.dq, dv.dk, dv.dv, 0, err);
    }
    if (!st)
        st = s2_rt_check(cudaDeviceSynchronize(), "running the kernels", err);
    s2_st_dtype dt = spec->dtype == S2_DTYPE_BF16 ? S2_ST_BF16 : S2_ST_F16;
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
            st = s2_error_set(err, S2_ERR_NOMEM, "out of memory for %s", t->name);
            break;
        }
        *n_out = i + 1;
        st = s2_rt_check(cudaMemcpy(t->data, spec_out[i].dev, t->nbytes, cudaMemcpyDeviceToHost),
                         "cudaMemcpy to host", err);
    }
    attn_dev_free(&dv);
    s2_attn_free(&a);
    return st;
}

static int cmd_attn(int argc, char **argv)
{
    cli_opts o;
    int rc = parse_opts("attn", argc, argv,
                        "--spec --set --in --out -o --backward --cache-dir --no-cache --tile ", &o);
    if (rc)
        return rc;
    if (o.help)
        return fputs(attn_help, stdout), 0;
    if (!o.spec)
        return usage_error("attn", "missing --spec SPEC%s", "");
    if (!o.in || !o.out)
        return usage_error("attn", "missing %s", !o.in ? "--in IN.safetensors" : "--out OUT.safetensors");
    s2_error err = {0};
    s2_spec spec;
    s2_st_file f = {0};
    attn_io io = {0};
    s2_tensor outs[5];
    int n_out = 0;
    memset(outs, 0, sizeof outs);
    s2_status st = s2_spec_load(o.spec, o.sets, o.n_sets, &spec, &err);
    if (!st)
        st = s2_st_read(o.in, &f, &err);
    if (!st)
        st = check_inputs(&spec, &f, o.in, o.backward, &io, &err);
    if (!st) { /* the boundaries are checked before any device work */
        s2_attn_batch bt;
        st = s2_attn_batch_init(&bt, io.cu_host, io.B, io.T, "cu_seqlens", &err);
        if (st)
            s2_error_prefix(&err, "%s", o.in);
    }
    if (!st)
        st = run_attn(&spec, &o, &io, outs, &n_out, &err);
    if (!st) {
        const char *mk[] = {"s2lora.spec", "s2lora.spec_sha256"};
        const char *mv[] = {spec.name, spec.hash_hex};
        st = s2_st_write(o.out, outs, n_out, mk, mv, 2, &err);
    }
    for (int i = 0; i < n_out; i++)
        free(outs[i].data);
    free(io.cu_host);
    s2_st_close(&f);
    if (st)
        return fail(&err);
    fprintf(stderr, "%s: wrote %d tensors to %s\n", prog, n_out, o.out);
    return 0;
}

/* ---------------------------------------------------------------- bench */

static const char bench_help[] =
    "usage: s2lora bench attn SPEC... [--set KEY=VALUE]... [--seqlens N[,N]...]\n"
    "                         [--reps N] [--warmup N] [--seed N]\n"
    "                         [--peers PATH | --no-peers] [--csv FILE] [--json FILE]\n"
    "                         [--cache-dir DIR] [--tile K=V,...]...\n"
    "\n"
    "Times the S²-Attn kernels of each SPEC on the GPU, forward and forward+backward,\n"
    "and the PyTorch peers on the same inputs. One case per SPEC and N: one sequence\n"
    "(B=1) of N tokens, fresh N(0,1) inputs in the spec's dtype, our outputs poisoned\n"
    "with NaN before the first run and checked for inf/NaN after the timing.\n"
    "  --set KEY=VALUE   override a spec value (applies to every SPEC)\n"
    "  --seqlens LIST    comma-separated N (default: each spec's context_length). The\n"
    "                    spec is reloaded with context_length=N: a group_ratio spec gets\n"
    "                    G = floor(N * ratio) and S = G/2 for that N; a spec that gives\n"
    "                    group_size keeps its G (and S)\n"
    "  --reps N          timed runs (default: 20 forward, 10 forward+backward)\n"
    "  --warmup N        untimed runs before each timing (default 5)\n"
    "  --seed N          seed of the inputs (default: from the clock; printed)\n"
    "  --peers PATH      the peers script (default bench/peers/attn_peers.py, from the\n"
    "                    current directory); it runs under python3 with torch and CUDA;\n"
    "                    if one is missing: one warning, and no peer rows\n"
    "  --no-peers        time s2lora alone\n"
    "  --csv FILE        write the rows as CSV (whole, atomically, after the sweep)\n"
    "  --json FILE       write the rows as JSON (likewise)\n"
    "  --cache-dir DIR   kernel cache directory (see 's2lora build --help')\n"
    "  --tile K=V,...    tuning parameters (see 's2lora build --help'); repeatable: one\n"
    "                    s2lora row per tile (s2lora#1, #2, ...), the fastest compared\n"
    "\n"
    "fwd_ms and fb_ms are medians of per-run CUDA event times after the warm-up; fb\n"
    "is a forward then a backward in one timed region. TF/s count S² FLOPs as the\n"
    "peers file does: forward 2*N*G*d*H (G capped at N), forward+backward 3.5x that;\n"
    "a short last group is counted as a full one, so the numbers compare with the\n"
    "peers file rather than count exact work. peak_GiB: for s2lora, the bytes this\n"
    "bench allocates for one layer's fwd+bwd (q, k, v, do, o, dq, dk, dv, lse and the\n"
    "delta workspace; the kernels allocate nothing, and the note says so if the\n"
    "device's free memory shrank by more); for a peer, torch.cuda.max_memory_allocated\n"
    "during one fwd+bwd less what was allocated before its inputs. rel_err_vs_ours:\n"
    "relative L2 error of the peer's o against ours, for peers that compute our shift\n"
    "mode (n/a otherwise). After each case, one line gives the fastest peer's fwd+bwd\n"
    "time and ours as a multiple of it.\n"
    "Exit status 1 if a row of ours failed (inf/NaN left in o, dq, dk or dv, or an\n"
    "error), 3 when there is no CUDA device (after the arguments and specs are checked).\n";

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

static s2_status write_bench_files(const s2_bench_opts *o, const char *device,
                                   const s2_bench_rows *r, s2_error *err)
{
    s2_status st = S2_OK;
    if (o->csv) {
        s2_buf b = {0};
        s2_bench_csv(&b, r->row, r->n);
        st = b.oom || !b.data ? s2_error_set(err, S2_ERR_NOMEM, "out of memory for the CSV")
                              : s2_write_file_atomic(o->csv, b.data, b.len, err);
        s2_buf_free(&b);
    }
    if (!st && o->json) {
        char *j = s2_bench_json(r->row, r->n, device, o->seed);
        st = !j ? s2_error_set(err, S2_ERR_NOMEM, "out of memory for the JSON")
                : s2_write_file_atomic(o->json, j, strlen(j), err);
        free(j);
    }
    return st;
}

static const char bench_lora_help[] =
    "usage: s2lora bench lora [--M LIST] [--dims LIST] [--ranks LIST] [--dtype bf16|fp16]\n"
    "                         [--reps N] [--csv FILE]\n"
    "\n"
    "Times the LoRA linear (runtime/ops/lora.h: cuBLAS GEMMs on the augmented layout) against\n"
    "the frozen base GEMM on the same buffers, for one projection of in = out = dim:\n"
    "forward (y = x W^T) and forward+backward (the backward of the base is dx = dy W:\n"
    "W is frozen). Overhead in percent. Defaults: M 4096,16384,65536; dims\n"
    "4096,5120,8192; ranks 8,16,64; bf16; 20 timed runs after 5 warm-ups (medians).\n"
    "The PyTorch peers are bench/peers/lora_peers.py (run by bench/gpu-check.sh).\n";

static int cmd_bench_lora(int argc, char **argv)
{
    int Ms[8] = {4096, 16384, 65536}, dims[8] = {4096, 5120, 8192}, ranks[8] = {8, 16, 64};
    int nM = 3, nd = 3, nr = 3, reps = 20;
    s2_dtype dt = S2_DTYPE_BF16;
    const char *csv = NULL;
    s2_error err = {0};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            return fputs(bench_lora_help, stdout), 0;
        if (!v)
            return usage_error("bench lora", "option '%s' needs a value (or is unknown)", a);
        i++;
        s2_status st = S2_OK;
        if (!strcmp(a, "--M"))
            st = s2_bench_parse_seqlens(v, Ms, 8, &nM, &err);
        else if (!strcmp(a, "--dims"))
            st = s2_bench_parse_seqlens(v, dims, 8, &nd, &err);
        else if (!strcmp(a, "--ranks"))
            st = s2_bench_parse_seqlens(v, ranks, 8, &nr, &err);
        else if (!strcmp(a, "--reps"))
            reps = atoi(v);
        else if (!strcmp(a, "--csv"))
            csv = v;
        else if (!strcmp(a, "--dtype") && (!strcmp(v, "bf16") || !strcmp(v, "fp16")))
            dt = !strcmp(v, "bf16") ? S2_DTYPE_BF16 : S2_DTYPE_FP16;
        else
            return usage_error("bench lora", "unknown option or value '%s'", a);
        if (st) {
            int rc = usage_error("bench lora", "%s", err.msg);
            s2_error_clear(&err);
            return rc;
        }
        if (reps < 1)
            return usage_error("bench lora", "--reps %s: expected a positive integer", v);
    }
    s2_rt rt;
    if (s2_rt_open(&rt, 0, &err))
        return fail(&err);
    s2_cli_show_cache_warnings(&rt, prog);
    s2_lora_ctx *ctx = NULL;
    if (s2_lora_open(&ctx, &rt, NULL, &err))
        return fail(&err);
    printf("bench lora: %s (%s), %s, %d timed runs (medians)\n", rt.name, rt.arch,
           s2_dtype_name(dt), reps);
    printf("%6s %5s %3s %12s %12s %7s %12s %12s %7s\n", "M", "dim", "r", "base_fwd_ms",
           "lora_fwd_ms", "fwd_%", "base_fb_ms", "lora_fb_ms", "fb_%");
    s2_buf out = {0};
    s2_buf_printf(&out, "M,dim,r,base_fwd_ms,lora_fwd_ms,fwd_overhead_pct,base_fb_ms,lora_fb_ms,"
                        "fb_overhead_pct,failed\n");
    int failed = 0;
    for (int i = 0; i < nM; i++)
        for (int j = 0; j < nd; j++)
            for (int k = 0; k < nr; k++) {
                s2_bench_lora_row r;
                s2_lora_dims tuned = s2_bench_lora_dims(dt, Ms[i], dims[j], ranks[k]);
                s2_jit_opts jo = {0};
                s2_tune_lora_select_cached(&jo, rt.name, rt.arch, &tuned, NULL, 0);
                if (s2_bench_lora_case(ctx, dt, Ms[i], dims[j], ranks[k], 5, reps, &tuned, &r,
                                       &err)) {
                    printf("%6d %5d %3d ERROR %s\n", Ms[i], dims[j], ranks[k], err.msg);
                    s2_error_clear(&err);
                    failed++;
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
                s2_buf_printf(&out, "%d,%d,%d,%.4f,%.4f,%.2f,%.4f,%.4f,%.2f,%d\n", r.M, r.dim,
                              r.r, r.base_fwd_ms, r.lora_fwd_ms, fo, r.base_fb_ms, r.lora_fb_ms,
                              bo, r.failed);
                failed += r.failed;
            }
    s2_lora_close(ctx);
    s2_status st = csv && out.data ? s2_write_file_atomic(csv, out.data, out.len, &err) : S2_OK;
    s2_buf_free(&out);
    if (st)
        return fail(&err);
    return failed ? 1 : 0;
}

static int cmd_bench(int argc, char **argv)
{
    if (argc >= 1 && !strcmp(argv[0], "lora"))
        return cmd_bench_lora(argc - 1, argv + 1);
    if (argc >= 1 && (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h")))
        return fputs(bench_help, stdout), 0;
    if (argc < 1)
        return usage_error("bench", "missing what to bench%s (valid: attn, lora)", "");
    if (strcmp(argv[0], "attn"))
        return usage_error("bench", "unknown benchmark '%s' (valid: attn, lora)", argv[0]);
    s2_error err = {0};
    s2_bench_opts o;
    if (s2_bench_parse(argc - 1, argv + 1, &o, &err)) {
        int rc = usage_error("bench attn", "%s", err.msg);
        s2_error_clear(&err);
        return rc;
    }
    if (o.help)
        return fputs(bench_help, stdout), 0;
    s2_bench_case *cases = NULL;
    int n_cases = 0;
    if (s2_bench_prepare(&o, &cases, &n_cases, &err))
        return fail(&err);
    s2_bench_ctx ctx = {.opts = &o};
    if (s2_rt_open(&ctx.rt, 0, &err)) {
        free(cases);
        return fail(&err);
    }
    s2_cli_show_cache_warnings(&ctx.rt, prog);
    printf("bench attn: %s (%s, %d SMs), seed 0x%llx, warm-up %d, reps %d fwd / %d fwd+bwd, "
           "peers: %s\n", ctx.rt.name, ctx.rt.arch, ctx.rt.sm_count, (unsigned long long)o.seed,
           o.warmup, o.reps_fwd, o.reps_fb, o.peers ? o.peers : "none");
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
        st = write_bench_files(&o, ctx.rt.name, &rows, &err);
    s2_bench_rows_free(&rows);
    free(cases);
    if (st)
        return fail(&err);
    return failed ? 1 : 0;
}

/* ---------------------------------------------------------------- tune */

static const char tune_help[] =
    "usage: s2lora tune SPEC... [--set KEY=VALUE]... [--seqlen N] [--kernels LIST]\n"
    "                  [--budget SECONDS] [--db DIR] [--export FILE] [--import FILE]\n"
    "                  [--cache-dir DIR] [--jobs N]\n"
    "       s2lora tune SPEC... [--set KEY=VALUE]... --arch ARCH --build-only [--jobs N]\n"
    "\n"
    "Tunes each SPEC's kernels on this GPU. The tuning space of every unit is every\n"
    "tile the plan accepts (shared memory within the arch's limit, no register spills\n"
    "by the plan's rules); all of it is built with NVRTC in parallel (cache hits\n"
    "reused) and candidates that spill are pruned. On one sequence of --seqlen tokens\n"
    "(default: the spec's context_length) with fresh random inputs, the default tile\n"
    "is the trusted reference; every other candidate runs on the same inputs with\n"
    "poisoned outputs and is rejected unless its outputs match the default's\n"
    "(relative L2 < 1e-2, no NaN), then is timed (median of 10 after 3 warm-ups, L2\n"
    "flushed before each run; one whose first run takes 1.3x the best so far is cut\n"
    "there: it cannot win). The fastest per unit goes into the tuning database\n"
    "of this GPU model, DIR/tune-<gpu>.jsonl (DIR: --db, default the kernel cache\n"
    "directory), which attn and bench then use. The LoRA linears' space is the cuBLAS\n"
    "algorithm of each product of each adapted group (cuBLAS's choice, then each one\n"
    "cuBLASLt's heuristic offers), gated against cuBLAS's choice the same way and timed\n"
    "at --seqlen tokens; bench lora and train use the result. Progress on stderr; a\n"
    "summary of default and tuned time per unit and product on stdout.\n"
    "  --kernels LIST    attn (both units), attn_fwd, attn_bwd, lora (default: all)\n"
    "  --budget SECONDS  after this, no new candidate is timed (the default always is)\n"
    "  --export FILE     also write the whole database to FILE (to move it elsewhere)\n"
    "  --import FILE     merge FILE into the database first: its lines are checked\n"
    "                    (each refused one is named with its line number and why), an\n"
    "                    imported entry never replaces one measured here, and among\n"
    "                    imported ones the newer wins\n"
    "  --arch ARCH --build-only\n"
    "                    build the whole space for ARCH, run nothing (needs no GPU):\n"
    "                    an A100's sm_80 can be checked before renting one; --db,\n"
    "                    --import, --export, --seqlen and --budget are refused with it\n"
    "Exit status 1 if a candidate fails to build (or, on a GPU, on an error), 3 when\n"
    "there is no CUDA device.\n";

typedef struct tune_args {
    const char *specs[16];
    int n_specs;
    s2_spec_override sets[MAX_SETS];
    int n_sets;
    const char *arch, *db_dir, *export_path, *import_path, *cache_dir;
    unsigned units; /* attention units */
    int lora;       /* the LoRA linears' products */
    int seqlen, jobs, build_only, help;
    double budget;
} tune_args;

static int parse_tune(int argc, char **argv, tune_args *t)
{
    memset(t, 0, sizeof *t);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            t->help = 1;
            return 0;
        }
        if (!strcmp(a, "--build-only")) {
            t->build_only = 1;
            continue;
        }
        if (a[0] != '-') {
            if (t->n_specs == 16)
                return usage_error("tune", "too many specs (at most %s)", "16");
            t->specs[t->n_specs++] = a;
            continue;
        }
        if (!val)
            return usage_error("tune", "option '%s' needs a value (or is unknown)", a);
        i++;
        if (!strcmp(a, "--set")) {
            if (t->n_sets == MAX_SETS)
                return usage_error("tune", "too many --set options (at most %s)", "64");
            t->sets[t->n_sets++].text = val;
        } else if (!strcmp(a, "--arch")) {
            if (!s2_jit_arch_valid(val))
                return usage_error("tune", "--arch %s: valid: sm_80, sm_86, sm_89, sm_90, sm_90a", val);
            t->arch = val;
        } else if (!strcmp(a, "--seqlen")) {
            t->seqlen = atoi(val);
            if (t->seqlen < 1)
                return usage_error("tune", "--seqlen %s: expected a positive integer", val);
        } else if (!strcmp(a, "--jobs")) {
            t->jobs = atoi(val);
            if (t->jobs < 1)
                return usage_error("tune", "--jobs %s: expected a positive integer", val);
        } else if (!strcmp(a, "--budget")) {
            t->budget = atof(val);
            if (!(t->budget > 0))
                return usage_error("tune", "--budget %s: expected seconds > 0", val);
        } else if (!strcmp(a, "--kernels")) {
            char buf[128];
            snprintf(buf, sizeof buf, "%s", val);
            for (char *save = NULL, *k = strtok_r(buf, ",", &save); k; k = strtok_r(NULL, ",", &save)) {
                if (!strcmp(k, "attn_fwd"))
                    t->units |= 1u << S2_UNIT_ATTN_FWD;
                else if (!strcmp(k, "attn_bwd"))
                    t->units |= 1u << S2_UNIT_ATTN_BWD;
                else if (!strcmp(k, "attn"))
                    t->units |= (1u << S2_UNIT_ATTN_FWD) | (1u << S2_UNIT_ATTN_BWD);
                else if (!strcmp(k, "lora"))
                    t->lora = 1;
                else
                    return usage_error("tune", "--kernels: unknown '%s'; valid: attn, attn_fwd, "
                                               "attn_bwd, lora", k);
            }
        } else if (!strcmp(a, "--db")) {
            t->db_dir = val;
        } else if (!strcmp(a, "--export")) {
            t->export_path = val;
        } else if (!strcmp(a, "--import")) {
            t->import_path = val;
        } else if (!strcmp(a, "--cache-dir")) {
            t->cache_dir = val;
        } else {
            return usage_error("tune", "unknown option '%s'", a);
        }
    }
    if (!t->units && !t->lora) /* every kernel of the spec */
        t->units = (1u << S2_UNIT_ATTN_COUNT) - 1, t->lora = 1;
    return 0;
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
        fprintf(stderr, "%s: building the tuning space of %s for %s ...\n", prog, spec.name,
                jo.arch);
        if (s2_tune_build_space(&spec, &jo, t->units, &c, &n, &err))
            return fail(&err);
        printf("spec %s (sha256 %.16s) for %s: %d candidates in %.1f s\n", spec.name,
               spec.hash_hex, jo.arch, n, (now_ms() - t0) / 1e3);
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
    printf("%-16s %-9s %6s %5s %7s %8s %5s %4s %6s %10s %9s %7s  %s\n", "spec", "unit",
           "cands", "built", "spilled", "rejected", "timed", "cut", "budget", "default_ms",
           "tuned_ms", "speedup", "tile");
    for (int i = 0; !st && t->units && i < t->n_specs; i++) {
        s2_tune_opts o = {.seqlen = t->seqlen, .units = t->units, .budget_s = t->budget,
                          .cache_dir = t->cache_dir, .progress = tune_progress,
                          .progress_ctx = specs[i].name};
        s2_tune_unit_result res[S2_UNIT_ATTN_COUNT];
        st = s2_tune_run(&rt, &specs[i], &o, db, res, &err);
        for (int u = 0; !st && u < S2_UNIT_ATTN_COUNT; u++) {
            const s2_tune_unit_result *r = &res[u];
            if (!r->candidates)
                continue;
            char ts[200];
            s2_plan_tile_str(&r->best, ts, sizeof ts);
            printf("%-16s %-9s %6d %5d %7d %8d %5d %4d %6d %10.3f %9.3f %6.2fx  %s\n",
                   specs[i].name, s2_attn_unit_name((s2_attn_unit)u), r->candidates, r->built,
                   r->spilled, r->rejected, r->timed, r->cut, r->over_budget, r->default_ms,
                   r->best_ms,
                   r->best_ms > 0 ? r->default_ms / r->best_ms : 0.0, ts);
        }
    }
    if (!st && t->lora)
        printf("%-16s %-8s %-7s %5s %5s %8s %5s %10s %9s %7s  %s\n", "spec", "group", "product",
               "M", "algos", "rejected", "timed", "default_ms", "tuned_ms", "speedup", "algo");
    for (int i = 0; !st && t->lora && i < t->n_specs; i++) {
        s2_tune_opts o = {.seqlen = t->seqlen, .cache_dir = t->cache_dir,
                          .progress = tune_progress, .progress_ctx = specs[i].name};
        s2_tune_lora_result res[64];
        int n = 0;
        st = s2_tune_lora_run(&rt, &specs[i], &o, db, res, 64, &n, &err);
        for (int k = 0; !st && k < n; k++) {
            const s2_tune_lora_result *r = &res[k];
            char name[64];
            s2_tune_lora_kernel_name(r->gemm, r->grad_f32, name, sizeof name);
            printf("%-16s %-8s %-7s %5d %5d %8d %5d %10.3f %9.3f %6.2fx  %d%s\n", specs[i].name,
                   r->group, name + 5, r->M, r->algos, r->rejected, r->timed, r->default_ms,
                   r->best_ms, r->best_ms > 0 ? r->default_ms / r->best_ms : 0.0, r->best,
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

static int cmd_tune(int argc, char **argv)
{
    tune_args t;
    int rc = parse_tune(argc, argv, &t);
    if (rc)
        return rc;
    if (t.help)
        return fputs(tune_help, stdout), 0;
    if (!t.n_specs)
        return usage_error("tune", "missing SPEC%s", "");
    if (t.build_only) {
        if (!t.arch)
            return usage_error("tune", "--build-only needs one --arch (sm_80, sm_86, sm_89, "
                                       "sm_90, sm_90a)%s", "");
        /* Options of the timing run: taken and dropped, they would look as if they did work. */
        const char *timing = t.db_dir ? "--db" : t.import_path ? "--import"
                           : t.export_path ? "--export" : t.seqlen ? "--seqlen"
                           : t.budget > 0 ? "--budget" : NULL;
        if (timing)
            return usage_error("tune", "%s does not go with --build-only, which times nothing: "
                                       "there is no tuning database to read, store or move and "
                                       "no timing run to size or bound (tune on a GPU for that)",
                               timing);
        return tune_build_only(&t);
    }
    if (t.arch)
        return usage_error("tune", "--arch %s: on a GPU the tuner builds for the GPU's own arch; "
                                   "--arch goes with --build-only", t.arch);
    return tune_on_device(&t);
}

/* ---------------------------------------------------------------- data */

static const char data_help[] =
    "usage: s2lora data --bytes TEXT... -o OUT.tokens\n"
    "\n"
    "Turns text files into a token file (runtime/train/data.h) with the byte-level vocabulary\n"
    "of specs/tiny-byte-512.yaml: token = byte + 8, PAD 0, BOS 1, EOS 2 (vocab 264);\n"
    "each file is one document, BOS + bytes + EOS. Written atomically. For LLaMA\n"
    "tokens use a tokenizer and s2_data_write (the trainer's data step).\n";

static int cmd_data(int argc, char **argv)
{
    const char *out = NULL;
    const char *paths[256];
    int n = 0, bytes = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return fputs(data_help, stdout), 0;
        if (!strcmp(argv[i], "--bytes"))
            bytes = 1;
        else if (!strcmp(argv[i], "-o") || !strcmp(argv[i], "--out")) {
            if (i + 1 == argc)
                return usage_error("data", "option '%s' needs a value", argv[i]);
            out = argv[++i];
        } else if (argv[i][0] == '-')
            return usage_error("data", "unknown option '%s'", argv[i]);
        else if (n == 256)
            return usage_error("data", "too many inputs (at most %s)", "256");
        else
            paths[n++] = argv[i];
    }
    if (!bytes)
        return usage_error("data", "name the vocabulary: --bytes (the byte-level one)%s", "");
    if (!n || !out)
        return usage_error("data", "missing %s", !n ? "TEXT files" : "-o OUT.tokens");
    s2_error err = {0};
    if (s2_data_from_text(paths, n, out, &err))
        return fail(&err);
    s2_data_file *f = NULL;
    if (s2_data_open(out, &f, &err))
        return fail(&err);
    printf("%s: %llu tokens in %llu documents, vocab %u\n", out, (unsigned long long)f->n_tokens,
           (unsigned long long)f->n_docs, f->vocab);
    s2_data_close(f);
    return 0;
}

/* ---------------------------------------------------------------- main */

static const char main_help[] =
    "usage: s2lora COMMAND [ARGS]\n"
    "\n"
    "Generates, builds and runs specialised CUDA kernels for LongLoRA's shifted\n"
    "sparse attention (S²-Attn) from a YAML spec.\n"
    "\n"
    "commands:\n"
    "  gen      write the generated CUDA sources of a spec\n"
    "  build    generate and NVRTC-build a spec's kernels (no GPU needed)\n"
    "  attn     run the kernels on tensors from a safetensors file\n"
    "  bench    time the kernels beside the PyTorch peers (bench attn, bench lora)\n"
    "  tune     tune the kernels on this GPU (or --build-only the space for an arch)\n"
    "  data     turn text into a token file (byte-level vocabulary)\n"
    "  init     write a freshly initialised model of a spec (HF checkpoint)\n"
    "  train    extend a LLaMA checkpoint's context with LoRA on the generated kernels\n"
    "  eval     perplexity of a model (and adapter) over a token file\n"
    "  logits   one forward (and backward) of a model, written out for peer checks\n"
    "  sp-plan  the rows P sequence-parallel ranks would hold and exchange (no GPU)\n"
    "  launch   run a command as N ranks on this host, one a GPU\n"
    "  world    print this rank's world; try the ranks' rendezvous (no GPU needed)\n"
    "  version  print versions\n"
    "Run 's2lora COMMAND --help' for a command's options.\n";

static int cmd_version(void)
{
    int maj = 0, min = 0;
    s2_error err = {0};
    printf("s2lora %s (%s)\n", S2_VERSION, S2_GEN_VERSION);
    if (s2_jit_nvrtc_version(&maj, &min, &err) == S2_OK)
        printf("NVRTC %d.%d\n", maj, min);
    else
        s2_error_clear(&err);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        fputs(main_help, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "gen"))
        return cmd_gen(argc - 2, argv + 2);
    if (!strcmp(cmd, "build"))
        return cmd_build(argc - 2, argv + 2);
    if (!strcmp(cmd, "attn"))
        return cmd_attn(argc - 2, argv + 2);
    if (!strcmp(cmd, "bench"))
        return cmd_bench(argc - 2, argv + 2);
    if (!strcmp(cmd, "tune"))
        return cmd_tune(argc - 2, argv + 2);
    if (!strcmp(cmd, "data"))
        return cmd_data(argc - 2, argv + 2);
    if (!strcmp(cmd, "train"))
        return s2_cli_train(prog, argc - 2, argv + 2);
    if (!strcmp(cmd, "eval"))
        return s2_cli_eval(prog, argc - 2, argv + 2);
    if (!strcmp(cmd, "logits"))
        return s2_cli_logits(prog, argc - 2, argv + 2);
    if (!strcmp(cmd, "init"))
        return s2_cli_init(prog, argc - 2, argv + 2);
    if (!strcmp(cmd, "sp-plan"))
        return s2_cli_sp_plan(prog, argc - 2, argv + 2);
    if (!strcmp(cmd, "launch"))
        return s2_cli_launch(prog, argc - 2, argv + 2);
    if (!strcmp(cmd, "world"))
        return s2_cli_world(prog, argc - 2, argv + 2);
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version"))
        return cmd_version();
    fprintf(stderr, "%s: unknown command '%s'\n%s", prog, cmd, main_help);
    return EXIT_USAGE;
}

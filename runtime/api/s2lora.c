/*
 * s2lora.c — libs2lora, the public C API (s2lora.h), over the layers below it: specs (gen/spec),
 * builds through the kernel cache (runtime/core/rt s2_spec_build), the tuner and its database
 * (runtime/tune), the S²-Attn launches (runtime/core/rt) and the LoRA linears (runtime/ops).
 *
 * What is here and nowhere else: every argument checked against the spec or the shape before
 * the layers below see it (they trust their callers), the mapping of s2_status to
 * s2lora_status, each context's last message and warnings, and the fixed-length batch's
 * device boundaries (cu_slot below).
 */
#include "runtime/api/s2lora.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>

#include "gen/emit.h"
#include "gen/lora_plan.h"
#include "gen/plan.h"
#include "gen/spec.h"
#include "runtime/core/jit.h"
#include "runtime/core/rt.h"
#include "runtime/ops/lora.h"
#include "runtime/tune/tune.h"
#include "runtime/tune/tune_db.h"

/* The widest augmented row of a LoRA linear (in + rp, out_total + rp): the spec's bound on
 * the widths the kernels index in int (gen/spec.h). */
#define LORA_MAX_WIDTH (1 << 20)

struct s2lora_ctx {
    s2lora_status broken; /* nonzero: s2lora_open failed with it; every call answers it */
    int has_device;
    s2_rt rt;
    char *cache_dir;      /* NULL: the default (s2_jit_cache_dir) */
    char *tune_db;        /* NULL: the cache directory */
    int use_tuned, build_threads;
    int no_cache;         /* s2lora_set_use_cache(ctx, 0): builds read and write no cache */
    s2_error err;         /* the last failure */
    s2_buf warn;          /* the last call's warnings */
    s2_lora_ctx *lora;    /* cuBLAS and the LoRA units, opened by the first s2lora_lora_create */
};

struct s2lora_spec {
    s2lora_ctx *ctx;
    s2_spec spec;
};

/* The attention's shape, for the argument checks (from a spec or a loaded handle). */
typedef struct attn_shape {
    int H, Hkv, d;
    const char *name; /* the spec's */
} attn_shape;

/* Boundaries of one fixed-length batch (T tokens in B sequences of T / B) on the device.
 * Written once, by a copy on the caller's stream from host (pinned, owned here) memory, and
 * never changed while it holds (T, B); `ready` is recorded after the copy, `used` after the
 * last launch that read it. A slot taken over for another (T, B) first waits (host) for its
 * last copy, so the pinned memory is free to rewrite, and makes the new copy's stream wait
 * (device) for its last launches; a slot reused from another stream makes that stream wait for
 * them too, so `used` always covers every launch that read it. */
#define CU_SLOTS 4
typedef struct cu_slot {
    int T, B, cap;           /* cap: int32 entries of dev and host; 0 = never allocated */
    int32_t *dev, *host;
    cudaEvent_t ready, used;
    unsigned long long tick; /* least recently used goes first */
} cu_slot;

struct s2lora_attn {
    s2lora_ctx *ctx;
    s2_attn a;
    attn_shape shape;
    char name[S2_SPEC_NAME_MAX];
    char tile[1024];
    cu_slot slot[CU_SLOTS];
    unsigned long long tick;
    void **retired; /* slot buffers outgrown (dev, host pairs), freed with the handle */
    int n_retired;
};

struct s2lora_lora {
    s2lora_ctx *ctx;
    s2_lora_dims d;
};

/* ---------------------------------------------------------------- version, status, context */

const char *s2lora_version(void) { return S2LORA_VERSION; }
int s2lora_version_number(void) { return S2LORA_VERSION_NUMBER; }

const char *s2lora_status_string(s2lora_status st)
{
    switch (st) {
    case S2LORA_OK: return "ok";
    case S2LORA_ERR_IO: return "I/O error";
    case S2LORA_ERR_PARSE: return "parse error";
    case S2LORA_ERR_SPEC: return "spec error";
    case S2LORA_ERR_INVALID: return "invalid argument";
    case S2LORA_ERR_NOMEM: return "out of memory";
    case S2LORA_ERR_BUILD: return "kernel build failed";
    case S2LORA_ERR_CACHE: return "kernel cache error";
    case S2LORA_ERR_CUDA: return "CUDA error";
    case S2LORA_ERR_NO_DEVICE: return "no CUDA device";
    case S2LORA_ERR_UNSUPPORTED: return "unsupported";
    }
    return "unknown status";
}

static s2lora_status map_status(s2_status st)
{
    switch (st) {
    case S2_OK: return S2LORA_OK;
    case S2_ERR_IO: return S2LORA_ERR_IO;
    case S2_ERR_PARSE: return S2LORA_ERR_PARSE;
    case S2_ERR_SPEC: return S2LORA_ERR_SPEC;
    case S2_ERR_INVALID: return S2LORA_ERR_INVALID;
    case S2_ERR_NOMEM: return S2LORA_ERR_NOMEM;
    case S2_ERR_NVRTC: return S2LORA_ERR_BUILD;
    case S2_ERR_CACHE: return S2LORA_ERR_CACHE;
    case S2_ERR_CUDA: return S2LORA_ERR_CUDA;
    case S2_ERR_NO_DEVICE: return S2LORA_ERR_NO_DEVICE;
    /* A result that disagreed with its reference: the device computed something wrong. */
    case S2_ERR_CHECK: return S2LORA_ERR_CUDA;
    }
    return S2LORA_ERR_INVALID;
}

/* Every call on a context starts here: the last call's message and warnings go. */
static s2lora_status begin(s2lora_ctx *c)
{
    if (c->broken) /* the open's message stays */
        return c->broken;
    s2_error_clear(&c->err);
    s2_buf_free(&c->warn);
    return S2LORA_OK;
}

/* Keeps the message on the context (one it cannot hold says out of memory). */
static s2lora_status finish(s2lora_ctx *c, s2_status st)
{
    if (st && !c->err.msg)
        s2_error_set(&c->err, st, "%s", s2_status_to_string(st));
    return map_status(st);
}

/* Whether msg opens with the function's name: "fn: ..." or "fn(...)...". */
static int names_fn(const char *msg, const char *fn)
{
    const size_t n = strlen(fn);
    return msg && !strncmp(msg, fn, n) && (msg[n] == ':' || msg[n] == '(');
}

/* finish() for function fn: a failure's message opens with fn's name, once (s2lora.h's
 * convention); a message from the layers below (a CUDA call, a build) gets it in front, one
 * that opens with it already is kept as it is. */
static s2lora_status finish_fn(s2lora_ctx *c, const char *fn, s2_status st)
{
    if (st && c->err.msg && !names_fn(c->err.msg, fn))
        s2_error_prefix(&c->err, "%s", fn);
    return finish(c, st);
}

static void warn(s2lora_ctx *c, const char *msg)
{
    if (c->warn.len)
        s2_buf_append(&c->warn, "\n", 1);
    s2_buf_append(&c->warn, msg, strlen(msg));
}

static void cache_warn(void *arg, const char *msg) { warn(arg, msg); }

static char *dup_opt(const char *s, int *oom)
{
    if (!s)
        return NULL;
    char *d = strdup(s);
    *oom |= !d;
    return d;
}

s2lora_status s2lora_open(s2lora_ctx **out, int device, const s2lora_options *options)
{
    if (!out)
        return S2LORA_ERR_INVALID;
    s2lora_ctx *c = calloc(1, sizeof *c);
    *out = c;
    if (!c)
        return S2LORA_ERR_NOMEM;
    const s2lora_options def = S2LORA_OPTIONS_INIT, *o = options ? options : &def;
    int oom = 0;
    c->cache_dir = dup_opt(o->cache_dir, &oom);
    c->tune_db = dup_opt(o->tune_db, &oom);
    c->use_tuned = o->use_tuned;
    c->build_threads = o->build_threads;
    s2_status st = S2_OK;
    if (oom)
        st = s2_error_set(&c->err, S2_ERR_NOMEM, "s2lora_open: out of memory");
    else if (o->use_tuned != 0 && o->use_tuned != 1)
        st = s2_error_set(&c->err, S2_ERR_INVALID,
                          "s2lora_open: options->use_tuned = %d; valid 0 (the plan's default "
                          "tiles) or 1 (the tuning database's)", o->use_tuned);
    else if (o->build_threads < 0 || o->build_threads > 4096)
        st = s2_error_set(&c->err, S2_ERR_INVALID,
                          "s2lora_open: options->build_threads = %d; valid 0 (every online CPU) "
                          "to 4096", o->build_threads);
    else if (device < -1)
        st = s2_error_set(&c->err, S2_ERR_INVALID,
                          "s2lora_open: device %d; valid -1 (no device) or a CUDA device number "
                          ">= 0", device);
    else if (device >= 0) {
        st = s2_rt_open(&c->rt, device, &c->err);
        if (st == S2_ERR_INVALID) /* out of range: the header's status for it */
            st = c->err.status = S2_ERR_NO_DEVICE;
        if (st)
            s2_error_prefix(&c->err, "s2lora_open(device %d)", device);
        c->has_device = !st;
        c->rt.cache_warn = cache_warn;
        c->rt.cache_warn_arg = c;
    }
    c->broken = map_status(st);
    return c->broken;
}

void s2lora_close(s2lora_ctx *c)
{
    if (!c)
        return;
    if (c->lora) {
        cudaSetDevice(c->rt.device);
        s2_lora_close(c->lora);
    }
    s2_error_clear(&c->err);
    s2_buf_free(&c->warn);
    free(c->cache_dir);
    free(c->tune_db);
    free(c);
}

s2lora_status s2lora_set_use_cache(s2lora_ctx *c, int use_cache)
{
    if (!c)
        return S2LORA_ERR_INVALID;
    s2lora_status rs = begin(c);
    if (rs)
        return rs;
    if (use_cache != 0 && use_cache != 1)
        return finish(c, s2_error_set(&c->err, S2_ERR_INVALID,
                                      "s2lora_set_use_cache: use_cache = %d; valid 0 (build "
                                      "every unit, read and write no cache) or 1 (through the "
                                      "kernel cache)", use_cache));
    c->no_cache = !use_cache;
    return S2LORA_OK;
}

const char *s2lora_errmsg(const s2lora_ctx *c)
{
    if (!c)
        return "out of memory";
    return c->err.msg ? c->err.msg : "";
}

const char *s2lora_warnings(const s2lora_ctx *c)
{
    return c && c->warn.data && !c->warn.oom ? c->warn.data : "";
}

const char *s2lora_device_name(const s2lora_ctx *c) { return c && c->has_device ? c->rt.name : ""; }
const char *s2lora_device_arch(const s2lora_ctx *c) { return c && c->has_device ? c->rt.arch : ""; }

/* The device for a call that needs one: S2_ERR_NO_DEVICE without, else made current (a thread
 * may have moved to another device since the last call). */
static s2_status need_device(s2lora_ctx *c, const char *fn)
{
    if (!c->has_device)
        return s2_error_set(&c->err, S2_ERR_NO_DEVICE,
                            "%s: this context has no device (opened with device -1); open one "
                            "with a CUDA device number for it", fn);
    return s2_rt_check(cudaSetDevice(c->rt.device), "cudaSetDevice", &c->err);
}

static s2_jit_opts jit_opts(const s2lora_ctx *c, const char *arch)
{
    return (s2_jit_opts){.arch = arch, .cache_dir = c->cache_dir, .threads = c->build_threads,
                         .no_cache = c->no_cache};
}

s2lora_status s2lora_device_alloc(s2lora_ctx *c, size_t bytes, void **ptr)
{
    if (!c)
        return S2LORA_ERR_INVALID;
    s2lora_status rs = begin(c);
    if (rs)
        return rs;
    if (!ptr)
        return finish(c, s2_error_set(&c->err, S2_ERR_INVALID, "s2lora_device_alloc: ptr is NULL"));
    *ptr = NULL;
    s2_status st = need_device(c, "s2lora_device_alloc");
    if (!st) {
        char what[96];
        snprintf(what, sizeof what, "cudaMalloc(%zu bytes)", bytes);
        st = s2_rt_check(cudaMalloc(ptr, bytes ? bytes : 1), what, &c->err);
    }
    return finish_fn(c, "s2lora_device_alloc", st);
}

void s2lora_device_free(s2lora_ctx *c, void *ptr)
{
    if (c && c->has_device && ptr) {
        cudaSetDevice(c->rt.device);
        cudaFree(ptr);
    }
}

static s2lora_status memcpy_dir(s2lora_ctx *c, void *dst, const void *src, size_t bytes,
                                enum cudaMemcpyKind kind, const char *fn)
{
    if (!c)
        return S2LORA_ERR_INVALID;
    s2lora_status rs = begin(c);
    if (rs)
        return rs;
    s2_status st = S2_OK;
    if (bytes && (!dst || !src))
        st = s2_error_set(&c->err, S2_ERR_INVALID, "%s: %s is NULL (%zu bytes to copy)", fn,
                          !dst ? "dst" : "src", bytes);
    if (!st)
        st = need_device(c, fn);
    if (!st && bytes)
        st = s2_rt_check(cudaMemcpy(dst, src, bytes, kind), fn, &c->err);
    return finish_fn(c, fn, st);
}

s2lora_status s2lora_memcpy_to_device(s2lora_ctx *c, void *dst, const void *src, size_t bytes)
{
    return memcpy_dir(c, dst, src, bytes, cudaMemcpyHostToDevice, "s2lora_memcpy_to_device");
}

s2lora_status s2lora_memcpy_to_host(s2lora_ctx *c, void *dst, const void *src, size_t bytes)
{
    return memcpy_dir(c, dst, src, bytes, cudaMemcpyDeviceToHost, "s2lora_memcpy_to_host");
}

s2lora_status s2lora_synchronize(s2lora_ctx *c, void *stream)
{
    if (!c)
        return S2LORA_ERR_INVALID;
    s2lora_status rs = begin(c);
    if (rs)
        return rs;
    s2_status st = need_device(c, "s2lora_synchronize");
    if (!st)
        st = s2_rt_check(cudaStreamSynchronize((cudaStream_t)stream),
                         "s2lora_synchronize: the stream's work", &c->err);
    return finish_fn(c, "s2lora_synchronize", st);
}

/* ---------------------------------------------------------------- specs */

static s2_status null_arg(s2lora_ctx *c, const char *fn, const char *what)
{
    return s2_error_set(&c->err, S2_ERR_INVALID, "%s: %s is NULL", fn, what);
}

/* The overrides as gen/spec takes them; *ov is heap (NULL for none). */
static s2_status overrides(s2lora_ctx *c, const char *fn, const char *const *set, int n,
                           s2_spec_override **ov)
{
    *ov = NULL;
    if (n < 0)
        return s2_error_set(&c->err, S2_ERR_INVALID, "%s: n_overrides = %d; must be >= 0", fn, n);
    if (n > 0 && !set)
        return s2_error_set(&c->err, S2_ERR_INVALID,
                            "%s: overrides is NULL with n_overrides = %d", fn, n);
    if (n == 0)
        return S2_OK;
    *ov = calloc((size_t)n, sizeof **ov);
    if (!*ov)
        return s2_error_set(&c->err, S2_ERR_NOMEM, "%s: out of memory", fn);
    for (int i = 0; i < n; i++) {
        if (!set[i])
            return s2_error_set(&c->err, S2_ERR_INVALID,
                                "%s: overrides[%d] is NULL; each is \"dotted.key=value\"", fn, i);
        (*ov)[i].text = set[i];
    }
    return S2_OK;
}

static s2lora_status spec_new(s2lora_ctx *c, const char *fn, const char *path, const char *yaml,
                              const char *name, const char *const *set, int n_set,
                              s2lora_spec **out)
{
    s2lora_status rs = begin(c);
    if (rs)
        return rs;
    if (!out)
        return finish(c, null_arg(c, fn, "spec (the result)"));
    *out = NULL;
    s2_spec_override *ov = NULL;
    s2_status st = overrides(c, fn, set, n_set, &ov);
    s2lora_spec *s = st ? NULL : calloc(1, sizeof *s);
    if (!st && !s)
        st = s2_error_set(&c->err, S2_ERR_NOMEM, "%s: out of memory", fn);
    if (!st)
        st = path ? s2_spec_load(path, ov, n_set, &s->spec, &c->err)
                  : s2_spec_load_string(yaml, name ? name : "<string>", ov, n_set, &s->spec,
                                        &c->err);
    free(ov);
    if (st) {
        free(s);
        return finish(c, st);
    }
    s->ctx = c;
    *out = s;
    return S2LORA_OK;
}

s2lora_status s2lora_spec_load(s2lora_ctx *c, const char *path, const char *const *set,
                               int n_set, s2lora_spec **spec)
{
    if (!c)
        return S2LORA_ERR_INVALID;
    if (!path) {
        s2lora_status rs = begin(c);
        return rs ? rs : finish(c, null_arg(c, "s2lora_spec_load", "path"));
    }
    return spec_new(c, "s2lora_spec_load", path, NULL, NULL, set, n_set, spec);
}

s2lora_status s2lora_spec_parse(s2lora_ctx *c, const char *yaml, size_t len, const char *name,
                                const char *const *set, int n_set, s2lora_spec **spec)
{
    if (!c)
        return S2LORA_ERR_INVALID;
    s2lora_status rs = begin(c);
    if (rs)
        return rs;
    if (!yaml)
        return finish(c, null_arg(c, "s2lora_spec_parse", "yaml"));
    if (len > S2_MAX_SPEC_BYTES || memchr(yaml, 0, len))
        return finish(c, s2_error_set(&c->err, S2_ERR_INVALID,
                                      "s2lora_spec_parse: %s: len = %zu: %s",
                                      name ? name : "<string>", len,
                                      len > S2_MAX_SPEC_BYTES
                                          ? "a spec is at most 1 MiB"
                                          : "the text holds a NUL byte before len; YAML text "
                                            "has none"));
    char *text = malloc(len + 1); /* len bytes, not necessarily NUL-terminated */
    if (!text)
        return finish(c, s2_error_set(&c->err, S2_ERR_NOMEM, "s2lora_spec_parse: out of memory"));
    memcpy(text, yaml, len);
    text[len] = 0;
    rs = spec_new(c, "s2lora_spec_parse", NULL, text, name, set, n_set, spec);
    free(text);
    return rs;
}

void s2lora_spec_free(s2lora_spec *spec) { free(spec); }

s2lora_status s2lora_spec_get_info(const s2lora_spec *spec, s2lora_spec_info *info)
{
    if (!spec)
        return S2LORA_ERR_INVALID;
    s2lora_ctx *c = spec->ctx;
    s2lora_status rs = begin(c);
    if (rs)
        return rs;
    if (!info)
        return finish(c, null_arg(c, "s2lora_spec_get_info", "info"));
    const s2_spec *s = &spec->spec;
    memset(info, 0, sizeof *info);
    snprintf(info->name, sizeof info->name, "%s", s->name);
    info->context_length = s->context_length;
    info->group_size = s->s2attn.group_size;
    info->shift = s->s2attn.shift;
    info->shift_mode = (int)s->s2attn.shift_mode;
    info->num_heads = s->model.num_heads;
    info->num_kv_heads = s->model.num_kv_heads;
    info->head_dim = s->model.head_dim;
    info->dtype = (int)s->dtype;
    info->softmax_scale = (float)s->s2attn.softmax_scale;
    info->hidden_size = s->model.hidden_size;
    info->intermediate_size = s->model.intermediate_size;
    info->num_layers = s->model.num_layers;
    info->vocab_size = s->model.vocab_size;
    info->lora_rank = s->lora.rank;
    info->lora_alpha = (float)s->lora.alpha;
    snprintf(info->hash, sizeof info->hash, "%s", s->hash_hex);
    return S2LORA_OK;
}

/* ---------------------------------------------------------------- tiles, build, tune */

/* The tile the context's device runs spec at seqlen tokens with: the tuning database's (the
 * tuner's own selection, s2_tune_select) with use_tuned, else the plan's default. An explicit
 * tune_db that cannot be read is an error; the default one missing is the default tile. */
static s2_status pick_tile(s2lora_ctx *c, const s2_spec *spec, int seqlen, s2_tune_choice *ch)
{
    if (!c->use_tuned) {
        memset(ch, 0, sizeof *ch);
        ch->tile = s2_plan_spec_default_tile(spec, c->rt.arch);
        snprintf(ch->why, sizeof ch->why, "default (use_tuned is 0)");
        return S2_OK;
    }
    const s2_jit_opts jo = jit_opts(c, c->rt.arch);
    if (!c->tune_db) {
        s2_tune_select_cached(&jo, c->rt.name, c->rt.arch, spec, seqlen, ch);
        return S2_OK;
    }
    s2_tunedb *db = NULL;
    s2_status st = s2_tunedb_open(c->tune_db, c->rt.name, &db, &c->err);
    if (st) {
        s2_error_prefix(&c->err, "options->tune_db");
        return st;
    }
    for (int w = 0; w < db->n_warnings; w++)
        warn(c, db->warnings[w]);
    s2_tune_select(db, c->rt.name, c->rt.arch, spec, seqlen, ch);
    s2_tunedb_close(db);
    return S2_OK;
}

s2lora_status s2lora_build(s2lora_ctx *c, const s2lora_spec *spec, int *built, int *cached)
{
    if (!c)
        return S2LORA_ERR_INVALID;
    s2lora_status rs = begin(c);
    if (rs)
        return rs;
    if (!spec)
        return finish(c, null_arg(c, "s2lora_build", "spec"));
    if (spec->ctx != c)
        return finish(c, s2_error_set(&c->err, S2_ERR_INVALID,
                                      "s2lora_build: spec '%s' belongs to another context",
                                      spec->spec.name));
    const s2_spec *s = &spec->spec;
    int n_built = 0, n_cached = 0;
    s2_status st = S2_OK;
    const int n_arch = c->has_device ? 1 : s->n_arch;
    for (int a = 0; a < n_arch && !st; a++) {
        const char *arch = c->has_device ? c->rt.arch : s->arch[a];
        s2_jit_opts jo = jit_opts(c, arch);
        s2_tune_choice ch;
        const s2_attn_tile *tp = NULL; /* no device: the plan's default for each arch */
        if (c->has_device) {
            st = pick_tile(c, s, s->context_length, &ch);
            tp = &ch.tile;
        }
        s2_attn_plan plan;
        s2_jit_result res[S2_EMIT_UNITS];
        memset(res, 0, sizeof res);
        if (!st)
            st = s2_spec_build(s, tp, &jo, &plan, res, &c->err);
        for (int u = 0; !st && u < S2_EMIT_UNITS; u++) {
            n_built += !res[u].cache_hit;
            n_cached += res[u].cache_hit;
            if (res[u].warning[0])
                warn(c, res[u].warning);
            s2_jit_result_free(&res[u]);
        }
        if (st)
            s2_error_prefix(&c->err, "s2lora_build(%s, %s)", s->name, arch);
    }
    if (!st && built)
        *built = n_built;
    if (!st && cached)
        *cached = n_cached;
    return finish_fn(c, "s2lora_build", st);
}

s2lora_status s2lora_tune(s2lora_ctx *c, const s2lora_spec *spec, int seqlen, double *best_ms)
{
    if (!c)
        return S2LORA_ERR_INVALID;
    s2lora_status rs = begin(c);
    if (rs)
        return rs;
    if (!spec)
        return finish(c, null_arg(c, "s2lora_tune", "spec"));
    if (seqlen < 0 || seqlen > S2_SPEC_MAX_TOKENS)
        return finish(c, s2_error_set(&c->err, S2_ERR_INVALID,
                                      "s2lora_tune: seqlen = %d; valid 0 (the spec's "
                                      "context_length, %d) or 1..%d", seqlen,
                                      spec->spec.context_length, S2_SPEC_MAX_TOKENS));
    s2_status st = need_device(c, "s2lora_tune");
    if (st)
        return finish_fn(c, "s2lora_tune", st);
    char dir[1024];
    const s2_jit_opts jo = jit_opts(c, c->rt.arch);
    if (c->tune_db)
        snprintf(dir, sizeof dir, "%s", c->tune_db);
    else
        st = s2_jit_cache_dir(&jo, dir, sizeof dir, &c->err);
    s2_tunedb *db = NULL;
    if (!st)
        st = s2_tunedb_open(dir, c->rt.name, &db, &c->err);
    s2_tune_unit_result res[S2_UNIT_ATTN_COUNT];
    s2_tune_opts o = {.seqlen = seqlen, .cache_dir = c->cache_dir};
    if (!st)
        st = s2_tune_run(&c->rt, &spec->spec, &o, db, res, &c->err);
    if (!st)
        st = s2_tunedb_save(db, &c->err);
    for (int w = 0; db && w < db->n_warnings; w++)
        warn(c, db->warnings[w]);
    s2_tunedb_close(db);
    if (!st && best_ms) {
        *best_ms = 0;
        for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++)
            *best_ms += res[u].best_ms;
    }
    if (st)
        s2_error_prefix(&c->err, "s2lora_tune(%s)", spec->spec.name);
    return finish_fn(c, "s2lora_tune", st);
}

/* ---------------------------------------------------------------- attention: argument checks */

static int misaligned(const void *p, size_t a) { return ((uintptr_t)p % a) != 0; }

/* A tensor pointer: set, and aligned to `align` bytes. */
static s2_status check_ptr(const char *fn, const char *what, const void *p, size_t align,
                           s2_error *err)
{
    if (!p)
        return s2_error_set(err, S2_ERR_INVALID, "%s: %s is NULL", fn, what);
    if (misaligned(p, align))
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: %s = %p is not %zu-byte aligned; the kernels need it (every "
                            "tensor from cudaMalloc is)", fn, what, p, align);
    return S2_OK;
}

/* A tensor's strides: packed, or 0 for packed. */
static s2_status check_strides(const char *fn, const char *t, const char *shape, int64_t st,
                               int64_t sh, int heads, int d, s2_error *err)
{
    const int64_t want_t = (int64_t)heads * d, want_h = d;
    if ((st == 0 || st == want_t) && (sh == 0 || sh == want_h))
        return S2_OK;
    return s2_error_set(err, S2_ERR_INVALID,
                        "%s: %s %s has %s_stride_token %lld and %s_stride_head %lld; the kernels "
                        "take packed tensors: %s_stride_token %lld (heads x d) or 0 and "
                        "%s_stride_head %d (d) or 0 (copy it to a packed tensor first)",
                        fn, t, shape, t, (long long)st, t, (long long)sh, t, (long long)want_t,
                        t, d);
}

/*
 * The checks of s2lora_attn_forward (grads NULL) and s2lora_attn_backward on args against
 * shape; ws_need > 0 also checks the workspace's size. On success bt holds T, B and
 * max_seqlen (its device boundaries are the caller's to set).
 */
static s2_status check_attn(const char *fn, const attn_shape *sh, const s2lora_attn_args *a,
                            const s2lora_attn_grads *g, size_t ws_need, s2_attn_batch *bt,
                            s2_error *err)
{
    memset(bt, 0, sizeof *bt);
    if (!a)
        return s2_error_set(err, S2_ERR_INVALID, "%s: args is NULL", fn);
    const int T = a->tokens, B = a->batch;
    if (T < 1)
        return s2_error_set(err, S2_ERR_INVALID, "%s: args->tokens = %d; must be >= 1", fn, T);
    if (B < 1 || B == INT32_MAX)
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: args->batch = %d; must be 1..%d (sequences in the tokens)", fn,
                            B, INT32_MAX - 1);
    int max = a->max_seqlen;
    if (!a->cu_seqlens) {
        if (T % B)
            return s2_error_set(err, S2_ERR_INVALID,
                                "%s: args->batch = %d does not divide args->tokens = %d; with "
                                "cu_seqlens NULL the batch is %d sequences of tokens / batch "
                                "tokens (give cu_seqlens for sequences of different lengths)",
                                fn, B, T, B);
        if (a->cu_seqlens_host)
            return s2_error_set(err, S2_ERR_INVALID,
                                "%s: args->cu_seqlens_host is set but args->cu_seqlens is NULL; "
                                "the kernels read the device copy: give both, or neither for "
                                "%d sequences of %d tokens", fn, B, T / B);
        if (max != 0 && max != T / B)
            return s2_error_set(err, S2_ERR_INVALID,
                                "%s: args->max_seqlen = %d; with cu_seqlens NULL every sequence "
                                "has tokens / batch = %d tokens: give 0 or %d", fn, max, T / B,
                                T / B);
        max = T / B;
    } else {
        const long min_max = ((long)T + B - 1) / B;
        if (misaligned(a->cu_seqlens, 4))
            return s2_error_set(err, S2_ERR_INVALID, "%s: args->cu_seqlens = %p is not 4-byte "
                                "aligned (int32)", fn, (const void *)a->cu_seqlens);
        if (max < min_max || max > T)
            return s2_error_set(err, S2_ERR_INVALID,
                                "%s: args->max_seqlen = %d; for %d tokens in %d sequences the "
                                "longest has %ld..%d tokens", fn, max, T, B, min_max, T);
        if (a->cu_seqlens_host) {
            if (misaligned(a->cu_seqlens_host, 4))
                return s2_error_set(err, S2_ERR_INVALID,
                                    "%s: args->cu_seqlens_host = %p is not 4-byte aligned (int32)",
                                    fn, (const void *)a->cu_seqlens_host);
            s2_status st = s2_attn_batch_init(bt, a->cu_seqlens_host, B, T,
                                              "args->cu_seqlens_host", err);
            if (st) {
                s2_error_prefix(err, "%s", fn);
                return st;
            }
            if (bt->max_seqlen > max) {
                int b = 0;
                while (a->cu_seqlens_host[b + 1] - a->cu_seqlens_host[b] != bt->max_seqlen)
                    b++;
                return s2_error_set(err, S2_ERR_INVALID,
                                    "%s: sequence %d of args->cu_seqlens_host has %d tokens "
                                    "(%d..%d), more than args->max_seqlen = %d; max_seqlen must "
                                    "be at least the longest", fn, b, bt->max_seqlen,
                                    a->cu_seqlens_host[b], a->cu_seqlens_host[b + 1], max);
            }
        }
    }
    char qs[96], ks[96];
    snprintf(qs, sizeof qs, "[T=%d, H=%d, d=%d]", T, sh->H, sh->d);
    snprintf(ks, sizeof ks, "[T=%d, Hkv=%d, d=%d]", T, sh->Hkv, sh->d);
    s2_status st = S2_OK;
    struct {
        const char *name, *what;
        const void *p;
        size_t align;
    } ptrs[] = {{"q", "args->q", a->q, 16},  {"k", "args->k", a->k, 16},
                {"v", "args->v", a->v, 16},  {"o", "args->o", a->o, 16},
                {"lse", "args->lse", a->lse, 4}};
    for (size_t i = 0; !st && i < sizeof ptrs / sizeof ptrs[0]; i++)
        st = check_ptr(fn, ptrs[i].what, ptrs[i].p, ptrs[i].align, err);
    if (!st)
        st = check_strides(fn, "q", qs, a->q_stride_token, a->q_stride_head, sh->H, sh->d, err);
    if (!st)
        st = check_strides(fn, "k", ks, a->k_stride_token, a->k_stride_head, sh->Hkv, sh->d, err);
    if (!st)
        st = check_strides(fn, "v", ks, a->v_stride_token, a->v_stride_head, sh->Hkv, sh->d, err);
    if (!st)
        st = check_strides(fn, "o", qs, a->o_stride_token, a->o_stride_head, sh->H, sh->d, err);
    if (st || !g)
        goto done;
    struct {
        const char *what;
        const void *p;
    } gp[] = {{"grads->dout", g->dout}, {"grads->dq", g->dq}, {"grads->dk", g->dk},
              {"grads->dv", g->dv}, {"grads->workspace", g->workspace}};
    for (size_t i = 0; !st && i < sizeof gp / sizeof gp[0]; i++)
        st = check_ptr(fn, gp[i].what, gp[i].p, 16, err);
    if (!st)
        st = check_strides(fn, "dout", qs, g->dout_stride_token, g->dout_stride_head, sh->H,
                           sh->d, err);
    if (!st)
        st = check_strides(fn, "dq", qs, g->dq_stride_token, g->dq_stride_head, sh->H, sh->d, err);
    if (!st)
        st = check_strides(fn, "dk", ks, g->dk_stride_token, g->dk_stride_head, sh->Hkv, sh->d,
                           err);
    if (!st)
        st = check_strides(fn, "dv", ks, g->dv_stride_token, g->dv_stride_head, sh->Hkv, sh->d,
                           err);
    if (!st && ws_need && g->workspace_bytes < ws_need)
        st = s2_error_set(err, S2_ERR_INVALID,
                          "%s: grads->workspace_bytes = %zu; the backward of %d tokens needs "
                          "%zu (s2lora_attn_workspace_bytes)", fn, g->workspace_bytes, T,
                          ws_need);
done:
    if (st)
        return st;
    bt->T = T;
    bt->B = B;
    bt->max_seqlen = max;
    bt->d_cu_seqlens = a->cu_seqlens;
    return S2_OK;
}

static attn_shape spec_shape(const s2_spec *s)
{
    return (attn_shape){.H = s->model.num_heads, .Hkv = s->model.num_kv_heads,
                        .d = s->model.head_dim, .name = s->name};
}

s2lora_status s2lora_attn_check_args(const s2lora_spec *spec, const s2lora_attn_args *args,
                                     const s2lora_attn_grads *grads)
{
    if (!spec)
        return S2LORA_ERR_INVALID;
    s2lora_ctx *c = spec->ctx;
    s2lora_status rs = begin(c);
    if (rs)
        return rs;
    const attn_shape sh = spec_shape(&spec->spec);
    s2_attn_batch bt;
    return finish(c, check_attn(grads ? "s2lora_attn_backward" : "s2lora_attn_forward", &sh,
                                args, grads, 0, &bt, &c->err));
}

/* ---------------------------------------------------------------- attention: handles */

/* The tile tile_text gives on arch: the plan's default for spec and arch with the text's keys
 * applied (arch NULL: the text alone is checked, against every arch, as without a device). */
static s2_status given_tile(const s2_spec *spec, const char *text, const char *arch,
                            s2_attn_tile *t, s2_error *err)
{
    s2_status st = s2_plan_check_tile_text(text, arch, err);
    if (!st && arch) {
        *t = s2_plan_spec_default_tile(spec, arch);
        st = s2_plan_parse_tile(text, t, err);
    }
    return st;
}

/* A handle for spec on the context's device: with tile_text NULL the tile pick_tile picks for
 * seqlen tokens, else the one tile_text gives (given_tile). */
static s2lora_status attn_new(s2lora_ctx *c, const s2lora_spec *spec, int seqlen,
                              const char *tile_text, s2lora_attn **out, const char *fn)
{
    if (!c)
        return S2LORA_ERR_INVALID;
    s2lora_status rs = begin(c);
    if (rs)
        return rs;
    if (!out)
        return finish(c, null_arg(c, fn, "attn (the result)"));
    *out = NULL;
    if (!spec)
        return finish(c, null_arg(c, fn, "spec"));
    if (spec->ctx != c)
        return finish(c, s2_error_set(&c->err, S2_ERR_INVALID,
                                      "%s: spec '%s' belongs to another context", fn,
                                      spec->spec.name));
    if (seqlen < 0 || seqlen > S2_SPEC_MAX_TOKENS)
        return finish(c, s2_error_set(&c->err, S2_ERR_INVALID,
                                      "%s: seqlen = %d; valid 0 (the spec's context_length, %d) "
                                      "or 1..%d", fn, seqlen, spec->spec.context_length,
                                      S2_SPEC_MAX_TOKENS));
    const s2_spec *s = &spec->spec;
    s2_tune_choice ch;
    s2_status st = S2_OK;
    if (tile_text) { /* the text's keys and values, before the device */
        st = given_tile(s, tile_text, NULL, &ch.tile, &c->err);
        if (st) {
            s2_error_prefix(&c->err, "%s(%s)", fn, s->name);
            return finish(c, st);
        }
    }
    st = need_device(c, fn);
    if (st)
        return finish_fn(c, fn, st);
    s2lora_attn *h = calloc(1, sizeof *h);
    if (!h)
        return finish(c, s2_error_set(&c->err, S2_ERR_NOMEM, "%s: out of memory", fn));
    if (tile_text) {
        memset(&ch, 0, sizeof ch);
        snprintf(ch.why, sizeof ch.why, "given");
        st = given_tile(s, tile_text, c->rt.arch, &ch.tile, &c->err);
    } else {
        st = pick_tile(c, s, seqlen ? seqlen : s->context_length, &ch);
    }
    const s2_jit_opts jo = jit_opts(c, c->rt.arch);
    if (!st)
        st = s2_attn_load(&h->a, &c->rt, s, &ch.tile, &jo, &c->err);
    if (st) {
        s2_error_prefix(&c->err, "%s(%s)", fn, s->name);
        free(h);
        return finish_fn(c, fn, st);
    }
    h->ctx = c;
    snprintf(h->name, sizeof h->name, "%s", s->name);
    h->shape = spec_shape(s);
    h->shape.name = h->name;
    char ts[S2_PLAN_TILE_STR_MAX];
    snprintf(h->tile, sizeof h->tile, "%s (%s)", s2_plan_tile_str(&h->a.plan.tile, ts, sizeof ts),
             ch.why);
    *out = h;
    return S2LORA_OK;
}

s2lora_status s2lora_attn_create(s2lora_ctx *c, const s2lora_spec *spec, s2lora_attn **attn)
{
    return attn_new(c, spec, 0, NULL, attn, "s2lora_attn_create");
}

s2lora_status s2lora_attn_create_seqlen(s2lora_ctx *c, const s2lora_spec *spec, int seqlen,
                                        s2lora_attn **attn)
{
    return attn_new(c, spec, seqlen, NULL, attn, "s2lora_attn_create_seqlen");
}

s2lora_status s2lora_attn_create_tile(s2lora_ctx *c, const s2lora_spec *spec,
                                      const char *tile_text, s2lora_attn **attn)
{
    if (!c)
        return S2LORA_ERR_INVALID;
    if (!tile_text) {
        s2lora_status rs = begin(c);
        if (rs)
            return rs;
        if (attn)
            *attn = NULL;
        return finish(c, null_arg(c, "s2lora_attn_create_tile", "tile_text"));
    }
    return attn_new(c, spec, 0, tile_text, attn, "s2lora_attn_create_tile");
}

const char *s2lora_attn_tile(const s2lora_attn *h) { return h ? h->tile : ""; }

void s2lora_attn_free(s2lora_attn *h)
{
    if (!h)
        return;
    cudaSetDevice(h->ctx->rt.device);
    for (int i = 0; i < CU_SLOTS; i++) {
        cu_slot *s = &h->slot[i];
        if (!s->cap)
            continue;
        cudaEventSynchronize(s->used); /* launches may still read dev */
        cudaEventSynchronize(s->ready);
        cudaEventDestroy(s->used);
        cudaEventDestroy(s->ready);
        cudaFree(s->dev);
        cudaFreeHost(s->host);
    }
    for (int i = 0; i < h->n_retired; i += 2) { /* their last readers preceded a slot's events */
        cudaFree(h->retired[i]);
        cudaFreeHost(h->retired[i + 1]);
    }
    free(h->retired);
    s2_attn_free(&h->a);
    free(h);
}

size_t s2lora_attn_workspace_bytes(const s2lora_attn *h, int tokens)
{
    return h && tokens >= 1 ? s2_attn_workspace_bytes(&h->a, tokens) : 0;
}

/* A slot's buffers for at least n entries (the old ones retired: freeing them would
 * synchronise the device). */
static s2_status slot_grow(s2lora_attn *h, cu_slot *s, int n, s2_error *err)
{
    int cap = 64;
    while (cap < n && cap <= INT32_MAX / 2)
        cap *= 2;
    if (cap < n)
        cap = n;
    int32_t *dev = NULL, *host = NULL;
    cudaEvent_t ready = s->ready, used = s->used;
    void **r = realloc(h->retired, sizeof *r * (size_t)(h->n_retired + 2));
    if (!r)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    h->retired = r;
    s2_status st = s2_rt_check(cudaMalloc((void **)&dev, sizeof(int32_t) * (size_t)cap),
                               "cudaMalloc (fixed-length cu_seqlens)", err);
    if (!st)
        st = s2_rt_check(cudaMallocHost((void **)&host, sizeof(int32_t) * (size_t)cap),
                         "cudaMallocHost (fixed-length cu_seqlens)", err);
    if (!st && !s->cap)
        st = s2_rt_check(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming),
                         "cudaEventCreate (cu_seqlens copy)", err);
    if (!st && !s->cap &&
        (st = s2_rt_check(cudaEventCreateWithFlags(&used, cudaEventDisableTiming),
                          "cudaEventCreate (cu_seqlens use)", err)))
        cudaEventDestroy(ready);
    if (st) { /* the slot is as it was */
        cudaFree(dev);
        cudaFreeHost(host);
        return st;
    }
    if (s->cap) {
        r[h->n_retired++] = s->dev;
        r[h->n_retired++] = s->host;
    }
    s->dev = dev, s->host = host, s->cap = cap;
    s->ready = ready, s->used = used;
    return S2_OK;
}

/* The device boundaries of B sequences of T / B tokens, ordered before what `stream` launches
 * next. */
static s2_status fixed_cu(s2lora_attn *h, int T, int B, cudaStream_t stream, cu_slot **out,
                          s2_error *err)
{
    cu_slot *s = NULL;
    for (int i = 0; i < CU_SLOTS && !s; i++)
        if (h->slot[i].cap && h->slot[i].T == T && h->slot[i].B == B)
            s = &h->slot[i];
    s2_status st = S2_OK;
    if (s) { /* written: wait for the copy and for other streams' readers (see cu_slot) */
        st = s2_rt_check(cudaStreamWaitEvent(stream, s->ready, 0), "cudaStreamWaitEvent", err);
        if (!st)
            st = s2_rt_check(cudaStreamWaitEvent(stream, s->used, 0), "cudaStreamWaitEvent", err);
    } else { /* an empty slot, else the least recently used */
        s = &h->slot[0];
        for (int i = 1; i < CU_SLOTS && s->cap; i++)
            if (!h->slot[i].cap || h->slot[i].tick < s->tick)
                s = &h->slot[i];
        if (s->cap) { /* taken over: its last copy done (host), its readers first (device) */
            st = s2_rt_check(cudaEventSynchronize(s->ready), "cudaEventSynchronize", err);
            if (!st)
                st = s2_rt_check(cudaStreamWaitEvent(stream, s->used, 0), "cudaStreamWaitEvent",
                                 err);
        }
        s->T = s->B = 0;
        if (!st && s->cap < B + 1)
            st = slot_grow(h, s, B + 1, err);
        if (st)
            return st;
        const int n = T / B;
        for (int b = 0; b <= B; b++)
            s->host[b] = b * n;
        st = s2_rt_check(cudaMemcpyAsync(s->dev, s->host, sizeof(int32_t) * (size_t)(B + 1),
                                         cudaMemcpyHostToDevice, stream),
                         "cudaMemcpyAsync (fixed-length cu_seqlens)", err);
        if (!st)
            st = s2_rt_check(cudaEventRecord(s->ready, stream), "cudaEventRecord", err);
        if (st)
            return st;
        s->T = T, s->B = B;
    }
    s->tick = ++h->tick;
    *out = s;
    return st;
}

/* What forward and backward share: checks, the device, the fixed-length boundaries. */
static s2_status attn_prepare(s2lora_attn *h, const char *fn, const s2lora_attn_args *a,
                              const s2lora_attn_grads *g, cudaStream_t stream, s2_attn_batch *bt,
                              cu_slot **slot)
{
    s2lora_ctx *c = h->ctx;
    *slot = NULL;
    size_t ws = 0;
    if (g && a && a->tokens >= 1)
        ws = s2_attn_workspace_bytes(&h->a, a->tokens);
    s2_status st = check_attn(fn, &h->shape, a, g, ws, bt, &c->err);
    if (!st)
        st = need_device(c, fn);
    if (!st && !a->cu_seqlens) {
        st = fixed_cu(h, bt->T, bt->B, stream, slot, &c->err);
        if (!st)
            bt->d_cu_seqlens = (*slot)->dev;
    }
    return st;
}

/* After the launches: the slot's `used` covers them. */
static s2_status attn_done(s2lora_attn *h, cu_slot *slot, cudaStream_t stream, s2_status st)
{
    if (slot) {
        s2_status st2 = s2_rt_check(cudaEventRecord(slot->used, stream), "cudaEventRecord",
                                    st ? NULL : &h->ctx->err);
        if (!st)
            st = st2;
    }
    return st;
}

s2lora_status s2lora_attn_forward(s2lora_attn *h, const s2lora_attn_args *a, void *stream)
{
    if (!h)
        return S2LORA_ERR_INVALID;
    s2lora_ctx *c = h->ctx;
    s2lora_status rs = begin(c);
    if (rs)
        return rs;
    const cudaStream_t s = (cudaStream_t)stream;
    s2_attn_batch bt;
    cu_slot *slot;
    s2_status st = attn_prepare(h, "s2lora_attn_forward", a, NULL, s, &bt, &slot);
    if (!st)
        st = attn_done(h, slot, s,
                       s2_attn_forward(&h->a, &bt, a->q, a->k, a->v, a->o, a->lse, s, &c->err));
    return finish_fn(c, "s2lora_attn_forward", st);
}

s2lora_status s2lora_attn_backward(s2lora_attn *h, const s2lora_attn_args *a,
                                   const s2lora_attn_grads *g, void *stream)
{
    if (!h)
        return S2LORA_ERR_INVALID;
    s2lora_ctx *c = h->ctx;
    s2lora_status rs = begin(c);
    if (rs)
        return rs;
    if (!g)
        return finish(c, null_arg(c, "s2lora_attn_backward", "grads"));
    const cudaStream_t s = (cudaStream_t)stream;
    s2_attn_batch bt;
    cu_slot *slot;
    s2_status st = attn_prepare(h, "s2lora_attn_backward", a, g, s, &bt, &slot);
    if (!st)
        st = attn_done(h, slot, s,
                       s2_attn_backward(&h->a, &bt, a->q, a->k, a->v, a->o, a->lse, g->dout,
                                        g->workspace, g->dq, g->dk, g->dv, s, &c->err));
    return finish_fn(c, "s2lora_attn_backward", st);
}

/* ---------------------------------------------------------------- LoRA */

int s2lora_lora_rp(int n_proj, int rank)
{
    if (n_proj < 1 || n_proj > 3 || rank < 1 || rank > S2_SPEC_MAX_RANK)
        return 0;
    return s2_lora_rp(n_proj * rank);
}

static s2_status check_lora_shape(const s2lora_lora_shape *sh, s2_error *err)
{
    const char *fn = "s2lora_lora_create";
    if (!sh)
        return s2_error_set(err, S2_ERR_INVALID, "%s: shape is NULL", fn);
    if (sh->tokens < 1)
        return s2_error_set(err, S2_ERR_INVALID, "%s: shape->tokens = %d; must be >= 1", fn,
                            sh->tokens);
    if (sh->n_proj < 1 || sh->n_proj > 3)
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: shape->n_proj = %d; valid 1..3 (projections reading one x)", fn,
                            sh->n_proj);
    if (sh->rank < 1 || sh->rank > S2_SPEC_MAX_RANK)
        return s2_error_set(err, S2_ERR_INVALID, "%s: shape->rank = %d; valid 1..%d", fn,
                            sh->rank, S2_SPEC_MAX_RANK);
    const int rp = s2lora_lora_rp(sh->n_proj, sh->rank);
    if (sh->in < 1 || sh->in > LORA_MAX_WIDTH - rp)
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: shape->in = %d; valid 1..%d (in + rp, rp = %d for %d x rank %d, "
                            "at most %d)", fn, sh->in, LORA_MAX_WIDTH - rp, rp, sh->n_proj,
                            sh->rank, LORA_MAX_WIDTH);
    long total = 0;
    for (int i = 0; i < sh->n_proj; i++) {
        if (sh->out[i] < 1 || sh->out[i] > LORA_MAX_WIDTH)
            return s2_error_set(err, S2_ERR_INVALID, "%s: shape->out[%d] = %d; valid 1..%d", fn,
                                i, sh->out[i], LORA_MAX_WIDTH - rp);
        total += sh->out[i];
    }
    if (total + rp > LORA_MAX_WIDTH)
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: shape->out sums to %ld; with rp = %d the augmented rows of dy "
                            "and W would be %ld wide, more than %d", fn, total, rp, total + rp,
                            LORA_MAX_WIDTH);
    if (!(sh->alpha >= S2_SPEC_REAL_MIN && sh->alpha <= S2_SPEC_REAL_MAX))
        return s2_error_set(err, S2_ERR_INVALID, "%s: shape->alpha = %g; valid %g..%g", fn,
                            (double)sh->alpha, S2_SPEC_REAL_MIN, S2_SPEC_REAL_MAX);
    if (sh->dtype != 0 && sh->dtype != 1)
        return s2_error_set(err, S2_ERR_INVALID, "%s: shape->dtype = %d; valid 0 (bf16) or 1 "
                            "(fp16)", fn, sh->dtype);
    if (!(sh->dropout == 0 ||
          (sh->dropout >= S2_SPEC_DROPOUT_MIN && sh->dropout <= S2_SPEC_DROPOUT_MAX)))
        return s2_error_set(err, S2_ERR_INVALID, "%s: shape->dropout = %g; valid 0 or %g..%g",
                            fn, (double)sh->dropout, S2_SPEC_DROPOUT_MIN, S2_SPEC_DROPOUT_MAX);
    if (sh->layer < 0 || sh->layer >= (1 << 28))
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: shape->layer = %d; valid 0..%d (the mask's stream is layer x 8 "
                            "+ projection)", fn, sh->layer, (1 << 28) - 1);
    if (sh->grad_f32 != 0 && sh->grad_f32 != 1)
        return s2_error_set(err, S2_ERR_INVALID, "%s: shape->grad_f32 = %d; valid 0 or 1", fn,
                            sh->grad_f32);
    if (!isfinite(sh->grad_beta))
        return s2_error_set(err, S2_ERR_INVALID, "%s: shape->grad_beta = %g; must be finite", fn,
                            (double)sh->grad_beta);
    if (!sh->grad_f32 && sh->grad_beta != 0)
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: shape->grad_beta = %g with grad_f32 = 0; dtype gradients are "
                            "overwritten: give 0, or grad_f32 = 1 to accumulate", fn,
                            (double)sh->grad_beta);
    return S2_OK;
}

s2lora_status s2lora_lora_create(s2lora_ctx *c, const s2lora_lora_shape *sh, s2lora_lora **out)
{
    if (!c)
        return S2LORA_ERR_INVALID;
    s2lora_status rs = begin(c);
    if (rs)
        return rs;
    if (!out)
        return finish(c, null_arg(c, "s2lora_lora_create", "lora (the result)"));
    *out = NULL;
    s2_status st = check_lora_shape(sh, &c->err);
    if (!st)
        st = need_device(c, "s2lora_lora_create");
    if (!st && !c->lora) {
        st = s2_lora_open(&c->lora, &c->rt, c->cache_dir, &c->err);
        /* runtime/core/blas.c's refusal when cuBLAS cannot be loaded: the call is valid, but
         * this installation cannot serve it */
        if (st == S2_ERR_CUDA && c->err.msg && !strncmp(c->err.msg, "cannot load cuBLAS", 18)) {
            s2_error_prefix(&c->err, "s2lora_lora_create");
            return S2LORA_ERR_UNSUPPORTED;
        }
    }
    s2lora_lora *l = st ? NULL : calloc(1, sizeof *l);
    if (!st && !l)
        st = s2_error_set(&c->err, S2_ERR_NOMEM, "s2lora_lora_create: out of memory");
    if (st)
        return finish_fn(c, "s2lora_lora_create", st);
    s2_lora_dims *d = &l->d;
    d->M = sh->tokens;
    d->in = sh->in;
    d->n_proj = sh->n_proj;
    for (int i = 0; i < sh->n_proj; i++) {
        d->out[i] = sh->out[i];
        d->out_total += sh->out[i];
        d->stream[i] = (unsigned)sh->layer * 8u + (unsigned)i;
    }
    d->r = sh->rank;
    d->rp = s2lora_lora_rp(sh->n_proj, sh->rank);
    d->scale = sh->alpha / (float)sh->rank;
    d->dtype = sh->dtype ? S2_DTYPE_FP16 : S2_DTYPE_BF16;
    d->dropout = sh->dropout;
    d->seed = sh->seed;
    d->grad_f32 = sh->grad_f32;
    d->grad_beta = sh->grad_beta;
    if (c->use_tuned) { /* the tuner's cuBLAS algorithms for this shape, where it has them */
        const s2_jit_opts jo = jit_opts(c, c->rt.arch);
        s2_tunedb *db = NULL;
        if (!c->tune_db)
            s2_tune_lora_select_cached(&jo, c->rt.name, c->rt.arch, d, NULL, 0);
        else if ((st = s2_tunedb_open(c->tune_db, c->rt.name, &db, &c->err)) == S2_OK) {
            s2_tune_lora_select(db, c->rt.name, c->rt.arch, d, NULL, 0);
            s2_tunedb_close(db);
        } else {
            s2_error_prefix(&c->err, "s2lora_lora_create: options->tune_db");
            free(l);
            return finish_fn(c, "s2lora_lora_create", st);
        }
    }
    l->ctx = c;
    *out = l;
    return S2LORA_OK;
}

void s2lora_lora_free(s2lora_lora *l) { free(l); }

size_t s2lora_lora_workspace_bytes(const s2lora_lora *l)
{
    return l ? s2_lora_workspace_bytes(&l->d) : 0;
}

/* Checks the named device pointers (name, pointer pairs ended by a null name: (const char *)NULL,
 * since a bare NULL may be an int where va_arg reads a pointer). */
__attribute__((sentinel)) static s2_status check_ptrs(const char *fn, s2_error *err,
                                                      const char *name, const void *p, ...)
{
    va_list ap;
    va_start(ap, p);
    s2_status st = S2_OK;
    while (name && !st) {
        st = check_ptr(fn, name, p, 16, err);
        name = va_arg(ap, const char *);
        if (name)
            p = va_arg(ap, const void *);
    }
    va_end(ap);
    return st;
}

static s2_status lora_ws(const s2lora_lora *l, const char *fn, const void *ws, s2_error *err)
{
    if (s2_lora_workspace_bytes(&l->d) && !ws)
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: workspace is NULL; this linear needs %zu bytes "
                            "(s2lora_lora_workspace_bytes)", fn, s2_lora_workspace_bytes(&l->d));
    if (ws && misaligned(ws, 16))
        return s2_error_set(err, S2_ERR_INVALID, "%s: workspace = %p is not 16-byte aligned", fn,
                            ws);
    return S2_OK;
}

s2lora_status s2lora_lora_pack_weights(s2lora_lora *l, const void *w, const void *a,
                                       const void *b, void *wc, void *stream)
{
    if (!l)
        return S2LORA_ERR_INVALID;
    s2lora_ctx *c = l->ctx;
    s2lora_status rs = begin(c);
    if (rs)
        return rs;
    const char *fn = "s2lora_lora_pack_weights";
    s2_status st = check_ptrs(fn, &c->err, "w", w, "a", a, "b", b, "wc", wc, (const char *)NULL);
    if (!st)
        st = need_device(c, fn);
    if (st)
        return finish_fn(c, fn, st);
    const s2_lora_dims *d = &l->d;
    const cudaStream_t s = (cudaStream_t)stream;
    const size_t es = 2, lx = (size_t)(d->in + d->rp), in = (size_t)d->in, r = (size_t)d->r;
    char *dst = wc;
    st = s2_rt_check(cudaMemsetAsync(wc, 0, (size_t)(d->out_total + d->rp) * lx * es, s),
                     "zeroing wc", &c->err);
    if (!st) /* W: rows [0, out_total), columns [0, in) */
        st = s2_rt_check(cudaMemcpy2DAsync(dst, lx * es, w, in * es, in * es,
                                           (size_t)d->out_total, cudaMemcpyDeviceToDevice, s),
                         "copying W into wc", &c->err);
    for (int i = 0, off = 0; !st && i < d->n_proj; off += d->out[i], i++) /* B_i, diagonal */
        st = s2_rt_check(cudaMemcpy2DAsync(dst + ((size_t)off * lx + in + i * r) * es, lx * es,
                                           (const char *)b + (size_t)off * r * es, r * es, r * es,
                                           (size_t)d->out[i], cudaMemcpyDeviceToDevice, s),
                         "copying B into wc", &c->err);
    if (!st) /* the stacked A below: rows [out_total, out_total + n_proj r) */
        st = s2_rt_check(cudaMemcpy2DAsync(dst + (size_t)d->out_total * lx * es, lx * es, a,
                                           in * es, in * es, (size_t)d->n_proj * r,
                                           cudaMemcpyDeviceToDevice, s),
                         "copying A into wc", &c->err);
    return finish_fn(c, fn, st);
}

s2lora_status s2lora_lora_forward(s2lora_lora *l, void *xa, const void *wc, void *y,
                                  void *workspace, void *stream)
{
    if (!l)
        return S2LORA_ERR_INVALID;
    s2lora_ctx *c = l->ctx;
    s2lora_status rs = begin(c);
    if (rs)
        return rs;
    const char *fn = "s2lora_lora_forward";
    s2_status st = check_ptrs(fn, &c->err, "xa", xa, "wc", wc, "y", y, (const char *)NULL);
    if (!st)
        st = lora_ws(l, fn, workspace, &c->err);
    if (!st)
        st = need_device(c, fn);
    if (!st)
        st = s2_lora_forward(c->lora, &l->d, xa, wc, y, workspace, (cudaStream_t)stream, &c->err);
    return finish_fn(c, fn, st);
}

s2lora_status s2lora_lora_backward(s2lora_lora *l, const void *xa, const void *wc, void *dya,
                                   void *dxv, void *da, void *db, void *workspace, void *stream)
{
    if (!l)
        return S2LORA_ERR_INVALID;
    s2lora_ctx *c = l->ctx;
    s2lora_status rs = begin(c);
    if (rs)
        return rs;
    const char *fn = "s2lora_lora_backward";
    s2_status st = check_ptrs(fn, &c->err, "xa", xa, "wc", wc, "dya", dya, "dxv", dxv, "da", da,
                              "db", db, (const char *)NULL);
    if (!st)
        st = lora_ws(l, fn, workspace, &c->err);
    if (!st)
        st = need_device(c, fn);
    if (!st)
        st = s2_lora_backward(c->lora, &l->d, xa, wc, dya, dxv, da, db, workspace,
                              (cudaStream_t)stream, &c->err);
    return finish_fn(c, fn, st);
}

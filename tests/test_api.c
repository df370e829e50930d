/*
 * test_api.c — libs2lora's public API (runtime/api/s2lora.h) without a GPU: every context is
 * opened with device -1, or expects S2LORA_ERR_NO_DEVICE. Versions, status names, messages,
 * specs from files and strings with overrides, their values against the loader's, builds for the
 * spec's arches through the cache (and its warnings), and the argument checks of the attention
 * and LoRA entry points.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <s2lora.h>

#include "gen/spec.h"
#include "tmpdir.h"

#ifndef S2_SOURCE_DIR
#error "S2_SOURCE_DIR must name the repository root"
#endif
#define SPEC(name) S2_SOURCE_DIR "/specs/" name

static s2lora_ctx *open_none(void)
{
    s2lora_ctx *c = NULL;
    s2lora_status st = s2lora_open(&c, -1, NULL);
    cr_assert_eq(st, S2LORA_OK, "s2lora_open(-1): %s", s2lora_errmsg(c));
    cr_assert_not_null(c);
    return c;
}

/* Asserts st is want and the context's message holds every phrase given (NULL-terminated). */
static void expect(s2lora_ctx *c, s2lora_status st, s2lora_status want, ...)
{
    const char *msg = s2lora_errmsg(c);
    cr_assert_eq(st, want, "status %d (%s), want %d; message: %s", st, s2lora_status_string(st),
                 want, msg);
    va_list ap;
    va_start(ap, want);
    for (const char *p = va_arg(ap, const char *); p; p = va_arg(ap, const char *))
        cr_assert(strstr(msg, p), "message '%s' lacks '%s'", msg, p);
    va_end(ap);
}

static s2lora_spec *load(s2lora_ctx *c, const char *path, const char *const *set, int n)
{
    s2lora_spec *s = NULL;
    s2lora_status st = s2lora_spec_load(c, path, set, n, &s);
    cr_assert_eq(st, S2LORA_OK, "%s: %s", path, s2lora_errmsg(c));
    cr_assert_str_eq(s2lora_errmsg(c), "");
    return s;
}

/* ---------------------------------------------------------------- versions, statuses */

Test(api, version_macros_match_the_library)
{
    cr_assert_str_eq(s2lora_version(), S2LORA_VERSION);
    cr_assert_eq(s2lora_version_number(), S2LORA_VERSION_NUMBER);
    int maj, min, pat;
    cr_assert_eq(sscanf(s2lora_version(), "%d.%d.%d", &maj, &min, &pat), 3);
    cr_assert_eq(maj, S2LORA_VERSION_MAJOR);
    cr_assert_eq(min, S2LORA_VERSION_MINOR);
    cr_assert_eq(pat, S2LORA_VERSION_PATCH);
    cr_assert_eq(s2lora_version_number(), maj * 1000000 + min * 1000 + pat);
}

Test(api, status_strings_are_distinct_and_never_null)
{
    const char *seen[S2LORA_ERR_UNSUPPORTED + 1];
    for (int s = 0; s <= S2LORA_ERR_UNSUPPORTED; s++) {
        seen[s] = s2lora_status_string((s2lora_status)s);
        cr_assert(seen[s] && *seen[s]);
        for (int t = 0; t < s; t++)
            cr_assert_str_neq(seen[s], seen[t], "statuses %d and %d share '%s'", s, t, seen[s]);
    }
    cr_assert_str_eq(s2lora_status_string(S2LORA_ERR_SPEC), "spec error");
    cr_assert_str_eq(s2lora_status_string(S2LORA_ERR_NO_DEVICE), "no CUDA device");
    cr_assert_str_eq(s2lora_status_string((s2lora_status)99), "unknown status");
}

/* ---------------------------------------------------------------- contexts */

Test(api, open_without_device)
{
    s2lora_ctx *c = open_none();
    cr_assert_str_eq(s2lora_errmsg(c), "");
    cr_assert_str_eq(s2lora_warnings(c), "");
    cr_assert_str_eq(s2lora_device_name(c), "");
    cr_assert_str_eq(s2lora_device_arch(c), "");
    s2lora_close(c);
    s2lora_close(NULL);
    cr_assert_str_eq(s2lora_errmsg(NULL), "out of memory");
    cr_assert_eq(s2lora_open(NULL, -1, NULL), S2LORA_ERR_INVALID);
}

Test(api, open_a_device_here_says_there_is_none)
{
    /* The test machines have no GPU: device 0 is not there. */
    s2lora_ctx *c = NULL;
    s2lora_status st = s2lora_open(&c, 0, NULL);
    cr_assert_not_null(c, "the context is set even on failure");
    expect(c, st, S2LORA_ERR_NO_DEVICE, "s2lora_open(device 0)", "no", NULL);
    /* a context that failed to open answers every call with its failure, message kept */
    char msg[512];
    snprintf(msg, sizeof msg, "%s", s2lora_errmsg(c));
    s2lora_spec *s = (s2lora_spec *)1;
    cr_assert_eq(s2lora_spec_load(c, SPEC("tiny-byte-512.yaml"), NULL, 0, &s),
                 S2LORA_ERR_NO_DEVICE);
    cr_assert_str_eq(s2lora_errmsg(c), msg);
    s2lora_close(c);
}

Test(api, open_refuses_bad_device_and_options)
{
    s2lora_ctx *c = NULL;
    expect(c, S2LORA_OK, S2LORA_OK, NULL);
    s2lora_status st = s2lora_open(&c, -2, NULL);
    expect(c, st, S2LORA_ERR_INVALID, "device -2", "-1 (no device)", NULL);
    s2lora_close(c);
    s2lora_options o = S2LORA_OPTIONS_INIT;
    o.use_tuned = 2;
    st = s2lora_open(&c, -1, &o);
    expect(c, st, S2LORA_ERR_INVALID, "options->use_tuned = 2", "valid 0", NULL);
    s2lora_close(c);
    o = (s2lora_options)S2LORA_OPTIONS_INIT;
    o.build_threads = -1;
    st = s2lora_open(&c, -1, &o);
    expect(c, st, S2LORA_ERR_INVALID, "options->build_threads = -1", NULL);
    s2lora_close(c);
}

Test(api, errmsg_is_cleared_by_the_next_success)
{
    s2lora_ctx *c = open_none();
    s2lora_spec *s = NULL;
    s2lora_status st = s2lora_spec_load(c, "/nonexistent/spec.yaml", NULL, 0, &s);
    expect(c, st, S2LORA_ERR_IO, "/nonexistent/spec.yaml", NULL);
    cr_assert_null(s);
    s = load(c, SPEC("tiny-byte-512.yaml"), NULL, 0);
    cr_assert_str_eq(s2lora_errmsg(c), "");
    s2lora_spec_free(s);
    s2lora_close(c);
}

/* Device entry points on a context without one: NO_DEVICE, saying so, after their checks. */
Test(api, device_functions_without_device)
{
    s2lora_ctx *c = open_none();
    s2lora_spec *s = load(c, SPEC("tiny-byte-512.yaml"), NULL, 0);
    s2lora_attn *a = (s2lora_attn *)1;
    expect(c, s2lora_attn_create(c, s, &a), S2LORA_ERR_NO_DEVICE, "s2lora_attn_create",
           "no device", "device -1", NULL);
    cr_assert_null(a);
    expect(c, s2lora_attn_create_seqlen(c, s, 1024, &a), S2LORA_ERR_NO_DEVICE, NULL);
    expect(c, s2lora_attn_create_seqlen(c, s, -1, &a), S2LORA_ERR_INVALID, "seqlen = -1", NULL);
    expect(c, s2lora_attn_create(c, NULL, &a), S2LORA_ERR_INVALID, "spec is NULL", NULL);
    double ms = -1;
    expect(c, s2lora_tune(c, s, 0, &ms), S2LORA_ERR_NO_DEVICE, "s2lora_tune", "no device",
           NULL);
    cr_assert_eq(ms, -1);
    expect(c, s2lora_tune(c, s, -5, &ms), S2LORA_ERR_INVALID, "seqlen = -5", NULL);
    void *p = (void *)1;
    expect(c, s2lora_device_alloc(c, 64, &p), S2LORA_ERR_NO_DEVICE, "s2lora_device_alloc",
           NULL);
    cr_assert_null(p);
    char host[8];
    expect(c, s2lora_memcpy_to_host(c, host, host, 8), S2LORA_ERR_NO_DEVICE, NULL);
    expect(c, s2lora_memcpy_to_device(c, NULL, host, 8), S2LORA_ERR_INVALID, "dst is NULL", NULL);
    expect(c, s2lora_synchronize(c, NULL), S2LORA_ERR_NO_DEVICE, NULL);
    s2lora_device_free(c, NULL);
    cr_assert_eq(s2lora_attn_workspace_bytes(NULL, 100), 0);
    cr_assert_str_eq(s2lora_attn_tile(NULL), "");
    s2lora_spec_free(s);
    s2lora_close(c);
}

/* ---------------------------------------------------------------- specs */

Test(api, spec_load_errors_name_file_line_col)
{
    s2lora_ctx *c = open_none();
    s2lora_spec *s = NULL;
    const char *path = S2_SOURCE_DIR "/tests/specs_bad/shift_range.yaml";
    s2lora_status st = s2lora_spec_load(c, path, NULL, 0, &s);
    char where[1200];
    snprintf(where, sizeof where, "%s:13:10: error: ", path);
    expect(c, st, S2LORA_ERR_SPEC, where, "[0, 2047]", NULL);
    cr_assert_null(s);
    st = s2lora_spec_load(c, S2_SOURCE_DIR "/tests/specs_bad/not_yaml.yaml", NULL, 0, &s);
    expect(c, st, S2LORA_ERR_PARSE, "not_yaml.yaml:", NULL);
    expect(c, s2lora_spec_load(c, NULL, NULL, 0, &s), S2LORA_ERR_INVALID, "path is NULL", NULL);
    expect(c, s2lora_spec_load(c, SPEC("tiny-byte-512.yaml"), NULL, 0, NULL), S2LORA_ERR_INVALID,
           "spec (the result) is NULL", NULL);
    cr_assert_eq(s2lora_spec_load(NULL, SPEC("tiny-byte-512.yaml"), NULL, 0, &s),
                 S2LORA_ERR_INVALID);
    s2lora_close(c);
}

Test(api, overrides_apply_and_are_checked)
{
    s2lora_ctx *c = open_none();
    const char *set[] = {"s2attn.group_size=2048", "context_length=8192"};
    s2lora_spec *s = load(c, SPEC("llama2-7b-32k.yaml"), set, 2);
    s2lora_spec_info in;
    cr_assert_eq(s2lora_spec_get_info(s, &in), S2LORA_OK);
    cr_assert_eq(in.group_size, 2048);
    cr_assert_eq(in.shift, 1024, "the shift follows the overridden group size");
    cr_assert_eq(in.context_length, 8192);
    s2lora_spec_free(s);

    const char *bad[] = {"s2attn.group_sise=2048"};
    s = NULL;
    s2lora_status st = s2lora_spec_load(c, SPEC("llama2-7b-32k.yaml"), bad, 1, &s);
    expect(c, st, S2LORA_ERR_SPEC, "--set", "group_sise", "group_size", NULL);
    cr_assert_null(s);
    st = s2lora_spec_load(c, SPEC("llama2-7b-32k.yaml"), NULL, 1, &s);
    expect(c, st, S2LORA_ERR_INVALID, "overrides is NULL with n_overrides = 1", NULL);
    const char *holes[] = {"context_length=8192", NULL};
    st = s2lora_spec_load(c, SPEC("llama2-7b-32k.yaml"), holes, 2, &s);
    expect(c, st, S2LORA_ERR_INVALID, "overrides[1] is NULL", NULL);
    st = s2lora_spec_load(c, SPEC("llama2-7b-32k.yaml"), set, -1, &s);
    expect(c, st, S2LORA_ERR_INVALID, "n_overrides = -1", NULL);
    s2lora_close(c);
}

#define TINY_YAML                                                                                  \
    "name: from-string\ncontext_length: 2048\nmodel:\n  hidden_size: 512\n"                       \
    "  intermediate_size: 1024\n  num_layers: 2\n  num_heads: 8\n  num_kv_heads: 2\n"              \
    "  vocab_size: 256\n  max_position_embeddings: 1024\n"                                      \
    "s2attn: {group_size: 256, shift_mode: roll}\n"

Test(api, spec_parse_from_a_string)
{
    s2lora_ctx *c = open_none();
    s2lora_spec *s = NULL;
    /* len, not a NUL, ends the text: a trailing garbage byte past len is not read */
    char buf[sizeof TINY_YAML + 1];
    memcpy(buf, TINY_YAML, sizeof TINY_YAML - 1);
    buf[sizeof TINY_YAML - 1] = '@';
    buf[sizeof TINY_YAML] = 0;
    const char *set[] = {"dtype=fp16"};
    s2lora_status st = s2lora_spec_parse(c, buf, sizeof TINY_YAML - 1, "mem.yaml", set, 1, &s);
    cr_assert_eq(st, S2LORA_OK, "%s", s2lora_errmsg(c));
    s2lora_spec_info in;
    cr_assert_eq(s2lora_spec_get_info(s, &in), S2LORA_OK);
    cr_assert_str_eq(in.name, "from-string");
    cr_assert_eq(in.num_kv_heads, 2);
    cr_assert_eq(in.head_dim, 64);
    cr_assert_eq(in.shift_mode, 1);
    cr_assert_eq(in.dtype, 1);
    s2lora_spec_free(s);

    /* the name stands for the file in messages; "<string>" without one */
    static const char bad[] = "name: x\ncontext_length: -3\n";
    st = s2lora_spec_parse(c, bad, strlen(bad), "mem.yaml", NULL, 0, &s);
    expect(c, st, S2LORA_ERR_SPEC, "mem.yaml:2:", NULL);
    st = s2lora_spec_parse(c, bad, strlen(bad), NULL, NULL, 0, &s);
    expect(c, st, S2LORA_ERR_SPEC, "<string>:2:", NULL);
    st = s2lora_spec_parse(c, "name: x\0y", 9, NULL, NULL, 0, &s);
    expect(c, st, S2LORA_ERR_INVALID, "NUL byte", NULL);
    st = s2lora_spec_parse(c, NULL, 3, NULL, NULL, 0, &s);
    expect(c, st, S2LORA_ERR_INVALID, "yaml is NULL", NULL);
    s2lora_close(c);
}

/* The info is the loader's values after defaults and derivations, field for field. */
Test(api, spec_info_is_the_loaders)
{
    const char *const names[] = {"llama2-7b-32k.yaml", "llama2-70b-32k.yaml",
                                 "tiny-byte-512.yaml"};
    s2lora_ctx *c = open_none();
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/specs/%s", S2_SOURCE_DIR, names[i]);
        s2lora_spec *s = load(c, path, NULL, 0);
        s2lora_spec_info in;
        memset(&in, 0x5a, sizeof in);
        cr_assert_eq(s2lora_spec_get_info(s, &in), S2LORA_OK);
        s2_spec r;
        s2_error e = {0};
        cr_assert_eq(s2_spec_load(path, NULL, 0, &r, &e), S2_OK);
        cr_assert_str_eq(in.name, r.name);
        cr_assert_eq(in.context_length, r.context_length);
        cr_assert_eq(in.group_size, r.s2attn.group_size);
        cr_assert_eq(in.shift, r.s2attn.shift);
        cr_assert_eq(in.shift_mode, (int)r.s2attn.shift_mode);
        cr_assert_eq(in.num_heads, r.model.num_heads);
        cr_assert_eq(in.num_kv_heads, r.model.num_kv_heads);
        cr_assert_eq(in.head_dim, r.model.head_dim);
        cr_assert_eq(in.dtype, (int)r.dtype);
        cr_assert_eq(in.softmax_scale, (float)r.s2attn.softmax_scale);
        cr_assert_eq(in.hidden_size, r.model.hidden_size);
        cr_assert_eq(in.intermediate_size, r.model.intermediate_size);
        cr_assert_eq(in.num_layers, r.model.num_layers);
        cr_assert_eq(in.vocab_size, r.model.vocab_size);
        cr_assert_eq(in.lora_rank, r.lora.rank);
        cr_assert_eq(in.lora_alpha, (float)r.lora.alpha);
        cr_assert_str_eq(in.hash, r.hash_hex);
        cr_assert_eq(strlen(in.hash), 64);
        s2lora_spec_free(s);
    }
    cr_assert_eq(s2lora_spec_get_info(NULL, NULL), S2LORA_ERR_INVALID);
    s2lora_spec *s = load(c, SPEC("tiny-byte-512.yaml"), NULL, 0);
    expect(c, s2lora_spec_get_info(s, NULL), S2LORA_ERR_INVALID, "info is NULL", NULL);
    s2lora_spec_free(s);
    s2lora_close(c);
}

/* ---------------------------------------------------------------- build */

static char *tmp_dir(void)
{
    char *d = strdup("/tmp/s2lora-test-api.XXXXXX");
    cr_assert(d && mkdtemp(d));
    return d;
}

/* Without a device every arch of the spec is built; the second build comes from the cache, and
 * a damaged cache entry is rebuilt and reported among the warnings. */
Test(api, build_for_the_specs_arches_through_the_cache, .timeout = 240)
{
    char *dir = tmp_dir();
    s2lora_options o = S2LORA_OPTIONS_INIT;
    o.cache_dir = dir;
    s2lora_ctx *c = NULL;
    cr_assert_eq(s2lora_open(&c, -1, &o), S2LORA_OK);
    const char *set[] = {"arch=[sm_80]"};
    s2lora_spec *s = load(c, SPEC("tiny-byte-512.yaml"), set, 1);
    int built = -1, cached = -1;
    s2lora_status st = s2lora_build(c, s, &built, &cached);
    cr_assert_eq(st, S2LORA_OK, "%s", s2lora_errmsg(c));
    cr_assert_eq(built, 3, "attn_fwd, attn_bwd and train for sm_80: %d built", built);
    cr_assert_eq(cached, 0);
    cr_assert_str_eq(s2lora_warnings(c), "");
    st = s2lora_build(c, s, &built, &cached);
    cr_assert_eq(st, S2LORA_OK, "%s", s2lora_errmsg(c));
    cr_assert_eq(built, 0);
    cr_assert_eq(cached, 3);
    /* damage one entry: rebuilt, said once */
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "f=$(ls %s/*.cubin | head -n 1) && printf garbage > \"$f\"", dir);
    cr_assert_eq(system(cmd), 0);
    st = s2lora_build(c, s, NULL, &cached);
    cr_assert_eq(st, S2LORA_OK, "%s", s2lora_errmsg(c));
    cr_assert_eq(cached, 2);
    cr_assert(strstr(s2lora_warnings(c), "rebuilt"), "warnings: '%s'", s2lora_warnings(c));
    /* the next call starts without them */
    cr_assert_eq(s2lora_build(c, s, NULL, NULL), S2LORA_OK);
    cr_assert_str_eq(s2lora_warnings(c), "");
    /* a spec of another context is refused */
    s2lora_ctx *c2 = open_none();
    expect(c2, s2lora_build(c2, s, NULL, NULL), S2LORA_ERR_INVALID, "another context", NULL);
    expect(c2, s2lora_build(c2, NULL, NULL, NULL), S2LORA_ERR_INVALID, "spec is NULL", NULL);
    s2lora_close(c2);
    s2lora_spec_free(s);
    s2lora_close(c);
    s2_test_rmtree(dir);
    free(dir);
}

Test(api, build_reports_a_bad_cache_dir)
{
    s2lora_options o = S2LORA_OPTIONS_INIT;
    o.cache_dir = "/proc/version/cache"; /* under a file: cannot be made */
    s2lora_ctx *c = NULL;
    cr_assert_eq(s2lora_open(&c, -1, &o), S2LORA_OK);
    s2lora_spec *s = load(c, SPEC("tiny-byte-512.yaml"), NULL, 0);
    s2lora_status st = s2lora_build(c, s, NULL, NULL);
    cr_assert_neq(st, S2LORA_OK);
    expect(c, st, st, "s2lora_build(tiny-byte-512, sm_80)", "/proc/version", NULL);
    s2lora_spec_free(s);
    s2lora_close(c);
}

/* ---------------------------------------------------------------- attention arguments */

/* Valid fixed-length arguments for spec llama2-7b-32k (H = Hkv = 32, d = 128): fake device
 * pointers, aligned, never dereferenced. */
#define P(n) ((void *)(uintptr_t)(0x10000 * (n)))
static s2lora_attn_args fixed_args(void)
{
    s2lora_attn_args a = S2LORA_ATTN_ARGS_INIT;
    a.tokens = 4096, a.batch = 2;
    a.q = P(1), a.k = P(2), a.v = P(3), a.o = P(4), a.lse = P(5);
    return a;
}
static s2lora_attn_grads grads(void)
{
    s2lora_attn_grads g = S2LORA_ATTN_GRADS_INIT;
    g.dout = P(6), g.dq = P(7), g.dk = P(8), g.dv = P(9), g.workspace = P(10);
    g.workspace_bytes = 1;
    return g;
}

typedef struct attn_fx {
    s2lora_ctx *c;
    s2lora_spec *s;
} attn_fx;

static attn_fx attn_setup(const char *const *set, int n)
{
    attn_fx f = {open_none(), NULL};
    f.s = load(f.c, SPEC("llama2-7b-32k.yaml"), set, n);
    return f;
}

static void check_bad(attn_fx *f, const s2lora_attn_args *a, const s2lora_attn_grads *g,
                      const char *p1, const char *p2)
{
    s2lora_status st = s2lora_attn_check_args(f->s, a, g);
    expect(f->c, st, S2LORA_ERR_INVALID, g ? "s2lora_attn_backward: " : "s2lora_attn_forward: ",
           p1, p2, NULL);
}

Test(attn_args, valid_arguments_pass)
{
    attn_fx f = attn_setup(NULL, 0);
    s2lora_attn_args a = fixed_args();
    s2lora_attn_grads g = grads();
    cr_assert_eq(s2lora_attn_check_args(f.s, &a, NULL), S2LORA_OK, "%s", s2lora_errmsg(f.c));
    cr_assert_eq(s2lora_attn_check_args(f.s, &a, &g), S2LORA_OK, "%s", s2lora_errmsg(f.c));
    a.max_seqlen = 2048; /* T / B, said outright */
    a.q_stride_token = 32 * 128, a.q_stride_head = 128; /* packed, said outright */
    g.dk_stride_token = 32 * 128;
    cr_assert_eq(s2lora_attn_check_args(f.s, &a, &g), S2LORA_OK, "%s", s2lora_errmsg(f.c));
    /* varlen with the host copy; max_seqlen an upper bound */
    const int32_t cu[] = {0, 100, 100, 4096};
    a = fixed_args();
    a.batch = 3, a.cu_seqlens = P(11), a.cu_seqlens_host = cu, a.max_seqlen = 4000;
    cr_assert_eq(s2lora_attn_check_args(f.s, &a, &g), S2LORA_OK, "%s", s2lora_errmsg(f.c));
    a.cu_seqlens_host = NULL; /* the caller's promise */
    cr_assert_eq(s2lora_attn_check_args(f.s, &a, NULL), S2LORA_OK, "%s", s2lora_errmsg(f.c));
    cr_assert_eq(s2lora_attn_check_args(NULL, &a, NULL), S2LORA_ERR_INVALID);
    s2lora_spec_free(f.s);
    s2lora_close(f.c);
}

Test(attn_args, counts_and_lengths)
{
    attn_fx f = attn_setup(NULL, 0);
    s2lora_attn_args a = fixed_args();
    check_bad(&f, NULL, NULL, "args is NULL", NULL);
    a.tokens = 0;
    check_bad(&f, &a, NULL, "args->tokens = 0", ">= 1");
    a = fixed_args(), a.batch = 0;
    check_bad(&f, &a, NULL, "args->batch = 0", NULL);
    a = fixed_args(), a.batch = 3;
    check_bad(&f, &a, NULL, "args->batch = 3 does not divide args->tokens = 4096", NULL);
    a = fixed_args(), a.max_seqlen = 4096;
    check_bad(&f, &a, NULL, "args->max_seqlen = 4096", "give 0 or 2048");
    const int32_t cu[] = {0, 2048, 4096};
    a = fixed_args(), a.cu_seqlens_host = cu;
    check_bad(&f, &a, NULL, "cu_seqlens_host is set but args->cu_seqlens is NULL", NULL);
    a = fixed_args(), a.cu_seqlens = P(11), a.max_seqlen = 2047;
    check_bad(&f, &a, NULL, "args->max_seqlen = 2047", "2048..4096");
    a.max_seqlen = 4097;
    check_bad(&f, &a, NULL, "args->max_seqlen = 4097", NULL);
    a.max_seqlen = 0;
    check_bad(&f, &a, NULL, "args->max_seqlen = 0", NULL);
    a.max_seqlen = 2048, a.cu_seqlens = (const int32_t *)((char *)P(11) + 2);
    check_bad(&f, &a, NULL, "args->cu_seqlens", "4-byte");
    s2lora_spec_free(f.s);
    s2lora_close(f.c);
}

Test(attn_args, host_boundaries)
{
    attn_fx f = attn_setup(NULL, 0);
    s2lora_attn_args a = fixed_args();
    a.cu_seqlens = P(11), a.batch = 3, a.max_seqlen = 3000;
    const int32_t start[] = {5, 100, 200, 4096};
    a.cu_seqlens_host = start;
    check_bad(&f, &a, NULL, "args->cu_seqlens_host[0] = 5", "must be 0");
    const int32_t down[] = {0, 3000, 2000, 4096};
    a.cu_seqlens_host = down;
    check_bad(&f, &a, NULL, "args->cu_seqlens_host[2] = 2000 < args->cu_seqlens_host[1] = 3000",
              "must not decrease");
    const int32_t end[] = {0, 1000, 2000, 4000};
    a.cu_seqlens_host = end;
    check_bad(&f, &a, NULL, "args->cu_seqlens_host[3] = 4000", "4096");
    const int32_t longer[] = {0, 10, 3500, 4096};
    a.cu_seqlens_host = longer;
    check_bad(&f, &a, NULL, "sequence 1 of args->cu_seqlens_host has 3490 tokens (10..3500)",
              "args->max_seqlen = 3000");
    s2lora_spec_free(f.s);
    s2lora_close(f.c);
}

Test(attn_args, pointers)
{
    attn_fx f = attn_setup(NULL, 0);
    s2lora_attn_args a = fixed_args();
    s2lora_attn_grads g = grads();
    a.v = NULL;
    check_bad(&f, &a, NULL, "args->v is NULL", NULL);
    a = fixed_args(), a.lse = NULL;
    check_bad(&f, &a, NULL, "args->lse is NULL", NULL);
    a = fixed_args(), a.o = (char *)P(4) + 8;
    check_bad(&f, &a, NULL, "args->o = ", "16-byte aligned");
    a = fixed_args(), a.lse = (float *)((char *)P(5) + 4); /* fp32: 4-byte alignment is enough */
    cr_assert_eq(s2lora_attn_check_args(f.s, &a, NULL), S2LORA_OK, "%s", s2lora_errmsg(f.c));
    a = fixed_args();
    g.dk = NULL;
    check_bad(&f, &a, &g, "grads->dk is NULL", NULL);
    g = grads(), g.workspace = NULL;
    check_bad(&f, &a, &g, "grads->workspace is NULL", NULL);
    g = grads(), g.dout = (char *)P(6) + 2;
    check_bad(&f, &a, &g, "grads->dout", "16-byte aligned");
    s2lora_spec_free(f.s);
    s2lora_close(f.c);
}

Test(attn_args, strides_must_be_packed)
{
    /* GQA, so the q and k shapes differ in the messages */
    const char *set[] = {"model.num_kv_heads=8"};
    attn_fx f = attn_setup(set, 1);
    s2lora_attn_args a = fixed_args();
    a.q_stride_token = 3 * 4096;
    check_bad(&f, &a, NULL, "q [T=4096, H=32, d=128] has q_stride_token 12288 and q_stride_head 0",
              "q_stride_token 4096 (heads x d) or 0 and q_stride_head 128 (d) or 0");
    a = fixed_args(), a.k_stride_head = 256;
    check_bad(&f, &a, NULL, "k [T=4096, Hkv=8, d=128] has k_stride_token 0 and k_stride_head 256",
              "k_stride_token 1024");
    a = fixed_args(), a.v_stride_token = 4096; /* q's packed stride is not v's */
    check_bad(&f, &a, NULL, "v [T=4096, Hkv=8, d=128]", "v_stride_token 1024");
    a = fixed_args(), a.o_stride_head = -128;
    check_bad(&f, &a, NULL, "o_stride_head -128", NULL);
    a = fixed_args();
    s2lora_attn_grads g = grads();
    g.dv_stride_token = 2048;
    check_bad(&f, &a, &g, "dv [T=4096, Hkv=8, d=128] has dv_stride_token 2048", NULL);
    g = grads(), g.dq_stride_head = 64;
    check_bad(&f, &a, &g, "dq [T=4096, H=32, d=128]", "dq_stride_head 128 (d)");
    g = grads(), g.dout_stride_token = 1;
    check_bad(&f, &a, &g, "dout_stride_token 1", NULL);
    s2lora_spec_free(f.s);
    s2lora_close(f.c);
}

/* ---------------------------------------------------------------- messages name the function */

/* The context's message opens with fn ("fn: ..." or "fn(...): ...") and names it nowhere else:
 * s2lora.h's convention, on which a binding relies to add no name of its own. */
static void named_once(s2lora_ctx *c, s2lora_status st, const char *fn)
{
    const char *msg = s2lora_errmsg(c);
    const size_t n = strlen(fn);
    cr_assert_neq(st, S2LORA_OK, "%s succeeded", fn);
    cr_assert(!strncmp(msg, fn, n) && (msg[n] == ':' || msg[n] == '('),
              "message '%s' does not open with '%s'", msg, fn);
    int count = 0;
    for (const char *p = strstr(msg, fn); p; p = strstr(p + n, fn))
        count += p[n] != '_'; /* s2lora_attn_create is not s2lora_attn_create_seqlen */
    cr_assert_eq(count, 1, "message '%s' names %s %d times", msg, fn, count);
}

Test(api, messages_name_the_function_once, .timeout = 60)
{
    attn_fx f = attn_setup(NULL, 0);
    s2lora_ctx *c = f.c;
    /* the argument checks of the forward and the backward (a strided q, as a view of a fused
     * qkv projection gives it, and others) */
    s2lora_attn_args a = fixed_args();
    a.q_stride_token = 3 * 32 * 128;
    named_once(c, s2lora_attn_check_args(f.s, &a, NULL), "s2lora_attn_forward");
    a = fixed_args(), a.tokens = 0;
    named_once(c, s2lora_attn_check_args(f.s, &a, NULL), "s2lora_attn_forward");
    a = fixed_args();
    const int32_t cu[] = {5, 4096, 4096};
    a.cu_seqlens = P(11), a.cu_seqlens_host = cu, a.max_seqlen = 4096;
    named_once(c, s2lora_attn_check_args(f.s, &a, NULL), "s2lora_attn_forward");
    a = fixed_args();
    s2lora_attn_grads g = grads();
    g.dq_stride_head = 64;
    named_once(c, s2lora_attn_check_args(f.s, &a, &g), "s2lora_attn_backward");
    /* the device functions on a context without one */
    s2lora_attn *h = NULL;
    named_once(c, s2lora_attn_create(c, f.s, &h), "s2lora_attn_create");
    named_once(c, s2lora_attn_create_seqlen(c, f.s, 1024, &h), "s2lora_attn_create_seqlen");
    named_once(c, s2lora_attn_create_tile(c, f.s, "fwd_warps=4", &h), "s2lora_attn_create_tile");
    named_once(c, s2lora_attn_create_tile(c, f.s, "fwd_warps=x", &h), "s2lora_attn_create_tile");
    named_once(c, s2lora_tune(c, f.s, 0, NULL), "s2lora_tune");
    void *p = NULL;
    named_once(c, s2lora_device_alloc(c, 64, &p), "s2lora_device_alloc");
    char host[8];
    named_once(c, s2lora_memcpy_to_device(c, P(1), host, 8), "s2lora_memcpy_to_device");
    named_once(c, s2lora_memcpy_to_host(c, host, P(1), 8), "s2lora_memcpy_to_host");
    named_once(c, s2lora_synchronize(c, NULL), "s2lora_synchronize");
    s2lora_lora *l = NULL;
    s2lora_lora_shape sh = {.tokens = 16, .in = 64, .n_proj = 1, .out = {64}, .rank = 8,
                            .alpha = 16};
    named_once(c, s2lora_lora_create(c, &sh, &l), "s2lora_lora_create");
    sh.rank = 0;
    named_once(c, s2lora_lora_create(c, &sh, &l), "s2lora_lora_create");
    /* the rest of the argument checks */
    named_once(c, s2lora_spec_get_info(f.s, NULL), "s2lora_spec_get_info");
    named_once(c, s2lora_set_use_cache(c, 2), "s2lora_set_use_cache");
    s2lora_spec *s2 = NULL;
    named_once(c, s2lora_spec_load(c, NULL, NULL, 0, &s2), "s2lora_spec_load");
    named_once(c, s2lora_spec_parse(c, NULL, 0, NULL, NULL, 0, &s2), "s2lora_spec_parse");
    s2lora_spec_free(f.s);
    s2lora_close(c);
    /* a build that fails in the layers below (its cache directory cannot be made) */
    s2lora_options o = S2LORA_OPTIONS_INIT;
    o.cache_dir = "/proc/version/cache";
    cr_assert_eq(s2lora_open(&c, -1, &o), S2LORA_OK);
    s2lora_spec *s = load(c, SPEC("tiny-byte-512.yaml"), NULL, 0);
    named_once(c, s2lora_build(c, s, NULL, NULL), "s2lora_build");
    s2lora_spec_free(s);
    s2lora_close(c);
}

/* --------------------------------------------------------- attention with the caller's tile */

Test(api, create_tile_checks_the_text_before_the_device)
{
    s2lora_ctx *c = open_none();
    s2lora_spec *s = load(c, SPEC("tiny-byte-512.yaml"), NULL, 0);
    s2lora_attn *h = (s2lora_attn *)1;
    expect(c, s2lora_attn_create_tile(c, s, NULL, &h), S2LORA_ERR_INVALID,
           "s2lora_attn_create_tile: tile_text is NULL", NULL);
    cr_assert_null(h);
    h = (s2lora_attn *)1;
    expect(c, s2lora_attn_create_tile(c, s, "fwd_warps=4,fwd_blok_n=64", &h), S2LORA_ERR_INVALID,
           "s2lora_attn_create_tile(tiny-byte-512): ", "unknown key 'fwd_blok_n'",
           "valid: fwd_warps, ", NULL);
    cr_assert_null(h);
    expect(c, s2lora_attn_create_tile(c, s, "fwd_warps=4,fwd_warps=8", &h), S2LORA_ERR_INVALID,
           "fwd_warps", NULL);
    expect(c, s2lora_attn_create_tile(c, s, "fwd_stages=abc", &h), S2LORA_ERR_INVALID,
           "fwd_stages", NULL);
    /* a valid text, the default ("") too, gets as far as the device */
    expect(c, s2lora_attn_create_tile(c, s, "fwd_warps=4,bwd_stages=2", &h), S2LORA_ERR_NO_DEVICE,
           "s2lora_attn_create_tile: this context has no device", NULL);
    expect(c, s2lora_attn_create_tile(c, s, "", &h), S2LORA_ERR_NO_DEVICE, NULL);
    expect(c, s2lora_attn_create_tile(c, NULL, "", &h), S2LORA_ERR_INVALID, "spec is NULL",
           NULL);
    expect(c, s2lora_attn_create_tile(c, s, "", NULL), S2LORA_ERR_INVALID,
           "attn (the result) is NULL", NULL);
    cr_assert_eq(s2lora_attn_create_tile(NULL, s, "", &h), S2LORA_ERR_INVALID);
    s2lora_spec_free(s);
    s2lora_close(c);
}

/* ---------------------------------------------------------------- builds without the cache */

static int count_files(const char *dir)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "find '%s' -type f | wc -l", dir);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    int n = -1;
    cr_assert_eq(fscanf(p, "%d", &n), 1);
    pclose(p);
    return n;
}

Test(api, set_use_cache_0_builds_without_the_cache, .timeout = 240)
{
    char *dir = tmp_dir();
    s2lora_options o = S2LORA_OPTIONS_INIT;
    o.cache_dir = dir;
    s2lora_ctx *c = NULL;
    cr_assert_eq(s2lora_open(&c, -1, &o), S2LORA_OK);
    expect(c, s2lora_set_use_cache(c, -1), S2LORA_ERR_INVALID, "use_cache = -1", "valid 0",
           NULL);
    cr_assert_eq(s2lora_set_use_cache(NULL, 0), S2LORA_ERR_INVALID);
    cr_assert_eq(s2lora_set_use_cache(c, 0), S2LORA_OK, "%s", s2lora_errmsg(c));
    const char *set[] = {"arch=[sm_80]"};
    s2lora_spec *s = load(c, SPEC("tiny-byte-512.yaml"), set, 1);
    int built = -1, cached = -1;
    s2lora_status st = s2lora_build(c, s, &built, &cached);
    cr_assert_eq(st, S2LORA_OK, "%s", s2lora_errmsg(c));
    cr_assert_eq(built, 3, "attn_fwd, attn_bwd and train for sm_80: %d built", built);
    cr_assert_eq(cached, 0);
    cr_assert_eq(count_files(dir), 0, "nothing written to the cache directory %s", dir);
    s2lora_spec_free(s);
    s2lora_close(c);
    s2_test_rmtree(dir);
    free(dir);
}

/* ---------------------------------------------------------------- LoRA shapes */

static s2lora_lora_shape qkv_shape(void)
{
    s2lora_lora_shape s = {.tokens = 1000, .in = 4096, .n_proj = 3, .out = {4096, 1024, 1024},
                           .rank = 8, .alpha = 16, .dtype = 0, .dropout = 0.05f, .seed = 7,
                           .layer = 3, .grad_f32 = 1, .grad_beta = 1};
    return s;
}

static void lora_bad(s2lora_ctx *c, const s2lora_lora_shape *sh, const char *p1, const char *p2)
{
    s2lora_lora *l = (s2lora_lora *)1;
    expect(c, s2lora_lora_create(c, sh, &l), S2LORA_ERR_INVALID, "s2lora_lora_create: ", p1, p2,
           NULL);
    cr_assert_null(l);
}

Test(lora_args, rp)
{
    cr_assert_eq(s2lora_lora_rp(3, 8), 32);
    cr_assert_eq(s2lora_lora_rp(1, 8), 16);
    cr_assert_eq(s2lora_lora_rp(3, 4), 16);
    cr_assert_eq(s2lora_lora_rp(2, 64), 128);
    cr_assert_eq(s2lora_lora_rp(1, 1024), 1024);
    cr_assert_eq(s2lora_lora_rp(0, 8), 0);
    cr_assert_eq(s2lora_lora_rp(4, 8), 0);
    cr_assert_eq(s2lora_lora_rp(1, 0), 0);
    cr_assert_eq(s2lora_lora_rp(1, 1025), 0);
}

Test(lora_args, shapes_are_checked_before_the_device)
{
    s2lora_ctx *c = open_none();
    s2lora_lora_shape sh = qkv_shape();
    s2lora_lora *l = (s2lora_lora *)1;
    /* valid: only the device is missing */
    expect(c, s2lora_lora_create(c, &sh, &l), S2LORA_ERR_NO_DEVICE, "s2lora_lora_create",
           "no device", NULL);
    cr_assert_null(l);
    sh.n_proj = 1, sh.out[1] = 0, sh.out[2] = -5; /* beyond n_proj: not looked at */
    expect(c, s2lora_lora_create(c, &sh, &l), S2LORA_ERR_NO_DEVICE, NULL);
    lora_bad(c, NULL, "shape is NULL", NULL);
    sh = qkv_shape(), sh.tokens = 0;
    lora_bad(c, &sh, "shape->tokens = 0", ">= 1");
    sh = qkv_shape(), sh.n_proj = 4;
    lora_bad(c, &sh, "shape->n_proj = 4", "1..3");
    sh = qkv_shape(), sh.rank = 0;
    lora_bad(c, &sh, "shape->rank = 0", "1..1024");
    sh = qkv_shape(), sh.in = 0;
    lora_bad(c, &sh, "shape->in = 0", "rp = 32");
    sh = qkv_shape(), sh.in = (1 << 20) - 31;
    lora_bad(c, &sh, "shape->in = 1048545", "valid 1..1048544");
    sh = qkv_shape(), sh.out[2] = 0;
    lora_bad(c, &sh, "shape->out[2] = 0", NULL);
    sh = qkv_shape(), sh.out[0] = 1 << 20;
    lora_bad(c, &sh, "shape->out sums to 1050624", "more than 1048576");
    sh = qkv_shape(), sh.alpha = 0;
    lora_bad(c, &sh, "shape->alpha = 0", NULL);
    sh = qkv_shape(), sh.alpha = NAN;
    lora_bad(c, &sh, "shape->alpha = nan", NULL);
    sh = qkv_shape(), sh.dtype = 2;
    lora_bad(c, &sh, "shape->dtype = 2", "0 (bf16) or 1 (fp16)");
    sh = qkv_shape(), sh.dropout = 1;
    lora_bad(c, &sh, "shape->dropout = 1", "valid 0 or");
    sh = qkv_shape(), sh.dropout = 1e-12f;
    lora_bad(c, &sh, "shape->dropout = 1e-12", NULL);
    sh = qkv_shape(), sh.layer = -1;
    lora_bad(c, &sh, "shape->layer = -1", NULL);
    sh = qkv_shape(), sh.grad_f32 = 2;
    lora_bad(c, &sh, "shape->grad_f32 = 2", NULL);
    sh = qkv_shape(), sh.grad_beta = INFINITY;
    lora_bad(c, &sh, "shape->grad_beta = inf", "finite");
    sh = qkv_shape(), sh.grad_f32 = 0, sh.grad_beta = 1;
    lora_bad(c, &sh, "shape->grad_beta = 1 with grad_f32 = 0", "overwritten");
    sh = qkv_shape(), sh.grad_f32 = 0, sh.grad_beta = 0;
    expect(c, s2lora_lora_create(c, &sh, &l), S2LORA_ERR_NO_DEVICE, NULL);
    expect(c, s2lora_lora_create(c, &sh, NULL), S2LORA_ERR_INVALID, "lora (the result) is NULL",
           NULL);
    cr_assert_eq(s2lora_lora_workspace_bytes(NULL), 0);
    cr_assert_eq(s2lora_lora_forward(NULL, NULL, NULL, NULL, NULL, NULL), S2LORA_ERR_INVALID);
    s2lora_close(c);
}

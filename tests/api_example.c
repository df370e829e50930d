/*
 * api_example.c — libs2lora from an application's side: only <s2lora.h>.
 *
 *   api_example DEVICE SPEC [KEY=VALUE]...
 *
 * Opens a context on DEVICE (-1: none), loads SPEC with the overrides, prints what its kernels
 * are specialised for and builds them (through the kernel cache). With a device it then runs
 * the attention forward and backward on random inputs, one sequence of 512 tokens (or the
 * context length when shorter), and checks what needs no reference: token 0 sees only itself
 * (in every head of split mode, and in the plain heads of roll mode), so its output in head 0
 * is v's row 0 of kv head 0 and its lse the one scaled score; every output is finite. (The
 * real check against the CPU reference is tests/api_check.c.)
 *
 * tests/install.sh builds this against an installed tree, with pkg-config and with CMake's
 * find_package, and runs it with DEVICE -1. Exit status 0 on success, 1 on a failure, 2 on bad
 * usage, 3 when the device is not there.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <s2lora.h>

static int fail(s2lora_ctx *ctx, const char *what, s2lora_status st)
{
    fprintf(stderr, "api_example: %s: %s: %s\n", what, s2lora_status_string(st),
            s2lora_errmsg(ctx));
    return st == S2LORA_ERR_NO_DEVICE ? 3 : 1;
}

/* float <-> bf16 / fp16 storage (round to nearest even; finite normal inputs only). */
static uint16_t to_half(float f, int fp16)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if (!fp16)
        return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
    uint32_t sign = (u >> 16) & 0x8000;
    int e = (int)((u >> 23) & 0xff) - 127 + 15;
    uint32_t m = u & 0x7fffff;
    if (e <= 0)
        return (uint16_t)sign; /* below fp16's normals: 0 (not drawn here) */
    uint32_t h = sign | ((uint32_t)e << 10) | (m >> 13);
    uint32_t rest = m & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1)))
        h++;
    return (uint16_t)h;
}

static float from_half(uint16_t h, int fp16)
{
    uint32_t u;
    if (!fp16)
        u = (uint32_t)h << 16;
    else {
        uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
        if (e == 0)
            return (h & 0x8000 ? -1.f : 1.f) * ldexpf((float)m, -24);
        u = ((uint32_t)(h & 0x8000) << 16) | (e == 31 ? 0x7f800000u | (m << 13)
                                                       : ((e - 15 + 127) << 23) | (m << 13));
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint64_t rng = 88172645463325252ull;
static float uniform(void) /* in [-1, 1) */
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.f - 1.f;
}

#define FAIL(what)                                                                                \
    do {                                                                                          \
        rc = fail(ctx, (what), st);                                                               \
        goto out;                                                                                 \
    } while (0)

/* Forward and backward on the device; returns the exit status. */
static int run(s2lora_ctx *ctx, const s2lora_spec *spec, const s2lora_spec_info *in)
{
    s2lora_attn *attn;
    s2lora_status st = s2lora_attn_create(ctx, spec, &attn);
    if (st)
        return fail(ctx, "s2lora_attn_create", st);
    printf("tile: %s\n", s2lora_attn_tile(attn));
    const int T = in->context_length < 512 ? in->context_length : 512;
    const int H = in->num_heads, Hkv = in->num_kv_heads, d = in->head_dim, fp16 = in->dtype;
    const size_t nq = (size_t)T * H * d, nk = (size_t)T * Hkv * d;
    uint16_t *hq = malloc(nq * 2), *hk = malloc(nk * 2), *hv = malloc(nk * 2);
    uint16_t *ho = malloc(nq * 2), *hg = malloc(nq * 2);
    float *hlse = malloc((size_t)H * T * 4);
    void *q = NULL, *k = NULL, *v = NULL, *o = NULL, *dout = NULL, *dq = NULL, *dk = NULL;
    void *dv = NULL, *ws = NULL, *lse = NULL;
    const size_t wsb = s2lora_attn_workspace_bytes(attn, T);
    int rc = 1;
    if (!hq || !hk || !hv || !ho || !hg || !hlse) {
        fprintf(stderr, "api_example: out of memory\n");
        goto out;
    }
    for (size_t i = 0; i < nq; i++)
        hq[i] = to_half(uniform(), fp16), hg[i] = to_half(uniform(), fp16);
    for (size_t i = 0; i < nk; i++)
        hk[i] = to_half(uniform(), fp16), hv[i] = to_half(uniform(), fp16);
    struct { void **p; size_t n; const void *from; } bufs[] = {
        {&q, nq * 2, hq}, {&k, nk * 2, hk}, {&v, nk * 2, hv}, {&o, nq * 2, NULL},
        {&dout, nq * 2, hg}, {&dq, nq * 2, NULL}, {&dk, nk * 2, NULL}, {&dv, nk * 2, NULL},
        {&lse, (size_t)H * T * 4, NULL}, {&ws, wsb, NULL}};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
        if ((st = s2lora_device_alloc(ctx, bufs[i].n, bufs[i].p)))
            FAIL("s2lora_device_alloc");
        if (bufs[i].from &&
            (st = s2lora_memcpy_to_device(ctx, *bufs[i].p, bufs[i].from, bufs[i].n)))
            FAIL("s2lora_memcpy_to_device");
    }
    s2lora_attn_args a = S2LORA_ATTN_ARGS_INIT;
    a.tokens = T, a.batch = 1, a.q = q, a.k = k, a.v = v, a.o = o, a.lse = lse;
    s2lora_attn_grads g = S2LORA_ATTN_GRADS_INIT;
    g.dout = dout, g.dq = dq, g.dk = dk, g.dv = dv, g.workspace = ws, g.workspace_bytes = wsb;
    if ((st = s2lora_attn_forward(attn, &a, NULL)))
        FAIL("s2lora_attn_forward");
    if ((st = s2lora_attn_backward(attn, &a, &g, NULL)))
        FAIL("s2lora_attn_backward");
    if ((st = s2lora_synchronize(ctx, NULL)))
        FAIL("running the kernels");
    if ((st = s2lora_memcpy_to_host(ctx, ho, o, nq * 2)) ||
        (st = s2lora_memcpy_to_host(ctx, hlse, lse, (size_t)H * T * 4)) ||
        (st = s2lora_memcpy_to_host(ctx, hg, dq, nq * 2)))
        FAIL("s2lora_memcpy_to_host");
    double worst = 0, score = 0;
    for (int j = 0; j < d; j++) {
        worst = fmax(worst, fabs(from_half(ho[j], fp16) - from_half(hv[j], fp16)));
        score += (double)from_half(hq[j], fp16) * from_half(hk[j], fp16);
    }
    score *= in->softmax_scale;
    int finite = 1;
    for (size_t i = 0; i < nq; i++)
        finite &= isfinite(from_half(ho[i], fp16)) && isfinite(from_half(hg[i], fp16));
    for (size_t i = 0; i < (size_t)H * T; i++)
        finite &= isfinite(hlse[i]);
    const int ok = worst < 1e-2 && fabs(hlse[0] - score) < 1e-3 && finite;
    printf("attention of %d tokens: o[0, head 0] vs v[0]: %.2e, lse[head 0, 0] %.5f vs %.5f, "
           "outputs %s: %s\n", T, worst, hlse[0], score, finite ? "finite" : "NOT FINITE",
           ok ? "ok" : "WRONG");
    rc = ok ? 0 : 1;
out:
    s2lora_device_free(ctx, q), s2lora_device_free(ctx, k), s2lora_device_free(ctx, v);
    s2lora_device_free(ctx, o), s2lora_device_free(ctx, dout), s2lora_device_free(ctx, dq);
    s2lora_device_free(ctx, dk), s2lora_device_free(ctx, dv), s2lora_device_free(ctx, lse);
    s2lora_device_free(ctx, ws);
    free(hq), free(hk), free(hv), free(ho), free(hg), free(hlse);
    s2lora_attn_free(attn);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: api_example DEVICE SPEC [KEY=VALUE]...   (DEVICE -1: none)\n");
        return 2;
    }
    if (s2lora_version_number() / 1000000 != S2LORA_VERSION_MAJOR) {
        fprintf(stderr, "api_example: built for libs2lora %s, running with %s\n", S2LORA_VERSION,
                s2lora_version());
        return 1;
    }
    s2lora_ctx *ctx;
    s2lora_status st = s2lora_open(&ctx, atoi(argv[1]), NULL);
    if (st) {
        int rc = fail(ctx, "s2lora_open", st);
        s2lora_close(ctx);
        return rc;
    }
    printf("libs2lora %s, device '%s' (%s)\n", s2lora_version(), s2lora_device_name(ctx),
           s2lora_device_arch(ctx));
    s2lora_spec *spec = NULL;
    s2lora_spec_info in;
    int built = 0, cached = 0, rc = 0;
    if ((st = s2lora_spec_load(ctx, argv[2], (const char *const *)argv + 3, argc - 3, &spec)))
        rc = fail(ctx, "s2lora_spec_load", st);
    else if ((st = s2lora_spec_get_info(spec, &in)))
        rc = fail(ctx, "s2lora_spec_get_info", st);
    if (!rc) {
        printf("spec %s: context %d, G %d, S %d %s, heads %d/%d, d %d, %s, scale %.6f, "
               "hidden %d, layers %d, lora r %d alpha %g, sha256 %.16s\n", in.name,
               in.context_length, in.group_size, in.shift, in.shift_mode ? "roll" : "split",
               in.num_heads, in.num_kv_heads, in.head_dim, in.dtype ? "fp16" : "bf16",
               in.softmax_scale, in.hidden_size, in.num_layers, in.lora_rank, in.lora_alpha,
               in.hash);
        if ((st = s2lora_build(ctx, spec, &built, &cached)))
            rc = fail(ctx, "s2lora_build", st);
        else
            printf("build: %d units compiled, %d from the cache\n", built, cached);
        if (*s2lora_warnings(ctx))
            fprintf(stderr, "api_example: warning: %s\n", s2lora_warnings(ctx));
    }
    if (!rc && *s2lora_device_name(ctx))
        rc = run(ctx, spec, &in);
    s2lora_spec_free(spec);
    s2lora_close(ctx);
    return rc;
}

/*
 * test_window.c — the sequence-parallel window units without a GPU: the emitter's window blocks
 * (a unit without the window is its source from before; a window unit differs from it only in
 * its window blocks and S2_WINDOW), the plan's refusals, the window's argument checks and
 * grids against gen/sp_plan.h's ranks, and the runtime entry points' checks, which run before
 * any CUDA call. (The kernels themselves: tests/gpu_check.c's "window" cases.)
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen/emit.h"
#include "gen/plan.h"
#include "gen/sp_plan.h"
#include "runtime/core/rt.h"

static s2_spec load_spec(int d, int H, int Hkv, int G, int S, const char *mode)
{
    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "name: w\n"
             "model: {hidden_size: %d, intermediate_size: 1024, num_layers: 2, num_heads: %d,\n"
             "        num_kv_heads: %d, head_dim: %d, vocab_size: 256,\n"
             "        max_position_embeddings: 512}\n"
             "context_length: 16384\n"
             "s2attn: {group_size: %d, shift: %d, shift_mode: %s}\n",
             H * d, H, Hkv, d, G, S, mode);
    s2_spec s;
    s2_error err = {0};
    cr_assert_eq(s2_spec_load_string(yaml, "w.yaml", NULL, 0, &s, &err), S2_OK, "%s", err.msg);
    return s;
}

/* The window plan of spec for arch with tile text (NULL: the default); asserts success. */
static s2_attn_plan window_plan(const s2_spec *s, const char *arch, const char *tile)
{
    s2_attn_tile t = s2_plan_default_tile(arch, s->model.head_dim);
    s2_error err = {0};
    if (tile)
        cr_assert_eq(s2_plan_parse_tile(tile, &t, &err), S2_OK, "%s", err.msg);
    s2_attn_plan p;
    cr_assert_eq(s2_plan_attn(s, arch, &t, &p, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(s2_plan_window(s, &p, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(p.window, 1);
    return p;
}

/* ---- emitter ---- */

static char *emit(const s2_spec *s, const s2_attn_plan *p, s2_attn_unit u)
{
    char *src = NULL;
    s2_error err = {0};
    cr_assert_eq(s2_emit_attn(s, p, u, &src, &err), S2_OK, "%s", err.msg);
    return src;
}

/* Every tile family (mma.sync, wgmma, atomic dQ, mbarrier rings, the scalar backward): the
 * window unit defines S2_WINDOW and gives every kernel but the token-local ones the window's
 * arguments; with the window blocks resolved out and S2_WINDOW's line dropped it is exactly the
 * unit without the window, which holds nothing of the window. */
Test(emit, window_units_differ_only_in_window_blocks)
{
    static const struct {
        int d;
        const char *arch, *tile;
    } v[] = {
        {128, "sm_90a", NULL},
        {64, "sm_90a", NULL},
        {128, "sm_90a", "bwd_atomic_dq=1,bwd_stages=3,bwd_mbar=0"},
        {128, "sm_80", NULL},
        {64, "sm_80", "bwd_atomic_dq=1"},
        {256, "sm_80", NULL},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        s2_spec s = load_spec(v[i].d, 8, 2, 1024, 512, "split");
        s2_attn_plan wp = window_plan(&s, v[i].arch, v[i].tile), p = wp;
        p.window = 0;
        for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++) {
            char *w = emit(&s, &wp, (s2_attn_unit)u), *o = emit(&s, &p, (s2_attn_unit)u);
            cr_expect(strstr(w, "\n#define S2_WINDOW 1\n"), "%s %d", v[i].arch, v[i].d);
            cr_expect(!strstr(o, "S2_WINDOW") && !strstr(o, "win_qlo") && !strstr(o, "s2_window"),
                      "a unit without the window holds nothing of it");
            int sigs = 0; /* kernels taking the window's arguments */
            for (const char *q = w; (q = strstr(q, "int total_tokens, int win_qlo, int win_klo)"));
                 q++)
                sigs++;
            cr_expect_eq(sigs, u == S2_UNIT_ATTN_FWD ? 1 : 2, "%s d=%d unit %d: %d", v[i].arch,
                         v[i].d, u, sigs);
            /* resolve the window unit's blocks, drop its define: the default unit */
            char *def = strstr(w, "#define S2_WINDOW 1\n");
            cr_assert_not_null(def);
            memmove(def, def + strlen("#define S2_WINDOW 1\n"),
                    strlen(def + strlen("#define S2_WINDOW 1\n")) + 1);
            s2_buf b = {0};
            s2_error err = {0};
            cr_assert_eq(s2_emit_template_text(&b, "unit", w, 0, &err), S2_OK, "%s", err.msg);
            cr_expect_str_eq(b.data, o, "%s d=%d unit %d", v[i].arch, v[i].d, u);
            s2_buf_free(&b);
            free(w), free(o);
        }
    }
}

static s2_status resolve(const char *text, int window, char **out, s2_error *err)
{
    s2_buf b = {0};
    s2_status st = s2_emit_template_text(&b, "t.cuh", text, window, err);
    *out = b.data ? b.data : strdup("");
    return st;
}

Test(emit, window_blocks_resolved_line_by_line)
{
    const char *t = "a\n"
                    "#if S2_WINDOW // the window\n"
                    "w1\n"
                    "#if X\n"
                    "wx\n"
                    "#else\n"
                    "wy\n"
                    "#endif\n"
                    "#else\n"
                    "e1\n"
                    "#if Y\n"
                    "ey\n"
                    "#endif\n"
                    "#endif\n"
                    "  #  if S2_WINDOW\n"
                    "w2\n"
                    "#endif\n"
                    "#if S2_WINDOWS\n" /* another macro: not a window block */
                    "z\n"
                    "#endif\n"
                    "b";
    char *o = NULL;
    s2_error err = {0};
    cr_assert_eq(resolve(t, 0, &o, &err), S2_OK, "%s", err.msg);
    cr_expect_str_eq(o, "a\ne1\n#if Y\ney\n#endif\n#if S2_WINDOWS\nz\n#endif\nb");
    free(o);
    cr_assert_eq(resolve(t, 1, &o, &err), S2_OK, "%s", err.msg);
    cr_expect_str_eq(o, t, "a window unit holds the text whole");
    free(o);
}

Test(emit, malformed_window_blocks_refused)
{
    static const struct {
        const char *text, *want;
    } bad[] = {
        {"x\n#if S2_WINDOW\ny\n", "t.cuh: the window block of line 2 has no #endif"},
        {"#if S2_WINDOW\n#if S2_WINDOW\n#endif\n#endif\n", "t.cuh:2: a window block inside"},
        {"#if S2_WINDOW\na\n#elif Z\n#endif\n", "t.cuh:3: #elif in the window block of line 1"},
        {"#if S2_WINDOW\n#else\n#else\n#endif\n", "t.cuh:3: a second #else"},
        {"#if S2_WINDOW\n#if A\n#endif\n", "no #endif"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        for (int w = 0; w < 2; w++) {
            char *o = NULL;
            s2_error err = {0};
            cr_expect_eq(resolve(bad[i].text, w, &o, &err), S2_ERR_INVALID, "case %zu", i);
            cr_expect(err.msg && strstr(err.msg, bad[i].want), "case %zu: %s", i, err.msg);
            s2_error_clear(&err);
            free(o);
        }
}

/* ---- plan ---- */

Test(plan, window_refuses_roll_mode_with_a_shift)
{
    s2_spec s = load_spec(128, 8, 8, 1024, 512, "roll");
    s2_attn_plan p;
    s2_error err = {0};
    cr_assert_eq(s2_plan_attn(&s, "sm_90a", NULL, &p, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(s2_plan_window(&s, &p, &err), S2_ERR_SPEC);
    cr_expect(strstr(err.msg, "<string>:6:") && strstr(err.msg, "roll") &&
              strstr(err.msg, "last rank") && strstr(err.msg, "shift_mode: split"), "%s",
              err.msg);
    cr_expect_eq(p.window, 0, "a refused plan is left as it was");
    s2_error_clear(&err);
    /* roll without a shift is plain attention on every head: nothing wraps */
    s = load_spec(128, 8, 8, 1024, 0, "roll");
    window_plan(&s, "sm_90a", NULL);
    /* and the runtime's build refuses the roll spec before NVRTC */
    s = load_spec(128, 8, 8, 1024, 512, "roll");
    s2_jit_opts jo = {.arch = "sm_90a", .no_cache = 1};
    s2_jit_result res[S2_UNIT_ATTN_COUNT];
    memset(res, 0, sizeof res);
    cr_expect_eq(s2_attn_build_window(&s, NULL, &jo, &p, res, &err), S2_ERR_SPEC);
    cr_expect(err.msg && strstr(err.msg, "roll"), "%s", err.msg);
    s2_error_clear(&err);
}

Test(plan, window_refuses_head_dim_96)
{
    s2_spec s = load_spec(96, 8, 8, 1024, 512, "split");
    s2_attn_plan p;
    s2_error err = {0};
    cr_assert_eq(s2_plan_attn(&s, "sm_80", NULL, &p, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(s2_plan_window(&s, &p, &err), S2_ERR_SPEC);
    cr_expect(strstr(err.msg, "<string>:3:") && strstr(err.msg, "head_dim 96") &&
              strstr(err.msg, "64, 128 and 256"), "%s", err.msg);
    s2_error_clear(&err);
}

Test(plan, window_refuses_groups_off_the_key_tiles)
{
    /* sm_90a d = 128: 128-key forward tiles and 128-row backward tiles */
    s2_spec s = load_spec(128, 8, 8, 1024, 64, "split");
    s2_attn_plan p;
    s2_error err = {0};
    cr_assert_eq(s2_plan_attn(&s, "sm_90a", NULL, &p, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(s2_plan_window(&s, &p, &err), S2_ERR_SPEC);
    cr_expect(strstr(err.msg, "<string>:6:"), "the spec's s2attn line: %s", err.msg);
    cr_expect(strstr(err.msg, "shift 64") && strstr(err.msg, "multiples of 128") &&
              strstr(err.msg, "at most 64 rows"), "%s", err.msg);
    s2_error_clear(&err);
    /* a tile of 64-row key tiles fits the shift of 64 */
    window_plan(&s, "sm_90a",
                "fwd_block_n=64,fwd_stages=2,fwd_mbar=0,fwd_tma=0,fwd_overlap=0,bwd_warps=4,"
                "bwd_mbar=0");
    /* G = 1000: no power of two above 8 divides it */
    s = load_spec(128, 8, 8, 1000, 500, "split");
    cr_assert_eq(s2_plan_attn(&s, "sm_80", NULL, &p, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(s2_plan_window(&s, &p, &err), S2_ERR_SPEC);
    cr_expect(strstr(err.msg, "group_size 1000") && strstr(err.msg, "at most 4 rows"), "%s",
              err.msg);
    s2_error_clear(&err);
}

Test(plan, window_refuses_row_tiles_off_the_chunk_alignment)
{
    s2_spec s = load_spec(64, 8, 8, 1024, 512, "split");
    s2_attn_tile t = s2_plan_default_tile("sm_80", 64);
    s2_error err = {0};
    /* 8 warps of two strips: 256-row query tiles */
    cr_assert_eq(s2_plan_parse_tile("fwd_warps=8,fwd_strips=2,fwd_block_n=32", &t, &err), S2_OK);
    s2_attn_plan p;
    cr_assert_eq(s2_plan_attn(&s, "sm_80", &t, &p, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(s2_plan_window(&s, &p, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "fwd_block_m") && strstr(err.msg, "= 256 rows") &&
              strstr(err.msg, "128-row"), "%s", err.msg);
    s2_error_clear(&err);
    /* 3 backward warps: 48-row tiles */
    t = s2_plan_default_tile("sm_80", 64);
    cr_assert_eq(s2_plan_parse_tile("bwd_warps=3", &t, &err), S2_OK);
    cr_assert_eq(s2_plan_attn(&s, "sm_80", &t, &p, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(s2_plan_window(&s, &p, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "bwd_block_m") && strstr(err.msg, "= 48 rows"), "%s", err.msg);
    s2_error_clear(&err);
    /* the scalar backward (head_dim 256) masks every pair: its 6-row blocks start anywhere */
    s = load_spec(256, 4, 4, 128, 64, "split");
    window_plan(&s, "sm_80", "fwd_warps=2,fwd_strips=1,fwd_block_n=32,bwd_warps=3");
}

/* ---- the window's arguments and grids ---- */

static void expect_refused(const s2_attn_plan *p, s2_attn_window w, const char *want)
{
    s2_error err = {0};
    cr_expect_eq(s2_plan_check_window(p, &w, &err), S2_ERR_INVALID, "%d %d %d %d: %s", w.qlo,
                 w.qhi, w.klo, w.n_global, want);
    cr_expect(err.msg && strstr(err.msg, want), "want '%s' in: %s", want, err.msg);
    s2_error_clear(&err);
}

Test(plan, window_arguments_checked)
{
    s2_spec s = load_spec(128, 8, 8, 1024, 512, "split");
    s2_attn_plan p = window_plan(&s, "sm_90a", NULL);
    s2_error err = {0};
    const s2_attn_window ok = {.qlo = 1024, .qhi = 2048, .klo = 512, .n_global = 4000};
    cr_expect_eq(s2_plan_check_window(&p, &ok, &err), S2_OK, "%s", err.msg);
    expect_refused(&p, (s2_attn_window){1024, 1024, 512, 4000}, "[qlo, qhi) = [1024, 1024)");
    expect_refused(&p, (s2_attn_window){1024, 4001, 512, 4000}, "n_global = 4000");
    expect_refused(&p, (s2_attn_window){-128, 128, 0, 4000}, "valid 0 <= qlo < qhi");
    expect_refused(&p, (s2_attn_window){1024, 2048, 1152, 4000}, "klo = 1152 with qlo = 1024");
    expect_refused(&p, (s2_attn_window){1024, 2048, -128, 4000}, "klo = -128");
    expect_refused(&p, (s2_attn_window){1000, 2048, 512, 4000}, "qlo = 1000 is not on an edge");
    expect_refused(&p, (s2_attn_window){1024, 2048, 500, 4000}, "klo = 500 is not on an edge");
    /* the shifted heads' group of 1024 starts at 512: a klo above it would lose keys */
    expect_refused(&p, (s2_attn_window){1024, 2048, 1024, 4000}, "shifted heads' query");
    expect_refused(&p, (s2_attn_window){1536, 2048, 1152, 4000},
                   "plain heads' query at qlo = 1536");
    expect_refused(&p, (s2_attn_window){0, 128, 0, 0}, "n_global = 0 tokens");
    /* a plan without the window */
    s2_attn_plan q = p;
    q.window = 0;
    cr_expect_eq(s2_plan_check_window(&q, &ok, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "s2_plan_window"), "%s", err.msg);
    s2_error_clear(&err);
}

/* Row tiles a window grid of bm-row tiles starts at (the kernels' s2_window_tile0). */
static long tile0(const s2_attn_plan *p, int lo, int bm)
{
    const long gt = p->G / bm > 0 ? p->G / bm : 1;
    return lo / bm / gt * gt;
}

/* Every rank of gen/sp_plan.h's plans passes the window checks with klo its lowest halo row
 * (as the trainer will pass it); the forward's key tiles (s2_plan_key_tiles) of every query
 * tile a window grid holds, and every key tile of the dK/dV grid, lie inside the rows the
 * window holds; the grids cover the window's tiles, in whole groups of tiles, and are no larger
 * than the whole sequence's. */
Test(plan, window_grids_and_tiles_stay_inside_every_rank)
{
    static const struct {
        int d, H, Hkv, G, S, N;
        const char *arch, *tile;
    } v[] = {
        {128, 8, 8, 1024, 512, 16384, "sm_90a", NULL},
        {128, 8, 2, 256, 128, 3001, "sm_90a", NULL},
        {64, 4, 4, 512, 256, 3000, "sm_90a", NULL},
        {128, 4, 4, 2048, 0, 2000, "sm_80", NULL},
        {128, 4, 4, 256, 128, 1000, "sm_80", "fwd_warps=2,fwd_strips=1,fwd_block_n=64"},
        {256, 4, 4, 128, 64, 5000, "sm_80", NULL},
    };
    const int Ps[] = {1, 2, 3, 4, 8};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        s2_spec s = load_spec(v[i].d, v[i].H, v[i].Hkv, v[i].G, v[i].S, "split");
        s2_attn_plan p = window_plan(&s, v[i].arch, v[i].tile);
        s2_sp_attn sa;
        s2_sp_attn_from_spec(&s, &sa);
        sa.N = v[i].N;
        for (size_t pi = 0; pi < sizeof Ps / sizeof Ps[0]; pi++) {
            s2_sp_plan sp;
            s2_error err = {0};
            cr_assert_eq(s2_sp_plan_make(&sa, Ps[pi], S2_SP_DEFAULT_ALIGN, &sp, &err), S2_OK,
                         "%s", err.msg);
            for (int r = 0; r < sp.P; r++) {
                const int lo = sp.rank[r].lo, hi = sp.rank[r].hi;
                int klo = lo;
                for (int k = 0; k < S2_SP_KINDS; k++)
                    if (sp.rank[r].before[k].lo < sp.rank[r].before[k].hi &&
                        sp.rank[r].before[k].lo < klo)
                        klo = sp.rank[r].before[k].lo;
                const s2_attn_window w = {lo, hi, klo, v[i].N};
                cr_assert_eq(s2_plan_check_window(&p, &w, &err), S2_OK, "case %zu P=%d rank %d:"
                             " %s", i, sp.P, r, err.msg);
                const s2_dim3 gf = s2_plan_grid_fwd_window(&p, &w);
                const s2_dim3 gq = s2_plan_grid_dq_window(&p, &w);
                const s2_dim3 gk = s2_plan_grid_dkdv_window(&p, &w);
                const s2_dim3 whole = s2_plan_grid_fwd(&p, v[i].N, 1);
                cr_expect(gf.x <= whole.x && gf.y == (unsigned)p.H && gf.z == 1);
                cr_expect(gq.y == (unsigned)p.H && gk.y == (unsigned)p.Hkv);
                const struct {
                    s2_dim3 g;
                    int lo, bm;
                } grids[3] = {{gf, lo, p.fwd_block_m}, {gq, lo, p.bwd_block_m},
                              {gk, klo, p.bwd_block_m}};
                for (int gi = 0; gi < 3; gi++) {
                    if (gi > 0 && !p.bwd_tensor_cores) { /* blocks of rows from lo itself */
                        cr_expect_eq(grids[gi].g.x, (unsigned)((hi - grids[gi].lo +
                                                                grids[gi].bm - 1) / grids[gi].bm));
                        continue;
                    }
                    const long t0 = tile0(&p, grids[gi].lo, grids[gi].bm);
                    const long gt = p.G / grids[gi].bm > 0 ? p.G / grids[gi].bm : 1;
                    cr_expect(t0 * grids[gi].bm <= grids[gi].lo);
                    cr_expect((t0 + grids[gi].g.x) * grids[gi].bm >= hi, "grid %d covers", gi);
                    cr_expect_eq(grids[gi].g.x % gt, 0, "whole groups of tiles");
                    cr_expect_lt((long)grids[gi].g.x, (hi - t0 * grids[gi].bm) /
                                 grids[gi].bm + 2 * gt, "no more than a group of tiles past");
                }
                /* the forward's key tiles of the window's query tiles: inside [klo, hi) */
                for (int cls = 0; cls < 2; cls++)
                    for (long qt = lo / p.fwd_block_m; qt * p.fwd_block_m < hi; qt++) {
                        int kb, ke;
                        s2_plan_key_tiles(&p, cls, (int)qt, hi, &kb, &ke);
                        cr_expect_geq((long)kb * p.tile.fwd_block_n, klo,
                                      "case %zu P=%d rank %d cls %d tile %ld", i, sp.P, r, cls,
                                      qt);
                        cr_expect_leq((long)ke * p.tile.fwd_block_n,
                                      ((long)hi + p.tile.fwd_block_n - 1) /
                                          p.tile.fwd_block_n * p.tile.fwd_block_n);
                    }
            }
            s2_sp_plan_free(&sp);
        }
    }
}

/* ---- the runtime's entry points: checked before any CUDA call ---- */

Test(runtime, window_entry_points_check_their_arguments)
{
    s2_spec s = load_spec(128, 8, 8, 1024, 512, "split");
    s2_attn a;
    memset(&a, 0, sizeof a); /* nothing loaded: a launch would fail on CUDA, not before */
    a.plan = window_plan(&s, "sm_90a", NULL);
    s2_error err = {0};
    const s2_attn_window bad = {.qlo = 1024, .qhi = 2048, .klo = 1024, .n_global = 4000};
    cr_expect_eq(s2_attn_forward_window(&a, &bad, NULL, NULL, NULL, NULL, NULL, 0, &err),
                 S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "s2_attn_forward_window: window: klo = 1024"), "%s", err.msg);
    s2_error_clear(&err);
    cr_expect_eq(s2_attn_backward_window(&a, &bad, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                                         NULL, NULL, NULL, 0, &err),
                 S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "s2_attn_backward_window: window: klo = 1024"), "%s", err.msg);
    s2_error_clear(&err);
    const s2_attn_window past = {.qlo = 0, .qhi = 5000, .klo = 0, .n_global = 4000};
    cr_expect_eq(s2_attn_forward_window(&a, &past, NULL, NULL, NULL, NULL, NULL, 0, &err),
                 S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "n_global = 4000"), "%s", err.msg);
    s2_error_clear(&err);
    /* the window units take no batch (so no varlen) ... */
    int32_t cu[3] = {0, 100, 300};
    s2_attn_batch bt;
    cr_assert_eq(s2_attn_batch_init(&bt, cu, 2, 300, "cu_seqlens", &err), S2_OK);
    cr_expect_eq(s2_attn_forward(&a, &bt, NULL, NULL, NULL, NULL, NULL, 0, &err),
                 S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "s2_attn_forward: these are the sequence-parallel window units"),
              "%s", err.msg);
    s2_error_clear(&err);
    cr_expect_eq(s2_attn_backward(&a, &bt, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                                  NULL, 0, &err),
                 S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "s2_attn_backward: these are"), "%s", err.msg);
    s2_error_clear(&err);
    /* ... and the batch units take no window */
    a.plan.window = 0;
    const s2_attn_window ok = {.qlo = 1024, .qhi = 2048, .klo = 512, .n_global = 4000};
    cr_expect_eq(s2_attn_forward_window(&a, &ok, NULL, NULL, NULL, NULL, NULL, 0, &err),
                 S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "s2_attn_load_window"), "%s", err.msg);
    s2_error_clear(&err);
}

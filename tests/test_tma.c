/*
 * test_tma.c — the TMA forward (tile fwd_tma) and dK/dV kernel (bwd_tma) without a GPU: the
 * plan's rules for them, the emitter's option blocks (S2_FWD_TMA and S2_BWD_TMA nested in and
 * around S2_WINDOW) and what the emitted units hold with and without them. Correctness on the
 * device is tests/gpu_check.c's tiles 6 (fwd_tma) and 7 (bwd_tma).
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen/emit.h"
#include "gen/plan.h"

/* A spec of this shape: context_length ctx, groups of g tokens shifted by shift */
static s2_spec load_shape(int d, int H, int Hkv, const char *mode, int ctx, int g, int shift)
{
    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "name: t\n"
             "model: {hidden_size: %d, intermediate_size: 1024, num_layers: 2, num_heads: %d,\n"
             "        num_kv_heads: %d, head_dim: %d, vocab_size: 256,\n"
             "        max_position_embeddings: 512}\n"
             "context_length: %d\n"
             "s2attn: {group_size: %d, shift: %d, shift_mode: %s}\n",
             H * d, H, Hkv, d, ctx, g, shift, mode);
    s2_spec s;
    s2_error err = {0};
    cr_assert_eq(s2_spec_load_string(yaml, "t.yaml", NULL, 0, &s, &err), S2_OK, "%s", err.msg);
    return s;
}

static s2_spec load_spec(int d, int H, int Hkv, const char *mode)
{
    return load_shape(d, H, Hkv, mode, 16384, 4096, 2048);
}

#define TMA128                                                                                  \
    "fwd_wgmma=1,fwd_warps=8,fwd_strips=1,fwd_block_n=128,fwd_stages=2,fwd_mbar=1,fwd_tma=1,"  \
    "fwd_overlap=0"

/* The plan of s for sm_90a with the default tile and then the tile text applied. */
static s2_status plan_with(const s2_spec *s, const char *tile, s2_attn_plan *p, s2_error *err)
{
    s2_attn_tile t = s2_plan_default_tile("sm_90a", s->model.head_dim);
    s2_status st = s2_plan_parse_tile(tile, &t, err);
    return st ? st : s2_plan_attn(s, "sm_90a", &t, p, err);
}

/* The generated source of unit u of plan p (emitting it must succeed); the caller frees it. */
static char *emit_unit(const s2_spec *s, const s2_attn_plan *p, s2_attn_unit u)
{
    char *src = NULL;
    s2_error err = {0};
    cr_assert_eq(s2_emit_attn(s, p, u, &src, &err), S2_OK, "%s", err.msg);
    return src;
}

Test(plan, tma_forward_adds_a_producer_warpgroup)
{
    s2_spec s = load_spec(128, 8, 2, "split");
    s2_attn_plan p, base;
    s2_error err = {0};
    cr_assert_eq(plan_with(&s, TMA128, &p, &err), S2_OK, "%s", err.msg);
    s2_attn_tile t = p.tile;
    t.fwd_tma = 0;
    cr_assert_eq(s2_plan_attn(&s, "sm_90a", &t, &base, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(p.fwd_threads, base.fwd_threads + 128);
    cr_expect_eq(p.fwd_block_m, base.fwd_block_m, "the producer computes no rows");
    cr_expect_eq(p.smem_fwd, base.smem_fwd + 16, "Q's mbarrier");
}

Test(plan, tma_forward_refusals_name_what_is_valid)
{
    static const struct {
        const char *mode, *tile, *want;
    } bad[] = {
        {"roll", TMA128, "shift_mode roll"},
        {"split", "fwd_wgmma=1,fwd_warps=4,fwd_strips=1,fwd_block_n=128,fwd_stages=2,fwd_mbar=1,"
                  "fwd_tma=1", "fwd_warps 8"},
        {"split", "fwd_wgmma=1,fwd_warps=8,fwd_strips=1,fwd_block_n=128,fwd_stages=2,fwd_mbar=0,"
                  "fwd_tma=1", "fwd_mbar 1"},
        {"split", "fwd_wgmma=1,fwd_warps=8,fwd_strips=1,fwd_block_n=128,fwd_stages=1,fwd_mbar=1,"
                  "fwd_tma=1", "fwd_stages 2..4"},
        {"split", "fwd_wgmma=0,fwd_warps=8,fwd_strips=1,fwd_block_n=128,fwd_stages=2,fwd_mbar=0,"
                  "fwd_tma=1", "fwd_wgmma 1"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s2_spec s = load_spec(128, 8, 8, bad[i].mode);
        s2_attn_plan p;
        s2_error err = {0};
        cr_expect_eq(plan_with(&s, bad[i].tile, &p, &err), S2_ERR_INVALID, "case %zu", i);
        cr_expect(err.msg && strstr(err.msg, bad[i].want), "case %zu: %s", i, err.msg);
        s2_error_clear(&err);
    }
    s2_error err = {0};
    cr_expect_eq(s2_plan_check_tile_text("fwd_tma=1", "sm_90", &err), S2_ERR_INVALID);
    cr_expect(err.msg && strstr(err.msg, "needs sm_90a"), "%s", err.msg);
    s2_error_clear(&err);
    cr_expect_eq(s2_plan_check_tile_text("fwd_tma=2", NULL, &err), S2_ERR_INVALID);
    s2_error_clear(&err);
    /* the window units take the cp.async twin of a TMA tile */
    s2_spec s = load_spec(128, 8, 8, "split");
    s2_attn_plan p, twin;
    cr_assert_eq(plan_with(&s, TMA128, &p, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(plan_with(&s, TMA128 ",fwd_tma=0", &twin, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(s2_plan_window(&s, &p, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(s2_plan_window(&s, &twin, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(memcmp(&p, &twin, sizeof p), 0, "a TMA tile's window plan is its twin's");
}

Test(plan, the_default_takes_the_tma_forward_where_the_spec_can)
{
    for (int roll = 0; roll < 2; roll++) {
        s2_spec s = load_spec(128, 8, 8, roll ? "roll" : "split");
        s2_attn_plan p;
        s2_error err = {0};
        cr_assert_eq(s2_plan_attn(&s, "sm_90a", NULL, &p, &err), S2_OK, "%s", err.msg);
        cr_expect_eq(p.tile.fwd_tma, !roll, "roll %d", roll);
        s2_attn_tile t = s2_plan_spec_default_tile(&s, "sm_90a");
        cr_expect_eq(memcmp(&t, &p.tile, sizeof t), 0, "the plan's default is the spec's");
        cr_expect_eq(t.fwd_tma, !roll);
        if (roll)
            cr_expect_eq(t.fwd_stages, 3, "roll mode keeps the forward it had before");
        s2_attn_tile first;
        cr_assert_eq(s2_plan_tile_space(&s, "sm_90a", S2_UNIT_ATTN_FWD, &first, 1) > 0, 1);
        cr_expect_eq(memcmp(&first, &t, sizeof t), 0, "the space starts at the spec's default");
    }
    s2_spec s = load_spec(64, 8, 8, "split");
    s2_attn_tile t64 = s2_plan_spec_default_tile(&s, "sm_90a");
    cr_expect_eq(t64.fwd_tma + t64.fwd_overlap, 2, "d = 64: the overlapped TMA forward");
    cr_expect_eq(t64.bwd_warps, 4, "d = 64: one warpgroup a backward block");
    s = load_spec(64, 8, 8, "roll");
    t64 = s2_plan_spec_default_tile(&s, "sm_90a");
    cr_expect(t64.fwd_tma == 0 && t64.fwd_block_n == 64 && t64.fwd_stages == 4 && !t64.fwd_mbar,
              "d = 64, roll mode: the cp.async forward it had before");
    s = load_spec(128, 8, 8, "split");
    cr_expect_eq(s2_plan_spec_default_tile(&s, "sm_80").fwd_tma, 0, "TMA is sm_90a's");
}

/* load_spec's shape with groups of g tokens, four of them a context, shifted by g / 2 */
static s2_spec load_group(int d, int H, int Hkv, const char *mode, int g)
{
    return load_shape(d, H, Hkv, mode, 4 * g, g, g / 2);
}

Test(plan, the_default_backward_is_the_ordered_dq_for_long_groups_of_one_kv_head_a_head)
{
    s2_spec s = load_group(128, 8, 8, "split", S2_PLAN_ORDERED_DQ_MIN_GROUP);
    s2_attn_tile t = s2_plan_spec_default_tile(&s, "sm_90a");
    cr_expect(t.bwd_atomic_dq == 2 && t.bwd_tma == 1 && t.bwd_stages == 2,
              "G %d: the ordered dQ (measured faster from N = 32k)", s.s2attn.group_size);
    s2_attn_plan p;
    s2_error err = {0};
    cr_assert_eq(s2_plan_attn(&s, "sm_90a", NULL, &p, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(memcmp(&p.tile, &t, sizeof t), 0, "the plan's default is the spec's");
    cr_expect_eq(p.bwd_dq_delta, 0, "delta from s2_attn_bwd_pre");
    /* the sequence-parallel windows run the deterministic dQ kernel instead */
    cr_assert_eq(s2_plan_window(&s, &p, &err), S2_OK, "%s", err.msg);
    cr_expect(p.tile.bwd_atomic_dq == 0 && p.tile.bwd_tma == 0 && p.tile.bwd_stages == 4);
    s2_attn_tile first;
    cr_assert_eq(s2_plan_tile_space(&s, "sm_90a", S2_UNIT_ATTN_BWD, &first, 1) > 0, 1);
    cr_expect_eq(memcmp(&first, &t, sizeof t), 0, "the tuning space starts at the default");

    /* where it keeps the dQ kernel: a shorter group, grouped kv heads, head_dim 64, roll mode
     * with a shift, another arch; the tile otherwise the one below the threshold */
    const s2_attn_tile base = s2_plan_default_tile("sm_90a", 128);
    struct {
        int d, H, Hkv, g;
        const char *mode, *arch, *why;
    } keep[] = {
        {128, 8, 8, S2_PLAN_ORDERED_DQ_MIN_GROUP / 2, "split", "sm_90a", "G below the threshold"},
        {128, 8, 2, S2_PLAN_ORDERED_DQ_MIN_GROUP, "split", "sm_90a", "grouped kv heads"},
        {64, 8, 8, S2_PLAN_ORDERED_DQ_MIN_GROUP, "split", "sm_90a", "head_dim 64"},
        {128, 8, 8, S2_PLAN_ORDERED_DQ_MIN_GROUP, "roll", "sm_90a", "roll mode's shift"},
        {128, 8, 8, S2_PLAN_ORDERED_DQ_MIN_GROUP, "split", "sm_80", "no TMA"},
    };
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) {
        s = load_group(keep[i].d, keep[i].H, keep[i].Hkv, keep[i].mode, keep[i].g);
        t = s2_plan_spec_default_tile(&s, keep[i].arch);
        cr_expect(t.bwd_atomic_dq == 0 && t.bwd_tma == 0, "%s", keep[i].why);
        if (i == 0 || i == 1)
            cr_expect_eq(memcmp(&t, &base, sizeof t), 0, "%s: the default below", keep[i].why);
    }
    /* roll mode without a shift can take the TMA loads, so the ordered dQ too */
    s = load_shape(128, 8, 8, "roll", 32768, S2_PLAN_ORDERED_DQ_MIN_GROUP, 0);
    cr_expect_eq(s2_plan_spec_default_tile(&s, "sm_90a").bwd_atomic_dq, 2, "roll, shift 0");
    cr_expect_eq(s2_plan_attn(&s, "sm_90a", NULL, &p, &err), S2_OK, "%s", err.msg);
    s2_error_clear(&err);
}

Test(plan, tma_tiles_in_the_forward_space_of_split_mode_only)
{
    for (int roll = 0; roll < 2; roll++) {
        s2_spec s = load_spec(128, 8, 8, roll ? "roll" : "split");
        const int n = s2_plan_tile_space(&s, "sm_90a", S2_UNIT_ATTN_FWD, NULL, 0);
        s2_attn_tile *t = calloc((size_t)n, sizeof *t);
        cr_assert_not_null(t);
        s2_plan_tile_space(&s, "sm_90a", S2_UNIT_ATTN_FWD, t, n);
        int tma = 0;
        for (int i = 0; i < n; i++)
            tma += t[i].fwd_tma;
        if (roll)
            cr_expect_eq(tma, 0, "roll mode: no TMA tile");
        else
            cr_expect_gt(tma, 0, "split mode: the tuner tries the TMA forward");
        free(t);
    }
}

static char *resolve(const char *text, unsigned opts)
{
    s2_buf b = {0};
    s2_error err = {0};
    cr_assert_eq(s2_emit_template_text(&b, "t.cuh", text, opts, &err), S2_OK, "%s", err.msg);
    return b.data ? b.data : strdup("");
}

Test(emit, option_blocks_of_different_options_nest)
{
    const char *t = "a\n"
                    "#if S2_WINDOW\n"
                    "w\n"
                    "#else\n"
                    "#if S2_FWD_TMA // inside the window block's #else\n"
                    "t\n"
                    "#if X\n"
                    "tx\n"
                    "#endif\n"
                    "#else\n"
                    "p\n"
                    "#endif\n"
                    "#endif\n"
                    "#if S2_FWD_TMA\n"
                    "#else\n"
                    "f\n"
                    "#endif\n"
                    "b\n";
    const struct {
        unsigned opts;
        const char *want;
    } cases[] = {
        {0, "a\np\nf\nb\n"},
        {S2_EMIT_OPT_FWD_TMA, "a\n#if S2_FWD_TMA // inside the window block's #else\nt\n"
                              "#if X\ntx\n#endif\n#else\np\n#endif\n"
                              "#if S2_FWD_TMA\n#else\nf\n#endif\nb\n"},
        {S2_EMIT_OPT_WINDOW, "a\n#if S2_WINDOW\nw\n#else\np\n#endif\nf\nb\n"},
        {S2_EMIT_OPT_WINDOW | S2_EMIT_OPT_FWD_TMA, t},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *o = resolve(t, cases[i].opts);
        cr_expect_str_eq(o, cases[i].want, "opts %u", cases[i].opts);
        free(o);
    }
}

Test(emit, option_blocks_of_one_option_do_not_nest)
{
    static const char *const bad[][2] = {
        {"#if S2_FWD_TMA\n#if S2_FWD_TMA\n#endif\n#endif\n", "t.cuh:2: a fwd_tma block inside"},
        {"#if S2_WINDOW\n#if S2_FWD_TMA\n#if S2_WINDOW\n#endif\n#endif\n#endif\n",
         "t.cuh:3: a window block inside the one of line 1"},
        {"#if S2_FWD_TMA\n#elif A\n#endif\n", "#elif in the fwd_tma block of line 1"},
        {"#if S2_WINDOW\n#if S2_FWD_TMA\n#endif\n", "the window block of line 1 has no #endif"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s2_buf b = {0};
        s2_error err = {0};
        cr_expect_eq(s2_emit_template_text(&b, "t.cuh", bad[i][0], 3, &err), S2_ERR_INVALID,
                     "case %zu", i);
        cr_expect(err.msg && strstr(err.msg, bad[i][1]), "case %zu: %s", i, err.msg);
        s2_error_clear(&err);
        s2_buf_free(&b);
    }
}

Test(emit, only_a_tma_unit_holds_the_tma_text)
{
    s2_spec s = load_spec(128, 8, 2, "split");
    for (int tma = 0; tma < 2; tma++) {
        s2_attn_plan p;
        s2_error err = {0};
        /* the TMA tile, or its twin on cp.async */
        const s2_status st = plan_with(&s, tma ? TMA128 : TMA128 ",fwd_tma=0", &p, &err);
        cr_assert_eq(st, S2_OK, "%s", err.msg);
        char *src = emit_unit(&s, &p, S2_UNIT_ATTN_FWD);
        cr_expect_eq(strstr(src, "S2_FWD_TMA") != NULL, tma, "tma %d", tma);
        cr_expect_eq(strstr(src, "cp.async.bulk.tensor") != NULL, tma, "tma %d", tma);
        cr_expect_eq(strstr(src, "s2_load_tile_sw<S2_FWD_BN") != NULL, 1,
                     "the cp.async loads stay in the text (the TMA unit's own are in #else parts)");
        free(src);
        src = emit_unit(&s, &p, S2_UNIT_ATTN_BWD);
        cr_expect_null(strstr(src, "S2_FWD_TMA"), "the backward never holds the forward's option");
        free(src);
    }
}

/* The overlapped TMA forward (fwd_overlap): only with fwd_tma (the refusal names the way out),
 * off in the roll-mode default and in the cp.async twin, and only its unit holds its steps. */
Test(plan, fwd_overlap_rules)
{
    s2_spec s = load_spec(128, 8, 2, "split");
    s2_attn_plan p;
    s2_error err = {0};
    cr_assert_eq(plan_with(&s, TMA128 ",fwd_overlap=1,fwd_stages=3", &p, &err), S2_OK, "%s",
                 err.msg);
    cr_expect_eq(plan_with(&s, TMA128 ",fwd_overlap=1,fwd_tma=0", &p, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "fwd_overlap = 1 with fwd_tma 0: valid only with fwd_tma = 1"),
              "%s", err.msg);
    cr_expect(strstr(err.msg, "or fwd_overlap = 0"), "%s", err.msg);
    s2_error_clear(&err);
    cr_expect_eq(plan_with(&s, TMA128 ",fwd_overlap=2", &p, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "fwd_overlap = 2 is out of range: valid 0..1"), "%s", err.msg);
    s2_error_clear(&err);
    cr_expect_eq(s2_plan_default_tile("sm_90a", 128).fwd_overlap, 1);
    s2_spec roll = load_spec(128, 8, 2, "roll");
    const s2_attn_tile rt = s2_plan_spec_default_tile(&roll, "sm_90a");
    cr_expect_eq(rt.fwd_tma + rt.fwd_overlap, 0, "roll mode keeps the cp.async forward");
    cr_assert_eq(s2_plan_attn(&roll, "sm_90a", &rt, &p, &err), S2_OK, "%s", err.msg);
    const s2_attn_tile twin = s2_plan_cp_async_twin(s2_plan_default_tile("sm_90a", 128));
    cr_expect_eq(twin.fwd_tma + twin.fwd_overlap, 0);
    cr_assert_eq(s2_plan_attn(&s, "sm_90a", &twin, &p, &err), S2_OK, "%s", err.msg);
}

Test(emit, only_an_overlap_unit_holds_its_steps)
{
    s2_spec s = load_spec(128, 8, 2, "split");
    for (int ov = 0; ov < 2; ov++) {
        s2_attn_plan p;
        s2_error err = {0};
        cr_assert_eq(plan_with(&s, ov ? TMA128 ",fwd_overlap=1" : TMA128, &p, &err), S2_OK, "%s",
                     err.msg);
        char *src = emit_unit(&s, &p, S2_UNIT_ATTN_FWD);
        cr_expect_eq(strstr(src, "#define S2_FWD_OVERLAP 1") != NULL, ov, "overlap %d", ov);
        cr_expect_eq(strstr(src, "s2_wgmma_wait1(); // S_it has finished") != NULL, ov,
                     "overlap %d", ov);
        cr_expect_eq(strstr(src, "#if S2_FWD_OVERLAP") != NULL, ov,
                     "without the option the emitter resolves its blocks away");
        free(src);
    }
}

/* The persistent forward (fwd_persist): only over the overlapped TMA forward (the refusal
 * names the way out), off in the defaults of both modes and in the cp.async twin, 16 bytes of
 * shared memory more (Q's release and the tile handed over), and only its unit holds the
 * scheduler. */
Test(plan, fwd_persist_rules)
{
    s2_spec s = load_spec(128, 8, 2, "split");
    s2_attn_plan p, q;
    s2_error err = {0};
    cr_assert_eq(plan_with(&s, TMA128 ",fwd_overlap=1,fwd_stages=3", &q, &err), S2_OK, "%s",
                 err.msg);
    cr_assert_eq(plan_with(&s, TMA128 ",fwd_overlap=1,fwd_stages=3,fwd_persist=1", &p, &err),
                 S2_OK, "%s", err.msg);
    cr_expect_eq(p.smem_fwd, q.smem_fwd + 16);
    cr_expect_eq(plan_with(&s, TMA128 ",fwd_persist=1", &p, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "fwd_persist = 1 with fwd_overlap 0: valid only with "
                              "fwd_overlap = 1"), "%s", err.msg);
    cr_expect(strstr(err.msg, "or fwd_persist = 0"), "%s", err.msg);
    s2_error_clear(&err);
    cr_expect_eq(plan_with(&s, TMA128 ",fwd_overlap=1,fwd_persist=2", &p, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "fwd_persist = 2 is out of range: valid 0..1"), "%s", err.msg);
    s2_error_clear(&err);
    s2_attn_tile t = s2_plan_default_tile("sm_90a", 128);
    t.fwd_persist = 1;
    cr_expect_eq(s2_plan_cp_async_twin(t).fwd_persist, 0);
    s2_spec roll = load_spec(128, 8, 2, "roll");
    cr_expect_eq(s2_plan_spec_default_tile(&roll, "sm_90a").fwd_persist, 0);
    cr_expect_eq(s2_plan_check_tile_text("fwd_persist=1", "sm_80", &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "fwd_persist = 1") || strstr(err.msg, "fwd_persist, "), "%s",
              err.msg);
    s2_error_clear(&err);
}

/* The launch: the tiles' grid (x, H, batch) run by at most blocks_max blocks in a row. */
Test(plan, fwd_persist_grid)
{
    s2_spec s = load_spec(128, 8, 2, "split");
    s2_attn_plan p;
    s2_error err = {0};
    cr_assert_eq(plan_with(&s, TMA128 ",fwd_overlap=1,fwd_persist=1", &p, &err), S2_OK, "%s",
                 err.msg);
    const s2_dim3 g = s2_plan_grid_fwd(&p, 4096, 3);
    const unsigned tiles = g.x * g.y * g.z;
    cr_assert_gt(tiles, 132);
    s2_dim3 pg = s2_plan_grid_fwd_persist(&p, 4096, 3, 132);
    cr_expect(pg.x == 132 && pg.y == 1 && pg.z == 1, "%u %u %u", pg.x, pg.y, pg.z);
    pg = s2_plan_grid_fwd_persist(&p, 4096, 3, (int)tiles + 5);
    cr_expect_eq(pg.x, tiles, "fewer tiles than blocks: a block a tile");
    pg = s2_plan_grid_fwd_persist(&p, 0, 0, 132);
    cr_expect_eq(pg.x, 0, "an empty batch launches nothing");
}

/* The tuner's space holds persistent candidates, each over the overlapped TMA forward. */
Test(plan, fwd_persist_in_tile_space)
{
    s2_spec s = load_spec(128, 8, 2, "split");
    s2_attn_tile tiles[512];
    const int n = s2_plan_tile_space(&s, "sm_90a", S2_UNIT_ATTN_FWD, tiles, 512);
    cr_assert(n > 0 && n <= 512, "%d", n);
    int persist = 0;
    for (int i = 0; i < n; i++)
        if (tiles[i].fwd_persist) {
            persist++;
            cr_expect(tiles[i].fwd_overlap && tiles[i].fwd_tma, "candidate %d", i);
        }
    cr_expect_gt(persist, 0);
}

Test(emit, only_a_persistent_unit_holds_its_scheduler)
{
    s2_spec s = load_spec(128, 8, 2, "split");
    for (int ps = 0; ps < 2; ps++) {
        s2_attn_plan p;
        s2_error err = {0};
        cr_assert_eq(plan_with(&s, ps ? TMA128 ",fwd_overlap=1,fwd_persist=1"
                                      : TMA128 ",fwd_overlap=1", &p, &err),
                     S2_OK, "%s", err.msg);
        char *src = emit_unit(&s, &p, S2_UNIT_ATTN_FWD);
        cr_expect_eq(strstr(src, "#define S2_FWD_PERSIST 1") != NULL, ps, "persist %d", ps);
        cr_expect_eq(strstr(src, "__device__ unsigned s2_fwd_sched[") != NULL, ps,
                     "persist %d", ps);
        cr_expect_eq(strstr(src, "#if S2_FWD_PERSIST") != NULL, ps,
                     "without the option the emitter resolves its blocks away");
        free(src);
        src = emit_unit(&s, &p, S2_UNIT_ATTN_BWD);
        cr_expect_null(strstr(src, "S2_FWD_PERSIST"), "the backward never holds the option");
        free(src);
    }
}

/* ---- the TMA dK/dV kernel (bwd_tma) ---- */

#define BWDTMA "bwd_wgmma=1,bwd_warps=8,bwd_block_n=64,bwd_stages=4,bwd_atomic_dq=0,bwd_mbar=1"

Test(plan, tma_dkdv_adds_a_producer_warpgroup_to_that_kernel_only)
{
    for (int d = 64; d <= 128; d += 64) {
        s2_spec s = load_spec(d, 8, 2, "split");
        s2_attn_plan p, base;
        s2_error err = {0};
        cr_assert_eq(plan_with(&s, BWDTMA ",bwd_tma=1", &p, &err), S2_OK, "%s", err.msg);
        cr_assert_eq(plan_with(&s, BWDTMA ",bwd_tma=0", &base, &err), S2_OK, "%s", err.msg);
        cr_expect_eq(p.dkdv_threads, base.bwd_threads + 128, "d %d", d);
        cr_expect_eq(base.dkdv_threads, base.bwd_threads, "d %d: no producer without bwd_tma", d);
        cr_expect_eq(p.bwd_threads, base.bwd_threads, "the dQ kernel's block is unchanged");
        cr_expect_eq(p.bwd_block_m, base.bwd_block_m, "the producer computes no rows");
        cr_expect_eq(p.smem_dkdv, base.smem_dkdv + 16, "K and V's mbarrier");
        cr_expect_eq(p.smem_dq, base.smem_dq, "the dQ kernel's shared memory is unchanged");
    }
}

/* The atomic dQ on the TMA kernel: no dQ kernel, dS^T staged and each consumer's fp32 dQ
 * (64 x d) beside the rings; the window units' twin streams on commit groups (bwd_mbar 0). */
Test(plan, tma_dkdv_with_the_atomic_dq)
{
    for (int d = 64; d <= 128; d += 64) {
        s2_spec s = load_spec(d, 8, 2, "split");
        s2_attn_plan p, det, twin;
        s2_error err = {0};
        cr_assert_eq(plan_with(&s, BWDTMA ",bwd_stages=2,bwd_atomic_dq=1,bwd_tma=1", &p, &err),
                     S2_OK, "d %d: %s", d, err.msg);
        cr_assert_eq(plan_with(&s, BWDTMA ",bwd_tma=1", &det, &err), S2_OK, "%s", err.msg);
        cr_expect_not(p.bwd_dq_delta, "d %d: delta by the pre pass, no dQ kernel", d);
        cr_expect(det.bwd_dq_delta);
        cr_expect_eq(p.dkdv_threads, det.dkdv_threads, "d %d", d);
        const int rings = (2 * 16 * 8 + 2 * 2 * 64) * d * 2 + 1024 + 16 * 2 + 2 * 2 * 64 * 4 + 16;
        const int dst = 16 * 8 * 64 * 2; /* one staged dS^T; two at head_dim 128 */
        cr_expect_eq(p.smem_dkdv, rings + dst * (d == 128 ? 2 : 1) + 1024 + 2 * 64 * 64 * 4 +
                                      (d == 128 ? 8 * 8 : 0), /* 8 mbarriers */
                     "d %d: %d", d, p.smem_dkdv);
        cr_assert_eq(plan_with(&s, BWDTMA ",bwd_stages=2,bwd_atomic_dq=1,bwd_mbar=0", &twin, &err),
                     S2_OK, "%s", err.msg);
        cr_assert_eq(s2_plan_window(&s, &p, &err), S2_OK, "%s", err.msg);
        cr_assert_eq(s2_plan_window(&s, &twin, &err), S2_OK, "%s", err.msg);
        cr_expect_eq(memcmp(&p, &twin, sizeof p), 0, "d %d: the window plan is the twin's", d);
    }
}

/* The ordered dQ (bwd_atomic_dq 2): the atomic dQ's kernel and shared memory, and the
 * reducer's 4 mbarriers and the ticket's 16 bytes, at head_dim 128, its turn counters in the workspace; the window units' twin is the
 * default's deterministic dQ kernel; refused at head_dim 64 and without bwd_tma. */
Test(plan, tma_dkdv_with_the_ordered_dq)
{
    s2_spec s = load_spec(128, 8, 2, "split");
    s2_attn_plan p, atomic, twin;
    s2_error err = {0};
    cr_assert_eq(plan_with(&s, BWDTMA ",bwd_stages=2,bwd_atomic_dq=2,bwd_tma=1", &p, &err), S2_OK,
                 "%s", err.msg);
    cr_assert_eq(plan_with(&s, BWDTMA ",bwd_stages=2,bwd_atomic_dq=1,bwd_tma=1", &atomic, &err),
                 S2_OK, "%s", err.msg);
    cr_expect_not(p.bwd_dq_delta, "no dQ kernel");
    cr_expect_eq(p.smem_dkdv, atomic.smem_dkdv + 4 * 8 + 16, "%d vs %d", p.smem_dkdv,
                 atomic.smem_dkdv);
    char *src = emit_unit(&s, &p, S2_UNIT_ATTN_BWD);
    cr_expect_not_null(strstr(src, "#define S2_BWD_ATOMIC_DQ 2\n"));
    free(src);
    cr_assert_eq(plan_with(&s, BWDTMA, &twin, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(s2_plan_window(&s, &p, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(s2_plan_window(&s, &twin, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(memcmp(&p, &twin, sizeof p), 0, "the window plan is the deterministic dQ's");
    static const struct {
        int d;
        const char *tile;
    } bad[] = {
        {64, BWDTMA ",bwd_stages=2,bwd_atomic_dq=2,bwd_tma=1"},
        {128, BWDTMA ",bwd_stages=2,bwd_atomic_dq=2,bwd_mbar=0"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s2_spec sb = load_spec(bad[i].d, 8, 2, "split");
        cr_expect_eq(plan_with(&sb, bad[i].tile, &p, &err), S2_ERR_INVALID, "case %zu", i);
        cr_expect(err.msg && strstr(err.msg, "valid only with bwd_tma 1 and head_dim 128"),
                  "case %zu: %s", i, err.msg);
        s2_error_clear(&err);
    }
}

Test(plan, tma_dkdv_refusals_name_what_is_valid)
{
    static const struct {
        const char *mode, *tile, *want;
    } bad[] = {
        {"roll", BWDTMA ",bwd_tma=1", "bwd_tma = 1 with shift_mode roll"},
        {"split", BWDTMA ",bwd_warps=4,bwd_tma=1", "bwd_warps 8"},
        {"split", BWDTMA ",bwd_mbar=0,bwd_tma=1", "bwd_mbar 1"},
        {"split", BWDTMA ",bwd_mbar=0,bwd_stages=2,bwd_tma=1", "bwd_stages 3..4"},
        {"split", BWDTMA ",bwd_mbar=0,bwd_atomic_dq=1,bwd_tma=1", "bwd_atomic_dq 0"},
        {"split", BWDTMA ",bwd_stages=1,bwd_atomic_dq=1,bwd_tma=1", "bwd_stages 1: valid 2..4"},
        /* the atomic dQ's fp32 tiles leave room for two stages only at head_dim 128 */
        {"split", BWDTMA ",bwd_stages=3,bwd_atomic_dq=1,bwd_tma=1", "bytes of shared memory"},
        {"split", BWDTMA ",bwd_mbar=0,bwd_wgmma=0,bwd_block_n=32,bwd_tma=1", "bwd_wgmma 1"},
        {"split", BWDTMA ",bwd_tma=2", "bwd_tma = 2 is out of range: valid 0..1"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s2_spec s = load_spec(128, 8, 8, bad[i].mode);
        s2_attn_plan p;
        s2_error err = {0};
        s2_attn_tile t = s2_plan_spec_default_tile(&s, "sm_90a");
        s2_status st = s2_plan_parse_tile(bad[i].tile, &t, &err);
        if (!st)
            st = s2_plan_attn(&s, "sm_90a", &t, &p, &err);
        cr_expect_eq(st, S2_ERR_INVALID, "case %zu", i);
        cr_expect(err.msg && strstr(err.msg, bad[i].want), "case %zu: %s", i, err.msg);
        s2_error_clear(&err);
    }
    s2_error err = {0};
    cr_expect_eq(s2_plan_check_tile_text("bwd_tma=1", "sm_90", &err), S2_ERR_INVALID);
    cr_expect(err.msg && strstr(err.msg, "bwd_tma = 1 needs sm_90a"), "%s", err.msg);
    s2_error_clear(&err);
    cr_expect_eq(s2_plan_check_tile_text("bwd_tma=1", "sm_90a", &err), S2_OK, "%s", err.msg);
    /* the window units take the cp.async twin of a TMA tile */
    s2_spec s = load_spec(128, 8, 8, "split");
    s2_attn_plan p, twin;
    cr_assert_eq(plan_with(&s, BWDTMA ",bwd_tma=1", &p, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(plan_with(&s, BWDTMA ",bwd_tma=0", &twin, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(s2_plan_window(&s, &p, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(s2_plan_window(&s, &twin, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(memcmp(&p, &twin, sizeof p), 0, "a bwd_tma tile's window plan is its twin's");
}

Test(plan, tma_dkdv_tiles_in_the_backward_space_of_split_mode_only)
{
    for (int roll = 0; roll < 2; roll++) {
        s2_spec s = load_spec(128, 8, 8, roll ? "roll" : "split");
        for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++) {
            const int n = s2_plan_tile_space(&s, "sm_90a", (s2_attn_unit)u, NULL, 0);
            s2_attn_tile *t = calloc((size_t)n, sizeof *t);
            cr_assert_not_null(t);
            s2_plan_tile_space(&s, "sm_90a", (s2_attn_unit)u, t, n);
            int tma = 0, atomic = 0;
            for (int i = 0; i < n; i++) {
                tma += t[i].bwd_tma;
                atomic += t[i].bwd_tma && t[i].bwd_atomic_dq;
            }
            if (roll || u == S2_UNIT_ATTN_FWD) {
                cr_expect_eq(tma, 0, "roll %d unit %d: no bwd_tma tile", roll, u);
            } else {
                cr_expect_eq(tma, 4, "split mode: the tuner tries bwd_tma on 3 and 4 stages, "
                                     "and with the atomic and the ordered dQ on 2 (at head_dim "
                                     "128)");
                cr_expect_eq(atomic, 2);
            }
            free(t);
        }
        cr_expect_eq(s2_plan_spec_default_tile(&s, "sm_90a").bwd_tma, 0, "not a default");
    }
}

Test(emit, only_a_bwd_tma_unit_holds_its_text)
{
    s2_spec s = load_spec(128, 8, 2, "split");
    for (int tma = 0; tma < 2; tma++) {
        s2_attn_plan p;
        s2_error err = {0};
        /* the TMA tile, or its twin on cp.async; the forward on cp.async either way */
        cr_assert_eq(plan_with(&s, tma ? BWDTMA ",bwd_tma=1,fwd_tma=0,fwd_overlap=0"
                                   : BWDTMA ",fwd_tma=0,fwd_overlap=0", &p,
                               &err), S2_OK, "%s", err.msg);
        char *src = emit_unit(&s, &p, S2_UNIT_ATTN_BWD);
        cr_expect_eq(strstr(src, "#define S2_BWD_TMA 1") != NULL, tma, "tma %d", tma);
        cr_expect_eq(strstr(src, "cp.async.bulk.tensor") != NULL, tma, "tma %d", tma);
        cr_expect_eq(strstr(src, "__grid_constant__ s2_tmap tm_do") != NULL, tma, "tma %d", tma);
        cr_expect_eq(strstr(src, "s2_setmaxnreg_dec<S2_DKDV_PRODUCER_REGS>") != NULL, tma,
                     "tma %d", tma);
        cr_expect_eq(strstr(src, "__launch_bounds__(S2_DKDV_BLOCK, 1)") != NULL, tma, "tma %d",
                     tma);
        cr_expect_null(strstr(src, "#define S2_FWD_TMA"), "the forward's option stays out");
        /* the dQ kernel keeps its cp.async loads either way */
        cr_expect_neq(strstr(src, "s2_ring_prologue(bars, n_kt, load_kv)"), NULL, "tma %d", tma);
        free(src);
        src = emit_unit(&s, &p, S2_UNIT_ATTN_FWD);
        cr_expect_null(strstr(src, "S2_BWD_TMA"), "the forward never holds the backward's option");
        cr_expect_null(strstr(src, "cp.async.bulk.tensor"), "fwd_tma 0: no TMA in the forward");
        free(src);
    }
}

Test(emit, bwd_tma_blocks_nest_with_the_others)
{
    const char *t = "a\n"
                    "#if S2_BWD_TMA\n"
                    "#if S2_FWD_TMA\n"
                    "bf\n"
                    "#endif\n"
                    "b\n"
                    "#else\n"
                    "c\n"
                    "#endif\n";
    char *o = resolve(t, 0);
    cr_expect_str_eq(o, "a\nc\n");
    free(o);
    o = resolve(t, S2_EMIT_OPT_BWD_TMA);
    cr_expect_str_eq(o, "a\n#if S2_BWD_TMA\nb\n#else\nc\n#endif\n");
    free(o);
    s2_buf b = {0};
    s2_error err = {0};
    cr_expect_eq(s2_emit_template_text(&b, "t.cuh", "#if S2_BWD_TMA\n#if S2_BWD_TMA\n#endif\n"
                                       "#endif\n", S2_EMIT_OPT_BWD_TMA, &err), S2_ERR_INVALID);
    cr_expect(err.msg && strstr(err.msg, "t.cuh:2: a bwd_tma block inside"), "%s", err.msg);
    s2_error_clear(&err);
    s2_buf_free(&b);
}

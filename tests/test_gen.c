/* test_gen.c — plan invariants and emitted sources (no GPU, no NVRTC). */
#include <criterion/criterion.h>
#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen/emit.h"
#include "gen/plan.h"
#include "runtime/ref/ref.h"

static s2_spec load(const char *extra_yaml)
{
    char yaml[2048];
    snprintf(yaml, sizeof yaml,
             "name: t\n"
             "model: {hidden_size: 512, intermediate_size: 1024, num_layers: 2, num_heads: 8,\n"
             "        num_kv_heads: 8, head_dim: 64, vocab_size: 256, max_position_embeddings: 512}\n"
             "context_length: 2048\n%s",
             extra_yaml);
    s2_spec s;
    s2_error err = {0};
    s2_status st = s2_spec_load_string(yaml, "t.yaml", NULL, 0, &s, &err);
    cr_assert_eq(st, S2_OK, "%s", err.msg);
    return s;
}

static s2_attn_plan plan_of(const s2_spec *s)
{
    s2_attn_plan p;
    s2_error err = {0};
    cr_assert_eq(s2_plan_attn(s, "sm_90a", NULL, &p, &err), S2_OK, "%s", err.msg);
    return p;
}

Test(plan, index_map_by_mode)
{
    s2_spec s = load("s2attn: {group_size: 512, shift: 200, shift_mode: split}\n");
    s2_attn_plan p = plan_of(&s);
    cr_expect_eq(p.shift_off, 200);
    cr_expect_eq(p.shift_rot, 0);
    s = load("s2attn: {group_size: 512, shift: 200, shift_mode: roll}\n");
    p = plan_of(&s);
    cr_expect_eq(p.shift_off, 0);
    cr_expect_eq(p.shift_rot, 200);
    cr_expect_eq(p.G, 512);
    cr_expect_eq(p.fwd_threads, 32 * p.tile.fwd_warps);
    cr_expect_eq(p.fwd_block_m, 16 * p.tile.fwd_strips * p.tile.fwd_warps);
}

/* The kernels' index map (virtual order, groups, positions) must give exactly the mask of
 * DESIGN §1 as the reference states it, for every pair, mode, head class and awkward N. */
static void check_mask(int G, int S, const char *mode, int n)
{
    char extra[128];
    snprintf(extra, sizeof extra, "s2attn: {group_size: %d, shift: %d, shift_mode: %s}\n", G, S, mode);
    s2_spec s = load(extra);
    s2_attn_plan p = plan_of(&s);
    s2_ref_attn ra = {.T = n, .H = 8, .Hkv = 8, .d = 64, .G = G, .S = S,
                      .mode = s.s2attn.shift_mode, .scale = 1};
    for (int cls = 0; cls < 2; cls++) {
        int h = cls ? 4 : 0;
        /* position() must be a bijection of 0..n-1 */
        char *seen = calloc(n, 1);
        for (int x = 0; x < n; x++) {
            int pos = s2_plan_position(&p, cls, x, n);
            cr_assert(pos >= 0 && pos < n);
            cr_assert(!seen[pos], "position %d hit twice", pos);
            seen[pos] = 1;
        }
        free(seen);
        for (int x = 0; x < n; x++)
            for (int y = 0; y < n; y++) {
                int vis = y <= x && s2_plan_group(&p, cls, x) == s2_plan_group(&p, cls, y);
                int pq = s2_plan_position(&p, cls, x, n), pk = s2_plan_position(&p, cls, y, n);
                cr_assert_eq(vis, s2_ref_attn_visible(&ra, h, n, pq, pk),
                             "%s G=%d S=%d N=%d class %d: query %d key %d", mode, G, S, n, cls, pq, pk);
            }
    }
}

/* The grids hold whole groups of row tiles a head (the Hopper kernels walk them rank by rank,
 * templates/common.cuh s2_block_tile), one tile row a head where a group is under a tile. */
Test(plan, grids_round_tiles_up_to_whole_groups)
{
    s2_spec s = load("s2attn: {group_size: 512, shift: 256, shift_mode: split}\n");
    /* the sm_90a tile of head_dim 128: 128-row forward and backward tiles */
    const s2_attn_tile t = s2_plan_default_tile("sm_90a", 128);
    s2_attn_plan p;
    s2_error err = {0};
    cr_assert_eq(s2_plan_attn(&s, "sm_90a", &t, &p, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(p.fwd_block_m, 128);
    cr_assert_eq(p.bwd_block_m, 128);
    s2_dim3 g = s2_plan_grid_fwd(&p, 1000, 3); /* 8 tiles, 4 a group: 8 */
    cr_expect(g.x == 8 && g.y == 8 && g.z == 3, "%u %u %u", g.x, g.y, g.z);
    g = s2_plan_grid_dq(&p, 1100, 1); /* 9 tiles -> 12 */
    cr_expect(g.x == 12 && g.y == 8 && g.z == 1, "%u %u %u", g.x, g.y, g.z);
    g = s2_plan_grid_dkdv(&p, 1, 2); /* 1 tile -> 4 */
    cr_expect(g.x == 4 && g.y == 8 && g.z == 2, "%u %u %u", g.x, g.y, g.z);
    cr_expect_eq(s2_plan_grid_fwd(&p, 0, 1).x, 0u, "an empty batch launches nothing");
    s2_spec small = load("s2attn: {group_size: 64, shift: 32, shift_mode: split}\n");
    p = plan_of(&small); /* a group under a tile: one tile a rank */
    cr_expect_eq(s2_plan_grid_fwd(&p, 1000, 1).x, 8u);
}

Test(plan, mask_matches_reference)
{
    const char *modes[] = {"split", "roll"};
    for (int m = 0; m < 2; m++) {
        check_mask(16, 8, modes[m], 64);  /* N a multiple of G */
        check_mask(16, 8, modes[m], 61);  /* short last group */
        check_mask(16, 8, modes[m], 10);  /* N < G */
        check_mask(16, 8, modes[m], 16);  /* N = G */
        check_mask(16, 5, modes[m], 53);  /* shift not G/2 */
        check_mask(16, 0, modes[m], 40);  /* no shift */
        check_mask(7, 3, modes[m], 3);    /* N < S */
        check_mask(64, 0, modes[m], 50);  /* G >= N, S = 0: plain causal */
    }
}

Test(plan, tiles_validated)
{
    s2_spec s = load("");
    s2_attn_plan p;
    s2_error err = {0};
    s2_attn_tile def = s2_plan_default_tile("sm_80", 64);
    s2_attn_tile bad_n = def;
    bad_n.fwd_block_n = 48;
    cr_expect_eq(s2_plan_attn(&s, "sm_80", &bad_n, &p, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "fwd_block_n = 48, valid: 32, 64, 128"), "%s", err.msg);
    s2_attn_tile bad_m = def;
    bad_m.bwd_warps = 9;
    cr_expect_eq(s2_plan_attn(&s, "sm_80", &bad_m, &p, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "bwd_warps = 9, valid 1..8"), "%s", err.msg);
    s2_attn_tile big = s2_plan_default_tile("sm_80", 256);
    big.fwd_warps = 8, big.fwd_block_n = 32, big.fwd_stages = 4;
    s2_spec_override d256[] = {{"model.head_dim=256"}};
    cr_assert_eq(s2_spec_load_string("name: t\ncontext_length: 1024\n"
                                     "model: {hidden_size: 1024, intermediate_size: 1024, "
                                     "num_layers: 2, num_heads: 4, vocab_size: 256, "
                                     "max_position_embeddings: 512}\n",
                                     "t.yaml", d256, 1, &s, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(s2_plan_attn(&s, "sm_80", &big, &p, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "this arch allows 166912"), "%s", err.msg);
    cr_expect_eq(s2_plan_attn(&s, "sm_90a", &big, &p, &err), S2_OK,
                 "198 KB fits Hopper's 227 KB: %s", err.msg);
    big.fwd_block_n = 64, big.fwd_stages = 1;
    cr_expect_eq(s2_plan_attn(&s, "sm_90a", &big, &p, &err), S2_ERR_INVALID,
                 "d=256 with 64-key tiles would spill");
    cr_expect(strstr(err.msg, "spill"), "%s", err.msg);
    s2_error_clear(&err);
}

/* The widest text a tile can have (every field INT_MIN: 11 characters) fits
 * S2_PLAN_TILE_STR_MAX whole, the last key included; a parse of it reads every key back. */
Test(plan, tile_text_fits_its_buffer)
{
    s2_attn_tile t;
    int *f = (int *)&t;
    for (size_t i = 0; i < sizeof t / sizeof(int); i++)
        f[i] = INT_MIN;
    char buf[S2_PLAN_TILE_STR_MAX];
    s2_plan_tile_str(&t, buf, sizeof buf);
    cr_assert_lt(strlen(buf), sizeof buf - 1, "%s", buf);
    cr_expect(strstr(buf, "bwd_tma=-2147483648"), "%s", buf);
    s2_attn_tile d = s2_plan_default_tile("sm_90a", 128), back;
    memset(&back, 0, sizeof back);
    s2_plan_tile_str(&d, buf, sizeof buf);
    cr_assert_eq(s2_plan_parse_tile(buf, &back, NULL), S2_OK, "%s", buf);
    cr_expect_eq(memcmp(&d, &back, sizeof d), 0, "%s", buf);
}

Test(plan, default_tiles_fit_every_head_dim)
{
    const int dims[] = {64, 96, 128, 256};
    for (int i = 0; i < 4; i++) {
        char extra[256];
        snprintf(extra, sizeof extra, "model: {hidden_size: %d, intermediate_size: 1024, "
                 "num_layers: 2, num_heads: 8, head_dim: %d, vocab_size: 256, "
                 "max_position_embeddings: 512}\n", 8 * dims[i], dims[i]);
        /* load() already has a model section: build the spec text here instead */
        char yaml[1024];
        snprintf(yaml, sizeof yaml, "name: t\ncontext_length: 1024\n%s", extra);
        s2_spec s;
        s2_error err = {0};
        cr_assert_eq(s2_spec_load_string(yaml, "t.yaml", NULL, 0, &s, &err), S2_OK, "%s", err.msg);
        s2_attn_plan p = plan_of(&s);
        cr_expect_leq(p.smem_dq, p.smem_limit);
        cr_expect_leq(p.smem_dkdv, p.smem_limit);
        cr_expect_leq(p.smem_fwd, p.smem_limit);
        cr_expect_eq(p.bwd_tensor_cores, dims[i] <= 128);
    }
}

Test(plan, kv_head_serving_both_classes_rejected)
{
    s2_spec s = load("");
    s.model.num_kv_heads = 1; /* past the spec's own check: the plan must still refuse */
    s2_attn_plan p;
    s2_error err = {0};
    cr_expect_eq(s2_plan_attn(&s, "sm_80", NULL, &p, &err), S2_ERR_SPEC);
    cr_expect(strstr(err.msg, "num_kv_heads"), "%s", err.msg);
    s2_error_clear(&err);
}

Test(emit, banner_constants_and_determinism)
{
    s2_spec s = load("s2attn: {group_size: 512, shift: 100, shift_mode: roll}\n");
    s2_attn_plan p = plan_of(&s);
    for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++) {
        char *a = NULL, *b = NULL;
        s2_error err = {0};
        cr_assert_eq(s2_emit_attn(&s, &p, (s2_attn_unit)u, &a, &err), S2_OK, "%s", err.msg);
        cr_assert_eq(s2_emit_attn(&s, &p, (s2_attn_unit)u, &b, &err), S2_OK);
        cr_expect_str_eq(a, b, "emission must be deterministic");
        cr_expect(strncmp(a, "// generated by s2lora gen", 26) == 0);
        cr_expect(strstr(a, s.hash_hex), "banner names the spec hash");
        cr_expect(strstr(a, "spec 't'"));
        cr_expect(strstr(a, "#define S2_GROUP 512\n"));
        cr_expect(strstr(a, "#define S2_SHIFT_ROT 100\n"));
        cr_expect(strstr(a, "#define S2_SHIFT_OFF 0\n"));
        cr_expect(strstr(a, "#define S2_HEAD_DIM 64\n"));
        cr_expect(strstr(a, "#define S2_IS_BF16 1\n"));
        cr_expect(!strstr(a, "#include"), "generated sources include nothing");
        const char *const *names;
        int nk = s2_attn_unit_kernels((s2_attn_unit)u, &names);
        for (int k = 0; k < nk; k++) {
            char want[96];
            snprintf(want, sizeof want, "extern \"C\" __global__");
            cr_expect(strstr(a, want));
            cr_expect(strstr(a, names[k]), "unit holds %s", names[k]);
        }
        free(a);
        free(b);
    }
}

Test(emit, different_specs_differ)
{
    s2_spec s1 = load("s2attn: {group_size: 512, shift: 100}\n");
    s2_spec s2 = load("s2attn: {group_size: 512, shift: 101}\n");
    s2_attn_plan p1 = plan_of(&s1), p2 = plan_of(&s2);
    char *a = NULL, *b = NULL;
    cr_assert_eq(s2_emit_attn(&s1, &p1, S2_UNIT_ATTN_FWD, &a, NULL), S2_OK);
    cr_assert_eq(s2_emit_attn(&s2, &p2, S2_UNIT_ATTN_FWD, &b, NULL), S2_OK);
    cr_expect(strcmp(a, b) != 0);
    cr_expect(strstr(b, "#define S2_SHIFT_OFF 101\n"));
    free(a);
    free(b);
}

Test(emit, write_dir)
{
    s2_spec s = load("");
    s2_attn_plan p = plan_of(&s);
    char dir[] = "/tmp/s2gen.XXXXXX";
    cr_assert(mkdtemp(dir));
    char sub[256];
    snprintf(sub, sizeof sub, "%s/a/b", dir);
    char *paths[4];
    int n = 0;
    s2_error err = {0};
    cr_assert_eq(s2_emit_write_dir(&s, &p, sub, paths, 4, &n, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(n, S2_EMIT_UNITS);
    cr_expect(n > 0 && strstr(paths[n - 1], ".train.cu"), "%s", n > 0 ? paths[n - 1] : "");
    for (int i = 0; i < n; i++) {
        char *text = NULL;
        size_t size = 0;
        cr_expect_eq(s2_read_file(paths[i], &text, &size, NULL), S2_OK);
        cr_expect(size > 1000);
        free(text);
        free(paths[i]);
    }
}

/*
 * The tile classification of the forward, element by element against the reference mask: a
 * FULL tile holds only visible pairs, every visible pair lies in a visited tile, and masked
 * classes are used only where needed when the groups align with the tiles.
 */
static void check_tiles(int G, int S, const char *mode, int n, const s2_attn_tile *tile,
                        int want_edge)
{
    char extra[128];
    snprintf(extra, sizeof extra, "s2attn: {group_size: %d, shift: %d, shift_mode: %s}\n", G, S, mode);
    s2_spec s = load(extra);
    s2_attn_plan p;
    s2_error err = {0};
    cr_assert_eq(s2_plan_attn(&s, "sm_90a", tile, &p, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(p.mask_group_edge, want_edge, "G=%d S=%d %s", G, S, mode);
    s2_ref_attn ra = {.T = n, .H = 8, .Hkv = 8, .d = 64, .G = G, .S = S,
                      .mode = s.s2attn.shift_mode, .scale = 1};
    const int bm = p.fwd_block_m, bn = p.tile.fwd_block_n;
    int counts[S2_TILE_CLASS_COUNT] = {0};
    for (int cls = 0; cls < 2; cls++)
        for (int qt = 0; qt * bm < n; qt++)
            for (int kt = 0; kt * bn < n; kt++) {
                s2_tile_class c = s2_plan_classify(&p, cls, qt, kt, n);
                counts[c]++;
                for (int x = qt * bm; x < qt * bm + bm && x < n; x++)
                    for (int y = kt * bn; y < kt * bn + bn; y++) {
                        int vis = y < n && s2_ref_attn_visible(&ra, cls ? 4 : 0, n,
                                                               s2_plan_position(&p, cls, x, n),
                                                               s2_plan_position(&p, cls, y, n));
                        if (c == S2_TILE_EMPTY)
                            cr_assert(!vis, "empty tile (%d,%d) hides visible pair (%d,%d)", qt, kt, x, y);
                        if (c == S2_TILE_FULL)
                            cr_assert(vis, "full tile (%d,%d) holds masked pair (%d,%d)", qt, kt, x, y);
                    }
            }
    if (!want_edge) {
        cr_expect_eq(counts[S2_TILE_EDGE], 0);
        if (n >= 2 * G)
            cr_expect_gt(counts[S2_TILE_FULL], 0, "aligned groups of several tiles run unmasked tiles");
    }
}

Test(plan, tile_classification_matches_reference)
{
    s2_attn_tile t = s2_plan_default_tile("sm_80", 64); /* an mma.sync tile, planned for sm_90a */
    t.fwd_warps = 4, t.fwd_strips = 1, t.fwd_block_n = 64; /* 64 x 64 tiles */
    const char *modes[] = {"split", "roll"};
    for (int m = 0; m < 2; m++) {
        check_tiles(256, 128, modes[m], 1024, &t, 0); /* aligned groups: only diagonal masks */
        check_tiles(256, 128, modes[m], 1000, &t, 0); /* short last group */
        check_tiles(256, 128, modes[m], 200, &t, 0);  /* N < G */
        check_tiles(200, 100, modes[m], 999, &t, 1);  /* groups cross tiles */
        check_tiles(96, 40, modes[m], 500, &t, 1);
        check_tiles(512, 0, modes[m], 700, &t, 0);
    }
    t.fwd_warps = 8, t.fwd_block_n = 32; /* 128 x 32 tiles */
    check_tiles(256, 128, "split", 1000, &t, 0);
    t.fwd_warps = 4, t.fwd_strips = 2;    /* 128 x 32 tiles, two strips a warp */
    check_tiles(256, 128, "split", 1000, &t, 0);
    check_tiles(192, 96, "split", 1000, &t, 1);
    check_tiles(192, 96, "roll", 1000, &t, 1);
}

/* The tuning space: the default first, no duplicates, every member plans, and what the plan
 * refuses (spills, shared memory) is pruned. */
Test(plan, tile_space_is_pruned_by_the_plan)
{
    const int dims[] = {64, 96, 128, 256};
    const char *archs[] = {"sm_80", "sm_86", "sm_90a"};
    for (int i = 0; i < 4; i++)
        for (int a = 0; a < 3; a++) {
            char yaml[512];
            snprintf(yaml, sizeof yaml, "name: t\ncontext_length: 8192\n"
                     "model: {hidden_size: %d, intermediate_size: 1024, num_layers: 2, "
                     "num_heads: 8, head_dim: %d, vocab_size: 256, max_position_embeddings: 512}\n",
                     8 * dims[i], dims[i]);
            s2_spec s;
            s2_error err = {0};
            cr_assert_eq(s2_spec_load_string(yaml, "t.yaml", NULL, 0, &s, &err), S2_OK, "%s", err.msg);
            for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++) {
                int n = s2_plan_tile_space(&s, archs[a], (s2_attn_unit)u, NULL, 0);
                cr_assert_gt(n, 1, "d=%d %s unit %d: a space to search", dims[i], archs[a], u);
                s2_attn_tile *t = calloc((size_t)n, sizeof *t);
                cr_assert_eq(s2_plan_tile_space(&s, archs[a], (s2_attn_unit)u, t, n), n);
                s2_attn_tile def = s2_plan_default_tile(archs[a], dims[i]);
                cr_expect_eq(memcmp(&t[0], &def, sizeof def), 0, "the default comes first");
                for (int k = 0; k < n; k++) {
                    s2_attn_plan p;
                    cr_expect_eq(s2_plan_attn(&s, archs[a], &t[k], &p, NULL), S2_OK);
                    for (int j = 0; j < k; j++)
                        cr_expect_neq(memcmp(&t[j], &t[k], sizeof def), 0, "duplicate tile");
                    if (u == S2_UNIT_ATTN_FWD) {
                        cr_expect(!(dims[i] > 64 && dims[i] <= 128 && t[k].fwd_strips == 2 &&
                                    t[k].fwd_block_n > 32), "a spilling tile was kept");
                        cr_expect_leq(p.smem_fwd, p.smem_limit);
                        cr_expect_eq(t[k].bwd_warps, def.bwd_warps, "forward space varies forward fields");
                    } else {
                        cr_expect_leq(p.smem_dkdv, p.smem_limit);
                        cr_expect_eq(t[k].fwd_block_n, def.fwd_block_n, "backward space varies backward fields");
                    }
                }
                free(t);
            }
        }
}

Test(plan, tile_space_shrinks_with_shared_memory)
{
    s2_spec s = load("");
    int h = s2_plan_tile_space(&s, "sm_90a", S2_UNIT_ATTN_FWD, NULL, 0);
    int a = s2_plan_tile_space(&s, "sm_80", S2_UNIT_ATTN_FWD, NULL, 0);
    int g = s2_plan_tile_space(&s, "sm_86", S2_UNIT_ATTN_FWD, NULL, 0);
    cr_expect_geq(h, a);
    cr_expect_geq(a, g);
    cr_expect_gt(h, g, "99 KB of sm_86 must prune tiles that 227 KB of sm_90a keeps");
}

Test(emit, unit_sources_hold_only_their_tile)
{
    s2_spec s = load("");
    s2_attn_plan p1 = plan_of(&s), p2 = p1;
    p2.tile.bwd_stages = p1.tile.bwd_stages == 1 ? 2 : 1; /* a backward-only change */
    char *f1 = NULL, *f2 = NULL, *b1 = NULL, *b2 = NULL;
    cr_assert_eq(s2_emit_attn(&s, &p1, S2_UNIT_ATTN_FWD, &f1, NULL), S2_OK);
    cr_assert_eq(s2_emit_attn(&s, &p2, S2_UNIT_ATTN_FWD, &f2, NULL), S2_OK);
    cr_assert_eq(s2_emit_attn(&s, &p1, S2_UNIT_ATTN_BWD, &b1, NULL), S2_OK);
    cr_assert_eq(s2_emit_attn(&s, &p2, S2_UNIT_ATTN_BWD, &b2, NULL), S2_OK);
    cr_expect_str_eq(f1, f2, "the forward's source (and cache key) ignores backward fields");
    cr_expect_str_neq(b1, b2);
    cr_expect(!strstr(f1, "S2_BWD_STAGES"));
    cr_expect(!strstr(b1, "#define S2_FWD_BN"));
    free(f1), free(f2), free(b1), free(b2);
}

/* The broken tile of test builds cannot reach a user: this build refuses its key and value. */
Test(plan, test_broken_tile_is_refused_here)
{
    s2_spec s = load("");
    s2_attn_tile t = s2_plan_default_tile("sm_90a", 64);
    s2_error err = {0};
    cr_expect_eq(s2_plan_parse_tile("test_broken=1", &t, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "unknown key 'test_broken'"), "%s", err.msg);
    t.test_broken = 1;
    s2_attn_plan p;
    cr_expect_eq(s2_plan_attn(&s, "sm_90a", &t, &p, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "only in test builds"), "%s", err.msg);
    s2_error_clear(&err);
}

/* The Hopper forward (fwd_wgmma = 1): accepted only where it can run, emitted with the
 * generated wrappers for the tile's shapes, and part of sm_90a's tuning space only. */
Test(plan, wgmma_forward_rules)
{
    s2_spec s = load("");
    s2_attn_tile t = s2_plan_default_tile("sm_80", 128); /* mma.sync, then the Hopper forward */
    s2_error err = {0};
    cr_assert_eq(s2_plan_parse_tile("fwd_wgmma=1,fwd_warps=8,fwd_strips=1,fwd_block_n=128", &t,
                                    &err), S2_OK, "%s", err.msg);
    s2_attn_plan p;
    cr_assert_eq(s2_plan_attn(&s, "sm_90a", &t, &p, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(p.fwd_block_m, 128);
    cr_expect_eq(p.smem_fwd, (128 + 2 * 2 * 128) * p.d * 2 + 1024); /* no row pad, 1 KiB align */
    cr_expect_eq(s2_plan_attn(&s, "sm_80", &t, &p, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "fwd_wgmma = 1 needs sm_90a"), "%s", err.msg);
    s2_error_clear(&err);
    s2_attn_tile bad = t;
    bad.fwd_strips = 2;
    cr_expect_eq(s2_plan_attn(&s, "sm_90a", &bad, &p, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "valid: fwd_warps 4 or 8, fwd_strips 1, fwd_block_n 64 or 128"),
              "%s", err.msg);
    s2_error_clear(&err);
    s2_spec s96;
    s2_spec_override d96 = {"model.head_dim=96"};
    cr_assert_eq(s2_spec_load_string("name: t96\nmodel: {hidden_size: 384, intermediate_size: "
                                     "1024, num_layers: 1, num_heads: 4, vocab_size: 256, "
                                     "max_position_embeddings: 512}\n"
                                     "context_length: 2048\n", "t96.yaml", &d96, 1, &s96, &err),
                 S2_OK, "%s", err.msg);
    cr_expect_eq(s2_plan_attn(&s96, "sm_90a", &t, &p, &err), S2_ERR_INVALID);
    cr_expect(err.msg && strstr(err.msg, "valid with 64 and 128"), "%s", err.msg);
    s2_error_clear(&err);

    cr_assert_eq(s2_plan_attn(&s, "sm_90a", &t, &p, &err), S2_OK, "%s", err.msg);
    char *src = NULL;
    cr_assert_eq(s2_emit_attn(&s, &p, S2_UNIT_ATTN_FWD, &src, &err), S2_OK, "%s", err.msg);
    cr_expect(strstr(src, "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16"));
    cr_expect(strstr(src, "#define S2_FWD_WGMMA 1"));
    cr_expect(strstr(src, "templates/attn_fwd_wgmma.cuh"));
    free(src);

    s2_attn_tile space[512];
    int n90 = s2_plan_tile_space(&s, "sm_90a", S2_UNIT_ATTN_FWD, space, 512), w90 = 0;
    for (int i = 0; i < n90 && i < 512; i++)
        w90 += space[i].fwd_wgmma;
    int n80 = s2_plan_tile_space(&s, "sm_80", S2_UNIT_ATTN_FWD, space, 512), w80 = 0;
    for (int i = 0; i < n80 && i < 512; i++)
        w80 += space[i].fwd_wgmma;
    cr_expect_gt(w90, 0);
    cr_expect_eq(w80, 0);
}

/* The mbarrier rings (fwd_mbar, bwd_mbar): only with the wgmma kernels (the backward's with
 * three or more stages and without the atomic dQ), two mbarriers a stage of shared memory,
 * emitted as the templates' switches, the sm_90a default at head_dim 128, in the tuning space. */
Test(plan, mbar_rules)
{
    s2_spec s = load("");
    s2_attn_tile t = s2_plan_default_tile("sm_80", 128);
    s2_error err = {0};
    cr_assert_eq(s2_plan_parse_tile("fwd_wgmma=1,fwd_warps=8,fwd_strips=1,fwd_block_n=128,"
                                    "fwd_stages=3,fwd_mbar=1,bwd_wgmma=1,bwd_warps=8,"
                                    "bwd_block_n=64,bwd_stages=4,bwd_mbar=1", &t, &err),
                 S2_OK, "%s", err.msg);
    s2_attn_plan p;
    cr_assert_eq(s2_plan_attn(&s, "sm_90a", &t, &p, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(p.smem_fwd, (128 + 2 * 3 * 128) * p.d * 2 + 1024 + 3 * 16);
    cr_expect_eq(p.smem_dq, (2 * 128 + 2 * 4 * 64) * p.d * 2 + 1024 + 4 * 16);
    cr_expect_eq(p.smem_dkdv, p.smem_dq + 2 * 4 * 64 * 4);
    char *src = NULL;
    cr_assert_eq(s2_emit_attn(&s, &p, S2_UNIT_ATTN_FWD, &src, &err), S2_OK, "%s", err.msg);
    cr_expect(strstr(src, "#define S2_FWD_MBAR 1"));
    free(src);
    cr_assert_eq(s2_emit_attn(&s, &p, S2_UNIT_ATTN_BWD, &src, &err), S2_OK, "%s", err.msg);
    cr_expect(strstr(src, "#define S2_BWD_MBAR 1"));
    free(src);

    const struct {
        const char *tile, *msg;
    } bad[] = {
        {"fwd_wgmma=0,fwd_warps=4,fwd_strips=2,fwd_block_n=32", "valid only with fwd_wgmma = 1"},
        {"fwd_mbar=2", "fwd_mbar = 2 is out of range: valid 0..1"},
        {"bwd_stages=2", "valid only with bwd_wgmma 1, bwd_stages 3..4, bwd_atomic_dq 0"},
        {"bwd_atomic_dq=1", "bwd_atomic_dq 1; valid only with bwd_wgmma 1"},
        {"bwd_wgmma=0,bwd_block_n=32", "bwd_mbar = 1 with bwd_wgmma 0"},
        {"bwd_mbar=-1", "bwd_mbar = -1 is out of range: valid 0..1"},
        {"bwd_mbar=x", "needs an integer"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        s2_attn_tile b = t;
        s2_status st = s2_plan_parse_tile(bad[i].tile, &b, &err);
        if (st == S2_OK)
            st = s2_plan_attn(&s, "sm_90a", &b, &p, &err);
        cr_expect_eq(st, S2_ERR_INVALID, "%s", bad[i].tile);
        cr_expect(err.msg && strstr(err.msg, bad[i].msg), "%s: %s", bad[i].tile, err.msg);
        s2_error_clear(&err);
    }

    const s2_attn_tile d128 = s2_plan_default_tile("sm_90a", 128);
    const s2_attn_tile d64 = s2_plan_default_tile("sm_90a", 64);
    cr_expect(d128.fwd_mbar && d128.bwd_mbar, "measured faster at head_dim 128");
    cr_expect(d64.fwd_mbar && d64.fwd_tma, "head_dim 64: the TMA forward's mbarrier ring");
    cr_expect(!d64.bwd_mbar, "measured slower in the backward at head_dim 64");
    for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++) {
        s2_attn_tile space[512];
        int n = s2_plan_tile_space(&s, "sm_90a", (s2_attn_unit)u, space, 512), on = 0, off = 0;
        cr_assert_leq(n, 512);
        for (int i = 0; i < n; i++) {
            const int m = u == S2_UNIT_ATTN_FWD ? space[i].fwd_mbar : space[i].bwd_mbar;
            const int w = u == S2_UNIT_ATTN_FWD ? space[i].fwd_wgmma : space[i].bwd_wgmma;
            on += m, off += w && !m;
        }
        cr_expect_gt(on, 0, "unit %d", u);
        cr_expect_gt(off, 0, "unit %d", u);
    }
}

/* The Hopper backward (bwd_wgmma = 1): deterministic only, sm_90a only, in the tuning space. */
Test(plan, wgmma_backward_rules)
{
    s2_spec s = load("");
    s2_attn_tile t = s2_plan_default_tile("sm_80", 64); /* mma.sync, then the Hopper backward */
    s2_error err = {0};
    cr_assert_eq(s2_plan_parse_tile("bwd_wgmma=1,bwd_warps=8,bwd_block_n=64,bwd_stages=2", &t,
                                    &err), S2_OK, "%s", err.msg);
    s2_attn_plan p;
    cr_assert_eq(s2_plan_attn(&s, "sm_90a", &t, &p, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(p.bwd_block_m, 128);
    cr_expect_eq(p.smem_dq, (2 * 128 + 2 * 2 * 64) * p.d * 2 + 1024);
    cr_expect_eq(p.smem_dkdv, p.smem_dq + 2 * 2 * 64 * 4);
    cr_expect_eq(p.bwd_dq_delta, 1, "the deterministic Hopper dQ kernel forms delta");
    cr_expect_eq(s2_plan_attn(&s, "sm_90", &t, &p, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "bwd_wgmma = 1 needs sm_90a"), "%s", err.msg);
    s2_error_clear(&err);
    /* 128-wide tiles spill (a step's S and dP beside the fragments of the step before), and
     * a step reads the tile before it, so one stage is too few */
    s2_attn_tile bad = t;
    bad.bwd_block_n = 128;
    cr_expect_eq(s2_plan_attn(&s, "sm_90a", &bad, &p, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "bwd_block_n 64"), "%s", err.msg);
    s2_error_clear(&err);
    bad = t;
    bad.bwd_stages = 1;
    cr_expect_eq(s2_plan_attn(&s, "sm_90a", &bad, &p, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "valid 2..4"), "%s", err.msg);
    s2_error_clear(&err);
    /* the atomic dQ with 64-query tiles: the staged dS^T and its transposed product */
    s2_attn_tile at = t;
    at.bwd_block_n = 64, at.bwd_atomic_dq = 1;
    cr_assert_eq(s2_plan_attn(&s, "sm_90a", &at, &p, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(p.smem_dkdv, p.smem_dq + 2 * 2 * 64 * 4 + 128 * 64 * 2 + 1024);
    cr_expect_eq(p.bwd_dq_delta, 0, "no dQ kernel runs: s2_attn_bwd_pre forms delta");
    char *asrc = NULL;
    cr_assert_eq(s2_emit_attn(&s, &p, S2_UNIT_ATTN_BWD, &asrc, &err), S2_OK, "%s", err.msg);
    cr_expect(strstr(asrc, "#define S2_BWD_ATOMIC_DQ 1"));
    cr_expect(strstr(asrc, "s2_wgmma_tt(float (&d)[32]"));
    cr_expect(strstr(asrc, "m64n64k16.f32.bf16.bf16"));
    cr_expect(strstr(asrc, "p, 1, 1, 1, 1;"), "both operands read transposed");
    free(asrc);
    bad = t;
    bad.bwd_block_n = 128;
    bad.bwd_wgmma = 0; /* 128-key tiles exist only for the Hopper backward */
    cr_expect_eq(s2_plan_attn(&s, "sm_90a", &bad, &p, &err), S2_ERR_INVALID);
    s2_error_clear(&err);

    cr_assert_eq(s2_plan_attn(&s, "sm_90a", &t, &p, &err), S2_OK, "%s", err.msg);
    char *src = NULL;
    cr_assert_eq(s2_emit_attn(&s, &p, S2_UNIT_ATTN_BWD, &src, &err), S2_OK, "%s", err.msg);
    cr_expect(strstr(src, "templates/attn_bwd_wgmma.cuh"));
    cr_expect(strstr(src, "templates/attn_bwd_pre.cuh"));
    cr_expect(strstr(src, "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16"));
    free(src);

    s2_attn_tile space[1024];
    int n90 = s2_plan_tile_space(&s, "sm_90a", S2_UNIT_ATTN_BWD, space, 1024), w90 = 0;
    cr_assert_leq(n90, 1024);
    for (int i = 0; i < n90; i++)
        w90 += space[i].bwd_wgmma;
    cr_expect_gt(w90, 0);
}

/* ------------------------------------------------------------------------------------------ */
/* Ranges: what the plan and the emitter accept is what the kernels can index                 */
/* ------------------------------------------------------------------------------------------ */

/* Every constant of a unit's generated head (before the first template): a name and a value
 * that is a non-negative int, a float literal ("1.0f", "1e-30f": a '.' or an exponent before
 * the 'f') that reads back finite and positive, or a double literal that does. Returns the
 * number of constants. */
static int check_constants(const char *src, const char *what)
{
    const char *end = strstr(src, "// ---- ");
    cr_assert_not_null(end, "%s: no template after the constants", what);
    int n = 0;
    const char *p = strstr(src, "#define S2_");
    for (; p && p < end; p = strstr(p + 1, "#define S2_")) {
        char name[64], value[64];
        cr_assert_eq(sscanf(p, "#define %63s %63s", name, value), 2, "%s: '%.40s'", what, p);
        char *num_end;
        size_t len = strlen(value);
        if (value[len - 1] == 'f') {
            value[len - 1] = '\0';
            cr_expect(strpbrk(value, ".e"), "%s: %s %sf is not a float literal", what, name, value);
            const float f = strtof(value, &num_end);
            cr_expect(*num_end == '\0' && isfinite(f) && f > 0, "%s: %s = %sf", what, name, value);
        } else if (strpbrk(value, ".e")) {
            const double d = strtod(value, &num_end);
            cr_expect(*num_end == '\0' && isfinite(d) && d > 0, "%s: %s = %s", what, name, value);
        } else {
            const long v = strtol(value, &num_end, 10);
            cr_expect(*num_end == '\0' && v >= 0 && v <= INT_MAX, "%s: %s = %s", what, name, value);
        }
        n++;
    }
    return n;
}

/* Plans the spec for arch and emits every unit (attention, train, LoRA), checking the constants;
 * returns the attention units' sources in src (caller frees) when src is not NULL. */
static void plan_and_emit(const s2_spec *s, const char *arch, char *src[S2_UNIT_ATTN_COUNT])
{
    s2_attn_plan p;
    s2_error err = {0};
    cr_assert_eq(s2_plan_attn(s, arch, NULL, &p, &err), S2_OK, "%s %s: %s", s->name, arch, err.msg);
    for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++) {
        char *a = NULL, what[256];
        cr_assert_eq(s2_emit_attn(s, &p, (s2_attn_unit)u, &a, &err), S2_OK, "%s", err.msg);
        snprintf(what, sizeof what, "%s %s %s", s->name, arch, s2_attn_unit_name((s2_attn_unit)u));
        cr_expect_gt(check_constants(a, what), 10, "%s", what);
        if (src)
            src[u] = a;
        else
            free(a);
    }
    char *t = NULL;
    cr_assert_eq(s2_emit_train(s, &t, &err), S2_OK, "%s", err.msg);
    cr_expect_gt(check_constants(t, "train"), 10);
    free(t);
    cr_assert_eq(s2_emit_lora(s->dtype, s->lora.rank, &t, &err), S2_OK, "%s", err.msg);
    free(t);
}

Test(ranges, every_shipped_spec_plans_and_emits_for_each_of_its_archs)
{
    DIR *d = opendir(S2_SOURCE_DIR "/specs");
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 6 || strcmp(de->d_name + len - 5, ".yaml"))
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/specs/%s", S2_SOURCE_DIR, de->d_name);
        s2_spec s;
        s2_error err = {0};
        cr_assert_eq(s2_spec_load(path, NULL, 0, &s, &err), S2_OK, "%s", err.msg);
        for (int a = 0; a < s.n_arch; a++)
            plan_and_emit(&s, s.arch[a], NULL);
        n++;
    }
    closedir(d);
    cr_expect_geq(n, 10);
}

static s2_spec load_text(const char *yaml, const char *const *sets, int n_sets)
{
    s2_spec_override ov[8];
    for (int i = 0; i < n_sets; i++)
        ov[i].text = sets[i];
    s2_spec s;
    s2_error err = {0};
    cr_assert_eq(s2_spec_load_string(yaml, "t.yaml", ov, n_sets, &s, &err), S2_OK, "%s", err.msg);
    return s;
}

/* The largest value of every key at once is accepted, plans, and emits constants that did not
 * overflow: the widths and the RoPE factor as given, the row kernels' geometry positive. */
Test(ranges, largest_valid_values_generate_without_overflow)
{
    s2_spec s = load_text("name: t\ncontext_length: 16777216\n"
                          "model: {hidden_size: 65536, intermediate_size: 262144,\n"
                          "  num_layers: 1024, num_heads: 1024, num_kv_heads: 1024,\n"
                          "  head_dim: 128, vocab_size: 2097152, max_position_embeddings: 1,\n"
                          "  rope_theta: 1e30, rms_norm_eps: 1e30}\n"
                          "s2attn: {group_size: 16777216, shift: 16777215, softmax_scale: 1e30}\n"
                          "lora: {rank: 1024, alpha: 1e30, dropout: 0.999999}\n",
                          NULL, 0);
    cr_expect_eq(s.rope_factor, 16777216);
    char *src[S2_UNIT_ATTN_COUNT];
    plan_and_emit(&s, "sm_90a", src); /* the Hopper tile: no per-row preprocessing grid */
    cr_expect(strstr(src[0], "#define S2_GROUP 16777216\n"));
    cr_expect(strstr(src[0], "#define S2_SHIFT_OFF 16777215\n"));
    cr_expect(strstr(src[0], "#define S2_NUM_HEADS 1024\n"));
    cr_expect(strstr(src[0], "#define S2_SCALE 1.00000002e+30f\n"), "%.300s", src[0]);
    for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++)
        free(src[u]);
    char *t = NULL;
    cr_assert_eq(s2_emit_train(&s, &t, NULL), S2_OK);
    cr_expect(strstr(t, "#define S2_HIDDEN 65536\n"));
    cr_expect(strstr(t, "#define S2_INTER 262144\n"));
    cr_expect(strstr(t, "#define S2_VOCAB 2097152\n"));
    cr_expect(strstr(t, "#define S2_ROPE_FACTOR 16777216.0\n"));
    cr_expect(strstr(t, "#define S2_ROW_THREADS 512\n#define S2_ROW_ITERS 16\n"), "%.900s", t);
    free(t);
    /* and one whole sequence of the context launches: every grid within CUDA's limits */
    s2_attn_plan p;
    cr_assert_eq(s2_plan_attn(&s, "sm_90a", NULL, &p, NULL), S2_OK);
    cr_expect_eq(s2_plan_check_batch(&p, 16777216, 1, 16777216, NULL), S2_OK);
    s2_dim3 g = s2_plan_grid_fwd(&p, 16777216, 1);
    cr_expect(g.x == 131072 && g.y == 1024, "%u %u", g.x, g.y);
}

/* The smallest value of every key at once, likewise (a one-token context, 2 heads of 64). */
Test(ranges, smallest_valid_values_generate)
{
    s2_spec s = load_text("name: t\ncontext_length: 1\n"
                          "model: {hidden_size: 1, intermediate_size: 1, num_layers: 1,\n"
                          "  num_heads: 2, head_dim: 64, vocab_size: 1,\n"
                          "  max_position_embeddings: 1, rope_theta: 1, rms_norm_eps: 1e-30}\n"
                          "s2attn: {group_size: 1, shift: 0, softmax_scale: 1e-30}\n"
                          "lora: {rank: 1, alpha: 1e-30, dropout: 1e-9}\n",
                          NULL, 0);
    char *src[S2_UNIT_ATTN_COUNT];
    plan_and_emit(&s, "sm_80", src);
    cr_expect(strstr(src[0], "#define S2_SCALE 1e-30f\n"), "%.300s", src[0]);
    for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++)
        free(src[u]);
}

/* Every softmax scale prints as a float literal NVRTC reads back as (float)scale; integers and
 * powers of ten need a '.' or an exponent before the 'f' ("1f" is not a literal). */
Test(ranges, scale_literals_read_back_exactly)
{
    static const char *const scales[] = {"1", "2", "100", "1e10", "0.125", "0.1", "3.0000001",
                                         "0.69314718055994531", "1e-30", "1e30", "123456789"};
    for (size_t i = 0; i < sizeof scales / sizeof scales[0]; i++) {
        char set[64];
        snprintf(set, sizeof set, "s2attn.softmax_scale=%s", scales[i]);
        const char *sets[] = {set};
        s2_spec s = load_text("name: t\ncontext_length: 2048\n"
                              "model: {hidden_size: 512, intermediate_size: 1024, num_layers: 2,\n"
                              "  num_heads: 8, head_dim: 64, vocab_size: 256,\n"
                              "  max_position_embeddings: 512}\n",
                              sets, 1);
        s2_attn_plan p = plan_of(&s);
        char *a = NULL;
        cr_assert_eq(s2_emit_attn(&s, &p, S2_UNIT_ATTN_FWD, &a, NULL), S2_OK);
        const struct { const char *name; double v; } lits[] = {
            {"#define S2_SCALE ", s.s2attn.softmax_scale},
            {"#define S2_SCALE_LOG2 ", s.s2attn.softmax_scale * 1.4426950408889634}};
        for (int k = 0; k < 2; k++) {
            const char *at = strstr(a, lits[k].name);
            cr_assert_not_null(at);
            char lit[64];
            cr_assert_eq(sscanf(at + strlen(lits[k].name), "%63s", lit), 1);
            size_t len = strlen(lit);
            cr_expect(len > 1 && lit[len - 1] == 'f' && strpbrk(lit, ".e"),
                      "scale %s: '%s' is not a float literal", scales[i], lit);
            lit[len - 1] = '\0';
            cr_expect_eq(strtof(lit, NULL), (float)lits[k].v, "scale %s: %s reads back as %.9g",
                         scales[i], lit, (double)strtof(lit, NULL));
        }
        free(a);
    }
}

/* One sequence of the spec's context must launch with the tile: 16M tokens x 1024 heads are
 * 2^34 (token, head) rows, ceil(rows / 4 warps) blocks of the backward's preprocessing on
 * sm_80, over gridDim.x's 2^31 - 1. The plan refuses it at context_length's position and says
 * which lengths would launch; the longest of them plans, one more token does not. */
Test(ranges, plan_refuses_a_context_times_heads_the_grids_cannot_launch)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/specs_bad/seqlen_heads.yaml", S2_SOURCE_DIR);
    s2_spec s;
    s2_error err = {0};
    cr_assert_eq(s2_spec_load(path, NULL, 0, &s, &err), S2_OK, "every value alone is valid: %s",
                 err.msg);
    s2_attn_plan p;
    cr_assert_eq(s2_plan_attn(&s, "sm_80", NULL, &p, &err), S2_ERR_SPEC);
    char prefix[2200];
    snprintf(prefix, sizeof prefix, "%s:5:17: error: context_length = 16777216 with "
             "model.num_heads = 1024 (%s:10:14)", path, path);
    cr_expect(!strncmp(err.msg, prefix, strlen(prefix)), "'%s' lacks '%s'", err.msg, prefix);
    cr_expect(strstr(err.msg, "s2_attn_bwd_pre needs a grid of 4294967296 x 1 x 1 blocks"),
              "%s", err.msg);
    cr_expect(strstr(err.msg, "valid context_length 1..8388607"), "%s", err.msg);
    s2_error_clear(&err);
    /* both sides of the boundary, as --set overrides (the message then names the --set) */
    s2_spec_override ok[] = {{"context_length=8388607"}}, bad[] = {{"context_length=8388608"}};
    cr_assert_eq(s2_spec_load(path, ok, 1, &s, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(s2_plan_attn(&s, "sm_80", NULL, &p, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(s2_spec_load(path, bad, 1, &s, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(s2_plan_attn(&s, "sm_80", NULL, &p, &err), S2_ERR_SPEC);
    cr_expect(err.msg && !strncmp(err.msg, "--set #1: error: context_length = 8388608", 41), "%s",
              err.msg);
    s2_error_clear(&err);
    /* on sm_90a the deterministic Hopper backward forms delta itself: no such grid */
    cr_assert_eq(s2_spec_load(path, NULL, 0, &s, &err), S2_OK);
    cr_expect_eq(s2_plan_attn(&s, "sm_90a", NULL, &p, &err), S2_OK, "%s", err.msg);
}

/* The runtime's check of each batch: one sequence of at most 2^24 tokens, a grid z of at most
 * 65535 sequences, and every grid within CUDA's limits, each on both sides. */
Test(ranges, batches_checked_against_the_launch_limits)
{
    s2_spec s = load("");
    s2_attn_plan p;
    cr_assert_eq(s2_plan_attn(&s, "sm_80", NULL, &p, NULL), S2_OK);
    s2_error err = {0};
    cr_expect_eq(s2_plan_check_batch(&p, 16777216, 1, 16777216, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(s2_plan_check_batch(&p, 16777217, 1, 16777217, &err), S2_ERR_INVALID);
    cr_expect(err.msg && strstr(err.msg, "a sequence of 16777217 tokens: valid 0..16777216"), "%s",
              err.msg);
    cr_expect_eq(s2_plan_check_batch(&p, 1, 65535, 65535, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(s2_plan_check_batch(&p, 1, 65536, 65536, &err), S2_ERR_INVALID);
    cr_expect(err.msg && strstr(err.msg, "x 65536 blocks"), "%s", err.msg);
    /* 8 heads, 4 warps a block: 2^31 - 1 blocks of the preprocessing hold 4 (2^31 - 1) / 8 rows */
    const long most = 4L * INT_MAX / 8;
    cr_expect_eq(s2_plan_check_batch(&p, 16777216, 64, most, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(s2_plan_check_batch(&p, 16777216, 64, most + 1, &err), S2_ERR_INVALID);
    cr_expect(err.msg && strstr(err.msg, "s2_attn_bwd_pre needs a grid of 2147483648 x"), "%s",
              err.msg);
    cr_expect_eq(s2_plan_check_batch(&p, 2048, 1, (long)INT_MAX + 1, &err), S2_ERR_INVALID);
    s2_error_clear(&err);
}

/* A spec that did not come from the loader (the runtime derives some) is held to the same
 * ranges by the plan, and the emitter refuses out-of-range constants instead of writing them. */
Test(ranges, plan_and_emitter_refuse_what_the_loader_would)
{
    s2_spec s = load("");
    s2_attn_plan p;
    s2_error err = {0};
    s2_spec big = s;
    big.s2attn.group_size = INT_MAX;
    cr_expect_eq(s2_plan_attn(&big, "sm_80", NULL, &p, &err), S2_ERR_SPEC);
    cr_expect(err.msg && strstr(err.msg, "s2attn.group_size = 2147483647 is out of range: valid "
                                         "1..16777216"), "%s", err.msg);
    s2_spec no_kv = s;
    no_kv.model.num_kv_heads = 0; /* would divide by zero */
    cr_expect_eq(s2_plan_attn(&no_kv, "sm_80", NULL, &p, &err), S2_ERR_SPEC);
    s2_spec inf_scale = s;
    inf_scale.s2attn.softmax_scale = INFINITY;
    cr_expect_eq(s2_plan_attn(&inf_scale, "sm_80", NULL, &p, &err), S2_ERR_SPEC);
    cr_expect(err.msg && strstr(err.msg, "s2attn.softmax_scale = inf is out of range"), "%s",
              err.msg);

    /* the emitter, handed a plan and a spec directly */
    p = plan_of(&s);
    char *src = NULL;
    s2_attn_plan bad = p;
    bad.G = -5;
    cr_expect_eq(s2_emit_attn(&s, &bad, S2_UNIT_ATTN_FWD, &src, &err), S2_ERR_INVALID);
    cr_expect_null(src);
    cr_expect(err.msg && strstr(err.msg, "S2_GROUP = -5 (s2attn.group_size, "), "%s", err.msg);
    bad = p;
    bad.scale = 1e300;
    cr_expect_eq(s2_emit_attn(&s, &bad, S2_UNIT_ATTN_BWD, &src, &err), S2_ERR_INVALID);
    cr_expect(err.msg && strstr(err.msg, "S2_SCALE = 1.0000000000000001e+300"), "%s", err.msg);
    bad = p;
    bad.scale = NAN;
    cr_expect_eq(s2_emit_attn(&s, &bad, S2_UNIT_ATTN_FWD, &src, &err), S2_ERR_INVALID);
    bad = p;
    bad.tile.fwd_warps = -1;
    cr_expect_eq(s2_emit_attn(&s, &bad, S2_UNIT_ATTN_FWD, &src, &err), S2_ERR_INVALID);

    s2_spec t = s;
    t.model.hidden_size = INT_MAX;
    cr_expect_eq(s2_emit_train(&t, &src, &err), S2_ERR_INVALID);
    cr_expect_null(src);
    cr_expect(err.msg && strstr(err.msg, "S2_HIDDEN = 2147483647 (model.hidden_size, <string>:2:"),
              "%s", err.msg);
    t = s;
    t.model.vocab_size = -1;
    cr_expect_eq(s2_emit_train(&t, &src, &err), S2_ERR_INVALID);
    t = s;
    t.model.rms_norm_eps = INFINITY;
    cr_expect_eq(s2_emit_train(&t, &src, &err), S2_ERR_INVALID);
    cr_expect(err.msg && strstr(err.msg, "S2_RMS_EPS = inf"), "%s", err.msg);
    t = s;
    t.model.rope_theta = 1e300;
    cr_expect_eq(s2_emit_train(&t, &src, &err), S2_ERR_INVALID);
    cr_expect_eq(s2_emit_lora(S2_DTYPE_BF16, 0, &src, &err), S2_ERR_INVALID);
    cr_expect_eq(s2_emit_lora(S2_DTYPE_BF16, INT_MAX, &src, &err), S2_ERR_INVALID);
    s2_error_clear(&err);

    /* the row geometry itself never overflows */
    int threads, iters;
    s2_emit_train_row_geometry(INT_MAX, &threads, &iters);
    cr_expect(threads == 512 && iters == 524288, "%d %d", threads, iters);
    s2_emit_train_row_geometry(65536, &threads, &iters);
    cr_expect(threads == 512 && iters == 16, "%d %d", threads, iters);
}

/* --tile values are range-checked as they are parsed: the bounds of each key pass, one past
 * them is refused with the range. */
Test(ranges, tile_values_range_checked)
{
    static const struct {
        const char *key;
        int lo, hi;
    } k[] = {{"fwd_warps", 1, 8},   {"fwd_strips", 1, 2},  {"fwd_block_n", 32, 128},
             {"fwd_stages", 1, 4},  {"fwd_wgmma", 0, 1},   {"fwd_mbar", 0, 1},
             {"bwd_warps", 1, 8},   {"bwd_block_n", 32, 64}, {"bwd_stages", 1, 4},
             {"bwd_atomic_dq", 0, 2}, {"bwd_wgmma", 0, 1}, {"bwd_mbar", 0, 1},
             {"fwd_tma", 0, 1},     {"bwd_tma", 0, 1}};
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
        for (int e = 0; e < 2; e++) {
            const int ok = e ? k[i].hi : k[i].lo, bad = e ? ok + 1 : ok - 1;
            char text[64], want[128];
            s2_attn_tile t = s2_plan_default_tile("sm_80", 64);
            s2_error err = {0};
            snprintf(text, sizeof text, "%s=%d", k[i].key, ok);
            cr_expect_eq(s2_plan_parse_tile(text, &t, &err), S2_OK, "%s", err.msg);
            snprintf(text, sizeof text, "%s=%d", k[i].key, bad);
            snprintf(want, sizeof want, "%s = %d is out of range: valid %d..%d", k[i].key, bad,
                     k[i].lo, k[i].hi);
            cr_expect_eq(s2_plan_parse_tile(text, &t, &err), S2_ERR_INVALID, "%s", text);
            cr_expect(err.msg && strstr(err.msg, want), "%s: %s", text, err.msg);
            s2_error_clear(&err);
        }
    }
    s2_attn_tile t = s2_plan_default_tile("sm_80", 64);
    s2_error err = {0};
    cr_expect_eq(s2_plan_parse_tile("fwd_warps=99999999999999999999", &t, &err), S2_ERR_INVALID);
    cr_expect(err.msg && strstr(err.msg, "out of range: valid 1..8"), "%s", err.msg);
    cr_expect_eq(s2_plan_parse_tile("fwd_warps=4294967300", &t, &err), S2_ERR_INVALID);
    cr_expect_eq(t.fwd_warps, s2_plan_default_tile("sm_80", 64).fwd_warps, "left as it was");
    s2_error_clear(&err);
}

/* ---- the default units' sources, pinned ----
 * The emitted source of every shipped spec, for each arch s2lora builds for, each attention unit
 * and every tile of that unit's tuning space (the default first), is the cache key of its cubin and
 * what was measured: options that are off (the sequence-parallel window) must leave it byte for
 * byte as it was. tests/emit_digests.txt holds one line per (spec file, arch, unit): the tile
 * count and the SHA-256 over the sources in tile-space order (each NUL-terminated). A deliberate
 * change of a default kernel updates the file: the failing test prints the new lines, or
 * S2_WRITE_EMIT_DIGESTS=PATH makes it write them all to PATH. */
static void digest_unit(const s2_spec *s, const char *arch, s2_attn_unit u, int *n_tiles,
                        char hex[65])
{
    const int n = s2_plan_tile_space(s, arch, u, NULL, 0);
    cr_assert_gt(n, 0, "%s %s: no tile plans", s->name, arch);
    s2_attn_tile *t = malloc((size_t)n * sizeof *t);
    cr_assert_not_null(t);
    cr_assert_eq(s2_plan_tile_space(s, arch, u, t, n), n);
    s2_sha256_ctx ctx;
    s2_sha256_init(&ctx);
    for (int i = 0; i < n; i++) {
        s2_attn_plan p;
        s2_error err = {0};
        char *src = NULL;
        cr_assert_eq(s2_plan_attn(s, arch, &t[i], &p, &err), S2_OK, "%s", err.msg);
        cr_assert_eq(s2_emit_attn(s, &p, u, &src, &err), S2_OK, "%s", err.msg);
        s2_sha256_update(&ctx, src, strlen(src) + 1);
        free(src);
    }
    free(t);
    uint8_t h[32];
    s2_sha256_final(&ctx, h);
    s2_hex(h, 32, hex);
    *n_tiles = n;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

Test(emit, default_sources_are_pinned, .timeout = 120)
{
    static const char *const archs[5] = {"sm_80", "sm_86", "sm_89", "sm_90", "sm_90a"};
    char *want = NULL;
    size_t want_len = 0;
    s2_error err = {0};
    cr_assert_eq(s2_read_file(S2_SOURCE_DIR "/tests/emit_digests.txt", &want, &want_len, &err),
                 S2_OK, "%s", err.msg);
    DIR *d = opendir(S2_SOURCE_DIR "/specs");
    cr_assert_not_null(d);
    char *names[64];
    int n_specs = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len >= 6 && !strcmp(de->d_name + len - 5, ".yaml") && n_specs < 64)
            names[n_specs++] = strdup(de->d_name);
    }
    closedir(d);
    qsort(names, (size_t)n_specs, sizeof names[0], cmp_str);
    s2_buf got = {0};
    int lines = 0, missing = 0;
    for (int i = 0; i < n_specs; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/specs/%s", S2_SOURCE_DIR, names[i]);
        s2_spec s;
        cr_assert_eq(s2_spec_load(path, NULL, 0, &s, &err), S2_OK, "%s", err.msg);
        for (int a = 0; a < 5; a++)
            for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++) {
                int n_tiles;
                char hex[65], line[256];
                digest_unit(&s, archs[a], (s2_attn_unit)u, &n_tiles, hex);
                snprintf(line, sizeof line, "%s %s %s %d %s\n", names[i], archs[a],
                         s2_attn_unit_name((s2_attn_unit)u), n_tiles, hex);
                s2_buf_printf(&got, "%s", line);
                lines++;
                char key[128]; /* the line's "SPEC ARCH UNIT " */
                snprintf(key, sizeof key, "%s %s %s ", names[i], archs[a],
                         s2_attn_unit_name((s2_attn_unit)u));
                const char *at = strstr(want, key);
                if (!at || strncmp(at, line, strlen(line))) {
                    missing++;
                    cr_log_error("emitted sources changed (or are new): want %.*s got %s",
                                 at ? (int)(strchr(at, '\n') - at) : 6, at ? at : "(none)",
                                 line);
                }
            }
        free(names[i]);
    }
    const char *out = getenv("S2_WRITE_EMIT_DIGESTS");
    if (out && *out)
        cr_assert_eq(s2_write_file_atomic(out, got.data, got.len, &err), S2_OK, "%s", err.msg);
    cr_expect_geq(lines, 100, "every shipped spec, each arch, both units");
    cr_expect_eq(missing, 0, "%d of %d (spec, arch, unit) sources differ from "
                 "tests/emit_digests.txt", missing, lines);
    cr_expect_eq(strlen(want), got.len, "tests/emit_digests.txt holds lines no spec makes");
    s2_buf_free(&got);
    free(want);
}

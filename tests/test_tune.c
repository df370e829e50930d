/*
 * test_tune.c — the build side of the tuner: the whole tuning space of a spec builds with
 * NVRTC (no GPU), candidates that spill are marked, the default is clean; the CLI refuses
 * what this version does not do.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "run_cmd.h"
#include "gen/emit.h"
#include "runtime/tune/tune.h"

#define BIN S2_BINARY_DIR "/s2lora"

Test(tune, whole_space_of_the_7b_spec_builds_for_sm90a, .timeout = 900)
{
    s2_spec spec;
    s2_error err = {0};
    cr_assert_eq(s2_spec_load(S2_SOURCE_DIR "/specs/llama2-7b-8k.yaml", NULL, 0, &spec, &err),
                 S2_OK, "%s", err.msg);
    s2_jit_opts jo = {.arch = "sm_90a"};
    s2_tune_candidate *c = NULL;
    int n = 0;
    cr_assert_eq(s2_tune_build_space(&spec, &jo, (1u << S2_UNIT_ATTN_COUNT) - 1, 1, &c, &n, &err),
                 S2_OK, "%s", err.msg);
    int want = s2_plan_tile_space(&spec, "sm_90a", S2_UNIT_ATTN_FWD, NULL, 0) +
               s2_plan_tile_space(&spec, "sm_90a", S2_UNIT_ATTN_BWD, NULL, 0);
    cr_expect_eq(n, want, "one candidate per tile of each unit's space");
    cr_expect_eq(s2_tune_space_size(&spec, "sm_90a", (1u << S2_UNIT_ATTN_COUNT) - 1, 1), want);
    s2_attn_tile def = s2_plan_default_tile("sm_90a", spec.model.head_dim);
    int defaults = 0, clean = 0;
    for (int i = 0; i < n; i++) {
        cr_expect_eq(c[i].st, S2_OK, "%s", c[i].msg ? c[i].msg : "");
        cr_expect_gt(c[i].n_res, 0);
        clean += !c[i].spilled;
        if (!memcmp(&c[i].tile, &def, sizeof def)) {
            defaults++;
            cr_expect(!c[i].spilled, "the default tile never spills");
        }
    }
    cr_expect_eq(defaults, S2_UNIT_ATTN_COUNT, "the default heads each unit's space");
    cr_expect_gt(clean, n / 2, "most of the space is usable");
    s2_tune_free(c, n);
}

/* Without atomic_dq the backward's space is its deterministic tiles: every tile of the plan's
 * space but those with bwd_atomic_dq 1, the ordered dQ (2) kept; the forward's is whole. */
Test(tune, the_backward_space_is_deterministic_unless_asked)
{
    s2_spec spec;
    s2_error err = {0};
    cr_assert_eq(s2_spec_load(S2_SOURCE_DIR "/specs/llama2-7b-8k.yaml", NULL, 0, &spec, &err),
                 S2_OK, "%s", err.msg);
    const int n = s2_plan_tile_space(&spec, "sm_90a", S2_UNIT_ATTN_BWD, NULL, 0);
    s2_attn_tile *t = calloc((size_t)n, sizeof *t);
    cr_assert_not_null(t);
    s2_plan_tile_space(&spec, "sm_90a", S2_UNIT_ATTN_BWD, t, n);
    int atomic = 0, ordered = 0;
    for (int i = 0; i < n; i++) {
        atomic += t[i].bwd_atomic_dq == 1;
        ordered += t[i].bwd_atomic_dq == 2;
        cr_expect_eq(s2_tune_deterministic(&t[i]), t[i].bwd_atomic_dq != 1);
    }
    free(t);
    cr_assert_gt(atomic, 0, "the plan's space holds the atomic dQ");
    cr_assert_gt(ordered, 0, "and the ordered dQ");
    const unsigned bwd = 1u << S2_UNIT_ATTN_BWD, fwd = 1u << S2_UNIT_ATTN_FWD;
    cr_expect_eq(s2_tune_space_size(&spec, "sm_90a", bwd, 0), n - atomic);
    cr_expect_eq(s2_tune_space_size(&spec, "sm_90a", bwd, 1), n);
    cr_expect_eq(s2_tune_space_size(&spec, "sm_90a", fwd, 0),
                 s2_plan_tile_space(&spec, "sm_90a", S2_UNIT_ATTN_FWD, NULL, 0));
}

Test(tune, bad_arch_is_refused)
{
    s2_spec spec;
    cr_assert_eq(s2_spec_load(S2_SOURCE_DIR "/specs/tiny-byte-512.yaml", NULL, 0, &spec, NULL),
                 S2_OK);
    s2_jit_opts jo = {.arch = "sm_75"};
    s2_tune_candidate *c = NULL;
    int n = 0;
    s2_error err = {0};
    cr_expect_eq(s2_tune_build_space(&spec, &jo, 3, 0, &c, &n, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "sm_75"), "%s", err.msg);
    cr_expect_null(c);
    s2_error_clear(&err);
}

Test(tune, cli_arguments)
{
    char *out;
    cr_expect_eq(run(BIN " tune --help", &out), 0);
    cr_expect(strstr(out, "--build-only"), "%s", out);
    free(out);
    cr_expect_eq(run(BIN " tune " S2_SOURCE_DIR "/specs/tiny-byte-512.yaml --arch sm_80", &out), 2);
    cr_expect(strstr(out, "--arch goes with --build-only"), "%s", out);
    free(out);
    cr_expect_eq(run(BIN " tune " S2_SOURCE_DIR "/specs/tiny-byte-512.yaml --build-only", &out), 2);
    cr_expect(strstr(out, "needs one --arch"), "%s", out);
    free(out);
    cr_expect_eq(run(BIN " tune " S2_SOURCE_DIR "/specs/tiny-byte-512.yaml --kernels attn_x", &out), 2);
    cr_expect(strstr(out, "--kernels: \"attn_x\" is not one of: attn, attn_fwd, attn_bwd, lora"),
              "%s", out);
    free(out);
    /* the LoRA linears: nothing to build offline; on a machine without a GPU, exit 3 */
    cr_expect_eq(run(BIN " tune " S2_SOURCE_DIR "/specs/tiny-byte-512.yaml --kernels lora "
                     "--arch sm_90a --build-only", &out), 0);
    cr_expect(strstr(out, "cuBLAS's algorithms: nothing to build"), "%s", out);
    free(out);
    int rc = run(BIN " tune " S2_SOURCE_DIR "/specs/tiny-byte-512.yaml --kernels lora --db /tmp",
                 &out);
    cr_expect(rc == 3 || rc == 0, "exit %d: %s", rc, out);
    free(out);
    /* A spec error is reported before the device is looked for. */
    cr_expect_eq(run(BIN " tune " S2_SOURCE_DIR "/tests/specs_bad/unknown_key.yaml", &out), 1);
    cr_expect(strstr(out, "unknown_key.yaml:"), "%s", out);
    free(out);
}

Test(tune, without_a_gpu_the_tuner_says_so)
{
    char *out;
    int rc = run(BIN " tune " S2_SOURCE_DIR "/specs/tiny-byte-512.yaml --kernels attn_fwd "
                 "--budget 5 --db /tmp", &out);
    cr_expect(rc == 3 || rc == 0, "exit %d: %s", rc, out);
    if (rc == 3)
        cr_expect(strstr(out, "no CUDA device"), "%s", out);
    free(out);
}

/* ---- selection: how a run picks its tile from the database (no GPU) ---- */

#define DEV "NVIDIA H100 80GB HBM3"

static s2_spec spec_named(const char *name, const char *extra)
{
    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "name: %s\ncontext_length: 16384\n"
             "model: {hidden_size: 4096, intermediate_size: 11008, num_layers: 2, num_heads: 32,\n"
             "        head_dim: 128, vocab_size: 32000, max_position_embeddings: 4096}\n%s",
             name, extra);
    s2_spec s;
    s2_error err = {0};
    cr_assert_eq(s2_spec_load_string(yaml, "t.yaml", NULL, 0, &s, &err), S2_OK, "%s", err.msg);
    return s;
}

static void put_entry(s2_tunedb *db, const s2_spec *spec, const char *arch, const char *unit,
                      int seqlen, const char *tile, const char *gen)
{
    s2_tunedb_entry e = {0};
    snprintf(e.device, sizeof e.device, DEV);
    snprintf(e.arch, sizeof e.arch, "%s", arch);
    snprintf(e.kernel, sizeof e.kernel, "%s", unit);
    s2_plan_attn_identity(spec, e.spec_sha256);
    s2_tunedb_shape_class(seqlen, e.shape, sizeof e.shape);
    snprintf(e.tile, sizeof e.tile, "%s", tile);
    e.default_ms = 2.0, e.tuned_ms = 1.5;
    snprintf(e.gen, sizeof e.gen, "%s", gen);
    snprintf(e.nvrtc, sizeof e.nvrtc, "13.0");
    s2_tunedb_now(e.when);
    s2_error err = {0};
    cr_assert_eq(s2_tunedb_put(db, &e, &err), S2_OK, "%s", err.msg);
}

static s2_tunedb *fresh_db(void)
{
    static char dir[64];
    snprintf(dir, sizeof dir, "/tmp/s2sel.XXXXXX");
    cr_assert(mkdtemp(dir));
    s2_tunedb *db = NULL;
    s2_error err = {0};
    cr_assert_eq(s2_tunedb_open(dir, DEV, &db, &err), S2_OK, "%s", err.msg);
    return db;
}

Test(select, no_database_means_the_default)
{
    s2_spec s = spec_named("a", "");
    s2_tune_choice c;
    s2_tune_select(NULL, DEV, "sm_90a", &s, 16384, &c);
    s2_attn_tile def = s2_plan_default_tile("sm_90a", 128);
    cr_expect_eq(memcmp(&c.tile, &def, sizeof def), 0);
    cr_expect_eq(c.tuned[0] + c.tuned[1], 0);
    cr_expect(strstr(c.why, "attn_fwd: default"), "%s", c.why);
}

Test(select, each_unit_takes_its_own_fields)
{
    s2_spec s = spec_named("a", "");
    s2_tunedb *db = fresh_db();
    /* The forward entry's backward fields must not leak into the choice, nor the reverse. */
    put_entry(db, &s, "sm_90a", "attn_fwd", 16384,
              "fwd_wgmma=0,fwd_warps=8,fwd_strips=1,fwd_block_n=64,fwd_stages=3,bwd_warps=1",
              S2_GEN_VERSION);
    s2_tune_choice c;
    s2_tune_select(db, DEV, "sm_90a", &s, 16384, &c);
    s2_attn_tile def = s2_plan_default_tile("sm_90a", 128);
    cr_expect_eq(c.tuned[S2_UNIT_ATTN_FWD], 1);
    cr_expect_eq(c.tuned[S2_UNIT_ATTN_BWD], 0);
    cr_expect_eq(c.tile.fwd_warps, 8);
    cr_expect_eq(c.tile.fwd_block_n, 64);
    cr_expect_eq(c.tile.fwd_stages, 3);
    cr_expect_eq(c.tile.fwd_wgmma, 0, "the kernel kind is a field of its unit too");
    cr_expect_eq(c.tile.bwd_warps, def.bwd_warps, "bwd fields stay the default");
    cr_expect_eq(c.tile.bwd_wgmma, def.bwd_wgmma, "bwd fields stay the default");
    cr_expect(strstr(c.why, "attn_fwd: tuned (N<=16384"), "%s", c.why);

    put_entry(db, &s, "sm_90a", "attn_bwd", 16384,
              "fwd_warps=1,bwd_wgmma=0,bwd_warps=8,bwd_block_n=32,bwd_stages=3,bwd_atomic_dq=1",
              S2_GEN_VERSION);
    s2_tune_select(db, DEV, "sm_90a", &s, 16384, &c);
    cr_expect_eq(c.tuned[S2_UNIT_ATTN_BWD], 1);
    cr_expect_eq(c.tile.bwd_warps, 8);
    cr_expect_eq(c.tile.bwd_atomic_dq, 1);
    cr_expect_eq(c.tile.bwd_wgmma, 0);
    cr_expect_eq(c.tile.fwd_warps, 8, "the forward still comes from its own entry");
    s2_tunedb_close(db);
}

Test(select, keys_must_match)
{
    s2_spec s = spec_named("a", "");
    s2_tunedb *db = fresh_db();
    put_entry(db, &s, "sm_90a", "attn_fwd", 16384, "fwd_warps=8,fwd_strips=1", S2_GEN_VERSION);
    s2_tune_choice c;
    s2_tune_select(db, DEV, "sm_90a", &s, 40000, &c); /* another shape class */
    cr_expect_eq(c.tuned[S2_UNIT_ATTN_FWD], 0, "%s", c.why);
    s2_tune_select(db, DEV, "sm_80", &s, 16384, &c); /* another arch */
    cr_expect_eq(c.tuned[S2_UNIT_ATTN_FWD], 0, "%s", c.why);
    s2_spec other = spec_named("a", "s2attn: {group_size: 2048}\n"); /* other attention */
    s2_tune_select(db, DEV, "sm_90a", &other, 16384, &c);
    cr_expect_eq(c.tuned[S2_UNIT_ATTN_FWD], 0, "%s", c.why);
    /* Same attention under another name and LoRA setting: the same kernels, the same entry. */
    s2_spec twin = spec_named("b", "lora: {rank: 64}\n");
    s2_tune_select(db, DEV, "sm_90a", &twin, 16384, &c);
    cr_expect_eq(c.tuned[S2_UNIT_ATTN_FWD], 1, "%s", c.why);
    s2_tunedb_close(db);
}

Test(select, stale_and_unplannable_entries_fall_back)
{
    s2_spec s = spec_named("a", "");
    s2_tunedb *db = fresh_db();
    put_entry(db, &s, "sm_90a", "attn_fwd", 16384, "fwd_warps=8,fwd_strips=1", "s2lora-gen-0");
    s2_tune_choice c;
    s2_tune_select(db, DEV, "sm_90a", &s, 16384, &c);
    cr_expect_eq(c.tuned[S2_UNIT_ATTN_FWD], 0, "another generator's entry is not used: %s", c.why);
    /* Parses, but this arch's shared memory cannot hold it: the default stands, and why says so. */
    put_entry(db, &s, "sm_86", "attn_fwd", 16384,
              "fwd_warps=8,fwd_strips=1,fwd_block_n=128,fwd_stages=4", S2_GEN_VERSION);
    s2_tune_select(db, DEV, "sm_86", &s, 16384, &c);
    cr_expect_eq(c.tuned[S2_UNIT_ATTN_FWD], 0);
    cr_expect(strstr(c.why, "no longer plans"), "%s", c.why);
    s2_tunedb_close(db);
}

/* The LoRA linears' tuning entries: per product, keyed by the group's shape and the token
 * count's class; dA and dB apart for dtype and fp32 gradients; anything else is the default. */
static s2_status put_lora(s2_tunedb *db, const s2_lora_dims *d, s2_lora_gemm g, int grad_f32,
                          const char *tile)
{
    s2_tunedb_entry e = {0};
    snprintf(e.device, sizeof e.device, DEV);
    snprintf(e.arch, sizeof e.arch, "sm_90a");
    s2_tune_lora_kernel_name(g, grad_f32, e.kernel, sizeof e.kernel);
    s2_tune_lora_identity(d, e.spec_sha256);
    s2_tunedb_shape_class(d->M, e.shape, sizeof e.shape);
    snprintf(e.tile, sizeof e.tile, "%s", tile);
    e.default_ms = 2.0, e.tuned_ms = 1.5;
    snprintf(e.gen, sizeof e.gen, "%s", S2_GEN_VERSION);
    snprintf(e.nvrtc, sizeof e.nvrtc, "13.0");
    s2_tunedb_now(e.when);
    s2_error err = {0};
    s2_status st = s2_tunedb_put(db, &e, &err);
    s2_error_clear(&err);
    return st;
}

Test(select, lora_products)
{
    char name[64];
    s2_tune_lora_kernel_name(S2_LG_Y, 1, name, sizeof name);
    cr_expect_str_eq(name, "lora_y", "grad_f32 names only dA and dB");
    s2_tune_lora_kernel_name(S2_LG_DB, 1, name, sizeof name);
    cr_expect_str_eq(name, "lora_db_f32");
    s2_tune_lora_kernel_name(S2_LG_DA, 0, name, sizeof name);
    cr_expect_str_eq(name, "lora_da");

    s2_spec s = spec_named("a", "");
    s2_lora_plan plan;
    s2_plan_lora(&s, &plan);
    s2_lora_dims qkv, o;
    s2_error err = {0};
    cr_assert_eq(s2_lora_dims_of(&plan, 0, 0, 16384, 1, &qkv, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(s2_lora_dims_of(&plan, 1, 0, 16384, 1, &o, &err), S2_OK, "%s", err.msg);
    cr_expect_str_eq(s2_tune_lora_group_name(&plan, 0), "qkv");
    cr_expect_str_eq(s2_tune_lora_group_name(&plan, 1), "o");
    char h1[65], h2[65], h3[65];
    s2_tune_lora_identity(&qkv, h1);
    s2_tune_lora_identity(&o, h2);
    s2_lora_dims other_m = o;
    other_m.M = 512, other_m.seed = 99, other_m.algo[0] = 3;
    s2_tune_lora_identity(&other_m, h3);
    cr_expect_str_neq(h1, h2, "the group's shape is its identity");
    cr_expect_str_eq(h2, h3, "M, seed and algorithms are not");

    s2_tunedb *db = fresh_db();
    cr_expect_eq(put_lora(db, &qkv, S2_LG_Y, 0, "algo=3"), S2_OK);
    cr_expect_eq(put_lora(db, &qkv, S2_LG_DB, 1, "algo=2"), S2_OK);
    cr_expect_eq(put_lora(db, &qkv, S2_LG_DB, 0, "algo=5"), S2_OK);
    cr_expect_neq(put_lora(db, &qkv, S2_LG_DX, 0, "algo=99"), S2_OK, "beyond any list");
    cr_expect_neq(put_lora(db, &qkv, S2_LG_DX, 0, "algo=2x"), S2_OK);
    cr_expect_neq(put_lora(db, &qkv, S2_LG_DX, 0, "fwd_warps=4"), S2_OK, "not a LoRA choice");
    cr_expect_eq(put_lora(db, &o, S2_LG_U, 0, "algo=1"), S2_OK);
    char why[160];
    s2_lora_dims d = qkv;
    d.grad_f32 = 1;
    s2_tune_lora_select(db, DEV, "sm_90a", &d, why, sizeof why);
    cr_expect_eq(d.algo[S2_LG_Y], 3);
    cr_expect_eq(d.algo[S2_LG_DB], 2, "fp32 gradients take the _f32 entry");
    cr_expect_eq(d.algo[S2_LG_DX], 0, "the refused entries left no trace");
    cr_expect_eq(d.algo[S2_LG_U], 0, "o's entry is not qkv's");
    cr_expect(strstr(why, "2 of 6 tuned"), "%s", why);
    d.grad_f32 = 0;
    s2_tune_lora_select(db, DEV, "sm_90a", &d, NULL, 0);
    cr_expect_eq(d.algo[S2_LG_DB], 5);
    d.M = 65536; /* another shape class */
    s2_tune_lora_select(db, DEV, "sm_90a", &d, why, sizeof why);
    for (int g = 0; g < S2_LG_COUNT; g++)
        cr_expect_eq(d.algo[g], 0);
    cr_expect(strstr(why, "default"), "%s", why);
    d = qkv;
    s2_tune_lora_select(db, DEV, "sm_80", &d, NULL, 0); /* another arch */
    cr_expect_eq(d.algo[S2_LG_Y], 0);
    s2_tune_lora_select(NULL, DEV, "sm_90a", &d, NULL, 0);
    cr_expect_eq(d.algo[S2_LG_Y], 0);
    s2_tunedb_close(db);
}

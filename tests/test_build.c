/*
 * test_build.c — every spec in specs/ generates and NVRTC-builds for sm_80 and
 * sm_90a, with no register spills, no stack frame and every kernel present.
 * NVRTC only: no GPU is needed.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/rt.h"
#include "cache_warn.h"
#include "tmpdir.h"

static const char *const archs[] = {"sm_80", "sm_90a"};

static void build_spec(const char *path)
{
    s2_spec spec;
    s2_error err = {0};
    cr_assert_eq(s2_spec_load(path, NULL, 0, &spec, &err), S2_OK, "%s", err.msg);
    for (int a = 0; a < 2; a++) {
        s2_jit_opts jo = {.arch = archs[a]};
        s2_attn_plan plan;
        s2_jit_result res[S2_UNIT_ATTN_COUNT];
        memset(res, 0, sizeof res);
        cr_assert_eq(s2_attn_build(&spec, NULL, &jo, &plan, res, &err), S2_OK, "%s %s: %s", path,
                     archs[a], err.msg);
        for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++) {
            const char *const *names;
            int nk = s2_attn_unit_kernels((s2_attn_unit)u, &names);
            cr_expect(res[u].size > 0);
            cr_expect_eq(res[u].n_res, nk, "%s %s %s: %d kernels reported, want %d", path,
                         archs[a], s2_attn_unit_name(u), res[u].n_res, nk);
            for (int k = 0; k < res[u].n_res; k++) {
                const s2_kernel_res *r = &res[u].res[k];
                cr_expect_eq(r->spill_stores + r->spill_loads, 0, "%s %s %s spills %d+%d bytes",
                             path, archs[a], r->name, r->spill_stores, r->spill_loads);
                cr_expect_eq(r->stack, 0, "%s %s %s has a %d-byte stack frame (local memory)",
                             path, archs[a], r->name, r->stack);
                cr_expect_gt(r->regs, 0);
                cr_expect_leq(r->smem, 48 * 1024, "static shared memory stays under 48 KB");
            }
            s2_jit_result_free(&res[u]);
        }
    }
}

static int is_yaml(const char *n)
{
    size_t l = strlen(n);
    return l > 5 && strcmp(n + l - 5, ".yaml") == 0;
}

Test(build, every_spec_for_sm80_and_sm90a, .timeout = 600)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/specs", S2_SOURCE_DIR);
    DIR *d = opendir(dir);
    cr_assert(d, "cannot open %s", dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!is_yaml(e->d_name))
            continue;
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        build_spec(path);
        n++;
    }
    closedir(d);
    cr_expect_geq(n, 10, "specs/ should hold the paper's nine configurations and a small model");
}

/* The TMA dK/dV kernel's dQ forms (the default's dQ kernel, the atomic dQ, the ordered dQ) on
 * LLaMA-2 70B's GQA (64 query heads over 8 kv heads) and on a 32/32 MHA: no spills, no stack
 * frame for sm_90a. (The default specs' builds above take the default tile only.) */
Test(build, hopper_dq_tiles_build_clean_with_gqa, .timeout = 600)
{
    static const char *const tiles[] = {"bwd_tma=1", "bwd_tma=1,bwd_atomic_dq=1,bwd_stages=2",
                                        "bwd_tma=1,bwd_atomic_dq=2,bwd_stages=2"};
    static const s2_spec_override heads[][2] = {
        {{"model.num_heads=64"}, {"model.num_kv_heads=8"}},
        {{"model.num_heads=32"}, {"model.num_kv_heads=32"}}};
    char path[1024];
    snprintf(path, sizeof path, "%s/specs/llama2-70b-32k.yaml", S2_SOURCE_DIR);
    for (int h = 0; h < 2; h++) {
        s2_spec spec;
        s2_error err = {0};
        cr_assert_eq(s2_spec_load(path, heads[h], 2, &spec, &err), S2_OK, "%s", err.msg);
        for (size_t i = 0; i < sizeof tiles / sizeof *tiles; i++) {
            s2_attn_tile t = s2_plan_default_tile("sm_90a", spec.model.head_dim);
            cr_assert_eq(s2_plan_parse_tile(tiles[i], &t, &err), S2_OK, "%s", err.msg);
            s2_jit_opts jo = {.arch = "sm_90a"};
            s2_attn_plan plan;
            s2_jit_result res[S2_UNIT_ATTN_COUNT];
            memset(res, 0, sizeof res);
            cr_assert_eq(s2_attn_build(&spec, &t, &jo, &plan, res, &err), S2_OK, "%s: %s",
                         tiles[i], err.msg);
            for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++) {
                for (int k = 0; k < res[u].n_res; k++) {
                    const s2_kernel_res *r = &res[u].res[k];
                    cr_expect_eq(r->spill_stores + r->spill_loads + r->stack, 0,
                                 "%s, %s, %s: %s spills %d+%d bytes, %d-byte stack",
                                 heads[h][0].text, heads[h][1].text, tiles[i], r->name,
                                 r->spill_stores,
                                 r->spill_loads, r->stack);
                }
                s2_jit_result_free(&res[u]);
            }
        }
    }
}

/* A tile the plan refuses never reaches NVRTC. */
Test(build, bad_tile_is_refused_before_nvrtc)
{
    s2_spec spec;
    s2_error err = {0};
    char path[1024];
    snprintf(path, sizeof path, "%s/specs/llama2-7b-8k.yaml", S2_SOURCE_DIR);
    cr_assert_eq(s2_spec_load(path, NULL, 0, &spec, &err), S2_OK, "%s", err.msg);
    s2_attn_tile t = s2_plan_default_tile("sm_80", 128);
    t.bwd_block_n = 48;
    s2_jit_opts jo = {.arch = "sm_80"};
    s2_attn_plan plan;
    s2_jit_result res[S2_UNIT_ATTN_COUNT];
    memset(res, 0, sizeof res);
    cr_expect_eq(s2_attn_build(&spec, &t, &jo, &plan, res, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "bwd_block_n = 48"), "%s", err.msg);
    s2_error_clear(&err);
}

/* A corrupt attention entry is rebuilt by s2_attn_load, and its warning reaches the device's
 * cache_warn (the CLI prints it) before the units are loaded: here, with no GPU, the load then
 * fails, and the warning has still been told, once, naming the unit and the entry. */
Test(build, attn_load_tells_rebuilt_entry, .timeout = 600)
{
    char dir[] = "/tmp/s2build-test-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    s2_spec spec;
    s2_error err = {0};
    char path[1024];
    snprintf(path, sizeof path, "%s/specs/tiny-byte-512.yaml", S2_SOURCE_DIR);
    cr_assert_eq(s2_spec_load(path, NULL, 0, &spec, &err), S2_OK, "%s", err.msg);
    s2_jit_opts jo = {.arch = "sm_80", .cache_dir = dir, .threads = 1};
    s2_attn_plan plan;
    s2_jit_result res[S2_UNIT_ATTN_COUNT];
    memset(res, 0, sizeof res);
    cr_assert_eq(s2_attn_build(&spec, NULL, &jo, &plan, res, &err), S2_OK, "%s", err.msg);
    const int bad = S2_UNIT_ATTN_COUNT - 1;
    char entry[sizeof res[0].path];
    snprintf(entry, sizeof entry, "%s", res[bad].path);
    for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++) {
        cr_expect_str_eq(res[u].warning, "", "a plain miss is no problem");
        s2_jit_result_free(&res[u]);
    }
    flip_last_byte(entry);

    heard h = {0};
    s2_rt rt = {.arch = "sm_80", .sm_count = 1, .cache_warn = hear, .cache_warn_arg = &h};
    s2_attn a;
    if (!s2_attn_load(&a, &rt, &spec, NULL, &jo, &err))
        s2_attn_free(&a);
    s2_error_clear(&err);
    cr_assert_eq(h.n, 1, "the rebuilt entry was told %d times", h.n);
    char unit[128];
    snprintf(unit, sizeof unit, "unit tiny-byte-512/%s: ", s2_attn_unit_name(bad));
    cr_expect(strstr(h.last, unit), "'%s' does not name %s", h.last, unit);
    cr_expect(strstr(h.last, entry), "'%s' does not name %s", h.last, entry);
    cr_expect(strstr(h.last, "rebuilt"), "%s", h.last);
    s2_test_rmtree(dir);
}

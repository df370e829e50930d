/*
 * test_build.c — every spec in specs/ generates and NVRTC-builds for sm_80 and
 * sm_90a, with no register spills, no stack frame and every kernel present.
 * NVRTC only: no GPU is needed.
 */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/rt.h"

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

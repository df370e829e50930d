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
#include "runtime/tune.h"

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
    cr_assert_eq(s2_tune_build_space(&spec, &jo, (1u << S2_UNIT_ATTN_COUNT) - 1, &c, &n, &err),
                 S2_OK, "%s", err.msg);
    int want = s2_plan_tile_space(&spec, "sm_90a", S2_UNIT_ATTN_FWD, NULL, 0) +
               s2_plan_tile_space(&spec, "sm_90a", S2_UNIT_ATTN_BWD, NULL, 0);
    cr_expect_eq(n, want, "one candidate per tile of each unit's space");
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

Test(tune, bad_arch_is_refused)
{
    s2_spec spec;
    cr_assert_eq(s2_spec_load(S2_SOURCE_DIR "/specs/tiny-byte-512.yaml", NULL, 0, &spec, NULL),
                 S2_OK);
    s2_jit_opts jo = {.arch = "sm_75"};
    s2_tune_candidate *c = NULL;
    int n = 0;
    s2_error err = {0};
    cr_expect_eq(s2_tune_build_space(&spec, &jo, 3, &c, &n, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "sm_75"), "%s", err.msg);
    cr_expect_null(c);
    s2_error_clear(&err);
}

Test(tune, cli_says_what_this_version_does)
{
    char *out;
    cr_expect_eq(run(BIN " tune --help", &out), 0);
    cr_expect(strstr(out, "--build-only"), "%s", out);
    free(out);
    cr_expect_eq(run(BIN " tune " S2_SOURCE_DIR "/specs/tiny-byte-512.yaml --arch sm_80", &out), 2);
    cr_expect(strstr(out, "not in this version"), "%s", out);
    free(out);
    cr_expect_eq(run(BIN " tune " S2_SOURCE_DIR "/specs/tiny-byte-512.yaml --build-only", &out), 2);
    cr_expect(strstr(out, "one --arch"), "%s", out);
    free(out);
}

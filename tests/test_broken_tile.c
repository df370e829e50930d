/*
 * test_broken_tile.c — the compiler of a test build (S2_TEST_BROKEN_TILE): the tile key
 * test_broken exists, the forward's tuning space holds exactly one broken candidate, and its
 * source asks the kernel to miscompute. The GPU check then shows the tuner rejecting it.
 * (The regular build refusing the key is tested in test_gen.c.)
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen/emit.h"
#include "gen/plan.h"

static s2_spec tiny(void)
{
    s2_spec s;
    s2_error err = {0};
    cr_assert_eq(s2_spec_load(S2_SOURCE_DIR "/specs/tiny-byte-512.yaml", NULL, 0, &s, &err),
                 S2_OK, "%s", err.msg);
    return s;
}

Test(broken_tile, key_parses_and_reaches_the_source)
{
    s2_spec s = tiny();
    s2_attn_tile t = s2_plan_default_tile("sm_90a", s.model.head_dim);
    s2_error err = {0};
    cr_assert_eq(s2_plan_parse_tile("test_broken=1", &t, &err), S2_OK, "%s", err.msg);
    s2_attn_plan p;
    cr_assert_eq(s2_plan_attn(&s, "sm_90a", &t, &p, &err), S2_OK, "%s", err.msg);
    char *src = NULL;
    cr_assert_eq(s2_emit_attn(&s, &p, S2_UNIT_ATTN_FWD, &src, &err), S2_OK);
    cr_expect(strstr(src, "#define S2_TEST_BROKEN 1\n"));
    free(src);
    char buf[256];
    cr_expect(strstr(s2_plan_tile_str(&t, buf, sizeof buf), "test_broken=1"), "%s", buf);
}

Test(broken_tile, the_forward_space_holds_one_broken_candidate)
{
    s2_spec s = tiny();
    int n = s2_plan_tile_space(&s, "sm_90a", S2_UNIT_ATTN_FWD, NULL, 0);
    s2_attn_tile *t = calloc((size_t)n, sizeof *t);
    s2_plan_tile_space(&s, "sm_90a", S2_UNIT_ATTN_FWD, t, n);
    int broken = 0;
    for (int i = 0; i < n; i++)
        broken += t[i].test_broken;
    cr_expect_eq(broken, 1);
    cr_expect_eq(t[0].test_broken, 0, "the default (the gate's reference) is never broken");
    free(t);
    cr_expect_eq(s2_plan_tile_space(&s, "sm_90a", S2_UNIT_ATTN_BWD, NULL, 0) > 0, 1);
}

/* test_lora_plan.c — LoRA shapes, sharing groups and PEFT names from the shipped specs. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "gen/lora_plan.h"

static s2_spec load(const char *file, const char *set)
{
    s2_spec s;
    s2_error err = {0};
    s2_spec_override ov[] = {{set}};
    cr_assert_eq(s2_spec_load(file, ov, set ? 1 : 0, &s, &err), S2_OK, "%s", err.msg);
    return s;
}

Test(lora_plan, llama2_7b_defaults)
{
    s2_spec s = load(S2_SOURCE_DIR "/specs/llama2-7b-32k.yaml", NULL);
    s2_lora_plan p;
    s2_plan_lora(&s, &p);
    cr_expect_eq(p.rank, 8);
    cr_expect_float_eq(p.scale, 2.0, 1e-12, "alpha 16 / r 8");
    for (int i = S2_PROJ_Q; i <= S2_PROJ_O; i++) {
        cr_expect_eq(p.lin[i].in, 4096);
        cr_expect_eq(p.lin[i].out, 4096);
        cr_expect(p.lin[i].adapted, "%s", s2_proj_name((s2_proj)i));
    }
    cr_expect(!p.lin[S2_PROJ_GATE].adapted && !p.lin[S2_PROJ_DOWN].adapted);
    cr_expect_eq(p.lin[S2_PROJ_UP].out, 11008);
    cr_expect_eq(p.lin[S2_PROJ_DOWN].in, 11008);
    cr_assert_eq(p.n_groups, 2, "q/k/v share x; o alone; the MLP is not adapted");
    cr_expect_eq(p.group[0].n, 3);
    cr_expect_eq(p.group[0].r_total, 24);
    cr_expect_eq(p.group[0].out_total, 3 * 4096);
    cr_expect_eq(p.group[1].n, 1);
    cr_expect_eq(p.group[1].proj[0], S2_PROJ_O);
}

Test(lora_plan, gqa_shapes_of_70b)
{
    s2_spec s = load(S2_SOURCE_DIR "/specs/llama2-70b-32k.yaml", NULL);
    s2_lora_plan p;
    s2_plan_lora(&s, &p);
    cr_expect_eq(p.lin[S2_PROJ_Q].out, 8192);
    cr_expect_eq(p.lin[S2_PROJ_K].out, 1024, "8 kv heads x 128");
    cr_expect_eq(p.lin[S2_PROJ_V].out, 1024);
    cr_expect_eq(p.lin[S2_PROJ_O].in, 8192);
    cr_expect_eq(p.group[0].out_total, 8192 + 2 * 1024);
}

Test(lora_plan, targets_shape_the_groups)
{
    s2_spec s = load(S2_SOURCE_DIR "/specs/llama2-7b-8k.yaml",
                     "lora.targets=[q_proj, v_proj, gate_proj, up_proj, down_proj]");
    s2_lora_plan p;
    s2_plan_lora(&s, &p);
    cr_assert_eq(p.n_groups, 3);
    cr_expect_eq(p.group[0].n, 2);
    cr_expect_eq(p.group[0].proj[0], S2_PROJ_Q);
    cr_expect_eq(p.group[0].proj[1], S2_PROJ_V);
    cr_expect_eq(p.group[1].n, 2, "gate and up share the MLP input");
    cr_expect_eq(p.group[1].in, 4096);
    cr_expect_eq(p.group[2].proj[0], S2_PROJ_DOWN);
    cr_expect_eq(p.group[2].in, 11008);
}

Test(lora_plan, peft_tensor_names)
{
    char buf[128];
    cr_expect_str_eq(s2_lora_tensor_name(3, S2_PROJ_Q, 'A', buf, sizeof buf),
                     "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight");
    cr_expect_str_eq(s2_lora_tensor_name(31, S2_PROJ_DOWN, 'B', buf, sizeof buf),
                     "base_model.model.model.layers.31.mlp.down_proj.lora_B.weight");
    cr_expect_null(s2_lora_tensor_name(0, S2_PROJ_Q, 'C', buf, sizeof buf));
    cr_expect_null(s2_lora_tensor_name(0, S2_PROJ_Q, 'A', buf, 10), "too small a buffer");
}

/* The GPU path's dimensions (runtime/ops/lora.h): the augmented widths and the refusal of dropout. */
#include "runtime/tune/bench_lora.h"
#include "runtime/ops/lora.h"

Test(lora_dims, augmented_widths)
{
    s2_spec s = load(S2_SOURCE_DIR "/specs/llama2-70b-32k.yaml", NULL);
    s2_lora_plan p;
    s2_plan_lora(&s, &p);
    s2_lora_dims d;
    s2_error err = {0};
    cr_assert_eq(s2_lora_dims_of(&p, 0, 3, 4096, 42, &d, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(d.n_proj, 3);
    cr_expect_eq(d.out_total, 8192 + 2 * 1024);
    cr_expect_eq(d.rp, 32, "3 x rank 8 = 24, rounded up to 32: rows stay 32-byte aligned");
    cr_expect_float_eq(d.scale, 2.0f, 1e-6);
    s2_spec odd = load(S2_SOURCE_DIR "/specs/llama2-7b-8k.yaml", "lora.rank=3");
    s2_plan_lora(&odd, &p);
    cr_assert_eq(s2_lora_dims_of(&p, 0, 0, 100, 42, &d, &err), S2_OK);
    cr_expect_eq(d.rp, 16, "3 x 3 = 9 rounded up to 16");
    cr_expect_eq(s2_lora_dims_of(&p, 7, 0, 100, 42, &d, &err), S2_ERR_INVALID);
    s2_error_clear(&err);
}

Test(lora_dims, dropout_streams_and_workspace)
{
    s2_spec s = load(S2_SOURCE_DIR "/specs/llama2-7b-8k.yaml", "lora.dropout=0.05");
    s2_lora_plan p;
    s2_plan_lora(&s, &p);
    s2_lora_dims d;
    s2_error err = {0};
    cr_assert_eq(s2_lora_dims_of(&p, 0, 3, 100, 7, &d, &err), S2_OK, "%s", err.msg);
    cr_expect_float_eq(d.dropout, 0.05f, 1e-7);
    cr_expect_eq(d.stream[0], 3 * 8 + S2_PROJ_Q, "layer * 8 + projection");
    cr_expect_eq(d.stream[2], 3 * 8 + S2_PROJ_V);
    /* the generated pass (rank 8): v's fp32 partials, one [100, 8] a slab of 512 columns, 8
     * slabs a projection of 4096 (24 in all: 76800 bytes, a multiple of 256 already; they
     * replace an accumulator [100, 32] the slabs added into with atomics), and the dB partials
     * of one row range (24 slabs allow 11 ranges, 10 rows each, but a range keeps at least 256
     * rows) [1, 12288, 8] fp32 */
    const size_t pass = (size_t)24 * 100 * 8 * 4 + (size_t)12288 * 8 * 4;
    cr_expect_eq(s2_lora_workspace_bytes(&d), pass + (size_t)100 * 4096 * 2,
                 "the pass's, then drop(x), one [M, in]");
    s2_spec none = load(S2_SOURCE_DIR "/specs/llama2-7b-8k.yaml", NULL);
    s2_plan_lora(&none, &p);
    cr_assert_eq(s2_lora_dims_of(&p, 0, 3, 100, 7, &d, &err), S2_OK);
    cr_expect_eq(s2_lora_workspace_bytes(&d), pass, "the pass's alone without dropout");
    s2_spec r64 = load(S2_SOURCE_DIR "/specs/llama2-7b-8k.yaml", "lora.rank=64");
    s2_plan_lora(&r64, &p);
    cr_assert_eq(s2_lora_dims_of(&p, 0, 3, 100, 7, &d, &err), S2_OK);
    cr_expect_eq(s2_lora_workspace_bytes(&d), 0, "rank 64 takes cuBLAS products: no temporary");
    /* rows of x or dy that would not start 16-byte aligned (a width not a multiple of 8) take
     * the cuBLAS products too, at any rank */
    d = s2_bench_lora_dims(S2_DTYPE_BF16, 100, 4100, 8);
    cr_expect_eq(s2_lora_workspace_bytes(&d), 0, "in = out = 4100: no pass, no temporary");
    d = s2_bench_lora_dims(S2_DTYPE_BF16, 100, 4096, 8);
    cr_expect_gt(s2_lora_workspace_bytes(&d), 0, "in = out = 4096: the pass's temporaries");
}

Test(lora_vdb, geometry)
{
    cr_expect(s2_lora_vdb_ok(8) && s2_lora_vdb_ok(16) && s2_lora_vdb_ok(32));
    cr_expect(!s2_lora_vdb_ok(4) && !s2_lora_vdb_ok(12) && !s2_lora_vdb_ok(64) && !s2_lora_vdb_ok(0));
    cr_expect_eq(s2_lora_vdb_slabs(4096), 8);
    cr_expect_eq(s2_lora_vdb_slabs(768), 2, "a partial second slab");
    /* 16k rows over 8 slabs: 264 blocks allow 33 ranges of 497 rows, rounded to 512 */
    cr_expect_eq(s2_lora_vdb_rows(16384, 8), 512);
    cr_expect_eq(s2_lora_vdb_rows(65536, 24), 5984, "11 ranges of 5958 rows, to 32s");
    cr_expect_eq(s2_lora_vdb_rows(1000, 1), 256, "at least 256 rows");
    /* 16 slabs: 264 blocks allow 16 ranges (256 blocks, one wave), not 17 (272: a second wave) */
    cr_expect_eq(s2_lora_vdb_rows(16384, 16), 1024);
    cr_expect_eq(s2_lora_vdb_rows(16384, 300), 16384, "more slabs than blocks: one range");
    /* three stages of 32 rows x (512 + 8) elements, and 8 warps' [32, 8] fp32 partial sums */
    cr_expect_eq(s2_lora_vdb_smem(8), (size_t)3 * 32 * 520 * 2 + 8 * 32 * 8 * 4);
    /* rank 16: two stages, so two blocks fit one SM's 227 KB */
    cr_expect_eq(s2_lora_vdb_stages(16), 2);
    cr_expect_eq(s2_lora_vdb_smem(16), (size_t)2 * 32 * 528 * 2 + 8 * 32 * 16 * 4);
    cr_expect(2 * (s2_lora_vdb_smem(16) + 1024) <= 232448);
}

/* The generated LoRA unit builds with NVRTC, clean (no spills, no stack), for both offline
 * archs and dtypes: the dropout kernels always, the fused pass over dy for the ranks that take
 * it, and not for the others. */
#include "gen/emit.h"
#include "runtime/core/jit.h"

Test(lora_unit, builds_for_sm80_and_sm90a, .timeout = 300)
{
    const char *archs[] = {"sm_80", "sm_90a"};
    const int ranks[] = {8, 16, 24, 32, 64, 4};
    for (size_t ri = 0; ri < sizeof ranks / sizeof ranks[0]; ri++)
        for (int dt = 0; dt < 2; dt++) {
            const int r = ranks[ri], vdb = s2_lora_vdb_ok(r);
            cr_expect_eq(vdb, r % 8 == 0 && r <= 32, "rank %d", r);
            char *src = NULL;
            s2_error err = {0};
            cr_assert_eq(s2_emit_lora((s2_dtype)dt, r, &src, &err), S2_OK, "%s", err.msg);
            cr_expect(strstr(src, "s2_philox4x32_10"), "the mask is philox.cuh's own text");
            for (int a = 0; a < 2; a++) {
                s2_jit_src unit = {.unit = "lora", .source = src};
                s2_jit_opts jo = {.arch = archs[a]};
                s2_jit_result res = {0};
                cr_assert_eq(s2_jit_build(&unit, 1, &jo, &res, &err), S2_OK, "%s", err.msg);
                cr_expect_eq(res.n_res, vdb ? 4 : 2, "rank %d: kernels", r);
                for (int k = 0; k < res.n_res; k++)
                    cr_expect_eq(res.res[k].spill_stores + res.res[k].spill_loads +
                                     res.res[k].stack, 0,
                                 "rank %d %s %s: %d spill stores, %d loads, %d stack bytes", r,
                                 archs[a], res.res[k].name, res.res[k].spill_stores,
                                 res.res[k].spill_loads, res.res[k].stack);
                s2_jit_result_free(&res);
            }
            free(src);
        }
}

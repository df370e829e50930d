/*
 * test_dp.c — data-parallel training without a GPU: the layout and resume arithmetic, the
 * ranks' slices of the data, the backward stages and the gradient buckets, the options the
 * ranks must share, S2LORA_NCCL_TIMEOUT, the log line, the watchdog (on a fake NCCL), and
 * `s2lora train` under `s2lora launch` and hand-started ranks: the ranks meet, refuse what
 * differs, and end with exit code 3 (no CUDA device) without hanging.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "runtime/train/model.h"
#include "runtime/train/train_dp.h"
#include "runtime/train/train_state.h"
#include "run_cmd.h"
#include "world_helpers.h"
#include "tmpdir.h"

#define BIN S2_BINARY_DIR "/s2lora"
#define TINY S2_SOURCE_DIR "/specs/tiny-byte-512.yaml"

/* ---- layout and resume ------------------------------------------------------------------- */

Test(dp, layout_defaults_and_refusals)
{
    s2_dp_layout l;
    s2_error err = {0};
    cr_assert_eq(s2_dp_resolve(4, 0, 0, 0, 8, 1, 0, &l, &err), S2_OK, "%s", err.msg);
    cr_expect(l.world == 4 && l.dp == 4 && l.sp == 1 && l.grad_accum == 8 &&
              l.global_batch == 32 && !l.derived);
    cr_assert_eq(s2_dp_resolve(1, 0, 1, 3, 8, 1, 0, &l, &err), S2_OK);
    cr_expect(l.dp == 1 && l.grad_accum == 3 && l.global_batch == 3);
    cr_assert_eq(s2_dp_resolve(2, 2, 1, 0, 8, 1, 0, &l, &err), S2_OK);
    cr_expect(l.dp == 2 && l.grad_accum == 8 && l.global_batch == 16);
    /* sequence parallel: dp defaults to world / sp; the global batch counts slots, not ranks */
    cr_assert_eq(s2_dp_resolve(4, 0, 2, 0, 8, 1, 0, &l, &err), S2_OK, "%s", err.msg);
    cr_expect(l.world == 4 && l.dp == 2 && l.sp == 2 && l.grad_accum == 8 &&
              l.global_batch == 16, "dp %d sp %d gb %llu", l.dp, l.sp,
              (unsigned long long)l.global_batch);
    cr_assert_eq(s2_dp_resolve(4, 1, 4, 0, 8, 1, 0, &l, &err), S2_OK, "%s", err.msg);
    cr_expect(l.dp == 1 && l.sp == 4 && l.global_batch == 8);
    /* an sp that does not divide the world */
    cr_assert_eq(s2_dp_resolve(3, 0, 2, 0, 8, 1, 0, &l, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "--sp 2 does not divide the world of 3 ranks"), "%s", err.msg);
    s2_error_clear(&err);
    /* dp must be the world / sp */
    cr_assert_eq(s2_dp_resolve(2, 3, 0, 0, 8, 1, 0, &l, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "--dp 3 x --sp 1 is 3 ranks, but the world has 2"), "%s", err.msg);
    s2_error_clear(&err);
    cr_assert_eq(s2_dp_resolve(8, 2, 2, 0, 8, 1, 0, &l, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "--dp 2 x --sp 2 is 4 ranks, but the world has 8: --dp is the "
                              "world size / --sp, 4 here"), "%s", err.msg);
    s2_error_clear(&err);
    cr_assert_eq(s2_dp_resolve(4, 1, 1, 0, 8, 1, 0, &l, &err), S2_ERR_INVALID);
    s2_error_clear(&err);
    cr_assert_eq(s2_dp_resolve(0, 0, 0, 0, 8, 1, 0, &l, &err), S2_ERR_INVALID);
    s2_error_clear(&err);
}

Test(dp, resume_keeps_the_global_batch)
{
    s2_dp_layout l;
    s2_error err = {0};
    /* a state of 16 sequences a step: on 2 ranks, 8 each (derived) */
    cr_assert_eq(s2_dp_resolve(2, 0, 0, 0, 8, 1, 16, &l, &err), S2_OK, "%s", err.msg);
    cr_expect(l.grad_accum == 8 && l.global_batch == 16 && l.derived);
    cr_assert_eq(s2_dp_resolve(1, 0, 0, 0, 8, 1, 16, &l, &err), S2_OK);
    cr_expect(l.grad_accum == 16 && l.derived);
    cr_assert_eq(s2_dp_resolve(16, 0, 0, 0, 8, 1, 16, &l, &err), S2_OK);
    cr_expect(l.grad_accum == 1);
    /* given and consistent: checked, not derived */
    cr_assert_eq(s2_dp_resolve(4, 0, 0, 4, 8, 1, 16, &l, &err), S2_OK);
    cr_expect(l.grad_accum == 4 && !l.derived);
    /* 3 ranks cannot keep 16: every valid pair is named */
    cr_assert_eq(s2_dp_resolve(3, 0, 0, 0, 8, 1, 16, &l, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "global batch of 16 sequences a step") &&
              strstr(err.msg, "3 ranks cannot keep it") &&
              strstr(err.msg, "Valid with this state: --gpus 1 --grad-accum 16, --gpus 2 "
                              "--grad-accum 8, --gpus 4 --grad-accum 4, --gpus 8 --grad-accum "
                              "2, --gpus 16 --grad-accum 1 (or start a fresh run)"), "%s",
              err.msg);
    s2_error_clear(&err);
    /* a given --grad-accum that changes it */
    cr_assert_eq(s2_dp_resolve(2, 0, 0, 4, 8, 1, 16, &l, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "this run has 2 ranks x --grad-accum 4 x --batch 1 = 8") &&
              strstr(err.msg, "--gpus 2 --grad-accum 8"), "%s", err.msg);
    s2_error_clear(&err);
    /* many divisors: the list is cut short, saying so */
    cr_assert_eq(s2_dp_resolve(7, 0, 0, 0, 8, 1, 720720, &l, &err), S2_OK); /* 7 divides it */
    cr_assert_eq(s2_dp_resolve(17, 0, 0, 0, 8, 1, 720720, &l, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, ", ... (or start a fresh run)"), "%s", err.msg);
    s2_error_clear(&err);
}

/* --batch packs sequences into a micro-step: the global batch counts sequences, so a state
 * keeps it across batch sizes too, and the pairs offered are those of this batch. */
Test(dp, batch_counts_in_the_global_batch)
{
    s2_dp_layout l;
    s2_error err = {0};
    cr_assert_eq(s2_dp_resolve(2, 0, 0, 0, 8, 4, 0, &l, &err), S2_OK, "%s", err.msg);
    cr_expect(l.grad_accum == 8 && l.batch == 4 && l.global_batch == 64 && !l.derived);
    /* a state of 16 sequences a step, resumed with --batch 4 on one GPU: 4 micro-steps */
    cr_assert_eq(s2_dp_resolve(1, 0, 0, 0, 8, 4, 16, &l, &err), S2_OK, "%s", err.msg);
    cr_expect(l.grad_accum == 4 && l.batch == 4 && l.global_batch == 16 && l.derived);
    cr_assert_eq(s2_dp_resolve(2, 0, 0, 2, 8, 4, 16, &l, &err), S2_OK, "%s", err.msg);
    cr_expect(l.grad_accum == 2 && l.global_batch == 16 && !l.derived);
    /* a batch that does not divide it */
    cr_assert_eq(s2_dp_resolve(1, 0, 0, 0, 8, 3, 16, &l, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "--batch 3 does not divide it (give a --batch dividing 16"), "%s",
              err.msg);
    s2_error_clear(&err);
    /* a given --grad-accum that changes it: the valid pairs at this batch */
    cr_assert_eq(s2_dp_resolve(2, 0, 0, 4, 8, 4, 16, &l, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "this run has 2 ranks x --grad-accum 4 x --batch 4 = 32") &&
              strstr(err.msg, "Valid with this state (with --batch 4): --gpus 1 --grad-accum 4, "
                              "--gpus 2 --grad-accum 2, --gpus 4 --grad-accum 1 (or start"),
              "%s", err.msg);
    s2_error_clear(&err);
    /* ranks that cannot keep it at this batch */
    cr_assert_eq(s2_dp_resolve(8, 0, 0, 0, 8, 4, 16, &l, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "8 ranks cannot keep it with --batch 4 (8 x 4 does not divide 16)"),
              "%s", err.msg);
    s2_error_clear(&err);
    cr_assert_eq(s2_dp_resolve(1, 0, 0, 0, 8, 0, 0, &l, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "--batch 0 (>= 1)"), "%s", err.msg);
    s2_error_clear(&err);
}

/* Every global index of a step is trained exactly once, by the rank the rule names, and a
 * rank's indices come in micro-step order. */
Test(dp, ranks_take_disjoint_slices_of_the_global_batch)
{
    const int dps[] = {1, 2, 3, 8}, gas[] = {1, 3, 8};
    const uint64_t P = 1000003;
    for (size_t a = 0; a < 4; a++)
        for (size_t b = 0; b < 3; b++) {
            const int dp = dps[a], ga = gas[b], gb = dp * ga;
            int *hits = calloc((size_t)gb, sizeof *hits);
            for (int r = 0; r < dp; r++)
                for (int m = 0; m < ga; m++) {
                    const uint64_t g = s2_dp_sequence(P, dp, r, m);
                    cr_assert(g >= P && g < P + (uint64_t)gb, "dp %d ga %d: %llu", dp, ga,
                              (unsigned long long)g);
                    cr_expect_eq((g - P) % (uint64_t)dp, (uint64_t)r, "rank %d: P + r + k dp",
                                 r);
                    cr_expect_eq(g, P + (uint64_t)r + (uint64_t)m * (uint64_t)dp);
                    hits[g - P]++;
                }
            for (int i = 0; i < gb; i++)
                cr_expect_eq(hits[i], 1, "dp %d ga %d: index P + %d trained %d times", dp, ga, i,
                             hits[i]);
            free(hits);
        }
    /* one rank is the one-GPU trainer's order: P, P + 1, ... */
    for (int m = 0; m < 8; m++)
        cr_expect_eq(s2_dp_sequence(P, 1, 0, m), P + (uint64_t)m);
}

/* A run that changes its world size at a resume consumes the same sequences, step by step, as
 * one that never did: steps cover consecutive global batches. */
/* Sequence parallel: rank d x sp + s holds chunk s of slot d's sequences; every position of
 * every global sequence of a step is held by exactly one rank. */
Test(dp, sp_ranks_hold_every_token_of_the_global_batch_once)
{
    s2_spec spec;
    s2_error err = {0};
    cr_assert_eq(s2_spec_load(TINY, NULL, 0, &spec, &err), S2_OK, "%s", err.msg);
    const int sps[] = {2, 4}, Cs[] = {512, 4096};
    for (int a = 0; a < 2; a++)
        for (int c = 0; c < 2; c++) {
            const int sp = sps[a], C = Cs[c], world = 2 * sp, dp = world / sp, ga = 3;
            s2_sp_plan plan;
            int halo = -1;
            cr_assert_eq(s2_sp_train_plan(&spec, C, sp, 0, &plan, &halo, &err), S2_OK, "%s",
                         err.msg);
            int *held = calloc((size_t)dp * ga * C, sizeof *held);
            const uint64_t P = 40;
            for (int r = 0; r < world; r++) {
                const int d = s2_dp_slot(r, sp), s = s2_sp_chunk_of(r, sp);
                cr_expect_eq(d, r / sp);
                cr_expect_eq(s2_sp_world_rank(r, sp, s), r, "rank %d", r);
                cr_expect_eq(s2_sp_world_rank(r, sp, 0), d * sp, "group of rank %d", r);
                cr_expect_eq(s2_sp_world_rank(r, sp, sp - 1), d * sp + sp - 1);
                const int lo = plan.rank[s].lo, hi = plan.rank[s].hi;
                cr_expect(lo % S2_SP_DEFAULT_ALIGN == 0 && lo < hi && hi <= C, "[%d, %d)", lo,
                          hi);
                cr_expect_leq(lo - s2_sp_union_klo(&plan, s), halo, "halo rows of chunk %d", s);
                for (int m = 0; m < ga; m++) {
                    const uint64_t g = s2_dp_sequence(P, dp, d, m);
                    cr_assert(g >= P && g < P + (uint64_t)dp * ga);
                    for (int t = lo; t < hi; t++)
                        held[(g - P) * (uint64_t)C + (uint64_t)t]++;
                }
            }
            for (int i = 0; i < dp * ga * C; i++)
                cr_assert_eq(held[i], 1, "sp %d C %d: sequence %d row %d held %d times", sp, C,
                             i / C, i % C, held[i]);
            free(held);
            s2_sp_plan_free(&plan);
        }
}

Test(dp, sp_plans_that_training_cannot_run_are_refused)
{
    s2_spec spec;
    s2_sp_plan plan;
    int halo;
    s2_error err = {0};
    cr_assert_eq(s2_spec_load(TINY, NULL, 0, &spec, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(s2_sp_train_plan(&spec, 4096, 2, 1, &plan, &halo, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "--sp 2 with --full-attention") &&
              strstr(err.msg, "S²-Attn's window units"), "%s", err.msg);
    cr_expect_null(plan.rank);
    s2_error_clear(&err);
    /* 512 tokens in chunks of 128 rows: at most 4 ranks */
    cr_assert_eq(s2_sp_train_plan(&spec, 512, 8, 0, &plan, &halo, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "--sp 8 at 512 tokens a sequence") && strstr(err.msg, "4"), "%s",
              err.msg);
    s2_error_clear(&err);
    cr_assert_eq(s2_sp_train_plan(&spec, 512, 4, 0, &plan, &halo, &err), S2_OK, "%s", err.msg);
    s2_sp_plan_free(&plan);
    const s2_spec_override roll[] = {{"s2attn.shift_mode=roll"}};
    cr_assert_eq(s2_spec_load(TINY, roll, 1, &spec, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(s2_sp_train_plan(&spec, 4096, 2, 0, &plan, &halo, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "shift_mode roll") && strstr(err.msg, "s2attn.shift_mode=split"),
              "%s", err.msg);
    s2_error_clear(&err);
}

Test(dp, resume_at_another_world_size_continues_the_global_position)
{
    const uint64_t gb = 16;
    const int worlds[] = {2, 4, 1, 8}; /* a resume after every 3 steps */
    uint64_t P = 0;
    char *seen = calloc(12 * gb, 1);
    for (int phase = 0; phase < 4; phase++) {
        s2_dp_layout l;
        cr_assert_eq(s2_dp_resolve(worlds[phase], 0, 0, 0, 8, 1, phase ? gb : 0, &l, NULL), S2_OK);
        if (!phase) /* the fresh run chose 2 x 8 */
            cr_assert_eq(l.global_batch, gb);
        cr_expect_eq(l.global_batch, gb);
        for (int step = 0; step < 3; step++) {
            for (int r = 0; r < l.dp; r++)
                for (int m = 0; m < l.grad_accum; m++) {
                    const uint64_t g = s2_dp_sequence(P, l.dp, r, m);
                    cr_assert(g < 12 * gb);
                    cr_expect(!seen[g], "sequence %llu trained twice", (unsigned long long)g);
                    seen[g] = 1;
                    cr_expect(g >= P && g < P + gb, "step covers [P, P + global batch)");
                }
            P += l.global_batch;
        }
    }
    for (uint64_t g = 0; g < 12 * gb; g++)
        cr_expect(seen[g], "sequence %llu never trained", (unsigned long long)g);
    free(seen);
}

/* ---- stages and buckets ------------------------------------------------------------------ */

Test(dp, stages_of_the_trainable_tensors)
{
    const int L = 32;
    cr_expect_eq(s2_dp_n_stages(L), 34);
    cr_expect_eq(s2_dp_stage_of("model.norm.weight", L), 0);
    cr_expect_eq(s2_dp_stage_of("lm_head.weight", L), 0);
    cr_expect_eq(s2_dp_stage_of("model.layers.31.self_attn.qkv.lora_A_stacked", L), 1);
    cr_expect_eq(s2_dp_stage_of("model.layers.0.mlp.down.weight_stacked", L), 32);
    cr_expect_eq(s2_dp_stage_of("model.layers.7.input_layernorm.weight", L), 25);
    cr_expect_eq(s2_dp_stage_of("model.embed_tokens.weight", L), 33);
    const char *bad[] = {"model.layers.32.self_attn.qkv.lora_A_stacked", "model.layers.x.a",
                         "model.layers.03.a", "model.layers.3", "model.layers.3.",
                         "model.layers..a", "lm_head", "model.rotary.inv_freq", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_expect_eq(s2_dp_stage_of(bad[i], L), -1, "'%s'", bad[i]);
}

Test(dp, buckets_of_a_small_layout)
{
    /* L = 2: embed at the start (stage 3), layers 0 and 1, then the norm and the head */
    const s2_dp_item it[] = {{0, 100, 3}, {100, 50, 2}, {150, 50, 1}, {200, 10, 0}, {210, 90, 0}};
    s2_dp_bucket *b = NULL;
    int nb = 0;
    s2_error err = {0};
    cr_assert_eq(s2_dp_buckets(it, 5, 300, 4, 100, &b, &nb, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(nb, 3);
    cr_expect(b[0].off == 200 && b[0].n == 100 && b[0].stage == 0 && b[0].n_items == 2);
    cr_expect(b[1].off == 100 && b[1].n == 100 && b[1].stage == 2 && b[1].n_items == 2);
    cr_expect(b[2].off == 0 && b[2].n == 100 && b[2].stage == 3 && b[2].n_items == 1);
    free(b);
    /* a cap larger than everything: one bucket, ready once the embedding is */
    cr_assert_eq(s2_dp_buckets(it, 5, 300, 4, 1000, &b, &nb, &err), S2_OK);
    cr_expect(nb == 1 && b[0].off == 0 && b[0].n == 300 && b[0].stage == 3 && b[0].n_items == 5);
    free(b);
    /* a cap below every item: one bucket each, in the order the backward completes them */
    cr_assert_eq(s2_dp_buckets(it, 5, 300, 4, 1, &b, &nb, &err), S2_OK);
    cr_assert_eq(nb, 5);
    const size_t offs[] = {210, 200, 150, 100, 0};
    for (int i = 0; i < 5; i++)
        cr_expect_eq(b[i].off, offs[i], "bucket %d", i);
    free(b);
    /* no trainable tensor: no bucket */
    cr_assert_eq(s2_dp_buckets(NULL, 0, 0, 4, 100, &b, &nb, &err), S2_OK);
    cr_expect_eq(nb, 0);
    free(b);
}

Test(dp, buckets_refuse_a_layout_that_does_not_tile)
{
    s2_dp_bucket *b = NULL;
    int nb = 0;
    s2_error err = {0};
    const s2_dp_item gap[] = {{0, 10, 0}, {20, 10, 1}};
    cr_assert_eq(s2_dp_buckets(gap, 2, 30, 2, 100, &b, &nb, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "elements [10, 20) belong to no item"), "%s", err.msg);
    s2_error_clear(&err);
    const s2_dp_item overlap[] = {{0, 15, 0}, {10, 10, 1}};
    cr_assert_eq(s2_dp_buckets(overlap, 2, 20, 2, 100, &b, &nb, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "item 1 [10, 20) overlaps item 0"), "%s", err.msg);
    s2_error_clear(&err);
    const s2_dp_item short_[] = {{0, 10, 0}};
    cr_assert_eq(s2_dp_buckets(short_, 1, 12, 2, 100, &b, &nb, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "cover [0, 10), the buffer has 12"), "%s", err.msg);
    s2_error_clear(&err);
    const s2_dp_item stage[] = {{0, 10, 2}};
    cr_assert_eq(s2_dp_buckets(stage, 1, 10, 2, 100, &b, &nb, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "item 0 has stage 2; valid: 0..1"), "%s", err.msg);
    s2_error_clear(&err);
    const s2_dp_item empty[] = {{0, 0, 0}, {0, 10, 0}};
    cr_assert_eq(s2_dp_buckets(empty, 2, 10, 2, 100, &b, &nb, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "item 0 is empty"), "%s", err.msg);
    s2_error_clear(&err);
    cr_expect_eq(b, NULL);
}

/* The model's layout (model.c: embedding, then per layer each group's adapters and the two
 * norms, then the final norm and the head; each start 64-float aligned), names mapped to
 * stages: the buckets tile the buffer, start in stage order, each waits for exactly its
 * latest tensor, and stay within the cap unless one tensor exceeds it. */
Test(dp, buckets_of_the_model_layout)
{
    const int L = 32, hid = 4096, rp = 32;
    char names[200][96];
    s2_dp_item it[200];
    int n = 0;
    size_t off = 0;
#define ADD(numel, ...)                                                                          \
    do {                                                                                         \
        snprintf(names[n], sizeof names[n], __VA_ARGS__);                                        \
        it[n].off = off;                                                                         \
        it[n].n = ((size_t)(numel) + 63) / 64 * 64;                                              \
        it[n].stage = s2_dp_stage_of(names[n], L);                                               \
        cr_assert_geq(it[n].stage, 0, "%s", names[n]);                                           \
        off += it[n].n;                                                                          \
        n++;                                                                                     \
    } while (0)
    ADD((size_t)32000 * hid, "model.embed_tokens.weight");
    for (int l = 0; l < L; l++) {
        ADD(rp * hid, "model.layers.%d.self_attn.qkv.lora_A_stacked", l);
        ADD(3 * hid * rp, "model.layers.%d.self_attn.qkv.lora_B_stacked", l);
        ADD(rp * hid, "model.layers.%d.self_attn.o.lora_A_stacked", l);
        ADD(hid * rp, "model.layers.%d.self_attn.o.lora_B_stacked", l);
        ADD(hid + 3, "model.layers.%d.input_layernorm.weight", l); /* padding */
        ADD(hid, "model.layers.%d.post_attention_layernorm.weight", l);
    }
    ADD(hid, "model.norm.weight");
#undef ADD
    const size_t cap = S2_DP_BUCKET_BYTES_DEFAULT / sizeof(float);
    s2_dp_bucket *b = NULL;
    int nb = 0;
    s2_error err = {0};
    cr_assert_eq(s2_dp_buckets(it, n, off, s2_dp_n_stages(L), cap, &b, &nb, &err), S2_OK, "%s",
                 err.msg);
    cr_expect_gt(nb, 8, "the adapters' gradients go in several buckets: %d", nb);
    size_t covered = 0;
    for (int k = 0; k < nb; k++) {
        covered += b[k].n;
        if (k)
            cr_expect_geq(b[k].stage, b[k - 1].stage, "buckets in the order they can start");
        cr_expect(b[k].n <= cap || b[k].n_items == 1, "bucket %d of %zu floats", k, b[k].n);
        int latest = -1, items = 0;
        for (int i = 0; i < n; i++)
            if (it[i].off >= b[k].off && it[i].off < b[k].off + b[k].n) {
                cr_expect_leq(it[i].off + it[i].n, b[k].off + b[k].n, "%s split", names[i]);
                latest = it[i].stage > latest ? it[i].stage : latest;
                items++;
            }
        cr_expect_eq(b[k].stage, latest, "bucket %d waits for its latest tensor", k);
        cr_expect_eq(b[k].n_items, items);
    }
    cr_expect_eq(covered, off);
    /* the first bucket starts before the backward is half done; the embedding goes last */
    cr_expect_lt(b[0].stage, L / 2);
    cr_expect_eq(b[nb - 1].stage, L + 1);
    cr_expect_eq(b[nb - 1].off, 0);
    free(b);
}

/* ---- what the ranks share ---------------------------------------------------------------- */

Test(dp, options_text_holds_what_must_agree_and_nothing_per_rank)
{
    static s2_spec spec;
    spec.context_length = 4096;
    s2_train_opts a, b;
    s2_train_opts_default(&a, &spec);
    const s2_dp_layout l = {.world = 2, .dp = 2, .sp = 1, .grad_accum = 8, .batch = 1,
                            .global_batch = 16};
    char r1[512], r2[512], o1[512], o2[512];
    cr_assert_gt(s2_dp_options_text(&a, &l, S2_DP_OPTS_RUN, r1, sizeof r1), 0);
    cr_assert_gt(s2_dp_options_text(&a, &l, S2_DP_OPTS_OPTIMIZER, o1, sizeof o1), 0);
    cr_expect_str_eq(r1, "steps=1000 dp=2 sp=1 grad_accum=8 batch=1 global_batch=16 "
                         "seqlen=4096 save_every=100 seed=42 resume=0 mode=lora attention=s2 "
                         "recompute=auto rope_scaling=match");
    cr_expect_str_eq(o1, "lr=2e-05 warmup=20 schedule=constant weight_decay=0 beta1=0.9 "
                         "beta2=0.999 eps=1e-08 max_grad_norm=1");
    /* both fit a fingerprint part's shown text whole, so a refusal shows every value */
    cr_expect_lt(strlen(r1), S2_FP_SHOWN_MAX);
    cr_expect_lt(strlen(o1), S2_FP_SHOWN_MAX);
    /* per-rank paths change nothing */
    b = a;
    b.out_dir = "/elsewhere";
    b.log_path = "/elsewhere/log";
    b.cache_dir = "/elsewhere/cache";
    b.model_dir = "/node2/model";
    b.data_path = "/node2/data";
    cr_assert_gt(s2_dp_options_text(&b, &l, S2_DP_OPTS_RUN, r2, sizeof r2), 0);
    cr_assert_gt(s2_dp_options_text(&b, &l, S2_DP_OPTS_OPTIMIZER, o2, sizeof o2), 0);
    cr_expect_str_eq(r1, r2);
    cr_expect_str_eq(o1, o2);
    /* a learning rate one ulp away differs in the text */
    b.lr = nextafter(a.lr, 1.0);
    s2_dp_options_text(&b, &l, S2_DP_OPTS_OPTIMIZER, o2, sizeof o2);
    cr_expect_str_neq(o1, o2);
    cr_expect_eq(strtod(strstr(o2, "lr=") + 3, NULL), b.lr, "%s", o2);
    /* every option that must agree moves its part */
    struct { const char *key; int part; void (*set)(s2_train_opts *); } const moves[] = {
        {"steps=", 0, NULL}, {"seqlen=", 0, NULL}, {"save_every=", 0, NULL},
        {"seed=", 0, NULL},  {"resume=", 0, NULL}, {"mode=", 0, NULL},
        {"attention=", 0, NULL}, {"recompute=", 0, NULL}, {"rope_scaling=", 0, NULL},
        {"warmup=", 1, NULL},
        {"schedule=", 1, NULL}, {"weight_decay=", 1, NULL}, {"beta1=", 1, NULL},
        {"beta2=", 1, NULL}, {"eps=", 1, NULL}, {"max_grad_norm=", 1, NULL}};
    for (size_t i = 0; i < sizeof moves / sizeof moves[0]; i++) {
        b = a;
        const char *k = moves[i].key;
        if (!strcmp(k, "steps=")) b.steps = 7;
        if (!strcmp(k, "seqlen=")) b.seqlen = 512;
        if (!strcmp(k, "save_every=")) b.save_every = 5;
        if (!strcmp(k, "seed=")) b.seed = 1;
        if (!strcmp(k, "resume=")) b.resume = 1;
        if (!strcmp(k, "mode=")) b.full = 1;
        if (!strcmp(k, "attention=")) b.full_attention = 1;
        if (!strcmp(k, "recompute=")) b.recompute = S2_GM_RECOMPUTE_MLP;
        if (!strcmp(k, "rope_scaling=")) b.rope_spec = 1;
        if (!strcmp(k, "warmup=")) b.warmup = 0;
        if (!strcmp(k, "schedule=")) b.schedule = S2_SCHED_COSINE;
        if (!strcmp(k, "weight_decay=")) b.weight_decay = 0.1;
        if (!strcmp(k, "beta1=")) b.beta1 = 0.8;
        if (!strcmp(k, "beta2=")) b.beta2 = 0.95;
        if (!strcmp(k, "eps=")) b.eps = 1e-6;
        if (!strcmp(k, "max_grad_norm=")) b.max_grad_norm = 0;
        char t[512];
        s2_dp_options_text(&b, &l, moves[i].part, t, sizeof t);
        cr_expect_str_neq(t, moves[i].part ? o1 : r1, "%s", k);
        cr_expect(strstr(t, k), "%s", k);
    }
    /* the layout's numbers are in it too */
    s2_dp_layout l2 = l;
    l2.grad_accum = 4;
    l2.global_batch = 8;
    s2_dp_options_text(&a, &l2, S2_DP_OPTS_RUN, r2, sizeof r2);
    cr_expect_str_neq(r1, r2);
    cr_expect_lt(s2_dp_options_text(&a, &l, S2_DP_OPTS_RUN, r2, 20), 0, "too small a buffer");
}

static const char *env_get(void *ctx, const char *name)
{
    return !strcmp(name, "S2LORA_NCCL_TIMEOUT") ? ctx : NULL;
}

Test(dp, nccl_timeout_from_the_environment)
{
    double t = 0;
    s2_error err = {0};
    cr_assert_eq(s2_dp_timeout((s2_env){env_get, NULL}, &t, &err), S2_OK);
    cr_expect_eq(t, 600.0);
    cr_assert_eq(s2_dp_timeout((s2_env){env_get, "30"}, &t, &err), S2_OK);
    cr_expect_eq(t, 30.0);
    cr_assert_eq(s2_dp_timeout((s2_env){env_get, "0.5"}, &t, &err), S2_OK);
    cr_expect_eq(t, 0.5);
    const char *bad[] = {"0", "-1", "abc", "1e3", " 5", "5s", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_expect_eq(s2_dp_timeout((s2_env){env_get, (void *)bad[i]}, &t, &err), S2_ERR_INVALID,
                     "'%s'", bad[i]);
        cr_expect(err.msg && strstr(err.msg, "S2LORA_NCCL_TIMEOUT=") &&
                  strstr(err.msg, "positive number of seconds"), "%s", err.msg);
        s2_error_clear(&err);
    }
}

/* ---- the log line ------------------------------------------------------------------------ */

Test(dp, log_line_keeps_the_one_gpu_fields_and_adds_the_world)
{
    const double peaks[3] = {10.5, 11.25, 9};
    const s2_step_log s = {.step = 12, .loss = 2.5, .loss_ema = 2.75, .lr = 2e-5,
                           .grad_norm = 0.5, .tokens = 98304, .seconds = 1.25,
                           .tokens_per_s = 78643.2, .mfu = 0.4, .mem_gib = 10.5,
                           .world_size = 3, .dp = 3, .sp = 1, .peak_mem_gib = peaks};
    char *line = s2_step_log_json(&s);
    cr_assert(line);
    /* the one-GPU trainer's line, unchanged, then the new fields */
    char old[512];
    snprintf(old, sizeof old,
             "{\"step\": %llu, \"loss\": %.6g, \"loss_ema\": %.6g, \"lr\": %.6g, "
             "\"grad_norm\": %.6g, \"tokens\": %lld, \"seconds\": %.4f, "
             "\"tokens_per_s\": %.1f, \"mfu\": %.4f, \"mem_gib\": %.3f",
             12ull, 2.5, 2.75, 2e-5, 0.5, 98304ll, 1.25, 78643.2, 0.4, 10.5);
    cr_expect(!strncmp(line, old, strlen(old)), "%s", line);
    json_error_t je;
    json_t *j = json_loads(line, 0, &je);
    cr_assert(j, "not JSON (%s): %s", je.text, line);
    const char *keys[] = {"step", "loss", "loss_ema", "lr", "grad_norm", "tokens", "seconds",
                          "tokens_per_s", "mfu", "mem_gib", "world_size", "dp", "sp",
                          "peak_mem_gib"};
    const char *k;
    json_t *v;
    size_t i = 0;
    json_object_foreach(j, k, v) {
        cr_assert_lt(i, sizeof keys / sizeof keys[0]);
        cr_expect_str_eq(k, keys[i], "field %zu", i);
        i++;
    }
    cr_expect_eq(i, sizeof keys / sizeof keys[0]);
    cr_expect_eq(json_integer_value(json_object_get(j, "world_size")), 3);
    cr_expect_eq(json_integer_value(json_object_get(j, "dp")), 3);
    cr_expect_eq(json_integer_value(json_object_get(j, "sp")), 1);
    json_t *p = json_object_get(j, "peak_mem_gib");
    cr_assert(json_is_array(p) && json_array_size(p) == 3);
    for (int r = 0; r < 3; r++)
        cr_expect_eq(json_number_value(json_array_get(p, (size_t)r)), peaks[r], "rank %d", r);
    json_decref(j);
    free(line);
}

/* ---- the watchdog on a fake NCCL --------------------------------------------------------- */

static atomic_int aborts, async_calls, fatal_calls, async_fail_after;
static char fatal_msg[1024];
#define FAKE_COMM ((ncclComm_t)(uintptr_t)0x5eed)

static ncclResult_t fake_abort(ncclComm_t c)
{
    atomic_fetch_add(&aborts, c == FAKE_COMM ? 1 : 1000); /* 1000: another communicator */
    return ncclSuccess;
}
static ncclResult_t fake_async(ncclComm_t c, ncclResult_t *r)
{
    const int n = atomic_fetch_add(&async_calls, 1);
    const int after = atomic_load(&async_fail_after);
    *r = after >= 0 && n >= after ? ncclRemoteError : ncclSuccess;
    return ncclSuccess;
}
static const char *fake_string(ncclResult_t r)
{
    return r == ncclRemoteError ? "remote process exited or there was a network error" : "?";
}
static void fake_fatal(void *ctx, const char *msg)
{
    snprintf(fatal_msg, sizeof fatal_msg, "%s", msg);
    atomic_fetch_add(&fatal_calls, 1);
}
static int never(void *ctx, s2_error *err) { return 0; }
static int soon(void *ctx, s2_error *err) { return ++*(int *)ctx >= 100; }

static s2_nccl fake_nccl(void)
{
    return (s2_nccl){.comm_abort = fake_abort, .comm_get_async_error = fake_async,
                     .get_error_string = fake_string};
}

TestSuite(watchdog, .timeout = 30);

Test(watchdog, a_collective_that_never_completes_times_out_and_aborts)
{
    atomic_store(&async_fail_after, -1);
    const s2_nccl n = fake_nccl();
    s2_watchdog *w = NULL;
    s2_error err = {0};
    cr_assert_eq(s2_watchdog_start(&n, 0.3, 60, NULL, NULL, &w, &err), S2_OK, "%s", err.msg);
    s2_watchdog_set_comm(w, FAKE_COMM);
    s2_watchdog_begin(w, "the all-reduce of step 7's gradients");
    const double t0 = mono_now();
    cr_assert_eq(s2_watchdog_wait(w, never, NULL, &err), S2_ERR_CUDA);
    const double dt = mono_now() - t0;
    cr_expect(dt >= 0.3 && dt < 2, "%.2f s", dt);
    /* the limit, not the time taken (about 0.3 s, which would print as "0") */
    cr_expect(strstr(err.msg, "the all-reduce of step 7's gradients did not complete within "
                              "S2LORA_NCCL_TIMEOUT=0.3 s (given up after 0.") &&
              strstr(err.msg, "the communicator is aborted"), "%s", err.msg);
    s2_error_clear(&err);
    cr_expect_eq(atomic_load(&aborts), 1);
    cr_expect(s2_watchdog_aborted(w));
    /* after the abort every wait fails at once, and nothing aborts twice */
    int k = 0;
    cr_expect_eq(s2_watchdog_wait(w, never, &k, &err), S2_ERR_CUDA);
    s2_error_clear(&err);
    s2_watchdog_abort(w, "again");
    cr_expect_eq(atomic_load(&aborts), 1);
    s2_watchdog_stop(w);
}

Test(watchdog, an_nccl_error_aborts_at_once)
{
    atomic_store(&async_calls, 0);
    atomic_store(&async_fail_after, 3);
    const s2_nccl n = fake_nccl();
    s2_watchdog *w = NULL;
    s2_error err = {0};
    cr_assert_eq(s2_watchdog_start(&n, 100, 60, NULL, NULL, &w, &err), S2_OK);
    s2_watchdog_set_comm(w, FAKE_COMM);
    s2_watchdog_begin(w, "the barrier after rank 0's save of step 4");
    const double t0 = mono_now();
    cr_assert_eq(s2_watchdog_wait(w, never, NULL, &err), S2_ERR_CUDA);
    cr_expect_lt(mono_now() - t0, 5);
    cr_expect(strstr(err.msg, "NCCL failed during the barrier after rank 0's save of step 4") &&
              strstr(err.msg, "remote process exited or there was a network error"), "%s",
              err.msg);
    s2_error_clear(&err);
    cr_expect_eq(atomic_load(&aborts), 1);
    s2_watchdog_stop(w);
}

Test(watchdog, a_completed_collective_passes)
{
    atomic_store(&async_fail_after, -1);
    const s2_nccl n = fake_nccl();
    s2_watchdog *w = NULL;
    cr_assert_eq(s2_watchdog_start(&n, 100, 60, NULL, NULL, &w, NULL), S2_OK);
    s2_watchdog_set_comm(w, FAKE_COMM);
    s2_watchdog_begin(w, "x");
    int k = 0;
    cr_expect_eq(s2_watchdog_wait(w, soon, &k, NULL), S2_OK);
    s2_watchdog_end(w);
    cr_expect_eq(k, 100);
    cr_expect_eq(atomic_load(&aborts), 0);
    cr_expect(!s2_watchdog_aborted(w));
    s2_watchdog_stop(w);
}

/* A host blocked inside a call (here: the test sleeping, no wait polled): the thread aborts at
 * the time limit and, the process not ending within the grace period, calls fatal. Without a
 * communicator yet (its creation hung), there is nothing to abort. */
Test(watchdog, a_blocked_host_gets_the_fatal_call)
{
    atomic_store(&async_fail_after, -1);
    const s2_nccl n = fake_nccl();
    s2_watchdog *w = NULL;
    cr_assert_eq(s2_watchdog_start(&n, 0.2, 0.3, fake_fatal, NULL, &w, NULL), S2_OK);
    s2_watchdog_begin(w, "ncclCommInitRank (every rank joining the communicator)");
    const double t0 = mono_now();
    while (!atomic_load(&fatal_calls) && mono_now() - t0 < 10) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    const double dt = mono_now() - t0;
    cr_assert_eq(atomic_load(&fatal_calls), 1);
    cr_expect(dt >= 0.5 && dt < 3, "%.2f s", dt);
    cr_expect(strstr(fatal_msg, "ncclCommInitRank (every rank joining the communicator) did "
                                "not complete within"), "%s", fatal_msg);
    cr_expect_eq(atomic_load(&aborts), 0, "no communicator to abort");
    s2_watchdog_stop(w);
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

/* A call that blocks past the limit: the watchdog aborts the communicator to unblock it, and
 * the main thread, back from the call, learns of it and never gets the communicator again. */
Test(watchdog, a_blocked_call_is_unblocked_by_the_abort)
{
    atomic_store(&async_fail_after, -1);
    const s2_nccl n = fake_nccl();
    s2_watchdog *w = NULL;
    s2_error err = {0};
    cr_assert_eq(s2_watchdog_start(&n, 0.2, 60, NULL, NULL, &w, NULL), S2_OK);
    s2_watchdog_set_comm(w, FAKE_COMM);
    ncclComm_t c = NULL;
    cr_assert_eq(s2_watchdog_call_begin(w, "gradient bucket 3 of 9", &c, &err), S2_OK);
    cr_expect_eq(c, FAKE_COMM);
    const double t0 = mono_now();
    while (!atomic_load(&aborts) && mono_now() - t0 < 5) /* "blocked inside NCCL" */
        sleep_s(0.01);
    cr_expect_eq(atomic_load(&aborts), 1, "the watchdog aborts while the host is in the call");
    cr_expect_eq(s2_watchdog_call_end(w, S2_OK, &err), S2_ERR_CUDA);
    cr_expect(err.msg && strstr(err.msg, "gradient bucket 3 of 9 did not complete within "
                                         "S2LORA_NCCL_TIMEOUT=0.2 s"), "%s", err.msg);
    s2_error_clear(&err);
    c = FAKE_COMM;
    cr_expect_eq(s2_watchdog_call_begin(w, "the next bucket", &c, &err), S2_ERR_CUDA);
    cr_expect_eq(c, NULL);
    s2_error_clear(&err);
    s2_watchdog_abort(w, "this rank gives up");
    cr_expect_eq(atomic_load(&aborts), 1);
    s2_watchdog_stop(w);
}

/* A limit hit while the host is outside any call (here: computing, not polling): the watchdog
 * only flags it, the communicator stays, and the host aborts it itself at its next check. */
Test(watchdog, outside_a_call_the_host_aborts_at_its_next_check)
{
    atomic_store(&async_fail_after, -1);
    const s2_nccl n = fake_nccl();
    s2_watchdog *w = NULL;
    s2_error err = {0};
    cr_assert_eq(s2_watchdog_start(&n, 0.2, 60, NULL, NULL, &w, NULL), S2_OK);
    s2_watchdog_set_comm(w, FAKE_COMM);
    s2_watchdog_begin(w, "the sum of step 3's loss");
    const double t0 = mono_now();
    while (!s2_watchdog_aborted(w) && mono_now() - t0 < 5)
        sleep_s(0.01);
    cr_assert(s2_watchdog_aborted(w));
    sleep_s(0.2); /* the watchdog keeps checking meanwhile */
    cr_expect_eq(atomic_load(&aborts), 0, "the watchdog never aborts outside a call");
    ncclComm_t c = FAKE_COMM;
    cr_expect_eq(s2_watchdog_call_begin(w, "the next enqueue", &c, &err), S2_ERR_CUDA);
    cr_expect_eq(c, NULL);
    cr_expect(err.msg && strstr(err.msg, "the sum of step 3's loss did not complete within"),
              "%s", err.msg);
    s2_error_clear(&err);
    cr_expect_eq(atomic_load(&aborts), 1, "the host aborted it");
    cr_expect_eq(s2_watchdog_wait(w, never, NULL, &err), S2_ERR_CUDA);
    s2_error_clear(&err);
    s2_watchdog_end(w);
    cr_expect_eq(atomic_load(&aborts), 1);
    s2_watchdog_stop(w);
}

/* Only the host's waiting and its calls count: compute between enqueues (the backward after
 * the first bucket) runs past the limit without a timeout. */
Test(watchdog, compute_between_calls_does_not_count)
{
    atomic_store(&async_fail_after, -1);
    const s2_nccl n = fake_nccl();
    s2_watchdog *w = NULL;
    s2_error err = {0};
    cr_assert_eq(s2_watchdog_start(&n, 0.2, 60, NULL, NULL, &w, NULL), S2_OK);
    s2_watchdog_set_comm(w, FAKE_COMM);
    for (int i = 0; i < 3; i++) {
        ncclComm_t c = NULL;
        cr_assert_eq(s2_watchdog_call_begin(w, "a bucket", &c, &err), S2_OK);
        cr_expect_eq(s2_watchdog_call_end(w, S2_OK, &err), S2_OK);
        sleep_s(0.15); /* "the backward" */
    }
    s2_watchdog_begin(w, "the all-reduce of step 1's gradients and loss");
    int k = 0;
    cr_expect_eq(s2_watchdog_wait(w, soon, &k, &err), S2_OK, "%s", err.msg);
    s2_watchdog_end(w);
    sleep_s(0.3); /* after end: nothing is timed */
    cr_expect(!s2_watchdog_aborted(w));
    cr_expect_eq(atomic_load(&aborts), 0);
    s2_watchdog_stop(w);
}

Test(watchdog, arguments)
{
    s2_watchdog *w = (s2_watchdog *)1;
    s2_error err = {0};
    const s2_nccl n = fake_nccl();
    cr_expect_eq(s2_watchdog_start(&n, 0, 1, NULL, NULL, &w, &err), S2_ERR_INVALID);
    cr_expect_eq(w, NULL);
    s2_error_clear(&err);
    s2_dp *d = (s2_dp *)1;
    cr_expect_eq(s2_dp_open(&n, NULL, 0, 2, NULL, &d, &err), S2_ERR_INVALID);
    cr_expect_eq(d, NULL);
    s2_error_clear(&err);
}

/* ---- s2lora train on several ranks, without a GPU --------------------------------------- */

static char dir[64];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/s2_test_dp.XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void) { s2_test_rmtree(dir); }

TestSuite(train_dp, .init = make_dir, .fini = remove_dir, .timeout = 120);

/* Runs a command line in this suite's directory (world_helpers.h's run_world_v). */
static int run_in(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int run_in(char **out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    const int rc = run_world_v(dir, out, fmt, ap);
    va_end(ap);
    return rc;
}

/* A tiny model and a token file in the suite's directory (no GPU needed for either). */
static void make_inputs(void)
{
    char *out;
    cr_assert_eq(run_in(&out, "%s init %s -o model && head -c 60000 %s/README.md > a.txt && "
                        "%s data --bytes a.txt -o a.tokens && head -c 15000 %s/README.md > "
                        "b.txt && %s data --bytes b.txt -o b.tokens", BIN, TINY, S2_SOURCE_DIR,
                        BIN, S2_SOURCE_DIR, BIN), 0, "%s", out);
    free(out);
}

#define TRAIN_NO_DATA "train " TINY " --model model --steps 2 --seqlens 512"
#define TRAIN TRAIN_NO_DATA " --data a.tokens"

Test(train_dp, two_ranks_meet_then_exit_3_without_a_gpu)
{
    make_inputs();
    char *out;
    const double t0 = mono_now();
    int rc = run_in(&out, "%s launch --gpus 2 --log-dir logs -- " TRAIN " --out o", BIN);
    cr_expect_lt(mono_now() - t0, 60, "no hang");
    cr_expect_eq(rc, 3, "%s", out);
    /* whichever rank reaches the GPU first fails and its lines are shown (rank 0's on the
     * terminal, another's quoted from its log); the others may be stopped before they print */
    cr_expect(strstr(out, "2 ranks met (file:") &&
              strstr(out, "running the same build, spec, options, tokens and state"), "%s", out);
    cr_expect(strstr(out, ": no CUDA device"), "%s", out);
    cr_expect(strstr(out, "s2lora launch: exit 3"), "%s", out);
    free(out);
    /* sequence parallel: dp 2 x sp 2 meet the same way */
    rc = run_in(&out, "%s launch --gpus 4 --log-dir logs4 -- " TRAIN " --out o4 --sp 2", BIN);
    cr_expect_lt(mono_now() - t0, 120, "no hang");
    cr_expect_eq(rc, 3, "%s", out);
    cr_expect(strstr(out, "4 ranks met (file:") && strstr(out, ": no CUDA device"), "%s", out);
    free(out);
    /* a world of one through the launcher takes the same road */
    rc = run_in(&out, "%s launch --gpus 1 -- " TRAIN " --out o", BIN);
    cr_expect_eq(rc, 3, "%s", out);
    cr_expect(strstr(out, "rank 0 of 1: 1 rank met (file:") &&
              strstr(out, "rank 0: no CUDA device"), "%s", out);
    free(out);
    /* a plain world of one meets no one and loads no NCCL: today's path */
    rc = run_in(&out, "%s " TRAIN " --out o", BIN);
    cr_expect_eq(rc, 3, "%s", out);
    cr_expect(!strstr(out, "met (") && strstr(out, "no CUDA"), "%s", out);
    free(out);
}

Test(train_dp, layouts_that_do_not_exist_are_refused)
{
    make_inputs();
    char *out;
    int rc = run_in(&out, "%s launch --gpus 3 -- " TRAIN " --out o --sp 2", BIN);
    cr_expect_eq(rc, 2, "%s", out);
    cr_expect(strstr(out, "--sp 2 does not divide the world of 3 ranks"), "%s", out);
    free(out);
    rc = run_in(&out, "%s launch --gpus 2 -- " TRAIN " --out o --sp 2 --full-attention", BIN);
    cr_expect_eq(rc, 2, "%s", out);
    cr_expect(strstr(out, "--sp 2 with --full-attention"), "%s", out);
    free(out);
    rc = run_in(&out, "%s launch --gpus 2 -- " TRAIN " --out o --sp 2 --set "
                "s2attn.shift_mode=roll", BIN);
    cr_expect_eq(rc, 2, "%s", out);
    cr_expect(strstr(out, "shift_mode roll") && strstr(out, "s2attn.shift_mode=split"), "%s",
              out);
    free(out);
    rc = run_in(&out, "%s launch --gpus 8 -- " TRAIN " --out o --sp 8", BIN);
    cr_expect_eq(rc, 2, "%s", out);
    cr_expect(strstr(out, "--sp 8 at 512 tokens a sequence"), "%s", out);
    free(out);
    rc = run_in(&out, "%s " TRAIN " --out o --sp 2", BIN);
    cr_expect_eq(rc, 2, "%s", out);
    cr_expect(strstr(out, "sequence parallel needs several ranks"), "%s", out);
    free(out);
    rc = run_in(&out, "%s launch --gpus 2 -- " TRAIN " --out o --dp 1", BIN);
    cr_expect_eq(rc, 2, "%s", out);
    cr_expect(strstr(out, "--dp 1 x --sp 1 is 1 rank, but the world has 2"), "%s", out);
    free(out);
    rc = run_in(&out, "%s " TRAIN " --out o --dp 0", BIN);
    cr_expect_eq(rc, 2, "%s", out);
    free(out);
    rc = run_in(&out, "%s " TRAIN " --out o --rendezvous file:x", BIN);
    cr_expect_eq(rc, 2, "%s", out);
    cr_expect(strstr(out, "--rendezvous: this process is a world of one"), "%s", out);
    free(out);
}

/* Two ranks started by hand (as srun or mpirun would) that differ: both refuse, naming the
 * part and showing both ranks' values. */
static void two_ranks(char **out, const char *args0, const char *args1)
{
    const int rc = run_in(out, "export WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 "
                          "S2LORA_RENDEZVOUS=file:%s/rdzv S2LORA_RENDEZVOUS_TIMEOUT=20; "
                          "(RANK=0 LOCAL_RANK=0 %s " TRAIN " %s; echo rank0=$?) & "
                          "(RANK=1 LOCAL_RANK=1 %s " TRAIN " %s; echo rank1=$?); wait",
                          dir, BIN, args0, BIN, args1);
    cr_expect_eq(rc, 0, "%s", *out);
}

/* The same, each rank naming its own --data (an option is given once). */
static void two_ranks_data(char **out, const char *args0, const char *args1)
{
    const int rc = run_in(out, "export WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 "
                          "S2LORA_RENDEZVOUS=file:%s/rdzv S2LORA_RENDEZVOUS_TIMEOUT=20; "
                          "(RANK=0 LOCAL_RANK=0 %s " TRAIN_NO_DATA " %s; echo rank0=$?) & "
                          "(RANK=1 LOCAL_RANK=1 %s " TRAIN_NO_DATA " %s; echo rank1=$?); wait",
                          dir, BIN, args0, BIN, args1);
    cr_expect_eq(rc, 0, "%s", *out);
}

Test(train_dp, ranks_that_differ_refuse_each_other)
{
    make_inputs();
    char *out;
    two_ranks(&out, "--out o --lr 1e-4", "--out o --lr 2e-4");
    cr_expect(strstr(out, "rank0=1") && strstr(out, "rank1=1"), "%s", out);
    cr_expect(strstr(out, "rank 1 differs from rank 0 in optimizer: rank 1 runs 'lr=0.0002 ") &&
              strstr(out, "rank 0 runs 'lr=0.0001 "), "%s", out);
    free(out);
    two_ranks(&out, "--out o --grad-accum 2", "--out o --grad-accum 3");
    cr_expect(strstr(out, "rank0=1") && strstr(out, "rank1=1"), "%s", out);
    cr_expect(strstr(out, "differs from rank 0 in options") &&
              strstr(out, "grad_accum=3 batch=1 global_batch=6"), "%s", out);
    free(out);
    /* the same global batch grouped otherwise: the same sequences a step, but not the same run */
    two_ranks(&out, "--out o --grad-accum 4", "--out o --grad-accum 1 --batch 4");
    cr_expect(strstr(out, "rank0=1") && strstr(out, "rank1=1"), "%s", out);
    cr_expect(strstr(out, "differs from rank 0 in options") &&
              strstr(out, "grad_accum=1 batch=4 global_batch=8"), "%s", out);
    free(out);
    /* other tokens: the data part (their paths may differ, their tokens may not) */
    char args[256];
    snprintf(args, sizeof args, "--out o --data %s/b.tokens", dir);
    two_ranks_data(&out, "--out o --data a.tokens", args);
    cr_expect(strstr(out, "rank0=1") && strstr(out, "rank1=1"), "%s", out);
    cr_expect(strstr(out, "differs from rank 0 in data"), "%s", out);
    free(out);
    /* the same everything but their output directories: they meet (then no GPU: 3) */
    two_ranks(&out, "--out o0", "--out o1");
    cr_expect(strstr(out, "rank0=3") && strstr(out, "rank1=3"), "%s", out);
    cr_expect(strstr(out, "s2lora: rank 0 of 2: 2 ranks met") &&
              strstr(out, "s2lora (rank 1): rank 1 of 2: 2 ranks met"), "%s", out);
    free(out);
}

/* A state of global batch 16 in DIR/sub/state (a real state file: tensors and all). */
static void make_state(const char *sub, uint64_t global_batch, uint64_t step)
{
    s2_train_state s = {0};
    s.step = step;
    s.data_position = step * global_batch;
    s.global_batch = global_batch;
    s.data_seed = 42;
    /* the spec TRAIN runs: a --resume of another spec's state is refused before any rank meets */
    s2_spec spec;
    s2_error serr = {0};
    cr_assert_eq(s2_spec_load(TINY, NULL, 0, &spec, &serr), S2_OK, "%s", serr.msg);
    s.spec_sha256 = strdup(spec.hash_hex);
    const int64_t shape[1] = {4};
    cr_assert_eq(s2_state_add_tensor(&s, "model.norm.weight", 1, shape, NULL, NULL), S2_OK);
    char path[256];
    snprintf(path, sizeof path, "%s/%s/state", dir, sub);
    s2_error err = {0};
    cr_assert_eq(s2_state_save(path, &s, 2, &err), S2_OK, "%s", err.msg);
    s2_state_free(&s);
}

Test(train_dp, resume_at_another_world_size)
{
    make_inputs();
    make_state("o", 16, 3);
    char *out;
    /* 3 ranks cannot keep 16 */
    int rc = run_in(&out, "%s launch --gpus 3 -- " TRAIN " --out o --resume", BIN);
    cr_expect_eq(rc, 2, "%s", out);
    cr_expect(strstr(out, "--resume from o/state/state-0000000003.safetensors: the state was "
                          "trained with a global batch of 16 sequences a step") &&
              strstr(out, "--gpus 2 --grad-accum 8, --gpus 4 --grad-accum 4"), "%s", out);
    free(out);
    /* a --grad-accum that would change it */
    rc = run_in(&out, "%s launch --gpus 2 -- " TRAIN " --out o --resume --grad-accum 4", BIN);
    cr_expect_eq(rc, 2, "%s", out);
    cr_expect(strstr(out, "2 ranks x --grad-accum 4 x --batch 1 = 8"), "%s", out);
    free(out);
    /* 2 ranks: 8 micro-batches each, derived; they agree on the state, then no GPU */
    rc = run_in(&out, "%s launch --gpus 2 -- " TRAIN " --out o --resume", BIN);
    cr_expect_eq(rc, 3, "%s", out);
    cr_expect(strstr(out, "--grad-accum 8: the resumed state's global batch of 16 sequences "
                          "over 2 ranks") && strstr(out, "2 ranks met"), "%s", out);
    free(out);
    /* one GPU, no launcher: 16 */
    rc = run_in(&out, "%s " TRAIN " --out o --resume", BIN);
    cr_expect_eq(rc, 3, "%s", out);
    cr_expect(strstr(out, "--grad-accum 16: the resumed state's global batch of 16 sequences "
                          "over 1 rank"), "%s", out);
    free(out);
    /* --batch 4 keeps the state's 16 sequences a step in 4 micro-batches, --batch 3 cannot;
     * a sequence-parallel micro-batch is one sequence */
    const struct {
        const char *args;
        int rc;
        const char *want;
    } batch[] = {
        {" " TRAIN " --out o --resume --batch 4", 3,
         "--grad-accum 4: the resumed state's global batch of 16 sequences over 1 rank x "
         "--batch 4"},
        {" " TRAIN " --out o --resume --batch 3", 2, "--batch 3 does not divide it"},
        {" launch --gpus 2 -- " TRAIN " --out o2 --sp 2 --batch 2", 2,
         "--batch 2 with --sp 2: a sequence-parallel micro-batch is one sequence"},
    };
    for (size_t i = 0; i < sizeof batch / sizeof batch[0]; i++) {
        rc = run_in(&out, "%s%s", BIN, batch[i].args);
        cr_expect_eq(rc, batch[i].rc, "%s: %s", batch[i].args, out);
        cr_expect(strstr(out, batch[i].want), "%s: %s", batch[i].args, out);
        free(out);
    }
    /* ranks that would resume different states refuse: rank 1's directory has none */
    two_ranks(&out, "--out o --resume", "--out o1 --resume --grad-accum 8");
    cr_expect(strstr(out, "rank0=1") && strstr(out, "rank1=1"), "%s", out);
    cr_expect(strstr(out, "differs from rank 0 in resume") &&
              strstr(out, "a fresh start (no state resumed)") &&
              strstr(out, "resume state-0000000003.safetensors (step 3, data position 48)"),
              "%s", out);
    free(out);
}

/*
 * test_cli.c — the s2lora binary as a user runs it: help, exit codes, spec
 * errors with positions, gen/build output, and the input checks of attn, train,
 * eval and logits. Runs the built binary in a child process; on a machine
 * without a GPU, these commands on valid inputs must end with exit code 3 and
 * one clear message, and on a bad file with exit code 1 naming it, before any
 * device is asked for.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gen/plan.h"
#include "runtime/core/st.h"
#include "runtime/core/train_io.h"
#include "runtime/train/train_state.h"
#include "run_cmd.h"
#include "tmpdir.h"

#define BIN S2_BINARY_DIR "/s2lora"

static int run_fmt(char **out, const char *fmt, const char *a, const char *b)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, fmt, a, b);
    return run(cmd, out);
}

Test(cli, help_and_usage)
{
    char *out;
    cr_expect_eq(run(BIN " --help", &out), 0);
    cr_expect(strstr(out, "commands:"), "%s", out);
    free(out);
    const char *cmds[] = {"gen", "build", "attn", "train", "eval", "logits", "init"};
    for (int i = 0; i < (int)(sizeof cmds / sizeof cmds[0]); i++) {
        char cmd[512];
        snprintf(cmd, sizeof cmd, BIN " %s --help", cmds[i]);
        cr_expect_eq(run(cmd, &out), 0, "%s", cmd);
        cr_expect(strstr(out, "usage: s2lora"), "%s", out);
        free(out);
    }
    cr_expect_eq(run(BIN " frobnicate", &out), 2);
    cr_expect(strstr(out, "unknown command 'frobnicate'"), "%s", out);
    free(out);
    cr_expect_eq(run(BIN " build", &out), 2);
    cr_expect(strstr(out, "missing SPEC"), "%s", out);
    free(out);
    cr_expect_eq(run(BIN " build x.yaml --bogus 1", &out), 2);
    cr_expect(strstr(out, "unknown option '--bogus'"), "%s", out);
    free(out);
}

Test(cli, spec_errors_name_file_line_column)
{
    char *out;
    int rc = run_fmt(&out, "%s gen %s/tests/specs_bad/unknown_key.yaml -o /tmp/s2cli-never", BIN,
                     S2_SOURCE_DIR);
    cr_expect_eq(rc, 1);
    cr_expect(strstr(out, "unknown_key.yaml:"), "%s", out);
    cr_expect(strstr(out, "did you mean"), "%s", out);
    free(out);
    rc = run_fmt(&out, "%s build %s/specs/llama2-7b-8k.yaml --set s2attn.group_szie=2048", BIN,
                 S2_SOURCE_DIR);
    cr_expect_eq(rc, 1);
    cr_expect(strstr(out, "--set s2attn.group_szie=2048: error:"), "%s", out);
    cr_expect(strstr(out, "group_size"), "%s", out);
    free(out);
}

/* Values that pass as 32-bit ints but not the kernels' ranges, and a combination the launch
 * grids cannot hold, end gen with exit 1 and the spec's position; nothing is written. */
Test(cli, gen_refuses_out_of_range_values_with_their_position)
{
    char dir[] = "/tmp/s2cli.XXXXXX";
    cr_assert(mkdtemp(dir));
    char *out;
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s gen %s/tests/specs_bad/hidden_overflow.yaml -o %s/a", BIN,
             S2_SOURCE_DIR, dir);
    cr_expect_eq(run(cmd, &out), 1, "%s", out);
    cr_expect(strstr(out, "hidden_overflow.yaml:5:16: error: model.hidden_size = 2147483647 is "
                          "out of range: valid 1..65536"), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s gen %s/specs/tiny-byte-512.yaml --set s2attn.softmax_scale=1e300 "
             "-o %s/b", BIN, S2_SOURCE_DIR, dir);
    cr_expect_eq(run(cmd, &out), 1, "%s", out);
    cr_expect(strstr(out, "--set s2attn.softmax_scale=1e300: error: s2attn.softmax_scale = 1e300 "
                          "is out of range"), "%s", out);
    free(out);
    snprintf(cmd, sizeof cmd, "%s gen %s/tests/specs_bad/seqlen_heads.yaml --arch sm_80 -o %s/c",
             BIN, S2_SOURCE_DIR, dir);
    cr_expect_eq(run(cmd, &out), 1, "%s", out);
    cr_expect(strstr(out, "seqlen_heads.yaml:5:17: error: context_length = 16777216 with "
                          "model.num_heads = 1024"), "%s", out);
    free(out);
    char path[2100];
    snprintf(path, sizeof path, "%s/a", dir);
    cr_expect_neq(access(path, F_OK), 0, "nothing written for a refused spec");
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_expect_eq(system(cmd), 0);
}

Test(cli, gen_writes_sources_with_banner)
{
    char dir[] = "/tmp/s2cli.XXXXXX";
    cr_assert(mkdtemp(dir));
    char *out;
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s gen %s/specs/llama2-70b-32k.yaml --set s2attn.shift_mode=roll -o %s",
             BIN, S2_SOURCE_DIR, dir);
    cr_assert_eq(run(cmd, &out), 0, "%s", out);
    free(out);
    char path[2048];
    snprintf(path, sizeof path, "%s/llama2-70b-32k.attn_fwd.cu", dir);
    char *src = NULL;
    cr_assert_eq(s2_read_file(path, &src, NULL, NULL), S2_OK);
    cr_expect(strstr(src, "from spec 'llama2-70b-32k'"));
    cr_expect(strstr(src, "#define S2_NUM_KV_HEADS 8\n"));
    cr_expect(strstr(src, "#define S2_SHIFT_ROT 4096\n"), "the --set reached the source");
    free(src);
}

/* The row of kernel in build's table, split into its words; returns how many. */
static int build_row(const char *out, const char *kernel, char words[12][64])
{
    char key[80];
    snprintf(key, sizeof key, " %s ", kernel);
    const char *p = strstr(out, key);
    cr_assert(p, "no row for %s in: %s", kernel, out);
    while (p > out && p[-1] != '\n')
        p--;
    int n = 0;
    for (const char *q = p; *q && *q != '\n' && n < 12;) {
        size_t len = strcspn(q, " \n");
        if (len) {
            snprintf(words[n++], 64, "%.*s", (int)len, q);
            q += len;
        } else {
            q++;
        }
    }
    return n;
}

Test(cli, build_prints_resources, .timeout = 120)
{
    char *out;
    const char *spec_path = S2_SOURCE_DIR "/specs/tiny-byte-512.yaml";
    int rc = run_fmt(&out, "%s build %s --arch sm_80", BIN, spec_path);
    cr_expect_eq(rc, 0, "%s", out);
    cr_expect(strstr(out, "s2_attn_fwd"), "%s", out);
    cr_expect(strstr(out, "s2_attn_bwd_dkdv"), "%s", out);
    cr_expect(strstr(out, "spill"), "%s", out);
    free(out);
    /* again: every unit from the cache, said in the summary with the cache and what is next */
    rc = run_fmt(&out, "%s build %s --arch sm_80", BIN, spec_path);
    cr_expect_eq(rc, 0, "%s", out);
    cr_expect(strstr(out, ": 0 unit(s) built, 3 from the cache, "), "%s", out);
    cr_expect(strstr(out, " kernels, no spills\n"), "%s", out);
    cr_expect(strstr(out, "\ncache: " S2_BINARY_DIR "/test-cache\n") || strstr(out, "\ncache: /"),
              "%s", out);
    char next[1200];
    snprintf(next, sizeof next, "next: s2lora tune %s", spec_path);
    cr_expect(strstr(out, next), "%s", out);
    /* dynamic shared memory beside the static, as the plan launches each kernel */
    cr_expect(strstr(out, " smem dyn_smem "), "%s", out);
    s2_spec spec;
    s2_attn_plan plan;
    cr_assert_eq(s2_spec_load(spec_path, NULL, 0, &spec, NULL), S2_OK);
    cr_assert_eq(s2_plan_attn(&spec, "sm_80", NULL, &plan, NULL), S2_OK);
    char w[12][64];
    /* arch unit kernel regs smem dyn_smem stack spill cache unit_ms: the unit's first kernel */
    cr_assert_eq(build_row(out, "s2_attn_fwd", w), 10, "%s", out);
    cr_expect_eq(atoi(w[5]), plan.smem_fwd, "fwd dyn_smem %s", w[5]);
    cr_expect_str_eq(w[8], "hit");
    cr_assert_gt(plan.smem_dkdv, 0);
    /* the backward unit's time once: its first kernel's row has it, the others not */
    const char *const *names;
    int nk = s2_attn_unit_kernels(S2_UNIT_ATTN_BWD, &names);
    cr_assert_gt(nk, 1);
    int with_time = 0;
    for (int k = 0; k < nk; k++) {
        int n = build_row(out, names[k], w);
        cr_expect(n == 10 || n == 8, "%s: %d words", names[k], n);
        with_time += n == 10;
        if (!strcmp(names[k], "s2_attn_bwd_dkdv"))
            cr_expect_eq(atoi(w[5]), plan.smem_dkdv, "dkdv dyn_smem %s", w[5]);
        if (!strcmp(names[k], "s2_attn_bwd_pre"))
            cr_expect_eq(atoi(w[5]), 0);
    }
    cr_expect_eq(with_time, 1, "%s", out);
    free(out);
}

/* --tile: a refusal names the keys given and lists the valid ones. */
Test(cli, tile_errors_name_the_keys_given, .timeout = 60)
{
    char *out;
    int rc = run_fmt(&out, "%s build %s/specs/tiny-byte-512.yaml --arch sm_80 --tile "
                     "fwd_warps=4,fwd_blok_n=64", BIN, S2_SOURCE_DIR);
    cr_expect_eq(rc, 1, "%s", out);
    cr_expect(strstr(out, "unknown key 'fwd_blok_n'"), "%s", out);
    cr_expect(strstr(out, "(you set fwd_warps, fwd_blok_n; valid keys: fwd_warps, "), "%s", out);
    free(out);
    rc = run_fmt(&out, "%s build %s/specs/tiny-byte-512.yaml --arch sm_80 --tile "
                 "fwd_block_n=64,bwd_stages=9", BIN, S2_SOURCE_DIR);
    cr_expect_eq(rc, 1, "%s", out);
    cr_expect(strstr(out, "you set fwd_block_n, bwd_stages; valid keys:"), "%s", out);
    free(out);
}

/* Writes q/k/v (and do) of the given shapes for the tiny spec (H=4, Hkv=4, d=64, bf16). */
static void write_inputs(const char *path, int T, int kv_heads, int with_do)
{
    size_t nq = (size_t)T * 4 * 64, nk = (size_t)T * kv_heads * 64;
    uint16_t *q = calloc(nq, 2), *k = calloc(nk, 2);
    for (size_t i = 0; i < nq; i++)
        q[i] = s2_f32_to_bf16((float)(i % 7) - 3.0f);
    for (size_t i = 0; i < nk; i++)
        k[i] = s2_f32_to_bf16((float)(i % 5) - 2.0f);
    s2_tensor t[4] = {
        {.name = "q", .dtype = S2_ST_BF16, .ndim = 3, .shape = {T, 4, 64}, .data = q, .nbytes = nq * 2},
        {.name = "k", .dtype = S2_ST_BF16, .ndim = 3, .shape = {T, kv_heads, 64}, .data = k, .nbytes = nk * 2},
        {.name = "v", .dtype = S2_ST_BF16, .ndim = 3, .shape = {T, kv_heads, 64}, .data = k, .nbytes = nk * 2},
        {.name = "do", .dtype = S2_ST_BF16, .ndim = 3, .shape = {T, 4, 64}, .data = q, .nbytes = nq * 2},
    };
    s2_error err = {0};
    cr_assert_eq(s2_st_write(path, t, with_do ? 4 : 3, NULL, NULL, 0, &err), S2_OK, "%s", err.msg);
    free(q);
    free(k);
}

Test(cli, attn_checks_shapes_before_the_device, .timeout = 120)
{
    char dir[] = "/tmp/s2cli.XXXXXX";
    cr_assert(mkdtemp(dir));
    char in[1024], outp[1024], spec[1024], cmd[4096];
    snprintf(in, sizeof in, "%s/in.safetensors", dir);
    snprintf(outp, sizeof outp, "%s/out.safetensors", dir);
    snprintf(spec, sizeof spec, "%s/specs/tiny-byte-512.yaml", S2_SOURCE_DIR);
    char *out;

    write_inputs(in, 100, 2, 0); /* k/v with 2 heads; the spec says 4 */
    snprintf(cmd, sizeof cmd, "%s attn --spec %s --in %s --out %s", BIN, spec, in, outp);
    cr_expect_eq(run(cmd, &out), 1, "%s", out);
    cr_expect(strstr(out, "tensor 'k' has shape [100, 2, 64]; expected [100, 4, 64]"), "%s", out);
    free(out);

    write_inputs(in, 100, 4, 0); /* --backward without do */
    snprintf(cmd, sizeof cmd, "%s attn --spec %s --in %s --out %s --backward", BIN, spec, in, outp);
    cr_expect_eq(run(cmd, &out), 1, "%s", out);
    cr_expect(strstr(out, "missing tensor 'do'"), "%s", out);
    free(out);

    snprintf(cmd, sizeof cmd, "%s attn --spec %s --in %s --out %s --set model.head_dim=128", BIN,
             spec, in, outp);
    cr_expect_eq(run(cmd, &out), 1, "%s", out);
    cr_expect(strstr(out, "tensor 'q' has shape [100, 4, 64]; expected [100, 4, 128]"), "%s", out);
    free(out);

    /* Valid inputs: the outputs on a GPU; without one, exit code 3 and one clear line. */
    write_inputs(in, 100, 4, 1);
    snprintf(cmd, sizeof cmd, "%s attn --spec %s --in %s --out %s --backward", BIN, spec, in, outp);
    int rc = run(cmd, &out);
    cr_expect(rc == 0 || rc == 3, "exit %d: %s", rc, out);
    if (rc == 3) {
        cr_expect(strstr(out, "no CUDA device"), "%s", out);
    } else if (rc == 0) {
        s2_st_file f;
        cr_assert_eq(s2_st_read(outp, &f, NULL), S2_OK);
        const char *names[] = {"o", "lse", "dq", "dk", "dv"};
        for (int i = 0; i < 5; i++)
            cr_expect(s2_st_find(&f, names[i]), "output %s", names[i]);
        s2_st_close(&f);
    }
    free(out);
}

Test(cli, data_bytes_round_trip)
{
    char dir[] = "/tmp/s2cli.XXXXXX";
    cr_assert(mkdtemp(dir));
    char txt[1024], out[1024], cmd[4096];
    snprintf(txt, sizeof txt, "%s/a.txt", dir);
    snprintf(out, sizeof out, "%s/a.tokens", dir);
    FILE *f = fopen(txt, "w");
    cr_assert(f);
    fputs("long context", f);
    fclose(f);
    char *o;
    snprintf(cmd, sizeof cmd, "%s data --bytes %s -o %s", BIN, txt, out);
    cr_expect_eq(run(cmd, &o), 0, "%s", o);
    cr_expect(strstr(o, "14 tokens in 1 documents, vocab 264"), "BOS + 12 bytes + EOS: %s", o);
    free(o);
    snprintf(cmd, sizeof cmd, "%s data %s -o %s", BIN, txt, out);
    cr_expect_eq(run(cmd, &o), 2);
    cr_expect(strstr(o, "--bytes"), "%s", o);
    free(o);
}

/* train, eval and logits: usage errors are caught before any file or device is touched; with
 * valid arguments and no GPU the command ends with exit code 3 and says why. */
Test(cli, train_eval_logits_usage)
{
    char *out; /* (their --help: help_and_usage) */
    cr_expect_eq(run(BIN " train x.yaml --model m --data d", &out), 2);
    cr_expect(strstr(out, "missing --out DIR"), "%s", out);
    free(out);
    cr_expect_eq(run(BIN " train x.yaml --model m --data d --out o --schedule linear", &out), 2);
    cr_expect(strstr(out, "--schedule: \"linear\" is not one of: constant, cosine"), "%s", out);
    free(out);
    cr_expect_eq(run(BIN " train x.yaml --model m --data d --out o --recompute some", &out), 2);
    cr_expect(strstr(out, "--recompute: \"some\" is not one of: auto, layer, mlp"), "%s", out);
    free(out);
    cr_expect_eq(run(BIN " train x.yaml --model m --data d --out o --lr -1", &out), 2);
    cr_expect(strstr(out, "--lr: \"-1\" is not a number >= 0"), "%s", out);
    free(out);
    cr_expect_eq(run(BIN " train x.yaml --model m --data d --out o --steps 1e3", &out), 2);
    cr_expect(strstr(out, "--steps: \"1e3\" is not an integer >= 0"), "%s", out);
    free(out);
    cr_expect_eq(run(BIN " eval x.yaml --model m --data d --trainable t", &out), 2);
    cr_expect(strstr(out, "--trainable goes with --adapter"), "%s", out);
    free(out);
    cr_expect_eq(run(BIN " logits x.yaml --model m --tokens t --frob", &out), 2);
    cr_expect(strstr(out, "unknown option '--frob'"), "%s", out);
    free(out);
    cr_expect_eq(run(BIN " eval a.yaml b.yaml --model m --data d", &out), 2);
    cr_expect(strstr(out, "one SPEC only"), "%s", out);
    free(out);
}

/* A spec path naming a device, a FIFO, a directory or a huge file: refused at once, saying
 * which and why (the timeout fails the test if a read blocks or runs on). */
Test(cli, gen_refuses_special_and_huge_specs, .timeout = 30)
{
    char dir[] = "/tmp/s2cli.XXXXXX";
    cr_assert(mkdtemp(dir));
    char fifo[128], big[128], cmd[1024], *out;
    snprintf(fifo, sizeof fifo, "%s/spec.yaml", dir);
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    snprintf(big, sizeof big, "%s/big.yaml", dir);
    FILE *f = fopen(big, "w");
    cr_assert(f);
    cr_assert_eq(ftruncate(fileno(f), (off_t)2 << 20), 0); /* 2 MiB of holes */
    fclose(f);
    const char *paths[] = {"/dev/zero", fifo, dir, big};
    const char *what[] = {"/dev/zero: is a character device", "spec.yaml: is a FIFO",
                          "is a directory", "big.yaml: 2097152 bytes, over the 1048576-byte "
                          "limit for a spec"};
    for (int i = 0; i < 4; i++) {
        snprintf(cmd, sizeof cmd, "%s gen %s -o %s/D", BIN, paths[i], dir);
        cr_expect_eq(run(cmd, &out), 1, "%s: %s", cmd, out);
        cr_expect(strstr(out, what[i]), "%s: %s", cmd, out);
        free(out);
    }
    s2_test_rmtree(dir);
}

/* ---- train, eval and logits read and check every file before asking for a GPU ------------ */

typedef struct files {
    char dir[32];
    char spec[1024];
    char model[128];   /* s2lora init */
    char tokens[128];  /* s2lora data: byte-level, about 7000 tokens */
    char logits[128];  /* "tokens" I32 [64] for logits */
    char text[128];    /* not a token file */
    char out[128];     /* not created */
} files;

static void cmd_ok(const char *cmd)
{
    char *out;
    cr_assert_eq(run(cmd, &out), 0, "%s: %s", cmd, out);
    free(out);
}

/* tune --build-only times nothing: the options of a timing run are refused, never dropped. The
 * LoRA kernels build nothing offline, so only the refusal can end the run early. */
Test(cli, tune_build_only_refuses_timing_options)
{
    const char *opts[] = {"--db /tmp/s2cli-db-never", "--import /tmp/s2cli-never.jsonl",
                          "--export /tmp/s2cli-export-never.jsonl", "--seqlens 4096",
                          "--budget 5"};
    const char *names[] = {"--db", "--import", "--export", "--seqlens", "--budget"};
    for (int i = 0; i < 5; i++) {
        char cmd[2048], want[128];
        snprintf(cmd, sizeof cmd, "%s tune %s/specs/tiny-byte-512.yaml --kernels lora --arch sm_80 "
                 "--build-only %s", BIN, S2_SOURCE_DIR, opts[i]);
        char *out;
        cr_expect_eq(run(cmd, &out), 2, "%s: %s", opts[i], out);
        snprintf(want, sizeof want, "s2lora: tune: %s does not go with --build-only", names[i]);
        cr_expect(strstr(out, want), "%s", out);
        cr_expect(strstr(out, "times nothing"), "%s", out);
        free(out);
    }
    cr_expect_neq(access("/tmp/s2cli-export-never.jsonl", F_OK), 0, "--export wrote a file");
}

static void make_files(files *f)
{
    snprintf(f->dir, sizeof f->dir, "/tmp/s2cli.XXXXXX");
    cr_assert(mkdtemp(f->dir));
    snprintf(f->spec, sizeof f->spec, "%s/specs/tiny-byte-512.yaml", S2_SOURCE_DIR);
    snprintf(f->model, sizeof f->model, "%s/M", f->dir);
    snprintf(f->tokens, sizeof f->tokens, "%s/d.tokens", f->dir);
    snprintf(f->logits, sizeof f->logits, "%s/x.safetensors", f->dir);
    snprintf(f->text, sizeof f->text, "%s/a.txt", f->dir);
    snprintf(f->out, sizeof f->out, "%s/O", f->dir);
    FILE *t = fopen(f->text, "w");
    cr_assert(t);
    for (int i = 0; i < 100; i++)
        fputs("A long context is a context longer than the one a model was trained at. ", t);
    fclose(t);
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s init %s -o %s", BIN, f->spec, f->model);
    cmd_ok(cmd);
    snprintf(cmd, sizeof cmd, "%s data --bytes %s -o %s", BIN, f->text, f->tokens);
    cmd_ok(cmd);
    int32_t tok[64];
    for (int i = 0; i < 64; i++)
        tok[i] = 8 + 'a' + i % 26;
    s2_tensor x = {.name = "tokens", .dtype = S2_ST_I32, .ndim = 1, .shape = {64}, .data = tok,
                   .nbytes = sizeof tok};
    s2_error err = {0};
    cr_assert_eq(s2_st_write(f->logits, &x, 1, NULL, NULL, 0, &err), S2_OK, "%s", err.msg);
}

/* The three commands on model dir `model` (data/tokens and extra options as given; 64 tokens
 * a sequence unless extra says --seqlens: an option is given once). */
static const char *seqlens(const char *extra)
{
    return strstr(extra, "--seqlens") ? "" : "--seqlens 64";
}

static int run_train(const files *f, const char *model, const char *data, const char *extra,
                     char **out)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s train %s --model %s --data %s --out %s %s --steps 1 %s",
             BIN, f->spec, model, data, f->out, seqlens(extra), extra);
    return run(cmd, out);
}

static int run_eval(const files *f, const char *model, const char *data, const char *extra,
                    char **out)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s eval %s --model %s --data %s %s %s", BIN, f->spec,
             model, data, seqlens(extra), extra);
    return run(cmd, out);
}

static int run_logits(const files *f, const char *model, const char *tokens, const char *extra,
                      char **out)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s logits %s --model %s --tokens %s -o %s/L.safetensors %s", BIN,
             f->spec, model, tokens, f->dir, extra);
    return run(cmd, out);
}

/* rc and every phrase in the output. */
/* (out is passed by address: it is set by the call that gives rc, evaluated alongside.) */
static void expect_run(int rc, char **outp, int want, const char *what, const char *p1,
                       const char *p2)
{
    char *out = *outp;
    cr_expect_eq(rc, want, "%s: exit %d: %s", what, rc, out);
    cr_expect(strstr(out, p1), "%s: '%s' not in: %s", what, p1, out);
    cr_expect(!p2 || strstr(out, p2), "%s: '%s' not in: %s", what, p2, out);
    free(out);
}

/* All three on the same bad model: exit 1 naming the file, never 3. */
static void expect_bad_model(const files *f, const char *model, const char *p1, const char *p2)
{
    char *out;
    expect_run(run_train(f, model, f->tokens, "", &out), &out, 1, "train", p1, p2);
    expect_run(run_eval(f, model, f->tokens, "", &out), &out, 1, "eval", p1, p2);
    expect_run(run_logits(f, model, f->logits, "", &out), &out, 1, "logits", p1, p2);
}

Test(cli, train_eval_logits_check_files_before_the_device, .timeout = 120)
{
    files f;
    make_files(&f);
    char *out, path[256], cmd[1024];

    /* Valid files reach the device: without one, exit 3 and nothing created. */
    expect_run(run_train(&f, f.model, f.tokens, "", &out), &out, 3, "train", "no CUDA device",
               NULL);
    cr_expect_eq(access(f.out, F_OK), -1, "the output directory is not created before the "
                 "device is opened");
    expect_run(run_eval(&f, f.model, f.tokens, "", &out), &out, 3, "eval", "no CUDA device", NULL);
    expect_run(run_logits(&f, f.model, f.logits, "", &out), &out, 3, "logits", "no CUDA device",
               NULL);

    /* A model directory without config.json, and one whose config.json disagrees. */
    expect_bad_model(&f, "/nonexistent", "/nonexistent/config.json", "No such file or directory");
    snprintf(path, sizeof path, "%s/B", f.dir);
    snprintf(cmd, sizeof cmd, "cp -r %s %s && sed -i 's/\"hidden_size\": 256/\"hidden_size\": "
             "128/' %s/config.json", f.model, path, path);
    cmd_ok(cmd);
    expect_bad_model(&f, path, "B/config.json", "hidden_size = 128, spec model.hidden_size = 256");

    /* A checkpoint missing a tensor (checked from its header; the data is never read). */
    snprintf(path, sizeof path, "%s/model.safetensors", f.model);
    s2_st_file m;
    s2_error err = {0};
    cr_assert_eq(s2_st_read(path, &m, &err), S2_OK, "%s", err.msg);
    const s2_tensor *up = s2_st_find(&m, "model.layers.1.mlp.up_proj.weight");
    cr_assert(up);
    s2_tensor *kept = calloc((size_t)m.n, sizeof *kept);
    int k = 0;
    for (int i = 0; i < m.n; i++)
        if (&m.t[i] != up)
            kept[k++] = m.t[i];
    snprintf(path, sizeof path, "%s/C", f.dir);
    cr_assert_eq(mkdir(path, 0755), 0);
    snprintf(cmd, sizeof cmd, "cp %s/config.json %s/", f.model, path);
    cmd_ok(cmd);
    snprintf(path, sizeof path, "%s/C/model.safetensors", f.dir);
    cr_assert_eq(s2_st_write(path, kept, k, NULL, NULL, 0, &err), S2_OK, "%s", err.msg);
    free(kept);
    s2_st_close(&m);
    snprintf(path, sizeof path, "%s/C", f.dir);
    expect_bad_model(&f, path, "C/model.safetensors",
                     "missing tensor 'model.layers.1.mlp.up_proj.weight'");

    /* Token files: not a token file, a device, too short for a window; logits' tokens. */
    expect_run(run_train(&f, f.model, f.text, "", &out), &out, 1, "train", "a.txt",
               "not an s2lora token file");
    expect_run(run_eval(&f, f.model, f.text, "", &out), &out, 1, "eval", "a.txt",
               "not an s2lora token file");
    expect_run(run_train(&f, f.model, "/dev/zero", "", &out), &out, 1, "train",
               "/dev/zero: is a character device", NULL);
    expect_run(run_eval(&f, f.model, f.tokens, "--seqlens 100000", &out), &out, 1, "eval",
               "d.tokens", "a window needs 100001");
    expect_run(run_train(&f, f.model, f.tokens, "--seqlens 100000", &out), &out, 1, "train",
               "d.tokens", "pack into no sequence of 100000 tokens");
    expect_run(run_logits(&f, f.model, f.tokens, "", &out), &out, 1, "logits", "d.tokens", NULL);
    s2_test_rmtree(f.dir);
}

/* --resume: OUT/state's latest and the state it names are checked (with this spec); the
 * output directory must be one that can be written or created. */
Test(cli, train_checks_resume_and_outputs_before_the_device, .timeout = 120)
{
    files f;
    make_files(&f);
    char *out, path[256];
    s2_spec spec;
    s2_error err = {0};
    cr_assert_eq(s2_spec_load(f.spec, NULL, 0, &spec, &err), S2_OK, "%s", err.msg);
    snprintf(path, sizeof path, "%s/state", f.out);
    s2_train_state s = {.step = 3, .spec_sha256 = "0123456789abcdef"};
    cr_assert_eq(s2_state_save(path, &s, 1, &err), S2_OK, "%s", err.msg);
    expect_run(run_train(&f, f.model, f.tokens, "--resume", &out), &out, 1, "train",
               "the state was trained with spec 0123456789abcdef", spec.hash_hex);
    s.spec_sha256 = spec.hash_hex;
    s.step = 4;
    cr_assert_eq(s2_state_save(path, &s, 1, &err), S2_OK, "%s", err.msg);
    expect_run(run_train(&f, f.model, f.tokens, "--resume", &out), &out, 3, "train",
               "no CUDA device", NULL);
    snprintf(path, sizeof path, "%s/state/latest", f.out);
    FILE *l = fopen(path, "w");
    cr_assert(l);
    fputs("not a state\n", l);
    fclose(l);
    expect_run(run_train(&f, f.model, f.tokens, "--resume", &out), &out, 1, "train",
               "state/latest", "malformed");
    expect_run(run_train(&f, f.model, f.tokens, "", &out), &out, 3, "train",
               "no CUDA device", NULL); /* a fresh run does not read the old state */

    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s train %s --model %s --data %s --out %s/sub --seqlens 64", BIN,
             f.spec, f.model, f.tokens, f.text);
    expect_run(run(cmd, &out), &out, 1, "train", "a.txt: not a directory, so cannot create", NULL);
    snprintf(cmd, sizeof cmd, "%s logits %s --model %s --tokens %s -o %s", BIN, f.spec, f.model,
             f.logits, f.dir);
    expect_run(run(cmd, &out), &out, 1, "logits", "is not a regular file (a directory)", NULL);
    snprintf(cmd, sizeof cmd, "%s logits %s --model %s --tokens %s -o %s/no/L.safetensors", BIN,
             f.spec, f.model, f.logits, f.dir);
    expect_run(run(cmd, &out), &out, 1, "logits", "/no: No such file or directory", NULL);
    s2_test_rmtree(f.dir);
}

/* eval and logits with --adapter (and --trainable): their JSON and headers against the spec. */
Test(cli, eval_logits_check_adapters_before_the_device, .timeout = 120)
{
    files f;
    make_files(&f);
    char *out, ad[160], tr[160], extra[512];
    s2_spec spec;
    s2_error err = {0};
    cr_assert_eq(s2_spec_load(f.spec, NULL, 0, &spec, &err), S2_OK, "%s", err.msg);
    s2_lora_plan plan;
    s2_plan_lora(&spec, &plan);
    float *A[64] = {0}, *B[64] = {0};
    cr_assert(spec.model.num_layers * S2_PROJ_COUNT <= 64);
    for (int l = 0; l < spec.model.num_layers; l++)
        for (int p = 0; p < S2_PROJ_COUNT; p++)
            if (plan.lin[p].adapted) {
                A[S2_CKPT_SLOT(l, p)] = calloc((size_t)plan.rank * plan.lin[p].in, 4);
                B[S2_CKPT_SLOT(l, p)] = calloc((size_t)plan.lin[p].out * plan.rank, 4);
            }
    snprintf(ad, sizeof ad, "%s/adapter", f.dir);
    cr_assert_eq(s2_ckpt_save_adapter(ad, &spec, "", (const float *const *)A,
                                      (const float *const *)B, &err), S2_OK, "%s", err.msg);
    s2_ckpt_param *ps;
    int n;
    cr_assert_eq(s2_ckpt_trainable_params(&spec, &ps, &n, &err), S2_OK);
    float **data = calloc((size_t)n, sizeof *data);
    for (int i = 0; i < n; i++)
        data[i] = calloc((size_t)(ps[i].shape[0] * (ps[i].ndim == 2 ? ps[i].shape[1] : 1)), 4);
    snprintf(tr, sizeof tr, "%s/trainable.safetensors", f.dir);
    cr_assert_eq(s2_ckpt_save_trainable(tr, S2_ST_BF16, n, ps, (const float *const *)data, &err),
                 S2_OK, "%s", err.msg);

    snprintf(extra, sizeof extra, "--adapter %s --trainable %s", ad, tr);
    expect_run(run_eval(&f, f.model, f.tokens, extra, &out), &out, 3, "eval", "no CUDA device",
               NULL);
    expect_run(run_logits(&f, f.model, f.logits, extra, &out), &out, 3, "logits",
               "no CUDA device", NULL);
    snprintf(extra, sizeof extra, "--adapter %s --set lora.rank=16", ad);
    expect_run(run_eval(&f, f.model, f.tokens, extra, &out), &out, 1, "eval",
               "adapter/adapter_config.json: r = 8, spec lora.rank = 16", NULL);
    expect_run(run_logits(&f, f.model, f.logits, extra, &out), &out, 1, "logits",
               "adapter/adapter_config.json: r = 8", NULL);
    snprintf(extra, sizeof extra, "--adapter %s --trainable %s", ad, f.logits);
    expect_run(run_eval(&f, f.model, f.tokens, extra, &out), &out, 1, "eval", "x.safetensors",
               "missing tensor 'model.embed_tokens.weight'");
    snprintf(extra, sizeof extra, "--adapter %s", f.model);
    expect_run(run_logits(&f, f.model, f.logits, extra, &out), &out, 1, "logits",
               "M/adapter_config.json: cannot open: No such file or directory", NULL);
    for (int i = 0; i < 64; i++) {
        free(A[i]);
        free(B[i]);
    }
    for (int i = 0; i < n; i++)
        free(data[i]);
    free(data);
    free(ps);
    s2_test_rmtree(f.dir);
}

/* init writes into a new or empty directory only, unless --force. */
Test(cli, init_refuses_a_directory_that_holds_something, .timeout = 60)
{
    char dir[] = "/tmp/s2cli.XXXXXX";
    cr_assert(mkdtemp(dir));
    char cmd[2048], path[1100], *out;
    const char *spec = S2_SOURCE_DIR "/specs/tiny-byte-512.yaml";
    snprintf(cmd, sizeof cmd, "%s init %s -o %s", BIN, spec, dir); /* empty: fine */
    cr_expect_eq(run(cmd, &out), 0, "%s", out);
    cr_expect(strstr(out, "next: s2lora train"), "%s", out);
    free(out);
    cr_expect_eq(run(cmd, &out), 2, "%s", out); /* now it holds a model */
    cr_expect(strstr(out, "s2lora: init: "), "%s", out);
    cr_expect(strstr(out, "is not empty (it holds ") && strstr(out, "config.json") &&
              strstr(out, "model.safetensors"), "%s", out);
    cr_expect(strstr(out, "--force"), "%s", out);
    cr_expect(strstr(out, "usage: s2lora init SPEC"), "%s", out);
    free(out);
    snprintf(path, sizeof path, "%s/notes.txt", dir);
    FILE *f = fopen(path, "w");
    cr_assert(f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s init %s -o %s --seed 7 --force", BIN, spec, dir);
    cr_expect_eq(run(cmd, &out), 0, "%s", out);
    cr_expect(strstr(out, "(seed 7)"), "%s", out);
    free(out);
    cr_expect_eq(access(path, F_OK), 0, "--force leaves the other files");
    s2_test_rmtree(dir);
}

/* init's weights do not depend on the pool's width: one thread and three give the same bytes
 * (the tiny model's larger tensors span several of the fill's chunks). */
Test(cli, init_is_the_same_on_any_number_of_threads, .timeout = 60)
{
    char dir[] = "/tmp/s2cli.XXXXXX";
    cr_assert(mkdtemp(dir));
    char cmd[2048], pa[1100], pb[1100], *out;
    const char *spec = S2_SOURCE_DIR "/specs/tiny-byte-512.yaml";
    for (int k = 0; k < 2; k++) {
        snprintf(cmd, sizeof cmd, "S2LORA_THREADS=%d %s init %s -o %s/m%d --seed 5", k ? 3 : 1,
                 BIN, spec, dir, k);
        cr_expect_eq(run(cmd, &out), 0, "%s", out);
        free(out);
    }
    snprintf(pa, sizeof pa, "%s/m0/model.safetensors", dir);
    snprintf(pb, sizeof pb, "%s/m1/model.safetensors", dir);
    char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    cr_assert_eq(s2_read_file(pa, &a, &na, NULL), S2_OK);
    cr_assert_eq(s2_read_file(pb, &b, &nb, NULL), S2_OK);
    cr_expect(na > 1000000 && na == nb && memcmp(a, b, na) == 0, "%zu and %zu bytes", na, nb);
    free(a), free(b);
    s2_test_rmtree(dir);
}

/* A checkpoint extended already (rope_scaling factor 8: the tiny spec's own 4096 over 512)
 * trained at another factor: refused, naming the two ways out, and each of them works. */
Test(cli, train_rope_scaling_of_an_extended_checkpoint, .timeout = 120)
{
    files f;
    make_files(&f);
    char *out;
    /* 8192 tokens: factor 16 from 512, the checkpoint says 8 */
    expect_run(run_train(&f, f.model, f.tokens, "--set context_length=8192", &out), &out, 1,
               "train", "rope_scaling.factor = 8, spec rope_factor = 16", "--rope-scaling spec");
    expect_run(run_train(&f, f.model, f.tokens, "--set context_length=8192", &out), &out, 1,
               "train", "M/config.json", "--set context_length=4096");
    expect_run(run_eval(&f, f.model, f.tokens, "--set context_length=8192", &out), &out, 1,
               "eval", "rope_scaling.factor = 8", NULL);
    /* the flag: the spec's factor replaces the checkpoint's; checked, then the device */
    expect_run(run_train(&f, f.model, f.tokens, "--set context_length=8192 --rope-scaling spec",
                         &out), &out, 3, "train", "no CUDA device", NULL);
    expect_run(run_eval(&f, f.model, f.tokens, "--set context_length=8192 --rope-scaling spec",
                        &out), &out, 3, "eval", "no CUDA device", NULL);
    expect_run(run_logits(&f, f.model, f.logits, "--set context_length=8192 --rope-scaling spec",
                          &out), &out, 3, "logits", "no CUDA device", NULL);
    /* the spec key the message names keeps the checkpoint's factor */
    expect_run(run_train(&f, f.model, f.tokens, "--set context_length=4096", &out), &out, 3,
               "train", "no CUDA device", NULL);
    /* the flag's default is the check */
    expect_run(run_train(&f, f.model, f.tokens, "--set context_length=8192 --rope-scaling match",
                         &out), &out, 1, "train", "rope_scaling.factor = 8", NULL);
    s2_test_rmtree(f.dir);
}

/* A long job's progress: on a terminal one line redrawn with \r (here: build under script(1),
 * which gives it a pseudo-terminal); in a log or a pipe no \r ever (build_prints_resources). */
Test(cli, progress_is_one_redrawn_line_on_a_terminal, .timeout = 300)
{
    if (system("command -v script >/dev/null 2>&1") != 0)
        cr_skip_test("no script(1) for a pseudo-terminal");
    char *out;
    int rc = run_fmt(&out, "script -qec '%s build %s/specs/tiny-byte-512.yaml --arch sm_80 "
                     "--no-cache' /dev/null", BIN, S2_SOURCE_DIR);
    cr_expect_eq(rc, 0, "%s", out);
    cr_expect(strstr(out, "\r\033[Ks2lora: build: units: "), "no progress line: %s", out);
    cr_expect(strstr(out, "/3 ("), "%s", out);
    cr_expect(strstr(out, ": 3 unit(s) built, 0 from the cache"), "%s", out);
    free(out);
    rc = run_fmt(&out, "%s build %s/specs/tiny-byte-512.yaml --arch sm_80", BIN, S2_SOURCE_DIR);
    cr_expect_eq(rc, 0, "%s", out);
    cr_expect(!strchr(out, '\r'), "no \\r outside a terminal: %s", out);
    free(out);
}

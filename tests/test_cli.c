/*
 * test_cli.c — the s2lora binary as a user runs it: help, exit codes, spec
 * errors with positions, gen/build output, and attn's input checks. Runs the
 * built binary in a child process; on a machine without a GPU, attn on valid
 * inputs must end with exit code 3 and one clear message.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime/st.h"
#include "run_cmd.h"

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

Test(cli, build_prints_resources, .timeout = 120)
{
    char *out;
    int rc = run_fmt(&out, "%s build %s/specs/tiny-byte-512.yaml --arch sm_80", BIN, S2_SOURCE_DIR);
    cr_expect_eq(rc, 0, "%s", out);
    cr_expect(strstr(out, "s2_attn_fwd"), "%s", out);
    cr_expect(strstr(out, "s2_attn_bwd_dkdv"), "%s", out);
    cr_expect(strstr(out, "spill"), "%s", out);
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
    cr_expect(strstr(out, "--schedule: valid: constant, cosine; got linear"), "%s", out);
    free(out);
    cr_expect_eq(run(BIN " train x.yaml --model m --data d --out o --recompute some", &out), 2);
    cr_expect(strstr(out, "--recompute: valid: auto, layer, mlp; got some"), "%s", out);
    free(out);
    cr_expect_eq(run(BIN " train x.yaml --model m --data d --out o --lr -1", &out), 2);
    cr_expect(strstr(out, "--lr -1: expected a non-negative number"), "%s", out);
    free(out);
    cr_expect_eq(run(BIN " train x.yaml --model m --data d --out o --steps 1e3", &out), 2);
    cr_expect(strstr(out, "--steps 1e3: expected a non-negative integer"), "%s", out);
    free(out);
    cr_expect_eq(run(BIN " eval x.yaml --model m --data d --trainable t", &out), 2);
    cr_expect(strstr(out, "--trainable goes with --adapter"), "%s", out);
    free(out);
    cr_expect_eq(run(BIN " logits x.yaml --model m --tokens t --frob", &out), 2);
    cr_expect(strstr(out, "unknown option --frob"), "%s", out);
    free(out);
    cr_expect_eq(run(BIN " eval a.yaml b.yaml --model m --data d", &out), 2);
    cr_expect(strstr(out, "one SPEC only"), "%s", out);
    free(out);
}

Test(cli, train_without_a_gpu_exits_3)
{
    char *out;
    int rc = run_fmt(&out, "%s train %s/specs/tiny-byte-512.yaml --model /nonexistent --data "
                     "/nonexistent --out /tmp/s2cli-train-never", BIN, S2_SOURCE_DIR);
    cr_expect_eq(rc, 3, "%s", out);
    cr_expect(strstr(out, "no CUDA") || strstr(out, "CUDA device"), "%s", out);
    free(out);
    rc = run_fmt(&out, "%s train %s/specs/nonexistent.yaml --model m --data d --out o", BIN,
                 S2_SOURCE_DIR);
    cr_expect_eq(rc, 1, "%s", out);
    cr_expect(strstr(out, "nonexistent.yaml"), "%s", out);
    free(out);
}

/* tune --build-only times nothing: the options of a timing run are refused, never dropped. The
 * LoRA kernels build nothing offline, so only the refusal can end the run early. */
Test(cli, tune_build_only_refuses_timing_options)
{
    const char *opts[] = {"--db /tmp/s2cli-db-never", "--import /tmp/s2cli-never.jsonl",
                          "--export /tmp/s2cli-export-never.jsonl", "--seqlen 4096",
                          "--budget 5"};
    const char *names[] = {"--db", "--import", "--export", "--seqlen", "--budget"};
    for (int i = 0; i < 5; i++) {
        char cmd[2048], want[128];
        snprintf(cmd, sizeof cmd, "%s tune %s/specs/tiny-byte-512.yaml --kernels lora --arch sm_80 "
                 "--build-only %s", BIN, S2_SOURCE_DIR, opts[i]);
        char *out;
        cr_expect_eq(run(cmd, &out), 2, "%s: %s", opts[i], out);
        snprintf(want, sizeof want, "s2lora tune: %s does not go with --build-only", names[i]);
        cr_expect(strstr(out, want), "%s", out);
        cr_expect(strstr(out, "times nothing"), "%s", out);
        free(out);
    }
    cr_expect_neq(access("/tmp/s2cli-export-never.jsonl", F_OK), 0, "--export wrote a file");
}

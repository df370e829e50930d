/*
 * test_bench.c — `s2lora bench attn` without a GPU: argument parsing and
 * validation (usage errors exit 2, spec errors 1, and only then no device 3),
 * the per-N spec reload that re-derives G and S, and the helpers the numbers
 * come from (FLOPs, TFLOP/s, median) and go out through (table, CSV, JSON).
 * The CLI cases run the built binary in a child process, as test_cli.c does.
 */
#include <criterion/criterion.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime/tune/bench.h"
#include "run_cmd.h"

#define BIN S2_BINARY_DIR "/s2lora"
#define SPECS S2_SOURCE_DIR "/specs"

/* Expects exit code rc and phrase in the output of `s2lora bench ARGS`. */
static void expect_bench(const char *args, int rc, const char *phrase)
{
    char cmd[4096], *out;
    snprintf(cmd, sizeof cmd, "%s bench %s", BIN, args);
    cr_expect_eq(run(cmd, &out), rc, "%s\n%s", cmd, out);
    cr_expect(strstr(out, phrase), "%s: expected '%s' in:\n%s", cmd, phrase, out);
    free(out);
}

/* ------------------------------------------------------------------ CLI */

Test(bench_cli, help)
{
    expect_bench("attn --help", 0, "usage: s2lora bench attn SPEC...");
    expect_bench("--help", 0, "usage: s2lora bench attn");
    expect_bench("attn --help", 0, "2*N*G*d*H");
    expect_bench("attn --help", 0, "--no-gemm");
    expect_bench("attn --help", 0, "dense bf16 GEMM\n8192^3 through cuBLAS");
    char *out;
    cr_expect_eq(run(BIN " --help", &out), 0);
    cr_expect(strstr(out, "bench"), "%s", out);
    free(out);
}

Test(bench_cli, usage_errors_exit_2)
{
    expect_bench("", 2, "missing what to bench");
    expect_bench("mlp x.yaml", 2, "unknown benchmark 'mlp' (valid: attn, lora)");
    expect_bench("lora x.yaml", 2, "unexpected argument 'x.yaml' (bench lora takes no");
    expect_bench("lora --ranks 8,,16", 2, "s2lora: bench lora: --ranks: \"8,,16\": item 2 is "
                 "empty");
    expect_bench("lora --dtype fp32", 2, "--dtype: \"fp32\" is not one of: bf16, fp16");
    expect_bench("lora --reps 0", 2, "--reps: \"0\" is not an integer in 1..100000");
    expect_bench("attn", 2, "missing SPEC");
    expect_bench("attn " SPECS "/llama2-7b-8k.yaml --bogus", 2, "unknown option '--bogus'");
    expect_bench("attn " SPECS "/llama2-7b-8k.yaml --bogus", 2, "Try 's2lora bench attn --help'");
    expect_bench("attn " SPECS "/llama2-7b-8k.yaml --seqlens", 2, "option '--seqlens' needs a value");
    expect_bench("attn " SPECS "/llama2-7b-8k.yaml --seqlens 8192,,16384", 2, "item 2 is empty");
    expect_bench("attn " SPECS "/llama2-7b-8k.yaml --seqlens 8k", 2,
                 "--seqlens: item 1 \"8k\" is not an integer in 1..1073741823");
    expect_bench("attn " SPECS "/llama2-7b-8k.yaml --seqlens 0", 2, "item 1 \"0\" is not an integer");
    expect_bench("attn " SPECS "/llama2-7b-8k.yaml --seqlens -5", 2, "item 1 \"-5\" is not an integer");
    expect_bench("attn " SPECS "/llama2-7b-8k.yaml --seqlens 8192,", 2, "item 2 is empty");
    expect_bench("attn " SPECS "/llama2-7b-8k.yaml --seqlens 4096,4096", 2, "4096 is listed twice");
    expect_bench("attn " SPECS "/llama2-7b-8k.yaml --reps 0", 2,
                 "--reps: \"0\" is not an integer in 1..100000");
    expect_bench("attn " SPECS "/llama2-7b-8k.yaml --warmup x", 2,
                 "--warmup: \"x\" is not an integer in 0..100000");
    expect_bench("attn " SPECS "/llama2-7b-8k.yaml --seed 0", 2,
                 "--seed: \"0\" is not an integer >= 1");
    expect_bench("attn " SPECS "/llama2-7b-8k.yaml --peers p.py --no-peers", 2,
                 "--peers and --no-peers exclude each other");
    expect_bench("attn " SPECS "/llama2-7b-8k.yaml --peer-impls flex-split --no-peers", 2,
                 "--peer-impls and --no-peers exclude each other");
    expect_bench("attn " SPECS "/llama2-7b-8k.yaml --peer-impls flex-split,flash", 2,
                 "--peer-impls: item 2 \"flash\" is not a peer; valid: sdpa-cudnn, sdpa-flash, "
                 "flex-split, flex-roll");
    expect_bench("attn " SPECS "/llama2-7b-8k.yaml --peer-impls sdpa-cudnn,", 2,
                 "item 2 \"\" is not a peer");
    expect_bench("attn " SPECS "/llama2-7b-8k.yaml --peer-impls flex-roll,flex-roll", 2,
                 "flex-roll is listed twice");
}

/* --peer-impls knows the peers the script times: its PEERS tuple, in order, is
 * S2_BENCH_PEER_IMPLS. */
Test(bench_cli, peer_impls_are_the_scripts)
{
    FILE *f = fopen(S2_SOURCE_DIR "/" S2_BENCH_DEFAULT_PEERS, "r");
    cr_assert(f, "%s", S2_BENCH_DEFAULT_PEERS);
    char line[512], names[256] = "";
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "PEERS = (", 9)) {
            size_t used = 0;
            for (const char *p = line + 9; *p && *p != ')'; p++)
                if (*p == ',')
                    used += (size_t)snprintf(names + used, sizeof names - used, ", ");
                else if (*p != '"' && *p != ' ')
                    names[used++] = *p, names[used] = '\0';
            break;
        }
    fclose(f);
    cr_expect_str_eq(names, S2_BENCH_PEER_IMPLS);
    char why[256];
    cr_expect(s2_bench_peer_impls_valid("flex-split", why, sizeof why), "%s", why);
    cr_expect(s2_bench_peer_impls_valid("flex-roll,sdpa-flash,sdpa-cudnn,flex-split", why,
                                        sizeof why), "%s", why);
    cr_expect(!s2_bench_peer_impls_valid("flex", why, sizeof why));
}

Test(bench_cli, spec_and_file_errors_exit_1_before_the_device)
{
    expect_bench("attn /nonexistent/spec.yaml --no-peers", 1, "cannot open");
    /* A later spec is checked too, before anything runs. */
    expect_bench("attn " SPECS "/llama2-7b-8k.yaml " SPECS "/nope.yaml --no-peers", 1, "nope.yaml");
    expect_bench("attn " SPECS "/llama2-7b-8k.yaml --set s2attn.group_szie=2 --no-peers", 1,
                 "did you mean");
    /* An explicit shift that no longer fits the G re-derived for one of the lengths. */
    expect_bench("attn " SPECS "/llama2-7b-32k.yaml --set s2attn.shift=3000 --seqlens 32768,8192 "
                 "--no-peers", 1, "at --seqlens 8192");
    expect_bench("attn " SPECS "/llama2-7b-8k.yaml --csv /nonexistent-dir/x.csv --no-peers", 1,
                 "--csv /nonexistent-dir/x.csv: cannot write");
    expect_bench("attn " SPECS "/llama2-7b-8k.yaml --json /nonexistent-dir/x.json --no-peers", 1,
                 "--json /nonexistent-dir/x.json: cannot write");
    expect_bench("attn " SPECS "/llama2-7b-8k.yaml --peers /nonexistent/attn_peers.py", 1,
                 "--peers /nonexistent/attn_peers.py");
    /* bench lora's files too, before any device is looked for */
    expect_bench("lora --csv /nonexistent-dir/x.csv", 1,
                 "--csv /nonexistent-dir/x.csv: cannot write in directory '/nonexistent-dir'");
    expect_bench("lora --json /nonexistent-dir/x.json", 1,
                 "--json /nonexistent-dir/x.json: cannot write in directory '/nonexistent-dir'");
}

Test(bench_cli, valid_arguments_run_or_say_no_device, .timeout = 300)
{
    char dir[] = "/tmp/s2bench-test.XXXXXX";
    cr_assert(mkdtemp(dir));
    char cmd[4096], *out;
    snprintf(cmd, sizeof cmd,
             "%s bench attn %s/tiny-byte-512.yaml --seqlens 256,300 --reps 2 --warmup 1 "
             "--no-peers --csv %s/b.csv --json %s/b.json",
             BIN, SPECS, dir, dir);
    int rc = run(cmd, &out);
    cr_expect(rc == 0 || rc == 3, "exit %d: %s", rc, out);
    if (rc == 3) {
        cr_expect(strstr(out, "no CUDA device"), "%s", out);
        char csv[256];
        snprintf(csv, sizeof csv, "%s/b.csv", dir);
        cr_expect(access(csv, F_OK) != 0, "nothing written without a device");
    } else if (rc == 0) {
        cr_expect(strstr(out, "s2lora"), "%s", out);
        char path[256];
        snprintf(path, sizeof path, "%s/b.json", dir);
        json_error_t je;
        json_t *j = json_load_file(path, 0, &je);
        cr_assert(j, "%s: %s", path, je.text);
        cr_expect_eq(json_array_size(json_object_get(j, "rows")), 2);
        cr_expect(json_object_get(j, "gemm_bf16_tflops"), "the card's rate, or null: %s", path);
        json_decref(j);
        unlink(path);
        snprintf(path, sizeof path, "%s/b.csv", dir);
        unlink(path);
    }
    rmdir(dir);
    free(out);
}

/* The card's GEMM rate is timed after the device is opened: without one, --no-gemm or not,
 * the run still stops at the device, with its message and status 3. */
Test(bench_cli, no_gemm_runs_or_says_no_device, .timeout = 300)
{
    char cmd[4096], *out;
    snprintf(cmd, sizeof cmd, "%s bench attn %s/tiny-byte-512.yaml --seqlens 256 --reps 1 "
             "--warmup 0 --no-peers --no-gemm", BIN, SPECS);
    int rc = run(cmd, &out);
    cr_expect(rc == 0 || rc == 3, "exit %d: %s", rc, out);
    if (rc == 3)
        cr_expect(strstr(out, "no CUDA device"), "%s", out);
    else
        cr_expect(!strstr(out, "card: dense bf16 GEMM"), "--no-gemm: no rate line: %s", out);
    free(out);
}

/* (The parsing of bench attn's arguments is tests/test_opts.c's: the CLI's option table.) */

/* ------------------------------------------------------------------ per-N specs */

static s2_bench_case *prepare(const char *spec, const char *seqlens, const char *set, int *n)
{
    s2_bench_opts o;
    s2_error err = {0};
    char path[512];
    snprintf(path, sizeof path, "%s/%s", SPECS, spec);
    s2_bench_opts_default(&o);
    o.specs[o.n_specs++] = path;
    o.peers = NULL; /* --no-peers */
    for (const char *p = seqlens; p && *p; p += strcspn(p, ",") + (p[strcspn(p, ",")] == ','))
        o.seqlens[o.n_seqlens++] = atoi(p);
    if (set)
        o.sets[o.n_sets++].text = set;
    s2_bench_case *c = NULL;
    cr_assert_eq(s2_bench_prepare(&o, &c, n, &err), S2_OK, "%s", err.msg);
    cr_expect_neq(o.seed, 0, "a seed is picked");
    return c;
}

Test(bench_prepare, group_ratio_is_rederived_per_length)
{
    int n;
    s2_bench_case *c = prepare("llama2-7b-32k.yaml", "8192,16384,32768,65536,102400", NULL, &n);
    cr_assert_eq(n, 5);
    const int N[] = {8192, 16384, 32768, 65536, 102400};
    for (int i = 0; i < 5; i++) {
        cr_expect_eq(c[i].N, N[i]);
        cr_expect_eq(c[i].spec.s2attn.group_size, N[i] / 4, "N=%d", N[i]);
        cr_expect_eq(c[i].spec.s2attn.shift, N[i] / 8, "N=%d", N[i]);
        cr_expect_eq(c[i].spec.model.head_dim, 128);
        cr_expect_eq(c[i].spec.model.num_heads, 32);
    }
    free(c);
}

Test(bench_prepare, default_length_and_overrides)
{
    int n;
    s2_bench_case *c = prepare("llama2-7b-16k.yaml", NULL, "model.head_dim=64", &n);
    cr_assert_eq(n, 1);
    cr_expect_eq(c[0].N, 16384);
    cr_expect_eq(c[0].spec.s2attn.group_size, 4096);
    cr_expect_eq(c[0].spec.model.head_dim, 64);
    free(c);
    /* A spec that gives group_size keeps it at every length. */
    c = prepare("llama2-7b-8k.yaml", "1000,3000", "s2attn.group_size=512", &n);
    cr_assert_eq(n, 2);
    cr_expect_eq(c[0].spec.s2attn.group_size, 512);
    cr_expect_eq(c[1].spec.s2attn.group_size, 512);
    cr_expect_eq(c[1].spec.s2attn.shift, 256);
    cr_expect_eq(c[1].N, 3000);
    free(c);
}

/* ------------------------------------------------------------------ numbers */

Test(bench_numbers, flops_tflops_median)
{
    /* The peers file's first row: sdpa-cudnn, N=8192, G=2048, d=128, H=32, 0.863 ms = 159 TF/s. */
    double f = s2_bench_fwd_flops(8192, 2048, 128, 32);
    cr_expect_float_eq(f, 2.0 * 8192 * 2048 * 128 * 32, 1);
    cr_expect(fabs(s2_bench_tflops(f, 0.863) - 159.2) < 0.1, "%f", s2_bench_tflops(f, 0.863));
    cr_expect(fabs(s2_bench_tflops(3.5 * f, 3.232) - 148.8) < 0.1);
    /* G >= N: plain causal over N. */
    cr_expect_float_eq(s2_bench_fwd_flops(1000, 4096, 64, 4), 2.0 * 1000 * 1000 * 64 * 4, 1);
    cr_expect(isnan(s2_bench_tflops(f, 0)));
    cr_expect(isnan(s2_bench_tflops(f, NAN)));

    double a[] = {5, 1, 4, 2, 3};
    cr_expect_float_eq(s2_bench_median(a, 5), 3.0, 0);
    double b[] = {4, 1, 3, 2};
    cr_expect_float_eq(s2_bench_median(b, 4), 2.5, 0);
    double c[] = {7};
    cr_expect_float_eq(s2_bench_median(c, 1), 7.0, 0);
    cr_expect(isnan(s2_bench_median(c, 0)));
}

static s2_bench_row mkrow(const char *impl, double fwd, double fb, double err)
{
    s2_bench_row r = {0};
    snprintf(r.spec, sizeof r.spec, "llama2-7b-32k");
    snprintf(r.impl, sizeof r.impl, "%s", impl);
    snprintf(r.mode, sizeof r.mode, "split");
    r.dtype = "bf16";
    r.N = 8192, r.G = 2048, r.S = 1024, r.d = 128, r.H = 32, r.Hkv = 32;
    r.fwd_ms = fwd, r.fb_ms = fb, r.rel_err = err, r.peak_gib = 0.5;
    double f = s2_bench_fwd_flops(r.N, r.G, r.d, r.H);
    r.fwd_tflops = s2_bench_tflops(f, fwd), r.fb_tflops = s2_bench_tflops(3.5 * f, fb);
    return r;
}

Test(bench_text, table_summary_csv_json)
{
    s2_bench_row rows[3] = {mkrow("s2lora", 0.5, 1.5, NAN), mkrow("flex-split", 0.6, 2.0, 2e-3),
                            mkrow("sdpa-cudnn", NAN, NAN, NAN)};
    snprintf(rows[2].note, sizeof rows[2].note, "failed: \"RuntimeError\", no kernel");
    rows[2].failed = 1;
    s2_buf b = {0};
    s2_bench_table_header(&b);
    for (int i = 0; i < 3; i++)
        s2_bench_table_row(&b, &rows[i]);
    s2_bench_case_summary(&b, rows, 3);
    cr_assert(b.data);
    cr_expect(strstr(b.data, "rel_err_vs_ours"), "%s", b.data);
    cr_expect(strstr(b.data, "fwd_TFs"), "%s", b.data);
    cr_expect(strstr(b.data, "2.00e-03"), "%s", b.data);
    cr_expect(strstr(b.data, "FAILED: failed:"), "%s", b.data);
    cr_expect(strstr(b.data, "fastest peer fwd+bwd 2.000 ms (flex-split); ours 1.500 ms (s2lora) = 0.75"),
              "%s", b.data);
    s2_buf_free(&b);

    /* Several tiles: the fastest of our rows is the one compared. */
    s2_bench_row tiled[4] = {mkrow("s2lora#1", 0.5, 1.8, NAN), mkrow("s2lora#2", 0.4, 1.2, NAN),
                             mkrow("s2lora#3", NAN, NAN, NAN), mkrow("flex-split", 0.6, 2.0, 2e-3)};
    tiled[2].failed = 1;
    s2_buf c = {0};
    s2_bench_case_summary(&c, tiled, 4);
    cr_expect(strstr(c.data, "ours 1.200 ms (s2lora#2) = 0.60"), "%s", c.data);
    s2_buf_free(&c);

    s2_bench_csv(&b, rows, 3, NAN);
    cr_assert(b.data);
    cr_expect(!strncmp(b.data, "spec,impl,N,G,S,d,H,Hkv,dtype,mode,fwd_ms", 41), "%s", b.data);
    cr_expect(strstr(b.data, "\"failed: \"\"RuntimeError\"\", no kernel\""), "quoted: %s", b.data);
    cr_expect(strstr(b.data, "sdpa-cudnn,8192,2048,1024,128,32,32,bf16,split,,,,,0.5,,1,"), "%s",
              b.data);
    s2_buf_free(&b);

    char *js = s2_bench_json(rows, 3, "NVIDIA H100 80GB HBM3", 0x1234, NAN);
    cr_assert(js);
    json_error_t je;
    json_t *j = json_loads(js, 0, &je);
    cr_assert(j, "%s: %s", je.text, js);
    json_t *r = json_object_get(j, "rows");
    cr_expect_eq(json_array_size(r), 3);
    cr_expect(json_is_null(json_object_get(json_array_get(r, 0), "rel_err_vs_ours")));
    cr_expect(json_is_null(json_object_get(json_array_get(r, 2), "fwd_ms")), "NaN is null");
    cr_expect(json_is_true(json_object_get(json_array_get(r, 2), "failed")));
    cr_expect_str_eq(json_string_value(json_object_get(j, "seed")), "0x0000000000001234");
    /* No card rate: its key and the fractions are there, null. */
    cr_expect(json_is_null(json_object_get(j, "gemm_bf16_tflops")), "%s", js);
    for (int i = 0; i < 3; i++) {
        json_t *ri = json_array_get(r, i);
        cr_expect(json_is_null(json_object_get(ri, "fwd_frac_of_gemm")), "row %d: %s", i, js);
        cr_expect(json_is_null(json_object_get(ri, "fb_frac_of_gemm")), "row %d: %s", i, js);
    }
    json_decref(j);
    free(js);
}

/* A measured card rate: the JSON has it at the top and each row's TF/s as a fraction of it
 * (null where the row has no time); the CSV has the fractions as its last two columns, with
 * every earlier column where it was. */
Test(bench_text, gemm_rate_and_fractions)
{
    s2_bench_row rows[2] = {mkrow("s2lora", 0.5, 1.5, NAN), mkrow("sdpa-cudnn", 0.6, NAN, NAN)};
    const double gemm = 712.5;
    char *js = s2_bench_json(rows, 2, "NVIDIA H100 80GB HBM3", 1, gemm);
    cr_assert(js);
    json_error_t je;
    json_t *j = json_loads(js, 0, &je);
    cr_assert(j, "%s: %s", je.text, js);
    cr_expect_float_eq(json_number_value(json_object_get(j, "gemm_bf16_tflops")), gemm, 1e-9,
                       "%s", js);
    json_t *r = json_object_get(j, "rows");
    cr_assert_eq(json_array_size(r), 2);
    json_t *r0 = json_array_get(r, 0), *r1 = json_array_get(r, 1);
    cr_expect_float_eq(json_number_value(json_object_get(r0, "fwd_frac_of_gemm")),
                       rows[0].fwd_tflops / gemm, 1e-12, "%s", js);
    cr_expect_float_eq(json_number_value(json_object_get(r0, "fb_frac_of_gemm")),
                       rows[0].fb_tflops / gemm, 1e-12, "%s", js);
    cr_expect_float_eq(json_number_value(json_object_get(r1, "fwd_frac_of_gemm")),
                       rows[1].fwd_tflops / gemm, 1e-12, "%s", js);
    cr_expect(json_is_null(json_object_get(r1, "fb_frac_of_gemm")), "no fb time: %s", js);
    /* The TF/s fields themselves are unchanged. */
    cr_expect_float_eq(json_number_value(json_object_get(r0, "fb_tflops")), rows[0].fb_tflops,
                       1e-9);
    json_decref(j);
    free(js);

    s2_buf b = {0};
    s2_bench_csv(&b, rows, 2, gemm);
    cr_assert(b.data);
    cr_expect(!strncmp(b.data, "spec,impl,N,G,S,d,H,Hkv,dtype,mode,fwd_ms,fwd_tflops,fb_ms,"
                       "fb_tflops,peak_gib,rel_err_vs_ours,failed,note,fwd_frac_of_gemm,"
                       "fb_frac_of_gemm,bwd_ms,bwd_tflops\n", 157), "%s", b.data);
    char want[256];
    double bms, btf;
    s2_bench_bwd(&rows[0], &bms, &btf);
    snprintf(want, sizeof want, ",0,,%.6g,%.6g,%.6g,%.6g\n", rows[0].fwd_tflops / gemm,
             rows[0].fb_tflops / gemm, bms, btf);
    cr_expect(strstr(b.data, want), "expected '%s' in:\n%s", want, b.data);
    snprintf(want, sizeof want, ",0,,%.6g,,,\n", rows[1].fwd_tflops / gemm);
    cr_expect(strstr(b.data, want), "expected '%s' in:\n%s", want, b.data);
    /* Every line has the header's 22 fields. */
    for (const char *p = b.data; *p;) {
        const char *e = strchr(p, '\n');
        cr_assert(e);
        int commas = 0;
        for (const char *q = p; q < e; q++)
            commas += *q == ',';
        cr_expect_eq(commas, 21, "%.*s", (int)(e - p), p);
        p = e + 1;
    }
    s2_buf_free(&b);
}

/* The backward read from a row's two medians: fb - fwd, at 2.5 forwards of FLOPs; nothing where
 * a time is missing or the difference is not positive. In the table, the CSV and the JSON. */
Test(bench_text, backward_from_the_two_medians)
{
    s2_bench_row rows[3] = {mkrow("s2lora", 0.5, 1.5, NAN), mkrow("flex-split", 0.6, NAN, NAN),
                            mkrow("sdpa-cudnn", 0.7, 0.7, NAN)};
    double ms, tf;
    s2_bench_bwd(&rows[0], &ms, &tf);
    cr_expect_float_eq(ms, 1.0, 1e-12);
    const double f = s2_bench_fwd_flops(8192, 2048, 128, 32);
    cr_expect_float_eq(tf, 2.5 * f / 1e-3 / 1e12, 1e-9);
    cr_expect_float_eq(tf, 2.5 * rows[0].fwd_tflops * 0.5 / 1.0, 1e-9,
                       "2.5x the forward's work in 2x its time");
    s2_bench_bwd(&rows[1], &ms, &tf);
    cr_expect(isnan(ms) && isnan(tf), "no fb time: no backward");
    s2_bench_bwd(&rows[2], &ms, &tf);
    cr_expect(isnan(ms) && isnan(tf), "fb no longer than fwd: no backward");

    s2_buf b = {0};
    s2_bench_table_header(&b);
    for (int i = 0; i < 3; i++)
        s2_bench_table_row(&b, &rows[i]);
    cr_assert(b.data);
    cr_expect(strstr(b.data, "fb_TFs  bwd_TFs"), "%s", b.data);
    char want[64];
    s2_bench_bwd(&rows[0], &ms, &tf);
    snprintf(want, sizeof want, " %8.1f ", tf);
    cr_expect(strstr(b.data, want), "expected '%s' in:\n%s", want, b.data);
    s2_buf_free(&b);

    char *js = s2_bench_json(rows, 3, "NVIDIA H100 80GB HBM3", 7, NAN);
    cr_assert(js);
    json_error_t je;
    json_t *j = json_loads(js, 0, &je);
    cr_assert(j, "%s: %s", je.text, js);
    json_t *r = json_object_get(j, "rows");
    cr_expect_float_eq(json_number_value(json_object_get(json_array_get(r, 0), "bwd_ms")), 1.0,
                       1e-12, "%s", js);
    cr_expect_float_eq(json_number_value(json_object_get(json_array_get(r, 0), "bwd_tflops")),
                       tf, 1e-9, "%s", js);
    for (int i = 1; i < 3; i++) {
        cr_expect(json_is_null(json_object_get(json_array_get(r, i), "bwd_ms")), "%d: %s", i, js);
        cr_expect(json_is_null(json_object_get(json_array_get(r, i), "bwd_tflops")), "%d", i);
    }
    json_decref(j);
    free(js);
}

Test(bench_text, summary_without_peers)
{
    s2_bench_row ours = mkrow("s2lora", 0.5, 1.5, NAN);
    s2_buf b = {0};
    s2_bench_case_summary(&b, &ours, 1);
    cr_assert(b.data);
    cr_expect(strstr(b.data, "no peer fwd+bwd time; ours 1.500 ms"), "%s", b.data);
    s2_buf_free(&b);
}

/*
 * test_opts.c — the one option parser of the s2lora binary (runtime/cli/opts.h): every kind of
 * argument parsed strictly in both spellings, the errors naming the option and what is valid,
 * the subcommands' own tables (checked for consistency, parsed in process), every subcommand's
 * usage errors through the built binary (exit 2 and its usage line), and the shell completions
 * against the copies committed under scripts/completion/.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/cli/cli.h"
#include "runtime/cli/opts.h"
#include "runtime/tune/bench.h"
#include "runtime/tune/bench_lora.h"
#include "run_cmd.h"

#define BIN S2_BINARY_DIR "/s2lora"

/* ---- a table with one option of every kind ---------------------------------------------- */

typedef struct args {
    const char *pos[3];
    int n_pos;
    int flag, i;
    int64_t i64;
    uint64_t u64;
    double d, dur;
    const char *str, *kv[2];
    int n_kv;
    int list[3], n_list;
    const char *en;
    unsigned mask;
    const char *req;
} args;

static const char *const colours[] = {"red", "green", "blue", NULL};

static const s2_opt opts[] = {
    {.name = "flag", .short_name = 'f', .kind = S2_OPT_FLAG, .help = "a flag",
     .off = offsetof(args, flag)},
    {.name = "jobs", .short_name = 'j', .kind = S2_OPT_INT, .metavar = "N", .help = "an int",
     .off = offsetof(args, i), .lo = 1, .hi = 1024},
    {.name = "steps", .kind = S2_OPT_I64, .metavar = "N", .help = "an int64",
     .off = offsetof(args, i64), .lo = 0, .hi = LLONG_MAX},
    {.name = "seed", .kind = S2_OPT_U64, .metavar = "N", .help = "a uint64",
     .off = offsetof(args, u64), .lo = 1},
    {.name = "lr", .kind = S2_OPT_DOUBLE, .metavar = "X", .help = "a double",
     .off = offsetof(args, d), .dlo = 0, .dhi = 10, .flags = S2_OPT_ABOVE_LO},
    {.name = "older-than", .kind = S2_OPT_DURATION, .metavar = "D", .help = "a duration",
     .off = offsetof(args, dur)},
    {.name = "out", .short_name = 'o', .kind = S2_OPT_STRING, .metavar = "DIR",
     .help = "a string", .off = offsetof(args, str)},
    {.name = "set", .kind = S2_OPT_STRING, .metavar = "K=V", .help = "repeatable key=value",
     .off = offsetof(args, kv), .max_count = 2, .count_off = offsetof(args, n_kv),
     .flags = S2_OPT_KEYVAL},
    {.name = "seqlens", .short_name = 's', .kind = S2_OPT_LIST, .metavar = "N,...",
     .help = "a list", .off = offsetof(args, list), .lo = 1, .hi = 100000, .max_count = 3,
     .count_off = offsetof(args, n_list)},
    {.name = "colour", .kind = S2_OPT_ENUM, .help = "an enum", .values = colours,
     .off = offsetof(args, en)},
    {.name = "colours", .kind = S2_OPT_ENUM_LIST, .metavar = "LIST", .help = "an enum list",
     .values = colours, .off = offsetof(args, mask)},
    {.name = "model", .short_name = 'm', .kind = S2_OPT_STRING, .metavar = "DIR",
     .help = "required", .off = offsetof(args, req), .flags = S2_OPT_REQUIRED},
    {.name = "seqlen", .kind = S2_OPT_LIST, .metavar = "N", .alias_of = "seqlens"},
    {.name = "spec", .kind = S2_OPT_STRING, .metavar = "SPEC", .alias_of = "SPEC",
     .flags = S2_OPT_TO_POS},
};

static const s2_cmd cmd = {
    .name = "demo", .usage = "SPEC... -m DIR [options]", .about = "A demo.\n",
    .opts = opts, .n_opts = sizeof opts / sizeof opts[0],
    .pos_name = "SPEC", .pos_min = 1, .pos_max = 2, .pos_off = offsetof(args, pos),
    .pos_count_off = offsetof(args, n_pos), .pos_has_count = 1,
};

/* Parses the words of line (split on spaces; "''" is an empty word) into *a. */
static int parse_line(const char *line, args *a, s2_opts_result *r)
{
    static char buf[1024];
    static char *argv[64];
    snprintf(buf, sizeof buf, "%s", line);
    int argc = 0;
    for (char *save = NULL, *w = strtok_r(buf, " ", &save); w; w = strtok_r(NULL, " ", &save))
        argv[argc++] = strcmp(w, "''") ? w : w + 2; /* the empty string after the quotes */
    memset(a, 0, sizeof *a);
    return s2_opts_parse(&cmd, argc, argv, a, r);
}

/* The line is refused (2) with every phrase in its message. */
static void refused(const char *line, const char *p1, const char *p2)
{
    args a;
    s2_opts_result r;
    cr_expect_eq(parse_line(line, &a, &r), 2, "'%s' was accepted", line);
    cr_expect(strstr(r.msg, p1), "'%s': '%s' not in: %s", line, p1, r.msg);
    cr_expect(!p2 || strstr(r.msg, p2), "'%s': '%s' not in: %s", line, p2, r.msg);
}

static args accepted(const char *line)
{
    args a;
    s2_opts_result r;
    cr_assert_eq(parse_line(line, &a, &r), 0, "'%s': %s", line, r.msg);
    return a;
}

Test(opts, every_kind_in_both_spellings)
{
    args a = accepted("x.yaml -m M --jobs 4 --steps=12 --seed 0x10 --lr=2.5 --older-than 7d "
                      "--out=o --set a=1 --set b.c=2 --seqlens 8,16 --colour green "
                      "--colours=red,blue --flag y.yaml");
    cr_expect_eq(a.n_pos, 2);
    cr_expect_str_eq(a.pos[0], "x.yaml");
    cr_expect_str_eq(a.pos[1], "y.yaml");
    cr_expect_eq(a.i, 4);
    cr_expect_eq(a.i64, 12);
    cr_expect_eq(a.u64, 16);
    cr_expect_eq(a.d, 2.5);
    cr_expect_eq(a.dur, 7 * 86400.0);
    cr_expect_str_eq(a.str, "o");
    cr_expect_eq(a.n_kv, 2);
    cr_expect_str_eq(a.kv[1], "b.c=2");
    cr_expect_eq(a.n_list, 2);
    cr_expect_eq(a.list[1], 16);
    cr_expect_str_eq(a.en, "green");
    cr_expect_eq(a.mask, 5u);
    cr_expect_eq(a.flag, 1);
    a = accepted("-j8 -s 3 -o d -f -m M x.yaml");
    cr_expect_eq(a.i, 8);
    cr_expect_eq(a.list[0], 3);
    cr_expect_str_eq(a.str, "d");
    cr_expect(a.flag);
    a = accepted("-mM -j 1 x.yaml --older-than 30m");
    cr_expect_str_eq(a.req, "M");
    cr_expect_eq(a.dur, 1800.0);
    a = accepted("-m M -- --x.yaml"); /* after --, a name that starts with - is an argument */
    cr_expect_str_eq(a.pos[0], "--x.yaml");
    a = accepted("-m M x.yaml --seed 18446744073709551615 --steps 0");
    cr_expect_eq(a.u64, UINT64_MAX);
}

Test(opts, integers_are_parsed_strictly)
{
    const char *bad[] = {"2abc", "''", "99999999999999999999", "-1", "0", "1025", "+4", "4.0",
                         "0x10", "1e3", "%20%4"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char line[128], want[64];
        snprintf(line, sizeof line, "x.yaml -m M --jobs %s", bad[i]);
        snprintf(want, sizeof want, "\"%s\" is not an integer in 1..1024",
                 strcmp(bad[i], "''") ? bad[i] : "");
        refused(line, "--jobs: ", want);
    }
    refused("x.yaml -m M -j 2abc", "--jobs: \"2abc\" is not an integer in 1..1024", NULL);
    refused("x.yaml -m M --steps -5", "--steps: \"-5\" is not an integer >= 0", NULL);
    refused("x.yaml -m M --steps 9223372036854775808", "is not an integer >= 0", NULL);
    refused("x.yaml -m M --seed 0", "--seed: \"0\" is not an integer >= 1 (decimal or 0x hex)",
            NULL);
    refused("x.yaml -m M --seed 18446744073709551616", "--seed", "not an integer");
    refused("x.yaml -m M --seed 0xg", "--seed", "not an integer");
    refused("x.yaml -m M --seed -3", "--seed", "not an integer");
}

Test(opts, numbers_lists_enums_and_durations_are_checked)
{
    refused("x.yaml -m M --lr 0", "--lr: \"0\" is not a number more than 0 and at most 10", NULL);
    refused("x.yaml -m M --lr 11", "--lr: \"11\"", NULL);
    refused("x.yaml -m M --lr nan", "--lr: \"nan\"", NULL);
    refused("x.yaml -m M --lr inf", "--lr: \"inf\"", NULL);
    refused("x.yaml -m M --lr 1x", "--lr: \"1x\"", NULL);
    refused("x.yaml -m M --lr ''", "--lr: \"\"", NULL);
    cr_expect_eq(accepted("x.yaml -m M --lr 1e-3").d, 1e-3);
    refused("x.yaml -m M --seqlens 8,,16", "--seqlens: \"8,,16\": item 2 is empty", NULL);
    refused("x.yaml -m M --seqlens 8,", "item 2 is empty", NULL);
    refused("x.yaml -m M --seqlens 8k", "--seqlens: item 1 \"8k\" is not an integer in 1..100000",
            NULL);
    refused("x.yaml -m M --seqlens 0", "item 1 \"0\" is not an integer", NULL);
    refused("x.yaml -m M --seqlens 4,4", "--seqlens: 4 is listed twice", NULL);
    refused("x.yaml -m M --seqlens 1,2,3,4", "at most 3 items", NULL);
    refused("x.yaml -m M --seqlens +5", "\"+5\" is not an integer", NULL);
    refused("x.yaml -m M --colour pink", "--colour: \"pink\" is not one of: red, green, blue",
            NULL);
    refused("x.yaml -m M --colours red,pink", "--colours: \"pink\" is not one of: red, green, blue",
            NULL);
    refused("x.yaml -m M --colours red,", "--colours: \"red,\": item 2 is empty", NULL);
    const char *bad_d[] = {"7", "7x", "d", "1.5h", "''", "0d", "-1d", "7d12h", "1000000000000d"};
    for (size_t i = 0; i < sizeof bad_d / sizeof bad_d[0]; i++) {
        char line[128];
        snprintf(line, sizeof line, "x.yaml -m M --older-than %s", bad_d[i]);
        refused(line, "--older-than: ", "is not a duration (a whole number and one unit: s, m, "
                "h or d");
    }
    cr_expect_eq(accepted("x.yaml -m M --older-than 45s").dur, 45.0);
    cr_expect_eq(accepted("x.yaml -m M --older-than 12h").dur, 12 * 3600.0);
    refused("x.yaml -m M --set KEY", "--set: \"KEY\" is not KEY=VALUE", NULL);
    refused("x.yaml -m M --set =v", "--set: \"=v\" is not KEY=VALUE", NULL);
    refused("x.yaml -m M --set a=1 --set b=2 --set c=3", "too many --set options (at most 2)",
            NULL);
}

Test(opts, unknown_missing_duplicate_and_positionals)
{
    refused("x.yaml -m M --bogus", "unknown option '--bogus'", NULL);
    refused("x.yaml -m M --bogus=3", "unknown option '--bogus'", NULL);
    refused("x.yaml -m M -z", "unknown option '-z'", NULL);
    /* getopt_long's abbreviations are not taken: a prefix today is ambiguous tomorrow */
    refused("x.yaml -m M --jo 3", "unknown option '--jo'", NULL);
    refused("x.yaml -m M --seqlens", "option '--seqlens' needs a value", NULL);
    refused("x.yaml -m M -j", "option '-j' needs a value", NULL);
    refused("x.yaml -m M --flag=1", "option '--flag' takes no value", NULL);
    refused("x.yaml -m M --jobs 2 --jobs 3", "--jobs is given twice; it is taken once", NULL);
    refused("x.yaml -m M -j 2 --jobs=3", "--jobs is given twice", NULL);
    refused("x.yaml -m M --flag --flag", "--flag is given twice", NULL);
    refused("x.yaml -m M --seqlens 4 --seqlen 5", "--seqlens is given twice",
            "counting its old spelling");
    refused("-m M", "missing SPEC", NULL);
    refused("x.yaml", "missing --model DIR", NULL);
    refused("a b c -m M", "too many SPECs: 'c' (at most 2)", NULL);
    refused("a b --spec c -m M", "--spec c: one SPEC only, and it is given already", NULL);
}

Test(opts, help_and_deprecated_spellings)
{
    args a;
    s2_opts_result r;
    cr_expect_eq(parse_line("x.yaml --jobs bad --help", &a, &r), 0, "--help wins: %s", r.msg);
    cr_expect(r.help);
    cr_expect_eq(parse_line("x.yaml -m M --seqlen 64 --spec y.yaml", &a, &r), 0, "%s", r.msg);
    cr_expect_eq(a.list[0], 64);
    cr_expect_eq(a.n_pos, 2);
    cr_expect_str_eq(a.pos[0], "x.yaml");
    cr_expect_str_eq(a.pos[1], "y.yaml");
    cr_expect(strstr(r.notes, "s2lora: demo: --seqlen is deprecated: use --seqlens\n"), "%s",
              r.notes);
    cr_expect(strstr(r.notes, "--spec is deprecated: give SPEC as an argument"), "%s", r.notes);
    cr_expect(s2_opts_given(&cmd, &r, "seqlens"));
    cr_expect(!s2_opts_given(&cmd, &r, "jobs"));
    /* the next parse in this process starts afresh (getopt_long's state) */
    cr_expect_eq(parse_line("z.yaml -m M -j 3", &a, &r), 0, "%s", r.msg);
    cr_expect_eq(a.i, 3);
    cr_expect_eq(a.n_pos, 1);
    cr_expect(!r.notes[0], "%s", r.notes);
    s2_buf b = {0};
    s2_opts_help(&cmd, &b);
    cr_assert(b.data);
    cr_expect(strstr(b.data, "usage: s2lora demo SPEC... -m DIR [options]\n"), "%s", b.data);
    cr_expect(strstr(b.data, "  -j, --jobs N "), "%s", b.data);
    cr_expect(strstr(b.data, "      --colour red|green|blue "), "%s", b.data);
    cr_expect(strstr(b.data, "      --seqlen N "), "%s", b.data);
    cr_expect(strstr(b.data, "deprecated spelling of --seqlens"), "%s", b.data);
    cr_expect(strstr(b.data, "(repeatable, at most 2)"), "%s", b.data);
    s2_buf_free(&b);
}

/* stop_at_positional (launch): the first argument that is no option ends the options. */
Test(opts, a_command_after_the_options_keeps_its_own)
{
    typedef struct la {
        int n;
    } la;
    static const s2_opt lo[] = {{.name = "gpus", .kind = S2_OPT_INT, .metavar = "N", .help = "h",
                                 .off = offsetof(la, n), .lo = 1, .hi = 8,
                                 .flags = S2_OPT_REQUIRED}};
    static const s2_cmd lc = {.name = "launch", .usage = "--gpus N COMMAND", .about = "",
                              .opts = lo, .n_opts = 1, .stop_at_positional = 1,
                              .pos_name = "COMMAND", .unknown_hint = " (after the command)"};
    char *argv[] = {"--gpus", "2", "train", "--gpus", "x", "--bogus"};
    la a = {0};
    s2_opts_result r;
    cr_assert_eq(s2_opts_parse(&lc, 6, argv, &a, &r), 0, "%s", r.msg);
    cr_expect_eq(a.n, 2);
    cr_expect_eq(r.rest, 2);
    cr_expect_str_eq(argv[r.rest], "train");
    char *argv2[] = {"--gpus=3", "--", "--train"};
    cr_assert_eq(s2_opts_parse(&lc, 3, argv2, &a, &r), 0, "%s", r.msg);
    cr_expect_eq(r.rest, 2);
    char *argv3[] = {"--lr", "1", "train"};
    cr_expect_eq(s2_opts_parse(&lc, 3, argv3, &a, &r), 2);
    cr_expect(strstr(r.msg, "unknown option '--lr' (after the command)"), "%s", r.msg);
}

/* ---- the subcommands' tables ------------------------------------------------------------- */

Test(opts, every_table_is_consistent)
{
    int n;
    const s2_cmd_group *g = s2_cli_groups(&n);
    cr_assert_gt(n, 10);
    for (int i = 0; i < n; i++)
        for (int s = 0; g[i].subs[s]; s++) {
            const s2_cmd *c = g[i].subs[s];
            cr_expect(!strncmp(c->name, g[i].name, strlen(g[i].name)), "%s", c->name);
            cr_expect(c->usage && c->about, "%s: usage and about", c->name);
            cr_expect_leq(c->n_opts, S2_OPTS_MAX, "%s", c->name);
            cr_expect_eq(s2_cli_find(c->name), c, "%s", c->name);
            for (int k = 0; k < c->n_opts; k++) {
                const s2_opt *o = &c->opts[k];
                cr_expect(o->alias_of || (o->help && *o->help), "%s --%s: help", c->name,
                          o->name);
                cr_expect(o->kind == S2_OPT_FLAG || o->metavar || o->values,
                          "%s --%s: the value's name", c->name, o->name);
                cr_expect((o->kind != S2_OPT_ENUM && o->kind != S2_OPT_ENUM_LIST) || o->values,
                          "%s --%s: values", c->name, o->name);
                cr_expect(strcmp(o->name, "help"), "%s: --help is the parser's", c->name);
                for (int j = 0; j < k; j++) {
                    cr_expect(strcmp(o->name, c->opts[j].name), "%s: --%s twice", c->name,
                              o->name);
                    cr_expect(!o->short_name || o->short_name != c->opts[j].short_name,
                              "%s: -%c twice", c->name, o->short_name);
                }
                if (o->alias_of && !(o->flags & S2_OPT_TO_POS)) {
                    int found = 0;
                    for (int j = 0; j < c->n_opts; j++)
                        found |= !strcmp(c->opts[j].name, o->alias_of);
                    cr_expect(found, "%s --%s: alias of a missing --%s", c->name, o->name,
                              o->alias_of);
                }
                /* one letter, one meaning, in every subcommand */
                static const struct { char c; const char *name; } shorts[] = {
                    {'o', "out"}, {'j', "jobs"}, {'s', "seqlens"}, {'a', "arch"}, {'i', "in"},
                    {'m', "model"}, {'d', "data"}};
                for (size_t x = 0; o->short_name && x < sizeof shorts / sizeof shorts[0]; x++)
                    if (shorts[x].c == o->short_name)
                        cr_expect_str_eq(o->name, shorts[x].name, "%s: -%c", c->name,
                                         o->short_name);
            }
        }
}

/* bench attn's table fills the library's options with its defaults kept. */
Test(opts, bench_attn_parses_into_the_library_options)
{
    const s2_cmd *c = s2_cli_find("bench attn");
    cr_assert(c);
    struct {
        s2_bench_opts o;
        int reps, no_peers;
    } a = {0};
    s2_bench_opts_default(&a.o);
    char *argv[] = {"a.yaml", "b.yaml", "--set", "dtype=fp16", "-s", "8192,102400",
                    "--seed=0x10", "--tile", "fwd_warps=4", "--json", "x.json"};
    s2_opts_result r;
    cr_assert_eq(s2_opts_parse(c, 11, argv, &a, &r), 0, "%s", r.msg);
    cr_expect_eq(a.o.no_gemm, 0, "the card's GEMM rate is measured by default");
    cr_expect_eq(a.o.n_specs, 2);
    cr_expect_str_eq(a.o.specs[1], "b.yaml");
    cr_expect_eq(a.o.n_sets, 1);
    cr_expect_str_eq(a.o.sets[0].text, "dtype=fp16");
    cr_expect_eq(a.o.n_seqlens, 2);
    cr_expect_eq(a.o.seqlens[1], 102400);
    cr_expect_eq(a.o.seed, 16);
    cr_expect_eq(a.o.n_tiles, 1);
    cr_expect_str_eq(a.o.json, "x.json");
    cr_expect_eq(a.o.reps_fwd, 20);
    cr_expect_eq(a.o.warmup, 5);
    cr_expect_str_eq(a.o.peers, S2_BENCH_DEFAULT_PEERS);

    char *argv2[] = {"a.yaml", "--no-gemm"};
    cr_assert_eq(s2_opts_parse(c, 2, argv2, &a, &r), 0, "%s", r.msg);
    cr_expect_eq(a.o.no_gemm, 1, "--no-gemm");
}

/* ---- every subcommand through the binary --------------------------------------------------- */

/* "CMD ARGS" exits 2, with CMD's usage line and the phrase. */
static void usage_error(const s2_cmd *c, const char *args, const char *phrase)
{
    char cmdline[1024], usage[256], *out;
    snprintf(cmdline, sizeof cmdline, "%s %s %s", BIN, c->name, args);
    const int rc = run(cmdline, &out);
    cr_expect_eq(rc, 2, "%s: exit %d: %s", cmdline, rc, out);
    snprintf(usage, sizeof usage, "usage: s2lora %s ", c->name);
    cr_expect(strstr(out, usage), "%s: no '%s' in: %s", cmdline, usage, out);
    snprintf(usage, sizeof usage, "s2lora: %s: ", c->name);
    cr_expect(strstr(out, usage), "%s: no '%s' in: %s", cmdline, usage, out);
    cr_expect(strstr(out, phrase), "%s: no '%s' in: %s", cmdline, phrase, out);
    free(out);
}

Test(opts_cli, every_subcommand_exits_2_with_its_usage_line, .timeout = 240)
{
    int n;
    const s2_cmd_group *g = s2_cli_groups(&n);
    int cmds = 0;
    for (int i = 0; i < n; i++)
        for (int s = 0; g[i].subs[s]; s++, cmds++) {
            const s2_cmd *c = g[i].subs[s];
            usage_error(c, "--no-such-option", "unknown option '--no-such-option'");
            for (int k = 0; k < c->n_opts; k++) {
                const s2_opt *o = &c->opts[k];
                char args[256], phrase[128];
                if (o->kind == S2_OPT_FLAG) {
                    snprintf(args, sizeof args, "--%s=1", o->name);
                    snprintf(phrase, sizeof phrase, "option '--%s' takes no value", o->name);
                } else {
                    snprintf(args, sizeof args, "--%s", o->name);
                    snprintf(phrase, sizeof phrase, "option '--%s' needs a value", o->name);
                }
                usage_error(c, args, phrase);
                if (o->kind == S2_OPT_INT || o->kind == S2_OPT_I64 || o->kind == S2_OPT_U64) {
                    snprintf(args, sizeof args, "--%s 2abc", o->name);
                    snprintf(phrase, sizeof phrase, "--%s: \"2abc\" is not an integer",
                             o->alias_of ? o->alias_of : o->name);
                    usage_error(c, args, phrase);
                }
            }
        }
    cr_expect_geq(cmds, 18);
}

/* The checks a subcommand makes after parsing are usage errors of the same form. */
Test(opts_cli, checks_after_parsing_are_usage_errors_too, .timeout = 60)
{
    const char *spec = S2_SOURCE_DIR "/specs/tiny-byte-512.yaml";
    char args[1024];
    usage_error(s2_cli_find("build"), "--jobs 0 x.yaml", "--jobs: \"0\" is not an integer in "
                "1..1024");
    usage_error(s2_cli_find("build"), "x.yaml --arch sm_75", "--arch: \"sm_75\" is not one of: "
                "sm_80, sm_86, sm_89, sm_90, sm_90a");
    usage_error(s2_cli_find("build"), "x.yaml --set s2attn.group_size", "--set: "
                "\"s2attn.group_size\" is not KEY=VALUE");
    usage_error(s2_cli_find("build"), "", "missing SPEC");
    usage_error(s2_cli_find("attn"), "x.yaml --in a", "missing --out OUT.safetensors");
    usage_error(s2_cli_find("attn"), "x.yaml --spec y.yaml --in a --out b",
                "one SPEC only, and it is given already");
    usage_error(s2_cli_find("tune"), "x.yaml --kernels attn,nope", "--kernels: \"nope\" is not "
                "one of: attn, attn_fwd, attn_bwd, lora");
    usage_error(s2_cli_find("tune"), "x.yaml --budget 0", "--budget: \"0\" is not a number > 0");
    usage_error(s2_cli_find("bench attn"), "x.yaml --peers p.py --no-peers",
                "--peers and --no-peers exclude each other");
    usage_error(s2_cli_find("bench attn"), "x.yaml --tile fwd_warps=4,frob=1",
                "(you set fwd_warps, frob; valid keys: fwd_warps");
    usage_error(s2_cli_find("bench lora"), "--tokens 8,,16", "--tokens: \"8,,16\": item 2 is "
                "empty");
    usage_error(s2_cli_find("bench lora"), "--dtype fp32", "--dtype: \"fp32\" is not one of: "
                "bf16, fp16");
    usage_error(s2_cli_find("train"), "x.yaml --model m --data d --out o --seqlens 64,128",
                "--seqlens: \"64,128\": at most 1 item");
    usage_error(s2_cli_find("train"), "x.yaml --model m --data d --out o --rope-scaling keep",
                "--rope-scaling: \"keep\" is not one of: match, spec");
    usage_error(s2_cli_find("eval"), "x.yaml --model m", "missing --data FILE (or --passkey");
    usage_error(s2_cli_find("launch"), "--gpus 2", "missing COMMAND");
    usage_error(s2_cli_find("world"), "--fail-rank 1", "--fail-rank and --fail-how go together");
    usage_error(s2_cli_find("cache clean"), "", "say what to remove: --older-than D");
    usage_error(s2_cli_find("cache clean"), "--all --older-than 7d",
                "--all and --older-than exclude each other");
    usage_error(s2_cli_find("completion"), "fish", "\"fish\" is not one of: bash, zsh");
    snprintf(args, sizeof args, "%s --arch sm_80", spec);
    usage_error(s2_cli_find("gen"), args, "missing --out DIR");
}

/* Deprecated spellings still work, with one note on stderr. */
Test(opts_cli, old_spellings_work_with_a_note, .timeout = 60)
{
    char *out;
    cr_expect_eq(run(BIN " tune " S2_SOURCE_DIR "/specs/tiny-byte-512.yaml --kernels lora "
                     "--seqlen 64 --arch sm_80 --build-only", &out), 2);
    cr_expect(strstr(out, "s2lora: tune: --seqlen is deprecated: use --seqlens\n"), "%s", out);
    cr_expect(strstr(out, "--seqlens does not go with --build-only"), "the old spelling sets "
              "--seqlens: %s", out);
    free(out);
    cr_expect_eq(run(BIN " attn --spec /nonexistent.yaml --in a --out b", &out), 1);
    cr_expect(strstr(out, "s2lora: attn: --spec is deprecated: give SPEC as an argument"), "%s",
              out);
    cr_expect(strstr(out, "/nonexistent.yaml"), "the old spelling still names the spec: %s",
              out);
    free(out);
    cr_expect_eq(run(BIN " bench lora --M 8,,16", &out), 2);
    cr_expect(strstr(out, "--M is deprecated: use --tokens"), "%s", out);
    cr_expect(strstr(out, "--tokens: \"8,,16\": item 2 is empty"), "%s", out);
    free(out);
}

/* The committed completion scripts are what the binary prints: regenerate them with
 * `s2lora completion bash > scripts/completion/s2lora.bash` (and zsh: _s2lora). */
Test(opts_cli, committed_completions_match_the_tables)
{
    const char *shells[][2] = {{"bash", "s2lora.bash"}, {"zsh", "_s2lora"}};
    for (int i = 0; i < 2; i++) {
        char cmdline[1024], path[1024], *out, *file = NULL;
        snprintf(cmdline, sizeof cmdline, "%s completion %s", BIN, shells[i][0]);
        cr_assert_eq(run(cmdline, &out), 0, "%s", out);
        snprintf(path, sizeof path, "%s/scripts/completion/%s", S2_SOURCE_DIR, shells[i][1]);
        cr_assert_eq(s2_read_file(path, &file, NULL, NULL), S2_OK, "%s missing", path);
        cr_expect_str_eq(out, file, "%s differs from `s2lora completion %s`: regenerate it",
                         path, shells[i][0]);
        /* every subcommand and every visible option is in it */
        int n;
        const s2_cmd_group *g = s2_cli_groups(&n);
        for (int k = 0; k < n; k++)
            for (int s = 0; g[k].subs[s]; s++)
                for (int o = 0; o < g[k].subs[s]->n_opts; o++) {
                    const s2_opt *op = &g[k].subs[s]->opts[o];
                    char want[80];
                    snprintf(want, sizeof want, "--%s", op->name);
                    if (!op->alias_of && !(op->flags & S2_OPT_HIDDEN))
                        cr_expect(strstr(out, want), "%s: %s missing", shells[i][0], want);
                }
        free(out);
        free(file);
    }
    char *out;
    cr_expect_eq(run("bash -n " S2_SOURCE_DIR "/scripts/completion/s2lora.bash", &out), 0, "%s",
                 out);
    free(out);
    /* the bash completion completes: the options of build after "s2lora build --j" */
    cr_expect_eq(run("bash -c 'source " S2_SOURCE_DIR "/scripts/completion/s2lora.bash; "
                     "COMP_WORDS=(s2lora build x.yaml --j); COMP_CWORD=3; _s2lora; "
                     "echo \"${COMPREPLY[@]}\"'", &out), 0, "%s", out);
    cr_expect(strstr(out, "--jobs"), "%s", out);
    free(out);
    cr_expect_eq(run("bash -c 'source " S2_SOURCE_DIR "/scripts/completion/s2lora.bash; "
                     "COMP_WORDS=(s2lora bench attn x.yaml --no-peers --tile f --seqlens 1 "
                     "--cache-dir /tm); COMP_CWORD=10; _s2lora; echo \"${COMPREPLY[@]}\"'",
                     &out), 0, "%s", out);
    cr_expect(strstr(out, "/tmp"), "%s", out);
    free(out);
    cr_expect_eq(run("bash -c 'source " S2_SOURCE_DIR "/scripts/completion/s2lora.bash; "
                     "COMP_WORDS=(s2lora train x.yaml --rope-scaling s); COMP_CWORD=4; _s2lora; "
                     "echo \"${COMPREPLY[@]}\"'", &out), 0, "%s", out);
    cr_expect(strstr(out, "spec"), "%s", out);
    free(out);
}

/* bench lora --json: one object whose rows carry exactly the CSV's columns, same values. */
Test(opts, bench_lora_json_rows_have_the_csv_fields)
{
    s2_bench_lora_row rows[2] = {
        {.M = 4096, .dim = 4096, .r = 8, .base_fwd_ms = 1.0, .lora_fwd_ms = 1.1,
         .base_fb_ms = 2.0, .lora_fb_ms = 2.5},
        {.M = 8192, .dim = 5120, .r = 16, .base_fwd_ms = 3.0, .lora_fwd_ms = 3.3,
         .base_fb_ms = 6.0, .lora_fb_ms = 6.6, .failed = 1},
    };
    s2_buf b = {0};
    s2_cli_bench_lora_csv(rows, 2, &b);
    cr_assert(b.data);
    char *text = s2_cli_bench_lora_json(rows, 2, "H100", "bf16", 20, 1);
    cr_assert(text);
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    cr_assert(j, "%s", je.text);
    cr_expect_str_eq(json_string_value(json_object_get(j, "device")), "H100");
    cr_expect_eq(json_integer_value(json_object_get(j, "errors")), 1);
    json_t *jr = json_object_get(j, "rows");
    cr_assert_eq(json_array_size(jr), 2);
    /* the CSV: header, then the rows */
    char *save = NULL, *line = strtok_r(b.data, "\n", &save);
    char header[512];
    snprintf(header, sizeof header, "%s", line);
    for (size_t i = 0; i < 2; i++) {
        line = strtok_r(NULL, "\n", &save);
        cr_assert(line);
        json_t *row = json_array_get(jr, i);
        char hcopy[512], *hs = NULL, *vs = NULL;
        snprintf(hcopy, sizeof hcopy, "%s", header);
        int cols = 0;
        for (char *h = strtok_r(hcopy, ",", &hs), *v = strtok_r(line, ",", &vs); h && v;
             h = strtok_r(NULL, ",", &hs), v = strtok_r(NULL, ",", &vs), cols++) {
            json_t *x = json_object_get(row, h);
            cr_assert(x, "row %zu: no field '%s' in the JSON", i, h);
            cr_expect(fabs(json_number_value(x) - atof(v)) < 1e-3, "row %zu %s: %g vs %s", i, h,
                      json_number_value(x), v);
        }
        cr_expect_eq((size_t)cols, json_object_size(row), "row %zu: the JSON has other fields", i);
    }
    cr_expect(fabs(json_number_value(json_object_get(json_array_get(jr, 0), "fb_overhead_pct")) -
                   25.0) < 1e-9);
    json_decref(j);
    free(text);
    s2_buf_free(&b);
}

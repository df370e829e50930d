/*
 * cli_sp.c — `s2lora sp-plan`: prints the sequence-parallel plan of a spec (gen/sp_plan.h),
 * what a run over P ranks would hold and exchange a layer. No GPU and no kernels: the trainer
 * does not run sequence parallel yet; this shows the plan its exchange would follow.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen/sp_plan.h"
#include "gen/spec.h"
#include "runtime/cli/cli.h"

#define MAX_SETS 64

static const char sp_help[] =
    "usage: s2lora sp-plan SPEC --sp P [--set KEY=VALUE]... [--align ROWS]\n"
    "\n"
    "Prints the S2-aware sequence-parallel plan of SPEC over P ranks: the rows of the\n"
    "context_length tokens each rank holds (contiguous chunks of ceil(N / P) rows rounded up\n"
    "to --align, default 128), and per rank the key/value rows of other ranks its queries see\n"
    "(from the earlier ranks; in roll mode also the wrapped tail from the last ones), by kv\n"
    "head kind, with the bytes a layer (k+v forward, dk+dv sent back in the backward).\n"
    "It is the plan `s2lora train --sp P` runs (split shift mode; roll mode is shown here\n"
    "but refused by train).\n"
    "  --sp P            ranks (>= 1)\n"
    "  --align ROWS      chunk starts on multiples of ROWS (>= 1, default 128)\n"
    "  --set KEY=VALUE   override a spec value, e.g. --set s2attn.shift_mode=roll\n"
    "Exit status 1 on an error (a P that leaves a rank without rows names the largest\n"
    "valid one), 2 on a usage error.\n";

static int usage(const char *prog, const char *fmt, const char *arg)
{
    fprintf(stderr, "%s sp-plan: ", prog);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry '%s sp-plan --help'.\n", prog);
    return 2;
}

/* A positive decimal int, or -1. */
static int pos_int(const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 1 || v > INT_MAX)
        return -1;
    return (int)v;
}

int s2_cli_sp_plan(const char *prog, int argc, char **argv)
{
    const char *path = NULL;
    s2_spec_override sets[MAX_SETS];
    int n_sets = 0, P = 0, align = S2_SP_DEFAULT_ALIGN;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            return fputs(sp_help, stdout), 0;
        if (a[0] != '-') {
            if (path)
                return usage(prog, "unexpected argument '%s'", a);
            path = a;
            continue;
        }
        if (strcmp(a, "--sp") && strcmp(a, "--align") && strcmp(a, "--set"))
            return usage(prog, "unknown option '%s'", a);
        if (!v)
            return usage(prog, "option '%s' needs a value", a);
        i++;
        if (!strcmp(a, "--set")) {
            if (n_sets == MAX_SETS)
                return usage(prog, "too many --set options (at most %s)", "64");
            sets[n_sets++].text = v;
        } else if (!strcmp(a, "--sp") && (P = pos_int(v)) < 0) {
            return usage(prog, "--sp %s: expected a positive integer (ranks)", v);
        } else if (!strcmp(a, "--align") && (align = pos_int(v)) < 0) {
            return usage(prog, "--align %s: expected a positive integer (rows)", v);
        }
    }
    if (!path)
        return usage(prog, "missing SPEC%s", "");
    if (!P)
        return usage(prog, "missing --sp P%s", "");
    s2_error err = {0};
    s2_spec spec;
    s2_sp_attn a;
    s2_sp_plan plan;
    if (s2_spec_load(path, sets, n_sets, &spec, &err) == S2_OK) {
        s2_sp_attn_from_spec(&spec, &a);
        if (s2_sp_plan_make(&a, P, align, &plan, &err) == S2_OK) {
            s2_buf b = {0};
            printf("spec %s (%s)\n", spec.name, spec.path);
            s2_sp_plan_format(&plan, &b);
            s2_sp_plan_free(&plan);
            if (!b.oom) {
                fputs(b.data, stdout);
                s2_buf_free(&b);
                return 0;
            }
            s2_buf_free(&b);
            s2_error_set(&err, S2_ERR_NOMEM, "sp-plan: out of memory formatting the plan");
        } else {
            s2_error_prefix(&err, "%s", path);
        }
    }
    fprintf(stderr, "%s: %s\n", prog, err.msg ? err.msg : s2_status_to_string(err.status));
    s2_error_clear(&err);
    return 1;
}

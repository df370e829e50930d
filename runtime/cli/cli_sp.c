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
#include <stddef.h>

#include "gen/sp_plan.h"
#include "gen/spec.h"
#include "runtime/cli/cli.h"


typedef struct sp_args {
    const char *spec[1];
    int n_spec;
    s2_spec_override sets[S2_CLI_MAX_SETS];
    int n_sets, sp, align;
} sp_args;

static const s2_opt sp_opts[] = {
    {.name = "sp", .kind = S2_OPT_INT, .metavar = "P", .help = "ranks (>= 1)",
     .off = offsetof(sp_args, sp), .lo = 1, .hi = INT_MAX, .flags = S2_OPT_REQUIRED},
    {.name = "align", .kind = S2_OPT_INT, .metavar = "ROWS",
     .help = "chunk starts on multiples of ROWS (>= 1, default 128)",
     .off = offsetof(sp_args, align), .lo = 1, .hi = INT_MAX},
    S2_OPT_SETS_AT(sp_args, sets, n_sets,
                   "override a spec value, e.g. --set s2attn.shift_mode=roll"),
};

const s2_cmd s2_cmd_sp_plan = {
    .name = "sp-plan",
    .usage = "SPEC --sp P [--set KEY=VALUE]... [--align ROWS]",
    .about = "Prints the S2-aware sequence-parallel plan of SPEC over P ranks: the rows of the\n"
             "context_length tokens each rank holds (contiguous chunks of ceil(N / P) rows rounded\n"
             "up to --align, default 128), and per rank the key/value rows of other ranks its\n"
             "queries see (from the earlier ranks; in roll mode also the wrapped tail from the last\n"
             "ones), by kv head kind, with the bytes a layer (k+v forward, dk+dv sent back in the\n"
             "backward). It is the plan `s2lora train --sp P` runs (split shift mode; roll mode is\n"
             "shown here but refused by train).\n",
    .epilog = "Exit status 1 on an error (a P that leaves a rank without rows names the largest\n"
              "valid one), 2 on a usage error.\n",
    .opts = sp_opts, .n_opts = sizeof sp_opts / sizeof sp_opts[0],
    S2_POS_SPEC(sp_args, spec, n_spec, 1),
};

int s2_cli_sp_plan(const char *prog, int argc, char **argv)
{
    sp_args o = {.align = S2_SP_DEFAULT_ALIGN};
    s2_opts_result r;
    int rc;
    if (!s2_opts_run(&s2_cmd_sp_plan, argc, argv, &o, &r, &rc))
        return rc;
    const char *path = o.spec[0];
    const s2_spec_override *sets = o.sets;
    const int n_sets = o.n_sets, P = o.sp, align = o.align;
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

/*
 * cli.c — the s2lora command line: the table of subcommands, `s2lora --help`, `completion`
 * and `version`, and the dispatch to the subcommands of the other files. Each subcommand
 * parses its arguments (opts.h), calls the library and prints; the library never prints or
 * exits.
 *
 * Exit codes: 0 success, 1 failure (message on stderr), 2 usage error, 3 no CUDA device or
 * driver.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "gen/emit.h"
#include "runtime/cli/cli.h"
#include "runtime/core/jit.h"

#define PROG "s2lora"

/* ---------------------------------------------------------------- completion, version */

typedef struct completion_args {
    const char *shell;
} completion_args;

const s2_cmd s2_cmd_completion = {
    .name = "completion",
    .usage = "bash|zsh",
    .about = "Prints the shell's completion script for s2lora, generated from the same option\n"
             "tables as the parser and --help: `source <(s2lora completion bash)`, or for zsh\n"
             "save it as _s2lora on $fpath. Copies are in scripts/completion/.\n",
    .pos_name = "SHELL", .pos_min = 1, .pos_max = 1,
    .pos_off = offsetof(completion_args, shell),
};

typedef struct no_args {
    int unused;
} no_args;

const s2_cmd s2_cmd_version = {
    .name = "version",
    .usage = "",
    .about = "Prints the versions of s2lora, its generator and NVRTC.\n",
};

static int cmd_completion(const char *prog, int argc, char **argv)
{
    completion_args a = {0};
    s2_opts_result r;
    int rc;
    if (!s2_opts_run(&s2_cmd_completion, argc, argv, &a, &r, &rc))
        return rc;
    int n;
    const s2_cmd_group *g = s2_cli_groups(&n);
    s2_buf b = {0};
    if (s2_opts_completion(a.shell, g, n, &b)) {
        s2_buf_free(&b);
        return s2_opts_usage_error(&s2_cmd_completion, "\"%s\" is not one of: bash, zsh",
                                   a.shell);
    }
    fputs(b.data ? b.data : "", stdout);
    s2_buf_free(&b);
    return b.oom ? 1 : 0;
}

static int cmd_version(const char *prog, int argc, char **argv)
{
    no_args a;
    s2_opts_result r;
    int rc;
    if (!s2_opts_run(&s2_cmd_version, argc, argv, &a, &r, &rc))
        return rc;
    int maj = 0, min = 0;
    s2_error err = {0};
    printf("s2lora %s (%s)\n", S2_VERSION, S2_GEN_VERSION);
    if (s2_jit_nvrtc_version(&maj, &min, &err) == S2_OK)
        printf("NVRTC %d.%d\n", maj, min);
    else
        s2_error_clear(&err);
    return 0;
}

/* ---------------------------------------------------------------- the table */

typedef int (*cmd_fn)(const char *prog, int argc, char **argv);

#define SUBS(...) ((const s2_cmd *const[]){__VA_ARGS__, NULL})

static const struct {
    s2_cmd_group g;
    cmd_fn run; /* the group's own dispatch when it has subcommands */
} cmds[] = {
    {{"gen", "write the generated CUDA sources of a spec", SUBS(&s2_cmd_gen)}, s2_cli_gen},
    {{"build", "generate and NVRTC-build a spec's kernels (no GPU needed)",
      SUBS(&s2_cmd_build)}, s2_cli_build},
    {{"attn", "run the kernels on tensors from a safetensors file", SUBS(&s2_cmd_attn)},
     s2_cli_attn},
    {{"bench", "time the kernels beside the PyTorch peers (bench attn, bench lora)",
      SUBS(&s2_cmd_bench_attn, &s2_cmd_bench_lora)}, s2_cli_bench},
    {{"tune", "tune the kernels on this GPU (or --build-only the space for an arch)",
      SUBS(&s2_cmd_tune)}, s2_cli_tune},
    {{"data", "turn text into a token file (byte-level vocabulary)", SUBS(&s2_cmd_data)},
     s2_cli_data},
    {{"init", "write a freshly initialised model of a spec (HF checkpoint)",
      SUBS(&s2_cmd_init)}, s2_cli_init},
    {{"train", "extend a LLaMA checkpoint's context with LoRA on the generated kernels",
      SUBS(&s2_cmd_train)}, s2_cli_train},
    {{"eval", "perplexity of a model (and adapter) over a token file", SUBS(&s2_cmd_eval)},
     s2_cli_eval},
    {{"logits", "one forward (and backward) of a model, written out for peer checks",
      SUBS(&s2_cmd_logits)}, s2_cli_logits},
    {{"sp-plan", "the rows P sequence-parallel ranks would hold and exchange (no GPU)",
      SUBS(&s2_cmd_sp_plan)}, s2_cli_sp_plan},
    {{"launch", "run a command as N ranks on this host, one a GPU", SUBS(&s2_cmd_launch)},
     s2_cli_launch},
    {{"world", "print this rank's world; try the ranks' rendezvous (no GPU needed)",
      SUBS(&s2_cmd_world)}, s2_cli_world},
    {{"cache", "list or clean the kernel cache (cache list, cache clean)",
      SUBS(&s2_cmd_cache_list, &s2_cmd_cache_clean)}, s2_cli_cache},
    {{"completion", "print the bash or zsh completion script", SUBS(&s2_cmd_completion)},
     cmd_completion},
    {{"version", "print versions", SUBS(&s2_cmd_version)}, cmd_version},
};

#define N_CMDS ((int)(sizeof cmds / sizeof cmds[0]))

const s2_cmd_group *s2_cli_groups(int *n)
{
    static s2_cmd_group g[N_CMDS];
    for (int i = 0; i < N_CMDS; i++)
        g[i] = cmds[i].g;
    *n = N_CMDS;
    return g;
}

const s2_cmd *s2_cli_find(const char *name)
{
    for (int i = 0; i < N_CMDS; i++)
        for (int s = 0; cmds[i].g.subs[s]; s++)
            if (!strcmp(cmds[i].g.subs[s]->name, name))
                return cmds[i].g.subs[s];
    return NULL;
}

static void main_help(FILE *f)
{
    fprintf(f, "usage: s2lora COMMAND [ARGS]\n\n"
               "Generates, builds and runs specialised CUDA kernels for LongLoRA's shifted\n"
               "sparse attention (S²-Attn) from a YAML spec.\n\ncommands:\n");
    for (int i = 0; i < N_CMDS; i++)
        fprintf(f, "  %-10s %s\n", cmds[i].g.name, cmds[i].g.summary);
    fprintf(f, "Run 's2lora COMMAND --help' for a command's options.\n");
}

int s2_cli_main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        main_help(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version"))
        return cmd_version(PROG, 0, argv);
    for (int i = 0; i < N_CMDS; i++)
        if (!strcmp(argv[1], cmds[i].g.name))
            return cmds[i].run(PROG, argc - 2, argv + 2);
    fprintf(stderr, "%s: unknown command '%s'\n", PROG, argv[1]);
    main_help(stderr);
    return 2;
}

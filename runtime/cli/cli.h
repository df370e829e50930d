/*
 * cli.h — subcommands of the s2lora binary that live outside main.c. Each takes the program
 * name and the arguments after the subcommand, prints, and returns the exit code (0 success,
 * 1 failure, 2 usage error, 3 no CUDA device).
 */
#ifndef S2_CLI_H
#define S2_CLI_H

#include <stdio.h>

#include "runtime/core/rt.h"

int s2_cli_train(const char *prog, int argc, char **argv);
int s2_cli_eval(const char *prog, int argc, char **argv);
int s2_cli_logits(const char *prog, int argc, char **argv);
int s2_cli_init(const char *prog, int argc, char **argv);
int s2_cli_sp_plan(const char *prog, int argc, char **argv); /* cli_sp.c */
/* launch.c: the ranks of one host, and what a rank sees of its world */
int s2_cli_launch(const char *prog, int argc, char **argv);
int s2_cli_world(const char *prog, int argc, char **argv);

/* After s2_rt_open, every command that loads kernels has rt's loads print each kernel-cache
 * warning once, as "PROG: kernel cache: ..." on stderr (s2_rt.cache_warn). Here, not in
 * main.c, so that the subcommands of other files need nothing from main.c. */
static inline void s2_cli_cache_warn(void *prog, const char *msg)
{
    fprintf(stderr, "%s: kernel cache: %s\n", (const char *)prog, msg);
}

static inline void s2_cli_show_cache_warnings(s2_rt *rt, const char *prog)
{
    rt->cache_warn = s2_cli_cache_warn;
    rt->cache_warn_arg = (void *)prog;
}

#endif

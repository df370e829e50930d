/*
 * cli.h — the subcommands of the s2lora binary. Each takes the program name and the arguments
 * after the subcommand, prints, and returns the exit code (0 success, 1 failure, 2 usage
 * error, 3 no CUDA device). Each declares its command line as an s2_cmd table (opts.h): the
 * parser, --help and the shell completions all come from these tables.
 */
#ifndef S2_CLI_H
#define S2_CLI_H

#include <stdio.h>

#include "runtime/cli/opts.h"
#include "runtime/core/rt.h"

/* The whole binary: main() is this (main.c), so that the tests can link the rest. */
int s2_cli_main(int argc, char **argv);

/* Every subcommand group, in `s2lora --help` order (cli.c); n set to their number. */
const s2_cmd_group *s2_cli_groups(int *n);
/* The table of a subcommand by its full name ("build", "bench attn"), or NULL. */
const s2_cmd *s2_cli_find(const char *name);

/* cli_kernels.c */
extern const s2_cmd s2_cmd_gen, s2_cmd_build, s2_cmd_attn, s2_cmd_bench_attn, s2_cmd_bench_lora,
    s2_cmd_tune, s2_cmd_data;
int s2_cli_gen(const char *prog, int argc, char **argv);
int s2_cli_build(const char *prog, int argc, char **argv);
int s2_cli_attn(const char *prog, int argc, char **argv);
int s2_cli_bench(const char *prog, int argc, char **argv);
int s2_cli_tune(const char *prog, int argc, char **argv);
int s2_cli_data(const char *prog, int argc, char **argv);
/* bench lora's rows as CSV (its header line first) and as one JSON object (heap, NULL when out
 * of memory): {"bench":"lora", "device", "dtype", "reps", "errors" (cases that ended in an
 * error, not in rows), "rows": [{one key per CSV column, the same names}]}. */
struct s2_bench_lora_row;
void s2_cli_bench_lora_csv(const struct s2_bench_lora_row *rows, int n, s2_buf *b);
char *s2_cli_bench_lora_json(const struct s2_bench_lora_row *rows, int n, const char *device,
                             const char *dtype, int reps, int errors);
/* cli_train.c */
extern const s2_cmd s2_cmd_train, s2_cmd_eval, s2_cmd_logits, s2_cmd_init;
int s2_cli_train(const char *prog, int argc, char **argv);
int s2_cli_eval(const char *prog, int argc, char **argv);
int s2_cli_logits(const char *prog, int argc, char **argv);
int s2_cli_init(const char *prog, int argc, char **argv);
/* cli_sp.c */
extern const s2_cmd s2_cmd_sp_plan;
int s2_cli_sp_plan(const char *prog, int argc, char **argv);
/* launch.c: the ranks of one host, and what a rank sees of its world */
extern const s2_cmd s2_cmd_launch, s2_cmd_world;
int s2_cli_launch(const char *prog, int argc, char **argv);
int s2_cli_world(const char *prog, int argc, char **argv);
/* cli_cache.c: the kernel cache */
extern const s2_cmd s2_cmd_cache_list, s2_cmd_cache_clean;
int s2_cli_cache(const char *prog, int argc, char **argv);

/*
 * A progress line on stderr for a long job (progress.c): on a terminal one line redrawn with
 * \r (at most ten times a second), otherwise a whole line every ~5 s. Thread-safe: the
 * library calls back from its worker threads.
 */
typedef struct s2_cli_progress s2_cli_progress;
s2_cli_progress *s2_cli_progress_start(const char *prog, const char *what, long long total);
/* Adds n done (total 0 keeps the total given at the start). */
void s2_cli_progress_add(s2_cli_progress *p, long long n);
/* Sets done and total (for callbacks that report both). */
void s2_cli_progress_set(s2_cli_progress *p, long long done, long long total);
/* The library's callback shapes, ctx being the s2_cli_progress. */
void s2_cli_progress_unit(void *ctx, const char *unit, int cache_hit);
void s2_cli_progress_bytes(void *ctx, const char *what, uint64_t done, uint64_t total);
/* Ends the line (a TTY's is cleared) and frees p. NULL is fine. */
void s2_cli_progress_end(s2_cli_progress *p);

/* After s2_rt_open, every command that loads kernels has rt's loads print each kernel-cache
 * warning once, as "PROG: kernel cache: ..." on stderr (s2_rt.cache_warn). */
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

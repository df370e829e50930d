/*
 * opts.h — the one option parser of the s2lora binary. Every subcommand declares a table of
 * its options (s2_opt: long name, short form, kind of argument, range or allowed values, help
 * text, the field of the command's argument struct it sets) and its positional arguments, and
 * s2_opts_parse reads argv against it on getopt_long: `--opt=value` and `--opt value`, short
 * forms (`-j 4`, `-j4`), numbers parsed strictly (the whole text, in range, no overflow), each
 * option at most once unless it is repeatable, deprecated spellings accepted with a note.
 * --help, the usage errors, and the bash and zsh completions are generated from the same
 * tables (s2_opts_help, s2_opts_completion).
 *
 * Short forms are the same letter for the same concept in every subcommand: -o --out,
 * -j --jobs, -s --seqlens, -a --arch, -i --in, -m --model, -d --data, -h --help.
 */
#ifndef S2_CLI_OPTS_H
#define S2_CLI_OPTS_H

#include <stddef.h>
#include <stdint.h>

#include "gen/util.h"

typedef enum s2_opt_kind {
    S2_OPT_FLAG,      /* no argument; int field set to 1 */
    S2_OPT_INT,       /* int in [lo, hi] */
    S2_OPT_I64,       /* int64_t in [lo, hi] */
    S2_OPT_U64,       /* uint64_t, decimal or 0x hex, in [lo, hi] (hi 0: no upper bound) */
    S2_OPT_DOUBLE,    /* finite double in [dlo, dhi] (S2_OPT_ABOVE_LO: dlo excluded) */
    S2_OPT_STRING,    /* const char * (argv's) */
    S2_OPT_LIST,      /* "N,N,...": ints in [lo, hi], none empty, none twice; int array + count */
    S2_OPT_ENUM,      /* one of values[]: const char * (the table's spelling) */
    S2_OPT_ENUM_LIST, /* "a,b,...": values[] items; unsigned bit mask (bit i: values[i]) */
    S2_OPT_DURATION,  /* "7d", "12h", "30m", "45s": double seconds, > 0 */
} s2_opt_kind;

enum {
    S2_OPT_REQUIRED = 1u << 0, /* missing: a usage error "missing --name METAVAR" */
    S2_OPT_KEYVAL = 1u << 1,   /* string of the form KEY=VALUE (non-empty KEY) */
    S2_OPT_ABOVE_LO = 1u << 2, /* double: > dlo rather than >= dlo */
    S2_OPT_TO_POS = 1u << 3,   /* the value is one more positional argument (attn --spec) */
    S2_OPT_HIDDEN = 1u << 4,   /* not in --help or the completions (diagnostics) */
};

/* Completion of an option's value or of the positionals. */
typedef enum s2_opt_complete {
    S2_COMPLETE_NONE = 0, /* a value the user types */
    S2_COMPLETE_FILE,
    S2_COMPLETE_DIR,
    S2_COMPLETE_SPEC,     /* *.yaml files */
    S2_COMPLETE_COMMAND,  /* an s2lora subcommand (launch) */
} s2_opt_complete;

typedef struct s2_opt {
    const char *name;     /* long name without "--" */
    char short_name;      /* 0: none */
    s2_opt_kind kind;
    const char *metavar;  /* "N", "DIR", ...; NULL for a flag */
    const char *help;
    size_t off;           /* the field of the command's struct it sets (offsetof) */
    long long lo, hi;     /* integer kinds and list items */
    double dlo, dhi;      /* S2_OPT_DOUBLE */
    const char *const *values; /* S2_OPT_ENUM, S2_OPT_ENUM_LIST: NULL-terminated */
    int max_count;        /* > 0: repeatable (STRING, ENUM) or the list's length; items stored
                             at off (an array), their number at count_off (int) */
    size_t count_off;
    unsigned flags;
    const char *alias_of; /* a deprecated spelling of that option: same field, a note */
    s2_opt_complete complete;
} s2_opt;

/* One subcommand's command line. */
typedef struct s2_cmd {
    const char *name;      /* "build", "bench attn", "cache clean" */
    const char *usage;     /* the synopsis after "usage: " (lines after the first indented) */
    const char *about;     /* the description of --help, before the generated option list */
    const char *epilog;    /* after the option list (exit status, notes); may be NULL */
    const s2_opt *opts;
    int n_opts;
    const char *pos_name;  /* "SPEC", "TEXT"; NULL: none taken */
    int pos_min, pos_max;  /* how many positionals */
    size_t pos_off;        /* const char *[pos_max] */
    size_t pos_count_off;  /* int; pos_max 1 without pos_count_off: off is one const char * */
    int pos_has_count;
    s2_opt_complete pos_complete;
    int stop_at_positional; /* launch: the first positional and all after it are the command */
    const char *unknown_hint; /* appended to "unknown option '--x'" */
} s2_cmd;

#define S2_OPTS_MAX 64
#define S2_OPTS_MSG 512

typedef struct s2_opts_result {
    int help;                 /* --help was given: nothing else was checked */
    int given[S2_OPTS_MAX];   /* times each option (by table index; aliases count on their
                                 target) was given */
    int rest;                 /* stop_at_positional: argv index of the command, argc if none */
    char msg[S2_OPTS_MSG];    /* the usage error */
    char notes[S2_OPTS_MSG];  /* deprecation notes, one a line */
} s2_opts_result;

/*
 * Parses argv[0..argc) (the arguments after the subcommand's name) against c into dst, whose
 * fields the table names; dst keeps its values (defaults) for options not given. 0 on
 * success (or --help: r->help), 2 on a usage error (r->msg says which option and what would
 * be valid). Prints nothing.
 */
int s2_opts_parse(const s2_cmd *c, int argc, char **argv, void *dst, s2_opts_result *r);

/* 1 if the option of that long name was given (its deprecated spellings included). */
int s2_opts_given(const s2_cmd *c, const s2_opts_result *r, const char *name);

/* Appends --help's text of c to b. */
void s2_opts_help(const s2_cmd *c, s2_buf *b);

/*
 * The CLI's side: parses, prints the deprecation notes on stderr, --help on stdout (*exit 0),
 * a usage error as "PROG: CMD: MESSAGE" with the usage line on stderr (*exit 2). Returns 1
 * when the command is to go on, 0 when *exit is the exit code.
 */
int s2_opts_run(const s2_cmd *c, int argc, char **argv, void *dst, s2_opts_result *r,
                int *exit_code);

/* A usage error of c found after parsing: "PROG: CMD: MESSAGE", the usage line; returns 2. */
int s2_opts_usage_error(const s2_cmd *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Every subcommand's table, for the completions (cli.c). */
typedef struct s2_cmd_group {
    const char *name;    /* the word after s2lora: "bench", "cache", "build" */
    const char *summary; /* the one line of `s2lora --help` */
    const s2_cmd *const *subs; /* NULL-terminated: one entry named like the group, or the
                                  group's subcommands ("bench attn", "bench lora") */
} s2_cmd_group;

/* The completion script of the shell ("bash" or "zsh") for groups[0..n); 0, or -1 for an
 * unknown shell. */
int s2_opts_completion(const char *shell, const s2_cmd_group *groups, int n, s2_buf *b);

/* What the spec-taking subcommands share, one shape each (their help texts stay their
 * own): the --set overrides of struct T's array SETS (S2_CLI_MAX_SETS of them, counted in
 * N), the kernel cache directory in field F, and the positional SPEC (1..MAX of them in array
 * F, counted in NF) for an s2_cmd's initialiser. */
#define S2_CLI_MAX_SETS 64
#define S2_OPT_SETS_AT(T, SETS, N, HELP)                                                        \
    {.name = "set", .kind = S2_OPT_STRING, .metavar = "KEY=VALUE", .help = HELP,              \
     .off = offsetof(T, SETS), .max_count = S2_CLI_MAX_SETS, .count_off = offsetof(T, N),      \
     .flags = S2_OPT_KEYVAL}
#define S2_OPT_CACHE_DIR_AT(T, F, HELP)                                                         \
    {.name = "cache-dir", .kind = S2_OPT_STRING, .metavar = "DIR", .help = HELP,               \
     .off = offsetof(T, F), .complete = S2_COMPLETE_DIR}
#define S2_POS_SPEC(T, F, NF, MAX)                                                              \
    .pos_name = "SPEC", .pos_min = 1, .pos_max = MAX, .pos_off = offsetof(T, F),               \
    .pos_count_off = offsetof(T, NF), .pos_has_count = 1, .pos_complete = S2_COMPLETE_SPEC

/* "7d", "12h", "30m", "45s", "2d12h" is not accepted: one number (digits) and one unit; 0 when
 * text is not such a duration (or it overflows). */
int s2_opts_parse_duration(const char *text, double *seconds);

#endif

/*
 * opts.c — the table-driven option parser of every subcommand (opts.h), its --help and its
 * shell completions.
 *
 * getopt_long does the splitting (`--opt=value`, `--opt value`, `-j4`, `-j 4`, permutation of
 * the positionals); two things it does are not wanted here and are undone before it runs: it
 * accepts any unique prefix of a long name (`--jo` for `--jobs`: a prefix that is unique today
 * is ambiguous after the next option is added, and `--seqlen` would silently be `--seqlens`),
 * and it prints its own messages (opterr = 0; every error here names the option and what is
 * valid). A pre-scan therefore checks every long option against the table, exactly, first.
 */
#define _GNU_SOURCE
#include "runtime/cli/opts.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROG "s2lora"
#define VAL_BASE 256 /* getopt_long's val of table entry i: VAL_BASE + i */

static void *field(void *dst, size_t off) { return (char *)dst + off; }

static int takes_value(const s2_opt *o) { return o->kind != S2_OPT_FLAG; }

static int repeatable(const s2_opt *o)
{
    return o->max_count > 0 && (o->kind == S2_OPT_STRING || o->kind == S2_OPT_ENUM);
}

/* The entry an option stands for: itself, or the one its deprecated spelling names. */
static int target_of(const s2_cmd *c, int i)
{
    if (!c->opts[i].alias_of)
        return i;
    for (int k = 0; k < c->n_opts; k++)
        if (!c->opts[k].alias_of && !strcmp(c->opts[k].name, c->opts[i].alias_of))
            return k;
    return i; /* a table error: the alias acts on its own */
}

static int set_msg(s2_opts_result *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int set_msg(s2_opts_result *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->msg, sizeof r->msg, fmt, ap);
    va_end(ap);
    return 2;
}

/* "a, b, c" of a NULL-terminated list. */
static const char *join(const char *const *v, const char *sep, char *buf, size_t n)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; v && v[i] && used < n; i++)
        used += (size_t)snprintf(buf + used, n - used, "%s%s", i ? sep : "", v[i]);
    return buf;
}

/* The integer range as said in messages. */
static const char *int_range(const s2_opt *o, char *buf, size_t n)
{
    const long long top = o->kind == S2_OPT_INT || o->kind == S2_OPT_LIST ? INT_MAX : LLONG_MAX;
    if (o->kind == S2_OPT_U64 && !o->hi)
        snprintf(buf, n, ">= %lld (decimal or 0x hex)", o->lo);
    else if (o->kind == S2_OPT_U64)
        snprintf(buf, n, "in %lld..%lld (decimal or 0x hex)", o->lo, o->hi);
    else if (o->hi >= top)
        snprintf(buf, n, ">= %lld", o->lo);
    else
        snprintf(buf, n, "in %lld..%lld", o->lo, o->hi);
    return buf;
}

/* Digits only (one leading '-' allowed), the whole text, within [lo, hi]. */
static int strict_ll(const char *s, long long lo, long long hi, long long *out)
{
    const char *d = s[0] == '-' ? s + 1 : s;
    if (!*d || strspn(d, "0123456789") != strlen(d))
        return 0;
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return 0;
    *out = v;
    return 1;
}

static int strict_u64(const char *s, unsigned long long lo, unsigned long long hi,
                      unsigned long long *out)
{
    int hex = s[0] == '0' && (s[1] == 'x' || s[1] == 'X');
    const char *d = hex ? s + 2 : s;
    if (!*d || strspn(d, hex ? "0123456789abcdefABCDEF" : "0123456789") != strlen(d))
        return 0;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, hex ? 16 : 10);
    if (errno || *end || v < lo || (hi && v > hi))
        return 0;
    *out = v;
    return 1;
}

int s2_opts_parse_duration(const char *text, double *seconds)
{
    size_t n = strspn(text, "0123456789");
    if (n == 0 || n > 12 || strlen(text) != n + 1)
        return 0;
    const char unit = text[n];
    const double mult = unit == 's' ? 1 : unit == 'm' ? 60 : unit == 'h' ? 3600
                      : unit == 'd' ? 86400 : 0;
    double v = strtod(text, NULL) * mult; /* 12 digits: exact, far from overflow */
    if (!(v > 0))
        return 0;
    *seconds = v;
    return 1;
}

static int list_value(const s2_opt *o, const char *val, void *dst, s2_opts_result *r)
{
    int *out = field(dst, o->off), *count = field(dst, o->count_off);
    unsigned mask = 0;
    int n = 0;
    char range[96], valid[512];
    if (o->kind == S2_OPT_LIST)
        snprintf(valid, sizeof valid, "integers %s", int_range(o, range, sizeof range));
    else
        join(o->values, ", ", valid, sizeof valid);
    const char *p = val;
    for (int item = 1;; item++) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char tok[64];
        if (len == 0)
            return set_msg(r, "--%s: \"%s\": item %d is empty; expected %s separated by commas",
                           o->name, val, item, valid);
        if (len >= sizeof tok)
            return set_msg(r, "--%s: item %d \"%.*s...\" is too long", o->name, item, 20, p);
        memcpy(tok, p, len);
        tok[len] = '\0';
        if (o->kind == S2_OPT_LIST) {
            long long v;
            if (!strict_ll(tok, o->lo, o->hi, &v))
                return set_msg(r, "--%s: item %d \"%s\" is not an integer %s", o->name, item, tok,
                               range);
            for (int i = 0; i < n; i++)
                if (out[i] == v)
                    return set_msg(r, "--%s: %lld is listed twice", o->name, v);
            if (n == o->max_count)
                return set_msg(r, "--%s: \"%s\": at most %d item%s", o->name, val, o->max_count,
                               o->max_count == 1 ? "" : "s");
            out[n++] = (int)v;
        } else {
            int k = 0;
            while (o->values[k] && strcmp(o->values[k], tok))
                k++;
            if (!o->values[k])
                return set_msg(r, "--%s: \"%s\" is not one of: %s", o->name, tok, valid);
            mask |= 1u << k;
        }
        if (!comma)
            break;
        p = comma + 1;
    }
    if (o->kind == S2_OPT_LIST)
        *count = n;
    else
        *(unsigned *)out = mask;
    return 0;
}

/* Applies one value of option o (spelled `used`, which may be a deprecated alias). */
static int apply(const s2_cmd *c, const s2_opt *o, const char *val, void *dst,
                 s2_opts_result *r)
{
    char range[96], valid[512];
    switch (o->kind) {
    case S2_OPT_FLAG:
        *(int *)field(dst, o->off) = 1;
        return 0;
    case S2_OPT_INT:
    case S2_OPT_I64: {
        long long v;
        const long long hi = o->kind == S2_OPT_INT && o->hi > INT_MAX ? INT_MAX : o->hi;
        if (!strict_ll(val, o->lo, hi, &v))
            return set_msg(r, "--%s: \"%s\" is not an integer %s", o->name, val,
                           int_range(o, range, sizeof range));
        if (o->kind == S2_OPT_INT)
            *(int *)field(dst, o->off) = (int)v;
        else
            *(int64_t *)field(dst, o->off) = v;
        return 0;
    }
    case S2_OPT_U64: {
        unsigned long long v;
        if (!strict_u64(val, (unsigned long long)o->lo, (unsigned long long)o->hi, &v))
            return set_msg(r, "--%s: \"%s\" is not an integer %s", o->name, val,
                           int_range(o, range, sizeof range));
        *(uint64_t *)field(dst, o->off) = v;
        return 0;
    }
    case S2_OPT_DOUBLE: {
        char *end;
        errno = 0;
        double v = *val && !isspace((unsigned char)*val) ? strtod(val, &end) : NAN;
        const int above = o->flags & S2_OPT_ABOVE_LO;
        int ok = !isnan(v) && !errno && !*end && isfinite(v) && (above ? v > o->dlo : v >= o->dlo)
                 && v <= o->dhi;
        if (!ok) {
            if (isinf(o->dhi))
                snprintf(range, sizeof range, "%s %g", above ? ">" : ">=", o->dlo);
            else
                snprintf(range, sizeof range, "%s %g and at most %g",
                         above ? "more than" : "at least", o->dlo, o->dhi);
            return set_msg(r, "--%s: \"%s\" is not a number %s", o->name, val, range);
        }
        *(double *)field(dst, o->off) = v;
        return 0;
    }
    case S2_OPT_DURATION: {
        double v;
        if (!s2_opts_parse_duration(val, &v))
            return set_msg(r, "--%s: \"%s\" is not a duration (a whole number and one unit: s, "
                           "m, h or d, e.g. 30m, 12h, 7d)", o->name, val);
        *(double *)field(dst, o->off) = v;
        return 0;
    }
    case S2_OPT_ENUM:
    case S2_OPT_STRING: {
        const char *v = val;
        if (o->kind == S2_OPT_ENUM) {
            int k = 0;
            while (o->values[k] && strcmp(o->values[k], val))
                k++;
            if (!o->values[k])
                return set_msg(r, "--%s: \"%s\" is not one of: %s", o->name, val,
                               join(o->values, ", ", valid, sizeof valid));
            v = o->values[k];
        }
        if ((o->flags & S2_OPT_KEYVAL) && (!strchr(val, '=') || val[0] == '='))
            return set_msg(r, "--%s: \"%s\" is not KEY=VALUE (e.g. --set "
                           "s2attn.group_size=2048)", o->name, val);
        if (repeatable(o)) {
            int *n = field(dst, o->count_off);
            if (*n == o->max_count)
                return set_msg(r, "too many --%s options (at most %d)", o->name, o->max_count);
            ((const char **)field(dst, o->off))[(*n)++] = v;
        } else {
            *(const char **)field(dst, o->off) = v;
        }
        return 0;
    }
    case S2_OPT_LIST:
    case S2_OPT_ENUM_LIST:
        return list_value(o, val, dst, r);
    }
    return 0;
}

/* The entry of an exact long name, or -1 ("help" is -2). */
static int find_long(const s2_cmd *c, const char *name, size_t len)
{
    if (len == 4 && !strncmp(name, "help", 4))
        return -2;
    for (int i = 0; i < c->n_opts; i++)
        if (strlen(c->opts[i].name) == len && !strncmp(c->opts[i].name, name, len))
            return i;
    return -1;
}

static int find_short(const s2_cmd *c, int ch)
{
    for (int i = 0; i < c->n_opts; i++)
        if (c->opts[i].short_name && c->opts[i].short_name == ch)
            return i;
    return -1;
}

/* Long names exactly as the table spells them; a flag given a value. */
static int prescan(const s2_cmd *c, int argc, char **argv, s2_opts_result *r)
{
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--"))
            return 0;
        if (a[0] != '-' || !a[1]) {
            if (c->stop_at_positional)
                return 0;
            continue;
        }
        if (a[1] == '-') {
            const char *eq = strchr(a + 2, '=');
            size_t len = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
            int k = find_long(c, a + 2, len);
            if (k == -1)
                return set_msg(r, "unknown option '%.*s'%s", (int)len + 2, a,
                               c->unknown_hint ? c->unknown_hint : "");
            if (k >= 0 && !takes_value(&c->opts[k]) && eq)
                return set_msg(r, "option '--%s' takes no value", c->opts[k].name);
            if (k >= 0 && takes_value(&c->opts[k]) && !eq)
                i++;
            continue;
        }
        for (const char *p = a + 1; *p; p++) { /* a cluster of short options */
            int k = find_short(c, *p);
            if (k < 0)
                break; /* getopt_long reports it */
            if (takes_value(&c->opts[k])) {
                if (!p[1])
                    i++;
                break;
            }
        }
    }
    return 0;
}

static const char *opt_spelling(const s2_cmd *c, int k, int ch, char *buf, size_t n)
{
    if (k >= 0 && ch == c->opts[k].short_name && ch)
        snprintf(buf, n, "-%c", ch);
    else if (k >= 0)
        snprintf(buf, n, "--%s", c->opts[k].name);
    else
        snprintf(buf, n, "-%c", ch);
    return buf;
}

int s2_opts_parse(const s2_cmd *c, int argc, char **argv, void *dst, s2_opts_result *r)
{
    memset(r, 0, sizeof *r);
    r->rest = argc;
    if (c->n_opts > S2_OPTS_MAX)
        return set_msg(r, "internal: %d options (at most %d)", c->n_opts, S2_OPTS_MAX);
    for (int i = 0; i < argc; i++) { /* --help wins over anything, as it always has */
        if (!strcmp(argv[i], "--"))
            break;
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            r->help = 1;
            return 0;
        }
        if (c->stop_at_positional && argv[i][0] != '-')
            break;
    }
    if (prescan(c, argc, argv, r))
        return 2;
    struct option lo[S2_OPTS_MAX + 2];
    char shorts[3 * S2_OPTS_MAX + 8];
    size_t ns = 0;
    if (c->stop_at_positional)
        shorts[ns++] = '+';
    shorts[ns++] = ':';
    for (int i = 0; i < c->n_opts; i++) {
        const s2_opt *o = &c->opts[i];
        lo[i] = (struct option){o->name, takes_value(o) ? required_argument : no_argument, NULL,
                                VAL_BASE + i};
        if (o->short_name) {
            shorts[ns++] = o->short_name;
            if (takes_value(o))
                shorts[ns++] = ':';
        }
    }
    shorts[ns] = '\0';
    lo[c->n_opts] = (struct option){"help", no_argument, NULL, 'h'};
    lo[c->n_opts + 1] = (struct option){0, 0, 0, 0};
    /* getopt_long wants argc + 1 names, argv[0] first: the subcommand's own name. */
    char **av = calloc((size_t)argc + 2, sizeof *av);
    if (!av)
        return set_msg(r, "out of memory");
    av[0] = (char *)c->name;
    memcpy(av + 1, argv, (size_t)argc * sizeof *av);
    opterr = 0;
    optind = 0; /* glibc: a full reinitialisation, for the next parse in this process */
    int rc = 0, ch, n_to_pos = 0;
    struct to_pos {
        const char *val, *opt;
    } to_pos[8];
    while (!rc && (ch = getopt_long(argc + 1, av, shorts, lo, NULL)) != -1) {
        char sp[80];
        if (ch == '?' || ch == ':') {
            int k = optopt >= VAL_BASE ? optopt - VAL_BASE : find_short(c, optopt);
            if (ch == ':')
                rc = set_msg(r, "option '%s' needs a value", opt_spelling(c, k, optopt, sp,
                                                                          sizeof sp));
            else if (optopt && optopt < VAL_BASE)
                rc = set_msg(r, "unknown option '-%c'%s", optopt,
                             c->unknown_hint ? c->unknown_hint : "");
            else
                rc = set_msg(r, "unknown option '%s'%s", av[optind - 1],
                             c->unknown_hint ? c->unknown_hint : "");
            break;
        }
        int k = ch >= VAL_BASE ? ch - VAL_BASE : find_short(c, ch);
        if (k < 0) {
            rc = set_msg(r, "unknown option '-%c'", ch);
            break;
        }
        const s2_opt *used = &c->opts[k];
        const int t = target_of(c, k);
        const s2_opt *o = &c->opts[t];
        if (used->alias_of) {
            size_t n = strlen(r->notes);
            if (o->flags & S2_OPT_TO_POS)
                snprintf(r->notes + n, sizeof r->notes - n, "%s: %s: --%s is deprecated: give %s "
                         "as an argument (%s %s %s ...)\n", PROG, c->name, used->name,
                         c->pos_name, PROG, c->name, c->pos_name);
            else
                snprintf(r->notes + n, sizeof r->notes - n, "%s: %s: --%s is deprecated: use "
                         "--%s\n", PROG, c->name, used->name, o->name);
        }
        if (++r->given[t] > 1 && !repeatable(o) && !(o->flags & S2_OPT_TO_POS)) {
            rc = set_msg(r, "--%s is given twice; it is taken once%s", o->name,
                         used->alias_of ? " (counting its old spelling)" : "");
            break;
        }
        if (o->flags & S2_OPT_TO_POS) { /* after the positionals, below */
            if (n_to_pos < 8)
                to_pos[n_to_pos++] = (struct to_pos){optarg, o->name};
            continue;
        }
        rc = apply(c, o, takes_value(o) ? optarg : NULL, dst, r);
    }
    const int first_pos = optind - 1; /* in argv's numbering */
    if (!rc && c->stop_at_positional) {
        /* "--" ends the options: getopt_long stepped over it already */
        r->rest = first_pos < argc ? first_pos : argc;
        memcpy(argv, av + 1, (size_t)argc * sizeof *argv); /* getopt_long's order */
    } else if (!rc) {
        int zero = 0, *n = c->pos_has_count ? field(dst, c->pos_count_off) : &zero;
        for (int i = first_pos; !rc && i < argc; i++) {
            const char *a = av[i + 1];
            if (*n == c->pos_max) {
                if (!c->pos_max)
                    rc = set_msg(r, "unexpected argument '%s' (%s takes no %s)", a, c->name,
                                 "positional arguments");
                else if (c->pos_max == 1)
                    rc = set_msg(r, "unexpected argument '%s' (one %s only)", a, c->pos_name);
                else
                    rc = set_msg(r, "too many %ss: '%s' (at most %d)", c->pos_name, a,
                                 c->pos_max);
                break;
            }
            if (c->pos_has_count)
                ((const char **)field(dst, c->pos_off))[(*n)++] = a;
            else
                *(const char **)field(dst, c->pos_off) = a, *n = 1;
        }
        for (int i = 0; !rc && i < n_to_pos; i++) { /* the old spelling of a positional */
            if (!c->pos_has_count || *n == c->pos_max)
                rc = set_msg(r, "--%s %s: one %s only, and it is given already", to_pos[i].opt,
                             to_pos[i].val, c->pos_name);
            else
                ((const char **)field(dst, c->pos_off))[(*n)++] = to_pos[i].val;
        }
        if (!rc && *n < c->pos_min)
            rc = set_msg(r, "missing %s", c->pos_name);
    }
    for (int i = 0; !rc && i < c->n_opts; i++)
        if ((c->opts[i].flags & S2_OPT_REQUIRED) && !r->given[i])
            rc = set_msg(r, "missing --%s %s", c->opts[i].name,
                         c->opts[i].metavar ? c->opts[i].metavar : "");
    free(av);
    return rc;
}

int s2_opts_given(const s2_cmd *c, const s2_opts_result *r, const char *name)
{
    int k = find_long(c, name, strlen(name));
    return k >= 0 && r->given[target_of(c, k)] > 0;
}

/* ------------------------------------------------------------------ the CLI's side */

static void print_usage_line(FILE *f, const s2_cmd *c)
{
    fprintf(f, "usage: %s %s %s\nTry '%s %s --help'.\n", PROG, c->name, c->usage, PROG,
            c->name);
}

int s2_opts_usage_error(const s2_cmd *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: %s: ", PROG, c->name);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    print_usage_line(stderr, c);
    return 2;
}

int s2_opts_run(const s2_cmd *c, int argc, char **argv, void *dst, s2_opts_result *r,
                int *exit_code)
{
    int rc = s2_opts_parse(c, argc, argv, dst, r);
    fputs(r->notes, stderr);
    if (rc) {
        *exit_code = s2_opts_usage_error(c, "%s", r->msg);
        return 0;
    }
    if (r->help) {
        s2_buf b = {0};
        s2_opts_help(c, &b);
        fputs(b.data ? b.data : "", stdout);
        s2_buf_free(&b);
        *exit_code = 0;
        return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------ --help */

/* The value's name in --help: the metavar, or the allowed values. */
static const char *metavar(const s2_opt *o, char *buf, size_t n)
{
    if (o->kind == S2_OPT_FLAG)
        return "";
    if (o->metavar)
        return o->metavar;
    if (o->values)
        return join(o->values, "|", buf, n);
    return "VALUE";
}

/* text, wrapped at 100 columns, every line after the first indented by indent. */
static void wrapped(s2_buf *b, const char *text, int col, int indent)
{
    const char *p = text;
    while (*p) {
        size_t word = strcspn(p, " ");
        if (col > indent && col + 1 + (int)word > 100) {
            s2_buf_printf(b, "\n%*s", indent, "");
            col = indent;
        } else if (col > indent) {
            s2_buf_append(b, " ", 1);
            col++;
        }
        s2_buf_append(b, p, word);
        col += (int)word;
        p += word;
        while (*p == ' ')
            p++;
    }
    s2_buf_append(b, "\n", 1);
}

void s2_opts_help(const s2_cmd *c, s2_buf *b)
{
    s2_buf_printf(b, "usage: %s %s %s\n\n%s", PROG, c->name, c->usage, c->about);
    s2_buf_printf(b, "\noptions:\n");
    for (int i = 0; i <= c->n_opts; i++) {
        const s2_opt *o = i < c->n_opts ? &c->opts[i] : NULL;
        if (o && (o->flags & S2_OPT_HIDDEN))
            continue;
        char head[160], mv[256], extra[320] = "";
        if (!o) {
            snprintf(head, sizeof head, "  -h, --help");
        } else {
            const char *m = metavar(o, mv, sizeof mv);
            char sh[8] = "    ";
            if (o->short_name)
                snprintf(sh, sizeof sh, "-%c, ", o->short_name);
            snprintf(head, sizeof head, "  %s--%s%s%s", sh, o->name, *m ? " " : "", m);
            if (o->alias_of)
                snprintf(extra, sizeof extra, "deprecated spelling of %s%s", 
                         o->flags & S2_OPT_TO_POS ? "the positional " : "--",
                         o->flags & S2_OPT_TO_POS ? c->pos_name : o->alias_of);
            else if (repeatable(o))
                snprintf(extra, sizeof extra, "(repeatable, at most %d)", o->max_count);
        }
        s2_buf_printf(b, "%s", head);
        int col = (int)strlen(head);
        if (col > 29) {
            s2_buf_printf(b, "\n%30s", "");
            col = 30;
        } else {
            s2_buf_printf(b, "%*s", 30 - col, "");
            col = 30;
        }
        char text[1024];
        snprintf(text, sizeof text, "%s%s%s", !o ? "this help" : o->alias_of ? "" : o->help,
                 *extra && o && !o->alias_of ? " " : "", extra);
        wrapped(b, text, col, 30);
    }
    if (c->epilog)
        s2_buf_printf(b, "\n%s", c->epilog);
}

/* ------------------------------------------------------------------ completions */

static int visible(const s2_opt *o) { return !o->alias_of && !(o->flags & S2_OPT_HIDDEN); }

/* The bash words that complete a value of this kind (compgen arguments). */
static void bash_value(s2_buf *b, const s2_opt *o)
{
    char v[512];
    if (o->values)
        s2_buf_printf(b, "COMPREPLY=($(compgen -W \"%s\" -- \"$cur\"))",
                      join(o->values, " ", v, sizeof v));
    else if (o->complete == S2_COMPLETE_DIR)
        s2_buf_printf(b, "COMPREPLY=($(compgen -d -- \"$cur\"))");
    else if (o->complete == S2_COMPLETE_FILE)
        s2_buf_printf(b, "COMPREPLY=($(compgen -f -- \"$cur\"))");
    else if (o->complete == S2_COMPLETE_SPEC)
        s2_buf_printf(b, "_s2lora_specs");
    else
        s2_buf_printf(b, "COMPREPLY=()");
}

static void bash_cmd(s2_buf *b, const s2_cmd *c)
{
    s2_buf_printf(b, "    \"%s\")\n        case \"$prev\" in\n", c->name);
    for (int i = 0; i < c->n_opts; i++) {
        const s2_opt *o = &c->opts[i];
        if (!takes_value(o) || !visible(o))
            continue;
        s2_buf_printf(b, "        --%s", o->name);
        if (o->short_name)
            s2_buf_printf(b, "|-%c", o->short_name);
        s2_buf_printf(b, ") ");
        bash_value(b, o);
        s2_buf_printf(b, "; return ;;\n");
    }
    s2_buf_printf(b, "        esac\n        if [[ $cur == -* ]]; then\n"
                     "            COMPREPLY=($(compgen -W \"");
    for (int i = 0; i < c->n_opts; i++)
        if (visible(&c->opts[i]))
            s2_buf_printf(b, "--%s ", c->opts[i].name);
    s2_buf_printf(b, "--help\" -- \"$cur\"))\n            return\n        fi\n");
    if (c->pos_max > 0 || c->stop_at_positional) {
        s2_buf_printf(b, "        ");
        switch (c->pos_complete) {
        case S2_COMPLETE_SPEC:
            s2_buf_printf(b, "_s2lora_specs");
            break;
        case S2_COMPLETE_COMMAND:
            s2_buf_printf(b, "COMPREPLY=($(compgen -W \"$_s2lora_commands\" -- \"$cur\"))");
            break;
        case S2_COMPLETE_DIR:
            s2_buf_printf(b, "COMPREPLY=($(compgen -d -- \"$cur\"))");
            break;
        default:
            s2_buf_printf(b, "COMPREPLY=($(compgen -f -- \"$cur\"))");
        }
        s2_buf_printf(b, "\n");
    }
    s2_buf_printf(b, "        ;;\n");
}

static int has_subs(const s2_cmd_group *g)
{
    return g->subs[0] && strcmp(g->subs[0]->name, g->name);
}

static void bash_script(const s2_cmd_group *groups, int n, s2_buf *b)
{
    s2_buf_printf(b, "# bash completion for s2lora: generated by `s2lora completion bash`; do not "
                     "edit.\n# Load it with: source <(s2lora completion bash)\n\n"
                     "_s2lora_commands=\"");
    for (int g = 0; g < n; g++)
        s2_buf_printf(b, "%s%s", g ? " " : "", groups[g].name);
    s2_buf_printf(b, "\"\n\n_s2lora_specs()\n{\n"
                     "    COMPREPLY=($(compgen -f -X '!*.yaml' -- \"$cur\") "
                     "$(compgen -d -S / -- \"$cur\"))\n}\n\n"
                     "_s2lora()\n{\n"
                     "    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}\n"
                     "    if ((COMP_CWORD == 1)); then\n"
                     "        COMPREPLY=($(compgen -W \"$_s2lora_commands --help\" -- \"$cur\"))"
                     "\n        return\n    fi\n"
                     "    local key=${COMP_WORDS[1]}\n    case $key in\n");
    for (int g = 0; g < n; g++) {
        if (!has_subs(&groups[g]))
            continue;
        s2_buf_printf(b, "    %s)\n        if ((COMP_CWORD == 2)); then\n"
                         "            COMPREPLY=($(compgen -W \"", groups[g].name);
        for (int s = 0; groups[g].subs[s]; s++)
            s2_buf_printf(b, "%s ", groups[g].subs[s]->name + strlen(groups[g].name) + 1);
        s2_buf_printf(b, "--help\" -- \"$cur\"))\n            return\n        fi\n"
                         "        key=\"$key ${COMP_WORDS[2]}\" ;;\n");
    }
    s2_buf_printf(b, "    esac\n    case $key in\n");
    for (int g = 0; g < n; g++)
        for (int s = 0; groups[g].subs[s]; s++)
            bash_cmd(b, groups[g].subs[s]);
    s2_buf_printf(b, "    esac\n}\n\ncomplete -F _s2lora s2lora\n");
}

/* Help text for zsh's brackets: up to the first parenthesis or semicolon, at most ~60
 * characters (whole words), brackets and colons (which _arguments reads) left out, quotes
 * closed and reopened around an apostrophe. */
static void zsh_help(s2_buf *b, const char *help)
{
    size_t n = strcspn(help, "(;");
    while (n > 0 && help[n - 1] == ' ')
        n--;
    if (n > 60) {
        n = 60;
        while (n > 0 && help[n] != ' ')
            n--;
    }
    for (size_t i = 0; i < n; i++) {
        const char ch = help[i];
        if (ch == '\'')
            s2_buf_printf(b, "'\\''");
        else if (ch != '[' && ch != ']' && ch != ':' && ch != '\\' && ch != '`')
            s2_buf_append(b, &ch, 1);
    }
}

static void zsh_action(s2_buf *b, const s2_opt *o)
{
    char v[512];
    if (o->values)
        s2_buf_printf(b, "(%s)", join(o->values, " ", v, sizeof v));
    else if (o->complete == S2_COMPLETE_DIR)
        s2_buf_printf(b, "_files -/");
    else if (o->complete == S2_COMPLETE_FILE)
        s2_buf_printf(b, "_files");
    else if (o->complete == S2_COMPLETE_SPEC)
        s2_buf_printf(b, "_files -g \"*.yaml\"");
    else
        s2_buf_printf(b, " ");
}

static void zsh_cmd(s2_buf *b, const s2_cmd *c)
{
    s2_buf_printf(b, "    \"%s\")\n        _arguments -s -S \\\n", c->name);
    for (int i = 0; i < c->n_opts; i++) {
        const s2_opt *o = &c->opts[i];
        if (!visible(o))
            continue;
        const char *star = repeatable(o) ? "*" : "";
        s2_buf_printf(b, "            ");
        if (o->short_name && *star) /* repeatable: no exclusion of itself */
            s2_buf_printf(b, "'*'{-%c,--%s}'[", o->short_name, o->name);
        else if (o->short_name)
            s2_buf_printf(b, "'(-%c --%s)'{-%c,--%s}'[", o->short_name, o->name,
                          o->short_name, o->name);
        else
            s2_buf_printf(b, "'%s--%s[", star, o->name);
        zsh_help(b, o->help);
        s2_buf_printf(b, "]");
        if (takes_value(o)) {
            s2_buf_printf(b, ":%s:", o->metavar ? o->metavar : "value");
            zsh_action(b, o);
        }
        s2_buf_printf(b, "' \\\n");
    }
    s2_buf_printf(b, "            '(- *)'{-h,--help}'[this help]'");
    if (c->stop_at_positional)
        s2_buf_printf(b, " \\\n            ':command:(${_s2lora_commands})' \\\n"
                         "            '*::arguments:_normal'");
    else if (c->pos_max > 0) {
        const char *act = c->pos_complete == S2_COMPLETE_SPEC ? "_files -g \"*.yaml\""
                        : c->pos_complete == S2_COMPLETE_DIR  ? "_files -/" : "_files";
        s2_buf_printf(b, " \\\n            '%s:%s:%s'", c->pos_max > 1 ? "*" : "", c->pos_name,
                      act);
    }
    s2_buf_printf(b, "\n        ;;\n");
}

static void zsh_script(const s2_cmd_group *groups, int n, s2_buf *b)
{
    s2_buf_printf(b, "#compdef s2lora\n# zsh completion for s2lora: generated by `s2lora "
                     "completion zsh`; do not edit.\n# Put it on $fpath as _s2lora, or load it "
                     "with: source <(s2lora completion zsh)\n\n"
                     "_s2lora_commands=(");
    for (int g = 0; g < n; g++)
        s2_buf_printf(b, "%s%s", g ? " " : "", groups[g].name);
    s2_buf_printf(b, ")\n\n_s2lora()\n{\n    local -a cmds\n    cmds=(\n");
    for (int g = 0; g < n; g++) {
        s2_buf_printf(b, "        '%s:", groups[g].name);
        zsh_help(b, groups[g].summary);
        s2_buf_printf(b, "'\n");
    }
    s2_buf_printf(b, "    )\n    if ((CURRENT == 2)); then\n        _describe command cmds\n"
                     "        return\n    fi\n    local key=$words[2]\n    case $key in\n");
    for (int g = 0; g < n; g++) {
        if (!has_subs(&groups[g]))
            continue;
        s2_buf_printf(b, "    %s)\n        if ((CURRENT == 3)); then\n            compadd --",
                      groups[g].name);
        for (int s = 0; groups[g].subs[s]; s++)
            s2_buf_printf(b, " %s", groups[g].subs[s]->name + strlen(groups[g].name) + 1);
        s2_buf_printf(b, "\n            return\n        fi\n        key=\"$key $words[3]\"\n"
                         "        shift words\n        ((CURRENT--))\n        ;;\n");
    }
    s2_buf_printf(b, "    esac\n    shift words\n    ((CURRENT--))\n    case $key in\n");
    for (int g = 0; g < n; g++)
        for (int s = 0; groups[g].subs[s]; s++)
            zsh_cmd(b, groups[g].subs[s]);
    s2_buf_printf(b, "    esac\n}\n\nif [[ $zsh_eval_context[-1] == loadautofunc ]]; then\n"
                     "    _s2lora \"$@\"\nelse\n    compdef _s2lora s2lora\nfi\n");
}

int s2_opts_completion(const char *shell, const s2_cmd_group *groups, int n, s2_buf *b)
{
    if (!strcmp(shell, "bash"))
        bash_script(groups, n, b);
    else if (!strcmp(shell, "zsh"))
        zsh_script(groups, n, b);
    else
        return -1;
    return 0;
}

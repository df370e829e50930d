/*
 * cli_cache.c — `s2lora cache list` and `s2lora cache clean`: the kernel cache's entries, and
 * the removal of old ones (runtime/core/cache.h does the work and prints nothing).
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "runtime/cli/cli.h"
#include "runtime/core/cache.h"
#include "runtime/core/jit.h"

typedef struct cache_args {
    const char *cache_dir;
    int json, all, dry_run;
    double older_than;
} cache_args;

#define OPT_DIR                                                                                 \
    S2_OPT_CACHE_DIR_AT(cache_args, cache_dir, "the cache (default $S2LORA_CACHE_DIR, else "   \
                                               "$XDG_CACHE_HOME/s2lora, else ~/.cache/s2lora)")

static const s2_opt list_opts[] = {
    OPT_DIR,
    {.name = "json", .kind = S2_OPT_FLAG, .help = "one JSON object on stdout instead of a table",
     .off = offsetof(cache_args, json)},
};

const s2_cmd s2_cmd_cache_list = {
    .name = "cache list",
    .usage = "[--cache-dir DIR] [--json]",
    .about = "Lists the kernel cache's entries, least recently used first: key, the spec and\n"
             "unit it was built from (from its source's banner; the kernels otherwise), arch,\n"
             "size, age (since it was written) and last use (the last build that loaded it).\n",
    .opts = list_opts, .n_opts = sizeof list_opts / sizeof list_opts[0],
};

static const s2_opt clean_opts[] = {
    OPT_DIR,
    {.name = "older-than", .kind = S2_OPT_DURATION, .metavar = "D",
     .help = "remove the entries not used for longer than D: a whole number and s, m, h or d "
             "(30m, 12h, 7d)",
     .off = offsetof(cache_args, older_than)},
    {.name = "all", .kind = S2_OPT_FLAG, .help = "remove every entry",
     .off = offsetof(cache_args, all)},
    {.name = "dry-run", .kind = S2_OPT_FLAG, .help = "remove nothing; list what would go",
     .off = offsetof(cache_args, dry_run)},
};

const s2_cmd s2_cmd_cache_clean = {
    .name = "cache clean",
    .usage = "(--older-than D | --all) [--dry-run] [--cache-dir DIR]",
    .about = "Removes whole kernel-cache entries (KEY.cubin, KEY.cu, KEY.log): those not used for\n"
             "longer than D, or all of them. Nothing else in the directory is touched (the tuning\n"
             "databases, files being written), and an entry without its KEY.cubin is left alone\n"
             "for an hour (a build may be writing it). Safe while builds run: a build that\n"
             "wanted a removed entry builds it again.\n",
    .opts = clean_opts, .n_opts = sizeof clean_opts / sizeof clean_opts[0],
};

/* "3d", "5h", "12m", "40s" */
static const char *ago(int64_t s, char *buf, size_t n)
{
    if (s < 0)
        s = 0;
    if (s >= 86400)
        snprintf(buf, n, "%lldd", (long long)(s / 86400));
    else if (s >= 3600)
        snprintf(buf, n, "%lldh", (long long)(s / 3600));
    else if (s >= 60)
        snprintf(buf, n, "%lldm", (long long)(s / 60));
    else
        snprintf(buf, n, "%llds", (long long)s);
    return buf;
}

/* What an entry was built from, for the table. */
static const char *what(const s2_cache_entry *e, char *buf, size_t n)
{
    if (e->spec[0])
        snprintf(buf, n, "%s/%s", e->spec, e->unit[0] ? e->unit : "?");
    else if (e->ok && e->h.n_kernels)
        snprintf(buf, n, "%s%s", e->h.kernels[0], e->h.n_kernels > 1 ? ",..." : "");
    else
        snprintf(buf, n, "?");
    return buf;
}

static int resolve_dir(const cache_args *a, char *dir, size_t n)
{
    s2_error err = {0};
    s2_jit_opts jo = {.cache_dir = a->cache_dir};
    if (s2_jit_cache_dir(&jo, dir, n, &err) == S2_OK)
        return 0;
    fprintf(stderr, "s2lora: %s\n", err.msg ? err.msg : "cache directory");
    s2_error_clear(&err);
    return 1;
}

static void print_rows(const s2_cache_entry *v, int n, int64_t now)
{
    printf("%-16s %-32s %-7s %9s %5s %9s\n", "key", "spec/unit", "arch", "KiB", "age",
           "last used");
    for (int i = 0; i < n; i++) {
        char w[160], a[32], u[32];
        printf("%-16.16s %-32s %-7s %9.1f %5s %9s%s%s\n", v[i].key, what(&v[i], w, sizeof w),
               v[i].ok ? v[i].h.arch : "?", v[i].bytes / 1024.0, ago(now - v[i].written, a, sizeof a),
               ago(now - v[i].used, u, sizeof u), v[i].ok ? "" : "  ", v[i].ok ? "" : v[i].problem);
    }
}

static int cache_list(int argc, char **argv)
{
    cache_args a = {0};
    s2_opts_result r;
    int rc;
    if (!s2_opts_run(&s2_cmd_cache_list, argc, argv, &a, &r, &rc))
        return rc;
    char dir[4096];
    if (resolve_dir(&a, dir, sizeof dir))
        return 1;
    s2_error err = {0};
    s2_cache_entry *v;
    int n;
    if (s2_cache_list(dir, &v, &n, &err)) {
        fprintf(stderr, "s2lora: %s\n", err.msg);
        s2_error_clear(&err);
        return 1;
    }
    const int64_t now = (int64_t)time(NULL);
    uint64_t total = 0;
    for (int i = 0; i < n; i++)
        total += v[i].bytes;
    if (a.json) {
        json_t *rows = json_array();
        for (int i = 0; i < n; i++) {
            const s2_cache_entry *e = &v[i];
            json_t *k = json_array();
            for (int j = 0; e->ok && j < e->h.n_kernels; j++)
                json_array_append_new(k, json_string(e->h.kernels[j]));
            json_t *row = json_pack("{s:s, s:s, s:s, s:s, s:o, s:I, s:I, s:I, s:I, s:b}", "key",
                                    e->key, "spec", e->spec, "unit", e->unit, "arch",
                                    e->ok ? e->h.arch : "", "kernels", k, "bytes",
                                    (json_int_t)e->bytes, "age_s", (json_int_t)(now - e->written),
                                    "written", (json_int_t)e->written, "last_used",
                                    (json_int_t)e->used, "ok", e->ok);
            if (row && !e->ok)
                json_object_set_new(row, "problem", json_string(e->problem));
            json_array_append_new(rows, row);
        }
        json_t *doc = json_pack("{s:s, s:i, s:I, s:o}", "dir", dir, "entries", n, "bytes",
                                (json_int_t)total, "rows", rows);
        char *text = doc ? json_dumps(doc, JSON_INDENT(1)) : NULL;
        json_decref(doc);
        free(v);
        if (!text) {
            fprintf(stderr, "s2lora: cache list: out of memory\n");
            return 1;
        }
        puts(text);
        free(text);
        return 0;
    }
    printf("cache %s: %d entries, %.1f MiB\n", dir, n, total / 1048576.0);
    if (n)
        print_rows(v, n, now);
    free(v);
    return 0;
}

static int cache_clean(int argc, char **argv)
{
    cache_args a = {0};
    s2_opts_result r;
    int rc;
    if (!s2_opts_run(&s2_cmd_cache_clean, argc, argv, &a, &r, &rc))
        return rc;
    if (a.all && a.older_than > 0)
        return s2_opts_usage_error(&s2_cmd_cache_clean, "--all and --older-than exclude each "
                                   "other");
    if (!a.all && !(a.older_than > 0))
        return s2_opts_usage_error(&s2_cmd_cache_clean, "say what to remove: --older-than D "
                                   "(e.g. 7d) or --all");
    char dir[4096];
    if (resolve_dir(&a, dir, sizeof dir))
        return 1;
    s2_cache_clean_opts o = {.older_than_s = a.older_than, .all = a.all, .dry_run = a.dry_run};
    s2_error err = {0};
    s2_cache_entry *v;
    int n;
    uint64_t bytes;
    s2_status st = s2_cache_clean(dir, &o, &v, &n, &bytes, &err);
    const int64_t now = (int64_t)time(NULL);
    if (n && a.dry_run)
        print_rows(v, n, now);
    printf("%s %d entr%s (%.1f MiB) from %s\n", a.dry_run ? "would remove" : "removed", n,
           n == 1 ? "y" : "ies", bytes / 1048576.0, dir);
    free(v);
    if (st) {
        fprintf(stderr, "s2lora: %s\n", err.msg);
        s2_error_clear(&err);
        return 1;
    }
    return 0;
}

static int cache_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "s2lora: cache: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nusage: s2lora cache list [--cache-dir DIR] [--json]\n"
                    "       s2lora cache clean (--older-than D | --all) [--dry-run] "
                    "[--cache-dir DIR]\n");
    return 2;
}

int s2_cli_cache(const char *prog, int argc, char **argv)
{
    if (argc < 1)
        return cache_usage("missing what to do%s (valid: list, clean)", "");
    if (!strcmp(argv[0], "list"))
        return cache_list(argc - 1, argv + 1);
    if (!strcmp(argv[0], "clean"))
        return cache_clean(argc - 1, argv + 1);
    if (!strcmp(argv[0], "--help") || !strcmp(argv[0], "-h")) {
        s2_buf b = {0};
        s2_opts_help(&s2_cmd_cache_list, &b);
        s2_buf_printf(&b, "\n");
        s2_opts_help(&s2_cmd_cache_clean, &b);
        fputs(b.data ? b.data : "", stdout);
        s2_buf_free(&b);
        return 0;
    }
    return cache_usage("unknown '%s' (valid: list, clean)", argv[0]);
}

/*
 * test_tune_db.c — the tuning database: the line format, its key order and sort, names and
 * shape classes, every class of corrupt or impossible line (on load, on import and on put),
 * stale generators, local measurements over imported ones, import/export, processes saving at
 * once, atomic saves, and the errors a user sees. Each test has its own directory.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>

#include <dirent.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "gen/emit.h"
#include "gen/plan.h"
#include "runtime/tune/tune.h"
#include "runtime/tune/tune_db.h"

#define H100 "NVIDIA H100 80GB HBM3"
#define H100_FILE "tune-nvidia-h100-80gb-hbm3.jsonl"

/* ------------------------------------------------------------------------ */
/* Fixture and helpers                                                      */

static char dir[64];
static char db_path[256];

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/s2_test_tunedb.XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(db_path, sizeof db_path, "%s/" H100_FILE, dir);
}

static void remove_dir(void)
{
    chmod(dir, 0755); /* a test may have made it read-only */
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(tunedb, .init = make_dir, .fini = remove_dir);

/* 64 hex digits that differ per i. */
static void sha_of(int i, char hex[65])
{
    char seed[32];
    uint8_t h[32];
    snprintf(seed, sizeof seed, "spec-%d", i);
    s2_sha256(seed, strlen(seed), h);
    s2_hex(h, 32, hex);
}

/* A valid entry; i picks the spec hash, so distinct i are distinct keys. */
static s2_tunedb_entry entry(int i)
{
    s2_tunedb_entry e = {0};
    snprintf(e.device, sizeof e.device, H100);
    snprintf(e.arch, sizeof e.arch, "sm_90a");
    snprintf(e.kernel, sizeof e.kernel, "attn_fwd");
    sha_of(i, e.spec_sha256);
    snprintf(e.shape, sizeof e.shape, "N<=16384");
    s2_attn_tile t = s2_plan_default_tile("sm_90a", 128);
    s2_plan_tile_str(&t, e.tile, sizeof e.tile);
    e.default_ms = 1.23;
    e.tuned_ms = 0.98;
    snprintf(e.gen, sizeof e.gen, "%s", S2_GEN_VERSION);
    snprintf(e.nvrtc, sizeof e.nvrtc, "13.0");
    snprintf(e.when, sizeof e.when, "2026-11-25T18:00:00Z");
    return e;
}

/* This machine's UTC time moved by seconds, in the "when" form. */
static const char *when_from_now(long seconds, char when[21])
{
    time_t t = time(NULL) + seconds;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(when, 21, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return when;
}

/* The shortest of %.15g, %.16g, %.17g that reads back as v. */
static const char *num(double v, char buf[40])
{
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, 40, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            break;
    }
    return buf;
}

/* The line the format promises for e (fixed key order, shortest numbers). */
static void line_of(const s2_tunedb_entry *e, char *buf, size_t n)
{
    char d[40], t[40];
    snprintf(buf, n,
             "{\"v\":1, \"device\":\"%s\", \"arch\":\"%s\", \"kernel\":\"%s\", "
             "\"spec_sha256\":\"%s\", \"shape\":\"%s\", \"tile\":\"%s\", \"default_ms\":%s, "
             "\"tuned_ms\":%s, \"gen\":\"%s\", \"nvrtc\":\"%s\", \"when\":\"%s\"}",
             e->device, e->arch, e->kernel, e->spec_sha256, e->shape, e->tile,
             num(e->default_ms, d), num(e->tuned_ms, t), e->gen, e->nvrtc, e->when);
    if (e->imported) /* `, "source":"import"` before the closing brace */
        snprintf(buf + strlen(buf) - 1, n - strlen(buf) + 1, ", \"source\":\"import\"}");
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

static char *read_text(const char *path)
{
    char *data = NULL;
    s2_error err = {0};
    cr_assert_eq(s2_read_file(path, &data, NULL, &err), S2_OK, "%s", err.msg);
    return data;
}

static s2_tunedb *open_db(void)
{
    s2_tunedb *db = NULL;
    s2_error err = {0};
    cr_assert_eq(s2_tunedb_open(dir, H100, &db, &err), S2_OK, "%s", err.msg);
    cr_assert_not_null(db);
    return db;
}

static void put_ok(s2_tunedb *db, const s2_tunedb_entry *e)
{
    s2_error err = {0};
    cr_assert_eq(s2_tunedb_put(db, e, &err), S2_OK, "%s", err.msg);
}

static void save_ok(s2_tunedb *db)
{
    s2_error err = {0};
    cr_assert_eq(s2_tunedb_save(db, &err), S2_OK, "%s", err.msg);
}

static int lookup(const s2_tunedb *db, const s2_tunedb_entry *like, unsigned flags,
                  s2_tunedb_entry *out)
{
    s2_tunedb_key k = s2_tunedb_entry_key(like);
    return s2_tunedb_lookup(db, &k, flags, out);
}

static void assert_same(const s2_tunedb_entry *a, const s2_tunedb_entry *b)
{
    cr_assert_str_eq(a->device, b->device);
    cr_assert_str_eq(a->arch, b->arch);
    cr_assert_str_eq(a->kernel, b->kernel);
    cr_assert_str_eq(a->spec_sha256, b->spec_sha256);
    cr_assert_str_eq(a->shape, b->shape);
    cr_assert_str_eq(a->tile, b->tile);
    cr_assert_eq(a->default_ms, b->default_ms, "%.17g != %.17g", a->default_ms, b->default_ms);
    cr_assert_eq(a->tuned_ms, b->tuned_ms, "%.17g != %.17g", a->tuned_ms, b->tuned_ms);
    cr_assert_str_eq(a->gen, b->gen);
    cr_assert_str_eq(a->nvrtc, b->nvrtc);
    cr_assert_str_eq(a->when, b->when);
    cr_assert_eq(a->imported, b->imported);
}

/* Names in dir other than "." and "..", sorted, joined by ' '. */
static void list_dir(char *buf, size_t n)
{
    struct dirent **names;
    int k = scandir(dir, &names, NULL, alphasort);
    cr_assert_geq(k, 0);
    buf[0] = '\0';
    for (int i = 0; i < k; i++) {
        if (strcmp(names[i]->d_name, ".") && strcmp(names[i]->d_name, ".."))
            snprintf(buf + strlen(buf), n - strlen(buf), "%s%s", buf[0] ? " " : "",
                     names[i]->d_name);
        free(names[i]);
    }
    free(names);
}

static int count_lines(const char *text)
{
    int n = 0;
    for (const char *p = text; *p; p++)
        n += *p == '\n';
    return n;
}

/* Asserts warning i is "db_path:line: skipped: <starts with why>". */
static void assert_warning(const s2_tunedb *db, int i, const char *file, int line, const char *why)
{
    cr_assert_lt(i, db->n_warnings, "warning %d missing (%d warnings)", i, db->n_warnings);
    char want[1024];
    snprintf(want, sizeof want, "%s:%d: skipped: %s", file, line, why);
    cr_assert(strncmp(db->warnings[i], want, strlen(want)) == 0, "warning %d: got '%s', want '%s...'",
              i, db->warnings[i], want);
}

/* Writes entries e[1..n] to path as another machine's export (local lines there). */
static void export_entries(const s2_tunedb_entry *e, int n, const char *path)
{
    char other[256];
    snprintf(other, sizeof other, "%s/exporter", dir);
    s2_tunedb *db = NULL;
    s2_error err = {0};
    cr_assert_eq(s2_tunedb_open(other, H100, &db, &err), S2_OK, "%s", err.msg);
    for (int i = 1; i <= n; i++)
        put_ok(db, &e[i]);
    cr_assert_eq(s2_tunedb_export(db, path, &err), S2_OK, "%s", err.msg);
    s2_tunedb_close(db);
}

static s2_tunedb_import_counts import_ok(s2_tunedb *db, const char *path)
{
    s2_tunedb_import_counts c;
    memset(&c, 0xff, sizeof c);
    s2_error err = {0};
    cr_assert_eq(s2_tunedb_import(db, path, &c, &err), S2_OK, "%s", err.msg);
    return c;
}

/* ------------------------------------------------------------------------ */
/* Round trip and the file format                                           */

Test(tunedb, round_trip_fixed_key_order_sorted_lines)
{
    s2_tunedb *db = open_db();
    cr_assert_str_eq(db->path, db_path);
    s2_tunedb_entry e[3] = {entry(1), entry(2), entry(3)};
    e[1].tuned_ms = 0.1 + 0.2; /* 17 significant digits: must come back bit for bit */
    e[2].default_ms = 2e-05;
    for (int i = 2; i >= 0; i--) /* out of order: the file must be sorted anyway */
        put_ok(db, &e[i]);
    save_ok(db);
    s2_tunedb_close(db);

    db = open_db();
    cr_assert_eq(db->n_entries, 3);
    cr_assert_eq(db->n_warnings, 0);
    for (int i = 0; i < 3; i++) {
        s2_tunedb_entry got;
        cr_assert_eq(lookup(db, &e[i], 0, &got), 1);
        assert_same(&got, &e[i]);
        cr_assert_eq(got.stale, 0);
    }
    s2_tunedb_close(db);

    /* One line per entry, in key order (same device/arch/kernel: spec_sha256 order), each in
     * the fixed key order. */
    int order[3] = {0, 1, 2};
    for (int a = 0; a < 3; a++)
        for (int b = a + 1; b < 3; b++)
            if (strcmp(e[order[a]].spec_sha256, e[order[b]].spec_sha256) > 0) {
                int t = order[a];
                order[a] = order[b];
                order[b] = t;
            }
    char want[8192] = "", line[2048];
    for (int i = 0; i < 3; i++) {
        line_of(&e[order[i]], line, sizeof line);
        snprintf(want + strlen(want), sizeof want - strlen(want), "%s\n", line);
    }
    char *text = read_text(db_path);
    cr_assert_str_eq(text, want);
    /* Numbers as short as they can be and still read back exactly. */
    cr_assert(strstr(text, "\"default_ms\":1.23, \"tuned_ms\":0.98,"), "%s", text);
    cr_assert(strstr(text, "\"tuned_ms\":0.30000000000000004,"), "%s", text);
    cr_assert(strstr(text, "\"default_ms\":2e-05,"), "%s", text);
    free(text);
}

Test(tunedb, lookup_misses_other_keys_and_put_replaces_same_key)
{
    s2_tunedb *db = open_db();
    s2_tunedb_entry e = entry(1), got;
    put_ok(db, &e);

    s2_tunedb_entry other = e;
    snprintf(other.shape, sizeof other.shape, "N<=32768");
    cr_assert_eq(lookup(db, &other, 0, &got), 0);
    snprintf(other.shape, sizeof other.shape, "%s", e.shape);
    snprintf(other.arch, sizeof other.arch, "sm_80");
    cr_assert_eq(lookup(db, &other, 0, NULL), 0);

    /* put is the caller's news: it replaces even with an older "when". */
    s2_tunedb_entry older = e;
    snprintf(older.when, sizeof older.when, "2020-01-01T00:00:00Z");
    snprintf(older.tile, sizeof older.tile, "fwd_warps=8");
    put_ok(db, &older);
    cr_assert_eq(db->n_entries, 1);
    cr_assert_eq(lookup(db, &e, 0, &got), 1);
    cr_assert_str_eq(got.tile, "fwd_warps=8");
    s2_tunedb_close(db);
}

/* Spoils entry field `what`; returns the phrase the refusal must hold. */
static const char *spoil(s2_tunedb_entry *e, int what)
{
    switch (what) {
    case 0: e->spec_sha256[10] = 'G'; return "'spec_sha256' must be 64 lowercase hex digits";
    case 1: e->spec_sha256[63] = '\0'; return "'spec_sha256' must be 64 lowercase hex digits";
    case 2: snprintf(e->device, sizeof e->device, "NVIDIA A100-SXM4-40GB");
            return "device 'NVIDIA A100-SXM4-40GB' does not belong in tune-nvidia-h100-80gb-hbm3.jsonl";
    case 3: snprintf(e->tile, sizeof e->tile, "fwd_wraps=4"); return "no longer a valid tile";
    case 4: e->tuned_ms = NAN; return "'tuned_ms' must be a finite time > 0 ms";
    case 5: e->default_ms = 0; return "'default_ms' must be a finite time > 0 ms";
    case 6: e->kernel[0] = '\0'; return "'kernel' is empty";
    case 7: snprintf(e->when, sizeof e->when, "2026-11-25 18:00:00"); return "'when' must be UTC";
    case 8: memset(e->shape, 'x', sizeof e->shape); return "'shape' is longer than 63 bytes";
    case 9: snprintf(e->nvrtc, sizeof e->nvrtc, "13\xff"); return "'nvrtc' is not UTF-8";
    case 10: snprintf(e->arch, sizeof e->arch, "sm_75"); return "unknown arch 'sm_75'";
    case 11: snprintf(e->kernel, sizeof e->kernel, "attn"); return "unknown kernel 'attn'";
    case 12: snprintf(e->shape, sizeof e->shape, "N<=3000"); return "'shape' must be a shape class";
    case 13:
        snprintf(e->tile, sizeof e->tile, "fwd_warps=9");
        return "fwd_warps = 9 is out of range: valid 1..8";
    case 14: when_from_now(3 * 86400, e->when); return "lies after this machine's clock";
    case 15: snprintf(e->when, sizeof e->when, "2026-02-29T12:00:00Z");
             return "is not a real UTC time";
    case 16: e->tuned_ms = 7200000; return "at most 3600000 ms (one hour)";
    }
    return NULL;
}

Test(tunedb, put_refuses_entries_it_could_not_read_back)
{
    s2_tunedb *db = open_db();
    for (int what = 0; what < 17; what++) {
        s2_tunedb_entry e = entry(what);
        const char *says = spoil(&e, what);
        s2_error err = {0};
        cr_assert_eq(s2_tunedb_put(db, &e, &err), S2_ERR_INVALID, "case %d accepted", what);
        cr_assert(strstr(err.msg, says), "case %d: '%s' lacks '%s'", what, err.msg, says);
        cr_assert(strstr(err.msg, db_path), "case %d: '%s' lacks the path", what, err.msg);
        s2_error_clear(&err);
    }
    cr_assert_eq(db->n_entries, 0);
    s2_tunedb_close(db);
}

/* ------------------------------------------------------------------------ */
/* Names and shape classes                                                  */

Test(tunedb, slug)
{
    char b[64];
    cr_assert_str_eq(s2_tunedb_slug("NVIDIA H100 80GB HBM3", b, sizeof b), "nvidia-h100-80gb-hbm3");
    cr_assert_str_eq(s2_tunedb_slug("  NVIDIA  A100-SXM4-40GB ", b, sizeof b), "nvidia-a100-sxm4-40gb");
    cr_assert_str_eq(s2_tunedb_slug("NVIDIA GeForce RTX 4090 (β)!", b, sizeof b),
                     "nvidia-geforce-rtx-4090");
    cr_assert_str_eq(s2_tunedb_slug("H200", b, sizeof b), "h200");
    cr_assert_null(s2_tunedb_slug("", b, sizeof b));
    cr_assert_null(s2_tunedb_slug(" -_- ", b, sizeof b));
    cr_assert_null(s2_tunedb_slug("NVIDIA H100", b, 11)); /* "nvidia-h100" needs 12 */
    cr_assert_str_eq(s2_tunedb_slug("NVIDIA H100", b, 12), "nvidia-h100");

    s2_tunedb *db = NULL;
    s2_error err = {0};
    cr_assert_eq(s2_tunedb_open(dir, "***", &db, &err), S2_ERR_INVALID);
    cr_assert_null(db);
    cr_assert(strstr(err.msg, "'***'"), "%s", err.msg);
    s2_error_clear(&err);
}

Test(tunedb, shape_classes)
{
    char b[32];
    cr_assert_str_eq(s2_tunedb_shape_class(1, b, sizeof b), "N<=1");
    cr_assert_str_eq(s2_tunedb_shape_class(512, b, sizeof b), "N<=512");
    cr_assert_str_eq(s2_tunedb_shape_class(5000, b, sizeof b), "N<=8192");
    cr_assert_str_eq(s2_tunedb_shape_class(8192, b, sizeof b), "N<=8192");
    cr_assert_str_eq(s2_tunedb_shape_class(8193, b, sizeof b), "N<=16384");
    cr_assert_str_eq(s2_tunedb_shape_class(16384, b, sizeof b), "N<=16384");
    cr_assert_str_eq(s2_tunedb_shape_class(32768, b, sizeof b), "N<=32768");
    cr_assert_str_eq(s2_tunedb_shape_class(100000, b, sizeof b), "N<=131072");
    cr_assert_str_eq(s2_tunedb_shape_class(INT_MAX, b, sizeof b), "N<=2147483648");
    cr_assert_null(s2_tunedb_shape_class(0, b, sizeof b));
    cr_assert_null(s2_tunedb_shape_class(-8, b, sizeof b));
    cr_assert_null(s2_tunedb_shape_class(8192, b, 7)); /* "N<=8192" needs 8 */
    cr_assert_str_eq(s2_tunedb_shape_class(8192, b, 8), "N<=8192");
}

Test(tunedb, now_is_the_when_form)
{
    char w[21];
    s2_tunedb_entry e = entry(1);
    snprintf(e.when, sizeof e.when, "%s", s2_tunedb_now(w));
    cr_assert_eq(strlen(w), 20);
    s2_tunedb *db = open_db();
    put_ok(db, &e); /* put checks the form */
    s2_tunedb_close(db);
}

/* ------------------------------------------------------------------------ */
/* Corrupt lines                                                            */

/* The line of entry(i) with `from` replaced by `to` (once). */
static void spoiled_line(int i, const char *from, const char *to, char *buf, size_t n)
{
    s2_tunedb_entry e = entry(i);
    char line[2048];
    line_of(&e, line, sizeof line);
    char *at = strstr(line, from);
    cr_assert_not_null(at, "'%s' not in %s", from, line);
    snprintf(buf, n, "%.*s%s%s", (int)(at - line), line, to, at + strlen(from));
}

Test(tunedb, corrupt_lines_skipped_with_line_numbers)
{
    s2_tunedb_entry good[3] = {entry(1), entry(2), entry(3)};
    char l[16][2048];
    line_of(&good[0], l[0], sizeof l[0]);                                       /* 1 */
    snprintf(l[1], sizeof l[1], "hello, tuner");                                /* 2 */
    snprintf(l[2], sizeof l[2], "{\"v\":1, \"device\":\"NVIDIA H100 80GB HB");  /* 3 */
    line_of(&good[1], l[3], sizeof l[3]);                                       /* 4 */
    spoiled_line(4, "\"tuned_ms\":0.98", "\"tuned_ms\":\"fast\"", l[4], sizeof l[4]); /* 5 */
    spoiled_line(5, "\"tile\":", "\"tiles\":", l[5], sizeof l[5]);             /* 6 */
    snprintf(l[6], sizeof l[6], "   ");                                         /* 7: blank */
    char sha6[65], from[80];
    sha_of(6, sha6);
    snprintf(from, sizeof from, "\"spec_sha256\":\"%.2s", sha6); /* same length, not hex */
    spoiled_line(6, from, "\"spec_sha256\":\"zz", l[7], sizeof l[7]);         /* 8 */
    spoiled_line(7, "{\"v\":1,", "{\"v\":2,", l[8], sizeof l[8]);               /* 9 */
    spoiled_line(8, "\"tile\":\"", "\"tile\":\"fwd_wraps=4,", l[9], sizeof l[9]); /* 10 */
    line_of(&good[2], l[10], sizeof l[10]);                                     /* 11 */
    char text[32768] = "";
    for (int i = 0; i < 11; i++) {
        size_t used = strlen(text);
        int w = snprintf(text + used, sizeof text - used, "%s\n", l[i]);
        cr_assert(w > 0 && (size_t)w < sizeof text - used, "test text too long");
    }
    write_text(db_path, text);

    s2_tunedb *db = open_db();
    cr_assert_eq(db->n_entries, 3);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(lookup(db, &good[i], 0, NULL), 1, "good line %d lost", i);
    cr_assert_eq(db->n_skipped, 7);
    cr_assert_eq(db->n_warnings, 7);
    assert_warning(db, 0, db_path, 2, "not JSON: ");
    assert_warning(db, 1, db_path, 3, "not JSON: ");
    assert_warning(db, 2, db_path, 5, "'tuned_ms' must be a number");
    assert_warning(db, 3, db_path, 6, "missing key 'tile'");
    assert_warning(db, 4, db_path, 8, "'spec_sha256' must be 64 lowercase hex digits");
    assert_warning(db, 5, db_path, 9, "format version 2 is newer than this s2lora reads (1)");
    assert_warning(db, 6, db_path, 10, "no longer a valid tile: tile 'fwd_wraps=4,");
    cr_assert(strstr(db->warnings[6], "unknown key 'fwd_wraps'"), "%s", db->warnings[6]);

    /* Save drops the corrupt lines and keeps the two of other versions, unchanged, after the
     * entries; reading back gives the same entries and just those two warnings. */
    save_ok(db);
    s2_tunedb_close(db);
    char *saved = read_text(db_path);
    cr_assert_eq(count_lines(saved), 5, "%s", saved);
    cr_assert(strstr(saved, l[8]) && strstr(saved, l[9]), "other versions' lines lost: %s", saved);
    cr_assert_null(strstr(saved, "hello"));
    free(saved);
    db = open_db();
    cr_assert_eq(db->n_entries, 3);
    cr_assert_eq(db->n_warnings, 2);
    assert_warning(db, 0, db_path, 4, "no longer a valid tile"); /* kept lines sort as text */
    assert_warning(db, 1, db_path, 5, "format version 2");
    save_ok(db); /* saving again keeps one copy of each, not two */
    s2_tunedb_close(db);
    saved = read_text(db_path);
    cr_assert_eq(count_lines(saved), 5, "%s", saved);
    free(saved);
}

Test(tunedb, more_corrupt_lines)
{
    char l[12][2048];
    int n = 0;
    snprintf(l[n++], sizeof l[0], "[1, 2, 3]");
    spoiled_line(1, "{\"v\":1,", "{\"v\":\"1\",", l[n++], sizeof l[0]);
    spoiled_line(2, "{\"v\":1,", "{\"v\":0,", l[n++], sizeof l[0]);
    spoiled_line(3, "{\"v\":1, ", "{", l[n++], sizeof l[0]);
    spoiled_line(4, "\"arch\":\"sm_90a\"", "\"arch\":\"sm_90a\", \"arch\":\"sm_80\"", l[n++],
                 sizeof l[0]);
    spoiled_line(5, "H100 80GB", "A100 40GB", l[n++], sizeof l[0]);
    spoiled_line(6, entry(6).when, "yesterday", l[n++], sizeof l[0]);
    spoiled_line(7, "\"default_ms\":1.23", "\"default_ms\":-1", l[n++], sizeof l[0]);
    spoiled_line(8, "\"kernel\":\"attn_fwd\"", "\"kernel\":7", l[n++], sizeof l[0]);
    spoiled_line(9, "}", "} {}", l[n++], sizeof l[0]);
    s2_tunedb_entry ok = entry(10);
    line_of(&ok, l[n], sizeof l[0]);
    strcat(l[n++], "\r"); /* a CRLF checkout */
    char text[32768] = "";
    for (int i = 0; i < n; i++)
        snprintf(text + strlen(text), sizeof text - strlen(text), "%s\n", l[i]);
    write_text(db_path, text);

    s2_tunedb *db = open_db();
    cr_assert_eq(db->n_entries, 1);
    cr_assert_eq(lookup(db, &ok, 0, NULL), 1);
    cr_assert_eq(db->n_warnings, 10);
    assert_warning(db, 0, db_path, 1, "not a JSON object");
    assert_warning(db, 1, db_path, 2, "'v' must be an integer");
    assert_warning(db, 2, db_path, 3, "unknown format version 0");
    assert_warning(db, 3, db_path, 4, "missing key 'v'");
    assert_warning(db, 4, db_path, 5, "not JSON: duplicate object key");
    assert_warning(db, 5, db_path, 6, "device 'NVIDIA A100 40GB HBM3' does not belong in "
                                      "tune-nvidia-h100-80gb-hbm3.jsonl");
    assert_warning(db, 6, db_path, 7, "'when' must be UTC as YYYY-MM-DDTHH:MM:SSZ, got 'yesterday'");
    assert_warning(db, 7, db_path, 8, "'default_ms' must be a finite time > 0 ms and at most "
                                      "3600000 ms (one hour), got -1");
    assert_warning(db, 8, db_path, 9, "'kernel' must be a string");
    assert_warning(db, 9, db_path, 10, "not JSON: ");
    s2_tunedb_clear_warnings(db);
    cr_assert_eq(db->n_warnings, 0);
    cr_assert_eq(db->n_skipped, 10);
    s2_tunedb_close(db);
}

/* One line a reason to refuse a well-formed entry, with the words its warning must hold and
 * whether save keeps it (a name another s2lora may know) or drops it. */
typedef struct refusal {
    char line[2048];
    char why[256];
    int kept;
} refusal;

/* Appends line and a newline to text (of cap bytes). */
static void append_line(char *text, size_t cap, const char *line)
{
    size_t used = strlen(text), len = strlen(line);
    cr_assert_lt(used + len + 1, cap, "test text too long");
    memcpy(text + used, line, len);
    memcpy(text + used + len, "\n", 2);
}

static int impossible_lines(refusal *r)
{
    int n = 0;
    char from[1024], to[160], future[21];
#define SPOIL(i, a, b, w, k)                                                                 \
    (spoiled_line(i, a, b, r[n].line, sizeof r[n].line),                                       \
     snprintf(r[n].why, sizeof r[n].why, "%s", w), r[n].kept = k, n++)
    SPOIL(101, "\"arch\":\"sm_90a\"", "\"arch\":\"sm_75\"",
          "unknown arch 'sm_75' (valid: sm_80, sm_86, sm_89, sm_90, sm_90a)", 1);
    SPOIL(102, "\"kernel\":\"attn_fwd\"", "\"kernel\":\"attn\"",
          "unknown kernel 'attn' (valid: attn_fwd, attn_bwd, lora_u, lora_y, lora_dx, lora_da, "
          "lora_v, lora_db, lora_da_f32, lora_db_f32)", 1);
    SPOIL(103, "\"shape\":\"N<=16384\"", "\"shape\":\"N<=3000\"",
          "'shape' must be a shape class N<=K, K a power of two in 1..2147483648, got 'N<=3000'",
          0);
    SPOIL(104, "\"shape\":\"N<=16384\"", "\"shape\":\"N<=4294967296\"",
          "'shape' must be a shape class", 0);
    SPOIL(105, "\"shape\":\"N<=16384\"", "\"shape\":\"N<=0\"", "'shape' must be a shape class", 0);
    SPOIL(106, "\"shape\":\"N<=16384\"", "\"shape\":\"B<=16384\"",
          "'shape' must be a shape class", 0);
    SPOIL(107, "\"tile\":\"", "\"tile\":\"fwd_block_n=48,",
          "no longer a valid tile: tile 'fwd_block_n=48,", 1);
    SPOIL(108, "\"tile\":\"", "\"tile\":\"bwd_stages=7,",
          "bwd_stages = 7 is out of range: valid 1..4", 1);
    SPOIL(109, "fwd_warps=8", "fwd_warps=8,fwd_warps=4", "fwd_warps given twice", 1);
    snprintf(from, sizeof from, "\"tile\":\"%s\"", entry(110).tile);
    SPOIL(110, from, "\"tile\":\"algo=3\"", "unknown key 'algo'", 1);
    SPOIL(111, "\"arch\":\"sm_90a\"", "\"arch\":\"sm_80\"",
          "fwd_wgmma, fwd_tma, fwd_overlap, fwd_persist, bwd_wgmma or bwd_tma = 1 needs sm_90a "
          "(Hopper's wgmma and TMA), not sm_80", 1);
    SPOIL(112, entry(112).when, "2026-02-29T12:00:00Z",
          "'when' 2026-02-29T12:00:00Z is not a real UTC time from 1970 on", 0);
    SPOIL(113, entry(113).when, "2026-13-01T00:00:00Z", "is not a real UTC time", 0);
    SPOIL(114, entry(114).when, "2026-04-31T24:00:00Z", "is not a real UTC time", 0);
    SPOIL(115, entry(115).when, "1969-12-31T23:59:59Z", "is not a real UTC time", 0);
    when_from_now(2 * 86400, future);
    snprintf(to, sizeof to, "'when' %s lies after this machine's clock", future);
    SPOIL(116, entry(116).when, future, to, 0);
    SPOIL(117, "\"tuned_ms\":0.98", "\"tuned_ms\":1e9",
          "'tuned_ms' must be a finite time > 0 ms and at most 3600000 ms (one hour), got 1e+09",
          0);
    SPOIL(118, "\"default_ms\":1.23", "\"default_ms\":3600000.5",
          "'default_ms' must be a finite time > 0 ms and at most 3600000 ms", 0);
    SPOIL(119, "\"tuned_ms\":0.98", "\"tuned_ms\":0", "'tuned_ms' must be a finite time > 0 ms", 0);
#undef SPOIL
    return n;
}

/* Entries that parse but cannot be true or that this build cannot use are skipped where
 * they are read: each a warning with the file, the line number and the reason. */
Test(tunedb, impossible_entries_refused_on_load_and_import)
{
    refusal r[32];
    int n = impossible_lines(r);
    /* Line 1 and the last two are fine: the last two a day's skew ahead and an hour long. */
    s2_tunedb_entry first = entry(1), skewed = entry(2), hour = entry(3);
    when_from_now(12 * 3600, skewed.when);
    hour.default_ms = S2_TUNEDB_MAX_MS;
    char text[65536] = "", line[2048];
    line_of(&first, line, sizeof line);
    append_line(text, sizeof text, line);
    for (int i = 0; i < n; i++)
        append_line(text, sizeof text, r[i].line);
    line_of(&skewed, line, sizeof line);
    append_line(text, sizeof text, line);
    line_of(&hour, line, sizeof line);
    append_line(text, sizeof text, line);

    /* On load. */
    write_text(db_path, text);
    s2_tunedb *db = open_db();
    cr_assert_eq(db->n_entries, 3);
    cr_assert_eq(lookup(db, &skewed, 0, NULL), 1, "a day's clock skew is allowed");
    cr_assert_eq(lookup(db, &hour, 0, NULL), 1, "an hour is the bound, not beyond it");
    cr_assert_eq(db->n_skipped, n);
    cr_assert_eq(db->n_warnings, n);
    int kept = 0;
    for (int i = 0; i < n; i++) {
        assert_warning(db, i, db_path, i + 2, "");
        cr_assert(strstr(db->warnings[i], r[i].why), "line %d: '%s' lacks '%s'", i + 2,
                  db->warnings[i], r[i].why);
        kept += r[i].kept;
    }
    /* Save drops the impossible lines and keeps those naming what this build does not know. */
    save_ok(db);
    s2_tunedb_close(db);
    char *saved = read_text(db_path);
    cr_assert_eq(count_lines(saved), 3 + kept, "%s", saved);
    for (int i = 0; i < n; i++)
        cr_assert_eq(strstr(saved, r[i].line) != NULL, r[i].kept, "line %d %s: %s", i + 2,
                     r[i].kept ? "lost" : "kept", saved);
    free(saved);

    /* On import: the same refusals, naming the imported file, and counted. */
    char other[512];
    snprintf(other, sizeof other, "%s/other.jsonl", dir);
    write_text(other, text);
    unlink(db_path);
    db = open_db();
    s2_tunedb_import_counts c = import_ok(db, other);
    cr_assert_eq(c.taken, 3);
    cr_assert_eq(c.refused, n);
    cr_assert_eq(c.added, 3);
    cr_assert_eq(db->n_entries, 3);
    cr_assert_eq(db->n_warnings, n);
    for (int i = 0; i < n; i++) {
        assert_warning(db, i, other, i + 2, "");
        cr_assert(strstr(db->warnings[i], r[i].why), "%s", db->warnings[i]);
    }
    s2_tunedb_close(db);
}

/* Every tile the tuner can store, on every arch and head_dim, passes the database's check:
 * the per-key ranges cannot refuse what the plan plans. */
Test(tunedb, every_tile_of_the_plans_space_is_accepted)
{
    static const char *const archs[] = {"sm_80", "sm_86", "sm_89", "sm_90", "sm_90a"};
    static const char *const dims[] = {"model.head_dim=64", "model.head_dim=96",
                                       "model.head_dim=128", "model.head_dim=256"};
    s2_tunedb *db = open_db();
    int total = 0;
    for (int h = 0; h < 4; h++) {
        s2_spec_override set = {.text = dims[h]};
        s2_spec spec;
        s2_error err = {0};
        cr_assert_eq(s2_spec_load(S2_SOURCE_DIR "/specs/llama2-7b-8k.yaml", &set, 1, &spec, &err),
                     S2_OK, "%s", err.msg);
        for (int a = 0; a < 5; a++)
            for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++) {
                int n = s2_plan_tile_space(&spec, archs[a], (s2_attn_unit)u, NULL, 0);
                s2_attn_tile *t = calloc((size_t)n + 1, sizeof *t);
                s2_plan_tile_space(&spec, archs[a], (s2_attn_unit)u, t, n);
                for (int k = 0; k < n; k++) {
                    s2_tunedb_entry e = entry(total++);
                    snprintf(e.arch, sizeof e.arch, "%s", archs[a]);
                    snprintf(e.kernel, sizeof e.kernel, "%s", s2_attn_unit_name((s2_attn_unit)u));
                    s2_plan_tile_str(&t[k], e.tile, sizeof e.tile);
                    cr_assert_eq(s2_tunedb_put(db, &e, &err), S2_OK, "%s", err.msg);
                }
                free(t);
            }
    }
    cr_assert_gt(total, 100, "only %d tiles", total);
    s2_tunedb_close(db);
}

Test(tunedb, duplicate_keys_in_one_file_newest_wins)
{
    s2_tunedb_entry old = entry(1), mid = entry(1), new = entry(1);
    when_from_now(-300 * 86400, old.when);
    when_from_now(-3600, new.when);
    snprintf(old.tile, sizeof old.tile, "fwd_warps=2");
    snprintf(new.tile, sizeof new.tile, "fwd_warps=8");
    char a[2048], b[2048], c[2048], text[8192];
    line_of(&old, a, sizeof a);
    line_of(&new, b, sizeof b);
    line_of(&mid, c, sizeof c);
    snprintf(text, sizeof text, "%s\n%s\n%s\n", a, b, c); /* newest in the middle */
    write_text(db_path, text);

    s2_tunedb *db = open_db();
    s2_tunedb_entry got;
    cr_assert_eq(db->n_entries, 1);
    cr_assert_eq(lookup(db, &new, 0, &got), 1);
    assert_same(&got, &new);
    s2_tunedb_close(db);
}

/* ------------------------------------------------------------------------ */
/* Stale generator versions                                                 */

Test(tunedb, stale_gen_flagged_and_skipped_by_default)
{
    s2_tunedb_entry cur = entry(1), old = entry(2);
    snprintf(old.gen, sizeof old.gen, "s2lora-gen-0");
    char a[2048], b[2048], text[8192];
    line_of(&cur, a, sizeof a);
    line_of(&old, b, sizeof b);
    snprintf(text, sizeof text, "%s\n%s\n", a, b);
    write_text(db_path, text);

    s2_tunedb *db = open_db();
    cr_assert_eq(db->n_entries, 2);
    cr_assert_eq(db->n_warnings, 0); /* stale is not corrupt: the caller decides what to say */
    s2_tunedb_entry got;
    cr_assert_eq(lookup(db, &cur, 0, &got), 1);
    cr_assert_eq(got.stale, 0);
    cr_assert_eq(lookup(db, &old, 0, &got), 0);
    cr_assert_eq(lookup(db, &old, S2_TUNEDB_STALE_OK, &got), 1);
    cr_assert_eq(got.stale, 1);
    cr_assert_str_eq(got.gen, "s2lora-gen-0");

    /* put recomputes the flag whatever the caller set. */
    s2_tunedb_entry fresh = entry(3);
    fresh.stale = 1;
    put_ok(db, &fresh);
    cr_assert_eq(lookup(db, &fresh, 0, &got), 1);
    cr_assert_eq(got.stale, 0);

    /* Stale entries are kept by save, unchanged. */
    save_ok(db);
    s2_tunedb_close(db);
    char *saved = read_text(db_path);
    cr_assert(strstr(saved, b), "stale line lost: %s", saved);
    free(saved);
}

Test(tunedb, usable_entry_beats_newer_stale_one)
{
    s2_tunedb_entry cur = entry(1), stale = entry(1);
    snprintf(stale.gen, sizeof stale.gen, "s2lora-gen-0");
    when_from_now(-60, stale.when); /* newer than cur's */
    snprintf(stale.tile, sizeof stale.tile, "fwd_warps=1");
    char a[2048], b[2048], text[8192];
    line_of(&cur, a, sizeof a);
    line_of(&stale, b, sizeof b);
    snprintf(text, sizeof text, "%s\n%s\n", a, b);
    write_text(db_path, text);

    s2_tunedb *db = open_db();
    s2_tunedb_entry got;
    cr_assert_eq(db->n_entries, 1);
    cr_assert_eq(lookup(db, &cur, 0, &got), 1);
    assert_same(&got, &cur);
    s2_tunedb_close(db);
}

/* ------------------------------------------------------------------------ */
/* Import and export                                                        */

Test(tunedb, import_export_newer_import_wins)
{
    char exported[512], earlier[512];
    snprintf(exported, sizeof exported, "%s/shared.jsonl", dir);
    snprintf(earlier, sizeof earlier, "%s/earlier.jsonl", dir);

    /* Theirs: k1 and k2 tuned on 2026-06-01, k3 on 2026-01-01, one stale k4. */
    s2_tunedb *theirs = open_db();
    s2_tunedb_entry k[5];
    for (int i = 1; i <= 4; i++) {
        k[i] = entry(i);
        snprintf(k[i].when, sizeof k[i].when, "2026-%02d-01T00:00:00Z", i == 3 ? 1 : 6);
        snprintf(k[i].tile, sizeof k[i].tile, "fwd_warps=%d", i);
    }
    snprintf(k[4].gen, sizeof k[4].gen, "s2lora-gen-0");
    for (int i = 1; i <= 4; i++)
        put_ok(theirs, &k[i]);
    s2_error err = {0};
    cr_assert_eq(s2_tunedb_export(theirs, exported, &err), S2_OK, "%s", err.msg);
    s2_tunedb_close(theirs);
    char *text = read_text(exported);
    cr_assert_eq(count_lines(text), 4, "export holds every entry, stale ones too: %s", text);
    free(text);

    /* Ours, imported from an earlier file: k1 older (replaced), k2 same time (held: only
     * newer replaces), k3 newer (held). */
    s2_tunedb *ours = open_db();
    s2_tunedb_entry mine[4];
    const char *when[4] = {NULL, "2026-03-01T00:00:00Z", "2026-06-01T00:00:00Z",
                           "2026-09-01T00:00:00Z"};
    for (int i = 1; i <= 3; i++) {
        mine[i] = entry(i);
        snprintf(mine[i].when, sizeof mine[i].when, "%s", when[i]);
        snprintf(mine[i].tile, sizeof mine[i].tile, "fwd_warps=%d", 4 + i);
    }
    export_entries(mine, 3, earlier);
    s2_tunedb_import_counts c = import_ok(ours, earlier);
    cr_assert_eq(c.added, 3);
    for (int i = 1; i <= 3; i++)
        mine[i].imported = 1;
    c = import_ok(ours, exported);
    cr_assert_eq(c.taken, 4);
    cr_assert_eq(c.refused, 0);
    cr_assert_eq(c.added, 1, "k4 is new (added %d)", c.added);
    cr_assert_eq(c.replaced, 1, "only k1 is older here (replaced %d)", c.replaced);
    cr_assert_eq(c.held, 2);
    s2_tunedb_entry got;
    k[1].imported = 1;
    cr_assert_eq(lookup(ours, &k[1], 0, &got), 1);
    assert_same(&got, &k[1]);
    cr_assert_eq(lookup(ours, &k[2], 0, &got), 1);
    assert_same(&got, &mine[2]);
    cr_assert_eq(lookup(ours, &k[3], 0, &got), 1);
    assert_same(&got, &mine[3]);
    cr_assert_eq(lookup(ours, &k[4], S2_TUNEDB_STALE_OK, &got), 1);
    cr_assert_eq(got.stale, 1);
    cr_assert_eq(got.imported, 1);

    /* Importing the same file again changes nothing. */
    c = import_ok(ours, exported);
    cr_assert_eq(c.added, 0);
    cr_assert_eq(c.replaced, 0);
    cr_assert_eq(c.held, 4);
    cr_assert_eq(ours->n_entries, 4);
    s2_tunedb_close(ours);
}

Test(tunedb, import_never_replaces_a_local_measurement)
{
    char theirs[512];
    snprintf(theirs, sizeof theirs, "%s/theirs.jsonl", dir);
    /* Measured here: k1, long ago. */
    s2_tunedb_entry local = entry(1);
    when_from_now(-200 * 86400, local.when);
    snprintf(local.tile, sizeof local.tile, "fwd_warps=2");
    s2_tunedb *db = open_db();
    put_ok(db, &local);
    save_ok(db);
    s2_tunedb_close(db);

    /* Theirs: k1 measured yesterday on another machine, and k2 we lack. */
    s2_tunedb_entry t[3];
    t[1] = entry(1), t[2] = entry(2);
    when_from_now(-86400, t[1].when);
    snprintf(t[1].tile, sizeof t[1].tile, "fwd_warps=4");
    export_entries(t, 2, theirs);

    db = open_db();
    s2_tunedb_import_counts c = import_ok(db, theirs);
    cr_assert_eq(c.taken, 2);
    cr_assert_eq(c.added, 1);
    cr_assert_eq(c.replaced, 0, "the newer import replaced the local measurement");
    cr_assert_eq(c.held, 1);
    s2_tunedb_entry got;
    cr_assert_eq(lookup(db, &local, 0, &got), 1);
    assert_same(&got, &local);
    cr_assert_eq(lookup(db, &t[2], 0, &got), 1);
    cr_assert_eq(got.imported, 1);
    save_ok(db);
    s2_tunedb_close(db);

    /* The file says which is which: the local line as before, the imported one marked. */
    char *text = read_text(db_path), want[2048];
    line_of(&local, want, sizeof want);
    cr_assert(strstr(text, want), "local line changed: %s", text);
    t[2].imported = 1;
    line_of(&t[2], want, sizeof want);
    cr_assert(strstr(text, want), "no imported line '%s' in %s", want, text);
    cr_assert(strstr(want, ", \"source\":\"import\"}"), "%s", want);
    free(text);

    /* Read back (and merged again by save), the origin holds: importing theirs once more,
     * or the db's own file listing an older local and a newer imported line, keeps local. */
    db = open_db();
    cr_assert_eq(lookup(db, &t[2], 0, &got), 1);
    cr_assert_eq(got.imported, 1);
    c = import_ok(db, theirs);
    cr_assert_eq(c.replaced, 0);
    cr_assert_eq(lookup(db, &local, 0, &got), 1);
    assert_same(&got, &local);
    s2_tunedb_close(db);
    char a[2048], b[2048], both[4096] = "";
    t[1].imported = 1;
    line_of(&t[1], a, sizeof a);
    line_of(&local, b, sizeof b);
    append_line(both, sizeof both, a);
    append_line(both, sizeof both, b);
    write_text(db_path, both);
    db = open_db();
    cr_assert_eq(lookup(db, &local, 0, &got), 1);
    assert_same(&got, &local);

    /* A local measurement (put) replaces an imported one, and is written without "source". */
    s2_tunedb_entry mine = t[2];
    mine.imported = 1; /* put ignores what the caller says: its entry is measured here */
    put_ok(db, &mine);
    cr_assert_eq(lookup(db, &t[2], 0, &got), 1);
    cr_assert_eq(got.imported, 0);
    s2_tunedb_close(db);

    /* "source" takes "import" or nothing. */
    spoiled_line(3, "}", ", \"source\":\"elsewhere\"}", a, sizeof a);
    both[0] = '\0';
    append_line(both, sizeof both, a);
    write_text(db_path, both);
    db = open_db();
    cr_assert_eq(db->n_entries, 0);
    assert_warning(db, 0, db_path, 1, "'source' must be \"import\"");
    s2_tunedb_close(db);
}

Test(tunedb, import_reports_skipped_lines_and_missing_file)
{
    char other[512], missing[512], a[2048];
    snprintf(other, sizeof other, "%s/other.jsonl", dir);
    snprintf(missing, sizeof missing, "%s/none.jsonl", dir);
    s2_tunedb_entry e = entry(1);
    line_of(&e, a, sizeof a);
    char text[4096];
    snprintf(text, sizeof text, "garbage\n%s\n", a);
    write_text(other, text);

    s2_tunedb *db = open_db();
    s2_error err = {0};
    s2_tunedb_import_counts c = import_ok(db, other);
    cr_assert_eq(c.added, 1);
    cr_assert_eq(c.taken, 1);
    cr_assert_eq(c.refused, 1);
    assert_warning(db, 0, other, 1, "not JSON");
    cr_assert_eq(s2_tunedb_import(db, other, NULL, &err), S2_OK, "counts may be NULL");

    cr_assert_eq(s2_tunedb_import(db, missing, &c, &err), S2_ERR_IO);
    cr_assert(strstr(err.msg, missing), "%s", err.msg);
    cr_assert_eq(c.added + c.replaced + c.held + c.taken + c.refused, 0);
    cr_assert_eq(db->n_entries, 1);
    s2_error_clear(&err);
    s2_tunedb_close(db);
}

/* ------------------------------------------------------------------------ */
/* Saving: merges, concurrency, atomicity                                   */

Test(tunedb, save_merges_what_another_db_saved)
{
    s2_tunedb *a = open_db(), *b = open_db();
    s2_tunedb_entry e1 = entry(1), e2 = entry(2), e1_old = entry(1);
    put_ok(a, &e1);
    save_ok(a);

    /* b opened before a saved: it adds e2 and an older e1; save keeps a's newer e1. */
    snprintf(e1_old.when, sizeof e1_old.when, "2025-01-01T00:00:00Z");
    snprintf(e1_old.tile, sizeof e1_old.tile, "fwd_warps=1");
    put_ok(b, &e2);
    put_ok(b, &e1_old);
    save_ok(b);
    s2_tunedb_entry got;
    cr_assert_eq(lookup(b, &e1, 0, &got), 1, "b sees what a saved");
    assert_same(&got, &e1);
    s2_tunedb_close(a);
    s2_tunedb_close(b);

    s2_tunedb *c = open_db();
    cr_assert_eq(c->n_entries, 2);
    cr_assert_eq(lookup(c, &e1, 0, &got), 1);
    assert_same(&got, &e1);
    cr_assert_eq(lookup(c, &e2, 0, NULL), 1);
    s2_tunedb_close(c);
}

enum { N_PROCS = 4, N_KEYS = 16 };

/* One writer: waits at the gate, then puts and saves its keys one by one. */
static int writer(int proc, int gate)
{
    char c;
    if (read(gate, &c, 1) != 0) /* EOF: the parent opened the gate */
        return 10;
    s2_tunedb *db = NULL;
    if (s2_tunedb_open(dir, H100, &db, NULL) != S2_OK)
        return 11;
    for (int j = 0; j < N_KEYS; j++) {
        s2_tunedb_entry e = entry(1000 * (proc + 1) + j);
        if (s2_tunedb_put(db, &e, NULL) != S2_OK)
            return 12;
        if (s2_tunedb_save(db, NULL) != S2_OK)
            return 13;
    }
    s2_tunedb_close(db);
    return 0;
}

Test(tunedb, concurrent_writers_lose_nothing)
{
    int gate[2];
    cr_assert_eq(pipe(gate), 0);
    pid_t pids[N_PROCS];
    for (int p = 0; p < N_PROCS; p++) {
        pids[p] = fork();
        cr_assert_geq(pids[p], 0);
        if (pids[p] == 0) {
            close(gate[1]);
            _exit(writer(p, gate[0])); /* _exit: no Criterion teardown in the child */
        }
    }
    close(gate[0]);
    close(gate[1]); /* every writer starts now */
    for (int p = 0; p < N_PROCS; p++) {
        int status;
        cr_assert_eq(waitpid(pids[p], &status, 0), pids[p]);
        cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writer %d: status %d", p, status);
    }

    s2_tunedb *db = open_db();
    cr_assert_eq(db->n_entries, N_PROCS * N_KEYS);
    cr_assert_eq(db->n_warnings, 0);
    for (int p = 0; p < N_PROCS; p++)
        for (int j = 0; j < N_KEYS; j++) {
            s2_tunedb_entry e = entry(1000 * (p + 1) + j);
            cr_assert_eq(lookup(db, &e, 0, NULL), 1, "writer %d key %d lost", p, j);
        }
    s2_tunedb_close(db);
    char names[1024];
    list_dir(names, sizeof names);
    cr_assert_str_eq(names, H100_FILE " " H100_FILE ".lock");
}

Test(tunedb, atomic_save_leaves_no_temp_files)
{
    s2_tunedb *db = open_db();
    for (int i = 0; i < 5; i++) {
        s2_tunedb_entry e = entry(i);
        put_ok(db, &e);
        save_ok(db);
    }
    s2_tunedb_close(db);
    char names[1024];
    list_dir(names, sizeof names);
    cr_assert_str_eq(names, H100_FILE " " H100_FILE ".lock");
    char *text = read_text(db_path);
    cr_assert_eq(count_lines(text), 5);
    free(text);
}

Test(tunedb, save_creates_the_directory)
{
    char sub[256];
    snprintf(sub, sizeof sub, "%s/cache/s2lora", dir);
    s2_tunedb *db = NULL;
    s2_error err = {0};
    cr_assert_eq(s2_tunedb_open(sub, H100, &db, &err), S2_OK, "%s", err.msg);
    s2_tunedb_entry e = entry(1);
    put_ok(db, &e);
    save_ok(db);
    s2_tunedb_close(db);
    struct stat st;
    char file[512];
    snprintf(file, sizeof file, "%s/" H100_FILE, sub);
    cr_assert_eq(stat(file, &st), 0);
}

/* ------------------------------------------------------------------------ */
/* Missing files and errors                                                 */

Test(tunedb, missing_file_is_an_empty_db)
{
    char nowhere[256];
    snprintf(nowhere, sizeof nowhere, "%s/not/there", dir);
    s2_tunedb *db = NULL;
    s2_error err = {0};
    cr_assert_eq(s2_tunedb_open(nowhere, H100, &db, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(db->n_entries, 0);
    cr_assert_eq(db->n_warnings, 0);
    s2_tunedb_entry e = entry(1);
    cr_assert_eq(lookup(db, &e, S2_TUNEDB_STALE_OK, NULL), 0);
    s2_tunedb_close(db);
    s2_tunedb_close(NULL);
    struct stat st;
    cr_assert_neq(stat(nowhere, &st), 0, "open created %s", nowhere);
}

Test(tunedb, unwritable_dir_is_a_clear_error)
{
    /* A directory under a regular file cannot be made, whoever runs the test (even root). */
    char file[256], under[512];
    snprintf(file, sizeof file, "%s/plain-file", dir);
    write_text(file, "x\n");
    snprintf(under, sizeof under, "%s/cache", file);
    s2_tunedb *db = NULL;
    s2_error err = {0};
    cr_assert_eq(s2_tunedb_open(under, H100, &db, &err), S2_OK, "%s", err.msg);
    s2_tunedb_entry e = entry(1);
    put_ok(db, &e);
    cr_assert_eq(s2_tunedb_save(db, &err), S2_ERR_IO);
    cr_assert(strstr(err.msg, under), "'%s' does not name %s", err.msg, under);
    cr_assert(strstr(err.msg, "Not a directory"), "%s", err.msg);
    s2_error_clear(&err);
    s2_tunedb_close(db);

    /* A read-only directory (root writes anyway, so only a user can see this refusal). */
    if (geteuid() == 0)
        return;
    db = open_db();
    put_ok(db, &e);
    cr_assert_eq(chmod(dir, 0555), 0);
    cr_assert_eq(s2_tunedb_save(db, &err), S2_ERR_IO);
    cr_assert(strstr(err.msg, db->lock_path), "'%s' does not name the lock file", err.msg);
    cr_assert(strstr(err.msg, "Permission denied"), "%s", err.msg);
    s2_error_clear(&err);
    s2_tunedb_close(db);
}

Test(tunedb, unreadable_file_is_a_clear_error)
{
    /* The db's file name taken by a directory: it exists but cannot be read as a file. */
    cr_assert_eq(mkdir(db_path, 0755), 0);
    s2_tunedb *db = NULL;
    s2_error err = {0};
    cr_assert_eq(s2_tunedb_open(dir, H100, &db, &err), S2_ERR_IO);
    cr_assert_null(db);
    cr_assert(strstr(err.msg, db_path), "'%s' does not name %s", err.msg, db_path);
    s2_error_clear(&err);
}

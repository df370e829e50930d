/* tune_db.c — the tuning database: JSON lines per GPU model, merged under flock. See tune_db.h. */
#define _GNU_SOURCE
#include "runtime/tune/tune_db.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "gen/emit.h"
#include "gen/plan.h"
#include "runtime/core/blas.h"
#include "runtime/core/jit.h"
#include "runtime/ops/lora.h"

/* A line of another s2lora version, written back unchanged by save. */
struct s2_tunedb_line {
    char *text;
};

/* What reading one line or checking one entry concluded. */
typedef enum verdict {
    V_OK,   /* a usable entry */
    V_BAD,  /* corrupt: skipped, and dropped by the next save */
    V_KEEP, /* another version's line (newer "v", tile this build cannot parse): skipped, kept */
} verdict;

/* ------------------------------------------------------------------------ */
/* Fields, in the order every line lists them ("v" comes first, apart)      */

typedef enum field_type { F_STR, F_NUM } field_type;

typedef struct field {
    const char *name;
    field_type type;
    size_t off, cap; /* cap: the char array's size (F_STR) */
} field;

#define STR_FIELD(f) {#f, F_STR, offsetof(s2_tunedb_entry, f), sizeof ((s2_tunedb_entry *)0)->f}
#define NUM_FIELD(f) {#f, F_NUM, offsetof(s2_tunedb_entry, f), 0}
static const field FIELDS[] = {
    STR_FIELD(device), STR_FIELD(arch),       STR_FIELD(kernel),   STR_FIELD(spec_sha256),
    STR_FIELD(shape),  STR_FIELD(tile),       NUM_FIELD(default_ms), NUM_FIELD(tuned_ms),
    STR_FIELD(gen),    STR_FIELD(nvrtc),      STR_FIELD(when),
};
#define N_FIELDS ((int)(sizeof FIELDS / sizeof FIELDS[0]))

static char *field_str(s2_tunedb_entry *e, const field *f) { return (char *)e + f->off; }
static const char *field_cstr(const s2_tunedb_entry *e, const field *f)
{
    return (const char *)e + f->off;
}
static double *field_num(s2_tunedb_entry *e, const field *f) { return (double *)((char *)e + f->off); }
static double field_cnum(const s2_tunedb_entry *e, const field *f)
{
    return *(const double *)((const char *)e + f->off);
}

/* ------------------------------------------------------------------------ */
/* Names, shape classes, times, keys                                        */

static int is_alnum(unsigned char c)
{
    /* ASCII only: the slug must not depend on the locale. */
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

const char *s2_tunedb_slug(const char *device, char *buf, size_t n)
{
    size_t len = 0;
    int dash = 0; /* a run of other bytes is pending; written only before the next alnum */
    for (const unsigned char *p = (const unsigned char *)device; *p; p++) {
        if (!is_alnum(*p)) {
            dash = len > 0;
            continue;
        }
        if (len + dash + 1 >= n)
            return NULL;
        if (dash)
            buf[len++] = '-';
        dash = 0;
        buf[len++] = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
    }
    if (len == 0 || n == 0)
        return NULL;
    buf[len] = '\0';
    return buf;
}

const char *s2_tunedb_shape_class(int seqlen, char *buf, size_t n)
{
    if (seqlen < 1)
        return NULL;
    long long bucket = 1;
    while (bucket < seqlen)
        bucket *= 2;
    int len = snprintf(buf, n, "N<=%lld", bucket);
    return len >= 0 && (size_t)len < n ? buf : NULL;
}

const char *s2_tunedb_now(char when[21])
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(when, 21, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return when;
}

s2_tunedb_key s2_tunedb_entry_key(const s2_tunedb_entry *e)
{
    s2_tunedb_key k = {e->device, e->arch, e->kernel, e->spec_sha256, e->shape};
    return k;
}

static int key_cmp(const s2_tunedb_key *a, const s2_tunedb_key *b)
{
    const char *const x[] = {a->device, a->arch, a->kernel, a->spec_sha256, a->shape};
    const char *const y[] = {b->device, b->arch, b->kernel, b->spec_sha256, b->shape};
    for (int i = 0; i < 5; i++) {
        int c = strcmp(x[i], y[i]);
        if (c)
            return c;
    }
    return 0;
}

/* 1 if candidate c should replace the held entry h of the same key: one this generator can
 * use beats a stale one, then a local measurement an imported one (whatever their dates: an
 * import is another machine's word for this GPU model, the local one was measured here), then
 * the newer "when"; ties keep h. */
static int prefer(const s2_tunedb_entry *c, const s2_tunedb_entry *h)
{
    if (c->stale != h->stale)
        return !c->stale;
    if (c->imported != h->imported)
        return !c->imported;
    return strcmp(c->when, h->when) > 0;
}

/* ------------------------------------------------------------------------ */
/* Checking an entry (put and every line read share this)                   */

static int is_hex64(const char *s)
{
    for (int i = 0; i < 64; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return s[64] == '\0';
}

/* "YYYY-MM-DDTHH:MM:SSZ": the one form, so times compare as text. */
static int is_when(const char *s)
{
    static const char pattern[] = "dddd-dd-ddTdd:dd:ddZ";
    for (int i = 0; pattern[i]; i++) {
        int ok = pattern[i] == 'd' ? s[i] >= '0' && s[i] <= '9' : s[i] == pattern[i];
        if (!ok)
            return 0;
    }
    return s[sizeof pattern - 1] == '\0';
}

/* The seconds since the epoch of a "when" of the right form, or -1 when it is no real UTC time
 * from 1970 on (month 13, February 30, hour 24, ...). */
static time_t when_time(const char *s)
{
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int y, mo, d, h, mi, se;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2dZ", &y, &mo, &d, &h, &mi, &se) != 6)
        return -1;
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > days[mo - 1] + (mo == 2 && leap) ||
        h > 23 || mi > 59 || se > 59)
        return -1;
    struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h,
                    .tm_min = mi, .tm_sec = se};
    return timegm(&tm);
}

/* "N<=K" for K a power of two in 1..2^31, written as s2_tunedb_shape_class() writes it. */
static int is_shape_class(const char *s)
{
    if (strncmp(s, "N<=", 3) != 0 || s[3] < '1' || s[3] > '9')
        return 0;
    char *end;
    errno = 0;
    unsigned long long k = strtoull(s + 3, &end, 10);
    return errno == 0 && *end == '\0' && k <= (1ull << 31) && (k & (k - 1)) == 0;
}

/* 1 if kernel names a unit the tuner tunes: an attention unit or a LoRA product. */
static int known_kernel(const char *kernel, char *list, size_t n)
{
    size_t used = 0;
    int found = 0;
    list[0] = '\0';
    for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++) {
        const char *name = s2_attn_unit_name((s2_attn_unit)u);
        found |= strcmp(kernel, name) == 0;
        used += (size_t)snprintf(list + used, used < n ? n - used : 0, "%s%s", u ? ", " : "",
                                 name);
    }
    for (int f = 0; f < 2; f++) /* dtype gradients, then the _f32 names of dA and dB */
        for (int g = 0; g < S2_LG_COUNT; g++) {
            char name[64];
            s2_tune_lora_kernel_name((s2_lora_gemm)g, f, name, sizeof name);
            if (f && !strstr(name, "_f32"))
                continue;
            found |= strcmp(kernel, name) == 0;
            used += (size_t)snprintf(list + used, used < n ? n - used : 0, ", %s", name);
        }
    return found;
}

/* Each string fits its array, is not empty and is UTF-8 (or its line could not be read back). */
static verdict check_strings(const s2_tunedb_entry *e, char *why, size_t n)
{
    for (int i = 0; i < N_FIELDS; i++) {
        const field *f = &FIELDS[i];
        if (f->type != F_STR)
            continue;
        size_t len = strnlen(field_cstr(e, f), f->cap);
        if (len == f->cap) {
            snprintf(why, n, "'%s' is longer than %zu bytes", f->name, f->cap - 1);
            return V_BAD;
        }
        if (len == 0) {
            snprintf(why, n, "'%s' is empty", f->name);
            return V_BAD;
        }
        json_t *probe = json_string(field_cstr(e, f)); /* NULL: not UTF-8 */
        if (!probe) {
            snprintf(why, n, "'%s' is not UTF-8", f->name);
            return V_BAD;
        }
        json_decref(probe);
    }
    return V_OK;
}

static verdict check_values(const s2_tunedb_entry *e, const char *slug, char *why, size_t n)
{
    if (!is_hex64(e->spec_sha256)) {
        snprintf(why, n, "'spec_sha256' must be 64 lowercase hex digits, got '%s'", e->spec_sha256);
        return V_BAD;
    }
    if (!is_when(e->when)) {
        snprintf(why, n, "'when' must be UTC as YYYY-MM-DDTHH:MM:SSZ, got '%s'", e->when);
        return V_BAD;
    }
    time_t when = when_time(e->when), now = time(NULL);
    if (when < 0) {
        snprintf(why, n, "'when' %s is not a real UTC time from 1970 on", e->when);
        return V_BAD;
    }
    if (when > now + S2_TUNEDB_CLOCK_SKEW_S) {
        char at[21];
        snprintf(why, n, "'when' %s lies after this machine's clock (%s) by more than the %d s "
                 "(one day) allowed for clock skew", e->when, s2_tunedb_now(at),
                 S2_TUNEDB_CLOCK_SKEW_S);
        return V_BAD;
    }
    for (int i = 0; i < N_FIELDS; i++) {
        if (FIELDS[i].type != F_NUM)
            continue;
        double v = field_cnum(e, &FIELDS[i]);
        if (!isfinite(v) || v <= 0 || v > S2_TUNEDB_MAX_MS) {
            snprintf(why, n, "'%s' must be a finite time > 0 ms and at most %.0f ms (one hour), "
                     "got %g", FIELDS[i].name, S2_TUNEDB_MAX_MS, v);
            return V_BAD;
        }
    }
    char own[sizeof e->device];
    if (!s2_tunedb_slug(e->device, own, sizeof own) || strcmp(own, slug) != 0) {
        snprintf(why, n, "device '%s' does not belong in tune-%s.jsonl", e->device, slug);
        return V_BAD;
    }
    if (!is_shape_class(e->shape)) {
        snprintf(why, n, "'shape' must be a shape class N<=K, K a power of two in 1..2147483648, "
                 "got '%s'", e->shape);
        return V_BAD;
    }
    return V_OK;
}

/* Names another s2lora may know and this one does not: the line is kept (V_KEEP). */
static verdict check_known(const s2_tunedb_entry *e, char *why, size_t n)
{
    if (!s2_jit_arch_valid(e->arch)) {
        snprintf(why, n, "unknown arch '%s' (valid: sm_80, sm_86, sm_89, sm_90, sm_90a)",
                 e->arch);
        return V_KEEP;
    }
    char list[512];
    if (!known_kernel(e->kernel, list, sizeof list)) {
        snprintf(why, n, "unknown kernel '%s' (valid: %s)", e->kernel, list);
        return V_KEEP;
    }
    return V_OK;
}

/* After every V_BAD check, so that V_KEEP means a name this build does not know is the entry's
 * only fault. */
static verdict check_tile(const s2_tunedb_entry *e, char *why, size_t n)
{
    if (!strncmp(e->kernel, "lora_", 5)) { /* a LoRA product: "algo=K", K in 0..max */
        int k = -1, used = 0;
        if (sscanf(e->tile, "algo=%d%n", &k, &used) == 1 && e->tile[used] == '\0' && k >= 0 &&
            k <= S2_BLAS_MAX_ALGOS)
            return V_OK;
        snprintf(why, n, "no longer a valid LoRA choice: '%s' (valid: algo=0..%d)", e->tile,
                 S2_BLAS_MAX_ALGOS);
        return V_KEEP;
    }
    s2_error sub = {0};
    if (s2_plan_check_tile_text(e->tile, e->arch, &sub) == S2_OK)
        return V_OK;
    snprintf(why, n, "no longer a valid tile: %s", sub.msg ? sub.msg : e->tile);
    s2_error_clear(&sub);
    return V_KEEP;
}

static verdict check_entry(const s2_tunedb_entry *e, const char *slug, char *why, size_t n)
{
    verdict v = check_strings(e, why, n);
    if (v == V_OK)
        v = check_values(e, slug, why, n);
    if (v == V_OK)
        v = check_known(e, why, n);
    if (v == V_OK)
        v = check_tile(e, why, n);
    return v;
}

/* ------------------------------------------------------------------------ */
/* Reading one line                                                         */

static verdict check_version(json_t *o, char *why, size_t n)
{
    json_t *v = json_object_get(o, "v");
    if (!v) {
        snprintf(why, n, "missing key 'v'");
        return V_BAD;
    }
    if (!json_is_integer(v)) {
        snprintf(why, n, "'v' must be an integer");
        return V_BAD;
    }
    long long ver = json_integer_value(v);
    if (ver > S2_TUNEDB_FORMAT) {
        snprintf(why, n, "format version %lld is newer than this s2lora reads (%d); line kept",
                 ver, S2_TUNEDB_FORMAT);
        return V_KEEP;
    }
    if (ver != S2_TUNEDB_FORMAT) {
        snprintf(why, n, "unknown format version %lld", ver);
        return V_BAD;
    }
    return V_OK;
}

/* Copies the fields of o and its "source" into *e; other keys are ignored. */
static verdict read_fields(json_t *o, s2_tunedb_entry *e, char *why, size_t n)
{
    memset(e, 0, sizeof *e);
    for (int i = 0; i < N_FIELDS; i++) {
        const field *f = &FIELDS[i];
        json_t *v = json_object_get(o, f->name);
        if (!v) {
            snprintf(why, n, "missing key '%s'", f->name);
            return V_BAD;
        }
        if (f->type == F_NUM) {
            if (!json_is_number(v)) {
                snprintf(why, n, "'%s' must be a number", f->name);
                return V_BAD;
            }
            *field_num(e, f) = json_number_value(v);
            continue;
        }
        if (!json_is_string(v)) {
            snprintf(why, n, "'%s' must be a string", f->name);
            return V_BAD;
        }
        if (json_string_length(v) >= f->cap) {
            snprintf(why, n, "'%s' is longer than %zu bytes", f->name, f->cap - 1);
            return V_BAD;
        }
        memcpy(field_str(e, f), json_string_value(v), json_string_length(v) + 1);
    }
    json_t *src = json_object_get(o, "source"); /* absent: a local measurement */
    if (src && (!json_is_string(src) || strcmp(json_string_value(src), "import") != 0)) {
        snprintf(why, n, "'source' must be \"import\" (or absent: measured here)");
        return V_BAD;
    }
    e->imported = src != NULL;
    return V_OK;
}

static verdict parse_line(const char *text, size_t len, const char *slug, s2_tunedb_entry *e,
                          char *why, size_t n)
{
    json_error_t je;
    json_t *o = json_loadb(text, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &je);
    if (!o) {
        snprintf(why, n, "not JSON: %s (column %d)", je.text, je.column);
        return V_BAD;
    }
    verdict v = V_BAD;
    if (!json_is_object(o))
        snprintf(why, n, "not a JSON object");
    else if ((v = check_version(o, why, n)) == V_OK && (v = read_fields(o, e, why, n)) == V_OK) {
        v = check_entry(e, slug, why, n);
        e->stale = strcmp(e->gen, S2_GEN_VERSION) != 0;
    }
    json_decref(o);
    return v;
}

/* ------------------------------------------------------------------------ */
/* The db's collections                                                     */

/* Index of key, or where it would go (*found = 0). */
static int find(const s2_tunedb *db, const s2_tunedb_key *key, int *found)
{
    int lo = 0, hi = db->n_entries;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        s2_tunedb_key k = s2_tunedb_entry_key(&db->entries[mid]);
        int c = key_cmp(&k, key);
        if (c == 0) {
            *found = 1;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = 0;
    return lo;
}

static s2_status insert_at(s2_tunedb *db, int at, const s2_tunedb_entry *e)
{
    if (db->n_entries == db->cap_entries) {
        int cap = db->cap_entries ? 2 * db->cap_entries : 16;
        s2_tunedb_entry *ne = realloc(db->entries, (size_t)cap * sizeof *ne);
        if (!ne)
            return S2_ERR_NOMEM;
        db->entries = ne;
        db->cap_entries = cap;
    }
    memmove(&db->entries[at + 1], &db->entries[at],
            (size_t)(db->n_entries - at) * sizeof *db->entries);
    db->entries[at] = *e;
    db->n_entries++;
    return S2_OK;
}

typedef enum merged { M_HELD, M_NEW, M_REPLACED, M_NOMEM } merged;

/* Adds e under the merge rule (tune_db.h). */
static merged merge_entry(s2_tunedb *db, const s2_tunedb_entry *e)
{
    s2_tunedb_key k = s2_tunedb_entry_key(e);
    int found;
    int at = find(db, &k, &found);
    if (!found)
        return insert_at(db, at, e) == S2_OK ? M_NEW : M_NOMEM;
    if (!prefer(e, &db->entries[at]))
        return M_HELD;
    db->entries[at] = *e;
    return M_REPLACED;
}

/* Adds a kept line unless the same text is held already (one file read twice, by open and save). */
static s2_status keep_line(s2_tunedb *db, const char *text)
{
    for (int i = 0; i < db->n_kept; i++)
        if (strcmp(db->kept[i].text, text) == 0)
            return S2_OK;
    if (db->n_kept == db->cap_kept) {
        int cap = db->cap_kept ? 2 * db->cap_kept : 8;
        s2_tunedb_line *nk = realloc(db->kept, (size_t)cap * sizeof *nk);
        if (!nk)
            return S2_ERR_NOMEM;
        db->kept = nk;
        db->cap_kept = cap;
    }
    char *copy = strdup(text);
    if (!copy)
        return S2_ERR_NOMEM;
    db->kept[db->n_kept++].text = copy;
    return S2_OK;
}

/* Warnings are best effort: one that cannot be stored (cap, memory) is dropped, never fatal. */
static void add_warning_owned(s2_tunedb *db, char *w)
{
    if (!w)
        return;
    if (db->n_warnings == S2_TUNEDB_MAX_WARNINGS) {
        free(w);
        return;
    }
    char **nw = realloc(db->warnings, (size_t)(db->n_warnings + 1) * sizeof *nw);
    if (!nw) {
        free(w);
        return;
    }
    db->warnings = nw;
    db->warnings[db->n_warnings++] = w;
}

static void skip_line(s2_tunedb *db, const char *name, int line, const char *why)
{
    char *w = NULL;
    db->n_skipped++;
    if (asprintf(&w, "%s:%d: skipped: %s", name, line, why) < 0)
        w = NULL;
    add_warning_owned(db, w);
}

static void free_contents(s2_tunedb *db)
{
    free(db->entries);
    for (int i = 0; i < db->n_kept; i++)
        free(db->kept[i].text);
    free(db->kept);
    s2_tunedb_clear_warnings(db);
}

/* ------------------------------------------------------------------------ */
/* Reading a file                                                           */

static int is_blank(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r')
            return 0;
    return 1;
}

/* One line of name; keep: whether lines of other versions are kept (not on import). *n_ok
 * counts the lines that passed. */
static s2_status read_line(s2_tunedb *into, const char *name, int line_no, char *p, size_t len,
                           int keep, int *n_ok)
{
    if (len > 0 && p[len - 1] == '\r') /* a checkout with CRLF line ends */
        p[--len] = '\0';
    if (is_blank(p, len))
        return S2_OK;
    s2_tunedb_entry e;
    char why[1024];
    verdict v = parse_line(p, len, into->slug, &e, why, sizeof why);
    if (v == V_OK) {
        (*n_ok)++;
        return merge_entry(into, &e) == M_NOMEM ? S2_ERR_NOMEM : S2_OK;
    }
    skip_line(into, name, line_no, why);
    return v == V_KEEP && keep ? keep_line(into, p) : S2_OK;
}

/* Reads text (NUL-terminated, size bytes, modified in place) into an empty or open db; *n_ok
 * (may be NULL) receives how many lines passed. */
static s2_status read_text(s2_tunedb *into, const char *name, char *text, size_t size, int keep,
                           int *n_ok, s2_error *err)
{
    char *p = text, *end = text + size;
    int ok = 0;
    for (int line_no = 1; p < end; line_no++) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) : (size_t)(end - p);
        p[len] = '\0';
        if (read_line(into, name, line_no, p, len, keep, &ok) != S2_OK)
            return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", name);
        p += len + 1;
    }
    if (n_ok)
        *n_ok = ok;
    return S2_OK;
}

/* Reads path; a missing path (or a missing directory on it) gives *text = NULL and S2_OK. */
static s2_status read_if_present(const char *path, char **text, size_t *size, s2_error *err)
{
    *text = NULL;
    *size = 0;
    struct stat st;
    if (stat(path, &st) != 0 && (errno == ENOENT || errno == ENOTDIR))
        return S2_OK;
    return s2_read_file_max(path, S2_MAX_TUNE_DB_BYTES, "a tuning database", text, size, err);
}

/* A db of slug with nothing in it, for reading a file before merging it. */
static void init_scratch(s2_tunedb *scratch, const s2_tunedb *like)
{
    memset(scratch, 0, sizeof *scratch);
    memcpy(scratch->slug, like->slug, sizeof scratch->slug);
}

/* Merges scratch's entries, kept lines and warnings into db; scratch keeps nothing it gave. c
 * (may be NULL) counts what the entries did. */
static s2_status merge_scratch(s2_tunedb *db, s2_tunedb *scratch, s2_tunedb_import_counts *c)
{
    for (int i = 0; i < scratch->n_entries; i++) {
        merged m = merge_entry(db, &scratch->entries[i]);
        if (m == M_NOMEM)
            return S2_ERR_NOMEM;
        if (c) {
            c->added += m == M_NEW;
            c->replaced += m == M_REPLACED;
            c->held += m == M_HELD;
        }
    }
    for (int i = 0; i < scratch->n_kept; i++)
        if (keep_line(db, scratch->kept[i].text) != S2_OK)
            return S2_ERR_NOMEM;
    for (int i = 0; i < scratch->n_warnings; i++)
        add_warning_owned(db, scratch->warnings[i]);
    scratch->n_warnings = 0;
    db->n_skipped += scratch->n_skipped;
    return S2_OK;
}

/* Reads the file at path into a scratch db and merges that into db: the db's own file (imp
 * NULL: lines of other versions kept, each line's own "source") or an import (every entry
 * imported, nothing kept, *imp counts). */
static s2_status merge_file(s2_tunedb *db, const char *path, char *text, size_t size,
                            s2_tunedb_import_counts *imp, s2_error *err)
{
    s2_tunedb scratch;
    init_scratch(&scratch, db);
    int taken = 0;
    s2_status st = read_text(&scratch, path, text, size, !imp, &taken, err);
    if (st == S2_OK && imp) {
        for (int i = 0; i < scratch.n_entries; i++)
            scratch.entries[i].imported = 1;
        imp->taken = taken;
        imp->refused = scratch.n_skipped;
    }
    if (st == S2_OK && merge_scratch(db, &scratch, imp) != S2_OK)
        st = s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", path);
    free_contents(&scratch);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Writing                                                                  */

/* The shortest text that reads back as exactly v, so a save changes no number. */
static void put_number(s2_buf *b, double v)
{
    char num[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(num, sizeof num, "%.*g", prec, v);
        if (strtod(num, NULL) == v)
            break;
    }
    s2_buf_append(b, num, strlen(num));
}

static void put_string(s2_buf *b, const char *s)
{
    json_t *j = json_string(s);
    char *quoted = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    json_decref(j);
    if (!quoted) { /* entries are checked for UTF-8 on the way in: only memory fails here */
        b->oom = 1;
        return;
    }
    s2_buf_append(b, quoted, strlen(quoted));
    free(quoted);
}

static void put_entry(s2_buf *b, const s2_tunedb_entry *e)
{
    s2_buf_printf(b, "{\"v\":%d", S2_TUNEDB_FORMAT);
    for (int i = 0; i < N_FIELDS; i++) {
        s2_buf_printf(b, ", \"%s\":", FIELDS[i].name);
        if (FIELDS[i].type == F_NUM)
            put_number(b, field_cnum(e, &FIELDS[i]));
        else
            put_string(b, field_cstr(e, &FIELDS[i]));
    }
    if (e->imported)
        s2_buf_printf(b, ", \"source\":\"import\"");
    s2_buf_append(b, "}\n", 2);
}

static int cmp_line(const void *a, const void *b)
{
    return strcmp(((const s2_tunedb_line *)a)->text, ((const s2_tunedb_line *)b)->text);
}

/* The file's text: entries in key order, then the kept lines in text order. */
static s2_status serialize(const s2_tunedb *db, int with_kept, s2_buf *b)
{
    for (int i = 0; i < db->n_entries; i++)
        put_entry(b, &db->entries[i]);
    if (with_kept && db->n_kept > 0) {
        s2_tunedb_line *sorted = malloc((size_t)db->n_kept * sizeof *sorted);
        if (!sorted)
            return S2_ERR_NOMEM;
        memcpy(sorted, db->kept, (size_t)db->n_kept * sizeof *sorted);
        qsort(sorted, (size_t)db->n_kept, sizeof *sorted, cmp_line);
        for (int i = 0; i < db->n_kept; i++)
            s2_buf_printf(b, "%s\n", sorted[i].text);
        free(sorted);
    }
    return b->oom ? S2_ERR_NOMEM : S2_OK;
}

static s2_status write_db(const s2_tunedb *db, const char *path, int with_kept, s2_error *err)
{
    s2_buf b = {0};
    s2_status st = serialize(db, with_kept, &b);
    if (st != S2_OK)
        st = s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", path);
    else
        st = s2_write_file_atomic(path, b.data ? b.data : "", b.len, err);
    s2_buf_free(&b);
    return st;
}

/* Opens and locks the lock file; returns its descriptor (closing it unlocks), or -1. */
static int lock_file(const char *lock_path, s2_error *err)
{
    int fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        s2_error_set(err, S2_ERR_IO, "%s: cannot open the tuning db's lock file: %s", lock_path,
                     strerror(errno));
        return -1;
    }
    int rc;
    while ((rc = flock(fd, LOCK_EX)) != 0 && errno == EINTR)
        ;
    if (rc != 0) {
        s2_error_set(err, S2_ERR_IO, "%s: cannot lock: %s", lock_path, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* ------------------------------------------------------------------------ */
/* API                                                                      */

/* a b c d, concatenated into a new heap string; NULL when out of memory. */
static char *join(const char *a, const char *b, const char *c, const char *d)
{
    size_t n = strlen(a) + strlen(b) + strlen(c) + strlen(d) + 1;
    char *s = malloc(n);
    if (s)
        snprintf(s, n, "%s%s%s%s", a, b, c, d);
    return s;
}

s2_status s2_tunedb_open(const char *dir, const char *device, s2_tunedb **out, s2_error *err)
{
    *out = NULL;
    char slug[sizeof ((s2_tunedb *)0)->slug];
    if (!s2_tunedb_slug(device, slug, sizeof slug))
        return s2_error_set(err, S2_ERR_INVALID,
                            "tuning db: device name '%s' has no letters or digits to name a file",
                            device);
    s2_tunedb *db = calloc(1, sizeof *db);
    if (!db)
        return s2_error_set(err, S2_ERR_NOMEM, "tuning db: out of memory");
    memcpy(db->slug, slug, sizeof slug);
    db->dir = strdup(dir);
    db->path = join(dir, "/tune-", slug, ".jsonl");
    db->lock_path = db->path ? join(db->path, ".lock", "", "") : NULL;
    if (!db->dir || !db->lock_path) {
        s2_tunedb_close(db);
        return s2_error_set(err, S2_ERR_NOMEM, "tuning db: out of memory");
    }

    char *text;
    size_t size;
    s2_status st = read_if_present(db->path, &text, &size, err);
    if (st == S2_OK && text)
        st = read_text(db, db->path, text, size, 1, NULL, err);
    free(text);
    if (st != S2_OK) {
        s2_tunedb_close(db);
        return st;
    }
    *out = db;
    return S2_OK;
}

int s2_tunedb_lookup(const s2_tunedb *db, const s2_tunedb_key *key, unsigned flags,
                     s2_tunedb_entry *out)
{
    int found;
    int at = find(db, key, &found);
    if (!found || (db->entries[at].stale && !(flags & S2_TUNEDB_STALE_OK)))
        return 0;
    if (out)
        *out = db->entries[at];
    return 1;
}

s2_status s2_tunedb_put(s2_tunedb *db, const s2_tunedb_entry *e, s2_error *err)
{
    char why[1024];
    if (check_entry(e, db->slug, why, sizeof why) != V_OK)
        return s2_error_set(err, S2_ERR_INVALID, "tuning db %s: cannot put entry: %s", db->path,
                            why);
    s2_tunedb_entry copy = *e;
    copy.stale = strcmp(copy.gen, S2_GEN_VERSION) != 0;
    copy.imported = 0;
    s2_tunedb_key k = s2_tunedb_entry_key(&copy);
    int found;
    int at = find(db, &k, &found);
    if (found) {
        db->entries[at] = copy;
        return S2_OK;
    }
    if (insert_at(db, at, &copy) != S2_OK)
        return s2_error_set(err, S2_ERR_NOMEM, "tuning db %s: out of memory", db->path);
    return S2_OK;
}

s2_status s2_tunedb_save(s2_tunedb *db, s2_error *err)
{
    s2_status st = s2_mkdir_p(db->dir, err);
    if (st != S2_OK) {
        s2_error_prefix(err, "tuning db %s", db->path);
        return st;
    }
    int lock = lock_file(db->lock_path, err);
    if (lock < 0)
        return S2_ERR_IO;

    /* Under the lock the file cannot change: what is merged now is what gets replaced. */
    char *text;
    size_t size;
    st = read_if_present(db->path, &text, &size, err);
    if (st != S2_OK)
        goto unlock;
    if (text)
        st = merge_file(db, db->path, text, size, NULL, err);
    free(text);
    if (st == S2_OK)
        st = write_db(db, db->path, 1, err);
unlock:
    close(lock);
    return st;
}

s2_status s2_tunedb_import(s2_tunedb *db, const char *path, s2_tunedb_import_counts *counts,
                           s2_error *err)
{
    s2_tunedb_import_counts c = {0};
    char *text;
    size_t size;
    s2_status st = s2_read_file_max(path, S2_MAX_TUNE_DB_BYTES, "a tuning database", &text, &size,
                                    err);
    if (st == S2_OK) {
        st = merge_file(db, path, text, size, &c, err);
        free(text);
    }
    if (st != S2_OK)
        memset(&c, 0, sizeof c);
    if (counts)
        *counts = c;
    return st;
}

s2_status s2_tunedb_export(const s2_tunedb *db, const char *path, s2_error *err)
{
    return write_db(db, path, 0, err);
}

void s2_tunedb_clear_warnings(s2_tunedb *db)
{
    for (int i = 0; i < db->n_warnings; i++)
        free(db->warnings[i]);
    free(db->warnings);
    db->warnings = NULL;
    db->n_warnings = 0;
}

void s2_tunedb_close(s2_tunedb *db)
{
    if (!db)
        return;
    free_contents(db);
    free(db->dir);
    free(db->path);
    free(db->lock_path);
    free(db);
}

/*
 * fuzz_tune_db.c — the tuning database loader (runtime/tune/tune_db.c) on arbitrary files: the input
 * is the JSON-lines file of one GPU model, opened the way the tuner opens it.
 *
 * Beyond crashes and sanitizer reports it holds the database's promises: reading never fails
 * on content; the entries are sorted by key, one per key, and each is found by its key; an
 * entry read from a line is one put accepts; save and reopen, and export and import, give the
 * same entries, field by field and number by number.
 */
#include "fuzz.h"

#include "runtime/tune/tune_db.h"

#define DEVICE "NVIDIA H100 80GB HBM3"
#define FILE_NAME "tune-nvidia-h100-80gb-hbm3.jsonl"

/* Field by field; with_origin: the local/imported mark too (an import marks every entry). */
static int same_entry(const s2_tunedb_entry *a, const s2_tunedb_entry *b, int with_origin)
{
    return !strcmp(a->device, b->device) && !strcmp(a->arch, b->arch) &&
           !strcmp(a->kernel, b->kernel) && !strcmp(a->spec_sha256, b->spec_sha256) &&
           !strcmp(a->shape, b->shape) && !strcmp(a->tile, b->tile) &&
           a->default_ms == b->default_ms && a->tuned_ms == b->tuned_ms &&
           !strcmp(a->gen, b->gen) && !strcmp(a->nvrtc, b->nvrtc) &&
           !strcmp(a->when, b->when) && a->stale == b->stale &&
           (!with_origin || a->imported == b->imported);
}

static void check_same(const s2_tunedb *a, const s2_tunedb *b, int with_origin, const char *how)
{
    FUZZ_CHECK(a->n_entries == b->n_entries, "%s: %d entries became %d", how, a->n_entries,
               b->n_entries);
    for (int i = 0; i < a->n_entries; i++)
        FUZZ_CHECK(same_entry(&a->entries[i], &b->entries[i], with_origin),
                   "%s: entry %d (%s %s) changed", how, i, a->entries[i].kernel,
                   a->entries[i].tile);
}

static void check_db(s2_tunedb *db)
{
    FUZZ_CHECK(db->n_warnings <= S2_TUNEDB_MAX_WARNINGS && db->n_warnings <= db->n_skipped,
               "%d warnings for %d skipped lines", db->n_warnings, db->n_skipped);
    for (int i = 0; i < db->n_entries; i++) {
        const s2_tunedb_entry *e = &db->entries[i];
        s2_tunedb_key k = s2_tunedb_entry_key(e);
        s2_tunedb_entry found;
        FUZZ_CHECK(s2_tunedb_lookup(db, &k, S2_TUNEDB_STALE_OK, &found) == 1,
                   "entry %d not found by its key", i);
        FUZZ_CHECK(same_entry(e, &found, 1), "entry %d: lookup returned another", i);
        if (i > 0) {
            s2_tunedb_key p = s2_tunedb_entry_key(&db->entries[i - 1]);
            int c = strcmp(p.device, k.device);
            c = c ? c : strcmp(p.arch, k.arch);
            c = c ? c : strcmp(p.kernel, k.kernel);
            c = c ? c : strcmp(p.spec_sha256, k.spec_sha256);
            c = c ? c : strcmp(p.shape, k.shape);
            FUZZ_CHECK(c < 0, "entries %d and %d out of order or of one key", i - 1, i);
        }
        s2_error err = {0};
        s2_status st = s2_tunedb_put(db, e, &err);
        FUZZ_CHECK(st == S2_OK, "put refuses entry %d, which was read from a line: %s", i,
                   err.msg);
        s2_error_clear(&err);
    }
}

static s2_tunedb *open_db(const char *dir)
{
    s2_tunedb *db = NULL;
    s2_error err = {0};
    s2_status st = s2_tunedb_open(dir, DEVICE, &db, &err);
    FUZZ_CHECK(st == S2_OK && db, "open failed on content: %s", err.msg);
    s2_error_clear(&err);
    return db;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char dir[4096], empty[4096], export[4096];
    fuzz_path("db", dir);
    fuzz_path("empty", empty);
    fuzz_path("export.jsonl", export);
    mkdir(dir, 0700);
    fuzz_unlink("empty/" FILE_NAME);
    fuzz_put("db/" FILE_NAME, data, size);

    /* The first line as a device name: the slug never overflows or leaves bad bytes. */
    char *first = fuzz_cstr(data, size < 300 ? size : 300);
    char slug[64];
    if (s2_tunedb_slug(first, slug, sizeof slug))
        for (const char *p = slug; *p; p++)
            FUZZ_CHECK((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-',
                       "slug '%s'", slug);
    free(first);

    s2_tunedb *db = open_db(dir);
    fuzz_note("%d entries, %d lines skipped, %d kept", db->n_entries, db->n_skipped, db->n_kept);
    for (int i = 0; i < db->n_warnings; i++)
        fuzz_note("  %s", db->warnings[i]);
    check_db(db);

    s2_error err = {0};
    s2_status st = s2_tunedb_export(db, export, &err);
    FUZZ_CHECK(st == S2_OK, "export: %s", err.msg);
    s2_tunedb *imp = open_db(empty);
    s2_tunedb_import_counts c = {-1, -1, -1, -1, -1};
    st = s2_tunedb_import(imp, export, &c, &err);
    FUZZ_CHECK(st == S2_OK, "import of an export: %s", err.msg);
    FUZZ_CHECK(imp->n_skipped == 0 && c.refused == 0, "an export has %d skipped lines: %s",
               imp->n_skipped, imp->n_warnings ? imp->warnings[0] : "");
    FUZZ_CHECK(c.taken == db->n_entries && c.added == db->n_entries && c.replaced == 0 &&
                   c.held == 0,
               "import of %d entries: taken %d, added %d, replaced %d, held %d", db->n_entries,
               c.taken, c.added, c.replaced, c.held);
    check_same(db, imp, 0, "export and import");
    s2_tunedb_close(imp);

    st = s2_tunedb_save(db, &err);
    FUZZ_CHECK(st == S2_OK, "save: %s", err.msg);
    s2_tunedb *again = open_db(dir);
    FUZZ_CHECK(again->n_skipped == db->n_kept, "a saved file has %d skipped lines, %d kept",
               again->n_skipped, db->n_kept);
    check_same(db, again, 1, "save and reopen");
    s2_tunedb_close(again);
    s2_tunedb_close(db);
    s2_error_clear(&err);
    return 0;
}

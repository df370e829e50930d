/*
 * tune_db.h — the tuning database: which tile the tuner measured fastest, per GPU model.
 *
 * One JSON-lines file per GPU model, DIR/tune-<slug>.jsonl, where DIR is normally the
 * kernel cache directory (callers resolve it, e.g. with s2_jit_cache_dir() and no
 * cache_dir option: ${S2LORA_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/s2lora}) and <slug> is
 * s2_tunedb_slug() of the device name. One entry a line, keys always in this order:
 *
 *   {"v":1, "device":"NVIDIA H100 80GB HBM3", "arch":"sm_90a", "kernel":"attn_fwd",
 *    "spec_sha256":"<64 hex>", "shape":"N<=16384", "tile":"fwd_warps=4,...",
 *    "default_ms":1.23, "tuned_ms":0.98, "gen":"s2lora-gen-1", "nvrtc":"13.0",
 *    "when":"2026-11-25T18:00:00Z"}
 *
 * (written on one line), with `, "source":"import"` before the '}' for an entry taken from
 * another machine's file by s2_tunedb_import(); a line without "source" is a measurement of
 * this machine ("local"), as every line written before the key existed is. The key of an
 * entry is (device, arch, kernel, spec_sha256, shape); a db holds at most one entry per key.
 * Where two entries of one key meet (two lines of one file, an import, a save that finds the
 * file changed), the one this generator can use wins (not stale over stale), then a local
 * measurement over an imported one whatever their dates, then the newer "when"; on a tie the
 * entry already held stays. Saved files list entries sorted by key, so copies of one file
 * merge well in version control.
 *
 * Reading never fails on content. Every line read (open, save's re-read, import) and every
 * put is checked, and a line that fails is skipped, counted and reported in warnings
 * ("FILE:LINE: skipped: missing key 'tile'"); the rest of the file loads. A line is skipped
 * when it is not JSON, lacks a key, has a value of the wrong type, names another device or a
 * format version other than 1, or when
 *   - spec_sha256 is not 64 lowercase hex digits;
 *   - shape is not a shape class, "N<=K" for K a power of two in 1..2^31
 *     (s2_tunedb_shape_class());
 *   - when is not a real UTC time from 1970 on as YYYY-MM-DDTHH:MM:SSZ, or lies more than
 *     S2_TUNEDB_CLOCK_SKEW_S (one day, for clocks that disagree) after this machine's now: a
 *     date in the future would win every merge forever;
 *   - default_ms or tuned_ms is not finite, > 0 and <= S2_TUNEDB_MAX_MS (one hour);
 *   - arch is not one the plan builds for (s2_jit_arch_valid());
 *   - kernel is not a tuned unit: "attn_fwd", "attn_bwd" (s2_attn_unit_name()) or a LoRA
 *     product, "lora_u" ... "lora_db_f32" (s2_tune_lora_kernel_name());
 *   - the tile is not one the plan knows for that kernel: for attention every key known and
 *     its value in that key's range, wgmma only on sm_90a (s2_plan_check_tile_text()); for
 *     LoRA "algo=K", K in 0..S2_BLAS_MAX_ALGOS.
 * Entries written by another generator version ("gen" != S2_GEN_VERSION) load with stale = 1:
 * lookup ignores them unless asked, so a caller can warn and retune.
 *
 * Lines written by another s2lora version — a JSON object with a newer "v", or an entry
 * whose only fault is an arch, kernel or tile this build does not know — are kept: save
 * writes them back unchanged after the entries, so an older s2lora sharing the file does not
 * delete a newer one's results. Every other skipped line (garbage, merge markers, missing
 * keys, impossible values) is dropped by save.
 *
 * Concurrency: readers need no lock (files are replaced by rename, so a reader sees a whole
 * old file or a whole new one). s2_tunedb_save() holds flock(2) on DIR/tune-<slug>.jsonl.lock
 * while it re-reads the file, merges it into the db and renames the new file into place, so
 * processes saving at once never lose each other's entries. The lock file stays (removing it
 * would race). flock is advisory and local: a DIR on NFS may not be protected.
 *
 * Nothing here prints or exits. Functions that can fail return an s2_status and fill err.
 */
#ifndef S2_TUNE_DB_H
#define S2_TUNE_DB_H

#include <stddef.h>

#include "gen/plan.h"
#include "gen/util.h"

/* The line format this build reads and writes ("v"). */
#define S2_TUNEDB_FORMAT 1

/* How far after this machine's clock an entry's "when" may lie (seconds): one day. */
#define S2_TUNEDB_CLOCK_SKEW_S 86400

/* The longest time an entry may hold, ms: one hour. A kernel or product tuned here takes
 * micro- to milliseconds; anything near this is a broken measurement or a broken file. */
#define S2_TUNEDB_MAX_MS 3600000.0

/* Warnings a db keeps; n_skipped goes on counting past it. */
#define S2_TUNEDB_MAX_WARNINGS 1000

/* Lookup flag: also return an entry written by another generator version. */
#define S2_TUNEDB_STALE_OK 1u

/*
 * One entry, by value: fixed arrays, so entries copy with '=' and nothing inside is freed.
 * Every string is NUL-terminated; a value too long for its array is refused (put) or its
 * line skipped (load).
 */
typedef struct s2_tunedb_entry {
    char device[256];     /* the CUDA device name, as cudaGetDeviceProperties reports it */
    char arch[32];        /* "sm_90a" */
    char kernel[64];      /* what was tuned: "attn" */
    char spec_sha256[65]; /* the spec's SHA-256, 64 lowercase hex digits */
    char shape[64];       /* shape class, s2_tunedb_shape_class() for attention */
    char tile[S2_PLAN_TILE_STR_MAX]; /* s2_plan_tile_str() text of the fastest tile */
    double default_ms;    /* the default tile's time, ms: finite, > 0, <= S2_TUNEDB_MAX_MS */
    double tuned_ms;      /* this tile's time, ms: the same range */
    char gen[64];         /* S2_GEN_VERSION of the generator that built the kernels */
    char nvrtc[32];       /* NVRTC version, "13.0" */
    char when[21];        /* UTC, "YYYY-MM-DDTHH:MM:SSZ" (compares as text); s2_tunedb_now() */
    int stale;            /* set by the db, never written: 1 when gen != S2_GEN_VERSION */
    int imported;         /* set by the db: 1 for an entry taken by s2_tunedb_import(), written
                             as "source":"import"; 0 for a local measurement */
} s2_tunedb_entry;

/* The key of an entry; the strings are the caller's (or point into an entry). */
typedef struct s2_tunedb_key {
    const char *device, *arch, *kernel, *spec_sha256, *shape;
} s2_tunedb_key;

/* Public fields are read-only for callers; the rest belongs to tune_db.c. */
typedef struct s2_tunedb_line s2_tunedb_line;
typedef struct s2_tunedb {
    char *dir;                 /* DIR, as given to s2_tunedb_open() */
    char *path;                /* DIR/tune-<slug>.jsonl */
    char *lock_path;           /* path + ".lock" */
    char slug[256];            /* s2_tunedb_slug() of the device this db was opened for */
    s2_tunedb_entry *entries;  /* sorted by key, one per key; stale ones included */
    int n_entries;
    int n_skipped;             /* lines skipped by every read so far (open, import, save) */
    char **warnings;           /* "FILE:LINE: skipped: why", in the order they were found */
    int n_warnings;            /* at most S2_TUNEDB_MAX_WARNINGS */
    /* private */
    int cap_entries;
    s2_tunedb_line *kept;      /* lines of other s2lora versions, written back by save */
    int n_kept, cap_kept;
} s2_tunedb;

/*
 * The file-name slug of a device name: ASCII letters lowercased, digits kept, every run of
 * other bytes one '-', none leading or trailing ("NVIDIA H100 80GB HBM3" ->
 * "nvidia-h100-80gb-hbm3"). Returns buf, or NULL when the slug is empty or does not fit n.
 */
const char *s2_tunedb_slug(const char *device, char *buf, size_t n);

/*
 * The shape class the tuner keys attention entries by: "N<=2^k" for the smallest power of
 * two 2^k >= seqlen (the longest sequence of the batch): 8192 -> "N<=8192", 8193 and 16384
 * -> "N<=16384", 1 -> "N<=1". A tile's speed depends on N mostly through the grid size, so
 * one measurement serves every N of its bucket. Returns buf, or NULL when seqlen < 1 or the
 * text does not fit n (24 bytes always do).
 */
const char *s2_tunedb_shape_class(int seqlen, char *buf, size_t n);

/* The current UTC time as "YYYY-MM-DDTHH:MM:SSZ", for entry.when. Returns when. */
const char *s2_tunedb_now(char when[21]);

/* The key of e; its strings point into e, so it lives as long as e. */
s2_tunedb_key s2_tunedb_entry_key(const s2_tunedb_entry *e);

/*
 * Opens the db of device in dir: reads dir/tune-<slug>.jsonl if it exists (a missing file or
 * directory is an empty db; nothing is created until save). Skipped lines become warnings,
 * not errors. On S2_OK *db is a new db the caller frees with s2_tunedb_close(). Fails with
 * S2_ERR_INVALID for a device name with an empty slug, S2_ERR_IO (naming the path) for a file
 * that exists but cannot be read, S2_ERR_NOMEM; then *db is NULL.
 */
s2_status s2_tunedb_open(const char *dir, const char *device, s2_tunedb **db, s2_error *err);

/*
 * Finds the entry of key. Stale entries (another generator version) count only with
 * S2_TUNEDB_STALE_OK in flags. Returns 1 and copies the entry to *out (when out is not
 * NULL) if found, else 0 and leaves *out alone. Only one entry per key is ever held — the
 * newest, as the merge rule above chose.
 */
int s2_tunedb_lookup(const s2_tunedb *db, const s2_tunedb_key *key, unsigned flags,
                     s2_tunedb_entry *out);

/*
 * Puts a copy of *e into the db as a local measurement, replacing the entry of the same key
 * whatever its "when" or origin (the caller's measurement is the news). e->stale and
 * e->imported are ignored (recomputed; imported = 0). In memory only: s2_tunedb_save() writes
 * it. Fails with S2_ERR_INVALID, saying which field is wrong, for an entry its line would be
 * skipped as (the checks above: empty or overlong string, bad hex, shape, time or arch,
 * unknown kernel, ms out of range, tile the plan does not know, device of another slug), and
 * with S2_ERR_NOMEM; the db is then unchanged.
 */
s2_status s2_tunedb_put(s2_tunedb *db, const s2_tunedb_entry *e, s2_error *err);

/*
 * Writes the db to its file: creates the directory if needed, takes the lock, re-reads the
 * file and merges it into the db (the merge rule above: entries another process saved
 * since open are kept, and come into this db), then writes every entry sorted by key, one a
 * line, plus the kept lines of other versions, to a temporary file renamed over the old one
 * (s2_write_file_atomic), and releases the lock. Warnings of the re-read are added to the
 * db's. Fails with S2_ERR_IO naming the path that could not be created, locked or written;
 * the file is then unchanged (the db may hold entries merged from it).
 */
s2_status s2_tunedb_save(s2_tunedb *db, s2_error *err);

/* What s2_tunedb_import() did with a file. */
typedef struct s2_tunedb_import_counts {
    int taken;    /* lines that passed every check */
    int refused;  /* lines skipped, each a warning naming the file, the line and why */
    int added;    /* entries of keys the db did not hold */
    int replaced; /* entries that replaced one of the db's (an older imported one) */
    int held;     /* entries the db's own beat: a local measurement, or a newer import; a key
                     listed twice in the file counts once, so added + replaced + held may be
                     less than taken */
} s2_tunedb_import_counts;

/*
 * Merges the entries of the file at path (this format, e.g. another machine's export) into
 * the db as imported entries (whatever "source" their lines say): an entry of a new key is
 * added; one of a held key replaces it only if the merge rule prefers it, so never a local
 * measurement, and an imported one only when newer. *counts (may be NULL) receives what was
 * done. Lines of other versions are not carried over; skipped lines become warnings naming
 * path and the line. In memory only, like put. Fails with S2_ERR_IO naming path if it cannot
 * be read (a missing file is an error here; the db is then unchanged), S2_ERR_NOMEM (the db
 * may hold part of the file); the counts are then 0.
 */
s2_status s2_tunedb_import(s2_tunedb *db, const char *path, s2_tunedb_import_counts *counts,
                           s2_error *err);

/*
 * Writes every entry of the db, stale ones included, to path in the file format (sorted,
 * atomically), for s2_tunedb_import() elsewhere. Takes no lock and does not merge: path is
 * replaced. Fails with S2_ERR_IO naming path, S2_ERR_NOMEM.
 */
s2_status s2_tunedb_export(const s2_tunedb *db, const char *path, s2_error *err);

/* Empties the warnings (the caller has reported them); n_skipped stays. */
void s2_tunedb_clear_warnings(s2_tunedb *db);

/* Frees the db and everything it holds. NULL is fine. */
void s2_tunedb_close(s2_tunedb *db);

#endif

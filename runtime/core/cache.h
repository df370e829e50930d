/*
 * cache.h — the kernel cache as a whole (jit.h builds and reads its entries one at a time):
 * listing its entries and removing old ones, for `s2lora cache list` and `s2lora cache clean`.
 *
 * An entry is KEY.cubin (header and cubin), KEY.cu (the source) and KEY.log (the NVRTC log),
 * KEY being 64 lowercase hex digits; nothing else in the directory is an entry's (the tuning
 * databases, temporary files of writes in progress: NAME.tmp.XXXXXX) and nothing else is ever
 * removed. Builds write KEY.cu, KEY.log, then KEY.cubin, each by an atomic rename; an entry
 * without its KEY.cubin may be a build in progress, so it is removed only once all its files
 * are older than S2_CACHE_INCOMPLETE_S. Removal takes KEY.cubin first: a build that reads the
 * entry at the same time then finds it missing or without its log and rebuilds it (jit.h: never
 * a wrong kernel). Nothing here prints.
 */
#ifndef S2_CACHE_H
#define S2_CACHE_H

#include <stdint.h>

#include "gen/util.h"
#include "runtime/core/jit.h"

#define S2_CACHE_INCOMPLETE_S 3600.0

typedef struct s2_cache_entry {
    char key[65];
    char spec[64];        /* from KEY.cu's banner ("llama2-7b-32k"); "" when it has none */
    char unit[32];        /* likewise ("attn_fwd", "train") */
    s2_jit_header h;      /* valid when ok */
    int ok;               /* 1: KEY.cubin's header is one this s2lora reads */
    int complete;         /* 1: KEY.cubin is there */
    char problem[160];    /* !ok: why ("no KEY.cubin (a build in progress?)", "header format 1 ...") */
    uint64_t bytes;       /* the entry's files together */
    uint64_t cubin_bytes; /* KEY.cubin's */
    int64_t written;      /* KEY.cubin's modification time (else the newest file's), Unix s */
    int64_t used;         /* its last use: KEY.cubin's access time (s2_jit_build sets it on every
                             cache hit), never before written */
} s2_cache_entry;

/* Every entry of dir, sorted by last use, oldest first; *out is heap (free()), NULL when none. */
s2_status s2_cache_list(const char *dir, s2_cache_entry **out, int *n, s2_error *err);

typedef struct s2_cache_clean_opts {
    double older_than_s; /* > 0: entries last used longer ago than this */
    int all;             /* 1: every entry (incomplete ones still only past S2_CACHE_INCOMPLETE_S) */
    int dry_run;         /* 1: remove nothing, say what would go */
    int64_t now;         /* Unix s; 0: the clock */
} s2_cache_clean_opts;

/*
 * Removes the entries o selects from dir; *removed (heap, free(); may be NULL) lists them, *n
 * their number, *bytes their size. An entry whose file cannot be removed is an S2_ERR_IO
 * naming it (those removed before stay removed and listed).
 */
s2_status s2_cache_clean(const char *dir, const s2_cache_clean_opts *o, s2_cache_entry **removed,
                         int *n, uint64_t *bytes, s2_error *err);

#endif

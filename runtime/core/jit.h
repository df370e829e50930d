/*
 * jit.h — NVRTC builds with a disk cache.
 *
 * A unit is one complete CUDA C++ source (no #include of files; the generator
 * inlines what it needs) with extern "C" kernels. s2_jit_build() builds many
 * units in parallel, one NVRTC program per thread, for one arch, and returns a
 * cubin and the per-kernel resource usage of each.
 *
 * Cache: directory $S2LORA_CACHE_DIR, else $XDG_CACHE_HOME/s2lora, else
 * ~/.cache/s2lora. Key = SHA-256 over (generator version, source, sorted
 * options, NVRTC version, arch). Entry KEY.cubin = header (magic, format,
 * header length, payload size, SHA-256 of the payload, the key itself, then the
 * arch, generator and s2lora versions and the names of the kernels the cubin
 * exports) + cubin, written to a temporary file and renamed; KEY.cu (the source)
 * and KEY.log (the NVRTC log, which holds the resource report) beside it. On load
 * all of it is checked against the unit: its key, its arch, this generator, the
 * payload hash, the log's kernels and those the caller named. A corrupt or
 * truncated entry, one of an older format, or a valid one made for something
 * else (copied or renamed onto this key) is rebuilt and replaced, never used,
 * and the result's warning says so once.
 *
 * Nothing here needs a GPU or a driver: NVRTC is a library.
 */
#ifndef S2_JIT_H
#define S2_JIT_H

#include <stddef.h>

#include "gen/util.h"

#define S2_JIT_MAX_KERNELS 16
#define S2_JIT_MAX_EXTRA 8
#define S2_JIT_HEADER_MAX 8192 /* a cache entry's header is at most this long */

typedef struct s2_jit_src {
    const char *unit;   /* name for messages, e.g. "llama2-7b-32k/attn_fwd" */
    const char *source; /* complete source, NUL-terminated */
    /* The extern "C" kernels the caller will look up in the cubin (NULL / 0: not said). A
     * build that does not export each is S2_ERR_INVALID; a cache entry that does not is
     * rebuilt. At most S2_JIT_MAX_KERNELS. */
    const char *const *kernels;
    int n_kernels;
} s2_jit_src;

typedef struct s2_jit_opts {
    const char *arch;      /* sm_80 | sm_86 | sm_89 | sm_90 | sm_90a */
    const char *cache_dir; /* NULL: the default above */
    int threads;           /* parallel NVRTC builds; 0 = the pool's width (pool.h) */
    int no_cache;          /* 1: always build, never read or write the cache */
    int n_extra;           /* extra NVRTC options, part of the key (e.g. "-DS2_X=1") */
    const char *extra[S2_JIT_MAX_EXTRA];
    /* May be NULL: called once for every unit when it is done (built, loaded from the cache,
     * or failed), from the thread that did it (several at once: it must be thread-safe), for
     * a caller's progress line. Not part of the key. */
    void (*on_unit)(void *ctx, const char *unit, int cache_hit);
    void *on_unit_ctx;
} s2_jit_opts;

/* What ptxas reported for one kernel (from --ptxas-options=-v). */
typedef struct s2_kernel_res {
    char name[128];
    int regs;          /* registers per thread */
    int smem;          /* static shared memory, bytes */
    int cmem0;         /* constant bank 0 (parameters), bytes */
    int stack;         /* stack frame, bytes */
    int spill_stores;  /* bytes */
    int spill_loads;   /* bytes */
} s2_kernel_res;

typedef struct s2_jit_result {
    void *cubin;           /* heap, caller frees with s2_jit_result_free() */
    size_t size;
    int cache_hit;         /* 1: came from the cache */
    double ms;             /* wall time of this unit's build or load */
    char key[65];          /* cache key, hex */
    char path[1024];       /* KEY.cubin in the cache ("" with no_cache) */
    int n_res;
    s2_kernel_res res[S2_JIT_MAX_KERNELS];
    char *log;             /* NVRTC log, heap */
    /* Non-empty when a cache entry was in place but not used: "unit U: cache entry PATH ...:
     * why; rebuilt and replaced" (corrupt, or made for another key, arch, generator or set of
     * kernels). For the caller to show as a warning; the entry written in its place is whole,
     * so the next build says nothing. */
    char warning[2048];
} s2_jit_result;

/* 1 if arch is one this build can target. */
int s2_jit_arch_valid(const char *arch);

/* NVRTC's version, e.g. 13, 0. */
s2_status s2_jit_nvrtc_version(int *major, int *minor, s2_error *err);

/* The cache directory these options resolve to (created if missing). */
s2_status s2_jit_cache_dir(const s2_jit_opts *o, char *buf, size_t n, s2_error *err);

/*
 * Builds (or loads from the cache) n units; out[n] receives one result each,
 * in order. On an NVRTC failure returns S2_ERR_NVRTC with a message holding
 * the unit, the options, the log and the numbered source; results already
 * filled are freed. Safe to call from several processes at once on one cache.
 */
s2_status s2_jit_build(const s2_jit_src *src, int n, const s2_jit_opts *o, s2_jit_result *out,
                       s2_error *err);

void s2_jit_result_free(s2_jit_result *r);

/*
 * The check a cache entry passes before it is used, on the whole of a KEY.cubin file held in
 * data[size]: 0 when it is a complete entry for key (32 raw bytes) built for arch by this
 * generator and this s2lora, its payload matching its SHA-256; else 1 and why (n bytes) says
 * what is wrong. (The log's kernels are checked after it, on load.)
 */
int s2_jit_cache_entry_fault(const char *arch, const uint8_t key[32], const void *data,
                             size_t size, char *why, size_t n);

/* What a cache entry's header says it was built for (s2lora cache list). */
typedef struct s2_jit_header {
    unsigned format;
    char key[65];        /* hex */
    char arch[32], gen[64], version[128];
    int n_kernels;
    char kernels[S2_JIT_MAX_KERNELS][128];
} s2_jit_header;

/*
 * Reads the header at the start of a KEY.cubin file (head[n]: its first bytes, at least the
 * whole header; file_size: the file's size) into *h: 0, or 1 with why saying what is wrong (not
 * an entry, another format, cut short). The payload is not checked (that needs all of it).
 */
int s2_jit_cache_header(const void *head, size_t n, size_t file_size, s2_jit_header *h,
                        char *why, size_t why_n);

/* Parses ptxas -v output into rows (at most max); returns the count. */
int s2_jit_parse_resources(const char *log, s2_kernel_res *res, int max);

#endif

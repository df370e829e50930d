/*
 * tune.h — the autotuner's search space on the build side: every candidate tile the plan
 * accepts for a spec, generated and NVRTC-built in parallel, with its resources.
 *
 * `s2lora tune --build-only --arch ARCH` uses this to show, before a GPU of that arch is
 * rented, that every candidate compiles without spills. Timing candidates on a device, the
 * correctness gate and the tuning database are the rest of the tuner (issue step 4).
 */
#ifndef S2_TUNE_H
#define S2_TUNE_H

#include "gen/plan.h"
#include "runtime/core/jit.h"
#include "runtime/ops/lora.h"
#include "runtime/core/rt.h"
#include "runtime/tune/tune_db.h"

typedef struct s2_tune_candidate {
    s2_attn_unit unit;    /* the unit this candidate varies */
    s2_attn_tile tile;    /* the whole tile (the other unit's fields at the default) */
    s2_status st;         /* S2_OK, or why it failed to build */
    int spilled;          /* built, but ptxas spilled registers or made a stack frame: pruned
                             (the plan's register rules are estimates; the build is the judge) */
    char *msg;            /* failure message, heap; NULL on success */
    char *warning;        /* heap, NULL when none: its cache entry was in place but not used
                             (s2_jit_result.warning), to be shown */
    int cache_hit;
    double ms;            /* build or cache load, wall */
    int n_res;
    s2_kernel_res res[S2_JIT_MAX_KERNELS];
} s2_tune_candidate;

/*
 * Enumerates the space of every unit in units (bit 1 << S2_UNIT_ATTN_FWD, ...) with
 * s2_plan_tile_space() for jo->arch and builds each candidate's unit on jo->threads threads
 * of the pool (0: its width, runtime/core/pool.h). The backward's space holds only the tiles
 * whose dQ has the same bits every run (s2_tune_deterministic) unless atomic_dq is 1, which
 * admits bwd_atomic_dq 1 too. Every candidate gets a result, failures included; one with spill
 * bytes or a stack frame is marked spilled and never to be timed. *out is heap
 * (s2_tune_free()); the return is an error only when nothing could be attempted (bad arch, out
 * of memory, an invalid S2LORA_THREADS).
 */
s2_status s2_tune_build_space(const s2_spec *spec, const s2_jit_opts *jo, unsigned units,
                              int atomic_dq, s2_tune_candidate **out, int *n, s2_error *err);

/* How many candidates s2_tune_build_space builds for these units of spec on arch (-1 when out
 * of memory). */
int s2_tune_space_size(const s2_spec *spec, const char *arch, unsigned units, int atomic_dq);

/* Whether tile's backward gives the same bits every run: dQ by its own kernel
 * (bwd_atomic_dq 0) or added in a fixed order (2), not with atomics in any order (1). */
int s2_tune_deterministic(const s2_attn_tile *tile);

void s2_tune_free(s2_tune_candidate *c, int n);

/* The tile a run uses, and where each unit's part came from. */
typedef struct s2_tune_choice {
    s2_attn_tile tile;
    int tuned[S2_UNIT_ATTN_COUNT]; /* 1: that unit's fields came from the database */
    char why[512];                 /* one line for the user: "attn_fwd: tuned (N<=16384, ...)" */
} s2_tune_choice;

/*
 * Picks the tile for spec at seqlen tokens on (device, arch): the plan's default, with each
 * unit's fields replaced by the database's entry for (device, arch, unit name, attention
 * identity, shape class of seqlen) when there is a usable one (not stale, tile still valid
 * for this spec and arch). db may be NULL (no database: the default). Never fails: an entry
 * that cannot be used is named in why and the default stands.
 */
void s2_tune_select(const s2_tunedb *db, const char *device, const char *arch,
                    const s2_spec *spec, int seqlen, s2_tune_choice *out);

/*
 * The same from the database of device in the cache directory that jo resolves to (see
 * s2_jit_cache_dir). A missing or unreadable database is the default, said in why.
 */
void s2_tune_select_cached(const s2_jit_opts *jo, const char *device, const char *arch,
                           const s2_spec *spec, int seqlen, s2_tune_choice *out);

/* The tuning database of device in the cache directory jo resolves to, or NULL (why, when not
 * NULL, then says why). Close it with s2_tunedb_close. */
s2_tunedb *s2_tune_open_cached(const s2_jit_opts *jo, const char *device, char *why,
                               size_t why_len);

/* ---- the tuner on the device ---- */

typedef struct s2_tune_opts {
    int seqlen;       /* tokens of the timing case (one sequence); 0: the spec's context_length */
    unsigned units;   /* bit set over s2_attn_unit; 0: every unit */
    double budget_s;  /* after this many seconds no new candidate is timed; 0: no limit */
    int warmup, reps; /* per candidate; 0: 3 and 10 */
    const char *cache_dir;
    int atomic_dq; /* 1: the backward's space also holds bwd_atomic_dq 1 (s2_tune_build_space) */
    void (*progress)(void *ctx, const char *line); /* may be NULL; one line per event */
    void *progress_ctx;
} s2_tune_opts;

/* One progress line through o->progress (nothing when it is NULL). */
void s2_tune_say(const s2_tune_opts *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

typedef struct s2_tune_unit_result {
    int candidates, built, spilled, rejected, timed, cut, over_budget;
    double default_ms, best_ms; /* medians on the same inputs in the same run */
    s2_attn_tile best;          /* the default when nothing was faster */
} s2_tune_unit_result;

/*
 * Tunes spec's attention on rt's GPU for one sequence of o->seqlen tokens: builds the space
 * (s2_tune_build_space), runs the default tile on fresh random inputs as the trusted
 * reference (the GPU check holds the default against the CPU reference), and for each other
 * candidate that built without spills: loads it, runs it on the same inputs with poisoned
 * outputs and rejects it unless every output matches the default's (relative L2 < 1e-2 over
 * every fourth token row of o, dq, dk, dv and all of lse; no NaN), then times it (median of
 * reps, L2 flushed before each run: the forward alone for forward candidates, the backward
 * alone for backward ones). A candidate whose first run, after one warm-up, takes 1.3x the
 * best median so far is cut there (counted in cut, not in timed): it cannot win. The best per unit (never slower than the default: the default
 * is a candidate) goes into db (when not NULL) under (device, arch, unit, attention identity,
 * shape class); the caller saves db. res gets one result per unit.
 */
s2_status s2_tune_run(const s2_rt *rt, const s2_spec *spec, const s2_tune_opts *o, s2_tunedb *db,
                      s2_tune_unit_result res[S2_UNIT_ATTN_COUNT], s2_error *err);

/* ---- the LoRA linears (tune_lora.c) ----
 * Their tuning space is the cuBLAS algorithm of each product of each adapted group
 * (s2_lora_gemm): cuBLAS's own choice (algorithm 0, cublasGemmEx) and the entries of
 * cuBLASLt's heuristic for the same problem (1..S2_BLAS_MAX_ALGOS). dA and dB are tuned twice:
 * with dtype gradients (bench lora) and with fp32 ones accumulated (the trainer). Database
 * entries: kernel "lora_<product>" ("lora_da_f32", "lora_db_f32"), the group's identity
 * (s2_tune_lora_identity: dtype, in, outs, r, rp) in spec_sha256, the token count's shape class,
 * tile "algo=K". */

typedef struct s2_tune_lora_result {
    char group[16];         /* "qkv", "o", "gate_up", "down" */
    s2_lora_gemm gemm;
    int grad_f32, M;
    int algos, rejected, timed; /* algorithms cuBLASLt offers; gated out; timed (with 0) */
    double default_ms, best_ms; /* cuBLAS's choice; the fastest, same run */
    int best;                   /* 0: cuBLAS's choice */
} s2_tune_lora_result;

/* "qkv", "o", "gate_up" or "down" for group g of plan. */
const char *s2_tune_lora_group_name(const s2_lora_plan *plan, int g);
/* SHA-256 hex of the group's shape (dims' dtype, in, outs, r, rp; not M). */
void s2_tune_lora_identity(const s2_lora_dims *d, char hex[65]);

/* Sets d->algo from db (device, arch, d's identity and M's shape class, d->grad_f32 for dA and
 * dB); 0 where nothing matches (cuBLAS's choice). why (may be NULL) says how many were tuned.
 * At run time an algorithm the heuristic no longer offers falls back to cuBLAS's choice with
 * a warning (s2_blas_gemm_algo). */
void s2_tune_lora_select(const s2_tunedb *db, const char *device, const char *arch,
                         s2_lora_dims *d, char *why, size_t why_len);

/* The same from the database of device in the cache directory jo resolves to (none: all 0). */
void s2_tune_lora_select_cached(const s2_jit_opts *jo, const char *device, const char *arch,
                                s2_lora_dims *d, char *why, size_t why_len);

/* Tunes every product of every adapted group of spec at o->seqlen tokens (default the spec's
 * context_length): fresh random inputs; each algorithm's output against cuBLAS's choice on
 * the same inputs (relative L2 < 1e-2 over every eighth row of the large outputs, no new
 * non-finite value) before it is timed (median of o->reps after o->warmup, L2 flushed). The
 * fastest per product goes into db (when not NULL). res gets up to max results. */
s2_status s2_tune_lora_run(const s2_rt *rt, const s2_spec *spec, const s2_tune_opts *o,
                           s2_tunedb *db, s2_tune_lora_result *res, int max, int *n_res,
                           s2_error *err);

#endif

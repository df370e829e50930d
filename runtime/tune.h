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

#include "../gen/plan.h"
#include "jit.h"
#include "tune_db.h"

typedef struct s2_tune_candidate {
    s2_attn_unit unit;    /* the unit this candidate varies */
    s2_attn_tile tile;    /* the whole tile (the other unit's fields at the default) */
    s2_status st;         /* S2_OK, or why it failed to build */
    int spilled;          /* built, but ptxas spilled registers or made a stack frame: pruned
                             (the plan's register rules are estimates; the build is the judge) */
    char *msg;            /* failure message, heap; NULL on success */
    int cache_hit;
    double ms;            /* build or cache load, wall */
    int n_res;
    s2_kernel_res res[S2_JIT_MAX_KERNELS];
} s2_tune_candidate;

/*
 * Enumerates the space of every unit in units (bit 1 << S2_UNIT_ATTN_FWD, ...) with
 * s2_plan_tile_space() for jo->arch and builds each candidate's unit on jo->threads threads
 * (0: all cores). Every candidate gets a result, failures included; one with spill bytes or
 * a stack frame is marked spilled and never to be timed. *out is heap (s2_tune_free()); the return
 * is an error only when nothing could be attempted (bad arch, out of memory).
 */
s2_status s2_tune_build_space(const s2_spec *spec, const s2_jit_opts *jo, unsigned units,
                              s2_tune_candidate **out, int *n, s2_error *err);

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

#endif

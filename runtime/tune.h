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

#endif

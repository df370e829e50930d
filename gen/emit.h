/*
 * emit.h — plan -> CUDA C++ source. Each unit is one self-contained source:
 * a banner naming the spec and its hash, the specialised constants, then the
 * templates (the .cuh files of templates/, embedded in the binary at build time). The
 * source includes no files, so NVRTC needs no include path and builds fast.
 */
#ifndef S2_EMIT_H
#define S2_EMIT_H

#include "plan.h"

/* The generator's version, part of every cache key. */
#define S2_GEN_VERSION "s2lora-gen-1"

/* Source of one unit; *src is heap, caller frees. */
s2_status s2_emit_attn(const s2_spec *spec, const s2_attn_plan *plan, s2_attn_unit unit,
                       char **src, s2_error *err);

/*
 * Source of the LoRA unit (templates/lora.cuh with philox.cuh and mma.cuh) for a storage
 * dtype and rank: the dropout kernels s2_lora_dropout and s2_lora_dropout_add, and, for the
 * ranks s2_lora_vdb_ok() accepts, the backward's pass over dy, s2_lora_vdb and
 * s2_lora_vdb_finish. *src is heap, caller frees.
 */
s2_status s2_emit_lora(s2_dtype dtype, int rank, char **src, s2_error *err);

/*
 * Source of the trainer's kernel unit (templates/train.cuh after dtype.cuh,
 * runtime/train/train_kern.h) for the spec's model: its sizes, RMS eps, RoPE theta and factor,
 * and the block sizes below, compiled in. *src is heap, caller frees.
 */
s2_status s2_emit_train(const s2_spec *spec, char **src, s2_error *err);

/* Block sizes of the train unit, emitted as #defines and launched with by
 * runtime/train/train_kern.c: the elementwise kernels, cross-entropy (one block per row of
 * logits) and RoPE (one token per block iteration). */
#define S2_TRAIN_EW_THREADS 256
#define S2_TRAIN_XENT_THREADS 256
#define S2_TRAIN_ROPE_THREADS 128

/* The row kernels over hidden (embedding, RMSNorm) give each thread `iters` chunks of 8
 * columns at most, the whole row in one block: threads = the chunk count rounded up to a warp,
 * at most 512; iters = the chunks per thread. */
void s2_emit_train_row_geometry(int hidden, int *threads, int *iters);

/* The embedded text of a template ("attn_fwd.cuh"), or NULL. */
const char *s2_emit_template(const char *name);

/*
 * Template text t as a unit holds it, appended to b. Option blocks are the only place a template
 * says anything about an option a unit may be built with: "#if S2_WINDOW" (the plan's
 * sequence-parallel window, bit S2_EMIT_OPT_WINDOW of opts), "#if S2_FWD_TMA" (the TMA
 * forward, S2_EMIT_OPT_FWD_TMA), "#if S2_BWD_TMA" (the TMA dK/dV kernel,
 * S2_EMIT_OPT_BWD_TMA), "#if S2_FWD_OVERLAP" (the TMA forward's overlapped steps,
 * S2_EMIT_OPT_FWD_OVERLAP) and "#if S2_FWD_PERSIST" (its persistent blocks,
 * S2_EMIT_OPT_FWD_PERSIST). A block of an option in opts goes in whole (the unit defines its
 * macro as 1); every other one is resolved here to its #else lines (to its #endif, other
 * conditionals nested inside), so a unit without the option has the source it had before the
 * option existed. Blocks of different options nest. S2_ERR_INVALID, naming the template (name)
 * and line, for a block without its #endif, a block inside one of the same option, an #elif or
 * a second #else of one.
 */
enum {
    S2_EMIT_OPT_WINDOW = 1,
    S2_EMIT_OPT_FWD_TMA = 2,
    S2_EMIT_OPT_BWD_TMA = 4,
    S2_EMIT_OPT_FWD_OVERLAP = 8,
    S2_EMIT_OPT_FWD_PERSIST = 16
};
s2_status s2_emit_template_text(s2_buf *b, const char *name, const char *t, unsigned opts,
                                s2_error *err);

/*
 * Writes the spec's units to DIR/<spec name>.<unit>.cu (atomically), creating DIR: the
 * attention units, then the trainer's ("train"): S2_EMIT_UNITS files. paths (may be NULL)
 * receives up to max written paths (heap, caller frees each); returns the count in *n.
 */
#define S2_EMIT_UNITS (S2_UNIT_ATTN_COUNT + 1)
s2_status s2_emit_write_dir(const s2_spec *spec, const s2_attn_plan *plan, const char *dir,
                            char **paths, int max, int *n, s2_error *err);

#endif

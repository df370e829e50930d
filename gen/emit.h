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
 * Source of the LoRA dropout unit (templates/lora.cuh with philox.cuh) for a storage dtype:
 * kernels s2_lora_dropout and s2_lora_dropout_add. *src is heap, caller frees.
 */
s2_status s2_emit_lora_dropout(s2_dtype dtype, char **src, s2_error *err);

/* The embedded text of a template ("attn_fwd.cuh"), or NULL. */
const char *s2_emit_template(const char *name);

/*
 * Writes every unit of the spec to DIR/<spec name>.<unit>.cu (atomically),
 * creating DIR. paths (may be NULL) receives up to max written paths (heap,
 * caller frees each); returns the count in *n.
 */
s2_status s2_emit_write_dir(const s2_spec *spec, const s2_attn_plan *plan, const char *dir,
                            char **paths, int max, int *n, s2_error *err);

#endif

/*
 * st.h — safetensors files (the format Hugging Face and PEFT use).
 *
 * Layout: 8-byte little-endian header length n, n bytes of JSON
 *   {"NAME": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]}, ...,
 *    "__metadata__": {"key": "value", ...}}
 * then the data; offsets are relative to the end of the header.
 *
 * Reading validates everything before trusting it: a regular file, header
 * length within the file, JSON well formed, known dtype, offsets in range, in
 * order, not overlapping, (end - begin) == elements * dtype size, and the last
 * tensor's data ending where the file ends (as Python's reader requires).
 * Errors name the file and the tensor. Writing is atomic (temporary file +
 * rename).
 */
#ifndef S2_ST_H
#define S2_ST_H

#include <stddef.h>
#include <stdint.h>

#include "gen/util.h"

typedef enum s2_st_dtype {
    S2_ST_F32, S2_ST_F16, S2_ST_BF16, S2_ST_F64, S2_ST_I32, S2_ST_I64, S2_ST_U8, S2_ST_I8,
    S2_ST_BOOL,
} s2_st_dtype;

#define S2_ST_MAX_DIMS 8

typedef struct s2_tensor {
    char *name;                     /* owned by the file it belongs to (or the caller, when writing) */
    s2_st_dtype dtype;
    int ndim;
    int64_t shape[S2_ST_MAX_DIMS];
    void *data;                     /* little-endian elements; points into the file's buffer */
                                    /* (aligned only if the file's writer aligned it: memcpy) */
                                    /* (NULL after s2_st_read_header) */
    size_t nbytes;
} s2_tensor;

typedef struct s2_st_file {
    int n;              /* tensors, in file order */
    s2_tensor *t;
    int n_meta;         /* __metadata__ entries, string values only (as the format requires) */
    char **meta_key, **meta_val;
    void *buf;          /* the whole file; tensors point into it (NULL: s2_st_read_header) */
    size_t size;        /* the file's size */
} s2_st_file;

/* "BF16" etc., as the format spells them; size in bytes of one element. */
const char *s2_st_dtype_name(s2_st_dtype d);
size_t s2_st_dtype_size(s2_st_dtype d);
int64_t s2_tensor_numel(const s2_tensor *t);
/* "[4096, 32, 128]" into buf (for messages). Returns buf. */
char *s2_tensor_shape_str(const s2_tensor *t, char *buf, size_t n);

s2_status s2_st_read(const char *path, s2_st_file *f, s2_error *err);
/*
 * The same checks, reading only the length field and the header (names, dtypes, shapes,
 * offsets against the file's size): every tensor's data is NULL, f->buf NULL, f->size the
 * file's size. For checking a multi-GiB file without loading it.
 */
s2_status s2_st_read_header(const char *path, s2_st_file *f, s2_error *err);
/* NULL if absent. */
const s2_tensor *s2_st_find(const s2_st_file *f, const char *name);
/* Metadata value, NULL if absent. */
const char *s2_st_meta(const s2_st_file *f, const char *key);
/* Frees everything; a zeroed or NULL file is fine. */
void s2_st_close(s2_st_file *f);

/*
 * Writes n tensors (names unique, data of nbytes each) and optional string
 * metadata (n_meta pairs; keys sorted on output). Tensors are laid out in the
 * given order, back to back (no gaps: Python's reader refuses them).
 */
s2_status s2_st_write(const char *path, const s2_tensor *t, int n, const char *const *meta_key,
                      const char *const *meta_val, int n_meta, s2_error *err);

/* bf16/fp16 <-> fp32, round-to-nearest-even; NaN stays NaN, overflow goes to inf. */
float s2_bf16_to_f32(uint16_t h);
uint16_t s2_f32_to_bf16(float f);
float s2_f16_to_f32(uint16_t h);
uint16_t s2_f32_to_f16(float f);
/* Array forms; src/dst may not overlap. */
void s2_half_to_f32(s2_st_dtype dt /* F16 or BF16 */, const uint16_t *src, float *dst, size_t n);
void s2_f32_to_half(s2_st_dtype dt, const float *src, uint16_t *dst, size_t n);

#endif

/*
 * s2lora.h — the public C API of libs2lora: LongLoRA's shifted sparse attention (S²-Attn) and
 * fused LoRA linears, generated from a spec, built at run time with NVRTC (through the kernel
 * cache and the tuning database), run on the caller's device pointers and the caller's stream.
 *
 * This is the only header an application includes; it needs no CUDA header (streams are passed
 * as void *, a cudaStream_t; NULL is the legacy default stream). Link with -ls2lora
 * (pkg-config s2lora, or find_package(s2lora) and the target s2lora::s2lora).
 *
 * Conventions
 *   - Every function that can fail returns an s2lora_status; S2LORA_OK is 0. The message of the
 *     last failure on a context is s2lora_errmsg(ctx): it names where (spec file:line:column,
 *     argument or tensor name, shape) and what would be valid. It opens with the function's
 *     name, once ("s2lora_attn_forward: args->tokens = 0; ...", "s2lora_build(SPEC, ARCH): ..."),
 *     so a binding adds none of its own; a spec's errors (s2lora_spec_load, s2lora_spec_parse)
 *     open with FILE:LINE:COL instead, as a compiler's do, and a context that failed to open
 *     keeps s2lora_open's. The library never prints and never exits.
 *   - A context is used by one thread at a time. Handles made from a context (specs, attention,
 *     LoRA linears) belong to it and are used with it; free them before closing it.
 *   - Tensors are caller-owned device memory. The library allocates device memory only where a
 *     function says so; the backward's scratch is caller-given (s2lora_attn_workspace_bytes), so
 *     a framework's caching allocator owns it.
 *   - Element strides are in elements, not bytes; tensors are row-major and the last dimension
 *     (the head dim) is contiguous.
 *
 * A minimal forward (error checks elided; see tests/api_example.c):
 *
 *     s2lora_ctx *ctx;
 *     s2lora_open(&ctx, 0, NULL);
 *     s2lora_spec *spec;
 *     const char *set[] = {"context_length=8192"};
 *     s2lora_spec_load(ctx, "specs/llama2-7b-32k.yaml", set, 1, &spec);
 *     s2lora_attn *attn;
 *     s2lora_attn_create(ctx, spec, &attn);
 *     s2lora_attn_args a = S2LORA_ATTN_ARGS_INIT;
 *     a.tokens = 8192; a.batch = 1; a.q = q; a.k = k; a.v = v; a.o = o; a.lse = lse;
 *     s2lora_attn_forward(attn, &a, stream);
 *     s2lora_attn_free(attn); s2lora_spec_free(spec); s2lora_close(ctx);
 */
#ifndef S2LORA_H
#define S2LORA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version of this header. s2lora_version_number() gives the library's: a program checks
 * that the major versions agree (the ABI changes only with the major version). */
#define S2LORA_VERSION "0.2.0"
#define S2LORA_VERSION_MAJOR 0
#define S2LORA_VERSION_MINOR 2
#define S2LORA_VERSION_PATCH 0
#define S2LORA_VERSION_NUMBER (S2LORA_VERSION_MAJOR * 1000000 + S2LORA_VERSION_MINOR * 1000 + \
                               S2LORA_VERSION_PATCH)

const char *s2lora_version(void);   /* "0.2.0" */
int s2lora_version_number(void);    /* 2000 */

/* ---- status ---- */
typedef enum s2lora_status {
    S2LORA_OK = 0,
    S2LORA_ERR_IO = 1,        /* a file could not be read or written */
    S2LORA_ERR_PARSE = 2,     /* a file is not what its format says (YAML, JSON) */
    S2LORA_ERR_SPEC = 3,      /* a spec is valid YAML but not a valid s2lora spec */
    S2LORA_ERR_INVALID = 4,   /* a bad argument: shape, stride, pointer, option, name */
    S2LORA_ERR_NOMEM = 5,
    S2LORA_ERR_BUILD = 6,     /* NVRTC refused a generated unit (a bug: please report it) */
    S2LORA_ERR_CACHE = 7,     /* the kernel cache could not be used */
    S2LORA_ERR_CUDA = 8,      /* a CUDA call failed, or a device result failed its check
                                 (the message names it) */
    S2LORA_ERR_NO_DEVICE = 9, /* no CUDA device, no driver, or the device number is out of range */
    S2LORA_ERR_UNSUPPORTED = 10 /* valid, but not on this device or in this build (e.g. a
                                   library without cuBLAS for the LoRA linears) */
} s2lora_status;

/* A fixed name for a status ("S2LORA_ERR_SPEC" -> "spec error"); never NULL. */
const char *s2lora_status_string(s2lora_status st);

/* ---- context: one device ---- */
typedef struct s2lora_ctx s2lora_ctx;

typedef struct s2lora_options {
    const char *cache_dir; /* NULL: $S2LORA_CACHE_DIR, else $XDG_CACHE_HOME/s2lora, else
                              ~/.cache/s2lora (what the s2lora binary uses) */
    const char *tune_db;   /* a directory holding tune-<GPU>.jsonl, as `s2lora tune --db DIR`
                              takes it; NULL: the cache directory, the database the binary
                              uses (s2lora tune). The strings are copied. */
    int use_tuned;         /* 1 (the default when options is NULL): kernels take the tile the
                              database holds for this GPU and shape; 0: the plan's default */
    int build_threads;     /* parallel NVRTC builds; 0 = online CPUs */
} s2lora_options;

#define S2LORA_OPTIONS_INIT {NULL, NULL, 1, 0}

/*
 * Opens device `device` (a CUDA device number) with options (NULL: S2LORA_OPTIONS_INIT). As
 * with sqlite3_open, *ctx is set even on failure (unless memory ran out), so that
 * s2lora_errmsg(*ctx) can say why; s2lora_close it either way. A context that failed to open
 * answers every other call with the status it failed with.
 *
 * device = -1 opens a context with no device (no CUDA driver is touched): specs load and
 * parse, s2lora_spec_get_info, s2lora_build (for the spec's own arches),
 * s2lora_attn_check_args and s2lora_lora_rp work; every function that needs the device
 * (s2lora_tune, s2lora_attn_create, s2lora_lora_create, ...) returns S2LORA_ERR_NO_DEVICE,
 * after checking its other arguments.
 */
s2lora_status s2lora_open(s2lora_ctx **ctx, int device, const s2lora_options *options);
void s2lora_close(s2lora_ctx *ctx); /* NULL is a no-op */

/* use_cache 1 (the default): kernels are built through the kernel cache; 0: every later build of
 * the attention on ctx (s2lora_build, s2lora_attn_create*) runs NVRTC and reads and writes no
 * cache entry (what `s2lora attn --no-cache` does: a build measured, or the cache ruled out).
 * The tuning database is read either way; s2lora_tune and the LoRA linears keep the cache.
 * S2LORA_ERR_INVALID for a value other than 0 or 1. */
s2lora_status s2lora_set_use_cache(s2lora_ctx *ctx, int use_cache);

/* The last failure's message on ctx ("" after success; "out of memory" for a NULL ctx). The
 * string lives until the next call on ctx. */
const char *s2lora_errmsg(const s2lora_ctx *ctx);

/* The warnings of the last call on ctx, one a line ("" when none): a kernel cache entry found
 * corrupt and rebuilt, tuning database lines skipped. Nothing is printed; a program shows
 * them if it likes. Lives until the next call on ctx. */
const char *s2lora_warnings(const s2lora_ctx *ctx);

/* The device's name ("NVIDIA H100 80GB HBM3") and the arch kernels are built for ("sm_90a");
 * "" for a context without a device. */
const char *s2lora_device_name(const s2lora_ctx *ctx);
const char *s2lora_device_arch(const s2lora_ctx *ctx);

/* Device memory for programs with no CUDA of their own (examples, checks, a binding used without
 * a framework), on the context's device: cudaMalloc, cudaFree, cudaMemcpy (which waits for
 * the legacy default stream) and cudaStreamSynchronize (stream NULL: the legacy default
 * stream). A framework's tensors need none of these. */
s2lora_status s2lora_device_alloc(s2lora_ctx *ctx, size_t bytes, void **ptr);
void s2lora_device_free(s2lora_ctx *ctx, void *ptr); /* NULL is a no-op */
s2lora_status s2lora_memcpy_to_device(s2lora_ctx *ctx, void *dst, const void *src,
                                      size_t bytes);
s2lora_status s2lora_memcpy_to_host(s2lora_ctx *ctx, void *dst, const void *src, size_t bytes);
s2lora_status s2lora_synchronize(s2lora_ctx *ctx, void *stream);

/* ---- specs ---- */
typedef struct s2lora_spec s2lora_spec;

/*
 * Loads a spec file (specs/README.md documents the keys) and applies overrides, each
 * "dotted.key=value" as `--set` takes them (e.g. "s2attn.group_size=2048"). Errors name
 * FILE:LINE:COL or the override.
 */
s2lora_status s2lora_spec_load(s2lora_ctx *ctx, const char *path, const char *const *overrides,
                               int n_overrides, s2lora_spec **spec);

/* The same for YAML text in memory; `name` stands for the file in messages ("<string>" if
 * NULL). */
s2lora_status s2lora_spec_parse(s2lora_ctx *ctx, const char *yaml, size_t len, const char *name,
                                const char *const *overrides, int n_overrides,
                                s2lora_spec **spec);
void s2lora_spec_free(s2lora_spec *spec);

/* What the kernels of a spec are specialised for (after overrides and derived values). */
typedef struct s2lora_spec_info {
    char name[128];
    int context_length;
    int group_size;     /* G */
    int shift;          /* tokens a shifted head moves by (G / 2 by default) */
    int shift_mode;     /* 0 split, 1 roll (DESIGN.md section 1); the second half of the
                           heads is shifted */
    int num_heads, num_kv_heads, head_dim;
    int dtype;          /* 0 bf16, 1 fp16 */
    float softmax_scale;
    int hidden_size, intermediate_size, num_layers, vocab_size;
    int lora_rank;
    float lora_alpha;
    char hash[65];      /* SHA-256 of the canonical spec: same values, same hash */
} s2lora_spec_info;

s2lora_status s2lora_spec_get_info(const s2lora_spec *spec, s2lora_spec_info *info);

/*
 * Builds every unit of spec for the context's device through the kernel cache (what
 * `s2lora build` does); *built and *cached (either may be NULL) receive how many units were
 * compiled and how many came from the cache. Nothing runs on the device. With a device the
 * attention takes the tile s2lora_attn_create will (so its build then comes from the cache);
 * without one (device -1) every arch the spec lists is built with the plan's default tile.
 */
s2lora_status s2lora_build(s2lora_ctx *ctx, const s2lora_spec *spec, int *built, int *cached);

/*
 * Tunes the attention kernels of spec on the device for sequences of `seqlen` tokens (0: the
 * spec's context length): every candidate tile is built, checked against the default and timed;
 * the fastest is stored in the tuning database, where s2lora_attn_create finds it. The
 * backward's candidates are those that give the same bits every run, as the default does (the
 * atomic dQ is tried only by `s2lora tune --atomic-dq`). Takes about a minute; *best_ms (may be
 * NULL) receives the winner's forward+backward median.
 */
s2lora_status s2lora_tune(s2lora_ctx *ctx, const s2lora_spec *spec, int seqlen,
                          double *best_ms);

/* ---- S²-Attn ---- */
typedef struct s2lora_attn s2lora_attn;

/* Builds (through the cache; with use_tuned, the tuned tile) and loads spec's attention kernels
 * on the context's device. The handle keeps what it needs of spec: spec may be freed after.
 * The tuned tile is the database's entry for the shape class of the spec's context_length
 * (what s2lora_tune stores with seqlen 0); s2lora_attn_create_seqlen picks another length's. */
s2lora_status s2lora_attn_create(s2lora_ctx *ctx, const s2lora_spec *spec, s2lora_attn **attn);
/* The same with the tuned tile for sequences of `seqlen` tokens (0: the spec's context_length,
 * as s2lora_attn_create). */
s2lora_status s2lora_attn_create_seqlen(s2lora_ctx *ctx, const s2lora_spec *spec, int seqlen,
                                        s2lora_attn **attn);
/* The same with a tile of the caller's instead of the database's: the plan's default tile for
 * the device's arch with tile_text's "key=value,..." applied (the keys of `s2lora build --tile`:
 * fwd_warps, fwd_block_n, ..., bwd_stages; "" is the default tile). use_tuned does not apply.
 * S2LORA_ERR_INVALID names an unknown key or a value no arch takes (checked before the device,
 * so a context without one checks the text too) or one the device's arch does not take; a
 * combination the spec's plan refuses fails the build, naming it. s2lora_attn_tile's reason
 * is "given". */
s2lora_status s2lora_attn_create_tile(s2lora_ctx *ctx, const s2lora_spec *spec,
                                      const char *tile_text, s2lora_attn **attn);
void s2lora_attn_free(s2lora_attn *attn);

/* The tile the handle's kernels were built with ("fwd_warps=4,...") and why, per unit
 * ("attn_fwd: tuned (N<=16384, ...); attn_bwd: default"). Lives as long as the handle. */
const char *s2lora_attn_tile(const s2lora_attn *attn);

/*
 * One call's tensors. `tokens` T rows in `batch` B sequences:
 *   cu_seqlens  NULL: B sequences of T / B tokens each (T a multiple of B); else device int32
 *               [B + 1] (0, ..., T, nondecreasing) with max_seqlen the longest; the host copy
 *               cu_seqlens_host, when given, is checked against T and max_seqlen first (it is
 *               the caller's promise otherwise, as in FlashAttention's varlen API).
 *   q, o, dq, dout   [T, H, d]   in the spec's dtype
 *   k, v, dk, dv     [T, Hkv, d]
 *   lse              [H, T] fp32 (natural log): the forward writes it, the backward reads it
 * Each tensor's strides: *_stride_token elements between consecutive tokens and
 * *_stride_head between heads; 0 means packed (H d or Hkv d, and d). A batch [B, S, heads, d]
 * packed along tokens is [T, heads, d] with T = B S. The kernels take packed tensors; any
 * other strides are refused with S2LORA_ERR_INVALID naming the tensor, its strides and the
 * ones it needs (copy it to a packed tensor first).
 *
 * Checked before anything is launched (S2LORA_ERR_INVALID naming the argument, its value and
 * what is valid): tokens >= 1, batch >= 1; with cu_seqlens NULL, batch divides tokens,
 * cu_seqlens_host is NULL and max_seqlen is 0 or tokens / batch; with cu_seqlens,
 * ceil(tokens / batch) <= max_seqlen <= tokens and cu_seqlens_host, when given, starts at 0,
 * does not decrease, ends at tokens and has no sequence longer than max_seqlen; every tensor
 * pointer set and 16-byte aligned (lse and cu_seqlens 4-byte); packed strides.
 *
 * The fixed-length batch (cu_seqlens NULL) needs boundaries on the device: the handle keeps a
 * few small device buffers, one per (tokens, batch) of the last four seen, written once by a
 * copy on the caller's stream from pinned memory the handle owns. No call synchronises the
 * device: a fifth (tokens, batch) takes over the least recently used buffer, its copy ordered
 * after that buffer's last launches (the host waits only for that buffer's own earlier copy
 * to have run); calls on different streams that share a buffer are ordered after each other
 * (the later stream waits for the earlier one's launches that read it).
 */
typedef struct s2lora_attn_args {
    int tokens;
    int batch;
    const int32_t *cu_seqlens;
    const int32_t *cu_seqlens_host;
    int max_seqlen;
    const void *q, *k, *v;
    void *o;
    float *lse;
    int64_t q_stride_token, q_stride_head;
    int64_t k_stride_token, k_stride_head;
    int64_t v_stride_token, v_stride_head;
    int64_t o_stride_token, o_stride_head;
} s2lora_attn_args;

#define S2LORA_ATTN_ARGS_INIT {0}

s2lora_status s2lora_attn_forward(s2lora_attn *attn, const s2lora_attn_args *args,
                                  void *stream);

/* Device scratch bytes the backward needs for T tokens (the caller allocates it; its contents
 * need not be set and are garbage after); 0 for a NULL attn or tokens < 1. It depends on the
 * handle's tile (the atomic-dQ backward adds an fp32 accumulator). */
size_t s2lora_attn_workspace_bytes(const s2lora_attn *attn, int tokens);

/* The backward's tensors beyond the forward's (args->o and args->lse as the forward wrote
 * them); the gradients are overwritten, not accumulated. Strides as in s2lora_attn_args. */
typedef struct s2lora_attn_grads {
    const void *dout;
    void *dq, *dk, *dv;
    void *workspace;
    size_t workspace_bytes;
    int64_t dout_stride_token, dout_stride_head;
    int64_t dq_stride_token, dq_stride_head;
    int64_t dk_stride_token, dk_stride_head;
    int64_t dv_stride_token, dv_stride_head;
} s2lora_attn_grads;

#define S2LORA_ATTN_GRADS_INIT {0}

s2lora_status s2lora_attn_backward(s2lora_attn *attn, const s2lora_attn_args *args,
                                   const s2lora_attn_grads *grads, void *stream);

/*
 * Checks args (and grads, when not NULL) against spec's attention as s2lora_attn_forward and
 * s2lora_attn_backward check them, without a device and without touching device memory
 * (pointers are checked for NULL and alignment; cu_seqlens_host is read): S2LORA_OK, or
 * S2LORA_ERR_INVALID with the message on spec's context. Not checked here: the workspace's
 * size, which depends on the tile a handle was built with (s2lora_attn_backward checks it),
 * and the launch grids' limits. Works on a context without a device.
 */
s2lora_status s2lora_attn_check_args(const s2lora_spec *spec, const s2lora_attn_args *args,
                                     const s2lora_attn_grads *grads);

/* ---- LoRA linears ----
 * y = x Wᵀ + s (x Aᵀ) Bᵀ for n_proj projections that read the same x (q, k, v fused; or one
 * alone), s = alpha / r, with PEFT's shapes, and the backward dx, dA, dB (W frozen). The fusion
 * is in the layout (runtime/ops/lora.h explains it); with rp = s2lora_lora_rp(n_proj, r):
 *   xa   [M, in + rp]             x in columns [0, in); the forward writes s x Aᵀ into the rest
 *   wc   [out_total + rp, in + rp] rows [0, out_total): W | B block-diagonal; rows
 *                                  [out_total, +rp): the stacked A | 0 (pad rows zero)
 *   y    [M, out_total]
 *   dya  [M, out_total + rp]      dy in columns [0, out_total); the backward writes s dy B
 *   dxv  [M, in + rp]             dx in columns [0, in)
 *   da   [rp, in], db [out_total, rp]   fp32 with grad_f32, else the storage dtype
 * s2lora_lora_pack_weights fills wc from W, A and B. Every pointer must be 16-byte aligned.
 * db: only the diagonal blocks (projection i's rows, columns i r .. i r + r) are written.
 */
typedef struct s2lora_lora s2lora_lora;

typedef struct s2lora_lora_shape {
    int tokens;     /* M */
    int in;
    int n_proj;     /* 1..3 */
    int out[3];
    int rank;       /* r */
    float alpha;
    int dtype;      /* 0 bf16, 1 fp16 */
    float dropout;  /* PEFT's lora_dropout, on the adapter's input: 0 or in [1e-9, 0.999999] */
    uint64_t seed;  /* the dropout mask's seed */
    int layer;      /* the dropout stream's layer (masks differ per layer and projection):
                       projection i's mask is stream layer * 8 + i; 0 <= layer < 2^28 */
    int grad_f32;   /* 1: dA, dB in fp32, accumulated (C = grad_beta C + product) */
    float grad_beta; /* finite; must be 0 when grad_f32 is 0 (dtype gradients are overwritten) */
} s2lora_lora_shape;

/* Checked by s2lora_lora_create (S2LORA_ERR_INVALID naming the field; before the device, so a
 * context without one checks shapes too): tokens >= 1, in >= 1, n_proj 1..3, out[i] >= 1 for
 * i < n_proj (the rest ignored), in + rp and the sum of out + rp at most 2^20, rank 1..1024,
 * alpha finite in [1e-30, 1e30], dtype 0 or 1, dropout as above, grad_f32 0 or 1. */

int s2lora_lora_rp(int n_proj, int rank); /* n_proj r rounded up to 16; 0 for n_proj outside
                                             1..3 or rank outside 1..1024 */

s2lora_status s2lora_lora_create(s2lora_ctx *ctx, const s2lora_lora_shape *shape,
                                 s2lora_lora **lora);
void s2lora_lora_free(s2lora_lora *lora);
size_t s2lora_lora_workspace_bytes(const s2lora_lora *lora);

/* wc from W [out_total, in], A [n_proj r, in] (projection i's rows i r ..), B [out_total, r]
 * (projection i's rows), all device, in the storage dtype; wc's pad rows and columns zeroed. */
s2lora_status s2lora_lora_pack_weights(s2lora_lora *lora, const void *w, const void *a,
                                       const void *b, void *wc, void *stream);

s2lora_status s2lora_lora_forward(s2lora_lora *lora, void *xa, const void *wc, void *y,
                                  void *workspace, void *stream);
s2lora_status s2lora_lora_backward(s2lora_lora *lora, const void *xa, const void *wc,
                                   void *dya, void *dxv, void *da, void *db, void *workspace,
                                   void *stream);

#ifdef __cplusplus
}
#endif
#endif

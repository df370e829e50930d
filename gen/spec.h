/*
 * spec.h — the YAML spec: what one model and context length need from the
 * generator. spec_load() parses and validates a file (libyaml), applies
 * command-line overrides (--set dotted.key=value), fills every default, and
 * derives what follows from the rest (group size from group_ratio, shift from
 * group size, RoPE factor from context length). The result is complete: later
 * stages never look at YAML again.
 *
 * Every error names where: "FILE:LINE:COL: error: ..." for keys and values in
 * the file, "--set KEY=VALUE: error: ..." for overrides, and says what would be
 * valid (allowed values, ranges, a did-you-mean for unknown keys).
 */
#ifndef S2_SPEC_H
#define S2_SPEC_H

#include "util.h"

#define S2_SPEC_MAX_ARCH 8
#define S2_SPEC_NAME_MAX 128
#define S2_SPEC_PATH_MAX 1024

/*
 * The ranges of the spec's values (specs/README.md lists them with their reasons). They are
 * chosen so that nothing the plan, the emitter, the kernels or the runtime forms in 32-bit int
 * from spec values can overflow: positions and group indices (x + S + G) stay below 2^26, the
 * widths the kernels index in int ((H + 2 Hkv) d, 2 intermediate + LoRA columns) below 2^20,
 * and the larger products (vocab x hidden, hidden x intermediate, tokens x heads x d) are
 * host-side sizes formed in 64 bits. The loader checks each key against its range; the plan
 * checks the combinations (launch grids) and the emitter refuses anything out of range.
 */
#define S2_SPEC_MAX_TOKENS (1 << 24) /* context_length, max_position_embeddings, group_size:
                                        positions are exact in fp32 up to 2^24 (RoPE angles) */
#define S2_SPEC_MAX_HIDDEN 65536     /* model.hidden_size */
#define S2_SPEC_MAX_INTER 262144     /* model.intermediate_size */
#define S2_SPEC_MAX_LAYERS 1024      /* model.num_layers */
#define S2_SPEC_MAX_HEADS 1024       /* model.num_heads (a launch grid's y: below 65536) */
#define S2_SPEC_MAX_VOCAB 2097152    /* model.vocab_size (2^21) */
#define S2_SPEC_MAX_RANK 1024        /* lora.rank */
/* Positive real scalars (softmax_scale, rope_theta, rms_norm_eps, lora.alpha) lie in
 * [S2_SPEC_REAL_MIN, S2_SPEC_REAL_MAX]: normal fp32 numbers with eight decades to spare on
 * either side, so what the kernels derive from them (scale x log2(e), alpha / rank, 1 / theta^e)
 * stays a normal fp32 number too. */
#define S2_SPEC_REAL_MIN 1e-30
#define S2_SPEC_REAL_MAX 1e30
/* lora.dropout is 0 or in [MIN, MAX]: the mask compares 32-bit random words with
 * floor(p 2^32), so a smaller p would keep everything, and p is rounded to fp32, so a larger one
 * could round to 1 (an infinite 1 / (1 - p)). */
#define S2_SPEC_DROPOUT_MIN 1e-9
#define S2_SPEC_DROPOUT_MAX 0.999999

typedef enum s2_dtype { S2_DTYPE_BF16 = 0, S2_DTYPE_FP16 = 1 } s2_dtype;
typedef enum s2_shift_mode { S2_SHIFT_SPLIT = 0, S2_SHIFT_ROLL = 1 } s2_shift_mode;

/* lora.targets: bit set over the projections of one decoder layer. */
enum {
    S2_LORA_Q = 1 << 0, S2_LORA_K = 1 << 1, S2_LORA_V = 1 << 2, S2_LORA_O = 1 << 3,
    S2_LORA_GATE = 1 << 4, S2_LORA_UP = 1 << 5, S2_LORA_DOWN = 1 << 6,
};
/* lora.trainable: whole tensors trained besides the adapters ("LoRA+"). */
enum { S2_TRAIN_EMBED = 1 << 0, S2_TRAIN_NORM = 1 << 1, S2_TRAIN_HEAD = 1 << 2 };

/* Where a value came from, for errors raised after loading (plan, CLI). */
typedef struct s2_srcpos {
    const char *file; /* the spec's path, or "--set" for an override; points into s2_spec */
    int line, col;    /* 1-based; 0 when the value is a default */
} s2_srcpos;

/* Names follow Hugging Face's LLaMA config.json, so values copy across. */
typedef struct s2_model {
    int hidden_size;             /* e.g. 4096 */
    int intermediate_size;       /* e.g. 11008 */
    int num_layers;              /* HF: num_hidden_layers; the spec accepts both spellings */
    int num_heads;               /* HF: num_attention_heads; both accepted */
    int num_kv_heads;            /* HF: num_key_value_heads; both; default num_heads */
    int head_dim;                /* default hidden_size / num_heads; one of 64, 96, 128, 256 */
    int vocab_size;
    double rope_theta;           /* default 10000 */
    int max_position_embeddings; /* the context the base model was trained at */
    double rms_norm_eps;         /* default 1e-5 */
    int tie_word_embeddings;     /* 0/1, default 0 */
} s2_model;

typedef struct s2_attn_cfg {
    int group_size;           /* G, tokens; derived from group_ratio when not given */
    double group_ratio;       /* G / context_length, default 0.25; 0 when group_size was given */
    int shift;                /* S, tokens; default G / 2; 0 <= S < G */
    s2_shift_mode shift_mode; /* default split */
    double softmax_scale;     /* default 1 / sqrt(head_dim) */
} s2_attn_cfg;

typedef struct s2_lora_cfg {
    int rank;           /* r, default 8 */
    double alpha;       /* default 16; the update is scaled by alpha / r */
    double dropout;     /* default 0; 0 <= p < 1 */
    unsigned targets;   /* S2_LORA_* bits, default q|k|v|o */
    unsigned trainable; /* S2_TRAIN_* bits, default embed|norm */
} s2_lora_cfg;

typedef struct s2_spec {
    char path[S2_SPEC_PATH_MAX];  /* the file it came from ("" if from a string) */
    char name[S2_SPEC_NAME_MAX];  /* required */
    s2_dtype dtype;               /* default bf16 */
    int n_arch;                   /* default 2: sm_80, sm_90a */
    char arch[S2_SPEC_MAX_ARCH][16]; /* each one of sm_80 sm_86 sm_89 sm_90 sm_90a */
    s2_model model;
    int context_length;           /* required: tokens per sequence after extension */
    int rope_factor;              /* derived: ceil(context_length / max_position_embeddings), >= 1 */
    s2_attn_cfg s2attn;
    s2_lora_cfg lora;
    uint8_t hash[32];             /* SHA-256 of s2_spec_canonical(): same values, same hash */
    char hash_hex[65];
    /* Source positions by dotted key ("s2attn.shift"); see s2_spec_pos(). */
    int n_pos;
    struct { char key[64]; s2_srcpos pos; } pos[96];
} s2_spec;

/* One --set override, "dotted.key=value". */
typedef struct s2_spec_override {
    const char *text;
} s2_spec_override;

/*
 * Loads, overrides, defaults, derives and validates. On failure returns
 * S2_ERR_IO (file unreadable), S2_ERR_PARSE (not YAML, empty) or S2_ERR_SPEC
 * (anything else) and err->msg holds one "where: error: what" line (the first
 * problem found). *spec is fully written on success only.
 */
s2_status s2_spec_load(const char *path, const s2_spec_override *ov, int n_ov, s2_spec *spec,
                       s2_error *err);

/* The same from a YAML string; name is used in place of a path in messages. */
s2_status s2_spec_load_string(const char *yaml, const char *name, const s2_spec_override *ov,
                              int n_ov, s2_spec *spec, s2_error *err);

/* Where a key's value came from (line 0 when it is a default). Never NULL file. */
s2_srcpos s2_spec_pos(const s2_spec *spec, const char *dotted_key);

/* The same as message text: "FILE:LINE:COL", "--set #N" or "<default>". Returns buf. */
const char *s2_spec_where(const s2_spec *spec, const char *dotted_key, char *buf, size_t n);

/*
 * A canonical text of every value (sorted dotted keys, one "key=value" line
 * each, derived values included). The hash is over this text. Heap string,
 * caller frees.
 */
char *s2_spec_canonical(const s2_spec *spec);

/* Spellings, for messages and emitted banners. */
const char *s2_dtype_name(s2_dtype d);             /* "bf16" */
const char *s2_shift_mode_name(s2_shift_mode m);   /* "split" */

#endif

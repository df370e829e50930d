/*
 * train_io.c — Hugging Face checkpoints in, PEFT adapters and trainable tensors out. See
 * train_io.h.
 *
 * A checkpoint's tensors are found through one table sorted by name (entries point into the
 * safetensors files, which stay open until s2_ckpt_close); a sharded checkpoint's table holds
 * exactly the tensors its index maps, each checked to exist in its shard at open time.
 */
#define _GNU_SOURCE
#include "runtime/core/train_io.h"
#include "runtime/core/pool.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CONFIG_JSON "config.json"
#define MODEL_ST "model.safetensors"
#define MODEL_INDEX "model.safetensors.index.json"
#define ADAPTER_CONFIG "adapter_config.json"
#define ADAPTER_ST "adapter_model.safetensors"

typedef struct entry {
    const char *name; /* the tensor's own name (owned by its file) */
    int file;         /* index into paths / files */
    const s2_tensor *t;
} entry;

struct s2_ckpt {
    char *dir;
    char *config_path;
    char *source; /* model.safetensors or the index: where the tensor list came from */
    s2_hf_config cfg;
    int n_files;
    char **paths;
    s2_st_file *files;
    int n_entries;
    entry *entries; /* sorted by name */
    int header_only; /* s2_ckpt_open_headers: the tensors have no data */
    s2_progress_fn progress; /* s2_ckpt_open_progress: bytes of the files read so far */
    void *progress_ctx;
    uint64_t done, total;
};

/* ------------------------------------------------------------------------------------------ */
/* Small helpers                                                                              */
/* ------------------------------------------------------------------------------------------ */

static char *join(const char *dir, const char *name)
{
    char *p = NULL;
    return asprintf(&p, "%s/%s", dir, name) < 0 ? NULL : p;
}

static int path_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

static uint64_t file_size(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 ? (uint64_t)sb.st_size : 0;
}

/* A safetensors file, whole or (ck opened for checking) its header alone; a whole one counts
 * its bytes towards the progress. */
static s2_status st_read(s2_ckpt *ck, const char *path, s2_st_file *f, s2_error *err)
{
    if (ck->header_only)
        return s2_st_read_header(path, f, err);
    s2_status st = s2_st_read(path, f, err);
    if (!st && ck->progress) {
        ck->done += file_size(path);
        ck->progress(ck->progress_ctx, "loading the checkpoint", ck->done,
                     ck->done > ck->total ? ck->done : ck->total);
    }
    return st;
}

/* A JSON value as a message shows it: its value for scalars, its kind otherwise. */
static const char *json_desc(const json_t *v, char *buf, size_t n)
{
    switch (json_typeof(v)) {
    case JSON_INTEGER: snprintf(buf, n, "%lld", (long long)json_integer_value(v)); break;
    case JSON_REAL: snprintf(buf, n, "%g", json_real_value(v)); break;
    case JSON_STRING: snprintf(buf, n, "the string \"%.48s\"", json_string_value(v)); break;
    case JSON_OBJECT: snprintf(buf, n, "an object"); break;
    case JSON_ARRAY: snprintf(buf, n, "an array"); break;
    case JSON_TRUE: snprintf(buf, n, "true"); break;
    case JSON_FALSE: snprintf(buf, n, "false"); break;
    case JSON_NULL: snprintf(buf, n, "null"); break;
    }
    return buf;
}

/* Reads path as one JSON object (duplicate keys refused). *out is the caller's to decref. */
static s2_status load_json_object(const char *path, json_t **out, s2_error *err)
{
    *out = NULL;
    char *text;
    size_t size;
    s2_status st = s2_read_file_max(path, S2_MAX_JSON_BYTES, "a JSON file", &text, &size, err);
    if (st)
        return st;
    json_error_t je;
    json_t *root = json_loadb(text, size, JSON_REJECT_DUPLICATES, &je);
    free(text);
    if (!root)
        return s2_error_set(err, S2_ERR_PARSE, "%s: not valid JSON (line %d, column %d): %s",
                            path, je.line, je.column, je.text);
    if (!json_is_object(root)) {
        char d[64];
        st = s2_error_set(err, S2_ERR_PARSE, "%s: expected a JSON object, got %s", path,
                          json_desc(root, d, sizeof d));
        json_decref(root);
        return st;
    }
    *out = root;
    return S2_OK;
}

static int is_float_dtype(s2_st_dtype d)
{
    return d == S2_ST_F32 || d == S2_ST_F16 || d == S2_ST_BF16;
}

static char *dims_str(int ndim, const int64_t *shape, char *buf, size_t n)
{
    s2_tensor t = {.ndim = ndim};
    for (int i = 0; i < ndim; i++)
        t.shape[i] = shape[i];
    return s2_tensor_shape_str(&t, buf, n);
}

/*
 * t (NULL when absent) must be a float tensor of the wanted shape. path names the file (or
 * the index) in messages; note, when not NULL, is added to the message for a missing tensor.
 */
static s2_status check_tensor(const char *path, const s2_tensor *t, const char *name, int ndim,
                              const int64_t *shape, const char *note, s2_error *err)
{
    char want[96], got[96];
    dims_str(ndim, shape, want, sizeof want);
    if (!t)
        return s2_error_set(err, S2_ERR_INVALID, "%s: missing tensor '%s' (expected shape %s%s%s)",
                            path, name, want, note ? "; " : "", note ? note : "");
    if (!is_float_dtype(t->dtype))
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: tensor '%s' has dtype %s, expected a float dtype (BF16, F16 or "
                            "F32)",
                            path, name, s2_st_dtype_name(t->dtype));
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++)
        same = t->shape[i] == shape[i];
    if (!same)
        return s2_error_set(err, S2_ERR_INVALID, "%s: tensor '%s' has shape %s, expected %s", path,
                            name, s2_tensor_shape_str(t, got, sizeof got), want);
    return S2_OK;
}

/* A float tensor of n elements to fp32 (its data may be unaligned). */
static void to_f32(const s2_tensor *t, float *dst, size_t n)
{
    if (t->dtype == S2_ST_F32)
        memcpy(dst, t->data, n * sizeof *dst);
    else
        s2_half_to_f32(t->dtype, t->data, dst, n);
}

/*
 * Fills t as a tensor to write: a heap copy of name, and src (fp32, n = d0 * d1 or d0
 * elements) converted to dt. Free with free_tensors.
 */
static s2_status make_tensor(s2_tensor *t, const char *name, s2_st_dtype dt, int ndim,
                             const int64_t *shape, const float *src, s2_error *err)
{
    memset(t, 0, sizeof *t);
    t->dtype = dt;
    t->ndim = ndim;
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        n *= (size_t)shape[i];
    }
    t->nbytes = n * s2_st_dtype_size(dt);
    t->name = strdup(name);
    t->data = malloc(t->nbytes ? t->nbytes : 1);
    if (!t->name || !t->data)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory converting '%s'", name);
    if (dt == S2_ST_F32)
        memcpy(t->data, src, t->nbytes);
    else
        s2_f32_to_half(dt, src, t->data, n);
    return S2_OK;
}

static void free_tensors(s2_tensor *t, int n)
{
    for (int i = 0; t && i < n; i++) {
        free(t[i].name);
        free(t[i].data);
    }
    free(t);
}

static const char *const format_key[] = {"format"};
static const char *const format_pt[] = {"pt"};

/* ------------------------------------------------------------------------------------------ */
/* config.json                                                                                */
/* ------------------------------------------------------------------------------------------ */

typedef struct cfg_ctx {
    const char *path;
    json_t *root;
    s2_error *err;
} cfg_ctx;

/* A positive integer; absent or null gives def, and is an error when def < 0 (required). */
static s2_status cfg_int(const cfg_ctx *c, const char *key, int def, int *out)
{
    json_t *v = json_object_get(c->root, key);
    if (!v || json_is_null(v)) {
        if (def < 0)
            return s2_error_set(c->err, S2_ERR_PARSE, "%s: missing required key \"%s\"", c->path,
                                key);
        *out = def;
        return S2_OK;
    }
    json_int_t i = json_is_integer(v) ? json_integer_value(v) : 0;
    if (i < 1 || i > INT_MAX) {
        char d[80];
        return s2_error_set(c->err, S2_ERR_PARSE, "%s: \"%s\" is %s, expected a positive integer",
                            c->path, key, json_desc(v, d, sizeof d));
    }
    *out = (int)i;
    return S2_OK;
}

static int json_positive_number(const json_t *v, double *out)
{
    if (!json_is_number(v))
        return 0;
    *out = json_number_value(v);
    return isfinite(*out) && *out > 0;
}

/* A positive number; absent or null gives def, and is an error when def is NaN (required). */
static s2_status cfg_num(const cfg_ctx *c, const char *key, double def, double *out)
{
    json_t *v = json_object_get(c->root, key);
    if (!v || json_is_null(v)) {
        if (isnan(def))
            return s2_error_set(c->err, S2_ERR_PARSE, "%s: missing required key \"%s\"", c->path,
                                key);
        *out = def;
        return S2_OK;
    }
    if (!json_positive_number(v, out)) {
        char d[80];
        return s2_error_set(c->err, S2_ERR_PARSE, "%s: \"%s\" is %s, expected a positive number",
                            c->path, key, json_desc(v, d, sizeof d));
    }
    return S2_OK;
}

static s2_status cfg_bool(const cfg_ctx *c, const char *key, int def, int *out)
{
    json_t *v = json_object_get(c->root, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return S2_OK;
    }
    if (!json_is_boolean(v)) {
        char d[80];
        return s2_error_set(c->err, S2_ERR_PARSE, "%s: \"%s\" is %s, expected true or false",
                            c->path, key, json_desc(v, d, sizeof d));
    }
    *out = json_is_true(v);
    return S2_OK;
}

/* "torch_dtype", or "dtype" as newer transformers write it; "" when neither is given. */
static s2_status cfg_dtype(const cfg_ctx *c, char *out, size_t n)
{
    out[0] = '\0';
    const char *key = "torch_dtype";
    json_t *v = json_object_get(c->root, key);
    if (!v || json_is_null(v)) {
        key = "dtype";
        v = json_object_get(c->root, key);
    }
    if (!v || json_is_null(v))
        return S2_OK;
    if (!json_is_string(v)) {
        char d[80];
        return s2_error_set(c->err, S2_ERR_PARSE,
                            "%s: \"%s\" is %s, expected a string such as \"bfloat16\"", c->path,
                            key, json_desc(v, d, sizeof d));
    }
    snprintf(out, n, "%s", json_string_value(v));
    return S2_OK;
}

/* rope_scaling's type, under either spelling ("type", or "rope_type" as newer HF writes it). */
static s2_status rope_type(const cfg_ctx *c, const char *key, json_t *rs, const char **out)
{
    const char *keys[2] = {"type", "rope_type"}, *val[2] = {NULL, NULL};
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(rs, keys[i]);
        if (!v)
            continue;
        if (!json_is_string(v)) {
            char d[80];
            return s2_error_set(c->err, S2_ERR_PARSE,
                                "%s: %s \"%s\" is %s, expected a string such as "
                                "\"linear\"",
                                c->path, key, keys[i], json_desc(v, d, sizeof d));
        }
        val[i] = json_string_value(v);
    }
    if (val[0] && val[1] && strcmp(val[0], val[1]) != 0)
        return s2_error_set(c->err, S2_ERR_PARSE,
                            "%s: %s has \"type\": \"%s\" and \"rope_type\": \"%s\", "
                            "which disagree",
                            c->path, key, val[0], val[1]);
    *out = val[0] ? val[0] : val[1];
    if (!*out)
        return s2_error_set(c->err, S2_ERR_PARSE,
                            "%s: %s has no \"type\" (or \"rope_type\"); only linear "
                            "scaling is supported, e.g. {\"type\": \"linear\", \"factor\": 8.0}",
                            c->path, key);
    return S2_OK;
}

/* null, absent or rope type "default": no scaling (factor 0); linear: its factor. */
/*
 * The RoPE settings: "rope_scaling" (transformers 4), else "rope_parameters" (transformers 5,
 * which also moves rope_theta into it: *theta is set from it when the top level has none).
 */
static s2_status cfg_rope_scaling(const cfg_ctx *c, double *factor, double *theta)
{
    *factor = 0;
    const char *key = "rope_scaling";
    json_t *rs = json_object_get(c->root, key);
    char d[80];
    if (!rs || json_is_null(rs)) {
        key = "rope_parameters";
        rs = json_object_get(c->root, key);
        if (!rs || json_is_null(rs))
            return S2_OK;
        json_t *th = json_is_object(rs) ? json_object_get(rs, "rope_theta") : NULL;
        if (th && !json_object_get(c->root, "rope_theta") && !json_positive_number(th, theta))
            return s2_error_set(c->err, S2_ERR_PARSE,
                                "%s: rope_parameters \"rope_theta\" is %s, expected a positive "
                                "number", c->path, json_desc(th, d, sizeof d));
    }
    if (!json_is_object(rs))
        return s2_error_set(c->err, S2_ERR_PARSE,
                            "%s: \"%s\" is %s, expected null or an object such as "
                            "{\"type\": \"linear\", \"factor\": 8.0}",
                            c->path, key, json_desc(rs, d, sizeof d));
    const char *type;
    s2_status st = rope_type(c, key, rs, &type);
    if (st)
        return st;
    if (strcmp(type, "default") == 0)
        return S2_OK;
    if (strcmp(type, "linear") != 0)
        return s2_error_set(c->err, S2_ERR_PARSE,
                            "%s: %s type \"%s\" is not supported; only \"linear\" is "
                            "(position interpolation, as LongLoRA extends the context)",
                            c->path, key, type);
    json_t *f = json_object_get(rs, "factor");
    if (!f)
        return s2_error_set(c->err, S2_ERR_PARSE, "%s: %s (linear) has no \"factor\"",
                            c->path, key);
    if (!json_positive_number(f, factor))
        return s2_error_set(c->err, S2_ERR_PARSE,
                            "%s: %s \"factor\" is %s, expected a positive number",
                            c->path, key, json_desc(f, d, sizeof d));
    return S2_OK;
}

static s2_status cfg_fill(const cfg_ctx *c, s2_hf_config *h)
{
    s2_status st;
    if ((st = cfg_int(c, "hidden_size", -1, &h->hidden_size)) ||
        (st = cfg_int(c, "intermediate_size", -1, &h->intermediate_size)) ||
        (st = cfg_int(c, "num_hidden_layers", -1, &h->num_hidden_layers)) ||
        (st = cfg_int(c, "num_attention_heads", -1, &h->num_attention_heads)) ||
        (st = cfg_int(c, "num_key_value_heads", h->num_attention_heads,
                      &h->num_key_value_heads)) ||
        (st = cfg_int(c, "head_dim", 0, &h->head_dim)) ||
        (st = cfg_int(c, "vocab_size", -1, &h->vocab_size)) ||
        (st = cfg_int(c, "max_position_embeddings", -1, &h->max_position_embeddings)) ||
        (st = cfg_bool(c, "tie_word_embeddings", 0, &h->tie_word_embeddings)) ||
        (st = cfg_num(c, "rms_norm_eps", NAN, &h->rms_norm_eps)) ||
        (st = cfg_num(c, "rope_theta", 10000.0, &h->rope_theta)) ||
        (st = cfg_rope_scaling(c, &h->rope_scaling_factor, &h->rope_theta)) ||
        (st = cfg_dtype(c, h->torch_dtype, sizeof h->torch_dtype)))
        return st;
    if (h->num_attention_heads % h->num_key_value_heads != 0)
        return s2_error_set(c->err, S2_ERR_PARSE,
                            "%s: \"num_attention_heads\" (%d) is not a multiple of "
                            "\"num_key_value_heads\" (%d)",
                            c->path, h->num_attention_heads, h->num_key_value_heads);
    if (h->head_dim)
        return S2_OK;
    if (h->hidden_size % h->num_attention_heads != 0)
        return s2_error_set(c->err, S2_ERR_PARSE,
                            "%s: \"head_dim\" is not given and \"hidden_size\" (%d) is not a "
                            "multiple of \"num_attention_heads\" (%d)",
                            c->path, h->hidden_size, h->num_attention_heads);
    h->head_dim = h->hidden_size / h->num_attention_heads;
    return S2_OK;
}

static s2_status read_config(s2_ckpt *ck, s2_error *err)
{
    ck->config_path = join(ck->dir, CONFIG_JSON);
    if (!ck->config_path)
        return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", ck->dir);
    json_t *root;
    s2_status st = load_json_object(ck->config_path, &root, err);
    if (st)
        return st;
    cfg_ctx c = {ck->config_path, root, err};
    st = cfg_fill(&c, &ck->cfg);
    json_decref(root);
    return st;
}

/* ------------------------------------------------------------------------------------------ */
/* Weights                                                                                    */
/* ------------------------------------------------------------------------------------------ */

static int entry_cmp(const void *a, const void *b)
{
    return strcmp(((const entry *)a)->name, ((const entry *)b)->name);
}

static const entry *find_entry(const s2_ckpt *ck, const char *name)
{
    if (!ck || !name || !ck->n_entries)
        return NULL;
    entry key = {.name = name};
    return bsearch(&key, ck->entries, (size_t)ck->n_entries, sizeof key, entry_cmp);
}

static s2_status alloc_files(s2_ckpt *ck, int n_files, s2_error *err)
{
    ck->paths = calloc((size_t)n_files, sizeof *ck->paths);
    ck->files = calloc((size_t)n_files, sizeof *ck->files);
    if (!ck->paths || !ck->files)
        return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", ck->dir);
    ck->n_files = n_files;
    return S2_OK;
}

static s2_status alloc_entries(s2_ckpt *ck, size_t n, s2_error *err)
{
    ck->entries = calloc(n ? n : 1, sizeof *ck->entries);
    return ck->entries ? S2_OK : s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", ck->dir);
}

static s2_status open_single(s2_ckpt *ck, s2_error *err)
{
    s2_status st = alloc_files(ck, 1, err);
    if (st)
        return st;
    ck->paths[0] = strdup(ck->source);
    if (!ck->paths[0])
        return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", ck->dir);
    ck->total = file_size(ck->source);
    const s2_st_file *f = &ck->files[0];
    if ((st = st_read(ck, ck->paths[0], &ck->files[0], err)) ||
        (st = alloc_entries(ck, (size_t)f->n, err)))
        return st;
    for (int i = 0; i < f->n; i++)
        ck->entries[ck->n_entries++] = (entry){f->t[i].name, 0, &f->t[i]};
    return S2_OK;
}

/* A shard must be a plain file name beside the index. */
static int shard_name_ok(const char *s)
{
    return s[0] && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

/*
 * Validates weight_map's values and numbers the distinct shards in order of first use:
 * ids maps shard file name -> integer id.
 */
static s2_status number_shards(const s2_ckpt *ck, json_t *wm, json_t *ids, s2_error *err)
{
    const char *name;
    json_t *v;
    char d[80];
    json_object_foreach(wm, name, v) {
        if (!json_is_string(v))
            return s2_error_set(err, S2_ERR_PARSE,
                                "%s: weight_map[\"%s\"] is %s, expected a shard file name",
                                ck->source, name, json_desc(v, d, sizeof d));
        const char *f = json_string_value(v);
        if (!shard_name_ok(f))
            return s2_error_set(err, S2_ERR_PARSE,
                                "%s: weight_map[\"%s\"] is \"%s\", expected the name of a file "
                                "in the same directory",
                                ck->source, name, f);
        if (!json_object_get(ids, f) &&
            json_object_set_new(ids, f, json_integer((json_int_t)json_object_size(ids))) != 0)
            return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", ck->source);
    }
    return S2_OK;
}

static s2_status read_shard(s2_ckpt *ck, int i, const char *shard, const char *tensor,
                            s2_error *err)
{
    ck->paths[i] = join(ck->dir, shard);
    if (!ck->paths[i])
        return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", ck->dir);
    s2_status st = st_read(ck, ck->paths[i], &ck->files[i], err);
    if (st)
        s2_error_prefix(err, "%s: shard '%s' (named for tensor '%s')", ck->source, shard, tensor);
    return st;
}

/* Reads every shard once, and finds every mapped tensor in its shard. */
static s2_status map_tensors(s2_ckpt *ck, json_t *wm, json_t *ids, s2_error *err)
{
    const char *name;
    json_t *v;
    json_object_foreach(wm, name, v) {
        const char *shard = json_string_value(v);
        int i = (int)json_integer_value(json_object_get(ids, shard));
        if (!ck->paths[i]) {
            s2_status st = read_shard(ck, i, shard, name, err);
            if (st)
                return st;
        }
        const s2_tensor *t = s2_st_find(&ck->files[i], name);
        if (!t)
            return s2_error_set(err, S2_ERR_PARSE,
                                "%s: tensor '%s' is mapped to '%s', but %s has no such tensor",
                                ck->source, name, shard, ck->paths[i]);
        ck->entries[ck->n_entries++] = (entry){t->name, i, t};
    }
    return S2_OK;
}

static s2_status open_index(s2_ckpt *ck, s2_error *err)
{
    json_t *root;
    s2_status st = load_json_object(ck->source, &root, err);
    if (st)
        return st;
    json_t *wm = json_object_get(root, "weight_map"), *ids = NULL;
    char d[80];
    if (!wm || !json_is_object(wm)) {
        st = s2_error_set(err, S2_ERR_PARSE, "%s: \"weight_map\" is %s, expected an object "
                          "{\"tensor name\": \"shard file\", ...}",
                          ck->source, wm ? json_desc(wm, d, sizeof d) : "missing");
        goto free_root;
    }
    if (json_object_size(wm) == 0) {
        st = s2_error_set(err, S2_ERR_PARSE, "%s: \"weight_map\" is empty", ck->source);
        goto free_root;
    }
    ids = json_object();
    if (!ids) {
        st = s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", ck->source);
        goto free_root;
    }
    if ((st = number_shards(ck, wm, ids, err)) ||
        (st = alloc_files(ck, (int)json_object_size(ids), err)) ||
        (st = alloc_entries(ck, json_object_size(wm), err)))
        goto free_ids;
    if (ck->progress) { /* the bytes to read: every shard's */
        const char *shard;
        json_t *v;
        json_object_foreach(ids, shard, v) {
            char *path = join(ck->dir, shard);
            ck->total += path ? file_size(path) : 0;
            free(path);
        }
    }
    st = map_tensors(ck, wm, ids, err);
free_ids:
    json_decref(ids);
free_root:
    json_decref(root);
    return st;
}

static s2_status read_weights(s2_ckpt *ck, s2_error *err)
{
    ck->source = join(ck->dir, MODEL_ST);
    if (!ck->source)
        return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", ck->dir);
    s2_status st;
    if (path_exists(ck->source)) {
        st = open_single(ck, err);
    } else {
        free(ck->source);
        ck->source = join(ck->dir, MODEL_INDEX);
        if (!ck->source)
            return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", ck->dir);
        if (!path_exists(ck->source))
            return s2_error_set(err, S2_ERR_IO,
                                "%s: no " MODEL_ST " or " MODEL_INDEX
                                " (a Hugging Face checkpoint has one of them)",
                                ck->dir);
        st = open_index(ck, err);
    }
    if (st)
        return st;
    qsort(ck->entries, (size_t)ck->n_entries, sizeof *ck->entries, entry_cmp);
    return S2_OK;
}

static s2_status ckpt_open(const char *dir, int header_only, s2_progress_fn progress,
                           void *progress_ctx, s2_ckpt **out, s2_error *err)
{
    *out = NULL;
    s2_ckpt *ck = calloc(1, sizeof *ck);
    if (!ck)
        return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", dir);
    ck->header_only = header_only;
    ck->progress = progress;
    ck->progress_ctx = progress_ctx;
    ck->dir = strdup(dir);
    s2_status st = ck->dir ? S2_OK : s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", dir);
    if (!st)
        st = read_config(ck, err);
    if (!st)
        st = read_weights(ck, err);
    if (st) {
        s2_ckpt_close(ck);
        return st;
    }
    *out = ck;
    return S2_OK;
}

s2_status s2_ckpt_open(const char *dir, s2_ckpt **out, s2_error *err)
{
    return ckpt_open(dir, 0, NULL, NULL, out, err);
}

s2_status s2_ckpt_open_progress(const char *dir, s2_progress_fn progress, void *ctx,
                                s2_ckpt **out, s2_error *err)
{
    return ckpt_open(dir, 0, progress, ctx, out, err);
}

s2_status s2_ckpt_open_headers(const char *dir, s2_ckpt **out, s2_error *err)
{
    return ckpt_open(dir, 1, NULL, NULL, out, err);
}

void s2_ckpt_close(s2_ckpt *ck)
{
    if (!ck)
        return;
    for (int i = 0; i < ck->n_files; i++) {
        s2_st_close(&ck->files[i]);
        free(ck->paths[i]);
    }
    free(ck->files);
    free(ck->paths);
    free(ck->entries);
    free(ck->source);
    free(ck->config_path);
    free(ck->dir);
    free(ck);
}

const s2_hf_config *s2_ckpt_config(const s2_ckpt *ck) { return ck ? &ck->cfg : NULL; }

const s2_tensor *s2_ckpt_tensor(const s2_ckpt *ck, const char *name)
{
    const entry *e = find_entry(ck, name);
    return e ? e->t : NULL;
}

const char *s2_ckpt_tensor_path(const s2_ckpt *ck, const char *name)
{
    const entry *e = find_entry(ck, name);
    return e ? ck->paths[e->file] : NULL;
}

s2_status s2_ckpt_read_f32(const s2_ckpt *ck, const char *name, float *dst, size_t n,
                           s2_error *err)
{
    const entry *e = find_entry(ck, name);
    if (!e)
        return s2_error_set(err, S2_ERR_INVALID, "%s: missing tensor '%s'",
                            ck ? ck->source : "(no checkpoint)", name);
    const char *path = ck->paths[e->file];
    if (ck->header_only)
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: tensor '%s': the checkpoint was opened for checking only (its "
                            "headers, not its data)", path, name);
    if (!is_float_dtype(e->t->dtype))
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: tensor '%s' has dtype %s, expected a float dtype (BF16, F16 or "
                            "F32)",
                            path, name, s2_st_dtype_name(e->t->dtype));
    int64_t numel = s2_tensor_numel(e->t);
    if (numel < 0 || (uint64_t)numel != (uint64_t)n)
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: tensor '%s' has %lld elements, the caller's buffer %zu", path,
                            name, (long long)numel, n);
    to_f32(e->t, dst, n);
    return S2_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Checking against the spec                                                                  */
/* ------------------------------------------------------------------------------------------ */

static s2_status mismatch(const s2_ckpt *ck, const s2_spec *spec, const char *hf_key,
                          const char *hf_val, const char *spec_key, const char *spec_val,
                          s2_error *err)
{
    char where[S2_SPEC_PATH_MAX + 32];
    return s2_error_set(err, S2_ERR_SPEC, "%s: %s = %s, spec %s = %s (%s)", ck->config_path,
                        hf_key, hf_val, spec_key, spec_val,
                        s2_spec_where(spec, spec_key, where, sizeof where));
}

static int close_enough(double a, double b) { return fabs(a - b) <= 1e-9 * fmax(fabs(a), fabs(b)); }

static s2_status check_config(const s2_ckpt *ck, const s2_spec *spec, s2_rope_policy rope,
                             s2_error *err)
{
    const s2_hf_config *h = &ck->cfg;
    const s2_model *m = &spec->model;
    const struct { const char *hf, *key; int hv, sv; } ints[] = {
        {"hidden_size", "model.hidden_size", h->hidden_size, m->hidden_size},
        {"intermediate_size", "model.intermediate_size", h->intermediate_size,
         m->intermediate_size},
        {"num_hidden_layers", "model.num_layers", h->num_hidden_layers, m->num_layers},
        {"num_attention_heads", "model.num_heads", h->num_attention_heads, m->num_heads},
        {"num_key_value_heads", "model.num_kv_heads", h->num_key_value_heads, m->num_kv_heads},
        {"head_dim", "model.head_dim", h->head_dim, m->head_dim},
        {"vocab_size", "model.vocab_size", h->vocab_size, m->vocab_size},
        {"max_position_embeddings", "model.max_position_embeddings",
         h->max_position_embeddings, m->max_position_embeddings},
    };
    char a[64], b[64];
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        if (ints[i].hv == ints[i].sv)
            continue;
        snprintf(a, sizeof a, "%d", ints[i].hv);
        snprintf(b, sizeof b, "%d", ints[i].sv);
        return mismatch(ck, spec, ints[i].hf, a, ints[i].key, b, err);
    }
    if (!h->tie_word_embeddings != !m->tie_word_embeddings)
        return mismatch(ck, spec, "tie_word_embeddings", h->tie_word_embeddings ? "true" : "false",
                        "model.tie_word_embeddings", m->tie_word_embeddings ? "true" : "false",
                        err);
    const struct { const char *hf, *key; double hv, sv; } reals[] = {
        {"rms_norm_eps", "model.rms_norm_eps", h->rms_norm_eps, m->rms_norm_eps},
        {"rope_theta", "model.rope_theta", h->rope_theta, m->rope_theta},
    };
    for (size_t i = 0; i < sizeof reals / sizeof reals[0]; i++) {
        if (close_enough(reals[i].hv, reals[i].sv))
            continue;
        snprintf(a, sizeof a, "%.9g", reals[i].hv);
        snprintf(b, sizeof b, "%.9g", reals[i].sv);
        return mismatch(ck, spec, reals[i].hf, a, reals[i].key, b, err);
    }
    /* A checkpoint without rope_scaling is a base model: the spec's factor is what extends it.
     * One with a factor was extended already; training it at another factor is a choice. */
    const double f = h->rope_scaling_factor;
    if (rope == S2_ROPE_MATCH && f > 0 && !close_enough(f, spec->rope_factor)) {
        char keep[160];
        if (f == floor(f) && f * m->max_position_embeddings <= S2_SPEC_MAX_TOKENS)
            snprintf(keep, sizeof keep, "--set context_length=%lld (or any length that rounds "
                     "up to factor %g)", (long long)f * m->max_position_embeddings, f);
        else
            snprintf(keep, sizeof keep, "no context_length (its factor %g is not a whole "
                     "number)", f);
        return s2_error_set(err, S2_ERR_SPEC,
                            "%s: rope_scaling.factor = %g, spec rope_factor = %d (ceil("
                            "context_length %d / model.max_position_embeddings %d)): the "
                            "checkpoint was extended to another context already. To train it "
                            "further at the spec's factor (which then replaces the checkpoint's, "
                            "counted from model.max_position_embeddings), pass --rope-scaling "
                            "spec (train, and eval or logits of the result); to keep the "
                            "checkpoint's factor: %s",
                            ck->config_path, f, spec->rope_factor, spec->context_length,
                            m->max_position_embeddings, keep);
    }
    return S2_OK;
}

static void param_set(s2_ckpt_param *p, int ndim, int64_t d0, int64_t d1, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void param_set(s2_ckpt_param *p, int ndim, int64_t d0, int64_t d1, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->name, sizeof p->name, fmt, ap);
    va_end(ap);
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = d1;
}

/* Every tensor of the spec's model, Hugging Face names and shapes, in model order. */
static s2_status model_params(const s2_spec *spec, s2_ckpt_param **out, int *n, s2_error *err)
{
    const s2_model *m = &spec->model;
    const int64_t hid = m->hidden_size, inter = m->intermediate_size, V = m->vocab_size;
    const int64_t q = (int64_t)m->num_heads * m->head_dim, kv = (int64_t)m->num_kv_heads * m->head_dim;
    int cap = 2 + 9 * m->num_layers + 1;
    s2_ckpt_param *p = calloc((size_t)cap, sizeof *p);
    if (!p)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    int k = 0;
    param_set(&p[k++], 2, V, hid, "model.embed_tokens.weight");
    for (int l = 0; l < m->num_layers; l++) {
        const char *pre = "model.layers";
        param_set(&p[k++], 1, hid, 0, "%s.%d.input_layernorm.weight", pre, l);
        param_set(&p[k++], 2, q, hid, "%s.%d.self_attn.q_proj.weight", pre, l);
        param_set(&p[k++], 2, kv, hid, "%s.%d.self_attn.k_proj.weight", pre, l);
        param_set(&p[k++], 2, kv, hid, "%s.%d.self_attn.v_proj.weight", pre, l);
        param_set(&p[k++], 2, hid, q, "%s.%d.self_attn.o_proj.weight", pre, l);
        param_set(&p[k++], 1, hid, 0, "%s.%d.post_attention_layernorm.weight", pre, l);
        param_set(&p[k++], 2, inter, hid, "%s.%d.mlp.gate_proj.weight", pre, l);
        param_set(&p[k++], 2, inter, hid, "%s.%d.mlp.up_proj.weight", pre, l);
        param_set(&p[k++], 2, hid, inter, "%s.%d.mlp.down_proj.weight", pre, l);
    }
    param_set(&p[k++], 1, hid, 0, "model.norm.weight");
    if (!m->tie_word_embeddings)
        param_set(&p[k++], 2, V, hid, "lm_head.weight");
    *out = p;
    *n = k;
    return S2_OK;
}

static s2_status check_tensors(const s2_ckpt *ck, const s2_spec *spec, s2_error *err)
{
    s2_ckpt_param *p;
    int n;
    s2_status st = model_params(spec, &p, &n, err);
    for (int i = 0; !st && i < n; i++) {
        const entry *e = find_entry(ck, p[i].name);
        const char *note = strcmp(p[i].name, "lm_head.weight") == 0
                               ? "tie_word_embeddings is false, so the head is its own tensor"
                               : NULL;
        st = check_tensor(e ? ck->paths[e->file] : ck->source, e ? e->t : NULL, p[i].name,
                          p[i].ndim, p[i].shape, note, err);
    }
    free(p);
    return st;
}

s2_status s2_ckpt_check_rope(const s2_ckpt *ck, const s2_spec *spec, s2_rope_policy rope,
                             s2_error *err)
{
    s2_status st = check_config(ck, spec, rope, err);
    return st ? st : check_tensors(ck, spec, err);
}

s2_status s2_ckpt_config_with_spec_rope(const char *json_text, const char *path,
                                        const s2_spec *spec, char **out, s2_error *err)
{
    *out = NULL;
    json_error_t je;
    json_t *c = json_loads(json_text, 0, &je);
    if (!c || !json_is_object(c)) {
        json_decref(c);
        return s2_error_set(err, S2_ERR_PARSE, "%s:%d:%d: %s", path, je.line, je.column,
                            c ? "not a JSON object" : je.text);
    }
    const double f = (double)spec->rope_factor;
    json_t *rp = json_object_get(c, "rope_parameters");
    int bad;
    if (json_is_object(rp)) {
        json_object_del(rp, "type");
        bad = json_object_set_new(rp, "rope_type", json_string(f > 1 ? "linear" : "default")) ||
              (f > 1 ? json_object_set_new(rp, "factor", json_real(f))
                     : (json_object_del(rp, "factor"), 0));
    } else {
        bad = json_object_set_new(c, "rope_scaling",
                                  f > 1 ? json_pack("{s:s, s:f}", "type", "linear", "factor", f)
                                        : json_null());
    }
    *out = bad ? NULL : json_dumps(c, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(c);
    return *out ? S2_OK : s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", path);
}

s2_status s2_ckpt_check(const s2_ckpt *ck, const s2_spec *spec, s2_error *err)
{
    return s2_ckpt_check_rope(ck, spec, S2_ROPE_MATCH, err);
}

/* ------------------------------------------------------------------------------------------ */
/* PEFT adapters                                                                              */
/* ------------------------------------------------------------------------------------------ */

static s2_st_dtype spec_st_dtype(const s2_spec *spec)
{
    return spec->dtype == S2_DTYPE_FP16 ? S2_ST_F16 : S2_ST_BF16;
}

/* Shape of one adapter matrix: A [r, in], B [out, r]. */
static void adapter_shape(const s2_lora_plan *plan, int p, char which, int64_t shape[2])
{
    shape[0] = which == 'A' ? plan->rank : plan->lin[p].out;
    shape[1] = which == 'A' ? plan->lin[p].in : plan->rank;
}

static s2_status check_slots(const char *what, const s2_spec *spec, const s2_lora_plan *plan,
                             const void *const *A, const void *const *B, s2_error *err)
{
    if (!A || !B)
        return s2_error_set(err, S2_ERR_INVALID, "%s: lora_A and lora_B arrays are required",
                            what);
    for (int l = 0; l < spec->model.num_layers; l++)
        for (int p = 0; p < S2_PROJ_COUNT; p++) {
            if (!plan->lin[p].adapted)
                continue;
            if (!A[S2_CKPT_SLOT(l, p)] || !B[S2_CKPT_SLOT(l, p)])
                return s2_error_set(err, S2_ERR_INVALID,
                                    "%s: no buffer for layer %d %s (lora_A and lora_B are "
                                    "required for every adapted projection)",
                                    what, l, s2_proj_name((s2_proj)p));
        }
    return S2_OK;
}

static int count_adapted(const s2_lora_plan *plan)
{
    int n = 0;
    for (int p = 0; p < S2_PROJ_COUNT; p++)
        n += plan->lin[p].adapted;
    return n;
}

static s2_status write_adapter_tensors(const char *path, const s2_spec *spec,
                                       const s2_lora_plan *plan, const float *const *A,
                                       const float *const *B, s2_error *err)
{
    int n = 2 * count_adapted(plan) * spec->model.num_layers, k = 0;
    s2_tensor *t = calloc((size_t)(n ? n : 1), sizeof *t);
    if (!t)
        return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", path);
    s2_status st = S2_OK;
    char name[160];
    for (int l = 0; !st && l < spec->model.num_layers; l++)
        for (int p = 0; !st && p < S2_PROJ_COUNT; p++) {
            if (!plan->lin[p].adapted)
                continue;
            for (int w = 0; !st && w < 2; w++) {
                char which = w ? 'B' : 'A';
                int64_t shape[2];
                adapter_shape(plan, p, which, shape);
                s2_lora_tensor_name(l, (s2_proj)p, which, name, sizeof name);
                st = make_tensor(&t[k++], name, spec_st_dtype(spec), 2, shape,
                                 w ? B[S2_CKPT_SLOT(l, p)] : A[S2_CKPT_SLOT(l, p)], err);
            }
        }
    if (!st)
        st = s2_st_write(path, t, n, format_key, format_pt, 1, err);
    free_tensors(t, k);
    return st;
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The adapted projections' names, sorted, as a JSON array. */
static json_t *target_modules(const s2_lora_plan *plan)
{
    const char *names[S2_PROJ_COUNT];
    int n = 0;
    for (int p = 0; p < S2_PROJ_COUNT; p++)
        if (plan->lin[p].adapted)
            names[n++] = s2_proj_name((s2_proj)p);
    qsort(names, (size_t)n, sizeof names[0], str_cmp);
    json_t *a = json_array();
    for (int i = 0; a && i < n; i++)
        if (json_array_append_new(a, json_string(names[i])) != 0) {
            json_decref(a);
            return NULL;
        }
    return a;
}

/* An integral value as a JSON integer (PEFT's lora_alpha: 16), anything else as a real. */
static json_t *json_num(double v)
{
    if (v == floor(v) && fabs(v) < 1e15)
        return json_integer((json_int_t)v);
    return json_real(v);
}

/* The fewest significant digits (<= 17) that print both values back exactly, as Python does. */
static int real_precision(const double *v, int n)
{
    char buf[64];
    for (int prec = 1; prec < 17; prec++) {
        int ok = 1;
        for (int i = 0; ok && i < n; i++) {
            snprintf(buf, sizeof buf, "%.*g", prec, v[i]);
            ok = strtod(buf, NULL) == v[i];
        }
        if (ok)
            return prec;
    }
    return 17;
}

static s2_status write_adapter_config(const char *path, const s2_lora_plan *plan,
                                      const char *base_model, s2_error *err)
{
    json_t *targets = target_modules(plan), *alpha = json_num(plan->alpha);
    json_t *root = json_pack(
        "{s:s, s:s, s:i, s:o, s:f, s:o, s:s, s:b, s:b, s:s, s:n, s:b, s:b, s:b, s:{}, s:{},"
        " s:n, s:n, s:n}",
        "peft_type", "LORA", "task_type", "CAUSAL_LM", "r", plan->rank, "lora_alpha", alpha,
        "lora_dropout", plan->dropout, "target_modules", targets, "bias", "none",
        "fan_in_fan_out", 0, "inference_mode", 1, "base_model_name_or_path",
        base_model ? base_model : "", "modules_to_save", "init_lora_weights", 1, "use_rslora", 0,
        "use_dora", 0, "rank_pattern", "alpha_pattern", "layers_to_transform", "layers_pattern",
        "revision");
    if (!root)
        return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory building the JSON", path);
    const double reals[] = {plan->alpha, plan->dropout};
    size_t flags = JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(real_precision(reals, 2));
    char *text = json_dumps(root, flags);
    json_decref(root);
    if (!text)
        return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory writing the JSON", path);
    s2_status st = s2_write_file_atomic(path, text, strlen(text), err);
    free(text);
    return st;
}

s2_status s2_ckpt_save_adapter(const char *dir, const s2_spec *spec, const char *base_model,
                               const float *const *lora_A, const float *const *lora_B,
                               s2_error *err)
{
    s2_lora_plan plan;
    s2_plan_lora(spec, &plan);
    s2_status st = check_slots(dir, spec, &plan, (const void *const *)lora_A,
                               (const void *const *)lora_B, err);
    if (st || (st = s2_mkdir_p(dir, err)))
        return st;
    char *st_path = join(dir, ADAPTER_ST), *cfg_path = join(dir, ADAPTER_CONFIG);
    if (!st_path || !cfg_path) {
        st = s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", dir);
        goto free_paths;
    }
    /* Weights first: a config beside them says the adapter is complete. */
    st = write_adapter_tensors(st_path, spec, &plan, lora_A, lora_B, err);
    if (!st)
        st = write_adapter_config(cfg_path, &plan, base_model, err);
free_paths:
    free(st_path);
    free(cfg_path);
    return st;
}

static const char *targets_str(unsigned bits, char *buf, size_t n)
{
    const char *names[S2_PROJ_COUNT];
    int k = 0;
    for (int p = 0; p < S2_PROJ_COUNT; p++)
        if (bits & (1u << p))
            names[k++] = s2_proj_name((s2_proj)p);
    qsort(names, (size_t)k, sizeof names[0], str_cmp);
    size_t len = (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < k && len < n; i++)
        len += (size_t)snprintf(buf + len, n - len, "%s%s", i ? ", " : "", names[i]);
    if (len < n)
        snprintf(buf + len, n - len, "]");
    return buf;
}

/* target_modules as bits over s2_proj (1 << p). */
static s2_status parse_targets(const char *path, json_t *tm, unsigned *bits, s2_error *err)
{
    char d[80];
    *bits = 0;
    if (!tm || !json_is_array(tm))
        return s2_error_set(err, S2_ERR_SPEC,
                            "%s: \"target_modules\" is %s, expected a list of projection names "
                            "such as [\"q_proj\", \"v_proj\"]",
                            path, tm ? json_desc(tm, d, sizeof d) : "missing");
    size_t i;
    json_t *v;
    json_array_foreach(tm, i, v) {
        int found = -1;
        for (int p = 0; json_is_string(v) && p < S2_PROJ_COUNT; p++)
            if (strcmp(json_string_value(v), s2_proj_name((s2_proj)p)) == 0)
                found = p;
        if (found < 0)
            return s2_error_set(err, S2_ERR_SPEC,
                                "%s: target_modules[%zu] is %s, expected one of q_proj, k_proj, "
                                "v_proj, o_proj, gate_proj, up_proj, down_proj",
                                path, i, json_desc(v, d, sizeof d));
        *bits |= 1u << found;
    }
    return S2_OK;
}

/* A boolean key that must be absent, null, or false (features the trainer does not have). */
static s2_status refuse_true(const char *path, json_t *root, const char *key, const char *why,
                             s2_error *err)
{
    if (json_is_true(json_object_get(root, key)))
        return s2_error_set(err, S2_ERR_SPEC, "%s: %s is true: %s", path, key, why);
    return S2_OK;
}

static s2_status refuse_nonempty(const char *path, json_t *root, const char *key,
                                 s2_error *err)
{
    json_t *v = json_object_get(root, key);
    if (v && !json_is_null(v) && !(json_is_object(v) && json_object_size(v) == 0))
        return s2_error_set(err, S2_ERR_SPEC,
                            "%s: \"%s\" is not empty; per-module ranks and alphas are not "
                            "supported",
                            path, key);
    return S2_OK;
}

static s2_status check_adapter_rank(const char *path, json_t *root, const s2_spec *spec,
                                    s2_error *err)
{
    char d[80], where[S2_SPEC_PATH_MAX + 32];
    json_t *r = json_object_get(root, "r");
    if (!json_is_integer(r))
        return s2_error_set(err, S2_ERR_SPEC, "%s: \"r\" is %s, expected a positive integer",
                            path, r ? json_desc(r, d, sizeof d) : "missing");
    if (json_integer_value(r) != spec->lora.rank)
        return s2_error_set(err, S2_ERR_SPEC, "%s: r = %lld, spec lora.rank = %d (%s)", path,
                            (long long)json_integer_value(r), spec->lora.rank,
                            s2_spec_where(spec, "lora.rank", where, sizeof where));
    json_t *a = json_object_get(root, "lora_alpha");
    if (!json_is_number(a))
        return s2_error_set(err, S2_ERR_SPEC, "%s: \"lora_alpha\" is %s, expected a number", path,
                            a ? json_desc(a, d, sizeof d) : "missing");
    if (!close_enough(json_number_value(a), spec->lora.alpha))
        return s2_error_set(err, S2_ERR_SPEC, "%s: lora_alpha = %g, spec lora.alpha = %g (%s)",
                            path, json_number_value(a), spec->lora.alpha,
                            s2_spec_where(spec, "lora.alpha", where, sizeof where));
    return S2_OK;
}

static s2_status check_adapter_config(const char *path, json_t *root, const s2_spec *spec,
                                      const s2_lora_plan *plan, s2_error *err)
{
    json_t *type = json_object_get(root, "peft_type");
    if (!json_is_string(type) || strcmp(json_string_value(type), "LORA") != 0) {
        char d[80];
        return s2_error_set(err, S2_ERR_SPEC, "%s: \"peft_type\" is %s, expected \"LORA\"", path,
                            type ? json_desc(type, d, sizeof d) : "missing");
    }
    s2_status st = check_adapter_rank(path, root, spec, err);
    if (st)
        return st;
    unsigned got, want = 0;
    if ((st = parse_targets(path, json_object_get(root, "target_modules"), &got, err)))
        return st;
    for (int p = 0; p < S2_PROJ_COUNT; p++)
        if (plan->lin[p].adapted)
            want |= 1u << p;
    if (got != want) {
        char a[160], b[160], where[S2_SPEC_PATH_MAX + 32];
        return s2_error_set(err, S2_ERR_SPEC, "%s: target_modules = %s, spec lora.targets = %s (%s)",
                            path, targets_str(got, a, sizeof a), targets_str(want, b, sizeof b),
                            s2_spec_where(spec, "lora.targets", where, sizeof where));
    }
    if ((st = refuse_true(path, root, "use_rslora",
                          "rsLoRA scales by lora_alpha / sqrt(r), the trainer by lora_alpha / r",
                          err)) ||
        (st = refuse_true(path, root, "use_dora", "DoRA adapters are not supported", err)) ||
        (st = refuse_true(path, root, "fan_in_fan_out",
                          "the trainer's adapters are stored [out, in], as LLaMA's linears are",
                          err)) ||
        (st = refuse_nonempty(path, root, "rank_pattern", err)) ||
        (st = refuse_nonempty(path, root, "alpha_pattern", err)))
        return st;
    return S2_OK;
}

/* Checks every adapter tensor the plan expects and, with A and B, reads it; names is filled as
 * a set of them. */
static s2_status read_adapter_tensors(const char *path, const s2_st_file *f, const s2_spec *spec,
                                      const s2_lora_plan *plan, float *const *A,
                                      float *const *B, json_t *names, s2_error *err)
{
    char name[160];
    for (int l = 0; l < spec->model.num_layers; l++)
        for (int p = 0; p < S2_PROJ_COUNT; p++) {
            if (!plan->lin[p].adapted)
                continue;
            for (int w = 0; w < 2; w++) {
                char which = w ? 'B' : 'A';
                int64_t shape[2];
                adapter_shape(plan, p, which, shape);
                s2_lora_tensor_name(l, (s2_proj)p, which, name, sizeof name);
                const s2_tensor *t = s2_st_find(f, name);
                s2_status st = check_tensor(path, t, name, 2, shape, NULL, err);
                if (st)
                    return st;
                if (A && B)
                    to_f32(t, w ? B[S2_CKPT_SLOT(l, p)] : A[S2_CKPT_SLOT(l, p)],
                           (size_t)(shape[0] * shape[1]));
                json_object_set_new(names, name, json_true());
            }
        }
    return S2_OK;
}

/* An adapter tensor in the file that the spec has no place for (another layer or target). */
static s2_status refuse_extra(const char *path, const s2_st_file *f, const s2_spec *spec,
                              json_t *names, s2_error *err)
{
    char tg[160];
    for (int i = 0; i < f->n; i++) {
        const char *n = f->t[i].name;
        if ((strstr(n, ".lora_A.") || strstr(n, ".lora_B.")) && !json_object_get(names, n))
            return s2_error_set(err, S2_ERR_INVALID,
                                "%s: unexpected adapter tensor '%s' (the spec has "
                                "model.num_layers = %d, lora.targets = %s)",
                                path, n, spec->model.num_layers,
                                targets_str(spec->lora.targets, tg, sizeof tg));
    }
    return S2_OK;
}

static s2_status load_adapter_config(const char *path, const s2_spec *spec,
                                     const s2_lora_plan *plan, s2_error *err)
{
    json_t *root;
    s2_status st = load_json_object(path, &root, err);
    if (st)
        return st;
    st = check_adapter_config(path, root, spec, plan, err);
    json_decref(root);
    return st;
}

/* A and B NULL: the file's header alone is read and checked. */
static s2_status load_adapter_tensors(const char *path, const s2_spec *spec,
                                      const s2_lora_plan *plan, float *const *A, float *const *B,
                                      s2_error *err)
{
    s2_st_file f;
    s2_status st = A && B ? s2_st_read(path, &f, err) : s2_st_read_header(path, &f, err);
    if (st)
        return st;
    json_t *names = json_object();
    if (!names) {
        st = s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", path);
        goto close_file;
    }
    st = read_adapter_tensors(path, &f, spec, plan, A, B, names, err);
    if (!st)
        st = refuse_extra(path, &f, spec, names, err);
    json_decref(names);
close_file:
    s2_st_close(&f);
    return st;
}

s2_status s2_ckpt_load_adapter(const char *dir, const s2_spec *spec, float *const *lora_A,
                               float *const *lora_B, s2_error *err)
{
    s2_lora_plan plan;
    s2_plan_lora(spec, &plan);
    s2_status st = check_slots(dir, spec, &plan, (const void *const *)lora_A,
                               (const void *const *)lora_B, err);
    if (st)
        return st;
    char *st_path = join(dir, ADAPTER_ST), *cfg_path = join(dir, ADAPTER_CONFIG);
    if (!st_path || !cfg_path) {
        st = s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", dir);
        goto free_paths;
    }
    st = load_adapter_config(cfg_path, spec, &plan, err);
    if (!st)
        st = load_adapter_tensors(st_path, spec, &plan, lora_A, lora_B, err);
free_paths:
    free(st_path);
    free(cfg_path);
    return st;
}

s2_status s2_ckpt_check_adapter(const char *dir, const s2_spec *spec, s2_error *err)
{
    s2_lora_plan plan;
    s2_plan_lora(spec, &plan);
    char *st_path = join(dir, ADAPTER_ST), *cfg_path = join(dir, ADAPTER_CONFIG);
    s2_status st = !st_path || !cfg_path
                       ? s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", dir)
                       : load_adapter_config(cfg_path, spec, &plan, err);
    if (!st)
        st = load_adapter_tensors(st_path, spec, &plan, NULL, NULL, err);
    free(st_path);
    free(cfg_path);
    return st;
}

/* ------------------------------------------------------------------------------------------ */
/* Trainable whole tensors                                                                    */
/* ------------------------------------------------------------------------------------------ */

static int is_trained(const s2_spec *spec, const char *name)
{
    unsigned tr = spec->lora.trainable;
    int embed = strcmp(name, "model.embed_tokens.weight") == 0;
    int norm = strstr(name, "layernorm.weight") || strcmp(name, "model.norm.weight") == 0;
    int head = strcmp(name, "lm_head.weight") == 0;
    /* A tied head is the embedding: training the head trains that one tensor. */
    if (embed && spec->model.tie_word_embeddings && (tr & S2_TRAIN_HEAD))
        return 1;
    return (embed && (tr & S2_TRAIN_EMBED)) || (norm && (tr & S2_TRAIN_NORM)) ||
           (head && (tr & S2_TRAIN_HEAD));
}

s2_status s2_ckpt_trainable_params(const s2_spec *spec, s2_ckpt_param **out, int *n,
                                   s2_error *err)
{
    *out = NULL;
    *n = 0;
    s2_ckpt_param *all;
    int n_all;
    s2_status st = model_params(spec, &all, &n_all, err);
    if (st)
        return st;
    int k = 0;
    for (int i = 0; i < n_all; i++)
        if (is_trained(spec, all[i].name))
            all[k++] = all[i];
    if (k == 0) {
        free(all);
        return S2_OK;
    }
    *out = all;
    *n = k;
    return S2_OK;
}

s2_status s2_ckpt_save_trainable(const char *path, s2_st_dtype dtype, int n,
                                 const s2_ckpt_param *params, const float *const *data,
                                 s2_error *err)
{
    if (!is_float_dtype(dtype))
        return s2_error_set(err, S2_ERR_INVALID, "%s: dtype %s; expected F32, BF16 or F16", path,
                            s2_st_dtype_name(dtype));
    if (n < 0 || (n > 0 && (!params || !data)))
        return s2_error_set(err, S2_ERR_INVALID, "%s: bad tensor list", path);
    for (int i = 0; i < n; i++)
        if (!data[i] || params[i].ndim < 1 || params[i].ndim > 2)
            return s2_error_set(err, S2_ERR_INVALID, "%s: tensor '%s': %s", path, params[i].name,
                                data[i] ? "ndim must be 1 or 2" : "no data");
    s2_tensor *t = calloc((size_t)(n ? n : 1), sizeof *t);
    if (!t)
        return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", path);
    s2_status st = S2_OK;
    int k = 0;
    while (!st && k < n) {
        st = make_tensor(&t[k], params[k].name, dtype, params[k].ndim, params[k].shape, data[k],
                         err);
        k++;
    }
    if (!st)
        st = s2_st_write(path, t, n, format_key, format_pt, 1, err);
    free_tensors(t, k);
    return st;
}

s2_status s2_ckpt_load_trainable(const char *path, int n, const s2_ckpt_param *params,
                                 float *const *data, s2_error *err)
{
    for (int i = 0; i < n; i++)
        if (!data || !data[i])
            return s2_error_set(err, S2_ERR_INVALID, "%s: tensor '%s': no buffer", path,
                                params[i].name);
    s2_st_file f;
    s2_status st = s2_st_read(path, &f, err);
    if (st)
        return st;
    for (int i = 0; !st && i < n; i++) {
        const s2_tensor *t = s2_st_find(&f, params[i].name);
        st = check_tensor(path, t, params[i].name, params[i].ndim, params[i].shape, NULL, err);
        if (!st)
            to_f32(t, data[i], (size_t)s2_tensor_numel(t));
    }
    s2_st_close(&f);
    return st;
}

s2_status s2_ckpt_check_trainable(const char *path, const s2_spec *spec, s2_error *err)
{
    s2_ckpt_param *ps;
    int n;
    s2_status st = s2_ckpt_trainable_params(spec, &ps, &n, err);
    if (st)
        return st;
    s2_st_file f;
    st = s2_st_read_header(path, &f, err);
    for (int i = 0; !st && i < n; i++)
        st = check_tensor(path, s2_st_find(&f, ps[i].name), ps[i].name, ps[i].ndim, ps[i].shape,
                          NULL, err);
    s2_st_close(&f); /* zeroed when the read failed */
    free(ps);
    return st;
}

/* ---- a fresh checkpoint from a spec ------------------------------------------------------------ */

/* Standard normal by Box-Muller (one draw per two uniforms; simple, and the init is not hot). */
static double init_normal(uint64_t *s)
{
    const double u1 = ((double)(s2_splitmix64(s) >> 11) + 0.5) * 0x1.0p-53;
    const double u2 = (double)(s2_splitmix64(s) >> 11) * 0x1.0p-53;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

s2_status s2_ckpt_init_random(const char *dir, const s2_spec *spec, uint64_t seed, s2_error *err)
{
    return s2_ckpt_init_random_progress(dir, spec, seed, NULL, NULL, err);
}

/* The weights are one stream: the i-th random value of the checkpoint (tensors in file order,
 * norms drawing none) is 0.02 x init_normal of the splitmix64 state seed skipped 2i draws (a
 * value takes two). So a chunk of a tensor starts its own state there, and the pool fills the
 * chunks in parallel with the bytes of one thread's sequential walk whatever the thread count. */
#define INIT_CHUNK ((size_t)1 << 16) /* values a chunk */

typedef struct {
    s2_st_dtype dt;
    uint16_t *dst;
    size_t n;        /* values of the tensor */
    uint64_t state0; /* the state before the tensor's first value */
    float *scratch;  /* INIT_CHUNK floats per worker */
} init_fill;

static s2_status init_fill_chunk(void *arg, int item, int worker, s2_error *err)
{
    (void)err;
    const init_fill *j = arg;
    const size_t begin = (size_t)item * INIT_CHUNK;
    const size_t len = j->n - begin < INIT_CHUNK ? j->n - begin : INIT_CHUNK;
    float *f = j->scratch + (size_t)worker * INIT_CHUNK;
    uint64_t rng = s2_splitmix64_skip(j->state0, 2 * (uint64_t)begin);
    for (size_t i = 0; i < len; i++)
        f[i] = (float)(0.02 * init_normal(&rng));
    s2_f32_to_half(j->dt, f, j->dst + begin, len);
    return S2_OK;
}

s2_status s2_ckpt_init_random_progress(const char *dir, const s2_spec *spec, uint64_t seed,
                                       s2_progress_fn progress, void *progress_ctx,
                                       s2_error *err)
{
    const s2_model *md = &spec->model;
    s2_status st = s2_mkdir_p(dir, err);
    if (st)
        return st;
    s2_lora_plan lp;
    s2_plan_lora(spec, &lp);
    const int L = md->num_layers, max_t = L * (S2_PROJ_COUNT + 2) + 3;
    s2_tensor *t = calloc((size_t)max_t, sizeof *t);
    if (!t)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    const s2_st_dtype dt = spec->dtype == S2_DTYPE_BF16 ? S2_ST_BF16 : S2_ST_F16;
    uint64_t rng = seed; /* the state before the next tensor's first value */
    int width = 0;
    st = s2_pool_width(INT_MAX, 0, &width, err);
    float *scratch = st ? NULL : malloc((size_t)width * INIT_CHUNK * sizeof *scratch);
    if (!st && !scratch)
        st = s2_error_set(err, S2_ERR_NOMEM, "out of memory initialising the weights");
    int n = 0;
    uint64_t done = 0, total = 0; /* bytes of the tensors, for the progress */
    if (progress) {
        s2_ckpt_param *ps = NULL;
        int np = 0;
        if (model_params(spec, &ps, &np, NULL) == S2_OK)
            for (int i = 0; i < np; i++)
                total += 2 * (uint64_t)ps[i].shape[0] * (uint64_t)(ps[i].ndim == 2 ? ps[i].shape[1] : 1);
        free(ps);
    }
    /* name, rows, cols (0: a norm of `rows` ones) */
    for (int k = -1; k <= L * (S2_PROJ_COUNT + 2) + 1 && !st; k++) {
        char name[128];
        int64_t rows, cols;
        if (k == -1) {
            snprintf(name, sizeof name, "model.embed_tokens.weight");
            rows = md->vocab_size, cols = md->hidden_size;
        } else if (k < L * (S2_PROJ_COUNT + 2)) {
            const int l = k / (S2_PROJ_COUNT + 2), j = k % (S2_PROJ_COUNT + 2);
            if (j < S2_PROJ_COUNT) {
                snprintf(name, sizeof name, "model.layers.%d.%s.%s.weight", l,
                         s2_proj_module((s2_proj)j), s2_proj_name((s2_proj)j));
                rows = lp.lin[j].out, cols = lp.lin[j].in;
            } else {
                snprintf(name, sizeof name, "model.layers.%d.%s.weight", l,
                         j == S2_PROJ_COUNT ? "input_layernorm" : "post_attention_layernorm");
                rows = md->hidden_size, cols = 0;
            }
        } else if (k == L * (S2_PROJ_COUNT + 2)) {
            snprintf(name, sizeof name, "model.norm.weight");
            rows = md->hidden_size, cols = 0;
        } else {
            if (md->tie_word_embeddings)
                continue;
            snprintf(name, sizeof name, "lm_head.weight");
            rows = md->vocab_size, cols = md->hidden_size;
        }
        s2_tensor *x = &t[n++];
        const size_t ne = (size_t)rows * (size_t)(cols ? cols : 1);
        x->name = strdup(name);
        x->dtype = dt;
        x->ndim = cols ? 2 : 1;
        x->shape[0] = rows;
        x->shape[1] = cols;
        x->nbytes = ne * 2;
        x->data = malloc(x->nbytes);
        if (!x->name || !x->data) {
            st = s2_error_set(err, S2_ERR_NOMEM, "out of memory initialising %s", name);
            break;
        }
        if (cols) {
            init_fill j = {dt, x->data, ne, rng, scratch};
            const size_t chunks = (ne + INIT_CHUNK - 1) / INIT_CHUNK;
            if (chunks > INT_MAX) {
                st = s2_error_set(err, S2_ERR_INVALID, "%s: %zu values, too many to initialise",
                                  name, ne);
                break;
            }
            st = s2_pool_for((int)chunks, 0, init_fill_chunk, &j, err);
            if (st)
                break;
            rng = s2_splitmix64_skip(rng, 2 * (uint64_t)ne);
        } else {
            const float one = 1.0f;
            uint16_t h, *d = x->data;
            s2_f32_to_half(dt, &one, &h, 1);
            for (size_t i = 0; i < ne; i++)
                d[i] = h;
        }
        done += x->nbytes;
        if (progress)
            progress(progress_ctx, "initialising the weights", done, done > total ? done : total);
    }
    free(scratch);
    char path[PATH_MAX];
    static const char *mk[] = {"format"}, *mv[] = {"pt"};
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (!st)
        st = s2_st_write(path, t, n, mk, mv, 1, err);
    for (int i = 0; i < n; i++) {
        free(t[i].name);
        free(t[i].data);
    }
    free(t);
    if (st)
        return st;
    json_t *c = json_pack(
        "{s:[s], s:s, s:i, s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:b, s:s, s:f,"
        " s:b, s:i, s:i}",
        "architectures", "LlamaForCausalLM", "model_type", "llama", "hidden_size",
        md->hidden_size, "hidden_act", "silu", "intermediate_size", md->intermediate_size,
        "max_position_embeddings", md->max_position_embeddings, "num_attention_heads",
        md->num_heads, "num_hidden_layers", md->num_layers, "num_key_value_heads",
        md->num_kv_heads, "head_dim", md->head_dim, "vocab_size", md->vocab_size,
        "rms_norm_eps", md->rms_norm_eps, "rope_theta", md->rope_theta, "tie_word_embeddings",
        md->tie_word_embeddings, "torch_dtype", spec->dtype == S2_DTYPE_BF16 ? "bfloat16" : "float16",
        "initializer_range", 0.02, "attention_bias", 0, "bos_token_id", 1, "eos_token_id", 2);
    if (c && spec->rope_factor > 1)
        json_object_set_new(c, "rope_scaling", json_pack("{s:s, s:f}", "type", "linear", "factor",
                                                         (double)spec->rope_factor));
    else if (c)
        json_object_set_new(c, "rope_scaling", json_null());
    char *text = c ? json_dumps(c, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(c);
    if (!text)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory writing config.json");
    snprintf(path, sizeof path, "%s/config.json", dir);
    st = s2_write_file_atomic(path, text, strlen(text), err);
    free(text);
    return st;
}

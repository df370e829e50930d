/*
 * test_ckpt.c — the trainer's checkpoint formats (runtime/core/train_io.h): Hugging Face LLaMA
 * checkpoints in (one file or shards with an index), checked against a spec; PEFT adapters and
 * trainable tensors out and back.
 *
 * Each test gets its own directory under /tmp and writes a tiny random checkpoint there with
 * s2_st_write and jansson (2 layers, hidden 64, 4 heads, 2 kv heads, intermediate 96, vocab
 * 50). head_dim is 64, not hidden / heads = 16: the spec loader accepts only the head sizes the
 * attention kernels have (64, 96, 128, 256), and config.json says head_dim explicitly, as
 * LLaMA-3 style configs do. Error tests assert the phrase a user needs plus the file and
 * tensor the message must name.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>

#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/core/train_io.h"

static char dir[64];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/s2_test_ckpt.XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

static void remove_dir(void) { nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS); }

TestSuite(ckpt, .init = make_dir, .fini = remove_dir);
TestSuite(adapter, .init = make_dir, .fini = remove_dir);

#define assert_has(msg, phrase)                                                                \
    cr_assert((msg) && strstr((msg), (phrase)), "message lacks \"%s\": %s", (phrase),          \
              (msg) ? (msg) : "(null)")

static char *in_dir(const char *name)
{
    char *p;
    cr_assert_geq(asprintf(&p, "%s/%s", dir, name), 0);
    return p;
}

/* ---- the spec ---------------------------------------------------------------------------- */

static const char *spec_yaml =
    "name: tiny-ckpt\n"
    "dtype: bf16\n"
    "context_length: 512\n"
    "model:\n"
    "  hidden_size: 64\n"
    "  intermediate_size: 96\n"
    "  num_layers: 2\n"
    "  num_heads: 4\n"
    "  num_kv_heads: 2\n"
    "  head_dim: 64\n"
    "  vocab_size: 50\n"
    "  rope_theta: 10000\n"
    "  max_position_embeddings: 128\n"
    "  rms_norm_eps: 1.0e-5\n"
    "  tie_word_embeddings: false\n"
    "lora:\n"
    "  rank: 4\n"
    "  alpha: 8\n"
    "  dropout: 0.05\n"
    "  targets: [q_proj, k_proj, v_proj, o_proj]\n"
    "  trainable: [embed, norm]\n";

/* The tiny spec with up to two --set overrides (NULL for none). */
static s2_spec load_spec(const char *set1, const char *set2)
{
    s2_spec s;
    s2_error err = {0};
    s2_spec_override ov[2] = {{set1}, {set2}};
    int n = set2 ? 2 : set1 ? 1 : 0;
    cr_assert_eq(s2_spec_load_string(spec_yaml, "tiny.yaml", ov, n, &s, &err), S2_OK, "%s",
                 err.msg);
    return s;
}

/* ---- a tiny Hugging Face checkpoint ------------------------------------------------------- */

static uint32_t rng = 12345;

static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return (float)((rng >> 8) * (1.0 / 16777216.0) * 2.0 - 1.0);
}

/* config.json as the tiny model's would read; tests edit it before writing. */
static json_t *base_config(int tie)
{
    json_t *c = json_pack(
        "{s:[s], s:s, s:b, s:b, s:i, s:s, s:i, s:f, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:n,"
        " s:f, s:b, s:s, s:s, s:b, s:i}",
        "architectures", "LlamaForCausalLM", "model_type", "llama", "attention_bias", 0,
        "mlp_bias", 0, "hidden_size", 64, "hidden_act", "silu", "intermediate_size", 96,
        "initializer_range", 0.02, "max_position_embeddings", 128, "num_attention_heads", 4,
        "num_hidden_layers", 2, "num_key_value_heads", 2, "head_dim", 64, "vocab_size", 50,
        "rms_norm_eps", 1e-05, "rope_scaling", "rope_theta", 10000.0, "tie_word_embeddings",
        tie, "torch_dtype", "bfloat16", "transformers_version", "4.44.2", "use_cache", 1,
        "pretraining_tp", 1);
    cr_assert_not_null(c);
    return c;
}

static void write_text(const char *name, const char *text)
{
    char *p = in_dir(name);
    FILE *f = fopen(p, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(text, 1, strlen(text), f), strlen(text));
    fclose(f);
    free(p);
}

static void write_json(const char *name, json_t *j)
{
    char *p = in_dir(name);
    cr_assert_eq(json_dump_file(j, p, JSON_INDENT(2)), 0);
    free(p);
    json_decref(j);
}

#define MAX_T 32

typedef struct model {
    int n;
    s2_tensor t[MAX_T];
} model;

static void add(model *m, s2_st_dtype dt, int ndim, int64_t d0, int64_t d1, const char *fmt,
                int layer)
{
    cr_assert_lt(m->n, MAX_T);
    s2_tensor *t = &m->t[m->n++];
    cr_assert_geq(asprintf(&t->name, fmt, layer), 0);
    t->dtype = dt;
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = d1;
    size_t n = (size_t)(ndim == 2 ? d0 * d1 : d0);
    t->nbytes = n * s2_st_dtype_size(dt);
    t->data = malloc(t->nbytes);
    cr_assert_not_null(t->data);
    uint16_t *h = t->data;
    for (size_t i = 0; dt == S2_ST_BF16 && i < n; i++)
        h[i] = s2_f32_to_bf16(frand());
    if (dt != S2_ST_BF16)
        memset(t->data, 0, t->nbytes);
}

/* The tiny LLaMA's tensors in bf16, in HF's order; lm_head unless tied. */
static model tiny_model(int tie)
{
    model m = {0};
    const s2_st_dtype b = S2_ST_BF16;
    add(&m, b, 2, 50, 64, "model.embed_tokens.weight%.0d", 0);
    for (int l = 0; l < 2; l++) {
        add(&m, b, 1, 64, 0, "model.layers.%d.input_layernorm.weight", l);
        add(&m, b, 2, 256, 64, "model.layers.%d.self_attn.q_proj.weight", l);
        add(&m, b, 2, 128, 64, "model.layers.%d.self_attn.k_proj.weight", l);
        add(&m, b, 2, 128, 64, "model.layers.%d.self_attn.v_proj.weight", l);
        add(&m, b, 2, 64, 256, "model.layers.%d.self_attn.o_proj.weight", l);
        add(&m, b, 1, 64, 0, "model.layers.%d.post_attention_layernorm.weight", l);
        add(&m, b, 2, 96, 64, "model.layers.%d.mlp.gate_proj.weight", l);
        add(&m, b, 2, 96, 64, "model.layers.%d.mlp.up_proj.weight", l);
        add(&m, b, 2, 64, 96, "model.layers.%d.mlp.down_proj.weight", l);
    }
    add(&m, b, 1, 64, 0, "model.norm.weight%.0d", 0);
    if (!tie)
        add(&m, b, 2, 50, 64, "lm_head.weight%.0d", 0);
    return m;
}

static s2_tensor *find(model *m, const char *name)
{
    for (int i = 0; i < m->n; i++)
        if (strcmp(m->t[i].name, name) == 0)
            return &m->t[i];
    cr_assert_fail("no tensor %s in the test model", name);
    return NULL;
}

static void drop(model *m, const char *name)
{
    s2_tensor *t = find(m, name);
    free(t->name);
    free(t->data);
    *t = m->t[--m->n];
}

static void free_model(model *m)
{
    for (int i = 0; i < m->n; i++) {
        free(m->t[i].name);
        free(m->t[i].data);
    }
    m->n = 0;
}

static const char *meta_k[] = {"format"}, *meta_v[] = {"pt"};

static void write_st(const char *name, const s2_tensor *t, int n)
{
    char *p = in_dir(name);
    s2_error err = {0};
    cr_assert_eq(s2_st_write(p, t, n, meta_k, meta_v, 1, &err), S2_OK, "%s", err.msg);
    free(p);
}

#define SHARD1 "model-00001-of-00002.safetensors"
#define SHARD2 "model-00002-of-00002.safetensors"

/* Layer 0 and the embeddings in shard 1, the rest in shard 2, as transformers splits. */
static int split_at(const model *m)
{
    for (int i = 0; i < m->n; i++)
        if (strncmp(m->t[i].name, "model.layers.1.", 15) == 0)
            return i;
    return m->n / 2;
}

static json_t *index_json(const model *m)
{
    json_t *wm = json_object();
    int k = split_at(m);
    size_t total = 0;
    for (int i = 0; i < m->n; i++) {
        json_object_set_new(wm, m->t[i].name, json_string(i < k ? SHARD1 : SHARD2));
        total += m->t[i].nbytes;
    }
    json_t *idx = json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)total,
                            "weight_map", wm);
    cr_assert_not_null(idx);
    return idx;
}

/* Writes the weights as model.safetensors (shards = 0) or two shards and their index. */
static void write_weights(model *m, int shards)
{
    if (!shards) {
        write_st("model.safetensors", m->t, m->n);
        return;
    }
    int k = split_at(m);
    write_st(SHARD1, m->t, k);
    write_st(SHARD2, m->t + k, m->n - k);
    write_json("model.safetensors.index.json", index_json(m));
}

/* A complete, valid checkpoint. */
static void write_ckpt(int tie, int shards)
{
    model m = tiny_model(tie);
    write_weights(&m, shards);
    write_json("config.json", base_config(tie));
    free_model(&m);
}

static s2_ckpt *open_ok(void)
{
    s2_ckpt *ck = NULL;
    s2_error err = {0};
    cr_assert_eq(s2_ckpt_open(dir, &ck, &err), S2_OK, "%s", err.msg);
    cr_assert_not_null(ck);
    return ck;
}

/* Opening fails with status want, and the message has every phrase. */
static void expect_open_error(s2_status want, const char *const *phrases)
{
    s2_ckpt *ck = (s2_ckpt *)1;
    s2_error err = {0};
    s2_status st = s2_ckpt_open(dir, &ck, &err);
    cr_assert_eq(st, want, "status %d, message: %s", st, err.msg ? err.msg : "(null)");
    cr_assert_null(ck);
    for (const char *const *p = phrases; *p; p++)
        assert_has(err.msg, *p);
    s2_error_clear(&err);
}
#define EXPECT_OPEN_ERROR(st, ...) expect_open_error(st, (const char *const[]){__VA_ARGS__, NULL})

/* Opening works, checking against spec fails with status want and every phrase. */
static void expect_check_error(const s2_spec *spec, s2_status want, const char *const *phrases)
{
    s2_ckpt *ck = open_ok();
    s2_error err = {0};
    s2_status st = s2_ckpt_check(ck, spec, &err);
    cr_assert_eq(st, want, "status %d, message: %s", st, err.msg ? err.msg : "(null)");
    for (const char *const *p = phrases; *p; p++)
        assert_has(err.msg, *p);
    s2_error_clear(&err);
    s2_ckpt_close(ck);
}
#define EXPECT_CHECK_ERROR(spec, st, ...)                                                      \
    expect_check_error(spec, st, (const char *const[]){__VA_ARGS__, NULL})

static void expect_check_ok(const s2_spec *spec)
{
    s2_ckpt *ck = open_ok();
    s2_error err = {0};
    cr_assert_eq(s2_ckpt_check(ck, spec, &err), S2_OK, "%s", err.msg);
    s2_ckpt_close(ck);
}

/* ---- opening and checking ------------------------------------------------------------------ */

/* Everything a trainer reads from a good checkpoint, one file or shards. */
static void open_and_check(int shards)
{
    model m = tiny_model(0);
    write_weights(&m, shards);
    write_json("config.json", base_config(0));
    s2_ckpt *ck = open_ok();
    s2_spec spec = load_spec(NULL, NULL);
    s2_error err = {0};
    cr_assert_eq(s2_ckpt_check(ck, &spec, &err), S2_OK, "%s", err.msg);

    const s2_hf_config *c = s2_ckpt_config(ck);
    cr_expect_eq(c->hidden_size, 64);
    cr_expect_eq(c->num_hidden_layers, 2);
    cr_expect_eq(c->num_key_value_heads, 2);
    cr_expect_eq(c->head_dim, 64);
    cr_expect_eq(c->tie_word_embeddings, 0);
    cr_expect_float_eq(c->rms_norm_eps, 1e-5, 1e-12);
    cr_expect_float_eq(c->rope_theta, 10000.0, 1e-9);
    cr_expect_eq(c->rope_scaling_factor, 0.0);
    cr_expect_str_eq(c->torch_dtype, "bfloat16");

    for (int i = 0; i < m.n; i++) {
        const s2_tensor *t = s2_ckpt_tensor(ck, m.t[i].name);
        cr_assert_not_null(t, "%s", m.t[i].name);
        cr_expect_eq(t->dtype, S2_ST_BF16);
        cr_expect_eq(t->ndim, m.t[i].ndim);
        cr_expect_eq(t->shape[0], m.t[i].shape[0]);
        cr_expect_eq(memcmp(t->data, m.t[i].data, m.t[i].nbytes), 0, "%s", m.t[i].name);
    }
    cr_expect_null(s2_ckpt_tensor(ck, "model.layers.2.input_layernorm.weight"));
    cr_expect_null(s2_ckpt_tensor(ck, "lm_head"));

    const char *name = "model.layers.1.self_attn.k_proj.weight";
    const char *file = shards ? SHARD2 : "model.safetensors";
    assert_has(s2_ckpt_tensor_path(ck, name), file);
    assert_has(s2_ckpt_tensor_path(ck, "model.embed_tokens.weight"),
               shards ? SHARD1 : "model.safetensors");

    float k[128 * 64];
    cr_assert_eq(s2_ckpt_read_f32(ck, name, k, 128 * 64, &err), S2_OK, "%s", err.msg);
    const uint16_t *h = find(&m, name)->data;
    for (int i = 0; i < 128 * 64; i++)
        cr_assert_eq(k[i], s2_bf16_to_f32(h[i]), "element %d", i);
    cr_expect_eq(s2_ckpt_read_f32(ck, name, k, 100, &err), S2_ERR_INVALID);
    assert_has(err.msg, "8192 elements");
    s2_error_clear(&err);
    s2_ckpt_close(ck);
    free_model(&m);
}

Test(ckpt, one_file_opens_and_checks) { open_and_check(0); }

Test(ckpt, shards_open_and_check) { open_and_check(2); }

Test(ckpt, close_is_null_safe) { s2_ckpt_close(NULL); }

/* s2_ckpt_open_headers: config.json and the safetensors headers, no tensor data; what
 * s2_ckpt_check needs is all there, and the same problems are found as by a whole open. */
static void headers_only(int shards)
{
    write_ckpt(0, shards);
    s2_ckpt *ck = NULL;
    s2_error err = {0};
    cr_assert_eq(s2_ckpt_open_headers(dir, &ck, &err), S2_OK, "%s", err.msg);
    s2_spec spec = load_spec(NULL, NULL);
    cr_assert_eq(s2_ckpt_check(ck, &spec, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(s2_ckpt_config(ck)->hidden_size, 64);
    const char *name = "model.layers.1.self_attn.k_proj.weight";
    const s2_tensor *t = s2_ckpt_tensor(ck, name);
    cr_assert_not_null(t);
    cr_expect_eq(t->shape[0], 128);
    cr_expect_eq(t->dtype, S2_ST_BF16);
    cr_expect_null(t->data, "no tensor data is read");
    float k[128 * 64];
    cr_assert_eq(s2_ckpt_read_f32(ck, name, k, 128 * 64, &err), S2_ERR_INVALID);
    assert_has(err.msg, "opened for checking only");
    s2_spec kv4 = load_spec("model.num_kv_heads=4", NULL);
    cr_assert_eq(s2_ckpt_check(ck, &kv4, &err), S2_ERR_SPEC);
    assert_has(err.msg, "num_key_value_heads = 2, spec model.num_kv_heads = 4");
    s2_ckpt_close(ck);
    /* A shard cut short: its header's offsets run past its end. */
    char *p = in_dir(shards ? SHARD2 : "model.safetensors");
    struct stat sb;
    cr_assert_eq(stat(p, &sb), 0);
    cr_assert_eq(truncate(p, sb.st_size - 1), 0);
    cr_assert_eq(s2_ckpt_open_headers(dir, &ck, &err), S2_ERR_PARSE);
    cr_assert_null(ck);
    assert_has(err.msg, p);
    assert_has(err.msg, "run past the end");
    s2_error_clear(&err);
    free(p);
}

Test(ckpt, headers_only_one_file) { headers_only(0); }

Test(ckpt, headers_only_shards) { headers_only(2); }

Test(ckpt, missing_config)
{
    model m = tiny_model(0);
    write_weights(&m, 0);
    free_model(&m);
    EXPECT_OPEN_ERROR(S2_ERR_IO, "config.json", "cannot open", dir);
}

Test(ckpt, config_not_json)
{
    write_ckpt(0, 0);
    write_text("config.json", "{\"hidden_size\": 64,\n  oops }");
    EXPECT_OPEN_ERROR(S2_ERR_PARSE, "config.json", "not valid JSON", "line 2");
}

Test(ckpt, config_not_an_object)
{
    write_ckpt(0, 0);
    write_text("config.json", "[1, 2]");
    EXPECT_OPEN_ERROR(S2_ERR_PARSE, "config.json", "expected a JSON object");
}

Test(ckpt, config_missing_key)
{
    write_ckpt(0, 0);
    json_t *c = base_config(0);
    json_object_del(c, "intermediate_size");
    write_json("config.json", c);
    EXPECT_OPEN_ERROR(S2_ERR_PARSE, "config.json", "missing required key \"intermediate_size\"");
}

Test(ckpt, config_wrong_type)
{
    write_ckpt(0, 0);
    json_t *c = base_config(0);
    json_object_set_new(c, "hidden_size", json_string("64"));
    write_json("config.json", c);
    EXPECT_OPEN_ERROR(S2_ERR_PARSE, "config.json", "\"hidden_size\" is the string \"64\"",
                      "positive integer");

    c = base_config(0);
    json_object_set_new(c, "tie_word_embeddings", json_integer(1));
    write_json("config.json", c);
    EXPECT_OPEN_ERROR(S2_ERR_PARSE, "\"tie_word_embeddings\" is 1", "true or false");

    c = base_config(0);
    json_object_set_new(c, "rms_norm_eps", json_real(-1e-5));
    write_json("config.json", c);
    EXPECT_OPEN_ERROR(S2_ERR_PARSE, "\"rms_norm_eps\"", "positive number");
}

Test(ckpt, no_weights)
{
    write_json("config.json", base_config(0));
    EXPECT_OPEN_ERROR(S2_ERR_IO, "no model.safetensors or model.safetensors.index.json", dir);
}

Test(ckpt, index_not_json)
{
    write_ckpt(0, 2);
    write_text("model.safetensors.index.json", "{\"weight_map\": {");
    EXPECT_OPEN_ERROR(S2_ERR_PARSE, "model.safetensors.index.json", "not valid JSON");
}

Test(ckpt, index_without_weight_map)
{
    write_ckpt(0, 2);
    write_text("model.safetensors.index.json", "{\"metadata\": {}}");
    EXPECT_OPEN_ERROR(S2_ERR_PARSE, "model.safetensors.index.json", "\"weight_map\" is missing");
    write_text("model.safetensors.index.json", "{\"weight_map\": {\"a\": 3}}");
    EXPECT_OPEN_ERROR(S2_ERR_PARSE, "weight_map[\"a\"] is 3", "shard file name");
    write_text("model.safetensors.index.json", "{\"weight_map\": {\"a\": \"../x.safetensors\"}}");
    EXPECT_OPEN_ERROR(S2_ERR_PARSE, "\"../x.safetensors\"", "same directory");
}

Test(ckpt, index_names_missing_shard)
{
    model m = tiny_model(0);
    write_weights(&m, 2);
    json_t *idx = index_json(&m);
    json_object_set_new(json_object_get(idx, "weight_map"), "model.norm.weight",
                        json_string("model-00003-of-00003.safetensors"));
    write_json("model.safetensors.index.json", idx);
    write_json("config.json", base_config(0));
    free_model(&m);
    EXPECT_OPEN_ERROR(S2_ERR_IO, "model.safetensors.index.json",
                      "shard 'model-00003-of-00003.safetensors'",
                      "named for tensor 'model.norm.weight'", "cannot open");
}

Test(ckpt, index_tensor_absent_from_shard)
{
    model m = tiny_model(0);
    write_weights(&m, 2);
    json_t *idx = index_json(&m);
    json_object_set_new(json_object_get(idx, "weight_map"),
                        "model.layers.0.self_attn.rotary_emb.inv_freq", json_string(SHARD1));
    write_json("model.safetensors.index.json", idx);
    write_json("config.json", base_config(0));
    free_model(&m);
    EXPECT_OPEN_ERROR(S2_ERR_PARSE, "model.safetensors.index.json",
                      "tensor 'model.layers.0.self_attn.rotary_emb.inv_freq' is mapped to '" SHARD1
                      "'",
                      "has no such tensor");
}

Test(ckpt, truncated_shard)
{
    write_ckpt(0, 2);
    char *p = in_dir(SHARD2);
    struct stat sb;
    cr_assert_eq(stat(p, &sb), 0);
    cr_assert_eq(truncate(p, sb.st_size / 2), 0);
    EXPECT_OPEN_ERROR(S2_ERR_PARSE, p, "run past the end", "model.safetensors.index.json");
    free(p);
}

Test(ckpt, truncated_single_file)
{
    write_ckpt(0, 0);
    char *p = in_dir("model.safetensors");
    cr_assert_eq(truncate(p, 100), 0);
    EXPECT_OPEN_ERROR(S2_ERR_PARSE, p, "truncated file?");
    free(p);
}

Test(ckpt, missing_tensor)
{
    model m = tiny_model(0);
    drop(&m, "model.layers.1.mlp.down_proj.weight");
    write_weights(&m, 0);
    write_json("config.json", base_config(0));
    free_model(&m);
    s2_spec spec = load_spec(NULL, NULL);
    EXPECT_CHECK_ERROR(&spec, S2_ERR_INVALID, "model.safetensors",
                       "missing tensor 'model.layers.1.mlp.down_proj.weight'",
                       "expected shape [64, 96]");
}

Test(ckpt, missing_tensor_in_index)
{
    model m = tiny_model(0);
    drop(&m, "model.layers.0.post_attention_layernorm.weight");
    write_weights(&m, 2);
    write_json("config.json", base_config(0));
    free_model(&m);
    s2_spec spec = load_spec(NULL, NULL);
    EXPECT_CHECK_ERROR(&spec, S2_ERR_INVALID, "model.safetensors.index.json",
                       "missing tensor 'model.layers.0.post_attention_layernorm.weight'",
                       "expected shape [64]");
}

Test(ckpt, wrong_shape_names_the_shard)
{
    model m = tiny_model(0);
    s2_tensor *k = find(&m, "model.layers.1.self_attn.k_proj.weight");
    k->shape[0] = 64; /* as if every head had its own kv head... */
    k->shape[1] = 128; /* ...with the same bytes, transposed: the shape alone must catch it */
    write_weights(&m, 2);
    write_json("config.json", base_config(0));
    free_model(&m);
    s2_spec spec = load_spec(NULL, NULL);
    EXPECT_CHECK_ERROR(&spec, S2_ERR_INVALID, SHARD2,
                       "tensor 'model.layers.1.self_attn.k_proj.weight' has shape [64, 128], "
                       "expected [128, 64]");
}

Test(ckpt, wrong_rank_of_norm)
{
    model m = tiny_model(0);
    s2_tensor *n = find(&m, "model.norm.weight");
    n->ndim = 2;
    n->shape[0] = 8;
    n->shape[1] = 8;
    write_weights(&m, 0);
    write_json("config.json", base_config(0));
    free_model(&m);
    s2_spec spec = load_spec(NULL, NULL);
    EXPECT_CHECK_ERROR(&spec, S2_ERR_INVALID, "model.safetensors",
                       "tensor 'model.norm.weight' has shape [8, 8], expected [64]");
}

Test(ckpt, integer_dtype_refused)
{
    model m = tiny_model(0);
    drop(&m, "model.layers.0.input_layernorm.weight");
    add(&m, S2_ST_I32, 1, 64, 0, "model.layers.%d.input_layernorm.weight", 0);
    write_weights(&m, 0);
    write_json("config.json", base_config(0));
    free_model(&m);
    s2_spec spec = load_spec(NULL, NULL);
    EXPECT_CHECK_ERROR(&spec, S2_ERR_INVALID, "model.safetensors",
                       "tensor 'model.layers.0.input_layernorm.weight' has dtype I32",
                       "float dtype (BF16, F16 or F32)");
}

Test(ckpt, config_mismatch_names_both)
{
    write_ckpt(0, 0);
    s2_spec spec = load_spec("model.num_kv_heads=4", NULL);
    EXPECT_CHECK_ERROR(&spec, S2_ERR_SPEC,
                       "config.json: num_key_value_heads = 2, spec model.num_kv_heads = 4",
                       "--set");
    spec = load_spec("model.num_layers=3", NULL);
    EXPECT_CHECK_ERROR(&spec, S2_ERR_SPEC,
                       "config.json: num_hidden_layers = 2, spec model.num_layers = 3");
    spec = load_spec("model.rms_norm_eps=1e-6", NULL);
    EXPECT_CHECK_ERROR(&spec, S2_ERR_SPEC,
                       "config.json: rms_norm_eps = 1e-05, spec model.rms_norm_eps = 1e-06");
    spec = load_spec("model.rope_theta=500000", NULL);
    EXPECT_CHECK_ERROR(&spec, S2_ERR_SPEC,
                       "config.json: rope_theta = 10000, spec model.rope_theta = 500000");
    spec = load_spec("model.max_position_embeddings=256", NULL);
    EXPECT_CHECK_ERROR(&spec, S2_ERR_SPEC, "max_position_embeddings = 128, spec "
                                           "model.max_position_embeddings = 256");
}

Test(ckpt, config_mismatch_points_into_the_spec)
{
    write_ckpt(0, 0);
    s2_spec spec = load_spec(NULL, NULL);
    spec.model.vocab_size = 64; /* as if the file said so: its position is still line 11 */
    EXPECT_CHECK_ERROR(&spec, S2_ERR_SPEC, "vocab_size = 50, spec model.vocab_size = 64",
                       ":11:");
}

Test(ckpt, config_defaults)
{
    write_ckpt(0, 0);
    json_t *c = base_config(0);
    json_object_del(c, "num_key_value_heads");
    json_object_del(c, "rope_theta");
    json_object_del(c, "tie_word_embeddings");
    json_object_del(c, "rope_scaling");
    json_object_del(c, "torch_dtype");
    write_json("config.json", c);
    s2_ckpt *ck = open_ok();
    const s2_hf_config *h = s2_ckpt_config(ck);
    cr_expect_eq(h->num_key_value_heads, 4, "defaults to num_attention_heads");
    cr_expect_eq(h->rope_theta, 10000.0);
    cr_expect_eq(h->tie_word_embeddings, 0);
    cr_expect_eq(h->rope_scaling_factor, 0.0);
    cr_expect_str_eq(h->torch_dtype, "");
    s2_ckpt_close(ck);
    s2_spec spec = load_spec(NULL, NULL);
    EXPECT_CHECK_ERROR(&spec, S2_ERR_SPEC,
                       "config.json: num_key_value_heads = 4, spec model.num_kv_heads = 2");
}

Test(ckpt, head_dim_defaults_to_hidden_over_heads)
{
    write_ckpt(0, 0);
    json_t *c = base_config(0);
    json_object_del(c, "head_dim");
    json_object_del(c, "torch_dtype");
    json_object_set_new(c, "dtype", json_string("float16")); /* newer transformers' spelling */
    write_json("config.json", c);
    s2_ckpt *ck = open_ok();
    cr_expect_eq(s2_ckpt_config(ck)->head_dim, 16);
    cr_expect_str_eq(s2_ckpt_config(ck)->torch_dtype, "float16");
    s2_ckpt_close(ck);
    s2_spec spec = load_spec(NULL, NULL);
    EXPECT_CHECK_ERROR(&spec, S2_ERR_SPEC, "config.json: head_dim = 16, spec model.head_dim = 64");
}

static void write_rope_scaling(const char *json)
{
    json_t *c = base_config(0);
    json_error_t je;
    json_t *rs = json_loads(json, JSON_DECODE_ANY, &je);
    cr_assert_not_null(rs, "%s", je.text);
    json_object_set_new(c, "rope_scaling", rs);
    write_json("config.json", c);
}

Test(ckpt, rope_scaling_linear_both_spellings)
{
    write_ckpt(0, 0);
    s2_spec spec = load_spec(NULL, NULL); /* context 512 / max_position 128: rope_factor 4 */
    cr_assert_eq(spec.rope_factor, 4);
    const char *ok[] = {"{\"type\": \"linear\", \"factor\": 4.0}",
                        "{\"rope_type\": \"linear\", \"factor\": 4}",
                        "{\"type\": \"linear\", \"rope_type\": \"linear\", \"factor\": 4.0}"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        write_rope_scaling(ok[i]);
        s2_ckpt *ck = open_ok();
        cr_expect_eq(s2_ckpt_config(ck)->rope_scaling_factor, 4.0, "%s", ok[i]);
        s2_ckpt_close(ck);
        expect_check_ok(&spec);
    }
    write_rope_scaling("{\"rope_type\": \"default\"}");
    expect_check_ok(&spec);

    write_rope_scaling("{\"type\": \"linear\", \"factor\": 2.0}");
    EXPECT_CHECK_ERROR(&spec, S2_ERR_SPEC, "config.json: rope_scaling.factor = 2, spec "
                                           "rope_factor = 4");
}

/* A checkpoint extended already: its factor against the spec's is refused with the ways out
 * (the flag, or the context that keeps its factor); S2_ROPE_SPEC takes it, the spec's factor
 * then being the one the model runs with. */
Test(ckpt, rope_scaling_of_an_extended_checkpoint)
{
    write_ckpt(0, 0);
    s2_spec spec = load_spec(NULL, NULL); /* rope_factor 4 = 512 / 128 */
    write_rope_scaling("{\"type\": \"linear\", \"factor\": 2.0}");
    EXPECT_CHECK_ERROR(&spec, S2_ERR_SPEC, "rope_scaling.factor = 2, spec rope_factor = 4",
                       "pass --rope-scaling spec", "--set context_length=256");
    s2_ckpt *ck = open_ok();
    s2_error err = {0};
    cr_expect_eq(s2_ckpt_check_rope(ck, &spec, S2_ROPE_MATCH, &err), S2_ERR_SPEC);
    s2_error_clear(&err);
    cr_expect_eq(s2_ckpt_check_rope(ck, &spec, S2_ROPE_SPEC, &err), S2_OK, "%s", err.msg);
    s2_ckpt_close(ck);
    /* the context the message names keeps the checkpoint's factor */
    s2_spec keep = load_spec("context_length=256", NULL);
    cr_expect_eq(keep.rope_factor, 2);
    expect_check_ok(&keep);
    /* a factor no context gives: the message says so */
    write_rope_scaling("{\"type\": \"linear\", \"factor\": 2.5}");
    EXPECT_CHECK_ERROR(&spec, S2_ERR_SPEC, "no context_length (its factor 2.5 is not a whole "
                                           "number)", "--rope-scaling spec");
    /* SPEC still checks everything else */
    s2_spec other = load_spec("model.hidden_size=128", NULL);
    ck = open_ok();
    cr_expect_eq(s2_ckpt_check_rope(ck, &other, S2_ROPE_SPEC, &err), S2_ERR_SPEC);
    cr_expect(err.msg && strstr(err.msg, "hidden_size"), "%s", err.msg);
    s2_error_clear(&err);
    s2_ckpt_close(ck);
}

/* A model trained at the spec's factor says so in its config.json (train --mode full): the
 * base's config with the spec's rope scaling, everything else kept; read back, the checkpoint
 * passes the check against the spec. */
Test(ckpt, config_with_the_spec_rope)
{
    write_ckpt(0, 0);
    s2_spec spec = load_spec(NULL, NULL); /* factor 4 */
    json_t *base = base_config(0);
    char *text = json_dumps(base, 0), *out = NULL;
    json_decref(base);
    s2_error err = {0};
    cr_assert_eq(s2_ckpt_config_with_spec_rope(text, "base/config.json", &spec, &out, &err),
                 S2_OK, "%s", err.msg);
    json_t *c = json_loads(out, 0, NULL), *b = json_loads(text, 0, NULL);
    cr_assert(c && b);
    json_t *rs = json_object_get(c, "rope_scaling");
    cr_expect_str_eq(json_string_value(json_object_get(rs, "type")), "linear");
    cr_expect_eq(json_number_value(json_object_get(rs, "factor")), 4.0);
    json_object_del(c, "rope_scaling");
    json_object_del(b, "rope_scaling");
    cr_expect(json_equal(c, b), "nothing else changed");
    write_json("config.json", json_loads(out, 0, NULL));
    expect_check_ok(&spec);
    free(out);
    json_decref(c);
    /* factor 1: null; transformers 5's rope_parameters: its own keys */
    s2_spec one = load_spec("context_length=128", NULL);
    cr_assert_eq(one.rope_factor, 1);
    cr_assert_eq(s2_ckpt_config_with_spec_rope(text, "c", &one, &out, &err), S2_OK);
    c = json_loads(out, 0, NULL);
    cr_expect(json_is_null(json_object_get(c, "rope_scaling")), "%s", out);
    json_decref(c);
    free(out);
    json_object_del(b, "rope_scaling");
    json_object_set_new(b, "rope_parameters", json_pack("{s:s, s:f}", "rope_type", "default",
                                                        "rope_theta", 10000.0));
    free(text);
    text = json_dumps(b, 0);
    cr_assert_eq(s2_ckpt_config_with_spec_rope(text, "c", &spec, &out, &err), S2_OK);
    c = json_loads(out, 0, NULL);
    json_t *rp = json_object_get(c, "rope_parameters");
    cr_expect_str_eq(json_string_value(json_object_get(rp, "rope_type")), "linear");
    cr_expect_eq(json_number_value(json_object_get(rp, "factor")), 4.0);
    cr_expect_eq(json_number_value(json_object_get(rp, "rope_theta")), 10000.0);
    cr_expect(!json_object_get(c, "rope_scaling"));
    json_decref(c);
    json_decref(b);
    free(out);
    cr_expect_eq(s2_ckpt_config_with_spec_rope("[1]", "x/config.json", &spec, &out, &err),
                 S2_ERR_PARSE);
    cr_expect(err.msg && strstr(err.msg, "x/config.json"), "%s", err.msg);
    s2_error_clear(&err);
    free(text);
}

typedef struct progress_log {
    int calls;
    uint64_t last_done, last_total;
    int monotonic;
} progress_log;

static void log_progress(void *ctx, const char *what, uint64_t done, uint64_t total)
{
    progress_log *l = ctx;
    l->monotonic &= done >= l->last_done && done <= total;
    l->calls++;
    l->last_done = done;
    l->last_total = total;
    (void)what;
}

/* A load reports the bytes of the files it read, after each, ending at the whole. */
Test(ckpt, loads_report_their_progress)
{
    for (int shards = 0; shards < 2; shards++) {
        model m = tiny_model(0);
        write_weights(&m, shards);
        write_json("config.json", base_config(0));
        free_model(&m);
        progress_log l = {.monotonic = 1};
        s2_ckpt *ck = NULL;
        s2_error err = {0};
        cr_assert_eq(s2_ckpt_open_progress(dir, log_progress, &l, &ck, &err), S2_OK, "%s",
                     err.msg);
        struct stat sb;
        uint64_t size = 0;
        const char *files[] = {"model.safetensors", SHARD1, SHARD2};
        for (int i = shards ? 1 : 0; i < (shards ? 3 : 1); i++) {
            char *p = in_dir(files[i]);
            cr_assert_eq(stat(p, &sb), 0, "%s", p);
            size += (uint64_t)sb.st_size;
            free(p);
        }
        cr_expect_eq(l.calls, shards ? 2 : 1, "one report a file");
        cr_expect_eq(l.last_done, size);
        cr_expect_eq(l.last_total, size);
        cr_expect(l.monotonic);
        s2_ckpt_close(ck);
        if (!shards) {
            char *p = in_dir("model.safetensors");
            unlink(p);
            free(p);
        }
    }
}

Test(ckpt, rope_scaling_refused)
{
    write_ckpt(0, 0);
    write_rope_scaling("{\"rope_type\": \"dynamic\", \"factor\": 2.0}");
    EXPECT_OPEN_ERROR(S2_ERR_PARSE, "config.json", "rope_scaling type \"dynamic\" is not "
                                                   "supported; only \"linear\" is");
    write_rope_scaling("{\"type\": \"yarn\", \"factor\": 4.0}");
    EXPECT_OPEN_ERROR(S2_ERR_PARSE, "\"yarn\" is not supported");
    write_rope_scaling("{\"type\": \"linear\"}");
    EXPECT_OPEN_ERROR(S2_ERR_PARSE, "rope_scaling (linear) has no \"factor\"");
    write_rope_scaling("{\"type\": \"linear\", \"factor\": 0}");
    EXPECT_OPEN_ERROR(S2_ERR_PARSE, "rope_scaling \"factor\" is 0");
    write_rope_scaling("{\"factor\": 4.0}");
    EXPECT_OPEN_ERROR(S2_ERR_PARSE, "rope_scaling has no \"type\" (or \"rope_type\")");
    write_rope_scaling("{\"type\": \"linear\", \"rope_type\": \"llama3\", \"factor\": 4.0}");
    EXPECT_OPEN_ERROR(S2_ERR_PARSE, "disagree");
    write_rope_scaling("4");
    EXPECT_OPEN_ERROR(S2_ERR_PARSE, "\"rope_scaling\" is 4");
}

Test(ckpt, tied_embeddings_need_no_head)
{
    write_ckpt(1, 2);
    s2_spec tied = load_spec("model.tie_word_embeddings=true", NULL);
    expect_check_ok(&tied);
    s2_spec untied = load_spec(NULL, NULL);
    EXPECT_CHECK_ERROR(&untied, S2_ERR_SPEC,
                       "config.json: tie_word_embeddings = true, spec "
                       "model.tie_word_embeddings = false");
}

Test(ckpt, untied_embeddings_need_the_head)
{
    model m = tiny_model(1); /* no lm_head ... */
    write_weights(&m, 0);
    write_json("config.json", base_config(0)); /* ... but the config says untied */
    free_model(&m);
    s2_spec spec = load_spec(NULL, NULL);
    EXPECT_CHECK_ERROR(&spec, S2_ERR_INVALID, "model.safetensors", "missing tensor 'lm_head.weight'",
                       "[50, 64]", "tie_word_embeddings is false");
}

Test(ckpt, extra_tensors_are_fine)
{
    /* A tied checkpoint that still carries lm_head (some exports do): nothing needs it. */
    write_ckpt(0, 0);
    json_t *c = base_config(1);
    write_json("config.json", c);
    s2_spec spec = load_spec("model.tie_word_embeddings=true", NULL);
    expect_check_ok(&spec);
}

/* ---- PEFT adapters --------------------------------------------------------------------------- */

typedef struct adapter {
    float *A[2 * S2_PROJ_COUNT], *B[2 * S2_PROJ_COUNT];
    size_t nA[2 * S2_PROJ_COUNT], nB[2 * S2_PROJ_COUNT];
} adapter;

/* Buffers for every adapted slot of a 2-layer spec: random (fill) or zeroed. */
static adapter make_adapter(const s2_spec *spec, int fill)
{
    adapter a = {0};
    s2_lora_plan plan;
    s2_plan_lora(spec, &plan);
    for (int l = 0; l < spec->model.num_layers && l < 2; l++)
        for (int p = 0; p < S2_PROJ_COUNT; p++) {
            if (!plan.lin[p].adapted)
                continue;
            int s = S2_CKPT_SLOT(l, p);
            a.nA[s] = (size_t)plan.rank * (size_t)plan.lin[p].in;
            a.nB[s] = (size_t)plan.lin[p].out * (size_t)plan.rank;
            a.A[s] = calloc(a.nA[s], sizeof(float));
            a.B[s] = calloc(a.nB[s], sizeof(float));
            for (size_t i = 0; fill && i < a.nA[s]; i++)
                a.A[s][i] = frand();
            for (size_t i = 0; fill && i < a.nB[s]; i++)
                a.B[s][i] = frand() * 1e-3f;
        }
    return a;
}

static void free_adapter(adapter *a)
{
    for (int s = 0; s < 2 * S2_PROJ_COUNT; s++) {
        free(a->A[s]);
        free(a->B[s]);
    }
}

static void save_ok(const s2_spec *spec, const adapter *a, const char *sub, const char *base)
{
    char *d = in_dir(sub);
    s2_error err = {0};
    cr_assert_eq(s2_ckpt_save_adapter(d, spec, base, (const float *const *)a->A,
                                      (const float *const *)a->B, &err),
                 S2_OK, "%s", err.msg);
    free(d);
}

static void expect_load_error(const s2_spec *spec, const char *sub, s2_status want,
                              const char *const *phrases)
{
    adapter b = make_adapter(spec, 0);
    char *d = in_dir(sub);
    s2_error err = {0};
    s2_status st = s2_ckpt_load_adapter(d, spec, b.A, b.B, &err);
    cr_assert_eq(st, want, "status %d, message: %s", st, err.msg ? err.msg : "(null)");
    for (const char *const *p = phrases; *p; p++)
        assert_has(err.msg, *p);
    s2_error_clear(&err);
    free(d);
    free_adapter(&b);
}
#define EXPECT_LOAD_ERROR(spec, sub, st, ...)                                                  \
    expect_load_error(spec, sub, st, (const char *const[]){__VA_ARGS__, NULL})

static float round_to(s2_st_dtype dt, float x)
{
    return dt == S2_ST_F16 ? s2_f16_to_f32(s2_f32_to_f16(x)) : s2_bf16_to_f32(s2_f32_to_bf16(x));
}

static void round_trip(const s2_spec *spec, s2_st_dtype dt)
{
    adapter a = make_adapter(spec, 1);
    save_ok(spec, &a, "out/adapter", "meta-llama/tiny");
    adapter b = make_adapter(spec, 0);
    char *d = in_dir("out/adapter");
    s2_error err = {0};
    cr_assert_eq(s2_ckpt_load_adapter(d, spec, b.A, b.B, &err), S2_OK, "%s", err.msg);
    int slots = 0;
    for (int s = 0; s < 2 * S2_PROJ_COUNT; s++) {
        if (!a.A[s])
            continue;
        slots++;
        for (size_t i = 0; i < a.nA[s]; i++)
            cr_assert_eq(b.A[s][i], round_to(dt, a.A[s][i]), "slot %d A[%zu]", s, i);
        for (size_t i = 0; i < a.nB[s]; i++)
            cr_assert_eq(b.B[s][i], round_to(dt, a.B[s][i]), "slot %d B[%zu]", s, i);
    }
    cr_expect_eq(slots, 8, "2 layers x q, k, v, o");

    /* The file itself: PEFT's names, the spec's dtype, PEFT's metadata. */
    char *p = in_dir("out/adapter/adapter_model.safetensors");
    s2_st_file f;
    cr_assert_eq(s2_st_read(p, &f, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(f.n, 16);
    cr_expect_str_eq(s2_st_meta(&f, "format"), "pt");
    char name[128];
    const s2_tensor *t =
        s2_st_find(&f, s2_lora_tensor_name(1, S2_PROJ_K, 'B', name, sizeof name));
    cr_assert_not_null(t, "%s", name);
    cr_expect_str_eq(t->name, "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight");
    cr_expect_eq(t->dtype, dt);
    cr_expect_eq(t->ndim, 2);
    cr_expect_eq(t->shape[0], 128, "out = 2 kv heads x 64");
    cr_expect_eq(t->shape[1], 4, "r");
    t = s2_st_find(&f, "base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight");
    cr_assert_not_null(t);
    cr_expect_eq(t->shape[0], 4);
    cr_expect_eq(t->shape[1], 256, "in = 4 heads x 64");
    s2_st_close(&f);
    free(p);
    free(d);
    free_adapter(&a);
    free_adapter(&b);
}

Test(adapter, round_trip_bf16)
{
    s2_spec spec = load_spec(NULL, NULL);
    round_trip(&spec, S2_ST_BF16);
}

Test(adapter, round_trip_fp16)
{
    s2_spec spec = load_spec("dtype=fp16", NULL);
    round_trip(&spec, S2_ST_F16);
}

Test(adapter, round_trip_mlp_targets)
{
    s2_spec spec = load_spec("lora.targets=[gate_proj, down_proj]", NULL);
    adapter a = make_adapter(&spec, 1), b = make_adapter(&spec, 0);
    save_ok(&spec, &a, "ad", NULL);
    char *d = in_dir("ad");
    s2_error err = {0};
    cr_assert_eq(s2_ckpt_load_adapter(d, &spec, b.A, b.B, &err), S2_OK, "%s", err.msg);
    int s = S2_CKPT_SLOT(1, S2_PROJ_DOWN);
    cr_expect_eq(a.nA[s], 4 * 96, "down_proj reads the intermediate width");
    cr_expect_eq(b.A[s][7], s2_bf16_to_f32(s2_f32_to_bf16(a.A[s][7])));
    cr_expect_null(b.A[S2_CKPT_SLOT(0, S2_PROJ_Q)]);
    free(d);
    free_adapter(&a);
    free_adapter(&b);
}

Test(adapter, config_is_peft_s)
{
    s2_spec spec = load_spec(NULL, NULL);
    adapter a = make_adapter(&spec, 1);
    save_ok(&spec, &a, "ad", "meta-llama/Llama-2-7b-hf");
    free_adapter(&a);
    char *p = in_dir("ad/adapter_config.json");
    json_error_t je;
    json_t *c = json_load_file(p, JSON_REJECT_DUPLICATES, &je);
    cr_assert_not_null(c, "%s", je.text);
    cr_expect_str_eq(json_string_value(json_object_get(c, "peft_type")), "LORA");
    cr_expect_str_eq(json_string_value(json_object_get(c, "task_type")), "CAUSAL_LM");
    cr_assert(json_is_integer(json_object_get(c, "r")));
    cr_expect_eq(json_integer_value(json_object_get(c, "r")), 4);
    cr_assert(json_is_integer(json_object_get(c, "lora_alpha")), "16, not 16.0, as PEFT has it");
    cr_expect_eq(json_integer_value(json_object_get(c, "lora_alpha")), 8);
    cr_assert(json_is_real(json_object_get(c, "lora_dropout")));
    cr_expect_eq(json_real_value(json_object_get(c, "lora_dropout")), 0.05);
    json_t *tm = json_object_get(c, "target_modules");
    cr_assert(json_is_array(tm));
    cr_assert_eq(json_array_size(tm), 4);
    const char *sorted[] = {"k_proj", "o_proj", "q_proj", "v_proj"};
    for (size_t i = 0; i < 4; i++)
        cr_expect_str_eq(json_string_value(json_array_get(tm, i)), sorted[i]);
    cr_expect_str_eq(json_string_value(json_object_get(c, "bias")), "none");
    cr_expect(json_is_false(json_object_get(c, "fan_in_fan_out")));
    cr_expect(json_is_true(json_object_get(c, "inference_mode")));
    cr_expect_str_eq(json_string_value(json_object_get(c, "base_model_name_or_path")),
                     "meta-llama/Llama-2-7b-hf");
    cr_expect(json_is_null(json_object_get(c, "modules_to_save")));
    cr_expect(json_is_true(json_object_get(c, "init_lora_weights")));
    cr_expect(json_is_false(json_object_get(c, "use_rslora")));
    cr_expect(json_is_false(json_object_get(c, "use_dora")));
    json_decref(c);

    /* As PEFT writes it: indent 2, sorted keys, the shortest real that reads back. */
    char *text;
    cr_assert_eq(s2_read_file(p, &text, NULL, NULL), S2_OK);
    assert_has(text, "{\n  \"alpha_pattern\": {},\n  \"base_model_name_or_path\"");
    assert_has(text, "\"lora_dropout\": 0.05,");
    assert_has(text, "\"target_modules\": [\n    \"k_proj\",");
    free(text);
    free(p);
}

Test(adapter, base_model_defaults_to_empty)
{
    s2_spec spec = load_spec("lora.alpha=12.5", "lora.dropout=0");
    adapter a = make_adapter(&spec, 1);
    save_ok(&spec, &a, "ad", NULL);
    free_adapter(&a);
    char *p = in_dir("ad/adapter_config.json");
    json_t *c = json_load_file(p, 0, NULL);
    cr_assert_not_null(c);
    cr_expect_str_eq(json_string_value(json_object_get(c, "base_model_name_or_path")), "");
    cr_expect_eq(json_number_value(json_object_get(c, "lora_alpha")), 12.5);
    cr_expect_eq(json_number_value(json_object_get(c, "lora_dropout")), 0.0);
    json_decref(c);
    free(p);
}

Test(adapter, save_needs_every_slot)
{
    s2_spec spec = load_spec(NULL, NULL);
    adapter a = make_adapter(&spec, 1);
    int s = S2_CKPT_SLOT(1, S2_PROJ_V);
    float *keep = a.B[s];
    a.B[s] = NULL;
    char *d = in_dir("ad");
    s2_error err = {0};
    cr_assert_eq(s2_ckpt_save_adapter(d, &spec, "", (const float *const *)a.A,
                                      (const float *const *)a.B, &err),
                 S2_ERR_INVALID);
    assert_has(err.msg, "layer 1 v_proj");
    cr_expect_neq(access(d, F_OK), 0, "nothing written");
    s2_error_clear(&err);
    a.B[s] = keep;
    free(d);
    free_adapter(&a);
}

Test(adapter, truncated_file)
{
    s2_spec spec = load_spec(NULL, NULL);
    adapter a = make_adapter(&spec, 1);
    save_ok(&spec, &a, "ad", "");
    free_adapter(&a);
    char *p = in_dir("ad/adapter_model.safetensors");
    struct stat sb;
    cr_assert_eq(stat(p, &sb), 0);
    cr_assert_eq(truncate(p, sb.st_size - 100), 0);
    EXPECT_LOAD_ERROR(&spec, "ad", S2_ERR_PARSE, p, "run past the end");
    cr_assert_eq(truncate(p, 4), 0);
    EXPECT_LOAD_ERROR(&spec, "ad", S2_ERR_PARSE, p, "too short");
    free(p);
}

Test(adapter, missing_files)
{
    s2_spec spec = load_spec(NULL, NULL);
    EXPECT_LOAD_ERROR(&spec, "nope", S2_ERR_IO, "nope/adapter_config.json", "cannot open");
    adapter a = make_adapter(&spec, 1);
    save_ok(&spec, &a, "ad", "");
    free_adapter(&a);
    char *p = in_dir("ad/adapter_model.safetensors");
    unlink(p);
    free(p);
    EXPECT_LOAD_ERROR(&spec, "ad", S2_ERR_IO, "ad/adapter_model.safetensors", "cannot open");
}

Test(adapter, rank_mismatch_names_r)
{
    s2_spec spec = load_spec(NULL, NULL);
    adapter a = make_adapter(&spec, 1);
    save_ok(&spec, &a, "ad", "");
    free_adapter(&a);
    s2_spec r8 = load_spec("lora.rank=8", NULL);
    EXPECT_LOAD_ERROR(&r8, "ad", S2_ERR_SPEC, "adapter_config.json: r = 4, spec lora.rank = 8",
                      "--set");
}

Test(adapter, alpha_and_targets_mismatch)
{
    s2_spec spec = load_spec(NULL, NULL);
    adapter a = make_adapter(&spec, 1);
    save_ok(&spec, &a, "ad", "");
    free_adapter(&a);
    s2_spec alpha = load_spec("lora.alpha=16", NULL);
    EXPECT_LOAD_ERROR(&alpha, "ad", S2_ERR_SPEC, "lora_alpha = 8, spec lora.alpha = 16");
    s2_spec qv = load_spec("lora.targets=[v_proj, q_proj]", NULL);
    EXPECT_LOAD_ERROR(&qv, "ad", S2_ERR_SPEC,
                      "target_modules = [k_proj, o_proj, q_proj, v_proj], spec lora.targets = "
                      "[q_proj, v_proj]");
}

/* Edits the saved adapter_config.json: key = the JSON text val. */
static void edit_adapter_config(const char *key, const char *val)
{
    char *p = in_dir("ad/adapter_config.json");
    json_t *c = json_load_file(p, 0, NULL);
    cr_assert_not_null(c);
    json_object_set_new(c, key, json_loads(val, JSON_DECODE_ANY, NULL));
    cr_assert_eq(json_dump_file(c, p, JSON_INDENT(2)), 0);
    json_decref(c);
    free(p);
}

Test(adapter, config_refusals)
{
    s2_spec spec = load_spec(NULL, NULL);
    adapter a = make_adapter(&spec, 1);
    save_ok(&spec, &a, "ad", "");
    free_adapter(&a);
    edit_adapter_config("use_rslora", "true");
    EXPECT_LOAD_ERROR(&spec, "ad", S2_ERR_SPEC, "adapter_config.json: use_rslora is true");
    edit_adapter_config("use_rslora", "false");
    edit_adapter_config("target_modules", "\"q_proj|v_proj\"");
    EXPECT_LOAD_ERROR(&spec, "ad", S2_ERR_SPEC, "\"target_modules\" is the string");
    edit_adapter_config("target_modules", "[\"q_proj\", \"lm_head\"]");
    EXPECT_LOAD_ERROR(&spec, "ad", S2_ERR_SPEC, "target_modules[1] is the string \"lm_head\"");
    edit_adapter_config("target_modules", "[\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\"]");
    edit_adapter_config("peft_type", "\"IA3\"");
    EXPECT_LOAD_ERROR(&spec, "ad", S2_ERR_SPEC, "\"peft_type\" is the string \"IA3\"");
    edit_adapter_config("peft_type", "\"LORA\"");
    edit_adapter_config("rank_pattern", "{\"q_proj\": 16}");
    EXPECT_LOAD_ERROR(&spec, "ad", S2_ERR_SPEC, "\"rank_pattern\" is not empty");
    edit_adapter_config("rank_pattern", "{}");
    char *d = in_dir("ad");
    adapter b = make_adapter(&spec, 0);
    s2_error err = {0};
    cr_expect_eq(s2_ckpt_load_adapter(d, &spec, b.A, b.B, &err), S2_OK, "%s", err.msg);
    free_adapter(&b);
    free(d);
    write_text("ad/adapter_config.json", "{\"r\": 4,");
    EXPECT_LOAD_ERROR(&spec, "ad", S2_ERR_PARSE, "adapter_config.json", "not valid JSON");
}

Test(adapter, shapes_layers_and_extras)
{
    s2_spec spec = load_spec(NULL, NULL);
    adapter a = make_adapter(&spec, 1);
    save_ok(&spec, &a, "ad", "");
    free_adapter(&a);
    /* 4 kv heads: k_proj's B is [256, 4], the file's [128, 4]. */
    s2_spec kv4 = load_spec("model.num_kv_heads=4", NULL);
    EXPECT_LOAD_ERROR(&kv4, "ad", S2_ERR_INVALID, "adapter_model.safetensors",
                      "tensor 'base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight' "
                      "has shape [128, 4], expected [256, 4]");
    s2_spec l1 = load_spec("model.num_layers=1", NULL);
    EXPECT_LOAD_ERROR(&l1, "ad", S2_ERR_INVALID,
                      "unexpected adapter tensor 'base_model.model.model.layers.1.",
                      "model.num_layers = 1");
    s2_spec o_only = load_spec("lora.targets=[o_proj]", NULL);
    edit_adapter_config("target_modules", "[\"o_proj\"]");
    EXPECT_LOAD_ERROR(&o_only, "ad", S2_ERR_INVALID, "unexpected adapter tensor",
                      "lora.targets = [o_proj]");
}

Test(adapter, missing_adapter_tensor)
{
    s2_spec l1 = load_spec("model.num_layers=1", NULL);
    adapter a = make_adapter(&l1, 1);
    save_ok(&l1, &a, "ad", "");
    free_adapter(&a);
    s2_spec spec = load_spec(NULL, NULL);
    EXPECT_LOAD_ERROR(&spec, "ad", S2_ERR_INVALID, "adapter_model.safetensors",
                      "missing tensor 'base_model.model.model.layers.1.self_attn.q_proj.lora_A."
                      "weight'",
                      "expected shape [4, 64]");
}

/* s2_ckpt_check_adapter: every check of a load, on the config and the tensors' header. */
Test(adapter, check_without_loading)
{
    s2_spec spec = load_spec(NULL, NULL);
    adapter a = make_adapter(&spec, 1);
    save_ok(&spec, &a, "ad", "");
    free_adapter(&a);
    char *d = in_dir("ad");
    s2_error err = {0};
    cr_assert_eq(s2_ckpt_check_adapter(d, &spec, &err), S2_OK, "%s", err.msg);
    s2_spec r8 = load_spec("lora.rank=8", NULL);
    cr_assert_eq(s2_ckpt_check_adapter(d, &r8, &err), S2_ERR_SPEC);
    assert_has(err.msg, "adapter_config.json: r = 4, spec lora.rank = 8");
    s2_spec kv4 = load_spec("model.num_kv_heads=4", NULL);
    cr_assert_eq(s2_ckpt_check_adapter(d, &kv4, &err), S2_ERR_INVALID);
    assert_has(err.msg, "has shape [128, 4], expected [256, 4]");
    s2_spec l1 = load_spec("model.num_layers=1", NULL);
    cr_assert_eq(s2_ckpt_check_adapter(d, &l1, &err), S2_ERR_INVALID);
    assert_has(err.msg, "unexpected adapter tensor 'base_model.model.model.layers.1.");
    char *f = in_dir("ad/adapter_model.safetensors");
    cr_assert_eq(truncate(f, 0), 0);
    cr_assert_eq(s2_ckpt_check_adapter(d, &spec, &err), S2_ERR_PARSE);
    assert_has(err.msg, f);
    assert_has(err.msg, "too short");
    s2_error_clear(&err);
    free(f);
    free(d);
}

/* ---- trainable whole tensors ------------------------------------------------------------------ */

Test(adapter, trainable_params_follow_the_spec)
{
    s2_spec spec = load_spec(NULL, NULL);
    s2_ckpt_param *p;
    int n;
    cr_assert_eq(s2_ckpt_trainable_params(&spec, &p, &n, NULL), S2_OK);
    const char *want[] = {"model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
                          "model.layers.0.post_attention_layernorm.weight",
                          "model.layers.1.input_layernorm.weight",
                          "model.layers.1.post_attention_layernorm.weight", "model.norm.weight"};
    cr_assert_eq(n, 6);
    for (int i = 0; i < n; i++)
        cr_expect_str_eq(p[i].name, want[i]);
    cr_expect_eq(p[0].ndim, 2);
    cr_expect_eq(p[0].shape[0], 50);
    cr_expect_eq(p[0].shape[1], 64);
    cr_expect_eq(p[5].ndim, 1);
    cr_expect_eq(p[5].shape[0], 64);
    free(p);

    spec = load_spec("lora.trainable=[lm_head]", NULL);
    cr_assert_eq(s2_ckpt_trainable_params(&spec, &p, &n, NULL), S2_OK);
    cr_assert_eq(n, 1);
    cr_expect_str_eq(p[0].name, "lm_head.weight");
    free(p);

    spec = load_spec("lora.trainable=[embed, lm_head]", "model.tie_word_embeddings=true");
    cr_assert_eq(s2_ckpt_trainable_params(&spec, &p, &n, NULL), S2_OK);
    cr_assert_eq(n, 1, "a tied head is the embedding, listed once");
    cr_expect_str_eq(p[0].name, "model.embed_tokens.weight");
    free(p);

    spec = load_spec("lora.trainable=[]", NULL);
    cr_assert_eq(s2_ckpt_trainable_params(&spec, &p, &n, NULL), S2_OK);
    cr_expect_eq(n, 0);
    cr_expect_null(p);
}

Test(adapter, trainable_round_trip)
{
    s2_spec spec = load_spec(NULL, NULL);
    s2_ckpt_param *p;
    int n;
    cr_assert_eq(s2_ckpt_trainable_params(&spec, &p, &n, NULL), S2_OK);
    float *src[8], *dst[8];
    for (int i = 0; i < n; i++) {
        size_t k = (size_t)(p[i].ndim == 2 ? p[i].shape[0] * p[i].shape[1] : p[i].shape[0]);
        src[i] = malloc(k * sizeof(float));
        dst[i] = calloc(k, sizeof(float));
        for (size_t j = 0; j < k; j++)
            src[i][j] = 1.0f + frand() * 0.1f;
    }
    char *path = in_dir("trainable.safetensors");
    s2_error err = {0};
    cr_assert_eq(s2_ckpt_save_trainable(path, S2_ST_BF16, n, p, (const float *const *)src, &err),
                 S2_OK, "%s", err.msg);
    cr_assert_eq(s2_ckpt_load_trainable(path, n, p, dst, &err), S2_OK, "%s", err.msg);
    for (int i = 0; i < n; i++) {
        size_t k = (size_t)(p[i].ndim == 2 ? p[i].shape[0] * p[i].shape[1] : p[i].shape[0]);
        for (size_t j = 0; j < k; j++)
            cr_assert_eq(dst[i][j], round_to(S2_ST_BF16, src[i][j]), "%s[%zu]", p[i].name, j);
    }
    s2_st_file f;
    cr_assert_eq(s2_st_read(path, &f, &err), S2_OK, "%s", err.msg);
    cr_expect_str_eq(s2_st_meta(&f, "format"), "pt");
    cr_expect_not_null(s2_st_find(&f, "model.layers.1.post_attention_layernorm.weight"));
    s2_st_close(&f);

    /* fp32 keeps every bit. */
    cr_assert_eq(s2_ckpt_save_trainable(path, S2_ST_F32, n, p, (const float *const *)src, &err),
                 S2_OK, "%s", err.msg);
    cr_assert_eq(s2_ckpt_load_trainable(path, n, p, dst, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(memcmp(dst[0], src[0], 50 * 64 * sizeof(float)), 0);

    /* A spec with another vocabulary: the embedding's shape is named. */
    p[0].shape[0] = 64;
    cr_assert_eq(s2_ckpt_load_trainable(path, n, p, dst, &err), S2_ERR_INVALID);
    assert_has(err.msg, "trainable.safetensors");
    assert_has(err.msg, "tensor 'model.embed_tokens.weight' has shape [50, 64], expected [64, 64]");
    s2_error_clear(&err);
    snprintf(p[0].name, sizeof p[0].name, "lm_head.weight");
    cr_assert_eq(s2_ckpt_load_trainable(path, n, p, dst, &err), S2_ERR_INVALID);
    assert_has(err.msg, "missing tensor 'lm_head.weight'");
    s2_error_clear(&err);
    cr_expect_eq(s2_ckpt_save_trainable(path, S2_ST_I32, n, p, (const float *const *)src, &err),
                 S2_ERR_INVALID);
    s2_error_clear(&err);
    /* s2_ckpt_check_trainable: the header against the spec's whole tensors */
    cr_assert_eq(s2_ckpt_check_trainable(path, &spec, &err), S2_OK, "%s", err.msg);
    s2_spec v64 = load_spec("model.vocab_size=64", NULL);
    cr_assert_eq(s2_ckpt_check_trainable(path, &v64, &err), S2_ERR_INVALID);
    assert_has(err.msg, "tensor 'model.embed_tokens.weight' has shape [50, 64], expected [64, 64]");
    s2_spec head = load_spec("lora.trainable=[lm_head]", NULL);
    cr_assert_eq(s2_ckpt_check_trainable(path, &head, &err), S2_ERR_INVALID);
    assert_has(err.msg, "missing tensor 'lm_head.weight'");
    cr_assert_eq(s2_ckpt_check_trainable(dir, &spec, &err), S2_ERR_IO);
    assert_has(err.msg, "is a directory");
    s2_error_clear(&err);
    for (int i = 0; i < n; i++) {
        free(src[i]);
        free(dst[i]);
    }
    free(p);
    free(path);
}

/* s2lora init: a fresh checkpoint of the spec's shape that the loader accepts against the same
 * spec, initialised as transformers does (linears normal(0, 0.02), norms 1), reproducible by
 * seed. */
Test(ckpt, init_random_from_spec)
{
    s2_spec spec;
    s2_error err = {0};
    s2_spec_override ov = {"context_length=512"}; /* pre-training: no RoPE scaling */
    cr_assert_eq(s2_spec_load(S2_SOURCE_DIR "/specs/tiny-byte-512.yaml", &ov, 1, &spec, &err),
                 S2_OK, "%s", err.msg);
    char *a = in_dir("init-a"), *b = in_dir("init-b"), *c = in_dir("init-c");
    progress_log l = {.monotonic = 1};
    cr_assert_eq(s2_ckpt_init_random_progress(a, &spec, 7, log_progress, &l, &err), S2_OK, "%s",
                 err.msg);
    /* one report a tensor, ending at the bytes of all of them */
    char st_path[256];
    snprintf(st_path, sizeof st_path, "%s/model.safetensors", a);
    s2_st_file hf;
    cr_assert_eq(s2_st_read_header(st_path, &hf, &err), S2_OK, "%s", err.msg);
    uint64_t bytes = 0;
    for (int i = 0; i < hf.n; i++)
        bytes += hf.t[i].nbytes;
    cr_expect_eq(l.calls, hf.n);
    s2_st_close(&hf);
    cr_expect_eq(l.last_done, bytes);
    cr_expect_eq(l.last_total, bytes);
    cr_expect(l.monotonic);
    cr_assert_eq(s2_ckpt_init_random(b, &spec, 7, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(s2_ckpt_init_random(c, &spec, 8, &err), S2_OK, "%s", err.msg);
    s2_ckpt *ck = NULL;
    cr_assert_eq(s2_ckpt_open(a, &ck, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(s2_ckpt_check(ck, &spec, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(s2_ckpt_config(ck)->rope_scaling_factor, 0); /* null at factor 1 */
    const size_t n = 688 * 256;
    float *w = malloc(n * sizeof *w), *nw = malloc(256 * sizeof *nw);
    cr_assert_eq(s2_ckpt_read_f32(ck, "model.layers.2.mlp.gate_proj.weight", w, n, &err), S2_OK,
                 "%s", err.msg);
    double s1 = 0, s2 = 0;
    for (size_t i = 0; i < n; i++)
        s1 += w[i], s2 += (double)w[i] * w[i];
    const double mean = s1 / n, sd = sqrt(s2 / n - mean * mean);
    cr_expect_lt(fabs(mean), 1e-3, "mean %g", mean);
    cr_expect_lt(fabs(sd - 0.02), 5e-4, "sd %g", sd);
    cr_assert_eq(s2_ckpt_read_f32(ck, "model.layers.0.input_layernorm.weight", nw, 256, &err),
                 S2_OK, "%s", err.msg);
    for (int i = 0; i < 256; i++)
        cr_expect_eq(nw[i], 1.0f);
    s2_ckpt_close(ck);
    /* the same seed, the same bytes; another seed, other weights */
    char *pa = NULL, *pb = NULL, *pc = NULL;
    size_t na = 0, nb = 0, nc = 0;
    char fa[256], fb[256], fc[256];
    snprintf(fa, sizeof fa, "%s/model.safetensors", a);
    snprintf(fb, sizeof fb, "%s/model.safetensors", b);
    snprintf(fc, sizeof fc, "%s/model.safetensors", c);
    cr_assert_eq(s2_read_file(fa, &pa, &na, NULL), S2_OK);
    cr_assert_eq(s2_read_file(fb, &pb, &nb, NULL), S2_OK);
    cr_assert_eq(s2_read_file(fc, &pc, &nc, NULL), S2_OK);
    cr_expect(na == nb && memcmp(pa, pb, na) == 0);
    cr_expect(na == nc && memcmp(pa, pc, na) != 0);
    /* with the context extended, the spec's rope_factor 8 meets a base without scaling: fine */
    s2_spec ext;
    cr_assert_eq(s2_spec_load(S2_SOURCE_DIR "/specs/tiny-byte-512.yaml", NULL, 0, &ext, &err),
                 S2_OK, "%s", err.msg);
    cr_assert_eq(s2_ckpt_open(a, &ck, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(s2_ckpt_check(ck, &ext, &err), S2_OK, "%s", err.msg);
    s2_ckpt_close(ck);
    free(pa), free(pb), free(pc), free(w), free(nw), free(a), free(b), free(c);
}

/* The init's weights are one stream (runtime/core/train_io.c): value i of the checkpoint (tensors
 * in file order, norms drawing none) is 0.02 x a Box-Muller normal of two splitmix64 draws from
 * state seed + 2i x the increment, rounded to the dtype. The pool fills tensors in chunks of
 * 65536 values from states jumped ahead: the values on both sides of a chunk boundary, and the
 * first of the tensor after the embeddings (their 264 x 256 values in two chunks), are those
 * of the sequential walk. */
static float init_stream_value(uint64_t seed, uint64_t i)
{
    uint64_t s = seed + 2 * i * 0x9E3779B97F4A7C15ull;
    const double u1 = ((double)(s2_splitmix64(&s) >> 11) + 0.5) * 0x1.0p-53;
    const double u2 = (double)(s2_splitmix64(&s) >> 11) * 0x1.0p-53;
    const float f = (float)(0.02 * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
    uint16_t h;
    float back;
    s2_f32_to_half(S2_ST_BF16, &f, &h, 1);
    s2_half_to_f32(S2_ST_BF16, &h, &back, 1);
    return back;
}

Test(ckpt, init_random_is_one_stream_across_chunks_and_tensors)
{
    s2_spec spec;
    s2_error err = {0};
    s2_spec_override ov = {"context_length=512"};
    cr_assert_eq(s2_spec_load(S2_SOURCE_DIR "/specs/tiny-byte-512.yaml", &ov, 1, &spec, &err),
                 S2_OK, "%s", err.msg);
    cr_assert_eq(spec.dtype, S2_DTYPE_BF16);
    char *a = in_dir("init-stream");
    cr_assert_eq(s2_ckpt_init_random(a, &spec, 11, &err), S2_OK, "%s", err.msg);
    s2_ckpt *ck = NULL;
    cr_assert_eq(s2_ckpt_open(a, &ck, &err), S2_OK, "%s", err.msg);
    const size_t ne = 264 * 256, nq = 256 * 256;
    float *e = malloc(ne * sizeof *e), *q = malloc(nq * sizeof *q);
    cr_assert_eq(s2_ckpt_read_f32(ck, "model.embed_tokens.weight", e, ne, &err), S2_OK, "%s",
                 err.msg);
    cr_assert_eq(s2_ckpt_read_f32(ck, "model.layers.0.self_attn.q_proj.weight", q, nq, &err),
                 S2_OK, "%s", err.msg);
    const size_t at[] = {0, 1, 65535, 65536, 65537, ne - 1};
    for (size_t k = 0; k < sizeof at / sizeof at[0]; k++)
        cr_expect_eq(e[at[k]], init_stream_value(11, at[k]), "embedding value %zu: %g, not %g",
                     at[k], e[at[k]], init_stream_value(11, at[k]));
    for (size_t k = 0; k < 3; k++)
        cr_expect_eq(q[k], init_stream_value(11, ne + k), "q_proj value %zu: %g, not %g", k,
                     q[k], init_stream_value(11, ne + k));
    cr_expect_eq(q[nq - 1], init_stream_value(11, ne + nq - 1));
    s2_ckpt_close(ck);
    free(e), free(q), free(a);
}

/* transformers 5 writes "rope_parameters" (with rope_theta inside) instead of "rope_scaling". */
Test(ckpt, rope_parameters_transformers5)
{
    write_ckpt(0, 0);
    json_t *c = base_config(0);
    json_object_del(c, "rope_scaling");
    json_object_del(c, "rope_theta");
    json_error_t je;
    json_object_set_new(c, "rope_parameters",
                        json_loads("{\"rope_type\": \"linear\", \"factor\": 4.0, "
                                   "\"rope_theta\": 500000.0}", 0, &je));
    write_json("config.json", c);
    s2_ckpt *ck = open_ok();
    cr_expect_eq(s2_ckpt_config(ck)->rope_scaling_factor, 4.0);
    cr_expect_eq(s2_ckpt_config(ck)->rope_theta, 500000.0);
    s2_ckpt_close(ck);
    c = base_config(0);
    json_object_del(c, "rope_scaling");
    json_object_set_new(c, "rope_parameters",
                        json_loads("{\"rope_type\": \"yarn\", \"factor\": 4.0}", 0, &je));
    write_json("config.json", c);
    EXPECT_OPEN_ERROR(S2_ERR_PARSE, "rope_parameters type \"yarn\" is not supported");
}

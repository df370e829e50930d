/*
 * fuzz_hf.c — the Hugging Face checkpoint readers (runtime/core/train_io.c) on arbitrary files:
 * config.json, model.safetensors.index.json and its shard, or a single model.safetensors; and a
 * PEFT adapter directory (adapter_config.json, adapter_model.safetensors). They are read the way
 * the trainer reads them (s2_ckpt_open, s2_ckpt_check, s2_ckpt_read_f32, s2_ckpt_load_adapter)
 * against a tiny spec written for these files.
 *
 * Input: five parts separated by FUZZ_SEP lines: config.json; the index (when empty, the third
 * part is written as model.safetensors instead); the shard, written as SHARD; the adapter's
 * config; the adapter's weights. An empty adapter config skips the adapter.
 *
 * Beyond crashes and sanitizer reports it holds the readers' promises: a failure names a file
 * of the directory; an opened checkpoint finds every tensor it holds; a checked one reads every
 * tensor the model needs as fp32.
 */
#include "fuzz.h"

#include "gen/lora_plan.h"
#include "gen/spec.h"
#include "runtime/core/train_io.h"

#define SHARD "model-00001-of-00001.safetensors"

/* Small enough for seeds of a few KB: hidden 8, one layer, 2 heads of 64. */
static const char spec_yaml[] = "name: fuzz-hf\n"
                                "dtype: bf16\n"
                                "context_length: 128\n"
                                "model:\n"
                                "  hidden_size: 8\n"
                                "  intermediate_size: 8\n"
                                "  num_layers: 1\n"
                                "  num_heads: 2\n"
                                "  num_kv_heads: 2\n"
                                "  head_dim: 64\n"
                                "  vocab_size: 8\n"
                                "  max_position_embeddings: 64\n"
                                "lora:\n"
                                "  rank: 2\n"
                                "  targets: [q_proj, v_proj]\n"
                                "  trainable: [embed, norm]\n";

static const s2_spec *fuzz_spec(void)
{
    static s2_spec spec;
    static int loaded;
    if (!loaded) {
        s2_error err = {0};
        if (s2_spec_load_string(spec_yaml, "fuzz-hf", NULL, 0, &spec, &err) != S2_OK) {
            fprintf(stderr, "fuzz harness: the built-in spec does not load: %s\n", err.msg);
            abort();
        }
        loaded = 1;
    }
    return &spec;
}

static void check_failure(s2_status st, const s2_error *err, const char *what)
{
    FUZZ_CHECK(err->status == st && err->msg, "%s failed (%s) without a message", what,
               s2_status_to_string(st));
    FUZZ_CHECK(strstr(err->msg, fuzz_dir()), "%s: the message names no file: %s", what,
               err->msg);
}

/* Every tensor the spec's model needs, as fp32 (after s2_ckpt_check said they are there). */
static void read_model(const s2_ckpt *ck, const s2_spec *spec)
{
    char names[S2_PROJ_COUNT + 5][128];
    int n = 0;
    for (int p = 0; p < S2_PROJ_COUNT; p++)
        snprintf(names[n++], sizeof names[0], "model.layers.0.%s.%s.weight",
                 s2_proj_module((s2_proj)p), s2_proj_name((s2_proj)p));
    snprintf(names[n++], sizeof names[0], "model.layers.0.input_layernorm.weight");
    snprintf(names[n++], sizeof names[0], "model.layers.0.post_attention_layernorm.weight");
    snprintf(names[n++], sizeof names[0], "model.embed_tokens.weight");
    snprintf(names[n++], sizeof names[0], "model.norm.weight");
    if (!spec->model.tie_word_embeddings)
        snprintf(names[n++], sizeof names[0], "lm_head.weight");
    s2_error err = {0};
    for (int i = 0; i < n; i++) {
        const s2_tensor *t = s2_ckpt_tensor(ck, names[i]);
        FUZZ_CHECK(t, "checked checkpoint lacks %s", names[i]);
        size_t numel = (size_t)s2_tensor_numel(t);
        float *dst = malloc((numel ? numel : 1) * sizeof *dst);
        if (!dst)
            abort();
        s2_status st = s2_ckpt_read_f32(ck, names[i], dst, numel, &err);
        FUZZ_CHECK(st == S2_OK, "checked tensor %s does not read: %s", names[i], err.msg);
        free(dst);
    }
    s2_error_clear(&err);
}

static void open_checkpoint(const s2_spec *spec)
{
    s2_ckpt *ck = NULL;
    s2_error err = {0};
    s2_status st = s2_ckpt_open(fuzz_dir(), &ck, &err);
    if (st != S2_OK) {
        fuzz_note("open refused: %s", err.msg);
        FUZZ_CHECK(!ck, "a failed open returned a checkpoint");
        check_failure(st, &err, "s2_ckpt_open");
        s2_error_clear(&err);
        return;
    }
    const s2_hf_config *cfg = s2_ckpt_config(ck);
    FUZZ_CHECK(cfg->hidden_size > 0 && cfg->num_attention_heads > 0 &&
                   cfg->num_key_value_heads > 0 &&
                   cfg->num_attention_heads % cfg->num_key_value_heads == 0 && cfg->head_dim > 0,
               "config accepted with hidden %d, heads %d / %d, head_dim %d", cfg->hidden_size,
               cfg->num_attention_heads, cfg->num_key_value_heads, cfg->head_dim);
    st = s2_ckpt_check(ck, spec, &err);
    fuzz_note("opened; check: %s", st == S2_OK ? "passed" : err.msg);
    if (st == S2_OK)
        read_model(ck, spec);
    else
        check_failure(st, &err, "s2_ckpt_check");
    s2_ckpt_close(ck);
    s2_error_clear(&err);
}

static void load_adapter(const s2_spec *spec)
{
    s2_lora_plan plan;
    s2_plan_lora(spec, &plan);
    int slots = spec->model.num_layers * S2_PROJ_COUNT; /* one layer */
    float *A[S2_PROJ_COUNT], *B[S2_PROJ_COUNT];
    for (int p = 0; p < slots; p++) {
        const s2_lora_linear *l = &plan.lin[p % S2_PROJ_COUNT];
        A[p] = l->adapted ? calloc((size_t)plan.rank * (size_t)l->in, sizeof(float)) : NULL;
        B[p] = l->adapted ? calloc((size_t)l->out * (size_t)plan.rank, sizeof(float)) : NULL;
    }
    s2_error err = {0};
    s2_status st = s2_ckpt_load_adapter(fuzz_dir(), spec, A, B, &err);
    fuzz_note("adapter: %s", st == S2_OK ? "loaded" : err.msg);
    if (st != S2_OK)
        check_failure(st, &err, "s2_ckpt_load_adapter");
    for (int p = 0; p < slots; p++) {
        free(A[p]);
        free(B[p]);
    }
    s2_error_clear(&err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const s2_spec *spec = fuzz_spec();
    fuzz_part part[5];
    fuzz_split(data, size, part, 5);
    fuzz_put("config.json", part[0].p, part[0].n);
    if (part[1].n) {
        fuzz_unlink("model.safetensors");
        fuzz_put("model.safetensors.index.json", part[1].p, part[1].n);
        fuzz_put(SHARD, part[2].p, part[2].n);
    } else {
        fuzz_unlink("model.safetensors.index.json");
        fuzz_unlink(SHARD);
        fuzz_put("model.safetensors", part[2].p, part[2].n);
    }
    open_checkpoint(spec);
    if (part[3].n) {
        fuzz_put("adapter_config.json", part[3].p, part[3].n);
        fuzz_put("adapter_model.safetensors", part[4].p, part[4].n);
        load_adapter(spec);
    }
    return 0;
}

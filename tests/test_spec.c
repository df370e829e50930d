/*
 * test_spec.c — the spec loader: shipped specs, defaults, derived values,
 * overrides, the canonical hash, and every class of error with its exact
 * "where" prefix. No CUDA.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen/spec.h"

#ifndef S2_SOURCE_DIR
#error "S2_SOURCE_DIR must name the repository root"
#endif

/* A minimal valid spec; whatever a test appends starts at line 10. */
#define HEAD "name: t\ncontext_length: 32768\nmodel:\n"
#define MODEL_KEYS                                                                          \
    "  hidden_size: 4096\n  intermediate_size: 11008\n  num_layers: 32\n  num_heads: 32\n" \
    "  vocab_size: 32000\n  max_position_embeddings: 4096\n"
#define BASE HEAD MODEL_KEYS

static s2_spec load_ok(const char *yaml, const char *const *sets, int n)
{
    s2_spec_override ov[16];
    for (int i = 0; i < n; i++)
        ov[i].text = sets[i];
    s2_spec s;
    s2_error e = {0};
    s2_status st = s2_spec_load_string(yaml, "t.yaml", ov, n, &s, &e);
    cr_assert_eq(st, S2_OK, "load failed: %s", e.msg ? e.msg : "(no message)");
    s2_error_clear(&e);
    return s;
}

/* Asserts the status, that the message starts with "WHERE: error: " and that
 * it contains PHRASE. */
static void expect_err(const char *yaml, const char *const *sets, int n, s2_status want,
                       const char *where, const char *phrase)
{
    s2_spec_override ov[16];
    for (int i = 0; i < n; i++)
        ov[i].text = sets[i];
    s2_spec s;
    s2_error e = {0};
    s2_status st = s2_spec_load_string(yaml, "t.yaml", ov, n, &s, &e);
    cr_assert_eq(st, want, "status %d, want %d; message: %s", st, want, e.msg ? e.msg : "");
    cr_assert_not_null(e.msg);
    char prefix[512];
    snprintf(prefix, sizeof prefix, "%s: error: ", where);
    cr_assert(!strncmp(e.msg, prefix, strlen(prefix)), "message '%s' lacks prefix '%s'", e.msg,
              prefix);
    cr_assert(strstr(e.msg, phrase), "message '%s' lacks '%s'", e.msg, phrase);
    cr_assert(!strchr(e.msg, '\n'), "message is one line: '%s'", e.msg);
    s2_error_clear(&e);
}

#define ERR(yaml, where, phrase) expect_err(yaml, NULL, 0, S2_ERR_SPEC, where, phrase)
#define ERR_SET(yaml, set, where, phrase)                                                   \
    do {                                                                                    \
        const char *sets_[] = {set};                                                        \
        expect_err(yaml, sets_, 1, S2_ERR_SPEC, where, phrase);                             \
    } while (0)

/* ------------------------------------------------------------------------ */
/* Shipped specs                                                             */
/* ------------------------------------------------------------------------ */

static s2_spec load_file_ok(const char *rel)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", S2_SOURCE_DIR, rel);
    s2_spec s;
    s2_error e = {0};
    s2_status st = s2_spec_load(path, NULL, 0, &s, &e);
    cr_assert_eq(st, S2_OK, "%s: %s", path, e.msg ? e.msg : "");
    s2_error_clear(&e);
    return s;
}

struct shipped {
    const char *file;
    int ctx, heads, kv, hidden, layers, G, S, rope;
};

static const struct shipped shipped[] = {
    {"llama2-7b-8k", 8192, 32, 32, 4096, 32, 2048, 1024, 2},
    {"llama2-7b-16k", 16384, 32, 32, 4096, 32, 4096, 2048, 4},
    {"llama2-7b-32k", 32768, 32, 32, 4096, 32, 8192, 4096, 8},
    {"llama2-7b-100k", 102400, 32, 32, 4096, 32, 25600, 12800, 25},
    {"llama2-13b-8k", 8192, 40, 40, 5120, 40, 2048, 1024, 2},
    {"llama2-13b-16k", 16384, 40, 40, 5120, 40, 4096, 2048, 4},
    {"llama2-13b-32k", 32768, 40, 40, 5120, 40, 8192, 4096, 8},
    {"llama2-13b-64k", 65536, 40, 40, 5120, 40, 16384, 8192, 16},
    {"llama2-70b-32k", 32768, 64, 8, 8192, 80, 8192, 4096, 8},
    {"tiny-byte-512", 4096, 4, 4, 256, 4, 1024, 512, 8},
};

Test(shipped, paper_configurations_derive_G_S_and_rope_factor)
{
    for (size_t i = 0; i < sizeof shipped / sizeof shipped[0]; i++) {
        const struct shipped *w = &shipped[i];
        char rel[256];
        snprintf(rel, sizeof rel, "specs/%s.yaml", w->file);
        s2_spec s = load_file_ok(rel);
        cr_expect_str_eq(s.name, w->file);
        cr_expect_eq(s.context_length, w->ctx, "%s", w->file);
        cr_expect_eq(s.model.num_heads, w->heads, "%s", w->file);
        cr_expect_eq(s.model.num_kv_heads, w->kv, "%s", w->file);
        cr_expect_eq(s.model.hidden_size, w->hidden, "%s", w->file);
        cr_expect_eq(s.model.num_layers, w->layers, "%s", w->file);
        cr_expect_eq(s.model.head_dim, w->file[0] == 't' ? 64 : 128, "%s", w->file);
        cr_expect_eq(s.s2attn.group_size, w->G, "%s G=%d", w->file, s.s2attn.group_size);
        cr_expect_eq(s.s2attn.shift, w->S, "%s S=%d", w->file, s.s2attn.shift);
        cr_expect_eq(s.rope_factor, w->rope, "%s rope=%d", w->file, s.rope_factor);
        cr_expect_eq(s.s2attn.group_ratio, 0.25);
        cr_expect_eq(s.s2attn.shift_mode, S2_SHIFT_SPLIT);
        cr_expect_eq(s.dtype, S2_DTYPE_BF16);
        cr_expect_eq(s.n_arch, 2);
        cr_expect_str_eq(s.arch[0], "sm_80");
        cr_expect_str_eq(s.arch[1], "sm_90a");
        cr_expect_eq(s.lora.rank, 8);
        cr_expect_eq(s.lora.alpha, 16.0);
        cr_expect_eq(s.lora.dropout, 0.0);
        cr_expect_eq(s.lora.targets, (unsigned)(S2_LORA_Q | S2_LORA_K | S2_LORA_V | S2_LORA_O));
        cr_expect_eq(s.lora.trainable, (unsigned)(S2_TRAIN_EMBED | S2_TRAIN_NORM));
        cr_expect_eq(s.model.rope_theta, 10000.0);
        cr_expect_eq(strlen(s.hash_hex), 64u);
    }
}

Test(shipped, every_file_in_specs_loads_and_is_named_after_its_file)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/specs", S2_SOURCE_DIR);
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "cannot open %s", dir);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 6 || strcmp(de->d_name + len - 5, ".yaml"))
            continue;
        char rel[512];
        snprintf(rel, sizeof rel, "specs/%s", de->d_name);
        s2_spec s = load_file_ok(rel);
        cr_expect(!strncmp(s.name, de->d_name, len - 5) && strlen(s.name) == len - 5,
                  "%s has name %s", de->d_name, s.name);
        n++;
    }
    closedir(d);
    cr_expect_geq(n, (int)(sizeof shipped / sizeof shipped[0]));
}

Test(shipped, distinct_specs_hash_differently)
{
    uint8_t seen[sizeof shipped / sizeof shipped[0]][32];
    for (size_t i = 0; i < sizeof shipped / sizeof shipped[0]; i++) {
        char rel[256];
        snprintf(rel, sizeof rel, "specs/%s.yaml", shipped[i].file);
        s2_spec s = load_file_ok(rel);
        memcpy(seen[i], s.hash, 32);
        for (size_t j = 0; j < i; j++)
            cr_expect(memcmp(seen[i], seen[j], 32), "%s and %s hash alike", shipped[i].file,
                      shipped[j].file);
    }
}

Test(shipped, positions_name_the_file)
{
    s2_spec s = load_file_ok("specs/llama2-7b-32k.yaml");
    s2_srcpos p = s2_spec_pos(&s, "context_length");
    cr_assert(strstr(p.file, "specs/llama2-7b-32k.yaml"), "%s", p.file);
    cr_expect_gt(p.line, 0);
    cr_expect_gt(p.col, 0);
    /* The pointer follows the copy it is asked about. */
    s2_spec copy = s;
    memset(&s, 0, sizeof s);
    p = s2_spec_pos(&copy, "model.num_layers");
    cr_expect_eq(p.file, copy.path);
    p = s2_spec_pos(&copy, "s2attn.shift");
    cr_expect_eq(p.line, 0);
    cr_expect_str_eq(p.file, "<default>");
}

/* ------------------------------------------------------------------------ */
/* Defaults and derived values                                               */
/* ------------------------------------------------------------------------ */

Test(defaults, minimal_spec_fills_everything)
{
    s2_spec s = load_ok(BASE, NULL, 0);
    cr_expect_str_eq(s.name, "t");
    cr_expect_str_eq(s.path, "");
    cr_expect_eq(s.dtype, S2_DTYPE_BF16);
    cr_expect_eq(s.n_arch, 2);
    cr_expect_str_eq(s.arch[0], "sm_80");
    cr_expect_str_eq(s.arch[1], "sm_90a");
    cr_expect_eq(s.model.num_kv_heads, 32);
    cr_expect_eq(s.model.head_dim, 128);
    cr_expect_eq(s.model.rope_theta, 10000.0);
    cr_expect_eq(s.model.rms_norm_eps, 1e-5);
    cr_expect_eq(s.model.tie_word_embeddings, 0);
    cr_expect_eq(s.rope_factor, 8);
    cr_expect_eq(s.s2attn.group_ratio, 0.25);
    cr_expect_eq(s.s2attn.group_size, 8192);
    cr_expect_eq(s.s2attn.shift, 4096);
    cr_expect_eq(s.s2attn.shift_mode, S2_SHIFT_SPLIT);
    cr_expect_eq(s.s2attn.softmax_scale, 1.0 / sqrt(128.0));
    cr_expect_eq(s.lora.rank, 8);
    cr_expect_eq(s.lora.alpha, 16.0);
    cr_expect_eq(s.lora.dropout, 0.0);
    cr_expect_eq(s.lora.targets, (unsigned)(S2_LORA_Q | S2_LORA_K | S2_LORA_V | S2_LORA_O));
    cr_expect_eq(s.lora.trainable, (unsigned)(S2_TRAIN_EMBED | S2_TRAIN_NORM));
}

Test(defaults, positions_of_given_and_default_values)
{
    s2_spec s = load_ok(BASE, NULL, 0);
    s2_srcpos p = s2_spec_pos(&s, "model.num_heads");
    cr_expect_str_eq(p.file, "<string>");
    cr_expect_eq(p.line, 7);
    cr_expect_eq(p.col, 14);
    p = s2_spec_pos(&s, "model.num_attention_heads"); /* HF spelling finds the same */
    cr_expect_eq(p.line, 7);
    p = s2_spec_pos(&s, "s2attn.shift");
    cr_expect_str_eq(p.file, "<default>");
    cr_expect_eq(p.line, 0);
    p = s2_spec_pos(&s, "no.such.key");
    cr_expect_not_null(p.file);
    cr_expect_eq(p.line, 0);
    p = s2_spec_pos(&s, "model");
    cr_expect_eq(p.line, 3);
    cr_expect_eq(p.col, 1);
}

Test(defaults, every_key_given_explicitly)
{
    s2_spec s = load_ok("name: all.keys_v1\ndtype: fp16\narch: [sm_90, sm_86, sm_89]\n"
                        "context_length: 10000\n"
                        "model: {hidden_size: 2048, intermediate_size: 5504, num_layers: 2,\n"
                        "        num_heads: 16, num_kv_heads: 4, head_dim: 96, vocab_size: 100,\n"
                        "        rope_theta: 500000.0, max_position_embeddings: 2048,\n"
                        "        rms_norm_eps: 1e-6, tie_word_embeddings: true}\n"
                        "s2attn: {group_size: 3000, shift: 7, shift_mode: roll,\n"
                        "         softmax_scale: 0.125}\n"
                        "lora: {rank: 64, alpha: 8.5, dropout: 0.05,\n"
                        "       targets: [down_proj, gate_proj, up_proj],\n"
                        "       trainable: [lm_head]}\n",
                        NULL, 0);
    cr_expect_str_eq(s.name, "all.keys_v1");
    cr_expect_eq(s.dtype, S2_DTYPE_FP16);
    cr_expect_eq(s.n_arch, 3);
    cr_expect_str_eq(s.arch[0], "sm_86"); /* fixed order, not the file's */
    cr_expect_str_eq(s.arch[1], "sm_89");
    cr_expect_str_eq(s.arch[2], "sm_90");
    cr_expect_eq(s.model.num_kv_heads, 4);
    cr_expect_eq(s.model.head_dim, 96);
    cr_expect_eq(s.model.rope_theta, 500000.0);
    cr_expect_eq(s.model.rms_norm_eps, 1e-6);
    cr_expect_eq(s.model.tie_word_embeddings, 1);
    cr_expect_eq(s.rope_factor, 5); /* ceil(10000 / 2048) */
    cr_expect_eq(s.s2attn.group_size, 3000);
    cr_expect_eq(s.s2attn.group_ratio, 0.0);
    cr_expect_eq(s.s2attn.shift, 7);
    cr_expect_eq(s.s2attn.shift_mode, S2_SHIFT_ROLL);
    cr_expect_eq(s.s2attn.softmax_scale, 0.125);
    cr_expect_eq(s.lora.rank, 64);
    cr_expect_eq(s.lora.alpha, 8.5);
    cr_expect_eq(s.lora.dropout, 0.05);
    cr_expect_eq(s.lora.targets, (unsigned)(S2_LORA_GATE | S2_LORA_UP | S2_LORA_DOWN));
    cr_expect_eq(s.lora.trainable, (unsigned)S2_TRAIN_HEAD);
}

Test(defaults, empty_trainable_list_means_nothing)
{
    s2_spec s = load_ok(BASE "lora: {trainable: []}\n", NULL, 0);
    cr_expect_eq(s.lora.trainable, 0u);
}

Test(defaults, hugging_face_spellings_mean_the_same)
{
    s2_spec a = load_ok("name: t\ncontext_length: 8192\nmodel:\n  hidden_size: 8192\n"
                        "  intermediate_size: 28672\n  num_hidden_layers: 80\n"
                        "  num_attention_heads: 64\n  num_key_value_heads: 8\n"
                        "  vocab_size: 32000\n  max_position_embeddings: 4096\n",
                        NULL, 0);
    s2_spec b = load_ok("name: t\ncontext_length: 8192\nmodel:\n  hidden_size: 8192\n"
                        "  intermediate_size: 28672\n  num_layers: 80\n"
                        "  num_heads: 64\n  num_kv_heads: 8\n"
                        "  vocab_size: 32000\n  max_position_embeddings: 4096\n",
                        NULL, 0);
    cr_expect_eq(a.model.num_layers, 80);
    cr_expect_eq(a.model.num_heads, 64);
    cr_expect_eq(a.model.num_kv_heads, 8);
    cr_expect_str_eq(a.hash_hex, b.hash_hex);
}

Test(derived, group_ratio_gives_floor_of_product)
{
    s2_spec s = load_ok("name: t\ncontext_length: 5000\nmodel:\n" MODEL_KEYS
                        "s2attn: {group_ratio: 0.5}\n",
                        NULL, 0);
    cr_expect_eq(s.s2attn.group_size, 2500);
    cr_expect_eq(s.s2attn.shift, 1250);
    cr_expect_eq(s.s2attn.group_ratio, 0.5);
    /* int(100 * 0.57) is 56 in Python (the product is 56.99999999999999):
     * the loader rounds the way LongLoRA does. */
    s = load_ok("name: t\ncontext_length: 100\nmodel:\n" MODEL_KEYS
                "s2attn: {group_ratio: 0.57}\n",
                NULL, 0);
    cr_expect_eq(s.s2attn.group_size, 56);
    cr_expect_eq(s.s2attn.shift, 28);
}

Test(derived, group_size_need_not_divide_context)
{
    s2_spec s = load_ok("name: t\ncontext_length: 5000\nmodel:\n" MODEL_KEYS
                        "s2attn: {group_size: 1023}\n",
                        NULL, 0);
    cr_expect_eq(s.s2attn.group_size, 1023);
    cr_expect_eq(s.s2attn.group_ratio, 0.0);
    cr_expect_eq(s.s2attn.shift, 511);
    cr_expect_eq(s.rope_factor, 2); /* ceil(5000 / 4096) */
}

Test(derived, group_larger_than_context_with_zero_shift_is_full_attention)
{
    s2_spec s = load_ok("name: t\ncontext_length: 2048\nmodel:\n" MODEL_KEYS
                        "s2attn: {group_size: 65536, shift: 0}\n",
                        NULL, 0);
    cr_expect_eq(s.s2attn.group_size, 65536);
    cr_expect_eq(s.s2attn.shift, 0);
    cr_expect_eq(s.rope_factor, 1); /* shorter than the trained context: no scaling */
}

Test(derived, group_size_one_allows_only_shift_zero)
{
    s2_spec s = load_ok(BASE "s2attn: {group_size: 1}\n", NULL, 0);
    cr_expect_eq(s.s2attn.shift, 0);
}

Test(derived, head_dim_default_from_hidden_and_heads)
{
    s2_spec s = load_ok("name: t\ncontext_length: 4096\nmodel: {hidden_size: 2048, "
                        "intermediate_size: 1, num_layers: 1, num_heads: 32, vocab_size: 1, "
                        "max_position_embeddings: 4096}\n",
                        NULL, 0);
    cr_expect_eq(s.model.head_dim, 64);
    cr_expect_eq(s.s2attn.softmax_scale, 0.125);
    /* hidden != heads * head_dim is fine when head_dim is given. */
    s = load_ok("name: t\ncontext_length: 4096\nmodel: {hidden_size: 3000, "
                "intermediate_size: 1, num_layers: 1, num_heads: 32, head_dim: 128, "
                "vocab_size: 1, max_position_embeddings: 4096}\n",
                NULL, 0);
    cr_expect_eq(s.model.head_dim, 128);
}

/* ------------------------------------------------------------------------ */
/* Overrides                                                                 */
/* ------------------------------------------------------------------------ */

Test(overrides, value_replaces_the_file)
{
    const char *sets[] = {"s2attn.group_size=2048", "model.num_kv_heads=8", "dtype=fp16",
                          "lora.targets=[q_proj,v_proj]", "name=other", "lora.alpha=32"};
    s2_spec s = load_ok(BASE "lora: {targets: [o_proj]}\n", sets, 6);
    cr_expect_eq(s.s2attn.group_size, 2048);
    cr_expect_eq(s.s2attn.shift, 1024);
    cr_expect_eq(s.model.num_kv_heads, 8);
    cr_expect_eq(s.dtype, S2_DTYPE_FP16);
    cr_expect_eq(s.lora.targets, (unsigned)(S2_LORA_Q | S2_LORA_V));
    cr_expect_str_eq(s.name, "other");
    cr_expect_eq(s.lora.alpha, 32.0);
}

Test(overrides, hugging_face_spelling_and_last_one_wins)
{
    const char *sets[] = {"model.num_key_value_heads=8", "model.num_kv_heads=16"};
    s2_spec s = load_ok(BASE, sets, 2);
    cr_expect_eq(s.model.num_kv_heads, 16);
}

Test(overrides, positions_say_set)
{
    const char *sets[] = {"lora.rank=4", "s2attn.group_size=2048"};
    s2_spec s = load_ok(BASE, sets, 2);
    s2_srcpos p = s2_spec_pos(&s, "s2attn.group_size");
    cr_expect_str_eq(p.file, "--set");
    cr_expect_eq(p.line, 2); /* the second --set */
    p = s2_spec_pos(&s, "lora.rank");
    cr_expect_str_eq(p.file, "--set");
    cr_expect_eq(p.line, 1);
}

Test(overrides, supply_a_missing_required_key)
{
    const char *sets[] = {"context_length=4096"};
    s2_spec s = load_ok("name: t\nmodel:\n" MODEL_KEYS, sets, 1);
    cr_expect_eq(s.context_length, 4096);
    cr_expect_eq(s.s2attn.group_size, 1024);
}

Test(overrides, group_size_replaces_file_ratio)
{
    const char *sets[] = {"s2attn.group_size=2048"};
    s2_spec s = load_ok(BASE "s2attn: {group_ratio: 0.5}\n", sets, 1);
    cr_expect_eq(s.s2attn.group_size, 2048);
    cr_expect_eq(s.s2attn.group_ratio, 0.0);
    cr_expect_eq(s.s2attn.shift, 1024);
    cr_expect_eq(s2_spec_pos(&s, "s2attn.group_ratio").line, 0);
}

Test(overrides, group_ratio_replaces_file_size)
{
    const char *sets[] = {"s2attn.group_ratio=0.125"};
    s2_spec s = load_ok(BASE "s2attn: {group_size: 1000}\n", sets, 1);
    cr_expect_eq(s.s2attn.group_ratio, 0.125);
    cr_expect_eq(s.s2attn.group_size, 4096);
    cr_expect_eq(s.s2attn.shift, 2048);
    /* The derived size came from the --set. */
    cr_expect_str_eq(s2_spec_pos(&s, "s2attn.group_size").file, "--set");
}

Test(overrides, shift_default_follows_overridden_context_and_group)
{
    const char *sets[] = {"context_length=65536"};
    s2_spec s = load_ok(BASE, sets, 1);
    cr_expect_eq(s.s2attn.group_size, 16384);
    cr_expect_eq(s.s2attn.shift, 8192);
    cr_expect_eq(s.rope_factor, 16);
}

Test(overrides, explicit_file_shift_checked_against_overridden_group)
{
    ERR_SET(BASE "s2attn:\n  shift: 4096\n", "s2attn.group_size=2048", "t.yaml:11:10",
            "[0, 2047] for group_size 2048 (from --set s2attn.group_size=2048)");
}

Test(overrides, both_group_keys_on_the_command_line)
{
    const char *sets[] = {"s2attn.group_size=2048", "s2attn.group_ratio=0.5"};
    expect_err(BASE, sets, 2, S2_ERR_SPEC, "--set s2attn.group_ratio=0.5", "both set");
}

Test(overrides, type_error_uses_the_set_prefix)
{
    ERR_SET(BASE, "s2attn.group_size=2048.5", "--set s2attn.group_size=2048.5",
            "expected an integer, got '2048.5'");
    ERR_SET(BASE, "lora.targets=q_proj,v_proj", "--set lora.targets=q_proj,v_proj",
            "expected a list of strings");
    ERR_SET(BASE, "dtype=", "--set dtype=", "expected one of bf16, fp16, got nothing");
    ERR_SET(BASE, "model.tie_word_embeddings=yes", "--set model.tie_word_embeddings=yes",
            "expected a boolean (true or false)");
}

Test(overrides, range_error_uses_the_same_message_as_files)
{
    ERR_SET(BASE, "lora.dropout=1", "--set lora.dropout=1",
            "lora.dropout = 1 is out of range: valid 0 or [1e-09, 0.999999]");
    ERR(BASE "lora: {dropout: 1}\n", "t.yaml:10:17",
        "lora.dropout = 1 is out of range: valid 0 or [1e-09, 0.999999]");
    ERR_SET(BASE, "model.num_kv_heads=5", "--set model.num_kv_heads=5",
            "must divide model.num_heads (32)");
}

Test(overrides, unknown_key_with_suggestion)
{
    ERR_SET(BASE, "s2attn.group_sise=4", "--set s2attn.group_sise=4",
            "did you mean 's2attn.group_size'?");
    ERR_SET(BASE, "group_size=4", "--set group_size=4", "did you mean 's2attn.group_size'?");
    ERR_SET(BASE, "model.num_hidden_layer=4", "--set model.num_hidden_layer=4",
            "did you mean 'model.num_hidden_layers'?");
    ERR_SET(BASE, "completely.unrelated=4", "--set completely.unrelated=4", "unknown key");
}

Test(overrides, malformed)
{
    ERR_SET(BASE, "lora.rank", "--set lora.rank", "expected KEY=VALUE");
    ERR_SET(BASE, "lora=4", "--set lora=4", "is a section");
    ERR_SET(BASE, "rope_factor=2", "--set rope_factor=2", "derived");
    const char *sets[] = {"lora.targets=[q_proj"};
    expect_err(BASE, sets, 1, S2_ERR_PARSE, "--set lora.targets=[q_proj", "not valid YAML");
}

/* ------------------------------------------------------------------------ */
/* Canonical text and hash                                                   */
/* ------------------------------------------------------------------------ */

Test(hash, independent_of_key_order_and_style)
{
    s2_spec a = load_ok(BASE "lora:\n  targets:\n    - v_proj\n    - q_proj\n"
                             "  rank: 8\n",
                        NULL, 0);
    s2_spec b = load_ok("lora: {rank: 8, targets: [q_proj, v_proj]}\n"
                        "model: {max_position_embeddings: 4096, vocab_size: 32000,\n"
                        "  num_attention_heads: 32, num_hidden_layers: 32,\n"
                        "  intermediate_size: 11008, hidden_size: 4096}\n"
                        "context_length: 32768\nname: 't'\n",
                        NULL, 0);
    cr_expect_str_eq(a.hash_hex, b.hash_hex);
    cr_expect_eq(memcmp(a.hash, b.hash, 32), 0);
}

Test(hash, explicit_defaults_hash_like_implicit_ones)
{
    s2_spec a = load_ok(BASE, NULL, 0);
    s2_spec b = load_ok(BASE "s2attn: {group_ratio: 0.25, shift: 4096, shift_mode: split}\n"
                             "dtype: bf16\nlora: {rank: 8, alpha: 16.0}\n",
                        NULL, 0);
    cr_expect_str_eq(a.hash_hex, b.hash_hex);
}

Test(hash, changes_with_any_value)
{
    s2_spec a = load_ok(BASE, NULL, 0);
    const char *sets[][1] = {{"lora.rank=16"},        {"s2attn.shift=100"},
                             {"model.rms_norm_eps=1e-6"}, {"s2attn.shift_mode=roll"},
                             {"arch=[sm_90a]"},       {"name=u"},
                             {"lora.trainable=[embed]"}};
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++) {
        s2_spec b = load_ok(BASE, sets[i], 1);
        cr_expect_str_neq(a.hash_hex, b.hash_hex, "%s left the hash unchanged", sets[i][0]);
    }
}

Test(hash, override_equals_editing_the_file)
{
    const char *sets[] = {"s2attn.group_size=2048"};
    s2_spec a = load_ok(BASE, sets, 1);
    s2_spec b = load_ok(BASE "s2attn: {group_size: 2048}\n", NULL, 0);
    cr_expect_str_eq(a.hash_hex, b.hash_hex);
}

Test(hash, canonical_text_is_sorted_and_complete)
{
    s2_spec s = load_ok(BASE, NULL, 0);
    char *t = s2_spec_canonical(&s);
    cr_assert_not_null(t);
    cr_expect(strstr(t, "s2attn.group_size=8192\n"));
    cr_expect(strstr(t, "s2attn.shift=4096\n"));
    cr_expect(strstr(t, "rope_factor=8\n"));
    cr_expect(strstr(t, "model.rms_norm_eps=1.0000000000000001e-05\n"));
    cr_expect(strstr(t, "lora.targets=q_proj,k_proj,v_proj,o_proj\n"));
    cr_expect(strstr(t, "arch=sm_80,sm_90a\n"));
    cr_expect(!strstr(t, "path"));
    int lines = 0;
    const char *prev = NULL;
    for (const char *p = t; *p; p = strchr(p, '\n') + 1) {
        if (prev)
            cr_expect_lt(strncmp(prev, p, (size_t)(strchr(p, '\n') - p)), 0, "not sorted at %s",
                         p);
        prev = p;
        lines++;
    }
    cr_expect_eq(lines, 26);
    uint8_t h[32];
    s2_sha256(t, strlen(t), h);
    cr_expect_eq(memcmp(h, s.hash, 32), 0);
    char hex[65];
    s2_hex(h, 32, hex);
    cr_expect_str_eq(hex, s.hash_hex);
    free(t);
}

/* ------------------------------------------------------------------------ */
/* Errors: YAML level                                                        */
/* ------------------------------------------------------------------------ */

Test(errors_yaml, empty)
{
    expect_err("", NULL, 0, S2_ERR_PARSE, "t.yaml", "empty spec, expected a mapping with name");
    expect_err("# nothing\n\n", NULL, 0, S2_ERR_PARSE, "t.yaml", "empty spec");
    expect_err("---\n", NULL, 0, S2_ERR_PARSE, "t.yaml", "empty spec");
}

Test(errors_yaml, not_yaml)
{
    expect_err("name: [x\n", NULL, 0, S2_ERR_PARSE, "t.yaml:2:1", "not valid YAML");
    expect_err("name: x\n  bad: indent: here\n", NULL, 0, S2_ERR_PARSE, "t.yaml:2:6",
               "not valid YAML: mapping values are not allowed");
    expect_err("name: x\n\xff\n", NULL, 0, S2_ERR_PARSE, "t.yaml:2:1", "invalid leading UTF-8");
}

Test(errors_yaml, top_level_not_a_mapping)
{
    ERR("- a\n- b\n", "t.yaml:1:1", "top level must be a mapping");
    ERR("just words\n", "t.yaml:1:1", "top level must be a mapping");
}

Test(errors_yaml, anchors_aliases_tags_and_documents)
{
    ERR(BASE "lora: {rank: &r 8, alpha: *r}\n", "t.yaml:10:14", "anchors (&r) are not supported");
    ERR("name: !!str t\n", "t.yaml:1:7", "tags");
    ERR("name: t\n---\nname: u\n", "t.yaml:2:1", "one YAML document");
    ERR("name: \"t\\0u\"\n", "t.yaml:1:7", "NUL");
    ERR("? [a, b]\n: 1\n", "t.yaml:1:3", "keys must be plain");
}

Test(errors_yaml, deep_nesting_does_not_crash)
{
    char deep[4096] = "name: ";
    for (int i = 0; i < 500; i++)
        strcat(deep, "[");
    for (int i = 0; i < 500; i++)
        strcat(deep, "]");
    s2_spec s;
    s2_error e = {0};
    cr_expect_neq(s2_spec_load_string(deep, "t.yaml", NULL, 0, &s, &e), S2_OK);
    cr_expect_not_null(e.msg);
    s2_error_clear(&e);
}

/* ------------------------------------------------------------------------ */
/* Errors: keys                                                              */
/* ------------------------------------------------------------------------ */

Test(errors_keys, unknown_key_with_suggestion)
{
    ERR(BASE "s2attn:\n  group_sise: 2048\n", "t.yaml:11:3",
        "unknown key 'group_sise' in s2attn; did you mean 'group_size'?");
    ERR(BASE "lora: {rnak: 4}\n", "t.yaml:10:8", "did you mean 'rank'?");
    ERR(BASE "contxt_length: 3\n", "t.yaml:10:1", "did you mean 'context_length'?");
    ERR(BASE "modle: {}\n", "t.yaml:10:1", "did you mean 'model'?");
    ERR(HEAD "  kv_heads: 8\n" MODEL_KEYS, "t.yaml:4:3", "did you mean 'num_kv_heads'?");
}

Test(errors_keys, key_in_the_wrong_section)
{
    ERR(BASE "group_size: 4\n", "t.yaml:10:1",
        "unknown key 'group_size' at the top level; did you mean 's2attn.group_size'?");
    ERR(BASE "lora: {shift: 4}\n", "t.yaml:10:8", "did you mean 's2attn.shift'?");
}

Test(errors_keys, unknown_key_without_suggestion_lists_valid_keys)
{
    ERR(BASE "zzz: 1\n", "t.yaml:10:1", "valid keys: name, dtype, arch, context_length");
    ERR(BASE "rope_factor: 2\n", "t.yaml:10:1", "rope_factor is derived");
}

Test(errors_keys, missing_required)
{
    ERR("context_length: 4096\nmodel:\n" MODEL_KEYS, "t.yaml:1:1",
        "missing required key 'name'");
    ERR("name: t\nmodel:\n" MODEL_KEYS, "t.yaml:1:1", "missing required key 'context_length'");
    ERR("name: t\ncontext_length: 4096\n", "t.yaml:1:1",
        "missing required key 'model' (a mapping with hidden_size");
    ERR("name: t\ncontext_length: 4096\n\nmodel:\n  hidden_size: 4096\n", "t.yaml:4:1",
        "missing required key 'model.intermediate_size'");
    ERR(HEAD "  hidden_size: 4096\n  intermediate_size: 1\n  num_heads: 32\n", "t.yaml:3:1",
        "missing required key 'model.num_layers' (or its Hugging Face spelling "
        "'num_hidden_layers')");
    ERR("{}\n", "t.yaml:1:1", "missing required key 'name'");
}

Test(errors_keys, duplicates)
{
    ERR(BASE "name: u\n", "t.yaml:10:1", "duplicate key 'name' (first given at line 1)");
    ERR(BASE "  num_hidden_layers: 32\n", "t.yaml:10:3",
        "two spellings of model.num_layers (first given at line 6)");
    ERR(BASE "model: {}\n", "t.yaml:10:1", "duplicate key 'model' (first given at line 3)");
    ERR(BASE "s2attn: {group_size: 1, group_size: 2}\n", "t.yaml:10:25",
        "duplicate key 'group_size' (first given at line 10)");
    ERR(BASE "lora:\n  targets:\n    - q_proj\n    - v_proj\n    - q_proj\n", "t.yaml:14:7",
        "'q_proj' is listed twice (first at line 12)");
    ERR(BASE "arch: [sm_80, sm_80]\n", "t.yaml:10:15", "'sm_80' is listed twice");
    ERR(BASE "s2attn:\n  group_size: 4\n  group_ratio: 0.5\n", "t.yaml:12:3",
        "both given (group_size at line 11); give only one");
}

/* ------------------------------------------------------------------------ */
/* Errors: types                                                             */
/* ------------------------------------------------------------------------ */

Test(errors_types, integers)
{
    ERR("name: t\ncontext_length: 2048.5\n", "t.yaml:2:17", "expected an integer, got '2048.5'");
    ERR("name: t\ncontext_length: lots\n", "t.yaml:2:17", "expected an integer, got 'lots'");
    ERR("name: t\ncontext_length: \"4096\"\n", "t.yaml:2:17",
        "expected an integer, got the quoted string \"4096\" (write numbers");
    ERR("name: t\ncontext_length:\n", "t.yaml:2:16", "expected an integer, got nothing");
    ERR("name: t\ncontext_length: [1]\n", "t.yaml:2:17", "expected an integer, got a list");
    ERR("name: t\ncontext_length: 0x100\n", "t.yaml:2:17", "expected an integer");
    ERR("name: t\ncontext_length: 0100\n", "t.yaml:2:17", "expected an integer");
    ERR("name: t\ncontext_length: 1e4\n", "t.yaml:2:17", "expected an integer");
}

Test(errors_types, numbers_and_booleans)
{
    ERR(BASE "lora: {alpha: sixteen}\n", "t.yaml:10:15", "lora.alpha: expected a number");
    ERR(BASE "lora: {alpha: .inf}\n", "t.yaml:10:15", "expected a number");
    ERR(BASE "lora: {alpha: 1e999}\n", "t.yaml:10:15", "out of range");
    ERR(BASE "  tie_word_embeddings: 1\n", "t.yaml:10:24", "expected a boolean (true or false)");
}

Test(errors_types, mappings_and_lists)
{
    ERR(BASE "s2attn: 5\n", "t.yaml:10:9", "s2attn: expected a mapping, got '5'");
    ERR(BASE "lora: [rank]\n", "t.yaml:10:7", "lora: expected a mapping, got a list");
    ERR("name: t\nmodel:\n", "t.yaml:2:7", "model: expected a mapping, got nothing");
    ERR(BASE "lora: {targets: q_proj}\n", "t.yaml:10:17",
        "lora.targets: expected a list of strings (e.g. [q_proj, k_proj]), got 'q_proj'");
    ERR(BASE "arch: [sm_80, [sm_90]]\n", "t.yaml:10:15",
        "expected a list of strings, item 2 is a list");
    ERR(BASE "dtype: [bf16]\n", "t.yaml:10:8", "dtype: expected one of bf16, fp16, got a list");
    ERR("name: {a: 1}\n", "t.yaml:1:7", "name: expected a non-empty string, got a mapping");
}

/* ------------------------------------------------------------------------ */
/* Errors: values                                                            */
/* ------------------------------------------------------------------------ */

Test(errors_values, integer_ranges)
{
    ERR("name: t\ncontext_length: 99999999999\n", "t.yaml:2:17",
        "context_length = 99999999999 is out of range: valid 1..16777216");
    ERR("name: t\ncontext_length: 0\n", "t.yaml:2:17",
        "context_length = 0 is out of range: valid 1..16777216");
    ERR(HEAD "  hidden_size: -4\n", "t.yaml:4:16",
        "model.hidden_size = -4 is out of range: valid 1..65536");
    ERR(BASE "lora: {rank: 0}\n", "t.yaml:10:14", "lora.rank = 0 is out of range: valid 1..1024");
    ERR(BASE "s2attn: {shift: -1}\n", "t.yaml:10:17",
        "s2attn.shift = -1 is out of range: valid 0..16777215");
    ERR(BASE "s2attn: {group_size: 0}\n", "t.yaml:10:22",
        "s2attn.group_size = 0 is out of range: valid 1..16777216");
}

Test(errors_values, heads)
{
    ERR(HEAD "  num_heads: 7\n", "t.yaml:4:14", "must be a positive even number");
    /* too large to read, and even as written: the message gives the range, not the parity */
    char want[128];
    snprintf(want, sizeof want,
             "model.num_heads = 99999999999999999998 is out of range: valid 2..%d, even",
             S2_SPEC_MAX_HEADS);
    ERR(HEAD "  num_heads: 99999999999999999998\n", "t.yaml:4:14", want);
    ERR(BASE "  num_kv_heads: 5\n", "t.yaml:10:17",
        "model.num_kv_heads (5) must divide model.num_heads (32); valid values: 2, 4, 8, 16, 32");
    ERR(BASE "  num_kv_heads: 64\n", "t.yaml:10:17", "must divide model.num_heads (32)");
    ERR(BASE "  num_kv_heads: 1\n", "t.yaml:10:17",
        "must be even when it is below num_heads");
    ERR(BASE "  head_dim: 80\n", "t.yaml:10:13", "must be one of 64, 96, 128, 256");
    ERR(HEAD "  hidden_size: 2560\n  intermediate_size: 1\n  num_layers: 1\n  num_heads: 32\n"
             "  vocab_size: 1\n  max_position_embeddings: 1\n",
        "t.yaml:4:16", "defaults to hidden_size / num_heads = 2560 / 32 = 80");
    ERR(HEAD "  hidden_size: 4100\n  intermediate_size: 1\n  num_layers: 1\n  num_heads: 32\n"
             "  vocab_size: 1\n  max_position_embeddings: 1\n",
        "t.yaml:4:16", "not a multiple of model.num_heads (32); set model.head_dim");
}

Test(errors_values, attention)
{
    ERR(BASE "s2attn: {group_ratio: 1.5}\n", "t.yaml:10:23",
        "s2attn.group_ratio = 1.5 is out of range: valid (0, 1]");
    ERR(BASE "s2attn: {group_ratio: 0}\n", "t.yaml:10:23", "valid (0, 1]");
    ERR("name: t\ncontext_length: 100\nmodel:\n" MODEL_KEYS "s2attn: {group_ratio: 0.001}\n",
        "t.yaml:10:23", "gives group_size floor(100 * 0.001) = 0");
    ERR(BASE "s2attn: {group_size: 2048, shift: 2048}\n", "t.yaml:10:35",
        "s2attn.shift must be in [0, group_size - 1] = [0, 2047] for group_size 2048, got 2048");
    ERR(BASE "s2attn: {shift: 9000}\n", "t.yaml:10:17",
        "[0, 8191] for group_size 8192 (from group_ratio 0.25)");
    ERR(BASE "s2attn: {shift_mode: rol}\n", "t.yaml:10:22",
        "unknown value 'rol'; did you mean 'roll'? (valid: split, roll)");
    ERR(BASE "s2attn: {softmax_scale: 0}\n", "t.yaml:10:25",
        "s2attn.softmax_scale = 0 is out of range: valid [1e-30, 1e+30]");
}

Test(errors_values, lora)
{
    ERR(BASE "lora: {alpha: 0}\n", "t.yaml:10:15", "lora.alpha = 0 is out of range");
    ERR(BASE "lora: {dropout: -0.1}\n", "t.yaml:10:17",
        "lora.dropout = -0.1 is out of range: valid 0 or [1e-09, 0.999999]");
    ERR(BASE "lora: {targets: []}\n", "t.yaml:10:17", "lora.targets: the list must not be empty");
    ERR(BASE "lora: {targets: [q_prj]}\n", "t.yaml:10:18",
        "unknown target 'q_prj'; did you mean 'q_proj'?");
    ERR(BASE "lora: {targets: [mlp]}\n", "t.yaml:10:18",
        "valid: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj");
    ERR(BASE "lora: {trainable: [embeddings]}\n", "t.yaml:10:20", "did you mean 'embed'?");
}

Test(errors_values, top_level)
{
    ERR(BASE "dtype: fp32\n", "t.yaml:10:8", "unknown value 'fp32'");
    ERR(BASE "dtype: fp32\n", "t.yaml:10:8", "valid: bf16, fp16");
    ERR(BASE "arch: []\n", "t.yaml:10:7", "arch: the list must not be empty");
    ERR(BASE "arch: [sm_70]\n", "t.yaml:10:8", "unknown architecture 'sm_70'");
    ERR("name: llama 2\n", "t.yaml:1:7", "only letters, digits, '.', '_' and '-' are allowed");
    ERR("name: a/b\n", "t.yaml:1:7", "used in file names");
    ERR("name: ''\n", "t.yaml:1:7", "expected a non-empty string");
    ERR("name: .hidden\n", "t.yaml:1:7", "must not start with '.'");
}

/* ------------------------------------------------------------------------ */
/* Errors from real files                                                    */
/* ------------------------------------------------------------------------ */

static void expect_file_err(const char *rel, s2_status want, const char *where_tail,
                            const char *phrase)
{
    char path[1024], prefix[1200];
    snprintf(path, sizeof path, "%s/tests/specs_bad/%s", S2_SOURCE_DIR, rel);
    snprintf(prefix, sizeof prefix, "%s%s: error: ", path, where_tail);
    s2_spec s;
    memset(&s, 0xab, sizeof s);
    s2_error e = {0};
    s2_status st = s2_spec_load(path, NULL, 0, &s, &e);
    cr_assert_eq(st, want, "%s: status %d; %s", rel, st, e.msg ? e.msg : "");
    cr_assert(!strncmp(e.msg, prefix, strlen(prefix)), "'%s' lacks prefix '%s'", e.msg, prefix);
    cr_assert(strstr(e.msg, phrase), "'%s' lacks '%s'", e.msg, phrase);
    /* *spec is written on success only. */
    cr_expect_eq(((unsigned char *)&s)[0], 0xab);
    cr_expect_eq(((unsigned char *)&s)[sizeof s - 1], 0xab);
    s2_error_clear(&e);
}

Test(errors_files, each_class_from_a_file)
{
    expect_file_err("unknown_key.yaml", S2_ERR_SPEC, ":12:3", "did you mean 'group_size'?");
    expect_file_err("missing_key.yaml", S2_ERR_SPEC, ":4:1",
                    "missing required key 'model.vocab_size'");
    expect_file_err("wrong_type.yaml", S2_ERR_SPEC, ":3:17", "expected an integer");
    expect_file_err("duplicate_key.yaml", S2_ERR_SPEC, ":11:3", "first given at line 7");
    expect_file_err("not_yaml.yaml", S2_ERR_PARSE, ":4:15", "not valid YAML");
    expect_file_err("empty.yaml", S2_ERR_PARSE, "", "empty spec");
    expect_file_err("kv_heads.yaml", S2_ERR_SPEC, ":9:17", "must divide model.num_heads (64)");
    expect_file_err("shift_range.yaml", S2_ERR_SPEC, ":13:10", "[0, 2047]");
}

Test(errors_files, override_error_on_a_file_names_the_set)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/specs/llama2-7b-8k.yaml", S2_SOURCE_DIR);
    s2_spec_override ov[] = {{"s2attn.shift=9999"}};
    s2_spec s;
    s2_error e = {0};
    cr_assert_eq(s2_spec_load(path, ov, 1, &s, &e), S2_ERR_SPEC);
    cr_expect(!strncmp(e.msg, "--set s2attn.shift=9999: error: ", 32), "%s", e.msg);
    cr_expect(strstr(e.msg, "[0, 2047]"), "%s", e.msg);
    s2_error_clear(&e);
}

Test(errors_files, unreadable)
{
    s2_spec s;
    s2_error e = {0};
    cr_expect_eq(s2_spec_load("/nonexistent/dir/spec.yaml", NULL, 0, &s, &e), S2_ERR_IO);
    cr_expect(strstr(e.msg, "/nonexistent/dir/spec.yaml"), "%s", e.msg);
    s2_error_clear(&e);
}

/* ------------------------------------------------------------------------ */
/* Odds and ends                                                             */
/* ------------------------------------------------------------------------ */

Test(misc, names)
{
    cr_expect_str_eq(s2_dtype_name(S2_DTYPE_BF16), "bf16");
    cr_expect_str_eq(s2_dtype_name(S2_DTYPE_FP16), "fp16");
    cr_expect_str_eq(s2_shift_mode_name(S2_SHIFT_SPLIT), "split");
    cr_expect_str_eq(s2_shift_mode_name(S2_SHIFT_ROLL), "roll");
    cr_expect_not_null(s2_dtype_name((s2_dtype)7));
}

Test(misc, bad_arguments)
{
    s2_spec s;
    s2_error e = {0};
    cr_expect_eq(s2_spec_load_string(NULL, "x", NULL, 0, &s, &e), S2_ERR_INVALID);
    cr_expect_eq(s2_spec_load(NULL, NULL, 0, &s, &e), S2_ERR_INVALID);
    cr_expect_eq(s2_spec_load_string(BASE, "x", NULL, 1, &s, &e), S2_ERR_INVALID);
    /* A NULL error record drops the message but keeps the status. */
    cr_expect_eq(s2_spec_load_string("name: [", "x", NULL, 0, &s, NULL), S2_ERR_PARSE);
    cr_expect_eq(s2_spec_load_string(BASE "zzz: 1\n", "x", NULL, 0, &s, NULL), S2_ERR_SPEC);
    s2_error_clear(&e);
}

Test(misc, string_name_defaults)
{
    s2_spec s;
    s2_error e = {0};
    cr_assert_eq(s2_spec_load_string("", NULL, NULL, 0, &s, &e), S2_ERR_PARSE);
    cr_expect(!strncmp(e.msg, "<string>: error: ", 17), "%s", e.msg);
    s2_error_clear(&e);
}

/* ------------------------------------------------------------------------ */
/* Ranges: every value within what the kernels can index and hold            */
/* ------------------------------------------------------------------------ */

/* BASE with head_dim given, so num_heads can move without head_dim following hidden / heads. */
#define BASE_D BASE "  head_dim: 128\n"

Test(ranges, hidden_size_near_int_max_names_position_and_range)
{
    ERR(HEAD "  hidden_size: 2147483647\n", "t.yaml:4:16",
        "model.hidden_size = 2147483647 is out of range: valid 1..65536 (");
    ERR(HEAD "  hidden_size: 2147483648\n", "t.yaml:4:16",
        "model.hidden_size = 2147483648 is out of range: valid 1..65536 (");
    ERR_SET(BASE, "model.hidden_size=2147483647", "--set model.hidden_size=2147483647",
            "model.hidden_size = 2147483647 is out of range: valid 1..65536");
    expect_file_err("hidden_overflow.yaml", S2_ERR_SPEC, ":5:16",
                    "model.hidden_size = 2147483647 is out of range: valid 1..65536");
    expect_file_err("softmax_scale_huge.yaml", S2_ERR_SPEC, ":12:18",
                    "s2attn.softmax_scale = 1e300 is out of range: valid [1e-30, 1e+30]");
}

/* Both ends of every integer range, on both sides: the bound loads and holds its value, one
 * past it is refused with the range (as a --set, which names the override, and in a file). */
Test(ranges, integer_bounds_on_both_sides)
{
    static const struct {
        const char *key;
        long lo, hi;
        int step; /* num_heads must be even: its neighbours out of range are 2 away */
    } r[] = {
        {"context_length", 1, 16777216, 1},
        {"model.hidden_size", 1, 65536, 1},
        {"model.intermediate_size", 1, 262144, 1},
        {"model.num_layers", 1, 1024, 1},
        {"model.num_heads", 2, 1024, 2},
        {"model.vocab_size", 1, 2097152, 1},
        {"model.max_position_embeddings", 1, 16777216, 1},
        {"s2attn.group_size", 1, 16777216, 1},
        {"lora.rank", 1, 1024, 1},
    };
    for (size_t i = 0; i < sizeof r / sizeof r[0]; i++) {
        for (int end = 0; end < 2; end++) {
            const long ok = end ? r[i].hi : r[i].lo, bad = end ? ok + r[i].step : ok - r[i].step;
            char set_ok[96], set_bad[96], want[160], line[96];
            snprintf(set_ok, sizeof set_ok, "%s=%ld", r[i].key, ok);
            snprintf(set_bad, sizeof set_bad, "%s=%ld", r[i].key, bad);
            /* one token of context needs a group of one token (a quarter of it is none) */
            const char *sets[] = {set_ok, "s2attn.group_size=1"};
            s2_spec s = load_ok(BASE_D, sets, strcmp(set_ok, "context_length=1") ? 1 : 2);
            char *canon = s2_spec_canonical(&s);
            snprintf(line, sizeof line, "\n%s=%ld\n", r[i].key, ok);
            cr_expect(canon && strstr(canon, line), "%s: '%s' not in the spec", set_ok, line);
            free(canon);
            char where[128];
            snprintf(where, sizeof where, "--set %s", set_bad);
            snprintf(want, sizeof want, "%s = %ld is out of range: valid %ld..%ld", r[i].key, bad,
                     r[i].lo, r[i].hi);
            ERR_SET(BASE_D, set_bad, where, want);
        }
    }
    /* num_kv_heads: 1..1024 besides dividing num_heads; shift: 0..2^24 - 1 below group_size */
    const char *kv_max[] = {"model.num_heads=1024", "model.num_kv_heads=1024"};
    cr_expect_eq(load_ok(BASE_D, kv_max, 2).model.num_kv_heads, 1024);
    ERR_SET(BASE_D, "model.num_kv_heads=1025", "--set model.num_kv_heads=1025",
            "model.num_kv_heads = 1025 is out of range: valid 1..1024");
    ERR_SET(BASE_D, "model.num_kv_heads=0", "--set model.num_kv_heads=0",
            "model.num_kv_heads = 0 is out of range: valid 1..1024");
    const char *shift_max[] = {"s2attn.group_size=16777216", "s2attn.shift=16777215"};
    cr_expect_eq(load_ok(BASE_D, shift_max, 2).s2attn.shift, 16777215);
    ERR_SET(BASE_D, "s2attn.shift=16777216", "--set s2attn.shift=16777216",
            "s2attn.shift = 16777216 is out of range: valid 0..16777215");
    /* in a file: the value's own line and column */
    ERR(HEAD "  hidden_size: 65537\n", "t.yaml:4:16",
        "model.hidden_size = 65537 is out of range: valid 1..65536");
    ERR("name: t\ncontext_length: 16777217\n", "t.yaml:2:17",
        "context_length = 16777217 is out of range: valid 1..16777216");
    ERR(BASE "lora: {rank: 1025}\n", "t.yaml:10:14",
        "lora.rank = 1025 is out of range: valid 1..1024");
}

static double real_of(const s2_spec *s, const char *key)
{
    if (!strcmp(key, "s2attn.softmax_scale"))
        return s->s2attn.softmax_scale;
    if (!strcmp(key, "s2attn.group_ratio"))
        return s->s2attn.group_ratio;
    if (!strcmp(key, "model.rope_theta"))
        return s->model.rope_theta;
    if (!strcmp(key, "model.rms_norm_eps"))
        return s->model.rms_norm_eps;
    if (!strcmp(key, "lora.alpha"))
        return s->lora.alpha;
    if (!strcmp(key, "lora.dropout"))
        return s->lora.dropout;
    cr_assert_fail("no real key %s", key);
    return 0;
}

/* Every real key of the spec, at both ends of its range and just past them. */
static const struct {
    const char *key, *lo, *hi, *below, *above, *range;
} real_ranges[] = {
    {"s2attn.softmax_scale", "1e-30", "1e30", "9.9e-31", "1.01e30", "valid [1e-30, 1e+30]"},
    {"model.rms_norm_eps", "1e-30", "1e30", "9.9e-31", "1.01e30", "valid [1e-30, 1e+30]"},
    {"model.rope_theta", "1", "1e30", "0.999", "1.01e30", "valid [1, 1e+30]"},
    {"lora.alpha", "1e-30", "1e30", "9.9e-31", "1.01e30", "valid [1e-30, 1e+30]"},
    {"lora.dropout", "1e-9", "0.999999", "9.9e-10", "0.9999991", "valid 0 or [1e-09, 0.999999]"},
    {"s2attn.group_ratio", "3.0517578125e-05", "1", "0", "1.0000001", "valid (0, 1]"},
};

Test(ranges, real_bounds_on_both_sides)
{
    for (size_t i = 0; i < sizeof real_ranges / sizeof real_ranges[0]; i++) {
        const char *ends[2][2] = {{real_ranges[i].lo, real_ranges[i].below},
                                  {real_ranges[i].hi, real_ranges[i].above}};
        for (int e = 0; e < 2; e++) {
            char set_ok[96], set_bad[96], where[128], want[192];
            snprintf(set_ok, sizeof set_ok, "%s=%s", real_ranges[i].key, ends[e][0]);
            snprintf(set_bad, sizeof set_bad, "%s=%s", real_ranges[i].key, ends[e][1]);
            const char *sets[] = {set_ok};
            s2_spec s = load_ok(BASE, sets, 1);
            cr_expect_eq(real_of(&s, real_ranges[i].key), strtod(ends[e][0], NULL), "%s",
                         set_ok);
            snprintf(where, sizeof where, "--set %s", set_bad);
            snprintf(want, sizeof want, "%s = %s is out of range: %s", real_ranges[i].key,
                     ends[e][1], real_ranges[i].range);
            ERR_SET(BASE, set_bad, where, want);
        }
    }
    /* the smallest group_ratio of a 32768-token context gives one token a group */
    const char *g1[] = {"s2attn.group_ratio=3.0517578125e-05"};
    cr_expect_eq(load_ok(BASE, g1, 1).s2attn.group_size, 1);
    /* in a file: the value's position */
    ERR(BASE "s2attn: {softmax_scale: 1e31}\n", "t.yaml:10:25",
        "s2attn.softmax_scale = 1e31 is out of range: valid [1e-30, 1e+30]");
    ERR(BASE "  rope_theta: 0.5\n", "t.yaml:10:15",
        "model.rope_theta = 0.5 is out of range: valid [1, 1e+30]");
}

/* inf, nan, huge, tiny, negative, overflowing and underflowing values of every real key. */
Test(ranges, extreme_reals_refused_for_every_key)
{
    static const char *const extreme[] = {".inf", "-.inf", ".nan", "1e300", "1e-300",
                                          "-1",   "-1e-30", "1e999", "1e-400", "-.5"};
    for (size_t i = 0; i < sizeof real_ranges / sizeof real_ranges[0]; i++) {
        for (size_t j = 0; j < sizeof extreme / sizeof extreme[0]; j++) {
            char set[96], where[128];
            snprintf(set, sizeof set, "%s=%s", real_ranges[i].key, extreme[j]);
            snprintf(where, sizeof where, "--set %s", set);
            /* .inf and .nan are not plain decimal numbers at all; the rest are out of range
             * (a group_ratio of 1e-300 is positive but gives no token a group) */
            const char *phrase = extreme[j][0] == '.' || extreme[j][1] == '.' ? "expected a number"
                                 : !strcmp(real_ranges[i].key, "s2attn.group_ratio") &&
                                         !strcmp(extreme[j], "1e-300")
                                     ? "gives group_size floor(32768 * 1e-300) = 0"
                                     : "is out of range: valid";
            if (!strcmp(extreme[j], "-.5"))
                phrase = "is out of range: valid";
            ERR_SET(BASE, set, where, phrase);
        }
    }
}

Test(ranges, dropout_zero_is_off_and_negative_zero_reads_as_zero)
{
    s2_spec a = load_ok(BASE "lora: {dropout: 0}\n", NULL, 0);
    s2_spec b = load_ok(BASE "lora: {dropout: -0.0}\n", NULL, 0);
    s2_spec c = load_ok(BASE "lora: {dropout: 0.0e5}\n", NULL, 0);
    cr_expect_eq(a.lora.dropout, 0.0);
    cr_expect(!signbit(b.lora.dropout), "-0.0 kept its sign");
    cr_expect_str_eq(a.hash_hex, b.hash_hex);
    cr_expect_str_eq(a.hash_hex, c.hash_hex);
    /* a value that underflows to 0 is not 0: refused rather than read as "off" */
    ERR(BASE "lora: {dropout: 1e-400}\n", "t.yaml:10:17",
        "lora.dropout = 1e-400 is out of range: valid 0 or [1e-09, 0.999999]");
}

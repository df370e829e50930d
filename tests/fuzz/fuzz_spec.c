/*
 * fuzz_spec.c — the compiler's front half on arbitrary specs: YAML text -> s2_spec_load_string
 * (with --set overrides) -> plan on every arch of the spec (and a --tile text) -> emitted
 * source of every unit. Nothing here reaches a GPU or NVRTC: emitting only builds text.
 *
 * Input: the spec's YAML, then optional parts after FUZZ_SEP lines: "tile:K=V,..." is a --tile
 * text, anything else one --set override "dotted.key=value".
 *
 * Beyond crashes and sanitizer reports it holds the loader's promises: a failure carries a
 * message naming where (the spec's name or "--set"); a loaded spec's hash is the SHA-256 of its
 * canonical text; a failed plan says why; every emitted unit is text.
 */
#include "fuzz.h"

#include "gen/emit.h"
#include "gen/lora_plan.h"
#include "gen/plan.h"
#include "gen/spec.h"

#define MAX_PARTS 6
#define NAME "fuzz.yaml"

static const char *const keys[] = {
    "name", "dtype", "arch", "context_length", "model.hidden_size", "model.num_heads",
    "model.num_kv_heads", "model.head_dim", "model.num_hidden_layers", "s2attn.group_size",
    "s2attn.shift", "s2attn.shift_mode", "lora.rank", "lora.targets", "no.such_key",
};

static void check_failure(s2_status st, const s2_error *err, const char *what)
{
    FUZZ_CHECK(err->status == st, "%s: status %d, record says %d", what, st, err->status);
    FUZZ_CHECK(err->msg && err->msg[0], "%s failed (%s) without a message", what,
               s2_status_to_string(st));
}

static void emit_unit_ok(s2_status st, char *src, const s2_error *err, const char *what)
{
    if (st != S2_OK) {
        check_failure(st, err, what);
        return;
    }
    FUZZ_CHECK(src && strlen(src) > 0, "%s: empty source", what);
    free(src);
}

static void plan_and_emit(const s2_spec *spec, const char *arch, const char *tile_text,
                          int emit)
{
    s2_error err = {0};
    s2_attn_tile tile = s2_plan_default_tile(arch, spec->model.head_dim);
    if (tile_text) {
        s2_status st = s2_plan_parse_tile(tile_text, &tile, &err);
        if (st != S2_OK) {
            fuzz_note("tile refused: %s", err.msg);
            check_failure(st, &err, "s2_plan_parse_tile");
            s2_error_clear(&err);
            return;
        }
        char buf[512];
        s2_plan_tile_str(&tile, buf, sizeof buf);
    }
    s2_attn_plan plan;
    s2_status st = s2_plan_attn(spec, arch, tile_text ? &tile : NULL, &plan, &err);
    if (st != S2_OK) {
        fuzz_note("plan on %s refused: %s", arch, err.msg);
        check_failure(st, &err, "s2_plan_attn");
        s2_error_clear(&err);
        return;
    }
    /* The launch geometry and the tile classes at the spec's own length. */
    int n = spec->context_length;
    s2_plan_grid_fwd(&plan, n, 1);
    s2_plan_grid_dq(&plan, n, 1);
    s2_plan_grid_dkdv(&plan, n, 1);
    s2_plan_grid_pre(&plan, n);
    for (int cls = 0; cls < 2; cls++) {
        int qt_last = (n - 1) / plan.fwd_block_m;
        for (int qt = 0; qt <= qt_last; qt += qt_last > 0 ? qt_last : 1) {
            int kb, ke;
            s2_plan_key_tiles(&plan, cls, qt, n, &kb, &ke);
            FUZZ_CHECK(kb >= 0 && kb <= ke, "key tiles [%d, %d) of query tile %d", kb, ke, qt);
            s2_plan_classify(&plan, cls, qt, kb, n);
            if (ke > kb)
                s2_plan_classify(&plan, cls, qt, ke - 1, n);
        }
    }
    fuzz_note("planned on %s%s", arch, tile_text ? " with a tile" : "");
    for (int u = 0; emit && u < S2_UNIT_ATTN_COUNT; u++) {
        char *src = NULL;
        st = s2_emit_attn(spec, &plan, (s2_attn_unit)u, &src, &err);
        emit_unit_ok(st, src, &err, "s2_emit_attn");
        s2_error_clear(&err);
    }
}

static void exercise(const s2_spec *spec, const char *tile_text)
{
    char *canon = s2_spec_canonical(spec);
    FUZZ_CHECK(canon, "no canonical text");
    uint8_t hash[32];
    s2_sha256(canon, strlen(canon), hash);
    FUZZ_CHECK(memcmp(hash, spec->hash, 32) == 0, "hash is not the canonical text's");
    free(canon);
    char where[256];
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        s2_spec_where(spec, keys[i], where, sizeof where);

    s2_lora_plan lp;
    s2_plan_lora(spec, &lp);
    char hex[65];
    s2_plan_attn_identity(spec, hex);

    /* Every arch of the spec plans; the first one's units are emitted. */
    for (int a = 0; a < spec->n_arch; a++)
        plan_and_emit(spec, spec->arch[a], NULL, a == 0);
    if (tile_text)
        plan_and_emit(spec, spec->arch[0], tile_text, 0);
    for (int u = 0; u < S2_UNIT_ATTN_COUNT; u++)
        s2_plan_tile_space(spec, "sm_90a", (s2_attn_unit)u, NULL, 0);

    s2_error err = {0};
    char *src = NULL;
    s2_status st = s2_emit_train(spec, &src, &err);
    emit_unit_ok(st, src, &err, "s2_emit_train");
    s2_error_clear(&err);
    src = NULL;
    st = s2_emit_lora(spec->dtype, spec->lora.rank, &src, &err);
    emit_unit_ok(st, src, &err, "s2_emit_lora");
    s2_error_clear(&err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_part part[MAX_PARTS];
    int n = fuzz_split(data, size, part, MAX_PARTS);
    char *text[MAX_PARTS] = {0};
    s2_spec_override ov[MAX_PARTS];
    int n_ov = 0;
    const char *tile = NULL;
    for (int i = 0; i < n; i++) {
        text[i] = fuzz_cstr(part[i].p, part[i].n);
        if (i == 0)
            continue;
        if (!strncmp(text[i], "tile:", 5))
            tile = text[i] + 5;
        else
            ov[n_ov++] = (s2_spec_override){text[i]};
    }

    static s2_spec spec; /* 10 KB: off the stack */
    s2_error err = {0};
    s2_status st = s2_spec_load_string(text[0], NAME, ov, n_ov, &spec, &err);
    if (st == S2_OK) {
        fuzz_note("spec %s loaded", spec.name);
        exercise(&spec, tile);
    } else {
        fuzz_note("spec refused: %s", err.msg);
        check_failure(st, &err, "s2_spec_load_string");
        FUZZ_CHECK(strstr(err.msg, NAME) || strstr(err.msg, "--set"),
                   "the message names neither the spec nor the override: %s", err.msg);
    }
    s2_error_clear(&err);
    for (int i = 0; i < n; i++)
        free(text[i]);
    return 0;
}

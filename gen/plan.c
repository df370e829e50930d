/* plan.c — spec -> derived constants and geometry of the S²-Attn kernels. */
#include "plan.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const fwd_kernels[] = {"s2_attn_fwd"};
static const char *const bwd_kernels[] = {"s2_attn_bwd_pre", "s2_attn_bwd_dq", "s2_attn_bwd_dkdv",
                                          "s2_attn_bwd_dq_convert"};

const char *s2_attn_unit_name(s2_attn_unit u)
{
    return u == S2_UNIT_ATTN_FWD ? "attn_fwd" : u == S2_UNIT_ATTN_BWD ? "attn_bwd" : "?";
}

int s2_attn_unit_kernels(s2_attn_unit u, const char *const **names)
{
    if (u == S2_UNIT_ATTN_FWD) {
        *names = fwd_kernels;
        return 1;
    }
    *names = bwd_kernels;
    return 4;
}

s2_attn_tile s2_plan_default_tile(const char *arch, int head_dim)
{
    if (!strcmp(arch, "sm_90a") && (head_dim == 64 || head_dim == 128)) {
        /* Hopper: wgmma forward and backward. Measured on an H200 at cd6dba4 (bench/RESULTS.md,
         * 2026-11-25): llama2-7b-32k's tune picked these; against the mma.sync default the
         * forward is 1.33x and the backward 1.56x faster at N = 32k, and at 8k and 16k both
         * win too (d = 64 and 128). Re-tuned on an H100 at 3184cbb (2026-11-26): still the
         * forward's best, the backward within 2 % of it. For d = 64, since the forward loads
         * behind its S (H100, 2026-11-26, N = 16k, bench/RESULTS.md): 64-key tiles on four
         * stages make the forward 10 % faster (0.764 -> 0.687 ms) and one warpgroup a backward
         * block 2.4 % (f+b 3.165 -> 3.088 ms); at d = 128 both lose (8k forward 0.334 ->
         * 0.364, f+b 1.35 -> 1.69). The mbarrier rings with warpgroup turns (fwd_mbar,
         * bwd_mbar; H100, 2026-11-26, three rounds each, bench/RESULTS.md): at d = 128 the
         * forward 8 % faster (8k 0.333 -> 0.307 ms, 16k 1.118 -> 1.032), 8k f+b 3 % (1.349 ->
         * 1.304); at d = 64 both slower (16k forward 0.691 -> 0.709, f+b 3.03 -> 3.21).
         * The TMA forward (fwd_tma; H100, 2026-12-06, bench/RESULTS.md) on two stages at
         * d = 128: forward 8k 0.308 -> 0.284 ms, 16k 1.026 -> 0.927, 32k 4.066 -> 3.350, 64k
         * 15.763 -> 14.127, 100k 38.229 -> 34.821 (617-657 TF/s from 32k on); at d = 64 no
         * gain without the overlap below (16k 0.692 -> 0.687-0.790). Split mode only:
         * s2_plan_spec_default_tile turns it off for roll-mode specs. Its steps overlapped
         * (fwd_overlap) on three stages (H100, 2026-12-06, two calls of two rounds each,
         * bench/RESULTS.md): forward 8k 0.286 -> 0.284 ms, 16k 0.938 -> 0.913, 32k
         * 3.56-3.77 -> 3.51; on two stages the overlap loses (8k 0.321, 16k 1.047), and three
         * stages alone win only at 32k (8k 0.294, 16k 0.951, 32k 3.435). At d = 64 the same
         * overlapped TMA forward (H100, 2026-12-06, two calls at 16k with the peers, 663beb9):
         * forward 0.704 -> 0.668 and 0.685 -> 0.673 ms, f+b 3.068 -> 2.974 and 3.084 -> 2.997;
         * the backward keeps one warpgroup a block (two on mbarriers: f+b 3.170). */
        s2_attn_tile t = {.fwd_wgmma = 1, .fwd_warps = 8, .fwd_strips = 1, .fwd_block_n = 128,
                          .fwd_stages = 3, .fwd_mbar = 1, .fwd_tma = 1, .fwd_overlap = 1,
                          .bwd_wgmma = 1, .bwd_warps = 8, .bwd_block_n = 64, .bwd_stages = 4,
                          .bwd_mbar = 1};
        if (head_dim == 64)
            t.bwd_warps = 4, t.bwd_mbar = 0;
        return t;
    }
    /* Measured on an H100 (bench/RESULTS.md, 2026-11-25): two strips of 32 keys beat one
     * strip of 64 or 128 by 20-25 % in the forward at d = 128. */
    s2_attn_tile t = {.fwd_warps = 4, .fwd_strips = 2, .fwd_block_n = 32, .fwd_stages = 2,
                      .bwd_warps = 4, .bwd_block_n = 32, .bwd_stages = 2};
    if (head_dim > 128)
        t.fwd_strips = 1; /* the O accumulators of d = 256 leave no room for a second strip */
    return t;
}

s2_attn_tile s2_plan_spec_default_tile(const s2_spec *spec, const char *arch)
{
    s2_attn_tile t = s2_plan_default_tile(arch, spec->model.head_dim);
    if (t.fwd_tma && spec->s2attn.shift_mode == S2_SHIFT_ROLL && spec->s2attn.shift) {
        /* the default before the TMA forward, on cp.async: at d = 128 the same rings and
         * warpgroups on three stages, at d = 64 64-key tiles on four stages without mbarriers */
        t.fwd_tma = t.fwd_overlap = t.fwd_persist = 0;
        t.fwd_stages = 3;
        if (spec->model.head_dim == 64)
            t.fwd_block_n = 64, t.fwd_stages = 4, t.fwd_mbar = 0;
    }
    if (t.fwd_tma && spec->model.head_dim == 128 &&
        spec->model.num_kv_heads == spec->model.num_heads &&
        spec->s2attn.group_size >= S2_PLAN_ORDERED_DQ_MIN_GROUP &&
        (long)spec->context_length * spec->model.num_heads <= (long)INT_MAX * t.bwd_warps) {
        /* Long groups: the ordered dQ (the TMA dK/dV kernel adds dQ by bulk reductions in a fixed
         * order, no dQ kernel; the same bits every run). f+b against the tile above, H100, the
         * same call each (bench/RESULTS.md): G 8192 (N 32k) 16.49 vs 16.98 ms and 16.24 vs
         * 16.91, G 16384 64.63 vs 67.88, G 25600 156.9 vs 165.8 (2026-12-07, two rounds), with
         * cuDNN in the call 0.89x and 0.96x its time at 64k and 100k against 0.95x and 1.01x;
         * at G 2048 it is 7 % slower and at 4096 the same. It needs the TMA loads (not with
         * roll mode's shift: the test above) and head_dim 128; with grouped heads it was 15 %
         * slower at G 4096 and is not measured longer, so they keep the dQ kernel. Its delta
         * comes from s2_attn_bwd_pre, one warp a (token, head) row: the spec's own context must
         * fit that grid (the dQ kernel forms delta itself and has no such limit). */
        t.bwd_stages = 2, t.bwd_atomic_dq = 2, t.bwd_tma = 1;
    }
    return t;
}

/* The tile keys and the widest range of each (the plan then checks the combinations: which
 * widths, with which head_dim, arch and shared memory); pow2: only the powers of two in it, the
 * values check_fwd_tile, check_bwd_tile and their wgmma rules apply before any combination. */
/* hopper: 1 = the value 1 needs sm_90a (Hopper's wgmma or TMA). */
static const struct {
    const char *name;
    size_t off;
    int min, max, pow2, hopper;
} tile_keys[] = {
    {"fwd_warps", offsetof(s2_attn_tile, fwd_warps), 1, 8, 0, 0},
    {"fwd_strips", offsetof(s2_attn_tile, fwd_strips), 1, 2, 0, 0},
    {"fwd_block_n", offsetof(s2_attn_tile, fwd_block_n), 32, 128, 1, 0},
    {"fwd_stages", offsetof(s2_attn_tile, fwd_stages), 1, 4, 0, 0},
    {"fwd_wgmma", offsetof(s2_attn_tile, fwd_wgmma), 0, 1, 0, 1},
    {"fwd_mbar", offsetof(s2_attn_tile, fwd_mbar), 0, 1, 0, 0},
    {"fwd_tma", offsetof(s2_attn_tile, fwd_tma), 0, 1, 0, 1},
    {"fwd_overlap", offsetof(s2_attn_tile, fwd_overlap), 0, 1, 0, 1},
    {"fwd_persist", offsetof(s2_attn_tile, fwd_persist), 0, 1, 0, 1},
    {"bwd_warps", offsetof(s2_attn_tile, bwd_warps), 1, 8, 0, 0},
    {"bwd_block_n", offsetof(s2_attn_tile, bwd_block_n), 32, 64, 1, 0},
    {"bwd_stages", offsetof(s2_attn_tile, bwd_stages), 1, 4, 0, 0},
    {"bwd_atomic_dq", offsetof(s2_attn_tile, bwd_atomic_dq), 0, 2, 0, 0},
    {"bwd_wgmma", offsetof(s2_attn_tile, bwd_wgmma), 0, 1, 0, 1},
    {"bwd_mbar", offsetof(s2_attn_tile, bwd_mbar), 0, 1, 0, 0},
    {"bwd_tma", offsetof(s2_attn_tile, bwd_tma), 0, 1, 0, 1},
#ifdef S2_TEST_BROKEN_TILE
    {"test_broken", offsetof(s2_attn_tile, test_broken), 0, 1, 0, 0},
#endif
};
#define N_TILE_KEYS ((int)(sizeof tile_keys / sizeof tile_keys[0]))

/* The names of the tile keys, "a, b, c" (hopper_only: of those whose 1 needs sm_90a, "a, b or
 * c"), into buf of n bytes; returns buf. */
static const char *tile_key_names(char *buf, size_t n, int hopper_only)
{
    int count = 0, last = -1;
    for (int k = 0; k < N_TILE_KEYS; k++)
        if (!hopper_only || tile_keys[k].hopper)
            count++, last = k;
    size_t used = 0;
    buf[0] = '\0';
    for (int k = 0, i = 0; k < N_TILE_KEYS && used < n; k++) {
        if (hopper_only && !tile_keys[k].hopper)
            continue;
        const char *sep = i == 0 ? "" : hopper_only && k == last && count > 1 ? " or " : ", ";
        used += (size_t)snprintf(buf + used, n - used, "%s%s", sep, tile_keys[k].name);
        i++;
    }
    return buf;
}

s2_status s2_plan_parse_tile(const char *text, s2_attn_tile *t, s2_error *err)
{
    const char *p = text;
    while (*p) {
        const char *eq = strchr(p, '=');
        const char *end = strchr(p, ',');
        if (!end)
            end = p + strlen(p);
        if (!eq || eq > end)
            return s2_error_set(err, S2_ERR_INVALID, "tile '%s': expected key=value at '%.*s'",
                                text, (int)(end - p), p);
        int k = 0;
        while (k < N_TILE_KEYS && (strlen(tile_keys[k].name) != (size_t)(eq - p) ||
                                   strncmp(tile_keys[k].name, p, (size_t)(eq - p)) != 0))
            k++;
        if (k == N_TILE_KEYS) {
            char names[S2_PLAN_TILE_STR_MAX];
            return s2_error_set(err, S2_ERR_INVALID, "tile '%s': unknown key '%.*s'; valid: %s",
                                text, (int)(eq - p), p, tile_key_names(names, sizeof names, 0));
        }
        char *num_end;
        errno = 0;
        long v = strtol(eq + 1, &num_end, 10);
        if (num_end != end || num_end == eq + 1 || !(isdigit((unsigned char)eq[1]) ||
                                                     eq[1] == '-' || eq[1] == '+'))
            return s2_error_set(err, S2_ERR_INVALID, "tile '%s': %s needs an integer, got '%.*s'",
                                text, tile_keys[k].name, (int)(end - eq - 1), eq + 1);
        if (errno == ERANGE || v < tile_keys[k].min || v > tile_keys[k].max)
            return s2_error_set(err, S2_ERR_INVALID,
                                "tile '%s': %s = %.*s is out of range: valid %d..%d", text,
                                tile_keys[k].name, (int)(end - eq - 1), eq + 1, tile_keys[k].min,
                                tile_keys[k].max);
        *(int *)((char *)t + tile_keys[k].off) = (int)v;
        p = *end ? end + 1 : end;
    }
    return S2_OK;
}

s2_status s2_plan_check_tile_text(const char *text, const char *arch, s2_error *err)
{
    s2_attn_tile all;
    s2_status st = s2_plan_parse_tile(text, &all, err); /* keys known, values integers */
    if (st)
        return st;
    /* Then each key=value alone: a key named twice is refused, not settled by the last. */
    int seen[N_TILE_KEYS] = {0}, wgmma = 0;
    for (const char *p = text; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        char pair[64];
        snprintf(pair, sizeof pair, "%.*s", (int)len, p);
        s2_attn_tile t;
        memset(&t, 0xff, sizeof t); /* -1 in every field: the parser never writes a negative */
        s2_plan_parse_tile(pair, &t, NULL);
        for (int k = 0; k < N_TILE_KEYS; k++) {
            const int v = *(const int *)((const char *)&t + tile_keys[k].off);
            if (v < 0)
                continue;
            if (seen[k]++)
                return s2_error_set(err, S2_ERR_INVALID, "tile '%s': %s given twice", text,
                                    tile_keys[k].name);
            const int lo = tile_keys[k].min, hi = tile_keys[k].max;
            wgmma |= tile_keys[k].hopper && v == 1;
            if (v >= lo && v <= hi && (!tile_keys[k].pow2 || (v & (v - 1)) == 0))
                continue;
            char valid[64];
            size_t used = 0;
            if (tile_keys[k].pow2)
                for (int q = lo; q <= hi; q *= 2)
                    used += (size_t)snprintf(valid + used, sizeof valid - used, "%s%d",
                                             q == lo ? "" : ", ", q);
            else
                snprintf(valid, sizeof valid, "%d..%d", lo, hi);
            return s2_error_set(err, S2_ERR_INVALID, "tile '%s': %s = %d, valid: %s", text,
                                tile_keys[k].name, v, valid);
        }
        p += len + (end ? 1 : 0);
    }
    if (arch && strcmp(arch, "sm_90a") && wgmma) {
        char names[S2_PLAN_TILE_STR_MAX];
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile '%s': %s = 1 needs sm_90a (Hopper's wgmma and TMA), not %s",
                            text, tile_key_names(names, sizeof names, 1), arch);
    }
    return S2_OK;
}

const char *s2_plan_tile_str(const s2_attn_tile *t, char *buf, size_t n)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int k = 0; k < N_TILE_KEYS && used < n; k++)
        used += (size_t)snprintf(buf + used, n - used, "%s%s=%d", k ? "," : "", tile_keys[k].name,
                                 *(const int *)((const char *)t + tile_keys[k].off));
    return buf;
}

void s2_plan_attn_identity(const s2_spec *spec, char hex[65])
{
    char text[512];
    snprintf(text, sizeof text,
             "s2attn dtype=%s head_dim=%d num_heads=%d num_kv_heads=%d group_size=%d shift=%d "
             "shift_mode=%s softmax_scale=%.17g",
             s2_dtype_name(spec->dtype), spec->model.head_dim, spec->model.num_heads,
             spec->model.num_kv_heads, spec->s2attn.group_size, spec->s2attn.shift,
             s2_shift_mode_name(spec->s2attn.shift_mode), spec->s2attn.softmax_scale);
    uint8_t h[32];
    s2_sha256(text, strlen(text), h);
    s2_hex(h, 32, hex);
}

/* Per-block shared memory an arch allows (opt-in), bytes. */
static int smem_limit(const char *arch)
{
    if (!strcmp(arch, "sm_80"))
        return 163 * 1024;
    if (!strcmp(arch, "sm_86") || !strcmp(arch, "sm_89"))
        return 99 * 1024;
    return 227 * 1024; /* sm_90, sm_90a */
}

/* Bytes of a scalar backward tile of rows rows (rows of d + 2 halves). */
static int bwd_tile_bytes(int rows, int d) { return rows * (d + 2) * 2; }

/* Shared memory of the forward: Q and the K/V stages (the wgmma layout has no row pad but
 * needs 1 KiB to align its panels; with fwd_mbar two 8-byte mbarriers a stage follow, with
 * fwd_tma Q's own, padded to 16 bytes, and with fwd_persist Q's release and the tile handed to
 * the consumers, 16 more). */
static int fwd_smem(const s2_attn_tile *t, int d)
{
    const int bm = 16 * t->fwd_strips * t->fwd_warps;
    if (t->fwd_wgmma)
        return (bm + 2 * t->fwd_stages * t->fwd_block_n) * d * 2 + 1024 +
               (t->fwd_mbar ? 16 * t->fwd_stages : 0) + (t->fwd_tma ? 16 : 0) +
               (t->fwd_persist ? 16 : 0);
    return (bm + 2 * t->fwd_stages * t->fwd_block_n) * (d + 8) * 2;
}

/* Threads of a forward block: fwd_warps, and with fwd_tma the producer warpgroup beside them. */
static int fwd_threads(const s2_attn_tile *t)
{
    return 32 * t->fwd_warps + (t->fwd_tma ? 128 : 0);
}

/* The wgmma forward's own rules (see s2_attn_tile.fwd_wgmma). */
static s2_status check_fwd_wgmma(const s2_attn_tile *t, int d, const char *arch, s2_error *err)
{
    if (t->fwd_wgmma != 0 && t->fwd_wgmma != 1)
        return s2_error_set(err, S2_ERR_INVALID, "tile: fwd_wgmma = %d, valid: 0, 1",
                            t->fwd_wgmma);
    if (t->fwd_mbar != 0 && t->fwd_mbar != 1)
        return s2_error_set(err, S2_ERR_INVALID, "tile: fwd_mbar = %d, valid: 0, 1", t->fwd_mbar);
    if (t->fwd_mbar && !t->fwd_wgmma)
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: fwd_mbar = 1 with fwd_wgmma 0: valid only with fwd_wgmma = 1 "
                            "(the mma.sync forward steps on block barriers; or fwd_mbar = 0)");
    if (t->fwd_tma != 0 && t->fwd_tma != 1)
        return s2_error_set(err, S2_ERR_INVALID, "tile: fwd_tma = %d, valid: 0, 1", t->fwd_tma);
    if (t->fwd_tma && (!t->fwd_wgmma || !t->fwd_mbar || t->fwd_warps != 8 || t->fwd_stages < 2))
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: fwd_tma = 1 with fwd_wgmma %d, fwd_mbar %d, fwd_warps %d, "
                            "fwd_stages %d; valid with fwd_wgmma 1, fwd_mbar 1, fwd_warps 8 (the "
                            "two consumer warpgroups beside the producer) and fwd_stages 2..4",
                            t->fwd_wgmma, t->fwd_mbar, t->fwd_warps, t->fwd_stages);
    if (t->fwd_overlap != 0 && t->fwd_overlap != 1)
        return s2_error_set(err, S2_ERR_INVALID, "tile: fwd_overlap = %d, valid: 0, 1",
                            t->fwd_overlap);
    if (t->fwd_overlap && !t->fwd_tma)
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: fwd_overlap = 1 with fwd_tma 0: valid only with fwd_tma = 1 "
                            "(the overlapped steps are the TMA forward's; or fwd_overlap = 0)");
    if (t->fwd_persist != 0 && t->fwd_persist != 1)
        return s2_error_set(err, S2_ERR_INVALID, "tile: fwd_persist = %d, valid: 0, 1",
                            t->fwd_persist);
    if (t->fwd_persist && !t->fwd_overlap)
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: fwd_persist = 1 with fwd_overlap 0: valid only with "
                            "fwd_overlap = 1 (the persistent blocks run the overlapped TMA "
                            "forward; or fwd_persist = 0)");
    if (!t->fwd_wgmma)
        return S2_OK;
    if (strcmp(arch, "sm_90a"))
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: fwd_wgmma = 1 needs sm_90a (Hopper's wgmma), not %s", arch);
    if (d != 64 && d != 128)
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: fwd_wgmma = 1 with head_dim %d: valid with 64 and 128", d);
    if ((t->fwd_warps != 4 && t->fwd_warps != 8) || t->fwd_strips != 1 ||
        (t->fwd_block_n != 64 && t->fwd_block_n != 128))
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: fwd_wgmma = 1 with fwd_warps %d, fwd_strips %d, fwd_block_n %d; "
                            "valid: fwd_warps 4 or 8, fwd_strips 1, fwd_block_n 64 or 128",
                            t->fwd_warps, t->fwd_strips, t->fwd_block_n);
    return S2_OK;
}

static s2_status check_fwd_tile(const s2_attn_tile *t, int d, int limit, const char *arch,
                                s2_error *err)
{
    s2_status wst = check_fwd_wgmma(t, d, arch, err);
    if (wst)
        return wst;
#ifdef S2_TEST_BROKEN_TILE
    if (t->test_broken != 0 && t->test_broken != 1)
        return s2_error_set(err, S2_ERR_INVALID, "tile: test_broken = %d, valid: 0, 1",
                            t->test_broken);
#else
    if (t->test_broken)
        return s2_error_set(err, S2_ERR_INVALID, "tile: test_broken exists only in test builds");
#endif
    if (t->fwd_warps < 1 || t->fwd_warps > 8)
        return s2_error_set(err, S2_ERR_INVALID, "tile: fwd_warps = %d, valid 1..8", t->fwd_warps);
    if (t->fwd_strips != 1 && t->fwd_strips != 2)
        return s2_error_set(err, S2_ERR_INVALID, "tile: fwd_strips = %d, valid: 1, 2",
                            t->fwd_strips);
    if (!t->fwd_wgmma && t->fwd_strips == 2 && (d > 128 || t->fwd_block_n > (d > 64 ? 32 : 64)))
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: fwd_strips = 2 with head_dim %d and fwd_block_n %d spills "
                            "registers; valid: fwd_strips 2 with fwd_block_n 32 for head_dim 96 and "
                            "128, up to 64 for 64, fwd_strips 1 above 128",
                            d, t->fwd_block_n);
    if (t->fwd_block_n != 32 && t->fwd_block_n != 64 && t->fwd_block_n != 128)
        return s2_error_set(err, S2_ERR_INVALID, "tile: fwd_block_n = %d, valid: 32, 64, 128",
                            t->fwd_block_n);
    if (d > 128 && t->fwd_block_n != 32)
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: fwd_block_n = %d with head_dim %d: valid 32 (wider tiles spill "
                            "registers next to the %d-column O accumulators)", t->fwd_block_n, d, d);
    if (t->fwd_stages < 1 || t->fwd_stages > 4)
        return s2_error_set(err, S2_ERR_INVALID, "tile: fwd_stages = %d, valid 1..4",
                            t->fwd_stages);
    int bytes = fwd_smem(t, d);
    if (bytes > limit)
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: fwd_warps %d, fwd_strips %d, fwd_block_n %d, fwd_stages %d with "
                            "head_dim %d need %d bytes of shared memory; this arch allows %d",
                            t->fwd_warps, t->fwd_strips, t->fwd_block_n, t->fwd_stages, d, bytes,
                            limit);
    return S2_OK;
}

/* Whether the plan's dQ kernel forms delta = rowsum(dO ∘ O) itself (the deterministic Hopper
 * backward runs one); else s2_attn_bwd_pre does (s2_attn_plan.bwd_dq_delta). */
static int dq_kernel_forms_delta(const s2_attn_tile *t)
{
    return t->bwd_wgmma && !t->bwd_atomic_dq;
}

static int bwd_smem(const s2_attn_tile *t, int d, int *dq, int *dkdv)
{
    if (t->bwd_wgmma) { /* swizzled panels without row pad, plus 1 KiB to align them, and with
                         * bwd_mbar two 8-byte mbarriers a stage at the end (with bwd_tma the
                         * dK/dV kernel's K and V rows have one more, padded to 16 bytes) */
        *dq = (2 * 16 * t->bwd_warps + 2 * t->bwd_stages * t->bwd_block_n) * d * 2 + 1024 +
              (t->bwd_mbar ? 16 * t->bwd_stages : 0);
        *dkdv = *dq + 2 * t->bwd_stages * t->bwd_block_n * (int)sizeof(float) +
                (t->bwd_tma ? 16 : 0);
        if (t->bwd_atomic_dq) /* dS^T of one tile, [keys][64 queries] swizzled, 1 KiB aligned */
            *dkdv += 16 * t->bwd_warps * 64 * 2 + 1024;
        if (t->bwd_atomic_dq && t->bwd_tma) /* each consumer warpgroup's fp32 dQ, 64 x 64 (at
                                             * d = 128 a second dS^T buffer and the handover
                                             * mbarriers of the two: 8, and with the ordered
                                             * dQ's reducer 4 more for the dQ boxes) */
            *dkdv += 2 * 64 * 64 * (int)sizeof(float) +
                     (d == 128 ? 16 * t->bwd_warps * 64 * 2 + 8 * (t->bwd_atomic_dq == 2 ? 12 : 8)
                               : 0) +
                     (t->bwd_atomic_dq == 2 ? 16 : 0); /* the ordered dQ's ticket (static) */
        return *dkdv;
    }
    int rows = 2 * 16 * t->bwd_warps + 2 * t->bwd_stages * t->bwd_block_n;
    *dq = rows * (d + 8) * 2;
    *dkdv = *dq + 2 * t->bwd_stages * t->bwd_block_n * (int)sizeof(float);
    if (t->bwd_atomic_dq) /* dS^T of one tile, [keys][queries + 8 pad], for the dQ product */
        *dkdv += 16 * t->bwd_warps * (t->bwd_block_n + 8) * 2;
    return *dkdv;
}

static s2_status check_bwd_wgmma(const s2_attn_tile *t, int d, const char *arch, s2_error *err)
{
    if (t->bwd_wgmma != 0 && t->bwd_wgmma != 1)
        return s2_error_set(err, S2_ERR_INVALID, "tile: bwd_wgmma = %d, valid: 0, 1",
                            t->bwd_wgmma);
    if (t->bwd_mbar != 0 && t->bwd_mbar != 1)
        return s2_error_set(err, S2_ERR_INVALID, "tile: bwd_mbar = %d, valid: 0, 1", t->bwd_mbar);
    /* (two stages: the ring's loads at the top of each step spill in the dK/dV kernel; the
     * atomic-dQ kernel streams on commit groups only, unless the producer of bwd_tma loads) */
    if (t->bwd_mbar && !(t->bwd_tma == 1 && t->bwd_atomic_dq) &&
        (!t->bwd_wgmma || t->bwd_stages < 3 || t->bwd_atomic_dq))
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: bwd_mbar = 1 with bwd_wgmma %d, bwd_stages %d, bwd_atomic_dq "
                            "%d; valid only with bwd_wgmma 1, bwd_stages 3..4, bwd_atomic_dq 0 "
                            "(or bwd_mbar = 0, or bwd_tma = 1 with bwd_atomic_dq 1 or 2)",
                            t->bwd_wgmma, t->bwd_stages, t->bwd_atomic_dq);
    if (t->bwd_tma != 0 && t->bwd_tma != 1)
        return s2_error_set(err, S2_ERR_INVALID, "tile: bwd_tma = %d, valid: 0, 1", t->bwd_tma);
    /* (with the deterministic dQ the dQ kernel's ring needs three stages; the atomic dQ has
     * no dQ kernel, and at head_dim 128 only two stages leave room for its fp32 dQ) */
    if (t->bwd_tma && (!t->bwd_wgmma || !t->bwd_mbar || t->bwd_warps != 8 ||
                       (t->bwd_stages < 3 && !t->bwd_atomic_dq)))
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: bwd_tma = 1 with bwd_wgmma %d, bwd_mbar %d, bwd_warps %d, "
                            "bwd_stages %d, bwd_atomic_dq %d; valid with bwd_wgmma 1, bwd_mbar 1, "
                            "bwd_warps 8 (the two consumer warpgroups beside the producer), and "
                            "bwd_stages 3..4 with bwd_atomic_dq 0 or 2..4 with bwd_atomic_dq 1 "
                            "or 2",
                            t->bwd_wgmma, t->bwd_mbar, t->bwd_warps, t->bwd_stages,
                            t->bwd_atomic_dq);
    if (!t->bwd_wgmma)
        return S2_OK;
    if (strcmp(arch, "sm_90a"))
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: bwd_wgmma = 1 needs sm_90a (Hopper's wgmma), not %s", arch);
    if (d != 64 && d != 128)
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: bwd_wgmma = 1 with head_dim %d: valid with 64 and 128", d);
    /* (128-wide tiles spill: a step holds S and dP of its tile beside the fragments of the
     * step before, whose products run behind them) */
    if ((t->bwd_warps != 4 && t->bwd_warps != 8) || t->bwd_block_n != 64)
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: bwd_wgmma = 1 with bwd_warps %d, bwd_block_n %d; valid: "
                            "bwd_warps 4 or 8, bwd_block_n 64", t->bwd_warps, t->bwd_block_n);
    if (t->bwd_stages < 2) /* the dQ kernel's step reads the key tile before it too */
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: bwd_wgmma = 1 with bwd_stages %d: valid 2..4 (each dQ step "
                            "reads the key tile before it too)", t->bwd_stages);
    return S2_OK;
}

static s2_status check_bwd_tile(const s2_attn_tile *t, int d, int limit, const char *arch,
                                s2_error *err)
{
    s2_status wst = check_bwd_wgmma(t, d, arch, err);
    if (wst)
        return wst;
    if (t->bwd_warps < 1 || t->bwd_warps > 8)
        return s2_error_set(err, S2_ERR_INVALID, "tile: bwd_warps = %d, valid 1..8", t->bwd_warps);
    if (t->bwd_block_n != 32 && t->bwd_block_n != 64)
        return s2_error_set(err, S2_ERR_INVALID, "tile: bwd_block_n = %d, valid: 32, 64",
                            t->bwd_block_n);
    if (t->bwd_stages < 1 || t->bwd_stages > 4)
        return s2_error_set(err, S2_ERR_INVALID, "tile: bwd_stages = %d, valid 1..4",
                            t->bwd_stages);
    if (t->bwd_atomic_dq < 0 || t->bwd_atomic_dq > 2)
        return s2_error_set(err, S2_ERR_INVALID, "tile: bwd_atomic_dq = %d, valid: 0, 1, 2",
                            t->bwd_atomic_dq);
    /* (the ordered dQ waits in the TMA kernel's split-dims dQ, one step late: at head_dim 64
     * each warpgroup adds every dim, and turns would make the two wait for each other) */
    if (t->bwd_atomic_dq == 2 && (!t->bwd_tma || d != 128))
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: bwd_atomic_dq = 2 (the ordered dQ) with bwd_tma %d, head_dim "
                            "%d; valid only with bwd_tma 1 and head_dim 128", t->bwd_tma, d);
    if (d > 128 && t->bwd_atomic_dq)
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: bwd_atomic_dq = %d with head_dim %d: valid only with the "
                            "tensor-core backward (head_dim <= 128)", t->bwd_atomic_dq, d);
    if (d > 128) { /* the scalar backward: 2 rows a warp, static shared memory */
        int bytes = 2 * bwd_tile_bytes(2 * t->bwd_warps, d) + 2 * bwd_tile_bytes(32, d);
        if (bytes > 48 * 1024)
            return s2_error_set(err, S2_ERR_INVALID,
                                "tile: bwd_warps = %d with head_dim %d needs %d bytes of static "
                                "shared memory, more than 49152; use fewer bwd_warps",
                                t->bwd_warps, d, bytes);
        return S2_OK;
    }
    int dq, dkdv;
    if (bwd_smem(t, d, &dq, &dkdv) > limit)
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: bwd_warps %d, bwd_block_n %d, bwd_stages %d with head_dim %d need "
                            "%d bytes of shared memory; this arch allows %d",
                            t->bwd_warps, t->bwd_block_n, t->bwd_stages, d, dkdv, limit);
    if (!t->bwd_wgmma && d > 64 && t->bwd_block_n > 32)
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: bwd_block_n = %d with head_dim %d: valid 32 (wider tiles spill "
                            "registers next to the dK and dV accumulators)", t->bwd_block_n, d);
    return S2_OK;
}

/* 1 when some group start of either head class is not a multiple of every tile size. */
static int needs_group_edge_mask(const s2_attn_plan *p)
{
    const int sizes[4] = {p->fwd_block_m, p->tile.fwd_block_n, p->bwd_block_m, p->tile.bwd_block_n};
    for (int i = 0; i < 4; i++)
        if (p->G % sizes[i] || p->shift_off % sizes[i])
            return 1;
    return 0;
}

/* "KEY = V is out of range: valid LO..HI", at the key's position in the spec. */
static s2_status spec_range(const s2_spec *spec, const char *key, long v, long lo, long hi,
                            s2_error *err)
{
    if (v >= lo && v <= hi)
        return S2_OK;
    char at[S2_SPEC_PATH_MAX + 32];
    return s2_error_set(err, S2_ERR_SPEC, "%s: error: %s = %ld is out of range: valid %ld..%ld",
                        s2_spec_where(spec, key, at, sizeof at), key, v, lo, hi);
}

/* The loader's ranges of what the plan reads (spec.h), checked again: a plan may be made from an
 * s2_spec that did not come from the loader (the runtime derives full-attention specs). */
static s2_status check_spec_ranges(const s2_spec *spec, s2_error *err)
{
    const s2_model *m = &spec->model;
    const s2_attn_cfg *a = &spec->s2attn;
    s2_status st = spec_range(spec, "context_length", spec->context_length, 1,
                              S2_SPEC_MAX_TOKENS, err);
    if (!st)
        st = spec_range(spec, "model.head_dim", m->head_dim, 32, 256, err);
    if (!st)
        st = spec_range(spec, "model.num_heads", m->num_heads, 2, S2_SPEC_MAX_HEADS, err);
    if (!st)
        st = spec_range(spec, "model.num_kv_heads", m->num_kv_heads, 1, m->num_heads, err);
    if (!st)
        st = spec_range(spec, "s2attn.group_size", a->group_size, 1, S2_SPEC_MAX_TOKENS, err);
    if (!st)
        st = spec_range(spec, "s2attn.shift", a->shift, 0, a->group_size - 1, err);
    if (st)
        return st;
    if (!(a->softmax_scale >= S2_SPEC_REAL_MIN && a->softmax_scale <= S2_SPEC_REAL_MAX)) {
        char at[S2_SPEC_PATH_MAX + 32];
        return s2_error_set(err, S2_ERR_SPEC, "%s: error: s2attn.softmax_scale = %.17g is out of "
                            "range: valid [%g, %g]",
                            s2_spec_where(spec, "s2attn.softmax_scale", at, sizeof at),
                            a->softmax_scale, S2_SPEC_REAL_MIN, S2_SPEC_REAL_MAX);
    }
    return S2_OK;
}

/* Whole groups of row tiles a head, in 64 bits (see grid_tiles below). */
static long grid_tiles_l(const s2_attn_plan *p, long max_seqlen, int bm)
{
    const long gt = p->G / bm > 0 ? p->G / bm : 1;
    return ((max_seqlen + bm - 1) / bm + gt - 1) / gt * gt;
}

/* A grid's size against CUDA's limits and the kernels' int arithmetic: gridDim.x <= 2^31 - 1,
 * y and z <= 65535, and for the Hopper kernels the linear block index blockIdx.y * gridDim.x +
 * blockIdx.x (templates/common.cuh s2_block_tile) in int. */
static s2_status check_grid(const char *kernel, long x, long y, long z, int linear, s2_error *err)
{
    if (x > INT_MAX || y > 65535 || z > 65535)
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s needs a grid of %ld x %ld x %ld blocks; CUDA allows at most "
                            "2147483647 x 65535 x 65535", kernel, x, y, z);
    if (linear && x * y > INT_MAX)
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s needs %ld x %ld blocks, and its linear block index must stay "
                            "below 2^31", kernel, x, y);
    return S2_OK;
}

s2_status s2_plan_check_batch(const s2_attn_plan *p, int max_seqlen, int batch, long total_tokens,
                              s2_error *err)
{
    if (max_seqlen < 0 || max_seqlen > S2_SPEC_MAX_TOKENS)
        return s2_error_set(err, S2_ERR_INVALID,
                            "a sequence of %d tokens: valid 0..%d (the kernels' positions and "
                            "group indices are 32-bit ints)", max_seqlen, S2_SPEC_MAX_TOKENS);
    if (batch < 1)
        return s2_error_set(err, S2_ERR_INVALID, "a batch of %d sequences: valid 1..65535",
                            batch);
    if (total_tokens < max_seqlen || total_tokens > INT_MAX)
        return s2_error_set(err, S2_ERR_INVALID,
                            "a batch of %ld tokens whose longest sequence has %d: valid %d.."
                            "2147483647 tokens", total_tokens, max_seqlen, max_seqlen);
    const long fwd = grid_tiles_l(p, max_seqlen, p->fwd_block_m);
    const long bwd = grid_tiles_l(p, max_seqlen, p->bwd_block_m);
    s2_status st = check_grid("s2_attn_fwd", fwd, p->H, batch, p->tile.fwd_wgmma, err);
    if (!st && !p->tile.bwd_atomic_dq)
        st = check_grid("s2_attn_bwd_dq", bwd, p->H, batch, p->tile.bwd_wgmma, err);
    if (!st)
        st = check_grid("s2_attn_bwd_dkdv", bwd, p->Hkv, batch, p->tile.bwd_wgmma, err);
    if (!st && !p->bwd_dq_delta) /* one warp a (token, head) row */
        st = check_grid("s2_attn_bwd_pre",
                        (total_tokens * p->H + p->tile.bwd_warps - 1) / p->tile.bwd_warps, 1, 1,
                        0, err);
    return st;
}

/* One sequence of the spec's own context_length must launch; else the longest that does. */
static s2_status check_context(const s2_spec *spec, const s2_attn_plan *p, s2_error *err)
{
    const int n = spec->context_length;
    s2_error why = {0};
    if (s2_plan_check_batch(p, n, 1, n, &why) == S2_OK)
        return S2_OK;
    int lo = 0, hi = n; /* the grids grow with n: lo launches, hi does not */
    while (hi - lo > 1) {
        const int mid = lo + (hi - lo) / 2;
        if (s2_plan_check_batch(p, mid, 1, mid, NULL) == S2_OK)
            lo = mid;
        else
            hi = mid;
    }
    char at[S2_SPEC_PATH_MAX + 32], heads_at[S2_SPEC_PATH_MAX + 32];
    s2_status st = s2_error_set(err, S2_ERR_SPEC,
                                "%s: error: context_length = %d with model.num_heads = %d (%s) "
                                "is out of range for this tile: %s; valid context_length 1..%d",
                                s2_spec_where(spec, "context_length", at, sizeof at), n,
                                p->H, s2_spec_where(spec, "model.num_heads", heads_at,
                                                    sizeof heads_at),
                                why.msg ? why.msg : "?", lo);
    s2_error_clear(&why);
    return st;
}

s2_status s2_plan_attn(const s2_spec *spec, const char *arch, const s2_attn_tile *tile,
                       s2_attn_plan *p, s2_error *err)
{
    const s2_model *m = &spec->model;
    memset(p, 0, sizeof *p);
    s2_status rst = check_spec_ranges(spec, err);
    if (rst)
        return rst;
    if (m->head_dim % 32 != 0) {
        char at[S2_SPEC_PATH_MAX + 32];
        return s2_error_set(err, S2_ERR_SPEC, "%s: error: head_dim %d: the kernels need a "
                            "multiple of 32 (64, 96, 128, 256)",
                            s2_spec_where(spec, "model.head_dim", at, sizeof at), m->head_dim);
    }
    int rep = m->num_heads / m->num_kv_heads;
    /* Each kv head must serve one shift class only: its dK/dV rows are ordered by that class. */
    if (m->num_heads % 2 != 0 || (m->num_heads / 2) % rep != 0) {
        char at[S2_SPEC_PATH_MAX + 32];
        return s2_error_set(err, S2_ERR_SPEC, "%s: error: num_heads %d with num_kv_heads "
                            "%d puts plain and shifted query heads on one kv head; use an even "
                            "num_kv_heads that divides num_heads",
                            s2_spec_where(spec, "model.num_kv_heads", at, sizeof at),
                            m->num_heads, m->num_kv_heads);
    }
    p->dtype = spec->dtype;
    p->d = m->head_dim;
    p->H = m->num_heads;
    p->Hkv = m->num_kv_heads;
    p->G = spec->s2attn.group_size;
    p->S = spec->s2attn.shift;
    p->mode = spec->s2attn.shift_mode;
    p->scale = spec->s2attn.softmax_scale;
    p->shift_off = p->mode == S2_SHIFT_SPLIT ? p->S : 0;
    p->shift_rot = p->mode == S2_SHIFT_ROLL ? p->S : 0;
    p->tile = tile ? *tile : s2_plan_spec_default_tile(spec, arch);
    p->smem_limit = smem_limit(arch);
    s2_status st = check_fwd_tile(&p->tile, p->d, p->smem_limit, arch, err);
    if (!st)
        st = check_bwd_tile(&p->tile, p->d, p->smem_limit, arch, err);
    if (st)
        return st;
    p->fwd_block_m = 16 * p->tile.fwd_strips * p->tile.fwd_warps;
    p->fwd_threads = fwd_threads(&p->tile);
    p->bwd_threads = 32 * p->tile.bwd_warps;
    /* with bwd_tma a producer warpgroup beside the bwd_warps of the dK/dV kernel */
    p->dkdv_threads = p->bwd_threads + (p->tile.bwd_tma ? 128 : 0);
    p->bwd_tensor_cores = p->d <= 128;
    p->bwd_block_m = (p->bwd_tensor_cores ? 16 : 2) * p->tile.bwd_warps;
    p->mask_group_edge = needs_group_edge_mask(p);
    p->smem_fwd = fwd_smem(&p->tile, p->d);
    if (p->bwd_tensor_cores)
        bwd_smem(&p->tile, p->d, &p->smem_dq, &p->smem_dkdv);
    p->dq_units = (p->tile.bwd_block_n / 16) * (p->d / 32);
    p->bwd_dq_delta = dq_kernel_forms_delta(&p->tile);
    if (p->tile.fwd_tma && p->shift_rot)
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: fwd_tma = 1 with shift_mode roll: the TMA forward loads each "
                            "tile as one box of consecutive rows, and roll mode's last group wraps "
                            "the sequence's tail onto its head; valid with shift_mode split (or "
                            "fwd_tma 0, which gathers rows by position)");
    if (p->tile.bwd_tma && p->shift_rot)
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: bwd_tma = 1 with shift_mode roll: the TMA dK/dV kernel loads "
                            "each tile as one box of consecutive rows, and roll mode's last group "
                            "wraps the sequence's tail onto its head; valid with shift_mode split "
                            "(or bwd_tma 0, which gathers rows by position)");
    return check_context(spec, p, err);
}

/* Candidate values of each field; the plan prunes what cannot run. */
static const int warp_counts[] = {1, 2, 4, 8};
static const int strip_counts[] = {1, 2};
static const int fwd_widths[] = {32, 64, 128};
static const int bwd_widths[] = {32, 64};
static const int stage_counts[] = {1, 2, 3, 4};
static const int wgmma_modes[] = {0, 1};
static const int mbar_modes[] = {0, 1};
static const int tma_modes[] = {0, 1};
static const int overlap_modes[] = {0, 1};
static const int persist_modes[] = {0, 1};
#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* Appends t if the plan accepts it and it is not the default (already first). */
static void space_add(const s2_spec *spec, const char *arch, const s2_attn_tile *t,
                      const s2_attn_tile *def, s2_attn_tile *out, int max, int *n)
{
    if (!memcmp(t, def, sizeof *t))
        return;
    s2_attn_plan p;
    if (s2_plan_attn(spec, arch, t, &p, NULL) != S2_OK)
        return;
    if (*n < max)
        out[*n] = *t;
    (*n)++;
}

int s2_plan_tile_space(const s2_spec *spec, const char *arch, s2_attn_unit unit,
                       s2_attn_tile *out, int max)
{
    const s2_attn_tile def = s2_plan_spec_default_tile(spec, arch);
    s2_attn_plan p;
    if (s2_plan_attn(spec, arch, &def, &p, NULL) != S2_OK)
        return 0; /* the spec itself cannot be planned: nothing to tune */
    int n = 0;
    if (max > 0)
        out[0] = def;
    n++;
    s2_attn_tile t = def;
    if (unit == S2_UNIT_ATTN_FWD) {
        for (int w = 0; w < COUNT(wgmma_modes); w++)
            for (int a = 0; a < COUNT(warp_counts); a++)
                for (int b = 0; b < COUNT(strip_counts); b++)
                    for (int c = 0; c < COUNT(fwd_widths); c++)
                        for (int d = 0; d < COUNT(stage_counts); d++)
                            for (int e = 0; e < COUNT(mbar_modes); e++)
                                for (int f = 0; f < COUNT(tma_modes); f++)
                                    for (int g = 0; g < COUNT(overlap_modes); g++)
                                        for (int h = 0; h < COUNT(persist_modes); h++) {
                                            t.fwd_wgmma = wgmma_modes[w];
                                            t.fwd_warps = warp_counts[a];
                                            t.fwd_strips = strip_counts[b];
                                            t.fwd_block_n = fwd_widths[c];
                                            t.fwd_stages = stage_counts[d];
                                            t.fwd_mbar = mbar_modes[e], t.fwd_tma = tma_modes[f];
                                            t.fwd_overlap = overlap_modes[g];
                                            t.fwd_persist = persist_modes[h];
                                            space_add(spec, arch, &t, &def, out, max, &n);
                                        }
#ifdef S2_TEST_BROKEN_TILE
        t = def; /* the default, miscomputing: the tuner's gate must reject it */
        t.test_broken = 1;
        space_add(spec, arch, &t, &def, out, max, &n);
#endif
        return n;
    }
    /* The scalar backward (d > 128) has no streamed tiles: only its warps vary. */
    const int scalar = !p.bwd_tensor_cores;
    for (int w = 0; w < (scalar ? 1 : COUNT(wgmma_modes)); w++)
        for (int a = 0; a < COUNT(warp_counts); a++)
            for (int c = 0; c < (scalar ? 1 : COUNT(bwd_widths)); c++)
                for (int d = 0; d < (scalar ? 1 : COUNT(stage_counts)); d++)
                    for (int e = 0; e < (scalar ? 1 : 3); e++)
                        for (int f = 0; f < (scalar ? 1 : COUNT(mbar_modes)); f++)
                            for (int g = 0; g < (scalar ? 1 : COUNT(tma_modes)); g++) {
                                t.bwd_warps = warp_counts[a];
                                if (!scalar) {
                                    t.bwd_wgmma = wgmma_modes[w];
                                    t.bwd_block_n = bwd_widths[c];
                                    t.bwd_stages = stage_counts[d];
                                    t.bwd_atomic_dq = e;
                                    t.bwd_mbar = mbar_modes[f], t.bwd_tma = tma_modes[g];
                                }
                                space_add(spec, arch, &t, &def, out, max, &n);
                            }
    return n;
}

static int group_start(const s2_attn_plan *p, int cls, int x)
{
    int s = s2_plan_group(p, cls, x) * p->G - (cls ? p->shift_off : 0);
    return s > 0 ? s : 0;
}

void s2_plan_key_tiles(const s2_attn_plan *p, int cls, int qt, int n, int *kt_begin, int *kt_end)
{
    int x0 = qt * p->fwd_block_m;
    int xlast = (x0 + p->fwd_block_m < n ? x0 + p->fwd_block_m : n) - 1;
    *kt_begin = group_start(p, cls, x0) / p->tile.fwd_block_n;
    *kt_end = xlast / p->tile.fwd_block_n + 1;
}

s2_tile_class s2_plan_classify(const s2_attn_plan *p, int cls, int qt, int kt, int n)
{
    int kb, ke;
    s2_plan_key_tiles(p, cls, qt, n, &kb, &ke);
    if (kt < kb || kt >= ke)
        return S2_TILE_EMPTY;
    int bn = p->tile.fwd_block_n;
    int x0 = qt * p->fwd_block_m;
    int xlast = (x0 + p->fwd_block_m < n ? x0 + p->fwd_block_m : n) - 1;
    int y0 = kt * bn;
    /* The same test as s2_tile_needs_mask() in templates/attn_fwd.cuh. */
    if (p->mask_group_edge && y0 < group_start(p, cls, xlast))
        return S2_TILE_EDGE;
    if (y0 + bn - 1 > x0 || y0 + bn > n)
        return S2_TILE_DIAGONAL;
    return S2_TILE_FULL;
}

static unsigned ceil_div(long a, long b) { return (unsigned)((a + b - 1) / b); }

/* Row tiles of bm rows a head, rounded up to whole groups of tiles (s2_block_tile in
 * templates/common.cuh walks them rank by rank). s2_plan_check_batch() holds it to the
 * launch limits. */
static unsigned grid_tiles(const s2_attn_plan *p, int max_seqlen, int bm)
{
    return (unsigned)grid_tiles_l(p, max_seqlen, bm);
}

s2_dim3 s2_plan_grid_fwd(const s2_attn_plan *p, int max_seqlen, int batch)
{
    return (s2_dim3){grid_tiles(p, max_seqlen, p->fwd_block_m), (unsigned)p->H, (unsigned)batch};
}

s2_dim3 s2_plan_grid_fwd_persist(const s2_attn_plan *p, int max_seqlen, int batch,
                                 int blocks_max)
{
    const s2_dim3 g = s2_plan_grid_fwd(p, max_seqlen, batch);
    const long tiles = (long)g.x * g.y * g.z;
    return (s2_dim3){(unsigned)(tiles < blocks_max ? tiles : blocks_max), 1, 1};
}

s2_dim3 s2_plan_grid_dq(const s2_attn_plan *p, int max_seqlen, int batch)
{
    return (s2_dim3){grid_tiles(p, max_seqlen, p->bwd_block_m), (unsigned)p->H, (unsigned)batch};
}

s2_dim3 s2_plan_grid_dkdv(const s2_attn_plan *p, int max_seqlen, int batch)
{
    return (s2_dim3){grid_tiles(p, max_seqlen, p->bwd_block_m), (unsigned)p->Hkv, (unsigned)batch};
}

s2_dim3 s2_plan_grid_pre(const s2_attn_plan *p, int total_tokens)
{
    return (s2_dim3){ceil_div((long)total_tokens * p->H, p->tile.bwd_warps), 1, 1};
}

/* ---- sequence-parallel windows ---- */

/* The row tiles a window unit cuts: what names them, their rows, and whether their edges must
 * meet qlo (query tiles), klo and the group edges (key tiles), or both. */
typedef struct window_tile {
    const char *name, *role;
    int rows, query, key;
} window_tile;

static int window_tile_list(const s2_attn_plan *p, window_tile t[4])
{
    int n = 0;
    t[n++] = (window_tile){"fwd_block_m", "the forward's query tiles: 16 x fwd_warps x fwd_strips",
                           p->fwd_block_m, 1, 0};
    t[n++] = (window_tile){"fwd_block_n", "the forward's key tiles", p->tile.fwd_block_n, 0, 1};
    if (!p->bwd_tensor_cores) /* the scalar backward masks every pair: its blocks start at */
        return n;             /* qlo and klo, its streamed keys at group starts */
    t[n++] = (window_tile){"bwd_block_m", "the dQ kernel's query tiles and the dK/dV kernel's "
                           "key tiles: 16 x bwd_warps", p->bwd_block_m, 1, 1};
    t[n++] = (window_tile){"bwd_block_n", "the dQ kernel's key tiles and the dK/dV kernel's "
                           "query tiles", p->tile.bwd_block_n, 1, 1};
    return n;
}

static long gcd_l(long a, long b)
{
    while (b) {
        long r = a % b;
        a = b, b = r;
    }
    return a;
}

static long lcm_l(long a, long b) { return a / gcd_l(a, b) * b; }

void s2_plan_window_tiles(const s2_attn_plan *p, int *query_rows, int *key_rows)
{
    window_tile t[4];
    const int n = window_tile_list(p, t);
    long q = 1, k = 1;
    for (int i = 0; i < n; i++) {
        if (t[i].query)
            q = lcm_l(q, t[i].rows);
        if (t[i].key)
            k = lcm_l(k, t[i].rows);
    }
    *query_rows = (int)q;
    *key_rows = (int)k;
}

s2_attn_tile s2_plan_cp_async_twin(s2_attn_tile t)
{
    if (t.bwd_tma && t.bwd_atomic_dq == 2) /* deterministic too: the default's dQ kernel */
        t.bwd_atomic_dq = 0, t.bwd_stages = 4;
    else if (t.bwd_tma && t.bwd_atomic_dq)
        t.bwd_mbar = 0;
    t.fwd_tma = t.fwd_overlap = t.fwd_persist = t.bwd_tma = 0;
    return t;
}

s2_status s2_plan_window(const s2_spec *spec, s2_attn_plan *p, s2_error *err)
{
    char at[S2_SPEC_PATH_MAX + 32];
    if (p->shift_rot)
        return s2_error_set(err, S2_ERR_SPEC,
                            "%s: error: shift_mode roll with shift %d cannot run as "
                            "sequence-parallel windows: roll mode's last group wraps the "
                            "sequence's tail onto its head, so a chunk would need rows from the "
                            "last rank; use shift_mode: split (LongLoRA's flash-attn path)",
                            s2_spec_where(spec, "s2attn.shift_mode", at, sizeof at), p->S);
    if (p->d != 64 && p->d != 128 && p->d != 256)
        return s2_error_set(err, S2_ERR_SPEC,
                            "%s: error: head_dim %d with a sequence-parallel window: window units "
                            "are built and checked for head_dim 64, 128 and 256 only (at 96 the "
                            "dQ kernel spills registers on sm_90a with the window's arguments)",
                            s2_spec_where(spec, "model.head_dim", at, sizeof at), p->d);
    if (p->tile.fwd_tma || p->tile.bwd_tma) {
        /* The window units run a TMA tile's cp.async twin: its tensor maps would address q, k
         * and v as a batch, not the window's halo buffer. */
        p->tile = s2_plan_cp_async_twin(p->tile);
        p->fwd_threads = fwd_threads(&p->tile);
        p->smem_fwd = fwd_smem(&p->tile, p->d);
        p->dkdv_threads = p->bwd_threads;
        bwd_smem(&p->tile, p->d, &p->smem_dq, &p->smem_dkdv);
        p->bwd_dq_delta = dq_kernel_forms_delta(&p->tile); /* (the ordered dQ's twin has one) */
    }
    window_tile t[4];
    const int n = window_tile_list(p, t);
    for (int i = 0; i < n; i++)
        if (t[i].rows < 1 || S2_WINDOW_ALIGN % t[i].rows)
            return s2_error_set(err, S2_ERR_INVALID,
                                "tile: %s = %d rows (%s) with a sequence-parallel window: a "
                                "window's row tiles must divide the %d-row alignment of its "
                                "chunks (gen/sp_plan.h); valid: 16, 32, 64 or 128 rows (warps x "
                                "strips 1, 2, 4 or 8)", t[i].name, t[i].rows, t[i].role,
                                S2_WINDOW_ALIGN);
    int qrows, krows;
    s2_plan_window_tiles(p, &qrows, &krows);
    if (p->G % krows || p->S % krows) {
        /* the widest key tile G and S allow: their largest common power of two, up to 128 */
        long fit = p->S ? gcd_l(p->G, p->S) : p->G;
        fit &= -fit;
        if (fit > S2_WINDOW_ALIGN)
            fit = S2_WINDOW_ALIGN;
        const char *key = p->G % krows ? "s2attn.group_size" : "s2attn.shift";
        const window_tile *kt = NULL;
        for (int i = 0; i < n && !kt; i++)
            if (t[i].key && t[i].rows == krows)
                kt = &t[i];
        return s2_error_set(err, S2_ERR_SPEC,
                            "%s: error: group_size %d and shift %d with a sequence-parallel "
                            "window: its widest key tiles have %d rows (the tile's %s: %s), and "
                            "G and S must be multiples of them so that the first halo row and "
                            "every group edge fall on a key tile's edge; valid: group_size and "
                            "shift multiples of %d, or a tile whose key tiles have at most %ld "
                            "rows", s2_spec_where(spec, key, at, sizeof at), p->G, p->S, krows,
                            kt ? kt->name : "?", kt ? kt->role : "?", krows, fit);
    }
    p->window = 1;
    return S2_OK;
}

/* Row tiles of bm rows from the one holding lo, rounded down to a whole group of GT tiles (the
 * kernels' s2_window_tile0), to the one holding hi - 1, rounded up to whole groups. */
static long window_tiles(const s2_attn_plan *p, long lo, long hi, int bm)
{
    const long gt = p->G / bm > 0 ? p->G / bm : 1;
    const long t0 = lo / bm / gt * gt;
    return ((hi + bm - 1) / bm - t0 + gt - 1) / gt * gt;
}

s2_dim3 s2_plan_grid_fwd_window(const s2_attn_plan *p, const s2_attn_window *w)
{
    return (s2_dim3){(unsigned)window_tiles(p, w->qlo, w->qhi, p->fwd_block_m), (unsigned)p->H,
                     1};
}

/* The scalar backward's blocks start at the window's first row (they mask every pair). */
static long window_rows(const s2_attn_plan *p, long lo, long hi, int bm)
{
    return p->bwd_tensor_cores ? window_tiles(p, lo, hi, bm) : (hi - lo + bm - 1) / bm;
}

s2_dim3 s2_plan_grid_dq_window(const s2_attn_plan *p, const s2_attn_window *w)
{
    return (s2_dim3){(unsigned)window_rows(p, w->qlo, w->qhi, p->bwd_block_m), (unsigned)p->H,
                     1};
}

s2_dim3 s2_plan_grid_dkdv_window(const s2_attn_plan *p, const s2_attn_window *w)
{
    return (s2_dim3){(unsigned)window_rows(p, w->klo, w->qhi, p->bwd_block_m),
                     (unsigned)p->Hkv, 1};
}

s2_status s2_plan_check_window(const s2_attn_plan *p, const s2_attn_window *w, s2_error *err)
{
    if (!p->window)
        return s2_error_set(err, S2_ERR_INVALID,
                            "a window launch with units planned without the window; plan them "
                            "with s2_plan_window (load them with s2_attn_load_window)");
    if (w->n_global < 1 || w->n_global > S2_SPEC_MAX_TOKENS)
        return s2_error_set(err, S2_ERR_INVALID,
                            "window: n_global = %d tokens in the sequence: valid 1..%d",
                            w->n_global, S2_SPEC_MAX_TOKENS);
    if (w->qlo < 0 || w->qlo >= w->qhi || w->qhi > w->n_global)
        return s2_error_set(err, S2_ERR_INVALID,
                            "window: queries [qlo, qhi) = [%d, %d) of a sequence of n_global = "
                            "%d tokens: valid 0 <= qlo < qhi <= n_global", w->qlo, w->qhi,
                            w->n_global);
    if (w->klo < 0 || w->klo > w->qlo)
        return s2_error_set(err, S2_ERR_INVALID,
                            "window: klo = %d with qlo = %d: valid 0 <= klo <= qlo (the key and "
                            "value rows are the halo [klo, qlo), then the window's own)",
                            w->klo, w->qlo);
    int qrows, krows;
    s2_plan_window_tiles(p, &qrows, &krows);
    if (w->qlo % qrows)
        return s2_error_set(err, S2_ERR_INVALID,
                            "window: qlo = %d is not on an edge of the window's %d-row query "
                            "tiles: valid multiples of %d (sequence-parallel chunks start on "
                            "multiples of %d)", w->qlo, qrows, qrows, S2_WINDOW_ALIGN);
    if (w->klo % krows)
        return s2_error_set(err, S2_ERR_INVALID,
                            "window: klo = %d is not on an edge of the window's %d-row key "
                            "tiles: valid multiples of %d (a group start, or the window's qlo)",
                            w->klo, krows, krows);
    for (int cls = 0; cls < 2; cls++) {
        const int gs = group_start(p, cls, w->qlo);
        if (w->klo > gs)
            return s2_error_set(err, S2_ERR_INVALID,
                                "window: klo = %d, but the %s heads' query at qlo = %d sees the "
                                "keys from its group's start, position %d, which the window "
                                "would not hold: valid klo <= %d (gen/sp_plan.h's halo)",
                                w->klo, cls ? "shifted" : "plain", w->qlo, gs, gs);
    }
    const s2_dim3 fwd = s2_plan_grid_fwd_window(p, w), dq = s2_plan_grid_dq_window(p, w);
    const s2_dim3 dkdv = s2_plan_grid_dkdv_window(p, w);
    const long T = (long)w->qhi - w->qlo;
    s2_status st = check_grid("s2_attn_fwd", fwd.x, fwd.y, 1, p->tile.fwd_wgmma, err);
    if (!st && !p->tile.bwd_atomic_dq)
        st = check_grid("s2_attn_bwd_dq", dq.x, dq.y, 1, p->tile.bwd_wgmma, err);
    if (!st)
        st = check_grid("s2_attn_bwd_dkdv", dkdv.x, dkdv.y, 1, p->tile.bwd_wgmma, err);
    if (!st && !p->bwd_dq_delta)
        st = check_grid("s2_attn_bwd_pre", (T * p->H + p->tile.bwd_warps - 1) / p->tile.bwd_warps,
                        1, 1, 0, err);
    return st;
}

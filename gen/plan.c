/* plan.c — spec -> derived constants and geometry of the S²-Attn kernels. */
#include "plan.h"

#include <string.h>

static const char *const fwd_kernels[] = {"s2_attn_fwd"};
static const char *const bwd_kernels[] = {"s2_attn_bwd_pre", "s2_attn_bwd_dq", "s2_attn_bwd_dkdv"};

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
    return 3;
}

s2_attn_tile s2_plan_default_tile(const char *arch, int head_dim)
{
    (void)arch; /* one family for every arch so far; the tuner searches per arch */
    s2_attn_tile t = {.block_m = 16, .block_n = 32, .warps = 4};
    if (head_dim > 128)
        t.block_m = 8; /* keeps four tiles of d+2 halves under the 48 KB static limit */
    return t;
}

/* Shared bytes of one tile of rows rows (rows of d + 2 halves). */
static int tile_bytes(int rows, int d) { return rows * (d + 2) * 2; }

static s2_status check_tile(const s2_attn_tile *t, int d, s2_error *err)
{
    if (t->warps < 1 || t->warps > 16)
        return s2_error_set(err, S2_ERR_INVALID, "tile: warps = %d, valid 1..16", t->warps);
    if (t->block_n != 32)
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: block_n = %d, valid: 32 (one key per lane)", t->block_n);
    if (t->block_m < t->warps || t->block_m % t->warps != 0 || t->block_m > 128)
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: block_m = %d, valid: a multiple of warps (%d) up to 128",
                            t->block_m, t->warps);
    int dq = 2 * tile_bytes(t->block_m, d) + 2 * tile_bytes(t->block_n, d);
    int dkdv = 2 * tile_bytes(t->block_m, d) + 2 * tile_bytes(32, d);
    int worst = dq > dkdv ? dq : dkdv;
    if (worst > 48 * 1024)
        return s2_error_set(err, S2_ERR_INVALID,
                            "tile: block_m = %d with head_dim %d needs %d bytes of static shared "
                            "memory, more than 49152; use a smaller block_m",
                            t->block_m, d, worst);
    return S2_OK;
}

s2_status s2_plan_attn(const s2_spec *spec, const char *arch, const s2_attn_tile *tile,
                       s2_attn_plan *p, s2_error *err)
{
    const s2_model *m = &spec->model;
    memset(p, 0, sizeof *p);
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
    p->tile = tile ? *tile : s2_plan_default_tile(arch, p->d);
    s2_status st = check_tile(&p->tile, p->d, err);
    if (st)
        return st;
    p->threads = 32 * p->tile.warps;
    p->smem_fwd = tile_bytes(p->tile.block_m, p->d) + 2 * tile_bytes(p->tile.block_n, p->d);
    p->smem_dq = 2 * tile_bytes(p->tile.block_m, p->d) + 2 * tile_bytes(p->tile.block_n, p->d);
    p->smem_dkdv = 2 * tile_bytes(p->tile.block_m, p->d) + 2 * tile_bytes(32, p->d);
    return S2_OK;
}

static unsigned ceil_div(long a, long b) { return (unsigned)((a + b - 1) / b); }

s2_dim3 s2_plan_grid_fwd(const s2_attn_plan *p, int max_seqlen, int batch)
{
    return (s2_dim3){ceil_div(max_seqlen, p->tile.block_m), (unsigned)p->H, (unsigned)batch};
}

s2_dim3 s2_plan_grid_dkdv(const s2_attn_plan *p, int max_seqlen, int batch)
{
    return (s2_dim3){ceil_div(max_seqlen, p->tile.block_m), (unsigned)p->Hkv, (unsigned)batch};
}

s2_dim3 s2_plan_grid_pre(const s2_attn_plan *p, int total_tokens)
{
    return (s2_dim3){ceil_div((long)total_tokens * p->H, p->tile.warps), 1, 1};
}

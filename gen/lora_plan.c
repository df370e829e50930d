/* lora_plan.c — shapes and sharing of the LoRA linears. */
#include "lora_plan.h"

#include <stdio.h>
#include <string.h>

static const char *const proj_names[S2_PROJ_COUNT] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                      "gate_proj", "up_proj", "down_proj"};

/* The spec's S2_LORA_* bit of each projection, in s2_proj order. */
static const unsigned proj_bits[S2_PROJ_COUNT] = {S2_LORA_Q, S2_LORA_K, S2_LORA_V, S2_LORA_O,
                                                  S2_LORA_GATE, S2_LORA_UP, S2_LORA_DOWN};

const char *s2_proj_name(s2_proj p) { return p >= 0 && p < S2_PROJ_COUNT ? proj_names[p] : "?"; }

const char *s2_proj_module(s2_proj p) { return p <= S2_PROJ_O ? "self_attn" : "mlp"; }

static void add_group(s2_lora_plan *plan, const s2_proj *members, int n)
{
    s2_lora_group g = {0};
    for (int i = 0; i < n; i++) {
        const s2_lora_linear *l = &plan->lin[members[i]];
        if (!l->adapted)
            continue;
        g.proj[g.n++] = members[i];
        g.in = l->in;
        g.out_total += l->out;
    }
    g.r_total = g.n * plan->rank;
    if (g.n)
        plan->group[plan->n_groups++] = g;
}

void s2_plan_lora(const s2_spec *spec, s2_lora_plan *plan)
{
    const s2_model *m = &spec->model;
    memset(plan, 0, sizeof *plan);
    plan->dtype = spec->dtype;
    plan->rank = spec->lora.rank;
    plan->alpha = spec->lora.alpha;
    plan->scale = spec->lora.alpha / spec->lora.rank;
    plan->dropout = spec->lora.dropout;
    const int q = m->num_heads * m->head_dim, kv = m->num_kv_heads * m->head_dim;
    const int io[S2_PROJ_COUNT][2] = {
        {m->hidden_size, q}, {m->hidden_size, kv}, {m->hidden_size, kv}, {q, m->hidden_size},
        {m->hidden_size, m->intermediate_size}, {m->hidden_size, m->intermediate_size},
        {m->intermediate_size, m->hidden_size},
    };
    for (int p = 0; p < S2_PROJ_COUNT; p++)
        plan->lin[p] = (s2_lora_linear){.in = io[p][0], .out = io[p][1],
                                        .adapted = (spec->lora.targets & proj_bits[p]) != 0};
    const s2_proj qkv[] = {S2_PROJ_Q, S2_PROJ_K, S2_PROJ_V}, o[] = {S2_PROJ_O};
    const s2_proj gate_up[] = {S2_PROJ_GATE, S2_PROJ_UP}, down[] = {S2_PROJ_DOWN};
    add_group(plan, qkv, 3);
    add_group(plan, o, 1);
    add_group(plan, gate_up, 2);
    add_group(plan, down, 1);
}

const char *s2_lora_tensor_name(int layer, s2_proj p, char which, char *buf, size_t n)
{
    if ((which != 'A' && which != 'B') || p < 0 || p >= S2_PROJ_COUNT)
        return NULL;
    int w = snprintf(buf, n, "base_model.model.model.layers.%d.%s.%s.lora_%c.weight", layer,
                     s2_proj_module(p), s2_proj_name(p), which);
    return w < 0 || (size_t)w >= n ? NULL : buf;
}

int s2_lora_vdb_ok(int r) { return r > 0 && r % 8 == 0 && r <= S2_LORA_VDB_MAX_RANK; }

int s2_lora_vdb_stages(int r) { return r == 16 ? 2 : 3; }

size_t s2_lora_vdb_smem(int r)
{
    const size_t stage = (size_t)S2_LORA_VDB_BM * (S2_LORA_VDB_SLAB + (size_t)r) * 2;
    return (size_t)s2_lora_vdb_stages(r) * stage +
           (size_t)S2_LORA_VDB_WARPS * S2_LORA_VDB_BM * r * 4;
}

int s2_lora_vdb_slabs(int out) { return (out + S2_LORA_VDB_SLAB - 1) / S2_LORA_VDB_SLAB; }

int s2_lora_vdb_rows(int M, int slabs)
{
    const int blocks = 2 * S2_LORA_VDB_SMS;
    int ranges = slabs > 0 && slabs < blocks ? blocks / slabs : 1;
    long rows = ranges > 0 ? ((long)M + ranges - 1) / ranges : M;
    rows = (rows + S2_LORA_VDB_BM - 1) / S2_LORA_VDB_BM * S2_LORA_VDB_BM;
    return rows < 256 ? 256 : (int)rows;
}

int s2_lora_rp(int r_total) { return (r_total + 15) / 16 * 16; }

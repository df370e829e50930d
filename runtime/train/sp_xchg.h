/*
 * sp_xchg.h — the key/value exchange of sequence parallelism (model.h's s2_sp_transport) on
 * gen/sp_plan.h's union halo (s2_sp_union_spans: every kv head's rows of [klo, lo); the rows
 * only some kinds need travel for all kv heads, which costs s2_sp_union_fwd_bytes against the
 * plan's per-kind fwd_bytes). Forward: each span's k and v rows go from their owner to the rank
 * whose halo they are. Backward: the same rows' dk and dv (the receiver's partial sums) go back
 * and the owner adds them into its own rows with s2_k_add (bf16/fp16 additions: each partial sum
 * is rounded once more than in the whole-sequence kernel).
 *
 *   - loopback: P ranks in one process on one device, each rank's model driven by its own
 *     thread (the ranks must run the same layers at the same time: every call is a barrier).
 *     For checks: the chunked model against the whole sequence on one GPU.
 *   - NCCL: one rank per process, ncclSend/ncclRecv of the spans in one group per call, on the
 *     model's stream; the backward receives into a scratch buffer, then adds.
 */
#ifndef S2_SP_XCHG_H
#define S2_SP_XCHG_H

#include "gen/sp_plan.h"
#include "runtime/train/model.h"
#include "runtime/core/nccl.h"

struct s2_watchdog; /* train_dp.h */

typedef struct s2_sp_loop s2_sp_loop;

/* The loopback of plan's P ranks (split mode); row_elems: elements of one K/V row (Hkv * d). */
s2_status s2_sp_loop_open(s2_sp_loop **out, const s2_sp_plan *plan, int row_elems,
                          s2_error *err);
void s2_sp_loop_close(s2_sp_loop *lp);
/* Rank r's transport; k: its model's kernels (s2_gm_kern), for the dK/dV additions. */
void s2_sp_loop_transport(s2_sp_loop *lp, int r, const s2_train_kern *k, s2_sp_transport *tp);
/* A rank whose micro-batch failed says so: every wait (now or later) of the other ranks ends
 * with S2_ERR_INVALID instead of waiting for it forever. */
void s2_sp_loop_fail(s2_sp_loop *lp);

typedef struct s2_sp_nccl s2_sp_nccl;

/* Chunk `rank` of plan's P ranks over comm, on which the plan's rank s is comm's rank
 * base + s (a group of consecutive ranks of a larger world: train_dp.h's layout; base 0 when
 * comm's ranks are the plan's); dt the K/V dtype. wd (optional): the watchdog of comm; every
 * group of sends and receives is then one s2_watchdog_call (train_dp.h), so a peer that died
 * unblocks this rank through the communicator's abort and the abort never races a call. */
s2_status s2_sp_nccl_open(s2_sp_nccl **out, const s2_nccl *nc, ncclComm_t comm,
                          struct s2_watchdog *wd, const s2_sp_plan *plan, int rank, int base,
                          int row_elems, s2_dtype dt, const s2_train_kern *k, s2_error *err);
void s2_sp_nccl_close(s2_sp_nccl *x);
void s2_sp_nccl_transport(s2_sp_nccl *x, s2_sp_transport *tp);

/* rank r's halo for s2_gm_sp: klo (s2_sp_union_klo), lo, hi. */
void s2_sp_rank_rows(const s2_sp_plan *plan, int r, int *klo, int *lo, int *hi);

#endif

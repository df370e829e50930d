/*
 * nccl.h — NCCL loaded at run time: libnccl.so.2 is opened with dlopen (the way blas.c opens
 * cuBLAS), so a binary that never runs on several GPUs does not need it, and one that does
 * says clearly when it is missing. NCCL's header is read at compile time only (for its types
 * and enums); the entry points come from the library found at run time, which may be an
 * older 2.x than the header: ncclCommInitRankConfig and ncclGetLastError are optional (NULL
 * when the library lacks them), everything else is required, and NCCL 2.10 or newer (bf16)
 * is required.
 *
 * The table below is public, so callers may use an entry directly; the wrappers check the
 * result and turn a failure into an s2_status whose message names the call, what it moved
 * (the caller's `what`), NCCL's error string and, where the library has it, NCCL's last
 * error message. Nothing here prints.
 */
#ifndef S2_NCCL_H
#define S2_NCCL_H

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "gen/spec.h"

typedef struct s2_nccl {
    void *lib;
    int version; /* ncclGetVersion's code: 22809 for 2.28.9 */
    ncclResult_t (*get_version)(int *version);
    ncclResult_t (*get_unique_id)(ncclUniqueId *id);
    ncclResult_t (*comm_init_rank)(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank);
    ncclResult_t (*comm_init_rank_config)(ncclComm_t *comm, int nranks, ncclUniqueId id,
                                          int rank, ncclConfig_t *config); /* optional */
    ncclResult_t (*comm_destroy)(ncclComm_t comm);
    ncclResult_t (*comm_abort)(ncclComm_t comm);
    ncclResult_t (*comm_get_async_error)(ncclComm_t comm, ncclResult_t *async_error);
    const char *(*get_error_string)(ncclResult_t result);
    const char *(*get_last_error)(ncclComm_t comm); /* optional (NCCL >= 2.13) */
    ncclResult_t (*all_reduce)(const void *send, void *recv, size_t count, ncclDataType_t dt,
                               ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream);
    ncclResult_t (*reduce_scatter)(const void *send, void *recv, size_t recv_count,
                                   ncclDataType_t dt, ncclRedOp_t op, ncclComm_t comm,
                                   cudaStream_t stream);
    ncclResult_t (*all_gather)(const void *send, void *recv, size_t send_count,
                               ncclDataType_t dt, ncclComm_t comm, cudaStream_t stream);
    ncclResult_t (*broadcast)(const void *send, void *recv, size_t count, ncclDataType_t dt,
                              int root, ncclComm_t comm, cudaStream_t stream);
    ncclResult_t (*send)(const void *send, size_t count, ncclDataType_t dt, int peer,
                         ncclComm_t comm, cudaStream_t stream);
    ncclResult_t (*recv)(void *recv, size_t count, ncclDataType_t dt, int peer,
                         ncclComm_t comm, cudaStream_t stream);
    ncclResult_t (*group_start)(void);
    ncclResult_t (*group_end)(void);
} s2_nccl;

#define S2_NCCL_MIN_VERSION 21000 /* 2.10.0: bf16 */

/*
 * Loads NCCL: lib is the library to open (NULL: "libnccl.so.2", found through the library
 * path). A missing library, one without the required entry points or one older than 2.10 is
 * an S2_ERR_CUDA error that says so and what to install.
 */
s2_status s2_nccl_open(const char *lib, s2_nccl **out, s2_error *err);
/* Unloads NCCL: only once every communicator is destroyed and no unique id made here is still
 * to be used (ncclGetUniqueId starts a thread inside the library that serves it). */
void s2_nccl_close(s2_nccl *n);

/* "2.28.9" from a version code (both of NCCL's encodings). */
void s2_nccl_version_str(int code, char *buf, size_t cap);

/* S2_OK for ncclSuccess; else S2_ERR_CUDA with "CALL (WHAT): NCCL's string[; last error]". */
s2_status s2_nccl_check(const s2_nccl *n, ncclResult_t r, ncclComm_t comm, const char *call,
                        const char *what, s2_error *err);

/* ncclDataType_t of a storage dtype (bf16, fp16). */
ncclDataType_t s2_nccl_dtype(s2_dtype dt);

/* Rank 0 makes the id (ncclGetUniqueId) and hands it to the others (s2_rendezvous). */
s2_status s2_nccl_unique_id(const s2_nccl *n, ncclUniqueId *id, s2_error *err);
/* ncclCommInitRank on the current device (s2_dist_device opens it): rank of nranks. */
s2_status s2_nccl_comm_init(const s2_nccl *n, int nranks, int rank, const ncclUniqueId *id,
                            ncclComm_t *comm, s2_error *err);
s2_status s2_nccl_comm_destroy(const s2_nccl *n, ncclComm_t comm, s2_error *err);
/* Ends a communicator whose peers may be gone (after an error); never waits for them. */
void s2_nccl_comm_abort(const s2_nccl *n, ncclComm_t comm);
/* An error raised inside NCCL since the last call (a peer that died, a network failure). */
s2_status s2_nccl_async_error(const s2_nccl *n, ncclComm_t comm, s2_error *err);

/* The collectives and point-to-point calls, enqueued on stream; what names the data in errors. */
s2_status s2_nccl_all_reduce(const s2_nccl *n, ncclComm_t comm, const void *send, void *recv,
                             size_t count, ncclDataType_t dt, ncclRedOp_t op,
                             cudaStream_t stream, const char *what, s2_error *err);
s2_status s2_nccl_reduce_scatter(const s2_nccl *n, ncclComm_t comm, const void *send,
                                 void *recv, size_t recv_count, ncclDataType_t dt,
                                 ncclRedOp_t op, cudaStream_t stream, const char *what,
                                 s2_error *err);
s2_status s2_nccl_all_gather(const s2_nccl *n, ncclComm_t comm, const void *send, void *recv,
                             size_t send_count, ncclDataType_t dt, cudaStream_t stream,
                             const char *what, s2_error *err);
s2_status s2_nccl_broadcast(const s2_nccl *n, ncclComm_t comm, const void *send, void *recv,
                            size_t count, ncclDataType_t dt, int root, cudaStream_t stream,
                            const char *what, s2_error *err);
s2_status s2_nccl_send(const s2_nccl *n, ncclComm_t comm, const void *buf, size_t count,
                       ncclDataType_t dt, int peer, cudaStream_t stream, const char *what,
                       s2_error *err);
s2_status s2_nccl_recv(const s2_nccl *n, ncclComm_t comm, void *buf, size_t count,
                       ncclDataType_t dt, int peer, cudaStream_t stream, const char *what,
                       s2_error *err);
/* Groups send/recv pairs (and several collectives) into one launch. */
s2_status s2_nccl_group_start(const s2_nccl *n, s2_error *err);
s2_status s2_nccl_group_end(const s2_nccl *n, s2_error *err);

#endif

/* nccl.c — NCCL loaded at run time (see nccl.h). */
#include "runtime/core/nccl.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NCCL_LIB "libnccl.so.2"

void s2_nccl_version_str(int code, char *buf, size_t cap)
{
    /* NCCL_VERSION: X*1000 + Y*100 + Z up to 2.8, X*10000 + Y*100 + Z after. */
    if (code < 10000)
        snprintf(buf, cap, "%d.%d.%d", code / 1000, code % 1000 / 100, code % 100);
    else
        snprintf(buf, cap, "%d.%d.%d", code / 10000, code % 10000 / 100, code % 100);
}

s2_status s2_nccl_open(const char *lib, s2_nccl **out, s2_error *err)
{
    *out = NULL;
    const char *name = lib ? lib : NCCL_LIB;
    void *h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (!h)
        return s2_error_set(err, S2_ERR_CUDA,
                            "%s not found (%s): install NCCL for several GPUs (the libnccl2 "
                            "package, NVIDIA's NCCL tarball, or the nvidia-nccl wheel's lib/), "
                            "and put its directory on LD_LIBRARY_PATH", name, dlerror());
    s2_nccl *n = calloc(1, sizeof *n);
    if (!n) {
        dlclose(h);
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    }
    n->lib = h;
    struct {
        void **slot;
        const char *sym;
        int optional;
    } t[] = {
        {(void **)&n->get_version, "ncclGetVersion", 0},
        {(void **)&n->get_unique_id, "ncclGetUniqueId", 0},
        {(void **)&n->comm_init_rank, "ncclCommInitRank", 0},
        {(void **)&n->comm_init_rank_config, "ncclCommInitRankConfig", 1},
        {(void **)&n->comm_destroy, "ncclCommDestroy", 0},
        {(void **)&n->comm_abort, "ncclCommAbort", 0},
        {(void **)&n->comm_get_async_error, "ncclCommGetAsyncError", 0},
        {(void **)&n->get_error_string, "ncclGetErrorString", 0},
        {(void **)&n->get_last_error, "ncclGetLastError", 1},
        {(void **)&n->all_reduce, "ncclAllReduce", 0},
        {(void **)&n->reduce_scatter, "ncclReduceScatter", 0},
        {(void **)&n->all_gather, "ncclAllGather", 0},
        {(void **)&n->broadcast, "ncclBroadcast", 0},
        {(void **)&n->send, "ncclSend", 0},
        {(void **)&n->recv, "ncclRecv", 0},
        {(void **)&n->group_start, "ncclGroupStart", 0},
        {(void **)&n->group_end, "ncclGroupEnd", 0},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        *t[i].slot = dlsym(h, t[i].sym);
        if (!*t[i].slot && !t[i].optional) {
            s2_nccl_close(n);
            return s2_error_set(err, S2_ERR_CUDA,
                                "%s lacks %s: not an NCCL 2 library, or one older than s2lora "
                                "needs (2.10 or newer)", name, t[i].sym);
        }
    }
    ncclResult_t r = n->get_version(&n->version);
    if (r != ncclSuccess) {
        s2_status st = s2_error_set(err, S2_ERR_CUDA, "%s: ncclGetVersion: %s", name,
                                    n->get_error_string(r));
        s2_nccl_close(n);
        return st;
    }
    if (n->version < S2_NCCL_MIN_VERSION) {
        char have[32], need[32];
        s2_nccl_version_str(n->version, have, sizeof have);
        s2_nccl_version_str(S2_NCCL_MIN_VERSION, need, sizeof need);
        s2_nccl_close(n);
        return s2_error_set(err, S2_ERR_CUDA, "%s is NCCL %s; s2lora needs %s or newer (bf16 "
                            "collectives): install a newer NCCL", name, have, need);
    }
    *out = n;
    return S2_OK;
}

void s2_nccl_close(s2_nccl *n)
{
    if (!n)
        return;
    dlclose(n->lib);
    free(n);
}

s2_status s2_nccl_check(const s2_nccl *n, ncclResult_t r, ncclComm_t comm, const char *call,
                        const char *what, s2_error *err)
{
    if (r == ncclSuccess)
        return S2_OK;
    const char *last = n->get_last_error ? n->get_last_error(comm) : NULL;
    return s2_error_set(err, S2_ERR_CUDA, "%s%s%s%s: %s%s%s", call, what ? " (" : "",
                        what ? what : "", what ? ")" : "", n->get_error_string(r),
                        last && last[0] ? "; NCCL: " : "", last && last[0] ? last : "");
}

ncclDataType_t s2_nccl_dtype(s2_dtype dt)
{
    return dt == S2_DTYPE_BF16 ? ncclBfloat16 : ncclFloat16;
}

s2_status s2_nccl_unique_id(const s2_nccl *n, ncclUniqueId *id, s2_error *err)
{
    return s2_nccl_check(n, n->get_unique_id(id), NULL, "ncclGetUniqueId", NULL, err);
}

s2_status s2_nccl_comm_init(const s2_nccl *n, int nranks, int rank, const ncclUniqueId *id,
                            ncclComm_t *comm, s2_error *err)
{
    char what[64];
    snprintf(what, sizeof what, "rank %d of %d", rank, nranks);
    *comm = NULL;
    return s2_nccl_check(n, n->comm_init_rank(comm, nranks, *id, rank), NULL, "ncclCommInitRank",
                         what, err);
}

s2_status s2_nccl_comm_destroy(const s2_nccl *n, ncclComm_t comm, s2_error *err)
{
    return comm ? s2_nccl_check(n, n->comm_destroy(comm), NULL, "ncclCommDestroy", NULL, err)
                : S2_OK;
}

void s2_nccl_comm_abort(const s2_nccl *n, ncclComm_t comm)
{
    if (comm)
        n->comm_abort(comm);
}

s2_status s2_nccl_async_error(const s2_nccl *n, ncclComm_t comm, s2_error *err)
{
    ncclResult_t a = ncclSuccess;
    s2_status st = s2_nccl_check(n, n->comm_get_async_error(comm, &a), comm,
                                 "ncclCommGetAsyncError", NULL, err);
    if (st || a == ncclSuccess || a == ncclInProgress)
        return st;
    return s2_nccl_check(n, a, comm, "NCCL (asynchronous error)", NULL, err);
}

/* "WHAT: COUNT elements of TYPE" for the messages of the data-moving calls. */
static const char *desc(char *buf, size_t cap, const char *what, size_t count, ncclDataType_t dt)
{
    static const char *names[] = {"int8", "uint8", "int32", "uint32", "int64", "uint64",
                                  "fp16", "fp32", "fp64", "bf16", "fp8e4m3", "fp8e5m2"};
    const char *t = (unsigned)dt < sizeof names / sizeof names[0] ? names[dt] : "?";
    snprintf(buf, cap, "%s%s%zu elements of %s", what ? what : "", what ? ": " : "", count, t);
    return buf;
}

s2_status s2_nccl_all_reduce(const s2_nccl *n, ncclComm_t comm, const void *send, void *recv,
                             size_t count, ncclDataType_t dt, ncclRedOp_t op,
                             cudaStream_t stream, const char *what, s2_error *err)
{
    char d[256];
    return s2_nccl_check(n, n->all_reduce(send, recv, count, dt, op, comm, stream), comm,
                         "ncclAllReduce", desc(d, sizeof d, what, count, dt), err);
}

s2_status s2_nccl_reduce_scatter(const s2_nccl *n, ncclComm_t comm, const void *send,
                                 void *recv, size_t recv_count, ncclDataType_t dt,
                                 ncclRedOp_t op, cudaStream_t stream, const char *what,
                                 s2_error *err)
{
    char d[256];
    return s2_nccl_check(n, n->reduce_scatter(send, recv, recv_count, dt, op, comm, stream),
                         comm, "ncclReduceScatter", desc(d, sizeof d, what, recv_count, dt), err);
}

s2_status s2_nccl_all_gather(const s2_nccl *n, ncclComm_t comm, const void *send, void *recv,
                             size_t send_count, ncclDataType_t dt, cudaStream_t stream,
                             const char *what, s2_error *err)
{
    char d[256];
    return s2_nccl_check(n, n->all_gather(send, recv, send_count, dt, comm, stream), comm,
                         "ncclAllGather", desc(d, sizeof d, what, send_count, dt), err);
}

s2_status s2_nccl_broadcast(const s2_nccl *n, ncclComm_t comm, const void *send, void *recv,
                            size_t count, ncclDataType_t dt, int root, cudaStream_t stream,
                            const char *what, s2_error *err)
{
    char d[256];
    return s2_nccl_check(n, n->broadcast(send, recv, count, dt, root, comm, stream), comm,
                         "ncclBroadcast", desc(d, sizeof d, what, count, dt), err);
}

s2_status s2_nccl_send(const s2_nccl *n, ncclComm_t comm, const void *buf, size_t count,
                       ncclDataType_t dt, int peer, cudaStream_t stream, const char *what,
                       s2_error *err)
{
    char d[256];
    return s2_nccl_check(n, n->send(buf, count, dt, peer, comm, stream), comm, "ncclSend",
                         desc(d, sizeof d, what, count, dt), err);
}

s2_status s2_nccl_recv(const s2_nccl *n, ncclComm_t comm, void *buf, size_t count,
                       ncclDataType_t dt, int peer, cudaStream_t stream, const char *what,
                       s2_error *err)
{
    char d[256];
    return s2_nccl_check(n, n->recv(buf, count, dt, peer, comm, stream), comm, "ncclRecv",
                         desc(d, sizeof d, what, count, dt), err);
}

s2_status s2_nccl_group_start(const s2_nccl *n, s2_error *err)
{
    return s2_nccl_check(n, n->group_start(), NULL, "ncclGroupStart", NULL, err);
}

s2_status s2_nccl_group_end(const s2_nccl *n, s2_error *err)
{
    return s2_nccl_check(n, n->group_end(), NULL, "ncclGroupEnd", NULL, err);
}

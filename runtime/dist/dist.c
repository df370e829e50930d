/* dist.c — the world from the environment, the rank's GPU, fingerprints (see dist.h). The
 * rendezvous is in rdzv.c. */
#define _GNU_SOURCE
#include "runtime/dist/dist.h"

#include <cuda_runtime_api.h>
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "gen/emit.h"

/* ---------------------------------------------------------------- environment */

static const char *process_get(void *ctx, const char *name)
{
    (void)ctx;
    return getenv(name);
}

s2_env s2_env_process(void) { return (s2_env){.get = process_get, .ctx = NULL}; }

static const char *array_get(void *ctx, const char *name)
{
    const size_t n = strlen(name);
    for (char *const *e = ctx; e && *e; e++)
        if (!strncmp(*e, name, n) && (*e)[n] == '=')
            return *e + n + 1;
    return NULL;
}

s2_env s2_env_array(char *const *envp) { return (s2_env){.get = array_get, .ctx = (void *)envp}; }

static const char *env_get(s2_env env, const char *name) { return env.get(env.ctx, name); }

s2_status s2_env_int(const char *name, const char *value, long min, long max, long *out,
                     s2_error *err)
{
    /* No sign: a '-' and digits (even "-0") are refused as out of range, as the doc says. */
    const char *p = value + (*value == '-');
    int digits = 0, ok = *p != '\0';
    for (const char *q = p; *q; q++)
        ok &= *q >= '0' && *q <= '9', digits++;
    if (!ok)
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s=\"%s\" is not a decimal integer (valid: %ld..%ld)", name, value,
                            min, max);
    while (*p == '0' && p[1])
        p++, digits--;
    const long long v = digits > 18 ? (long long)9e18 : strtoll(p, NULL, 10);
    if (*value == '-' || v < min || v > max)
        return s2_error_set(err, S2_ERR_INVALID, "%s=%s is out of range (valid: %ld..%ld)", name,
                            value, min, max);
    *out = (long)v;
    return S2_OK;
}

s2_status s2_env_seconds(s2_env env, const char *name, double dflt, const char *eg,
                         double *seconds, s2_error *err)
{
    *seconds = dflt;
    const char *v = env.get(env.ctx, name);
    if (!v)
        return S2_OK;
    char *end = NULL;
    errno = 0;
    const double t = strtod(v, &end);
    const int digits_only = v[0] >= '0' && v[0] <= '9' && strspn(v, "0123456789.") == strlen(v);
    if (!digits_only || errno || end == v || *end || !(t > 0) || t > 1e7)
        return s2_error_set(err, S2_ERR_INVALID, "%s=\"%s\": expected a positive number of "
                            "seconds (e.g. %s or 0.5), at most 1e7", name, v, eg);
    *seconds = t;
    return S2_OK;
}

/* ---------------------------------------------------------------- world */

const char *s2_world_source_name(s2_world_source s)
{
    switch (s) {
    case S2_WORLD_TORCHRUN: return "torchrun";
    case S2_WORLD_SLURM: return "slurm";
    case S2_WORLD_MPI: return "mpi";
    default: return "single";
    }
}

/* One family's reading: present when any of its variables is set. */
typedef struct family {
    int present;
    s2_world w;
} family;

/* Appends " NAME=VALUE" of each set variable among names to w->from. */
static void note_vars(s2_env env, s2_world *w, const char *const *names, int n)
{
    size_t len = strlen(w->from);
    for (int i = 0; i < n; i++) {
        const char *v = env_get(env, names[i]);
        if (v && len < sizeof w->from)
            len += (size_t)snprintf(w->from + len, sizeof w->from - len, "%s%s=%s",
                                    w->from[len - 1] == '(' ? "" : " ", names[i], v);
    }
    if (len < sizeof w->from - 1)
        strcat(w->from, ")");
}

static s2_status need(s2_env env, const char *name, const char *family_vars, const char **out,
                      s2_error *err)
{
    *out = env_get(env, name);
    if (!*out)
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s is not set, but other variables of its family are (%s): set "
                            "them all or none", name, family_vars);
    return S2_OK;
}

/* Checks size, rank, local rank and local size read as text (local_size may be NULL). */
static s2_status numbers(const char *const vars[4], const char *vals[4], s2_world *w,
                         s2_error *err)
{
    long size, rank, lrank, lsize = 0;
    s2_status st = s2_env_int(vars[1], vals[1], 1, S2_WORLD_MAX, &size, err);
    if (!st)
        st = s2_env_int(vars[0], vals[0], 0, size - 1, &rank, err);
    if (!st && vals[3])
        st = s2_env_int(vars[3], vals[3], 1, size, &lsize, err);
    if (!st)
        st = s2_env_int(vars[2], vals[2], 0, (lsize ? lsize : size) - 1, &lrank, err);
    if (st) {
        if (vals[3])
            s2_error_prefix(err, "%s=%s %s=%s %s=%s %s=%s", vars[0], vals[0], vars[1], vals[1],
                            vars[2], vals[2], vars[3], vals[3]);
        else
            s2_error_prefix(err, "%s=%s %s=%s %s=%s", vars[0], vals[0], vars[1], vals[1],
                            vars[2], vals[2]);
        return st;
    }
    w->rank = (int)rank, w->size = (int)size, w->local_rank = (int)lrank;
    w->local_size = (int)lsize;
    return S2_OK;
}

/* A family named by four variables (rank, size, local rank, optional local size): f->present
 * when any is set, then the first three are needed (all: what to say is missing) and read. */
static s2_status read_four(s2_env env, const char *const vars[4], const char *all, family *f,
                           s2_error *err)
{
    const char *vals[4];
    memset(f, 0, sizeof *f);
    for (int i = 0; i < 4; i++)
        f->present |= (vals[i] = env_get(env, vars[i])) != NULL;
    if (!f->present)
        return S2_OK;
    s2_status st = S2_OK;
    for (int i = 0; i < 3 && !st; i++)
        st = need(env, vars[i], all, &vals[i], err);
    return st ? st : numbers(vars, vals, &f->w, err);
}

static s2_status read_torchrun(s2_env env, family *f, s2_error *err)
{
    static const char *const vars[4] = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"};
    s2_status st = read_four(env, vars, "RANK, WORLD_SIZE, LOCAL_RANK; LOCAL_WORLD_SIZE optional",
                             f, err);
    if (st || !f->present)
        return st;
    f->w.source = S2_WORLD_TORCHRUN;
    const char *id = env_get(env, "S2LORA_LAUNCH_ID");
    f->w.launched = id != NULL;
    if (id)
        snprintf(f->w.launch_id, sizeof f->w.launch_id, "%s", id);
    else if ((id = env_get(env, "TORCHELASTIC_RUN_ID"))) {
        const char *rc = env_get(env, "TORCHELASTIC_RESTART_COUNT");
        snprintf(f->w.launch_id, sizeof f->w.launch_id, "torchelastic %s/%s", id, rc ? rc : "0");
    }
    snprintf(f->w.from, sizeof f->w.from, "%s (", f->w.launched ? "s2lora launch"
                                                                : "torchrun-style variables");
    note_vars(env, &f->w, vars, 4);
    return S2_OK;
}

/* The count of node `node` in a Slurm tasks-per-node list, "2(x3),1": 2 on nodes 0-2, 1 on 3. */
static s2_status slurm_per_node(const char *var, const char *list, long node, long *out,
                                s2_error *err)
{
    const char *p = list;
    long first = 0;
    for (;;) {
        char *end;
        if (*p < '0' || *p > '9')
            break;
        const long count = strtol(p, &end, 10);
        long reps = 1;
        p = end;
        if (!strncmp(p, "(x", 2)) {
            if (p[2] < '0' || p[2] > '9')
                break;
            reps = strtol(p + 2, &end, 10);
            if (*end != ')' || reps < 1)
                break;
            p = end + 1;
        }
        if (count < 1)
            break;
        if (node >= first && node < first + reps) {
            *out = count;
            return S2_OK;
        }
        first += reps;
        if (*p == '\0')
            return s2_error_set(err, S2_ERR_INVALID,
                                "%s=%s lists %ld nodes; SLURM_NODEID=%ld is not among them", var,
                                list, first, node);
        if (*p++ != ',')
            break;
    }
    return s2_error_set(err, S2_ERR_INVALID,
                        "%s=\"%s\" is not a Slurm tasks-per-node list (e.g. \"4\" or "
                        "\"2(x3),1\")", var, list);
}

static s2_status read_slurm(s2_env env, family *f, s2_error *err)
{
    memset(f, 0, sizeof *f);
    const char *step = env_get(env, "SLURM_STEP_ID");
    if (!step)
        step = env_get(env, "SLURM_STEPID");
    if (!step || !env_get(env, "SLURM_PROCID"))
        return S2_OK; /* no srun step: a batch script or salloc shell is one process */
    f->present = 1;
    const char *vars[4] = {"SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", NULL};
    const char *vals[4] = {env_get(env, "SLURM_PROCID"), NULL, NULL, NULL};
    if (!(vals[1] = env_get(env, vars[1])))
        vals[1] = env_get(env, vars[1] = "SLURM_NTASKS");
    const char *all = "an srun step sets SLURM_PROCID, SLURM_STEP_NUM_TASKS or SLURM_NTASKS, "
                      "and SLURM_LOCALID";
    s2_status st = vals[1] ? S2_OK : need(env, "SLURM_NTASKS", all, &vals[1], err);
    if (!st)
        st = need(env, vars[2], all, &vals[2], err);
    if (!st)
        st = numbers(vars, vals, &f->w, err); /* local size below */
    if (st)
        return st;
    /* The local size: this node's entry of the step's (else the job's) tasks-per-node list. */
    const char *lists[2] = {"SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"};
    const char *used = NULL, *used_val = NULL; /* the variable the local size came from */
    long lsize = 0;
    for (int i = 0; i < 2 && !used && !st; i++) {
        const char *list = env_get(env, lists[i]);
        if (!list)
            continue;
        const char *nid = env_get(env, "SLURM_NODEID");
        long node = 0;
        if (nid)
            st = s2_env_int("SLURM_NODEID", nid, 0, S2_WORLD_MAX - 1, &node, err);
        else if (strchr(list, ',') || strstr(list, "(x"))
            continue; /* several nodes, and which one is ours is not said */
        if (!st)
            st = slurm_per_node(lists[i], list, node, &lsize, err);
        used = lists[i], used_val = list;
    }
    if (!st && !used && (used_val = env_get(env, "SLURM_NTASKS_PER_NODE"))) {
        used = "SLURM_NTASKS_PER_NODE";
        st = s2_env_int(used, used_val, 1, S2_WORLD_MAX, &lsize, err);
    }
    if (!st && lsize && (lsize > f->w.size || f->w.local_rank >= lsize))
        st = s2_error_set(err, S2_ERR_INVALID,
                          "%s=%s gives this node %ld tasks, but SLURM_LOCALID=%d and the step "
                          "has %d", used, used_val, lsize, f->w.local_rank, f->w.size);
    if (st)
        return st;
    f->w.local_size = (int)lsize;
    f->w.source = S2_WORLD_SLURM;
    const char *job = env_get(env, "SLURM_JOB_ID");
    const char *restart = env_get(env, "SLURM_RESTART_COUNT");
    if (!job)
        job = env_get(env, "SLURM_JOBID");
    snprintf(f->w.launch_id, sizeof f->w.launch_id, "slurm %s.%s/%s", job ? job : "?", step,
             restart ? restart : "0");
    snprintf(f->w.from, sizeof f->w.from, "Slurm step %s.%s (", job ? job : "?", step);
    const char *names[] = {"SLURM_PROCID", vars[1], "SLURM_LOCALID", "SLURM_NODEID",
                           used ? used : "SLURM_NTASKS_PER_NODE"};
    note_vars(env, &f->w, names, used ? 5 : 4);
    return S2_OK;
}

static s2_status read_mpi(s2_env env, family *f, s2_error *err)
{
    static const char *const vars[4] = {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                                        "OMPI_COMM_WORLD_LOCAL_RANK",
                                        "OMPI_COMM_WORLD_LOCAL_SIZE"};
    s2_status st = read_four(env, vars, "mpirun sets OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK "
                             "and _LOCAL_SIZE", f, err);
    if (st || !f->present)
        return st;
    f->w.source = S2_WORLD_MPI;
    const char *id = env_get(env, "PMIX_NAMESPACE");
    if (!id)
        id = env_get(env, "OMPI_MCA_ess_base_jobid");
    if (id)
        snprintf(f->w.launch_id, sizeof f->w.launch_id, "mpi %s", id);
    snprintf(f->w.from, sizeof f->w.from, "Open MPI (");
    note_vars(env, &f->w, vars, 4);
    return S2_OK;
}

static int same_world(const s2_world *a, const s2_world *b)
{
    return a->rank == b->rank && a->size == b->size && a->local_rank == b->local_rank &&
           (!a->local_size || !b->local_size || a->local_size == b->local_size);
}

s2_status s2_world_from_env(s2_env env, s2_world *w, s2_error *err)
{
    memset(w, 0, sizeof *w);
    family f[3];
    s2_status (*const read[3])(s2_env, family *, s2_error *) = {read_torchrun, read_slurm,
                                                                read_mpi};
    const char *only = env_get(env, "S2LORA_WORLD_FROM");
    int pick = -1; /* with S2LORA_WORLD_FROM: the family to read, 3 for single */
    if (only) {
        static const char *names[4] = {"torchrun", "slurm", "mpi", "single"};
        for (int i = 0; i < 4; i++)
            if (!strcmp(only, names[i]))
                pick = i;
        if (pick < 0)
            return s2_error_set(err, S2_ERR_INVALID, "S2LORA_WORLD_FROM=\"%s\": valid: torchrun, "
                                "slurm, mpi, single", only);
    }
    for (int i = 0; i < 3; i++) {
        f[i].present = 0;
        if (pick >= 0 && pick != i)
            continue;
        s2_status st = read[i](env, &f[i], err);
        if (st)
            return st;
    }
    if (pick >= 0 && pick < 3 && !f[pick].present)
        return s2_error_set(err, S2_ERR_INVALID, "S2LORA_WORLD_FROM=%s, but none of its "
                            "variables is set", only);
    int chosen = -1;
    for (int i = 0; i < 3 && chosen < 0; i++)
        if (f[i].present)
            chosen = i;
    if (chosen < 0) {
        w->size = 1, w->local_size = 1;
        const char *id = env_get(env, "S2LORA_LAUNCH_ID");
        if (id)
            snprintf(w->launch_id, sizeof w->launch_id, "%s", id);
        snprintf(w->from, sizeof w->from, "%s",
                 pick == 3 ? "S2LORA_WORLD_FROM=single: a world of one"
                 : env_get(env, "SLURM_PROCID")
                     ? "no launcher's ranks (SLURM_PROCID without SLURM_STEP_ID is a Slurm batch "
                       "script or allocation shell, one process): a world of one"
                     : "no launcher's variables: a world of one");
        return S2_OK;
    }
    for (int i = chosen + 1; i < 3; i++) {
        if (!f[i].present || f[i].w.size == 1 || same_world(&f[chosen].w, &f[i].w))
            continue;
        return s2_error_set(err, S2_ERR_INVALID,
                            "two launchers describe different worlds: %s says rank %d of %d "
                            "(local rank %d), %s says rank %d of %d (local rank %d); start the "
                            "ranks with one launcher (s2lora launch refuses to run inside "
                            "srun/mpirun ranks), or set S2LORA_WORLD_FROM=torchrun|slurm|mpi to "
                            "say which to read",
                            f[chosen].w.from, f[chosen].w.rank, f[chosen].w.size,
                            f[chosen].w.local_rank, f[i].w.from, f[i].w.rank, f[i].w.size,
                            f[i].w.local_rank);
    }
    *w = f[chosen].w;
    return S2_OK;
}

/* ---------------------------------------------------------------- device */

s2_status s2_dist_device(const s2_world *w, s2_rt *rt, s2_error *err)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver || (!e && count == 0))
        return s2_error_set(err, S2_ERR_NO_DEVICE, "rank %d: no CUDA device (%s)", w->rank,
                            e == cudaSuccess ? "none found" : cudaGetErrorString(e));
    if (e) {
        cudaGetLastError();
        return s2_error_set(err, S2_ERR_NO_DEVICE, "rank %d: no usable CUDA device: %s",
                            w->rank, cudaGetErrorString(e));
    }
    const int want = w->local_size > w->local_rank ? w->local_size : w->local_rank + 1;
    if (want > count) {
        const char *vis = getenv("CUDA_VISIBLE_DEVICES");
        return s2_error_set(err, S2_ERR_INVALID,
                            "rank %d is local rank %d of %d on this host (%s) and drives CUDA "
                            "device %d, but this host shows %d device%s%s%s%s: start at most %d "
                            "rank%s a host", w->rank, w->local_rank,
                            w->local_size ? w->local_size : want, w->from, w->local_rank, count,
                            count == 1 ? "" : "s", vis ? " (CUDA_VISIBLE_DEVICES=" : "",
                            vis ? vis : "", vis ? ")" : "", count, count == 1 ? "" : "s");
    }
    s2_status st = s2_rt_open(rt, w->local_rank, err);
    if (st)
        s2_error_prefix(err, "rank %d (CUDA device %d)", w->rank, w->local_rank);
    return st;
}

/* ---------------------------------------------------------------- fingerprint */

/* dl_iterate_phdr callback: the main program's NT_GNU_BUILD_ID note, in hex. */
static int find_build_id(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    char *hex = data;
    if (info->dlpi_name && info->dlpi_name[0])
        return 0; /* a shared object; the main program has an empty name */
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_NOTE)
            continue;
        const uint8_t *p = (const uint8_t *)(info->dlpi_addr + ph->p_vaddr);
        const uint8_t *end = p + ph->p_memsz;
        while (p + sizeof(ElfW(Nhdr)) <= end) {
            const ElfW(Nhdr) *nh = (const ElfW(Nhdr) *)p;
            const uint8_t *name = p + sizeof *nh;
            const uint8_t *desc = name + ((nh->n_namesz + 3) & ~3u);
            if (desc + nh->n_descsz > end)
                break;
            if (nh->n_type == NT_GNU_BUILD_ID && nh->n_namesz == 4 && !memcmp(name, "GNU", 4) &&
                nh->n_descsz > 0 && nh->n_descsz <= 64) {
                s2_hex(desc, nh->n_descsz, hex);
                return 1;
            }
            p = desc + ((nh->n_descsz + 3) & ~3u);
        }
    }
    return 1;
}

const char *s2_build_id(void)
{
    static char id[129];
    if (id[0])
        return id;
    dl_iterate_phdr(find_build_id, id);
    if (!id[0]) { /* no build-id note: hash the executable itself */
        char *data = NULL;
        size_t n = 0;
        if (s2_read_file("/proc/self/exe", &data, &n, NULL) == S2_OK) {
            uint8_t sha[32];
            s2_sha256(data, n, sha);
            s2_hex(sha, 32, id);
            free(data);
        } else {
            snprintf(id, sizeof id, "unknown");
        }
    }
    return id;
}

void s2_fingerprint_init(s2_fingerprint *fp)
{
    memset(fp, 0, sizeof *fp);
    char data[300], shown[S2_FP_SHOWN_MAX];
    snprintf(data, sizeof data, "s2lora %s (%s) build %s", S2_VERSION, S2_GEN_VERSION,
             s2_build_id());
    snprintf(shown, sizeof shown, "s2lora %s (%s) build %.16s", S2_VERSION, S2_GEN_VERSION,
             s2_build_id());
    s2_fingerprint_add(fp, "build", data, strlen(data), shown, NULL);
}

s2_status s2_fingerprint_add(s2_fingerprint *fp, const char *name, const void *data, size_t n,
                             const char *shown, s2_error *err)
{
    if (!name[0] || strlen(name) >= S2_FP_NAME_MAX)
        return s2_error_set(err, S2_ERR_INVALID, "fingerprint part \"%s\": a name of 1..%d "
                            "characters", name, S2_FP_NAME_MAX - 1);
    for (int i = 0; i < fp->n; i++)
        if (!strcmp(fp->part[i].name, name))
            return s2_error_set(err, S2_ERR_INVALID, "fingerprint part \"%s\" added twice", name);
    if (fp->n == S2_FP_MAX_PARTS)
        return s2_error_set(err, S2_ERR_INVALID, "fingerprint part \"%s\": at most %d parts",
                            name, S2_FP_MAX_PARTS);
    s2_fp_part *p = &fp->part[fp->n++];
    snprintf(p->name, sizeof p->name, "%s", name);
    s2_sha256(data, n, p->sha);
    if (shown) {
        snprintf(p->shown, sizeof p->shown, "%s", shown);
        n = strlen(shown);
    } else {
        const size_t k = n < sizeof p->shown - 1 ? n : sizeof p->shown - 1;
        memcpy(p->shown, data, k);
        p->shown[k] = '\0';
    }
    if (n >= sizeof p->shown) /* cut: say so */
        memcpy(p->shown + sizeof p->shown - 4, "...", 4);
    return S2_OK;
}

void s2_fingerprint_sha(const s2_fingerprint *fp, uint8_t out[32])
{
    s2_sha256_ctx c;
    s2_sha256_init(&c);
    for (int i = 0; i < fp->n; i++) {
        s2_sha256_update_str(&c, fp->part[i].name);
        s2_sha256_update(&c, fp->part[i].sha, 32);
    }
    s2_sha256_final(&c, out);
}

s2_status s2_random_bytes(void *out, size_t n, s2_error *err)
{
    uint8_t *p = out;
    while (n) {
        ssize_t k = getrandom(p, n, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return s2_error_set(err, S2_ERR_IO, "getrandom: %s", strerror(errno));
        p += k, n -= (size_t)k;
    }
    return S2_OK;
}

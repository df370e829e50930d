/*
 * dist.h — the processes of a run on several GPUs: which rank this process is (read from the
 * environment a launcher sets), which GPU it drives, and the rendezvous through which the
 * ranks agree on NCCL's unique id and check that they run the same thing. None of it needs
 * NCCL or a GPU except s2_dist_device; nothing here prints or exits.
 *
 * World. One process per GPU. The ranks are numbered 0..size-1; the ranks of one host are
 * numbered again 0..local_size-1 (the local rank), and a rank drives CUDA device local_rank.
 * s2_world_from_env reads, in this order of precedence:
 *   1. torchrun-style: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE (what `s2lora launch`
 *      and torchrun set; LOCAL_WORLD_SIZE may be absent);
 *   2. Slurm, inside an srun step (SLURM_STEP_ID set): SLURM_PROCID, SLURM_STEP_NUM_TASKS
 *      (else SLURM_NTASKS), SLURM_LOCALID, and the local size from SLURM_STEP_TASKS_PER_NODE
 *      (else SLURM_TASKS_PER_NODE; "2(x3),1" form, indexed by SLURM_NODEID), else
 *      SLURM_NTASKS_PER_NODE. A batch script or salloc shell has SLURM_PROCID but no step:
 *      it is one process, not a set of ranks;
 *   3. Open MPI: OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK,
 *      OMPI_COMM_WORLD_LOCAL_SIZE;
 *   none: a world of one.
 * A family is present when any of its variables is set; a present family must be complete
 * and its numbers valid (decimal digits only, 0 <= rank < size, 0 <= local rank < local size
 * <= size), else the error names the variable and its value. Two present families that both
 * describe more than one process must describe the same world (rank, size, local rank), else
 * the error names both: an enclosing world of one (`s2lora launch` inside a Slurm batch
 * script or a one-task srun) is no conflict. S2LORA_WORLD_FROM=torchrun|slurm|mpi|single
 * reads that family only, for the cases where two launchers' variables meet on purpose.
 *
 * Launch id: a string the ranks of one run share and other runs do not, from
 * S2LORA_LAUNCH_ID (s2lora launch), TORCHELASTIC_RUN_ID and TORCHELASTIC_RESTART_COUNT
 * (torchrun), SLURM_JOB_ID, SLURM_STEP_ID and SLURM_RESTART_COUNT (Slurm), PMIX_NAMESPACE or
 * OMPI_MCA_ess_base_jobid (Open MPI); empty when the launcher gives none. The rendezvous uses
 * it to tell runs apart; it does not depend on it (see s2_rendezvous).
 */
#ifndef S2_DIST_H
#define S2_DIST_H

#include <stddef.h>
#include <stdint.h>

#include "gen/util.h"
#include "runtime/core/rt.h"

/* ---------------------------------------------------------------- environment */

/* An environment to read: get returns the value of name or NULL. Tests pass fake ones. */
typedef struct s2_env {
    const char *(*get)(void *ctx, const char *name);
    void *ctx;
} s2_env;

/* This process's environment (getenv). */
s2_env s2_env_process(void);
/* A NULL-terminated array of "NAME=VALUE" strings (an envp); the array must outlive the s2_env. */
s2_env s2_env_array(char *const *envp);

/*
 * Parses an environment variable's value as a decimal integer in [min, max]: digits only, no
 * sign, space or suffix (a '-' and digits, "-0" included, is refused as out of range). Errors
 * name name=value and the valid range.
 */
s2_status s2_env_int(const char *name, const char *value, long min, long max, long *out,
                     s2_error *err);

/*
 * The variable name of env as a time limit in seconds: a positive decimal number (digits and a
 * point, e.g. 300 or 0.5) up to 1e7; *seconds = dflt when it is unset. Errors name name=value
 * and what is valid (eg: an example value for the message).
 */
s2_status s2_env_seconds(s2_env env, const char *name, double dflt, const char *eg,
                         double *seconds, s2_error *err);

/* ---------------------------------------------------------------- world */

typedef enum s2_world_source {
    S2_WORLD_SINGLE = 0, /* no launcher: a world of one */
    S2_WORLD_TORCHRUN,   /* RANK, WORLD_SIZE, ... (s2lora launch, torchrun) */
    S2_WORLD_SLURM,      /* an srun step */
    S2_WORLD_MPI,        /* Open MPI's mpirun */
} s2_world_source;

#define S2_WORLD_MAX 65536 /* ranks */

typedef struct s2_world {
    int rank, size;
    int local_rank;
    int local_size;          /* 0: the launcher did not say */
    s2_world_source source;
    int launched;            /* 1 when S2LORA_LAUNCH_ID is set (s2lora launch started us) */
    char launch_id[128];     /* see above; "" when none */
    char from[320];          /* where the numbers came from, e.g.
                                "s2lora launch: RANK=1 WORLD_SIZE=4 LOCAL_RANK=1 ..." */
} s2_world;

/* "single", "torchrun", "slurm", "mpi" (the S2LORA_WORLD_FROM names). */
const char *s2_world_source_name(s2_world_source s);

/* Reads the world from env (see above). */
s2_status s2_world_from_env(s2_env env, s2_world *w, s2_error *err);

/*
 * Opens this rank's GPU: CUDA device local_rank (s2_rt_open). S2_ERR_NO_DEVICE (exit 3) when
 * there is none; S2_ERR_INVALID naming the rank, its local rank, where it came from and the
 * number of visible devices when the host has fewer GPUs than local ranks.
 */
s2_status s2_dist_device(const s2_world *w, s2_rt *rt, s2_error *err);

/* ---------------------------------------------------------------- fingerprint */

/*
 * What the ranks of one run must agree on, in named parts hashed separately, so a refusal can
 * say which part differs and show both ranks' versions: "build" (s2lora's version, the
 * generator's and this binary's build id: s2_fingerprint_init adds it), then what the caller
 * adds — e.g. "spec" (the spec's SHA-256), "options" (the options every rank must share).
 */
#define S2_FP_MAX_PARTS 8
#define S2_FP_NAME_MAX 32
#define S2_FP_SHOWN_MAX 200

typedef struct s2_fp_part {
    char name[S2_FP_NAME_MAX];
    char shown[S2_FP_SHOWN_MAX]; /* how a message shows it: "spec llama2-7b-32k sha 1a2b..." */
    uint8_t sha[32];             /* SHA-256 of the whole part (shown may be cut short) */
} s2_fp_part;

typedef struct s2_fingerprint {
    int n;
    s2_fp_part part[S2_FP_MAX_PARTS];
} s2_fingerprint;

/* Empties fp and adds the part "build". */
void s2_fingerprint_init(s2_fingerprint *fp);
/* Adds a part: data hashed; shown (NULL: data as text) kept for messages, cut to fit with
 * "...". S2_ERR_INVALID when fp is full or the name is empty, too long or already there. */
s2_status s2_fingerprint_add(s2_fingerprint *fp, const char *name, const void *data, size_t n,
                             const char *shown, s2_error *err);
/* One SHA-256 over every part, in order. */
void s2_fingerprint_sha(const s2_fingerprint *fp, uint8_t out[32]);

/* This binary's build id in hex (the linker's GNU build id, else a SHA-256 of the executable
 * file; "unknown" when neither can be read). Computed once. */
const char *s2_build_id(void);

/* ---------------------------------------------------------------- rendezvous */

typedef enum s2_rdzv_kind { S2_RDZV_FILE = 1, S2_RDZV_TCP } s2_rdzv_kind;

/*
 * Where the ranks meet: "file:PATH" (a file on a filesystem every rank sees) or
 * "tcp:HOST:PORT" (rank 0 listens on PORT on every address; the others connect to HOST,
 * a name or an IPv4/IPv6 address, "[v6]" brackets allowed).
 */
typedef struct s2_rdzv_addr {
    s2_rdzv_kind kind;
    char path[4096]; /* file */
    char host[256];  /* tcp */
    int port;        /* tcp: 1..65535 */
    char text[4200]; /* as given */
} s2_rdzv_addr;

s2_status s2_rdzv_parse(const char *text, s2_rdzv_addr *out, s2_error *err);

/*
 * The rendezvous of this run: flag (--rendezvous, may be NULL), else S2LORA_RENDEZVOUS.
 * *have = 0 when a world of one has neither (it needs none). A world of several ranks with
 * neither is an error that says what to pass (s2lora launch always sets one).
 */
s2_status s2_rdzv_resolve(const s2_world *w, s2_env env, const char *flag, s2_rdzv_addr *out,
                          int *have, s2_error *err);

/* S2LORA_RENDEZVOUS_TIMEOUT in seconds (a positive decimal number, fractions allowed), or
 * S2_RDZV_TIMEOUT_DEFAULT when unset. */
#define S2_RDZV_TIMEOUT_DEFAULT 300.0
s2_status s2_rdzv_timeout(s2_env env, double *seconds, s2_error *err);

#define S2_RDZV_PAYLOAD_MAX 4096

typedef struct s2_rdzv_peer {
    int rank, local_rank, local_size, pid;
    char host[64];
} s2_rdzv_peer;

typedef struct s2_rdzv_result {
    uint8_t payload[S2_RDZV_PAYLOAD_MAX]; /* rank 0's bytes (NCCL's unique id) */
    size_t payload_len;
    int n_peers;                          /* the world's size */
    s2_rdzv_peer *peers;                  /* [n_peers] by rank; heap: s2_rdzv_result_free */
    uint8_t fingerprint[32];              /* s2_fingerprint_sha, the same on every rank */
    double seconds;                       /* how long it took here */
} s2_rdzv_result;

void s2_rdzv_result_free(s2_rdzv_result *r);

/*
 * Every rank of w calls this once: rank 0 with the payload it hands to all (at most
 * S2_RDZV_PAYLOAD_MAX bytes), the others with NULL. Each rank sends rank 0 its rank, world,
 * launch id, host, pid and fingerprint; rank 0 checks that every rank 1..size-1 came exactly
 * once within timeout_s, that all share its world size, launch id and every fingerprint part,
 * then answers all with the payload and the table of ranks, or with one refusal that every
 * rank returns ("rank 3 differs from rank 0 in options: rank 3 runs '...', rank 0 runs '...'").
 * Needs neither NCCL nor a GPU. A world of one returns at once.
 *
 * file:PATH — rank 0 replaces PATH with an "open" record carrying a fresh random generation;
 * rank k waits for it, then writes PATH.rank-k (its hello for that generation, with a random
 * nonce of its own); rank 0 reads the hellos of its generation only and replaces PATH with its
 * answer, which lists every rank's nonce. All writes are atomic (s2_write_file_atomic). So a
 * file left by an earlier run is never taken: an old answer lacks this rank's fresh nonce, an
 * old hello carries another generation, and a rank that wrote its hello for an old "open"
 * record writes it again when the generation changes. A record with another launch id (both
 * set) is another run's and is waited past; rank 0 fails if another run replaces its record.
 * Rank 0 removes the hellos when it answers; PATH stays (the next run replaces it). Every rank
 * polls (every 10 ms at first, every 200 ms after a while); on NFS a new file shows once the
 * client's attribute cache lets it, which only delays the meeting.
 *
 * tcp:HOST:PORT — rank 0 listens on PORT and serves the size-1 connections that bring a
 * hello of this world (a connection that does not speak the protocol is dropped); the others
 * connect to HOST:PORT, retrying until timeout_s.
 *
 * Rank 0 waits timeout_s for the others; they wait a little longer (up to 5 s more), so that
 * rank 0's answer when it gives up, which names the ranks that did not come, reaches them.
 */
s2_status s2_rendezvous(const s2_rdzv_addr *addr, const s2_world *w, const s2_fingerprint *fp,
                        const void *payload, size_t payload_len, double timeout_s,
                        s2_rdzv_result *res, s2_error *err);

/* n random bytes from the kernel (getrandom). */
s2_status s2_random_bytes(void *out, size_t n, s2_error *err);

#endif

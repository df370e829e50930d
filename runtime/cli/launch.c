/*
 * launch.c — `s2lora launch` (the ranks of one host) and `s2lora world` (what a rank sees of
 * its world, and the rendezvous tried without a GPU). Part of the s2lora binary, beside
 * main.c: these two print, fork, signal and exit; the library pieces are in dist.h.
 *
 * launch: N children of this same binary (/proc/self/exe), each in a process group of its own
 * (so a rank's own children go with it) and killed if the launcher dies (PR_SET_PDEATHSIG).
 * The launcher waits with SIGINT, SIGTERM, SIGHUP and SIGCHLD blocked and taken by
 * sigtimedwait: a signal is passed to every rank (a second one kills them); the first rank
 * that fails (exit code != 0, or a signal) is named with how and where its log is, the others
 * get SIGTERM and, after the grace period, SIGKILL. A finished rank stays a zombie (waitid
 * with WNOWAIT) until the end, so its process group id cannot be taken by another process
 * while the launcher may still signal it.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runtime/cli/cli.h"
#include "runtime/dist/dist.h"
#include "runtime/core/nccl.h"

#define EXIT_USAGE 2
#define GRACE_DEFAULT 10.0
#define FAIL_EXIT_CODE 7 /* world --fail-how exit */

static int failed(const char *prog, s2_error *err)
{
    fprintf(stderr, "%s: %s\n", prog, err->msg ? err->msg : s2_status_to_string(err->status));
    const int code = err->status == S2_ERR_NO_DEVICE ? 3 : 1;
    s2_error_clear(err);
    return code;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---------------------------------------------------------------- world */

/* A local size as printed: "?" when the launcher did not say. */
static const char *count_str(int n, char *buf, size_t cap)
{
    if (n)
        snprintf(buf, cap, "%d", n);
    else
        snprintf(buf, cap, "?");
    return buf;
}

typedef struct world_args {
    const char *rdzv, *extra, *fail_rank, *fail_how;
    int use_nccl;
} world_args;

static const char *const fail_how_values[] = {"exit", "kill", "hang", NULL};

static const s2_opt world_opts[] = {
    {.name = "rendezvous", .kind = S2_OPT_STRING, .metavar = "file:PATH|tcp:HOST:PORT",
     .help = "where the ranks meet (default S2LORA_RENDEZVOUS)",
     .off = offsetof(world_args, rdzv)},
    {.name = "nccl", .kind = S2_OPT_FLAG,
     .help = "load NCCL, print its version, and hand out its unique id",
     .off = offsetof(world_args, use_nccl)},
    {.name = "fingerprint-extra", .kind = S2_OPT_STRING, .metavar = "STR",
     .help = "diagnostics: one more part the ranks must agree on",
     .off = offsetof(world_args, extra)},
    {.name = "fail-rank", .kind = S2_OPT_STRING, .metavar = "K",
     .help = "diagnostics: rank K fails before the rendezvous, as --fail-how says",
     .off = offsetof(world_args, fail_rank)},
    {.name = "fail-how", .kind = S2_OPT_ENUM,
     .help = "diagnostics: exit with code 7, kill itself with SIGKILL, or hang ignoring SIGTERM",
     .values = fail_how_values, .off = offsetof(world_args, fail_how)},
};

const s2_cmd s2_cmd_world = {
    .name = "world",
    .usage = "[--rendezvous file:PATH|tcp:HOST:PORT] [--nccl]",
    .about = "Prints this process's rank, world size, local rank (its GPU) and where they came\n"
             "from: s2lora launch or torchrun (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE), an\n"
             "srun step (SLURM_PROCID, ...), mpirun (OMPI_COMM_WORLD_RANK, ...), or none (a world\n"
             "of one). With --rendezvous (or S2LORA_RENDEZVOUS) every rank meets the others the\n"
             "way training will: rank 0 hands out an id (random bytes; with --nccl NCCL's unique\n"
             "id), every rank checks that all run the same build, and each prints what all agreed\n"
             "on. Needs no GPU (and without --nccl no NCCL): `s2lora launch --gpus 4 -- world`\n"
             "tries a launch anywhere. S2LORA_RENDEZVOUS_TIMEOUT: seconds to wait (default 300).\n"
             "The diagnostics options are for tests of the launcher and the rendezvous.\n",
    .opts = world_opts, .n_opts = sizeof world_opts / sizeof world_opts[0],
};

int s2_cli_world(const char *prog, int argc, char **argv)
{
    world_args a = {0};
    s2_opts_result r;
    int rc;
    if (!s2_opts_run(&s2_cmd_world, argc, argv, &a, &r, &rc))
        return rc;
    const char *rdzv = a.rdzv, *extra = a.extra, *fail_rank = a.fail_rank,
               *fail_how = a.fail_how;
    const int use_nccl = a.use_nccl;
    if (!fail_rank != !fail_how)
        return s2_opts_usage_error(&s2_cmd_world, "--fail-rank and --fail-how go together");
    s2_error err = {0};
    s2_world w;
    const s2_env env = s2_env_process();
    if (s2_world_from_env(env, &w, &err))
        return failed(prog, &err);
    long fk = -1;
    if (fail_rank && s2_env_int("--fail-rank", fail_rank, 0, w.size - 1, &fk, &err)) {
        fprintf(stderr, "%s world: %s: this world has ranks 0..%d\n", prog, err.msg, w.size - 1);
        s2_error_clear(&err);
        return EXIT_USAGE;
    }
    char ls[16];
    printf("rank %d of %d, local rank %d of %s, pid %d, from %s%s%s\n", w.rank, w.size,
           w.local_rank, count_str(w.local_size, ls, sizeof ls), (int)getpid(), w.from,
           w.launch_id[0] ? ", launch " : "", w.launch_id);
    fflush(stdout);
    if (fk == w.rank) {
        fprintf(stderr, "%s world: rank %d fails as asked (--fail-how %s)\n", prog, w.rank,
                fail_how);
        fflush(stderr);
        if (!strcmp(fail_how, "exit"))
            return FAIL_EXIT_CODE;
        if (!strcmp(fail_how, "kill"))
            raise(SIGKILL);
        signal(SIGTERM, SIG_IGN), signal(SIGINT, SIG_IGN), signal(SIGHUP, SIG_IGN);
        for (;;)
            pause();
    }
    s2_rdzv_addr addr;
    int have = 0;
    double timeout;
    if (s2_rdzv_resolve(&w, env, rdzv, &addr, &have, &err)) {
        if (!rdzv && !env.get(env.ctx, "S2LORA_RENDEZVOUS")) { /* only asked for the world */
            printf("no rendezvous given (--rendezvous or S2LORA_RENDEZVOUS): not meeting the "
                   "other ranks\n");
            s2_error_clear(&err);
            return 0;
        }
        return failed(prog, &err);
    }
    if (s2_rdzv_timeout(env, &timeout, &err))
        return failed(prog, &err);
    /* Static: NCCL stays loaded until the process ends (below), and its handle with it. */
    static s2_nccl *nccl = NULL;
    if (use_nccl) {
        if (s2_nccl_open(NULL, &nccl, &err))
            return failed(prog, &err);
        char v[32];
        s2_nccl_version_str(nccl->version, v, sizeof v);
        printf("NCCL %s\n", v);
    }
    s2_fingerprint fp;
    s2_fingerprint_init(&fp);
    if (extra && s2_fingerprint_add(&fp, "extra", extra, strlen(extra), NULL, &err))
        return failed(prog, &err);
    uint8_t id[NCCL_UNIQUE_ID_BYTES];
    s2_status st = S2_OK;
    if (w.rank == 0 && nccl) {
        ncclUniqueId u;
        st = s2_nccl_unique_id(nccl, &u, &err);
        if (!st) /* u holds nothing when NCCL failed */
            memcpy(id, u.internal, sizeof id);
    } else if (w.rank == 0) {
        st = s2_random_bytes(id, sizeof id, &err);
    }
    /* NCCL stays loaded: the id's bootstrap thread runs inside it until the process ends. */
    s2_rdzv_result res;
    if (st || s2_rendezvous(have ? &addr : NULL, &w, &fp, w.rank == 0 ? id : NULL, sizeof id,
                            timeout, &res, &err))
        return failed(prog, &err);
    uint8_t sha[32];
    char hex[65], fph[65];
    s2_sha256(res.payload, res.payload_len, sha);
    s2_hex(sha, 32, hex);
    s2_hex(res.fingerprint, 32, fph);
    printf("rendezvous %s: %d rank%s agreed in %.2f s; id sha256 %.16s (%zu bytes from rank 0), "
           "fingerprint %.16s\n", have ? addr.text : "(none: a world of one)", res.n_peers,
           res.n_peers == 1 ? "" : "s", res.seconds, hex, res.payload_len, fph);
    for (int k = 0; k < res.n_peers; k++) {
        const s2_rdzv_peer *p = &res.peers[k];
        printf("  rank %d: host %s, pid %d, local rank %d of %s\n", k, p->host, p->pid,
               p->local_rank, count_str(p->local_size, ls, sizeof ls));
    }
    s2_rdzv_result_free(&res);
    return 0;
}

/* ---------------------------------------------------------------- launch */

typedef struct launch_args {
    int gpus;
    const char *rdzv, *log_dir;
    double grace;
} launch_args;

static const s2_opt launch_opts[] = {
    {.name = "gpus", .kind = S2_OPT_INT, .metavar = "N", .help = "ranks to run, 1..1024",
     .off = offsetof(launch_args, gpus), .lo = 1, .hi = 1024, .flags = S2_OPT_REQUIRED},
    {.name = "rendezvous", .kind = S2_OPT_STRING, .metavar = "file:PATH|tcp:HOST:PORT",
     .help = "where the ranks meet (default S2LORA_RENDEZVOUS, else a private file)",
     .off = offsetof(launch_args, rdzv)},
    {.name = "log-dir", .kind = S2_OPT_STRING, .metavar = "DIR",
     .help = "the logs of ranks 1.. (default OUT/logs for train --out OUT, else ./s2lora-logs)",
     .off = offsetof(launch_args, log_dir), .complete = S2_COMPLETE_DIR},
    {.name = "grace", .kind = S2_OPT_DOUBLE, .metavar = "SECONDS",
     .help = "from SIGTERM to SIGKILL when a rank failed (default 10)",
     .off = offsetof(launch_args, grace), .dlo = 0, .dhi = 3600, .flags = S2_OPT_ABOVE_LO},
};

const s2_cmd s2_cmd_launch = {
    .name = "launch",
    .usage = "--gpus N [--rendezvous file:PATH|tcp:HOST:PORT] [--log-dir DIR]\n"
             "                     [--grace SECONDS] [--] COMMAND [ARGS...]",
    .about =
    "Runs N ranks of `s2lora COMMAND ARGS...` on this host, one a GPU: rank k gets RANK=k,\n"
    "WORLD_SIZE=N, LOCAL_RANK=k (it drives CUDA device k), LOCAL_WORLD_SIZE=N,\n"
    "S2LORA_LAUNCH_ID (one random id for the run), S2LORA_WORLD_FROM=torchrun (these\n"
    "variables, not an enclosing srun's or mpirun's) and S2LORA_RENDEZVOUS (--rendezvous, else\n"
    "S2LORA_RENDEZVOUS of this shell, else a file in a fresh private directory, removed at\n"
    "the end). Rank 0's output goes to this terminal; rank k's to DIR/rank-k.log (default\n"
    "DIR: OUT/logs for `train --out OUT`, else ./s2lora-logs). SIGINT, SIGTERM and SIGHUP\n"
    "are passed to every rank (a second one kills them). When a rank fails, the launcher\n"
    "says which and how, stops the others (SIGTERM, then SIGKILL after --grace seconds,\n"
    "default 10) and exits with the failed rank's code (128+signal for a signal).\n"
    "Whether this host has N GPUs is checked by the ranks when they open them; the\n"
    "launcher needs none (`s2lora launch --gpus 3 -- world` runs anywhere). For several\n"
    "hosts start the ranks with srun or mpirun and --rendezvous instead.\n",
    .opts = launch_opts, .n_opts = sizeof launch_opts / sizeof launch_opts[0],
    .pos_name = "COMMAND", .pos_complete = S2_COMPLETE_COMMAND, .stop_at_positional = 1,
    .unknown_hint = " (the command's own options go after it)",
};

/* The log directory: --log-dir, else OUT/logs for `train ... --out OUT`, else ./s2lora-logs. */
static void log_dir_of(char **sub, int n_sub, const char *flag, char *out, size_t cap)
{
    if (flag) {
        snprintf(out, cap, "%s", flag);
        return;
    }
    snprintf(out, cap, "s2lora-logs");
    if (strcmp(sub[0], "train"))
        return;
    for (int i = 1; i < n_sub; i++) { /* train's -o DIR, -oDIR, --out DIR, --out=DIR */
        if (!strcmp(sub[i], "--"))
            break;
        if ((!strcmp(sub[i], "--out") || !strcmp(sub[i], "-o")) && i + 1 < n_sub)
            snprintf(out, cap, "%s/logs", sub[++i]);
        else if (!strncmp(sub[i], "--out=", 6))
            snprintf(out, cap, "%s/logs", sub[i] + 6);
        else if (!strncmp(sub[i], "-o", 2) && sub[i][2])
            snprintf(out, cap, "%s/logs", sub[i] + 2);
    }
}

/* Prints the last lines of a rank's log, indented, to stderr: only its last TAIL_BYTES are
 * read, so a log of any size shows its end (a line longer than that shows its end only). */
#define TAIL_BYTES 8192
static void print_tail(const char *path, int lines)
{
    const int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return;
    struct stat sb;
    if (fstat(fd, &sb) || !S_ISREG(sb.st_mode) || sb.st_size <= 0) {
        close(fd);
        return;
    }
    const off_t from = sb.st_size > TAIL_BYTES ? sb.st_size - TAIL_BYTES : 0;
    char data[TAIL_BYTES];
    size_t n = 0;
    while (n < (size_t)(sb.st_size - from)) {
        const ssize_t got = pread(fd, data + n, (size_t)(sb.st_size - from) - n,
                                  from + (off_t)n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        n += (size_t)got;
    }
    close(fd);
    size_t skip = 0; /* started inside a line: drop its part, unless it is all there is */
    if (from > 0) {
        const char *nl = memchr(data, '\n', n);
        if (nl && (size_t)(nl - data) + 1 < n)
            skip = (size_t)(nl - data) + 1;
    }
    size_t start = n;
    for (int seen = 0; start > skip; start--)
        if (data[start - 1] == '\n' && start != n && ++seen == lines)
            break;
    if (n) {
        fprintf(stderr, "  its log ends:\n");
        for (char *line = data + start, *nl; line < data + n; line = nl + 1) {
            nl = memchr(line, '\n', (size_t)(data + n - line));
            if (!nl)
                nl = data + n;
            fprintf(stderr, "    %.*s\n", (int)(nl - line), line);
        }
    }
}

static void describe(int code, int status, char *buf, size_t cap)
{
    if (code == CLD_EXITED)
        snprintf(buf, cap, "exited with code %d", status);
    else
        snprintf(buf, cap, "was killed by signal %d (%s)%s", status, strsignal(status),
                 code == CLD_DUMPED ? ", core dumped" : "");
}

/* Removes the private rendezvous directory and what the rendezvous left in it. */
static void remove_private_dir(const char *dir)
{
    char path[4200];
    snprintf(path, sizeof path, "%s", dir);
    DIR *d = opendir(dir);
    if (d) {
        for (struct dirent *e; (e = readdir(d));) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

/* An early error of launch: removes the private rendezvous directory (if any); returns code. */
static int abandon(const char *private_dir, int code)
{
    if (private_dir[0])
        remove_private_dir(private_dir);
    return code;
}

static const char *sig_name(int sig)
{
    return sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : sig == SIGHUP ? "SIGHUP" : "?";
}

typedef struct rank_proc {
    pid_t pid;
    int done, code, status; /* code: CLD_EXITED / CLD_KILLED / CLD_DUMPED */
} rank_proc;

static void signal_all(rank_proc *r, int n, int sig)
{
    for (int k = 0; k < n; k++)
        if (r[k].pid > 0)
            killpg(r[k].pid, sig); /* the rank and what it started; a zombie keeps the group id */
}

/* The child: its own process group, the rank's environment, its log, then exec. */
static void exec_rank(const char *prog, int k, int n, const char *rdzv, const char *launch_id,
                      const char *log, char **sub, int n_sub, pid_t parent, const sigset_t *old)
{
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(1); /* the launcher is gone already */
    char v[32];
    snprintf(v, sizeof v, "%d", k), setenv("RANK", v, 1), setenv("LOCAL_RANK", v, 1);
    snprintf(v, sizeof v, "%d", n), setenv("WORLD_SIZE", v, 1), setenv("LOCAL_WORLD_SIZE", v, 1);
    setenv("S2LORA_RENDEZVOUS", rdzv, 1);
    setenv("S2LORA_LAUNCH_ID", launch_id, 1);
    setenv("S2LORA_WORLD_FROM", "torchrun", 1); /* not an enclosing srun's or mpirun's */
    const int in = open("/dev/null", O_RDONLY);
    if (in >= 0)
        dup2(in, 0), close(in);
    if (k > 0) {
        const int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) {
            fprintf(stderr, "%s launch: rank %d: cannot write its log %s: %s\n", prog, k, log,
                    strerror(errno));
            _exit(1);
        }
        dup2(fd, 1), dup2(fd, 2), close(fd);
    }
    signal(SIGINT, SIG_DFL), signal(SIGTERM, SIG_DFL), signal(SIGHUP, SIG_DFL);
    sigprocmask(SIG_SETMASK, old, NULL);
    char **args = calloc((size_t)n_sub + 2, sizeof *args);
    if (!args)
        _exit(1);
    args[0] = (char *)prog;
    memcpy(args + 1, sub, (size_t)n_sub * sizeof *args);
    execv("/proc/self/exe", args);
    fprintf(stderr, "%s launch: rank %d: cannot run /proc/self/exe: %s\n", prog, k,
            strerror(errno));
    _exit(127);
}

int s2_cli_launch(const char *prog, int argc, char **argv)
{
    launch_args a = {.grace = GRACE_DEFAULT};
    s2_opts_result res;
    int rc;
    if (!s2_opts_run(&s2_cmd_launch, argc, argv, &a, &res, &rc))
        return rc;
    char **sub = argv + res.rest;
    const int n_sub = argc - res.rest;
    const long n = a.gpus;
    const double grace = a.grace;
    const char *rdzv = a.rdzv, *log_flag = a.log_dir;
    s2_error err = {0};
    if (!n_sub)
        return s2_opts_usage_error(&s2_cmd_launch, "missing COMMAND (e.g. s2lora launch --gpus 4 "
                                   "-- train SPEC ...)");
    if (!strcmp(sub[0], "launch"))
        return s2_opts_usage_error(&s2_cmd_launch, "a launch inside a launch: run the command "
                                   "itself");
    const s2_env env = s2_env_process();
    s2_world w;
    if (s2_world_from_env(env, &w, &err))
        return failed(prog, &err);
    if (w.size > 1) {
        fprintf(stderr, "%s launch: this process is already rank %d of %d (%s); launch starts "
                "the ranks of one host itself: run it once, outside srun/mpirun, or let "
                "srun/mpirun start the ranks (with --rendezvous)\n", prog, w.rank, w.size,
                w.from);
        return 1;
    }
    /* The rendezvous: --rendezvous, S2LORA_RENDEZVOUS, else a file in a private directory. */
    char private_dir[4096] = "", text[4200];
    const char *given = rdzv ? rdzv : env.get(env.ctx, "S2LORA_RENDEZVOUS");
    s2_rdzv_addr addr;
    if (given) {
        if (s2_rdzv_parse(given, &addr, &err)) {
            s2_error_prefix(&err, "%s", rdzv ? "--rendezvous" : "S2LORA_RENDEZVOUS");
            return failed(prog, &err);
        }
        snprintf(text, sizeof text, "%s", given);
    } else {
        const char *tmp = getenv("TMPDIR");
        snprintf(private_dir, sizeof private_dir, "%s/s2lora-launch-XXXXXX",
                 tmp && tmp[0] ? tmp : "/tmp");
        if (!mkdtemp(private_dir)) {
            fprintf(stderr, "%s launch: cannot create a directory for the rendezvous (%s): %s\n",
                    prog, private_dir, strerror(errno));
            return 1;
        }
        snprintf(text, sizeof text, "file:%s/rendezvous", private_dir);
    }
    uint8_t idb[12];
    char launch_id[32];
    if (s2_random_bytes(idb, sizeof idb, &err))
        return abandon(private_dir, failed(prog, &err));
    s2_hex(idb, sizeof idb, launch_id);
    char dir[4096], log[4200];
    log_dir_of(sub, n_sub, log_flag, dir, sizeof dir);
    if (n > 1 && s2_mkdir_p(dir, &err))
        return abandon(private_dir, failed(prog, &err));
    char others[64];
    snprintf(others, sizeof others, n > 2 ? "ranks 1-%ld write" : "rank 1 writes", n - 1);
    if (n > 1)
        fprintf(stderr, "%s launch: %ld ranks on this host (launch %s); rank 0's output follows, "
                "%s to %s/rank-K.log; rendezvous %s\n", prog, n, launch_id, others, dir, text);
    else
        fprintf(stderr, "%s launch: 1 rank (launch %s); its output follows\n", prog, launch_id);
    fflush(stderr);

    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGINT), sigaddset(&set, SIGTERM), sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, &old);
    rank_proc *r = calloc((size_t)n, sizeof *r);
    if (!r) {
        fprintf(stderr, "%s launch: out of memory\n", prog);
        sigprocmask(SIG_SETMASK, &old, NULL);
        return abandon(private_dir, 1);
    }
    const pid_t self = getpid();
    int alive = 0, first = -1, got = 0, stopping = 0, killed = 0;
    double kill_at = 0;
    for (int k = 0; k < n; k++) {
        snprintf(log, sizeof log, "%s/rank-%d.log", dir, k);
        fflush(NULL);
        const pid_t pid = fork();
        if (pid == 0)
            exec_rank(prog, k, (int)n, text, launch_id, log, sub, n_sub, self, &old);
        if (pid < 0) {
            fprintf(stderr, "%s launch: cannot start rank %d: %s; stopping the others\n", prog, k,
                    strerror(errno));
            first = k, r[k].done = 1, r[k].code = CLD_EXITED, r[k].status = 1;
            stopping = 1, kill_at = now_s() + grace;
            signal_all(r, k, SIGTERM);
            break;
        }
        setpgid(pid, pid);
        r[k].pid = pid;
        alive++;
    }
    while (alive > 0) {
        siginfo_t si;
        struct timespec to = {0, 200 * 1000 * 1000};
        const int sig = sigtimedwait(&set, &si, &to);
        if (sig == SIGINT || sig == SIGTERM || sig == SIGHUP) {
            if (!got) {
                got = sig;
                fprintf(stderr, "%s launch: got %s; passing it to every rank (a second one kills "
                        "them)\n", prog, sig_name(sig));
                signal_all(r, (int)n, sig);
                if (!stopping)
                    stopping = 1, kill_at = now_s() + grace;
            } else if (!killed) {
                fprintf(stderr, "%s launch: got %s again; killing every rank\n", prog,
                        sig_name(sig));
                signal_all(r, (int)n, SIGKILL);
                killed = 1;
            }
        }
        /* the ranks that ended since the last wake (SIGCHLD wakes it at once), in rank order:
         * of two that fail within that moment, the lower-numbered is named as the first */
        for (int k = 0; k < n; k++) {
            if (r[k].done || r[k].pid <= 0)
                continue;
            memset(&si, 0, sizeof si);
            if (waitid(P_PID, (id_t)r[k].pid, &si, WEXITED | WNOHANG | WNOWAIT) || !si.si_pid)
                continue;
            r[k].done = 1, r[k].code = si.si_code, r[k].status = si.si_status;
            alive--;
            const int bad = si.si_code != CLD_EXITED || si.si_status != 0;
            if (!bad || stopping)
                continue;
            char how[160];
            describe(r[k].code, r[k].status, how, sizeof how);
            first = k;
            snprintf(log, sizeof log, "%s/rank-%d.log", dir, k);
            fprintf(stderr, "%s launch: rank %d %s%s%s%s; stopping the other rank%s (SIGTERM, "
                    "SIGKILL after %g s)\n", prog, k, how, k ? " (its log: " : "", k ? log : "",
                    k ? ")" : "", n > 2 ? "s" : "", grace);
            if (k)
                print_tail(log, 10);
            signal_all(r, (int)n, SIGTERM);
            stopping = 1, kill_at = now_s() + grace;
        }
        if (stopping && !killed && alive > 0 && now_s() >= kill_at) {
            char list[512] = "";
            int m = 0;
            for (int k = 0; k < n; k++)
                if (!r[k].done && r[k].pid > 0 && m++ < 16)
                    snprintf(list + strlen(list), sizeof list - strlen(list), "%s%d",
                             list[0] ? ", " : "", k);
            if (m > 16) /* the first 16 named, the rest counted */
                snprintf(list + strlen(list), sizeof list - strlen(list), " and %d more",
                         m - 16);
            fprintf(stderr, "%s launch: rank%s %s still running %g s after SIGTERM; killing\n",
                    prog, alive > 1 ? "s" : "", list, grace);
            signal_all(r, (int)n, SIGKILL);
            killed = 1;
        }
    }
    if (stopping) /* what the ranks started may outlive them: their groups go too */
        signal_all(r, (int)n, SIGKILL);
    for (int k = 0; k < n; k++)
        if (r[k].pid > 0)
            waitpid(r[k].pid, NULL, 0);
    if (private_dir[0])
        remove_private_dir(private_dir);
    int code = 0;
    if (got)
        code = 128 + got;
    else if (first >= 0)
        code = r[first].code == CLD_EXITED ? r[first].status : 128 + r[first].status;
    if (code)
        fprintf(stderr, "%s launch: exit %d (%s)\n", prog, code,
                got ? "stopped by a signal" : "a rank failed");
    free(r);
    return code;
}

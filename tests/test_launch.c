/*
 * test_launch.c — `s2lora launch` and `s2lora world` as a user runs them, on a machine without
 * a GPU: N ranks meet through each kind of rendezvous, their logs, a failing rank (an exit, a
 * signal, a rank that hangs and ignores SIGTERM) stopping the launch within a bounded time,
 * signals passed on, the rendezvous refusing ranks that run different things, and strict
 * argument checks.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "gen/util.h"
#include "run_cmd.h"
#include "tmpdir.h"
#include "world_helpers.h"

#define BIN S2_BINARY_DIR "/s2lora"

static char dir[64];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/s2_test_launch.XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void) { s2_test_rmtree(dir); }

TestSuite(launch, .init = make_dir, .fini = remove_dir, .timeout = 90);
TestSuite(world, .init = make_dir, .fini = remove_dir, .timeout = 60);

/* Runs a command line in this suite's directory (world_helpers.h's run_world_v). */
static int run_in(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int run_in(char **out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    const int rc = run_world_v(dir, out, fmt, ap);
    va_end(ap);
    return rc;
}

static char *slurp(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *slurp(const char *fmt, ...)
{
    char path[512], *data = NULL;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(path, sizeof path, fmt, ap);
    va_end(ap);
    cr_assert_eq(s2_read_file(path, &data, NULL, NULL), S2_OK, "cannot read %s", path);
    return data;
}

/* The 16 hex digits after "id sha256 " in text (static). */
static const char *id_in(const char *text)
{
    static char id[17];
    const char *p = strstr(text, "id sha256 ");
    cr_assert(p, "no id in: %s", text);
    snprintf(id, sizeof id, "%s", p + 10);
    return id;
}

/* Rank 0's output shows all 3 ranks; each other rank's log shows its own world and the same
 * id. */
static void expect_three(const char *out, const char *logs, const char *rdzv_phrase)
{
    cr_expect(strstr(out, "rank 0 of 3, local rank 0 of 3"), "%s", out);
    cr_expect(strstr(out, "3 ranks agreed"), "%s", out);
    cr_expect(strstr(out, rdzv_phrase), "%s", out);
    for (int k = 0; k < 3; k++) {
        char line[32];
        snprintf(line, sizeof line, "  rank %d: host ", k);
        cr_expect(strstr(out, line), "%s missing: %s", line, out);
    }
    char id0[17];
    snprintf(id0, sizeof id0, "%s", id_in(out));
    for (int k = 1; k < 3; k++) {
        char *log = slurp("%s/rank-%d.log", logs, k), want[64];
        snprintf(want, sizeof want, "rank %d of 3, local rank %d of 3", k, k);
        cr_expect(strstr(log, want), "rank %d's log: %s", k, log);
        cr_expect(strstr(log, "s2lora launch (RANK="), "%s", log);
        cr_expect_str_eq(id_in(log), id0, "rank %d's id", k);
        free(log);
    }
}

Test(launch, three_ranks_private_file_rendezvous)
{
    char *out;
    cr_assert_eq(run_in(&out, "%s launch --gpus 3 --log-dir logs -- world", BIN), 0, "%s", out);
    cr_expect(strstr(out, "s2lora launch: 3 ranks on this host"), "%s", out);
    cr_expect(strstr(out, "ranks 1-2 write to logs/rank-K.log"), "%s", out);
    char logs[128];
    snprintf(logs, sizeof logs, "%s/logs", dir);
    expect_three(out, logs, "rendezvous file:");
    /* the private rendezvous directory is gone */
    const char *p = strstr(out, "rendezvous file:");
    char rdir[256];
    snprintf(rdir, sizeof rdir, "%s", p + 16);
    char *slash = strstr(rdir, "/rendezvous");
    cr_assert(slash, "%s", rdir);
    *slash = '\0';
    cr_expect(!strncmp(rdir, dir, strlen(dir)), "not under TMPDIR: %s", rdir);
    struct stat st;
    cr_expect_neq(stat(rdir, &st), 0, "%s still exists", rdir);
    free(out);
}

Test(launch, three_ranks_given_file_and_tcp_rendezvous)
{
    char *out, logs[128];
    snprintf(logs, sizeof logs, "%s/logs", dir);
    cr_assert_eq(run_in(&out, "%s launch --gpus 3 --rendezvous file:%s/shared/r --log-dir logs -- "
                        "world", BIN, dir), 0, "%s", out);
    expect_three(out, logs, "rendezvous file:");
    free(out);
    const int port = free_port();
    cr_assert_eq(run_in(&out, "%s launch --gpus 3 --rendezvous tcp:127.0.0.1:%d --log-dir logs "
                        "world", BIN, port), 0, "%s", out);
    char phrase[128];
    snprintf(phrase, sizeof phrase, "rendezvous tcp:127.0.0.1:%d: 3 ranks", port);
    expect_three(out, logs, phrase);
    free(out);
    /* S2LORA_RENDEZVOUS of the shell when no flag */
    cr_assert_eq(run_in(&out, "S2LORA_RENDEZVOUS=file:%s/env-r %s launch --gpus 3 --log-dir logs "
                        "-- world", dir, BIN), 0, "%s", out);
    snprintf(phrase, sizeof phrase, "rendezvous file:%s/env-r:", dir);
    expect_three(out, logs, phrase);
    free(out);
}

Test(launch, inside_a_one_task_srun_step)
{
    /* the ranks read the launcher's variables, even where the shell says to read Slurm's */
    char *out;
    cr_assert_eq(run_in(&out, "SLURM_PROCID=0 SLURM_STEP_ID=0 SLURM_STEP_NUM_TASKS=1 "
                        "SLURM_LOCALID=0 S2LORA_WORLD_FROM=slurm %s launch --gpus 2 -- world",
                        BIN), 0, "%s", out);
    cr_expect(strstr(out, "rank 0 of 2, local rank 0 of 2") && strstr(out, "2 ranks agreed"),
              "%s", out);
    free(out);
}

Test(launch, nccl_unique_id_through_the_rendezvous)
{
    char *out, logs[128];
    snprintf(logs, sizeof logs, "%s/logs", dir);
    cr_assert_eq(run_in(&out, "%s launch --gpus 3 --log-dir logs -- world --nccl", BIN), 0, "%s",
                 out);
    cr_expect(strstr(out, "NCCL 2."), "%s", out);
    expect_three(out, logs, "(128 bytes from rank 0)");
    free(out);
}

Test(launch, default_log_dirs)
{
    char *out;
    cr_assert_eq(run_in(&out, "%s launch --gpus 2 world", BIN), 0, "%s", out);
    cr_expect(strstr(out, "rank 1 writes to s2lora-logs/rank-K.log"), "%s", out);
    char *log = slurp("%s/s2lora-logs/rank-1.log", dir);
    cr_expect(strstr(log, "rank 1 of 2"), "%s", log);
    free(log), free(out);
    /* train's output directory: OUT/logs (train fails here, on its missing arguments) */
    const int rc = run_in(&out, "%s launch --gpus 2 -- train --out run1", BIN);
    cr_expect_eq(rc, 2, "%s", out);
    cr_expect(strstr(out, "write to run1/logs/rank-K.log") ||
              strstr(out, "writes to run1/logs/rank-K.log"), "%s", out);
    cr_expect(strstr(out, "s2lora launch: rank ") && strstr(out, "exited with code 2"), "%s",
              out);
    /* the rank that failed first said why (rank 0 on the terminal, rank 1 in its log); the
     * other may have been stopped before it printed anything */
    log = slurp("%s/run1/logs/rank-1.log", dir);
    cr_expect(strstr(log, "missing SPEC") || strstr(out, "missing SPEC"), "%s\n%s", out, log);
    free(out);
    free(log);
}

/* A failing rank stops the launch: which rank, how, its log; the others stopped; bounded. */
Test(launch, a_rank_that_exits_or_is_killed)
{
    char *out;
    double t0 = mono_now();
    int rc = run_in(&out, "%s launch --gpus 3 --log-dir logs -- world --fail-rank 1 "
                    "--fail-how exit", BIN);
    cr_expect_eq(rc, 7, "%s", out);
    cr_expect(strstr(out, "s2lora launch: rank 1 exited with code 7 (its log: logs/rank-1.log); "
                          "stopping the other ranks"), "%s", out);
    cr_expect(strstr(out, "    s2lora world: rank 1 fails as asked (--fail-how exit)"), "%s", out);
    cr_expect(strstr(out, "s2lora launch: exit 7"), "%s", out);
    cr_expect_lt(mono_now() - t0, 30.0);
    free(out);
    t0 = mono_now();
    rc = run_in(&out, "%s launch --gpus 3 --log-dir logs -- world --fail-rank 0 --fail-how kill",
                BIN);
    cr_expect_eq(rc, 128 + 9, "%s", out);
    cr_expect(strstr(out, "s2lora launch: rank 0 was killed by signal 9 (Killed); stopping"),
              "%s", out);
    cr_expect_lt(mono_now() - t0, 30.0);
    free(out);
}

Test(launch, a_hanging_rank_is_killed_after_the_grace_period)
{
    /* rank 2 hangs ignoring SIGTERM; rank 0 gives up waiting for it after 1 s and fails (rank 1
     * with it); the launcher stops the others with SIGTERM and rank 2 with SIGKILL after its
     * default 10 s */
    char *out;
    const double t0 = mono_now();
    const int rc = run_in(&out, "S2LORA_RENDEZVOUS_TIMEOUT=1 %s launch --gpus 3 --log-dir logs "
                          "-- world --fail-rank 2 --fail-how hang", BIN);
    const double took = mono_now() - t0;
    cr_expect_eq(rc, 1, "%s", out);
    cr_expect(strstr(out, "only 2 of 3 ranks arrived within 1 s (missing rank 2)"), "%s", out);
    /* rank 0 gives up first; rank 1 hears its refusal at once, so either may be seen first (a
     * rank other than 0 is named with its log) */
    cr_expect(strstr(out, "s2lora launch: rank 0 exited with code 1; stopping the other ranks") ||
                  strstr(out, "s2lora launch: rank 1 exited with code 1 (its log: "
                              "logs/rank-1.log); stopping the other ranks"),
              "%s", out);
    cr_expect(strstr(out, "s2lora launch: rank 2 still running 10 s after SIGTERM; killing"),
              "%s", out);
    cr_expect_lt(took, 30.0);
    cr_expect_gt(took, 9.0);
    free(out);
}

/* The pid a rank's first line names. */
static pid_t pid_in(const char *text)
{
    const char *p = strstr(text, ", pid ");
    cr_assert(p, "no pid in: %s", text);
    return (pid_t)atoi(p + 6);
}

Test(launch, signals_reach_every_rank)
{
    /* ranks 0 and 2 wait in the rendezvous; rank 1 hangs ignoring SIGTERM */
    char out_path[128], cmd[512];
    snprintf(out_path, sizeof out_path, "%s/launcher.out", dir);
    snprintf(cmd, sizeof cmd, "cd %s && exec env -u RANK -u WORLD_SIZE -u LOCAL_RANK TMPDIR=%s "
             "%s launch --gpus 3 --grace 1 --log-dir logs -- world --fail-rank 1 --fail-how hang "
             "> %s 2>&1", dir, dir, BIN, out_path);
    fflush(NULL);
    const pid_t launcher = fork();
    cr_assert_geq(launcher, 0);
    if (!launcher) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    /* every rank has said its pid */
    char *logs[3] = {0};
    for (int i = 0; i < 500; i++) {
        int ready = 1;
        for (int k = 0; k < 3; k++) {
            free(logs[k]);
            logs[k] = NULL;
            char path[160];
            if (k)
                snprintf(path, sizeof path, "%s/logs/rank-%d.log", dir, k);
            else
                snprintf(path, sizeof path, "%s", out_path);
            ready &= s2_read_file(path, &logs[k], NULL, NULL) == S2_OK &&
                     strstr(logs[k], ", pid ") && (k != 1 || strstr(logs[k], "fails as asked"));
        }
        if (ready)
            break;
        usleep(10000);
    }
    pid_t ranks[3];
    for (int k = 0; k < 3; k++) {
        cr_assert(logs[k] && strstr(logs[k], ", pid "), "rank %d never started", k);
        ranks[k] = pid_in(logs[k]);
        free(logs[k]);
    }
    const double t0 = mono_now();
    kill(launcher, SIGTERM);
    int status;
    cr_assert_eq(waitpid(launcher, &status, 0), launcher);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 128 + SIGTERM, "status %d", status);
    cr_expect_lt(mono_now() - t0, 10.0);
    for (int k = 0; k < 3; k++)
        cr_expect(kill(ranks[k], 0) != 0 && errno == ESRCH, "rank %d (pid %d) still runs", k,
                  ranks[k]);
    char *out = slurp("%s", out_path);
    cr_expect(strstr(out, "s2lora launch: got SIGTERM; passing it to every rank"), "%s", out);
    cr_expect(strstr(out, "s2lora launch: rank 1 still running 1 s after SIGTERM; killing"), "%s",
              out);
    cr_expect(strstr(out, "s2lora launch: exit 143 (stopped by a signal)"), "%s", out);
    free(out);
}

Test(launch, arguments)
{
    char *out;
    cr_expect_eq(run_in(&out, "%s launch --help", BIN), 0);
    cr_expect(strstr(out, "usage: s2lora launch --gpus N"), "%s", out);
    free(out);
    const char *bad[][2] = {
        {"launch world", "missing --gpus N"},
        {"launch --gpus 0 world", "--gpus: \"0\" is not an integer in 1..1024"},
        {"launch --gpus 2abc world", "--gpus: \"2abc\" is not an integer in 1..1024"},
        {"launch --gpus 1025 world", "--gpus: \"1025\" is not an integer in 1..1024"},
        {"launch --gpus -1 world", "--gpus: \"-1\" is not an integer in 1..1024"},
        {"launch --gpus", "option '--gpus' needs a value"},
        {"launch --gpus 2", "missing COMMAND"},
        {"launch --gpus 2 --", "missing COMMAND"},
        {"launch --gpus 2 --grace 0 world", "--grace: \"0\" is not a number more than 0 and at "
                                            "most 3600"},
        {"launch --gpus 2 --lr 1 train", "unknown option '--lr' (the command's own options go "
                                         "after it)"},
        {"launch --gpus 2 -- launch --gpus 2 world", "a launch inside a launch"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_expect_eq(run_in(&out, "%s %s", BIN, bad[i][0]), 2, "%s: %s", bad[i][0], out);
        cr_expect(strstr(out, bad[i][1]), "%s: '%s' not in: %s", bad[i][0], bad[i][1], out);
        free(out);
    }
    cr_expect_eq(run_in(&out, "%s launch --gpus 2 --rendezvous tcp:h world", BIN), 1);
    cr_expect(strstr(out, "--rendezvous: rendezvous \"tcp:h\": missing port"), "%s", out);
    free(out);
    /* a launcher inside another launcher's rank */
    cr_expect_eq(run_in(&out, "RANK=1 WORLD_SIZE=2 LOCAL_RANK=1 %s launch --gpus 2 world", BIN),
                 1);
    cr_expect(strstr(out, "this process is already rank 1 of 2 (torchrun-style variables"), "%s",
              out);
    free(out);
    cr_expect_eq(run(BIN " --help", &out), 0);
    cr_expect(strstr(out, "  launch ") && strstr(out, "  world "), "%s", out);
    free(out);
}

Test(world, alone_and_under_launchers)
{
    char *out;
    cr_assert_eq(run_in(&out, "%s world", BIN), 0, "%s", out);
    cr_expect(strstr(out, "rank 0 of 1, local rank 0 of 1"), "%s", out);
    cr_expect(strstr(out, "no launcher's variables: a world of one"), "%s", out);
    cr_expect(strstr(out, "1 rank agreed"), "%s", out);
    free(out);
    cr_assert_eq(run_in(&out, "SLURM_PROCID=3 SLURM_STEP_ID=0 SLURM_STEP_NUM_TASKS=8 "
                        "SLURM_LOCALID=1 SLURM_NTASKS_PER_NODE=2 SLURM_JOB_ID=5 %s world", BIN),
                 0, "%s", out);
    cr_expect(strstr(out, "rank 3 of 8, local rank 1 of 2") && strstr(out, "Slurm step 5.0"),
              "%s", out);
    cr_expect(strstr(out, "no rendezvous given"), "%s", out);
    free(out);
    cr_expect_eq(run_in(&out, "RANK=x WORLD_SIZE=2 LOCAL_RANK=0 %s world", BIN), 1);
    cr_expect(strstr(out, "RANK=\"x\" is not a decimal integer (valid: 0..1)"), "%s", out);
    free(out);
    cr_expect_eq(run_in(&out, "%s world --fail-rank 1 --fail-how exit", BIN), 2);
    cr_expect(strstr(out, "this world has ranks 0..0"), "%s", out);
    free(out);
    cr_expect_eq(run_in(&out, "%s world --fail-rank 0", BIN), 2);
    cr_expect(strstr(out, "--fail-rank and --fail-how go together"), "%s", out);
    free(out);
    cr_expect_eq(run_in(&out, "%s world --fail-rank 0 --fail-how crash", BIN), 2);
    cr_expect(strstr(out, "--fail-how: \"crash\" is not one of: exit, kill, hang"), "%s", out);
    free(out);
    cr_expect_eq(run_in(&out, "%s world --help", BIN), 0);
    cr_expect(strstr(out, "usage: s2lora world"), "%s", out);
    free(out);
}

Test(world, ranks_that_run_different_things_refuse)
{
    char *out;
    const int rc = run_in(&out, "(RANK=1 WORLD_SIZE=2 LOCAL_RANK=1 %s world --rendezvous "
                          "file:%s/r --fingerprint-extra B; echo rank1-exit=$?) & RANK=0 "
                          "WORLD_SIZE=2 LOCAL_RANK=0 %s world --rendezvous file:%s/r "
                          "--fingerprint-extra A; echo rank0-exit=$?; wait", BIN, dir, BIN, dir);
    cr_expect_eq(rc, 0, "%s", out);
    cr_expect(strstr(out, "rank0-exit=1") && strstr(out, "rank1-exit=1"), "%s", out);
    cr_expect(strstr(out, "s2lora: rendezvous file:") &&
              strstr(out, "/r: rank 1 differs from rank 0 in extra: rank 1 runs 'B', rank 0 "
                          "runs 'A'"), "%s", out);
    cr_expect(strstr(out, "rank 0 refused the world: rank 1 differs from rank 0 in extra"), "%s",
              out);
    free(out);
}

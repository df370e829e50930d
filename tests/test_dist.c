/*
 * test_dist.c — the pieces of a run on several GPUs that need no GPU: the world read from each
 * launcher's environment (fake environments), rendezvous addresses, fingerprints, the
 * rendezvous itself across forked processes (file and TCP: agreement, timeouts, refusals,
 * stale files of an earlier run, strays), and NCCL's loader as far as it goes without a GPU.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runtime/dist/dist.h"
#include "runtime/core/nccl.h"
#include "tmpdir.h"
#include "world_helpers.h"

/* ---- environments ---------------------------------------------------------------------- */

/* The world of a fake environment: entries "NAME=VALUE", NULL-terminated. */
static s2_status world_of(char **envp, s2_world *w, s2_error *err)
{
    return s2_world_from_env(s2_env_array(envp), w, err);
}

#define ENV(...) ((char *[]){__VA_ARGS__, NULL})

static void expect_error(char **envp, const char *phrase)
{
    s2_world w;
    s2_error err = {0};
    cr_expect_eq(world_of(envp, &w, &err), S2_ERR_INVALID, "expected an error with '%s'", phrase);
    cr_expect(err.msg && strstr(err.msg, phrase), "'%s' not in: %s", phrase,
              err.msg ? err.msg : "(none)");
    s2_error_clear(&err);
}

Test(world, none_is_a_world_of_one)
{
    s2_world w;
    cr_assert_eq(world_of(ENV("PATH=/bin", "HOME=/root"), &w, NULL), S2_OK);
    cr_expect_eq(w.rank, 0);
    cr_expect_eq(w.size, 1);
    cr_expect_eq(w.local_rank, 0);
    cr_expect_eq(w.local_size, 1);
    cr_expect_eq(w.source, S2_WORLD_SINGLE);
    cr_expect(strstr(w.from, "a world of one"), "%s", w.from);
}

Test(world, torchrun_style)
{
    s2_world w;
    cr_assert_eq(world_of(ENV("RANK=2", "WORLD_SIZE=4", "LOCAL_RANK=2", "LOCAL_WORLD_SIZE=4",
                              "TORCHELASTIC_RUN_ID=abc"), &w, NULL), S2_OK);
    cr_expect_eq(w.rank, 2);
    cr_expect_eq(w.size, 4);
    cr_expect_eq(w.local_rank, 2);
    cr_expect_eq(w.local_size, 4);
    cr_expect_eq(w.source, S2_WORLD_TORCHRUN);
    cr_expect_eq(w.launched, 0);
    cr_expect(strstr(w.from, "torchrun-style variables (RANK=2 WORLD_SIZE=4 LOCAL_RANK=2 "
                             "LOCAL_WORLD_SIZE=4)"), "%s", w.from);
    cr_expect(strstr(w.launch_id, "abc"), "%s", w.launch_id);
    /* s2lora launch's own; LOCAL_WORLD_SIZE may be absent (then unknown: 0) */
    cr_assert_eq(world_of(ENV("RANK=0", "WORLD_SIZE=2", "LOCAL_RANK=0", "S2LORA_LAUNCH_ID=l1"),
                          &w, NULL), S2_OK);
    cr_expect_eq(w.launched, 1);
    cr_expect_eq(w.local_size, 0);
    cr_expect_str_eq(w.launch_id, "l1");
    cr_expect(!strncmp(w.from, "s2lora launch (", 15), "%s", w.from);
}

Test(world, torchrun_incomplete_or_bad_numbers)
{
    expect_error(ENV("RANK=1", "LOCAL_RANK=1"), "WORLD_SIZE is not set");
    expect_error(ENV("RANK=1", "WORLD_SIZE=2"), "LOCAL_RANK is not set");
    expect_error(ENV("LOCAL_WORLD_SIZE=2"), "RANK is not set");
    expect_error(ENV("RANK=2abc", "WORLD_SIZE=4", "LOCAL_RANK=0"),
                 "RANK=\"2abc\" is not a decimal integer (valid: 0..3)");
    expect_error(ENV("RANK=4", "WORLD_SIZE=4", "LOCAL_RANK=0"),
                 "RANK=4 is out of range (valid: 0..3)");
    expect_error(ENV("RANK=-1", "WORLD_SIZE=4", "LOCAL_RANK=0"), "RANK=-1 is out of range");
    /* no sign at all: minus zero is refused too, not read as 0 */
    expect_error(ENV("RANK=-0", "WORLD_SIZE=4", "LOCAL_RANK=0"),
                 "RANK=-0 is out of range (valid: 0..3)");
    expect_error(ENV("RANK=0", "WORLD_SIZE=4", "LOCAL_RANK=-00"),
                 "LOCAL_RANK=-00 is out of range (valid: 0..3)");
    expect_error(ENV("RANK=+1", "WORLD_SIZE=4", "LOCAL_RANK=0"), "RANK=\"+1\" is not a decimal");
    expect_error(ENV("RANK= 1", "WORLD_SIZE=4", "LOCAL_RANK=0"), "RANK=\" 1\" is not a decimal");
    expect_error(ENV("RANK=", "WORLD_SIZE=4", "LOCAL_RANK=0"), "RANK=\"\" is not a decimal");
    expect_error(ENV("RANK=0", "WORLD_SIZE=0", "LOCAL_RANK=0"), "WORLD_SIZE=0 is out of range");
    expect_error(ENV("RANK=0", "WORLD_SIZE=0x4", "LOCAL_RANK=0"), "WORLD_SIZE=\"0x4\"");
    expect_error(ENV("RANK=0", "WORLD_SIZE=99999999999999999999999", "LOCAL_RANK=0"),
                 "WORLD_SIZE=99999999999999999999999 is out of range (valid: 1..65536)");
    expect_error(ENV("RANK=0", "WORLD_SIZE=4", "LOCAL_RANK=2", "LOCAL_WORLD_SIZE=2"),
                 "LOCAL_RANK=2 is out of range (valid: 0..1)");
    expect_error(ENV("RANK=0", "WORLD_SIZE=4", "LOCAL_RANK=0", "LOCAL_WORLD_SIZE=5"),
                 "LOCAL_WORLD_SIZE=5 is out of range (valid: 1..4)");
    expect_error(ENV("RANK=0", "WORLD_SIZE=4", "LOCAL_RANK=4"), "LOCAL_RANK=4 is out of range");
    /* leading zeros are still decimal */
    s2_world w;
    cr_expect_eq(world_of(ENV("RANK=03", "WORLD_SIZE=4", "LOCAL_RANK=0"), &w, NULL), S2_OK);
    cr_expect_eq(w.rank, 3);
}

Test(world, slurm_step)
{
    s2_world w;
    s2_error err = {0};
    cr_assert_eq(world_of(ENV("SLURM_PROCID=5", "SLURM_STEP_ID=0", "SLURM_STEP_NUM_TASKS=8",
                              "SLURM_NTASKS=8", "SLURM_LOCALID=1", "SLURM_NODEID=1",
                              "SLURM_STEP_TASKS_PER_NODE=4(x2)", "SLURM_JOB_ID=77"), &w, &err),
                 S2_OK, "%s", err.msg);
    cr_expect_eq(w.rank, 5);
    cr_expect_eq(w.size, 8);
    cr_expect_eq(w.local_rank, 1);
    cr_expect_eq(w.local_size, 4);
    cr_expect_eq(w.source, S2_WORLD_SLURM);
    cr_expect(strstr(w.launch_id, "77.0"), "%s", w.launch_id);
    cr_expect(strstr(w.from, "Slurm step 77.0 (SLURM_PROCID=5"), "%s", w.from);
    /* the job's list with uneven nodes; SLURM_NTASKS when the step's count is absent */
    cr_assert_eq(world_of(ENV("SLURM_PROCID=6", "SLURM_STEPID=3", "SLURM_NTASKS=7",
                              "SLURM_LOCALID=0", "SLURM_NODEID=3",
                              "SLURM_TASKS_PER_NODE=2(x3),1"), &w, NULL), S2_OK);
    cr_expect_eq(w.size, 7);
    cr_expect_eq(w.local_size, 1);
    /* no list: SLURM_NTASKS_PER_NODE; none of them: unknown */
    cr_assert_eq(world_of(ENV("SLURM_PROCID=1", "SLURM_STEP_ID=0", "SLURM_NTASKS=4",
                              "SLURM_LOCALID=1", "SLURM_NTASKS_PER_NODE=2"), &w, NULL), S2_OK);
    cr_expect_eq(w.local_size, 2);
    cr_assert_eq(world_of(ENV("SLURM_PROCID=1", "SLURM_STEP_ID=0", "SLURM_NTASKS=4",
                              "SLURM_LOCALID=1"), &w, NULL), S2_OK);
    cr_expect_eq(w.local_size, 0);
}

Test(world, slurm_errors)
{
    expect_error(ENV("SLURM_PROCID=1", "SLURM_STEP_ID=0", "SLURM_LOCALID=0"),
                 "SLURM_NTASKS is not set");
    expect_error(ENV("SLURM_PROCID=1", "SLURM_STEP_ID=0", "SLURM_NTASKS=4"),
                 "SLURM_LOCALID is not set");
    expect_error(ENV("SLURM_PROCID=4", "SLURM_STEP_ID=0", "SLURM_STEP_NUM_TASKS=4",
                     "SLURM_LOCALID=0"), "SLURM_PROCID=4 is out of range (valid: 0..3)");
    expect_error(ENV("SLURM_PROCID=1", "SLURM_STEP_ID=0", "SLURM_NTASKS=4", "SLURM_LOCALID=1",
                     "SLURM_NODEID=0", "SLURM_STEP_TASKS_PER_NODE=2(x2"),
                 "SLURM_STEP_TASKS_PER_NODE=\"2(x2\" is not a Slurm tasks-per-node list");
    expect_error(ENV("SLURM_PROCID=1", "SLURM_STEP_ID=0", "SLURM_NTASKS=4", "SLURM_LOCALID=1",
                     "SLURM_NODEID=2", "SLURM_STEP_TASKS_PER_NODE=2(x2)"),
                 "SLURM_STEP_TASKS_PER_NODE=2(x2) lists 2 nodes; SLURM_NODEID=2 is not among");
    expect_error(ENV("SLURM_PROCID=1", "SLURM_STEP_ID=0", "SLURM_NTASKS=4", "SLURM_LOCALID=2",
                     "SLURM_NODEID=0", "SLURM_STEP_TASKS_PER_NODE=2(x2)"),
                 "gives this node 2 tasks, but SLURM_LOCALID=2");
}

Test(world, slurm_batch_script_is_one_process)
{
    /* sbatch -n 4: the batch script has SLURM_PROCID=0 and SLURM_NTASKS=4 but no step */
    s2_world w;
    cr_assert_eq(world_of(ENV("SLURM_PROCID=0", "SLURM_NTASKS=4", "SLURM_LOCALID=0",
                              "SLURM_JOB_ID=9"), &w, NULL), S2_OK);
    cr_expect_eq(w.size, 1);
    cr_expect_eq(w.source, S2_WORLD_SINGLE);
    cr_expect(strstr(w.from, "batch script"), "%s", w.from);
    /* and s2lora launch inside it reads its own variables without a conflict */
    cr_assert_eq(world_of(ENV("SLURM_PROCID=0", "SLURM_NTASKS=4", "RANK=3", "WORLD_SIZE=4",
                              "LOCAL_RANK=3"), &w, NULL), S2_OK);
    cr_expect_eq(w.rank, 3);
}

Test(world, open_mpi)
{
    s2_world w;
    cr_assert_eq(world_of(ENV("OMPI_COMM_WORLD_RANK=3", "OMPI_COMM_WORLD_SIZE=16",
                              "OMPI_COMM_WORLD_LOCAL_RANK=3", "OMPI_COMM_WORLD_LOCAL_SIZE=8",
                              "PMIX_NAMESPACE=prterun-x-1@1"), &w, NULL), S2_OK);
    cr_expect_eq(w.rank, 3);
    cr_expect_eq(w.size, 16);
    cr_expect_eq(w.local_size, 8);
    cr_expect_eq(w.source, S2_WORLD_MPI);
    cr_expect(strstr(w.launch_id, "prterun-x-1@1"), "%s", w.launch_id);
    expect_error(ENV("OMPI_COMM_WORLD_RANK=3", "OMPI_COMM_WORLD_SIZE=16"),
                 "OMPI_COMM_WORLD_LOCAL_RANK is not set");
    expect_error(ENV("OMPI_COMM_WORLD_RANK=16", "OMPI_COMM_WORLD_SIZE=16",
                     "OMPI_COMM_WORLD_LOCAL_RANK=0"), "OMPI_COMM_WORLD_RANK=16 is out of range");
}

Test(world, precedence_and_conflicts)
{
    s2_world w;
    /* s2lora launch inside a one-task srun step: the enclosing world of one is no conflict */
    cr_assert_eq(world_of(ENV("RANK=2", "WORLD_SIZE=4", "LOCAL_RANK=2", "SLURM_PROCID=0",
                              "SLURM_STEP_ID=0", "SLURM_STEP_NUM_TASKS=1", "SLURM_LOCALID=0"),
                          &w, NULL), S2_OK);
    cr_expect_eq(w.source, S2_WORLD_TORCHRUN);
    cr_expect_eq(w.rank, 2);
    /* two descriptions of the same world agree */
    cr_assert_eq(world_of(ENV("RANK=1", "WORLD_SIZE=2", "LOCAL_RANK=1", "SLURM_PROCID=1",
                              "SLURM_STEP_ID=0", "SLURM_STEP_NUM_TASKS=2", "SLURM_LOCALID=1"),
                          &w, NULL), S2_OK);
    cr_expect_eq(w.source, S2_WORLD_TORCHRUN);
    /* Slurm before Open MPI */
    cr_assert_eq(world_of(ENV("SLURM_PROCID=1", "SLURM_STEP_ID=0", "SLURM_STEP_NUM_TASKS=2",
                              "SLURM_LOCALID=1", "OMPI_COMM_WORLD_RANK=0",
                              "OMPI_COMM_WORLD_SIZE=1", "OMPI_COMM_WORLD_LOCAL_RANK=0"), &w,
                          NULL), S2_OK);
    cr_expect_eq(w.source, S2_WORLD_SLURM);
    /* different worlds: named both, and how to choose */
    expect_error(ENV("RANK=1", "WORLD_SIZE=2", "LOCAL_RANK=1", "SLURM_PROCID=3",
                     "SLURM_STEP_ID=0", "SLURM_STEP_NUM_TASKS=4", "SLURM_LOCALID=3"),
                 "two launchers describe different worlds: torchrun-style variables (RANK=1 "
                 "WORLD_SIZE=2 LOCAL_RANK=1) says rank 1 of 2 (local rank 1), Slurm step ?.0 "
                 "(SLURM_PROCID=3");
    /* a world of one inside a bigger one: four copies of one run would clash */
    expect_error(ENV("RANK=0", "WORLD_SIZE=1", "LOCAL_RANK=0", "SLURM_PROCID=3",
                     "SLURM_STEP_ID=0", "SLURM_STEP_NUM_TASKS=4", "SLURM_LOCALID=3"),
                 "S2LORA_WORLD_FROM");
    /* mpirun whose daemons srun started: Slurm's step is the daemons', not the ranks' */
    char **both = ENV("SLURM_PROCID=1", "SLURM_STEP_ID=0", "SLURM_STEP_NUM_TASKS=2",
                      "SLURM_LOCALID=0", "OMPI_COMM_WORLD_RANK=9", "OMPI_COMM_WORLD_SIZE=16",
                      "OMPI_COMM_WORLD_LOCAL_RANK=1", "S2LORA_WORLD_FROM=mpi");
    cr_assert_eq(world_of(both, &w, NULL), S2_OK);
    cr_expect_eq(w.source, S2_WORLD_MPI);
    cr_expect_eq(w.rank, 9);
    both[7] = NULL; /* without the choice: refused */
    expect_error(both, "Open MPI (OMPI_COMM_WORLD_RANK=9");
    expect_error(ENV("S2LORA_WORLD_FROM=pmi"), "S2LORA_WORLD_FROM=\"pmi\": valid: torchrun, "
                                               "slurm, mpi, single");
    expect_error(ENV("S2LORA_WORLD_FROM=slurm", "RANK=0"), "S2LORA_WORLD_FROM=slurm, but none");
    cr_assert_eq(world_of(ENV("S2LORA_WORLD_FROM=single", "RANK=1", "WORLD_SIZE=2",
                              "LOCAL_RANK=1"), &w, NULL), S2_OK);
    cr_expect_eq(w.size, 1);
}

Test(world, device_of_a_rank)
{
    /* Here: no GPU (exit 3's status); on a GPU machine: a local rank beyond its GPUs. */
    s2_world w = {.rank = 1023, .size = 1024, .local_rank = 1023, .local_size = 1024};
    snprintf(w.from, sizeof w.from, "test");
    s2_rt rt;
    s2_error err = {0};
    const s2_status st = s2_dist_device(&w, &rt, &err);
    cr_assert(st == S2_ERR_NO_DEVICE || st == S2_ERR_INVALID, "%s", err.msg);
    if (st == S2_ERR_NO_DEVICE)
        cr_expect(strstr(err.msg, "rank 1023: no"), "%s", err.msg);
    else
        cr_expect(strstr(err.msg, "rank 1023 is local rank 1023 of 1024 on this host (test) and "
                                  "drives CUDA device 1023"), "%s", err.msg);
    s2_error_clear(&err);
}

/* ---- addresses and settings ------------------------------------------------------------ */

static void expect_addr_error(const char *text, const char *phrase)
{
    s2_rdzv_addr a;
    s2_error err = {0};
    cr_expect_eq(s2_rdzv_parse(text, &a, &err), S2_ERR_INVALID, "%s", text);
    cr_expect(err.msg && strstr(err.msg, phrase), "%s: '%s' not in: %s", text, phrase,
              err.msg ? err.msg : "(none)");
    s2_error_clear(&err);
}

Test(rdzv, parse)
{
    s2_rdzv_addr a;
    cr_assert_eq(s2_rdzv_parse("file:/shared/run.rdzv", &a, NULL), S2_OK);
    cr_expect_eq(a.kind, S2_RDZV_FILE);
    cr_expect_str_eq(a.path, "/shared/run.rdzv");
    cr_assert_eq(s2_rdzv_parse("tcp:node01:29400", &a, NULL), S2_OK);
    cr_expect_eq(a.kind, S2_RDZV_TCP);
    cr_expect_str_eq(a.host, "node01");
    cr_expect_eq(a.port, 29400);
    cr_assert_eq(s2_rdzv_parse("tcp:[::1]:1", &a, NULL), S2_OK);
    cr_expect_str_eq(a.host, "::1");
    cr_expect_eq(a.port, 1);
    cr_assert_eq(s2_rdzv_parse("tcp:10.0.0.1:65535", &a, NULL), S2_OK);
    cr_expect_str_eq(a.host, "10.0.0.1");
    cr_expect_str_eq(a.text, "tcp:10.0.0.1:65535");

    expect_addr_error("file:", "empty path");
    expect_addr_error("file:/tmp/", "names a directory");
    expect_addr_error("http://h:80", "unknown scheme \"http\"");
    expect_addr_error("/tmp/x", "no scheme (valid: file:PATH");
    expect_addr_error("tcp:node01", "missing port");
    expect_addr_error("tcp:node01:", "missing port");
    expect_addr_error("tcp::29400", "missing host");
    expect_addr_error("tcp:h:0", "port=0 is out of range (valid: 1..65535)");
    expect_addr_error("tcp:h:65536", "port=65536 is out of range");
    expect_addr_error("tcp:h:29a", "port=\"29a\" is not a decimal integer");
    expect_addr_error("tcp:[::1:80", "unbalanced brackets");
}

Test(rdzv, resolve_and_timeout)
{
    s2_world one = {.size = 1, .local_size = 1}, four = {.rank = 2, .size = 4};
    snprintf(four.from, sizeof four.from, "Slurm step 1.0");
    s2_rdzv_addr a;
    int have = -1;
    s2_error err = {0};
    cr_assert_eq(s2_rdzv_resolve(&one, s2_env_array(ENV("X=1")), NULL, &a, &have, NULL), S2_OK);
    cr_expect_eq(have, 0);
    cr_assert_eq(s2_rdzv_resolve(&four, s2_env_array(ENV("S2LORA_RENDEZVOUS=tcp:h:2")), NULL,
                                 &a, &have, NULL), S2_OK);
    cr_expect_eq(have, 1);
    cr_expect_eq(a.port, 2);
    /* the flag wins over the variable */
    cr_assert_eq(s2_rdzv_resolve(&four, s2_env_array(ENV("S2LORA_RENDEZVOUS=tcp:h:2")),
                                 "file:/x/y", &a, &have, NULL), S2_OK);
    cr_expect_eq(a.kind, S2_RDZV_FILE);
    cr_expect_eq(s2_rdzv_resolve(&four, s2_env_array(ENV("X=1")), NULL, &a, &have, &err),
                 S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "rank 2 of 4 (Slurm step 1.0): the ranks need a rendezvous") &&
              strstr(err.msg, "--rendezvous file:PATH"), "%s", err.msg);
    s2_error_clear(&err);
    cr_expect_eq(s2_rdzv_resolve(&four, s2_env_array(ENV("S2LORA_RENDEZVOUS=tcp:h")), NULL, &a,
                                 &have, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "S2LORA_RENDEZVOUS: rendezvous \"tcp:h\": missing port"), "%s",
              err.msg);
    s2_error_clear(&err);

    double t = 0;
    cr_assert_eq(s2_rdzv_timeout(s2_env_array(ENV("X=1")), &t, NULL), S2_OK);
    cr_expect_eq(t, S2_RDZV_TIMEOUT_DEFAULT);
    cr_assert_eq(s2_rdzv_timeout(s2_env_array(ENV("S2LORA_RENDEZVOUS_TIMEOUT=0.5")), &t, NULL),
                 S2_OK);
    cr_expect_eq(t, 0.5);
    const char *bad[] = {"S2LORA_RENDEZVOUS_TIMEOUT=0", "S2LORA_RENDEZVOUS_TIMEOUT=-1",
                         "S2LORA_RENDEZVOUS_TIMEOUT=5s", "S2LORA_RENDEZVOUS_TIMEOUT=",
                         "S2LORA_RENDEZVOUS_TIMEOUT=1e3"};
    for (int i = 0; i < 5; i++) {
        char *envp[] = {(char *)bad[i], NULL};
        cr_expect_eq(s2_rdzv_timeout(s2_env_array(envp), &t, &err), S2_ERR_INVALID, "%s",
                     bad[i]);
        cr_expect(err.msg && strstr(err.msg, "expected a positive number of seconds"), "%s",
                  err.msg);
        s2_error_clear(&err);
    }
}

Test(fingerprint, parts)
{
    s2_fingerprint a, b;
    s2_fingerprint_init(&a);
    cr_assert_eq(a.n, 1);
    cr_expect_str_eq(a.part[0].name, "build");
    cr_expect(strstr(a.part[0].shown, S2_VERSION), "%s", a.part[0].shown);
    const char *id = s2_build_id();
    cr_expect(strcmp(id, "unknown") && strspn(id, "0123456789abcdef") == strlen(id) &&
              strlen(id) >= 16, "build id %s", id);
    char pre[17];
    snprintf(pre, sizeof pre, "%s", id);
    cr_expect(strstr(a.part[0].shown, pre), "%s", a.part[0].shown);
    b = a;
    cr_assert_eq(s2_fingerprint_add(&a, "options", "--lr 1e-4", 9, NULL, NULL), S2_OK);
    cr_assert_eq(s2_fingerprint_add(&b, "options", "--lr 2e-4", 9, NULL, NULL), S2_OK);
    cr_expect_str_eq(a.part[1].shown, "--lr 1e-4");
    cr_expect(memcmp(a.part[1].sha, b.part[1].sha, 32));
    uint8_t sa[32], sb[32];
    s2_fingerprint_sha(&a, sa);
    s2_fingerprint_sha(&b, sb);
    cr_expect(memcmp(sa, sb, 32));
    s2_error err = {0};
    cr_expect_eq(s2_fingerprint_add(&a, "options", "x", 1, NULL, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "added twice"), "%s", err.msg);
    s2_error_clear(&err);
    cr_expect_eq(s2_fingerprint_add(&a, "", "x", 1, NULL, &err), S2_ERR_INVALID);
    s2_error_clear(&err);
    for (int i = a.n; i < S2_FP_MAX_PARTS; i++) {
        char name[16];
        snprintf(name, sizeof name, "p%d", i);
        cr_assert_eq(s2_fingerprint_add(&a, name, "x", 1, NULL, NULL), S2_OK);
    }
    cr_expect_eq(s2_fingerprint_add(&a, "more", "x", 1, NULL, &err), S2_ERR_INVALID);
    cr_expect(strstr(err.msg, "at most 8 parts"), "%s", err.msg);
    s2_error_clear(&err);
    /* a long part is hashed whole and shown cut, saying so */
    char long_text[500];
    memset(long_text, 'a', sizeof long_text);
    s2_fingerprint_init(&b);
    cr_assert_eq(s2_fingerprint_add(&b, "spec", long_text, sizeof long_text, NULL, NULL), S2_OK);
    cr_expect_eq(strlen(b.part[1].shown), S2_FP_SHOWN_MAX - 1);
    cr_expect_str_eq(b.part[1].shown + S2_FP_SHOWN_MAX - 4, "...");
}

/* ---- the rendezvous across processes ----------------------------------------------------- */

static char dir[64];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/s2_test_dist.XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void) { s2_test_rmtree(dir); }

TestSuite(rendezvous, .init = make_dir, .fini = remove_dir, .timeout = 60);

/* One rank in a child process; what it got goes to DIR/out-TAG-RANK: "ok SHA N PID..." or
 * "err MESSAGE". */
typedef struct rank_spec {
    int rank, size;
    const char *extra;  /* fingerprint part "extra", NULL for none */
    const char *launch; /* launch id */
    double delay;       /* seconds before it starts */
    double timeout;
} rank_spec;

static const uint8_t *payload_of(const char *tag)
{
    static uint8_t p[128];
    for (int i = 0; i < 128; i++)
        p[i] = (uint8_t)(i * 7 + tag[0]);
    return p;
}

static pid_t start_rank(const char *addr_text, const char *tag, rank_spec r)
{
    fflush(NULL);
    const pid_t pid = fork();
    cr_assert(pid >= 0);
    if (pid)
        return pid;
    if (r.delay > 0) {
        struct timespec ts = {(time_t)r.delay, (long)((r.delay - (time_t)r.delay) * 1e9)};
        nanosleep(&ts, NULL);
    }
    s2_world w = {.rank = r.rank, .size = r.size, .local_rank = r.rank, .local_size = r.size};
    snprintf(w.from, sizeof w.from, "test rank %d", r.rank);
    snprintf(w.launch_id, sizeof w.launch_id, "%s", r.launch ? r.launch : "");
    s2_fingerprint fp;
    s2_fingerprint_init(&fp);
    if (r.extra)
        s2_fingerprint_add(&fp, "extra", r.extra, strlen(r.extra), NULL, NULL);
    s2_rdzv_addr a;
    s2_error err = {0};
    s2_rdzv_result res;
    s2_status st = s2_rdzv_parse(addr_text, &a, &err);
    if (!st)
        st = s2_rendezvous(&a, &w, &fp, r.rank == 0 ? payload_of(tag) : NULL, 128, r.timeout,
                           &res, &err);
    char path[256];
    snprintf(path, sizeof path, "%s/out-%s-%d", dir, tag, r.rank);
    FILE *f = fopen(path, "w");
    if (st) {
        fprintf(f, "err %s", err.msg);
    } else {
        uint8_t sha[32];
        char hex[65];
        s2_sha256(res.payload, res.payload_len, sha);
        s2_hex(sha, 32, hex);
        fprintf(f, "ok %s %d", hex, res.n_peers);
        for (int k = 0; k < res.n_peers; k++)
            fprintf(f, " %d", res.peers[k].pid);
    }
    fclose(f);
    _exit(st ? 1 : 0);
}

/* Waits for pid; its exit code. */
static int wait_rank(pid_t pid)
{
    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static char *out_of(const char *tag, int rank)
{
    char path[256], *data = NULL;
    snprintf(path, sizeof path, "%s/out-%s-%d", dir, tag, rank);
    cr_assert_eq(s2_read_file(path, &data, NULL, NULL), S2_OK, "no output of rank %d", rank);
    return data;
}

static void file_addr(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, "file:%s/%s", dir, name);
}

static void tcp_addr(char *out, size_t cap, const char *host)
{
    snprintf(out, cap, "tcp:%s:%d", host, free_port());
}

/* Every rank of a world of n gets rank 0's payload and the table of all n (their pids). */
static void agree(const char *addr, int n)
{
    pid_t pid[8];
    for (int k = 0; k < n; k++) /* rank 0 last: the others wait for it */
        pid[k] = start_rank(addr, "a", (rank_spec){.rank = k, .size = n, .launch = "L",
                                                   .delay = k ? 0 : 0.3, .timeout = 20});
    for (int k = 0; k < n; k++)
        cr_expect_eq(wait_rank(pid[k]), 0, "rank %d: %s", k, out_of("a", k));
    uint8_t sha[32];
    char want[600];
    s2_sha256(payload_of("a"), 128, sha);
    int len = snprintf(want, sizeof want, "ok ");
    s2_hex(sha, 32, want + len);
    len += 64;
    len += snprintf(want + len, sizeof want - len, " %d", n);
    for (int k = 0; k < n; k++)
        len += snprintf(want + len, sizeof want - len, " %d", pid[k]);
    for (int k = 0; k < n; k++) {
        char *got = out_of("a", k);
        cr_expect_str_eq(got, want, "rank %d", k);
        free(got);
    }
}

Test(rendezvous, file_world_of_4) { char a[128]; file_addr(a, sizeof a, "sub/rdzv"); agree(a, 4); }

Test(rendezvous, tcp_world_of_4)
{
    char a[128];
    tcp_addr(a, sizeof a, "127.0.0.1");
    agree(a, 4);
}

Test(rendezvous, tcp_by_host_name)
{
    char a[128];
    tcp_addr(a, sizeof a, "localhost");
    agree(a, 3);
}

Test(rendezvous, world_of_one_needs_no_one)
{
    s2_world w = {.size = 1, .local_size = 1};
    s2_fingerprint fp;
    s2_fingerprint_init(&fp);
    s2_rdzv_addr a;
    cr_assert_eq(s2_rdzv_parse("file:/nonexistent-dir/x", &a, NULL), S2_OK);
    s2_rdzv_result res;
    cr_assert_eq(s2_rendezvous(&a, &w, &fp, "xyz", 3, 0.1, &res, NULL), S2_OK);
    cr_expect_eq(res.payload_len, 3);
    cr_expect(!memcmp(res.payload, "xyz", 3));
    cr_expect_eq(res.n_peers, 1);
    cr_expect_eq(res.peers[0].pid, getpid());
    s2_rdzv_result_free(&res);
}

/* A rank that never comes: rank 0 names it after the timeout, and the others hear it. */
static void missing_rank(const char *addr)
{
    const double t0 = mono_now();
    pid_t p0 = start_rank(addr, "m", (rank_spec){.rank = 0, .size = 3, .timeout = 0.5});
    pid_t p1 = start_rank(addr, "m", (rank_spec){.rank = 1, .size = 3, .timeout = 0.5});
    cr_expect_eq(wait_rank(p0), 1);
    cr_expect_eq(wait_rank(p1), 1);
    cr_expect_lt(mono_now() - t0, 5.0);
    char *o0 = out_of("m", 0), *o1 = out_of("m", 1);
    cr_expect(strstr(o0, "only 2 of 3 ranks arrived within 0.5 s (missing rank 2)"), "%s", o0);
    cr_expect(strstr(o1, "rank 0 refused the world: only 2 of 3 ranks arrived within 0.5 s "
                         "(missing rank 2)"), "%s", o1);
    free(o0), free(o1);
}

Test(rendezvous, file_timeout_names_the_missing_rank)
{
    char a[128];
    file_addr(a, sizeof a, "rdzv");
    missing_rank(a);
}

Test(rendezvous, tcp_timeout_names_the_missing_rank)
{
    char a[128];
    tcp_addr(a, sizeof a, "127.0.0.1");
    missing_rank(a);
}

Test(rendezvous, no_rank_0)
{
    char a[128];
    file_addr(a, sizeof a, "rdzv");
    const double t0 = mono_now();
    cr_expect_eq(wait_rank(start_rank(a, "z", (rank_spec){.rank = 1, .size = 2, .timeout = 0.3})),
                 1);
    char *o = out_of("z", 1);
    cr_expect(strstr(o, "rank 1 had no answer from rank 0 within 0.6 s") &&
              strstr(o, "it does not exist"), "%s", o);
    free(o);
    tcp_addr(a, sizeof a, "127.0.0.1");
    cr_expect_eq(wait_rank(start_rank(a, "z", (rank_spec){.rank = 1, .size = 2, .timeout = 0.3})),
                 1);
    o = out_of("z", 1);
    cr_expect(strstr(o, "rank 1 found no rank 0 (connect to 127.0.0.1 port") &&
              strstr(o, "Connection refused"), "%s", o);
    free(o);
    cr_expect_lt(mono_now() - t0, 5.0);
    /* a host name that does not resolve is named */
    cr_expect_eq(wait_rank(start_rank("tcp:no-such-host.invalid:29400", "z",
                                      (rank_spec){.rank = 1, .size = 2, .timeout = 0.5})), 1);
    o = out_of("z", 1);
    cr_expect(strstr(o, "(cannot resolve no-such-host.invalid"), "%s", o);
    free(o);
}

/* Rank 2 runs something else: every rank refuses, naming rank 2, the part and both values. */
static void mismatch(const char *addr)
{
    pid_t pid[3];
    for (int k = 0; k < 3; k++)
        pid[k] = start_rank(addr, "x", (rank_spec){.rank = k, .size = 3, .timeout = 20,
                                                   .extra = k == 2 ? "--lr 2e-4" : "--lr 1e-4"});
    for (int k = 0; k < 3; k++) {
        cr_expect_eq(wait_rank(pid[k]), 1, "rank %d", k);
        char *o = out_of("x", k);
        cr_expect(strstr(o, "rank 2 differs from rank 0 in extra: rank 2 runs '--lr 2e-4', rank "
                            "0 runs '--lr 1e-4'"), "rank %d: %s", k, o);
        free(o);
    }
}

Test(rendezvous, file_fingerprint_mismatch)
{
    char a[128];
    file_addr(a, sizeof a, "rdzv");
    mismatch(a);
}

Test(rendezvous, tcp_fingerprint_mismatch)
{
    char a[128];
    tcp_addr(a, sizeof a, "127.0.0.1");
    mismatch(a);
}

Test(rendezvous, other_worlds_refused)
{
    char a[128];
    /* tcp: a rank of a bigger world, then two ranks 1, then another launch */
    tcp_addr(a, sizeof a, "127.0.0.1");
    pid_t p0 = start_rank(a, "s", (rank_spec){.rank = 0, .size = 2, .timeout = 20});
    pid_t p1 = start_rank(a, "s", (rank_spec){.rank = 1, .size = 3, .timeout = 20});
    cr_expect_eq(wait_rank(p0), 1);
    cr_expect_eq(wait_rank(p1), 1);
    char *o = out_of("s", 1);
    cr_expect(strstr(o, "rank 1 says the world has 3 ranks (test rank 1"), "%s", o);
    free(o);
    tcp_addr(a, sizeof a, "127.0.0.1");
    p0 = start_rank(a, "d", (rank_spec){.rank = 0, .size = 3, .timeout = 20});
    p1 = start_rank(a, "d", (rank_spec){.rank = 1, .size = 3, .timeout = 20});
    pid_t p2 = start_rank(a, "d2", (rank_spec){.rank = 1, .size = 3, .timeout = 20, .delay = 0.3});
    cr_expect_eq(wait_rank(p0), 1);
    cr_expect_eq(wait_rank(p1), 1);
    cr_expect_eq(wait_rank(p2), 1);
    o = out_of("d", 0);
    cr_expect(strstr(o, "two processes say they are rank 1"), "%s", o);
    free(o);
    tcp_addr(a, sizeof a, "127.0.0.1");
    p0 = start_rank(a, "l", (rank_spec){.rank = 0, .size = 2, .timeout = 20, .launch = "run-A"});
    p1 = start_rank(a, "l", (rank_spec){.rank = 1, .size = 2, .timeout = 20, .launch = "run-B"});
    cr_expect_eq(wait_rank(p0), 1);
    cr_expect_eq(wait_rank(p1), 1);
    o = out_of("l", 1);
    cr_expect(strstr(o, "rank 1 belongs to launch \"run-B\""), "%s", o);
    free(o);
    /* file: rank 0 waits for another world's size; a rank says so at once */
    file_addr(a, sizeof a, "rdzv");
    p0 = start_rank(a, "f", (rank_spec){.rank = 0, .size = 2, .timeout = 1});
    p1 = start_rank(a, "f", (rank_spec){.rank = 1, .size = 3, .timeout = 20, .delay = 0.2});
    cr_expect_eq(wait_rank(p1), 1);
    cr_expect_eq(wait_rank(p0), 1);
    o = out_of("f", 1);
    cr_expect(strstr(o, "waits for a world of 2 ranks; this is rank 1 of 3"), "%s", o);
    free(o);
}

/* Waits (briefly) until path exists. */
static void wait_for(const char *path)
{
    struct stat st;
    for (int i = 0; i < 500 && stat(path, &st); i++)
        usleep(10000);
    cr_assert_eq(stat(path, &st), 0, "%s never appeared", path);
}

Test(rendezvous, file_of_an_earlier_run_is_not_taken)
{
    char a[128], p[160];
    file_addr(a, sizeof a, "rdzv");
    /* run 1 completes and leaves its answer in the file */
    pid_t p0 = start_rank(a, "1", (rank_spec){.rank = 0, .size = 2, .timeout = 20});
    pid_t p1 = start_rank(a, "1", (rank_spec){.rank = 1, .size = 2, .timeout = 20});
    cr_expect_eq(wait_rank(p0), 0);
    cr_expect_eq(wait_rank(p1), 0);
    /* run 2: rank 1 comes first and finds run 1's answer; it must wait for run 2's rank 0 */
    p1 = start_rank(a, "2", (rank_spec){.rank = 1, .size = 2, .timeout = 20});
    p0 = start_rank(a, "2", (rank_spec){.rank = 0, .size = 2, .timeout = 20, .delay = 0.5});
    cr_expect_eq(wait_rank(p0), 0);
    cr_expect_eq(wait_rank(p1), 0);
    char *o0 = out_of("2", 0), *o1 = out_of("2", 1);
    cr_expect_str_eq(o1, o0);
    uint8_t sha[32];
    char hex[65];
    s2_sha256(payload_of("2"), 128, sha);
    s2_hex(sha, 32, hex);
    cr_expect(strstr(o1, hex), "run 2's rank 1 took another payload: %s", o1);
    free(o0), free(o1);

    /* run 3 (of 3 ranks, rank 2 never comes) dies mid-way: its "open" record and rank 1's
     * hello stay behind (rank 1 writes it once it sees run 3's open record) */
    p0 = start_rank(a, "3", (rank_spec){.rank = 0, .size = 3, .timeout = 20});
    p1 = start_rank(a, "3", (rank_spec){.rank = 1, .size = 3, .timeout = 20});
    snprintf(p, sizeof p, "%s/rdzv.rank-1", dir);
    wait_for(p);
    kill(p0, SIGKILL), kill(p1, SIGKILL);
    wait_rank(p0), wait_rank(p1);
    /* run 4's rank 0 alone must not count run 3's hello */
    p0 = start_rank(a, "4", (rank_spec){.rank = 0, .size = 3, .timeout = 0.5});
    cr_expect_eq(wait_rank(p0), 1);
    o0 = out_of("4", 0);
    cr_expect(strstr(o0, "only 1 of 3 ranks arrived within 0.5 s (missing ranks 1, 2; some of "
                         "their files hold an earlier run's hello)"), "%s", o0);
    free(o0);
    struct stat st;
    /* run 5's rank 1 first sees run 4's refusal, then its own rank 0 */
    p1 = start_rank(a, "5", (rank_spec){.rank = 1, .size = 2, .timeout = 20});
    p0 = start_rank(a, "5", (rank_spec){.rank = 0, .size = 2, .timeout = 20, .delay = 0.3});
    cr_expect_eq(wait_rank(p0), 0, "%s", out_of("5", 0));
    cr_expect_eq(wait_rank(p1), 0, "%s", out_of("5", 1));
    /* the hellos are gone; the answer stays for the next run to replace */
    cr_expect_neq(stat(p, &st), 0);
    cr_expect_eq(stat(a + 5, &st), 0);
}

Test(rendezvous, file_of_another_launch_is_waited_past)
{
    char a[128];
    file_addr(a, sizeof a, "rdzv");
    pid_t p0 = start_rank(a, "o", (rank_spec){.rank = 0, .size = 2, .timeout = 1,
                                              .launch = "run-A"});
    pid_t p1 = start_rank(a, "o", (rank_spec){.rank = 1, .size = 2, .timeout = 0.5,
                                              .launch = "run-B", .delay = 0.2});
    cr_expect_eq(wait_rank(p1), 1);
    cr_expect_eq(wait_rank(p0), 1);
    char *o = out_of("o", 1);
    cr_expect(strstr(o, "it holds another run's record (launch \"run-A\"; this rank's is "
                        "\"run-B\")"), "%s", o);
    free(o);
}

Test(rendezvous, file_taken_over_by_another_rank_0)
{
    char a[128];
    file_addr(a, sizeof a, "rdzv");
    pid_t p0 = start_rank(a, "t", (rank_spec){.rank = 0, .size = 2, .timeout = 20});
    wait_for(a + 5);
    pid_t q0 = start_rank(a, "u", (rank_spec){.rank = 0, .size = 2, .timeout = 0.5});
    cr_expect_eq(wait_rank(p0), 1);
    cr_expect_eq(wait_rank(q0), 1);
    char *o = out_of("t", 0);
    cr_expect(strstr(o, "another process replaced the file") &&
              strstr(o, "two runs share this rendezvous file"), "%s", o);
    free(o);
}

Test(rendezvous, tcp_drops_strays)
{
    char a[128];
    const int port = free_port();
    snprintf(a, sizeof a, "tcp:127.0.0.1:%d", port);
    pid_t p0 = start_rank(a, "g", (rank_spec){.rank = 0, .size = 2, .timeout = 20});
    /* something that is not a rank: connects, says nonsense, and one that says nothing */
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = -1, quiet = socket(AF_INET, SOCK_STREAM, 0);
    for (int i = 0; i < 200; i++) {
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (!connect(fd, (struct sockaddr *)&sa, sizeof sa))
            break;
        close(fd), fd = -1;
        usleep(10000);
    }
    cr_assert_geq(fd, 0);
    cr_assert_eq(connect(quiet, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(write(fd, "\x10\0\0\0GET / HTTP/1.0\r\n\r\n", 22), 22);
    pid_t p1 = start_rank(a, "g", (rank_spec){.rank = 1, .size = 2, .timeout = 20});
    cr_expect_eq(wait_rank(p0), 0, "%s", out_of("g", 0));
    cr_expect_eq(wait_rank(p1), 0, "%s", out_of("g", 1));
    close(fd), close(quiet);
}

/* ---- NCCL's loader ------------------------------------------------------------------------ */

Test(nccl, missing_library)
{
    s2_nccl *n = (s2_nccl *)1;
    s2_error err = {0};
    cr_assert_eq(s2_nccl_open("/nonexistent/libnccl.so.2", &n, &err), S2_ERR_CUDA);
    cr_expect_null(n);
    cr_expect(strstr(err.msg, "/nonexistent/libnccl.so.2 not found (") &&
              strstr(err.msg, "install NCCL"), "%s", err.msg);
    s2_error_clear(&err);
    /* a library that is not NCCL */
    cr_assert_eq(s2_nccl_open("libm.so.6", &n, &err), S2_ERR_CUDA);
    cr_expect(strstr(err.msg, "libm.so.6 lacks ncclGetVersion: not an NCCL 2 library"), "%s",
              err.msg);
    s2_error_clear(&err);
}

Test(nccl, version_strings)
{
    char v[32];
    s2_nccl_version_str(22809, v, sizeof v);
    cr_expect_str_eq(v, "2.28.9");
    s2_nccl_version_str(21003, v, sizeof v);
    cr_expect_str_eq(v, "2.10.3");
    s2_nccl_version_str(2708, v, sizeof v);
    cr_expect_str_eq(v, "2.7.8");
}

/* The build machine has NCCL beside the CUDA Toolkit (its header builds s2lora): the real
 * library loads, says its version and makes a unique id, none of which needs a GPU. */
Test(nccl, loads_the_real_library)
{
    static s2_nccl *n = NULL; /* held to the end, as the library is (below) */
    s2_error err = {0};
    cr_assert_eq(s2_nccl_open(NULL, &n, &err), S2_OK, "%s", err.msg);
    cr_expect_geq(n->version, S2_NCCL_MIN_VERSION);
    ncclUniqueId id;
    memset(&id, 0, sizeof id);
    cr_assert_eq(s2_nccl_unique_id(n, &id, &err), S2_OK, "%s", err.msg);
    int nonzero = 0;
    for (int i = 0; i < NCCL_UNIQUE_ID_BYTES; i++)
        nonzero |= id.internal[i];
    cr_expect(nonzero);
    /* not closed: the id's bootstrap thread runs inside the library until the process ends */
}

static const char *fake_string(ncclResult_t r)
{
    return r == ncclUnhandledCudaError ? "unhandled cuda error (run with NCCL_DEBUG=INFO)" : "?";
}
static const char *fake_last(ncclComm_t c) { return "Cuda failure 2 'out of memory'"; }
static ncclResult_t fake_all_reduce(const void *s, void *r, size_t n, ncclDataType_t dt,
                                    ncclRedOp_t op, ncclComm_t c, cudaStream_t st)
{
    return n == 0 ? ncclSuccess : ncclUnhandledCudaError;
}

Test(nccl, errors_name_the_call_and_the_data)
{
    s2_nccl n = {.get_error_string = fake_string, .get_last_error = fake_last,
                 .all_reduce = fake_all_reduce};
    s2_error err = {0};
    cr_expect_eq(s2_nccl_all_reduce(&n, NULL, NULL, NULL, 0, ncclBfloat16, ncclSum, 0, "grads",
                                    &err), S2_OK);
    cr_assert_eq(s2_nccl_all_reduce(&n, NULL, NULL, NULL, 1048576, ncclBfloat16, ncclSum, 0,
                                    "gradient bucket 3", &err), S2_ERR_CUDA);
    cr_expect_str_eq(err.msg, "ncclAllReduce (gradient bucket 3: 1048576 elements of bf16): "
                              "unhandled cuda error (run with NCCL_DEBUG=INFO); NCCL: Cuda "
                              "failure 2 'out of memory'");
    s2_error_clear(&err);
    n.get_last_error = NULL; /* an NCCL before 2.13 */
    cr_assert_eq(s2_nccl_all_reduce(&n, NULL, NULL, NULL, 3, ncclFloat32, ncclSum, 0, NULL,
                                    &err), S2_ERR_CUDA);
    cr_expect_str_eq(err.msg, "ncclAllReduce (3 elements of fp32): unhandled cuda error (run "
                              "with NCCL_DEBUG=INFO)");
    s2_error_clear(&err);
    cr_expect_eq(s2_nccl_dtype(S2_DTYPE_BF16), ncclBfloat16);
    cr_expect_eq(s2_nccl_dtype(S2_DTYPE_FP16), ncclFloat16);
}

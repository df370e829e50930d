/* world_helpers.h — for the suites of several ranks (test_dist, test_launch, test_dp). */
#ifndef S2_TESTS_WORLD_HELPERS_H
#define S2_TESTS_WORLD_HELPERS_H

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "run_cmd.h"

/* Seconds on the monotonic clock. */
static inline double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* A TCP port nothing listens on now. */
static inline int free_port(void)
{
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    socklen_t l = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &l);
    close(fd);
    return ntohs(sa.sin_port);
}

/* Runs the command line fmt/ap in dir, with dir as TMPDIR and every launcher's variables
 * cleared (the suite may itself run under one); exit code, output in *out. */
static inline int run_world_v(const char *dir, char **out, const char *fmt, va_list ap)
{
    char cmd[3000], full[3600];
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    snprintf(full, sizeof full, "{ cd %s && unset RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE "
             "SLURM_PROCID SLURM_STEP_ID OMPI_COMM_WORLD_RANK OMPI_COMM_WORLD_SIZE "
             "S2LORA_RENDEZVOUS S2LORA_RENDEZVOUS_TIMEOUT S2LORA_WORLD_FROM S2LORA_LAUNCH_ID "
             "S2LORA_NCCL_TIMEOUT; export TMPDIR=%s; %s; }", dir, dir, cmd);
    return run(full, out); /* run() sends the group's stderr to out too */
}

#endif

/* run_cmd.h — for the suites that run the built s2lora binary as a user does. */
#ifndef S2_TESTS_RUN_CMD_H
#define S2_TESTS_RUN_CMD_H

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

/* Runs a shell command line, returns its exit code; *out gets stdout+stderr (heap). */
static inline int run(const char *cmdline, char **out)
{
    char full[4096];
    snprintf(full, sizeof full, "%s 2>&1", cmdline);
    FILE *p = popen(full, "r");
    cr_assert(p, "popen %s", cmdline);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while ((n = fread(buf + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (len + 1 == cap)
            buf = realloc(buf, cap *= 2);
    }
    buf[len] = '\0';
    int status = pclose(p);
    *out = buf;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

#endif

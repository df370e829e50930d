/*
 * fuzz.h — what the libFuzzer targets of tests/fuzz share: a scratch directory for the readers
 * that take a path, whole-file writes into it, one input split into the several files a target
 * reads, and the check that turns a broken promise of the code under test into a finding.
 *
 * Inputs made of several files separate them with FUZZ_SEP (a line "--8<--"); the corpus files
 * of those targets are written that way (tests/fuzz/make_corpus.py).
 *
 * A fault of the harness itself (the scratch directory cannot be written) aborts with a line
 * starting "fuzz harness:", so it is not mistaken for a finding.
 */
#ifndef S2_FUZZ_H
#define S2_FUZZ_H

#define _GNU_SOURCE
#include <ftw.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FUZZ_SEP "\n--8<--\n"
#define FUZZ_SEP_LEN (sizeof FUZZ_SEP - 1)

/* A property the code under test promises did not hold: report it and crash, so libFuzzer
 * keeps the input as a finding. */
#define FUZZ_CHECK(cond, ...)                                                                  \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "fuzz finding: %s:%d: %s: ", __FILE__, __LINE__, #cond);           \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fputc('\n', stderr);                                                               \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

/* With S2_FUZZ_VERBOSE set, one line per outcome to stderr (what each input reached, to check
 * a corpus by hand: fuzz_X -runs=0 DIR); silent otherwise, as fuzzing wants. */
static inline void fuzz_note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void fuzz_note(const char *fmt, ...)
{
    static int verbose = -1;
    if (verbose < 0)
        verbose = getenv("S2_FUZZ_VERBOSE") != NULL;
    if (!verbose)
        return;
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static inline void fuzz_harness_fail(const char *what, const char *path)
{
    fprintf(stderr, "fuzz harness: %s: %s\n", what, path);
    abort();
}

static char fuzz_dir_path[4096];

static inline int fuzz_rm_entry(const char *path, const struct stat *sb, int flag,
                                struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static inline void fuzz_rm_dir(void)
{
    if (fuzz_dir_path[0])
        nftw(fuzz_dir_path, fuzz_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* This process's scratch directory, under $TMPDIR (else /tmp), removed at exit. */
static inline const char *fuzz_dir(void)
{
    if (!fuzz_dir_path[0]) {
        const char *tmp = getenv("TMPDIR");
        snprintf(fuzz_dir_path, sizeof fuzz_dir_path, "%s/s2fuzz.XXXXXX",
                 tmp && tmp[0] ? tmp : "/tmp");
        if (!mkdtemp(fuzz_dir_path))
            fuzz_harness_fail("cannot create a scratch directory", fuzz_dir_path);
        atexit(fuzz_rm_dir);
    }
    return fuzz_dir_path;
}

/* DIR/name into buf (4096 bytes); returns buf. */
static inline const char *fuzz_path(const char *name, char *buf)
{
    snprintf(buf, 4096, "%s/%s", fuzz_dir(), name);
    return buf;
}

/* Writes n bytes to DIR/name, replacing it. */
static inline void fuzz_put(const char *name, const void *data, size_t n)
{
    char path[4096];
    fuzz_path(name, path);
    FILE *f = fopen(path, "wb");
    if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0)
        fuzz_harness_fail("cannot write", path);
}

/* Removes DIR/name if it exists. */
static inline void fuzz_unlink(const char *name)
{
    char path[4096];
    unlink(fuzz_path(name, path));
}

typedef struct fuzz_part {
    const uint8_t *p;
    size_t n;
} fuzz_part;

/*
 * Splits data at FUZZ_SEP into at most max parts (the last takes the rest, separators and
 * all); parts past the count are empty. Returns the count.
 */
static inline int fuzz_split(const uint8_t *data, size_t size, fuzz_part *part, int max)
{
    int n = 0;
    while (n < max - 1) {
        const uint8_t *sep = memmem(data, size, FUZZ_SEP, FUZZ_SEP_LEN);
        if (!sep)
            break;
        part[n++] = (fuzz_part){data, (size_t)(sep - data)};
        size -= (size_t)(sep - data) + FUZZ_SEP_LEN;
        data = sep + FUZZ_SEP_LEN;
    }
    part[n++] = (fuzz_part){data, size};
    for (int i = n; i < max; i++)
        part[i] = (fuzz_part){NULL, 0};
    return n;
}

/* A NUL-terminated heap copy of n bytes (cut at an embedded NUL, as a C string would be). */
static inline char *fuzz_cstr(const uint8_t *p, size_t n)
{
    char *s = malloc(n + 1);
    if (!s)
        abort();
    if (n)
        memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

#endif

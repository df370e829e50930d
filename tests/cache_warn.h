/* cache_warn.h — for the suites that check a load's kernel-cache report (s2_rt.cache_warn). */
#ifndef S2_TESTS_CACHE_WARN_H
#define S2_TESTS_CACHE_WARN_H

#include <criterion/criterion.h>
#include <stdio.h>

/* What a load's cache_warn heard. */
typedef struct heard {
    int n;
    char last[2048];
} heard;

static inline void hear(void *arg, const char *msg)
{
    heard *h = arg;
    h->n++;
    snprintf(h->last, sizeof h->last, "%s", msg);
}

/* Flips the last byte of a cache entry (its payload's): the entry no longer verifies. */
static inline void flip_last_byte(const char *path)
{
    FILE *f = fopen(path, "r+b");
    cr_assert_not_null(f, "%s", path);
    cr_assert_eq(fseek(f, -1, SEEK_END), 0);
    int c = fgetc(f);
    cr_assert_eq(fseek(f, -1, SEEK_END), 0);
    fputc(c ^ 0x5a, f);
    cr_assert_eq(fclose(f), 0);
}

#endif

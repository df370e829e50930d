/* tmpdir.h — removal of a suite's mkdtemp directory, whatever a test left in it. */
#ifndef S2_TESTS_TMPDIR_H
#define S2_TESTS_TMPDIR_H

#include <ftw.h>
#include <stdio.h>

static inline int s2_test_rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(p);
}

/* rm -rf dir (depth first, links not followed). */
static inline void s2_test_rmtree(const char *dir)
{
    nftw(dir, s2_test_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

#endif

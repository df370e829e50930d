/*
 * test_io.c — reading files whole: only regular files (a FIFO is refused without blocking, a
 * device or a directory says what it is), a size limit for each kind of file (refused before
 * any byte is read, naming the size and the limit), and the reason (strerror) in every I/O
 * error; through the shared reader and the loaders built on it (spec, config.json, tuning
 * database).
 *
 * Each test gets its own directory under /tmp. Oversized files are sparse (ftruncate), so the
 * tests write nothing of their size; the timeouts fail a test whose read blocks or runs on.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gen/spec.h"
#include "runtime/core/train_io.h"
#include "runtime/tune/tune_db.h"
#include "tmpdir.h"

static char dir[64];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/s2_test_io.XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void) { s2_test_rmtree(dir); }

TestSuite(io, .init = make_dir, .fini = remove_dir, .timeout = 20);

#define assert_has(msg, phrase)                                                                \
    cr_assert((msg) && strstr((msg), (phrase)), "message lacks \"%s\": %s", (phrase),          \
              (msg) ? (msg) : "(null)")

/* dir/name, into buf. */
static const char *in_dir(const char *name, char *buf, size_t n)
{
    snprintf(buf, n, "%s/%s", dir, name);
    return buf;
}

/* A sparse file of size bytes. */
static void sparse(const char *path, off_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    cr_assert(fd >= 0, "%s: %s", path, strerror(errno));
    cr_assert_eq(ftruncate(fd, size), 0);
    close(fd);
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    cr_assert_eq(fclose(f), 0);
}

/* s2_read_file_max on path must fail with st and a message holding path and every phrase. */
static void expect_read_error(const char *path, size_t max, s2_status want,
                              const char *const *phrases)
{
    char *data = (char *)1;
    size_t size = 7;
    s2_error err = {0};
    cr_assert_eq(s2_read_file_max(path, max, "a test file", &data, &size, &err), want, "%s",
                 err.msg ? err.msg : "succeeded");
    cr_assert_null(data);
    cr_assert_eq(size, 0);
    assert_has(err.msg, path);
    for (const char *const *p = phrases; *p; p++)
        assert_has(err.msg, *p);
    s2_error_clear(&err);
}

#define EXPECT_READ_ERROR(path, max, st, ...)                                                  \
    expect_read_error(path, max, st, (const char *const[]){__VA_ARGS__, NULL})

Test(io, reads_a_regular_file_within_the_limit)
{
    char p[128];
    write_text(in_dir("a.txt", p, sizeof p), "hello\n");
    char *data;
    size_t size;
    s2_error err = {0};
    cr_assert_eq(s2_read_file_max(p, 6, "a test file", &data, &size, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(size, 6);
    cr_expect_str_eq(data, "hello\n", "NUL-terminated");
    free(data);
    cr_assert_eq(s2_read_file(p, &data, NULL, &err), S2_OK, "%s", err.msg);
    free(data);
    write_text(p, "");
    cr_assert_eq(s2_read_file_max(p, 0, "a test file", &data, &size, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(size, 0);
    cr_expect_str_eq(data, "");
    free(data);
}

Test(io, refuses_special_files_naming_them)
{
    char fifo[128];
    cr_assert_eq(mkfifo(in_dir("fifo", fifo, sizeof fifo), 0600), 0);
    EXPECT_READ_ERROR("/dev/zero", S2_MAX_FILE_BYTES, S2_ERR_IO, "is a character device");
    EXPECT_READ_ERROR(fifo, S2_MAX_FILE_BYTES, S2_ERR_IO, "is a FIFO");
    EXPECT_READ_ERROR(dir, S2_MAX_FILE_BYTES, S2_ERR_IO, "is a directory");
}

Test(io, refuses_a_file_over_the_limit_naming_size_and_limit)
{
    char p[128];
    write_text(in_dir("seven", p, sizeof p), "1234567");
    EXPECT_READ_ERROR(p, 6, S2_ERR_IO, "7 bytes", "over the 6-byte limit for a test file");
    sparse(p, ((off_t)8 << 30) + 1); /* 8 GiB + 1 of holes */
    EXPECT_READ_ERROR(p, S2_MAX_FILE_BYTES, S2_ERR_IO, "8589934593 bytes",
                      "over the 67108864-byte limit");
}

Test(io, errors_carry_the_reason)
{
    char p[128];
    EXPECT_READ_ERROR(in_dir("absent", p, sizeof p), 100, S2_ERR_IO,
                      "cannot open: No such file or directory");
    write_text(in_dir("file", p, sizeof p), "x");
    char below[160];
    snprintf(below, sizeof below, "%s/below", p);
    EXPECT_READ_ERROR(below, 100, S2_ERR_IO, "cannot open: Not a directory");
}

/* s2_pread_full: a file that ends early says where and how much was missing. */
Test(io, short_read_is_an_error)
{
    char p[128];
    write_text(in_dir("short", p, sizeof p), "abc");
    int fd;
    uint64_t size;
    s2_error err = {0};
    cr_assert_eq(s2_open_regular(p, &fd, &size, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(size, 3);
    char buf[8];
    cr_assert_eq(s2_pread_full(fd, p, buf, 3, 0, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(s2_pread_full(fd, p, buf, 5, 1, &err), S2_ERR_IO);
    assert_has(err.msg, p);
    assert_has(err.msg, "ended at byte 3, 3 bytes short of the 5 expected");
    close(fd);
    s2_error_clear(&err);
}

/* The spec loader: 1 MiB at most, regular files only (s2lora gen /dev/zero: test_cli). */
Test(io, spec_loader_refuses_devices_fifos_and_huge_files)
{
    s2_spec spec;
    s2_error err = {0};
    cr_assert_eq(s2_spec_load("/dev/zero", NULL, 0, &spec, &err), S2_ERR_IO);
    assert_has(err.msg, "/dev/zero: is a character device");
    char p[128];
    cr_assert_eq(mkfifo(in_dir("spec.yaml", p, sizeof p), 0600), 0);
    cr_assert_eq(s2_spec_load(p, NULL, 0, &spec, &err), S2_ERR_IO);
    assert_has(err.msg, "spec.yaml: is a FIFO");
    cr_assert_eq(s2_spec_load(dir, NULL, 0, &spec, &err), S2_ERR_IO);
    assert_has(err.msg, "is a directory");
    sparse(in_dir("big.yaml", p, sizeof p), (off_t)S2_MAX_SPEC_BYTES + 1);
    cr_assert_eq(s2_spec_load(p, NULL, 0, &spec, &err), S2_ERR_IO);
    assert_has(err.msg, "1048577 bytes, over the 1048576-byte limit for a spec");
    s2_error_clear(&err);
}

/* A checkpoint's config.json: 16 MiB at most, a regular file. */
Test(io, config_json_is_bounded)
{
    char p[128];
    sparse(in_dir("config.json", p, sizeof p), (off_t)S2_MAX_JSON_BYTES + 1);
    s2_ckpt *ck = (s2_ckpt *)1;
    s2_error err = {0};
    cr_assert_eq(s2_ckpt_open(dir, &ck, &err), S2_ERR_IO);
    cr_assert_null(ck);
    assert_has(err.msg, "config.json: 16777217 bytes, over the 16777216-byte limit");
    cr_assert_eq(s2_ckpt_open_headers(dir, &ck, &err), S2_ERR_IO);
    assert_has(err.msg, "config.json: 16777217 bytes");
    cr_assert_eq(unlink(p), 0);
    cr_assert_eq(mkdir(p, 0755), 0);
    cr_assert_eq(s2_ckpt_open(dir, &ck, &err), S2_ERR_IO);
    assert_has(err.msg, "config.json: is a directory");
    s2_error_clear(&err);
}

/* A tuning database to import: 64 MiB at most, a regular file. */
Test(io, tuning_db_import_is_bounded)
{
    s2_tunedb *db;
    s2_error err = {0};
    cr_assert_eq(s2_tunedb_open(dir, "Test GPU", &db, &err), S2_OK, "%s", err.msg);
    char p[128];
    sparse(in_dir("big.jsonl", p, sizeof p), (off_t)S2_MAX_TUNE_DB_BYTES + 1);
    cr_assert_eq(s2_tunedb_import(db, p, NULL, &err), S2_ERR_IO);
    assert_has(err.msg, "over the 67108864-byte limit for a tuning database");
    cr_assert_eq(s2_tunedb_import(db, "/dev/zero", NULL, &err), S2_ERR_IO);
    assert_has(err.msg, "/dev/zero: is a character device");
    s2_tunedb_close(db);
    s2_error_clear(&err);
}

/* A file written from parts: their concatenation, atomically (no temporary file left), the
 * empty parts included; a directory that does not exist is an I/O error naming the path. */
Test(io, parts_are_written_in_order_atomically)
{
    char path[128];
    snprintf(path, sizeof path, "%s/parts.bin", dir);
    const s2_file_part parts[] = {{"head", 4}, {"", 0}, {"-middle-", 8}, {"tail", 4}};
    s2_error err = {0};
    cr_assert_eq(s2_write_parts_atomic(path, parts, 4, &err), S2_OK, "%s", err.msg);
    char *got = NULL;
    size_t n = 0;
    cr_assert_eq(s2_read_file(path, &got, &n, &err), S2_OK, "%s", err.msg);
    cr_expect(n == 16 && memcmp(got, "head-middle-tail", 16) == 0, "%zu: %.*s", n, (int)n, got);
    free(got);
    cr_assert_eq(s2_write_parts_atomic(path, parts, 1, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(s2_read_file(path, &got, &n, &err), S2_OK, "%s", err.msg);
    cr_expect(n == 4 && memcmp(got, "head", 4) == 0, "the last write is the file");
    free(got);
    int entries = 0;
    char cmd[160];
    snprintf(cmd, sizeof cmd, "ls -A %s | wc -l", dir);
    FILE *p = popen(cmd, "r");
    cr_assert(p && fscanf(p, "%d", &entries) == 1);
    pclose(p);
    cr_expect_eq(entries, 1, "no temporary file is left");
    snprintf(path, sizeof path, "%s/no/such/parts.bin", dir);
    cr_expect_eq(s2_write_parts_atomic(path, parts, 4, &err), S2_ERR_IO);
    assert_has(err.msg, path);
    s2_error_clear(&err);
    cr_expect_eq(s2_write_parts_atomic(path, NULL, 2, &err), S2_ERR_INVALID);
    s2_error_clear(&err);
}

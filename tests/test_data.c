/*
 * test_data.c — token data files: writer, mmap reader and its checks, packing, order, bytes.
 *
 * Each test gets its own directory under /tmp. Corruption tests build a valid file byte by
 * byte here (independently of the writer, whose output must equal it), change one thing, and
 * assert the phrase a user needs plus the file's path.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>

#include <dirent.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gen/spec.h"
#include "runtime/train/data.h"
#include "tmpdir.h"

static char dir[64];
static char path[256];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/s2_test_data.XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/t.tokens", dir);
}

static void remove_dir(void) { s2_test_rmtree(dir); }

TestSuite(data, .init = make_dir, .fini = remove_dir);
TestSuite(order);

/* ---- helpers ----------------------------------------------------------------------------- */

static void write_bytes(const char *p, const void *b, size_t n)
{
    FILE *f = fopen(p, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(b, 1, n, f), n);
    cr_assert_eq(fclose(f), 0);
}

static uint8_t *slurp(const char *p, size_t *n)
{
    char *d;
    cr_assert_eq(s2_read_file(p, &d, n, NULL), S2_OK);
    return (uint8_t *)d;
}

static int dir_entries(void)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, (uint32_t)v);
    put32(p + 4, (uint32_t)(v >> 32));
}

/* Recomputes the digest at 40..55 over bytes [64, size). */
static void refresh_digest(uint8_t *b, size_t size)
{
    uint8_t d[32];
    s2_sha256(b + 64, size - 64, d);
    memcpy(b + 40, d, 16);
}

/* A valid file, laid out by hand from data.h's table. */
static uint8_t *build(uint32_t width, uint32_t vocab, const uint32_t *tok, uint64_t n,
                      const uint64_t *idx, uint64_t docs, size_t *size)
{
    size_t tb = (size_t)(n * width), pad = (8 - tb % 8) % 8;
    *size = 64 + tb + pad + 8 * (docs + 1);
    uint8_t *b = calloc(1, *size);
    memcpy(b, "S2TOKENS", 8);
    put32(b + 8, 1);
    put32(b + 12, width);
    put64(b + 16, n);
    put64(b + 24, docs);
    put32(b + 32, vocab);
    for (uint64_t i = 0; i < n; i++) {
        uint8_t t[4];
        put32(t, tok[i]);
        memcpy(b + 64 + i * width, t, width);
    }
    for (uint64_t d = 0; d <= docs; d++)
        put64(b + 64 + tb + pad + 8 * d, idx[d]);
    refresh_digest(b, *size);
    return b;
}

/* Opening path must fail with status st and a message naming path and containing what. */
static void expect_open_error(s2_status st, const char *what)
{
    s2_data_file *f = (s2_data_file *)1;
    s2_error err = {0};
    cr_assert_eq(s2_data_open(path, &f, &err), st, "expected '%s', got %s", what,
                 err.msg ? err.msg : "success");
    cr_assert_null(f);
    cr_assert_not_null(err.msg);
    cr_assert(strncmp(err.msg, path, strlen(path)) == 0, "message does not name the file: %s",
              err.msg);
    cr_assert(strstr(err.msg, what), "expected '%s' in: %s", what, err.msg);
    s2_error_clear(&err);
}

static s2_data_file *open_ok(const char *p)
{
    s2_data_file *f = NULL;
    s2_error err = {0};
    cr_assert_eq(s2_data_open(p, &f, &err), S2_OK, "%s", err.msg);
    return f;
}

/* Four documents, one empty: [10 11 12] [20 21] [] [30 31 32 33]. */
static const uint32_t small_tok[] = {10, 11, 12, 20, 21, 30, 31, 32, 33};
static const uint64_t small_idx[] = {0, 3, 5, 5, 9};

/* ---- round trips ------------------------------------------------------------------------- */

static void round_trip(uint32_t width, uint32_t vocab, uint32_t big)
{
    uint32_t tok[] = {0, 1, big, 7, big - 1, 5, 6, 2};
    uint64_t idx[] = {0, 3, 3, 7, 8};
    s2_data_writer *w;
    s2_error err = {0};
    cr_assert_eq(s2_data_writer_open(path, width, vocab, &w, &err), S2_OK, "%s", err.msg);
    /* document 0 in two appends, an empty document, document 2, then an open one finish ends */
    cr_assert_eq(s2_data_writer_append(w, tok, 2, &err), S2_OK);
    cr_assert_eq(s2_data_writer_append(w, tok + 2, 1, &err), S2_OK);
    cr_assert_eq(s2_data_writer_end_doc(w, &err), S2_OK);
    cr_assert_eq(s2_data_writer_end_doc(w, &err), S2_OK);
    cr_assert_eq(s2_data_writer_append(w, tok + 3, 4, &err), S2_OK);
    cr_assert_eq(s2_data_writer_end_doc(w, &err), S2_OK);
    cr_assert_eq(s2_data_writer_append(w, tok + 7, 1, &err), S2_OK);
    cr_assert_eq(s2_data_writer_finish(w, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(dir_entries(), 1, "a temporary file was left behind");

    size_t size, want_size;
    uint8_t *got = slurp(path, &size);
    uint8_t *want = build(width, vocab, tok, 8, idx, 4, &want_size);
    cr_assert_eq(size, want_size);
    cr_assert(memcmp(got, want, size) == 0, "writer's bytes differ from the documented layout");
    free(got);
    free(want);

    struct stat sb;
    cr_assert_eq(stat(path, &sb), 0);
    cr_assert_eq(sb.st_mode & 0777, 0644);

    s2_data_file *f = open_ok(path);
    cr_assert_eq(f->width, width);
    cr_assert_eq(f->vocab, vocab);
    cr_assert_eq(f->n_tokens, 8);
    cr_assert_eq(f->n_docs, 4);
    cr_assert_str_eq(f->path, path);
    for (int i = 0; i < 8; i++)
        cr_assert_eq(s2_data_token(f, (uint64_t)i), tok[i], "token %d", i);
    for (int d = 0; d <= 4; d++)
        cr_assert_eq(s2_data_doc_start(f, (uint64_t)d), idx[d], "document %d", d);
    cr_assert_eq((uintptr_t)f->doc_index % 8, 0);
    s2_data_close(f);
}

Test(data, round_trip_width2) { round_trip(2, 65536, 65535); }
Test(data, round_trip_width4) { round_trip(4, 0xffffffffu, 0xfffffffeu); }

Test(data, write_whole_arrays)
{
    s2_error err = {0};
    cr_assert_eq(s2_data_write(path, 2, 64, small_tok, 9, NULL, 0, &err), S2_OK, "%s", err.msg);
    s2_data_file *f = open_ok(path);
    cr_assert_eq(f->n_docs, 1);
    cr_assert_eq(s2_data_doc_start(f, 1), 9);
    s2_data_close(f);

    cr_assert_eq(s2_data_write(path, 4, 64, small_tok, 9, small_idx, 4, &err), S2_OK);
    f = open_ok(path);
    cr_assert_eq(f->n_docs, 4);
    cr_assert_eq(s2_data_doc_start(f, 2), 5);
    cr_assert_eq(s2_data_doc_start(f, 3), 5);
    s2_data_close(f);

    /* no tokens, no documents: a header and one index entry */
    cr_assert_eq(s2_data_write(path, 2, 64, NULL, 0, NULL, 0, &err), S2_OK, "%s", err.msg);
    size_t size;
    free(slurp(path, &size));
    cr_assert_eq(size, 72);
    f = open_ok(path);
    cr_assert_eq(f->n_tokens, 0);
    cr_assert_eq(f->n_docs, 0);
    cr_assert_eq(s2_data_num_sequences(f, 1, 5), 0);
    s2_data_close(f);

    uint64_t bad_idx[] = {0, 4, 3, 5, 9};
    cr_assert_eq(s2_data_write(path, 2, 64, small_tok, 9, bad_idx, 4, &err), S2_ERR_INVALID);
    cr_assert(strstr(err.msg, "decreases"), "%s", err.msg);
    s2_error_clear(&err);
}

Test(data, close_null) { s2_data_close(NULL); s2_data_writer_abort(NULL); }

/* ---- header corruption, truncation ---------------------------------------------------------- */

/* The small file, width 2: 7 tokens (14 bytes, 2 of padding), 3 documents; 112 bytes. */
static const uint32_t h_tok[] = {3, 4, 5, 6, 7, 8, 9};
static const uint64_t h_idx[] = {0, 2, 2, 7};

typedef struct corruption {
    size_t at;      /* byte offset */
    int size;       /* 1, 4 or 8: the value's width */
    uint64_t value;
    const char *what;
    int fix_digest; /* recompute the digest after the change */
} corruption;

static void apply(uint8_t *b, const corruption *c)
{
    if (c->size == 1)
        b[c->at] = (uint8_t)c->value;
    else if (c->size == 4)
        put32(b + c->at, (uint32_t)c->value);
    else
        put64(b + c->at, c->value);
}

Test(data, header_corruptions)
{
    const corruption cases[] = {
        {0, 1, 'X', "not an s2lora token file: magic is \"X2TOKENS\", expected \"S2TOKENS\"", 0},
        {7, 1, 0, "magic is \"S2TOKEN\\x00\"", 0},
        {8, 4, 2, "unsupported version 2 (this build reads version 1)", 0},
        {8, 4, 0, "unsupported version 0", 0},
        {12, 4, 3, "token width 3 bytes in the header (must be 2 or 4)", 0},
        {12, 4, 0, "token width 0 bytes", 0},
        {12, 4, 8, "token width 8 bytes", 0},
        {12, 4, 1u << 31, "token width 2147483648 bytes", 0},
        {16, 8, 100, "truncated: header says 100 tokens of 2 bytes, file holds 48 bytes of tokens", 0},
        {16, 8, 9, "truncated: header says 3 documents, an index of 32 bytes after 24 bytes of "
                   "tokens and padding; file holds 24 bytes there", 0},
        /* 8 tokens fill exactly the bytes 7 tokens and their padding did: the index says 7 */
        {16, 8, 8, "document index ends at 7 (entry 3), header says 8 tokens", 0},
        /* 6 tokens: token 6 (9) now lies in the padding */
        {16, 8, 6, "padding between the tokens and the index is not zero", 0},
        {16, 8, 1ull << 62, "more than a file can hold", 0},
        {16, 8, UINT64_MAX, "more than a file can hold", 0},
        {24, 8, 4, "truncated: header says 4 documents", 0},
        {24, 8, 2, "8 bytes of trailing data: header says 7 tokens of 2 bytes and 2 documents, "
                   "a file of 104 bytes; the file is 112", 0},
        {24, 8, 0, "24 bytes of trailing data", 0},
        {24, 8, UINT64_MAX, "header says 18446744073709551615 documents, more than a file can hold", 0},
        {32, 4, 0, "vocab size 0 in the header", 0},
        {32, 4, 65537, "vocab size 65537 does not fit 2-byte tokens (at most 65536)", 0},
        {32, 4, 9, "token 6 (in document 2) is 9, not below the vocab size 9", 0},
        {32, 4, 3, "token 0 (in document 0) is 3, not below the vocab size 3", 0},
        {36, 4, 1, "unknown flags 0x1 in the header", 0},
        {36, 4, 0x80000000u, "unknown flags 0x80000000", 0},
        {40, 1, 0, "checksum mismatch", 0},
        {55, 1, 0xff, "checksum mismatch", 0},
        {56, 1, 1, "reserved header bytes 56..63 are not zero", 0},
        {63, 1, 0x80, "reserved header bytes", 0},
        {78, 1, 1, "padding between the tokens and the index is not zero", 0},
        {79, 1, 1, "padding", 0},
        {80, 8, 1, "document index: entry 0 is 1, must be 0", 0},
        {88, 8, 3, "document index not monotone: entry 2 (2) is below entry 1 (3)", 0},
        {104, 8, 6, "document index ends at 6 (entry 3), header says 7 tokens", 0},
        {104, 8, 8, "document index ends at 8", 0},
        /* an in-range token changed: only the digest can tell */
        {64, 1, 4, "checksum mismatch: the payload's SHA-256 begins", 0},
        {76, 1, 200, "token 6 (in document 2) is 200, not below the vocab size 100", 1},
        {64, 1, 100, "token 0 (in document 0) is 100, not below the vocab size 100", 1},
    };
    size_t size;
    uint8_t *good = build(2, 100, h_tok, 7, h_idx, 3, &size);
    cr_assert_eq(size, 112);
    write_bytes(path, good, size);
    s2_data_close(open_ok(path));
    uint8_t *b = malloc(size);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memcpy(b, good, size);
        apply(b, &cases[i]);
        if (cases[i].fix_digest)
            refresh_digest(b, size);
        write_bytes(path, b, size);
        expect_open_error(S2_ERR_PARSE, cases[i].what);
    }
    free(b);
    free(good);
}

Test(data, every_truncation_and_extension)
{
    size_t size;
    uint8_t *good = build(2, 100, h_tok, 7, h_idx, 3, &size);
    for (size_t cut = 0; cut < size; cut++) {
        write_bytes(path, good, cut);
        expect_open_error(S2_ERR_PARSE, "truncated: ");
    }
    write_bytes(path, good, 10);
    expect_open_error(S2_ERR_PARSE, "truncated: file is 10 bytes, shorter than the 64-byte header");
    write_bytes(path, good, 70);
    expect_open_error(S2_ERR_PARSE,
                      "truncated: header says 7 tokens of 2 bytes, file holds 6 bytes of tokens");
    uint8_t *longer = calloc(1, size + 1);
    memcpy(longer, good, size);
    write_bytes(path, longer, size + 1);
    expect_open_error(S2_ERR_PARSE, "1 bytes of trailing data");
    free(longer);
    free(good);

    /* a bigger file, width 4, many documents: cut at many lengths */
    enum { N = 5000, D = 50 };
    uint32_t *tok = malloc(N * sizeof *tok);
    uint64_t idx[D + 1];
    for (int i = 0; i < N; i++)
        tok[i] = (uint32_t)(i * 7919) % 1000;
    for (int d = 0; d <= D; d++)
        idx[d] = (uint64_t)d * N / D;
    s2_error err = {0};
    cr_assert_eq(s2_data_write(path, 4, 1000, tok, N, idx, D, &err), S2_OK, "%s", err.msg);
    uint8_t *whole = slurp(path, &size);
    char cut_path[300];
    snprintf(cut_path, sizeof cut_path, "%s", path);
    for (size_t cut = 0; cut < size; cut += 1 + cut / 16) {
        write_bytes(cut_path, whole, cut);
        expect_open_error(S2_ERR_PARSE, "truncated: ");
    }
    write_bytes(path, whole, size - 1);
    expect_open_error(S2_ERR_PARSE, "truncated: header says 50 documents");
    free(whole);
    free(tok);
}

Test(data, truncation_message_exact)
{
    size_t size = 64 + 1999936;
    uint8_t *b = calloc(1, size);
    memcpy(b, "S2TOKENS", 8);
    put32(b + 8, 1);
    put32(b + 12, 2);
    put64(b + 16, 1000000);
    put64(b + 24, 1);
    put32(b + 32, 32000);
    write_bytes(path, b, size);
    free(b);
    s2_data_file *f;
    s2_error err = {0};
    cr_assert_eq(s2_data_open(path, &f, &err), S2_ERR_PARSE);
    char want[512];
    snprintf(want, sizeof want,
             "%s: truncated: header says 1000000 tokens of 2 bytes, file holds 1999936 bytes of "
             "tokens",
             path);
    cr_assert_str_eq(err.msg, want);
    s2_error_clear(&err);
}

/* Only a regular file is mapped: a FIFO is refused without waiting for a writer (the timeout
 * fails the test if the open blocks), a device or a directory with what it is. */
Test(data, open_io_errors, .timeout = 10)
{
    expect_open_error(S2_ERR_IO, "cannot open: No such file or directory");
    snprintf(path, sizeof path, "%s/fifo", dir);
    cr_assert_eq(mkfifo(path, 0600), 0);
    expect_open_error(S2_ERR_IO, "is a FIFO");
    snprintf(path, sizeof path, "/dev/zero");
    expect_open_error(S2_ERR_IO, "is a character device");
    snprintf(path, sizeof path, "%s", dir);
    expect_open_error(S2_ERR_IO, "is a directory");
}

/* s2_data_check: the header, size and index, not the tokens (a file whose tokens are corrupt
 * passes it and fails s2_data_open); the same refusals as s2_data_open otherwise. */
Test(data, check_reads_header_and_index_only, .timeout = 10)
{
    uint32_t toks[] = {5, 6, 7, 8, 9};
    uint64_t idx[] = {0, 2, 5};
    s2_error err = {0};
    cr_assert_eq(s2_data_write(path, 2, 100, toks, 5, idx, 2, &err), S2_OK, "%s", err.msg);
    s2_data_info info;
    cr_assert_eq(s2_data_check(path, &info, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(info.width, 2);
    cr_expect_eq(info.vocab, 100);
    cr_expect_eq(info.n_tokens, 5);
    cr_expect_eq(info.n_docs, 2);
    cr_expect_eq(s2_data_count_sequences(info.n_tokens, info.n_docs, 2, 99), 2);
    size_t n;
    uint8_t *b = slurp(path, &n);
    b[64] = 0xff; /* token 0 = 255 >= vocab, and the digest no longer matches */
    write_bytes(path, b, n);
    cr_assert_eq(s2_data_check(path, &info, &err), S2_OK, "%s", err.msg);
    expect_open_error(S2_ERR_PARSE, "not below the vocab size 100");
    b[63] = 1; /* reserved header bytes: s2_data_check reads the header */
    write_bytes(path, b, n);
    cr_assert_eq(s2_data_check(path, &info, &err), S2_ERR_PARSE);
    cr_expect(strstr(err.msg, "reserved header bytes"), "%s", err.msg);
    free(b);
    cr_assert_eq(s2_data_check("/dev/zero", &info, &err), S2_ERR_IO);
    cr_expect(strstr(err.msg, "/dev/zero: is a character device"), "%s", err.msg);
    s2_error_clear(&err);
}

/* Text inputs of s2lora data --bytes are read to their size: a FIFO or a device (which could
 * stream forever) is refused, naming it. */
Test(data, from_text_refuses_special_files, .timeout = 10)
{
    char fifo[300];
    snprintf(fifo, sizeof fifo, "%s/fifo", dir);
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    const char *inputs[][1] = {{"/dev/zero"}, {fifo}, {dir}};
    const char *what[] = {"/dev/zero: is a character device", "fifo: is a FIFO",
                          "is a directory"};
    for (int i = 0; i < 3; i++) {
        s2_error err = {0};
        cr_assert_eq(s2_data_from_text(inputs[i], 1, path, &err), S2_ERR_IO);
        cr_expect(strstr(err.msg, what[i]), "%s", err.msg);
        cr_expect_eq(access(path, F_OK), -1, "no output is left behind");
        s2_error_clear(&err);
    }
}

/* ---- writer refusals and abort ------------------------------------------------------------ */

Test(data, writer_rejects_token_outside_vocab)
{
    s2_data_writer *w;
    s2_error err = {0};
    cr_assert_eq(s2_data_writer_open(path, 2, S2_DATA_BYTE_VOCAB, &w, &err), S2_OK);
    uint32_t ok[] = {1, 2, 3}, badt[] = {4, 263, 264, 5};
    cr_assert_eq(s2_data_writer_append(w, ok, 3, &err), S2_OK);
    cr_assert_eq(s2_data_writer_append(w, badt, 4, &err), S2_ERR_INVALID);
    cr_assert(strstr(err.msg, "token 5 (position 2 of this append) is 264, not below the vocab "
                              "size 264"),
              "%s", err.msg);
    cr_assert(strncmp(err.msg, path, strlen(path)) == 0);
    /* spent: later calls fail, finish publishes nothing */
    cr_assert_eq(s2_data_writer_append(w, ok, 3, &err), S2_ERR_INVALID);
    cr_assert(strstr(err.msg, "an earlier write to this file failed"), "%s", err.msg);
    cr_assert_eq(s2_data_writer_finish(w, &err), S2_ERR_INVALID);
    cr_assert_eq(dir_entries(), 0);
    s2_error_clear(&err);
}

Test(data, writer_rejects_layout)
{
    s2_data_writer *w = (s2_data_writer *)1;
    s2_error err = {0};
    cr_assert_eq(s2_data_writer_open(path, 3, 100, &w, &err), S2_ERR_INVALID);
    cr_assert_null(w);
    cr_assert(strstr(err.msg, "token width 3 bytes (must be 2 or 4)"), "%s", err.msg);
    cr_assert_eq(s2_data_writer_open(path, 2, 0, &w, &err), S2_ERR_INVALID);
    cr_assert(strstr(err.msg, "vocab size 0"), "%s", err.msg);
    cr_assert_eq(s2_data_writer_open(path, 2, 65537, &w, &err), S2_ERR_INVALID);
    cr_assert(strstr(err.msg, "does not fit 2-byte tokens"), "%s", err.msg);
    char nodir[300];
    snprintf(nodir, sizeof nodir, "%s/missing/t.tokens", dir);
    cr_assert_eq(s2_data_writer_open(nodir, 2, 100, &w, &err), S2_ERR_IO);
    cr_assert(strstr(err.msg, "cannot create temporary file"), "%s", err.msg);
    cr_assert_eq(dir_entries(), 0);
    s2_error_clear(&err);
}

Test(data, writer_abort_leaves_nothing)
{
    s2_data_writer *w;
    s2_error err = {0};
    cr_assert_eq(s2_data_writer_open(path, 4, 1000, &w, &err), S2_OK);
    uint32_t t[4096];
    for (int i = 0; i < 4096; i++)
        t[i] = (uint32_t)i % 1000;
    for (int k = 0; k < 300; k++) /* 4.9 MB: the buffer has been flushed several times */
        cr_assert_eq(s2_data_writer_append(w, t, 4096, &err), S2_OK);
    cr_assert_eq(s2_data_writer_end_doc(w, &err), S2_OK);
    cr_assert_eq(dir_entries(), 1); /* the temporary file */
    s2_data_writer_abort(w);
    cr_assert_eq(dir_entries(), 0);

    /* an existing file at the path is left as it was */
    cr_assert_eq(s2_data_write(path, 2, 64, small_tok, 9, small_idx, 4, &err), S2_OK);
    size_t before_size, after_size;
    uint8_t *before = slurp(path, &before_size);
    cr_assert_eq(s2_data_writer_open(path, 2, 64, &w, &err), S2_OK);
    cr_assert_eq(s2_data_writer_append(w, t, 50, &err), S2_OK);
    s2_data_writer_abort(w);
    uint8_t *after = slurp(path, &after_size);
    cr_assert_eq(before_size, after_size);
    cr_assert(memcmp(before, after, before_size) == 0);
    cr_assert_eq(dir_entries(), 1);
    free(before);
    free(after);
}

/* ---- packing ----------------------------------------------------------------------------- */

static void expect_window(const s2_data_file *f, uint64_t ctx, int64_t sep, uint64_t k,
                          const uint32_t *want)
{
    uint32_t got[64];
    s2_error err = {0};
    cr_assert_eq(s2_data_batch(f, ctx, sep, k, got, &err), S2_OK, "%s", err.msg);
    for (uint64_t i = 0; i <= ctx; i++)
        cr_assert_eq(got[i], want[i], "ctx %llu sep %lld seq %llu token %llu: %u, want %u",
                     (unsigned long long)ctx, (long long)sep, (unsigned long long)k,
                     (unsigned long long)i, got[i], want[i]);
}

static void packing_small(uint32_t width)
{
    s2_error err = {0};
    cr_assert_eq(s2_data_write(path, width, 64, small_tok, 9, small_idx, 4, &err), S2_OK);
    s2_data_file *f = open_ok(path);

    /* stream with EOS 5: 10 11 12 5 20 21 5 5 30 31 32 33 (L = 12: separators between
       documents, the empty one included, none at the ends) */
    cr_assert_eq(s2_data_num_sequences(f, 3, 5), 3);
    expect_window(f, 3, 5, 0, (uint32_t[]){10, 11, 12, 5});
    expect_window(f, 3, 5, 1, (uint32_t[]){5, 20, 21, 5});
    expect_window(f, 3, 5, 2, (uint32_t[]){5, 5, 30, 31}); /* 32 33 dropped: no label for 33 */
    cr_assert_eq(s2_data_num_sequences(f, 4, 5), 2);
    expect_window(f, 4, 5, 0, (uint32_t[]){10, 11, 12, 5, 20});
    expect_window(f, 4, 5, 1, (uint32_t[]){20, 21, 5, 5, 30});
    cr_assert_eq(s2_data_num_sequences(f, 11, 5), 1); /* L = C + 1: exactly one */
    expect_window(f, 11, 5, 0, (uint32_t[]){10, 11, 12, 5, 20, 21, 5, 5, 30, 31, 32, 33});
    cr_assert_eq(s2_data_num_sequences(f, 12, 5), 0);
    cr_assert_eq(s2_data_num_sequences(f, 0, 5), 0);
    cr_assert_eq(s2_data_num_sequences(f, 1, 5), 11);

    /* without a separator: 10 11 12 20 21 30 31 32 33 (L = 9) */
    cr_assert_eq(s2_data_num_sequences(f, 4, S2_DATA_NO_SEP), 2);
    expect_window(f, 4, S2_DATA_NO_SEP, 0, (uint32_t[]){10, 11, 12, 20, 21});
    expect_window(f, 4, S2_DATA_NO_SEP, 1, (uint32_t[]){21, 30, 31, 32, 33}); /* the last window */
    cr_assert_eq(s2_data_num_sequences(f, 3, S2_DATA_NO_SEP), 2);
    expect_window(f, 3, S2_DATA_NO_SEP, 1, (uint32_t[]){20, 21, 30, 31});

    uint32_t out[16];
    cr_assert_eq(s2_data_batch(f, 4, 5, 2, out, &err), S2_ERR_INVALID);
    cr_assert(strstr(err.msg, "sequence 2 out of range: the file packs into 2 sequences of 4 tokens"),
              "%s", err.msg);
    cr_assert_eq(s2_data_batch(f, 0, 5, 0, out, &err), S2_ERR_INVALID);
    cr_assert(strstr(err.msg, "context length 0"), "%s", err.msg);
    cr_assert_eq(s2_data_batch(f, 4, 64, 0, out, &err), S2_ERR_INVALID);
    cr_assert(strstr(err.msg, "separator token 64 is not below the vocab size 64"), "%s", err.msg);
    cr_assert_eq(s2_data_batch(f, 4, -2, 0, out, &err), S2_ERR_INVALID);
    s2_error_clear(&err);
    s2_data_close(f);
}

Test(data, packing_windows_width2) { packing_small(2); }
Test(data, packing_windows_width4) { packing_small(4); }

/* Documents of C - 1 tokens with a separator: window k is document k whole (its first token at
   position 0), the separator, and document k + 1's first token as the last label, what
   bench/paper-claim.sh's training documents rely on. */
Test(data, documents_one_shorter_than_the_context_fill_one_window_each)
{
    enum { C = 6, DOCS = 5 };
    uint32_t tok[DOCS * (C - 1)];
    uint64_t idx[DOCS + 1] = {0};
    for (int d = 0; d < DOCS; d++) {
        for (int i = 0; i < C - 1; i++)
            tok[d * (C - 1) + i] = (uint32_t)(10 * (d + 1) + i); /* 10 11 .. 14, 20 .. 24, .. */
        idx[d + 1] = (uint64_t)(d + 1) * (C - 1);
    }
    s2_error err = {0};
    cr_assert_eq(s2_data_write(path, 2, 64, tok, DOCS * (C - 1), idx, DOCS, &err), S2_OK);
    s2_data_file *f = open_ok(path);
    cr_assert_eq(s2_data_num_sequences(f, C, 5), DOCS - 1);
    for (int k = 0; k < DOCS - 1; k++) {
        uint32_t want[C + 1];
        for (int i = 0; i < C - 1; i++)
            want[i] = tok[k * (C - 1) + i];
        want[C - 1] = 5;
        want[C] = tok[(k + 1) * (C - 1)];
        expect_window(f, C, 5, (uint64_t)k, want);
    }
    s2_data_close(f);
}

static uint64_t rng_state = 12345;
static uint64_t rnd(uint64_t bound)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (rng_state >> 33) % bound;
}

/* Every window of random files (empty documents at the ends and in a row) against a stream
   built the obvious way. */
Test(data, packing_matches_reference)
{
    for (int trial = 0; trial < 40; trial++) {
        uint32_t width = trial % 2 ? 4 : 2, vocab = 50;
        uint64_t docs = rnd(8), idx[9] = {0}, n = 0;
        uint32_t tok[400];
        for (uint64_t d = 0; d < docs; d++) {
            uint64_t len = rnd(3) == 0 ? 0 : rnd(40);
            for (uint64_t i = 0; i < len; i++)
                tok[n++] = (uint32_t)rnd(vocab);
            idx[d + 1] = n;
        }
        s2_error err = {0};
        cr_assert_eq(s2_data_write(path, width, vocab, tok, n, idx, docs, &err), S2_OK, "%s",
                     err.msg);
        s2_data_file *f = open_ok(path);
        for (int with_sep = 0; with_sep < 2; with_sep++) {
            int64_t sep = with_sep ? 49 : S2_DATA_NO_SEP;
            uint32_t stream[500];
            uint64_t len = 0;
            for (uint64_t d = 0; d < docs; d++) {
                if (with_sep && d > 0)
                    stream[len++] = 49;
                for (uint64_t i = idx[d]; i < idx[d + 1]; i++)
                    stream[len++] = tok[i];
            }
            for (uint64_t ctx = 1; ctx <= 20; ctx++) {
                uint64_t ns = s2_data_num_sequences(f, ctx, sep);
                cr_assert_eq(ns, len > ctx ? (len - 1) / ctx : 0);
                for (uint64_t k = 0; k < ns; k++)
                    expect_window(f, ctx, sep, k, stream + k * ctx);
                uint32_t out[32];
                cr_assert_eq(s2_data_batch(f, ctx, sep, ns, out, NULL), S2_ERR_INVALID);
            }
        }
        s2_data_close(f);
    }
}

/* ---- order ------------------------------------------------------------------------------- */

static int is_permutation(const uint64_t *p, uint64_t n)
{
    char *seen = calloc(n ? n : 1, 1);
    int ok = 1;
    for (uint64_t i = 0; i < n && ok; i++) {
        ok = p[i] < n && !seen[p[i]];
        if (ok)
            seen[p[i]] = 1;
    }
    free(seen);
    return ok;
}

Test(order, permutation_deterministic_per_seed)
{
    enum { N = 1000 };
    uint64_t a[N], b[N], c[N];
    s2_data_order(N, 42, a);
    s2_data_order(N, 42, b);
    s2_data_order(N, 43, c);
    cr_assert(is_permutation(a, N));
    cr_assert(is_permutation(c, N));
    cr_assert(memcmp(a, b, sizeof a) == 0, "same seed, different order");
    int same = 0, fixed = 0;
    for (int i = 0; i < N; i++) {
        same += a[i] == c[i];
        fixed += a[i] == (uint64_t)i;
    }
    cr_assert_lt(same, 20, "seeds 42 and 43 agree at %d of %d places", same, N);
    cr_assert_lt(fixed, 20, "%d of %d indices stay in place", fixed, N);

    uint64_t one = 7;
    s2_data_order(0, 1, NULL);
    s2_data_order(1, 1, &one);
    cr_assert_eq(one, 0);
}

/* The order is part of the resume contract: pin it, so a change to it is noticed. */
Test(order, pinned)
{
    uint64_t p[10];
    s2_data_order(10, 42, p);
    const uint64_t want[10] = {0, 9, 5, 8, 6, 4, 7, 2, 1, 3};
    for (int i = 0; i < 10; i++)
        cr_assert_eq(p[i], want[i], "position %d: %llu, want %llu", i, (unsigned long long)p[i],
                     (unsigned long long)want[i]);
}

/* Each of the 6 orders of 3 items, over 60000 seeds, about 10000 times (5 sigma: +-456). */
Test(order, uniform)
{
    int count[3][3][3] = {{{0}}};
    for (uint64_t seed = 0; seed < 60000; seed++) {
        uint64_t p[3];
        s2_data_order(3, seed, p);
        count[p[0]][p[1]][p[2]]++;
    }
    int perms[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
    for (int i = 0; i < 6; i++) {
        int c = count[perms[i][0]][perms[i][1]][perms[i][2]];
        cr_assert(c > 10000 - 456 && c < 10000 + 456, "order %d%d%d drawn %d times", perms[i][0],
                  perms[i][1], perms[i][2], c);
    }
}

/* ---- byte level -------------------------------------------------------------------------- */

Test(data, byte_vocab_matches_tiny_spec)
{
    s2_spec spec;
    s2_error err = {0};
    cr_assert_eq(s2_spec_load(S2_SOURCE_DIR "/specs/tiny-byte-512.yaml", NULL, 0, &spec, &err),
                 S2_OK, "%s", err.msg);
    cr_assert_eq(spec.model.vocab_size, (int)S2_DATA_BYTE_VOCAB);
    cr_assert_eq(S2_DATA_BYTE_OFFSET + 256, S2_DATA_BYTE_VOCAB);
    for (uint32_t t = 0; t < S2_DATA_BYTE_OFFSET; t++)
        cr_assert_eq(s2_data_byte_of(t), -1);
    cr_assert_eq(s2_data_byte_of(8), 0);
    cr_assert_eq(s2_data_byte_of(263), 255);
    cr_assert_eq(s2_data_byte_of(264), -1);
}

Test(data, from_text_round_trip)
{
    char a[300], b[300], e[300];
    snprintf(a, sizeof a, "%s/a.txt", dir);
    snprintf(b, sizeof b, "%s/b.bin", dir);
    snprintf(e, sizeof e, "%s/empty.txt", dir);
    const char *text = "Hello, long context.\nLine two\ttab.\n";
    uint8_t bin[512 + 70000];
    for (size_t i = 0; i < sizeof bin; i++)
        bin[i] = (uint8_t)(i < 512 ? i : i * 31 + 7); /* every byte value, and > one read chunk */
    write_bytes(a, text, strlen(text));
    write_bytes(b, bin, sizeof bin);
    write_bytes(e, "", 0);
    const char *inputs[] = {a, b, e};
    s2_error err = {0};
    cr_assert_eq(s2_data_from_text(inputs, 3, path, &err), S2_OK, "%s", err.msg);

    s2_data_file *f = open_ok(path);
    cr_assert_eq(f->width, 2);
    cr_assert_eq(f->vocab, 264);
    cr_assert_eq(f->n_docs, 3);
    const uint8_t *orig[] = {(const uint8_t *)text, bin, NULL};
    size_t len[] = {strlen(text), sizeof bin, 0};
    for (uint64_t d = 0; d < 3; d++) {
        uint64_t s = s2_data_doc_start(f, d), end = s2_data_doc_start(f, d + 1);
        cr_assert_eq(end - s, len[d] + 2, "document %llu", (unsigned long long)d);
        cr_assert_eq(s2_data_token(f, s), S2_DATA_BYTE_BOS);
        cr_assert_eq(s2_data_token(f, end - 1), S2_DATA_BYTE_EOS);
        for (size_t i = 0; i < len[d]; i++) {
            int byte = s2_data_byte_of(s2_data_token(f, s + 1 + i));
            cr_assert_eq(byte, orig[d][i], "document %llu byte %zu", (unsigned long long)d, i);
        }
    }
    /* packed without a separator: documents already end in EOS */
    uint32_t w[9];
    cr_assert_eq(s2_data_batch(f, 8, S2_DATA_NO_SEP, 0, w, &err), S2_OK);
    cr_assert_eq(w[0], S2_DATA_BYTE_BOS);
    cr_assert_eq(s2_data_byte_of(w[1]), 'H');
    s2_data_close(f);
}

Test(data, from_text_errors)
{
    char a[300], missing[300];
    snprintf(a, sizeof a, "%s/a.txt", dir);
    snprintf(missing, sizeof missing, "%s/missing.txt", dir);
    write_bytes(a, "abc", 3);
    const char *inputs[] = {a, missing};
    s2_error err = {0};
    cr_assert_eq(s2_data_from_text(inputs, 2, path, &err), S2_ERR_IO);
    char want[400];
    snprintf(want, sizeof want, "%s: cannot open: No such file or directory", missing);
    cr_assert_str_eq(err.msg, want);
    cr_assert_eq(dir_entries(), 1, "only a.txt: no output, no temporary file");
    cr_assert_eq(s2_data_from_text(inputs, 0, path, &err), S2_ERR_INVALID);
    cr_assert(strstr(err.msg, "no input files"), "%s", err.msg);
    s2_error_clear(&err);
}

/* ---- a few MB through mmap ---------------------------------------------------------------- */

static void large(uint32_t width, uint32_t vocab, uint64_t n)
{
    uint32_t *tok = malloc(n * sizeof *tok);
    uint64_t idx[65] = {0};
    for (uint64_t i = 0; i < n; i++)
        tok[i] = (uint32_t)rnd(vocab);
    for (int d = 1; d < 64; d++)
        idx[d] = (uint64_t)d * (n / 64) + rnd(1000);
    idx[64] = n;
    s2_data_writer *w;
    s2_error err = {0};
    cr_assert_eq(s2_data_writer_open(path, width, vocab, &w, &err), S2_OK);
    for (int d = 0; d < 64; d++) {
        for (uint64_t i = idx[d]; i < idx[d + 1]; i += 10007) {
            size_t k = idx[d + 1] - i < 10007 ? (size_t)(idx[d + 1] - i) : 10007;
            cr_assert_eq(s2_data_writer_append(w, tok + i, k, &err), S2_OK);
        }
        cr_assert_eq(s2_data_writer_end_doc(w, &err), S2_OK);
    }
    cr_assert_eq(s2_data_writer_finish(w, &err), S2_OK, "%s", err.msg);

    s2_data_file *f = open_ok(path);
    cr_assert_eq(f->n_tokens, n);
    cr_assert_eq(f->map_size, 64 + n * width + (8 - n * width % 8) % 8 + 65 * 8);
    for (uint64_t i = 0; i < n; i++)
        if (s2_data_token(f, i) != tok[i])
            cr_assert_fail("token %llu", (unsigned long long)i);
    for (int d = 0; d <= 64; d++)
        cr_assert_eq(s2_data_doc_start(f, (uint64_t)d), idx[d]);

    /* windows of 4096 with a separator, in shuffled order, against a reference stream */
    uint64_t ctx = 4096, len = n + 63;
    uint32_t *stream = malloc(len * sizeof *stream), *out = malloc((ctx + 1) * sizeof *out);
    for (uint64_t d = 0, p = 0; d < 64; d++) {
        if (d)
            stream[p++] = 0;
        for (uint64_t i = idx[d]; i < idx[d + 1]; i++)
            stream[p++] = tok[i];
    }
    uint64_t ns = s2_data_num_sequences(f, ctx, 0);
    cr_assert_eq(ns, (len - 1) / ctx);
    uint64_t *perm = malloc(ns * sizeof *perm);
    s2_data_order(ns, 7, perm);
    for (uint64_t k = 0; k < ns; k++) {
        cr_assert_eq(s2_data_batch(f, ctx, 0, perm[k], out, &err), S2_OK);
        cr_assert(memcmp(out, stream + perm[k] * ctx, (ctx + 1) * sizeof *out) == 0,
                  "sequence %llu", (unsigned long long)perm[k]);
    }
    s2_data_close(f);
    free(perm);
    free(out);
    free(stream);
    free(tok);
}

/* The bounds check runs in chunks of 2^20 tokens: an offender deep in a later chunk is found
   and named (the digest is valid, so only the bounds check can catch it). */
Test(data, large_token_outside_vocab)
{
    uint64_t n = 2500000, idx[] = {0, 1000000, 2000000, n};
    uint32_t *tok = malloc(n * sizeof *tok);
    for (uint64_t i = 0; i < n; i++)
        tok[i] = (uint32_t)(i % 1000);
    tok[2100000] = 1000;
    size_t size;
    uint8_t *b = build(2, 1000, tok, n, idx, 3, &size);
    write_bytes(path, b, size);
    expect_open_error(S2_ERR_PARSE, "token 2100000 (in document 2) is 1000, not below the vocab "
                                    "size 1000");
    free(b);
    free(tok);
}

Test(data, large_width2) { large(2, 32000, 3000001); }  /* 6 MB */
Test(data, large_width4) { large(4, 128256, 1500003); } /* 6 MB */

/* scripts/tokenize_llama.py writes the same format: its writer (without the tokenizers
 * package, which CI lacks) on tokens of both widths, read back and checked by s2_data_open. */
Test(data, python_tokenizer_writer)
{
    const struct { uint32_t vocab, width; } cases[] = {{32000, 2}, {128256, 4}};
    for (int c = 0; c < 2; c++) {
        char cmd[1024];
        snprintf(cmd, sizeof cmd,
                 "python3 -c 'import sys; sys.path.insert(0, \"%s/scripts\"); "
                 "import tokenize_llama as t; "
                 "t.write_tokens(\"%s\", [1, 5, 31999, 2, 1, %u, 2], [0, 4, 7], %u)'",
                 S2_SOURCE_DIR, path, cases[c].vocab - 1, cases[c].vocab);
        cr_assert_eq(system(cmd), 0, "%s", cmd);
        s2_data_file *f = NULL;
        s2_error err = {0};
        cr_assert_eq(s2_data_open(path, &f, &err), S2_OK, "%s", err.msg);
        cr_expect_eq(f->width, cases[c].width);
        cr_expect_eq(f->vocab, cases[c].vocab);
        cr_expect_eq(f->n_tokens, 7);
        cr_expect_eq(f->n_docs, 2);
        cr_expect_eq(s2_data_doc_start(f, 1), 4);
        cr_expect_eq(s2_data_token(f, 2), 31999);
        cr_expect_eq(s2_data_token(f, 5), cases[c].vocab - 1);
        s2_data_close(f);
    }
}

/* data.c — token data files: streaming atomic writer, mmap reader, packing, order, bytes. */
#define _GNU_SOURCE
#include "runtime/train/data.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Tokens and the index are used in place through the mapping: little-endian hosts only. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "s2lora token files are little-endian and read in place; this host is not"
#endif

#define BUF_SIZE ((size_t)1 << 20)
#define CHECK_CHUNK ((uint64_t)1 << 20) /* tokens per bounds-check + digest step */

typedef unsigned long long ull;

/* ---- little-endian fields --------------------------------------------------------------- */

static uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get_u64(const uint8_t *p) { return get_u32(p) | (uint64_t)get_u32(p + 4) << 32; }

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u64(uint8_t *p, uint64_t v)
{
    put_u32(p, (uint32_t)v);
    put_u32(p + 4, (uint32_t)(v >> 32));
}

static uint64_t pad_of(uint64_t token_bytes) { return (8 - token_bytes % 8) % 8; }

/* ---- writer ----------------------------------------------------------------------------- */

struct s2_data_writer {
    char *path, *tmp;
    int fd;
    uint32_t width, vocab;
    uint64_t n_tokens;
    uint64_t *index; /* starts of the documents so far, then the end */
    size_t n_index, cap_index;
    uint8_t *buf;
    size_t buf_len;
    s2_sha256_ctx sha;
    s2_status failed;
};

static s2_status write_all(int fd, const void *data, size_t n)
{
    const uint8_t *p = data;
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return S2_ERR_IO;
        p += k;
        n -= (size_t)k;
    }
    return S2_OK;
}

static s2_status writer_fail(s2_data_writer *w, s2_error *err, s2_status st, const char *what)
{
    w->failed = st;
    return s2_error_set(err, st, "%s: %s", w->path, what);
}

/* Refuses calls on a writer that already failed. */
static s2_status writer_usable(s2_data_writer *w, s2_error *err)
{
    if (!w)
        return s2_error_set(err, S2_ERR_INVALID, "token writer: NULL writer");
    if (w->failed)
        return s2_error_set(err, w->failed, "%s: an earlier write to this file failed", w->path);
    return S2_OK;
}

static s2_status writer_flush(s2_data_writer *w, s2_error *err)
{
    if (w->buf_len == 0)
        return S2_OK;
    s2_sha256_update(&w->sha, w->buf, w->buf_len);
    if (write_all(w->fd, w->buf, w->buf_len) != S2_OK) {
        char msg[256];
        snprintf(msg, sizeof msg, "write failed: %s", strerror(errno));
        return writer_fail(w, err, S2_ERR_IO, msg);
    }
    w->buf_len = 0;
    return S2_OK;
}

/* Appends raw payload bytes through the buffer (and so through the digest). */
static s2_status writer_put(s2_data_writer *w, const void *data, size_t n, s2_error *err)
{
    const uint8_t *p = data;
    while (n > 0) {
        if (w->buf_len == BUF_SIZE && writer_flush(w, err) != S2_OK)
            return w->failed;
        size_t k = BUF_SIZE - w->buf_len < n ? BUF_SIZE - w->buf_len : n;
        memcpy(w->buf + w->buf_len, p, k);
        w->buf_len += k;
        p += k;
        n -= k;
    }
    return S2_OK;
}

static s2_status index_push(s2_data_writer *w, uint64_t v, s2_error *err)
{
    if (w->n_index == w->cap_index) {
        size_t cap = w->cap_index ? w->cap_index * 2 : 1024;
        uint64_t *p = realloc(w->index, cap * sizeof *p);
        if (!p)
            return writer_fail(w, err, S2_ERR_NOMEM, "out of memory for the document index");
        w->index = p;
        w->cap_index = cap;
    }
    w->index[w->n_index++] = v;
    return S2_OK;
}

static void writer_free(s2_data_writer *w)
{
    free(w->path);
    free(w->tmp);
    free(w->index);
    free(w->buf);
    free(w);
}

void s2_data_writer_abort(s2_data_writer *w)
{
    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    if (w->tmp)
        unlink(w->tmp);
    writer_free(w);
}

static s2_status check_layout(const char *path, uint32_t width, uint32_t vocab, s2_error *err)
{
    if (width != 2 && width != 4)
        return s2_error_set(err, S2_ERR_INVALID, "%s: token width %u bytes (must be 2 or 4)",
                            path, width);
    if (vocab == 0)
        return s2_error_set(err, S2_ERR_INVALID, "%s: vocab size 0 (must be >= 1)", path);
    if (width == 2 && vocab > 65536)
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: vocab size %u does not fit 2-byte tokens (at most 65536)", path,
                            vocab);
    return S2_OK;
}

s2_status s2_data_writer_open(const char *path, uint32_t width, uint32_t vocab,
                              s2_data_writer **out, s2_error *err)
{
    *out = NULL;
    s2_status st = check_layout(path, width, vocab, err);
    if (st != S2_OK)
        return st;
    s2_data_writer *w = calloc(1, sizeof *w);
    if (!w)
        return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", path);
    w->fd = -1;
    w->width = width;
    w->vocab = vocab;
    w->path = strdup(path);
    w->buf = malloc(BUF_SIZE);
    if (!w->path || !w->buf || asprintf(&w->tmp, "%s.tmp.XXXXXX", path) < 0) {
        w->tmp = NULL;
        st = s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", path);
        goto free_writer;
    }
    w->fd = mkstemp(w->tmp);
    if (w->fd < 0) {
        st = s2_error_set(err, S2_ERR_IO, "%s: cannot create temporary file: %s", path,
                          strerror(errno));
        free(w->tmp);
        w->tmp = NULL; /* nothing to unlink */
        goto free_writer;
    }
    uint8_t zero[S2_DATA_HEADER_SIZE] = {0};
    if (write_all(w->fd, zero, sizeof zero) != S2_OK) {
        st = s2_error_set(err, S2_ERR_IO, "%s: write failed: %s", path, strerror(errno));
        goto free_writer;
    }
    s2_sha256_init(&w->sha);
    if ((st = index_push(w, 0, err)) != S2_OK)
        goto free_writer;
    *out = w;
    return S2_OK;

free_writer:
    s2_data_writer_abort(w);
    return st;
}

static s2_status check_tokens_fit(s2_data_writer *w, const uint32_t *tokens, size_t n,
                                  s2_error *err)
{
    for (size_t i = 0; i < n; i++) {
        if (tokens[i] < w->vocab)
            continue;
        w->failed = S2_ERR_INVALID;
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: token %llu (position %zu of this append) is %u, not below the "
                            "vocab size %u",
                            w->path, (ull)(w->n_tokens + i), i, tokens[i], w->vocab);
    }
    return S2_OK;
}

/* Little-endian u16 or u32 (the host is little-endian: see the #error above). */
static void encode_tokens(uint8_t *dst, uint32_t width, const uint32_t *tokens, size_t n)
{
    if (width == 4) {
        memcpy(dst, tokens, n * sizeof *tokens);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t t = (uint16_t)tokens[i];
        memcpy(dst + 2 * i, &t, 2);
    }
}

s2_status s2_data_writer_append(s2_data_writer *w, const uint32_t *tokens, size_t n,
                                s2_error *err)
{
    s2_status st = writer_usable(w, err);
    if (st != S2_OK || n == 0)
        return st;
    if ((st = check_tokens_fit(w, tokens, n, err)) != S2_OK)
        return st;
    for (size_t done = 0; done < n;) {
        size_t room = (BUF_SIZE - w->buf_len) / w->width;
        if (room == 0) {
            if (writer_flush(w, err) != S2_OK)
                return w->failed;
            continue;
        }
        size_t k = n - done < room ? n - done : room;
        encode_tokens(w->buf + w->buf_len, w->width, tokens + done, k);
        w->buf_len += k * w->width;
        w->n_tokens += k;
        done += k;
    }
    return S2_OK;
}

s2_status s2_data_writer_end_doc(s2_data_writer *w, s2_error *err)
{
    s2_status st = writer_usable(w, err);
    if (st != S2_OK)
        return st;
    return index_push(w, w->n_tokens, err);
}

/* Padding, then the index (through the digest). */
static s2_status writer_put_tail(s2_data_writer *w, s2_error *err)
{
    static const uint8_t zero[8] = {0};
    s2_status st = writer_put(w, zero, (size_t)pad_of(w->n_tokens * w->width), err);
    for (size_t i = 0; st == S2_OK && i < w->n_index; i++) {
        uint8_t b[8];
        put_u64(b, w->index[i]);
        st = writer_put(w, b, sizeof b, err);
    }
    if (st == S2_OK)
        st = writer_flush(w, err);
    return st;
}

static void encode_header(uint8_t h[S2_DATA_HEADER_SIZE], uint32_t width, uint32_t vocab,
                          uint64_t n_tokens, uint64_t n_docs, const uint8_t *digest)
{
    memset(h, 0, S2_DATA_HEADER_SIZE);
    memcpy(h, S2_DATA_MAGIC, 8);
    put_u32(h + 8, S2_DATA_VERSION);
    put_u32(h + 12, width);
    put_u64(h + 16, n_tokens);
    put_u64(h + 24, n_docs);
    put_u32(h + 32, vocab);
    put_u32(h + 36, 0);
    memcpy(h + 40, digest, S2_DATA_DIGEST_SIZE);
}

static s2_status writer_put_header(s2_data_writer *w, s2_error *err)
{
    uint8_t digest[32], h[S2_DATA_HEADER_SIZE];
    s2_sha256_final(&w->sha, digest);
    encode_header(h, w->width, w->vocab, w->n_tokens, (uint64_t)w->n_index - 1, digest);
    if (pwrite(w->fd, h, sizeof h, 0) != (ssize_t)sizeof h)
        return s2_error_set(err, S2_ERR_IO, "%s: cannot write the header: %s", w->path,
                            strerror(errno));
    return S2_OK;
}

/* Best effort: a directory that cannot be synced does not undo the rename. */
static void sync_dir_of(const char *path)
{
    char *copy = strdup(path);
    if (!copy)
        return;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(copy);
}

/* mkstemp creates 0600; published files are ordinary 0644 files. */
static s2_status writer_publish(s2_data_writer *w, s2_error *err)
{
    if (fchmod(w->fd, 0644) != 0 || fsync(w->fd) != 0)
        return s2_error_set(err, S2_ERR_IO, "%s: cannot finish write: %s", w->path,
                            strerror(errno));
    int fd = w->fd;
    w->fd = -1;
    if (close(fd) != 0)
        return s2_error_set(err, S2_ERR_IO, "%s: cannot finish write: %s", w->path,
                            strerror(errno));
    if (rename(w->tmp, w->path) != 0)
        return s2_error_set(err, S2_ERR_IO, "%s: cannot rename into place: %s", w->path,
                            strerror(errno));
    free(w->tmp);
    w->tmp = NULL; /* published: abort must not unlink it */
    sync_dir_of(w->path);
    return S2_OK;
}

s2_status s2_data_writer_finish(s2_data_writer *w, s2_error *err)
{
    s2_status st = writer_usable(w, err);
    if (st != S2_OK)
        goto abort_writer;
    if (w->n_tokens > w->index[w->n_index - 1] && (st = index_push(w, w->n_tokens, err)) != S2_OK)
        goto abort_writer;
    if ((st = writer_put_tail(w, err)) != S2_OK)
        goto abort_writer;
    if ((st = writer_put_header(w, err)) != S2_OK)
        goto abort_writer;
    st = writer_publish(w, err);

abort_writer:
    s2_data_writer_abort(w); /* after a publish only frees */
    return st;
}

s2_status s2_data_write(const char *path, uint32_t width, uint32_t vocab, const uint32_t *tokens,
                        uint64_t n, const uint64_t *doc_index, uint64_t n_docs, s2_error *err)
{
    if (doc_index && (doc_index[0] != 0 || doc_index[n_docs] != n))
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: document index must start at 0 and end at %llu tokens", path,
                            (ull)n);
    for (uint64_t d = 0; doc_index && d < n_docs; d++)
        if (doc_index[d + 1] < doc_index[d])
            return s2_error_set(err, S2_ERR_INVALID,
                                "%s: document index decreases at document %llu", path,
                                (ull)(d + 1));
    s2_data_writer *w;
    s2_status st = s2_data_writer_open(path, width, vocab, &w, err);
    if (st != S2_OK)
        return st;
    if (!doc_index) {
        st = s2_data_writer_append(w, tokens, (size_t)n, err);
    } else {
        for (uint64_t d = 0; st == S2_OK && d < n_docs; d++) {
            st = s2_data_writer_append(w, tokens + doc_index[d],
                                       (size_t)(doc_index[d + 1] - doc_index[d]), err);
            if (st == S2_OK)
                st = s2_data_writer_end_doc(w, err);
        }
    }
    if (st != S2_OK) {
        s2_data_writer_abort(w);
        return st;
    }
    return s2_data_writer_finish(w, err);
}

/* ---- reader ----------------------------------------------------------------------------- */

static s2_status bad(const char *path, s2_error *err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static s2_status bad(const char *path, s2_error *err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *m = NULL;
    int r = vasprintf(&m, fmt, ap);
    va_end(ap);
    s2_status st = s2_error_set(err, S2_ERR_PARSE, "%s: %s", path, r >= 0 ? m : "bad file");
    free(m);
    return st;
}

/* "S2TOK\x00NS" — magic bytes as text for a message. */
static void show_bytes(const uint8_t *p, size_t n, char *out /* 4n + 1 */)
{
    for (size_t i = 0; i < n; i++)
        out += (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '\\' && p[i] != '"')
                   ? sprintf(out, "%c", p[i])
                   : sprintf(out, "\\x%02x", p[i]);
    *out = '\0';
}

/* Magic, version, width, vocab, flags, reserved bytes; fills the counts. */
static s2_status check_header(s2_data_file *f, const uint8_t *h, s2_error *err)
{
    if (memcmp(h, S2_DATA_MAGIC, 8) != 0) {
        char shown[33];
        show_bytes(h, 8, shown);
        return bad(f->path, err, "not an s2lora token file: magic is \"%s\", expected \"%s\"",
                   shown, S2_DATA_MAGIC);
    }
    uint32_t version = get_u32(h + 8);
    if (version != S2_DATA_VERSION)
        return bad(f->path, err, "unsupported version %u (this build reads version %u)",
                   version, S2_DATA_VERSION);
    f->width = get_u32(h + 12);
    f->n_tokens = get_u64(h + 16);
    f->n_docs = get_u64(h + 24);
    f->vocab = get_u32(h + 32);
    if (f->width != 2 && f->width != 4)
        return bad(f->path, err, "token width %u bytes in the header (must be 2 or 4)",
                   f->width);
    if (f->vocab == 0)
        return bad(f->path, err, "vocab size 0 in the header (must be >= 1)");
    if (f->width == 2 && f->vocab > 65536)
        return bad(f->path, err, "vocab size %u does not fit 2-byte tokens (at most 65536)",
                   f->vocab);
    uint32_t flags = get_u32(h + 36);
    if (flags != 0)
        return bad(f->path, err, "unknown flags 0x%x in the header (version 1 defines none)",
                   flags);
    if (get_u64(h + 56) != 0)
        return bad(f->path, err, "reserved header bytes 56..63 are not zero");
    memcpy(f->digest, h + 40, S2_DATA_DIGEST_SIZE);
    return S2_OK;
}

/* The file's size against the counts, exactly. */
static s2_status check_size(const s2_data_file *f, uint64_t size, s2_error *err)
{
    const uint64_t room = UINT64_MAX / 2; /* no file is this big; keeps the sums below exact */
    if (f->n_tokens > room / f->width)
        return bad(f->path, err, "header says %llu tokens of %u bytes, more than a file can hold",
                   (ull)f->n_tokens, f->width);
    if (f->n_docs > room / 16)
        return bad(f->path, err, "header says %llu documents, more than a file can hold",
                   (ull)f->n_docs);
    uint64_t tok_bytes = f->n_tokens * f->width, pad = pad_of(tok_bytes);
    uint64_t idx_bytes = 8 * (f->n_docs + 1);
    uint64_t expected = S2_DATA_HEADER_SIZE + tok_bytes + pad + idx_bytes;
    uint64_t held = size - S2_DATA_HEADER_SIZE;
    if (held < tok_bytes)
        return bad(f->path, err,
                   "truncated: header says %llu tokens of %u bytes, file holds %llu bytes of "
                   "tokens",
                   (ull)f->n_tokens, f->width, (ull)held);
    if (size < expected)
        return bad(f->path, err,
                   "truncated: header says %llu documents, an index of %llu bytes after %llu "
                   "bytes of tokens and padding; file holds %llu bytes there",
                   (ull)f->n_docs, (ull)idx_bytes, (ull)(tok_bytes + pad),
                   (ull)(held > tok_bytes + pad ? held - tok_bytes - pad : 0));
    if (size > expected)
        return bad(f->path, err,
                   "%llu bytes of trailing data: header says %llu tokens of %u bytes and %llu "
                   "documents, a file of %llu bytes; the file is %llu",
                   (ull)(size - expected), (ull)f->n_tokens, f->width, (ull)f->n_docs,
                   (ull)expected, (ull)size);
    return S2_OK;
}

static s2_status check_padding(const s2_data_file *f, s2_error *err)
{
    const uint8_t *p = (const uint8_t *)f->tokens + f->n_tokens * f->width;
    for (const uint8_t *e = (const uint8_t *)f->doc_index; p < e; p++)
        if (*p)
            return bad(f->path, err, "padding between the tokens and the index is not zero");
    return S2_OK;
}

static s2_status check_index(const s2_data_file *f, s2_error *err)
{
    const uint64_t *idx = f->doc_index;
    if (idx[0] != 0)
        return bad(f->path, err, "document index: entry 0 is %llu, must be 0", (ull)idx[0]);
    for (uint64_t d = 1; d <= f->n_docs; d++)
        if (idx[d] < idx[d - 1])
            return bad(f->path, err,
                       "document index not monotone: entry %llu (%llu) is below entry %llu "
                       "(%llu)",
                       (ull)d, (ull)idx[d], (ull)(d - 1), (ull)idx[d - 1]);
    if (idx[f->n_docs] != f->n_tokens)
        return bad(f->path, err,
                   "document index ends at %llu (entry %llu), header says %llu tokens",
                   (ull)idx[f->n_docs], (ull)f->n_docs, (ull)f->n_tokens);
    return S2_OK;
}

/* Largest d in [0, n_docs - 1] with idx[d] + d * extra <= pos (n_docs >= 1). */
static uint64_t find_doc(const s2_data_file *f, uint64_t pos, uint64_t extra)
{
    uint64_t lo = 0, hi = f->n_docs - 1;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo + 1) / 2;
        if (f->doc_index[mid] + mid * extra <= pos)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* Max of tokens [begin, end): a plain loop the compiler vectorises. */
static uint32_t max_token(const s2_data_file *f, uint64_t begin, uint64_t end)
{
    uint32_t m = 0;
    if (f->width == 2) {
        const uint16_t *t = f->tokens;
        for (uint64_t i = begin; i < end; i++)
            m = t[i] > m ? t[i] : m;
    } else {
        const uint32_t *t = f->tokens;
        for (uint64_t i = begin; i < end; i++)
            m = t[i] > m ? t[i] : m;
    }
    return m;
}

static s2_status report_token(const s2_data_file *f, uint64_t begin, uint64_t end, s2_error *err)
{
    uint64_t i = begin;
    while (i < end && s2_data_token(f, i) < f->vocab)
        i++;
    return bad(f->path, err, "token %llu (in document %llu) is %u, not below the vocab size %u",
               (ull)i, (ull)find_doc(f, i, 0), s2_data_token(f, i), f->vocab);
}

/* Every token < vocab and the digest, in one pass over the payload. */
static s2_status check_payload(const s2_data_file *f, s2_error *err)
{
    s2_sha256_ctx sha;
    s2_sha256_init(&sha);
    for (uint64_t b = 0; b < f->n_tokens; b += CHECK_CHUNK) {
        uint64_t e = f->n_tokens - b < CHECK_CHUNK ? f->n_tokens : b + CHECK_CHUNK;
        if (max_token(f, b, e) >= f->vocab)
            return report_token(f, b, e, err);
        s2_sha256_update(&sha, (const uint8_t *)f->tokens + b * f->width,
                         (size_t)((e - b) * f->width));
    }
    const uint8_t *rest = (const uint8_t *)f->tokens + f->n_tokens * f->width;
    s2_sha256_update(&sha, rest, (size_t)((const uint8_t *)f->map + f->map_size - rest));
    uint8_t digest[32];
    s2_sha256_final(&sha, digest);
    if (memcmp(digest, f->digest, S2_DATA_DIGEST_SIZE) == 0)
        return S2_OK;
    char have[2 * S2_DATA_DIGEST_SIZE + 1], want[2 * S2_DATA_DIGEST_SIZE + 1];
    s2_hex(digest, S2_DATA_DIGEST_SIZE, have);
    s2_hex(f->digest, S2_DATA_DIGEST_SIZE, want);
    return bad(f->path, err,
               "checksum mismatch: the payload's SHA-256 begins %s, the header says %s (the "
               "file is corrupt)",
               have, want);
}

/* Opens and maps path; checks only that a header fits. */
static s2_status map_file(s2_data_file *f, s2_error *err)
{
    int fd;
    uint64_t size;
    s2_status st = s2_open_regular(f->path, &fd, &size, err);
    if (st)
        return st;
    if (size < S2_DATA_HEADER_SIZE) {
        st = bad(f->path, err, "truncated: file is %llu bytes, shorter than the %u-byte header",
                 (ull)size, S2_DATA_HEADER_SIZE);
        goto close_fd;
    }
    void *m = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
        st = s2_error_set(err, S2_ERR_IO, "%s: cannot map: %s", f->path, strerror(errno));
        goto close_fd;
    }
    f->map = m;
    f->map_size = (size_t)size;

close_fd:
    close(fd); /* the mapping stays valid */
    return st;
}

/* Every check, or (payload = 0) all but the pass over the tokens. */
static s2_status validate(s2_data_file *f, int payload, s2_error *err)
{
    const uint8_t *base = f->map;
    s2_status st = check_header(f, base, err);
    if (st == S2_OK)
        st = check_size(f, f->map_size, err);
    if (st != S2_OK)
        return st;
    f->tokens = base + S2_DATA_HEADER_SIZE;
    uint64_t tok_bytes = f->n_tokens * f->width;
    f->doc_index = (const uint64_t *)(base + S2_DATA_HEADER_SIZE + tok_bytes + pad_of(tok_bytes));
    if ((st = check_padding(f, err)) != S2_OK || (st = check_index(f, err)) != S2_OK ||
        !payload)
        return st;
    madvise(f->map, f->map_size, MADV_SEQUENTIAL);
    st = check_payload(f, err);
    madvise(f->map, f->map_size, MADV_NORMAL);
    return st;
}

static s2_status open_checked(const char *path, int payload, s2_data_file **out, s2_error *err)
{
    *out = NULL;
    s2_data_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", path);
    }
    s2_status st = map_file(f, err);
    if (st == S2_OK)
        st = validate(f, payload, err);
    if (st != S2_OK) {
        s2_data_close(f);
        return st;
    }
    *out = f;
    return S2_OK;
}

s2_status s2_data_open(const char *path, s2_data_file **out, s2_error *err)
{
    return open_checked(path, 1, out, err);
}

s2_status s2_data_check(const char *path, s2_data_info *info, s2_error *err)
{
    memset(info, 0, sizeof *info);
    s2_data_file *f;
    s2_status st = open_checked(path, 0, &f, err);
    if (st)
        return st;
    *info = (s2_data_info){f->width, f->vocab, f->n_tokens, f->n_docs};
    s2_data_close(f);
    return S2_OK;
}

void s2_data_close(s2_data_file *f)
{
    if (!f)
        return;
    if (f->map)
        munmap(f->map, f->map_size);
    free(f->path);
    free(f);
}

uint32_t s2_data_token(const s2_data_file *f, uint64_t i)
{
    return f->width == 2 ? ((const uint16_t *)f->tokens)[i] : ((const uint32_t *)f->tokens)[i];
}

uint64_t s2_data_doc_start(const s2_data_file *f, uint64_t d) { return f->doc_index[d]; }

/* ---- packing and order ------------------------------------------------------------------ */

uint64_t s2_data_count_sequences(uint64_t n_tokens, uint64_t n_docs, uint64_t context_len,
                                 int64_t sep)
{
    const uint64_t len = n_tokens + (sep >= 0 && n_docs > 0 ? n_docs - 1 : 0);
    if (context_len == 0 || len <= context_len)
        return 0;
    return (len - 1) / context_len;
}

uint64_t s2_data_num_sequences(const s2_data_file *f, uint64_t context_len, int64_t sep)
{
    return s2_data_count_sequences(f->n_tokens, f->n_docs, context_len, sep);
}

static void copy_tokens(const s2_data_file *f, uint64_t begin, uint64_t n, uint32_t *out)
{
    if (f->width == 4) {
        memcpy(out, (const uint32_t *)f->tokens + begin, (size_t)n * sizeof *out);
        return;
    }
    const uint16_t *t = (const uint16_t *)f->tokens + begin;
    for (uint64_t i = 0; i < n; i++)
        out[i] = t[i];
}

/* need tokens of the separated stream from pos (the caller checked they exist). */
static void copy_separated(const s2_data_file *f, uint32_t sep, uint64_t pos, uint64_t need,
                           uint32_t *out)
{
    uint64_t d = find_doc(f, pos, 1);
    for (;;) {
        uint64_t start = f->doc_index[d], len = f->doc_index[d + 1] - start;
        uint64_t o = pos - (start + d); /* offset in document d; len means its separator */
        if (o < len) {
            uint64_t k = len - o < need ? len - o : need;
            copy_tokens(f, start + o, k, out);
            out += k;
            need -= k;
            pos += k;
        }
        if (need == 0)
            return;
        *out++ = sep;
        need--;
        pos++;
        d++;
    }
}

s2_status s2_data_batch(const s2_data_file *f, uint64_t context_len, int64_t sep,
                        uint64_t seq_index, uint32_t *tokens_out, s2_error *err)
{
    if (context_len == 0)
        return s2_error_set(err, S2_ERR_INVALID, "%s: context length 0", f->path);
    if (sep < S2_DATA_NO_SEP || sep >= (int64_t)f->vocab)
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: separator token %lld is not below the vocab size %u (or -1 for "
                            "none)",
                            f->path, (long long)sep, f->vocab);
    uint64_t n = s2_data_num_sequences(f, context_len, sep);
    if (seq_index >= n)
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: sequence %llu out of range: the file packs into %llu sequences "
                            "of %llu tokens",
                            f->path, (ull)seq_index, (ull)n, (ull)context_len);
    uint64_t pos = seq_index * context_len;
    if (sep < 0)
        copy_tokens(f, pos, context_len + 1, tokens_out);
    else
        copy_separated(f, (uint32_t)sep, pos, context_len + 1, tokens_out);
    return S2_OK;
}

/* Uniform in [0, bound), bound >= 1: redraw below 2^64 mod bound. */
static uint64_t uniform(uint64_t *state, uint64_t bound)
{
    uint64_t threshold = (0 - bound) % bound;
    for (;;) {
        uint64_t r = s2_splitmix64(state);
        if (r >= threshold)
            return r % bound;
    }
}

void s2_data_order(uint64_t n, uint64_t seed, uint64_t *perm)
{
    for (uint64_t i = 0; i < n; i++)
        perm[i] = i;
    uint64_t state = seed;
    for (uint64_t i = n; i > 1; i--) {
        uint64_t j = uniform(&state, i), t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
}

/* ---- byte-level vocabulary ------------------------------------------------------------- */

int s2_data_byte_of(uint32_t token)
{
    if (token < S2_DATA_BYTE_OFFSET || token >= S2_DATA_BYTE_VOCAB)
        return -1;
    return (int)(token - S2_DATA_BYTE_OFFSET);
}

/* One input as one document: BOS, bytes + offset, EOS. */
static s2_status append_text_file(s2_data_writer *w, const char *path, s2_error *err)
{
    /* A regular file, read to its size: a device or a FIFO could stream forever. */
    int fd;
    uint64_t size;
    s2_status st = s2_open_regular(path, &fd, &size, err);
    if (st)
        return st;
    static const uint32_t bos = S2_DATA_BYTE_BOS, eos = S2_DATA_BYTE_EOS;
    uint8_t bytes[1 << 16];
    uint32_t toks[1 << 16];
    st = s2_data_writer_append(w, &bos, 1, err);
    for (uint64_t off = 0; st == S2_OK && off < size; off += sizeof bytes) {
        size_t n = size - off < sizeof bytes ? (size_t)(size - off) : sizeof bytes;
        st = s2_pread_full(fd, path, bytes, n, off, err);
        for (size_t i = 0; st == S2_OK && i < n; i++)
            toks[i] = bytes[i] + S2_DATA_BYTE_OFFSET;
        if (st == S2_OK)
            st = s2_data_writer_append(w, toks, n, err);
    }
    close(fd);
    if (st == S2_OK)
        st = s2_data_writer_append(w, &eos, 1, err);
    if (st == S2_OK)
        st = s2_data_writer_end_doc(w, err);
    return st;
}

s2_status s2_data_from_text(const char *const *paths, int n, const char *out, s2_error *err)
{
    if (n <= 0 || !paths)
        return s2_error_set(err, S2_ERR_INVALID, "%s: no input files", out);
    s2_data_writer *w;
    s2_status st = s2_data_writer_open(out, 2, S2_DATA_BYTE_VOCAB, &w, err);
    if (st != S2_OK)
        return st;
    for (int i = 0; i < n; i++) {
        if ((st = append_text_file(w, paths[i], err)) != S2_OK) {
            s2_data_writer_abort(w);
            return st;
        }
    }
    return s2_data_writer_finish(w, err);
}

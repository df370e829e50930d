/* util.c — status strings, error records, file I/O, SHA-256 (nettle). */
#define _GNU_SOURCE
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <nettle/sha2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

_Static_assert(sizeof(struct sha256_ctx) <= sizeof(((s2_sha256_ctx *)0)->opaque.bytes),
               "s2_sha256_ctx too small for nettle's sha256_ctx");

const char *s2_status_to_string(s2_status st)
{
    switch (st) {
    case S2_OK: return "ok";
    case S2_ERR_IO: return "I/O error";
    case S2_ERR_PARSE: return "parse error";
    case S2_ERR_SPEC: return "spec error";
    case S2_ERR_INVALID: return "invalid argument";
    case S2_ERR_NOMEM: return "out of memory";
    case S2_ERR_NVRTC: return "NVRTC error";
    case S2_ERR_CACHE: return "cache error";
    case S2_ERR_CUDA: return "CUDA error";
    case S2_ERR_NO_DEVICE: return "no CUDA device";
    case S2_ERR_CHECK: return "check failed";
    }
    return "unknown status";
}

static char *vformat(const char *fmt, va_list ap)
{
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        return NULL;
    return s;
}

s2_status s2_error_set(s2_error *err, s2_status st, const char *fmt, ...)
{
    if (!err)
        return st;
    va_list ap;
    va_start(ap, fmt);
    char *m = vformat(fmt, ap);
    va_end(ap);
    free(err->msg);
    err->msg = m;
    err->status = st;
    return st;
}

void s2_error_prefix(s2_error *err, const char *fmt, ...)
{
    if (!err)
        return;
    va_list ap;
    va_start(ap, fmt);
    char *p = vformat(fmt, ap);
    va_end(ap);
    if (!p)
        return;
    char *m = NULL;
    if (asprintf(&m, "%s: %s", p, err->msg ? err->msg : s2_status_to_string(err->status)) >= 0) {
        free(err->msg);
        err->msg = m;
    }
    free(p);
}

void s2_error_clear(s2_error *err)
{
    if (!err)
        return;
    free(err->msg);
    err->msg = NULL;
    err->status = S2_OK;
}

s2_status s2_read_file(const char *path, char **data, size_t *size, s2_error *err)
{
    *data = NULL;
    if (size)
        *size = 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return s2_error_set(err, S2_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    if (!buf) {
        fclose(f);
        return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", path);
    }
    for (;;) {
        if (len == cap) {
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb) {
                free(buf);
                fclose(f);
                return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", path);
            }
            buf = nb;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return s2_error_set(err, S2_ERR_IO, "%s: read error", path);
    }
    buf[len] = '\0';
    *data = buf;
    if (size)
        *size = len;
    return S2_OK;
}

s2_status s2_write_file_atomic(const char *path, const void *data, size_t size, s2_error *err)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path) >= (int)sizeof tmp)
        return s2_error_set(err, S2_ERR_IO, "%s: path too long", path);
    int fd = mkstemp(tmp);
    if (fd < 0)
        return s2_error_set(err, S2_ERR_IO, "%s: cannot create temporary file: %s", path,
                            strerror(errno));
    const char *p = data;
    size_t left = size;
    while (left > 0) {
        ssize_t n = write(fd, p, left);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = errno;
            close(fd);
            unlink(tmp);
            return s2_error_set(err, S2_ERR_IO, "%s: write failed: %s", path, strerror(e));
        }
        p += n;
        left -= (size_t)n;
    }
    /* mkstemp creates 0600; published files are ordinary 0644 files. */
    if (fchmod(fd, 0644) != 0 || fsync(fd) != 0) {
        int e = errno;
        close(fd);
        unlink(tmp);
        return s2_error_set(err, S2_ERR_IO, "%s: cannot finish write: %s", path, strerror(e));
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return s2_error_set(err, S2_ERR_IO, "%s: cannot rename into place: %s", path, strerror(e));
    }
    return S2_OK;
}

s2_status s2_mkdir_p(const char *path, s2_error *err)
{
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return s2_error_set(err, S2_ERR_IO, "%s: path too long", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return s2_error_set(err, S2_ERR_IO, "%s: cannot create directory: %s", buf,
                                    strerror(errno));
            *p = c;
            if (c == '\0')
                break;
        }
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return s2_error_set(err, S2_ERR_IO, "%s: not a directory", path);
    return S2_OK;
}

void s2_sha256(const void *data, size_t size, uint8_t out[32])
{
    struct sha256_ctx c;
    sha256_init(&c);
    sha256_update(&c, size, data);
    sha256_digest(&c, 32, out);
}

void s2_hex(const uint8_t *bytes, size_t n, char *hex)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        hex[2 * i] = digits[bytes[i] >> 4];
        hex[2 * i + 1] = digits[bytes[i] & 15];
    }
    hex[2 * n] = '\0';
}

void s2_sha256_init(s2_sha256_ctx *ctx) { sha256_init((struct sha256_ctx *)ctx->opaque.bytes); }

void s2_sha256_update(s2_sha256_ctx *ctx, const void *data, size_t size)
{
    sha256_update((struct sha256_ctx *)ctx->opaque.bytes, size, data);
}

void s2_sha256_update_str(s2_sha256_ctx *ctx, const char *s)
{
    uint64_t n = s ? strlen(s) : 0;
    uint8_t len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (uint8_t)(n >> (8 * i));
    s2_sha256_update(ctx, len, sizeof len);
    if (n)
        s2_sha256_update(ctx, s, n);
}

void s2_sha256_final(s2_sha256_ctx *ctx, uint8_t out[32])
{
    sha256_digest((struct sha256_ctx *)ctx->opaque.bytes, 32, out);
}

void s2_buf_append(s2_buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) {
            b->oom = 1;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void s2_buf_printf(s2_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = vformat(fmt, ap);
    va_end(ap);
    if (!s) {
        b->oom = 1;
        return;
    }
    s2_buf_append(b, s, strlen(s));
    free(s);
}

void s2_buf_free(s2_buf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

int s2_cpu_count(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

uint64_t s2_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

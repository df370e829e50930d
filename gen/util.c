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

/* What a file that is not a regular file is, for messages. */
static const char *file_kind(mode_t mode)
{
    if (S_ISDIR(mode))
        return "is a directory";
    if (S_ISFIFO(mode))
        return "is a FIFO";
    if (S_ISCHR(mode))
        return "is a character device";
    if (S_ISBLK(mode))
        return "is a block device";
    if (S_ISSOCK(mode))
        return "is a socket";
    return "is not a regular file";
}

s2_status s2_open_regular(const char *path, int *fd, uint64_t *size, s2_error *err)
{
    *fd = -1;
    *size = 0;
    int f = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (f < 0)
        return s2_error_set(err, S2_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(f, &sb) != 0) {
        int e = errno;
        close(f);
        return s2_error_set(err, S2_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(f);
        return s2_error_set(err, S2_ERR_IO, "%s: %s, expected a regular file", path,
                            file_kind(sb.st_mode));
    }
    *fd = f;
    *size = (uint64_t)sb.st_size;
    return S2_OK;
}

s2_status s2_pread_full(int fd, const char *path, void *buf, size_t n, uint64_t off,
                        s2_error *err)
{
    char *p = buf;
    size_t done = 0;
    while (done < n) {
        /* at most 1 GiB a call: Linux reads no more than about 2 GiB at once */
        size_t chunk = n - done < ((size_t)1 << 30) ? n - done : (size_t)1 << 30;
        ssize_t k = pread(fd, p + done, chunk, (off_t)(off + done));
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return s2_error_set(err, S2_ERR_IO, "%s: read error at byte %llu: %s", path,
                                (unsigned long long)(off + done), strerror(errno));
        if (k == 0)
            return s2_error_set(err, S2_ERR_IO,
                                "%s: the file ended at byte %llu, %zu bytes short of the %zu "
                                "expected there (truncated while being read?)",
                                path, (unsigned long long)(off + done), n - done, n);
        done += (size_t)k;
    }
    return S2_OK;
}

s2_status s2_read_file_max(const char *path, size_t max_bytes, const char *what, char **data,
                           size_t *size, s2_error *err)
{
    *data = NULL;
    if (size)
        *size = 0;
    int fd;
    uint64_t len;
    s2_status st = s2_open_regular(path, &fd, &len, err);
    if (st)
        return st;
    if (len > max_bytes) {
        close(fd);
        return s2_error_set(err, S2_ERR_IO,
                            "%s: %llu bytes, over the %zu-byte limit for %s (%.1f MiB)", path,
                            (unsigned long long)len, max_bytes, what ? what : "a file read whole",
                            (double)max_bytes / (1 << 20));
    }
    char *buf = malloc((size_t)len + 1);
    if (!buf) {
        close(fd);
        return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory for %llu bytes", path,
                            (unsigned long long)len);
    }
    st = s2_pread_full(fd, path, buf, (size_t)len, 0, err);
    close(fd);
    if (st) {
        free(buf);
        return st;
    }
    buf[len] = '\0';
    *data = buf;
    if (size)
        *size = (size_t)len;
    return S2_OK;
}

s2_status s2_read_file(const char *path, char **data, size_t *size, s2_error *err)
{
    return s2_read_file_max(path, S2_MAX_FILE_BYTES, NULL, data, size, err);
}

s2_status s2_write_file_atomic(const char *path, const void *data, size_t size, s2_error *err)
{
    const s2_file_part part = {data, size};
    return s2_write_parts_atomic(path, &part, 1, err);
}

s2_status s2_write_parts_atomic(const char *path, const s2_file_part *parts, int n,
                                s2_error *err)
{
    if (n < 0 || (n > 0 && !parts))
        return s2_error_set(err, S2_ERR_INVALID, "%s: invalid arguments (%d parts)", path, n);
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.XXXXXX", path) >= (int)sizeof tmp)
        return s2_error_set(err, S2_ERR_IO, "%s: path too long", path);
    int fd = mkstemp(tmp);
    if (fd < 0)
        return s2_error_set(err, S2_ERR_IO, "%s: cannot create temporary file: %s", path,
                            strerror(errno));
    for (int i = 0; i < n; i++) {
        const char *p = parts[i].data;
        size_t left = parts[i].size;
        while (left > 0) {
            ssize_t w = write(fd, p, left);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0) {
                int e = errno;
                close(fd);
                unlink(tmp);
                return s2_error_set(err, S2_ERR_IO, "%s: write failed: %s", path, strerror(e));
            }
            p += w;
            left -= (size_t)w;
        }
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
    if (stat(path, &st) != 0)
        return s2_error_set(err, S2_ERR_IO, "%s: cannot create directory: %s", path,
                            strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return s2_error_set(err, S2_ERR_IO, "%s: exists and is not a directory", path);
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

#define SPLITMIX64_INCREMENT 0x9E3779B97F4A7C15ull

uint64_t s2_splitmix64_skip(uint64_t state, uint64_t draws)
{
    return state + draws * SPLITMIX64_INCREMENT;
}

uint64_t s2_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += SPLITMIX64_INCREMENT);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

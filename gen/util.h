/*
 * util.h — the pieces every layer of s2lora shares: status codes, the error
 * record that carries a message up to the CLI, whole-file I/O with atomic
 * writes, and SHA-256.
 *
 * Nothing here prints or exits; functions return a status and, on failure,
 * fill the caller's s2_error with a message that says where and what.
 */
#ifndef S2_UTIL_H
#define S2_UTIL_H

#include <stddef.h>
#include <stdint.h>

typedef enum s2_status {
    S2_OK = 0,
    S2_ERR_IO,        /* a file could not be read or written */
    S2_ERR_PARSE,     /* a file is not what its format says (YAML, JSON, safetensors) */
    S2_ERR_SPEC,      /* a spec is valid YAML but not a valid s2lora spec */
    S2_ERR_INVALID,   /* a caller passed a bad argument (shape, option, name) */
    S2_ERR_NOMEM,
    S2_ERR_NVRTC,     /* NVRTC refused the source or the options */
    S2_ERR_CACHE,     /* the kernel cache could not be used */
    S2_ERR_CUDA,      /* a CUDA runtime call failed */
    S2_ERR_NO_DEVICE, /* no CUDA device or no driver */
    S2_ERR_CHECK,     /* a result disagreed with its reference */
} s2_status;

/* A fixed name for each status ("S2_ERR_SPEC" -> "spec error"). Never NULL. */
const char *s2_status_to_string(s2_status st);

/*
 * The error record. msg is heap-allocated (NULL when there is none) and owned
 * by the record: s2_error_clear() frees it. A function that fails sets status
 * and msg and returns the same status. Passing a NULL record is allowed
 * everywhere; the message is then dropped.
 */
typedef struct s2_error {
    s2_status status;
    char *msg;
} s2_error;

s2_status s2_error_set(s2_error *err, s2_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prepends "prefix: " to the current message (for adding context on the way up). */
void s2_error_prefix(s2_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void s2_error_clear(s2_error *err);

/*
 * Size limits of the files read whole, by kind: a file over its limit is refused before any
 * byte is read (a path naming /dev/zero or a huge file must not exhaust memory).
 */
#define S2_MAX_SPEC_BYTES ((size_t)1 << 20)     /* a spec YAML: 1 MiB */
#define S2_MAX_JSON_BYTES ((size_t)16 << 20)    /* config.json, adapter and index JSON: 16 MiB */
#define S2_MAX_TUNE_DB_BYTES ((size_t)64 << 20) /* a tuning database (JSON lines): 64 MiB */
#define S2_MAX_FILE_BYTES ((size_t)64 << 20)    /* s2_read_file's limit */

/*
 * Opens path for reading (O_NONBLOCK, so a FIFO never blocks; O_CLOEXEC) and accepts only a
 * regular file: anything else is refused with a message naming the path and what it is ("is
 * a directory", "is a FIFO", "is a character device", ...). *fd is then the caller's to close;
 * *size is the file's size. Every failure says why (strerror).
 */
s2_status s2_open_regular(const char *path, int *fd, uint64_t *size, s2_error *err);

/* Reads exactly n bytes at offset off of the open file fd (path for messages); a file that
 * ends first, or a read error, is an S2_ERR_IO naming the path, the offset and the reason. */
s2_status s2_pread_full(int fd, const char *path, void *buf, size_t n, uint64_t off,
                        s2_error *err);

/*
 * Reads a whole regular file into a NUL-terminated heap buffer (*size, optional, excludes the
 * NUL). A file over max_bytes is refused naming its size, the limit and what (the kind of
 * file, "a spec", for the message). s2_read_file is the same with S2_MAX_FILE_BYTES.
 */
s2_status s2_read_file_max(const char *path, size_t max_bytes, const char *what, char **data,
                           size_t *size, s2_error *err);
s2_status s2_read_file(const char *path, char **data, size_t *size, s2_error *err);

/*
 * Writes data to path atomically: a temporary file in the same directory,
 * fsync, then rename(2). A reader sees the old file or the new one, never a
 * half-written one; two writers of the same path leave one of their files.
 */
s2_status s2_write_file_atomic(const char *path, const void *data, size_t size, s2_error *err);

/* The same for a file made of n parts written in order (a header and large buffers, without
 * copying them into one): the file is their concatenation. */
typedef struct {
    const void *data;
    size_t size;
} s2_file_part;
s2_status s2_write_parts_atomic(const char *path, const s2_file_part *parts, int n,
                                s2_error *err);

/* mkdir -p; existing directories are fine. */
s2_status s2_mkdir_p(const char *path, s2_error *err);

/* SHA-256 of a buffer; hex is 64 lowercase digits plus NUL. */
void s2_sha256(const void *data, size_t size, uint8_t out[32]);
void s2_hex(const uint8_t *bytes, size_t n, char *hex /* 2n+1 */);

/* Incremental SHA-256 for keys made of several parts. */
typedef struct s2_sha256_ctx {
    union {
        uint64_t align;
        uint8_t bytes[128]; /* a nettle struct sha256_ctx, opaque to callers */
    } opaque;
} s2_sha256_ctx;
void s2_sha256_init(s2_sha256_ctx *ctx);
void s2_sha256_update(s2_sha256_ctx *ctx, const void *data, size_t size);
/* Adds a length-prefixed string, so ("ab","c") and ("a","bc") differ. */
void s2_sha256_update_str(s2_sha256_ctx *ctx, const char *s);
void s2_sha256_final(s2_sha256_ctx *ctx, uint8_t out[32]);

/* A growable string for building sources and messages. */
typedef struct s2_buf {
    char *data; /* NUL-terminated once anything was appended */
    size_t len, cap;
    int oom;    /* set once an allocation failed; later appends do nothing */
} s2_buf;
void s2_buf_printf(s2_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void s2_buf_append(s2_buf *b, const char *s, size_t n);
void s2_buf_free(s2_buf *b);

/* splitmix64: the next value of a 64-bit state (advances *state). The one small seeded host
 * generator every reproducible stream here is drawn from (data order, initialisations, seeds). */
uint64_t s2_splitmix64(uint64_t *state);

/* The state after `draws` more draws of s2_splitmix64 from state (each draw adds a fixed
 * increment), so that a stream can be cut into parts drawn independently. */
uint64_t s2_splitmix64_skip(uint64_t state, uint64_t draws);

/* Number of online CPUs, at least 1. */
int s2_cpu_count(void);

#endif

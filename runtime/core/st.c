/*
 * st.c — safetensors reading and writing, and the bf16/fp16 <-> fp32 conversions.
 *
 * The reader reads the length field and the header first (a regular file
 * only, the header at most 100 MB) and checks every number in it, including
 * that the tensors account for every byte after it; only then does it read
 * the data the header declares, into one buffer, and form pointers into it.
 * So a hostile, truncated or endless file gives an error message, never an
 * out-of-bounds read or an unbounded one.
 *
 * Alignment: tensor data points straight into the read buffer. The buffer
 * itself comes from malloc, so a tensor is aligned to its element size when
 * the file's producer aligned it (both Python's safetensors and s2_st_write pad
 * the header to 8 bytes; Python then places each tensor on a multiple of its
 * element size, s2_st_write on a multiple of 8). The format
 * does not require that, so code that casts t->data to float * must either
 * check the alignment or copy with memcpy; s2_half_to_f32 and s2_f32_to_half
 * load and store through memcpy and accept unaligned pointers.
 */
#include "runtime/core/st.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Tensor data is used in place, and the format stores it little-endian. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "s2lora assumes a little-endian host");

/* Python's safetensors refuses headers over 100 MB; a larger length means a corrupt file. */
#define ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)
#define ST_ALIGN 8
#define ST_META_KEY "__metadata__"

static const struct {
    const char *name;
    size_t size;
} dtype_info[] = {
    [S2_ST_F32] = {"F32", 4}, [S2_ST_F16] = {"F16", 2}, [S2_ST_BF16] = {"BF16", 2},
    [S2_ST_F64] = {"F64", 8}, [S2_ST_I32] = {"I32", 4}, [S2_ST_I64] = {"I64", 8},
    [S2_ST_U8] = {"U8", 1},   [S2_ST_I8] = {"I8", 1},   [S2_ST_BOOL] = {"BOOL", 1},
};
#define N_DTYPES ((int)(sizeof dtype_info / sizeof dtype_info[0]))
#define DTYPE_LIST "F32, F16, BF16, F64, I32, I64, U8, I8, BOOL"

static int dtype_valid(s2_st_dtype d) { return (int)d >= 0 && (int)d < N_DTYPES; }

const char *s2_st_dtype_name(s2_st_dtype d) { return dtype_valid(d) ? dtype_info[d].name : "?"; }

size_t s2_st_dtype_size(s2_st_dtype d) { return dtype_valid(d) ? dtype_info[d].size : 0; }

/* -1 when a dimension is negative or the product overflows; validated tensors never do. */
int64_t s2_tensor_numel(const s2_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) {
        int64_t d = t->shape[i];
        if (d < 0)
            return -1;
        if (d == 0)
            n = 0;
        else if (n > INT64_MAX / d)
            return -1;
        else
            n *= d;
    }
    return n;
}

char *s2_tensor_shape_str(const s2_tensor *t, char *buf, size_t n)
{
    if (n == 0)
        return buf;
    size_t len = 0;
    buf[0] = '\0';
    len += (size_t)snprintf(buf, n, "[");
    for (int i = 0; i < t->ndim && len < n; i++)
        len += (size_t)snprintf(buf + len, n - len, "%s%lld", i ? ", " : "",
                                (long long)t->shape[i]);
    if (len < n)
        snprintf(buf + len, n - len, "]");
    return buf;
}

/* Bytes a tensor of this dtype and shape occupies; 0 with *ok = 0 on overflow or bad input. */
static uint64_t tensor_bytes(const s2_tensor *t, int *ok)
{
    int64_t numel = s2_tensor_numel(t);
    uint64_t size = s2_st_dtype_size(t->dtype);
    *ok = numel >= 0 && size > 0 && (uint64_t)numel <= UINT64_MAX / size;
    return *ok ? (uint64_t)numel * size : 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Reading                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* "an integer", "a string", ... for messages that say what was found instead. */
static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "a value";
}

static uint64_t load_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* What the checks of one file share: how long its data is and where each tensor starts. */
typedef struct st_ctx {
    const char *path;
    uint64_t data_size;
    uint64_t *begin; /* each tensor's data offset, by index into f->t */
    s2_error *err;
} st_ctx;

static s2_status parse_dtype(st_ctx *c, const char *name, json_t *v, s2_tensor *t)
{
    if (!v)
        return s2_error_set(c->err, S2_ERR_PARSE, "%s: tensor '%s': missing \"dtype\"", c->path,
                            name);
    if (!json_is_string(v))
        return s2_error_set(c->err, S2_ERR_PARSE,
                            "%s: tensor '%s': \"dtype\" is %s, expected a string such as \"BF16\"",
                            c->path, name, json_kind(v));
    const char *s = json_string_value(v);
    for (int d = 0; d < N_DTYPES; d++) {
        if (strcmp(s, dtype_info[d].name) == 0) {
            t->dtype = (s2_st_dtype)d;
            return S2_OK;
        }
    }
    return s2_error_set(c->err, S2_ERR_PARSE,
                        "%s: tensor '%s': unknown dtype \"%s\" (expected one of " DTYPE_LIST ")",
                        c->path, name, s);
}

static s2_status parse_shape(st_ctx *c, const char *name, json_t *v, s2_tensor *t)
{
    if (!v)
        return s2_error_set(c->err, S2_ERR_PARSE, "%s: tensor '%s': missing \"shape\"", c->path,
                            name);
    if (!json_is_array(v))
        return s2_error_set(c->err, S2_ERR_PARSE,
                            "%s: tensor '%s': \"shape\" is %s, expected an array of integers",
                            c->path, name, json_kind(v));
    size_t nd = json_array_size(v);
    if (nd > S2_ST_MAX_DIMS)
        return s2_error_set(c->err, S2_ERR_PARSE,
                            "%s: tensor '%s': shape has %zu dimensions, at most %d are supported",
                            c->path, name, nd, S2_ST_MAX_DIMS);
    t->ndim = (int)nd;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(v, i);
        if (!json_is_integer(d))
            return s2_error_set(c->err, S2_ERR_PARSE,
                                "%s: tensor '%s': shape[%zu] is %s, expected an integer",
                                c->path, name, i, json_kind(d));
        json_int_t x = json_integer_value(d);
        if (x < 0)
            return s2_error_set(c->err, S2_ERR_PARSE,
                                "%s: tensor '%s': shape[%zu] is %lld, dimensions must be >= 0",
                                c->path, name, i, (long long)x);
        t->shape[i] = (int64_t)x;
    }
    return S2_OK;
}

static s2_status parse_offsets(st_ctx *c, const char *name, json_t *v, uint64_t *begin,
                               uint64_t *end)
{
    if (!v)
        return s2_error_set(c->err, S2_ERR_PARSE, "%s: tensor '%s': missing \"data_offsets\"",
                            c->path, name);
    json_t *b = json_array_get(v, 0), *e = json_array_get(v, 1);
    if (!json_is_array(v) || json_array_size(v) != 2 || !json_is_integer(b) ||
        !json_is_integer(e) || json_integer_value(b) < 0 || json_integer_value(e) < 0)
        return s2_error_set(c->err, S2_ERR_PARSE,
                            "%s: tensor '%s': \"data_offsets\" must be [begin, end], two "
                            "non-negative integers",
                            c->path, name);
    long long lb = json_integer_value(b), le = json_integer_value(e);
    if (lb > le)
        return s2_error_set(c->err, S2_ERR_PARSE,
                            "%s: tensor '%s': data_offsets [%lld, %lld] have begin > end", c->path,
                            name, lb, le);
    if ((uint64_t)le > c->data_size)
        return s2_error_set(c->err, S2_ERR_PARSE,
                            "%s: tensor '%s': data_offsets [%lld, %lld] run past the end of the "
                            "data buffer (%llu bytes)",
                            c->path, name, lb, le, (unsigned long long)c->data_size);
    *begin = (uint64_t)lb;
    *end = (uint64_t)le;
    return S2_OK;
}

static s2_status parse_tensor(st_ctx *c, const char *name, json_t *entry, s2_tensor *t,
                              uint64_t *offset)
{
    if (!json_is_object(entry))
        return s2_error_set(c->err, S2_ERR_PARSE,
                            "%s: tensor '%s': entry is %s, expected an object with dtype, shape "
                            "and data_offsets",
                            c->path, name, json_kind(entry));
    uint64_t begin = 0, end = 0;
    s2_status st = parse_dtype(c, name, json_object_get(entry, "dtype"), t);
    if (!st)
        st = parse_shape(c, name, json_object_get(entry, "shape"), t);
    if (!st)
        st = parse_offsets(c, name, json_object_get(entry, "data_offsets"), &begin, &end);
    if (st)
        return st;
    int ok;
    uint64_t need = tensor_bytes(t, &ok);
    if (!ok || need != end - begin) {
        char shape[256];
        s2_tensor_shape_str(t, shape, sizeof shape);
        if (!ok)
            return s2_error_set(c->err, S2_ERR_PARSE,
                                "%s: tensor '%s': shape %s of %s is too large to address", c->path,
                                name, shape, s2_st_dtype_name(t->dtype));
        return s2_error_set(c->err, S2_ERR_PARSE,
                            "%s: tensor '%s': shape %s of %s needs %llu bytes, data_offsets give "
                            "%llu",
                            c->path, name, shape, s2_st_dtype_name(t->dtype),
                            (unsigned long long)need, (unsigned long long)(end - begin));
    }
    *offset = begin;
    t->nbytes = (size_t)need;
    return S2_OK;
}

static s2_status parse_metadata(st_ctx *c, json_t *meta, s2_st_file *f)
{
    if (!json_is_object(meta))
        return s2_error_set(c->err, S2_ERR_PARSE,
                            "%s: \"" ST_META_KEY "\" is %s, expected an object of strings",
                            c->path, json_kind(meta));
    size_t n = json_object_size(meta);
    f->meta_key = calloc(n ? n : 1, sizeof *f->meta_key);
    f->meta_val = calloc(n ? n : 1, sizeof *f->meta_val);
    if (!f->meta_key || !f->meta_val)
        return s2_error_set(c->err, S2_ERR_NOMEM, "%s: out of memory", c->path);
    const char *key;
    json_t *v;
    json_object_foreach(meta, key, v) {
        if (!json_is_string(v))
            return s2_error_set(c->err, S2_ERR_PARSE,
                                "%s: \"" ST_META_KEY "\" key '%s': value is %s, expected a "
                                "string",
                                c->path, key, json_kind(v));
        /* Counted before the copies, so s2_st_close frees whichever half was allocated. */
        int i = f->n_meta++;
        f->meta_key[i] = strdup(key);
        f->meta_val[i] = strdup(json_string_value(v));
        if (!f->meta_key[i] || !f->meta_val[i])
            return s2_error_set(c->err, S2_ERR_NOMEM, "%s: out of memory", c->path);
    }
    return S2_OK;
}


typedef struct span {
    uint64_t begin, end;
    int i;
} span;

static int span_cmp(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/*
 * Two tensors sharing bytes would alias each other's data. Empty tensors own
 * no bytes and may sit anywhere, as Python's writer places them.
 */
static s2_status check_overlaps(st_ctx *c, const s2_st_file *f)
{
    if (f->n < 2)
        return S2_OK;
    span *s = malloc((size_t)f->n * sizeof *s);
    if (!s)
        return s2_error_set(c->err, S2_ERR_NOMEM, "%s: out of memory", c->path);
    int m = 0;
    for (int i = 0; i < f->n; i++) {
        if (f->t[i].nbytes == 0)
            continue;
        s[m++] = (span){c->begin[i], c->begin[i] + f->t[i].nbytes, i};
    }
    qsort(s, (size_t)m, sizeof *s, span_cmp);
    s2_status st = S2_OK;
    for (int k = 1; k < m && !st; k++) {
        if (s[k].begin >= s[k - 1].end)
            continue;
        st = s2_error_set(c->err, S2_ERR_PARSE,
                          "%s: tensors '%s' (data_offsets [%llu, %llu]) and '%s' (data_offsets "
                          "[%llu, %llu]) overlap",
                          c->path, f->t[s[k - 1].i].name, (unsigned long long)s[k - 1].begin,
                          (unsigned long long)s[k - 1].end, f->t[s[k].i].name,
                          (unsigned long long)s[k].begin, (unsigned long long)s[k].end);
    }
    free(s);
    return st;
}

static s2_status parse_header(st_ctx *c, json_t *root, s2_st_file *f)
{
    if (!json_is_object(root))
        return s2_error_set(c->err, S2_ERR_PARSE,
                            "%s: header is %s, expected a JSON object mapping tensor names to "
                            "{dtype, shape, data_offsets}",
                            c->path, json_kind(root));
    size_t n = json_object_size(root);
    f->t = calloc(n ? n : 1, sizeof *f->t);
    c->begin = calloc(n ? n : 1, sizeof *c->begin);
    if (!f->t || !c->begin)
        return s2_error_set(c->err, S2_ERR_NOMEM, "%s: out of memory", c->path);
    /* Names with an embedded NUL (which C strings would cut short) never get here: jansson
     * refuses them while parsing. */
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (strcmp(key, ST_META_KEY) == 0)
            continue;
        s2_tensor *t = &f->t[f->n++];
        t->name = strdup(key);
        if (!t->name)
            return s2_error_set(c->err, S2_ERR_NOMEM, "%s: out of memory", c->path);
        s2_status st = parse_tensor(c, key, v, t, &c->begin[f->n - 1]);
        if (st)
            return st;
    }
    json_t *meta = json_object_get(root, ST_META_KEY);
    if (meta) {
        s2_status st = parse_metadata(c, meta, f);
        if (st)
            return st;
    }
    s2_status st = check_overlaps(c, f);
    if (st)
        return st;
    /* The tensors end where the file does, as Python's reader requires: the payload read is
     * bounded by what the header declares, and no byte of the file goes unaccounted for. */
    uint64_t end = 0;
    for (int i = 0; i < f->n; i++)
        if (c->begin[i] + f->t[i].nbytes > end)
            end = c->begin[i] + f->t[i].nbytes;
    if (end != c->data_size)
        return s2_error_set(c->err, S2_ERR_PARSE,
                            "%s: the tensors' data ends at data offset %llu, but the file has "
                            "%llu bytes of data after the header (%llu bytes that no tensor "
                            "holds; appended data?)",
                            c->path, (unsigned long long)end, (unsigned long long)c->data_size,
                            (unsigned long long)(c->data_size - end));
    return S2_OK;
}

/*
 * Reads the file at path: its length field and header, validated, and then (unless
 * header_only) the data the header declares, into one buffer that the tensors point into.
 */
static s2_status read_st(const char *path, s2_st_file *f, int header_only, s2_error *err)
{
    memset(f, 0, sizeof *f);
    int fd;
    uint64_t size;
    s2_status st = s2_open_regular(path, &fd, &size, err);
    if (st)
        return st;
    unsigned char len8[8];
    if (size < 8) {
        close(fd);
        return s2_error_set(err, S2_ERR_PARSE,
                            "%s: file is %llu bytes, too short for a safetensors file (expected "
                            "an 8-byte header length, then the JSON header)",
                            path, (unsigned long long)size);
    }
    if ((st = s2_pread_full(fd, path, len8, 8, 0, err))) {
        close(fd);
        return st;
    }
    uint64_t hlen = load_le64(len8);
    if (hlen > ST_MAX_HEADER) {
        close(fd);
        return s2_error_set(err, S2_ERR_PARSE,
                            "%s: header length %llu is over the 100 MB limit; not a safetensors "
                            "file?",
                            path, (unsigned long long)hlen);
    }
    if (hlen > size - 8) {
        close(fd);
        return s2_error_set(err, S2_ERR_PARSE,
                            "%s: header length %llu is larger than the %llu bytes after the "
                            "length field (truncated file?)",
                            path, (unsigned long long)hlen, (unsigned long long)(size - 8));
    }
    unsigned char *buf = malloc(8 + (size_t)hlen);
    if (!buf) {
        close(fd);
        return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory for the header", path);
    }
    memcpy(buf, len8, 8);
    if ((st = s2_pread_full(fd, path, buf + 8, (size_t)hlen, 8, err))) {
        free(buf);
        close(fd);
        return st;
    }
    json_error_t je;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        free(buf);
        close(fd);
        if (json_error_code(&je) == json_error_duplicate_key)
            return s2_error_set(err, S2_ERR_PARSE,
                                "%s: header JSON has a duplicate key (line %d, column %d): %s",
                                path, je.line, je.column, je.text);
        return s2_error_set(err, S2_ERR_PARSE,
                            "%s: header is not valid JSON (line %d, column %d): %s", path, je.line,
                            je.column, je.text);
    }
    st_ctx c = {path, size - 8 - hlen, NULL, err};
    st = parse_header(&c, root, f);
    json_decref(root);
    if (!st && !header_only) {
        /* The header accounts for every byte (parse_header), so this is the file's size. */
        unsigned char *whole = size <= SIZE_MAX ? realloc(buf, (size_t)size) : NULL;
        if (!whole)
            st = s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory for %llu bytes", path,
                              (unsigned long long)size);
        else
            buf = whole;
        if (!st)
            st = s2_pread_full(fd, path, buf + 8 + hlen, (size_t)(size - 8 - hlen), 8 + hlen, err);
        for (int i = 0; !st && i < f->n; i++)
            f->t[i].data = buf + 8 + hlen + c.begin[i];
    }
    close(fd);
    free(c.begin);
    if (!st && !header_only) {
        f->buf = buf;
    } else {
        free(buf);
        for (int i = 0; i < f->n; i++)
            f->t[i].data = NULL;
    }
    f->size = (size_t)size;
    if (st)
        s2_st_close(f);
    return st;
}

s2_status s2_st_read(const char *path, s2_st_file *f, s2_error *err)
{
    return read_st(path, f, 0, err);
}

s2_status s2_st_read_header(const char *path, s2_st_file *f, s2_error *err)
{
    return read_st(path, f, 1, err);
}

const s2_tensor *s2_st_find(const s2_st_file *f, const char *name)
{
    for (int i = 0; f && i < f->n; i++)
        if (strcmp(f->t[i].name, name) == 0)
            return &f->t[i];
    return NULL;
}

const char *s2_st_meta(const s2_st_file *f, const char *key)
{
    for (int i = 0; f && i < f->n_meta; i++)
        if (strcmp(f->meta_key[i], key) == 0)
            return f->meta_val[i];
    return NULL;
}

void s2_st_close(s2_st_file *f)
{
    if (!f)
        return;
    for (int i = 0; i < f->n; i++)
        free(f->t[i].name);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_key[i]);
        free(f->meta_val[i]);
    }
    free(f->t);
    free(f->meta_key);
    free(f->meta_val);
    free(f->buf);
    memset(f, 0, sizeof *f);
}

/* ------------------------------------------------------------------------------------------ */
/* Writing                                                                                    */
/* ------------------------------------------------------------------------------------------ */

/* JSON strings must be UTF-8; checked here so the message can say so (jansson only fails). */
static int utf8_valid(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned c = *p++;
        int more;
        uint32_t cp, min;
        if (c < 0x80)
            continue;
        if ((c & 0xE0) == 0xC0)
            more = 1, cp = c & 0x1F, min = 0x80;
        else if ((c & 0xF0) == 0xE0)
            more = 2, cp = c & 0x0F, min = 0x800;
        else if ((c & 0xF8) == 0xF0)
            more = 3, cp = c & 0x07, min = 0x10000;
        else
            return 0;
        for (int i = 0; i < more; i++, p++) {
            if ((*p & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (*p & 0x3F);
        }
        /* Overlong forms, UTF-16 surrogates and code points past U+10FFFF are not UTF-8. */
        if (cp < min || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
            return 0;
    }
    return 1;
}

static uint64_t align_up(uint64_t x) { return (x + ST_ALIGN - 1) & ~(uint64_t)(ST_ALIGN - 1); }

static s2_status check_write_tensor(const char *path, const s2_tensor *t, s2_error *err)
{
    if (!t->name)
        return s2_error_set(err, S2_ERR_INVALID, "%s: a tensor has no name", path);
    const char *name = t->name;
    if (strcmp(name, ST_META_KEY) == 0 || !utf8_valid(name))
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: tensor '%s': not a usable name (must be UTF-8 and not "
                            "\"" ST_META_KEY "\")",
                            path, name);
    if (!dtype_valid(t->dtype))
        return s2_error_set(err, S2_ERR_INVALID, "%s: tensor '%s': invalid dtype %d", path, name,
                            (int)t->dtype);
    if (t->ndim < 0 || t->ndim > S2_ST_MAX_DIMS)
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: tensor '%s': ndim %d is outside 0..%d", path, name, t->ndim,
                            S2_ST_MAX_DIMS);
    char shape[256];
    s2_tensor_shape_str(t, shape, sizeof shape);
    int ok;
    uint64_t need = tensor_bytes(t, &ok);
    if (!ok)
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: tensor '%s': shape %s has a negative dimension or is too large",
                            path, name, shape);
    if (need != t->nbytes)
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: tensor '%s': shape %s of %s needs %llu bytes, nbytes is %zu",
                            path, name, shape, s2_st_dtype_name(t->dtype),
                            (unsigned long long)need, t->nbytes);
    if (t->nbytes && !t->data)
        return s2_error_set(err, S2_ERR_INVALID, "%s: tensor '%s': data is NULL for %zu bytes",
                            path, name, t->nbytes);
    return S2_OK;
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The first name that occurs twice (in sorted order), or NULL; sorts names in place. */
static const char *find_duplicate(const char **names, int n)
{
    qsort(names, (size_t)n, sizeof *names, str_cmp);
    for (int i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0)
            return names[i];
    return NULL;
}

static s2_status check_unique_names(const char *path, const s2_tensor *t, int n, s2_error *err)
{
    const char **names = malloc((size_t)(n ? n : 1) * sizeof *names);
    if (!names)
        return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", path);
    for (int i = 0; i < n; i++)
        names[i] = t[i].name;
    const char *dup = find_duplicate(names, n);
    s2_status st = S2_OK;
    if (dup)
        st = s2_error_set(err, S2_ERR_INVALID, "%s: tensor '%s': name given twice", path, dup);
    free(names);
    return st;
}

/* Metadata keys, sorted; *sorted_out is a permutation of the key pointers. */
static s2_status check_meta(const char *path, const char *const *key, const char *const *val,
                            int n, const char ***sorted_out, s2_error *err)
{
    *sorted_out = NULL;
    for (int i = 0; i < n; i++) {
        if (!key[i] || !val[i])
            return s2_error_set(err, S2_ERR_INVALID, "%s: metadata entry %d has a NULL %s", path,
                                i, key[i] ? "value" : "key");
        if (!utf8_valid(key[i]) || !utf8_valid(val[i]))
            return s2_error_set(err, S2_ERR_INVALID,
                                "%s: metadata key '%s': key and value must be UTF-8", path,
                                key[i]);
    }
    const char **sorted = malloc((size_t)(n ? n : 1) * sizeof *sorted);
    if (!sorted)
        return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", path);
    if (n) /* key may be NULL when there is no metadata */
        memcpy(sorted, key, (size_t)n * sizeof *sorted);
    const char *dup = find_duplicate(sorted, n);
    if (dup) {
        free(sorted);
        return s2_error_set(err, S2_ERR_INVALID, "%s: metadata key '%s' given twice", path, dup);
    }
    *sorted_out = sorted;
    return S2_OK;
}

static const char *meta_value(const char *const *key, const char *const *val, int n,
                              const char *k)
{
    for (int i = 0; i < n; i++)
        if (key[i] == k)
            return val[i];
    return NULL;
}

/* One header entry; key order matches what Python's safetensors writes. */
static json_t *tensor_entry(const s2_tensor *t, uint64_t begin)
{
    json_t *shape = json_array();
    for (int d = 0; shape && d < t->ndim; d++)
        if (json_array_append_new(shape, json_integer((json_int_t)t->shape[d])) != 0) {
            json_decref(shape);
            shape = NULL;
        }
    json_t *e = json_pack("{s:s, s:o?, s:[I, I]}", "dtype", s2_st_dtype_name(t->dtype), "shape",
                          shape, "data_offsets", (json_int_t)begin,
                          (json_int_t)(begin + t->nbytes));
    /* "o?" would store a NULL shape as null; refuse instead. */
    if (e && !shape) {
        json_decref(e);
        return NULL;
    }
    return e;
}

/* The header JSON text (malloc'd, compact, keys in the given order); NULL when out of memory. */
static char *header_json(const s2_tensor *t, int n, const uint64_t *begin,
                         const char *const *meta_key, const char *const *meta_val, int n_meta,
                         const char *const *sorted_keys)
{
    json_t *root = json_object();
    if (!root)
        return NULL;
    int ok = 1;
    /* __metadata__ first, as Python writes it. */
    if (n_meta > 0) {
        json_t *meta = json_object();
        ok = meta && json_object_set_new(root, ST_META_KEY, meta) == 0;
        for (int i = 0; ok && i < n_meta; i++) {
            const char *v = meta_value(meta_key, meta_val, n_meta, sorted_keys[i]);
            ok = json_object_set_new(meta, sorted_keys[i], json_string(v)) == 0;
        }
    }
    for (int i = 0; ok && i < n; i++)
        ok = json_object_set_new(root, t[i].name, tensor_entry(&t[i], begin[i])) == 0;
    char *s = ok ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(root);
    return s;
}

/*
 * Lays the tensors out back to back in the given order. Python's safetensors (checked with
 * 0.8.0) rejects any gap between tensors ("invalid offset for tensor"), so the writer leaves
 * none: every file it writes loads there. A tensor is therefore aligned only when the sizes
 * before it are multiples of its alignment. Returns the data size, or 0 with !*ok.
 */
static uint64_t layout(const s2_tensor *t, int n, uint64_t *begin, int *ok)
{
    uint64_t end = 0;
    *ok = 1;
    for (int i = 0; i < n; i++) {
        begin[i] = end;
        if (t[i].nbytes > UINT64_MAX / 2 - begin[i]) {
            *ok = 0;
            return 0;
        }
        end = begin[i] + t[i].nbytes;
    }
    return end;
}

/* The tensors lie end to end in their order (layout): written from their own buffers. */
static s2_status write_file(const char *path, const char *json, const s2_tensor *t, int n,
                            uint64_t data_size, s2_error *err)
{
    uint64_t hlen = align_up(strlen(json));
    uint64_t total = 8 + hlen + data_size;
    if (total > SIZE_MAX)
        return s2_error_set(err, S2_ERR_INVALID, "%s: %llu bytes is too large to write", path,
                            (unsigned long long)total);
    unsigned char *head = malloc((size_t)(8 + hlen));
    s2_file_part *parts = malloc((size_t)(n + 1) * sizeof *parts);
    if (!head || !parts) {
        free(head);
        free(parts);
        return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory for the header", path);
    }
    for (int i = 0; i < 8; i++)
        head[i] = (unsigned char)(hlen >> (8 * i));
    /* Spaces after the JSON put the data start on an 8-byte boundary, as Python does. */
    memset(head + 8, ' ', (size_t)hlen);
    memcpy(head + 8, json, strlen(json));
    int np = 0;
    parts[np++] = (s2_file_part){head, (size_t)(8 + hlen)};
    for (int i = 0; i < n; i++)
        if (t[i].nbytes)
            parts[np++] = (s2_file_part){t[i].data, (size_t)t[i].nbytes};
    s2_status st = s2_write_parts_atomic(path, parts, np, err);
    free(parts);
    free(head);
    return st;
}

static s2_status check_write_args(const char *path, const s2_tensor *t, int n,
                                  const char *const *meta_key, const char *const *meta_val,
                                  int n_meta, s2_error *err)
{
    if (n < 0 || n_meta < 0 || (n > 0 && !t) || (n_meta > 0 && (!meta_key || !meta_val)))
        return s2_error_set(err, S2_ERR_INVALID,
                            "%s: invalid arguments (n %d, n_meta %d, or a NULL array)", path, n,
                            n_meta);
    for (int i = 0; i < n; i++) {
        s2_status st = check_write_tensor(path, &t[i], err);
        if (st)
            return st;
    }
    return check_unique_names(path, t, n, err);
}

s2_status s2_st_write(const char *path, const s2_tensor *t, int n, const char *const *meta_key,
                      const char *const *meta_val, int n_meta, s2_error *err)
{
    s2_status st = check_write_args(path, t, n, meta_key, meta_val, n_meta, err);
    if (st)
        return st;
    const char **sorted_keys;
    st = check_meta(path, meta_key, meta_val, n_meta, &sorted_keys, err);
    if (st)
        return st;
    uint64_t *begin = malloc((size_t)(n ? n : 1) * sizeof *begin);
    if (!begin) {
        st = s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", path);
        goto free_keys;
    }
    int ok;
    uint64_t data_size = layout(t, n, begin, &ok);
    if (!ok) {
        st = s2_error_set(err, S2_ERR_INVALID, "%s: tensors are too large to lay out", path);
        goto free_begin;
    }
    char *json = header_json(t, n, begin, meta_key, meta_val, n_meta, sorted_keys);
    if (!json) {
        st = s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory building the header", path);
        goto free_begin;
    }
    st = write_file(path, json, t, n, data_size, err);
    free(json);
free_begin:
    free(begin);
free_keys:
    free(sorted_keys);
    return st;
}

/* ------------------------------------------------------------------------------------------ */
/* bf16 / fp16 <-> fp32                                                                       */
/* ------------------------------------------------------------------------------------------ */

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* bf16 is the top half of an fp32, so widening is exact. */
float s2_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t s2_f32_to_bf16(float f)
{
    uint32_t u = f32_bits(f);
    /* Rounding a NaN could carry into the exponent and make inf; keep its top bits, quieted. */
    if ((u & 0x7FFFFFFF) > 0x7F800000)
        return (uint16_t)((u >> 16) | 0x0040);
    /* Round to nearest even: add just under half an ulp, plus one when the kept lsb is odd. */
    u += 0x7FFF + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

float s2_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    if (exp == 0x1F) /* inf, or NaN with its payload (the quiet bit lands on fp32's) */
        return bits_f32(sign | 0x7F800000 | (man << 13));
    if (exp == 0) { /* zero or subnormal: man * 2^-24, exact in fp32 */
        float v = (float)man * 0x1p-24f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t s2_f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7FFFFFFF;
    if (a > 0x7F800000) /* NaN: quiet, keep the top of the payload */
        return sign | 0x7E00 | (uint16_t)((a >> 13) & 0x3FF);
    /* 65520 is halfway between 65504 (odd mantissa) and 2^16: it and above round to inf. */
    if (a >= 0x477FF000)
        return sign | 0x7C00;
    if (a >= 0x38800000) { /* normal in fp16 (>= 2^-14) */
        uint32_t h = (a >> 13) - (112 << 10), rem = a & 0x1FFF;
        /* A carry out of the mantissa correctly bumps the exponent. */
        if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
            h++;
        return sign | (uint16_t)h;
    }
    /* Subnormal result: count units of 2^-24. value = m * 2^(e-150), so units = m >> (126-e). */
    uint32_t e = a >> 23, m = (a & 0x7FFFFF) | 0x800000;
    uint32_t shift = 126 - e;
    if (shift > 24) /* below 2^-25 (or an fp32 subnormal): rounds to zero */
        return sign;
    uint32_t h = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1)))
        h++; /* may reach 0x400, the smallest normal: that encoding is right too */
    return sign | (uint16_t)h;
}

/* memcpy per element: src/dst may point into a file buffer with no alignment guarantee. */
void s2_half_to_f32(s2_st_dtype dt, const uint16_t *src, float *dst, size_t n)
{
    const unsigned char *s = (const unsigned char *)src;
    unsigned char *d = (unsigned char *)dst;
    /* Other dtypes are a caller bug; dst is left as it was. */
    if (dt != S2_ST_BF16 && dt != S2_ST_F16)
        return;
    float (*cvt)(uint16_t) = dt == S2_ST_BF16 ? s2_bf16_to_f32 : s2_f16_to_f32;
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, s + 2 * i, 2);
        float f = cvt(h);
        memcpy(d + 4 * i, &f, 4);
    }
}

void s2_f32_to_half(s2_st_dtype dt, const float *src, uint16_t *dst, size_t n)
{
    const unsigned char *s = (const unsigned char *)src;
    unsigned char *d = (unsigned char *)dst;
    /* Other dtypes are a caller bug; dst is left as it was. */
    if (dt != S2_ST_BF16 && dt != S2_ST_F16)
        return;
    uint16_t (*cvt)(float) = dt == S2_ST_BF16 ? s2_f32_to_bf16 : s2_f32_to_f16;
    for (size_t i = 0; i < n; i++) {
        float f;
        memcpy(&f, s + 4 * i, 4);
        uint16_t h = cvt(f);
        memcpy(d + 2 * i, &h, 2);
    }
}

/*
 * test_st.c — safetensors reader/writer and the bf16/fp16 conversions.
 *
 * Each test gets its own directory under /tmp. Error tests hand-build files
 * byte by byte (8-byte length, JSON, data) so the reader sees exactly the
 * malformed input named in the test, and assert the phrase a user would need
 * plus the file and tensor the message must name.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>

#include <dirent.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/core/st.h"
#include "tmpdir.h"

static char dir[64];
static char path[256];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/s2_test_st.XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/t.safetensors", dir);
}

static void remove_dir(void) { s2_test_rmtree(dir); }

TestSuite(st, .init = make_dir, .fini = remove_dir);
TestSuite(cvt);

/* ---- helpers ----------------------------------------------------------------------------- */

static void write_bytes(const char *p, const void *b, size_t n)
{
    FILE *f = fopen(p, "wb");
    cr_assert_not_null(f);
    cr_assert_eq(fwrite(b, 1, n, f), n);
    fclose(f);
}

static unsigned char *slurp(const char *p, size_t *n)
{
    char *d;
    cr_assert_eq(s2_read_file(p, &d, n, NULL), S2_OK);
    return (unsigned char *)d;
}

/* A file of: u64 length of json, json, then data. */
static void write_st(const char *json, const void *data, size_t ndata)
{
    size_t hl = strlen(json), total = 8 + hl + ndata;
    unsigned char *b = calloc(1, total ? total : 1);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(b + 8, json, hl);
    if (ndata)
        memcpy(b + 8 + hl, data, ndata);
    write_bytes(path, b, total);
    free(b);
}

#define assert_has(msg, phrase)                                                                \
    cr_assert(msg && strstr(msg, phrase), "message lacks \"%s\": %s", phrase,                  \
              msg ? msg : "(null)")

/* Reads path, expects a parse error naming the file and every given phrase. */
static void expect_read_error(s2_status want, const char *const *phrases)
{
    s2_st_file f;
    s2_error err = {0};
    s2_status st = s2_st_read(path, &f, &err);
    cr_assert_eq(st, want, "status %d, message: %s", st, err.msg ? err.msg : "(null)");
    cr_assert_eq(err.status, want);
    assert_has(err.msg, path);
    for (const char *const *p = phrases; *p; p++)
        assert_has(err.msg, *p);
    /* A failed read leaves the file record zeroed, so closing it again is harmless. */
    cr_assert_eq(f.n, 0);
    cr_assert_null(f.buf);
    cr_assert_null(f.t);
    s2_st_close(&f);
    s2_error_clear(&err);
}

#define EXPECT_PARSE_ERROR(json, ndata, ...)                                                   \
    do {                                                                                       \
        static unsigned char zeros_[4096];                                                     \
        write_st(json, zeros_, ndata);                                                         \
        expect_read_error(S2_ERR_PARSE, (const char *const[]){__VA_ARGS__, NULL});             \
    } while (0)

static s2_tensor mk(const char *name, s2_st_dtype dt, int ndim, const int64_t *shape, void *data)
{
    s2_tensor t = {.name = (char *)name, .dtype = dt, .ndim = ndim, .data = data};
    memcpy(t.shape, shape, (size_t)ndim * sizeof *shape);
    t.nbytes = (size_t)s2_tensor_numel(&t) * s2_st_dtype_size(dt);
    return t;
}

static uint64_t header_len(const unsigned char *b)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | b[i];
    return v;
}

static int count_dir_entries(void)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

/* ---- small helpers of the API ------------------------------------------------------------ */

Test(st, dtype_names_and_sizes)
{
    static const struct {
        s2_st_dtype d;
        const char *name;
        size_t size;
    } want[] = {{S2_ST_F32, "F32", 4}, {S2_ST_F16, "F16", 2}, {S2_ST_BF16, "BF16", 2},
                {S2_ST_F64, "F64", 8}, {S2_ST_I32, "I32", 4}, {S2_ST_I64, "I64", 8},
                {S2_ST_U8, "U8", 1},   {S2_ST_I8, "I8", 1},   {S2_ST_BOOL, "BOOL", 1}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        cr_assert_str_eq(s2_st_dtype_name(want[i].d), want[i].name);
        cr_assert_eq(s2_st_dtype_size(want[i].d), want[i].size);
    }
    cr_assert_eq(s2_st_dtype_size((s2_st_dtype)99), 0);
    cr_assert_not_null(s2_st_dtype_name((s2_st_dtype)99));
}

Test(st, numel_and_shape_str)
{
    s2_tensor t = mk("x", S2_ST_F32, 3, (int64_t[]){4096, 32, 128}, NULL);
    char buf[64];
    cr_assert_eq(s2_tensor_numel(&t), 4096 * 32 * 128);
    cr_assert_str_eq(s2_tensor_shape_str(&t, buf, sizeof buf), "[4096, 32, 128]");
    /* Too small a buffer truncates but stays terminated. */
    cr_assert_str_eq(s2_tensor_shape_str(&t, buf, 5), "[409");
    cr_assert_str_eq(s2_tensor_shape_str(&t, buf, 1), "");

    s2_tensor scalar = mk("s", S2_ST_F32, 0, (int64_t[]){0}, NULL);
    cr_assert_eq(s2_tensor_numel(&scalar), 1);
    cr_assert_str_eq(s2_tensor_shape_str(&scalar, buf, sizeof buf), "[]");

    s2_tensor empty = mk("e", S2_ST_F32, 2, (int64_t[]){0, 7}, NULL);
    cr_assert_eq(s2_tensor_numel(&empty), 0);

    s2_tensor neg = {.ndim = 1, .shape = {-1}};
    cr_assert_eq(s2_tensor_numel(&neg), -1);
}

Test(st, close_null_and_zeroed)
{
    s2_st_close(NULL);
    s2_st_file f;
    memset(&f, 0, sizeof f);
    s2_st_close(&f);
    cr_assert_null(s2_st_find(&f, "x"));
    cr_assert_null(s2_st_meta(&f, "x"));
}

/* ---- round trips ------------------------------------------------------------------------- */

Test(st, round_trip_every_dtype)
{
    double f64[3] = {1.5, -2.25, 1e300};
    float f32[2][3] = {{1, 2, 3}, {-4, 5.5f, INFINITY}};
    uint16_t f16[3] = {0x3C00, 0xC100, 0x7BFF};
    uint16_t bf16[5] = {0x3F80, 0xC020, 0x7F80, 0x0001, 0x8000}; /* odd count: 10 bytes */
    int32_t i32[4] = {1, -2, INT32_MAX, INT32_MIN};
    int64_t i64[2] = {INT64_MAX, INT64_MIN};
    uint8_t u8[3] = {0, 128, 255};
    int8_t i8[1] = {-128};
    uint8_t b[7] = {1, 0, 1, 1, 0, 0, 1};
    float scalar = 3.25f;
    s2_tensor in[] = {
        mk("f64", S2_ST_F64, 1, (int64_t[]){3}, f64),
        mk("bf16.odd", S2_ST_BF16, 1, (int64_t[]){5}, bf16),
        mk("f32", S2_ST_F32, 2, (int64_t[]){2, 3}, f32),
        mk("u8", S2_ST_U8, 1, (int64_t[]){3}, u8),
        mk("f16", S2_ST_F16, 3, (int64_t[]){1, 3, 1}, f16),
        mk("empty", S2_ST_BF16, 2, (int64_t[]){0, 4}, NULL),
        mk("i32", S2_ST_I32, 2, (int64_t[]){2, 2}, i32),
        mk("scalar", S2_ST_F32, 0, (int64_t[]){0}, &scalar),
        mk("i64", S2_ST_I64, 1, (int64_t[]){2}, i64),
        mk("i8", S2_ST_I8, 1, (int64_t[]){1}, i8),
        mk("model.layers.0.self_attn.q_proj.lora_A.weight", S2_ST_BOOL, 8,
           (int64_t[]){1, 1, 7, 1, 1, 1, 1, 1}, b),
    };
    int n = (int)(sizeof in / sizeof in[0]);
    s2_error err = {0};
    cr_assert_eq(s2_st_write(path, in, n, NULL, NULL, 0, &err), S2_OK, "%s", err.msg);

    s2_st_file f;
    cr_assert_eq(s2_st_read(path, &f, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(f.n, n);
    cr_assert_eq(f.n_meta, 0);
    const unsigned char *base = f.buf;
    uint64_t hl = header_len(base);
    cr_assert_eq(hl % 8, 0, "header length %llu not 8-aligned", (unsigned long long)hl);
    const unsigned char *data0 = base + 8 + hl;
    size_t prev_end = 0;
    for (int i = 0; i < n; i++) {
        const s2_tensor *t = &f.t[i];
        cr_assert_str_eq(t->name, in[i].name, "tensors keep the given order");
        cr_assert_eq(t->dtype, in[i].dtype);
        cr_assert_eq(t->ndim, in[i].ndim);
        for (int d = 0; d < t->ndim; d++)
            cr_assert_eq(t->shape[d], in[i].shape[d]);
        cr_assert_eq(t->nbytes, in[i].nbytes);
        if (t->nbytes)
            cr_assert_eq(memcmp(t->data, in[i].data, t->nbytes), 0, "data of %s", t->name);
        size_t off = (size_t)((const unsigned char *)t->data - data0);
        /* Back to back: Python's reader refuses gaps between tensors. */
        cr_assert_eq(off, prev_end, "%s at offset %zu, previous tensor ends at %zu", t->name, off,
                     prev_end);
        prev_end = off + t->nbytes;
        cr_assert_eq(s2_st_find(&f, in[i].name), t);
    }
    /* No padding after the last tensor: the file ends where its data ends. */
    cr_assert_eq(f.size, 8 + hl + prev_end);
    cr_assert_null(s2_st_find(&f, "nope"));
    s2_st_close(&f);
    cr_assert_null(f.buf);
}

Test(st, metadata_round_trip_sorted)
{
    float x[2] = {1, 2};
    s2_tensor t = mk("x", S2_ST_F32, 1, (int64_t[]){2}, x);
    const char *keys[] = {"zeta", "format", "alpha", "unicode"};
    const char *vals[] = {"last", "pt", "", "\xc3\xa9t\xc3\xa9 \"quoted\" \\ \n"};
    s2_error err = {0};
    cr_assert_eq(s2_st_write(path, &t, 1, keys, vals, 4, &err), S2_OK, "%s", err.msg);

    s2_st_file f;
    cr_assert_eq(s2_st_read(path, &f, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(f.n_meta, 4);
    for (int i = 0; i < 4; i++)
        cr_assert_str_eq(s2_st_meta(&f, keys[i]), vals[i]);
    cr_assert_null(s2_st_meta(&f, "missing"));
    /* Keys come back sorted: that is the order the header holds them in. */
    cr_assert_str_eq(f.meta_key[0], "alpha");
    cr_assert_str_eq(f.meta_key[1], "format");
    cr_assert_str_eq(f.meta_key[2], "unicode");
    cr_assert_str_eq(f.meta_key[3], "zeta");
    const char *json = (const char *)f.buf + 8;
    const char *m = strstr(json, "\"__metadata__\"");
    cr_assert(m && strstr(json, "\"alpha\"") < strstr(json, "\"zeta\""));
    cr_assert(m < strstr(json, "\"x\""), "__metadata__ first, as Python writes it");
    s2_st_close(&f);
}

Test(st, empty_file_is_python_identical)
{
    /* Python: serialize({}) == b"\x08\0\0\0\0\0\0\0{}      " */
    s2_error err = {0};
    cr_assert_eq(s2_st_write(path, NULL, 0, NULL, NULL, 0, &err), S2_OK, "%s", err.msg);
    size_t n;
    unsigned char *b = slurp(path, &n);
    static const unsigned char want[] = {8,   0,   0,   0,   0,   0,   0,   0,
                                         '{', '}', ' ', ' ', ' ', ' ', ' ', ' '};
    cr_assert_eq(n, sizeof want);
    cr_assert_eq(memcmp(b, want, n), 0);
    free(b);
    s2_st_file f;
    cr_assert_eq(s2_st_read(path, &f, &err), S2_OK);
    cr_assert_eq(f.n, 0);
    s2_st_close(&f);
}

Test(st, single_tensor_is_python_identical)
{
    /* Python's own serialization test: {"attn.0": F32 [1,2,3] = 0..5}, a 64-byte header. */
    float x[6] = {0, 1, 2, 3, 4, 5};
    s2_tensor t = mk("attn.0", S2_ST_F32, 3, (int64_t[]){1, 2, 3}, x);
    s2_error err = {0};
    cr_assert_eq(s2_st_write(path, &t, 1, NULL, NULL, 0, &err), S2_OK, "%s", err.msg);
    size_t n;
    unsigned char *b = slurp(path, &n);
    const char *json = "{\"attn.0\":{\"dtype\":\"F32\",\"shape\":[1,2,3],\"data_offsets\":[0,24]}}";
    cr_assert_eq(header_len(b), 64);
    cr_assert_eq(n, 8 + 64 + 24);
    cr_assert_eq(memcmp(b + 8, json, strlen(json)), 0, "header: %.64s", (char *)b + 8);
    cr_assert_eq(memcmp(b + 8 + 64, x, 24), 0);
    free(b);
}

/*
 * Python's layout rules: __metadata__ first, tensors sorted by descending
 * dtype alignment then name, laid out back to back (no gaps), header padded
 * with spaces to 8 bytes. Built here by hand, byte for byte.
 */
Test(st, reads_python_layout)
{
    const char *json = "{\"__metadata__\":{\"format\":\"pt\"},"
                       "\"w\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]},"
                       "\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[8,20]},"
                       "\"b\":{\"dtype\":\"BF16\",\"shape\":[1,1],\"data_offsets\":[20,22]},"
                       "\"e\":{\"dtype\":\"F16\",\"shape\":[0],\"data_offsets\":[22,22]},"
                       "\"m\":{\"dtype\":\"BOOL\",\"shape\":[],\"data_offsets\":[22,23]}}";
    size_t jl = strlen(json), hl = (jl + 7) / 8 * 8;
    unsigned char file[1024] = {0};
    for (int i = 0; i < 8; i++)
        file[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memset(file + 8, ' ', hl);
    memcpy(file + 8, json, jl);
    unsigned char *d = file + 8 + hl;
    double w = -0.5;
    float a[3] = {1, 2, 3};
    memcpy(d, &w, 8);
    memcpy(d + 8, a, 12);
    d[20] = 0x80, d[21] = 0x3F; /* bf16 1.0, little-endian */
    d[22] = 1;
    write_bytes(path, file, 8 + hl + 23);

    s2_st_file f;
    s2_error err = {0};
    cr_assert_eq(s2_st_read(path, &f, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(f.n, 5);
    cr_assert_str_eq(f.t[0].name, "w", "header order is kept");
    cr_assert_str_eq(s2_st_meta(&f, "format"), "pt");
    const s2_tensor *t = s2_st_find(&f, "a");
    cr_assert_eq(t->dtype, S2_ST_F32);
    cr_assert_eq(t->nbytes, 12);
    float got[3];
    memcpy(got, t->data, 12);
    cr_assert_eq(got[2], 3.0f);
    t = s2_st_find(&f, "b");
    uint16_t h;
    memcpy(&h, t->data, 2);
    cr_assert_eq(s2_bf16_to_f32(h), 1.0f);
    t = s2_st_find(&f, "e");
    cr_assert_eq(t->nbytes, 0);
    cr_assert_eq(t->ndim, 1);
    t = s2_st_find(&f, "m");
    cr_assert_eq(t->ndim, 0);
    cr_assert_eq(*(const uint8_t *)t->data, 1);
    s2_st_close(&f);
}

/* The exact bytes safetensors 0.8.0 wrote for save_file({...}, metadata={"format": "np"}). */
Test(st, reads_bytes_written_by_python)
{
    const char *json =
        "{\"__metadata__\":{\"format\":\"np\"},"
        "\"w\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]},"
        "\"s\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[16,20]},"
        "\"e\":{\"dtype\":\"I32\",\"shape\":[0,3],\"data_offsets\":[20,20]},"
        "\"q\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[20,28]},"
        "\"u\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[28,31]}}    ";
    static const unsigned char data[31] = {
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xf8, 0x3f, /* w: 1.5, -2.0 */
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0,
        0x00, 0x00, 0x50, 0x40,                         /* s: 3.25 */
        0x00, 0x3c, 0x00, 0xc1, 0xff, 0x7b, 0x00, 0x00, /* q: 1, -2.5, 65504, 0 */
        0x07, 0x08, 0x09};                              /* u */
    cr_assert_eq(strlen(json), 312);
    write_st(json, data, sizeof data);

    s2_st_file f;
    s2_error err = {0};
    cr_assert_eq(s2_st_read(path, &f, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(f.size, 351);
    cr_assert_eq(f.n, 5);
    cr_assert_str_eq(s2_st_meta(&f, "format"), "np");
    double w[2];
    memcpy(w, s2_st_find(&f, "w")->data, sizeof w);
    cr_assert(w[0] == 1.5 && w[1] == -2.0);
    const s2_tensor *sc = s2_st_find(&f, "s");
    cr_assert_eq(sc->ndim, 0);
    cr_assert_eq(*(const float *)sc->data, 3.25f);
    const s2_tensor *e = s2_st_find(&f, "e");
    cr_assert(e->ndim == 2 && e->shape[0] == 0 && e->shape[1] == 3 && e->nbytes == 0);
    float q[4];
    s2_half_to_f32(S2_ST_F16, s2_st_find(&f, "q")->data, q, 4);
    cr_assert(q[0] == 1 && q[1] == -2.5f && q[2] == 65504 && q[3] == 0);
    const s2_tensor *u = s2_st_find(&f, "u");
    cr_assert_eq(memcmp(u->data, "\x07\x08\x09", 3), 0);
    s2_st_close(&f);
}

Test(st, reads_pretty_unordered_header)
{
    /* Whitespace in the JSON and offsets out of header order are both valid. */
    const char *ok = "{\n  \"late\" : { \"data_offsets\" : [ 4, 8 ], \"shape\" : [ 2 ],"
                     " \"dtype\" : \"BF16\" },\n  \"early\": {\"dtype\":\"U8\",\"shape\":[4],"
                     "\"data_offsets\":[0,4]}, \"extra\": {\"dtype\":\"U8\",\"shape\":[0],"
                     "\"data_offsets\":[2,2], \"ignored\": true}   }   ";
    unsigned char data[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    write_st(ok, data, 8);
    s2_st_file f;
    s2_error err = {0};
    cr_assert_eq(s2_st_read(path, &f, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(f.n, 3);
    cr_assert_str_eq(f.t[0].name, "late");
    cr_assert_eq(((const unsigned char *)f.t[0].data)[0], 5);
    s2_st_close(&f);
}

/* ---- reader errors ----------------------------------------------------------------------- */

Test(st, err_missing_file)
{
    expect_read_error(S2_ERR_IO, (const char *const[]){"cannot open", NULL});
}

Test(st, err_file_too_short)
{
    for (size_t n = 0; n < 8; n++) {
        write_bytes(path, "\x10\0\0\0\0\0\0", n);
        expect_read_error(S2_ERR_PARSE, (const char *const[]){"too short", "8-byte", NULL});
    }
}

Test(st, err_header_length_past_end)
{
    unsigned char b[16] = {100, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
    write_bytes(path, b, 10);
    expect_read_error(S2_ERR_PARSE, (const char *const[]){"header length 100", "larger", NULL});
}

Test(st, err_header_length_absurd)
{
    unsigned char b[16] = {0, 0, 0, 0, 0, 1, 0, 0, '{', '}'};
    write_bytes(path, b, 10);
    expect_read_error(S2_ERR_PARSE, (const char *const[]){"100 MB", NULL});
    memset(b, 0xFF, 8);
    write_bytes(path, b, 10);
    expect_read_error(S2_ERR_PARSE, (const char *const[]){"100 MB", NULL});
}

Test(st, err_invalid_json)
{
    EXPECT_PARSE_ERROR("{\"q\": {\"dtype\": \"F32\",\n \"shape\": [1,}", 0, "not valid JSON",
                       "line 2");
    EXPECT_PARSE_ERROR("", 0, "not valid JSON");
    EXPECT_PARSE_ERROR("{} x", 0, "not valid JSON");
    EXPECT_PARSE_ERROR("{\"\xff\": 1}", 0, "not valid JSON");
}

Test(st, err_not_object)
{
    EXPECT_PARSE_ERROR("[1, 2]", 0, "header is an array", "expected a JSON object");
}

Test(st, err_entry_types)
{
    EXPECT_PARSE_ERROR("{\"q\": 5}", 0, "tensor 'q'", "entry is an integer");
    EXPECT_PARSE_ERROR("{\"q\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, "tensor 'q'",
                       "missing \"dtype\"");
    EXPECT_PARSE_ERROR("{\"q\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4, "tensor 'q'",
                       "missing \"shape\"");
    EXPECT_PARSE_ERROR("{\"q\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4, "tensor 'q'",
                       "missing \"data_offsets\"");
    EXPECT_PARSE_ERROR("{\"q\": {\"dtype\": 7, \"shape\": [1], \"data_offsets\": [0, 4]}}", 4,
                       "tensor 'q'", "\"dtype\" is an integer");
    EXPECT_PARSE_ERROR("{\"q\": {\"dtype\": \"F32\", \"shape\": 1, \"data_offsets\": [0, 4]}}", 4,
                       "tensor 'q'", "\"shape\" is an integer");
    EXPECT_PARSE_ERROR("{\"q\": {\"dtype\": \"F32\", \"shape\": [1.0], \"data_offsets\": [0, 4]}}",
                       4, "tensor 'q'", "shape[0] is a real number");
    EXPECT_PARSE_ERROR("{\"q\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4, 8]}}",
                       8, "tensor 'q'", "[begin, end]");
    EXPECT_PARSE_ERROR("{\"q\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": \"0-4\"}}",
                       4, "tensor 'q'", "[begin, end]");
    EXPECT_PARSE_ERROR("{\"q\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}",
                       4, "tensor 'q'", "non-negative");
}

Test(st, err_unknown_dtype)
{
    EXPECT_PARSE_ERROR("{\"q\": {\"dtype\": \"F8_E4M3\", \"shape\": [1], "
                       "\"data_offsets\": [0, 1]}}",
                       1, "tensor 'q'", "unknown dtype \"F8_E4M3\"",
                       "F32, F16, BF16, F64, I32, I64, U8, I8, BOOL");
    EXPECT_PARSE_ERROR("{\"q\": {\"dtype\": \"bf16\", \"shape\": [1], \"data_offsets\": [0, 2]}}",
                       2, "tensor 'q'", "unknown dtype \"bf16\"");
}

Test(st, err_bad_dims)
{
    EXPECT_PARSE_ERROR("{\"q\": {\"dtype\": \"F32\", \"shape\": [2, -1], "
                       "\"data_offsets\": [0, 0]}}",
                       0, "tensor 'q'", "shape[1] is -1", ">= 0");
    EXPECT_PARSE_ERROR("{\"q\": {\"dtype\": \"U8\", \"shape\": [1,1,1,1,1,1,1,1,1], "
                       "\"data_offsets\": [0, 1]}}",
                       1, "tensor 'q'", "9 dimensions", "at most 8");
    EXPECT_PARSE_ERROR("{\"q\": {\"dtype\": \"F64\", \"shape\": [4294967296, 4294967296], "
                       "\"data_offsets\": [0, 8]}}",
                       8, "tensor 'q'", "too large");
}

Test(st, err_offsets)
{
    EXPECT_PARSE_ERROR("{\"q\": {\"dtype\": \"U8\", \"shape\": [0], \"data_offsets\": [4, 2]}}", 8,
                       "tensor 'q'", "[4, 2]", "begin > end");
    EXPECT_PARSE_ERROR("{\"q\": {\"dtype\": \"U8\", \"shape\": [8], \"data_offsets\": [4, 12]}}", 8,
                       "tensor 'q'", "[4, 12]", "past the end", "8 bytes");
    EXPECT_PARSE_ERROR("{\"q\": {\"dtype\": \"U8\", \"shape\": [0], \"data_offsets\": [9, 9]}}", 8,
                       "tensor 'q'", "past the end");
}

Test(st, err_size_mismatch)
{
    EXPECT_PARSE_ERROR("{\"q\": {\"dtype\": \"BF16\", \"shape\": [4, 2, 8], "
                       "\"data_offsets\": [0, 120]}}",
                       128,
                       "tensor 'q': shape [4, 2, 8] of BF16 needs 128 bytes, data_offsets give 120");
    EXPECT_PARSE_ERROR("{\"s\": {\"dtype\": \"F32\", \"shape\": [], \"data_offsets\": [0, 0]}}", 0,
                       "tensor 's': shape [] of F32 needs 4 bytes, data_offsets give 0");
}

Test(st, err_overlap)
{
    EXPECT_PARSE_ERROR("{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]},"
                       " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [12, 20]}}",
                       24, "overlap", "'a'", "'b'", "[12, 20]");
    /* Listed in the other order, and an identical range. */
    EXPECT_PARSE_ERROR("{\"b\": {\"dtype\": \"U8\", \"shape\": [4], \"data_offsets\": [0, 4]},"
                       " \"a\": {\"dtype\": \"I32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
                       4, "overlap", "'a'", "'b'");
}

Test(st, empty_tensor_inside_another_is_not_overlap)
{
    write_st("{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]},"
             " \"z\": {\"dtype\": \"F32\", \"shape\": [0, 3], \"data_offsets\": [8, 8]}}",
             (unsigned char[16]){0}, 16);
    s2_st_file f;
    s2_error err = {0};
    cr_assert_eq(s2_st_read(path, &f, &err), S2_OK, "%s", err.msg);
    s2_st_close(&f);
}

Test(st, err_metadata)
{
    EXPECT_PARSE_ERROR("{\"__metadata__\": {\"format\": \"pt\", \"k\": 3}}", 0, "__metadata__",
                       "key 'k'", "expected a string");
    EXPECT_PARSE_ERROR("{\"__metadata__\": [\"pt\"]}", 0, "__metadata__", "is an array",
                       "object of strings");
}

Test(st, err_duplicate_name)
{
    EXPECT_PARSE_ERROR("{\"q\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]},"
                       " \"q\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [1, 2]}}",
                       2, "duplicate", "q");
}

Test(st, err_name_with_nul)
{
    EXPECT_PARSE_ERROR("{\"q\\u0000x\": {\"dtype\": \"U8\", \"shape\": [1], "
                       "\"data_offsets\": [0, 1]}}",
                       1, "not valid JSON", "NUL");
}

/* Every prefix of a valid file is invalid (the data runs to the end), and none crashes. */
Test(st, truncated_file_every_cut)
{
    float x[5] = {1, 2, 3, 4, 5};
    uint16_t y[3] = {1, 2, 3};
    s2_tensor t[] = {mk("x", S2_ST_F32, 1, (int64_t[]){5}, x),
                     mk("e", S2_ST_I64, 1, (int64_t[]){0}, NULL),
                     mk("y", S2_ST_BF16, 2, (int64_t[]){3, 1}, y)};
    const char *k[] = {"format"}, *v[] = {"pt"};
    s2_error err = {0};
    cr_assert_eq(s2_st_write(path, t, 3, k, v, 1, &err), S2_OK, "%s", err.msg);
    size_t n;
    unsigned char *full = slurp(path, &n);
    for (size_t cut = 0; cut < n; cut++) {
        write_bytes(path, full, cut);
        s2_st_file f;
        s2_status st = s2_st_read(path, &f, &err);
        cr_assert_eq(st, S2_ERR_PARSE, "cut at %zu of %zu read back as valid", cut, n);
        cr_assert_eq(f.n, 0);
        cr_assert_null(f.buf);
    }
    s2_error_clear(&err);
    free(full);
}

/* Bytes after the last tensor's data: refused as Python's reader refuses them, so a read is
 * bounded by what the header declares. A sparse file of 3 GiB with a one-tensor header is
 * refused at once, without reading (or allocating) its gigabytes. */
Test(st, err_trailing_bytes, .timeout = 10)
{
    float x[2] = {1, 2};
    s2_tensor t = mk("x", S2_ST_F32, 1, (int64_t[]){2}, x);
    s2_error err = {0};
    cr_assert_eq(s2_st_write(path, &t, 1, NULL, NULL, 0, &err), S2_OK, "%s", err.msg);
    size_t n;
    unsigned char *full = slurp(path, &n);
    unsigned char *more = calloc(1, n + 3);
    memcpy(more, full, n);
    write_bytes(path, more, n + 3);
    expect_read_error(S2_ERR_PARSE, (const char *const[]){"ends at data offset 8",
                                                          "3 bytes that no tensor holds", NULL});
    write_bytes(path, full, n);
    cr_assert_eq(truncate(path, (off_t)3 << 30), 0);
    expect_read_error(S2_ERR_PARSE, (const char *const[]){"ends at data offset 8", NULL});
    s2_st_file f;
    cr_assert_eq(s2_st_read_header(path, &f, &err), S2_ERR_PARSE);
    free(more);
    free(full);
    s2_error_clear(&err);
}

/* Only a regular file is read: a FIFO without a writer is refused at once (the timeout fails
 * the test if opening it blocks), a device and a directory say what they are. */
Test(st, err_special_files, .timeout = 10)
{
    char fifo[300];
    snprintf(fifo, sizeof fifo, "%s/fifo", dir);
    cr_assert_eq(mkfifo(fifo, 0600), 0);
    const char *paths[] = {fifo, "/dev/zero", dir};
    const char *what[] = {"is a FIFO", "is a character device", "is a directory"};
    for (int i = 0; i < 3; i++) {
        s2_st_file f;
        s2_error err = {0};
        cr_assert_eq(s2_st_read(paths[i], &f, &err), S2_ERR_IO);
        cr_expect(strstr(err.msg, paths[i]) && strstr(err.msg, what[i]), "%s", err.msg);
        cr_assert_eq(s2_st_read_header(paths[i], &f, &err), S2_ERR_IO);
        cr_expect(strstr(err.msg, what[i]), "%s", err.msg);
        s2_error_clear(&err);
    }
}

/* s2_st_read_header: the same names, dtypes, shapes and metadata as a whole read, no data;
 * and the same refusals (a header's offsets past the file's end). */
Test(st, read_header_only)
{
    float x[6] = {1, 2, 3, 4, 5, 6};
    uint16_t y[2] = {7, 8};
    s2_tensor t[] = {mk("x", S2_ST_F32, 2, (int64_t[]){2, 3}, x),
                     mk("y", S2_ST_BF16, 1, (int64_t[]){2}, y)};
    const char *k[] = {"format"}, *v[] = {"pt"};
    s2_error err = {0};
    cr_assert_eq(s2_st_write(path, t, 2, k, v, 1, &err), S2_OK, "%s", err.msg);
    s2_st_file whole, head;
    cr_assert_eq(s2_st_read(path, &whole, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(s2_st_read_header(path, &head, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(head.n, whole.n);
    cr_assert_null(head.buf);
    cr_assert_eq(head.size, whole.size, "the file's size");
    for (int i = 0; i < head.n; i++) {
        cr_expect_str_eq(head.t[i].name, whole.t[i].name);
        cr_expect_eq(head.t[i].dtype, whole.t[i].dtype);
        cr_expect_eq(head.t[i].ndim, whole.t[i].ndim);
        cr_expect_eq(head.t[i].shape[0], whole.t[i].shape[0]);
        cr_expect_eq(head.t[i].nbytes, whole.t[i].nbytes);
        cr_expect_null(head.t[i].data);
        cr_expect_not_null(whole.t[i].data);
    }
    cr_expect_str_eq(s2_st_meta(&head, "format"), "pt");
    s2_st_close(&whole);
    s2_st_close(&head);
    size_t n;
    unsigned char *full = slurp(path, &n);
    write_bytes(path, full, n - 1);
    cr_assert_eq(s2_st_read_header(path, &head, &err), S2_ERR_PARSE);
    cr_expect(strstr(err.msg, "run past the end"), "%s", err.msg);
    free(full);
    s2_error_clear(&err);
}

/* Corrupting any header byte gives a clean result either way: a valid file or an error. */
Test(st, corrupted_header_bytes_never_crash)
{
    float x[2] = {1, 2};
    s2_tensor t[] = {mk("x", S2_ST_F32, 1, (int64_t[]){2}, x),
                     mk("y", S2_ST_U8, 2, (int64_t[]){1, 3}, (void *)"abc")};
    s2_error err = {0};
    cr_assert_eq(s2_st_write(path, t, 2, NULL, NULL, 0, &err), S2_OK);
    size_t n;
    unsigned char *full = slurp(path, &n);
    static const unsigned char subst[] = {0, '"', '-', '9', '[', '{', ']', 0xFF, ' ', 'x'};
    size_t hend = 8 + header_len(full);
    for (size_t i = 0; i < hend; i++) {
        for (size_t s = 0; s < sizeof subst; s++) {
            unsigned char save = full[i];
            full[i] = subst[s];
            write_bytes(path, full, n);
            s2_st_file f;
            if (s2_st_read(path, &f, &err) == S2_OK) {
                for (int k = 0; k < f.n; k++)
                    cr_assert((unsigned char *)f.t[k].data + f.t[k].nbytes <=
                              (unsigned char *)f.buf + f.size);
                s2_st_close(&f);
            } else {
                cr_assert_not_null(err.msg);
            }
            full[i] = save;
        }
    }
    s2_error_clear(&err);
    free(full);
}

/* ---- writer ------------------------------------------------------------------------------ */

Test(st, atomic_write_leaves_no_temp_files)
{
    float x[3] = {1, 2, 3};
    s2_tensor t = mk("x", S2_ST_F32, 1, (int64_t[]){3}, x);
    s2_error err = {0};
    for (int i = 0; i < 3; i++) {
        x[0] = (float)i;
        cr_assert_eq(s2_st_write(path, &t, 1, NULL, NULL, 0, &err), S2_OK, "%s", err.msg);
    }
    cr_assert_eq(count_dir_entries(), 1);
    s2_st_file f;
    cr_assert_eq(s2_st_read(path, &f, &err), S2_OK);
    cr_assert_eq(((float *)f.t[0].data)[0], 2.0f, "the last write wins");
    s2_st_close(&f);

    /* A directory that does not exist: an I/O error and nothing created. */
    char bad[300];
    snprintf(bad, sizeof bad, "%s/no/such/dir/t.safetensors", dir);
    cr_assert_eq(s2_st_write(bad, &t, 1, NULL, NULL, 0, &err), S2_ERR_IO);
    assert_has(err.msg, bad);
    cr_assert_eq(count_dir_entries(), 1);
    s2_error_clear(&err);
}

/* Writes that must fail, with a phrase and the tensor's name, and leave no file behind. */
static void expect_write_error(const s2_tensor *t, int n, const char *const *k,
                               const char *const *v, int nm, const char *p1, const char *p2)
{
    s2_error err = {0};
    cr_assert_eq(s2_st_write(path, t, n, k, v, nm, &err), S2_ERR_INVALID, "wrote: %s", p1);
    assert_has(err.msg, path);
    assert_has(err.msg, p1);
    if (p2)
        assert_has(err.msg, p2);
    cr_assert_eq(count_dir_entries(), 0);
    s2_error_clear(&err);
}

Test(st, writer_rejects_bad_input)
{
    float x[4] = {0};
    s2_tensor ok = mk("ok", S2_ST_F32, 1, (int64_t[]){4}, x);

    s2_tensor dup[] = {ok, mk("dupe", S2_ST_F32, 1, (int64_t[]){1}, x),
                       mk("dupe", S2_ST_F32, 1, (int64_t[]){2}, x)};
    expect_write_error(dup, 3, NULL, NULL, 0, "tensor 'dupe'", "twice");

    s2_tensor null_data[] = {ok, mk("nd", S2_ST_F32, 1, (int64_t[]){4}, NULL)};
    expect_write_error(null_data, 2, NULL, NULL, 0, "tensor 'nd'", "NULL");

    s2_tensor wrong = mk("w", S2_ST_BF16, 2, (int64_t[]){3, 2}, x);
    wrong.nbytes = 10;
    expect_write_error(&wrong, 1, NULL, NULL, 0, "tensor 'w': shape [3, 2] of BF16 needs 12 bytes",
                       "nbytes is 10");

    s2_tensor neg = ok;
    neg.name = "neg";
    neg.shape[0] = -4;
    expect_write_error(&neg, 1, NULL, NULL, 0, "tensor 'neg'", "negative");

    s2_tensor many = ok;
    many.name = "many";
    many.ndim = 9;
    expect_write_error(&many, 1, NULL, NULL, 0, "tensor 'many'", "ndim 9");

    s2_tensor bad_dt = ok;
    bad_dt.name = "dt";
    bad_dt.dtype = (s2_st_dtype)42;
    expect_write_error(&bad_dt, 1, NULL, NULL, 0, "tensor 'dt'", "dtype");

    s2_tensor meta_name = ok;
    meta_name.name = "__metadata__";
    expect_write_error(&meta_name, 1, NULL, NULL, 0, "tensor '__metadata__'", "name");

    s2_tensor bad_utf8 = ok;
    bad_utf8.name = "q\xc0\xaf";
    expect_write_error(&bad_utf8, 1, NULL, NULL, 0, "UTF-8", NULL);

    s2_tensor no_name = ok;
    no_name.name = NULL;
    expect_write_error(&no_name, 1, NULL, NULL, 0, "no name", NULL);

    const char *k[] = {"a", "b", "a"}, *v[] = {"1", "2", "3"};
    expect_write_error(&ok, 1, k, v, 3, "metadata key 'a'", "twice");
    const char *vn[] = {"1", NULL};
    expect_write_error(&ok, 1, k, vn, 2, "metadata", "NULL value");

    expect_write_error(NULL, 1, NULL, NULL, 0, "invalid arguments", NULL);
}

/* ---- conversions ------------------------------------------------------------------------- */

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static int f16_is_nan(uint16_t h) { return (h & 0x7C00) == 0x7C00 && (h & 0x3FF); }
static int bf16_is_nan(uint16_t h) { return (h & 0x7F80) == 0x7F80 && (h & 0x7F); }

Test(cvt, bf16_exact_values)
{
    cr_assert_eq(s2_f32_to_bf16(1.0f), 0x3F80);
    cr_assert_eq(s2_f32_to_bf16(-2.5f), 0xC020);
    cr_assert_eq(s2_f32_to_bf16(0.0f), 0x0000);
    cr_assert_eq(s2_f32_to_bf16(-0.0f), 0x8000);
    cr_assert_eq(s2_f32_to_bf16(INFINITY), 0x7F80);
    cr_assert_eq(s2_f32_to_bf16(-INFINITY), 0xFF80);
    cr_assert_eq(s2_bf16_to_f32(0x3F80), 1.0f);
    cr_assert_eq(s2_bf16_to_f32(0xC020), -2.5f);
    cr_assert_eq(bits(s2_bf16_to_f32(0x8000)), 0x80000000u);
    cr_assert(isinf(s2_bf16_to_f32(0xFF80)) && s2_bf16_to_f32(0xFF80) < 0);
    /* Smallest subnormal bf16 is 2^-133. */
    cr_assert_eq(s2_bf16_to_f32(0x0001), ldexpf(1, -133));
    cr_assert_eq(s2_f32_to_bf16(ldexpf(1, -133)), 0x0001);
    /* Largest finite bf16, and fp32 max rounding past it to inf. */
    cr_assert_eq(s2_bf16_to_f32(0x7F7F), from_bits(0x7F7F0000));
    cr_assert_eq(s2_f32_to_bf16(from_bits(0x7F7F7FFF)), 0x7F7F);
    cr_assert_eq(s2_f32_to_bf16(FLT_MAX), 0x7F80);
}

Test(cvt, bf16_nan_stays_quiet_nan)
{
    /* Payloads that rounding would carry into the exponent (inf) must stay NaN. */
    static const uint32_t nans[] = {0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FFFFFFF, 0xFF80FFFF,
                                    0x7F808000, 0x7FBFFFFF};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
        uint16_t h = s2_f32_to_bf16(from_bits(nans[i]));
        cr_assert(bf16_is_nan(h), "0x%08x -> 0x%04x", nans[i], h);
        cr_assert(h & 0x0040, "quiet bit set for 0x%08x", nans[i]);
        cr_assert_eq(h & 0x8000, (nans[i] >> 16) & 0x8000, "sign kept");
    }
    cr_assert(isnan(s2_bf16_to_f32(0x7FC0)));
    cr_assert(isnan(s2_bf16_to_f32(0x7F81)));
}

Test(cvt, bf16_round_to_nearest_even)
{
    cr_assert_eq(s2_f32_to_bf16(from_bits(0x3F808000)), 0x3F80); /* tie, even stays */
    cr_assert_eq(s2_f32_to_bf16(from_bits(0x3F818000)), 0x3F82); /* tie, odd rounds up */
    cr_assert_eq(s2_f32_to_bf16(from_bits(0x3F808001)), 0x3F81); /* just above the tie */
    cr_assert_eq(s2_f32_to_bf16(from_bits(0x3F817FFF)), 0x3F81); /* just below */
    cr_assert_eq(s2_f32_to_bf16(from_bits(0xBF818000)), 0xBF82); /* negative ties too */
    cr_assert_eq(s2_f32_to_bf16(from_bits(0x3F7F8000)), 0x3F80); /* carry into exponent */
    cr_assert_eq(s2_f32_to_bf16(from_bits(0x00008000)), 0x0000); /* subnormal tie to 0 */
    cr_assert_eq(s2_f32_to_bf16(from_bits(0x00018000)), 0x0002);
}

Test(cvt, f16_exact_values)
{
    static const struct {
        float f;
        uint16_t h;
    } v[] = {
        {1.0f, 0x3C00},         {-2.5f, 0xC100},          {65504.0f, 0x7BFF}, {-65504.0f, 0xFBFF},
        {0.0f, 0x0000},         {0x1p-24f, 0x0001},       {-0x1p-24f, 0x8001},
        {1023 * 0x1p-24f, 0x03FF}, {0x1p-14f, 0x0400},   {0.5f, 0x3800},
        {INFINITY, 0x7C00},     {-INFINITY, 0xFC00},      {0.333251953125f, 0x3555},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        cr_assert_eq(s2_f32_to_f16(v[i].f), v[i].h, "%g -> 0x%04x, want 0x%04x", v[i].f,
                     s2_f32_to_f16(v[i].f), v[i].h);
        cr_assert_eq(bits(s2_f16_to_f32(v[i].h)), bits(v[i].f), "0x%04x", v[i].h);
    }
    cr_assert_eq(s2_f32_to_f16(-0.0f), 0x8000);
    cr_assert_eq(bits(s2_f16_to_f32(0x8000)), 0x80000000u);
    cr_assert(isnan(s2_f16_to_f32(0x7E00)));
    cr_assert(isnan(s2_f16_to_f32(0x7C01)));
    uint16_t h = s2_f32_to_f16(NAN);
    cr_assert(f16_is_nan(h) && (h & 0x0200));
    h = s2_f32_to_f16(from_bits(0xFF800001)); /* signalling NaN, payload only in low bits */
    cr_assert(f16_is_nan(h) && (h & 0x0200) && (h & 0x8000), "0x%04x", h);
}

Test(cvt, f16_overflow_and_underflow)
{
    cr_assert_eq(s2_f32_to_f16(65519.0f), 0x7BFF);         /* below the halfway point */
    cr_assert_eq(s2_f32_to_f16(65520.0f), 0x7C00);         /* tie: 65504 is odd, goes to inf */
    cr_assert_eq(s2_f32_to_f16(1e6f), 0x7C00);
    cr_assert_eq(s2_f32_to_f16(-FLT_MAX), 0xFC00);
    cr_assert_eq(s2_f32_to_f16(0x1p-25f), 0x0000);         /* tie between 0 and 2^-24: even */
    cr_assert_eq(s2_f32_to_f16(-0x1p-25f), 0x8000);
    cr_assert_eq(s2_f32_to_f16(from_bits(0x33000001)), 0x0001); /* just above: rounds up */
    cr_assert_eq(s2_f32_to_f16(0x1p-26f), 0x0000);
    cr_assert_eq(s2_f32_to_f16(FLT_MIN), 0x0000);
    cr_assert_eq(s2_f32_to_f16(from_bits(0x00000001)), 0x0000); /* fp32 subnormal */
}

Test(cvt, f16_round_to_nearest_even)
{
    cr_assert_eq(s2_f32_to_f16(1.0f + 0x1p-11f), 0x3C00);     /* tie, even stays */
    cr_assert_eq(s2_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3C02); /* tie, odd rounds up */
    cr_assert_eq(s2_f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f), 0x3C01);
    cr_assert_eq(s2_f32_to_f16(2.0f - 0x1p-12f), 0x4000);     /* carry into exponent */
    cr_assert_eq(s2_f32_to_f16(3 * 0x1p-25f), 0x0002);        /* subnormal 1.5 units -> 2 */
    cr_assert_eq(s2_f32_to_f16(5 * 0x1p-25f), 0x0002);        /* 2.5 units -> 2 */
    cr_assert_eq(s2_f32_to_f16(2047 * 0x1p-25f), 0x0400);     /* 1023.5 units -> normal */
    cr_assert_eq(s2_f32_to_f16(-(2045 * 0x1p-25f)), 0x83FE);  /* 1022.5 units -> 1022 */
}

/* Every fp16 pattern: the value matches its definition, and f16 -> f32 -> f16 is identity. */
Test(cvt, f16_sweep_all_patterns)
{
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t h = (uint16_t)i;
        float f = s2_f16_to_f32(h);
        int e = (h >> 10) & 0x1F, m = h & 0x3FF;
        double want = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
        if (h & 0x8000)
            want = -want;
        if (e == 31) {
            cr_assert(m ? isnan(f) : isinf(f), "0x%04x", h);
            cr_assert_eq(signbit(f) != 0, (h & 0x8000) != 0);
        } else {
            cr_assert_eq((double)f, want, "0x%04x -> %a, want %a", h, f, want);
        }
        uint16_t back = s2_f32_to_f16(f);
        if (f16_is_nan(h))
            cr_assert_eq(back, h | 0x0200, "NaN 0x%04x -> 0x%04x (payload kept, quieted)", h,
                         back);
        else
            cr_assert_eq(back, h, "0x%04x -> %a -> 0x%04x", h, f, back);
    }
}

Test(cvt, bf16_sweep_all_patterns)
{
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t h = (uint16_t)i;
        float f = s2_bf16_to_f32(h);
        cr_assert_eq(bits(f), (uint32_t)h << 16);
        uint16_t back = s2_f32_to_bf16(f);
        if (bf16_is_nan(h))
            cr_assert_eq(back, h | 0x0040, "NaN 0x%04x -> 0x%04x", h, back);
        else
            cr_assert_eq(back, h, "0x%04x -> 0x%04x", h, back);
    }
}

/*
 * fp32 -> half against an independent reference: the two halves bracketing
 * the value, chosen by distance in double with ties to the even one.
 */
static uint16_t ref_round(float f, float (*to_f32)(uint16_t), uint16_t (*trunc)(uint32_t))
{
    uint32_t u = bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint16_t lo = trunc(u & 0x7FFFFFFF), hi = (uint16_t)(lo + 1);
    double a = fabs((double)f), vlo = to_f32(lo), vhi = to_f32(hi);
    if (isinf(vhi)) /* one ulp past the largest finite, as if the exponent range continued */
        vhi = 2 * vlo - to_f32((uint16_t)(lo - 1));
    double dlo = a - vlo, dhi = vhi - a;
    uint16_t r = dlo < dhi ? lo : dhi < dlo ? hi : (lo & 1) ? hi : lo;
    return sign | r;
}

/* Largest half not above |x| (x a non-negative fp32 bit pattern). */
static uint16_t bf16_trunc(uint32_t a) { return (uint16_t)(a >> 16); }

static uint16_t f16_trunc(uint32_t a)
{
    /* Search: the halves are ordered like their bit patterns for non-negative values. */
    float x = from_bits(a);
    uint16_t lo = 0, hi = 0x7C00;
    while (hi - lo > 1) {
        uint16_t mid = (uint16_t)((lo + hi) / 2);
        if (s2_f16_to_f32(mid) <= x)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

Test(cvt, f32_to_half_matches_reference)
{
    /* A stride through all fp32 patterns plus dense runs around each half's midpoints. */
    for (uint64_t u = 0; u <= 0xFFFFFFFFu; u += 9973) {
        float f = from_bits((uint32_t)u);
        if (!isfinite(f)) /* NaN and inf have their own tests */
            continue;
        uint16_t b = s2_f32_to_bf16(f), rb = ref_round(f, s2_bf16_to_f32, bf16_trunc);
        cr_assert_eq(b, rb, "bf16 0x%08x: 0x%04x, want 0x%04x", (uint32_t)u, b, rb);
        if (fabsf(f) >= 65520.0f)
            cr_assert_eq(s2_f32_to_f16(f) & 0x7FFF, 0x7C00, "0x%08x overflows", (uint32_t)u);
        else {
            uint16_t h = s2_f32_to_f16(f), rh = ref_round(f, s2_f16_to_f32, f16_trunc);
            cr_assert_eq(h, rh, "f16 0x%08x: 0x%04x, want 0x%04x", (uint32_t)u, h, rh);
        }
    }
    for (uint32_t h = 0; h < 0x7BFF; h++) {
        double mid = ((double)s2_f16_to_f32((uint16_t)h) + s2_f16_to_f32((uint16_t)(h + 1))) / 2;
        uint32_t c = bits((float)mid);
        for (uint32_t u = c - 3; u <= c + 3; u++) {
            float f = from_bits(u);
            uint16_t got = s2_f32_to_f16(f), want = ref_round(f, s2_f16_to_f32, f16_trunc);
            cr_assert_eq(got, want, "f16 0x%08x: 0x%04x, want 0x%04x", u, got, want);
        }
    }
}

#ifdef __FLT16_MAX__
/* The compiler's own _Float16 conversion (IEEE, round to nearest even) as a second oracle. */
Test(cvt, f32_to_f16_matches_compiler)
{
    for (uint64_t u = 0; u <= 0xFFFFFFFFu; u += 257) {
        float f = from_bits((uint32_t)u);
        volatile _Float16 hv = (_Float16)f;
        _Float16 hc = hv;
        uint16_t want;
        memcpy(&want, &hc, 2);
        uint16_t got = s2_f32_to_f16(f);
        if (isnan(f))
            cr_assert(f16_is_nan(got));
        else
            cr_assert_eq(got, want, "0x%08x: 0x%04x, want 0x%04x", (uint32_t)u, got, want);
    }
}
#endif

Test(cvt, array_forms_unaligned)
{
    /* Odd offsets: the array forms must not assume alignment (file data need not be aligned). */
    static const float src[5] = {1.0f, -2.5f, 65504.0f, 0x1p-24f, INFINITY};
    unsigned char fbuf[4 * 5 + 1], hbuf[2 * 5 + 1], back[4 * 5 + 1];
    memcpy(fbuf + 1, src, sizeof src);

    s2_f32_to_half(S2_ST_F16, (const float *)(fbuf + 1), (uint16_t *)(hbuf + 1), 5);
    uint16_t h[5];
    memcpy(h, hbuf + 1, sizeof h);
    cr_assert_eq(h[0], 0x3C00);
    cr_assert_eq(h[1], 0xC100);
    cr_assert_eq(h[2], 0x7BFF);
    cr_assert_eq(h[3], 0x0001);
    cr_assert_eq(h[4], 0x7C00);
    s2_half_to_f32(S2_ST_F16, (const uint16_t *)(hbuf + 1), (float *)(back + 1), 5);
    cr_assert_eq(memcmp(back + 1, src, sizeof src), 0);

    s2_f32_to_half(S2_ST_BF16, (const float *)(fbuf + 1), (uint16_t *)(hbuf + 1), 5);
    memcpy(h, hbuf + 1, sizeof h);
    cr_assert_eq(h[0], 0x3F80);
    cr_assert_eq(h[1], 0xC020);
    cr_assert_eq(h[2], s2_f32_to_bf16(65504.0f));
    s2_half_to_f32(S2_ST_BF16, (const uint16_t *)(hbuf + 1), (float *)(back + 1), 5);
    float f[5];
    memcpy(f, back + 1, sizeof f);
    cr_assert_eq(f[1], -2.5f);
    cr_assert_eq(f[2], 65536.0f); /* 65504 is not a bf16; its nearest is 2^16 */

    /* Not a half dtype: a caller bug, and nothing is written. */
    float untouched[2] = {7, 7};
    s2_half_to_f32(S2_ST_F32, (const uint16_t *)hbuf, untouched, 2);
    cr_assert_eq(untouched[0], 7.0f);
    uint16_t hu[2] = {9, 9};
    s2_f32_to_half(S2_ST_I8, src, hu, 2);
    cr_assert_eq(hu[0], 9);
    s2_half_to_f32(S2_ST_F16, NULL, NULL, 0);
}

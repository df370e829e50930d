/*
 * fuzz_st.c — the safetensors reader (runtime/core/st.c) on arbitrary bytes: the file is written to
 * the scratch directory (tmpfs under run.sh) and read the way the trainer reads it, whole
 * (s2_st_read) and header only (s2_st_read_header).
 *
 * Beyond crashes and sanitizer reports (every byte of every tensor is read, so a span outside
 * the buffer shows) it holds the reader's promises: a failure names the file and leaves a zeroed
 * record; the two reads accept the same files and agree on every tensor; an accepted file's
 * tensors lie inside the file with nbytes = elements * dtype size; and what the writer makes of
 * an accepted file reads back as the same tensors and metadata.
 */
#include "fuzz.h"

#include "runtime/core/st.h"

static void check_tensors(const s2_st_file *f)
{
    const uint8_t *lo = f->buf, *hi = lo + f->size;
    for (int i = 0; i < f->n; i++) {
        const s2_tensor *t = &f->t[i];
        int64_t numel = s2_tensor_numel(t);
        FUZZ_CHECK(numel >= 0, "tensor %s: %lld elements", t->name, (long long)numel);
        FUZZ_CHECK(t->nbytes == (size_t)numel * s2_st_dtype_size(t->dtype),
                   "tensor %s: %zu bytes for %lld elements of %s", t->name, t->nbytes,
                   (long long)numel, s2_st_dtype_name(t->dtype));
        if (t->nbytes) {
            const uint8_t *d = t->data;
            FUZZ_CHECK(d >= lo && d + t->nbytes <= hi, "tensor %s outside the file", t->name);
            unsigned sum = 0;
            for (size_t k = 0; k < t->nbytes; k++)
                sum += d[k];
            (void)sum;
        }
        char shape[256];
        s2_tensor_shape_str(t, shape, sizeof shape);
        FUZZ_CHECK(s2_st_find(f, t->name) == t, "tensor %s not found by name", t->name);
        if ((t->dtype == S2_ST_F16 || t->dtype == S2_ST_BF16) && numel > 0 && numel <= 4096) {
            float out[4096];
            s2_half_to_f32(t->dtype, t->data, out, (size_t)numel);
        }
    }
    for (int i = 0; i < f->n_meta; i++)
        FUZZ_CHECK(s2_st_meta(f, f->meta_key[i]) == f->meta_val[i], "metadata %s",
                   f->meta_key[i]);
}

/* Writes f's tensors and metadata and reads them back: the same names, shapes and bytes. */
static void round_trip(const s2_st_file *f)
{
    char path[4096];
    fuzz_path("rt.safetensors", path);
    s2_error err = {0};
    s2_status st = s2_st_write(path, f->t, f->n, (const char *const *)f->meta_key,
                               (const char *const *)f->meta_val, f->n_meta, &err);
    FUZZ_CHECK(st == S2_OK, "an accepted file does not write back: %s", err.msg);
    s2_st_file g;
    st = s2_st_read(path, &g, &err);
    FUZZ_CHECK(st == S2_OK, "a written file does not read back: %s", err.msg);
    FUZZ_CHECK(g.n == f->n && g.n_meta == f->n_meta, "%d tensors, %d metadata read back as %d, %d",
               f->n, f->n_meta, g.n, g.n_meta);
    for (int i = 0; i < f->n; i++) {
        const s2_tensor *a = &f->t[i], *b = s2_st_find(&g, a->name);
        FUZZ_CHECK(b, "tensor %s lost", a->name);
        FUZZ_CHECK(a->dtype == b->dtype && a->ndim == b->ndim && a->nbytes == b->nbytes &&
                       !memcmp(a->shape, b->shape, sizeof a->shape[0] * (size_t)a->ndim) &&
                       (!a->nbytes || !memcmp(a->data, b->data, a->nbytes)),
                   "tensor %s changed", a->name);
    }
    for (int i = 0; i < f->n_meta; i++) {
        const char *v = s2_st_meta(&g, f->meta_key[i]);
        FUZZ_CHECK(v && !strcmp(v, f->meta_val[i]), "metadata %s changed", f->meta_key[i]);
    }
    s2_st_close(&g);
    s2_error_clear(&err);
}

/* The header-only read of the same file: the same verdict, tensors and metadata, no data. */
static void check_header_read(const char *path, s2_status full, const s2_st_file *f)
{
    s2_st_file h;
    s2_error err = {0};
    s2_status st = s2_st_read_header(path, &h, &err);
    FUZZ_CHECK(st == full, "the whole read says %d, the header-only read %d (%s)", full, st,
               err.msg);
    if (st == S2_OK) {
        FUZZ_CHECK(h.n == f->n && h.n_meta == f->n_meta && !h.buf && h.size == f->size,
                   "header-only read: %d tensors, %d metadata, %zu bytes", h.n, h.n_meta,
                   h.size);
        for (int i = 0; i < h.n; i++) {
            const s2_tensor *a = &f->t[i], *b = &h.t[i];
            FUZZ_CHECK(!strcmp(a->name, b->name) && a->dtype == b->dtype &&
                           a->ndim == b->ndim && a->nbytes == b->nbytes && !b->data,
                       "header-only read: tensor %s differs", a->name);
        }
    }
    s2_st_close(&h);
    s2_error_clear(&err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[4096];
    fuzz_path("fuzz.safetensors", path);
    fuzz_put("fuzz.safetensors", data, size);
    s2_st_file f;
    s2_error err = {0};
    s2_status st = s2_st_read(path, &f, &err);
    if (st == S2_OK) {
        fuzz_note("read: %d tensors, %d metadata", f.n, f.n_meta);
        check_tensors(&f);
        round_trip(&f);
    } else {
        fuzz_note("refused: %s", err.msg);
        FUZZ_CHECK(err.msg && strstr(err.msg, path),
                   "failure without a message naming the file: %s", err.msg);
        FUZZ_CHECK(!f.buf && !f.t && f.n == 0, "a failed read left a record");
    }
    check_header_read(path, st, &f);
    s2_st_close(&f);
    s2_error_clear(&err);
    return 0;
}

/*
 * train_state.c — the trainer's resumable state (see train_state.h).
 *
 * Save order: state file (temporary, fsync, rename) -> fsync DIR -> latest
 * (temporary, fsync, rename) -> fsync DIR -> prune. Whatever instant a kill
 * lands on, latest names either the previous state, intact and verified by its
 * SHA-256, or the new one.
 */
#define _GNU_SOURCE
#include "runtime/train/train_state.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define STATE_PREFIX "state-"
#define STATE_SUFFIX ".safetensors"
#define STATE_NAME_LEN (6 + 10 + 12) /* state-NNNNNNNNNN.safetensors */
#define LATEST_NAME "latest"
#define SUFFIX_M ".adam_m"
#define SUFFIX_V ".adam_v"
#define LATEST_MAX_BYTES 4096 /* latest holds one line of 94 bytes */

static void (*test_hook)(const char *, void *);
static void *test_hook_ctx;

void s2_state_set_test_hook(void (*hook)(const char *stage, void *ctx), void *ctx)
{
    test_hook = hook;
    test_hook_ctx = ctx;
}

static void run_hook(const char *stage)
{
    if (test_hook)
        test_hook(stage, test_hook_ctx);
}

void s2_state_file_name(uint64_t step, char name[32])
{
    snprintf(name, 32, STATE_PREFIX "%010llu" STATE_SUFFIX, (unsigned long long)step);
}

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

/* ------------------------------------------------------------------------------------------ */
/* the state in memory                                                                        */
/* ------------------------------------------------------------------------------------------ */

static void tensor_free(s2_state_tensor *t)
{
    free(t->name);
    free(t->w);
    free(t->m);
    free(t->v);
    memset(t, 0, sizeof *t);
}

void s2_state_free(s2_train_state *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->n; i++)
        tensor_free(&s->t[i]);
    free(s->t);
    free(s->spec_sha256);
    memset(s, 0, sizeof *s);
}

s2_status s2_state_add_tensor(s2_train_state *s, const char *name, int ndim,
                              const int64_t *shape, s2_state_tensor **out, s2_error *err)
{
    if (!s || !name || !name[0] || ndim < 0 || ndim > S2_ST_MAX_DIMS || (ndim > 0 && !shape))
        return s2_error_set(err, S2_ERR_INVALID, "state tensor '%s': invalid arguments",
                            name ? name : "(null)");
    if (ends_with(name, SUFFIX_M) || ends_with(name, SUFFIX_V))
        return s2_error_set(err, S2_ERR_INVALID,
                            "state tensor '%s': a name may not end in " SUFFIX_M " or " SUFFIX_V,
                            name);
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->t[i].name, name) == 0)
            return s2_error_set(err, S2_ERR_INVALID, "state tensor '%s' added twice", name);
    size_t numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0 || (shape[d] > 0 && numel > SIZE_MAX / 4 / (size_t)shape[d]))
            return s2_error_set(err, S2_ERR_INVALID,
                                "state tensor '%s': dimension %d (%lld) is negative or too large",
                                name, d, (long long)shape[d]);
        numel *= (size_t)shape[d];
    }
    s2_state_tensor *grown = realloc(s->t, (size_t)(s->n + 1) * sizeof *grown);
    if (!grown)
        return s2_error_set(err, S2_ERR_NOMEM, "state tensor '%s': out of memory", name);
    s->t = grown;
    s2_state_tensor *t = &s->t[s->n];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++)
        t->shape[d] = shape[d];
    t->numel = numel;
    size_t bytes = numel ? numel * sizeof(float) : 1;
    t->w = calloc(1, bytes);
    t->m = calloc(1, bytes);
    t->v = calloc(1, bytes);
    if (!t->name || !t->w || !t->m || !t->v) {
        tensor_free(t);
        return s2_error_set(err, S2_ERR_NOMEM, "state tensor '%s': out of memory", name);
    }
    s->n++;
    if (out)
        *out = t;
    return S2_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* one state file                                                                             */
/* ------------------------------------------------------------------------------------------ */

static void fill_tensor(s2_tensor *dst, char *name, const s2_state_tensor *src, float *data)
{
    memset(dst, 0, sizeof *dst);
    dst->name = name;
    dst->dtype = S2_ST_F32;
    dst->ndim = src->ndim;
    for (int d = 0; d < src->ndim; d++)
        dst->shape[d] = src->shape[d];
    dst->data = data;
    dst->nbytes = src->numel * sizeof(float);
}

/* SHA-256 of a file, read in pieces (a full-mode state holds the whole model three times). */
static s2_status sha_of_file(const char *path, char hex[65], s2_error *err)
{
    int fd;
    uint64_t size;
    s2_status st = s2_open_regular(path, &fd, &size, err);
    if (st)
        return st;
    const size_t piece = (size_t)4 << 20;
    char *buf = malloc(piece);
    if (!buf) {
        close(fd);
        return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", path);
    }
    s2_sha256_ctx c;
    s2_sha256_init(&c);
    for (uint64_t off = 0; !st && off < size; off += piece) {
        const size_t n = size - off < piece ? (size_t)(size - off) : piece;
        st = s2_pread_full(fd, path, buf, n, off, err);
        if (!st)
            s2_sha256_update(&c, buf, n);
    }
    free(buf);
    close(fd);
    if (st)
        return st;
    uint8_t d[32];
    s2_sha256_final(&c, d);
    s2_hex(d, 32, hex);
    return S2_OK;
}

s2_status s2_state_write_file(const char *path, const s2_train_state *s, char sha_hex[65],
                              s2_error *err)
{
    if (!path || !s || s->n < 0 || (s->n > 0 && !s->t) || s->n > INT_MAX / 3)
        return s2_error_set(err, S2_ERR_INVALID, "%s: invalid state", path ? path : "(null)");
    for (int i = 0; i < s->n; i++) {
        const s2_state_tensor *t = &s->t[i];
        if (!t->name || !t->name[0] || ends_with(t->name, SUFFIX_M) ||
            ends_with(t->name, SUFFIX_V))
            return s2_error_set(err, S2_ERR_INVALID,
                                "%s: state tensor %d has no name or one ending in " SUFFIX_M
                                " / " SUFFIX_V,
                                path, i);
        if (t->numel && (!t->w || !t->m || !t->v))
            return s2_error_set(err, S2_ERR_INVALID, "%s: state tensor '%s' has no data", path,
                                t->name);
        int64_t n = 1;
        for (int d = 0; d < t->ndim; d++)
            n *= t->shape[d];
        if (t->ndim < 0 || t->ndim > S2_ST_MAX_DIMS || (size_t)n != t->numel)
            return s2_error_set(err, S2_ERR_INVALID,
                                "%s: state tensor '%s': numel %zu does not match its shape", path,
                                t->name, t->numel);
    }
    int nt = 3 * s->n;
    s2_tensor *ts = calloc((size_t)(nt ? nt : 1), sizeof *ts);
    char **names = calloc((size_t)(nt ? nt : 1), sizeof *names);
    s2_status st = S2_OK;
    if (!ts || !names) {
        st = s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    for (int i = 0; i < s->n; i++) {
        const s2_state_tensor *t = &s->t[i];
        if (asprintf(&names[3 * i + 1], "%s" SUFFIX_M, t->name) < 0) {
            names[3 * i + 1] = NULL;
            st = s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", path);
            goto done;
        }
        if (asprintf(&names[3 * i + 2], "%s" SUFFIX_V, t->name) < 0) {
            names[3 * i + 2] = NULL;
            st = s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", path);
            goto done;
        }
        fill_tensor(&ts[3 * i], t->name, t, t->w);
        fill_tensor(&ts[3 * i + 1], names[3 * i + 1], t, t->m);
        fill_tensor(&ts[3 * i + 2], names[3 * i + 2], t, t->v);
    }
    char step[24], pos[24], dseed[24], rseed[24], ema[40], gb[24];
    snprintf(gb, sizeof gb, "%llu", (unsigned long long)s->global_batch);
    snprintf(step, sizeof step, "%llu", (unsigned long long)s->step);
    snprintf(pos, sizeof pos, "%llu", (unsigned long long)s->data_position);
    snprintf(dseed, sizeof dseed, "%llu", (unsigned long long)s->data_seed);
    snprintf(rseed, sizeof rseed, "%llu", (unsigned long long)s->rng_seed);
    snprintf(ema, sizeof ema, "%.17g", s->loss_ema);
    const char *keys[] = {"s2lora_state", "step",     "data_position", "data_seed",
                          "rng_seed",     "loss_ema", "spec_sha256",   "global_batch"};
    const char *vals[] = {"1",   step, pos, dseed,
                          rseed, ema,  s->spec_sha256 ? s->spec_sha256 : "", gb};
    st = s2_st_write(path, ts, nt, keys, vals, 8, err);
    if (!st && sha_hex)
        st = sha_of_file(path, sha_hex, err);
done:
    if (names)
        for (int i = 0; i < nt; i++)
            free(names[i]);
    free(names);
    free(ts);
    return st;
}

/* Decimal digits only, no sign, no overflow. */
static int parse_u64(const char *s, uint64_t *out)
{
    if (!s || !*s)
        return 0;
    uint64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return 0;
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return 0;
        v = v * 10 + d;
    }
    *out = v;
    return 1;
}

static s2_status meta_u64(const char *path, const s2_st_file *f, const char *key, uint64_t *out,
                          s2_error *err)
{
    const char *v = s2_st_meta(f, key);
    if (!parse_u64(v, out))
        return s2_error_set(err, S2_ERR_PARSE,
                            "%s: not a training state: metadata '%s' is %s%s%s (want a decimal "
                            "integer)",
                            path, key, v ? "'" : "missing", v ? v : "", v ? "'" : "");
    return S2_OK;
}

static int same_shape(const s2_tensor *a, const s2_tensor *b)
{
    if (a->ndim != b->ndim)
        return 0;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d])
            return 0;
    return 1;
}

static s2_status moment(const char *path, const s2_st_file *f, const s2_tensor *w,
                        const char *suffix, const s2_tensor **out, s2_error *err)
{
    char *name;
    if (asprintf(&name, "%s%s", w->name, suffix) < 0)
        return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", path);
    const s2_tensor *t = s2_st_find(f, name);
    s2_status st = S2_OK;
    if (!t)
        st = s2_error_set(err, S2_ERR_PARSE, "%s: tensor '%s' has no '%s'", path, w->name, name);
    else if (t->dtype != S2_ST_F32 || !same_shape(t, w))
        st = s2_error_set(err, S2_ERR_PARSE,
                          "%s: tensor '%s' must be F32 with the shape of '%s'", path, name,
                          w->name);
    free(name);
    *out = t;
    return st;
}

static float *copy_floats(const s2_tensor *t)
{
    float *p = malloc(t->nbytes ? t->nbytes : 1);
    if (p && t->nbytes)
        memcpy(p, t->data, t->nbytes); /* the file's data may be unaligned */
    return p;
}

/* Checks f as a training state and fills s: its metadata, and its tensors when copy (with
 * copy = 0, f may be a header read alone: the tensors are checked, not read). */
static s2_status from_file(const char *path, const s2_st_file *f, s2_train_state *s, int copy,
                           s2_error *err)
{
    const char *ver = s2_st_meta(f, "s2lora_state");
    if (!ver || strcmp(ver, "1") != 0)
        return s2_error_set(err, S2_ERR_PARSE,
                            "%s: not an s2lora training state (metadata s2lora_state is %s%s%s, "
                            "want '1')",
                            path, ver ? "'" : "missing", ver ? ver : "", ver ? "'" : "");
    s2_status st;
    if ((st = meta_u64(path, f, "step", &s->step, err)) ||
        (st = meta_u64(path, f, "data_position", &s->data_position, err)) ||
        (st = meta_u64(path, f, "data_seed", &s->data_seed, err)) ||
        (st = meta_u64(path, f, "rng_seed", &s->rng_seed, err)))
        return st;
    /* absent from states saved before data-parallel training: 0, not recorded */
    if (s2_st_meta(f, "global_batch") &&
        (st = meta_u64(path, f, "global_batch", &s->global_batch, err)))
        return st;
    const char *ema = s2_st_meta(f, "loss_ema");
    char *end = NULL;
    errno = 0;
    if (ema && *ema)
        s->loss_ema = strtod(ema, &end);
    if (!ema || !*ema || *end)
        return s2_error_set(err, S2_ERR_PARSE, "%s: metadata 'loss_ema' is %s%s%s (want a number)",
                            path, ema ? "'" : "missing", ema ? ema : "", ema ? "'" : "");
    const char *spec = s2_st_meta(f, "spec_sha256");
    if (!spec)
        return s2_error_set(err, S2_ERR_PARSE, "%s: metadata 'spec_sha256' is missing", path);
    if (!(s->spec_sha256 = strdup(spec)))
        return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", path);
    int masters = 0;
    for (int i = 0; i < f->n; i++) {
        const s2_tensor *w = &f->t[i];
        if (ends_with(w->name, SUFFIX_M) || ends_with(w->name, SUFFIX_V))
            continue;
        masters++;
        if (w->dtype != S2_ST_F32)
            return s2_error_set(err, S2_ERR_PARSE, "%s: tensor '%s' is %s, want F32", path,
                                w->name, s2_st_dtype_name(w->dtype));
        const s2_tensor *m, *v;
        if ((st = moment(path, f, w, SUFFIX_M, &m, err)) ||
            (st = moment(path, f, w, SUFFIX_V, &v, err)))
            return st;
        if (!copy)
            continue;
        s2_state_tensor *t;
        if ((st = s2_state_add_tensor(s, w->name, w->ndim, w->shape, &t, err))) {
            s2_error_prefix(err, "%s", path);
            return st;
        }
        free(t->w);
        free(t->m);
        free(t->v);
        t->w = copy_floats(w);
        t->m = copy_floats(m);
        t->v = copy_floats(v);
        if (!t->w || !t->m || !t->v)
            return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", path);
    }
    if (3 * masters != f->n)
        return s2_error_set(err, S2_ERR_PARSE,
                            "%s: %d tensors for %d trainable tensors (want weights, " SUFFIX_M
                            " and " SUFFIX_V " for each, nothing else)",
                            path, f->n, masters);
    return S2_OK;
}

s2_status s2_state_read_file(const char *path, const char *want_sha_hex, s2_train_state *s,
                             s2_error *err)
{
    memset(s, 0, sizeof *s);
    s2_st_file f = {0};
    s2_status st = s2_st_read(path, &f, err);
    if (st) {
        s2_error_prefix(err, "training state is corrupt");
        return st;
    }
    if (want_sha_hex) {
        uint8_t d[32];
        char hex[65];
        s2_sha256(f.buf, f.size, d);
        s2_hex(d, 32, hex);
        if (strcmp(hex, want_sha_hex) != 0) {
            s2_st_close(&f);
            return s2_error_set(err, S2_ERR_CHECK,
                                "%s: SHA-256 mismatch: the file is %s, latest says %s (the state "
                                "is corrupt; it is not used)",
                                path, hex, want_sha_hex);
        }
    }
    st = from_file(path, &f, s, 1, err);
    s2_st_close(&f);
    if (st)
        s2_state_free(s);
    return st;
}

/* ------------------------------------------------------------------------------------------ */
/* the directory                                                                              */
/* ------------------------------------------------------------------------------------------ */

static s2_status fsync_dir(const char *dir, s2_error *err)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return s2_error_set(err, S2_ERR_IO, "%s: cannot open directory to fsync: %s", dir,
                            strerror(errno));
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc != 0 && e != EINVAL) /* some file systems cannot fsync a directory */
        return s2_error_set(err, S2_ERR_IO, "%s: fsync of the directory failed: %s", dir,
                            strerror(e));
    return S2_OK;
}

/* 1 and *step when name is exactly state-NNNNNNNNNN.safetensors. */
static int parse_state_name(const char *name, uint64_t *step)
{
    if (strlen(name) != STATE_NAME_LEN || strncmp(name, STATE_PREFIX, 6) != 0 ||
        strcmp(name + 16, STATE_SUFFIX) != 0)
        return 0;
    char digits[11];
    memcpy(digits, name + 6, 10);
    digits[10] = '\0';
    return parse_u64(digits, step);
}

static int is_temp_leftover(const char *name)
{
    return (strncmp(name, STATE_PREFIX, 6) == 0 && strstr(name, STATE_SUFFIX ".tmp.")) ||
           strncmp(name, LATEST_NAME ".tmp.", 11) == 0;
}

static int cmp_u64_desc(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? 1 : x > y ? -1 : 0;
}

static s2_status prune(const char *dir, uint64_t keep_step, int keep_last, s2_error *err)
{
    DIR *d = opendir(dir);
    if (!d)
        return s2_error_set(err, S2_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
    uint64_t *steps = NULL;
    size_t n = 0, cap = 0;
    s2_status st = S2_OK;
    char path[PATH_MAX];
    struct dirent *e;
    while ((e = readdir(d))) {
        uint64_t step;
        if (is_temp_leftover(e->d_name)) {
            /* A killed writer's; the one writer per directory is done with its own. */
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
            continue;
        }
        if (!parse_state_name(e->d_name, &step) || step == keep_step)
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            uint64_t *g = realloc(steps, cap * sizeof *g);
            if (!g) {
                st = s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", dir);
                goto done;
            }
            steps = g;
        }
        steps[n++] = step;
    }
    if (n > 1) /* steps is NULL when no other state exists (the first save): qsort wants none */
        qsort(steps, n, sizeof *steps, cmp_u64_desc);
    /* The saved state is one of the kept ones; later steps are an abandoned run's. */
    int kept = 1;
    for (size_t i = 0; i < n; i++) {
        int drop = steps[i] > keep_step || (keep_last > 0 && kept >= keep_last);
        if (!drop) {
            kept++;
            continue;
        }
        char name[32];
        s2_state_file_name(steps[i], name);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        if (unlink(path) != 0 && errno != ENOENT) {
            st = s2_error_set(err, S2_ERR_IO, "%s: cannot delete an old state: %s", path,
                              strerror(errno));
            goto done;
        }
    }
    st = fsync_dir(dir, err);
done:
    free(steps);
    closedir(d);
    return st;
}

s2_status s2_state_save(const char *dir, const s2_train_state *s, int keep_last, s2_error *err)
{
    if (!dir || !s)
        return s2_error_set(err, S2_ERR_INVALID, "state save: NULL directory or state");
    if (s->step > S2_STATE_MAX_STEP)
        return s2_error_set(err, S2_ERR_INVALID, "%s: step %llu does not fit the file name", dir,
                            (unsigned long long)s->step);
    s2_status st = s2_mkdir_p(dir, err);
    if (st)
        return st;
    char name[32], path[PATH_MAX], latest[PATH_MAX], sha[65];
    s2_state_file_name(s->step, name);
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path ||
        snprintf(latest, sizeof latest, "%s/" LATEST_NAME, dir) >= (int)sizeof latest)
        return s2_error_set(err, S2_ERR_INVALID, "%s: path too long", dir);
    if ((st = s2_state_write_file(path, s, sha, err)) || (st = fsync_dir(dir, err)))
        return st;
    run_hook("state-written");
    char line[STATE_NAME_LEN + 1 + 64 + 2];
    int len = snprintf(line, sizeof line, "%s %s\n", name, sha);
    if ((st = s2_write_file_atomic(latest, line, (size_t)len, err)) || (st = fsync_dir(dir, err)))
        return st;
    run_hook("latest-written");
    return prune(dir, s->step, keep_last, err);
}

/* DIR/latest: *found = 0 when it does not exist; else the state file it names (name, its
 * step) and that file's SHA-256. */
static s2_status read_latest(const char *dir, char name[STATE_NAME_LEN + 1], char sha[65],
                             uint64_t *step_out, int *found, s2_error *err)
{
    *found = 0;
    char latest[PATH_MAX];
    if (snprintf(latest, sizeof latest, "%s/" LATEST_NAME, dir) >= (int)sizeof latest)
        return s2_error_set(err, S2_ERR_INVALID, "%s: path too long", dir);
    if (access(latest, F_OK) != 0 && errno == ENOENT)
        return S2_OK; /* a fresh run */
    char *text;
    size_t size;
    s2_status st = s2_read_file_max(latest, LATEST_MAX_BYTES, "a state's latest file", &text,
                                    &size, err);
    if (st)
        return st;
    /* Exactly "state-NNNNNNNNNN.safetensors <64 lowercase hex>\n". */
    uint64_t step = 0;
    int ok = size == STATE_NAME_LEN + 1 + 64 + 1 && text[STATE_NAME_LEN] == ' ' &&
             text[size - 1] == '\n';
    if (ok) {
        memcpy(name, text, STATE_NAME_LEN);
        name[STATE_NAME_LEN] = '\0';
        memcpy(sha, text + STATE_NAME_LEN + 1, 64);
        sha[64] = '\0';
        ok = parse_state_name(name, &step);
        for (int i = 0; ok && i < 64; i++)
            ok = (sha[i] >= '0' && sha[i] <= '9') || (sha[i] >= 'a' && sha[i] <= 'f');
    }
    free(text);
    if (!ok)
        return s2_error_set(err, S2_ERR_PARSE,
                            "%s: malformed (want one line 'state-NNNNNNNNNN.safetensors "
                            "<sha256>'); the checkpoint directory is damaged",
                            latest);
    *step_out = step;
    *found = 1;
    return S2_OK;
}

/* The state latest names: whole and verified, or (header_only) its header checked; name and
 * sha (when given) get latest's file name and SHA-256. */
static s2_status load_latest(const char *dir, s2_train_state *s, int *found, int header_only,
                             char name[STATE_NAME_LEN + 1], char sha[65], s2_error *err)
{
    if (!dir || !s || !found)
        return s2_error_set(err, S2_ERR_INVALID, "state load: NULL argument");
    memset(s, 0, sizeof *s);
    *found = 0;
    char path[PATH_MAX], name_buf[STATE_NAME_LEN + 1], sha_buf[65];
    name = name ? name : name_buf;
    sha = sha ? sha : sha_buf;
    uint64_t step = 0;
    int have = 0;
    s2_status st = read_latest(dir, name, sha, &step, &have, err);
    if (st || !have)
        return st;
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
        return s2_error_set(err, S2_ERR_INVALID, "%s: path too long", dir);
    if (header_only) {
        s2_st_file f;
        if ((st = s2_st_read_header(path, &f, err))) {
            s2_error_prefix(err, "training state is corrupt");
            return st;
        }
        st = from_file(path, &f, s, 0, err);
        s2_st_close(&f);
        if (st) {
            s2_state_free(s);
            return st;
        }
    } else if ((st = s2_state_read_file(path, sha, s, err))) {
        return st;
    }
    if (s->step != step) {
        uint64_t got = s->step;
        s2_state_free(s);
        return s2_error_set(err, S2_ERR_PARSE, "%s: holds step %llu but its name says %llu", path,
                            (unsigned long long)got, (unsigned long long)step);
    }
    *found = 1;
    return S2_OK;
}

s2_status s2_state_peek_latest(const char *dir, s2_state_info *info, int *found, s2_error *err)
{
    memset(info, 0, sizeof *info);
    s2_train_state s;
    s2_status st = load_latest(dir, &s, found, 1, info->file, info->sha256, err);
    if (st || !*found) {
        memset(info, 0, sizeof *info);
        return st;
    }
    if (!s.spec_sha256 || strlen(s.spec_sha256) >= sizeof info->spec_sha256)
        st = s2_error_set(err, S2_ERR_PARSE, "%s/%s: metadata 'spec_sha256' is missing or longer "
                          "than %zu characters", dir, info->file, sizeof info->spec_sha256 - 1);
    if (!st) {
        info->step = s.step, info->data_position = s.data_position;
        info->global_batch = s.global_batch;
        snprintf(info->spec_sha256, sizeof info->spec_sha256, "%s", s.spec_sha256);
    } else {
        memset(info, 0, sizeof *info);
        *found = 0;
    }
    s2_state_free(&s);
    return st;
}

s2_status s2_state_load_info(const char *dir, const s2_state_info *info, s2_train_state *s,
                             s2_error *err)
{
    memset(s, 0, sizeof *s);
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", dir, info->file) >= (int)sizeof path)
        return s2_error_set(err, S2_ERR_INVALID, "%s: path too long", dir);
    s2_status st = s2_state_read_file(path, info->sha256, s, err);
    if (!st && (s->step != info->step || s->data_position != info->data_position ||
                s->global_batch != info->global_batch)) {
        st = s2_error_set(err, S2_ERR_CHECK, "%s: holds step %llu, data position %llu, global "
                          "batch %llu; it said %llu, %llu, %llu when the run started", path,
                          (unsigned long long)s->step, (unsigned long long)s->data_position,
                          (unsigned long long)s->global_batch, (unsigned long long)info->step,
                          (unsigned long long)info->data_position,
                          (unsigned long long)info->global_batch);
        s2_state_free(s);
    }
    return st;
}

s2_status s2_state_load_latest(const char *dir, s2_train_state *s, int *found, s2_error *err)
{
    return load_latest(dir, s, found, 0, NULL, NULL, err);
}

s2_status s2_state_check_latest(const char *dir, s2_train_state *s, int *found, s2_error *err)
{
    return load_latest(dir, s, found, 1, NULL, NULL, err);
}

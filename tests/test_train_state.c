/*
 * test_train_state.c — training-state checkpoints: round trip, pruning, corrupt files, and
 * resume after a kill (SIGKILL in the middle of writing a state, and between the state file
 * and latest). Each test gets its own directory under /tmp.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>

#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "runtime/core/st.h"
#include "runtime/train/train_state.h"
#include "tmpdir.h"

static char dir[64];

static void make_dir(void)
{
    snprintf(dir, sizeof dir, "/tmp/s2_test_state.XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void) { s2_test_rmtree(dir); }

TestSuite(state, .init = make_dir, .fini = remove_dir, .timeout = 120);

/* ---- helpers ----------------------------------------------------------------------------- */

/* A small state whose every value depends on step, so states of different steps differ. */
static void make_state(s2_train_state *s, uint64_t step)
{
    memset(s, 0, sizeof *s);
    s->step = step;
    s->data_position = step * 4 + 1;
    s->data_seed = UINT64_MAX - step;
    s->rng_seed = 0x123456789abcdef0ull ^ step;
    s->loss_ema = 2.0 / 3.0 + (double)step * 1e-17 + 0.1;
    s->global_batch = 16 + step;
    s->spec_sha256 = strdup("5f3c0b6c2d1e4a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d");
    const int64_t a_shape[2] = {4, 8}, b_shape[1] = {5};
    s2_state_tensor *t;
    s2_error err = {0};
    cr_assert_eq(s2_state_add_tensor(s, "layers.0.q.lora_A", 2, a_shape, &t, &err), S2_OK, "%s",
                 err.msg);
    for (size_t i = 0; i < t->numel; i++) {
        t->w[i] = (float)i * 0.25f + (float)step;
        t->m[i] = -(float)i * 1e-3f;
        t->v[i] = (float)i * 1e-7f + 1e-30f;
    }
    cr_assert_eq(s2_state_add_tensor(s, "layers.0.q.lora_B", 1, b_shape, &t, &err), S2_OK);
    for (size_t i = 0; i < t->numel; i++) {
        t->w[i] = 1.0f / (float)(i + 1 + step);
        t->m[i] = (float)step;
        t->v[i] = 3.0f;
    }
    cr_assert_eq(s2_state_add_tensor(s, "scale", 0, NULL, &t, &err), S2_OK);
    t->w[0] = 0.5f;
    t->m[0] = 0.25f;
    t->v[0] = 0.125f;
}

static void assert_state_eq(const s2_train_state *a, const s2_train_state *b)
{
    cr_assert_eq(a->step, b->step);
    cr_assert_eq(a->data_position, b->data_position);
    cr_assert_eq(a->data_seed, b->data_seed);
    cr_assert_eq(a->rng_seed, b->rng_seed);
    cr_assert_eq(a->global_batch, b->global_batch);
    cr_assert_eq(memcmp(&a->loss_ema, &b->loss_ema, sizeof(double)), 0, "loss_ema %.17g vs %.17g",
                 a->loss_ema, b->loss_ema);
    cr_assert_str_eq(a->spec_sha256, b->spec_sha256);
    cr_assert_eq(a->n, b->n);
    for (int i = 0; i < a->n; i++) {
        const s2_state_tensor *x = &a->t[i], *y = &b->t[i];
        cr_assert_str_eq(x->name, y->name);
        cr_assert_eq(x->ndim, y->ndim);
        for (int d = 0; d < x->ndim; d++)
            cr_assert_eq(x->shape[d], y->shape[d]);
        cr_assert_eq(x->numel, y->numel);
        cr_assert_eq(memcmp(x->w, y->w, x->numel * 4), 0, "%s weights", x->name);
        cr_assert_eq(memcmp(x->m, y->m, x->numel * 4), 0, "%s adam_m", x->name);
        cr_assert_eq(memcmp(x->v, y->v, x->numel * 4), 0, "%s adam_v", x->name);
    }
}

static void save(uint64_t step, int keep_last)
{
    s2_train_state s;
    make_state(&s, step);
    s2_error err = {0};
    cr_assert_eq(s2_state_save(dir, &s, keep_last, &err), S2_OK, "%s", err.msg);
    s2_state_free(&s);
}

/* Loads latest and checks it is the state of step (all fields and tensors). */
static void assert_latest_is(uint64_t step)
{
    s2_train_state got, want;
    int found = -1;
    s2_error err = {0};
    cr_assert_eq(s2_state_load_latest(dir, &got, &found, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(found, 1);
    make_state(&want, step);
    assert_state_eq(&got, &want);
    s2_state_free(&got);
    s2_state_free(&want);
}

static int state_exists(uint64_t step)
{
    char name[32], p[256];
    s2_state_file_name(step, name);
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, F_OK) == 0;
}

static void state_path(uint64_t step, char *p, size_t n)
{
    char name[32];
    s2_state_file_name(step, name);
    snprintf(p, n, "%s/%s", dir, name);
}

static int count_temp_files(void)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".tmp."))
            n++;
    closedir(d);
    return n;
}

static void write_text(const char *p, const char *text)
{
    FILE *f = fopen(p, "wb");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

/* Loading must fail with st, and the message must contain both needles. */
static void assert_load_fails(s2_status st, const char *needle1, const char *needle2)
{
    s2_train_state s;
    int found = -1;
    s2_error err = {0};
    s2_status got = s2_state_load_latest(dir, &s, &found, &err);
    cr_assert_eq(got, st, "status %s, message: %s", s2_status_to_string(got), err.msg);
    cr_assert_not_null(err.msg);
    cr_assert_not_null(strstr(err.msg, needle1), "'%s' not in: %s", needle1, err.msg);
    cr_assert_not_null(strstr(err.msg, needle2), "'%s' not in: %s", needle2, err.msg);
    cr_assert_eq(found, 0);
    cr_assert_eq(s.n, 0);
    cr_assert_null(s.t);
    s2_error_clear(&err);
}

/* ---- round trip and layout --------------------------------------------------------------- */

Test(state, round_trip)
{
    s2_train_state s;
    make_state(&s, 42);
    s2_error err = {0};
    cr_assert_eq(s2_state_save(dir, &s, 3, &err), S2_OK, "%s", err.msg);
    assert_latest_is(42);
    s2_state_free(&s);

    /* latest: one line naming the file and its SHA-256. */
    char p[256], *text;
    size_t size;
    snprintf(p, sizeof p, "%s/latest", dir);
    cr_assert_eq(s2_read_file(p, &text, &size, &err), S2_OK);
    cr_assert_eq(size, 28 + 1 + 64 + 1);
    cr_assert_eq(strncmp(text, "state-0000000042.safetensors ", 29), 0, "%s", text);
    free(text);

    /* Any safetensors reader can inspect it: names, dtypes, metadata. */
    s2_st_file f = {0};
    state_path(42, p, sizeof p);
    cr_assert_eq(s2_st_read(p, &f, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(f.n, 9);
    const s2_tensor *m = s2_st_find(&f, "layers.0.q.lora_A.adam_m");
    cr_assert_not_null(m);
    cr_assert_eq(m->dtype, S2_ST_F32);
    cr_assert_eq(m->ndim, 2);
    cr_assert_not_null(s2_st_find(&f, "scale.adam_v"));
    cr_assert_str_eq(s2_st_meta(&f, "s2lora_state"), "1");
    cr_assert_str_eq(s2_st_meta(&f, "step"), "42");
    cr_assert_str_eq(s2_st_meta(&f, "data_position"), "169");
    cr_assert_str_eq(s2_st_meta(&f, "data_seed"), "18446744073709551573");
    cr_assert_not_null(s2_st_meta(&f, "loss_ema"));
    cr_assert_str_eq(s2_st_meta(&f, "spec_sha256"),
                     "5f3c0b6c2d1e4a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d");
    s2_st_close(&f);
}

Test(state, empty_state_and_null_spec)
{
    s2_train_state s = {0}, got;
    s.step = 0;
    s.loss_ema = -0.0;
    s2_error err = {0};
    cr_assert_eq(s2_state_save(dir, &s, 1, &err), S2_OK, "%s", err.msg);
    int found = 0;
    cr_assert_eq(s2_state_load_latest(dir, &got, &found, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(found, 1);
    cr_assert_eq(got.n, 0);
    cr_assert_str_eq(got.spec_sha256, "");
    s2_state_free(&got);
    s2_state_free(&got); /* a freed state is zeroed: freeing again is fine */
}

/* The first save into a fresh directory finds no older state to prune: an empty list, which
 * must not reach qsort as a NULL array (undefined behaviour the sanitizer build reports). */
Test(state, first_save_has_nothing_to_prune)
{
    char sub[128];
    snprintf(sub, sizeof sub, "%s/fresh", dir);
    s2_train_state s;
    make_state(&s, 7);
    s2_error err = {0};
    cr_assert_eq(s2_state_save(sub, &s, 1, &err), S2_OK, "%s", err.msg);
    s2_state_free(&s);
    DIR *d = opendir(sub);
    cr_assert_not_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    cr_expect_eq(n, 2, "latest and the one state");
    s2_train_state got;
    int found = 0;
    cr_assert_eq(s2_state_load_latest(sub, &got, &found, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(found, 1);
    cr_expect_eq(got.step, 7);
    s2_state_free(&got);
}

/* s2_state_check_latest: latest and the state's header, not its data (so not its SHA-256):
 * the metadata comes back and no tensor; what the header shows wrong is refused. */
Test(state, check_latest_reads_the_header)
{
    s2_train_state s;
    int found = -1;
    s2_error err = {0};
    cr_assert_eq(s2_state_check_latest(dir, &s, &found, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(found, 0, "no state yet: a fresh run");
    save(10, 0);
    cr_assert_eq(s2_state_check_latest(dir, &s, &found, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(found, 1);
    s2_train_state want;
    make_state(&want, 10);
    cr_expect_eq(s.step, 10);
    cr_expect_eq(s.data_position, want.data_position);
    cr_expect_str_eq(s.spec_sha256, want.spec_sha256);
    cr_expect_eq(s.n, 0);
    cr_expect_null(s.t);
    s2_state_free(&s);
    s2_state_free(&want);
    char p[256];
    state_path(10, p, sizeof p);
    struct stat sb;
    cr_assert_eq(stat(p, &sb), 0);
    cr_assert_eq(truncate(p, sb.st_size - 4), 0);
    cr_assert_eq(s2_state_check_latest(dir, &s, &found, &err), S2_ERR_PARSE);
    cr_expect(strstr(err.msg, "training state is corrupt") && strstr(err.msg, p), "%s",
              err.msg);
    cr_expect_eq(found, 0);
    cr_assert_eq(unlink(p), 0);
    cr_assert_eq(mkfifo(p, 0600), 0); /* refused at once, never waited on */
    cr_assert_eq(s2_state_check_latest(dir, &s, &found, &err), S2_ERR_IO);
    cr_expect(strstr(err.msg, "is a FIFO"), "%s", err.msg);
    snprintf(p, sizeof p, "%s/latest", dir);
    write_text(p, "hello\n");
    cr_assert_eq(s2_state_check_latest(dir, &s, &found, &err), S2_ERR_PARSE);
    cr_expect(strstr(err.msg, "malformed"), "%s", err.msg);
    s2_error_clear(&err);
}

Test(state, no_state_is_not_an_error)
{
    s2_train_state s;
    int found = -1;
    s2_error err = {0};
    cr_assert_eq(s2_state_load_latest(dir, &s, &found, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(found, 0);
    char missing[128];
    snprintf(missing, sizeof missing, "%s/does/not/exist", dir);
    found = -1;
    cr_assert_eq(s2_state_load_latest(missing, &s, &found, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(found, 0);
    cr_assert_eq(s.n, 0);
    cr_assert_null(err.msg);
}

Test(state, save_creates_dir_and_overwrites_same_step)
{
    char sub[128];
    snprintf(sub, sizeof sub, "%s/ckpt", dir);
    s2_train_state s, got;
    make_state(&s, 5);
    s2_error err = {0};
    cr_assert_eq(s2_state_save(sub, &s, 0, &err), S2_OK, "%s", err.msg);
    s.t[0].w[0] = 99.0f;
    cr_assert_eq(s2_state_save(sub, &s, 0, &err), S2_OK, "%s", err.msg);
    int found;
    cr_assert_eq(s2_state_load_latest(sub, &got, &found, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(got.t[0].w[0], 99.0f);
    s2_state_free(&got);
    s2_state_free(&s);
    char p[256];
    snprintf(p, sizeof p, "%s/latest", sub);
    unlink(p);
    snprintf(p, sizeof p, "%s/state-0000000005.safetensors", sub);
    unlink(p);
    cr_assert_eq(rmdir(sub), 0, "the directory holds only the state and latest");
}

Test(state, bad_tensor_names_refused)
{
    s2_train_state s = {0};
    s2_error err = {0};
    int64_t shape[1] = {2};
    cr_assert_eq(s2_state_add_tensor(&s, "x.adam_m", 1, shape, NULL, &err), S2_ERR_INVALID);
    s2_error_clear(&err);
    cr_assert_eq(s2_state_add_tensor(&s, "x", 1, shape, NULL, &err), S2_OK);
    cr_assert_eq(s2_state_add_tensor(&s, "x", 1, shape, NULL, &err), S2_ERR_INVALID);
    cr_assert_not_null(strstr(err.msg, "twice"));
    s2_error_clear(&err);
    s.step = S2_STATE_MAX_STEP + 1;
    cr_assert_eq(s2_state_save(dir, &s, 0, &err), S2_ERR_INVALID);
    s2_error_clear(&err);
    s2_state_free(&s);
}

/* ---- pruning ----------------------------------------------------------------------------- */

Test(state, keep_last_prunes_oldest)
{
    for (uint64_t step = 10; step <= 60; step += 10)
        save(step, 3);
    for (uint64_t step = 10; step <= 30; step += 10)
        cr_assert(!state_exists(step), "step %llu should be pruned", (unsigned long long)step);
    for (uint64_t step = 40; step <= 60; step += 10)
        cr_assert(state_exists(step), "step %llu should be kept", (unsigned long long)step);
    assert_latest_is(60);

    save(70, 1);
    cr_assert(!state_exists(40) && !state_exists(50) && !state_exists(60));
    cr_assert(state_exists(70));
    assert_latest_is(70);

    save(80, 0); /* 0 keeps all */
    save(90, 0);
    cr_assert(state_exists(70) && state_exists(80) && state_exists(90));
}

Test(state, abandoned_later_states_and_temp_files_removed)
{
    save(10, 5);
    /* A killed run's leftovers: a state never named by latest and a half-written temp. */
    s2_train_state s;
    make_state(&s, 500);
    char p[256];
    s2_error err = {0};
    state_path(500, p, sizeof p);
    cr_assert_eq(s2_state_write_file(p, &s, NULL, &err), S2_OK, "%s", err.msg);
    s2_state_free(&s);
    snprintf(p, sizeof p, "%s/state-0000000600.safetensors.tmp.AbC123", dir);
    write_text(p, "half");
    assert_latest_is(10);

    save(20, 5);
    cr_assert(!state_exists(500));
    cr_assert_eq(count_temp_files(), 0);
    cr_assert(state_exists(10) && state_exists(20));
    assert_latest_is(20);
}

/* ---- corrupt files ----------------------------------------------------------------------- */

Test(state, flipped_byte_is_digest_mismatch)
{
    save(10, 0);
    char p[256];
    state_path(10, p, sizeof p);
    FILE *f = fopen(p, "r+b");
    cr_assert_not_null(f);
    fseek(f, -3, SEEK_END); /* inside the tensor data: still a valid safetensors file */
    int c = fgetc(f);
    fseek(f, -3, SEEK_END);
    fputc(c ^ 0x40, f);
    fclose(f);
    assert_load_fails(S2_ERR_CHECK, "state-0000000010.safetensors", "SHA-256 mismatch");
}

Test(state, latest_with_wrong_digest)
{
    save(10, 0);
    char p[256];
    snprintf(p, sizeof p, "%s/latest", dir);
    write_text(p, "state-0000000010.safetensors "
                  "0000000000000000000000000000000000000000000000000000000000000000\n");
    assert_load_fails(S2_ERR_CHECK, "state-0000000010.safetensors", "SHA-256 mismatch");
}

Test(state, truncated_file)
{
    save(10, 0);
    char p[256];
    state_path(10, p, sizeof p);
    struct stat sb;
    cr_assert_eq(stat(p, &sb), 0);
    cr_assert_eq(truncate(p, sb.st_size / 2), 0);
    assert_load_fails(S2_ERR_PARSE, "state-0000000010.safetensors", "training state is corrupt");
}

Test(state, garbage_latest)
{
    save(10, 0);
    char p[256];
    snprintf(p, sizeof p, "%s/latest", dir);
    const char *bad[] = {
        "hello\n",
        "",
        "state-0000000010.safetensors\n",
        /* path escape, right length */
        "../../../../../etc/passwdxxxx 0000000000000000000000000000000000000000000000000000000000000000\n",
        /* upper-case hex */
        "state-0000000010.safetensors 000000000000000000000000000000000000000000000000000000000000000A\n",
        /* no newline */
        "state-0000000010.safetensors 0000000000000000000000000000000000000000000000000000000000000000",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_text(p, bad[i]);
        assert_load_fails(S2_ERR_PARSE, "latest", "malformed");
    }
}

Test(state, latest_names_missing_file)
{
    save(10, 0);
    char p[256];
    state_path(10, p, sizeof p);
    cr_assert_eq(unlink(p), 0);
    assert_load_fails(S2_ERR_IO, "state-0000000010.safetensors", "corrupt");
}

Test(state, not_a_state_file)
{
    /* A valid safetensors file without the state metadata, named by a correct latest. */
    char p[256], line[128], sha[65];
    state_path(3, p, sizeof p);
    float x[2] = {1, 2};
    s2_tensor t = {.name = "x", .dtype = S2_ST_F32, .ndim = 1, .shape = {2}, .data = x,
                   .nbytes = sizeof x};
    s2_error err = {0};
    cr_assert_eq(s2_st_write(p, &t, 1, NULL, NULL, 0, &err), S2_OK, "%s", err.msg);
    char *data;
    size_t size;
    cr_assert_eq(s2_read_file(p, &data, &size, &err), S2_OK);
    uint8_t d[32];
    s2_sha256(data, size, d);
    s2_hex(d, 32, sha);
    free(data);
    snprintf(line, sizeof line, "state-0000000003.safetensors %s\n", sha);
    snprintf(p, sizeof p, "%s/latest", dir);
    write_text(p, line);
    assert_load_fails(S2_ERR_PARSE, "state-0000000003.safetensors", "not an s2lora training state");
}

/* ---- resume after a kill ----------------------------------------------------------------- */

/* Writes step 10 (small), then a ~200 MB step 20, and never returns. */
static void child_save_big(void)
{
    s2_train_state s;
    make_state(&s, 10);
    if (s2_state_save(dir, &s, 3, NULL))
        _exit(10);
    s.step = 20;
    const int64_t big[2] = {4096, 4096}; /* 64 MiB each of w, m, v */
    s2_state_tensor *t;
    if (s2_state_add_tensor(&s, "big", 2, big, &t, NULL))
        _exit(11);
    for (size_t i = 0; i < t->numel; i++)
        t->w[i] = (float)i;
    if (s2_state_save(dir, &s, 3, NULL))
        _exit(12);
    _exit(0);
}

static int temp_of_step20_exists(void)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int found = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strncmp(e->d_name, "state-0000000020.safetensors.tmp.", 33) == 0)
            found = 1;
    closedir(d);
    return found;
}

Test(state, resume_after_kill_mid_write)
{
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0)
        child_save_big();
    /* Kill it as soon as the temporary file of step 20 exists (its writer is mid-write). */
    int seen = 0, status = 0;
    struct timespec nap = {0, 100 * 1000};
    for (long i = 0; i < 600000 && !seen; i++) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            break;
        seen = temp_of_step20_exists();
        if (!seen)
            nanosleep(&nap, NULL);
    }
    if (seen) {
        kill(pid, SIGKILL);
        cr_assert_eq(waitpid(pid, &status, 0), pid);
    }
    cr_assert(seen, "never saw the temporary file of step 20 (child status %d)", status);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child status %d", status);

    /* Step 10 is intact; the half-written step 20 is named by nothing. */
    assert_latest_is(10);
    cr_assert_geq(count_temp_files(), 1, "the killed write left its temporary file");

    /* The resumed run saves on; the leftover goes. */
    save(20, 3);
    assert_latest_is(20);
    cr_assert_eq(count_temp_files(), 0);
}

static void kill_at_stage(const char *stage, void *ctx)
{
    if (strcmp(stage, (const char *)ctx) == 0)
        raise(SIGKILL);
}

/* Child: saves 10, then dies at stage while saving 20. */
static void run_killed_child(const char *stage)
{
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        s2_train_state s;
        make_state(&s, 10);
        if (s2_state_save(dir, &s, 3, NULL))
            _exit(10);
        s2_state_free(&s);
        make_state(&s, 20);
        s2_state_set_test_hook(kill_at_stage, (void *)stage);
        s2_state_save(dir, &s, 1, NULL);
        _exit(0);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "child status %d", status);
}

Test(state, resume_after_kill_before_latest)
{
    run_killed_child("state-written");
    cr_assert(state_exists(20), "the state file was renamed into place");
    assert_latest_is(10);
    /* Resuming from 10 and saving 20 again replaces the orphan. */
    save(20, 3);
    assert_latest_is(20);
    cr_assert(state_exists(10));
}

Test(state, kill_after_latest_before_prune)
{
    run_killed_child("latest-written");
    assert_latest_is(20);
    cr_assert(state_exists(10), "pruning never ran");
    save(30, 1);
    cr_assert(!state_exists(10) && !state_exists(20));
    assert_latest_is(30);
}

Test(state, state_file_without_latest_written_by_hand)
{
    save(10, 3);
    s2_train_state s;
    make_state(&s, 20);
    char p[256], sha[65];
    s2_error err = {0};
    state_path(20, p, sizeof p);
    cr_assert_eq(s2_state_write_file(p, &s, sha, &err), S2_OK, "%s", err.msg);
    s2_state_free(&s);
    cr_assert_eq(strlen(sha), 64);
    assert_latest_is(10);
    /* The file itself is complete: read directly (with its digest), it is step 20. */
    s2_train_state got, want;
    cr_assert_eq(s2_state_read_file(p, sha, &got, &err), S2_OK, "%s", err.msg);
    make_state(&want, 20);
    assert_state_eq(&got, &want);
    s2_state_free(&got);
    s2_state_free(&want);
}

/* ---- the global batch and the header-only look at latest -------------------------------- */

/* A state file saved before data-parallel training has no global_batch: it reads as 0. */
Test(state, a_state_without_global_batch_reads_as_0)
{
    save(5, 2);
    char p[256];
    state_path(5, p, sizeof p);
    s2_st_file f = {0};
    s2_error err = {0};
    cr_assert_eq(s2_st_read(p, &f, &err), S2_OK, "%s", err.msg);
    const char *keys[16], *vals[16];
    int n = 0;
    for (int i = 0; i < f.n_meta; i++)
        if (strcmp(f.meta_key[i], "global_batch")) {
            keys[n] = f.meta_key[i];
            vals[n++] = f.meta_val[i];
        }
    cr_assert_eq(n, f.n_meta - 1, "the file had a global_batch");
    cr_assert_eq(s2_st_write(p, f.t, f.n, keys, vals, n, &err), S2_OK, "%s", err.msg);
    s2_st_close(&f);
    s2_train_state got;
    cr_assert_eq(s2_state_read_file(p, NULL, &got, &err), S2_OK, "%s", err.msg);
    cr_expect_eq(got.global_batch, 0);
    cr_expect_eq(got.step, 5);
    s2_state_free(&got);
    /* and a malformed one is refused, naming it */
    cr_assert_eq(s2_st_read(p, &f, &err), S2_OK);
    for (int i = 0; i < f.n_meta; i++) { /* the re-read file's (the first one is freed) */
        keys[i] = f.meta_key[i];
        vals[i] = f.meta_val[i];
    }
    cr_assert_eq(f.n_meta, n);
    keys[n] = "global_batch";
    vals[n] = "16x";
    cr_assert_eq(s2_st_write(p, f.t, f.n, keys, vals, n + 1, &err), S2_OK);
    s2_st_close(&f);
    cr_expect_eq(s2_state_read_file(p, NULL, &got, &err), S2_ERR_PARSE);
    cr_expect(strstr(err.msg, "metadata 'global_batch' is '16x'"), "%s", err.msg);
    s2_error_clear(&err);
}

Test(state, peek_reads_what_latest_names_from_the_header)
{
    s2_state_info info;
    int found = -1;
    s2_error err = {0};
    cr_assert_eq(s2_state_peek_latest(dir, &info, &found, &err), S2_OK);
    cr_expect_eq(found, 0, "no latest: a fresh run");
    save(3, 2);
    save(7, 2);
    cr_assert_eq(s2_state_peek_latest(dir, &info, &found, &err), S2_OK, "%s", err.msg);
    cr_assert_eq(found, 1);
    s2_train_state want;
    make_state(&want, 7);
    cr_expect_str_eq(info.file, "state-0000000007.safetensors");
    cr_expect_eq(info.step, 7);
    cr_expect_eq(info.data_position, want.data_position);
    cr_expect_eq(info.global_batch, want.global_batch);
    cr_expect_str_eq(info.spec_sha256, want.spec_sha256);
    char *latest = NULL, path[256];
    snprintf(path, sizeof path, "%s/latest", dir);
    cr_assert_eq(s2_read_file(path, &latest, NULL, NULL), S2_OK);
    cr_expect(strstr(latest, info.sha256) && strlen(info.sha256) == 64, "%s", latest);
    free(latest);
    /* the state it names loads, checked */
    s2_train_state got;
    cr_assert_eq(s2_state_load_info(dir, &info, &got, &err), S2_OK, "%s", err.msg);
    assert_state_eq(&got, &want);
    s2_state_free(&got);
    s2_state_free(&want);
    /* a state that no longer says what it said when the run started, or another file: refused */
    s2_state_info other = info;
    other.data_position++;
    cr_expect_eq(s2_state_load_info(dir, &other, &got, &err), S2_ERR_CHECK);
    cr_expect(strstr(err.msg, "when the run started"), "%s", err.msg);
    s2_error_clear(&err);
    other = info;
    other.sha256[0] = other.sha256[0] == '0' ? '1' : '0';
    cr_expect_eq(s2_state_load_info(dir, &other, &got, &err), S2_ERR_CHECK);
    cr_expect(strstr(err.msg, "SHA-256 mismatch"), "%s", err.msg);
    s2_error_clear(&err);
}

Test(state, peek_refuses_a_damaged_header)
{
    save(2, 2);
    char p[256];
    state_path(2, p, sizeof p);
    FILE *f = fopen(p, "r+b");
    cr_assert(f);
    const unsigned char huge[8] = {0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0};
    fwrite(huge, 1, 8, f);
    fclose(f);
    s2_state_info info;
    int found = -1;
    s2_error err = {0};
    cr_expect_eq(s2_state_peek_latest(dir, &info, &found, &err), S2_ERR_PARSE);
    cr_expect(err.msg && strstr(err.msg, p) && strstr(err.msg, "header length"), "%s", err.msg);
    cr_expect_eq(found, 0);
    s2_error_clear(&err);
    /* a latest that is not one line of a name and a digest */
    char lp[256];
    snprintf(lp, sizeof lp, "%s/latest", dir);
    cr_assert_eq(s2_write_file_atomic(lp, "junk\n", 5, NULL), S2_OK);
    cr_expect_eq(s2_state_peek_latest(dir, &info, &found, &err), S2_ERR_PARSE);
    cr_expect(strstr(err.msg, "malformed"), "%s", err.msg);
    s2_error_clear(&err);
}

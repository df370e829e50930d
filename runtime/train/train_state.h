/*
 * train_state.h — the trainer's resumable state, checkpointed atomically.
 *
 * A state is the step, the data position (index of the next sequence), the
 * data and dropout seeds, the loss EMA, the spec's SHA-256 and, for every
 * trainable tensor, its fp32 master weights and AdamW moments m and v.
 *
 * File: a safetensors file (any reader can inspect it) with F32 tensors
 * "<name>", "<name>.adam_m", "<name>.adam_v" and string metadata
 *   {"s2lora_state": "1", "step", "data_position", "data_seed", "rng_seed",
 *    "global_batch" (decimal; a file without global_batch reads as 0), "loss_ema" ("%.17g",
 *    exact), "spec_sha256" (the caller's text)}.
 *
 * Directory: DIR/state-<step, 10 digits>.safetensors, each written to a
 * temporary name, fsynced and renamed (then the directory is fsynced), and
 * DIR/latest, written the same way only AFTER the state file, holding one line
 * "state-NNNNNNNNNN.safetensors <sha256 hex>". A state counts only once latest
 * names it: a run killed at any point loses at most the steps since the state
 * latest names, and a loader never trusts a file whose SHA-256 differs.
 * One writer per directory.
 *
 * Nothing here prints or exits.
 */
#ifndef S2_TRAIN_STATE_H
#define S2_TRAIN_STATE_H

#include <stddef.h>
#include <stdint.h>

#include "gen/util.h"
#include "runtime/core/st.h"

typedef struct s2_state_tensor {
    char *name; /* owned; must not end in ".adam_m" or ".adam_v" */
    int ndim;
    int64_t shape[S2_ST_MAX_DIMS];
    size_t numel;
    float *w, *m, *v; /* owned; numel floats each: master weights, AdamW m and v */
} s2_state_tensor;

typedef struct s2_train_state {
    uint64_t step;
    uint64_t data_position; /* index of the next sequence */
    uint64_t data_seed;
    uint64_t rng_seed;      /* dropout */
    double loss_ema;
    uint64_t global_batch;  /* sequences an optimizer step consumes (ranks x grad accum); 0:
                               not recorded (a state saved before data-parallel training) */
    char *spec_sha256;      /* owned (malloc'd) text; NULL is saved as "" */
    int n;
    s2_state_tensor *t;     /* owned array of n */
} s2_train_state;

/* The largest step a file name can hold (10 digits). */
#define S2_STATE_MAX_STEP 9999999999ull

/*
 * Appends a tensor with zeroed w, m and v to a state (zero-initialise the
 * state first). *out (optional) points at it until the next add.
 */
s2_status s2_state_add_tensor(s2_train_state *s, const char *name, int ndim,
                              const int64_t *shape, s2_state_tensor **out, s2_error *err);

/* Frees everything a state owns and zeroes it; a zeroed or NULL state is fine. */
void s2_state_free(s2_train_state *s);

/*
 * Saves s as DIR/state-<step>.safetensors (creating DIR), fsyncs, then points
 * DIR/latest at it; then deletes the states older than the newest keep_last
 * (keep_last <= 0 keeps all; the one just saved is always kept), the states of
 * later steps (an abandoned run's, never named by latest once this returns),
 * and temporary files left by killed writes.
 */
s2_status s2_state_save(const char *dir, const s2_train_state *s, int keep_last, s2_error *err);

/*
 * Loads the state DIR/latest names into *s (zeroed first; free with
 * s2_state_free). *found = 0 and S2_OK when DIR or DIR/latest does not exist
 * (a fresh run). A malformed latest, a missing or corrupt state file, or a
 * SHA-256 mismatch is an error that names the file.
 */
s2_status s2_state_load_latest(const char *dir, s2_train_state *s, int *found, s2_error *err);

/*
 * What DIR/latest names, from the state file's header alone (its tensors are not read, its
 * SHA-256 not checked: s2_state_load_info does both), so the ranks of a data-parallel run can
 * agree on the state and its global batch before any GPU work. *found = 0 and S2_OK when there
 * is no latest; a malformed latest or header is an error naming the file.
 */
typedef struct s2_state_info {
    char file[32];        /* "state-NNNNNNNNNN.safetensors" in DIR */
    char sha256[65];      /* as latest names it */
    uint64_t step, data_position, global_batch;
    char spec_sha256[72];
} s2_state_info;

s2_status s2_state_peek_latest(const char *dir, s2_state_info *info, int *found, s2_error *err);
/* Loads exactly that file (checked against its SHA-256) into *s; S2_ERR_CHECK when it no
 * longer holds the step, data position and global batch info says. */
s2_status s2_state_load_info(const char *dir, const s2_state_info *info, s2_train_state *s,
                             s2_error *err);

/*
 * s2_state_load_latest's checks without reading the tensors' data: latest, and the header of
 * the state it names (metadata, and every tensor F32 with its two moments). Fills s's metadata (step,
 * data position, seeds, loss EMA, spec_sha256) and no tensor (n = 0). The SHA-256 is
 * verified when the state is loaded. For checking a --resume before a device is opened.
 */
s2_status s2_state_check_latest(const char *dir, s2_train_state *s, int *found, s2_error *err);

/* ---- the steps save is made of, exposed for tests and tools ---------------------------- */

/* Writes one state file atomically (temporary + fsync + rename); sha_hex (optional) gets the
 * SHA-256 of the bytes on disk. Does not touch latest. */
s2_status s2_state_write_file(const char *path, const s2_train_state *s, char sha_hex[65],
                              s2_error *err);
/* Reads and validates one state file; want_sha_hex (optional) must match its SHA-256. */
s2_status s2_state_read_file(const char *path, const char *want_sha_hex, s2_train_state *s,
                             s2_error *err);
/* "state-0000000010.safetensors" into name (at least 29 bytes). */
void s2_state_file_name(uint64_t step, char name[32]);

/*
 * Test-only: called by s2_state_save at "state-written" (state file renamed and the
 * directory fsynced, latest not yet written) and "latest-written" (before pruning), so a
 * test can kill the process there. NULL removes it. Not thread-safe; never for production.
 */
void s2_state_set_test_hook(void (*hook)(const char *stage, void *ctx), void *ctx);

#endif

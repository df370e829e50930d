/*
 * bench.h — `s2lora bench attn`: times the S²-Attn kernels of one or more
 * specs over a sweep of sequence lengths and, through bench/peers/attn_peers.py,
 * the PyTorch peers (cuDNN/flash SDPA after LongLoRA's roll/fold, FlexAttention
 * with the S² mask) on the same inputs.
 *
 * Layering: everything here returns a status and fills rows or text; nothing
 * prints. The CLI (runtime/cli) parses into s2_bench_opts, validates every spec
 * with s2_bench_prepare() before it touches a GPU, runs one case at a time with
 * s2_bench_run_case() and prints the rows it gets back.
 *
 * Conventions, shared with the peers file (/work/shared/peers):
 *   S² FLOPs of a forward = 2 * N * min(G, N) * d * H; forward + backward = 3.5x.
 *   Times are the median of per-run CUDA event times after warm-up.
 *   "peak" for s2lora is the bytes the bench allocates for one layer's fwd+bwd
 *   (q, k, v, do, o, dq, dk, dv, lse, delta): the kernels allocate nothing.
 *   The card's rate: once per run, before the cases, a dense bf16 GEMM C = A B with A, B, C
 *   [8192, 8192] through cuBLAS (fp32 accumulate), 2 * 8192^3 FLOPs; the CSV and JSON give
 *   every TF/s as a fraction of it, so a number reads as a share of what the card really does.
 */
#ifndef S2_BENCH_H
#define S2_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "gen/plan.h"
#include "gen/spec.h"
#include "runtime/core/rt.h"

#define S2_BENCH_MAX_SPECS 16
#define S2_BENCH_MAX_SETS 64
#define S2_BENCH_MAX_SEQLENS 32
#define S2_BENCH_MAX_TILES 8
#define S2_BENCH_DEFAULT_PEERS "bench/peers/attn_peers.py"
/* The implementations the peers script times (its PEERS; tests/test_bench.c checks the two
 * lists agree), for --peer-impls. */
#define S2_BENCH_PEER_IMPLS "sdpa-cudnn, sdpa-flash, flex-split, flex-roll"

/* Whether list is a comma-separated subset of S2_BENCH_PEER_IMPLS without repeats; if not,
 * why (the item and what is valid) into why. */
int s2_bench_peer_impls_valid(const char *list, char *why, size_t n);

typedef struct s2_bench_opts {
    const char *specs[S2_BENCH_MAX_SPECS];
    int n_specs;
    s2_spec_override sets[S2_BENCH_MAX_SETS];
    int n_sets;
    int seqlens[S2_BENCH_MAX_SEQLENS]; /* none: each spec's context_length */
    int n_seqlens;
    int reps_fwd, reps_fb, warmup;     /* defaults 20, 10, 5; --reps N sets both reps */
    const char *peers;                 /* the peers script; NULL with --no-peers */
    int peers_given;                   /* 1: --peers named it (a missing file is an error) */
    const char *peer_impls;            /* --peer-impls: the peers to run, a comma-separated
                                          subset of S2_BENCH_PEER_IMPLS; NULL: all of them */
    const char *csv, *json, *cache_dir;
    const char *tiles[S2_BENCH_MAX_TILES]; /* --tile, repeatable: one s2lora row each */
    int n_tiles;                           /* 0: one row with the plan's default tile */
    uint64_t seed;                     /* 0: from the clock (s2_bench_prepare picks one) */
    int no_gemm;                       /* 1: --no-gemm, the card's GEMM rate is not measured */
} s2_bench_opts;

/* The defaults of every field (reps 20 and 10, warm-up 5, the default peers script); the
 * CLI's option table (runtime/cli) fills the rest from the command line. */
void s2_bench_opts_default(s2_bench_opts *o);

/* One (spec, N) of the sweep: the spec reloaded with context_length=N, so G and S of a
 * group_ratio spec are re-derived for N exactly as the loader derives them. */
typedef struct s2_bench_case {
    s2_spec spec;
    int N;
} s2_bench_case;

/*
 * Loads every spec at every N (with the --set overrides), checks the output
 * paths' directories and the peers script, and picks the seed. Needs no GPU.
 * *cases is heap (free()).
 */
s2_status s2_bench_prepare(s2_bench_opts *o, s2_bench_case **cases, int *n_cases, s2_error *err);

/* One row of the table: s2lora's or one peer's numbers for one (spec, N). */
typedef struct s2_bench_row {
    char spec[S2_SPEC_NAME_MAX];
    char impl[32];        /* "s2lora", "sdpa-cudnn", ... */
    char mode[8];         /* the semantics the implementation computes: split | roll */
    const char *dtype;    /* "bf16" | "fp16" */
    int N, G, S, d, H, Hkv;
    double fwd_ms, fb_ms; /* NAN when not measured */
    double fwd_tflops, fb_tflops;
    double peak_gib;
    double rel_err;       /* relative L2 error of o vs s2lora's; NAN: not comparable */
    int failed;           /* s2lora: NaN in an output or an error; peers: did not run */
    char note[S2_PLAN_TILE_STR_MAX + 256]; /* "tuned; tile ...", an error: the tile fits whole */
} s2_bench_row;

/* Rows of a whole run, appended to case by case. */
typedef struct s2_bench_rows {
    s2_bench_row *row;
    int n, cap;
} s2_bench_rows;
void s2_bench_rows_free(s2_bench_rows *r);

/* State of one bench run across cases. */
typedef struct s2_bench_ctx {
    const s2_bench_opts *opts;
    s2_rt rt;
    int peers_off;  /* 1 once python3, torch or the script turned out to be missing */
    int case_no;    /* cases run so far: each draws its inputs from its own stream */
    char warn[512]; /* non-empty after a case that has a warning for the CLI to print (peers
                     * missing or failed); each s2_bench_run_case() starts it afresh */
} s2_bench_ctx;

/*
 * Runs one case: s2lora's forward and forward+backward, then the peers on the
 * same inputs. Appends one row for s2lora (failed on NaN or any error, with the
 * message in note: the sweep goes on) and one per peer. Returns an error only
 * when nothing can go on (out of host memory).
 */
s2_status s2_bench_run_case(s2_bench_ctx *ctx, const s2_bench_case *c, s2_bench_rows *rows,
                            s2_error *err);

/* The card's GEMM rate (bench.h's top): M = N = K = S2_BENCH_GEMM_DIM, bf16 in and out, fp32
 * accumulate, S2_BENCH_GEMM_WARMUP untimed runs then the median of S2_BENCH_GEMM_REPS. */
#define S2_BENCH_GEMM_DIM 8192
#define S2_BENCH_GEMM_WARMUP 10
#define S2_BENCH_GEMM_REPS 30

/*
 * Times that GEMM on the current device on fresh random inputs drawn from seed (A N(0, 1),
 * B N(0, 1/K), so C stays near N(0, 1)) and sets *tflops. Its buffers and cuBLAS handle are
 * freed before it returns, so the cases that follow have the whole card. Any error (cuBLAS missing: s2_blas_open's message; out of device memory;
 * a failed product) leaves *tflops NAN; the caller warns and goes on without the rate.
 */
s2_status s2_bench_gemm_rate(uint64_t seed, double *tflops, s2_error *err);

/* S² FLOPs of one forward: 2 * N * min(G, N) * d * H. */
double s2_bench_fwd_flops(int N, int G, int d, int H);
/* TFLOP/s of flops in ms; NAN when ms is not a positive number. */
double s2_bench_tflops(double flops, double ms);
/* The backward of a row, read from its two medians: *ms = fb_ms - fwd_ms and *tflops at 2.5
 * forwards of S² FLOPs (forward+backward 3.5 less the forward's 1); both NAN where either time
 * is missing or the difference is not positive (the two regions are timed apart, so the
 * difference is an estimate, not a time measured on its own). */
void s2_bench_bwd(const s2_bench_row *r, double *ms, double *tflops);
/* Median of v[0..n) (sorts v); NAN when n == 0. */
double s2_bench_median(double *v, int n);

/* Text forms of rows: a case's title line, the table (header once, then rows), CSV, JSON. */
void s2_bench_case_title(s2_buf *b, const s2_bench_case *c);
void s2_bench_table_header(s2_buf *b);
void s2_bench_table_row(s2_buf *b, const s2_bench_row *r);
/* "fastest peer fwd+bwd X ms (impl); ours Y ms = Z x the fastest peer" for rows[0..n) of one
 * case (s2lora's row first); nothing when no peer has a fwd+bwd time. */
void s2_bench_case_summary(s2_buf *b, const s2_bench_row *rows, int n);
/*
 * gemm_tflops: the card's rate from s2_bench_gemm_rate, NAN when not measured (--no-gemm, or it
 * failed). The CSV's last two columns, fwd_frac_of_gemm and fb_frac_of_gemm, are each row's
 * TF/s divided by it, empty when either is not a number; the columns before them are unchanged.
 */
void s2_bench_csv(s2_buf *b, const s2_bench_row *rows, int n, double gemm_tflops);
/* JSON {"device", "seed", "flops", "gemm_bf16_tflops", "rows": [...]}, each row with
 * "fwd_frac_of_gemm" and "fb_frac_of_gemm": the keys are always there, null where the CSV's
 * field is empty (a rate not measured, a row without that time), as every number not measured
 * is in this JSON. Heap string or NULL when out of memory. */
char *s2_bench_json(const s2_bench_row *rows, int n, const char *device, uint64_t seed,
                    double gemm_tflops);

#endif

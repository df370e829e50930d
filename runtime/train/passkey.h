/*
 * passkey.h — LongLoRA's passkey retrieval (its passkey_retrieval.py) on the byte-level
 * vocabulary: the prompt and the greedy decoding of the answer, without a device. The model
 * comes in as a function that gives the logits of the next token, so the scoring is tested
 * on the CPU; s2_passkey_run (train.h) passes the GPU model's.
 */
#ifndef S2_PASSKEY_H
#define S2_PASSKEY_H

#include <stdint.h>

#include "gen/util.h"

#define S2_PASSKEY_DIGITS 5
/* The answer after "The pass key is": a space, then the key's digits. LongLoRA compares the
 * generated ids with the tokenizer's ids of the key, which begin with the word-start piece
 * (the space); in bytes that is the token of ' '. */
#define S2_PASSKEY_ANSWER (1 + S2_PASSKEY_DIGITS)

typedef struct s2_passkey_prompt {
    int n;                          /* prompt tokens, BOS included: seqlen - S2_PASSKEY_ANSWER */
    int prefix, garbage;            /* filler characters before the information line; in all */
    char key[S2_PASSKEY_DIGITS + 1]; /* the key's digits, NUL-terminated */
    int32_t answer[S2_PASSKEY_ANSWER]; /* the tokens greedy decoding must produce */
} s2_passkey_prompt;

/*
 * Trial `trial` of `seed` at a context of seqlen tokens, into tok (room for cap >= seqlen):
 * BOS, then "TASK\nPREFIX\nThe pass key is K. Remember it. K is the pass key.\nSUFFIX\nWhat
 * is the pass key? The pass key is" (LongLoRA's lines joined by newlines), where PREFIX and
 * SUFFIX are the first characters of the filler sentence repeated (LongLoRA's garbage_inf),
 * their lengths drawn so that the key lies at a uniformly random depth and the prompt is
 * exactly seqlen - S2_PASSKEY_ANSWER tokens: with the answer it fills the context. K is a
 * five-digit number; both are drawn from (seed, trial) alone.
 */
s2_status s2_passkey_prompt_make(int seqlen, uint64_t seed, int trial, int32_t *tok, int cap,
                                 s2_passkey_prompt *p, s2_error *err);

/* The smallest seqlen s2_passkey_prompt_make accepts (a prompt with no filler). */
int s2_passkey_min_seqlen(void);

/* The logits (vocab floats, into row) of the token after tok[0..T). */
typedef s2_status (*s2_passkey_next_fn)(void *ctx, const int32_t *tok, int T, float *row,
                                        s2_error *err);

/*
 * Greedy decoding after the prompt in tok[0..p->n) (tok has room for p->n +
 * S2_PASSKEY_ANSWER): S2_PASSKEY_ANSWER steps, each appending the argmax of next's row (the
 * first of equal maxima), as generation does. picks (may be NULL) gets the decoded tokens;
 * *retrieved is 1 when they are p->answer, the space and every digit, else 0. row holds vocab
 * floats.
 */
s2_status s2_passkey_decode(const s2_passkey_prompt *p, int32_t *tok, int vocab, float *row,
                            s2_passkey_next_fn next, void *ctx, int *retrieved,
                            int32_t picks[S2_PASSKEY_ANSWER], s2_error *err);

#endif

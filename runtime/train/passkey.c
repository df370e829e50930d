/* passkey.c — LongLoRA's passkey prompt and the greedy decoding of its answer (passkey.h). */
#include "runtime/train/passkey.h"

#include <stdio.h>
#include <string.h>

#include "runtime/train/data.h"

static const char task[] = "There is an important info hidden inside a lot of irrelevant text. "
                           "Find it and memorize them. I will quiz you about the important "
                           "information there.";
static const char garbage[] = "The grass is green. The sky is blue. The sun is yellow. Here we "
                              "go. There and back again.";
static const char question[] = "What is the pass key? The pass key is";

/* "The pass key is K. Remember it. K is the pass key." without K, twice. */
enum { INFO_CHARS = (int)sizeof "The pass key is . Remember it.  is the pass key." - 1 +
                    2 * S2_PASSKEY_DIGITS };

/* Everything of the prompt but the filler: BOS, the task, four newlines, the information line
 * and the question. */
static int fixed_tokens(void)
{
    return 1 + (int)(sizeof task - 1) + 4 + INFO_CHARS + (int)(sizeof question - 1);
}

int s2_passkey_min_seqlen(void) { return fixed_tokens() + S2_PASSKEY_ANSWER; }

static uint64_t mix(uint64_t a, uint64_t b)
{
    uint64_t s = a + 0x9E3779B97F4A7C15ull * b;
    return s2_splitmix64(&s);
}

static int put_text(int32_t *tok, int at, const char *text)
{
    for (const unsigned char *c = (const unsigned char *)text; *c; c++)
        tok[at++] = (int32_t)(*c + S2_DATA_BYTE_OFFSET);
    return at;
}

/* The first n characters of the filler sentence repeated with a space between (garbage_inf). */
static int put_filler(int32_t *tok, int at, int n)
{
    const int period = (int)sizeof garbage; /* the sentence and its space */
    for (int i = 0; i < n; i++) {
        const int c = i % period;
        tok[at++] = (int32_t)((c == period - 1 ? ' ' : (unsigned char)garbage[c]) +
                              S2_DATA_BYTE_OFFSET);
    }
    return at;
}

s2_status s2_passkey_prompt_make(int seqlen, uint64_t seed, int trial, int32_t *tok, int cap,
                                 s2_passkey_prompt *p, s2_error *err)
{
    memset(p, 0, sizeof *p);
    if (seqlen < s2_passkey_min_seqlen())
        return s2_error_set(err, S2_ERR_INVALID,
                            "passkey: seqlen %d: the prompt without filler and the answer take "
                            "%d tokens", seqlen, s2_passkey_min_seqlen());
    if (cap < seqlen || trial < 0)
        return s2_error_set(err, S2_ERR_INVALID,
                            "passkey: trial %d (>= 0) into %d tokens (>= seqlen %d)", trial, cap,
                            seqlen);
    const uint64_t r = mix(seed, (uint64_t)trial);
    snprintf(p->key, sizeof p->key, "%d", 10000 + (int)(r % 90000));
    p->n = seqlen - S2_PASSKEY_ANSWER;
    p->garbage = p->n - fixed_tokens();
    p->prefix = (int)(mix(r, 7) % (uint64_t)(p->garbage + 1));
    char info[INFO_CHARS + 1];
    snprintf(info, sizeof info, "The pass key is %s. Remember it. %s is the pass key.", p->key,
             p->key);
    int n = 0;
    tok[n++] = (int32_t)S2_DATA_BYTE_BOS;
    n = put_text(tok, n, task);
    n = put_text(tok, n, "\n");
    n = put_filler(tok, n, p->prefix);
    n = put_text(tok, n, "\n");
    n = put_text(tok, n, info);
    n = put_text(tok, n, "\n");
    n = put_filler(tok, n, p->garbage - p->prefix);
    n = put_text(tok, n, "\n");
    n = put_text(tok, n, question);
    if (n != p->n) /* the lengths above are the definition of fixed_tokens */
        return s2_error_set(err, S2_ERR_CHECK, "passkey: a prompt of %d tokens, %d expected", n,
                            p->n);
    p->answer[0] = (int32_t)(' ' + S2_DATA_BYTE_OFFSET);
    for (int i = 0; i < S2_PASSKEY_DIGITS; i++)
        p->answer[1 + i] = (int32_t)((unsigned char)p->key[i] + S2_DATA_BYTE_OFFSET);
    return S2_OK;
}

s2_status s2_passkey_decode(const s2_passkey_prompt *p, int32_t *tok, int vocab, float *row,
                            s2_passkey_next_fn next, void *ctx, int *retrieved,
                            int32_t picks[S2_PASSKEY_ANSWER], s2_error *err)
{
    *retrieved = 0;
    int ok = 1;
    for (int i = 0; i < S2_PASSKEY_ANSWER; i++) {
        s2_status st = next(ctx, tok, p->n + i, row, err);
        if (st)
            return st;
        int best = 0;
        for (int v = 1; v < vocab; v++)
            if (row[v] > row[best])
                best = v;
        ok &= best == p->answer[i];
        tok[p->n + i] = best;
        if (picks)
            picks[i] = best;
    }
    *retrieved = ok;
    return S2_OK;
}

/*
 * test_passkey.c — LongLoRA's passkey retrieval as `s2lora eval --passkey` runs it
 * (runtime/train/passkey.h), without a GPU: the prompt against LongLoRA's layout spelled out
 * here, and the greedy decoding's verdict with models given as next-token functions. A model
 * that continues the document as LongLoRA's answer does (" NNNNN" after "The pass key is")
 * must count as retrieved: the answer's first token is the space, not the first digit.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/train/data.h"
#include "runtime/train/passkey.h"

#define V ((int)S2_DATA_BYTE_VOCAB)

/* LongLoRA's passkey_retrieval.py strings, independent of passkey.c's. */
static const char *TASK = "There is an important info hidden inside a lot of irrelevant text. "
                          "Find it and memorize them. I will quiz you about the important "
                          "information there.";
static const char *GARBAGE = "The grass is green. The sky is blue. The sun is yellow. Here we "
                             "go. There and back again.";
static const char *QUESTION = "What is the pass key? The pass key is";

/* The bytes of tokens tok[from..to) (all must be byte tokens) into a NUL-terminated string. */
static char *text_of(const int32_t *tok, int from, int to)
{
    char *s = malloc((size_t)(to - from) + 1);
    cr_assert_not_null(s);
    for (int i = from; i < to; i++) {
        const int c = s2_data_byte_of((uint32_t)tok[i]);
        cr_assert(c > 0, "token %d at %d is not a byte", tok[i], i);
        s[i - from] = (char)c;
    }
    s[to - from] = 0;
    return s;
}

/* LongLoRA's garbage_inf[:n]: " ".join([garbage] * 5000)[:n]. */
static char *garbage_inf(int n)
{
    const size_t g = strlen(GARBAGE);
    char *s = malloc((size_t)n + g + 2), *at = s;
    cr_assert_not_null(s);
    while (at - s < n) {
        if (at > s)
            *at++ = ' ';
        memcpy(at, GARBAGE, g);
        at += g;
    }
    s[n] = 0;
    return s;
}

static void check_prompt(int seqlen, uint64_t seed, int trial, s2_passkey_prompt *p)
{
    int32_t *tok = malloc((size_t)seqlen * sizeof *tok);
    s2_error err = {0};
    cr_assert_eq(s2_passkey_prompt_make(seqlen, seed, trial, tok, seqlen, p, &err), S2_OK, "%s",
                 err.msg);
    cr_assert_eq(p->n, seqlen - S2_PASSKEY_ANSWER);
    cr_assert_eq(tok[0], (int32_t)S2_DATA_BYTE_BOS);
    cr_assert_eq(strlen(p->key), 5);
    const int key = atoi(p->key);
    cr_assert(key >= 10000 && key <= 99999, "key %s", p->key);
    cr_assert(p->prefix >= 0 && p->prefix <= p->garbage);
    char *pre = garbage_inf(p->prefix), *suf = garbage_inf(p->garbage - p->prefix);
    const size_t want_n = strlen(TASK) + strlen(pre) + strlen(suf) + strlen(QUESTION) + 200;
    char *want = malloc(want_n);
    snprintf(want, want_n, "%s\n%s\nThe pass key is %s. Remember it. %s is the pass key.\n%s\n%s",
             TASK, pre, p->key, p->key, suf, QUESTION);
    char *got = text_of(tok, 1, p->n);
    cr_assert_str_eq(got, want, "seqlen %d trial %d", seqlen, trial);
    /* the answer: a space, then the key's digits */
    cr_assert_eq(p->answer[0], (int32_t)(' ' + S2_DATA_BYTE_OFFSET));
    for (int i = 0; i < 5; i++)
        cr_assert_eq(p->answer[1 + i], (int32_t)(p->key[i] + S2_DATA_BYTE_OFFSET));
    free(got);
    free(want);
    free(pre);
    free(suf);
    free(tok);
}

Test(passkey, prompt_is_longloras_and_fills_the_context)
{
    s2_passkey_prompt p, q;
    const int min = s2_passkey_min_seqlen();
    check_prompt(min, 1, 0, &p);
    cr_assert_eq(p.garbage, 0);
    for (int seqlen = min + 1; seqlen <= min + 200; seqlen += 37)
        check_prompt(seqlen, 3, seqlen, &p);
    /* 2048: the key at a uniformly random depth: both ends are reached, keys vary */
    int lo = 1 << 30, hi = -1, same_key = 0;
    char first[8];
    for (int t = 0; t < 200; t++) {
        check_prompt(2048, 5, t, &p);
        lo = p.prefix < lo ? p.prefix : lo;
        hi = p.prefix > hi ? p.prefix : hi;
        if (t == 0)
            memcpy(first, p.key, sizeof first);
        else
            same_key += !strcmp(first, p.key);
    }
    cr_assert_lt(lo, p.garbage / 10);
    cr_assert_gt(hi, p.garbage - p.garbage / 10);
    cr_assert_lt(same_key, 5);
    /* the same (seed, trial), the same prompt; another seed, another */
    check_prompt(2048, 5, 17, &p);
    check_prompt(2048, 5, 17, &q);
    cr_assert(!memcmp(&p, &q, sizeof p));
    check_prompt(2048, 6, 17, &q);
    cr_assert(strcmp(p.key, q.key) || p.prefix != q.prefix);
}

Test(passkey, prompt_errors)
{
    s2_passkey_prompt p;
    s2_error err = {0};
    const int min = s2_passkey_min_seqlen();
    int32_t tok[4096];
    cr_assert_eq(s2_passkey_prompt_make(min - 1, 1, 0, tok, 4096, &p, &err), S2_ERR_INVALID);
    char want[128];
    snprintf(want, sizeof want, "seqlen %d: the prompt without filler and the answer take %d",
             min - 1, min);
    cr_assert(strstr(err.msg, want), "%s", err.msg);
    s2_error_clear(&err);
    cr_assert_eq(s2_passkey_prompt_make(600, 1, 0, tok, 599, &p, &err), S2_ERR_INVALID);
    cr_assert(strstr(err.msg, "into 599 tokens (>= seqlen 600)"), "%s", err.msg);
    s2_error_clear(&err);
}

/* ---- models as next-token functions ---- */

typedef struct model {
    int mode;  /* 0: continues the document; 1: the digits right after "is"; 2: digit 3 wrong */
    int calls; /* next() calls, each checked against the tokens decoded so far */
    int n;     /* the prompt's length */
    char cont[16];
} model;

/* What follows the question in LongLoRA's document: " K." with K read from the information
 * line of the prompt's text (the model knows nothing else). */
static void read_key(model *m, const int32_t *tok, int n)
{
    char *text = text_of(tok, 1, n);
    const char *info = strstr(text, "\nThe pass key is ");
    cr_assert_not_null(info);
    char key[6] = {0};
    memcpy(key, info + strlen("\nThe pass key is "), 5);
    cr_assert(strlen(text) >= strlen(QUESTION) &&
              !strcmp(text + strlen(text) - strlen(QUESTION), QUESTION));
    snprintf(m->cont, sizeof m->cont, m->mode == 1 ? "%s." : " %s.", key);
    if (m->mode == 2)
        m->cont[3] = m->cont[3] == '9' ? '0' : m->cont[3] + 1;
    free(text);
}

static s2_status next_fn(void *ctx, const int32_t *tok, int T, float *row, s2_error *err)
{
    model *m = ctx;
    cr_assert_eq(T, m->n + m->calls, "step %d sees %d tokens", m->calls, T);
    if (m->calls == 0)
        read_key(m, tok, T);
    else /* greedy decoding feeds the previous pick back */
        cr_assert_eq(tok[T - 1], m->cont[m->calls - 1] + (int)S2_DATA_BYTE_OFFSET);
    for (int v = 0; v < V; v++)
        row[v] = (float)((v * 37) % 11) * 0.01f; /* noise below the answer's logit */
    row[(unsigned char)m->cont[m->calls] + S2_DATA_BYTE_OFFSET] = 4.0f;
    m->calls++;
    return S2_OK;
}

static int decode(int mode, int seqlen, int trial, int32_t picks[S2_PASSKEY_ANSWER])
{
    int32_t *tok = malloc((size_t)seqlen * sizeof *tok);
    float row[V];
    s2_passkey_prompt p;
    s2_error err = {0};
    cr_assert_eq(s2_passkey_prompt_make(seqlen, 9, trial, tok, seqlen, &p, &err), S2_OK);
    model m = {.mode = mode, .n = p.n};
    int ok = -1;
    cr_assert_eq(s2_passkey_decode(&p, tok, V, row, next_fn, &m, &ok, picks, &err), S2_OK);
    cr_assert_eq(m.calls, S2_PASSKEY_ANSWER);
    for (int i = 0; i < S2_PASSKEY_ANSWER; i++)
        cr_assert_eq(tok[p.n + i], picks[i]); /* the picks, appended */
    free(tok);
    return ok;
}

Test(passkey, a_model_that_continues_the_document_retrieves)
{
    int32_t picks[S2_PASSKEY_ANSWER];
    for (int t = 0; t < 20; t++) {
        cr_assert_eq(decode(0, 1024, t, picks), 1, "trial %d", t);
        cr_assert_eq(picks[0], ' ' + (int)S2_DATA_BYTE_OFFSET);
    }
}

Test(passkey, digits_without_the_space_or_a_wrong_digit_miss)
{
    int32_t picks[S2_PASSKEY_ANSWER];
    for (int t = 0; t < 5; t++) {
        cr_assert_eq(decode(1, 1024, t, picks), 0, "trial %d", t);
        cr_assert_eq(decode(2, 1024, t, picks), 0, "trial %d", t);
    }
}

static s2_status ties(void *ctx, const int32_t *tok, int T, float *row, s2_error *err)
{
    for (int v = 0; v < V; v++)
        row[v] = 0.0f;
    row[' ' + S2_DATA_BYTE_OFFSET] = row[' ' + S2_DATA_BYTE_OFFSET - 1] = 1.0f;
    return S2_OK;
}

static s2_status failing(void *ctx, const int32_t *tok, int T, float *row, s2_error *err)
{
    return s2_error_set(err, S2_ERR_CUDA, "stand-in failure at %d tokens", T);
}

Test(passkey, ties_take_the_first_and_errors_pass_through)
{
    int32_t tok[1024], picks[S2_PASSKEY_ANSWER];
    float row[V];
    s2_passkey_prompt p;
    s2_error err = {0};
    cr_assert_eq(s2_passkey_prompt_make(1000, 1, 0, tok, 1024, &p, &err), S2_OK);
    int ok = -1;
    cr_assert_eq(s2_passkey_decode(&p, tok, V, row, ties, NULL, &ok, picks, &err), S2_OK);
    cr_assert_eq(ok, 0);
    cr_assert_eq(picks[0], ' ' + (int)S2_DATA_BYTE_OFFSET - 1);
    ok = -1;
    cr_assert_eq(s2_passkey_decode(&p, tok, V, row, failing, NULL, &ok, NULL, &err), S2_ERR_CUDA);
    cr_assert_eq(ok, 0);
    cr_assert(strstr(err.msg, "stand-in failure at 994 tokens"), "%s", err.msg);
    s2_error_clear(&err);
}

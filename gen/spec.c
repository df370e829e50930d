/*
 * spec.c — the spec loader: YAML text (plus --set overrides) -> a validated,
 * defaulted and derived s2_spec.
 *
 * Three passes, so that every error can name the place the user must edit:
 *
 *  1. libyaml's event API builds a small tree whose nodes keep their marks.
 *     The event API rather than the document API because the document API
 *     silently resolves aliases and forgets anchors and explicit tags, which
 *     a spec refuses by name (a spec must read the same to a human and to us).
 *  2. The tree, then each --set, is walked against one key table (keys[]).
 *     Every value is type- and range-checked where it was written and lands
 *     in a slot that remembers its position. Overrides go through exactly
 *     the same value code, so a value means the same in a file and on the
 *     command line.
 *  3. The slots are resolved: required keys, defaults, derived values, and
 *     the checks that involve more than one key (they run after overrides,
 *     so a --set can repair or break a combination).
 *
 * Nothing here prints or exits; the first problem becomes err->msg.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "spec.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

/* ------------------------------------------------------------------------ */
/* The key table                                                             */
/* ------------------------------------------------------------------------ */

enum { SEC_TOP, SEC_MODEL, SEC_S2ATTN, SEC_LORA, SEC_N };
static const char *const sect_names[SEC_N] = {"", "model", "s2attn", "lora"};

typedef enum vtype { V_INT, V_REAL, V_BOOL, V_NAME, V_ENUM, V_LIST } vtype;

enum key_id {
    K_NAME, K_DTYPE, K_ARCH, K_CONTEXT,
    K_HIDDEN, K_INTER, K_LAYERS, K_HEADS, K_KV, K_HEAD_DIM, K_VOCAB, K_THETA, K_MAXPOS, K_EPS,
    K_TIE,
    K_GSIZE, K_GRATIO, K_SHIFT, K_SMODE, K_SCALE,
    K_RANK, K_ALPHA, K_DROPOUT, K_TARGETS, K_TRAIN,
    K_N
};

/* Enum and list values, in the order of their enum / bit values. */
static const char *const dtype_names[] = {"bf16", "fp16"};
static const char *const mode_names[] = {"split", "roll"};
static const char *const arch_names[] = {"sm_80", "sm_86", "sm_89", "sm_90", "sm_90a"};
static const char *const target_names[] = {"q_proj",    "k_proj", "v_proj",   "o_proj",
                                           "gate_proj", "up_proj", "down_proj"};
static const char *const train_names[] = {"embed", "norm", "lm_head"};
#define NAMES(a) .names = a, .n_names = (int)(sizeof a / sizeof a[0])

static const int head_dims[] = {64, 96, 128, 256}; /* what the attention templates support */

typedef struct keydef {
    int sect;
    const char *leaf;
    const char *dotted;
    const char *alias;        /* Hugging Face spelling of the leaf, or NULL */
    const char *alias_dotted; /* the same with its section */
    vtype type;
    int required;
    long imin, imax;                     /* V_INT: the valid range */
    double lo, hi;                       /* V_REAL: the valid range ... */
    int lo_open, hi_open;                /* ... with open ends: (lo / hi) */
    int zero_ok;                         /* V_REAL: 0 is valid besides the range (off) */
    const char *why;                     /* V_INT, V_REAL: why the range is what it is */
    const char *const *names;            /* V_ENUM, V_LIST */
    int n_names;
    int nonempty;                        /* V_LIST: an empty list is an error */
} keydef;

/* The reasons of the ranges (spec.h, specs/README.md), shown with an out-of-range value. */
#define WHY_TOKENS "RoPE positions stay exact in fp32, far from 32-bit int limits"
#define WHY_WIDTH "the kernels and the LoRA linears index widths in 32-bit int"
#define WHY_HEADS "heads are a launch grid's y, and heads x head_dim is indexed in 32-bit int"
#define WHY_REAL "a normal fp32 number with room to spare"
#define WHY_THETA "RoPE's frequencies theta^(-2j/d) stay <= 1, in fp32"
#define WHY_DROPOUT "0 is off; the 32-bit mask cannot resolve a smaller p, and a larger one " \
                    "rounds to 1 in fp32"
#define RANGE(a, b) .imin = (a), .imax = (b)
#define REAL_RANGE .lo = S2_SPEC_REAL_MIN, .hi = S2_SPEC_REAL_MAX, .why = WHY_REAL

static const keydef keys[K_N] = {
    [K_NAME] = {SEC_TOP, "name", "name", .type = V_NAME, .required = 1},
    [K_DTYPE] = {SEC_TOP, "dtype", "dtype", .type = V_ENUM, NAMES(dtype_names)},
    [K_ARCH] = {SEC_TOP, "arch", "arch", .type = V_LIST, NAMES(arch_names), .nonempty = 1},
    [K_CONTEXT] = {SEC_TOP, "context_length", "context_length", .type = V_INT, .required = 1,
                   RANGE(1, S2_SPEC_MAX_TOKENS), .why = WHY_TOKENS},
    [K_HIDDEN] = {SEC_MODEL, "hidden_size", "model.hidden_size", .type = V_INT, .required = 1,
                  RANGE(1, S2_SPEC_MAX_HIDDEN), .why = WHY_WIDTH},
    [K_INTER] = {SEC_MODEL, "intermediate_size", "model.intermediate_size", .type = V_INT,
                 .required = 1, RANGE(1, S2_SPEC_MAX_INTER), .why = WHY_WIDTH},
    [K_LAYERS] = {SEC_MODEL, "num_layers", "model.num_layers", "num_hidden_layers",
                  "model.num_hidden_layers", .type = V_INT, .required = 1,
                  RANGE(1, S2_SPEC_MAX_LAYERS),
                  .why = "tensor counts and names are formed from it in 32-bit int"},
    [K_HEADS] = {SEC_MODEL, "num_heads", "model.num_heads", "num_attention_heads",
                 "model.num_attention_heads", .type = V_INT, .required = 1,
                 RANGE(2, S2_SPEC_MAX_HEADS), .why = WHY_HEADS},
    [K_KV] = {SEC_MODEL, "num_kv_heads", "model.num_kv_heads", "num_key_value_heads",
              "model.num_key_value_heads", .type = V_INT, RANGE(1, S2_SPEC_MAX_HEADS),
              .why = WHY_HEADS},
    [K_HEAD_DIM] = {SEC_MODEL, "head_dim", "model.head_dim", .type = V_INT}, /* head_dims[] */
    [K_VOCAB] = {SEC_MODEL, "vocab_size", "model.vocab_size", .type = V_INT, .required = 1,
                 RANGE(1, S2_SPEC_MAX_VOCAB), .why = WHY_WIDTH},
    [K_THETA] = {SEC_MODEL, "rope_theta", "model.rope_theta", .type = V_REAL, .lo = 1,
                 .hi = S2_SPEC_REAL_MAX, .why = WHY_THETA},
    [K_MAXPOS] = {SEC_MODEL, "max_position_embeddings", "model.max_position_embeddings",
                  .type = V_INT, .required = 1, RANGE(1, S2_SPEC_MAX_TOKENS), .why = WHY_TOKENS},
    [K_EPS] = {SEC_MODEL, "rms_norm_eps", "model.rms_norm_eps", .type = V_REAL, REAL_RANGE},
    [K_TIE] = {SEC_MODEL, "tie_word_embeddings", "model.tie_word_embeddings", .type = V_BOOL},
    [K_GSIZE] = {SEC_S2ATTN, "group_size", "s2attn.group_size", .type = V_INT,
                 RANGE(1, S2_SPEC_MAX_TOKENS), .why = WHY_TOKENS},
    [K_GRATIO] = {SEC_S2ATTN, "group_ratio", "s2attn.group_ratio", .type = V_REAL, .lo = 0,
                  .hi = 1, .lo_open = 1, .why = "a fraction of context_length"},
    [K_SHIFT] = {SEC_S2ATTN, "shift", "s2attn.shift", .type = V_INT,
                 RANGE(0, S2_SPEC_MAX_TOKENS - 1), .why = "below group_size"},
    [K_SMODE] = {SEC_S2ATTN, "shift_mode", "s2attn.shift_mode", .type = V_ENUM,
                 NAMES(mode_names)},
    [K_SCALE] = {SEC_S2ATTN, "softmax_scale", "s2attn.softmax_scale", .type = V_REAL,
                 REAL_RANGE},
    [K_RANK] = {SEC_LORA, "rank", "lora.rank", .type = V_INT, RANGE(1, S2_SPEC_MAX_RANK),
                .why = WHY_WIDTH},
    [K_ALPHA] = {SEC_LORA, "alpha", "lora.alpha", .type = V_REAL, REAL_RANGE},
    [K_DROPOUT] = {SEC_LORA, "dropout", "lora.dropout", .type = V_REAL,
                   .lo = S2_SPEC_DROPOUT_MIN, .hi = S2_SPEC_DROPOUT_MAX, .zero_ok = 1,
                   .why = WHY_DROPOUT},
    [K_TARGETS] = {SEC_LORA, "targets", "lora.targets", .type = V_LIST, NAMES(target_names),
                   .nonempty = 1},
    [K_TRAIN] = {SEC_LORA, "trainable", "lora.trainable", .type = V_LIST, NAMES(train_names)},
};

/* ------------------------------------------------------------------------ */
/* Load state and errors                                                     */
/* ------------------------------------------------------------------------ */

/* Where something was written: a file position, or a whole --set argument. */
typedef struct where {
    const char *file; /* the name messages use for the spec */
    const char *set;  /* the --set text, when it came from one */
    int set_index;    /* 1-based index of that --set */
    int line, col;    /* 1-based; 0 when there is no position */
} where;

/* One key's value as given (not yet defaulted). */
typedef struct slot {
    int given;
    where key;     /* the key in the file, for "first given at line N" */
    const char *spelling;
    where at;      /* the value's position */
    long i;        /* V_INT, V_BOOL, V_ENUM (index) */
    double d;      /* V_REAL */
    unsigned bits; /* V_LIST */
    char s[S2_SPEC_NAME_MAX];
} slot;

typedef struct ctx {
    const char *file;
    s2_error *err;
    slot slot[K_N];
    where sect_at[SEC_N]; /* where "model:" etc. was written; line 0 when absent */
} ctx;

static void spec_verror(const ctx *c, s2_status st, const where *w, const char *fmt, va_list ap)
{
    char *msg = NULL;
    if (vasprintf(&msg, fmt, ap) < 0) {
        s2_error_set(c->err, S2_ERR_NOMEM, "out of memory");
        return;
    }
    if (w->set)
        s2_error_set(c->err, st, "--set %s: error: %s", w->set, msg);
    else if (w->line > 0)
        s2_error_set(c->err, st, "%s:%d:%d: error: %s", w->file, w->line, w->col, msg);
    else
        s2_error_set(c->err, st, "%s: error: %s", w->file, msg);
    free(msg);
}

__attribute__((format(printf, 4, 5))) static s2_status
spec_fail(const ctx *c, s2_status st, const where *w, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    spec_verror(c, st, w, fmt, ap);
    va_end(ap);
    return c->err ? c->err->status : st;
}

/* ------------------------------------------------------------------------ */
/* YAML -> tree                                                              */
/* ------------------------------------------------------------------------ */

/* Specs are three levels deep; anything much deeper is a mistake, and the
 * limit keeps the recursive builder's stack bounded on hostile input. */
#define YT_MAX_DEPTH 32

typedef enum { YN_SCALAR, YN_MAP, YN_SEQ } yn_kind;

typedef struct ynode {
    yn_kind kind;
    int line, col; /* 1-based */
    char *text;    /* scalar value, NUL-terminated */
    size_t len;
    int plain;     /* written without quotes (so "4096" in quotes stays a string) */
    struct ynode **kid; /* map: key, value, key, value...; seq: items */
    int n, cap;
} ynode;

/* Why a text is not one usable YAML document. */
typedef struct yprob {
    s2_status st;
    int line, col; /* 1-based, 0 when unknown */
    char msg[320];
} yprob;

static void yt_free(ynode *n)
{
    if (!n)
        return;
    for (int i = 0; i < n->n; i++)
        yt_free(n->kid[i]);
    free(n->kid);
    free(n->text);
    free(n);
}

__attribute__((format(printf, 5, 6))) static void yt_prob(yprob *pr, s2_status st, int line,
                                                          int col, const char *fmt, ...)
{
    pr->st = st;
    pr->line = line;
    pr->col = col;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pr->msg, sizeof pr->msg, fmt, ap);
    va_end(ap);
}

/* libyaml's own problem text, with a line/col even for reader errors (which
 * only carry a byte offset). */
static void yt_syntax(const yaml_parser_t *p, const char *text, yprob *pr)
{
    if (p->error == YAML_MEMORY_ERROR) {
        yt_prob(pr, S2_ERR_NOMEM, 0, 0, "out of memory");
        return;
    }
    const char *problem = p->problem ? p->problem : "unknown problem";
    if (p->error == YAML_READER_ERROR) {
        int line = 1, col = 1;
        for (size_t i = 0; i < p->problem_offset && text[i]; i++) {
            if (text[i] == '\n') {
                line++;
                col = 1;
            } else {
                col++;
            }
        }
        yt_prob(pr, S2_ERR_PARSE, line, col, "not valid YAML: %s (byte 0x%02x)", problem,
                (unsigned)p->problem_value & 0xffu);
        return;
    }
    int line = (int)p->problem_mark.line + 1, col = (int)p->problem_mark.column + 1;
    if (p->context)
        yt_prob(pr, S2_ERR_PARSE, line, col, "not valid YAML: %s (%s started at line %d)",
                problem, p->context, (int)p->context_mark.line + 1);
    else
        yt_prob(pr, S2_ERR_PARSE, line, col, "not valid YAML: %s", problem);
}

static int yt_next(yaml_parser_t *p, yaml_event_t *ev, const char *text, yprob *pr)
{
    if (yaml_parser_parse(p, ev))
        return 1;
    yt_syntax(p, text, pr);
    return 0;
}

static int yt_push(ynode *n, ynode *k)
{
    if (n->n == n->cap) {
        int cap = n->cap ? n->cap * 2 : 8;
        ynode **kid = realloc(n->kid, (size_t)cap * sizeof *kid);
        if (!kid)
            return 0;
        n->kid = kid;
        n->cap = cap;
    }
    n->kid[n->n++] = k;
    return 1;
}

/* Anchors, aliases and explicit tags are valid YAML but make a spec read
 * differently from what it means; refuse them with a clear reason. */
static int yt_plain_yaml(const yaml_event_t *ev, const yaml_char_t *anchor, const yaml_char_t *tag,
                         yprob *pr)
{
    int line = (int)ev->start_mark.line + 1, col = (int)ev->start_mark.column + 1;
    if (anchor) {
        yt_prob(pr, S2_ERR_SPEC, line, col,
                "YAML anchors (&%s) are not supported in specs; write each value out", anchor);
        return 0;
    }
    if (tag) {
        yt_prob(pr, S2_ERR_SPEC, line, col,
                "YAML tags (%s) are not supported in specs; write plain values", tag);
        return 0;
    }
    return 1;
}

static ynode *yt_node(yaml_parser_t *p, yaml_event_t *ev, const char *text, int depth,
                      yprob *pr);

/* Reads children until the collection's end event. */
static int yt_children(yaml_parser_t *p, ynode *n, const char *text, int depth, yprob *pr)
{
    for (;;) {
        yaml_event_t ev;
        if (!yt_next(p, &ev, text, pr))
            return 0;
        if (ev.type == YAML_SEQUENCE_END_EVENT || ev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ev);
            return 1;
        }
        ynode *k = yt_node(p, &ev, text, depth + 1, pr);
        if (!k)
            return 0;
        if (n->kind == YN_MAP && n->n % 2 == 0 && k->kind != YN_SCALAR) {
            yt_prob(pr, S2_ERR_SPEC, k->line, k->col,
                    "mapping keys must be plain words, not a %s",
                    k->kind == YN_MAP ? "mapping" : "list");
            yt_free(k);
            return 0;
        }
        if (!yt_push(n, k)) {
            yt_free(k);
            yt_prob(pr, S2_ERR_NOMEM, 0, 0, "out of memory");
            return 0;
        }
    }
}

static ynode *yt_scalar(ynode *n, const yaml_event_t *ev, yprob *pr)
{
    size_t len = ev->data.scalar.length;
    n->text = malloc(len + 1);
    if (!n->text) {
        yt_prob(pr, S2_ERR_NOMEM, 0, 0, "out of memory");
        yt_free(n);
        return NULL;
    }
    memcpy(n->text, ev->data.scalar.value, len);
    n->text[len] = '\0';
    n->len = len;
    n->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
    /* Every later comparison is a C string compare; an embedded NUL would
     * make "bf16\0junk" read as bf16. */
    if (strlen(n->text) != len) {
        yt_prob(pr, S2_ERR_SPEC, n->line, n->col, "strings must not contain NUL characters");
        yt_free(n);
        return NULL;
    }
    return n;
}

/* Builds the node that starts with *ev; always deletes *ev. */
static ynode *yt_node(yaml_parser_t *p, yaml_event_t *ev, const char *text, int depth,
                      yprob *pr)
{
    int line = (int)ev->start_mark.line + 1, col = (int)ev->start_mark.column + 1;
    ynode *n = NULL;
    int ok = 0;
    if (depth > YT_MAX_DEPTH) {
        yt_prob(pr, S2_ERR_SPEC, line, col, "nested too deeply (a spec is at most 3 levels)");
        goto out;
    }
    switch (ev->type) {
    case YAML_ALIAS_EVENT:
        yt_prob(pr, S2_ERR_SPEC, line, col,
                "YAML aliases (*%s) are not supported in specs; write each value out",
                ev->data.alias.anchor);
        goto out;
    case YAML_SCALAR_EVENT:
        ok = yt_plain_yaml(ev, ev->data.scalar.anchor, ev->data.scalar.tag, pr);
        break;
    case YAML_SEQUENCE_START_EVENT:
        ok = yt_plain_yaml(ev, ev->data.sequence_start.anchor, ev->data.sequence_start.tag, pr);
        break;
    case YAML_MAPPING_START_EVENT:
        ok = yt_plain_yaml(ev, ev->data.mapping_start.anchor, ev->data.mapping_start.tag, pr);
        break;
    default:
        yt_prob(pr, S2_ERR_PARSE, line, col, "not valid YAML: unexpected event");
        goto out;
    }
    if (!ok)
        goto out;
    n = calloc(1, sizeof *n);
    if (!n) {
        yt_prob(pr, S2_ERR_NOMEM, 0, 0, "out of memory");
        goto out;
    }
    n->line = line;
    n->col = col;
    if (ev->type == YAML_SCALAR_EVENT) {
        n->kind = YN_SCALAR;
        n = yt_scalar(n, ev, pr);
        goto out;
    }
    n->kind = ev->type == YAML_MAPPING_START_EVENT ? YN_MAP : YN_SEQ;
    if (!yt_children(p, n, text, depth, pr)) {
        yt_free(n);
        n = NULL;
    }
out:
    yaml_event_delete(ev);
    return n;
}

/*
 * Parses text (len bytes) as one YAML document. *root is NULL when the
 * stream holds no document (empty or comments only). Returns 0 with *pr set
 * on any problem.
 */
static int yt_parse(const char *text, size_t len, ynode **root, yprob *pr)
{
    *root = NULL;
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) {
        yt_prob(pr, S2_ERR_NOMEM, 0, 0, "out of memory");
        return 0;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    yaml_event_t ev;
    int ok = 0;
    ynode *doc = NULL;
    if (!yt_next(&p, &ev, text, pr)) /* stream start */
        goto out;
    yaml_event_delete(&ev);
    if (!yt_next(&p, &ev, text, pr))
        goto out;
    if (ev.type == YAML_STREAM_END_EVENT) {
        yaml_event_delete(&ev);
        ok = 1;
        goto out;
    }
    yaml_event_delete(&ev); /* document start */
    if (!yt_next(&p, &ev, text, pr))
        goto out;
    doc = yt_node(&p, &ev, text, 0, pr);
    if (!doc)
        goto out;
    if (!yt_next(&p, &ev, text, pr)) /* document end */
        goto out;
    yaml_event_delete(&ev);
    if (!yt_next(&p, &ev, text, pr))
        goto out;
    if (ev.type == YAML_DOCUMENT_START_EVENT) {
        yt_prob(pr, S2_ERR_SPEC, (int)ev.start_mark.line + 1, (int)ev.start_mark.column + 1,
                "a spec is one YAML document, found a second one here");
        yaml_event_delete(&ev);
        goto out;
    }
    yaml_event_delete(&ev);
    *root = doc;
    doc = NULL;
    ok = 1;
out:
    yt_free(doc);
    yaml_parser_delete(&p);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */
/* ------------------------------------------------------------------------ */

static where spec_at(const ctx *c, const where *base, const ynode *n)
{
    if (base && base->set)
        return *base; /* a --set has one position: the whole argument */
    return (where){.file = c->file, .line = n->line, .col = n->col};
}

static int yn_is_null(const ynode *n)
{
    if (n->kind != YN_SCALAR || !n->plain)
        return 0;
    return n->len == 0 || !strcmp(n->text, "~") || !strcmp(n->text, "null") ||
           !strcmp(n->text, "Null") || !strcmp(n->text, "NULL");
}

/* A short, printable rendering of what the user wrote, for "got ...". */
static void spec_describe(const ynode *n, char *buf, size_t size)
{
    if (n->kind == YN_MAP) {
        snprintf(buf, size, "a mapping");
        return;
    }
    if (n->kind == YN_SEQ) {
        snprintf(buf, size, "a list");
        return;
    }
    if (yn_is_null(n)) {
        snprintf(buf, size, "nothing (null)");
        return;
    }
    char shown[48];
    size_t k = 0;
    for (size_t i = 0; i < n->len && k < sizeof shown - 4; i++)
        shown[k++] = isprint((unsigned char)n->text[i]) ? n->text[i] : '?';
    if (k < n->len)
        shown[k++] = '.', shown[k++] = '.', shown[k++] = '.';
    shown[k] = '\0';
    if (n->plain)
        snprintf(buf, size, "'%s'", shown);
    else
        snprintf(buf, size, "the quoted string \"%s\"", shown);
}

/* Where a number or boolean was quoted, say that the quotes are the problem. */
static const char *spec_quote_hint(const ynode *n)
{
    return n->kind == YN_SCALAR && !n->plain ? " (write numbers and booleans without quotes)" : "";
}

static void spec_join(s2_buf *b, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        s2_buf_printf(b, "%s%s", i ? ", " : "", names[i]);
}

/* Levenshtein distance, case-insensitive; large for long strings. */
static int spec_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la >= 64 || lb >= 64)
        return INT_MAX / 2;
    int row[64];
    for (size_t j = 0; j <= lb; j++)
        row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int prev = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int cur = row[j];
            int cost = tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]);
            int best = prev + cost;
            if (row[j] + 1 < best)
                best = row[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            prev = cur;
        }
    }
    return row[lb];
}

/* The closest candidate when it is plausibly a typo, else NULL. Close means a
 * few edits, or one name containing the other ("kv_heads" / "num_kv_heads"). */
static const char *spec_suggest(const char *typed, const char *const *cand, int n)
{
    const char *best = NULL;
    int best_d = INT_MAX;
    size_t lt = strlen(typed);
    int limit = lt / 3 > 2 ? (int)(lt / 3) : 2;
    for (int i = 0; i < n; i++) {
        if (!cand[i])
            continue;
        int d = spec_distance(typed, cand[i]);
        int contains = lt >= 4 && strlen(cand[i]) >= 4 &&
                       (strcasestr(cand[i], typed) || strcasestr(typed, cand[i]));
        if ((d <= limit || contains) && d < best_d) {
            best = cand[i];
            best_d = d;
        }
    }
    return best;
}

static int spec_name_index(const char *const *names, int n, const char *s)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(names[i], s))
            return i;
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Values                                                                    */
/* ------------------------------------------------------------------------ */

static void spec_real_range(const keydef *k, char *buf, size_t n);
static s2_status spec_check_int(ctx *c, int id, const slot *s, const where *w, const char *text);

/* 0: an int; -1: not a decimal integer; 1: an integer that does not fit. */
static int spec_parse_int(const char *s, long *out)
{
    const char *p = s + (*s == '+' || *s == '-');
    if (!isdigit((unsigned char)*p))
        return -1;
    for (const char *q = p; *q; q++)
        if (!isdigit((unsigned char)*q))
            return -1;
    /* YAML 1.1 reads 0755 as octal; refuse the ambiguity instead of guessing. */
    if (p[0] == '0' && p[1])
        return -1;
    errno = 0;
    long long v = strtoll(s, NULL, 10);
    if (errno == ERANGE || v > INT_MAX || v < INT_MIN)
        return 1;
    *out = (long)v;
    return 0;
}

/* Decimal numbers only ("1e-5" included, as people write it): no hex, inf or
 * nan, which strtod would take. 0: ok; -1: not a number; 1: overflows. */
static int spec_parse_real(const char *s, double *out)
{
    const char *p = s + (*s == '+' || *s == '-');
    int digits = 0;
    while (isdigit((unsigned char)*p))
        p++, digits++;
    if (*p == '.') {
        p++;
        while (isdigit((unsigned char)*p))
            p++, digits++;
    }
    if (!digits)
        return -1;
    if (*p == 'e' || *p == 'E') {
        p++;
        p += *p == '+' || *p == '-';
        if (!isdigit((unsigned char)*p))
            return -1;
        while (isdigit((unsigned char)*p))
            p++;
    }
    if (*p)
        return -1;
    errno = 0;
    double v = strtod(s, NULL);
    /* ERANGE: too large for a double, or so small that it underflowed (to 0 or a subnormal
     * number): either way not the number written. */
    if (!isfinite(v) || errno == ERANGE)
        return 1;
    *out = v == 0 ? 0 : v; /* -0 reads as 0, so it prints and hashes as 0 */
    return 0;
}

static s2_status spec_int(ctx *c, int id, const ynode *v, const where *w, slot *out)
{
    char got[160];
    spec_describe(v, got, sizeof got);
    if (v->kind != YN_SCALAR || !v->plain || yn_is_null(v))
        return spec_fail(c, S2_ERR_SPEC, w, "%s: expected an integer, got %s%s",
                         keys[id].dotted, got, spec_quote_hint(v));
    int r = spec_parse_int(v->text, &out->i);
    if (r < 0)
        return spec_fail(c, S2_ERR_SPEC, w, "%s: expected an integer, got %s%s",
                         keys[id].dotted, got, spec_quote_hint(v));
    if (r > 0) { /* past INT_MAX: the range check's message, with the value as written */
        slot past = {.i = v->text[0] == '-' ? LONG_MIN : LONG_MAX};
        return spec_check_int(c, id, &past, w, v->text);
    }
    return S2_OK;
}

static s2_status spec_real(ctx *c, int id, const ynode *v, const where *w, slot *out)
{
    char got[160];
    spec_describe(v, got, sizeof got);
    if (v->kind != YN_SCALAR || !v->plain || yn_is_null(v))
        return spec_fail(c, S2_ERR_SPEC, w, "%s: expected a number, got %s%s",
                         keys[id].dotted, got, spec_quote_hint(v));
    int r = spec_parse_real(v->text, &out->d);
    if (r < 0)
        return spec_fail(c, S2_ERR_SPEC, w, "%s: expected a number, got %s%s",
                         keys[id].dotted, got, spec_quote_hint(v));
    if (r > 0) {
        char range[96];
        spec_real_range(&keys[id], range, sizeof range);
        return spec_fail(c, S2_ERR_SPEC, w,
                         "%s = %s is out of range: valid %s (too large or too small for a double)",
                         keys[id].dotted, v->text, range);
    }
    return S2_OK;
}

static s2_status spec_bool(ctx *c, int id, const ynode *v, const where *w, slot *out)
{
    static const char *const yes[] = {"true", "True", "TRUE"}, *const no[] = {"false", "False",
                                                                               "FALSE"};
    if (v->kind == YN_SCALAR && v->plain) {
        for (int i = 0; i < 3; i++) {
            if (!strcmp(v->text, yes[i]) || !strcmp(v->text, no[i])) {
                out->i = !strcmp(v->text, yes[i]);
                return S2_OK;
            }
        }
    }
    char got[160];
    spec_describe(v, got, sizeof got);
    return spec_fail(c, S2_ERR_SPEC, w, "%s: expected a boolean (true or false), got %s%s",
                     keys[id].dotted, got, spec_quote_hint(v));
}

/* name becomes part of file names (kernel cache, outputs): keep it to a set of
 * characters that is safe on every filesystem and in shells. */
static s2_status spec_name(ctx *c, int id, const ynode *v, const where *w, slot *out)
{
    char got[160];
    spec_describe(v, got, sizeof got);
    if (v->kind != YN_SCALAR || yn_is_null(v) || v->len == 0)
        return spec_fail(c, S2_ERR_SPEC, w, "%s: expected a non-empty string, got %s",
                         keys[id].dotted, got);
    for (size_t i = 0; i < v->len; i++) {
        unsigned char ch = (unsigned char)v->text[i];
        if (!isalnum(ch) && ch != '.' && ch != '_' && ch != '-')
            return spec_fail(c, S2_ERR_SPEC, w,
                             "%s: only letters, digits, '.', '_' and '-' are allowed (the name "
                             "is used in file names), got %s",
                             keys[id].dotted, got);
    }
    if (v->text[0] == '.')
        return spec_fail(c, S2_ERR_SPEC, w,
                         "%s: must not start with '.' (the name is used in file names), got %s",
                         keys[id].dotted, got);
    if (v->len >= S2_SPEC_NAME_MAX)
        return spec_fail(c, S2_ERR_SPEC, w, "%s: too long (%zu characters, at most %d)",
                         keys[id].dotted, v->len, S2_SPEC_NAME_MAX - 1);
    memcpy(out->s, v->text, v->len + 1);
    return S2_OK;
}

/* "unknown value 'x'; did you mean 'y'? (valid: a, b, c)" for enums and lists. */
static s2_status spec_bad_word(ctx *c, const where *w, const char *what, const char *typed,
                               const keydef *k)
{
    s2_buf b = {0};
    spec_join(&b, k->names, k->n_names);
    const char *near = spec_suggest(typed, k->names, k->n_names);
    s2_status st;
    if (near)
        st = spec_fail(c, S2_ERR_SPEC, w, "%s: unknown %s '%s'; did you mean '%s'? (valid: %s)",
                       k->dotted, what, typed, near, b.oom ? "?" : b.data);
    else
        st = spec_fail(c, S2_ERR_SPEC, w, "%s: unknown %s '%s' (valid: %s)", k->dotted, what,
                       typed, b.oom ? "?" : b.data);
    s2_buf_free(&b);
    return st;
}

static s2_status spec_enum(ctx *c, int id, const ynode *v, const where *w, slot *out)
{
    const keydef *k = &keys[id];
    if (v->kind != YN_SCALAR || yn_is_null(v)) {
        char got[160];
        spec_describe(v, got, sizeof got);
        s2_buf b = {0};
        spec_join(&b, k->names, k->n_names);
        s2_status st = spec_fail(c, S2_ERR_SPEC, w, "%s: expected one of %s, got %s", k->dotted,
                                 b.oom ? "?" : b.data, got);
        s2_buf_free(&b);
        return st;
    }
    int i = spec_name_index(k->names, k->n_names, v->text);
    if (i < 0)
        return spec_bad_word(c, w, "value", v->text, k);
    out->i = i;
    return S2_OK;
}

static const char *spec_item_word(int id)
{
    return id == K_ARCH ? "architecture" : id == K_TARGETS ? "target" : "tensor";
}

static s2_status spec_list(ctx *c, int id, const ynode *v, const where *w, slot *out)
{
    const keydef *k = &keys[id];
    if (v->kind != YN_SEQ) {
        char got[160];
        spec_describe(v, got, sizeof got);
        return spec_fail(c, S2_ERR_SPEC, w,
                         "%s: expected a list of strings (e.g. [%s, %s]), got %s", k->dotted,
                         k->names[0], k->names[1], got);
    }
    int first_line[32] = {0};
    unsigned bits = 0;
    for (int j = 0; j < v->n; j++) {
        const ynode *it = v->kid[j];
        where iw = spec_at(c, w, it);
        if (it->kind != YN_SCALAR || yn_is_null(it)) {
            char got[160];
            spec_describe(it, got, sizeof got);
            return spec_fail(c, S2_ERR_SPEC, &iw,
                             "%s: expected a list of strings, item %d is %s", k->dotted, j + 1,
                             got);
        }
        int i = spec_name_index(k->names, k->n_names, it->text);
        if (i < 0)
            return spec_bad_word(c, &iw, spec_item_word(id), it->text, k);
        if (bits & (1u << i)) {
            if (iw.line > 0)
                return spec_fail(c, S2_ERR_SPEC, &iw,
                                 "%s: '%s' is listed twice (first at line %d)", k->dotted,
                                 it->text, first_line[i]);
            return spec_fail(c, S2_ERR_SPEC, &iw, "%s: '%s' is listed twice", k->dotted,
                             it->text);
        }
        bits |= 1u << i;
        first_line[i] = it->line;
    }
    if (k->nonempty && !bits) {
        s2_buf b = {0};
        spec_join(&b, k->names, k->n_names);
        s2_status st = spec_fail(c, S2_ERR_SPEC, w,
                                 "%s: the list must not be empty (valid items: %s)", k->dotted,
                                 b.oom ? "?" : b.data);
        s2_buf_free(&b);
        return st;
    }
    out->bits = bits;
    return S2_OK;
}

/* Checks that need only the value itself. Ranges are spelled out so the user
 * sees what would be valid; text is the value as written (NULL: print the number). */
static s2_status spec_check_int(ctx *c, int id, const slot *s, const where *w, const char *text)
{
    const keydef *k = &keys[id];
    char shown[32];
    if (!text) {
        snprintf(shown, sizeof shown, "%ld", s->i);
        text = shown;
    }
    if (id == K_HEAD_DIM) {
        for (size_t i = 0; i < sizeof head_dims / sizeof head_dims[0]; i++)
            if (s->i == head_dims[i])
                return S2_OK;
        return spec_fail(c, S2_ERR_SPEC, w,
                         "%s must be one of 64, 96, 128, 256 (the head sizes the attention "
                         "kernels support), got %s",
                         k->dotted, text);
    }
    /* The range first: a value past INT_MAX arrives as LONG_MAX (odd) whatever its parity. */
    if (s->i < k->imin || s->i > k->imax)
        return spec_fail(c, S2_ERR_SPEC, w, "%s = %s is out of range: valid %ld..%ld%s (%s)",
                         k->dotted, text, k->imin, k->imax, id == K_HEADS ? ", even" : "",
                         k->why);
    if (id == K_HEADS && s->i % 2)
        return spec_fail(c, S2_ERR_SPEC, w,
                         "%s must be a positive even number (S2-Attn shifts half of the heads), "
                         "got %s; valid %ld..%ld, even",
                         k->dotted, text, k->imin, k->imax);
    return S2_OK;
}

/* The valid range of a real key as text: "[1e-30, 1e+30]", "(0, 1]", "0 or [1e-09, ...]". */
static void spec_real_range(const keydef *k, char *buf, size_t n)
{
    snprintf(buf, n, "%s%c%g, %g%c", k->zero_ok ? "0 or " : "", k->lo_open ? '(' : '[', k->lo,
             k->hi, k->hi_open ? ')' : ']');
}

static s2_status spec_check_real(ctx *c, int id, const slot *s, const where *w, const char *text)
{
    const keydef *k = &keys[id];
    int below = k->lo_open ? s->d <= k->lo : s->d < k->lo;
    int above = k->hi_open ? s->d >= k->hi : s->d > k->hi;
    if ((!below && !above) || (k->zero_ok && s->d == 0))
        return S2_OK;
    char range[96], shown[32];
    spec_real_range(k, range, sizeof range);
    if (!text) {
        snprintf(shown, sizeof shown, "%.17g", s->d);
        text = shown;
    }
    return spec_fail(c, S2_ERR_SPEC, w, "%s = %s is out of range: valid %s (%s)", k->dotted,
                     text, range, k->why);
}

/* Type-checks, converts and range-checks one value into *out. */
static s2_status spec_value(ctx *c, int id, const ynode *v, const where *w, slot *out)
{
    s2_status st = S2_OK;
    switch (keys[id].type) {
    case V_INT:
        st = spec_int(c, id, v, w, out);
        return st ? st : spec_check_int(c, id, out, w, v->text);
    case V_REAL:
        st = spec_real(c, id, v, w, out);
        return st ? st : spec_check_real(c, id, out, w, v->text);
    case V_BOOL: return spec_bool(c, id, v, w, out);
    case V_NAME: return spec_name(c, id, v, w, out);
    case V_ENUM: return spec_enum(c, id, v, w, out);
    case V_LIST: return spec_list(c, id, v, w, out);
    }
    return st;
}

/* ------------------------------------------------------------------------ */
/* Keys: lookup and unknown-key messages                                     */
/* ------------------------------------------------------------------------ */

static int spec_section(const char *s)
{
    for (int i = 1; i < SEC_N; i++)
        if (!strcmp(s, sect_names[i]))
            return i;
    return -1;
}

static int spec_lookup(int sect, const char *leaf, const char **spelling)
{
    for (int i = 0; i < K_N; i++) {
        if (keys[i].sect != sect)
            continue;
        if (!strcmp(keys[i].leaf, leaf) || (keys[i].alias && !strcmp(keys[i].alias, leaf))) {
            if (spelling)
                *spelling = !strcmp(keys[i].leaf, leaf) ? keys[i].leaf : keys[i].alias;
            return i;
        }
    }
    return -1;
}

static int spec_lookup_dotted(const char *dotted)
{
    for (int i = 0; i < K_N; i++)
        if (!strcmp(keys[i].dotted, dotted) ||
            (keys[i].alias_dotted && !strcmp(keys[i].alias_dotted, dotted)))
            return i;
    return -1;
}

/* The key names valid in one section (aliases included), for suggestions. */
static int spec_section_keys(int sect, const char **out, int with_aliases)
{
    int n = 0;
    for (int i = 0; i < K_N; i++) {
        if (keys[i].sect != sect)
            continue;
        out[n++] = keys[i].leaf;
        if (with_aliases && keys[i].alias)
            out[n++] = keys[i].alias;
    }
    if (sect == SEC_TOP)
        for (int i = 1; i < SEC_N; i++)
            out[n++] = sect_names[i];
    return n;
}

static const char *spec_derived_note(const char *leaf)
{
    if (!strcmp(leaf, "rope_factor"))
        return "rope_factor is derived (ceil(context_length / model.max_position_embeddings)) "
               "and cannot be set";
    return NULL;
}

static s2_status spec_unknown(ctx *c, int sect, const char *typed, const where *w)
{
    const char *note = spec_derived_note(typed);
    if (note)
        return spec_fail(c, S2_ERR_SPEC, w, "%s", note);
    const char *in = sect == SEC_TOP ? "at the top level" : sect_names[sect];
    char where_word[32];
    snprintf(where_word, sizeof where_word, "%s%s", sect == SEC_TOP ? "" : "in ", in);
    /* A right key in the wrong section: say where it belongs. */
    for (int i = 0; i < K_N; i++) {
        if (keys[i].sect == sect)
            continue;
        if (!strcmp(keys[i].leaf, typed) || (keys[i].alias && !strcmp(keys[i].alias, typed)))
            return spec_fail(c, S2_ERR_SPEC, w, "unknown key '%s' %s; did you mean '%s'?",
                             typed, where_word, keys[i].dotted);
    }
    const char *cand[40];
    int n = spec_section_keys(sect, cand, 1);
    const char *near = spec_suggest(typed, cand, n);
    if (near)
        return spec_fail(c, S2_ERR_SPEC, w, "unknown key '%s' %s; did you mean '%s'?", typed,
                         where_word, near);
    n = spec_section_keys(sect, cand, 0);
    s2_buf b = {0};
    spec_join(&b, cand, n);
    s2_status st = spec_fail(c, S2_ERR_SPEC, w, "unknown key '%s' %s (valid keys: %s)", typed,
                             where_word, b.oom ? "?" : b.data);
    s2_buf_free(&b);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Pass 2: the file                                                          */
/* ------------------------------------------------------------------------ */

static s2_status spec_take(ctx *c, int sect, const ynode *k, const ynode *v)
{
    where kw = spec_at(c, NULL, k);
    const char *spelling = NULL;
    int id = spec_lookup(sect, k->text, &spelling);
    if (id < 0)
        return spec_unknown(c, sect, k->text, &kw);
    slot *s = &c->slot[id];
    if (s->given) {
        if (strcmp(spelling, s->spelling))
            return spec_fail(c, S2_ERR_SPEC, &kw,
                             "duplicate key: '%s' and '%s' are two spellings of %s (first given "
                             "at line %d); keep one",
                             k->text, s->spelling, keys[id].dotted, s->key.line);
        return spec_fail(c, S2_ERR_SPEC, &kw, "duplicate key '%s' (first given at line %d)",
                         k->text, s->key.line);
    }
    where vw = spec_at(c, NULL, v);
    slot tmp = {0};
    s2_status st = spec_value(c, id, v, &vw, &tmp);
    if (st)
        return st;
    tmp.given = 1;
    tmp.key = kw;
    tmp.spelling = spelling;
    tmp.at = vw;
    *s = tmp;
    return S2_OK;
}

static s2_status spec_walk(ctx *c, const ynode *map, int sect)
{
    for (int i = 0; i + 1 < map->n; i += 2) {
        const ynode *k = map->kid[i], *v = map->kid[i + 1];
        int sub = sect == SEC_TOP ? spec_section(k->text) : -1;
        if (sub < 0) {
            s2_status st = spec_take(c, sect, k, v);
            if (st)
                return st;
            continue;
        }
        where kw = spec_at(c, NULL, k);
        if (c->sect_at[sub].line)
            return spec_fail(c, S2_ERR_SPEC, &kw, "duplicate key '%s' (first given at line %d)",
                             k->text, c->sect_at[sub].line);
        c->sect_at[sub] = kw;
        if (v->kind != YN_MAP) {
            char got[160];
            spec_describe(v, got, sizeof got);
            where vw = spec_at(c, NULL, v);
            return spec_fail(c, S2_ERR_SPEC, &vw, "%s: expected a mapping, got %s", k->text, got);
        }
        s2_status st = spec_walk(c, v, sub);
        if (st)
            return st;
    }
    return S2_OK;
}

/* Checks on the file alone that a later --set may still settle differently
 * are left to pass 3; this one cannot be settled by a --set of one key. */
static s2_status spec_file_conflicts(ctx *c)
{
    const slot *g = &c->slot[K_GSIZE], *r = &c->slot[K_GRATIO];
    if (g->given && r->given) {
        const slot *later = g->key.line > r->key.line ? g : r;
        const slot *earlier = later == g ? r : g;
        return spec_fail(c, S2_ERR_SPEC, &later->key,
                         "s2attn.group_size and s2attn.group_ratio are both given (%s at line "
                         "%d); give only one",
                         earlier == g ? "group_size" : "group_ratio", earlier->key.line);
    }
    return S2_OK;
}

static s2_status spec_walk_root(ctx *c, const ynode *root)
{
    if (!root || (root->kind == YN_SCALAR && root->plain && root->len == 0)) {
        where w = {.file = c->file};
        return spec_fail(c, S2_ERR_PARSE, &w,
                         "empty spec, expected a mapping with name, model, context_length, ...");
    }
    if (root->kind != YN_MAP) {
        char got[160];
        spec_describe(root, got, sizeof got);
        where w = spec_at(c, NULL, root);
        return spec_fail(c, S2_ERR_SPEC, &w,
                         "a spec's top level must be a mapping (name: ..., model: ..., "
                         "context_length: ...), got %s",
                         got);
    }
    s2_status st = spec_walk(c, root, SEC_TOP);
    return st ? st : spec_file_conflicts(c);
}

/* ------------------------------------------------------------------------ */
/* Pass 2b: --set overrides                                                  */
/* ------------------------------------------------------------------------ */

static s2_status spec_override_unknown(ctx *c, const char *key, const where *w)
{
    const char *dot = strrchr(key, '.');
    const char *note = spec_derived_note(dot ? dot + 1 : key);
    if (note)
        return spec_fail(c, S2_ERR_SPEC, w, "%s", note);
    int sect = spec_section(key);
    if (sect > 0) {
        const char *first = NULL;
        for (int i = 0; i < K_N && !first; i++)
            if (keys[i].sect == sect)
                first = keys[i].dotted;
        return spec_fail(c, S2_ERR_SPEC, w,
                         "'%s' is a section; set its keys one at a time, e.g. --set %s=...", key,
                         first);
    }
    const char *cand[2 * K_N];
    int n = 0;
    for (int i = 0; i < K_N; i++) {
        cand[n++] = keys[i].dotted;
        if (keys[i].alias_dotted)
            cand[n++] = keys[i].alias_dotted;
    }
    /* A bare leaf ("group_size") names its section's key exactly. */
    const char *near = NULL;
    for (int i = 0; i < K_N && !near; i++)
        if (!dot && (!strcmp(keys[i].leaf, key) || (keys[i].alias && !strcmp(keys[i].alias, key))))
            near = keys[i].dotted;
    if (!near)
        near = spec_suggest(key, cand, n);
    if (near)
        return spec_fail(c, S2_ERR_SPEC, w, "unknown key '%s'; did you mean '%s'?", key, near);
    return spec_fail(c, S2_ERR_SPEC, w,
                     "unknown key '%s' (keys are dotted: name, dtype, arch, context_length, "
                     "model.*, s2attn.*, lora.*; see specs/README.md)",
                     key);
}

static char *spec_trim(const char *s, size_t n)
{
    while (n && isspace((unsigned char)*s))
        s++, n--;
    while (n && isspace((unsigned char)s[n - 1]))
        n--;
    return strndup(s, n);
}

/* group_size and group_ratio are two ways to say one thing: a --set of one
 * replaces whichever the file gave. Both on the command line is a conflict. */
static s2_status spec_override_group(ctx *c, int id, const where *w)
{
    if (id != K_GSIZE && id != K_GRATIO)
        return S2_OK;
    int other = id == K_GSIZE ? K_GRATIO : K_GSIZE;
    slot *o = &c->slot[other];
    if (o->given && o->at.set)
        return spec_fail(c, S2_ERR_SPEC, w,
                         "s2attn.group_size and s2attn.group_ratio are both set (the other by "
                         "--set %s); give only one",
                         o->at.set);
    memset(o, 0, sizeof *o);
    return S2_OK;
}

static s2_status spec_override(ctx *c, const char *text, int index)
{
    where w = {.file = c->file, .set = text ? text : "(null)", .set_index = index + 1};
    const char *eq = text ? strchr(text, '=') : NULL;
    if (!eq)
        return spec_fail(c, S2_ERR_SPEC, &w,
                         "expected KEY=VALUE, e.g. --set s2attn.group_size=2048");
    char *key = spec_trim(text, (size_t)(eq - text));
    if (!key)
        return spec_fail(c, S2_ERR_NOMEM, &w, "out of memory");
    int id = spec_lookup_dotted(key);
    s2_status st = id < 0 ? spec_override_unknown(c, key, &w) : S2_OK;
    free(key);
    if (st)
        return st;
    ynode *root = NULL;
    yprob pr = {0};
    if (!yt_parse(eq + 1, strlen(eq + 1), &root, &pr))
        return spec_fail(c, pr.st, &w, "%s%s", pr.st == S2_ERR_PARSE ? "the value is " : "",
                         pr.msg);
    /* An empty value is YAML null, and the type check says so. */
    ynode empty = {.kind = YN_SCALAR, .text = "", .plain = 1, .line = 1, .col = 1};
    slot tmp = {0};
    st = spec_value(c, id, root ? root : &empty, &w, &tmp);
    yt_free(root);
    if (st)
        return st;
    st = spec_override_group(c, id, &w);
    if (st)
        return st;
    tmp.given = 1;
    tmp.spelling = keys[id].leaf;
    tmp.at = w;
    c->slot[id] = tmp;
    return S2_OK;
}

/* ------------------------------------------------------------------------ */
/* Pass 3: resolve                                                           */
/* ------------------------------------------------------------------------ */

static const where *spec_where(const ctx *c, int id, where *tmp)
{
    if (c->slot[id].given)
        return &c->slot[id].at;
    *tmp = (where){.file = c->file};
    return tmp;
}

static s2_status spec_missing(ctx *c, int id)
{
    const keydef *k = &keys[id];
    where top = {.file = c->file, .line = 1, .col = 1};
    if (k->sect == SEC_TOP)
        return spec_fail(c, S2_ERR_SPEC, &top, "missing required key '%s'", k->dotted);
    const where *sw = &c->sect_at[k->sect];
    int any = 0;
    for (int i = 0; i < K_N; i++)
        any |= keys[i].sect == k->sect && c->slot[i].given;
    if (!sw->line && !any) {
        s2_buf b = {0};
        for (int i = 0; i < K_N; i++)
            if (keys[i].sect == k->sect && keys[i].required)
                s2_buf_printf(&b, "%s%s", b.len ? ", " : "", keys[i].leaf);
        s2_status st = spec_fail(c, S2_ERR_SPEC, &top,
                                 "missing required key '%s' (a mapping with %s)",
                                 sect_names[k->sect], b.oom ? "..." : b.data);
        s2_buf_free(&b);
        return st;
    }
    const where *at = sw->line ? sw : &top;
    if (k->alias)
        return spec_fail(c, S2_ERR_SPEC, at,
                         "missing required key '%s' (or its Hugging Face spelling '%s')",
                         k->dotted, k->alias);
    return spec_fail(c, S2_ERR_SPEC, at, "missing required key '%s'", k->dotted);
}

static long spec_int_or(const ctx *c, int id, long dflt)
{
    return c->slot[id].given ? c->slot[id].i : dflt;
}

static double spec_real_or(const ctx *c, int id, double dflt)
{
    return c->slot[id].given ? c->slot[id].d : dflt;
}

/* Lists the values of num_kv_heads that would be valid for H query heads. */
static void spec_kv_choices(s2_buf *b, int heads)
{
    for (int d = 2; d <= heads; d += 2)
        if (heads % d == 0)
            s2_buf_printf(b, "%s%d", b->len ? ", " : "", d);
}

static s2_status spec_resolve_heads(ctx *c, s2_model *m)
{
    where tmp;
    m->num_kv_heads = (int)spec_int_or(c, K_KV, m->num_heads);
    const where *kw = spec_where(c, K_KV, &tmp);
    /* Query head h reads kv head h / (H / Hkv), and the plain/shifted split
     * is at H/2: each kv head must serve one side only, so Hkv must divide H
     * and be even (DESIGN §1). */
    if (m->num_heads % m->num_kv_heads || m->num_kv_heads % 2) {
        s2_buf b = {0};
        spec_kv_choices(&b, m->num_heads);
        s2_status st;
        if (m->num_heads % m->num_kv_heads)
            st = spec_fail(c, S2_ERR_SPEC, kw,
                           "model.num_kv_heads (%d) must divide model.num_heads (%d); valid "
                           "values: %s",
                           m->num_kv_heads, m->num_heads, b.oom ? "?" : b.data);
        else
            st = spec_fail(c, S2_ERR_SPEC, kw,
                           "model.num_kv_heads (%d) must be even when it is below num_heads "
                           "(each kv head serves only plain or only shifted heads); valid "
                           "values: %s",
                           m->num_kv_heads, b.oom ? "?" : b.data);
        s2_buf_free(&b);
        return st;
    }
    if (c->slot[K_HEAD_DIM].given) {
        m->head_dim = (int)c->slot[K_HEAD_DIM].i;
        return S2_OK;
    }
    const where *hw = spec_where(c, K_HIDDEN, &tmp);
    if (m->hidden_size % m->num_heads)
        return spec_fail(c, S2_ERR_SPEC, hw,
                         "model.head_dim is not given and model.hidden_size (%d) is not a "
                         "multiple of model.num_heads (%d); set model.head_dim",
                         m->hidden_size, m->num_heads);
    m->head_dim = m->hidden_size / m->num_heads;
    slot probe = {.i = m->head_dim};
    if (spec_check_int(c, K_HEAD_DIM, &probe, hw, NULL))
        return spec_fail(c, S2_ERR_SPEC, hw,
                         "model.head_dim defaults to hidden_size / num_heads = %d / %d = %d, "
                         "which is not one of 64, 96, 128, 256; set model.head_dim",
                         m->hidden_size, m->num_heads, m->head_dim);
    return S2_OK;
}

static s2_status spec_resolve_model(ctx *c, s2_spec *s)
{
    s2_model *m = &s->model;
    m->hidden_size = (int)c->slot[K_HIDDEN].i;
    m->intermediate_size = (int)c->slot[K_INTER].i;
    m->num_layers = (int)c->slot[K_LAYERS].i;
    m->num_heads = (int)c->slot[K_HEADS].i;
    m->vocab_size = (int)c->slot[K_VOCAB].i;
    m->max_position_embeddings = (int)c->slot[K_MAXPOS].i;
    m->rope_theta = spec_real_or(c, K_THETA, 10000.0);
    m->rms_norm_eps = spec_real_or(c, K_EPS, 1e-5);
    m->tie_word_embeddings = (int)spec_int_or(c, K_TIE, 0);
    s2_status st = spec_resolve_heads(c, m);
    if (st)
        return st;
    /* LongLoRA's fine-tune.py: linear RoPE factor ceil(context / trained context). */
    long ctxlen = s->context_length, maxpos = m->max_position_embeddings;
    s->rope_factor = (int)((ctxlen + maxpos - 1) / maxpos);
    if (s->rope_factor < 1)
        s->rope_factor = 1;
    return S2_OK;
}

/* Where G came from, for messages about S: "(from --set ...)" etc. */
static void spec_g_origin(const ctx *c, char *buf, size_t n)
{
    const slot *g = &c->slot[K_GSIZE], *r = &c->slot[K_GRATIO];
    if (g->given && g->at.set)
        snprintf(buf, n, " (from --set %s)", g->at.set);
    else if (r->given && r->at.set)
        snprintf(buf, n, " (from --set %s)", r->at.set);
    else if (!g->given)
        snprintf(buf, n, " (from group_ratio %g)", spec_real_or(c, K_GRATIO, 0.25));
    else
        buf[0] = '\0';
}

static s2_status spec_resolve_attn(ctx *c, s2_spec *s)
{
    s2_attn_cfg *a = &s->s2attn;
    where tmp;
    if (c->slot[K_GSIZE].given) {
        a->group_size = (int)c->slot[K_GSIZE].i;
        a->group_ratio = 0;
    } else {
        /* int(seq_len * ratio) as llama_attn_replace.py computes it, rounding
         * included, so G matches the reference bit for bit. */
        a->group_ratio = spec_real_or(c, K_GRATIO, 0.25);
        double g = floor((double)s->context_length * a->group_ratio);
        if (g < 1)
            return spec_fail(c, S2_ERR_SPEC, spec_where(c, K_GRATIO, &tmp),
                             "s2attn.group_ratio %g gives group_size floor(%d * %g) = 0; it must "
                             "be at least 1 (group_ratio >= %.17g)",
                             a->group_ratio, s->context_length, a->group_ratio,
                             1.0 / s->context_length);
        a->group_size = (int)g;
    }
    a->shift = (int)spec_int_or(c, K_SHIFT, a->group_size / 2);
    if (a->shift >= a->group_size) {
        char origin[600];
        spec_g_origin(c, origin, sizeof origin);
        return spec_fail(c, S2_ERR_SPEC, spec_where(c, K_SHIFT, &tmp),
                         "s2attn.shift must be in [0, group_size - 1] = [0, %d] for group_size "
                         "%d%s, got %d",
                         a->group_size - 1, a->group_size, origin, a->shift);
    }
    a->shift_mode = (s2_shift_mode)spec_int_or(c, K_SMODE, S2_SHIFT_SPLIT);
    a->softmax_scale = spec_real_or(c, K_SCALE, 1.0 / sqrt((double)s->model.head_dim));
    return S2_OK;
}

static void spec_resolve_lora(const ctx *c, s2_spec *s)
{
    s2_lora_cfg *l = &s->lora;
    l->rank = (int)spec_int_or(c, K_RANK, 8);
    l->alpha = spec_real_or(c, K_ALPHA, 16.0);
    l->dropout = spec_real_or(c, K_DROPOUT, 0.0);
    l->targets = c->slot[K_TARGETS].given ? c->slot[K_TARGETS].bits
                                          : (unsigned)(S2_LORA_Q | S2_LORA_K | S2_LORA_V |
                                                       S2_LORA_O);
    l->trainable = c->slot[K_TRAIN].given ? c->slot[K_TRAIN].bits
                                          : (unsigned)(S2_TRAIN_EMBED | S2_TRAIN_NORM);
}

static void spec_resolve_top(const ctx *c, s2_spec *s)
{
    snprintf(s->name, sizeof s->name, "%s", c->slot[K_NAME].s);
    s->dtype = (s2_dtype)spec_int_or(c, K_DTYPE, S2_DTYPE_BF16);
    s->context_length = (int)c->slot[K_CONTEXT].i;
    unsigned arch = c->slot[K_ARCH].given ? c->slot[K_ARCH].bits : (1u << 0) | (1u << 4);
    s->n_arch = 0;
    /* Fixed order, not the user's: the list is a set, and the hash must agree. */
    for (int i = 0; i < (int)(sizeof arch_names / sizeof arch_names[0]); i++)
        if (arch & (1u << i))
            snprintf(s->arch[s->n_arch++], sizeof s->arch[0], "%s", arch_names[i]);
}

/* Positions encode their origin so a copied s2_spec stays self-consistent:
 * col > 0 is the file, line > 0 with col 0 is the line-th --set, line 0 is a
 * default. s2_spec_pos() turns that back into a file name. */
static void spec_add_pos(s2_spec *s, const char *key, const where *w)
{
    if (s->n_pos >= (int)(sizeof s->pos / sizeof s->pos[0]))
        return;
    s2_srcpos p = {"<default>", 0, 0};
    if (w && w->set)
        p = (s2_srcpos){"--set", w->set_index, 0};
    else if (w && w->line > 0)
        p = (s2_srcpos){s->path[0] ? s->path : "<string>", w->line, w->col};
    snprintf(s->pos[s->n_pos].key, sizeof s->pos[0].key, "%s", key);
    s->pos[s->n_pos].pos = p;
    s->n_pos++;
}

static void spec_fill_pos(const ctx *c, s2_spec *s)
{
    s->n_pos = 0;
    for (int i = 0; i < K_N; i++) {
        const where *w = c->slot[i].given ? &c->slot[i].at : NULL;
        /* A group size derived from a ratio came from where the ratio did. */
        if (i == K_GSIZE && !w && c->slot[K_GRATIO].given)
            w = &c->slot[K_GRATIO].at;
        spec_add_pos(s, keys[i].dotted, w);
    }
    for (int i = 1; i < SEC_N; i++)
        spec_add_pos(s, sect_names[i], c->sect_at[i].line ? &c->sect_at[i] : NULL);
    spec_add_pos(s, "rope_factor", NULL);
}

static s2_status spec_finish(s2_spec *s, s2_error *err)
{
    char *text = s2_spec_canonical(s);
    if (!text)
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    s2_sha256(text, strlen(text), s->hash);
    s2_hex(s->hash, sizeof s->hash, s->hash_hex);
    free(text);
    return S2_OK;
}

static s2_status spec_resolve(ctx *c, s2_spec *s)
{
    for (int i = 0; i < K_N; i++)
        if (keys[i].required && !c->slot[i].given)
            return spec_missing(c, i);
    spec_resolve_top(c, s);
    s2_status st = spec_resolve_model(c, s);
    if (!st)
        st = spec_resolve_attn(c, s);
    if (st)
        return st;
    spec_resolve_lora(c, s);
    spec_fill_pos(c, s);
    return spec_finish(s, c->err);
}

/* ------------------------------------------------------------------------ */
/* Entry points                                                              */
/* ------------------------------------------------------------------------ */

static s2_status spec_load_text(const char *text, size_t len, const char *display,
                                const char *path, const s2_spec_override *ov, int n_ov,
                                s2_spec *out, s2_error *err)
{
    ctx *c = calloc(1, sizeof *c);
    s2_spec *s = calloc(1, sizeof *s);
    ynode *root = NULL;
    s2_status st = S2_OK;
    if (!c || !s) {
        st = s2_error_set(err, S2_ERR_NOMEM, "out of memory");
        goto out;
    }
    c->file = display;
    c->err = err;
    snprintf(s->path, sizeof s->path, "%s", path);
    yprob pr = {0};
    if (!yt_parse(text, len, &root, &pr)) {
        where w = {.file = display, .line = pr.line, .col = pr.col};
        st = spec_fail(c, pr.st, &w, "%s", pr.msg);
        goto out;
    }
    st = spec_walk_root(c, root);
    for (int i = 0; !st && i < n_ov; i++)
        st = spec_override(c, ov[i].text, i);
    if (!st)
        st = spec_resolve(c, s);
    if (!st) {
        *out = *s;
        /* Positions in the file point at the caller's copy of the path. */
        for (int i = 0; i < out->n_pos; i++)
            out->pos[i].pos = s2_spec_pos(out, out->pos[i].key);
    }
out:
    yt_free(root);
    free(s);
    free(c);
    return st;
}

s2_status s2_spec_load_string(const char *yaml, const char *name, const s2_spec_override *ov,
                              int n_ov, s2_spec *spec, s2_error *err)
{
    if (!yaml || !spec || (n_ov > 0 && !ov) || n_ov < 0)
        return s2_error_set(err, S2_ERR_INVALID, "s2_spec_load_string: bad arguments");
    return spec_load_text(yaml, strlen(yaml), name ? name : "<string>", "", ov, n_ov, spec, err);
}

s2_status s2_spec_load(const char *path, const s2_spec_override *ov, int n_ov, s2_spec *spec,
                       s2_error *err)
{
    if (!path || !spec || (n_ov > 0 && !ov) || n_ov < 0)
        return s2_error_set(err, S2_ERR_INVALID, "s2_spec_load: bad arguments");
    if (strlen(path) >= S2_SPEC_PATH_MAX)
        return s2_error_set(err, S2_ERR_IO, "%s: path too long (at most %d bytes)", path,
                            S2_SPEC_PATH_MAX - 1);
    char *text = NULL;
    size_t len = 0;
    s2_status st = s2_read_file_max(path, S2_MAX_SPEC_BYTES, "a spec", &text, &len, err);
    if (st)
        return st;
    st = spec_load_text(text, len, path, path, ov, n_ov, spec, err);
    free(text);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Positions, canonical text, names                                          */
/* ------------------------------------------------------------------------ */

s2_srcpos s2_spec_pos(const s2_spec *spec, const char *dotted_key)
{
    s2_srcpos none = {"<default>", 0, 0};
    if (!spec || !dotted_key)
        return none;
    int id = spec_lookup_dotted(dotted_key);
    const char *key = id >= 0 ? keys[id].dotted : dotted_key; /* HF spellings too */
    for (int i = 0; i < spec->n_pos && i < (int)(sizeof spec->pos / sizeof spec->pos[0]); i++) {
        if (strcmp(spec->pos[i].key, key))
            continue;
        s2_srcpos p = spec->pos[i].pos;
        if (p.line <= 0)
            return none;
        p.file = p.col == 0 ? "--set" : spec->path[0] ? spec->path : "<string>";
        return p;
    }
    return none;
}

const char *s2_dtype_name(s2_dtype d)
{
    return (unsigned)d < 2 ? dtype_names[d] : "?";
}

const char *s2_shift_mode_name(s2_shift_mode m)
{
    return (unsigned)m < 2 ? mode_names[m] : "?";
}

typedef struct canon {
    char *line[48];
    int n, oom;
} canon;

__attribute__((format(printf, 2, 3))) static void canon_add(canon *k, const char *fmt, ...)
{
    if (k->oom || k->n >= (int)(sizeof k->line / sizeof k->line[0])) {
        k->oom = 1;
        return;
    }
    va_list ap;
    va_start(ap, fmt);
    if (vasprintf(&k->line[k->n], fmt, ap) < 0)
        k->oom = 1;
    else
        k->n++;
    va_end(ap);
}

static void canon_bits(canon *k, const char *key, unsigned bits, const char *const *names, int n)
{
    s2_buf b = {0};
    s2_buf_append(&b, "", 0);
    for (int i = 0; i < n; i++)
        if (bits & (1u << i))
            s2_buf_printf(&b, "%s%s", b.len ? "," : "", names[i]);
    if (b.oom)
        k->oom = 1;
    else
        canon_add(k, "%s=%s", key, b.data ? b.data : "");
    s2_buf_free(&b);
}

static int canon_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void canon_fill(canon *k, const s2_spec *s)
{
    const s2_model *m = &s->model;
    canon_add(k, "name=%s", s->name);
    canon_add(k, "dtype=%s", s2_dtype_name(s->dtype));
    s2_buf b = {0};
    s2_buf_append(&b, "", 0);
    for (int i = 0; i < s->n_arch && i < S2_SPEC_MAX_ARCH; i++)
        s2_buf_printf(&b, "%s%.16s", i ? "," : "", s->arch[i]);
    if (b.oom)
        k->oom = 1;
    else
        canon_add(k, "arch=%s", b.data ? b.data : "");
    s2_buf_free(&b);
    canon_add(k, "context_length=%d", s->context_length);
    canon_add(k, "rope_factor=%d", s->rope_factor);
    canon_add(k, "model.hidden_size=%d", m->hidden_size);
    canon_add(k, "model.intermediate_size=%d", m->intermediate_size);
    canon_add(k, "model.num_layers=%d", m->num_layers);
    canon_add(k, "model.num_heads=%d", m->num_heads);
    canon_add(k, "model.num_kv_heads=%d", m->num_kv_heads);
    canon_add(k, "model.head_dim=%d", m->head_dim);
    canon_add(k, "model.vocab_size=%d", m->vocab_size);
    canon_add(k, "model.rope_theta=%.17g", m->rope_theta);
    canon_add(k, "model.max_position_embeddings=%d", m->max_position_embeddings);
    canon_add(k, "model.rms_norm_eps=%.17g", m->rms_norm_eps);
    canon_add(k, "model.tie_word_embeddings=%s", m->tie_word_embeddings ? "true" : "false");
    canon_add(k, "s2attn.group_size=%d", s->s2attn.group_size);
    canon_add(k, "s2attn.group_ratio=%.17g", s->s2attn.group_ratio);
    canon_add(k, "s2attn.shift=%d", s->s2attn.shift);
    canon_add(k, "s2attn.shift_mode=%s", s2_shift_mode_name(s->s2attn.shift_mode));
    canon_add(k, "s2attn.softmax_scale=%.17g", s->s2attn.softmax_scale);
    canon_add(k, "lora.rank=%d", s->lora.rank);
    canon_add(k, "lora.alpha=%.17g", s->lora.alpha);
    canon_add(k, "lora.dropout=%.17g", s->lora.dropout);
    canon_bits(k, "lora.targets", s->lora.targets, target_names,
               (int)(sizeof target_names / sizeof target_names[0]));
    canon_bits(k, "lora.trainable", s->lora.trainable, train_names,
               (int)(sizeof train_names / sizeof train_names[0]));
}

char *s2_spec_canonical(const s2_spec *spec)
{
    if (!spec)
        return NULL;
    canon k = {0};
    canon_fill(&k, spec);
    char *out = NULL;
    if (!k.oom) {
        qsort(k.line, (size_t)k.n, sizeof k.line[0], canon_cmp);
        s2_buf b = {0};
        for (int i = 0; i < k.n; i++)
            s2_buf_printf(&b, "%s\n", k.line[i]);
        if (b.oom)
            s2_buf_free(&b);
        out = b.data;
    }
    for (int i = 0; i < k.n; i++)
        free(k.line[i]);
    return out;
}

const char *s2_spec_where(const s2_spec *spec, const char *dotted_key, char *buf, size_t n)
{
    s2_srcpos at = s2_spec_pos(spec, dotted_key);
    if (at.line == 0)
        snprintf(buf, n, "%s", at.file);
    else if (at.col == 0)
        snprintf(buf, n, "%s #%d", at.file, at.line);
    else
        snprintf(buf, n, "%s:%d:%d", at.file, at.line, at.col);
    return buf;
}

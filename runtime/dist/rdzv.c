/* rdzv.c — the rendezvous of the ranks over a shared file or TCP (see dist.h). Opaque bytes
 * only: no NCCL, no GPU. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "runtime/dist/dist.h"

/* ---------------------------------------------------------------- addresses */

s2_status s2_rdzv_parse(const char *text, s2_rdzv_addr *out, s2_error *err)
{
    memset(out, 0, sizeof *out);
    if (strlen(text) >= sizeof out->text)
        return s2_error_set(err, S2_ERR_INVALID, "rendezvous \"%.64s...\": too long", text);
    snprintf(out->text, sizeof out->text, "%s", text);
    const char *valid = "valid: file:PATH (a file every rank sees) or tcp:HOST:PORT";
    if (!strncmp(text, "file:", 5)) {
        const char *path = text + 5;
        if (!path[0])
            return s2_error_set(err, S2_ERR_INVALID, "rendezvous \"%s\": empty path (%s)", text,
                                valid);
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        if (!base[0] || !strcmp(base, ".") || !strcmp(base, ".."))
            return s2_error_set(err, S2_ERR_INVALID,
                                "rendezvous \"%s\": names a directory; give a file in it, e.g. "
                                "file:%s%srendezvous", text, path,
                                path[strlen(path) - 1] == '/' ? "" : "/");
        if (strlen(path) + 16 >= sizeof out->path) /* room for ".rank-NNNNN" */
            return s2_error_set(err, S2_ERR_INVALID, "rendezvous \"%s\": path too long", text);
        out->kind = S2_RDZV_FILE;
        snprintf(out->path, sizeof out->path, "%s", path);
        return S2_OK;
    }
    if (strncmp(text, "tcp:", 4)) {
        const char *colon = strchr(text, ':');
        if (colon)
            return s2_error_set(err, S2_ERR_INVALID, "rendezvous \"%s\": unknown scheme \"%.*s\" "
                                "(%s)", text, (int)(colon - text), text, valid);
        return s2_error_set(err, S2_ERR_INVALID, "rendezvous \"%s\": no scheme (%s)", text,
                            valid);
    }
    const char *hp = text + 4, *colon = strrchr(hp, ':');
    if (!colon || !colon[1])
        return s2_error_set(err, S2_ERR_INVALID, "rendezvous \"%s\": missing port (tcp:HOST:PORT, "
                            "e.g. tcp:node01:29400 or tcp:[::1]:29400)", text);
    size_t hl = (size_t)(colon - hp);
    if (hl >= 2 && hp[0] == '[' && hp[hl - 1] == ']')
        hp++, hl -= 2;
    else if (memchr(hp, '[', hl) || memchr(hp, ']', hl))
        return s2_error_set(err, S2_ERR_INVALID, "rendezvous \"%s\": unbalanced brackets around "
                            "the host (an IPv6 address is written [::1])", text);
    if (!hl)
        return s2_error_set(err, S2_ERR_INVALID, "rendezvous \"%s\": missing host (tcp:HOST:PORT)",
                            text);
    if (hl >= sizeof out->host)
        return s2_error_set(err, S2_ERR_INVALID, "rendezvous \"%s\": host name too long", text);
    long port;
    if (s2_env_int("port", colon + 1, 1, 65535, &port, err)) {
        s2_error_prefix(err, "rendezvous \"%s\"", text);
        return S2_ERR_INVALID;
    }
    out->kind = S2_RDZV_TCP;
    memcpy(out->host, hp, hl);
    out->port = (int)port;
    return S2_OK;
}

s2_status s2_rdzv_resolve(const s2_world *w, s2_env env, const char *flag, s2_rdzv_addr *out,
                          int *have, s2_error *err)
{
    *have = 0;
    const char *text = flag, *what = "--rendezvous";
    if (!text && (text = env.get(env.ctx, "S2LORA_RENDEZVOUS")))
        what = "S2LORA_RENDEZVOUS";
    if (!text) {
        if (w->size == 1)
            return S2_OK;
        return s2_error_set(err, S2_ERR_INVALID,
                            "rank %d of %d (%s): the ranks need a rendezvous to meet: pass "
                            "--rendezvous file:PATH (a path on a filesystem every rank sees, e.g. "
                            "file:/shared/$SLURM_JOB_ID.rdzv) or --rendezvous tcp:HOST:PORT "
                            "(HOST: rank 0's host), or set S2LORA_RENDEZVOUS (s2lora launch sets "
                            "one itself)", w->rank, w->size, w->from);
    }
    s2_status st = s2_rdzv_parse(text, out, err);
    if (st)
        s2_error_prefix(err, "%s", what);
    *have = !st;
    return st;
}

s2_status s2_rdzv_timeout(s2_env env, double *seconds, s2_error *err)
{
    return s2_env_seconds(env, "S2LORA_RENDEZVOUS_TIMEOUT", S2_RDZV_TIMEOUT_DEFAULT, "300", seconds, err);
}

void s2_rdzv_result_free(s2_rdzv_result *r)
{
    free(r->peers);
    r->peers = NULL;
    r->n_peers = 0;
}

/* ---------------------------------------------------------------- messages */

/* Every message: magic, type, launch id, generation, then the type's fields. Integers are
 * little-endian; strings and byte runs carry a u32 length. */
static const char magic[8] = {'S', '2', 'R', 'D', 'Z', 'V', 0, 1};
enum { MSG_HELLO = 1, MSG_OPEN, MSG_OK, MSG_REFUSE };
#define MSG_MAX (16u << 20)
#define HELLO_MAX (64u << 10)

typedef struct hello {
    uint8_t nonce[16];
    int rank, size, local_rank, local_size, pid;
    char host[64];
    char from[320];
    s2_fingerprint fp;
} hello;

typedef struct msg {
    int type;
    char launch[128];
    uint64_t gen;
    hello h;            /* MSG_HELLO; MSG_OPEN: size, host and pid of rank 0 */
    uint8_t payload[S2_RDZV_PAYLOAD_MAX]; /* MSG_OK */
    size_t payload_len;
    uint8_t fp_sha[32]; /* MSG_OK */
    int n;              /* MSG_OK: ranks in peers/nonces; MSG_REFUSE: 0 */
    s2_rdzv_peer *peers;
    uint8_t (*nonces)[16];
    char text[2048];    /* MSG_REFUSE */
} msg;

static void msg_free(msg *m)
{
    free(m->peers);
    free(m->nonces);
    m->peers = NULL, m->nonces = NULL;
}

static void put_raw(s2_buf *b, const void *p, size_t n) { s2_buf_append(b, p, n); }

static void put_u32(s2_buf *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    put_raw(b, x, 4);
}

static void put_u64(s2_buf *b, uint64_t v)
{
    put_u32(b, (uint32_t)v);
    put_u32(b, (uint32_t)(v >> 32));
}

static void put_str(s2_buf *b, const char *s)
{
    put_u32(b, (uint32_t)strlen(s));
    put_raw(b, s, strlen(s));
}

typedef struct rd {
    const uint8_t *p;
    size_t n, off;
    int bad;
} rd;

static void get_raw(rd *r, void *out, size_t n)
{
    if (r->bad || r->n - r->off < n) {
        r->bad = 1;
        memset(out, 0, n);
        return;
    }
    memcpy(out, r->p + r->off, n);
    r->off += n;
}

static uint32_t get_u32(rd *r)
{
    uint8_t x[4];
    get_raw(r, x, 4);
    return x[0] | (uint32_t)x[1] << 8 | (uint32_t)x[2] << 16 | (uint32_t)x[3] << 24;
}

static uint64_t get_u64(rd *r)
{
    const uint64_t lo = get_u32(r);
    return lo | (uint64_t)get_u32(r) << 32;
}

static void get_str(rd *r, char *out, size_t cap)
{
    const uint32_t n = get_u32(r);
    if (n >= cap) {
        r->bad = 1;
        out[0] = '\0';
        return;
    }
    get_raw(r, out, n);
    out[r->bad ? 0 : n] = '\0';
}

static int get_int(rd *r, int max)
{
    const uint32_t v = get_u32(r);
    if (v > (uint32_t)max)
        r->bad = 1;
    return (int)v;
}

static void put_head(s2_buf *b, int type, const char *launch, uint64_t gen)
{
    put_raw(b, magic, sizeof magic);
    put_u32(b, (uint32_t)type);
    put_str(b, launch);
    put_u64(b, gen);
}

static void put_hello(s2_buf *b, const char *launch, uint64_t gen, const hello *h)
{
    put_head(b, MSG_HELLO, launch, gen);
    put_raw(b, h->nonce, 16);
    const int v[5] = {h->rank, h->size, h->local_rank, h->local_size, h->pid};
    for (int i = 0; i < 5; i++)
        put_u32(b, (uint32_t)v[i]);
    put_str(b, h->host);
    put_str(b, h->from);
    put_u32(b, (uint32_t)h->fp.n);
    for (int i = 0; i < h->fp.n; i++) {
        put_str(b, h->fp.part[i].name);
        put_str(b, h->fp.part[i].shown);
        put_raw(b, h->fp.part[i].sha, 32);
    }
}

static void put_open(s2_buf *b, const char *launch, uint64_t gen, const hello *h0)
{
    put_head(b, MSG_OPEN, launch, gen);
    put_u32(b, (uint32_t)h0->size);
    put_u32(b, (uint32_t)h0->pid);
    put_str(b, h0->host);
}

static void put_ok(s2_buf *b, const char *launch, uint64_t gen, const void *payload, size_t len,
                   const uint8_t fp_sha[32], const hello *h, int n)
{
    put_head(b, MSG_OK, launch, gen);
    put_u32(b, (uint32_t)len);
    put_raw(b, payload, len);
    put_raw(b, fp_sha, 32);
    put_u32(b, (uint32_t)n);
    for (int k = 0; k < n; k++) {
        put_raw(b, h[k].nonce, 16);
        put_u32(b, (uint32_t)h[k].local_rank);
        put_u32(b, (uint32_t)h[k].local_size);
        put_u32(b, (uint32_t)h[k].pid);
        put_str(b, h[k].host);
    }
}

static void put_refuse(s2_buf *b, const char *launch, uint64_t gen, const char *text)
{
    put_head(b, MSG_REFUSE, launch, gen);
    put_str(b, text);
}

/* Decodes one message; 0 when it is not one (another program's bytes, another version's). */
static int decode(const void *data, size_t n, msg *m)
{
    memset(m, 0, sizeof *m);
    rd r = {.p = data, .n = n};
    char mg[8];
    get_raw(&r, mg, 8);
    if (r.bad || memcmp(mg, magic, 8))
        return 0;
    m->type = get_int(&r, MSG_REFUSE);
    get_str(&r, m->launch, sizeof m->launch);
    m->gen = get_u64(&r);
    hello *h = &m->h;
    switch (m->type) {
    case MSG_HELLO:
        get_raw(&r, h->nonce, 16);
        h->rank = get_int(&r, S2_WORLD_MAX), h->size = get_int(&r, S2_WORLD_MAX);
        h->local_rank = get_int(&r, S2_WORLD_MAX), h->local_size = get_int(&r, S2_WORLD_MAX);
        h->pid = get_int(&r, INT_MAX);
        get_str(&r, h->host, sizeof h->host);
        get_str(&r, h->from, sizeof h->from);
        h->fp.n = get_int(&r, S2_FP_MAX_PARTS);
        for (int i = 0; i < h->fp.n && !r.bad; i++) {
            get_str(&r, h->fp.part[i].name, S2_FP_NAME_MAX);
            get_str(&r, h->fp.part[i].shown, S2_FP_SHOWN_MAX);
            get_raw(&r, h->fp.part[i].sha, 32);
        }
        break;
    case MSG_OPEN:
        h->size = get_int(&r, S2_WORLD_MAX);
        h->pid = get_int(&r, INT_MAX);
        get_str(&r, h->host, sizeof h->host);
        break;
    case MSG_OK:
        m->payload_len = get_int(&r, S2_RDZV_PAYLOAD_MAX);
        get_raw(&r, m->payload, m->payload_len);
        get_raw(&r, m->fp_sha, 32);
        m->n = get_int(&r, S2_WORLD_MAX);
        if (r.bad || m->n < 1)
            return 0;
        m->peers = calloc((size_t)m->n, sizeof *m->peers);
        m->nonces = calloc((size_t)m->n, sizeof *m->nonces);
        if (!m->peers || !m->nonces) {
            msg_free(m);
            return 0;
        }
        for (int k = 0; k < m->n && !r.bad; k++) {
            get_raw(&r, m->nonces[k], 16);
            s2_rdzv_peer *p = &m->peers[k];
            p->rank = k;
            p->local_rank = get_int(&r, S2_WORLD_MAX), p->local_size = get_int(&r, S2_WORLD_MAX);
            p->pid = get_int(&r, INT_MAX);
            get_str(&r, p->host, sizeof p->host);
        }
        break;
    case MSG_REFUSE:
        get_str(&r, m->text, sizeof m->text);
        break;
    default:
        return 0;
    }
    if (r.bad || r.off != r.n) {
        msg_free(m);
        return 0;
    }
    return 1;
}

/* ---------------------------------------------------------------- rank 0's judgement */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_s(double s)
{
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) && errno == EINTR) {
    }
}

static void fill_hello(const s2_world *w, const s2_fingerprint *fp, hello *h, s2_error *err,
                       s2_status *st)
{
    memset(h, 0, sizeof *h);
    *st = s2_random_bytes(h->nonce, sizeof h->nonce, err);
    h->rank = w->rank, h->size = w->size;
    h->local_rank = w->local_rank, h->local_size = w->local_size;
    h->pid = (int)getpid();
    if (gethostname(h->host, sizeof h->host - 1))
        snprintf(h->host, sizeof h->host, "?");
    snprintf(h->from, sizeof h->from, "%s", w->from);
    h->fp = *fp;
}

/* Why rank k's hello cannot be counted in rank 0's world at all (a wrong world size, rank or a
 * second claimant of a rank): a refusal to send at once. NULL when it can be counted. */
static const char *unfit(const hello *h0, const hello *hk, const int *have, const hello *h,
                         char *buf, size_t cap)
{
    if (hk->size != h0->size)
        snprintf(buf, cap, "rank %d says the world has %d ranks (%s, host %s), rank 0 says %d "
                 "(%s, host %s): every rank must be started for the same world", hk->rank,
                 hk->size, hk->from, hk->host, h0->size, h0->from, h0->host);
    else if (hk->rank < 1 || hk->rank >= h0->size)
        snprintf(buf, cap, "host %s pid %d says it is rank %d (%s), but rank 0 (host %s pid %d) "
                 "%s", hk->host, hk->pid, hk->rank, hk->from, h0->host, h0->pid,
                 hk->rank == 0 ? "is rank 0 too: two ranks 0" : "runs a smaller world");
    else if (have[hk->rank])
        snprintf(buf, cap, "two processes say they are rank %d: host %s pid %d (%s) and host %s "
                 "pid %d (%s)", hk->rank, h[hk->rank].host, h[hk->rank].pid, h[hk->rank].from,
                 hk->host, hk->pid, hk->from);
    else
        return NULL;
    return buf;
}

/* Compares every rank's hello with rank 0's: NULL when all agree, else the refusal in buf. */
static const char *judge(char (*launch)[128], const hello *h, int n, char *buf, size_t cap)
{
    int first = 0, others = 0;
    char why[1400] = "";
    for (int k = 1; k < n; k++) {
        char w[1400] = "";
        if (strcmp(launch[k], launch[0]))
            snprintf(w, sizeof w, "rank %d belongs to launch \"%s\" (%s), rank 0 to launch "
                     "\"%s\" (%s): ranks of two runs met", k, launch[k], h[k].from, launch[0],
                     h[0].from);
        const s2_fingerprint *a = &h[k].fp, *b = &h[0].fp;
        int same_names = a->n == b->n;
        for (int i = 0; same_names && i < a->n; i++)
            same_names = !strcmp(a->part[i].name, b->part[i].name);
        if (!w[0] && !same_names) {
            char na[300] = "", nb[300] = "";
            for (int i = 0; i < a->n; i++)
                snprintf(na + strlen(na), sizeof na - strlen(na), "%s%s", i ? ", " : "",
                         a->part[i].name);
            for (int i = 0; i < b->n; i++)
                snprintf(nb + strlen(nb), sizeof nb - strlen(nb), "%s%s", i ? ", " : "",
                         b->part[i].name);
            snprintf(w, sizeof w, "rank %d checks %s; rank 0 checks %s: the ranks run different "
                     "commands", k, na, nb);
        }
        for (int i = 0; !w[0] && i < a->n; i++) {
            if (!memcmp(a->part[i].sha, b->part[i].sha, 32))
                continue;
            snprintf(w, sizeof w, "rank %d differs from rank 0 in %s: rank %d runs '%s', rank 0 "
                     "runs '%s'%s", k, a->part[i].name, k, a->part[i].shown, b->part[i].shown,
                     strcmp(a->part[i].shown, b->part[i].shown)
                         ? ""
                         : " (they differ beyond what is shown)");
        }
        if (w[0] && !first)
            first = k, snprintf(why, sizeof why, "%s", w);
        else if (w[0])
            others++;
    }
    if (!first)
        return NULL;
    if (others)
        snprintf(buf, cap, "%s (and %d more rank%s differ%s from rank 0)", why, others,
                 others == 1 ? "" : "s", others == 1 ? "s" : "");
    else
        snprintf(buf, cap, "%s", why);
    return buf;
}

/* "missing ranks 1, 3" with at most a few listed. */
static void missing_list(const int *have, int n, char *buf, size_t cap)
{
    int shown = 0, total = 0;
    size_t len = (size_t)snprintf(buf, cap, "missing rank");
    for (int k = 1; k < n; k++)
        total += !have[k];
    if (total > 1 && len < cap)
        len += (size_t)snprintf(buf + len, cap - len, "s");
    for (int k = 1; k < n && len < cap; k++)
        if (!have[k] && shown++ < 16)
            len += (size_t)snprintf(buf + len, cap - len, "%s %d", shown > 1 ? "," : "", k);
    if (total > 16 && len < cap)
        snprintf(buf + len, cap - len, " and %d more", total - 16);
}

static void fill_result(s2_rdzv_result *res, const void *payload, size_t len, const uint8_t sha[32],
                        const s2_rdzv_peer *peers, const hello *h, int n)
{
    memcpy(res->payload, payload, len);
    res->payload_len = len;
    memcpy(res->fingerprint, sha, 32);
    res->n_peers = n;
    for (int k = 0; k < n; k++) {
        if (peers) {
            res->peers[k] = peers[k];
        } else {
            s2_rdzv_peer *p = &res->peers[k];
            p->rank = k, p->local_rank = h[k].local_rank, p->local_size = h[k].local_size;
            p->pid = h[k].pid;
            snprintf(p->host, sizeof p->host, "%s", h[k].host);
        }
    }
}

/* A client's check of rank 0's answer: the right world, this rank's nonce at its rank. */
static int answer_is_mine(const msg *m, const hello *me)
{
    return m->type == MSG_OK && m->n == me->size && !memcmp(m->nonces[me->rank], me->nonce, 16);
}

/* ---------------------------------------------------------------- file */

static void hello_path(const s2_rdzv_addr *a, int rank, char *out, size_t cap)
{
    snprintf(out, cap, "%s.rank-%d", a->path, rank);
}

/* Reads and decodes a file: 1 decoded, 0 absent, -1 not a message of ours. */
static int read_msg(const char *path, msg *m)
{
    char *data = NULL;
    size_t n = 0;
    memset(m, 0, sizeof *m);
    if (s2_read_file(path, &data, &n, NULL))
        return 0;
    const int ok = decode(data, n, m);
    free(data);
    return ok ? 1 : -1;
}

static s2_status write_msg(const char *path, const s2_buf *b, s2_error *err)
{
    if (b->oom)
        return s2_error_set(err, S2_ERR_NOMEM, "%s: out of memory", path);
    return s2_write_file_atomic(path, b->data, b->len, err);
}

static double next_poll(double *interval)
{
    const double s = *interval;
    *interval = *interval * 1.5 > 0.2 ? 0.2 : *interval * 1.5;
    return s;
}

static s2_status file_rank0(const s2_rdzv_addr *a, const s2_world *w, hello *h, const void *payload,
                            size_t len, double timeout_s, s2_rdzv_result *res, s2_error *err)
{
    const int n = w->size;
    const double deadline = now_s() + timeout_s;
    uint64_t gen = 0;
    s2_status st = S2_OK;
    while (!gen && !st)
        st = s2_random_bytes(&gen, sizeof gen, err);
    char dir[sizeof a->path];
    snprintf(dir, sizeof dir, "%s", a->path);
    char *slash = strrchr(dir, '/');
    if (!st && slash && slash != dir) {
        *slash = '\0';
        st = s2_mkdir_p(dir, err);
    }
    s2_buf b = {0};
    if (!st) {
        put_open(&b, w->launch_id, gen, &h[0]);
        st = write_msg(a->path, &b, err);
    }
    s2_buf_free(&b);
    int *have = calloc((size_t)n, sizeof *have);
    int *seen = calloc((size_t)n, sizeof *seen); /* what rank k's file held last: 0 none,
                                                    1 another generation, 2 not a hello */
    char (*launch)[128] = calloc((size_t)n, sizeof *launch);
    if (!st && (!have || !seen || !launch))
        st = s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    if (st)
        goto done;
    have[0] = 1;
    snprintf(launch[0], sizeof launch[0], "%s", w->launch_id);
    int arrived = 1;
    char refusal[2048] = "", why[1600];
    char path[sizeof a->path + 16];
    double interval = 0.01, last_check = now_s();
    while (arrived < n && !refusal[0]) {
        for (int k = 1; k < n && !refusal[0]; k++) {
            if (have[k])
                continue;
            msg m;
            hello_path(a, k, path, sizeof path);
            const int r = read_msg(path, &m);
            seen[k] = r == 0 ? 0 : r < 0 || m.type != MSG_HELLO ? 2 : 1;
            if (r <= 0 || m.type != MSG_HELLO || m.gen != gen) {
                msg_free(&m);
                continue;
            }
            if (m.h.rank != k)
                snprintf(refusal, sizeof refusal, "%.1000s holds the hello of rank %d (host %s "
                         "pid %d): it should be rank %d's", path, m.h.rank, m.h.host, m.h.pid, k);
            else if (unfit(&h[0], &m.h, have, h, why, sizeof why))
                snprintf(refusal, sizeof refusal, "%s", why);
            else {
                h[k] = m.h, have[k] = 1, arrived++;
                snprintf(launch[k], sizeof launch[k], "%s", m.launch);
            }
        }
        if (arrived == n || refusal[0])
            break;
        if (now_s() - last_check > 0.5) { /* is PATH still this run's? */
            msg m;
            const int r = read_msg(a->path, &m);
            msg_free(&m);
            if (r != 1 || m.gen != gen) {
                st = s2_error_set(err, S2_ERR_IO,
                                  "rendezvous %s: %s while rank 0 waited for the others (%s): "
                                  "two runs share this rendezvous file; give each its own",
                                  a->text, r == 0 ? "the file was removed"
                                                  : "another process replaced the file",
                                  r == 1 ? (m.launch[0] ? m.launch : "no launch id")
                                         : "not a record of this run");
                goto done;
            }
            last_check = now_s();
        }
        if (now_s() > deadline) {
            char miss[400];
            missing_list(have, n, miss, sizeof miss);
            int stale = 0;
            for (int k = 1; k < n; k++)
                stale += !have[k] && seen[k];
            snprintf(refusal, sizeof refusal, "only %d of %d ranks arrived within %g s (%s%s); "
                     "every rank must run with the same rendezvous (S2LORA_RENDEZVOUS_TIMEOUT "
                     "sets the wait)", arrived, n, timeout_s, miss,
                     stale ? "; some of their files hold an earlier run's hello" : "");
            break;
        }
        sleep_s(next_poll(&interval));
    }
    const char *verdict = refusal[0] ? refusal : judge(launch, h, n, why, sizeof why);
    uint8_t sha[32];
    s2_fingerprint_sha(&h[0].fp, sha);
    if (verdict)
        put_refuse(&b, w->launch_id, gen, verdict);
    else
        put_ok(&b, w->launch_id, gen, payload, len, sha, h, n);
    st = write_msg(a->path, &b, err);
    s2_buf_free(&b);
    for (int k = 1; k < n; k++)
        if (have[k]) {
            hello_path(a, k, path, sizeof path);
            unlink(path);
        }
    if (!st && verdict)
        st = s2_error_set(err, S2_ERR_INVALID, "rendezvous %s: %s", a->text, verdict);
    if (!st)
        fill_result(res, payload, len, sha, NULL, h, n);
done:
    free(have);
    free(seen);
    free(launch);
    return st;
}

/* The others wait a little longer than rank 0, so that rank 0's answer when it gives up (which
 * names the ranks that did not come) reaches them before their own wait ends. */
static double rank_wait(double timeout_s) { return timeout_s + (timeout_s < 5 ? timeout_s : 5); }

static s2_status file_rank(const s2_rdzv_addr *a, const s2_world *w, const hello *me,
                           double timeout_s, s2_rdzv_result *res, s2_error *err)
{
    const double deadline = now_s() + rank_wait(timeout_s);
    uint64_t wrote = 0; /* the generation this rank's hello was written for */
    char path[sizeof a->path + 16], note[2400] = "it does not exist";
    hello_path(a, w->rank, path, sizeof path);
    double interval = 0.01;
    for (;;) {
        msg m;
        const int r = read_msg(a->path, &m);
        const int other_run = r == 1 && m.launch[0] && w->launch_id[0] &&
                              strcmp(m.launch, w->launch_id);
        if (r == 0) {
            snprintf(note, sizeof note, "it does not exist");
        } else if (r < 0) {
            snprintf(note, sizeof note, "it is not a rendezvous record");
        } else if (other_run) {
            snprintf(note, sizeof note, "it holds another run's record (launch \"%s\"; this "
                     "rank's is \"%s\")", m.launch, w->launch_id);
        } else if (m.type == MSG_OPEN && m.h.size != w->size) {
            s2_status st = s2_error_set(err, S2_ERR_INVALID,
                                        "rendezvous %s: rank 0 (host %s pid %d) waits for a "
                                        "world of %d ranks; this is rank %d of %d (%s)", a->text,
                                        m.h.host, m.h.pid, m.h.size, w->rank, w->size, w->from);
            msg_free(&m);
            return st;
        } else if (m.type == MSG_OPEN) {
            if (m.gen != wrote) {
                s2_buf b = {0};
                put_hello(&b, w->launch_id, m.gen, me);
                s2_status st = write_msg(path, &b, err);
                s2_buf_free(&b);
                if (st) {
                    msg_free(&m);
                    return st;
                }
                wrote = m.gen;
            }
            snprintf(note, sizeof note, "rank 0 (host %s pid %d) has not answered this rank's "
                     "hello %.1000s", m.h.host, m.h.pid, path);
        } else if (m.type == MSG_OK && m.gen == wrote && answer_is_mine(&m, me)) {
            fill_result(res, m.payload, m.payload_len, m.fp_sha, m.peers, NULL, m.n);
            msg_free(&m);
            return S2_OK;
        } else if (m.type == MSG_REFUSE && m.gen == wrote) {
            s2_status st = s2_error_set(err, S2_ERR_INVALID, "rendezvous %s: rank 0 refused "
                                        "the world: %s", a->text, m.text);
            msg_free(&m);
            return st;
        } else if (m.type == MSG_REFUSE) {
            snprintf(note, sizeof note, "it holds a refusal this rank did not take part in "
                     "(an earlier run's, or rank 0's before this rank arrived: \"%s\")", m.text);
        } else {
            snprintf(note, sizeof note, "it holds an earlier run's answer");
        }
        msg_free(&m);
        if (now_s() > deadline)
            return s2_error_set(err, S2_ERR_IO, "rendezvous %s: rank %d had no answer from rank "
                                "0 within %g s (%s: %s); start rank 0 with the same rendezvous, "
                                "or raise S2LORA_RENDEZVOUS_TIMEOUT", a->text, w->rank,
                                rank_wait(timeout_s),
                                a->path, note);
        sleep_s(next_poll(&interval));
    }
}

/* ---------------------------------------------------------------- tcp */

/* Writes all of buf, waiting at most until deadline. 0 or an errno. */
static int send_all(int fd, const void *buf, size_t n, double deadline)
{
    const uint8_t *p = buf;
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (k > 0) {
            p += k, n -= (size_t)k;
            continue;
        }
        if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return errno;
        const double left = deadline - now_s();
        if (left <= 0)
            return ETIMEDOUT;
        struct pollfd pf = {.fd = fd, .events = POLLOUT};
        poll(&pf, 1, (int)(left * 1000) + 1);
    }
    return 0;
}

/* Reads exactly n bytes before deadline: 0, ETIMEDOUT, ECONNRESET for an early end, or errno. */
static int recv_all(int fd, void *buf, size_t n, double deadline)
{
    uint8_t *p = buf;
    while (n) {
        const double left = deadline - now_s();
        if (left <= 0)
            return ETIMEDOUT;
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        const int pr = poll(&pf, 1, left * 1000 > 1000 ? 1000 : (int)(left * 1000) + 1);
        if (pr < 0 && errno != EINTR)
            return errno;
        if (pr <= 0)
            continue;
        ssize_t k = recv(fd, p, n, MSG_DONTWAIT);
        if (k == 0)
            return ECONNRESET;
        if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            return errno;
        if (k > 0)
            p += k, n -= (size_t)k;
    }
    return 0;
}

static int send_frame(int fd, const s2_buf *b, double deadline)
{
    if (b->oom)
        return ENOMEM;
    uint8_t len[4] = {(uint8_t)b->len, (uint8_t)(b->len >> 8), (uint8_t)(b->len >> 16),
                      (uint8_t)(b->len >> 24)};
    int e = send_all(fd, len, 4, deadline);
    return e ? e : send_all(fd, b->data, b->len, deadline);
}

static int listen_any(int port, int backlog, int *err_no)
{
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    const int one = 1, zero = 0;
    if (fd >= 0) {
        struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port),
                                  .sin6_addr = in6addr_any};
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        if (!bind(fd, (struct sockaddr *)&sa, sizeof sa) && !listen(fd, backlog))
            return fd;
        *err_no = errno;
        close(fd);
        if (*err_no != EAFNOSUPPORT && *err_no != EADDRNOTAVAIL)
            return -1;
    }
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        *err_no = errno;
        return -1;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_ANY)};
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (!bind(fd, (struct sockaddr *)&sa, sizeof sa) && !listen(fd, backlog))
        return fd;
    *err_no = errno;
    close(fd);
    return -1;
}

/* One connection to rank 0: its frame as it arrives. */
typedef struct conn {
    int fd;
    uint8_t len[4];
    size_t got; /* bytes of len, then of buf */
    uint8_t *buf;
    size_t need;
    int rank;   /* > 0 once its hello is counted; 0 while reading; -1 a hello not counted */
} conn;

/* Reads what is there; 1 when the hello is complete in c->buf, 0 not yet, -1 drop it. */
static int conn_read(conn *c)
{
    for (;;) {
        if (c->got < 4) {
            ssize_t k = recv(c->fd, c->len + c->got, 4 - c->got, MSG_DONTWAIT);
            if (k <= 0)
                return k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0
                                                                                         : -1;
            c->got += (size_t)k;
            if (c->got < 4)
                continue;
            c->need = c->len[0] | (size_t)c->len[1] << 8 | (size_t)c->len[2] << 16 |
                      (size_t)c->len[3] << 24;
            if (c->need < 8 || c->need > HELLO_MAX || !(c->buf = malloc(c->need)))
                return -1;
        }
        const size_t have = c->got - 4;
        if (have == c->need)
            return 1;
        ssize_t k = recv(c->fd, c->buf + have, c->need - have, MSG_DONTWAIT);
        if (k <= 0)
            return k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) ? 0 : -1;
        c->got += (size_t)k;
    }
}

static void conn_close(conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c->buf);
    c->fd = -1, c->buf = NULL;
}

static s2_status tcp_rank0(const s2_rdzv_addr *a, const s2_world *w, hello *h, const void *payload,
                           size_t len, double timeout_s, s2_rdzv_result *res, s2_error *err)
{
    const int n = w->size;
    const double deadline = now_s() + timeout_s;
    int e = 0;
    const int ls = listen_any(a->port, n < 1024 ? n + 16 : 1024, &e);
    if (ls < 0)
        return s2_error_set(err, S2_ERR_IO, "rendezvous %s: rank 0 cannot listen on port %d: "
                            "%s%s", a->text, a->port, strerror(e),
                            e == EADDRINUSE ? " (another run's rank 0, or another service, holds "
                                              "it: choose another port)" : "");
    const int cap = n + 64; /* connections held at once: the ranks and a few strays */
    int nc = 0;
    conn *c = calloc((size_t)cap, sizeof *c);
    int *have = calloc((size_t)n, sizeof *have);
    char (*launch)[128] = calloc((size_t)n, sizeof *launch);
    struct pollfd *pf = calloc((size_t)cap + 1, sizeof *pf);
    s2_status st = S2_OK;
    if (!c || !have || !launch || !pf) {
        st = s2_error_set(err, S2_ERR_NOMEM, "out of memory");
        goto done;
    }
    int arrived = 1;
    have[0] = 1;
    snprintf(launch[0], sizeof launch[0], "%s", w->launch_id);
    char refusal[2048] = "", why[1600];
    while (arrived < n && !refusal[0]) {
        const double left = deadline - now_s();
        if (left <= 0) {
            char miss[400];
            missing_list(have, n, miss, sizeof miss);
            snprintf(refusal, sizeof refusal, "only %d of %d ranks arrived within %g s (%s); "
                     "every rank must run with the same rendezvous (S2LORA_RENDEZVOUS_TIMEOUT "
                     "sets the wait)", arrived, n, timeout_s, miss);
            break;
        }
        pf[0] = (struct pollfd){.fd = ls, .events = POLLIN};
        for (int i = 0; i < nc; i++)
            pf[i + 1] = (struct pollfd){.fd = c[i].rank ? -1 : c[i].fd, .events = POLLIN};
        if (poll(pf, (nfds_t)nc + 1, left > 1 ? 1000 : (int)(left * 1000) + 1) < 0 &&
            errno != EINTR) {
            st = s2_error_set(err, S2_ERR_IO, "rendezvous %s: poll: %s", a->text, strerror(errno));
            goto done;
        }
        for (int i = 0; i < nc && !refusal[0]; i++) {
            if (c[i].rank || !(pf[i + 1].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            const int r = conn_read(&c[i]);
            msg m;
            if (r == 1 && (!decode(c[i].buf, c[i].need, &m) || m.type != MSG_HELLO)) {
                msg_free(&m);
                conn_close(&c[i]); /* not a rank of s2lora: dropped */
                c[i].rank = -2;
                continue;
            }
            if (r < 0) {
                conn_close(&c[i]);
                c[i].rank = -2;
                continue;
            }
            if (r == 0)
                continue;
            if (unfit(&h[0], &m.h, have, h, why, sizeof why)) {
                snprintf(refusal, sizeof refusal, "%s", why);
                c[i].rank = -1; /* told too */
                continue;
            }
            c[i].rank = m.h.rank;
            h[m.h.rank] = m.h, have[m.h.rank] = 1, arrived++;
            snprintf(launch[m.h.rank], sizeof launch[0], "%s", m.launch);
        }
        /* Closed connections leave room for new ones. */
        int k = 0;
        for (int i = 0; i < nc; i++)
            if (c[i].rank != -2)
                c[k++] = c[i];
        nc = k;
        while (!refusal[0] && (pf[0].revents & POLLIN)) {
            const int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
            if (fd < 0)
                break;
            if (nc == cap)
                close(fd); /* more strays than room: dropped */
            else
                c[nc++] = (conn){.fd = fd};
        }
    }
    const char *verdict = refusal[0] ? refusal : judge(launch, h, n, why, sizeof why);
    uint8_t sha[32];
    s2_fingerprint_sha(&h[0].fp, sha);
    s2_buf b = {0};
    if (verdict)
        put_refuse(&b, w->launch_id, 0, verdict);
    else
        put_ok(&b, w->launch_id, 0, payload, len, sha, h, n);
    /* Every rank counted (and one refused at arrival) gets the answer; a few seconds at least
     * even when the wait ran out. */
    const double send_deadline = (deadline > now_s() ? deadline : now_s()) + 5;
    for (int i = 0; i < nc; i++)
        if (c[i].rank && c[i].fd >= 0)
            send_frame(c[i].fd, &b, send_deadline);
    s2_buf_free(&b);
    if (verdict)
        st = s2_error_set(err, S2_ERR_INVALID, "rendezvous %s: %s", a->text, verdict);
    else
        fill_result(res, payload, len, sha, NULL, h, n);
done:
    for (int i = 0; c && i < nc; i++)
        conn_close(&c[i]);
    close(ls);
    free(c);
    free(have);
    free(launch);
    free(pf);
    return st;
}

/* Connects to host:port before deadline, retrying; the socket or -1 with why in note. */
static int tcp_connect(const s2_rdzv_addr *a, double deadline, char *note, size_t cap,
                       int *permanent)
{
    char port[16];
    snprintf(port, sizeof port, "%d", a->port);
    double backoff = 0.05;
    *permanent = 0;
    for (;;) {
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
        const int g = getaddrinfo(a->host, port, &hints, &ai);
        if (g) {
            snprintf(note, cap, "cannot resolve %s: %s", a->host, gai_strerror(g));
            if (g != EAI_AGAIN) {
                *permanent = 1;
                return -1;
            }
        }
        for (struct addrinfo *p = ai; p; p = p->ai_next) {
            int fd = socket(p->ai_family, p->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                            p->ai_protocol);
            if (fd < 0)
                continue;
            int e = connect(fd, p->ai_addr, p->ai_addrlen) ? errno : 0;
            if (e == EINPROGRESS) {
                const double left = deadline - now_s();
                struct pollfd pf = {.fd = fd, .events = POLLOUT};
                const int ms = left > 2 ? 2000 : left > 0 ? (int)(left * 1000) + 1 : 1;
                if (poll(&pf, 1, ms) == 1) {
                    socklen_t l = sizeof e;
                    getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &l);
                } else {
                    e = ETIMEDOUT;
                }
            }
            if (!e) {
                freeaddrinfo(ai);
                return fd;
            }
            snprintf(note, cap, "connect to %s port %s: %s", a->host, port, strerror(e));
            close(fd);
        }
        if (ai)
            freeaddrinfo(ai);
        if (now_s() + backoff > deadline)
            return -1;
        sleep_s(backoff);
        backoff = backoff * 2 > 1 ? 1 : backoff * 2;
    }
}

static s2_status tcp_rank(const s2_rdzv_addr *a, const s2_world *w, const hello *me,
                          double timeout_s, s2_rdzv_result *res, s2_error *err)
{
    const double deadline = now_s() + rank_wait(timeout_s);
    char note[512] = "no attempt";
    int permanent;
    const int fd = tcp_connect(a, deadline, note, sizeof note, &permanent);
    if (fd < 0)
        return s2_error_set(err, S2_ERR_IO, "rendezvous %s: rank %d %s (%s)%s", a->text, w->rank,
                            permanent ? "cannot reach rank 0" : "found no rank 0",
                            note, permanent ? "" : "; start rank 0 with the same rendezvous, or "
                                                   "raise S2LORA_RENDEZVOUS_TIMEOUT");
    s2_buf b = {0};
    put_hello(&b, w->launch_id, 0, me);
    int e = send_frame(fd, &b, deadline);
    s2_buf_free(&b);
    uint8_t len[4] = {0};
    if (!e)
        e = recv_all(fd, len, 4, deadline);
    const size_t need = len[0] | (size_t)len[1] << 8 | (size_t)len[2] << 16 | (size_t)len[3] << 24;
    uint8_t *buf = NULL;
    if (!e && (need < 8 || need > MSG_MAX || !(buf = malloc(need))))
        e = EPROTO;
    if (!e)
        e = recv_all(fd, buf, need, deadline);
    close(fd);
    msg m;
    if (!e && !decode(buf, need, &m))
        e = EPROTO;
    free(buf);
    if (e)
        return s2_error_set(err, S2_ERR_IO, "rendezvous %s: rank %d: %s", a->text, w->rank,
                            e == ETIMEDOUT ? "rank 0 did not answer within the timeout (are all "
                                             "ranks started? S2LORA_RENDEZVOUS_TIMEOUT sets it)"
                            : e == ECONNRESET ? "rank 0 closed the connection without an answer "
                                                "(see rank 0's output)"
                            : e == EPROTO ? "the answer is not an s2lora rendezvous message "
                                            "(another service on that port?)"
                                          : strerror(e));
    s2_status st = S2_OK;
    if (m.type == MSG_REFUSE)
        st = s2_error_set(err, S2_ERR_INVALID, "rendezvous %s: rank 0 refused the world: %s",
                          a->text, m.text);
    else if (!answer_is_mine(&m, me))
        st = s2_error_set(err, S2_ERR_INVALID, "rendezvous %s: rank 0's answer is not for this "
                          "rank %d of %d", a->text, w->rank, w->size);
    else
        fill_result(res, m.payload, m.payload_len, m.fp_sha, m.peers, NULL, m.n);
    msg_free(&m);
    return st;
}

/* ---------------------------------------------------------------- entry */

s2_status s2_rendezvous(const s2_rdzv_addr *addr, const s2_world *w, const s2_fingerprint *fp,
                        const void *payload, size_t payload_len, double timeout_s,
                        s2_rdzv_result *res, s2_error *err)
{
    memset(res, 0, sizeof *res);
    const double t0 = now_s();
    if (w->rank == 0 && (!payload || payload_len > S2_RDZV_PAYLOAD_MAX))
        return s2_error_set(err, S2_ERR_INVALID, "rendezvous: rank 0 hands every rank 1..%d "
                            "bytes; got %zu", S2_RDZV_PAYLOAD_MAX, payload ? payload_len : 0);
    if (!(timeout_s > 0))
        return s2_error_set(err, S2_ERR_INVALID, "rendezvous: timeout %g s: must be positive",
                            timeout_s);
    res->peers = calloc((size_t)w->size, sizeof *res->peers);
    hello *h = calloc(w->rank == 0 ? (size_t)w->size : 1, sizeof *h);
    if (!res->peers || !h) {
        free(h);
        s2_rdzv_result_free(res);
        return s2_error_set(err, S2_ERR_NOMEM, "out of memory");
    }
    s2_status st;
    fill_hello(w, fp, &h[0], err, &st);
    if (!st && w->size == 1)
        fill_result(res, payload, payload_len, (uint8_t[32]){0}, NULL, h, 1),
            s2_fingerprint_sha(fp, res->fingerprint);
    else if (!st && addr->kind == S2_RDZV_FILE)
        st = w->rank == 0 ? file_rank0(addr, w, h, payload, payload_len, timeout_s, res, err)
                          : file_rank(addr, w, h, timeout_s, res, err);
    else if (!st)
        st = w->rank == 0 ? tcp_rank0(addr, w, h, payload, payload_len, timeout_s, res, err)
                          : tcp_rank(addr, w, h, timeout_s, res, err);
    free(h);
    if (st)
        s2_rdzv_result_free(res);
    res->seconds = now_s() - t0;
    return st;
}

/*
 * jit.c — NVRTC builds of generated units, in parallel, behind a verified disk
 * cache.
 *
 * A unit's life: key (SHA-256 over everything that changes the cubin) ->
 * lookup KEY.cubin (header + payload hash verified, KEY.log present) -> on a
 * miss, NVRTC -> write KEY.cu, KEY.log, then KEY.cubin, each atomically.
 *
 * Why this order and these files: a reader that sees KEY.cubin also finds the
 * log it needs for the resource report, because the log was renamed into place
 * first; two processes building the same key each rename a complete file over
 * the other's, so whatever a reader opens is whole. A corrupt entry (bad
 * magic, short file, wrong hash, missing log) is rebuilt and overwritten, and
 * so is a whole, valid entry made for something else: the header names the key,
 * arch, generator and kernels it was built for, and a file copied or renamed
 * onto another key (or left by an older format) never runs in its place.
 */
#define _GNU_SOURCE
#include "runtime/core/jit.h"

#include <errno.h>
#include <limits.h>
#include <nvrtc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>

#include "runtime/core/pool.h"

/* Bump when the generator's output changes meaning for the same source text
 * (it is hashed into every key, next to the package version). */
#define S2_GEN_VERSION "s2lora-gen-1"
#ifndef S2_VERSION
#define S2_VERSION "unknown"
#endif

/*
 * Cache entry header, little-endian, then the cubin. Format 2: a fixed part of 88 bytes, then
 * what the entry was built for as length-prefixed strings (u16 length, bytes, no NUL): arch,
 * generator version, s2lora version, then a u16 count and the names of the kernels the cubin
 * exports (as ptxas reported them). Format 1 (a 64-byte header with the payload's hash only)
 * says nothing of the key: such an entry is rebuilt.
 */
#define JIT_MAGIC "S2CUBIN" /* plus its NUL: 8 bytes */
#define JIT_FORMAT 2u
#define JIT_OFF_FORMAT 8   /* u32 */
#define JIT_OFF_HLEN 12    /* u32 header bytes, fixed and variable parts: the payload's offset */
#define JIT_OFF_SIZE 16    /* u64 payload bytes */
#define JIT_OFF_HASH 24    /* SHA-256 of the payload */
#define JIT_OFF_KEY 56     /* the entry's key, 32 raw bytes (the file name is its hex) */
#define JIT_FIXED 88
#define JIT_MAX_HEADER 8192 /* far above any real one: 3 short strings, 16 names of <= 127 bytes */
/* A cache entry larger than these is not one of ours (ours are under a few MiB): rebuilt. */
#define JIT_MAX_CUBIN_BYTES ((size_t)256 << 20)
#define JIT_MAX_LOG_BYTES ((size_t)16 << 20)

#define JIT_BASE_OPTS 5
#define JIT_MAX_OPTS (JIT_BASE_OPTS + S2_JIT_MAX_EXTRA)

static const char *const jit_archs[] = {"sm_80", "sm_86", "sm_89", "sm_90", "sm_90a"};
#define JIT_N_ARCHS ((int)(sizeof jit_archs / sizeof jit_archs[0]))

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */

int s2_jit_arch_valid(const char *arch)
{
    if (!arch)
        return 0;
    for (int i = 0; i < JIT_N_ARCHS; i++)
        if (strcmp(arch, jit_archs[i]) == 0)
            return 1;
    return 0;
}

static s2_status arch_error(const char *arch, s2_error *err)
{
    char list[128] = "";
    for (int i = 0; i < JIT_N_ARCHS; i++) {
        if (i)
            strcat(list, ", ");
        strcat(list, jit_archs[i]);
    }
    return s2_error_set(err, S2_ERR_INVALID, "unknown arch '%s'; valid archs: %s",
                        arch ? arch : "(null)", list);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *p)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

static uint16_t get_u16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

s2_status s2_jit_nvrtc_version(int *major, int *minor, s2_error *err)
{
    nvrtcResult r = nvrtcVersion(major, minor);
    if (r != NVRTC_SUCCESS)
        return s2_error_set(err, S2_ERR_NVRTC, "nvrtcVersion failed: %s", nvrtcGetErrorString(r));
    return S2_OK;
}

/* ------------------------------------------------------------------------ */
/* Cache directory                                                          */

/* Room left after the directory for "/" KEY ".cubin" and the ".tmp.XXXXXX"
 * suffix of an atomic write, so every path we make fits result.path. */
#define JIT_NAME_ROOM (1 + 64 + 6 + 11 + 1)

static s2_status print_dir(char *buf, size_t n, const char *a, const char *b, s2_error *err)
{
    if ((size_t)snprintf(buf, n, "%s%s", a, b) >= n)
        return s2_error_set(err, S2_ERR_CACHE, "cache directory %s%s: path too long", a, b);
    return S2_OK;
}

/* ${S2LORA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/s2lora} */
static s2_status default_cache_dir(char *buf, size_t n, s2_error *err)
{
    const char *s = getenv("S2LORA_CACHE_DIR");
    if (s && *s)
        return print_dir(buf, n, s, "", err);
    s = getenv("XDG_CACHE_HOME");
    if (s && *s)
        return print_dir(buf, n, s, "/s2lora", err);
    s = getenv("HOME");
    if (s && *s)
        return print_dir(buf, n, s, "/.cache/s2lora", err);
    return s2_error_set(err, S2_ERR_CACHE,
                        "no cache directory: set S2LORA_CACHE_DIR, XDG_CACHE_HOME or HOME");
}

s2_status s2_jit_cache_dir(const s2_jit_opts *o, char *buf, size_t n, s2_error *err)
{
    char dir[PATH_MAX];
    s2_status st = o && o->cache_dir && *o->cache_dir
                       ? print_dir(dir, sizeof dir, o->cache_dir, "", err)
                       : default_cache_dir(dir, sizeof dir, err);
    if (st)
        return st;
    size_t len = strlen(dir);
    if (len + JIT_NAME_ROOM > sizeof ((s2_jit_result *)0)->path || len + 1 > n)
        return s2_error_set(err, S2_ERR_CACHE, "cache directory %s: path too long", dir);

    s2_error sub = {0};
    if (s2_mkdir_p(dir, &sub) != S2_OK) {
        s2_error_set(err, S2_ERR_CACHE, "cache directory %s is not usable: %s", dir,
                     sub.msg ? sub.msg : "cannot create");
        s2_error_clear(&sub);
        return S2_ERR_CACHE;
    }
    memcpy(buf, dir, len + 1);
    return S2_OK;
}

/* ------------------------------------------------------------------------ */
/* Resource report (ptxas -v as NVRTC returns it in the program log)        */

static int find_res(s2_kernel_res *res, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(res[i].name, name) == 0)
            return i;
    return -1;
}

/* Copies the next line of *p into line (truncated to n-1), advances *p. */
static int next_line(const char **p, char *line, size_t n)
{
    if (!**p)
        return 0;
    const char *e = strchr(*p, '\n');
    size_t len = e ? (size_t)(e - *p) : strlen(*p);
    size_t k = len < n - 1 ? len : n - 1;
    memcpy(line, *p, k);
    while (k > 0 && (line[k - 1] == '\r' || line[k - 1] == ' '))
        k--;
    line[k] = '\0';
    *p += len + (e ? 1 : 0);
    return 1;
}

/* "... 'NAME' ..." after marker -> NAME. */
static int quoted_after(const char *line, const char *marker, char *name, size_t n)
{
    const char *s = strstr(line, marker);
    if (!s)
        return 0;
    s += strlen(marker);
    const char *e = strchr(s, '\'');
    if (!e)
        return 0;
    size_t len = (size_t)(e - s) < n - 1 ? (size_t)(e - s) : n - 1;
    memcpy(name, s, len);
    name[len] = '\0';
    return 1;
}

/*
 * One comma-separated item of a ptxas line: its first number and the words
 * after it ("Used 40 registers" -> 40, "registers"; "8192 bytes smem" -> 8192,
 * "bytes smem"). "A+B bytes smem", which older ptxas printed, sums to A+B.
 */
static int parse_item(const char *item, int *value, const char **label)
{
    const char *p = item;
    while (*p && (*p < '0' || *p > '9'))
        p++;
    if (!*p)
        return 0;
    char *end;
    long v = strtol(p, &end, 10); /* >= 0: p is at a digit; LONG_MAX when it overflows */
    if (*end == '+' && end[1] >= '0' && end[1] <= '9') {
        long w = strtol(end + 1, &end, 10);
        v = v > LONG_MAX - w ? LONG_MAX : v + w; /* a corrupt log's sum must not overflow */
    }
    while (*end == ' ')
        end++;
    *value = v > INT_MAX ? INT_MAX : (int)v;
    *label = end;
    return 1;
}

/* Applies the "N label" items of a usage line ("Used 40 registers, ...") or a frame line
 * ("16 bytes stack frame, ..."); the labels of the two never collide. */
static void apply_items(s2_kernel_res *r, char *line)
{
    for (char *save = NULL, *item = strtok_r(line, ",", &save); item;
         item = strtok_r(NULL, ",", &save)) {
        int v;
        const char *label;
        if (!parse_item(item, &v, &label))
            continue;
        if (strcmp(label, "registers") == 0)
            r->regs = v;
        else if (strcmp(label, "bytes smem") == 0)
            r->smem = v;
        else if (strcmp(label, "bytes cmem[0]") == 0)
            r->cmem0 = v;
        else if (strcmp(label, "bytes stack frame") == 0)
            r->stack = v;
        else if (strcmp(label, "bytes spill stores") == 0)
            r->spill_stores = v;
        else if (strcmp(label, "bytes spill loads") == 0)
            r->spill_loads = v;
    }
}

/*
 * Two passes: the first lists the entry functions in the order ptxas compiled
 * them; the second fills them in. "Function properties for X" is printed for
 * device functions too (sometimes before the entry that calls them), so a
 * stack line counts only when X is one of the entries.
 */
int s2_jit_parse_resources(const char *log, s2_kernel_res *res, int max)
{
    if (!log || !res || max <= 0)
        return 0;
    char line[512], name[sizeof res->name];
    int n = 0;
    for (const char *p = log; next_line(&p, line, sizeof line);) {
        if (!quoted_after(line, "Compiling entry function '", name, sizeof name))
            continue;
        if (n == max || find_res(res, n, name) >= 0)
            continue;
        memset(&res[n], 0, sizeof res[n]);
        memcpy(res[n].name, name, sizeof name);
        n++;
    }

    int entry = -1, props = -1;
    for (const char *p = log; next_line(&p, line, sizeof line);) {
        const char *fp;
        if (quoted_after(line, "Compiling entry function '", name, sizeof name)) {
            entry = find_res(res, n, name);
        } else if ((fp = strstr(line, "Function properties for "))) {
            props = find_res(res, n, fp + strlen("Function properties for "));
        } else if (strstr(line, "bytes stack frame")) {
            if (props >= 0)
                apply_items(&res[props], line);
            props = -1;
        } else if (strstr(line, "Used ") && strstr(line, " registers")) {
            if (entry >= 0)
                apply_items(&res[entry], line);
        }
    }
    return n;
}

/* ------------------------------------------------------------------------ */
/* Keys                                                                     */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* SHA-256 over (generator version, package version, source, sorted options,
 * NVRTC version, arch), each part length-prefixed. */
static void jit_key(const char *source, const char *const *opts, int n_opts, int nv_major,
                    int nv_minor, const char *arch, uint8_t raw[32], char hex[65])
{
    const char *sorted[JIT_MAX_OPTS];
    memcpy(sorted, opts, (size_t)n_opts * sizeof *opts);
    qsort(sorted, (size_t)n_opts, sizeof *sorted, cmp_str);

    char tmp[64];
    s2_sha256_ctx c;
    s2_sha256_init(&c);
    s2_sha256_update_str(&c, S2_GEN_VERSION);
    s2_sha256_update_str(&c, S2_VERSION);
    s2_sha256_update_str(&c, source);
    snprintf(tmp, sizeof tmp, "options=%d", n_opts);
    s2_sha256_update_str(&c, tmp);
    for (int i = 0; i < n_opts; i++)
        s2_sha256_update_str(&c, sorted[i]);
    snprintf(tmp, sizeof tmp, "nvrtc=%d.%d", nv_major, nv_minor);
    s2_sha256_update_str(&c, tmp);
    s2_sha256_update_str(&c, arch);

    s2_sha256_final(&c, raw);
    s2_hex(raw, 32, hex);
}

/* ------------------------------------------------------------------------ */
/* One unit                                                                 */

/* What every unit of one s2_jit_build() call shares; read-only in the pool's
 * workers, each of which writes only its own unit's result. */
typedef struct jit_job {
    const s2_jit_src *src;
    int n;
    const char *arch;
    const char *dir;                  /* NULL with no_cache */
    const char *opts[JIT_MAX_OPTS];   /* as passed to NVRTC */
    int n_opts;
    int nv_major, nv_minor;
    s2_jit_result *out;               /* [n] */
    const s2_jit_opts *o;             /* the caller's: its on_unit */
} jit_job;

static const char *unit_name(const s2_jit_src *s)
{
    return s->unit && *s->unit ? s->unit : "(unnamed)";
}

static void join_opts(const jit_job *j, s2_buf *b)
{
    for (int i = 0; i < j->n_opts; i++)
        s2_buf_printf(b, "%s%s", i ? " " : "", j->opts[i]);
}

static void number_source(const char *src, s2_buf *b)
{
    int line = 1;
    for (const char *p = src; *p;) {
        const char *e = strchr(p, '\n');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        s2_buf_printf(b, "%5d | ", line++);
        s2_buf_append(b, p, len);
        s2_buf_append(b, "\n", 1);
        p += len + (e ? 1 : 0);
    }
}

static s2_status nvrtc_failed(const jit_job *j, const s2_jit_src *s, nvrtcResult r,
                              const char *log, s2_error *err)
{
    s2_buf b = {0};
    s2_buf_printf(&b, "unit %s: NVRTC failed for %s with options: ", unit_name(s), j->arch);
    join_opts(j, &b);
    if (r != NVRTC_ERROR_COMPILATION)
        s2_buf_printf(&b, " (%s)", nvrtcGetErrorString(r));
    s2_buf_printf(&b, "\n%s\n", log ? log : "");
    if (r == NVRTC_ERROR_COMPILATION)
        number_source(s->source, &b);
    if (b.oom) {
        s2_buf_free(&b);
        return s2_error_set(err, S2_ERR_NOMEM, "unit %s: NVRTC failed (out of memory)",
                            unit_name(s));
    }
    s2_error_set(err, S2_ERR_NVRTC, "%s", b.data);
    s2_buf_free(&b);
    return S2_ERR_NVRTC;
}

static s2_status nvrtc_api_failed(const s2_jit_src *s, const char *call, nvrtcResult r,
                                  s2_error *err)
{
    return s2_error_set(err, S2_ERR_NVRTC, "unit %s: %s failed: %s", unit_name(s), call,
                        nvrtcGetErrorString(r));
}

static s2_status program_log(nvrtcProgram prog, const s2_jit_src *s, char **log, s2_error *err)
{
    size_t n = 0;
    nvrtcResult r = nvrtcGetProgramLogSize(prog, &n);
    if (r != NVRTC_SUCCESS)
        return nvrtc_api_failed(s, "nvrtcGetProgramLogSize", r, err);
    *log = calloc(n + 1, 1);
    if (!*log)
        return s2_error_set(err, S2_ERR_NOMEM, "unit %s: out of memory", unit_name(s));
    r = nvrtcGetProgramLog(prog, *log);
    if (r != NVRTC_SUCCESS) {
        free(*log);
        *log = NULL;
        return nvrtc_api_failed(s, "nvrtcGetProgramLog", r, err);
    }
    return S2_OK;
}

static s2_status program_cubin(nvrtcProgram prog, const s2_jit_src *s, s2_jit_result *out,
                               s2_error *err)
{
    size_t n = 0;
    nvrtcResult r = nvrtcGetCUBINSize(prog, &n);
    if (r != NVRTC_SUCCESS)
        return nvrtc_api_failed(s, "nvrtcGetCUBINSize", r, err);
    if (n == 0)
        return s2_error_set(err, S2_ERR_NVRTC, "unit %s: NVRTC produced no cubin",
                            unit_name(s));
    out->cubin = malloc(n);
    if (!out->cubin)
        return s2_error_set(err, S2_ERR_NOMEM, "unit %s: out of memory", unit_name(s));
    r = nvrtcGetCUBIN(prog, out->cubin);
    if (r != NVRTC_SUCCESS) {
        free(out->cubin);
        out->cubin = NULL;
        return nvrtc_api_failed(s, "nvrtcGetCUBIN", r, err);
    }
    out->size = n;
    return S2_OK;
}

/* NVRTC: source -> out->cubin, out->log. */
static s2_status compile_unit(const jit_job *j, const s2_jit_src *s, s2_jit_result *out,
                              s2_error *err)
{
    /* The program name lands in the line table (-lineinfo); naming it after
     * the key keeps the cubin a function of the key alone and points tools at
     * the KEY.cu kept in the cache. */
    char pname[80];
    snprintf(pname, sizeof pname, "%s.cu", out->key);

    nvrtcProgram prog;
    nvrtcResult r = nvrtcCreateProgram(&prog, s->source, pname, 0, NULL, NULL);
    if (r != NVRTC_SUCCESS)
        return nvrtc_api_failed(s, "nvrtcCreateProgram", r, err);

    s2_status st;
    nvrtcResult cr = nvrtcCompileProgram(prog, j->n_opts, j->opts);
    st = program_log(prog, s, &out->log, err);
    if (st)
        goto out_destroy;
    if (cr != NVRTC_SUCCESS) {
        st = nvrtc_failed(j, s, cr, out->log, err);
        goto out_free_log;
    }
    st = program_cubin(prog, s, out, err);
    if (st)
        goto out_free_log;
    nvrtcDestroyProgram(&prog);
    return S2_OK;

out_free_log:
    free(out->log);
    out->log = NULL;
out_destroy:
    nvrtcDestroyProgram(&prog);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Cache entries                                                            */

/* The variable part of an entry's header: what the cubin was built for. */
typedef struct jit_header {
    char arch[32], gen[64], version[128];
    int n_kernels;
    char kernels[S2_JIT_MAX_KERNELS][sizeof ((s2_kernel_res *)0)->name];
} jit_header;

/* Next length-prefixed string of [*p, end) into buf; 0 when it is cut short, holds a NUL or
 * does not fit n. */
static int header_str(const uint8_t **p, const uint8_t *end, char *buf, size_t n)
{
    if (end - *p < 2)
        return 0;
    size_t len = get_u16(*p);
    if ((size_t)(end - *p - 2) < len || len >= n || memchr(*p + 2, 0, len))
        return 0;
    memcpy(buf, *p + 2, len);
    buf[len] = '\0';
    *p += 2 + len;
    return 1;
}

/* The variable part, [p, end) exactly; 0 when malformed. */
static int parse_header(const uint8_t *p, const uint8_t *end, jit_header *h)
{
    memset(h, 0, sizeof *h);
    if (!header_str(&p, end, h->arch, sizeof h->arch) ||
        !header_str(&p, end, h->gen, sizeof h->gen) ||
        !header_str(&p, end, h->version, sizeof h->version) || end - p < 2)
        return 0;
    h->n_kernels = get_u16(p);
    p += 2;
    if (h->n_kernels > S2_JIT_MAX_KERNELS)
        return 0;
    for (int k = 0; k < h->n_kernels; k++)
        if (!header_str(&p, end, h->kernels[k], sizeof h->kernels[k]))
            return 0;
    return p == end;
}

/* "a, b, c" of n names (or "none"), cut to fit buf. */
static const char *name_list(const char *const *names, int n, char *buf, size_t size)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int k = 0; k < n && used < size; k++)
        used += (size_t)snprintf(buf + used, size - used, "%s%s", k ? ", " : "", names[k]);
    if (n == 0)
        snprintf(buf, size, "none");
    return buf;
}

static const char *header_names(const jit_header *h, char *buf, size_t size)
{
    const char *names[S2_JIT_MAX_KERNELS];
    for (int k = 0; k < h->n_kernels; k++)
        names[k] = h->kernels[k];
    return name_list(names, h->n_kernels, buf, size);
}

static const char *res_names(const s2_kernel_res *res, int n, char *buf, size_t size)
{
    const char *names[S2_JIT_MAX_KERNELS];
    for (int k = 0; k < n; k++)
        names[k] = res[k].name;
    return name_list(names, n, buf, size);
}

/* 1 if ptxas compiled the entry function name (the log, not the report, which holds at most
 * S2_JIT_MAX_KERNELS). */
static int log_exports(const char *log, const char *name)
{
    const char *marker = "Compiling entry function '";
    size_t len = strlen(name);
    for (const char *p = log; (p = strstr(p, marker)) != NULL;) {
        p += strlen(marker);
        if (strncmp(p, name, len) == 0 && p[len] == '\'')
            return 1;
    }
    return 0;
}

/*
 * What is wrong with the entry data[size] as the cache entry of this unit (key, the job's
 * arch, this generator and s2lora), in why; 0 when nothing: *h then holds its header. The
 * payload's hash is checked last, so a whole entry of another key says so.
 */
static int entry_fault(const jit_job *j, const uint8_t key[32], const uint8_t *d, size_t size,
                       jit_header *h, char *why, size_t n)
{
    if (size < JIT_OFF_HLEN + 4 || memcmp(d, JIT_MAGIC, 8) != 0)
        return snprintf(why, n, "not a cache entry (no %s header)", JIT_MAGIC), 1;
    uint32_t format = get_u32(d + JIT_OFF_FORMAT);
    if (format != JIT_FORMAT)
        return snprintf(why, n, "header format %u%s; this s2lora writes format %u", format,
                        format < JIT_FORMAT ? " (older, naming no key)" : "", JIT_FORMAT), 1;
    uint32_t hlen = get_u32(d + JIT_OFF_HLEN);
    if (hlen < JIT_FIXED || hlen > JIT_MAX_HEADER)
        return snprintf(why, n, "header length %u (valid: %d..%d)", hlen, JIT_FIXED,
                        JIT_MAX_HEADER), 1;
    uint64_t payload = size >= hlen ? get_u64(d + JIT_OFF_SIZE) : 0;
    if (size <= hlen || payload != size - hlen)
        return snprintf(why, n, "truncated or padded: the file holds %zu bytes, its header says "
                        "%u + %llu", size, hlen,
                        size >= JIT_FIXED ? (unsigned long long)get_u64(d + JIT_OFF_SIZE) : 0ull),
               1;
    if (!parse_header(d + JIT_FIXED, d + hlen, h))
        return snprintf(why, n, "header fields malformed"), 1;
    if (memcmp(d + JIT_OFF_KEY, key, 32) != 0) {
        char theirs[65];
        s2_hex(d + JIT_OFF_KEY, 32, theirs);
        return snprintf(why, n, "made for key %.16s..., not this unit's (another build's entry "
                        "copied or renamed here)", theirs), 1;
    }
    if (strcmp(h->arch, j->arch) != 0)
        return snprintf(why, n, "built for %s, not %s", h->arch, j->arch), 1;
    if (strcmp(h->gen, S2_GEN_VERSION) != 0)
        return snprintf(why, n, "made by generator %s, this is %s", h->gen, S2_GEN_VERSION), 1;
    if (strcmp(h->version, S2_VERSION) != 0)
        return snprintf(why, n, "made by s2lora %s, this is %s", h->version, S2_VERSION), 1;
    uint8_t hash[32];
    s2_sha256(d + hlen, size - hlen, hash);
    if (memcmp(hash, d + JIT_OFF_HASH, 32) != 0)
        return snprintf(why, n, "the cubin does not match its SHA-256 (corrupt)"), 1;
    return 0;
}

int s2_jit_cache_header(const void *head, size_t n, size_t file_size, s2_jit_header *h,
                        char *why, size_t why_n)
{
    const uint8_t *d = head;
    memset(h, 0, sizeof *h);
    if (n < JIT_OFF_HLEN + 4 || memcmp(d, JIT_MAGIC, 8) != 0)
        return snprintf(why, why_n, "not a cache entry (no %s header)", JIT_MAGIC), 1;
    h->format = get_u32(d + JIT_OFF_FORMAT);
    if (h->format != JIT_FORMAT)
        return snprintf(why, why_n, "header format %u (this s2lora writes %u)", h->format,
                        JIT_FORMAT), 1;
    uint32_t hlen = get_u32(d + JIT_OFF_HLEN);
    if (hlen < JIT_FIXED || hlen > JIT_MAX_HEADER || hlen > n)
        return snprintf(why, why_n, "header length %u (valid: %d..%d)", hlen, JIT_FIXED,
                        JIT_MAX_HEADER), 1;
    if (file_size <= hlen || get_u64(d + JIT_OFF_SIZE) != file_size - hlen)
        return snprintf(why, why_n, "truncated or padded"), 1;
    jit_header jh;
    if (!parse_header(d + JIT_FIXED, d + hlen, &jh))
        return snprintf(why, why_n, "header fields malformed"), 1;
    s2_hex(d + JIT_OFF_KEY, 32, h->key);
    snprintf(h->arch, sizeof h->arch, "%s", jh.arch);
    snprintf(h->gen, sizeof h->gen, "%s", jh.gen);
    snprintf(h->version, sizeof h->version, "%s", jh.version);
    h->n_kernels = jh.n_kernels;
    memcpy(h->kernels, jh.kernels, sizeof h->kernels);
    return 0;
}

int s2_jit_cache_entry_fault(const char *arch, const uint8_t key[32], const void *data,
                             size_t size, char *why, size_t n)
{
    jit_job j = {.arch = arch}; /* entry_fault reads the job's arch only */
    jit_header h;
    return entry_fault(&j, key, data, size, &h, why, n);
}

/* The kernels of the header, of the log's report (out->res) and the caller's must agree. */
static int kernels_fault(const s2_jit_src *s, const jit_header *h, const s2_jit_result *out,
                         char *why, size_t n)
{
    char a[512], b[512];
    int same = h->n_kernels == out->n_res;
    for (int k = 0; same && k < h->n_kernels; k++)
        same = strcmp(h->kernels[k], out->res[k].name) == 0;
    if (!same)
        return snprintf(why, n, "its header lists the kernels %s, its log reports %s",
                        header_names(h, a, sizeof a), res_names(out->res, out->n_res, b, sizeof b)),
               1;
    for (int k = 0; k < s->n_kernels; k++)
        if (!log_exports(out->log, s->kernels[k]))
            return snprintf(why, n, "its kernels are %s; this unit needs '%s'",
                            header_names(h, a, sizeof a), s->kernels[k]), 1;
    return 0;
}

/*
 * KEY.cubin verified against this unit -> out->cubin; KEY.log -> out->log, out->res. 0 when
 * there is no usable entry; out->warning then says why, unless there was none at all.
 */
static int cache_load(const jit_job *j, const s2_jit_src *s, const uint8_t key[32],
                      s2_jit_result *out)
{
    struct stat sb;
    if (stat(out->path, &sb) != 0 && errno == ENOENT)
        return 0; /* a plain miss */
    char *data = NULL, *log = NULL, why[768];
    size_t size = 0;
    s2_error sub = {0};
    jit_header h;
    char lpath[sizeof out->path];
    snprintf(lpath, sizeof lpath, "%s/%s.log", j->dir, out->key);
    if (s2_read_file_max(out->path, JIT_MAX_CUBIN_BYTES, "a cache entry", &data, &size,
                          &sub) != S2_OK)
        snprintf(why, sizeof why, "cannot be read (%s)", sub.msg ? sub.msg : "?");
    else if (entry_fault(j, key, (const uint8_t *)data, size, &h, why, sizeof why))
        ;
    else if (s2_read_file_max(lpath, JIT_MAX_LOG_BYTES, "a cache log", &log, NULL, NULL) !=
             S2_OK)
        snprintf(why, sizeof why, "its log %s.log is missing", out->key);
    else {
        out->log = log;
        out->n_res = s2_jit_parse_resources(log, out->res, S2_JIT_MAX_KERNELS);
        if (!kernels_fault(s, &h, out, why, sizeof why)) {
            /* The payload becomes the result in place: no second copy of the cubin. */
            size_t hlen = get_u32((const uint8_t *)data + JIT_OFF_HLEN);
            memmove(data, data + hlen, size - hlen);
            out->cubin = data;
            out->size = size - hlen;
            /* Its last use, for `s2lora cache list` and `cache clean --older-than`: the access
             * time, set here because mounts with relatime or noatime would not (the modification
             * time stays the entry's age). Best effort: a read-only cache is still a cache. */
            utimensat(AT_FDCWD, out->path,
                      (const struct timespec[2]){{.tv_nsec = UTIME_NOW}, {.tv_nsec = UTIME_OMIT}},
                      0);
            return 1;
        }
    }
    s2_error_clear(&sub);
    free(data);
    free(log);
    out->log = NULL;
    out->n_res = 0;
    memset(out->res, 0, sizeof out->res);
    snprintf(out->warning, sizeof out->warning, "unit %s: cache entry %s not used: %s; rebuilt "
             "and replaced", unit_name(s), out->path, why);
    return 0;
}

static s2_status cache_write_file(const char *dir, const char *key, const char *ext,
                                  const void *data, size_t size, s2_error *err)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s%s", dir, key, ext);
    s2_error sub = {0};
    if (s2_write_file_atomic(path, data, size, &sub) == S2_OK)
        return S2_OK;
    s2_error_set(err, S2_ERR_CACHE, "cache entry not written: %s", sub.msg ? sub.msg : path);
    s2_error_clear(&sub);
    return S2_ERR_CACHE;
}

static void header_put_str(s2_buf *b, const char *str)
{
    uint8_t len[2];
    size_t n = strlen(str);
    put_u16(len, (uint16_t)n);
    s2_buf_append(b, (const char *)len, 2);
    s2_buf_append(b, str, n);
}

/* KEY.cu and KEY.log first: a KEY.cubin in place implies both. */
static s2_status cache_store(const jit_job *j, const s2_jit_src *s, const uint8_t key[32],
                             const s2_jit_result *r, s2_error *err)
{
    s2_status st = cache_write_file(j->dir, r->key, ".cu", s->source, strlen(s->source), err);
    if (st)
        return st;
    st = cache_write_file(j->dir, r->key, ".log", r->log, strlen(r->log), err);
    if (st)
        return st;

    /* The fixed part, then the strings (each well under 64 KiB: names are cut at 127). */
    uint8_t fixed[JIT_FIXED] = {0}, count[2];
    s2_buf b = {0};
    s2_buf_append(&b, (const char *)fixed, sizeof fixed);
    header_put_str(&b, j->arch);
    header_put_str(&b, S2_GEN_VERSION);
    header_put_str(&b, S2_VERSION);
    put_u16(count, (uint16_t)r->n_res);
    s2_buf_append(&b, (const char *)count, 2);
    for (int k = 0; k < r->n_res; k++)
        header_put_str(&b, r->res[k].name);
    size_t hlen = b.len;
    s2_buf_append(&b, r->cubin, r->size);
    if (b.oom) {
        s2_buf_free(&b);
        return s2_error_set(err, S2_ERR_NOMEM, "unit %s: out of memory", unit_name(s));
    }
    uint8_t *h = (uint8_t *)b.data;
    memcpy(h, JIT_MAGIC, 8);
    put_u32(h + JIT_OFF_FORMAT, JIT_FORMAT);
    put_u32(h + JIT_OFF_HLEN, (uint32_t)hlen);
    put_u64(h + JIT_OFF_SIZE, r->size);
    s2_sha256(r->cubin, r->size, h + JIT_OFF_HASH);
    memcpy(h + JIT_OFF_KEY, key, 32);
    st = cache_write_file(j->dir, r->key, ".cubin", b.data, b.len, err);
    s2_buf_free(&b);
    return st;
}

/* Every kernel the caller named must be in the build's report. */
static s2_status check_exports(const s2_jit_src *s, const s2_jit_result *r, s2_error *err)
{
    for (int k = 0; k < s->n_kernels; k++)
        if (!log_exports(r->log, s->kernels[k])) {
            char names[512];
            return s2_error_set(err, S2_ERR_INVALID,
                                "unit %s: kernel '%s' is not in the build, which exports %s",
                                unit_name(s), s->kernels[k],
                                res_names(r->res, r->n_res, names, sizeof names));
        }
    return S2_OK;
}

static s2_status build_unit(const jit_job *j, int i, s2_error *err);

/* One unit, then the caller's on_unit (its progress), whatever came of it. */
static s2_status run_unit(const jit_job *j, int i, s2_error *err)
{
    s2_status st = build_unit(j, i, err);
    if (j->o && j->o->on_unit)
        j->o->on_unit(j->o->on_unit_ctx, unit_name(&j->src[i]), j->out[i].cache_hit);
    return st;
}

static s2_status build_unit(const jit_job *j, int i, s2_error *err)
{
    const s2_jit_src *s = &j->src[i];
    s2_jit_result *out = &j->out[i];
    double t0 = now_ms();

    uint8_t key[32];
    jit_key(s->source, j->opts, j->n_opts, j->nv_major, j->nv_minor, j->arch, key, out->key);
    if (j->dir) {
        snprintf(out->path, sizeof out->path, "%s/%s.cubin", j->dir, out->key);
        out->cache_hit = cache_load(j, s, key, out);
    }
    if (!out->cache_hit) {
        s2_status st = compile_unit(j, s, out, err);
        if (!st) {
            out->n_res = s2_jit_parse_resources(out->log, out->res, S2_JIT_MAX_KERNELS);
            st = check_exports(s, out, err);
        }
        if (!st && j->dir)
            st = cache_store(j, s, key, out, err);
        if (st)
            return st;
    }
    out->ms = now_ms() - t0;
    return S2_OK;
}

/* One unit as an item of the thread pool. */
static s2_status build_item(void *arg, int item, int worker, s2_error *err)
{
    return run_unit(arg, item, err);
}

/* ------------------------------------------------------------------------ */
/* Entry points                                                             */

void s2_jit_result_free(s2_jit_result *r)
{
    if (!r)
        return;
    free(r->cubin);
    free(r->log);
    memset(r, 0, sizeof *r);
}

static s2_status check_args(const s2_jit_src *src, int n, const s2_jit_opts *o,
                            s2_jit_result *out, s2_error *err)
{
    if (!o || n < 0 || (n > 0 && (!src || !out)))
        return s2_error_set(err, S2_ERR_INVALID, "s2_jit_build: bad arguments");
    if (!s2_jit_arch_valid(o->arch))
        return arch_error(o->arch, err);
    if (o->threads < 0)
        return s2_error_set(err, S2_ERR_INVALID, "s2_jit_build: threads %d < 0", o->threads);
    if (o->n_extra < 0 || o->n_extra > S2_JIT_MAX_EXTRA)
        return s2_error_set(err, S2_ERR_INVALID, "s2_jit_build: %d extra options (at most %d)",
                            o->n_extra, S2_JIT_MAX_EXTRA);
    for (int i = 0; i < o->n_extra; i++)
        if (!o->extra[i] || !*o->extra[i])
            return s2_error_set(err, S2_ERR_INVALID, "s2_jit_build: extra option %d is empty",
                                i);
    for (int i = 0; i < n; i++) {
        if (!src[i].source)
            return s2_error_set(err, S2_ERR_INVALID, "unit %s: no source",
                                unit_name(&src[i]));
        if (src[i].n_kernels < 0 || src[i].n_kernels > S2_JIT_MAX_KERNELS ||
            (src[i].n_kernels && !src[i].kernels))
            return s2_error_set(err, S2_ERR_INVALID,
                                "unit %s: %d kernels named (valid: 0..%d, with their names)",
                                unit_name(&src[i]), src[i].n_kernels, S2_JIT_MAX_KERNELS);
        for (int k = 0; k < src[i].n_kernels; k++)
            if (!src[i].kernels[k] || !*src[i].kernels[k])
                return s2_error_set(err, S2_ERR_INVALID, "unit %s: kernel name %d is empty",
                                    unit_name(&src[i]), k);
    }
    return S2_OK;
}

static void job_options(jit_job *j, const s2_jit_opts *o, char *arch_opt, size_t n)
{
    snprintf(arch_opt, n, "--gpu-architecture=%s", o->arch);
    j->opts[0] = arch_opt;
    j->opts[1] = "--std=c++17";
    j->opts[2] = "--ptxas-options=-v";
    j->opts[3] = "-lineinfo";
    /* NVRTC 13 keeps compiled programs in the driver's compute cache when a driver is present
     * (a GPU machine): a hit there skips ptxas, whose -v report (registers, spills, the kernels
     * the unit exports) this cache and the plan's spill check read from the log. The entries
     * here are the cache; NVRTC's own is turned off. */
    j->opts[4] = "--no-cache";
    j->n_opts = JIT_BASE_OPTS;
    for (int i = 0; i < o->n_extra; i++)
        j->opts[j->n_opts++] = o->extra[i];
}

s2_status s2_jit_build(const s2_jit_src *src, int n, const s2_jit_opts *o, s2_jit_result *out,
                       s2_error *err)
{
    s2_status st = check_args(src, n, o, out, err);
    if (st)
        return st;
    if (n == 0)
        return S2_OK;
    memset(out, 0, (size_t)n * sizeof *out);

    jit_job j = {.src = src, .n = n, .arch = o->arch, .out = out, .o = o};
    char arch_opt[64], dir[PATH_MAX];
    job_options(&j, o, arch_opt, sizeof arch_opt);
    st = s2_jit_nvrtc_version(&j.nv_major, &j.nv_minor, err);
    if (st)
        return st;
    if (!o->no_cache) {
        st = s2_jit_cache_dir(o, dir, sizeof dir, err);
        if (st)
            return st;
        j.dir = dir;
    }
    /* The pool reports the lowest-numbered failure; then every result is freed. */
    st = s2_pool_for(n, o->threads, build_item, &j, err);
    if (st)
        for (int i = 0; i < n; i++)
            s2_jit_result_free(&out[i]);
    return st;
}

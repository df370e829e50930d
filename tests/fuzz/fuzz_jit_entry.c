/*
 * fuzz_jit_entry.c — what the kernel cache trusts from disk (runtime/core/jit.c), without NVRTC:
 * the check of a cache entry (KEY.cubin: header, key, arch, versions, payload hash) and the
 * parser of the resource report in its NVRTC log (KEY.log).
 *
 * Input: one mode byte, the entry, then after a FUZZ_SEP line the log text. The entry is
 * checked as sm_90a's entry for the key FUZZ_KEY (SHA-256 of "s2lora fuzz key"). Mode bit 0
 * set: the harness first writes the payload's size and SHA-256 and that key into the fixed
 * header, so mutations of the rest are judged on their own (a random entry almost never
 * carries its hash).
 *
 * Beyond crashes and sanitizer reports it holds the check to the format as jit.c describes it:
 * an entry is accepted exactly when it starts "S2CUBIN\0", has format 2, a header length of
 * 88..8192 bytes below the file's, the payload's size, hash and the key; then exactly the
 * arch, generator version and s2lora version as length-prefixed strings, a count of at most 16
 * kernel names (each below 128 bytes, no NUL), and nothing more before the payload. A refusal
 * says why. The log parser returns at most max rows, each named, with no negative count.
 */
#include "fuzz.h"

#include "gen/emit.h" /* S2_GEN_VERSION */
#include "runtime/core/jit.h"

#define ARCH "sm_90a"
#define FIXED 88

static uint64_t le(const uint8_t *p, int bytes)
{
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* The next length-prefixed string of [*p, end): 1 when it is there, below max bytes, without
 * a NUL, and (want not NULL) equal to want. */
static int str_at(const uint8_t **p, const uint8_t *end, size_t max, const char *want)
{
    if (end - *p < 2)
        return 0;
    size_t len = (size_t)le(*p, 2);
    const uint8_t *s = *p + 2;
    if ((size_t)(end - s) < len || len >= max || memchr(s, 0, len))
        return 0;
    if (want && (strlen(want) != len || memcmp(s, want, len) != 0))
        return 0;
    *p = s + len;
    return 1;
}

/* The format, written out again from jit.c's description. */
static int entry_valid(const uint8_t *e, size_t n, const uint8_t key[32])
{
    if (n < FIXED || memcmp(e, "S2CUBIN", 8) != 0 || le(e + 8, 4) != 2)
        return 0;
    uint64_t hlen = le(e + 12, 4);
    if (hlen < FIXED || hlen > 8192 || hlen >= n || le(e + 16, 8) != n - hlen ||
        memcmp(e + 56, key, 32) != 0)
        return 0;
    const uint8_t *p = e + FIXED, *end = e + hlen;
    if (!str_at(&p, end, 32, ARCH) || !str_at(&p, end, 64, S2_GEN_VERSION) ||
        !str_at(&p, end, 128, S2_VERSION) || end - p < 2)
        return 0;
    uint64_t kernels = le(p, 2);
    p += 2;
    if (kernels > S2_JIT_MAX_KERNELS)
        return 0;
    for (uint64_t k = 0; k < kernels; k++)
        if (!str_at(&p, end, 128, NULL))
            return 0;
    if (p != end)
        return 0;
    uint8_t h[32];
    s2_sha256(e + hlen, n - hlen, h);
    return memcmp(h, e + 24, 32) == 0;
}

static void check_entry(const uint8_t *data, size_t size, int fix)
{
    static const char seed[] = "s2lora fuzz key";
    uint8_t key[32];
    s2_sha256(seed, sizeof seed - 1, key);
    uint8_t *e = malloc(size ? size : 1);
    if (!e)
        abort();
    if (size)
        memcpy(e, data, size);
    uint64_t hlen = size >= 16 ? le(e + 12, 4) : 0;
    if (fix && size >= FIXED && hlen <= size) {
        for (int i = 0; i < 8; i++)
            e[16 + i] = (uint8_t)((size - hlen) >> (8 * i));
        s2_sha256(e + hlen, size - hlen, e + 24);
        memcpy(e + 56, key, 32);
    }
    char why[768] = "";
    int fault = s2_jit_cache_entry_fault(ARCH, key, e, size, why, sizeof why);
    int want = entry_valid(e, size, key);
    fuzz_note("entry of %zu bytes: %s", size, fault ? why : "valid");
    FUZZ_CHECK(fault == !want, "entry of %zu bytes: the check says %s, the format %s", size,
               fault ? why : "valid", want ? "valid" : "invalid");
    FUZZ_CHECK(!fault || why[0], "entry of %zu bytes refused without a reason", size);
    free(e);
}

static void check_log(const uint8_t *data, size_t size)
{
    char *log = fuzz_cstr(data, size);
    s2_kernel_res res[S2_JIT_MAX_KERNELS];
    for (int max = 0; max <= S2_JIT_MAX_KERNELS; max += S2_JIT_MAX_KERNELS / 2) {
        memset(res, 0, sizeof res);
        int n = s2_jit_parse_resources(log, res, max);
        fuzz_note("log: %d rows of at most %d", n, max);
        FUZZ_CHECK(n >= 0 && n <= max, "%d rows for at most %d", n, max);
        for (int i = 0; i < n; i++) {
            const s2_kernel_res *r = &res[i];
            FUZZ_CHECK(memchr(r->name, '\0', sizeof r->name), "row %d: name not terminated", i);
            FUZZ_CHECK(r->regs >= 0 && r->smem >= 0 && r->cmem0 >= 0 && r->stack >= 0 &&
                           r->spill_stores >= 0 && r->spill_loads >= 0,
                       "row %d (%s): a negative count", i, r->name);
        }
    }
    free(log);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int fix = data[0] & 1;
    fuzz_part part[2];
    fuzz_split(data + 1, size - 1, part, 2);
    check_entry(part[0].p, part[0].n, fix);
    check_log(part[1].p, part[1].n);
    return 0;
}

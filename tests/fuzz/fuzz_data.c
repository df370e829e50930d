/*
 * fuzz_data.c — the token file reader (runtime/train/data.c): s2_data_open's checks of the header,
 * sizes, padding, index, tokens and digest, then packing from whatever it accepts.
 *
 * Input: one mode byte, then the file. Mode bit 0 set: the harness writes the SHA-256 digest of
 * the payload into the header first, so mutations reach the checks after the digest and the
 * packing code (a random file almost never carries its own digest); clear: the bytes as given.
 *
 * Beyond crashes and sanitizer reports it holds the reader's promises: a failure names the file;
 * an accepted file's index is monotone from 0 to the token count and every token is below the
 * vocab; every packed window holds tokens below the vocab (or the separator) with its labels
 * one step ahead of its inputs.
 */
#include "fuzz.h"

#include "runtime/train/data.h"

#define MAX_CONTEXT 64

static void check_file(const s2_data_file *f)
{
    FUZZ_CHECK(s2_data_doc_start(f, 0) == 0, "document 0 starts at %llu",
               (unsigned long long)s2_data_doc_start(f, 0));
    FUZZ_CHECK(s2_data_doc_start(f, f->n_docs) == f->n_tokens, "index ends at %llu of %llu",
               (unsigned long long)s2_data_doc_start(f, f->n_docs),
               (unsigned long long)f->n_tokens);
    for (uint64_t d = 1; d <= f->n_docs; d++)
        FUZZ_CHECK(s2_data_doc_start(f, d) >= s2_data_doc_start(f, d - 1),
                   "index not monotone at %llu", (unsigned long long)d);
    for (uint64_t i = 0; i < f->n_tokens; i++)
        FUZZ_CHECK(s2_data_token(f, i) < f->vocab, "token %llu is %u, vocab %u",
                   (unsigned long long)i, s2_data_token(f, i), f->vocab);
}

/* The packed stream as data.h defines it, built the plain way: the documents in order with sep
 * (when not S2_DATA_NO_SEP) between consecutive ones. Heap; *len receives its length. */
static uint32_t *plain_stream(const s2_data_file *f, int64_t sep, uint64_t *len)
{
    uint32_t *s = malloc((f->n_tokens + f->n_docs + 1) * sizeof *s);
    if (!s)
        abort();
    uint64_t n = 0;
    for (uint64_t d = 0; d < f->n_docs; d++) {
        if (d > 0 && sep != S2_DATA_NO_SEP)
            s[n++] = (uint32_t)sep;
        for (uint64_t i = s2_data_doc_start(f, d); i < s2_data_doc_start(f, d + 1); i++)
            s[n++] = s2_data_token(f, i);
    }
    *len = n;
    return s;
}

/* Windows of a few lengths, with and without a separator, against the plain stream: window k
 * is stream[k C, (k + 1) C + 1), and there are floor((L - 1) / C) of them. */
static void check_packing(const s2_data_file *f)
{
    if (f->n_tokens + f->n_docs > ((uint64_t)1 << 16))
        return;
    static const uint64_t contexts[] = {1, 2, 7, MAX_CONTEXT};
    const int64_t seps[] = {S2_DATA_NO_SEP, 0, (int64_t)f->vocab - 1, (int64_t)f->vocab};
    uint32_t win[MAX_CONTEXT + 1];
    for (size_t s = 0; s < sizeof seps / sizeof seps[0]; s++) {
        int64_t sep = seps[s];
        uint64_t len;
        uint32_t *stream = plain_stream(f, sep, &len);
        for (size_t c = 0; c < sizeof contexts / sizeof contexts[0]; c++) {
            uint64_t C = contexts[c];
            uint64_t n = s2_data_num_sequences(f, C, sep);
            FUZZ_CHECK(n == (len > C ? (len - 1) / C : 0),
                       "%llu sequences of %llu in a stream of %llu", (unsigned long long)n,
                       (unsigned long long)C, (unsigned long long)len);
            for (uint64_t k = 0; k <= n; k++) {
                s2_error err = {0};
                s2_status st = s2_data_batch(f, C, sep, k, win, &err);
                int valid = k < n && sep < (int64_t)f->vocab;
                FUZZ_CHECK((st == S2_OK) == valid,
                           "batch %llu of %llu, context %llu, sep %lld: status %d (%s)",
                           (unsigned long long)k, (unsigned long long)n, (unsigned long long)C,
                           (long long)sep, st, err.msg);
                if (st == S2_OK)
                    FUZZ_CHECK(!memcmp(win, stream + k * C, (C + 1) * sizeof *win),
                               "window %llu of %llu tokens differs from the stream",
                               (unsigned long long)k, (unsigned long long)C);
                else
                    FUZZ_CHECK(err.msg, "batch failed without a message");
                s2_error_clear(&err);
                if (k == 64 && n > 128) /* the first windows, then the last */
                    k = n - 64;
            }
        }
        free(stream);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int fix_digest = data[0] & 1;
    data++, size--;
    uint8_t *file = malloc(size ? size : 1);
    if (!file)
        return 0;
    if (size)
        memcpy(file, data, size);
    if (fix_digest && size >= S2_DATA_HEADER_SIZE) {
        uint8_t digest[32];
        s2_sha256(file + S2_DATA_HEADER_SIZE, size - S2_DATA_HEADER_SIZE, digest);
        memcpy(file + 40, digest, S2_DATA_DIGEST_SIZE);
    }
    fuzz_put("fuzz.tokens", file, size);
    free(file);

    char path[4096];
    fuzz_path("fuzz.tokens", path);
    s2_data_file *f = NULL;
    s2_error err = {0};
    s2_status st = s2_data_open(path, &f, &err);
    if (st == S2_OK) {
        fuzz_note("opened: %llu tokens, %llu documents", (unsigned long long)f->n_tokens,
                  (unsigned long long)f->n_docs);
        check_file(f);
        check_packing(f);
        s2_data_close(f);
    } else {
        fuzz_note("refused: %s", err.msg);
        FUZZ_CHECK(!f, "a failed open returned a file");
        FUZZ_CHECK(err.msg && strstr(err.msg, path), "failure without a message naming the "
                   "file: %s", err.msg);
    }
    s2_error_clear(&err);
    return 0;
}

/*
 * data.h — token data files for the trainer: the format, a streaming atomic writer, an mmap
 * reader that checks everything before trusting it, LongLoRA-style packing into fixed
 * windows, a seeded shuffle of the windows, and a byte-level "tokenizer" for demos.
 *
 * ## File format (version 1, every integer little-endian)
 *
 *   offset  size  field
 *        0     8  magic "S2TOKENS" (no NUL)
 *        8     4  u32 version = 1
 *       12     4  u32 token width in bytes: 2 (u16 tokens) or 4 (u32 tokens)
 *       16     8  u64 token count N
 *       24     8  u64 document count D
 *       32     4  u32 vocab size V (>= 1; <= 65536 when the width is 2)
 *       36     4  u32 flags = 0 (no flags are defined; any set bit is refused)
 *       40    16  digest: the first 16 bytes of the SHA-256 of bytes [64, end of file)
 *                 (tokens, padding and document index)
 *       56     8  reserved, zero
 *       64  N*W   the tokens, u16 or u32, each < V
 *        .     P  zero padding to the next multiple of 8 (P = (8 - N*W % 8) % 8)
 *        .  8(D+1) document index: u64 offsets; document d is tokens [idx[d], idx[d+1]);
 *                 idx[0] = 0, non-decreasing (empty documents are allowed), idx[D] = N
 *
 * so the file is exactly 64 + N*W + P + 8*(D+1) bytes. The padding keeps the index 8-byte
 * aligned in the mapping (the tokens are aligned too: they start 64 bytes into a page).
 * Tokens are stored without separators; packing adds them (s2_data_batch).
 *
 * ## Reading
 *
 * s2_data_open() maps the file read-only and checks, in this order: the header's size,
 * magic, version, width, vocab, flags and reserved bytes; the file's size against the
 * counts, exactly; the padding; the document index; then every token against the vocab and
 * the digest, in one pass. That pass is O(file size) — a vectorised bounds check and a
 * SHA-256, about 0.7 GB/s from the page cache on the build machine (SHA-256 dominates), so a
 * few seconds for the GB or two a long-context fine-tune reads: nothing next to training —
 * and it means no token the trainer later reads can index outside the embedding table. Errors (S2_ERR_PARSE) start with the path and say what is wrong:
 *   "PATH: truncated: header says 1000000 tokens of 2 bytes, file holds 1999936 bytes of tokens"
 * A mapped file must not be truncated in place while open (reading past the end of a mapping
 * raises SIGBUS); files written here are replaced by rename, which never does that.
 *
 * ## Writing
 *
 * s2_data_writer_* streams tokens to a temporary file PATH.tmp.XXXXXX in PATH's directory,
 * and on finish writes the index and the header, fsyncs, renames it onto PATH and fsyncs the
 * directory: a reader sees the old file or the whole new one, never a part. Abort (or any
 * failure of finish) removes the temporary file. Memory use is the document index (8 bytes a
 * document) plus a 1 MiB buffer.
 *
 * ## Packing (LongLoRA / Hugging Face "group_texts")
 *
 * The documents are concatenated in file order, with a separator token (the tokenizer's EOS,
 * passed in) between consecutive documents — not before the first or after the last — or with
 * nothing between them when sep is S2_DATA_NO_SEP (for files whose documents carry their own
 * BOS/EOS, such as byte-level ones). The stream has L = N + (D - 1) tokens with a separator
 * (N without). Sequence k is stream[k*C, (k+1)*C + 1): C inputs plus the C shifted labels,
 * so consecutive windows share one token. There are floor((L - 1) / C) sequences (0 when
 * L <= C); the remainder is dropped.
 *
 * Nothing here prints or exits. Functions that can fail return an s2_status and fill err.
 */
#ifndef S2_DATA_H
#define S2_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "gen/util.h"

#define S2_DATA_MAGIC "S2TOKENS"
#define S2_DATA_VERSION 1u
#define S2_DATA_HEADER_SIZE 64u
#define S2_DATA_DIGEST_SIZE 16u

/* Packing without a separator between documents. */
#define S2_DATA_NO_SEP (-1)

/*
 * Byte-level vocabulary (specs/tiny-byte-512.yaml: vocab_size 264 = 256 byte values + 8
 * specials): token = byte + 8; 0 PAD, 1 BOS, 2 EOS, 3..7 reserved.
 */
#define S2_DATA_BYTE_PAD 0u
#define S2_DATA_BYTE_BOS 1u
#define S2_DATA_BYTE_EOS 2u
#define S2_DATA_BYTE_OFFSET 8u
#define S2_DATA_BYTE_VOCAB 264u

/*
 * An open token file. Every field is read-only for callers; the pointers point into the
 * mapping and live until s2_data_close().
 */
typedef struct s2_data_file {
    char *path;
    uint32_t width;             /* 2 or 4 */
    uint32_t vocab;
    uint64_t n_tokens;
    uint64_t n_docs;
    const void *tokens;         /* n_tokens tokens: uint16_t or uint32_t by width */
    const uint64_t *doc_index;  /* n_docs + 1 offsets, 8-byte aligned */
    uint8_t digest[S2_DATA_DIGEST_SIZE];
    void *map;                  /* the whole file */
    size_t map_size;
} s2_data_file;

/*
 * Maps and validates path (see "Reading" above). On success *out is an open file; on failure
 * *out is NULL and err says which file and what is wrong.
 */
s2_status s2_data_open(const char *path, s2_data_file **out, s2_error *err);
/* Unmaps and frees; NULL is fine. */
void s2_data_close(s2_data_file *f);

/* A token file's counts, as its header gives them. */
typedef struct s2_data_info {
    uint32_t width, vocab;
    uint64_t n_tokens, n_docs;
} s2_data_info;

/*
 * Every check of s2_data_open but the pass over the tokens (each below vocab, the digest):
 * a regular file, the header, the size against the counts, the padding and the document
 * index. Cheap at any size: for checking a file before a long run starts.
 */
s2_status s2_data_check(const char *path, s2_data_info *info, s2_error *err);

/* Token i (i < n_tokens) and the start of document d (d <= n_docs: n_docs gives n_tokens). */
uint32_t s2_data_token(const s2_data_file *f, uint64_t i);
uint64_t s2_data_doc_start(const s2_data_file *f, uint64_t d);

/* ---- packing and order ------------------------------------------------------------------ */

/*
 * Number of sequences of context_len (C) tokens plus a label the file packs into with
 * separator sep (a token id, or S2_DATA_NO_SEP): floor((L - 1) / C), 0 when C is 0 or L <= C.
 */
uint64_t s2_data_num_sequences(const s2_data_file *f, uint64_t context_len, int64_t sep);
/* The same from the counts alone (s2_data_info's). */
uint64_t s2_data_count_sequences(uint64_t n_tokens, uint64_t n_docs, uint64_t context_len,
                                 int64_t sep);

/*
 * Writes sequence seq_index (< s2_data_num_sequences) into tokens_out, context_len + 1
 * tokens: inputs are tokens_out[0, C), labels tokens_out[1, C + 1). O(log D + C). Refuses
 * (S2_ERR_INVALID) C == 0, sep >= vocab or below -1, and seq_index out of range.
 */
s2_status s2_data_batch(const s2_data_file *f, uint64_t context_len, int64_t sep,
                        uint64_t seq_index, uint32_t *tokens_out, s2_error *err);

/*
 * A permutation of 0..n-1 fixed by seed, the same on every machine and in every version (so a
 * resumed run regenerates it and continues at its position): Fisher-Yates, for i = n-1 down
 * to 1 swap perm[i] with perm[j], j uniform in [0, i], drawn from splitmix64 seeded with
 * seed by rejection (r < 2^64 mod (i+1) is redrawn, then j = r mod (i+1)). Use another seed
 * per epoch (e.g. seed + epoch). O(n).
 */
void s2_data_order(uint64_t n, uint64_t seed, uint64_t *perm);

/* ---- writing ---------------------------------------------------------------------------- */

typedef struct s2_data_writer s2_data_writer;

/*
 * Starts a file at path with the given width (2 or 4) and vocab size (1..65536 for width 2,
 * >= 1 for width 4): creates the temporary file and reserves the header.
 */
s2_status s2_data_writer_open(const char *path, uint32_t width, uint32_t vocab,
                              s2_data_writer **out, s2_error *err);
/*
 * Appends n tokens to the current document. Every token must be < vocab; the first that is
 * not fails the call (S2_ERR_INVALID, naming its position) and appends nothing of this call.
 * After any failure the writer is spent: later appends and finish fail; abort it.
 */
s2_status s2_data_writer_append(s2_data_writer *w, const uint32_t *tokens, size_t n,
                                s2_error *err);
/* Ends the current document (possibly empty). */
s2_status s2_data_writer_end_doc(s2_data_writer *w, s2_error *err);
/*
 * Ends a non-empty open document, writes the index and header, and renames the file into
 * place. Frees w whether it succeeds or not; on failure nothing is left at the temporary
 * name and path is unchanged.
 */
s2_status s2_data_writer_finish(s2_data_writer *w, s2_error *err);
/* Removes the temporary file and frees w; NULL is fine. path is never touched. */
void s2_data_writer_abort(s2_data_writer *w);

/*
 * Whole-array convenience: writes n tokens as n_docs documents given by doc_index (n_docs + 1
 * offsets, doc_index[0] = 0, non-decreasing, doc_index[n_docs] = n), or as one document when
 * doc_index is NULL (n_docs is then ignored; n = 0 gives no document).
 */
s2_status s2_data_write(const char *path, uint32_t width, uint32_t vocab, const uint32_t *tokens,
                        uint64_t n, const uint64_t *doc_index, uint64_t n_docs, s2_error *err);

/* ---- byte-level vocabulary ------------------------------------------------------------- */

/*
 * Converts n regular files (text or any; a FIFO or a device is refused: it could stream
 * forever) into one token file at out: each input is one document, BOS, then byte +
 * S2_DATA_BYTE_OFFSET for every byte, then EOS; width 2, vocab S2_DATA_BYTE_VOCAB.
 * Inputs are streamed, not read whole. Pack the result with
 * S2_DATA_NO_SEP: its documents already end in EOS. On failure (an input that cannot be read
 * is named) out is unchanged.
 */
s2_status s2_data_from_text(const char *const *paths, int n, const char *out, s2_error *err);

/* The byte a byte-level token stands for, or -1 for the specials (and tokens >= 264). */
int s2_data_byte_of(uint32_t token);

#endif

#!/usr/bin/env python3
"""Turn text into an s2lora token file with a Hugging Face tokenizer (for real LLaMA models).

Each input is one document (or, with --jsonl FIELD, each line's FIELD is one): BOS + the
tokenizer's ids + EOS, as LongLoRA's data pipeline adds them. The output follows
runtime/train/data.h's format version 1 exactly (64-byte header, tokens as u16 when the vocabulary
fits, else u32, zero padding to 8 bytes, the u64 document index, the digest = the first 16
bytes of SHA-256 over everything after the header) and is written to a temporary file in the
same directory, fsynced and renamed, so a reader never sees half a file. `s2lora train` and
`s2lora eval` check all of it again when they open the file.

Needs the `tokenizers` package; the tokenizer is a tokenizer.json file or a model directory
that holds one (e.g. a Hugging Face LLaMA checkpoint).

usage: tokenize_llama.py --tokenizer PATH [--jsonl FIELD] [--no-bos] [--no-eos] -o OUT.tokens TEXT...
"""
import argparse
import hashlib
import json
import os
import struct
import sys
import tempfile


def load_tokenizer(path):
    from tokenizers import Tokenizer
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.exists(path):
        raise SystemExit(f"{path}: no tokenizer.json (give the file or a directory holding it)")
    return Tokenizer.from_file(path)


def special_id(tok, names):
    for n in names:
        i = tok.token_to_id(n)
        if i is not None:
            return i
    return None


def documents(paths, field):
    for p in paths:
        with open(p, encoding="utf-8", errors="replace") as f:
            if field is None:
                yield p, f.read()
                continue
            for ln, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SystemExit(f"{p}:{ln}: not JSON ({e.msg})")
                if field not in obj or not isinstance(obj[field], str):
                    raise SystemExit(f"{p}:{ln}: no string field \"{field}\"")
                yield f"{p}:{ln}", obj[field]


def write_tokens(out, tokens, index, vocab):
    """runtime/train/data.h's format 1, written atomically to out: tokens (the ids, or their
    little-endian bytes at the file's width: 2 while vocab <= 65536, else 4), the document index
    (token offsets, 0 first) and the vocabulary size."""
    width = 2 if vocab <= 65536 else 4
    if isinstance(tokens, (bytes, bytearray)):
        body, n = bytearray(tokens), len(tokens) // width
    else:
        body, n = bytearray(struct.pack(f"<{len(tokens)}{'H' if width == 2 else 'I'}", *tokens)), \
            len(tokens)
    body += b"\0" * ((8 - len(body) % 8) % 8)
    body += struct.pack(f"<{len(index)}Q", *index)
    digest = hashlib.sha256(body).digest()[:16]
    header = b"S2TOKENS" + struct.pack("<IIQQII", 1, width, n, len(index) - 1, vocab, 0)
    header += digest + b"\0" * 8
    assert len(header) == 64
    write_atomic(out, [header, body])


def write_atomic(path, chunks):
    """chunks (bytes) written to a temporary file beside path, synced, then renamed onto it."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--jsonl", metavar="FIELD")
    ap.add_argument("--no-bos", action="store_true")
    ap.add_argument("--no-eos", action="store_true")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("text", nargs="+")
    a = ap.parse_args()
    tok = load_tokenizer(a.tokenizer)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    bos = None if a.no_bos else special_id(tok, ["<s>", "<|begin_of_text|>"])
    eos = None if a.no_eos else special_id(tok, ["</s>", "<|end_of_text|>", "<|eot_id|>"])
    if not a.no_bos and bos is None:
        raise SystemExit("the tokenizer has no BOS token (<s>); pass --no-bos")
    if not a.no_eos and eos is None:
        raise SystemExit("the tokenizer has no EOS token (</s>); pass --no-eos")
    tokens, index = [], [0]
    for _, text in documents(a.text, a.jsonl):
        ids = tok.encode(text, add_special_tokens=False).ids
        tokens += ([bos] if bos is not None else []) + ids + ([eos] if eos is not None else [])
        index.append(len(tokens))
    write_tokens(a.out, tokens, index, vocab)
    print(f"{a.out}: {len(tokens)} tokens in {len(index) - 1} documents, vocab {vocab}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

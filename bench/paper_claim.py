#!/usr/bin/env python3
"""The helper of bench/paper-claim.sh: LongLoRA's claim, tested where long range matters.

Subcommands (python3 standard library only; the GPU machine has no internet):

  gen      a synthetic corpus as an s2lora token file (runtime/train/data.h, format 1), every
           document exactly --ctx tokens (BOS ... EOS). --kind train: a mix, each document a
           dense-recall one with probability --kv-share, else a passkey one (the key at a
           uniformly random depth); heldout: passkey documents only (for perplexity);
           passkey: an evaluation set stratified by the key's distance from the answer
           (--buckets); kv: dense-recall documents for evaluation. passkey and kv are also
           written as `s2lora logits` input (--logits-in: safetensors "tokens" I32 [T] and
           "cu_seqlens" I32 [B+1]) with a JSON of every answer's row, token and distance
           (--meta; for dense recall also the recall of each digit); --text-dir also writes
           each document's bytes as a file (to check the token file against `s2lora data
           --bytes`); --no-task drops the passkey prompt's opening task line, so that a prompt
           fits 256 tokens with room left for the key's depth
  rate     the median tokens/s of a train.jsonl (steps after the first few)
  plan     steps for each phase from a time budget and measured (or assumed) rates
  score    passkey retrieval from an `s2lora logits` output: exact match of the answer " K"
           (the space and the five digits, as LongLoRA compares them) by argmax given the true
           prefix (teacher forcing), digit accuracy and the digits' mean NLL, by distance
  kvscore  dense recall from an `s2lora logits` output: accuracy (argmax) and mean NLL of the
           recalled digits by distance, the share of recalls whose five digits are all right
           (exact), and the mean NLL of every token (s2lora's "loss")
  report   the results tables (markdown) and JSON from the rows written by score, kvscore, ppl

The passkey document (LongLoRA's passkey_retrieval.py, with a five-digit key and the answer):

  TASK \\n PREFIX \\n The pass key is K. Remember it. K is the pass key. \\n SUFFIX \\n
  What is the pass key? The pass key is K.

PREFIX and SUFFIX are cut from the repeated filler at any character, as LongLoRA cuts them; their
lengths add up to what makes the document exactly --ctx tokens. The distance of a prompt is
the answer's first digit's position minus the position of the key's first digit after "The
pass key is" in the information line: 82 + len(SUFFIX).

A passkey document asks for 5 of its 2048 tokens from far back (0.25 %), too little for a
fine-tune's loss to relearn retrieval by (a run of 7055 LoRA+ steps at 2048 lost it at every
distance, even with full attention). The dense-recall document makes long-range retrieval a
large share of what the loss rewards:

  KV_TASK \\n K04391 L77120 M52006 K04391 ... L77120 ...

slots of seven bytes: a key (one byte), five random digits and a space. The keys are bytes that
no document holds otherwise (0x80..0xFF and the printable ASCII characters absent from every
task line, the filler, the question and the information line: KV_KEYS, 178 of them), distinct
within a document, so a single-token match (an induction head) finds a key's definition. Slots
are filled left to right: the first free slot is a definition (a new key, new digits) and its
recall (the same key and digits) is put at a uniformly random free slot after it, so half the
slots are recalls (a lone last slot is a definition without one) and a document of S slots
needs ceil(S / 2) keys (kv_slots refuses a context the pool cannot fill: more than 2561
tokens). At 512 tokens 32 of 64 slots are recalls (distances 7..441), at 2048 141 of 283
(7..1974); distance: a recalled digit's position minus the same digit's in the definition. A
model that recalls predicts each of the five digits; one that cannot is left with
ln 10 = 2.303 nats a digit. Scored by digit (accuracy, NLL) and by recall (exact: all five
digits right).
"""
import argparse
import json
import math
import os
import random
import re
import statistics
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
import tokenize_llama  # noqa: E402  (the token file writer; its tokenizer import is lazy)
from tokenize_llama import write_atomic  # noqa: E402

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
        "memorize them. I will quiz you about the important information there.")
GARBAGE = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back "
           "again.")
QUESTION = "What is the pass key? The pass key is"
KEY_DIGITS = 5

# runtime/train/data.h's byte-level vocabulary: token = byte + 8; 1 BOS, 2 EOS; 264 tokens.
BYTE_OFFSET, BOS, EOS, VOCAB = 8, 1, 2, 264


def info_line(key):
    return f"The pass key is {key}. Remember it. {key} is the pass key."


def filler(n):
    """The first n characters of LongLoRA's garbage_inf (" ".join([garbage] * 5000))."""
    reps = n // (len(GARBAGE) + 1) + 1
    return " ".join([GARBAGE] * reps)[:n]


# What is not filler: the task, four newlines, the information line, the question, " K.";
# without the task line (task=False: a prompt that fits 256 tokens with room for the key's
# depth), three newlines.
FIXED = len(TASK) + 4 + len(info_line(10 ** (KEY_DIGITS - 1))) + len(QUESTION) + 2 + KEY_DIGITS
FIXED_NO_TASK = FIXED - len(TASK) - 1
# From the key's first digit in the information line to the answer's first digit, with an
# empty SUFFIX: the rest of the information line, two newlines, the question and the space.
DIST_BASE = len(info_line(10 ** (KEY_DIGITS - 1))) - len("The pass key is ") + 2 + len(QUESTION) + 1


def filler_room(ctx, task=True):
    """len(PREFIX) + len(SUFFIX) of a document of ctx tokens (BOS and EOS included); task:
    whether the prompt opens with the task line."""
    fixed = FIXED if task else FIXED_NO_TASK
    room = ctx - 2 - fixed
    if room < 0:
        raise ValueError(f"--ctx {ctx}: a passkey document needs at least {fixed + 2} tokens"
                         + ("" if not task else f" ({FIXED_NO_TASK + 2} with --no-task)"))
    return room


def distance_range(ctx, task=True):
    """The smallest and largest distance a document of ctx tokens can have."""
    return DIST_BASE, DIST_BASE + filler_room(ctx, task)


def document(ctx, key, n_suffix, task=True):
    """(text, distance): the document's bytes between BOS and EOS, and its distance."""
    room = filler_room(ctx, task)
    if not 0 <= n_suffix <= room:
        raise ValueError(f"suffix of {n_suffix} characters: valid 0..{room} at --ctx {ctx}")
    text = "\n".join([TASK] * task + [filler(room - n_suffix), info_line(key), filler(n_suffix),
                                      QUESTION]) + f" {key}."
    assert len(text) == ctx - 2, (len(text), ctx)
    return text, DIST_BASE + n_suffix


def parse_buckets(spec):
    """"0,256,512" -> [(0, 256), (256, 512)]: half-open distance ranges."""
    try:
        edges = [int(x) for x in spec.split(",")]
    except ValueError:
        raise ValueError(f"--buckets {spec}: expected increasing integers, e.g. 0,256,512")
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] < 0:
        raise ValueError(f"--buckets {spec}: expected at least two increasing integers >= 0")
    return list(zip(edges, edges[1:]))


def bucket_name(lo, hi):
    return f"{lo}-{hi}"


# Documents are drawn in chunks of CHUNK, each from its own stream (kind, ctx, seed, chunk):
# the same documents whatever the number of processes, and n documents are the first n of more.
CHUNK = 1024


def documents(kind, ctx, n, seed, buckets=None, kv_share=0.0, procs=1, task=True):
    """The corpus: a list of dicts, the same for the same arguments. Passkey documents have
    text, key, distance, bucket; dense-recall ones text and answers (kv_document's); task:
    whether passkey documents open with the task line.

    train: n documents, each a dense-recall one with probability kv_share, else a passkey one
    with the suffix length uniform over 0..room (the key at a uniformly random depth);
    heldout: n passkey documents so; kv: n dense-recall documents; passkey: n passkey
    documents per bucket, the distance uniform over the part of the bucket this context can
    hold (a bucket it cannot hold at all is an error). procs: processes that draw the chunks."""
    if n < 1:
        raise ValueError(f"--n {n}: at least one document")
    if not 0 <= kv_share <= 1:
        raise ValueError(f"--kv-share {kv_share}: a fraction, 0..1")
    if kind in ("train", "heldout", "kv"):
        share = {"train": kv_share, "heldout": 0.0, "kv": 1.0}[kind]
        if share < 1:
            filler_room(ctx, task)  # refuses a context too short for a passkey document
        if share > 0:
            kv_slots(ctx)  # and one too short, or too long for the key pool, for dense recall
        jobs = [(kind, ctx, seed, c, min(CHUNK, n - c * CHUNK), share, task)
                for c in range((n + CHUNK - 1) // CHUNK)]
        if procs > 1 and len(jobs) > 1:
            import multiprocessing
            with multiprocessing.Pool(min(procs, len(jobs))) as pool:
                parts = pool.starmap(_chunk, jobs)
        else:
            parts = [_chunk(*j) for j in jobs]
        return [d for p in parts for d in p]
    if kind != "passkey":
        raise ValueError(f"--kind {kind}: valid train, heldout, passkey, kv")
    rng = random.Random(f"{kind}:{ctx}:{seed}")
    dmin, dmax = distance_range(ctx, task)
    out = []
    for lo, hi in buckets:
        a, b = max(lo, dmin), min(hi - 1, dmax)
        if a > b:
            raise ValueError(f"bucket {bucket_name(lo, hi)}: a document of {ctx} tokens has "
                             f"distances {dmin}..{dmax} only")
        for _ in range(n):
            out.append(passkey_doc(ctx, rng, rng.randint(a, b) - DIST_BASE, bucket_name(lo, hi),
                                   task))
    return out


def passkey_doc(ctx, rng, n_suffix, bucket, task=True):
    key = rng.randrange(10 ** (KEY_DIGITS - 1), 10 ** KEY_DIGITS)
    text, dist = document(ctx, key, n_suffix, task)
    return {"text": text, "key": str(key), "distance": dist, "bucket": bucket}


def _chunk(kind, ctx, seed, c, n, share, task=True):
    """Chunk c of a train, heldout or kv corpus: n documents."""
    rng = random.Random(f"{kind}:{ctx}:{seed}:{c}")
    room = filler_room(ctx, task) if share < 1 else 0
    out = []
    for _ in range(n):
        if share >= 1 or (share > 0 and rng.random() < share):
            text, answers = kv_document(ctx, rng)
            out.append({"text": text, "answers": answers})
        else:
            out.append(passkey_doc(ctx, rng, rng.randint(0, room), None, task))
    return out


KV_TASK = "Each symbol stands for the five digits after it. Recall them."
KV_DIGITS = 5
KV_SLOT = 1 + KV_DIGITS + 1  # a key byte, its five digits, a space
KV_PAD = "."


def kv_key_pool():
    """The bytes a dense-recall key may be: 0x80..0xFF and every printable ASCII character
    that no document holds otherwise (not in any task line, the filler, the question, the
    passkey's information line with any digit, the padding or the separators), so that a key's
    only other occurrence in a document is its recall."""
    used = set((TASK + GARBAGE + QUESTION + KV_TASK + info_line("0123456789") + KV_PAD +
                " \n").encode("ascii"))
    return bytes(b for b in range(0x21, 0x7F) if b not in used) + bytes(range(0x80, 0x100))


KV_KEYS = kv_key_pool()


def kv_slots(ctx):
    """(slots, padding): the slots of a dense-recall document of ctx tokens, and the '.'s that
    fill it to exactly ctx (BOS and EOS included). Every definition but possibly the last
    takes a later slot for its recall, so a document has ceil(slots / 2) keys: refused where
    the pool of keys is smaller."""
    body = ctx - 2 - len(KV_TASK) - 1
    n = (body + 1) // KV_SLOT
    if n < 2:
        raise ValueError(f"--ctx {ctx}: a dense-recall document needs at least "
                         f"{len(KV_TASK) + 3 + 2 * KV_SLOT - 1} tokens")
    if (n + 1) // 2 > len(KV_KEYS):
        raise ValueError(f"--ctx {ctx}: a dense-recall document of {n} slots needs "
                         f"{(n + 1) // 2} distinct keys, the pool has {len(KV_KEYS)} "
                         f"(at most --ctx {kv_max_ctx()})")
    return n, body - (KV_SLOT * n - 1)


def kv_max_ctx():
    """The longest context whose dense-recall documents the key pool can fill."""
    n = 2 * len(KV_KEYS)  # slots
    return KV_SLOT * (n + 1) + 1 + len(KV_TASK)


# bench/paper-claim.sh's longest documents (phase 2's 2048 tokens) must be possible
assert kv_max_ctx() >= 2048, (len(KV_KEYS), kv_max_ctx())


def kv_document(ctx, rng):
    """(text, answers): a dense-recall document (bytes) and its recalls, one entry per recalled
    digit: (its token position in the document, BOS at 0; the digit; distance in tokens from
    the same digit in the key's definition). A recall's digits are consecutive entries.

    The slots are filled left to right: the first free slot is a definition (a new key, five
    random digits), and its recall (the same key and digits) goes to a uniformly random free
    slot after it; only the last slot, when it is left alone, is a definition without one."""
    n, pad = kv_slots(ctx)
    free = list(range(n))
    first = [0] * n  # slot -> the slot of its definition (itself for a definition)
    while free:
        i = free.pop(0)
        first[i] = i
        if free:
            first[free.pop(int(rng.random() * len(free)))] = i
    defs = [i for i in range(n) if first[i] == i]
    keys = dict(zip(defs, rng.sample(KV_KEYS, len(defs))))
    digits = {i: b"%05d" % rng.randrange(10 ** KV_DIGITS) for i in defs}
    base = 1 + len(KV_TASK) + 1 + 1  # BOS, the task, the newline, a key: the first digit
    answers = [(base + KV_SLOT * i + j, digits[f][j] - ord("0"), KV_SLOT * (i - f))
               for i, f in enumerate(first) if f != i for j in range(KV_DIGITS)]
    text = (KV_TASK.encode("ascii") + b"\n" +
            b" ".join(bytes([keys[f]]) + digits[f] for f in first) + KV_PAD.encode() * pad)
    assert len(text) == ctx - 2, (len(text), ctx)
    return text, answers


def as_bytes(text):
    """A document's bytes: passkey documents are ASCII str, dense-recall ones bytes."""
    return text if isinstance(text, bytes) else text.encode("ascii")


def doc_tokens(text):
    """The document's tokens as little-endian u16 bytes: BOS, byte + 8 each, EOS."""
    raw = as_bytes(text)
    out = bytearray(2 * (len(raw) + 2))
    out[0::2] = bytes([BOS]) + raw.translate(_SHIFT) + bytes([EOS])
    out[1::2] = b"\0" + raw.translate(_HIGH) + b"\0"  # 1 for the bytes 248..255
    return out


_SHIFT = bytes((i + BYTE_OFFSET) & 0xFF for i in range(256))
_HIGH = bytes((i + BYTE_OFFSET) >> 8 for i in range(256))


def write_token_file(path, docs):
    """The documents as a token file (scripts/tokenize_llama.py's writer); their token count."""
    body = bytearray()
    index = [0]
    for d in docs:
        body += doc_tokens(d["text"])
        index.append(len(body) // 2)
    tokenize_llama.write_tokens(path, body, index, VOCAB)
    return index[-1]


def safetensors_bytes(tensors, metadata=None):
    """tensors: [(name, dtype, shape, raw bytes)] laid out back to back, as s2_st_write does."""
    head = {}
    if metadata:
        head["__metadata__"] = metadata
    off = 0
    for name, dtype, shape, raw in tensors:
        head[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    js = json.dumps(head, separators=(",", ":")).encode()
    js += b" " * ((8 - len(js) % 8) % 8)
    return [struct.pack("<Q", len(js)), js] + [raw for _, _, _, raw in tensors]


def write_logits_input(path, docs, ctx):
    u16 = bytearray()
    for d in docs:
        u16 += doc_tokens(d["text"])
    tokens = bytearray(2 * len(u16))  # each u16 widened to a little-endian i32
    tokens[0::4] = u16[0::2]
    tokens[1::4] = u16[1::2]
    cu = struct.pack(f"<{len(docs) + 1}i", *[i * ctx for i in range(len(docs) + 1)])
    write_atomic(path, safetensors_bytes(
        [("tokens", "I32", [len(docs) * ctx], bytes(tokens)), ("cu_seqlens", "I32",
                                                                 [len(docs) + 1], cu)],
        {"format": "pt"}))


def kv_meta_answers(docs, ctx):
    """The meta's answers of dense-recall documents, one per recalled digit: [its row in the
    batch (the row before the digit), the digit's token, its distance, the recall it belongs to
    (numbered across the set: each KV_DIGITS consecutive entries of a document's answers)]."""
    out = []
    for i, d in enumerate(docs):
        ans = d["answers"]
        assert len(ans) % KV_DIGITS == 0, len(ans)
        for k, (pos, digit, dist) in enumerate(ans):
            rec = len(out) // KV_DIGITS
            assert k % KV_DIGITS == 0 or (pos, dist) == (ans[k - 1][0] + 1, ans[k - 1][2])
            out.append([i * ctx + pos - 1, ord(str(digit)) + BYTE_OFFSET, dist, rec])
    return out


def answer_rows(ctx):
    """Rows of a passkey document's logits that predict the answer " K" (teacher forcing): the
    space is token ctx - 8 and digit i token ctx - 7 + i (text ends " K." then EOS); row p - 1
    predicts token p."""
    return [ctx - 9 + i for i in range(1 + KEY_DIGITS)]


def cmd_gen(a):
    buckets = parse_buckets(a.buckets) if a.kind in ("passkey", "kv") else None
    if bool(a.meta) != bool(a.logits_in) or (a.meta and a.kind not in ("passkey", "kv")):
        raise SystemExit("gen: --meta and --logits-in go together, with --kind passkey or kv")
    if not (a.out or a.meta):
        raise SystemExit("gen: nothing to write (-o, or --meta and --logits-in)")
    docs = documents(a.kind, a.ctx, a.n, a.seed, buckets if a.kind == "passkey" else None,
                     a.kv_share, a.procs, not a.no_task)
    if a.out:
        n = write_token_file(a.out, docs)
        kv = sum("answers" in d for d in docs)
        print(f"{a.out}: {len(docs)} {a.kind} documents of {a.ctx} tokens ({n} tokens; "
              f"{kv} dense-recall, "
              f"{sum(len(d['answers']) for d in docs if 'answers' in d) // KV_DIGITS} recalls)")
    if a.kind == "passkey" and a.meta:
        write_logits_input(a.logits_in, docs, a.ctx)
        meta = {"ctx": a.ctx, "seed": a.seed, "buckets": [bucket_name(*b) for b in buckets],
                "answer_rows": answer_rows(a.ctx),
                "prompts": [{k: d[k] for k in ("key", "distance", "bucket")} for d in docs]}
        write_atomic(a.meta, [json.dumps(meta, indent=1).encode()])
        print(f"{a.logits_in}: {len(docs)} passkey prompts of {a.ctx} tokens, "
              f"{len(buckets)} buckets; {a.meta}")
    if a.kind == "kv" and a.meta:
        write_logits_input(a.logits_in, docs, a.ctx)
        answers = kv_meta_answers(docs, a.ctx)
        recalls = len(answers) // KV_DIGITS
        meta = {"ctx": a.ctx, "seed": a.seed, "docs": len(docs),
                "buckets": [bucket_name(*b) for b in buckets], "answers": answers}
        write_atomic(a.meta, [json.dumps(meta).encode()])
        print(f"{a.logits_in}: {len(docs)} dense-recall documents of {a.ctx} tokens, "
              f"{recalls} recalls ({len(answers)} digits); {a.meta}")
    if a.text_dir:
        os.makedirs(a.text_dir, exist_ok=True)
        for i, d in enumerate(docs):
            with open(os.path.join(a.text_dir, f"{i:06d}.txt"), "wb") as f:
                f.write(as_bytes(d["text"]))
    return 0


def read_jsonl(path):
    rows = []
    with open(path) as f:
        for ln, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise SystemExit(f"{path}:{ln}: not JSON ({e.msg})")
    return rows


def median_rate(path, skip):
    """The median tokens/s of the steps after the first skip (of all, in a shorter run)."""
    rows = read_jsonl(path)
    rates = [r["tokens_per_s"] for r in (rows[skip:] or rows) if "tokens_per_s" in r]
    if not rates:
        raise SystemExit(f"{path}: no step has tokens_per_s")
    return statistics.median(rates)


def cmd_rate(a):
    """Prints the median tokens/s, the number of steps and the last loss_ema."""
    rows = read_jsonl(a.log)
    last = rows[-1].get("loss_ema", float("nan")) if rows else float("nan")
    print(f"{median_rate(a.log, a.skip):.0f} {len(rows)} {last:.4f}")
    return 0


def plan(budget, elapsed, reserve, rate1, rate2, tok1, tok2, share1, n_ext):
    """Steps of phase 1 and of each of the n_ext phase-2 runs: the time left after elapsed and
    reserve, share1 of it to phase 1 and the rest split evenly, at the given tokens/s."""
    left = budget - elapsed - reserve
    t1 = left * share1
    t2 = left * (1 - share1) / n_ext
    return {"left_s": left, "pre_s": t1, "ext_s": t2,
            "pre_steps": int(t1 * rate1 // tok1) if left > 0 else 0,
            "ext_steps": int(t2 * rate2 // tok2) if left > 0 else 0}


def cmd_plan(a):
    p = plan(a.budget, a.elapsed, a.reserve, a.rate1, a.rate2, a.tokens1, a.tokens2, a.share1,
             a.n_ext)
    print(f"{p['pre_steps']} {p['ext_steps']} {p['pre_s']:.0f} {p['ext_s']:.0f}")
    return 0


def read_safetensors_header(path):
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SystemExit(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 << 20:
            raise SystemExit(f"{path}: header of {n} bytes (at most 100 MB)")
        head = json.loads(f.read(n))
    return head, 8 + n


def logits_rows(path, n_rows, want):
    """For each (row, token) of want: (the row's argmax, the first of equal maxima; the token's
    NLL under the row's softmax), from an `s2lora logits` file that must hold n_rows rows."""
    head, base = read_safetensors_header(path)
    t = head.get("logits")
    if not t or t["dtype"] != "F32" or len(t["shape"]) != 2:
        raise SystemExit(f"{path}: no F32 [T, vocab] tensor \"logits\"")
    T, V = t["shape"]
    if T != n_rows:
        raise SystemExit(f"{path}: logits has {T} rows, the documents need {n_rows}")
    if V < VOCAB:
        raise SystemExit(f"{path}: vocab {V}, the byte-level one needs {VOCAB}")
    out = []
    with open(path, "rb") as f:
        for r, want_tok in want:
            f.seek(base + t["data_offsets"][0] + r * V * 4)
            row = struct.unpack(f"<{V}f", f.read(4 * V))
            m = max(row)
            out.append((row.index(m), m + math.log(sum(math.exp(x - m) for x in row)) -
                        row[want_tok]))
    return out


def logits_loss(path):
    """s2lora logits' "loss" (the mean NLL of every labelled token), or None."""
    head, base = read_safetensors_header(path)
    t = head.get("loss")
    if not t or t["dtype"] != "F64" or t["shape"] != [1]:
        return None
    with open(path, "rb") as f:
        f.seek(base + t["data_offsets"][0])
        return struct.unpack("<d", f.read(8))[0]


def score(meta, logits_path, far=None):
    """Per-bucket and overall passkey retrieval from the logits of the prompts meta describes;
    with far, also over the prompts whose distance is at least far (as group "far+"). A prompt
    counts as retrieved when the argmax of every answer row is the answer: the space, then the
    digits (LongLoRA's exact match); digit accuracy and NLL are over the digits."""
    ctx, prompts, rows = meta["ctx"], meta["prompts"], meta["answer_rows"]
    want = [(i * ctx + r, ord((" " + p["key"])[j]) + BYTE_OFFSET)
            for i, p in enumerate(prompts) for j, r in enumerate(rows)]
    got = logits_rows(logits_path, ctx * len(prompts), want)
    per = {}
    k = len(rows)
    for i, p in enumerate(prompts):
        mine = got[i * k:(i + 1) * k]
        hits = [best == w for (best, _), (_, w) in zip(mine, want[i * k:(i + 1) * k])]
        groups = [p["bucket"], "all"] + ([f"{far}+"] if far and p["distance"] >= far else [])
        for b in groups:
            s = per.setdefault(b, {"n": 0, "exact": 0, "digits": 0, "nll": 0.0})
            s["n"] += 1
            s["exact"] += all(hits)
            s["digits"] += sum(hits[1:])
            s["nll"] += sum(nll for _, nll in mine[1:]) / (k - 1)
    out = {}
    for b in score_columns(meta, far):
        if b not in per:
            raise SystemExit(f"{logits_path}: no prompt of distance {b}")
        s = per[b]
        out[b] = {"n": s["n"], "accuracy": s["exact"] / s["n"],
                  "digit_accuracy": s["digits"] / (s["n"] * (k - 1)),
                  "digit_nll": s["nll"] / s["n"]}
    return out


def kv_score(meta, logits_path, far=None):
    """Dense recall by distance bucket (and far+, all): the recalled digits' count n, accuracy
    (argmax is the digit) and mean NLL (the loss on the answer tokens alone); the recalls'
    count and exact rate (every digit of the recall argmax-right). A meta answer is [row,
    token, distance, recall]; one of three fields (an older meta) is a recall of its own."""
    buckets = [tuple(int(x) for x in b.split("-")) for b in meta["buckets"]]
    answers = meta["answers"]
    got = logits_rows(logits_path, meta["ctx"] * meta["docs"], [(a[0], a[1]) for a in answers])
    per = {}
    recall = {}  # recall -> [its distance, every digit right so far]
    for a, (best, nll) in zip(answers, got):
        tok, dist = a[1], a[2]
        rec = recall.setdefault(a[3] if len(a) > 3 else ("row", a[0]), [dist, True])
        if rec[0] != dist:
            raise SystemExit(f"meta: recall {a[3]} has digits at distances {rec[0]} and {dist}")
        rec[1] = rec[1] and best == tok
        for b in kv_groups(buckets, far, dist):
            s = per.setdefault(b, {"n": 0, "hits": 0, "nll": 0.0, "recalls": 0, "exact": 0})
            s["n"] += 1
            s["hits"] += best == tok
            s["nll"] += nll
    for dist, right in recall.values():
        for b in kv_groups(buckets, far, dist):
            per[b]["recalls"] += 1
            per[b]["exact"] += right
    out = {}
    for b in score_columns(meta, far):  # a group without recalls (a small set) has n 0
        s = per.get(b, {"n": 0, "recalls": 0})
        out[b] = {"n": s["n"], "accuracy": s["hits"] / s["n"] if s["n"] else None,
                  "nll": s["nll"] / s["n"] if s["n"] else None, "recalls": s["recalls"],
                  "exact": s["exact"] / s["recalls"] if s["recalls"] else None}
    return out


def kv_groups(buckets, far, dist):
    """The groups of kv_score a recall of distance dist counts in."""
    return ([bucket_name(lo, hi) for lo, hi in buckets if lo <= dist < hi] + ["all"] +
            ([f"{far}+"] if far and dist >= far else []))


def score_columns(meta, far):
    """The score's groups in table order: the buckets, far+ (with far), all."""
    return meta["buckets"] + ([f"{far}+"] if far else []) + ["all"]


def cmd_score(a):
    with open(a.meta) as f:
        meta = json.load(f)
    res = score(meta, a.logits, a.far)
    row = {"label": a.label, "ctx": meta["ctx"], "attention": a.attention,
           "columns": score_columns(meta, a.far), "passkey": res}
    write_atomic(a.out, [json.dumps(row, indent=1).encode()])
    print(f"{a.label}: passkey at {meta['ctx']} ({a.attention} attention): " + ", ".join(
        f"{b} {res[b]['accuracy']:.2f}" for b in score_columns(meta, a.far)))
    return 0


def cmd_kvscore(a):
    with open(a.meta) as f:
        meta = json.load(f)
    res = kv_score(meta, a.logits, a.far)
    cols = score_columns(meta, a.far)
    row = {"label": a.label, "ctx": meta["ctx"], "attention": a.attention, "kv_columns": cols,
           "kv": res, "kv_loss": logits_loss(a.logits)}
    write_atomic(a.out, [json.dumps(row, indent=1).encode()])
    print(f"{a.label}: dense recall at {meta['ctx']} ({a.attention} attention): " + ", ".join(
        f"{b} {fmt(res[b]['accuracy'], 2)}" for b in cols) +
        f"; exact recalls {fmt(res['all']['exact'], 2)}; answer NLL {fmt(res['all']['nll'], 3)}")
    return 0


def parse_eval_line(text):
    """`s2lora eval`'s summary line: ppl and nll."""
    m = re.search(r"ppl ([0-9.]+|nan|inf) \(nll ([0-9.]+|nan|inf)\)", text)
    if not m:
        raise SystemExit(f"not an s2lora eval summary: {text.strip()!r}")
    return float(m.group(1)), float(m.group(2))


def cmd_ppl(a):
    ppl, nll = parse_eval_line(a.line)
    row = {"label": a.label, "ctx": a.ctx, "attention": "full", "ppl": ppl, "nll": nll}
    write_atomic(a.out, [json.dumps(row, indent=1).encode()])
    return 0


def models(pre, ext, method="LoRA+"):
    """The report's rows in order: label, description, for phase 1 at pre tokens and phase 2 at
    ext (S²-Attn's G = ext / 4, shift G / 2: the spec's defaults at ext), the extensions
    fine-tuned by method (LoRA+ or full FT)."""
    return [
        (f"pre@{pre}", f"pre-trained at {pre} (its own context)"),
        (f"pre@{ext}", f"pre-trained, RoPE x{ext // pre}, no fine-tuning"),
        ("s2", f"{method} with S²-Attn (G {ext // 4}, shift {ext // 8})"),
        ("short", f"{method} with short attention (G {ext // 4}, no shift)"),
        ("full", f"{method} with full attention"),
    ]


def fmt(x, digits):
    return "–" if x is None else f"{x:.{digits}f}"


def far_column(cols):
    return next((c for c in cols if c.endswith("+")), "all")


def cmd_report(a):
    rows = []
    for name in sorted(os.listdir(a.rows)):
        if name.endswith(".json"):
            with open(os.path.join(a.rows, name)) as f:
                rows.append(json.load(f))
    run = {}
    for kv in a.info:
        k, sep, v = kv.partition("=")
        if not sep:
            raise SystemExit(f"report --info {kv}: expected KEY=VALUE")
        run[k] = v
    by = {}
    for r in rows:
        by.setdefault((r["label"], r["attention"]), {}).update(r)
    lines = [f"# LongLoRA's claim on passkey retrieval: {run.get('status', 'unknown')}", ""]
    lines += [f"- {k}: {v}" for k, v in run.items() if k != "status"]
    # the two lengths: phase 1's (the pre-trained model's own, in its label pre@N) and phase
    # 2's (the extensions', 4 times it), from whichever rows there are
    ext = {r["ctx"] for r in rows if r.get("label") in ("s2", "short", "full") and "ctx" in r}
    pres = sorted({int(r["label"][4:]) for r in rows if str(r.get("label")).startswith("pre@")})
    p_ctx = pres[0] if pres else (min(ext) // 4 if ext else 512)
    e_ctx = max(ext) if ext else (pres[-1] if len(pres) > 1 else 4 * p_ctx)
    pre = by.get((f"pre@{p_ctx}", "full"), {})
    pk = pre.get("passkey", {}).get("all")
    if pk and pk["accuracy"] < 0.5:
        lines.append(f"- warning: the pre-trained model retrieves {pk['accuracy']:.2f} of the "
                     f"keys at its own {p_ctx} tokens: it had not learned the task, so the "
                     "extensions' comparison says little about the claim")
    kv = pre.get("kv", {}).get("all")
    if kv and kv["accuracy"] is not None and kv["accuracy"] < 0.5:
        lines.append(f"- warning: the pre-trained model recalls {kv['accuracy']:.2f} of the "
                     f"dense-recall digits at its own {p_ctx} tokens: it had not learned to "
                     "retrieve")
    full = by.get(("full", "full"), {})
    pk, kvf = full.get("passkey", {}).get("all"), None
    if "kv" in full:
        kvf = (far_column(full["kv_columns"]), full["kv"][far_column(full["kv_columns"])])
    if kvf and kvf[1]["accuracy"] is None:
        kvf = None
    if (pk and pk["accuracy"] < 0.5) or (kvf and kvf[1]["accuracy"] < 0.5):
        got = ([f"{pk['accuracy']:.2f} of the passkeys"] if pk else []) + (
            [f"{kvf[1]['accuracy']:.2f} of the dense-recall digits at distances {kvf[0]}"]
            if kvf else [])
        lines.append("- warning: fine-tuned with full attention (the upper bound), the model "
                     f"retrieves {' and '.join(got)} with full attention at {e_ctx}: where the "
                     "upper bound did not learn long-range retrieval, S²-Attn and short "
                     "attention cannot be told apart")
    lines.append("")
    for ctx in (p_ctx, e_ctx):
        sel = [(lab, desc, att) for lab, desc in models(p_ctx, e_ctx, a.method)
               for att in ("full", "s2", "short")
               if (lab, att) in by and by[(lab, att)].get("ctx") == ctx]
        pks = [x for x in sel if "passkey" in by[x[0], x[2]] or "ppl" in by[x[0], x[2]]]
        if pks:
            cols = next((by[lab, att]["columns"] for lab, _, att in pks
                         if "columns" in by[lab, att]), ["all"])
            lines.append(f"## At {ctx} tokens: passkey exact match by distance (the answer "
                         "\" K\" by argmax given the true prefix), perplexity on held-out "
                         "documents")
            lines.append("")
            lines.append("| model | eval attention | " + " | ".join(cols) +
                         " | digit acc | digit NLL | ppl |")
            lines.append("| --- | --- |" + " ---: |" * (len(cols) + 3))
            for lab, desc, att in pks:
                r = by[(lab, att)]
                pk = r.get("passkey", {})
                cells = [f"{pk[c]['accuracy']:.2f}" if c in pk else "–" for c in cols]
                al = pk.get("all", {})
                lines.append(f"| {desc} | {att} | " + " | ".join(cells) + " | " +
                             (f"{al['digit_accuracy']:.3f}" if al else "–") + " | " +
                             (f"{al['digit_nll']:.3f}" if al else "–") + " | " +
                             (f"{r['ppl']:.4f}" if "ppl" in r else "–") + " |")
            n = next((by[lab, att]["passkey"]["all"]["n"] for lab, _, att in pks
                      if "passkey" in by[lab, att]), 0)
            lines.append("")
            lines.append(f"{n} prompts at {ctx} tokens, the same for every model.")
            lines.append("")
        kvs = [x for x in sel if "kv" in by[x[0], x[2]]]
        if kvs:
            cols = by[kvs[0][0], kvs[0][2]]["kv_columns"]
            exact = [c for c in cols if c.endswith("+")] + ["all"]
            lines.append(f"## At {ctx} tokens: dense recall (held-out documents like the "
                         "training ones): digit accuracy by distance, exact recalls, loss on "
                         "the answer tokens")
            lines.append("")
            lines.append("| model | eval attention | " + " | ".join(cols) + " | " +
                         " | ".join(f"exact {c}" for c in exact) + " | answer NLL | "
                         "all-token NLL |")
            lines.append("| --- | --- |" + " ---: |" * (len(cols) + len(exact) + 2))
            for lab, desc, att in kvs:
                r = by[(lab, att)]
                cells = [fmt(r["kv"].get(c, {}).get("accuracy"), 2) for c in cols]
                cells += [fmt(r["kv"].get(c, {}).get("exact"), 2) for c in exact]
                lines.append(f"| {desc} | {att} | " + " | ".join(cells) + " | " +
                             fmt(r["kv"].get("all", {}).get("nll"), 3) + " | " +
                             fmt(r.get("kv_loss"), 3) + " |")
            n = by[kvs[0][0], kvs[0][2]]["kv"]

            def recalls(c):  # a row of an older run counted each digit as a recall
                return n[c].get("recalls", n[c]["n"])
            lines.append("")
            lines.append(f"{recalls('all')} recalls ({n['all']['n']} digits) at {ctx} tokens ("
                         + ", ".join(f"{c}: {recalls(c)}" for c in cols if c != "all") +
                         "), the same for every model. Digit accuracy: the argmax of each "
                         "recalled digit given the true prefix; exact: the recalls whose "
                         f"{KV_DIGITS} digits are all right. Answer NLL: the mean over the "
                         "recalled digits, ln 10 = 2.303 when nothing is retrieved; a model "
                         "scored with the attention it was trained with shows whether "
                         "retrieval was learned at all.")
            lines.append("")
    text = "\n".join(lines) + "\n"
    write_atomic(a.md, [text.encode()])
    write_atomic(a.json, [json.dumps({"run": run, "rows": rows}, indent=1).encode()])
    sys.stdout.write(text)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("--kind", required=True, choices=["train", "heldout", "passkey", "kv"])
    g.add_argument("--ctx", type=int, required=True)
    g.add_argument("--n", type=int, required=True,
                   help="documents (passkey: documents per bucket)")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--buckets", default="0,256,512,1024,1536,2048")
    g.add_argument("--kv-share", type=float, default=0.0,
                   help="train: the fraction of dense-recall documents (0)")
    g.add_argument("--procs", type=int, default=min(16, os.cpu_count() or 1),
                   help="processes drawing the documents (the result is the same)")
    g.add_argument("-o", "--out")
    g.add_argument("--meta")
    g.add_argument("--logits-in")
    g.add_argument("--text-dir")
    g.add_argument("--no-task", action="store_true",
                   help="passkey documents without the task line (LongLoRA's opening sentence), "
                        f"so that one fits {FIXED_NO_TASK + 2} tokens instead of {FIXED + 2}")
    r = sub.add_parser("rate")
    r.add_argument("log")
    r.add_argument("--skip", type=int, default=5)
    p = sub.add_parser("plan")
    for k in ("budget", "elapsed", "reserve", "rate1", "rate2", "share1"):
        p.add_argument("--" + k, type=float, required=True)
    for k in ("tokens1", "tokens2", "n_ext"):
        p.add_argument("--" + k.replace("_", "-"), dest=k, type=int, required=True)
    s = sub.add_parser("score")
    s.add_argument("--far", type=int, help="also score the prompts of distance >= FAR together")
    for k in ("meta", "logits", "label", "attention", "out"):
        s.add_argument("--" + k, required=True)
    k = sub.add_parser("kvscore")
    k.add_argument("--far", type=int, help="also score the recalls of distance >= FAR together")
    for x in ("meta", "logits", "label", "attention", "out"):
        k.add_argument("--" + x, required=True)
    q = sub.add_parser("ppl")
    for k in ("line", "label", "out"):
        q.add_argument("--" + k, required=True)
    q.add_argument("--ctx", type=int, required=True)
    o = sub.add_parser("report")
    for k in ("rows", "md", "json"):
        o.add_argument("--" + k, required=True)
    o.add_argument("--info", action="append", default=[], metavar="KEY=VALUE",
                   help="a line of the run's description, in order (status: the title's)")
    o.add_argument("--method", default="LoRA+", choices=["LoRA+", "full FT"],
                   help="how the extensions were fine-tuned (their rows' names)")
    a = ap.parse_args(argv)
    try:
        return {"gen": cmd_gen, "rate": cmd_rate, "plan": cmd_plan, "score": cmd_score,
                "kvscore": cmd_kvscore, "ppl": cmd_ppl, "report": cmd_report}[a.cmd](a)
    except ValueError as e:
        raise SystemExit(f"paper_claim.py {a.cmd}: {e}")


if __name__ == "__main__":
    sys.exit(main())

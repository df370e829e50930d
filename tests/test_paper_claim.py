#!/usr/bin/env python3
"""bench/paper_claim.py (bench/paper-claim.sh's corpus, scorer, plan and report), without a GPU.

The corpus: the same seed gives the same documents and token file (whatever the number of
processes), every document is exactly its context long, each passkey prompt's key and
distance and each dense-recall document's recalls (digit, distance) are where the meta file
says and can be read back from its text, the training mix holds both kinds; the token file
equals `s2lora data --bytes` on the same text and `s2lora logits` accepts the prompts file.
The scorers: a logits file laid out as `s2lora logits` writes it (runtime/core/st.c), with
known argmaxes and values, gives the expected accuracies and NLL per bucket. The report: its
tables and warnings. The script: every s2lora call of a run on a stand-in. S2LORA_BIN names
the s2lora binary (ctest sets it; default build/s2lora).
"""
import contextlib
import io
import json
import math
import os
import re
import struct
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(ROOT, "bench"))
import paper_claim as pc  # noqa: E402

S2LORA = os.environ.get("S2LORA_BIN", os.path.join(ROOT, "build", "s2lora"))
SPEC = os.path.join(ROOT, "specs", "tiny-byte-512.yaml")
INFO = re.compile(r"The pass key is (\d{5})\. Remember it\. \1 is the pass key\.")


def read_token_file(path):
    with open(path, "rb") as f:
        raw = f.read()
    magic, (ver, width, n, d, vocab, flags) = raw[:8], struct.unpack("<IIQQII", raw[8:40])
    assert magic == b"S2TOKENS" and ver == 1 and width == 2 and vocab == 264 and flags == 0
    toks = list(struct.unpack(f"<{n}H", raw[64:64 + 2 * n]))
    at = 64 + 2 * n + (8 - 2 * n % 8) % 8
    index = list(struct.unpack(f"<{d + 1}Q", raw[at:at + 8 * (d + 1)]))
    return toks, index


def read_safetensors(path):
    head, base = pc.read_safetensors_header(path)
    with open(path, "rb") as f:
        f.seek(base)
        data = f.read()
    return head, data


def bytes_of(tokens):
    return bytes(t - pc.BYTE_OFFSET for t in tokens)


def text_of(tokens):
    """A passkey document's text: ASCII throughout."""
    return bytes_of(tokens).decode("ascii")


def st_layout(tensors):
    """A safetensors file laid out as runtime/core/st.c's s2_st_write does it: compact JSON,
    __metadata__ first, then the tensors in order, back to back; spaces pad the header to 8."""
    head = '{"__metadata__":{"format":"pt"}'
    off, blobs = 0, []
    for name, dtype, shape, raw in tensors:
        head += (f',"{name}":{{"dtype":"{dtype}","shape":[{",".join(map(str, shape))}],'
                 f'"data_offsets":[{off},{off + len(raw)}]}}')
        off += len(raw)
        blobs.append(raw)
    head = head.encode() + b"}"
    head += b" " * ((8 - len(head) % 8) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


class Corpus(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.d = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def test_same_seed_same_corpus(self):
        a = pc.documents("train", 512, 50, 7)
        self.assertEqual(a, pc.documents("train", 512, 50, 7))
        self.assertNotEqual(a, pc.documents("train", 512, 50, 8))
        self.assertNotEqual(a, pc.documents("heldout", 512, 50, 7))  # another stream
        p1, p2 = os.path.join(self.d, "a"), os.path.join(self.d, "b")
        pc.write_token_file(p1, a)
        pc.write_token_file(p2, pc.documents("train", 512, 50, 7))
        with open(p1, "rb") as f1, open(p2, "rb") as f2:
            self.assertEqual(f1.read(), f2.read())

    def test_documents_are_the_context_long_and_hold_their_key(self):
        for ctx in (512, 2048, 511, 2047):  # 511, 2047: bench/paper-claim.sh's training documents
            docs = pc.documents("train", ctx, 300, 3)
            path = os.path.join(self.d, f"t{ctx}")
            self.assertEqual(pc.write_token_file(path, docs), 300 * ctx)
            toks, index = read_token_file(path)
            self.assertEqual(index, [i * ctx for i in range(301)])
            lo, hi = pc.distance_range(ctx)
            for i, d in enumerate(docs):
                doc = toks[index[i]:index[i + 1]]
                self.assertEqual((doc[0], doc[-1]), (pc.BOS, pc.EOS))
                text = text_of(doc[1:-1])
                m = INFO.search(text)
                self.assertIsNotNone(m)
                self.assertEqual(len(INFO.findall(text)), 1)
                self.assertTrue(text.startswith(pc.TASK + "\n"))
                self.assertTrue(text.endswith("\n" + pc.QUESTION + f" {m.group(1)}."))
                self.assertEqual(m.group(1), d["key"])
                # the distance read from the text: the answer's first digit minus the key's
                self.assertEqual(len(text) - 6 - m.start(1), d["distance"])
                self.assertTrue(lo <= d["distance"] <= hi)
            # the key at a uniformly random depth: both ends of the range are reached
            dist = sorted(d["distance"] for d in docs)
            self.assertLess(dist[0], lo + (hi - lo) // 10)
            self.assertGreater(dist[-1], hi - (hi - lo) // 10)

    def test_documents_without_the_task_line(self):
        # --no-task: the task line left out, so a prompt fits 256 tokens with room for the
        # key's depth (distances 82..231 there)
        self.assertEqual(pc.FIXED - pc.FIXED_NO_TASK, len(pc.TASK) + 1)
        self.assertEqual(pc.distance_range(256, False), (82, 82 + 256 - 2 - pc.FIXED_NO_TASK))
        self.assertEqual(pc.filler_room(256), 0)
        for ctx in (256, 1024, 1023):
            docs = pc.documents("train", ctx, 200, 4, kv_share=0.5, task=False)
            self.assertEqual(docs, pc.documents("train", ctx, 200, 4, kv_share=0.5, task=False,
                                                procs=2))
            lo, hi = pc.distance_range(ctx, False)
            pk = [d for d in docs if "key" in d]
            self.assertGreater(len(pk), 50)
            for d in pk:
                self.assertEqual(len(d["text"]), ctx - 2)
                self.assertNotIn(pc.TASK, d["text"])
                first = d["text"].split("\n", 1)[0]  # PREFIX, the document's first line
                self.assertEqual(first, pc.filler(len(first)))
                m = INFO.search(d["text"])
                self.assertEqual(m.group(1), d["key"])
                self.assertEqual(len(d["text"]) - 6 - m.start(1), d["distance"])
                self.assertTrue(lo <= d["distance"] <= hi)
        prompts = pc.documents("passkey", 256, 5, 1, pc.parse_buckets("64,128,256"), task=False)
        self.assertEqual(sorted({d["bucket"] for d in prompts}), ["128-256", "64-128"])
        self.assertTrue(all(82 <= d["distance"] < 128 for d in prompts[:5]))
        with self.assertRaisesRegex(ValueError, "at least 256 tokens \\(107 with --no-task\\)"):
            pc.documents("heldout", 200, 1, 1)
        self.assertEqual(len(pc.documents("heldout", 200, 1, 1, task=False)[0]["text"]), 198)
        with self.assertRaisesRegex(ValueError, "at least 107 tokens$"):
            pc.documents("heldout", 100, 1, 1, task=False)

    def test_filler_is_longlora_garbage(self):
        inf = " ".join([pc.GARBAGE] * 50)
        for n in (0, 1, 89, 90, 91, 1000):
            self.assertEqual(pc.filler(n), inf[:n])

    def test_passkey_set_is_stratified_by_distance(self):
        buckets = pc.parse_buckets("0,256,512,1024,1536,2048")
        meta_p, st_p = os.path.join(self.d, "m.json"), os.path.join(self.d, "p.st")
        pc.main(["gen", "--kind", "passkey", "--ctx", "2048", "--n", "7", "--seed", "5",
                 "--meta", meta_p, "--logits-in", st_p])
        with open(meta_p) as f:
            meta = json.load(f)
        self.assertEqual(meta["buckets"], [pc.bucket_name(*b) for b in buckets])
        self.assertEqual(len(meta["prompts"]), 7 * len(buckets))
        head, data = read_safetensors(st_p)
        self.assertEqual(head["tokens"]["shape"], [7 * len(buckets) * 2048])
        toks = struct.unpack(f"<{len(data) // 4}i", data)
        c0, c1 = head["cu_seqlens"]["data_offsets"]
        cu = toks[c0 // 4:c1 // 4]
        self.assertEqual(list(cu), [i * 2048 for i in range(7 * len(buckets) + 1)])
        for i, p in enumerate(meta["prompts"]):
            lo, hi = (int(x) for x in p["bucket"].split("-"))
            self.assertEqual(p["bucket"], pc.bucket_name(*buckets[i // 7]))
            self.assertTrue(lo <= p["distance"] < hi)
            doc = toks[i * 2048:(i + 1) * 2048]
            text = text_of(doc[1:-1])
            m = INFO.search(text)
            self.assertEqual(m.group(1), p["key"])
            self.assertEqual(len(text) - 6 - m.start(1), p["distance"])
            # the rows that predict the answer " K": the next token of row r is its char j
            self.assertEqual(len(meta["answer_rows"]), 6)
            for j, r in enumerate(meta["answer_rows"]):
                self.assertEqual(doc[r + 1], ord((" " + p["key"])[j]) + pc.BYTE_OFFSET)

    def check_kv_doc(self, text, answers, ctx):
        """A dense-recall document read back from its bytes alone: slots of a key byte, five
        digits and a space; every key a byte of the pool that occurs in the document only as
        the key of its slots, at most twice; a second appearance (a recall) repeats the
        definition's digits; half the slots are recalls; the answers are exactly the recalled
        digits (position, digit, distance to the same digit of the definition), in order."""
        self.assertIsInstance(text, bytes)
        self.assertEqual(len(text), ctx - 2)
        head = (pc.KV_TASK + "\n").encode("ascii")
        self.assertTrue(text.startswith(head))
        body = text[len(head):].rstrip(b".")
        self.assertLess(len(text) - len(head) - len(body), pc.KV_SLOT)
        items = body.split(b" ")
        self.assertEqual(len(items), pc.kv_slots(ctx)[0])
        pool = set(pc.KV_KEYS)
        seen, recalls = {}, []
        off = 1 + len(head)  # the token position of the first slot's key (BOS at 0)
        for i, it in enumerate(items):
            self.assertEqual(len(it), 6, it)
            self.assertRegex(it[1:], rb"^[0-9]{5}$")
            key, digits, pos = it[0], it[1:], off + 7 * i
            self.assertIn(key, pool)
            if key in seen:
                first_pos, first_digits, count = seen[key]
                self.assertEqual(count, 1, f"key {key:#x} three times")
                self.assertEqual(digits, first_digits)
                recalls += [(pos + 1 + j, digits[j] - ord("0"), pos - first_pos)
                            for j in range(5)]
                seen[key] = (first_pos, first_digits, 2)
            else:
                seen[key] = (pos, digits, 1)
        # a key's byte is nowhere else in the document: one token, unique to its slots
        for key, (_, _, count) in seen.items():
            self.assertEqual(text.count(bytes([key])), count, f"key {key:#x}")
        self.assertEqual(len(recalls), 5 * (len(items) // 2))  # half the slots, rounded down
        self.assertEqual(recalls, [tuple(a) for a in answers])
        return recalls

    def test_kv_documents(self):
        for ctx in (512, 2048):
            docs = pc.documents("kv", ctx, 40, 3)
            self.assertEqual(docs, pc.documents("kv", ctx, 40, 3, procs=2))
            self.assertNotEqual(docs, pc.documents("kv", ctx, 40, 4))
            path = os.path.join(self.d, f"kv{ctx}")
            self.assertEqual(pc.write_token_file(path, docs), 40 * ctx)
            toks, index = read_token_file(path)
            dist = []
            for i, d in enumerate(docs):
                doc = toks[index[i]:index[i + 1]]
                self.assertEqual((doc[0], doc[-1]), (pc.BOS, pc.EOS))
                text = bytes_of(doc[1:-1])
                self.assertEqual(text, d["text"])
                for pos, digit, _ in self.check_kv_doc(text, d["answers"], ctx):
                    self.assertEqual(doc[pos], ord(str(digit)) + pc.BYTE_OFFSET)
                dist += [a[2] for a in d["answers"][::5]]  # one a recall
            # the distances reach from the next slot to the context's end
            slots = pc.kv_slots(ctx)[0]
            self.assertEqual(min(dist), pc.KV_SLOT)
            self.assertGreater(max(dist), 0.85 * pc.KV_SLOT * (slots - 1))
            if ctx == 2048:  # every distance bucket of the evaluation holds many recalls
                for lo, hi in pc.parse_buckets("0,256,512,1024,1536,2048"):
                    self.assertGreater(sum(lo <= x < hi for x in dist), 5 * len(docs), (lo, hi))

    def test_kv_key_pool(self):
        pool = pc.KV_KEYS
        self.assertEqual(len(set(pool)), len(pool))
        self.assertTrue(set(range(0x80, 0x100)) <= set(pool))
        # every printable ASCII character that no document text holds, and none that one does
        fixed = (pc.TASK + pc.GARBAGE + pc.QUESTION + pc.KV_TASK + pc.info_line("0123456789") +
                 ". \n").encode("ascii")
        self.assertEqual(set(pool) - set(range(0x80, 0x100)),
                         set(range(0x21, 0x7F)) - set(fixed))
        for b in b"0123456789 .\naeTW?":
            self.assertNotIn(b, pool)
        # and no passkey document holds a key
        for d in pc.documents("train", 512, 200, 2, kv_share=0.5):
            if "answers" not in d:
                self.assertFalse(set(d["text"].encode("ascii")) & set(pool))
        # the largest document the script makes fits: half its slots (rounded up) are keys
        self.assertLessEqual((pc.kv_slots(2048)[0] + 1) // 2, len(pool))

    def test_kv_pool_size_error(self):
        top = pc.kv_max_ctx()
        self.assertGreater(top, 2048)
        # the longest context uses every key of the pool in each document
        d = pc.documents("kv", top, 1, 1)[0]
        self.check_kv_doc(d["text"], d["answers"], top)
        self.assertEqual(set(d["text"][len(pc.KV_TASK) + 1::pc.KV_SLOT][:-1]) - {ord(".")},
                         set(pc.KV_KEYS))
        msg = rf"--ctx {top + 1}: .* needs {len(pc.KV_KEYS) + 1} distinct keys, the pool has " \
              rf"{len(pc.KV_KEYS)}"
        with self.assertRaisesRegex(ValueError, msg):
            pc.kv_slots(top + 1)
        with self.assertRaisesRegex(ValueError, msg):
            pc.documents("kv", top + 1, 1, 1)
        with self.assertRaisesRegex(ValueError, msg):  # a mix refuses it before drawing
            pc.documents("train", top + 1, 1, 1, kv_share=0.01)
        self.assertEqual(len(pc.documents("heldout", top + 1, 1, 1)[0]["text"]), top - 1)

    def test_doc_tokens_every_byte(self):
        raw = bytes(range(256))
        want = [pc.BOS] + [b + pc.BYTE_OFFSET for b in raw] + [pc.EOS]
        self.assertEqual(bytes(pc.doc_tokens(raw)), struct.pack(f"<{len(want)}H", *want))
        self.assertEqual(pc.doc_tokens("ab\n"), pc.doc_tokens(b"ab\n"))

    def test_train_mix_and_chunks(self):
        docs = pc.documents("train", 512, 3000, 5, kv_share=0.5)
        kv = [d for d in docs if "answers" in d]
        self.assertTrue(1300 < len(kv) < 1700, len(kv))  # the share, within 5.5 sigma
        for d in kv[:50]:
            self.check_kv_doc(d["text"], d["answers"], 512)
        self.assertTrue(all(INFO.search(d["text"]) for d in docs if "answers" not in d))
        # the first n documents of more are the n documents (across a chunk's end too)
        self.assertEqual(pc.documents("train", 512, 1500, 5, kv_share=0.5), docs[:1500])
        self.assertEqual(pc.documents("train", 512, 3000, 5, kv_share=0.5, procs=3), docs)
        self.assertFalse(any("answers" in d for d in pc.documents("train", 512, 300, 5)))
        self.assertFalse(any("answers" in d for d in pc.documents("heldout", 512, 300, 5,
                                                                   kv_share=0.5)))
        with self.assertRaisesRegex(ValueError, "kv-share 1.5"):
            pc.documents("train", 512, 3, 5, kv_share=1.5)
        with self.assertRaisesRegex(ValueError, "dense-recall document needs"):
            pc.documents("kv", 60, 1, 1)

    def test_kv_eval_set(self):
        meta_p, st_p = os.path.join(self.d, "m.json"), os.path.join(self.d, "k.st")
        with contextlib.redirect_stdout(io.StringIO()):
            pc.main(["gen", "--kind", "kv", "--ctx", "2048", "--n", "3", "--seed", "5",
                     "--meta", meta_p, "--logits-in", st_p])
        with open(meta_p) as f:
            meta = json.load(f)
        docs = pc.documents("kv", 2048, 3, 5)
        self.assertEqual(len(meta["answers"]), sum(len(d["answers"]) for d in docs))
        head, data = read_safetensors(st_p)
        toks = struct.unpack(f"<{head['tokens']['shape'][0]}i", data[:4 * 3 * 2048])
        body = len(pc.KV_TASK) + 1  # slots of seven bytes from here
        recalls = {}
        for row, tok, dist, rec in meta["answers"]:
            i, r = divmod(row, 2048)
            self.assertEqual(toks[row + 1], tok)  # row predicts the recalled digit
            text = bytes_of(toks[i * 2048 + 1:i * 2048 + 2047])
            # token r + 1 is text[r]: digit j of the slot's five
            slot, j = divmod(r - body, pc.KV_SLOT)
            self.assertIn(j, range(1, 6))
            start = body + pc.KV_SLOT * slot
            self.assertEqual(tok, text[r] + pc.BYTE_OFFSET)
            first = text.index(text[start:start + 1])  # the key's definition
            self.assertLess(first, start)
            self.assertEqual(text[first + 1:first + 6], text[start + 1:start + 6])
            self.assertEqual(r - (first + j), dist)
            recalls.setdefault(rec, []).append((i, slot, j))
        # a recall: the five digits of one slot; the recalls numbered in order from 0
        self.assertEqual(list(recalls), list(range(len(recalls))))
        self.assertEqual(len({v[0][:2] for v in recalls.values()}), len(recalls))
        for v in recalls.values():
            self.assertEqual(v, [v[0][:2] + (j,) for j in range(1, 6)])
        self.assertEqual(len(recalls), 3 * (pc.kv_slots(2048)[0] // 2))

    def test_unreachable_bucket_is_refused(self):
        with self.assertRaisesRegex(ValueError, "distances 82..338 only"):
            pc.documents("passkey", 512, 2, 1, pc.parse_buckets("0,256,512,1024"))
        for bad in ("5", "0,0", "256,128", "a,b", "-1,4"):
            with self.assertRaises(ValueError):
                pc.parse_buckets(bad)
        with self.assertRaisesRegex(ValueError, "at least"):
            pc.documents("train", 200, 1, 1)
        with self.assertRaisesRegex(ValueError, "at least one"):
            pc.documents("passkey", 512, 0, 1, pc.parse_buckets("0,128"))


class AgainstS2lora(unittest.TestCase):
    """The files bench/paper-claim.sh hands to s2lora, against s2lora itself."""

    def setUp(self):
        if not os.access(S2LORA, os.X_OK):
            self.fail(f"{S2LORA}: no s2lora binary (build it, or set S2LORA_BIN)")
        self.tmp = tempfile.TemporaryDirectory()
        self.d = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def run_s2(self, *args):
        return subprocess.run([S2LORA, *args], capture_output=True, text=True)

    def assert_equals_s2lora_data(self, py, txt):
        """The token file py is byte for byte what `s2lora data --bytes` makes of txt's files."""
        c = os.path.join(self.d, "c.tokens")
        r = self.run_s2("data", "--bytes", *sorted(
            os.path.join(txt, n) for n in os.listdir(txt)), "-o", c)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(py, "rb") as f1, open(c, "rb") as f2:
            self.assertEqual(f1.read(), f2.read())

    def test_token_file_equals_s2lora_data(self):
        txt = os.path.join(self.d, "txt")
        py = os.path.join(self.d, "py.tokens")
        pc.main(["gen", "--kind", "heldout", "--ctx", "512", "--n", "4", "-o", py,
                 "--text-dir", txt])
        self.assert_equals_s2lora_data(py, txt)

    def test_mixed_token_file_equals_s2lora_data(self):
        txt = os.path.join(self.d, "txt")
        py = os.path.join(self.d, "py.tokens")
        with contextlib.redirect_stdout(io.StringIO()):
            pc.main(["gen", "--kind", "train", "--ctx", "512", "--n", "8", "--kv-share", "0.5",
                     "-o", py, "--text-dir", txt])
        self.assertTrue(0 < sum("answers" in d for d in pc.documents(
            "train", 512, 8, 1, kv_share=0.5)) < 8)  # both kinds are in it
        # the keys' bytes: above ASCII, and some whose token needs the high byte (>= 256)
        self.assertGreaterEqual(max(read_token_file(py)[0]), 256)
        self.assert_equals_s2lora_data(py, txt)

    def test_logits_accepts_the_prompts(self):
        model = os.path.join(self.d, "m")
        r = self.run_s2("init", SPEC, "--set", "context_length=512", "-o", model)
        self.assertEqual(r.returncode, 0, r.stderr)
        st = os.path.join(self.d, "p.st")
        pc.main(["gen", "--kind", "passkey", "--ctx", "512", "--n", "2", "--buckets",
                 "0,128,256,512", "--meta", os.path.join(self.d, "m.json"), "--logits-in", st])
        out = os.path.join(self.d, "l.st")
        r = self.run_s2("logits", SPEC, "--set", "context_length=512", "--model", model,
                        "--tokens", st, "-o", out)
        # every file is read and checked before a device is asked for: 3 is "no CUDA device"
        self.assertIn(r.returncode, (0, 3), r.stderr)
        # and the check is real: a batch whose cu_seqlens does not end at T is refused
        head, data = read_safetensors(st)
        T = head["tokens"]["shape"][0]
        bad = os.path.join(self.d, "bad.st")
        with open(bad, "wb") as f:
            f.write(st_layout([("tokens", "I32", [T], data[:4 * T]),
                               ("cu_seqlens", "I32", [2], struct.pack("<2i", 0, T - 1))]))
        r = self.run_s2("logits", SPEC, "--set", "context_length=512", "--model", model,
                        "--tokens", bad, "-o", out)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("cu_seqlens", r.stderr)


class Scorer(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.d = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def write_logits(self, path, T, rows, extra=()):
        """A logits file of T rows: rows maps a row to its values; every other row is zero but
        for a large value that must not leak into any score."""
        V = pc.VOCAB
        logits = [0.0] * (T * V)
        for r in range(T):
            logits[r * V + 3] = 100.0
        for r, row in rows.items():
            logits[r * V:(r + 1) * V] = row
        with open(path, "wb") as f:
            f.write(st_layout([("logits", "F32", [T, V], struct.pack(f"<{len(logits)}f",
                                                                      *logits))] + list(extra)))

    @staticmethod
    def row_for(right, i, j, wrong):
        """Values of a row whose argmax is right (a near miss next to it), or right + 1 when
        wrong; and the NLL of right."""
        V = pc.VOCAB
        row = [0.01 * ((v * 7 + i + j) % 13) for v in range(V)]
        if wrong:
            row[right], row[(right + 1) % V] = 2.0, 3.0
        else:
            row[right] = 3.0
            row[(right + 1) % V] = 3.0 - 0.5 * (j + 1)  # a near miss, not a tie
        return row, math.log(sum(math.exp(x) for x in row)) - row[right]

    def test_score_from_logits(self):
        ctx = 512
        buckets = pc.parse_buckets("0,128,256")
        prompts = pc.documents("passkey", ctx, 3, 9, buckets)
        meta = {"ctx": ctx, "buckets": [pc.bucket_name(*b) for b in buckets],
                "answer_rows": pc.answer_rows(ctx),
                "prompts": [{k: p[k] for k in ("key", "distance", "bucket")} for p in prompts]}
        # prompt i gets answer token j wrong when (i, j) is in wrong (j 0: the space; the
        # digits 1..5); elsewhere the answer's token wins. Prompt 1 misses only the space.
        wrong = {(0, 5), (1, 0), (3, 1), (3, 2), (4, 3), (5, 1)}
        rows, want_nll = {}, {}
        for i, p in enumerate(prompts):
            for j, r in enumerate(meta["answer_rows"]):
                right = ord((" " + p["key"])[j]) + pc.BYTE_OFFSET
                rows[i * ctx + r], nll = self.row_for(right, i, j, (i, j) in wrong)
                if j:
                    want_nll.setdefault(i, []).append(nll)
        path = os.path.join(self.d, "logits.safetensors")
        self.write_logits(path, ctx * len(prompts), rows,
                          [("loss", "F64", [1], struct.pack("<d", 1.5))])
        res = pc.score(meta, path)
        # prompts 0..2 in bucket 0-128, 3..5 in 128-256; only prompt 2 is right throughout
        self.assertEqual(res["0-128"]["n"], 3)
        self.assertAlmostEqual(res["0-128"]["accuracy"], 1 / 3)
        self.assertAlmostEqual(res["0-128"]["digit_accuracy"], 14 / 15)  # the space is not a digit
        self.assertAlmostEqual(res["128-256"]["accuracy"], 0.0)
        self.assertAlmostEqual(res["128-256"]["digit_accuracy"], 11 / 15)
        self.assertAlmostEqual(res["all"]["accuracy"], 1 / 6)
        self.assertEqual(res["all"]["n"], 6)
        for b, idx in (("0-128", range(3)), ("128-256", range(3, 6))):
            want = sum(sum(want_nll[i]) / 5 for i in idx) / 3
            self.assertAlmostEqual(res[b]["digit_nll"], want, places=5)
        self.assertNotIn("90+", res)
        # --far: the prompts at distance 90 or more together, across the buckets
        far = [i for i, p in enumerate(prompts) if p["distance"] >= 90]
        self.assertTrue(0 < len([i for i in far if i < 3]) < 3 and len(far) < 6)
        res = pc.score(meta, path, far=90)
        self.assertEqual(res["90+"]["n"], len(far))
        exact = sum(not any((i, j) in wrong for j in range(6)) for i in far)
        self.assertAlmostEqual(res["90+"]["accuracy"], exact / len(far))
        self.assertEqual(pc.score_columns(meta, 90), ["0-128", "128-256", "90+", "all"])

    def test_kv_score_from_logits(self):
        ctx = 512
        docs = pc.documents("kv", ctx, 3, 2)
        meta_p, st_p = os.path.join(self.d, "m.json"), os.path.join(self.d, "k.st")
        with contextlib.redirect_stdout(io.StringIO()):
            pc.main(["gen", "--kind", "kv", "--ctx", str(ctx), "--n", "3", "--seed", "2",
                     "--buckets", "0,128,256,512", "--meta", meta_p, "--logits-in", st_p])
        with open(meta_p) as f:
            meta = json.load(f)
        # one entry a recalled digit; a recall is five consecutive digits of one document
        answers = [(i * ctx + pos - 1, digit, dist)
                   for i, d in enumerate(docs) for pos, digit, dist in d["answers"]]
        self.assertEqual([(r, d, x, k // 5) for k, (r, d, x) in enumerate(answers)],
                         [(r, t - ord("0") - pc.BYTE_OFFSET, x, k) for r, t, x, k in
                          meta["answers"]])
        # recall k: every digit right (k % 4 in 0, 2), digit k % 5 wrong (k % 4 == 1), digits
        # 0 and 2 wrong (k % 4 == 3): digit accuracy and exact recalls differ
        rows, per, exact = {}, {}, {}
        for n, (r, digit, dist) in enumerate(answers):
            k, j = divmod(n, 5)
            wrong = (k % 4 == 1 and j == k % 5) or (k % 4 == 3 and j in (0, 2))
            right = ord(str(digit)) + pc.BYTE_OFFSET
            rows[r], nll = self.row_for(right, n % 5, n % 3, wrong)
            groups = ["all", next(f"{lo}-{hi}" for lo, hi in ((0, 128), (128, 256), (256, 512))
                                  if lo <= dist < hi)] + (["300+"] if dist >= 300 else [])
            for g in groups:
                s = per.setdefault(g, [0, 0, 0.0, set()])
                s[0] += 1
                s[1] += not wrong
                s[2] += nll
                s[3].add(k)
            exact[k] = k % 2 == 0
        path = os.path.join(self.d, "logits.safetensors")
        self.write_logits(path, ctx * 3, rows, [("loss", "F64", [1], struct.pack("<d", 0.75))])
        res = pc.kv_score(meta, path, far=300)
        self.assertEqual(list(res), ["0-128", "128-256", "256-512", "300+", "all"])
        for g, (n, hits, nll, recs) in per.items():
            self.assertEqual(res[g]["n"], n, g)
            self.assertEqual(res[g]["recalls"], len(recs), g)
            self.assertEqual(5 * len(recs), n, g)
            self.assertAlmostEqual(res[g]["accuracy"], hits / n, msg=g)
            self.assertAlmostEqual(res[g]["nll"], nll / n, places=5, msg=g)
            self.assertAlmostEqual(res[g]["exact"], sum(exact[k] for k in recs) / len(recs),
                                   msg=g)
            self.assertNotAlmostEqual(res[g]["exact"], res[g]["accuracy"], msg=g)
        self.assertTrue(all(len(per[g][3]) > 3 for g in per))
        self.assertEqual(pc.logits_loss(path), 0.75)
        # an older meta (three fields: a recall a digit) is read so: exact is the accuracy
        old = pc.kv_score(dict(meta, answers=[a[:3] for a in meta["answers"]]), path, far=300)
        for g in per:
            self.assertEqual(old[g]["recalls"], old[g]["n"])
            self.assertAlmostEqual(old[g]["exact"], res[g]["accuracy"])
        # a recall whose digits disagree on the distance is a broken meta
        bad = [list(a) for a in meta["answers"]]
        bad[1][2] += 1
        with self.assertRaisesRegex(SystemExit, "recall 0 has digits at distances"):
            pc.kv_score(dict(meta, answers=bad), path)
        # the row and the JSON kvscore writes; a group without recalls is n 0, not an error
        out = os.path.join(self.d, "row.json")
        with contextlib.redirect_stdout(io.StringIO()):
            pc.main(["kvscore", "--meta", meta_p, "--logits", path, "--label", "s2",
                     "--attention", "s2", "--out", out, "--far", "600"])
        with open(out) as f:
            row = json.load(f)
        self.assertEqual((row["label"], row["attention"], row["ctx"]), ("s2", "s2", 512))
        self.assertEqual(row["kv_loss"], 0.75)
        self.assertEqual(row["kv"]["600+"], {"n": 0, "accuracy": None, "nll": None,
                                             "recalls": 0, "exact": None})
        self.assertAlmostEqual(row["kv"]["all"]["accuracy"], per["all"][1] / per["all"][0])
        self.assertAlmostEqual(row["kv"]["all"]["exact"], res["all"]["exact"])
        # a file of another shape is refused
        self.write_logits(path, ctx * 2, {})
        with self.assertRaisesRegex(SystemExit, "the documents need 1536"):
            pc.kv_score(meta, path)

    def test_score_refuses_a_mismatched_file(self):
        meta = {"ctx": 300, "buckets": ["0-128"], "answer_rows": pc.answer_rows(300),
                "prompts": [{"key": "12345", "distance": 100, "bucket": "0-128"}]}
        path = os.path.join(self.d, "l.st")
        with open(path, "wb") as f:
            f.write(st_layout([("logits", "F32", [299, pc.VOCAB],
                                b"\0" * (4 * 299 * pc.VOCAB))]))
        with self.assertRaisesRegex(SystemExit, "299 rows, the documents need 300"):
            pc.score(meta, path)


class PlanAndReport(unittest.TestCase):
    def test_plan(self):
        p = pc.plan(480, 30, 90, 400000, 500000, 4096, 8192, 0.4, 3)
        self.assertAlmostEqual(p["left_s"], 360)
        self.assertEqual(p["pre_steps"], int(144 * 400000 // 4096))
        self.assertEqual(p["ext_steps"], int(72 * 500000 // 8192))
        self.assertEqual(pc.plan(100, 30, 90, 1e6, 1e6, 1, 1, 0.4, 3)["pre_steps"], 0)

    def test_eval_line(self):
        line = ("eval tiny-byte-512 on NVIDIA H100: full attention, seqlen 2048, 64 windows, "
                "131072 tokens scored, ppl 1.2345 (nll 0.210672), 1234567 tok/s")
        self.assertEqual(pc.parse_eval_line(line), (1.2345, 0.210672))
        with self.assertRaises(SystemExit):
            pc.parse_eval_line("s2lora: no CUDA device")

    def test_report(self):
        with tempfile.TemporaryDirectory() as d:
            rows = os.path.join(d, "rows")
            os.mkdir(rows)
            pk = {b: {"n": 4, "accuracy": a, "digit_accuracy": a, "digit_nll": 1.0}
                  for b, a in (("0-256", 0.75), ("256-512", 0.5), ("all", 0.625))}
            for name, row in (
                    ("s2.full.pk", {"label": "s2", "ctx": 2048, "attention": "full",
                                    "columns": ["0-256", "256-512", "all"], "passkey": pk}),
                    ("s2.full.ppl", {"label": "s2", "ctx": 2048, "attention": "full",
                                     "ppl": 1.5, "nll": 0.4})):
                with open(os.path.join(rows, name + ".json"), "w") as f:
                    json.dump(row, f)
            md, js = os.path.join(d, "r.md"), os.path.join(d, "r.json")
            with contextlib.redirect_stdout(io.StringIO()):
                pc.main(["report", "--rows", rows, "--md", md, "--json", js,
                         "--info", "status=FAILED at: phase 2 (short attention) (exit 1)",
                         "--info", "commit=abc"])
            with open(md) as f:
                text = f.read()
            self.assertIn("FAILED at: phase 2 (short attention)", text)
            self.assertIn("| LoRA+ with S²-Attn (G 512, shift 256) | full | 0.75 | 0.50 | "
                          "0.62 | 0.625 | 1.000 | 1.5000 |", text)
            self.assertNotIn("short attention (G 512", text)  # no row was written for it
            self.assertNotIn("warning", text)  # no pre@512 row
            with open(js) as f:
                self.assertEqual(json.load(f)["run"]["commit"], "abc")
            low = {b: dict(v, accuracy=0.25) for b, v in pk.items()}
            with open(os.path.join(rows, "pre.full.pk.json"), "w") as f:
                json.dump({"label": "pre@512", "ctx": 512, "attention": "full",
                           "columns": ["0-256", "256-512", "all"], "passkey": low}, f)
            with contextlib.redirect_stdout(io.StringIO()):
                pc.main(["report", "--rows", rows, "--md", md, "--json", js])
            with open(md) as f:
                text = f.read()
            self.assertIn("warning: the pre-trained model retrieves 0.25 of the keys", text)
            self.assertIn("| pre-trained at 512 (its own context) | full | 0.25 | 0.25 |", text)
            self.assertNotIn("dense recall", text)
            self.assertNotIn("upper bound", text)

    def test_report_dense_recall_and_the_upper_bound(self):
        with tempfile.TemporaryDirectory() as d:
            rows = os.path.join(d, "rows")
            os.mkdir(rows)
            cols = ["0-256", "256-512", "512-1024", "512+", "all"]

            def kv(acc, n=10):  # n digits, n / 5 recalls, a quarter of the accuracy exact
                return {c: {"n": n, "accuracy": a, "nll": 2.0 - a, "recalls": n // 5,
                            "exact": a / 4} if a is not None else
                        {"n": 0, "accuracy": None, "nll": None, "recalls": 0, "exact": None}
                        for c, a in zip(cols, acc)}
            for name, row in (
                    ("full.full.kv", {"label": "full", "ctx": 2048, "attention": "full",
                                      "kv_columns": cols, "kv": kv([0.9, 0.6, 0.3, 0.3, 0.7]),
                                      "kv_loss": 1.25}),
                    ("short.short.kv", {"label": "short", "ctx": 2048, "attention": "short",
                                        "kv_columns": cols,
                                        "kv": kv([0.8, 0.4, None, 0.1, 0.5]),
                                        "kv_loss": None}),
                    ("full.full.pk", {"label": "full", "ctx": 2048, "attention": "full",
                                      "columns": ["all"], "passkey": {"all": {
                                          "n": 5, "accuracy": 0.8, "digit_accuracy": 0.9,
                                          "digit_nll": 0.3}}}),
                    ("pre.kv", {"label": "pre@512", "ctx": 512, "attention": "full",
                                "kv_columns": ["0-128", "all"],
                                "kv": {"0-128": {"n": 3, "accuracy": 0.2, "nll": 2.1},
                                       "all": {"n": 3, "accuracy": 0.2, "nll": 2.1}},
                                "kv_loss": 1.5})):
                with open(os.path.join(rows, name + ".json"), "w") as f:
                    json.dump(row, f)
            md, js = os.path.join(d, "r.md"), os.path.join(d, "r.json")
            with contextlib.redirect_stdout(io.StringIO()):
                pc.main(["report", "--rows", rows, "--md", md, "--json", js])
            with open(md) as f:
                text = f.read()
            # the passkey table and the dense-recall table; the same model in both
            self.assertIn("| LoRA+ with full attention | full | 0.80 | 0.900 | 0.300 | – |", text)
            self.assertIn("## At 2048 tokens: dense recall", text)
            # digit accuracy by bucket, then the exact recalls of far+ and of all
            self.assertIn("| model | eval attention | 0-256 | 256-512 | 512-1024 | 512+ | all | "
                          "exact 512+ | exact all | answer NLL | all-token NLL |", text)
            self.assertIn("| LoRA+ with full attention | full | 0.90 | 0.60 | 0.30 | 0.30 | 0.70 "
                          "| 0.07 | 0.17 | 1.300 | 1.250 |", text)
            self.assertIn("| LoRA+ with short attention (G 512, no shift) | short | 0.80 | 0.40 "
                          "| – | 0.10 | 0.50 | 0.03 | 0.12 | 1.500 | – |", text)
            self.assertIn("2 recalls (10 digits) at 2048 tokens (0-256: 2, 256-512: 2, 512-1024: "
                          "0, 512+: 2)", text)  # the counts of the first row
            # a row of an older run (no exact rate): a dash, each digit counted as a recall
            self.assertIn("| pre-trained at 512 (its own context) | full | 0.20 | 0.20 | – | "
                          "2.100 | 1.500 |", text)
            self.assertIn("3 recalls (3 digits) at 512 tokens (0-128: 3)", text)
            self.assertIn("warning: the pre-trained model recalls 0.20 of the dense-recall", text)
            # the full-attention arm recalls 0.30 beyond 512: the upper bound did not learn
            self.assertIn("retrieves 0.80 of the passkeys and 0.30 of the dense-recall digits at "
                          "distances 512+ with full attention at 2048", text)
            # once it does, no warning
            with open(os.path.join(rows, "full.full.kv.json"), "w") as f:
                json.dump({"label": "full", "ctx": 2048, "attention": "full",
                           "kv_columns": cols, "kv": kv([0.9, 0.9, 0.9, 0.9, 0.9])}, f)
            with contextlib.redirect_stdout(io.StringIO()):
                pc.main(["report", "--rows", rows, "--md", md, "--json", js])
            with open(md) as f:
                self.assertNotIn("upper bound", f.read())


# A stand-in for s2lora on a machine without a GPU: it writes what each command of a real run
# would (train.jsonl, model or adapter files, eval's summary, logits that predict every next
# token), and logs each call's arguments, so bench/paper-claim.sh's GPU path can be run here.
FAKE = r"""#!/usr/bin/env python3
import json, os, struct, sys, time
a = sys.argv[1:]
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(json.dumps(a) + "\n")
def opt(name):
    return a[a.index(name) + 1]
cmd = a[0]
if cmd == "version":
    print("s2lora 0.0.0 (a stand-in)")
elif cmd == "init":
    os.makedirs(opt("-o"))
elif cmd == "train":
    if os.environ.get("FAKE_FAIL") and os.environ["FAKE_FAIL"] in " ".join(a):
        time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
        sys.exit("s2lora: simulated failure")
    out = opt("--out")
    os.makedirs(out + ("/model" if "--mode" in a else "/adapter"), exist_ok=True)
    with open(out + "/train.jsonl", "w") as f:
        for i in range(int(opt("--steps"))):
            f.write(json.dumps({"step": i + 1, "tokens_per_s": 1e6 + i, "loss_ema": 0.5}) + "\n")
    sys.stderr.write("s2lora: train on Stand-in GPU (sm_90a)\n")
elif cmd == "eval":
    print("eval tiny-byte-512 on Stand-in GPU: full attention, seqlen 512, 2 windows, "
          "1024 tokens scored, ppl 1.2500 (nll 0.223144), 1 tok/s")
elif cmd == "logits":
    with open(opt("--tokens"), "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    head = json.loads(raw[8:8 + n])
    b0, b1 = head["tokens"]["data_offsets"]
    tok = struct.unpack(f"<{(b1 - b0) // 4}i", raw[8 + n + b0:8 + n + b1])
    V = 264
    logits = bytearray(4 * V * len(tok))
    for i in range(len(tok) - 1):
        struct.pack_into("<f", logits, 4 * (i * V + tok[i + 1]), 1.0)
    js = json.dumps({"__metadata__": {"format": "pt"},
                     "logits": {"dtype": "F32", "shape": [len(tok), V],
                                "data_offsets": [0, len(logits)]}}).encode()
    js += b" " * ((8 - len(js) % 8) % 8)
    with open(opt("-o"), "wb") as f:
        f.write(struct.pack("<Q", len(js)) + js + logits)
else:
    sys.exit(f"stand-in: {cmd} is not used by a run")
"""


def train_outs(calls):
    """(--out's folder name, the call) of each train call of the stand-in's."""
    return [(os.path.basename(c[c.index("--out") + 1]), c) for c in calls if c[0] == "train"]


def runs(calls):
    """The training runs, without the calibration's (--out cal1, cal2)."""
    return [c for name, c in train_outs(calls) if not name.startswith("cal")]


def calibrations(calls):
    return [name for name, _ in train_outs(calls) if name.startswith("cal")]


class ScriptWithStandIn(unittest.TestCase):
    """bench/paper-claim.sh's GPU path, end to end, on the stand-in above."""

    def run_script(self, fail=None, sleep=0, **extra):
        self.tmp = tempfile.TemporaryDirectory()
        d = self.tmp.name
        os.mkdir(os.path.join(d, "bin"))
        fake = os.path.join(d, "bin", "s2lora")
        with open(fake, "w") as f:
            f.write(FAKE)
        os.chmod(fake, 0o755)
        env = dict(os.environ, S2_BIN=os.path.join(d, "bin"), OUT=os.path.join(d, "out"),
                   FAKE_CALLS=os.path.join(d, "calls"), S2_PC_PRE_STEPS="3",
                   S2_PC_EXT_STEPS="2", S2_PC_PASSKEY="1", S2_PC_KV_DOCS="2",
                   FAKE_FAIL=fail or "", FAKE_SLEEP=str(sleep))
        env.update(extra)  # a test's settings replace the defaults above
        r = subprocess.run([os.path.join(ROOT, "bench", "paper-claim.sh")], env=env,
                           capture_output=True, text=True)
        with open(os.path.join(d, "calls")) as f:
            calls = [json.loads(x) for x in f]
        return r, calls, os.path.join(d, "out")

    def tearDown(self):
        self.tmp.cleanup()

    def test_run(self):
        r, calls, out = self.run_script()
        self.assertEqual(r.returncode, 0, r.stderr)
        trains = runs(calls)
        self.assertEqual(len(trains), 4)
        pre, ext = trains[0], trains[1:]
        self.assertIn("--full-attention", pre)
        self.assertEqual(pre[pre.index("--mode") + 1], "full")
        self.assertIn("context_length=512", pre)
        # phase 1's step: its 8 sequences in one varlen micro-batch
        self.assertEqual((pre[pre.index("--batch") + 1], pre[pre.index("--grad-accum") + 1]),
                         ("8", "1"))
        # the three extensions: the same data, steps, seed and context; only the attention
        for c in ext:
            self.assertIn("context_length=2048", c)
            self.assertNotIn("--mode", c)
            for k in ("--data", "--steps", "--seed", "--lr", "--grad-accum", "--model"):
                self.assertEqual(c[c.index(k) + 1], ext[0][ext[0].index(k) + 1], k)
        self.assertEqual([("--full-attention" in c, "s2attn.shift=0" in c) for c in ext],
                         [(False, False), (False, True), (True, False)])
        logits = [c for c in calls if c[0] == "logits"]
        # pre at 512 and 2048, each extension with full attention, S2 and short as trained:
        # passkey prompts, then dense-recall documents
        self.assertEqual(len(logits), 14)
        tok = [os.path.basename(c[c.index("--tokens") + 1]) for c in logits]
        self.assertEqual(tok, ["pk512.safetensors", "kv512.safetensors"] +
                         ["pk2048.safetensors", "kv2048.safetensors"] * 6)
        as_trained = [c for c in logits if "--s2attn" in c]
        self.assertEqual([("s2attn.shift=0" in c) for c in as_trained],
                         [False, False, True, True])
        for c in logits[4:]:
            self.assertIn("--adapter", c)
        self.assertNotIn("--s2attn", " ".join(" ".join(c) for c in calls if c[0] == "eval"))
        with open(os.path.join(out, "paper_claim.json")) as f:
            res = json.load(f)
        self.assertEqual(res["run"]["status"], "complete")
        pk = [x for x in res["rows"] if "passkey" in x]
        self.assertEqual(len(pk), 7)
        # the stand-in predicts every next token: every prompt is retrieved, every digit recalled
        for x in pk:
            self.assertEqual(x["passkey"]["all"]["accuracy"], 1.0)
        kv = [x for x in res["rows"] if "kv" in x]
        self.assertEqual(sorted((x["label"], x["attention"]) for x in kv), sorted(
            [("pre@512", "full"), ("pre@2048", "full"), ("s2", "full"), ("s2", "s2"),
             ("short", "full"), ("short", "short"), ("full", "full")]))
        for x in kv:
            self.assertEqual(x["kv"]["all"]["accuracy"], 1.0)
            self.assertEqual(x["kv"]["all"]["exact"], 1.0)
            recalls = (4 if x["ctx"] == 512 else 2) * (pc.kv_slots(x["ctx"])[0] // 2)
            self.assertEqual(x["kv"]["all"]["recalls"], recalls)
            self.assertEqual(x["kv"]["all"]["n"], 5 * recalls)
        # the training documents: both kinds, one token shorter than the context (with the
        # separator, one document a window)
        with open(os.path.join(out, "paper_claim.log")) as f:
            log = f.read()
        for ctx, n in ((512, 25), (2048, 9)):
            m = re.search(rf"train{ctx}.tokens: {n} train documents of {ctx - 1} tokens "
                          rf"\(\d+ tokens; (\d+) dense-recall", log)
            self.assertTrue(m and 0 < int(m.group(1)) < n, (ctx, m))
        with open(os.path.join(out, "paper_claim.md")) as f:
            md = f.read()
        self.assertIn("| LoRA+ with short attention (G 512, no shift) | short |", md)
        self.assertIn("| 1536-2048 | 512+ | all | digit acc |", md)  # beyond phase 2's G
        self.assertRegex(md, r"\n- phase 1: 3 steps of 8 x 512 tokens \(--batch 8\), .* cosine; "
                             r"25 documents, 0\.96 epochs: .* tok/s, final loss EMA 0.5000\n")
        for m in ("s2", "short", "full"):
            self.assertRegex(md, rf"\n- phase 2 \({m}\): 2 steps of 4 x 2048 tokens, .*; "
                                 r"9 documents, 0\.89 epochs: .*, final")
        self.assertIn("| pre-trained at 512 (its own context) | full | 1.00 | 1.00 | 1.00 |", md)
        # dense recall as trained: 5 buckets, 512+, all, then exact 512+ and all, then NLLs
        self.assertRegex(md, r"\| LoRA\+ with S²-Attn \(G 512, shift 256\) \| s2 \|"
                             r"( 1\.00 \|){9} [0-9.]+ \| – \|\n")
        self.assertIn("- corpus: 0.5 of the training documents dense-recall", md)
        self.assertIn("\n- extensions: LoRA+; arms: s2 short full\n", md)

    def test_arms_and_full_fine_tuning(self):
        # S2_PC_ARMS=full S2_PC_EXT_MODE=full: the upper bound alone, every weight trained
        r, calls, out = self.run_script(S2_PC_ARMS="full", S2_PC_EXT_MODE="full")
        self.assertEqual(r.returncode, 0, r.stderr)
        trains = runs(calls)
        self.assertEqual(len(trains), 2)
        ext = trains[1]
        self.assertEqual(ext[ext.index("--mode") + 1], "full")
        self.assertIn("--full-attention", ext)
        self.assertIn("context_length=2048", ext)
        cal2 = [c for name, c in train_outs(calls) if name == "cal2"]
        self.assertEqual(len(cal2), 1)
        self.assertEqual(cal2[0][cal2[0].index("--mode") + 1], "full", "the rate of full FT")
        logits = [c for c in calls if c[0] == "logits"]
        self.assertEqual(len(logits), 6)  # the pre-trained model's 4, the full arm's 2
        for c in logits[4:]:
            self.assertTrue(c[c.index("--model") + 1].endswith("/ext-full/model"), c)
            self.assertNotIn("--adapter", c)
            self.assertNotIn("--s2attn", c)
        evals = [c for c in calls if c[0] == "eval"]
        self.assertTrue(evals[-1][evals[-1].index("--model") + 1].endswith("/ext-full/model"))
        with open(os.path.join(out, "paper_claim.md")) as f:
            md = f.read()
        self.assertIn("\n- extensions: full FT; arms: full (S2_PC_ARMS)\n", md)
        self.assertRegex(md, r"\n- phase 2 \(full\): 2 steps of 4 x 2048 tokens, full FT, lr ")
        self.assertIn("| full FT with full attention | full |", md)
        self.assertNotIn("S²-Attn (G", md)
        with open(os.path.join(out, "paper_claim.json")) as f:
            labels = {x["label"] for x in json.load(f)["rows"]}
        self.assertEqual(labels, {"pre@512", "pre@2048", "full"})
        # two arms, named in any order and either separator: run in the usual order, the
        # budget's plan split between them
        self.tmp.cleanup()
        r, calls, out = self.run_script(S2_PC_ARMS="full,s2")
        self.assertEqual(r.returncode, 0, r.stderr)
        ext = runs(calls)[1:]
        self.assertEqual([os.path.basename(c[c.index("--out") + 1]) for c in ext],
                         ["ext-s2", "ext-full"])
        for c in ext:
            self.assertNotIn("--mode", c)
        with open(os.path.join(out, "paper_claim.log")) as f:
            self.assertIn("phase 2: 2 run(s) (s2 full) of 2 steps of 4 x 2048 tokens, LoRA+",
                          f.read())

    def test_phase_2_sequences_in_one_micro_batch(self):
        # S2_PC_EXT_BATCH=N: a phase-2 step is N sequences in one varlen micro-batch
        r, calls, out = self.run_script(S2_PC_EXT_BATCH="16", S2_PC_ARMS="s2")
        self.assertEqual(r.returncode, 0, r.stderr)
        ext = [c for name, c in train_outs(calls) if name in ("cal2", "ext-s2")]
        self.assertEqual(len(ext), 2)
        for c in ext:
            self.assertEqual((c[c.index("--batch") + 1], c[c.index("--grad-accum") + 1]),
                             ("16", "1"))
        with open(os.path.join(out, "paper_claim.md")) as f:
            self.assertRegex(f.read(), r"\n- phase 2 \(s2\): 2 steps of 16 x 2048 tokens "
                                       r"\(--batch 16\), LoRA\+, lr [0-9e.-]+; 33 documents, "
                                       r"0\.97 epochs")
        # the default: 4 micro-batches of one sequence
        self.tmp.cleanup()
        r, calls, _ = self.run_script(S2_PC_ARMS="s2")
        for name, c in train_outs(calls):
            if name in ("cal2", "ext-s2"):
                self.assertNotIn("--batch", c)
                self.assertEqual(c[c.index("--grad-accum") + 1], "4")

    def test_fixed_steps_still_measure_phase_2(self):
        # fixed steps skip phase 1's calibration, not phase 2's: the budget's check after phase
        # 1 cuts phase 2 by its measured rate (the stand-in's 1e6 tok/s), not an assumed one
        r, calls, out = self.run_script()
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(calibrations(calls), ["cal2"])
        with open(os.path.join(out, "paper_claim.log")) as f:
            log = f.read()
        self.assertIn("== calibration: 15 of phase 2's (full attention)\n", log)
        self.assertRegex(log, r"== plan \(rates phase 1 assumed, phase 2 measured; steps fixed "
                              r"by S2_PC_PRE_STEPS and S2_PC_EXT_STEPS: phase 1 400000 tok/s, "
                              r"phase 2 100000\d tok/s\)")
        # a budget too small for 2 steps at the measured rate still cuts them
        r, calls, out = self.run_script(S2_PC_EXT_STEPS="100000", S2_PC_BUDGET_S="100",
                                        S2_PC_RESERVE_S="8", S2_PC_MAX_DOCS="50")
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(out, "paper_claim.log")) as f:
            m = re.search(r"phase 2 cut from 100000 to (\d+) steps a run", f.read())
        self.assertTrue(m, "no cut")
        steps = [int(c[c.index("--steps") + 1]) for c in runs(calls)[1:]]
        self.assertEqual(steps, [int(m.group(1))] * 3)
        self.assertGreater(steps[0], 1000)  # about 6 500: (100 - 6 - elapsed) s x 1e6 / 4096 / 3
        # with both rates calibrated (no fixed steps), both calibration runs
        r, calls, _ = self.run_script(S2_PC_PRE_STEPS="", S2_PC_EXT_STEPS="",
                                      S2_PC_BUDGET_S="60", S2_PC_RESERVE_S="10")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(calibrations(calls), ["cal1", "cal2"])

    def test_max_docs_caps_the_training_sets(self):
        # a run of more sequences than S2_PC_MAX_DOCS goes over the same documents in epochs
        r, _, out = self.run_script(S2_PC_MAX_DOCS="7")
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(out, "paper_claim.log")) as f:
            log = f.read()
        for ctx in (512, 2048):
            self.assertIn(f"train{ctx}.tokens: 7 train documents of {ctx - 1} tokens", log)
        with open(os.path.join(out, "paper_claim.md")) as f:
            md = f.read()
        self.assertIn("cosine; 7 documents, 3.43 epochs: ", md)  # 3 steps x 8 / 7
        self.assertEqual(md.count("lr 2e-4; 7 documents, 1.14 epochs: "), 3)  # 2 x 4 / 7
        for bad in ("0", "x", "-3", "07"):
            r = subprocess.run([os.path.join(ROOT, "bench", "paper-claim.sh"), "--quick"],
                               env=dict(os.environ, S2_PC_MAX_DOCS=bad), capture_output=True,
                               text=True)
            self.assertEqual(r.returncode, 2, bad)
            self.assertIn(f"S2_PC_MAX_DOCS={bad}: a training set's most documents", r.stderr)

    def test_commit_given_wins_over_git(self):
        # the tree here has a .git; a copied one may carry a stale one: S2_PC_COMMIT is the truth
        r, _, out = self.run_script(S2_PC_COMMIT="f00dfee")
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(out, "paper_claim.json")) as f:
            self.assertEqual(json.load(f)["run"]["commit"], "f00dfee")

    def test_spec_chosen(self):
        r, calls, out = self.run_script(S2_PC_SPEC="specs/small-byte-512.yaml")
        self.assertEqual(r.returncode, 0, r.stderr)
        named = [c for c in calls if c[0] in ("init", "train", "eval", "logits")]
        self.assertGreater(len(named), 10)
        for c in named:
            self.assertEqual(c[1], "specs/small-byte-512.yaml", c)
        with open(os.path.join(out, "paper_claim.md")) as f:
            self.assertIn("- spec: specs/small-byte-512.yaml (4 layers, hidden 384, byte "
                          "vocabulary)\n", f.read())

    def test_lengths_come_from_the_spec(self):
        # micro-byte-256: phase 1 at 256 (max_position_embeddings), phase 2 at 1024; no passkey
        # prompt fits 256, so phase 1 trains on dense recall alone and no passkey is scored there
        r, calls, out = self.run_script(S2_PC_SPEC="specs/micro-byte-256.yaml",
                                        S2_PC_PRE_BATCH="32")
        self.assertEqual(r.returncode, 0, r.stderr)
        trains = runs(calls)
        self.assertIn("context_length=256", trains[0])
        self.assertEqual(trains[0][trains[0].index("--batch") + 1], "32")
        for c in trains[1:]:
            self.assertIn("context_length=1024", c)
        tok = [os.path.basename(c[c.index("--tokens") + 1]) for c in calls if c[0] == "logits"]
        self.assertEqual(tok[:3], ["kv256.safetensors", "pk1024.safetensors",
                                   "kv1024.safetensors"])
        self.assertNotIn("pk256.safetensors", tok)
        with open(os.path.join(out, "paper_claim.log")) as f:
            log = f.read()
        m = re.search(r"train256.tokens: 97 train documents of 255 tokens \(\d+ tokens; "
                      r"(\d+) dense-recall", log)
        self.assertTrue(m and int(m.group(1)) == 97, m)  # 3 steps x 32 + 1, all dense recall
        with open(os.path.join(out, "paper_claim.md")) as f:
            md = f.read()
        self.assertIn("| LoRA+ with short attention (G 256, no shift) | short |", md)
        self.assertIn("| 768-1024 | 256+ | all |", md)  # phase 2's buckets, beyond G
        self.assertIn("phase 1's all dense-recall (no passkey prompt fits 256)", md)
        self.assertIn("none at 256, where the prompt leaves the key no room to move", md)
        self.assertRegex(md, r"\n- phase 1: 3 steps of 32 x 256 tokens \(--batch 32\)")

    def test_passkey_without_the_task_line(self):
        # S2_PC_PASSKEY_TASK=no: the prompt fits 256, so phase 1 trains on passkey documents too
        # and the pre-trained model is scored on them at 256 (the buckets its distances reach)
        r, calls, out = self.run_script(S2_PC_SPEC="specs/micro-byte-256.yaml",
                                        S2_PC_PRE_BATCH="32", S2_PC_PASSKEY_TASK="no")
        self.assertEqual(r.returncode, 0, r.stderr)
        tok = [os.path.basename(c[c.index("--tokens") + 1]) for c in calls if c[0] == "logits"]
        self.assertEqual(tok[:4], ["pk256.safetensors", "kv256.safetensors",
                                   "pk1024.safetensors", "kv1024.safetensors"])
        with open(os.path.join(out, "paper_claim.log")) as f:
            log = f.read()
        m = re.search(r"train256.tokens: 97 train documents of 255 tokens \(\d+ tokens; "
                      r"(\d+) dense-recall", log)
        self.assertTrue(m and 0 < int(m.group(1)) < 97, m)  # the passkey in phase 1 too
        with open(os.path.join(out, "paper_claim.md")) as f:
            md = f.read()
        self.assertIn("passkey prompts without the task line (S2_PC_PASSKEY_TASK=no)", md)
        self.assertNotIn("no passkey prompt fits", md)
        self.assertIn("| 64-128 | 128-256 | all |", md)
        r = subprocess.run([os.path.join(ROOT, "bench", "paper-claim.sh"), "--quick"],
                           env=dict(os.environ, S2_PC_PASSKEY_TASK="maybe"), capture_output=True,
                           text=True)
        self.assertEqual(r.returncode, 2)
        self.assertIn("S2_PC_PASSKEY_TASK=maybe: yes (the passkey prompt opens with", r.stderr)

    def test_phase_1_at_the_extensions_positions(self):
        # S2_PC_PRE_ROPE=ext: init, phase 1 and every command at 256 take phase 2's
        # context_length (its RoPE factor, 4) with sequences or windows of 256 tokens
        r, calls, out = self.run_script(S2_PC_SPEC="specs/micro-byte-256.yaml",
                                        S2_PC_PRE_ROPE="ext")
        self.assertEqual(r.returncode, 0, r.stderr)
        named = [c for c in calls if c[0] in ("init", "train", "eval", "logits")]
        self.assertGreater(len(named), 10)
        for c in named:
            self.assertIn("context_length=1024", c)
            self.assertNotIn("context_length=256", c)
        init, pre = named[0], runs(calls)[0]
        self.assertEqual(init[0], "init")
        self.assertEqual(pre[pre.index("--seqlens") + 1], "256")
        evals = [c for c in calls if c[0] == "eval"]
        at256 = [c for c in evals if c[c.index("--data") + 1].endswith("heldout256.tokens")]
        self.assertEqual(len(at256), 1)
        self.assertEqual(at256[0][at256[0].index("--seqlens") + 1], "256")
        for c in evals:
            self.assertEqual("--seqlens" in c, c in at256, c)
        for c in runs(calls)[1:]:
            self.assertNotIn("--seqlens", c)
        with open(os.path.join(out, "paper_claim.md")) as f:
            self.assertIn("- positions: phase 1 with the extension's RoPE factor 4 already "
                          "(S2_PC_PRE_ROPE=ext)", f.read())
        # the default: LongLoRA's order, said in the report
        r, calls, out = self.run_script(S2_PC_SPEC="specs/micro-byte-256.yaml")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertFalse([c for c in calls if "--seqlens" in c])
        with open(os.path.join(out, "paper_claim.md")) as f:
            self.assertIn("- positions: phase 1 at the model's own positions, interpolated x4 "
                          "by phase 2 (S2_PC_PRE_ROPE=own", f.read())
        r = subprocess.run([os.path.join(ROOT, "bench", "paper-claim.sh"), "--quick"],
                           env=dict(os.environ, S2_PC_PRE_ROPE="x4"), capture_output=True,
                           text=True)
        self.assertEqual(r.returncode, 2)
        self.assertIn("S2_PC_PRE_ROPE=x4: own (phase 1 at the model's own positions", r.stderr)

    def test_spec_must_be_a_byte_model_at_512(self):
        self.tmp = tempfile.TemporaryDirectory()
        for spec, want in (("specs/llama2-7b-32k.yaml", "S2_PC_SPEC=specs/llama2-7b-32k.yaml: "
                            "model.max_position_embeddings 4096 and vocab_size 32000; this run "
                            "pre-trains a byte-vocabulary model (vocab_size 264) at "
                            "max_position_embeddings tokens"),
                           ("specs/none.yaml", "S2_PC_SPEC=specs/none.yaml: no such spec file")):
            r = subprocess.run([os.path.join(ROOT, "bench", "paper-claim.sh"), "--quick"],
                               env=dict(os.environ, S2_PC_SPEC=spec, OUT=self.tmp.name),
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(want, r.stderr)

    def test_failure_is_reported(self):
        r, calls, out = self.run_script(fail="s2attn.shift=0")
        self.assertNotEqual(r.returncode, 0)
        with open(os.path.join(out, "paper_claim.md")) as f:
            md = f.read()
        self.assertIn("FAILED at: phase 2 (short attention)", md)
        self.assertIn("| LoRA+ with S²-Attn (G 512, shift 256) | full |", md)
        self.assertFalse([c for c in runs(calls) if "--full-attention" in c
                          and "--mode" not in c])

    def test_failure_in_phase_1_is_reported(self):
        # phase 2's data, written in the background, is done by then: the job is gone
        r, calls, out = self.run_script(fail="--mode full", sleep=1.5)
        self.assertNotEqual(r.returncode, 0)
        with open(os.path.join(out, "paper_claim.md")) as f:
            self.assertIn("FAILED at: phase 1 (pre-training at 512)", f.read())
        self.assertEqual(len(runs(calls)), 1)

    def test_stop_after_pre_then_extend_its_model(self):
        # call 1: phase 1 alone, its evaluations, the model in $OUT/pre-model.tar
        r, calls, out = self.run_script(S2_PC_STOP_AFTER="pre")
        self.assertEqual(r.returncode, 0, r.stderr)
        trains = runs(calls)
        self.assertEqual(len(trains), 1)
        self.assertIn("--mode", trains[0])
        self.assertEqual(len([c for c in calls if c[0] == "logits"]), 4)
        self.assertTrue(os.path.isfile(os.path.join(out, "pre-model.tar")))
        with open(os.path.join(out, "paper_claim.md")) as f:
            md = f.read()
        self.assertIn("- phase 2: not in this call (S2_PC_STOP_AFTER=pre)", md)
        keep = tempfile.TemporaryDirectory()
        self.addCleanup(keep.cleanup)
        tar = os.path.join(keep.name, "pre-model.tar")
        with open(os.path.join(out, "pre-model.tar"), "rb") as f, open(tar, "wb") as g:
            g.write(f.read())
        self.tmp.cleanup()
        # call 2: no init, no phase 1; the three extensions start from the extracted model
        r, calls, out = self.run_script(S2_PC_PRE_MODEL=tar)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertFalse([c for c in calls if c[0] == "init"])
        trains = runs(calls)
        self.assertEqual(len(trains), 3)
        models = {c[c.index("--model") + 1] for c in trains}
        self.assertEqual(len(models), 1)
        self.assertTrue(models.pop().endswith("/pre-model"))
        for c in trains:
            self.assertNotIn("--mode", c)
        self.assertEqual(len([c for c in calls if c[0] == "logits"]), 14)
        with open(os.path.join(out, "paper_claim.md")) as f:
            md = f.read()
        self.assertIn("- phase 1: not in this call: the pre-trained model of " + tar, md)
        self.assertRegex(md, r"\n- phase 2 \(full\): 2 steps of 4 x 2048 tokens")


class SplitSettings(unittest.TestCase):
    """bench/paper-claim.sh's two-call settings, refused before anything runs when wrong."""

    def test_split_settings_are_checked(self):
        for extra, what in (({"S2_PC_STOP_AFTER": "ext"}, "the one phase to stop after is pre"),
                            ({"S2_PC_STOP_AFTER": "pre", "S2_PC_PRE_MODEL": ROOT},
                             "give one"),
                            ({"S2_PC_PRE_MODEL": "/nonexistent/pre-model.tar"},
                             "no such file or directory"),
                            ({"S2_PC_ARMS": "s2 long"}, "S2_PC_ARMS=s2 long: long is not an "
                             "arm; valid: s2, short and full"),
                            ({"S2_PC_ARMS": " , "}, "S2_PC_ARMS= , : no arm"),
                            ({"S2_PC_EXT_MODE": "qlora"}, "S2_PC_EXT_MODE=qlora: lora (LoRA+, "
                             "the default) or full"),
                            ({"S2_PC_EXT_BATCH": "0"}, "S2_PC_EXT_BATCH=0: phase 2's sequences "
                             "a step, in one micro-batch, a positive integer")):
            env = dict(os.environ, **extra)
            r = subprocess.run([os.path.join(ROOT, "bench", "paper-claim.sh")], env=env,
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 2, (extra, r.stderr))
            self.assertIn(what, r.stderr)
        # a relative path is the caller's, not the repository's
        with tempfile.TemporaryDirectory() as d:
            env = dict(os.environ, S2_PC_PRE_MODEL="pre-model.tar")
            r = subprocess.run([os.path.join(ROOT, "bench", "paper-claim.sh")], env=env,
                               cwd=d, capture_output=True, text=True)
            self.assertEqual(r.returncode, 2, r.stderr)
            want = f"S2_PC_PRE_MODEL={os.path.realpath(d)}/pre-model.tar: no such"
            self.assertIn(want, r.stderr)


if __name__ == "__main__":
    unittest.main()

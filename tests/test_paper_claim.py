#!/usr/bin/env python3
"""bench/paper_claim.py (bench/paper-claim.sh's corpus, scorer, plan and report), without a GPU.

The corpus: the same seed gives the same documents and token file, every document is exactly
its context long, each passkey prompt's key and distance are where the meta file says and
can be read back from its text; the token file equals `s2lora data --bytes` on the same text
and `s2lora logits` accepts the prompts file. The scorer: a logits file laid out as `s2lora
logits` writes it (runtime/core/st.c), with known argmaxes and values, gives the expected
accuracies and NLL per bucket. S2LORA_BIN names the s2lora binary (ctest sets it; default
build/s2lora).
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


def text_of(tokens):
    return bytes(t - pc.BYTE_OFFSET for t in tokens).decode("ascii")


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
        for ctx in (512, 2048):
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
            # the rows that predict the answer: the next token of row r is digit j of the key
            for j, r in enumerate(meta["answer_rows"]):
                self.assertEqual(doc[r + 1], ord(p["key"][j]) + pc.BYTE_OFFSET)

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

    def test_token_file_equals_s2lora_data(self):
        txt = os.path.join(self.d, "txt")
        py = os.path.join(self.d, "py.tokens")
        pc.main(["gen", "--kind", "heldout", "--ctx", "512", "--n", "4", "-o", py,
                 "--text-dir", txt])
        c = os.path.join(self.d, "c.tokens")
        r = self.run_s2("data", "--bytes", *sorted(
            os.path.join(txt, n) for n in os.listdir(txt)), "-o", c)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(py, "rb") as f1, open(c, "rb") as f2:
            self.assertEqual(f1.read(), f2.read())

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

    def test_score_from_logits(self):
        ctx, V = 512, pc.VOCAB
        buckets = pc.parse_buckets("0,128,256")
        prompts = pc.documents("passkey", ctx, 3, 9, buckets)
        meta = {"ctx": ctx, "buckets": [pc.bucket_name(*b) for b in buckets],
                "answer_rows": pc.answer_rows(ctx),
                "prompts": [{k: p[k] for k in ("key", "distance", "bucket")} for p in prompts]}
        # prompt i gets digit j wrong when (i, j) is in wrong; elsewhere the key's digit wins.
        wrong = {(0, 4), (3, 0), (3, 1), (4, 2), (5, 0)}
        logits = [0.0] * (ctx * len(prompts) * V)
        want_nll = {}
        for i, p in enumerate(prompts):
            for j, r in enumerate(meta["answer_rows"]):
                base = (i * ctx + r) * V
                right = ord(p["key"][j]) + pc.BYTE_OFFSET
                row = [0.01 * ((v * 7 + i + j) % 13) for v in range(V)]
                if (i, j) in wrong:
                    row[right], row[(right + 1) % V] = 2.0, 3.0
                else:
                    row[right] = 3.0
                    row[(right + 1) % V] = 3.0 - 0.5 * (j + 1)  # a near miss, not a tie
                logits[base:base + V] = row
                lse = math.log(sum(math.exp(x) for x in row))
                want_nll.setdefault(i, []).append(lse - row[right])
        # rows that predict nothing the scorer reads: a large value that must not leak in
        for i in range(len(prompts)):
            logits[(i * ctx + 5) * V + 3] = 100.0
        path = os.path.join(self.d, "logits.safetensors")
        with open(path, "wb") as f:
            f.write(st_layout([
                ("logits", "F32", [ctx * len(prompts), V],
                 struct.pack(f"<{len(logits)}f", *logits)),
                ("loss", "F64", [1], struct.pack("<d", 1.5))]))
        res = pc.score(meta, path)
        # prompts 0..2 in bucket 0-128, 3..5 in 128-256
        self.assertEqual(res["0-128"]["n"], 3)
        self.assertAlmostEqual(res["0-128"]["accuracy"], 2 / 3)
        self.assertAlmostEqual(res["0-128"]["digit_accuracy"], 14 / 15)
        self.assertAlmostEqual(res["128-256"]["accuracy"], 0.0)
        self.assertAlmostEqual(res["128-256"]["digit_accuracy"], 11 / 15)
        self.assertAlmostEqual(res["all"]["accuracy"], 2 / 6)
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
        exact = sum(not any((i, j) in wrong for j in range(5)) for i in far)
        self.assertAlmostEqual(res["90+"]["accuracy"], exact / len(far))
        self.assertEqual(pc.score_columns(meta, 90), ["0-128", "128-256", "90+", "all"])

    def test_score_refuses_a_mismatched_file(self):
        meta = {"ctx": 300, "buckets": ["0-128"], "answer_rows": pc.answer_rows(300),
                "prompts": [{"key": "12345", "distance": 100, "bucket": "0-128"}]}
        path = os.path.join(self.d, "l.st")
        with open(path, "wb") as f:
            f.write(st_layout([("logits", "F32", [299, pc.VOCAB],
                                b"\0" * (4 * 299 * pc.VOCAB))]))
        with self.assertRaisesRegex(SystemExit, "299 rows"):
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
                   S2_PC_EXT_STEPS="2", S2_PC_PASSKEY="1", FAKE_FAIL=fail or "",
                   FAKE_SLEEP=str(sleep), **extra)
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
        trains = [c for c in calls if c[0] == "train"]
        self.assertEqual(len(trains), 4)
        pre, ext = trains[0], trains[1:]
        self.assertIn("--full-attention", pre)
        self.assertEqual(pre[pre.index("--mode") + 1], "full")
        self.assertIn("context_length=512", pre)
        # the three extensions: the same data, steps, seed and context; only the attention
        for c in ext:
            self.assertIn("context_length=2048", c)
            self.assertNotIn("--mode", c)
            for k in ("--data", "--steps", "--seed", "--lr", "--grad-accum", "--model"):
                self.assertEqual(c[c.index(k) + 1], ext[0][ext[0].index(k) + 1], k)
        self.assertEqual([("--full-attention" in c, "s2attn.shift=0" in c) for c in ext],
                         [(False, False), (False, True), (True, False)])
        logits = [c for c in calls if c[0] == "logits"]
        # pre at 512 and 2048, each extension with full attention, S2 and short as trained
        self.assertEqual(len(logits), 7)
        as_trained = [c for c in logits if "--s2attn" in c]
        self.assertEqual([("s2attn.shift=0" in c) for c in as_trained], [False, True])
        for c in logits[2:]:
            self.assertIn("--adapter", c)
        self.assertNotIn("--s2attn", " ".join(" ".join(c) for c in calls if c[0] == "eval"))
        with open(os.path.join(out, "paper_claim.json")) as f:
            res = json.load(f)
        self.assertEqual(res["run"]["status"], "complete")
        pk = [x for x in res["rows"] if "passkey" in x]
        self.assertEqual(len(pk), 7)
        # the stand-in predicts every next token: every prompt is retrieved
        for x in pk:
            self.assertEqual(x["passkey"]["all"]["accuracy"], 1.0)
        with open(os.path.join(out, "paper_claim.md")) as f:
            md = f.read()
        self.assertIn("| LoRA+ with short attention (G 512, no shift) | short |", md)
        self.assertIn("| 1536-2048 | 512+ | all | digit acc |", md)  # beyond phase 2's G
        self.assertRegex(md, r"\n- phase 1: 3 steps of 8 x 512 tokens, .* cosine: .* tok/s, "
                             r"final loss EMA 0.5000\n")
        for m in ("s2", "short", "full"):
            self.assertRegex(md, rf"\n- phase 2 \({m}\): 2 steps of 4 x 2048 tokens, .*, final")
        self.assertIn("| pre-trained at 512 (its own context) | full | 1.00 | 1.00 | 1.00 |", md)

    def test_commit_given_wins_over_git(self):
        # the tree here has a .git; a copied one may carry a stale one: S2_PC_COMMIT is the truth
        r, _, out = self.run_script(S2_PC_COMMIT="f00dfee")
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(out, "paper_claim.json")) as f:
            self.assertEqual(json.load(f)["run"]["commit"], "f00dfee")

    def test_failure_is_reported(self):
        r, calls, out = self.run_script(fail="s2attn.shift=0")
        self.assertNotEqual(r.returncode, 0)
        with open(os.path.join(out, "paper_claim.md")) as f:
            md = f.read()
        self.assertIn("FAILED at: phase 2 (short attention)", md)
        self.assertIn("| LoRA+ with S²-Attn (G 512, shift 256) | full |", md)
        self.assertFalse([c for c in calls if c[0] == "train" and "--full-attention" in c
                          and "--mode" not in c])

    def test_failure_in_phase_1_is_reported(self):
        # phase 2's data, written in the background, is done by then: the job is gone
        r, calls, out = self.run_script(fail="--mode", sleep=1.5)
        self.assertNotEqual(r.returncode, 0)
        with open(os.path.join(out, "paper_claim.md")) as f:
            self.assertIn("FAILED at: phase 1 (pre-training at 512)", f.read())
        self.assertEqual(len([c for c in calls if c[0] == "train"]), 1)


if __name__ == "__main__":
    unittest.main()

"""bench/cli_attn.py, the torch-free half of torch_check.py's comparison with `s2lora attn`: the
safetensors writer and reader (against files put together here byte by byte), the varlen
boundaries, the spec of a case (the package's composition), the tile text --tile takes and the
command line. With the s2lora binary ($S2LORA_BIN, else beside S2LORA_LIBRARY): a file and a
spec written by these functions pass `s2lora attn`'s checks of its inputs (which run before it
looks for a GPU), and a file without `do` is refused naming it."""
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest

import _paths
from s2lora._layout import compose_attention_yaml, context_bucket

sys.path.insert(0, os.path.join(_paths.REPO, "bench"))
import cli_attn  # noqa: E402
import torch_check  # noqa: E402  (imports no torch at module level)


def file_by_hand(header, data, pad_to=8):
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % pad_to)
    return struct.pack("<Q", len(text)) + text + data


class TestWrite(unittest.TestCase):
    def test_layout(self):
        bf = bytes(range(6))              # 3 BF16 elements: an odd count of 2-byte elements
        i32 = struct.pack("<3i", 0, 2, 5)
        f32 = struct.pack("<2f", 1.5, -2.0)
        buf = cli_attn.st_bytes({"q": ("BF16", (3,), bf), "cu_seqlens": ("I32", (3,), i32),
                                 "lse": ("F32", (1, 2), f32)}, {"k": "v"})
        (n,) = struct.unpack("<Q", buf[:8])
        self.assertEqual(n % 8, 0)
        header = json.loads(buf[8:8 + n])
        data = buf[8 + n:]
        self.assertEqual(header.pop("__metadata__"), {"k": "v"})
        spans = sorted((e["data_offsets"][0], e["data_offsets"][1], name)
                       for name, e in header.items())
        self.assertEqual(spans[0][0], 0)
        for (_, e0, _), (b1, _, _) in zip(spans, spans[1:]):
            self.assertEqual(b1, e0)      # packed without gaps
        self.assertEqual(spans[-1][1], len(data))
        sizes = {"BF16": 2, "I32": 4, "F32": 4}
        for name, e in header.items():
            self.assertEqual(e["data_offsets"][0] % sizes[e["dtype"]], 0, name)
        want = {"q": ("BF16", [3], bf), "cu_seqlens": ("I32", [3], i32),
                "lse": ("F32", [1, 2], f32)}
        for name, (dt, shape, raw) in want.items():
            e = header[name]
            self.assertEqual((e["dtype"], e["shape"]), (dt, shape), name)
            self.assertEqual(data[e["data_offsets"][0]:e["data_offsets"][1]], raw, name)

    def test_round_trip_through_a_file(self):
        t = {"o": ("BF16", (2, 1, 2), bytes(range(8))), "lse": ("F32", (1, 2), bytes(8)),
             "empty": ("F16", (0, 4), b"")}
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "x.safetensors")
            cli_attn.st_write(p, t, {"s2lora.spec": "a"})
            self.assertEqual(os.listdir(d), ["x.safetensors"])  # no temporary left
            got, meta = cli_attn.st_read(p)
        self.assertEqual(got, t)
        self.assertEqual(meta, {"s2lora.spec": "a"})

    def test_refuses_wrong_sizes_and_names(self):
        with self.assertRaisesRegex(ValueError, r"'q': BF16 \[2, 2\] needs 8 bytes, got 6"):
            cli_attn.st_bytes({"q": ("BF16", (2, 2), bytes(6))})
        with self.assertRaisesRegex(ValueError, r"'q': dtype 'BF17'"):
            cli_attn.st_bytes({"q": ("BF17", (1,), bytes(2))})
        with self.assertRaisesRegex(ValueError, "__metadata__"):
            cli_attn.st_bytes({"__metadata__": ("U8", (1,), b"x")})


class TestRead(unittest.TestCase):
    def test_a_file_made_by_hand(self):
        # unpadded header, unsorted tensors, as another writer may leave them
        header = {"b": {"dtype": "I32", "shape": [2], "data_offsets": [2, 10]},
                  "a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                  "__metadata__": {"x": "y"}}
        data = b"\x01\x02" + struct.pack("<2i", 7, -1)
        got, meta = cli_attn.st_parse(file_by_hand(header, data, pad_to=1), "f")
        self.assertEqual(got, {"a": ("U8", (2,), b"\x01\x02"),
                               "b": ("I32", (2,), struct.pack("<2i", 7, -1))})
        self.assertEqual(meta, {"x": "y"})

    def test_refusals_name_the_file_and_tensor(self):
        ok = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
        cases = [
            (b"\x01\x00", r"f: 2 bytes, too short"),
            (struct.pack("<Q", 99) + b"{}", r"f: header length 99 runs past"),
            (file_by_hand([1], b""), r"f: the header is a list"),
            (file_by_hand({"t": dict(ok, dtype="X")}, bytes(4)), r"f: tensor 't': dtype 'X'"),
            (file_by_hand({"t": dict(ok, shape=[2])}, bytes(4)),
             r"f: tensor 't': F32 \[2\] needs 8 bytes, data_offsets \[0, 4\] give 4"),
            (file_by_hand({"t": dict(ok, data_offsets=[0, 8])}, bytes(4)),
             r"f: tensor 't': data_offsets \[0, 8\] are not"),
            (file_by_hand({"t": ok, "u": dict(ok, data_offsets=[2, 6])}, bytes(6)),
             r"f: tensors 't' \[0, 4\] and 'u' \[2, 6\] share bytes"),
            (file_by_hand({"t": ok}, bytes(5)), r"f: the tensors' data ends at 4, the file has 5"),
        ]
        for buf, msg in cases:
            with self.subTest(msg=msg), self.assertRaisesRegex(ValueError, msg):
                cli_attn.st_parse(buf, "f")


class TestCheckCases(unittest.TestCase):
    def test_cu_seqlens(self):
        dt, shape, raw = cli_attn.cu_seqlens_of([300, 700, 24])
        self.assertEqual((dt, shape), ("I32", (4,)))
        self.assertEqual(struct.unpack("<4i", raw), (0, 300, 1000, 1024))

    def test_spec_is_the_packages_composition(self):
        # varlen, S and scale left to the spec: context_length the bucket of the longest
        case = ("v", None, [300, 1500, 24], 4, 2, 128, 128, None, "roll", None, "bf16")
        self.assertEqual(cli_attn.case_spec_yaml(case), compose_attention_yaml(
            num_heads=4, num_kv_heads=2, head_dim=128, context_length=context_bucket(1500),
            group_size=128, shift_mode="roll", dtype="bf16"))
        self.assertIn("context_length: 2048\n", cli_attn.case_spec_yaml(case))
        self.assertNotIn("shift:", cli_attn.case_spec_yaml(case))
        case = ("s", None, [512], 4, 4, 64, 128, 32, "split", 0.1, "fp16")
        y = cli_attn.case_spec_yaml(case)
        for line in ("  shift: 32", "  softmax_scale: 0.1", "dtype: fp16", "context_length: 1024",
                     "  num_kv_heads: 4", "  head_dim: 64", "  shift_mode: split"):
            self.assertIn(line + "\n", y)

    def test_cli_cases_cover_the_issue(self):
        cases = {c[0]: c for c in torch_check.CASES}
        picked = [cases[n] for n in torch_check.CLI_CASES]  # KeyError: a name not in CASES
        varlen = [c for c in picked if c[1] is None and len(c[2]) > 1]
        self.assertTrue(any(c[1] is None and len(c[2]) == 1 and c[8] == "split" for c in picked))
        self.assertTrue(any(c[8] == "split" for c in varlen))
        self.assertTrue(any(c[8] == "roll" and c[4] < c[3] for c in picked))  # GQA roll
        self.assertTrue(all(c[10] == "bf16" and c[1] is None for c in picked))


class TestTileAndArgv(unittest.TestCase):
    def test_tile_arg(self):
        t = "fwd_warps=4,fwd_block_n=64,bwd_atomic_dq=1"
        self.assertEqual(cli_attn.tile_arg(t + " (default)"), t)
        self.assertEqual(cli_attn.tile_arg(
            t + " (attn_fwd: tuned (N<=16384, H100); attn_bwd: default)"), t)
        self.assertEqual(cli_attn.tile_value(t, "bwd_atomic_dq"), 1)
        self.assertEqual(cli_attn.tile_value(t, "fwd_block_n"), 64)
        self.assertIsNone(cli_attn.tile_value(t, "bwd_stages"))
        for bad in ("", " (default)", "fwd_warps (default)", "fwd_warps=x", "a=1,,b=2"):
            with self.subTest(bad=bad), self.assertRaisesRegex(ValueError, "tile text"):
                cli_attn.tile_arg(bad)

    def test_argv_and_default_bin(self):
        self.assertEqual(cli_attn.attn_argv("/b/s2lora", "s.yaml", "i", "o", "fwd_warps=4"),
                         ["/b/s2lora", "attn", "s.yaml", "--in", "i", "--out", "o", "--tile",
                          "fwd_warps=4", "--backward"])
        self.assertNotIn("--backward", cli_attn.attn_argv("b", "s", "i", "o", "t", False))
        self.assertEqual(cli_attn.default_bin("/x/build/libs2lora.so"), "/x/build/s2lora")


@unittest.skipUnless(_paths.binary(), "no s2lora binary: set S2LORA_BIN, or S2LORA_LIBRARY "
                     "with s2lora beside it")
class TestWithBinary(unittest.TestCase):
    """`s2lora attn` reads what these functions write: the spec loads, the tensors' names,
    dtypes and shapes and cu_seqlens pass its checks; then it runs (a GPU: exit 0) or says there
    is no CUDA device (exit 3)."""

    CASE = ("v", None, [40, 88], 4, 2, 64, 32, None, "roll", None, "bf16")

    def run_cli(self, drop=None):
        _, _, lens, h, hkv, d, *_ = self.CASE
        t = sum(lens)
        with tempfile.TemporaryDirectory() as tmp:
            spec = os.path.join(tmp, "s.yaml")
            with open(spec, "w") as f:
                f.write(cli_attn.case_spec_yaml(self.CASE))
            tensors = {"q": ("BF16", (t, h, d), bytes(t * h * d * 2)),
                       "k": ("BF16", (t, hkv, d), bytes(t * hkv * d * 2)),
                       "v": ("BF16", (t, hkv, d), bytes(t * hkv * d * 2)),
                       "do": ("BF16", (t, h, d), bytes(t * h * d * 2)),
                       "cu_seqlens": cli_attn.cu_seqlens_of(lens)}
            tensors.pop(drop, None)
            inp, out = os.path.join(tmp, "in.safetensors"), os.path.join(tmp, "out.safetensors")
            cli_attn.st_write(inp, tensors)
            argv = cli_attn.attn_argv(_paths.binary(), spec, inp, out, "fwd_warps=4")
            p = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                               env=dict(os.environ, S2LORA_CACHE_DIR=os.path.join(tmp, "c")))
            got = cli_attn.st_read(out)[0] if p.returncode == 0 else None
        return p, got

    def test_inputs_accepted(self):
        p, got = self.run_cli()
        if p.returncode == 3:
            self.assertIn("no CUDA device", p.stderr)
        else:
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(sorted(got), ["dk", "dq", "dv", "lse", "o"])
            self.assertEqual(got["lse"][:2], ("F32", (4, 128)))

    def test_missing_do_refused(self):
        p, _ = self.run_cli(drop="do")
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("missing tensor 'do'", p.stderr)


if __name__ == "__main__":
    unittest.main()

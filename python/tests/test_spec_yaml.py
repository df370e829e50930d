"""The spec YAML that s2lora.attention composes from its arguments, and `--set` overrides from
Python values. Without the library: the text's keys and values (read back by a reader of the
block-mapping subset the composer writes). With S2LORA_LIBRARY naming a built libs2lora.so: the
same text through s2lora_spec_parse on the device-less context, its resolved values, hashes and
errors, and spec_info on the shipped specs."""
import math
import os
import struct
import unittest

import _paths
from s2lora import errors
from s2lora._layout import compose_attention_yaml, format_overrides, yaml_number


def read_block_yaml(text):
    """{dotted key: value text} of a block mapping with two-space indents (what the composer
    writes; not a YAML parser)."""
    out, stack = {}, []
    for line in text.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        key, _, value = line.strip().partition(":")
        stack = stack[: indent // 2]
        if value.strip():
            out[".".join(stack + [key])] = value.strip()
        else:
            stack.append(key)
    return out


ARGS = dict(num_heads=32, num_kv_heads=8, head_dim=128, context_length=8192, group_size=2048)


class TestCompose(unittest.TestCase):
    def test_keys_and_values(self):
        y = read_block_yaml(compose_attention_yaml(**ARGS, shift=512, shift_mode="roll",
                                                   softmax_scale=0.125, dtype="fp16"))
        self.assertEqual(y["name"], "attn-h32-kv8-d128")
        self.assertEqual(y["dtype"], "fp16")
        self.assertEqual(y["context_length"], "8192")
        self.assertEqual(y["model.num_heads"], "32")
        self.assertEqual(y["model.num_kv_heads"], "8")
        self.assertEqual(y["model.head_dim"], "128")
        self.assertEqual(y["model.hidden_size"], "4096")
        self.assertEqual(y["model.max_position_embeddings"], "8192")
        self.assertEqual(y["s2attn.group_size"], "2048")
        self.assertEqual(y["s2attn.shift"], "512")
        self.assertEqual(y["s2attn.shift_mode"], "roll")
        self.assertEqual(y["s2attn.softmax_scale"], "0.125")
        for required in ("model.intermediate_size", "model.num_layers", "model.vocab_size"):
            self.assertIn(required, y)

    def test_defaults_are_left_to_the_spec(self):
        y = read_block_yaml(compose_attention_yaml(**ARGS))
        self.assertNotIn("s2attn.shift", y)           # G / 2, derived by the loader
        self.assertNotIn("s2attn.softmax_scale", y)   # 1 / sqrt(head_dim)
        self.assertEqual(y["s2attn.shift_mode"], "split")
        self.assertEqual(y["dtype"], "bf16")

    def test_hidden_filler_stays_in_range(self):
        y = read_block_yaml(compose_attention_yaml(**dict(ARGS, num_heads=1024, num_kv_heads=2,
                                                          head_dim=256)))
        self.assertEqual(y["model.hidden_size"], "65536")

    def test_numbers_read_back_exactly(self):
        for x in (1 / math.sqrt(128), 0.1, 1e-5, 1e30, 1e-30, 3.0, 2.5e-7):
            t = yaml_number(x)
            self.assertNotIn("+", t)
            self.assertNotRegex(t, r"e-?0\d")
            self.assertEqual(float(t), x, t)
        self.assertEqual(yaml_number(1e-5), "1e-5")
        self.assertEqual(yaml_number(1e30), "1e30")
        for bad in (float("inf"), float("nan"), True):
            with self.assertRaises(errors.InvalidArgumentError):
                yaml_number(bad)

    def test_bad_arguments_are_refused_before_the_library(self):
        for kw in (dict(group_size=2048.0), dict(num_heads="32"), dict(shift_mode="rol"),
                   dict(dtype="fp32"), dict(shift=True)):
            with self.subTest(kw=kw), self.assertRaises(errors.InvalidArgumentError):
                compose_attention_yaml(**dict(ARGS, **kw))

    def test_overrides(self):
        self.assertEqual(
            format_overrides({"s2attn.group_size": 4096, "lora.targets": ["q_proj", "v_proj"]},
                             s2attn__shift_mode="roll", model__tie_word_embeddings=True,
                             s2attn__softmax_scale=0.0625),
            ["s2attn.group_size=4096", "lora.targets=[q_proj,v_proj]", "s2attn.shift_mode=roll",
             "model.tie_word_embeddings=true", "s2attn.softmax_scale=0.0625"])
        with self.assertRaises(errors.InvalidArgumentError):
            format_overrides({"x": object()})


def fp32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


@_paths.needs_library("test_spec_yaml")
class TestWithLibrary(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        from s2lora import _context
        cls.ctx = _context.context(_context.DEVICELESS)
        cls.Spec = _context.Spec

    def parse(self, text, name="<test>"):
        with self.Spec(self.ctx, text, name=name) as s:
            return s.info()

    def test_composed_spec_resolves_to_the_arguments(self):
        cases = [
            dict(ARGS),
            dict(ARGS, shift=100, shift_mode="roll", softmax_scale=0.1, dtype="fp16"),
            dict(num_heads=8, num_kv_heads=2, head_dim=64, context_length=1024, group_size=256),
            dict(num_heads=4, num_kv_heads=4, head_dim=96, context_length=2048,
                 group_size=4096, shift=0),  # G >= N, S = 0: full causal attention
            dict(num_heads=2, num_kv_heads=2, head_dim=256, context_length=1 << 24,
                 group_size=1 << 20),
        ]
        for kw in cases:
            with self.subTest(kw=kw):
                info = self.parse(compose_attention_yaml(**kw))
                self.assertEqual(info.num_heads, kw["num_heads"])
                self.assertEqual(info.num_kv_heads, kw["num_kv_heads"])
                self.assertEqual(info.head_dim, kw["head_dim"])
                self.assertEqual(info.context_length, kw["context_length"])
                self.assertEqual(info.group_size, kw["group_size"])
                self.assertEqual(info.shift, kw.get("shift", kw["group_size"] // 2))
                self.assertEqual(info.shift_mode, kw.get("shift_mode", "split"))
                self.assertEqual(info.dtype, kw.get("dtype", "bf16"))
                scale = kw.get("softmax_scale", 1 / math.sqrt(kw["head_dim"]))
                self.assertEqual(info.softmax_scale, fp32(scale))
                self.assertEqual(len(info.hash), 64)

    def test_same_kernels_same_hash(self):
        a = self.parse(compose_attention_yaml(**ARGS))
        b = self.parse(compose_attention_yaml(**ARGS, shift=1024, shift_mode="split",
                                              softmax_scale=1 / math.sqrt(128)))
        c = self.parse(compose_attention_yaml(**dict(ARGS, group_size=1024)))
        self.assertEqual(a.hash, b.hash)
        self.assertNotEqual(a.hash, c.hash)

    def test_invalid_values_are_spec_errors_showing_the_text(self):
        bad = [
            (dict(head_dim=80), "head_dim"),
            (dict(num_kv_heads=3), "num_kv_heads"),
            (dict(shift=2048), "shift"),
            (dict(num_heads=1, num_kv_heads=1), "num_heads"),
            (dict(group_size=0), "group_size"),
        ]
        for kw, key in bad:
            with self.subTest(kw=kw):
                with self.assertRaises(errors.SpecError) as cm:
                    self.parse(compose_attention_yaml(**dict(ARGS, **kw)), name="<args>")
                e = cm.exception
                self.assertIsInstance(e, ValueError)
                self.assertEqual(e.status, errors.ERR_SPEC)
                self.assertIn("<args>:", e.message)
                self.assertIn(key, e.message)
                self.assertIn("the spec composed from the arguments", e.message)

    def test_not_yaml_is_a_parse_error(self):
        with self.assertRaises(errors.ParseError) as cm:
            self.parse("name: [unclosed\n")
        self.assertEqual(cm.exception.status, errors.ERR_PARSE)

    def test_spec_info_of_shipped_specs_with_overrides(self):
        import s2lora
        path = os.path.join(_paths.REPO, "specs", "llama2-7b-32k.yaml")
        info = s2lora.spec_info(path)
        self.assertEqual((info.context_length, info.group_size, info.shift), (32768, 8192, 4096))
        info = s2lora.spec_info(path, s2attn__group_size=4096, s2attn__shift_mode="roll")
        self.assertEqual((info.group_size, info.shift, info.shift_mode), (4096, 2048, "roll"))
        info = s2lora.spec_info(path, {"model.num_key_value_heads": 8})
        self.assertEqual(info.num_kv_heads, 8)
        with open(path) as f:
            text = f.read()
        self.assertEqual(s2lora.spec_info(text).hash, s2lora.spec_info(path).hash)
        with self.assertRaises(errors.SpecError) as cm:
            s2lora.spec_info(path, s2attn__group_sise=4)
        self.assertIn("group_size", cm.exception.message)  # the did-you-mean
        with self.assertRaises(errors.S2loraIOError):
            s2lora.spec_info(os.path.join(_paths.REPO, "specs", "missing.yaml"))

    def test_status_strings_and_version(self):
        from s2lora import _lib
        for code in errors.STATUS_NAMES:
            self.assertTrue(_lib.status_string(code))
        self.assertEqual(int(_lib.version().split(".")[0]), _lib.HEADER_VERSION[0])


if __name__ == "__main__":
    unittest.main()

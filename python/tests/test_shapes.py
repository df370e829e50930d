"""The shape and stride logic of s2lora.attention and the transformers integration, on plain
shape and stride tuples (no torch): how tensors map onto the library's token and head strides,
which transformers views need no copy, the group size and shift of a call, and which masks are
refused."""
import unittest

import _paths  # noqa: F401  (sys.path)
from s2lora import errors
from s2lora._layout import (attention_operand, context_bucket, group_for_call,
                            hf_bhsd_is_packed_bshd, is_packed, mask_interface_refusal,
                            resolve_group_settings)


def contiguous_strides(shape):
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= s
    return tuple(reversed(out))


def transpose12(shape, strides):
    """x.transpose(1, 2) of a 4-D tensor."""
    return ((shape[0], shape[2], shape[1], shape[3]),
            (strides[0], strides[2], strides[1], strides[3]))


class TestOperand(unittest.TestCase):
    def test_packed_3d(self):
        op = attention_operand("q", (1000, 32, 128), contiguous_strides((1000, 32, 128)))
        self.assertEqual((op.tokens, op.batch, op.seq, op.heads, op.d), (1000, 1, 1000, 32, 128))
        self.assertEqual((op.stride_token, op.stride_head), (32 * 128, 128))

    def test_packed_4d_is_batch_times_seq_tokens(self):
        op = attention_operand("k", (2, 512, 8, 64), contiguous_strides((2, 512, 8, 64)))
        self.assertEqual((op.tokens, op.batch, op.seq, op.heads), (1024, 2, 512, 8))
        self.assertEqual((op.stride_token, op.stride_head), (8 * 64, 64))

    def test_hf_view_maps_back_without_copy(self):
        # transformers: q_proj(x).view(B, S, H, d).transpose(1, 2); s2lora's glue transposes
        # it back, a view with the strides of the packed [B, S, H, d]
        bshd = (2, 300, 32, 128)
        bhsd, st = transpose12(bshd, contiguous_strides(bshd))
        self.assertTrue(hf_bhsd_is_packed_bshd(bhsd, st))
        shape, strides = transpose12(bhsd, st)
        op = attention_operand("q", shape, strides)
        self.assertEqual((op.tokens, op.stride_token, op.stride_head), (600, 32 * 128, 128))

    def test_hf_contiguous_bhsd_needs_a_copy(self):
        bhsd = (2, 32, 300, 128)
        self.assertFalse(hf_bhsd_is_packed_bshd(bhsd, contiguous_strides(bhsd)))
        # s2lora.attention on its transpose: one sequence goes to the library with its real
        # strides (for the library to refuse, naming them); two cannot be one token dimension
        one = (1, 32, 300, 128)
        op = attention_operand("q", *transpose12(one, contiguous_strides(one)))
        self.assertEqual((op.stride_token, op.stride_head), (128, 300 * 128))
        with self.assertRaises(errors.InvalidArgumentError):
            attention_operand("q", *transpose12(bhsd, contiguous_strides(bhsd)))

    def test_qkv_slices_of_a_fused_projection_keep_their_strides(self):
        # q = qkv[..., :H, :] of a [T, H + 2 Hkv, d] buffer: the library decides, not Python
        op = attention_operand("q", (100, 32, 128), ((32 + 16) * 128, 128, 1))
        self.assertEqual((op.stride_token, op.stride_head), (48 * 128, 128))

    def test_size_one_dims_take_the_packed_stride(self):
        op = attention_operand("q", (1, 32, 128), (7, 128, 1))
        self.assertEqual(op.stride_token, 32 * 128)
        op = attention_operand("k", (10, 1, 64), (64, 999, 1))
        self.assertEqual((op.stride_token, op.stride_head), (64, 64))
        op = attention_operand("v", (1, 10, 2, 64), (5, 128, 64, 1))
        self.assertEqual(op.stride_token, 128)
        op = attention_operand("v", (3, 1, 2, 64), (128, 1, 64, 1))
        self.assertEqual((op.tokens, op.stride_token), (3, 128))

    def assertRefused(self, name, shape, strides, *needles):
        with self.assertRaises(errors.InvalidArgumentError) as cm:
            attention_operand(name, shape, strides)
        e = cm.exception
        self.assertIsInstance(e, ValueError)
        self.assertEqual(e.status, errors.ERR_INVALID)
        self.assertTrue(str(e).startswith(f"{name}: "), str(e))
        for n in needles:
            self.assertIn(n, str(e))

    def test_refusals_name_the_tensor(self):
        self.assertRefused("q", (100, 32), (32, 1), "[tokens, heads, head_dim]")
        self.assertRefused("k", (100, 8, 128), (1024, 128, 2), "head dim must be contiguous")
        self.assertRefused("v", (100, 8, 128), (0, 128, 1), "zero (expanded)")
        self.assertRefused("v", (100, 8, 128), (-1024, 128, 1), "negative")
        # batches not one token stride apart: [B, S] cannot be one token dimension
        self.assertRefused("q", (2, 100, 8, 64), (100 * 8 * 64 + 64, 8 * 64, 64, 1),
                           "not one [batch*seq, heads, head_dim] tensor")

    def test_is_packed(self):
        self.assertTrue(is_packed((4, 5, 6), (30, 6, 1)))
        self.assertTrue(is_packed((4, 1, 6), (6, 99, 1)))
        self.assertFalse(is_packed((4, 5, 6), (60, 6, 1)))


class TestGroups(unittest.TestCase):
    def test_ratio_is_longlora_int(self):
        self.assertEqual(group_for_call(8192), (2048, 1024))
        self.assertEqual(group_for_call(100, group_ratio=0.57), (56, 28))  # floor(56.99...)
        self.assertEqual(group_for_call(1000, group_ratio=1.0), (1000, 500))

    def test_explicit_group_and_shift(self):
        self.assertEqual(group_for_call(8192, group_size=1000), (1000, 500))
        self.assertEqual(group_for_call(8192, group_size=1000, shift=0), (1000, 0))

    def test_full_attention_is_one_group_without_shift(self):
        g, s = group_for_call(3000, group_size=64, full=True)
        self.assertEqual(s, 0)
        self.assertGreaterEqual(g, 3000)
        self.assertEqual(g, context_bucket(3000))

    def test_refusals(self):
        with self.assertRaises(errors.InvalidArgumentError):
            group_for_call(100, group_size=10, group_ratio=0.5)
        with self.assertRaises(errors.InvalidArgumentError):
            group_for_call(100, group_ratio=0.0)
        with self.assertRaises(errors.InvalidArgumentError):
            group_for_call(3, group_ratio=0.25)  # G = 0
        with self.assertRaises(errors.InvalidArgumentError):
            group_for_call(100, group_size=10.5)
        with self.assertRaises(errors.InvalidArgumentError):
            group_for_call(100, group_size=True)

    def test_context_bucket(self):
        self.assertEqual(context_bucket(1), 1024)
        self.assertEqual(context_bucket(1024), 1024)
        self.assertEqual(context_bucket(1025), 2048)
        self.assertEqual(context_bucket(32768), 32768)
        self.assertEqual(context_bucket(1 << 24), 1 << 24)
        for bad in (0, (1 << 24) + 1):
            with self.assertRaises(errors.InvalidArgumentError):
                context_bucket(bad)

    def test_settings_precedence(self):
        none = {}
        self.assertEqual(resolve_group_settings(none, none),
                         {"group_size": None, "group_ratio": None, "shift": None,
                          "shift_mode": "split"})
        cfg = {"group_ratio": 0.125, "shift": 7, "shift_mode": "roll"}
        self.assertEqual(resolve_group_settings(none, cfg),
                         {"group_size": None, "group_ratio": 0.125, "shift": 7,
                          "shift_mode": "roll"})
        # a registered group size hides the config's ratio (one setting, two spellings)
        reg = {"group_size": 512, "shift_mode": "split"}
        self.assertEqual(resolve_group_settings(reg, cfg),
                         {"group_size": 512, "group_ratio": None, "shift": 7,
                          "shift_mode": "split"})
        with self.assertRaises(errors.InvalidArgumentError):
            resolve_group_settings({"shift_mode": "rol"}, none)


class TestMasks(unittest.TestCase):
    def refusal(self, **kw):
        args = dict(q_length=10, kv_length=10, q_offset=0, kv_offset=0, plain_causal=True,
                    padding=False)
        args.update(kw)
        return mask_interface_refusal(**args)

    def test_plain_causal_needs_no_mask(self):
        self.assertIsNone(self.refusal())

    def test_refused(self):
        self.assertIn("sliding window", self.refusal(plain_causal=False))
        self.assertIn("KV cache", self.refusal(q_length=1, kv_length=10))
        self.assertIn("KV cache", self.refusal(q_offset=5))
        self.assertIn("padding", self.refusal(padding=True))


if __name__ == "__main__":
    unittest.main()

"""The library's messages as Python raises them: they open with the C function's name, once
(s2lora.h's convention), and the package adds none of its own. Needs the library
(S2LORA_LIBRARY); no GPU: everything here runs on the device-less context (device -1)."""
import ctypes
import os
import unittest

import _paths
from s2lora import errors

TINY = os.path.join(_paths.REPO, "specs", "tiny-byte-512.yaml")


@_paths.needs_library("test_messages")
class TestMessages(unittest.TestCase):
    def test_build_failure_names_s2lora_build_once(self):
        import s2lora
        # A cache directory under a file cannot be made: the build fails on every machine.
        opts = s2lora.ContextOptions(cache_dir="/proc/version/cache")
        with self.assertRaises(errors.S2loraError) as cm:
            s2lora.build(TINY, device=-1, options=opts)
        msg = cm.exception.message
        self.assertTrue(msg.startswith("s2lora_build(tiny-byte-512, "), msg)
        self.assertEqual(msg.count("s2lora_build"), 1, msg)

    def test_check_keeps_the_message_and_appends_what_it_is_about(self):
        from s2lora import _context, _lib
        ctx = _context.context(_context.DEVICELESS)
        with _context.Spec(ctx, TINY) as spec, ctx.lock:
            a = _lib.AttnArgs()
            a.tokens, a.batch = 256, 1
            a.q, a.k, a.v, a.o = (ctypes.c_void_p(0x10000 * i) for i in range(1, 5))
            a.lse = ctypes.cast(ctypes.c_void_p(0x50000), ctypes.POINTER(ctypes.c_float))
            a.q_stride_token = 3 * 4 * 64  # q as a view of a fused qkv: not packed
            st = ctx.lib.s2lora_attn_check_args(spec.handle, ctypes.byref(a), None)
            with self.assertRaises(errors.InvalidArgumentError) as cm:
                ctx.check(st, "spec tiny-byte-512")
        msg = cm.exception.message
        self.assertTrue(msg.startswith("s2lora_attn_forward: q [T=256, H=4, d=64] has "
                                       "q_stride_token 768"), msg)
        self.assertEqual(msg.count("s2lora_attn_forward"), 1, msg)
        self.assertTrue(msg.endswith(" (spec tiny-byte-512)"), msg)


if __name__ == "__main__":
    unittest.main()

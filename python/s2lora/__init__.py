"""s2lora from Python: LongLoRA's shifted sparse attention (S²-Attn) on PyTorch tensors, as a
transformers attention implementation, and the spec, build and tune functions of libs2lora.

    import s2lora
    o = s2lora.attention(q, k, v, group_size=2048)          # q [B, S, H, d], k/v [B, S, Hkv, d]
    s2lora.register_transformers()                          # attn_implementation="s2lora"
    s2lora.spec_info("specs/llama2-7b-32k.yaml", s2attn__group_size=4096)

The library (libs2lora.so, runtime/api/s2lora.h) is found through $S2LORA_LIBRARY, next to this
package, in the source tree's build/, by ctypes.util.find_library, on LD_LIBRARY_PATH, or in an
install prefix's lib/; it is loaded on first use, so importing s2lora needs neither the library
nor torch. attention and register_transformers need torch (and transformers).
"""
from . import errors
from ._context import ContextOptions, SpecInfo, build, reset, spec_info, tune
from ._layout import compose_attention_yaml
from ._lib import HEADER_VERSION, library_path, version
from .errors import (BuildError, CacheError, CudaError, InvalidArgumentError,
                     LibraryNotFoundError, LibraryVersionError, NoDeviceError, ParseError,
                     S2loraError, S2loraIOError, S2loraMemoryError, SpecError, UnsupportedError)

__version__ = ".".join(map(str, HEADER_VERSION))


def attention(q, k, v, *, group_size, shift=None, shift_mode="split", cu_seqlens=None,
              max_seqlen=None, softmax_scale=None, options=None):
    from ._torch import attention as _attention
    return _attention(q, k, v, group_size=group_size, shift=shift, shift_mode=shift_mode,
                      cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, softmax_scale=softmax_scale,
                      options=options)


def register_transformers(name="s2lora", *, group_size=None, group_ratio=None, shift=None,
                          shift_mode=None, full_attention_in_eval=True, full_attention=False,
                          options=None):
    from .hf import register_transformers as _register
    return _register(name, group_size=group_size, group_ratio=group_ratio, shift=shift,
                     shift_mode=shift_mode, full_attention_in_eval=full_attention_in_eval,
                     full_attention=full_attention, options=options)


def _doc_from(wrapper, module, attr):
    """The wrappers above import torch only when called; their help is the real function's."""
    import ast
    import os
    path = os.path.join(os.path.dirname(__file__), module + ".py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == attr:
            wrapper.__doc__ = ast.get_docstring(node)


_doc_from(attention, "_torch", "attention")
_doc_from(register_transformers, "hf", "register_transformers")
del _doc_from

__all__ = [
    "attention", "register_transformers", "build", "tune", "spec_info", "reset",
    "ContextOptions", "SpecInfo", "compose_attention_yaml", "library_path", "version", "errors",
    "S2loraError", "LibraryNotFoundError", "LibraryVersionError", "S2loraIOError", "ParseError",
    "SpecError", "InvalidArgumentError", "S2loraMemoryError", "BuildError", "CacheError",
    "CudaError", "NoDeviceError", "UnsupportedError",
]

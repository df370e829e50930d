"""Contexts and specs over the C API: one context per (device, options), opened on first use and
kept for the process; specs loaded from a file or parsed from YAML text; build, tune and the
spec's information. No torch here: this module works wherever the library loads (spec functions
on the device-less context, device -1, need no GPU).
"""
import ctypes
import os
import threading
from dataclasses import dataclass

from . import _lib, errors
from ._layout import format_overrides, numbered

DEVICELESS = -1  # s2lora_open(&ctx, -1, NULL): a context where the spec functions work


@dataclass(frozen=True)
class ContextOptions:
    """struct s2lora_options: None for the library's defaults (the s2lora binary's cache
    directory and tuning database)."""
    cache_dir: str = None
    tune_db: str = None
    use_tuned: bool = True
    build_threads: int = 0

    def struct(self):
        return _lib.Options(
            self.cache_dir.encode() if self.cache_dir is not None else None,
            self.tune_db.encode() if self.tune_db is not None else None,
            1 if self.use_tuned else 0, int(self.build_threads))


DEFAULT_OPTIONS = ContextOptions()


class Context:
    """An open s2lora_ctx on one device. One thread at a time may use a context (s2lora.h):
    every call on it, or on a handle made from it, holds `lock`."""

    def __init__(self, device, options=DEFAULT_OPTIONS):
        self.lib = _lib.lib()
        self.device = int(device)
        self.options = options
        self.lock = threading.RLock()
        self._opts = options.struct()  # kept alive while the context lives
        handle = ctypes.c_void_p()
        st = self.lib.s2lora_open(ctypes.byref(handle), self.device, ctypes.byref(self._opts))
        if st != errors.OK:
            msg = self.lib.s2lora_errmsg(handle).decode(errors="replace")
            self.lib.s2lora_close(handle)
            where = "the device-less context" if self.device == DEVICELESS else f"device {device}"
            raise errors.error_for_status(st, f"s2lora_open({where}): {msg}")
        self.handle = handle
        self.attn_by_text = {}  # composed spec YAML -> Attention (torch glue's cache)
        self.attn_by_hash = {}  # spec hash -> Attention

    def errmsg(self):
        return self.lib.s2lora_errmsg(self.handle).decode(errors="replace")

    def check(self, status, about=""):
        """Raises the exception for a failed call on this context, with the library's message
        as it is: it opens with the function's name already (s2lora.h), so none is added here.
        about: what the call was on, appended in parentheses (e.g. the spec)."""
        if status != errors.OK:
            msg = self.errmsg()
            raise errors.error_for_status(status, f"{msg} ({about})" if about else msg)

    @property
    def device_name(self):
        return self.lib.s2lora_device_name(self.handle).decode(errors="replace")

    @property
    def device_arch(self):
        return self.lib.s2lora_device_arch(self.handle).decode(errors="replace")

    def close(self):
        """Frees every attention handle made here, then the context."""
        with self.lock:
            for a in list(self.attn_by_hash.values()):
                a.free()
            self.attn_by_text.clear()
            self.attn_by_hash.clear()
            if self.handle:
                self.lib.s2lora_close(self.handle)
                self.handle = None


_contexts = {}
_contexts_lock = threading.Lock()


def context(device, options=None):
    """The process's context for (device, options), opened on first use."""
    options = DEFAULT_OPTIONS if options is None else options
    if not isinstance(options, ContextOptions):
        raise errors.InvalidArgumentError(
            f"options must be s2lora.ContextOptions, got {type(options).__name__}",
            errors.ERR_INVALID)
    key = (int(device), options)
    with _contexts_lock:
        ctx = _contexts.get(key)
        if ctx is None:
            ctx = Context(device, options)
            _contexts[key] = ctx
        return ctx


def reset():
    """Frees every cached attention handle and context (the next call opens them again)."""
    with _contexts_lock:
        for ctx in _contexts.values():
            ctx.close()
        _contexts.clear()


# ----------------------------------------------------------------------------- specs

@dataclass(frozen=True)
class SpecInfo:
    """struct s2lora_spec_info: what a spec's kernels are specialised for."""
    name: str
    context_length: int
    group_size: int
    shift: int
    shift_mode: str     # "split" or "roll"
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: str          # "bf16" or "fp16"
    softmax_scale: float
    hidden_size: int
    intermediate_size: int
    num_layers: int
    vocab_size: int
    lora_rank: int
    lora_alpha: float
    hash: str           # SHA-256 of the canonical spec

    @classmethod
    def from_struct(cls, s):
        modes, dtypes = {0: "split", 1: "roll"}, {0: "bf16", 1: "fp16"}
        return cls(
            name=s.name.decode(errors="replace"), context_length=s.context_length,
            group_size=s.group_size, shift=s.shift,
            shift_mode=modes.get(s.shift_mode, f"unknown ({s.shift_mode})"),
            num_heads=s.num_heads, num_kv_heads=s.num_kv_heads, head_dim=s.head_dim,
            dtype=dtypes.get(s.dtype, f"unknown ({s.dtype})"), softmax_scale=s.softmax_scale,
            hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
            num_layers=s.num_layers, vocab_size=s.vocab_size, lora_rank=s.lora_rank,
            lora_alpha=s.lora_alpha, hash=s.hash.decode())


def _c_strings(strings):
    arr = (ctypes.c_char_p * max(1, len(strings)))()
    for i, s in enumerate(strings):
        arr[i] = s.encode()
    return arr


def looks_like_path(spec):
    """A spec argument is a file when it is a path-like object, names an existing file, or is
    one line ending in .yaml/.yml; otherwise it is YAML text."""
    if isinstance(spec, os.PathLike):
        return True
    if not isinstance(spec, str):
        raise errors.InvalidArgumentError(
            f"spec must be a path or YAML text, got {type(spec).__name__}", errors.ERR_INVALID)
    if "\n" in spec:
        return False
    return os.path.isfile(spec) or spec.endswith((".yaml", ".yml"))


class Spec:
    """An s2lora_spec: loaded from a file or parsed from YAML text, with `--set` overrides."""

    def __init__(self, ctx, source, overrides=(), name=None):
        self.ctx = ctx
        self.handle = ctypes.c_void_p()
        self.overrides = list(overrides)
        arr = _c_strings(self.overrides)
        with ctx.lock:
            if looks_like_path(source):
                path = os.fspath(source)
                st = ctx.lib.s2lora_spec_load(ctx.handle, path.encode(), arr, len(self.overrides),
                                              ctypes.byref(self.handle))
                ctx.check(st)
            else:
                text = source.encode()
                st = ctx.lib.s2lora_spec_parse(ctx.handle, text, len(text),
                                               name.encode() if name else None, arr,
                                               len(self.overrides), ctypes.byref(self.handle))
                if st != errors.OK:
                    msg = ctx.errmsg()
                    if name:  # composed text: show it, as the message points into it
                        msg = f"{msg}\nthe spec composed from the arguments:\n{numbered(source)}"
                    raise errors.error_for_status(st, msg)
        self._info = None

    def info(self):
        if self._info is None:
            s = _lib.SpecInfoStruct()
            with self.ctx.lock:
                self.ctx.check(self.ctx.lib.s2lora_spec_get_info(self.handle, ctypes.byref(s)))
            self._info = SpecInfo.from_struct(s)
        return self._info

    def free(self):
        if self.handle:
            self.ctx.lib.s2lora_spec_free(self.handle)
            self.handle = ctypes.c_void_p()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()

    def __del__(self):
        try:
            self.free()
        except Exception:  # interpreter shutdown: the library may be gone
            pass


def _device_arg(device):
    """A device number from an int, "cuda:N", or anything with an .index (a torch.device)."""
    if device is None:
        return 0
    if isinstance(device, bool):
        raise errors.InvalidArgumentError(f"device {device!r}: need a CUDA device number",
                                          errors.ERR_INVALID)
    if isinstance(device, int):
        return device
    if isinstance(device, str):
        d = device[5:] if device.startswith("cuda:") else device
        if d.isdigit():
            return int(d)
        if device == "cuda":
            return 0
    idx = getattr(device, "index", None)
    if getattr(device, "type", None) == "cuda":
        return 0 if idx is None else int(idx)
    raise errors.InvalidArgumentError(f"device {device!r}: need a CUDA device number or "
                                      f"'cuda:N'", errors.ERR_INVALID)


def spec_info(spec, overrides=None, **kw_overrides):
    """What a spec file or YAML text resolves to (after overrides, defaults and derived values):
    an s2lora.SpecInfo. Needs no GPU. Overrides: a mapping of dotted keys, or keyword
    arguments with __ for the dot (s2attn__group_size=2048)."""
    ctx = context(DEVICELESS)
    with Spec(ctx, spec, format_overrides(overrides, **kw_overrides)) as s:
        return s.info()


def build(spec, overrides=None, *, device=0, options=None, **kw_overrides):
    """s2lora_build: builds every unit of the spec for the device through the kernel cache
    (what `s2lora build` does); returns (built, cached) unit counts. Runs nothing on the GPU."""
    ctx = context(_device_arg(device), options)
    built, cached = ctypes.c_int(), ctypes.c_int()
    with Spec(ctx, spec, format_overrides(overrides, **kw_overrides)) as s, ctx.lock:
        ctx.check(ctx.lib.s2lora_build(ctx.handle, s.handle, ctypes.byref(built),
                                       ctypes.byref(cached)))
    return built.value, cached.value


def tune(spec, seqlen=None, overrides=None, *, device=0, options=None, **kw_overrides):
    """s2lora_tune: tunes the spec's attention kernels on the device for sequences of `seqlen`
    tokens (None: the spec's context length) and stores the fastest tile in the tuning
    database, where later attention handles find it. Takes about a minute. Returns the
    winner's forward+backward median in milliseconds."""
    if seqlen is None:
        n = 0
    else:
        if isinstance(seqlen, bool) or not isinstance(seqlen, int) or seqlen < 1:
            raise errors.InvalidArgumentError(f"seqlen {seqlen!r}: need a positive int or None",
                                              errors.ERR_INVALID)
        n = seqlen
    ctx = context(_device_arg(device), options)
    best = ctypes.c_double()
    with Spec(ctx, spec, format_overrides(overrides, **kw_overrides)) as s, ctx.lock:
        ctx.check(ctx.lib.s2lora_tune(ctx.handle, s.handle, n, ctypes.byref(best)))
    return best.value

"""Pure functions (no torch, no library) that the PyTorch glue is made of, so CPU tests can
check them on plain shape and stride tuples: how a tensor maps onto s2lora_attn_args' token and
head strides, whether a transformers [B, H, S, d] view is a packed [B, S, H, d] underneath, the
group size and shift of a call, the spec YAML composed from a call's arguments, and `--set`
override strings.
"""
import math
from dataclasses import dataclass

from .errors import ERR_INVALID, InvalidArgumentError

MAX_TOKENS = 1 << 24          # specs/README.md: context_length, group_size at most 2^24
MIN_CONTEXT_BUCKET = 1024     # the smallest context_length a composed spec gets
MAX_HIDDEN = 65536            # specs/README.md: model.hidden_size 1..65536
SHIFT_MODES = ("split", "roll")
DTYPE_NAMES = ("bf16", "fp16")


def _invalid(msg):
    return InvalidArgumentError(msg, ERR_INVALID)


# ----------------------------------------------------------------------------- strides

@dataclass(frozen=True)
class Operand:
    """One attention tensor as s2lora_attn_args sees it: T tokens of `heads` heads of d."""
    tokens: int
    batch: int          # B of a [B, S, heads, d] tensor; 1 for [T, heads, d]
    seq: int            # S of a [B, S, heads, d] tensor; T for [T, heads, d]
    heads: int
    d: int
    stride_token: int   # elements between consecutive tokens
    stride_head: int    # elements between consecutive heads


def attention_operand(name, shape, strides):
    """Maps a [T, heads, d] or [B, S, heads, d] tensor (shape and element strides) onto tokens
    and the token and head strides the library takes, without deciding whether the library
    accepts those (it refuses what its kernels cannot read, naming the tensor). Refused here,
    because the C struct cannot express them: a head dim that is not contiguous, batches not
    one token stride apart, and zero or negative strides of a dimension longer than one (an
    expanded tensor: the library reads a zero stride as "packed"). The stride of a dimension
    of size one is meaningless in PyTorch: it is taken as the packed one."""
    shape, strides = tuple(int(x) for x in shape), tuple(int(x) for x in strides)
    if len(shape) not in (3, 4) or len(strides) != len(shape):
        raise _invalid(f"{name}: expected [tokens, heads, head_dim] or [batch, seq, heads, "
                       f"head_dim], got shape {list(shape)}")
    for size, st in zip(shape, strides):
        if size > 1 and st <= 0:
            raise _invalid(f"{name}: shape {list(shape)} with strides {list(strides)} has a "
                           f"{'zero (expanded)' if st == 0 else 'negative'} stride; s2lora reads "
                           f"each element from its own address: pass {name}.contiguous()")
    heads, d = shape[-2], shape[-1]
    if d > 1 and strides[-1] != 1:
        raise _invalid(f"{name}: the head dim must be contiguous (stride 1), got shape "
                       f"{list(shape)} with strides {list(strides)}: pass {name}.contiguous()")
    st_head = strides[-2] if heads > 1 else d
    if len(shape) == 3:
        tokens, batch, seq = shape[0], 1, shape[0]
        st_token = strides[0] if tokens > 1 else heads * st_head
    else:
        batch, seq = shape[0], shape[1]
        tokens = batch * seq
        if seq == 1:
            st_token = strides[0] if batch > 1 else heads * st_head
        else:
            st_token = strides[1]
            if batch > 1 and strides[0] != seq * strides[1]:
                raise _invalid(
                    f"{name}: shape {list(shape)} with strides {list(strides)}: the batches are "
                    f"{strides[0]} elements apart, not seq x token stride = {seq * strides[1]}, "
                    f"so the tokens are not one [batch*seq, heads, head_dim] tensor: pass "
                    f"{name}.contiguous()")
    return Operand(tokens, batch, seq, heads, d, st_token, st_head)


def is_packed(shape, strides):
    """True when the tensor is row-major contiguous (dimensions of size one ignored)."""
    expect = 1
    for size, st in zip(reversed(tuple(shape)), reversed(tuple(strides))):
        if size > 1 and st != expect:
            return False
        expect *= size
    return True


def hf_bhsd_is_packed_bshd(shape, strides):
    """transformers hands attention [B, H, S, d] tensors that are usually transposed views of
    the [B, S, H, d] a projection wrote. True when this one is, packed: then
    .transpose(1, 2) gives s2lora its input with no copy."""
    if len(shape) != 4 or len(strides) != 4:
        raise _invalid(f"expected a [batch, heads, seq, head_dim] tensor, got shape {list(shape)}")
    b, h, s, d = shape
    sb, sh, ss, sd = strides
    return is_packed((b, s, h, d), (sb, ss, sh, sd))


# ----------------------------------------------------------------------------- groups

def context_bucket(n):
    """The context_length a composed spec gets for sequences of up to n tokens: the next power
    of two from MIN_CONTEXT_BUCKET, so calls of nearby lengths share one spec (one build). The
    kernels take the sequence length as an argument; context_length only bounds it."""
    n = int(n)
    if n < 1:
        raise _invalid(f"sequence length {n}: need at least one token")
    if n > MAX_TOKENS:
        raise _invalid(f"sequence length {n} is beyond s2lora's {MAX_TOKENS} tokens a sequence "
                       f"(specs/README.md, Ranges)")
    b = MIN_CONTEXT_BUCKET
    while b < n:
        b *= 2
    return min(b, MAX_TOKENS)


def group_for_call(seqlen, *, group_size=None, group_ratio=None, shift=None, full=False):
    """(G, S) for a call on sequences of `seqlen` tokens. full: plain causal attention, G the
    call's context bucket (>= seqlen) and S = 0. Otherwise G = group_size, or
    int(seqlen * group_ratio) as LongLoRA computes it (group_ratio 0.25 when neither is
    given), and S = shift or G // 2."""
    if full:
        return context_bucket(seqlen), 0
    if group_size is not None and group_ratio is not None:
        raise _invalid(f"give group_size ({group_size}) or group_ratio ({group_ratio}), not both")
    if group_size is None:
        ratio = 0.25 if group_ratio is None else float(group_ratio)
        if not 0.0 < ratio <= 1.0:
            raise _invalid(f"group_ratio = {group_ratio} is out of range: valid 0 < r <= 1")
        group_size = int(seqlen * ratio)
        if group_size < 1:
            raise _invalid(f"group_ratio {ratio} of a {seqlen}-token sequence gives group size "
                           f"{group_size}; need at least 1 token")
    g = _int_arg("group_size", group_size)
    s = g // 2 if shift is None else _int_arg("shift", shift)
    return g, s


def resolve_group_settings(registered, config):
    """The S²-Attn settings of a transformers call: what register_transformers was given wins;
    else the model config's s2lora_group_size, s2lora_group_ratio, s2lora_shift and
    s2lora_shift_mode attributes; else LongLoRA's (ratio 1/4 of the sequence, shift G/2,
    split). `registered` and `config` are mappings of those four names (missing or None:
    not given). group_size and group_ratio are one setting: a registered one of them hides
    both of the config's."""
    out = {}
    reg = {k: registered.get(k) for k in ("group_size", "group_ratio", "shift", "shift_mode")}
    cfg = {k: config.get(k) for k in reg}
    if reg["group_size"] is not None or reg["group_ratio"] is not None:
        out["group_size"], out["group_ratio"] = reg["group_size"], reg["group_ratio"]
    else:
        out["group_size"], out["group_ratio"] = cfg["group_size"], cfg["group_ratio"]
    out["shift"] = reg["shift"] if reg["shift"] is not None else cfg["shift"]
    mode = reg["shift_mode"] or cfg["shift_mode"] or "split"
    if mode not in SHIFT_MODES:
        raise _invalid(f"shift_mode '{mode}': valid {', '.join(SHIFT_MODES)}")
    out["shift_mode"] = mode
    return out


# ----------------------------------------------------------------------------- YAML

def _int_arg(name, value):
    if isinstance(value, bool) or not isinstance(value, int):
        if hasattr(value, "__index__") and not isinstance(value, bool):
            return int(value.__index__())
        raise _invalid(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def yaml_number(value, name="value"):
    """A float as the spec reader's plain decimal number: the shortest text that reads back as
    the same double (repr), with the exponent written without '+' or leading zeros."""
    if isinstance(value, bool):
        raise _invalid(f"{name} must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise _invalid(f"{name} = {value!r}: need a finite number")
    r = repr(x)
    if "e" in r:
        mant, exp = r.split("e")
        r = f"{mant}e{int(exp)}"
    return r


def yaml_value(value, name="value"):
    """A Python value as `--set` takes it: YAML scalars and flow lists."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return yaml_number(value, name)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(yaml_value(v, name) for v in value) + "]"
    if isinstance(value, str):
        return value
    raise _invalid(f"{name}: cannot pass a {type(value).__name__} as a spec value")


def format_overrides(overrides=None, **kwargs):
    """["dotted.key=value", ...] from a mapping of dotted keys and from keyword arguments, in
    which a double underscore stands for the dot (s2attn__group_size=2048 is
    "s2attn.group_size=2048"); keyword arguments come after the mapping (a later one wins)."""
    items = list((overrides or {}).items()) + [(k.replace("__", "."), v) for k, v in kwargs.items()]
    out = []
    for key, value in items:
        if not isinstance(key, str) or not key:
            raise _invalid(f"override key {key!r}: need a dotted key such as s2attn.group_size")
        out.append(f"{key}={yaml_value(value, key)}")
    return out


def compose_attention_yaml(*, num_heads, num_kv_heads, head_dim, context_length, group_size,
                           shift=None, shift_mode="split", softmax_scale=None, dtype="bf16"):
    """The spec (YAML text for s2lora_spec_parse) of one attention call's kernels. The model
    keys the attention kernels do not read are fillers that pass the spec's checks:
    hidden_size H d (at most the spec's 65536), intermediate_size hidden_size, one layer, a
    vocabulary of 256, max_position_embeddings = context_length (rope_factor 1). Values are
    written as given; their ranges are the spec loader's to check (its message then names the
    key and the valid range)."""
    h = _int_arg("num_heads", num_heads)
    hkv = _int_arg("num_kv_heads", num_kv_heads)
    d = _int_arg("head_dim", head_dim)
    n = _int_arg("context_length", context_length)
    g = _int_arg("group_size", group_size)
    if shift_mode not in SHIFT_MODES:
        raise _invalid(f"shift_mode '{shift_mode}': valid {', '.join(SHIFT_MODES)}")
    if dtype not in DTYPE_NAMES:
        raise _invalid(f"dtype '{dtype}': valid {', '.join(DTYPE_NAMES)}")
    hidden = max(1, min(h * d, MAX_HIDDEN))
    lines = [
        f"name: attn-h{h}-kv{hkv}-d{d}",
        f"dtype: {dtype}",
        f"context_length: {n}",
        "model:",
        f"  hidden_size: {hidden}",
        f"  intermediate_size: {hidden}",
        "  num_layers: 1",
        f"  num_heads: {h}",
        f"  num_kv_heads: {hkv}",
        f"  head_dim: {d}",
        "  vocab_size: 256",
        f"  max_position_embeddings: {n}",
        "s2attn:",
        f"  group_size: {g}",
    ]
    if shift is not None:
        lines.append(f"  shift: {_int_arg('shift', shift)}")
    lines.append(f"  shift_mode: {shift_mode}")
    if softmax_scale is not None:
        lines.append(f"  softmax_scale: {yaml_number(softmax_scale, 'softmax_scale')}")
    return "\n".join(lines) + "\n"


def attention_call_yaml(*, num_heads, num_kv_heads, head_dim, max_seqlen, group_size,
                        shift=None, shift_mode="split", softmax_scale=None, dtype="bf16"):
    """The spec s2lora.attention composes for a call whose longest sequence has max_seqlen
    tokens: compose_attention_yaml with context_length = context_bucket(max_seqlen). One
    function, so that a check which hands the same spec to `s2lora attn`
    (bench/torch_check.py) composes the text the package does."""
    return compose_attention_yaml(
        num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
        context_length=context_bucket(max_seqlen), group_size=group_size, shift=shift,
        shift_mode=shift_mode, softmax_scale=softmax_scale, dtype=dtype)


def numbered(text):
    """Text with 1-based line numbers, for error messages that point into composed YAML."""
    return "\n".join(f"{i:4d} | {line}" for i, line in enumerate(text.splitlines(), 1))


# ----------------------------------------------------------------------------- masks

def mask_interface_refusal(*, q_length, kv_length, q_offset, kv_offset, plain_causal, padding):
    """Why transformers' mask for an s2lora call cannot be honoured (None: it is plain causal
    attention over the whole sequence, and the mask can be dropped). plain_causal: the mask
    function is transformers' causal one (not a sliding window, packed sequences, a
    bidirectional or an overlay mask); padding: the 2-D attention mask has zeros."""
    if not plain_causal:
        return ("the model asks for a mask other than plain causal (a sliding window, packed "
                "sequences told apart by position_ids, bidirectional attention or an overlay); "
                "s2lora's S²-Attn is causal inside groups of one sequence per batch row: use "
                "another attn_implementation for this model, or unpacked batches")
    if q_offset or kv_offset or q_length != kv_length:
        return (f"{q_length} queries against {kv_length} keys (offsets {q_offset}, {kv_offset}): "
                f"a KV cache (generation); s2lora attends a whole sequence to itself, as in "
                f"training and evaluation; generate with attn_implementation='sdpa'")
    if padding:
        return ("the attention_mask marks padding tokens; s2lora's S²-Attn takes batches without "
                "padding (pack sequences to the same length, as LongLoRA does, or pass one "
                "sequence a batch)")
    return None

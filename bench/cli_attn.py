"""What bench/torch_check.py needs to run `s2lora attn` on the tensors it gave s2lora.attention,
without torch or a GPU (python/tests/test_cli_attn.py checks it on the CPU):

  st_bytes, st_write, st_parse, st_read
            safetensors written and read by hand: an 8-byte little-endian header length, the
            JSON header (padded with spaces to a multiple of 8 bytes), then the tensors' raw
            little-endian bytes, packed without gaps, each at a multiple of its element size
            (the larger elements first). Tensors are {name: (dtype, shape, bytes)}.
  case_spec_yaml
            the spec of a check case, composed as s2lora.attention composes it for that call
            (s2lora._layout.attention_call_yaml), to hand to `s2lora attn` as a file.
  tile_arg, tile_value
            the tile text of s2lora_attn_tile ("TILE (WHY)") as `s2lora attn --tile` takes it.
  attn_argv, default_bin, cu_seqlens_of
            the command line, where the binary is by default, the varlen boundaries.
"""
import json
import os
import struct

# the safetensors dtypes s2lora's files use, and their element sizes
DTYPE_SIZES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "U8": 1, "I8": 1,
               "BOOL": 1}
MAX_HEADER = 100 * 1000 * 1000  # what the readers accept (runtime/core/st.c, Python's)


def _numel(shape):
    n = 1
    for x in shape:
        n *= x
    return n


def st_bytes(tensors, metadata=None):
    """The bytes of a safetensors file of tensors {name: (dtype, shape, data)}; metadata: a
    {str: str} for "__metadata__". A data length that does not match dtype and shape is refused
    (ValueError naming the tensor)."""
    entries = []
    for name, (dtype, shape, data) in tensors.items():
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise ValueError(f"tensor name {name!r}: need a non-empty string other than "
                             f"__metadata__")
        if dtype not in DTYPE_SIZES:
            raise ValueError(f"tensor '{name}': dtype {dtype!r}; valid: "
                             f"{', '.join(DTYPE_SIZES)}")
        shape = [int(x) for x in shape]
        if any(x < 0 for x in shape):
            raise ValueError(f"tensor '{name}': shape {shape} has a negative dimension")
        data = bytes(data)
        need = _numel(shape) * DTYPE_SIZES[dtype]
        if len(data) != need:
            raise ValueError(f"tensor '{name}': {dtype} {shape} needs {need} bytes, got "
                             f"{len(data)}")
        entries.append((name, dtype, shape, data))
    # the larger elements first: every tensor then starts at a multiple of its element size
    entries.sort(key=lambda e: (-DTYPE_SIZES[e[1]], e[0]))
    header, blobs, offset = {}, [], 0
    if metadata:
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise ValueError(f"metadata {k!r}: {v!r}: keys and values must be strings")
        header["__metadata__"] = dict(metadata)
    for name, dtype, shape, data in entries:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def st_write(path, tensors, metadata=None):
    """st_bytes written to path (through a temporary file in its directory, then renamed)."""
    data = st_bytes(tensors, metadata)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def st_parse(buf, where="<bytes>"):
    """(tensors {name: (dtype, shape tuple, bytes)}, metadata {str: str}) of a safetensors
    file's bytes; ValueError naming `where` and the tensor for anything malformed: a short
    file, a header over its length or not a JSON object, an unknown dtype, a shape or
    data_offsets that disagree or run past the data, tensors sharing bytes, data left over."""
    buf = bytes(buf)
    if len(buf) < 8:
        raise ValueError(f"{where}: {len(buf)} bytes, too short for a safetensors file (an "
                         f"8-byte header length first)")
    (n,) = struct.unpack("<Q", buf[:8])
    if n > MAX_HEADER or n > len(buf) - 8:
        raise ValueError(f"{where}: header length {n} runs past the file ({len(buf)} bytes) or "
                         f"the {MAX_HEADER}-byte limit")
    try:
        header = json.loads(buf[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{where}: the header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{where}: the header is a {type(header).__name__}, expected an object")
    data = buf[8 + n:]
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError(f"{where}: __metadata__ must be an object of strings")
    out, spans = {}, []
    for name, e in header.items():
        if not isinstance(e, dict):
            raise ValueError(f"{where}: tensor '{name}': entry is not an object")
        dtype, shape, offs = e.get("dtype"), e.get("shape"), e.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise ValueError(f"{where}: tensor '{name}': dtype {dtype!r}; valid: "
                             f"{', '.join(DTYPE_SIZES)}")
        if not isinstance(shape, list) or not all(type(x) is int and x >= 0 for x in shape):
            raise ValueError(f"{where}: tensor '{name}': shape {shape!r} is not a list of "
                             f"non-negative integers")
        if not (isinstance(offs, list) and len(offs) == 2 and
                all(type(x) is int for x in offs) and 0 <= offs[0] <= offs[1] <= len(data)):
            raise ValueError(f"{where}: tensor '{name}': data_offsets {offs!r} are not "
                             f"[begin, end] inside the {len(data)} data bytes")
        need = _numel(shape) * DTYPE_SIZES[dtype]
        if offs[1] - offs[0] != need:
            raise ValueError(f"{where}: tensor '{name}': {dtype} {shape} needs {need} bytes, "
                             f"data_offsets {offs} give {offs[1] - offs[0]}")
        if need:
            spans.append((offs[0], offs[1], name))
        out[name] = (dtype, tuple(shape), data[offs[0]:offs[1]])
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ValueError(f"{where}: tensors '{n0}' {[b0, e0]} and '{n1}' {[b1, e1]} share "
                             f"bytes")
    end = max((e for _, e, _ in spans), default=0)
    if end != len(data):
        raise ValueError(f"{where}: the tensors' data ends at {end}, the file has {len(data)} "
                         f"data bytes")
    return out, meta


def st_read(path):
    with open(path, "rb") as f:
        return st_parse(f.read(), path)


def cu_seqlens_of(lens):
    """("I32", (B + 1,), bytes) of the boundaries 0, l0, l0 + l1, ... of sequences lens."""
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + int(n))
    return "I32", (len(cu),), struct.pack(f"<{len(cu)}i", *cu)


def case_spec_yaml(case):
    """The spec s2lora.attention composes for a torch_check case (name, B or None, seqlens, H,
    Hkv, d, G, S or None, mode, scale or None, dtype): the longest sequence is max(seqlens)
    (B equal sequences of a [B, S, H, d] call, or those of cu_seqlens); S and scale go in as
    the call gives them (None: the spec's defaults, G / 2 and 1 / sqrt(d))."""
    from s2lora._layout import attention_call_yaml
    _, _, lens, h, hkv, d, g, s, mode, scale, dt = case
    return attention_call_yaml(num_heads=h, num_kv_heads=hkv, head_dim=d, max_seqlen=max(lens),
                               group_size=g, shift=s, shift_mode=mode, softmax_scale=scale,
                               dtype=dt)


def tile_arg(text):
    """The tile of s2lora_attn_tile's "TILE (WHY)" ("fwd_warps=4,...,bwd_mbar=0 (default)") as
    `--tile` takes it: TILE, each item key=integer. ValueError for any other text."""
    tile = text.split(" (", 1)[0]
    items = tile.split(",") if tile else []
    ok = bool(items) and all(
        len(kv.split("=")) == 2 and kv.split("=")[0].isidentifier() and
        kv.split("=")[1].lstrip("-").isdigit() for kv in items)
    if not ok:
        raise ValueError(f"tile text {text!r}: expected 'key=value,... (why)' as "
                         f"s2lora_attn_tile gives it")
    return tile


def tile_value(tile, key):
    """The integer of key in "key=value,..." text; None when absent."""
    for kv in tile.split(","):
        k, _, v = kv.partition("=")
        if k == key:
            return int(v)
    return None


def default_bin(lib_path):
    """The s2lora binary beside libs2lora.so (build/ and the carried bin/ hold both)."""
    return os.path.join(os.path.dirname(os.path.abspath(lib_path)), "s2lora")


def attn_argv(binary, spec_path, in_path, out_path, tile, backward=True):
    """`s2lora attn SPEC --in IN --out OUT --tile TILE [--backward]`."""
    argv = [binary, "attn", spec_path, "--in", in_path, "--out", out_path, "--tile", tile]
    return argv + (["--backward"] if backward else [])

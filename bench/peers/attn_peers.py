#!/usr/bin/env python3
"""The PyTorch peers of `s2lora bench attn`, timed on the inputs s2lora was timed on.

`s2lora bench attn` writes q [N,H,d], k/v [N,Hkv,d], do [N,H,d] and its own o [N,H,d] (bf16 or
fp16) to a safetensors file and runs this script on it. Peers, as in
/work/shared/peers/h100-2026-11-25.md:

  sdpa-cudnn, sdpa-flash  LongLoRA's roll path in PyTorch: roll heads H/2.. by -S along the
                          sequence, fold the sequence into N/G groups,
                          scaled_dot_product_attention(is_causal=True) under
                          sdpa_kernel(CUDNN_ATTENTION | FLASH_ATTENTION), unfold, roll back. GQA
                          expands k/v with repeat_interleave (LongLoRA's repeat_kv) inside the
                          timed region. Needs N % G == 0 (LongLoRA's fold); skipped otherwise.
                          Computes the roll semantics.
  flex-split, flex-roll   torch.compile(flex_attention) with a BlockMask from
                          create_block_mask(mask_mod, B=None, H=H, Q_LEN=N, KV_LEN=N) whose mask_mod
                          is DESIGN.md section 1 for that shift mode; enable_gqa for GQA.

Per peer: fwd_ms (the training forward: inputs require grad, so the graph is built), fb_ms (the
forward and o.backward(do), i.e. the backward of sum(o * do), in one timed region; grads set to
None before each run so nothing accumulates), each the median of CUDA-event times after warm-up
runs (which also compile flex); peak_gib: torch.cuda.max_memory_allocated during one fwd+bwd, with
the stats reset and the inputs allocated afterwards, less what was allocated before the inputs (the
block mask, built once per model, is not counted; its size is in the note); rel_err: relative L2
error of the peer's o against s2lora's in fp32, only for peers that compute s2lora's shift mode
(--mode), else null.

Writes {"peers": [{"impl", "mode", "fwd_ms", "fb_ms", "peak_gib", "rel_err", "note"}], "torch",
"device"} to --out. Each peer runs in its own try/except: a failure is a row with a note. Progress
goes to stderr; stdout gets one summary line at the end. Exit status: 0, 2 for bad arguments, 1
for unreadable inputs, 3 when torch or a CUDA device is missing (s2lora then runs without peers).
"""
import argparse
import json
import math
import os
import statistics
import struct
import sys

PEERS = ("sdpa-cudnn", "sdpa-flash", "flex-split", "flex-roll")
EXIT_UNAVAILABLE = 3
GIB = float(1 << 30)


def log(msg):
    print(f"attn_peers: {msg}", file=sys.stderr, flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--in", dest="inp", required=True, help="safetensors with q, k, v, do, o")
    p.add_argument("--out", required=True, help="results JSON")
    p.add_argument("--G", type=int, required=True, help="group size")
    p.add_argument("--S", type=int, required=True, help="shift of heads H/2..")
    p.add_argument("--mode", choices=("split", "roll"), required=True, help="s2lora's shift mode")
    p.add_argument("--scale", type=float, default=None, help="softmax scale (default 1/sqrt(d))")
    p.add_argument("--reps", type=int, default=20, help="timed forward runs")
    p.add_argument("--reps-fb", type=int, default=10, help="timed forward+backward runs")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs before each timing")
    p.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of " + ", ".join(PEERS))
    a = p.parse_args(argv)
    a.peers = [x for x in a.peers.split(",") if x]
    bad = [x for x in a.peers if x not in PEERS]
    if bad:
        p.error(f"unknown peer(s) {', '.join(bad)}; valid: {', '.join(PEERS)}")
    if a.G < 1 or not 0 <= a.S < a.G or a.reps < 1 or a.reps_fb < 1 or a.warmup < 0:
        p.error("need G >= 1, 0 <= S < G, reps >= 1, reps-fb >= 1, warmup >= 0")
    return a


def read_safetensors(path, torch):
    """A small reader (no safetensors package needed): header length, JSON header, data.

    The file is read once into one buffer that the tensors view (no second copy: at N = 100k
    the inputs are gigabytes)."""
    dtypes = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
    buf = bytearray(os.path.getsize(path))  # torch.frombuffer wants a writable buffer
    with open(path, "rb") as f:
        if f.readinto(buf) != len(buf):
            raise OSError(f"{path}: short read")
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(bytes(buf[8:8 + n]))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in dtypes:
            raise ValueError(f"{path}: tensor '{name}' has dtype {info['dtype']}")
        b, e = info["data_offsets"]
        dt = dtypes[info["dtype"]]
        count = (e - b) // torch.empty((), dtype=dt).element_size()
        if count == 0:
            out[name] = torch.empty(info["shape"], dtype=dt)
            continue
        # frombuffer keeps buf alive for as long as the tensor lives.
        out[name] = torch.frombuffer(buf, dtype=dt, count=count, offset=base + b).view(info["shape"])
    return out


# ----------------------------------------------------------------------------- peers

def make_sdpa(backend, N, H, Hkv, d, G, S, scale):
    """LongLoRA's roll / fold on SDPA; [N, H, d] in, [N, H, d] out."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if N % G:
        raise SkipPeer(f"N={N} is not a multiple of G={G}: LongLoRA's fold needs N % G == 0")
    be = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}[backend]
    rep, Hh = H // Hkv, H // 2

    def shift(x):  # [N, H, d] -> [N/G, H, G, d]
        x = torch.cat((x[:, :Hh], x[:, Hh:].roll(-S, dims=0)), dim=1)
        return x.view(N // G, G, H, d).transpose(1, 2)

    def fn(q, k, v):
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        with sdpa_kernel(be):
            o = F.scaled_dot_product_attention(shift(q), shift(k), shift(v), is_causal=True,
                                               scale=scale)
        o = o.transpose(1, 2).reshape(N, H, d)
        return torch.cat((o[:, :Hh], o[:, Hh:].roll(S, dims=0)), dim=1)

    return fn, "roll", ""


_flex_compiled = None


def make_flex(mode, N, H, Hkv, d, G, S, scale):
    """flex_attention with the S² mask of DESIGN.md section 1; [N, H, d] in and out."""
    global _flex_compiled
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    Hh = H // 2

    def mask_mod(b, h, q_idx, kv_idx):
        plain = (q_idx // G == kv_idx // G) & (kv_idx <= q_idx)
        if mode == "split":
            shifted = ((q_idx + S) // G == (kv_idx + S) // G) & (kv_idx <= q_idx)
        else:  # roll: the rolled order r = (p - S) mod N, groups and causality in it
            rq, rk = (q_idx - S + N) % N, (kv_idx - S + N) % N
            shifted = (rq // G == rk // G) & (rk <= rq)
        return torch.where(h < Hh, plain, shifted)

    try:
        bm = create_block_mask(mask_mod, B=None, H=H, Q_LEN=N, KV_LEN=N, device="cuda",
                               _compile=True)
    except TypeError:  # a release without _compile: compile the builder instead
        bm = torch.compile(create_block_mask)(mask_mod, B=None, H=H, Q_LEN=N, KV_LEN=N,
                                              device="cuda")
    if _flex_compiled is None:
        _flex_compiled = torch.compile(flex_attention, dynamic=False)
    flex, gqa = _flex_compiled, Hkv != H

    def fn(q, k, v):
        # [N, H, d] -> [1, H, N, d] views: the layout a QKV projection writes, no copies.
        o = flex(q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0),
                 v.transpose(0, 1).unsqueeze(0), block_mask=bm, scale=scale, enable_gqa=gqa)
        return o[0].transpose(0, 1)

    mask_bytes = sum(t.numel() * t.element_size() for t in _tensors_of(bm))
    return fn, mode, f"block mask {mask_bytes / 2**20:.1f} MiB not counted in peak"


def _tensors_of(bm):
    import torch

    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices",
                 "q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices"):
        t = getattr(bm, name, None)
        if isinstance(t, torch.Tensor):
            yield t


class SkipPeer(Exception):
    pass


def make_peer(name, N, H, Hkv, d, G, S, scale):
    if name.startswith("sdpa-"):
        return make_sdpa(name[5:], N, H, Hkv, d, G, S, scale)
    return make_flex(name[5:], N, H, Hkv, d, G, S, scale)


# ----------------------------------------------------------------------------- measuring

def leaves(cpu, torch):
    """Fresh inputs on the GPU: q, k, v leaves that require grad, and do."""
    q, k, v = (cpu[n].cuda().requires_grad_() for n in ("q", "k", "v"))
    return q, k, v, cpu["do"].cuda()


def fwd_bwd(fn, q, k, v, do):
    q.grad = k.grad = v.grad = None
    fn(q, k, v).backward(do)


def time_ms(torch, f, warmup, reps):
    for _ in range(warmup):
        f()
    torch.cuda.synchronize()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
          for _ in range(reps)]
    for a, b in ev:
        a.record()
        f()
        b.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in ev)


def peak_gib(torch, fn, cpu):
    """max_memory_allocated over one fwd+bwd, less what was held before the inputs."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    q, k, v, do = leaves(cpu, torch)
    fwd_bwd(fn, q, k, v, do)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del q, k, v, do
    return peak / GIB


def rel_l2(torch, got, ref):
    got, ref = got.float(), ref.float()
    if not torch.isfinite(got).all():
        return None, "the peer's o has inf/NaN"
    if not torch.isfinite(ref).all():
        return None, "s2lora's o has inf/NaN"
    den = ref.norm().item()
    num = (got - ref).norm().item()
    return (num / den if den > 0 else num), ""


def time_peer(torch, fn, cpu, a):
    """(fwd ms, fwd+bwd ms, o) on fresh inputs, freed on return."""
    q, k, v, do = leaves(cpu, torch)
    for _ in range(max(a.warmup, 1)):  # at least one: it compiles flex
        fwd_bwd(fn, q, k, v, do)
    fwd = time_ms(torch, lambda: fn(q, k, v), a.warmup, a.reps)
    fb = time_ms(torch, lambda: fwd_bwd(fn, q, k, v, do), a.warmup, a.reps_fb)
    return fwd, fb, fn(q, k, v).detach()


def bench_peer(torch, name, cpu, a, shapes):
    N, H, Hkv, d = shapes
    row = {"impl": name, "mode": "roll" if name.startswith("sdpa-") else name[5:],
           "fwd_ms": None, "fb_ms": None, "peak_gib": None, "rel_err": None, "note": ""}
    notes = []
    try:
        fn, row["mode"], note = make_peer(name, N, H, Hkv, d, a.G, a.S, a.scale)
        notes.append(note)
        row["fwd_ms"], row["fb_ms"], o = time_peer(torch, fn, cpu, a)
        if row["mode"] == a.mode:
            ref = cpu["o"].cuda()
            row["rel_err"], why = rel_l2(torch, o, ref)
            notes.append(why)
            del ref
        else:
            notes.append(f"{row['mode']} semantics, s2lora ran {a.mode}: o not compared")
        del o
        row["peak_gib"] = peak_gib(torch, fn, cpu)
    except SkipPeer as e:
        notes.append(f"skipped: {e}")
    except Exception as e:  # a failing peer is a row, not the end of the run
        first = (str(e).strip().splitlines() or [""])[0][:240]
        notes.append(f"failed: {type(e).__name__}: {first}")
        log(f"{name}: {type(e).__name__}: {e}")
    finally:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    row["note"] = "; ".join(n for n in notes if n)
    return row


def write_json(path, obj):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def finite_or_none(x):
    return x if isinstance(x, float) and math.isfinite(x) else None


def main(argv):
    a = parse_args(argv)
    try:
        import torch
    except ImportError as e:
        log(f"torch is not installed ({e})")
        return EXIT_UNAVAILABLE
    if not torch.cuda.is_available():
        log("torch sees no CUDA device")
        return EXIT_UNAVAILABLE
    try:
        cpu = read_safetensors(a.inp, torch)
        N, H, d = cpu["q"].shape
        Hkv = cpu["k"].shape[1]
        for n, shape in (("k", (N, Hkv, d)), ("v", (N, Hkv, d)), ("do", (N, H, d)), ("o", (N, H, d))):
            if tuple(cpu[n].shape) != shape:
                raise ValueError(f"tensor '{n}' has shape {tuple(cpu[n].shape)}; expected {shape}")
    except (OSError, ValueError, KeyError) as e:
        log(f"{a.inp}: {type(e).__name__}: {e}")
        return 1
    if a.scale is None:
        a.scale = 1.0 / math.sqrt(d)
    log(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: N={N} H={H} Hkv={Hkv} d={d} "
        f"G={a.G} S={a.S} {cpu['q'].dtype}")
    rows = []
    for name in a.peers:
        log(f"{name} ...")
        r = bench_peer(torch, name, cpu, a, (N, H, Hkv, d))
        for key in ("fwd_ms", "fb_ms", "peak_gib", "rel_err"):
            r[key] = finite_or_none(r[key])
        log(f"{name}: fwd {r['fwd_ms']} ms, fwd+bwd {r['fb_ms']} ms, peak {r['peak_gib']} GiB, "
            f"rel_err {r['rel_err']} {r['note']}")
        rows.append(r)
    write_json(a.out, {"peers": rows, "torch": torch.__version__,
                       "device": torch.cuda.get_device_name()})
    done = ", ".join(f"{r['impl']} {r['fb_ms']:.3f} ms" for r in rows if r["fb_ms"] is not None)
    print(f"attn_peers: N={N} G={a.G} S={a.S} fwd+bwd: {done or 'no peer ran'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

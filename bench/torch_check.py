#!/usr/bin/env python3
"""The Python package on the GPU: s2lora.attention and attn_implementation="s2lora" checked and
timed against PyTorch.

  ref    the float64 reference of S²-Attn (DESIGN.md section 1, a dense mask) against two
         formulations that share no code with it: the groups of split mode as segments, each
         causal SDPA; roll mode as LongLoRA's roll / fold. Needs no library.
  attn   s2lora.attention, forward and backward, against the float64 reference: split and
         roll, a short last group, G >= N, a custom shift and scale, GQA, [B, S, H, d] batches,
         varlen (cu_seqlens), fp16, head dims 64, 96, 128, 256 (relative L2 error below 1e-2,
         DESIGN.md section 3); then what must be refused (strides, dtype, heads).
  sdpa   the same cases through SDPA with the equivalent boolean mask, bf16: s2lora against it,
         and each against float64.
  cli    s2lora.attention against the s2lora binary's `s2lora attn` (--bin, default beside the
         library) on the same tensors, bf16, forward and backward: a fixed-length split case,
         varlen split, varlen GQA roll and a custom shift and scale. The same spec text (as the
         package composes it) and the Python handle's tile (--tile), so both run the same
         generated kernels: o, lse, dq, dk, dv must be equal bit for bit. A missing binary is a
         FAIL unless --no-cli.
  hf     transformers + PEFT (LLaMA 7B shape cut to 4 layers, random init, LoRA r 8 on q, k, v,
         o): one training step with attn_implementation="s2lora" in roll mode against LongLoRA's
         roll / fold patch on SDPA (and FlexAttention with the S² block mask against the same):
         loss and every LoRA gradient; then eval mode (full causal attention) against "sdpa".
  speed  tokens/s of that training step (forward, backward, AdamW; gradient checkpointing as
         LongLoRA trains) at --seqlens: s2lora (roll and split), the roll / fold patch, and
         compiled FlexAttention with the S² block mask; medians of CUDA-event times after
         warm-up, and peak memory.

usage: torch_check.py [--lib build/libs2lora.so] [--bin build/s2lora | --no-cli] [--json OUT.json]
                      [--sections ref,attn,sdpa,cli,hf,speed] [--seqlens 8192,32768]
                      [--steps 5] [--warmup 2] [--layers 4]
Prints PASS/FAIL lines and a speed table; exits 1 on any failure (a library that does not
load is one: the sections that need it fail, the rest still run).
"""
import argparse
import ctypes
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

DEVICE = "cuda"
RESULTS = {"checks": [], "speed": []}
FAILS = []


def record(name, ok, detail=""):
    RESULTS["checks"].append({"name": name, "pass": bool(ok), "detail": detail})
    print(f"{'PASS' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}", flush=True)
    if not ok:
        FAILS.append(name)


def rel_l2(got, ref):
    got, ref = got.double(), ref.double()
    if not bool(got.isfinite().all()):
        return float("inf")
    den = ref.norm().item()
    return (got - ref).norm().item() / (den if den > 0 else 1.0)


# ----------------------------------------------------------------------------- reference

def visible(torch, n, g, s, mode, shifted, device):
    """[n, n] bool: query p sees key p' (DESIGN.md section 1), one sequence of n tokens."""
    p = torch.arange(n, device=device)
    qp, kp = p[:, None], p[None, :]
    if not shifted:
        return (qp // g == kp // g) & (kp <= qp)
    if mode == "split":
        return ((qp + s) // g == (kp + s) // g) & (kp <= qp)
    rq, rk = (qp - s) % n, (kp - s) % n
    return (rq // g == rk // g) & (rk <= rq)


def head_masks(torch, n, h, g, s, mode, device):
    """[h, n, n]: heads < h/2 plain, the rest shifted."""
    plain = visible(torch, n, g, s, mode, False, device)
    shifted = visible(torch, n, g, s, mode, True, device)
    return torch.stack([plain if i < h // 2 else shifted for i in range(h)])


def reference(torch, q, k, v, g, s, mode, scale, seqlens):
    """float64 S²-Attn of [T, H, d] tensors holding sequences of the given lengths."""
    h, hkv = q.shape[1], k.shape[1]
    outs, t0 = [], 0
    for n in seqlens:
        qs, ks, vs = (x[t0:t0 + n].double().transpose(0, 1) for x in (q, k, v))
        ks, vs = ks.repeat_interleave(h // hkv, 0), vs.repeat_interleave(h // hkv, 0)
        scores = (qs @ ks.transpose(1, 2)) * scale
        scores = scores.masked_fill(~head_masks(torch, n, h, g, s, mode, q.device), float("-inf"))
        outs.append((scores.softmax(-1) @ vs).transpose(0, 1))
        t0 += n
    return torch.cat(outs)


def split_by_segments(torch, F, q, k, v, g, s, scale):
    """Split mode without the mask: plain heads in segments [iG, (i+1)G), shifted heads in
    [0, G-S), [G-S, 2G-S), ...; each segment causal SDPA (float64, math)."""
    n, h, _ = q.shape
    out = torch.empty_like(q, dtype=torch.float64)
    for heads, first in ((slice(0, h // 2), g), (slice(h // 2, h), g - s if s else g)):
        starts = [0] + list(range(first, n, g))
        for a, b in zip(starts, starts[1:] + [n]):
            if a >= b:
                continue
            x = [t[a:b, heads].double().transpose(0, 1) for t in (q, k, v)]
            o = F.scaled_dot_product_attention(*x, is_causal=True, scale=scale)
            out[a:b, heads] = o.transpose(0, 1)
    return out


def roll_fold(torch, F, q, k, v, g, s, scale):
    """LongLoRA's roll / fold on [B, H, N, d] (k, v with H heads): shifted heads rolled by -S,
    the sequence folded into N/G groups, causal SDPA, unfolded, rolled back; [B, N, H, d] out."""
    b, h, n, d = q.shape

    def fold(x):
        x = torch.cat([x[:, : h // 2], x[:, h // 2:].roll(-s, dims=2)], dim=1)
        return x.reshape(b, h, n // g, g, d).transpose(1, 2).reshape(b * (n // g), h, g, d)

    o = F.scaled_dot_product_attention(fold(q), fold(k), fold(v), is_causal=True, scale=scale)
    o = o.reshape(b, n // g, h, g, d).transpose(1, 2).reshape(b, h, n, d)
    o = torch.cat([o[:, : h // 2], o[:, h // 2:].roll(s, dims=2)], dim=1)
    return o.transpose(1, 2)


def section_ref(torch, F):
    torch.manual_seed(0)
    dev = DEVICE
    for n, h, d, g, s in ((1000, 4, 64, 256, 128), (1024, 4, 64, 256, 100), (300, 2, 64, 512, 0)):
        q, k, v = (torch.randn(n, h, d, device=dev, dtype=torch.float64) for _ in range(3))
        scale = d ** -0.5
        err = rel_l2(reference(torch, q, k, v, g, s, "split", scale, [n]),
                     split_by_segments(torch, F, q, k, v, g, s, scale))
        record(f"ref split N={n} G={g} S={s} vs segments", err < 1e-12, f"{err:.1e}")
    for n, h, d, g, s in ((1024, 4, 64, 256, 128), (1024, 4, 64, 128, 32)):
        q, k, v = (torch.randn(n, h, d, device=dev, dtype=torch.float64) for _ in range(3))
        scale = d ** -0.5
        rf = roll_fold(torch, F, *(x.transpose(0, 1)[None] for x in (q, k, v)), g, s, scale)[0]
        err = rel_l2(reference(torch, q, k, v, g, s, "roll", scale, [n]), rf)
        record(f"ref roll N={n} G={g} S={s} vs roll/fold", err < 1e-12, f"{err:.1e}")


# ----------------------------------------------------------------------------- attn, sdpa

# name, (B or None for [T, H, d]), seqlens, H, Hkv, d, G, S (None: G/2), mode, scale, dtype
CASES = [
    ("split", None, [1024], 8, 8, 128, 256, None, "split", None, "bf16"),
    ("roll", None, [1024], 8, 8, 128, 256, None, "roll", None, "bf16"),
    ("short-last-group-split", None, [1000], 8, 8, 128, 256, None, "split", None, "bf16"),
    ("short-last-group-roll", None, [1000], 8, 8, 128, 256, None, "roll", None, "bf16"),
    ("full-causal", None, [1024], 4, 4, 128, 1024, 0, "split", None, "bf16"),
    ("shift-scale-roll", None, [512], 4, 4, 64, 128, 32, "roll", 0.1, "bf16"),
    ("gqa-batch", 2, [512, 512], 8, 2, 64, 128, None, "split", None, "bf16"),
    ("varlen-split", None, [300, 700, 24, 576], 4, 4, 128, 128, None, "split", None, "bf16"),
    ("varlen-roll-gqa", None, [300, 700, 24, 576], 4, 2, 128, 128, None, "roll", None, "bf16"),
    ("fp16", None, [768], 4, 4, 128, 256, None, "split", None, "fp16"),
    ("d256", None, [512], 2, 2, 256, 128, None, "split", None, "bf16"),
    ("d96", None, [512], 4, 4, 96, 128, None, "split", None, "bf16"),
]


def make_inputs(torch, case, seed):
    name, b, lens, h, hkv, d, g, s, mode, scale, dt = case
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dt]
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    t = sum(lens)
    shape_q = (b, t // b, h, d) if b else (t, h, d)
    shape_k = (b, t // b, hkv, d) if b else (t, hkv, d)
    q = torch.randn(shape_q, generator=gen, device=DEVICE).to(dtype).requires_grad_()
    k = torch.randn(shape_k, generator=gen, device=DEVICE).to(dtype).requires_grad_()
    v = torch.randn(shape_k, generator=gen, device=DEVICE).to(dtype).requires_grad_()
    do = torch.randn(shape_q, generator=gen, device=DEVICE).to(dtype)
    cu = None
    if not b and len(lens) > 1:
        cu = torch.tensor([0] + list(__import__("itertools").accumulate(lens)),
                          dtype=torch.int32, device=DEVICE)
    return q, k, v, do, cu


def flat(x):
    return x.reshape(-1, x.shape[-2], x.shape[-1])


def grads_of(q, k, v):
    return [x.grad.detach().clone() for x in (q, k, v)]


def run_s2lora(s2lora, case, q, k, v, do, cu):
    _, b, lens, h, hkv, d, g, s, mode, scale, dt = case
    for x in (q, k, v):
        x.grad = None
    o = s2lora.attention(q, k, v, group_size=g, shift=s, shift_mode=mode, cu_seqlens=cu,
                         max_seqlen=max(lens) if cu is not None else None, softmax_scale=scale)
    o.backward(do)
    return [o.detach().clone()] + grads_of(q, k, v)


def run_reference(torch, case, q, k, v, do):
    _, b, lens, h, hkv, d, g, s, mode, scale, dt = case
    s = g // 2 if s is None else s
    scale = d ** -0.5 if scale is None else scale
    x = [flat(t.detach()).double().requires_grad_() for t in (q, k, v)]
    o = reference(torch, *x, g, s, mode, scale, lens)
    o.backward(flat(do).double())
    return [o.detach()] + [t.grad for t in x]


def run_sdpa(torch, F, case, q, k, v, do):
    """SDPA with the boolean mask, in the inputs' dtype, per sequence."""
    _, b, lens, h, hkv, d, g, s, mode, scale, dt = case
    s = g // 2 if s is None else s
    scale = d ** -0.5 if scale is None else scale
    x = [flat(t.detach()).clone().requires_grad_() for t in (q, k, v)]
    outs, t0 = [], 0
    for n in lens:
        qs, ks, vs = (t[t0:t0 + n].transpose(0, 1)[None] for t in x)
        m = head_masks(torch, n, h, g, s, mode, q.device)[None]
        o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=m, scale=scale,
                                           enable_gqa=hkv != h)
        outs.append(o[0].transpose(0, 1))
        t0 += n
    o = torch.cat(outs)
    o.backward(flat(do))
    return [o.detach()] + [t.grad for t in x]


def section_attn(torch, F, s2lora, with_sdpa):
    names = ("o", "dq", "dk", "dv")
    for i, case in enumerate(CASES):
        name = case[0]
        q, k, v, do, cu = make_inputs(torch, case, 100 + i)
        try:
            ours = run_s2lora(s2lora, case, q, k, v, do, cu)
        except Exception as e:  # noqa: BLE001  (a failure is a FAIL line, then the next case)
            record(f"attn {name}", False, f"{type(e).__name__}: {e}")
            continue
        ref = run_reference(torch, case, q, k, v, do)
        errs = [rel_l2(flat(a), r) for a, r in zip(ours, ref)]
        worst = max(errs)
        record(f"attn {name} vs float64", worst < 1e-2,
               ", ".join(f"{n} {e:.1e}" for n, e in zip(names, errs)))
        if with_sdpa:
            sd = run_sdpa(torch, F, case, q, k, v, do)
            vs_sdpa = [rel_l2(flat(a), b) for a, b in zip(ours, sd)]
            sd_ref = [rel_l2(a, r) for a, r in zip(sd, ref)]
            record(f"sdpa {name}: s2lora vs SDPA(bool mask)", max(vs_sdpa) < 2e-2,
                   ", ".join(f"{n} {e:.1e}" for n, e in zip(names, vs_sdpa)) +
                   "; SDPA vs float64 " + ", ".join(f"{n} {e:.1e}" for n, e in zip(names, sd_ref)))
    refusals(torch, s2lora)


def refusals(torch, s2lora):
    from s2lora import hf
    dev = DEVICE
    base = torch.randn(256, 4, 256, device=dev, dtype=torch.bfloat16)
    k = torch.randn(256, 4, 128, device=dev, dtype=torch.bfloat16)
    expect = [
        ("a strided q (a slice of a wider buffer)", lambda: s2lora.attention(
            base[..., :128], k, k, group_size=64), "q"),
        ("float32 inputs", lambda: s2lora.attention(k.float(), k.float(), k.float(),
                                                    group_size=64), "float32"),
        ("kv heads not dividing heads", lambda: s2lora.attention(
            torch.randn(256, 4, 128, device=dev, dtype=torch.bfloat16),
            torch.randn(256, 3, 128, device=dev, dtype=torch.bfloat16),
            torch.randn(256, 3, 128, device=dev, dtype=torch.bfloat16), group_size=64),
         "divide"),
        ("an expanded k", lambda: s2lora.attention(k, k[:1].expand(256, 4, 128), k,
                                                   group_size=64), "expanded"),
    ]
    for what, fn, needle in expect:
        try:
            fn()
            record(f"attn refuses {what}", False, "no error raised")
        except ValueError as e:
            record(f"attn refuses {what}", needle in str(e), str(e).splitlines()[0][:200])
        except Exception as e:  # noqa: BLE001
            record(f"attn refuses {what}", False, f"{type(e).__name__} instead of ValueError: {e}")
    # transformers' layout: q_proj(x).view(B, S, H, d).transpose(1, 2) goes in without a copy
    x = torch.randn(2, 300, 8, 64, device=dev, dtype=torch.bfloat16).transpose(1, 2)
    before = dict(hf.COPIES)
    y = hf.as_bshd("q", x)
    record("hf view [B,H,S,d] of [B,S,H,d] needs no copy",
           y.data_ptr() == x.data_ptr() and hf.COPIES == before)


# ----------------------------------------------------------------------------- cli

# The CASES `s2lora attn` runs too: fixed-length split, varlen split, varlen GQA roll, a custom
# shift and scale (small, bf16; the attn section has built their kernels already).
CLI_CASES = ("split", "varlen-split", "varlen-roll-gqa", "shift-scale-roll")


def st_tensor(torch, t):
    """(dtype, shape, bytes) of a tensor for cli_attn.st_write."""
    t = t.detach().contiguous().cpu()
    name = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32",
            torch.int32: "I32"}[t.dtype]
    return name, tuple(t.shape), ctypes.string_at(t.data_ptr(), t.numel() * t.element_size())


def st_torch(torch, entry):
    dtype, shape, data = entry
    dt = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32,
          "I32": torch.int32}[dtype]
    return torch.frombuffer(bytearray(data), dtype=dt).reshape(shape).to(DEVICE)


def python_side(torch, s2lora, case, q, k, v, do, cu):
    """s2lora.attention's o, lse, dq, dk, dv and its handle's tile text. The LSE is the one the
    forward saved for the backward (S2AttnFunction.save_for_backward(q, k, v, o, lse, ...))."""
    from s2lora._layout import attention_call_yaml
    from s2lora._torch import attention_handle
    _, b, lens, h, hkv, d, g, s, mode, scale, dt = case
    for x in (q, k, v):
        x.grad = None
    o = s2lora.attention(q, k, v, group_size=g, shift=s, shift_mode=mode, cu_seqlens=cu,
                         max_seqlen=max(lens) if cu is not None else None, softmax_scale=scale)
    saved = o.grad_fn.saved_tensors
    lse = saved[4] if len(saved) > 4 else None
    if lse is None or tuple(lse.shape) != (h, q.shape[0]) or lse.dtype != torch.float32:
        raise RuntimeError(f"the forward's saved tensors hold no LSE [{h}, {q.shape[0]}] "
                           f"float32 at index 4 (S2AttnFunction changed?)")
    lse = lse.detach().clone()
    o.backward(do)
    text = attention_call_yaml(num_heads=h, num_kv_heads=hkv, head_dim=d, max_seqlen=max(lens),
                               group_size=g, shift=s, shift_mode=mode, softmax_scale=scale,
                               dtype=dt)
    a = attention_handle(q.device.index if q.device.index is not None
                         else torch.cuda.current_device(), text)  # the call's, cached
    with a.ctx.lock:
        tile = a.ctx.lib.s2lora_attn_tile(a.handle).decode()
    out = {"o": o.detach().clone(), "lse": lse}
    out.update(zip(("dq", "dk", "dv"), grads_of(q, k, v)))
    return out, tile


def section_cli(torch, s2lora, binary):
    """s2lora.attention against `s2lora attn` on the same inputs. Equality is expected bit for
    bit: both compose the same spec (cli_attn.case_spec_yaml is the package's composition), so
    NVRTC compiles the same generated kernels; the CLI is given the Python handle's tile
    (--tile), so both launch them with the same tile, grid and order; the forward and the
    backward (separate dQ and dK/dV kernels, no atomics) are deterministic. Only a tile with
    bwd_atomic_dq=1 (a tuned one may have it) adds dQ atomically in fp32, in an order that
    varies run to run: then dq is held to a relative L2 error below 1e-3 and the line says so."""
    import cli_attn
    if not os.path.isfile(binary) or not os.access(binary, os.X_OK):
        record("cli s2lora binary", False,
               f"{binary} is not an executable file: give --bin PATH/s2lora (built beside "
               f"libs2lora.so), or --no-cli to leave the comparison with the CLI out")
        return
    index = {c[0]: i for i, c in enumerate(CASES)}
    with tempfile.TemporaryDirectory(prefix="s2lora-cli-check-") as tmp:
        for name in CLI_CASES:
            i = index[name]
            case = CASES[i]
            _, b, lens, h, hkv, d, g, s, mode, scale, dt = case
            q, k, v, do, cu = make_inputs(torch, case, 100 + i)
            try:
                ours, tile_text = python_side(torch, s2lora, case, q, k, v, do, cu)
                tile = cli_attn.tile_arg(tile_text)
            except Exception as e:  # noqa: BLE001
                record(f"cli {name}", False, f"{type(e).__name__}: {e}")
                continue
            spec_path = os.path.join(tmp, f"{name}.yaml")
            in_path, out_path = (os.path.join(tmp, f"{name}.{x}.safetensors")
                                 for x in ("in", "out"))
            with open(spec_path, "w") as f:
                f.write(cli_attn.case_spec_yaml(case))
            tensors = {n: st_tensor(torch, flat(t)) for n, t in
                       (("q", q), ("k", k), ("v", v), ("do", do))}
            if cu is not None:
                tensors["cu_seqlens"] = cli_attn.cu_seqlens_of(lens)
            cli_attn.st_write(in_path, tensors)
            argv = cli_attn.attn_argv(binary, spec_path, in_path, out_path, tile)
            p = subprocess.run(argv, capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                record(f"cli {name}", False, f"exit {p.returncode}: {' '.join(argv)}: "
                       f"{p.stderr.strip()[-600:]}")
                continue
            try:
                got, _ = cli_attn.st_read(out_path)
            except (OSError, ValueError) as e:
                record(f"cli {name}", False, f"reading the output: {e}")
                continue
            atomic = cli_attn.tile_value(tile, "bwd_atomic_dq") == 1
            parts, ok = [], True
            for n in ("o", "lse", "dq", "dk", "dv"):
                mine = ours[n] if n == "lse" else flat(ours[n])
                if n not in got:
                    parts.append(f"{n} missing from the output")
                    ok = False
                    continue
                theirs = st_torch(torch, got[n])
                if theirs.shape != mine.shape or theirs.dtype != mine.dtype:
                    parts.append(f"{n} {got[n][0]} {list(theirs.shape)}, the Python "
                                 f"{mine.dtype} {list(mine.shape)}")
                    ok = False
                    continue
                diff = (theirs.float() - mine.float()).abs().max().item()
                if n == "dq" and atomic:
                    e = rel_l2(theirs, mine)
                    ok &= e < 1e-3
                    parts.append(f"dq max |diff| {diff:.1e}, rel L2 {e:.1e} (bwd_atomic_dq=1)")
                    continue
                ok &= bool(torch.equal(theirs, mine))
                parts.append(f"{n} max |diff| {diff:.1e}")
            record(f"cli {name}: s2lora attn vs s2lora.attention, bitwise", ok,
                   ", ".join(parts) + f"; tile {tile_text}")


# ----------------------------------------------------------------------------- transformers

GROUP_RATIO = 0.25


def rollfold_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                       **kwargs):
    """LongLoRA's S²-Attn as its no-flash path computes it, written here as a transformers
    attention function: shift half the heads by G/2 with torch.roll, fold the groups into the
    batch, causal SDPA, unfold, roll back. query [B, H, S, d] -> ([B, S, H, d], None)."""
    import torch
    import torch.nn.functional as F
    h, n = query.shape[1], query.shape[2]
    rep = h // key.shape[1]
    if rep > 1:
        key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    if not module.training:
        o = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling)
        return o.transpose(1, 2).contiguous(), None
    g = int(n * GROUP_RATIO)
    return roll_fold(torch, F, query, key, value, g, g // 2, scaling).contiguous(), None


_flex = {}


def flex_attention_fn(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                      **kwargs):
    """FlexAttention with the S² block mask (roll mode, as the patch above), compiled."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    h, n = query.shape[1], query.shape[2]
    g = int(n * GROUP_RATIO)
    s = g // 2
    key_ = (h, n, g, query.device)
    if key_ not in _flex:
        def mask_mod(b, hh, qi, ki):
            plain = (qi // g == ki // g) & (ki <= qi)
            rq, rk = (qi - s + n) % n, (ki - s + n) % n
            return torch.where(hh < h // 2, plain, (rq // g == rk // g) & (rk <= rq))
        _flex[key_] = create_block_mask(mask_mod, B=None, H=h, Q_LEN=n, KV_LEN=n,
                                        device=query.device, _compile=True)
    if "fn" not in _flex:
        _flex["fn"] = torch.compile(flex_attention, dynamic=False)
    o = _flex["fn"](query, key, value, block_mask=_flex[key_], scale=scaling,
                    enable_gqa=key.shape[1] != h)
    return o.transpose(1, 2).contiguous(), None


LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)


def make_model(torch, seqlen, layers, seed=0, shape=None):
    """A random LLaMA of `shape` (default the 7B's) with `layers` layers, bf16, linear RoPE
    scaling from the base context to seqlen."""
    from transformers import LlamaForCausalLM
    sys.path.insert(0, os.path.join(HERE, "peers"))
    from hf_compat import llama_config
    shape = dict(LLAMA_7B if shape is None else shape)
    base = shape["max_position_embeddings"]
    cfg = llama_config(factor=max(1.0, seqlen / base), num_hidden_layers=layers, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, **shape)
    cfg.use_cache = False
    torch.manual_seed(seed)
    with torch.device(DEVICE):
        m = LlamaForCausalLM(cfg).to(torch.bfloat16)
    return m


def add_lora(torch, model, seed=1):
    from peft import LoraConfig, get_peft_model
    pm = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    # B starts at zero in PEFT, which leaves A's gradient zero: give B small random values so
    # that both gradients are compared.
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen, device=DEVICE) * 1e-2)
    return pm


def set_attn(model, name):
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if hasattr(base, "set_attn_implementation"):
        base.set_attn_implementation(name)
    else:
        base.config._attn_implementation = name
    got = base.config._attn_implementation
    if got != name:
        raise RuntimeError(f"the model runs attn_implementation {got!r}, not {name!r}")


def register_peers():
    from s2lora import hf
    reg_attn, _ = hf._registries()
    reg_attn("s2lora_check_rollfold", rollfold_attention)
    reg_attn("s2lora_check_flex", flex_attention_fn)


def train_step(torch, pm, ids):
    pm.zero_grad(set_to_none=True)
    loss = pm(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.detach().float().clone() for n, p in pm.named_parameters()
             if p.requires_grad and p.grad is not None}
    return loss.item(), grads


def section_hf(torch, s2lora, have_lib, seqlen, layers):
    import transformers
    from s2lora import hf
    print(f"transformers {transformers.__version__}, peft "
          f"{__import__('peft').__version__}; LLaMA 7B shape, {layers} layers, {seqlen} tokens",
          flush=True)
    register_peers()
    if have_lib:
        s2lora.register_transformers("s2lora", shift_mode="roll")
    model = make_model(torch, seqlen, layers)
    pm = add_lora(torch, model)
    pm.train()
    gen = torch.Generator(device=DEVICE).manual_seed(2)
    ids = torch.randint(3, 32000, (1, seqlen), generator=gen, device=DEVICE)
    runs = {}
    for impl in (["s2lora"] if have_lib else []) + ["s2lora_check_rollfold", "s2lora_check_flex"]:
        set_attn(pm, impl)
        calls = dict(hf.CALLS)
        runs[impl] = train_step(torch, pm, ids)
        if impl == "s2lora":
            n = hf.CALLS["s2"] - calls["s2"]
            record("hf s2lora ran in every layer", n == layers, f"{n} S²-Attn calls, {layers} layers")
        print(f"  {impl}: loss {runs[impl][0]:.5f}", flush=True)
    base_loss, base_grads = runs["s2lora_check_rollfold"]
    for impl in [i for i in runs if i != "s2lora_check_rollfold"]:
        loss, grads = runs[impl]
        dl = abs(loss - base_loss) / abs(base_loss)
        record(f"hf {impl} loss vs roll/fold", dl < 5e-3, f"{loss:.5f} vs {base_loss:.5f} "
               f"(relative {dl:.1e})")
        lora = [n for n in base_grads if "lora_" in n]
        errs = {n: rel_l2(grads[n], base_grads[n]) for n in lora}
        worst = max(errs, key=errs.get)
        total = rel_l2(torch.cat([grads[n].flatten() for n in lora]),
                       torch.cat([base_grads[n].flatten() for n in lora]))
        record(f"hf {impl} LoRA gradients vs roll/fold", errs[worst] < 5e-2 and total < 3e-2,
               f"{len(lora)} tensors, all {total:.1e}, worst {errs[worst]:.1e} ({worst})")
    if have_lib:
        print(f"  layout copies made by the s2lora glue: {hf.COPIES}")
        pm.eval()
        with torch.no_grad():
            set_attn(pm, "s2lora")
            calls = hf.CALLS["full"]
            a = pm(input_ids=ids).logits.float()
            full = hf.CALLS["full"] - calls
            set_attn(pm, "sdpa")
            b = pm(input_ids=ids).logits.float()
        e = rel_l2(a, b)
        record("hf eval: s2lora full causal vs sdpa, logits", e < 2e-2 and full == layers,
               f"{e:.1e}, {full} full-attention calls")
    del pm, model
    torch.cuda.empty_cache()


def section_speed(torch, s2lora, have_lib, seqlens, layers, steps, warmup):
    register_peers()
    impls = []
    if have_lib:
        s2lora.register_transformers("s2lora", shift_mode="roll")
        s2lora.register_transformers("s2lora_split", shift_mode="split")
        impls += [("s2lora", "s2lora (roll)"), ("s2lora_split", "s2lora (split)")]
    impls += [("s2lora_check_rollfold", "roll/fold SDPA"), ("s2lora_check_flex", "FlexAttention")]
    for n in seqlens:
        model = make_model(torch, n, layers)
        model.gradient_checkpointing_enable()
        pm = add_lora(torch, model)
        pm.train()
        params = [p for p in pm.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)
        gen = torch.Generator(device=DEVICE).manual_seed(3)
        ids = torch.randint(3, 32000, (1, n), generator=gen, device=DEVICE)
        for impl, label in impls:
            set_attn(pm, impl)
            try:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()

                def step(pm=pm, opt=opt):
                    loss = pm(input_ids=ids, labels=ids).loss
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    return loss
                t0 = time.perf_counter()
                for _ in range(warmup):
                    step()
                torch.cuda.synchronize()
                warm_s = time.perf_counter() - t0
                times = []
                for _ in range(steps):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    loss = step()
                    b.record()
                    b.synchronize()
                    times.append(a.elapsed_time(b))
                ms = statistics.median(times)
                row = {"seqlen": n, "impl": label, "step_ms": ms, "tokens_per_s": n / ms * 1e3,
                       "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                       "warmup_s": warm_s, "loss": float(loss.item())}
                ok = math.isfinite(row["loss"])
                record(f"speed {label} at {n}: finite loss", ok, f"{row['loss']:.4f}")
            except Exception as e:  # noqa: BLE001
                record(f"speed {label} at {n}", False, f"{type(e).__name__}: {e}")
                row = {"seqlen": n, "impl": label, "error": str(e)}
            RESULTS["speed"].append(row)
            print(f"  {n:>6} {label:<16} " + (f"{row['tokens_per_s']:>9.0f} tok/s "
                  f"{row['step_ms']:>8.1f} ms {row['peak_gib']:>6.1f} GiB"
                  if "error" not in row else "error"), flush=True)
        del pm, model, opt, params
        torch.cuda.empty_cache()
    print(f"{'seqlen':>7} {'implementation':<16} {'tokens/s':>9} {'step ms':>8} {'peak GiB':>8} "
          f"{'vs roll/fold':>12}")
    for n in seqlens:
        rows = [r for r in RESULTS["speed"] if r["seqlen"] == n and "error" not in r]
        base = next((r for r in rows if r["impl"] == "roll/fold SDPA"), None)
        for r in rows:
            rel = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
            print(f"{n:>7} {r['impl']:<16} {r['tokens_per_s']:>9.0f} {r['step_ms']:>8.1f} "
                  f"{r['peak_gib']:>8.1f} {rel:>12}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lib", help="libs2lora.so (else $S2LORA_LIBRARY, else the usual places)")
    ap.add_argument("--bin", help="the s2lora binary for the cli section (default: s2lora "
                    "beside the library)")
    ap.add_argument("--no-cli", action="store_true",
                    help="leave the comparison with `s2lora attn` out")
    ap.add_argument("--json", help="write the checks and timings here")
    ap.add_argument("--sections", default="ref,attn,sdpa,cli,hf,speed")
    ap.add_argument("--seqlens", default="8192,32768")
    ap.add_argument("--hf-seqlen", type=int, default=8192)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    sections = set(x for x in a.sections.split(",") if x)
    bad = sections - {"ref", "attn", "sdpa", "cli", "hf", "speed"}
    if bad:
        ap.error(f"unknown sections {sorted(bad)}")
    if a.no_cli:
        if a.bin:
            ap.error("--bin and --no-cli exclude each other")
        sections.discard("cli")
    if a.lib:
        os.environ["S2LORA_LIBRARY"] = os.path.abspath(a.lib)
    sys.path.insert(0, os.path.join(ROOT, "python"))
    sys.path.insert(0, HERE)
    import cli_attn
    import torch
    import torch.nn.functional as F
    import s2lora
    if not torch.cuda.is_available():
        print("torch_check: no CUDA device")
        return 3
    RESULTS["device"] = torch.cuda.get_device_name()
    RESULTS["torch"] = torch.__version__
    print(f"torch {torch.__version__} on {RESULTS['device']}", flush=True)
    try:
        RESULTS["library"] = s2lora.library_path()
        print(f"libs2lora {s2lora.version()} from {RESULTS['library']}", flush=True)
        have_lib = True
    except s2lora.S2loraError as e:
        record("library loads", False, str(e))
        have_lib = False
    seqlens = [int(x) for x in a.seqlens.split(",") if x]
    plan = [("ref", lambda: section_ref(torch, F))]
    if have_lib:
        plan.append(("attn", lambda: section_attn(torch, F, s2lora, "sdpa" in sections)))
        binary = os.path.abspath(a.bin) if a.bin else cli_attn.default_bin(RESULTS["library"])
        plan.append(("cli", lambda: section_cli(torch, s2lora, binary)))
    elif "cli" in sections:
        record("section cli", False, "needs the library (see 'library loads')")
    plan += [("hf", lambda: section_hf(torch, s2lora, have_lib, a.hf_seqlen, a.layers)),
             ("speed", lambda: section_speed(torch, s2lora, have_lib, seqlens, a.layers, a.steps,
                                             a.warmup))]
    for name, fn in plan:
        if name not in sections and not (name == "attn" and "sdpa" in sections):
            continue
        print(f"== {name}", flush=True)
        try:
            fn()
        except Exception as e:  # noqa: BLE001  (a section's failure is loud, the rest still runs)
            traceback.print_exc()
            record(f"section {name}", False, f"{type(e).__name__}: {e}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(RESULTS, f, indent=1)
    n = len(RESULTS["checks"])
    print(f"torch_check: {n - len(FAILS)} of {n} checks passed" +
          (f"; FAILED: {', '.join(FAILS)}" if FAILS else ""))
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())

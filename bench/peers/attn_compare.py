#!/usr/bin/env python3
"""Compare `s2lora attn` with S²-Attn written the way LongLoRA writes it in PyTorch.

roll:  LongLoRA's no-flash path (and the paper's pseudocode): roll heads H/2.. by -G/2 along
       the sequence, fold the sequence into N/G groups, causal attention per group, unfold,
       roll back.
split: LongLoRA's flash-attn path: the shifted heads' sequence is cut at G/2, G/2 + G, ...
       (cu_seqlens boundaries), causal attention inside each piece.

Both are computed with torch.nn.functional.scaled_dot_product_attention in float32 on the
bf16 inputs, forward and backward (autograd), and compared by relative L2 error with what
`s2lora attn --backward` writes. Exit status 1 if any error is 1e-2 or more.

usage: attn_compare.py S2LORA_BINARY SPEC_DIR WORK_DIR
"""
import json
import math
import os
import subprocess
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

TOL = 1e-2


def sdpa_causal(q, k, v):
    # q, k, v: [batch, heads, n, d]
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def longlora_roll(q, k, v, G):
    """q [N, H, d], k/v [N, H, d] (kv already expanded); LongLoRA's roll / fold."""
    N, H, d = q.shape
    S = G // 2

    def shift(x):
        x = x.clone()
        x[:, H // 2:] = x[:, H // 2:].roll(-S, dims=0)
        # [N, H, d] -> [N/G, H, G, d]
        return x.reshape(N // G, G, H, d).transpose(1, 2)

    o = sdpa_causal(shift(q), shift(k), shift(v))  # [N/G, H, G, d]
    o = o.transpose(1, 2).reshape(N, H, d)
    o = torch.cat([o[:, : H // 2], o[:, H // 2:].roll(S, dims=0)], dim=1)
    return o


def longlora_split(q, k, v, G):
    """The flash-attn path: plain heads cut at multiples of G, shifted heads at G/2 + mG."""
    N, H, d = q.shape
    S = G // 2
    outs = []
    for half, start in ((slice(0, H // 2), 0), (slice(H // 2, H), S)):
        cuts = [0] + list(range(start if start else G, N, G)) + [N]
        cuts = sorted(set(c for c in cuts if 0 <= c <= N))
        pieces = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            qs, ks, vs = (t[a:b, half].transpose(0, 1).unsqueeze(0) for t in (q, k, v))
            pieces.append(sdpa_causal(qs, ks, vs)[0].transpose(0, 1))
        outs.append(torch.cat(pieces, dim=0))
    return torch.cat(outs, dim=1)


def run_case(binary, spec_dir, work, name, mode, N, H, Hkv, d, G):
    spec = os.path.join(spec_dir, f"{name}.yaml")
    with open(spec, "w") as f:
        f.write(
            f"name: {name}\ndtype: bf16\n"
            f"model: {{hidden_size: {H * d}, intermediate_size: 1024, num_layers: 1, num_heads: {H},\n"
            f"        num_kv_heads: {Hkv}, head_dim: {d}, vocab_size: 256, max_position_embeddings: {N}}}\n"
            f"context_length: {N}\ns2attn: {{group_size: {G}, shift_mode: {mode}}}\n")
    gen = torch.Generator(device="cuda").manual_seed(int.from_bytes(os.urandom(4), "little"))
    q = torch.randn(N, H, d, device="cuda", generator=gen).bfloat16()
    k = torch.randn(N, Hkv, d, device="cuda", generator=gen).bfloat16()
    v = torch.randn(N, Hkv, d, device="cuda", generator=gen).bfloat16()
    do = torch.randn(N, H, d, device="cuda", generator=gen).bfloat16()
    inp = os.path.join(work, f"{name}.in.safetensors")
    out = os.path.join(work, f"{name}.out.safetensors")
    save_file({"q": q.cpu(), "k": k.cpu(), "v": v.cpu(), "do": do.cpu()}, inp)
    subprocess.run([binary, "attn", spec, "--in", inp, "--out", out, "--backward"],
                   check=True)
    got = load_file(out, device="cuda")

    rep = H // Hkv
    qf, kf, vf = (t.float().requires_grad_() for t in (q, k, v))
    ke, ve = kf.repeat_interleave(rep, dim=1), vf.repeat_interleave(rep, dim=1)
    o = (longlora_roll if mode == "roll" else longlora_split)(qf, ke, ve, G)
    o.backward(do.float())
    ref = {"o": o.detach(), "dq": qf.grad, "dk": kf.grad, "dv": vf.grad}
    errs = {}
    for key, r in ref.items():
        g = got[key].float()
        errs[key] = float((g - r).norm() / r.norm()) if torch.isfinite(g).all() else math.inf
    return errs


def main():
    if len(sys.argv) != 4:
        print(__doc__)
        return 2
    binary, spec_dir, work = sys.argv[1:]
    os.makedirs(spec_dir, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    cases = [
        ("peer-roll-mha", "roll", 4096, 8, 8, 128, 1024),
        ("peer-split-mha", "split", 4096, 8, 8, 128, 1024),
        ("peer-roll-gqa", "roll", 2048, 8, 2, 64, 512),
        ("peer-split-gqa", "split", 2048, 8, 4, 128, 512),
    ]
    failed = 0
    print(f"{'case':<16} {'mode':<5} {'N':>5} {'H/kv':>5} {'d':>4} {'G':>5} "
          f"{'o':>9} {'dq':>9} {'dk':>9} {'dv':>9} result")
    for name, mode, N, H, Hkv, d, G in cases:
        e = run_case(binary, spec_dir, work, name, mode, N, H, Hkv, d, G)
        ok = all(x < TOL for x in e.values())
        failed += not ok
        print(f"{name:<16} {mode:<5} {N:>5} {f'{H}/{Hkv}':>5} {d:>4} {G:>5} "
              f"{e['o']:9.2e} {e['dq']:9.2e} {e['dk']:9.2e} {e['dv']:9.2e} "
              f"{'PASS' if ok else 'FAIL'}")
    print(json.dumps({"peer_compare_failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

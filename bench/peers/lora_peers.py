#!/usr/bin/env python3
"""PyTorch peers of `s2lora bench lora`: a LoRA linear the ways PyTorch users write it.

For each (M, dim, r), bf16, W frozen [dim, dim], A [r, dim], B [dim, r] trainable, s = 16 / r:
  base      y = x @ W.T                          (backward: dx only)
  unfused   y = x @ W.T + s * (x @ A.T) @ B.T     (PEFT's arithmetic)
  addmm     y = (x @ W.T).addmm_((x @ A.T), B.T, alpha=s)
  compile   torch.compile of the unfused function
Forward and forward+backward (backward of sum(y * dy)), CUDA-event medians after warm-up,
fresh N(0,1) inputs. Prints one row per case and implementation with the overhead over base.

usage: lora_peers.py [--M 16384] [--dims 4096] [--ranks 8,16,64] [--reps 20]
"""
import argparse
import statistics
import sys

import torch


def timed(fn, reps, warmup=5):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def case(M, dim, r, reps):
    dev, dt = "cuda", torch.bfloat16
    s = 16.0 / r
    x = torch.randn(M, dim, device=dev, dtype=dt, requires_grad=True)
    W = torch.randn(dim, dim, device=dev, dtype=dt) / dim ** 0.5
    A = (torch.randn(r, dim, device=dev, dtype=dt) / dim ** 0.5).requires_grad_()
    B = (torch.randn(dim, r, device=dev, dtype=dt) / r ** 0.5).requires_grad_()
    dy = torch.randn(M, dim, device=dev, dtype=dt)

    def base():
        return x @ W.T

    def unfused():
        return x @ W.T + s * (x @ A.T) @ B.T

    def addmm():
        return (x @ W.T).addmm_(x @ A.T, B.T, alpha=s)

    compiled = torch.compile(unfused)
    impls = [("base", base), ("unfused", unfused), ("addmm", addmm), ("compile", compiled)]
    rows = []
    for name, f in impls:
        with torch.no_grad():
            fwd = timed(f, reps)

        def fb():
            y = f()
            y.backward(dy)

        try:
            fbm = timed(fb, max(reps // 2, 3))
        except RuntimeError as e:  # addmm_ in place on a tensor autograd needs
            fbm = float("nan")
            print(f"lora_peers: {name} fwd+bwd: {e}".splitlines()[0], file=sys.stderr)
        x.grad = A.grad = B.grad = None
        rows.append((name, fwd, fbm))
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--M", default="16384")
    p.add_argument("--dims", default="4096")
    p.add_argument("--ranks", default="8,16,64")
    p.add_argument("--reps", type=int, default=20)
    a = p.parse_args()
    ints = lambda t: [int(v) for v in t.split(",")]
    print(f"lora peers: {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16")
    print(f"{'M':>6} {'dim':>5} {'r':>3} {'impl':<8} {'fwd_ms':>8} {'fwd_%':>7} {'fb_ms':>8} {'fb_%':>7}")
    for M in ints(a.M):
        for dim in ints(a.dims):
            for r in ints(a.ranks):
                rows = case(M, dim, r, a.reps)
                b_f, b_fb = rows[0][1], rows[0][2]
                for name, f, fb in rows:
                    print(f"{M:>6} {dim:>5} {r:>3} {name:<8} {f:8.3f} {100 * (f - b_f) / b_f:6.1f}% "
                          f"{fb:8.3f} {100 * (fb - b_fb) / b_fb:6.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Trainer speed: `s2lora train` against the PyTorch stack on the same model, data and GPU.

The PyTorch stack is what LongLoRA runs: transformers' LlamaForCausalLM in bf16, PEFT LoRA
(r 8, alpha 16, q/k/v/o) plus trainable embeddings and norms (LoRA+), gradient checkpointing,
AdamW, and S²-Attn as LongLoRA's no-flash path writes it — the shifted half of the heads rolled
by G/2, the sequence folded into groups, causal attention per group with
scaled_dot_product_attention (cuDNN/flash), unfolded and rolled back — registered through
transformers' AttentionInterface. s2lora trains the same checkpoint (a random LLaMA of the
given shape, saved by transformers) on the same token file with the same recipe.

Both run batch 1 x SEQLEN tokens per step with no gradient accumulation; the first WARMUP
steps are not timed. Reported: median tokens/s of the timed steps and peak device memory
(torch.cuda.max_memory_allocated for the stack; s2lora's log, device memory in use). Prints a
table and the speed ratio; exits 1 if either side fails. The stack's steps are also written as
WORK_DIR/LENGTH/torch-train/train.jsonl in the fields of s2lora train's log (its memory what
PyTorch's allocator holds), beside s2lora's WORK_DIR/LENGTH/s2lora-train/train.jsonl, for
bench/plot.py --train.

The default shape is the one ../shared/peers measured the stack on: LLaMA-2 7B cut to 4 layers
(hidden 4096, intermediate 11008, 32 heads, vocab 32000, base context 4096, linear RoPE scaling
to the training context), at 8k and 32k tokens.

usage: train_peers.py S2LORA_BINARY WORK_DIR [--hidden 4096] [--layers 4] [--heads 32]
                      [--kv-heads 32] [--inter 11008] [--vocab 32000] [--base-context 4096]
                      [--seqlens 8192,32768] [--steps 6] [--warmup 2]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tokenize_llama  # noqa: E402  (the token file writer)

GROUP_RATIO = 0.25


def s2_roll_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    """LongLoRA's S²-Attn, no-flash path: roll the shifted heads by -G/2, fold into groups,
    causal SDPA per group, unfold, roll back. query [B, H, T, d]; returns ([B, T, H, d], None)."""
    b, h, t, d = query.shape
    rep = h // key.shape[1]
    if rep > 1:
        key = key.repeat_interleave(rep, dim=1)
        value = value.repeat_interleave(rep, dim=1)
    g = int(t * GROUP_RATIO)
    s = g // 2

    def fold(x):
        x = torch.cat([x[:, : h // 2], x[:, h // 2:].roll(-s, dims=2)], dim=1)
        return x.reshape(b, h, t // g, g, d).transpose(1, 2).reshape(b * (t // g), h, g, d)

    o = F.scaled_dot_product_attention(fold(query), fold(key), fold(value), is_causal=True,
                                       scale=scaling)
    o = o.reshape(b, t // g, h, g, d).transpose(1, 2).reshape(b, h, t, d)
    o = torch.cat([o[:, : h // 2], o[:, h // 2:].roll(s, dims=2)], dim=1)
    return o.transpose(1, 2).contiguous(), None


def spec_text(a):
    return f"""name: train-peers
dtype: bf16
context_length: {a.seqlen}
model: {{hidden_size: {a.hidden}, intermediate_size: {a.inter}, num_layers: {a.layers},
        num_heads: {a.heads}, num_kv_heads: {a.kv_heads}, vocab_size: {a.vocab},
        rope_theta: 10000, max_position_embeddings: {a.base_context}, rms_norm_eps: 1.0e-5}}
s2attn: {{group_ratio: {GROUP_RATIO}, shift_mode: roll}}
lora: {{rank: 8, alpha: 16, targets: [q_proj, k_proj, v_proj, o_proj], trainable: [embed, norm]}}
"""


def torch_stack(a, base, data_tokens):
    from peft import LoraConfig, get_peft_model
    from transformers import AttentionInterface, LlamaForCausalLM
    AttentionInterface.register("s2lora_peer_s2_roll", s2_roll_attention)
    try:
        m = LlamaForCausalLM.from_pretrained(base, dtype=torch.bfloat16,
                                             attn_implementation="s2lora_peer_s2_roll").cuda()
    except TypeError:
        m = LlamaForCausalLM.from_pretrained(base, torch_dtype=torch.bfloat16,
                                             attn_implementation="s2lora_peer_s2_roll").cuda()
    m.gradient_checkpointing_enable()
    m.config.use_cache = False
    pm = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    for n, p in pm.named_parameters():
        if "embed_tokens" in n or "norm" in n:
            p.requires_grad_(True)
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-5, weight_decay=0.0)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    # Each step's record in the fields of s2lora train's train.jsonl, for bench/plot.py (memory:
    # what PyTorch's allocator holds, not the device's whole use as s2lora's log says).
    os.makedirs(os.path.join(a.work, "torch-train"), exist_ok=True)
    log = open(os.path.join(a.work, "torch-train", "train.jsonl"), "w")
    for step in range(a.warmup + a.steps):
        ids = data_tokens[step].cuda()[None]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = pm(ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if step >= a.warmup:
            times.append(dt)
        print(f"  torch step {step + 1}: loss {loss.item():.4f}, {dt:.3f} s", flush=True)
        log.write(json.dumps({"step": step + 1, "loss": loss.item(), "tokens": a.seqlen,
                              "seconds": dt, "tokens_per_s": a.seqlen / dt,
                              "mem_gib": torch.cuda.memory_allocated() / 2**30,
                              "peak_mem_gib": [torch.cuda.max_memory_allocated() / 2**30]}) + "\n")
    log.close()
    peak = torch.cuda.max_memory_allocated() / 2**30
    del pm, m, opt
    torch.cuda.empty_cache()
    return a.seqlen / statistics.median(times), peak


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("exe")
    ap.add_argument("work")
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=32)
    ap.add_argument("--inter", type=int, default=11008)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--base-context", type=int, default=4096)
    ap.add_argument("--seqlens", default="8192,32768")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    rows, root = [], a.work
    for n in (int(x) for x in a.seqlens.split(",")):
        if n % 8 or n % a.base_context:
            raise SystemExit(f"seqlen {n}: a multiple of 8 and of --base-context needed")
        a.seqlen = n
        rows.append((n,) + one_length(a, os.path.join(root, str(n))))
    print(f"{'seqlen':>7} {'pytorch tok/s':>14} {'peak GiB':>9} {'s2lora tok/s':>13} "
          f"{'peak GiB':>9} {'ratio':>6}")
    for n, tt, tm, ot, om in rows:
        print(f"{n:>7} {tt:>14.0f} {tm:>9.2f} {ot:>13.0f} {om:>9.2f} {ot / tt:>5.2f}x")
    print("(s2lora peak: device memory in use during its run, the CUDA context included)")
    return 0


def one_length(a, work):
    os.makedirs(work, exist_ok=True)
    a.work = work
    from transformers import LlamaForCausalLM
    from hf_compat import llama_config
    torch.manual_seed(0)
    cfg = llama_config(factor=a.seqlen / a.base_context, hidden_size=a.hidden,
                       intermediate_size=a.inter, num_hidden_layers=a.layers,
                       num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                       vocab_size=a.vocab, max_position_embeddings=a.base_context,
                       rms_norm_eps=1e-5, tie_word_embeddings=False)
    base = os.path.join(a.work, "base")
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(base, safe_serialization=True)
    spec = os.path.join(a.work, "spec.yaml")
    with open(spec, "w") as f:
        f.write(spec_text(a))
    n_seq = a.warmup + a.steps
    toks = torch.randint(3, a.vocab, (n_seq * (a.seqlen + 1) + 1,), dtype=torch.int64)
    data = os.path.join(a.work, "data.tokens")
    tokenize_llama.write_tokens(data, toks.tolist(), [0, len(toks)], a.vocab)
    seqs = [toks[i * a.seqlen:(i + 1) * a.seqlen] for i in range(n_seq)]

    print(f"model: hidden {a.hidden}, layers {a.layers}, heads {a.heads}/{a.kv_heads}, "
          f"inter {a.inter}, vocab {a.vocab}; {a.seqlen} tokens a step, S²-Attn G={int(a.seqlen * GROUP_RATIO)}")
    print("PyTorch stack (transformers + PEFT + LongLoRA roll/fold S²-Attn, checkpointing):")
    t_tps, t_mem = torch_stack(a, base, seqs)

    print("s2lora train:")
    out = os.path.join(a.work, "s2lora-train")
    p = subprocess.run([a.exe, "train", spec, "--model", base, "--data", data, "--out", out,
                        "--steps", str(n_seq), "--grad-accum", "1", "--save-every", "0"],
                       capture_output=True, text=True)
    sys.stdout.write(p.stderr[-3000:])
    if p.returncode:
        sys.stdout.write(p.stdout)
        raise SystemExit(f"s2lora train failed ({p.returncode})")
    rows = [json.loads(l) for l in open(os.path.join(out, "train.jsonl"))]
    timed = [r for r in rows if r["step"] > a.warmup]
    o_tps = statistics.median(r["tokens_per_s"] for r in timed)
    o_mem = max(r["mem_gib"] for r in rows)
    print(f"seqlen {a.seqlen}: s2lora / pytorch tokens/s: {o_tps / t_tps:.2f}x", flush=True)
    return t_tps, t_mem, o_tps, o_mem


if __name__ == "__main__":
    sys.exit(main())

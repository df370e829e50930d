#!/usr/bin/env python3
"""The s2lora model and trainer against transformers and PEFT on the GPU machine.

A tiny random LLaMA (2 layers, GQA 4/2, head_dim 64, vocab 264, linear RoPE scaling x4) is
made and saved by transformers (bf16 safetensors); the same token batch goes through both:

  full     transformers' logits (fp32 model from the bf16 checkpoint, eager attention) vs
           `s2lora logits` with full causal attention;
  s2attn   transformers with an attention function registered through AttentionInterface
           that applies LongLoRA's S²-Attn (split mode: plain heads in groups of G, shifted
           heads in groups offset by G/2, causal inside a group) vs `s2lora logits --s2attn`;
  grads    a PEFT LoRA model (r 8, alpha 16, q/k/v/o, B made non-zero) plus trainable
           embeddings and norms (LoRA+): loss and every gradient after one backward with
           S²-Attn vs `s2lora logits --s2attn --grads` with the adapter PEFT saved;
  adapter  `s2lora train` for two steps on a byte-level token file; PEFT loads the adapter it
           exported (and the trainable tensors file) and its logits must match
           `s2lora logits` with that adapter.

Relative L2 tolerances: 2e-2 for logits and loss (bf16 activations against an fp32 model),
5e-2 for gradients. Prints one line per check and exits 1 if any fails.

usage: llama_peers.py S2LORA_BINARY WORK_DIR [--seed N]
"""
import math
import os
import subprocess
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

L, HID, H, HKV, D, INTER, VOCAB, MAXPOS, CTX, R, ALPHA = 2, 256, 4, 2, 64, 688, 264, 64, 256, 8, 16
G, S = 64, 32
TOL_LOGITS, TOL_GRAD = 2e-2, 5e-2

SPEC = f"""name: llama-peers
dtype: bf16
context_length: {CTX}
model: {{hidden_size: {HID}, intermediate_size: {INTER}, num_layers: {L}, num_heads: {H},
        num_kv_heads: {HKV}, head_dim: {D}, vocab_size: {VOCAB}, rope_theta: 10000,
        max_position_embeddings: {MAXPOS}, rms_norm_eps: 1.0e-5, tie_word_embeddings: false}}
s2attn: {{group_size: {G}, shift_mode: split}}
lora: {{rank: {R}, alpha: {ALPHA}, targets: [q_proj, k_proj, v_proj, o_proj],
       trainable: [embed, norm]}}
"""

failures = 0


def report(what, err, tol):
    global failures
    ok = err < tol  # NaN fails
    failures += not ok
    print(f"{what:<58} rel err {err:.3e} (tol {tol:.0e}) {'PASS' if ok else 'FAIL'}", flush=True)


def rel(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}")
    return p.stdout


def s2_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    """LongLoRA's S²-Attn (split mode) for transformers' AttentionInterface.
    query [B, H, T, d], key/value [B, Hkv, T, d]; returns ([B, T, H, d], None)."""
    b, h, t, d = query.shape
    rep = h // key.shape[1]
    key = key.repeat_interleave(rep, dim=1)
    value = value.repeat_interleave(rep, dim=1)
    p = torch.arange(t, device=query.device)
    grp = torch.stack([p // G if hh < h // 2 else (p + S) // G for hh in range(h)])  # [H, T]
    mask = (grp[:, :, None] == grp[:, None, :]) & (p[None, :, None] >= p[None, None, :])
    o = F.scaled_dot_product_attention(query, key, value, attn_mask=mask[None],
                                       scale=scaling if scaling is not None else d ** -0.5)
    return o.transpose(1, 2).contiguous(), None


def load_model(path, attn):
    from transformers import LlamaForCausalLM
    try:
        return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                attn_implementation=attn).cuda()
    except TypeError:
        return LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.float32,
                                                attn_implementation=attn).cuda()


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    exe, work = sys.argv[1], sys.argv[2]
    seed = int(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--seed" else \
        int.from_bytes(os.urandom(4), "little")
    print(f"llama_peers: seed {seed}")
    torch.manual_seed(seed)
    os.makedirs(work, exist_ok=True)
    from transformers import AttentionInterface, LlamaForCausalLM
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from hf_compat import llama_config
    import transformers
    import peft
    print(f"transformers {transformers.__version__}, peft {peft.__version__}, torch {torch.__version__}")
    AttentionInterface.register("s2lora_peer_s2", s2_attention)

    spec = os.path.join(work, "spec.yaml")
    with open(spec, "w") as f:
        f.write(SPEC)
    cfg = llama_config(factor=CTX / MAXPOS, hidden_size=HID, intermediate_size=INTER,
                       num_hidden_layers=L, num_attention_heads=H, num_key_value_heads=HKV,
                       head_dim=D, vocab_size=VOCAB, max_position_embeddings=MAXPOS,
                       rms_norm_eps=1e-5, tie_word_embeddings=False, initializer_range=0.08)
    base = os.path.join(work, "base")
    m = LlamaForCausalLM(cfg)
    with torch.no_grad():  # norms away from 1, so their gradients mean something
        for n, prm in m.named_parameters():
            if "norm" in n:
                prm.add_(0.2 * (torch.rand_like(prm) * 2 - 1))
    m.to(torch.bfloat16).save_pretrained(base, safe_serialization=True)
    del m

    tok = torch.randint(0, VOCAB, (CTX,), dtype=torch.int32)
    tok_path = os.path.join(work, "tokens.safetensors")
    save_file({"tokens": tok}, tok_path)
    ids = tok.long().cuda()[None]

    # full and S² logits
    for name, attn, flag in (("full", "eager", []), ("s2attn", "s2lora_peer_s2", ["--s2attn"])):
        hf = load_model(base, attn)
        with torch.no_grad():
            ref = hf(ids).logits[0].float()
        out = os.path.join(work, f"logits_{name}.safetensors")
        run([exe, "logits", spec, "--model", base, "--tokens", tok_path, "-o", out] + flag)
        ours = load_file(out)["logits"].cuda()
        report(f"{name}: logits vs transformers", rel(ours, ref), TOL_LOGITS)
        del hf

    # one backward: PEFT LoRA + trainable embeddings and norms, S²-Attn
    from peft import LoraConfig, get_peft_model
    hf = load_model(base, "s2lora_peer_s2")
    pm = get_peft_model(hf, LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0,
                                       target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for n, prm in pm.named_parameters():
            if "lora_B" in n:
                prm.normal_(0, 0.05)
    adapter0 = os.path.join(work, "adapter0")
    pm.save_pretrained(adapter0)
    inner = pm.base_model.model.model
    whole = {"model.embed_tokens.weight": inner.embed_tokens.weight,
             "model.norm.weight": inner.norm.weight}
    for i, layer in enumerate(inner.layers):
        whole[f"model.layers.{i}.input_layernorm.weight"] = layer.input_layernorm.weight
        whole[f"model.layers.{i}.post_attention_layernorm.weight"] = \
            layer.post_attention_layernorm.weight
    for prm in whole.values():
        prm.requires_grad_(True)
    loss = pm(ids, labels=ids).loss
    loss.backward()
    gout = os.path.join(work, "grads.safetensors")
    run([exe, "logits", spec, "--model", base, "--tokens", tok_path, "-o", gout, "--adapter",
         adapter0, "--s2attn", "--grads"])
    g = load_file(gout)
    report(f"grads: loss (ours {g['loss'].item():.5f}, PEFT {loss.item():.5f})",
           abs(g["loss"].item() - loss.item()) / abs(loss.item()), TOL_LOGITS)
    for n, prm in whole.items():
        report(f"grads: {n}", rel(g[f"grad.{n}"].cuda(), prm.grad.float()), TOL_GRAD)
    outs = {"q_proj": (0, H * D), "k_proj": (H * D, HKV * D), "v_proj": (H * D + HKV * D, HKV * D)}
    for i, layer in enumerate(inner.layers):
        at = layer.self_attn
        for j, p in enumerate(("q_proj", "k_proj", "v_proj", "o_proj")):
            mod = getattr(at, p)
            grp, k = ("qkv", j) if p != "o_proj" else ("o", 0)
            a = g[f"grad.model.layers.{i}.self_attn.{grp}.lora_A_stacked"].cuda()
            b = g[f"grad.model.layers.{i}.self_attn.{grp}.lora_B_stacked"].cuda()
            off, n_out = outs[p] if p != "o_proj" else (0, HID)
            ga = a[k * R:(k + 1) * R]
            gb = b[off:off + n_out, k * R:(k + 1) * R]
            report(f"grads: layer {i} {p} lora_A", rel(ga, mod.lora_A["default"].weight.grad), TOL_GRAD)
            report(f"grads: layer {i} {p} lora_B", rel(gb, mod.lora_B["default"].weight.grad), TOL_GRAD)
    del pm, hf

    # our trainer's adapter, loaded by PEFT
    text = os.path.join(work, "text.txt")
    with open(text, "w") as f:
        for root in ("README.md", "specs/README.md", __file__):
            if os.path.exists(root):
                f.write(open(root, errors="replace").read())
    data = os.path.join(work, "text.tokens")
    run([exe, "data", "--bytes", text, "-o", data])
    tdir = os.path.join(work, "train")
    run([exe, "train", spec, "--model", base, "--data", data, "--out", tdir, "--steps", "2",
         "--grad-accum", "1", "--lr", "1e-3", "--warmup", "0", "--seed", str(seed)])
    from peft import PeftModel
    hf = load_model(base, "eager")
    trained = load_file(os.path.join(tdir, "trainable.safetensors"))
    with torch.no_grad():
        sd = hf.state_dict()
        for n, t in trained.items():
            sd[n].copy_(t.float())
    pm = PeftModel.from_pretrained(hf, os.path.join(tdir, "adapter"))
    with torch.no_grad():
        ref = pm(ids).logits[0].float()
    out = os.path.join(work, "logits_trained.safetensors")
    run([exe, "logits", spec, "--model", base, "--tokens", tok_path, "-o", out, "--adapter",
         os.path.join(tdir, "adapter"), "--trainable", os.path.join(tdir, "trainable.safetensors")])
    report("adapter: our trained adapter in PEFT, logits", rel(load_file(out)["logits"].cuda(), ref),
           TOL_LOGITS)
    print(f"llama_peers: {'FAIL' if failures else 'PASS'} ({failures} failed)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

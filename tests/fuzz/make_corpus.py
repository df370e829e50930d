#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/ (committed; run
again after a format changes). Small, valid or nearly valid files of each format, so the fuzzers
start deep inside the readers. The spec target also starts from specs/ and tests/specs_bad/,
which run.sh adds at run time.

Multi-file inputs join their files with SEP, as tests/fuzz/fuzz.h splits them."""
import hashlib
import json
import os
import re
import shutil
import struct
import sys

SEP = b"\n--8<--\n"
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# ---- safetensors --------------------------------------------------------------------------

SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I32": 4, "I64": 8, "U8": 1, "I8": 1,
         "BOOL": 1}


def safetensors(tensors, meta=None, gap=0):
    """tensors: [(name, dtype, shape)], data filled with a counting pattern."""
    header, blobs, off = {}, [], 0
    for k, (name, dt, shape) in enumerate(tensors):
        n = SIZES[dt]
        for s in shape:
            n *= s
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        g = gap if k + 1 < len(tensors) else 0  # between tensors: the file ends with the last
        blobs.append(bytes((i * 7 + len(blobs)) & 0xFF for i in range(n)) + b"\0" * g)
        off += n + g
    if meta:
        header["__metadata__"] = meta
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


# The model of fuzz_hf.c's spec: hidden 8, intermediate 8, one layer, 2 heads of 64, 2 kv heads,
# vocab 8, untied; LoRA rank 2 on q and v.
HID, INTER, Q, KV, V, R = 8, 8, 128, 128, 8, 2


def model_tensors(dt="BF16"):
    L = "model.layers.0."
    return [("model.embed_tokens.weight", dt, [V, HID]),
            (L + "input_layernorm.weight", dt, [HID]),
            (L + "self_attn.q_proj.weight", dt, [Q, HID]),
            (L + "self_attn.k_proj.weight", dt, [KV, HID]),
            (L + "self_attn.v_proj.weight", dt, [KV, HID]),
            (L + "self_attn.o_proj.weight", dt, [HID, Q]),
            (L + "post_attention_layernorm.weight", dt, [HID]),
            (L + "mlp.gate_proj.weight", dt, [INTER, HID]),
            (L + "mlp.up_proj.weight", dt, [INTER, HID]),
            (L + "mlp.down_proj.weight", dt, [HID, INTER]),
            ("model.norm.weight", dt, [HID]),
            ("lm_head.weight", dt, [V, HID])]


def hf_config(**over):
    c = {"architectures": ["LlamaForCausalLM"], "hidden_size": HID, "intermediate_size": INTER,
         "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
         "head_dim": 64, "vocab_size": V, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
         "rope_theta": 10000.0, "rope_scaling": None, "tie_word_embeddings": False,
         "torch_dtype": "bfloat16", "model_type": "llama"}
    c.update(over)
    return json.dumps(c, indent=2).encode()


def adapter():
    cfg = {"peft_type": "LORA", "r": R, "lora_alpha": 16, "lora_dropout": 0.0,
           "target_modules": ["q_proj", "v_proj"], "base_model_name_or_path": "",
           "bias": "none", "task_type": "CAUSAL_LM", "use_rslora": False, "use_dora": False}
    pre = "base_model.model.model.layers.0.self_attn."
    w = safetensors([(pre + "q_proj.lora_A.weight", "BF16", [R, HID]),
                     (pre + "q_proj.lora_B.weight", "BF16", [Q, R]),
                     (pre + "v_proj.lora_A.weight", "F32", [R, HID]),
                     (pre + "v_proj.lora_B.weight", "F16", [KV, R])], {"format": "pt"})
    return json.dumps(cfg, indent=2).encode(), w


def st_seeds():
    put("st", "empty", safetensors([]))
    put("st", "every_dtype", safetensors([("f32", "F32", [2, 3]), ("f16", "F16", [3]),
                                          ("bf16", "BF16", [1, 5]), ("f64", "F64", [1]),
                                          ("i32", "I32", [2]), ("i64", "I64", [1]),
                                          ("u8", "U8", [3]), ("i8", "I8", [1]),
                                          ("bool", "BOOL", [2, 1, 1]), ("scalar", "F32", []),
                                          ("none", "BF16", [0, 4])],
                                         {"format": "pt", "note": "seed"}))
    put("st", "gaps", safetensors([("a", "F32", [2]), ("b", "U8", [3])], gap=5))
    put("st", "model", safetensors(model_tensors(), {"format": "pt"}))
    put("st", "adapter", adapter()[1])


def hf_seeds():
    a_cfg, a_w = adapter()
    weights = safetensors(model_tensors(), {"format": "pt"})
    put("hf", "single_with_adapter", SEP.join([hf_config(), b"", weights, a_cfg, a_w]))
    index = json.dumps({"metadata": {"total_size": 1},
                        "weight_map": {n: "model-00001-of-00001.safetensors"
                                       for n, _, _ in model_tensors()}}, indent=2).encode()
    put("hf", "index", SEP.join([hf_config(), index, weights]))
    put("hf", "rope_linear_f32",
        SEP.join([hf_config(rope_scaling={"type": "linear", "factor": 2.0}), b"",
                  safetensors(model_tensors("F32"))]))
    put("hf", "rope_parameters_tied",
        SEP.join([hf_config(rope_scaling=None, tie_word_embeddings=True,
                            rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
                  b"", safetensors(model_tensors()[:-1])]))


# ---- token files ----------------------------------------------------------------------------


def tokens_file(width, vocab, docs):
    toks = [t for d in docs for t in d]
    body = b"".join(struct.pack("<H" if width == 2 else "<I", t) for t in toks)
    body += b"\0" * (-len(body) % 8)
    idx, n = [0], 0
    for d in docs:
        n += len(d)
        idx.append(n)
    body += b"".join(struct.pack("<Q", i) for i in idx)
    digest = hashlib.sha256(body).digest()[:16]
    head = b"S2TOKENS" + struct.pack("<IIQQII", 1, width, len(toks), len(docs), vocab, 0)
    head += digest + b"\0" * 8
    return head + body


def data_seeds():
    # The first byte is the mode: 1 = the harness rewrites the digest.
    put("data", "w2_docs", b"\1" + tokens_file(2, 264, [[1, 80, 81, 2], [], [1, 9, 2]]))
    put("data", "w4_one_doc", b"\1" + tokens_file(4, 70000, [list(range(0, 69999, 4321))]))
    put("data", "w2_raw", b"\0" + tokens_file(2, 8, [[0, 1, 2, 3, 4, 5, 6, 7], [7]]))
    put("data", "empty", b"\0" + tokens_file(2, 1, []))


# ---- tuning db ------------------------------------------------------------------------------


def tune_line(**over):
    e = {"v": 1, "device": "NVIDIA H100 80GB HBM3", "arch": "sm_90a", "kernel": "attn_fwd",
         "spec_sha256": "0123456789abcdef" * 4, "shape": "N<=16384",
         "tile": "fwd_warps=4,fwd_strips=1,fwd_block_n=64,fwd_stages=2",
         "default_ms": 1.25, "tuned_ms": 0.98, "gen": "s2lora-gen-1", "nvrtc": "13.0",
         "when": "2026-11-25T18:00:00Z"}
    e.update(over)
    return json.dumps(e, separators=(", ", ":"))


def tune_seeds():
    lines = [tune_line(), tune_line(shape="N<=8192", tuned_ms=0.1 + 0.2),
             tune_line(kernel="attn_bwd", tile="bwd_warps=4,bwd_block_n=64,bwd_stages=2"),
             tune_line(kernel="lora_db_f32", tile="algo=3", shape="N<=16384"),
             tune_line(kernel="lora_u", tile="algo=0", source="import"),
             tune_line(gen="s2lora-gen-0", arch="sm_80",
                       tile="fwd_warps=4,fwd_block_n=64,fwd_stages=2")]
    put("tune_db", "entries", "\n".join(lines) + "\n")
    put("tune_db", "mixed",
        "\r\n".join([tune_line(), tune_line(v=2, extra=True), "garbage", "<<<<<<< HEAD",
                      tune_line(tile="no_such_key=1"), tune_line(when="yesterday"),
                      tune_line(device="NVIDIA A100-SXM4-80GB"), tune_line(arch="sm_100"),
                      tune_line(kernel="attn_new"), tune_line(shape="N<=1000"),
                      tune_line(when="2099-01-01T00:00:00Z"), tune_line(tuned_ms=1e9),
                      tune_line(when="2026-11-26T00:00:00Z", tuned_ms=0.5), "", "   "]))


# ---- kernel cache entry and log ----------------------------------------------------------------


LOG = (b"ptxas info    : 0 bytes gmem\n"
       b"ptxas info    : Compiling entry function 'k_a' for 'sm_90a'\n"
       b"ptxas info    : Function properties for k_a\n"
       b"    16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads\n"
       b"ptxas info    : Used 40 registers, used 1 barriers, 4096 bytes smem, 360 bytes "
       b"cmem[0]\n"
       b"ptxas info    : Compiling entry function 'k_b' for 'sm_90a'\n"
       b"ptxas info    : Used 9 registers, 368 bytes cmem[0]\n")


def project_version():
    cm = os.path.join(os.path.dirname(ROOT), "..", "..", "CMakeLists.txt")
    with open(cm) as f:
        return re.search(r"project\(s2lora VERSION ([0-9.]+)", f.read()).group(1)


def u16str(s):
    return struct.pack("<H", len(s)) + s


def cubin_entry(payload, kernels=(b"k_a", b"k_b"), arch=b"sm_90a"):
    """runtime/core/jit.c's format 2, for fuzz_jit_entry.c's key."""
    key = hashlib.sha256(b"s2lora fuzz key").digest()
    var = u16str(arch) + u16str(b"s2lora-gen-1") + u16str(project_version().encode())
    var += struct.pack("<H", len(kernels)) + b"".join(u16str(k) for k in kernels)
    hlen = 88 + len(var)
    fixed = b"S2CUBIN\0" + struct.pack("<IIQ", 2, hlen, len(payload))
    fixed += hashlib.sha256(payload).digest() + key
    return fixed + var + payload


def jit_seeds():
    payload = b"\x7fELF" + bytes(range(60))
    put("jit_entry", "valid", b"\0" + cubin_entry(payload) + SEP + LOG)
    put("jit_entry", "fixed", b"\1" + cubin_entry(b"payload", kernels=()) + SEP + LOG[:120])
    put("jit_entry", "other_arch", b"\1" + cubin_entry(b"x", arch=b"sm_80"))
    put("jit_entry", "format1", b"\0" + b"S2CUBIN\0" + struct.pack("<IIQ", 1, 0, 1) +
        hashlib.sha256(b"x").digest() + b"\0" * 8 + b"x")


# ---- specs (besides specs/ and tests/specs_bad/, which run.sh adds) --------------------------


SPEC = b"""name: fuzz-seed
dtype: fp16
arch: [sm_80, sm_90a]
context_length: 1000
model:
  hidden_size: 256
  intermediate_size: 688
  num_layers: 2
  num_heads: 4
  num_kv_heads: 2
  vocab_size: 264
  max_position_embeddings: 256
s2attn:
  group_size: 96
  shift_mode: roll
lora:
  rank: 16
  targets: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]
  trainable: [embed, norm, lm_head]
"""


def spec_seeds():
    put("spec", "roll_gqa", SPEC)
    put("spec", "overrides", SEP.join([SPEC, b"s2attn.shift_mode=split", b"model.head_dim=128",
                                       b"lora.rank=24"]))
    put("spec", "tile", SEP.join([SPEC, b"tile:fwd_warps=8,fwd_block_n=128,bwd_stages=3"]))
    put("spec", "d256", SEP.join([SPEC, b"model.head_dim=256", b"arch=[sm_90a]",
                                  b"tile:bwd_warps=2"]))


def main():
    if os.path.isdir(ROOT):
        shutil.rmtree(ROOT)
    st_seeds()
    hf_seeds()
    data_seeds()
    tune_seeds()
    jit_seeds()
    spec_seeds()
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(ROOT) for f in fs)
    print(f"{ROOT}: {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

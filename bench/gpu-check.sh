#!/usr/bin/env bash
# The GPU check, in one call on the GPU machine:
#   1. versions and the card;
#   2. a cold and a warm NVRTC build of the default spec (llama2-7b-32k), timed;
#   3. every S²-Attn kernel against the CPU reference (tests/gpu_check.c), fresh random inputs,
#      poisoned outputs, all shift modes, short last group, varlen, GQA, d in {64, 96, 128, 256};
#      then the public C API, libs2lora (tests/api_check.c), attention and LoRA, the same way;
#   4. `s2lora attn --backward` against LongLoRA's S²-Attn written in PyTorch (bench/peers/);
#   5. the GPU model against its CPU twin (tests/model_check.c) and, with transformers and PEFT,
#      bench/peers/llama_peers.py (logits, S²-Attn, one LoRA+ backward, our adapter in PEFT);
#   6. `s2lora train` end to end on the tiny byte-level model (loss falls, a resumed run matches
#      a straight one, --batch 2 matches --grad-accum 2, eval and passkey run), then
#      bench/peers/train_peers.py: tokens/s and memory against transformers + PEFT + LongLoRA's
#      S²-Attn on the same model and data;
#   7. `s2lora tune` of the default spec, attention and LoRA products (timed: the bar is 60 s),
#      whose choices bench then uses;
#   8. `s2lora bench lora` against the frozen base GEMM, untuned, then after
#      `s2lora tune --kernels lora` (cuBLAS algorithms per product), then lora_peers.py;
#   9. `s2lora bench attn` beside the PyTorch peers (bench/peers/attn_peers.py): N = 8k and 16k
#      at d=128, H=32, G=N/4, then N=16k at d=64. S2_BENCH_FULL=1 runs step 2's whole sweep
#      (8k, 16k, 32k, 64k, 100k; alone it fits one call, with the rest it does not);
#      S2_BENCH_SEQLENS=LIST names the d=128 lengths outright; S2_BENCH_NO_PEERS=1 times ours
#      alone (--no-peers: a tile A/B, or lengths where the peers take minutes);
#      S2_BENCH_PEER_IMPLS=LIST runs only those peers (--peer-impls); S2_BENCH_GQA=1 adds
#      LLaMA-2 70B's grouped-query heads (64/8) at S2_BENCH_GQA_SEQLENS (default 16384).
#  Only when named in S2_SECTIONS: ncu (hardware counters of the attention kernels at 16k, or
#  at S2_NCU_SEQLEN; with S2_NCU_SOURCE=KERNEL, e.g. s2_attn_bwd_dkdv, also that kernel's stalls
#  instruction by instruction, ncu's PC sampling, summed up by bench/ncu_source.py),
#  long (LLaMA-2 7B whole, 32 layers, a random checkpoint from `s2lora init`, trained 3 steps at
#  102400 tokens on one GPU with --recompute layer: tokens/s and peak memory, the claim that 100k
#  fits one H100; S2_LONG_SEQLEN names another length; about 4 minutes on an H100),
#  sanitize (compute-sanitizer memcheck, synccheck and racecheck on every gpu_check family) and
#  torch (the Python package, python/, through libs2lora.so: bench/torch_check.py checks
#  s2lora.attention against float64 and SDPA, attn_implementation="s2lora" in a transformers +
#  PEFT step against LongLoRA's roll/fold patch, and times that step beside FlexAttention;
#  s2lora.attention against `$BIN/s2lora attn` on the same tensors, bit for bit;
#  S2_LIB names the library, default $BIN/libs2lora.so).
# Usage from the device tool: `bench/build-carry.sh` here (prints the commit), carry .carry,
#   S2_BIN=.carry/bin S2_COMMIT=<commit> bash bench/gpu-check.sh
# Arguments after the script go to gpu_check (the check section). A new attention tile in one
# call, e.g. gpu_check's tile 8 against the default:
#   S2_SECTIONS="check sanitize bench" S2_SANITIZE_FAMILIES=attn S2_SANITIZE_TILE=8
#   S2_SANITIZE_ONLY="split GQA 8/2" S2_BENCH_NO_PEERS=1 S2_BENCH_SEQLENS=8192,16384,32768
#   S2_BENCH_TILES="bwd_tma=0 bwd_tma=1,bwd_atomic_dq=1,bwd_stages=2" ... --family attn --tile 8
# The binaries are built on a machine with the build dependencies (the GPU machine has no
# libyaml, jansson, nettle or Criterion) and passed in through S2_BIN (default build/).
# Logs go to $OUT when it is set. Prints a short table last; exit status 1 if anything failed.
# Machine-readable outputs are kept for the record and the charts: bench attn's JSON and CSV,
# bench lora's CSVs (untuned, then tuned where the database has the shape) and the trainer's
# train.jsonl files (the tiny run; both sides of train_peers.py per length) go to
# $OUT/data/ as the sections run; at the end bench/plot.py draws $OUT/charts/attn.png, lora.png
# and train.png from them (where a python3 here has matplotlib; the commit and card in the
# titles), and $OUT/data/ is packed into $OUT/data.tar (one file: $OUT brings back at most 8,
# so S2_SECTIONS="train lora bench" returns 3 logs, data.tar and the 3 charts).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
# the settings, checked before anything is removed or run: the ncu section's length
ncu_n=${S2_NCU_SEQLEN:-16384}
case $ncu_n in
'' | *[!0-9]* | 0*)
  echo "gpu-check: S2_NCU_SEQLEN=$ncu_n: the ncu section's sequence length, a positive integer" >&2
  exit 2
  ;;
esac
ncu_src=${S2_NCU_SOURCE:-}
case $ncu_src in
*[!A-Za-z0-9_.*^$\|]*)
  echo "gpu-check: S2_NCU_SOURCE=$ncu_src: a kernel name or regex (letters, digits, _ . * ^ $ |)," \
    "e.g. s2_attn_bwd_dkdv" >&2
  exit 2
  ;;
esac
long_n=${S2_LONG_SEQLEN:-102400}
case $long_n in
'' | *[!0-9]* | 0*)
  echo "gpu-check: S2_LONG_SEQLEN=$long_n: the long section's sequence length, a positive" \
    "integer" >&2
  exit 2
  ;;
esac
BIN=${S2_BIN:-build}
OUTDIR=${OUT:-/tmp/s2lora-gpu-check}
mkdir -p "$OUTDIR"
DATA=$OUTDIR/data # machine-readable outputs, packed into $OUTDIR/data.tar at the end
rm -rf "$DATA" "$OUTDIR/data.tar" "$OUTDIR/charts" # this run's only, never an earlier one's
mkdir -p "$DATA"
export S2LORA_CACHE_DIR=${S2LORA_CACHE_DIR:-/tmp/s2lora-cache}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
rm -rf "$S2LORA_CACHE_DIR"
status=0
# S2_SECTIONS picks sections (default all but ncu, long, sanitize and torch): build check api
# peers model train tune gate lora bench;
# ncu (hardware counters of the attention kernels), long (the whole 7B at 100k), sanitize
# (compute-sanitizer on every gpu_check family) and torch (bench/torch_check.py, about 4
# minutes) run only when named. One
# device call
# may run 10 minutes; the whole script takes about 8 (H100, 2026-11-25 estimate), so a
# session short of time splits it, e.g. S2_SECTIONS="build check peers gate", then "tune bench".
want() { case " ${S2_SECTIONS:-build check api peers model train tune gate lora bench} " in *" $1 "*) return 0 ;; esac; return 1; }

echo "== card"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$BIN/s2lora" version
# the binaries' commit: as given, else what bench/build-carry.sh recorded beside them, else the
# tree's (a copied tree's .git may be stale)
commit=${S2_COMMIT:-$(cat "$BIN/../COMMIT" 2>/dev/null ||
  git rev-parse --short HEAD 2>/dev/null || echo unknown)}
echo "commit $commit"

if want build; then
echo "== build llama2-7b-32k for this device (cold, then warm)"
: >"$OUTDIR/build.txt" # one file for both builds: $OUT brings back at most 8 files
for run in cold warm; do
  t0=$(date +%s%N)
  echo "-- $run" >>"$OUTDIR/build.txt"
  "$BIN/s2lora" build specs/llama2-7b-32k.yaml --arch sm_90a >>"$OUTDIR/build.txt" 2>&1 || status=1
  t1=$(date +%s%N)
  echo "$run build: $(( (t1 - t0) / 1000000 )) ms wall (process start to exit)"
done
cat "$OUTDIR/build.txt"
fi

if want check; then
echo "== kernels vs CPU reference"
"$BIN/s2lora_gpu_check" "$@" 2>&1 | tee "$OUTDIR/gpu_check.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
fi

if want api; then
echo "== the public C API (libs2lora) vs CPU reference"
"$BIN/s2lora_api_check" 2>&1 | tee "$OUTDIR/api_check.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
fi

if want peers; then
echo "== s2lora attn vs LongLoRA in PyTorch"
python3 bench/peers/attn_compare.py "$BIN/s2lora" /tmp/s2lora-peer-specs /tmp/s2lora-peer-work \
  2>&1 | tee "$OUTDIR/peer_compare.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
fi

if want model; then
echo "== the GPU model vs its CPU twin, then vs transformers and PEFT"
"$BIN/s2lora_model_check" 2>&1 | tee "$OUTDIR/model_check.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
model_work=$(mktemp -d /tmp/s2lora-llama-peers.XXXXXX)
python3 bench/peers/llama_peers.py "$BIN/s2lora" "$model_work" 2>&1 | tee -a "$OUTDIR/model_check.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
rm -rf "$model_work"
fi

if want train; then
echo "== s2lora train end to end on the tiny byte-level model, resume, eval, passkey; then speed vs PyTorch"
tw=$(mktemp -d /tmp/s2lora-train.XXXXXX)
# A random tiny-byte-512 checkpoint made by transformers, text from this repository.
python3 - "$tw/base" <<'PY' >"$OUTDIR/train.txt" 2>&1 || status=1
import sys, torch
sys.path.insert(0, "bench/peers")
from transformers import LlamaForCausalLM
from hf_compat import llama_config
torch.manual_seed(1)
cfg = llama_config(factor=8, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=4, head_dim=64, vocab_size=264,
                   max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=False)
LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(sys.argv[1], safe_serialization=True)
print("tiny checkpoint written")
PY
cat README.md specs/README.md runtime/*/*.c runtime/*/*.h gen/*.c templates/*.cuh >"$tw/text.txt"
{
  "$BIN/s2lora" data --bytes "$tw/text.txt" -o "$tw/text.tokens" &&
  "$BIN/s2lora" train specs/tiny-byte-512.yaml --model "$tw/base" --data "$tw/text.tokens" \
    --out "$tw/a" --steps 40 --grad-accum 2 --lr 1e-3 --warmup 5 --save-every 20 &&
  "$BIN/s2lora" train specs/tiny-byte-512.yaml --model "$tw/base" --data "$tw/text.tokens" \
    --out "$tw/c" --steps 40 --grad-accum 1 --batch 2 --lr 1e-3 --warmup 5 --save-every 0 &&
  "$BIN/s2lora" train specs/tiny-byte-512.yaml --model "$tw/base" --data "$tw/text.tokens" \
    --out "$tw/b" --steps 20 --grad-accum 2 --lr 1e-3 --warmup 5 --save-every 20 &&
  "$BIN/s2lora" train specs/tiny-byte-512.yaml --model "$tw/base" --data "$tw/text.tokens" \
    --out "$tw/b" --steps 40 --grad-accum 2 --lr 1e-3 --warmup 5 --save-every 20 --resume &&
  "$BIN/s2lora" eval specs/tiny-byte-512.yaml --model "$tw/base" --data "$tw/text.tokens" \
    --max-windows 8 &&
  "$BIN/s2lora" eval specs/tiny-byte-512.yaml --model "$tw/base" --data "$tw/text.tokens" \
    --adapter "$tw/a/adapter" --trainable "$tw/a/trainable.safetensors" --max-windows 8 &&
  "$BIN/s2lora" eval specs/tiny-byte-512.yaml --model "$tw/base" --adapter "$tw/a/adapter" \
    --trainable "$tw/a/trainable.safetensors" --passkey 4
} >>"$OUTDIR/train.txt" 2>&1 || status=1
python3 - "$tw" <<'PY' 2>&1 | tee -a "$OUTDIR/train.txt"
import json, sys
w = sys.argv[1]
rows = lambda d: [json.loads(l) for l in open(f"{w}/{d}/train.jsonl")]
a, b = rows("a"), rows("b")
first, last = a[0]["loss"], sum(r["loss"] for r in a[-5:]) / 5
print(f"train: loss {first:.4f} at step 1, {last:.4f} over the last 5 of {len(a)} steps: "
      f"{'PASS' if last < first - 0.5 else 'FAIL'} (must fall by 0.5)")
tail_a = {r["step"]: r["loss"] for r in a if r["step"] > 20}
tail_b = {r["step"]: r["loss"] for r in b if r["step"] > 20}
worst = max(abs(tail_a[s] - tail_b[s]) / tail_a[s] for s in tail_a) if tail_a.keys() == tail_b.keys() else float("inf")
print(f"resume: steps 21-40 of a resumed run vs a straight run, worst relative loss difference "
      f"{worst:.2e}: {'PASS' if worst < 1e-3 else 'FAIL'}")
# --batch 2 --grad-accum 1: the same two sequences a step as --grad-accum 2, in one varlen
# micro-batch; only the rounding differs (GEMMs of another M, the sum of the gradients)
c = rows("c")
d = [abs(x["loss"] - y["loss"]) / x["loss"] for x, y in zip(a, c)]
ok = len(c) == len(a) and d[0] < 1e-3 and max(d) < 2e-2
rate = lambda r: sorted(x["tokens_per_s"] for x in r[5:])[len(r[5:]) // 2]
print(f"batch: --batch 2 vs --grad-accum 2, relative loss difference {d[0]:.2e} at step 1 "
      f"(< 1e-3), worst {max(d):.2e} over {len(c)} steps (< 2e-2): {'PASS' if ok else 'FAIL'}; "
      f"{rate(c):.0f} vs {rate(a):.0f} tokens/s")
PY
grep -E "^(eval|passkey) " "$OUTDIR/train.txt"
python3 bench/peers/train_peers.py "$BIN/s2lora" "$tw/peers" 2>&1 | tee -a "$OUTDIR/train.txt" | tail -5
[ "${PIPESTATUS[0]}" = 0 ] || status=1
grep -q "FAIL" "$OUTDIR/train.txt" && status=1
# The step logs for the record and the charts: the tiny run, and s2lora's run at each length of
# train_peers.py (WORK/LENGTH/s2lora-train/train.jsonl).
[ -f "$tw/a/train.jsonl" ] && cp "$tw/a/train.jsonl" "$DATA/train-tiny.jsonl"
for f in "$tw"/peers/*/s2lora-train/train.jsonl; do
  [ -f "$f" ] && cp "$f" "$DATA/train-$(basename "$(dirname "$(dirname "$f")")").jsonl"
done
for f in "$tw"/peers/*/torch-train/train.jsonl; do # the PyTorch stack's steps beside them
  [ -f "$f" ] && cp "$f" "$DATA/train-torch-$(basename "$(dirname "$(dirname "$f")")").jsonl"
done
rm -rf "$tw"
fi

if want long; then
echo "== LLaMA-2 7B, 32 layers, trained at $long_n tokens on one GPU (a random checkpoint)"
# specs/llama2-7b-100k.yaml at its own length or another (context_length: the RoPE factor and
# the groups follow it); the data: this repository's text as byte tokens, ids the 32000-token
# vocabulary holds. Three steps of one sequence; the first builds and warms up.
lw=$(mktemp -d /tmp/s2lora-long.XXXXXX) long_steps=3
cat README.md runtime/*/*.c templates/*.cuh >"$lw/text.txt"
t0=$(date +%s)
{
  "$BIN/s2lora" data --bytes "$lw/text.txt" -o "$lw/text.tokens" &&
    "$BIN/s2lora" init specs/llama2-7b-100k.yaml --set context_length="$long_n" -o "$lw/m" \
      --seed 1 &&
    echo "long: init $(($(date +%s) - t0)) s" &&
    "$BIN/s2lora" train specs/llama2-7b-100k.yaml --set context_length="$long_n" \
      --model "$lw/m" --data "$lw/text.tokens" --out "$lw/o" --steps "$long_steps" --grad-accum 1 \
      --save-every 0 --warmup 1 --recompute layer
} >"$OUTDIR/long.txt" 2>&1 || status=1
grep -E "^long: |^s2lora: (train|recompute)|out of memory|error" "$OUTDIR/long.txt" | head -8
python3 - "$lw/o/train.jsonl" "$long_n" "$long_steps" <<'PY' 2>&1 | tee -a "$OUTDIR/long.txt"
import json, sys
try:
    r = [json.loads(l) for l in open(sys.argv[1])]
except OSError:
    print(f"long: 7B at {sys.argv[2]} tokens: no train.jsonl (see long.txt): FAIL"); sys.exit(0)
last = r[-1]
print(f"long: 7B at {sys.argv[2]} tokens on one GPU: {len(r)} steps, step {last['step']} "
      f"{last['tokens_per_s']:.0f} tokens/s (MFU {last['mfu']:.3f}), peak "
      f"{max(last['peak_mem_gib']):.2f} GiB, loss {last['loss']:.4f}: "
      f"{'PASS' if len(r) == int(sys.argv[3]) else 'FAIL'}")
PY
[ -f "$lw/o/train.jsonl" ] && cp "$lw/o/train.jsonl" "$DATA/long-7b-$long_n.jsonl"
grep -q "^long: .*FAIL" "$OUTDIR/long.txt" && status=1
rm -rf "$lw"
fi

if want tune; then
echo "== tune llama2-7b-32k (N = 32768) on this GPU"
t0=$(date +%s%N)
# Progress and summary in one file: $OUT brings back at most 8 files.
"$BIN/s2lora" tune specs/llama2-7b-32k.yaml >"$OUTDIR/tune.txt" 2>&1 || { status=1; tail -5 "$OUTDIR/tune.txt"; }
t1=$(date +%s%N)
grep -v '^s2lora: ' "$OUTDIR/tune.txt"
echo "tune: $(( (t1 - t0) / 1000000 )) ms wall; REJECTED candidates: $(grep -c REJECTED "$OUTDIR/tune.txt")" |
  tee -a "$OUTDIR/tune.txt"
fi

if want gate; then
echo "== the tuner's gate rejects a deliberately broken candidate (test build)"
BROKEN=${S2_BIN_BROKEN:-.carry/bin-broken}
gate_db=$(mktemp -d /tmp/s2lora-gate.XXXXXX)
if [ -x "$BROKEN/s2lora" ]; then
  "$BROKEN/s2lora" tune specs/tiny-byte-512.yaml --kernels attn_fwd --seqlens 4096 \
    --db "$gate_db" >"$gate_db/gate.txt" 2>&1 || status=1
  rejected=$(grep -c REJECTED "$gate_db/gate.txt" || true)
  broken=$(grep REJECTED "$gate_db/gate.txt" | grep -c 'test_broken=1' || true)
  if [ "$rejected" = 1 ] && [ "$broken" = 1 ]; then
    echo "gate: PASS (the broken candidate, and only it, was rejected)"
  else
    echo "gate: FAIL ($rejected rejected, $broken of them the broken candidate)"; status=1
    grep REJECTED "$gate_db/gate.txt" | head -5
    tail -5 "$gate_db/gate.txt"
  fi
else
  echo "gate: NOT RUN: no test build at $BROKEN (bench/build-carry.sh makes one)"; status=1
fi
rm -rf "$gate_db"
fi

if want lora; then
echo "== bench lora vs the frozen base GEMM, then the PyTorch peers on the same shapes"
lora_M=${S2_LORA_M:-16384} lora_dims=${S2_LORA_DIMS:-4096} lora_ranks=${S2_LORA_RANKS:-8,16,64}
# Untuned first (a database of its own), then the LoRA products tuned at the first M for the
# default spec's groups (7B: its o group is the dim=4096, r=8 case) and the same bench again.
lora_db=$(mktemp -d /tmp/s2lora-lora-db.XXXXXX)
S2LORA_CACHE_DIR=$lora_db "$BIN/s2lora" bench lora --tokens "$lora_M" --dims "$lora_dims" \
  --ranks "$lora_ranks" --csv "$DATA/bench_lora_untuned.csv" >"$OUTDIR/bench_lora.txt" 2>&1 ||
  status=1
lora_m1=${lora_M%%,*}
t0=$(date +%s%N)
"$BIN/s2lora" tune specs/llama2-7b-32k.yaml --kernels lora --seqlens "$lora_m1" \
  >>"$OUTDIR/bench_lora.txt" 2>&1 || status=1
t1=$(date +%s%N)
echo "tune --kernels lora at M=$lora_m1: $(( (t1 - t0) / 1000000 )) ms wall" | tee -a "$OUTDIR/bench_lora.txt"
echo "-- again, with the tuned products where the database has them" >>"$OUTDIR/bench_lora.txt"
"$BIN/s2lora" bench lora --tokens "$lora_M" --dims "$lora_dims" --ranks "$lora_ranks" \
  --csv "$DATA/bench_lora.csv" >>"$OUTDIR/bench_lora.txt" 2>&1 || status=1
rm -rf "$lora_db"
python3 bench/peers/lora_peers.py --M "$lora_M" --dims "$lora_dims" --ranks "$lora_ranks" \
  >>"$OUTDIR/bench_lora.txt" 2>&1 || status=1
cat "$OUTDIR/bench_lora.txt"
fi

if want bench; then
echo "== bench attn vs peers"
# llama2-7b-32k gives G by group_ratio 0.25: bench reloads it at each N, so G = N/4, S = G/2.
# One device command may run 10 minutes: the whole script with the sweep to 32k took longer
# than 9 (2026-11-25, H100), so the default sweep is 8k and 16k; S2_BENCH_FULL=1 runs 8k..100k
# (run it in a call of its own), S2_BENCH_SEQLENS names any list.
if [ "${S2_BENCH_FULL:-0}" = 1 ]; then
  bench_seqlens=8192,16384,32768,65536,102400
else
  bench_seqlens=8192,16384
fi
bench_seqlens=${S2_BENCH_SEQLENS:-$bench_seqlens}
# S2_BENCH_TILES="T1 T2 ...": one s2lora row per tile (each a --tile value, e.g. fwd_mbar=0,bwd_mbar=0)
# instead of the tuned-or-default tile, to compare tiles beside the peers in one run.
bench_tile_args=()
for t in ${S2_BENCH_TILES:-}; do bench_tile_args+=(--tile "$t"); done
[ "${S2_BENCH_NO_PEERS:-0}" = 1 ] && bench_tile_args+=(--no-peers)
# S2_BENCH_PEER_IMPLS=LIST: only these peers (e.g. flex-split,sdpa-cudnn: the fastest two; the
# others take minutes at 32k and more)
[ -n "${S2_BENCH_PEER_IMPLS:-}" ] && bench_tile_args+=(--peer-impls "$S2_BENCH_PEER_IMPLS")
bench_tmp=$(mktemp -d /tmp/s2lora-bench.XXXXXX)
"$BIN/s2lora" bench attn specs/llama2-7b-32k.yaml --seqlens "$bench_seqlens" "${bench_tile_args[@]}" \
  --csv "$bench_tmp/d128.csv" --json "$bench_tmp/d128.json" 2>&1 | tee "$OUTDIR/bench_attn.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
"$BIN/s2lora" bench attn specs/llama2-7b-16k.yaml --set model.head_dim=64 "${bench_tile_args[@]}" \
  --csv "$bench_tmp/d64.csv" --json "$bench_tmp/d64.json" 2>&1 | tee -a "$OUTDIR/bench_attn.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
# S2_BENCH_GQA=1: grouped-query attention too, LLaMA-2 70B's heads (64 query heads sharing 8
# key/value heads, d = 128) at S2_BENCH_GQA_SEQLENS (default 16384), G = N/4.
if [ "${S2_BENCH_GQA:-0}" = 1 ]; then
  "$BIN/s2lora" bench attn specs/llama2-70b-32k.yaml --seqlens "${S2_BENCH_GQA_SEQLENS:-16384}" \
    "${bench_tile_args[@]}" --csv "$bench_tmp/gqa.csv" --json "$bench_tmp/gqa.json" 2>&1 |
    tee -a "$OUTDIR/bench_attn.txt"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
# One CSV and one JSON for all runs: $OUT brings back at most 8 files.
bench_csvs=() bench_jsons=()
for part in d128 d64 gqa; do
  [ -f "$bench_tmp/$part.csv" ] && bench_csvs+=("$bench_tmp/$part.csv")
  [ -f "$bench_tmp/$part.json" ] && bench_jsons+=("$bench_tmp/$part.json")
done
if [ ${#bench_csvs[@]} -gt 0 ]; then
  awk 'FNR == 1 && NR != 1 { next } { print }' "${bench_csvs[@]}" >"$DATA/bench_attn.csv"
fi
if [ ${#bench_jsons[@]} -gt 0 ]; then
  python3 -c 'import json, sys; json.dump({"runs": [json.load(open(p)) for p in sys.argv[1:]]}, sys.stdout, indent=1); print()' \
    "${bench_jsons[@]}" >"$DATA/bench_attn.json"
fi
rm -rf "$bench_tmp"
fi

if want ncu; then
# Not in the default sections: where the attention kernels lose time, read from the hardware
# counters (tensor pipe, shared-memory bank conflicts, issue stalls, occupancy) at N = 16k
# (S2_NCU_SEQLEN names another), d = 128, H = 32, one launch of each kernel. Costs about a
# minute of device time at 16k.
echo "== ncu: the attention kernels at N = $ncu_n (S2_NCU_TILE: one --tile)"
ncu_tile_args=()
[ -n "${S2_NCU_TILE:-}" ] && ncu_tile_args=(--tile "$S2_NCU_TILE")
metrics=gpu__time_duration.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed,\
sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,\
l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,\
l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_st.sum,\
l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,\
sm__warps_active.avg.pct_of_peak_sustained_active,\
smsp__average_warp_latency_issue_stalled_barrier,\
smsp__average_warp_latency_issue_stalled_long_scoreboard,\
smsp__average_warp_latency_issue_stalled_short_scoreboard,\
smsp__average_warp_latency_issue_stalled_math_pipe_throttle,\
smsp__average_warp_latency_issue_stalled_mio_throttle,\
smsp__average_warp_latency_issue_stalled_wait,\
smsp__inst_executed.sum,launch__registers_per_thread,launch__occupancy_limit_registers,\
lts__t_sectors_op_red.sum,lts__throughput.avg.pct_of_peak_sustained_elapsed,\
dram__throughput.avg.pct_of_peak_sustained_elapsed
# the program profiled: one forward and one forward+backward of each kernel at N = ncu_n
ncu_bench=("$BIN/s2lora" bench attn specs/llama2-7b-32k.yaml --seqlens "$ncu_n" --no-peers
  --reps 1 --warmup 0 "${ncu_tile_args[@]}")
ncu --target-processes all -k regex:'^s2_attn' --launch-skip 0 --launch-count 8 \
  --metrics "$metrics" --csv --page raw "${ncu_bench[@]}" >"$OUTDIR/ncu.txt" 2>&1 || status=1
if [ -n "$ncu_src" ]; then
  # one launch of the named kernel with PC sampling; the report's source page (SASS) to a CSV,
  # summed up by bench/ncu_source.py; the report itself is not kept (no GUI here)
  ncu --target-processes all -k regex:"$ncu_src" --launch-count 1 --section SourceCounters \
    --section WarpStateStats -f -o "$OUTDIR/ncu-source" "${ncu_bench[@]}" --no-gemm \
    >"$OUTDIR/ncu-source.txt" 2>&1 &&
    ncu -i "$OUTDIR/ncu-source.ncu-rep" --page source --csv --print-source sass \
      >"$OUTDIR/ncu-source.csv" 2>>"$OUTDIR/ncu-source.txt" &&
    python3 bench/ncu_source.py "$OUTDIR/ncu-source.csv" --top 30 >>"$OUTDIR/ncu-source.txt" ||
    status=1
  rm -f "$OUTDIR/ncu-source.ncu-rep"
  [ -f "$OUTDIR/ncu-source.csv" ] && gzip -f "$OUTDIR/ncu-source.csv"
  grep -A40 "^ncu source: " "$OUTDIR/ncu-source.txt" || tail -5 "$OUTDIR/ncu-source.txt"
fi
python3 - "$OUTDIR/ncu.txt" "$metrics" <<'PY'
import csv, sys
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"')) if len(r) > 5]
if len(rows) < 3:
    print("ncu: no rows"); sys.exit(0)
head = rows[0]
# The metrics asked for (each with the roll-ups ncu adds: .sum, .avg, .ratio, ...), not the
# device attributes the raw page also lists.
asked = sys.argv[2].split(",")
keys = [k for k in head if any(k == m or k.startswith(m + ".") for m in asked)]
for r in rows[2:]:
    d = dict(zip(head, r))
    print(d.get("Kernel Name", "?")[:28])
    for k in keys:
        print(f"   {k:<78} {d.get(k, '')}")
PY
fi

if want torch; then
echo "== the Python package vs PyTorch: s2lora.attention, attn_implementation=s2lora (bench/torch_check.py)"
# The GPU machine has no pip: the package runs from the tree.
PYTHONPATH=python python3 bench/torch_check.py --lib "${S2_LIB:-$BIN/libs2lora.so}" \
  --bin "$BIN/s2lora" --json "$OUTDIR/torch_check.json" 2>&1 | tee "$OUTDIR/torch_check.txt"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
fi

if want sanitize; then
# Not in the default sections: compute-sanitizer's memcheck (out-of-bounds and misaligned
# accesses, leaks of device memory), synccheck (barriers not reached by every thread) and
# racecheck (shared-memory hazards between threads) over every gpu_check family: the attention
# cases on every tile, the LoRA linears and the trainer's kernels, one run per tool and family,
# each under a time limit (S2_SANITIZE_TIMEOUT seconds, default 170). S2_SANITIZE_TOOLS picks
# tools, S2_SANITIZE_FAMILIES families; S2_SANITIZE_ONLY narrows every run to gpu_check's
# cases whose names hold it, S2_SANITIZE_TILE to gpu_check's attention tile of that number
# (--tile). One line a run in the summary: tool, family, exit, errors.
san=${S2_SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
: >"$OUTDIR/sanitize.txt"
for tool in ${S2_SANITIZE_TOOLS:-memcheck synccheck racecheck}; do
  for fam in ${S2_SANITIZE_FAMILIES:-attn lora train}; do
    only=()
    [ -n "${S2_SANITIZE_ONLY:-}" ] && only=(--only "$S2_SANITIZE_ONLY")
    # (a tile is an attention tile: gpu_check refuses --tile beside another family)
    [ -n "${S2_SANITIZE_TILE:-}" ] && [ "$fam" = attn ] && only+=(--tile "$S2_SANITIZE_TILE")
    extra=()
    [ "$tool" = memcheck ] && extra=(--leak-check full)
    echo "== compute-sanitizer --tool $tool, gpu_check --family $fam ${only[*]}" \
      >>"$OUTDIR/sanitize.txt"
    t0=$(date +%s)
    timeout -k 10 "${S2_SANITIZE_TIMEOUT:-170}" "$san" --tool "$tool" "${extra[@]}" \
      --error-exitcode 9 "$BIN/s2lora_gpu_check" --family "$fam" "${only[@]}" \
      >"$OUTDIR/san-run.txt" 2>&1
    rc=$?
    t1=$(date +%s)
    cat "$OUTDIR/san-run.txt" >>"$OUTDIR/sanitize.txt"
    runs=$(grep -cE ' (PASS|FAIL)' "$OUTDIR/san-run.txt")
    errs=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUTDIR/san-run.txt" | tail -n 1)
    # Reports are attributed by kernel: ours are named s2_*; others are the libraries' (cuBLAS's
    # nvjet GEMMs in the LoRA family, whose racecheck reports are counted, not ours to fix).
    ours=$(grep -E '^========= +(Invalid|Error|Race|Barrier|Program hit)' -A2 \
      "$OUTDIR/san-run.txt" | grep -cE '(at|in) s2_[a-z0-9_]+')
    lib=$(grep -E '^========= +(Invalid|Error|Race|Barrier)' "$OUTDIR/san-run.txt" |
      grep -vcE 's2_[a-z0-9_]+')
    line="sanitize $tool $fam: exit $rc, $runs case runs, $((t1 - t0)) s, reports in s2lora's"
    line="$line kernels $ours, in library kernels $lib; ${errs#========= }"
    [ "$rc" = 124 ] && line="$line (time limit: the runs above finished)"
    echo "$line" | tee -a "$OUTDIR/sanitize.txt"
    if [ "$rc" != 0 ] && ! { [ "$rc" = 9 ] && [ "$ours" = 0 ] && [ "$lib" -gt 0 ]; }; then
      status=1
    fi
  done
done
rm -f "$OUTDIR/san-run.txt"
fi

echo "== charts of this run's outputs (bench/plot.py)"
plot_py=""
for p in python3 /usr/bin/python3; do
  if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import matplotlib' >/dev/null 2>&1; then
    plot_py=$p
    break
  fi
done
plot_args=()
[ -f "$DATA/bench_attn.json" ] && plot_args+=(--attn "$DATA/bench_attn.json")
[ -f "$DATA/bench_lora_untuned.csv" ] && plot_args+=(--lora "untuned=$DATA/bench_lora_untuned.csv")
[ -f "$DATA/bench_lora.csv" ] && plot_args+=(--lora "tuned=$DATA/bench_lora.csv")
# train_peers.py's lengths only: the tiny model's tokens/s is of another scale.
for f in "$DATA"/train-[0-9]*.jsonl; do
  n=$(basename "$f" .jsonl)
  [ -f "$f" ] && plot_args+=(--train "s2lora, ${n#train-} tokens=$f")
done
for f in "$DATA"/train-torch-[0-9]*.jsonl; do # memory: what PyTorch's allocator holds
  n=$(basename "$f" .jsonl)
  [ -f "$f" ] && plot_args+=(--train "PyTorch stack, ${n#train-torch-} tokens (allocated)=$f")
done
if [ ${#plot_args[@]} = 0 ]; then
  echo "charts: none (no section wrote bench or trainer outputs)"
elif [ -z "$plot_py" ]; then
  echo "charts: NOT MADE: no python3 here has matplotlib (the outputs are in data.tar)"
else
  card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
  if ! "$plot_py" bench/plot.py "${plot_args[@]}" --card "$card" --commit "$commit" \
    -o "$OUTDIR/charts" 2>&1; then
    echo "charts: FAIL (bench/plot.py)"
    status=1
  fi
fi
if [ -n "$(ls -A "$DATA")" ]; then
  tar -cf "$OUTDIR/data.tar" -C "$OUTDIR" data && rm -rf "$DATA"
else
  rmdir "$DATA"
fi

echo "== summary"
grep -v '^s2lora: ' "$OUTDIR/tune.txt" 2>/dev/null
grep -E 'PASS|FAIL|ERROR' "$OUTDIR/gpu_check.txt" 2>/dev/null | awk '{print $NF}' | sort | uniq -c
grep -E '^sanitize ' "$OUTDIR/sanitize.txt" 2>/dev/null
tail -n 1 "$OUTDIR/gpu_check.txt" 2>/dev/null
grep -E '^api_check: [0-9]+ of|^api_check: (PASS|FAIL)$' "$OUTDIR/api_check.txt" 2>/dev/null
grep -E 'PASS|FAIL' "$OUTDIR/peer_compare.txt" 2>/dev/null | awk '{printf "peer %-16s %s\n", $1, $NF}'
grep -E '^(model_check|llama_peers): (PASS|FAIL)' "$OUTDIR/model_check.txt" 2>/dev/null
grep -E '^(train|resume|batch): |: s2lora / pytorch' "$OUTDIR/train.txt" 2>/dev/null
grep -E '^long: ' "$OUTDIR/long.txt" 2>/dev/null
grep -E '^(bench attn:|card: |== |impl |s2lora|sdpa-|flex-|fastest peer|no peer)' "$OUTDIR/bench_attn.txt" 2>/dev/null
grep -E '^compute-sanitizer |ERROR SUMMARY|RACECHECK SUMMARY|^gpu_check: [0-9]' "$OUTDIR/sanitize.txt" 2>/dev/null
grep -E '^(FAIL |torch_check: )' "$OUTDIR/torch_check.txt" 2>/dev/null
echo "gpu-check status: $status"
exit $status

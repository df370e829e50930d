#!/usr/bin/env bash
# Data-parallel training on one host with two GPUs (or more; two are used), in one call on the
# GPU machine. Sections (S2_SECTIONS picks some; default all):
#   bitexact  one GPU: `s2lora launch --gpus 1 -- train` (an NCCL world of one) against plain
#             `s2lora train`, 20 steps of the tiny model: the saved states (masters, AdamW
#             moments, step, data position, the loss EMA in %.17g), the adapters and every
#             train.jsonl loss and grad_norm must be identical, byte for byte;
#   scaling   LLaMA-2 7B at 8k (a random checkpoint from `s2lora init`, 13 GB), LoRA+, the same
#             work a GPU (--grad-accum 2 on each): one GPU, then two, in this call; tokens/s
#             (median of steps 3..8) and the ratio (2.0 is perfect scaling);
#   curves    the tiny model, the same global batch of 8 sequences: one GPU with --grad-accum 8
#             against two with --grad-accum 4, 24 steps; the worst relative loss difference a
#             step (only the summation order differs);
#   transport NCCL_DEBUG=INFO on two ranks: NCCL's version and the transport lines (P2P, NVLS,
#             SHM, NET) of the communicator the trainer builds;
#   kill      two ranks started by hand, as srun or mpirun would (no launcher to stop them), with
#             S2LORA_NCCL_TIMEOUT=30: rank 1 gets SIGKILL mid-run; rank 0 must exit non-zero
#             within 60 s, naming the collective; then the same under `s2lora launch`, which
#             stops the other rank at once;
#   kill1     one GPU: the only rank of `launch --gpus 1` gets SIGKILL mid-run: the launcher exits
#             non-zero within 60 s, and --resume continues from the last state it saved;
#   resume    the tiny model: 16 steps straight on two GPUs; 8 steps on two, saved, then resumed
#             on two and (a copy) on one GPU (--grad-accum derived from the state's global batch)
#             to 16; steps 9..16 of each against the straight run;
#   sp        sequence parallel (`train --sp 2`, world = dp 1 x sp 2): (1) the tiny model at 4096
#             tokens, sp 2 against one GPU, 20 steps: worst relative loss difference < 2e-2
#             (bf16 halo sums, and sp > 1 leaves the sequence's last row unlabelled: 4095 labels
#             against 4096), "sp: curves PASS"; the first log lines show "dp 1 x sp 2", each
#             chunk's rows and its halo MiB a layer; (2) LLaMA-2 7B (random, llama2-7b-100k):
#             one GPU at 100k against two GPUs at 200k with --sp 2, 3 steps each: tokens/s per
#             GPU (expected at or below the 100k figure: attention work a token grows with the
#             group, plus the halo exchange) and each rank's peak memory (about the one-GPU
#             100k peak plus the halo rows' K/V); then one GPU at 200k: expected to exit 1 with
#             an out-of-memory message (or run, which the summary says).
# Usage from the device tool (a machine with two GPUs): `bench/build-carry.sh` here (prints
# the commit), carry .carry, then
#   S2_BIN=.carry/bin S2_COMMIT=<commit> bash bench/multi-gpu.sh
# (S2_SECTIONS="bitexact kill1" runs on one GPU.) NCCL: the system's libnccl.so.2, else the
# nvidia-nccl wheel's (PyTorch's). Logs in $OUT (default /tmp/s2lora-multi-gpu): multi-gpu.txt
# (everything) and summary.txt (the table printed last). Exit status 1 if a check failed.
# About 6 minutes on two H100s, most of it the 7B checkpoint (written once per call) and its
# loading; S2_SECTIONS="scaling" alone takes about 4.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
BIN=${S2_BIN:-build}
S="$BIN/s2lora"
OUTDIR=${OUT:-/tmp/s2lora-multi-gpu}
mkdir -p "$OUTDIR"
LOG="$OUTDIR/multi-gpu.txt"
SUM="$OUTDIR/summary.txt"
: >"$LOG"
: >"$SUM"
export S2LORA_CACHE_DIR=${S2LORA_CACHE_DIR:-/tmp/s2lora-cache}
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if ! ldconfig -p 2>/dev/null | grep -q 'libnccl\.so\.2 '; then
  nccl_dir=$(python3 -c 'import os, nvidia.nccl as n
print(os.path.join(list(n.__path__)[0], "lib"))' 2>/dev/null)
  [ -n "$nccl_dir" ] && export LD_LIBRARY_PATH="$nccl_dir:$LD_LIBRARY_PATH"
fi
# a launcher around this script must not leak its world into the runs below
unset RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE S2LORA_RENDEZVOUS S2LORA_WORLD_FROM \
  S2LORA_LAUNCH_ID S2LORA_NCCL_TIMEOUT
status=0
SECTIONS=${S2_SECTIONS:-bitexact scaling curves transport kill kill1 resume sp}
want() { case " $SECTIONS " in *" $1 "*) return 0 ;; esac; return 1; }
say() { echo "$*" | tee -a "$SUM"; }
fail() { say "FAIL: $*"; status=1; }
W=$(mktemp -d /tmp/s2lora-mgpu.XXXXXX)
trap 'rm -rf "$W"' EXIT

echo "== card" | tee -a "$LOG"
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader | tee -a "$LOG"
nvidia-smi topo -m 2>/dev/null | head -4 | tee -a "$LOG"
"$S" version | tee -a "$LOG"
# the binaries' commit: as given, else what bench/build-carry.sh recorded beside them, else the
# tree's (a copied tree's .git may be stale)
commit=${S2_COMMIT:-$(cat "$BIN/../COMMIT" 2>/dev/null ||
  git rev-parse --short HEAD 2>/dev/null || echo unknown)}
say "commit $commit, $(nvidia-smi -L | wc -l) GPUs"

# The tiny model (random, from its spec) and this repository's text as byte tokens.
tiny() {
  [ -f "$W/tiny/config.json" ] && return 0
  "$S" init specs/tiny-byte-512.yaml -o "$W/tiny" --seed 1 >>"$LOG" 2>&1 &&
    cat README.md specs/README.md runtime/*/*.c runtime/*/*.h gen/*.c templates/*.cuh >"$W/text.txt" &&
    "$S" data --bytes "$W/text.txt" -o "$W/text.tokens" >>"$LOG" 2>&1
}
TT=(train specs/tiny-byte-512.yaml --model "$W/tiny" --data "$W/text.tokens" --lr 1e-3
  --warmup 5 --recompute layer --save-every 0)

# python3 - A B FIRST LAST: worst relative loss difference over steps FIRST..LAST of two logs
worst_diff() {
  python3 - "$@" <<'PY'
import json, sys
a, b, lo, hi = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rows = lambda p: {r["step"]: r for r in map(json.loads, open(p))}
ra, rb = rows(a), rows(b)
steps = [s for s in range(lo, hi + 1)]
if not all(s in ra and s in rb for s in steps):
    print("inf missing-steps"); sys.exit()
w = max(abs(ra[s]["loss"] - rb[s]["loss"]) / abs(ra[s]["loss"]) for s in steps)
print(f"{w:.3e} " + " ".join(f"{s}:{ra[s]['loss']:.5f}/{rb[s]['loss']:.5f}" for s in steps[:4]))
PY
}

if want bitexact; then
  echo "== bitexact: launch --gpus 1 -- train against plain train" | tee -a "$LOG"
  tiny || fail "tiny inputs"
  "$S" "${TT[@]}" --out "$W/plain" --steps 20 --grad-accum 2 --save-every 10 >>"$LOG" 2>&1 ||
    fail "plain train"
  "$S" launch --gpus 1 -- "${TT[@]}" --out "$W/one" --steps 20 --grad-accum 2 --save-every 10 \
    >>"$LOG" 2>&1 || fail "launch --gpus 1 train"
  same=1
  for f in state/state-0000000010.safetensors state/state-0000000020.safetensors \
    adapter/adapter_model.safetensors trainable.safetensors; do
    if cmp -s "$W/plain/$f" "$W/one/$f"; then
      say "bitexact: $f identical ($(sha256sum <"$W/one/$f" | cut -c1-16))"
    else
      same=0
      say "bitexact: $f DIFFERS"
    fi
  done
  # the log's loss and grad_norm columns, step by step
  python3 - "$W/plain/train.jsonl" "$W/one/train.jsonl" <<'PY' | tee -a "$SUM"
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
ok = len(a) == len(b) == 20 and all((x["loss"], x["grad_norm"], x["loss_ema"], x["tokens"]) ==
                                     (y["loss"], y["grad_norm"], y["loss_ema"], y["tokens"])
                                     for x, y in zip(a, b))
print(f"bitexact: train.jsonl loss, loss_ema, grad_norm, tokens of {len(a)} / {len(b)} steps "
      f"{'identical' if ok else 'DIFFER'}; world_size {b[-1].get('world_size')}, "
      f"dp {b[-1].get('dp')}; step 20 loss {a[-1]['loss']} / {b[-1]['loss']}")
sys.exit(0 if ok else 1)
PY
  [ "${PIPESTATUS[0]}" = 0 ] || same=0
  if [ "$same" = 1 ]; then
    say "bitexact: PASS"
  else
    fail "bitexact: world of one differs from plain train"
  fi
fi

if want scaling; then
  echo "== scaling: LLaMA-2 7B at 8k, LoRA+, --grad-accum 2 a GPU, one GPU then two" | tee -a "$LOG"
  tiny || fail "tiny inputs"
  if [ ! -f "$W/7b/config.json" ]; then
    t0=$(date +%s)
    "$S" init specs/llama2-7b-8k.yaml -o "$W/7b" --seed 1 >>"$LOG" 2>&1 || fail "7B init"
    echo "7B checkpoint written in $(( $(date +%s) - t0 )) s" | tee -a "$LOG"
  fi
  for g in 1 2; do
    "$S" launch --gpus "$g" -- train specs/llama2-7b-8k.yaml --model "$W/7b" \
      --data "$W/text.tokens" --out "$W/s$g" --steps 8 --grad-accum 2 --save-every 0 \
      --warmup 2 >>"$LOG" 2>&1 || fail "7B train on $g GPU(s)"
    grep -E "data parallel|optimizer states" "$LOG" | tail -2 >>"$SUM"
  done
  python3 - "$W/s1/train.jsonl" "$W/s2/train.jsonl" <<'PY' | tee -a "$SUM"
import json, statistics, sys
def tps(p):
    r = [json.loads(l) for l in open(p)]
    return statistics.median(x["tokens_per_s"] for x in r if x["step"] >= 3), r[-1]
try:
    (t1, l1), (t2, l2) = tps(sys.argv[1]), tps(sys.argv[2])
    print(f"scaling 7B 8k: 1 GPU {t1:.0f} tok/s, 2 GPUs {t2:.0f} tok/s, ratio {t2 / t1:.3f} "
          f"(perfect 2.0); peak GiB by rank: {l1['peak_mem_gib']} / {l2['peak_mem_gib']}; "
          f"slowest-rank step {l2['seconds']:.3f} s")
except Exception as e:
    print(f"scaling: FAIL ({e})")
PY
  grep -q "scaling: FAIL" "$SUM" && status=1
fi

if want curves; then
  echo "== curves: one GPU x 8 micro-batches against two GPUs x 4, 24 steps" | tee -a "$LOG"
  tiny || fail "tiny inputs"
  "$S" launch --gpus 1 -- "${TT[@]}" --out "$W/c1" --steps 24 --grad-accum 8 >>"$LOG" 2>&1 ||
    fail "curves: one GPU"
  "$S" launch --gpus 2 --log-dir "$W/c2logs" -- "${TT[@]}" --out "$W/c2" --steps 24 \
    --grad-accum 4 >>"$LOG" 2>&1 || fail "curves: two GPUs"
  read -r worst rest < <(worst_diff "$W/c1/train.jsonl" "$W/c2/train.jsonl" 1 24)
  say "curves: worst relative loss difference over 24 steps ${worst} (${rest})"
  if python3 -c "import sys; sys.exit(0 if float('$worst') < 1e-2 else 1)"; then
    say "curves: PASS"
  else
    fail "curves: world 1 and world 2 differ by more than 1e-2"
  fi
fi

if want transport; then
  echo "== transport: NCCL_DEBUG=INFO" | tee -a "$LOG"
  tiny || fail "tiny inputs"
  NCCL_DEBUG=INFO "$S" launch --gpus 2 --log-dir "$W/tlogs" -- "${TT[@]}" --out "$W/t" \
    --steps 1 --grad-accum 1 >"$W/nccl.txt" 2>&1 || fail "transport run"
  cat "$W/nccl.txt" >>"$LOG"
  grep -m1 -E "NCCL version" "$W/nccl.txt" | sed 's/^/transport: /' | tee -a "$SUM"
  grep -E " via (P2P|SHM|NET|NVLS|CollNet)" "$W/nccl.txt" | head -4 | sed 's/^/transport: /' |
    tee -a "$SUM"
  grep -q " via " "$W/nccl.txt" || fail "transport: no transport line"
fi

if want kill; then
  echo "== kill: SIGKILL of rank 1 mid-run" | tee -a "$LOG"
  tiny || fail "tiny inputs"
  rm -f "$W/rdzv"
  pids=()
  for r in 0 1; do
    RANK=$r LOCAL_RANK=$r WORLD_SIZE=2 LOCAL_WORLD_SIZE=2 S2LORA_RENDEZVOUS="file:$W/rdzv" \
      S2LORA_NCCL_TIMEOUT=30 "$S" "${TT[@]}" --out "$W/k$r" --steps 100000 --grad-accum 16 \
      >"$W/k$r.log" 2>&1 &
    pids+=($!)
  done
  pid0=${pids[0]} pid1=${pids[1]}
  for _ in $(seq 600); do grep -q "step      5/" "$W/k0.log" && break; sleep 0.5; done
  kill -9 "$pid1"
  t0=$(date +%s.%N)
  wait "$pid0"
  rc=$?
  dt=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')")
  cat "$W/k0.log" "$W/k1.log" >>"$LOG"
  msg=$(tail -n 1 "$W/k0.log")
  say "kill (no launcher): rank 0 exited with code $rc ${dt} s after rank 1's SIGKILL: $msg"
  if [ "$rc" != 0 ] && python3 -c "import sys; sys.exit(0 if $dt < 60 else 1)"; then
    say "kill (no launcher): PASS"
  else
    fail "kill (no launcher): rank 0 did not exit non-zero within 60 s"
  fi
  "$S" launch --gpus 2 --log-dir "$W/klogs" -- "${TT[@]}" --out "$W/kl" --steps 100000 \
    --grad-accum 16 >"$W/kl.log" 2>&1 &
  lp=$!
  for _ in $(seq 600); do grep -q "step      5/" "$W/kl.log" && break; sleep 0.5; done
  for p in $(pgrep -P "$lp"); do
    tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx RANK=1 && kill -9 "$p"
  done
  t0=$(date +%s.%N)
  wait "$lp"
  rc=$?
  dt=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')")
  cat "$W/kl.log" >>"$LOG"
  say "kill (s2lora launch): the launcher exited with code $rc ${dt} s after rank 1's SIGKILL"
  if [ "$rc" != 0 ] && python3 -c "import sys; sys.exit(0 if $dt < 60 else 1)"; then
    say "kill (s2lora launch): PASS"
  else
    fail "kill (s2lora launch): no non-zero exit within 60 s"
  fi
fi

if want kill1; then
  # One GPU (an NCCL world of one under the launcher): the rank gets SIGKILL mid-run, saving
  # every 4 steps; the launcher must exit non-zero within 60 s, and --resume must continue from
  # the last state it saved (whatever step that was when the kill landed) to 4 steps past it.
  echo "== kill1: SIGKILL of the only rank of launch --gpus 1, then --resume" | tee -a "$LOG"
  tiny || fail "tiny inputs"
  "$S" launch --gpus 1 --log-dir "$W/k1logs" -- "${TT[@]}" --out "$W/k1" --steps 100000 \
    --save-every 4 >"$W/k1.log" 2>&1 &
  lp=$!
  for _ in $(seq 600); do grep -q "step      9/" "$W/k1.log" && break; sleep 0.2; done
  for p in $(pgrep -P "$lp"); do kill -9 "$p"; done
  t0=$(date +%s.%N)
  wait "$lp"
  rc=$?
  dt=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')")
  cat "$W/k1.log" >>"$LOG"
  say "kill1: the launcher exited with code $rc ${dt} s after its rank's SIGKILL: $(tail -n 1 "$W/k1.log")"
  if [ "$rc" != 0 ] && python3 -c "import sys; sys.exit(0 if $dt < 60 else 1)"; then
    say "kill1: PASS"
  else
    fail "kill1: no non-zero exit within 60 s"
  fi
  last=$(find "$W/k1/state" -maxdepth 1 -name 'state-*.safetensors' 2>/dev/null | sort | tail -n 1)
  last=${last##*state-}
  last=$((10#${last%.safetensors}))
  "$S" launch --gpus 1 -- "${TT[@]}" --out "$W/k1" --steps $((last + 4)) --save-every 4 \
    --resume >"$W/k1r.log" 2>&1
  rc=$?
  cat "$W/k1r.log" >>"$LOG"
  res=$(grep -m1 -o "resumed at step [0-9]*" "$W/k1r.log")
  final=$(python3 -c "import json; print(max(json.loads(l)['step'] for l in open('$W/k1/train.jsonl')))" 2>/dev/null)
  say "kill1: --resume: exit $rc, '$res' (last state on disk: step $last), last logged step $final"
  if [ "$rc" = 0 ] && [ "$res" = "resumed at step $last" ] && [ "$final" = $((last + 4)) ]; then
    say "kill1: resume PASS"
  else
    fail "kill1: --resume did not continue from the last state to step $((last + 4))"
  fi
fi

if want resume; then
  echo "== resume: 16 steps straight on two GPUs; 8 then resumed on two and on one" | tee -a "$LOG"
  tiny || fail "tiny inputs"
  R=("${TT[@]}" --grad-accum 2)
  "$S" launch --gpus 2 -- "${R[@]}" --out "$W/ra" --steps 16 >>"$LOG" 2>&1 ||
    fail "resume: straight"
  "$S" launch --gpus 2 -- "${R[@]}" --out "$W/rb" --steps 8 >>"$LOG" 2>&1 ||
    fail "resume: first half"
  cp -r "$W/rb" "$W/rc"
  "$S" launch --gpus 2 -- "${R[@]}" --out "$W/rb" --steps 16 --resume >>"$LOG" 2>&1 ||
    fail "resume on two GPUs"
  # one GPU: --grad-accum is derived (4) from the state's global batch of 4; the given 2 would
  # be refused, so it is left out
  "$S" launch --gpus 1 -- "${TT[@]}" --out "$W/rc" --steps 16 --resume >"$W/rc.log" 2>&1 ||
    fail "resume on one GPU"
  cat "$W/rc.log" >>"$LOG"
  grep -m1 "resumed state's global batch" "$W/rc.log" | sed 's/^/resume: /' | tee -a "$SUM"
  read -r w2 rest2 < <(worst_diff "$W/ra/train.jsonl" "$W/rb/train.jsonl" 9 16)
  read -r w1 rest1 < <(worst_diff "$W/ra/train.jsonl" "$W/rc/train.jsonl" 9 16)
  say "resume: steps 9-16 resumed on two GPUs vs straight: worst relative difference $w2 ($rest2)"
  say "resume: steps 9-16 resumed on one GPU vs straight: worst relative difference $w1 ($rest1)"
  if python3 -c "import sys; sys.exit(0 if $w2 < 1e-3 and $w1 < 1e-2 else 1)" 2>/dev/null; then
    say "resume: PASS"
  else
    fail "resume: a resumed run strays from the straight one"
  fi
  "$S" launch --gpus 2 -- "${TT[@]}" --out "$W/rc" --steps 20 --resume --grad-accum 3 \
    >"$W/rbad.log" 2>&1
  rc=$?
  why=$(grep -m1 'global batch' "$W/rbad.log")
  say "resume: a --grad-accum that changes the global batch: exit $rc: $why"
  [ "$rc" = 2 ] || fail "resume: the changed global batch was not refused"
fi

if want sp; then
  echo "== sp: sequence parallel" | tee -a "$LOG"
  tiny || fail "tiny inputs"
  # (1) the tiny model at its 4096 tokens: one GPU (sp 1) against two ranks of one sequence
  # (sp 2: chunks [0, 2048) and [2048, 4096)), 20 steps, the same data
  "$S" "${TT[@]}" --out "$W/sp1" --steps 20 --grad-accum 2 >>"$LOG" 2>&1 || fail "sp: sp 1"
  "$S" launch --gpus 2 -- "${TT[@]}" --out "$W/sp2" --steps 20 --grad-accum 2 --sp 2 \
    >"$W/sp2.log" 2>&1 || fail "sp: sp 2 (see $W/sp2.log)"
  cat "$W/sp2.log" >>"$LOG"
  grep -E "dp 1 x sp 2|sequence parallel:" "$W/sp2.log" | head -4 | sed 's/^/sp: /' >>"$SUM"
  read -r worst rest <<<"$(worst_diff "$W/sp1/train.jsonl" "$W/sp2/train.jsonl" 1 20)"
  say "sp: tiny sp 2 vs sp 1, worst relative loss difference over 20 steps ${worst} (${rest})"
  if python3 -c "import sys; sys.exit(0 if float('$worst') < 2e-2 else 1)"; then
    say "sp: curves PASS"
  else
    fail "sp: curves differ by more than 2e-2"
  fi
  # (2) LLaMA-2 7B: one GPU at 100k, two GPUs (sp 2) at 200k, one GPU at 200k
  if [ ! -f "$W/7b100k/config.json" ]; then
    "$S" init specs/llama2-7b-100k.yaml -o "$W/7b100k" --seed 1 >>"$LOG" 2>&1 ||
      fail "sp: 7B init"
  fi
  L7=(train specs/llama2-7b-100k.yaml --model "$W/7b100k" --data "$W/text.tokens"
    --steps 3 --grad-accum 1 --save-every 0 --warmup 1 --recompute layer)
  "$S" launch --gpus 1 -- "${L7[@]}" --out "$W/sp7a" >"$W/sp7a.log" 2>&1 ||
    fail "sp: 7B 100k on one GPU"
  "$S" launch --gpus 2 -- "${L7[@]}" --set context_length=204800 --sp 2 --out "$W/sp7b" \
    >"$W/sp7b.log" 2>&1 || fail "sp: 7B 200k, sp 2 (see $W/sp7b.log)"
  cat "$W/sp7a.log" "$W/sp7b.log" >>"$LOG"
  python3 - "$W/sp7a/train.jsonl" "$W/sp7b/train.jsonl" <<'PY' | tee -a "$SUM"
import json, sys
for name, p in (("7B 100k, 1 GPU ", sys.argv[1]), ("7B 200k, sp 2  ", sys.argv[2])):
    try:
        r = [json.loads(l) for l in open(p)]
    except OSError:
        print(f"sp: {name}: no log"); continue
    last = r[-1]
    print(f"sp: {name}: {last['tokens_per_s'] / last['world_size']:.0f} tok/s per GPU (step "
          f"{last['step']}), peak GiB by rank {last['peak_mem_gib']}, loss {last['loss']:.4f}")
PY
  "$S" train specs/llama2-7b-100k.yaml --model "$W/7b100k" --data "$W/text.tokens" \
    --set context_length=204800 --steps 1 --grad-accum 1 --save-every 0 --recompute layer \
    --out "$W/sp7c" >"$W/sp7c.log" 2>&1
  rc=$?
  say "sp: 7B 200k on one GPU exits $rc: $(grep -m1 -iE 'memory|refus|error' "$W/sp7c.log")"
  [ "$rc" != 0 ] || say "sp: (one GPU ran 200k: sp 2 is then not needed for memory)"
fi

echo "== summary"
cat "$SUM"
exit $status

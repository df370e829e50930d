#!/usr/bin/env bash
# bench/plot.py without a GPU: SYNTHETIC inputs in the formats the tools write (bench attn
# --json, bench lora --csv and its JSON form, train.jsonl), made here in a temporary folder and
# removed after; never results. Checks that each chart is a PNG of the expected size that is
# not blank, that the titles take the card and commit, and that bad inputs are refused with the
# file and the row or line named. Exit 77 (a skip for ctest) only when no python3 here has
# matplotlib; setup.sh installs python3-matplotlib. S2_KEEP_TMP=1 keeps the folder (its path is
# printed) to look at the charts.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

py=""
for cand in python3 /usr/bin/python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import matplotlib' >/dev/null 2>&1; then
    py=$cand
    break
  fi
done
if [ -z "$py" ]; then
  echo "test_plot: SKIP: no python3 with matplotlib (python3-matplotlib; setup.sh installs it)"
  exit 77
fi

tmp=$(mktemp -d /tmp/s2lora-test-plot.XXXXXX)
trap '[ -n "${S2_KEEP_TMP:-}" ] || rm -rf "$tmp"' EXIT
fails=0
check() { # name, then a command that must succeed
  local name=$1
  shift
  if "$@"; then echo "PASS $name"; else echo "FAIL $name"; fails=$((fails + 1)); fi
}

# Synthetic inputs: numbers drawn to look like the tools' output, marked as synthetic.
"$py" - "$tmp" <<'PY'
import json, os, sys
t = sys.argv[1]
rows = []
for d, hkv, ns in ((128, 32, (8192, 16384, 32768, 65536)), (64, 32, (16384,)),
                   (128, 8, (16384, 32768))):
    for impl, base in (("s2lora", 440.0), ("flex-split", 330.0), ("sdpa-cudnn", 200.0),
                       ("sdpa-flash", 150.0)):
        for i, n in enumerate(ns):
            rows.append({"spec": "SYNTHETIC", "impl": impl, "N": n, "G": n // 4, "S": n // 8,
                         "d": d, "H": 64 if hkv == 8 else 32, "Hkv": hkv, "dtype": "bf16",
                         "mode": "split",
                         "fwd_ms": 1.0, "fwd_tflops": base + 30 * i, "fb_ms": 4.0,
                         "fb_tflops": 0.8 * base + 25 * i, "peak_gib": 1.0,
                         "rel_err_vs_ours": None, "failed": False, "note": "SYNTHETIC",
                         "fwd_frac_of_gemm": (base + 30 * i) / 700.0,
                         "fb_frac_of_gemm": (0.8 * base + 25 * i) / 700.0})
# A failed peer row and one without times, as bench writes them: drawn as gaps.
rows.append(dict(rows[-1], impl="flex-roll", failed=True, fwd_tflops=None, fb_tflops=None,
                 fwd_frac_of_gemm=None, fb_frac_of_gemm=None))
rows.append(dict(rows[0], impl="sdpa-math", fwd_tflops=None, fb_tflops=None,
                 fwd_frac_of_gemm=None, fb_frac_of_gemm=None))
# The card's rate as bench attn writes it; the second run has none (--no-gemm): null.
run = {"device": "SYNTHETIC-CARD", "seed": "0x0", "flops": "SYNTHETIC", "gemm_bf16_tflops": 700.0,
       "rows": rows}
json.dump(run, open(os.path.join(t, "attn_one.json"), "w"), indent=2)
no_rate = [dict(r, fwd_frac_of_gemm=None, fb_frac_of_gemm=None) for r in rows[:3]]
json.dump({"runs": [run, dict(run, gemm_bf16_tflops=None, rows=no_rate)]},
          open(os.path.join(t, "attn_runs.json"), "w"))
# bench attn --csv's form of the same rows: a failed row's times empty, failed 0/1
attn_keys = list(rows[0])
with open(os.path.join(t, "attn.csv"), "w") as f:
    f.write(",".join(attn_keys) + "\n")
    for r in rows:
        f.write(",".join("" if r[k] is None else str(int(r[k])) if isinstance(r[k], bool)
                         else str(r[k]) for k in attn_keys) + "\n")
lora = []
for m in (4096, 16384, 65536):
    for dim in (4096, 8192):
        for r in (8, 16, 64):
            bf, bb = m * dim * dim * 2e-12, m * dim * dim * 4e-12
            lora.append({"M": m, "dim": dim, "r": r, "base_fwd_ms": bf,
                         "lora_fwd_ms": bf * (1.05 + r / 1000), "fwd_overhead_pct": 5 + r / 10,
                         "base_fb_ms": bb, "lora_fb_ms": bb * (1.12 + r / 1000),
                         "fb_overhead_pct": 12 + r / 10, "failed": 0})
keys = list(lora[0])
with open(os.path.join(t, "lora.csv"), "w") as f:
    f.write(",".join(keys) + "\n")
    for r in lora:
        f.write(",".join(str(r[k]) for k in keys) + "\n")
json.dump({"device": "SYNTHETIC-CARD", "rows": lora}, open(os.path.join(t, "lora.json"), "w"))
for n, tps in (("8192", 118000.0), ("32768", 97000.0)):
    os.makedirs(os.path.join(t, n))
    with open(os.path.join(t, n, "train.jsonl"), "w") as f:
        for s in range(1, 11):
            f.write(json.dumps({"step": s, "loss": 5.0 - s / 10, "loss_ema": 5.0, "lr": 1e-4,
                                "grad_norm": 1.0, "tokens": int(n), "seconds": 0.1,
                                "tokens_per_s": tps * (0.6 if s == 1 else 1) + 100 * s,
                                "mfu": 0.4, "mem_gib": 10 + s / 10, "world_size": 1, "dp": 1,
                                "sp": 1, "peak_mem_gib": [10 + s / 10]}) + "\n")
PY

# A PNG of at least the size asked, more than a blank canvas: many colours, pixels that vary.
png_ok() {
  "$py" - "$1" <<'PY'
import sys
import matplotlib.image as mpimg
p = sys.argv[1]
if open(p, "rb").read(8) != b"\x89PNG\r\n\x1a\n":
    sys.exit(f"{p}: not a PNG")
img = mpimg.imread(p)
h, w = img.shape[:2]
flat = img[..., :3].reshape(-1, 3)
sample = flat[:: max(1, len(flat) // 200000)]
colours = len({tuple((px * 255).round().astype(int)) for px in sample})
std = float(flat.std())
# The first series' colour (matplotlib's first default, #1f77b4: ours, or the first rank or
# run): drawn lines or bars cover far more pixels than its legend entries alone.
first = int((abs(flat * 255 - (31, 119, 180)).max(axis=-1) < 40).sum())
print(f"{p}: {w}x{h}, {colours} colours, pixel std {std:.3f}, {first} pixels of the first series")
if w < 800 or h < 400 or colours < 50 or std < 0.05 or first < 800:
    sys.exit(f"{p}: looks blank, too small or without its data")
PY
}

out=$tmp/charts
log=$tmp/plot.txt
check "plot.py writes attn, lora and train charts" \
  "$py" bench/plot.py --attn "$tmp/attn_runs.json" --lora "$tmp/lora.csv" \
  --train "$tmp/8192/train.jsonl" --train "32k=$tmp/32768/train.jsonl" \
  --commit SYNTH123 -o "$out" >"$log" 2>&1 || cat "$log"
cat "$log"
for c in attn lora train; do
  check "$c.png is a non-blank PNG" png_ok "$out/$c.png"
done
check "attn title names the card and commit" \
  grep -q "attn.png (.*SYNTHETIC-CARD, commit SYNTH123)" "$log"
check "train title takes --card where the input names none" \
  "$py" bench/plot.py --train "$tmp/8192/train.jsonl" --card CARD-FROM-OPTION -o "$tmp/c2"
check "... and says it" sh -c "'$py' bench/plot.py --train '$tmp/8192/train.jsonl' \
  --card CARD-FROM-OPTION -o '$tmp/c2' | grep -q 'train.png (10 rows; CARD-FROM-OPTION)'"
# The PyTorch stack's log as train_peers.py's printout gives it: tokens/s a step, the peak alone.
"$py" - "$tmp" <<'PY'
import json, os, sys
with open(os.path.join(sys.argv[1], "torch.jsonl"), "w") as f:
    for s in range(1, 9):
        f.write(json.dumps({"step": s, "tokens_per_s": 70000.0 + 100 * s, "mem_gib": None,
                            "peak_mem_gib": [41.14]}) + "\n")
PY
check "a log with its peak alone draws (beside a full one)" \
  "$py" bench/plot.py --train "$tmp/8192/train.jsonl" --train "torch=$tmp/torch.jsonl" -o "$tmp/c4"
check "... a non-blank PNG" png_ok "$tmp/c4/train.png"
check "one bench attn JSON (not gpu-check's runs) and bench lora JSON" \
  "$py" bench/plot.py --attn "$tmp/attn_one.json" --lora "$tmp/lora.json" -o "$tmp/c3"
check "lora.png from JSON is a non-blank PNG" png_ok "$tmp/c3/lora.png"
check "bench attn's CSV, the card from --card" sh -c "'$py' bench/plot.py --attn '$tmp/attn.csv' \
  --card CSV-CARD -o '$tmp/c5' | grep -q 'attn.png (.*CSV-CARD'"
check "attn.png from CSV is a non-blank PNG" png_ok "$tmp/c5/attn.png"
check "no stray temporary files in the output folder" \
  test "$(ls -A "$out" | sort | tr '\n' ' ')" = "attn.png lora.png train.png "

# Refusals: exit 1, the file and where in it named.
refused() { # name, expected text in stderr, plot.py arguments...
  local name=$1 want=$2 rc
  shift 2
  "$py" bench/plot.py "$@" -o "$tmp/bad" >"$tmp/err.txt" 2>&1
  rc=$?
  if [ "$rc" = "${want_rc:-1}" ] && grep -qF -- "$want" "$tmp/err.txt"; then
    echo "PASS $name"
  else
    echo "FAIL $name (exit $rc, wanted ${want_rc:-1} and '$want'):"; cat "$tmp/err.txt"
    fails=$((fails + 1))
  fi
}
printf '{"device": "x", "rows": [' >"$tmp/trunc.json"
refused "attn: not JSON" "trunc.json: not JSON" --attn "$tmp/trunc.json"
printf '{"device": "x", "rows": [{"impl": "s2lora", "d": 128, "fwd_tflops": 1, "fb_tflops": 1}]}' \
  >"$tmp/noN.json"
refused "attn: a row without N" "noN.json: rows[0]: no 'N'" --attn "$tmp/noN.json"
printf '{"runs": [{"rows": []}, {"device": "x"}]}' >"$tmp/runs.json"
refused "attn: a run without rows" "runs.json: runs[1]: expected an object with a 'rows' list" \
  --attn "$tmp/runs.json"
printf 'impl,d,fwd_tflops\ns2lora,128,1\n' >"$tmp/noN.csv"
refused "attn CSV: a header without N" "noN.csv: line 1: expected a CSV header with the fields" \
  --attn "$tmp/noN.csv"
printf 'impl,N,d,fwd_tflops,fb_tflops\ns2lora,8192,128,x,1\n' >"$tmp/badt.csv"
refused "attn CSV: a bad rate" "badt.csv: line 2: 'fwd_tflops' is 'x'" --attn "$tmp/badt.csv"
printf 'M,dim,r,fwd_overhead_pct,fb_overhead_pct,failed\n%s\n%s\n' 16384,4096,8,5.0,12.0,0 \
  16384,4096,x,5,12,0 >"$tmp/badr.csv"
refused "lora CSV: a bad rank" "badr.csv: line 3: 'r' is 'x'" --lora "$tmp/badr.csv"
printf 'M,dim,r,fwd_overhead_pct,failed\n16384,4096,8,5.0,0\n' >"$tmp/nofb.csv"
refused "lora CSV: no f+b overhead" "nofb.csv: line 2: neither 'fb_overhead_pct'" \
  --lora "$tmp/nofb.csv"
printf 'step,loss\n1,2\n' >"$tmp/nohead.csv"
refused "lora CSV: a header without M, dim, r" "nohead.csv: line 1: expected a CSV header" \
  --lora "$tmp/nohead.csv"
head -n 2 "$tmp/8192/train.jsonl" >"$tmp/bad.jsonl"
echo '{"step": 3, "tokens_per_s": "fast", "mem_gib": 1}' >>"$tmp/bad.jsonl"
refused "train: a bad tokens_per_s" "bad.jsonl: line 3: 'tokens_per_s' is 'fast'" \
  --train "$tmp/bad.jsonl"
: >"$tmp/empty.jsonl"
refused "train: an empty log" "empty.jsonl: no steps" --train "$tmp/empty.jsonl"
refused "a missing file" "nothere.json: cannot read" --attn "$tmp/nothere.json"
want_rc=2 refused "nothing to plot" "nothing to plot"
check "nothing written on refusal" test ! -e "$tmp/bad"

# A --tile comparison's rows (s2lora#1, #2 with "tile k=v,..." notes) are labelled by the keys
# that differ between them; peers and a lone s2lora row keep their names.
labels_ok() {
  "$py" - <<'PY'
import sys
sys.path.insert(0, "bench")
import plot
t = "tile fwd_warps=8,bwd_stages=4,bwd_tma=0"
rows = [{"impl": "s2lora#1", "tile": plot.tile_of(t)},
        {"impl": "s2lora#2", "tile": plot.tile_of(t.replace("4,bwd_tma=0", "3,bwd_tma=1"))},
        {"impl": "flex-split", "tile": {}}]
got = plot.attn_labels(rows)
want = {"s2lora#1": "s2lora#1: bwd_stages=4,bwd_tma=0",
        "s2lora#2": "s2lora#2: bwd_stages=3,bwd_tma=1", "flex-split": "flex-split"}
assert got == want, got
assert plot.attn_labels([{"impl": "s2lora", "tile": plot.tile_of(t)}]) == {"s2lora": "s2lora"}
assert plot.tile_of("default; " + t) == {"fwd_warps": "8", "bwd_stages": "4", "bwd_tma": "0"}
assert plot.tile_of(None) == {} and plot.tile_of("block mask 2.0 MiB") == {}
PY
}
check "tile rows labelled by the keys that differ" labels_ok

# Grouped-query rows are a shape of their own (not drawn into the d = 128 line beside them);
# rows of older bench JSON, without H and Hkv, are plain multi-head rows.
shapes_ok() {
  "$py" - <<'PY'
import sys
sys.path.insert(0, "bench")
import plot
assert plot.heads_of({"H": 64, "Hkv": 8}, "w") == "GQA 64/8"
assert plot.heads_of({"H": 32, "Hkv": 32}, "w") == "" and plot.heads_of({}, "w") == ""
assert plot.shape_label((128, "GQA 64/8")) == "d=128, GQA 64/8"
assert plot.shape_label((64, "")) == "d=64"
try:
    plot.heads_of({"H": 64}, "rows[3]")
    sys.exit("a row with H and no Hkv was accepted")
except plot.InputError as e:
    assert "rows[3]: no 'Hkv'" in str(e), e
PY
}
check "grouped-query rows drawn as their own shape" shapes_ok

if [ "$fails" -gt 0 ]; then
  echo "test_plot: $fails failed"
  exit 1
fi
echo "test_plot: all passed"

#!/usr/bin/env bash
# A real small run, LongLoRA's experiment in miniature (issue "Step 5", item 8):
#   1. a byte-level LLaMA of specs/tiny-byte-512.yaml's shape, initialised from the spec
#      (`s2lora init`), is pre-trained from scratch at 512 tokens with every weight trained
#      (`s2lora train --mode full`, full attention) on a public-domain book;
#   2. it is extended to 4096 tokens (RoPE interpolated x8) with LoRA+ twice, on the same
#      data and budget: with S²-Attn (G = 1024, shift 512), and with plain short attention
#      (the same groups, no shift);
#   3. perplexity on held-out text at 4096 tokens with full attention: before extension, after
#      each fine-tuning (and at 512 as the pre-trained model's own context); the same tokens
#      are scored at both lengths (the first 24 windows of 4096, 192 of 512). Each extended
#      model is also scored with the attention it was trained with (--s2attn) and with full
#      attention in windows of one group (1024), which tell how much of the gap to full
#      attention at 4096 is the long distances it never trained on.
# The book: the King James Version of the Bible as Debian ships it (bible-kjv-text, public
# domain, 4.3 MB of text, decoded with the bible-kjv program); the last tenth of its lines is
# held out for evaluation.
#
#   bench/real-run.sh prepare   on a machine with the build dependencies and apt (no root
#                               needed): downloads the two packages, writes the text and the
#                               token files into .carry/corpus (carried to the GPU machine)
#   bench/real-run.sh run       on the GPU machine, with the binaries of bench/build-carry.sh
#                               (S2_BIN, default .carry/bin); prints a table, logs in $OUT
# Steps are set by S2_PRE_STEPS (default 4000: 16M tokens, four passes over the book) and
# S2_EXT_STEPS (default 2000: 8M tokens); about a minute on an H200.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${S2_BIN:-.carry/bin}
CORPUS=.carry/corpus

prepare() {
  local tmp
  tmp=$(mktemp -d /tmp/s2lora-kjv.XXXXXX)
  (cd "$tmp" && apt-get download bible-kjv bible-kjv-text >/dev/null)
  dpkg -x "$tmp"/bible-kjv_*.deb "$tmp/x"
  dpkg -x "$tmp"/bible-kjv-text_*.deb "$tmp/x"
  "$tmp/x/usr/bin/bible" -p "$tmp/x/usr/lib" -d bible.data "Gen1:1-Rev22:21" >"$tmp/kjv.txt"
  local lines
  lines=$(wc -l <"$tmp/kjv.txt")
  mkdir -p "$CORPUS"
  head -n $((lines * 9 / 10)) "$tmp/kjv.txt" >"$tmp/train.txt"
  tail -n +$((lines * 9 / 10 + 1)) "$tmp/kjv.txt" >"$tmp/eval.txt"
  "$BIN/s2lora" data --bytes "$tmp/train.txt" -o "$CORPUS/train.tokens"
  "$BIN/s2lora" data --bytes "$tmp/eval.txt" -o "$CORPUS/eval.tokens"
  rm -rf "$tmp"
}

run() {
  local out=${OUT:-/tmp/s2lora-real-run} w spec=specs/tiny-byte-512.yaml
  mkdir -p "$out"
  w=$(mktemp -d /tmp/s2lora-real.XXXXXX)
  export S2LORA_CACHE_DIR=${S2LORA_CACHE_DIR:-$w/cache}
  local pre=${S2_PRE_STEPS:-4000} ext=${S2_EXT_STEPS:-2000}
  local log="$out/real_run.txt"
  : >"$log"
  echo "== init and pre-training at 512 tokens (full fine-tuning mode, full attention)" | tee -a "$log"
  "$BIN/s2lora" init "$spec" --set context_length=512 -o "$w/base0" --seed 1 >>"$log"
  "$BIN/s2lora" train "$spec" --set context_length=512 --mode full --full-attention \
    --model "$w/base0" --data "$CORPUS/train.tokens" --out "$w/pre" --steps "$pre" \
    --grad-accum 8 --lr 1e-3 --warmup 30 --schedule cosine --weight-decay 0.01 \
    --save-every 0 >>"$log" 2>&1
  tail -n 3 "$w/pre/train.jsonl" >>"$log"
  ppl() { # label, --model and extra eval arguments
    local label=$1
    shift
    "$BIN/s2lora" eval "$spec" --data "$CORPUS/eval.tokens" "$@" 2>>"$log" |
      tee -a "$log" | sed -n 's/.*ppl \([0-9.]*\).*/\1/p' | sed "s/^/$label /"
  }
  local results="$w/results"
  : >"$results"
  ppl "pretrained@512" --set context_length=512 --model "$w/pre/model" --seqlens 512 \
    --max-windows 192 >>"$results"
  ppl "pretrained@4096" --model "$w/pre/model" --seqlens 4096 --max-windows 24 >>"$results"
  for mode in s2 short; do
    local extra=()
    [ "$mode" = short ] && extra=(--set s2attn.shift=0)
    echo "== extension to 4096 with LoRA+, $mode attention" | tee -a "$log"
    "$BIN/s2lora" train "$spec" "${extra[@]}" --model "$w/pre/model" \
      --data "$CORPUS/train.tokens" --out "$w/ext-$mode" --steps "$ext" --grad-accum 1 \
      --lr 2e-4 --warmup 10 --save-every 0 >>"$log" 2>&1
    tail -n 2 "$w/ext-$mode/train.jsonl" >>"$log"
    ppl "lora+${mode}@4096" --model "$w/pre/model" --seqlens 4096 --max-windows 24 \
      --adapter "$w/ext-$mode/adapter" --trainable "$w/ext-$mode/trainable.safetensors" \
      >>"$results"
    ppl "lora+${mode}@4096,trained-attn" "${extra[@]}" --s2attn --model "$w/pre/model" \
      --seqlens 4096 --max-windows 24 --adapter "$w/ext-$mode/adapter" \
      --trainable "$w/ext-$mode/trainable.safetensors" >>"$results"
    ppl "lora+${mode}@1024" --model "$w/pre/model" --seqlens 1024 --max-windows 96 \
      --adapter "$w/ext-$mode/adapter" --trainable "$w/ext-$mode/trainable.safetensors" \
      >>"$results"
  done
  echo "== perplexity on the held-out tenth (full attention)" | tee -a "$log"
  printf "%-32s %s\n" "model@eval length" "ppl" | tee -a "$log"
  while read -r label value; do
    printf "%-32s %s\n" "$label" "$value"
  done <"$results" | tee -a "$log"
  rm -rf "$w"
}

case "${1:-}" in
prepare) prepare ;;
run) run ;;
*)
  echo "usage: bench/real-run.sh prepare|run" >&2
  exit 2
  ;;
esac

#!/usr/bin/env bash
# LongLoRA's central claim, tested where long-range information matters (issue 20 item 5):
# a model fine-tuned to a longer context with S²-Attn (groups of G tokens, half of the heads
# shifted by G/2) can use FULL attention at that context at evaluation; one fine-tuned with
# plain short attention (the same groups, no shift) cannot. bench/real-run.sh did not show it:
# long distances did not matter in its corpus. Here they do: LongLoRA's passkey retrieval.
#
#   1. a synthetic corpus (bench/paper_claim.py gen), half of its documents (S2_PC_KV_SHARE,
#      default 0.5) LongLoRA's passkey prompt (a random five-digit key at a random depth
#      inside filler text, the question "What is the pass key? The pass key is" at the end)
#      followed by the answer, half dense-recall documents: slots of a key (one byte that
#      appears nowhere else: a single-token induction head finds it), five random digits and a
#      space; every key is defined once and recalled once (the same digits) at a random later
#      slot, so half the slots are recalls whose five digits must be recalled (32 recalls in
#      512 tokens, 141 in 2048, 705 digits against the passkey's 5: a run on passkey documents
#      alone lost retrieval in phase 2 at every distance, even with full attention, its loss
#      barely asking for it; two-letter keys with one digit were not learned at 512 at all);
#   2. phase 1: a byte-level LLaMA of S2_PC_SPEC's shape (default specs/tiny-byte-512.yaml;
#      specs/small-byte-512.yaml is 1.5 times as wide; specs/micro-byte-256.yaml, 2 layers of
#      hidden 128 at 256 tokens, is the model on which the trainer did learn the dense recall,
#      0.34 of the digits after 30 000 steps) (`s2lora init`) is pre-trained from scratch at the
#      spec's max_position_embeddings, 512 tokens below (256 with micro-byte-256, and every
#      length here a half of it), S2_PC_PRE_BATCH (default 8) sequences a step in one
#      micro-batch (`train --mode full --full-attention --batch 8`), so it learns the retrieval
#      at short range (passkey accuracy and dense recall at 512 are reported; at 256 no passkey
#      prompt leaves its key room to move, so there phase 1's corpus is dense recall only and the
#      passkey is scored after the extension alone);
#   3. phase 2: extended 4x to 2048 tokens (RoPE interpolated x4) with LoRA+ three ways, with
#      the same steps, data and seed: S²-Attn (G 512, shift 256: the spec's defaults at 2048),
#      short attention (G 512, --set s2attn.shift=0) and full attention (--full-attention);
#   4. every model is evaluated with FULL attention at 2048: perplexity on held-out documents
#      (`s2lora eval`) and passkey retrieval by distance bucket from `s2lora logits` on 200
#      held-out prompts (40 per bucket of the key's distance from the answer: 0-256, 256-512,
#      512-1024, 1024-1536, 1536-2048): a prompt counts when the argmax of each of the five
#      answer digits, given the true prefix (teacher forcing), is the key's digit, which is
#      exactly when greedy decoding would produce the key (the answer is " K": the space is
#      scored too, as LongLoRA's exact match does); and dense recall by distance on held-out
#      dense-recall documents (S2_PC_KV_DOCS, default 24, at 2048; twice as many at 512):
#      digit accuracy, the share of recalls with all five digits right and the loss on the
#      answer tokens alone, which shows whether retrieval was learned at all. The S²- and
#      short-trained models are also scored with the attention they were trained with (their
#      keys beyond G are out of their reach there: a check of the masks); the pre-trained
#      model also at 512.
#
#   bench/paper-claim.sh          on the GPU machine, with the binaries of bench/build-carry.sh
#                                 (S2_BIN, default .carry/bin); results in $OUT
#                                 (paper_claim.md, paper_claim.json, paper_claim.log)
#   bench/paper-claim.sh --quick  the pipeline's wiring without a GPU (default binary
#                                 build/s2lora): small data sets, the token writer checked
#                                 byte for byte against `s2lora data`, `s2lora init`, and every
#                                 train, eval and logits command of a real run with its
#                                 arguments (they check all their files and exit 3, "no CUDA
#                                 device", where there is none), and the full-size plan
#
# Time: S2_PC_BUDGET_S (default 480 s) is the whole run's wall time. Two short calibration
# runs (40 steps of phase 1's shape, 15 of phase 2's with full attention) measure tokens/s;
# what is left after S2_PC_RESERVE_S (default 120 s: data, process starts, evaluations) goes
# 40 % to phase 1 and 20 % to each phase-2 run. S2_PC_PRE_STEPS and S2_PC_EXT_STEPS (both)
# fix the steps instead (phase 2's calibration still runs: the budget's check after phase 1,
# which cuts phase 2's steps when they no longer fit, needs its rate). The estimate of each
# phase is printed before it runs. Exit status: 0 when every step ran, else the failing
# step's; the report is written either way and says where it stopped (and $OUT/rows keeps each
# evaluation's JSON as it is made). No outcome is assumed: the table is what ran. S2_PC_COMMIT
# names the commit (it takes precedence over `git rev-parse`: a copied tree's .git may be
# stale).
#
# Positions (S2_PC_PRE_ROPE): own (default, LongLoRA's order) pre-trains at the model's own
# positions and the extension interpolates them x4; ext pre-trains with the extension's RoPE
# factor already (`--set context_length=<phase 2's> --seqlens <phase 1's>`: positions 1/4
# apart from the start), so phase 2 changes the length only, not the scale of the positions.
# micro-byte-256 lost every retrieval under the x4 interpolation (at every distance, before
# fine-tuning) and no extension, full attention's either, learned it back in 26 000 steps
# (bench/RESULTS.md); a guess at why: a 2-layer model's previous-token head needs the offset of
# one position it was trained on.
#
# Arms (S2_PC_ARMS, default "s2 short full"): the extensions to run, any of the three (the
# budget is shared among those named). S2_PC_EXT_MODE=full fine-tunes every weight in phase 2
# instead of LoRA+ (`train --mode full`; LongLoRA reports S²-Attn with full fine-tuning too):
# whether the upper bound learns retrieval beyond the group at all when LoRA+ does not.
#
# The passkey prompt (S2_PC_PASSKEY_TASK): yes (default) opens it with LongLoRA's task line, so
# that it needs 256 tokens and phase 1 at 256 sees none; no drops that line (107 tokens), so
# that phase 1 at 256 learns the passkey too (keys 82..231 tokens back) and the extension asks
# the arms to keep a retrieval the model had, as LongLoRA's base models had theirs (in run e the
# passkey was new in phase 2).
#
# In two calls, so that each phase has a whole call's budget (the model learned no retrieval in
# phase 1's share of one call): S2_PC_STOP_AFTER=pre gives the budget to phase 1 alone and ends
# after the pre-trained model's evaluations, leaving it in $OUT/pre-model.tar; the second call,
# S2_PC_PRE_MODEL=FILE (that tar, or a model directory; a relative path is the caller's), skips
# phase 1 and gives the budget to the three extensions of that model (its evaluations run
# again, so the report is whole).
set -euo pipefail
cd "$(dirname "$0")/.."

STOP_AFTER=${S2_PC_STOP_AFTER:-} PRE_MODEL=${S2_PC_PRE_MODEL:-}
case "$PRE_MODEL" in # a relative path names a place below the caller's directory
"" | /*) ;;
*) PRE_MODEL=$OLDPWD/$PRE_MODEL ;;
esac
case "$STOP_AFTER" in
"" | pre) ;;
*)
  echo "paper-claim: S2_PC_STOP_AFTER=$STOP_AFTER: the one phase to stop after is pre" >&2
  exit 2
  ;;
esac
if [ -n "$PRE_MODEL" ]; then
  [ -z "$STOP_AFTER" ] || {
    echo "paper-claim: S2_PC_PRE_MODEL skips the phase S2_PC_STOP_AFTER=pre runs: give one" >&2
    exit 2
  }
  [ -d "$PRE_MODEL" ] || [ -f "$PRE_MODEL" ] || {
    echo "paper-claim: S2_PC_PRE_MODEL=$PRE_MODEL: no such file or directory (a model" \
      "directory, or the pre-model.tar of an S2_PC_STOP_AFTER=pre run)" >&2
    exit 2
  }
fi

quick=0
case "${1:-}" in
"") ;;
--quick) quick=1 ;;
*)
  echo "usage: bench/paper-claim.sh [--quick]" >&2
  exit 2
  ;;
esac

if [ -n "${S2_BIN:-}" ]; then
  BIN=$S2_BIN
elif [ $quick = 1 ] || [ ! -x .carry/bin/s2lora ]; then
  BIN=build
else
  BIN=.carry/bin
fi
PY=(python3 bench/paper_claim.py)
SPEC=${S2_PC_SPEC:-specs/tiny-byte-512.yaml} # a byte-vocabulary model
# A `key: value` of the spec's model, read from the YAML's first line of that key in block style
# (as every spec in specs/ is; a flow-style `model: {...}` reads as empty and is refused).
spec_value() { sed -n "s/^ *$1: *\([^ #]*\).*/\1/p" "$SPEC" | head -n 1; }
[ -f "$SPEC" ] || { echo "paper-claim: S2_PC_SPEC=$SPEC: no such spec file" >&2; exit 2; }
# phase 1 at the spec's max_position_embeddings, phase 2 at 4 times that (rope_factor 4)
PRE_CTX=$(spec_value max_position_embeddings)
case "$PRE_CTX" in
'' | *[!0-9]*) PRE_CTX=0 ;;
esac
EXT_CTX=$((4 * PRE_CTX))
[ "$PRE_CTX" -ge 128 ] && [ $((PRE_CTX % 64)) = 0 ] && [ "$(spec_value vocab_size)" = 264 ] || {
  echo "paper-claim: S2_PC_SPEC=$SPEC: model.max_position_embeddings" \
    "$(spec_value max_position_embeddings) and vocab_size $(spec_value vocab_size); this run" \
    "pre-trains a byte-vocabulary model (vocab_size 264) at max_position_embeddings tokens" \
    "(a multiple of 64, at least 128)" >&2
  exit 2
}
# Phase 1's step: PRE_SEQ sequences in one micro-batch (train --batch: at 512 tokens or less a
# sequence, the step of one sequence a micro-batch is bound by kernel launches); phase 2's:
# EXT_SEQ sequences, by default 4 micro-batches of one (LongLoRA's gradient accumulation), with
# S2_PC_EXT_BATCH=N N sequences in one micro-batch (a varlen batch: several times the tokens/s
# of a model this small at 1024 tokens).
PRE_SEQ=${S2_PC_PRE_BATCH:-8} EXT_SEQ=${S2_PC_EXT_BATCH:-4}
EXT_STEP=(--grad-accum 4) EXT_STEP_NOTE=
[ -z "${S2_PC_EXT_BATCH:-}" ] ||
  EXT_STEP=(--batch "$EXT_SEQ" --grad-accum 1) EXT_STEP_NOTE=" (--batch $EXT_SEQ)"
# NAME VALUE WHAT: exits 2 unless VALUE (environment variable NAME's) is a positive integer
positive() {
  case "$2" in
  '' | *[!0-9]* | 0*)
    echo "paper-claim: $1=$2: $3, a positive integer" >&2
    exit 2
    ;;
  esac
}
positive S2_PC_PRE_BATCH "$PRE_SEQ" "phase 1's sequences a step"
positive S2_PC_EXT_BATCH "$EXT_SEQ" "phase 2's sequences a step, in one micro-batch"
# Training documents are one token shorter than the context: the trainer packs documents with a
# separator between them into windows of C + 1 tokens starting every C tokens, so a document of
# C - 1 tokens and its separator make every window exactly one document (BOS at position 0, as
# in the evaluations) and the next one's BOS as the last label. Documents of C tokens drifted a
# token a window against the windows, most of them cut in two.
PRE_DOC=$((PRE_CTX - 1)) EXT_DOC=$((EXT_CTX - 1))
PRE_ROPE=${S2_PC_PRE_ROPE:-own}
# phase 1's spec settings (and those of every command at its length): its context_length, or
# with S2_PC_PRE_ROPE=ext the extension's (its RoPE factor) and sequences of phase 1's length
case "$PRE_ROPE" in
own)
  PRE_SET=(--set "context_length=$PRE_CTX") PRE_WIN=()
  PRE_POS="phase 1 at the model's own positions, interpolated x4 by phase 2 (S2_PC_PRE_ROPE=own,"
  PRE_POS+=" LongLoRA's order)"
  ;;
ext)
  PRE_SET=(--set "context_length=$EXT_CTX") PRE_WIN=(--seqlens "$PRE_CTX")
  PRE_POS="phase 1 with the extension's RoPE factor 4 already (S2_PC_PRE_ROPE=ext): phase 2"
  PRE_POS+=" changes the length, not the positions' scale"
  ;;
*)
  echo "paper-claim: S2_PC_PRE_ROPE=$PRE_ROPE: own (phase 1 at the model's own positions," \
    "interpolated x4 by the extension) or ext (phase 1 with the extension's interpolated" \
    "positions already)" >&2
  exit 2
  ;;
esac
PRE_LR=1e-3
EXT_LR=${S2_PC_EXT_LR:-2e-4}         # as bench/real-run.sh's extension
# Phase 2's arms (S2_PC_ARMS: any of s2, short, full; default all three, run in that order) and
# how they fine-tune (S2_PC_EXT_MODE: lora, LoRA+ as LongLoRA's recipe; full, every weight, as
# the paper's full fine-tuning rows)
ARMS=${S2_PC_ARMS:-s2 short full}
arms=()
for arm in s2 short full; do
  case " ${ARMS//,/ } " in *" $arm "*) arms+=("$arm") ;; esac
done
for arm in ${ARMS//,/ }; do
  case $arm in
  s2 | short | full) ;;
  *)
    echo "paper-claim: S2_PC_ARMS=$ARMS: $arm is not an arm; valid: s2, short and full (any of" \
      "them, separated by commas or spaces)" >&2
    exit 2
    ;;
  esac
done
[ ${#arms[@]} -gt 0 ] || {
  echo "paper-claim: S2_PC_ARMS=$ARMS: no arm; valid: s2, short and full (any of them)" >&2
  exit 2
}
case ${S2_PC_EXT_MODE:-lora} in
lora) EXT_HOW="LoRA+" EXT_MODE=() ;;
full) EXT_HOW="full FT" EXT_MODE=(--mode full) ;;
*)
  echo "paper-claim: S2_PC_EXT_MODE=$S2_PC_EXT_MODE: lora (LoRA+, the default) or full (every" \
    "weight)" >&2
  exit 2
  ;;
esac
KV_SHARE=${S2_PC_KV_SHARE:-0.5}      # the training documents that are dense-recall ones
KV_N=${S2_PC_KV_DOCS:-24}            # held-out dense-recall documents at 2048 (x2 at 512)
SEED=${S2_PC_SEED:-1}
BUDGET=${S2_PC_BUDGET_S:-480}
RESERVE=${S2_PC_RESERVE_S:-120}
# A training set holds at most this many documents; a run of more sequences goes over it again
# in another order each epoch (the trainer's data order). Without the cap the generator's time
# grew with the steps: 330 727 steps of 32 (10.6 million documents, 2.7 GB) left no time to
# train in a 600 s call. 300 000 documents take about 20 s on two cores. A model of this size
# cannot learn their 20 million random digits by heart: what it can learn is the retrieval.
MAX_DOCS=${S2_PC_MAX_DOCS:-300000}
positive S2_PC_MAX_DOCS "$MAX_DOCS" "a training set's most documents"
PK_N=${S2_PC_PASSKEY:-40}            # prompts per distance bucket
case ${S2_PC_PASSKEY_TASK:-yes} in
yes) TASK_ARG=() TASK_PY=True ;;
no) TASK_ARG=(--no-task) TASK_PY=False ;;
*)
  echo "paper-claim: S2_PC_PASSKEY_TASK=$S2_PC_PASSKEY_TASK: yes (the passkey prompt opens with" \
    "LongLoRA's task line, the default) or no (without it: a prompt fits 256 tokens)" >&2
  exit 2
  ;;
esac
# distance buckets: quarters and a half at phase 1's length; eighths, quarters, halves and
# three quarters of phase 2's (0-256, 256-512, 512-1024, 1024-1536, 1536-2048 at 2048)
PK_BUCKETS_PRE=0,$((PRE_CTX / 4)),$((PRE_CTX / 2)),$PRE_CTX
# The passkey prompt at phase 1's length only where its filler leaves the key's depth room (half
# the context: 512 tokens and longer with the task line, 256 without); else every prompt would
# be about the same distance. Its buckets are those its distances reach (from 82 tokens: at 256
# without the task line, 64-128 and 128-256).
read -r PK_PRE PK_BUCKETS_PRE_PK < <(python3 -c "import sys; sys.path.insert(0, 'bench')
import paper_claim as pc
edges = [int(x) for x in '$PK_BUCKETS_PRE'.split(',')]
try:
    room = pc.filler_room($PRE_CTX, $TASK_PY)
except ValueError:
    room = -1
while len(edges) > 2 and edges[1] <= pc.DIST_BASE:
    edges.pop(0)
print(int(room >= $PRE_CTX // 2), ','.join(map(str, edges)))")
PRE_KV_SHARE=$KV_SHARE # phase 1's corpus: without the passkey at its length, dense recall only
[ "$PK_PRE" = 1 ] || PRE_KV_SHARE=1
PK_BUCKETS_EXT=0,$((EXT_CTX / 8)),$((EXT_CTX / 4)),$((EXT_CTX / 2)),$((EXT_CTX * 3 / 4)),$EXT_CTX
# Rates assumed before calibration (and in --quick's plan): bench/RESULTS.md's real run
# trained 16M tokens at 512 and 2 x 8M at 4096 on this model in about a minute on an H200.
RATE1=400000 RATE2=500000
OUT=${OUT:-/tmp/s2lora-paper-claim}
mkdir -p "$OUT"
log=$OUT/paper_claim.log
: >"$log"
w=$(mktemp -d /tmp/s2lora-paper.XXXXXX)
rows=$OUT/rows # one JSON per evaluation, kept: `paper_claim.py report` rebuilds the table
rm -rf "$rows"
mkdir -p "$rows"
export S2LORA_CACHE_DIR=${S2LORA_CACHE_DIR:-$w/cache}

status=running current=setup gen_pid=
info=()
say() { echo "$*" | tee -a "$log"; }
note() { # a line of the report's header: key, then its words
  local k=$1
  shift
  info+=("$k=$*")
}

finish() {
  local rc=$?
  trap - EXIT
  set +e # the report is written whatever fails here
  [ -z "$gen_pid" ] || kill "$gen_pid" 2>/dev/null
  if [ $rc != 0 ]; then
    status="FAILED at: $current (exit $rc)"
  elif [ $quick = 1 ]; then
    status="dry run (--quick): wiring checked, nothing trained"
  else
    status="complete"
  fi
  "${PY[@]}" report --rows "$rows" --md "$OUT/paper_claim.md" --json "$OUT/paper_claim.json" \
    --method "$EXT_HOW" --info "status=$status" "${info[@]/#/--info=}" >>"$log" 2>&1 ||
    echo "paper-claim: the report could not be written (see $log)" >&2
  [ -f "$OUT/paper_claim.md" ] && cat "$OUT/paper_claim.md"
  echo "paper-claim: $status; log in $log" >&2
  rm -rf "$w"
  exit $rc
}
trap finish EXIT
# a time limit's signal still leaves the report
trap 'current="$current, stopped by SIGTERM"; exit 143' TERM
trap 'current="$current, stopped by SIGINT"; exit 130' INT

# s2lora with its stdout in $w/last.out and both outputs in the log (without the per-step
# lines: train.jsonl has those); in --quick mode, "no CUDA device" (exit 3) counts as checked.
ran=1
s2() {
  local rc=0
  "$BIN/s2lora" "$@" >"$w/last.out" 2>"$w/last.err" || rc=$?
  cat "$w/last.out" >>"$log"
  grep -Ev ': step +[0-9]+/' "$w/last.err" >>"$log" || true
  ran=1
  if [ $rc = 3 ] && [ $quick = 1 ]; then
    ran=0
    echo "  (checked: s2lora $1 read and accepted every file; no CUDA device here)" | tee -a "$log"
    return 0
  fi
  [ $rc = 0 ] || { tail -n 5 "$w/last.err" >&2; return $rc; }
}

# The spec settings of a command at CTX tokens: AT_SET (phase 1's at its length) and AT_WIN
# (eval's windows; logits takes its sequences from the token file).
at() {
  AT_SET=(--set "context_length=$1") AT_WIN=()
  [ "$1" != "$PRE_CTX" ] || AT_SET=("${PRE_SET[@]}") AT_WIN=("${PRE_WIN[@]}")
}

# Perplexity on the held-out documents with full attention: label, ctx, eval arguments.
ppl() {
  local label=$1 ctx=$2
  shift 2
  current="eval $label"
  at "$ctx"
  s2 eval "$SPEC" "${AT_SET[@]}" "${AT_WIN[@]}" --data "$w/heldout$ctx.tokens" "$@"
  [ $ran = 1 ] || return 0
  "${PY[@]}" ppl --line "$(tail -n 1 "$w/last.out")" --label "$label" --ctx "$ctx" \
    --out "$rows/$label.full.ppl.json"
  say "$label: $(tail -n 1 "$w/last.out")"
}

# Retrieval from one forward over the passkey prompts (score) and one over the held-out
# dense-recall documents (kvscore): label, attention (full, s2, short), ctx, logits arguments.
retrieval() {
  local label=$1 att=$2 ctx=$3 kind what cmd
  shift 3
  local far=() kinds="pk kv"
  [ "$ctx" != $EXT_CTX ] || far=(--far $((EXT_CTX / 4))) # the keys beyond phase 2's group
  [ "$ctx" != $PRE_CTX ] || [ "$PK_PRE" = 1 ] || kinds=kv
  for kind in $kinds; do
    what=passkey cmd=score
    [ $kind = pk ] || what="dense recall" cmd=kvscore
    current="$what $label ($att attention)"
    at "$ctx"
    s2 logits "$SPEC" "${AT_SET[@]}" --tokens "$w/$kind$ctx.safetensors" \
      -o "$w/logits.safetensors" "$@"
    [ $ran = 1 ] || continue
    "${PY[@]}" $cmd --meta "$w/$kind$ctx.json" --logits "$w/logits.safetensors" \
      --label "$label" --attention "$att" --out "$rows/$label.$att.$kind.json" "${far[@]}" |
      tee -a "$log"
    rm -f "$w/logits.safetensors"
  done
}

gen() { "${PY[@]}" gen --seed "$SEED" "${TASK_ARG[@]}" "$@" >>"$log"; }

# What a run's train.jsonl says: median tokens/s, steps, last loss EMA.
rate_of() { "${PY[@]}" rate "$1/train.jsonl" --skip "${2:-5}"; }

# A finished training run into the report: label, its --out folder, the name its steps' log
# gets in $OUT (train-NAME.jsonl.gz), its start (SECONDS), what a step is.
run_note() {
  local label=$1 dir=$2 name=$3 t0=$4 r n l
  shift 4
  read -r r n l <<<"$(rate_of "$dir" 5)"
  note "$label" "$n steps of $*: $((SECONDS - t0)) s, $r tok/s, final loss EMA $l"
  command -v gzip >/dev/null && gzip -c "$dir/train.jsonl" >"$OUT/train-$name.jsonl.gz"
  return 0
}

say "== paper-claim: s2lora $("$BIN/s2lora" version | head -n 1); binaries $BIN"
# the binaries' commit: as given, else what bench/build-carry.sh recorded beside them, else the
# tree's (a copied tree's .git may be stale)
commit=${S2_PC_COMMIT:-$(cat "$BIN/../COMMIT" 2>/dev/null ||
  git rev-parse --short HEAD 2>/dev/null || echo unknown)}
note commit "$commit"
note spec "$SPEC ($(spec_value num_layers) layers, hidden $(spec_value hidden_size)," \
  "byte vocabulary)"
note corpus "$KV_SHARE of the training documents dense-recall, the rest passkey (seed $SEED)$(
  [ -z "${TASK_ARG[*]}" ] || printf '%s %s' "; passkey prompts without the task line" \
    "(S2_PC_PASSKEY_TASK=no)"
  [ "$PK_PRE" = 1 ] || printf '%s' "; phase 1's all dense-recall (no passkey prompt fits $PRE_CTX)")"
note positions "$PRE_POS"
note extensions "$EXT_HOW; arms: ${arms[*]}$([ ${#arms[@]} = 3 ] || echo " (S2_PC_ARMS)")"

current="data: evaluation sets"
if [ $quick = 1 ]; then
  PK_N=2 KV_N=1
  # the token writer against s2lora's own: the same documents, byte for byte
  for k in heldout kv; do
    gen --kind $k --ctx $PRE_CTX --n 3 -o "$w/py-$k.tokens" --text-dir "$w/txt-$k"
    current="data: the token writer against s2lora data ($k)"
    "$BIN/s2lora" data --bytes "$w/txt-$k"/*.txt -o "$w/c-$k.tokens" >>"$log"
    cmp "$w/py-$k.tokens" "$w/c-$k.tokens"
  done
  say "token files: bench/paper_claim.py's equals s2lora data's, byte for byte"
fi
current="data: evaluation sets"
n_held512=$((quick ? 3 : 257)) n_held2048=$((quick ? 3 : 65)) # +1: a window needs a label
gen --kind heldout --ctx $PRE_CTX --n $n_held512 -o "$w/heldout$PRE_CTX.tokens"
gen --kind heldout --ctx $EXT_CTX --n $n_held2048 -o "$w/heldout$EXT_CTX.tokens"
[ "$PK_PRE" = 0 ] ||
  gen --kind passkey --ctx $PRE_CTX --n "$PK_N" --buckets $PK_BUCKETS_PRE_PK \
    --meta "$w/pk$PRE_CTX.json" --logits-in "$w/pk$PRE_CTX.safetensors"
gen --kind passkey --ctx $EXT_CTX --n "$PK_N" --buckets $PK_BUCKETS_EXT \
  --meta "$w/pk$EXT_CTX.json" --logits-in "$w/pk$EXT_CTX.safetensors"
gen --kind kv --ctx $PRE_CTX --n $((2 * KV_N)) --buckets $PK_BUCKETS_PRE \
  --meta "$w/kv$PRE_CTX.json" --logits-in "$w/kv$PRE_CTX.safetensors"
gen --kind kv --ctx $EXT_CTX --n "$KV_N" --buckets $PK_BUCKETS_EXT \
  --meta "$w/kv$EXT_CTX.json" --logits-in "$w/kv$EXT_CTX.safetensors"

if [ -n "$PRE_MODEL" ]; then # phase 1 ran in an earlier call
  current="the pre-trained model"
  if [ -d "$PRE_MODEL" ]; then
    base0=$PRE_MODEL
  else
    base0=$w/pre-model
    mkdir -p "$base0"
    tar -xf "$PRE_MODEL" -C "$base0"
  fi
else
  current="init"
  base0=$w/base0
  s2 init "$SPEC" "${PRE_SET[@]}" -o "$base0" --seed "$SEED"
fi

PRE_TRAIN=(train "$SPEC" "${PRE_SET[@]}" "${PRE_WIN[@]}" --mode full --full-attention
  --grad-accum 1 --batch "$PRE_SEQ" --lr "$PRE_LR" --warmup 100 --schedule cosine
  --weight-decay 0.01 --save-every 0 --seed "$SEED")
EXT_TRAIN=(train "$SPEC" --set "context_length=$EXT_CTX" "${EXT_MODE[@]}" "${EXT_STEP[@]}"
  --lr "$EXT_LR" --warmup 20 --save-every 0 --seed "$SEED")
ext_args() { # the attention of a phase-2 run
  case $1 in
  s2) ;;
  short) echo "--set s2attn.shift=0" ;;
  full) echo "--full-attention" ;;
  esac
}

# ---- the steps: fixed, or measured rates and the budget. Fixed steps still measure phase 2's
# rate (15 steps, seconds), which the budget's check after phase 1 needs: an assumed rate had cut
# the micro model's extensions to half their steps (1.5M tok/s measured against 500 000 assumed).
fixed=0
[ -z "${S2_PC_PRE_STEPS:-}" ] || [ -z "${S2_PC_EXT_STEPS:-}" ] || fixed=1
cal1=0 cal2=0 # the calibration runs this call makes
[ $quick = 1 ] || [ $fixed = 1 ] || [ -n "$PRE_MODEL" ] || cal1=1
[ $quick = 1 ] || [ -n "$STOP_AFTER" ] || cal2=1
if [ $cal1 = 1 ] || [ $cal2 = 1 ]; then
  current="calibration"
  what=
  [ $cal1 = 0 ] || what="40 steps of phase 1's shape"
  [ $cal2 = 0 ] || what="${what:+$what, }15 of phase 2's (full attention)"
  say "== calibration: $what"
  if [ $cal1 = 1 ]; then
    gen --kind train --ctx $PRE_DOC --n $((40 * PRE_SEQ + 1)) -o "$w/cal$PRE_CTX.tokens" \
      --kv-share "$PRE_KV_SHARE"
    s2 "${PRE_TRAIN[@]}" --model "$base0" --data "$w/cal$PRE_CTX.tokens" --out "$w/cal1" \
      --steps 40
    r=$(rate_of "$w/cal1" 5) && RATE1=${r%% *}
  fi
  if [ $cal2 = 1 ]; then
    gen --kind train --ctx $EXT_DOC --n $((15 * EXT_SEQ + 1)) -o "$w/cal$EXT_CTX.tokens" \
      --kv-share "$KV_SHARE"
    s2 "${EXT_TRAIN[@]}" --full-attention --model "$base0" --data "$w/cal$EXT_CTX.tokens" \
      --out "$w/cal2" --steps 15
    r=$(rate_of "$w/cal2" 3) && RATE2=${r%% *}
  fi
  rm -rf "$w/cal1" "$w/cal2" "$w"/cal*.tokens
fi
rates_from="phase 1 $([ $cal1 = 1 ] && echo measured || echo assumed), phase 2 $(
  [ $cal2 = 1 ] && echo measured || echo assumed)"
if [ $fixed = 1 ]; then
  pre_steps=$S2_PC_PRE_STEPS ext_steps=$S2_PC_EXT_STEPS
  rates_from="$rates_from; steps fixed by S2_PC_PRE_STEPS and S2_PC_EXT_STEPS"
else
  share1=0.4 # of the time left, to phase 1; the rest split among the three extensions
  [ -z "$STOP_AFTER" ] || share1=1
  [ -z "$PRE_MODEL" ] || share1=0
  p=$("${PY[@]}" plan --budget "$BUDGET" --elapsed $((quick ? 15 : SECONDS)) \
    --reserve "$RESERVE" --rate1 "$RATE1" --rate2 "$RATE2" --tokens1 $((PRE_SEQ * PRE_CTX)) \
    --tokens2 $((EXT_SEQ * EXT_CTX)) --share1 $share1 --n-ext ${#arms[@]})
  read -r pre_steps ext_steps _ _ <<<"$p"
fi
# the phases this call skips need no steps
[ -z "$PRE_MODEL" ] || pre_steps=1
[ -z "$STOP_AFTER" ] || ext_steps=1
if [ "$pre_steps" -lt 1 ] || [ "$ext_steps" -lt 1 ]; then
  current="plan"
  say "the budget leaves no steps: phase 1 $pre_steps, phase 2 $ext_steps (S2_PC_BUDGET_S=$BUDGET)"
  exit 1
fi
est() { awk -v s="$1" -v t="$2" -v r="$3" 'BEGIN { printf "%.0f", s * t / r }'; }
say "== plan (rates $rates_from: phase 1 $RATE1 tok/s, phase 2 $RATE2 tok/s):"
t1=$(est "$pre_steps" $((PRE_SEQ * PRE_CTX)) "$RATE1")
t2=$(est "$ext_steps" $((EXT_SEQ * EXT_CTX)) "$RATE2")
if [ -n "$PRE_MODEL" ]; then
  say "   phase 1: none here, the pre-trained model is $PRE_MODEL"
else
  say "   phase 1: $pre_steps steps of $PRE_SEQ x $PRE_CTX tokens, about $t1 s"
fi
if [ -n "$STOP_AFTER" ]; then
  say "   phase 2: none here (S2_PC_STOP_AFTER=pre; the model goes to $OUT/pre-model.tar)"
else
  say "   phase 2: ${#arms[@]} run(s) (${arms[*]}) of $ext_steps steps of $EXT_SEQ x $EXT_CTX" \
    "tokens, $EXT_HOW, about $t2 s each"
fi
say "   evaluations and data: about $RESERVE s in all (S2_PC_RESERVE_S); budget $BUDGET s"
if [ $quick = 1 ]; then
  say "   (--quick runs 2 steps of each instead)"
  pre_steps=2 ext_steps=2
fi

current="data: training sets"
# how often a run of STEPS steps of SEQ sequences goes over its DOCS documents
epochs() {
  awk -v s="$1" -v q="$2" -v d="$3" 'BEGIN { printf "%d documents, %.2f epochs", d, s * q / d }'
}
# documents for n sequences, at most MAX_DOCS
docs() { echo $(($1 < MAX_DOCS ? $1 : MAX_DOCS)); }
pre_docs=$(docs $((pre_steps * PRE_SEQ + 1))) ext_docs=$(docs $((ext_steps * EXT_SEQ + 1)))
[ -n "$PRE_MODEL" ] ||
  gen --kind train --ctx $PRE_DOC --n "$pre_docs" -o "$w/train$PRE_CTX.tokens" \
    --kv-share "$PRE_KV_SHARE"
# phase 2's documents are written while phase 1 trains (the trainer uses one core; the
# generator four)
if [ -z "$STOP_AFTER" ]; then
  "${PY[@]}" gen --seed "$SEED" "${TASK_ARG[@]}" --kind train --ctx $EXT_DOC --n "$ext_docs" \
    -o "$w/train$EXT_CTX.tokens" --kv-share "$KV_SHARE" --procs 4 >>"$log" 2>&1 &
  gen_pid=$!
fi

if [ -n "$PRE_MODEL" ]; then
  pre_model=$base0
  note "phase 1" "not in this call: the pre-trained model of $PRE_MODEL"
else
  current="phase 1 (pre-training at $PRE_CTX)"
  say "== $current: $pre_steps steps"
  t0=$SECONDS
  s2 "${PRE_TRAIN[@]}" --model "$base0" --data "$w/train$PRE_CTX.tokens" --out "$w/pre" \
    --steps "$pre_steps"
  pre_model=$w/pre/model
  if [ $ran = 1 ]; then
    run_note "phase 1" "$w/pre" pre $t0 "$PRE_SEQ x $PRE_CTX tokens (--batch $PRE_SEQ)," \
      "full FT, full attention, lr $PRE_LR cosine; $(epochs "$pre_steps" $PRE_SEQ "$pre_docs")"
  else
    pre_model=$base0 # --quick without a GPU: the initial model stands in for the later ones
  fi
  rm -f "$w/train$PRE_CTX.tokens"
fi
device=$(grep -m 1 -o 'train on .*' "$log" | sed 's/^train on //' || true)
[ -z "$device" ] || note device "$device"

ppl pre@$PRE_CTX $PRE_CTX --model "$pre_model"
retrieval pre@$PRE_CTX full $PRE_CTX --model "$pre_model"
ppl pre@$EXT_CTX $EXT_CTX --model "$pre_model"
retrieval pre@$EXT_CTX full $EXT_CTX --model "$pre_model"

if [ -n "$STOP_AFTER" ]; then
  current="the pre-trained model into $OUT/pre-model.tar"
  tar -cf "$OUT/pre-model.tar" -C "$pre_model" .
  note "phase 2" "not in this call (S2_PC_STOP_AFTER=pre): the pre-trained model is in" \
    "pre-model.tar, for S2_PC_PRE_MODEL"
  note wall "$SECONDS s for the whole script"
  current="the end"
  exit 0
fi

current="data: phase 2's training set"
wait "$gen_pid"
gen_pid=

if [ $quick = 0 ]; then # phase 1 may have run long: phase 2 gets what is left
  p=$("${PY[@]}" plan --budget "$BUDGET" --elapsed $SECONDS --reserve $((RESERVE * 3 / 4)) \
    --rate1 1 --rate2 "$RATE2" --tokens1 1 --tokens2 $((EXT_SEQ * EXT_CTX)) --share1 0 \
    --n-ext ${#arms[@]})
  read -r _ fit _ _ <<<"$p"
  if [ "$fit" -lt "$ext_steps" ]; then
    say "phase 1 ran long: phase 2 cut from $ext_steps to $fit steps a run to fit the budget"
    note budget "phase 2 cut from $ext_steps to $fit steps a run after phase 1 ran long"
    ext_steps=$fit
  fi
  if [ "$ext_steps" -lt 1 ]; then
    current="phase 2 plan"
    say "no time is left for phase 2 (S2_PC_BUDGET_S=$BUDGET)"
    exit 1
  fi
fi

for mode in "${arms[@]}"; do
  current="phase 2 ($mode attention)"
  say "== $current: $ext_steps steps"
  t0=$SECONDS
  # shellcheck disable=SC2046 # ext_args is empty or one option and its value
  s2 "${EXT_TRAIN[@]}" $(ext_args $mode) --model "$pre_model" --data "$w/train$EXT_CTX.tokens" \
    --out "$w/ext-$mode" --steps "$ext_steps"
  if [ $ran = 1 ]; then
    run_note "phase 2 ($mode)" "$w/ext-$mode" $mode $t0 \
      "$EXT_SEQ x $EXT_CTX tokens$EXT_STEP_NOTE," \
      "$EXT_HOW, lr $EXT_LR; $(epochs "$ext_steps" $EXT_SEQ "$ext_docs")"
    if [ ${#EXT_MODE[@]} = 0 ]; then
      tuned=(--model "$pre_model" --adapter "$w/ext-$mode/adapter"
        --trainable "$w/ext-$mode/trainable.safetensors")
    else
      tuned=(--model "$w/ext-$mode/model")
    fi
  else # --quick without a GPU: no adapter exists; the evaluations are checked without one
    tuned=(--model "$pre_model")
  fi
  ppl $mode $EXT_CTX "${tuned[@]}"
  retrieval $mode full $EXT_CTX "${tuned[@]}"
  if [ $mode != full ]; then # as trained: the loss on the answers phase 2 could learn
    # shellcheck disable=SC2046
    retrieval $mode $mode $EXT_CTX "${tuned[@]}" --s2attn $(ext_args $mode)
  fi
done
current="the end"
note passkey "$PK_N prompts per distance bucket (seed $SEED); distance: the answer's first" \
  "digit minus the key's first digit in the information line$([ "$PK_PRE" = 1 ] ||
    echo "; none at $PRE_CTX, where the prompt leaves the key no room to move")"
note "dense recall" "$KV_N held-out documents at $EXT_CTX, $((2 * KV_N)) at $PRE_CTX; distance:" \
  "a recalled digit minus the same digit in the key's definition"
note wall "$SECONDS s for the whole script"

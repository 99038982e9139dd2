#!/usr/bin/env bash
# One image and one question, end to end and stage by stage (the paper's Table 11), for a model
# of LLaVA-1.5-7B's shape with random weights: `htc bench --suite e2e` (vanilla, VoCo-LLaMA and
# HTC modes) next to transformers' LLaVA-1.5 (sdpa) on the same device, with the ratios and the
# peak memory of each side; a markdown report on stdout (and in --out FILE).
#
# Usage: bench/gpu-bench.sh [--tiny] [--out docs/perf.md] [--layers N] [--reps R]
#   --tiny      the tiny shape on the CPU, f32 on both sides: the check the test suite runs
#   --out FILE  also write the report there (with the device named)
#   --layers N  fewer LLM layers than the shape's (a quick look; the report says so)
# Environment:
#   HTC_BIN       an `htc` built elsewhere (a GPU machine without a Rust toolchain); otherwise
#                 this builds one with HTC_FEATURES (default cuda; wgpu also works)
#   PYTHON        a python with torch and transformers (default: .venv-fixtures/bin/python,
#                 see fixtures/make_fixtures.py); without one the transformers side is skipped
#   DTYPE         both sides' dtype (default bf16 on a GPU, f32 with --tiny; with
#                 HTC_FEATURES=wgpu use f16: WGSL has no bf16)
#   BENCH_DIR     where the JSON lines go (default runs/gpu-bench)
set -euo pipefail
source "$(dirname "$0")/../scripts/env.sh"
cd "$HTC_ROOT"

shape=7b out="" layers="" reps=5
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) shape=tiny ;;
    --out) out=$2; shift ;;
    --layers) layers=$2; shift ;;
    --reps) reps=$2; shift ;;
    *) echo "unknown option $1 (see the head of $0)" >&2; exit 2 ;;
  esac
  shift
done
dir=${BENCH_DIR:-runs/gpu-bench}
mkdir -p "$dir"

gpu=""
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
fi
if [ "$shape" = 7b ] && [ -z "$gpu" ]; then
  echo "no GPU found (nvidia-smi): the 7B shape needs one; --tiny runs the CPU check" >&2
  exit 1
fi

if [ -n "${HTC_BIN:-}" ]; then
  htc=$HTC_BIN
elif [ "$shape" = tiny ]; then
  cargo build --quiet --release -p htc-worker --bin htc
  htc="$CARGO_TARGET_DIR/release/htc"
else
  features=${HTC_FEATURES:-cuda}
  log "building htc with --features $features"
  cargo build --quiet --release -p htc-worker --bin htc --no-default-features --features "$features" \
    --target-dir "$CARGO_TARGET_DIR/$features"
  htc="$CARGO_TARGET_DIR/$features/release/htc"
fi

# Peak GPU memory used while a command runs, from nvidia-smi every 100 ms, minus the idle
# figure before it starts (the same measure for both sides; MiB).
watch_gpu() {
  local log=$1
  shift
  local idle
  idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$log.samples" &
  local pid=$!
  local rc=0
  "$@" || rc=$?
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  sort -n "$log.samples" | tail -1 | awk -v idle="$idle" '{print $1 - idle}' > "$log"
  return $rc
}

if [ "$shape" = tiny ]; then dtype=${DTYPE:-f32}; else dtype=${DTYPE:-bf16}; fi
args=(bench --suite e2e --shape "$shape" --reps "$reps" --dtype "$dtype" --json "$dir/htc.jsonl")
[ -n "$layers" ] && args+=(--layers "$layers")
log "htc: $htc ${args[*]}"
mem=()
if [ -n "$gpu" ] && [ "$shape" = 7b ]; then
  watch_gpu "$dir/htc.gpu-mem" "$htc" "${args[@]}"
  mem+=(--gpu-mem "htc=$(cat "$dir/htc.gpu-mem")")
else
  "$htc" "${args[@]}"
fi

py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv-fixtures/bin/python ]; then py=.venv-fixtures/bin/python; else py=python3; fi
fi
peer=()
if "$py" -c "import torch, transformers" 2>/dev/null; then
  if [ "$shape" = tiny ]; then
    pargs=(--device cpu --dtype "$dtype")
  else
    pargs=(--device cuda --dtype "$dtype")
  fi
  pargs+=(--shape "$shape" --reps "$reps" --json "$dir/transformers.jsonl")
  [ -n "$layers" ] && pargs+=(--layers "$layers")
  log "transformers: ${pargs[*]}"
  if [ -n "$gpu" ] && [ "$shape" = 7b ]; then
    watch_gpu "$dir/transformers.gpu-mem" "$py" bench/bench_gpu_peer.py transformers "${pargs[@]}"
    mem+=(--gpu-mem "transformers=$(cat "$dir/transformers.gpu-mem")")
  else
    "$py" bench/bench_gpu_peer.py transformers "${pargs[@]}"
  fi
  peer=(--peer "$dir/transformers.jsonl")
else
  log "no torch/transformers in $py: the transformers side is skipped (see fixtures/make_fixtures.py)"
fi

{
  echo "## End-to-end latency, shape $shape${layers:+ ($layers LLM layers)}"
  echo
  echo "Device: ${gpu:-CPU ($(nproc) cores)}; htc $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y-%m-%d);"
  echo "random weights in $dtype on both sides; batch 1; 32 question tokens; 32 decoded tokens; $reps repetitions after a warm-up."
  echo
  python3 bench/bench_gpu_peer.py report --htc "$dir/htc.jsonl" "${peer[@]}" "${mem[@]}"
} > "$dir/report.md"
cat "$dir/report.md"
if [ -n "$out" ]; then
  cp "$dir/report.md" "$out"
  log "report written to $out"
fi

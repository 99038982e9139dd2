#!/usr/bin/env bash
# Builds the web UI into dist/ with trunk, offline. On machines where rustup has no wasm32
# std, uses Debian's rustc-web and rebuilds std (-Zbuild-std), scoped to this build only.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$HTC_ROOT"
if [ -f "$WASM_FALLBACK_MARKER" ]; then
  log "trunk build (Debian rustc-web, -Zbuild-std)"
  fallback() {
    CARGO_TARGET_DIR="$CARGO_TARGET_DIR/wasm-fallback" PATH="/usr/bin:$PATH" RUSTC_BOOTSTRAP=1 \
      CARGO_UNSTABLE_BUILD_STD=std,panic_abort "$@"
  }
  # An online cargo build first: it fetches std's own dependencies (dlmalloc, ...) that
  # trunk's --offline build cannot, and checks that the shared crate builds for wasm.
  fallback cargo build --quiet -p htc-shared -p htc-web --target wasm32-unknown-unknown --profile wasm-release
  fallback trunk build "$@"
else
  log "trunk build"
  trunk build "$@"
fi
ls -l dist/*.wasm >&2

#!/usr/bin/env bash
# Installs what the project needs, idempotently and offline-safe (crates.io, npm, PyPI and
# Debian only). `setup.sh --run` installs what serving needs (README command 1): the wasm32
# target (rustup, else Debian's rustc-web with -Zbuild-std), wasm-bindgen-cli pinned to
# Cargo.lock, trunk, and wasm-opt. Without it (README command 2) it adds what the tests need:
# Chromium + chromedriver, HAProxy, promtool, lavapipe, rustfmt and clippy.
set -euo pipefail
source "$(dirname "$0")/env.sh"
mkdir -p "$HTC_ROOT/.cache"
for_tests=1
case "${1:-}" in
  --run) for_tests=0 ;;
  "") ;;
  *) echo "setup.sh: unknown argument '$1' (expected --run or nothing)" >&2; exit 2 ;;
esac

apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    as_root apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

if [ "$for_tests" = 1 ]; then
  # 1. Browser for the UI tests.
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    apt_install chromium chromium-driver
  fi

  # 1a. HAProxy, the load balancer of the scale-out test (scripts/scale-test.sh); promtool (in
  # Debian's prometheus package) for the deploy checks (scripts/check-deploy.sh).
  command -v haproxy >/dev/null || apt_install haproxy
  # lavapipe (Vulkan on the CPU) for the native test of the hand-written WGSL encoder.
  apt_install mesa-vulkan-drivers
  command -v promtool >/dev/null || apt_install prometheus

  # 1b. rustfmt and clippy for the format and lint checks (in rustup's default profile; added
  # if a minimal toolchain lacks them).
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy >&2
  fi
fi

# 2. The wasm32 target: rustup first, Debian's rustc-web + build-std as the fallback.
wasm_std_present() { [ -d "$(rustc --print sysroot)/lib/rustlib/wasm32-unknown-unknown/lib" ]; }
if [ "${HTC_FORCE_WASM_FALLBACK:-0}" != 1 ] && { wasm_std_present || rustup target add wasm32-unknown-unknown >&2 && wasm_std_present; }; then
  rm -f "$WASM_FALLBACK_MARKER"
else
  log "wasm32 std unavailable from rustup: using Debian rustc-web with -Zbuild-std"
  apt_install rustc-web cargo-web rust-web-src lld-22
  touch "$WASM_FALLBACK_MARKER"
fi

# 3. Host tools, pinned. Skipped when the installed version already matches. Built without
# their own release profiles' link-time optimisation and single codegen unit (trunk's: fat LTO,
# one unit), which make the build several times longer and a build tool no faster to use.
tool_install() {
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 cargo install "$@"
}
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$WASM_BINDGEN_VERSION" ]; then
  log "cargo install wasm-bindgen-cli $WASM_BINDGEN_VERSION"
  tool_install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --quiet
fi
if [ "$(trunk --version 2>/dev/null | awk '{print $2}')" != "$TRUNK_VERSION" ]; then
  log "cargo install trunk $TRUNK_VERSION (slow, once per machine)"
  tool_install trunk --version "$TRUNK_VERSION" --locked --ignore-rust-version --quiet
fi
if [ "$("$HTC_ROOT/node_modules/.bin/wasm-opt" --version 2>/dev/null | awk '{print $3}')" != 132 ] \
  || [ ! -f "$HTC_ROOT/node_modules/axe-core/axe.min.js" ]; then
  log "npm ci (binaryen 132 for wasm-opt, axe-core for the accessibility check)"
  (cd "$HTC_ROOT" && npm ci --silent --no-audit --no-fund)
fi

# 4. Crates for offline trunk builds.
(cd "$HTC_ROOT" && cargo fetch --quiet)
log "setup complete"

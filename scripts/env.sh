# Sourced by the project scripts: shared paths and tool versions.
# shellcheck shell=bash
HTC_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export HTC_ROOT
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/htc-target}
export PATH="$HOME/.cargo/bin:$HTC_ROOT/node_modules/.bin:$PATH"
TRUNK_VERSION=0.22.1
# wasm-bindgen-cli must equal the wasm-bindgen crate version in Cargo.lock.
WASM_BINDGEN_VERSION=$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/version = |"/, ""); print; exit}' "$HTC_ROOT/Cargo.lock")
# Set by setup.sh when rustup cannot provide the wasm32 std and Debian's rustc-web is used.
WASM_FALLBACK_MARKER="$HTC_ROOT/.cache/wasm-fallback"
log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

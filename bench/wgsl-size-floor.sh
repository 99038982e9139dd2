#!/usr/bin/env bash
# Sizes of the page's encoder paths, built like the page's wasm (opt-level z, fat LTO,
# wasm-bindgen, wasm-opt -Oz), raw and gzipped:
# - the floor of a hand-written WGSL path: bench/wgsl-floor (the wgpu crate on WebGPU, one
#   compute pipeline, a dispatch and a read-back);
# - the encoder's Web Worker without burn-wgpu (`htc-web --no-default-features`): the WGSL
#   kernels of shaders/mgvq.wgsl and the burn-ndarray CPU fallback;
# - the page's encoder in dist/ (WGSL kernels + burn-wgpu + burn-ndarray), if built.
set -euo pipefail
source "$(dirname "$0")/../scripts/env.sh"
size() { echo "$(stat -c %s "$1") bytes, $(gzip -9 -c "$1" | wc -c) gzipped"; }
opt() {
  "$HTC_ROOT/node_modules/.bin/wasm-opt" -Oz --enable-bulk-memory --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-mutable-globals --enable-reference-types -o "$2" "$1"
}

cd "$HTC_ROOT/bench/wgsl-floor"
out="$CARGO_TARGET_DIR/wgsl-floor"
cargo build --quiet --release --target wasm32-unknown-unknown --target-dir "$out"
wasm-bindgen --target web --out-dir "$out/bindgen" "$out/wasm32-unknown-unknown/release/wgslfloor.wasm"
opt "$out/bindgen/wgslfloor_bg.wasm" "$out/floor.wasm"
echo "wgpu + one WGSL pipeline (the floor of a hand-written path): $(size "$out/floor.wasm")"

cd "$HTC_ROOT"
lean="$CARGO_TARGET_DIR/wgsl-only"
cargo build --quiet -p htc-web --bin encoder --no-default-features --target wasm32-unknown-unknown \
  --profile wasm-release --target-dir "$lean"
wasm-bindgen --target no-modules --out-dir "$lean/bindgen" "$lean/wasm32-unknown-unknown/wasm-release/encoder.wasm"
opt "$lean/bindgen/encoder_bg.wasm" "$lean/encoder.wasm"
echo "the encoder without burn-wgpu (WGSL kernels + burn-ndarray, MGVQ): $(size "$lean/encoder.wasm")"

enc="$HTC_ROOT/dist/encoder_bg.wasm"
[ -f "$enc" ] && echo "the page's encoder (WGSL kernels + burn-wgpu + burn-ndarray, MGVQ): $(size "$enc")"
exit 0

#!/usr/bin/env bash
# The size floor of a hand-written WGSL path for the page's MGVQ encoder: builds
# scripts/wgsl-floor (the wgpu crate on WebGPU, one compute pipeline, a dispatch and a
# read-back) for wasm32 like the page's wasm (opt-level z, fat LTO, wasm-bindgen, wasm-opt -Oz)
# and prints its size, raw and gzipped, next to the page's encoder in dist/ if built.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$HTC_ROOT/scripts/wgsl-floor"
out="$CARGO_TARGET_DIR/wgsl-floor"
cargo build --quiet --release --target wasm32-unknown-unknown --target-dir "$out"
wasm-bindgen --target web --out-dir "$out/bindgen" "$out/wasm32-unknown-unknown/release/wgslfloor.wasm"
"$HTC_ROOT/node_modules/.bin/wasm-opt" -Oz --enable-bulk-memory --enable-nontrapping-float-to-int \
  --enable-sign-ext --enable-mutable-globals --enable-reference-types \
  -o "$out/floor.wasm" "$out/bindgen/wgslfloor_bg.wasm"
size() { echo "$(stat -c %s "$1") bytes, $(gzip -9 -c "$1" | wc -c) gzipped"; }
echo "wgpu + one WGSL pipeline (the floor of a hand-written path): $(size "$out/floor.wasm")"
enc="$HTC_ROOT/dist/encoder_bg.wasm"
[ -f "$enc" ] && echo "the page's encoder (burn-wgpu + burn-ndarray + MGVQ): $(size "$enc")"

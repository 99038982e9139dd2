#!/usr/bin/env bash
# Builds the worker's container image (see the Dockerfile):
#   scripts/build-image.sh [cpu|cuda] [more build options…]
# cpu: candle CPU backend on Debian slim (htc-worker:cpu); cuda: burn-cuda, built on NVIDIA's
# CUDA devel image and run on its runtime image (htc-worker:cuda). CONTAINER_ENGINE picks the
# tool (docker, the default, or podman).
set -euo pipefail
cd "$(dirname "$0")/.."
flavor=${1:-cpu}
shift || true
engine=${CONTAINER_ENGINE:-docker}
cuda=12.6.3
case $flavor in
  cpu) exec "$engine" build -t htc-worker:cpu "$@" . ;;
  cuda)
    exec "$engine" build --build-arg "BUILD_BASE=nvidia/cuda:$cuda-devel-ubuntu22.04" \
      --build-arg "RUN_BASE=nvidia/cuda:$cuda-runtime-ubuntu22.04" --build-arg FEATURES=cuda \
      -t htc-worker:cuda "$@" .
    ;;
  *)
    echo "usage: scripts/build-image.sh [cpu|cuda] [build options]" >&2
    exit 2
    ;;
esac

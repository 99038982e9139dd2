# syntax=docker/dockerfile:1
# The worker as a container image, in two flavours (scripts/build-image.sh cpu|cuda runs these):
#   docker build -t htc-worker:cpu .                                         # candle CPU backend
#   docker build --build-arg BUILD_BASE=nvidia/cuda:12.6.3-devel-ubuntu22.04 \
#     --build-arg RUN_BASE=nvidia/cuda:12.6.3-runtime-ubuntu22.04 \
#     --build-arg FEATURES=cuda -t htc-worker:cuda .                         # burn-cuda, GPU nodes
# Both run `htc serve --api-only` (WebSocket, OpenAI endpoint, model card, metrics, health) as an
# unprivileged user on port 8080, with the model read from /models/model, a directory mounted
# read-only:
#   docker run --rm -p 8080:8080 -v "$PWD/models/shapes-demo:/models/model:ro" htc-worker:cpu
# The web app is not in the image: serve `dist/` (scripts/build-web.sh) from any static host or
# embed the widget, pointed at this worker (see docs/widget.md).

ARG BUILD_BASE=rust:1.95-bookworm
ARG RUN_BASE=debian:bookworm-slim

# --- build ------------------------------------------------------------------------------------
FROM ${BUILD_BASE} AS build
ARG RUST_VERSION=1.95
# The worker's backend feature: candle (CPU) or cuda (burn-cuda compiles its kernels at run
# time with NVRTC, which NVIDIA's runtime image carries).
ARG FEATURES=candle
# A base without Rust (NVIDIA's CUDA image) gets it from rustup.
RUN if ! command -v cargo >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential pkg-config \
      && rm -rf /var/lib/apt/lists/* \
      && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain "${RUST_VERSION}"; \
    fi
ENV PATH=/root/.cargo/bin:/usr/local/cargo/bin:$PATH
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p htc-worker --bin htc --no-default-features --features "${FEATURES}" \
    && cp target/release/htc /htc

# --- run --------------------------------------------------------------------------------------
FROM ${RUN_BASE} AS worker
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin htc
COPY --from=build /htc /usr/local/bin/htc
USER 10001:10001
EXPOSE 8080
VOLUME ["/models"]
ENV HTC_LOG=info
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
# SIGTERM: the worker stops taking questions, drains the answers in flight, then exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/htc", "serve", "--api-only", "--addr", "0.0.0.0:8080", "--model", "/models/model"]

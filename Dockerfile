# syntax=docker/dockerfile:1
# The worker as a container image, in two flavours:
#   docker build -t htc-worker:cpu .                             # burn's candle CPU backend
#   docker build --build-arg FLAVOR=cuda -t htc-worker:cuda .    # burn-cuda, for a GPU node
# Both run `htc serve --api-only` (WebSocket, OpenAI endpoint, model card, metrics, health) as an
# unprivileged user on port 8080, with the model read from /models/model, a directory mounted
# read-only:
#   docker run --rm -p 8080:8080 -v "$PWD/models/shapes-demo:/models/model:ro" htc-worker:cpu
# The web app is not in the image: serve `dist/` (scripts/build-web.sh) from any static host or
# embed the widget, pointed at this worker (see README, "The widget").

ARG FLAVOR=cpu
ARG RUST_VERSION=1.95
ARG CUDA_VERSION=12.6.3

# --- build: the CPU binary ------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build-cpu
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p htc-worker --bin htc \
    && cp target/release/htc /htc

# --- build: the CUDA binary (burn-cuda compiles its kernels at run time with NVRTC) ---------
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu22.04 AS build-cuda
ARG RUST_VERSION
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential pkg-config \
    && rm -rf /var/lib/apt/lists/* \
    && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain "${RUST_VERSION}"
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/root/.cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p htc-worker --bin htc --no-default-features --features cuda \
    && cp target/release/htc /htc

# --- run: the same final stage on either base ------------------------------------------------
FROM debian:bookworm-slim AS base-cpu
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu22.04 AS base-cuda
FROM build-${FLAVOR} AS build
FROM base-${FLAVOR} AS worker
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

# syntax=docker/dockerfile:1
# Container image for `rtdetr serve` (deploy/kubernetes/README.md).
#
#   docker build -t rtdetr:dev .
#   docker run --rm -p 8080:8080 rtdetr:dev        # serves the bundled demo model, no API key
#
# Two stages: the Rust toolchain builds the binary; a slim Debian runtime holds only the
# binary, the bundled demo model (models/shapes-demo) and curl for HEALTHCHECK, and runs as
# a non-root user (uid 10001). Real checkpoints (Hub ids such as PekingU/rtdetr_r50vd) are
# not baked in: they come from the Hugging Face cache at $HF_HOME, a volume that the
# Kubernetes manifests fill with an init container.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
# Portable code: no `-C target-cpu=native`, the image must run on any x86-64 node (Zen3 and
# Zen4 alike). The matrix kernels (gemm) pick AVX2 / AVX-512 at run time. On a fleet known to
# have AVX2, `--build-arg RUSTFLAGS="-C target-cpu=x86-64-v3"` is safe for Zen3 and Zen4.
ARG RUSTFLAGS=""
ENV RUSTFLAGS=${RUSTFLAGS} CARGO_TERM_COLOR=never
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY crates ./crates
# The rust image brings gcc for the C parts (libjpeg-turbo); TLS is rustls (no OpenSSL).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p rtdetr-cli \
 && install -D -m 0755 target/release/rtdetr /out/rtdetr

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 rtdetr \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin rtdetr \
 && install -d -o 10001 -g 10001 /cache/huggingface
COPY --from=build /out/rtdetr /usr/local/bin/rtdetr
COPY models/shapes-demo /opt/rtdetr/models/shapes-demo
ENV HF_HOME=/cache/huggingface \
    RTDETR_LOG=info
WORKDIR /opt/rtdetr
# Numeric user so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 8080
# /health answers 200 only once the model is loaded and warmed up, 503 while draining.
# (Kubernetes ignores HEALTHCHECK and uses the probes in deploy/kubernetes/base/deployment.yaml.)
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD curl -fsS -o /dev/null --max-time 2 http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["/usr/local/bin/rtdetr"]
CMD ["serve", "--model", "/opt/rtdetr/models/shapes-demo", "--host", "0.0.0.0", "--port", "8080"]

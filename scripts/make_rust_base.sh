#!/usr/bin/env bash
# A local stand-in for the official rust:1-slim-bookworm image, for machines that reach package
# registries but no image registry (the container test builds it only when the image is missing).
# It is the python:3.11-slim base (or its stand-in: Debian bookworm) plus this machine's own
# stable Rust toolchain (rustc, cargo, the std library; no docs), gcc to link, and cargo pointed at
# the host's CA bundle where the base image has one (a network that inspects TLS).
#   usage: scripts/make_rust_base.sh [podman|docker]
set -euo pipefail
ENGINE=${1:-podman}
TAG=docker.io/library/rust:1-slim-bookworm
BASE=docker.io/library/python:3.11-slim
RUSTC=$(command -v rustc) || { echo "no rustc on PATH: install a Rust toolchain (rustup)" >&2; exit 1; }
SYSROOT=$(rustc --print sysroot)
CARGO=$(rustup which cargo 2>/dev/null || command -v cargo)
CTX=$(mktemp -d "${TMPDIR:-/tmp}/mimo-rust-base.XXXXXX")
trap 'rm -rf "$CTX"' EXIT
mkdir -p "$CTX/rust/bin" "$CTX/rust/lib"
cp -a "$SYSROOT/bin/rustc" "$SYSROOT/bin/rustdoc" "$CTX/rust/bin/" 2>/dev/null || cp -a "$SYSROOT/bin/rustc" "$CTX/rust/bin/"
cp -aL "$CARGO" "$CTX/rust/bin/cargo"
cp -a "$SYSROOT/lib/." "$CTX/rust/lib/"
rm -rf "$CTX/rust/lib/rustlib/src"  # sources only (rust-src); the linker (rust-lld, gcc-ld) stays
echo "$RUSTC ($(rustc --version)) -> $TAG"
cat > "$CTX/Containerfile" <<'DOCKER'
FROM docker.io/library/python:3.11-slim
COPY rust /usr/local/rust
ENV PATH=/usr/local/rust/bin:/usr/local/cargo/bin:$PATH CARGO_HOME=/usr/local/cargo
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && if [ -f /etc/ssl/host-ca-bundle.crt ]; then \
      printf '[http]\ncainfo = "/etc/ssl/host-ca-bundle.crt"\n' > /usr/local/cargo-config.toml; \
    else : > /usr/local/cargo-config.toml; fi \
 && mkdir -p /usr/local/cargo && mv /usr/local/cargo-config.toml /usr/local/cargo/config.toml \
 && rustc --version && cargo --version
DOCKER
case "$ENGINE" in
  podman) podman build --pull=never --isolation=chroot --format docker -t "$TAG" "$CTX" >/dev/null ;;
  docker) docker build --pull=never -t "$TAG" "$CTX" >/dev/null ;;
  *) echo "engine must be podman or docker" >&2; exit 2 ;;
esac
echo "rust:1-slim-bookworm stand-in ready ($ENGINE)"

# syntax=docker/dockerfile:1
#
# The devheal image: one static-ish binary, `devheal`, on distroless. The same image runs the
# node agent (`devheal agent`, as uid 0: see deploy/base/agent-daemonset.yaml) and the
# controller (`devheal controller`, as the image's nonroot user 65532).
#
#   docker build -t ghcr.io/devheal/devheal:0.1.0 .
#
# DEVHEAL_IMAGE and DEVHEAL_VERSION name the image the manifests in deploy/ reference;
# crates/k8s/tests/deploy_manifests.rs checks that the two agree and that the version is the
# workspace's, and the build below stops if Cargo.toml says otherwise.

# The workspace's rust-version is 1.89 (edition 2024); this is the toolchain it is tested with.
# Bookworm, because the runtime below is Debian 12: the binary must not need a newer glibc.
FROM docker.io/library/rust:1.95-bookworm AS builder
ARG DEVHEAL_VERSION=0.1.0
WORKDIR /src
COPY . .
RUN grep -qx "version = \"${DEVHEAL_VERSION}\"" Cargo.toml \
    || { echo "Dockerfile DEVHEAL_VERSION=${DEVHEAL_VERSION} but Cargo.toml's workspace version differs" >&2; exit 1; }
# --locked: exactly the dependency versions in Cargo.lock. The kubelet protos compile in pure
# Rust (no protoc). The caches only speed up rebuilds; the binary is copied out of the cached
# target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p devheal \
    && install -D -m 0755 target/release/devheal /out/devheal

# glibc, libgcc and CA certificates, no shell, no package manager; user 65532 by default.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG DEVHEAL_IMAGE=ghcr.io/devheal/devheal
ARG DEVHEAL_VERSION=0.1.0
LABEL org.opencontainers.image.title="devheal" \
      org.opencontainers.image.description="Keeps Kubernetes pods with GPUs productive when devices fail" \
      org.opencontainers.image.source="https://github.com/devheal/devheal" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${DEVHEAL_VERSION}" \
      org.opencontainers.image.ref.name="${DEVHEAL_IMAGE}:${DEVHEAL_VERSION}"
COPY --from=builder /out/devheal /usr/local/bin/devheal
ENTRYPOINT ["devheal"]

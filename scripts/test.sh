#!/usr/bin/env bash
# Every test of devheal: the workspace's tests (`cargo test --workspace`), then the end-to-end
# tests against a real Kubernetes control plane (scripts/e2e.sh, which builds and caches
# kube-apiserver, etcd, kube-controller-manager and kube-scheduler from Go modules on first use).
# Extra arguments go to cargo test. Exits non-zero if either part fails.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test --workspace"
cargo test --workspace --locked "$@"
echo "== scripts/e2e.sh (the real control plane)"
scripts/e2e.sh

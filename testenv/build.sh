#!/usr/bin/env bash
# Builds the test control plane (kube-apiserver, kube-controller-manager, kube-scheduler, etcd)
# from the Go modules pinned in testenv/go.mod, once per version: the binaries are cached under
# $DEVHEAL_TESTENV_CACHE (default ~/.cache/devheal-testenv)/<key>, where the key is the
# Kubernetes release, the Go toolchain and a hash of go.mod/go.sum. A second run only checks
# the cache. Prints the directory holding the binaries on its last line.
#
#   testenv/build.sh            # build what is missing, print the bin directory
#
# Needs: go (1.26 or later, for Kubernetes 1.37) and the Go module proxy; about 15 minutes of
# two cores when nothing is cached, a few seconds after.
set -euo pipefail
cd "$(dirname "$0")"

command -v go >/dev/null 2>&1 || { echo "testenv/build.sh: go is not on PATH (the test control plane is built from Go modules)" >&2; exit 1; }

K8S_VERSION="$(awk '($1 == "require" && $2 == "k8s.io/kubernetes") {print $3} ($1 == "k8s.io/kubernetes" && $2 ~ /^v/) {print $2}' go.mod | head -n 1)"
[[ -n "$K8S_VERSION" ]] || { echo "testenv/build.sh: no k8s.io/kubernetes requirement in testenv/go.mod" >&2; exit 1; }
GO_VERSION="$(go env GOVERSION)"
SUM="$(cat go.mod go.sum tools.go build.sh | sha256sum | cut -c1-12)"
CACHE="${DEVHEAL_TESTENV_CACHE:-$HOME/.cache/devheal-testenv}"
BIN="$CACHE/$K8S_VERSION-$GO_VERSION-$SUM/bin"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler etcd)

have_all() {
    local b
    for b in "${BINARIES[@]}"; do [[ -x "$BIN/$b" ]] || return 1; done
}

if have_all; then
    echo "testenv: cached control plane $K8S_VERSION in $BIN" >&2
    echo "$BIN"
    exit 0
fi

echo "testenv: building kube-apiserver, kube-controller-manager, kube-scheduler and etcd at $K8S_VERSION with $GO_VERSION (cold: about 15 minutes on two cores)" >&2
start=$SECONDS
TMP="$BIN.tmp.$$"
rm -rf "$TMP"
mkdir -p "$TMP"
trap 'rm -rf "$TMP"' EXIT
MINOR="$(cut -d. -f2 <<<"$K8S_VERSION")"
# The version the binaries report (kubectl version, /version); Kubernetes' own build sets it the same way.
LDFLAGS="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$MINOR -X k8s.io/component-base/version.gitTreeState=clean"
# go.sum is committed: the build verifies every module against it and rewrites nothing.
go build -trimpath -ldflags "$LDFLAGS" -o "$TMP/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler
go build -trimpath -ldflags "-s -w" -o "$TMP/etcd" go.etcd.io/etcd/server/v3
mkdir -p "$(dirname "$BIN")"
rm -rf "$BIN"
mv "$TMP" "$BIN"
trap - EXIT
echo "testenv: built in $((SECONDS - start)) s into $BIN" >&2
echo "$BIN"

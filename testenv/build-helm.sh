#!/usr/bin/env bash
# Builds helm from its Go module at the pinned version below, once: the binary is cached under
# $DEVHEAL_TESTENV_CACHE (default ~/.cache/devheal-testenv)/helm-<version>/bin/helm, beside the
# control plane that testenv/build.sh caches. A second run only checks the cache. Prints the
# path of the helm binary on its last line.
#
#   testenv/build-helm.sh       # build it if missing, print its path
#
# `go install module/cmd@version` builds with helm's own go.mod and go.sum, and every module is
# checked against the Go checksum database, so the build is the one the version names. The
# version stamp is set the way helm's Makefile sets it (`helm version` prints it).
# Needs: go (1.26 or later, which helm v4.3 asks for) and the Go module proxy; about 6 minutes
# of two cores when nothing is cached (docs/install.md, "Install with Helm"), a second after.
set -euo pipefail

HELM_VERSION=v4.3.2

command -v go >/dev/null 2>&1 || { echo "testenv/build-helm.sh: go is not on PATH (helm is built from its Go module)" >&2; exit 1; }

CACHE="${DEVHEAL_TESTENV_CACHE:-$HOME/.cache/devheal-testenv}"
DIR="$CACHE/helm-$HELM_VERSION"
HELM="$DIR/bin/helm"

if [[ -x "$HELM" ]]; then
    echo "testenv: cached helm $HELM_VERSION in $HELM" >&2
    echo "$HELM"
    exit 0
fi

echo "testenv: building helm $HELM_VERSION with $(go env GOVERSION) (cold: a few minutes on two cores)" >&2
start=$SECONDS
TMP="$DIR.tmp.$$"
rm -rf "$TMP"
mkdir -p "$TMP/bin"
trap 'rm -rf "$TMP"' EXIT
# Outside any module, so that only helm's own go.mod decides the dependencies.
cd "$TMP"
GOBIN="$TMP/bin" CGO_ENABLED=0 GOFLAGS=-buildvcs=false go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
    "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
"$TMP/bin/helm" version --short >/dev/null || { echo "testenv/build-helm.sh: the built helm does not run" >&2; exit 1; }
cd /
rm -rf "$DIR"
mv "$TMP" "$DIR"
trap - EXIT
echo "testenv: built helm $HELM_VERSION in $((SECONDS - start)) s into $HELM" >&2
echo "$HELM"

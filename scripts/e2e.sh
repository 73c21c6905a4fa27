#!/usr/bin/env bash
# devheal's end-to-end tests against a real Kubernetes control plane: builds what is missing
# (the control plane from testenv/, cached by version; the devheal binary and the test binary),
# starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler on loopback
# (testenv/controlplane.sh), runs every test that needs them (crates/cli/tests/e2e, one at a
# time), stops everything, and ends with the line `e2e: N passed, M failed`.
#
#   scripts/e2e.sh                 # all of them
#   scripts/e2e.sh job             # only tests whose name contains "job" (cargo test's filter)
#
# Exits non-zero when a test fails, when none ran, or when the control plane could not be
# built or started. Nothing here skips under CI=true. Settings (environment):
# DEVHEAL_E2E_KEEP=1 (keep the control plane's directory and a failed test's namespace for a
# look afterwards), DEVHEAL_TESTENV_CACHE (where the control-plane binaries and helm are
# cached), DEVHEAL_HELM (a helm binary to install the chart with, instead of the one
# testenv/build-helm.sh builds).
# Needs: cargo, go, kubectl (client), openssl, python3, curl.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { printf 'e2e: %s\n' "$*" >&2; echo "e2e: 0 passed, 1 failed"; exit 1; }
for tool in cargo go kubectl openssl python3 curl; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is not on PATH (scripts/e2e.sh needs cargo, go, kubectl, openssl, python3 and curl)"
done

started=$SECONDS
echo "== e2e: the control plane (testenv/build.sh: cached by version)"
testenv/build.sh >/dev/null || fail "the control plane could not be built"
echo "== e2e: helm, for the chart's install (testenv/build-helm.sh: cached by version)"
if [[ -z "${DEVHEAL_HELM:-}" ]]; then
    DEVHEAL_HELM="$(testenv/build-helm.sh | tail -n 1)" || fail "helm could not be built"
fi
[[ -x "$DEVHEAL_HELM" ]] || fail "DEVHEAL_HELM=$DEVHEAL_HELM is not an executable helm"
export DEVHEAL_HELM
echo "== e2e: the devheal binary and the end-to-end test binary"
cargo test --locked -p devheal --test e2e --no-run || fail "the end-to-end tests do not build"

RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/devheal-e2e.XXXXXX")"
cleanup() {
    local rc=$?
    set +e
    testenv/controlplane.sh stop "$RUN_DIR"
    # Any devheal process a killed test left behind (they all name files under RUN_DIR).
    pkill -f -- "$RUN_DIR" 2>/dev/null
    if [[ "${DEVHEAL_E2E_KEEP:-0}" == 1 ]]; then
        echo "e2e: kept $RUN_DIR (control-plane logs in $RUN_DIR/logs)" >&2
    else
        rm -rf "$RUN_DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== e2e: starting the control plane in $RUN_DIR"
testenv/controlplane.sh start "$RUN_DIR" || fail "the control plane did not start"
set -a
# shellcheck disable=SC1091
source "$RUN_DIR/env"
set +a
export TMPDIR="$RUN_DIR/tmp"
mkdir -p "$TMPDIR"

echo "== e2e: the tests (one at a time: they share the controller's Lease and cluster-scoped objects)"
set +e
cargo test --locked -p devheal --test e2e -- --ignored --test-threads=1 "$@" 2>&1 | tee "$RUN_DIR/test.log"
status=${PIPESTATUS[0]}
set -e
summary="$(grep -E '^test result: ' "$RUN_DIR/test.log" | tail -n 1)"
passed="$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$summary")"
failed="$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$summary")"
passed="${passed:-0}"
failed="${failed:-0}"
if [[ $status -ne 0 && $failed -eq 0 ]]; then
    failed=1
    echo "e2e: the test binary exited $status without a test failure (it crashed or could not start)" >&2
fi
if [[ $passed -eq 0 && $failed -eq 0 ]]; then
    echo "e2e: no test ran" >&2
    failed=1
fi
echo "e2e: took $((SECONDS - started)) s"
echo "e2e: $passed passed, $failed failed"
[[ $failed -eq 0 ]]

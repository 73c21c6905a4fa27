#!/usr/bin/env bash
# Checks devheal's Prometheus alerting rules: `promtool check rules` on
# deploy/monitoring/devheal-alerts.yaml, then `promtool test rules` on every unit test in
# deploy/monitoring/tests/. promtool is built from the Go module pinned in tools/promtool/go.mod,
# once per version: the binary is cached under $DEVHEAL_TESTENV_CACHE (default
# ~/.cache/devheal-testenv)/promtool-<version>-<go>-<hash>/, where the hash covers go.mod,
# go.sum and tools.go (not this script: editing it does not cost a rebuild), the way
# testenv/build.sh caches the control plane. A second run only checks the cache.
#
#   scripts/check-monitoring.sh           # build promtool if missing, check and test the rules
#   scripts/check-monitoring.sh --build   # only build (or find) promtool, print its path
#
# Needs: go (1.26.7 or later) and the Go module proxy. Cold (nothing cached): 9 CPU-minutes, 13
# minutes of wall time measured on two cores shared with other builds (about 5 on two idle ones);
# under a second after. Whether every metric the rules and the dashboard name is one devheal
# exports is checked by cargo test (crates/cli/tests/monitoring.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

command -v go >/dev/null 2>&1 || { echo "check-monitoring: go is not on PATH (promtool is built from its Go module)" >&2; exit 1; }

MOD="$ROOT/tools/promtool"
VERSION="$(awk '($1 == "require" && $2 == "github.com/prometheus/prometheus") {print $3} ($1 == "github.com/prometheus/prometheus" && $2 ~ /^v/) {print $2}' "$MOD/go.mod" | head -n 1)"
[[ -n "$VERSION" ]] || { echo "check-monitoring: no github.com/prometheus/prometheus requirement in tools/promtool/go.mod" >&2; exit 1; }
GO_VERSION="$(go env GOVERSION)"
SUM="$(cat "$MOD/go.mod" "$MOD/go.sum" "$MOD/tools.go" | sha256sum | cut -c1-12)"
CACHE="${DEVHEAL_TESTENV_CACHE:-$HOME/.cache/devheal-testenv}"
DIR="$CACHE/promtool-$VERSION-$GO_VERSION-$SUM"
PROMTOOL="$DIR/promtool"

if [[ -x "$PROMTOOL" ]]; then
    echo "check-monitoring: cached promtool $VERSION in $DIR" >&2
else
    echo "check-monitoring: building promtool $VERSION with $GO_VERSION (cold: 5 to 13 minutes on two cores)" >&2
    start=$SECONDS
    TMP="$DIR.tmp.$$"
    rm -rf "$TMP"
    mkdir -p "$TMP"
    trap 'rm -rf "$TMP"' EXIT
    # go.sum is committed: the build verifies every module against it and rewrites nothing.
    (cd "$MOD" && GOFLAGS="${GOFLAGS:-} -mod=readonly" go build -trimpath -ldflags "-s -w" -o "$TMP/promtool" github.com/prometheus/prometheus/cmd/promtool)
    rm -rf "$DIR"
    mv "$TMP" "$DIR"
    trap - EXIT
    echo "check-monitoring: built promtool in $((SECONDS - start)) s into $DIR" >&2
fi

if [[ "${1:-}" == "--build" ]]; then
    echo "$PROMTOOL"
    exit 0
fi

cd "$ROOT/deploy/monitoring"
echo "check-monitoring: promtool from github.com/prometheus/prometheus $VERSION"
echo "== promtool check rules devheal-alerts.yaml"
"$PROMTOOL" check rules devheal-alerts.yaml
shopt -s nullglob
tests=(tests/*.yaml)
[[ ${#tests[@]} -gt 0 ]] || { echo "check-monitoring: no rule tests in deploy/monitoring/tests" >&2; exit 1; }
echo "== promtool test rules ${tests[*]}"
"$PROMTOOL" test rules "${tests[@]}"

# The dashboard's queries must parse too: each becomes a recording rule (Grafana's variables
# replaced by values they take) that promtool check rules parses.
echo "== promtool check rules on the dashboard's queries (devheal-dashboard.json)"
DASH_RULES="$(mktemp --suffix=.yaml)"
trap 'rm -f "$DASH_RULES"' EXIT
python3 - devheal-dashboard.json > "$DASH_RULES" <<'PY'
import json, sys

def exprs(v):
    if isinstance(v, dict):
        for k, child in v.items():
            if k == "expr" and isinstance(child, str):
                yield child
            else:
                yield from exprs(child)
    elif isinstance(v, list):
        for child in v:
            yield from exprs(child)

dash = json.load(open(sys.argv[1]))
values = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$agent": ".*"}
print("groups:\n  - name: dashboard\n    rules:")
for i, e in enumerate(exprs(dash)):
    for var, value in values.items():
        e = e.replace(var, value)
    print(f"      - record: dashboard_query_{i}\n        expr: {json.dumps(e)}")
PY
"$PROMTOOL" check rules "$DASH_RULES"
echo "check-monitoring: rules check, ${#tests[@]} rule test files and the dashboard's queries passed"

#!/usr/bin/env bash
# The Helm chart (deploy/helm/devheal): builds helm if it is not cached (testenv/build-helm.sh,
# from its Go module at a pinned version), lints the chart with its default values and with
# every toggle on, renders it, and runs crates/cli/tests/helm_chart.rs, which compares the
# render with `kubectl kustomize deploy/base` (and the overlays) object by object and checks
# what each value changes. Ends with cargo test's `test result:` line.
#
#   scripts/check-helm.sh          # DEVHEAL_HELM=/path/to/helm to use another helm
#
# Needs: go (only when helm is not cached yet), kubectl (client), cargo.
set -euo pipefail
cd "$(dirname "$0")/.."

CHART=deploy/helm/devheal
HELM="${DEVHEAL_HELM:-}"
if [[ -z "$HELM" ]]; then
    HELM="$(testenv/build-helm.sh | tail -n 1)"
fi
[[ -x "$HELM" ]] || { echo "check-helm: $HELM is not an executable helm" >&2; exit 1; }
command -v kubectl >/dev/null 2>&1 || { echo "check-helm: kubectl is not on PATH (the chart is compared with kubectl kustomize)" >&2; exit 1; }

# helm says at INFO level each time it follows one of the chart's links into deploy/ (crds/,
# files/); that is intended (the chart's tests check the links), so it is not shown.
quiet() { "$@" 2> >(grep -v 'found symbolic link in path' >&2); }

echo "== check-helm: $("$HELM" version --short)"
ALL_ON=(--set dryRun=true
        --set monitoring.serviceMonitor.enabled=true --set monitoring.podMonitor.enabled=true
        --set monitoring.prometheusRule.enabled=true --set monitoring.dashboard.enabled=true
        --set settings.safety.maxEvictionsPerMinute=10)
echo "== helm lint --strict $CHART (defaults, then every toggle on)"
quiet "$HELM" lint --strict "$CHART"
quiet "$HELM" lint --strict "$CHART" "${ALL_ON[@]}"
echo "== helm template $CHART"
quiet "$HELM" template devheal "$CHART" --include-crds "${ALL_ON[@]}" >/dev/null
echo "== the chart against kubectl kustomize (crates/cli/tests/helm_chart.rs)"
DEVHEAL_HELM="$HELM" cargo test --locked -p devheal --test helm_chart -- --include-ignored

#!/usr/bin/env bash
# End to end on a throwaway kind cluster: build the image, install deploy/base with the agent
# in fake-device mode, run a pod on a fake GPU, fail that GPU, and wait until the agent reports
# it Unhealthy and the controller marks or evicts the pod. Cleans up after itself (the cluster
# too, unless DEVHEAL_E2E_KEEP=1).
#
# Needs: docker (running), kind (v0.23 or later: Kubernetes 1.30+, for the admission policy's
# node-name claim), kubectl, curl. About five minutes, most of it the image build.
#
#   scripts/e2e-kind.sh
#   cargo test -p devheal-k8s --test deploy_manifests -- --ignored    # the same, from cargo
#
# Settings (environment): DEVHEAL_E2E_CLUSTER (kind cluster name, default devheal-e2e),
# DEVHEAL_E2E_KEEP=1 (keep the cluster for a look afterwards), KIND_NODE_IMAGE (a
# kindest/node image, default: kind's own), DEVHEAL_E2E_TIMEOUT (seconds per wait, default 180).
#
# INTERFACES RELIED ON. The agent's fake-device mode (crates/agent/src/fake.rs, http.rs); this
# script must be kept in step with:
#   - `devheal agent --fake-devices N` registers N fake devices with the kubelet as the extended
#     resource devheal.io/fake-gpu (a device plugin socket in /var/lib/kubelet/device-plugins);
#   - the agent serves `POST /fake/fail?device=<id>` on its metrics port (9101), which makes
#     that fake device fail;
#   - the agent publishes the device, with the pods bound to it, in its node's NodeDeviceHealth
#     (status.devices[].id, .pods[].name, .health), as crates/k8s/src/crd.rs defines it;
#   - the controller then marks the pod (a devheal.io/ condition) or evicts it.
set -euo pipefail

cd "$(dirname "$0")/.."

CLUSTER="${DEVHEAL_E2E_CLUSTER:-devheal-e2e}"
KEEP="${DEVHEAL_E2E_KEEP:-0}"
TIMEOUT="${DEVHEAL_E2E_TIMEOUT:-180}"
NS=devheal-system
WORKLOAD_NS=devheal-e2e
POD=fake-gpu-consumer
LOCAL_PORT=19101

# The image the Dockerfile names, so the manifests (which reference the same name; checked by
# crates/k8s/tests/deploy_manifests.rs) find it on the node without pulling.
DEVHEAL_IMAGE="$(sed -n 's/^ARG DEVHEAL_IMAGE=//p' Dockerfile | head -n 1)"
DEVHEAL_VERSION="$(sed -n 's/^ARG DEVHEAL_VERSION=//p' Dockerfile | head -n 1)"
IMAGE="${DEVHEAL_IMAGE}:${DEVHEAL_VERSION}"

log() { printf '\n== %s\n' "$*"; }
fail() { printf 'e2e-kind: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl curl; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool is not on PATH (this script needs docker, kind, kubectl and curl)"
done
docker info >/dev/null 2>&1 || fail "docker is installed but its daemon is not reachable"
[[ -n "$DEVHEAL_IMAGE" && -n "$DEVHEAL_VERSION" ]] || fail "cannot read DEVHEAL_IMAGE/DEVHEAL_VERSION from the Dockerfile"

WORKDIR="$(mktemp -d)"
PF_PID=""
CREATED=0

cleanup() {
    local rc=$?
    set +e
    if [[ $rc -ne 0 && $CREATED -eq 1 ]]; then
        printf '\n== failed (exit %s); what the cluster looked like:\n' "$rc" >&2
        kubectl get nodedevicehealths -o yaml >&2
        kubectl get pods -A -o wide >&2
        kubectl -n "$WORKLOAD_NS" get pod "$POD" -o yaml >&2
        kubectl -n "$NS" logs daemonset/devheal-agent --tail=100 >&2
        kubectl -n "$NS" logs deployment/devheal-controller --tail=100 >&2
        kubectl get events -A --sort-by=.lastTimestamp >&2
    fi
    [[ -n "$PF_PID" ]] && kill "$PF_PID" 2>/dev/null
    if [[ $CREATED -eq 1 && "$KEEP" != 1 ]]; then
        kind delete cluster --name "$CLUSTER" >/dev/null 2>&1
    elif [[ $CREATED -eq 1 ]]; then
        printf 'kept the cluster: kind delete cluster --name %s\n' "$CLUSTER" >&2
    fi
    rm -rf "$WORKDIR"
    exit "$rc"
}
trap cleanup EXIT

# wait_for DESCRIPTION COMMAND...: run COMMAND every 2 s until it succeeds or TIMEOUT passes.
wait_for() {
    local what="$1"
    shift
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "timed out after ${TIMEOUT}s waiting for: $what"
        sleep 2
    done
    printf '   ok: %s\n' "$what"
}

log "kind cluster $CLUSTER"
kind get clusters 2>/dev/null | grep -qx "$CLUSTER" && fail "a kind cluster named $CLUSTER exists already; delete it or set DEVHEAL_E2E_CLUSTER"
CREATED=1
kind create cluster --name "$CLUSTER" ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 120s
kubectl config use-context "kind-$CLUSTER" >/dev/null
NODE="$(kubectl get nodes -o jsonpath='{.items[0].metadata.name}')"

log "image $IMAGE"
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

log "install: deploy/base with the agent in fake-device mode"
# An overlay of the base, in a copy of deploy/ (kustomize refuses bases by absolute path).
cp -R deploy "$WORKDIR/deploy"
mkdir -p "$WORKDIR/deploy/overlays/e2e"
cat >"$WORKDIR/deploy/overlays/e2e/kustomization.yaml" <<'YAML'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../base
patches:
  # ASSUMED: the agent's fake-device flag.
  - target: {group: apps, version: v1, kind: DaemonSet, name: devheal-agent}
    patch: |-
      - op: test
        path: /spec/template/spec/containers/0/name
        value: agent
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: --fake-devices
      - op: add
        path: /spec/template/spec/containers/0/args/-
        value: "4"
  # The fake devices serve a device plugin and register it with the kubelet, so they need the
  # plugin directory, writable (the base mounts none); and kind nodes have no NVIDIA driver
  # (nor, on arm64, the x86_64 library directory).
  - patch: |-
      apiVersion: apps/v1
      kind: DaemonSet
      metadata: {name: devheal-agent, namespace: devheal-system}
      spec:
        template:
          spec:
            containers:
              - name: agent
                volumeMounts:
                  - name: device-plugins
                    mountPath: /var/lib/kubelet/device-plugins
                    readOnly: false
            volumes:
              - name: device-plugins
                hostPath:
                  path: /var/lib/kubelet/device-plugins
                  type: Directory
              - name: nvidia-lib
                hostPath: null
                emptyDir: {}
YAML
# CRDs first, so the rest never races their registration.
kubectl apply -k deploy/crds
kubectl wait --for condition=Established --timeout="${TIMEOUT}s" \
    crd/nodedevicehealths.devheal.io crd/failurepolicies.devheal.io
kubectl apply -k "$WORKDIR/deploy/overlays/e2e"
kubectl -n "$NS" rollout status daemonset/devheal-agent --timeout="${TIMEOUT}s"
kubectl -n "$NS" rollout status deployment/devheal-controller --timeout="${TIMEOUT}s"

fake_gpus_allocatable() {
    [[ "$(kubectl get node "$NODE" -o jsonpath='{.status.allocatable.devheal\.io/fake-gpu}')" == 4 ]]
}
wait_for "node $NODE advertises 4 devheal.io/fake-gpu" fake_gpus_allocatable
wait_for "the agent publishes NodeDeviceHealth $NODE" kubectl get nodedevicehealth "$NODE"

log "a pod on one fake GPU"
kubectl create namespace "$WORKLOAD_NS"
kubectl apply -f - <<YAML
apiVersion: v1
kind: Pod
metadata:
  name: $POD
  namespace: $WORKLOAD_NS
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 5
  containers:
    - name: work
      image: registry.k8s.io/pause:3.10
      resources:
        limits:
          devheal.io/fake-gpu: 1
YAML
kubectl -n "$WORKLOAD_NS" wait --for condition=Ready --timeout="${TIMEOUT}s" "pod/$POD"

# The device the kubelet gave the pod, as the agent reports it.
pod_device() {
    kubectl get nodedevicehealth "$NODE" \
        -o jsonpath='{range .status.devices[*]}{.id}{" "}{.pods[*].name}{"\n"}{end}' |
        awk -v pod="$POD" '{ for (i = 2; i <= NF; i++) if ($i == pod) { print $1; exit } }'
}
pod_has_device() { [[ -n "$(pod_device)" ]]; }
wait_for "NodeDeviceHealth $NODE lists the device bound to $POD" pod_has_device
DEVICE="$(pod_device)"
printf '   %s runs on fake device %s\n' "$POD" "$DEVICE"

log "fail fake device $DEVICE"
AGENT_POD="$(kubectl -n "$NS" get pods -l app.kubernetes.io/component=agent \
    --field-selector "spec.nodeName=$NODE" -o jsonpath='{.items[0].metadata.name}')"
kubectl -n "$NS" port-forward "pod/$AGENT_POD" "$LOCAL_PORT:9101" >"$WORKDIR/port-forward.log" 2>&1 &
PF_PID=$!
wait_for "port-forward to $AGENT_POD" curl -fsS "http://127.0.0.1:$LOCAL_PORT/healthz"
# ASSUMED: the agent's fault-injection endpoint (fake-device mode only).
curl -fsS -X POST "http://127.0.0.1:$LOCAL_PORT/fake/fail?device=$DEVICE"
echo

device_unhealthy() {
    [[ "$(kubectl get nodedevicehealth "$NODE" \
        -o jsonpath="{.status.devices[?(@.id==\"$DEVICE\")].health}")" == Unhealthy ]]
}
wait_for "NodeDeviceHealth $NODE shows $DEVICE Unhealthy" device_unhealthy

# Marked (a devheal.io/ condition, or DisruptionTarget from an eviction), being deleted, or gone.
pod_marked_or_evicted() {
    local out
    out="$(kubectl -n "$WORKLOAD_NS" get pod "$POD" --ignore-not-found \
        -o jsonpath='{.metadata.deletionTimestamp}{"\n"}{range .status.conditions[*]}{.type}{"="}{.status}{"\n"}{end}')" ||
        return 1
    [[ -z "$out" ]] && return 0
    [[ -n "$(head -n 1 <<<"$out")" ]] && return 0
    grep -Eq '^(devheal\.io/[A-Za-z]+|DisruptionTarget)=True$' <<<"$out"
}
wait_for "the controller marks or evicts $POD" pod_marked_or_evicted

log "passed"

#!/usr/bin/env bash
# A real Kubernetes control plane on loopback for devheal's end-to-end tests: etcd, kube-apiserver
# (TLS, client certificates, the Node and RBAC authorizers, NodeRestriction, a service-account
# issuer), kube-controller-manager and kube-scheduler, all from testenv/build.sh.
#
#   testenv/controlplane.sh start DIR     # start everything, write DIR/env, wait for /readyz
#   testenv/controlplane.sh stop DIR      # stop what `start` started (also on a half start)
#
# After `start`, DIR/env holds shell assignments (source it):
#   DEVHEAL_E2E_KUBECONFIG   admin kubeconfig (client certificate in system:masters)
#   DEVHEAL_E2E_SERVER       https://127.0.0.1:<port>
#   DEVHEAL_E2E_CA           the CA that signed the serving and client certificates
#   DEVHEAL_E2E_BIN          the directory of the control-plane binaries
# Logs are DIR/logs/<component>.log; `start` prints their tails when something does not come up.
#
# Nothing outlives the caller by design: `start` only launches, so the caller (scripts/e2e.sh)
# runs `stop` from its EXIT trap. Every process is started in its own process group recorded in
# DIR/pids, and `stop` kills the groups, then waits for them.
#
# Settings (environment): DEVHEAL_TESTENV_COMPONENTS (default "etcd apiserver controller-manager
# scheduler"; etcd and the API server always run), DEVHEAL_TESTENV_READY_TIMEOUT (seconds,
# default 120), DEVHEAL_TESTENV_AUDIT=1 (the API server writes an audit log of every request's
# metadata to DIR/audit.log, JSON lines: who asked what; the benchmark counts requests with it).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
cmd="${1:-}"
dir="${2:-}"
[[ -n "$cmd" && -n "$dir" ]] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

log() { printf 'controlplane: %s\n' "$*" >&2; }

stop() {
    local pidfile="$dir/pids" pid name
    [[ -f "$pidfile" ]] || return 0
    # Reverse order, each gone before the next is signalled: the clients of the API server
    # first, etcd last (an API server whose etcd is gone retries it through its shutdown).
    tac "$pidfile" | while read -r name pid; do
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 15))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "$name ($pid) did not stop within 15 s of SIGTERM; killing it"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    rm -f "$pidfile"
}

if [[ "$cmd" == stop ]]; then
    stop
    exit 0
fi
[[ "$cmd" == start ]] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }

command -v openssl >/dev/null 2>&1 || { log "openssl is not on PATH (it makes the test certificates)"; exit 1; }
command -v python3 >/dev/null 2>&1 || { log "python3 is not on PATH (it finds free loopback ports)"; exit 1; }

BIN="$("$here/build.sh" | tail -n 1)"
COMPONENTS="${DEVHEAL_TESTENV_COMPONENTS:-etcd apiserver controller-manager scheduler}"
READY_TIMEOUT="${DEVHEAL_TESTENV_READY_TIMEOUT:-120}"

# A control plane already running in DIR would keep etcd's data directory locked (the new etcd
# would wait for the lock forever) and its processes would be forgotten: refuse.
if [[ -f "$dir/pids" ]]; then
    while read -r name pid; do
        if kill -0 "$pid" 2>/dev/null; then
            log "a control plane already runs in $dir ($name, pid $pid): run '$0 stop $dir' first"
            exit 1
        fi
    done <"$dir/pids"
fi
mkdir -p "$dir/pki" "$dir/logs" "$dir/etcd"
dir="$(cd "$dir" && pwd)"
pki="$dir/pki"
: >"$dir/pids"

# Free ports on loopback, chosen by the kernel (bound, then released just before use).
read -r ETCD_PORT ETCD_PEER_PORT API_PORT < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
for s in socks:
    s.close()
PY
)

# --- certificates: one CA; the API server's serving certificate; an admin client certificate
# (system:masters); the service-account signing key.
gen() { openssl "$@" >/dev/null 2>&1; }
gen req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=devheal-e2e-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt"
cat >"$pki/serving.ext" <<EXT
basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
EXT
gen req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr"
gen x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 2 \
    -extfile "$pki/serving.ext" -out "$pki/apiserver.crt"
printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >"$pki/client.ext"
gen req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=devheal-e2e-admin" \
    -keyout "$pki/admin.key" -out "$pki/admin.csr"
gen x509 -req -in "$pki/admin.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 2 \
    -extfile "$pki/client.ext" -out "$pki/admin.crt"
gen genrsa -out "$pki/sa.key" 2048
gen rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
[[ -s "$pki/admin.crt" && -s "$pki/apiserver.crt" && -s "$pki/sa.pub" ]] || { log "openssl could not make the certificates"; exit 1; }

SERVER="https://127.0.0.1:$API_PORT"
cat >"$dir/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
  - name: devheal-e2e
    cluster:
      server: $SERVER
      certificate-authority: $pki/ca.crt
users:
  - name: admin
    user:
      client-certificate: $pki/admin.crt
      client-key: $pki/admin.key
contexts:
  - name: devheal-e2e
    context: {cluster: devheal-e2e, user: admin}
current-context: devheal-e2e
KC

# launch NAME COMMAND...: start COMMAND in its own process group, logging to logs/NAME.log.
launch() {
    local name="$1"
    shift
    setsid "$@" >"$dir/logs/$name.log" 2>&1 </dev/null &
    echo "$name $!" >>"$dir/pids"
}

fail_start() {
    log "$1"
    local f
    for f in "$dir"/logs/*.log; do
        printf '\n--- last lines of %s\n' "$f" >&2
        tail -n 25 "$f" >&2
    done
    stop
    exit 1
}

# wait_until DESCRIPTION PROCESS COMMAND...: until COMMAND succeeds, PROCESS dies, or the timeout.
wait_until() {
    local what="$1" name="$2"
    shift 2
    local pid deadline=$((SECONDS + READY_TIMEOUT))
    pid="$(awk -v n="$name" '$1 == n {print $2}' "$dir/pids")"
    until "$@" >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || fail_start "$name exited before $what"
        ((SECONDS < deadline)) || fail_start "timed out after ${READY_TIMEOUT}s waiting for $what"
        sleep 0.3
    done
}

AUDIT_FLAGS=()
if [[ "${DEVHEAL_TESTENV_AUDIT:-0}" == 1 ]]; then
    cat >"$dir/audit-policy.yaml" <<'AUDIT'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
AUDIT
    AUDIT_FLAGS=(--audit-policy-file "$dir/audit-policy.yaml" --audit-log-path "$dir/audit.log"
        --audit-log-format json --audit-log-mode blocking --audit-log-maxsize 0)
fi

started=$SECONDS
# --- etcd: one member, loopback only; no fsync (a test cluster's data is thrown away).
launch etcd "$BIN/etcd" --name devheal-e2e --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "devheal-e2e=http://127.0.0.1:$ETCD_PEER_PORT" --unsafe-no-fsync --log-level warn
wait_until "etcd's /health" etcd curl -fsS --max-time 5 "http://127.0.0.1:$ETCD_PORT/health"

# --- kube-apiserver. Authorization as on a real cluster: Node then RBAC, NodeRestriction on,
# service-account tokens signed here (TokenRequest with a bound pod puts the node's name in the
# token: authentication.kubernetes.io/node-name). DRA, DeviceTaintRules and resource health
# status are on by default in 1.37, so no feature gate is set.
launch apiserver "$BIN/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --service-cluster-ip-range 10.0.0.0/24 --allow-privileged=true \
    --endpoint-reconciler-type none --profiling=false --v 1 "${AUDIT_FLAGS[@]}"
readyz() { curl -fsS --max-time 5 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$SERVER/readyz"; }
wait_until "the API server's /readyz" apiserver readyz

if [[ " $COMPONENTS " == *" controller-manager "* ]]; then
    # Every default controller except those that need a kubelet to keep nodes alive: no node
    # lifecycle (it would mark the test's Nodes NotReady without kubelet heartbeats and taint them
    # for eviction). The Job, disruption (PodDisruptionBudget status), garbage-collector,
    # namespace and service-account controllers are the ones the tests rely on.
    launch controller-manager "$BIN/kube-controller-manager" \
        --kubeconfig "$dir/kubeconfig" --leader-elect=false --secure-port 0 \
        --controllers '*,-node-lifecycle-controller,-taint-eviction-controller' \
        --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
        --use-service-account-credentials=false --v 1
    # The service-account controller has made the default namespace's account.
    sa_ready() {
        curl -fsS --max-time 5 --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
            "$SERVER/api/v1/namespaces/default/serviceaccounts/default"
    }
    wait_until "the controller manager (the default service account)" controller-manager sa_ready
fi
if [[ " $COMPONENTS " == *" scheduler "* ]]; then
    launch scheduler "$BIN/kube-scheduler" --kubeconfig "$dir/kubeconfig" --leader-elect=false \
        --secure-port 0 --v 1
    sleep 0.5
    pid="$(awk '$1 == "scheduler" {print $2}' "$dir/pids")"
    kill -0 "$pid" 2>/dev/null || fail_start "kube-scheduler exited at start"
fi

cat >"$dir/env" <<ENV
DEVHEAL_E2E_KUBECONFIG=$dir/kubeconfig
DEVHEAL_E2E_SERVER=$SERVER
DEVHEAL_E2E_CA=$pki/ca.crt
DEVHEAL_E2E_BIN=$BIN
ENV
log "ready in $((SECONDS - started)) s: $SERVER ($COMPONENTS); kubeconfig $dir/kubeconfig"

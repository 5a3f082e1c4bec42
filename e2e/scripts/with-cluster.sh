#!/usr/bin/env bash
# Starts a real Kubernetes control plane on loopback (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, and kwok faking the kubelets of a small GPU
# fleet), runs the given command against it, then stops every process it started.
#
#   e2e/scripts/with-cluster.sh COMMAND [ARGS...]
#
# The command runs with:
#   KUBECONFIG           an admin kubeconfig (client certificate in system:masters)
#   PATH                 the cache's bin/ first, so `kubectl` and `helm` match the cluster
#   DFASTLLM_E2E_DIR     the run's directory (certificates, logs, kubeconfigs)
#   DFASTLLM_E2E_SERVER  the API server's URL
#   DFASTLLM_E2E_PROMETHEUS_CRDS  the Prometheus operator's CRDs (from its Go module)
# and its exit status becomes this script's.
#
# Nodes (kwok, annotated kwok.x-k8s.io/node=fake):
#   gpu-l40s-0, gpu-l40s-1  nvidia.com/gpu: 4, nvidia.com/gpu.product=NVIDIA-L40S
#   gpu-a100-0              nvidia.com/gpu: 8, nvidia.com/gpu.product=NVIDIA-A100-SXM4-80GB
#   cpu-0                   no GPU, no taint, 256 CPUs (room for every test's CPU pods)
# GPU nodes carry the nvidia.com/gpu=present:NoSchedule taint, as the NVIDIA GPU
# operator's node feature rules set it.
#
# Everything is torn down on exit, interrupt or termination (trap); every child also
# gets SIGKILL from the kernel should this script itself be killed (setpriv
# --pdeathsig), so no process outlives a run. DFASTLLM_E2E_KEEP=1 keeps the directory.
set -euo pipefail
SCRIPT_DIR="$(cd "$(dirname "$0")" && pwd)"

log() { printf '[with-cluster] %s\n' "$*" >&2; }
die() { printf '[with-cluster] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $# -ge 1 ]] || die "usage: with-cluster.sh COMMAND [ARGS...]"
command -v openssl >/dev/null || die "openssl is required to generate the cluster's certificates"
command -v curl >/dev/null || die "curl is required to wait for the API server"

BIN="$("${SCRIPT_DIR}/build-control-plane.sh" | tail -n1)"

# The real ServiceMonitor/PrometheusRule CRDs, from the prometheus-operator Go module
# (the module proxy is a package registry; the module cache keeps them).
PROMETHEUS_OPERATOR_VERSION="${DFASTLLM_E2E_PROMETHEUS_OPERATOR_VERSION:-v0.85.0}"
PROM_DIR="$(cd /tmp && GOFLAGS= GOWORK=off go mod download -json "github.com/prometheus-operator/prometheus-operator@${PROMETHEUS_OPERATOR_VERSION}" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')" || true
DFASTLLM_E2E_PROMETHEUS_CRDS="${PROM_DIR}/example/prometheus-operator-crd"
[[ -f "${DFASTLLM_E2E_PROMETHEUS_CRDS}/monitoring.coreos.com_servicemonitors.yaml" ]] ||
  die "cannot fetch the ServiceMonitor CRD; command was: go mod download -json github.com/prometheus-operator/prometheus-operator@${PROMETHEUS_OPERATOR_VERSION}"
export DFASTLLM_E2E_PROMETHEUS_CRDS
STAGES="$(dirname "$BIN")/kwok-stages"
RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/dfastllm-e2e.XXXXXX")"
PIDS=()
NAMES=()

cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill -TERM "${PIDS[$i]}" 2>/dev/null || true
  done
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    # The cluster is thrown away, so its graceful shutdown (the API server waits for
    # open watches) is not worth waiting for: 3 s, then SIGKILL.
    local n=0
    while kill -0 "${PIDS[$i]}" 2>/dev/null && ((n < 30)); do sleep 0.1; n=$((n + 1)); done
    kill -KILL "${PIDS[$i]}" 2>/dev/null || true
    wait "${PIDS[$i]}" 2>/dev/null || true
  done
  if [[ $rc -ne 0 ]]; then
    for f in "$RUN_DIR"/logs/*.log; do
      [[ -f $f ]] || continue
      log "---- last lines of $(basename "$f") ----"
      tail -n 15 "$f" >&2 || true
    done
  fi
  if [[ "${DFASTLLM_E2E_KEEP:-0}" == 1 ]]; then
    log "kept ${RUN_DIR}"
  else
    rm -rf "$RUN_DIR"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PDEATH=()
setpriv --help 2>/dev/null | grep -q -- --pdeathsig && PDEATH=(setpriv --pdeathsig KILL)

# start NAME COMMAND...: runs in the background, output to logs/NAME.log
start() {
  local name="$1"; shift
  "${PDEATH[@]}" "$@" >"${RUN_DIR}/logs/${name}.log" 2>&1 &
  PIDS+=($!)
  NAMES+=("$name")
}

# wait_for WHAT SECONDS COMMAND...: polls COMMAND until it succeeds; on timeout names
# what it waited for and shows the last output of COMMAND.
wait_for() {
  local what="$1" secs="$2"; shift 2
  local deadline=$((SECONDS + secs)) out=""
  until out="$("$@" 2>&1)"; do
    local i
    for i in "${!PIDS[@]}"; do
      kill -0 "${PIDS[$i]}" 2>/dev/null || die "${NAMES[$i]} exited while waiting for ${what}"
    done
    ((SECONDS < deadline)) || die "timed out after ${secs}s waiting for ${what}; last output: ${out}"
    sleep 0.2
  done
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

mkdir -p "${RUN_DIR}/logs" "${RUN_DIR}/pki" "${RUN_DIR}/etcd"
PKI="${RUN_DIR}/pki"

# ---- certificates --------------------------------------------------------------------
log "generating certificates in ${PKI}"
ossl() { openssl "$@" 2>>"${RUN_DIR}/openssl.log" || die "openssl $1 failed: $(tail -n 5 "${RUN_DIR}/openssl.log")"; }
ossl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=dfastllm-e2e-ca" \
  -keyout "${PKI}/ca.key" -out "${PKI}/ca.crt"
# issue NAME SUBJECT [SAN]
issue() {
  local name="$1" subj="$2" san="${3:-}"
  ossl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "${PKI}/${name}.key" -out "${PKI}/${name}.csr"
  local ext="${PKI}/${name}.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=digitalSignature,keyEncipherment"
    if [[ -n $san ]]; then echo "extendedKeyUsage=serverAuth"; echo "subjectAltName=${san}"
    else echo "extendedKeyUsage=clientAuth"; fi
  } >"$ext"
  ossl x509 -req -in "${PKI}/${name}.csr" -CA "${PKI}/ca.crt" -CAkey "${PKI}/ca.key" \
    -CAcreateserial -days 2 -extfile "$ext" -out "${PKI}/${name}.crt"
}
issue apiserver "/CN=kube-apiserver" "IP:127.0.0.1,DNS:localhost,IP:10.96.0.1,DNS:kubernetes.default.svc"
issue admin "/O=system:masters/CN=e2e-admin"
ossl genrsa -out "${PKI}/sa.key" 2048
ossl rsa -in "${PKI}/sa.key" -pubout -out "${PKI}/sa.pub"

# ---- etcd ------------------------------------------------------------------------------
ETCD_PORT="$(free_port)"; ETCD_PEER_PORT="$(free_port)"
log "etcd on 127.0.0.1:${ETCD_PORT}"
start etcd "${BIN}/etcd" --name e2e --data-dir "${RUN_DIR}/etcd" \
  --listen-client-urls "http://127.0.0.1:${ETCD_PORT}" --advertise-client-urls "http://127.0.0.1:${ETCD_PORT}" \
  --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
  --initial-cluster "e2e=http://127.0.0.1:${ETCD_PEER_PORT}" --unsafe-no-fsync --log-level warn
wait_for "etcd /health" 60 curl -fsS "http://127.0.0.1:${ETCD_PORT}/health"

# ---- kube-apiserver ------------------------------------------------------------------
API_PORT="$(free_port)"
SERVER="https://127.0.0.1:${API_PORT}"
log "kube-apiserver on ${SERVER}"
start kube-apiserver "${BIN}/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:${ETCD_PORT}" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
  --tls-cert-file "${PKI}/apiserver.crt" --tls-private-key-file "${PKI}/apiserver.key" \
  --client-ca-file "${PKI}/ca.crt" --authorization-mode RBAC \
  --service-account-issuer https://kubernetes.default.svc \
  --service-account-key-file "${PKI}/sa.pub" --service-account-signing-key-file "${PKI}/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 --allow-privileged=true \
  --cert-dir "${PKI}/apiserver-generated"
CURL_ADMIN=(curl -fsS --cacert "${PKI}/ca.crt" --cert "${PKI}/admin.crt" --key "${PKI}/admin.key")
wait_for "kube-apiserver /readyz" 120 "${CURL_ADMIN[@]}" "${SERVER}/readyz"

KUBECONFIG="${RUN_DIR}/admin.kubeconfig"
cat >"$KUBECONFIG" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: e2e
    cluster:
      server: ${SERVER}
      certificate-authority: ${PKI}/ca.crt
users:
  - name: admin
    user:
      client-certificate: ${PKI}/admin.crt
      client-key: ${PKI}/admin.key
contexts:
  - name: e2e
    context: {cluster: e2e, user: admin, namespace: default}
current-context: e2e
EOF
export KUBECONFIG
export PATH="${BIN}:${PATH}"

# ---- controllers, scheduler, kwok ----------------------------------------------------
start kube-controller-manager "${BIN}/kube-controller-manager" --kubeconfig "$KUBECONFIG" \
  --leader-elect=false --secure-port 0 --service-account-private-key-file "${PKI}/sa.key" \
  --root-ca-file "${PKI}/ca.crt" --use-service-account-credentials=false \
  --controllers '*,-nodeipam'
start kube-scheduler "${BIN}/kube-scheduler" --kubeconfig "$KUBECONFIG" \
  --leader-elect=false --secure-port 0
KWOK_CONFIGS=()
for f in node/fast/node-initialize.yaml node/heartbeat/node-heartbeat.yaml \
  pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
  [[ -f "${STAGES}/${f}" ]] || die "kwok stage ${STAGES}/${f} is missing; rebuild with build-control-plane.sh --force"
  KWOK_CONFIGS+=(--config "${STAGES}/${f}")
done
start kwok "${BIN}/kwok" --kubeconfig "$KUBECONFIG" \
  --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake "${KWOK_CONFIGS[@]}"

# ---- the fleet ---------------------------------------------------------------------
fleet_node() {
  local name="$1" gpus="$2" product="$3" cpus="$4"
  cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: ${name}
  annotations:
    kwok.x-k8s.io/node: fake
  labels:
    kubernetes.io/hostname: ${name}
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
$( [[ $gpus -gt 0 ]] && printf '    nvidia.com/gpu.present: "true"\n    nvidia.com/gpu.product: %s\n    nvidia.com/gpu.count: "%s"\n' "$product" "$gpus")
spec:
$( if [[ $gpus -gt 0 ]]; then printf '  taints:\n    - {key: nvidia.com/gpu, value: present, effect: NoSchedule}\n'; else printf '  taints: []\n'; fi)
status:
  allocatable: {cpu: "${cpus}", memory: 1Ti, pods: "250", nvidia.com/gpu: "${gpus}"}
  capacity: {cpu: "${cpus}", memory: 1Ti, pods: "250", nvidia.com/gpu: "${gpus}"}
EOF
}
wait_for "the default namespace" 60 kubectl get namespace default
{
  fleet_node gpu-l40s-0 4 NVIDIA-L40S 64
  fleet_node gpu-l40s-1 4 NVIDIA-L40S 64
  fleet_node gpu-a100-0 8 NVIDIA-A100-SXM4-80GB 128
  fleet_node cpu-0 0 "" 256
} >"${RUN_DIR}/nodes.yaml"
kubectl apply -f "${RUN_DIR}/nodes.yaml" >&2
wait_for "4 Ready kwok nodes" 60 kubectl wait --for=condition=Ready node --all --timeout=2s

export DFASTLLM_E2E_DIR="$RUN_DIR" DFASTLLM_E2E_SERVER="$SERVER"
log "cluster up in ${SECONDS}s; running: $*"
set +e
"$@"
rc=$?
set -e
log "command exited with ${rc}"
exit "$rc"

#!/usr/bin/env bash
# Builds helm from the Go module proxy into the dfastllm cache (once) and prints the
# binary's path as the last line of stdout. No prebuilt download: `go install` only.
#
#   HELM=$(scripts/tools/helm.sh | tail -n1)
#
# The build runs at the lowest priority (nice 19) so a concurrent Rust build on a
# 2-core machine gets the CPU first; expect several minutes the first time. Override the version with HELM_VERSION (must build with the local Go).
set -euo pipefail

HELM_VERSION=${HELM_VERSION:-v3.22.0}
CACHE=${DFASTLLM_CACHE:-$HOME/.cache/dfastllm}
DIR=$CACHE/tools/helm-$HELM_VERSION
BIN=$DIR/bin/helm

log() { echo "tools/helm.sh: $*" >&2; }

if [[ -x $BIN ]] && "$BIN" version --short >/dev/null 2>&1; then
    echo "$BIN"
    exit 0
fi

command -v go >/dev/null || { log "go is required to build helm (none on PATH)"; exit 1; }
mkdir -p "$DIR/bin"
# One build at a time (the e2e prefetch may be building it in the background).
exec 9>"$DIR/.lock"
flock 9
if [[ -x $BIN ]] && "$BIN" version --short >/dev/null 2>&1; then
    echo "$BIN"
    exit 0
fi
log "building helm $HELM_VERSION with $(go version | awk '{print $3}') into $DIR (several minutes)"
mkdir -p "$DIR/bin"
start=$(date +%s)
cd "$DIR"  # outside any Go module
tmp=$(mktemp -d "$DIR/bin/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# The module's go.mod pins the Kubernetes libraries; helm's Makefile stamps their version
# into the binary as the default cluster version of `helm template` / `helm lint` (left
# unstamped, `go install` reports Kubernetes 1.20 and charts needing newer ones fail).
gomod=$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
k8s_minor=$(awk '$1 == "k8s.io/client-go" { split($2, v, "."); print v[2]; exit }' "$gomod")
[[ $k8s_minor =~ ^[0-9]+$ ]] || { log "cannot read k8s.io/client-go's version from $gomod"; exit 1; }
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
for pkg in pkg/chartutil pkg/lint/rules; do
    ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$k8s_minor"
done
GOBIN=$tmp GOFLAGS="-p=$(nproc 2>/dev/null || echo 2) -buildvcs=false" CGO_ENABLED=0 nice -n 19 \
    go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
mv -f "$tmp/helm" "$BIN"
log "built $("$BIN" version --short) (default Kubernetes 1.$k8s_minor) in $(($(date +%s) - start))s"
echo "$BIN"

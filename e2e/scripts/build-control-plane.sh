#!/usr/bin/env bash
# Build the control-plane binaries used by the dfastllm end-to-end tests
# (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok,
# and helm through scripts/tools/helm.sh)
# from Go modules only, i.e. through the Go module proxy (GOPROXY). No release
# tarballs and no container images are needed.
#
# Output: the bin directory is printed as the LAST line of stdout.
# Progress and diagnostics go to stderr.
#
# Cache layout:
#   ${DFASTLLM_CACHE:-$HOME/.cache/dfastllm}/e2e/<version-key>/
#       bin/        the binaries
#       kwok-stages/ kwok Stage YAMLs from the kwok module (kustomize/stage/...),
#                   e.g. node/fast/node-initialize.yaml, pod/fast/pod-ready.yaml;
#                   pass them to `kwok --config FILE` (kwok refuses to run
#                   without stages)
#       src/<comp>/ throwaway Go modules used to build each component
#       .complete   marker written only after every binary was built and checked
#
# Environment knobs (all optional):
#   DFASTLLM_CACHE                 cache root (default: $HOME/.cache/dfastllm)
#   DFASTLLM_E2E_K8S_VERSION       k8s.io/kubernetes tag   (default below)
#   DFASTLLM_E2E_ETCD_VERSION      go.etcd.io/etcd/server/v3 tag (default below)
#   DFASTLLM_E2E_KWOK_VERSION      sigs.k8s.io/kwok tag    (default below)
#   DFASTLLM_E2E_GO_JOBS           go build -p / GOMAXPROCS (default: nproc; the
#                                  build runs at nice 19, so a concurrent cargo
#                                  build still gets the CPU first)
#   DFASTLLM_E2E_GO_VERBOSE=1      pass -v to go get / go build
#
# Usage: build-control-plane.sh [--force] [--print-key] [--background]
#   --background  on a cache miss, build detached at nice 19 (log: <key>/build.log) and
#                 return at once; `make test` starts it first so the Go build uses the
#                 CPU the Rust build leaves idle. A later foreground call waits for it
#                 (flock) and reports any failure itself.
set -euo pipefail
SCRIPT_DIR="$(cd "$(dirname "$0")" && pwd)"

K8S_VERSION="${DFASTLLM_E2E_K8S_VERSION:-v1.36.3}"
ETCD_VERSION="${DFASTLLM_E2E_ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${DFASTLLM_E2E_KWOK_VERSION:-v0.8.0}"

K8S_MODULE="k8s.io/kubernetes"
ETCD_MODULE="go.etcd.io/etcd/server/v3"   # its module root is the etcd `main` package
KWOK_MODULE="sigs.k8s.io/kwok"

GO_JOBS="${DFASTLLM_E2E_GO_JOBS:-$(nproc 2>/dev/null || echo 2)}"

VERSION_KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
CACHE_ROOT="${DFASTLLM_CACHE:-$HOME/.cache/dfastllm}"
WORK_ROOT="${CACHE_ROOT}/e2e/${VERSION_KEY}"
BIN_DIR="${WORK_ROOT}/bin"
SRC_DIR="${WORK_ROOT}/src"
STAGES_DIR="${WORK_ROOT}/kwok-stages"
MARKER="${WORK_ROOT}/.complete"
ALL_BINARIES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm)

log() { printf '[build-control-plane] %s\n' "$*" >&2; }
die() { printf '[build-control-plane] ERROR: %s\n' "$*" >&2; exit 1; }

FORCE=0
BACKGROUND=0
for arg in "$@"; do
  case "$arg" in
    -f|--force) FORCE=1 ;;
    --background) BACKGROUND=1 ;;
    --print-key) echo "$VERSION_KEY"; exit 0 ;;
    -h|--help) sed -n '2,29p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $arg (try --help)" ;;
  esac
done

all_present() {
  local b
  for b in "${ALL_BINARIES[@]}"; do
    [[ -x "${BIN_DIR}/${b}" ]] || return 1
  done
  [[ -f "${STAGES_DIR}/node/fast/node-initialize.yaml" ]]
}

# ---- fast path: cache hit, no Go toolchain needed --------------------------
if [[ $FORCE -eq 0 && -f "$MARKER" ]] && all_present; then
  log "cache hit: ${BIN_DIR}"
  echo "$BIN_DIR"
  exit 0
fi

# ---- slow path ---------------------------------------------------------------
if [[ $BACKGROUND -eq 1 ]]; then
  mkdir -p "$WORK_ROOT"
  log "cache miss: building in the background (log: ${WORK_ROOT}/build.log)"
  setsid nohup "$0" >"${WORK_ROOT}/build.log" 2>&1 </dev/null &
  exit 0
fi
command -v go >/dev/null 2>&1 || die "the 'go' command is not on PATH; it is required to build ${VERSION_KEY}"
mkdir -p "$BIN_DIR" "$SRC_DIR"

# Serialise concurrent invocations (e.g. parallel test binaries).
if command -v flock >/dev/null 2>&1; then
  exec 9>"${WORK_ROOT}/.lock"
  log "waiting for lock ${WORK_ROOT}/.lock"
  flock 9
  if [[ $FORCE -eq 0 && -f "$MARKER" ]] && all_present; then
    log "cache hit after waiting for another build: ${BIN_DIR}"
    echo "$BIN_DIR"
    exit 0
  fi
fi

if [[ $FORCE -eq 1 ]]; then
  log "--force: discarding ${BIN_DIR}"
  rm -rf "$BIN_DIR" "$MARKER"
  mkdir -p "$BIN_DIR"
fi
rm -f "$MARKER"

# Go environment: static binaries, low priority, one package at a time so the
# Go compiler does not starve a concurrent cargo build. GOWORK=off so that a
# go.work file somewhere above the cache dir cannot interfere.
export CGO_ENABLED=0
export GOWORK=off
export GOMAXPROCS="$GO_JOBS"
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-p=${GO_JOBS}"
GO_VERBOSE=()
[[ "${DFASTLLM_E2E_GO_VERBOSE:-0}" == 1 ]] && GO_VERBOSE=(-v)

LOWPRIO=(nice -n 19)
command -v ionice >/dev/null 2>&1 && LOWPRIO+=(ionice -c 3)

log "key=${VERSION_KEY}"
log "$(go version); GOPROXY=$(go env GOPROXY); GOFLAGS=${GOFLAGS}; GOMAXPROCS=${GOMAXPROCS}; CGO_ENABLED=0"

# run_go <dir> <what-is-being-built> go <args...>
# Runs a go command at low priority inside <dir>; on failure names the module
# and the exact command.
run_go() {
  local dir="$1" what="$2"; shift 2
  local shown; shown="$(printf '%q ' "$@")"
  log "  (cd ${dir} && ${shown% })"
  if ! (cd "$dir" && "${LOWPRIO[@]}" "$@"); then
    die "failed to build ${what}; command was: (cd ${dir} && GOFLAGS='${GOFLAGS}' GOMAXPROCS=${GOMAXPROCS} CGO_ENABLED=0 GOWORK=off ${shown% })"
  fi
}

# Prints the replace directives of an upstream go.mod, one per line as
# "lhs => rhs" (comments stripped), for both single-line and block form.
gomod_replaces() {
  awk '
    { sub(/\/\/.*/, "") }
    /^replace[ \t]*\(/ { blk = 1; next }
    blk && /^[ \t]*\)/ { blk = 0; next }
    /^replace[ \t]/ { sub(/^replace[ \t]+/, ""); if ($0 ~ /=>/) print; next }
    blk && /=>/ { sub(/^[ \t]+/, ""); print }
  ' "$1"
}

# Prints "path version" for each require directive of an upstream go.mod.
gomod_requires() {
  awk '
    { sub(/\/\/.*/, "") }
    /^require[ \t]*\(/ { blk = 1; next }
    blk && /^[ \t]*\)/ { blk = 0; next }
    /^require[ \t]/ { print $2, $3; next }
    blk && NF >= 2 { print $1, $2 }
  ' "$1"
}

# Prints the go directive and godebug directives of an upstream go.mod.
gomod_go_and_godebug() {
  awk '
    /^go[ \t]/ { print; next }
    /^godebug[ \t]*\(/ { blk = 1; print; next }
    blk { print; if ($0 ~ /^[ \t]*\)/) blk = 0; next }
    /^godebug[ \t]/ { print }
  ' "$1"
}

# prepare_module <component> <module> <version> [staging-version]
# Creates ${SRC_DIR}/<component>/go.mod, a throwaway main module that requires
# <module>@<version>. Replace directives of the upstream go.mod are ignored by
# Go when the module is a dependency, so they are translated here:
#   * "X => ./staging/src/X" (Kubernetes staging) becomes "X => X <staging-version>"
#     for every staging module the upstream go.mod actually requires;
#   * other local-path replaces (etcd's "=> ../api" siblings) are dropped, the
#     upstream already requires those siblings at the same, published tag;
#   * replaces that point at another module version are copied verbatim.
prepare_module() {
  local comp="$1" module="$2" version="$3" staging="${4:-}"
  local dir="${SRC_DIR}/${comp}"
  mkdir -p "$dir"

  log "[$comp] resolving ${module}@${version} through $(go env GOPROXY)"
  local upstream
  if ! upstream="$(cd "$SRC_DIR" && GOFLAGS= go list -m -f '{{.GoMod}}' "${module}@${version}")" || [[ ! -f "$upstream" ]]; then
    die "cannot resolve ${module}@${version}: command was: go list -m -f '{{.GoMod}}' ${module}@${version} (check GOPROXY and that the tag exists: go list -m -versions ${module})"
  fi

  local requires; requires="$(gomod_requires "$upstream")"
  local replaces=() lhs rhs line n_stage=0 n_copy=0 n_drop=0
  while IFS= read -r line; do
    [[ -z "$line" ]] && continue
    lhs="$(sed -E 's/[[:space:]]*=>.*//; s/^[[:space:]]+//' <<<"$line")"
    rhs="$(sed -E 's/.*=>[[:space:]]*//; s/[[:space:]]+$//' <<<"$line")"
    case "$rhs" in
      ./staging/src/*)
        [[ -n "$staging" ]] || die "[$comp] ${module} has staging replace '${line}' but no staging version was given"
        local path="${lhs%% *}"
        if awk -v p="$path" '$1 == p { found = 1 } END { exit !found }' <<<"$requires"; then
          replaces+=("${path} => ${path} ${staging}"); n_stage=$((n_stage + 1))
        fi ;;
      ./*|../*|/*) n_drop=$((n_drop + 1)) ;;
      *) replaces+=("${lhs} => ${rhs}"); n_copy=$((n_copy + 1)) ;;
    esac
  done < <(gomod_replaces "$upstream")
  log "[$comp] replace directives: ${n_stage} staging->${staging:-n/a}, ${n_copy} copied, ${n_drop} local dropped"

  {
    echo "// Generated by e2e/scripts/build-control-plane.sh; throwaway build module."
    echo "module dfastllm.invalid/e2e-build/${comp}"
    echo
    gomod_go_and_godebug "$upstream"
    echo
    echo "require ${module} ${version}"
    if [[ ${#replaces[@]} -gt 0 ]]; then
      echo
      echo "replace ("
      printf '\t%s\n' "${replaces[@]}"
      echo ")"
    fi
  } >"${dir}/go.mod.new"
  # Start from a clean go.mod/go.sum whenever the inputs changed.
  if ! cmp -s "${dir}/go.mod.new" "${dir}/go.mod.in" 2>/dev/null; then
    cp "${dir}/go.mod.new" "${dir}/go.mod.in"
    cp "${dir}/go.mod.new" "${dir}/go.mod"
    rm -f "${dir}/go.sum"
  fi
  rm -f "${dir}/go.mod.new"
}

# build_bins <component> <version> <module@version for messages> <ldflags> <tags> name=pkg...
# All packages must belong to the module required at <version>.
build_bins() {
  local comp="$1" version="$2" what="$3" ldflags="$4" tags="$5"; shift 5
  local dir="${SRC_DIR}/${comp}" tmp="${SRC_DIR}/${comp}/.out" spec name pkg pkgs=()
  # pkg@version, never a bare pkg: a bare `go get pkg` means @upgrade.
  for spec in "$@"; do pkgs+=("${spec#*=}@${version}"); done

  local t0=$SECONDS
  log "[$comp] go get (downloads modules, records go.sum)"
  run_go "$dir" "$what" go get "${GO_VERBOSE[@]}" "${pkgs[@]}"

  rm -rf "$tmp"; mkdir -p "$tmp"
  for spec in "$@"; do
    name="${spec%%=*}"; pkg="${spec#*=}"
    if [[ -x "${BIN_DIR}/${name}" ]]; then
      log "[$comp] ${name}: already built, skipping"
      continue
    fi
    local t1=$SECONDS
    log "[$comp] building ${name} from ${pkg} (slow; nice 19, -p=${GO_JOBS})"
    run_go "$dir" "$what ($pkg)" go build "${GO_VERBOSE[@]}" -trimpath ${tags:+-tags "$tags"} \
      -ldflags "$ldflags" -o "${tmp}/${name}" "$pkg"
    # Install atomically so an interrupted build never leaves a partial binary.
    mv -f "${tmp}/${name}" "${BIN_DIR}/${name}"
    log "[$comp] ${name}: done in $((SECONDS - t1))s"
  done
  rm -rf "$tmp"
  log "[$comp] finished in $((SECONDS - t0))s"
}

# check_version <binary> <expected-substring> <version-args...>
check_version() {
  local bin="$1" want="$2"; shift 2
  local out
  out="$("${BIN_DIR}/${bin}" "$@" 2>&1)" || die "${BIN_DIR}/${bin} $* failed: ${out}"
  grep -qF -- "$want" <<<"$out" || die "${BIN_DIR}/${bin} $* printed '${out}', expected it to contain '${want}'"
  log "  ${bin}: $(head -n1 <<<"$out")"
}

component_done() {
  local b
  for b in "$@"; do [[ -x "${BIN_DIR}/${b}" ]] || return 1; done
}

START=$SECONDS

# ---- helm (shared with the manifest lint, which caches it under tools/) ----------
if component_done helm; then
  log "[helm] present, skipping"
else
  HELM_BIN="$("${SCRIPT_DIR}/../../scripts/tools/helm.sh" | tail -n1)" || die "scripts/tools/helm.sh failed"
  ln -sf "$HELM_BIN" "${BIN_DIR}/helm"
fi

# ---- etcd --------------------------------------------------------------------
if component_done etcd; then
  log "[etcd] present, skipping"
else
  prepare_module etcd "$ETCD_MODULE" "$ETCD_VERSION"
  build_bins etcd "$ETCD_VERSION" "${ETCD_MODULE}@${ETCD_VERSION}" \
    "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=${ETCD_VERSION}" "" \
    "etcd=${ETCD_MODULE}"
fi

# ---- kwok --------------------------------------------------------------------
if component_done kwok; then
  log "[kwok] present, skipping"
else
  prepare_module kwok "$KWOK_MODULE" "$KWOK_VERSION"
  build_bins kwok "$KWOK_VERSION" "${KWOK_MODULE}@${KWOK_VERSION}" \
    "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${K8S_VERSION}" "" \
    "kwok=${KWOK_MODULE}/cmd/kwok"
fi

# ---- Kubernetes --------------------------------------------------------------
if component_done kube-apiserver kube-controller-manager kube-scheduler kubectl; then
  log "[k8s] present, skipping"
else
  [[ "$K8S_VERSION" =~ ^v1\.([0-9]+)\.([0-9]+)$ ]] || die "K8S version must look like v1.X.Y, got ${K8S_VERSION}"
  K8S_MINOR="${BASH_REMATCH[1]}"
  STAGING_VERSION="v0.${K8S_MINOR}.${BASH_REMATCH[2]}"
  prepare_module k8s "$K8S_MODULE" "$K8S_VERSION" "$STAGING_VERSION"
  # Same version stamping as kubernetes' hack/lib/version.sh, and the same
  # tags as a non-debug `make` build (hack/lib/golang.sh).
  K8S_LDFLAGS="-s -w"
  for pkgv in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    K8S_LDFLAGS+=" -X ${pkgv}.gitVersion=${K8S_VERSION} -X ${pkgv}.gitMajor=1 -X ${pkgv}.gitMinor=${K8S_MINOR}"
    K8S_LDFLAGS+=" -X ${pkgv}.gitTreeState=clean -X ${pkgv}.buildDate=1970-01-01T00:00:00Z"
  done
  build_bins k8s "$K8S_VERSION" "${K8S_MODULE}@${K8S_VERSION} (staging ${STAGING_VERSION})" "$K8S_LDFLAGS" \
    "selinux,notest,grpcnotrace" \
    "kube-apiserver=${K8S_MODULE}/cmd/kube-apiserver" \
    "kube-controller-manager=${K8S_MODULE}/cmd/kube-controller-manager" \
    "kube-scheduler=${K8S_MODULE}/cmd/kube-scheduler" \
    "kubectl=${K8S_MODULE}/cmd/kubectl"
fi


# ---- kwok stages ---------------------------------------------------------------
log "[kwok] copying Stage YAMLs to ${STAGES_DIR}"
KWOK_DIR="$(cd "$SRC_DIR" && GOFLAGS= go mod download -json "${KWOK_MODULE}@${KWOK_VERSION}" |
  sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')" || true
[[ -n "$KWOK_DIR" && -d "${KWOK_DIR}/kustomize/stage" ]] ||
  die "cannot locate kustomize/stage in ${KWOK_MODULE}@${KWOK_VERSION}; command was: go mod download -json ${KWOK_MODULE}@${KWOK_VERSION}"
rm -rf "${STAGES_DIR}.tmp"
while IFS= read -r f; do
  install -D -m 0644 "${KWOK_DIR}/kustomize/stage/${f}" "${STAGES_DIR}.tmp/${f}"
done < <(cd "${KWOK_DIR}/kustomize/stage" && find . -name '*.yaml' ! -name kustomization.yaml ! -path '*/testdata/*' | sed 's|^\./||' | sort)
rm -rf "$STAGES_DIR"
mv "${STAGES_DIR}.tmp" "$STAGES_DIR"

# ---- verify & mark complete --------------------------------------------------
log "verifying binaries"
check_version etcd "${ETCD_VERSION#v}" --version
check_version kube-apiserver "$K8S_VERSION" --version
check_version kube-controller-manager "$K8S_VERSION" --version
check_version kube-scheduler "$K8S_VERSION" --version
check_version kubectl "$K8S_VERSION" version --client
check_version kwok "$KWOK_VERSION" --version
check_version helm "v3." version --short

{
  echo "key=${VERSION_KEY}"
  echo "go=$(go env GOVERSION)"
  echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "build_seconds=$((SECONDS - START))"
} >"${MARKER}.tmp"
mv -f "${MARKER}.tmp" "$MARKER"
log "complete in $((SECONDS - START))s; $(du -sh "$BIN_DIR" | cut -f1) in ${BIN_DIR}"
echo "$BIN_DIR"

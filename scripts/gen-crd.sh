#!/usr/bin/env bash
# Writes the DiffusionModel CRD, as `dfastllm-operator crd` prints it, to the three
# places that must hold the same file: crds/ (the source of truth), config/crd/bases/
# (kustomize cannot read outside its root) and the Helm chart's crds/.
#   scripts/gen-crd.sh           regenerate
#   scripts/gen-crd.sh --check   fail if any copy is stale (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
file=diffusionmodels.dfastllm.io.yaml
targets=(crds/$file config/crd/bases/$file charts/dfastllm-operator/crds/$file)
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
# Built as `cargo test --workspace` builds it, so CI recompiles nothing.
cargo test --workspace --no-run --quiet
target/debug/dfastllm-operator crd >"$tmp"
if [[ ${1:-} == --check ]]; then
    for t in "${targets[@]}"; do
        if ! cmp -s "$tmp" "$t"; then
            echo "gen-crd.sh: $t is stale; run scripts/gen-crd.sh and commit" >&2
            diff -u "$t" "$tmp" | head -40 >&2 || true
            exit 1
        fi
    done
    echo "gen-crd.sh: CRD copies are current" >&2
else
    for t in "${targets[@]}"; do
        mkdir -p "$(dirname "$t")"
        install -m 0644 "$tmp" "$t"
    done
fi

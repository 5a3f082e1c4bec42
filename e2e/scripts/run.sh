#!/usr/bin/env bash
# The end-to-end suite: builds the workspace's test binaries (the same build as
# `cargo test --workspace`, so nothing recompiles), starts the control plane
# (with-cluster.sh) and runs the cluster tests against it with the real operator binary.
#   e2e/scripts/run.sh [TEST-NAME-FILTER]
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo test --workspace --no-run --quiet
export DFASTLLM_E2E_OPERATOR_BIN="$PWD/target/debug/dfastllm-operator"
# The tests mostly wait on the cluster, so more threads than cores is right.
exec e2e/scripts/with-cluster.sh \
  cargo test --workspace --quiet --test cluster -- --ignored --test-threads 8 "$@"

# The two commands a newcomer needs:
#   make demo   the main job: build, write a demo checkpoint, generate with it
#   make test   every test (what .ci/run calls)
CARGO ?= cargo
export CARGO_BUILD_JOBS ?= 2
DEMO_DIR ?= target/demo/llada

.PHONY: demo test test-cpu cuda lint parity-fixtures bench-forward

demo:
	$(CARGO) build --release -p dfastllm-runtime --bin dfastllm
	target/release/dfastllm demo-model --arch llada --out $(DEMO_DIR)
	target/release/dfastllm generate --model $(DEMO_DIR) --prompt "The capital of France is" --max-tokens 32 --json

# Unit, parity and CLI tests on the CPU, then the CUDA build (compiled and linked
# against PyPI's toolkit, smoke-tested on the CPU: CI has no GPU).
test: test-cpu cuda

test-cpu:
	$(CARGO) test --workspace

cuda:
	scripts/cuda/build.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Needs torch + transformers (installed by the script into a cached venv, ~5 GB).
parity-fixtures:
	scripts/parity/regen.sh

bench-forward:
	scripts/parity/bench_forward.sh llada 1 64 50
	scripts/parity/bench_forward.sh dream 1 64 50

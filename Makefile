# The two commands a newcomer needs:
#   make serve  the main job: build, write a demo checkpoint, serve the OpenAI API on :8000
#   make test   every test (what .ci/run calls)
CARGO ?= cargo
export CARGO_BUILD_JOBS ?= 2
DEMO_DIR ?= target/demo/llada
# The bundled trained model (scripts/train/) and its held-out eval set.
MODEL_DIR ?= models/dfastllm-tiny-llada
EVAL_DATA ?= models/eval/tasks-heldout.jsonl

.PHONY: serve eval train-tiny eval-reference demo test prefetch test-cpu after-cpu cuda-low-priority sdk gpu-check-cpu manifests e2e crds cuda lint parity-fixtures bench-forward bench-serve bench-ar

serve:
	$(CARGO) build --release -p dfastllm-runtime --bin dfastllm
	target/release/dfastllm serve --model $(MODEL_DIR) --served-name dfastllm-tiny --port 8000 --log-format text --max-tokens 32 --block-length 8 --apd threshold --kv-cache dual

# Every decoding strategy on the bundled model's held-out set (docs/decoding.md).
eval:
	$(CARGO) build --release -p dfastllm-runtime --bin dfastllm
	target/release/dfastllm --threads 2 eval --model $(MODEL_DIR) --data $(EVAL_DATA) \
		--strategies baseline,threshold,factor,mor,threshold+mor --kv-cache none,prefix,dual
	target/release/dfastllm --threads 2 eval --model $(MODEL_DIR) --data $(EVAL_DATA) \
		--strategies baseline,threshold,verifier --kv-cache none --apd-verifier models/dfastllm-tiny-ar

# Our baseline against LLaDA's reference decoding in transformers (same answers, speed).
eval-reference:
	scripts/eval/reference_side_by_side.sh $(MODEL_DIR) $(EVAL_DATA)

# Retrain the bundled models (PyTorch on the CPU, about 30 minutes on 2 cores).
train-tiny:
	scripts/train/train.sh

demo:
	$(CARGO) build --release -p dfastllm-runtime --bin dfastllm
	target/release/dfastllm demo-model --arch llada --out $(DEMO_DIR)
	target/release/dfastllm generate --model $(DEMO_DIR) --prompt "The capital of France is" --max-tokens 32 --json

# Unit, parity, CLI, server and operator tests on the CPU, the official openai SDK
# against a real server, the generated CRD and the manifests (kustomize, Helm,
# Dockerfiles), the end-to-end suite on a real control plane, then the CUDA build
# (compiled and linked against PyPI's toolkit, smoke-tested on the CPU: CI has no GPU).
# `prefetch` starts the Go build of the control plane in the background (cache miss
# only), where it uses the CPU the Rust build leaves idle. The CUDA build (toolkit
# download, PTX kernels) then runs at low priority beside the SDK, manifest and e2e
# tests, which spend most of their time waiting on processes and the network.
test: prefetch
	$(MAKE) test-cpu
	$(MAKE) -j2 --output-sync=recurse cuda-low-priority after-cpu

after-cpu:
	$(MAKE) -j1 sdk gpu-check-cpu manifests e2e

# scripts/gpu/check.sh (parity against the CPU, every decoding mode, serve + bench
# serve, the roofline) at tiny shapes on the CPU, so the device machine's script cannot
# rot; on a GPU: `scripts/gpu/check.sh` over the CUDA binary (docs/benchmarks.md).
gpu-check-cpu:
	$(CARGO) test --workspace --no-run --quiet
	DEVICE=cpu DFASTLLM_BIN=target/debug/dfastllm scripts/gpu/check.sh

cuda-low-priority:
	nice -n 10 scripts/cuda/build.sh

prefetch:
	e2e/scripts/build-control-plane.sh --background >/dev/null

test-cpu:
	$(CARGO) test --workspace

sdk:
	scripts/sdk-tests.sh

manifests:
	scripts/gen-crd.sh --check
	scripts/lint-manifests.sh

# A real kube-apiserver, etcd, controller manager, scheduler and kwok GPU nodes, built
# from Go modules into ~/.cache/dfastllm/e2e/ (cold: minutes; warm: instant).
e2e:
	e2e/scripts/run.sh

# Regenerate crds/ (and its copies in config/crd and the chart) after changing crd.rs.
crds:
	scripts/gen-crd.sh

cuda:
	scripts/cuda/build.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Needs torch + transformers (installed by the script into a cached venv, ~5 GB).
parity-fixtures:
	scripts/parity/regen.sh

# docs/benchmarks.md: serve the bundled model and load-test it (JSON + PNG plots).
bench-serve:
	scripts/bench/serve.sh

# Autoregressive tokens/s, ours vs transformers, on a TinyLlama-shaped model (README).
bench-ar:
	scripts/bench/ar-vs-transformers.sh

bench-forward:
	scripts/parity/bench_forward.sh llada 1 64 50
	scripts/parity/bench_forward.sh dream 1 64 50

#!/usr/bin/env bash
# Builds `dfastllm` with candle's CUDA backend (`--features cuda`) on a machine with no
# GPU and no CUDA install, then checks the binary starts and falls back to the CPU.
#
# The toolkit comes from PyPI's nvidia-* wheels pinned at CUDA 13.0 (the lent GPUs run
# driver 580 = CUDA 13.0, whose JIT rejects PTX from newer toolkits; cudarc 0.19.10
# also panics on 13.5). No package ships the driver's libcuda.so, so the link uses a
# stub with the real soname (libcuda.so.1) defining every cu* symbol cudarc declares;
# at run time the real driver's library is found instead.
#
# Everything slow is cached under ~/.cache/dfastllm, keyed by version and compute cap:
# the wheels (~1.2 GB unpacked) and the cargo target dir (candle's PTX kernels take
# ~7 minutes on 2 cores to compile).
#
#   scripts/cuda/build.sh              # build + smoke test; binary at target/cuda/dfastllm
#   CUDA_COMPUTE_CAP=90 scripts/cuda/build.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

CUDA_TAG=13.0.88
CAP=${CUDA_COMPUTE_CAP:-80}
CACHE=${DFASTLLM_CACHE:-$HOME/.cache/dfastllm}
TOOLKIT=$CACHE/cuda-toolkit-$CUDA_TAG
ROOT=$TOOLKIT/nvidia/cu13
LINKDIR=$TOOLKIT/link
export CARGO_TARGET_DIR=${DFASTLLM_CUDA_TARGET_DIR:-$CACHE/cuda-target-$CUDA_TAG-sm$CAP}

log() { echo "cuda/build.sh: $*" >&2; }

if [[ ! -f $TOOLKIT/.installed ]]; then
    log "installing the CUDA $CUDA_TAG toolkit wheels into $TOOLKIT"
    rm -rf "$TOOLKIT"
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$TOOLKIT" \
        nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 \
        nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
    touch "$TOOLKIT/.installed"
fi

# Unversioned names for the linker, next to the libcuda stub.
mkdir -p "$LINKDIR"
for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13; do
    ln -sf "$ROOT/lib/$lib" "$LINKDIR/${lib%.so.*}.so"
done

cargo fetch --locked >&2 2>/dev/null || cargo fetch >&2
cudarc_version=$(awk '/^name = "cudarc"/{getline; gsub(/"/,"",$3); print $3}' Cargo.lock)
cudarc_src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$cudarc_version" | head -n1)
if [[ ! -f $LINKDIR/.stub-$cudarc_version ]]; then
    log "building the libcuda.so.1 link stub from cudarc $cudarc_version's declarations"
    {
        echo "/* Link-time stand-in for the NVIDIA driver: every call fails with CUDA_ERROR_NO_DEVICE. */"
        grep -ohE "fn cu[A-Z][A-Za-z0-9_]*" "$cudarc_src"/src/driver/sys/*.rs | sort -u |
            sed -E 's/^fn (.*)$/int \1(void) { return 100; }/'
    } >"$LINKDIR/libcuda_stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LINKDIR/libcuda.so.1" "$LINKDIR/libcuda_stub.c"
    ln -sf libcuda.so.1 "$LINKDIR/libcuda.so"
    touch "$LINKDIR/.stub-$cudarc_version"
fi

export PATH=$ROOT/bin:$PATH CUDA_ROOT=$ROOT CUDA_PATH=$ROOT CUDA_HOME=$ROOT CUDA_COMPUTE_CAP=$CAP
export RUSTFLAGS="-L $LINKDIR"
log "cargo build --release --features cuda (sm_$CAP, target $CARGO_TARGET_DIR)"
cargo build --release -p dfastllm-runtime --features cuda --bin dfastllm >&2

mkdir -p target/cuda
cp "$CARGO_TARGET_DIR/release/dfastllm" target/cuda/dfastllm
bin=target/cuda/dfastllm
readelf -d "$bin" | grep -q 'NEEDED.*libcuda.so.1' || { log "the binary does not link libcuda.so.1"; exit 1; }

# Smoke test on this GPU-less machine, against the stub: the CUDA build must start,
# fall back to the CPU under --device auto, and refuse --device cuda:0 with one clear line.
export LD_LIBRARY_PATH=$LINKDIR:$ROOT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$bin" demo-model --arch llada --out "$tmp/m" 2>/dev/null
"$bin" generate --model "$tmp/m" --prompt hi --max-tokens 8 --json --device auto 2>/dev/null | grep -q '"forward_passes"'
if "$bin" generate --model "$tmp/m" --prompt hi --max-tokens 8 --device cuda:0 2>"$tmp/err"; then
    log "--device cuda:0 succeeded on a machine without a GPU"; exit 1
fi
grep -q 'cuda:0' "$tmp/err" || { log "unexpected error for --device cuda:0: $(cat "$tmp/err")"; exit 1; }
log "ok: $bin ($(du -h "$bin" | cut -f1)) links libcuda.so.1, runs on the CPU without a GPU"

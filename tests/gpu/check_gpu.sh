#!/bin/bash
# The prepared check for a lent NVIDIA machine (no network there; see ../shared/gpu/README.md).
#
#   here, in the project's root:  bash ../shared/gpu/fetch_wheels.sh      (pyopencl wheels + prelude into .gpu/)
#   device tool:                  run(carry=[".gpu"], timeout_s=600, command="bash tests/gpu/check_gpu.sh")
#
# Steps (each under its own time limit, all of them run even when one fails):
#   1. the prelude: installs pyopencl and the project, points the ICD loader at NVIDIA's OpenCL driver
#   2. the OpenCL platforms and the device lazygrad picks (fails unless it is the GPU)
#   3. the ResNet-18 step at 32x3x224x224 and 1x3x64x64, lazygrad (OpenCL) against PyTorch on cuda
#      in the same process: medians, ratio, kernels per step, first-step time, the slowest kernels
#   4. matrix products at the step's sizes: each local-memory tile against torch.matmul (fp32 and TF32)
#   5. a small convnet, forward + backward, against torch on cuda (values and step times)
#   6. the op and backend tests with LAZYGRAD_BACKEND=opencl (work-group reductions and local tiles too)
#   7. the kernel search at 1x3x64x64: search time, and the searched step against the heuristics' (last: it is
#      the step a short lease cuts)
# Logs land in $OUT (the device tool brings them back), or in ./gpu-logs elsewhere.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
LOGS=${OUT:-gpu-logs}
mkdir -p "$LOGS"

# sourced (not piped, which would run it in a subshell) so that its exports reach the steps below
# shellcheck disable=SC1091
source .gpu/prelude.sh >"$LOGS/prelude.log" 2>&1
prelude_status=$?
cat "$LOGS/prelude.log"
[ "$prelude_status" -eq 0 ] || { echo "prelude failed: did you run ../shared/gpu/fetch_wheels.sh here first?"; exit 1; }
echo "OCL_ICD_VENDORS=${OCL_ICD_VENDORS:-unset}"

export LAZYGRAD_BACKEND=opencl
export LAZYGRAD_CACHE_DIR=/tmp/lazygrad-cache
export LAZYGRAD_TEST_BACKENDS=opencl

failed=()
step() {  # step NAME SECONDS COMMAND...: run it with a time limit, log it, remember a failure
    local name=$1 limit=$2
    shift 2
    echo "=== $name"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    local status=${PIPESTATUS[0]}
    echo "=== $name: exit $status after $((SECONDS - start)) s"
    [ "$status" -eq 0 ] || failed+=("$name (exit $status)")
}

step platforms 60 python3 tests/gpu/opencl_info.py
step resnet-32x224 150 python3 examples/benchmark.py --torch-device cuda --batch-size 32 --image-size 224 \
    --steps 5 --warmup 2 --profile 40
step resnet-1x64 120 python3 examples/benchmark.py --torch-device cuda --steps 10 --warmup 2 --profile 15
step tiles 90 python3 tests/gpu/tiles_vs_torch.py
step convnet 60 python3 tests/gpu/convnet_vs_torch.py
step ops 150 python3 -m pytest -q -n 8 -p no:cacheprovider --backend opencl tests/test_ops.py tests/test_backends.py \
    tests/test_gpu_kernels.py tests/test_local_tiles.py
step search 60 python3 examples/benchmark_search.py --steps 8 --effort 1

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all GPU checks passed"

#!/usr/bin/env bash
# On a machine with a CUDA GPU: the GPU tests (pytest -m gpu), then the GPU benchmark, in one command;
# a short table comes last. Runs cudcn from this source tree (PYTHONPATH), with the Python that has
# CuPy, torch and torchvision ($PYTHON, default python3). Logs go to $OUT (or a temporary folder).
# Without a usable GPU it says so and exits 1; it exits non-zero when a test or the benchmark fails.
#
#   benchmarks/gpu_check.sh [extra benchmark arguments, e.g. --repeats 100]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
LOGS="${OUT:-$(mktemp -d)}"
mkdir -p "$LOGS"

if ! "$PY" -c '
import sys
try:
    import cupy
    count = cupy.cuda.runtime.getDeviceCount()
except Exception as error:  # no CuPy, no driver, no device
    sys.exit(f"gpu_check: no usable CUDA GPU here: {error}")
sys.exit(0 if count > 0 else "gpu_check: no usable CUDA GPU here: no device")
'; then
    exit 1
fi

"$PY" -m pytest -m gpu -q -rfEs -p no:cacheprovider tests 2>&1 | tee "$LOGS/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}

"$PY" benchmarks/bench_deform_conv2d_gpu.py --json "$LOGS/bench_deform_conv2d_gpu.json" "$@" \
    2>&1 | tee "$LOGS/bench_deform_conv2d_gpu.log"
bench_rc=${PIPESTATUS[0]}

echo
echo "== gpu_check summary (logs in $LOGS) =="
echo "GPU tests (pytest -m gpu): exit $tests_rc, $(grep -E '(passed|failed|error)' \
    "$LOGS/gpu_tests.log" | tail -n 1)"
echo "GPU benchmark: exit $bench_rc"
sed -n '/^deform_conv2d, float32/,$p' "$LOGS/bench_deform_conv2d_gpu.log"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]

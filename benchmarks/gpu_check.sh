#!/usr/bin/env bash
# On a machine with a CUDA GPU: everything that needs one, in one command of under 10 minutes on an
# H100/H200, a short table last. Steps: the NVRTC headers check (cudcn info), every op against the
# reference on the GPU (cudcn check --backend cuda), the GPU tests (pytest -m gpu), then the GPU
# benchmark. Runs cudcn from this source tree (PYTHONPATH), with the Python that has CuPy, torch and
# torchvision ($PYTHON, default python3). Logs go to $OUT (or a temporary folder). Each step has a
# time limit ($STEP_LIMIT seconds, default 240) so one hung step cannot eat the lease.
# Without a usable GPU it says so and exits 1; it exits non-zero when a step fails.
#
#   benchmarks/gpu_check.sh [extra benchmark arguments, e.g. --repeats 100]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
LOGS="${OUT:-$(mktemp -d)}"
LIMIT="${STEP_LIMIT:-240}"
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

declare -a SUMMARY
step() {  # step NAME LOG COMMAND...: run with the time limit, log, and record exit code and time
    local name="$1" log="$LOGS/$2"
    shift 2
    local start=$SECONDS
    timeout "$LIMIT" "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    SUMMARY+=("| $name | $rc | $((SECONDS - start)) s | $(grep -E 'passed|failed|error|NVRTC|all checks' "$log" | tail -n 1 | cut -c1-90) |")
    return "$rc"
}

step "cudcn info" info.log "$PY" -m cudcn info
info_rc=$?
step "cudcn check --backend cuda" check.log "$PY" -m cudcn check --backend cuda
check_rc=$?
step "pytest -m gpu" gpu_tests.log "$PY" -m pytest -m gpu -q -rfEs -p no:cacheprovider tests
tests_rc=$?
step "bench_deform_conv2d_gpu.py" bench.log \
    "$PY" benchmarks/bench_deform_conv2d_gpu.py --json "$LOGS/bench_deform_conv2d_gpu.json" "$@"
bench_rc=$?

echo
echo "== gpu_check summary (logs in $LOGS) =="
echo "| step | exit | time | last line |"
echo "|---|---|---|---|"
printf '%s\n' "${SUMMARY[@]}"
sed -n '/^deform_conv2d, float32/,$p' "$LOGS/bench.log"
[ "$info_rc" -eq 0 ] && [ "$check_rc" -eq 0 ] && [ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]

#!/usr/bin/env bash
# On a machine with a CUDA GPU: everything that needs one, in one command of under 10 minutes
# (TOTAL_LIMIT, default 570 s), a short table of steps last. Steps, each under its own time limit
# (seconds, capped by what is left of the total) so that one hung step cannot eat the lease:
#   cudcn info (NVRTC headers)                                     45
#   cudcn check --backend cuda (every op against the reference)    105
#   pytest -m gpu on the precision and determinism tests           120
#     (tests/precision/: test_half_precision.py, test_deterministic.py, test_deterministic_gpu.py)
#   pytest -m gpu on every other test                               120
#   benchmarks/bench_deform_conv2d_gpu.py (float32, float16, bfloat16, torchvision, cuDNN, peak
#     memory, and the deterministic mode's cost: fwd+bwd with the mode on vs off)    140
#   benchmarks/bench_ms_deform_attn_gpu.py (Deformable DETR's encoder shape, float32, float16,
#     bfloat16, the deterministic mode, against torch's grid_sample composition)      40
# Runs cudcn from this source tree (PYTHONPATH), with the Python that has CuPy, torch and torchvision
# ($PYTHON, default python3). Logs go to $OUT (or a temporary folder). Without a usable GPU it says so
# and exits 1; it exits non-zero when a step fails (pytest collecting no GPU test counts as failing).
#
#   benchmarks/gpu_check.sh [extra benchmark arguments, e.g. --repeats 100]
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
LOGS="${OUT:-$(mktemp -d)}"
TOTAL="${TOTAL_LIMIT:-570}"
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
FAILED=0
step_limit() {  # step_limit SECONDS: that, or what is left of TOTAL if less (0: no time left)
    local left=$((TOTAL - SECONDS))
    echo $(( $1 < left ? $1 : (left > 0 ? left : 0) ))
}
step() {  # step NAME LOG LIMIT PATTERN COMMAND...: run under the limit, log, record exit code and time
    local name="$1" log="$LOGS/$2" limit pattern="$4"
    limit=$(step_limit "$3")
    shift 4
    local start=$SECONDS rc
    if [ "$limit" -lt 5 ]; then
        echo "gpu_check: $name skipped: the total limit of $TOTAL s is used up" | tee "$log"
        rc=124
    else
        timeout -k 10 "$limit" "$@" 2>&1 | tee "$log"
        rc=${PIPESTATUS[0]}
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
            echo "gpu_check: $name stopped at its limit of $limit s" >> "$log"
        fi
    fi
    SUMMARY+=("| $name | $rc | $((SECONDS - start)) s | $(grep -E "$pattern|gpu_check:" "$log" | tail -n 1 | cut -c1-100) |")
    [ "$rc" -eq 0 ] || FAILED=1
}

TESTS='passed|failed|error|no tests ran|deselected'
step "cudcn info" info.log 45 'NVRTC|headers' "$PY" -m cudcn info
step "cudcn check --backend cuda" check.log 105 'all checks|FAIL|error' \
    "$PY" -m cudcn check --backend cuda

PRECISION=()  # the precision and determinism tests (issue 9), those present in this tree
for file in tests/precision/test_half_precision.py tests/precision/test_deterministic.py \
    tests/precision/test_deterministic_gpu.py; do
    [ -f "$file" ] && PRECISION+=("$file")
done
IGNORE=()
for file in "${PRECISION[@]}"; do IGNORE+=("--ignore=$file"); done
step "pytest -m gpu: precision, determinism" precision.log 120 "$TESTS" \
    "$PY" -m pytest -m gpu -q -rfEs -p no:cacheprovider "${PRECISION[@]}"
step "pytest -m gpu: the other tests" gpu_tests.log 120 "$TESTS" \
    "$PY" -m pytest -m gpu -q -rfEs -p no:cacheprovider "${IGNORE[@]}" tests

bench_limit=$(step_limit 140)  # the benchmark stops starting rows 40 s before its step limit
step "bench_deform_conv2d_gpu.py" bench.log 140 '^bench_deform_conv2d_gpu:' \
    "$PY" benchmarks/bench_deform_conv2d_gpu.py \
    --time-limit $((bench_limit > 80 ? bench_limit - 40 : (bench_limit > 2 ? bench_limit / 2 : 1))) \
    --json "$LOGS/bench_deform_conv2d_gpu.json" "$@"
msda_limit=$(step_limit 40)  # its rows are short: it stops starting them 10 s before its limit
step "bench_ms_deform_attn_gpu.py" bench_msda.log 40 '^bench_ms_deform_attn_gpu:' \
    "$PY" benchmarks/bench_ms_deform_attn_gpu.py \
    --time-limit $((msda_limit > 20 ? msda_limit - 10 : (msda_limit > 2 ? msda_limit / 2 : 1))) \
    --json "$LOGS/bench_ms_deform_attn_gpu.json" "$@"

echo
sed -n '/^deform_conv2d on a GPU/,$p' "$LOGS/bench.log"
echo
sed -n '/^ms_deform_attn on a GPU/,$p' "$LOGS/bench_msda.log"
echo
echo "== gpu_check summary (logs in $LOGS; total $SECONDS s of at most $TOTAL s) =="
echo "| step | exit | time | last line |"
echo "|---|---|---|---|"
printf '%s\n' "${SUMMARY[@]}"
exit "$FAILED"

"""benchmarks/gpu_check.sh, the one command a lent GPU runs: valid bash, and a clear refusal where
there is no GPU (here). Its GPU steps run only on a lent GPU (benchmarks/RESULTS.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cuda_unavailable_reason

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


def test_gpu_check_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_gpu_check_refuses_without_a_gpu(tmp_path) -> None:
    if cuda_unavailable_reason() is None:
        pytest.skip("a GPU is present: gpu_check.sh would run for real")
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path))
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "gpu_check: no usable CUDA GPU here" in result.stderr


FAKE_PYTHON = """#!/usr/bin/env bash
if [ "$1" = "-c" ]; then exit 0; fi  # the GPU probe: pretend a GPU is here
echo "fake python: $*"
if [ -n "${FAKE_HANG:-}" ]; then case "$*" in *"$FAKE_HANG"*) exec sleep 60 ;; esac; fi
"""


def _run_with_fake_python(tmp_path, **env) -> tuple[subprocess.CompletedProcess, Path]:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    logs = tmp_path / "logs"
    env = dict(os.environ, PYTHON=str(fake), OUT=str(logs), **env)
    result = subprocess.run(
        ["bash", str(SCRIPT), "--repeats", "3"], env=env, capture_output=True, text=True, timeout=120
    )
    return result, logs


STEPS = [
    "cudcn info",
    "cudcn check --backend cuda",
    "pytest -m gpu: precision, determinism",
    "pytest -m gpu: the other tests",
    "bench_deform_conv2d_gpu.py",
    "bench_ms_deform_attn_gpu.py",
]


def test_gpu_check_steps_and_summary_last(tmp_path) -> None:
    """With a stand-in Python that says a GPU is there: every step runs once, in order, the
    precision and determinism tests apart from the others, the benchmark with a time limit inside
    its step's and the extra arguments, and the short table of steps is the last output."""
    result, logs = _run_with_fake_python(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-len(STEPS) - 3].startswith("== gpu_check summary")
    assert [x.split(" | ")[0].lstrip("| ") for x in lines[-len(STEPS) :]] == STEPS
    assert all(x.split(" | ")[1] == "0" for x in lines[-len(STEPS) :])
    precision = (logs / "precision.log").read_text()
    assert "tests/precision/test_deterministic.py tests/precision/test_deterministic_gpu.py" in precision
    others = (logs / "gpu_tests.log").read_text()
    assert "--ignore=tests/precision/test_deterministic_gpu.py" in others and others.rstrip().endswith(
        "tests"
    )
    bench = (logs / "bench.log").read_text()
    assert "--time-limit 100 --json" in bench and bench.rstrip().endswith("--repeats 3")
    msda = (logs / "bench_msda.log").read_text()
    assert "bench_ms_deform_attn_gpu.py --time-limit 30 --json" in msda and msda.rstrip().endswith(
        "--repeats 3"
    )


@pytest.mark.slow
def test_gpu_check_stops_a_hung_step_and_keeps_the_total_limit(tmp_path) -> None:
    result, _ = _run_with_fake_python(tmp_path, TOTAL_LIMIT="6", FAKE_HANG="cudcn info")
    assert result.returncode == 1
    rows = result.stdout.strip().splitlines()[-len(STEPS) :]
    assert rows[0].startswith("| cudcn info | 124 |") and "stopped at its limit of 6 s" in rows[0]
    assert all(" | 124 | " in x and "total limit of 6 s is used up" in x for x in rows[1:])

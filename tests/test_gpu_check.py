"""benchmarks/gpu_check.sh, the one command a lent GPU runs: valid bash, and a clear refusal where
there is no GPU (here). Its GPU steps run only on a lent GPU (benchmarks/RESULTS.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cuda_unavailable_reason

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


def test_gpu_check_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_gpu_check_refuses_without_a_gpu(tmp_path) -> None:
    if cuda_unavailable_reason() is None:
        pytest.skip("a GPU is present: gpu_check.sh would run for real")
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path))
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 1
    assert "gpu_check: no usable CUDA GPU here" in result.stderr

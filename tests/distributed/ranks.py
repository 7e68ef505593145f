"""Launching ``mpiexec -n N`` from the distributed tests: :func:`run_ranks` (no tests here).

Each multi-rank test starts ``mpiexec -n 2 <python> -m mpi4py mpi/<script> <args>`` (mpi/ beside this
file) in its own process group and kills the group on a timeout. Ranks get one Numba/OpenMP/BLAS
thread each (2 ranks on 2 cores). Without ``mpiexec`` or mpi4py the tests skip, saying so.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "mpi"
RANK_ENV = {"NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def mpiexec() -> str:
    """The ``mpiexec`` next to this interpreter (the mpich wheel's) or on PATH, else skip."""
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpi4py is not installed (pip install 'cudcn[distributed]')")
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("mpiexec", path=path)
    if found is None:
        pytest.skip("mpiexec not found (pip install mpich)")
    return found


def run_ranks(
    script: str,
    *args: str,
    n: int = 2,
    timeout: float = 120,
    via_mpi4py: bool = True,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``script`` (in tests/distributed/mpi, or a path from the repository root) on ``n`` ranks,
    with ``env`` added to the environment; returns (CompletedProcess, seconds). The whole process
    group is killed, and the test fails, if it outlives ``timeout``."""
    launcher = [sys.executable, "-m", "mpi4py"] if via_mpi4py else [sys.executable]
    path = SCRIPTS / script if (SCRIPTS / script).exists() else ROOT / script
    command = [mpiexec(), "-n", str(n), *launcher, str(path), *args]
    full_env = {**os.environ, **RANK_ENV, "PYTHONPATH": str(ROOT), **(env or {})}
    start = time.perf_counter()
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        what = " ".join([script, *args])
        pytest.fail(f"{what} on {n} ranks still ran after {timeout} s (killed):\n{err[-3000:]}")
    result = subprocess.CompletedProcess(command, proc.returncode, out, err)
    return result, time.perf_counter() - start

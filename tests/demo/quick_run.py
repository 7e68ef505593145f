"""The demos' smoke runs: ``cudcn demo <part> --quick`` in a fresh process, and the pictures it names."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def run_quick(cwd: Path, *args: str) -> str:
    """Run ``cudcn demo *args --quick`` in ``cwd`` (skipped without the ``examples`` extra), require exit
    status 0 and return its standard output."""
    pytest.importorskip("mlxtend", reason="mlxtend not installed (pip install 'cudcn[examples]')")
    pytest.importorskip("matplotlib", reason="matplotlib not installed")
    command = [sys.executable, "-m", "cudcn", "demo", *args, "--quick"]
    start = time.perf_counter()
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=cwd,
        timeout=300,
    )
    print(f"{' '.join(command[2:])} took {time.perf_counter() - start:.1f} s")
    assert result.returncode == 0, result.stderr
    return result.stdout


def assert_wrote_picture(stdout: str, path: Path, cwd: Path | None = None) -> None:
    """The run printed ``wrote <path>`` and the file (relative to ``cwd`` if given) is a PNG of some
    size (a blank figure is smaller than 5 kB)."""
    assert f"wrote {path}" in stdout
    written = cwd / path if cwd is not None else path
    assert written.read_bytes()[:8] == PNG and written.stat().st_size > 5000

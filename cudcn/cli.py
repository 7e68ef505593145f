"""The ``cudcn`` command (also ``python -m cudcn``).

    cudcn info                      versions, backends, GPU, whether the kernels compile
    cudcn check [--backend NAME]    every op on every available backend vs reference and gradcheck
    cudcn bench [--quick]           the deform_conv2d CPU timing table (torchvision's too, if present)
    cudcn demo [conv|layers|background|roi] [--all] [--quick] [--seeds N] [--epochs N] [--out DIR]

Exit codes: 0 success, 1 a failed check or a missing optional dependency, 2 a bad command line (one
line on stderr, no traceback), including a ``--out`` folder that cannot be written (checked before
any work).
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, NoReturn

import cudcn
from cudcn.files import require_folder

DEMO_PARTS = ("conv", "layers", "background", "roi")


class UsageError(Exception):
    """A bad command line; the message is printed as one line."""


class _Parser(argparse.ArgumentParser):
    """argparse with errors raised as :class:`UsageError` instead of usage text and exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line: one subcommand per task."""
    parser = _Parser(prog="cudcn", description="Deformable convolution for NumPy and CuPy.")
    parser.add_argument("--version", action="version", version=f"cudcn {cudcn.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    sub.add_parser("info", help="versions, available backends, GPU, kernel compilation")
    check = sub.add_parser(
        "check", help="every op on every available backend: reference comparison and gradcheck"
    )
    check.add_argument(
        "--backend",
        choices=("cpu", "emulated", "cuda"),
        action="append",
        help="check only this backend (repeatable; default: every available one)",
    )
    bench = sub.add_parser("bench", help="time deform_conv2d on the CPU (and torchvision's)")
    bench.add_argument("--quick", action="store_true", help="small shapes, one repeat")
    demo = sub.add_parser(
        "demo",
        help="the paper's findings on real digits: conv (sampling adapts to scale), layers (how many "
        "deformable layers), background (sampling on background), roi (deformable RoI pooling, R-FCN, "
        "additivity) (needs cudcn[examples])",
    )
    demo.add_argument(
        "which",
        nargs="?",
        choices=DEMO_PARTS,
        default=None,
        help="which part (default conv)",
    )
    demo.add_argument(
        "--all",
        action="store_true",
        help="without a part: run every part, one after the other; with roi: every variant (also the "
        "R-FCN head, the deformable backbone and the controls)",
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help="tiny smoke run: 1 seed, few digits and steps (its numbers mean nothing)",
    )
    demo.add_argument("--seeds", type=_positive, help="number of seeds (default 3)")
    demo.add_argument(
        "--epochs",
        type=_positive,
        help="conv and layers only: epochs of training from scratch (default 2 for conv, 4 for layers)",
    )
    demo.add_argument(
        "--out",
        default="cudcn_demo_out",
        help="folder for the pictures (and the conv demo's saved deformable net, "
        ".npz and .onnx) (default ./cudcn_demo_out)",
    )
    return parser


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def cmd_info() -> int:
    from cudcn import check

    print(f"cudcn {cudcn.__version__}  (python {platform.python_version()}, {platform.platform()})")
    packages = (
        "numpy",
        "numba",
        "scipy",
        "ml-dtypes",
        "cupy-cuda13x",
        "cupy-cuda12x",
        "cuda-bindings",
        "nvidia-cuda-nvrtc",
        "nvidia-cuda-runtime",
        "cuda-pathfinder",
    )
    print("packages: " + ", ".join(f"{p} {_version(p)}" for p in packages))
    gxx, gxx_note = check.gxx_works()
    gpu, gpu_note = check.cuda_device()
    print("backends:")
    print("  cpu       yes (Numba)")
    print(f"  emulated  {'yes' if gxx else 'no '} ({gxx_note})")
    print(f"  cuda      {'yes' if gpu else 'no '} ({gpu_note})")
    print(f"GPU: {gpu_note if gpu else 'none'}")
    print(f"dtypes: NumPy float16, bfloat16 (ml_dtypes), float32, float64; CuPy: {check.cupy_dtypes()}")
    from cudcn.backends.cuda.toolkit import describe_headers

    found, where = describe_headers()
    print(f"CUDA headers: {'yes' if found else 'no'} — {where}")
    ok, note = check.nvrtc_compiles()
    print(f"kernels compile with NVRTC: {'yes' if ok else 'no'} — {note}")
    return 0


def cmd_check(backends: Sequence[str] | None) -> int:
    from cudcn import check

    available = {b.name: b for b in check.available_backends()}
    wanted = list(dict.fromkeys(backends)) if backends else list(available)
    missing = [b for b in wanted if b not in available]
    if missing:
        print(
            f"cudcn check: backend {', '.join(missing)} not available here "
            f"(available: {', '.join(available)}; see 'cudcn info')",
            file=sys.stderr,
        )
        return 1
    print(
        f"checking {len(check.CHECKS)} ops on {', '.join(wanted)} (first use compiles kernels);"
        f" errors are max |got - reference| over the allowed {check.TOLERANCE_FACTOR:g} eps(dtype)"
        " max(1, max |reference|), <= 1 passes"
    )
    failed = 0
    for name in wanted:
        for op in check.CHECKS:
            r = check.check_one(op, available[name])
            failed += not r.passed
            verdict = "ok  " if r.passed else "FAIL"
            print(f"  {verdict} {r.op:<18} {r.backend:<9} {r.detail} ({r.seconds:.1f} s)", flush=True)
    print(f"{failed} failure(s)" if failed else "all checks passed")
    return 1 if failed else 0


def cmd_bench(quick: bool) -> int:
    from cudcn import bench

    bench.main(quick=quick)
    return 0


def _demo_settings(part: str, args: argparse.Namespace) -> Any:
    """The settings of one demo part from the command line: its QUICK or default settings, with
    --seeds, --epochs (conv, layers) and, for a named roi, --all (every variant) applied."""
    import dataclasses

    from cudcn import demo
    from cudcn.demo import background, layers, roi, roi_experiments

    if part == "layers":
        chosen = layers.QUICK if args.quick else layers.Settings()
        chosen = chosen.with_seeds(args.seeds) if args.seeds is not None else chosen
        if args.epochs is not None:
            t = chosen.training
            t = dataclasses.replace(t, steps_scratch=args.epochs * (t.n_train // t.batch_size))
            chosen = dataclasses.replace(chosen, training=t)
        return chosen
    module = {"conv": demo, "background": background, "roi": roi}[part]
    settings = module.QUICK if args.quick else module.Settings()
    if args.seeds is not None:
        settings = dataclasses.replace(settings, seeds=args.seeds)
    if part == "conv" and args.epochs is not None:
        settings = dataclasses.replace(
            settings, steps_scratch=args.epochs * (settings.n_train // settings.batch_size)
        )
    if part == "roi" and args.all and args.which == "roi":
        extra = tuple(v for v in roi_experiments.EXTRA if v not in settings.variants)
        settings = dataclasses.replace(settings, variants=(*settings.variants, *extra))
    return settings


def cmd_demo(args: argparse.Namespace) -> int:
    from cudcn import demo
    from cudcn.demo import background, layers, roi

    runners: dict[str, Callable[..., object]] = {
        "conv": demo.run,
        "layers": layers.run,
        "background": background.run,
        "roi": roi.run,
    }
    parts = DEMO_PARTS if args.all and args.which is None else (args.which or "conv",)
    for k, part in enumerate(parts):
        if k:
            print()
        runners[part](_demo_settings(part, args), out=args.out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cudcn`` command with ``argv`` (default: the process's arguments); returns the exit
    code."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            prog = f"cudcn {args.command}"
            raise UsageError(f"{prog}: unrecognized arguments: {' '.join(extra)} (see '{prog} --help')")
        if args.command == "demo" and args.which in ("roi", "background") and args.epochs:
            raise UsageError(
                f"cudcn demo: --epochs applies to conv and layers, not to {args.which}"
                " (see 'cudcn demo --help')"
            )
        if args.command == "demo" and args.all and args.which not in (None, "roi"):
            raise UsageError(
                f"cudcn demo: --all with a part applies to roi only, not to {args.which}; without a part it"
                " runs every part (see 'cudcn demo --help')"
            )
        if args.command == "demo":  # the only subcommand that writes files: check before any work
            try:
                require_folder(args.out, "--out")
            except ValueError as exc:
                raise UsageError(f"cudcn demo: {exc}") from None
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        if args.command == "info":
            return cmd_info()
        if args.command == "check":
            return cmd_check(args.backend)
        if args.command == "bench":
            return cmd_bench(args.quick)
        return cmd_demo(args)
    except ImportError as exc:  # an optional dependency (mlxtend, matplotlib) is missing
        print(f"cudcn {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cudcn {args.command}: interrupted", file=sys.stderr)
        return 130

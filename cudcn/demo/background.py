"""``cudcn demo background``: where do deformable layers sample on background, next to on objects?

The paper (Dai et al. 2017, Table 2 and Fig. 5, a segmentation setting) finds the receptive field of
deformable layers on background between those on medium and on large objects. Here a small fully
convolutional segmenter labels each unit of a 12 x 12 map (stride 4) of the RoI demo's 48 x 48 canvases
with its digit's class or background, and the conv demo's sampling radius (:mod:`cudcn.demo.radius`:
the mean distance of the 81 composite sampling points of the two stacked deformable layers from the
unit) is measured at every unit of the test canvases: on background units and on digit units binned
by digit size.

The segmenter is the conv demo's trunk (:func:`cudcn.demo.models.trunk`) with its two layers at stride
4 swapped for ``DeformConv2dPack`` and a 1 x 1 convolution to 11 scores (10 digits, background). A
unit belongs to a digit when its centre (image pixel ``4 p + 1.5``) lies inside the digit's tight box;
clutter fragments are background. Trained as the conv demo (Adam, cosine decay, cross-entropy over
every unit). Seed s draws the weights from ``default_rng([s, 10])`` and the batches from
``default_rng([s, 1])``; the canvases never depend on s.

Example::

    from cudcn.demo.background import QUICK, run
    run(QUICK, out="demo_out")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from cudcn import nn
from cudcn.demo import models, roi_data
from cudcn.demo.data import Zoomed
from cudcn.demo.radius import ORIGIN, STRIDE, predict_with_offsets, unit_radius
from cudcn.demo.runlog import PartResult, RunLog
from cudcn.demo.train import Device, Schedule, batches, train
from cudcn.files import require_folder

MAP = roi_data.CANVAS // 4  # 12 x 12 units
BACKGROUND = 10
REGIONS = ("small digits", "medium digits", "large digits", "background")


@dataclass(frozen=True)
class Settings:
    """Every setting of the background demo, fixed by the time budget; the optimiser is the conv
    demo's. None was chosen by looking at the test canvases."""

    seeds: int = 3
    n_train: int = 3000  # the RoI demo's first training canvases
    n_eval: int = 500  # its first test canvases
    batch_size: int = 16  # canvases per step
    steps: int = 600
    lr: float = 3e-3  # Adam, cosine decay to 0


QUICK = Settings(seeds=1, n_train=64, n_eval=24, steps=8)  # a smoke run for CI


class PixelRows(nn.Module):
    """(B, C, H, W) scores -> (B * H * W, C): one row per map position, for cross-entropy."""

    def forward(self, x: Any) -> Any:
        return x.transpose(0, 2, 3, 1).reshape(-1, x.shape[1])


def segmenter(rng: np.random.Generator) -> nn.Sequential:
    """The segmenter: (B, 1, 48, 48) canvases -> (B * 144, 11) unit scores, row-major per canvas."""
    plain = nn.Sequential(
        *models.trunk(models.C, rng), nn.Conv2d(models.C, BACKGROUND + 1, 1, rng=rng), PixelRows()
    )
    return models.swap_deformable(plain, models.DEFORM_LAYERS)


def unit_targets(canvases: roi_data.Canvases) -> tuple[np.ndarray, np.ndarray]:
    """Per canvas and unit (N, 12, 12): the class (a digit, or ``BACKGROUND``) and the digit's slot
    in the canvas (-1 on background)."""
    centre = STRIDE * np.arange(MAP) + ORIGIN
    b = canvases.boxes[:, :, None, None, :]  # (N, 3, 1, 1, 4)
    cy, cx = centre[None, None, :, None], centre[None, None, None, :]
    inside = (b[..., 0] <= cx) & (cx < b[..., 2]) & (b[..., 1] <= cy) & (cy < b[..., 3])
    inside &= (canvases.labels >= 0)[:, :, None, None]
    slot = np.where(inside.any(axis=1), inside.argmax(axis=1), -1)
    label = np.take_along_axis(canvases.labels, np.maximum(slot, 0).reshape(len(canvases), -1), axis=1)
    return np.where(slot >= 0, label.reshape(slot.shape), BACKGROUND), slot


@dataclass
class Context:
    """The canvases, their unit targets, and each test digit's size bin (0 small, 1 medium,
    2 large: terciles of the test digits' sizes ``sqrt(w h)``, whose edges are ``edges``)."""

    settings: Settings
    device: Device
    train: roi_data.Canvases
    eval: roi_data.Canvases
    train_targets: np.ndarray
    eval_targets: np.ndarray
    eval_slot: np.ndarray
    size_bin: np.ndarray  # (N, 3)
    edges: np.ndarray
    keep: dict[str, nn.Sequential] = field(default_factory=dict)


def make_context(s: Settings, device: Device) -> Context:
    """The RoI demo's canvases (its first ``n_train`` training and ``n_eval`` test canvases)."""
    train_c = roi_data.make_canvases("train", s.n_train, seed=1)
    eval_c = roi_data.make_canvases("test", s.n_eval, seed=2)
    train_targets, _ = unit_targets(train_c)
    eval_targets, slot = unit_targets(eval_c)
    size = np.sqrt(np.prod(eval_c.boxes[..., 2:] - eval_c.boxes[..., :2], axis=-1))
    edges = np.quantile(size[eval_c.labels >= 0], [1 / 3, 2 / 3])
    size_bin = np.where(eval_c.labels >= 0, np.digitize(size, edges), -1)
    return Context(s, device, train_c, eval_c, train_targets, eval_targets, slot, size_bin, edges)


@dataclass
class Run:
    """One trained segmenter on the test canvases: loss curve, predicted class and sampling radius
    of every unit (N, 12, 12)."""

    seed: int
    losses: list[float]
    predicted: np.ndarray
    radius: np.ndarray


def _as_batch(images: np.ndarray, targets: np.ndarray, rng: np.random.Generator) -> Zoomed:
    """Canvases as they are, their unit targets flattened to match the segmenter's rows."""
    n = images.shape[0]
    return Zoomed(images, targets.reshape(-1), np.ones((n, 2)), np.zeros((n, 2)))


def radius_map(offsets: list[np.ndarray], chunk: int = 32) -> np.ndarray:
    """The sampling radius (N, H, W) of every unit of every canvas, ``chunk`` canvases at a time."""
    n, _, h, w = offsets[0].shape
    grid = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), axis=-1).reshape(-1, 2)
    out = np.zeros((n, h * w))
    for lo in range(0, n, chunk):
        part = [o[lo : lo + chunk] for o in offsets]
        k = part[0].shape[0]
        images = np.repeat(np.arange(k), h * w)
        out[lo : lo + k] = unit_radius(part, np.tile(grid, (k, 1)).astype(float), images).reshape(k, -1)
    return out.reshape(n, h, w)


def run_all(ctx: Context) -> list[Run]:
    """Train and score one segmenter per seed."""
    s, device = ctx.settings, ctx.device
    runs = []
    for seed in range(s.seeds):
        net = segmenter(np.random.default_rng([seed, 10]))
        if device.name == "cuda":
            net.to("cuda")
        rng = np.random.default_rng([seed, 1])
        feed = batches(ctx.train.images, ctx.train_targets, s.batch_size, s.steps, rng, _as_batch)
        losses = train(
            net, list(net.parameters()), Schedule(s.steps, s.lr, s.batch_size), feed, device, f"seed {seed}"
        )
        pred, offsets = predict_with_offsets(net, ctx.eval.images, device, batch=100)
        runs.append(Run(seed, losses, pred.reshape(ctx.eval_targets.shape), radius_map(offsets)))
        if seed == 0:
            ctx.keep["net"] = net
    return runs


def regions(ctx: Context) -> list[np.ndarray]:
    """Masks (N, 12, 12) of the units of ``REGIONS``: digit units by their digit's size bin, then
    background."""
    n = np.arange(len(ctx.eval))[:, None, None]
    bin_of_unit = np.where(ctx.eval_slot >= 0, ctx.size_bin[n, np.maximum(ctx.eval_slot, 0)], -1)
    return [bin_of_unit == b for b in range(3)] + [ctx.eval_slot < 0]


def scores(ctx: Context, run: Run) -> dict[str, float]:
    """Unit accuracy, digit-unit accuracy and mean IoU over the 11 classes, in %."""
    t, p = ctx.eval_targets, run.predicted
    iou = []
    for c in range(BACKGROUND + 1):
        union = ((t == c) | (p == c)).sum()
        if union:
            iou.append(((t == c) & (p == c)).sum() / union)
    return {
        "unit accuracy": 100 * (t == p).mean(),
        "digit-unit accuracy": 100 * (t == p)[t != BACKGROUND].mean(),
        "mean IoU": 100 * float(np.mean(iou)),
    }


def run(
    settings: Settings | None = None, out: str | Path = "cudcn_demo_out", stream: TextIO | None = None
) -> PartResult:
    """Train the segmenter under every seed, print the radius table and the claims to ``stream``
    (stdout) and write the pictures into ``out``."""
    from cudcn.demo import background_report
    from cudcn.demo.train import pick_device

    out = require_folder(out, "out")
    s = settings if settings is not None else Settings()
    log = RunLog(stream)
    device = pick_device()
    log.say(f"cudcn demo background: running on the {device.description}")
    log.say(
        f"settings: {s.seeds} seed(s); {s.n_train} training / {s.n_eval} test canvases, {s.steps} steps"
        f" of {s.batch_size} canvases, Adam lr {s.lr:g} with cosine decay"
    )
    if s.steps < Settings().steps:
        log.say("(a smoke run: far fewer steps than the demo's protocol, its numbers mean nothing)")
    ctx = make_context(s, device)
    log.lap("data")
    runs = run_all(ctx)
    log.lap("training and scoring")
    lines = [*background_report.tables(ctx, runs), "", *background_report.claims(ctx, runs)]
    log.block(lines)
    pictures = background_report.draw_all(ctx, runs, out)
    log.lap("pictures")
    log.wrote(pictures)
    return PartResult(runs, lines, pictures, log.finish())

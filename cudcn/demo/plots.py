"""The demo's pictures, drawn with matplotlib's object API (no pyplot, no global backend switch) and
saved as PNG files.

* ``training_curves.png`` — training loss per step, mean over seeds, for (A) and (B);
* ``accuracy_vs_scale.png`` — centred-sweep accuracy against scale for the three models of (A);
* ``sampling_locations.png`` — the 81 composite sampling points of the stacked deformable layers for the
  centre output unit, on one digit at three scales (the paper's Figure 5 style);
* ``radius_vs_scale.png`` — sampling radius against scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cudcn.demo.experiments import FINETUNES, MODEL_NAMES, Context, Run
from cudcn.demo.radius import composite_points, predict_with_offsets, regular_radius
from cudcn.files import atomic_write

COLOURS = {"plain": "tab:blue", "wide": "tab:orange", "deform": "tab:red"}


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("the demo's pictures need matplotlib: pip install 'cudcn[examples]'") from exc
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` to ``path`` atomically (:func:`cudcn.files.atomic_write`): Ctrl-C or an error
    mid-write keeps the picture that was there. The format comes from the suffix (PNG without one)."""
    with atomic_write(path) as file:
        fig.savefig(file, format=Path(path).suffix[1:].lower() or "png")
    return path


def _smooth(values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Moving average over ``window`` steps, with the step number that ends each window."""
    window = max(1, min(window, values.size))
    return np.arange(window, values.size + 1), np.convolve(values, np.ones(window) / window, "valid")


def _mean_curve(runs: list[Run], name: str) -> np.ndarray:
    return np.mean([r.losses for r in runs if r.name == name], axis=0)


def training_curves(runs_a: list[Run], runs_b: list[Run], path: Path) -> Path:
    fig = _figure(10, 3.6)
    ax_a, ax_b = fig.subplots(1, 2)
    window = max(1, len(runs_a[0].losses) // 12)
    for kind, name in MODEL_NAMES.items():
        ax_a.plot(*_smooth(_mean_curve(runs_a, name), window), color=COLOURS[kind], label=name)
    ax_a.set(title="(A) from scratch on zoomed digits", xlabel="step", ylabel="training loss")
    fig.suptitle(f"training loss, mean over seeds, {window}-step moving average", fontsize=9)
    for name, colour in zip(FINETUNES.values(), ("tab:green", "tab:red", "tab:gray"), strict=True):
        ax_b.plot(*_smooth(_mean_curve(runs_b, name), window), color=colour, label=name)
    ax_b.set(title="(B) fine-tuning on zoomed digits", xlabel="step", ylabel="training loss")
    for ax in (ax_a, ax_b):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def accuracy_vs_scale(ctx: Context, runs_a: list[Run], path: Path) -> Path:
    fig = _figure(5.5, 4)
    ax = fig.subplots()
    scales = np.asarray(ctx.settings.sweep_scales)
    for kind, name in MODEL_NAMES.items():
        acc = 100 * np.array([r.sweep for r in runs_a if r.name == name])
        ax.plot(scales, acc.mean(axis=0), "o-", color=COLOURS[kind], label=name)
        ax.fill_between(scales, acc.min(axis=0), acc.max(axis=0), color=COLOURS[kind], alpha=0.15)
    ax.set(
        xlabel="digit scale (centred)",
        ylabel="test accuracy % (band: min-max over seeds)",
        title="(A) accuracy against digit scale",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def sampling_locations(ctx: Context, path: Path, digit: int = 0) -> Path:
    """Composite sampling points of the first seed's deformable net of (A) for the centre unit."""
    net = ctx.keep["deform"]
    picks = sorted({0, len(ctx.sweep) // 2, len(ctx.sweep) - 1})
    images = np.concatenate([ctx.sweep[i].images[digit : digit + 1] for i in picks])
    _, offsets = predict_with_offsets(net, images, ctx.device)
    centre = np.full((len(picks), 2), 3.0)
    pts = composite_points(offsets, centre)
    grid = composite_points([np.zeros_like(o) for o in offsets], centre)
    fig = _figure(3.2 * len(picks), 3.6)
    for ax, img, p, i in zip(np.atleast_1d(fig.subplots(1, len(picks))), images, pts, picks, strict=True):
        ax.imshow(img[0], cmap="gray", extent=(-0.5, 27.5, 27.5, -0.5))
        ax.scatter(grid[0, :, 1], grid[0, :, 0], s=6, marker="+", color="tab:cyan", alpha=0.6)
        ax.scatter(p[:, 1], p[:, 0], s=9, color="tab:red")
        ax.scatter([13.5], [13.5], s=40, color="lime", marker="s")
        ax.set(
            xlim=(-4.5, 31.5),
            ylim=(31.5, -4.5),
            xticks=[],
            yticks=[],
            title=f"scale {ctx.settings.sweep_scales[i]:.2f}",
        )
    fig.suptitle(
        "composite sampling points of the 2 stacked deformable layers for the centre output"
        " unit (green): learned (red), regular grid (cyan)",
        fontsize=9,
    )
    return save_figure(fig, path)


def radius_vs_scale(ctx: Context, runs_a: list[Run], path: Path) -> Path:
    fig = _figure(5.5, 4)
    ax = fig.subplots()
    deform = [r for r in runs_a if r.name == MODEL_NAMES["deform"]]
    ax.scatter(
        ctx.test.scale.mean(axis=1),
        deform[0].radius_test,
        s=3,
        alpha=0.25,
        color="tab:gray",
        label="zoomed test digits (seed 0)",
    )
    scales = np.asarray(ctx.settings.sweep_scales)
    for r in deform:
        assert r.radius_sweep is not None  # measured for every deformable run
        ax.plot(
            scales,
            r.radius_sweep.mean(axis=1),
            "o-",
            color="tab:red",
            alpha=0.8,
            label="centred sweep, mean" if r.seed == 0 else None,
        )
    ax.axhline(regular_radius(), color="tab:cyan", ls="--", label="zero offsets")
    ax.set(
        xlabel="digit scale (mean of the two axis factors)",
        ylabel="sampling radius (px)",
        title="(A) sampling radius of the deformable layers",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def draw_all(ctx: Context, runs_a: list[Run], runs_b: list[Run], out: Path) -> list[Path]:
    """Every picture into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    return [
        training_curves(runs_a, runs_b, out / "training_curves.png"),
        accuracy_vs_scale(ctx, runs_a, out / "accuracy_vs_scale.png"),
        sampling_locations(ctx, out / "sampling_locations.png"),
        radius_vs_scale(ctx, runs_a, out / "radius_vs_scale.png"),
    ]

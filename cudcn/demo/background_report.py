"""The background demo's tables, claims and pictures.

* ``background_sampling.png`` — one test canvas: the composite sampling points of a background unit,
  of the centre unit of its smallest digit and of its largest digit (the paper's Fig. 5 style), and
  the predicted unit classes;
* ``background_radius.png`` — the mean sampling radius per region (digit size bin, background), one
  dot per seed.

Radii are in image pixels, "mean ± sd (min-max)" over seeds of each seed's mean over the region's
units. A claim is "shown" only when every seed shows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cudcn.demo.background import BACKGROUND, REGIONS, Context, Run, regions, scores
from cudcn.demo.plots import _figure, save_figure
from cudcn.demo.radius import ORIGIN, STRIDE, composite_points, predict_with_offsets, regular_radius
from cudcn.demo.report import claim, claim_block, spread
from cudcn.demo.roi_data import CANVAS
from cudcn.demo.roi_plots import canvas_extent


def region_radius(ctx: Context, runs: list[Run]) -> np.ndarray:
    """Mean radius (seeds, regions) over each region's units."""
    masks = regions(ctx)
    return np.array([[r.radius[m].mean() for m in masks] for r in sorted(runs, key=lambda r: r.seed)])


def tables(ctx: Context, runs: list[Run]) -> list[str]:
    """Segmentation quality and the radius per region."""
    s = ctx.settings
    out = [
        f"background — segmenter with 2 deformable layers at stride 4 on {len(ctx.eval)} test canvases"
        f" ({s.steps} steps of {s.batch_size} canvases, {s.seeds} seed(s)); % and px, mean ± sd (min-max)"
        " over seeds",
    ]
    per_run = [scores(ctx, r) for r in runs]
    for key in per_run[0]:
        out.append(f"  {key + ' %':<26}{spread([p[key] for p in per_run])}")
    masks = regions(ctx)
    radius = region_radius(ctx, runs)
    lo, hi = ctx.edges
    sizes = (f"size < {lo:.1f} px", f"{lo:.1f}-{hi:.1f} px", f"size >= {hi:.1f} px", "outside every box")
    out += [
        "",
        "  sampling radius (mean distance of the 81 composite sampling points of the 2 deformable layers"
        f" from the unit, px; zero offsets give {regular_radius():.2f})",
        "  digit size = sqrt(w h) of its tight box; bins: terciles of the test digits",
        f"  {'region':<16}{'units':>7}  {'digit size':<19}{'radius px':<26}{'per seed':<22}sd over units",
    ]
    for k, name in enumerate(REGIONS):
        sd = np.mean([r.radius[masks[k]].std() for r in runs])
        cells = f"{spread(radius[:, k], 2):<26}{_seeds(radius[:, k]):<22}{sd:.2f}"
        out.append(f"  {name:<16}{int(masks[k].sum()):>7,}  {sizes[k]:<19}{cells}")
    return out


def _seeds(values: np.ndarray) -> str:
    return " ".join(f"{v:.2f}" for v in values)


def claims(ctx: Context, runs: list[Run]) -> list[str]:
    """The paper's Table 2 claim, and the conv demo's (radius grows with object size)."""
    small, medium, large, background = region_radius(ctx, runs).T
    out = []
    ok = bool(((medium < background) & (background < large)).all())
    measured = f"medium {_seeds(medium)}; background {_seeds(background)}; large {_seeds(large)}"
    out.append(claim(ok, "the radius on background lies between those on medium and large digits", measured))
    ok = bool(((small < medium) & (medium < large)).all())
    measured = f"small {_seeds(small)}; medium {_seeds(medium)}; large {_seeds(large)}"
    out.append(claim(ok, "the radius grows with digit size (small < medium < large)", measured))
    return claim_block(len(runs), out)


def _pick(ctx: Context) -> int:
    """The test canvas (among the first 100) whose digits differ most in size."""
    size = np.sqrt(np.prod(ctx.eval.boxes[..., 2:] - ctx.eval.boxes[..., :2], axis=-1))
    size = np.where(ctx.eval.labels >= 0, size, np.nan)
    spread_ = np.nan_to_num(np.nanmax(size, axis=1) - np.nanmin(size, axis=1))
    return int(np.argmax(spread_[:100]))


def sampling(ctx: Context, runs: list[Run], path: Path) -> Path:
    """One canvas: composite points of a background unit, the smallest and the largest digit."""
    i = _pick(ctx)
    boxes = ctx.eval.boxes[i][ctx.eval.labels[i] >= 0]
    size = np.sqrt(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1))
    centre = lambda b: np.rint(((b[[1, 0]] + b[[3, 2]]) / 2 - ORIGIN) / STRIDE)  # noqa: E731
    background = np.argwhere(ctx.eval_slot[i] < 0)
    units_px = STRIDE * background + ORIGIN
    gap = np.min([np.abs(units_px - ((b[[1, 0]] + b[[3, 2]]) / 2)).max(axis=1) for b in boxes], axis=0)
    units = np.array([background[np.argmax(gap)], centre(boxes[size.argmin()]), centre(boxes[size.argmax()])])
    _, offsets = predict_with_offsets(ctx.keep["net"], ctx.eval.images[i : i + 1], ctx.device)
    pts = composite_points(offsets, units, np.zeros(3, np.int64))
    first = next(r for r in runs if r.seed == 0)
    fig = _figure(13, 3.7)
    axes = fig.subplots(1, 4)
    titles = ("background unit", "smallest digit", "largest digit")
    lo, hi = -6.5, CANVAS + 5.5  # room for sampling points outside the canvas
    view = {"xlim": (lo, hi), "ylim": (hi, lo), "xticks": [], "yticks": []}
    for ax, p, u, title in zip(axes[:3], pts, units, titles, strict=True):
        ax.imshow(ctx.eval.images[i, 0], cmap="gray", extent=canvas_extent())
        for b in boxes:
            ax.add_patch(_rectangle(b, "tab:cyan"))
        ax.scatter(p[:, 1], p[:, 0], s=8, color="tab:red")
        ax.scatter([STRIDE * u[1] + ORIGIN], [STRIDE * u[0] + ORIGIN], s=40, color="lime", marker="s")
        radius = first.radius[i, int(u[0]), int(u[1])]
        ax.set(**view, title=f"{title}: radius {radius:.1f} px")
    digits = np.ma.masked_equal(first.predicted[i], BACKGROUND)
    axes[3].imshow(ctx.eval.images[i, 0], cmap="gray", extent=canvas_extent())
    axes[3].imshow(digits, cmap="tab10", vmin=0, vmax=9, alpha=0.6, extent=canvas_extent())
    for b in boxes:
        axes[3].add_patch(_rectangle(b, "white"))
    axes[3].set(**view, title="predicted digit units (colour: class)")
    fig.suptitle(
        "composite sampling points of the 2 deformable layers (red) for one unit (green), first seed;"
        " digits' boxes in cyan (other strokes are clutter: background)",
        fontsize=9,
    )
    return save_figure(fig, path)


def _rectangle(box: np.ndarray, colour: str) -> Any:
    from matplotlib.patches import Rectangle

    w, h = box[2] - box[0], box[3] - box[1]
    return Rectangle((box[0] - 0.5, box[1] - 0.5), w, h, fill=False, ec=colour, lw=1.0)


def radius_chart(ctx: Context, runs: list[Run], path: Path) -> Path:
    fig = _figure(5.5, 4)
    ax = fig.subplots()
    radius = region_radius(ctx, runs)
    x = np.arange(len(REGIONS))
    ax.bar(x, radius.mean(axis=0), color=["tab:blue", "tab:orange", "tab:red", "tab:gray"], alpha=0.6)
    for row in radius:
        ax.scatter(x, row, color="k", s=10, zorder=3)
    ax.axhline(regular_radius(), color="tab:cyan", ls="--", label="zero offsets")
    ax.set_xticks(x, REGIONS, fontsize=8)
    ax.set(ylabel="mean sampling radius (px)", title="radius by region (bars: mean, dots: seeds)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)


def draw_all(ctx: Context, runs: list[Run], out: Path) -> list[Path]:
    """Every picture into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    return [
        sampling(ctx, runs, out / "background_sampling.png"),
        radius_chart(ctx, runs, out / "background_radius.png"),
    ]

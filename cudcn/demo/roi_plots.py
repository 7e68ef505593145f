"""The RoI demo's pictures (matplotlib's object API, PNG files), in the conv demo's style.

* ``roi_gain_by_bin.png`` — per proposal-IoU bin, AP90 and mean refined IoU minus RoIAlign's, for the
  deformable head and the controls (mean over seeds, min-max band);
* ``roi_deformed_bins.png`` — the paper's Fig. 7 style: test digits with a misaligned proposal, zoomed,
  the 7 x 7 bins as cells (regular: RoIAlign; shifted by the learned offsets: deformable), each
  head's refined box and the ground truth;
* ``roi_shift_vs_displacement.png`` — the learned mean bin shift of each RoI against the
  proposal-to-object displacement, per axis (first seed);
* ``roi_additivity.png`` — AP50:95 and mean refined IoU of the 2 x 2 backbone x pooling variants, one
  dot per seed;
* ``roi_training_loss.png`` — every variant's training loss, mean over seeds (has it flattened?).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import cudcn
from cudcn.demo.plots import _figure, _smooth, save_figure
from cudcn.demo.roi_data import CANVAS, IOU_BINS
from cudcn.demo.roi_experiments import Context, Run
from cudcn.demo.roi_models import POOLED
from cudcn.demo.roi_report import ADDITIVE, BASE, bin_label, gains, values

COLOURS = {
    "roialign": "tab:gray",
    "deform": "tab:red",
    "modulated": "tab:purple",
    "wide": "tab:orange",
    "context": "tab:green",
    "dcn-roialign": "tab:blue",
    "dcn-deform": "tab:brown",
    "rfcn": "tab:olive",
    "rfcn-deform": "tab:pink",
}


def canvas_extent() -> tuple[float, float, float, float]:
    """imshow's extent for a canvas: pixel centres at integers."""
    edge = CANVAS - 0.5
    return (-0.5, edge, edge, -0.5)


def gain_by_bin(ctx: Context, runs: list[Run], path: Path) -> Path:
    fig = _figure(10, 3.8)
    x = np.arange(len(IOU_BINS))
    for ax, key, title in zip(
        fig.subplots(1, 2), ("AP90", "IoU"), ("AP90 gain", "mean refined IoU gain"), strict=True
    ):
        for v in (v for v in ctx.settings.variants if BASE.get(v) in ctx.settings.variants):
            g = np.array([gains(runs, v, f"{b} {key}") for b in x])  # (bins, seeds)
            ax.plot(x, g.mean(axis=1), "o-", color=COLOURS[v], label=f"{v} − {BASE[v]}")
            ax.fill_between(x, g.min(axis=1), g.max(axis=1), color=COLOURS[v], alpha=0.15)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(x, [bin_label(b) for b in x])
        ax.set(xlabel="proposal IoU with its digit", ylabel="points over the base variant", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        "gain over the base variant by proposal quality (mean over seeds, band: min-max)", fontsize=9
    )
    return save_figure(fig, path)


def _cells(ax, box: np.ndarray, shift: np.ndarray | None, colour: str) -> None:
    """The 7 x 7 bins of ``box`` (x1, y1, x2, y2) as rectangles, each moved by ``shift`` (2, 7, 7)
    canvas pixels (x, y) when given."""
    from matplotlib.patches import Rectangle

    w, h = (box[2] - box[0]) / POOLED, (box[3] - box[1]) / POOLED
    for i in range(POOLED):
        for j in range(POOLED):
            dx, dy = (shift[0, i, j], shift[1, i, j]) if shift is not None else (0.0, 0.0)
            ax.add_patch(
                Rectangle(
                    (box[0] + j * w + dx - 0.5, box[1] + i * h + dy - 0.5),
                    w,
                    h,
                    fill=False,
                    lw=0.6,
                    ec=colour,
                    alpha=0.9,
                )
            )


def _box(ax, box: np.ndarray, colour: str, style: str, label: str) -> None:
    from matplotlib.patches import Rectangle

    ax.add_patch(
        Rectangle(
            (box[0] - 0.5, box[1] - 0.5),
            box[2] - box[0],
            box[3] - box[1],
            fill=False,
            lw=1.6,
            ec=colour,
            ls=style,
            label=label,
        )
    )


def deformed_bins(ctx: Context, runs: list[Run], path: Path, count: int = 4) -> Path:
    """First seed: proposals of IoU 0.5-0.6 whose digit is farthest from their centre."""
    p = ctx.proposals
    first = {r.variant: r for r in runs if r.seed == 0}
    sel = np.flatnonzero(p.bin == 1)
    centre = lambda b: (b[:, :2] + b[:, 2:]) / 2  # noqa: E731
    dist = np.linalg.norm(centre(p.gt[sel]) - centre(p.rois[sel, 1:].astype(float)), axis=1)
    picks = sel[np.argsort(-dist)][: count * 5 : 5]  # far-off ones, not all from one canvas
    net = ctx.keep["deform"]
    with cudcn.no_grad():
        canvas = p.rois[picks, 0].astype(np.int64)
        rois = p.rois[picks].copy()
        rois[:, 0] = np.arange(picks.size)
        shifts = ctx.device.get(
            net.bin_shifts(ctx.device.put(ctx.eval.images[canvas]), ctx.device.put(rois))
        ).astype(float)
    fig = _figure(2.6 * picks.size, 5.6)
    axes = np.array(fig.subplots(2, picks.size)).reshape(2, -1)
    for k, r in enumerate(picks):
        prop = p.rois[r, 1:].astype(float)
        shift = shifts[k]
        lo = np.minimum(prop[:2], p.gt[r, :2]) - 4
        hi = np.maximum(prop[2:], p.gt[r, 2:]) + 4
        for row, (variant, cells) in enumerate((("roialign", None), ("deform", shift))):
            ax = axes[row, k]
            ax.imshow(ctx.eval.images[canvas[k], 0], cmap="gray", extent=canvas_extent())
            _cells(ax, prop, cells, "tab:cyan" if cells is None else "tab:red")
            _box(ax, p.gt[r], "lime", "-", "ground truth")
            _box(ax, first[variant].refined[r], "yellow", "--", "refined box")
            ax.set(xlim=(lo[0], hi[0]), ylim=(hi[1], lo[1]), xticks=[], yticks=[])
            ax.set_title(
                f"{'RoIAlign' if cells is None else 'deformable'}: refined IoU"
                f" {first[variant].refined_iou[r]:.2f}",
                fontsize=8,
            )
    axes[0, 0].legend(fontsize=6, loc="lower left")
    fig.suptitle(
        "proposals of IoU 0.5-0.6: the 7x7 bins as cells, regular (top, RoIAlign) and moved"
        " by the learned offsets (bottom); refined boxes dashed, ground truth green",
        fontsize=8,
    )
    return save_figure(fig, path)


def shift_vs_displacement(ctx: Context, runs: list[Run], path: Path) -> Path:
    p = ctx.proposals
    run = next(r for r in runs if r.variant == "deform" and r.seed == 0)
    shift = run.shift
    assert shift is not None  # measured for every deformable variant
    fg = p.digit >= 0
    disp = (p.gt[fg, :2] + p.gt[fg, 2:] - p.rois[fg, 1:3] - p.rois[fg, 3:5]) / 2
    fig = _figure(9, 4)
    for axis, ax in enumerate(fig.subplots(1, 2)):
        name = "xy"[axis]
        ax.scatter(disp[:, axis], shift[fg, axis], s=2, alpha=0.15, color="tab:red")
        ax.axhline(0, color="k", lw=0.6)
        ax.axvline(0, color="k", lw=0.6)
        ax.set(
            xlabel=f"object centre − proposal centre, {name} (px)",
            ylabel=f"mean bin shift, {name} (px)",
            title=f"{name}: r = {run.scores[f'r_{name}']:+.2f}",
        )
        ax.grid(alpha=0.3)
    fig.suptitle("deformable head, first seed: each RoI made from a digit", fontsize=9)
    return save_figure(fig, path)


ADDITIVE_LABELS = (
    "plain bb.\nRoIAlign",
    "plain bb.\ndeform. pool",
    "deform. bb.\nRoIAlign",
    "deform. bb.\ndeform. pool",
)


def additivity(runs: list[Run], path: Path) -> Path:
    fig = _figure(9, 3.6)
    cells = [v for row in ADDITIVE for v in row]
    x = np.arange(len(cells))
    for ax, key in zip(fig.subplots(1, 2), ("AP50:95", "mean IoU"), strict=True):
        v = np.array([values(runs, c, key) for c in cells])  # (cells, seeds)
        ax.bar(x, v.mean(axis=1), color=[COLOURS[c] for c in cells], alpha=0.6)
        for seed in range(v.shape[1]):
            ax.scatter(x, v[:, seed], color="k", s=10, zorder=3)
        ax.set_ylim(v.min() - 2, v.max() + 1)
        ax.set_xticks(x, ADDITIVE_LABELS, fontsize=8)
        ax.set(ylabel=f"{key} %", title=key)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("additivity: backbone x RoI pooling (bars: mean, dots: seeds)", fontsize=9)
    return save_figure(fig, path)


def training_loss(ctx: Context, runs: list[Run], path: Path) -> Path:
    fig = _figure(6, 4)
    ax = fig.subplots()
    window = max(1, ctx.settings.steps // 20)
    for v in ctx.settings.variants:
        curve = np.mean([r.losses for r in runs if r.variant == v], axis=0)
        ax.plot(*_smooth(curve, window), color=COLOURS[v], label=v)
    ax.set(xlabel="step", ylabel="training loss", yscale="log", title="training loss, mean over seeds")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.suptitle(f"{window}-step moving average", fontsize=8)
    return save_figure(fig, path)


def draw_all(ctx: Context, runs: list[Run], out: Path) -> list[Path]:
    """Every picture the run has variants for into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [gain_by_bin(ctx, runs, out / "roi_gain_by_bin.png")]
    if "deform" in ctx.keep and "roialign" in ctx.keep:
        paths.append(deformed_bins(ctx, runs, out / "roi_deformed_bins.png"))
        paths.append(shift_vs_displacement(ctx, runs, out / "roi_shift_vs_displacement.png"))
    if all(v in ctx.settings.variants for row in ADDITIVE for v in row):
        paths.append(additivity(runs, out / "roi_additivity.png"))
    paths.append(training_loss(ctx, runs, out / "roi_training_loss.png"))
    return paths

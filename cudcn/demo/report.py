"""The demo's printed tables: means over seeds with their spread, and comparisons that say whether a
difference is within the spread.

Spread: "mean ± sd (min-max)" over seeds, sd with ddof=1. A difference of means is called *within the
spread* when the two models' min-max ranges over seeds overlap; with one seed there is no spread. Models
compared under one seed saw the same batches for the same number of steps, so each comparison also
counts the seeds in which the first model is higher.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from cudcn.demo.experiments import FINETUNES, MODEL_NAMES, UNADAPTED, Context, Run
from cudcn.demo.radius import regular_radius

SCALE_BINS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

MATERIAL = 1.0  # points: the demos' claims call a smaller difference no material difference


def spread(values: npt.ArrayLike, digits: int = 1) -> str:
    """``mean ± sd (min-max)``; just the value for one seed."""
    v = np.asarray(values, dtype=float)
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f} ({v.min():.{digits}f}-{v.max():.{digits}f})"


def compare(name_a: str, a: npt.ArrayLike, name_b: str, b: npt.ArrayLike) -> str:
    """``name_a − name_b: +d points``, whether the difference is within the seed spread, and in how
    many seeds ``a`` is higher (``a`` and ``b`` list the same seeds in the same order)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = a.mean() - b.mean()
    if a.size == 1:
        verdict = "one seed: no spread to compare with (use --seeds 3)"
    elif a.min() <= b.max() and b.min() <= a.max():
        verdict = "within the spread over seeds (the ranges overlap)"
    else:
        verdict = "beyond the spread over seeds (the ranges do not overlap)"
    wins = f"; higher in {int((a > b).sum())} of {a.size} seeds" if a.size > 1 else ""
    return f"  {name_a} − {name_b}: {diff:+.1f} points, {verdict}{wins}"


def _by_name(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.name, []).append(r)
    return groups


def _pct(runs: list[Run]) -> list[float]:
    return [100 * r.accuracy for r in runs]


def scale_bin_table(ctx: Context, models: list[list[Run]], headers: list[str]) -> list[str]:
    """Zoomed-test accuracy % of each model (its runs, one per seed) by digit scale bin, mean over
    seeds; one column per model, headed by ``headers``."""
    scale = ctx.test.scale.mean(axis=1)
    bins = np.clip(np.digitize(scale, SCALE_BINS[1:-1]), 0, len(SCALE_BINS) - 2)
    out = [
        "  zoomed test accuracy % by digit scale (mean of the two axis factors), mean over seeds",
        f"  {'scale':<11}{'digits':>7}" + "".join(f"{h:>16}" for h in headers),
    ]
    for b in range(len(SCALE_BINS) - 1):
        sel = bins == b
        cells = [100 * np.mean([r.correct[sel].mean() for r in runs]) for runs in models]
        label = f"{SCALE_BINS[b]:.1f}-{SCALE_BINS[b + 1]:.1f}"
        out.append(f"  {label:<11}{int(sel.sum()):>7}" + "".join(f"{c:>16.1f}" for c in cells))
    return out


def claim_block(seeds: int, lines: list[str]) -> list[str]:
    """A part's claim lines (see :func:`claim`) under their header, and a warning when the run has
    fewer seeds than the demos' protocol (3)."""
    out = [f"claims (each printed only when all {seeds} seed(s) show it):", *lines]
    if seeds < 3:
        out.append(f"  (with {seeds} seed(s) these say little: the demo's protocol uses 3)")
    return out


def per_seed(gains: npt.ArrayLike) -> str:
    """Signed differences in points, one per seed: ``"+0.4 -1.0 +0.7"``."""
    return " ".join(f"{x:+.1f}" for x in np.asarray(gains))


def claim(ok: bool, text: str, measured: str) -> str:
    """One claim line: "shown: text [measured]" or "not shown: text; measured (per seed): ..."."""
    if ok:
        return f"  shown: {text} [{measured}]"
    return f"  not shown: {text}; measured (per seed): {measured}"


def report_a(ctx: Context, runs: list[Run]) -> list[str]:
    """The tables of (A)."""
    s, groups = ctx.settings, _by_name(runs)
    names = [MODEL_NAMES[k] for k in ("plain", "wide", "deform")]
    out = [
        f"(A) scale-adaptive sampling — trained from scratch on zoomed digits, {s.steps_scratch} steps"
        f" of {s.batch_size}, {s.seeds} seed(s)",
        f"    zoomed test set: {ctx.test.labels.size} digits ({ctx.digits.test.shape[0]} test digits x 3"
        " zoomed copies); accuracy % mean ± sd (min-max) over seeds",
        f"  {'model':<22}{'params':>8}  accuracy %",
    ]
    for name in names:
        out.append(f"  {name:<22}{groups[name][0].params:>8,}  {spread(_pct(groups[name]))}")
    out.append(compare(names[2], _pct(groups[names[2]]), names[0], _pct(groups[names[0]])))
    out.append(compare(names[2], _pct(groups[names[2]]), names[1], _pct(groups[names[1]])))
    out += ["", *scale_bin_table(ctx, [groups[n] for n in names], ["plain", "widened", "deformable"])]
    out += [
        "",
        "  centred sweep: every test digit centred at a fixed scale, accuracy %",
        f"  {'scale':<11}" + "".join(f"{n:>26}" for n in ("plain", "widened", "deformable")),
    ]
    sweep = {n: 100 * np.array([r.sweep for r in groups[n]]) for n in names}
    for i, sc in enumerate(s.sweep_scales):
        out.append(f"  {sc:<11.2f}" + "".join(f"{spread(sweep[n][:, i]):>26}" for n in names))
    out.append(f"  at the smallest scale, {s.sweep_scales[0]:.2f}:")
    for other in names[:2]:
        out.append("  " + compare(names[2], sweep[names[2]][:, 0], other, sweep[other][:, 0]))
    return [*out, "", *_radius_lines(ctx, groups[names[2]])]


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x, y)[0, 1])


def _measured(radius: np.ndarray | None) -> np.ndarray:
    """A deformable run's sampling radius, which its experiment always measures."""
    assert radius is not None
    return radius


def _radius_lines(ctx: Context, runs: list[Run]) -> list[str]:
    s = ctx.settings
    out = [
        "  sampling radius of the two stacked deformable layers (mean distance in image pixels of"
        " the 81 composite",
        "  sampling points from the output unit at the digit's centre; zero offsets give"
        f" {regular_radius():.2f} px), mean over seeds",
        f"  {'scale':<11}" + "".join(f"{sc:>7.2f}" for sc in s.sweep_scales),
        f"  {'radius px':<11}"
        + "".join(
            f"{np.mean([_measured(r.radius_sweep)[i].mean() for r in runs]):>7.2f}"
            for i in range(len(s.sweep_scales))
        ),
    ]
    sweep_scale = np.repeat(np.asarray(s.sweep_scales), ctx.digits.test.shape[0])
    r_sweep = [_pearson(sweep_scale, _measured(r.radius_sweep).reshape(-1)) for r in runs]
    r_test = [_pearson(ctx.test.scale.mean(axis=1), _measured(r.radius_test)) for r in runs]
    out.append(
        "  correlation of radius with scale, per digit: centred sweep r = "
        + ", ".join(f"{v:+.2f}" for v in r_sweep)
        + "; zoomed test r = "
        + ", ".join(f"{v:+.2f}" for v in r_test)
        + " (one value per seed)"
    )
    return out


def report_b(ctx: Context, runs: list[Run]) -> list[str]:
    """The table of (B)."""
    s, groups = ctx.settings, _by_name(runs)
    out = [
        f"(B) offsets as the mechanism — plain CNN pre-trained on unzoomed digits ({s.steps_scratch}"
        f" steps), then fine-tuned on zoomed digits ({s.steps_finetune} steps of {s.batch_size}"
        " each, same batches)",
        f"  {'fine-tune':<34}{'trainable':>10}  zoomed-test accuracy %",
    ]
    for name in (UNADAPTED, *FINETUNES.values()):
        out.append(f"  {name:<34}{groups[name][0].params:>10,}  {spread(_pct(groups[name]))}")
    bn, bn_off, full = (_pct(groups[n]) for n in FINETUNES.values())
    names = list(FINETUNES.values())
    out.append(compare(names[1], bn_off, names[0], bn))
    out.append(compare(names[2], full, names[1], bn_off))
    higher = "scores higher than" if np.mean(full) > np.mean(bn_off) else "does not score higher than"
    out.append(
        f"  the usual fine-tune of all {groups[names[2]][0].params:,} weights {higher} BatchNorm +"
        " offsets; (B) shows what the offsets alone add to frozen regular weights, not a better"
        " way to fine-tune"
    )
    return out

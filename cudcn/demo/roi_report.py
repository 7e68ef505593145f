"""The RoI demo's printed tables and the claims it may print.

Numbers are percentages (AP, IoU x 100, accuracy) shown as "mean ± sd (min-max)" over seeds
(:func:`cudcn.demo.report.spread`). Differences are taken per seed (variants compared under one seed
saw the same batches and proposals and started from the same weights). A claim is printed only when
the run shows it in every seed; otherwise the line says "not shown" and gives what was measured.
"Beats" and "higher" mean by more than ``MATERIAL`` (1 point), the same threshold below which a
difference counts as no material difference.
"""

from __future__ import annotations

from typing import SupportsIndex

import numpy as np

from cudcn.demo.report import compare, spread
from cudcn.demo.roi_data import IOU_BINS
from cudcn.demo.roi_experiments import Context, Run
from cudcn.demo.roi_models import DEFORMABLE

OVERALL = ("mean IoU", "IoU>=0.8", "AP50", "AP75", "AP90", "AP50:95")
PER_BIN = ("AP75", "AP90", "IoU", "acc")
CONTROLS = ("wide", "context")
STRICT = (4, 5)  # the bins of IoU >= 0.8
MATERIAL = 1.0  # points


def bin_label(b: SupportsIndex) -> str:
    lo, hi = IOU_BINS[b]
    return f"{lo:.1f}-{hi:.1f}"


def values(runs: list[Run], variant: str, key: str) -> np.ndarray:
    """``key`` of ``variant``'s runs, one per seed in seed order."""
    return np.array([r.scores[key] for r in sorted(runs, key=lambda r: r.seed) if r.variant == variant])


def gains(runs: list[Run], variant: str, key: str) -> np.ndarray:
    """Per seed: ``variant`` minus RoIAlign on ``key``."""
    return values(runs, variant, key) - values(runs, "roialign", key)


def _row(label: str, cells: list[str], width: int = 24) -> str:
    return f"  {label:<14}" + "".join(f"{c:>{width}}" for c in cells)


def _per_seed(v: np.ndarray) -> str:
    return " ".join(f"{x:+.1f}" for x in v)


def tables(ctx: Context, runs: list[Run]) -> list[str]:
    """Overall table, per-bin table, per-seed differences and the offset correlation."""
    s, variants = ctx.settings, list(ctx.settings.variants)
    p = ctx.proposals
    n_fg = int((p.digit >= 0).sum())
    out = [
        f"RoI demo — {len(ctx.eval)} {s.split} canvases, {p.bin.size:,} fixed proposals ({n_fg:,} made"
        f" from a digit); {s.steps} steps of {s.batch_size} canvases, {s.seeds} seed(s);"
        " % mean ± sd (min-max) over seeds",
        _row("variant", variants),
        _row("parameters", [f"{next(r.params for r in runs if r.variant == v):,}" for v in variants]),
    ]
    for key in OVERALL:
        out.append(_row(key, [spread(values(runs, v, key)) for v in variants]))
    out += [
        "",
        "  per proposal-IoU bin (AP: that bin's proposals + every background proposal;"
        " IoU: mean refined IoU; acc: 11-class accuracy)",
    ]
    for b in range(len(IOU_BINS)):
        for key in PER_BIN:
            label = f"{bin_label(b)} {key}"
            out.append(_row(label, [spread(values(runs, v, f"{b} {key}")) for v in variants]))
    out += ["", "  differences to RoIAlign per seed (points; seeds 0, 1, ...)"]
    others = [v for v in variants if v != "roialign"]
    for b in range(len(IOU_BINS)):
        for key in ("AP75", "AP90", "IoU"):
            cells = [f"{v} {_per_seed(gains(runs, v, f'{b} {key}'))}" for v in others]
            out.append(f"  {bin_label(b)} {key:<5} " + " | ".join(cells))
    for v in (v for v in others if v in DEFORMABLE):
        rx, ry = values(runs, v, "r_x"), values(runs, v, "r_y")
        out += [
            "",
            f"  {v}: correlation of the mean bin shift with the proposal-to-object"
            " displacement, per RoI made from a digit:",
            f"    r_x = {', '.join(f'{x:+.2f}' for x in rx)};"
            f" r_y = {', '.join(f'{y:+.2f}' for y in ry)} (one value per seed)",
        ]
    if "deform" in variants:
        out.append("")
        for key in ("AP90", "AP50:95", "mean IoU"):
            d, a = values(runs, "deform", key), values(runs, "roialign", key)
            out.append(compare(f"deformable {key}", d, f"RoIAlign {key}", a))
    return out


def claims(ctx: Context, runs: list[Run]) -> list[str]:
    """The four claims of the demo, each printed only when every seed shows it."""
    variants = ctx.settings.variants
    if "deform" not in variants or "roialign" not in variants:
        return ["claims: none (the run has no deformable-vs-RoIAlign comparison)"]
    controls = [c for c in CONTROLS if c in variants]
    seeds = ctx.settings.seeds
    out = [f"claims (each printed only when all {seeds} seed(s) show it):"]
    # 1. AP75 and AP90 for proposals of IoU 0.5-0.6, beyond both controls
    ok, measured = True, []
    for key in ("1 AP75", "1 AP90"):
        d = gains(runs, "deform", key)
        ok &= bool((d > MATERIAL).all())
        parts = [f"deformable {_per_seed(d)}"]
        for c in controls:
            dc = gains(runs, c, key)
            ok &= bool((d > dc).all())
            parts.append(f"{c} {_per_seed(dc)}")
        measured.append(f"{key.split()[1]} " + ", ".join(parts))
    text = (
        f"deformable RoI pooling beats RoIAlign (by > {MATERIAL:g} point) on AP75 and AP90 for"
        f" proposals of IoU 0.5-0.6, by more than the {' and '.join(controls) or 'no'}"
        " control(s)"
    )
    out.append(_claim(ok, text, "; ".join(measured)))
    d = gains(runs, "deform", "0 IoU")
    text = f"refined IoU is higher (by > {MATERIAL:g} point) for proposals of IoU 0.3-0.5"
    out.append(_claim(bool((d > MATERIAL).all()), text, f"deformable − RoIAlign {_per_seed(d)}"))
    strict = {
        f"{bin_label(b)} {k}": gains(runs, "deform", f"{b} {k}") for b in STRICT for k in ("AP90", "IoU")
    }
    ok = all(bool((np.abs(v) <= MATERIAL).all()) for v in strict.values())
    out.append(
        _claim(
            ok,
            f"no material difference (within ±{MATERIAL:g} point, AP90 and refined"
            " IoU) for proposals of IoU >= 0.8",
            "; ".join(f"{k} {_per_seed(v)}" for k, v in strict.items()),
        )
    )
    rx, ry = values(runs, "deform", "r_x"), values(runs, "deform", "r_y")
    r_xy = f"r_x {', '.join(f'{x:+.2f}' for x in rx)}; r_y {', '.join(f'{y:+.2f}' for y in ry)}"
    text = "the offsets point toward the object (r >= 0.7 on both axes)"
    out.append(_claim(bool((rx >= 0.7).all() and (ry >= 0.7).all()), text, r_xy))
    if seeds < 3:
        out.append(f"  (with {seeds} seed(s) these say little: the demo's protocol uses 3)")
    return out


def _claim(ok: bool, text: str, measured: str) -> str:
    if ok:
        return f"  shown: {text} [{measured}]"
    return f"  not shown: {text}; measured (per seed): {measured}"

"""The RoI demo's printed tables and the claims it may print.

Numbers are percentages (AP, IoU x 100, accuracy) shown as "mean ± sd (min-max)" over seeds
(:func:`cudcn.demo.report.spread`). Differences are taken per seed against each variant's base
(``BASE``: RoIAlign for the fc-head variants, PS RoI pooling for the deformable R-FCN head; variants
compared under one seed saw the same batches and proposals and started from the same function). A
claim is printed as "shown" only when the run shows it in every seed, otherwise "not shown" with what
was measured. "Beats" and "higher" mean by more than ``MATERIAL`` (1 point).
"""

from __future__ import annotations

from typing import SupportsIndex

import numpy as np

from cudcn.demo.report import MATERIAL, claim, claim_block, compare, per_seed, spread
from cudcn.demo.roi_data import IOU_BINS
from cudcn.demo.roi_experiments import Context, Run
from cudcn.demo.roi_models import DEFORMABLE

OVERALL = ("mean IoU", "IoU>=0.8", "AP50", "AP75", "AP90", "AP50:95")
PER_BIN = ("AP75", "AP90", "IoU", "acc")
CONTROLS = ("wide", "context")
BASE = {v: "roialign" for v in ("deform", "modulated", "wide", "context", "dcn-roialign", "dcn-deform")}
BASE["rfcn-deform"] = "rfcn"
SECTIONS = {  # title: the variants it shows, base first; shown when it has a variant not shown before
    "fc head (Faster R-CNN style), plain backbone": ("roialign", "deform", "modulated", "wide", "context"),
    "fc head, deformable backbone (last two convolutions DeformConv2dPack)": (
        "roialign",
        "dcn-roialign",
        "dcn-deform",
    ),
    "R-FCN head: PS RoI pooling, plain backbone": ("rfcn", "rfcn-deform"),
}
ADDITIVE = (("roialign", "deform"), ("dcn-roialign", "dcn-deform"))  # rows: backbone; columns: pooling
STRICT = (4, 5)  # the bins of IoU >= 0.8


def bin_label(b: SupportsIndex) -> str:
    lo, hi = IOU_BINS[b]
    return f"{lo:.1f}-{hi:.1f}"


def values(runs: list[Run], variant: str, key: str) -> np.ndarray:
    """``key`` of ``variant``'s runs, one per seed in seed order."""
    return np.array([r.scores[key] for r in sorted(runs, key=lambda r: r.seed) if r.variant == variant])


def gains(runs: list[Run], variant: str, key: str, base: str | None = None) -> np.ndarray:
    """Per seed: ``variant`` minus ``base`` (default ``BASE[variant]``) on ``key``."""
    return values(runs, variant, key) - values(runs, base or BASE[variant], key)


def _row(label: str, cells: list[str], width: int = 24) -> str:
    return f"  {label:<14}" + "".join(f"{c:>{width}}" for c in cells)


def _section(runs: list[Run], title: str, variants: list[str]) -> list[str]:
    """One head's overall and per-bin tables, its per-seed differences and offset correlations."""
    out = [
        f"{title}:",
        _row("variant", variants),
        _row("parameters", [f"{next(r.params for r in runs if r.variant == v):,}" for v in variants]),
    ]
    out += [_row(key, [spread(values(runs, v, key)) for v in variants]) for key in OVERALL]
    out += ["  per proposal-IoU bin (AP: that bin's proposals + every background proposal; IoU: mean"]
    out[-1] += " refined IoU; acc: 11-class accuracy)"
    for b in range(len(IOU_BINS)):
        for key in PER_BIN:
            out.append(
                _row(f"{bin_label(b)} {key}", [spread(values(runs, v, f"{b} {key}")) for v in variants])
            )
    others = [v for v in variants if v in BASE and BASE[v] in variants]
    if others:
        out.append(f"  differences per seed (points; seeds 0, 1, ...) to {BASE[others[0]]}")
        for b in range(len(IOU_BINS)):
            for key in ("AP75", "AP90", "IoU"):
                cells = [f"{v} {per_seed(gains(runs, v, f'{b} {key}'))}" for v in others]
                out.append(f"  {bin_label(b)} {key:<5} " + " | ".join(cells))
        for key in ("AP90", "AP50:95", "mean IoU"):
            for v in others:
                out.append(
                    compare(
                        f"{v} {key}", values(runs, v, key), f"{BASE[v]} {key}", values(runs, BASE[v], key)
                    )
                )
    for v in (v for v in variants if v in DEFORMABLE):
        rx, ry = values(runs, v, "r_x"), values(runs, v, "r_y")
        out.append(
            f"  {v}: correlation of the mean bin shift with the proposal-to-object displacement, per RoI"
            f" made from a digit: r_x = {', '.join(f'{x:+.2f}' for x in rx)};"
            f" r_y = {', '.join(f'{y:+.2f}' for y in ry)}"
        )
    return out


def loss_curves(runs: list[Run], variants: list[str]) -> list[str]:
    """Each variant's training loss by tenth of training (mean over seeds), and how much it still
    fell over the last fifth."""
    out = ["training loss by tenth of the steps (mean over seeds); last fifth: change from tenth 8 to 10"]
    parts = min(10, len(runs[0].losses))
    for v in variants:
        curve = np.mean(
            [[t.mean() for t in np.array_split(r.losses, parts)] for r in runs if r.variant == v], axis=0
        )
        change = 100 * (curve[-1] - curve[-3]) / curve[-3] if parts >= 3 else float("nan")
        out.append(f"  {v:<14}" + " ".join(f"{c:.3f}" for c in curve) + f"   last fifth {change:+.1f}%")
    return out


def additivity(runs: list[Run], key: str = "AP50:95") -> list[str]:
    """The 2 x 2 table (backbone x pooling) of ``key`` and the gains per seed."""
    (base, droi), (dcn, both) = ADDITIVE
    out = [
        f"additivity (fc head), {key} %: backbone x RoI pooling",
        f"  {'':<22}{'RoIAlign':>26}{'deformable RoI pooling':>26}",
    ]
    for label, row in zip(("plain backbone", "deformable backbone"), ADDITIVE, strict=True):
        out.append(f"  {label:<22}" + "".join(f"{spread(values(runs, v, key)):>26}" for v in row))
    g = {name: gains(runs, v, key, base) for name, v in (("pool", droi), ("backbone", dcn), ("both", both))}
    out.append(
        f"  gains over plain + RoIAlign per seed: deformable pooling {per_seed(g['pool'])}; deformable"
        f" backbone {per_seed(g['backbone'])}; both {per_seed(g['both'])} (sum of the two alone"
        f" {per_seed(g['pool'] + g['backbone'])})"
    )
    return out


def tables(ctx: Context, runs: list[Run]) -> list[str]:
    """Every section the run has variants for, the additivity tables and the loss curves."""
    s, p = ctx.settings, ctx.proposals
    out = [
        f"RoI demo — {len(ctx.eval)} {s.split} canvases, {p.bin.size:,} fixed proposals"
        f" ({int((p.digit >= 0).sum()):,} made from a digit); {s.steps} steps of {s.batch_size} canvases,"
        f" {s.seeds} seed(s); % mean ± sd (min-max) over seeds",
    ]
    shown: set[str] = set()
    for title, members in SECTIONS.items():
        chosen = [v for v in members if v in s.variants]
        if set(chosen) - shown:
            out += ["", *_section(runs, title, chosen)]
            shown.update(chosen)
    if all(v in s.variants for row in ADDITIVE for v in row):
        for key in ("AP50:95", "AP90", "mean IoU"):
            out += ["", *additivity(runs, key)]
    return [*out, "", *loss_curves(runs, list(s.variants))]


def _pair_claim(runs: list[Run], variant: str, keys: tuple[str, ...], controls: list[str], text: str) -> str:
    """``variant`` beats its base by > MATERIAL on every key (and by more than each control)."""
    ok, measured = True, []
    for key in keys:
        d = gains(runs, variant, key)
        ok &= bool((d > MATERIAL).all())
        parts = [f"{variant} {per_seed(d)}"]
        for c in controls:
            dc = gains(runs, c, key)
            ok &= bool((d > dc).all())
            parts.append(f"{c} {per_seed(dc)}")
        label = f"{bin_label(int(key[0]))} {key[2:]}" if key[0].isdigit() else key
        measured.append(f"{label}: " + ", ".join(parts))
    return claim(ok, text, "; ".join(measured))


def claims(ctx: Context, runs: list[Run]) -> list[str]:
    """The demo's claims, each printed only when every seed shows it."""
    v, seeds = ctx.settings.variants, ctx.settings.seeds
    out: list[str] = []
    if "deform" in v and "roialign" in v:
        controls = [c for c in CONTROLS if c in v]
        text = (
            f"deformable RoI pooling beats RoIAlign (by > {MATERIAL:g} point) on AP75 and AP90 for proposals"
            f" of IoU 0.5-0.6"
            + (f", by more than the {' and '.join(controls)} control(s)" if controls else "")
        )
        out.append(_pair_claim(runs, "deform", ("1 AP75", "1 AP90"), controls, text))
        text = f"refined IoU is higher (by > {MATERIAL:g} point) for proposals of IoU 0.3-0.5"
        out.append(_pair_claim(runs, "deform", ("0 IoU",), [], text))
        strict = {f"{bin_label(b)} IoU": gains(runs, "deform", f"{b} IoU") for b in STRICT}
        ok = all(bool((np.abs(d) <= MATERIAL).all()) for d in strict.values())
        text = (
            f"no material difference in refined IoU (within ±{MATERIAL:g} point) for proposals of IoU >= 0.8"
        )
        out.append(claim(ok, text, "; ".join(f"{k} {per_seed(d)}" for k, d in strict.items())))
        rx, ry = values(runs, "deform", "r_x"), values(runs, "deform", "r_y")
        r_xy = f"r_x {', '.join(f'{x:+.2f}' for x in rx)}; r_y {', '.join(f'{y:+.2f}' for y in ry)}"
        text = "the offsets point toward the object (r >= 0.7 on both axes)"
        out.append(claim(bool((rx >= 0.7).all() and (ry >= 0.7).all()), text, r_xy))
    if "rfcn" in v and "rfcn-deform" in v:
        text = (
            f"deformable PS RoI pooling improves the R-FCN head (by > {MATERIAL:g} point) on AP50:95 and on"
            " AP75 for proposals of IoU 0.5-0.6"
        )
        out.append(_pair_claim(runs, "rfcn-deform", ("AP50:95", "1 AP75"), [], text))
    if all(x in v for row in ADDITIVE for x in row):
        (base, droi), (dcn, both) = ADDITIVE
        text = f"a deformable backbone improves the fc head with RoIAlign (by > {MATERIAL:g} point AP50:95)"
        out.append(_pair_claim(runs, dcn, ("AP50:95",), [], text))
        alone = np.maximum(gains(runs, droi, "AP50:95", base), gains(runs, dcn, "AP50:95", base))
        together = gains(runs, both, "AP50:95", base)
        text = (
            f"deformable backbone and deformable RoI pooling add up: together they beat the better one"
            f" alone by > {MATERIAL:g} point AP50:95"
        )
        measured = f"both {per_seed(together)}; better alone {per_seed(alone)}"
        out.append(claim(bool((together - alone > MATERIAL).all()), text, measured))
    if not out:
        return ["claims: none (the run has no pair of variants the claims compare)"]
    return claim_block(seeds, out)

"""``cudcn demo layers``: does accuracy rise with the number of deformable layers, and saturate?

The paper (Dai et al. 2017, Table 1) makes 1, 2, 3 and 6 of the last 3 x 3 layers of ResNet-101
deformable: accuracy rises and saturates after about three. Here the conv demo's digit classifier is
deepened to ``depth`` 3 x 3 layers at 7 x 7 (:func:`cudcn.demo.models.deep_net`) and the last 0, 1,
..., ``depth`` of them are ``DeformConv2dPack``. Under one seed every count starts from the same
weights (zero offsets: the same function) and sees the same zoomed batches, trained as the conv
demo's (A); the zoomed test set is (A)'s. Prints accuracy per count with its spread over seeds and the
claims as measured, and draws ``layers_accuracy.png``.

Example::

    from cudcn.demo.layers import QUICK, run
    run(QUICK, out="demo_out")
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from cudcn.demo import data, experiments, models
from cudcn.demo.experiments import Context, Run
from cudcn.demo.report import MATERIAL, claim, claim_block, per_seed, scale_bin_table, spread
from cudcn.demo.runlog import PartResult, RunLog
from cudcn.files import require_folder

TRAINING = experiments.Settings(steps_scratch=248, sweep_scales=())  # (A)'s data and optimiser, 4 epochs


@dataclass(frozen=True)
class Settings:
    """The layer-count experiment: ``training`` holds the data, optimiser, seeds and step count
    (``steps_scratch``; ``steps_finetune`` is not used), as in the conv demo; ``depth`` layers at
    7 x 7, of which ``counts`` are made deformable in turn."""

    training: experiments.Settings = TRAINING
    depth: int = 4
    counts: tuple[int, ...] = (0, 1, 2, 3, 4)

    @property
    def seeds(self) -> int:
        return self.training.seeds

    def with_seeds(self, seeds: int) -> Settings:
        return dataclasses.replace(self, training=dataclasses.replace(self.training, seeds=seeds))


QUICK = Settings(  # a smoke run for CI: every code path and the picture, numbers not meaningful
    training=dataclasses.replace(experiments.QUICK, steps_scratch=12, sweep_scales=()),
    counts=(0, 3, 4),
)


def _name(count: int) -> str:
    return f"{count} deformable"


def experiment(ctx: Context, s: Settings) -> list[Run]:
    """Per seed and count: the ``depth``-deep net with its last ``count`` layers deformable, trained
    from scratch on zoomed digits and scored on the zoomed test set."""
    t = s.training
    runs = []
    for seed in range(t.seeds):
        for count in s.counts:
            net = models.deep_net(s.depth, count, np.random.default_rng([seed, 10]))
            if ctx.device.name == "cuda":
                net.to("cuda")
            label = f"seed {seed}, {count} deformable"
            losses = experiments.fit(
                ctx, net, list(net.parameters()), t.steps_scratch, [seed, 1], data.random_zoom, label
            )
            run = Run(_name(count), seed, models.count_parameters(net), losses, np.zeros(0))
            runs.append(experiments.evaluate(ctx, run, net, sweep=False, radius=False))
    return runs


def accuracies(runs: list[Run], count: int) -> np.ndarray:
    """Zoomed-test accuracy % of ``count``'s runs, one per seed in seed order."""
    chosen = sorted((r for r in runs if r.name == _name(count)), key=lambda r: r.seed)
    return np.array([100 * r.accuracy for r in chosen])


def report(ctx: Context, s: Settings, runs: list[Run]) -> list[str]:
    """The accuracy table, the per-scale table and the per-seed gains."""
    t = s.training
    out = [
        f"layer count — the last k of {s.depth} 3x3 layers at 7 x 7 deformable, trained from scratch on"
        f" zoomed digits, {t.steps_scratch} steps of {t.batch_size}, {t.seeds} seed(s)",
        f"    zoomed test set: {ctx.test.labels.size} digits; accuracy % mean ± sd (min-max) over seeds",
        f"  {'deformable layers':<19}{'params':>8}  {'accuracy %':<26}per seed",
    ]
    for count in s.counts:
        params = next(r.params for r in runs if r.name == _name(count))
        acc = accuracies(runs, count)
        cells = " ".join(f"{a:.1f}" for a in acc)
        out.append(f"  {count:<19}{params:>8,}  {spread(acc):<26}{cells}")
    out += ["", "  gain per seed (points): each count over the previous one, and over none"]
    for prev, count in zip(s.counts, s.counts[1:], strict=False):
        step = accuracies(runs, count) - accuracies(runs, prev)
        total = accuracies(runs, count) - accuracies(runs, s.counts[0])
        out.append(f"  {prev} -> {count}: {per_seed(step):<22} {s.counts[0]} -> {count}: {per_seed(total)}")
    models_runs = [[r for r in runs if r.name == _name(c)] for c in s.counts]
    return [*out, "", *scale_bin_table(ctx, models_runs, [_name(c) for c in s.counts])]


def claims(s: Settings, runs: list[Run]) -> list[str]:
    """The paper's two claims, each "shown" only when every seed shows it: accuracy rises with the
    first deformable layers, and saturates after about three."""
    if not {0, 3, 4} <= set(s.counts):
        return ["claims: none (the run lacks the counts 0, 3 and 4)"]
    none, three, four = (accuracies(runs, c) for c in (0, 3, 4))
    rises = {c: accuracies(runs, c) - none for c in s.counts if c > 0}
    out = []
    ok = all(bool((g > MATERIAL).all()) for g in rises.values())
    text = f"every count of deformable layers beats none (by > {MATERIAL:g} point)"
    out.append(claim(ok, text, "; ".join(f"{c}: {per_seed(g)}" for c, g in rises.items())))
    ok = bool((three - none > MATERIAL).all() and (np.abs(four - three) <= MATERIAL).all())
    text = (
        f"accuracy saturates after three: 0 -> 3 gains > {MATERIAL:g} point, 3 -> 4 changes it by"
        f" at most ±{MATERIAL:g}"
    )
    out.append(claim(ok, text, f"0 -> 3 {per_seed(three - none)}; 3 -> 4 {per_seed(four - three)}"))
    means = {c: accuracies(runs, c).mean() for c in s.counts}
    best = max(means.values())
    first = min(c for c in s.counts if means[c] >= best - MATERIAL)
    out.append(
        f"  as measured: the mean accuracy first comes within {MATERIAL:g} point of the best count's"
        f" ({best:.1f} %) at {first} deformable layer(s)"
    )
    return claim_block(s.seeds, out)


def draw(s: Settings, runs: list[Run], path: Path) -> Path:
    """``layers_accuracy.png``: accuracy against the number of deformable layers, one thin line per
    seed, the mean bold with its min-max band."""
    from cudcn.demo.plots import _figure, save_figure

    fig = _figure(5.5, 4)
    ax = fig.subplots()
    x = np.asarray(s.counts)
    acc = np.array([accuracies(runs, c) for c in s.counts])  # (counts, seeds)
    for seed in range(acc.shape[1]):
        ax.plot(x, acc[:, seed], "o-", color="tab:red", alpha=0.35, lw=0.8, ms=3)
    ax.plot(x, acc.mean(axis=1), "o-", color="tab:red", lw=2, label="mean over seeds (thin: each seed)")
    ax.fill_between(x, acc.min(axis=1), acc.max(axis=1), color="tab:red", alpha=0.12)
    ax.set_xticks(x)
    ax.set(
        xlabel=f"deformable layers (the last k of {s.depth} at 7 x 7)",
        ylabel="zoomed-test accuracy %",
        title="accuracy against the number of deformable layers",
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def run(
    settings: Settings | None = None, out: str | Path = "cudcn_demo_out", stream: TextIO | None = None
) -> PartResult:
    """Train every count under every seed, print the tables and claims to ``stream`` (stdout) and
    write ``layers_accuracy.png`` into ``out``."""
    from cudcn.demo.train import pick_device

    out = require_folder(out, "out")
    s = settings if settings is not None else Settings()
    log = RunLog(stream)
    device = pick_device()
    log.say(f"cudcn demo layers: running on the {device.description}")
    t = s.training
    log.say(
        f"settings: {t.seeds} seed(s), counts {', '.join(map(str, s.counts))} of {s.depth} layers;"
        f" {t.n_train} training / {t.n_test} test digits, batch {t.batch_size}, Adam lr {t.lr:g} with"
        f" cosine decay, {t.steps_scratch} steps"
    )
    if t.steps_scratch < Settings().training.steps_scratch:
        log.say("(a smoke run: far fewer steps than the demo's protocol, its numbers mean nothing)")
    ctx = experiments.make_context(t, device)
    log.lap("data")
    runs = experiment(ctx, s)
    log.lap("training and scoring")
    lines = [*report(ctx, s, runs), "", *claims(s, runs)]
    log.block(lines)
    out.mkdir(parents=True, exist_ok=True)
    picture = draw(s, runs, out / "layers_accuracy.png")
    log.lap("pictures")
    log.wrote([picture])
    return PartResult(runs, lines, [picture], log.finish())

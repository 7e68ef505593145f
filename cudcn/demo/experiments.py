"""The demo's two experiments and their fixed settings.

(A) scale-adaptive sampling: the plain CNN, the plain CNN widened to the deformable net's parameter
count, and the CNN with ``DeformConv2dPack`` in its two last layers, each trained from scratch on
zoomed digits for the same number of steps; zoomed-test accuracy, accuracy on the centred sweep, and
the sampling radius of the deformable layers against the digit's scale.

(B) offsets as the mechanism: the plain CNN trained on unzoomed digits, then fine-tuned on zoomed ones
for the same number of steps with (1) only BatchNorm trainable, (2) BatchNorm plus the offset
convolutions of DeformConv2dPack swapped into its last layers (every regular weight exactly as
trained), (3) all weights (the usual fine-tune).

Seeds: seed s draws the initial weights from ``default_rng([s, 10])``, the training batches and zooms
of (A) from ``default_rng([s, 1])``, (B)'s pre-training from ``[s, 2]`` and its fine-tuning from
``[s, 3]``; the split and the test sets never depend on s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cudcn import nn
from cudcn.demo import data, models
from cudcn.demo.radius import digit_centres, predict_with_offsets, sampling_radius
from cudcn.demo.train import Device, Schedule, batches, predict, train


@dataclass(frozen=True)
class Settings:
    """Every setting of the demo, fixed before the reported runs. The architecture and learning rate
    come from a prototype scored on a validation split of the training digits, the widths and step
    counts from the time budget; none was chosen by looking at test accuracy."""

    seeds: int = 3
    n_train: int = 4000
    n_test: int = 1000
    batch_size: int = 64
    lr: float = 3e-3  # Adam, cosine decay to 0, no weight decay; the same for every parameter
    steps_scratch: int = 124  # (A) training and (B) pre-training: 2 epochs of 62 batches
    steps_finetune: int = 50  # (B) each fine-tune: 0.8 epoch
    sweep_scales: tuple[float, ...] = data.SWEEP_SCALES


QUICK = Settings(  # a smoke run for CI: every code path and picture, numbers not meaningful
    seeds=1,
    n_train=1000,
    n_test=200,
    steps_scratch=20,
    steps_finetune=10,
    sweep_scales=(0.4, 0.7, 1.0),
)


@dataclass
class Run:
    """One trained model: its loss curve, which zoomed test digits it got right, its accuracy on
    the centred sweep (one entry per scale) and, for deformable nets, the sampling radius of every
    zoomed test digit and of every sweep digit (scales x digits)."""

    name: str
    seed: int
    params: int
    losses: list[float]
    correct: np.ndarray
    sweep: np.ndarray = field(default_factory=lambda: np.zeros(0))
    radius_test: np.ndarray | None = None
    radius_sweep: np.ndarray | None = None

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())


@dataclass
class Context:
    """Data and device shared by the experiments; ``keep`` receives the first seed's deformable net
    of (A) (for the sampling-location picture)."""

    settings: Settings
    device: Device
    digits: data.Digits
    test: data.Zoomed
    sweep: list[data.Zoomed]
    keep: dict[str, nn.Sequential] = field(default_factory=dict)


def make_context(settings: Settings, device: Device) -> Context:
    """Load and split the digits, build the fixed zoomed test set and the centred sweep."""
    digits = data.load_digits(settings.n_train, settings.n_test)
    sweep = [data.sweep_set(digits, s) for s in settings.sweep_scales]
    return Context(settings, device, digits, data.zoomed_test_set(digits), sweep)


def _on_device(net: nn.Sequential, device: Device) -> nn.Sequential:
    return net.to("cuda") if device.name == "cuda" else net


def _no_zoom(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> data.Zoomed:
    return data.unzoomed(images, labels)


def fit(
    ctx: Context,
    net: nn.Sequential,
    params: list[nn.Parameter],
    steps: int,
    stream: list[int],
    transform: Callable[..., data.Zoomed],
    label: str,
) -> list[float]:
    """Train ``params`` of ``net`` for ``steps`` batches of the training digits drawn from
    ``default_rng(stream)`` and passed through ``transform``; returns the loss of every step."""
    s = ctx.settings
    feed = batches(
        ctx.digits.train,
        ctx.digits.train_labels,
        s.batch_size,
        steps,
        np.random.default_rng(stream),
        transform,
    )
    return train(net, params, Schedule(steps, s.lr, s.batch_size), feed, ctx.device, label)


def evaluate(ctx: Context, run: Run, net: nn.Sequential, sweep: bool, radius: bool = True) -> Run:
    """Fill ``run``'s test results (the centred sweep's too when ``sweep``); with ``radius``, the
    sampling radius too when ``net`` is the deform variant."""
    deformable = radius and isinstance(net[models.DEFORM_LAYERS[0]], nn.DeformConv2dPack)
    if not deformable:
        run.correct = predict(net, ctx.test.images, ctx.device) == ctx.test.labels
        if sweep:
            run.sweep = np.array([(predict(net, z.images, ctx.device) == z.labels).mean() for z in ctx.sweep])
        return run
    pred, offsets = predict_with_offsets(net, ctx.test.images, ctx.device)
    run.correct = pred == ctx.test.labels
    run.radius_test = sampling_radius(offsets, digit_centres(ctx.test.shift))
    if sweep:
        accs, radii = [], []
        for z in ctx.sweep:
            pred, offsets = predict_with_offsets(net, z.images, ctx.device)
            accs.append((pred == z.labels).mean())
            radii.append(sampling_radius(offsets, digit_centres(z.shift)))
        run.sweep, run.radius_sweep = np.array(accs), np.stack(radii)
    return run


MODEL_NAMES = {"plain": "plain CNN", "wide": "plain CNN, widened", "deform": "deformable CNN"}


def experiment_a(ctx: Context) -> list[Run]:
    """(A): the three models of ``models.KINDS`` per seed, trained from scratch on zoomed digits."""
    runs = []
    for seed in range(ctx.settings.seeds):
        for kind in models.KINDS:
            net = _on_device(models.digit_net(kind, np.random.default_rng([seed, 10])), ctx.device)
            losses = fit(
                ctx,
                net,
                list(net.parameters()),
                ctx.settings.steps_scratch,
                [seed, 1],
                data.random_zoom,
                f"(A) seed {seed} {kind}",
            )
            run = Run(MODEL_NAMES[kind], seed, models.count_parameters(net), losses, np.zeros(0))
            runs.append(evaluate(ctx, run, net, sweep=True))
            if kind == "deform" and seed == 0:
                ctx.keep["deform"] = net
    return runs


UNADAPTED = "none (pre-trained, unadapted)"
FINETUNES = {
    "bn": "BatchNorm only",
    "bn+offsets": "BatchNorm + offsets (deformable)",
    "all": "all weights (plain)",
}


def experiment_b(ctx: Context) -> list[Run]:
    """(B): per seed, the plain CNN pre-trained on unzoomed digits ("pre-trained, unadapted", with
    its zoomed-test accuracy and no steps) and its three fine-tunes."""
    s = ctx.settings
    runs = []
    for seed in range(s.seeds):
        plain = _on_device(models.digit_net("plain", np.random.default_rng([seed, 10])), ctx.device)
        losses = fit(
            ctx,
            plain,
            list(plain.parameters()),
            s.steps_scratch,
            [seed, 2],
            _no_zoom,
            f"(B) seed {seed} pre-train",
        )
        runs.append(evaluate(ctx, Run(UNADAPTED, seed, 0, losses, np.zeros(0)), plain, False))
        trained = plain.state_dict()
        for variant, name in FINETUNES.items():
            net = _on_device(models.digit_net("plain", np.random.default_rng(0)), ctx.device)
            net.load_state_dict(trained)
            if variant == "bn":
                train_params = models.batchnorm_parameters(net)
            elif variant == "bn+offsets":
                net = models.deformable_from_plain(net)
                train_params = models.batchnorm_parameters(net) + models.offset_parameters(net)
            else:
                train_params = list(net.parameters())
            losses = fit(
                ctx,
                net,
                train_params,
                s.steps_finetune,
                [seed, 3],
                data.random_zoom,
                f"(B) seed {seed} {variant}",
            )
            run = Run(name, seed, sum(int(p.data.size) for p in train_params), losses, np.zeros(0))
            runs.append(evaluate(ctx, run, net, sweep=False))
    return runs

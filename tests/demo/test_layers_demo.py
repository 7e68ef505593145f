"""``cudcn demo layers``: the deepened net and its deformable counts, the claims' logic, and a
``cudcn demo layers --quick`` smoke run from an empty folder that must write the picture it names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cudcn import nn
from cudcn.demo import layers, models
from cudcn.demo.experiments import Run
from tests.demo.quick_run import assert_wrote_picture, run_quick

SEED = 20261207


def test_every_count_starts_from_the_same_function():
    print("seed", SEED)
    x = np.random.default_rng(SEED).uniform(0, 1, (2, 1, 28, 28)).astype(np.float32)
    nets = [models.deep_net(4, k, np.random.default_rng(SEED)) for k in range(5)]
    ref = nets[0](x).data
    for k, net in enumerate(nets):
        kinds = [type(net[i]) for i in models.late_layers(4)]
        assert kinds == [nn.Conv2d] * (4 - k) + [nn.DeformConv2dPack] * k
        np.testing.assert_allclose(net(x).data, ref, rtol=1e-5, atol=1e-6)
    # the first layers do not depend on the depth: the conv demo's plain net is the depth-2 one
    two = models.digit_net("plain", np.random.default_rng(SEED))
    assert np.array_equal(two[4].weight.data, nets[0][4].weight.data)
    with pytest.raises(ValueError, match=r"count must be in \[0, 4\]"):
        models.deep_net(4, 5, np.random.default_rng(0))


def _runs(acc: dict[int, list[float]]) -> list[Run]:
    out = []
    for count, per_seed in acc.items():
        for seed, a in enumerate(per_seed):
            correct = np.zeros(1000, bool)
            correct[: round(10 * a)] = True
            out.append(Run(f"{count} deformable", seed, 1, [], correct))
    return out


def test_claims_say_what_every_seed_shows():
    s = layers.Settings().with_seeds(2)
    saturating = _runs({0: [80, 81], 1: [84, 84], 2: [86, 86], 3: [87, 87.5], 4: [87.5, 87]})
    lines = layers.claims(s, saturating)
    assert lines[1].startswith("  shown:") and lines[2].startswith("  shown:"), lines
    assert "at 3 deformable layer(s)" in lines[3]
    still_rising = _runs({0: [80, 81], 1: [84, 84], 2: [86, 86], 3: [87, 87.5], 4: [89, 87]})
    lines = layers.claims(s, still_rising)
    assert lines[2].startswith("  not shown:") and "3 -> 4 +2.0 -0.5" in lines[2], lines


@pytest.mark.slow
def test_demo_layers_quick_writes_its_picture(tmp_path):
    """``cudcn demo layers --quick`` from an empty folder (CI's smoke test)."""
    stdout = run_quick(tmp_path, "layers")
    assert "numbers mean nothing" in stdout and "claims" in stdout
    assert_wrote_picture(stdout, Path("cudcn_demo_out") / "layers_accuracy.png", tmp_path)

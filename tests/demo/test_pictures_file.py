"""The demos write their pictures atomically: Ctrl-C while a PNG is being written keeps the picture
that was there and leaves no temporary file (issue 22, item 5)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from cudcn.demo import plots
from cudcn.demo.experiments import FINETUNES, MODEL_NAMES

pytest.importorskip("matplotlib", reason="matplotlib not installed (pip install 'cudcn[examples]')")
from matplotlib.figure import Figure

GOOD_PNG = b"\x89PNG\r\n\x1a\n a good picture from the previous run"


def runs(names) -> list[SimpleNamespace]:
    return [SimpleNamespace(name=name, losses=[2.0, 1.5, 1.0, 0.8]) for name in names]


def interrupted_savefig(self, fname, *args, **kwargs):
    """Write part of a PNG where matplotlib would, then Ctrl-C."""
    if isinstance(fname, (str, os.PathLike)):
        with open(fname, "wb") as file:
            file.write(b"\x89PNG half")
    else:
        fname.write(b"\x89PNG half")
    raise KeyboardInterrupt


def test_ctrl_c_while_saving_a_picture_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "training_curves.png"
    path.write_bytes(GOOD_PNG)
    monkeypatch.setattr(Figure, "savefig", interrupted_savefig)
    with pytest.raises(KeyboardInterrupt):
        plots.training_curves(runs(MODEL_NAMES.values()), runs(FINETUNES.values()), path)
    assert path.read_bytes() == GOOD_PNG  # before: b"\x89PNG half", the good picture lost
    assert os.listdir(tmp_path) == [path.name]


def test_pictures_are_png_whatever_the_name(tmp_path):
    path = tmp_path / "curves.png"
    plots.training_curves(runs(MODEL_NAMES.values()), runs(FINETUNES.values()), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == [path.name]

"""``cudcn demo --out`` is checked before any work: a folder that cannot be written is one line on
stderr naming it and why, exit code 2 (issue 22, item 9). ``demo`` is the only subcommand that takes
an output path (``info``, ``check`` and ``bench`` write nothing)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cudcn.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a demo starts."""
    from cudcn import demo
    from cudcn.demo import background, layers, roi

    def started(*args, **kwargs):
        raise AssertionError("the demo ran before the output folder was checked")

    for module in (demo, layers, background, roi):
        monkeypatch.setattr(module, "run", started)


@pytest.mark.parametrize("which", [[], ["conv"], ["layers"], ["background"], ["roi"], ["--all"]])
def test_out_under_a_regular_file_is_refused_before_any_work(tmp_path, which, no_work, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    assert main(["demo", *which, "--quick", "--out", str(afile / "sub")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"cudcn demo: cannot write into --out {str(afile / 'sub')!r}: {str(afile)!r} is not a folder"
    ]


def test_out_that_is_a_regular_file_is_refused(tmp_path, no_work, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    assert main(["demo", "--out", str(afile)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"cudcn demo: cannot write into --out {str(afile)!r}: {str(afile)!r} is not a folder"
    ]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write into any folder")
def test_out_in_an_unwritable_folder_is_refused(tmp_path, no_work, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert main(["demo", "roi", "--out", str(locked / "a" / "b")]) == 2
    finally:
        locked.chmod(0o700)
    assert capsys.readouterr().err.splitlines() == [
        f"cudcn demo: cannot write into --out {str(locked / 'a' / 'b')!r}: "
        f"the folder {str(locked)!r} is not writable"
    ]


def test_only_demo_takes_an_output_path():
    """If another subcommand grows an output option, it needs the same check."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command").choices
    with_paths = {
        name: [o for a in sub._actions for o in a.option_strings if o in ("--out", "--output", "-o")]
        for name, sub in subparsers.items()
    }
    assert with_paths == {"info": [], "check": [], "bench": [], "demo": ["--out"]}


def test_console_entry_refuses_a_bad_out_at_once(tmp_path):
    """The issue's probe, as a user types it: no training, no traceback, exit 2, within seconds."""
    (tmp_path / "afile").write_text("not a folder")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "cudcn", "demo", "--quick", "--out", "afile/sub"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"cudcn demo: cannot write into --out 'afile/sub': {str(tmp_path / 'afile')!r} is not a folder"
    ]
    assert result.stdout == ""
    assert time.perf_counter() - start < 60

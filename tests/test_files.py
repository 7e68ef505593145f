"""cudcn.files: the one atomic writer every file cudcn writes goes through (issue 22, item 5), and the
output-folder check of the command line (item 9)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cudcn.files import TEMPORARY_MARK, atomic_write, folder_problem, remove_stale_temporaries

ROOT = Path(__file__).resolve().parents[1]


def temporaries(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if TEMPORARY_MARK in name]


def test_new_content_replaces_the_file(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    with atomic_write(path) as f:
        f.write(b"new ")
        f.write(b"content")
        assert path.read_bytes() == b"old"  # nothing visible until the block ends
    assert path.read_bytes() == b"new content"
    assert os.listdir(tmp_path) == ["a.bin"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_failure_mid_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, error):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    with pytest.raises(type(error)):
        with atomic_write(path) as f:
            f.write(b"half of the n")
            raise error
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_failing_writer_on_a_new_file_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        with atomic_write(tmp_path / "new.bin") as f:
            f.write(b"x")
            raise ValueError
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_mode_is_kept_and_a_new_file_gets_the_umask_default(tmp_path):
    path = tmp_path / "secret.npz"
    path.write_bytes(b"old")
    os.chmod(path, 0o600)
    with atomic_write(path) as f:
        f.write(b"new")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    umask = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "fresh.bin") as f:
            f.write(b"x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(os.stat(tmp_path / "fresh.bin").st_mode) == 0o640


@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
def test_a_symlink_stays_a_link_and_its_target_is_replaced(tmp_path):
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "model.onnx"
    real.write_bytes(b"old")
    link = tmp_path / "link.onnx"
    link.symlink_to(Path("real") / "model.onnx")
    chain = tmp_path / "chain.onnx"
    chain.symlink_to(link.name)
    with atomic_write(chain) as f:
        f.write(b"new")
    assert chain.is_symlink() and link.is_symlink() and real.read_bytes() == b"new"
    dangling = tmp_path / "dangling"
    dangling.symlink_to(Path("real") / "later.bin")
    with atomic_write(dangling) as f:
        f.write(b"made")
    assert dangling.is_symlink() and (tmp_path / "real" / "later.bin").read_bytes() == b"made"
    assert temporaries(tmp_path) == [] and temporaries(tmp_path / "real") == []


# A child that starts an atomic write, writes half, says so, and waits to be killed.
HALF_WRITE = textwrap.dedent(
    """
    import sys, time
    from cudcn.files import atomic_write

    with atomic_write(sys.argv[1]) as f:
        f.write(b"half of the new mod")
        f.flush()
        print("half written", flush=True)
        time.sleep(60)
        f.write(b"el")
    """
)


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_sigkill_mid_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "net.onnx"
    path.write_bytes(b"the old model")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", HALF_WRITE, str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "half written\n"
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert path.read_bytes() == b"the old model"
    # a killed process cannot clean up: its temporary file stays, named after the target and its pid
    assert temporaries(tmp_path) == [f".net.onnx{TEMPORARY_MARK}{child.pid}-" + temporaries(tmp_path)[0][-8:]]
    with atomic_write(path) as f:  # the next write of the same target removes it
        f.write(b"the new model")
    assert os.listdir(tmp_path) == ["net.onnx"] and path.read_bytes() == b"the new model"


def test_stale_temporaries_of_live_processes_and_other_targets_stay(tmp_path):
    mine = tmp_path / f".a.bin{TEMPORARY_MARK}{os.getpid()}-00000000"
    other = tmp_path / f".b.bin{TEMPORARY_MARK}999999999-00000000"
    unrelated = tmp_path / ".a.bin.tmp"
    for p in (mine, other, unrelated):
        p.write_bytes(b"")
    assert remove_stale_temporaries(tmp_path / "a.bin") == []
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in (mine, other, unrelated))


def test_folder_problem(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert folder_problem(tmp_path) is None
    assert folder_problem(tmp_path / "new" / "deeper") is None
    assert folder_problem(afile) == f"{str(afile)!r} is not a folder"
    assert folder_problem(afile / "sub" / "more") == f"{str(afile)!r} is not a folder"
    assert not (tmp_path / "new").exists()  # nothing created

"""The test kernels of ``tests/backends/kernels/storage.cu`` (widen / narrow every element), built for the
host; see test_storage.py."""

from __future__ import annotations

from pathlib import Path

from cudcn.backends.cuda.source import join_source
from cudcn.backends.emulated.build import build, export_table
from cudcn.backends.emulated.loader import HostLibrary

PATH = Path(__file__).resolve().parent / "kernels" / "storage.cu"
NAMES = tuple(
    f"{kernel}<{storage}>"
    for kernel in ("widen_all", "narrow_all")
    for storage in ("cudcn_half", "cudcn_bfloat16")
)


def library() -> HostLibrary:
    """The host build of the storage test kernels (cached like the ops' builds)."""
    return HostLibrary(build("storage", join_source(PATH) + "\n" + export_table(NAMES)))

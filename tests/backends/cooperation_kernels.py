"""The test kernels of ``kernels/cooperation.cu`` (beside this file), built for the host (see
test_host_shim.py)."""

from __future__ import annotations

from pathlib import Path

from cudcn.backends.cuda.source import join_source
from cudcn.backends.emulated.build import build, export_table
from cudcn.backends.emulated.loader import HostLibrary, uses_cooperation

PATH = Path(__file__).resolve().parent / "kernels" / "cooperation.cu"
NAMES = (
    "block_reverse<float>",
    "block_reverse<double>",
    "warp_reduce",
    "early_exit",
    "shuffle_from_returned",
    "racy_sum",
    "atomic_sum",
    "float_rules",
    "block_order",
)


def library() -> HostLibrary:
    """The host build of the test kernels (cached like the ops' builds)."""
    source = join_source(PATH) + "\n" + export_table(NAMES)
    return HostLibrary(build("cooperation", source), uses_cooperation(PATH))

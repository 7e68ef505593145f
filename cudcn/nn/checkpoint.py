"""Checkpoints: a state dict saved as an ``.npz`` file, written atomically.

The archive is written to a temporary file in the destination's directory, flushed to disk, and
renamed over the destination with ``os.replace``: a crash or error mid-write leaves the previous
checkpoint untouched, never a truncated one. Files open with ``numpy.load`` (no pickles).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np

from cudcn.autograd import Tensor
from cudcn.backends import is_cupy_array
from cudcn.dtypes import is_bfloat16
from cudcn.nn.module import Module

__all__ = ["load_checkpoint", "save_checkpoint"]


def _host(value: Any) -> np.ndarray:
    """A host array to store: bfloat16 as float32 (exact; the ``.npy`` format has no bfloat16, and
    ``Module.load_state_dict`` rounds it back to the parameter's dtype)."""
    if isinstance(value, Tensor):
        value = value.data
    value = value.get() if is_cupy_array(value) else np.asarray(value)
    return value.astype(np.float32) if is_bfloat16(value.dtype) else value


def _write_npz(file: Any, arrays: dict[str, np.ndarray]) -> None:
    """The ``numpy.savez`` format: one ``<key>.npy`` member per array, in order."""
    with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_STORED) as archive:
        for key, array in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def save_checkpoint(module_or_state: Module | dict[str, Any], path: str | os.PathLike) -> None:
    """Save a module's ``state_dict()`` (or a given name -> array mapping) to ``path`` as ``.npz``,
    atomically (see the module docstring). CuPy arrays are copied to the host; bfloat16 arrays are
    stored as float32 (exactly).

    Example::

        cudcn.nn.save_checkpoint(net, "net.npz")
        net.load_state_dict(cudcn.nn.load_checkpoint("net.npz"))
    """
    state = module_or_state.state_dict() if isinstance(module_or_state, Module) else module_or_state
    if not isinstance(state, dict):
        raise TypeError(f"module_or_state must be a Module or a dict, got {type(state).__name__}")
    arrays = {}
    for key, value in state.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"state keys must be non-empty strings, got {key!r}")
        arrays[key] = _host(value)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            _write_npz(file, arrays)
            file.flush()
            os.fsync(file.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; use the usual mode
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def load_checkpoint(path: str | os.PathLike) -> OrderedDict[str, np.ndarray]:
    """Read a checkpoint written by :func:`save_checkpoint` (or ``numpy.savez``): an ordered
    name -> NumPy array mapping, ready for ``Module.load_state_dict``."""
    with np.load(os.fspath(path), allow_pickle=False) as archive:
        return OrderedDict((key, archive[key]) for key in archive.files)

"""Checkpoints: a state dict saved as an ``.npz`` file, written atomically.

The archive is written with :func:`cudcn.files.atomic_write`: to a temporary file in the destination's
folder, fsynced, and renamed over the destination, so a crash, error or Ctrl-C mid-write leaves the
previous checkpoint untouched, never a truncated one; the file keeps its mode and a symbolic link
stays a link. Files open with ``numpy.load`` (no pickles); :func:`load_checkpoint` refuses anything
else (a ``.npy`` file, a truncated or corrupt archive) with a ValueError naming the file.
"""

from __future__ import annotations

import os
import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np

from cudcn.autograd import Tensor
from cudcn.backends import is_cupy_array
from cudcn.dtypes import is_bfloat16
from cudcn.files import atomic_write
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
    with atomic_write(path) as file:
        _write_npz(file, arrays)


def load_checkpoint(path: str | os.PathLike) -> OrderedDict[str, np.ndarray]:
    """Read a checkpoint written by :func:`save_checkpoint` (or ``numpy.savez``): an ordered
    name -> NumPy array mapping, ready for ``Module.load_state_dict``.

    Raises:
        ValueError: ``path`` is not an ``.npz`` archive (a ``.npy`` array, another kind of file), is
            truncated or corrupt, or holds pickled (object) arrays; the message names the file.
        OSError: the file cannot be read (FileNotFoundError, PermissionError, ...).
    """
    path = os.fspath(path)
    with open(path, "rb") as file:
        magic = file.read(6)
    expected = "expected an .npz archive as save_checkpoint or numpy.savez write it"
    if magic == b"\x93NUMPY":
        raise ValueError(f"{path!r} holds a .npy array, not an .npz checkpoint: {expected}")
    if not magic.startswith(b"PK"):
        raise ValueError(f"{path!r} is not an .npz checkpoint (not a zip archive): {expected}")
    key = None
    try:
        with np.load(path, allow_pickle=False) as archive:
            state = OrderedDict()
            for key in archive.files:
                state[key] = archive[key]
            return state
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as exc:
        where = f" (entry {key!r})" if key is not None else ""
        raise ValueError(
            f"{path!r} is a truncated or corrupt .npz checkpoint, or holds pickled objects{where}: {exc}"
        ) from exc

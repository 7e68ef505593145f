"""One binder for the two backends that run the ``.cu`` kernels: the launch modules
(``cudcn.backends.cuda.<op>``) take ``xp`` and ``get_kernel`` first; :func:`bind` fixes both for a
backend and returns its array-level functions, ``<op>_forward`` / ``<op>_backward`` with the
signatures of ``cudcn.backends`` (the ops layer calls them with validated arguments).

The CUDA backend binds ``cupy`` and the ``RawModule`` loader and runs each call on its first
array's device; the emulated backend binds ``numpy`` and the host loader.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable
from typing import Any

from cudcn.backends.cuda.launch import GetKernel

OPS = ("deform_conv2d", "deform_roi_pool", "deform_psroi_pool")


def bind(
    xp: Callable[[], Any],
    kernels: Callable[[str], GetKernel],
    scope: Callable[[Any], contextlib.AbstractContextManager] = lambda a: contextlib.nullcontext(),
) -> dict[str, Callable[..., Any]]:
    """``{"<op>_forward": fn, "<op>_backward": fn, ...}`` for every op with kernels.

    Args:
        xp: returns the array module (called at each call, so CuPy is imported on first use).
        kernels: ``kernels(stem)`` returns the op's ``get_kernel(name_expression)``.
        scope: ``scope(first_array)`` is entered around each call (the CUDA device).
    """
    bound = {}
    for op in OPS:
        module = importlib.import_module(f"cudcn.backends.cuda.{op}")
        for name in (f"{op}_forward", f"{op}_backward"):
            bound[name] = _bind_one(getattr(module, name), op, xp, kernels, scope)
    return bound


def _bind_one(launch: Callable[..., Any], op: str, xp, kernels, scope) -> Callable[..., Any]:
    @functools.wraps(launch)
    def run(first: Any, *args: Any, **params: Any) -> Any:
        with scope(first):
            return launch(xp(), kernels(op), first, *args, **params)

    run.__doc__ = (
        f"``{launch.__module__}.{launch.__name__}`` bound to this backend: {launch.__doc__}"
    )
    return run

"""The launch code the CUDA and the emulated backend share: one module per op with kernels.

``cudcn.backends.launch.<op>`` turns the op's validated arrays and parameters object into kernel
launches: buffers, GEMMs (``xp.matmul``), batch chunks, the deterministic fixed-point scatter, and the
kernels' trailing scalars as a :class:`~cudcn.backends.launch.common.KernelParams` dataclass (checked
against the ``.cu`` signatures by a test). Each function takes ``xp`` (``cupy`` or ``numpy``) and
``get_kernel(name_expression)`` first; the backends ``cuda`` and ``emulated`` pass their own and
nothing else differs, so the emulated backend runs exactly the code a GPU runs. Each op module also
lists its kernel instantiations in ``NAME_EXPRESSIONS``. Adding an op: docs/developing.md.
"""

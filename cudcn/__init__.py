"""cudcn: deformable convolution and deformable RoI pooling for NumPy (Numba) and CuPy (CUDA).

Importing cudcn imports neither CuPy nor Numba and compiles nothing; backends load on first use.
"""

from cudcn import functional, nn, ops, optim
from cudcn.autograd import Tensor, no_grad
from cudcn.backends import deterministic, use_backend
from cudcn.testing import gradcheck

__version__ = "0.1.0"

__all__ = [
    "Tensor",
    "__version__",
    "deterministic",
    "functional",
    "gradcheck",
    "nn",
    "no_grad",
    "ops",
    "optim",
    "use_backend",
]

"""``Module`` and ``Parameter``.

A Module registers, in assignment order, its parameters (attributes holding a :class:`Parameter`),
its buffers (arrays such as BatchNorm's running statistics, added with :meth:`Module.register_buffer`)
and its submodules. ``state_dict`` names them with dotted paths (``"conv_offset.weight"``) in
PyTorch's order — each module's parameters, then its buffers, then its submodules, recursively — so
checkpoints map one to one onto PyTorch/mmcv ones with the same architecture.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np

from cudcn import dtypes
from cudcn.autograd import Tensor
from cudcn.autograd.function import current_trace
from cudcn.nn import placement, state
from cudcn.nn.state import IncompatibleKeys

_M = TypeVar("_M", bound="Module")  # the methods that return self return the subclass

__all__ = ["IncompatibleKeys", "Module", "Parameter"]


class Parameter(Tensor):
    """A Tensor registered by a :class:`Module` as a trainable parameter (``requires_grad=True``)."""

    __slots__ = ()

    def __init__(self, data: Any, requires_grad: bool = True) -> None:
        super().__init__(data.data if isinstance(data, Tensor) else data, requires_grad)

    def __repr__(self) -> str:
        return f"Parameter({self.data!r}, requires_grad={self.requires_grad})"


class Module:
    """Base class of layers and models; subclasses call ``super().__init__()`` first and define
    ``forward``. Calling the module calls ``forward``.

    Attributes:
        training: True after ``train()`` (the default), False after ``eval()``; read by BatchNorm
            and Dropout.
    """

    training: bool

    def __init__(self) -> None:
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_buffers", {})
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define forward")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        trace = current_trace()
        if trace is None:
            return self.forward(*args, **kwargs)
        with trace.module_scope(self):  # export: stamp the recorded nodes with this module's path
            return self.forward(*args, **kwargs)

    # ----------------------------------------------------------------------- registration
    def __setattr__(self, name: str, value: Any) -> None:
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"{type(self).__name__}: call super().__init__() before assigning attributes"
            )
        if isinstance(value, Parameter):
            self._forget(name)
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._forget(name)
            self._modules[name] = value
        elif name in self._parameters or name in self._modules:
            if value is not None:
                kind = "Parameter" if name in self._parameters else "Module"
                raise TypeError(f"{name} must be a {kind} or None, got {type(value).__name__}")
            (self._parameters if name in self._parameters else self._modules)[name] = None
        elif name in self._buffers:
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:
        for table in ("_parameters", "_buffers", "_modules"):
            entries = self.__dict__.get(table)
            if entries is not None and name in entries:
                return entries[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __delattr__(self, name: str) -> None:
        if not self._forget(name):
            object.__delattr__(self, name)

    def _forget(self, name: str) -> bool:
        """Remove ``name`` from every registry; True if it was registered."""
        found = False
        for table in (self._parameters, self._buffers, self._modules):
            if name in table:
                del table[name]
                found = True
        self._non_persistent.discard(name)
        self.__dict__.pop(name, None)
        return found

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register ``param`` (or None: a declared but absent parameter, e.g. ``bias=False``)."""
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"{name} must be a Parameter or None, got {type(param).__name__}")
        self._forget(name)
        self._parameters[name] = param

    def register_buffer(self, name: str, array: Any, persistent: bool = True) -> None:
        """Register an array kept with the module (moved by ``to``; in ``state_dict`` if
        ``persistent``)."""
        self._forget(name)
        self._buffers[name] = array
        if not persistent:
            self._non_persistent.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        """Register a submodule under ``name``."""
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{name} must be a Module or None, got {type(module).__name__}")
        self._forget(name)
        self._modules[name] = module

    # ----------------------------------------------------------------------- traversal
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module and all submodules (pre-order, each once) with dotted names."""
        seen: set[int] = set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = [(f"{name}.{k}" if name else k, m) for k, m in module._modules.items() if m]
            stack.extend(reversed(children))

    def modules(self) -> Iterator[Module]:
        for _, module in self.named_modules():
            yield module

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, module in self._modules.items():
            if module is not None:
                yield name, module

    def children(self) -> Iterator[Module]:
        for _, module in self.named_children():
            yield module

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        """Parameters with dotted names, in registration order, each once."""
        seen: set[int] = set()
        modules = self.named_modules(prefix) if recurse else [(prefix, self)]
        for name, module in modules:
            for key, p in module._parameters.items():
                if p is not None and id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{name}.{key}" if name else key), p

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Any]]:
        modules = self.named_modules(prefix) if recurse else [(prefix, self)]
        for name, module in modules:
            for key, b in module._buffers.items():
                if b is not None:
                    yield (f"{name}.{key}" if name else key), b

    def buffers(self, recurse: bool = True) -> Iterator[Any]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    # ----------------------------------------------------------------------- modes and devices
    def train(self: _M, mode: bool = True) -> _M:
        """Set ``training`` on this module and every submodule; returns self."""
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self: _M) -> _M:
        """``train(False)``."""
        return self.train(False)

    def requires_grad_(self: _M, requires_grad: bool = True) -> _M:
        """Set ``requires_grad`` on every parameter (False freezes them); returns self."""
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset every parameter's gradient to None (default) or zeros."""
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad[...] = 0

    def apply(self: _M, fn: Callable[[Module], Any]) -> _M:
        """Call ``fn`` on every submodule (children first) and then on self; returns self."""
        for module in self.children():
            module.apply(fn)
        fn(self)
        return self

    def to(self: _M, target: Any) -> _M:
        """Move parameters, gradients and buffers to ``"cpu"`` (NumPy), ``"cuda"`` (CuPy, the
        current device) or ``"cuda:N"`` (CuPy, device N), or cast the floating ones to a dtype
        (``np.float64``, ``np.float16``, ``ml_dtypes.bfloat16``); returns self. Parameter objects
        are kept, so build optimisers after moving (their state is not moved).

        Casting to float16 or bfloat16 casts the parameters and gradients; floating buffers
        (BatchNorm's running statistics) become float32, the dtype 16-bit layers compute their
        statistics in. bfloat16 on CuPy needs a CuPy that has the dtype, else ``TypeError``."""
        placement.move(self, target)
        return self

    def half(self: _M) -> _M:
        """``to(numpy.float16)`` (PyTorch's name)."""
        return self.to(np.float16)

    def bfloat16(self: _M) -> _M:
        """``to(ml_dtypes.bfloat16)`` (PyTorch's name)."""
        return self.to(dtypes.bfloat16)

    def float(self: _M) -> _M:
        """``to(numpy.float32)`` (PyTorch's name)."""
        return self.to(np.float32)

    def double(self: _M) -> _M:
        """``to(numpy.float64)`` (PyTorch's name)."""
        return self.to(np.float64)

    def cpu(self: _M) -> _M:
        return self.to("cpu")

    def cuda(self: _M, device: int | None = None) -> _M:
        """``to("cuda")``, or ``to(f"cuda:{device}")`` for a device index."""
        return self.to("cuda" if device is None else f"cuda:{int(device)}")

    # ----------------------------------------------------------------------- state
    def state_dict(self) -> OrderedDict[str, Any]:
        """Copies of the parameters' and persistent buffers' arrays, keyed by dotted name."""
        return state.state_dict(self)

    def load_state_dict(self, state_dict: Any, strict: bool = True) -> IncompatibleKeys:
        """Copy arrays from ``state_dict`` (name -> NumPy/CuPy array or Tensor) into the parameters
        and buffers, in place, converted to each one's array library and dtype.

        All or nothing: every entry is checked and converted before any is copied. Nothing is
        loaded if a key has the wrong shape or elements that are not numbers (strings, bytes,
        objects, complex numbers), or, with ``strict``, if any key is missing or unexpected: a
        single ``ValueError`` lists every such key. Returns the missing and unexpected keys.
        """
        return state.load_state_dict(self, state_dict, strict)

    # ----------------------------------------------------------------------- printing
    def extra_repr(self) -> str:
        """The text inside this module's parentheses in ``repr``."""
        return ""

    def __repr__(self) -> str:
        lines = [
            f"  ({name}): " + repr(module).replace("\n", "\n  ") for name, module in self._modules.items()
        ]
        if not lines:
            return f"{type(self).__name__}({self.extra_repr()})"
        head = f"{type(self).__name__}({self.extra_repr()}"
        return head + "\n" + "\n".join(lines) + "\n)"

"""The kernel sources: one ``.cu`` file per op in ``cudcn/kernels``, joined with its headers into one text.

Both loaders compile the same text: the CUDA backend hands it to ``cupy.RawModule`` (whose disk cache
hashes only the source string, not ``-I`` headers, so the headers must be inside it) and the emulated
backend hands it to g++ (its cache key is a hash of the text and the flags). Joining inlines every
``#include "..."`` of a file in ``cudcn/kernels`` where it stands, between ``#line`` directives, so
compiler messages and debuggers still point at the real files; ``#include <...>`` lines are left alone.
Every occurrence is inlined, not only the first: a header first included under an ``#if`` that one
compiler skips must still be there for a later unconditional include. The headers' include guards
keep repeated copies harmless (a test checks every header has one); an include cycle is an error.

Each op's kernel names live in its launch module, ``cudcn.backends.launch.<stem>``, as the tuple
``NAME_EXPRESSIONS`` (e.g. ``"deform_conv2d_im2col<float, int>"``): the one list that NVRTC's
``name_expressions``, the host build's export table and the compile tests all read.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent.parent.parent / "kernels"
_LOCAL_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.MULTILINE)


def kernel_stems() -> tuple[str, ...]:
    """The ops that have kernels: the stems of the ``.cu`` files in ``cudcn/kernels``, sorted."""
    return tuple(sorted(path.stem for path in KERNEL_DIR.glob("*.cu")))


def name_expressions(stem: str) -> tuple[str, ...]:
    """The kernel instantiations of ``<stem>.cu``, from its launch module ``cudcn.backends.launch.<stem>``."""
    module = importlib.import_module(f"cudcn.backends.launch.{stem}")
    return tuple(module.NAME_EXPRESSIONS)


def kernel_source(stem: str) -> str:
    """The text of ``cudcn/kernels/<stem>.cu`` with its local headers inlined (each one once)."""
    path = KERNEL_DIR / f"{stem}.cu"
    if not path.is_file():
        raise ValueError(f"no kernel file for op {stem!r}: expected {path}")
    return join_source(path)


def join_source(path: Path) -> str:
    """The text of the kernel file ``path`` with its local headers inlined where they are included."""
    return _join(Path(path).resolve(), ())


def source_files(stem: str | Path) -> tuple[Path, ...]:
    """``cudcn/kernels/<stem>.cu`` (or the kernel file at a path) and every local header it
    includes, directly or not, in order."""
    files: list[Path] = []

    def visit(path: Path) -> None:
        files.append(path)
        for match in _LOCAL_INCLUDE.finditer(path.read_text(encoding="utf-8")):
            header = (path.parent / match.group(1)).resolve()
            if header not in files and header.is_file():
                visit(header)

    visit((stem if isinstance(stem, Path) else KERNEL_DIR / f"{stem}.cu").resolve())
    return tuple(files)


def _line_directive(line: int, path: Path) -> str:
    return f'#line {line} "{path.as_posix()}"'


def _join(path: Path, stack: tuple[Path, ...]) -> str:
    if path in stack:
        chain = " -> ".join(p.name for p in (*stack, path))
        raise ValueError(f"include cycle in the kernel sources: {chain}")
    text = path.read_text(encoding="utf-8")
    pieces = [_line_directive(1, path)]
    position = 0
    for match in _LOCAL_INCLUDE.finditer(text):
        header = (path.parent / match.group(1)).resolve()
        if not header.is_file():
            raise FileNotFoundError(f"{path.name} includes {match.group(1)!r}, not found at {header}")
        pieces.append(text[position : match.start()])
        pieces.append(_join(header, (*stack, path)))
        pieces.append(_line_directive(text.count("\n", 0, match.end()) + 2, path))
        position = match.end() + 1  # past the include line's newline
    pieces.append(text[position:])
    return "\n".join(pieces)

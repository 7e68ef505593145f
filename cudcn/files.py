"""Every file cudcn writes goes through :func:`atomic_write`: all of the new content, or the old file.

The new content is written to a temporary file in the target's folder (``.<name>.cudcn-tmp-<pid>-<id>``),
flushed and fsynced, then renamed over the target with ``os.replace`` and the folder fsynced. An
exception (``KeyboardInterrupt`` included) removes the temporary file and leaves the target as it
was. The target keeps its permission bits (a 0600 checkpoint stays 0600; a new file gets the usual
``0666 & ~umask``), and a symbolic link stays a link: the file it points to is replaced.

A process killed with SIGKILL cannot clean up after itself: it can leave its temporary file (never a
damaged target). The next :func:`atomic_write` of the same target removes such files when the process
whose id they carry is gone (judged on this machine: in a folder that several machines write, a
writer elsewhere whose pid is free here loses its temporary file and fails, its target intact).

:func:`folder_problem` tells, before any work, why a folder could not receive files;
:func:`require_folder` raises it as a ValueError.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "TEMPORARY_MARK",
    "atomic_write",
    "folder_problem",
    "remove_stale_temporaries",
    "require_folder",
]

TEMPORARY_MARK = ".cudcn-tmp-"  # temporary files are named ".<target name>.cudcn-tmp-<pid>-<id>"


def _resolve(path: str | os.PathLike) -> Path:
    """The file to replace: ``path`` itself, or the file its chain of symbolic links ends at (which
    need not exist yet)."""
    target = Path(os.path.abspath(os.fspath(path)))
    return Path(os.path.realpath(target)) if target.is_symlink() else target


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may still exist; always True off POSIX (Windows' os.kill(pid, 0)
    would send a Ctrl-C, not probe), so no file is ever taken from a live writer."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's live process, or not a pid we can judge: keep its file
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that :func:`atomic_write` of ``path`` left behind in processes that
    no longer exist (killed mid-write); returns the removed paths. Files of live processes stay."""
    target = _resolve(path)
    pattern = re.compile(re.escape(f".{target.name}{TEMPORARY_MARK}") + r"(\d+)-[0-9a-f]+")
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(target.parent):
            match = pattern.fullmatch(entry.name)
            if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where folders can be opened, i.e. not on Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file to write ``path``'s new content into; when the ``with`` block ends normally the
    content replaces ``path`` in one rename, otherwise ``path`` is left untouched and the temporary
    file removed (see the module docstring).

    Example::

        with atomic_write("picture.png") as f:
            figure.savefig(f, format="png")
    """
    target = _resolve(path)
    remove_stale_temporaries(target)
    temporary = target.with_name(f".{target.name}{TEMPORARY_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    # O_EXCL: never follow or reuse anything already there; 0o666 lets the umask decide, as open() does
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(temporary, os.stat(target).st_mode & 0o7777)  # keep the old file's mode
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_folder(target.parent)


def folder_problem(folder: str | os.PathLike) -> str | None:
    """Why files could not be written into ``folder`` (created if missing), or None when they can:
    a part of the path that is not a folder, or the deepest existing folder not writable. Nothing is
    created."""
    path = Path(os.path.abspath(os.fspath(folder)))
    for part in [*reversed(path.parents), path]:
        if not part.exists():
            parent = part.parent
            break
        if not part.is_dir():
            return f"{str(part)!r} is not a folder"
    else:
        parent = path
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"the folder {str(parent)!r} is not writable"
    return None


def require_folder(folder: str | os.PathLike, name: str) -> Path:
    """``folder`` as a Path, checked with :func:`folder_problem` before any work is done.

    Raises:
        ValueError: "cannot write into <name> '<folder>': <why>".
    """
    problem = folder_problem(folder)
    if problem is not None:
        raise ValueError(f"cannot write into {name} {os.fspath(folder)!r}: {problem}")
    return Path(folder)

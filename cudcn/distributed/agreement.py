"""What each rank says it is about to do, and the error when the ranks disagree.

Before every collective the ranks exchange a hash of a :class:`Call`: which collective (``what``),
its arguments (``items``), and whether this rank rejected its own arguments (``problem``). Only when
the hashes differ do the ranks gather the calls themselves, and :func:`disagreement` turns them into
the error every rank raises:

* the same collective with different arguments (shapes, dtypes, ops, dataset lengths): a
  ``ValueError`` naming the first argument that differs; the ranks are still in step;
* some rank rejected its own arguments (a TypeError or ValueError it raises itself): a
  ``ValueError`` on the others naming that rank and its error;
* different collectives, or a rank that left the job (``what == "exit"``): a ``RuntimeError``
  naming what each rank is doing: the ranks are out of step.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

__all__ = ["EXIT", "Call", "digest", "disagreement", "first_difference"]

EXIT = "exit"  # the collective a rank joins when its process ends (see cudcn.distributed.mpi)
MAX_ITEMS = 4  # arguments shown per call in an out-of-step message

# Why a rank may be somewhere else, by the collective it or another rank is in.
HINTS = {
    "SyncBatchNorm": "SyncBatchNorm communicates in training mode only: is one rank's model in eval mode?",
    EXIT: "A rank leaves when its script ends or calls sys.exit, also after an exception it caught "
    "made it skip collectives that the other ranks call.",
}


class Call(NamedTuple):
    """One rank's next collective: ``what``, its ``items`` and its own ``problem`` (an error text
    when the rank rejected its arguments), as number ``sequence`` of this communicator."""

    what: str
    items: tuple[str, ...]
    problem: str | None
    sequence: int

    def key(self) -> str:
        """What the ranks must agree on (the sequence number only labels messages)."""
        return "\n".join((self.what, *self.items, self.problem or ""))

    def doing(self) -> str:
        """``"waits in allreduce #3 (op sum, dtype float64)"`` or ``"left the job ..."``."""
        if self.what == EXIT:
            return "left the job (its process is ending)"
        shown = list(self.items[:MAX_ITEMS]) + (["..."] if len(self.items) > MAX_ITEMS else [])
        arguments = f" ({', '.join(shown)})" if shown else ""
        return f"waits in {self.what} #{self.sequence}{arguments}"


class Grouped(NamedTuple):
    """Ranks that said the same thing."""

    ranks: list[int]
    text: str

    def __str__(self) -> str:
        if len(self.ranks) == 1:
            return f"rank {self.ranks[0]} {self.text}"
        verb, _, rest = self.text.partition(" ")
        return f"ranks {self.ranks} {'wait' if verb == 'waits' else verb} {rest}"


def digest(call: Call) -> int:
    """A signed 64-bit hash of ``call.key()``, equal on every rank for equal calls."""
    raw = hashlib.blake2b(call.key().encode(), digest_size=8).digest()
    return int.from_bytes(raw, "little", signed=True)


def first_difference(every: list[list[str]]) -> str:
    """Name the first item where some rank's list differs from rank 0's (``every[r]``: rank r's)."""
    ours = every[0]
    for i in range(max(len(items) for items in every)):
        for rank, theirs in enumerate(every):
            a = ours[i] if i < len(ours) else "nothing"
            b = theirs[i] if i < len(theirs) else "nothing"
            if a != b:
                return f"the ranks disagree at item {i}: rank 0 has {a}, rank {rank} has {b}"
    return "the ranks disagree"


def _grouped(texts: list[str]) -> list[Grouped]:
    groups: dict[str, list[int]] = {}
    for rank, text in enumerate(texts):
        groups.setdefault(text, []).append(rank)
    return [Grouped(ranks, text) for text, ranks in groups.items()]


def disagreement(calls: list[Call]) -> Exception:
    """The error for ranks whose calls (``calls[r]``: rank r's) do not all agree."""
    whats = [c.what for c in calls]
    rejected = [(r, c) for r, c in enumerate(calls) if c.problem is not None]
    if rejected:
        rank, call = rejected[0]
        others = "; ".join(str(g) for g in _grouped([c.doing() for c in calls]) if rank not in g.ranks)
        return ValueError(
            f"{call.what}: rank {rank} rejected its arguments ({call.problem}) and raised that error; "
            f"{others}"
        )
    if len(set(whats)) == 1:
        return ValueError(f"{whats[0]}: {first_difference([list(c.items) for c in calls])}")
    doing = "; ".join(str(g) for g in _grouped([c.doing() for c in calls]))
    hints = "".join(f" {hint}" for what, hint in HINTS.items() if what in whats)
    return RuntimeError(
        f"the ranks are out of step: {doing}. Every rank must call the same collectives in the "
        f"same order.{hints} Ending every rank."
    )

"""What the demos print as they go: lines on a stream, and the seconds each phase took; what a demo
part returns."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO


@dataclass
class PartResult:
    """What a demo part's ``run`` produced: its runs (one per model and seed), the printed table and
    claim lines, the pictures written and the seconds per phase."""

    runs: list[Any]
    tables: list[str]
    pictures: list[Path]
    seconds: dict[str, float]


class RunLog:
    """Prints lines to ``stream`` (stdout when None) and times the run's phases.

    ``lap(name)`` records the seconds since the previous lap (or the start) under ``name``;
    ``finish()`` adds the total and prints the ``time:`` line. ``seconds`` holds them in order.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.seconds: dict[str, float] = {}
        self._start = self._clock = time.perf_counter()

    def say(self, line: str = "") -> None:
        print(line, file=self.stream, flush=True)

    def block(self, lines: list[str]) -> None:
        """A blank line, then ``lines`` (a part's tables and claims)."""
        for line in ["", *lines]:
            self.say(line)

    def wrote(self, paths: list[Path]) -> None:
        """A blank line, then ``wrote <path>`` for each file written."""
        self.block([f"wrote {path}" for path in paths])

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = now - self._clock
        self._clock = now

    def finish(self) -> dict[str, float]:
        """Record the total, print every phase's seconds, and return them."""
        self.seconds["total"] = time.perf_counter() - self._start
        self.say("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()))
        return self.seconds

"""The progress line of a sweep: cells done, the tasks under way, elapsed time and the ETA."""

from __future__ import annotations

import math
import shutil
import sys
import time
from typing import Iterable, Sequence

import numpy as np


def clock(seconds: float) -> str:
    """`1h02m03s`, or `2m03s` under an hour."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    if hours:
        return f"{hours}h{rest // 60:02d}m{rest % 60:02d}s"
    return f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """One rewritten line on a terminal, else a line per event (at most every `every` seconds).

    The ETA sums, over the tasks left, the mean duration of finished tasks of the same kind (the
    mean over all kinds for a kind not seen yet), divided by the number of workers.
    """

    def __init__(self, total_cells: int, workers: int, stream=None, every: float = 10.0,
                 done: int = 0):
        self.total, self.done, self.workers = total_cells, done, max(workers, 1)
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = time.monotonic()
        self.durations: dict[str, list[float]] = {}
        self.every, self.last = every, -math.inf

    def finished(self, kind: str, seconds: float, cells: int) -> None:
        self.durations.setdefault(kind, []).append(seconds)
        self.done += cells

    def eta(self, remaining: Iterable[str]) -> float | None:
        if not self.durations:
            return None
        overall = float(np.mean([d for ds in self.durations.values() for d in ds]))
        total = sum(float(np.mean(self.durations[kind])) if kind in self.durations else overall
                    for kind in remaining)
        return total / self.workers

    def show(self, running: Sequence[str], remaining: Sequence[str], force: bool = False) -> None:
        """Writes the line (on a terminal always; elsewhere if `force` or `every` has passed)."""
        now = time.monotonic()
        if not (self.tty or force or now - self.last >= self.every):
            return
        self.last = now
        fraction = self.done / self.total if self.total else 1.0
        bar = "#" * int(24 * fraction) + "." * (24 - int(24 * fraction))
        eta = self.eta(remaining)
        line = (f"[{bar}] {self.done}/{self.total} cells ({100 * fraction:.0f} %) | elapsed "
                f"{clock(now - self.started)} | ETA {clock(eta) if eta is not None else '?'} | "
                f"running: {'; '.join(running) if running else '-'}")
        if self.tty:
            width = shutil.get_terminal_size((160, 20)).columns - 1
            self.stream.write("\r" + line[:width].ljust(width))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
